//! dhcp IPAM and its daemon against a real DHCP server: dnsmasq serving on a bridge in the
//! rig's host netns, each container netns attached by a veth. The daemon (ours, or the Go
//! v1.9.1 one for the cross tests) runs as a separate process in the host netns with its
//! socket, pid file and state file under the rig's temp dir.
//!
//! dnsmasq's shortest lease is 2 minutes; the tests that watch a renewal set T1 (option
//! 58) to a few seconds instead, and observe the renewal as a later expiry in dnsmasq's
//! lease file (its first column).

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BRIDGE: &str = "br0";
const SERVER: &str = "10.99.0.1";

/// dnsmasq on the rig's bridge.
struct Server {
    child: Child,
    leases: PathBuf,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host side: a bridge with the server's address, dnsmasq on it, handing out a
/// router, DNS servers, a domain and classless static routes (121).
fn server(rig: &Rig, extra: &[&str]) -> Server {
    let classless = format!(
        "--dhcp-option=option:classless-static-route,10.200.0.0/16,{SERVER},0.0.0.0/0,{SERVER}"
    );
    let mut all = vec![classless.as_str()];
    all.extend_from_slice(extra);
    server_with(rig, &all)
}

/// dnsmasq with only the router, DNS and domain options, plus `extra`.
fn server_with(rig: &Rig, extra: &[&str]) -> Server {
    rig.host.ip(&["link", "add", BRIDGE, "type", "bridge"]);
    rig.host
        .ip(&["addr", "add", &format!("{SERVER}/24"), "dev", BRIDGE]);
    rig.host.ip(&["link", "set", BRIDGE, "up"]);
    attach(rig, &rig.cont, "vc0");
    let leases = rig.dir.join("dnsmasq.leases");
    let log = rig.dir.join("dnsmasq.log");
    let mut args: Vec<String> = [
        "netns",
        "exec",
        &rig.host.name,
        "dnsmasq",
        "--keep-in-foreground",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port=0",
        "--bind-interfaces",
        "--log-dhcp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        format!("--interface={BRIDGE}"),
        format!("--dhcp-leasefile={}", leases.display()),
        format!("--pid-file={}", rig.dir.join("dnsmasq.pid").display()),
        "--dhcp-range=10.99.0.10,10.99.0.200,255.255.255.0,2m".into(),
        format!("--dhcp-option=option:router,{SERVER}"),
        "--dhcp-option=option:dns-server,10.99.0.53,10.99.0.54".into(),
        "--dhcp-option=option:domain-name,example.test".into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Command::new("ip")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run dnsmasq (apt-get install dnsmasq-base)");
    let s = Server { child, leases, log };
    wait_for(
        || log_has(&s, "DHCP, sockets bound exclusively"),
        "dnsmasq to start",
    );
    s
}

fn log_has(s: &Server, what: &str) -> bool {
    std::fs::read_to_string(&s.log).is_ok_and(|l| l.contains(what))
}

/// A veth from `ns` (eth0) into the bridge (host end `host_end`).
fn attach(rig: &Rig, ns: &Netns, host_end: &str) {
    rig.host.ip(&[
        "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    rig.host
        .ip(&["link", "set", host_end, "master", BRIDGE, "up"]);
}

/// dnsmasq's leases: (expiry, ip, client-id).
fn leases(s: &Server) -> Vec<(u64, String, String)> {
    let text = std::fs::read_to_string(&s.leases).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 5, "odd lease line {l:?}");
            (f[0].parse().unwrap(), f[2].to_string(), f[4].to_string())
        })
        .collect()
}

fn lease_of(s: &Server, ip: &str) -> Option<u64> {
    leases(s).into_iter().find(|l| l.1 == ip).map(|l| l.0)
}

/// Poll `f` (every 100 ms, at most 60 s): waiting for an event, not timing it.
fn wait_for(f: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon process in the host netns.
struct Daemon {
    child: Option<Child>,
    sock: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let pid = c.id().to_string();
        // `ip netns exec` execs the daemon: the pid is the daemon's.
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        c.wait().unwrap()
    }

    fn sigkill(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn daemon_with(rig: &Rig, exe: &Path, sock: &Path, extra: &[&str]) -> Daemon {
    daemon_at(rig, exe, sock.to_str().unwrap(), sock, extra)
}

/// A daemon given `-socketpath arg`, listening at `sock` (they differ with -hostprefix).
fn daemon_at(rig: &Rig, exe: &Path, arg: &str, sock: &Path, extra: &[&str]) -> Daemon {
    let log = rig.dir.join(format!(
        "daemon-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let child = Command::new("ip")
        .args(["netns", "exec", &rig.host.name])
        .arg(exe)
        // `cnibox dhcp daemon` works as well as the `dhcp` link.
        .args(exe.ends_with("cnibox").then_some("dhcp"))
        .args(["daemon", "-socketpath", arg])
        .args(["-timeout", "2s", "-resendtimeout", "30s"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child: Some(child),
        sock: sock.to_path_buf(),
        log,
    };
    wait_for(|| answers(&d.sock), "the daemon to answer");
    d
}

/// The daemon completes the RPC handshake (it accepts only once its state is loaded).
fn answers(sock: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return false;
    };
    let mut buf = [0u8; 64];
    s.write_all(b"CONNECT /_goRPC_ HTTP/1.0\n\n").is_ok()
        && s.read(&mut buf).is_ok_and(|n| {
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.0 200 Connected to Go RPC")
        })
}

fn our_dhcp(rig: &Rig) -> PathBuf {
    rig.cni_path.join("dhcp")
}

fn daemon(rig: &Rig, extra: &[&str]) -> Daemon {
    daemon_with(rig, &our_dhcp(rig), &rig.dir.join("run/dhcp.sock"), extra)
}

fn conf(sock: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "dnet",
        "type": "dhcp",
        "ipam": {"type": "dhcp", "daemonSocketPath": sock}
    })
}

fn ip_of(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

/// What the main plugin does with the result: put the address on the interface (the
/// lease is then renewed and released by unicast, as on a real node).
fn configure(ns: &Netns, result: &Value) {
    ns.ip(&[
        "addr",
        "add",
        result["ips"][0]["address"].as_str().unwrap(),
        "dev",
        "eth0",
    ]);
}

fn state_file(rig: &Rig) -> Value {
    let b = std::fs::read(rig.dir.join("run/dhcp-leases.json")).unwrap();
    serde_json::from_slice(&b).unwrap()
}

fn state_ids(rig: &Rig) -> Vec<String> {
    state_file(rig)["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["client_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn add_check_del_with_a_real_server() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    let c = conf(&d.sock);
    let r = rig.call("dhcp", "ADD", &c).run().ok().clone();
    let ip = ip_of(&r);
    assert!(r["ips"][0]["address"].as_str().unwrap().ends_with("/24"));
    assert_eq!(r["ips"][0]["gateway"], SERVER);
    // Classless routes (121) replace the router's default route, as RFC 3442 says.
    assert_eq!(
        r["routes"],
        json!([{"dst": "10.200.0.0/16", "gw": SERVER}, {"dst": "0.0.0.0/0", "gw": SERVER}])
    );
    // DNS servers (6) and domain (15): the reference drops them.
    assert_eq!(
        r["dns"],
        json!({"nameservers": ["10.99.0.53", "10.99.0.54"], "domain": "example.test"})
    );
    // The server holds it, under the reference's client-id <containerID>/<network>/<ifname>.
    let l = leases(&srv);
    let client_id: String = "\0ctr1/dnet/eth0"
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        l.iter().any(|(_, i, id)| *i == ip && *id == client_id),
        "{l:?}"
    );
    configure(&rig.cont, &r);

    // A second ADD answers the lease held; CHECK verifies it.
    let again = rig.call("dhcp", "ADD", &c).run().ok().clone();
    assert_eq!(ip_of(&again), ip);
    rig.call("dhcp", "CHECK", &with_prev(&c, &r)).run().ok();
    assert_eq!(leases(&srv).len(), 1, "neither acquired a second lease");

    rig.call("dhcp", "DEL", &c).run().ok();
    wait_for(|| lease_of(&srv, &ip).is_none(), "the release");
    assert!(state_ids(&rig).is_empty());
    // CHECK now fails without acquiring anything (the reference's would acquire).
    let out = rig.call("dhcp", "CHECK", &with_prev(&c, &r)).run();
    assert!(out.err_text().contains("no lease"), "{}", out.stdout);
    assert!(leases(&srv).is_empty());
    // DEL again: nothing to release, still success.
    rig.call("dhcp", "DEL", &c).run().ok();
}

#[test]
fn results_in_every_version() {
    let rig = Rig::new();
    let _srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    for v in ["0.2.0", "0.3.1", "0.4.0", "1.0.0"] {
        let mut c = conf(&d.sock);
        c["cniVersion"] = json!(v);
        let r = rig.call("dhcp", "ADD", &c).run().ok().clone();
        assert_eq!(r["cniVersion"], v);
        if v == "0.2.0" {
            assert!(r["ip4"]["ip"].is_string(), "{r}");
        } else {
            assert!(r["ips"][0]["address"].is_string(), "{r}");
        }
        rig.call("dhcp", "DEL", &c).run().ok();
    }
}

#[test]
fn lease_is_renewed_at_t1() {
    let rig = Rig::new();
    let srv = server(
        &rig,
        &["--dhcp-option=option:T1,3", "--dhcp-option=option:T2,100"],
    );
    let d = daemon(&rig, &[]);
    let r = rig.call("dhcp", "ADD", &conf(&d.sock)).run().ok().clone();
    configure(&rig.cont, &r);
    let ip = ip_of(&r);
    let first = lease_of(&srv, &ip).unwrap();
    wait_for(
        || lease_of(&srv, &ip).is_some_and(|e| e > first),
        "dnsmasq to record a renewal",
    );
    // dnsmasq writes its file before it answers: the daemon logs the renewal after.
    wait_for(
        || d.log().contains("renewed"),
        "the daemon to log the renewal",
    );
    // Renewing is unicast to the server (RENEWING state), not a broadcast.
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(log.contains(&format!("DHCPREQUEST(br0) {ip}")), "{log}");
}

#[test]
fn lease_is_rebound_by_broadcast_after_t2() {
    let rig = Rig::new();
    let srv = server(
        &rig,
        &["--dhcp-option=option:T1,2", "--dhcp-option=option:T2,4"],
    );
    // The server's host drops unicast to it (renewing at T1 gets no answer), so after T2 the
    // daemon must rebind by broadcast. DISCOVER and REQUEST are broadcasts: they pass.
    rig.host.run(&["nft", "add", "table", "inet", "t"]);
    rig.host.run(&[
        "nft",
        "add",
        "chain",
        "inet",
        "t",
        "inp",
        "{ type filter hook input priority 0 ; }",
    ]);
    rig.host.run(&[
        "nft", "add", "rule", "inet", "t", "inp", "ip", "daddr", SERVER, "udp", "dport", "67",
        "drop",
    ]);
    let d = daemon(&rig, &[]);
    let r = rig.call("dhcp", "ADD", &conf(&d.sock)).run().ok().clone();
    configure(&rig.cont, &r);
    let ip = ip_of(&r);
    let first = lease_of(&srv, &ip).unwrap();
    wait_for(
        || lease_of(&srv, &ip).is_some_and(|e| e > first),
        "dnsmasq to record the rebinding",
    );
    let log = d.log();
    assert!(log.contains("no answer to DHCPREQUEST (renew)"), "{log}");
    assert!(log.contains("rebinding lease"), "{log}");
}

#[test]
fn hostprefix_is_put_before_the_socket_and_netns_paths() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    // Under the prefix, the container's netns path leads to another netns: the lease
    // must be taken there (by its eth0's MAC).
    let other = rig.new_netns();
    attach(&rig, &other, "vp");
    let prefix = rig.dir.join("hostroot");
    std::fs::create_dir_all(prefix.join("run/netns")).unwrap();
    std::os::unix::fs::symlink(&other.path, prefix.join("run/netns").join(&rig.cont.name)).unwrap();
    let sock = prefix.join("run/cni/dhcp.sock");
    let _d = daemon_at(
        &rig,
        &our_dhcp(&rig),
        "/run/cni/dhcp.sock",
        &sock,
        &["-hostprefix", prefix.to_str().unwrap()],
    );
    let r = rig.call("dhcp", "ADD", &conf(&sock)).run().ok().clone();
    let mac = other.ip_json(&["link", "show", "eth0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&srv.leases).unwrap();
    assert!(text.contains(&format!("{mac} {}", ip_of(&r))), "{text}");
    assert!(prefix.join("run/cni/dhcp-leases.json").exists());
}

#[test]
fn daemon_survives_garbage_on_its_socket() {
    use std::io::{Read, Write};
    let rig = Rig::new();
    let _srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    let mut s = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 405"), "{answer:?}");
    for junk in [
        &b"\xff\xff\xff\xff"[..],
        b"\x05\x01\x02",
        b"\x7f\x81",
        &[0x03, 0x81, 0x03, 0x04],
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
        s.write_all(b"CONNECT /_goRPC_ HTTP/1.0\n\n").unwrap();
        s.write_all(junk).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.0 200 Connected to Go RPC"));
    }
    rig.call("dhcp", "ADD", &conf(&d.sock)).run().ok();
}

#[test]
fn daemon_killed_and_restarted_keeps_and_renews_the_lease() {
    let rig = Rig::new();
    let srv = server(
        &rig,
        &["--dhcp-option=option:T1,3", "--dhcp-option=option:T2,100"],
    );
    let mut d = daemon(&rig, &[]);
    let c = conf(&d.sock);
    let r = rig.call("dhcp", "ADD", &c).run().ok().clone();
    configure(&rig.cont, &r);
    let ip = ip_of(&r);
    assert_eq!(state_ids(&rig), ["ctr1/dnet/eth0"]);
    d.sigkill();
    let first = lease_of(&srv, &ip).unwrap();

    let d2 = daemon(&rig, &[]);
    assert!(d2.log().contains("resuming lease"), "{}", d2.log());
    wait_for(
        || lease_of(&srv, &ip).is_some_and(|e| e > first),
        "the restarted daemon to renew",
    );
    // It holds the lease (CHECK asks without acquiring) and releases it on DEL.
    rig.call("dhcp", "CHECK", &with_prev(&c, &r)).run().ok();
    rig.call("dhcp", "DEL", &c).run().ok();
    wait_for(|| lease_of(&srv, &ip).is_none(), "the release");
    assert_eq!(leases(&srv).len(), 0);
}

#[test]
fn a_lease_whose_netns_is_gone_is_forgotten_on_restart() {
    let mut rig = Rig::new();
    let _srv = server(&rig, &[]);
    let mut d = daemon(&rig, &[]);
    let c = conf(&d.sock);
    rig.call("dhcp", "ADD", &c).run().ok();
    assert_eq!(state_ids(&rig).len(), 1);
    d.sigkill();
    rig.drop_cont();
    let d2 = daemon(&rig, &[]);
    assert!(d2.log().contains("lease forgotten"), "{}", d2.log());
    assert!(state_ids(&rig).is_empty(), "{}", state_file(&rig));
}

#[test]
fn a_lease_whose_link_is_gone_is_forgotten_while_running() {
    let rig = Rig::new();
    let _srv = server(&rig, &["--dhcp-option=option:T1,2"]);
    let d = daemon(&rig, &[]);
    rig.call("dhcp", "ADD", &conf(&d.sock)).run().ok();
    assert_eq!(state_ids(&rig).len(), 1);
    rig.cont.ip(&["link", "del", "eth0"]);
    wait_for(|| state_ids(&rig).is_empty(), "the lease to be forgotten");
    assert!(
        d.log().contains("is gone, forgetting the lease"),
        "{}",
        d.log()
    );
}

#[test]
fn daemon_down_add_is_code_11_status_50_del_succeeds() {
    let rig = Rig::new();
    let sock = rig.dir.join("run/dhcp.sock");
    let c = conf(&sock);
    rig.call("dhcp", "ADD", &c)
        .run()
        .fails_with(11, "the dhcp daemon does not answer");
    rig.call("dhcp", "STATUS", &c)
        .run()
        .fails_with(50, "the dhcp daemon does not answer");
    let del = rig.call("dhcp", "DEL", &c).run();
    del.ok();
    assert!(del.stderr.contains("nothing to release"), "{}", del.stderr);
    // With the daemon up, STATUS is fine.
    let _srv = server(&rig, &[]);
    let _d = daemon(&rig, &[]);
    rig.call("dhcp", "STATUS", &c).run().ok();
}

#[test]
fn no_server_answers_is_code_11() {
    let rig = Rig::new();
    rig.host.ip(&["link", "add", BRIDGE, "type", "bridge"]);
    rig.host.ip(&["link", "set", BRIDGE, "up"]);
    attach(&rig, &rig.cont, "vc0");
    let d = daemon(&rig, &["-timeout", "300ms", "-resendtimeout", "2s"]);
    let out = rig.call("dhcp", "ADD", &conf(&d.sock)).run();
    out.fails_with(11, "no DHCPOFFER received on eth0");
    assert!(state_ids(&rig).is_empty());
}

#[test]
fn sixteen_concurrent_adds_get_sixteen_leases() {
    let rig = Rig::new();
    let srv = server(
        &rig,
        &["--dhcp-option=option:T1,4", "--dhcp-option=option:T2,100"],
    );
    let d = daemon(&rig, &[]);
    let c = conf(&d.sock);
    let conts: Vec<Netns> = (0..16)
        .map(|i| {
            let ns = rig.new_netns();
            attach(&rig, &ns, &format!("vx{i}"));
            ns
        })
        .collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = conts
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let c = &c;
                let rig = &rig;
                s.spawn(move || {
                    rig.call("dhcp", "ADD", c)
                        .id(&format!("c{i}"))
                        .netns(ns.path.to_str().unwrap())
                        .run()
                        .ok()
                        .clone()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = results.iter().map(ip_of).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 16, "{ips:?}");
    assert_eq!(leases(&srv).len(), 16);
    assert_eq!(state_ids(&rig).len(), 16);
    for (ns, r) in conts.iter().zip(&results) {
        configure(ns, r);
    }
    // All maintained: every lease is renewed.
    let first: Vec<(String, u64)> = ips
        .iter()
        .map(|ip| (ip.clone(), lease_of(&srv, ip).unwrap()))
        .collect();
    wait_for(
        || {
            first
                .iter()
                .all(|(ip, e)| lease_of(&srv, ip).is_some_and(|n| n > *e))
        },
        "all 16 leases to be renewed",
    );
}

#[test]
fn a_repeated_add_never_gets_a_second_lease() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    let c = conf(&d.sock);
    let outs: Vec<CniOut> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| rig.call("dhcp", "ADD", &c).run()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = Vec::new();
    for o in &outs {
        if o.code == 0 {
            ips.push(ip_of(o.ok()));
        } else {
            // Still being acquired by the first: try again later.
            o.fails_with(11, "is being acquired already");
        }
    }
    ips.dedup();
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert_eq!(leases(&srv).len(), 1);
    // dnsmasq hands one client-id the same address anyway: the daemon must also have
    // run one acquisition only (not two lease threads for one attachment).
    assert_eq!(d.log().matches("acquiring lease").count(), 1, "{}", d.log());
}

#[test]
fn gc_releases_leases_not_in_the_valid_list() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    let c = conf(&d.sock);
    let other = rig.new_netns();
    attach(&rig, &other, "vo");
    let keep = rig.call("dhcp", "ADD", &c).run().ok().clone();
    let gone = rig
        .call("dhcp", "ADD", &c)
        .id("ctr2")
        .netns(other.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    configure(&rig.cont, &keep);
    configure(&other, &gone);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "eth0"}]);
    rig.call("dhcp", "GC", &gc).run().ok();
    wait_for(|| lease_of(&srv, &ip_of(&gone)).is_none(), "the GC release");
    assert!(lease_of(&srv, &ip_of(&keep)).is_some());
    assert_eq!(state_ids(&rig), ["ctr1/dnet/eth0"]);
}

#[test]
fn broadcast_flag_asks_for_broadcast_answers() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &["-broadcast"]);
    rig.call("dhcp", "ADD", &conf(&d.sock)).run().ok();
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(log.contains("broadcast response"), "{log}");
    drop(d);
    // Without it, dnsmasq answers by unicast.
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    rig.call("dhcp", "ADD", &conf(&d.sock)).run().ok();
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(!log.contains("broadcast response"), "{log}");
}

