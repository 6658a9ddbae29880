//! The core's promises under bad input and failure, through the built binary:
//! - every malformed config / environment in `testdata/malformed-applets.json` gets the
//!   spec's code and a message naming the problem, and changes nothing at all;
//! - a failed ADD leaves nothing it created (veth, IPAM reservation, the bridge itself);
//! - a delegate (IPAM) that hangs is killed at the deadline and answered with code 11;
//! - DEL succeeds for configs ADD would reject, and for a netns that is only a file.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn base_conf(rig: &Rig, plugin: &str) -> Value {
    let ipam = json!({"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": rig.data_dir()});
    match plugin {
        "bridge" => json!({"cniVersion": "1.0.0", "name": "hnet", "type": "bridge",
            "bridge": "hbr0", "isGateway": true, "ipam": ipam}),
        "ptp" => json!({"cniVersion": "1.0.0", "name": "hnet", "type": "ptp", "ipam": ipam}),
        _ => json!({"cniVersion": "1.0.0", "name": "hnet", "type": plugin}),
    }
}

/// What a call could change beyond both namespaces: the host's firewall and the whole
/// IPAM data dir.
fn snap(rig: &Rig) -> Snap {
    Snap {
        firewall: true,
        trees: vec![rig.data_dir()],
    }
}

