//! bridge through the built binary: the scenarios of §4.1 of the reference notes, with
//! host-local (ours, in-process) as IPAM, each test in its own namespaces.

mod common;

use common::*;
use serde_json::{json, Value};

const VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn v4() -> Value {
    json!([[{"subnet": "10.1.2.0/24"}]])
}
fn v6() -> Value {
    json!([[{"subnet": "2001:db8:1::/64"}]])
}
fn dual() -> Value {
    json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
}

/// ADD, check the result and kernel state, CHECK (≥0.4.0), DEL twice.
fn add_check_del(ranges: Value, default_gw: bool, ver: &str) {
    let rig = Rig::new();
    let conf = bridge_conf(
        &rig,
        ver,
        json!({"isGateway": true, "isDefaultGateway": default_gw}),
        ranges.clone(),
    );
    let n_ips = ranges.as_array().unwrap().len();
    let out = rig.call("bridge", "ADD", &conf).run();
    if (ver == "0.1.0" || ver == "0.2.0") && n_ips > 2 {
        assert!(
            out.stdout
                .contains("does not support more than 1 address per family"),
            "{}",
            out.stdout
        );
        assert!(
            link(&rig.cont, "eth0").is_none(),
            "failed ADD must leave no link"
        );
        return;
    }
    let v = out.ok().clone();
    assert_eq!(v["cniVersion"], ver);
    let br = link(&rig.host, "cbr0").expect("bridge exists");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert!(
        !br["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "PROMISC"),
        "promisc off by default"
    );
    let cont = link(&rig.cont, "eth0").expect("container veth");
    assert!(cont["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    if ver >= "0.3.0" {
        let ifs = v["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3, "{v}");
        assert_eq!(ifs[0]["name"], "cbr0");
        assert_eq!(
            ifs[0]["mac"], br["address"],
            "result carries the real bridge MAC"
        );
        assert!(ifs[1]["name"].as_str().unwrap().starts_with("veth"));
        assert_eq!(ifs[2]["name"], "eth0");
        assert_eq!(ifs[2]["sandbox"], rig.cont.path.to_str().unwrap());
        assert_eq!(ifs[2]["mac"], cont["address"]);
        assert_ne!(
            ifs[0]["mac"], ifs[2]["mac"],
            "bridge MAC is pinned, not the container's"
        );
        for ip in v["ips"].as_array().unwrap() {
            assert_eq!(ip["interface"], 2);
            let addr = ip["address"].as_str().unwrap();
            assert!(has_addr(&rig.cont, "eth0", addr), "{addr} on eth0");
            let gw = ip["gateway"].as_str().unwrap();
            let len = addr.split('/').nth(1).unwrap();
            assert!(
                has_addr(&rig.host, "cbr0", &format!("{gw}/{len}")),
                "gateway {gw}/{len} on the bridge"
            );
        }
        assert_eq!(v["ips"].as_array().unwrap().len(), n_ips);
    }
    if default_gw {
        let r4 = routes(&rig.cont, false);
        let r6 = routes(&rig.cont, true);
        let has_v4 = ranges.to_string().contains("10.1.2.0");
        let has_v6 = ranges.to_string().contains("2001:db8");
        assert_eq!(
            r4.iter()
                .any(|r| r["dst"] == "default" && r["gateway"] == "10.1.2.1"),
            has_v4,
            "{r4:?}"
        );
        assert_eq!(
            r6.iter()
                .any(|r| r["dst"] == "default" && r["gateway"] == "2001:db8:1::1"),
            has_v6,
            "{r6:?}"
        );
    }
    if ver >= "0.4.0" {
        rig.call("bridge", "CHECK", &with_prev(&conf, &v))
            .run()
            .ok();
    }
    let host_veth = v["interfaces"][1]["name"].as_str().map(str::to_string);
    rig.call("bridge", "DEL", &with_prev(&conf, &v)).run().ok();
    assert!(link(&rig.cont, "eth0").is_none());
    if let Some(h) = host_veth {
        assert!(link(&rig.host, &h).is_none(), "host veth gone");
    }
    rig.call("bridge", "DEL", &with_prev(&conf, &v)).run().ok();
    // host-local files are gone
    let files: Vec<_> = std::fs::read_dir(rig.data_dir().join("brnet"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| f == "lock" || f.starts_with("last_reserved_ip") || f.starts_with('.')),
        "{files:?}"
    );
}

#[test]
fn add_del_ipv4_every_version() {
    for ver in VERSIONS {
        add_check_del(v4(), true, ver);
    }
}

#[test]
fn add_del_ipv6_every_version() {
    for ver in ["0.2.0", "0.4.0", "1.1.0"] {
        add_check_del(v6(), true, ver);
    }
}

#[test]
fn add_del_dual_stack() {
    for ver in ["0.2.0", "0.3.1", "1.0.0"] {
        add_check_del(dual(), true, ver);
    }
}

#[test]
fn add_del_one_v4_two_v6() {
    let ranges = json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}], [{"subnet": "2001:db8:2::/64"}]]);
    for ver in ["0.2.0", "0.4.0", "1.0.0"] {
        add_check_del(ranges.clone(), true, ver);
    }
}

