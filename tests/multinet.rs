//! multinet through the built binary: networks from an inventory backend (a small HTTP
//! server on loopback in the rig's host netns) or from a fixed list, attached with the
//! addresses given, detached from the record with the backend gone, rolled back on error.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the backend does with a request.
#[derive(Clone)]
enum Answer {
    /// HTTP status and body.
    Http(u16, String),
    /// Headers promising a body of this many bytes, then that many bytes.
    Huge(usize),
    /// Accept, read the request, never answer.
    Hang,
}

/// A tiny HTTP server on 127.0.0.1 inside a netns, run by a thread that entered it.
struct Backend {
    port: u16,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(ns: &Netns, answer: Answer) -> Backend {
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let nsfile = std::fs::File::open(&ns.path).unwrap();
        let (a, r, s) = (answer.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Only this thread moves: its sockets live in the rig's host netns.
            nix::sched::setns(&nsfile, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            let mut held: Vec<TcpStream> = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut req = Vec::new();
                        let mut b = [0u8; 4096];
                        while !req.ends_with(b"\r\n\r\n") {
                            match c.read(&mut b) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&b[..n]),
                            }
                        }
                        let line = String::from_utf8_lossy(&req)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        r.lock().unwrap().push(line);
                        let ans = a.lock().unwrap().clone();
                        match ans {
                            Answer::Http(status, body) => {
                                let _ = write!(
                                    c,
                                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                            }
                            Answer::Huge(n) => {
                                let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                                let _ = c.write_all(&vec![b' '; n]);
                            }
                            Answer::Hang => held.push(c),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("backend accept: {e}"),
                }
            }
        });
        let port = rx.recv().unwrap();
        Backend {
            port,
            answer,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/networks", self.port)
    }

    fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Stop serving: the port is closed when this returns.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1";

/// The two networks of the tests: a bridge (as a .conflist) and a ptp (as a .conf),
/// neither naming an IPAM, plus a ptp whose config its plugin refuses.
fn conf_dir(rig: &Rig) -> PathBuf {
    let d = rig.dir.join("net.d");
    std::fs::create_dir_all(&d).unwrap();
    let w = |name: &str, v: Value| std::fs::write(d.join(name), v.to_string()).unwrap();
    w(
        "10-bridge.conflist",
        json!({"cniVersion": "1.0.0", "name": "net-bridge",
            "plugins": [{"type": "bridge", "bridge": "mbr0", "isGateway": true}]}),
    );
    w(
        "20-ptp.conf",
        json!({"cniVersion": "1.0.0", "name": "net-ptp", "type": "ptp"}),
    );
    w(
        "30-broken.conf",
        json!({"cniVersion": "1.0.0", "name": "net-broken", "type": "ptp", "mtu": 5}),
    );
    w(
        "35-missing-ipam.conf",
        json!({"cniVersion": "1.0.0", "name": "net-missing-ipam", "type": "ptp",
            "ipam": {"type": "nosuchipam"}}),
    );
    w(
        "40-hostlocal.conf",
        json!({"cniVersion": "1.0.0", "name": "net-hl", "type": "ptp",
            "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": rig.data_dir()}}),
    );
    d
}

fn entry(net: &str, ip: &str, mask: &str, gw: &str, ifname: &str, master: bool) -> Value {
    json!({"type": net, "podIp": ip, "subnetMask": mask, "gateway": gw, "ifName": ifname, "master": master})
}

fn two_networks() -> Vec<Value> {
    vec![
        entry(
            "net-bridge",
            "192.168.1.2",
            "255.255.255.0",
            "192.168.1.1",
            "eth0",
            true,
        ),
        entry(
            "net-ptp",
            "10.9.0.5",
            "255.255.0.0",
            "10.9.0.1",
            "net1",
            false,
        ),
    ]
}

fn answer(data: &[Value]) -> Answer {
    Answer::Http(
        200,
        json!({"code": 0, "message": "ok", "data": data}).to_string(),
    )
}

fn conf(rig: &Rig, extra: Value) -> Value {
    merged(
        json!({"cniVersion": "1.0.0", "name": "multi", "type": "multinet",
            "confDir": conf_dir(rig), "stateDir": rig.dir.join("state")}),
        &extra,
    )
}

