//! static IPAM through the built binary (§4.11 of the reference notes).

mod common;

use common::*;
use serde_json::{json, Value};

fn conf(ver: &str, ipam: Value) -> Value {
    json!({"cniVersion": ver, "name": "static-net", "type": "static", "ipam": ipam})
}

fn full_ipam() -> Value {
    json!({"type": "static",
        "addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}, {"address": "3ffe:ffff:0:01ff::1/64", "gateway": "3ffe:ffff:0::1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"}, {"dst": "3ffe:ffff:0:01ff::1/64"}],
        "dns": {"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["example.com"]}})
}

#[test]
fn add_del_echoes_config_in_every_version() {
    let rig = Rig::new();
    for ver in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let out = rig.call("static", "ADD", &conf(ver, full_ipam())).run();
        let v = out.ok();
        assert_eq!(v["cniVersion"], ver);
        assert_eq!(v["ips"][0]["address"], "10.10.0.1/24");
        assert_eq!(v["ips"][0]["gateway"], "10.10.0.254");
        assert_eq!(v["ips"][1]["address"], "3ffe:ffff:0:1ff::1/64");
        assert_eq!(v["ips"][1]["gateway"], "3ffe:ffff::1");
        assert_eq!(v["ips"][0].get("version").is_some(), ver < "1.0.0");
        assert_eq!(
            v["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"}, {"dst": "3ffe:ffff:0:1ff::1/64"}])
        );
        assert_eq!(
            v["dns"],
            json!({"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["example.com"]})
        );
        if ver >= "0.4.0" {
            let mut c = conf(ver, full_ipam());
            c["prevResult"] = v.clone();
            rig.call("static", "CHECK", &c).run().ok();
        }
        rig.call("static", "DEL", &conf(ver, full_ipam()))
            .run()
            .ok();
    }
    // 0.2.0 has one address per family.
    let v = rig
        .call("static", "ADD", &conf("0.2.0", full_ipam()))
        .run()
        .ok()
        .clone();
    assert_eq!(v["ip4"]["ip"], "10.10.0.1/24");
    assert_eq!(v["ip6"]["ip"], "3ffe:ffff:0:1ff::1/64");
}

#[test]
fn del_of_unknown_is_success() {
    let rig = Rig::new();
    rig.call("static", "DEL", &conf("1.0.0", full_ipam()))
        .id("never-added")
        .run()
        .ok();
}

#[test]
fn cni_args_ip_and_gateway() {
    let rig = Rig::new();
    let ipam = json!({"type": "static", "routes": [{"dst": "0.0.0.0/0"}]});
    let v = rig
        .call("static", "ADD", &conf("1.0.0", ipam.clone()))
        .args("IP=10.10.0.1/24;GATEWAY=10.10.0.254")
        .run()
        .ok()
        .clone();
    assert_eq!(
        v["ips"],
        json!([{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}])
    );
    let v = rig
        .call("static", "ADD", &conf("1.0.0", ipam))
        .args("IP=10.10.0.1/24, 11.11.0.1/24;GATEWAY=10.10.0.254,11.11.0.254")
        .run()
        .ok()
        .clone();
    assert_eq!(
        v["ips"],
        json!([{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}, {"address": "11.11.0.1/24", "gateway": "11.11.0.254"}])
    );
}

#[test]
fn runtime_config_beats_args_beats_cni_args() {
    let rig = Rig::new();
    let mut c = conf(
        "1.0.0",
        json!({"type": "static", "addresses": [{"address": "10.0.0.1/24"}]}),
    );
    c["args"] = json!({"cni": {"ips": ["11.0.0.1/24"]}});
    let v = rig
        .call("static", "ADD", &c)
        .args("IP=12.0.0.1/24")
        .run()
        .ok()
        .clone();
    assert_eq!(
        v["ips"],
        json!([{"address": "11.0.0.1/24"}]),
        "args.cni.ips replaces config and CNI_ARGS"
    );
    c["capabilities"] = json!({"ips": true});
    c["runtimeConfig"] = json!({"ips": ["13.0.0.1/24", "fd00::1/64"]});
    let v = rig
        .call("static", "ADD", &c)
        .args("IP=12.0.0.1/24")
        .run()
        .ok()
        .clone();
    assert_eq!(
        v["ips"],
        json!([{"address": "13.0.0.1/24"}, {"address": "fd00::1/64"}])
    );
}

#[test]
fn errors() {
    let rig = Rig::new();
    let no_ipam = json!({"cniVersion": "1.0.0", "name": "n", "type": "static", "runtimeConfig": {"ips": ["10.0.0.1/24"]}});
    let out = rig.call("static", "ADD", &no_ipam).run();
    assert!(
        out.stdout.contains("IPAM config missing 'ipam' key"),
        "{}",
        out.stdout
    );
    let bad = |ipam: Value, args: Option<&str>, extra: Value, msg: &str| {
        let mut c = conf("1.0.0", ipam);
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let mut call = rig.call("static", "ADD", &c);
        if let Some(a) = args {
            call = call.args(a);
        }
        let out = call.run();
        assert_eq!(out.code, 1);
        assert!(out.stdout.contains(msg), "want {msg:?} in {}", out.stdout);
    };
    bad(
        json!({"type": "static", "addresses": [{"address": "10.0.0.1"}]}),
        None,
        json!({}),
        "the 'address' field is expected to be in CIDR notation, got: '10.0.0.1'",
    );
    bad(
        json!({"type": "static"}),
        Some("IP=10.0.0.1"),
        json!({}),
        "the 'ip' field is expected to be in CIDR notation, got: '10.0.0.1'",
    );
    bad(
        json!({"type": "static"}),
        Some("IP=10.0.0.1/24;GATEWAY=x"),
        json!({}),
        "invalid gateway address: x",
    );
    bad(
        json!({"type": "static"}),
        None,
        json!({"args": {"cni": {"ips": ["10.0.0.1"]}}}),
        "an entry in the 'ips' field is NOT in CIDR notation, got: '10.0.0.1'",
    );
    bad(
        json!({"type": "static"}),
        None,
        json!({"runtimeConfig": {"ips": ["nope"]}}),
        "an entry in the 'ips' field is NOT in CIDR notation, got: 'nope'",
    );
    let mut two = conf(
        "0.2.0",
        json!({"type": "static", "addresses": [{"address": "10.0.0.1/24"}, {"address": "10.0.1.1/24"}]}),
    );
    let out = rig.call("static", "ADD", &two).run();
    assert!(
        out.stdout
            .contains("CNI version 0.2.0 does not support more than 1 address per family"),
        "{}",
        out.stdout
    );
    // CHECK: a configured address missing from or different in prevResult fails.
    two["cniVersion"] = json!("1.0.0");
    two["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24"}]});
    let out = rig.call("static", "CHECK", &two).run();
    assert!(
        out.stdout.contains("static: Failed to match addr 10.0.1.1"),
        "{}",
        out.stdout
    );
}

#[test]
fn differential_against_the_reference() {
    let rig = Rig::new();
    for ver in ["0.2.0", "0.4.0", "1.0.0"] {
        let c = conf(ver, full_ipam());
        let c = if ver == "0.2.0" {
            conf(
                ver,
                json!({"type": "static", "addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}],
                "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["8.8.8.8"]}}),
            )
        } else {
            c
        };
        let ours = rig.call("static", "ADD", &c).run().ok().clone();
        let go = rig.call("static", "ADD", &c).go().run().ok().clone();
        assert_eq!(ours, go, "version {ver}");
    }
}
