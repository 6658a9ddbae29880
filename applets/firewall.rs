//! firewall: a chained meta plugin that lets forwarded traffic reach and leave the
//! container's addresses (prevResult `ips`), gives the admin a chain that overrides
//! it, and optionally isolates bridges from each other (`ingressPolicy`). prevResult
//! passes through unchanged. Rule shapes and names: `cnibox::fw::firewall`.
//!
//! Keys: `backend` (`iptables`, `nftables`; unset: iptables if its tools are installed
//! for the families used, else nftables), `iptablesAdminChainName` (default
//! `CNI-ADMIN`; the admin chain in both backends), `ingressPolicy` (`open`,
//! `same-bridge`, `isolated`), `firewalldZone` (accepted and ignored).
//!
//! Differences from the reference, on purpose (README "Deviations"):
//! - an nftables backend (table `inet cni_firewall`) for hosts without iptables, where
//!   the reference fails; the isolation rules live there too;
//! - `backend: "firewalld"` is refused with code 7 (not supported); an unknown backend,
//!   an invalid admin chain name or bridge name is refused with code 7 before anything
//!   changes (the reference falls back to auto, or fails half-way in iptables);
//! - parallel ADDs are race-free (16 at once: one `CNI-FORWARD`, one jump to it, one
//!   copy of each isolation rule); Debian's 1.1.1 fails some of them (issue 17) or
//!   leaves several `FORWARD -j CNI-FORWARD` (seen here);
//! - an ADD is all or nothing: the reference leaves its forwarding rules when the
//!   ingress policy fails, and the IPv4 rules when IPv6 fails;
//! - only the iptables families the addresses use are needed (the reference needs both
//!   iptables and ip6tables for an IPv4-only container);
//! - DEL without prevResult still removes the rules: the nftables ones by their comment,
//!   the iptables ones by the addresses still on `CNI_IFNAME` (the reference removes
//!   nothing); DEL never fails on config values ADD would refuse;
//! - CHECK does not create the chains it checks (the reference does), and also checks
//!   the bridge's isolation rules when a policy asks for them;
//! - GC (spec 1.1) removes nftables rules of attachments that are not valid (the
//!   iptables rules are the reference's and carry only an address: nothing to go by).

use anyhow::Result;
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin};
use cnibox::cni::value;
use cnibox::cni::CniResult;
use cnibox::error::{cni_err, Code};
use cnibox::fw::firewall::{self, Attachment, Backend, Policy, Setup};
use cnibox::netlink::{LinkId, Nl};
use cnibox::netns::Netns;
use serde::Deserialize;
use std::net::IpAddr;

pub const APPLET: Applet = Applet {
    name: "firewall",
    about: "allow forwarding to/from a container, admin chain, bridge isolation (chained)",
    kind: Kind::Plugin(Plugin {
        // like the reference: CHECK-era versions only
        versions: &["0.4.0", "1.0.0", "1.1.0"],
        cni_args: None,
        add,
        del,
        check,
        gc: Some(gc),
        status: None,
    }),
};

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConf {
    backend: String,
    #[serde(rename = "iptablesAdminChainName")]
    admin_chain: String,
    #[serde(rename = "ingressPolicy")]
    ingress_policy: String,
}

/// The validated config.
struct Conf {
    /// `None`: choose by what is installed.
    backend: Option<Backend>,
    admin_chain: String,
    policy: Policy,
}

fn load(ctx: &Ctx) -> Result<Conf> {
    let raw: RawConf = ctx.decode()?;
    let backend =
        match raw.backend.as_str() {
            "" => None,
            "iptables" => Some(Backend::Iptables),
            "nftables" => Some(Backend::Nftables),
            "firewalld" => return Err(value::invalid(
                "backend",
                "\"firewalld\"",
                "is not supported by cnibox (use \"iptables\" or \"nftables\", or leave it unset)",
            )),
            other => {
                return Err(value::invalid(
                    "backend",
                    format!("{other:?}"),
                    "is not a backend (\"iptables\" or \"nftables\")",
                ))
            }
        };
    let policy = Policy::parse(&raw.ingress_policy).ok_or_else(|| {
        value::invalid(
            "ingressPolicy",
            format!("{:?}", raw.ingress_policy),
            "is not an ingress policy (\"open\", \"same-bridge\" or \"isolated\")",
        )
    })?;
    Ok(Conf {
        backend,
        admin_chain: admin_chain(&raw.admin_chain)?,
        policy,
    })
}

