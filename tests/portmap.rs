//! portmap through the built binary, chained after cnibox's bridge: real traffic to
//! host ports (TCP and UDP, IPv4 and IPv6, from another netns, from the host's own
//! addresses, hairpin from the container, 127.0.0.1 via route_localnet, hostIP),
//! conntrack cleanup, CHECK, GC, malformed input, rollback, and differentials against
//! the Go plugin v1.9.1 on both backends (same rules; each side's DEL removes the
//! other's ADD).
//!
//! Hermetic: every plugin, iptables, nft, conntrack and socat command runs in the
//! test's own namespaces; traffic stays between them. Needs `socat` and `conntrack`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BACKENDS: [&str; 2] = ["iptables", "nftables"];

fn sh(ns: &Netns, cmd: &str) -> std::process::Output {
    ns.exec(&["sh", "-c", cmd])
}

fn must(ns: &Netns, cmd: &str) -> String {
    let out = sh(ns, cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process started in a namespace by this test, killed (by its pid) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// TCP and UDP servers on port 80 (IPv4 and IPv6) in `ns` that answer `<tag> <peer
/// address>`, so a test sees which container answered and whether the source was
/// masqueraded.
fn serve(ns: &Netns, tag: &str) -> Vec<Proc> {
    let reply = format!("SYSTEM:echo {tag} $SOCAT_PEERADDR");
    let specs = [
        "TCP4-LISTEN:80,fork,reuseaddr",
        "TCP6-LISTEN:80,fork,reuseaddr,ipv6only=1",
        "UDP4-RECVFROM:80,fork",
        "UDP6-RECVFROM:80,fork,ipv6only=1",
    ];
    let procs: Vec<Proc> = specs
        .iter()
        .map(|s| {
            Proc(
                Command::new("ip")
                    .args(["netns", "exec", &ns.name, "socat", s, &reply])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("socat (apt-get install socat)"),
            )
        })
        .collect();
    let t = Instant::now();
    loop {
        let out = String::from_utf8_lossy(&ns.exec(&["ss", "-lntuH"]).stdout).into_owned();
        if out.matches(":80 ").count() >= 4 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "servers not up: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    procs
}

fn hostport(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// One TCP exchange from `ns`; the answer line, or None.
fn tcp(ns: &Netns, addr: &str, port: u16) -> Option<String> {
    let fam = if addr.contains(':') { "TCP6" } else { "TCP4" };
    let cmd = format!(
        "echo hi | timeout 8 socat -t4 -T4 - {fam}:{},connect-timeout=3",
        hostport(addr, port)
    );
    let out = sh(ns, &cmd);
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then(|| canonical(&s))
}

/// "c1 [0000:...:0002]" (socat's peer address) as "c1 fd00::2".
fn canonical(answer: &str) -> String {
    match answer.split_once(' ') {
        Some((tag, addr)) => {
            let a = addr.trim_matches(|c| c == '[' || c == ']');
            match a.parse::<std::net::IpAddr>() {
                Ok(ip) => format!("{tag} {ip}"),
                Err(_) => answer.to_string(),
            }
        }
        None => answer.to_string(),
    }
}

/// One UDP exchange from `ns` (from `sport` if given); the answer, or None.
fn udp(ns: &Netns, addr: &str, port: u16, sport: Option<u16>) -> Option<String> {
    let fam = if addr.contains(':') { "UDP6" } else { "UDP4" };
    let src = sport
        .map(|p| format!(",sourceport={p},reuseaddr"))
        .unwrap_or_default();
    let cmd = format!(
        "echo hi | timeout 8 socat -t4 -T4 - {fam}:{}{src}",
        hostport(addr, port)
    );
    let out = sh(ns, &cmd);
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| canonical(&s))
}

/// `f()` until it answers `want` (5 tries): under load (2 shared cores, tests in
/// parallel) an exchange with a freshly started server can time out; a wrong answer
/// fails at once.
fn expect(want: &str, what: &str, f: impl Fn() -> Option<String>) {
    let mut got = None;
    for _ in 0..5 {
        got = f();
        match got.as_deref() {
            Some(g) if g == want => return,
            Some(_) => break,
            None => {}
        }
    }
    panic!("{what}: expected {want:?}, got {got:?}");
}

/// An "outside" namespace wired to the host: 192.168.50.2 / fd00:50::2 behind the
/// host's 192.168.50.1 / fd00:50::1; the host also owns 192.168.60.1 (on lo).
fn outside(rig: &Rig) -> Netns {
    let ext = rig.new_netns();
    rig.host.ip(&[
        "link", "add", "vext", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
    ]);
    for (ns, dev, v4, v6) in [
        (&rig.host, "vext", "192.168.50.1/24", "fd00:50::1/64"),
        (&ext, "eth0", "192.168.50.2/24", "fd00:50::2/64"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", dev]);
        ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    ext.ip(&["route", "add", "default", "via", "192.168.50.1"]);
    ext.ip(&["-6", "route", "add", "default", "via", "fd00:50::1"]);
    rig.host
        .ip(&["addr", "add", "192.168.60.1/32", "dev", "lo"]);
    ext
}

fn dual() -> Value {
    json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:12::/64"}]])
}

/// bridge ADD (gateway, default routes), then the portmap config chained on it.
fn bridge_then(rig: &Rig, backend: &str, mappings: Value) -> (Value, Value) {
    let br = bridge_conf(
        rig,
        "1.0.0",
        // hairpin: with br_netfilter (bridge-nf-call-iptables), traffic DNATed back to
        // the container it came from is bridged back out of the same port
        json!({"isGateway": true, "isDefaultGateway": true, "hairpinMode": true}),
        dual(),
    );
    let prev = rig.call("bridge", "ADD", &br).run().ok().clone();
    // the bridge's IPv6 address must be usable (masquerade picks it)
    let t = Instant::now();
    while !rig
        .host
        .ip(&["-6", "addr", "show", "dev", "cbr0", "tentative"])
        .is_empty()
    {
        assert!(t.elapsed() < Duration::from_secs(5), "DAD on cbr0");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pm = json!({"cniVersion": "1.0.0", "name": "brnet", "type": "portmap",
        "backend": backend, "runtimeConfig": {"portMappings": mappings}, "prevResult": prev});
    (br, pm)
}

fn std_mappings() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8080, "containerPort": 80, "protocol": "udp"},
        {"hostPort": 9090, "containerPort": 80, "protocol": "tcp", "hostIP": "192.168.50.1"}
    ])
}

/// Nothing of attachment `cid` is left in either backend of `ns`.
fn assert_clean(ns: &Netns, net: &str, cid: &str) {
    let chain = format!("CNI-DN-{}", &sha_hex(&format!("{net}{cid}"))[..21]);
    for v6 in [false, true] {
        let save = iptables_save(ns, v6);
        assert!(!save.contains(&chain), "v6={v6}:\n{save}");
        assert!(
            !save.contains(&format!("id: \\\"{cid}\\\"")),
            "v6={v6}:\n{save}"
        );
    }
    let nft = nft_ruleset(ns);
    assert!(!nft.contains(&format!("comment \"{cid}\"")), "{nft}");
}

fn sha_hex(s: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("printf %s '{s}' | sha512sum")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..128].to_string()
}

fn udp_entries(ns: &Netns, port: u16) -> usize {
    let out = ns.exec(&[
        "conntrack",
        "-L",
        "-p",
        "udp",
        "--orig-port-dst",
        &port.to_string(),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("udp"))
        .count()
}

#[test]
fn traffic_reaches_the_container_on_both_backends() {
    for backend in BACKENDS {
        let rig = Rig::new();
        let ext = outside(&rig);
        let (_, pm) = bridge_then(&rig, backend, std_mappings());
        let out = rig.call("portmap", "ADD", &pm).run();
        let v = out.ok().clone();
        // prevResult passes through unchanged
        assert_eq!(normalize_result(&v), normalize_result(&pm["prevResult"]));
        let _srv = serve(&rig.cont, "c1");
        let b = backend;
        // from another netns: not masqueraded
        expect("c1 192.168.50.2", &format!("{b} ext tcp4"), || {
            tcp(&ext, "192.168.50.1", 8080)
        });
        expect("c1 192.168.50.2", &format!("{b} ext udp4"), || {
            udp(&ext, "192.168.50.1", 8080, None)
        });
        expect("c1 fd00:50::2", &format!("{b} ext tcp6"), || {
            tcp(&ext, "fd00:50::1", 8080)
        });
        expect("c1 fd00:50::2", &format!("{b} ext udp6"), || {
            udp(&ext, "fd00:50::1", 8080, None)
        });
        // any local address of the host, from outside
        expect(
            "c1 192.168.50.2",
            &format!("{b} other host address"),
            || tcp(&ext, "192.168.60.1", 8080),
        );
        // from the host itself, to its own address
        expect("c1 192.168.50.1", &format!("{b} host tcp4"), || {
            tcp(&rig.host, "192.168.50.1", 8080)
        });
        expect("c1 fd00:50::1", &format!("{b} host tcp6"), || {
            tcp(&rig.host, "fd00:50::1", 8080)
        });
        // localhost: route_localnet on the bridge, masqueraded to the bridge address
        assert_eq!(
            must(&rig.host, "cat /proc/sys/net/ipv4/conf/cbr0/route_localnet").trim(),
            "1"
        );
        expect("c1 10.1.2.1", &format!("{b} localhost"), || {
            tcp(&rig.host, "127.0.0.1", 8080)
        });
        // hairpin: the container reaches itself through the host port, masqueraded
        expect("c1 10.1.2.1", &format!("{b} hairpin4"), || {
            tcp(&rig.cont, "192.168.50.1", 8080)
        });
        expect("c1 10.1.2.1", &format!("{b} hairpin udp4"), || {
            udp(&rig.cont, "192.168.50.1", 8080, None)
        });
        expect("c1 fd00:12::1", &format!("{b} hairpin6"), || {
            tcp(&rig.cont, "fd00:50::1", 8080)
        });
        // hostIP: only that destination
        expect("c1 192.168.50.2", &format!("{b} hostIP"), || {
            tcp(&ext, "192.168.50.1", 9090)
        });
        assert_eq!(tcp(&ext, "192.168.60.1", 9090), None, "{b} hostIP only");
        assert_eq!(
            tcp(&ext, "fd00:50::1", 9090),
            None,
            "{b} v4 hostIP not on v6"
        );
        // CHECK passes
        rig.call("portmap", "CHECK", &pm).run().ok();

        assert!(
            udp_entries(&rig.host, 8080) > 0,
            "{b}: UDP flows are tracked"
        );
        rig.call("portmap", "DEL", &pm).run().ok();
        assert_clean(&rig.host, "brnet", "ctr1");
        assert_eq!(
            udp_entries(&rig.host, 8080),
            0,
            "{b}: DEL flushed UDP conntrack"
        );
        assert_eq!(
            tcp(&ext, "192.168.50.1", 8080),
            None,
            "{b}: no forwarding after DEL"
        );
        // DEL is idempotent, and needs no netns
        rig.call("portmap", "DEL", &pm)
            .netns("/run/netns/does-not-exist")
            .run()
            .ok();
    }
}

/// A UDP "connection" tracked while the port went to another container keeps going
/// there (conntrack); ADD deletes such entries. The reference's DEL leaves them behind,
/// so it removes the first container here, with that container still answering.
#[test]
fn a_reused_udp_port_reaches_the_new_container() {
    for backend in BACKENDS {
        let rig = Rig::new();
        let ext = outside(&rig);
        let mappings = json!([{"hostPort": 7070, "containerPort": 80, "protocol": "udp"}]);
        let (_, pm) = bridge_then(&rig, backend, mappings);
        rig.call("portmap", "ADD", &pm).run().ok();
        let _a = serve(&rig.cont, "A");
        expect("A 192.168.50.2", backend, || {
            udp(&ext, "192.168.50.1", 7070, Some(40000))
        });
        rig.call("portmap", "DEL", &pm).go().run().ok();
        assert!(
            udp_entries(&rig.host, 7070) > 0,
            "{backend}: the flow to A is still tracked"
        );
        // a second container takes the port
        let c2 = rig.new_netns();
        let br = bridge_conf(
            &rig,
            "1.0.0",
            json!({"isGateway": true, "isDefaultGateway": true, "hairpinMode": true}),
            dual(),
        );
        let prev2 = rig
            .call("bridge", "ADD", &br)
            .id("ctr2")
            .netns(c2.path.to_str().unwrap())
            .run()
            .ok()
            .clone();
        let mut pm2 = pm.clone();
        pm2["prevResult"] = prev2;
        rig.call("portmap", "ADD", &pm2)
            .id("ctr2")
            .netns(c2.path.to_str().unwrap())
            .run()
            .ok();
        let _b = serve(&c2, "B");
        expect(
            "B 192.168.50.2",
            &format!("{backend}: the stale flow to A was not deleted"),
            || udp(&ext, "192.168.50.1", 7070, Some(40000)),
        );
    }
}

#[test]
fn snat_off_and_masq_all() {
    for backend in BACKENDS {
        let rig = Rig::new();
        let ext = outside(&rig);
        let (_, mut pm) = bridge_then(&rig, backend, std_mappings());
        pm["masqAll"] = json!(true);
        rig.call("portmap", "ADD", &pm).run().ok();
        let _srv = serve(&rig.cont, "c1");
        // every source is masqueraded, also on nftables (the reference ignores it there)
        expect("c1 10.1.2.1", &format!("{backend} masqAll"), || {
            tcp(&ext, "192.168.50.1", 8080)
        });
        expect("c1 fd00:12::1", &format!("{backend} masqAll v6"), || {
            tcp(&ext, "fd00:50::1", 8080)
        });
        rig.call("portmap", "CHECK", &pm).run().ok();
        rig.call("portmap", "DEL", &pm).run().ok();
        assert_clean(&rig.host, "brnet", "ctr1");

        pm["masqAll"] = json!(false);
        pm["snat"] = json!(false);
        rig.call("portmap", "ADD", &pm).run().ok();
        expect("c1 192.168.50.2", &format!("{backend} snat off"), || {
            tcp(&ext, "192.168.50.1", 8080)
        });
        let save = iptables_save(&rig.host, false);
        assert!(!save.contains("-j CNI-HOSTPORT-SETMARK"), "{save}");
        rig.call("portmap", "CHECK", &pm).run().ok();
        rig.call("portmap", "DEL", &pm).run().ok();
        assert_clean(&rig.host, "brnet", "ctr1");
    }
}

// ---------------------------------------------------------------------------------------
// Differential against the Go plugin v1.9.1 (synthetic prevResult: no traffic needed)

fn pm_conf(backend: &str, extra: Value) -> Value {
    let base = json!({"cniVersion": "1.0.0", "name": "mynet", "type": "portmap",
        "backend": backend,
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8081, "containerPort": 81, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "192.168.1.1"},
            {"hostPort": 99, "containerPort": 99, "protocol": "sctp"},
            {"hostPort": 54, "containerPort": 54, "protocol": "udp", "hostIP": "2001:db8::1"},
            {"hostPort": 55, "containerPort": 55, "protocol": "udp", "hostIP": "0.0.0.0"}]},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.1.2.9/24", "interface": 0},
                    {"address": "10.1.2.3/24", "interface": 1},
                    {"address": "fd00::3/64", "interface": 1}]}});
    merged(base, &extra)
}

