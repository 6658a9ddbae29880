//! nftables masquerade (`ipMasqBackend: "nftables"`): cnibox speaks nf_tables natively
//! and must leave exactly the ruleset the Go reference leaves through `nft`, and it
//! rewrites `postrouting` only when that chain is missing or altered (the reference
//! rewrites it on every ADD).

mod common;

use common::*;
use serde_json::{json, Value};

const TABLE: [&str; 3] = ["table", "inet", "cni_plugins_masquerade"];
const POST: [&str; 4] = ["chain", "inet", "cni_plugins_masquerade", "postrouting"];

fn v4() -> Value {
    json!([[{"subnet": "10.1.2.0/24"}]])
}

fn dual() -> Value {
    json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
}

fn conf(rig: &Rig, plugin: &str, ranges: Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "masqnet", "type": plugin,
        "ipMasq": true, "ipMasqBackend": "nftables",
        "ipam": {"type": "host-local", "ranges": ranges, "dataDir": rig.data_dir()}});
    if plugin == "bridge" {
        c["bridge"] = json!("cbr0");
        c["isGateway"] = json!(true);
    }
    c
}

/// `nft -j list ruleset` without what legitimately differs between two hosts: object
/// handles (the order of earlier, unrelated kernel objects) and nft's own metainfo.
fn ruleset_json(ns: &Netns) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_str(&ns.run(&["nft", "-j", "list", "ruleset"])).unwrap();
    let items = v["nftables"].as_array_mut().expect("nftables list");
    items.retain(|i| i.get("metainfo").is_none());
    strip(&mut v);
    v
}

/// The rules of `postrouting` with their handles, from `nft -a list chain`.
fn post_rules(ns: &Netns) -> Vec<(String, u64)> {
    let text = nft_list(ns, true, &POST).expect("postrouting exists");
    text.lines()
        .filter_map(|l| {
            let (rule, h) = l.trim().rsplit_once(" # handle ")?;
            // chain and table headers carry handles too; rules are the lines inside.
            if rule.starts_with("chain ") || rule.starts_with("table ") {
                return None;
            }
            Some((rule.to_string(), h.parse().unwrap()))
        })
        .collect()
}

#[test]
fn nft_ruleset_identical_to_the_reference() {
    // ADD two containers (dual stack, then IPv4 only) and DEL the first, through Go
    // v1.9.1 in one rig and cnibox in another: after every step the whole ruleset
    // (table and chain comments, the postrouting base chain with its hook, priority and
    // policy, the multicast returns, the goto, every masquerade rule with its comment)
    // lists identically. Container ids, network and interface names are the same on
    // both sides and so are the hashes in the comments: nothing needs normalising in the
    // text; the JSON form is compared too, without object handles.
    for plugin in ["ptp", "bridge"] {
        let go = Rig::new();
        let ours = Rig::new();
        let same = |step: &str| {
            let (g, o) = (nft_ruleset(&go.host), nft_ruleset(&ours.host));
            assert!(g.contains("masquerade comment"), "{plugin} {step}: {g}");
            // Go's DEL also runs its iptables teardown, which (iptables-nft) leaves
            // empty `ip nat` / `ip6 nat` tables behind; cnibox only reads iptables.
            let g = g
                .replace("table ip nat {\n}\n", "")
                .replace("table ip6 nat {\n}\n", "");
            assert_eq!(g, o, "{plugin} {step}: text");
            let mut gj = ruleset_json(&go.host);
            gj["nftables"].as_array_mut().unwrap().retain(|i| {
                let t = &i["table"];
                !(t["name"] == "nat" && (t["family"] == "ip" || t["family"] == "ip6"))
            });
            assert_eq!(gj, ruleset_json(&ours.host), "{plugin} {step}: json");
        };
        let g0 = go.add_cont();
        let o0 = ours.add_cont();
        let (gc, oc) = (conf(&go, plugin, dual()), conf(&ours, plugin, dual()));
        let gv = go
            .call(plugin, "ADD", &gc)
            .id("c0")
            .netns(g0.path.to_str().unwrap())
            .go()
            .run()
            .ok()
            .clone();
        let ov = ours
            .call(plugin, "ADD", &oc)
            .id("c0")
            .netns(o0.path.to_str().unwrap())
            .run()
            .ok()
            .clone();
        same("first ADD");
        let (gc1, oc1) = (conf(&go, plugin, v4()), conf(&ours, plugin, v4()));
        go.call(plugin, "ADD", &gc1).id("c1").go().run().ok();
        ours.call(plugin, "ADD", &oc1).id("c1").run().ok();
        same("second ADD");
        assert_eq!(
            nft_ruleset(&ours.host)
                .matches("masquerade comment")
                .count(),
            3
        );
        go.call(plugin, "DEL", &with_prev(&gc, &gv))
            .id("c0")
            .netns(g0.path.to_str().unwrap())
            .go()
            .run()
            .ok();
        ours.call(plugin, "DEL", &with_prev(&oc, &ov))
            .id("c0")
            .netns(o0.path.to_str().unwrap())
            .run()
            .ok();
        same("DEL of the first");
        assert_eq!(
            nft_ruleset(&ours.host)
                .matches("masquerade comment")
                .count(),
            1
        );
    }
}

