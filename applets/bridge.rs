//! bridge: attach the container to a Linux bridge on the host through a veth pair.
//!
//! ADD: ensure the bridge, create the veth (container end `CNI_IFNAME`), enslave the host
//! end (hairpin, isolation, VLANs), optionally the MAC spoof check; with IPAM: allocate,
//! configure the container interface, put the gateway on the bridge (or the VLAN
//! gateway), enable forwarding, masquerade. Any failure undoes every step made so far.
//! DEL: delete the container link, release IPAM, remove spoof-check and masquerade
//! rules (also when the netns is already gone, unlike the reference).
//! CHECK: the bridge, the veth pair and the addresses/routes of prevResult (L2-only
//! configs skip IPAM CHECK, which the reference wrongly demands).

use anyhow::{anyhow, bail, Context, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::types::{shape_of, Shape};
use cnibox::cni::{delegate, value, CniResult, Interface, Route};
use cnibox::error::{cni_err, Code};
use cnibox::fw::{ipmasq, spoofcheck};
use cnibox::l3::{self, Rollback};
use cnibox::netlink::consts::*;
use cnibox::netlink::link::{parse_mac, NewLink, Peer};
use cnibox::netlink::{attr, LinkId, Nl};
use cnibox::netns::Netns;
use cnibox::sysctl;
use ipnet::IpNet;
use serde::Deserialize;
use std::os::fd::AsFd;
use std::time::Duration;

pub const APPLET: Applet = Applet {
    name: "bridge",
    about: "connect containers to a Linux bridge on the host",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: Some(&["MAC"]),
        add,
        del,
        check,
        gc: Some(gc),
        status: Some(status),
    }),
};

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Trunk {
    #[serde(rename = "minID")]
    min_id: Option<i64>,
    #[serde(rename = "maxID")]
    max_id: Option<i64>,
    id: Option<i64>,
}

#[derive(Deserialize, Debug)]
#[serde(default)]
struct Conf {
    bridge: String,
    #[serde(rename = "isGateway")]
    is_gw: bool,
    #[serde(rename = "isDefaultGateway")]
    is_default_gw: bool,
    #[serde(rename = "forceAddress")]
    force_address: bool,
    #[serde(rename = "ipMasq")]
    ip_masq: bool,
    #[serde(rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    mtu: i64,
    #[serde(rename = "hairpinMode")]
    hairpin: bool,
    #[serde(rename = "promiscMode")]
    promisc: bool,
    vlan: i64,
    #[serde(rename = "vlanTrunk")]
    vlan_trunk: Option<Vec<Trunk>>,
    #[serde(rename = "preserveDefaultVlan")]
    preserve_default_vlan: bool,
    #[serde(rename = "enabledad")]
    enable_dad: bool,
    macspoofchk: bool,
    #[serde(rename = "disableContainerInterface")]
    disable_cont_iface: bool,
    #[serde(rename = "portIsolation")]
    port_isolation: bool,
}

impl Default for Conf {
    fn default() -> Self {
        Conf {
            bridge: "cni0".into(),
            is_gw: false,
            is_default_gw: false,
            force_address: false,
            ip_masq: false,
            ip_masq_backend: None,
            mtu: 0,
            hairpin: false,
            promisc: false,
            vlan: 0,
            vlan_trunk: None,
            preserve_default_vlan: false,
            enable_dad: false,
            macspoofchk: false,
            disable_cont_iface: false,
            port_isolation: false,
        }
    }
}

/// The parsed, validated config.
struct Bridge {
    c: Conf,
    trunk: Vec<u16>,
    mtu: u32,
    l3: bool,
    mac: Option<[u8; 6]>,
}

