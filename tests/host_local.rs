//! host-local through the built binary: §4.10 scenarios, state compatibility with the Go
//! plugin both ways, concurrency with a mixed Go/cnibox population, crash safety, GC.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;

fn conf(rig: &Rig, ver: &str, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("host-local");
    if ipam.get("dataDir").is_none() {
        ipam["dataDir"] = json!(rig.data_dir());
    }
    json!({"cniVersion": ver, "name": "hlnet", "type": "ipam-test", "ipam": ipam})
}

fn dir(rig: &Rig) -> std::path::PathBuf {
    rig.data_dir().join("hlnet")
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn addr_of(v: &Value, i: usize) -> String {
    v["ips"][i]["address"].as_str().unwrap().to_string()
}

#[test]
fn add_del_ranges_resolvconf_routes() {
    let rig = Rig::new();
    let rc = rig.dir.join("resolv.conf");
    std::fs::write(&rc, "nameserver 192.0.2.1\nnameserver 192.0.2.2\ndomain example.org\nsearch a.example b.example\noptions ndots:5\n").unwrap();
    for ver in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let c = conf(
            &rig,
            ver,
            json!({
            "ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.2.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]],
            "resolvConf": rc,
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.168.0.0/16", "gw": "1.1.1.1"}, {"dst": "2001:db8:2::0/64", "gw": "2001:db8:3::1"}]}),
        );
        let v = rig
            .call("host-local", "ADD", &c)
            .id("dummy")
            .run()
            .ok()
            .clone();
        assert_eq!(v["ips"][0]["address"], "10.1.2.2/24", "{ver}");
        assert_eq!(v["ips"][0]["gateway"], "10.1.2.1");
        assert_eq!(v["ips"][1]["address"], "2001:db8:1::2/64");
        assert_eq!(v["ips"][1]["gateway"], "2001:db8:1::1");
        assert_eq!(v["ips"][0].get("version").is_some(), ver < "1.0.0");
        assert!(v["ips"][0].get("interface").is_none());
        assert!(v.get("interfaces").is_none());
        assert_eq!(v["routes"].as_array().unwrap().len(), 4);
        assert_eq!(
            v["dns"],
            json!({"nameservers": ["192.0.2.1", "192.0.2.2"], "domain": "example.org",
                                   "search": ["a.example", "b.example"], "options": ["ndots:5"]})
        );
        assert_eq!(read(dir(&rig).join("10.1.2.2")), "dummy\r\neth0");
        assert_eq!(read(dir(&rig).join("2001:db8:1::2")), "dummy\r\neth0");
        assert_eq!(read(dir(&rig).join("last_reserved_ip.0")), "10.1.2.2");
        assert_eq!(read(dir(&rig).join("last_reserved_ip.1")), "2001:db8:1::2");
        rig.call("host-local", "DEL", &c).id("dummy").run().ok();
        assert!(reservations(&dir(&rig)).is_empty());
        // reset round-robin for the next version
        for f in ["last_reserved_ip.0", "last_reserved_ip.1"] {
            let _ = std::fs::remove_file(dir(&rig).join(f));
        }
    }
}

#[test]
fn file_modes_match_the_reference() {
    use std::os::unix::fs::PermissionsExt;
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/24"}));
    rig.call("host-local", "ADD", &c).run().ok();
    let mode = |n: &str| {
        std::fs::metadata(dir(&rig).join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("10.1.2.2"), 0o600);
    assert_eq!(mode("last_reserved_ip.0"), 0o600);
    assert_eq!(
        std::fs::metadata(dir(&rig)).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(mode("lock") & 0o700, 0o700);
}

#[test]
fn two_ifnames_of_one_container() {
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/24"}));
    let a = rig
        .call("host-local", "ADD", &c)
        .ifname("eth0")
        .run()
        .ok()
        .clone();
    let b = rig
        .call("host-local", "ADD", &c)
        .ifname("eth1")
        .run()
        .ok()
        .clone();
    assert_ne!(addr_of(&a, 0), addr_of(&b, 0));
    assert_eq!(
        read(dir(&rig).join("10.1.2.3")),
        format!("{}\r\neth1", rig.id())
    );
    rig.call("host-local", "DEL", &c).ifname("eth1").run().ok();
    assert_eq!(reservations(&dir(&rig)), vec!["10.1.2.2"]);
}

#[test]
fn duplicate_allocation_is_refused() {
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/24"}));
    rig.call("host-local", "ADD", &c).id("c1").run().ok();
    let out = rig.call("host-local", "ADD", &c).id("c1").run();
    assert!(
        out.stdout
            .contains("10.1.2.2 has been allocated to c1, duplicate allocation is not allowed"),
        "{}",
        out.stdout
    );
    let v = rig
        .call("host-local", "ADD", &c)
        .id("c2")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v, 0), "10.1.2.3/24");
    assert_eq!(rig.call("host-local", "ADD", &c).id("c1").run().code, 1);
    rig.call("host-local", "DEL", &c).id("c1").run().ok();
    rig.call("host-local", "DEL", &c).id("c2").run().ok();
    rig.call("host-local", "DEL", &c).id("c2").run().ok();
}

#[test]
fn legacy_id_only_files_are_released() {
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/24"}));
    std::fs::create_dir_all(dir(&rig)).unwrap();
    std::fs::write(dir(&rig).join("10.1.2.9"), "legacyid\n").unwrap();
    rig.call("host-local", "DEL", &c).id("legacyid").run().ok();
    assert!(reservations(&dir(&rig)).is_empty());
    rig.call("host-local", "DEL", &c).id("unknown").run().ok();
}

#[test]
fn fresh_subnet_prints_no_last_reserved_error() {
    let rig = Rig::new();
    let out = rig
        .call(
            "host-local",
            "ADD",
            &conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/24"})),
        )
        .run();
    out.ok();
    assert!(
        !out.stderr.contains("Error retrieving last reserved ip"),
        "{}",
        out.stderr
    );
}

#[test]
fn requested_ips() {
    let rig = Rig::new();
    let ranges = json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}], [{"subnet": "2001:db8:1::/64"}]]);
    // args.cni.ips across ranges and families
    let mut c = conf(&rig, "1.0.0", json!({"ranges": ranges}));
    c["args"] = json!({"cni": {"ips": ["10.1.2.88", "10.1.3.77/24", "2001:db8:1::999"]}});
    let v = rig.call("host-local", "ADD", &c).id("a").run().ok().clone();
    assert_eq!(
        v["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["10.1.2.88/24", "10.1.3.77/24", "2001:db8:1::999/64"]
    );
    // CNI_ARGS IP=
    let c2 = conf(&rig, "1.0.0", json!({"subnet": "10.1.4.0/24"}));
    let v = rig
        .call("host-local", "ADD", &c2)
        .id("b")
        .args("IP=10.1.4.5")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v, 0), "10.1.4.5/24");
    // lower-case ip is rejected, as by the reference
    let out = rig
        .call("host-local", "ADD", &c2)
        .id("b2")
        .args("ip=10.1.4.6")
        .run();
    assert!(out.stdout.contains("ARGS: unknown args"), "{}", out.stdout);
    // runtimeConfig.ips (capability)
    let mut c3 = conf(&rig, "1.0.0", json!({"subnet": "10.1.5.0/24"}));
    c3["runtimeConfig"] = json!({"ips": ["10.1.5.50/24"]});
    let v = rig
        .call("host-local", "ADD", &c3)
        .id("c")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v, 0), "10.1.5.50/24");
    // taken, outside the range, in no range
    let out = rig.call("host-local", "ADD", &c3).id("d").run();
    assert!(
        out.stdout
            .contains("requested IP address 10.1.5.50 is not available in range set"),
        "{}",
        out.stdout
    );
    let mut c4 = conf(
        &rig,
        "1.0.0",
        json!({"subnet": "10.1.6.0/24", "rangeStart": "10.1.6.10", "rangeEnd": "10.1.6.20"}),
    );
    c4["runtimeConfig"] = json!({"ips": ["10.1.6.30"]});
    assert_eq!(rig.call("host-local", "ADD", &c4).id("e").run().code, 1);
    c4["runtimeConfig"] = json!({"ips": ["10.9.9.9"]});
    let out = rig.call("host-local", "ADD", &c4).id("f").run();
    assert!(
        out.stdout
            .contains("failed to allocate all requested IPs: 10.9.9.9"),
        "{}",
        out.stdout
    );
    c3["runtimeConfig"] = json!({"ips": ["10.1.5.1"]});
    let out = rig.call("host-local", "ADD", &c3).id("g").run();
    assert!(
        out.stdout
            .contains("requested ip 10.1.5.1 is subnet's gateway"),
        "{}",
        out.stdout
    );
    // nothing leaked by the failures
    assert_eq!(reservations(&rig.data_dir().join("hlnet")).len(), 5);
}

