//! bandwidth through the built binary (§2.13, §4.13 of the reference notes): the qdiscs
//! and filter read back with `tc -j`, a bounded throughput check between the test's own
//! namespaces, the ifb naming (reference name, a second interface, cross-DEL with the Go
//! plugin v1.9.1 both ways), rollback of a failed ADD, GC, and a malformed-input table.
//!
//! Each test makes its own veth pair between the rig's "host" and container namespaces
//! and hands the plugin a prevResult naming it, as a veth-based main plugin would.

mod common;

use common::*;
use serde_json::{json, Value};

/// A veth `host_if` (host) <-> `ifname` (container) with 10.77.<n>.1/.2, both up.
fn veth(rig: &Rig, cont: &Netns, host_if: &str, ifname: &str, n: u8) {
    rig.host.ip(&[
        "link", "add", "name", host_if, "type", "veth", "peer", "name", ifname, "netns", &cont.name,
    ]);
    rig.host
        .ip(&["addr", "add", &format!("10.77.{n}.1/24"), "dev", host_if]);
    cont.ip(&["addr", "add", &format!("10.77.{n}.2/24"), "dev", ifname]);
    rig.host.ip(&["link", "set", host_if, "up"]);
    cont.ip(&["link", "set", ifname, "up"]);
}

fn conf(cont: &Netns, host_if: &str, ifname: &str, limits: Value) -> Value {
    merged(
        json!({"cniVersion": "1.0.0", "name": "bwnet", "type": "bandwidth",
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": host_if}, {"name": ifname, "sandbox": cont.path}],
                "ips": [{"address": "10.77.0.2/24", "interface": 1}]}}),
        &limits,
    )
}

fn all_limits() -> Value {
    json!({"ingressRate": 1000000, "ingressBurst": 80000, "egressRate": 2000000, "egressBurst": 160000})
}

