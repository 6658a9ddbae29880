//! Routes: add (create or replace), delete, list.

use super::addr::ip_from;
use super::{attr, u32_of, Nl};
use anyhow::{anyhow, Result};
use ipnet::IpNet;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, Rtn, Rtprot};
use neli::rtnl::{Rtmsg, RtmsgBuilder};
use neli::types::{Buffer, RtBuffer};
use std::fmt;
use std::net::IpAddr;

pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RT_SCOPE_HOST: u8 = 254;
pub const RT_TABLE_MAIN: u32 = 254;

/// A route to install or one read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination; the prefix is what matters (host bits are cleared on send).
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// Output interface index (0 = let the kernel choose through `gw`).
    pub oif: u32,
    pub src: Option<IpAddr>,
    pub table: u32,
    pub scope: u8,
    pub priority: u32,
    pub protocol: u8,
    /// RTN_* (1 = unicast, 2 = local, ...).
    pub kind: u8,
}

impl RouteSpec {
    /// A main-table unicast route, universe scope (link scope without a gateway for
    /// IPv4, like Go's netlink does when adding device routes).
    pub fn new(dst: IpNet, gw: Option<IpAddr>, oif: u32) -> RouteSpec {
        RouteSpec {
            dst,
            gw,
            oif,
            src: None,
            table: RT_TABLE_MAIN,
            scope: RT_SCOPE_UNIVERSE,
            priority: 0,
            protocol: 3,
            kind: 1,
        }
    }