/// The config, validated before anything changes: every bad value is code 7 and the
/// message names the key and the value.
fn parse(ctx: &Ctx) -> Result<Bridge> {
    let mut c: Conf = ctx.decode()?;
    if c.bridge.is_empty() {
        c.bridge = "cni0".into();
    }
    value::ifname("bridge", &c.bridge)?;
    if !(0..=4094).contains(&c.vlan) {
        return Err(value::invalid("vlan", c.vlan, "is out of range (0..4094)"));
    }
    let mut trunk = Vec::new();
    let vid = |key: &str, v: i64| -> Result<u16> {
        match u16::try_from(v) {
            Ok(id) if (1..=4094).contains(&id) => Ok(id),
            _ => Err(value::invalid(
                &format!("vlanTrunk.{key}"),
                v,
                "is out of range (1..4094)",
            )),
        }
    };
    for t in c.vlan_trunk.iter().flatten() {
        match (t.min_id, t.max_id) {
            (Some(min), Some(max)) => {
                let (min, max) = (vid("minID", min)?, vid("maxID", max)?);
                if max < min {
                    return Err(value::invalid(
                        "vlanTrunk.minID",
                        min,
                        format!("is greater than \"maxID\" {max}"),
                    ));
                }
                trunk.extend(min..=max);
            }
            (None, Some(max)) => {
                return Err(value::invalid(
                    "vlanTrunk.maxID",
                    max,
                    "needs \"minID\" too (minID is missing)",
                ))
            }
            (Some(min), None) => {
                return Err(value::invalid(
                    "vlanTrunk.minID",
                    min,
                    "needs \"maxID\" too (maxID is missing)",
                ))
            }
            (None, None) => {}
        }
        if let Some(id) = t.id {
            trunk.push(vid("id", id)?);
        }
    }
    trunk.sort_unstable();
    trunk.dedup();
    let mtu = value::mtu(c.mtu)?;
    value::masq_backend(c.ip_masq_backend.as_deref())?;
    if c.vlan != 0 && (c.is_gw || c.is_default_gw) {
        // The VLAN gateway is named "<bridge>.<vlan>": it must be a valid name too.
        value::ifname("bridge", &format!("{}.{}", c.bridge, c.vlan)).map_err(|_| {
            value::invalid(
                "bridge",
                format!("{:?}", c.bridge),
                format!(
                    "is too long for a VLAN gateway: \"{}.{}\" must fit in 15 bytes",
                    c.bridge, c.vlan
                ),
            )
        })?;
    }
    if c.is_default_gw {
        c.is_gw = true;
    }
    let l3 = !ctx.conf.ipam_type().is_empty();
    if l3 && c.disable_cont_iface {
        return Err(cni_err(
            Code::InvalidConfig,
            "\"disableContainerInterface\": true cannot be used with \"ipam\" (there is no container interface to put addresses on)",
        ));
    }
    if c.hairpin && c.promisc {
        return Err(cni_err(
            Code::InvalidConfig,
            "\"hairpinMode\" and \"promiscMode\" cannot both be true",
        ));
    }
    // MAC priority: CNI_ARGS < args.cni.mac < runtimeConfig.mac. A MAC from CNI_ARGS is
    // a bad environment (code 4), one from the config a bad config value (code 7).
    let mac = value::runtime_mac(ctx, value::mac, "MAC address")?;
    Ok(Bridge {
        c,
        trunk,
        mtu,
        l3,
        mac,
    })
}

