//! macvlan through the built binary (§4.3), on parents that are the test's own veths in
//! its own namespaces: every version, L2 and L3, modes and kind data, master
//! auto-detection and `linkInContainer`, MAC sources, traffic between two containers,
//! CHECK, DEL tolerance, GC/STATUS, malformed input, rollback, and differential runs
//! against the Go reference v1.9.1 (results, kernel state, reservations, cross CHECK and
//! cross DEL). Also the netlink link builder for macvlan directly.

mod common;
mod stacked;

use cnibox::netlink::link::{KindData, Macvlan, MacvlanMode, NewLink};
use cnibox::netlink::{LinkId, Nl};
use cnibox::netns::Netns as NsFile;
use common::*;
use serde_json::{json, Value};
use stacked::*;
use std::os::fd::AsFd;

const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn conf(rig: &Rig, ver: &str, extra: Value) -> Value {
    merged(
        json!({"cniVersion": ver, "name": "mvnet", "type": "macvlan", "master": "p0",
               "ipam": ipam(rig, "10.30.0.0/24")}),
        &extra,
    )
}

fn l2_conf(ver: &str, extra: Value) -> Value {
    merged(
        json!({"cniVersion": ver, "name": "mvnet", "type": "macvlan", "master": "p0"}),
        &extra,
    )
}

fn info(ns: &Netns, ifname: &str) -> Value {
    link(ns, ifname).unwrap_or_else(|| panic!("no {ifname}"))["linkinfo"].clone()
}

#[test]
fn add_check_del_every_version() {
    for ver in VERSIONS {
        let rig = Rig::new();
        let p0 = parent(&rig.host, "p0");
        let c = conf(&rig, ver, json!({}));
        let res = rig.call("macvlan", "ADD", &c).run().ok().clone();
        assert_eq!(res["cniVersion"], ver);
        let l = link(&rig.cont, "eth0").expect("eth0 in the container");
        assert_eq!(l["linkinfo"]["info_kind"], "macvlan", "{ver}");
        assert_eq!(l["linkinfo"]["info_data"]["mode"], "bridge", "{ver}");
        assert_eq!(l["link_index"], p0, "{ver}: parent is p0");
        assert!(l["flags"].as_array().unwrap().contains(&json!("UP")));
        assert!(has_addr(&rig.cont, "eth0", "10.30.0.2/24"), "{ver}");
        match ver {
            "0.1.0" | "0.2.0" => assert_eq!(res["ip4"]["ip"], "10.30.0.2/24", "{res}"),
            _ => {
                assert_eq!(res["interfaces"][0]["name"], "eth0");
                assert_eq!(res["interfaces"][0]["mac"], l["address"]);
                assert_eq!(
                    res["interfaces"][0]["sandbox"],
                    rig.cont.path.to_str().unwrap()
                );
                assert_eq!(res["ips"][0]["address"], "10.30.0.2/24");
                assert_eq!(res["ips"][0]["interface"], 0);
            }
        }
        if !matches!(ver, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1") {
            let out = rig.call("macvlan", "CHECK", &with_prev(&c, &res)).run();
            assert_eq!(out.code, 0, "{ver} CHECK: {}", out.stdout);
        }
        for _ in 0..2 {
            let out = rig.call("macvlan", "DEL", &with_prev(&c, &res)).run();
            assert_eq!(out.code, 0, "{ver} DEL: {}", out.stdout);
        }
        assert_gone(&rig, "eth0", ver);
        assert!(link(&rig.host, "p0").is_some(), "the master survives");
    }
}

#[test]
fn l2_only() {
    let rig = Rig::new();
    parent(&rig.host, "p0");
    let c = l2_conf("1.0.0", json!({}));
    let res = rig.call("macvlan", "ADD", &c).run().ok().clone();
    assert_eq!(res["interfaces"].as_array().unwrap().len(), 1);
    assert!(res.get("ips").is_none(), "{res}");
    let l = link(&rig.cont, "eth0").unwrap();
    assert!(l["flags"].as_array().unwrap().contains(&json!("UP")));
    assert!(addr_state(&rig.cont, "eth0").is_empty());
    let out = rig.call("macvlan", "CHECK", &with_prev(&c, &res)).run();
    assert_eq!(out.code, 0, "L2 CHECK: {}", out.stdout);
    rig.call("macvlan", "DEL", &c).run().ok();
    assert_gone(&rig, "eth0", "L2 DEL");

    // A result without IPs has no 0.1.0/0.2.0 form: refused before anything is made.
    for ver in ["0.1.0", "0.2.0"] {
        let before = snapshot(&rig);
        let out = rig.call("macvlan", "ADD", &l2_conf(ver, json!({}))).run();
        assert_eq!(out.err_code(), 1, "{ver}: {}", out.stdout);
        assert_eq!(snapshot(&rig), before, "{ver}");
    }
}

