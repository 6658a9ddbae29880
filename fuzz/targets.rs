//! Fuzz target bodies, shared by `cargo fuzz` (fuzz/fuzz_targets/*.rs) and by the
//! regression test `tests/fuzz_regressions.rs`, which replays every committed corpus
//! and crash file through the same functions on stable Rust in CI.
//!
//! A finding is a panic (or an abort): every input must end in a result or a CNI error
//! object. The harness target runs real applets, so it only uses commands and an
//! environment under which no applet can change anything: `CNI_NETNS` and `CNI_PATH`
//! point at paths that do not exist, and DEL/GC (which clean up by name in the current
//! namespace) are never sent. `make fuzz` also runs the fuzzer inside a fresh network
//! namespace of its own.

#![allow(dead_code)]

use cnibox::cni::args::CniArgs;
use cnibox::cni::skel::{self, Applet, Env, Kind};
use cnibox::cni::types::ALL_VERSIONS;
use cnibox::cni::CniResult;

#[path = "../applets/bridge.rs"]
mod bridge;
#[path = "../applets/loopback.rs"]
mod loopback;
#[path = "../applets/ptp.rs"]
mod ptp;
#[path = "../applets/static.rs"]
mod static_ipam;
#[path = "../applets/tuning.rs"]
mod tuning;

/// The applets whose ADD and CHECK stop at validation when the netns does not exist.
/// (host-local is left out: its ADD writes to the `dataDir` the input names.)
const APPLETS: &[Applet] = &[
    bridge::APPLET,
    loopback::APPLET,
    ptp::APPLET,
    static_ipam::APPLET,
    tuning::APPLET,
];

const COMMANDS: &[&str] = &["ADD", "CHECK", "VERSION", "STATUS"];

struct FuzzEnv {
    command: &'static str,
    args: String,
}

impl Env for FuzzEnv {
    fn var(&self, name: &str) -> String {
        match name {
            "CNI_COMMAND" => self.command.into(),
            "CNI_CONTAINERID" => "fuzz".into(),
            "CNI_NETNS" => "/nonexistent/cnibox-fuzz/netns".into(),
            "CNI_IFNAME" => "eth0".into(),
            "CNI_PATH" => "/nonexistent/cnibox-fuzz/bin".into(),
            "CNI_ARGS" => self.args.clone(),
            _ => String::new(),
        }
    }
}

/// byte 0: applet, byte 1: command, then `CNI_ARGS` up to the first newline, then stdin.
pub fn harness(data: &[u8]) {
    let (Some(&a), Some(&c)) = (data.first(), data.get(1)) else {
        return;
    };
    let applet = &APPLETS[a as usize % APPLETS.len()];
    let command = COMMANDS[c as usize % COMMANDS.len()];
    let rest = &data[2..];
    let (args, stdin) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let Kind::Plugin(plugin) = &applet.kind else {
        return;
    };
    let env = FuzzEnv {
        command,
        args: String::from_utf8_lossy(args).into_owned(),
    };
    let out = skel::run(applet.name, plugin, &env, &mut &stdin[..]);
    // Whatever happened, stdout is a JSON object (result, error or VERSION) or empty.
    if !out.stdout.is_empty() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        assert!(v.is_object(), "stdout is not an object: {v}");
        if out.exit != 0 {
            assert!(v["code"].is_u64(), "an error without a code: {v}");
        }
    }
}

/// `CNI_ARGS` parsing: any string, a few key sets.
pub fn cni_args(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    for keys in [&[][..], &["IP"][..], &["IP", "MAC", "GATEWAY"][..]] {
        if let Ok(a) = CniArgs::parse(&s, keys) {
            for k in keys {
                let _ = a.get(k);
            }
        }
    }
    let _ = cnibox::cni::args::parse_lenient(&s);
}

/// Result / prevResult conversion: a result in any version's shape is read as any
/// version and printed in every version; what prints must read back.
pub fn results(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for from in ALL_VERSIONS {
        if let Ok(r) = CniResult::parse_any(&v, from) {
            for to in ALL_VERSIONS {
                if let Ok(out) = r.to_json(to) {
                    CniResult::parse_any(&out, to).expect("a printed result reads back");
                }
            }
        }
        let _ = CniResult::parse_prev(&v, from);
    }
}

