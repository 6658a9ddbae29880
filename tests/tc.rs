//! The tc module (src/netlink/tc.rs) driven directly in a namespace the test makes, on a
//! veth pair the test makes: a clsact qdisc, u32 filters with the mirred redirect action
//! on its ingress side, listing them through the module, deleting one filter (the others
//! and the qdisc stay), then the qdisc. Every step is checked against what `tc -j`
//! prints, so the kernel's own view is the judge, not the module reading itself back.

mod common;

use cnibox::netlink::tc::{self, CLSACT_INGRESS, ETH_P_ALL, INGRESS_HANDLE, TC_H_INGRESS};
use cnibox::netlink::{is_errno, LinkId};
use common::*;
use serde_json::{json, Value};

/// ETH_P_IP, host order.
const ETH_P_IP: u16 = 0x0800;

/// `tc -j qdisc show dev <dev>` without the kernel's default qdiscs and counters.
fn qdiscs(ns: &Netns, dev: &str) -> Vec<Value> {
    let out = ns.run(&["tc", "-j", "qdisc", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|q| !["noqueue", "noop"].contains(&q["kind"].as_str().unwrap_or("")))
        .map(|q| json!([q["kind"], q["handle"], q["parent"]]))
        .collect()
}

/// The u32 filters with actions on one side (`ingress`/`egress`) of `dev`: (pref,
/// protocol, kind, first action's kind, mirred action, direction, target device,
/// control action).
fn redirect_filters(ns: &Netns, dev: &str, side: &str) -> Vec<Value> {
    tc_filters(ns, dev, side)
        .iter()
        .filter(|f| f["options"]["actions"].is_array())
        .map(|f| {
            let a = &f["options"]["actions"][0];
            json!([
                f["pref"],
                f["protocol"],
                f["kind"],
                a["kind"],
                a["mirred_action"],
                a["direction"],
                a["to_dev"],
                a["control_action"]["type"]
            ])
        })
        .collect()
}

/// Every filter `tc` lists on one side of `dev`, instance headers and hash tables
/// included, as (pref, protocol, kind, filter handle).
fn all_filters(ns: &Netns, dev: &str, side: &str) -> Vec<Value> {
    tc_filters(ns, dev, side)
        .iter()
        .map(|f| json!([f["pref"], f["protocol"], f["kind"], f["options"]["fh"]]))
        .collect()
}

fn redirect(pref: u16, proto: &str, to: &str) -> Value {
    json!([pref, proto, "u32", "mirred", "redirect", "egress", to, "stolen"])
}

#[test]
fn clsact_u32_mirred_filters_are_added_listed_deleted_one_by_one() {
    let ns = Netns::new("tc");
    ns.ip(&[
        "link", "add", "name", "tca", "type", "veth", "peer", "name", "tcb",
    ]);
    ns.ip(&["link", "set", "tca", "up"]);
    ns.ip(&["link", "set", "tcb", "up"]);
    let nl = nl(&ns);
    let a = nl.link_must(LinkId::Name("tca")).unwrap().index;
    let b = nl.link_must(LinkId::Name("tcb")).unwrap().index;

    // clsact, as the kernel sees it
    nl.add_ingress_qdisc(a, "clsact").unwrap();
    let clsact = json!(["clsact", "ffff:", "ffff:fff1"]);
    assert_eq!(qdiscs(&ns, "tca"), vec![clsact.clone()]);

    // Two redirects on its ingress side: all protocols at prio 1, IPv4 at prio 2.
    nl.add_u32_redirect(a, CLSACT_INGRESS, 1, ETH_P_ALL, 0, b)
        .unwrap();
    nl.add_u32_redirect(a, CLSACT_INGRESS, 2, ETH_P_IP, 0, b)
        .unwrap();
    assert_eq!(
        redirect_filters(&ns, "tca", "ingress"),
        vec![redirect(1, "all", "tcb"), redirect(2, "ip", "tcb")]
    );
    assert_eq!(
        all_filters(&ns, "tca", "egress"),
        Vec::<Value>::new(),
        "ingress side only"
    );

    // Listed through the module: the two filters that carry the redirects.
    let listed = nl.filters(a, CLSACT_INGRESS).unwrap();
    let mut with_redirect: Vec<_> = listed
        .iter()
        .filter(|f| !f.redirects.is_empty())
        .map(|f| (f.kind.as_str(), f.prio, f.protocol, f.redirects.clone()))
        .collect();
    with_redirect.sort();
    assert_eq!(
        with_redirect,
        vec![
            ("u32", 1, ETH_P_ALL, vec![b]),
            ("u32", 2, ETH_P_IP, vec![b])
        ],
        "{listed:?}"
    );
    let first = listed
        .iter()
        .find(|f| f.prio == 1 && !f.redirects.is_empty())
        .unwrap();
    assert_ne!(first.handle, 0, "a u32 key node has its own handle");

    // Delete the prio 1 filter by its handle: only it goes, clsact stays.
    nl.del_filter(
        a,
        CLSACT_INGRESS,
        first.prio,
        first.protocol,
        first.handle,
        &first.kind,
    )
    .unwrap();
    assert_eq!(
        redirect_filters(&ns, "tca", "ingress"),
        vec![redirect(2, "ip", "tcb")]
    );
    // What stays at prio 1 is u32's empty instance (its header and root hash table):
    // the kernel drops an instance with its last key only when no other u32 instance
    // shares the block, and `tc filter del` leaves the same.
    assert_eq!(
        all_filters(&ns, "tca", "ingress"),
        vec![
            json!([1, "all", "u32", null]),
            json!([1, "all", "u32", "800:"]),
            json!([2, "ip", "u32", null]),
            json!([2, "ip", "u32", "801:"]),
            json!([2, "ip", "u32", "801::800"]),
        ]
    );
    assert_eq!(qdiscs(&ns, "tca"), vec![clsact.clone()]);
    let left = nl.filters(a, CLSACT_INGRESS).unwrap();
    let redirecting: Vec<_> = left
        .iter()
        .filter(|f| !f.redirects.is_empty())
        .map(|f| f.prio)
        .collect();
    assert_eq!(redirecting, vec![2], "{left:?}");

    // Deleting it again is the kernel's "not found", not a silent success.
    let e = nl
        .del_filter(
            a,
            CLSACT_INGRESS,
            first.prio,
            first.protocol,
            first.handle,
            "u32",
        )
        .unwrap_err();
    assert!(is_errno(&e, libc::ENOENT), "{e:#}");
    // A prio of 0 would flush the chain: refused before anything is sent.
    nl.del_filter(a, CLSACT_INGRESS, 0, ETH_P_IP, 0, "u32")
        .unwrap_err();
    assert_eq!(
        redirect_filters(&ns, "tca", "ingress"),
        vec![redirect(2, "ip", "tcb")]
    );

    // Whole instances (handle 0): prio 1's empty one, then prio 2 with its filter. The
    // side is empty, clsact remains.
    nl.del_filter(a, CLSACT_INGRESS, 1, ETH_P_ALL, 0, "u32")
        .unwrap();
    assert_eq!(
        redirect_filters(&ns, "tca", "ingress"),
        vec![redirect(2, "ip", "tcb")]
    );
    nl.del_filter(a, CLSACT_INGRESS, 2, ETH_P_IP, 0, "u32")
        .unwrap();
    assert_eq!(all_filters(&ns, "tca", "ingress"), Vec::<Value>::new());
    assert!(nl.filters(a, CLSACT_INGRESS).unwrap().is_empty());
    assert_eq!(qdiscs(&ns, "tca"), vec![clsact]);

    // Then the qdisc.
    nl.del_qdisc(a, INGRESS_HANDLE, TC_H_INGRESS).unwrap();
    assert_eq!(qdiscs(&ns, "tca"), Vec::<Value>::new());
    assert!(nl
        .qdiscs(a)
        .unwrap()
        .iter()
        .all(|q| q.handle != tc::INGRESS_HANDLE));
}