#[test]
fn master_defaults_to_the_default_route_link() {
    // Host: the default route goes through q0, not p0.
    let rig = Rig::new();
    parent(&rig.host, "p0");
    let q0 = parent(&rig.host, "q0");
    default_route(&rig.host, "q0");
    let c = conf(&rig, "1.0.0", json!({"master": null}));
    let res = rig.call("macvlan", "ADD", &c).run().ok().clone();
    assert_eq!(link(&rig.cont, "eth0").unwrap()["link_index"], q0);
    rig.call("macvlan", "CHECK", &with_prev(&c, &res))
        .run()
        .ok();
    rig.call("macvlan", "DEL", &c).run().ok();
    assert_gone(&rig, "eth0", "default master");

    // linkInContainer: the default route inside the container picks the master there.
    let rig = Rig::new();
    parent(&rig.host, "p0");
    default_route(&rig.host, "p0");
    parent(&rig.cont, "c0");
    default_route(&rig.cont, "c0");
    let c = conf(
        &rig,
        "1.0.0",
        json!({"master": null, "linkInContainer": true}),
    );
    let res = rig.call("macvlan", "ADD", &c).run().ok().clone();
    let l = link(&rig.cont, "eth0").unwrap();
    assert_eq!(l["link"], "c0", "{l}");
    rig.call("macvlan", "CHECK", &with_prev(&c, &res))
        .run()
        .ok();
    rig.call("macvlan", "DEL", &c).run().ok();
    assert_gone(&rig, "eth0", "default master in container");
    assert!(link(&rig.cont, "c0").is_some());
}

#[test]
fn link_in_container() {
    let rig = Rig::new();
    parent(&rig.cont, "p0");
    let c = conf(&rig, "1.0.0", json!({"linkInContainer": true}));
    let res = rig.call("macvlan", "ADD", &c).run().ok().clone();
    let l = link(&rig.cont, "eth0").unwrap();
    assert_eq!(l["link"], "p0");
    assert!(
        l.get("link_netnsid").is_none(),
        "parent is in the same netns"
    );
    rig.call("macvlan", "CHECK", &with_prev(&c, &res))
        .run()
        .ok();
    // Without linkInContainer the master is looked up on the host, where there is none.
    let out = rig
        .call(
            "macvlan",
            "CHECK",
            &with_prev(&conf(&rig, "1.0.0", json!({})), &res),
        )
        .run();
    assert_eq!(out.err_code(), 7, "{}", out.stdout);
    rig.call("macvlan", "DEL", &c).run().ok();
    assert_gone(&rig, "eth0", "linkInContainer");
    assert!(link(&rig.cont, "p0").is_some());
}

#[test]
fn host_link_with_the_container_ifname_is_no_obstacle() {
    // What the reference's temporary name works around: a host link called like
    // CNI_IFNAME. The link is created in the container under its final name.
    let rig = Rig::new();
    parent(&rig.host, "p0");
    parent(&rig.host, "eth0");
    let before = link(&rig.host, "eth0").unwrap();
    let c = conf(&rig, "1.0.0", json!({}));
    rig.call("macvlan", "ADD", &c).run().ok();
    assert_eq!(
        link(&rig.cont, "eth0").unwrap()["linkinfo"]["info_kind"],
        "macvlan"
    );
    assert_eq!(link(&rig.host, "eth0").unwrap(), before);
    rig.call("macvlan", "DEL", &c).run().ok();
    assert_eq!(link(&rig.host, "eth0").unwrap(), before);
    // A container link of that name already there: refused, nothing changed.
    rig.cont
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]);
    let snap = snapshot(&rig);
    let out = rig.call("macvlan", "ADD", &c).run();
    assert!(out.stdout.contains("file exists"), "{}", out.stdout);
    assert_eq!(snapshot(&rig), snap);
}

