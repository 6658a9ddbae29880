//! ipvlan: an IP-addressed sub-interface of a host link ("master"), moved into the
//! container; it shares the master's MAC.
//!
//! ADD: validate everything first (mode, MTU against the master's, the master: configured,
//! else prevResult's single interface when chained, else the default route's link),
//! create the ipvlan directly in the container under `CNI_IFNAME`, then its addresses:
//! from IPAM, or, chained without `ipam`, the prevResult's. Chained, the result keeps the
//! previous plugins' interfaces (the reference drops them). Any failure undoes every step
//! (the reference leaks the link always and the address through Go variable shadowing).
//! DEL: IPAM, then the link, without the master auto-detection the reference re-runs (and
//! fails on hosts without a default route). CHECK: the reference's rules; it also works
//! without a configured master (the reference's CHECK then always fails).

use crate::macvlan::stacked;
use anyhow::{bail, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::{delegate, value, CniResult};
use cnibox::error::{cni_err, Code};
use cnibox::l3::Rollback;
use cnibox::netlink::link::{Ipvlan, IpvlanMode, KindData, NewLink};
use serde::Deserialize;

pub const APPLET: Applet = Applet {
    name: "ipvlan",
    about: "give a container an ipvlan sub-interface of a host link",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: None,
        add,
        del,
        check,
        gc: Some(stacked::gc),
        status: Some(stacked::status_if_ipam),
    }),
};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conf {
    master: String,
    mode: String,
    mtu: i64,
    #[serde(rename = "linkInContainer")]
    link_in_container: bool,
}

struct Parsed {
    c: Conf,
    mode: IpvlanMode,
    prev: Option<CniResult>,
}

fn parse(ctx: &Ctx) -> Result<Parsed> {
    let c: Conf = ctx.decode()?;
    if !c.master.is_empty() {
        value::ifname("master", &c.master)?;
    }
    let mode = if c.mode.is_empty() {
        IpvlanMode::L2
    } else {
        IpvlanMode::from_name(&c.mode).ok_or_else(|| {
            value::invalid(
                "mode",
                format!("{:?}", c.mode),
                format!("is not an ipvlan mode ({})", IpvlanMode::NAMES.join(", ")),
            )
        })?
    };
    value::mtu(c.mtu)?;
    let prev = ctx.prev_result()?;
    Ok(Parsed { c, mode, prev })
}

/// Chained (a prevResult and no master configured): the master is the prevResult's
/// one named interface, as in the reference.
fn chained_master(p: &Parsed) -> Result<Option<String>> {
    let Some(prev) = &p.prev else { return Ok(None) };
    if !p.c.master.is_empty() {
        return Ok(None);
    }
    match prev.interfaces.as_slice() {
        [only] if !only.name.is_empty() => Ok(Some(only.name.clone())),
        _ => Err(value::invalid(
            "master",
            "(not set)",
            "cannot be taken from prevResult: it must list exactly one named interface",
        )),
    }
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let p = parse(ctx)?;
    let chained = chained_master(&p)?;
    let ipam = !ctx.conf.ipam_type().is_empty();
    let prev_has_ips = p.prev.as_ref().is_some_and(|r| !r.ips.is_empty());
    if ipam {
        delegate::ensure_available(ctx, ctx.conf.ipam_type())?;
    } else if !prev_has_ips {
        return Err(cni_err(
            Code::InvalidConfig,
            "\"ipam\" is missing and there is no prevResult with addresses: ipvlan needs one of them for the container's addresses",
        ));
    }
    let s = stacked::Sockets::open(ctx)?;
    let master = s.master(&p.c.master, p.c.link_in_container, chained.as_deref())?;
    let mtu = stacked::mtu_under(p.c.mtu, &master)?;
    let req = NewLink::typed(
        &ctx.ifname,
        KindData::Ipvlan(Ipvlan {
            mode: p.mode,
            flags: 0,
        }),
    )
    .parent(master.index)
    .mtu(mtu);
    Rollback::guard(|undo| {
        let link = s.create(ctx, req, p.c.link_in_container, undo)?;
        let iface = stacked::iface(ctx, &link);
        let (addrs, prev) = match (ipam, p.prev.clone()) {
            (true, prev) => (stacked::ipam_add(ctx, undo)?, prev),
            // Chained without IPAM: the previous plugin's addresses and routes move to
            // the ipvlan (as in the reference); its interfaces stay in the result.
            (false, Some(mut prev)) => {
                let addrs = CniResult {
                    ips: std::mem::take(&mut prev.ips),
                    routes: std::mem::take(&mut prev.routes),
                    ..Default::default()
                };
                (addrs, Some(prev))
            }
            (false, None) => bail!("no addresses to configure"),
        };
        stacked::configure(ctx, &s, iface, addrs, prev)
    })
}

fn del(ctx: &Ctx) -> Result<()> {
    stacked::del(ctx)
}

fn check(ctx: &Ctx) -> Result<()> {
    let p = parse(ctx)?;
    let s = stacked::Sockets::open(ctx)?;
    // Without a configured master: chained, the one prevResult interface that is not
    // ours; otherwise the default route's link, as ADD chose it.
    let chained = match (
        &p.prev,
        ctx.conf.ipam_type().is_empty() && p.c.master.is_empty(),
    ) {
        (Some(prev), true) => {
            let others: Vec<&str> = prev
                .interfaces
                .iter()
                .filter(|i| !(i.name == ctx.ifname && i.sandbox == ctx.netns))
                .map(|i| i.name.as_str())
                .filter(|n| !n.is_empty())
                .collect();
            match others.as_slice() {
                [one] => Some(one.to_string()),
                _ => None,
            }
        }
        _ => None,
    };
    let master = s.master(&p.c.master, p.c.link_in_container, chained.as_deref())?;
    let mtu = stacked::mtu_under(p.c.mtu, &master)?;
    let prev = ctx.prev_result_required()?;
    if !ctx.conf.ipam_type().is_empty() {
        delegate::check(ctx, ctx.conf.ipam_type())?;
    }
    let explicit = (!p.c.master.is_empty()).then_some(&master);
    let link = stacked::check_link(ctx, &s, &prev, "ipvlan", explicit, mtu)?;
    let Some(KindData::Ipvlan(have)) = &link.info else {
        bail!(
            "Error: Container interface {} not of type ipvlan",
            link.name
        );
    };
    if have.mode != p.mode {
        bail!(
            "Container IPVlan mode {} does not match expected value: {}",
            have.mode.name(),
            p.mode.name()
        );
    }
    stacked::check_addresses(ctx, &s, &prev)
}