fn state_files(rig: &Rig) -> Vec<String> {
    tree(&rig.dir.join("state"))
        .into_iter()
        .filter(|p| std::path::Path::new(p).is_file())
        .collect()
}

/// Both attachments are there, with the addresses the answer gave.
fn assert_attached(rig: &Rig, cont: &Netns) {
    assert!(has_addr(cont, "eth0", "192.168.1.2/24"));
    assert!(has_addr(cont, "net1", "10.9.0.5/16"));
    let r = routes(cont, false);
    assert!(
        r.iter()
            .any(|x| x["dst"] == "default" && x["gateway"] == "192.168.1.1" && x["dev"] == "eth0"),
        "default route through the master's gateway: {r:?}"
    );
    assert!(has_addr(&rig.host, "mbr0", "192.168.1.1/24"));
    assert!(ping(cont, "192.168.1.1"), "bridge gateway");
    assert!(ping(cont, "10.9.0.1"), "ptp host end");
}

fn assert_detached(rig: &Rig, cont: &Netns) {
    assert!(link(cont, "eth0").is_none());
    assert!(link(cont, "net1").is_none());
    let host_veths: Vec<Value> = links(&rig.host)
        .into_iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "veth")
        .collect();
    assert!(host_veths.is_empty(), "{host_veths:?}");
    assert!(state_files(rig).is_empty(), "{:?}", state_files(rig));
}

#[test]
fn backend_networks_attached_and_detached_with_backend_stopped() {
    let rig = Rig::new();
    let mut backend = Backend::start(&rig.host, answer(&two_networks()));
    let c = conf(&rig, json!({"backend": backend.url()}));
    let r = rig
        .call("multinet", "ADD", &c)
        .args(ARGS)
        .run()
        .ok()
        .clone();
    assert_eq!(
        backend.requests(),
        vec!["GET /api/networks?podName=web-1 HTTP/1.1".to_string()]
    );

    // The master's result, the other network's interfaces appended.
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["ips"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["ips"][0]["address"], "192.168.1.2/24");
    assert_eq!(r["ips"][0]["gateway"], "192.168.1.1");
    let ifs = r["interfaces"].as_array().unwrap();
    let idx = r["ips"][0]["interface"].as_u64().unwrap() as usize;
    assert_eq!(ifs[idx]["name"], "eth0");
    assert!(ifs.iter().any(|i| i["name"] == "mbr0"), "{r}");
    assert!(
        ifs.iter()
            .any(|i| i["name"] == "net1" && i["sandbox"] == rig.cont.path.to_str().unwrap()),
        "{r}"
    );
    assert_attached(&rig, &rig.cont);
    rig.call("multinet", "CHECK", &with_prev(&c, &r))
        .args(ARGS)
        .run()
        .ok();

    // CHECK sees every attachment: break the non-master one.
    rig.cont.ip(&["addr", "del", "10.9.0.5/16", "dev", "net1"]);
    let out = rig
        .call("multinet", "CHECK", &with_prev(&c, &r))
        .args(ARGS)
        .run();
    assert!(out.err_text().contains("net-ptp"), "{}", out.stdout);

    // DEL does not need the backend.
    backend.stop();
    rig.call("multinet", "DEL", &c).args(ARGS).run().ok();
    assert_detached(&rig, &rig.cont);
    rig.call("multinet", "DEL", &c).args(ARGS).run().ok();
}

#[test]
fn fixed_list_instead_of_a_backend() {
    let rig = Rig::new();
    let log = rig.dir.join("multinet.log");
    let c = conf(&rig, json!({"networks": two_networks(), "logFile": log}));
    let r = rig.call("multinet", "ADD", &c).run().ok().clone();
    assert_eq!(r["ips"][0]["address"], "192.168.1.2/24");
    assert_attached(&rig, &rig.cont);
    // A second ADD for the same container would lose track of the first: refused.
    rig.call("multinet", "ADD", &c)
        .run()
        .fails_with(4, "already has multinet attachments");
    assert_attached(&rig, &rig.cont);
    // DEL works from the record: the network configs may have changed or gone since.
    std::fs::remove_dir_all(rig.dir.join("net.d")).unwrap();
    rig.call("multinet", "DEL", &c).run().ok();
    assert_detached(&rig, &rig.cont);
    // The attach/detach lines share the operation log with the harness's line per call.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for want in [
        "ctr1: attached network \"net-bridge\" as eth0",
        "ctr1: detached network \"net-ptp\" (net1)",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l["applet"] == "multinet" && l["level"] == "info" && l["msg"] == want),
            "{want} not in the log: {text}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["command"] == "DEL" && l["ok"] == true),
        "no line for the DEL call: {text}"
    );
}

