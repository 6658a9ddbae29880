//! host-device's DEL puts every address back exactly as the device had it: an IPv4
//! broadcast that is not the computed one, a label, a point-to-point peer and a
//! non-global scope survive the round trip into the container and back (the reference
//! loses the addresses altogether; an earlier cnibox restored them with a computed
//! broadcast, no label, no peer and global scope).

mod common;

use common::*;
use serde_json::{json, Value};

/// Every address of `dev` except IPv6 link-local ones, with the attributes DEL must
/// restore, sorted.
fn addr_details(ns: &Netns, dev: &str) -> Vec<Value> {
    let mut v: Vec<Value> = addrs(ns, dev)
        .iter()
        .filter(|a| !(a["family"] == "inet6" && a["scope"] == "link"))
        .map(|a| {
            json!({"local": a["local"], "prefixlen": a["prefixlen"], "address": a["address"],
                "broadcast": a["broadcast"], "scope": a["scope"], "label": a["label"],
                "nodad": a["nodad"]})
        })
        .collect();
    v.sort_by_key(|a| a.to_string());
    v
}

#[test]
fn del_restores_broadcast_label_peer_and_scope() {
    let rig = Rig::new();
    rig.host
        .ip(&["link", "add", "hd7", "type", "veth", "peer", "name", "hd7p"]);
    for args in [
        &[
            "addr",
            "add",
            "10.70.0.5/24",
            "broadcast",
            "10.70.0.200",
            "label",
            "hd7:vip",
            "dev",
            "hd7",
        ][..],
        &[
            "addr",
            "add",
            "10.71.0.1",
            "peer",
            "10.71.0.2/32",
            "dev",
            "hd7",
        ][..],
        &["addr", "add", "10.72.0.9/16", "scope", "link", "dev", "hd7"][..],
        &["addr", "add", "fd70::5/64", "nodad", "dev", "hd7"][..],
        &["link", "set", "hd7", "up"][..],
    ] {
        rig.host.ip(args);
    }
    let before = addr_details(&rig.host, "hd7");
    assert_eq!(before.len(), 4, "{before:?}");
    // the fixture really has what the test is about
    let text = serde_json::to_string(&before).unwrap();
    for want in ["10.70.0.200", "hd7:vip", "10.71.0.2", "\"link\"", "fd70::5"] {
        assert!(text.contains(want), "fixture lacks {want}: {text}");
    }

    let c = json!({"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device",
        "device": "hd7", "dataDir": rig.dir.join("hd-state")});
    let v = rig
        .call("host-device", "ADD", &c)
        .ifname("net1")
        .run()
        .ok()
        .clone();
    assert!(link(&rig.host, "hd7").is_none(), "the device did not move");
    rig.call("host-device", "DEL", &with_prev(&c, &v))
        .ifname("net1")
        .run()
        .ok();
    assert_eq!(addr_details(&rig.host, "hd7"), before);
}