/// `iptablesAdminChainName`: what iptables (and an iptables-restore script) accepts,
/// and not a chain of ours or a built-in (a jump to CNI-FORWARD from CNI-FORWARD is a
/// loop the kernel refuses half-way through).
fn admin_chain(v: &str) -> Result<String> {
    const KEY: &str = "iptablesAdminChainName";
    if v.is_empty() {
        return Ok(firewall::DEFAULT_ADMIN_CHAIN.to_string());
    }
    let why = if v.len() > 28 {
        "is longer than 28 characters (iptables' limit)"
    } else if v.starts_with(['-', '!']) {
        "starts with '-' or '!'"
    } else if !v
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\'))
    {
        "may only hold printable ASCII without spaces or quotes"
    } else if firewall::RESERVED_CHAINS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(v))
    {
        "is a built-in chain, a target or a chain of this plugin"
    } else {
        return Ok(v.to_string());
    };
    Err(value::invalid(KEY, format!("{v:?}"), why))
}

/// What ADD sets up and CHECK checks, from the config and prevResult; every refusal
/// happens here, before anything changes.
fn setup<'a>(ctx: &'a Ctx, c: &Conf, prev: &CniResult) -> Result<Setup<'a>> {
    let bridge = if c.policy == Policy::Open {
        None
    } else {
        let Some(first) = prev.interfaces.first() else {
            return Err(cni_err(
                Code::InvalidConfig,
                format!(
                    "interface needs to be set for ingress policy {:?}, make sure to chain \"firewall\" plugin with \"bridge\"",
                    c.policy.name()
                ),
            ));
        };
        value::ifname("prevResult.interfaces[0].name", &first.name)?;
        Some(first.name.clone())
    };
    Ok(Setup {
        att: Attachment {
            net: &ctx.conf.name,
            ifname: &ctx.ifname,
            cid: &ctx.container_id,
        },
        ips: prev.ips.iter().map(|i| i.address.addr()).collect(),
        admin_chain: c.admin_chain.clone(),
        policy: c.policy,
        bridge,
    })
}

/// The configured backend, or iptables when its tools are installed for the families
/// in use, else nftables (spoken natively: no tool needed).
fn backend(c: &Conf, ips: &[IpAddr]) -> Backend {
    c.backend.unwrap_or(if firewall::have_iptables(ips) {
        Backend::Iptables
    } else {
        Backend::Nftables
    })
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let c = load(ctx)?;
    let mut prev = ctx.prev_result_required()?;
    let s = setup(ctx, &c, &prev)?;
    firewall::add(&s, backend(&c, &s.ips))?;
    prev.cni_version = ctx.version().to_string();
    Ok(prev)
}

fn check(ctx: &Ctx) -> Result<()> {
    let c = load(ctx)?;
    let prev = ctx.prev_result_required()?;
    let s = setup(ctx, &c, &prev)?;
    firewall::check(&s, backend(&c, &s.ips))
}

/// DEL reads no config key: the rules are found whatever the config says now, so a
/// config ADD would refuse never keeps them in place.
fn del(ctx: &Ctx) -> Result<()> {
    let att = Attachment {
        net: &ctx.conf.name,
        ifname: &ctx.ifname,
        cid: &ctx.container_id,
    };
    let ips = match ctx.prev_result() {
        Ok(Some(prev)) => prev.ips.iter().map(|i| i.address.addr()).collect(),
        Ok(None) => addresses_on_interface(ctx),
        Err(e) => {
            eprintln!("firewall: ignoring an unreadable prevResult: {e:#}");
            addresses_on_interface(ctx)
        }
    };
    firewall::del(&att, &ips)
}

/// Without prevResult the iptables rules (the reference's, which carry nothing but an
/// address) are found by the addresses still on the container's interface: in a chain
/// DEL runs before the interface plugin's, so they usually are. Best effort: a netns
/// or interface that is gone just means there is nothing to go by.
fn addresses_on_interface(ctx: &Ctx) -> Vec<IpAddr> {
    let r = (|| -> Result<Vec<IpAddr>> {
        let Some(ns) = Netns::open_if_present(&ctx.netns)? else {
            return Ok(Vec::new());
        };
        let nl = Nl::open_in(&ns)?;
        let Some(link) = nl.link(LinkId::Name(&ctx.ifname))? else {
            return Ok(Vec::new());
        };
        Ok(nl
            .addrs(link.index, None)?
            .into_iter()
            .map(|a| a.net.addr())
            // never in a CNI result: the kernel's own link-local addresses
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .collect())
    })();
    r.unwrap_or_else(|e| {
        eprintln!(
            "firewall: cannot read the addresses of {}: {e:#}",
            ctx.ifname
        );
        Vec::new()
    })
}

fn gc(ctx: &Ctx) -> Result<()> {
    firewall::gc(&ctx.conf.name, &ctx.valid_attachments()?)
}