#[test]
fn mac_priority() {
    let rig = Rig::new();
    parent(&rig.host, "p0");
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (
            json!({"mac": "02:00:00:00:00:01"}),
            None,
            "02:00:00:00:00:01",
        ),
        (
            json!({"mac": "02:00:00:00:00:01"}),
            Some("IgnoreUnknown=1;MAC=02:00:00:00:00:02"),
            "02:00:00:00:00:02",
        ),
        (
            json!({"mac": "02:00:00:00:00:01", "args": {"cni": {"mac": "02:00:00:00:00:03"}}}),
            Some("IgnoreUnknown=1;MAC=02:00:00:00:00:02"),
            "02:00:00:00:00:03",
        ),
        (
            json!({"mac": "02:00:00:00:00:01", "args": {"cni": {"mac": "02:00:00:00:00:03"}},
                   "runtimeConfig": {"mac": "02:00:00:00:00:04"}}),
            Some("IgnoreUnknown=1;MAC=02:00:00:00:00:02"),
            "02:00:00:00:00:04",
        ),
    ];
    for (extra, args, want) in cases {
        let c = conf(&rig, "1.0.0", extra.clone());
        let mut call = rig.call("macvlan", "ADD", &c);
        if let Some(a) = args {
            call = call.args(a);
        }
        let res = call.run().ok().clone();
        assert_eq!(link(&rig.cont, "eth0").unwrap()["address"], want, "{extra}");
        assert_eq!(res["interfaces"][0]["mac"], want);
        rig.call("macvlan", "DEL", &c).run().ok();
    }
}

#[test]
fn modes_and_kind_data() {
    let cases = [
        (json!({"mode": "bridge"}), json!({"mode": "bridge"})),
        (json!({"mode": "private"}), json!({"mode": "private"})),
        (json!({"mode": "vepa"}), json!({"mode": "vepa"})),
        (json!({"mode": "passthru"}), json!({"mode": "passthru"})),
        (
            json!({"mode": "source", "sourceMacs": ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]}),
            json!({"mode": "source", "macaddr_count": 2,
                   "macaddr_data": ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]}),
        ),
        (
            json!({"bcqueuelen": 123}),
            json!({"mode": "bridge", "bcqueuelen": 123}),
        ),
    ];
    for (extra, want) in cases {
        let rig = Rig::new();
        parent(&rig.host, "p0");
        let c = conf(&rig, "1.0.0", extra.clone());
        let res = rig.call("macvlan", "ADD", &c).run().ok().clone();
        let mut data = info(&rig.cont, "eth0")["info_data"].clone();
        // The kernel lists source MACs in hash order.
        if let Some(list) = data["macaddr_data"].as_array_mut() {
            list.sort_by_key(|m| m.to_string());
        }
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&data[k], v, "{extra}: {data}");
        }
        let out = rig.call("macvlan", "CHECK", &with_prev(&c, &res)).run();
        assert_eq!(out.code, 0, "{extra} CHECK: {}", out.stdout);
        rig.call("macvlan", "DEL", &c).run().ok();
        assert_gone(&rig, "eth0", &extra.to_string());
        // passthru put the parent in promiscuous mode; gone with the macvlan.
        assert_eq!(link(&rig.host, "p0").unwrap()["promiscuity"], 0, "{extra}");
    }
    // MTU below the master's.
    let rig = Rig::new();
    parent(&rig.host, "p0");
    rig.host.ip(&["link", "set", "p0", "mtu", "9000"]);
    let c = conf(&rig, "1.0.0", json!({"mtu": 4000}));
    let res = rig.call("macvlan", "ADD", &c).run().ok().clone();
    assert_eq!(link(&rig.cont, "eth0").unwrap()["mtu"], 4000);
    rig.call("macvlan", "CHECK", &with_prev(&c, &res))
        .run()
        .ok();
}

#[test]
fn traffic_between_two_containers() {
    // Bridge mode: two containers on one parent reach each other directly.
    let rig = Rig::new();
    parent(&rig.host, "p0");
    let c = conf(&rig, "1.0.0", json!({}));
    let b = rig.new_netns();
    rig.call("macvlan", "ADD", &c).run().ok();
    rig.call("macvlan", "ADD", &c)
        .id("ctr2")
        .netns(b.path.to_str().unwrap())
        .run()
        .ok();
    assert!(ping(&rig.cont, "10.30.0.3"), "a -> b in bridge mode");
    assert!(ping(&b, "10.30.0.2"), "b -> a in bridge mode");

    // Private mode: the same two cannot.
    let rig = Rig::new();
    parent(&rig.host, "p0");
    let c = conf(&rig, "1.0.0", json!({"mode": "private"}));
    let b = rig.new_netns();
    rig.call("macvlan", "ADD", &c).run().ok();
    rig.call("macvlan", "ADD", &c)
        .id("ctr2")
        .netns(b.path.to_str().unwrap())
        .run()
        .ok();
    assert!(!ping(&rig.cont, "10.30.0.3"), "private mode must isolate");
}

