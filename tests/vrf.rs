//! vrf through the built binary (§2.18, §4.18 of the reference notes). The build
//! machine's kernel has no VRF driver, so the tests that make one are `#[ignore]`d and
//! run in the vmtest VM (`make test-vm`, `--include-ignored`); run on a kernel without
//! the driver they fail and say why. The malformed-input table needs no VRF (every case
//! fails before one is made) and runs everywhere.
//!
//! `vrf_driver_or_deferred_to_the_vm` (not ignored) keeps a host run honest: without
//! the driver it fails unless `CNIBOX_VRF_TESTS_IN_VM=1` says the VM run follows.

mod common;

use common::*;
use serde_json::{json, Value};

fn kernel_has_vrf() -> bool {
    let ns = Netns::new("v");
    ns.exec(&[
        "ip", "link", "add", "cbxprobe", "type", "vrf", "table", "10",
    ])
    .status
    .success()
}

fn need_vrf() {
    assert!(
        kernel_has_vrf(),
        "this kernel has no vrf link type (CONFIG_NET_VRF): run this test in the VM \
         (make test-vm does: ../shared/vmtest/run-in-vm, with --include-ignored)"
    );
}

#[test]
fn vrf_driver_or_deferred_to_the_vm() {
    if kernel_has_vrf() {
        return;
    }
    let in_vm = std::env::var("VMTEST_GUEST").as_deref() == Ok("1");
    assert!(!in_vm, "the vmtest VM's kernel must have the vrf driver");
    assert_eq!(
        std::env::var("CNIBOX_VRF_TESTS_IN_VM").as_deref(),
        Ok("1"),
        "this kernel has no vrf driver, so the vrf tests cannot run here: run them in \
         the VM (make test-vm), and set CNIBOX_VRF_TESTS_IN_VM=1 to say a VM run follows"
    );
}

/// `ethN` in the container (veth to the host) with 10.80.N.2/24, fd80:N::2/64 and a
/// gateway route of its own.
fn iface(rig: &Rig, n: u8) {
    let (host, cont) = (format!("hv{n}"), format!("eth{n}"));
    rig.host.ip(&[
        "link",
        "add",
        "name",
        &host,
        "type",
        "veth",
        "peer",
        "name",
        &cont,
        "netns",
        &rig.cont.name,
    ]);
    rig.cont.ip(&["link", "set", &cont, "up"]);
    rig.host.ip(&["link", "set", &host, "up"]);
    rig.cont
        .ip(&["addr", "add", &format!("10.80.{n}.2/24"), "dev", &cont]);
    rig.cont.ip(&[
        "addr",
        "add",
        &format!("fd80:{n}::2/64"),
        "dev",
        &cont,
        "nodad",
    ]);
    rig.cont.ip(&[
        "route",
        "add",
        &format!("10.90.{n}.0/24"),
        "via",
        &format!("10.80.{n}.1"),
        "dev",
        &cont,
    ]);
}

fn conf(rig: &Rig, extra: Value) -> Value {
    merged(
        json!({"cniVersion": "1.0.0", "name": "vrfnet", "type": "vrf", "vrfname": "vrf0",
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": rig.cont.path}],
                "ips": [{"address": "10.80.0.2/24", "interface": 0}]}}),
        &extra,
    )
}

