//! host-local (IPAM): addresses from configured ranges, state in
//! `<dataDir>/<network>/`, shared with (and locked against) the Go plugin.
//!
//! ADD: one address per range set (runtime `ipRanges` first, then the legacy top-level
//! range, then `ranges`), honouring requested addresses from `CNI_ARGS IP=`,
//! `args.cni.ips` and `runtimeConfig.ips`; routes and `resolvConf` DNS are added to the
//! result. DEL releases the attachment's addresses; CHECK finds its reservation; GC
//! (not in the reference) releases every attachment not listed as valid.
//!
//! Not in the reference either: a range found exhausted first reclaims the reservations
//! that outlived their containers, those proved to be from an earlier boot of the
//! kernel (boot records beside the reservations; never one of the current boot or of a
//! netns that still exists). `"reclaimStale": false` turns that off.

use anyhow::{anyhow, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::{CniResult, Dns, IpConfig};
use cnibox::error::{cni_err, Code};
use cnibox::ipam::alloc::{self, AddOptions};
use cnibox::ipam::conf::{parse_requested, parse_routes, string_list};
use cnibox::ipam::range::{build_range_sets, config_err, RangeConf, RangeSet};
use cnibox::ipam::store::{Store, DEFAULT_DATA_DIR};
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;

pub const APPLET: Applet = Applet {
    name: "host-local",
    about: "IPAM: allocate addresses from ranges, state on the local disk",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: Some(&["IP"]),
        add,
        del,
        check,
        gc: Some(gc),
        status: None,
    }),
};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ipam {
    // The legacy single range sits in the ipam object itself. (Not `#[serde(flatten)]`:
    // serde decodes flattened fields as a plain map, which would bypass Go-style
    // case-insensitive key matching.)
    subnet: String,
    #[serde(rename = "rangeStart")]
    range_start: String,
    #[serde(rename = "rangeEnd")]
    range_end: String,
    gateway: String,
    ranges: Option<Vec<Vec<RangeConf>>>,
    routes: Vec<Value>,
    #[serde(rename = "dataDir")]
    data_dir: String,
    #[serde(rename = "resolvConf")]
    resolv_conf: String,
    #[serde(rename = "reclaimStale")]
    reclaim_stale: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conf {
    ipam: Option<Ipam>,
}

fn ipam(ctx: &Ctx) -> Result<Ipam> {
    let conf: Conf = ctx.decode()?;
    conf.ipam
        .ok_or_else(|| cni_err(Code::InvalidConfig, "IPAM config missing 'ipam' key"))
}

fn store(ctx: &Ctx, ipam: &Ipam) -> Result<Store> {
    let dir = if ipam.data_dir.is_empty() {
        PathBuf::from(DEFAULT_DATA_DIR)
    } else {
        PathBuf::from(&ipam.data_dir)
    };
    Store::open(&dir, &ctx.conf.name)
}

fn range_sets(ctx: &Ctx, ipam: &Ipam) -> Result<Vec<RangeSet>> {
    let runtime: Vec<Vec<RangeConf>> = match ctx.runtime_config("ipRanges") {
        Some(v) => cnibox::cni::decode::from_value(v.clone())
            .map_err(|e| cni_err(Code::Decode, format!("runtimeConfig.ipRanges: {e}")))?,
        None => vec![],
    };
    let legacy = RangeConf {
        subnet: ipam.subnet.clone(),
        range_start: ipam.range_start.clone(),
        range_end: ipam.range_end.clone(),
        gateway: ipam.gateway.clone(),
    };
    build_range_sets(
        &runtime,
        Some(&legacy),
        ipam.ranges.as_deref(),
        ctx.version(),
    )
}

/// Requested addresses from all three sources, merged (the reference does not let
/// one override another here). Each is "ip" or "ip/len" (the prefix is ignored). A bad
/// `CNI_ARGS` value is an environment error (code 4: `CNI_ARGS` is how the runtime
/// called us); a bad config value is a config error (code 7).
fn requested(ctx: &Ctx) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    if let Some(s) = ctx.cni_args.get("IP").filter(|s| !s.is_empty()) {
        let ip = parse_requested(s).ok_or_else(|| {
            cni_err(
                Code::InvalidEnv,
                format!("CNI_ARGS: \"IP\": {s:?} is not an IP address"),
            )
        })?;
        out.push(ip);
    }
    for (loc, v) in [
        ("args.cni.ips", ctx.args_cni("ips")),
        ("runtimeConfig.ips", ctx.runtime_config("ips")),
    ] {
        let Some(v) = v else { continue };
        for (i, s) in string_list(v, loc)?.into_iter().enumerate() {
            let ip = parse_requested(s).ok_or_else(|| {
                config_err(
                    &format!("{loc}[{i}]"),
                    format!("{s:?} is not an IP address"),
                )
            })?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

/// resolv.conf as result DNS: nameserver (first word), domain (last wins), search and
/// options (appended); blank lines and `#`/`;` comments skipped.
fn parse_resolv_conf(path: &str) -> Result<Dns> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("failed to read resolvConf {path}: {e}"))?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(str::to_string)),
            Some("domain") => dns.domain = words.next().unwrap_or_default().to_string(),
            Some("search") => dns.search.extend(words.map(str::to_string)),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    Ok(dns)
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    // Everything the config says is checked before the store is touched.
    let ipam = ipam(ctx)?;
    let sets = range_sets(ctx, &ipam)?;
    let routes = parse_routes(&ipam.routes, "ipam.routes")?;
    let requested = requested(ctx)?;
    let dns = if ipam.resolv_conf.is_empty() {
        Dns::default()
    } else {
        parse_resolv_conf(&ipam.resolv_conf)?
    };
    let allocs = alloc::allocate(
        &store(ctx, &ipam)?,
        &sets,
        &ctx.container_id,
        &ctx.ifname,
        requested,
        &AddOptions {
            netns: Some(ctx.netns.clone()),
            reclaim_stale: ipam.reclaim_stale.unwrap_or(true),
        },
    )?;
    Ok(CniResult {
        cni_version: ctx.version().to_string(),
        interfaces: vec![],
        ips: allocs
            .into_iter()
            .map(|a| IpConfig {
                interface: None,
                address: a.address,
                gateway: Some(a.gateway),
            })
            .collect(),
        routes,
        dns,
    })
}

