//! tuning through the built binary (§2.17, §3.2, §4.17 of the reference notes), and
//! against the Go plugin v1.9.1: same kernel state, same result, same backup file, and
//! each side's DEL restores what the other ADDed.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
const MAC0: &str = "02:00:00:00:00:01";
const ARP_IGNORE: &str = "/proc/sys/net/ipv4/conf/eth0/arp_ignore";
const ARP_ANNOUNCE: &str = "/proc/sys/net/ipv4/conf/eth0/arp_announce";

/// The container interface tuning works on: one end of a veth pair, with a fixed MAC
/// so two namespaces (cnibox's and Go's) start from the same state.
fn setup_eth0(ns: &Netns) {
    ns.ip(&[
        "link", "add", "eth0", "address", MAC0, "type", "veth", "peer", "name", "peer0",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

/// What tuning can change on eth0, as `ip -d -j link` reports it.
fn state(ns: &Netns) -> Value {
    let l = link(ns, "eth0").expect("eth0 exists");
    let flags: Vec<&str> = l["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    json!({
        "mac": l["address"],
        "mtu": l["mtu"],
        "promisc": flags.contains(&"PROMISC"),
        "allmulti": flags.contains(&"ALLMULTI"),
        "txqlen": l["txqlen"],
    })
}

fn initial() -> Value {
    json!({"mac": MAC0, "mtu": 1500, "promisc": false, "allmulti": false, "txqlen": 1000})
}

fn sysctl(ns: &Netns, path: &str) -> String {
    let out = ns.exec(&["cat", path]);
    assert!(out.status.success(), "cat {path}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// A prevResult as the main plugin of the chain would print it, in `ver`'s shape.
fn prev(ver: &str, ns: &Netns) -> Value {
    match ver {
        "0.1.0" | "0.2.0" => json!({"cniVersion": ver,
            "ip4": {"ip": "10.1.2.3/24", "gateway": "10.1.2.1"}, "dns": {}}),
        // Printed as the reference's types print them: 0.x always has "dns", 1.x
        // omits an empty one.
        "0.3.0" | "0.3.1" | "0.4.0" => json!({"cniVersion": ver,
            "interfaces": [{"name": "veth1234abcd", "mac": "0a:00:00:00:00:09"},
                           {"name": "eth0", "mac": MAC0, "sandbox": ns.path}],
            "ips": [{"version": "4", "address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 1}],
            "dns": {}}),
        _ => json!({"cniVersion": ver,
            "interfaces": [{"name": "veth1234abcd", "mac": "0a:00:00:00:00:09"},
                           {"name": "eth0", "mac": MAC0, "sandbox": ns.path}],
            "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 1}]}),
    }
}

fn conf(ver: &str, dir: &Path, ns: &Netns, extra: Value) -> Value {
    let base = json!({"cniVersion": ver, "name": "tnet", "type": "tuning",
        "dataDir": dir, "prevResult": prev(ver, ns)});
    merged(base, &extra)
}

fn backup_file(dir: &Path) -> PathBuf {
    dir.join("ctr1_eth0.json")
}

/// The result with the sandbox paths (which differ per namespace) blanked.
fn no_sandbox(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(ifs) = v["interfaces"].as_array_mut() {
        for i in ifs {
            if i.get("sandbox").is_some() {
                i["sandbox"] = json!("<sandbox>");
            }
        }
    }
    v
}

fn all_keys() -> Value {
    json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1",
                      "net/ipv4/conf/IFNAME/arp_announce": "2"},
           "mac": "c2:11:22:33:44:55", "mtu": 1400, "promisc": true,
           "allmulti": true, "txQLen": 500})
}

#[test]
fn add_check_del_every_version() {
    for ver in VERSIONS {
        let rig = Rig::new();
        setup_eth0(&rig.cont);
        let dir = rig.dir.join("tuning");
        let c = conf(ver, &dir, &rig.cont, all_keys());
        let r = rig.call("tuning", "ADD", &c).run().ok().clone();

        // Every key applied inside the container netns.
        assert_eq!(
            state(&rig.cont),
            json!({"mac": "c2:11:22:33:44:55", "mtu": 1400, "promisc": true,
                   "allmulti": true, "txqlen": 500}),
            "{ver}"
        );
        assert_eq!(sysctl(&rig.cont, ARP_IGNORE), "1");
        assert_eq!(sysctl(&rig.cont, ARP_ANNOUNCE), "2");
        // ...and nothing on the host side.
        assert!(link(&rig.host, "eth0").is_none());

        // prevResult passed through, the container interface with its new MAC.
        let mut want = prev(ver, &rig.cont);
        if want.get("interfaces").is_some() {
            want["interfaces"][1]["mac"] = json!("c2:11:22:33:44:55");
        }
        assert_eq!(r, want, "{ver}");

        // The backup holds the originals, in the reference's format.
        assert_eq!(
            std::fs::read_to_string(backup_file(&dir)).unwrap(),
            "{\n \"mac\": \"02:00:00:00:00:01\",\n \"promisc\": false,\n \"mtu\": 1500,\n \"allmulti\": false,\n \"txQLen\": 1000\n}",
        );

        if ver >= "0.4.0" {
            let out = rig.call("tuning", "CHECK", &with_prev(&c, &r)).run();
            out.ok();
        }

        rig.call("tuning", "DEL", &with_prev(&c, &r)).run().ok();
        assert_eq!(state(&rig.cont), initial(), "{ver}: DEL restores");
        assert!(!backup_file(&dir).exists(), "{ver}: backup removed");
        // Sysctls are not reverted (the reference does not either: the netns dies).
        assert_eq!(sysctl(&rig.cont, ARP_IGNORE), "1");
        // DEL twice.
        rig.call("tuning", "DEL", &with_prev(&c, &r)).run().ok();
        assert_eq!(state(&rig.cont), initial());
    }
}

#[test]
fn del_with_netns_gone_or_link_gone() {
    let mut rig = Rig::new();
    setup_eth0(&rig.cont);
    let dir = rig.dir.join("tuning");
    let c = conf("1.0.0", &dir, &rig.cont, all_keys());
    rig.call("tuning", "ADD", &c).run().ok();
    assert!(backup_file(&dir).exists());
    rig.drop_cont();
    rig.call("tuning", "DEL", &c).run().ok();
    // Nothing left to restore: the stale backup goes too (the reference leaks it).
    assert!(!backup_file(&dir).exists());
    rig.call("tuning", "DEL", &c).run().ok();
    rig.call("tuning", "DEL", &c).netns("").run().ok();

    // The interface deleted before DEL (netns still there).
    let ns = rig.new_netns();
    setup_eth0(&ns);
    let c = conf("1.0.0", &dir, &ns, all_keys());
    let p = ns.path.to_str().unwrap();
    rig.call("tuning", "ADD", &c).netns(p).run().ok();
    ns.ip(&["link", "del", "eth0"]);
    rig.call("tuning", "DEL", &c).netns(p).run().ok();
    assert!(!backup_file(&dir).exists());

    // No backup at all (sysctl-only config, or never ADDed).
    setup_eth0(&ns);
    let c = conf(
        "1.0.0",
        &dir,
        &ns,
        json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}}),
    );
    rig.call("tuning", "ADD", &c).netns(p).run().ok();
    assert!(!backup_file(&dir).exists(), "nothing to back up");
    rig.call("tuning", "DEL", &c).netns(p).run().ok();
}

#[test]
fn unreadable_backup_is_left_alone() {
    let rig = Rig::new();
    setup_eth0(&rig.cont);
    let dir = rig.dir.join("tuning");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(backup_file(&dir), "{not json").unwrap();
    let c = conf("1.0.0", &dir, &rig.cont, json!({}));
    let out = rig.call("tuning", "DEL", &c).run();
    out.ok();
    assert!(out.stderr.contains("unreadable backup"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(backup_file(&dir)).unwrap(),
        "{not json"
    );
}

/// Every invalid value: code 7, the key named, and nothing changed (not even the valid
/// sysctl listed first).
#[test]
fn invalid_values_are_code_7_and_change_nothing() {
    let rig = Rig::new();
    setup_eth0(&rig.cont);
    let dir = rig.dir.join("tuning");
    let ok_sysctl = json!({"net.ipv4.conf.IFNAME.arp_ignore": "1"});
    let with_sysctl = |k: &str, v: &str| {
        let mut s = ok_sysctl.clone();
        s[k] = json!(v);
        json!({"sysctl": s})
    };
    let cases: Vec<(&str, Value, Option<&str>, &str)> = vec![
        (
            "dotdot",
            with_sysctl("net/../kernel/hostname", "x"),
            None,
            "\"net/../kernel/hostname\"",
        ),
        (
            "dotdot dotted",
            with_sysctl("net.ipv4..conf", "x"),
            None,
            "\"net.ipv4..conf\"",
        ),
        (
            "not net",
            with_sysctl("kernel.hostname", "x"),
            None,
            "\"kernel.hostname\"",
        ),
        (
            "not net slash",
            with_sysctl("kernel/hostname", "x"),
            None,
            "\"kernel/hostname\"",
        ),
        (
            "prefix only",
            with_sysctl("netfilter.x", "1"),
            None,
            "\"netfilter.x\"",
        ),
        (
            "absolute",
            with_sysctl("/proc/sys/net/ipv4/ip_forward", "1"),
            None,
            "\"/proc/sys/net/ipv4/ip_forward\"",
        ),
        (
            "absolute net",
            with_sysctl("/net/ipv4/ip_forward", "1"),
            None,
            "\"/net/ipv4/ip_forward\"",
        ),
        (
            "missing sysctl",
            with_sysctl("net.ipv4.conf.IFNAME.nope", "1"),
            None,
            "\"net.ipv4.conf.IFNAME.nope\"",
        ),
        (
            "read-only sysctl",
            with_sysctl("net.ipv4.tcp_available_congestion_control", "x"),
            None,
            "read-only",
        ),
        (
            "kernel refuses value",
            with_sysctl("net.ipv4.conf.IFNAME.arp_announce", "abc"),
            None,
            "\"net.ipv4.conf.IFNAME.arp_announce\"=\"abc\"",
        ),
        (
            "bad mac",
            json!({"sysctl": ok_sysctl, "mac": "zz:11:22:33:44:55"}),
            None,
            "invalid mac \"zz:11:22:33:44:55\"",
        ),
        (
            "short mac",
            json!({"sysctl": ok_sysctl, "mac": "c2:11:22:33:44"}),
            None,
            "invalid mac",
        ),
        (
            "multicast mac",
            json!({"sysctl": ok_sysctl, "mac": "01:00:5e:00:00:01"}),
            None,
            "invalid mac 01:00:5e:00:00:01",
        ),
        (
            "eui64 on ethernet",
            json!({"sysctl": ok_sysctl, "mac": "02:00:00:00:00:00:00:01"}),
            None,
            "6-byte addresses",
        ),
        (
            "args mac",
            json!({"sysctl": ok_sysctl, "args": {"cni": {"mac": "nope"}}}),
            None,
            "invalid args.cni.mac \"nope\"",
        ),
        (
            "runtimeConfig mac",
            json!({"sysctl": ok_sysctl, "runtimeConfig": {"mac": "nope"}}),
            None,
            "invalid runtimeConfig.mac \"nope\"",
        ),
        (
            "CNI_ARGS mac",
            json!({"sysctl": ok_sysctl}),
            Some("IgnoreUnknown=1;MAC=nope"),
            "invalid CNI_ARGS MAC \"nope\"",
        ),
        (
            "negative mtu",
            json!({"sysctl": ok_sysctl, "mtu": -1}),
            None,
            "invalid mtu -1",
        ),
        (
            "huge mtu",
            json!({"sysctl": ok_sysctl, "mtu": 70000}),
            None,
            "invalid mtu 70000",
        ),
        (
            "tiny mtu",
            json!({"sysctl": ok_sysctl, "mtu": 20}),
            None,
            "invalid mtu 20",
        ),
        (
            "args mtu",
            json!({"sysctl": ok_sysctl, "mtu": 1400, "args": {"cni": {"mtu": -5}}}),
            None,
            "invalid args.cni.mtu -5",
        ),
        (
            "negative txqlen",
            json!({"sysctl": ok_sysctl, "txQLen": -1}),
            None,
            "invalid txQLen -1",
        ),
        (
            "args txqlen",
            json!({"sysctl": ok_sysctl, "args": {"cni": {"txQLen": 5000000000i64}}}),
            None,
            "invalid args.cni.txQLen 5000000000",
        ),
    ];
    for (what, extra, cni_args, needle) in cases {
        let mut extra = extra;
        // Link changes too, so a late validation would show in the state.
        if extra.get("mtu").is_none() {
            extra["promisc"] = json!(true);
            extra["txQLen"] = json!(extra.get("txQLen").cloned().unwrap_or(json!(10)));
        }
        let c = conf("1.0.0", &dir, &rig.cont, extra);
        let mut call = rig.call("tuning", "ADD", &c);
        if let Some(a) = cni_args {
            call = call.args(a);
        }
        let out = call.run();
        assert_eq!(out.err_code(), 7, "{what}: {}", out.stdout);
        let msg = out.json.as_ref().unwrap()["msg"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
        assert_eq!(state(&rig.cont), initial(), "{what}: link changed");
        assert_eq!(sysctl(&rig.cont, ARP_IGNORE), "0", "{what}: sysctl changed");
        assert!(!backup_file(&dir).exists(), "{what}: backup left");
    }

    // Duplicate keys need raw JSON (a map cannot hold them).
    let c = serde_json::to_string(&conf("1.0.0", &dir, &rig.cont, json!({}))).unwrap();
    let raw = c.replacen(
        '{',
        r#"{"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.ipv4.conf.IFNAME.arp_ignore": "2"},"#,
        1,
    );
    let out = rig
        .call("tuning", "ADD", &json!({}))
        .stdin(raw.into_bytes())
        .run();
    assert_eq!(out.err_code(), 7, "{}", out.stdout);
    assert!(
        out.stdout.contains("duplicated sysctl keys"),
        "{}",
        out.stdout
    );
    assert_eq!(sysctl(&rig.cont, ARP_IGNORE), "0");

    // Type mismatches are decode errors (code 6), as everywhere.
    for extra in [
        json!({"mtu": "1500"}),
        json!({"sysctl": {"net.ipv4.ip_forward": 1}}),
        json!({"promisc": "yes"}),
        json!({"args": {"cni": {"sysctl": ["x"]}}}),
    ] {
        let out = rig
            .call(
                "tuning",
                "ADD",
                &conf("1.0.0", &dir, &rig.cont, extra.clone()),
            )
            .run();
        assert_eq!(out.err_code(), 6, "{extra}: {}", out.stdout);
    }
    assert_eq!(state(&rig.cont), initial());

    // A chained plugin needs the previous result.
    let mut c = conf("1.0.0", &dir, &rig.cont, all_keys());
    c.as_object_mut().unwrap().remove("prevResult");
    let out = rig.call("tuning", "ADD", &c).run();
    assert_eq!(out.err_code(), 7);
    assert!(out.stdout.contains("is missing"), "{}", out.stdout);
    assert_eq!(state(&rig.cont), initial());
}

/// A failure after changes began (the kernel refuses the MTU: a macvlan cannot exceed its
/// lower device's MTU, which no validation can see) undoes every change, newest first.
#[test]
fn failed_add_restores_what_it_changed() {
    let rig = Rig::new();
    rig.cont.ip(&[
        "link", "add", "lower0", "type", "veth", "peer", "name", "lower1",
    ]);
    rig.cont.ip(&[
        "link", "add", "link", "lower0", "name", "eth0", "address", MAC0, "type", "macvlan",
    ]);
    let before = state(&rig.cont);
    let dir = rig.dir.join("tuning");
    let extra = json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"},
                       "mac": "c2:11:22:33:44:55", "promisc": true, "mtu": 9000, "txQLen": 7});
    let c = conf("1.0.0", &dir, &rig.cont, extra.clone());
    let out = rig.call("tuning", "ADD", &c).run();
    out.err_code();
    assert!(out.stdout.contains("MTU"), "{}", out.stdout);
    assert_eq!(state(&rig.cont), before, "link restored");
    assert_eq!(sysctl(&rig.cont, ARP_IGNORE), "0", "sysctl restored");
    assert!(!backup_file(&dir).exists(), "backup removed");

    // The same through Go leaves the MAC and promisc changed and the backup behind.
    let ns = rig.new_netns();
    ns.ip(&[
        "link", "add", "lower0", "type", "veth", "peer", "name", "lower1",
    ]);
    ns.ip(&[
        "link", "add", "link", "lower0", "name", "eth0", "address", MAC0, "type", "macvlan",
    ]);
    let gdir = rig.dir.join("go");
    let c = conf("1.0.0", &gdir, &ns, extra);
    let out = rig
        .call("tuning", "ADD", &c)
        .netns(ns.path.to_str().unwrap())
        .go()
        .run();
    out.err_code();
    assert_eq!(state(&ns)["mac"], "c2:11:22:33:44:55");
    assert!(backup_file(&gdir).exists());
}

#[test]
fn args_cni_sysctl_without_sysctl_map() {
    let rig = Rig::new();
    setup_eth0(&rig.cont);
    let dir = rig.dir.join("tuning");
    let c = conf(
        "1.0.0",
        &dir,
        &rig.cont,
        json!({"args": {"cni": {"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "2"}}}}),
    );
    let r = rig.call("tuning", "ADD", &c).run().ok().clone();
    assert_eq!(sysctl(&rig.cont, ARP_IGNORE), "2");
    assert_eq!(r, prev("1.0.0", &rig.cont));
    rig.call("tuning", "CHECK", &with_prev(&c, &r)).run().ok();
    // The reference panics on exactly this config.
    let ns = rig.new_netns();
    setup_eth0(&ns);
    let out = rig
        .call("tuning", "ADD", &conf("1.0.0", &dir, &ns, c.clone()))
        .netns(ns.path.to_str().unwrap())
        .go()
        .run();
    assert!(out.stderr.contains("panic"), "{}", out.stderr);
}

/// args.cni beats the config; MAC: mac < CNI_ARGS MAC < runtimeConfig.mac < args.cni.mac.
/// The same calls through Go give the same state and result.
#[test]
fn overrides_match_the_reference() {
    let cases: Vec<(Value, Option<&str>, Value)> = vec![
        (
            json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.ipv4.conf.IFNAME.arp_announce": "1"},
                   "mtu": 1400, "promisc": false, "allmulti": false, "txQLen": 100,
                   "args": {"cni": {"sysctl": {"net.ipv4.conf.IFNAME.arp_announce": "2"},
                                    "mtu": 1300, "promisc": true, "allmulti": true, "txQLen": 200}}}),
            None,
            json!({"mac": MAC0, "mtu": 1300, "promisc": true, "allmulti": true, "txqlen": 200}),
        ),
        (
            json!({"mac": "c2:00:00:00:00:01"}),
            Some("MAC=c2:00:00:00:00:02"),
            json!({"mac": "c2:00:00:00:00:02"}),
        ),
        (
            json!({"mac": "c2:00:00:00:00:01", "runtimeConfig": {"mac": "c2:00:00:00:00:03"}}),
            Some("MAC=c2:00:00:00:00:02"),
            json!({"mac": "c2:00:00:00:00:03"}),
        ),
        (
            json!({"mac": "c2:00:00:00:00:01", "runtimeConfig": {"mac": "c2:00:00:00:00:03"},
                "args": {"cni": {"mac": "c2:00:00:00:00:04"}}}),
            Some("IgnoreUnknown=1;MAC=c2:00:00:00:00:02;K8S_POD_NAME=x"),
            json!({"mac": "c2:00:00:00:00:04"}),
        ),
        // An empty args.cni.mac switches the MAC change off; args.cni.mtu 0 the MTU.
        (
            json!({"mac": "c2:00:00:00:00:01", "mtu": 1400, "args": {"cni": {"mac": "", "mtu": 0}}}),
            None,
            json!({"mac": MAC0, "mtu": 1500}),
        ),
        (
            json!({"mac": "c2:00:00:00:00:01", "runtimeConfig": {"mac": ""}}),
            Some("MAC="),
            json!({"mac": "c2:00:00:00:00:01"}),
        ),
    ];
    for (extra, cni_args, want) in cases {
        let rig = Rig::new();
        let ours = &rig.cont;
        let go = rig.new_netns();
        setup_eth0(ours);
        setup_eth0(&go);
        let (dir, gdir) = (rig.dir.join("ours"), rig.dir.join("go"));
        let mut results = Vec::new();
        for (ns, d, is_go) in [(ours, &dir, false), (&go, &gdir, true)] {
            let c = conf("1.0.0", d, ns, extra.clone());
            let mut call = rig
                .call("tuning", "ADD", &c)
                .netns(ns.path.to_str().unwrap());
            if let Some(a) = cni_args {
                call = call.args(a);
            }
            if is_go {
                call = call.go();
            }
            results.push(no_sandbox(call.run().ok()));
            let s = state(ns);
            for (k, v) in want.as_object().unwrap() {
                assert_eq!(&s[k], v, "{extra} go={is_go}: {k}");
            }
        }
        assert_eq!(results[0], results[1], "{extra}: result");
        assert_eq!(state(ours), state(&go), "{extra}: state");
        for p in [ARP_IGNORE, ARP_ANNOUNCE] {
            assert_eq!(sysctl(ours, p), sysctl(&go, p), "{extra}: {p}");
        }
        assert_eq!(
            std::fs::read(backup_file(&dir)).ok(),
            std::fs::read(backup_file(&gdir)).ok(),
            "{extra}: backup"
        );
    }
}

/// Same config through cnibox and Go v1.9.1: same kernel state, result and backup
/// bytes; then each DELs the other's ADD from the other's backup.
#[test]
fn differential_state_result_backup_and_cross_del() {
    let configs = [
        all_keys(),
        json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "2",
                          "net.ipv6.conf.IFNAME.accept_ra": "0"}}),
        json!({"allmulti": false, "txQLen": 0, "promisc": false, "mtu": 9000}),
        json!({"mac": "c2:11:22:33:44:56", "allmulti": true}),
    ];
    let mut runs = Vec::new();
    for c in &configs {
        runs.push(("1.0.0", c.clone()));
    }
    for ver in ["0.2.0", "0.3.1", "0.4.0", "1.1.0"] {
        runs.push((ver, all_keys()));
    }
    for (ver, extra) in runs {
        let rig = Rig::new();
        let ours = &rig.cont;
        let go = rig.new_netns();
        setup_eth0(ours);
        setup_eth0(&go);
        let (dir, gdir) = (rig.dir.join("ours"), rig.dir.join("go"));
        let op = ours.path.to_str().unwrap();
        let gp = go.path.to_str().unwrap();
        let oc = conf(ver, &dir, ours, extra.clone());
        let gc = conf(ver, &gdir, &go, extra.clone());

        let r_ours = rig.call("tuning", "ADD", &oc).netns(op).run().ok().clone();
        let r_go = rig
            .call("tuning", "ADD", &gc)
            .netns(gp)
            .go()
            .run()
            .ok()
            .clone();
        let what = format!("{ver} {extra}");
        assert_eq!(no_sandbox(&r_ours), no_sandbox(&r_go), "{what}: result");
        assert_eq!(state(ours), state(&go), "{what}: link state");
        for p in [
            ARP_IGNORE,
            ARP_ANNOUNCE,
            "/proc/sys/net/ipv6/conf/eth0/accept_ra",
        ] {
            assert_eq!(sysctl(ours, p), sysctl(&go, p), "{what}: {p}");
        }
        let (b_ours, b_go) = (
            std::fs::read_to_string(backup_file(&dir)).ok(),
            std::fs::read_to_string(backup_file(&gdir)).ok(),
        );
        assert_eq!(b_ours, b_go, "{what}: backup file");

        if ver >= "0.4.0" {
            // Each CHECK accepts both ADDs.
            for (ns, c, r) in [(op, &oc, &r_ours), (gp, &gc, &r_go)] {
                rig.call("tuning", "CHECK", &with_prev(c, r))
                    .netns(ns)
                    .run()
                    .ok();
                rig.call("tuning", "CHECK", &with_prev(c, r))
                    .netns(ns)
                    .go()
                    .run()
                    .ok();
            }
        }

        // Crossed DELs: cnibox restores from Go's backup, Go from ours.
        rig.call("tuning", "DEL", &with_prev(&gc, &r_go))
            .netns(gp)
            .run()
            .ok();
        rig.call("tuning", "DEL", &with_prev(&oc, &r_ours))
            .netns(op)
            .go()
            .run()
            .ok();
        assert_eq!(state(ours), initial(), "{what}: Go DEL of cnibox ADD");
        assert_eq!(state(&go), initial(), "{what}: cnibox DEL of Go ADD");
        assert!(!backup_file(&dir).exists() && !backup_file(&gdir).exists());
    }
}

/// The installed base (Debian's 1.1.1, which predates `txQLen`) ADDs, cnibox DELs.
#[test]
fn debian_add_cnibox_del() {
    let rig = Rig::new();
    setup_eth0(&rig.cont);
    let dir = rig.dir.join("tuning");
    let mut keys = all_keys();
    keys.as_object_mut().unwrap().remove("txQLen");
    let c = conf("1.0.0", &dir, &rig.cont, keys);
    let r = rig.call("tuning", "ADD", &c).debian().run().ok().clone();
    assert_eq!(state(&rig.cont)["mtu"], 1400);
    rig.call("tuning", "CHECK", &with_prev(&c, &r)).run().ok();
    rig.call("tuning", "DEL", &with_prev(&c, &r)).run().ok();
    assert_eq!(state(&rig.cont), initial());
    assert!(!backup_file(&dir).exists());
}

#[test]
fn check_reports_what_changed() {
    let rig = Rig::new();
    setup_eth0(&rig.cont);
    let dir = rig.dir.join("tuning");
    let c = conf("1.0.0", &dir, &rig.cont, all_keys());
    let r = rig.call("tuning", "ADD", &c).run().ok().clone();
    let cc = with_prev(&c, &r);
    rig.call("tuning", "CHECK", &cc).run().ok();

    let set = |args: &[&str]| {
        let mut a = vec!["link", "set", "eth0"];
        a.extend_from_slice(args);
        rig.cont.ip(&a);
    };
    let write = |path: &str, v: &str| {
        let out = rig.cont.exec(&["sh", "-c", &format!("echo {v} > {path}")]);
        assert!(out.status.success());
    };
    type Step<'a> = (Box<dyn Fn() + 'a>, Box<dyn Fn() + 'a>, &'a str);
    let steps: Vec<Step> = vec![
        (
            Box::new(|| set(&["mtu", "1300"])),
            Box::new(|| set(&["mtu", "1400"])),
            "Tuning configured MTU of eth0 is 1400, current value is 1300",
        ),
        (
            Box::new(|| set(&["address", "02:00:00:00:00:09"])),
            Box::new(|| set(&["address", "c2:11:22:33:44:55"])),
            "Tuning configured Ethernet of eth0 is c2:11:22:33:44:55, current value is 02:00:00:00:00:09",
        ),
        (
            Box::new(|| set(&["promisc", "off"])),
            Box::new(|| set(&["promisc", "on"])),
            "Tuning link eth0 configured promisc is true, current value is false",
        ),
        (
            Box::new(|| set(&["allmulticast", "off"])),
            Box::new(|| set(&["allmulticast", "on"])),
            "Tuning configured all-multicast mode of eth0 is true, current value is false",
        ),
        (
            Box::new(|| set(&["txqueuelen", "10"])),
            Box::new(|| set(&["txqueuelen", "500"])),
            "Tuning configured Transmit Queue Length of eth0 is 500, current value is 10",
        ),
        (
            Box::new(|| write(ARP_IGNORE, "0")),
            Box::new(|| write(ARP_IGNORE, "1")),
            "Tuning configured value of /proc/sys/net/ipv4/conf/eth0/arp_ignore is 1, current value is 0",
        ),
    ];
    for (break_it, fix_it, reason) in steps {
        break_it();
        let out = rig.call("tuning", "CHECK", &cc).run();
        out.err_code();
        assert!(
            out.stdout.contains(reason),
            "{reason:?} not in {}",
            out.stdout
        );
        // Go's CHECK agrees that something is wrong.
        assert_ne!(
            rig.call("tuning", "CHECK", &cc).go().run().code,
            0,
            "{reason}"
        );
        fix_it();
        rig.call("tuning", "CHECK", &cc).run().ok();
    }

    // The interface itself gone.
    rig.cont.ip(&["link", "del", "eth0"]);
    let out = rig.call("tuning", "CHECK", &cc).run();
    out.err_code();
    assert!(
        out.stdout.contains("Cannot find container link eth0"),
        "{}",
        out.stdout
    );
    // CHECK needs prevResult.
    let out = rig.call("tuning", "CHECK", &c_without_prev(&c)).run();
    assert_eq!(out.err_code(), 7);
    assert!(out.stdout.contains("is missing"), "{}", out.stdout);
}

