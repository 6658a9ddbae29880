//! `make bench` helper: what a bridge + host-local ADD costs the kernel, measured without
//! any process start-up. The same applet code as the binary (bridge, with host-local
//! in-process as the binary does it) runs N ADDs, one per container netns, in a fresh thread
//! of this one long-lived process; another thread DELs each before the next ADD. Only the
//! ADDs are timed: their wall time and the ADD thread's CPU time (a thread of its own, so
//! that `perf record` can tell its user from its kernel samples).
//!
//! Wall minus user time is what no plugin can avoid: the kernel's work for the veth pair,
//! its move into the container netns, addresses, routes, the bridge port and the
//! reservation files, plus whatever the kernel makes the caller wait for. A plugin process
//! that started as fast as a trivial binary and spent no user time at all would still
//! take the spawn plus that; bench/run.sh prints the resulting best possible ratio.
//!
//! usage: inproc N NETNS_PREFIX CONFIG_JSON  (run inside the bench's host netns; the
//! container netns are NETNS_PREFIX1 .. NETNS_PREFIX<N>, made by the caller)
//! prints the mean per ADD: "<wall us> <cpu us>" (cpu: user + system of the ADD thread;
//! the sum is exact, the kernel's split of it is not, see bench/run.sh for the split)

use cnibox::cni::skel::{self, Applet, Env, Kind};

#[path = "../applets/bridge.rs"]
mod bridge;
#[path = "../applets/host-local.rs"]
mod host_local;

static APPLETS: &[Applet] = &[bridge::APPLET, host_local::APPLET];

struct CallEnv<'a> {
    command: &'a str,
    cni_path: &'a str,
    id: String,
    netns: &'a str,
}

impl Env for CallEnv<'_> {
    fn var(&self, name: &str) -> String {
        match name {
            "CNI_COMMAND" => self.command.into(),
            "CNI_CONTAINERID" => self.id.clone(),
            "CNI_NETNS" => self.netns.into(),
            "CNI_IFNAME" => "eth0".into(),
            "CNI_PATH" => self.cni_path.into(),
            _ => String::new(),
        }
    }
}

/// (user, system) CPU time of the calling thread so far, in microseconds.
#[allow(unsafe_code)]
fn thread_cpu_us() -> (i64, i64) {
    // SAFETY: getrusage only writes into the zero-initialised struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// CNI_PATH: a directory whose `host-local` is this binary, so that bridge runs its IPAM
/// in-process exactly as the cnibox binary does (it only does so for itself).
fn cni_path() -> String {
    let dir = std::env::temp_dir().join(format!("cnibox-inproc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("CNI_PATH dir");
    let link = dir.join("host-local");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(std::env::current_exe().expect("own path"), &link).expect("symlink");
    dir.to_string_lossy().into_owned()
}

fn call(command: &str, i: usize, netns: &str, conf: &str) {
    static CNI_PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let Kind::Plugin(plugin) = &bridge::APPLET.kind else {
        panic!("bridge is a plugin");
    };
    let env = CallEnv {
        command,
        cni_path: CNI_PATH.get_or_init(cni_path),
        id: format!("inproc{i}"),
        netns,
    };
    let out = skel::run("bridge", plugin, &env, &mut conf.as_bytes());
    if out.exit != 0 {
        panic!(
            "bridge {command} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Named threads, so that `perf record` samples can be told apart.
fn spawn_named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("thread")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, n, prefix, conf] = &args[..] else {
        panic!("usage: inproc N NETNS_PREFIX CONFIG_JSON");
    };
    let n: usize = n.parse().expect("N");
    skel::register(APPLETS);
    // Warm-up: the first ADD creates the bridge, which the timed ADDs reuse (as in the
    // bench loop, where the bridge stays between iterations).
    let first = format!("{prefix}1");
    call("ADD", 0, &first, conf);
    call("DEL", 0, &first, conf);
    // Each ADD is undone before the next one, as in the bench loop (so the bridge has one
    // port, not N), but by another thread, so the timed thread's CPU time is the ADDs' alone.
    let (to_del, del_queue) = std::sync::mpsc::channel::<usize>();
    let (done, deleted) = std::sync::mpsc::channel::<()>();
    let deleter = spawn_named("cnibox-del", {
        let (conf, prefix) = (conf.clone(), prefix.clone());
        move || {
            for i in del_queue {
                call("DEL", i, &format!("{prefix}{i}"), &conf);
                done.send(()).expect("timed thread waits");
            }
        }
    });
    let timed = spawn_named("cnibox-add", {
        let (conf, prefix) = (conf.clone(), prefix.clone());
        move || {
            let (u0, s0) = thread_cpu_us();
            let mut wall = 0;
            for i in 1..=n {
                let t0 = std::time::Instant::now();
                call("ADD", i, &format!("{prefix}{i}"), &conf);
                wall += t0.elapsed().as_micros() as i64;
                to_del.send(i).expect("deleter runs");
                deleted.recv().expect("deleter answers");
            }
            let (u1, s1) = thread_cpu_us();
            (wall, u1 - u0, s1 - s0)
        }
    });
    let (wall, user, sys) = timed.join().expect("timed thread");
    deleter.join().expect("deleter thread");
    let _ = std::fs::remove_dir_all(cni_path());
    let n = n as i64;
    println!("{} {}", wall / n, (user + sys) / n);
}
