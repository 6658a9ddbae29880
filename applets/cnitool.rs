//! cnitool: attach a network namespace to a CNI network from the command line, as the
//! reference `cnitool` (libcni v1.3.0) does, plus `exec` (the reference's
//! `priv-net-run.sh` as one command).
//!
//! ```text
//! cnitool add|check|del|gc|status <net> <netns>
//! cnitool exec <net> [--] CMD [ARG...]
//! ```
//!
//! - `<net>` is found by name in `NETCONFPATH` (default `/etc/cni/net.d`): `.conflist`
//!   files, then single-plugin `.conf`/`.json` files (see [`cnibox::libcni::load`]).
//! - Plugins are found in `CNI_PATH`; ours run in-process, others are exec'd.
//! - `CNI_ARGS` (`K=V;K2=V2`), `CAP_ARGS` (a JSON object of capability arguments, e.g.
//!   `{"portMappings":[...]}`), `CNI_IFNAME` (default `eth0`).
//! - The container ID is `cnitool-` + the first 20 hex digits of the SHA-512 of the
//!   absolute netns path, so `add` and a later `del` of the same path match up.
//! - Results are cached in libcni's layout under `/var/lib/cni/results`
//!   (`CNIBOX_CACHE_DIR` overrides `/var/lib/cni`), readable by any libcni runtime.
//! - `add` prints the result; any failure is printed on stderr with exit status 1.
//!   Like the reference, a failed `add` does not undo itself: run `del`.
//! - `exec` creates a network namespace held only by this process (so nothing outlives
//!   it, even if it is killed), ADDs it, runs CMD inside it, then DELs; the exit status
//!   is CMD's (128+N if a signal N ended it; 127/126 if it cannot be run), or 1 if the
//!   ADD or the final DEL failed. A failed ADD is undone with DEL before returning.

use anyhow::{anyhow, Context, Result};
use cnibox::cni::skel::{Applet, Kind};
use cnibox::cni::types::{shape_of, to_pretty, Shape};
use cnibox::libcni::{self, Cni, NetworkConfigList, RuntimeConf};
use serde_json::{Map, Value};
use std::path::Path;

pub const APPLET: Applet = Applet {
    name: "cnitool",
    about:
        "attach a netns to a CNI network (add/check/del/gc/status), or run a command in one (exec)",
    kind: Kind::Tool(main),
};

const DEFAULT_NET_DIR: &str = "/etc/cni/net.d";

fn usage_text() -> String {
    let exe = "cnitool";
    let mut t = format!(
        "{exe}: Add, check, remove, gc or status network interfaces from a network namespace\n"
    );
    for cmd in ["add   ", "check ", "del   ", "gc    ", "status"] {
        t += &format!("  {exe} {cmd} <net> <netns>\n");
    }
    t += &format!(
        "  {exe} exec   <net> [--] CMD [ARG...]   run CMD in a new netns attached to <net>\n"
    );
    t += "Environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH, CNI_ARGS, CAP_ARGS, \
          CNI_IFNAME (default eth0), CNIBOX_CACHE_DIR (default /var/lib/cni)\n";
    t
}

/// Usage on stderr after a wrong command line: exit 1.
fn usage() -> i32 {
    eprint!("{}", usage_text());
    1
}

/// Internal: the first process of `exec`'s command (see [`run_inside`]).
const EXEC_CHILD: &str = "--exec-child";

