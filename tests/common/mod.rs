//! Hermetic test rig: every test gets its own "host" network namespace (plugins run
//! inside it), its own container namespace(s) and its own temp dir; all are removed on
//! drop, even when the test panics. Nothing touches the machine's interfaces, firewall
//! or /var/lib/cni, so tests run in parallel.
//!
//! Differential helpers run the same call through the Go reference plugins: upstream
//! v1.9.1 (`../shared/oracle`, unpacked into target/oracle) or Debian's installed base
//! (`/usr/lib/cni`). A missing oracle fails the test with a clear message.

#![allow(dead_code)]
// The one unsafe call: entering the rig's host netns in the child before exec.
#![allow(unsafe_code)]

use serde_json::Value;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!(
        "cbx{}x{}{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        tag
    )
}

fn must(out: Output, what: &str) -> Output {
    if !out.status.success() {
        panic!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
    gone: AtomicBool,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        must(
            Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .expect("run ip"),
            "ip netns add",
        );
        let ns = Netns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
            gone: AtomicBool::new(false),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace; the caller judges the outcome.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Run a command inside the namespace, panicking with its stderr if it fails; its
    /// stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = must(self.exec(args), &format!("{args:?} in netns {}", self.name));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n <ns> args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = must(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args)
                .output()
                .expect("run ip"),
            &format!("ip {args:?}"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n <ns> -j args...` parsed. Any failure panics with the command and its
    /// stderr: a broken `ip` must never read as "nothing there".
    pub fn ip_json(&self, args: &[&str]) -> Value {
        self.ip_json_dev(args)
            .unwrap_or_else(|| panic!("ip -n {} -j {args:?}: the device does not exist", self.name))
    }

    /// Like [`Netns::ip_json`] for a command naming a device (`... dev X`): `None` only
    /// when `ip` says that device does not exist; every other failure panics.
    pub fn ip_json_dev(&self, args: &[&str]) -> Option<Value> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j"])
            .args(args)
            .output()
            .expect("run ip");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let e = stderr.trim();
            if e.starts_with("Device \"") && e.ends_with("\" does not exist.") {
                return None;
            }
            panic!(
                "ip -n {} -j {args:?} failed ({}): {e}",
                self.name, out.status
            );
        }
        match serde_json::from_slice(&out.stdout) {
            Ok(v) => Some(v),
            Err(e) => panic!(
                "ip -n {} -j {args:?}: unparseable output ({e}): {}{stderr}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            ),
        }
    }

    pub fn delete(&self) {
        if !self.gone.swap(true, Ordering::SeqCst) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// One test's world: host netns, container netns, temp dir, CNI_PATH with cnibox links.
pub struct Rig {
    pub host: Netns,
    pub cont: Netns,
    pub dir: PathBuf,
    pub cni_path: PathBuf,
}

impl Rig {
    pub fn new() -> Rig {
        let dir = std::env::temp_dir().join(unique("rig"));
        std::fs::create_dir_all(&dir).unwrap();
        let cni_path = dir.join("bin");
        std::fs::create_dir_all(&cni_path).unwrap();
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_cnibox"));
        let list = must(
            Command::new(&exe).arg("--list").output().unwrap(),
            "cnibox --list",
        );
        for name in String::from_utf8_lossy(&list.stdout).lines() {
            std::os::unix::fs::symlink(&exe, cni_path.join(name)).unwrap();
        }
        Rig {
            host: Netns::new("h"),
            cont: Netns::new("c"),
            dir,
            cni_path,
        }
    }

    /// Another container namespace (dropped by the caller).
    pub fn add_cont(&self) -> Netns {
        Netns::new("c")
    }

    pub fn new_netns(&self) -> Netns {
        Netns::new("c")
    }

    /// Delete the container netns (its path stays known for DEL tests).
    pub fn drop_cont(&mut self) {
        self.cont.delete();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// The default container id of calls.
    pub fn id(&self) -> String {
        "ctr1".to_string()
    }

    /// ADD `conf` for containers `<prefix>0..<prefix>n`, each in a new netns (returned,
    /// so they live as long as the caller needs them).
    pub fn add_containers(&self, plugin: &str, conf: &Value, prefix: &str, n: usize) -> Vec<Netns> {
        (0..n)
            .map(|i| {
                let ns = self.new_netns();
                self.call(plugin, "ADD", conf)
                    .id(&format!("{prefix}{i}"))
                    .netns(ns.path.to_str().unwrap())
                    .run()
                    .ok();
                ns
            })
            .collect()
    }

    /// A plugin call, to be adjusted and run.
    pub fn call(&self, plugin: &str, command: &str, conf: &Value) -> Call<'_> {
        Call {
            rig: self,
            plugin: plugin.to_string(),
            command: command.to_string(),
            container_id: self.id(),
            netns: self.cont.path.to_string_lossy().into_owned(),
            ifname: "eth0".to_string(),
            args: None,
            env: Vec::new(),
            stdin: serde_json::to_vec(conf).unwrap(),
            dir: None,
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Call<'a> {
    rig: &'a Rig,
    plugin: String,
    command: String,
    container_id: String,
    netns: String,
    ifname: String,
    args: Option<String>,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
    /// Plugin directory (CNI_PATH): None = cnibox.
    dir: Option<PathBuf>,
}

pub struct CniOut {
    /// The `CNI_COMMAND` of the call ("" for the about text).
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
}

static NULL: Value = Value::Null;

impl CniOut {
    /// Success, with the output the spec requires of the command: ADD and VERSION
    /// print one JSON object (returned), DEL, CHECK, GC and STATUS print nothing
    /// (`Value::Null` is returned). Anything else panics with everything printed.
    pub fn ok(&self) -> &Value {
        if self.code != 0 {
            panic!(
                "{} failed (exit {}):\nstdout: {}\nstderr: {}",
                self.command, self.code, self.stdout, self.stderr
            );
        }
        match self.command.as_str() {
            "ADD" | "VERSION" => match &self.json {
                Some(v @ Value::Object(_)) => v,
                _ => panic!(
                    "{} exited 0 but did not print a JSON object:\nstdout: {:?}\nstderr: {}",
                    self.command, self.stdout, self.stderr
                ),
            },
            "DEL" | "CHECK" | "GC" | "STATUS" => {
                assert!(
                    self.stdout.is_empty(),
                    "{} exited 0 but printed something (it must print nothing):\nstdout: {:?}",
                    self.command,
                    self.stdout
                );
                &NULL
            }
            other => panic!("ok() does not know what {other:?} must print"),
        }
    }

    /// The error object printed by a failed call: exit status 1, one JSON object with a
    /// numeric `code` and a string `msg` (panics otherwise, e.g. if the call succeeded).
    pub fn err(&self) -> &Value {
        assert_eq!(
            self.code, 1,
            "{}: expected a reported failure (exit 1), got exit {}:\nstdout: {}\nstderr: {}",
            self.command, self.code, self.stdout, self.stderr
        );
        let v = match &self.json {
            Some(v @ Value::Object(_)) => v,
            _ => panic!(
                "{}: no error object on stdout: {:?}",
                self.command, self.stdout
            ),
        };
        assert!(v["code"].is_u64(), "error object without a code: {v}");
        assert!(v["msg"].is_string(), "error object without a msg: {v}");
        v
    }

    /// The error object's code.
    pub fn err_code(&self) -> i64 {
        self.err()["code"].as_i64().unwrap()
    }

    /// `msg` and `details` of the error object, joined.
    pub fn err_text(&self) -> String {
        let e = self.err();
        format!(
            "{} {}",
            e["msg"].as_str().unwrap_or(""),
            e["details"].as_str().unwrap_or("")
        )
    }

    /// Assert a failure with `code` whose message (or details) contains `reason`.
    pub fn fails_with(&self, code: i64, reason: &str) {
        assert_eq!(self.err_code(), code, "{}", self.stdout);
        let text = self.err_text();
        assert!(
            text.contains(reason),
            "{}: want {reason:?} in the error, got: {}",
            self.command,
            self.stdout
        );
    }
}

impl<'a> Call<'a> {
    pub fn id(mut self, id: &str) -> Self {
        self.container_id = id.to_string();
        self
    }
    pub fn ifname(mut self, n: &str) -> Self {
        self.ifname = n.to_string();
        self
    }
    pub fn args(mut self, a: &str) -> Self {
        self.args = Some(a.to_string());
        self
    }
    pub fn netns(mut self, p: &str) -> Self {
        self.netns = p.to_string();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    pub fn stdin(mut self, b: Vec<u8>) -> Self {
        self.stdin = b;
        self
    }
    /// Run the upstream Go plugin v1.9.1 instead.
    pub fn go(mut self) -> Self {
        self.dir = Some(oracle_dir());
        self
    }
    /// Run `dir/<plugin>` with `CNI_PATH=dir` (a hand-made plugin directory).
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }
    /// Run Debian's installed Go plugin (1.1.1) instead.
    pub fn debian(mut self) -> Self {
        self.dir = Some(debian_dir());
        self
    }

    fn command(&self) -> Command {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| self.rig.cni_path.clone());
        let mut cmd = Command::new(dir.join(&self.plugin));
        cmd.env_clear();
        cmd.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
        if !self.command.is_empty() {
            cmd.env("CNI_COMMAND", &self.command);
        }
        cmd.env("CNI_CONTAINERID", &self.container_id);
        cmd.env("CNI_NETNS", &self.netns);
        cmd.env("CNI_IFNAME", &self.ifname);
        cmd.env("CNI_PATH", &dir);
        if let Some(a) = &self.args {
            cmd.env("CNI_ARGS", a);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn spawn(&self) -> std::process::Child {
        let host = std::fs::File::open(&self.rig.host.path).expect("open host netns");
        let fd = host.as_raw_fd();
        let mut cmd = self.command();
        // Enter the rig's host netns in the child only: the test process stays put.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.plugin));
        drop(host);
        let stdin = self.stdin.clone();
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&stdin);
        });
        child
    }

    pub fn run(self) -> CniOut {
        let out = self.spawn().wait_with_output().expect("wait for plugin");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        CniOut {
            command: self.command.clone(),
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).ok(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Start the call and SIGKILL it after `d` (crash-safety tests).
    pub fn run_killed_after(self, d: Duration) {
        let mut child = self.spawn();
        std::thread::sleep(d);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The upstream v1.9.1 plugins, unpacked once per test process (the unpack script is
/// idempotent and verifies checksums).
pub fn oracle_dir() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/oracle");
    if !dir.join("bridge").exists() {
        let script = root.join("../shared/oracle/unpack");
        assert!(
            script.exists(),
            "oracle missing: {} not found (differential tests need ../shared)",
            script.display()
        );
        let out = Command::new(&script)
            .arg(&dir)
            .output()
            .expect("run the oracle unpack script");
        assert!(
            out.status.success(),
            "oracle unpack failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Debian's containernetworking-plugins (the installed base).
pub fn debian_dir() -> PathBuf {
    let d = PathBuf::from("/usr/lib/cni");
    assert!(
        d.join("bridge").exists(),
        "Debian containernetworking-plugins is not installed (make deps)"
    );
    d
}

// ---------------------------------------------------------------------------------------
// Kernel state

pub fn links(ns: &Netns) -> Vec<Value> {
    ns.ip_json(&["-d", "link", "show"])
        .as_array()
        .cloned()
        .expect("ip link prints a list")
}

/// The `addr_info` entries of `ifname` (empty if it does not exist; any other failure
/// of `ip` panics).
/// What `tc -j filter show dev <dev> <side>` lists (`side`: `ingress` or `egress`),
/// failing if `tc` fails.
pub fn tc_filters(ns: &Netns, dev: &str, side: &str) -> Vec<Value> {
    let out = ns.run(&["tc", "-j", "filter", "show", "dev", dev, side]);
    match serde_json::from_str(&out) {
        Ok(Value::Array(v)) => v,
        other => panic!("tc filter show dev {dev} {side}: not a JSON array: {other:?}"),
    }
}

/// The address (without its prefix length) of a result's `ips[i]`.
pub fn result_ip(v: &Value, i: usize) -> String {
    let a = v["ips"][i]["address"].as_str().expect("ips[i].address");
    a.split('/').next().unwrap_or(a).to_string()
}

pub fn addrs(ns: &Netns, ifname: &str) -> Vec<Value> {
    match ns.ip_json_dev(&["addr", "show", "dev", ifname]) {
        None => vec![],
        Some(v) => v[0]["addr_info"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("ip addr show dev {ifname}: no addr_info in {v}")),
    }
}

/// Routes of the main table.
pub fn routes(ns: &Netns, v6: bool) -> Vec<Value> {
    let fam = if v6 { "-6" } else { "-4" };
    ns.ip_json(&[fam, "route", "show"])
        .as_array()
        .cloned()
        .expect("ip route prints a list")
}

/// `nft list ruleset` (panics if nft fails).
pub fn nft_ruleset(ns: &Netns) -> String {
    ns.run(&["nft", "list", "ruleset"])
}

/// `nft -a list ruleset`: with rule and chain handles.
pub fn nft_ruleset_handles(ns: &Netns) -> String {
    ns.run(&["nft", "-a", "list", "ruleset"])
}

/// `nft [-a] list <what...>` of a table or chain; `None` only when nft says it does
/// not exist (ENOENT), any other failure panics.
pub fn nft_list(ns: &Netns, handles: bool, what: &[&str]) -> Option<String> {
    let mut args = vec!["nft"];
    if handles {
        args.push("-a");
    }
    args.push("list");
    args.extend_from_slice(what);
    let out = ns.exec(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    if stderr.starts_with("Error: No such file or directory") {
        return None;
    }
    panic!("{args:?} in netns {} failed: {stderr}", ns.name);
}

/// `iptables-save -t nat` (or ip6tables-save), panicking if it fails.
pub fn iptables_save(ns: &Netns, v6: bool) -> String {
    let tool = if v6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    let s = ns.run(&[tool, "-t", "nat"]);
    assert!(
        s.contains("*nat"),
        "{tool} -t nat printed no nat table: {s}"
    );
    s
}

/// The rule lines (`-A ...`) of [`iptables_save`].
pub fn iptables_rules(ns: &Netns, v6: bool) -> Vec<String> {
    iptables_save(ns, v6)
        .lines()
        .filter(|l| l.starts_with("-A"))
        .map(str::to_string)
        .collect()
}

/// One ping from inside `ns` (traffic stays within the test's namespaces): true on a
/// reply, false when none came (ping's exit 1) or there is no route ("Network is
/// unreachable"); any other failure (ping or the netns missing, bad address) panics.
pub fn ping(ns: &Netns, ip: &str) -> bool {
    let out = ns.exec(&["ping", "-c", "1", "-W", "2", ip]);
    let unreachable = String::from_utf8_lossy(&out.stderr).contains("Network is unreachable");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        Some(2) if unreachable => false,
        _ => panic!(
            "ping {ip} in netns {} failed ({}): {}",
            ns.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Replace what legitimately differs between two runs: MACs, random veth names and
/// sandbox paths (each rig has its own netns).
pub fn normalize_result(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let nv = match (k.as_str(), x) {
                        ("mac", Value::String(_)) => Value::String("<mac>".into()),
                        ("sandbox", Value::String(_)) => Value::String("<sandbox>".into()),
                        ("name", Value::String(s)) if is_random_veth(s) => {
                            Value::String("<veth>".into())
                        }
                        _ => normalize_result(x),
                    };
                    (k.clone(), nv)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize_result).collect()),
        other => other.clone(),
    }
}

fn is_random_veth(s: &str) -> bool {
    s.len() == 12 && s.starts_with("veth") && s[4..].chars().all(|c| c.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the plugin test files

/// `ip -d link` entry of `name`; `None` only if `ip` says it does not exist.
pub fn link(ns: &Netns, name: &str) -> Option<Value> {
    let v = ns.ip_json_dev(&["-d", "link", "show", "dev", name])?;
    let l = v[0].clone();
    assert_eq!(l["ifname"], name, "ip link show dev {name}: {v}");
    Some(l)
}

/// Does `ifname` carry `cidr` ("10.1.2.3/24")?
pub fn has_addr(ns: &Netns, ifname: &str, cidr: &str) -> bool {
    let (ip, len) = cidr.split_once('/').expect("cidr");
    let len: u64 = len.parse().expect("prefix length");
    addrs(ns, ifname)
        .iter()
        .any(|a| a["local"] == ip && a["prefixlen"] == len)
}

/// `conf` with `prevResult` set (for CHECK and DEL).
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// `base` with the keys of `extra` added or replaced.
pub fn merged(mut base: Value, extra: &Value) -> Value {
    if let (Some(o), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    base
}

/// The host-local reservation files (named after an IP) in `dir`, sorted; empty if
/// `dir` does not exist (any other error panics).
pub fn reservations(dir: &Path) -> Vec<String> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vec![],
        Err(e) => panic!("read {}: {e}", dir.display()),
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap_or_else(|e| panic!("read {}: {e}", dir.display())))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// A bridge config on bridge `cbr0` with host-local over `ranges` in the rig's data dir.
pub fn bridge_conf(rig: &Rig, ver: &str, extra: Value, ranges: Value) -> Value {
    let base = serde_json::json!({"cniVersion": ver, "name": "brnet", "type": "bridge", "bridge": "cbr0",
        "ipam": {"type": "host-local", "ranges": ranges, "dataDir": rig.data_dir()}});
    merged(base, &extra)
}

/// The L3 state of one side of a differential, with what legitimately differs between two
/// runs replaced (random veth names, MACs, IPv6 link-local addresses derived from MACs):
/// for the host and the container namespace, every link (name, kind, MTU, master,
/// configured flags), its addresses and both routing tables (main table).
pub fn net_state(rig: &Rig) -> Value {
    fn name(s: &Value) -> Value {
        match s.as_str() {
            Some(n) if is_random_veth(n) => Value::String("<veth>".into()),
            _ => s.clone(),
        }
    }
    let side = |ns: &Netns| {
        let mut ls: Vec<Value> = links(ns)
            .iter()
            .map(|l| {
                let ifname = l["ifname"].as_str().unwrap();
                let addrs: Vec<Value> = addrs(ns, ifname)
                    .iter()
                    .filter(|a| a["scope"] != "link")
                    .map(|a| {
                        serde_json::json!([a["family"], a["local"], a["prefixlen"], a["scope"]])
                    })
                    .collect();
                serde_json::json!({
                    "name": name(&l["ifname"]),
                    "kind": l["linkinfo"]["info_kind"],
                    "mtu": l["mtu"],
                    "master": name(&l["master"]),
                    // Configured flags only: carrier (LOWER_UP, NO-CARRIER) settles
                    // asynchronously after a veth comes up.
                    "flags": l["flags"].as_array().unwrap().iter()
                        .filter(|f| *f != "LOWER_UP" && *f != "NO-CARRIER")
                        .cloned().collect::<Vec<_>>(),
                    "addrs": addrs,
                })
            })
            .collect();
        ls.sort_by_key(|l| l.to_string());
        let mut rs: Vec<Value> = [false, true]
            .iter()
            .flat_map(|v6| routes(ns, *v6))
            .map(|r| {
                serde_json::json!([
                    r["dst"],
                    r["gateway"],
                    name(&r["dev"]),
                    r["scope"],
                    r["protocol"],
                    r["prefsrc"],
                    r["metric"],
                    r["flags"]
                ])
            })
            .collect();
        rs.sort_by_key(|r| r.to_string());
        serde_json::json!({"links": ls, "routes": rs})
    };
    serde_json::json!({"host": side(&rig.host), "cont": side(&rig.cont)})
}

/// iptables nat rules, ip6tables nat rules, `nft list ruleset`.
pub type FwState = (Vec<String>, Vec<String>, String);

/// The firewall state of a rig's host: iptables and ip6tables nat rules, and the whole
/// nftables ruleset (without the empty `ip`/`ip6 nat` tables iptables-nft may leave).
pub fn fw_state(rig: &Rig) -> FwState {
    let nft = nft_ruleset(&rig.host)
        .replace("table ip nat {\n}\n", "")
        .replace("table ip6 nat {\n}\n", "");
    (
        iptables_rules(&rig.host, false),
        iptables_rules(&rig.host, true),
        nft,
    )
}

/// A fake IPAM plugin in the rig's `CNI_PATH`: `ADD` runs `add_body` (shell), every
/// other command succeeds (for failure and rollback tests).
pub fn fake_ipam(rig: &Rig, name: &str, add_body: &str) {
    let p = rig.cni_path.join(name);
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n{add_body}\nfi\nexit 0\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every path under `dir`, sorted (empty if it does not exist yet): a data dir's state
/// for "nothing changed" comparisons.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => panic!("read {}: {e}", dir.display()),
    };
    for e in rd {
        let p = e
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(tree(&p));
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// Malformed-input tables: one case type, one snapshot of everything a call could change,
// one runner for every `testdata/malformed-<applet>.json`.

/// A netlink socket in `ns`, for reading kernel state without spawning `ip` (each `ip`
/// process costs a lot in the emulated VM).
pub fn nl(ns: &Netns) -> cnibox::netlink::Nl {
    let f = cnibox::netns::Netns::open(ns.path.to_str().unwrap()).expect("open netns");
    cnibox::netlink::Nl::open_in(&f).expect("netlink socket")
}

/// Wait (bounded) until the links `names` of `ns`, just set up with carrier, have
/// settled: operstate UP and, where IPv6 is on, the IPv6 multicast route, a link-local
/// address (unless addrgenmode is none) and every IPv6 address past DAD with its local
/// route. The kernel finishes all of these asynchronously after `link set up`, and a
/// before/after snapshot taken in between would see a change no plugin made.
pub fn settle(ns: &Netns, names: &[&str]) {
    use cnibox::netlink::LinkId;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v6: Vec<(bool, bool)> = names.iter().map(|n| ipv6_conf(ns, n)).collect();
    loop {
        let nl = nl(ns);
        let v6_routes = nl.routes(true, 0).expect("route dump");
        let settled = names.iter().zip(&v6).all(|(n, &(v6_on, lladdr))| {
            let l = nl
                .link(LinkId::Name(n))
                .expect("link lookup")
                .unwrap_or_else(|| panic!("settle: no {n} in {}", ns.name));
            if l.operstate != 6 {
                return false;
            }
            if !v6_on {
                return true;
            }
            let addrs = nl.addrs(l.index, Some(true)).expect("address dump");
            let mcast = v6_routes
                .iter()
                .any(|r| r.oif == l.index && r.dst.to_string() == "ff00::/8");
            let has_ll = addrs.iter().any(|a| a.net.to_string().starts_with("fe80:"));
            let done = addrs.iter().all(|a| {
                !a.is_tentative()
                    && v6_routes
                        .iter()
                        .any(|r| r.kind == 2 && r.dst.addr() == a.net.addr())
            });
            mcast && (has_ll || !lladdr) && done
        });
        if settled {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "links {names:?} in {} did not settle within 10 s",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (IPv6 on, makes a link-local address) for `ifname` in `ns`, from its sysctls. No
/// per-link IPv6 directory means IPv6 is off entirely; any other failure panics.
fn ipv6_conf(ns: &Netns, ifname: &str) -> (bool, bool) {
    let dir = format!("/proc/sys/net/ipv6/conf/{ifname}");
    let out = ns.exec(&[
        "cat",
        &format!("{dir}/disable_ipv6"),
        &format!("{dir}/addr_gen_mode"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("No such file or directory") && !Path::new("/proc/sys/net/ipv6").exists()
        {
            return (false, false);
        }
        panic!("read {dir} in netns {}: {stderr}", ns.name);
    }
    let v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    // addr_gen_mode 1 = none: no link-local address is made.
    (v[0] == "0", v[0] == "0" && v[1] != "1")
}

/// Reservation files (named after an IP) anywhere under `dir`, by file name.
pub fn reservations_under(dir: &Path) -> Vec<String> {
    tree(dir)
        .iter()
        .filter_map(|p| Path::new(p).file_name()?.to_str().map(str::to_string))
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// What [`snapshot_with`] records beyond the links, addresses, routes, FIB rules and
/// qdiscs of both rig namespaces and the IPAM reservations.
#[derive(Clone, Default)]
pub struct Snap {
    /// The host's firewall: the nat and filter tables of both families' `iptables-save`
    /// (without counters, which count the namespaces' own IPv6 chatter) and
    /// `nft list ruleset`.
    pub firewall: bool,
    /// Directories recorded path by path (a plugin's state dir, the whole IPAM data dir
    /// where even a lock file would be a change).
    pub trees: Vec<PathBuf>,
}

/// [`snapshot_with`] without extras.
pub fn snapshot(rig: &Rig) -> String {
    snapshot_with(rig, &Snap::default())
}

/// Everything a call could have changed, read in-process: for the host and the
/// container namespace every link (kind, kind data, parent, MTU, MAC, alias, flags,
/// promiscuity, which passthru changes on the parent, ...), its addresses, the routes of
/// every table, the FIB rules and the qdiscs; the IPAM reservations (host-local's lock
/// file may appear, as with the reference); and the extras of `opts`. Carrier state
/// (operstate, LOWER_UP, RUNNING, DORMANT) is left out: the kernel settles it on its
/// own after a link is made or set up, and only admin state (UP) is a plugin's doing.
pub fn snapshot_with(rig: &Rig, opts: &Snap) -> String {
    use std::fmt::Write;
    const CARRIER: u32 = (libc::IFF_LOWER_UP | libc::IFF_DORMANT | libc::IFF_RUNNING) as u32;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v.join("")
    };
    let mut s = String::new();
    for ns in [&rig.host, &rig.cont] {
        let nl = nl(ns);
        let mut links = nl.links().expect("link dump");
        links.sort_by_key(|l| l.index);
        for mut l in links {
            l.operstate = 0;
            l.flags &= !CARRIER;
            let addrs = nl.addrs(l.index, None).expect("address dump");
            writeln!(s, "{l:?}").unwrap();
            s += &sorted(addrs.iter().map(|a| format!("  {a:?}\n")).collect());
        }
        for v6 in [false, true] {
            let routes = nl.routes(v6, 0).expect("route dump");
            s += &sorted(routes.iter().map(|r| format!("{r:?}\n")).collect());
        }
        let rules = nl.rules().expect("rule dump");
        s += &sorted(rules.iter().map(|r| format!("{r:?}\n")).collect());
        let qdiscs = nl.qdiscs(0).expect("qdisc dump");
        s += &sorted(qdiscs.iter().map(|q| format!("{q:?}\n")).collect());
    }
    writeln!(s, "reservations {:?}", reservations_under(&rig.data_dir())).unwrap();
    for d in &opts.trees {
        writeln!(s, "{} {:?}", d.display(), tree(d)).unwrap();
    }
    if opts.firewall {
        // iptables first: iptables-nft's save may leave an empty nat table, seen by nft.
        for (v6, table) in [
            (false, "nat"),
            (true, "nat"),
            (false, "filter"),
            (true, "filter"),
        ] {
            let tool = if v6 {
                "ip6tables-save"
            } else {
                "iptables-save"
            };
            let saved = rig.host.run(&[tool, "-t", table]);
            assert!(saved.contains(&format!("*{table}")), "{tool}: {saved}");
            for l in saved.lines() {
                if !l.starts_with('#') {
                    let l = match l.rsplit_once(" [") {
                        Some((head, tail)) if l.starts_with(':') && tail.ends_with(']') => head,
                        _ => l,
                    };
                    writeln!(s, "{l}").unwrap();
                }
            }
        }
        s += &nft_ruleset(&rig.host);
    }
    s
}

/// One malformed input of a `testdata/malformed-<applet>.json` table: the keys of
/// `conf` are merged into the applet's base config (`null` removes one; an `ipam` of
/// type host-local without a `dataDir` gets the rig's), and the call must fail with
/// `code` and a message containing `msg`, changing nothing.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub what: String,
    /// The applet called, in a table of several (malformed-applets.json); the runner's
    /// applet otherwise.
    #[serde(default)]
    pub plugin: Option<String>,
    /// `CNI_COMMAND`, ADD when absent.
    #[serde(default)]
    pub command: Option<String>,
    /// (`set` in the portmap table.)
    #[serde(default, alias = "set")]
    pub conf: Option<Value>,
    /// `CNI_ARGS`.
    #[serde(default)]
    pub args: Option<String>,
    /// `CNI_IFNAME` instead of eth0.
    #[serde(default)]
    pub ifname: Option<String>,
    /// `CNI_NETNS`: "missing" (a path that does not exist) or "file" (a regular file).
    #[serde(default)]
    pub netns: Option<String>,
    pub code: i64,
    pub msg: String,
}

type CaseHook<'a> = Box<dyn Fn(&Rig, &Case, &Value) + 'a>;

/// The malformed-input runner: every case of a table against a base config, each
/// checked for its code and message and for an unchanged [`snapshot_with`].
pub struct Malformed<'a> {
    applet: &'a str,
    table: &'a str,
    min: usize,
    base: Box<dyn Fn(&str) -> Value + 'a>,
    snap: Snap,
    env: Vec<(String, String)>,
    skip: Box<dyn Fn(&Case) -> bool + 'a>,
    then: CaseHook<'a>,
}

impl<'a> Malformed<'a> {
    /// `table` (the JSON text) for `applet` on `base`; at least `min` cases must run.
    pub fn new(applet: &'a str, table: &'a str, min: usize, base: Value) -> Self {
        Malformed {
            applet,
            table,
            min,
            base: Box::new(move |_| base.clone()),
            snap: Snap::default(),
            env: Vec::new(),
            skip: Box::new(|_| false),
            then: Box::new(|_, _, _| {}),
        }
    }

    /// The base config by applet, for a table of several.
    pub fn base_per_applet(mut self, f: impl Fn(&str) -> Value + 'a) -> Self {
        self.base = Box::new(f);
        self
    }

    /// Extras of the snapshot compared after every case.
    pub fn snap(mut self, snap: Snap) -> Self {
        self.snap = snap;
        self
    }

    /// An environment variable for every call.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Cases not to run here (each says so on stderr); the minimum still holds.
    pub fn skip(mut self, f: impl Fn(&Case) -> bool + 'a) -> Self {
        self.skip = Box::new(f);
        self
    }

    /// Run after each case has passed, with the config it used.
    pub fn then(mut self, f: impl Fn(&Rig, &Case, &Value) + 'a) -> Self {
        self.then = Box::new(f);
        self
    }

    /// Run every case in `rig`; the number run.
    pub fn run(self, rig: &Rig) -> usize {
        let cases: Vec<Case> = serde_json::from_str(self.table)
            .unwrap_or_else(|e| panic!("the {} malformed-input table: {e}", self.applet));
        let file = rig.dir.join("not-a-netns");
        std::fs::write(&file, b"").unwrap();
        let missing = rig.dir.join("no-such-netns");
        let before = snapshot_with(rig, &self.snap);
        let mut ran = 0;
        for case in &cases {
            let what = &case.what;
            if (self.skip)(case) {
                eprintln!("{}: {what:?} skipped here", self.applet);
                continue;
            }
            let applet = case.plugin.as_deref().unwrap_or(self.applet);
            let mut conf = (self.base)(applet);
            for (k, v) in case
                .conf
                .iter()
                .flat_map(|c| c.as_object().expect("conf object"))
            {
                let o = conf.as_object_mut().expect("base config object");
                match v {
                    Value::Null => o.remove(k),
                    v => o.insert(k.clone(), v.clone()),
                };
            }
            if conf["ipam"]["type"] == "host-local" && conf["ipam"].get("dataDir").is_none() {
                conf["ipam"]["dataDir"] = serde_json::json!(rig.data_dir());
            }
            let mut call = rig.call(applet, case.command.as_deref().unwrap_or("ADD"), &conf);
            for (k, v) in &self.env {
                call = call.env(k, v);
            }
            if let Some(a) = &case.args {
                call = call.args(a);
            }
            if let Some(i) = &case.ifname {
                call = call.ifname(i);
            }
            match case.netns.as_deref() {
                Some("missing") => call = call.netns(missing.to_str().unwrap()),
                Some("file") => call = call.netns(file.to_str().unwrap()),
                Some(other) => panic!("{what}: unknown netns kind {other}"),
                None => {}
            }
            let out = call.run();
            assert_eq!(out.err_code(), case.code, "{what}: {}", out.stdout);
            let msg = out.err()["msg"].as_str().unwrap();
            assert!(
                msg.contains(&case.msg),
                "{what}: message {msg:?} lacks {:?}",
                case.msg
            );
            assert_eq!(
                snapshot_with(rig, &self.snap),
                before,
                "{what}: the failed call changed something"
            );
            assert!(!missing.exists(), "{what}: created the missing netns path");
            (self.then)(rig, case, &conf);
            ran += 1;
        }
        assert!(
            ran >= self.min,
            "{}: {ran} malformed cases ran, want at least {}",
            self.applet,
            self.min
        );
        eprintln!(
            "{}: {ran} of {} malformed cases ran (at least {}): each got its code, nothing changed",
            self.applet,
            cases.len(),
            self.min
        );
        ran
    }
}
