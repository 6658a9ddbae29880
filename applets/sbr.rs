//! sbr: source-based routing for a container interface (chained meta plugin).
//!
//! ADD, inside the container netns, for each prevResult IP of `CNI_IFNAME`:
//! - with `table`: the rule `from <ip>/32|/128 lookup <table>`, nothing else;
//! - without: the first table id >= 100 no rule and no route uses, the rule
//!   `from <ip> lookup <id>`,
//!   a default route via the IP's gateway in it, and a copy of each of the interface's
//!   main-table routes whose src or gateway is in the IP's subnet (or that has neither);
//!   the next IP takes the next free id. Then the interface's main-table routes go.
//!
//! Like the reference, ADD and DEL hold an `flock` on the netns file, so concurrent sbr
//! calls (ours or Go's) for one container pick distinct tables.
//!
//! Differences from the reference, on purpose:
//! - DEL succeeds when the netns is gone (the reference fails, and creates an empty
//!   file at the netns path: it opens it with O_CREAT to lock it; we never create it);
//! - the lock wait is bounded (10 s, then code 11);
//! - a failed ADD removes the rules and routes it added and puts back the routes it
//!   deleted;
//! - `table` must be a positive 32-bit id (code 7);
//! - CHECK checks that each IP has its rule (the reference's CHECK does nothing);
//! - a table that already holds routes (of any table user) is skipped like one a rule
//!   points to; the reference lists main-table routes only, so it puts the container's
//!   routes beside someone else's in such a table.

