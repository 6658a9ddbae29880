//! README claims that need their own scenario: masquerade without `nft` or iptables on
//! PATH, ptp GC and STATUS, the IPv6 unsolicited NA, the own-netns refusal before any
//! change, and results a version cannot express.

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

fn v4() -> Value {
    json!([[{"subnet": "10.1.2.0/24"}]])
}

fn dual() -> Value {
    json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
}

fn conf(rig: &Rig, plugin: &str, ver: &str, extra: Value, ranges: Value) -> Value {
    let mut c = json!({"cniVersion": ver, "name": "cnet", "type": plugin,
        "ipam": {"type": "host-local", "ranges": ranges, "dataDir": rig.data_dir()}});
    if plugin == "bridge" {
        c["bridge"] = json!("cbr0");
        c["isGateway"] = json!(true);
    }
    merged(c, &extra)
}

/// A directory for PATH holding `tools` (symlinks to the real ones) and fake scripts.
fn path_dir(rig: &Rig, tag: &str, tools: &[&str], fakes: &[(&str, &str)]) -> PathBuf {
    let d = rig.dir.join(format!("path-{tag}"));
    std::fs::create_dir_all(&d).unwrap();
    for t in tools {
        let real = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|p| Path::new(p).join(t))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{t} not installed"));
        symlink(real, d.join(t)).unwrap();
    }
    for (name, body) in fakes {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

fn masq_in_nft(rig: &Rig) -> usize {
    nft_ruleset(&rig.host).matches("masquerade comment").count()
}

fn masq_in_iptables(rig: &Rig) -> usize {
    [false, true]
        .iter()
        .map(|v6| {
            iptables_rules(&rig.host, *v6)
                .iter()
                .filter(|r| r.contains("CNI-"))
                .count()
        })
        .sum()
}

#[test]
fn nftables_needs_no_nft_binary() {
    // PATH holds only an `nft` that records being run and fails: ADD, CHECK and DEL
    // with nftables masquerade (and the bridge's MAC spoof check) work and never run it.
    for plugin in ["bridge", "ptp"] {
        let rig = Rig::new();
        let mark = rig.dir.join("nft-was-run");
        let path = path_dir(
            &rig,
            "nft",
            &[],
            // (a shell builtin: PATH holds nothing else)
            &[("nft", &format!(": > {}; exit 1", mark.display()))],
        );
        let mut extra = json!({"ipMasq": true, "ipMasqBackend": "nftables"});
        if plugin == "bridge" {
            extra["macspoofchk"] = json!(true);
        }
        let c = conf(&rig, plugin, "1.0.0", extra, dual());
        let path = path.to_str().unwrap();
        let v = rig
            .call(plugin, "ADD", &c)
            .env("PATH", path)
            .run()
            .ok()
            .clone();
        assert_eq!(masq_in_nft(&rig), 2, "{plugin}");
        if plugin == "bridge" {
            assert!(nft_ruleset(&rig.host).contains("macspoofchk-"));
        }
        let prev = with_prev(&c, &v);
        rig.call(plugin, "CHECK", &prev)
            .env("PATH", path)
            .run()
            .ok();
        rig.call(plugin, "DEL", &prev).env("PATH", path).run().ok();
        let nft = nft_ruleset(&rig.host);
        assert!(
            !nft.contains("masquerade comment") && !nft.contains("macspoofchk-"),
            "{nft}"
        );
        assert!(!mark.exists(), "{plugin}: nft was run");
    }
}

#[test]
fn without_iptables_the_backend_falls_back_to_nftables() {
    for plugin in ["bridge", "ptp"] {
        // With iptables on PATH and no ipMasqBackend: iptables (the contrast).
        let rig = Rig::new();
        let c = conf(&rig, plugin, "1.0.0", json!({"ipMasq": true}), dual());
        rig.call(plugin, "ADD", &c).run().ok();
        assert!(
            masq_in_iptables(&rig) > 0 && masq_in_nft(&rig) == 0,
            "{plugin}"
        );

        // Without: nftables, exactly as Go v1.9.1 does it (which needs `nft` itself).
        let ours = Rig::new();
        let go = Rig::new();
        let empty = path_dir(&ours, "none", &[], &[]);
        let only_nft = path_dir(&go, "nft", &["nft"], &[]);
        let oc = conf(&ours, plugin, "1.0.0", json!({"ipMasq": true}), dual());
        let gc = conf(&go, plugin, "1.0.0", json!({"ipMasq": true}), dual());
        let empty = empty.to_str().unwrap();
        let ov = ours
            .call(plugin, "ADD", &oc)
            .env("PATH", empty)
            .run()
            .ok()
            .clone();
        go.call(plugin, "ADD", &gc)
            .env("PATH", only_nft.to_str().unwrap())
            .go()
            .run()
            .ok();
        assert_eq!(masq_in_iptables(&ours), 0, "{plugin}");
        assert_eq!(masq_in_nft(&ours), 2, "{plugin}");
        assert_eq!(nft_ruleset(&ours.host), nft_ruleset(&go.host), "{plugin}");
        ours.call(plugin, "DEL", &with_prev(&oc, &ov))
            .env("PATH", empty)
            .run()
            .ok();
        assert_eq!(masq_in_nft(&ours), 0, "{plugin}");
        assert!(reservations(&ours.data_dir().join("cnet")).is_empty());

        // Asking for iptables without it fails cleanly, leaving nothing behind.
        let rig = Rig::new();
        let c = conf(
            &rig,
            plugin,
            "1.0.0",
            json!({"ipMasq": true, "ipMasqBackend": "iptables"}),
            v4(),
        );
        let out = rig.call(plugin, "ADD", &c).env("PATH", empty).run();
        out.fails_with(999, "failed to run iptables-save");
        assert!(link(&rig.cont, "eth0").is_none());
        assert!(reservations(&rig.data_dir().join("cnet")).is_empty());
        assert_eq!(masq_in_nft(&rig), 0);
    }
}

#[test]
fn ptp_gc_removes_stale_masquerade_and_reservations() {
    for backend in ["iptables", "nftables"] {
        let rig = Rig::new();
        let c = conf(
            &rig,
            "ptp",
            "1.1.0",
            json!({"ipMasq": true, "ipMasqBackend": backend}),
            dual(),
        );
        let _conts = rig.add_containers("ptp", &c, "gc", 3);
        let before = if backend == "nftables" {
            masq_in_nft(&rig)
        } else {
            masq_in_iptables(&rig)
        };
        assert!(before >= 6, "{backend}: {before}");
        assert_eq!(reservations(&rig.data_dir().join("cnet")).len(), 6);
        let mut gc = c.clone();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc1", "ifname": "eth0"}]);
        rig.call("ptp", "GC", &gc).run().ok();
        if backend == "nftables" {
            let nft = nft_ruleset(&rig.host);
            let left: Vec<&str> = nft
                .lines()
                .filter(|l| l.contains("masquerade comment"))
                .collect();
            assert_eq!(left.len(), 2, "{nft}");
            assert!(left.iter().all(|l| l.contains("id: gc1\"")), "{left:?}");
        } else {
            for v6 in [false, true] {
                let jumps: Vec<String> = iptables_rules(&rig.host, v6)
                    .into_iter()
                    .filter(|l| l.starts_with("-A POSTROUTING"))
                    .collect();
                assert_eq!(jumps.len(), 1, "{backend} v6={v6}: {jumps:?}");
                assert!(jumps[0].contains("id: \\\"gc1\\\""), "{}", jumps[0]);
            }
        }
        let mut left = reservations(&rig.data_dir().join("cnet"));
        left.sort();
        assert_eq!(
            left,
            vec!["10.1.2.3", "2001:db8:1::3"],
            "gc1's addresses stay"
        );
        // GC below 1.1.0 is refused.
        let mut old = gc.clone();
        old["cniVersion"] = json!("1.0.0");
        rig.call("ptp", "GC", &old)
            .run()
            .fails_with(1, "config version does not allow GC");
    }
}

#[test]
fn ptp_status_delegates_to_ipam() {
    let rig = Rig::new();
    let c = conf(&rig, "ptp", "1.1.0", json!({}), v4());
    rig.call("ptp", "STATUS", &c).run().ok();
    let mut missing = c.clone();
    missing["ipam"]["type"] = json!("no-such-ipam");
    rig.call("ptp", "STATUS", &missing)
        .run()
        .fails_with(7, "failed to find plugin \"no-such-ipam\"");
    // An IPAM's STATUS error (50: plugin not available) comes back unchanged.
    let dir = rig.dir.join("status-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    symlink(env!("CARGO_BIN_EXE_cnibox"), dir.join("ptp")).unwrap();
    let p = dir.join("busy-ipam");
    std::fs::write(
        &p,
        "#!/bin/sh\n[ \"$CNI_COMMAND\" = STATUS ] || exit 3\necho '{\"code\": 50, \"msg\": \"pool exhausted\"}'\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut busy = c.clone();
    busy["ipam"]["type"] = json!("busy-ipam");
    let out = rig.call("ptp", "STATUS", &busy).in_dir(&dir).run();
    out.fails_with(50, "pool exhausted");
    rig.call(
        "ptp",
        "STATUS",
        &json!({"cniVersion": "1.0.0", "name": "cnet", "type": "ptp"}),
    )
    .run()
    .fails_with(1, "config version does not allow STATUS");
}

#[test]
fn reused_ipv6_address_refreshes_the_host_neighbour_entry() {
    // As the IPv4 GARP test in tests/bridge.rs: container A talks to the host over
    // IPv6 and goes away; container B gets A's address with another MAC. B's unsolicited
    // neighbour advertisement must update the host's entry at once.
    let rig = Rig::new();
    let c = conf(
        &rig,
        "bridge",
        "1.0.0",
        json!({}),
        json!([[{"subnet": "2001:db8:1::/64"}]]),
    );
    // Another container keeps the bridge's carrier up (neighbours of a device whose
    // carrier goes down are flushed).
    let keeper = rig.new_netns();
    rig.call("bridge", "ADD", &c)
        .id("keeper")
        .netns(keeper.path.to_str().unwrap())
        .run()
        .ok();
    let a = rig.call("bridge", "ADD", &c).id("a").run().ok().clone();
    let ip = result_ip(&a, 0);
    // The gateway address on the bridge goes through DAD first (as with Go's bridge).
    let settled = (0..50).any(|_| {
        let tentative = rig
            .host
            .run(&["ip", "-6", "addr", "show", "dev", "cbr0", "tentative"]);
        tentative.is_empty() || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        }
    });
    assert!(settled, "DAD on cbr0 did not finish");
    assert!(ping(&rig.host, &ip), "host reaches A");
    let a_mac = a["interfaces"][2]["mac"].as_str().unwrap().to_string();
    let lladdr = |rig: &Rig| {
        let n = rig.host.ip_json(&["-6", "neigh", "show", &ip]);
        n[0]["lladdr"].as_str().unwrap_or("").to_string()
    };
    assert_eq!(lladdr(&rig), a_mac, "the host learnt A's MAC");
    rig.call("bridge", "DEL", &with_prev(&c, &a))
        .id("a")
        .run()
        .ok();
    let b_ns = rig.new_netns();
    let b = rig
        .call("bridge", "ADD", &c)
        .id("b")
        .args(&format!("IgnoreUnknown=1;IP={ip}"))
        .netns(b_ns.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    assert_eq!(b["ips"][0]["address"], a["ips"][0]["address"]);
    let b_mac = b["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert_ne!(b_mac, a_mac);
    // No traffic from the host to B in between: only B's announcement can do it.
    let mut seen = String::new();
    for _ in 0..20 {
        seen = lladdr(&rig);
        if seen == b_mac {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(seen, b_mac, "host neighbour entry for {ip} not refreshed");
}

/// Everything a plugin could have changed in a rig's host: links, addresses, routes,
/// host-local files, iptables and nftables rules.
fn host_snapshot(rig: &Rig) -> (Value, Vec<String>, FwState) {
    let mut files: Vec<String> = walk(&rig.data_dir());
    files.sort();
    (net_state(rig)["host"].clone(), files, fw_state(rig))
}

fn walk(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.flat_map(|e| {
        let p = e.unwrap().path();
        let mut v = vec![p.display().to_string()];
        if p.is_dir() {
            v.extend(walk(&p));
        }
        v
    })
    .collect()
}

#[test]
fn own_netns_is_refused_before_any_change() {
    for plugin in ["bridge", "ptp"] {
        for backend in ["iptables", "nftables"] {
            let what = format!("{plugin} {backend}");
            let rig = Rig::new();
            let extra = json!({"ipMasq": true, "ipMasqBackend": backend});
            let c = conf(&rig, plugin, "1.0.0", extra, dual());
            let own = rig.host.path.to_str().unwrap();
            // ADD: code 8, and the host is exactly as before (no bridge, no veth, no
            // reservation, no rule).
            let before = host_snapshot(&rig);
            rig.call(plugin, "ADD", &c).netns(own).run().fails_with(
                8,
                "plugin's netns and netns from CNI_NETNS should not be the same",
            );
            assert_eq!(host_snapshot(&rig), before, "{what}: ADD changed the host");
            // DEL of a real attachment, named with the plugin's own netns: code 8, and
            // the attachment is untouched.
            let v = rig.call(plugin, "ADD", &c).run().ok().clone();
            let added = host_snapshot(&rig);
            assert_ne!(added, before);
            rig.call(plugin, "DEL", &with_prev(&c, &v))
                .netns(own)
                .run()
                .fails_with(8, "should not be the same");
            assert_eq!(host_snapshot(&rig), added, "{what}: DEL changed the host");
            assert!(link(&rig.cont, "eth0").is_some());
            rig.call(plugin, "CHECK", &with_prev(&c, &v)).run().ok();
        }
        // The reference checks after ADD ran: it fails, but has already changed the
        // host (what the README's deviation is about). (Its host-local even prints a
        // result and then the code-8 error, which its bridge/ptp cannot parse.)
        let go = Rig::new();
        let c = conf(&go, plugin, "1.0.0", json!({}), v4());
        let before = host_snapshot(&go);
        let out = go
            .call(plugin, "ADD", &c)
            .netns(go.host.path.to_str().unwrap())
            .go()
            .run();
        assert_eq!(out.code, 1, "{plugin}: Go fails too: {}", out.stdout);
        assert_ne!(host_snapshot(&go), before, "{plugin}: Go changed the host");
    }
}

#[test]
fn l2_result_under_old_versions_refused_before_anything_is_created() {
    // An L2-only bridge has no IP to put in a 0.1.0/0.2.0 result: refused before the
    // bridge or a veth exists (Go v1.9.1 creates everything, then fails to print).
    for ver in ["0.1.0", "0.2.0"] {
        let rig = Rig::new();
        let c = json!({"cniVersion": ver, "name": "l2", "type": "bridge", "bridge": "cbr0"});
        let before = (net_state(&rig), host_snapshot(&rig));
        rig.call("bridge", "ADD", &c)
            .run()
            .fails_with(1, "cannot convert: no valid IP addresses");
        assert_eq!((net_state(&rig), host_snapshot(&rig)), before, "{ver}");
        assert!(link(&rig.host, "cbr0").is_none());
        let go = Rig::new();
        let out = go.call("bridge", "ADD", &c).go().run();
        assert_ne!(out.code, 0, "{ver}: Go fails too: {}", out.stdout);
        assert!(
            link(&go.host, "cbr0").is_some(),
            "{ver}: Go created the bridge"
        );
    }
    // A result with no address at all (static with an empty list) has no 0.2.0 form:
    // an error object, never a half-printed result.
    let rig = Rig::new();
    let c = json!({"cniVersion": "0.2.0", "name": "st", "type": "static",
                   "ipam": {"type": "static", "addresses": []}});
    rig.call("static", "ADD", &c)
        .run()
        .fails_with(1, "cannot convert: no valid IP addresses");
    // host-local refuses two addresses of one family under 0.2.0 before allocating.
    let rig = Rig::new();
    let c = json!({"cniVersion": "0.2.0", "name": "hl", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": rig.data_dir(),
                 "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]}});
    rig.call("host-local", "ADD", &c)
        .run()
        .fails_with(7, "does not support more than 1 address per family");
    assert!(
        walk(&rig.data_dir()).iter().all(|f| !f.contains("10.1.")),
        "{:?}",
        walk(&rig.data_dir())
    );
}
