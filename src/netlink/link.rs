//! Links: get, list, create (veth pairs across namespaces, bridges, and the typed
//! stacked kinds macvlan/ipvlan/vlan/vrf/ifb with a parent, kind data, txqlen,
//! allmulti, created directly in a target namespace), delete, and the setters plugins
//! need (up/down, mtu, mac, name, master, netns, promisc), plus bridge-port flags and
//! VLAN entries.

use super::consts::*;
use super::{attr, cstr, mac_string, nest, parse_nested, u32_of, Nl, NlError};
use anyhow::{anyhow, Result};
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Arphrd, Iff, Ifla, IflaInfo, RtAddrFamily, Rtm};
use neli::rtnl::{Ifinfomsg, IfinfomsgBuilder, Rtattr};
use neli::types::{Buffer, RtBuffer};
use std::os::fd::{AsRawFd, BorrowedFd};

/// How to name a link in a request.
#[derive(Clone, Debug)]
pub enum LinkId<'a> {
    Index(u32),
    Name(&'a str),
}

impl std::fmt::Display for LinkId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkId::Index(i) => write!(f, "ifindex {i}"),
            LinkId::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// What we read back about a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub flags: u32,
    pub mtu: u32,
    pub mac: String,
    /// Master (bridge) ifindex, 0 if none.
    pub master: u32,
    /// IFLA_INFO_KIND ("veth", "bridge", ...), empty for plain devices.
    pub kind: String,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    pub link: u32,
    pub operstate: u8,
    pub promiscuity: u32,
    pub alias: String,
    pub txqlen: u32,
    /// IFLA_LINK_NETNSID: set when `link` (the parent or peer) lives in another
    /// namespace; the id is that namespace as seen from the link's own.
    pub link_netnsid: Option<i32>,
    /// IFLA_INFO_DATA decoded, for the kinds [`KindData`] knows.
    pub info: Option<KindData>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & libc::IFF_UP as u32 != 0
    }

    pub fn is_promisc(&self) -> bool {
        self.flags & libc::IFF_PROMISC as u32 != 0
    }

    /// Operational state names, as `ip link` prints them.
    pub fn operstate_name(&self) -> &'static str {
        match self.operstate {
            1 => "notpresent",
            2 => "down",
            3 => "lowerlayerdown",
            4 => "testing",
            5 => "dormant",
            6 => "up",
            _ => "unknown",
        }
    }

    fn from_msg(m: &Ifinfomsg) -> Link {
        let mut l = Link {
            index: *m.ifi_index() as u32,
            flags: u32::from(*m.ifi_flags()),
            ..Default::default()
        };
        for a in m.rtattrs().iter() {
            let p: &[u8] = a.rta_payload().as_ref();
            match u16::from(*a.rta_type()) {
                t if t == u16::from(Ifla::Ifname) => l.name = cstr(p),
                t if t == u16::from(Ifla::Mtu) => l.mtu = u32_of(p),
                t if t == u16::from(Ifla::Address) => l.mac = mac_string(p),
                t if t == u16::from(Ifla::Master) => l.master = u32_of(p),
                t if t == u16::from(Ifla::Link) => l.link = u32_of(p),
                t if t == u16::from(Ifla::Operstate) => {
                    l.operstate = p.first().copied().unwrap_or(0)
                }
                t if t == u16::from(Ifla::Promiscuity) => l.promiscuity = u32_of(p),
                t if t == u16::from(Ifla::Ifalias) => l.alias = cstr(p),
                t if t == u16::from(Ifla::Txqlen) => l.txqlen = u32_of(p),
                t if t == u16::from(Ifla::LinkNetnsid) => l.link_netnsid = Some(u32_of(p) as i32),
                t if t == u16::from(Ifla::Linkinfo) => {
                    let mut data = None;
                    for (ty, v) in parse_nested(p) {
                        if ty == u16::from(IflaInfo::Kind) {
                            l.kind = cstr(v);
                        } else if ty == u16::from(IflaInfo::Data) {
                            data = Some(v);
                        }
                    }
                    l.info = KindData::parse(&l.kind, data.unwrap_or(&[]));
                }
                _ => {}
            }
        }
        l
    }
}

// ---------------------------------------------------------------------------------------
// Typed kind data (IFLA_INFO_DATA), values from include/uapi/linux/if_link.h and
// if_vlan.h / if_ether.h.