/// `iptables-save -t nat` without comments and counters.
fn ipt_norm(ns: &Netns, v6: bool) -> Vec<String> {
    iptables_save(ns, v6)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.replace(" [0:0]", ""))
        .collect()
}

/// `nft list ruleset` per table and chain, sorted (the listing order follows creation
/// order, which differs between the implementations).
fn nft_norm(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    let (mut table, mut chain) = (String::new(), String::new());
    for l in nft_ruleset(ns).lines() {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            table = rest.trim_end_matches(" {").to_string();
        } else if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest.trim_end_matches(" {").to_string();
        } else if !t.is_empty() && t != "}" {
            out.push(format!("{table} / {chain}: {t}"));
        }
    }
    out.sort();
    out
}

fn rulesets(ns: &Netns) -> (Vec<String>, Vec<String>, Vec<String>) {
    (ipt_norm(ns, false), ipt_norm(ns, true), nft_norm(ns))
}

#[test]
fn same_rules_as_the_reference() {
    let variants = [
        json!({}),
        json!({"snat": false}),
        json!({"markMasqBit": 5, "conditionsV4": ["-s", "1.2.3.0/24", "-m", "comment", "--comment", "a b"]}),
        json!({"externalSetMarkChain": "KUBE-MARK-MASQ"}),
        json!({"masqAll": true}),
    ];
    for backend in BACKENDS {
        for extra in &variants {
            if backend == "nftables"
                && (extra.get("conditionsV4").is_some()
                    || extra.get("externalSetMarkChain").is_some())
            {
                continue;
            }
            // masqAll differs on purpose with nftables (the reference ignores it there)
            if backend == "nftables" && extra.get("masqAll").is_some() {
                continue;
            }
            let conf = pm_conf(backend, extra.clone());
            let go = Rig::new();
            let ours = Rig::new();
            for r in [&go, &ours] {
                if extra.get("externalSetMarkChain").is_some() {
                    must(
                        &r.host,
                        "iptables -t nat -N KUBE-MARK-MASQ && ip6tables -t nat -N KUBE-MARK-MASQ",
                    );
                }
            }
            go.call("portmap", "ADD", &conf).go().run().ok();
            ours.call("portmap", "ADD", &conf).run().ok();
            assert_eq!(
                rulesets(&go.host),
                rulesets(&ours.host),
                "{backend} {extra}"
            );
            // each CHECKs the other's rules
            go.call("portmap", "CHECK", &conf).run().ok();
            ours.call("portmap", "CHECK", &conf).go().run().ok();
            // each DEL removes the other's ADD
            go.call("portmap", "DEL", &conf).run().ok();
            ours.call("portmap", "DEL", &conf).go().run().ok();
            for r in [&go, &ours] {
                assert_clean(&r.host, "mynet", "ctr1");
            }
            assert_eq!(
                rulesets(&go.host),
                rulesets(&ours.host),
                "{backend} {extra} after DEL"
            );
        }
    }
}