#[test]
fn provide_and_request_options_reach_the_server() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    let mut c = conf(&d.sock);
    c["ipam"]["provide"] = json!([
        {"option": "host-name", "fromArg": "K8S_POD_NAME"},
        {"option": "60", "value": "cnibox-test"}
    ]);
    c["ipam"]["request"] = json!([{"skipDefault": false, "option": "42"}]);
    c["ipam"]["priority"] = json!(7);
    let r = rig
        .call("dhcp", "ADD", &c)
        .args("IgnoreUnknown=1;K8S_POD_NAME=mypod")
        .run()
        .ok()
        .clone();
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(log.contains("vendor class: cnibox-test"), "{log}");
    assert!(log.contains("client provides name: mypod"), "{log}");
    // The requested option first, then the reference's defaults, then what we add to
    // fill the result (DNS, domain, classless and static routes).
    assert!(
        log.contains("requested options: 42:ntp-server, 3:router, 1:netmask, 6:dns-server"),
        "{log}"
    );
    let l = leases(&srv);
    assert!(
        std::fs::read_to_string(&srv.leases)
            .unwrap()
            .contains("mypod"),
        "{l:?}"
    );
    assert!(
        r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["priority"] == 7),
        "{r}"
    );
}

#[test]
fn static_routes_33_and_a_default_route_without_classless_routes() {
    let rig = Rig::new();
    let _srv = server_with(
        &rig,
        &["--dhcp-option=option:static-route,192.168.7.0,10.99.0.2,172.16.0.0,10.99.0.3"],
    );
    let d = daemon(&rig, &[]);
    let r = rig.call("dhcp", "ADD", &conf(&d.sock)).run().ok().clone();
    // Option 33 destinations are classful: 192.168.7.0 is /24, 172.16.0.0 is /16.
    assert_eq!(
        r["routes"],
        json!([
            {"dst": "192.168.7.0/24", "gw": "10.99.0.2"},
            {"dst": "172.16.0.0/16", "gw": "10.99.0.3"},
            {"dst": "0.0.0.0/0", "gw": SERVER}
        ])
    );
}