#[test]
fn resolv_conf_feeds_dns() {
    let rig = Rig::new();
    let rc = rig.dir.join("resolv.conf");
    std::fs::write(&rc, "nameserver 10.1.2.123\nsearch example.com\n").unwrap();
    let mut conf = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v4());
    conf["ipam"]["resolvConf"] = json!(rc);
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    assert_eq!(v["dns"]["nameservers"], json!(["10.1.2.123"]));
    // A plugin-level dns replaces IPAM's.
    let mut conf2 = conf.clone();
    conf2["dns"] = json!({"nameservers": []});
    let c2 = rig.new_netns();
    let v2 = rig
        .call("bridge", "ADD", &conf2)
        .id("c2")
        .netns(c2.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    assert!(v2.get("dns").is_none(), "{v2}");
}

#[test]
fn existing_bridge_is_reused_and_non_bridge_refused() {
    let rig = Rig::new();
    rig.host.ip(&["link", "add", "cbr0", "type", "bridge"]);
    let before = link(&rig.host, "cbr0").unwrap()["ifindex"].clone();
    let conf = bridge_conf(&rig, "1.0.0", json!({}), v4());
    rig.call("bridge", "ADD", &conf).run().ok();
    assert_eq!(link(&rig.host, "cbr0").unwrap()["ifindex"], before);

    let rig = Rig::new();
    rig.host.ip(&[
        "link", "add", "cbr0", "type", "veth", "peer", "name", "cbr0p",
    ]);
    let conf = bridge_conf(&rig, "1.0.0", json!({}), v4());
    let out = rig.call("bridge", "ADD", &conf).run();
    assert!(
        out.err_text()
            .contains("already exists but is not a bridge"),
        "{}",
        out.stdout
    );
}

#[test]
fn l2_only() {
    let rig = Rig::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "cbr0"});
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    assert!(v.get("ips").is_none());
    let cont = link(&rig.cont, "eth0").unwrap();
    assert!(cont["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert!(addrs(&rig.cont, "eth0")
        .iter()
        .all(|a| a["scope"] == "link"));
    // Fixed: CHECK of an L2 bridge works (the reference fails with "no plugin name").
    rig.call("bridge", "CHECK", &with_prev(&conf, &v))
        .run()
        .ok();
    rig.call("bridge", "DEL", &conf).run().ok();
    assert!(link(&rig.cont, "eth0").is_none());
    for ver in ["0.1.0", "0.2.0"] {
        let mut c = conf.clone();
        c["cniVersion"] = json!(ver);
        rig.call("bridge", "ADD", &c)
            .run()
            .fails_with(1, "cannot convert: no valid IP addresses");
        assert!(
            link(&rig.cont, "eth0").is_none(),
            "nothing created for a result that cannot be printed"
        );
    }
}

#[test]
fn del_of_never_added_is_success() {
    let rig = Rig::new();
    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"ipMasq": true, "macspoofchk": true}),
        v4(),
    );
    rig.call("bridge", "DEL", &conf).id("nobody").run().ok();
    rig.call("bridge", "DEL", &conf)
        .id("nobody")
        .netns("")
        .run()
        .ok();
}

#[test]
fn bridge_address_conflicts() {
    let rig = Rig::new();
    let a = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v4());
    rig.call("bridge", "ADD", &a).run().ok();
    let mut b = bridge_conf(
        &rig,
        "1.0.0",
        json!({"isGateway": true}),
        json!([[{"subnet": "10.1.3.0/24"}]]),
    );
    b["name"] = json!("other");
    let cont2 = rig.add_cont();
    let out = rig
        .call("bridge", "ADD", &b)
        .id("c2")
        .netns(cont2.path.to_str().unwrap())
        .run();
    assert!(
        out.stdout
            .contains("already has an IP address different from 10.1.3.1/24"),
        "{}",
        out.stdout
    );
    // The failed ADD released its IP and removed its veth.
    let left = reservations(&rig.data_dir().join("other"));
    assert!(left.is_empty(), "{left:?}");
    assert!(link(&cont2, "eth0").is_none());
    b["forceAddress"] = json!(true);
    rig.call("bridge", "ADD", &b)
        .id("c2")
        .netns(cont2.path.to_str().unwrap())
        .run()
        .ok();
    assert!(has_addr(&rig.host, "cbr0", "10.1.3.1/24"));
    assert!(!has_addr(&rig.host, "cbr0", "10.1.2.1/24"));

    // IPv6: non-overlapping prefixes accumulate.
    let rig = Rig::new();
    rig.call(
        "bridge",
        "ADD",
        &bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v6()),
    )
    .run()
    .ok();
    let mut b = bridge_conf(
        &rig,
        "1.0.0",
        json!({"isGateway": true}),
        json!([[{"subnet": "2001:db8:2::/64"}]]),
    );
    b["name"] = json!("other6");
    let cont2 = rig.add_cont();
    rig.call("bridge", "ADD", &b)
        .id("c2")
        .netns(cont2.path.to_str().unwrap())
        .run()
        .ok();
    assert!(has_addr(&rig.host, "cbr0", "2001:db8:1::1/64"));
    assert!(has_addr(&rig.host, "cbr0", "2001:db8:2::1/64"));
}

