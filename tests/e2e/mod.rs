//! Shared machinery of the end-to-end tests with real container runtimes (containerd,
//! podman): a sandbox in which a runtime sees the test's temp dirs at the paths it
//! hard-codes, a local OCI image made from busybox-static, and strict command helpers.
//!
//! The sandbox is one process tree: `nsenter --net=<rig host netns> unshare --mount
//! --pid --fork --kill-child --mount-proc -- tests/e2e/sandbox.sh DIR CMD...`. Every
//! runtime command is run inside it with `nsenter -t <its init> -m -n -p`, so plugins,
//! shims, conmon and the containers all live in the test's namespaces. Dropping the
//! sandbox kills its init, which makes the kernel kill everything else in that PID
//! namespace and drop the private mounts; the cgroups runc made (the one thing outside
//! the namespaces) are removed by name, then the temp dir.

#![allow(dead_code)]

use crate::common::Netns;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one runtime command may take before the test fails (a hung runtime must
/// not hang CI): a bound on a wait, not a timing assertion.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);

/// A name unique to this test process and `tag` (temp dirs, runtime namespaces,
/// cgroup parents).
pub fn unique(tag: &str) -> String {
    format!("cbx{}e2e{tag}", std::process::id())
}

/// The test's temp dir, removed on drop (the sandbox removes it too, once its mounts
/// are gone).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new temp dir with `net.d`, `bin` (cnibox links) and `cni` (the runtime's
/// /var/lib/cni), all empty but `bin`.
pub fn temp_dir(tag: &str) -> TempDir {
    let dir = TempDir(std::env::temp_dir().join(unique(tag)));
    if dir.exists() {
        std::fs::remove_dir_all(&*dir).unwrap();
    }
    for sub in ["net.d", "bin", "cni"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    match std::env::var(PLUGINS_FROM) {
        Ok(from) if !from.is_empty() => link_installed(&dir.join("bin"), Path::new(&from)),
        _ => link_applets(&dir.join("bin"), Path::new(env!("CARGO_BIN_EXE_cnibox"))),
    }
    dir
}

/// `CNIBOX_E2E_PLUGINS_FROM=DIR`: run the runtimes against the plugins installed in DIR
/// (the .deb's `/usr/lib/cni`, from `make deb-check`) instead of this build's binary.
pub const PLUGINS_FROM: &str = "CNIBOX_E2E_PLUGINS_FROM";

/// Links in `bin` to what each plugin of `from` resolves to (the sandbox hides `from`
/// itself, as it hides every machine plugin dir).
fn link_installed(bin: &Path, from: &Path) {
    let mut n = 0;
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.unwrap();
        let target = std::fs::canonicalize(e.path())
            .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
        std::os::unix::fs::symlink(&target, bin.join(e.file_name())).unwrap();
        n += 1;
    }
    assert!(n >= 10, "only {n} plugins in {}", from.display());
    eprintln!("e2e: plugins from {} ({n})", from.display());
}

/// A plugin directory of links to `exe` (cnibox), one per applet it lists.
pub fn link_applets(bin: &Path, exe: &Path) {
    let list = must(
        Command::new(exe).arg("--list").output().unwrap(),
        "cnibox --list",
    );
    for name in String::from_utf8_lossy(&list.stdout).lines() {
        std::os::unix::fs::symlink(exe, bin.join(name)).unwrap();
    }
}

/// Fail the test with the tool's output unless it succeeded.
pub fn must(out: Output, what: &str) -> Output {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Fail with a clear reason if a tool the test needs is not installed.
pub fn require_tools(tools: &[&str]) {
    for t in tools {
        let found = std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .any(|d| Path::new(d).join(t).is_file());
        assert!(
            found,
            "{t} is not installed: the end-to-end tests need it (make deps installs it)"
        );
    }
}

/// Build the busybox-static OCI archive `dir/image.tar` named `name`.
pub fn build_image(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join("image.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/mkimage.sh");
    must(
        Command::new("sh")
            .arg(&script)
            .arg(&out)
            .arg(name)
            .output()
            .unwrap(),
        "tests/e2e/mkimage.sh",
    );
    out
}

/// Everything under /sys/fs/cgroup/<controller>/<name>, deepest first.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(d.to_path_buf());
    }
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in rd.flatten() {
            let d = c.path().join(name);
            if d.is_dir() {
                walk(&d, &mut out);
            }
        }
    }
    let root = Path::new("/sys/fs/cgroup").join(name);
    if root.is_dir() {
        // cgroup v2 only: the hierarchy is /sys/fs/cgroup itself.
        walk(&root, &mut out);
    }
    out
}