#[test]
fn provide_overrides_the_client_id() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    let mut c = conf(&d.sock);
    c["ipam"]["provide"] = json!([{"option": "dhcp-client-identifier", "value": "my-id"}]);
    rig.call("dhcp", "ADD", &c).run().ok();
    let l = leases(&srv);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].2, "6d:79:2d:69:64", "{l:?}");
}

#[test]
fn sigterm_shuts_down_cleanly_keeping_leases() {
    let rig = Rig::new();
    let _srv = server(&rig, &[]);
    let pid = rig.dir.join("dhcp.pid");
    let mut d = daemon_with(
        &rig,
        Path::new(env!("CARGO_BIN_EXE_cnibox")),
        &rig.dir.join("run/dhcp.sock"),
        &["-pidfile", pid.to_str().unwrap()],
    );
    assert!(pid.exists());
    let meta = std::fs::metadata(rig.dir.join("run")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "socket dir");
    let sock_mode = std::fs::metadata(&d.sock).unwrap().permissions().mode();
    assert_eq!(sock_mode & 0o777, 0o600, "socket");
    rig.call("dhcp", "ADD", &conf(&d.sock)).run().ok();
    let st = d.sigterm();
    assert!(st.success(), "{st:?}: {}", d.log());
    assert!(!d.sock.exists(), "socket removed");
    assert!(!pid.exists(), "pid file removed");
    assert_eq!(
        state_ids(&rig),
        ["ctr1/dnet/eth0"],
        "leases kept for a restart"
    );
}