const IFLA_MACVLAN_MODE: u16 = 1;
const IFLA_MACVLAN_FLAGS: u16 = 2;
const IFLA_MACVLAN_MACADDR_MODE: u16 = 3;
const IFLA_MACVLAN_MACADDR: u16 = 4;
const IFLA_MACVLAN_MACADDR_DATA: u16 = 5;
const IFLA_MACVLAN_BC_QUEUE_LEN: u16 = 7;
const MACVLAN_MACADDR_SET: u32 = 3;
const IFLA_IPVLAN_MODE: u16 = 1;
const IFLA_IPVLAN_FLAGS: u16 = 2;
const IFLA_VLAN_ID: u16 = 1;
const IFLA_VLAN_PROTOCOL: u16 = 5;
const IFLA_VRF_TABLE: u16 = 1;

/// macvlan forwarding modes (MACVLAN_MODE_*), with the names `ip link` and the CNI
/// configs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MacvlanMode {
    Private,
    Vepa,
    #[default]
    Bridge,
    Passthru,
    Source,
    /// A value this code does not know (read back from a newer kernel).
    Other(u32),
}

impl MacvlanMode {
    pub const NAMES: &'static [&'static str] = &["bridge", "private", "vepa", "passthru", "source"];

    pub fn from_name(s: &str) -> Option<MacvlanMode> {
        Some(match s {
            "bridge" => MacvlanMode::Bridge,
            "private" => MacvlanMode::Private,
            "vepa" => MacvlanMode::Vepa,
            "passthru" => MacvlanMode::Passthru,
            "source" => MacvlanMode::Source,
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            MacvlanMode::Private => "private".into(),
            MacvlanMode::Vepa => "vepa".into(),
            MacvlanMode::Bridge => "bridge".into(),
            MacvlanMode::Passthru => "passthru".into(),
            MacvlanMode::Source => "source".into(),
            MacvlanMode::Other(v) => format!("mode {v}"),
        }
    }

    fn value(self) -> u32 {
        match self {
            MacvlanMode::Private => 1,
            MacvlanMode::Vepa => 2,
            MacvlanMode::Bridge => 4,
            MacvlanMode::Passthru => 8,
            MacvlanMode::Source => 16,
            MacvlanMode::Other(v) => v,
        }
    }

    fn from_value(v: u32) -> MacvlanMode {
        match v {
            1 => MacvlanMode::Private,
            2 => MacvlanMode::Vepa,
            4 => MacvlanMode::Bridge,
            8 => MacvlanMode::Passthru,
            16 => MacvlanMode::Source,
            v => MacvlanMode::Other(v),
        }
    }
}

/// macvlan data. The mode is always sent: without it the kernel picks vepa.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Macvlan {
    pub mode: MacvlanMode,
    /// MACVLAN_FLAG_* (1 = nopromisc, 2 = nodst); 0 is not sent.
    pub flags: u16,
    /// Broadcast queue length requested (kernel ≥ 5.11); `None` keeps the default.
    pub bc_queue_len: Option<u32>,
    /// Source mode: the MACs whose frames this link receives.
    pub source_macs: Vec<[u8; 6]>,
}

/// ipvlan modes (IPVLAN_MODE_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IpvlanMode {
    #[default]
    L2,
    L3,
    L3s,
    Other(u16),
}

impl IpvlanMode {
    pub const NAMES: &'static [&'static str] = &["l2", "l3", "l3s"];

    pub fn from_name(s: &str) -> Option<IpvlanMode> {
        Some(match s {
            "l2" => IpvlanMode::L2,
            "l3" => IpvlanMode::L3,
            "l3s" => IpvlanMode::L3s,
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            IpvlanMode::L2 => "l2".into(),
            IpvlanMode::L3 => "l3".into(),
            IpvlanMode::L3s => "l3s".into(),
            IpvlanMode::Other(v) => format!("mode {v}"),
        }
    }

    fn value(self) -> u16 {
        match self {
            IpvlanMode::L2 => 0,
            IpvlanMode::L3 => 1,
            IpvlanMode::L3s => 2,
            IpvlanMode::Other(v) => v,
        }
    }

    fn from_value(v: u16) -> IpvlanMode {
        match v {
            0 => IpvlanMode::L2,
            1 => IpvlanMode::L3,
            2 => IpvlanMode::L3s,
            v => IpvlanMode::Other(v),
        }
    }
}

/// ipvlan flags (IPVLAN_F_*): 0 = bridge, 1 = private, 2 = vepa.
pub const IPVLAN_F_PRIVATE: u16 = 1;
pub const IPVLAN_F_VEPA: u16 = 2;

/// ipvlan data. Mode and flags are always sent: without a mode the kernel picks l3.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ipvlan {
    pub mode: IpvlanMode,
    pub flags: u16,
}

/// The tag protocol of a VLAN link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VlanProtocol {
    /// 802.1Q (0x8100), the kernel's default.
    #[default]
    Dot1Q,
    /// 802.1ad (0x88a8), QinQ service tags.
    Dot1Ad,
    Other(u16),
}

