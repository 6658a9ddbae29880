//! The exec'd IPAM path: IPAM is found in `CNI_PATH` and exec'd like the reference does
//! when it is not cnibox (Go's host-local next to a cnibox main plugin), or when
//! `CNIBOX_NO_INPROCESS=1` forces it; a delegated IPAM error passes through unchanged.

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// A plugin directory: `main` as a cnibox symlink, plus `extra` (name, target) links.
fn plugin_dir(rig: &Rig, main: &str, extra: &[(&str, &Path)]) -> PathBuf {
    let dir = rig.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    symlink(env!("CARGO_BIN_EXE_cnibox"), dir.join(main)).unwrap();
    for (name, target) in extra {
        symlink(target, dir.join(name)).unwrap();
    }
    dir
}

/// A shell-script IPAM plugin `fake-ipam` in `dir` that logs its commands to
/// `<dir>/calls` and runs `body`.
fn fake_ipam(dir: &Path, body: &str) {
    let p = dir.join("fake-ipam");
    let log = dir.join("calls");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\necho \"$CNI_COMMAND\" >> {}\n{body}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn conf(rig: &Rig, plugin: &str, ipam_type: &str) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "xnet", "type": plugin,
        "ipam": {"type": ipam_type, "dataDir": rig.data_dir(),
                 "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]}});
    if plugin == "bridge" {
        c["bridge"] = json!("cbr0");
        c["isGateway"] = json!(true);
    }
    c
}

/// The processes that started a dynamically linked binary during `call` (cnibox is
/// one; Go's static plugins are not): glibc's loader writes `LD_DEBUG_OUTPUT.<pid>`
/// for each, and the plugin hands its environment on to an exec'd IPAM.
fn processes_started(rig: &Rig, call: Call<'_>) -> (CniOut, usize) {
    let dir = rig
        .dir
        .join(format!("ld{}", rig.dir.read_dir().unwrap().count()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = call
        .env("LD_DEBUG", "files")
        .env("LD_DEBUG_OUTPUT", dir.join("ld").to_str().unwrap())
        .run();
    (out, std::fs::read_dir(&dir).unwrap().count())
}

#[test]
fn go_host_local_exec_d_by_a_cnibox_main_plugin() {
    for plugin in ["bridge", "ptp"] {
        let rig = Rig::new();
        let go_ipam = oracle_dir().join("host-local");
        let dir = plugin_dir(&rig, plugin, &[("host-local", &go_ipam)]);
        let c = conf(&rig, plugin, "host-local");
        let v = rig.call(plugin, "ADD", &c).in_dir(&dir).run().ok().clone();
        // The same result as with our in-process host-local, in another rig.
        let ours = Rig::new();
        let ov = ours
            .call(plugin, "ADD", &conf(&ours, plugin, "host-local"))
            .run()
            .ok()
            .clone();
        assert_eq!(normalize_result(&v), normalize_result(&ov), "{plugin}");
        // Go's host-local did the allocation: its files, and no cnibox index.
        let net = rig.data_dir().join("xnet");
        assert_eq!(reservations(&net), vec!["10.1.2.2", "2001:db8:1::2"]);
        assert_eq!(
            std::fs::read_to_string(net.join("10.1.2.2")).unwrap(),
            "ctr1\r\neth0"
        );
        assert!(!net.join(".cnibox-index").exists(), "Go's host-local ran");
        assert!(ours.data_dir().join("xnet/.cnibox-index").exists());
        let prev = with_prev(&c, &v);
        rig.call(plugin, "CHECK", &prev).in_dir(&dir).run().ok();
        rig.call(plugin, "DEL", &prev).in_dir(&dir).run().ok();
        assert!(reservations(&net).is_empty(), "{plugin}");
        assert!(link(&rig.cont, "eth0").is_none(), "{plugin}");
    }
}

#[test]
fn no_inprocess_forces_the_exec() {
    for plugin in ["bridge", "ptp"] {
        let rig = Rig::new();
        let c = conf(&rig, plugin, "host-local");
        // In-process by default: one process started.
        let (out, n) = processes_started(&rig, rig.call(plugin, "ADD", &c));
        let v = out.ok().clone();
        assert_eq!(n, 1, "{plugin}: host-local ran in-process");
        // With CNIBOX_NO_INPROCESS=1 the same cnibox host-local is exec'd: two
        // processes, and the same result for the next container.
        let ns = rig.add_cont();
        let (out, n) = processes_started(
            &rig,
            rig.call(plugin, "ADD", &c)
                .id("c2")
                .netns(ns.path.to_str().unwrap())
                .env("CNIBOX_NO_INPROCESS", "1"),
        );
        let v2 = out.ok().clone();
        assert_eq!(n, 2, "{plugin}: host-local exec'd");
        assert_eq!(v2["ips"][0]["address"], "10.1.2.3/24", "{plugin}");
        assert_eq!(v["ips"][0]["address"], "10.1.2.2/24", "{plugin}");
        for (id, netns, res) in [("ctr1", &rig.cont, &v), ("c2", &ns, &v2)] {
            let prev = with_prev(&c, res);
            let (out, n) = processes_started(
                &rig,
                rig.call(plugin, "CHECK", &prev)
                    .id(id)
                    .netns(netns.path.to_str().unwrap())
                    .env("CNIBOX_NO_INPROCESS", "1"),
            );
            out.ok();
            assert_eq!(n, 2, "{plugin} CHECK {id}");
            let (out, n) = processes_started(
                &rig,
                rig.call(plugin, "DEL", &prev)
                    .id(id)
                    .netns(netns.path.to_str().unwrap())
                    .env("CNIBOX_NO_INPROCESS", "1"),
            );
            out.ok();
            assert_eq!(n, 2, "{plugin} DEL {id}");
        }
        assert!(reservations(&rig.data_dir().join("xnet")).is_empty());
    }
}

#[test]
fn delegated_ipam_errors_pass_through_unchanged() {
    for plugin in ["bridge", "ptp"] {
        // Go's host-local with a config it refuses (an invalid subnet), under a cnibox
        // main plugin and under Go's own: the same error object (cnibox adds only the
        // spec's cniVersion), and nothing is left behind.
        let rig = Rig::new();
        let go_ipam = oracle_dir().join("host-local");
        let dir = plugin_dir(&rig, plugin, &[("host-local", &go_ipam)]);
        let mut c = conf(&rig, plugin, "host-local");
        c["ipam"]["ranges"] = json!([[{"subnet": "10.1.2.0/33"}]]);
        let ours = rig.call(plugin, "ADD", &c).in_dir(&dir).run();
        let oe = ours.err().clone();
        assert!(link(&rig.cont, "eth0").is_none());
        // (in another rig: Go's bridge leaves its veth behind when IPAM fails)
        let other = Rig::new();
        let mut gc = c.clone();
        gc["ipam"]["dataDir"] = json!(other.data_dir());
        let go = other.call(plugin, "ADD", &gc).go().run();
        let mut ge = go.err().clone();
        assert!(ge["msg"].as_str().unwrap().contains("10.1.2.0/33"), "{ge}");
        ge["cniVersion"] = json!("1.0.0");
        assert_eq!(oe, ge, "{plugin}");

        // A delegate's own code (11, try again later) with details, byte for byte.
        let rig = Rig::new();
        let dir = plugin_dir(&rig, plugin, &[]);
        fake_ipam(
            &dir,
            r#"[ "$CNI_COMMAND" = ADD ] && { echo '{"code": 11, "msg": "pool busy", "details": "retry in 1s"}'; exit 1; }
exit 0"#,
        );
        let c = conf(&rig, plugin, "fake-ipam");
        let out = rig.call(plugin, "ADD", &c).in_dir(&dir).run();
        assert_eq!(
            out.err(),
            &json!({"cniVersion": "1.0.0", "code": 11, "msg": "pool busy", "details": "retry in 1s"}),
            "{plugin}"
        );
        assert!(link(&rig.cont, "eth0").is_none());
        assert!(
            links(&rig.host)
                .iter()
                .all(|l| l["linkinfo"]["info_kind"] != "veth"),
            "{plugin}: no veth left"
        );
        let other = Rig::new();
        let go = other
            .call(plugin, "ADD", &c)
            .in_dir(&oracle_with(&rig, &dir, plugin))
            .run();
        let mut ge = go.err().clone();
        ge["cniVersion"] = json!("1.0.0");
        assert_eq!(out.err(), &ge, "{plugin}: as Go passes it");
    }
}

/// A copy of plugin directory `dir` whose `plugin` is Go's instead of cnibox.
fn oracle_with(rig: &Rig, dir: &Path, plugin: &str) -> PathBuf {
    let go = rig.dir.join("go-plugins");
    std::fs::create_dir_all(&go).unwrap();
    symlink(oracle_dir().join(plugin), go.join(plugin)).unwrap();
    std::fs::copy(dir.join("fake-ipam"), go.join("fake-ipam")).unwrap();
    go
}
