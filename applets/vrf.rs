//! vrf: put a container interface into a VRF (chained meta plugin).
//!
//! ADD, inside the container netns: find the VRF `vrfname` (it must be a VRF; with
//! `table` set its table must match) or create it with `table`, or the lowest id >= 1
//! no other VRF of the netns uses, and set it up; then enslave `CNI_IFNAME` (it must
//! have no master), re-add the global IPv6 addresses the kernel drops on enslaving and
//! wait (bounded) for their local routes in the VRF table, and copy the interface's
//! universe-scope main-table routes into the VRF table. DEL: release the interface and
//! delete the VRF when no interface is left in it.
//!
//! Differences from the reference, on purpose:
//! - DEL succeeds when the interface is gone (the reference fails, so a runtime
//!   retrying DEL would never get past it) and when the netns is gone;
//! - a failed ADD releases the interface and deletes a VRF it created;
//! - the wait for the IPv6 local routes is code 11 when it runs out.

use anyhow::{anyhow, Context, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin};
use cnibox::cni::{value, CniResult};
use cnibox::error::{cni_err, Code};
use cnibox::l3::Rollback;
use cnibox::netlink::link::{KindData, NewLink};
use cnibox::netlink::route::{RT_SCOPE_UNIVERSE, RT_TABLE_MAIN};
use cnibox::netlink::{is_errno, Link, LinkId, Nl};
use cnibox::netns::Netns;
use ipnet::IpNet;
use serde::Deserialize;
use std::time::Duration;

