//! Plumbing shared by the interface-creating plugins (bridge, ptp, and later macvlan,
//! ipvlan, vlan, host-device, dummy, tap): veth pairs across namespaces, applying an
//! IPAM result to an interface, forwarding switches, and the CHECK validations.

use crate::cni::{CniResult, IpConfig, Route};
use crate::netlink::addr::IFA_F_NODAD;
use crate::netlink::link::{NewLink, Peer};
use crate::netlink::{Link, LinkId, Nl, RouteSpec};
use crate::netns::Netns;
use crate::sysctl;
use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// `veth` + 8 random hex digits: NetworkManager ignores `veth*`, and the reference uses
/// the same form.
pub fn random_veth_name() -> String {
    let mut b = [0u8; 4];
    // getrandom(2) on a 4-byte buffer does not block or fail short once the pool is up.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 4 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b = (t ^ std::process::id()).to_ne_bytes();
    }
    format!("veth{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// Both ends of a new veth pair, as seen in their own namespaces.
pub struct VethPair {
    pub host: Link,
    pub cont: Link,
}

/// Create a veth pair whose container end is `ifname` (made directly in the container,
/// so it never clashes with a host link of the same name) and whose host end lands in
/// the host netns under `host_name` or a random `veth*` name. Both ends get `mtu`;
/// the container end gets `mac` if given. The host end is set up, with accept_ra off.
///
/// The pair's deletion is registered with `undo` the moment it exists, so any later
/// failure of the ADD (even a lookup right after the creation) removes it again.
#[allow(clippy::too_many_arguments)]
pub fn setup_veth<'a>(
    host_nl: &Nl,
    cont_nl: &'a Nl,
    host_ns: &Netns,
    ifname: &'a str,
    host_name: Option<&str>,
    mtu: u32,
    mac: Option<[u8; 6]>,
    undo: &mut Rollback<'a>,
) -> Result<VethPair> {
    if cont_nl.link(LinkId::Name(ifname))?.is_some() {
        bail!("container veth name {ifname:?} already exists");
    }
    let mut tries = 0;
    let host_if = loop {
        let name = host_name
            .map(str::to_string)
            .unwrap_or_else(random_veth_name);
        let req = NewLink {
            name: ifname,
            kind: "veth",
            mtu,
            mac,
            peer: Some(Peer {
                name: &name,
                mtu,
                mac: None,
                netns: Some(host_ns.file.as_fd()),
            }),
            ..Default::default()
        };
        match cont_nl.create_link(&req) {
            Ok(()) => {
                undo.push("delete the container veth", move || {
                    delete_cont_link(cont_nl, ifname).map(|_| ())
                });
                break name;
            }
            Err(e)
                if crate::netlink::is_errno(&e, libc::EEXIST)
                    && host_name.is_none()
                    && tries < 10 =>
            {
                tries += 1; // the random host name collided: pick another
            }
            Err(e) if crate::netlink::is_errno(&e, libc::EEXIST) => {
                return Err(e).context(format!(
                    "container veth name ({ifname:?}) peer provided ({name:?}) already exists"
                ));
            }
            Err(e) => return Err(e),
        }
    };
    let host = host_nl.link_must(LinkId::Name(&host_if))?;
    host_nl.set_up(host.index, true)?;
    // Router advertisements on the host side would configure the host; ignore failures
    // (IPv6 may be disabled).
    let _ = sysctl::set(&format!("net/ipv6/conf/{host_if}/accept_ra"), "0");
    let cont = cont_nl.link_must(LinkId::Name(ifname))?;
    let host = host_nl.link_must(LinkId::Index(host.index))?;
    Ok(VethPair { host, cont })
}

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

/// Undo steps for a failed ADD, run newest first. Each step is best effort: a failure
/// is reported on stderr and the remaining steps still run, so a failed ADD leaves as
/// little behind as possible.
#[derive(Default)]
pub struct Rollback<'a> {
    steps: Vec<(String, UndoStep<'a>)>,
}

type UndoStep<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

impl<'a> Rollback<'a> {
    pub fn push(&mut self, what: impl Into<String>, step: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((what.into(), Box::new(step)));
    }

    pub fn run(self) {
        for (what, step) in self.steps.into_iter().rev() {
            if let Err(e) = step() {
                eprintln!("rollback: {what}: {e:#}");
            }
        }
    }

    /// Forget the steps: ADD succeeded.
    pub fn commit(self) {}

