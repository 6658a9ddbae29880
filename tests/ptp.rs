//! ptp through the built binary: §4.2 of the reference notes.

mod common;

use common::*;
use serde_json::{json, Value};

fn conf(rig: &Rig, ver: &str, extra: Value, ranges: Value) -> Value {
    let mut c = json!({"cniVersion": ver, "name": "ptpnet", "type": "ptp",
        "ipam": {"type": "host-local", "ranges": ranges, "dataDir": rig.data_dir()}});
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    c
}

#[test]
fn add_del_every_version() {
    for ver in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let rig = Rig::new();
        let c = conf(
            &rig,
            ver,
            json!({"mtu": 1400}),
            json!([[{"subnet": "10.1.2.0/24"}]]),
        );
        let v = rig.call("ptp", "ADD", &c).run().ok().clone();
        assert_eq!(v["cniVersion"], ver);
        if ver >= "0.3.0" {
            let ifs = v["interfaces"].as_array().unwrap();
            assert_eq!(ifs.len(), 2);
            assert!(
                ifs[0]["name"].as_str().unwrap().starts_with("veth")
                    && ifs[0].get("sandbox").is_none()
            );
            assert_eq!(ifs[1]["name"], "eth0");
            assert_eq!(ifs[1]["sandbox"], rig.cont.path.to_str().unwrap());
            assert_eq!(v["ips"][0]["interface"], 1);
            let host = link(&rig.host, ifs[0]["name"].as_str().unwrap()).unwrap();
            assert_eq!(host["mtu"], 1400);
            let a = addrs(&rig.host, ifs[0]["name"].as_str().unwrap());
            assert!(
                a.iter()
                    .any(|x| x["local"] == "10.1.2.1" && x["prefixlen"] == 32),
                "{a:?}"
            );
        }
        assert_eq!(link(&rig.cont, "eth0").unwrap()["mtu"], 1400);
        let r = routes(&rig.cont, false);
        assert!(
            r.iter()
                .any(|x| x["dst"] == "10.1.2.1" && x["scope"] == "link"),
            "{r:?}"
        );
        assert!(
            r.iter()
                .any(|x| x["dst"] == "10.1.2.0/24" && x["gateway"] == "10.1.2.1"),
            "{r:?}"
        );
        assert!(
            !r.iter()
                .any(|x| x["dst"] == "10.1.2.0/24" && x.get("gateway").is_none()),
            "connected route replaced: {r:?}"
        );
        assert!(ping(&rig.cont, "10.1.2.1"), "container pings its gateway");
        if ver >= "0.4.0" {
            rig.call("ptp", "CHECK", &with_prev(&c, &v)).run().ok();
        }
        rig.call("ptp", "DEL", &with_prev(&c, &v)).run().ok();
        assert!(link(&rig.cont, "eth0").is_none());
        assert!(reservations(&rig.data_dir().join("ptpnet")).is_empty());
        rig.call("ptp", "DEL", &with_prev(&c, &v)).run().ok();
    }
}

#[test]
fn masquerade_backends() {
    for backend in ["iptables", "nftables"] {
        let rig = Rig::new();
        let c = conf(
            &rig,
            "1.0.0",
            json!({"ipMasq": true, "ipMasqBackend": backend}),
            json!([[{"subnet": "10.1.2.0/24"}]]),
        );
        let v = rig.call("ptp", "ADD", &c).run().ok().clone();
        let present = |rig: &Rig| {
            if backend == "nftables" {
                nft_ruleset(&rig.host)
                    .contains("ip saddr 10.1.2.2 ip daddr != 10.1.2.0/24 masquerade")
            } else {
                iptables_save(&rig.host, false).contains("-A POSTROUTING -s 10.1.2.2/32")
            }
        };
        assert!(present(&rig), "{backend}");
        rig.call("ptp", "DEL", &with_prev(&c, &v)).run().ok();
        assert!(!present(&rig), "{backend}");
    }
}

#[test]
fn masquerade_removed_when_netns_is_gone() {
    let mut rig = Rig::new();
    let c = conf(
        &rig,
        "1.0.0",
        json!({"ipMasq": true, "ipMasqBackend": "nftables"}),
        json!([[{"subnet": "10.1.2.0/24"}]]),
    );
    rig.call("ptp", "ADD", &c).run().ok();
    let gone = rig.cont.path.to_str().unwrap().to_string();
    rig.drop_cont();
    rig.call("ptp", "DEL", &c).netns(&gone).run().ok();
    assert!(!nft_ruleset(&rig.host).contains("masquerade comment"));
    assert!(reservations(&rig.data_dir().join("ptpnet")).is_empty());
}