#[test]
fn del_after_the_netns_is_gone() {
    let mut rig = Rig::new();
    let c = conf(&rig, json!({"networks": two_networks()}));
    rig.call("multinet", "ADD", &c).run().ok();
    let path = rig.cont.path.to_str().unwrap().to_string();
    rig.drop_cont();
    rig.call("multinet", "DEL", &c).netns(&path).run().ok();
    rig.call("multinet", "DEL", &c).netns("").run().ok();
    // (The host ends of the veths go with the netns, when the kernel gets to it.)
    assert!(state_files(&rig).is_empty(), "{:?}", state_files(&rig));
}

#[test]
fn a_network_with_its_own_ipam_keeps_it() {
    let rig = Rig::new();
    let c = conf(
        &rig,
        json!({"networks": [
            entry("net-bridge", "192.168.1.2", "255.255.255.0", "192.168.1.1", "eth0", true),
            {"type": "net-hl", "ifName": "net1"}]}),
    );
    rig.call("multinet", "ADD", &c).run().ok();
    let a = addrs(&rig.cont, "net1");
    assert!(
        a.iter()
            .any(|x| x["local"].as_str().unwrap().starts_with("10.77.0.")),
        "host-local's address: {a:?}"
    );
    rig.call("multinet", "DEL", &c).run().ok();
    assert!(reservations(&rig.data_dir().join("net-hl")).is_empty());
    assert_detached(&rig, &rig.cont);
}

#[test]
fn failing_network_rolls_back_the_ones_attached() {
    let rig = Rig::new();
    // The two good networks first, then one whose config is refused (its "mtu").
    let mut networks = two_networks();
    networks.push(entry(
        "net-broken",
        "10.10.0.5",
        "255.255.0.0",
        "10.10.0.1",
        "net2",
        false,
    ));
    let backend = Backend::start(&rig.host, answer(&networks));
    let c = conf(&rig, json!({"backend": backend.url()}));
    rig.call("multinet", "ADD", &c)
        .args(ARGS)
        .run()
        .fails_with(7, "\"mtu\"");
    assert_detached(&rig, &rig.cont);
}

#[test]
fn backend_errors_attach_nothing() {
    let rig = Rig::new();
    let backend = Backend::start(&rig.host, Answer::Hang);
    let c = conf(&rig, json!({"backend": backend.url(), "timeout": 1}));
    let ok = |d: &[Value]| json!({"code": 0, "data": d}).to_string();
    let cases: Vec<(Answer, i64, String)> = vec![
        (Answer::Hang, 11, "no complete answer within 1s".into()),
        (
            Answer::Http(200, "<html>busy</html>".into()),
            6,
            "not JSON".into(),
        ),
        (Answer::Huge(2 << 20), 6, "larger than 1048576 bytes".into()),
        (Answer::Http(503, "down".into()), 11, "HTTP 503".into()),
        (Answer::Http(404, "".into()), 999, "HTTP 404".into()),
        (
            Answer::Http(
                200,
                json!({"code": 1, "message": "pod unknown"}).to_string(),
            ),
            999,
            "refused pod \"web-1\": code 1: pod unknown".into(),
        ),
        (
            Answer::Http(200, json!({"code": 0, "data": [{"type": 5}]}).to_string()),
            6,
            "\"type\" must be a string".into(),
        ),
        (
            Answer::Http(
                200,
                ok(&[entry("nosuch", "10.0.0.2", "24", "", "eth0", true)]),
            ),
            7,
            "network \"nosuch\"".into(),
        ),
        (
            Answer::Http(
                200,
                ok(&[
                    entry("net-bridge", "192.168.1.2", "24", "", "eth0", true),
                    entry("net-ptp", "10.9.0.5", "16", "", "net1", true),
                ]),
            ),
            6,
            "2 entries are the master".into(),
        ),
    ];
    for (a, code, want) in cases {
        backend.set(a);
        rig.call("multinet", "ADD", &c)
            .args(ARGS)
            .run()
            .fails_with(code, &want);
        assert_detached(&rig, &rig.cont);
    }
    // No pod name to ask about.
    rig.call("multinet", "ADD", &c)
        .args("IgnoreUnknown=1")
        .run()
        .fails_with(4, "K8S_POD_NAME");
}