fn c_without_prev(c: &Value) -> Value {
    let mut c = c.clone();
    c.as_object_mut().unwrap().remove("prevResult");
    c
}

/// Fixes, each compared with Go: the result MAC is printed as the kernel does; CHECK
/// accepts an upper-case MAC and a multi-value sysctl; promisc is checked only when
/// configured on.
#[test]
fn check_and_result_fixes() {
    let rig = Rig::new();
    setup_eth0(&rig.cont);
    let go = rig.new_netns();
    setup_eth0(&go);
    let dir = rig.dir.join("tuning");
    let extra = json!({"mac": "C2-11-22-33-44-55",
                       "sysctl": {"net.ipv4.tcp_rmem": "4096 87380 6291456"}});
    let c = conf("1.0.0", &dir, &rig.cont, extra.clone());
    let r = rig.call("tuning", "ADD", &c).run().ok().clone();
    assert_eq!(r["interfaces"][1]["mac"], "c2:11:22:33:44:55");
    assert_eq!(state(&rig.cont)["mac"], "c2:11:22:33:44:55");
    rig.call("tuning", "CHECK", &with_prev(&c, &r)).run().ok();

    let gc = conf("1.0.0", &rig.dir.join("go"), &go, extra);
    let gp = go.path.to_str().unwrap();
    let gr = rig
        .call("tuning", "ADD", &gc)
        .netns(gp)
        .go()
        .run()
        .ok()
        .clone();
    assert_eq!(
        gr["interfaces"][1]["mac"], "C2-11-22-33-44-55",
        "Go echoes the config"
    );
    assert_eq!(state(&go), state(&rig.cont));
    let out = rig
        .call("tuning", "CHECK", &with_prev(&gc, &gr))
        .netns(gp)
        .go()
        .run();
    assert_ne!(out.code, 0, "Go's CHECK fails on its own ADD");
    rig.call("tuning", "CHECK", &with_prev(&gc, &gr))
        .netns(gp)
        .run()
        .ok();

    // promisc turned on by someone else: not tuning's business unless configured.
    rig.cont.ip(&["link", "set", "eth0", "promisc", "on"]);
    rig.call("tuning", "CHECK", &with_prev(&c, &r)).run().ok();
}