/// Create the bridge or reuse it; `true` if this call created it. Concurrent ADDs race
/// to create it: EEXIST is fine. The link returned is read before any port of this ADD
/// is attached, so its MAC is the bridge's own (see [`ensure_gateway_addr`]).
fn ensure_bridge(nl: &Nl, b: &Bridge) -> Result<(cnibox::netlink::Link, bool)> {
    let name = b.c.bridge.as_str();
    let mut created = false;
    if nl.link(LinkId::Name(name))?.is_none() {
        let mut data = Vec::new();
        if b.c.vlan != 0 || b.c.vlan_trunk.is_some() {
            data.push(attr(IFLA_BR_VLAN_FILTERING, 1u8)?);
        }
        let req = NewLink {
            name,
            kind: "bridge",
            mtu: b.mtu,
            data,
            ..Default::default()
        };
        match nl.create_link(&req) {
            Ok(()) => created = true,
            Err(e) if cnibox::netlink::is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(e).context(format!("could not add {name:?}")),
        }
    }
    let br = nl.link_must(LinkId::Name(name))?;
    if br.kind != "bridge" {
        bail!("{name:?} already exists but is not a bridge");
    }
    if b.c.promisc && !br.is_promisc() {
        nl.set_promisc(br.index, true)?;
    }
    let _ = sysctl::set(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    if !br.is_up() {
        nl.set_up(br.index, true)?;
    }
    Ok((nl.link_must(LinkId::Index(br.index))?, created))
}

/// Undo of a failed ADD for a link it created on the bridge's behalf: delete `index`
/// unless the bridge `master` has ports other than `ours` (another ADD got in between
/// and uses it). With `vlan`, only ports in that VLAN count: a container in another
/// VLAN cannot use that VLAN's gateway, and a concurrent ADD that reuses the gateway
/// has put its port in the VLAN before it looks for the gateway.
fn delete_unless_shared(
    nl: &Nl,
    index: u32,
    master: u32,
    ours: &[u32],
    vlan: Option<u16>,
) -> Result<()> {
    let mut shared = false;
    for l in nl.links()? {
        if l.master != master || l.index == index || ours.contains(&l.index) {
            continue;
        }
        shared = match vlan {
            None => true,
            Some(v) => nl.bridge_vlans(l.index)?.iter().any(|(vid, _)| *vid == v),
        };
        if shared {
            break;
        }
    }
    if shared {
        return Ok(());
    }
    match nl.delete_link(LinkId::Index(index)) {
        Err(e) if !cnibox::netlink::is_errno(&e, libc::ENODEV) => Err(e),
        _ => Ok(()),
    }
}

/// VLAN membership of a host port: optional removal of existing VIDs, the access VID
/// (PVID, untagged), tagged trunk VIDs, and native VLAN 1 for a trunk-only port.
fn setup_port_vlans(
    nl: &Nl,
    index: u32,
    vlan: u16,
    trunk: &[u16],
    preserve_default: bool,
) -> Result<()> {
    if (vlan != 0 || !trunk.is_empty()) && !preserve_default {
        for (vid, _) in nl.bridge_vlans(index)? {
            nl.bridge_vlan(index, vid, BRIDGE_VLAN_INFO_MASTER, false)?;
        }
    }
    let untagged = BRIDGE_VLAN_INFO_MASTER | BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED;
    if vlan != 0 {
        nl.bridge_vlan(index, vlan, untagged, true)?;
    }
    for v in trunk {
        nl.bridge_vlan(index, *v, BRIDGE_VLAN_INFO_MASTER, true)?;
    }
    if vlan == 0 && !trunk.is_empty() {
        nl.bridge_vlan(index, 1, untagged, true)?;
    }
    Ok(())
}

/// Put `gw/len` on `link`; a different IPv4 address (or an overlapping IPv6 one) is a
/// conflict, replaced only with `forceAddress`. When the address is new, pin the link's
/// MAC to `own_mac` so a bridge stops following its ports' MACs: for a bridge that is
/// the MAC it had before this ADD attached its port (for a new bridge, the one it was
/// created with), as the reference does. (The reference pins on every ADD; setting a
/// MAC, even the same one, flushes the bridge's whole neighbour cache, so we do it once.
/// A bridge whose MAC was set explicitly keeps it: that is the MAC read before.)
fn ensure_gateway_addr(
    nl: &Nl,
    link_name: &str,
    gw: &IpNet,
    force: bool,
    own_mac: &str,
) -> Result<()> {
    let link = nl.link_must(LinkId::Name(link_name))?;
    let v6 = gw.addr().is_ipv6();
    let addrs = nl.addrs(link.index, Some(v6))?;
    if !addrs.iter().any(|a| a.net == *gw) {
        for a in &addrs {
            let conflict = if v6 {
                a.is_global_unicast() && (a.net.contains(&gw.addr()) || gw.contains(&a.net.addr()))
            } else {
                true
            };
            if !conflict {
                continue;
            }
            if !force {
                bail!("{link_name:?} already has an IP address different from {gw}");
            }
            nl.del_addr(link.index, &a.net)
                .with_context(|| format!("failed to remove IP address from {link_name:?}"))?;
        }
        match nl.add_addr(link.index, gw, 0) {
            Ok(()) => {}
            Err(e) if cnibox::netlink::is_errno(&e, libc::EEXIST) => return Ok(()),
            Err(e) => return Err(e).context(format!("could not add IP address to {link_name:?}")),
        }
        nl.set_mac(link.index, parse_mac(own_mac)?)?;
    }
    Ok(())
}

/// The `<bridge>.<vlan>` gateway veth in the host netns, created once per VLAN. Made
/// transactionally: a failure after the pair exists deletes it again, so a later ADD
/// never reuses a half-configured gateway. `true` if this call created it.
fn ensure_vlan_gateway(
    nl: &Nl,
    host_ns: &Netns,
    br: &cnibox::netlink::Link,
    vlan: u16,
    b: &Bridge,
) -> Result<(cnibox::netlink::Link, u32, bool)> {
    let name = format!("{}.{vlan}", b.c.bridge);
    if let Some(l) = nl.link(LinkId::Name(&name))? {
        // Reuse only a complete gateway: a veth whose peer is a port of this bridge.
        // Anything else under that name (left half-made by a crash, or by hand) is
        // replaced, rather than silently giving containers a gateway that goes nowhere.
        let complete = l.kind == "veth"
            && nl
                .link(LinkId::Index(l.link))?
                .is_some_and(|p| p.master == br.index);
        if complete {
            return Ok((l, 0, false));
        }
        nl.delete_link(LinkId::Index(l.index))
            .with_context(|| format!("failed to replace the incomplete VLAN gateway {name:?}"))?;
    }
    let peer = l3::random_veth_name();
    let req = NewLink {
        name: &name,
        kind: "veth",
        mtu: b.mtu,
        peer: Some(Peer {
            name: &peer,
            mtu: b.mtu,
            mac: None,
            netns: Some(host_ns.file.as_fd()),
        }),
        ..Default::default()
    };
    match nl.create_link(&req) {
        Ok(()) => {}
        // Another ADD made it at the same moment: use theirs.
        Err(e) if cnibox::netlink::is_errno(&e, libc::EEXIST) => {
            return Ok((nl.link_must(LinkId::Name(&name))?, 0, false))
        }
        Err(e) => return Err(e),
    }
    let configure = || -> Result<(cnibox::netlink::Link, u32)> {
        let p = nl.link_must(LinkId::Name(&peer))?;
        nl.set_master(p.index, br.index)?;
        nl.set_up(p.index, true)?;
        setup_port_vlans(nl, p.index, vlan, &[], b.c.preserve_default_vlan)?;
        let gw = nl.link_must(LinkId::Name(&name))?;
        nl.set_up(gw.index, true)?;
        Ok((nl.link_must(LinkId::Index(gw.index))?, p.index))
    };
    match configure() {
        Ok((gw, peer_index)) => Ok((gw, peer_index, true)),
        Err(e) => {
            if let Err(d) = nl.delete_link(LinkId::Name(&name)) {
                eprintln!("bridge ADD: removing the half-made {name:?}: {d:#}");
            }
            Err(e).context(format!("failed to create the VLAN gateway {name:?}"))
        }
    }
}

/// Wait for the host port to leave the bridge's learning states: checked after 0, 50,
/// 500, 1000 and 1000 ms like the reference.
fn wait_oper_up(nl: &Nl, index: u32) -> Result<()> {
    let mut state = String::new();
    for ms in [0u64, 50, 500, 1000, 1000] {
        std::thread::sleep(Duration::from_millis(ms));
        let l = nl.link_must(LinkId::Index(index))?;
        if l.operstate == 6 {
            return Ok(());
        }
        state = l.operstate_name().to_string();
    }
    bail!("bridge port in error state: {state}")
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let b = parse(ctx)?;
    if !b.l3 && shape_of(ctx.version()) == Some(Shape::V02) {
        // Refuse before changing anything: a result without IPs has no 0.x form.
        return Err(cni_err(
            Code::IncompatibleVersion,
            "cannot convert: no valid IP addresses",
        ));
    }
    if b.l3 {
        delegate::ensure_available(ctx, ctx.conf.ipam_type())?;
    }
    let cont_ns = Netns::open(&ctx.netns)?;
    let a = Attach {
        ctx,
        b: &b,
        host_ns: Netns::current()?,
        nl: Nl::open()?,
        cont_nl: Nl::open_in(&cont_ns)?,
        cont_ns,
    };
    Rollback::guard(|undo| a.steps(undo))
}

/// One ADD: the validated config and the sockets and namespaces it works with.
struct Attach<'a> {
    ctx: &'a Ctx,
    b: &'a Bridge,
    host_ns: Netns,
    nl: Nl,
    cont_ns: Netns,
    cont_nl: Nl,
}

