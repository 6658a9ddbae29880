//! dummy through the built binary (§2.7, §4.7 of the reference notes). A dummy link
//! needs the kernel's dummy driver, which the build machine's kernel lacks, so the tests
//! that create one are `#[ignore]`d: a plain `cargo test` lists them as *ignored*, never
//! as passed, and `make test-vm` runs them in the vmtest VM with `--include-ignored`.
//! Run on a kernel without the driver they fail and say why. The malformed-input table
//! needs no dummy driver (every case fails before a link is made) and runs everywhere.
//!
//! `dummy_driver_or_deferred_to_the_vm` (not ignored) keeps a host run honest: without
//! the driver it fails unless `CNIBOX_DUMMY_TESTS_IN_VM=1` says the VM run follows.

mod common;

use common::*;
use serde_json::{json, Value};

/// Can this kernel make dummy links? (Probes in a throwaway netns.)
fn kernel_has_dummy() -> bool {
    let ns = Netns::new("d");
    ns.exec(&["ip", "link", "add", "cbxprobe", "type", "dummy"])
        .status
        .success()
}

/// Every dummy test starts here: without the driver it fails, saying why.
fn need_dummy() -> bool {
    assert!(
        kernel_has_dummy(),
        "this kernel has no dummy link type (CONFIG_DUMMY): run this test in the VM \
         (make test-vm does: ../shared/vmtest/run-in-vm, with --include-ignored)"
    );
    true
}

#[test]
fn dummy_driver_or_deferred_to_the_vm() {
    if kernel_has_dummy() {
        return;
    }
    let in_vm = std::env::var("VMTEST_GUEST").as_deref() == Ok("1");
    assert!(!in_vm, "the vmtest VM's kernel must have the dummy driver");
    assert_eq!(
        std::env::var("CNIBOX_DUMMY_TESTS_IN_VM").as_deref(),
        Ok("1"),
        "this kernel has no dummy driver, so the dummy tests cannot run here: run them in \
         the VM (make test-vm), and set CNIBOX_DUMMY_TESTS_IN_VM=1 to say a VM run follows"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "dummy: no dummy driver in this kernel: 4 dummy tests ignored here, `make test-vm` runs them"
    );
}

fn conf(rig: &Rig, extra: Value) -> Value {
    let rc = rig.dir.join("resolv.conf");
    std::fs::write(&rc, "nameserver 10.55.0.53\nsearch example.test\n").unwrap();
    merged(
        json!({"cniVersion": "1.0.0", "name": "dumnet", "type": "dummy",
            "ipam": {"type": "host-local", "subnet": "10.55.0.0/24", "resolvConf": rc,
                "routes": [{"dst": "10.56.0.0/16"}], "dataDir": rig.data_dir()}}),
        &extra,
    )
}

fn kind(ns: &Netns, ifname: &str) -> Value {
    link(ns, ifname).map_or(Value::Null, |l| l["linkinfo"]["info_kind"].clone())
}