#[test]
fn unreachable_backend_is_try_again_later() {
    let rig = Rig::new();
    let mut backend = Backend::start(&rig.host, answer(&two_networks()));
    let c = conf(&rig, json!({"backend": backend.url()}));
    backend.stop();
    rig.call("multinet", "ADD", &c)
        .args(ARGS)
        .run()
        .fails_with(11, "cannot connect");
}

#[test]
fn gc_detaches_containers_no_longer_valid() {
    let rig = Rig::new();
    let c = merged(
        conf(&rig, json!({"networks": two_networks()})),
        &json!({"cniVersion": "1.1.0"}),
    );
    let c2 = rig.add_cont();
    rig.call("multinet", "ADD", &c).run().ok();
    // The second container on other addresses of the same networks.
    let c_other = merged(
        c.clone(),
        &json!({"networks": [
            entry("net-bridge", "192.168.1.3", "255.255.255.0", "192.168.1.1", "eth0", true),
            entry("net-ptp", "10.9.0.6", "255.255.0.0", "10.9.0.1", "net1", false)]}),
    );
    rig.call("multinet", "ADD", &c_other)
        .id("ctr2")
        .netns(c2.path.to_str().unwrap())
        .run()
        .ok();
    let gc = merged(
        c.clone(),
        &json!({"cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]}),
    );
    rig.call("multinet", "GC", &gc).run().ok();
    assert!(link(&c2, "eth0").is_none() && link(&c2, "net1").is_none());
    assert!(has_addr(&rig.cont, "eth0", "192.168.1.2/24"), "ctr1 kept");
    rig.call("multinet", "DEL", &c).run().ok();
    assert_detached(&rig, &rig.cont);
}

#[test]
fn config_is_checked_first() {
    let rig = Rig::new();
    for (extra, want) in [
        (json!({}), "one of \"backend\""),
        (
            json!({"backend": "http://127.0.0.1:1/", "networks": []}),
            "exclude each other",
        ),
        (
            json!({"backend": "https://inventory/"}),
            "not an http:// URL",
        ),
        (
            json!({"backend": "http://127.0.0.1:1/", "timeout": 0}),
            "\"timeout\"",
        ),
        (
            json!({"networks": two_networks(), "logLevel": "loud"}),
            "\"logLevel\"",
        ),
        (
            json!({"networks": [{"type": "net-ptp", "ifName": "eth0", "master": true}]}),
            "needs \"podIp\"",
        ),
        (
            json!({"networks": [
                entry("net-bridge", "192.168.1.2", "24", "192.168.1.1", "eth0", true),
                {"type": "net-missing-ipam", "ifName": "net1"}]}),
            "failed to find plugin \"nosuchipam\"",
        ),
    ] {
        rig.call("multinet", "ADD", &conf(&rig, extra))
            .run()
            .fails_with(7, want);
        assert_detached(&rig, &rig.cont);
    }
}

#[test]
fn upstream_go_plugins_from_bin_dir() {
    // The same two networks run by upstream's Go plugins v1.9.1, exec'd from binDir.
    let rig = Rig::new();
    let c = conf(
        &rig,
        json!({"networks": two_networks(), "binDir": oracle_dir()}),
    );
    rig.call("multinet", "ADD", &c).run().ok();
    assert_attached(&rig, &rig.cont);
    rig.call("multinet", "DEL", &c).run().ok();
    assert_detached(&rig, &rig.cont);
}

#[test]
fn injected_static_ipam() {
    // A recording plugin in binDir shows the exact config a network is run with.
    let rig = Rig::new();
    let bin = rig.dir.join("extbin");
    std::fs::create_dir_all(&bin).unwrap();
    let p = bin.join("recorder");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\ncat > {}/recorded-$CNI_IFNAME-$CNI_COMMAND\necho '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[{{\"name\":\"'$CNI_IFNAME'\"}}]}}'\n",
            rig.dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = conf_dir(&rig);
    std::fs::write(
        d.join("50-rec.conf"),
        json!({"cniVersion": "1.0.0", "name": "net-rec", "type": "recorder", "extra": 1})
            .to_string(),
    )
    .unwrap();
    let c = conf(
        &rig,
        json!({"binDir": bin, "networks": [
            entry("net-rec", "10.5.0.2", "255.255.255.0", "10.5.0.1", "eth0", true),
            entry("net-rec", "fd00::2", "64", "fd00::1", "net1", false)]}),
    );
    let r = rig.call("multinet", "ADD", &c).run().ok().clone();
    let names: Vec<&str> = r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["eth0", "net1"],
        "master's result, then the others' interfaces"
    );
    let read = |f: &str| -> Value {
        serde_json::from_slice(&std::fs::read(rig.dir.join(f)).unwrap()).unwrap()
    };
    let master = read("recorded-eth0-ADD");
    assert_eq!(master["extra"], 1);
    assert_eq!(master["name"], "net-rec");
    assert_eq!(
        master["ipam"],
        json!({"type": "static",
            "addresses": [{"address": "10.5.0.2/24", "gateway": "10.5.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.5.0.1"}]})
    );
    assert_eq!(
        read("recorded-net1-ADD")["ipam"],
        json!({"type": "static",
            "addresses": [{"address": "fd00::2/64", "gateway": "fd00::1"}],
            "routes": []}),
        "no default route for a non-master"
    );
    rig.call("multinet", "DEL", &c).run().ok();
    // DEL runs the recorded configs.
    assert_eq!(
        read("recorded-net1-DEL")["ipam"],
        read("recorded-net1-ADD")["ipam"]
    );
    assert!(rig.dir.join("recorded-eth0-DEL").exists());
    assert!(state_files(&rig).is_empty());
}

#[test]
fn status_asks_every_listed_network() {
    let rig = Rig::new();
    let d = conf_dir(&rig);
    std::fs::write(
        d.join("60-v11.conflist"),
        json!({"cniVersion": "1.1.0", "name": "net-v11",
            "plugins": [{"type": "bridge", "bridge": "mbr1",
                "ipam": {"type": "host-local", "subnet": "10.78.0.0/24", "dataDir": rig.data_dir()}}]})
        .to_string(),
    )
    .unwrap();
    let c = |net: &str| {
        conf(
            &rig,
            json!({"cniVersion": "1.1.0", "networks": [{"type": net, "ifName": "eth0", "master": true}]}),
        )
    };
    rig.call("multinet", "STATUS", &c("net-v11")).run().ok();
    // The network's plugins are asked: a bridge whose IPAM plugin is missing is not ready.
    std::fs::write(
        d.join("70-noipam.conflist"),
        json!({"cniVersion": "1.1.0", "name": "net-noipam",
            "plugins": [{"type": "bridge", "bridge": "mbr2", "ipam": {"type": "nosuchipam"}}]})
        .to_string(),
    )
    .unwrap();
    rig.call("multinet", "STATUS", &c("net-noipam"))
        .run()
        .fails_with(7, "nosuchipam");
    rig.call("multinet", "STATUS", &c("nosuch"))
        .run()
        .fails_with(7, "network \"nosuch\"");
}

#[test]
fn del_needs_only_the_record() {
    let rig = Rig::new();
    let c = conf(&rig, json!({"networks": two_networks()}));
    rig.call("multinet", "ADD", &c).run().ok();
    // A config ADD would refuse (both sources, a bad URL, a bad level) still deletes.
    let bad = merged(
        c.clone(),
        &json!({"backend": "https://x/", "logLevel": "loud", "timeout": -1}),
    );
    rig.call("multinet", "DEL", &bad).run().ok();
    assert_detached(&rig, &rig.cont);

    // An unreadable record cannot be used: it is dropped, DEL succeeds.
    let dir = rig.dir.join("state/multi");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ctr1.json"), "{not json").unwrap();
    rig.call("multinet", "DEL", &c).run().ok();
    assert!(state_files(&rig).is_empty(), "{:?}", state_files(&rig));
}
