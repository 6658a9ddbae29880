//! static (IPAM): hand out the addresses, routes and DNS the config lists.
//!
//! Address sources, highest priority first: `runtimeConfig.ips` and `args.cni.ips`
//! replace the list; `CNI_ARGS` `IP=` (comma-separated) is appended to `ipam.addresses`,
//! and `GATEWAY=` sets the gateway of the addresses whose subnet holds it. There is no
//! state, so DEL has nothing to do. CHECK compares prevResult with the config and, unlike
//! the reference, also reports configured addresses missing from prevResult.

use anyhow::{anyhow, bail, Result};
use cnibox::cni::args::CniArgs;
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::types::version_at_least;
use cnibox::cni::{CniResult, Dns, IpConfig};
use cnibox::error::{cni_err, Code};
use cnibox::ipam::conf::{parse_routes, string_list};
use cnibox::ipam::range::config_err;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;

pub const APPLET: Applet = Applet {
    name: "static",
    about: "IPAM: fixed addresses, routes and DNS from the config",
    // CNI_ARGS are read by ADD and CHECK only: DEL has nothing to do, and must not fail.
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

#[derive(Deserialize, Default)]
#[serde(default)]
struct Address {
    address: String,
    gateway: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ipam {
    addresses: Vec<Address>,
    routes: Vec<Value>,
    dns: Dns,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conf {
    ipam: Option<Ipam>,
}

/// A CIDR-valued address entry (host bits kept, as the reference does).
fn cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok()
}

/// The effective addresses and the rest of the result, in the reference's priority.
/// Values that cannot be used are config errors (code 7) naming where they are, with
/// the reference's wording; bad `CNI_ARGS` values are environment errors (code 4).
fn load(ctx: &Ctx) -> Result<CniResult> {
    let conf: Conf = ctx.decode()?;
    let ipam = conf
        .ipam
        .ok_or_else(|| cni_err(Code::InvalidConfig, "IPAM config missing 'ipam' key"))?;
    let mut ips: Vec<IpConfig> = Vec::new();
    for (i, a) in ipam.addresses.iter().enumerate() {
        let loc = format!("ipam.addresses[{i}]");
        let address = cidr(&a.address).ok_or_else(|| {
            config_err(
                &loc,
                format!(
                    "the 'address' field is expected to be in CIDR notation, got: '{}'",
                    a.address
                ),
            )
        })?;
        let gateway = if a.gateway.is_empty() {
            None
        } else {
            Some(a.gateway.parse::<IpAddr>().map_err(|_| {
                config_err(
                    &loc,
                    format!("\"gateway\": {:?} is not an IP address", a.gateway),
                )
            })?)
        };
        ips.push(IpConfig {
            interface: None,
            address,
            gateway,
        });
    }
    let args = CniArgs::parse(&ctx.args, &["IP", "GATEWAY"])?;
    let env_err = |msg: String| cni_err(Code::InvalidEnv, format!("CNI_ARGS: {msg}"));
    if let Some(list) = args.get("IP").filter(|s| !s.is_empty()) {
        for item in list.split(',') {
            let s = item.trim();
            let address = cidr(s).ok_or_else(|| {
                env_err(format!(
                    "the 'ip' field is expected to be in CIDR notation, got: '{s}'"
                ))
            })?;
            ips.push(IpConfig {
                interface: None,
                address,
                gateway: None,
            });
        }
    }
    if let Some(list) = args.get("GATEWAY").filter(|s| !s.is_empty()) {
        for item in list.split(',') {
            let item = item.trim();
            let gw: IpAddr = item.parse().map_err(|_| {
                env_err(format!(
                    "\"GATEWAY\": invalid gateway address: {item:?} is not an IP address"
                ))
            })?;
            for ip in ips.iter_mut().filter(|ip| ip.address.contains(&gw)) {
                ip.gateway = Some(gw);
            }
        }
    }
    let replace = |list: &Value, loc: &str| -> Result<Vec<IpConfig>> {
        string_list(list, loc)?
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let address = cidr(s).ok_or_else(|| {
                    config_err(
                        &format!("{loc}[{i}]"),
                        format!("an entry in the 'ips' field is NOT in CIDR notation, got: '{s}'"),
                    )
                })?;
                Ok(IpConfig {
                    interface: None,
                    address,
                    gateway: None,
                })
            })
            .collect()
    };
    // An empty list replaces nothing (the reference checks for a non-empty list).
    if let Some(list) = ctx
        .args_cni("ips")
        .filter(|v| !v.as_array().is_some_and(|a| a.is_empty()))
    {
        ips = replace(list, "args.cni.ips")?;
    }
    if let Some(list) = ctx
        .runtime_config("ips")
        .filter(|v| !v.as_array().is_some_and(|a| a.is_empty()))
    {
        ips = replace(list, "runtimeConfig.ips")?;
    }
    let v4 = ips.iter().filter(|i| i.address.addr().is_ipv4()).count();
    if (v4 > 1 || ips.len() - v4 > 1) && !version_at_least(ctx.version(), "0.3.0").unwrap_or(false)
    {
        return Err(cni_err(
            Code::InvalidConfig,
            format!(
                "CNI version {} does not support more than 1 address per family",
                ctx.version()
            ),
        ));
    }
    let routes = parse_routes(&ipam.routes, "ipam.routes")?;
    Ok(CniResult {
        cni_version: ctx.version().to_string(),
        interfaces: vec![],
        ips,
        routes,
        dns: ipam.dns,
    })
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    load(ctx)
}

fn del(_: &Ctx) -> Result<()> {
    Ok(())
}

fn check(ctx: &Ctx) -> Result<()> {
    let want = load(ctx)?;
    let prev = ctx
        .prev_result()?
        .ok_or_else(|| anyhow!("Required prevResult missing"))?;
    for w in &want.ips {
        match prev
            .ips
            .iter()
            .find(|p| p.address.addr() == w.address.addr())
        {
            Some(p) if w.gateway.is_none() || w.gateway == p.gateway => {}
            _ => bail!(
                "static: Failed to match addr {} on interface {}",
                w.address.addr(),
                ctx.ifname
            ),
        }
    }
    Ok(())
}
