//! Bridge MAC spoof check (`macspoofchk`), nftables family `bridge`, table `nat`, with
//! the reference's names: base chain `PREROUTING`, per-attachment chains
//! `cni-br-iface-<cid>-<ifname>` and `...-mac`, rules commented
//! `macspoofchk-<cid>-<ifname>`. Spoken natively over nfnetlink, one batch per change.

use crate::netlink::nftables::{self, Batch, ChainSpec, Expr, NFT_JUMP, NFT_RETURN, NF_DROP};
use anyhow::{Context, Result};

const TABLE: &str = "nat";
const BASE: &str = "PREROUTING";

fn id(cid: &str, ifname: &str) -> String {
    format!("{cid}-{ifname}")
}

pub fn iface_chain(cid: &str, ifname: &str) -> String {
    format!("cni-br-iface-{}", id(cid, ifname))
}

pub fn comment(cid: &str, ifname: &str) -> String {
    format!("macspoofchk-{}", id(cid, ifname))
}

/// One transaction: declare the table and chains, rewrite the attachment's chains, and
/// hook the host port into them. Only frames from `mac` leave the container's port.
pub fn setup_batch(host_if: &str, mac: &str, cid: &str, ifname: &str) -> Result<Batch> {
    let ic = iface_chain(cid, ifname);
    let mc = format!("{ic}-mac");
    let cm = comment(cid, ifname);
    let mac = crate::netlink::link::parse_mac(mac)?;
    let mut b = Batch::new(nftables::NFPROTO_BRIDGE, TABLE);
    b.add_table(None)?;
    b.add_chain(&ChainSpec {
        name: BASE,
        comment: None,
        base: Some(("filter", nftables::NF_INET_PRE_ROUTING, -300)),
    })?;
    for c in [&ic, &mc] {
        b.add_chain(&ChainSpec {
            name: c,
            comment: None,
            base: None,
        })?;
    }
    for c in [&ic, &mc] {
        b.flush_chain(c)?;
    }
    let mut jump = Vec::new();
    nftables::match_iifname(host_if, &mut jump);
    jump.push(Expr::Verdict(NFT_JUMP, Some(ic.clone())));
    b.add_rule(BASE, &jump, Some(&cm))?;
    b.add_rule(&ic, &[Expr::Verdict(NFT_JUMP, Some(mc.clone()))], Some(&cm))?;
    let own = [
        Expr::Payload {
            base: 0,
            offset: 6,
            len: 6,
        },
        Expr::Cmp {
            neq: false,
            data: mac.to_vec(),
        },
        Expr::Verdict(NFT_RETURN, None),
    ];
    b.add_rule(&mc, &own, Some(&cm))?;
    b.add_rule(&mc, &[Expr::Verdict(NF_DROP, None)], Some(&cm))?;
    Ok(b)
}

pub fn setup(host_if: &str, mac: &str, cid: &str, ifname: &str) -> Result<()> {
    setup_batch(host_if, mac, cid, ifname)?.commit("failed to set up the MAC spoof check")
}

/// Remove the attachment's jump rules from `PREROUTING`, then its two chains. Whatever
/// is already gone is fine (DEL is idempotent, and an admin may have removed a chain by
/// hand); anything else is reported, after everything removable was removed.
pub fn teardown(cid: &str, ifname: &str) -> Result<()> {
    let ic = iface_chain(cid, ifname);
    let mc = format!("{ic}-mac");
    let cm = comment(cid, ifname);
    let mut errs = Vec::new();
    let rules = nftables::list_rules(nftables::NFPROTO_BRIDGE, TABLE, BASE)
        .context("failed to list the MAC spoof check rules")?;
    let mut b = Batch::new(nftables::NFPROTO_BRIDGE, TABLE);
    for (h, c) in rules {
        if c == cm {
            b.delete_rule(BASE, h)?;
        }
    }
    errs.extend(gone_is_fine(
        b.commit("failed to remove the MAC spoof check rules"),
    ));
    // Both chains in one transaction (the usual case: one commit, one RCU wait). The
    // iface chain jumps to the mac chain: both are flushed before either is deleted.
    if chains_batch(&[&ic, &mc])?
        .commit("failed to remove the MAC spoof check chains")
        .is_err()
    {
        // A transaction is all or nothing, so one missing chain kept the other: each on
        // its own then, the iface chain first (it refers to the mac chain).
        for c in [&ic, &mc] {
            errs.extend(gone_is_fine(
                chains_batch(&[c])?.commit(&format!("failed to remove chain {c}")),
            ));
        }
    }
    let mut errs = errs.into_iter();
    match errs.next() {
        None => Ok(()),
        Some(first) => Err(errs.fold(first, |acc, e| acc.context(format!("{e:#}")))),
    }
}

/// Flush, then delete, `chains`.
fn chains_batch(chains: &[&String]) -> Result<Batch> {
    let mut b = Batch::new(nftables::NFPROTO_BRIDGE, TABLE);
    for c in chains {
        b.flush_chain(c)?;
    }
    for c in chains {
        b.delete_chain(c)?;
    }
    Ok(b)
}

/// An error, unless it only says the object does not exist.
fn gone_is_fine(r: Result<()>) -> Option<anyhow::Error> {
    r.err()
        .filter(|e| !crate::netlink::is_errno(e, libc::ENOENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(iface_chain("c1", "eth0"), "cni-br-iface-c1-eth0");
        assert_eq!(comment("c1", "eth0"), "macspoofchk-c1-eth0");
        let mut v = Vec::new();
        nftables::match_iifname("veth1234", &mut v);
        assert_eq!(
            v[1],
            Expr::Cmp {
                neq: false,
                data: b"veth1234\0\0\0\0\0\0\0\0".to_vec()
            }
        );
        assert!(!setup_batch("veth1234", "0a:58:0a:00:00:02", "c1", "eth0")
            .unwrap()
            .is_empty());
    }
}
