//! Helpers shared by the macvlan, ipvlan and vlan tests: parent links inside the rig's
//! namespaces, kernel-support probes for the VM-only kinds, and the normalised kernel
//! state the differential tests compare with the Go reference. (The snapshot and the
//! malformed-input runner are the common ones: `snapshot`, `Malformed`.)

#![allow(dead_code)]

use super::common::*;
use cnibox::netlink::{Link, LinkId};
use serde_json::{json, Value};

/// A veth pair `name` / `<name>p` in `ns`, both up: a parent with carrier that is
/// entirely the test's own (never a real NIC). Returns `name`'s ifindex. One `ip`
/// process (batch): each costs a lot in the emulated VM.
pub fn parent(ns: &Netns, name: &str) -> u64 {
    let peer = format!("{name}p");
    // No IPv6 link-local addresses: their DAD finishing later would show up as a
    // change in the before/after snapshots.
    let script = format!(
        "link add {name} type veth peer name {peer}\n\
         link set {name} addrgenmode none\nlink set {peer} addrgenmode none\n\
         link set {name} up\nlink set {peer} up\n"
    );
    batch(ns, &script);
    settle(ns, &[name, &peer]);
    nl_link(ns, name).expect("parent").index as u64
}

/// Run `ip -n <ns> -batch -` on `script`, panicking on failure.
pub fn batch(ns: &Netns, script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ip -batch");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ip -batch {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `name` in `ns`, read in-process.
pub fn nl_link(ns: &Netns, name: &str) -> Option<Link> {
    nl(ns).link(LinkId::Name(name)).expect("link lookup")
}

/// Does `ifname` in `ns` carry `cidr`? (in-process)
pub fn has_ip(ns: &Netns, ifname: &str, cidr: &str) -> bool {
    let nl = nl(ns);
    let Some(l) = nl.link(LinkId::Name(ifname)).unwrap() else {
        return false;
    };
    let want: ipnet::IpNet = cidr.parse().unwrap();
    nl.addrs(l.index, None)
        .unwrap()
        .iter()
        .any(|a| a.net == want)
}

/// A default route in `ns` through `dev` (for master auto-detection).
pub fn default_route(ns: &Netns, dev: &str) {
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", dev]);
    ns.ip(&["route", "add", "default", "via", "192.0.2.254", "dev", dev]);
}

/// host-local over `subnet` in the rig's data dir.
pub fn ipam(rig: &Rig, subnet: &str) -> Value {
    json!({"type": "host-local", "subnet": subnet, "dataDir": rig.data_dir()})
}

/// The container link as the differential tests compare it: `ip -d -j link` minus
/// what legitimately differs between two runs (ifindex, MAC, the IPv6 link-local
/// address derived from it), with the parent's ifindex replaced by "<parent>" when it
/// is `parent_index`.
pub fn link_state(ns: &Netns, ifname: &str, parent_index: u64) -> Value {
    let mut l = link(ns, ifname).unwrap_or_else(|| panic!("no {ifname} in {}", ns.name));
    let o = l.as_object_mut().unwrap();
    for k in ["ifindex", "address"] {
        o.remove(k);
    }
    if o.get("link_index").and_then(Value::as_u64) == Some(parent_index) {
        o.insert("link_index".into(), json!("<parent>"));
    }
    l
}

/// The global addresses of `ifname` (in-process).
pub fn addr_state(ns: &Netns, ifname: &str) -> Vec<String> {
    let nl = nl(ns);
    let Some(l) = nl.link(LinkId::Name(ifname)).unwrap() else {
        return vec![];
    };
    let mut v: Vec<String> = nl
        .addrs(l.index, None)
        .unwrap()
        .iter()
        .filter(|a| a.is_global_unicast())
        .map(|a| format!("{} scope {} flags {:#x}", a.net, a.scope, a.flags))
        .collect();
    v.sort();
    v
}

/// Main-table routes of the container, both families, without link-local ones, with
/// the output device by name (in-process).
pub fn route_state(ns: &Netns) -> Vec<String> {
    let nl = nl(ns);
    let names: std::collections::HashMap<u32, String> = nl
        .links()
        .unwrap()
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let mut v = Vec::new();
    for v6 in [false, true] {
        for mut r in nl
            .routes(v6, cnibox::netlink::route::RT_TABLE_MAIN)
            .unwrap()
        {
            if r.dst.addr().is_ipv6() && r.dst.to_string().starts_with("fe80") {
                continue;
            }
            let dev = names.get(&r.oif).cloned().unwrap_or_default();
            r.oif = 0;
            v.push(format!("{r:?} dev {dev}"));
        }
    }
    v.sort();
    v
}

/// Can this kernel make `kind` links (`ip link add ... type <kind> <args>` on a veth,
/// in a throwaway netns)?
pub fn kernel_has(kind: &str, args: &[&str]) -> bool {
    let ns = Netns::new("k");
    parent(&ns, "probe0");
    let add = [
        "ip", "link", "add", "link", "probe0", "name", "probe1", "type", kind,
    ];
    ns.exec(&[&add[..], args].concat()).status.success()
}

/// Every test that makes `kind` links starts here (they are `#[ignore]`d; the VM run
/// includes them): without the driver it fails, saying why.
pub fn need_kernel(kind: &str, args: &[&str]) {
    assert!(
        kernel_has(kind, args),
        "this kernel cannot create {kind} links: run this test in the VM \
         (make test-vm does: ../shared/vmtest/run-in-vm, with --include-ignored)"
    );
}

/// The guard test of a file whose tests need `kind` links: passes where the kernel has
/// them; in the VM the kernel must have them; elsewhere it fails unless `var=1` says
/// the VM run follows, and then says on stderr (past the output capture) that the
/// `ignored` tests run there.
pub fn driver_or_deferred_to_the_vm(kind: &str, args: &[&str], var: &str, ignored: usize) {
    if kernel_has(kind, args) {
        return;
    }
    let in_vm = std::env::var("VMTEST_GUEST").as_deref() == Ok("1");
    assert!(!in_vm, "the vmtest VM's kernel must have the {kind} driver");
    assert_eq!(
        std::env::var(var).as_deref(),
        Ok("1"),
        "this kernel has no {kind} driver, so the {kind} tests cannot run here: run them \
         in the VM (make test-vm), and set {var}=1 to say a VM run follows"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{kind}: no {kind} driver in this kernel: {ignored} {kind} tests ignored here, `make test-vm` runs them"
    );
}

/// The malformed-input tables need no driver (every case fails before a link is made):
/// they run on the host; in the emulated VM, where every process is slow, they are
/// skipped (and say so).
pub fn skip_in_vm(what: &str) -> bool {
    if std::env::var("VMTEST_GUEST").as_deref() == Ok("1") {
        eprintln!("{what} skipped in the VM: it runs on the host");
        return true;
    }
    false
}

/// Nothing of an attachment left: no `ifname` in the container, no reservation.
pub fn assert_gone(rig: &Rig, ifname: &str, what: &str) {
    assert!(
        nl_link(&rig.cont, ifname).is_none(),
        "{what}: {ifname} left in the container"
    );
    assert!(
        reservations_under(&rig.data_dir()).is_empty(),
        "{what}: reservations left: {:?}",
        reservations_under(&rig.data_dir())
    );
}

/// The same config in another rig (its own data dir).
pub fn for_rig(conf: &Value, rig: &Rig) -> Value {
    let mut c = conf.clone();
    if c["ipam"]["type"] == "host-local" {
        c["ipam"]["dataDir"] = json!(rig.data_dir());
    }
    c
}

/// The differential core: ADD `conf` through cnibox in `a` and through Go v1.9.1 in `b`
/// (each rig has a parent `p0`, in its host or container netns per `parent_in_cont`,
/// made here when missing) and compare the normalised results, the container link,
/// addresses, routes and reservations; then CHECK each with the other's implementation
/// (for versions that have CHECK), and DEL each with the other's: nothing may be left,
/// so the rigs can be used for the next config.
pub fn differential_in(a: &Rig, b: &Rig, conf: &Value, plugin: &str, parent_in_cont: bool) {
    let ensure_parent = |r: &Rig| {
        let ns = if parent_in_cont { &r.cont } else { &r.host };
        match nl_link(ns, "p0") {
            Some(l) => l.index as u64,
            None => parent(ns, "p0"),
        }
    };
    let (pa, pb) = (ensure_parent(a), ensure_parent(b));
    let ca = for_rig(conf, a);
    let cb = for_rig(conf, b);
    let ours = a.call(plugin, "ADD", &ca).run();
    let theirs = b.call(plugin, "ADD", &cb).go().run();
    let (ours, theirs) = (ours.ok().clone(), theirs.ok().clone());
    let norm = |v: &Value, rig: &Rig| {
        let s = serde_json::to_string(&normalize_result(v))
            .unwrap()
            .replace(rig.cont.path.to_str().unwrap(), "<netns>");
        serde_json::from_str::<Value>(&s).unwrap()
    };
    assert_eq!(norm(&ours, a), norm(&theirs, b), "result of {conf}");
    assert_eq!(
        link_state(&a.cont, "eth0", pa),
        link_state(&b.cont, "eth0", pb),
        "container link of {conf}"
    );
    assert_eq!(addr_state(&a.cont, "eth0"), addr_state(&b.cont, "eth0"));
    assert_eq!(
        route_state(&a.cont),
        route_state(&b.cont),
        "routes of {conf}"
    );
    assert_eq!(
        reservations_under(&a.data_dir()),
        reservations_under(&b.data_dir())
    );
    // The MAC in the result is the link's (0.1.0/0.2.0 results have no interfaces).
    if ours.get("interfaces").is_some() {
        let mac = nl_link(&a.cont, "eth0").unwrap().mac;
        let ifs = ours["interfaces"].as_array().unwrap();
        assert_eq!(ifs.last().unwrap()["mac"], mac.as_str(), "{ours}");
    }

    let version = conf["cniVersion"].as_str().unwrap_or("0.1.0");
    let has_check = !matches!(version, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1");
    if has_check {
        let out = a.call(plugin, "CHECK", &with_prev(&ca, &ours)).go().run();
        assert_eq!(out.code, 0, "Go CHECK of cnibox's ADD: {}", out.stdout);
        let out = b.call(plugin, "CHECK", &with_prev(&cb, &theirs)).run();
        assert_eq!(out.code, 0, "cnibox CHECK of Go's ADD: {}", out.stdout);
    }
    let out = a.call(plugin, "DEL", &with_prev(&ca, &ours)).go().run();
    assert_eq!(out.code, 0, "Go DEL of cnibox's ADD: {}", out.stdout);
    assert_gone(a, "eth0", "Go DEL of cnibox's ADD");
    let out = b.call(plugin, "DEL", &with_prev(&cb, &theirs)).run();
    assert_eq!(out.code, 0, "cnibox DEL of Go's ADD: {}", out.stdout);
    assert_gone(b, "eth0", "cnibox DEL of Go's ADD");
    // The parent is untouched by the whole round trip.
    let ns = |r: &Rig| {
        if parent_in_cont {
            nl_link(&r.cont, "p0")
        } else {
            nl_link(&r.host, "p0")
        }
    };
    assert!(ns(a).is_some() && ns(b).is_some());
}

/// [`differential_in`] in two fresh rigs.
pub fn differential(conf: &Value, plugin: &str, parent_in_cont: bool) {
    differential_in(&Rig::new(), &Rig::new(), conf, plugin, parent_in_cont);
}
