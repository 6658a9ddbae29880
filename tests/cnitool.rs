//! cnitool against the reference cnitool (libcni v1.3.0, `target/oracle/cnitool`).
//!
//! Each side runs in its own rig: plugins act in the rig's host netns, and every call
//! gets a private `/var/lib` (a bind mount inside `ip netns exec`'s own mount
//! namespace) holding libcni's cache (`/var/lib/cni/results`) and host-local's default
//! data dir. The container netns is bind-mounted at the fixed path `/var/lib/ns`, so
//! both tools derive the same container ID, and results, cache files, firewall rules
//! (which name the container ID) compare directly.
//!
//! Recorder plugins (shell scripts, exec'd by both tools) log every call's command,
//! `CNI_*` variables and stdin, so what libcni hands each plugin is compared byte for
//! byte.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tool {
    Ours,
    Oracle,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "cnitool failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }
}

/// One side of a comparison: a rig, a private /var/lib, a NETCONFPATH.
struct World {
    rig: Rig,
    varlib: PathBuf,
    netconf: PathBuf,
    tool: Tool,
}

const CAP_ARGS: &str =
    r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#;

impl World {
    fn new(tool: Tool) -> World {
        let rig = Rig::new();
        let varlib = rig.dir.join("varlib");
        let netconf = rig.dir.join("net.d");
        std::fs::create_dir_all(&varlib).unwrap();
        std::fs::create_dir_all(&netconf).unwrap();
        // Mount points for the container netns (/var/lib/ns, /var/lib/ns2).
        std::fs::write(varlib.join("ns"), b"").unwrap();
        std::fs::write(varlib.join("ns2"), b"").unwrap();
        World {
            rig,
            varlib,
            netconf,
            tool,
        }
    }

    fn conf(&self, file: &str, body: &str) {
        std::fs::write(self.netconf.join(file), body).unwrap();
    }

    fn tool_path(&self) -> PathBuf {
        match self.tool {
            Tool::Ours => self.rig.cni_path.join("cnitool"),
            Tool::Oracle => oracle_dir().join("cnitool"),
        }
    }

    /// The plugins this side's tool runs: ours or the Go ones.
    fn plugins(&self) -> PathBuf {
        match self.tool {
            Tool::Ours => self.rig.cni_path.clone(),
            Tool::Oracle => oracle_dir(),
        }
    }

    /// Run `tool args...` in the rig's host netns with the private /var/lib.
    fn run_tool(&self, tool: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
        let script = r#"mount --bind "$1" /var/lib && mount --bind "$2" /var/lib/ns && t=$3 && shift 3 && exec "$t" "$@""#;
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.rig.host.name,
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&self.varlib)
        .arg(&self.rig.cont.path)
        .arg(tool)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("NETCONFPATH", &self.netconf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run ip netns exec");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// This side's cnitool with its plugins in CNI_PATH.
    fn cnitool(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let path = self.plugins();
        let mut e = vec![("CNI_PATH", path.to_str().unwrap())];
        e.extend_from_slice(env);
        self.run_tool(&self.tool_path(), args, &e)
    }

    fn results_dir(&self) -> PathBuf {
        self.varlib.join("cni/results")
    }

    /// The cache files, by name.
    fn cache(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = match std::fs::read_dir(self.results_dir()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => panic!("read results dir: {e}"),
            Ok(rd) => rd
                .map(|e| e.unwrap().path())
                .map(|p| {
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read_to_string(&p).unwrap(),
                    )
                })
                .collect(),
        };
        v.sort();
        v
    }

    fn reservations(&self, net: &str) -> Vec<String> {
        reservations(&self.varlib.join("cni/networks").join(net))
    }
}