impl VlanProtocol {
    fn value(self) -> u16 {
        match self {
            VlanProtocol::Dot1Q => 0x8100,
            VlanProtocol::Dot1Ad => 0x88a8,
            VlanProtocol::Other(v) => v,
        }
    }

    fn from_value(v: u16) -> VlanProtocol {
        match v {
            0x8100 => VlanProtocol::Dot1Q,
            0x88a8 => VlanProtocol::Dot1Ad,
            v => VlanProtocol::Other(v),
        }
    }
}

/// 802.1Q/802.1ad data. The protocol is sent only when it is not the default, as
/// `ip link` and Go's netlink do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vlan {
    pub id: u16,
    pub protocol: VlanProtocol,
}

/// The kind of a link and its IFLA_INFO_DATA, typed: what a plugin asks for when it
/// creates a link, and what [`Link::info`] holds when one is read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KindData {
    Macvlan(Macvlan),
    Ipvlan(Ipvlan),
    Vlan(Vlan),
    Vrf { table: u32 },
    Ifb,
}

impl KindData {
    /// IFLA_INFO_KIND.
    pub fn kind(&self) -> &'static str {
        match self {
            KindData::Macvlan(_) => "macvlan",
            KindData::Ipvlan(_) => "ipvlan",
            KindData::Vlan(_) => "vlan",
            KindData::Vrf { .. } => "vrf",
            KindData::Ifb => "ifb",
        }
    }

    /// The IFLA_INFO_DATA attributes.
    pub fn attrs(&self) -> Result<Vec<Rtattr<u16, Buffer>>> {
        let mut v = Vec::new();
        match self {
            KindData::Macvlan(m) => {
                v.push(attr(IFLA_MACVLAN_MODE, m.mode.value())?);
                if m.flags != 0 {
                    v.push(attr(IFLA_MACVLAN_FLAGS, m.flags)?);
                }
                if let Some(q) = m.bc_queue_len {
                    v.push(attr(IFLA_MACVLAN_BC_QUEUE_LEN, q)?);
                }
                if !m.source_macs.is_empty() {
                    // The kernel accepts a source list at creation only as "set".
                    v.push(attr(IFLA_MACVLAN_MACADDR_MODE, MACVLAN_MACADDR_SET)?);
                    let macs = m
                        .source_macs
                        .iter()
                        .map(|mac| attr(IFLA_MACVLAN_MACADDR, Buffer::from(mac.to_vec())))
                        .collect::<Result<Vec<_>>>()?;
                    v.push(nest(IFLA_MACVLAN_MACADDR_DATA | NLA_F_NESTED, &macs)?);
                }
            }
            KindData::Ipvlan(i) => {
                v.push(attr(IFLA_IPVLAN_MODE, i.mode.value())?);
                v.push(attr(IFLA_IPVLAN_FLAGS, i.flags)?);
            }
            KindData::Vlan(vl) => {
                v.push(attr(IFLA_VLAN_ID, vl.id)?);
                if vl.protocol != VlanProtocol::Dot1Q {
                    // Network byte order, unlike every other field here.
                    v.push(attr(
                        IFLA_VLAN_PROTOCOL,
                        Buffer::from(vl.protocol.value().to_be_bytes().to_vec()),
                    )?);
                }
            }
            KindData::Vrf { table } => v.push(attr(IFLA_VRF_TABLE, *table)?),
            KindData::Ifb => {}
        }
        Ok(v)
    }

    /// Decode the IFLA_INFO_DATA payload of a link of `kind` (None for other kinds).
    fn parse(kind: &str, data: &[u8]) -> Option<KindData> {
        let attrs = parse_nested(data);
        let u16_at = |t: u16| {
            attrs
                .iter()
                .find(|(ty, _)| *ty == t)
                .and_then(|(_, p)| p.get(..2))
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        };
        let u32_at = |t: u16| {
            attrs
                .iter()
                .find(|(ty, _)| *ty == t)
                .map(|(_, p)| u32_of(p))
        };
        Some(match kind {
            // The tap variants carry the same data; `kind()` of what is read back then
            // names the non-tap kind, [`Link::kind`] the real one.
            "macvlan" | "macvtap" => {
                let source_macs = attrs
                    .iter()
                    .filter(|(ty, _)| *ty == IFLA_MACVLAN_MACADDR_DATA)
                    .flat_map(|(_, p)| parse_nested(p))
                    .filter(|(ty, p)| *ty == IFLA_MACVLAN_MACADDR && p.len() == 6)
                    .map(|(_, p)| {
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(p);
                        mac
                    })
                    .collect();
                KindData::Macvlan(Macvlan {
                    mode: MacvlanMode::from_value(u32_at(IFLA_MACVLAN_MODE).unwrap_or(0)),
                    flags: u16_at(IFLA_MACVLAN_FLAGS).unwrap_or(0),
                    bc_queue_len: u32_at(IFLA_MACVLAN_BC_QUEUE_LEN),
                    source_macs,
                })
            }
            "ipvlan" | "ipvtap" => KindData::Ipvlan(Ipvlan {
                mode: IpvlanMode::from_value(u16_at(IFLA_IPVLAN_MODE).unwrap_or(0)),
                flags: u16_at(IFLA_IPVLAN_FLAGS).unwrap_or(0),
            }),
            "vlan" => KindData::Vlan(Vlan {
                id: u16_at(IFLA_VLAN_ID).unwrap_or(0),
                protocol: attrs
                    .iter()
                    .find(|(ty, _)| *ty == IFLA_VLAN_PROTOCOL)
                    .and_then(|(_, p)| p.get(..2))
                    .map(|b| VlanProtocol::from_value(u16::from_be_bytes([b[0], b[1]])))
                    .unwrap_or_default(),
            }),
            "vrf" => KindData::Vrf {
                table: u32_at(IFLA_VRF_TABLE).unwrap_or(0),
            },
            "ifb" => KindData::Ifb,
            _ => return None,
        })
    }
}

