//! loopback: bring `lo` up in the container (ADD), down again (DEL), check it is up
//! (CHECK). `CNI_IFNAME` is ignored: it is always `lo`.
//!
//! Unlike the reference, the result is shaped for the requested version (the
//! reference prints a 1.x body labelled 0.3.1 or 0.1.0).

use anyhow::{bail, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::{CniResult, Interface, IpConfig};
use cnibox::netlink::{LinkId, Nl};
use cnibox::netns::Netns;

pub const APPLET: Applet = Applet {
    name: "loopback",
    about: "bring up the loopback interface of a container",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: None,
        add,
        del,
        check,
        gc: None,
        status: None,
    }),
};

fn add(ctx: &Ctx) -> Result<CniResult> {
    let prev = ctx.prev_result()?;
    let ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open_in(&ns)?;
    let lo = nl.link_must(LinkId::Name("lo"))?;
    nl.set_up(lo.index, true)?;

    let addrs = nl.addrs(lo.index, None)?;
    if addrs.iter().any(|a| !a.net.addr().is_loopback()) {
        bail!("loopback interface found with non-loopback address");
    }
    if let Some(mut prev) = prev {
        // A chained loopback passes the previous result through.
        prev.cni_version = ctx.version().to_string();
        return Ok(prev);
    }
    let mut r = CniResult {
        cni_version: ctx.version().to_string(),
        interfaces: vec![Interface::in_sandbox("lo", "00:00:00:00:00:00", &ctx.netns)],
        ..Default::default()
    };
    for v6 in [false, true] {
        if let Some(a) = addrs.iter().find(|a| a.net.addr().is_ipv6() == v6) {
            r.ips.push(IpConfig {
                interface: Some(0),
                address: a.net,
                gateway: None,
            });
        }
    }
    Ok(r)
}

fn del(ctx: &Ctx) -> Result<()> {
    let Some(ns) = Netns::open_if_present(&ctx.netns)? else {
        return Ok(());
    };
    let nl = Nl::open_in(&ns)?;
    if let Some(lo) = nl.link(LinkId::Name("lo"))? {
        nl.set_up(lo.index, false)?;
    }
    Ok(())
}

fn check(ctx: &Ctx) -> Result<()> {
    let ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open_in(&ns)?;
    let lo = nl.link_must(LinkId::Name("lo"))?;
    if !lo.is_up() {
        bail!("loopback interface is down");
    }
    Ok(())
}