impl<'a> Attach<'a> {
    fn steps(&'a self, undo: &mut Rollback<'a>) -> Result<CniResult> {
        let (ctx, b, nl, cont_nl) = (self.ctx, self.b, &self.nl, &self.cont_nl);
        let (br, br_created) = ensure_bridge(nl, b)?;
        if br_created {
            // Undo runs newest first: by then our own port is already gone.
            let index = br.index;
            undo.push("delete the bridge this ADD created", move || {
                delete_unless_shared(nl, index, index, &[], None)
            });
        }
        let pair = l3::setup_veth(
            nl,
            cont_nl,
            &self.host_ns,
            &ctx.ifname,
            None,
            b.mtu,
            b.mac,
            undo,
        )?;

        nl.set_master(pair.host.index, br.index).with_context(|| {
            format!(
                "failed to connect {:?} to bridge {:?}",
                pair.host.name, br.name
            )
        })?;
        nl.set_bridge_port(pair.host.index, b.c.hairpin, b.c.port_isolation)?;
        setup_port_vlans(
            nl,
            pair.host.index,
            b.c.vlan as u16,
            &b.trunk,
            b.c.preserve_default_vlan,
        )?;

        let mut res = CniResult {
            cni_version: ctx.version().to_string(),
            interfaces: vec![
                Interface::host(&br.name, &br.mac),
                Interface::host(&pair.host.name, &pair.host.mac),
                Interface::in_sandbox(&ctx.ifname, &pair.cont.mac, &ctx.netns),
            ],
            ..Default::default()
        };

        if b.c.macspoofchk {
            spoofcheck::setup(
                &pair.host.name,
                &pair.cont.mac,
                &ctx.container_id,
                &ctx.ifname,
            )?;
            undo.push("remove the MAC spoof check", move || {
                spoofcheck::teardown(&ctx.container_id, &ctx.ifname)
            });
        }

        if b.l3 {
            self.add_l3(&br, pair.host.index, &mut res, undo)?;
        } else if !b.c.disable_cont_iface {
            cont_nl.set_up(pair.cont.index, true)?;
        }

        if !b.c.disable_cont_iface {
            wait_oper_up(nl, pair.host.index)?;
            // Best effort: a failed announcement must not fail the ADD.
            if let Err(e) = l3::announce(cont_nl, pair.cont.index, &pair.cont.mac) {
                eprintln!("bridge ADD: {e:#}");
            }
        }
        // The bridge's and the host port's MACs can change while ports come and go.
        let host_now = nl.link_must(LinkId::Index(pair.host.index))?;
        let br_now = nl.link_must(LinkId::Index(br.index))?;
        res.interfaces[0].mac = br_now.mac;
        res.interfaces[1].mac = host_now.mac;
        l3::apply_dns_override(ctx.conf.dns.as_ref(), &mut res)?;
        Ok(res)
    }

