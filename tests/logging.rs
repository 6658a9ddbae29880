//! The opt-in operation log (`logFile`/`logLevel`, `CNIBOX_LOG_FILE`/`CNIBOX_LOG_LEVEL`):
//! one JSON line per call with its fields, error codes kept, whole lines under
//! concurrency, stdout untouched, and nothing written unless asked.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.ends_with('\n'), "the log ends with a whole line");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn of_applet<'a>(ls: &'a [Value], applet: &str) -> Vec<&'a Value> {
    ls.iter().filter(|l| l["applet"] == applet).collect()
}

#[test]
fn one_line_per_operation_with_its_fields() {
    let rig = Rig::new();
    let log = rig.dir.join("ops.jsonl");
    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"logFile": log, "isGateway": true}),
        json!([[{"subnet": "10.77.0.0/24"}]]),
    );
    let res = rig.call("bridge", "ADD", &conf).run().ok().clone();
    rig.call("bridge", "CHECK", &with_prev(&conf, &res))
        .run()
        .ok();
    rig.call("bridge", "DEL", &conf).run().ok();

    let all = lines(&log);
    let br = of_applet(&all, "bridge");
    let cmds: Vec<&str> = br.iter().map(|l| l["command"].as_str().unwrap()).collect();
    assert_eq!(cmds, ["ADD", "CHECK", "DEL"], "{all:#?}");
    for l in &br {
        assert_eq!(l["containerId"], "ctr1");
        assert_eq!(l["ifname"], "eth0");
        assert_eq!(l["netns"], rig.cont.path.to_str().unwrap());
        assert_eq!(l["network"], "brnet");
        assert_eq!(l["cniVersion"], "1.0.0");
        assert_eq!(l["level"], "info");
        assert_eq!(l["ok"], true);
        assert!(l["durationUs"].is_u64(), "{l}");
        assert!(l["pid"].is_u64(), "{l}");
        assert!(l["ts"].as_str().unwrap().ends_with('Z'), "{l}");
        assert!(l.get("code").is_none(), "{l}");
        assert!(l.get("config").is_none(), "config only at debug: {l}");
    }
    // ADD names what it made: the container's eth0 in its netns and its address.
    let objs = br[0]["objects"].as_array().expect("ADD lists objects");
    let eth0 = objs
        .iter()
        .find(|o| o["kind"] == "link" && o["name"] == "eth0")
        .unwrap_or_else(|| panic!("{objs:?}"));
    assert_eq!(eth0["netns"], rig.cont.path.to_str().unwrap());
    assert!(
        objs.iter().any(|o| o["kind"] == "address"
            && o["address"] == "10.77.0.2/24"
            && o["link"] == "eth0"),
        "{objs:?}"
    );
    assert!(
        objs.iter()
            .any(|o| o["kind"] == "link" && o["name"] == "cbr0"),
        "{objs:?}"
    );
    // The IPAM applet run in-process logs its own operations, like an exec'd one would.
    let ipam: Vec<&str> = of_applet(&all, "host-local")
        .iter()
        .map(|l| l["command"].as_str().unwrap())
        .collect();
    assert_eq!(ipam, ["ADD", "CHECK", "DEL"], "{all:#?}");
    assert_eq!(all.len(), 6);
}

#[test]
fn error_codes_survive_and_the_error_level_keeps_only_failures() {
    let rig = Rig::new();
    let log = rig.dir.join("err.jsonl");
    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"logFile": log, "logLevel": "error"}),
        json!([[{"subnet": "10.78.0.0/24"}]]),
    );
    rig.call("bridge", "ADD", &merged(conf.clone(), &json!({"mtu": -5})))
        .run()
        .fails_with(7, "mtu");
    rig.call("bridge", "ADD", &conf)
        .netns("/nonexistent/netns")
        .run()
        .fails_with(3, "");
    rig.call("bridge", "ADD", &conf).run().ok();
    rig.call("bridge", "DEL", &conf).run().ok();
    let all = lines(&log);
    let codes: Vec<(&str, u64)> = all
        .iter()
        .map(|l| (l["command"].as_str().unwrap(), l["code"].as_u64().unwrap()))
        .collect();
    assert_eq!(codes, [("ADD", 7), ("ADD", 3)], "{all:#?}");
    for l in &all {
        assert_eq!(
            (l["level"].as_str(), l["ok"].as_bool()),
            (Some("error"), Some(false))
        );
        assert!(l["msg"].as_str().unwrap().len() > 3, "{l}");
    }
    assert!(
        all[0]["msg"].as_str().unwrap().contains("mtu"),
        "{}",
        all[0]
    );
    assert_eq!(all[1]["netns"], "/nonexistent/netns");
}