#[test]
fn socket_activation_uses_the_passed_socket() {
    let rig = Rig::new();
    let _srv = server(&rig, &[]);
    let sock = rig.dir.join("activated.sock");
    let log = rig.dir.join("act.log");
    // A stand-in for systemd: bind and listen, pass it as fd 3 with LISTEN_PID/FDS.
    let script = format!(
        "import socket,os\n\
         s=socket.socket(socket.AF_UNIX); s.bind({sock:?}); s.listen(8)\n\
         os.dup2(s.fileno(),3); os.set_inheritable(3,True)\n\
         os.environ['LISTEN_FDS']='1'; os.environ['LISTEN_PID']=str(os.getpid())\n\
         os.execv({exe:?}, ['dhcp','daemon','-socketpath',{other:?}])\n",
        sock = sock.to_str().unwrap(),
        exe = our_dhcp(&rig).to_str().unwrap(),
        other = rig.dir.join("unused/dhcp.sock").to_str().unwrap(),
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &rig.host.name, "python3", "-c", &script])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _d = Daemon {
        child: Some(child),
        sock: sock.clone(),
        log,
    };
    wait_for(|| answers(&sock), "the activated daemon to answer");
    rig.call("dhcp", "ADD", &conf(&sock)).run().ok();
    // (The lease file lives beside -socketpath, so that directory may exist.)
    let other = rig.dir.join("unused/dhcp.sock");
    assert!(
        std::fs::symlink_metadata(&other).is_err(),
        "it listened at {} too",
        other.display()
    );
}

