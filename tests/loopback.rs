//! loopback through the built binary, in throwaway namespaces.

mod common;

use common::*;
use serde_json::{json, Value};

const VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn lo_up(ns: &Netns) -> bool {
    let v = ns.ip_json(&["link", "show", "lo"]);
    v[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

#[test]
fn add_check_del_every_version() {
    let rig = Rig::new();
    for ver in VERSIONS {
        let conf = json!({"cniVersion": ver, "name": "lo-net", "type": "loopback"});
        let out = rig.call("loopback", "ADD", &conf).run();
        let v = out.ok().clone();
        assert!(lo_up(&rig.cont), "{ver}: lo must be up after ADD");
        assert_eq!(v["cniVersion"], *ver);
        match *ver {
            "0.1.0" | "0.2.0" => {
                assert_eq!(v["ip4"]["ip"], "127.0.0.1/8", "{ver}: {v}");
                assert_eq!(v["ip6"]["ip"], "::1/128", "{ver}: {v}");
                assert!(v.get("interfaces").is_none());
            }
            "0.3.0" | "0.3.1" | "0.4.0" => {
                assert_eq!(v["interfaces"][0]["name"], "lo");
                assert_eq!(v["interfaces"][0]["mac"], "00:00:00:00:00:00");
                assert_eq!(
                    v["interfaces"][0]["sandbox"],
                    rig.cont.path.to_str().unwrap()
                );
                assert_eq!(
                    v["ips"][0],
                    json!({"version": "4", "interface": 0, "address": "127.0.0.1/8"})
                );
                assert_eq!(
                    v["ips"][1],
                    json!({"version": "6", "interface": 0, "address": "::1/128"})
                );
            }
            _ => {
                assert_eq!(
                    v["ips"][0],
                    json!({"interface": 0, "address": "127.0.0.1/8"})
                );
                assert!(v.get("dns").is_none(), "1.x omits empty dns");
            }
        }
        if ver >= &"0.4.0" {
            rig.call("loopback", "CHECK", &conf).run().ok();
        }
        rig.call("loopback", "DEL", &conf).run().ok();
        assert!(!lo_up(&rig.cont), "{ver}: lo must be down after DEL");
        if ver >= &"0.4.0" {
            rig.call("loopback", "CHECK", &conf)
                .run()
                .fails_with(999, "loopback interface is down");
        }
        // DEL is idempotent, and succeeds without a netns or with a vanished one.
        rig.call("loopback", "DEL", &conf).run().ok();
        rig.call("loopback", "DEL", &conf).netns("").run().ok();
        rig.call("loopback", "DEL", &conf)
            .netns("/run/netns/cbx-does-not-exist")
            .run()
            .ok();
    }
}

#[test]
fn ifname_is_ignored_and_prev_result_passes_through() {
    let rig = Rig::new();
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "x"}],
                      "ips": [{"interface": 0, "address": "10.1.0.5/24"}]});
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "loopback", "prevResult": prev});
    let out = rig.call("loopback", "ADD", &conf).ifname("whatever0").run();
    assert_eq!(out.ok(), &prev);
    assert!(lo_up(&rig.cont));
}

#[test]
fn own_netns_is_refused_before_any_change() {
    let rig = Rig::new();
    // The plugin runs in the rig's host netns; pointing CNI_NETNS at it must fail with
    // code 8 and leave its lo untouched (down).
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "loopback"});
    rig.host.ip(&["link", "set", "lo", "down"]);
    let out = rig
        .call("loopback", "ADD", &conf)
        .netns(rig.host.path.to_str().unwrap())
        .run();
    assert_eq!(out.err_code(), 8);
    assert!(!lo_up(&rig.host));
}

