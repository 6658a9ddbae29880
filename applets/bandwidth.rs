//! bandwidth: a chained meta plugin that shapes a veth attachment with TBF qdiscs on the
//! host side.
//!
//! Ingress (towards the container): a TBF root qdisc on the host veth. Egress (from the
//! container): an ifb device, an `ingress` qdisc on the host veth with a u32 match-all
//! filter redirecting everything to the ifb, and a TBF root qdisc on the ifb. The TBF
//! parameters are the reference's (rate/8 bytes/s, burst/8 bytes, 25 ms latency).
//!
//! ifb names: the reference names the ifb `bwp` + sha512(network + container id)[:12],
//! without the interface, so a container with two shaped interfaces on one network
//! collides. Here the first attachment of a container takes the reference's name (so
//! the Go plugin's DEL finds it, and ours finds Go's), a further one takes `bwp` +
//! sha512(network + container id + NUL + ifname)[:12]; every ifb we make carries its
//! owner in its alias (`cnibox-bandwidth <container id> <ifname> <network>`), which is
//! how DEL and GC find it.
//!
//! Differences from the reference, on purpose:
//! - no limits and no prevResult → an empty result (the reference panics);
//! - a rate or burst below 8 bits (0 bytes) is refused with code 7 (the reference
//!   divides by zero);
//! - a failed ADD removes what it made (TBF, ingress qdisc, ifb);
//! - one mirred action in the redirect filter (the reference sends the same redirect
//!   twice, the second unreachable);
//! - CHECK compares every TBF we made (it also requires the root qdisc to be a TBF and
//!   the redirect filter to point at the ifb; the reference stops at the first non-TBF);
//! - GC removes our ifbs of attachments not in the valid list (the reference has no GC).
//!
//! `shapedSubnets`/`unshapedSubnets` do not exist in v1.9.1 and are ignored like any
//! unknown key, as the reference does.

use anyhow::{anyhow, Context, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin};
use cnibox::cni::{value, CniResult, Interface};
use cnibox::error::{cni_err, Code};
use cnibox::fw::hash_with_prefix;
use cnibox::l3::{self, Rollback};
use cnibox::netlink::link::{KindData, NewLink};
use cnibox::netlink::tc::{self, Tbf};
use cnibox::netlink::{is_errno, Link, LinkId, Nl};
use cnibox::netns::Netns;
use serde::Deserialize;

pub const APPLET: Applet = Applet {
    name: "bandwidth",
    about: "shape a veth attachment's traffic with TBF qdiscs and an ifb (chained)",
    kind: Kind::Plugin(Plugin {
        versions: &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        cni_args: None,
        add,
        del,
        check,
        gc: Some(gc),
        status: None,
    }),
};

const LATENCY_MS: f64 = 25.0;
const ALIAS_PREFIX: &str = "cnibox-bandwidth";

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(default)]
struct Entry {
    #[serde(rename = "ingressRate")]
    ingress_rate: Option<u64>,
    #[serde(rename = "ingressBurst")]
    ingress_burst: Option<u64>,
    #[serde(rename = "egressRate")]
    egress_rate: Option<u64>,
    #[serde(rename = "egressBurst")]
    egress_burst: Option<u64>,
}