#[test]
fn promisc_hairpin_isolation() {
    let rig = Rig::new();
    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"promiscMode": true, "portIsolation": true}),
        v4(),
    );
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    let br = link(&rig.host, "cbr0").unwrap();
    assert!(
        br["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "PROMISC"),
        "{br}"
    );
    let host = link(&rig.host, v["interfaces"][1]["name"].as_str().unwrap()).unwrap();
    assert_eq!(host["linkinfo"]["info_slave_data"]["isolated"], true);
    assert_eq!(host["linkinfo"]["info_slave_data"]["hairpin"], false);

    let rig = Rig::new();
    let conf = bridge_conf(&rig, "1.0.0", json!({"hairpinMode": true}), v4());
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    let host = link(&rig.host, v["interfaces"][1]["name"].as_str().unwrap()).unwrap();
    assert_eq!(host["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert_eq!(host["linkinfo"]["info_slave_data"]["isolated"], false);

    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"hairpinMode": true, "promiscMode": true}),
        v4(),
    );
    let out = rig.call("bridge", "ADD", &conf).id("c3").run();
    assert_eq!(out.err_code(), 7);
    assert!(out.json.as_ref().unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("\"hairpinMode\" and \"promiscMode\" cannot both be true"));
}

/// The bridge keeps its own MAC (issue 24): after the first ADD it is not the host
/// veth's (the kernel would otherwise adopt the lowest port MAC), and ports coming and
/// going never move it. Go v1.9.1 shows the same relation.
#[test]
fn stable_bridge_mac() {
    for go in [false, true] {
        let rig = Rig::new();
        let conf = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v4());
        let call = |cmd: &str, conf: &Value, id: &str, ns: &str| {
            let c = rig.call("bridge", cmd, conf).id(id).netns(ns);
            if go {
                c.go().run()
            } else {
                c.run()
            }
        };
        let c1 = rig.cont.path.to_str().unwrap().to_string();
        let v = call("ADD", &conf, "c1", &c1).ok().clone();
        let br_mac = link(&rig.host, "cbr0").unwrap()["address"].clone();
        let veth = v["interfaces"][1]["name"].as_str().unwrap().to_string();
        let veth_mac = link(&rig.host, &veth).unwrap()["address"].clone();
        assert_ne!(br_mac, veth_mac, "go={go}: the bridge took its port's MAC");
        assert_eq!(v["interfaces"][0]["mac"], br_mac, "go={go}");

        call("DEL", &with_prev(&conf, &v), "c1", &c1).ok();
        let c2 = rig.add_cont();
        let v2 = call("ADD", &conf, "c2", c2.path.to_str().unwrap())
            .ok()
            .clone();
        assert_eq!(
            link(&rig.host, "cbr0").unwrap()["address"],
            br_mac,
            "go={go}: the bridge MAC moved"
        );
        assert_eq!(v2["interfaces"][0]["mac"], br_mac, "go={go}");
        let veth2 = v2["interfaces"][1]["name"].as_str().unwrap().to_string();
        assert_ne!(link(&rig.host, &veth2).unwrap()["address"], br_mac);
    }
}

/// A bridge whose MAC was set explicitly before any ADD keeps exactly that MAC.
#[test]
fn explicit_bridge_mac_is_left_alone() {
    let rig = Rig::new();
    rig.host.ip(&[
        "link",
        "add",
        "cbr0",
        "address",
        "02:00:00:00:be:ef",
        "type",
        "bridge",
    ]);
    let conf = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v4());
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    assert_eq!(
        link(&rig.host, "cbr0").unwrap()["address"],
        "02:00:00:00:be:ef"
    );
    assert_eq!(v["interfaces"][0]["mac"], "02:00:00:00:be:ef");
}

/// The bridge MAC is pinned once, by the ADD that gives the bridge its gateway address,
/// and not set again by later ADDs (issue 24): setting a MAC, even the same one, makes
/// the kernel flush every neighbour entry of the bridge. A stale entry put on the bridge
/// after the first ADD is still there after a second container's ADD.
#[test]
fn later_adds_keep_the_bridge_neighbour_cache() {
    let rig = Rig::new();
    let conf = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v4());
    rig.call("bridge", "ADD", &conf).id("n1").run().ok();
    let br_mac = link(&rig.host, "cbr0").unwrap()["address"].clone();
    rig.host.ip(&[
        "neigh",
        "replace",
        "10.1.2.200",
        "lladdr",
        "02:00:00:00:12:34",
        "dev",
        "cbr0",
        "nud",
        "stale",
    ]);
    let entry = |rig: &Rig| -> Option<Value> {
        rig.host
            .ip_json(&["neigh", "show", "dev", "cbr0"])
            .as_array()
            .expect("ip neigh prints a list")
            .iter()
            .find(|n| n["dst"] == "10.1.2.200")
            .cloned()
    };
    let before = entry(&rig).expect("the neighbour entry the test made");
    assert_eq!(before["lladdr"], "02:00:00:00:12:34", "{before}");

    let c2 = rig.add_cont();
    let v2 = rig
        .call("bridge", "ADD", &conf)
        .id("n2")
        .netns(c2.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    let after = entry(&rig).expect("the second ADD flushed the bridge's neighbour cache");
    assert_eq!(after["lladdr"], "02:00:00:00:12:34", "{after}");
    assert_eq!(link(&rig.host, "cbr0").unwrap()["address"], br_mac);
    assert_eq!(v2["interfaces"][0]["mac"], br_mac);
}