    /// IPAM, the container's addresses and routes, the gateway on the bridge (or the
    /// VLAN gateway), forwarding and masquerade.
    fn add_l3(
        &'a self,
        br: &cnibox::netlink::Link,
        host_port: u32,
        res: &mut CniResult,
        undo: &mut Rollback<'a>,
    ) -> Result<()> {
        let (ctx, b, nl) = (self.ctx, self.b, &self.nl);
        let ipam = l3::ipam_add(ctx)?;
        undo.push("release the IPAM allocation", move || {
            delegate::del(ctx, ctx.conf.ipam_type())
        });
        res.ips = ipam.ips;
        res.routes = ipam.routes;
        res.dns = ipam.dns;
        for ip in &mut res.ips {
            ip.interface = Some(2);
            if ip.gateway.is_none() && b.c.is_gw {
                ip.gateway = Some(l3::first_host(&ip.address));
            }
        }
        if b.c.is_default_gw {
            add_default_routes(res);
        }
        let ifname = ctx.ifname.clone();
        let dad = b.c.enable_dad;
        self.cont_ns.run(|| {
            let (accept, enhanced) = if dad { ("1", Some("1")) } else { ("0", None) };
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), accept);
            if let Some(e) = enhanced {
                let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), e);
            }
            Ok(())
        })?;
        l3::configure_iface(&self.cont_nl, &self.cont_ns, &ctx.ifname, res)?;

        if b.c.is_gw {
            let (mut gw_link, mut own_mac) = (br.name.clone(), br.mac.clone());
            if b.c.vlan != 0 {
                let (vg, peer, created) =
                    ensure_vlan_gateway(nl, &self.host_ns, br, b.c.vlan as u16, b)?;
                if created {
                    let (gw_index, br_index, vlan) = (vg.index, br.index, b.c.vlan as u16);
                    let ours = [peer, host_port];
                    undo.push("delete the VLAN gateway this ADD created", move || {
                        delete_unless_shared(nl, gw_index, br_index, &ours, Some(vlan))
                    });
                }
                gw_link = vg.name.clone();
                own_mac = vg.mac.clone();
                res.interfaces.push(Interface::host(&vg.name, &vg.mac));
            }
            for ip in res.ips.clone() {
                let Some(gw) = ip.gateway else { continue };
                let gw_net = IpNet::new(gw, ip.address.prefix_len()).map_err(|e| anyhow!("{e}"))?;
                ensure_gateway_addr(nl, &gw_link, &gw_net, b.c.force_address, &own_mac)?;
            }
            let gws: Vec<_> = res
                .ips
                .iter()
                .filter(|i| i.gateway.is_some())
                .cloned()
                .collect();
            l3::enable_forwarding(&gws)?;
        }

        if b.c.ip_masq {
            let backend = ipmasq::backend(b.c.ip_masq_backend.as_deref())?;
            l3::masquerade(ctx, backend, &res.ips, undo)?;
        }
        Ok(())
    }
}