impl Entry {
    fn any_set(&self) -> bool {
        self.ingress_rate.is_some()
            || self.ingress_burst.is_some()
            || self.egress_rate.is_some()
            || self.egress_burst.is_some()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RuntimeConfig {
    bandwidth: Option<Entry>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConf {
    #[serde(flatten)]
    top: Entry,
    #[serde(rename = "runtimeConfig")]
    runtime_config: RuntimeConfig,
}

/// One direction's limit, in bits/s and bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limit {
    rate: u64,
    burst: u64,
}

impl Limit {
    /// The reference's TBF: rate/8 bytes/s, burst/8 bytes, 25 ms latency, its float
    /// arithmetic (truncations included), so both implementations set identical qdiscs.
    fn tbf(&self) -> Tbf {
        let rate = self.rate / 8;
        let burst = (self.burst / 8) as u32;
        let ticks = tc::ticks_per_usec();
        let usec = (burst as f64 * 1_000_000.0 / rate as f64) as u32;
        let buffer = (usec as f64 * ticks) as u32;
        let latency = 1_000_000.0 * (LATENCY_MS / 1000.0);
        let limit = ((rate as f64 * latency / 1_000_000.0) as u32).wrapping_add(burst);
        Tbf {
            rate,
            limit,
            buffer,
        }
    }
}

struct Conf {
    ingress: Option<Limit>,
    egress: Option<Limit>,
}

fn direction(rate: Option<u64>, burst: Option<u64>, dir: &str) -> Result<Option<Limit>> {
    let (rate, burst) = (rate.unwrap_or(0), burst.unwrap_or(0));
    let (rk, bk) = (format!("{dir}Rate"), format!("{dir}Burst"));
    match (rate, burst) {
        (0, 0) => return Ok(None),
        (_, 0) => {
            return Err(value::invalid(
                &rk,
                rate,
                "is set, so the burst must also be set (\"".to_string()
                    + &bk
                    + "\" is 0 or missing)",
            ))
        }
        (0, _) => {
            return Err(value::invalid(
                &bk,
                burst,
                "is set, so the rate must also be set (\"".to_string()
                    + &rk
                    + "\" is 0 or missing)",
            ))
        }
        _ => {}
    }
    if burst / 8 >= u32::MAX as u64 {
        return Err(value::invalid(&bk, burst, "cannot be more than 4GB"));
    }
    if rate < 8 {
        return Err(value::invalid(
            &rk,
            rate,
            "is less than 8 bits/s (0 bytes/s)",
        ));
    }
    if burst < 8 {
        return Err(value::invalid(&bk, burst, "is less than 8 bits (0 bytes)"));
    }
    Ok(Some(Limit { rate, burst }))
}

/// The limits: the top-level keys if any is present (missing ones are 0, as the
/// reference's embedded struct), else `runtimeConfig.bandwidth`.
fn parse(ctx: &Ctx) -> Result<Conf> {
    let raw: RawConf = ctx.decode()?;
    let e = if raw.top.any_set() {
        raw.top
    } else {
        raw.runtime_config.bandwidth.unwrap_or_default()
    };
    Ok(Conf {
        ingress: direction(e.ingress_rate, e.ingress_burst, "ingress")?,
        egress: direction(e.egress_rate, e.egress_burst, "egress")?,
    })
}

/// The reference's ifb name: `bwp` + sha512(network + container id)[:12].
fn reference_ifb(network: &str, cid: &str) -> String {
    hash_with_prefix(15, "bwp", &format!("{network}{cid}"))
}

/// The name of a further attachment's ifb, with the interface in the hash.
fn per_iface_ifb(network: &str, cid: &str, ifname: &str) -> String {
    hash_with_prefix(15, "bwp", &format!("{network}{cid}\0{ifname}"))
}

fn owner_alias(network: &str, cid: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX} {cid} {ifname} {network}")
}

/// (container id, ifname, network) of an ifb we made.
fn parse_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?.strip_prefix(' ')?;
    let mut it = rest.splitn(3, ' ');
    Some((it.next()?, it.next()?, it.next()?))
}