#[test]
fn check_detects_drift() {
    let rig = Rig::new();
    parent(&rig.host, "p0");
    parent(&rig.host, "q0");
    let c = conf(&rig, "1.0.0", json!({}));
    let res = rig.call("macvlan", "ADD", &c).run().ok().clone();
    let fails = |conf: &Value, prev: &Value, want: &str| {
        let out = rig.call("macvlan", "CHECK", &with_prev(conf, prev)).run();
        assert_ne!(out.code, 0, "CHECK passed, wanted {want:?}");
        assert!(out.stdout.contains(want), "{want:?} not in {}", out.stdout);
    };
    fails(
        &conf(&rig, "1.0.0", json!({"mode": "vepa"})),
        &res,
        "container macvlan mode bridge does not match expected value: vepa",
    );
    fails(
        &conf(&rig, "1.0.0", json!({"master": "q0"})),
        &res,
        "is not a child of master \\\"q0\\\"",
    );
    let mut bad_mac = res.clone();
    bad_mac["interfaces"][0]["mac"] = json!("02:00:00:00:00:99");
    fails(&c, &bad_mac, "Mac 02:00:00:00:00:99 doesn't match");
    let mut other_ip = res.clone();
    other_ip["ips"][0]["address"] = json!("10.30.0.77/24");
    fails(&c, &other_ip, "Failed to match addr 10.30.0.77/24");
    let mut other_ns = res.clone();
    other_ns["interfaces"][0]["sandbox"] = json!("/run/netns/elsewhere");
    fails(&c, &other_ns, "doesn't match configured netns");
    fails(
        &conf(&rig, "1.0.0", json!({"bcqueuelen": 5})),
        &res,
        "bcqueuelen",
    );
    rig.cont.ip(&["link", "del", "eth0"]);
    fails(&c, &res, "not found");
}

#[test]
fn differential_against_go() {
    for ver in VERSIONS {
        // Any rig works as the template: differential() rewrites the data dir.
        let r = Rig::new();
        differential(&conf(&r, ver, json!({})), "macvlan", false);
    }
    let r = Rig::new();
    for extra in [
        json!({"mode": "private"}),
        json!({"mode": "vepa"}),
        json!({"mode": "passthru"}),
        json!({"mtu": 1400}),
        json!({"bcqueuelen": 77}),
        json!({"mac": "02:00:00:00:00:42"}),
        json!({"runtimeConfig": {"mac": "02:00:00:00:00:43"}}),
        json!({"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.31.0.0/24"}], [{"subnet": "fd00:31::/64"}]],
                        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.31.0.9"}]}}),
    ] {
        differential(&conf(&r, "1.0.0", extra), "macvlan", false);
    }
    differential(
        &conf(&r, "1.0.0", json!({"linkInContainer": true})),
        "macvlan",
        true,
    );
    for ver in ["0.3.0", "0.4.0", "1.1.0"] {
        differential(&l2_conf(ver, json!({})), "macvlan", false);
    }
}

#[test]
fn reference_bugs_fixed() {
    // A failing IPAM: the reference keeps the macvlan (Go variable shadowing), we don't.
    for go in [true, false] {
        let rig = Rig::new();
        parent(&rig.host, "p0");
        fake_ipam(
            &rig,
            "failing-ipam",
            r#"echo '{"code":11,"msg":"no addresses today"}'; exit 1"#,
        );
        let c = conf(&rig, "1.0.0", json!({"ipam": {"type": "failing-ipam"}}));
        let mut call = rig.call("macvlan", "ADD", &c);
        if go {
            // Go's plugin from the oracle, the fake IPAM from the rig's CNI_PATH.
            call = call.go().env("CNI_PATH", rig.cni_path.to_str().unwrap());
        }
        let out = call.run();
        assert_eq!(
            out.err_code(),
            11,
            "IPAM's code passes through: {}",
            out.stdout
        );
        assert_eq!(
            link(&rig.cont, "eth0").is_some(),
            go,
            "go={go}: the reference leaks the link, cnibox must not"
        );
    }
    // L2 under 0.2.0: the reference creates the link, then fails to print: leaked.
    let rig = Rig::new();
    parent(&rig.host, "p0");
    rig.call("macvlan", "ADD", &l2_conf("0.2.0", json!({})))
        .go()
        .run()
        .err_code();
    assert!(link(&rig.cont, "eth0").is_some(), "the reference leaks it");
}

