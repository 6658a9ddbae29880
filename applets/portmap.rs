//! portmap: a chained meta plugin that forwards host ports to the container
//! (`runtimeConfig.portMappings`, capability `portMappings`), with iptables or nftables
//! rules named and shaped exactly as the reference's (`cnibox::fw::portmap`).
//!
//! ADD validates the whole config first, picks the container addresses from prevResult
//! (per family the first one not tied to another interface), installs the rules (one
//! transaction per family, or one for both with nftables), deletes the conntrack
//! entries of UDP flows to the mapped host ports (over nfnetlink, no `conntrack`
//! process) so that a reused port does not keep a stale flow, and for IPv4 with `snat`
//! sets `route_localnet` on the host interface routing to the container, so that
//! 127.0.0.1:hostPort works. A failure undoes what was done. prevResult passes through.
//!
//! DEL removes the attachment's rules from both backends (found by name, no addresses
//! needed, so a vanished netns does not matter) and the UDP conntrack entries again.
//! It reads only the mappings' presence and ports, so a config ADD would refuse never
//! makes it fail. No mappings: ADD, DEL and CHECK touch nothing, as in the reference.
//!
//! Beyond the reference: CHECK compares every rule (not just counts), GC removes the
//! rules of attachments not in `cni.dev/valid-attachments` on both backends, and DEL
//! also clears conntrack entries; see `cnibox::fw::portmap` for the rule-level
//! differences.

use anyhow::{Context, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::CniResult;
use cnibox::fw::have;
use cnibox::fw::portmap::{self, Config, RawConf};
use cnibox::l3::Rollback;
use cnibox::netlink::conntrack;
use cnibox::sysctl;
use ipnet::IpNet;
use serde_json::Value;
use std::net::IpAddr;

pub const APPLET: Applet = Applet {
    name: "portmap",
    about: "forward host ports to the container, iptables or nftables (chained)",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: None,
        add,
        del,
        check,
        gc: Some(gc),
        status: None,
    }),
};

fn config(ctx: &Ctx) -> Result<Config> {
    let raw: RawConf = ctx.decode()?;
    Config::new(
        raw,
        &ctx.conf.name,
        &ctx.container_id,
        raw_backend_needs_probe(ctx) && have("iptables"),
    )
}

/// Only an unset `backend` needs to know whether iptables is installed.
fn raw_backend_needs_probe(ctx: &Ctx) -> bool {
    ctx.raw
        .as_object()
        .and_then(|o| cnibox::cni::decode::get_ci(o, "backend"))
        .is_none_or(Value::is_null)
}

/// The container's addresses the mappings forward to, at most one per family: the
/// first address of the family that is not tied to an interface, or is tied to
/// `ifname` inside a sandbox (the reference's choice).
fn container_addrs(prev: &CniResult, ifname: &str) -> Vec<IpNet> {
    let (mut v4, mut v6) = (None, None);
    for ip in &prev.ips {
        let is6 = ip.address.addr().is_ipv6();
        if (is6 && v6.is_some()) || (!is6 && v4.is_some()) {
            continue;
        }
        if let Some(i) = ip.interface.and_then(|idx| prev.interfaces.get(idx)) {
            if i.name != ifname || i.sandbox.is_empty() {
                continue;
            }
        }
        if is6 {
            v6 = Some(ip.address);
        } else {
            v4 = Some(ip.address);
        }
    }
    [v4, v6].into_iter().flatten().collect()
}

/// Delete the conntrack entries of UDP flows to `ports`; failures are reported on
/// stderr only (the reference logs them too): the mapping itself works.
fn flush_udp_conntrack(ports: &[u16], families: &[bool]) {
    for &v6 in families {
        for &port in ports {
            if let Err(e) = conntrack::delete_by_dst_port(v6, conntrack::IPPROTO_UDP, port) {
                eprintln!(
                    "portmap: failed to delete stale UDP conntrack entries for port {port}: {e:#}"
                );
            }
        }
    }
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let c = config(ctx)?;
    let mut prev = ctx.prev_result_required()?;
    prev.cni_version = ctx.version().to_string();
    if c.mappings.is_empty() {
        return Ok(prev);
    }
    let conts = container_addrs(&prev, &ctx.ifname);
    if conts.is_empty() {
        return Ok(prev);
    }
    Rollback::guard(|undo| {
        let applied = portmap::setup(&c, &conts)?;
        let c = &c;
        undo.push("remove the port mappings", move || {
            portmap::undo(c, &applied)
        });
        // After the rules, so that new packets of a flushed flow meet them.
        let families: Vec<bool> = conts.iter().map(|n| n.addr().is_ipv6()).collect();
        flush_udp_conntrack(&c.udp_ports(), &families);
        if c.snat {
            if let Some(IpAddr::V4(ip)) = conts.iter().map(|n| n.addr()).find(IpAddr::is_ipv4) {
                // 127.0.0.1 may then cross to the container (localhost to hostPort).
                if let Some(ifname) = portmap::routable_host_if(ip)? {
                    sysctl::ensure(&format!("net/ipv4/conf/{ifname}/route_localnet"), "1")
                        .context("unable to enable route_localnet")?;
                }
            }
        }
        Ok(prev)
    })
}

