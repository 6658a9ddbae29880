//! Interface addresses: add, delete, list.

use super::{attr, u32_of, Nl};
use anyhow::{anyhow, Result};
use ipnet::IpNet;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Ifa, IfaF, RtAddrFamily, RtScope, Rtm};
use neli::rtnl::{Ifaddrmsg, IfaddrmsgBuilder};
use neli::types::{Buffer, RtBuffer};
use std::net::IpAddr;

pub const IFA_LABEL: u16 = 3;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_PERMANENT: u32 = 0x80;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    /// Address with prefix length (host bits kept).
    pub net: IpNet,
    pub scope: u8,
    /// Full 32-bit flags (IFA_FLAGS when present).
    pub flags: u32,
    /// IPv4 point-to-point peer (IFA_ADDRESS when it differs from IFA_LOCAL).
    pub peer: Option<IpAddr>,
    /// IPv4 broadcast address as set (IFA_BROADCAST), which need not be the computed one.
    pub broadcast: Option<IpAddr>,
    /// IPv4 label (IFA_LABEL), e.g. `eth1:vip`; empty when it is just the link name.
    pub label: String,
}

/// An address to add with everything a dump reports about it, so a saved address can
/// be put back exactly (host-device's DEL). [`Nl::add_addr`] is the common case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrSpec {
    pub net: IpNet,
    pub flags: u32,
    pub scope: u8,
    pub peer: Option<IpAddr>,
    pub broadcast: Broadcast,
    pub label: String,
}

/// The IPv4 broadcast address to give an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broadcast {
    /// The subnet's, for prefixes shorter than /31 without a peer (what IPAM results
    /// get, like the reference's `ip addr add ... brd +`).
    Computed,
    /// None at all (an address added without `brd`).
    Unset,
    Addr(IpAddr),
}

impl AddrSpec {
    pub fn new(net: IpNet, flags: u32) -> AddrSpec {
        AddrSpec {
            net,
            flags,
            scope: RT_SCOPE_UNIVERSE,
            peer: None,
            broadcast: Broadcast::Computed,
            label: String::new(),
        }
    }
}

const RT_SCOPE_UNIVERSE: u8 = 0;

impl Addr {
    pub fn is_tentative(&self) -> bool {
        self.flags & IFA_F_TENTATIVE != 0
    }
    pub fn dad_failed(&self) -> bool {
        self.flags & IFA_F_DADFAILED != 0
    }
    /// Global unicast, as Go's `IsGlobalUnicast` decides for DEL's address collection.
    pub fn is_global_unicast(&self) -> bool {
        match self.net.addr() {
            IpAddr::V4(a) => {
                !(a.is_loopback()
                    || a.is_link_local()
                    || a.is_multicast()
                    || a.is_broadcast()
                    || a.is_unspecified())
            }
            IpAddr::V6(a) => {
                !(a.is_loopback()
                    || a.is_multicast()
                    || a.is_unspecified()
                    || (a.segments()[0] & 0xffc0) == 0xfe80)
            }
        }
    }
}

fn family(ip: &IpAddr) -> RtAddrFamily {
    match ip {
        IpAddr::V4(_) => RtAddrFamily::Inet,
        IpAddr::V6(_) => RtAddrFamily::Inet6,
    }
}

fn ip_bytes(ip: &IpAddr) -> Buffer {
    match ip {
        IpAddr::V4(a) => Buffer::from(a.octets().to_vec()),
        IpAddr::V6(a) => Buffer::from(a.octets().to_vec()),
    }
}

pub(crate) fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from([b[0], b[1], b[2], b[3]])),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}

fn msg(index: u32, a: &AddrSpec) -> Result<Ifaddrmsg> {
    let (net, flags) = (&a.net, a.flags);
    let ip = net.addr();
    let mut attrs = vec![attr(Ifa::Local, ip_bytes(&ip))?];
    // IFA_ADDRESS is the peer for point-to-point links; for ordinary ones the kernel
    // wants it equal to IFA_LOCAL, as iproute2 sends it.
    attrs.push(attr(Ifa::Address, ip_bytes(&a.peer.unwrap_or(ip)))?);
    if let IpNet::V4(n) = net {
        match a.broadcast {
            Broadcast::Addr(b) => attrs.push(attr(Ifa::Broadcast, ip_bytes(&b))?),
            Broadcast::Computed if n.prefix_len() < 31 && a.peer.is_none() => attrs.push(attr(
                Ifa::Broadcast,
                Buffer::from(n.broadcast().octets().to_vec()),
            )?),
            Broadcast::Computed | Broadcast::Unset => {}
        }
        if !a.label.is_empty() {
            attrs.push(attr(Ifa::from(IFA_LABEL), a.label.as_str())?);
        }
    }
    if flags != 0 {
        attrs.push(attr(Ifa::from(IFA_FLAGS), flags)?);
    }
    IfaddrmsgBuilder::default()
        .ifa_family(family(&ip))
        .ifa_prefixlen(net.prefix_len())
        .ifa_flags(IfaF::from((flags & 0xff) as u8))
        .ifa_scope(RtScope::from(a.scope))
        .ifa_index(index)
        .rtattrs(RtBuffer::from_iter(attrs))
        .build()
        .map_err(|e| anyhow!("cannot build address message: {e}"))
}

