//! ptp: a veth pair per container with all of its traffic routed through the host.
//!
//! ADD: IPAM first, forwarding on, veth into the container, addresses, then every
//! subnet route rewritten to go via the gateway (the host end), which carries the
//! gateway as a /32 (/128) with a host route back to the container IP. Failures undo
//! everything, IPAM included. DEL: IPAM, the link, masquerade (found by name, so also
//! when the netns is gone). CHECK: IPAM, the container veth, addresses and routes.

use anyhow::{anyhow, Context, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::{delegate, value, CniResult, Interface};
use cnibox::error::{cni_err, Code};
use cnibox::fw::ipmasq;
use cnibox::l3::{self, Rollback};
use cnibox::netlink::route::{RT_SCOPE_HOST, RT_SCOPE_LINK};
use cnibox::netlink::{LinkId, Nl, RouteSpec};
use cnibox::netns::Netns;
use ipnet::IpNet;
use serde::Deserialize;

pub const APPLET: Applet = Applet {
    name: "ptp",
    about: "point-to-point veth link between container and host, routed",
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

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conf {
    #[serde(rename = "ipMasq")]
    ip_masq: bool,
    #[serde(rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    mtu: i64,
}

/// The config, validated before anything changes: every bad value is code 7 naming it.
fn parse(ctx: &Ctx) -> Result<(Conf, u32)> {
    let c: Conf = ctx.decode()?;
    let mtu = value::mtu(c.mtu)?;
    value::masq_backend(c.ip_masq_backend.as_deref())?;
    if ctx.conf.ipam_type().is_empty() {
        return Err(cni_err(
            Code::InvalidConfig,
            "\"ipam\" is missing: ptp needs an IPAM plugin for the container's addresses",
        ));
    }
    Ok((c, mtu))
}

fn host_prefix(ip: std::net::IpAddr) -> Result<IpNet> {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).map_err(|e| anyhow!("{e}"))
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let (c, mtu) = parse(ctx)?;
    let backend = if c.ip_masq {
        Some(ipmasq::backend(c.ip_masq_backend.as_deref())?)
    } else {
        None
    };
    delegate::ensure_available(ctx, ctx.conf.ipam_type())?;
    let host_ns = Netns::current()?;
    let cont_ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open()?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    Rollback::guard(|undo| {
        let ipam = l3::ipam_add(ctx)?;
        undo.push("release the IPAM allocation", || {
            delegate::del(ctx, ctx.conf.ipam_type())
        });
        l3::enable_forwarding(&ipam.ips)?;

        let pair = l3::setup_veth(&nl, &cont_nl, &host_ns, &ctx.ifname, None, mtu, None, undo)?;
        let mut res = CniResult {
            cni_version: ctx.version().to_string(),
            interfaces: vec![
                Interface::host(&pair.host.name, &pair.host.mac),
                Interface::in_sandbox(&ctx.ifname, &pair.cont.mac, &ctx.netns),
            ],
            ips: ipam.ips,
            routes: ipam.routes,
            dns: ipam.dns,
        };
        for ip in &mut res.ips {
            ip.interface = Some(1);
        }
        l3::configure_iface(&cont_nl, &cont_ns, &ctx.ifname, &res)?;

        // Route the whole subnet through the gateway: replace the kernel's connected
        // route with "gw dev eth0 scope link" + "subnet via gw".
        for ip in &res.ips {
            let gw = ip.gateway.ok_or_else(|| {
                anyhow!(
                    "IPAM result has no gateway for {}: ptp needs one",
                    ip.address
                )
            })?;
            let subnet = ip.address.trunc();
            let mut connected = RouteSpec::new(subnet, None, pair.cont.index);
            connected.scope = RT_SCOPE_LINK;
            match cont_nl.del_route(&connected) {
                Ok(()) => {}
                Err(e) if cnibox::netlink::is_errno(&e, libc::ESRCH) => {}
                Err(e) => return Err(e).context("failed to delete the connected route"),
            }
            let mut to_gw = RouteSpec::new(host_prefix(gw)?, None, pair.cont.index);
            to_gw.scope = RT_SCOPE_LINK;
            to_gw.src = Some(ip.address.addr());
            cont_nl.add_route(&to_gw)?;
            let mut via = RouteSpec::new(subnet, Some(gw), pair.cont.index);
            via.src = Some(ip.address.addr());
            cont_nl.add_route(&via)?;
        }

        // Host side: the gateway address on the host veth, and a route back.
        for ip in &res.ips {
            let Some(gw) = ip.gateway else { continue };
            match nl.add_addr(
                pair.host.index,
                &host_prefix(gw)?,
                cnibox::netlink::addr::IFA_F_NODAD,
            ) {
                Ok(()) => {}
                Err(e) if cnibox::netlink::is_errno(&e, libc::EEXIST) => {}
                Err(e) => {
                    return Err(e).context("failed to set the gateway address on the host veth")
                }
            }
            let mut back = RouteSpec::new(host_prefix(ip.address.addr())?, None, pair.host.index);
            back.scope = RT_SCOPE_HOST;
            match nl.add_route(&back) {
                Ok(()) => {}
                Err(e) if cnibox::netlink::is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }

        if let Some(backend) = backend {
            l3::masquerade(ctx, backend, &res.ips, undo)?;
        }
        let host_now = nl.link_must(LinkId::Index(pair.host.index))?;
        res.interfaces[0].mac = host_now.mac;
        l3::apply_dns_override(ctx.conf.dns.as_ref(), &mut res)?;
        Ok(res)
    })
}

/// DEL never fails because ADD would reject the config (a runtime retries a failed DEL
/// forever): only the keys it needs are read, and an unreadable config means "clean up
/// everything that may exist".
fn del(ctx: &Ctx) -> Result<()> {
    let masq_on = ctx.decode::<Conf>().map(|c| c.ip_masq).unwrap_or(true);
    let ipam = if ctx.conf.ipam_type().is_empty() {
        Ok(())
    } else {
        delegate::del(ctx, ctx.conf.ipam_type())
    };
    // Found by name, so removed even when the netns is gone (the reference leaks them).
    let masq = || {
        if masq_on {
            ipmasq::teardown(&ctx.conf.name, &ctx.ifname, &ctx.container_id)
        } else {
            Ok(())
        }
    };
    let (cont, masq) = l3::both(|| l3::del_cont_iface(&ctx.netns, &ctx.ifname), masq);
    l3::all_errors([ipam, cont, masq])
}

fn check(ctx: &Ctx) -> Result<()> {
    parse(ctx)?;
    let prev = ctx.prev_result_required()?;
    let cont_ns = Netns::open(&ctx.netns)?;
    delegate::check(ctx, ctx.conf.ipam_type())?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let iface = l3::find_container_iface(&prev, &ctx.ifname, &ctx.netns)?;
    l3::validate_cont_veth(&cont_nl, iface)?;
    l3::validate_ips(&cont_nl, &ctx.ifname, &prev.ips)?;
    l3::validate_routes(&cont_nl, &prev.routes)?;
    Ok(())
}

fn status(ctx: &Ctx) -> Result<()> {
    delegate::status(ctx, ctx.conf.ipam_type())
}

/// GC (not in the reference): stale masquerade rules, then IPAM.
fn gc(ctx: &Ctx) -> Result<()> {
    let (c, _) = parse(ctx)?;
    let valid = ctx.valid_attachments()?;
    let masq = if c.ip_masq {
        ipmasq::gc(&ctx.conf.name, &valid)
    } else {
        Ok(())
    };
    let ipam = delegate::gc(ctx, ctx.conf.ipam_type());
    l3::all_errors([masq, ipam])
}
