//! Differentials below 1.0.0: the same ADD through Go v1.9.1 and cnibox for every old
//! result shape (0.1.0/0.2.0 `ip4`/`ip6`, 0.3.x/0.4.0 `ips[].version`), and the 1.x
//! ones for reference; normalised results must be equal. bridge, ptp and host-local.

mod common;

use common::*;
use serde_json::{json, Value};

const OLD: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn ranges(dual: bool) -> Value {
    if dual {
        json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
    } else {
        json!([[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.50", "gateway": "10.1.2.1"}]])
    }
}

/// A config for `plugin` with host-local over `ranges`, routes and a resolv.conf.
fn conf(rig: &Rig, plugin: &str, ver: &str, dual: bool) -> Value {
    let rc = rig.dir.join("resolv.conf");
    std::fs::write(
        &rc,
        "nameserver 10.1.2.53\nsearch example.org\noptions ndots:2\n",
    )
    .unwrap();
    let mut routes = vec![
        json!({"dst": "10.9.0.0/16"}),
        json!({"dst": "10.8.0.0/16", "gw": "10.1.2.1"}),
    ];
    if dual {
        routes.push(json!({"dst": "2001:db8:9::/48"}));
    }
    let ipam = json!({"type": "host-local", "ranges": ranges(dual), "routes": routes,
                      "resolvConf": rc, "dataDir": rig.data_dir()});
    match plugin {
        "host-local" => {
            json!({"cniVersion": ver, "name": "vnet", "type": "host-local", "ipam": ipam})
        }
        "ptp" => {
            json!({"cniVersion": ver, "name": "vnet", "type": "ptp", "mtu": 1400, "ipam": ipam})
        }
        _ => json!({"cniVersion": ver, "name": "vnet", "type": "bridge", "bridge": "cbr0",
                     "isGateway": true, "isDefaultGateway": true, "ipam": ipam}),
    }
}

/// ADD through Go and cnibox, each in its own rig; the two results (raw).
fn both(plugin: &str, ver: &str, dual: bool) -> (Rig, Value, Rig, Value) {
    let go = Rig::new();
    let ours = Rig::new();
    let gv = go
        .call(plugin, "ADD", &conf(&go, plugin, ver, dual))
        .go()
        .run()
        .ok()
        .clone();
    let ov = ours
        .call(plugin, "ADD", &conf(&ours, plugin, ver, dual))
        .run()
        .ok()
        .clone();
    (go, gv, ours, ov)
}

/// Shape checks that do not depend on the other side: a result of `ver` must look like
/// one (so two equally wrong results cannot pass the comparison).
fn assert_shape(v: &Value, ver: &str) {
    assert_eq!(v["cniVersion"], ver, "{v}");
    if ver < "0.3.0" {
        assert!(v["ip4"]["ip"].is_string(), "{ver}: {v}");
        assert!(
            v.get("ips").is_none() && v.get("interfaces").is_none(),
            "{ver}: {v}"
        );
    } else {
        assert!(v.get("ip4").is_none(), "{ver}: {v}");
        let ips = v["ips"].as_array().expect("ips");
        for ip in ips {
            assert_eq!(ip.get("version").is_some(), ver < "1.0.0", "{ver}: {ip}");
        }
    }
}

#[test]
fn host_local_every_version() {
    for ver in OLD {
        for dual in [false, true] {
            let (go, gv, ours, ov) = both("host-local", ver, dual);
            assert_shape(&gv, ver);
            assert_eq!(gv, ov, "{ver} dual={dual}");
            assert_eq!(
                reservations(&go.data_dir().join("vnet")),
                reservations(&ours.data_dir().join("vnet")),
                "{ver}"
            );
        }
    }
}

#[test]
fn bridge_every_version() {
    for ver in OLD {
        for dual in [false, true] {
            let (go, gv, ours, ov) = both("bridge", ver, dual);
            assert_shape(&gv, ver);
            assert_eq!(
                normalize_result(&gv),
                normalize_result(&ov),
                "{ver} dual={dual}"
            );
            assert_eq!(net_state(&go), net_state(&ours), "{ver} dual={dual}");
        }
    }
}

#[test]
fn ptp_every_version() {
    for ver in OLD {
        for dual in [false, true] {
            let (go, gv, ours, ov) = both("ptp", ver, dual);
            assert_shape(&gv, ver);
            assert_eq!(
                normalize_result(&gv),
                normalize_result(&ov),
                "{ver} dual={dual}"
            );
            assert_eq!(net_state(&go), net_state(&ours), "{ver} dual={dual}");
        }
    }
}