#[test]
fn install_sh_with_dhcp_units() {
    let rig = Rig::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = rig.dir.join("cni-bin");
    let units = rig.dir.join("units");
    let out = Command::new(root.join("install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_cnibox")])
        .args(["--prefix", rig.dir.join("prefix").to_str().unwrap()])
        .args(["--cni-bin-dir", bin.to_str().unwrap()])
        .arg("--with-dhcp-units")
        .env("SYSTEMD_UNIT_DIR", &units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = std::fs::read_to_string(units.join("cni-dhcp.service")).unwrap();
    let exec = format!("ExecStart={}/dhcp daemon", bin.display());
    assert!(service.lines().any(|l| l == exec), "{service}");
    assert!(bin.join("dhcp").exists());
    let socket = std::fs::read_to_string(units.join("cni-dhcp.socket")).unwrap();
    for line in [
        "ListenStream=/run/cni/dhcp.sock",
        "SocketMode=0600",
        "DirectoryMode=0700",
    ] {
        assert!(socket.lines().any(|l| l == line), "{line} in {socket}");
    }
    // The daemon's flags, Go-style with one dash, are understood.
    let help = Command::new(bin.join("dhcp"))
        .args(["daemon", "-h"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "socketpath",
        "pidfile",
        "hostprefix",
        "timeout",
        "resendmax",
        "resendtimeout",
        "broadcast",
    ] {
        assert!(text.contains(&format!("--{flag}")), "{flag} in {text}");
    }
}

// ---------------------------------------------------------------------------------------
// Cross tests with the reference v1.9.1 (plugin and daemon).

fn go_dhcp() -> PathBuf {
    oracle_dir().join("dhcp")
}

#[test]
fn go_plugin_with_our_daemon() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    let c = conf(&d.sock);
    let r = rig.call("dhcp", "ADD", &c).go().run().ok().clone();
    let ip = ip_of(&r);
    assert!(lease_of(&srv, &ip).is_some());
    // Our daemon's result travels whole through Go's types, DNS included.
    assert_eq!(r["dns"]["nameservers"], json!(["10.99.0.53", "10.99.0.54"]));
    assert_eq!(
        r["routes"][0],
        json!({"dst": "10.200.0.0/16", "gw": SERVER})
    );
    configure(&rig.cont, &r);
    rig.call("dhcp", "CHECK", &with_prev(&c, &r))
        .go()
        .run()
        .ok();
    assert_eq!(leases(&srv).len(), 1);
    rig.call("dhcp", "DEL", &c).go().run().ok();
    wait_for(|| lease_of(&srv, &ip).is_none(), "the release");
}