#[test]
fn nft_conditions_like_the_reference() {
    let conf = pm_conf(
        "nftables",
        json!({"conditionsV4": ["ip saddr != 10.0.0.0/8", "iifname", "\"eth*\""],
               "conditionsV6": ["ip6 daddr fd00::/63 oifname lo"]}),
    );
    let go = Rig::new();
    let ours = Rig::new();
    go.call("portmap", "ADD", &conf).go().run().ok();
    ours.call("portmap", "ADD", &conf).run().ok();
    assert_eq!(nft_norm(&go.host), nft_norm(&ours.host));
    assert!(nft_ruleset(&ours.host).contains(
        "ip saddr != 10.0.0.0/8 iifname \"eth*\" fib daddr type local jump hostports_all"
    ));
    ours.call("portmap", "CHECK", &conf).run().ok();
}

/// A repeated ADD (the runtime retrying) leaves one set of rules, not two.
#[test]
fn repeated_add_does_not_duplicate() {
    for backend in BACKENDS {
        let rig = Rig::new();
        let conf = pm_conf(backend, json!({}));
        rig.call("portmap", "ADD", &conf).run().ok();
        let first = rulesets(&rig.host);
        rig.call("portmap", "ADD", &conf).run().ok();
        assert_eq!(first, rulesets(&rig.host), "{backend}");
    }
}