/// `isDefaultGateway`: a default route per family through that family's gateway, unless
/// IPAM already gave one. (Fix: the reference also adds one when IPAM's default route
/// has no `gw`, which makes ADD fail on a duplicate route.)
fn add_default_routes(res: &mut CniResult) {
    let mut seen_v4 = false;
    let mut seen_v6 = false;
    for ip in res.ips.clone() {
        let v4 = ip.address.addr().is_ipv4();
        if (v4 && seen_v4) || (!v4 && seen_v6) {
            continue;
        }
        let Some(gw) = ip.gateway else { continue };
        if v4 {
            seen_v4 = true;
        } else {
            seen_v6 = true;
        }
        if res
            .routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4)
        {
            continue;
        }
        let dst: IpNet = if v4 {
            "0.0.0.0/0".parse()
        } else {
            "::/0".parse()
        }
        .unwrap_or_default();
        res.routes.push(Route::new(dst, Some(gw)));
    }
}

/// DEL never fails because ADD would reject the config (a runtime retries a failed DEL
/// forever): it reads only the keys it needs, and when even those cannot be read it
/// removes everything this plugin may have made for the attachment.
fn del(ctx: &Ctx) -> Result<()> {
    let (spoofchk, masq) = match ctx.decode::<Conf>() {
        Ok(c) => (c.macspoofchk, c.ip_masq),
        Err(_) => (true, true),
    };
    let l3 = !ctx.conf.ipam_type().is_empty();
    // Rules are found by name, not by the container's addresses, so they go even when
    // the netns is gone (the reference leaks them then).
    let rules = || {
        let spoof = if spoofchk {
            spoofcheck::teardown(&ctx.container_id, &ctx.ifname)
        } else {
            Ok(())
        };
        let masq = if l3 && masq {
            ipmasq::teardown(&ctx.conf.name, &ctx.ifname, &ctx.container_id)
        } else {
            Ok(())
        };
        l3::all_errors([spoof, masq])
    };
    let (cont, rules) = l3::both(|| l3::del_cont_iface(&ctx.netns, &ctx.ifname), rules);
    let ipam = if l3 {
        delegate::del(ctx, ctx.conf.ipam_type())
    } else {
        Ok(())
    };
    l3::all_errors([cont, ipam, rules])
}