/// The host veth of the attachment: the peer of the container's `ifname`, which must be
/// a host-side interface of prevResult (as the reference requires).
fn host_iface(nl: &Nl, cont_nl: &Nl, prev: &CniResult, ifname: &str) -> Result<Link> {
    if prev.interfaces.is_empty() {
        return Err(cni_err(
            Code::InvalidConfig,
            "prevResult has no interfaces: bandwidth needs the host veth in it",
        ));
    }
    let cont = cont_nl.link(LinkId::Name(ifname))?;
    let peer = match &cont {
        Some(l) if l.kind == "veth" && l.link != 0 => l.link,
        _ => {
            return Err(anyhow!(
                "container interface {ifname} has no veth peer (bandwidth works only with veth-based plugins)"
            ))
        }
    };
    let host = nl
        .link(LinkId::Index(peer))?
        .ok_or_else(|| anyhow!("veth peer with index {peer} is not in host ns"))?;
    if !prev
        .interfaces
        .iter()
        .any(|i| i.sandbox.is_empty() && i.name == host.name)
    {
        return Err(anyhow!(
            "no veth peer of container interface found in host ns (host veth {:?} is not in prevResult)",
            host.name
        ));
    }
    Ok(host)
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let c = parse(ctx)?;
    let prev = ctx.prev_result()?;
    if c.ingress.is_none() && c.egress.is_none() {
        // Nothing to shape: prevResult passes through (the reference panics without one).
        return Ok(prev.unwrap_or_else(|| CniResult {
            cni_version: ctx.version().to_string(),
            ..Default::default()
        }));
    }
    let mut res = prev.ok_or_else(|| {
        cni_err(
            Code::InvalidConfig,
            "\"prevResult\" is missing: bandwidth must be called as a chained plugin",
        )
    })?;
    let cont_ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open()?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let host = host_iface(&nl, &cont_nl, &res, &ctx.ifname)?;
    let (net, cid) = (&ctx.conf.name, &ctx.container_id);
    let alias = owner_alias(net, cid, &ctx.ifname);
    let ifb_name = if c.egress.is_some() {
        Some(choose_ifb(&nl, net, cid, &ctx.ifname, &alias)?)
    } else {
        None
    };

    Rollback::guard(|undo| {
        if let Some(l) = c.ingress {
            nl.add_tbf(host.index, tc::handle(1, 0), tc::TC_H_ROOT, &l.tbf())
                .with_context(|| format!("create qdisc on {}", host.name))?;
            undo.push("remove the ingress TBF", || {
                nl.del_qdisc(host.index, tc::handle(1, 0), tc::TC_H_ROOT)
            });
        }
        if let (Some(l), Some(name)) = (c.egress, ifb_name.as_deref()) {
            // txqueuelen 0 like the reference (an ifb queues nothing itself).
            nl.create_link(&NewLink::typed(name, KindData::Ifb).mtu(host.mtu).txqlen(0))
                .context("adding link")?;
            undo.push("delete the ifb", || nl.delete_link(LinkId::Name(name)));
            let ifb = nl.link_must(LinkId::Name(name))?;
            nl.set_alias(ifb.index, &alias)?;
            nl.set_up(ifb.index, true)?;
            nl.add_ingress_qdisc(host.index, "ingress")
                .with_context(|| format!("create ingress qdisc on {}", host.name))?;
            undo.push("remove the ingress qdisc", || {
                nl.del_qdisc(host.index, tc::INGRESS_HANDLE, tc::TC_H_INGRESS)
            });
            nl.add_u32_redirect(
                host.index,
                tc::INGRESS_HANDLE,
                1,
                tc::ETH_P_ALL,
                tc::handle(1, 1),
                ifb.index,
            )
            .context("add filter")?;
            nl.add_tbf(ifb.index, tc::handle(1, 0), tc::TC_H_ROOT, &l.tbf())
                .context("create ifb qdisc")?;
            res.interfaces.push(Interface::host(name, &ifb.mac));
        }
        Ok(res)
    })
}

/// The ifb name for this attachment: the reference's, unless another attachment of the
/// container (ours, or Go's) holds it.
fn choose_ifb(nl: &Nl, net: &str, cid: &str, ifname: &str, alias: &str) -> Result<String> {
    let reference = reference_ifb(net, cid);
    match nl.link(LinkId::Name(&reference))? {
        Some(l) if l.alias != alias => Ok(per_iface_ifb(net, cid, ifname)),
        // Free, or ours already (a repeated ADD fails on it, as the reference does).
        _ => Ok(reference),
    }
}