#[test]
#[ignore = "needs the dummy driver: make test-vm runs it in the VM"]
fn add_check_del() {
    if !need_dummy() {
        return;
    }
    let mut rig = Rig::new();
    // A host link of the same name does not matter: the link is made in the container.
    rig.host.ip(&["link", "add", "eth0", "type", "dummy"]);
    for ver in ["0.2.0", "1.0.0"] {
        let c = conf(
            &rig,
            json!({"cniVersion": ver, "dns": {"nameservers": ["9.9.9.9"]}}),
        );
        let v = rig.call("dummy", "ADD", &c).run().ok().clone();
        assert_eq!(v["cniVersion"], ver);
        assert_eq!(kind(&rig.cont, "eth0"), "dummy");
        // host-local goes round robin: each ADD gets the next address.
        let ip = if ver == "0.2.0" {
            &v["ip4"]["ip"]
        } else {
            &v["ips"][0]["address"]
        };
        assert!(
            has_addr(&rig.cont, "eth0", ip.as_str().unwrap()),
            "{ver}: {v}"
        );
        assert!(routes(&rig.cont, false)
            .iter()
            .any(|r| r["dst"] == "10.56.0.0/16" && r["gateway"] == "10.55.0.1"));
        if ver == "1.0.0" {
            let mac = link(&rig.cont, "eth0").unwrap()["address"].clone();
            assert_eq!(
                v["interfaces"],
                json!([{"name": "eth0", "mac": mac, "sandbox": rig.cont.path}])
            );
            assert_eq!(v["ips"][0]["interface"], 0);
            // IPAM's dns is kept; the config's is ignored, as in the reference.
            assert_eq!(
                v["dns"],
                json!({"nameservers": ["10.55.0.53"], "search": ["example.test"]})
            );
            rig.call("dummy", "CHECK", &with_prev(&c, &v)).run().ok();
            rig.cont.ip(&["link", "set", "eth0", "down"]);
            let out = rig.call("dummy", "CHECK", &with_prev(&c, &v)).run();
            assert!(
                out.stdout.contains("Interface eth0 is down"),
                "{}",
                out.stdout
            );
            rig.cont.ip(&["link", "set", "eth0", "up"]);
            rig.cont
                .ip(&["addr", "flush", "dev", "eth0", "scope", "global"]);
            let out = rig.call("dummy", "CHECK", &with_prev(&c, &v)).run();
            assert!(
                out.stdout.contains("Failed to match addr"),
                "{}",
                out.stdout
            );
        }
        rig.call("dummy", "DEL", &with_prev(&c, &v)).run().ok();
        assert!(link(&rig.cont, "eth0").is_none());
        assert!(reservations(&rig.data_dir().join("dumnet")).is_empty());
        rig.call("dummy", "DEL", &c).run().ok();
    }
    assert_eq!(
        kind(&rig.host, "eth0"),
        "dummy",
        "the host's link is untouched"
    );

    // STATUS and GC go to IPAM.
    let c = conf(&rig, json!({"cniVersion": "1.1.0"}));
    rig.call("dummy", "STATUS", &c).run().ok();
    rig.call("dummy", "ADD", &c).run().ok();
    let gc = merged(c.clone(), &json!({"cni.dev/valid-attachments": []}));
    rig.call("dummy", "GC", &gc).run().ok();
    assert!(reservations(&rig.data_dir().join("dumnet")).is_empty());

    // DEL with the netns gone, and with a config ADD refuses (no ipam).
    let gone = rig.cont.path.to_str().unwrap().to_string();
    rig.drop_cont();
    rig.call("dummy", "DEL", &c).netns(&gone).run().ok();
    let mut no_ipam = c.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    rig.call("dummy", "DEL", &no_ipam).netns(&gone).run().ok();
}

/// Nothing is exec'd (no `ip`, nor anything else found through PATH): ADD, CHECK and
/// DEL work with PATH an empty directory. IPAM is found through CNI_PATH, as the spec
/// says.
#[test]
#[ignore = "needs the dummy driver: make test-vm runs it in the VM"]
fn add_check_del_with_nothing_on_path() {
    if !need_dummy() {
        return;
    }
    let rig = Rig::new();
    let empty = rig.dir.join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let path = empty.to_str().unwrap();
    let c = conf(&rig, json!({}));
    let v = rig
        .call("dummy", "ADD", &c)
        .env("PATH", path)
        .run()
        .ok()
        .clone();
    assert_eq!(kind(&rig.cont, "eth0"), "dummy");
    assert!(has_addr(&rig.cont, "eth0", "10.55.0.2/24"), "{v}");
    assert!(routes(&rig.cont, false)
        .iter()
        .any(|r| r["dst"] == "10.56.0.0/16" && r["gateway"] == "10.55.0.1"));
    rig.call("dummy", "CHECK", &with_prev(&c, &v))
        .env("PATH", path)
        .run()
        .ok();
    rig.call("dummy", "DEL", &with_prev(&c, &v))
        .env("PATH", path)
        .run()
        .ok();
    assert!(link(&rig.cont, "eth0").is_none());
    assert!(reservations(&rig.data_dir().join("dumnet")).is_empty());
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "PATH stayed empty"
    );
}

