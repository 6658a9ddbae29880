//! Helpers shared by the macvlan, ipvlan and vlan tests: parent links inside the rig's
//! namespaces, a snapshot of everything a call could change, the malformed-input
//! runner, a failing fake IPAM, kernel-support probes for the VM-only kinds, and the
//! normalised kernel state the differential tests compare with the Go reference.

#![allow(dead_code)]

use super::common::*;
use cnibox::netlink::{Link, LinkId, Nl};
use cnibox::netns::Netns as NsFile;
use serde_json::{json, Value};
use std::path::Path;

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

/// Wait (bounded) until every link in `names` reports operstate UP and carries its
/// IPv6 multicast route: the kernel finishes both asynchronously after `link set up`,
/// and a before/after snapshot taken in between would see a change no plugin made.
pub fn settle(ns: &Netns, names: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v6: Vec<bool> = names.iter().map(|n| v6_enabled(ns, n)).collect();
    loop {
        let nl = nl(ns);
        let v6_routes = nl.routes(true, 0).expect("route dump");
        let settled = names.iter().zip(&v6).all(|(n, v6)| {
            let l = nl
                .link(LinkId::Name(n))
                .expect("link lookup")
                .expect("link exists");
            l.operstate == 6 && (!v6 || v6_routes.iter().any(|r| r.oif == l.index))
        });
        if settled {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "links {names:?} did not settle within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Is IPv6 enabled on `ifname` (so the kernel will add its multicast route)?
fn v6_enabled(ns: &Netns, ifname: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "cat"])
        .arg(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"))
        .output()
        .expect("read disable_ipv6");
    match out.status.success() {
        true => String::from_utf8_lossy(&out.stdout).trim() == "0",
        // No per-link IPv6 directory: IPv6 is off entirely.
        false => false,
    }
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

/// A netlink socket in `ns`, for reading kernel state without spawning `ip`.
pub fn nl(ns: &Netns) -> Nl {
    let f = NsFile::open(ns.path.to_str().unwrap()).expect("open netns");
    Nl::open_in(&f).expect("netlink socket")
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

/// Every path under `dir` (empty if it does not exist yet).
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(tree(&p));
        }
    }
    out.sort();
    out
}

/// Reservation files (named after an IP) anywhere under `dir`.
pub fn reservations_under(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .map(|p| {
            Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// Everything a call could have changed: both namespaces' links (kind, kind data,
/// parent, flags, promiscuity, which passthru changes on the parent, ...), addresses
/// and routes of every table, and the IPAM reservations. Read in-process (no `ip`
/// processes: they are slow in the VM). host-local's lock file may appear, as with
/// the reference.
pub fn snapshot(rig: &Rig) -> String {
    let mut s = String::new();
    for ns in [&rig.host, &rig.cont] {
        let nl = nl(ns);
        let mut links = nl.links().unwrap();
        links.sort_by_key(|l| l.index);
        for l in &links {
            s.push_str(&format!("{l:?}\n"));
            let mut addrs: Vec<String> = nl
                .addrs(l.index, None)
                .unwrap()
                .iter()
                .map(|a| format!("  {a:?}\n"))
                .collect();
            addrs.sort();
            s.extend(addrs);
        }
        for v6 in [false, true] {
            let mut r: Vec<String> = nl
                .routes(v6, 0)
                .unwrap()
                .iter()
                .map(|r| format!("{r:?}\n"))
                .collect();
            r.sort();
            s.extend(r);
        }
    }
    s.push_str(&format!("{:?}", reservations_under(&rig.data_dir())));
    s
}

/// One malformed input from `testdata/malformed-<plugin>.json`: keys of `conf` are
/// merged into the plugin's base config (`null` removes one; an `ipam` of type
/// host-local gets the rig's data dir), and the call must fail with `code` and a message
/// containing `msg`, changing nothing.
#[derive(serde::Deserialize)]
pub struct Case {
    pub what: String,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub conf: Option<Value>,
    #[serde(default)]
    pub args: Option<String>,
    /// "missing" (a path that does not exist) or "file" (a regular file).
    #[serde(default)]
    pub netns: Option<String>,
    pub code: i64,
    pub msg: String,
}

pub fn run_malformed(rig: &Rig, plugin: &str, base: &Value, cases_json: &str, min: usize) {
    let cases: Vec<Case> = serde_json::from_str(cases_json).expect("cases parse");
    assert!(cases.len() >= min, "only {} cases", cases.len());
    let file = rig.dir.join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    let missing = rig.dir.join("no-such-netns");
    let before = snapshot(rig);
    for case in &cases {
        let what = &case.what;
        let mut conf = base.clone();
        if let Some(extra) = &case.conf {
            for (k, v) in extra.as_object().expect("conf object") {
                if v.is_null() {
                    conf.as_object_mut().unwrap().remove(k);
                } else {
                    conf[k] = v.clone();
                }
            }
        }
        if conf["ipam"]["type"] == "host-local" {
            conf["ipam"]["dataDir"] = json!(rig.data_dir());
        }
        let cmd = case.command.as_deref().unwrap_or("ADD");
        let mut call = rig.call(plugin, cmd, &conf);
        if let Some(a) = &case.args {
            call = call.args(a);
        }
        match case.netns.as_deref() {
            Some("missing") => call = call.netns(missing.to_str().unwrap()),
            Some("file") => call = call.netns(file.to_str().unwrap()),
            Some(other) => panic!("{what}: unknown netns kind {other}"),
            None => {}
        }
        let out = call.run();
        assert_eq!(out.err_code(), case.code, "{what}: {}", out.stdout);
        let msg = out.json.as_ref().unwrap()["msg"].as_str().unwrap_or("");
        assert!(
            msg.contains(&case.msg),
            "{what}: message {msg:?} lacks {:?}",
            case.msg
        );
        assert_eq!(
            snapshot(rig),
            before,
            "{what}: the failed call changed something"
        );
    }
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