fn check(ctx: &Ctx) -> Result<()> {
    let b = parse(ctx)?;
    let prev = ctx.prev_result_required()?;
    if b.l3 {
        delegate::check(ctx, ctx.conf.ipam_type())?;
    }
    let nl = Nl::open()?;
    let cont_ns = Netns::open(&ctx.netns)?;
    let cont_nl = Nl::open_in(&cont_ns)?;

    let br_if = prev
        .interfaces
        .iter()
        .find(|i| i.name == b.c.bridge)
        .ok_or_else(|| anyhow!("Bridge interface {} not found in prevResult", b.c.bridge))?;
    let br = nl
        .link(LinkId::Name(&b.c.bridge))?
        .ok_or_else(|| anyhow!("Error: Bridge {} not found", b.c.bridge))?;
    if br.kind != "bridge" {
        bail!("Error: Bridge interface {} not of type bridge", br.name);
    }
    if !br_if.sandbox.is_empty() {
        bail!(
            "Bridge interface {} should not be in a network namespace",
            br.name
        );
    }
    if !br_if.mac.is_empty() && !br_if.mac.eq_ignore_ascii_case(&br.mac) {
        bail!(
            "Bridge interface {} Mac doesn't match: {}",
            br.name,
            br_if.mac
        );
    }
    if br.is_promisc() != b.c.promisc {
        bail!(
            "Bridge interface {} promiscuous mode is {} but the config says {}",
            br.name,
            br.is_promisc(),
            b.c.promisc
        );
    }

    let cont_if = l3::find_container_iface(&prev, &ctx.ifname, &ctx.netns)?;
    let cont = l3::validate_cont_veth(&cont_nl, cont_if)?;

    let host_ok = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.is_empty() && i.name != b.c.bridge)
        .any(|hi| {
            nl.link(LinkId::Name(&hi.name))
                .ok()
                .flatten()
                .is_some_and(|l| {
                    l.kind == "veth"
                        && l.link == cont.index
                        && l.master == br.index
                        && (hi.mac.is_empty() || hi.mac.eq_ignore_ascii_case(&l.mac))
                })
        });
    if !host_ok {
        bail!(
            "No host interface found connected to the bridge for container interface {}",
            ctx.ifname
        );
    }
    l3::validate_ips(&cont_nl, &ctx.ifname, &prev.ips)?;
    l3::validate_routes(&cont_nl, &prev.routes)?;
    Ok(())
}

fn status(ctx: &Ctx) -> Result<()> {
    if ctx.conf.ipam_type().is_empty() {
        return Ok(());
    }
    delegate::status(ctx, ctx.conf.ipam_type())
}

/// GC (not in the reference): masquerade rules of stale attachments, then forward GC to
/// IPAM as the spec asks.
fn gc(ctx: &Ctx) -> Result<()> {
    let b = parse(ctx)?;
    let valid = ctx.valid_attachments()?;
    let masq = if b.c.ip_masq {
        ipmasq::gc(&ctx.conf.name, &valid)
    } else {
        Ok(())
    };
    let ipam = if b.l3 {
        delegate::gc(ctx, ctx.conf.ipam_type())
    } else {
        Ok(())
    };
    l3::all_errors([masq, ipam])
}