/// The UDP host ports of whatever mappings DEL can read; `None` when there are no
/// mappings at all (then DEL does nothing, like the reference).
fn del_udp_ports(ctx: &Ctx) -> Option<Vec<u16>> {
    let list = ctx.runtime_config("portMappings")?.as_array()?;
    if list.is_empty() {
        return None;
    }
    let mut ports: Vec<u16> = list
        .iter()
        .filter_map(Value::as_object)
        .filter(|m| {
            cnibox::cni::decode::get_ci(m, "protocol")
                .and_then(Value::as_str)
                .is_some_and(|p| p.eq_ignore_ascii_case("udp"))
        })
        .filter_map(|m| cnibox::cni::decode::get_ci(m, "hostPort")?.as_u64())
        .filter_map(|p| u16::try_from(p).ok().filter(|p| *p > 0))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

fn del(ctx: &Ctx) -> Result<()> {
    let Some(udp) = del_udp_ports(ctx) else {
        return Ok(());
    };
    portmap::teardown(&ctx.conf.name, &ctx.container_id)?;
    flush_udp_conntrack(&udp, &[false, true]);
    Ok(())
}

fn check(ctx: &Ctx) -> Result<()> {
    let c = config(ctx)?;
    let prev = ctx.prev_result_required()?;
    if c.mappings.is_empty() {
        return Ok(());
    }
    let conts = container_addrs(&prev, &ctx.ifname);
    portmap::check(&c, &conts)
}

/// GC (not in the reference): the rules of this network's attachments whose container
/// is not in `cni.dev/valid-attachments`, on both backends.
fn gc(ctx: &Ctx) -> Result<()> {
    let valid: Vec<String> = ctx
        .valid_attachments()?
        .into_iter()
        .map(|(cid, _)| cid)
        .collect();
    portmap::gc(&ctx.conf.name, &valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnibox::cni::types::{Interface, IpConfig};

    fn ip(a: &str, iface: Option<usize>) -> IpConfig {
        IpConfig {
            interface: iface,
            address: a.parse().unwrap(),
            gateway: None,
        }
    }

    #[test]
    fn container_addresses_like_the_reference() {
        let prev = CniResult {
            interfaces: vec![
                Interface::host("cni0", ""),
                Interface::host("veth1", ""),
                Interface::in_sandbox("eth0", "", "/run/netns/x"),
                Interface::host("eth0", ""), // same name, but not in a sandbox
            ],
            ips: vec![
                ip("10.0.0.9/24", Some(0)), // the bridge's: skipped
                ip("10.0.0.8/24", Some(3)), // eth0 outside a sandbox: skipped
                ip("10.0.0.2/24", Some(2)), // taken
                ip("10.0.0.3/24", Some(2)), // second of its family: skipped
                ip("fd00::2/64", None),     // no interface: taken
                ip("fd00::3/64", Some(2)),
            ],
            ..Default::default()
        };
        let got = container_addrs(&prev, "eth0");
        assert_eq!(
            got,
            vec![
                "10.0.0.2/24".parse::<IpNet>().unwrap(),
                "fd00::2/64".parse().unwrap()
            ]
        );
        // an index out of range is not "another interface"
        let prev = CniResult {
            ips: vec![ip("10.0.0.5/24", Some(7))],
            ..Default::default()
        };
        assert_eq!(container_addrs(&prev, "eth0").len(), 1);
        assert!(container_addrs(&CniResult::default(), "eth0").is_empty());
    }
}