#[test]
fn postrouting_rewritten_only_when_missing_or_altered() {
    let rig = Rig::new();
    let c = conf(&rig, "ptp", v4());
    let mut n = 0;
    let mut add = || {
        let ns = rig.add_cont();
        rig.call("ptp", "ADD", &c)
            .id(&format!("c{n}"))
            .netns(ns.path.to_str().unwrap())
            .run()
            .ok();
        n += 1;
        ns
    };
    let mut keep = vec![add()];
    let good = post_rules(&rig.host);
    let texts = |r: &[(String, u64)]| r.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        texts(&good),
        vec![
            "ip daddr 224.0.0.0/4 return",
            "ip6 daddr ff00::/8 return",
            "goto masq_checks"
        ]
    );
    let good_chain = nft_list(&rig.host, false, &POST).unwrap();
    assert!(
        good_chain.contains("type nat hook postrouting priority srcnat; policy accept;"),
        "{good_chain}"
    );

    // A second ADD finds postrouting intact and leaves it alone: same rule handles.
    keep.push(add());
    assert_eq!(
        post_rules(&rig.host),
        good,
        "postrouting rewritten needlessly"
    );
    assert_eq!(
        nft_ruleset(&rig.host).matches("masquerade comment").count(),
        2
    );

    // Each alteration by hand is undone by the next ADD: the chain lists as before,
    // with new rule handles (it was rewritten).
    for what in [
        "flushed",
        "one rule deleted",
        "accept inserted first",
        "rule appended",
        "chain deleted",
        "table deleted",
    ] {
        let before = post_rules(&rig.host);
        alter(&rig.host, what);
        assert_ne!(
            nft_list(&rig.host, false, &POST).as_deref(),
            Some(good_chain.as_str()),
            "{what}: the alteration changed nothing"
        );
        keep.push(add());
        let now = post_rules(&rig.host);
        assert_eq!(
            nft_list(&rig.host, false, &POST).as_deref(),
            Some(good_chain.as_str()),
            "{what}: postrouting not restored"
        );
        assert!(
            now.iter().all(|r| !before.iter().any(|b| b.1 == r.1)),
            "{what}: rewritten rules get new handles: {before:?} -> {now:?}"
        );
        // and the next ADD leaves the restored chain alone again
        keep.push(add());
        assert_eq!(post_rules(&rig.host), now, "{what}: rewritten twice");
    }
}

/// Alter the masquerade table by hand, as an admin or another tool might.
fn alter(host: &Netns, what: &str) {
    let nft = |args: &[&str]| {
        let mut a = vec!["nft"];
        a.extend_from_slice(args);
        host.run(&a);
    };
    let t = ["inet", "cni_plugins_masquerade"];
    match what {
        "flushed" => nft(&["flush", "chain", t[0], t[1], "postrouting"]),
        "one rule deleted" => {
            let h = post_rules(host)
                .into_iter()
                .find(|r| r.0 == "ip6 daddr ff00::/8 return")
                .unwrap()
                .1
                .to_string();
            nft(&["delete", "rule", t[0], t[1], "postrouting", "handle", &h]);
        }
        "accept inserted first" => nft(&["insert", "rule", t[0], t[1], "postrouting", "accept"]),
        "rule appended" => nft(&["add", "rule", t[0], t[1], "postrouting", "counter"]),
        "chain deleted" => {
            nft(&["flush", "chain", t[0], t[1], "postrouting"]);
            nft(&["delete", "chain", t[0], t[1], "postrouting"]);
            assert!(nft_list(host, false, &POST).is_none());
        }
        "table deleted" => {
            nft(&["delete", "table", t[0], t[1]]);
            assert!(nft_list(host, false, &TABLE).is_none());
        }
        _ => unreachable!("{what}"),
    }
}

#[test]
fn the_reference_rewrites_postrouting_on_every_add() {
    // What the handle comparison above measures: Go v1.9.1 re-creates the rules of
    // postrouting on every ADD (new handles each time), cnibox does not.
    let rig = Rig::new();
    let c = conf(&rig, "ptp", v4());
    rig.call("ptp", "ADD", &c).go().run().ok();
    let first = post_rules(&rig.host);
    let ns = rig.add_cont();
    rig.call("ptp", "ADD", &c)
        .id("c2")
        .netns(ns.path.to_str().unwrap())
        .go()
        .run()
        .ok();
    let second = post_rules(&rig.host);
    assert_eq!(first.len(), 3);
    assert_ne!(first, second, "Go rewrote postrouting");
    // cnibox's ADD on Go's table leaves Go's intact postrouting alone.
    let ns3 = rig.add_cont();
    rig.call("ptp", "ADD", &c)
        .id("c3")
        .netns(ns3.path.to_str().unwrap())
        .run()
        .ok();
    assert_eq!(post_rules(&rig.host), second);
}

#[test]
fn postrouting_with_altered_values_is_restored() {
    // Same rule shapes, other values: a return for 0.0.0.0/4 instead of 224.0.0.0/4
    // (traffic to 10.0.0.0/8 would silently skip masquerading) must count as altered too.
    let rig = Rig::new();
    let c = conf(&rig, "ptp", v4());
    rig.call("ptp", "ADD", &c).run().ok();
    let good_chain = nft_list(&rig.host, false, &POST).unwrap();
    let h = post_rules(&rig.host)
        .into_iter()
        .find(|r| r.0 == "ip daddr 224.0.0.0/4 return")
        .unwrap()
        .1
        .to_string();
    rig.host.run(&[
        "nft",
        "replace",
        "rule",
        "inet",
        "cni_plugins_masquerade",
        "postrouting",
        "handle",
        &h,
        "ip",
        "daddr",
        "0.0.0.0/4",
        "return",
    ]);
    assert!(nft_list(&rig.host, false, &POST)
        .unwrap()
        .contains("ip daddr 0.0.0.0/4 return"));
    let ns = rig.add_cont();
    rig.call("ptp", "ADD", &c)
        .id("c2")
        .netns(ns.path.to_str().unwrap())
        .run()
        .ok();
    assert_eq!(
        nft_list(&rig.host, false, &POST).unwrap(),
        good_chain,
        "postrouting with an altered address not restored"
    );
}