/// A bridge that already has a port (made by the operator, not by cnibox) and a MAC set
/// explicitly is left alone (issue 24): its MAC is the explicit one after the first ADD,
/// and after that container's DEL and another container's ADD.
#[test]
fn explicit_mac_of_a_bridge_with_ports_is_left_alone() {
    let rig = Rig::new();
    let explicit = "02:00:00:00:ca:fe";
    rig.host.ip(&["link", "add", "cbr0", "type", "bridge"]);
    rig.host.ip(&[
        "link", "add", "opport0", "type", "veth", "peer", "name", "opport1",
    ]);
    rig.host.ip(&["link", "set", "opport0", "master", "cbr0"]);
    rig.host.ip(&["link", "set", "cbr0", "address", explicit]);
    assert_eq!(link(&rig.host, "cbr0").unwrap()["address"], explicit);
    let conf = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v4());
    let v = rig.call("bridge", "ADD", &conf).id("e1").run().ok().clone();
    assert_eq!(link(&rig.host, "cbr0").unwrap()["address"], explicit);
    assert_eq!(v["interfaces"][0]["mac"], explicit);
    assert_eq!(link(&rig.host, "opport0").unwrap()["master"], "cbr0");

    rig.call("bridge", "DEL", &with_prev(&conf, &v))
        .id("e1")
        .run()
        .ok();
    assert_eq!(link(&rig.host, "cbr0").unwrap()["address"], explicit);
    let c2 = rig.add_cont();
    let v2 = rig
        .call("bridge", "ADD", &conf)
        .id("e2")
        .netns(c2.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    assert_eq!(link(&rig.host, "cbr0").unwrap()["address"], explicit);
    assert_eq!(v2["interfaces"][0]["mac"], explicit);
}

#[test]
fn container_mac_precedence() {
    let rig = Rig::new();
    let base = bridge_conf(&rig, "1.0.0", json!({}), v4());
    let v = rig
        .call("bridge", "ADD", &base)
        .args("IgnoreUnknown=1;MAC=0a:58:0a:01:02:aa")
        .run()
        .ok()
        .clone();
    assert_eq!(v["interfaces"][2]["mac"], "0a:58:0a:01:02:aa");
    rig.call("bridge", "DEL", &base)
        .args("IgnoreUnknown=1;MAC=0a:58:0a:01:02:aa")
        .run()
        .ok();
    let mut c = base.clone();
    c["args"] = json!({"cni": {"mac": "0a:58:0a:01:02:bb"}});
    let v = rig
        .call("bridge", "ADD", &c)
        .args("IgnoreUnknown=1;MAC=0a:58:0a:01:02:aa")
        .run()
        .ok()
        .clone();
    assert_eq!(v["interfaces"][2]["mac"], "0a:58:0a:01:02:bb");
    rig.call("bridge", "DEL", &c)
        .args("IgnoreUnknown=1")
        .run()
        .ok();
    c["capabilities"] = json!({"mac": true});
    c["runtimeConfig"] = json!({"mac": "0a:58:0a:01:02:cc"});
    let v = rig
        .call("bridge", "ADD", &c)
        .args("IgnoreUnknown=1;MAC=0a:58:0a:01:02:aa")
        .run()
        .ok()
        .clone();
    assert_eq!(v["interfaces"][2]["mac"], "0a:58:0a:01:02:cc");
    assert_eq!(
        link(&rig.cont, "eth0").unwrap()["address"],
        "0a:58:0a:01:02:cc"
    );
}

#[test]
fn ip_masq_backends() {
    for backend in [None, Some("iptables"), Some("nftables")] {
        for ver in ["0.3.0", "1.0.0"] {
            let rig = Rig::new();
            let mut extra = json!({"isGateway": true, "ipMasq": true});
            if let Some(b) = backend {
                extra["ipMasqBackend"] = json!(b);
            }
            let conf = bridge_conf(&rig, ver, extra, v4());
            let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
            let ip = result_ip(&v, 0);
            let nft = backend == Some("nftables");
            let present = |rig: &Rig| {
                if nft {
                    nft_ruleset(&rig.host)
                        .contains(&format!("ip saddr {ip} ip daddr != 10.1.2.0/24 masquerade"))
                } else {
                    iptables_save(&rig.host, false).contains(&format!("-A POSTROUTING -s {ip}/32"))
                }
            };
            assert!(present(&rig), "{backend:?} {ver}");
            rig.call("bridge", "DEL", &with_prev(&conf, &v)).run().ok();
            assert!(!present(&rig), "{backend:?} {ver}: rules removed");
            assert!(
                !iptables_save(&rig.host, false).contains("CNI-"),
                "chain removed"
            );
        }
    }
}