    pub fn is_default(&self) -> bool {
        self.dst.prefix_len() == 0
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst.trunc())?;
        if let Some(gw) = self.gw {
            write!(f, " via {gw}")?;
        }
        if self.oif != 0 {
            write!(f, " dev ifindex {}", self.oif)?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

fn ip_bytes(ip: IpAddr) -> Buffer {
    match ip {
        IpAddr::V4(a) => Buffer::from(a.octets().to_vec()),
        IpAddr::V6(a) => Buffer::from(a.octets().to_vec()),
    }
}

fn fam(v6: bool) -> RtAddrFamily {
    if v6 {
        RtAddrFamily::Inet6
    } else {
        RtAddrFamily::Inet
    }
}

fn msg(r: &RouteSpec, for_delete: bool) -> Result<Rtmsg> {
    let v6 = r.dst.addr().is_ipv6();
    let mut attrs = Vec::new();
    if r.dst.prefix_len() > 0 {
        attrs.push(attr(Rta::Dst, ip_bytes(r.dst.trunc().addr()))?);
    }
    if let Some(gw) = r.gw {
        attrs.push(attr(Rta::Gateway, ip_bytes(gw))?);
    }
    if r.oif != 0 {
        attrs.push(attr(Rta::Oif, r.oif)?);
    }
    if let Some(src) = r.src {
        attrs.push(attr(Rta::Prefsrc, ip_bytes(src))?);
    }
    if r.priority != 0 {
        attrs.push(attr(Rta::Priority, r.priority)?);
    }
    attrs.push(attr(Rta::Table, r.table)?);
    let table = if r.table < 256 {
        RtTable::from(r.table as u8)
    } else {
        RtTable::Unspec
    };
    RtmsgBuilder::default()
        .rtm_family(fam(v6))
        .rtm_dst_len(r.dst.prefix_len())
        .rtm_src_len(0)
        .rtm_tos(0)
        .rtm_table(table)
        .rtm_protocol(if for_delete {
            Rtprot::Unspec
        } else {
            Rtprot::from(r.protocol)
        })
        .rtm_scope(if for_delete {
            RtScope::Nowhere
        } else {
            RtScope::from(r.scope)
        })
        .rtm_type(if for_delete {
            Rtn::Unspec
        } else {
            Rtn::from(r.kind)
        })
        .rtattrs(RtBuffer::from_iter(attrs))
        .build()
        .map_err(|e| anyhow!("cannot build route message: {e}"))
}

impl Nl {
    /// Add a route. Like the reference (`NLM_F_CREATE` without `EXCL`), a second route to
    /// the same prefix through another gateway is accepted; an identical one is EEXIST.
    pub fn add_route(&self, r: &RouteSpec) -> Result<()> {
        let m = msg(r, false)?;
        self.request(Rtm::Newroute, NlmF::CREATE, m, || {
            format!("failed to add route {r}")
        })?;
        Ok(())
    }

    /// Add or replace.
    pub fn replace_route(&self, r: &RouteSpec) -> Result<()> {
        let m = msg(r, false)?;
        self.request(Rtm::Newroute, NlmF::CREATE | NlmF::REPLACE, m, || {
            format!("failed to replace route {r}")
        })?;
        Ok(())
    }

    pub fn del_route(&self, r: &RouteSpec) -> Result<()> {
        let m = msg(r, true)?;
        self.request(Rtm::Delroute, NlmF::empty(), m, || {
            format!("failed to delete route {r}")
        })?;
        Ok(())
    }

    /// Routes of one family in `table` (0 = all tables).
    pub fn routes(&self, v6: bool, table: u32) -> Result<Vec<RouteSpec>> {
        let req = RtmsgBuilder::default()
            .rtm_family(fam(v6))
            .rtm_dst_len(0)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Unspec)
            .rtm_protocol(Rtprot::Unspec)
            .rtm_scope(RtScope::Universe)
            .rtm_type(Rtn::Unspec)
            .build()
            .map_err(|e| anyhow!("cannot build route dump: {e}"))?;
        let v = self.request(Rtm::Getroute, NlmF::DUMP, req, || {
            "failed to list routes".into()
        })?;
        let mut out = Vec::new();
        for m in &v {
            let r = RouteSpec::from_msg(m, v6)?;
            if table == 0 || r.table == table {
                out.push(r);
            }
        }
        Ok(out)
    }
}

impl RouteSpec {
    /// A route of a dump. A destination whose prefix length does not fit its family
    /// is an error (the kernel never sends one).
    fn from_msg(m: &Rtmsg, v6: bool) -> Result<RouteSpec> {
        let any = if v6 {
            IpAddr::from([0u8; 16])
        } else {
            IpAddr::from([0u8; 4])
        };
        let mut r = RouteSpec {
            dst: IpNet::new(any, 0).map_err(|e| anyhow!("{e}"))?,
            gw: None,
            oif: 0,
            src: None,
            table: u8::from(*m.rtm_table()) as u32,
            scope: u8::from(*m.rtm_scope()),
            priority: 0,
            protocol: u8::from(*m.rtm_protocol()),
            kind: u8::from(*m.rtm_type()),
        };
        let mut dst = None;
        for a in m.rtattrs().iter() {
            let p: &[u8] = a.rta_payload().as_ref();
            match *a.rta_type() {
                Rta::Dst => dst = ip_from(p),
                Rta::Gateway => r.gw = ip_from(p),
                Rta::Oif => r.oif = u32_of(p),
                Rta::Prefsrc => r.src = ip_from(p),
                Rta::Priority => r.priority = u32_of(p),
                Rta::Table => r.table = u32_of(p),
                _ => {}
            }
        }
        if let Some(d) = dst {
            r.dst = IpNet::new(d, *m.rtm_dst_len()).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(r)
    }
}

/// Fuzzing: read arbitrary bytes as a route of a dump (see `netlink::fuzz_reply`).
#[doc(hidden)]
pub fn fuzz_payload(b: &[u8]) {
    use neli::FromBytesWithInput;
    if let Ok(m) = Rtmsg::from_bytes_with_input(&mut std::io::Cursor::new(b), b.len()) {
        let _ = RouteSpec::from_msg(&m, false);
        let _ = RouteSpec::from_msg(&m, true);
    }
}