/// A link to create. `peer` makes a veth pair; `data` is raw IFLA_INFO_DATA for the
/// kind; `info` is typed kind data (it sets the kind and comes before `data`).
///
/// For the stacked kinds (macvlan, ipvlan, vlan) `parent` is resolved in the namespace
/// of the socket that sends the request, and the new link is created in `netns` under
/// its final name: the kernel checks the name in the target namespace, so a same-named
/// link next to the parent is no obstacle.
///
/// ```ignore
/// nl.create_link(&NewLink::typed("eth0", KindData::Vlan(Vlan { id: 100, ..Default::default() }))
///     .parent(master.index).mtu(1400).netns(cont.file.as_fd()))?;
/// ```
#[derive(Default)]
pub struct NewLink<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// Create the link directly in this namespace.
    pub netns: Option<BorrowedFd<'a>>,
    pub data: Vec<Rtattr<u16, Buffer>>,
    pub peer: Option<Peer<'a>>,
    /// IFLA_LINK: the parent (lower) device's ifindex; 0 = none.
    pub parent: u32,
    /// IFLA_TXQLEN; `None` keeps the kernel's default.
    pub txqlen: Option<u32>,
    /// Create with IFF_ALLMULTI set; `false` keeps the kernel's default (off).
    pub allmulti: bool,
    /// Typed IFLA_INFO_DATA.
    pub info: Option<KindData>,
}

impl<'a> NewLink<'a> {
    /// A link of the kind `info` describes.
    pub fn typed(name: &'a str, info: KindData) -> NewLink<'a> {
        NewLink {
            name,
            kind: info.kind(),
            info: Some(info),
            ..Default::default()
        }
    }

    pub fn parent(mut self, index: u32) -> Self {
        self.parent = index;
        self
    }

    /// 0 keeps the kernel's default (for stacked kinds: the parent's MTU).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    pub fn mac(mut self, mac: Option<[u8; 6]>) -> Self {
        self.mac = mac;
        self
    }

    pub fn txqlen(mut self, qlen: u32) -> Self {
        self.txqlen = Some(qlen);
        self
    }

    /// Receive all multicast frames (`ip link add ... allmulticast on`).
    pub fn allmulti(mut self, on: bool) -> Self {
        self.allmulti = on;
        self
    }

    pub fn netns(mut self, ns: BorrowedFd<'a>) -> Self {
        self.netns = Some(ns);
        self
    }
}

/// The other end of a veth pair.
pub struct Peer<'a> {
    pub name: &'a str,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub netns: Option<BorrowedFd<'a>>,
}

fn base(index: u32) -> IfinfomsgBuilder {
    IfinfomsgBuilder::default()
        .ifi_family(RtAddrFamily::Unspecified)
        .ifi_type(Arphrd::from(0u16))
        .ifi_index(index as i32)
}

fn build(b: IfinfomsgBuilder, attrs: Vec<Rtattr<Ifla, Buffer>>) -> Result<Ifinfomsg> {
    b.rtattrs(RtBuffer::from_iter(attrs))
        .build()
        .map_err(|e| anyhow!("cannot build link message: {e}"))
}