#[test]
fn round_robin_wraps_and_exhausts() {
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/29"}));
    // .1 gateway, .7 broadcast: .2..=.6 usable
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(addr_of(
            rig.call("host-local", "ADD", &c)
                .id(&format!("c{i}"))
                .run()
                .ok(),
            0,
        ));
    }
    assert_eq!(
        got,
        vec![
            "10.1.2.2/29",
            "10.1.2.3/29",
            "10.1.2.4/29",
            "10.1.2.5/29",
            "10.1.2.6/29"
        ]
    );
    let out = rig.call("host-local", "ADD", &c).id("c9").run();
    assert!(
        out.stdout
            .contains("no IP addresses available in range set: 10.1.2.1-10.1.2.6"),
        "{}",
        out.stdout
    );
    rig.call("host-local", "DEL", &c).id("c1").run().ok();
    rig.call("host-local", "DEL", &c).id("c3").run().ok();
    // continues after the last reserved (.6) and wraps to the lowest free one
    assert_eq!(
        addr_of(rig.call("host-local", "ADD", &c).id("n1").run().ok(), 0),
        "10.1.2.3/29"
    );
    assert_eq!(
        addr_of(rig.call("host-local", "ADD", &c).id("n2").run().ok(), 0),
        "10.1.2.5/29"
    );
}

