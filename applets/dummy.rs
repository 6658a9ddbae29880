//! dummy: a `dummy` link named `CNI_IFNAME` inside the container, with IPAM addresses.
//!
//! ADD: the link is created directly in the container's namespace (so a host link of
//! the same name never matters), then IPAM, then the addresses and routes; a failure
//! removes the link and releases the addresses. The result keeps IPAM's `dns` (the
//! reference ignores the config's). DEL: IPAM, then the link (a missing netns or link
//! is fine). CHECK: IPAM, then the link is a dummy with the recorded MAC, UP, and has
//! the recorded addresses (routes are not checked, as in the reference).
//!
//! Differences from the reference, on purpose: a missing `ipam` is refused with code 7
//! (ADD, CHECK, STATUS) and DEL still succeeds (the reference's DEL and STATUS fail with
//! "no plugin name provided"); GC forwards to IPAM.

use anyhow::{anyhow, bail, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::{delegate, CniResult, Interface};
use cnibox::error::{cni_err, Code};
use cnibox::l3::{self, Rollback};
use cnibox::netlink::link::NewLink;
use cnibox::netlink::{LinkId, Nl};
use cnibox::netns::Netns;

pub const APPLET: Applet = Applet {
    name: "dummy",
    about: "dummy interface in the container, addressed by IPAM",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: None,
        add,
        del,
        check,
        gc: Some(gc),
        status: Some(status),
    }),
};

/// The one requirement on the config: an IPAM plugin (dummy has no keys of its own).
fn require_ipam(ctx: &Ctx) -> Result<&str> {
    match ctx.conf.ipam_type() {
        "" => Err(cni_err(
            Code::InvalidConfig,
            "dummy interface requires an IPAM configuration (\"ipam\": {\"type\": ...})",
        )),
        t => Ok(t),
    }
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let ipam_type = require_ipam(ctx)?;
    delegate::ensure_available(ctx, ipam_type)?;
    let cont_ns = Netns::open(&ctx.netns)?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let ifname = ctx.ifname.as_str();
    if cont_nl.link(LinkId::Name(ifname))?.is_some() {
        bail!("failed to create dummy: the container already has an interface {ifname:?}");
    }
    Rollback::guard(|undo| {
        cont_nl
            .create_link(&NewLink {
                name: ifname,
                kind: "dummy",
                ..Default::default()
            })
            .map_err(|e| anyhow!("failed to create dummy: {e:#}"))?;
        let nl = &cont_nl;
        undo.push("delete the dummy link", move || {
            l3::delete_cont_link(nl, ifname).map(|_| ())
        });
        let link = cont_nl.link_must(LinkId::Name(ifname))?;

        let ipam = l3::ipam_add(ctx)?;
        undo.push("release the IPAM allocation", || {
            delegate::del(ctx, ipam_type)
        });
        let mut res = CniResult {
            cni_version: ctx.version().to_string(),
            interfaces: vec![Interface::in_sandbox(ifname, &link.mac, &ctx.netns)],
            ips: ipam.ips,
            routes: ipam.routes,
            dns: ipam.dns,
        };
        for ip in &mut res.ips {
            ip.interface = Some(0);
        }
        l3::configure_iface(&cont_nl, &cont_ns, ifname, &res)?;
        Ok(res)
    })
}

/// DEL: release the addresses and delete the link; a config without IPAM (which ADD
/// refuses) still deletes the link, and a vanished netns is success.
fn del(ctx: &Ctx) -> Result<()> {
    let ipam = match ctx.conf.ipam_type() {
        "" => Ok(()),
        t => delegate::del(ctx, t),
    };
    let link = l3::del_cont_iface(&ctx.netns, &ctx.ifname);
    l3::all_errors([ipam, link])
}

fn check(ctx: &Ctx) -> Result<()> {
    let ipam_type = require_ipam(ctx)?;
    let prev = ctx.prev_result_required()?;
    let cont_ns = Netns::open(&ctx.netns)?;
    delegate::check(ctx, ipam_type)?;
    let iface = l3::find_container_iface(&prev, &ctx.ifname, &ctx.netns)?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let link = cont_nl.link(LinkId::Name(&iface.name))?.ok_or_else(|| {
        anyhow!(
            "Container Interface name in prevResult: {} not found",
            iface.name
        )
    })?;
    if link.kind != "dummy" {
        bail!("Error: Container interface {} not of type dummy", link.name);
    }
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&link.mac) {
        bail!(
            "Interface {} Mac {} doesn't match container Mac: {}",
            iface.name,
            iface.mac,
            link.mac
        );
    }
    if !link.is_up() {
        bail!("Interface {} is down", iface.name);
    }
    l3::validate_ips(&cont_nl, &ctx.ifname, &prev.ips)
}

fn status(ctx: &Ctx) -> Result<()> {
    delegate::status(ctx, require_ipam(ctx)?)
}

/// GC (the reference has none): the addresses of vanished attachments, through IPAM.
fn gc(ctx: &Ctx) -> Result<()> {
    delegate::gc(ctx, require_ipam(ctx)?)
}