#[test]
fn our_plugin_with_the_go_daemon() {
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon_with(&rig, &go_dhcp(), &rig.dir.join("go/dhcp.sock"), &[]);
    let c = conf(&d.sock);
    let r = rig.call("dhcp", "ADD", &c).run().ok().clone();
    let ip = ip_of(&r);
    assert!(lease_of(&srv, &ip).is_some());
    assert_eq!(r["ips"][0]["gateway"], SERVER);
    configure(&rig.cont, &r);
    // The Go daemon has no DHCP.Check: our CHECK falls back to Allocate, as the
    // reference's CHECK does (the lease held is answered, nothing new acquired).
    rig.call("dhcp", "CHECK", &with_prev(&c, &r)).run().ok();
    assert_eq!(leases(&srv).len(), 1);
    // A Go daemon has no DHCP.GC: skipped, said on stderr.
    let gc = rig.call("dhcp", "GC", &c).run();
    gc.ok();
    assert!(gc.stderr.contains("has no GC"), "{}", gc.stderr);
    rig.call("dhcp", "DEL", &c).run().ok();
    // The Go daemon got the Release (its DHCPRELEASE leaves from 0.0.0.0 on a raw
    // socket, which dnsmasq ignores: the lease stays in dnsmasq's file until it expires).
    wait_for(
        || d.log().contains("releasing lease"),
        "the Go daemon's release",
    );
}