#[test]
fn range_end_moves_to_next_range() {
    let rig = Rig::new();
    let c = conf(
        &rig,
        "1.0.0",
        json!({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.11"},
                                                   {"subnet": "10.1.3.0/24", "rangeStart": "10.1.3.20", "rangeEnd": "10.1.3.21"}]]}),
    );
    let got: Vec<String> = (0..4)
        .map(|i| {
            addr_of(
                rig.call("host-local", "ADD", &c)
                    .id(&format!("c{i}"))
                    .run()
                    .ok(),
                0,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            "10.1.2.10/24",
            "10.1.2.11/24",
            "10.1.3.20/24",
            "10.1.3.21/24"
        ]
    );
}

#[test]
fn config_errors() {
    let rig = Rig::new();
    let cases = [
        (
            json!({"subnet": "10.1.2.0/31"}),
            "Network 10.1.2.0/31 too small to allocate from",
        ),
        (
            json!({"subnet": "10.1.2.5/24"}),
            "Network has host bits set",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.128/25"}]]}),
            "overlap",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.0/24"}]]}),
            "range set 1 overlaps with 0",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]]}),
            "mixed address families",
        ),
        (
            json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}),
            "10.1.3.1",
        ),
        (
            json!({"subnet": "10.1.2.0/24", "rangeEnd": "10.1.4.1"}),
            "10.1.4.1",
        ),
        (json!({}), "no IP ranges specified"),
    ];
    for (ipam, msg) in cases {
        let out = rig
            .call("host-local", "ADD", &conf(&rig, "1.0.0", ipam.clone()))
            .run();
        assert_eq!(out.code, 1, "{ipam}");
        assert!(
            out.stdout.contains(msg),
            "{ipam}: want {msg:?} in {}",
            out.stdout
        );
    }
    let out = rig
        .call(
            "host-local",
            "ADD",
            &json!({"cniVersion": "1.0.0", "name": "x", "type": "t"}),
        )
        .run();
    assert!(
        out.stdout.contains("IPAM config missing 'ipam' key"),
        "{}",
        out.stdout
    );
    let two_v4 = json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]});
    let out = rig
        .call("host-local", "ADD", &conf(&rig, "0.2.0", two_v4))
        .run();
    assert!(
        out.stdout
            .contains("CNI version 0.2.0 does not support more than 1 address per family"),
        "{}",
        out.stdout
    );
    let v = rig
        .call(
            "host-local",
            "ADD",
            &conf(
                &rig,
                "0.2.0",
                json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8::/64"}]]}),
            ),
        )
        .run()
        .ok()
        .clone();
    assert_eq!(v["ip4"]["ip"], "10.1.2.2/24");
    assert_eq!(v["ip6"]["ip"], "2001:db8::2/64");
    // network names cannot escape dataDir (the harness validates them, code 7)
    let out = rig.call("host-local", "ADD", &json!({"cniVersion": "1.0.0", "name": "../x", "ipam": {"type": "host-local", "subnet": "10.1.2.0/24", "dataDir": rig.data_dir()}})).run();
    assert_eq!(out.err_code(), 7);
}