/// The network the kernel-state tests use: bridge (gateway, masquerade) with
/// host-local in its default data dir, portmap taking the portMappings capability,
/// tuning.
fn bridge_list(ver: &str) -> String {
    json!({"cniVersion": ver, "name": "mynet", "plugins": [
        {"type": "bridge", "bridge": "cbr0", "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}
    ]})
    .to_string()
}

/// A cache file with what differs between two runs (MACs, veth names) replaced, key
/// order kept.
fn normalized_cache(s: &str) -> String {
    let mut v: Value = serde_json::from_str(s).unwrap();
    v["result"] = normalize_result(&v["result"]);
    v.to_string()
}

/// iptables and ip6tables nat rules, and the nftables ruleset's lines sorted (chains
/// are listed in creation order, which differs between the two portmaps) without
/// counter values.
fn fw(w: &World) -> String {
    let (v4, v6, nft) = fw_state(&w.rig);
    // Counters count whatever traffic the kernel itself sent (IPv6 ND, say).
    let mut lines: Vec<String> = nft
        .lines()
        .map(|l| match l.split_once("counter packets ") {
            Some((head, tail)) => {
                let rest = tail.splitn(4, ' ').nth(3).unwrap_or("");
                format!("{head}counter {rest}")
            }
            None => l.to_string(),
        })
        .collect();
    lines.sort();
    format!("{v4:?}\n{v6:?}\n{lines:?}")
}

fn has_dnat_8080(w: &World) -> bool {
    iptables_rules(&w.rig.host, false)
        .iter()
        .any(|r| r.contains("--dport 8080"))
}

/// Everything one side does for add, check, del: printed results, cache, kernel state.
fn lifecycle(tool: Tool, ver: &str) -> Vec<(String, String)> {
    let w = World::new(tool);
    w.conf("10-mynet.conflist", &bridge_list(ver));
    let env = [("CAP_ARGS", CAP_ARGS)];
    let mut seen = Vec::new();
    let mut note = |what: &str, v: String| seen.push((what.to_string(), v));

    let add = w.cnitool(&["add", "mynet", "/var/lib/ns"], &env);
    let result: Value = serde_json::from_str(add.ok()).unwrap();
    assert_eq!(
        result["ips"][0]["address"], "10.77.0.2/24",
        "{tool:?}: {result}"
    );
    assert!(
        !add.stdout.ends_with('\n'),
        "{tool:?}: the result ends without a newline"
    );
    note("add stdout", normalize_result(&result).to_string());
    let cache = w.cache();
    assert_eq!(cache.len(), 1, "{tool:?}: one cache entry: {cache:?}");
    assert!(cache[0].0.starts_with("mynet-cnitool-") && cache[0].0.ends_with("-eth0"));
    note("cache name", cache[0].0.clone());
    note("cache", normalized_cache(&cache[0].1));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let f = w.results_dir().join(&cache[0].0);
        note(
            "modes",
            format!("{:o} {:o}", mode(&w.results_dir()), mode(&f)),
        );
    }
    assert!(has_dnat_8080(&w), "{tool:?}: portmap got the capability");
    note("net after add", net_state(&w.rig).to_string());
    note("fw after add", fw(&w));
    note("reservations", format!("{:?}", w.reservations("mynet")));

    let check = w.cnitool(&["check", "mynet", "/var/lib/ns"], &env);
    note("check", format!("{} {}", check.code, check.stderr));
    let del = w.cnitool(&["del", "mynet", "/var/lib/ns"], &env);
    del.ok();
    assert!(
        w.cache().is_empty(),
        "{tool:?}: DEL removes the cache entry"
    );
    assert!(
        w.reservations("mynet").is_empty(),
        "{tool:?}: address released"
    );
    assert!(!has_dnat_8080(&w), "{tool:?}: port mapping removed");
    assert!(link(&w.rig.cont, "eth0").is_none(), "{tool:?}: eth0 gone");
    note("net after del", net_state(&w.rig).to_string());
    note("fw after del", fw(&w));
    seen
}

#[test]
fn add_check_del_match_the_reference_cnitool() {
    for ver in ["1.0.0", "0.4.0"] {
        let ours = lifecycle(Tool::Ours, ver);
        let oracle = lifecycle(Tool::Oracle, ver);
        assert_eq!(ours.len(), oracle.len());
        for ((what, a), (_, b)) in ours.iter().zip(&oracle) {
            assert_eq!(
                a, b,
                "{ver}: {what} differs (left: cnibox, right: reference)"
            );
        }
    }
}

