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
use cnibox::cni::types::{parse_route, version_at_least};
use cnibox::cni::{CniResult, Dns, IpConfig};
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

/// The effective addresses and the rest of the result, in the reference's priority.
fn load(ctx: &Ctx) -> Result<CniResult> {
    let conf: Conf = ctx.decode()?;
    let ipam = conf
        .ipam
        .ok_or_else(|| anyhow!("IPAM config missing 'ipam' key"))?;
    let mut ips: Vec<IpConfig> = Vec::new();
    for a in &ipam.addresses {
        let address: IpNet = a.address.parse().map_err(|_| {
            anyhow!(
                "the 'address' field is expected to be in CIDR notation, got: '{}'",
                a.address
            )
        })?;
        let gateway = if a.gateway.is_empty() {
            None
        } else {
            Some(
                a.gateway
                    .parse::<IpAddr>()
                    .map_err(|_| anyhow!("invalid gateway address: {}", a.gateway))?,
            )
        };
        ips.push(IpConfig {
            interface: None,
            address,
            gateway,
        });
    }
    let args = CniArgs::parse(&ctx.args, &["IP", "GATEWAY"])?;
    if let Some(list) = args.get("IP").filter(|s| !s.is_empty()) {
        for item in list.split(',') {
            let s = item.trim();
            let address: IpNet = s.parse().map_err(|_| {
                anyhow!("the 'ip' field is expected to be in CIDR notation, got: '{s}'")
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
            let gw: IpAddr = item
                .trim()
                .parse()
                .map_err(|_| anyhow!("invalid gateway address: {item}"))?;
            for ip in ips.iter_mut().filter(|ip| ip.address.contains(&gw)) {
                ip.gateway = Some(gw);
            }
        }
    }
    let replace = |list: &Value| -> Result<Vec<IpConfig>> {
        let items = list
            .as_array()
            .ok_or_else(|| anyhow!("'ips' must be a list"))?;
        items
            .iter()
            .map(|v| {
                let s = v.as_str().unwrap_or_default();
                let address: IpNet = s.parse().map_err(|_| {
                    anyhow!("an entry in the 'ips' field is NOT in CIDR notation, got: '{s}'")
                })?;
                Ok(IpConfig {
                    interface: None,
                    address,
                    gateway: None,
                })
            })
            .collect()
    };
    if let Some(list) = ctx
        .args_cni("ips")
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        ips = replace(list)?;
    }
    if let Some(list) = ctx
        .runtime_config("ips")
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        ips = replace(list)?;
    }
    let v4 = ips.iter().filter(|i| i.address.addr().is_ipv4()).count();
    if (v4 > 1 || ips.len() - v4 > 1) && !version_at_least(ctx.version(), "0.3.0").unwrap_or(false)
    {
        bail!(
            "CNI version {} does not support more than 1 address per family",
            ctx.version()
        );
    }
    let routes = ipam
        .routes
        .iter()
        .map(parse_route)
        .collect::<Result<Vec<_>>>()?;
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
