//! bridge VLAN scenarios (§4.1 items 5, 6, 18). They need a kernel with bridge VLAN
//! filtering, which the build machine's kernel lacks: `make test` runs this file inside
//! the vmtest VM (Debian's full kernel). Run directly on a kernel without it, every test
//! fails with that explanation, unless CNIBOX_VLAN_TESTS_IN_VM=1 says the VM run follows
//! (then they report that they were deferred and pass on the host).

mod common;

use common::*;
use serde_json::{json, Value};

fn v4() -> Value {
    json!([[{"subnet": "10.1.2.0/24"}]])
}

/// Can this kernel filter VLANs on a bridge? If not, fail loudly, or defer to the VM.
fn need_vlan_filtering() -> bool {
    let ns = Netns::new("v");
    let ok = ns
        .exec(&[
            "ip",
            "link",
            "add",
            "cbxprobe",
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ])
        .status
        .success();
    if ok {
        return true;
    }
    if std::env::var("CNIBOX_VLAN_TESTS_IN_VM").as_deref() == Ok("1") {
        eprintln!("bridge VLAN test deferred: no bridge VLAN filtering in this kernel; `make test` runs it in the vmtest VM");
        return false;
    }
    panic!("this kernel has no bridge VLAN filtering: run this test in the VM (make test does: ../shared/vmtest/run-in-vm)");
}

/// (vid, pvid, untagged) of a bridge port.
type Vlan = (u64, bool, bool);

fn port_vlans(ns: &Netns, dev: &str) -> Vec<Vlan> {
    let out = ns.exec(&["bridge", "-j", "vlan", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    let mut res = Vec::new();
    for port in v.as_array().into_iter().flatten() {
        for e in port["vlans"].as_array().into_iter().flatten() {
            let flags: Vec<String> = e["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| f.as_str().unwrap_or("").to_string())
                .collect();
            res.push((
                e["vlan"].as_u64().unwrap_or(0),
                flags.iter().any(|f| f == "PVID"),
                flags.iter().any(|f| f == "Egress Untagged"),
            ));
        }
    }
    res
}

#[test]
fn vlans() {
    if !need_vlan_filtering() {
        return;
    }
    let cases: Vec<(Value, Vec<Vlan>)> = vec![
        (json!({"vlan": 100}), vec![(100, true, true)]),
        (
            json!({"vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 202}]}),
            vec![
                (1, true, true),
                (101, false, false),
                (200, false, false),
                (201, false, false),
                (202, false, false),
            ],
        ),
        (
            json!({"vlan": 100, "vlanTrunk": [{"id": 101}]}),
            vec![(100, true, true), (101, false, false)],
        ),
        (
            json!({"vlan": 100, "preserveDefaultVlan": true}),
            vec![(1, false, true), (100, true, true)],
        ),
    ];
    for (extra, mut want) in cases {
        let rig = Rig::new();
        let mut conf =
            json!({"cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "cbr0"});
        conf.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
        let br = link(&rig.host, "cbr0").unwrap();
        assert_eq!(br["linkinfo"]["info_data"]["vlan_filtering"], 1, "{extra}");
        let host = v["interfaces"][1]["name"].as_str().unwrap();
        let mut got = port_vlans(&rig.host, host);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{extra}");
    }
}

#[test]
fn l3_with_vlan_gateway() {
    if !need_vlan_filtering() {
        return;
    }
    for preserve in [false, true] {
        let rig = Rig::new();
        let conf = bridge_conf(
            &rig,
            "1.0.0",
            json!({"isGateway": true, "vlan": 100, "preserveDefaultVlan": preserve}),
            v4(),
        );
        let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
        let ifs = v["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 4);
        assert_eq!(ifs[3]["name"], "cbr0.100");
        assert!(has_addr(&rig.host, "cbr0.100", "10.1.2.1/24"));
        assert!(!has_addr(&rig.host, "cbr0", "10.1.2.1/24"));
        // The gateway veth's peer is an access port on VLAN 100.
        let peer = links(&rig.host)
            .into_iter()
            .find(|l| l["master"] == "cbr0" && l["ifname"] != ifs[1]["name"])
            .expect("gateway peer on the bridge");
        let vl = port_vlans(&rig.host, peer["ifname"].as_str().unwrap());
        assert!(vl.contains(&(100, true, true)), "{vl:?}");
        assert_eq!(vl.iter().any(|x| x.0 == 1), preserve, "{vl:?}");
    }
}

#[test]
fn trunk_normalisation() {
    if !need_vlan_filtering() {
        return;
    }
    let rig = Rig::new();
    // Trunk normalisation: duplicates collapse, order does not matter.
    let conf = json!({"cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "cbr0",
                      "vlanTrunk": [{"id": 5}, {"minID": 3, "maxID": 5}, {"id": 3}]});
    let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
    let mut got = port_vlans(&rig.host, v["interfaces"][1]["name"].as_str().unwrap());
    got.sort();
    assert_eq!(
        got,
        vec![
            (1, true, true),
            (3, false, false),
            (4, false, false),
            (5, false, false)
        ]
    );
}