    /// Run `steps` as one transaction: every undo step they register runs (newest
    /// first) if they fail, and none runs if they succeed.
    pub fn guard<T>(steps: impl FnOnce(&mut Rollback<'a>) -> Result<T>) -> Result<T> {
        let mut undo = Rollback::default();
        match steps(&mut undo) {
            Ok(v) => {
                undo.commit();
                Ok(v)
            }
            Err(e) => {
                undo.run();
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// CHECK helpers (§2.0.7)

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

// ---------------------------------------------------------------------------------------
// IPAM and result helpers shared by the main plugins

/// IPAM ADD through the delegate; a result without addresses is an error.
pub fn ipam_add(ctx: &crate::cni::Ctx) -> Result<CniResult> {
    let r = crate::cni::delegate::add(ctx, ctx.conf.ipam_type())?;
    if r.ips.is_empty() {
        bail!("IPAM plugin returned missing IP config");
    }
    Ok(r)
}

/// Masquerade traffic from the result's addresses (`ipMasq`), and register the
/// teardown with `undo` so a later failure of the ADD removes the rules again.
pub fn masquerade<'a>(
    ctx: &'a crate::cni::Ctx,
    backend: crate::fw::ipmasq::Backend,
    ips: &[IpConfig],
    undo: &mut Rollback<'a>,
) -> Result<()> {
    use crate::fw::ipmasq;
    let nets: Vec<IpNet> = ips.iter().map(|i| i.address).collect();
    ipmasq::setup(
        backend,
        &nets,
        &ctx.conf.name,
        &ctx.ifname,
        &ctx.container_id,
    )?;
    undo.push("remove ip masquerade", move || {
        ipmasq::teardown(&ctx.conf.name, &ctx.ifname, &ctx.container_id)
    });
    Ok(())
}

/// The plugin-level `dns` replaces IPAM's when any of its keys is present, even as an
/// empty list (the reference's rule).
pub fn apply_dns_override(dns: Option<&serde_json::Value>, res: &mut CniResult) -> Result<()> {
    let Some(serde_json::Value::Object(o)) = dns else {
        return Ok(());
    };
    let keys = ["nameservers", "domain", "search", "options"];
    if o.iter()
        .any(|(k, v)| !v.is_null() && keys.iter().any(|x| x.eq_ignore_ascii_case(k)))
    {
        res.dns =
            crate::cni::decode::from_value(serde_json::Value::Object(o.clone())).map_err(|e| {
                crate::error::cni_err(crate::error::Code::Decode, format!("invalid dns: {e}"))
            })?;
    }
    Ok(())
}

/// DEL's interface step for the veth-based plugins: delete `ifname` in `netns`. An
/// empty netns, a vanished netns and a missing link all count as done.
pub fn del_cont_iface(netns: &str, ifname: &str) -> Result<()> {
    let Some(ns) = Netns::open_if_present(netns)? else {
        return Ok(());
    };
    delete_cont_link(&Nl::open_in(&ns)?, ifname).map(|_| ())
}

/// Run two independent teardown steps at once. Deleting a veth and committing an
/// nf_tables deletion each make the kernel wait an RCU grace period (10-20 ms); run
/// side by side the waits overlap. Neither step switches namespaces (sockets are
/// already bound), so a second thread is safe here.
pub fn both<A, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B)
where
    A: Send,
    B: Send,
{
    std::thread::scope(|s| {
        let hb = s.spawn(b);
        let ra = a();
        // With panic=abort a panicking thread ends the process; join cannot fail.
        let rb = match hb.join() {
            Ok(r) => r,
            Err(_) => std::process::abort(),
        };
        (ra, rb)
    })
}

/// Best-effort teardown: every step has already run; report every failure, not just
/// the first, so an operator sees all that is left. One failure keeps its own error
/// (and code); several are joined under the code of the first that has one.
pub fn all_errors(steps: impl IntoIterator<Item = Result<()>>) -> Result<()> {
    let mut errs: Vec<anyhow::Error> = steps.into_iter().filter_map(|r| r.err()).collect();
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => {
            use crate::error::{CniError, Code};
            let coded: Vec<CniError> = errs.iter().map(CniError::from_anyhow).collect();
            let code = coded
                .iter()
                .map(|c| c.code)
                .find(|&c| c != Code::Internal as u32)
                .unwrap_or(Code::Internal as u32);
            let msg = coded
                .iter()
                .map(|c| c.msg.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            Err(anyhow::Error::new(CniError {
                code,
                msg,
                ..CniError::new(Code::Internal, "")
            }))
        }
    }
}

/// The global unicast addresses of `ifname` in the container, then delete it. A link
/// that is already gone is fine (DEL is idempotent).
pub fn delete_cont_link(cont_nl: &Nl, ifname: &str) -> Result<Vec<IpNet>> {
    let Some(link) = cont_nl.link(LinkId::Name(ifname))? else {
        return Ok(vec![]);
    };
    let addrs = cont_nl
        .addrs(link.index, None)?
        .into_iter()
        .filter(|a| a.is_global_unicast())
        .map(|a| a.net)
        .collect();
    match cont_nl.delete_link(LinkId::Index(link.index)) {
        Ok(()) => Ok(addrs),
        Err(e) if crate::netlink::is_errno(&e, libc::ENODEV) => Ok(addrs),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------
// Address announcements

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
    fn veth_names() {
        let n = random_veth_name();
        assert_eq!(n.len(), 12);
        assert!(n.starts_with("veth") && n[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(random_veth_name(), random_veth_name());
    }

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
