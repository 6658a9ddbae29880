//! The netlink core, driven directly in throwaway namespaces: links (veth across
//! namespaces, setters, rename, netns move, delete), addresses, routes (table, scope,
//! gateway, src, replace), errors carrying errno and the object name, and the netns
//! guard.

mod common;

use cnibox::netlink::link::{parse_mac, NewLink, Peer};
use cnibox::netlink::route::{RT_SCOPE_LINK, RT_TABLE_MAIN};
use cnibox::netlink::{is_errno, LinkId, Nl, RouteSpec};
use cnibox::netns::Netns as NsFile;
use common::*;
use std::os::fd::AsFd;

fn open(ns: &Netns) -> (NsFile, Nl) {
    let f = NsFile::open(ns.path.to_str().unwrap()).unwrap();
    let nl = Nl::open_in(&f).unwrap();
    (f, nl)
}

#[test]
fn links_across_namespaces() {
    let a = Netns::new("a");
    let b = Netns::new("b");
    let (_af, anl) = open(&a);
    let (bf, bnl) = open(&b);
    // veth made in A with its peer placed directly in B
    anl.create_link(&NewLink {
        name: "va",
        kind: "veth",
        mtu: 1400,
        mac: Some(parse_mac("0a:58:00:00:00:0a").unwrap()),
        peer: Some(Peer {
            name: "vb",
            mtu: 1400,
            mac: None,
            netns: Some(bf.file.as_fd()),
        }),
        ..Default::default()
    })
    .unwrap();
    let va = anl.link_must(LinkId::Name("va")).unwrap();
    let vb = bnl.link_must(LinkId::Name("vb")).unwrap();
    assert_eq!(
        (va.kind.as_str(), va.mtu, va.mac.as_str()),
        ("veth", 1400, "0a:58:00:00:00:0a")
    );
    assert_eq!(va.link, vb.index, "IFLA_LINK names the peer");
    assert!(anl.link(LinkId::Name("vb")).unwrap().is_none());

    anl.set_mtu(va.index, 1300).unwrap();
    anl.set_mac(va.index, parse_mac("0a:58:00:00:00:0b").unwrap())
        .unwrap();
    anl.set_up(va.index, true).unwrap();
    // Renaming an up link is refused by older kernels (EBUSY); either way it must not
    // half-succeed.
    if let Err(e) = anl.set_name(va.index, "va2") {
        assert!(is_errno(&e, libc::EBUSY), "{e:#}");
        anl.set_up(va.index, false).unwrap();
        anl.set_name(va.index, "va2").unwrap();
    }
    anl.set_up(va.index, false).unwrap();
    let va = anl.link_must(LinkId::Index(va.index)).unwrap();
    assert_eq!(
        (va.name.as_str(), va.mtu, va.mac.as_str(), va.is_up()),
        ("va2", 1300, "0a:58:00:00:00:0b", false)
    );
    anl.set_alias(va.index, "hello").unwrap();
    assert_eq!(
        anl.link_must(LinkId::Index(va.index)).unwrap().alias,
        "hello"
    );

    // bridge + master
    anl.create_link(&NewLink {
        name: "br0",
        kind: "bridge",
        ..Default::default()
    })
    .unwrap();
    let br = anl.link_must(LinkId::Name("br0")).unwrap();
    anl.set_master(va.index, br.index).unwrap();
    assert_eq!(
        anl.link_must(LinkId::Index(va.index)).unwrap().master,
        br.index
    );
    anl.set_promisc(br.index, true).unwrap();
    assert!(anl.link_must(LinkId::Index(br.index)).unwrap().is_promisc());
    anl.set_bridge_port(va.index, true, true).unwrap();
    let port = link(&a, "va2").unwrap();
    assert_eq!(port["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert_eq!(port["linkinfo"]["info_slave_data"]["isolated"], true);

    // move B's end back into A, then delete the pair from A
    bnl.set_netns(vb.index, _af.file.as_fd()).unwrap();
    assert!(bnl.link(LinkId::Name("vb")).unwrap().is_none());
    assert!(anl.link(LinkId::Name("vb")).unwrap().is_some());
    anl.delete_link(LinkId::Name("va2")).unwrap();
    assert!(
        anl.link(LinkId::Name("vb")).unwrap().is_none(),
        "deleting one end removes both"
    );
    assert!(anl.links().unwrap().iter().any(|l| l.name == "lo"));

    // errors carry the errno and what was being done
    let e = anl.delete_link(LinkId::Name("nosuch0")).unwrap_err();
    assert!(is_errno(&e, libc::ENODEV), "{e:#}");
    assert!(format!("{e:#}").contains("nosuch0"), "{e:#}");
    let e = anl
        .create_link(&NewLink {
            name: "br0",
            kind: "bridge",
            ..Default::default()
        })
        .unwrap_err();
    assert!(is_errno(&e, libc::EEXIST));
    assert_eq!(
        format!("{e}"),
        "failed to create bridge link \"br0\": file exists"
    );
}

#[test]
fn addresses_and_routes() {
    let a = Netns::new("a");
    a.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    a.ip(&["link", "set", "d0", "up"]);
    a.ip(&["link", "set", "d1", "up"]);
    let (_f, nl) = open(&a);
    let d0 = nl.link_must(LinkId::Name("d0")).unwrap();
    let v4: ipnet::IpNet = "10.9.0.5/24".parse().unwrap();
    let v6: ipnet::IpNet = "fd09::5/64".parse().unwrap();
    nl.add_addr(d0.index, &v4, 0).unwrap();
    nl.add_addr(d0.index, &v6, cnibox::netlink::addr::IFA_F_NODAD)
        .unwrap();
    assert!(is_errno(
        &nl.add_addr(d0.index, &v4, 0).unwrap_err(),
        libc::EEXIST
    ));
    let have = nl.addrs(d0.index, None).unwrap();
    assert!(have.iter().any(|x| x.net == v4));
    assert!(have.iter().any(|x| x.net == v6 && !x.is_tentative()));
    assert_eq!(nl.addrs(d0.index, Some(false)).unwrap().len(), 1);

    // routes: gateway, src, scope, table, replace
    let mut r = RouteSpec::new(
        "10.50.0.0/16".parse().unwrap(),
        Some("10.9.0.1".parse().unwrap()),
        d0.index,
    );
    r.src = Some("10.9.0.5".parse().unwrap());
    nl.add_route(&r).unwrap();
    assert!(
        is_errno(&nl.add_route(&r).unwrap_err(), libc::EEXIST),
        "identical route refused"
    );
    let mut link_scope = RouteSpec::new("10.60.0.1/32".parse().unwrap(), None, d0.index);
    link_scope.scope = RT_SCOPE_LINK;
    nl.add_route(&link_scope).unwrap();
    let mut other_table = RouteSpec::new(
        "0.0.0.0/0".parse().unwrap(),
        Some("10.9.0.254".parse().unwrap()),
        d0.index,
    );
    other_table.table = 100;
    nl.add_route(&other_table).unwrap();
    let main = nl.routes(false, RT_TABLE_MAIN).unwrap();
    let got = main
        .iter()
        .find(|x| x.dst.to_string() == "10.50.0.0/16")
        .unwrap();
    assert_eq!((got.gw, got.src, got.oif), (r.gw, r.src, d0.index));
    assert!(main
        .iter()
        .any(|x| x.dst.to_string() == "10.60.0.1/32" && x.scope == RT_SCOPE_LINK));
    assert!(
        !main.iter().any(|x| x.is_default()),
        "table 100 route not in main"
    );
    assert!(nl
        .routes(false, 100)
        .unwrap()
        .iter()
        .any(|x| x.is_default() && x.table == 100));
    let ip_view = a.ip(&["route", "show", "table", "100"]);
    assert!(
        ip_view.contains("default via 10.9.0.254 dev d0"),
        "{ip_view}"
    );
    // replace changes the gateway in place
    r.gw = Some("10.9.0.2".parse().unwrap());
    nl.replace_route(&r).unwrap();
    let main = nl.routes(false, RT_TABLE_MAIN).unwrap();
    let got: Vec<_> = main
        .iter()
        .filter(|x| x.dst.to_string() == "10.50.0.0/16")
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].gw, r.gw);
    nl.del_route(&r).unwrap();
    assert!(is_errno(&nl.del_route(&r).unwrap_err(), libc::ESRCH));
    // v6 route
    let r6 = RouteSpec::new(
        "fd50::/48".parse().unwrap(),
        Some("fd09::1".parse().unwrap()),
        d0.index,
    );
    nl.add_route(&r6).unwrap();
    assert!(nl
        .routes(true, RT_TABLE_MAIN)
        .unwrap()
        .iter()
        .any(|x| x.dst.to_string() == "fd50::/48"));
    nl.del_addr(d0.index, &v4).unwrap();
    assert!(!nl
        .addrs(d0.index, None)
        .unwrap()
        .iter()
        .any(|x| x.net == v4));
}

