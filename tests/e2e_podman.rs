//! podman end to end: Debian's podman 4.3 with its CNI backend and `cni_plugin_dirs`
//! pointing at a directory of cnibox links. `podman network create` writes podman's own
//! conflist (bridge → portmap → firewall → tuning); `podman run --rm -p` on a dual-stack
//! network gets an IPv4 and an IPv6 address, the published port answers from the test's
//! host netns and from a client netns behind it, a second container reaches the first on
//! both families, and once the container exits nothing is left: no reservation, rule,
//! veth or cached result. A second test: `--ip`/`--mac-address` are honoured, `podman
//! restart` swaps the veth and keeps the same rules and reservation, `podman rm` leaves
//! nothing.
//!
//! Hermetic: podman (private config, storage under the temp dir with the vfs driver,
//! runroot and locks on the sandbox's own /run), conmon, runc and the containers run in
//! a sandbox (tests/e2e/mod.rs) whose network namespace is the rig's host netns and whose
//! mount namespace shows the temp dir at /var/lib/cni; the image is a local OCI archive
//! built from busybox-static, loaded with `podman load`. Needs podman, conmon, runc and
//! busybox-static.

mod common;
#[path = "e2e/mod.rs"]
mod e2e;

use common::{reservations, Netns};
use e2e::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/cnibox-e2e:latest";
const NET: &str = "cbxnet";
const SUBNET: &str = "10.89.7.0/24";
const SUBNET6: &str = "fd89::/64";
/// The host's address on the link to the client netns, and the published port.
const HOST_IP: &str = "198.51.100.1";
const CLIENT_IP: &str = "198.51.100.2";
const HOST_PORT: &str = "18080";
const TOKEN: &str = "cnibox-e2e-podman";

struct Podman {
    sb: Sandbox,
    /// Global flags and environment of every podman command.
    prefix: Vec<String>,
    /// cgroup parent of the containers and their conmon (removed with the sandbox).
    cgroup: String,
}

impl Podman {
    fn start(host: &Netns, dir: &std::path::Path) -> Podman {
        require_tools(&["podman", "conmon", "runc"]);
        let d = dir.display();
        // runc, not crun (not installed); cgroupfs, since no systemd manages this
        // machine's cgroups; events to a file (no journald).
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/bin\"]\n\
                 network_config_dir = \"{d}/net.d\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/storage\"\n\
                 runroot = \"/run/cbx-storage\"\n"
            ),
        )
        .unwrap();
        let image = build_image(dir, IMAGE);
        let mut sb = Sandbox::start(host, dir, &["sleep", "infinity"]);
        let cgroup = unique("pod");
        sb.owns_cgroup(&cgroup);
        let prefix = vec![
            "env".to_string(),
            format!("CONTAINERS_CONF={d}/containers.conf"),
            format!("CONTAINERS_STORAGE_CONF={d}/storage.conf"),
            "podman".into(),
            "--root".into(),
            format!("{d}/storage"),
            "--runroot".into(),
            "/run/cbx-storage".into(),
            "--storage-driver".into(),
            "vfs".into(),
            "--network-backend".into(),
            "cni".into(),
            "--cni-config-dir".into(),
            format!("{d}/net.d"),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
        ];
        let p = Podman { sb, prefix, cgroup };
        p.sb.assert_machine_plugins_hidden();
        p.podman(&["load", "-i", image.to_str().unwrap()]);
        p
    }

    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        v.extend_from_slice(args);
        v
    }

    fn podman(&self, args: &[&str]) -> String {
        self.sb.run(&self.argv(args))
    }

    /// `podman run` arguments every container gets: the network and our cgroup parent.
    fn run_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "run",
            "--rm",
            "--network",
            NET,
            "--cgroup-parent",
            self.cgroup.as_str(),
        ];
        v.extend_from_slice(extra);
        v
    }

    fn host_local_dir(&self) -> PathBuf {
        self.sb.dir.join("cni/networks").join(NET)
    }
}