#[test]
fn malformed_inputs_get_the_right_code_and_change_nothing() {
    let rig = Rig::new();
    parent(&rig.host, "p0");
    rig.host.ip(&["link", "set", "p0", "mtu", "1500"]);
    let base = conf(&rig, "1.0.0", json!({}));
    let table = include_str!("../testdata/malformed-macvlan.json");
    Malformed::new("macvlan", table, 10, base).run(&rig);
}

#[test]
fn failed_add_leaves_nothing() {
    // IPAM fails: the link made before is removed; IPAM's code passes through.
    let rig = Rig::new();
    parent(&rig.host, "p0");
    fake_ipam(
        &rig,
        "failing-ipam",
        r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses today"}'; exit 1"#,
    );
    let before = snapshot(&rig);
    let c = conf(&rig, "1.0.0", json!({"ipam": {"type": "failing-ipam"}}));
    let out = rig.call("macvlan", "ADD", &c).run();
    assert_eq!(out.err_code(), 11, "{}", out.stdout);
    assert_eq!(snapshot(&rig), before, "failing IPAM");

    // Failure after IPAM allocated: a route through an unreachable gateway. The address
    // is released and the link deleted.
    let c = conf(
        &rig,
        "1.0.0",
        json!({"ipam": {"type": "host-local", "subnet": "10.32.0.0/24",
                        "routes": [{"dst": "192.168.0.0/16", "gw": "172.16.9.9"}]}}),
    );
    let c = for_rig(&c, &rig);
    let out = rig.call("macvlan", "ADD", &c).run();
    out.err_code();
    assert!(out.stdout.contains("route"), "{}", out.stdout);
    assert_eq!(snapshot(&rig), before, "failure after IPAM");

    // The kernel refuses the link itself (a second passthru on one parent).
    let c = conf(&rig, "1.0.0", json!({"mode": "passthru"}));
    let b = rig.new_netns();
    rig.call("macvlan", "ADD", &c)
        .id("ctr2")
        .netns(b.path.to_str().unwrap())
        .run()
        .ok();
    let before = snapshot(&rig);
    let out = rig.call("macvlan", "ADD", &c).run();
    out.err_code();
    assert_eq!(snapshot(&rig), before, "second passthru");
}

#[test]
fn del_tolerance() {
    let rig = Rig::new();
    parent(&rig.host, "p0");
    let c = conf(&rig, "1.0.0", json!({}));
    // Never added.
    rig.call("macvlan", "DEL", &c).run().ok();
    // Empty netns, missing netns: IPAM still released.
    rig.call("macvlan", "ADD", &c).run().ok();
    rig.call("macvlan", "DEL", &c).netns("").run().ok();
    assert!(reservations_under(&rig.data_dir()).is_empty());
    rig.cont.ip(&["link", "del", "eth0"]);
    rig.call("macvlan", "ADD", &c).run().ok();
    let gone = rig.dir.join("gone-netns");
    rig.call("macvlan", "DEL", &c)
        .netns(gone.to_str().unwrap())
        .run()
        .ok();
    assert!(reservations_under(&rig.data_dir()).is_empty());
    rig.call("macvlan", "DEL", &c).run().ok();
    // Configs ADD would reject: DEL still succeeds and cleans up.
    rig.call("macvlan", "ADD", &c).run().ok();
    for bad in [
        json!({"mode": "nonsense"}),
        json!({"master": "no-such-link"}),
        json!({"mtu": -3, "bcqueuelen": -1, "mac": "zz"}),
        json!({"master": null}),
    ] {
        let out = rig
            .call("macvlan", "DEL", &conf(&rig, "1.0.0", bad.clone()))
            .run();
        assert_eq!(out.code, 0, "DEL with {bad}: {}", out.stdout);
    }
    assert_gone(&rig, "eth0", "DEL with a changed config");
    // The master deleted under the container (the kernel takes the macvlan with it).
    rig.call("macvlan", "ADD", &c).run().ok();
    rig.host.ip(&["link", "del", "p0"]);
    rig.call("macvlan", "DEL", &c).run().ok();
    assert_gone(&rig, "eth0", "master gone");
    // The netns deleted.
    let mut rig = Rig::new();
    parent(&rig.host, "p0");
    let c = conf(&rig, "1.0.0", json!({}));
    rig.call("macvlan", "ADD", &c).run().ok();
    rig.drop_cont();
    rig.call("macvlan", "DEL", &c).run().ok();
    assert!(reservations_under(&rig.data_dir()).is_empty());
}