fn main(args: &[String]) -> i32 {
    if matches!(args, [only] if only == "--help" || only == "-h") {
        print!("{}", usage_text());
        return 0;
    }
    if let [flag, argv @ ..] = args {
        if flag == EXEC_CHILD {
            return exec_child(argv);
        }
    }
    let [cmd, net, rest @ ..] = args else {
        return usage();
    };
    if rest.is_empty() {
        return usage();
    }
    let r = match cmd.as_str() {
        "exec" => {
            let argv = match rest {
                [dash, argv @ ..] if dash == "--" => argv,
                argv => argv,
            };
            if argv.is_empty() {
                return usage();
            }
            return exec(net, argv);
        }
        "add" | "check" | "del" | "gc" | "status" => run(cmd, net, &rest[0]),
        _ => return usage(),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}

/// The environment's view of one invocation: the network, the plugin runner and the
/// runtime config without the netns yet.
struct Setup {
    list: NetworkConfigList,
    cni: Cni,
    rt: RuntimeConf,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn setup(net: &str) -> Result<Setup> {
    let dir = std::env::var("NETCONFPATH")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_NET_DIR.to_string());
    let list = libcni::load(Path::new(&dir), net)?;
    let capability_args = match env("CAP_ARGS") {
        s if s.is_empty() => Map::new(),
        s => match serde_json::from_str::<Value>(&s).context("CAP_ARGS")? {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => return Err(anyhow!("CAP_ARGS: expected a JSON object, got {other}")),
        },
    };
    let args = match env("CNI_ARGS") {
        s if s.is_empty() => Vec::new(),
        s => parse_args(&s)?,
    };
    let ifname = std::env::var("CNI_IFNAME").unwrap_or_else(|_| "eth0".to_string());
    let mut cni = Cni::new(&env("CNI_PATH"));
    if let Some(d) = std::env::var_os("CNIBOX_CACHE_DIR").filter(|d| !d.is_empty()) {
        cni = cni.with_cache_dir(d);
    }
    Ok(Setup {
        list,
        cni,
        rt: RuntimeConf {
            ifname,
            args,
            capability_args,
            ..Default::default()
        },
    })
}

/// `CNI_ARGS` as cnitool reads it: every `;`-separated pair is exactly `K=V`, both
/// non-empty.
fn parse_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .map(
            |pair| match pair.split('=').collect::<Vec<_>>().as_slice() {
                [k, v] if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(anyhow!("invalid CNI_ARGS pair {pair:?}")),
            },
        )
        .collect()
}

/// The container ID cnitool derives from a netns path.
fn container_id(netns: &str) -> String {
    use sha2::{Digest, Sha512};
    let h = Sha512::digest(netns.as_bytes());
    let hex: String = h[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("cnitool-{hex}")
}

fn run(cmd: &str, net: &str, netns: &str) -> Result<()> {
    let Setup { list, cni, mut rt } = setup(net)?;
    rt.netns = absolute(netns)?;
    rt.container_id = container_id(&rt.netns);
    match cmd {
        "add" => {
            let result = cni.add_list(&list, &rt)?;
            print_result(&result.to_own_json()?);
            Ok(())
        }
        "check" => cni.check_list(&list, &rt),
        "del" => cni.del_list(&list, &rt),
        // Like the reference: no list of valid attachments, so every cached attachment
        // of this network is deleted and plugins keep nothing.
        "gc" => cni.gc_list(&list, None),
        _ => cni.status_list(&list),
    }
}

/// Print a result as the reference's `Result.Print` does: 4-space indent, no trailing
/// newline; a 1.x result is marshalled through a map, so its keys come out sorted.
fn print_result(v: &Value) {
    use std::io::Write;
    let version = v.get("cniVersion").and_then(Value::as_str).unwrap_or("");
    let v = if shape_of(version) == Some(Shape::V1) {
        serde_json::from_slice(&libcni::go_json(v)).unwrap_or_else(|_| v.clone())
    } else {
        v.clone()
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&to_pretty(&v));
    let _ = out.flush();
}

/// `filepath.Abs`: relative to the working directory, then cleaned lexically.
fn absolute(p: &str) -> Result<String> {
    let full = if p.starts_with('/') {
        p.to_string()
    } else {
        let cwd = std::env::current_dir().context("cannot find the working directory")?;
        format!("{}/{p}", cwd.display())
    };
    Ok(clean(&full))
}

/// Go's `filepath.Clean` for an absolute path: no empty, `.` or `..` elements.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

// ---------------------------------------------------------------------------------------
// exec

/// A fresh network namespace, alive as long as this value (and whatever runs in it).
struct OwnNetns {
    ns: cnibox::netns::Netns,
}

impl OwnNetns {
    fn new() -> Result<OwnNetns> {
        use std::os::fd::AsRawFd;
        // unshare moves only the calling thread: do it on a thread of its own that
        // ends right after, keeping only the namespace file open.
        let file = std::thread::spawn(|| -> Result<std::fs::File> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .context("cannot create a network namespace")?;
            std::fs::File::open("/proc/thread-self/ns/net")
                .context("cannot open the new network namespace")
        })
        .join()
        .map_err(|_| anyhow!("the netns thread panicked"))??;
        // Plugins (in-process or exec'd) open the namespace through our descriptor.
        let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        Ok(OwnNetns {
            ns: cnibox::netns::Netns { path, file },
        })
    }
}