pub const APPLET: Applet = Applet {
    name: "vrf",
    about: "enslave a container interface to a VRF, creating it on demand (chained)",
    kind: Kind::Plugin(Plugin {
        versions: &["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        cni_args: None,
        add,
        del,
        check,
        gc: None,
        status: None,
    }),
};

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConf {
    vrfname: String,
    table: Option<i64>,
}

struct Conf {
    vrfname: String,
    table: u32,
}

fn parse(ctx: &Ctx) -> Result<Conf> {
    let raw: RawConf = ctx.decode()?;
    if raw.vrfname.is_empty() {
        return Err(cni_err(
            Code::InvalidConfig,
            "configuration is expected to have a valid vrf name (\"vrfname\" is missing or empty)",
        ));
    }
    value::ifname("vrfname", &raw.vrfname)?;
    let table = match raw.table {
        None => 0,
        Some(t) => u32::try_from(t)
            .map_err(|_| value::invalid("table", t, "is not a routing table id (0..4294967295)"))?,
    };
    Ok(Conf {
        vrfname: raw.vrfname,
        table,
    })
}

fn vrf_table(l: &Link) -> Option<u32> {
    match l.info {
        Some(KindData::Vrf { table }) => Some(table),
        _ => None,
    }
}

/// The VRF named `name`: `Ok(None)` if there is no such link, an error if it is not a
/// VRF.
fn find_vrf(nl: &Nl, name: &str) -> Result<Option<(Link, u32)>> {
    match nl.link(LinkId::Name(name))? {
        None => Ok(None),
        Some(l) => match vrf_table(&l) {
            Some(t) => Ok(Some((l, t))),
            None => Err(anyhow!("Netlink {name} is not a VRF")),
        },
    }
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let c = parse(ctx)?;
    let prev = ctx.prev_result()?.ok_or_else(|| {
        cni_err(
            Code::InvalidConfig,
            "missing prevResult from earlier plugin (\"prevResult\" is missing)",
        )
    })?;
    let ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open_in(&ns)?;
    let existing = find_vrf(&nl, &c.vrfname).context("cmdAdd failed")?;
    if let Some((_, t)) = &existing {
        if c.table != 0 && *t != c.table {
            return Err(cni_err(
                Code::InvalidConfig,
                format!(
                    "cmdAdd failed: VRF {} already exist with different routing table {t}",
                    c.vrfname
                ),
            ));
        }
    }
    let iface = nl
        .link(LinkId::Name(&ctx.ifname))?
        .ok_or_else(|| anyhow!("cmdAdd failed: could not get link by name {}", ctx.ifname))?;
    if iface.master != 0 {
        let m = nl
            .link(LinkId::Index(iface.master))?
            .map(|l| l.name)
            .unwrap_or_else(|| format!("ifindex {}", iface.master));
        return Err(anyhow!(
            "cmdAdd failed: interface {} has already a master set: {m}",
            ctx.ifname
        ));
    }
    Rollback::guard(|undo| {
        let (vrf, table) = match existing {
            Some(v) => v,
            None => {
                let table = if c.table != 0 {
                    c.table
                } else {
                    free_table(&nl)?
                };
                nl.create_link(&NewLink::typed(&c.vrfname, KindData::Vrf { table }))
                    .with_context(|| format!("could not add VRF {}", c.vrfname))?;
                let n = &nl;
                let name = c.vrfname.clone();
                undo.push("delete the VRF", move || n.delete_link(LinkId::Name(&name)));
                let l = nl.link_must(LinkId::Name(&c.vrfname))?;
                nl.set_up(l.index, true)?;
                (l, table)
            }
        };
        enslave(&nl, &vrf, table, &iface, undo)
    })
    .context("cmdAdd failed")?;
    let mut res = prev;
    res.cni_version = ctx.version().to_string();
    Ok(res)
}

/// The lowest table id >= 1 no VRF of the netns uses (the reference's choice: other
/// users of table ids are not considered).
fn free_table(nl: &Nl) -> Result<u32> {
    let taken: Vec<u32> = nl.links()?.iter().filter_map(vrf_table).collect();
    (1..u32::MAX)
        .find(|t| !taken.contains(t))
        .ok_or_else(|| anyhow!("findFreeRoutingTableID: Failed to find an available routing id"))
}

fn enslave<'a>(
    nl: &'a Nl,
    vrf: &Link,
    table: u32,
    iface: &Link,
    undo: &mut Rollback<'a>,
) -> Result<()> {
    let global6 = |nl: &Nl| -> Result<Vec<IpNet>> {
        Ok(nl
            .addrs(iface.index, Some(true))?
            .into_iter()
            .filter(|a| a.scope == 0)
            .map(|a| a.net)
            .collect())
    };
    let before = global6(nl)?;
    let mut routes = nl.routes(false, RT_TABLE_MAIN)?;
    routes.extend(nl.routes(true, RT_TABLE_MAIN)?);
    routes.retain(|r| r.oif == iface.index && r.scope == RT_SCOPE_UNIVERSE);

    nl.set_master(iface.index, vrf.index)
        .with_context(|| format!("could not set vrf {} as master of {}", vrf.name, iface.name))?;
    let index = iface.index;
    undo.push("release the interface", move || nl.set_master(index, 0));

    let after = global6(nl)?;
    for a in before.iter().filter(|a| !after.contains(a)) {
        nl.add_addr(iface.index, a, cnibox::netlink::addr::IFA_F_NODAD)
            .with_context(|| {
                format!(
                    "could not restore address {a} to {} @ {}",
                    iface.name, vrf.name
                )
            })?;
        // The local route of the address appears in the VRF table shortly after; the
        // routes copied below need it. 10 ms doubling, 9 tries (about 2.5 s).
        let host = IpNet::new(a.addr(), 128).map_err(|e| anyhow!("{e}"))?;
        let mut pause = Duration::from_millis(10);
        let mut tries = 0;
        loop {
            let found = nl
                .routes(true, table)?
                .iter()
                .any(|r| r.dst == host && r.oif == iface.index);
            if found {
                break;
            }
            tries += 1;
            if tries > 8 {
                return Err(cni_err(
                    Code::TryAgainLater,
                    format!(
                        "failed getting local/host addresses for {} in table {table} with dst {host}",
                        iface.name
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause *= 2;
        }
    }
    for r in routes {
        let mut r = r;
        r.table = table;
        nl.replace_route(&r)
            .with_context(|| format!("could not add route '{r}'"))?;
    }
    Ok(())
}

/// DEL: release the interface; delete the VRF once nothing is enslaved to it. A gone
/// netns, VRF or interface is nothing to do; the config is not validated beyond the
/// name it needs.
fn del(ctx: &Ctx) -> Result<()> {
    let vrfname = ctx
        .decode::<RawConf>()
        .map(|c| c.vrfname)
        .unwrap_or_default();
    if vrfname.is_empty() {
        return Ok(());
    }
    let Some(ns) = Netns::open_if_present(&ctx.netns)? else {
        return Ok(());
    };
    let nl = Nl::open_in(&ns)?;
    let Some(vrf) = nl.link(LinkId::Name(&vrfname))? else {
        return Ok(());
    };
    if vrf_table(&vrf).is_none() {
        return Ok(());
    }
    if let Some(l) = nl.link(LinkId::Name(&ctx.ifname))? {
        if l.master == vrf.index {
            nl.set_master(l.index, 0)
                .with_context(|| format!("resetMaster: could not reset master of {}", l.name))?;
        }
    }
    if !nl.links()?.iter().any(|l| l.master == vrf.index) {
        match nl.delete_link(LinkId::Index(vrf.index)) {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ENODEV) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn check(ctx: &Ctx) -> Result<()> {
    let c = parse(ctx)?;
    ctx.prev_result_required()?;
    let ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open_in(&ns)?;
    let (vrf, table) =
        find_vrf(&nl, &c.vrfname)?.ok_or_else(|| anyhow!("VRF {} does not exist", c.vrfname))?;
    if c.table != 0 && table != c.table {
        return Err(anyhow!(
            "VRF {} has routing table {table}, configured {}",
            c.vrfname,
            c.table
        ));
    }
    let found = nl
        .links()?
        .iter()
        .any(|l| l.master == vrf.index && l.name == ctx.ifname);
    if !found {
        return Err(anyhow!(
            "failed to find {} associated to vrf {}",
            ctx.ifname,
            c.vrfname
        ));
    }
    Ok(())
}