/// `tc -j qdisc show` of a namespace, without counters and the kernel's default qdiscs,
/// with ifb names replaced (they are compared separately).
fn qdiscs(ns: &Netns) -> Vec<Value> {
    let out = ns.run(&["tc", "-j", "qdisc", "show"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|q| {
            !["noqueue", "noop", "pfifo_fast", "mq", "fq_codel"]
                .contains(&q["kind"].as_str().unwrap_or(""))
        })
        .map(|q| {
            let mut q = q.clone();
            let o = q.as_object_mut().unwrap();
            o.remove("refcnt");
            if o["dev"].as_str().unwrap_or("").starts_with("bwp") {
                o.insert("dev".into(), json!("<ifb>"));
            }
            q
        })
        .collect()
}

/// The u32 filters under `ffff:` of `dev`: (pref, protocol, flowid, first action's
/// kind, direction, target device, control action).
fn redirect_filters(ns: &Netns, dev: &str) -> Vec<Value> {
    tc_filters(ns, dev, "ingress")
        .iter()
        .filter(|f| f["options"]["actions"].is_array())
        .map(|f| {
            let a = &f["options"]["actions"][0];
            json!([
                f["pref"],
                f["protocol"],
                f["options"]["flowid"],
                a["kind"],
                a["mirred_action"],
                a["direction"],
                a["to_dev"],
                a["control_action"]["type"]
            ])
        })
        .collect()
}

fn ifbs(ns: &Netns) -> Vec<String> {
    let v = ns.ip_json(&["-d", "link", "show", "type", "ifb"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn add_sets_the_qdiscs_check_passes_del_removes_the_ifb() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    let c = conf(&rig.cont, "hv0", "eth0", all_limits());
    let r = rig.call("bandwidth", "ADD", &c).run().ok().clone();
    // prevResult plus the ifb, with its MAC, no sandbox
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "{r}");
    assert_eq!(
        ifs[2]["name"], "bwpea62040b30ca",
        "the reference's name: {r}"
    );
    assert!(ifs[2]["mac"].as_str().unwrap().len() == 17 && ifs[2].get("sandbox").is_none());
    assert_eq!(r["ips"], c["prevResult"]["ips"]);

    let q = qdiscs(&rig.host);
    let hv0_tbf = json!({"kind": "tbf", "handle": "1:", "dev": "hv0", "root": true,
        "options": {"rate": 125000, "burst": 10000, "lat": 25000}});
    let ifb_tbf = json!({"kind": "tbf", "handle": "1:", "dev": "<ifb>", "root": true,
        "options": {"rate": 250000, "burst": 20000, "lat": 25000}});
    let ingress = json!({"kind": "ingress", "handle": "ffff:", "dev": "hv0", "parent": "ffff:fff1", "options": {}});
    assert!(q.contains(&hv0_tbf), "{q:?}");
    assert!(q.contains(&ifb_tbf), "{q:?}");
    assert!(q.contains(&ingress), "{q:?}");
    let link = link(&rig.host, "bwpea62040b30ca").unwrap();
    assert_eq!(link["mtu"], 1500);
    assert!(
        link.get("txqlen").is_none_or(|t| t == 0),
        "txqueuelen 0: {link}"
    );
    assert_eq!(
        redirect_filters(&rig.host, "hv0"),
        vec![json!([
            1,
            "all",
            "1:1",
            "mirred",
            "redirect",
            "egress",
            "bwpea62040b30ca",
            "stolen"
        ])]
    );

    let cc = with_prev(&c, &r);
    rig.call("bandwidth", "CHECK", &cc).run().ok();
    // CHECK sees a changed rate
    let mut other = cc.clone();
    other["egressRate"] = json!(3000000);
    rig.call("bandwidth", "CHECK", &other)
        .run()
        .fails_with(999, "Rate doesn't match");

    rig.call("bandwidth", "DEL", &cc).run().ok();
    assert!(ifbs(&rig.host).is_empty());
    rig.call("bandwidth", "CHECK", &cc)
        .run()
        .fails_with(999, "get ifb device");
    // idempotent, and fine without a netns or with a config ADD would refuse
    rig.call("bandwidth", "DEL", &cc).run().ok();
    rig.call(
        "bandwidth",
        "DEL",
        &merged(cc.clone(), &json!({"egressBurst": 0})),
    )
    .netns("/run/netns/no-such-netns")
    .run()
    .ok();
}

#[test]
fn ingress_only_or_egress_only() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    let c = conf(
        &rig.cont,
        "hv0",
        "eth0",
        json!({"ingressRate": 800000, "ingressBurst": 8000}),
    );
    let r = rig.call("bandwidth", "ADD", &c).run().ok().clone();
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
    assert!(ifbs(&rig.host).is_empty());
    let q = qdiscs(&rig.host);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["options"]["rate"], 100000);

    let cont2 = rig.add_cont();
    veth(&rig, &cont2, "hv1", "eth0", 1);
    let c = conf(
        &cont2,
        "hv1",
        "eth0",
        json!({"egressRate": 800000, "egressBurst": 8000}),
    );
    rig.call("bandwidth", "ADD", &c)
        .id("ctr2")
        .netns(cont2.path.to_str().unwrap())
        .run()
        .ok();
    assert_eq!(ifbs(&rig.host).len(), 1);
    assert!(
        !qdiscs(&rig.host)
            .iter()
            .any(|q| q["dev"] == "hv1" && q["kind"] == "tbf"),
        "no TBF on the veth for egress only"
    );
}

/// Limits from `runtimeConfig.bandwidth`, and the top-level keys winning over it.
#[test]
fn runtime_config_and_precedence() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    let c = conf(
        &rig.cont,
        "hv0",
        "eth0",
        json!({"runtimeConfig": {"bandwidth": {"ingressRate": 1600000, "ingressBurst": 16000}}}),
    );
    rig.call("bandwidth", "ADD", &c).run().ok();
    assert_eq!(qdiscs(&rig.host)[0]["options"]["rate"], 200000);
    rig.host.run(&["tc", "qdisc", "del", "dev", "hv0", "root"]);
    // any top-level key wins, its missing keys count as 0
    let c = merged(c, &json!({"ingressRate": 800000, "ingressBurst": 8000}));
    rig.call("bandwidth", "ADD", &c).run().ok();
    assert_eq!(qdiscs(&rig.host)[0]["options"]["rate"], 100000);
}

