//! containerd end to end: Debian's containerd 1.6 and `ctr run --cni` against a
//! directory of cnibox links, with a dual-stack bridge + host-local → portmap → firewall
//! → tuning conflist. A container gets an IPv4 and an IPv6 address and the tuned sysctl,
//! other containers ping it on both, and `ctr run --rm` releases the addresses and every
//! rule (iptables, ip6tables, nftables), although ctr sends that DEL with an empty
//! `CNI_NETNS` (the Go reference plugins leak the masquerade rule there: the second
//! test shows it on the same setup).
//!
//! Hermetic: containerd (private root, state, socket and opt dir; the CRI plugin off),
//! its shims, runc and the containers run in a sandbox (tests/e2e/mod.rs) whose network
//! namespace is the rig's host netns and whose mount namespace shows the test's temp
//! dirs at /etc/cni/net.d, /opt/cni/bin and /var/lib/cni; the image is a local OCI
//! archive built from busybox-static. Needs containerd, runc and busybox-static.

mod common;
#[path = "e2e/mod.rs"]
mod e2e;

use common::{oracle_dir, reservations, Netns};
use e2e::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const IMAGE: &str = "localhost/cnibox-e2e:latest";
const BRIDGE: &str = "cbxctr0";
const NET: &str = "e2e";

/// containerd in a sandbox, with the e2e image imported.
struct Containerd {
    sb: Sandbox,
    sock: String,
    /// containerd namespace; also the cgroup parent runc uses (/<ns>/<id>).
    ns: String,
}

impl Containerd {
    /// `bin` is the plugin dir /opt/cni/bin shows (the temp dir's `bin` holds cnibox
    /// links).
    fn start(host: &Netns, dir: &Path) -> Containerd {
        require_tools(&["containerd", "ctr", "runc", "containerd-shim-runc-v2"]);
        let d = dir.display();
        std::fs::write(
            dir.join("net.d/10-e2e.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": NET,
                "plugins": [
                    {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd99::/64"}]],
                              "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}},
                    {"type": "firewall"},
                    {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}}
                ]
            })
            .to_string(),
        )
        .unwrap();
        let sock = format!("{d}/containerd.sock");
        // Everything containerd would keep under /var/lib, /run or /opt goes to the
        // temp dir; the CRI plugin (which would watch /etc/cni itself) is off.
        std::fs::write(
            dir.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
            ),
        )
        .unwrap();
        let image = build_image(dir, IMAGE);
        let cfg = format!("{d}/containerd.toml");
        let mut sb = Sandbox::start(host, dir, &["containerd", "--config", &cfg]);
        let ns = unique("ctr");
        sb.owns_cgroup(&ns);
        let c = Containerd { sb, sock, ns };
        c.sb.assert_machine_plugins_hidden();
        c.sb.run_until_ok(
            &["ctr", "--address", &c.sock, "version"],
            Duration::from_secs(30),
        );
        c.ctr(&["images", "import", image.to_str().unwrap()]);
        c
    }

    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ctr", "--address", &self.sock, "--namespace", &self.ns];
        v.extend_from_slice(args);
        v
    }

    fn ctr(&self, args: &[&str]) -> String {
        self.sb.run(&self.argv(args))
    }

    /// `ctr run --rm --cni IMAGE <id> cmd...` left running.
    fn run_bg(&self, id: &str, cmd: &[&str]) -> Running {
        let mut a = vec!["run", "--rm", "--cni", IMAGE, id];
        a.extend_from_slice(cmd);
        self.sb.spawn(&self.argv(&a))
    }

    /// The CNI container id ctr uses: `<namespace>-<id>`.
    fn cni_id(&self, id: &str) -> String {
        format!("{}-{id}", self.ns)
    }

    fn host_local_dir(&self) -> PathBuf {
        self.sb.dir.join("cni/networks").join(NET)
    }
}

/// A container that prints its eth0 addresses (IPv4, then global IPv6) and the sysctl
/// tuning set, then stays until its stdin closes.
const HOLD: &[&str] = &[
    "sh",
    "-c",
    "ip -4 -o addr show dev eth0; ip -6 -o addr show dev eth0 scope global; \
     cat /proc/sys/net/ipv4/conf/eth0/accept_redirects; read x || :",
];