/// ADD by one tool with its plugins; CHECK and DEL by the other with its plugins: the
/// cache written by one is what the other reads (CHECK fails without the cached
/// prevResult), and DEL leaves nothing.
#[test]
fn caches_are_read_both_ways() {
    for (adder, other) in [(Tool::Oracle, Tool::Ours), (Tool::Ours, Tool::Oracle)] {
        let w = World::new(adder);
        w.conf("10-mynet.conflist", &bridge_list("1.0.0"));
        let env = [("CAP_ARGS", CAP_ARGS)];
        w.cnitool(&["add", "mynet", "/var/lib/ns"], &env).ok();
        assert_eq!(w.cache().len(), 1);
        assert!(has_dnat_8080(&w));
        let w2 = World { tool: other, ..w };
        let check = w2.cnitool(&["check", "mynet", "/var/lib/ns"], &env);
        assert_eq!(
            check.code, 0,
            "{other:?} CHECK of {adder:?}'s ADD: {}",
            check.stderr
        );
        w2.cnitool(&["del", "mynet", "/var/lib/ns"], &env).ok();
        assert!(
            w2.cache().is_empty(),
            "{other:?} removed {adder:?}'s cache entry"
        );
        assert!(w2.reservations("mynet").is_empty());
        assert!(!has_dnat_8080(&w2));
        assert!(link(&w2.rig.cont, "eth0").is_none());
        // Without the cache entry, CHECK has no prevResult to give: the bridge refuses.
        w2.cnitool(&["add", "mynet", "/var/lib/ns"], &env).ok();
        std::fs::remove_dir_all(w2.results_dir()).unwrap();
        let check = w2.cnitool(&["check", "mynet", "/var/lib/ns"], &env);
        assert_eq!(check.code, 1, "CHECK without a cached result must fail");
        w2.cnitool(&["del", "mynet", "/var/lib/ns"], &env).ok();
    }
}

// ---------------------------------------------------------------------------------------
// Recorder plugins