/// 32 processes at once, each logging 4 lines far longer than a pipe's atomic write:
/// every line must come out whole.
#[test]
fn concurrent_runs_never_interleave_within_a_line() {
    let rig = Rig::new();
    let log = rig.dir.join("many.jsonl");
    let pad = "x".repeat(20_000);
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let log = log.clone();
            let pad = pad.clone();
            let exe = rig.cni_path.join("loopback");
            std::thread::spawn(move || {
                for cmd in ["ADD", "CHECK", "DEL", "VERSION"] {
                    let conf = json!({"cniVersion": "1.0.0", "name": "lonet", "type": "loopback",
                        "pad": pad, "prevResult": {"cniVersion": "1.0.0"}});
                    let out = std::process::Command::new(&exe)
                        .env_clear()
                        .env("CNI_COMMAND", cmd)
                        .env("CNI_CONTAINERID", format!("c{i}"))
                        .env("CNI_NETNS", "/nonexistent/netns")
                        .env("CNI_IFNAME", "lo")
                        .env("CNIBOX_LOG_FILE", &log)
                        .env("CNIBOX_LOG_LEVEL", "debug")
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .and_then(|mut c| {
                            use std::io::Write;
                            c.stdin
                                .take()
                                .unwrap()
                                .write_all(conf.to_string().as_bytes())?;
                            c.wait_with_output()
                        })
                        .unwrap();
                    // Whatever the outcome, stdout holds nothing (DEL succeeds on a
                    // netns that is gone) or one JSON object, and no log line.
                    if !out.stdout.is_empty() {
                        let v: Value = serde_json::from_slice(&out.stdout)
                            .unwrap_or_else(|e| panic!("{cmd}: stdout {e}: {:?}", out.stdout));
                        assert!(v.get("applet").is_none(), "{v}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let all = lines(&log);
    assert_eq!(all.len(), 32 * 4);
    let mut seen = std::collections::BTreeSet::new();
    for l in &all {
        let cmd = l["command"].as_str().unwrap();
        if cmd != "VERSION" {
            // VERSION reads no config; the others log it at debug, padding intact.
            assert_eq!(
                l["config"]["pad"].as_str().map(str::len),
                Some(20_000),
                "{cmd}"
            );
        }
        seen.insert((
            l["containerId"].as_str().unwrap().to_string(),
            cmd.to_string(),
        ));
    }
    assert_eq!(seen.len(), 32 * 4, "every call logged exactly once");
}

#[test]
fn stdout_is_unchanged_and_never_the_log() {
    let rig = Rig::new();
    let plain = json!({"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"});
    let want = rig.call("loopback", "ADD", &plain).run();
    let log = rig.dir.join("lo.jsonl");
    let logged = rig
        .call(
            "loopback",
            "ADD",
            &merged(plain.clone(), &json!({"logFile": log, "logLevel": "debug"})),
        )
        .run();
    assert_eq!(
        logged.stdout, want.stdout,
        "logging changes nothing on stdout"
    );
    assert_eq!(lines(&log).len(), 1);
    // A log file that is our own stdout is refused (said on stderr), the result intact.
    let to_stdout = rig
        .call(
            "loopback",
            "ADD",
            &merged(plain, &json!({"logFile": "/dev/stdout"})),
        )
        .run();
    assert_eq!(to_stdout.stdout, want.stdout);
    assert!(to_stdout.stderr.contains("stdout"), "{}", to_stdout.stderr);
}

#[test]
fn off_unless_a_file_is_named() {
    let rig = Rig::new();
    let log = rig.dir.join("never.jsonl");
    let plain = json!({"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"});
    let before = tree(&rig.dir);
    // A level without a file, and a file with level off: nothing is written anywhere.
    rig.call(
        "loopback",
        "ADD",
        &merged(plain.clone(), &json!({"logLevel": "debug"})),
    )
    .env("CNIBOX_LOG_LEVEL", "debug")
    .run()
    .ok();
    rig.call(
        "loopback",
        "ADD",
        &merged(plain.clone(), &json!({"logFile": log, "logLevel": "off"})),
    )
    .run()
    .ok();
    rig.call(
        "loopback",
        "DEL",
        &merged(plain.clone(), &json!({"logFile": log})),
    )
    .env("CNIBOX_LOG_LEVEL", "off")
    .run()
    .ok();
    assert!(!log.exists());
    assert_eq!(tree(&rig.dir), before);

    // The environment wins over the config.
    let env_log = rig.dir.join("env.jsonl");
    rig.call(
        "loopback",
        "DEL",
        &merged(plain.clone(), &json!({"logFile": log})),
    )
    .env("CNIBOX_LOG_FILE", env_log.to_str().unwrap())
    .run()
    .ok();
    assert!(!log.exists());
    assert_eq!(lines(&env_log)[0]["command"], "DEL");

    // A bad setting is refused like any config value; DEL still succeeds.
    let bad = merged(plain, &json!({"logLevel": "loud", "logFile": log}));
    rig.call("loopback", "ADD", &bad)
        .run()
        .fails_with(7, "logLevel");
    rig.call("loopback", "DEL", &bad).run().ok();
    rig.call(
        "loopback",
        "DEL",
        &json!({"cniVersion": "1.0.0", "name": "lonet"}),
    )
    .env("CNIBOX_LOG_LEVEL", "loud")
    .run()
    .ok();
    rig.call(
        "loopback",
        "CHECK",
        &json!({"cniVersion": "1.0.0", "name": "lonet"}),
    )
    .env("CNIBOX_LOG_FILE", "relative.log")
    .run()
    .fails_with(4, "CNIBOX_LOG_FILE");
}

/// A call refused before its config is read (a bad environment) is logged too.
#[test]
fn environment_errors_are_logged() {
    let rig = Rig::new();
    let log = rig.dir.join("env-err.jsonl");
    rig.call(
        "loopback",
        "ADD",
        &json!({"cniVersion": "1.0.0", "name": "lonet"}),
    )
    .ifname("bad/name")
    .env("CNIBOX_LOG_FILE", log.to_str().unwrap())
    .run()
    .fails_with(4, "interface name");
    let l = &lines(&log)[0];
    assert_eq!(
        (l["command"].as_str(), l["code"].as_u64()),
        (Some("ADD"), Some(4))
    );
    assert_eq!(l["ifname"], "bad/name");
}