#[test]
fn ctr_run_cni_two_containers_talk_and_rm_releases_address_and_rules() {
    let host = Netns::new("h");
    let dir = temp_dir("ctr");
    let c = Containerd::start(&host, &dir);

    // c1 stays up; it prints what the chain gave it.
    let mut c1 = c.run_bg("c1", HOLD);
    let ip1 = inet_of(&c1.line());
    assert!(ip1.starts_with("10.99.0."), "c1 got {ip1}");
    let ip6 = inet6_of(&c1.line());
    assert!(ip6.starts_with("fd99::"), "c1 got {ip6}");
    // tuning's sysctl reached the container (a new interface starts with 1).
    assert_eq!(c1.line(), "0", "accept_redirects of c1's eth0");
    let mut both = vec![ip1.clone(), ip6.clone()];
    both.sort();
    assert_eq!(reservations(&c.host_local_dir()), both);
    let reserved = std::fs::read_to_string(c.host_local_dir().join(&ip1)).unwrap();
    assert!(
        reserved.starts_with(&c.cni_id("c1")),
        "host-local reservation of {ip1} names {reserved:?}, not ctr's id"
    );
    let fw = firewall(&host);
    assert!(
        fw.contains(&ip1) && fw.contains(&ip6) && fw.contains(&c.cni_id("c1")),
        "no masquerade/firewall rules for c1 ({ip1}, {ip6}) while it runs:\n{fw}"
    );
    assert_eq!(
        bridge_ports(&host, BRIDGE).len(),
        1,
        "c1's veth on {BRIDGE}"
    );
    let gw = host.ip_json(&["-4", "addr", "show", "dev", BRIDGE]);
    assert_eq!(gw[0]["addr_info"][0]["local"], "10.99.0.1", "{gw}");

    // A second and a third container reach the first over the bridge on IPv4 and IPv6,
    // each removed by --rm.
    let out = c.ctr(&[
        "run", "--rm", "--cni", IMAGE, "c2", "ping", "-c", "1", "-W", "5", &ip1,
    ]);
    assert!(out.contains("1 packets received"), "c2 ping {ip1}: {out}");
    let out = c.ctr(&[
        "run", "--rm", "--cni", IMAGE, "c3", "ping6", "-c", "1", "-W", "5", &ip6,
    ]);
    assert!(out.contains("1 packets received"), "c3 ping6 {ip6}: {out}");

    // c1 exits; ctr's --rm DEL comes with CNI_NETNS="" (the task is gone).
    c1.finish();

    assert_eq!(
        reservations(&c.host_local_dir()),
        Vec::<String>::new(),
        "host-local reservations left after --rm"
    );
    let fw = firewall(&host);
    for leftover in [
        ip1.as_str(),
        ip6.as_str(),
        &c.cni_id("c1"),
        &c.cni_id("c2"),
        &c.cni_id("c3"),
        "10.99.0.",
        "fd99:",
    ] {
        assert!(
            !fw.contains(leftover),
            "{leftover} still in the firewall after ctr run --rm:\n{fw}"
        );
    }
    assert_eq!(
        bridge_ports(&host, BRIDGE),
        Vec::<String>::new(),
        "veths left"
    );
    let results = common::tree(&dir.join("cni/results"));
    assert!(results.is_empty(), "libcni result cache left: {results:?}");
    assert_eq!(c.ctr(&["containers", "ls", "-q"]).trim(), "");
}

/// The same `ctr run --rm` with the Go reference plugins v1.9.1: their bridge returns
/// early from a DEL without a netns, after releasing the address but before removing the
/// masquerade rule. This shows ctr really sends that DEL, and that the check above
/// would see the leak.
#[test]
fn ctr_run_rm_with_the_reference_plugins_leaks_the_masquerade_rule() {
    let host = Netns::new("h");
    let dir = temp_dir("ctrgo");
    let bin = dir.join("bin");
    std::fs::remove_dir_all(&bin).unwrap();
    std::fs::create_dir(&bin).unwrap();
    let oracle = oracle_dir();
    for p in [
        "bridge",
        "host-local",
        "portmap",
        "firewall",
        "tuning",
        "loopback",
    ] {
        std::os::unix::fs::symlink(oracle.join(p), bin.join(p)).unwrap();
    }
    let c = Containerd::start(&host, &dir);

    let out = c.ctr(&[
        "run", "--rm", "--cni", IMAGE, "c1", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
    ]);
    let ip1 = inet_of(&out);
    assert_eq!(reservations(&c.host_local_dir()), Vec::<String>::new());
    let fw = firewall(&host);
    assert!(
        fw.contains(&ip1) && fw.contains(&c.cni_id("c1")),
        "expected the reference to leak c1's masquerade rule ({ip1}):\n{fw}"
    );
}

/// The harness itself: a sandbox dropped while a container runs (as when a test fails
/// half-way) leaves no process, cgroup, mount or temp file on the machine.
#[test]
fn sandbox_dropped_mid_run_leaves_nothing_behind() {
    let host = Netns::new("h");
    let dir = temp_dir("ctrdrop");
    let c = Containerd::start(&host, &dir);
    // A sleep no other process on the machine runs (the container's own PID namespace
    // hides it from the sandbox's, so it is found by its command line).
    let sleep = ["sleep", "4242427"];
    c.ctr(&["run", "-d", "--cni", IMAGE, "c1", sleep[0], sleep[1]]);
    assert!(c.ctr(&["tasks", "ls"]).contains("RUNNING"));

    let pidns = std::fs::read_link(format!("/proc/{}/ns/pid", c.sb.init))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // containerd and the shim.
    let procs = pids_in_pidns(&pidns);
    assert!(procs.len() >= 2, "processes in the sandbox: {procs:?}");
    assert_eq!(pids_with_cmdline(&sleep).len(), 1, "the container's sleep");
    assert!(!cgroup_dirs(&c.ns).is_empty(), "runc made no cgroup for c1");
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir_s = dir.display().to_string();
    assert!(
        !mountinfo().contains(&dir_s),
        "the sandbox's mounts leaked into the test's mount namespace"
    );

    let ns = c.ns.clone();
    drop(c);
    assert_eq!(pids_in_pidns(&pidns), Vec::<u32>::new(), "processes left");
    assert_eq!(
        pids_with_cmdline(&sleep),
        Vec::<u32>::new(),
        "container left"
    );
    assert_eq!(cgroup_dirs(&ns), Vec::<PathBuf>::new(), "cgroups left");
    assert!(!dir.exists(), "temp dir left: {dir_s}");
    assert!(!mountinfo().contains(&dir_s), "mounts left");
}