#[test]
fn netns_guard_returns_and_validates() {
    let a = Netns::new("a");
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let f = NsFile::open(a.path.to_str().unwrap()).unwrap();
    // inside, sysctls are the namespace's own
    let inside: anyhow::Result<String> = f.run(|| {
        cnibox::sysctl::set("net/ipv4/ip_forward", "1")?;
        cnibox::sysctl::get("net/ipv4/ip_forward")
    });
    assert_eq!(inside.unwrap(), "1");
    // an error inside still brings us back
    let err: anyhow::Result<()> = f.run(|| anyhow::bail!("boom"));
    assert!(err.is_err());
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
    assert_eq!(
        a.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout,
        b"1\n"
    );
    // a regular file is not a network namespace; a missing one is "gone"
    let tmp = std::env::temp_dir().join(format!("cbx-notns-{}", std::process::id()));
    std::fs::write(&tmp, "x").unwrap();
    assert!(NsFile::open(tmp.to_str().unwrap()).is_err());
    let _ = std::fs::remove_file(&tmp);
    let gone = NsFile::open("/run/netns/cbx-surely-missing").err().unwrap();
    assert!(cnibox::netns::is_gone(&gone));
}

/// Link and address dumps while other threads keep changing the same namespace: the
/// kernel flags dumps that raced a change (NLM_F_DUMP_INTR) and the transport sends them
/// again, so every dump succeeds and lists every stable object exactly once.
#[test]
fn dumps_survive_concurrent_churn() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let a = Netns::new("churn");
    // Enough objects that a dump spans several datagrams (the kernel checks for changes
    // between them): 120 bridges, and 300 addresses on one link.
    let mut script = String::new();
    for i in 0..120 {
        script += &format!("link add sb{i} type bridge\n");
    }
    script += "link add d0 type veth peer name d1\n";
    for i in 0..300 {
        script += &format!("addr add 10.77.{}.{}/32 dev d0\n", i / 200, i % 200 + 1);
    }
    let path = std::env::temp_dir().join(format!("{}.batch", a.name));
    std::fs::write(&path, script).unwrap();
    a.ip(&["-batch", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);

    let stop = Arc::new(AtomicBool::new(false));
    let churn = |what: &'static str| {
        let stop = stop.clone();
        let ns = a.path.to_str().unwrap().to_string();
        std::thread::spawn(move || {
            let f = NsFile::open(&ns).unwrap();
            let nl = Nl::open_in(&f).unwrap();
            let d0 = nl.link_must(LinkId::Name("d0")).unwrap().index;
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if what == "links" {
                    nl.create_link(&NewLink {
                        name: "cv0",
                        kind: "veth",
                        peer: Some(Peer {
                            name: "cv1",
                            mtu: 0,
                            mac: None,
                            netns: None,
                        }),
                        ..Default::default()
                    })
                    .unwrap();
                    nl.delete_link(LinkId::Name("cv0")).unwrap();
                } else {
                    let net: ipnet::IpNet = format!("10.78.0.{}/32", n % 250 + 1).parse().unwrap();
                    nl.add_addr(d0, &net, 0).unwrap();
                    nl.del_addr(d0, &net).unwrap();
                    // a pause, so that most dumps complete untouched
                    std::thread::sleep(Duration::from_millis(2));
                }
                n += 1;
            }
            n
        })
    };
    let churners = [churn("links"), churn("addrs")];

    let (_f, nl) = open(&a);
    let d0 = nl.link_must(LinkId::Name("d0")).unwrap().index;
    let before = cnibox::netlink::dump_retries();
    let start = Instant::now();
    let mut dumps = 0;
    // Until the retry path demonstrably ran a few times (or time is up).
    while start.elapsed() < Duration::from_secs(30)
        && (dumps < 200 || cnibox::netlink::dump_retries() - before < 5)
    {
        let links = nl
            .links()
            .unwrap_or_else(|e| panic!("link dump {dumps}: {e:#}"));
        let mut idx: Vec<u32> = links.iter().map(|l| l.index).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), links.len(), "a link listed twice");
        let stable = links.iter().filter(|l| l.name.starts_with("sb")).count();
        assert_eq!(stable, 120, "dump {dumps}: bridges missing");
        let addrs = nl
            .addrs(d0, Some(false))
            .unwrap_or_else(|e| panic!("address dump {dumps}: {e:#}"));
        let stable = addrs
            .iter()
            .filter(|x| x.net.to_string().starts_with("10.77."))
            .count();
        assert_eq!(stable, 300, "dump {dumps}: addresses missing or repeated");
        dumps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let changes: Vec<u32> = churners.into_iter().map(|t| t.join().unwrap()).collect();
    let retries = cnibox::netlink::dump_retries() - before;
    eprintln!("{dumps} dumps, {retries} retried, churn {changes:?}");
    assert!(
        retries > 0,
        "no dump was interrupted ({dumps} dumps, churn {changes:?}): the test proved nothing"
    );
}