/// lo as the kernel sees it: flags, operstate and addresses.
fn lo_state(ns: &Netns) -> (Value, Value, Vec<Value>) {
    let v = ns.ip_json(&["addr", "show", "dev", "lo"]);
    let addrs = v[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .map(|x| json!([x["local"], x["prefixlen"], x["scope"]]))
        .collect();
    (v[0]["flags"].clone(), v[0]["operstate"].clone(), addrs)
}

#[test]
fn differential_against_the_reference() {
    // The same ADD through a Go plugin (upstream v1.9.1, Debian's 1.1.1) in one rig and
    // through cnibox in another: the same lo in both containers, the same 1.x result as
    // v1.9.1 (the 0.x results differ on purpose, see README "Deviations"). Then each
    // side's DEL undoes what the other side's ADD did.
    for (label, dir) in [("go v1.9.1", oracle_dir()), ("debian", debian_dir())] {
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "loopback"});
        let go = Rig::new();
        let about = go.call("loopback", "", &conf).in_dir(&dir).run();
        assert!(
            about.stderr.starts_with("CNI loopback plugin ") && !about.stderr.contains("cnibox"),
            "{label}: {dir:?} must hold the Go plugin: {}",
            about.stderr
        );
        let ours = Rig::new();
        go.cont.ip(&["link", "set", "lo", "down"]);
        ours.cont.ip(&["link", "set", "lo", "down"]);
        assert_eq!(
            lo_state(&go.cont),
            lo_state(&ours.cont),
            "{label}: same start"
        );
        let gv = go
            .call("loopback", "ADD", &conf)
            .in_dir(&dir)
            .run()
            .ok()
            .clone();
        let ov = ours.call("loopback", "ADD", &conf).run().ok().clone();
        assert!(lo_up(&go.cont), "{label} brought lo up");
        assert_eq!(lo_state(&go.cont), lo_state(&ours.cont), "{label}");
        if label.starts_with("go") {
            // (Debian's older library prints an empty "dns": {}; v1.9.1 omits it.)
            assert_eq!(normalize_result(&gv), normalize_result(&ov), "{label}");
        }
        // Cross-DEL.
        ours.call("loopback", "DEL", &conf).in_dir(&dir).run().ok();
        go.call("loopback", "DEL", &conf).run().ok();
        assert!(!lo_up(&go.cont), "{label}: our DEL undid its ADD");
        assert!(!lo_up(&ours.cont), "{label}: its DEL undid our ADD");
        assert_eq!(
            lo_state(&go.cont),
            lo_state(&ours.cont),
            "{label} after DEL"
        );
    }
}

#[test]
fn version_and_about() {
    let rig = Rig::new();
    let out = rig
        .call("loopback", "VERSION", &json!({"cniVersion": "0.3.1"}))
        .run();
    assert_eq!(out.ok()["cniVersion"], "0.3.1");
    assert_eq!(out.ok()["supportedVersions"], json!(VERSIONS));
    let out = rig.call("loopback", "", &json!({})).run();
    assert_eq!(out.code, 0);
    assert!(out.stderr.contains(
        "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    ));
}

#[test]
fn malformed_inputs_through_the_binary() {
    // A few of the harness cases again, end to end: JSON error, exit 1, no panic.
    let rig = Rig::new();
    let cases: Vec<(Vec<u8>, &str, i64)> = vec![
        (b"{".to_vec(), "ADD", 6),
        (vec![0xff, 0xfe], "ADD", 6),
        (br#"{"cniVersion":"1.0.0"}"#.to_vec(), "DEL", 7),
        (br#"{"cniVersion":"7.0.0","name":"n"}"#.to_vec(), "ADD", 1),
        (br#"{"cniVersion":"0.3.1","name":"n"}"#.to_vec(), "CHECK", 1),
        (vec![b' '; 5 << 20], "ADD", 6),
    ];
    for (stdin, cmd, code) in cases {
        let out = rig.call("loopback", cmd, &json!({})).stdin(stdin).run();
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert_eq!(out.err_code(), code, "{}", out.stdout);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let out = rig
        .call(
            "loopback",
            "ADD",
            &json!({"cniVersion": "1.0.0", "name": "n"}),
        )
        .ifname("bad/name")
        .run();
    assert_eq!(out.err_code(), 4);
}