/// What a failed ADD must leave as it found it, for tests where a pre-existing bridge
/// is legitimately brought up (and its kernel-chosen MAC may move): the links of both
/// namespaces by name, kind and master, their global addresses, the ruleset, and the
/// reservations.
fn shape(rig: &Rig) -> String {
    let mut s = String::new();
    for ns in [&rig.host, &rig.cont] {
        for l in links(ns) {
            s.push_str(&format!(
                "{} {} {:?}\n",
                l["ifname"], l["linkinfo"]["info_kind"], l["master"]
            ));
        }
        for a in ns
            .ip_json(&["addr", "show", "scope", "global"])
            .as_array()
            .unwrap()
        {
            // `ip -j` prints an empty object for each address the scope filter hid.
            let shown: Vec<&Value> = a["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x.get("local").is_some())
                .collect();
            s.push_str(&format!("{} {:?}\n", a["ifname"], shown));
        }
    }
    s.push_str(&nft_ruleset(&rig.host));
    s.push_str(&format!("{:?}", reservations_under(&rig.data_dir())));
    s
}

#[test]
fn malformed_applet_inputs_get_the_right_code_and_change_nothing() {
    let rig = Rig::new();
    let table = include_str!("../testdata/malformed-applets.json");
    Malformed::new("applets", table, 30, Value::Null)
        .base_per_applet(|plugin| base_conf(&rig, plugin))
        .snap(snap(&rig))
        .run(&rig);
}

#[test]
fn failed_add_removes_the_bridge_it_created() {
    let rig = Rig::new();
    fake_ipam(
        &rig,
        "failing-ipam",
        r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses today"}'; exit 1"#,
    );
    let conf = json!({"cniVersion": "1.0.0", "name": "fnet", "type": "bridge",
        "bridge": "fbr0", "isGateway": true, "ipam": {"type": "failing-ipam"}});
    let before = snapshot_with(&rig, &snap(&rig));
    let out = rig.call("bridge", "ADD", &conf).run();
    // The delegate's own code passes through unchanged.
    assert_eq!(out.err_code(), 11, "{}", out.stdout);
    assert!(out.stdout.contains("no addresses today"), "{}", out.stdout);
    assert!(
        link(&rig.host, "fbr0").is_none(),
        "the new bridge was left behind"
    );
    assert_eq!(snapshot_with(&rig, &snap(&rig)), before);

    // A bridge that existed before the ADD stays, with what it had.
    rig.host.ip(&["link", "add", "fbr0", "type", "bridge"]);
    rig.host.ip(&["addr", "add", "10.99.0.1/24", "dev", "fbr0"]);
    let before = shape(&rig);
    assert!(before.contains("10.99.0.1"), "{before}");
    let out = rig.call("bridge", "ADD", &conf).run();
    assert_eq!(out.err_code(), 11);
    assert!(
        link(&rig.host, "fbr0").is_some(),
        "a pre-existing bridge was deleted"
    );
    assert_eq!(shape(&rig), before);
}

#[test]
fn failure_after_ipam_releases_the_address_and_the_veth() {
    let rig = Rig::new();
    // The bridge already has another IPv4 address and forceAddress is off: the ADD fails
    // after IPAM allocated and the container interface was configured.
    rig.host.ip(&["link", "add", "gbr0", "type", "bridge"]);
    rig.host.ip(&["addr", "add", "10.98.0.1/24", "dev", "gbr0"]);
    let conf = json!({"cniVersion": "1.0.0", "name": "gnet", "type": "bridge",
        "bridge": "gbr0", "isGateway": true, "ipMasq": true, "ipMasqBackend": "nftables",
        "ipam": {"type": "host-local", "subnet": "10.97.0.0/24", "dataDir": rig.data_dir()}});
    let before = shape(&rig);
    let out = rig.call("bridge", "ADD", &conf).run();
    out.err_code();
    assert!(
        out.stdout
            .contains("already has an IP address different from"),
        "{}",
        out.stdout
    );
    // No veth, no reservation, no masquerade rule (host-local's lock file may stay, as
    // with the reference).
    assert_eq!(shape(&rig), before);
}

#[test]
fn hung_ipam_is_killed_and_answered_with_code_11() {
    let rig = Rig::new();
    let marker = rig.dir.join("hung-ipam-ran");
    fake_ipam(
        &rig,
        "hung-ipam",
        &format!("touch {}\nexec sleep 60", marker.display()),
    );
    let conf = json!({"cniVersion": "1.0.0", "name": "hnet", "type": "bridge",
        "bridge": "hbr1", "ipam": {"type": "hung-ipam"}});
    let before = snapshot_with(&rig, &snap(&rig));
    let t = Instant::now();
    let out = rig
        .call("bridge", "ADD", &conf)
        .env("CNIBOX_DELEGATE_TIMEOUT", "1")
        .run();
    let took = t.elapsed();
    assert_eq!(out.err_code(), 11, "{}", out.stdout);
    assert!(
        out.stdout.contains("did not finish within"),
        "{}",
        out.stdout
    );
    assert!(marker.exists(), "the fake IPAM never ran");
    assert!(took < Duration::from_secs(30), "ADD waited {took:?}");
    assert_eq!(
        snapshot_with(&rig, &snap(&rig)),
        before,
        "the timed-out ADD left something"
    );
    // The plugin was killed, not left running.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &rig.cni_path.join("hung-ipam").display().to_string()])
        .output()
        .unwrap();
    assert_eq!(ps.status.code(), Some(1), "still running: {:?}", ps);
}

#[test]
fn del_succeeds_where_add_would_refuse() {
    let rig = Rig::new();
    let ipam = json!({"type": "host-local", "subnet": "10.76.0.0/24", "dataDir": rig.data_dir()});
    let confs = [
        json!({"cniVersion": "1.0.0", "name": "dnet", "type": "bridge", "bridge": "dbr0",
            "disableContainerInterface": true, "ipam": ipam}),
        json!({"cniVersion": "1.0.0", "name": "dnet", "type": "bridge", "bridge": "dbr0",
            "mtu": -5, "ipam": ipam}),
        json!({"cniVersion": "1.0.0", "name": "dnet", "type": "bridge", "bridge": "dbr0",
            "mtu": "1500", "ipMasq": "yes", "ipam": ipam}),
        json!({"cniVersion": "1.0.0", "name": "dnet", "type": "bridge",
            "bridge": "much-too-long-bridge-name", "ipam": ipam}),
        json!({"cniVersion": "1.0.0", "name": "dnet", "type": "ptp"}),
        json!({"cniVersion": "1.0.0", "name": "dnet", "type": "ptp", "mtu": -1,
            "ipMasqBackend": "pf", "ipam": ipam}),
    ];
    for conf in &confs {
        let add = rig.call(conf["type"].as_str().unwrap(), "ADD", conf).run();
        add.err_code();
        let del = rig.call(conf["type"].as_str().unwrap(), "DEL", conf).run();
        assert_eq!(del.code, 0, "DEL of {conf}: {}", del.stdout);
        assert!(del.stdout.trim().is_empty(), "DEL printed {}", del.stdout);
    }
}

/// DEL after a real ADD, with a config ADD would refuse (issue 15 §2): it still exits 0
/// and removes everything the ADD made for the attachment: the veth pair, the IPAM
/// reservation, the masquerade rules (nftables and iptables backends) and the MAC
/// spoof-check chains. Some configs are readable but out of range (DEL reads what it
/// needs); others cannot even be decoded (`"mtu": "1500"`), and then DEL removes
/// everything the plugin may have made. A DEL with the good config afterwards finds
/// nothing left to remove.
#[test]
fn del_with_a_config_add_would_refuse_cleans_up_after_a_real_add() {
    // (what DEL gets, the code ADD refuses it with: 6 when it does not decode)
    let refused = [
        (json!({"mtu": "1500"}), 6),
        (json!({"ipMasqBackend": 5, "macspoofchk": "yes"}), 6),
        (json!({"ipMasqBackend": "pf"}), 7),
        (json!({"mtu": -5, "vlan": 5000}), 7),
        (json!({"disableContainerInterface": true}), 7),
    ];
    for backend in ["nftables", "iptables"] {
        for (bad, code) in &refused {
            let rig = Rig::new();
            let what = format!("{backend} backend, DEL with {bad}");
            let ipam = json!({"type": "host-local", "subnet": "10.74.0.0/24",
                "dataDir": rig.data_dir()});
            let conf = json!({"cniVersion": "1.0.0", "name": "cnet", "type": "bridge",
                "bridge": "cbr9", "isGateway": true, "ipMasq": true, "ipMasqBackend": backend,
                "macspoofchk": true, "ipam": ipam});
            let bad_conf = merged(conf.clone(), bad);
            let add = rig.call("bridge", "ADD", &bad_conf).run();
            assert_eq!(
                add.err_code(),
                *code,
                "ADD must refuse ({what}): {}",
                add.stdout
            );

            let v = rig.call("bridge", "ADD", &conf).run().ok().clone();
            let ip = result_ip(&v, 0);
            let veth = v["interfaces"][1]["name"].as_str().unwrap().to_string();
            let masq_present = |rig: &Rig| match backend {
                "nftables" => nft_ruleset(&rig.host).contains(&format!("ip saddr {ip} ")),
                _ => iptables_save(&rig.host, false).contains(&format!("-s {ip}/32")),
            };
            let spoof_present = |rig: &Rig| {
                let nft = nft_ruleset(&rig.host);
                nft.contains("cni-br-iface-") || nft.contains("macspoofchk-")
            };
            // What the DEL must remove is really there.
            assert!(link(&rig.host, &veth).is_some(), "{what}");
            assert!(link(&rig.cont, "eth0").is_some(), "{what}");
            assert_eq!(
                reservations_under(&rig.data_dir()),
                vec![ip.clone()],
                "{what}"
            );
            assert!(masq_present(&rig), "{what}: no masquerade rule after ADD");
            assert!(spoof_present(&rig), "{what}: no spoof check after ADD");

            let del = rig.call("bridge", "DEL", &with_prev(&bad_conf, &v)).run();
            assert_eq!(del.code, 0, "{what}: {}", del.stdout);
            assert!(
                del.stdout.trim().is_empty(),
                "{what}: DEL printed {}",
                del.stdout
            );
            let veths: Vec<Value> = links(&rig.host)
                .into_iter()
                .filter(|l| l["linkinfo"]["info_kind"] == "veth" || l["master"] == "cbr9")
                .collect();
            assert!(veths.is_empty(), "{what}: left {veths:?}");
            assert!(link(&rig.cont, "eth0").is_none(), "{what}");
            assert!(reservations_under(&rig.data_dir()).is_empty(), "{what}");
            assert!(!masq_present(&rig), "{what}: the masquerade rule was left");
            assert!(!spoof_present(&rig), "{what}: the spoof check was left");
            for v6 in [false, true] {
                let save = iptables_save(&rig.host, v6);
                assert!(!save.contains("CNI-"), "{what}: {save}");
            }
            let after = snapshot_with(&rig, &snap(&rig));
            rig.call("bridge", "DEL", &with_prev(&conf, &v)).run().ok();
            assert_eq!(
                snapshot_with(&rig, &snap(&rig)),
                after,
                "{what}: the DEL with the good config still found something to remove"
            );
        }
    }
}

#[test]
fn del_with_a_netns_that_is_only_a_file_succeeds_and_cleans_up() {
    let rig = Rig::new();
    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"bridge": "fbr1"}),
        json!([[{"subnet": "10.75.0.0/24"}]]),
    );
    rig.call("bridge", "ADD", &conf).run().ok();
    assert_eq!(reservations(&rig.data_dir().join("brnet")).len(), 1);
    // What an unmounted netns leaves behind: an empty regular file at the same path.
    let file = rig.dir.join("stale-netns");
    std::fs::write(&file, b"").unwrap();
    let out = rig
        .call("bridge", "DEL", &conf)
        .netns(file.to_str().unwrap())
        .run();
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(reservations(&rig.data_dir().join("brnet")).is_empty());
}
