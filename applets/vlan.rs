//! vlan: an 802.1Q sub-interface of a host link ("master") with one VLAN id, moved into
//! the container, addressed by IPAM.
//!
//! ADD: validate everything first (`master` and `vlanId` 1..4094 required, MTU against
//! the master's, IPAM present), create the VLAN link directly in the container under
//! `CNI_IFNAME`, then IPAM and the addresses. Any failure undoes every step (the
//! reference leaks the link when IPAM fails, and loses IPAM's error code). DEL: IPAM,
//! then the link; it works when the master is gone (the reference fails). CHECK: the
//! reference's rules, with a VLAN id message that says so (the reference's talks about
//! "promisc") and the parent compared with the master (commented out in the reference).

use crate::macvlan::stacked;
use anyhow::{bail, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::{delegate, value, CniResult};
use cnibox::error::{cni_err, Code};
use cnibox::l3::Rollback;
use cnibox::netlink::link::{KindData, NewLink, Vlan};
use serde::Deserialize;

pub const APPLET: Applet = Applet {
    name: "vlan",
    about: "give a container an 802.1Q VLAN sub-interface of a host link",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: None,
        add,
        del,
        check,
        gc: Some(stacked::gc),
        status: Some(status),
    }),
};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conf {
    master: String,
    #[serde(rename = "vlanId")]
    vlan_id: Option<i64>,
    mtu: i64,
    #[serde(rename = "linkInContainer")]
    link_in_container: bool,
}

struct Parsed {
    c: Conf,
    id: u16,
}

fn parse(ctx: &Ctx) -> Result<Parsed> {
    let c: Conf = ctx.decode()?;
    if c.master.is_empty() {
        return Err(cni_err(
            Code::InvalidConfig,
            "\"master\" is missing: it names the link to create the VLAN on",
        ));
    }
    value::ifname("master", &c.master)?;
    let id = match c.vlan_id {
        None => {
            return Err(cni_err(
                Code::InvalidConfig,
                "\"vlanId\" is missing: it is the VLAN id (1..4094)",
            ))
        }
        Some(v) => match u16::try_from(v) {
            Ok(id) if (1..=4094).contains(&id) => id,
            _ => return Err(value::invalid("vlanId", v, "is out of range (1..4094)")),
        },
    };
    value::mtu(c.mtu)?;
    Ok(Parsed { c, id })
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let p = parse(ctx)?;
    stacked::require_ipam(
        ctx,
        "vlan needs an IPAM plugin for the container's addresses",
    )?;
    let s = stacked::Sockets::open(ctx)?;
    let master = s.master(&p.c.master, p.c.link_in_container, None)?;
    let mtu = stacked::mtu_under(p.c.mtu, &master)?;
    let req = NewLink::typed(
        &ctx.ifname,
        KindData::Vlan(Vlan {
            id: p.id,
            ..Default::default()
        }),
    )
    .parent(master.index)
    .mtu(mtu);
    Rollback::guard(|undo| {
        let link = s.create(ctx, req, p.c.link_in_container, undo)?;
        let iface = stacked::iface(ctx, &link);
        let addrs = stacked::ipam_add(ctx, undo)?;
        stacked::configure(ctx, &s, iface, addrs, None)
    })
}

fn del(ctx: &Ctx) -> Result<()> {
    stacked::del(ctx)
}

fn check(ctx: &Ctx) -> Result<()> {
    let p = parse(ctx)?;
    let s = stacked::Sockets::open(ctx)?;
    let master = s.master(&p.c.master, p.c.link_in_container, None)?;
    let mtu = stacked::mtu_under(p.c.mtu, &master)?;
    let prev = ctx.prev_result_required()?;
    delegate::check(ctx, ctx.conf.ipam_type())?;
    let link = stacked::check_link(ctx, &s, &prev, "vlan", Some(&master), mtu)?;
    let Some(KindData::Vlan(have)) = &link.info else {
        bail!("Error: Container interface {} not of type vlan", link.name);
    };
    if have.id != p.id {
        bail!(
            "container vlan {} has VLAN id {}, the config says \"vlanId\": {}",
            link.name,
            have.id,
            p.id
        );
    }
    stacked::check_addresses(ctx, &s, &prev)
}

/// STATUS as the reference: always IPAM's (vlan cannot work without one).
fn status(ctx: &Ctx) -> Result<()> {
    delegate::status(ctx, ctx.conf.ipam_type())
}