/// A second ADD for the same attachment must not save the tuned values as "originals".
#[test]
fn repeated_add_keeps_the_originals() {
    let rig = Rig::new();
    setup_eth0(&rig.cont);
    let dir = rig.dir.join("tuning");
    let c = conf(
        "1.0.0",
        &dir,
        &rig.cont,
        json!({"mtu": 1400, "mac": "c2:11:22:33:44:55"}),
    );
    rig.call("tuning", "ADD", &c).run().ok();
    let c2 = conf("1.0.0", &dir, &rig.cont, json!({"mtu": 1300, "txQLen": 5}));
    rig.call("tuning", "ADD", &c2).run().ok();
    assert_eq!(
        std::fs::read_to_string(backup_file(&dir)).unwrap(),
        "{\n \"mac\": \"02:00:00:00:00:01\",\n \"mtu\": 1500,\n \"txQLen\": 1000\n}"
    );
    rig.call("tuning", "DEL", &c2).run().ok();
    assert_eq!(state(&rig.cont), initial());
}

/// `/etc/cni/tuning/allowlist.conf`, seen through an overlay in a private mount
/// namespace (the machine's /etc is untouched).
#[test]
fn sysctl_allowlist() {
    let rig = Rig::new();
    setup_eth0(&rig.cont);
    let etc = rig.dir.join("etc");
    std::fs::create_dir_all(etc.join("cni/tuning")).unwrap();
    std::fs::write(
        etc.join("cni/tuning/allowlist.conf"),
        "^net\\.ipv4\\.conf\\.IFNAME\\.arp_[a-z]+$\n\n  ^net\\.ipv6\\.conf\\.IFNAME\\.accept_ra$  \n",
    )
    .unwrap();
    let dir = rig.dir.join("tuning");
    let run = |plugin: &Path, extra: Value| -> (i32, Value) {
        let c = conf("1.0.0", &dir, &rig.cont, extra);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &rig.host.name, "sh", "-c"])
            .arg("mount -t overlay overlay -o lowerdir=\"$1\":/etc /etc && exec \"$2\"")
            .arg("sh")
            .arg(&etc)
            .arg(plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "ctr1")
            .env("CNI_NETNS", &rig.cont.path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", plugin.parent().unwrap())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(&c).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        )
    };
    let ours = rig.cni_path.join("tuning");
    let go = oracle_dir().join("tuning");
    for plugin in [&ours, &go] {
        let (code, _) = run(
            plugin,
            json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1",
                              "net.ipv6.conf.IFNAME.accept_ra": "0"}}),
        );
        assert_eq!(code, 0, "{}", plugin.display());
        let (code, v) = run(
            plugin,
            json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_announce": "2",
                              "net.ipv4.conf.IFNAME.rp_filter": "1"}}),
        );
        assert_eq!(code, 1);
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .starts_with("Sysctl net.ipv4.conf.IFNAME.rp_filter is not allowed. Only the following sysctls are allowed: ["),
            "{v}"
        );
        if plugin == &ours {
            assert_eq!(v["code"], 7);
        }
        assert_eq!(
            sysctl(&rig.cont, ARP_ANNOUNCE),
            "0",
            "refused before any change"
        );
    }
    // A pattern we cannot read refuses rather than allows.
    std::fs::write(etc.join("cni/tuning/allowlist.conf"), "(?i)^net\\.\n").unwrap();
    let (code, v) = run(
        &ours,
        json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_announce": "2"}}),
    );
    assert_eq!(code, 1, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("(?i)"), "{v}");
    assert_eq!(sysctl(&rig.cont, ARP_ANNOUNCE), "0");
}