/// A plugin script that appends one line per call to `$RECLOG` (command, name, CNI_*
/// variables, stdin) and answers ADD with `result` (or fails with `error`).
fn recorder(dir: &Path, name: &str, result: &str, error: Option<&str>) {
    use std::os::unix::fs::PermissionsExt;
    let answer = match error {
        Some(e) => format!("printf '%s' '{e}'; exit 1"),
        None => format!("printf '%s' '{result}'"),
    };
    let script = format!(
        "#!/bin/sh\nin=$(cat)\n\
         printf '%s %s cid=%s netns=%s ifname=%s args=%s path=%s stdin=%s\\n' \
         \"$CNI_COMMAND\" \"${{0##*/}}\" \"$CNI_CONTAINERID\" \"$CNI_NETNS\" \"$CNI_IFNAME\" \"$CNI_ARGS\" \"$CNI_PATH\" \"$in\" >> \"$RECLOG\"\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then {answer}; fi\nexit 0\n"
    );
    let p = dir.join(name);
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const RESULT_A: &str = r#"{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.1/24"}],"dns":{"nameservers":["10.0.0.53"]}}"#;
const RESULT_B: &str = r#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth9","mac":"02:00:00:00:00:09"}],"ips":[{"address":"10.0.0.2/24","interface":0,"gateway":"10.0.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}"#;

/// Everything a sequence of cnitool calls does with recorder plugins: each call's exit
/// status, stdout and stderr, the recorder log, and the cache files after each call.
fn recorded_session(tool: Tool) -> Vec<String> {
    let w = World::new(tool);
    let rec = w.rig.dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    recorder(&rec, "rec-a", RESULT_A, None);
    recorder(&rec, "rec-b", RESULT_B, None);
    recorder(
        &rec,
        "rec-fail",
        "",
        Some(r#"{"code":7,"msg":"boom","details":"why"}"#),
    );
    let log = w.rig.dir.join("rec.log");
    w.conf(
        "10-mynet.conflist",
        r#"{"cniVersion":"1.1.0","name":"mynet","plugins":[
            {"type":"rec-a","capabilities":{"portMappings":true,"mac":false},"runtimeConfig":{"stale":true},"z":"<&>","n":1.0},
            {"type":"rec-b","name":"own","capabilities":{"mac":true}}]}"#,
    );
    w.conf(
        "20-nocheck.conflist",
        r#"{"cniVersion":"1.0.0","cniVersions":["0.4.0","1.0.0","2.0.0"],"name":"nocheck","disableCheck":"true","disableGC":true,
            "plugins":[{"type":"rec-a"}]}"#,
    );
    // The first of two lists with one name wins (files sorted by name).
    w.conf(
        "30-dup.conflist",
        r#"{"cniVersion":"1.0.0","name":"dup","plugins":[{"type":"rec-a"}]}"#,
    );
    w.conf(
        "31-dup.conflist",
        r#"{"cniVersion":"1.0.0","name":"dup","plugins":[{"type":"rec-b"}]}"#,
    );
    // A legacy single-plugin config, wrapped in a list (and cached as that list).
    w.conf(
        "40-old.conf",
        r#"{"cniVersion":"0.3.1","name":"old","type":"rec-a","capabilities":{"portMappings":true}}"#,
    );
    w.conf(
        "50-fails.json",
        r#"{"cniVersion":"1.0.0","name":"fails","type":"rec-fail"}"#,
    );
    // A list whose plugins live in <dir>/<name>/*.conf (sorted), and one that loads
    // only its inlined plugins although such a dir exists.
    w.conf(
        "60-split.conflist",
        r#"{"cniVersion":"1.0.0","name":"split"}"#,
    );
    w.conf(
        "61-inlined.conflist",
        r#"{"cniVersion":"1.0.0","name":"inlined","loadOnlyInlinedPlugins":true,"plugins":[{"type":"rec-b"}]}"#,
    );
    for (dir, file, body) in [
        ("split", "2.conf", r#"{"type":"rec-a","name":"second"}"#),
        ("split", "1.conf", r#"{"type":"rec-b","name":"first"}"#),
        ("inlined", "1.conf", r#"{"type":"rec-a"}"#),
    ] {
        std::fs::create_dir_all(w.netconf.join(dir)).unwrap();
        std::fs::write(w.netconf.join(dir).join(file), body).unwrap();
    }
    let env = [
        ("CNI_PATH", rec.to_str().unwrap()),
        ("RECLOG", log.to_str().unwrap()),
        (
            "CAP_ARGS",
            r#"{"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}],"mac":"02:11:22:33:44:55","bandwidth":{"ingressRate":1}}"#,
        ),
        ("CNI_ARGS", "K1=v1;IgnoreUnknown=1"),
        ("CNI_IFNAME", "net1"),
    ];
    let calls: &[&[&str]] = &[
        &["add", "mynet", "/var/lib/ns"],
        &["add", "mynet", "/var/lib/ns2"],
        &["check", "mynet", "/var/lib/ns"],
        &["status", "mynet", "/var/lib/ns"],
        &["del", "mynet", "/var/lib/ns"],
        &["gc", "mynet", "/var/lib/ns"],
        &["add", "nocheck", "/var/lib/ns"],
        &["check", "nocheck", "/var/lib/ns"],
        &["status", "nocheck", "/var/lib/ns"],
        &["gc", "nocheck", "/var/lib/ns"],
        &["del", "nocheck", "/var/lib/ns"],
        &["add", "dup", "/var/lib/ns"],
        &["del", "dup", "/var/lib/ns"],
        &["add", "old", "/var/lib/ns"],
        &["check", "old", "/var/lib/ns"],
        &["del", "old", "/var/lib/ns"],
        &["add", "split", "/var/lib/ns"],
        &["del", "split", "/var/lib/ns"],
        &["add", "inlined", "/var/lib/ns"],
        &["del", "inlined", "/var/lib/ns"],
        &["add", "fails", "/var/lib/ns"],
        &["add", "nosuchnet", "/var/lib/ns"],
    ];
    let mut seen = Vec::new();
    for args in calls {
        let out = w.run_tool(&w.tool_path(), args, &env);
        // The tool's NETCONFPATH is this side's own dir: make it the same text.
        let dir = w.netconf.to_str().unwrap();
        seen.push(format!(
            "{args:?} -> {} stdout={:?} stderr={:?} cache={:?}",
            out.code,
            out.stdout,
            out.stderr.replace(dir, "<netconf>"),
            w.cache()
        ));
    }
    let log = std::fs::read_to_string(&log).unwrap();
    seen.extend(
        log.lines()
            .map(|l| l.replace(rec.to_str().unwrap(), "<rec>")),
    );
    seen
}

/// Byte for byte what libcni does: plugin stdin (name, cniVersion, prevResult,
/// runtimeConfig from declared capabilities only, Go's key order), environment, the
/// order of calls (DEL in reverse), disableCheck/disableGC, cniVersions, the CHECK,
/// GC and STATUS version rules, GC deleting cached attachments, legacy .conf/.json
/// files, results printed, errors, and the cache files after every call.
#[test]
fn plugin_calls_and_cache_match_libcni_byte_for_byte() {
    let ours = recorded_session(Tool::Ours);
    let oracle = recorded_session(Tool::Oracle);
    for (i, (a, b)) in ours.iter().zip(&oracle).enumerate() {
        assert_eq!(a, b, "line {i} differs (left: cnibox, right: reference)");
    }
    assert_eq!(ours.len(), oracle.len());

    // And what that means, asserted directly on our side.
    let log: Vec<&String> = ours.iter().filter(|l| !l.starts_with('[')).collect();
    let first = |pfx: &str| -> Value {
        let l = log
            .iter()
            .find(|l| l.starts_with(pfx))
            .unwrap_or_else(|| panic!("no {pfx} in {log:?}"));
        serde_json::from_str(l.split_once(" stdin=").unwrap().1).unwrap()
    };
    let a = first("ADD rec-a cid=cnitool-");
    assert_eq!(a["name"], "mynet");
    assert_eq!(
        a["runtimeConfig"],
        json!({"portMappings": [{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]})
    );
    let b = first("ADD rec-b");
    assert_eq!(b["runtimeConfig"], json!({"mac": "02:11:22:33:44:55"}));
    assert_eq!(b["prevResult"]["ips"][0]["address"], "10.0.0.1/24");
    let dels: Vec<&str> = log
        .iter()
        .filter(|l| l.starts_with("DEL") && l.contains("netns=/var/lib/ns "))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(
        &dels[..2],
        ["rec-b", "rec-a"],
        "DEL runs the list backwards"
    );
    let del_a = first("DEL rec-a");
    assert_eq!(
        del_a["prevResult"]["ips"][0]["address"], "10.0.0.2/24",
        "DEL gets the cached result"
    );
    assert!(
        !log.iter()
            .any(|l| l.starts_with("CHECK") && l.contains("\"name\":\"nocheck\"")),
        "disableCheck"
    );
    assert!(
        !log.iter()
            .any(|l| l.starts_with("GC") && l.contains("\"name\":\"nocheck\"")),
        "disableGC"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("DEL rec-a") && l.contains("netns=/var/lib/ns2 ")),
        "GC deleted the stale attachment"
    );
    let split: Vec<&str> = log
        .iter()
        .filter(|l| l.starts_with("ADD") && l.contains("\"name\":\"split\""))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(
        split,
        ["rec-b", "rec-a"],
        "plugins from split/*.conf, sorted"
    );
}

// ---------------------------------------------------------------------------------------
// exec

fn exec_world() -> World {
    let w = World::new(Tool::Ours);
    w.conf("10-mynet.conflist", &bridge_list("1.0.0"));
    w
}

/// Nothing of the attachment is left: no cache entry, no reservation, no veth on the
/// host, no port mapping.
fn assert_clean(w: &World) {
    assert!(w.cache().is_empty(), "cache: {:?}", w.cache());
    assert!(
        w.reservations("mynet").is_empty(),
        "{:?}",
        w.reservations("mynet")
    );
    let names: Vec<String> = links(&w.rig.host)
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("veth")), "{names:?}");
    assert!(!has_dnat_8080(w));
}