#[test]
fn gc_and_status_go_to_ipam() {
    let rig = Rig::new();
    parent(&rig.host, "p0");
    let c = conf(&rig, "1.1.0", json!({}));
    let b = rig.new_netns();
    rig.call("macvlan", "ADD", &c).run().ok();
    rig.call("macvlan", "ADD", &c)
        .id("ctr2")
        .netns(b.path.to_str().unwrap())
        .run()
        .ok();
    assert_eq!(reservations_under(&rig.data_dir()).len(), 2);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "eth0"}]);
    let out = rig.call("macvlan", "GC", &gc).run();
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(reservations_under(&rig.data_dir()), vec!["10.30.0.2"]);
    let out = rig.call("macvlan", "STATUS", &c).run();
    assert_eq!(out.code, 0, "{}", out.stdout);
    // L2: nothing to forward to.
    for cmd in ["GC", "STATUS"] {
        let out = rig.call("macvlan", cmd, &l2_conf("1.1.0", json!({}))).run();
        assert_eq!(out.code, 0, "{cmd}: {}", out.stdout);
    }
    // STATUS reports a missing IPAM plugin.
    let out = rig
        .call(
            "macvlan",
            "STATUS",
            &conf(&rig, "1.1.0", json!({"ipam": {"type": "no-such-ipam"}})),
        )
        .run();
    assert_ne!(out.code, 0);
}

/// The link builder on its own: macvlan kind data, txqlen and parent, created from the
/// host socket directly into another namespace, read back typed.
#[test]
fn netlink_builder_macvlan() {
    let host = Netns::new("h");
    let cont = Netns::new("c");
    let p0 = parent(&host, "p0") as u32;
    let hf = NsFile::open(host.path.to_str().unwrap()).unwrap();
    let cf = NsFile::open(cont.path.to_str().unwrap()).unwrap();
    let hnl = Nl::open_in(&hf).unwrap();
    let cnl = Nl::open_in(&cf).unwrap();
    let data = Macvlan {
        mode: MacvlanMode::Source,
        flags: 0,
        bc_queue_len: Some(64),
        source_macs: vec![[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]],
    };
    hnl.create_link(
        &NewLink::typed("m0", KindData::Macvlan(data.clone()))
            .parent(p0)
            .mtu(1400)
            .mac(Some([2, 0, 0, 0, 0, 0x10]))
            .txqlen(321)
            .netns(cf.file.as_fd()),
    )
    .unwrap();
    assert!(hnl.link(LinkId::Name("m0")).unwrap().is_none());
    let m = cnl.link_must(LinkId::Name("m0")).unwrap();
    assert_eq!(m.kind, "macvlan");
    assert_eq!((m.mtu, m.txqlen, m.link), (1400, 321, p0));
    assert_eq!(m.mac, "02:00:00:00:00:10");
    assert!(m.link_netnsid.is_some(), "parent is in another netns");
    let Some(KindData::Macvlan(mut got)) = m.info else {
        panic!("{:?}", m.info)
    };
    got.source_macs.sort_unstable();
    assert_eq!(got, data);
    // allmulti: off unless asked for, on when asked for, as `ip -d -j link` shows it.
    let flags = |name: &str| -> Vec<String> {
        let l = link(&cont, name).unwrap_or_else(|| panic!("no {name}"));
        serde_json::from_value(l["flags"].clone()).unwrap()
    };
    assert!(
        !flags("m0").iter().any(|f| f == "ALLMULTI"),
        "{:?}",
        flags("m0")
    );
    hnl.create_link(
        &NewLink::typed("m2", KindData::Macvlan(Macvlan::default()))
            .parent(p0)
            .allmulti(true)
            .netns(cf.file.as_fd()),
    )
    .unwrap();
    assert!(
        flags("m2").iter().any(|f| f == "ALLMULTI"),
        "{:?}",
        flags("m2")
    );
    // Kind and kind data must agree.
    let mut bad = NewLink::typed("m1", KindData::Ifb);
    bad.kind = "veth";
    assert!(cnl.create_link(&bad).is_err());
    // The default route's link.
    assert!(hnl.default_route_link().unwrap().is_none());
    default_route(&host, "p0");
    assert_eq!(hnl.default_route_link().unwrap().unwrap().index, p0);
}
