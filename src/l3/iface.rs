//! Configuring an interface from an IPAM result (the reference's ConfigureIface),
//! forwarding, and re-announcing addresses once the host side forwards.

use crate::cni::{CniResult, IpConfig};
use crate::netlink::addr::IFA_F_NODAD;
use crate::netlink::{Link, LinkId, Nl, RouteSpec};
use crate::netns::Netns;
use crate::sysctl;
use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The first gateway of each family among the IPs assigned to interface `idx`.
fn gateways(res: &CniResult, idx: Option<usize>) -> (Option<IpAddr>, Option<IpAddr>) {
    let mut v4 = None;
    let mut v6 = None;
    for ip in res
        .ips
        .iter()
        .filter(|ip| idx.is_none() || ip.interface == idx)
    {
        if let Some(gw) = ip.gateway {
            if gw.is_ipv4() && v4.is_none() {
                v4 = Some(gw);
            } else if gw.is_ipv6() && v6.is_none() {
                v6 = Some(gw);
            }
        }
    }
    (v4, v6)
}

/// Apply an IPAM result to `ifname` inside the container, as the reference's
/// ConfigureIface does: addresses (IPs whose `interface` points at `ifname`), link up,
/// wait for IPv6 DAD when a v6 gateway is used, then routes (gateway defaulting to the
/// family's first gateway). Gratuitous ARP / unsolicited NA are switched on first, so a
/// reused address refreshes stale neighbour caches when the link comes up.
pub fn configure_iface(cont_nl: &Nl, cont_ns: &Netns, ifname: &str, res: &CniResult) -> Result<()> {
    let idx = res
        .interfaces
        .iter()
        .position(|i| i.name == ifname)
        .ok_or_else(|| {
            anyhow!("failed to configure interface {ifname:?}: no such interface in the result")
        })?;
    let link = cont_nl.link_must(LinkId::Name(ifname))?;
    let mine: Vec<&IpConfig> = res
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .collect();
    if res
        .ips
        .iter()
        .any(|ip| ip.interface.is_some_and(|i| i >= res.interfaces.len()))
    {
        bail!("failed to add IP addr to {ifname:?}: invalid interface index");
    }
    let has_v6 = mine.iter().any(|ip| ip.address.addr().is_ipv6());
    cont_ns.run(|| {
        let _ = sysctl::set(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
        if has_v6 {
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1");
            for dev in ["lo", ifname] {
                sysctl::ensure(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "0")?;
            }
            sysctl::set(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1")?;
        }
        Ok(())
    })?;
    for ip in &mine {
        cont_nl
            .add_addr(link.index, &ip.address, 0)
            .with_context(|| format!("failed to add IP addr {} to {ifname:?}", ip.address))?;
    }
    cont_nl
        .set_up(link.index, true)
        .with_context(|| format!("failed to set {ifname:?} UP"))?;
    let (gw4, gw6) = gateways(res, Some(idx));
    if gw6.is_some() {
        wait_dad(cont_nl, &link)?;
    }
    for r in &res.routes {
        let v4 = r.dst.addr().is_ipv4();
        let gw = r.gw.or(if v4 { gw4 } else { gw6 });
        let mut spec = RouteSpec::new(r.dst, gw, link.index);
        spec.priority = u32::try_from(r.priority).unwrap_or(0);
        if let Some(t) = r.table {
            spec.table = u32::try_from(t).map_err(|_| anyhow!("invalid route table {t}"))?;
        }
        if let Some(s) = r.scope {
            spec.scope = u8::try_from(s).map_err(|_| anyhow!("invalid route scope {s}"))?;
        }
        cont_nl.add_route(&spec)?;
    }
    Ok(())
}

/// Wait (at most 5 s) until no IPv6 address of `link` is tentative; a failed DAD is an
/// error. If still tentative at the deadline, only an operationally up link is an error.
fn wait_dad(nl: &Nl, link: &Link) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let addrs = nl.addrs(link.index, Some(true))?;
        if let Some(a) = addrs.iter().find(|a| a.dad_failed()) {
            bail!(
                "failed to add IPv6 address {} to {:?}: duplicate address detected",
                a.net,
                link.name
            );
        }
        if !addrs
            .iter()
            .any(|a| a.is_tentative() && a.flags & IFA_F_NODAD == 0)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let now = nl.link_must(LinkId::Index(link.index))?;
            if now.operstate == 6 {
                return Err(crate::error::cni_err(
                    crate::error::Code::TryAgainLater,
                    format!(
                        "timed out after 5s waiting for IPv6 duplicate address detection on {:?}",
                        link.name
                    ),
                ));
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Turn on forwarding for the families present in `ips` (written only if off).
pub fn enable_forwarding(ips: &[IpConfig]) -> Result<()> {
    if ips.iter().any(|i| i.address.addr().is_ipv4()) {
        sysctl::ensure("net/ipv4/ip_forward", "1")?;
    }
    if ips.iter().any(|i| i.address.addr().is_ipv6()) {
        sysctl::ensure("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Network address + 1: the default gateway of a subnet.
pub fn first_host(net: &IpNet) -> IpAddr {
    match net.trunc().addr() {
        IpAddr::V4(a) => IpAddr::from(u32::from(a).wrapping_add(1).to_be_bytes()),
        IpAddr::V6(a) => IpAddr::from(u128::from(a).wrapping_add(1).to_be_bytes()),
    }
}

/// Announce the container interface's addresses again, now that the host side
/// forwards: re-setting the interface's own MAC makes the kernel send a gratuitous ARP
/// (`arp_notify`) and an unsolicited neighbour advertisement (`ndisc_notify`), both set
/// by [`configure_iface`]. The kernel's announcement at link-up races the bridge port
/// coming up and is often lost; without this, a neighbour holding the MAC of a previous
/// owner of a reused address keeps using it. (Sending our own ARP through a packet
/// socket would cost an RCU grace period, ~10 ms, when the socket closes.)
pub fn announce(cont_nl: &Nl, index: u32, mac: &str) -> Result<()> {
    cont_nl.set_mac(index, crate::netlink::link::parse_mac(mac)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_hosts() {
        assert_eq!(
            first_host(&"10.1.2.77/24".parse().unwrap()),
            "10.1.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            first_host(&"fd00:1::9/64".parse().unwrap()),
            "fd00:1::1".parse::<IpAddr>().unwrap()
        );
    }
}