#[test]
fn exec_runs_the_command_attached_and_cleans_up() {
    let w = exec_world();
    let env = [("CAP_ARGS", CAP_ARGS)];
    let out = w.cnitool(
        &[
            "exec", "mynet", "--", "ip", "-j", "addr", "show", "dev", "eth0",
        ],
        &env,
    );
    let v: Value = serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let addrs: Vec<&Value> = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(addrs[0]["local"], "10.77.0.2", "{v}");
    assert_clean(&w);

    // While it runs, the attachment is complete: port mapping and cache entry exist.
    let probe = format!(
        "test -s /var/lib/cni/results/mynet-* && ip netns exec {} iptables-save -t nat | grep -q 'dport 8080' && echo attached",
        w.rig.host.name
    );
    let out = w.cnitool(&["exec", "mynet", "sh", "-c", &probe], &env);
    assert_eq!(out.ok().trim(), "attached");
    assert_clean(&w);

    // The command's exit status is cnitool's.
    let out = w.cnitool(&["exec", "mynet", "--", "sh", "-c", "exit 7"], &env);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_clean(&w);

    // Killed by a signal: 128+N, still cleaned up. Ctrl-C/SIGTERM sent to cnitool
    // itself do not stop it from cleaning up.
    let out = w.cnitool(
        &[
            "exec",
            "mynet",
            "--",
            "sh",
            "-c",
            "kill -INT $PPID; kill -TERM $PPID; kill -TERM $$",
        ],
        &env,
    );
    assert_eq!(out.code, 128 + 15, "{}", out.stderr);
    assert_clean(&w);

    let out = w.cnitool(&["exec", "mynet", "--", "no-such-command-xyz"], &env);
    assert_eq!(out.code, 127, "{}", out.stderr);
    assert!(out.stderr.contains("no-such-command-xyz"), "{}", out.stderr);
    assert_clean(&w);
}