fn vrf_state(ns: &Netns) -> Value {
    let links: Vec<Value> = links(ns)
        .iter()
        .map(|l| {
            json!([
                l["ifname"],
                l["linkinfo"]["info_kind"],
                l["linkinfo"]["info_data"]["table"],
                l["master"],
                l["operstate"] == "UP"
                    || l["flags"]
                        .as_array()
                        .is_some_and(|f| f.contains(&json!("UP")))
            ])
        })
        .collect();
    let routes = |fam: &str| -> Vec<Value> {
        ns.ip_json(&[fam, "route", "show", "table", "all"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["table"] != "local" && r["dst"] != "multicast")
            // the link-local address's local route differs by MAC between two runs
            .filter(|r| {
                !r["dst"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("fe80::") && d != "fe80::/64")
            })
            .cloned()
            .collect()
    };
    let addrs: Vec<Value> = ["eth0", "eth1"]
        .iter()
        .flat_map(|d| addrs(ns, d))
        .filter(|a| a["scope"] == "global")
        .map(|a| json!([a["local"], a["prefixlen"]]))
        .collect();
    json!({"links": links, "routes4": routes("-4"), "routes6": routes("-6"), "addrs": addrs})
}

#[test]
#[ignore = "needs the vrf driver: make test-vm runs it in the VM"]
fn add_check_del() {
    need_vrf();
    let rig = Rig::new();
    iface(&rig, 0);
    let c = conf(&rig, json!({"table": 42}));
    let r = rig.call("vrf", "ADD", &c).run().ok().clone();
    assert_eq!(r["ips"], c["prevResult"]["ips"]);
    let vrf = link(&rig.cont, "vrf0").unwrap();
    assert_eq!(vrf["linkinfo"]["info_data"]["table"], 42);
    assert_eq!(link(&rig.cont, "eth0").unwrap()["master"], "vrf0");
    let t42 = rig.cont.ip_json(&["-4", "route", "show", "table", "42"]);
    assert!(
        t42.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.90.0.0/24"),
        "the gateway route moved into the VRF table: {t42}"
    );
    assert!(
        has_addr(&rig.cont, "eth0", "fd80::2/64"),
        "IPv6 address kept"
    );
    rig.call("vrf", "CHECK", &with_prev(&c, &r)).run().ok();
    // a second ADD fails: the interface has a master
    rig.call("vrf", "ADD", &c)
        .run()
        .fails_with(999, "has already a master set: vrf0");
    rig.call("vrf", "DEL", &c).run().ok();
    assert!(link(&rig.cont, "vrf0").is_none());
    assert!(link(&rig.cont, "eth0").unwrap().get("master").is_none());
    rig.call("vrf", "DEL", &c).run().ok();
}

#[test]
#[ignore = "needs the vrf driver: make test-vm runs it in the VM"]
fn the_vrf_goes_with_its_last_interface_and_tables_are_checked() {
    need_vrf();
    let rig = Rig::new();
    iface(&rig, 0);
    iface(&rig, 1);
    let c = conf(&rig, json!({}));
    rig.call("vrf", "ADD", &c).run().ok();
    // first free table is 1
    assert_eq!(
        link(&rig.cont, "vrf0").unwrap()["linkinfo"]["info_data"]["table"],
        1
    );
    rig.call("vrf", "ADD", &merged(c.clone(), &json!({"table": 7})))
        .ifname("eth1")
        .run()
        .fails_with(7, "VRF vrf0 already exist with different routing table 1");
    rig.call("vrf", "ADD", &c).ifname("eth1").run().ok();
    rig.call("vrf", "DEL", &c).run().ok();
    assert!(link(&rig.cont, "vrf0").is_some(), "eth1 is still in it");
    // the interface gone, DEL still succeeds (the reference fails)
    rig.cont.ip(&["link", "del", "eth1"]);
    rig.call("vrf", "DEL", &c).ifname("eth1").run().ok();
    assert!(link(&rig.cont, "vrf0").is_none());
    // netns gone
    let mut rig = rig;
    rig.drop_cont();
    rig.call("vrf", "DEL", &c).run().ok();
}

/// Same links, tables, routes and addresses as the Go plugin v1.9.1; cross-DEL.
#[test]
#[ignore = "needs the vrf driver: make test-vm runs it in the VM"]
fn differential_against_v1_9_1() {
    need_vrf();
    for extra in [json!({}), json!({"table": 42})] {
        let go = Rig::new();
        let ours = Rig::new();
        iface(&go, 0);
        iface(&ours, 0);
        let before = vrf_state(&ours.cont);
        let cg = conf(&go, extra.clone());
        let co = conf(&ours, extra.clone());
        go.call("vrf", "ADD", &cg).go().run().ok();
        ours.call("vrf", "ADD", &co).run().ok();
        assert_eq!(vrf_state(&go.cont), vrf_state(&ours.cont), "{extra}");
        go.call("vrf", "DEL", &cg).run().ok();
        ours.call("vrf", "DEL", &co).go().run().ok();
        for rig in [&go, &ours] {
            assert!(link(&rig.cont, "vrf0").is_none(), "{extra}");
            assert_eq!(vrf_state(&rig.cont)["links"], before["links"], "{extra}");
        }
    }
}

/// The VRF tables of `ns`, as (name, table), sorted by name.
fn vrf_tables(ns: &Netns) -> Vec<Value> {
    let v = ns.ip_json(&["-d", "link", "show", "type", "vrf"]);
    let mut t: Vec<Value> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| json!([l["ifname"], l["linkinfo"]["info_data"]["table"]]))
        .collect();
    t.sort_by_key(|x| x.to_string());
    t
}