#[test]
fn del_with_netns_gone_still_removes_rules() {
    for backend in ["iptables", "nftables"] {
        let mut rig = Rig::new();
        let conf = bridge_conf(
            &rig,
            "1.0.0",
            json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": backend, "macspoofchk": true}),
            v4(),
        );
        rig.call("bridge", "ADD", &conf).run().ok();
        assert!(nft_ruleset(&rig.host).contains("macspoofchk-"));
        let gone = rig.cont.path.to_str().unwrap().to_string();
        rig.drop_cont();
        rig.call("bridge", "DEL", &conf).netns(&gone).run().ok();
        let nft = nft_ruleset(&rig.host);
        assert!(!nft.contains("macspoofchk-"), "{nft}");
        assert!(!nft.contains("masquerade comment"), "{nft}");
        assert!(!iptables_save(&rig.host, false).contains("CNI-"));
        // and the IP is released
        let left = reservations(&rig.data_dir().join("brnet"));
        assert!(left.is_empty(), "{left:?}");
    }
}

#[test]
fn check_detects_changes() {
    // Each negative CHECK must fail for the reason we caused (its message says so), and
    // the state is repaired before the next change, so each reason is tested alone.
    for ranges in [v4(), v6(), dual()] {
        let rig = Rig::new();
        let conf = bridge_conf(&rig, "1.0.0", json!({"isDefaultGateway": true}), ranges);
        let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
        let c = with_prev(&conf, &v);
        rig.call("bridge", "CHECK", &c).run().ok();
        let addr = v["ips"][0]["address"].as_str().unwrap();
        rig.cont.ip(&["addr", "del", addr, "dev", "eth0"]);
        rig.call("bridge", "CHECK", &c).run().fails_with(
            999,
            &format!("Failed to match addr {addr} on interface eth0"),
        );
    }
    let rig = Rig::new();
    let conf = bridge_conf(&rig, "1.0.0", json!({"isDefaultGateway": true}), v4());
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    let c = with_prev(&conf, &v);
    rig.cont.ip(&["route", "del", "default"]);
    rig.call("bridge", "CHECK", &c)
        .run()
        .fails_with(999, "Failed to match route 0.0.0.0/0 via 10.1.2.1");
    // Route back: CHECK passes again, so what fails next is the MAC alone.
    rig.cont
        .ip(&["route", "add", "default", "via", "10.1.2.1", "dev", "eth0"]);
    rig.call("bridge", "CHECK", &c).run().ok();
    let mac = v["interfaces"][2]["mac"].as_str().unwrap();
    rig.cont
        .ip(&["link", "set", "eth0", "address", "0a:58:00:00:00:01"]);
    rig.call("bridge", "CHECK", &c).run().fails_with(
        999,
        &format!("Interface eth0 Mac {mac} doesn't match: 0a:58:00:00:00:01"),
    );
    rig.cont.ip(&["link", "set", "eth0", "address", mac]);
    rig.call("bridge", "CHECK", &c).run().ok();
    let mut old = c.clone();
    old["cniVersion"] = json!("0.3.1");
    old["prevResult"]["cniVersion"] = json!("0.3.1");
    rig.call("bridge", "CHECK", &old)
        .run()
        .fails_with(1, "config version does not allow CHECK");
}

#[test]
fn macspoofchk_rules() {
    let rig = Rig::new();
    let conf = bridge_conf(&rig, "1.0.0", json!({"macspoofchk": true}), v4());
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    let nft = nft_ruleset(&rig.host);
    let mac = v["interfaces"][2]["mac"].as_str().unwrap();
    assert!(
        nft.contains("chain cni-br-iface-") && nft.contains(&format!("ether saddr {mac} return")),
        "{nft}"
    );
    rig.call("bridge", "DEL", &with_prev(&conf, &v)).run().ok();
    let nft = nft_ruleset(&rig.host);
    assert!(!nft.contains("cni-br-iface-"), "{nft}");
}