fn id_attrs(id: &LinkId) -> Result<(u32, Vec<Rtattr<Ifla, Buffer>>)> {
    Ok(match id {
        LinkId::Index(i) => (*i, vec![]),
        LinkId::Name(n) => (0, vec![attr(Ifla::Ifname, *n)?]),
    })
}

/// Parse "aa:bb:cc:dd:ee:ff" (also '-' separated) into bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut out = [0u8; 6];
    if parts.len() != 6 {
        return Err(anyhow!("invalid MAC address {s:?}"));
    }
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(anyhow!("invalid MAC address {s:?}"));
        }
        out[i] = u8::from_str_radix(p, 16).map_err(|_| anyhow!("invalid MAC address {s:?}"))?;
    }
    Ok(out)
}

impl Nl {
    /// Look a link up; `Ok(None)` if it does not exist.
    pub fn link(&self, id: LinkId) -> Result<Option<Link>> {
        let (index, attrs) = id_attrs(&id)?;
        let msg = build(base(index), attrs)?;
        match self.request(Rtm::Getlink, NlmF::empty(), msg, || {
            format!("failed to look up link {id}")
        }) {
            Ok(v) => Ok(v.first().map(Link::from_msg)),
            Err(e) if matches!(super::errno(&e), Some(libc::ENODEV)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Look a link up; a missing link is an error naming it.
    pub fn link_must(&self, id: LinkId) -> Result<Link> {
        self.link(id.clone())?.ok_or_else(|| {
            NlError {
                op: format!("failed to find link {id}"),
                errno: libc::ENODEV,
                ext: String::new(),
            }
            .into()
        })
    }

    pub fn links(&self) -> Result<Vec<Link>> {
        let msg = build(base(0), vec![])?;
        let v = self.request(Rtm::Getlink, NlmF::DUMP, msg, || {
            "failed to list links".into()
        })?;
        Ok(v.iter().map(Link::from_msg).collect())
    }

    pub fn create_link(&self, nl: &NewLink) -> Result<()> {
        let mut attrs = vec![attr(Ifla::Ifname, nl.name)?];
        if nl.mtu != 0 {
            attrs.push(attr(Ifla::Mtu, nl.mtu)?);
        }
        if let Some(mac) = nl.mac {
            attrs.push(attr(Ifla::Address, Buffer::from(mac.to_vec()))?);
        }
        if let Some(fd) = nl.netns {
            attrs.push(attr(Ifla::NetNsFd, fd.as_raw_fd() as u32)?);
        }
        if nl.parent != 0 {
            attrs.push(attr(Ifla::Link, nl.parent)?);
        }
        if let Some(q) = nl.txqlen {
            attrs.push(attr(Ifla::Txqlen, q)?);
        }
        let kind = match &nl.info {
            Some(i) if !nl.kind.is_empty() && nl.kind != i.kind() => {
                return Err(anyhow!(
                    "link {:?}: kind {:?} does not match its kind data ({})",
                    nl.name,
                    nl.kind,
                    i.kind()
                ))
            }
            Some(i) => i.kind(),
            None => nl.kind,
        };
        let mut info = attr(Ifla::Linkinfo, Buffer::from(Vec::new()))?;
        info = info
            .nest(&attr(IflaInfo::Kind, kind)?)
            .map_err(|e| anyhow!("{e}"))?;
        let mut data: Vec<Rtattr<u16, Buffer>> = match &nl.info {
            Some(i) => i.attrs()?,
            None => Vec::new(),
        };
        for d in &nl.data {
            data.push(d.clone());
        }
        if let Some(peer) = &nl.peer {
            let mut pattrs = vec![attr(Ifla::Ifname, peer.name)?];
            if peer.mtu != 0 {
                pattrs.push(attr(Ifla::Mtu, peer.mtu)?);
            }
            if let Some(mac) = peer.mac {
                pattrs.push(attr(Ifla::Address, Buffer::from(mac.to_vec()))?);
            }
            if let Some(fd) = peer.netns {
                pattrs.push(attr(Ifla::NetNsFd, fd.as_raw_fd() as u32)?);
            }
            let pmsg = build(base(0), pattrs)?;
            data.push(attr(VETH_INFO_PEER, pmsg)?);
        }
        if !data.is_empty() {
            info = info
                .nest(&nest(u16::from(IflaInfo::Data), &data)?)
                .map_err(|e| anyhow!("{e}"))?;
        }
        attrs.push(info);
        // The kernel applies ifi_flags under ifi_change to a link it has just created
        // (rtnl_configure_link), so allmulti needs no second request. Only sent when
        // asked for: an empty change mask leaves every flag at the kernel's default.
        let mut b = base(0);
        if nl.allmulti {
            b = b.ifi_flags(Iff::ALLMULTI).ifi_change(Iff::ALLMULTI);
        }
        let msg = build(b, attrs)?;
        self.request(Rtm::Newlink, NlmF::CREATE | NlmF::EXCL, msg, || {
            format!("failed to create {kind} link {:?}", nl.name)
        })?;
        Ok(())
    }

    pub fn delete_link(&self, id: LinkId) -> Result<()> {
        let (index, attrs) = id_attrs(&id)?;
        let msg = build(base(index), attrs)?;
        self.request(Rtm::Dellink, NlmF::empty(), msg, || {
            format!("failed to delete link {id}")
        })?;
        Ok(())
    }

    fn set(
        &self,
        index: u32,
        b: IfinfomsgBuilder,
        attrs: Vec<Rtattr<Ifla, Buffer>>,
        what: &str,
    ) -> Result<()> {
        let msg = build(b, attrs)?;
        self.request(Rtm::Setlink, NlmF::empty(), msg, || {
            format!("failed to set {what} of ifindex {index}")
        })?;
        Ok(())
    }

    pub fn set_up(&self, index: u32, up: bool) -> Result<()> {
        let b = base(index).ifi_change(Iff::UP);
        let b = if up {
            b.ifi_flags(Iff::UP)
        } else {
            b.ifi_flags(Iff::empty())
        };
        self.set(index, b, vec![], if up { "up" } else { "down" })
    }

    pub fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        let b = base(index).ifi_change(Iff::PROMISC);
        let b = if on {
            b.ifi_flags(Iff::PROMISC)
        } else {
            b.ifi_flags(Iff::empty())
        };
        self.set(index, b, vec![], "promisc")
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(index, base(index), vec![attr(Ifla::Mtu, mtu)?], "mtu")
    }

    pub fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set(
            index,
            base(index),
            vec![attr(Ifla::Address, Buffer::from(mac.to_vec()))?],
            "mac",
        )
    }

    pub fn set_name(&self, index: u32, name: &str) -> Result<()> {
        self.set(index, base(index), vec![attr(Ifla::Ifname, name)?], "name")
    }

    /// Enslave to `master` (0 = release).
    pub fn set_master(&self, index: u32, master: u32) -> Result<()> {
        self.set(
            index,
            base(index),
            vec![attr(Ifla::Master, master)?],
            "master",
        )
    }

    pub fn set_netns(&self, index: u32, ns: BorrowedFd) -> Result<()> {
        self.set(
            index,
            base(index),
            vec![attr(Ifla::NetNsFd, ns.as_raw_fd() as u32)?],
            "netns",
        )
    }

    pub fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.set(
            index,
            base(index),
            vec![attr(Ifla::Ifalias, alias)?],
            "alias",
        )
    }

