//! host-local through the built binary: §4.10 scenarios, config errors, state
//! compatibility with the Go plugin both ways, concurrency with a mixed Go/cnibox
//! population, GC. The store under stress (lock, kills, index) is in host_local_store.rs.

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

/// Invalid IPAM config through the binary: the code, and a message naming the key and
/// the value (JSON type mismatches are decode errors, code 6). Nothing is created in
/// dataDir by a refused config.
#[test]
fn config_errors() {
    let rig = Rig::new();
    let r = |range: Value| json!({"ranges": [[range]]});
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, Value, &str, i64, &str)> = vec![
        ("subnet without prefix", json!({"subnet": "10.1.2.0"}), json!({}), "", 7,
         r#"ipam: "subnet": "10.1.2.0" is not a CIDR (address/prefix length)"#),
        ("subnet bad address", json!({"subnet": "10.1.2.300/24"}), json!({}), "", 7,
         r#"ipam: "subnet": "10.1.2.300/24" is not a CIDR: "10.1.2.300" is not an IP address"#),
        ("subnet prefix too long v4", r(json!({"subnet": "10.1.2.0/33"})), json!({}), "", 7,
         r#"ipam.ranges[0][0]: "subnet": "10.1.2.0/33": prefix length "33" is out of range for IPv4 (0-32)"#),
        ("subnet prefix too long v6", r(json!({"subnet": "fd00::/129"})), json!({}), "", 7,
         r#"ipam.ranges[0][0]: "subnet": "fd00::/129": prefix length "129" is out of range for IPv6 (0-128)"#),
        ("subnet prefix not a number", json!({"subnet": "10.1.2.0/x"}), json!({}), "", 7,
         r#""subnet": "10.1.2.0/x": prefix length "x" is out of range"#),
        ("subnet /31", json!({"subnet": "10.1.2.0/31"}), json!({}), "", 7,
         r#"ipam: "subnet": 10.1.2.0/31 is too small to allocate from (the smallest is /30)"#),
        ("subnet /32", json!({"subnet": "10.1.2.1/32"}), json!({}), "", 7,
         r#""subnet": 10.1.2.1/32 is too small to allocate from"#),
        ("subnet /127", r(json!({"subnet": "fd00::/127"})), json!({}), "", 7,
         r#"ipam.ranges[0][0]: "subnet": fd00::/127 is too small to allocate from (the smallest is /126)"#),
        ("subnet /128", r(json!({"subnet": "fd00::1/128"})), json!({}), "", 7,
         r#""subnet": fd00::1/128 is too small"#),
        ("subnet host bits", json!({"subnet": "10.1.2.5/24"}), json!({}), "", 7,
         r#"ipam: "subnet": 10.1.2.5/24 has host bits set (the network is 10.1.2.0/24)"#),
        ("subnet missing in a range", r(json!({"rangeStart": "10.1.2.5"})), json!({}), "", 7,
         r#"ipam.ranges[0][0]: "subnet" is missing"#),
        ("rangeStart not an IP", r(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.300"})), json!({}), "", 7,
         r#"ipam.ranges[0][0]: "rangeStart": "10.0.0.300" is not an IP address"#),
        ("rangeEnd not an IP", json!({"subnet": "10.0.0.0/24", "rangeEnd": "x"}), json!({}), "", 7,
         r#"ipam: "rangeEnd": "x" is not an IP address"#),
        ("rangeStart outside", json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}), json!({}), "", 7,
         r#"ipam: "rangeStart": 10.1.3.1 is outside "subnet" 10.1.2.0/24"#),
        ("rangeEnd outside", json!({"subnet": "10.1.2.0/24", "rangeEnd": "10.1.4.1"}), json!({}), "", 7,
         r#"ipam: "rangeEnd": 10.1.4.1 is outside "subnet" 10.1.2.0/24"#),
        ("rangeStart other family", json!({"subnet": "10.1.2.0/24", "rangeStart": "fd00::1"}), json!({}), "", 7,
         r#"ipam: "rangeStart": fd00::1 is outside "subnet" 10.1.2.0/24"#),
        ("rangeStart after rangeEnd", r(json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.50", "rangeEnd": "10.1.2.10"})), json!({}), "", 7,
         r#"ipam.ranges[0][0]: "rangeStart": 10.1.2.50 is after "rangeEnd" 10.1.2.10"#),
        ("rangeStart after the default rangeEnd", json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.255"}), json!({}), "", 7,
         r#"ipam: "rangeStart": 10.1.2.255 is after "rangeEnd" 10.1.2.254 (default)"#),
        ("gateway not an IP", json!({"subnet": "10.0.0.0/24", "gateway": "10.0.0.x"}), json!({}), "", 7,
         r#"ipam: "gateway": "10.0.0.x" is not an IP address"#),
        ("gateway outside", json!({"subnet": "10.0.0.0/24", "gateway": "10.1.0.1"}), json!({}), "", 7,
         r#"ipam: "gateway": 10.1.0.1 is outside "subnet" 10.0.0.0/24"#),
        ("gateway other family", r(json!({"subnet": "fd00::/64", "gateway": "10.0.0.1"})), json!({}), "", 7,
         r#"ipam.ranges[0][0]: "gateway": 10.0.0.1 is outside "subnet" fd00::/64"#),
        ("range of only the gateway", json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.1", "rangeEnd": "10.1.2.1"}), json!({}), "", 7,
         r#"ipam: the range 10.1.2.1-10.1.2.1 holds only its "gateway" 10.1.2.1: no address to allocate"#),
        ("no ranges at all", json!({}), json!({}), "", 7,
         r#"no IP ranges specified: neither "ranges" nor "subnet" is set"#),
        ("empty ranges", json!({"ranges": []}), json!({}), "", 7,
         r#"no IP ranges specified: "ranges" is empty and there is no "subnet""#),
        ("empty range set", json!({"ranges": [[{"subnet": "10.1.2.0/24"}], []]}), json!({}), "", 7,
         r#"ipam.ranges[1]: the range set is empty (it needs at least one range)"#),
        ("overlapping ranges in a set", json!({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.128/25"}]]}), json!({}), "", 7,
         r#"ipam.ranges[0][1]: 10.1.2.129-10.1.2.254 (in 10.1.2.128/25) overlaps ipam.ranges[0][0] (10.1.2.1-10.1.2.254 in 10.1.2.0/24)"#),
        ("overlapping sets", json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.0/24"}]]}), json!({}), "", 7,
         r#"ipam.ranges[1]: range set 10.1.2.1-10.1.2.254 overlaps ipam.ranges[0] (10.1.2.1-10.1.2.254)"#),
        ("legacy range overlapping a set", json!({"subnet": "10.1.2.0/24", "ranges": [[{"subnet": "10.1.2.0/25"}]]}), json!({}), "", 7,
         r#"ipam.ranges[0]: range set 10.1.2.1-10.1.2.126 overlaps ipam (10.1.2.1-10.1.2.254)"#),
        ("ipRanges overlapping a set", json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}),
         json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.1.2.0/24"}]]}}), "", 7,
         r#"ipam.ranges[0]: range set 10.1.2.1-10.1.2.254 overlaps runtimeConfig.ipRanges[0] (10.1.2.1-10.1.2.254)"#),
        ("bad ipRanges", json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}),
         json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.1.3.0/24", "rangeEnd": "10.1.2.9"}]]}}), "", 7,
         r#"runtimeConfig.ipRanges[0][0]: "rangeEnd": 10.1.2.9 is outside "subnet" 10.1.3.0/24"#),
        ("mixed families in a set", json!({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]]}), json!({}), "", 7,
         r#"ipam.ranges[0][1]: "subnet" 2001:db8::/64 is IPv6 but ipam.ranges[0][0] (10.1.2.0/24) is IPv4: a range set holds one family"#),
        ("route dst not a CIDR", json!({"subnet": "10.1.2.0/24", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0"}]}), json!({}), "", 7,
         r#"ipam.routes[1]: "dst": "10.9.0.0" is not a CIDR (address/prefix length)"#),
        ("route dst missing", json!({"subnet": "10.1.2.0/24", "routes": [{"gw": "10.1.2.1"}]}), json!({}), "", 7,
         r#"ipam.routes[0]: "dst" is missing"#),
        ("route gw not an IP", json!({"subnet": "10.1.2.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.256"}]}), json!({}), "", 7,
         r#"ipam.routes[0]: "gw": "10.1.2.256" is not an IP address"#),
        ("runtimeConfig.ips not an IP", json!({"subnet": "10.1.2.0/24"}), json!({"runtimeConfig": {"ips": ["10.1.2.5", "nope"]}}), "", 7,
         r#"runtimeConfig.ips[1]: "nope" is not an IP address"#),
        ("runtimeConfig.ips bad prefix", json!({"subnet": "10.1.2.0/24"}), json!({"runtimeConfig": {"ips": ["10.1.2.5/33"]}}), "", 7,
         r#"runtimeConfig.ips[0]: "10.1.2.5/33" is not an IP address"#),
        ("args.cni.ips not an IP", json!({"subnet": "10.1.2.0/24"}), json!({"args": {"cni": {"ips": ["10.1.2.300"]}}}), "", 7,
         r#"args.cni.ips[0]: "10.1.2.300" is not an IP address"#),
        ("CNI_ARGS IP not an IP", json!({"subnet": "10.1.2.0/24"}), json!({}), "IP=10.1.2.x", 4,
         r#"CNI_ARGS: "IP": "10.1.2.x" is not an IP address"#),
        ("two IPv4 sets under 0.2.0", json!({"cniVersion": "0.2.0", "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]}), json!({}), "", 7,
         "CNI version 0.2.0 does not support more than 1 address per family"),
        ("ipam missing", Value::Null, json!({}), "", 7, "IPAM config missing 'ipam' key"),
        // JSON type mismatches: decode errors
        ("subnet a number", json!({"subnet": 10}), json!({}), "", 6, "failed to load netconf"),
        ("ranges a string", json!({"ranges": "10.1.2.0/24"}), json!({}), "", 6, "failed to load netconf"),
        ("runtimeConfig.ips a string", json!({"subnet": "10.1.2.0/24"}), json!({"runtimeConfig": {"ips": "10.1.2.5"}}), "", 6,
         r#"runtimeConfig.ips: expected a list of strings, got "10.1.2.5""#),
        ("args.cni.ips of numbers", json!({"subnet": "10.1.2.0/24"}), json!({"args": {"cni": {"ips": [5]}}}), "", 6,
         "args.cni.ips: expected a list of strings, got [5]"),
        ("ipRanges a string", json!({"subnet": "10.1.2.0/24"}), json!({"runtimeConfig": {"ipRanges": "x"}}), "", 6,
         "runtimeConfig.ipRanges: "),
        ("route dst a number", json!({"subnet": "10.1.2.0/24", "routes": [{"dst": 0}]}), json!({}), "", 6,
         "ipam.routes[0]: dst: expected a string, got 0"),
        ("route not an object", json!({"subnet": "10.1.2.0/24", "routes": ["0.0.0.0/0"]}), json!({}), "", 6,
         r#"ipam.routes[0]: expected an object, got "0.0.0.0/0""#),
    ];
    for (what, ipam, extra, args, code, msg) in cases {
        let mut c = if ipam.is_null() {
            json!({"cniVersion": "1.0.0", "name": "hlnet", "type": "ipam-test"})
        } else {
            let mut ipam = ipam.clone();
            let ver = ipam
                .as_object_mut()
                .and_then(|o| o.remove("cniVersion"))
                .unwrap_or(json!("1.0.0"));
            let mut c = conf(&rig, "1.0.0", ipam);
            c["cniVersion"] = ver;
            c
        };
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let mut call = rig.call("host-local", "ADD", &c);
        if !args.is_empty() {
            call = call.args(args);
        }
        let out = call.run();
        assert_eq!(out.err_code(), code, "{what}: {}", out.stdout);
        let got = out.json.as_ref().unwrap()["msg"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(got.contains(msg), "{what}: want {msg:?}\n in {got:?}");
    }
    assert!(
        !rig.data_dir().exists(),
        "a refused config must not create the store"
    );
    // The smallest networks the reference accepts still work.
    let v = rig
        .call(
            "host-local",
            "ADD",
            &conf(&rig, "1.0.0", json!({"subnet": "10.1.2.0/30"})),
        )
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v, 0), "10.1.2.2/30");
    let v = rig
        .call(
            "host-local",
            "ADD",
            &conf(
                &rig,
                "1.0.0",
                json!({"ranges": [[{"subnet": "fd00::/126"}]]}),
            ),
        )
        .id("v6")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v, 0), "fd00::2/126");
    // One v4 and one v6 set are fine under 0.2.0.
    let v = rig
        .call(
            "host-local",
            "ADD",
            &conf(
                &rig,
                "0.2.0",
                json!({"ranges": [[{"subnet": "10.1.3.0/24"}], [{"subnet": "2001:db8::/64"}]]}),
            ),
        )
        .id("old")
        .run()
        .ok()
        .clone();
    assert_eq!(v["ip4"]["ip"], "10.1.3.2/24");
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