/// Without `table`, a new VRF takes the lowest id >= 1 that no VRF of the netns uses
/// (v1.9.1's findFreeRoutingTableID): with VRFs the test made on tables 1, 2 and 4, the
/// plugin's first VRF gets 3 (the gap, not one past the highest) and a second one 5.
/// DEL removes only the plugin's VRFs. The Go plugin v1.9.1, on the same namespace,
/// picks the same tables.
#[test]
#[ignore = "needs the vrf driver: make test-vm runs it in the VM"]
fn the_first_free_table_skips_the_ones_other_vrfs_use() {
    need_vrf();
    let ours = Rig::new();
    let go = Rig::new();
    for rig in [&ours, &go] {
        iface(rig, 0);
        iface(rig, 1);
        for (name, table) in [("vrfx1", "1"), ("vrfx2", "2"), ("vrfx4", "4")] {
            rig.cont
                .ip(&["link", "add", name, "type", "vrf", "table", table]);
        }
    }
    let foreign = vec![
        json!(["vrfx1", 1]),
        json!(["vrfx2", 2]),
        json!(["vrfx4", 4]),
    ];
    assert_eq!(vrf_tables(&ours.cont), foreign);

    let c0 = conf(&ours, json!({}));
    let c1 = conf(&ours, json!({"vrfname": "vrf1"}));
    ours.call("vrf", "ADD", &c0).run().ok();
    assert_eq!(link(&ours.cont, "eth0").unwrap()["master"], "vrf0");
    ours.call("vrf", "ADD", &c1).ifname("eth1").run().ok();
    assert_eq!(link(&ours.cont, "eth1").unwrap()["master"], "vrf1");
    let mut want = vec![json!(["vrf0", 3]), json!(["vrf1", 5])];
    want.extend(foreign.clone());
    assert_eq!(vrf_tables(&ours.cont), want);
    let t3 = ours.cont.ip_json(&["-4", "route", "show", "table", "3"]);
    assert!(
        t3.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.90.0.0/24"),
        "eth0's gateway route moved into table 3: {t3}"
    );

    let g0 = conf(&go, json!({}));
    let g1 = conf(&go, json!({"vrfname": "vrf1"}));
    go.call("vrf", "ADD", &g0).go().run().ok();
    go.call("vrf", "ADD", &g1).ifname("eth1").go().run().ok();
    assert_eq!(vrf_tables(&go.cont), want, "the Go plugin v1.9.1");

    ours.call("vrf", "DEL", &c0).run().ok();
    ours.call("vrf", "DEL", &c1).ifname("eth1").run().ok();
    assert_eq!(vrf_tables(&ours.cont), foreign);
}

#[test]
fn malformed_inputs_get_the_right_code_and_change_nothing() {
    if std::env::var("VMTEST_GUEST").as_deref() == Ok("1") {
        eprintln!("malformed-input table skipped in the VM: it runs on the host");
        return;
    }
    let rig = Rig::new();
    iface(&rig, 0);
    rig.cont.ip(&[
        "link", "add", "name", "notvrf", "type", "veth", "peer", "name", "notvrf1",
    ]);
    settle(&rig.host, &["hv0"]);
    settle(&rig.cont, &["eth0"]);
    let table = include_str!("../testdata/malformed-vrf.json");
    Malformed::new("vrf", table, 10, conf(&rig, json!({}))).run(&rig);
}