#[test]
fn disable_container_interface() {
    let rig = Rig::new();
    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"disableContainerInterface": true}),
        v4(),
    );
    let out = rig.call("bridge", "ADD", &conf).run();
    assert_eq!(out.err_code(), 7);
    assert!(out.json.as_ref().unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("\"disableContainerInterface\": true cannot be used with \"ipam\""));
    let conf = json!({"cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "cbr0", "disableContainerInterface": true});
    rig.call("bridge", "ADD", &conf).run().ok();
    let cont = link(&rig.cont, "eth0").unwrap();
    assert!(!cont["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
}

#[test]
fn config_validation() {
    let rig = Rig::new();
    let cases = [
        (
            json!({"vlan": -1}),
            7,
            "\"vlan\": -1 is out of range (0..4094)",
        ),
        (
            json!({"vlan": 5000}),
            7,
            "\"vlan\": 5000 is out of range (0..4094)",
        ),
        (
            json!({"vlanTrunk": [{"maxID": 10}]}),
            7,
            "\"vlanTrunk.maxID\": 10 needs \"minID\" too (minID is missing)",
        ),
        (
            json!({"vlanTrunk": [{"minID": 10}]}),
            7,
            "\"vlanTrunk.minID\": 10 needs \"maxID\" too (maxID is missing)",
        ),
        (
            json!({"vlanTrunk": [{"minID": -1, "maxID": 10}]}),
            7,
            "\"vlanTrunk.minID\": -1 is out of range (1..4094)",
        ),
        (
            json!({"vlanTrunk": [{"minID": 1, "maxID": 5000}]}),
            7,
            "\"vlanTrunk.maxID\": 5000 is out of range (1..4094)",
        ),
        (
            json!({"vlanTrunk": [{"minID": 20, "maxID": 10}]}),
            7,
            "\"vlanTrunk.minID\": 20 is greater than \"maxID\" 10",
        ),
        (
            json!({"vlanTrunk": [{"id": 0}]}),
            7,
            "\"vlanTrunk.id\": 0 is out of range (1..4094)",
        ),
        (json!({"mtu": "1500"}), 6, "failed to load netconf"),
        (
            json!({"ipMasq": true, "ipMasqBackend": "pf"}),
            7,
            "\"ipMasqBackend\": \"pf\" is not a backend",
        ),
    ];
    for (extra, code, msg) in cases {
        let conf = bridge_conf(&rig, "1.0.0", extra.clone(), v4());
        let out = rig.call("bridge", "ADD", &conf).run();
        assert_eq!(out.err_code(), code, "{extra}: {}", out.stdout);
        assert!(
            out.err_text().contains(msg),
            "{extra}: want {msg:?} in {}",
            out.stdout
        );
        assert!(
            link(&rig.cont, "eth0").is_none(),
            "{extra}: nothing left behind"
        );
    }
}

#[test]
fn parallel_adds_on_a_new_bridge() {
    let rig = Rig::new();
    let conf = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v4());
    let conts: Vec<Netns> = (0..16).map(|_| rig.new_netns()).collect();
    std::thread::scope(|s| {
        for (i, c) in conts.iter().enumerate() {
            let conf = conf.clone();
            let rig = &rig;
            s.spawn(move || {
                rig.call("bridge", "ADD", &conf)
                    .id(&format!("par{i}"))
                    .netns(c.path.to_str().unwrap())
                    .run()
                    .ok();
            });
        }
    });
    let mut ips: Vec<String> = conts
        .iter()
        .map(|c| {
            addrs(c, "eth0")
                .iter()
                .find(|a| a["family"] == "inet")
                .unwrap()["local"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 16);
}

#[test]
fn traffic_between_containers_and_host() {
    let rig = Rig::new();
    let conf = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), dual());
    let v1 = rig.call("bridge", "ADD", &conf).run().ok().clone();
    let c2 = rig.add_cont();
    let v2 = rig
        .call("bridge", "ADD", &conf)
        .id("c2")
        .netns(c2.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    let ip = result_ip;
    // container -> container (v4 and v6), host -> container
    assert!(ping(&rig.cont, &ip(&v2, 0)), "c1 -> c2 v4");
    assert!(ping(&c2, &ip(&v1, 0)), "c2 -> c1 v4");
    assert!(ping(&rig.cont, &ip(&v2, 1)), "c1 -> c2 v6");
    assert!(ping(&rig.host, &ip(&v1, 0)), "host -> c1");
    assert!(ping(&rig.cont, "10.1.2.1"), "c1 -> gateway");
}

#[test]
fn differential_against_the_reference() {
    // The same ADD through Go v1.9.1 and through cnibox: same result (modulo MACs and
    // random names), same container addresses and routes, same nat rules.
    for (extra, ranges) in [
        (json!({"isDefaultGateway": true}), v4()),
        (
            json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": "iptables"}),
            dual(),
        ),
        (
            json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": "nftables"}),
            v4(),
        ),
        (json!({}), json!(null)),
    ] {
        let go = Rig::new();
        let ours = Rig::new();
        let mk = |rig: &Rig| {
            let mut c = bridge_conf(rig, "1.0.0", extra.clone(), ranges.clone());
            if ranges.is_null() {
                c.as_object_mut().unwrap().remove("ipam");
            }
            c
        };
        let gv = go.call("bridge", "ADD", &mk(&go)).go().run().ok().clone();
        let ov = ours.call("bridge", "ADD", &mk(&ours)).run().ok().clone();
        assert_eq!(normalize_result(&gv), normalize_result(&ov), "{extra}");
        let state = |rig: &Rig| {
            let a: Vec<_> = addrs(&rig.cont, "eth0")
                .iter()
                .filter(|a| a["scope"] == "global")
                .map(|a| a["local"].clone())
                .collect();
            let mut r: Vec<_> = routes(&rig.cont, false)
                .into_iter()
                .chain(routes(&rig.cont, true))
                .filter(|r| r["protocol"] != "kernel")
                .map(|r| (r["dst"].clone(), r["gateway"].clone()))
                .collect();
            r.sort_by_key(|x| x.0.to_string());
            let b: Vec<_> = addrs(&rig.host, "cbr0")
                .iter()
                .filter(|a| a["scope"] == "global")
                .map(|a| a["local"].clone())
                .collect();
            let ipt: Vec<String> = [false, true]
                .iter()
                .flat_map(|v6| {
                    iptables_save(&rig.host, *v6)
                        .lines()
                        .filter(|l| l.starts_with("-A"))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            let nft: Vec<String> = nft_ruleset(&rig.host)
                .lines()
                .filter(|l| l.contains("masquerade"))
                .map(|l| l.trim().to_string())
                .collect();
            (a, r, b, ipt, nft)
        };
        assert_eq!(state(&go), state(&ours), "{extra}");

        // Cross-DEL: Go's ADD removed by our DEL, ours by Go's.
        let gconf = with_prev(&mk(&go), &gv);
        go.call("bridge", "DEL", &gconf).run().ok();
        let oconf = with_prev(&mk(&ours), &ov);
        ours.call("bridge", "DEL", &oconf).go().run().ok();
        for rig in [&go, &ours] {
            assert!(link(&rig.cont, "eth0").is_none());
            assert!(!iptables_save(&rig.host, false).contains("CNI-"));
            assert!(!nft_ruleset(&rig.host).contains("masquerade comment"));
            if !ranges.is_null() {
                let left = reservations(&rig.data_dir().join("brnet"));
                assert!(left.is_empty(), "{left:?}");
            }
        }
    }
}

#[test]
fn cleans_up_after_the_installed_base() {
    // A node running Debian's 1.1.1 plugins switches to cnibox: our DEL removes what
    // the old plugin ADDed (link, IP reservation, masquerade chain).
    let rig = Rig::new();
    let conf = bridge_conf(
        &rig,
        "0.4.0",
        json!({"isGateway": true, "ipMasq": true}),
        v4(),
    );
    let v = rig.call("bridge", "ADD", &conf).debian().run().ok().clone();
    assert!(iptables_save(&rig.host, false).contains("CNI-"));
    rig.call("bridge", "DEL", &with_prev(&conf, &v)).run().ok();
    assert!(link(&rig.cont, "eth0").is_none());
    assert!(!iptables_save(&rig.host, false).contains("CNI-"));
    let left = reservations(&rig.data_dir().join("brnet"));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn gc_removes_stale_masquerade_and_reservations() {
    let rig = Rig::new();
    let conf = bridge_conf(
        &rig,
        "1.1.0",
        json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": "nftables"}),
        v4(),
    );
    let _conts = rig.add_containers("bridge", &conf, "gc", 3);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc1", "ifname": "eth0"}]);
    rig.call("bridge", "GC", &gc).run().ok();
    let nft = nft_ruleset(&rig.host);
    assert_eq!(nft.matches("masquerade comment").count(), 1, "{nft}");
    assert!(nft.contains("id: gc1"));
    let left = reservations(&rig.data_dir().join("brnet"));
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn gc_with_the_iptables_backend() {
    // Not possible in the reference (its chain names hide the network); our rules'
    // comments name network and container, so GC finds the stale ones.
    let rig = Rig::new();
    let conf = bridge_conf(
        &rig,
        "1.1.0",
        json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": "iptables"}),
        dual(),
    );
    let _conts = rig.add_containers("bridge", &conf, "gc", 3);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc2", "ifname": "eth0"}]);
    rig.call("bridge", "GC", &gc).run().ok();
    for v6 in [false, true] {
        let save = iptables_save(&rig.host, v6);
        let jumps: Vec<&str> = save
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING"))
            .collect();
        assert_eq!(jumps.len(), 1, "v6={v6}: {save}");
        assert!(jumps[0].contains("id: \\\"gc2\\\""), "{}", jumps[0]);
    }
    assert_eq!(
        reservations(&rig.data_dir().join("brnet")).len(),
        2,
        "gc2's v4 and v6 addresses stay"
    );
}

#[test]
fn status_delegates_to_ipam() {
    let rig = Rig::new();
    let conf = bridge_conf(&rig, "1.1.0", json!({}), v4());
    let out = rig.call("bridge", "STATUS", &conf).run();
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    let mut missing = conf.clone();
    missing["ipam"]["type"] = json!("no-such-ipam");
    rig.call("bridge", "STATUS", &missing)
        .run()
        .fails_with(7, "failed to find plugin \"no-such-ipam\"");
    // L2-only: nothing to ask
    let l2 = json!({"cniVersion": "1.1.0", "name": "l2", "type": "bridge"});
    rig.call("bridge", "STATUS", &l2).run().ok();
}

#[test]
fn reused_address_refreshes_neighbour_caches() {
    // Container A talks to the host, goes away; container B gets A's address with a new
    // MAC. The gratuitous ARP sent when B's interface comes up must update the host's
    // neighbour entry at once (no stale MAC for the reused IP).
    let rig = Rig::new();
    let conf = bridge_conf(&rig, "1.0.0", json!({"isGateway": true}), v4());
    // Another container keeps the bridge's carrier up (the kernel flushes a device's
    // neighbours when its carrier goes down, as a bridge with no port does).
    let keeper = rig.new_netns();
    rig.call("bridge", "ADD", &conf)
        .id("keeper")
        .netns(keeper.path.to_str().unwrap())
        .run()
        .ok();
    let a = rig.call("bridge", "ADD", &conf).id("a").run().ok().clone();
    let ip = result_ip(&a, 0);
    assert!(ping(&rig.host, &ip));
    rig.call("bridge", "DEL", &with_prev(&conf, &a))
        .id("a")
        .run()
        .ok();
    let c2 = rig.new_netns();
    let b = rig
        .call("bridge", "ADD", &conf)
        .id("b")
        .args(&format!("IgnoreUnknown=1;IP={ip}"))
        .netns(c2.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    assert_eq!(
        b["ips"][0]["address"], a["ips"][0]["address"],
        "host-local hands the address out again"
    );
    let new_mac = b["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert_ne!(new_mac, a["interfaces"][2]["mac"].as_str().unwrap());
    // Give the kernel a moment to process the GARP, then read the host's cache.
    let mut seen = String::new();
    for _ in 0..20 {
        let n = rig.host.ip_json(&["neigh", "show", &ip]);
        seen = n[0]["lladdr"].as_str().unwrap_or("").to_string();
        if seen == new_mac {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        seen, new_mac,
        "host neighbour entry for {ip} was not refreshed"
    );
}

#[test]
fn macspoofchk_matches_the_reference() {
    // Our native nf_tables rules list exactly like the ones Go creates through nft,
    // and each implementation's DEL removes the other's.
    let go = Rig::new();
    let ours = Rig::new();
    let mac = "0a:58:0a:01:02:33";
    let conf = |rig: &Rig| {
        let mut c = bridge_conf(rig, "1.0.0", json!({"macspoofchk": true}), v4());
        c["args"] = json!({"cni": {"mac": mac}});
        c
    };
    let gv = go.call("bridge", "ADD", &conf(&go)).go().run().ok().clone();
    let ov = ours.call("bridge", "ADD", &conf(&ours)).run().ok().clone();
    let rules = |rig: &Rig, v: &Value| {
        let host_if = v["interfaces"][1]["name"].as_str().unwrap().to_string();
        nft_ruleset(&rig.host)
            .replace(&host_if, "<veth>")
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
    };
    assert_eq!(rules(&go, &gv), rules(&ours, &ov));
    go.call("bridge", "DEL", &with_prev(&conf(&go), &gv))
        .run()
        .ok();
    ours.call("bridge", "DEL", &with_prev(&conf(&ours), &ov))
        .go()
        .run()
        .ok();
    for rig in [&go, &ours] {
        let nft = nft_ruleset(&rig.host);
        assert!(
            !nft.contains("cni-br-iface-") && !nft.contains("macspoofchk-"),
            "{nft}"
        );
    }
}

#[test]
fn config_keys_match_case_insensitively() {
    // Go's JSON decoder matches keys case-insensitively; real configs rely on it.
    let rig = Rig::new();
    let conf = json!({"cniVersion": "1.0.0", "Name": "brnet", "type": "bridge", "BRIDGE": "cbrx",
        "isdefaultgateway": true, "IPMasq": true, "ipMasqBackend": "nftables",
        "IPAM": {"Type": "host-local", "Subnet": "10.1.2.0/24", "DATADIR": rig.data_dir()}});
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    assert_eq!(v["interfaces"][0]["name"], "cbrx");
    assert!(
        has_addr(&rig.host, "cbrx", "10.1.2.1/24"),
        "isGateway implied"
    );
    assert!(routes(&rig.cont, false)
        .iter()
        .any(|r| r["dst"] == "default"));
    assert!(nft_ruleset(&rig.host).contains("masquerade comment"));
    assert_eq!(
        reservations(&rig.data_dir().join("brnet")),
        vec!["10.1.2.2"]
    );
}

#[test]
fn default_gateway_with_an_ipam_default_route_without_gw() {
    // Reference bug (§5.2): isDefaultGateway plus an IPAM route {"dst": "0.0.0.0/0"}
    // without gw adds a second identical default route and ADD fails with "file exists".
    let rig = Rig::new();
    let mut conf = bridge_conf(&rig, "1.0.0", json!({"isDefaultGateway": true}), v4());
    conf["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    let defaults: Vec<Value> = routes(&rig.cont, false)
        .into_iter()
        .filter(|r| r["dst"] == "default")
        .collect();
    assert_eq!(defaults.len(), 1, "{defaults:?}");
    assert_eq!(defaults[0]["gateway"], "10.1.2.1");
    assert_eq!(v["routes"], json!([{"dst": "0.0.0.0/0"}]));
    let go = rig
        .call("bridge", "ADD", &conf)
        .id("go")
        .netns(rig.new_netns().path.to_str().unwrap())
        .go()
        .run();
    assert!(
        go.err_text().contains("file exists"),
        "the reference still fails here: {}",
        go.stdout
    );
}
