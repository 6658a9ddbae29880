//! CHECK validations shared by the main plugins (the reference's §2.0.7 helpers).

use crate::cni::{CniResult, IpConfig, Route};
use crate::netlink::{Link, LinkId, Nl};
use anyhow::{anyhow, bail, Result};

/// The prevResult interface called `ifname` whose sandbox is `netns`.
pub fn find_container_iface<'a>(
    prev: &'a CniResult,
    ifname: &str,
    netns: &str,
) -> Result<&'a crate::cni::Interface> {
    let iface = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname && !i.sandbox.is_empty())
        .ok_or_else(|| anyhow!("interface {ifname:?} not found in prevResult"))?;
    if iface.sandbox != netns {
        bail!(
            "Sandbox in prevResult {} doesn't match configured netns: {}",
            iface.sandbox,
            netns
        );
    }
    Ok(iface)
}

/// Every prevResult address must still be on `ifname`.
pub fn validate_ips(cont_nl: &Nl, ifname: &str, ips: &[IpConfig]) -> Result<()> {
    let link = cont_nl.link_must(LinkId::Name(ifname))?;
    let have = cont_nl.addrs(link.index, None)?;
    for ip in ips {
        if !have.iter().any(|a| a.net == ip.address) {
            bail!("Failed to match addr {} on interface {ifname}", ip.address);
        }
    }
    Ok(())
}

/// Every prevResult route must still exist: by destination, and gateway when given.
pub fn validate_routes(cont_nl: &Nl, routes: &[Route]) -> Result<()> {
    for r in routes {
        let v6 = r.dst.addr().is_ipv6();
        let table = r.table.and_then(|t| u32::try_from(t).ok()).unwrap_or(0);
        let have = cont_nl.routes(v6, table)?;
        let found = have
            .iter()
            .any(|k| k.dst.trunc() == r.dst.trunc() && (r.gw.is_none() || k.gw == r.gw));
        if !found {
            match r.gw {
                Some(gw) => bail!("Failed to match route {} via {gw}", r.dst),
                None => bail!("Failed to match route {}", r.dst),
            }
        }
    }
    Ok(())
}

/// The container interface must still be a veth with the recorded MAC.
pub fn validate_cont_veth(cont_nl: &Nl, iface: &crate::cni::Interface) -> Result<Link> {
    let link = cont_nl
        .link(LinkId::Name(&iface.name))?
        .ok_or_else(|| anyhow!("Container interface {} not found", iface.name))?;
    if link.kind != "veth" {
        bail!("Error: Container interface {} not of type veth", link.name);
    }
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&link.mac) {
        bail!(
            "Interface {} Mac {} doesn't match: {}",
            iface.name,
            iface.mac,
            link.mac
        );
    }
    Ok(link)
}