fn exec(net: &str, argv: &[String]) -> i32 {
    // Ctrl-C (and SIGTERM/SIGHUP/SIGQUIT) are meant for the command: cnitool keeps them
    // blocked, so it always gets to DEL. Spawned commands start with an empty mask.
    use nix::sys::signal::{SigSet, Signal};
    let mut blocked = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        blocked.add(s);
    }
    if let Err(e) = blocked.thread_block() {
        eprintln!("cnitool: cannot block signals: {e}");
        return 1;
    }
    let (Setup { list, cni, mut rt }, own) =
        match setup(net).and_then(|s| Ok((s, OwnNetns::new()?))) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{e:#}");
                return 1;
            }
        };
    rt.netns = own.ns.path.clone();
    rt.container_id = container_id(&rt.netns);
    if let Err(e) = cni.add_list(&list, &rt) {
        eprintln!("{e:#}");
        // Whatever the plugins before the failing one set up goes again.
        if let Err(d) = cni.del_list(&list, &rt) {
            eprintln!("cnitool: cleaning up after the failed ADD: {d:#}");
        }
        return 1;
    }
    let mut code = run_inside(&own, argv);
    if let Err(e) = cni.del_list(&list, &rt) {
        eprintln!("{e:#}");
        if code == 0 {
            code = 1;
        }
    }
    code
}

/// Run `argv` inside the namespace (stdio inherited) and return its exit status the
/// way a shell reports it.
///
/// A child inherits the signal mask, so the command would start with cnitool's
/// blocked signals (an uninterruptible command); it is started through a fresh copy of
/// this binary ([`exec_child`]) that unblocks them and then becomes the command.
fn run_inside(own: &OwnNetns, argv: &[String]) -> i32 {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    // A child forked from a thread inside the namespace starts inside it.
    let child = own.ns.run(|| {
        std::process::Command::new("/proc/self/exe")
            .arg0("cnitool")
            .arg(EXEC_CHILD)
            .args(argv)
            .spawn()
            .context("cannot start the command")
    });
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cnitool: {e:#}");
            return 126;
        }
    };
    match child.wait() {
        Ok(st) => st
            .code()
            .or_else(|| st.signal().map(|s| 128 + s))
            .unwrap_or(1),
        Err(e) => {
            eprintln!("cnitool: waiting for the command: {e}");
            1
        }
    }
}

/// The command's first process: default signal mask, then exec the command (127 if it
/// is not found, 126 if it cannot be run, as a shell says).
fn exec_child(argv: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = argv.split_first() else {
        return usage();
    };
    if let Err(e) = nix::sys::signal::SigSet::all().thread_unblock() {
        eprintln!("cnitool: cannot unblock signals: {e}");
        return 126;
    }
    let e = std::process::Command::new(prog).args(args).exec();
    eprintln!("cnitool: cannot run {prog}: {e}");
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_and_container_id_match_the_reference() {
        assert_eq!(clean("/run//netns/./a/../b/"), "/run/netns/b");
        assert_eq!(clean("/../x"), "/x");
        // cnitool-<first 10 bytes of sha512("/var/run/netns/a"), hex>
        let id = container_id("/var/run/netns/a");
        assert!(id.starts_with("cnitool-") && id.len() == 28, "{id}");
    }

    #[test]
    fn cni_args_pairs_are_strict() {
        assert_eq!(
            parse_args("A=1;B=2").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        for bad in ["A", "A=", "=1", "A=1=2", "A=1;"] {
            assert!(parse_args(bad).is_err(), "{bad}");
        }
    }
}
