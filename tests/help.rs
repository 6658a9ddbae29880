//! Help from the one table in src/help.rs: every applet has `--help` (by argument and by
//! link name) with its keys and an example config that the applet itself accepts; the
//! man page covers every applet; a plugin run with anything but a sole `--help` stays a
//! CNI plugin.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cnibox"))
}

fn run(cmd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Applets that are command-line tools, not CNI plugins: their help is their usage.
const TOOLS: &[&str] = &["cnitool"];

fn all_applets() -> Vec<String> {
    let (code, out) = run(&exe(), &["--list"], &[]);
    assert_eq!(code, 0);
    out.lines().map(str::to_string).collect()
}

/// The CNI plugins among the applets.
fn applets() -> Vec<String> {
    let mut v = all_applets();
    v.retain(|n| !TOOLS.contains(&n.as_str()));
    v
}

#[test]
fn tools_answer_help_with_their_usage() {
    for tool in TOOLS {
        assert!(all_applets().iter().any(|n| n == tool), "{tool} not listed");
        let (code, text) = run(&exe(), &[tool, "--help"], &[]);
        assert_eq!(code, 0, "{tool} --help");
        for want in ["add", "check", "del", "gc", "status", "exec", "NETCONFPATH"] {
            assert!(text.contains(want), "{tool} --help lacks {want}: {text}");
        }
    }
}

/// The parts of `APPLET --help`: kind line, key names, example config.
struct Help {
    text: String,
    keys: Vec<String>,
    example: Value,
}

fn help_of(name: &str) -> Help {
    let (code, text) = run(&exe(), &[name, "--help"], &[]);
    assert_eq!(code, 0, "{name} --help");
    let keys = text
        .split("Config keys")
        .nth(1)
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let ex = text
        .split("\nExample:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{name}: no example:\n{text}"));
    let ex = ex.split("\n\n").next().unwrap();
    let example = serde_json::from_str(ex).unwrap_or_else(|e| panic!("{name}: example {e}:\n{ex}"));
    Help {
        text,
        keys,
        example,
    }
}

const COMMON: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "ipam",
    "dns",
    "args",
    "runtimeConfig",
    "prevResult",
    "capabilities",
    "logFile",
    "logLevel",
];

#[test]
fn every_applet_has_help_with_keys_and_an_example_using_only_documented_keys() {
    let names = applets();
    assert!(names.len() >= 17, "{names:?}");
    let d = std::env::temp_dir().join(format!("cbx-help-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let mut keyless = Vec::new();
    for name in &names {
        let h = help_of(name);
        assert!(h.text.starts_with(&format!("{name} - ")), "{}", h.text);
        if h.keys.is_empty() {
            assert!(h.text.contains("No config keys of its own."), "{name}");
            keyless.push(name.clone());
        }
        // Every key the example uses is one the table documents.
        let ex = h.example.as_object().unwrap();
        for k in ex.keys().filter(|k| !COMMON.contains(&k.as_str())) {
            assert!(
                h.keys.iter().any(|d| d == k),
                "{name}: example key {k} is not documented in {:?}",
                h.keys
            );
        }
        if h.text.contains("IPAM plugin") {
            assert_eq!(ex["ipam"]["type"], name.as_str());
            for k in ex["ipam"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "type")
            {
                let path = format!("ipam.{k}");
                assert!(h.keys.contains(&path), "{name}: {path} undocumented");
            }
        } else {
            assert_eq!(ex["type"], name.as_str());
        }
        // The same help by link name, with `--help` as the sole argument.
        let link = d.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe(), &link).unwrap();
        assert_eq!(run(&link, &["--help"], &[]), (0, h.text.clone()), "{name}");
    }
    assert_eq!(
        keyless,
        ["loopback"],
        "only loopback has no keys of its own"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn only_a_sole_help_argument_is_help() {
    let d = std::env::temp_dir().join(format!("cbx-help1-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let link = d.join("loopback");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(exe(), &link).unwrap();
    let env = [("CNI_COMMAND", "VERSION")];
    for args in [&["--help", "x"][..], &["-h"], &["help"], &["--HELP"]] {
        let (code, out) = run(&link, args, &env);
        assert_eq!(code, 0, "{args:?}");
        assert!(
            out.starts_with("{\"cniVersion\""),
            "{args:?} must run the plugin: {out}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Each example config, run as ADD by its applet, gets past config validation: a
/// missing netns or a missing link may stop it (code 3, 999, ...), a config it refuses
/// (1, 6, 7) may not. IPAM applets need no netns and really allocate (then release).
#[test]
fn every_example_config_passes_its_applets_validation() {
    let rig = Rig::new();
    // The links the examples name, inside the rig's own host netns (a veth pair: this
    // kernel may lack the dummy driver).
    rig.host.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    let missing = rig.dir.join("no-such-netns");
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "veth0"}, {"name": "eth0", "sandbox": missing}],
        "ips": [{"address": "10.1.9.2/24", "gateway": "10.1.9.1", "interface": 1}]});
    for name in applets() {
        let h = help_of(&name);
        let mut conf = h.example.clone();
        if conf["ipam"]["type"] == "host-local" {
            conf["ipam"]["dataDir"] = json!(rig.data_dir());
        }
        if h.text.contains("meta plugin") {
            conf["prevResult"] = prev.clone();
        }
        let out = rig
            .call(&name, "ADD", &conf)
            .netns(missing.to_str().unwrap())
            .run();
        eprintln!(
            "{name}: exit {} {}",
            out.code,
            out.stdout.replace('\n', " ")
        );
        if out.code == 0 {
            out.ok();
            rig.call(&name, "DEL", &conf)
                .netns(missing.to_str().unwrap())
                .run()
                .ok();
            continue;
        }
        let code = out.err_code();
        assert!(
            ![1, 6, 7].contains(&code),
            "{name}: the example config is refused: {}",
            out.stdout
        );
    }
}

#[test]
fn list_long_and_the_man_page_cover_every_applet() {
    let names = all_applets();
    let (code, long) = run(&exe(), &["--list", "--long"], &[]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = long.lines().collect();
    assert_eq!(rows.len(), names.len());
    for (row, name) in rows.iter().zip(&names) {
        let (n, about) = row.split_once(' ').unwrap();
        assert_eq!(n, name);
        assert!(about.trim().len() > 10, "{row}");
    }
    let (code, man) = run(&exe(), &["--man"], &[]);
    assert_eq!(code, 0);
    assert!(man.starts_with(".TH CNIBOX 1 "), "{}", &man[..40]);
    for sec in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "APPLETS",
        "LOGGING",
        "EXIT STATUS",
    ] {
        assert!(man.contains(&format!("\n.SH {sec}\n")), "{sec}");
    }
    for name in &names {
        let sec = format!("\n.SS {}\n", name.replace('-', "\\-"));
        assert!(man.contains(&sec), "{name} in the man page");
    }
    // Escaping: a line starting with '.' is always one of the requests we emit, never
    // text that roff would take for one.
    let known = [
        "TH", "SH", "SS", "TP", "B", "BI", "PP", "nf", "fi", "RS", "RE", "br",
    ];
    for line in man.lines().filter(|l| l.starts_with('.')) {
        let req = line[1..].split_whitespace().next().unwrap_or("");
        assert!(known.contains(&req), "stray request: {line:?}");
    }
}
