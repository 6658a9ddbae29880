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

/// Invalid static config: the code, and a message naming where the value is, with the
/// reference's wording (code 7 for the config, 4 for `CNI_ARGS`, 6 for a JSON type
/// mismatch).
#[test]
fn errors() {
    let rig = Rig::new();
    let st = |extra: Value| {
        let mut ipam = json!({"type": "static"});
        if let (Some(o), Some(e)) = (ipam.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        ipam
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, Value, &str, i64, &str)> = vec![
        ("ipam missing", Value::Null, json!({"runtimeConfig": {"ips": ["10.0.0.1/24"]}}), "", 7,
         "IPAM config missing 'ipam' key"),
        ("address not CIDR", st(json!({"addresses": [{"address": "10.0.0.1/24"}, {"address": "10.0.0.1"}]})), json!({}), "", 7,
         "ipam.addresses[1]: the 'address' field is expected to be in CIDR notation, got: '10.0.0.1'"),
        ("address bad prefix", st(json!({"addresses": [{"address": "10.0.0.1/40"}]})), json!({}), "", 7,
         "ipam.addresses[0]: the 'address' field is expected to be in CIDR notation, got: '10.0.0.1/40'"),
        ("gateway not an IP", st(json!({"addresses": [{"address": "10.0.0.1/24", "gateway": "10.0.0.256"}]})), json!({}), "", 7,
         r#"ipam.addresses[0]: "gateway": "10.0.0.256" is not an IP address"#),
        ("route dst not CIDR", st(json!({"routes": [{"dst": "nope"}]})), json!({}), "", 7,
         r#"ipam.routes[0]: "dst": "nope" is not a CIDR (address/prefix length)"#),
        ("route gw not an IP", st(json!({"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]})), json!({}), "", 7,
         r#"ipam.routes[0]: "gw": "x" is not an IP address"#),
        ("route dst missing", st(json!({"routes": [{}]})), json!({}), "", 7,
         r#"ipam.routes[0]: "dst" is missing"#),
        ("CNI_ARGS IP not CIDR", st(json!({})), json!({}), "IP=10.0.0.1/24,10.0.0.1", 4,
         "CNI_ARGS: the 'ip' field is expected to be in CIDR notation, got: '10.0.0.1'"),
        ("CNI_ARGS GATEWAY not an IP", st(json!({})), json!({}), "IP=10.0.0.1/24;GATEWAY=x", 4,
         r#"CNI_ARGS: "GATEWAY": invalid gateway address: "x" is not an IP address"#),
        ("args.cni.ips not CIDR", st(json!({})), json!({"args": {"cni": {"ips": ["10.0.0.1"]}}}), "", 7,
         "args.cni.ips[0]: an entry in the 'ips' field is NOT in CIDR notation, got: '10.0.0.1'"),
        ("runtimeConfig.ips not CIDR", st(json!({})), json!({"runtimeConfig": {"ips": ["10.0.0.1/24", "nope"]}}), "", 7,
         "runtimeConfig.ips[1]: an entry in the 'ips' field is NOT in CIDR notation, got: 'nope'"),
        ("two IPv4 under 0.2.0", st(json!({"addresses": [{"address": "10.0.0.1/24"}, {"address": "10.0.1.1/24"}]})),
         json!({"cniVersion": "0.2.0"}), "", 7,
         "CNI version 0.2.0 does not support more than 1 address per family"),
        ("runtimeConfig.ips of numbers", st(json!({})), json!({"runtimeConfig": {"ips": [1]}}), "", 6,
         "runtimeConfig.ips: expected a list of strings, got [1]"),
        ("args.cni.ips a string", st(json!({})), json!({"args": {"cni": {"ips": "10.0.0.1/24"}}}), "", 6,
         "args.cni.ips: expected a list of strings"),
        ("address a number", st(json!({"addresses": [{"address": 1}]})), json!({}), "", 6, "failed to load netconf"),
        ("route mtu a string", st(json!({"routes": [{"dst": "0.0.0.0/0", "mtu": "x"}]})), json!({}), "", 6,
         "ipam.routes[0]: mtu: expected an integer"),
    ];
    for (what, ipam, extra, args, code, msg) in cases {
        let mut c = json!({"cniVersion": "1.0.0", "name": "static-net", "type": "static"});
        if !ipam.is_null() {
            c["ipam"] = ipam;
        }
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let mut call = rig.call("static", "ADD", &c);
        if !args.is_empty() {
            call = call.args(args);
        }
        let out = call.run();
        assert_eq!(out.err_code(), code, "{what}: {}", out.stdout);
        let got = out.json.as_ref().unwrap()["msg"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(got.contains(msg), "{what}: want {msg:?}\n in {got:?}");
    }
    // CHECK: a configured address missing from or different in prevResult fails.
    let two = json!({"cniVersion": "1.0.0", "name": "static-net", "type": "static",
        "ipam": {"type": "static", "addresses": [{"address": "10.0.0.1/24"}, {"address": "10.0.1.1/24"}]},
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24"}]}});
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