/// No limits: prevResult passes through; without one an empty result (the reference
/// panics).
#[test]
fn no_limits_is_a_no_op() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    let c = conf(&rig.cont, "hv0", "eth0", json!({}));
    let r = rig.call("bandwidth", "ADD", &c).run().ok().clone();
    assert_eq!(r["interfaces"], c["prevResult"]["interfaces"]);
    let mut bare = c.clone();
    bare.as_object_mut().unwrap().remove("prevResult");
    let r = rig.call("bandwidth", "ADD", &bare).run().ok().clone();
    assert_eq!(r["cniVersion"], "1.0.0");
    assert!(qdiscs(&rig.host).is_empty());
}

/// Two interfaces of one container: the reference would collide on one ifb name. The
/// first gets the reference's name, the second its own; each DEL removes only its own.
#[test]
fn two_interfaces_get_two_ifbs() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    veth(&rig, &rig.cont, "hv1", "eth1", 1);
    let c0 = conf(&rig.cont, "hv0", "eth0", all_limits());
    let c1 = conf(&rig.cont, "hv1", "eth1", all_limits());
    rig.call("bandwidth", "ADD", &c0).run().ok();
    let r1 = rig
        .call("bandwidth", "ADD", &c1)
        .ifname("eth1")
        .run()
        .ok()
        .clone();
    let mut names = ifbs(&rig.host);
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"bwpea62040b30ca".to_string()));
    let second = r1["interfaces"][2]["name"].as_str().unwrap().to_string();
    assert_ne!(second, "bwpea62040b30ca");
    assert_eq!(redirect_filters(&rig.host, "hv1")[0][6], second);
    rig.call("bandwidth", "CHECK", &with_prev(&c1, &r1))
        .ifname("eth1")
        .run()
        .ok();
    rig.call("bandwidth", "DEL", &c1).ifname("eth1").run().ok();
    assert_eq!(ifbs(&rig.host), vec!["bwpea62040b30ca".to_string()]);
    rig.call("bandwidth", "DEL", &c0).run().ok();
    assert!(ifbs(&rig.host).is_empty());
}

/// Same qdiscs, filter target and result as the Go plugin v1.9.1, and each side's DEL
/// removes the other's ifb.
#[test]
fn differential_against_v1_9_1() {
    let go = Rig::new();
    let ours = Rig::new();
    for rig in [&go, &ours] {
        veth(rig, &rig.cont, "hv0", "eth0", 0);
    }
    let cg = conf(&go.cont, "hv0", "eth0", all_limits());
    let co = conf(&ours.cont, "hv0", "eth0", all_limits());
    let rg = go.call("bandwidth", "ADD", &cg).go().run().ok().clone();
    let ro = ours.call("bandwidth", "ADD", &co).run().ok().clone();
    let names = |r: &Value| -> Vec<Value> {
        r["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].clone())
            .collect()
    };
    assert_eq!(names(&rg), names(&ro));
    assert_eq!(qdiscs(&go.host), qdiscs(&ours.host));
    // The reference sends the redirect twice (the second never runs); the first is ours.
    assert_eq!(
        redirect_filters(&go.host, "hv0")[0],
        redirect_filters(&ours.host, "hv0")[0]
    );
    assert_eq!(
        link(&go.host, "bwpea62040b30ca").unwrap()["mtu"],
        link(&ours.host, "bwpea62040b30ca").unwrap()["mtu"]
    );
    // each CHECKs the other's
    go.call("bandwidth", "CHECK", &with_prev(&cg, &rg))
        .run()
        .ok();
    ours.call("bandwidth", "CHECK", &with_prev(&co, &ro))
        .go()
        .run()
        .ok();
    // cross-DEL
    go.call("bandwidth", "DEL", &cg).run().ok();
    ours.call("bandwidth", "DEL", &co).go().run().ok();
    assert!(ifbs(&go.host).is_empty() && ifbs(&ours.host).is_empty());
}

/// A failed ADD leaves nothing: an ingress qdisc already on the veth makes the egress
/// part fail after the TBF and the ifb were made.
#[test]
fn a_failed_add_undoes_everything() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    rig.host
        .run(&["tc", "qdisc", "add", "dev", "hv0", "ingress"]);
    let before = qdiscs(&rig.host);
    let c = conf(&rig.cont, "hv0", "eth0", all_limits());
    let out = rig.call("bandwidth", "ADD", &c).run();
    assert!(out.err_text().contains("ingress qdisc"), "{}", out.stdout);
    assert_eq!(qdiscs(&rig.host), before);
    assert!(ifbs(&rig.host).is_empty());
}