    /// Bridge-port flags (hairpin, isolated), set through AF_BRIDGE IFLA_PROTINFO like
    /// `bridge link set` does.
    pub fn set_bridge_port(&self, index: u32, hairpin: bool, isolated: bool) -> Result<()> {
        let prot = nest(
            Ifla::from(IFLA_PROTINFO | NLA_F_NESTED),
            &[
                attr(IFLA_BRPORT_MODE, hairpin as u8)?,
                attr(IFLA_BRPORT_ISOLATED, isolated as u8)?,
            ],
        )?;
        let b = base(index).ifi_family(RtAddrFamily::from(AF_BRIDGE));
        self.set(index, b, vec![prot], "bridge port flags")
    }

    /// Add (`add`) or remove a VLAN entry on a bridge port.
    pub fn bridge_vlan(&self, index: u32, vid: u16, flags: u16, add: bool) -> Result<()> {
        let mut info = flags.to_ne_bytes().to_vec();
        info.extend_from_slice(&vid.to_ne_bytes());
        let spec = nest(
            Ifla::from(IFLA_AF_SPEC | NLA_F_NESTED),
            &[attr(IFLA_BRIDGE_VLAN_INFO, Buffer::from(info))?],
        )?;
        let msg = build(
            base(index).ifi_family(RtAddrFamily::from(AF_BRIDGE)),
            vec![spec],
        )?;
        let ty = if add { Rtm::Setlink } else { Rtm::Dellink };
        self.request(ty, NlmF::empty(), msg, || {
            format!(
                "failed to {} vlan {vid} on ifindex {index}",
                if add { "add" } else { "delete" }
            )
        })?;
        Ok(())
    }

