//! FIB rules (`ip rule`): add, delete, list. Values from include/uapi/linux/fib_rules.h.

use super::addr::ip_from;
use super::{parse_nested, u32_of, Expect, Nl};
use anyhow::Result;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;

const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;

/// One rule: `from <src> lookup <table>` (the only kind the plugins make), as read back
/// or to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub v6: bool,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub table: u32,
    /// `pref`; `None` when adding lets the kernel choose (just above the main rule).
    pub priority: Option<u32>,
    /// FR_ACT_* (1 = lookup a table).
    pub action: u8,
}

impl Rule {
    /// `from <src> lookup <table>`.
    pub fn from_src(src: IpNet, table: u32) -> Rule {
        Rule {
            v6: src.addr().is_ipv6(),
            src: Some(src),
            dst: None,
            table,
            priority: None,
            action: FR_ACT_TO_TBL,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.priority {
            write!(f, "{p}: ")?;
        }
        match self.src {
            Some(s) => write!(f, "from {s}")?,
            None => write!(f, "from all")?,
        }
        if let Some(d) = self.dst {
            write!(f, " to {d}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

fn tlv(out: &mut Vec<u8>, ty: u16, v: &[u8]) {
    out.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(v);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn ip_vec(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `struct fib_rule_hdr` and the attributes.
fn encode(r: &Rule) -> Vec<u8> {
    let family = if r.v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    let table8 = if r.table < 256 { r.table as u8 } else { 0 };
    let mut m = vec![
        family,
        r.dst.map_or(0, |d| d.prefix_len()),
        r.src.map_or(0, |s| s.prefix_len()),
        0, // tos
        table8,
        0,
        0,
        r.action,
    ];
    m.extend_from_slice(&0u32.to_ne_bytes()); // flags
    if let Some(d) = r.dst {
        tlv(&mut m, FRA_DST, &ip_vec(d.trunc().addr()));
    }
    if let Some(s) = r.src {
        tlv(&mut m, FRA_SRC, &ip_vec(s.trunc().addr()));
    }
    if let Some(p) = r.priority {
        tlv(&mut m, FRA_PRIORITY, &p.to_ne_bytes());
    }
    tlv(&mut m, FRA_TABLE, &r.table.to_ne_bytes());
    m
}

fn parse(p: &[u8]) -> Option<Rule> {
    if p.len() < 12 {
        return None;
    }
    let v6 = p[0] as i32 == libc::AF_INET6;
    let mut r = Rule {
        v6,
        src: None,
        dst: None,
        table: p[4] as u32,
        priority: None,
        action: p[7],
    };
    for (ty, v) in parse_nested(&p[12..]) {
        match ty {
            FRA_SRC => r.src = ip_from(v).and_then(|ip| IpNet::new(ip, p[2]).ok()),
            FRA_DST => r.dst = ip_from(v).and_then(|ip| IpNet::new(ip, p[1]).ok()),
            FRA_PRIORITY => r.priority = Some(u32_of(v)),
            FRA_TABLE => r.table = u32_of(v),
            _ => {}
        }
    }
    Some(r)
}

/// Fuzzing: read arbitrary bytes as a rule of a dump.
#[doc(hidden)]
pub fn fuzz_payload(b: &[u8]) {
    let _ = parse(b);
}

impl Nl {
    fn rule_request(
        &self,
        ty: u16,
        flags: u16,
        payload: Vec<u8>,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<Vec<u8>>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        let expect = if dump { Expect::Dump } else { Expect::Ack };
        self.sock.exchange(
            expect,
            &|seq| Ok(super::frame(ty, flags, seq, &payload)),
            op,
        )
    }

    /// Add a rule; an identical one is EEXIST (like the Go netlink library's RuleAdd).
    pub fn add_rule(&self, r: &Rule) -> Result<()> {
        self.rule_request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, encode(r), &|| {
            format!("failed to add rule {r}")
        })?;
        Ok(())
    }

    /// Delete the rule matching `r` (its priority too, when set).
    pub fn del_rule(&self, r: &Rule) -> Result<()> {
        self.rule_request(RTM_DELRULE, 0, encode(r), &|| {
            format!("failed to delete rule {r}")
        })?;
        Ok(())
    }

    /// Every rule of both families.
    pub fn rules(&self) -> Result<Vec<Rule>> {
        let mut m = vec![libc::AF_UNSPEC as u8, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&0u32.to_ne_bytes());
        let items = self.rule_request(RTM_GETRULE, NLM_F_DUMP, m, &|| {
            "failed to list rules".into()
        })?;
        Ok(items.iter().filter_map(|p| parse(p)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_reads_back_as_sent() {
        let mut r = Rule::from_src("10.1.2.3/32".parse().unwrap(), 5000);
        r.priority = Some(32765);
        assert_eq!(parse(&encode(&r)), Some(r));
        let r = Rule::from_src("fd00::5/128".parse().unwrap(), 100);
        let back = parse(&encode(&r)).unwrap();
        assert!(back.v6);
        assert_eq!((back.src, back.table), (r.src, 100));
        fuzz_payload(&[1, 2, 3]);
    }
}