/// The kernel's own words (extended ack) reach the error, and so the CNI error
/// message: rtnetlink's text, nf_tables' text, and the attribute nf_tables blames when it
/// gives no text.
#[test]
fn kernel_reasons_reach_the_error_text() {
    use cnibox::error::CniError;
    use cnibox::netlink::nftables::{Batch, ChainSpec, NFPROTO_INET};
    let a = Netns::new("ext");
    let (f, nl) = open(&a);
    let e = nl
        .create_link(&NewLink {
            name: "x0",
            kind: "nosuchkind",
            ..Default::default()
        })
        .unwrap_err();
    assert!(is_errno(&e, libc::EOPNOTSUPP), "{e:#}");
    let c = CniError::from_anyhow(&e.context("ADD"));
    assert!(c.msg.contains("(Unknown device type)"), "{}", c.msg);

    f.run(|| {
        // a table name over nf_tables' limit: rejected by the attribute policy, with text
        let mut b = Batch::new(NFPROTO_INET, &"t".repeat(300));
        b.add_table(None)?;
        let e = b.commit("failed to add the table").unwrap_err();
        assert!(is_errno(&e, libc::ERANGE), "{e:#}");
        let c = CniError::from_anyhow(&e);
        assert!(
            c.msg
                .contains("(Attribute failed policy validation: table \"ttt"),
            "{}",
            c.msg
        );
        // a chain in a missing table: no text, but the attribute the kernel points at
        let mut b = Batch::new(NFPROTO_INET, "nosuchtable");
        b.add_chain(&ChainSpec {
            name: "c",
            comment: None,
            base: None,
        })?;
        let e = b.commit("failed to add the chain").unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "failed to add the chain: no such file or directory (table \"nosuchtable\")"
        );
        // the second message of a batch is the one blamed
        let mut b = Batch::new(NFPROTO_INET, "t1");
        b.add_table(None)?;
        b.delete_chain("nosuchchain")?;
        let e = b.commit("failed to delete the chain").unwrap_err();
        assert!(
            format!("{e:#}").ends_with("(chain \"nosuchchain\")"),
            "{e:#}"
        );
        Ok(())
    })
    .unwrap();
}