/// `busybox wget` of `url` from `ns`, retried while the server is not listening yet (a
/// bounded wait: the container's httpd starts asynchronously); the body.
fn http_get(ns: &Netns, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Bounded by `timeout`: busybox 1.35's own `wget -T` crashes (SIGSEGV).
        let out = ns.exec(&["timeout", "10", "busybox", "wget", "-q", "-O", "-", url]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} from netns {} still fails after 30 s: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn podman_run_rm_publish_port_then_nothing_left() {
    let host = Netns::new("h");
    let client = Netns::new("cl");
    host.ip(&[
        "link",
        "add",
        "cbxv0",
        "type",
        "veth",
        "peer",
        "name",
        "cbxv1",
        "netns",
        &client.name,
    ]);
    host.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "cbxv0"]);
    host.ip(&["link", "set", "cbxv0", "up"]);
    client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "cbxv1"]);
    client.ip(&["link", "set", "cbxv1", "up"]);

    let dir = temp_dir("pod");
    let p = Podman::start(&host, &dir);

    // podman writes its default-style conflist for the network.
    p.podman(&[
        "network", "create", "--subnet", SUBNET, "--subnet", SUBNET6, NET,
    ]);
    let conf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("net.d").join(format!("{NET}.conflist"))).unwrap(),
    )
    .unwrap();
    let types: Vec<&str> = conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "portmap", "firewall", "tuning"], "{conf}");
    let bridge = conf["plugins"][0]["bridge"].as_str().unwrap().to_string();

    // The web container: httpd on 8080 published on HOST_IP:HOST_PORT; it prints its
    // address and stays until its stdin closes.
    let publish = format!("{HOST_IP}:{HOST_PORT}:8080");
    let script = format!(
        "echo {TOKEN} >/www/index.html && httpd -p 8080 -h /www && \
         ip -4 -o addr show dev eth0 && ip -6 -o addr show dev eth0 scope global && \
         read x; exit 0"
    );
    let web_args = p.run_args(&["-i", "-p", &publish, IMAGE, "sh", "-c", &script]);
    let mut web = p.sb.spawn(&p.argv(&web_args));
    let ip = inet_of(&web.line());
    let ip6 = inet6_of(&web.line());
    assert!(ip6.starts_with("fd89::"), "web got {ip6}");
    assert!(ip.starts_with("10.89.7."), "web got {ip}");
    let mut both = vec![ip.clone(), ip6.clone()];
    both.sort();
    assert_eq!(reservations(&p.host_local_dir()), both);
    let fw = firewall(&host);
    assert!(
        fw.contains(&format!("--to-destination {ip}:8080")) || fw.contains(&format!("{ip} . 8080")),
        "no DNAT to {ip}:8080 while web runs:\n{fw}"
    );
    assert_eq!(
        bridge_ports(&host, &bridge).len(),
        1,
        "web's veth on {bridge}"
    );

    // The published port, from the host netns itself and from a netns behind it.
    let url = format!("http://{HOST_IP}:{HOST_PORT}/");
    assert_eq!(http_get(&host, &url).trim(), TOKEN);
    assert_eq!(http_get(&client, &url).trim(), TOKEN);

    // A second container reaches the first directly over the bridge, on both families.
    for direct in [
        format!("http://{ip}:8080/"),
        format!("http://[{ip6}]:8080/"),
    ] {
        let get = p.run_args(&[IMAGE, "wget", "-q", "-O", "-", &direct]);
        assert_eq!(p.podman(&get).trim(), TOKEN, "GET {direct}");
    }

    // web exits; podman --rm tears its network down.
    web.finish();

    assert_eq!(
        reservations(&p.host_local_dir()),
        Vec::<String>::new(),
        "host-local reservations left"
    );
    let fw = firewall(&host);
    for leftover in [
        ip.as_str(),
        ip6.as_str(),
        "10.89.7.",
        "fd89:",
        HOST_PORT,
        "CNI-DN-",
    ] {
        assert!(
            !fw.contains(leftover),
            "{leftover} still in the firewall after the containers exited:\n{fw}"
        );
    }
    assert_eq!(
        bridge_ports(&host, &bridge),
        Vec::<String>::new(),
        "veths left"
    );
    let results = common::tree(&dir.join("cni/results"));
    assert!(results.is_empty(), "libcni result cache left: {results:?}");
    assert_eq!(p.podman(&["ps", "-a", "-q"]).trim(), "");
}