/// DEL: the attachment's ifb (the qdiscs on the host veth go with the veth). Found by
/// name and alias, so the netns may be gone; the config is not validated (a DEL the
/// config's limits would refuse must still clean up).
fn del(ctx: &Ctx) -> Result<()> {
    let nl = Nl::open()?;
    let (net, cid) = (&ctx.conf.name, &ctx.container_id);
    let alias = owner_alias(net, cid, &ctx.ifname);
    let reference = reference_ifb(net, cid);
    for name in [reference.clone(), per_iface_ifb(net, cid, &ctx.ifname)] {
        let Some(l) = nl.link(LinkId::Name(&name))? else {
            continue;
        };
        // Ours for this attachment, or the reference's (no alias: made by the Go plugin).
        let mine = l.alias == alias || (name == reference && l.alias.is_empty());
        if l.kind != "ifb" || !mine {
            continue;
        }
        match nl.delete_link(LinkId::Index(l.index)) {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ENODEV) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn check(ctx: &Ctx) -> Result<()> {
    let c = parse(ctx)?;
    let prev = ctx.prev_result_required()?;
    let cont_ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open()?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let host = host_iface(&nl, &cont_nl, &prev, &ctx.ifname)?;
    if let Some(l) = c.ingress {
        expect_tbf(&nl, &host, &l.tbf())?;
    }
    if let Some(l) = c.egress {
        let alias = owner_alias(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
        let reference = reference_ifb(&ctx.conf.name, &ctx.container_id);
        let per_iface = per_iface_ifb(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
        let mut ifb = None;
        for name in [&reference, &per_iface] {
            if let Some(link) = nl.link(LinkId::Name(name))? {
                if link.kind == "ifb"
                    && (link.alias == alias || (*name == reference && link.alias.is_empty()))
                {
                    ifb = Some(link);
                    break;
                }
            }
        }
        let ifb = ifb.ok_or_else(|| {
            anyhow!("get ifb device: no ifb {reference:?} (or {per_iface:?}) for this attachment")
        })?;
        expect_tbf(&nl, &ifb, &l.tbf())?;
        let filters = nl.filters(host.index, tc::INGRESS_HANDLE)?;
        if !filters.iter().any(|f| f.redirects.contains(&ifb.index)) {
            return Err(anyhow!(
                "no filter on {} redirects its traffic to {}",
                host.name,
                ifb.name
            ));
        }
    }
    Ok(())
}

fn expect_tbf(nl: &Nl, link: &Link, want: &Tbf) -> Result<()> {
    let qd = nl.qdiscs(link.index)?;
    let root = qd
        .iter()
        .find(|q| q.parent == tc::TC_H_ROOT)
        .ok_or_else(|| anyhow!("Failed to find qdisc on {}", link.name))?;
    let got = root
        .tbf
        .ok_or_else(|| anyhow!("the root qdisc of {} is {}, not tbf", link.name, root.kind))?;
    for (what, a, b) in [
        ("Rate", got.rate, want.rate),
        ("Limit", got.limit as u64, want.limit as u64),
        ("Buffer", got.buffer as u64, want.buffer as u64),
    ] {
        if a != b {
            return Err(anyhow!(
                "{what} doesn't match on {}: {a}, configured {b}",
                link.name
            ));
        }
    }
    Ok(())
}

/// GC (not in the reference): our ifbs of this network whose attachment is not in the
/// valid list. Go's ifbs carry no owner and are left alone.
fn gc(ctx: &Ctx) -> Result<()> {
    let valid = ctx.valid_attachments()?;
    let nl = Nl::open()?;
    let mut errs = Vec::new();
    for l in nl.links()? {
        if l.kind != "ifb" {
            continue;
        }
        let Some((cid, ifname, net)) = parse_alias(&l.alias) else {
            continue;
        };
        if net != ctx.conf.name || valid.iter().any(|(c, i)| c == cid && i == ifname) {
            continue;
        }
        match nl.delete_link(LinkId::Index(l.index)) {
            Err(e) if !is_errno(&e, libc::ENODEV) => errs.push(Err(e)),
            _ => {}
        }
    }
    l3::all_errors(errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_matches_the_reference_arithmetic() {
        // 1 Mbit/s, 80 kbit burst: 125000 B/s, 10000 B, 80 ms of bucket
        let t = Limit {
            rate: 1_000_000,
            burst: 80_000,
        }
        .tbf();
        assert_eq!(t.rate, 125_000);
        assert_eq!(t.limit, 125_000 / 40 + 10_000);
        assert_eq!(t.buffer as f64, 80_000.0 * tc::ticks_per_usec());
    }

    #[test]
    fn names_and_aliases() {
        assert_eq!(reference_ifb("bwnet", "ctr1"), "bwpea62040b30ca");
        assert_ne!(
            per_iface_ifb("bwnet", "ctr1", "eth0"),
            per_iface_ifb("bwnet", "ctr1", "eth1")
        );
        let a = owner_alias("my net", "ctr1", "eth0");
        assert_eq!(parse_alias(&a), Some(("ctr1", "eth0", "my net")));
        assert_eq!(parse_alias("something else"), None);
    }
}
