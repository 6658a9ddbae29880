//! firewall through the built binary (§4.14 of the reference notes), each test in its
//! own namespaces: chained after cnibox's bridge with real traffic between the test's
//! own containers, differential runs against the Go plugins (v1.9.1 and Debian's
//! 1.1.1), the nftables backend without iptables on PATH, 16 parallel ADDs, malformed
//! input and a failed ADD's rollback.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;

// ---------------------------------------------------------------------------------------
// Helpers

/// A firewall config (network `net`) with `extra` keys.
fn fw_conf(net: &str, ver: &str, extra: Value) -> Value {
    merged(
        json!({"cniVersion": ver, "name": net, "type": "firewall"}),
        &extra,
    )
}

/// A prevResult as bridge prints it: bridge, host veth, container interface.
fn prev(ver: &str, bridge: &str, ips: &[&str]) -> Value {
    let ips: Vec<Value> = ips
        .iter()
        .map(|a| json!({"address": a, "interface": 2}))
        .collect();
    json!({"cniVersion": ver,
        "interfaces": [{"name": bridge, "mac": "0a:58:0a:01:02:01"},
                       {"name": "veth0123abcd", "mac": "0a:58:0a:01:02:02"},
                       {"name": "eth0", "mac": "0a:58:0a:01:02:03", "sandbox": "/var/run/netns/x"}],
        "ips": ips})
}

/// `iptables-save -t filter` of the rig's host, without the comment lines and counters.
fn filter(ns: &Netns, v6: bool) -> String {
    let tool = if v6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    let out = ns.exec(&[tool, "-t", "filter"]);
    assert!(out.status.success(), "{tool} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => format!("{} [0:0]", &l[..i]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn both_filters(ns: &Netns) -> String {
    format!("{}\n---\n{}", filter(ns, false), filter(ns, true))
}

/// The nftables ruleset of the rig's host ("" when empty).
fn nft(ns: &Netns) -> String {
    nft_ruleset(ns)
}

fn count(hay: &str, needle: &str) -> usize {
    hay.lines().filter(|l| l.contains(needle)).count()
}

/// A PATH without iptables (nothing at all: the nftables backend needs no tool).
fn path_without_iptables(rig: &Rig) -> String {
    let d = rig.dir.join("empty-path");
    std::fs::create_dir_all(&d).unwrap();
    d.to_string_lossy().into_owned()
}

/// A bridge network `net` on bridge `br` over `subnet`, gateway and default route.
fn br_conf(rig: &Rig, net: &str, br: &str, subnet: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": net, "type": "bridge", "bridge": br,
        "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": rig.data_dir()}})
}