/// Kernel replies: the netlink transport's reply rules and every payload reader.
pub fn netlink(data: &[u8]) {
    cnibox::netlink::fuzz_reply(data);
}

/// host-local's store reader: reservation files (`name\tcontent` lines of the first
/// part; a name `b:<file>` is a boot record `.cnibox-boot/<file>` instead), a scan that builds the index and its stamp, then every index entry rewritten
/// in place with the second part (in place: the network directory's mtime is untouched,
/// so the stamp still matches and the fuzzed entries are trusted), then the operations
/// an ADD, CHECK, DEL, GC and a stale-reservation reclaim make. Runs in a fresh directory under /dev/shm.
pub fn store(data: &[u8]) {
    use cnibox::ipam::store::{Store, BOOT_DIR, INDEX_DIR};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut parts = data.splitn(2, |&b| b == 0xff);
    let files = parts.next().unwrap_or(&[]);
    let entries = parts.next();
    let root = std::path::PathBuf::from(format!(
        "/dev/shm/cnibox-fuzz-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let net = root.join("net");
    std::fs::create_dir_all(&net).expect("temp dir");
    for line in files.split(|&b| b == b'\n') {
        let mut kv = line.splitn(2, |&b| b == b'\t');
        let (Some(name), Some(content)) = (kv.next(), kv.next()) else {
            continue;
        };
        let name = String::from_utf8_lossy(name);
        let (dir, name) = match name.strip_prefix("b:") {
            Some(rest) => (net.join(BOOT_DIR), rest.to_string()),
            None => (net.clone(), name.to_string()),
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') || name == "lock" {
            continue;
        }
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(name), content);
    }
    let ops = |first: bool| {
        let Ok(store) = Store::open(&root, "net") else {
            return;
        };
        let Ok(mut l) = store.lock() else {
            return;
        };
        let _ = l.ips_of("ctr", "eth0");
        let _ = l.holds("ctr", "eth0");
        let _ = l.last_reserved(0);
        if !first {
            let _ = l.reserve("ctr2", "eth0", "10.0.0.9".parse().expect("ip"), 0);
            let _ = l.release("ctr", "eth0");
            let _ = l.reclaim_stale();
            let _ = l.gc(&[("ctr2".to_string(), "eth0".to_string())]);
        }
    };
    ops(true);
    if let (Some(content), Ok(rd)) = (entries, std::fs::read_dir(net.join(INDEX_DIR))) {
        for e in rd.flatten() {
            if e.file_name() != "stamp" {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(e.path())
                {
                    let _ = f.write_all(content);
                }
            }
        }
    }
    ops(false);
    let _ = std::fs::remove_dir_all(&root);
}

/// The dhcp daemon's gob decoder (Go net/rpc over the unix socket, from any local
/// process): arbitrary bytes read as a stream of values, each read as the reference's
/// `CmdArgs` and `current.Result`; a `CmdArgs` that reads must survive our encoder and
/// read back equal.
pub fn gob(data: &[u8]) {
    use cnibox::dhcp::gob::{Decoder, Encoder};
    use cnibox::dhcp::rpc::{self, CmdArgs};
    let mut d = Decoder::new(data);
    for _ in 0..8 {
        let Ok(v) = d.read() else { return };
        let _ = rpc::result_from_value(&v);
        if let Ok(a) = CmdArgs::from_value(&v) {
            let mut out = Vec::new();
            let mut e = Encoder::new(&mut out);
            e.send(&[(&rpc::CMD_ARGS, &a.to_value())])
                .expect("a decoded CmdArgs encodes");
            let back = Decoder::new(&out[..]).read().expect("our encoding decodes");
            let b = CmdArgs::from_value(&back).expect("our encoding reads as CmdArgs");
            assert_eq!(
                (
                    &a.container_id,
                    &a.netns,
                    &a.ifname,
                    &a.args,
                    &a.path,
                    &a.stdin
                ),
                (
                    &b.container_id,
                    &b.netns,
                    &b.ifname,
                    &b.args,
                    &b.path,
                    &b.stdin
                )
            );
        }
    }
}