#[test]
fn dual_stack_with_extra_routes() {
    let rig = Rig::new();
    let mut c = conf(
        &rig,
        "1.0.0",
        json!({}),
        json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]),
    );
    c["ipam"]["routes"] = json!([{"dst": "10.9.0.0/16"}, {"dst": "2001:db8:9::/48"}]);
    let v = rig.call("ptp", "ADD", &c).run().ok().clone();
    assert_eq!(v["ips"].as_array().unwrap().len(), 2);
    let r4 = routes(&rig.cont, false);
    let r6 = routes(&rig.cont, true);
    assert!(
        r4.iter()
            .any(|x| x["dst"] == "10.9.0.0/16" && x["gateway"] == "10.1.2.1"),
        "{r4:?}"
    );
    assert!(
        r6.iter()
            .any(|x| x["dst"] == "2001:db8:9::/48" && x["gateway"] == "2001:db8:1::1"),
        "{r6:?}"
    );
    assert!(ping(&rig.cont, "2001:db8:1::1"), "v6 gateway reachable");
    rig.call("ptp", "CHECK", &with_prev(&c, &v)).run().ok();
    rig.call("ptp", "DEL", &with_prev(&c, &v)).run().ok();
}

#[test]
fn dns_override() {
    let rig = Rig::new();
    let rc = rig.dir.join("resolv.conf");
    std::fs::write(&rc, "nameserver 10.1.2.200\n").unwrap();
    let mut c = conf(
        &rig,
        "1.0.0",
        json!({}),
        json!([[{"subnet": "10.1.2.0/24"}]]),
    );
    c["ipam"]["resolvConf"] = json!(rc);
    let v = rig.call("ptp", "ADD", &c).run().ok().clone();
    assert_eq!(
        v["dns"]["nameservers"],
        json!(["10.1.2.200"]),
        "IPAM dns kept"
    );
    let mut c2 = c.clone();
    c2["dns"] = json!({"nameservers": ["1.1.1.1"], "search": ["x"]});
    let c2_ns = rig.new_netns();
    let v2 = rig
        .call("ptp", "ADD", &c2)
        .id("c2")
        .netns(c2_ns.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    assert_eq!(
        v2["dns"],
        json!({"nameservers": ["1.1.1.1"], "search": ["x"]})
    );
    let mut c3 = c.clone();
    c3["dns"] = json!({"nameservers": []});
    let c3_ns = rig.new_netns();
    let v3 = rig
        .call("ptp", "ADD", &c3)
        .id("c3")
        .netns(c3_ns.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    assert!(
        v3.get("dns").is_none(),
        "empty override replaces IPAM dns: {v3}"
    );
}

#[test]
fn del_never_added_and_old_check() {
    let rig = Rig::new();
    let c = conf(
        &rig,
        "1.0.0",
        json!({}),
        json!([[{"subnet": "10.1.2.0/24"}]]),
    );
    rig.call("ptp", "DEL", &c).id("nobody").run().ok();
    let old = conf(
        &rig,
        "0.3.1",
        json!({}),
        json!([[{"subnet": "10.1.2.0/24"}]]),
    );
    rig.call("ptp", "CHECK", &old)
        .run()
        .fails_with(1, "config version does not allow CHECK");
}

#[test]
fn failed_add_leaves_nothing() {
    // The container already has eth0: ADD fails after IPAM allocated; everything undone.
    let rig = Rig::new();
    rig.cont.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let c = conf(
        &rig,
        "1.0.0",
        json!({"ipMasq": true, "ipMasqBackend": "nftables"}),
        json!([[{"subnet": "10.1.2.0/24"}]]),
    );
    rig.call("ptp", "ADD", &c)
        .run()
        .fails_with(999, "container veth name \"eth0\" already exists");
    assert!(
        reservations(&rig.data_dir().join("ptpnet")).is_empty(),
        "IP released"
    );
    assert!(!nft_ruleset(&rig.host).contains("masquerade comment"));
    assert!(links(&rig.host)
        .iter()
        .all(|l| !l["ifname"].as_str().unwrap_or("").starts_with("veth")));
}

#[test]
fn differential_against_the_reference() {
    // The same ADD through Go v1.9.1 and cnibox, with masquerade on either backend, IPv4
    // and dual stack: same result, same links, addresses and routes on both sides of the
    // veth, same iptables and ip6tables nat rules, same nftables ruleset. Then each
    // side's DEL removes what the other ADDed, and nothing is left.
    for backend in ["iptables", "nftables"] {
        for ranges in [
            json!([[{"subnet": "10.1.2.0/24"}]]),
            json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]),
        ] {
            let go = Rig::new();
            let ours = Rig::new();
            let empty = (net_state(&go), fw_state(&go));
            assert_eq!(empty, (net_state(&ours), fw_state(&ours)));
            let extra = json!({"ipMasq": true, "ipMasqBackend": backend});
            let gc = conf(&go, "1.0.0", extra.clone(), ranges.clone());
            let oc = conf(&ours, "1.0.0", extra.clone(), ranges.clone());
            let gv = go.call("ptp", "ADD", &gc).go().run().ok().clone();
            let ov = ours.call("ptp", "ADD", &oc).run().ok().clone();
            let what = format!("{backend} {ranges}");
            assert_eq!(normalize_result(&gv), normalize_result(&ov), "{what}");
            assert_eq!(net_state(&go), net_state(&ours), "{what}");
            let fw = fw_state(&ours);
            assert_eq!(fw_state(&go), fw, "{what}");
            let v6 = ranges.to_string().contains("2001:db8");
            if backend == "iptables" {
                assert!(fw.0.iter().any(|r| r.contains("MASQUERADE")), "{fw:?}");
                assert_eq!(fw.1.iter().any(|r| r.contains("MASQUERADE")), v6, "{fw:?}");
            } else {
                assert!(fw
                    .2
                    .contains("ip saddr 10.1.2.2 ip daddr != 10.1.2.0/24 masquerade"));
                assert_eq!(fw.2.contains("ip6 saddr 2001:db8:1::2"), v6, "{}", fw.2);
            }
            // cross-DEL
            go.call("ptp", "DEL", &with_prev(&gc, &gv)).run().ok();
            ours.call("ptp", "DEL", &with_prev(&oc, &ov))
                .go()
                .run()
                .ok();
            for (rig, who) in [(&go, "ours after Go"), (&ours, "Go's after ours")] {
                assert!(link(&rig.cont, "eth0").is_none(), "{who}");
                assert!(
                    reservations(&rig.data_dir().join("ptpnet")).is_empty(),
                    "{who}"
                );
                assert_eq!(net_state(rig), empty.0, "{who}: {what}");
                let (r4, r6, nft) = fw_state(rig);
                assert!(r4.is_empty() && r6.is_empty(), "{who}: {r4:?} {r6:?}");
                for v6 in [false, true] {
                    let save = iptables_save(&rig.host, v6);
                    assert!(!save.contains("CNI-"), "{who}: chain left: {save}");
                }
                assert!(!nft.contains("masquerade comment"), "{who}: {nft}");
            }
        }
    }
}