impl Nl {
    /// Add `net` to link `index`. `flags` are IFA_F_* (e.g. NODAD).
    pub fn add_addr(&self, index: u32, net: &IpNet, flags: u32) -> Result<()> {
        self.add_addr_spec(index, &AddrSpec::new(*net, flags))
    }

    /// Add an address with its scope, peer, broadcast and label as given.
    pub fn add_addr_spec(&self, index: u32, a: &AddrSpec) -> Result<()> {
        let net = &a.net;
        let m = msg(index, a)?;
        self.request(Rtm::Newaddr, NlmF::CREATE | NlmF::EXCL, m, || {
            format!("failed to add IP addr {net} to ifindex {index}")
        })?;
        Ok(())
    }

    pub fn del_addr(&self, index: u32, net: &IpNet) -> Result<()> {
        let m = msg(index, &AddrSpec::new(*net, 0))?;
        self.request(Rtm::Deladdr, NlmF::empty(), m, || {
            format!("failed to delete IP addr {net} from ifindex {index}")
        })?;
        Ok(())
    }

    /// Addresses of link `index` (0 = all links), of one family or both (`None`).
    pub fn addrs(&self, index: u32, v6: Option<bool>) -> Result<Vec<Addr>> {
        let fam = match v6 {
            None => RtAddrFamily::Unspecified,
            Some(false) => RtAddrFamily::Inet,
            Some(true) => RtAddrFamily::Inet6,
        };
        let req = IfaddrmsgBuilder::default()
            .ifa_family(fam)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(index)
            .build()
            .map_err(|e| anyhow!("cannot build address dump: {e}"))?;
        let v = self.request(Rtm::Getaddr, NlmF::DUMP, req, || {
            "failed to list addresses".into()
        })?;
        Ok(v.iter()
            .filter(|m| index == 0 || *m.ifa_index() == index)
            .filter_map(Addr::from_msg)
            .collect())
    }
}

impl Addr {
    /// An address of a dump; `None` for one without an address or with a prefix length
    /// that does not fit it.
    fn from_msg(m: &Ifaddrmsg) -> Option<Addr> {
        let mut local = None;
        let mut address = None;
        let mut broadcast = None;
        let mut label = String::new();
        let mut flags = u8::from(*m.ifa_flags()) as u32;
        for a in m.rtattrs().iter() {
            let p: &[u8] = a.rta_payload().as_ref();
            match u16::from(*a.rta_type()) {
                t if t == u16::from(Ifa::Local) => local = ip_from(p),
                t if t == u16::from(Ifa::Address) => address = ip_from(p),
                t if t == u16::from(Ifa::Broadcast) => broadcast = ip_from(p),
                IFA_LABEL => label = super::cstr(p),
                IFA_FLAGS => flags = u32_of(p),
                _ => {}
            }
        }
        let net = IpNet::new(local.or(address)?, *m.ifa_prefixlen()).ok()?;
        // IPv6 reports the address in IFA_ADDRESS alone; only an IPv4 IFA_ADDRESS that
        // differs from IFA_LOCAL is a peer.
        let peer = address.filter(|a| local.is_some_and(|l| l != *a));
        Some(Addr {
            index: *m.ifa_index(),
            net,
            scope: u8::from(*m.ifa_scope()),
            flags,
            peer,
            broadcast,
            label,
        })
    }
}

/// Fuzzing: read arbitrary bytes as an address of a dump (see `netlink::fuzz_reply`).
#[doc(hidden)]
pub fn fuzz_payload(b: &[u8]) {
    use neli::FromBytesWithInput;
    if let Ok(m) = Ifaddrmsg::from_bytes_with_input(&mut std::io::Cursor::new(b), b.len()) {
        let _ = Addr::from_msg(&m);
    }
}
