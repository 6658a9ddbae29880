//! iptables masquerade under adverse conditions: the xtables lock held by someone else
//! (a bounded wait, then code 11 naming the lock) and an ip6tables failure half-way
//! through a dual-stack ADD (nothing of the IPv4 half may remain).
//!
//! Hermetic: the plugin runs in the rig's own netns, the xtables lock is a temp file
//! (`XTABLES_LOCKFILE`, honoured by iptables 1.8), and tool substitutes come first on a
//! PATH of the test's own.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A directory that comes first on PATH, holding substitutes for some tools.
fn tool_dir(rig: &Rig) -> PathBuf {
    let d = rig.dir.join("tools");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    )
}

fn v4_and_v6() -> serde_json::Value {
    json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd01:2::/64"}]])
}

#[test]
fn xtables_lock_held_too_long_is_code_11() {
    let rig = Rig::new();
    // The legacy tools are the ones that take the lock (iptables-nft does not need it).
    let tools = tool_dir(&rig);
    for t in ["iptables", "iptables-save", "iptables-restore"] {
        let legacy = format!("/usr/sbin/{}", t.replace("iptables", "iptables-legacy"));
        assert!(
            Path::new(&legacy).exists(),
            "{legacy} missing (package iptables)"
        );
        std::os::unix::fs::symlink(&legacy, tools.join(t)).unwrap();
    }
    let lock_path = rig.dir.join("xtables.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap(); // flock(LOCK_EX), as iptables takes it

    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": "iptables"}),
        json!([[{"subnet": "10.1.2.0/24"}]]),
    );
    let path = path_with(&tools);
    let lock_env = lock_path.to_str().unwrap();
    // Without a bound the plugin would wait as long as the lock is held: let go of it
    // after 30 s at most, so that such a plugin finishes (successfully) and the test
    // fails; as soon as the plugin returned otherwise.
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _ = wait.recv_timeout(Duration::from_secs(30));
        drop(lock);
    });
    let t = Instant::now();
    let out = rig
        .call("bridge", "ADD", &conf)
        .env("PATH", &path)
        .env("XTABLES_LOCKFILE", lock_env)
        .run();
    let took = t.elapsed();
    let _ = done.send(());
    assert_eq!(out.err_code(), 11, "{}", out.stdout);
    let msg = out.json.as_ref().unwrap()["msg"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&format!("the xtables lock {lock_env} was held")),
        "{msg}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "waited {took:?}"
    );
    // the failed ADD left nothing behind
    assert!(reservations(&rig.data_dir().join("brnet")).is_empty());
    holder.join().unwrap();
    // with the lock free, the same tools work in this netns
    let v = rig
        .call("bridge", "ADD", &conf)
        .env("PATH", &path)
        .env("XTABLES_LOCKFILE", lock_env)
        .run()
        .ok()
        .clone();
    rig.call("bridge", "DEL", &with_prev(&conf, &v))
        .env("PATH", &path)
        .env("XTABLES_LOCKFILE", lock_env)
        .run()
        .ok();
}

#[test]
fn ipv6_failure_leaves_no_ipv4_rules() {
    let rig = Rig::new();
    let tools = tool_dir(&rig);
    let fake = tools.join("ip6tables-restore");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'ip6tables-restore: simulated failure' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": "iptables"}),
        v4_and_v6(),
    );
    let path = path_with(&tools);
    let out = rig.call("bridge", "ADD", &conf).env("PATH", &path).run();
    out.err_code();
    assert!(out.stdout.contains("simulated failure"), "{}", out.stdout);
    let v4 = iptables_save(&rig.host, false);
    assert!(!v4.contains("CNI-"), "IPv4 masquerade rules leaked:\n{v4}");
    let v6 = iptables_save(&rig.host, true);
    assert!(!v6.contains("CNI-"), "{v6}");
    // DEL after the failed ADD is fine (teardown is idempotent)
    rig.call("bridge", "DEL", &conf)
        .env("PATH", &path)
        .run()
        .ok();
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn a_hanging_iptables_is_killed_with_code_11() {
    let rig = Rig::new();
    let tools = tool_dir(&rig);
    // a unique duration marks the hanging process
    let marker = format!("{}.{}", 600 + std::process::id() % 100, std::process::id());
    let fake = tools.join("iptables-save");
    std::fs::write(&fake, format!("#!/bin/sh\nexec sleep {marker}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": "iptables"}),
        json!([[{"subnet": "10.1.2.0/24"}]]),
    );
    let t = Instant::now();
    let out = rig
        .call("bridge", "ADD", &conf)
        .env("PATH", &path_with(&tools))
        .run();
    let took = t.elapsed();
    assert_eq!(out.err_code(), 11, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("iptables-save -t nat did not finish within 10s and was killed"),
        "{}",
        out.stdout
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(
        processes_with(&format!("sleep {marker}")),
        0,
        "the child was not killed"
    );
    // DEL cannot tell whether rules exist: "try again later", not a silent success
    let out = rig
        .call("bridge", "DEL", &conf)
        .env("PATH", &path_with(&tools))
        .run();
    assert_eq!(out.err_code(), 11, "{}", out.stdout);
    assert!(
        out.stdout.contains("failed to tear down ip masquerade"),
        "{}",
        out.stdout
    );
}