#[test]
fn masquerade_chain_is_repaired_when_tampered() {
    // ADD leaves `postrouting` alone when it holds the expected rules (re-declaring a
    // chain costs the kernel an RCU grace period) but rewrites it when it does not.
    let rig = Rig::new();
    let c = conf(
        &rig,
        "1.0.0",
        json!({"ipMasq": true, "ipMasqBackend": "nftables"}),
        json!([[{"subnet": "10.1.2.0/24"}]]),
    );
    rig.call("ptp", "ADD", &c).run().ok();
    let post = |rig: &Rig| {
        nft_list(
            &rig.host,
            false,
            &["chain", "inet", "cni_plugins_masquerade", "postrouting"],
        )
        .expect("postrouting exists")
    };
    let good = post(&rig);
    assert!(
        good.contains("ip daddr 224.0.0.0/4 return") && good.contains("goto masq_checks"),
        "{good}"
    );
    let c2 = rig.new_netns();
    rig.call("ptp", "ADD", &c)
        .id("c2")
        .netns(c2.path.to_str().unwrap())
        .run()
        .ok();
    assert_eq!(post(&rig), good);
    rig.host.run(&[
        "nft",
        "flush",
        "chain",
        "inet",
        "cni_plugins_masquerade",
        "postrouting",
    ]);
    let c3 = rig.new_netns();
    rig.call("ptp", "ADD", &c)
        .id("c3")
        .netns(c3.path.to_str().unwrap())
        .run()
        .ok();
    assert_eq!(post(&rig), good, "postrouting rewritten");
    assert_eq!(
        nft_ruleset(&rig.host).matches("masquerade comment").count(),
        3
    );
}
