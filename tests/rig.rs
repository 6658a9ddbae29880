//! The rig itself must not hide failures: a helper that reads kernel or firewall state
//! panics when its tool fails (only a genuine "does not exist" reads as absent), and
//! `CniOut::ok()` accepts only what the spec says a successful command prints.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The panic message of `f`, or None if it did not panic.
fn panic_of<R>(f: impl FnOnce() -> R) -> Option<String> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(prev);
    match r {
        Ok(_) => None,
        Err(e) => Some(
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}

/// A plugin directory holding one shell-script plugin `fake`.
fn fake_plugin(rig: &Rig, script: &str) -> std::path::PathBuf {
    let dir = rig.dir.join("fake");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("fake");
    std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn ok_demands_what_the_spec_says_each_command_prints() {
    let rig = Rig::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "fake"});
    let dir = fake_plugin(
        &rig,
        r#"case "$CNI_COMMAND" in
  ADD) [ "$CNI_ARGS" = json ] && echo '{"cniVersion":"1.0.0"}'; [ "$CNI_ARGS" = text ] && echo done ;;
  VERSION) echo '[1]' ;;
  *) [ "$CNI_ARGS" = chatty ] && echo '{}' ;;
esac
exit 0"#,
    );
    let run = |cmd: &str, args: &str| rig.call("fake", cmd, &conf).in_dir(&dir).args(args).run();
    // Accepted: ADD with a JSON object, silent DEL/CHECK/GC/STATUS.
    assert_eq!(run("ADD", "json").ok()["cniVersion"], "1.0.0");
    for cmd in ["DEL", "CHECK", "GC", "STATUS"] {
        assert!(run(cmd, "").ok().is_null(), "{cmd}");
    }
    // Refused: exit 0 with nothing, with text, with a non-object; output from DEL & co.
    let cases = [
        ("ADD", "", "did not print a JSON object"),
        ("ADD", "text", "did not print a JSON object"),
        ("VERSION", "", "did not print a JSON object"),
        ("DEL", "chatty", "must print nothing"),
        ("CHECK", "chatty", "must print nothing"),
        ("GC", "chatty", "must print nothing"),
        ("STATUS", "chatty", "must print nothing"),
    ];
    for (cmd, args, want) in cases {
        let out = run(cmd, args);
        assert_eq!(out.code, 0);
        let msg = panic_of(|| out.ok().clone())
            .unwrap_or_else(|| panic!("{cmd} {args}: ok() accepted {:?}", out.stdout));
        assert!(msg.contains(want), "{cmd} {args}: {msg}");
    }
    // A success is not an error, and an error must carry the reason asked for.
    let out = run("DEL", "");
    assert!(
        panic_of(|| out.err_code()).is_some(),
        "err_code() of a success"
    );
    let dir = fake_plugin(
        &rig,
        r#"echo '{"code": 7, "msg": "bad config", "details": "key x"}'; exit 1"#,
    );
    let out = rig.call("fake", "ADD", &conf).in_dir(&dir).run();
    out.fails_with(7, "key x");
    assert!(panic_of(|| out.fails_with(7, "something else")).is_some());
    assert!(panic_of(|| out.fails_with(999, "bad config")).is_some());
    assert!(panic_of(|| out.ok().clone()).is_some(), "ok() of a failure");
}

#[test]
fn kernel_state_helpers_fail_loudly() {
    let rig = Rig::new();
    // Genuinely absent: None / empty.
    assert!(link(&rig.cont, "nope0").is_none());
    assert!(addrs(&rig.cont, "nope0").is_empty());
    assert!(nft_list(&rig.host, false, &["table", "inet", "nope"]).is_none());
    assert!(link(&rig.cont, "lo").is_some());
    // A namespace that is gone is not "no such device": every helper panics.
    let gone = rig.add_cont();
    gone.delete();
    let msgs = [
        panic_of(|| link(&gone, "lo")),
        panic_of(|| links(&gone)),
        panic_of(|| addrs(&gone, "lo")),
        panic_of(|| routes(&gone, false)),
        panic_of(|| gone.ip_json(&["neigh", "show"])),
        panic_of(|| iptables_save(&gone, false)),
        panic_of(|| iptables_save(&gone, true)),
        panic_of(|| nft_ruleset(&gone)),
        panic_of(|| nft_list(&gone, false, &["table", "inet", "nope"])),
        panic_of(|| ping(&gone, "127.0.0.1")),
    ];
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.is_some(), "helper #{i} read a failed command as absent");
    }
    // A device that does not exist is still an error where a device is required.
    assert!(panic_of(|| rig.cont.ip_json(&["addr", "show", "dev", "nope0"])).is_some());
    // ping tells "no reply" and "no route" from "could not run".
    assert!(!ping(&rig.cont, "192.0.2.1"), "no route");
    rig.cont
        .ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    rig.cont.ip(&["addr", "add", "192.0.2.9/24", "dev", "v0"]);
    rig.cont.ip(&["link", "set", "v0", "up"]);
    assert!(!ping(&rig.cont, "192.0.2.1"), "no reply");
    assert!(ping(&rig.cont, "127.0.0.1"));
    assert!(panic_of(|| ping(&rig.cont, "not-an-address")).is_some());
    // reservations(): a missing directory is empty, an unreadable path panics.
    assert!(reservations(&rig.dir.join("nope")).is_empty());
    let file = rig.dir.join("file");
    std::fs::write(&file, "").unwrap();
    assert!(panic_of(|| reservations(&file)).is_some());
}
