//! The nf_tables encoder against `nft` itself: each rule is added once by `nft` from
//! its text and once by our encoder (`Batch::add_rule` with the expressions our helpers
//! build), each in a network namespace of its own, and `nft --debug=netlink list chain`
//! must print the same expressions and userdata for both: what the kernel stored from
//! our bytes is what it stored from nft's.

mod common;

use cnibox::netlink::nftables::{self, match_addr, match_iifname, Batch, Expr};
use common::Netns;

fn debug_listing(ns: &Netns) -> String {
    let out = ns.exec(&["nft", "--debug=netlink", "list", "chain", "inet", "t", "c"]);
    assert!(
        out.status.success(),
        "nft list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the netlink debug lines (expressions and userdata) matter, not the text.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('[') || l.contains("userdata"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(text: &str, exprs: &[Expr], comment: Option<&str>) {
    let by_nft = Netns::new("g");
    by_nft.run(&["nft", "add", "table", "inet", "t"]);
    by_nft.run(&["nft", "add", "chain", "inet", "t", "c"]);
    let mut rule = text.to_string();
    if let Some(c) = comment {
        rule.push_str(&format!(" comment \"{c}\""));
    }
    let file = std::env::temp_dir().join(format!("{}.nft", by_nft.name));
    std::fs::write(&file, format!("add rule inet t c {rule}\n")).unwrap();
    let out = by_nft.exec(&["nft", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "nft add rule {rule}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let by_us = Netns::new("g");
    by_us.run(&["nft", "add", "table", "inet", "t"]);
    by_us.run(&["nft", "add", "chain", "inet", "t", "c"]);
    let ns = cnibox::netns::Netns::open(by_us.path.to_str().unwrap()).unwrap();
    ns.run(|| {
        let mut b = Batch::new(nftables::NFPROTO_INET, "t");
        b.add_rule("c", exprs, comment)?;
        b.commit("golden rule")
    })
    .unwrap_or_else(|e| panic!("{text}: our encoding was refused: {e:#}"));

    let (want, got) = (debug_listing(&by_nft), debug_listing(&by_us));
    assert!(!want.is_empty(), "{text}: nft printed no expressions");
    assert_eq!(got, want, "{text}: encoded differently from nft");
}

fn addr(net: &str, src: bool, neq: bool) -> Vec<Expr> {
    let mut v = Vec::new();
    match_addr(&net.parse().unwrap(), src, neq, &mut v);
    v
}

#[test]
fn addresses_match_nft_byte_for_byte() {
    let cases = [
        ("ip saddr 10.1.0.0/17", "10.1.0.0/17", true, false),
        ("ip saddr 10.22.0.0/16", "10.22.0.0/16", true, false),
        ("ip daddr != 224.0.0.0/4", "224.0.0.0/4", false, true),
        ("ip daddr 10.1.2.3/32", "10.1.2.3/32", false, false),
        ("ip6 daddr ff00::/8", "ff00::/8", false, false),
        ("ip6 saddr fd00:1::/64", "fd00:1::/64", true, false),
        ("ip6 saddr != fd00::2/127", "fd00::2/127", true, true),
    ];
    for (text, net, src, neq) in cases {
        let mut e = addr(net, src, neq);
        e.push(Expr::Verdict(nftables::NF_ACCEPT, None));
        check(&format!("{text} accept"), &e, None);
    }
}

#[test]
fn two_matches_share_one_protocol_check() {
    // nft drops the repeated nfproto dependency; so must we.
    let mut e = addr("10.1.0.0/17", true, false);
    match_addr(&"224.0.0.0/4".parse().unwrap(), false, true, &mut e);
    e.push(Expr::Masq);
    check(
        "ip saddr 10.1.0.0/17 ip daddr != 224.0.0.0/4 masquerade",
        &e,
        Some("d7c2a1b8f3e09a4c-0f1e2d3c4b5a6978, net: mynet, if: eth0, id: abc"),
    );
}

#[test]
fn interface_names_and_verdicts_match_nft() {
    let mut e = Vec::new();
    match_iifname("veth1234abcd", &mut e);
    e.push(Expr::Verdict(-5, None)); // NFT_RETURN
    check("iifname \"veth1234abcd\" return", &e, None);

    let e = vec![Expr::Verdict(nftables::NF_DROP, None)];
    check("drop", &e, Some("macspoofchk-ctr1-eth0"));

    let mut e = addr("fd00::/8", false, false);
    e.push(Expr::Verdict(-4, Some("c".into()))); // NFT_GOTO
    check("ip6 daddr fd00::/8 goto c", &e, None);

    let e = vec![Expr::Verdict(-3, Some("c".into()))]; // NFT_JUMP
    check("jump c", &e, None);
}