/// GC removes our ifbs of attachments not in the valid list, and nothing else.
#[test]
fn gc_removes_stale_ifbs() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    let cont2 = rig.add_cont();
    veth(&rig, &cont2, "hv1", "eth0", 1);
    let c = conf(&rig.cont, "hv0", "eth0", all_limits());
    rig.call("bandwidth", "ADD", &c).run().ok();
    rig.call(
        "bandwidth",
        "ADD",
        &conf(&cont2, "hv1", "eth0", all_limits()),
    )
    .id("ctr2")
    .netns(cont2.path.to_str().unwrap())
    .run()
    .ok();
    rig.host.ip(&["link", "add", "bwpforeign", "type", "ifb"]);
    assert_eq!(ifbs(&rig.host).len(), 3);
    let mut g = json!({"cniVersion": "1.1.0", "name": "bwnet", "type": "bandwidth",
        "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]});
    rig.call("bandwidth", "GC", &g).run().ok();
    let mut left = ifbs(&rig.host);
    left.sort();
    assert_eq!(
        left,
        vec!["bwpea62040b30ca".to_string(), "bwpforeign".to_string()]
    );
    // another network's GC leaves ours alone
    g["name"] = json!("othernet");
    g["cni.dev/valid-attachments"] = json!([]);
    rig.call("bandwidth", "GC", &g).run().ok();
    assert_eq!(ifbs(&rig.host).len(), 2);
}

/// Traffic towards the container is held to the configured 1 Mbit/s (±20%), measured
/// over 3 seconds between the test's own namespaces.
#[test]
fn ingress_rate_is_enforced() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    let c = conf(
        &rig.cont,
        "hv0",
        "eth0",
        json!({"ingressRate": 1000000, "ingressBurst": 80000}),
    );
    rig.call("bandwidth", "ADD", &c).run().ok();
    let recv = r#"
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.2", 5201)); s.listen(1); s.settimeout(10)
c, _ = s.accept(); c.settimeout(1)
n = 0; t0 = None
while True:
    try: b = c.recv(65536)
    except socket.timeout: b = b"x"
    if not b: break
    if t0 is None: t0 = time.time()
    n += len(b)
    if time.time() - t0 >= 3: break
print(n * 8 / (time.time() - t0))
"#;
    let send = r#"
import socket, time
for _ in range(50):
    try: s = socket.create_connection(("10.77.0.2", 5201)); break
    except OSError: time.sleep(0.1)
s.settimeout(5); t = time.time(); buf = b"\0" * 16384
try:
    while time.time() - t < 3.5: s.send(buf)
except OSError: pass
"#;
    std::fs::write(rig.dir.join("recv.py"), recv).unwrap();
    std::fs::write(rig.dir.join("send.py"), send).unwrap();
    let r = rig.dir.join("recv.py");
    let receiver = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &rig.cont.name,
            "python3",
            r.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    rig.host
        .run(&["python3", rig.dir.join("send.py").to_str().unwrap()]);
    let out = receiver.wait_with_output().unwrap();
    let bps: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        (800_000.0..=1_200_000.0).contains(&bps),
        "measured {bps} bit/s, configured 1000000"
    );
}

/// Every case of the table fails with its code and changes nothing (the qdiscs are part
/// of the snapshot).
#[test]
fn malformed_inputs_get_the_right_code_and_change_nothing() {
    let rig = Rig::new();
    veth(&rig, &rig.cont, "hv0", "eth0", 0);
    settle(&rig.host, &["hv0"]);
    settle(&rig.cont, &["eth0"]);
    let base = conf(&rig.cont, "hv0", "eth0", all_limits());
    let table = include_str!("../testdata/malformed-bandwidth.json");
    Malformed::new("bandwidth", table, 10, base).run(&rig);
}