    /// The VLAN entries of a bridge port: (vid, flags).
    pub fn bridge_vlans(&self, index: u32) -> Result<Vec<(u16, u16)>> {
        let mask = attr(Ifla::ExtMask, RTEXT_FILTER_BRVLAN)?;
        let msg = build(
            base(0).ifi_family(RtAddrFamily::from(AF_BRIDGE)),
            vec![mask],
        )?;
        let v = self.request(Rtm::Getlink, NlmF::DUMP, msg, || {
            "failed to list bridge vlans".into()
        })?;
        let mut out = Vec::new();
        for m in v.iter().filter(|m| *m.ifi_index() as u32 == index) {
            for a in m.rtattrs().iter() {
                if u16::from(*a.rta_type()) & 0x3fff != IFLA_AF_SPEC {
                    continue;
                }
                for (ty, p) in parse_nested(a.rta_payload().as_ref()) {
                    if ty == IFLA_BRIDGE_VLAN_INFO && p.len() >= 4 {
                        out.push((
                            u16::from_ne_bytes([p[2], p[3]]),
                            u16::from_ne_bytes([p[0], p[1]]),
                        ));
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Nl {
    /// The link of the first main-table default route (IPv4 before IPv6, the order of
    /// an AF_UNSPEC dump, as the reference's master auto-detection walks it); routes
    /// without an output device (unreachable, multipath) are skipped. `Ok(None)` if
    /// there is none.
    pub fn default_route_link(&self) -> Result<Option<Link>> {
        for v6 in [false, true] {
            let routes = self.routes(v6, super::route::RT_TABLE_MAIN)?;
            if let Some(r) = routes.iter().find(|r| r.is_default() && r.oif != 0) {
                return self.link(LinkId::Index(r.oif));
            }
        }
        Ok(None)
    }
}

/// The link attributes the tuning plugin reads, saves and restores: a separate query so
/// [`Link`] stays as small as the main plugins need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkSettings {
    pub index: u32,
    pub name: String,
    /// ARPHRD_* (1 = Ethernet).
    pub arptype: u16,
    /// As the kernel reports them: IFF_PROMISC and IFF_ALLMULTI here are the
    /// user-requested flags (dev_get_flags), not the effective promiscuity.
    pub flags: u32,
    pub mtu: u32,
    /// The MTU range the driver accepts (0 = the kernel did not say).
    pub min_mtu: u32,
    pub max_mtu: u32,
    pub txqlen: u32,
    /// The hardware address, any length (6 bytes for Ethernet, 20 for InfiniBand).
    pub hwaddr: Vec<u8>,
}

impl LinkSettings {
    pub fn promisc(&self) -> bool {
        self.flags & libc::IFF_PROMISC as u32 != 0
    }

    pub fn allmulti(&self) -> bool {
        self.flags & libc::IFF_ALLMULTI as u32 != 0
    }

    /// The address as `ip link` and Go's `HardwareAddr.String()` print it.
    pub fn mac(&self) -> String {
        mac_string(&self.hwaddr)
    }

    fn from_msg(m: &Ifinfomsg) -> LinkSettings {
        let mut l = LinkSettings {
            index: *m.ifi_index() as u32,
            arptype: u16::from(*m.ifi_type()),
            flags: u32::from(*m.ifi_flags()),
            ..Default::default()
        };
        for a in m.rtattrs().iter() {
            let p: &[u8] = a.rta_payload().as_ref();
            match u16::from(*a.rta_type()) {
                t if t == u16::from(Ifla::Ifname) => l.name = cstr(p),
                t if t == u16::from(Ifla::Mtu) => l.mtu = u32_of(p),
                t if t == u16::from(Ifla::MinMtu) => l.min_mtu = u32_of(p),
                t if t == u16::from(Ifla::MaxMtu) => l.max_mtu = u32_of(p),
                t if t == u16::from(Ifla::Txqlen) => l.txqlen = u32_of(p),
                t if t == u16::from(Ifla::Address) => l.hwaddr = p.to_vec(),
                _ => {}
            }
        }
        l
    }
}

impl Nl {
    /// [`LinkSettings`] of a link; `Ok(None)` if it does not exist.
    pub fn link_settings(&self, id: LinkId) -> Result<Option<LinkSettings>> {
        let (index, attrs) = id_attrs(&id)?;
        let msg = build(base(index), attrs)?;
        match self.request(Rtm::Getlink, NlmF::empty(), msg, || {
            format!("failed to look up link {id}")
        }) {
            Ok(v) => Ok(v.first().map(LinkSettings::from_msg)),
            Err(e) if matches!(super::errno(&e), Some(libc::ENODEV)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Set the hardware address, of whatever length the device uses.
    pub fn set_hwaddr(&self, index: u32, addr: &[u8]) -> Result<()> {
        self.set(
            index,
            base(index),
            vec![attr(Ifla::Address, Buffer::from(addr.to_vec()))?],
            "mac",
        )
    }

    /// Set or clear IFF_ALLMULTI (like `ip link set allmulticast on|off`).
    pub fn set_allmulti(&self, index: u32, on: bool) -> Result<()> {
        let b = base(index).ifi_change(Iff::ALLMULTI);
        let b = if on {
            b.ifi_flags(Iff::ALLMULTI)
        } else {
            b.ifi_flags(Iff::empty())
        };
        self.set(index, b, vec![], "allmulticast")
    }

    /// Set the transmit queue length (`ip link set txqueuelen`).
    pub fn set_txqlen(&self, index: u32, qlen: u32) -> Result<()> {
        self.set(
            index,
            base(index),
            vec![attr(Ifla::Txqlen, qlen)?],
            "txqlen",
        )
    }
}

/// Fuzzing: read arbitrary bytes as a link of a dump (see `netlink::fuzz_reply`).
#[doc(hidden)]
pub fn fuzz_payload(b: &[u8]) {
    use neli::FromBytesWithInput;
    if let Ok(m) = Ifinfomsg::from_bytes_with_input(&mut std::io::Cursor::new(b), b.len()) {
        let _ = Link::from_msg(&m);
    }
}

// ---------------------------------------------------------------------------------------
// host-device, dummy and tap (issue 18): kept in their own block to ease merging.

impl Nl {
    /// Remove a link's alias: an empty IFLA_IFALIAS clears it (the kernel stores a
    /// zero-length alias as none, and stops reporting the attribute).
    pub fn clear_alias(&self, index: u32) -> Result<()> {
        self.set(
            index,
            base(index),
            vec![attr(Ifla::Ifalias, Buffer::from(Vec::new()))?],
            "alias",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("0a:58:0A:f4:01:05").unwrap(),
            [0x0a, 0x58, 0x0a, 0xf4, 1, 5]
        );
        assert!(parse_mac("0a:58:0a:f4:01").is_err());
        assert!(parse_mac("zz:58:0a:f4:01:05").is_err());
    }

    /// Encode kind data the way the kernel would echo it back, and decode it.
    fn round_trip(k: &KindData) -> Option<KindData> {
        let mut bytes = Vec::new();
        for a in k.attrs().unwrap() {
            let mut buf = std::io::Cursor::new(Vec::new());
            neli::ToBytes::to_bytes(&a, &mut buf).unwrap();
            let mut b = buf.into_inner();
            while b.len() % 4 != 0 {
                b.push(0);
            }
            bytes.extend(b);
        }
        KindData::parse(k.kind(), &bytes)
    }

    #[test]
    fn kind_data_round_trips() {
        let cases = [
            KindData::Macvlan(Macvlan {
                mode: MacvlanMode::Source,
                flags: 1,
                bc_queue_len: Some(42),
                source_macs: vec![[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]],
            }),
            KindData::Macvlan(Macvlan::default()),
            KindData::Ipvlan(Ipvlan {
                mode: IpvlanMode::L3s,
                flags: IPVLAN_F_PRIVATE,
            }),
            KindData::Vlan(Vlan {
                id: 4094,
                protocol: VlanProtocol::Dot1Ad,
            }),
            KindData::Vlan(Vlan {
                id: 1,
                protocol: VlanProtocol::Dot1Q,
            }),
            KindData::Vrf { table: 1001 },
            KindData::Ifb,
        ];
        for k in cases {
            assert_eq!(round_trip(&k).as_ref(), Some(&k), "{k:?}");
        }
    }

    #[test]
    fn wire_values() {
        // The numbers the kernel expects (if_link.h), not just a consistent round trip.
        let a = KindData::Macvlan(Macvlan::default()).attrs().unwrap();
        assert_eq!(*a[0].rta_type(), 1);
        assert_eq!(a[0].rta_payload().as_ref(), &4u32.to_ne_bytes()[..]);
        let a = KindData::Ipvlan(Ipvlan::default()).attrs().unwrap();
        assert_eq!(a[0].rta_payload().as_ref(), &0u16.to_ne_bytes()[..]);
        let a = KindData::Vlan(Vlan {
            id: 7,
            protocol: VlanProtocol::Dot1Ad,
        })
        .attrs()
        .unwrap();
        assert_eq!(a[0].rta_payload().as_ref(), &7u16.to_ne_bytes()[..]);
        assert_eq!(*a[1].rta_type(), 5);
        assert_eq!(a[1].rta_payload().as_ref(), &[0x88, 0xa8][..]);
        for name in MacvlanMode::NAMES {
            assert_eq!(MacvlanMode::from_name(name).unwrap().name(), *name);
        }
        for name in IpvlanMode::NAMES {
            assert_eq!(IpvlanMode::from_name(name).unwrap().name(), *name);
        }
    }
}