// ---------------------------------------------------------------------------------------
// Malformed input.

#[derive(serde::Deserialize)]
struct Case {
    what: String,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    args: Option<String>,
    #[serde(default)]
    netns: Option<String>,
    code: i64,
    msg: String,
}

#[test]
fn malformed_inputs_get_the_right_code_and_acquire_nothing() {
    let cases: Vec<Case> =
        serde_json::from_str(include_str!("../testdata/malformed-dhcp.json")).unwrap();
    assert!(cases.len() >= 8);
    let rig = Rig::new();
    let srv = server(&rig, &[]);
    let d = daemon(&rig, &[]);
    let file = rig.dir.join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    for case in &cases {
        let what = &case.what;
        let mut c = conf(&d.sock);
        for (k, v) in case
            .ipam
            .as_ref()
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if k == "oversize" {
                // {"oversize": "value"} stands for a 256-byte value of a provide entry.
                c["ipam"]["provide"] = json!([{"option": "host-name", v.as_str().unwrap(): "x".repeat(256), "fromArg": "X"}]);
                continue;
            }
            c["ipam"][k] = v.clone();
        }
        let mut call = rig.call("dhcp", case.command.as_deref().unwrap_or("ADD"), &c);
        if let Some(a) = &case.args {
            let a = a.replace("{256}", &"y".repeat(256));
            call = call.args(&a);
        }
        match case.netns.as_deref() {
            Some("missing") => call = call.netns(rig.dir.join("nope").to_str().unwrap()),
            Some("file") => call = call.netns(file.to_str().unwrap()),
            Some(o) => panic!("{what}: unknown netns kind {o}"),
            None => {}
        }
        let out = call.run();
        assert_eq!(out.err_code(), case.code, "{what}: {}", out.stdout);
        assert!(
            out.err_text().contains(&case.msg),
            "{what}: {} lacks {:?}",
            out.stdout,
            case.msg
        );
        assert!(leases(&srv).is_empty(), "{what}: acquired a lease");
    }
    assert!(state_ids(&rig).is_empty());
}