use anyhow::{anyhow, Context, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::{value, CniResult, IpConfig};
use cnibox::error::{cni_err, Code};
use cnibox::l3::Rollback;
use cnibox::netlink::route::RT_TABLE_MAIN;
use cnibox::netlink::rule::Rule;
use cnibox::netlink::{is_errno, LinkId, Nl, RouteSpec};
use cnibox::netns::Netns;
use ipnet::IpNet;
use serde::Deserialize;
use std::fs::File;
use std::time::{Duration, Instant};

pub const APPLET: Applet = Applet {
    name: "sbr",
    about: "source-based routing tables and rules for a container interface (chained)",
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

const FIRST_TABLE: u32 = 100;
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConf {
    table: Option<i64>,
}

fn parse(ctx: &Ctx) -> Result<Option<u32>> {
    let raw: RawConf = ctx.decode()?;
    match raw.table {
        None => Ok(None),
        Some(t) => match u32::try_from(t) {
            Ok(t) if t > 0 => Ok(Some(t)),
            _ => Err(value::invalid(
                "table",
                t,
                "is not a routing table id (1..4294967295)",
            )),
        },
    }
}

/// The prevResult IPs of `ifname`: those without an interface index, or whose
/// interface has that name (the reference's selection).
fn ips_of(prev: &CniResult, ifname: &str) -> Result<Vec<IpConfig>> {
    if prev.ips.is_empty() {
        return Err(cni_err(
            Code::InvalidConfig,
            format!("No IP addresses supplied on interface: {ifname}"),
        ));
    }
    Ok(prev
        .ips
        .iter()
        .filter(|ip| match ip.interface {
            None => true,
            Some(i) => prev.interfaces.get(i).is_none_or(|f| f.name == ifname),
        })
        .cloned()
        .collect())
}

/// An exclusive `flock` on the netns file (the reference's lock), polled with a
/// deadline. The file is opened read-only: it is never created.
fn lock_netns(path: &str) -> Result<File> {
    let f = File::open(path).with_context(|| format!("failed to open {path} to lock it"))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("failed to lock {path}"))
            }
        }
        if Instant::now() >= deadline {
            return Err(cni_err(
                Code::TryAgainLater,
                format!(
                    "timed out waiting for the lock on {path} (held for more than {} s)",
                    LOCK_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn host_net(ip: &IpConfig) -> IpNet {
    let a = ip.address.addr();
    let len = if a.is_ipv4() { 32 } else { 128 };
    IpNet::new(a, len).unwrap_or(ip.address)
}

fn next_free(rules: &[Rule], routes: &[RouteSpec], mut t: u32) -> u32 {
    while rules.iter().any(|r| r.table == t) || routes.iter().any(|r| r.table == t) {
        t += 1;
    }
    t
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let table = parse(ctx)?;
    let prev = ctx.prev_result()?.ok_or_else(|| {
        cni_err(
            Code::InvalidConfig,
            "This plugin must be called as chained plugin (\"prevResult\" is missing)",
        )
    })?;
    let ips = ips_of(&prev, &ctx.ifname)?;
    let ns = Netns::open(&ctx.netns)?;
    let _lock = lock_netns(&ctx.netns)?;
    let nl = Nl::open_in(&ns)?;
    Rollback::guard(|undo| {
        if let Some(t) = table {
            for ip in &ips {
                let rule = Rule::from_src(host_net(ip), t);
                nl.add_rule(&rule)?;
                let n = &nl;
                undo.push("delete a rule", move || n.del_rule(&rule));
            }
            return Ok(());
        }
        let link = nl
            .link_must(LinkId::Name(&ctx.ifname))
            .with_context(|| format!("Cannot find network interface {}", ctx.ifname))?;
        let rules = nl.rules()?;
        // Every table's routes, not only main's: a table that holds someone's routes is in
        // use even when no rule points to it yet (the reference means to skip those too,
        // but its route listing only ever sees the main table).
        let mut all = nl.routes(false, 0)?;
        all.extend(nl.routes(true, 0)?);
        let mut t = next_free(&rules, &all, FIRST_TABLE);
        let own: Vec<RouteSpec> = all
            .iter()
            .filter(|r| r.table == RT_TABLE_MAIN && r.oif == link.index)
            .cloned()
            .collect();
        for ip in &ips {
            let rule = Rule::from_src(host_net(ip), t);
            nl.add_rule(&rule).context("Failed to add rule")?;
            let n = &nl;
            undo.push("delete a rule", move || n.del_rule(&rule));
            if let Some(gw) = ip.gateway {
                let any = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                let mut r = RouteSpec::new(any.parse()?, Some(gw), link.index);
                r.table = t;
                nl.add_route(&r)
                    .with_context(|| format!("Failed to add default route to {gw}"))?;
                undo.push("delete a default route", move || n.del_route(&r));
            }
            for r in &own {
                let in_subnet = |a: Option<std::net::IpAddr>| {
                    a.is_some_and(|a| ip.address.trunc().contains(&a))
                };
                if in_subnet(r.src) || in_subnet(r.gw) || (r.src.is_none() && r.gw.is_none()) {
                    let mut copy = r.clone();
                    copy.table = t;
                    nl.replace_route(&copy).context("Failed to readd route")?;
                    undo.push("delete a copied route", move || n.del_route(&copy));
                }
            }
            t = next_free(&rules, &all, t + 1);
        }
        for r in &own {
            match nl.del_route(r) {
                Ok(()) => {}
                // gone with an earlier one (an IPv6 route the kernel merged)
                Err(e) if is_errno(&e, libc::ESRCH) => continue,
                Err(e) => return Err(e).context("Failed to delete route"),
            }
            let n = &nl;
            let r = r.clone();
            undo.push("put back a main-table route", move || n.add_route(&r));
        }
        Ok(())
    })?;
    let mut res = prev;
    res.cni_version = ctx.version().to_string();
    Ok(res)
}

/// DEL: every rule (of `table`, when configured) whose source is one of the interface's
/// addresses. Nothing to do when the netns or the interface is gone; the config is read
/// only for `table` (an invalid one means "any table").
fn del(ctx: &Ctx) -> Result<()> {
    let table = parse(ctx).ok().flatten();
    let Some(ns) = Netns::open_if_present(&ctx.netns)? else {
        return Ok(());
    };
    let _lock = lock_netns(&ctx.netns)?;
    let nl = Nl::open_in(&ns)?;
    let rules = nl.rules()?;
    let Some(link) = nl.link(LinkId::Name(&ctx.ifname))? else {
        return Ok(());
    };
    let addrs = nl.addrs(link.index, None)?;
    let mut last = Ok(());
    for rule in rules {
        if table.is_some_and(|t| rule.table != t) {
            continue;
        }
        let Some(src) = rule.src else { continue };
        if addrs.iter().any(|a| a.net.addr() == src.addr()) {
            match nl.del_rule(&rule) {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::ENOENT) => {}
                Err(e) => last = Err(anyhow!("Failed to delete rule {e:#}")),
            }
        }
    }
    last
}

/// CHECK: each of the interface's prevResult IPs has its source rule (in `table`,
/// when configured).
fn check(ctx: &Ctx) -> Result<()> {
    let table = parse(ctx)?;
    let prev = ctx.prev_result_required()?;
    let ips = ips_of(&prev, &ctx.ifname)?;
    let ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open_in(&ns)?;
    let rules = nl.rules()?;
    for ip in &ips {
        let want = host_net(ip);
        let found = rules
            .iter()
            .any(|r| r.src == Some(want) && table.is_none_or(|t| r.table == t));
        if !found {
            return Err(anyhow!("no source rule for {want} on {}", ctx.ifname));
        }
    }
    Ok(())
}