fn del(ctx: &Ctx) -> Result<()> {
    let ipam = ipam(ctx)?;
    alloc::release(&store(ctx, &ipam)?, &ctx.container_id, &ctx.ifname)
}

fn check(ctx: &Ctx) -> Result<()> {
    let ipam = ipam(ctx)?;
    alloc::check(&store(ctx, &ipam)?, &ctx.container_id, &ctx.ifname)
}

fn gc(ctx: &Ctx) -> Result<()> {
    let ipam = ipam(ctx)?;
    let valid = ctx.valid_attachments()?;
    alloc::gc(&store(ctx, &ipam)?, &valid).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let p = std::env::temp_dir().join(format!("cbx-resolv-{}", std::process::id()));
        std::fs::write(
            &p,
            "# comment\n; other comment\n\nnameserver 10.0.0.1\nnameserver 10.0.0.2 ignored\ndomain a.example\n\
             domain b.example\nsearch x.example y.example\nsearch z.example\noptions ndots:5 edns0\nsortlist 1.2.3.4\n",
        )
        .unwrap();
        let d = parse_resolv_conf(p.to_str().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        assert_eq!(d.nameservers, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(d.domain, "b.example", "the last domain wins");
        assert_eq!(d.search, ["x.example", "y.example", "z.example"]);
        assert_eq!(d.options, ["ndots:5", "edns0"]);
        assert!(parse_resolv_conf("/nonexistent/resolv.conf").is_err());
    }
}