/// One container in `ns`: bridge ADD, then firewall ADD with bridge's result (the
/// chain a runtime runs). Returns the firewall result and the container's address.
fn attach(
    rig: &Rig,
    ns: &Netns,
    id: &str,
    br: &Value,
    fw_extra: &Value,
    path: Option<&str>,
) -> (Value, String) {
    let net = br["name"].as_str().unwrap();
    let b = rig
        .call("bridge", "ADD", br)
        .id(id)
        .netns(ns.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    let conf = with_prev(&fw_conf(net, "1.0.0", fw_extra.clone()), &b);
    let mut call = rig
        .call("firewall", "ADD", &conf)
        .id(id)
        .netns(ns.path.to_str().unwrap());
    if let Some(p) = path {
        call = call.env("PATH", p);
    }
    let r = call.run().ok().clone();
    assert_eq!(
        normalize_result(&r),
        normalize_result(&b),
        "prevResult passes through"
    );
    let ip = result_ip(&b, 0);
    (r, ip)
}

/// firewall DEL for an attachment made by [`attach`].
fn detach(rig: &Rig, ns: &Netns, id: &str, net: &str, fw_extra: &Value, res: &Value) {
    let conf = with_prev(&fw_conf(net, "1.0.0", fw_extra.clone()), res);
    rig.call("firewall", "DEL", &conf)
        .id(id)
        .netns(ns.path.to_str().unwrap())
        .run()
        .ok();
}

// ---------------------------------------------------------------------------------------
// Chained after bridge: real traffic between the test's own containers

/// Containers on two bridges, routed through the rig's host. With FORWARD's policy at
/// DROP only the firewall plugin's rules let them talk; after its DEL they cannot.
#[test]
fn chained_after_bridge_forwarding_is_allowed_under_a_drop_policy() {
    let rig = Rig::new();
    let b = rig.new_netns();
    let ca = br_conf(&rig, "neta", "cbra", "10.11.1.0/24");
    let cb = br_conf(&rig, "netb", "cbrb", "10.11.2.0/24");
    let open = json!({});
    let (ra, ipa) = attach(&rig, &rig.cont, "ca", &ca, &open, None);
    let (rb, ipb) = attach(&rig, &b, "cb", &cb, &open, None);
    assert!(ping(&rig.cont, &ipb), "open: forwarding works");
    rig.host.exec(&["iptables", "-P", "FORWARD", "DROP"]);
    assert!(
        ping(&rig.cont, &ipb),
        "the firewall's ACCEPT rules carry it"
    );
    assert!(ping(&b, &ipa));
    // CHECK passes while the rules are there
    let check = with_prev(&fw_conf("neta", "1.0.0", json!({})), &ra);
    rig.call("firewall", "CHECK", &check).id("ca").run().ok();
    detach(&rig, &rig.cont, "ca", "neta", &open, &ra);
    detach(&rig, &b, "cb", "netb", &open, &rb);
    assert!(!ping(&rig.cont, &ipb), "without the rules FORWARD drops");
    let f = filter(&rig.host, false);
    assert!(!f.contains("10.11."), "per-address rules gone:\n{f}");
    assert!(
        f.contains(":CNI-FORWARD ") && f.contains(":CNI-ADMIN "),
        "shared chains stay, as in the reference:\n{f}"
    );
    // CHECK now reports the missing rule
    let out = rig.call("firewall", "CHECK", &check).id("ca").run();
    assert!(out.stdout.contains("not found"), "{}", out.stdout);
}

/// Two containers on bridge A, one on bridge B, with `policy`; which pings pass.
/// (This kernel runs bridged IPv4 through iptables, br_netfilter, so same-bridge
/// traffic meets the `isolated` rule too.)
fn policy_matrix(policy: &str, nft_backend: bool) -> (bool, bool, bool) {
    let rig = Rig::new();
    let a2 = rig.new_netns();
    let b = rig.new_netns();
    let ca = br_conf(&rig, "neta", "cbra", "10.12.1.0/24");
    let cb = br_conf(&rig, "netb", "cbrb", "10.12.2.0/24");
    let extra = json!({"ingressPolicy": policy});
    let path = nft_backend.then(|| path_without_iptables(&rig));
    let path = path.as_deref();
    let (_, ip_a1) = attach(&rig, &rig.cont, "a1", &ca, &extra, path);
    let (_, ip_a2) = attach(&rig, &a2, "a2", &ca, &extra, path);
    let (_, ip_b) = attach(&rig, &b, "b1", &cb, &extra, path);
    let rules = if nft_backend {
        nft(&rig.host)
    } else {
        filter(&rig.host, false)
    };
    if nft_backend {
        assert!(rules.contains("table inet cni_firewall"), "{rules}");
        assert!(
            !filter(&rig.host, false).contains("CNI-"),
            "no iptables rules"
        );
    } else {
        assert!(!rules.contains("CNI-FORWARD") || !nft(&rig.host).contains("cni_firewall"));
    }
    let same = ping(&rig.cont, &ip_a2);
    let cross = ping(&rig.cont, &ip_b);
    let back = ping(&b, &ip_a1);
    // the host itself is not forwarding: always reachable
    assert!(ping(&rig.host, &ip_b), "{policy}: host to container");
    (same, cross, back)
}

#[test]
fn ingress_policies_between_and_within_bridges_iptables() {
    assert_eq!(policy_matrix("open", false), (true, true, true), "open");
    assert_eq!(
        policy_matrix("same-bridge", false),
        (true, false, false),
        "same-bridge"
    );
    assert_eq!(
        policy_matrix("isolated", false),
        (false, false, false),
        "isolated"
    );
}

#[test]
fn ingress_policies_between_and_within_bridges_nftables() {
    assert_eq!(policy_matrix("open", true), (true, true, true), "open");
    assert_eq!(
        policy_matrix("same-bridge", true),
        (true, false, false),
        "same-bridge"
    );
    assert_eq!(
        policy_matrix("isolated", true),
        (false, false, false),
        "isolated"
    );
}

// ---------------------------------------------------------------------------------------
// Differential: the Go plugins

/// The same calls through Go v1.9.1 (rig 1) and cnibox (rig 2): same results, same
/// filter tables after each step; CHECK and DEL of either side accept the other's.
#[test]
fn same_rules_as_v1_9_1_and_cross_del_both_ways() {
    for (extra, second_bridge) in [
        (json!({}), "cbr0"),
        (json!({"ingressPolicy": "isolated"}), "cbr1"),
        (
            json!({"ingressPolicy": "same-bridge", "iptablesAdminChainName": "MY-ADMIN"}),
            "cbr1",
        ),
    ] {
        let go = Rig::new();
        let us = Rig::new();
        let steps = [
            ("c1", "cbr0", vec!["10.1.2.3/24", "fd00:1::3/64"]),
            ("c2", second_bridge, vec!["10.1.3.4/24"]),
        ];
        let mut confs = Vec::new();
        for (id, br, ips) in &steps {
            let conf = with_prev(
                &fw_conf("net1", "1.0.0", extra.clone()),
                &prev("1.0.0", br, ips),
            );
            let g = go.call("firewall", "ADD", &conf).id(id).go().run();
            let u = us.call("firewall", "ADD", &conf).id(id).run();
            assert_eq!(u.ok(), g.ok(), "{extra}: same result");
            assert_eq!(
                both_filters(&us.host),
                both_filters(&go.host),
                "{extra}: same rules after ADD {id}"
            );
            confs.push((id.to_string(), conf));
        }
        let before = both_filters(&go.host);
        assert!(before.contains("-s 10.1.2.3/32 -j ACCEPT"), "{before}");
        // CHECK of each side on the other's rules
        for (id, conf) in &confs {
            go.call("firewall", "CHECK", conf).id(id).run().ok();
            us.call("firewall", "CHECK", conf).id(id).go().run().ok();
        }
        // cross DEL: cnibox removes Go's rules and Go removes cnibox's, alike
        for (id, conf) in &confs {
            go.call("firewall", "DEL", conf).id(id).run().ok();
            us.call("firewall", "DEL", conf).id(id).go().run().ok();
        }
        let after = both_filters(&go.host);
        assert_eq!(
            both_filters(&us.host),
            after,
            "{extra}: same after cross DEL"
        );
        for ip in ["10.1.2.3", "fd00:1::3", "10.1.3.4"] {
            assert!(!after.contains(ip), "{extra}: {ip} left:\n{after}");
        }
        // and what is left is what Go's own DEL leaves: the shared chains
        let reference = Rig::new();
        for (id, conf) in &confs {
            reference
                .call("firewall", "ADD", conf)
                .id(id)
                .go()
                .run()
                .ok();
        }
        for (id, conf) in &confs {
            reference
                .call("firewall", "DEL", conf)
                .id(id)
                .go()
                .run()
                .ok();
        }
        assert_eq!(both_filters(&reference.host), after, "{extra}");
    }
}

/// The installed base: Debian's 1.1.1 ADDs, cnibox CHECKs and DELs.
#[test]
fn debian_1_1_1_add_then_cnibox_check_and_del() {
    let rig = Rig::new();
    let conf = with_prev(
        &fw_conf("net1", "1.0.0", json!({"ingressPolicy": "same-bridge"})),
        &prev("1.0.0", "cbr0", &["10.1.2.3/24", "fd00:1::3/64"]),
    );
    rig.call("firewall", "ADD", &conf).debian().run().ok();
    let added = both_filters(&rig.host);
    assert!(added.contains("-s fd00:1::3/128 -j ACCEPT"), "{added}");
    rig.call("firewall", "CHECK", &conf).run().ok();
    rig.call("firewall", "DEL", &conf).run().ok();
    let left = both_filters(&rig.host);
    assert!(
        !left.contains("10.1.2.3") && !left.contains("fd00:1::3"),
        "{left}"
    );
    // and the other way: cnibox ADDs, Debian DELs
    let rig = Rig::new();
    rig.call("firewall", "ADD", &conf).run().ok();
    rig.call("firewall", "DEL", &conf).debian().run().ok();
    let left = both_filters(&rig.host);
    assert!(
        !left.contains("10.1.2.3") && !left.contains("fd00:1::3"),
        "{left}"
    );
}

// ---------------------------------------------------------------------------------------
// nftables backend

#[test]
fn nftables_backend_without_iptables_on_path() {
    let rig = Rig::new();
    let path = path_without_iptables(&rig);
    let conf = with_prev(
        &fw_conf("net1", "1.1.0", json!({})),
        &prev("1.1.0", "cbr0", &["10.1.2.3/24", "fd00:1::3/64"]),
    );
    // The reference needs iptables: it fails here.
    let g = rig
        .call("firewall", "ADD", &conf)
        .go()
        .env("PATH", &path)
        .run();
    assert_ne!(g.code, 0, "{}", g.stdout);
    let r = rig
        .call("firewall", "ADD", &conf)
        .env("PATH", &path)
        .run()
        .ok()
        .clone();
    assert_eq!(r, conf["prevResult"]);
    let rs = nft(&rig.host);
    assert!(rs.contains("table inet cni_firewall"), "{rs}");
    assert!(
        rs.contains("ip daddr 10.1.2.3 ct state established,related accept comment")
            && rs.contains("ip saddr 10.1.2.3 accept comment")
            && rs.contains("ip6 daddr fd00:1::3 ct state established,related accept comment")
            && rs.contains("ip6 saddr fd00:1::3 accept comment"),
        "{rs}"
    );
    assert!(rs.contains("id: ctr1\""), "identity in the comment: {rs}");
    assert!(
        !filter(&rig.host, false).contains("CNI-"),
        "no iptables rules"
    );
    rig.call("firewall", "CHECK", &conf)
        .env("PATH", &path)
        .run()
        .ok();
    // ADD again (a runtime retry): no duplicates
    rig.call("firewall", "ADD", &conf)
        .env("PATH", &path)
        .run()
        .ok();
    assert_eq!(count(&nft(&rig.host), "id: ctr1\""), 4);
    rig.call("firewall", "DEL", &conf)
        .env("PATH", &path)
        .run()
        .ok();
    assert!(
        !nft(&rig.host).contains("cni_firewall"),
        "table gone with its last attachment:\n{}",
        nft(&rig.host)
    );
    rig.call("firewall", "DEL", &conf)
        .env("PATH", &path)
        .run()
        .ok();
    // CHECK after DEL fails
    let out = rig
        .call("firewall", "CHECK", &conf)
        .env("PATH", &path)
        .run();
    assert!(out.stdout.contains("not found"), "{}", out.stdout);
}

/// With the nftables backend, ACCEPT works within its own table: an admin who sets
/// `forward`'s policy to drop still lets the containers talk, and that policy survives
/// ADDs and keeps the table when the last container goes.
#[test]
fn nftables_accepts_under_a_drop_policy_and_the_policy_is_kept() {
    let rig = Rig::new();
    let b = rig.new_netns();
    let path = path_without_iptables(&rig);
    let extra = json!({"backend": "nftables"});
    let ca = br_conf(&rig, "neta", "cbra", "10.13.1.0/24");
    let cb = br_conf(&rig, "netb", "cbrb", "10.13.2.0/24");
    let (ra, _) = attach(&rig, &rig.cont, "ca", &ca, &extra, Some(&path));
    let out = rig.host.exec(&[
        "nft",
        "add chain inet cni_firewall forward { policy drop ; }",
    ]);
    assert!(out.status.success(), "{out:?}");
    let (rb, ipb) = attach(&rig, &b, "cb", &cb, &extra, Some(&path));
    assert!(nft(&rig.host).contains("policy drop"), "kept by ADD");
    assert!(ping(&rig.cont, &ipb), "accepted by the per-address rules");
    detach(&rig, &rig.cont, "ca", "neta", &extra, &ra);
    detach(&rig, &b, "cb", "netb", &extra, &rb);
    let rs = nft(&rig.host);
    assert!(rs.contains("policy drop") && !rs.contains("10.13."), "{rs}");
    assert!(!ping(&rig.cont, &ipb), "the policy drops now");
}

// ---------------------------------------------------------------------------------------
// Races, DEL, GC

/// `n` firewall ADDs (distinct containers and addresses) started at the same moment.
fn parallel_adds(rig: &Rig, extra: &Value, n: usize, debian: bool) -> Vec<CniOut> {
    let go = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let go = &go;
                s.spawn(move || {
                    let ip = format!("10.1.2.{}/24", 10 + i);
                    let conf = with_prev(
                        &fw_conf("net1", "1.0.0", extra.clone()),
                        &prev("1.0.0", "cbr0", &[ip.as_str()]),
                    );
                    let mut call = rig.call("firewall", "ADD", &conf).id(&format!("c{i}"));
                    if debian {
                        call = call.debian();
                    }
                    go.wait();
                    call.run()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// 16 ADDs at once on a fresh host, several rounds per backend: every one succeeds and
/// the shared chains, jumps and isolation rules exist once. (Debian's 1.1.1, for
/// comparison, printed and not asserted: issue 17 saw about one ADD in ten fail; on
/// this machine none failed, but each round left 1 to 5 `FORWARD -j CNI-FORWARD`.)
#[test]
fn sixteen_parallel_adds_one_cni_forward() {
    for nft_backend in [false, true] {
        for _round in 0..4 {
            let rig = Rig::new();
            let backend = if nft_backend { "nftables" } else { "iptables" };
            let extra = json!({"backend": backend, "ingressPolicy": "isolated"});
            for o in &parallel_adds(&rig, &extra, 16, false) {
                o.ok();
            }
            if nft_backend {
                let rs = nft(&rig.host);
                assert_eq!(count(&rs, "table inet cni_firewall"), 1, "{rs}");
                assert_eq!(count(&rs, "chain CNI-FORWARD {"), 1, "{rs}");
                assert_eq!(count(&rs, "jump CNI-FORWARD"), 1, "{rs}");
                assert_eq!(count(&rs, "jump CNI-ADMIN"), 1, "{rs}");
                assert_eq!(count(&rs, "jump CNI-ISOLATION-STAGE-1"), 1, "{rs}");
                assert_eq!(count(&rs, "\toifname \"cbr0\" drop"), 1, "{rs}");
                assert_eq!(count(&rs, " accept comment"), 32, "{rs}");
            } else {
                let f = filter(&rig.host, false);
                assert_eq!(count(&f, ":CNI-FORWARD "), 1, "{f}");
                assert_eq!(count(&f, "-A FORWARD "), 2, "{f}");
                assert_eq!(count(&f, "-j CNI-ADMIN"), 1, "{f}");
                assert_eq!(count(&f, "-A CNI-ISOLATION-STAGE-1 "), 3, "{f}");
                assert_eq!(count(&f, "-A CNI-ISOLATION-STAGE-2 "), 2, "{f}");
                assert_eq!(count(&f, "-j ACCEPT"), 32, "{f}");
            }
        }
    }
    let rig = Rig::new();
    let failed = parallel_adds(&rig, &json!({}), 16, true)
        .iter()
        .filter(|o| o.code != 0)
        .count();
    let jumps = count(&filter(&rig.host, false), "-j CNI-FORWARD");
    eprintln!("Debian 1.1.1: {failed} of 16 parallel ADDs failed, {jumps} FORWARD jumps");
}

/// DEL without prevResult: the reference removes nothing; cnibox finds the iptables
/// rules by the addresses still on the interface.
#[test]
fn del_without_prev_result_removes_the_rules() {
    let rig = Rig::new();
    let ca = br_conf(&rig, "neta", "cbra", "10.14.1.0/24");
    let (_, ip) = attach(&rig, &rig.cont, "ca", &ca, &json!({}), None);
    let bare = fw_conf("neta", "1.0.0", json!({}));
    rig.call("firewall", "DEL", &bare).id("ca").go().run().ok();
    assert!(filter(&rig.host, false).contains(&ip), "Go removed nothing");
    rig.call("firewall", "DEL", &bare).id("ca").run().ok();
    let f = filter(&rig.host, false);
    assert!(!f.contains(&ip), "{f}");
    // nftables: by the comment, also when the netns is gone
    let mut rig = Rig::new();
    let conf = with_prev(
        &fw_conf("net1", "1.0.0", json!({"backend": "nftables"})),
        &prev("1.0.0", "cbr0", &["10.1.2.3/24"]),
    );
    rig.call("firewall", "ADD", &conf).run().ok();
    rig.drop_cont();
    rig.call("firewall", "DEL", &fw_conf("net1", "1.0.0", json!({})))
        .run()
        .ok();
    assert!(
        !nft(&rig.host).contains("cni_firewall"),
        "{}",
        nft(&rig.host)
    );
}

/// DEL succeeds when there is nothing to do, when the netns is gone and when the config
/// holds values ADD refuses, and still removes the rules then.
#[test]
fn del_is_idempotent_and_never_refuses_the_config() {
    let mut rig = Rig::new();
    let p = prev("1.0.0", "cbr0", &["10.1.2.3/24", "fd00:1::3/64"]);
    let good = with_prev(&fw_conf("net1", "1.0.0", json!({})), &p);
    rig.call("firewall", "DEL", &good).run().ok();
    rig.call("firewall", "ADD", &good).run().ok();
    let mut nft_conf = good.clone();
    nft_conf["backend"] = json!("nftables");
    rig.call("firewall", "ADD", &nft_conf).id("ctr2").run().ok();
    rig.drop_cont();
    let bad = with_prev(
        &fw_conf(
            "net1",
            "1.0.0",
            json!({"backend": "firewalld", "ingressPolicy": "bogus", "iptablesAdminChainName": "-bad name-"}),
        ),
        &p,
    );
    rig.call("firewall", "DEL", &bad).run().ok();
    rig.call("firewall", "DEL", &bad).id("ctr2").run().ok();
    let f = both_filters(&rig.host);
    assert!(!f.contains("10.1.2.3") && !f.contains("fd00:1::3"), "{f}");
    assert!(!nft(&rig.host).contains("cni_firewall"));
    rig.call("firewall", "DEL", &bad).run().ok();
    // no CNI_NETNS at all
    rig.call("firewall", "DEL", &good).netns("").run().ok();
}

#[test]
fn gc_removes_stale_nftables_attachments() {
    let rig = Rig::new();
    let extra = json!({"backend": "nftables"});
    for (net, id, ip) in [
        ("net1", "c1", "10.1.2.3/24"),
        ("net1", "c2", "10.1.2.4/24"),
        ("net2", "c3", "10.1.3.5/24"),
    ] {
        let conf = with_prev(
            &fw_conf(net, "1.1.0", extra.clone()),
            &prev("1.1.0", "cbr0", &[ip]),
        );
        rig.call("firewall", "ADD", &conf).id(id).run().ok();
    }
    let mut gc = fw_conf("net1", "1.1.0", extra.clone());
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    rig.call("firewall", "GC", &gc).run().ok();
    let rs = nft(&rig.host);
    assert_eq!(count(&rs, "id: c1\""), 2, "{rs}");
    assert_eq!(count(&rs, "id: c2\""), 0, "{rs}");
    assert_eq!(count(&rs, "id: c3\""), 2, "other network untouched: {rs}");
    gc["cni.dev/valid-attachments"] = json!([]);
    rig.call("firewall", "GC", &gc).run().ok();
    let rs = nft(&rig.host);
    assert_eq!(count(&rs, "id: c1\""), 0, "{rs}");
    assert_eq!(count(&rs, "id: c3\""), 2, "{rs}");
    // GC with iptables rules around: nothing to go by, nothing removed, no error
    let conf = with_prev(
        &fw_conf("net1", "1.1.0", json!({})),
        &prev("1.1.0", "cbr0", &["10.1.2.9/24"]),
    );
    rig.call("firewall", "ADD", &conf).id("c9").run().ok();
    rig.call("firewall", "GC", &gc).run().ok();
    assert!(filter(&rig.host, false).contains("10.1.2.9"));
}

// ---------------------------------------------------------------------------------------
// Malformed input and rollback

/// Every entry of `testdata/malformed-firewall.json`: the right code and message, and
/// the host's iptables and nftables state unchanged.
#[test]
fn malformed_inputs_get_spec_codes_and_change_nothing() {
    let rig = Rig::new();
    let base = with_prev(
        &fw_conf("net1", "1.0.0", json!({"ingressPolicy": "isolated"})),
        &prev("1.0.0", "cbr0", &["10.1.2.3/24", "fd00:1::3/64"]),
    );
    // something there already, so "unchanged" means more than "empty"
    let other = with_prev(
        &fw_conf("net1", "1.0.0", json!({})),
        &prev("1.0.0", "cbr9", &["10.9.9.9/24"]),
    );
    rig.call("firewall", "ADD", &other).id("other").run().ok();
    Malformed::new(
        "firewall",
        include_str!("../testdata/malformed-firewall.json"),
        10,
        base,
    )
    .snap(Snap {
        firewall: true,
        ..Snap::default()
    })
    .run(&rig);
}

/// A dual-stack ADD whose IPv6 half fails leaves nothing of its IPv4 half, neither on a
/// fresh host (chains included) nor next to another container's rules.
#[test]
fn failed_add_rolls_back() {
    let rig = Rig::new();
    let tools: PathBuf = rig.dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let stub = tools.join("ip6tables-restore");
    std::fs::write(
        &stub,
        "#!/bin/sh\necho 'ip6tables-restore: simulated failure' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap());
    let conf = with_prev(
        &fw_conf("net1", "1.0.0", json!({"ingressPolicy": "isolated"})),
        &prev("1.0.0", "cbr0", &["10.1.2.3/24", "fd00:1::3/64"]),
    );
    let fresh = both_filters(&rig.host);
    let out = rig.call("firewall", "ADD", &conf).env("PATH", &path).run();
    assert!(out.stdout.contains("simulated failure"), "{}", out.stdout);
    assert_eq!(
        both_filters(&rig.host),
        fresh,
        "nothing left, chains included"
    );
    // with another container's rules already there: those stay, ours go
    let other = with_prev(
        &fw_conf("net1", "1.0.0", json!({"ingressPolicy": "isolated"})),
        &prev("1.0.0", "cbr0", &["10.1.2.7/24"]),
    );
    rig.call("firewall", "ADD", &other).id("other").run().ok();
    let before = both_filters(&rig.host);
    let out = rig.call("firewall", "ADD", &conf).env("PATH", &path).run();
    assert_ne!(out.code, 0);
    assert_eq!(both_filters(&rig.host), before);
}

/// `backend: "firewalld"` is refused clearly (no firewalld here to test against).
#[test]
fn firewalld_backend_is_refused() {
    let rig = Rig::new();
    let conf = with_prev(
        &fw_conf(
            "net1",
            "1.0.0",
            json!({"backend": "firewalld", "firewalldZone": "trusted"}),
        ),
        &prev("1.0.0", "cbr0", &["10.1.2.3/24"]),
    );
    let out = rig.call("firewall", "ADD", &conf).run();
    assert_eq!(out.err_code(), 7);
    assert!(
        out.stdout.contains("\\\"firewalld\\\" is not supported"),
        "{}",
        out.stdout
    );
}