/// A runtime's world; see the module docs.
pub struct Sandbox {
    pub dir: PathBuf,
    /// The `nsenter` process (which became `unshare`): killing it kills the init too.
    outer: Child,
    /// The sandbox's init (PID 1 of its PID namespace) as seen from the test.
    pub init: u32,
    /// The sandbox's stdout+stderr (the daemon's log).
    pub log: PathBuf,
    /// cgroup names (below each hierarchy's root) the runtime creates, removed on drop.
    cgroups: Vec<String>,
}

impl Sandbox {
    /// Start `argv` as the init of a new sandbox in `host`'s network namespace; wait
    /// until its mounts are in place.
    pub fn start(host: &Netns, dir: &Path, argv: &[&str]) -> Sandbox {
        require_tools(&["nsenter", "unshare", "mount"]);
        let log = dir.join("sandbox.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/sandbox.sh");
        let outer = Command::new("nsenter")
            .arg(format!("--net={}", host.path.display()))
            .args([
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
                "sh",
            ])
            .arg(&script)
            .arg(dir)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run nsenter");
        let mut sb = Sandbox {
            dir: dir.to_path_buf(),
            init: 0,
            outer,
            log,
            cgroups: Vec::new(),
        };
        let ready = dir.join("sandbox.ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(st) = sb.outer.try_wait().unwrap() {
                panic!(
                    "the sandbox exited ({st}) before it was ready:\n{}",
                    sb.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the sandbox did not get ready in 30 s:\n{}",
                sb.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = sb.outer.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_else(|e| panic!("read the children of the sandbox's unshare: {e}"));
        sb.init = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unshare has no child: {children:?}"));
        sb
    }

    /// Check that the machine's plugin dirs show nothing inside the sandbox (so the
    /// runtime can only have run the plugins the test gave it).
    pub fn assert_machine_plugins_hidden(&self) {
        for d in ["/usr/lib/cni", "/usr/libexec/cni", "/usr/local/lib/cni"] {
            if Path::new(d).is_dir() {
                let inside = self.run(&["find", d, "-mindepth", "1"]);
                assert_eq!(inside, "", "{d} is not hidden in the sandbox");
            }
        }
    }

    /// Remove /sys/fs/cgroup/*/`name` (and below) when the sandbox is dropped.
    pub fn owns_cgroup(&mut self, name: &str) {
        self.cgroups.push(name.to_string());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `argv` inside the sandbox (its mounts, network and PID namespaces).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args([
            "--kill-after=5",
            &CMD_TIMEOUT.as_secs().to_string(),
            "nsenter",
        ])
        .args(["-t", &self.init.to_string(), "-m", "-n", "-p", "--"])
        .args(argv);
        c
    }

    /// Run `argv` in the sandbox; its stdout. Any failure fails the test (with the
    /// daemon's log).
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self.command(argv).output().expect("run nsenter");
        if !out.status.success() {
            panic!(
                "{argv:?} in the sandbox failed ({}):\nstdout: {}\nstderr: {}\nsandbox log (tail):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log_text(), 40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start `argv` in the sandbox with stdin and stdout piped (a container kept running
    /// while the test looks at it).
    pub fn spawn(&self, argv: &[&str]) -> Running {
        let mut child = self
            .command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsenter");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            what: format!("{argv:?}"),
            child,
            stdin,
            lines: rx,
        }
    }

    /// Poll `argv` until it succeeds, at most `limit` (a bounded wait for a server to
    /// start listening; not a timing assertion): its stdout. Fails the test with the
    /// last failure when the limit runs out.
    pub fn run_until_ok(&self, argv: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.command(argv).output().expect("run nsenter");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{argv:?} in the sandbox still fails after {limit:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // SIGKILL the init: the kernel then kills every process of its PID namespace
        // (daemons, shims, containers) before unshare's wait returns; the private mounts
        // go with the last of them. unshare reaps the init and exits; it is killed below
        // only if it does not (killing it first would leave the init a zombie). init is
        // 0 only if start failed before finding it (`kill 0` would hit our own process
        // group): then killing unshare takes its child along (--kill-child).
        if self.init != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &self.init.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.outer.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.outer.kill();
        let _ = self.outer.wait();
        for name in &self.cgroups {
            for d in cgroup_dirs(name) {
                // A cgroup whose last task just died may still be busy for a moment.
                for _ in 0..50 {
                    if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command started with [`Sandbox::spawn`].
pub struct Running {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// The next line it prints (fails the test if it exits first or prints nothing for
    /// [`CMD_TIMEOUT`]).
    pub fn line(&mut self) -> String {
        match self.lines.recv_timeout(CMD_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = self.child.kill();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{} printed no line (exited or hung): {err}", self.what)
            }
        }
    }

    /// Write `s` to its stdin.
    pub fn send(&mut self, s: &str) {
        self.stdin
            .as_mut()
            .expect("stdin still open")
            .write_all(s.as_bytes())
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.what));
    }

    /// Close its stdin and wait for it; it must exit 0.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{} failed ({status}): {err}", self.what);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only the outer nsenter/timeout process is ours to kill here; what it started
        // inside the sandbox dies with the sandbox.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The IPv4 address in a line of `ip -4 -o addr show dev eth0`
/// ("2: eth0    inet 10.99.0.2/24 brd ...").
pub fn inet_of(line: &str) -> String {
    let mut w = line.split_whitespace();
    while let Some(t) = w.next() {
        if t == "inet" {
            if let Some(cidr) = w.next() {
                return cidr.split('/').next().unwrap().to_string();
            }
        }
    }
    panic!("no inet address in {line:?}");
}

/// The IPv6 address in a line of `ip -6 -o addr show` ("2: eth0    inet6 fd99::2/64 ...").
pub fn inet6_of(line: &str) -> String {
    let mut w = line.split_whitespace();
    while let Some(t) = w.next() {
        if t == "inet6" {
            if let Some(cidr) = w.next() {
                return cidr.split('/').next().unwrap().to_string();
            }
        }
    }
    panic!("no inet6 address in {line:?}");
}

/// The pids (as the test sees them) of every process in the PID namespace `ns`
/// (a `/proc/<pid>/ns/pid` link target such as "pid:[4026532301]").
pub fn pids_in_pidns(ns: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process that exits during the scan is simply not there any more.
        if let Ok(l) = std::fs::read_link(e.path().join("ns/pid")) {
            if l.to_string_lossy() == ns {
                v.push(pid);
            }
        }
    }
    v
}

/// The pids of processes whose command line is exactly `argv`.
pub fn pids_with_cmdline(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process that exits during the scan is simply not there any more.
        if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want) {
            v.push(pid);
        }
    }
    v
}

/// The host's whole firewall state: iptables and ip6tables (every table) and the
/// nftables ruleset.
pub fn firewall(host: &Netns) -> String {
    format!(
        "{}\n{}\n{}",
        host.run(&["iptables-save"]),
        host.run(&["ip6tables-save"]),
        host.run(&["nft", "list", "ruleset"])
    )
}

/// Host links enslaved to `bridge` (the containers' veths).
pub fn bridge_ports(host: &Netns, bridge: &str) -> Vec<String> {
    crate::common::links(host)
        .iter()
        .filter(|l| l["master"] == bridge)
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}
