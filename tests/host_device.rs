//! host-device through the built binary (§2.6, §4.6 of the reference notes). The
//! "host device" is one end of a veth pair made in the rig's own host namespace, so
//! nothing real moves. PCI, virtio, DPDK, auxiliary and kernel-path selection read a
//! fixture sysfs tree (`CNIBOX_SYSFS_ROOT`) whose `net/` entries name those veths.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A veth `name` (peer `<name>p`) in the rig's host namespace, configured like a real
/// uplink: MTU 1400, an alias, IPv4 and IPv6 addresses, a static route, UP.
fn make_dev(rig: &Rig, name: &str, n: u8) {
    let peer = format!("{name}p");
    rig.host.ip(&[
        "link", "add", name, "mtu", "1400", "type", "veth", "peer", "name", &peer,
    ]);
    // No IPv6 DAD on the pair: snapshots taken while it runs would differ.
    for dev in [name, peer.as_str()] {
        let out = rig.host.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{dev}.accept_dad=0"),
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    rig.host.ip(&["link", "set", &peer, "up"]);
    rig.host
        .ip(&["link", "set", name, "alias", &format!("uplink {n}")]);
    rig.host
        .ip(&["addr", "add", &format!("10.50.{n}.2/24"), "dev", name]);
    rig.host.ip(&[
        "addr",
        "add",
        &format!("fd50:{n}::2/64"),
        "dev",
        name,
        "nodad",
    ]);
    rig.host.ip(&["link", "set", name, "up"]);
    rig.host.ip(&[
        "route",
        "add",
        &format!("10.60.{n}.0/24"),
        "via",
        &format!("10.50.{n}.1"),
        "dev",
        name,
    ]);
}

/// What DEL must restore: name, MAC, MTU, UP, alias, global addresses, routes.
fn dev_state(ns: &Netns, name: &str) -> Value {
    let Some(l) = link(ns, name) else {
        return Value::Null;
    };
    let mut a: Vec<String> = addrs(ns, name)
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    a.sort();
    let mut r: Vec<String> = Vec::new();
    for fam in ["-4", "-6"] {
        for x in ns
            .ip_json(&[fam, "route", "show", "dev", name])
            .as_array()
            .unwrap()
        {
            if x["protocol"] != "kernel" {
                r.push(format!("{} via {}", x["dst"], x["gateway"]));
            }
        }
    }
    r.sort();
    json!({"name": name, "mac": l["address"], "mtu": l["mtu"],
        "up": l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "alias": l["ifalias"], "addrs": a, "routes": r})
}

fn conf(rig: &Rig, extra: Value) -> Value {
    merged(
        json!({"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device",
            "dataDir": rig.dir.join("hd-state")}),
        &extra,
    )
}

fn conf_ipam(rig: &Rig, extra: Value) -> Value {
    conf(
        rig,
        merged(
            json!({"ipam": {"type": "host-local", "subnet": "10.44.0.0/24",
                "routes": [{"dst": "10.45.0.0/16"}], "dataDir": rig.data_dir()}}),
            &extra,
        ),
    )
}

fn state_files(rig: &Rig) -> Vec<String> {
    std::fs::read_dir(rig.dir.join("hd-state"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn round_trip_restores_name_mtu_addresses_routes_and_up() {
    let rig = Rig::new();
    make_dev(&rig, "hd0", 0);
    let before = dev_state(&rig.host, "hd0");
    assert_eq!(before["routes"].as_array().unwrap().len(), 1, "{before}");
    let c = conf(&rig, json!({"device": "hd0"}));
    let v = rig
        .call("host-device", "ADD", &c)
        .ifname("net1")
        .run()
        .ok()
        .clone();
    assert_eq!(
        v["interfaces"],
        json!([{"name": "net1", "mac": before["mac"], "sandbox": rig.cont.path}])
    );
    assert!(link(&rig.host, "hd0").is_none(), "still in the host");
    let inside = dev_state(&rig.cont, "net1");
    assert_eq!(inside["mac"], before["mac"]);
    assert_eq!(inside["up"], true);
    // The reference's marker: the original name in the alias.
    assert_eq!(inside["alias"], "hd0");
    assert_eq!(state_files(&rig), vec!["ctr1_net1.json"]);
    rig.call("host-device", "CHECK", &with_prev(&c, &v))
        .ifname("net1")
        .run()
        .ok();

    // What a chained tuning plugin might do inside.
    rig.cont.ip(&["link", "set", "net1", "mtu", "1300", "down"]);
    rig.call("host-device", "DEL", &with_prev(&c, &v))
        .ifname("net1")
        .run()
        .ok();
    assert!(link(&rig.cont, "net1").is_none());
    assert_eq!(dev_state(&rig.host, "hd0"), before);
    assert!(state_files(&rig).is_empty());
    // DEL is idempotent.
    rig.call("host-device", "DEL", &c).ifname("net1").run().ok();
    assert_eq!(dev_state(&rig.host, "hd0"), before);

    // A device that was DOWN stays DOWN, and old versions work too.
    rig.host.ip(&["link", "set", "hd0", "down"]);
    let before = dev_state(&rig.host, "hd0");
    let c = conf(&rig, json!({"device": "hd0", "cniVersion": "0.3.1"}));
    let v = rig.call("host-device", "ADD", &c).run().ok().clone();
    assert_eq!(v["cniVersion"], "0.3.1");
    assert_eq!(dev_state(&rig.cont, "eth0")["up"], true);
    rig.call("host-device", "DEL", &c).run().ok();
    assert_eq!(dev_state(&rig.host, "hd0"), before);
}

#[test]
fn with_ipam_addresses_check_and_release() {
    let rig = Rig::new();
    make_dev(&rig, "hd1", 1);
    let before = dev_state(&rig.host, "hd1");
    let c = conf_ipam(
        &rig,
        json!({"device": "hd1", "dns": {"nameservers": ["10.44.0.53"]}}),
    );
    let v = rig.call("host-device", "ADD", &c).run().ok().clone();
    assert_eq!(
        v["ips"],
        json!([{"address": "10.44.0.2/24", "gateway": "10.44.0.1", "interface": 0}])
    );
    assert_eq!(v["dns"], json!({"nameservers": ["10.44.0.53"]}));
    assert_eq!(
        dev_state(&rig.cont, "eth0")["addrs"],
        json!(["10.44.0.2/24"]),
        "only IPAM's addresses inside"
    );
    assert!(routes(&rig.cont, false)
        .iter()
        .any(|r| r["dst"] == "10.45.0.0/16" && r["gateway"] == "10.44.0.1"));
    rig.call("host-device", "CHECK", &with_prev(&c, &v))
        .run()
        .ok();
    // CHECK notices a changed MAC.
    rig.cont
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    let out = rig.call("host-device", "CHECK", &with_prev(&c, &v)).run();
    assert!(
        out.stdout.contains("doesn't match container Mac"),
        "{}",
        out.stdout
    );
    rig.cont.ip(&[
        "link",
        "set",
        "eth0",
        "address",
        before["mac"].as_str().unwrap(),
    ]);

    rig.call("host-device", "DEL", &with_prev(&c, &v))
        .run()
        .ok();
    assert_eq!(dev_state(&rig.host, "hd1"), before);
    assert!(reservations(&rig.data_dir().join("hdnet")).is_empty());
    // STATUS and GC go to IPAM.
    let c11 = merged(c.clone(), &json!({"cniVersion": "1.1.0"}));
    rig.call("host-device", "STATUS", &c11).run().ok();
    rig.call("host-device", "ADD", &c11).run().ok();
    let gc = merged(c11.clone(), &json!({"cni.dev/valid-attachments": []}));
    rig.call("host-device", "GC", &gc).run().ok();
    assert!(reservations(&rig.data_dir().join("hdnet")).is_empty());
    rig.call("host-device", "DEL", &c11).run().ok();
    assert_eq!(dev_state(&rig.host, "hd1"), before);
}

// ---------------------------------------------------------------------------------------
// sysfs fixtures

fn mkdir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
}

fn symlink(target: &str, at: &Path) {
    mkdir(at.parent().unwrap());
    std::os::unix::fs::symlink(target, at).unwrap();
}

/// A PCI device `addr` under `root`, bound to `driver`, its net device(s) in `net/`
/// (or in `virtio3/net/` when `virtio`).
fn pci_fixture(root: &Path, addr: &str, driver: &str, net: &[&str], virtio: bool) {
    let dev = root.join("sys/devices/pci0000:00").join(addr);
    let netdir = if virtio {
        dev.join("virtio3/net")
    } else {
        dev.join("net")
    };
    for n in net {
        mkdir(&netdir.join(n));
    }
    mkdir(&dev);
    mkdir(&root.join("sys/bus/pci/drivers").join(driver));
    symlink(
        &format!("../../../bus/pci/drivers/{driver}"),
        &dev.join("driver"),
    );
    symlink(
        &format!("../../../devices/pci0000:00/{addr}"),
        &root.join("sys/bus/pci/devices").join(addr),
    );
}

fn fixture(rig: &Rig) -> PathBuf {
    let root = rig.dir.join("sysfs");
    // Two net entries: the first in name order is taken, as the reference does.
    pci_fixture(&root, "0000:00:05.0", "virtio-pci", &["sel2", "zz9"], false);
    pci_fixture(&root, "0000:00:06.0", "virtio-pci", &["sel3"], true);
    pci_fixture(&root, "0000:00:07.0", "vfio-pci", &[], false);
    pci_fixture(&root, "0000:00:08.0", "mlx5_core", &["sel4"], false);
    mkdir(&root.join("sys/bus/auxiliary/devices/mlx5_core.sf.4/net/sel5"));
    root
}

#[test]
fn selectors_by_mac_kernel_path_pci_virtio_device_id_and_auxiliary() {
    let rig = Rig::new();
    let root = fixture(&rig);
    let root = root.to_str().unwrap();
    for (i, dev) in ["sel1", "sel2", "sel3", "sel4", "sel5"].iter().enumerate() {
        make_dev(&rig, dev, 10 + i as u8);
    }
    let mac1 = link(&rig.host, "sel1").unwrap()["address"].clone();
    let cases = [
        (
            "sel1",
            json!({"hwaddr": mac1.as_str().unwrap().to_uppercase()}),
        ),
        (
            "sel2",
            json!({"kernelpath": "/sys/devices/pci0000:00/0000:00:05.0"}),
        ),
        ("sel2", json!({"pciBusID": "0000:00:05.0"})),
        ("sel3", json!({"pciBusID": "0000:00:06.0"})),
        (
            "sel4",
            json!({"runtimeConfig": {"deviceID": "0000:00:08.0"}}),
        ),
        (
            "sel5",
            json!({"runtimeConfig": {"deviceID": "mlx5_core.sf.4"}}),
        ),
        // The selector order: device beats everything, deviceID replaces pciBusID.
        (
            "sel1",
            json!({"device": "sel1", "pciBusID": "0000:00:05.0"}),
        ),
        (
            "sel4",
            json!({"pciBusID": "0000:00:05.0", "runtimeConfig": {"deviceID": "0000:00:08.0"}}),
        ),
    ];
    for (dev, extra) in cases {
        let before = dev_state(&rig.host, dev);
        let c = conf(&rig, extra.clone());
        let v = rig
            .call("host-device", "ADD", &c)
            .env("CNIBOX_SYSFS_ROOT", root)
            .run()
            .ok()
            .clone();
        assert_eq!(v["interfaces"][0]["mac"], before["mac"], "{extra}");
        assert!(link(&rig.host, dev).is_none(), "{extra}: {dev} not moved");
        assert_eq!(dev_state(&rig.cont, "eth0")["alias"], *dev, "{extra}");
        rig.call("host-device", "CHECK", &with_prev(&c, &v))
            .env("CNIBOX_SYSFS_ROOT", root)
            .run()
            .ok();
        // DEL needs no sysfs at all.
        rig.call("host-device", "DEL", &c).run().ok();
        assert_eq!(dev_state(&rig.host, dev), before, "{extra}");
    }
}

#[test]
fn dpdk_devices_are_not_moved() {
    let rig = Rig::new();
    let root = fixture(&rig);
    let root = root.to_str().unwrap();
    let c = conf_ipam(&rig, json!({"pciBusID": "0000:00:07.0"}));
    let before = shape(&rig);
    let v = rig
        .call("host-device", "ADD", &c)
        .env("CNIBOX_SYSFS_ROOT", root)
        .run()
        .ok()
        .clone();
    assert_eq!(
        v["interfaces"],
        json!([{"name": "eth0", "sandbox": rig.cont.path}])
    );
    assert_eq!(v["ips"][0]["address"], "10.44.0.2/24");
    assert!(
        link(&rig.cont, "eth0").is_none(),
        "nothing moved, nothing configured"
    );
    rig.call("host-device", "CHECK", &with_prev(&c, &v))
        .env("CNIBOX_SYSFS_ROOT", root)
        .run()
        .ok();
    rig.call("host-device", "DEL", &c).run().ok();
    assert_eq!(shape(&rig), before);
    // The reference's undocumented DPDKMode key forces it too; a DPDK driver wins
    // over a `device` selector, as in the reference.
    make_dev(&rig, "hd7", 7);
    for extra in [
        json!({"device": "hd7", "dpdkMode": true}),
        json!({"device": "hd7", "pciBusID": "0000:00:07.0"}),
    ] {
        let c = conf(&rig, extra.clone());
        let v = rig
            .call("host-device", "ADD", &c)
            .env("CNIBOX_SYSFS_ROOT", root)
            .run()
            .ok()
            .clone();
        assert_eq!(v["interfaces"][0].get("mac"), None, "{extra}");
        assert!(link(&rig.host, "hd7").is_some(), "{extra}");
    }
}

// ---------------------------------------------------------------------------------------
// DEL tolerance

#[test]
fn del_when_the_netns_is_gone_or_empty_still_releases_ipam() {
    let mut rig = Rig::new();
    make_dev(&rig, "hd2", 2);
    let c = conf_ipam(&rig, json!({"device": "hd2"}));
    rig.call("host-device", "ADD", &c).run().ok();
    assert_eq!(reservations(&rig.data_dir().join("hdnet")).len(), 1);
    // A veth dies with the namespace (a physical NIC would return to the host).
    let gone = rig.cont.path.to_str().unwrap().to_string();
    rig.drop_cont();
    rig.call("host-device", "DEL", &c).netns(&gone).run().ok();
    assert!(reservations(&rig.data_dir().join("hdnet")).is_empty());
    assert!(state_files(&rig).is_empty());
    rig.call("host-device", "DEL", &c).netns(&gone).run().ok();

    // Empty CNI_NETNS: the reference returns at once and leaks the address (cni#1167).
    make_dev(&rig, "hd3", 3);
    let ns = rig.new_netns();
    let c = conf_ipam(&rig, json!({"device": "hd3"}));
    rig.call("host-device", "ADD", &c)
        .netns(ns.path.to_str().unwrap())
        .run()
        .ok();
    rig.call("host-device", "DEL", &c).netns("").run().ok();
    assert!(reservations(&rig.data_dir().join("hdnet")).is_empty());
}

#[test]
fn del_restores_a_device_the_kernel_returned_to_the_host() {
    let mut rig = Rig::new();
    make_dev(&rig, "hd4", 4);
    let before = dev_state(&rig.host, "hd4");
    let c = conf_ipam(&rig, json!({"device": "hd4"}));
    rig.call("host-device", "ADD", &c).run().ok();
    // What the kernel does with a physical NIC when its namespace dies: back to the
    // initial namespace under its container name, alias kept, addresses gone. (A veth
    // would be destroyed instead, so the move is done by hand.)
    rig.cont
        .ip(&["link", "set", "eth0", "netns", &rig.host.name]);
    let gone = rig.cont.path.to_str().unwrap().to_string();
    rig.drop_cont();
    assert_eq!(dev_state(&rig.host, "eth0")["alias"], "hd4");
    rig.call("host-device", "DEL", &c).netns(&gone).run().ok();
    assert!(link(&rig.host, "eth0").is_none());
    assert_eq!(dev_state(&rig.host, "hd4"), before);
    assert!(reservations(&rig.data_dir().join("hdnet")).is_empty());
}

#[test]
fn del_fails_while_the_name_is_taken_and_succeeds_later() {
    let rig = Rig::new();
    make_dev(&rig, "hd5", 5);
    let before = dev_state(&rig.host, "hd5");
    let c = conf(&rig, json!({"device": "hd5"}));
    rig.call("host-device", "ADD", &c).run().ok();
    rig.host.ip(&[
        "link", "add", "hd5", "type", "veth", "peer", "name", "squat",
    ]);
    let inside = dev_state(&rig.cont, "eth0");
    let out = rig.call("host-device", "DEL", &c).run();
    out.err_code();
    assert!(
        out.stdout.contains("an interface of that name exists"),
        "{}",
        out.stdout
    );
    // Left as it was in the container, UP.
    assert_eq!(dev_state(&rig.cont, "eth0"), inside);
    assert_eq!(
        state_files(&rig).len(),
        1,
        "the saved state is kept for the retry"
    );
    rig.host.ip(&["link", "del", "hd5"]);
    rig.call("host-device", "DEL", &c).run().ok();
    assert_eq!(dev_state(&rig.host, "hd5"), before);
}

// ---------------------------------------------------------------------------------------
// Rollback

/// A fake IPAM plugin: `ADD` runs `add_body` (shell); `DEL` touches `<dir>/<name>.del`.
fn fake_ipam(rig: &Rig, name: &str, add_body: &str) -> PathBuf {
    let marker = rig.dir.join(format!("{name}.del"));
    let p = rig.cni_path.join(name);
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n{add_body}\nfi\n\
             if [ \"$CNI_COMMAND\" = DEL ]; then touch {}; fi\nexit 0\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    marker
}

#[test]
fn failed_add_puts_the_device_back_as_it_was() {
    let rig = Rig::new();
    make_dev(&rig, "hd6", 6);
    fake_ipam(
        &rig,
        "failing-ipam",
        r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses today"}'; exit 1"#,
    );
    // A route through an unreachable gateway: fails after the device is inside, UP,
    // with IPAM's address.
    let released = fake_ipam(
        &rig,
        "bad-route-ipam",
        r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.46.0.2/24"}],"routes":[{"dst":"10.47.0.0/16","gw":"192.0.2.1"}]}'"#,
    );
    let before = shape(&rig);
    let state = dev_state(&rig.host, "hd6");
    for (ipam, code) in [("failing-ipam", 11), ("bad-route-ipam", 999)] {
        let c = conf(&rig, json!({"device": "hd6", "ipam": {"type": ipam}}));
        let out = rig.call("host-device", "ADD", &c).run();
        assert_eq!(out.err_code(), code, "{}", out.stdout);
        assert_eq!(dev_state(&rig.host, "hd6"), state, "{ipam}");
        assert_eq!(shape(&rig), before, "{ipam}: the failed ADD left something");
        assert!(state_files(&rig).is_empty(), "{ipam}");
    }
    assert!(released.exists(), "the IPAM allocation was not released");
}

// ---------------------------------------------------------------------------------------
// The Go plugin side by side

#[test]
fn differential_and_cross_del_with_go() {
    let rig = Rig::new();
    make_dev(&rig, "ours", 8);
    make_dev(&rig, "gos", 9);
    let (ours_before, go_before) = (dev_state(&rig.host, "ours"), dev_state(&rig.host, "gos"));
    let go_ns = rig.add_cont();
    let go_path = go_ns.path.to_str().unwrap().to_string();
    let c_ours = conf_ipam(&rig, json!({"device": "ours", "dns": {"search": ["x"]}}));
    let c_go = conf_ipam(&rig, json!({"device": "gos", "dns": {"search": ["x"]}}));
    let ours = rig.call("host-device", "ADD", &c_ours).run().ok().clone();
    let go = rig
        .call("host-device", "ADD", &c_go)
        .id("ctr2")
        .netns(&go_path)
        .go()
        .run()
        .ok()
        .clone();
    let strip = |v: &Value| {
        let mut n = normalize_result(v);
        n["ips"][0]["address"] = json!("<ip>");
        n
    };
    assert_eq!(strip(&ours), strip(&go), "results");
    let shape = |ns: &Netns| {
        let mut s = dev_state(ns, "eth0");
        s["mac"] = json!("<mac>");
        s["alias"] = json!(s["alias"].is_string());
        s["addrs"] = json!(s["addrs"].as_array().unwrap().len());
        s
    };
    assert_eq!(
        shape(&rig.cont),
        shape(&go_ns),
        "the device in the container"
    );
    // Each CHECKs the other's ADD.
    rig.call("host-device", "CHECK", &with_prev(&c_ours, &ours))
        .go()
        .run()
        .ok();
    rig.call("host-device", "CHECK", &with_prev(&c_go, &go))
        .id("ctr2")
        .netns(&go_path)
        .run()
        .ok();

    // Go's DEL of our ADD: back under its name (DOWN, as Go leaves it), address freed.
    rig.call("host-device", "DEL", &c_ours).go().run().ok();
    let back = dev_state(&rig.host, "ours");
    assert_eq!(
        (back["mac"].clone(), back["up"].clone()),
        (ours_before["mac"].clone(), json!(false))
    );
    // Our DEL of Go's ADD: back under its name; Go saved nothing else, so DOWN too.
    rig.call("host-device", "DEL", &c_go)
        .id("ctr2")
        .netns(&go_path)
        .run()
        .ok();
    let back = dev_state(&rig.host, "gos");
    assert_eq!(back["mac"], go_before["mac"]);
    assert_eq!(back["alias"], Value::Null, "Go's marker removed");
    assert_eq!(back["up"], false);
    assert!(link(&go_ns, "eth0").is_none() && link(&rig.cont, "eth0").is_none());
    assert!(reservations(&rig.data_dir().join("hdnet")).is_empty());

    // The reference's DEL is not idempotent, ours is (§5.2).
    let again = rig
        .call("host-device", "DEL", &c_go)
        .id("ctr2")
        .netns(&go_path)
        .go()
        .run();
    assert_ne!(again.code, 0, "the reference's second DEL succeeds now?");
    rig.call("host-device", "DEL", &c_go)
        .id("ctr2")
        .netns(&go_path)
        .run()
        .ok();
}

// ---------------------------------------------------------------------------------------
// Malformed input

/// What a failed ADD (or an ADD + DEL) must leave as it found it when a device moved
/// and came back: the links of both namespaces (name, kind, MAC, MTU, flags, alias),
/// their global addresses and routes (as sets: a device coming back is listed last,
/// and its IPv4 addresses regain an explicit broadcast, see README), the address
/// reservations and the state files.
fn shape(rig: &Rig) -> String {
    let mut s = String::new();
    for ns in [&rig.host, &rig.cont] {
        let mut names: Vec<String> = links(ns)
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        for n in names {
            let l = link(ns, &n).unwrap();
            s.push_str(&format!(
                "{n} {} {} {} {}\n",
                l["linkinfo"]["info_kind"],
                l["mtu"],
                l["flags"],
                dev_state(ns, &n)
            ));
        }
    }
    s.push_str(&format!(
        "{:?}",
        reservations(&rig.data_dir().join("hdnet"))
    ));
    s.push_str(&format!("{:?}", state_files(rig)));
    s
}

/// Every case of the table fails with its code and changes nothing: both namespaces,
/// the IPAM data dir and host-device's state dir.
#[test]
fn malformed_inputs_get_the_right_code_and_change_nothing() {
    let rig = Rig::new();
    make_dev(&rig, "hdm", 30);
    settle(&rig.host, &["hdm", "hdmp"]);
    let root = fixture(&rig);
    let snap = Snap {
        trees: vec![rig.data_dir(), rig.dir.join("hd-state")],
        ..Snap::default()
    };
    let base = conf_ipam(&rig, json!({"device": "hdm"}));
    let table = include_str!("../testdata/malformed-host-device.json");
    Malformed::new("host-device", table, 10, base)
        .env("CNIBOX_SYSFS_ROOT", root.to_str().unwrap())
        .snap(snap)
        .run(&rig);
}

#[test]
fn del_succeeds_where_add_would_refuse() {
    let rig = Rig::new();
    for extra in [
        json!({}),
        json!({"hwaddr": "zz"}),
        json!({"kernelpath": "relative"}),
        json!({"runtimeConfig": {"deviceID": "0000:99:00.0"}}),
        json!({"pciBusID": "0000:99:00.0", "dataDir": 5}),
    ] {
        let c = conf_ipam(&rig, extra.clone());
        assert_ne!(rig.call("host-device", "ADD", &c).run().code, 0, "{extra}");
        let out = rig.call("host-device", "DEL", &c).run();
        assert_eq!(out.code, 0, "DEL of {extra}: {}", out.stdout);
    }
}