#[test]
fn exec_with_a_failing_add_runs_nothing_and_leaves_nothing() {
    let w = exec_world();
    let rec = w.rig.dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    let log = w.rig.dir.join("rec.log");
    recorder(&rec, "rec-fail", "", Some(r#"{"code":7,"msg":"boom"}"#));
    let mut list: Value = serde_json::from_str(&bridge_list("1.0.0")).unwrap();
    list["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "rec-fail"}));
    w.conf("10-mynet.conflist", &list.to_string());
    let marker = w.rig.dir.join("ran");
    let path = format!("{}:{}", rec.display(), w.rig.cni_path.display());
    let out = w.run_tool(
        &w.tool_path(),
        &["exec", "mynet", "--", "touch", marker.to_str().unwrap()],
        &[
            ("CNI_PATH", &path),
            ("RECLOG", log.to_str().unwrap()),
            ("CAP_ARGS", CAP_ARGS),
        ],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(r#"plugin type="rec-fail" failed (add): boom"#),
        "{}",
        out.stderr
    );
    assert!(!marker.exists(), "the command must not run");
    assert_clean(&w);
}

/// exec with the reference's Go plugins in CNI_PATH: they are exec'd and reach the
/// namespace through the path cnitool hands them.
#[test]
fn exec_works_with_exec_d_go_plugins() {
    let w = exec_world();
    let go = oracle_dir();
    let out = w.run_tool(
        &w.tool_path(),
        &[
            "exec", "mynet", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ],
        &[("CNI_PATH", go.to_str().unwrap()), ("CAP_ARGS", CAP_ARGS)],
    );
    assert!(out.ok().contains("inet 10.77.0.2/24"), "{}", out.stdout);
    assert_clean(&w);
}