// ---------------------------------------------------------------------------------------
// CHECK, GC, no mappings, malformed input, rollback

#[test]
fn check_ipv4_only_and_detects_missing_rules() {
    for backend in BACKENDS {
        let rig = Rig::new();
        let mut conf = pm_conf(backend, json!({}));
        conf["prevResult"]["ips"] = json!([{"address": "10.1.2.3/24", "interface": 1}]);
        rig.call("portmap", "ADD", &conf).run().ok();
        rig.call("portmap", "CHECK", &conf).run().ok();
        assert!(iptables_save(&rig.host, true)
            .lines()
            .all(|l| !l.contains("CNI-DN")));
        // take one rule away
        if backend == "iptables" {
            must(&rig.host, "iptables -t nat -D CNI-DN-5145007e2a8415ce07579 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.1.2.3:81");
        } else {
            let out = must(&rig.host, "nft -a list chain ip cni_hostport hostports");
            let h = out
                .lines()
                .find(|l| l.contains("dport 8081"))
                .and_then(|l| l.rsplit("# handle ").next())
                .unwrap()
                .trim()
                .to_string();
            must(
                &rig.host,
                &format!("nft delete rule ip cni_hostport hostports handle {h}"),
            );
        }
        let out = rig.call("portmap", "CHECK", &conf).run();
        assert_ne!(out.code, 0, "{backend}: CHECK passed without the 8081 rule");
        rig.call("portmap", "DEL", &conf).run().ok();
        assert_clean(&rig.host, "mynet", "ctr1");
    }
}