#[test]
fn ip_ranges_capability_is_prepended() {
    let rig = Rig::new();
    let mut c = conf(
        &rig,
        "1.0.0",
        json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}),
    );
    c["capabilities"] = json!({"ipRanges": true});
    c["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.7.0.0/24"}]]});
    let v = rig.call("host-local", "ADD", &c).run().ok().clone();
    assert_eq!(addr_of(&v, 0), "10.7.0.2/24");
    assert_eq!(addr_of(&v, 1), "10.1.2.2/24");
    assert_eq!(read(dir(&rig).join("last_reserved_ip.0")), "10.7.0.2");
}

#[test]
fn check() {
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/24"}));
    let v = rig.call("host-local", "ADD", &c).run().ok().clone();
    let mut cc = c.clone();
    cc["prevResult"] = v;
    rig.call("host-local", "CHECK", &cc).run().ok();
    rig.call("host-local", "DEL", &c).run().ok();
    let out = rig.call("host-local", "CHECK", &cc).run();
    assert!(
        out.stdout
            .contains("host-local: Failed to find address added by container"),
        "{}",
        out.stdout
    );
}

#[test]
fn differential_same_sequence_and_files() {
    // The same sequence of ADD/DEL through Go v1.9.1 and cnibox gives the same results
    // and the same files (names, contents) in dataDir.
    let go = Rig::new();
    let ours = Rig::new();
    let ipam = |rig: &Rig| {
        conf(
            rig,
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/28"}], [{"subnet": "2001:db8::/120"}]], "routes": [{"dst": "0.0.0.0/0"}]}),
        )
    };
    let steps: Vec<(&str, String)> = (0..6)
        .map(|i| ("ADD", format!("c{i}")))
        .chain([("DEL", "c2".to_string()), ("DEL", "c4".to_string())])
        .chain((6..9).map(|i| ("ADD", format!("c{i}"))))
        .collect();
    for (cmd, id) in &steps {
        let g = go.call("host-local", cmd, &ipam(&go)).id(id).go().run();
        let o = ours.call("host-local", cmd, &ipam(&ours)).id(id).run();
        assert_eq!(g.code, o.code, "{cmd} {id}");
        assert_eq!(g.json, o.json, "{cmd} {id}");
    }
    let snapshot = |rig: &Rig| {
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir(rig))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n != "lock")
            .map(|n| (n.clone(), read(dir(rig).join(&n))))
            .collect();
        v.sort();
        v
    };
    assert_eq!(snapshot(&go), snapshot(&ours));
}

#[test]
fn state_interoperates_both_ways() {
    // Go allocates, cnibox continues the round-robin and releases Go's reservations;
    // then the reverse.
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/24"}));
    let g = rig
        .call("host-local", "ADD", &c)
        .id("go1")
        .go()
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&g, 0), "10.1.2.2/24");
    let o = rig
        .call("host-local", "ADD", &c)
        .id("rs1")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&o, 0), "10.1.2.3/24");
    let out = rig.call("host-local", "ADD", &c).id("go1").run();
    assert!(
        out.stdout.contains("duplicate allocation"),
        "{}",
        out.stdout
    );
    rig.call("host-local", "DEL", &c).id("go1").run().ok();
    rig.call("host-local", "DEL", &c).id("rs1").go().run().ok();
    assert!(reservations(&dir(&rig)).is_empty());
    // the installed base (Debian 1.1.1) too
    rig.call("host-local", "ADD", &c)
        .id("deb1")
        .debian()
        .run()
        .ok();
    rig.call("host-local", "DEL", &c).id("deb1").run().ok();
    assert!(reservations(&dir(&rig)).is_empty());
}

