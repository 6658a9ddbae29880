//! Links: get, list, create (veth pairs across namespaces, bridges, any kind), delete,
//! and the setters plugins need (up/down, mtu, mac, name, master, netns, promisc),
//! plus bridge-port flags and VLAN entries.

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
                t if t == u16::from(Ifla::Linkinfo) => {
                    for (ty, v) in parse_nested(p) {
                        if ty == u16::from(IflaInfo::Kind) {
                            l.kind = cstr(v);
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// A link to create. `peer` makes a veth pair; `data` is IFLA_INFO_DATA for the kind.
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
        let mut info = attr(Ifla::Linkinfo, Buffer::from(Vec::new()))?;
        info = info
            .nest(&attr(IflaInfo::Kind, nl.kind)?)
            .map_err(|e| anyhow!("{e}"))?;
        let mut data: Vec<Rtattr<u16, Buffer>> = Vec::new();
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
        let msg = build(base(0), attrs)?;
        self.request(Rtm::Newlink, NlmF::CREATE | NlmF::EXCL, msg, || {
            format!("failed to create {} link {:?}", nl.kind, nl.name)
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
}