#[test]
fn gc_removes_stale_attachments_only() {
    for backend in BACKENDS {
        let rig = Rig::new();
        let conf = pm_conf(backend, json!({}));
        for id in ["ctr1", "ctr2"] {
            rig.call("portmap", "ADD", &conf).id(id).run().ok();
        }
        // the same container on another network
        let mut other = conf.clone();
        other["name"] = json!("othernet");
        rig.call("portmap", "ADD", &other).id("ctr2").run().ok();
        let gc = json!({"cniVersion": "1.1.0", "name": "mynet", "type": "portmap",
            "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]});
        rig.call("portmap", "GC", &gc).run().ok();
        let (v4, _, nft) = rulesets(&rig.host);
        let v4 = v4.join("\n");
        let nft = nft.join("\n");
        match backend {
            "iptables" => {
                assert!(v4.contains("id: \\\"ctr1\\\""), "{v4}");
                assert!(!v4.contains("name: \\\"mynet\\\" id: \\\"ctr2\\\""), "{v4}");
                assert!(
                    v4.contains("name: \\\"othernet\\\" id: \\\"ctr2\\\""),
                    "{v4}"
                );
            }
            _ => {
                assert_eq!(nft.matches("comment \"ctr1\"").count(), 5 + 4 + 3, "{nft}");
                // only othernet's ctr2 rules are left
                assert_eq!(nft.matches("comment \"ctr2\"").count(), 5 + 4 + 3, "{nft}");
            }
        }
        rig.call("portmap", "DEL", &conf).run().ok();
        rig.call("portmap", "DEL", &other).id("ctr2").run().ok();
        for (net, id) in [("mynet", "ctr1"), ("mynet", "ctr2"), ("othernet", "ctr2")] {
            assert_clean(&rig.host, net, id);
        }
    }
}

#[test]
fn no_mappings_touch_nothing() {
    let rig = Rig::new();
    let mut conf = pm_conf("nftables", json!({}));
    conf["runtimeConfig"] = json!({});
    let before = rulesets(&rig.host);
    let v = rig.call("portmap", "ADD", &conf).run().ok().clone();
    assert_eq!(normalize_result(&v), normalize_result(&conf["prevResult"]));
    rig.call("portmap", "CHECK", &conf).run().ok();
    rig.call("portmap", "DEL", &conf).run().ok();
    assert_eq!(before, rulesets(&rig.host));
    // an older-version prevResult is printed in the config's version
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    old["prevResult"] =
        json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.2.3/24"}]});
    let v = rig.call("portmap", "ADD", &old).run().ok().clone();
    assert_eq!(v["cniVersion"], "0.3.1");
    assert_eq!(v["ips"][0]["version"], "4");
}

/// Every case of the table fails with its code and changes nothing (the host's
/// iptables and nftables state are part of the snapshot); DEL of a config ADD refused
/// as invalid succeeds (nothing to remove).
#[test]
fn malformed_input_changes_nothing() {
    let rig = Rig::new();
    let mut base = pm_conf("iptables", json!({}));
    base.as_object_mut().unwrap().remove("backend");
    let snap = Snap {
        firewall: true,
        ..Snap::default()
    };
    let table = include_str!("../testdata/malformed-portmap.json");
    Malformed::new("portmap", table, 10, base)
        .snap(snap)
        .then(|rig, case, conf| {
            if case.code == 7 {
                rig.call("portmap", "DEL", conf).run().ok();
            }
        })
        .run(&rig);
}

/// iptables: IPv4 goes in, IPv6 fails (the external mark chain exists only for IPv4);
/// the IPv4 rules and the skeleton that ADD created are removed again.
#[test]
fn failed_add_leaves_nothing_iptables() {
    let rig = Rig::new();
    must(&rig.host, "iptables -t nat -N MYMARK");
    let before = rulesets(&rig.host);
    let conf = pm_conf("iptables", json!({"externalSetMarkChain": "MYMARK"}));
    let out = rig.call("portmap", "ADD", &conf).run();
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("ip6tables-restore"), "{}", out.stdout);
    // (iptables-nft leaves its own empty base chains behind in `nft list`)
    assert_eq!(before.0, ipt_norm(&rig.host, false));
    assert_eq!(before.1, ipt_norm(&rig.host, true));
}

/// nftables: both families are one transaction; IPv6's part is refused (a foreign
/// `prerouting` chain of another type), so IPv4's is not applied either.
#[test]
fn failed_add_leaves_nothing_nftables() {
    let rig = Rig::new();
    must(
        &rig.host,
        "nft add table ip6 cni_hostport && nft add chain ip6 cni_hostport prerouting '{ type filter hook prerouting priority 0; }'",
    );
    let before = rulesets(&rig.host);
    let conf = pm_conf("nftables", json!({}));
    let out = rig.call("portmap", "ADD", &conf).run();
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert_eq!(before, rulesets(&rig.host));
    assert!(!nft_ruleset(&rig.host).contains("table ip cni_hostport"));
}