#[test]
fn concurrent_mixed_go_and_cnibox() {
    // 64 ADDs at once on one /24, half Go host-local, half cnibox: no duplicate, every
    // file well-formed; then all released.
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/24"}));
    let results: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..64)
            .map(|i| {
                let c = c.clone();
                let rig = &rig;
                s.spawn(move || {
                    let mut call = rig.call("host-local", "ADD", &c).id(&format!("p{i}"));
                    if i % 2 == 0 {
                        call = call.go();
                    }
                    call.run().ok().clone()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: HashSet<String> = results.iter().map(|v| addr_of(v, 0)).collect();
    assert_eq!(ips.len(), 64);
    let files = reservations(&dir(&rig));
    assert_eq!(files.len(), 64);
    for f in &files {
        let content = read(dir(&rig).join(f));
        let (id, ifname) = content.split_once("\r\n").expect("id\\r\\nifname");
        assert!(id.starts_with('p') && ifname == "eth0", "{f}: {content:?}");
    }
    std::thread::scope(|s| {
        for i in 0..64 {
            let c = c.clone();
            let rig = &rig;
            s.spawn(move || {
                let mut call = rig.call("host-local", "DEL", &c).id(&format!("p{i}"));
                if i % 3 == 0 {
                    call = call.go();
                }
                call.run().ok();
            });
        }
    });
    assert!(reservations(&dir(&rig)).is_empty());
}

#[test]
fn kill_during_adds_leaves_nothing_unremovable() {
    // 200 ADDs, one of them SIGKILLed at a random moment: no IP is held twice, and GC
    // with an empty valid list (plus DEL of everyone) leaves no reservation.
    let rig = Rig::new();
    let c = conf(&rig, "1.1.0", json!({"subnet": "10.1.0.0/16"}));
    let seed = std::process::id() as u64;
    let victim = (seed % 200) as usize;
    for i in 0..200 {
        let call = rig.call("host-local", "ADD", &c).id(&format!("k{i}"));
        if i == victim {
            // random delay 0..3ms before the kill
            call.run_killed_after(std::time::Duration::from_micros(seed % 3000));
        } else {
            call.run().ok();
        }
    }
    let files = reservations(&dir(&rig));
    let mut owners = HashSet::new();
    for f in &files {
        let content = read(dir(&rig).join(f));
        assert!(
            owners.insert(content.clone()),
            "two IPs for one attachment: {content:?}"
        );
    }
    assert!(files.len() >= 199);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    rig.call("host-local", "GC", &gc).run().ok();
    assert!(reservations(&dir(&rig)).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir(&rig))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn gc_releases_exactly_the_invalid() {
    let rig = Rig::new();
    let c = conf(&rig, "1.1.0", json!({"subnet": "10.1.2.0/24"}));
    for i in 0..10 {
        rig.call("host-local", "ADD", &c)
            .id(&format!("g{i}"))
            .run()
            .ok();
    }
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "g1", "ifname": "eth0"}, {"containerID": "g3", "ifname": "eth0"},
        {"containerID": "g5", "ifname": "eth0"}, {"containerID": "g7", "ifname": "eth0"}]);
    rig.call("host-local", "GC", &gc).run().ok();
    let owners: Vec<String> = reservations(&dir(&rig))
        .iter()
        .map(|f| read(dir(&rig).join(f)))
        .collect();
    let mut ids: Vec<&str> = owners
        .iter()
        .map(|c| c.split("\r\n").next().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["g1", "g3", "g5", "g7"]);
    // GC below 1.1.0 is refused
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(rig.call("host-local", "GC", &old).run().err_code(), 1);
}

#[test]
fn del_at_one_thousand_reservations() {
    // DEL must not read every file: with 1,000 reservations (written by Go, so without
    // our index) and 1,000 of ours, a DEL of ours is measured and reported (not asserted).
    let rig = Rig::new();
    let c = conf(&rig, "1.0.0", json!({"subnet": "10.1.0.0/16"}));
    std::fs::create_dir_all(dir(&rig)).unwrap();
    for i in 0..1000u32 {
        let ip = format!("10.1.{}.{}", 100 + i / 250, 1 + i % 250);
        std::fs::write(dir(&rig).join(ip), format!("go{i}\r\neth0")).unwrap();
    }
    for i in 0..1000 {
        rig.call("host-local", "ADD", &c)
            .id(&format!("rs{i}"))
            .run()
            .ok();
    }
    let t = std::time::Instant::now();
    rig.call("host-local", "DEL", &c).id("rs500").run().ok();
    let ours = t.elapsed();
    let t = std::time::Instant::now();
    rig.call("host-local", "DEL", &c)
        .id("rs501")
        .go()
        .run()
        .ok();
    eprintln!(
        "host-local DEL at 2,000 reservations: cnibox {ours:?}, Go v1.9.1 {:?}",
        t.elapsed()
    );
    assert_eq!(reservations(&dir(&rig)).len(), 1998);
    rig.call("host-local", "DEL", &c).id("go7").run().ok();
    assert_eq!(reservations(&dir(&rig)).len(), 1997);
}