/// The host's firewall rules as a sorted list of lines, without counters (`-A` lines of
/// iptables-save and ip6tables-save, `nft -s list ruleset`): the same rules compare equal
/// whatever order their chains were created in.
fn rules(host: &Netns) -> Vec<String> {
    let ipt = [host.run(&["iptables-save"]), host.run(&["ip6tables-save"])];
    let nft = host.run(&["nft", "-s", "list", "ruleset"]);
    let mut v: Vec<String> = ipt
        .iter()
        .flat_map(|t| t.lines().filter(|l| l.starts_with("-A")))
        .chain(nft.lines().map(str::trim).filter(|l| !l.is_empty()))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn podman_static_ip_and_mac_survive_restart_and_rm_leaves_nothing() {
    let host = Netns::new("h");
    let dir = temp_dir("podst");
    let p = Podman::start(&host, &dir);
    p.podman(&["network", "create", "--subnet", SUBNET, NET]);
    let conf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("net.d").join(format!("{NET}.conflist"))).unwrap(),
    )
    .unwrap();
    let bridge = conf["plugins"][0]["bridge"].as_str().unwrap().to_string();

    const IP: &str = "10.89.7.42";
    const MAC: &str = "02:42:0a:59:07:2a";
    p.podman(&[
        "run",
        "-d",
        "--name",
        "st",
        "--network",
        NET,
        "--cgroup-parent",
        &p.cgroup,
        "--ip",
        IP,
        "--mac-address",
        MAC,
        IMAGE,
        "sleep",
        "100000",
    ]);
    let check = |when: &str| {
        let a = p.podman(&["exec", "st", "ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            a.contains(&format!("inet {IP}/24")),
            "{when}: eth0 of st: {a}"
        );
        let l = p.podman(&["exec", "st", "ip", "-o", "link", "show", "dev", "eth0"]);
        assert!(
            l.contains(&format!("link/ether {MAC}")),
            "{when}: eth0 of st: {l}"
        );
        assert_eq!(
            reservations(&p.host_local_dir()),
            vec![IP.to_string()],
            "{when}"
        );
        let veths = bridge_ports(&host, &bridge);
        assert_eq!(veths.len(), 1, "{when}: veths on {bridge}: {veths:?}");
        (rules(&host), veths)
    };
    let (before, veth_before) = check("after run");
    assert!(
        before.iter().any(|r| r.contains(IP)),
        "no rule for {IP}: {before:#?}"
    );

    // restart = DEL then ADD of the same container id: a new veth (random name) replaces
    // the old one; the same rules, the same single reservation.
    p.podman(&["restart", "-t", "0", "st"]);
    let (after, veth_after) = check("after restart");
    assert_ne!(
        veth_before, veth_after,
        "podman restart kept the veth: no DEL/ADD?"
    );
    assert_eq!(before, after, "rules differ after podman restart");

    p.podman(&["rm", "-f", "-t", "0", "st"]);
    assert_eq!(
        reservations(&p.host_local_dir()),
        Vec::<String>::new(),
        "host-local reservations left after podman rm"
    );
    let fw = firewall(&host);
    assert!(
        !fw.contains(IP),
        "{IP} still in the firewall after podman rm:\n{fw}"
    );
    assert_eq!(
        bridge_ports(&host, &bridge),
        Vec::<String>::new(),
        "veths left"
    );
    let results = common::tree(&dir.join("cni/results"));
    assert!(results.is_empty(), "libcni result cache left: {results:?}");
}