#[test]
#[ignore = "needs the dummy driver: make test-vm runs it in the VM"]
fn failed_add_leaves_no_link() {
    if !need_dummy() {
        return;
    }
    let rig = Rig::new();
    fake_ipam(
        &rig,
        "failing-ipam",
        r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses today"}'; exit 1"#,
    );
    fake_ipam(
        &rig,
        "bad-route-ipam",
        r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.57.0.2/24"}],"routes":[{"dst":"10.58.0.0/16","gw":"192.0.2.1"}]}'"#,
    );
    let before = snapshot(&rig);
    for (ipam, code) in [("failing-ipam", 11), ("bad-route-ipam", 999)] {
        let c = json!({"cniVersion": "1.0.0", "name": "dumnet", "type": "dummy",
            "ipam": {"type": ipam}});
        let out = rig.call("dummy", "ADD", &c).run();
        assert_eq!(out.err_code(), code, "{}", out.stdout);
        assert_eq!(
            snapshot(&rig),
            before,
            "{ipam}: the failed ADD left something"
        );
    }
}

#[test]
#[ignore = "needs the dummy driver: make test-vm runs it in the VM"]
fn differential_and_cross_del_with_go() {
    if !need_dummy() {
        return;
    }
    let rig = Rig::new();
    let c = conf(&rig, json!({}));
    let go_ns = rig.add_cont();
    let go_path = go_ns.path.to_str().unwrap().to_string();
    let ours = rig.call("dummy", "ADD", &c).run().ok().clone();
    let go = rig
        .call("dummy", "ADD", &c)
        .id("ctr2")
        .netns(&go_path)
        .go()
        .run()
        .ok()
        .clone();
    let strip = |v: &Value| {
        let mut n = normalize_result(v);
        n["ips"][0]["address"] = json!("<ip>");
        n
    };
    assert_eq!(strip(&ours), strip(&go), "results");
    let state = |ns: &Netns| {
        let l = link(ns, "eth0").unwrap();
        json!({"kind": l["linkinfo"]["info_kind"], "mtu": l["mtu"], "flags": l["flags"],
            "addrs": addrs(ns, "eth0").iter().filter(|a| a["scope"] == "global").count(),
            "routes": routes(ns, false).len()})
    };
    assert_eq!(state(&rig.cont), state(&go_ns), "kernel state");
    // Each CHECKs and DELs what the other ADDed.
    rig.call("dummy", "CHECK", &with_prev(&c, &ours))
        .go()
        .run()
        .ok();
    rig.call("dummy", "CHECK", &with_prev(&c, &go))
        .id("ctr2")
        .netns(&go_path)
        .run()
        .ok();
    rig.call("dummy", "DEL", &c).go().run().ok();
    rig.call("dummy", "DEL", &c)
        .id("ctr2")
        .netns(&go_path)
        .run()
        .ok();
    assert!(link(&rig.cont, "eth0").is_none() && link(&go_ns, "eth0").is_none());
    assert!(reservations(&rig.data_dir().join("dumnet")).is_empty());
    // The reference's DEL without ipam fails; ours cleans up what it can.
    let mut no_ipam = c.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    assert_ne!(rig.call("dummy", "DEL", &no_ipam).go().run().code, 0);
    rig.call("dummy", "DEL", &no_ipam).run().ok();
}

// ---------------------------------------------------------------------------------------
// Malformed input: every case fails before a link exists, so no dummy driver is needed.

#[test]
fn malformed_inputs_get_the_right_code_and_change_nothing() {
    if std::env::var("VMTEST_GUEST").as_deref() == Ok("1") {
        // No dummy driver involved: the host run covers it; the emulated VM is slow.
        eprintln!("malformed-input table skipped in the VM: it runs on the host");
        return;
    }
    let rig = Rig::new();
    let table = include_str!("../testdata/malformed-dummy.json");
    Malformed::new("dummy", table, 10, conf(&rig, json!({}))).run(&rig);
}
