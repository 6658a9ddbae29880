//! nf_tables over nfnetlink: the few objects the plugins need (tables, chains, rules
//! built from meta/payload/cmp/bitwise/immediate/masq expressions, rule comments), sent
//! as one atomic batch, and rule listing by chain. Both go through the shared transport
//! ([`super::Socket`]: bounded receives, checked sequence numbers, retried dumps,
//! extended acks), and an error names the attribute the kernel blamed.
//!
//! Rules are encoded exactly as `nft` encodes the same text (compare
//! `nft --debug=netlink`), so `nft list ruleset` prints them identically and the Go
//! plugins (which read rules back through `nft -j`) find and delete them.
//! nf_tables integers are big-endian on the wire.

use super::{attr, cstr, frame, Expect, Socket};
use anyhow::{anyhow, Result};
use neli::consts::socket::NlFamily;
use neli::rtnl::Rtattr;
use neli::types::Buffer;
use neli::ToBytes;
use std::io::Cursor;
use std::net::IpAddr;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_CHAIN_USERDATA: u16 = 12;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

/// Address families of nf_tables objects.
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_BRIDGE: u8 = 7;
pub const NFPROTO_IPV6: u8 = 10;

/// Netfilter hooks.
pub const NF_INET_PRE_ROUTING: u32 = 0;
pub const NF_INET_POST_ROUTING: u32 = 4;

/// Verdicts.
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

/// One expression of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `meta load <key> => reg 1` (15 = nfproto, 6 = iifname)
    Meta(u32),
    /// `payload load <len>b @ <base> header + <offset> => reg 1` (base 0 = link, 1 = network)
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    /// `cmp <eq|neq> reg 1 <data>`
    Cmp {
        neq: bool,
        data: Vec<u8>,
    },
    /// bitwise reg 1 = (reg 1 & mask) ^ 0
    Mask(Vec<u8>),
    /// `immediate reg 0 <verdict> [-> chain]`
    Verdict(i32, Option<String>),
    Masq,
}

impl Expr {
    /// The kernel's name of the expression.
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Meta(_) => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Mask(_) => "bitwise",
            Expr::Verdict(..) => "immediate",
            Expr::Masq => "masq",
        }
    }

    fn encode(&self) -> Result<Rtattr<u16, Buffer>> {
        let be = |v: u32| Buffer::from(v.to_be_bytes().to_vec());
        let value = |d: &[u8]| -> Result<Rtattr<u16, Buffer>> {
            nested(3, &[attr(NFTA_DATA_VALUE, Buffer::from(d.to_vec()))?])
        };
        let data: Vec<Rtattr<u16, Buffer>> = match self {
            Expr::Meta(key) => vec![attr(2, be(*key))?, attr(1, be(NFT_REG_1))?],
            Expr::Payload { base, offset, len } => vec![
                attr(1, be(NFT_REG_1))?,
                attr(2, be(*base))?,
                attr(3, be(*offset))?,
                attr(4, be(*len))?,
            ],
            Expr::Cmp { neq, data } => vec![
                attr(1, be(NFT_REG_1))?,
                attr(2, be(*neq as u32))?,
                value(data)?,
            ],
            Expr::Mask(mask) => {
                let zero = vec![0u8; mask.len()];
                let m = nested(4, &[attr(NFTA_DATA_VALUE, Buffer::from(mask.clone()))?])?;
                let x = nested(5, &[attr(NFTA_DATA_VALUE, Buffer::from(zero))?])?;
                vec![
                    attr(1, be(NFT_REG_1))?,
                    attr(2, be(NFT_REG_1))?,
                    attr(3, be(mask.len() as u32))?,
                    m,
                    x,
                ]
            }
            Expr::Verdict(code, chain) => {
                let mut v = vec![attr(
                    NFTA_VERDICT_CODE,
                    Buffer::from(code.to_be_bytes().to_vec()),
                )?];
                if let Some(c) = chain {
                    v.push(attr(NFTA_VERDICT_CHAIN, c.as_str())?);
                }
                let d = nested(2, &[nested(NFTA_DATA_VERDICT, &v)?])?;
                vec![attr(1, be(NFT_REG_VERDICT))?, d]
            }
            Expr::Masq => vec![],
        };
        let mut elem = vec![attr(NFTA_EXPR_NAME, self.name())?];
        if !data.is_empty() {
            elem.push(nested(NFTA_EXPR_DATA, &data)?);
        }
        nested(NFTA_LIST_ELEM, &elem)
    }
}

/// `ip[6] saddr|daddr ==|!= <prefix>` the way nft compiles it: an nfproto check (once
/// per rule: nft drops a repeated dependency), a load of the bytes the prefix covers, a
/// mask for a partial last byte, and a compare.
pub fn match_addr(net: &ipnet::IpNet, src: bool, neq: bool, out: &mut Vec<Expr>) {
    let (proto, offset, bytes) = match net.addr() {
        IpAddr::V4(a) => (NFPROTO_IPV4, if src { 12 } else { 16 }, a.octets().to_vec()),
        IpAddr::V6(a) => (NFPROTO_IPV6, if src { 8 } else { 24 }, a.octets().to_vec()),
    };
    let check = [
        Expr::Meta(15),
        Expr::Cmp {
            neq: false,
            data: vec![proto],
        },
    ];
    if !out.windows(2).any(|w| w == check) {
        out.extend(check);
    }
    let plen = net.prefix_len() as usize;
    if plen.is_multiple_of(8) {
        // byte-aligned: compare just the bytes the prefix covers
        out.push(Expr::Payload {
            base: 1,
            offset,
            len: (plen / 8) as u32,
        });
        out.push(Expr::Cmp {
            neq,
            data: bytes[..plen / 8].to_vec(),
        });
        return;
    }
    // otherwise: the whole address, masked
    let mut mask = vec![0u8; bytes.len()];
    for (i, m) in mask.iter_mut().enumerate() {
        let bits = plen.saturating_sub(i * 8).min(8);
        *m = if bits == 0 { 0 } else { 0xff << (8 - bits) };
    }
    let data: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
    out.push(Expr::Payload {
        base: 1,
        offset,
        len: bytes.len() as u32,
    });
    out.push(Expr::Mask(mask));
    out.push(Expr::Cmp { neq, data });
}

/// `iifname "<name>"`: the name NUL-padded to IFNAMSIZ, as nft compares it.
pub fn match_iifname(name: &str, out: &mut Vec<Expr>) {
    let mut data = name.as_bytes().to_vec();
    data.resize(16, 0);
    out.push(Expr::Meta(6));
    out.push(Expr::Cmp { neq: false, data });
}

fn nested(ty: u16, children: &[Rtattr<u16, Buffer>]) -> Result<Rtattr<u16, Buffer>> {
    super::nest(ty | NLA_F_NESTED, children)
}

/// A comment as nftables stores it: userdata TLV type 0, NUL-terminated.
fn comment_udata(c: &str) -> Buffer {
    let mut v = vec![0u8, (c.len() + 1) as u8];
    v.extend_from_slice(c.as_bytes());
    v.push(0);
    Buffer::from(v)
}

fn udata_comment(b: &[u8]) -> String {
    let mut rest = b;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let Some(v) = rest.get(2..2 + len) else { break };
        if ty == 0 {
            return cstr(v);
        }
        rest = &rest[2 + len..];
    }
    String::new()
}

/// One message of a batch: nfgenmsg header + attributes.
fn payload(family: u8, attrs: &[Rtattr<u16, Buffer>]) -> Result<Buffer> {
    let mut out = vec![family, 0, 0, 0];
    for a in attrs {
        let mut c = Cursor::new(Vec::new());
        a.to_bytes(&mut c)
            .map_err(|e| anyhow!("cannot encode nf_tables attribute: {e}"))?;
        out.extend_from_slice(c.get_ref());
        // attributes are 4-byte aligned
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    Ok(Buffer::from(out))
}

/// A chain to declare (`add chain`): a regular chain, or a base chain with a hook.
pub struct ChainSpec<'a> {
    pub name: &'a str,
    pub comment: Option<&'a str>,
    /// (type "nat"/"filter", hook, priority, policy accept?)
    pub base: Option<(&'a str, u32, i32)>,
}

/// A transaction: declare objects, flush chains, add and delete rules; committed as one
/// nfnetlink batch (all or nothing).
pub struct Batch {
    family: u8,
    table: String,
    msgs: Vec<(u16, u16, Buffer)>,
}

impl Batch {
    pub fn new(family: u8, table: &str) -> Batch {
        Batch {
            family,
            table: table.to_string(),
            msgs: Vec::new(),
        }
    }

    fn push(&mut self, msg: u16, flags: u16, attrs: &[Rtattr<u16, Buffer>]) -> Result<()> {
        let p = payload(self.family, attrs)?;
        self.msgs
            .push(((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, p));
        Ok(())
    }

    /// `add table` (no error if it exists).
    pub fn add_table(&mut self, comment: Option<&str>) -> Result<()> {
        let mut a = vec![attr(NFTA_TABLE_NAME, self.table.as_str())?];
        if let Some(c) = comment {
            a.push(attr(NFTA_TABLE_USERDATA, comment_udata(c))?);
        }
        self.push(NFT_MSG_NEWTABLE, libc::NLM_F_CREATE as u16, &a)
    }

    /// `add chain` (no error if it exists).
    pub fn add_chain(&mut self, c: &ChainSpec) -> Result<()> {
        let mut a = vec![
            attr(NFTA_CHAIN_TABLE, self.table.as_str())?,
            attr(NFTA_CHAIN_NAME, c.name)?,
        ];
        if let Some((ty, hook, prio)) = c.base {
            let h = nested(
                NFTA_CHAIN_HOOK,
                &[
                    attr(NFTA_HOOK_HOOKNUM, Buffer::from(hook.to_be_bytes().to_vec()))?,
                    attr(
                        NFTA_HOOK_PRIORITY,
                        Buffer::from(prio.to_be_bytes().to_vec()),
                    )?,
                ],
            )?;
            a.push(h);
            a.push(attr(
                NFTA_CHAIN_POLICY,
                Buffer::from((NF_ACCEPT as u32).to_be_bytes().to_vec()),
            )?);
            a.push(attr(NFTA_CHAIN_TYPE, ty)?);
        }
        if let Some(cm) = c.comment {
            a.push(attr(NFTA_CHAIN_USERDATA, comment_udata(cm))?);
        }
        self.push(NFT_MSG_NEWCHAIN, libc::NLM_F_CREATE as u16, &a)
    }

    /// `flush chain`.
    pub fn flush_chain(&mut self, chain: &str) -> Result<()> {
        let a = [
            attr(NFTA_RULE_TABLE, self.table.as_str())?,
            attr(NFTA_RULE_CHAIN, chain)?,
        ];
        self.push(NFT_MSG_DELRULE, 0, &a)
    }

    /// `delete chain` (it must exist and be empty of rules by then).
    pub fn delete_chain(&mut self, chain: &str) -> Result<()> {
        let a = [
            attr(NFTA_CHAIN_TABLE, self.table.as_str())?,
            attr(NFTA_CHAIN_NAME, chain)?,
        ];
        self.push(NFT_MSG_DELCHAIN, 0, &a)
    }

    /// `add rule` (appended).
    pub fn add_rule(&mut self, chain: &str, exprs: &[Expr], comment: Option<&str>) -> Result<()> {
        let list = exprs.iter().map(Expr::encode).collect::<Result<Vec<_>>>()?;
        let mut a = vec![
            attr(NFTA_RULE_TABLE, self.table.as_str())?,
            attr(NFTA_RULE_CHAIN, chain)?,
            nested(NFTA_RULE_EXPRESSIONS, &list)?,
        ];
        if let Some(c) = comment {
            a.push(attr(NFTA_RULE_USERDATA, comment_udata(c))?);
        }
        self.push(
            NFT_MSG_NEWRULE,
            (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16,
            &a,
        )
    }

    /// `delete rule ... handle N`.
    pub fn delete_rule(&mut self, chain: &str, handle: u64) -> Result<()> {
        let a = [
            attr(NFTA_RULE_TABLE, self.table.as_str())?,
            attr(NFTA_RULE_CHAIN, chain)?,
            attr(
                NFTA_RULE_HANDLE,
                Buffer::from(handle.to_be_bytes().to_vec()),
            )?,
        ];
        self.push(NFT_MSG_DELRULE, 0, &a)
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Send the batch in one `send` and wait for every message's ack (bounded by
    /// [`super::RECV_TIMEOUT`]); the first error fails the whole batch, and the kernel
    /// then applied none of it.
    pub fn commit(self, what: &str) -> Result<()> {
        if self.msgs.is_empty() {
            return Ok(());
        }
        let sock = Socket::open(NlFamily::Netfilter)
            .map_err(|e| anyhow!("{what}: cannot open an nfnetlink socket: {e:#}"))?;
        let n = self.msgs.len() as u32;
        // The first sequence number, for `blame` to find the message an error is about.
        let start = std::cell::Cell::new(0u32);
        let build = |first: u32| -> Result<Vec<u8>> {
            start.set(first);
            let subsys = [0, 0, 0, NFNL_SUBSYS_NFTABLES as u8];
            let req = libc::NLM_F_REQUEST as u16;
            let mut buf = frame(NFNL_MSG_BATCH_BEGIN, req, first, &subsys);
            for (i, (ty, flags, p)) in self.msgs.iter().enumerate() {
                let flags = flags | req | libc::NLM_F_ACK as u16;
                buf.extend(frame(*ty, flags, first + 1 + i as u32, p.as_ref()));
            }
            buf.extend(frame(NFNL_MSG_BATCH_END, req, first + n + 1, &subsys));
            Ok(buf)
        };
        let op = || what.to_string();
        let blame = |seq: u32, offset: u32| {
            let i = seq.wrapping_sub(start.get()).checked_sub(1)?;
            let (ty, _, p) = self.msgs.get(i as usize)?;
            blamed_attr(*ty & 0xff, p.as_ref(), offset)
        };
        sock.exchange_blaming(Expect::Batch(n), &build, &op, &blame)?;
        Ok(())
    }
}

/// Name the top-level attribute of a batch message (type `msg`, nfgenmsg + attributes
/// in `payload`) that starts `offset` bytes into the message, with its value when it is
/// a name: "chain \"cni-br-iface-...\"". The kernel points there for most nf_tables
/// errors (a missing table or chain: plain ENOENT otherwise).
fn blamed_attr(msg: u16, payload: &[u8], offset: u32) -> Option<String> {
    // offset counts from the nlmsghdr (16 bytes), then the nfgenmsg (4 bytes)
    let mut at = (offset as usize).checked_sub(16 + 4)?;
    let mut rest = payload.get(4..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let padded = ((len + 3) & !3).min(rest.len());
        if at < padded {
            let value = &rest[4..len];
            let name = match (msg, ty) {
                (NFT_MSG_NEWTABLE, NFTA_TABLE_NAME) => "table",
                (NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN, NFTA_CHAIN_TABLE) => "table",
                (NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN, NFTA_CHAIN_NAME) => "chain",
                (NFT_MSG_NEWCHAIN, NFTA_CHAIN_HOOK) => return Some("chain hook".into()),
                (NFT_MSG_NEWCHAIN, NFTA_CHAIN_TYPE) => "chain type",
                (NFT_MSG_NEWRULE | NFT_MSG_DELRULE, NFTA_RULE_TABLE) => "table",
                (NFT_MSG_NEWRULE | NFT_MSG_DELRULE, NFTA_RULE_CHAIN) => "chain",
                (NFT_MSG_DELRULE, NFTA_RULE_HANDLE) if value.len() == 8 => {
                    let mut h = [0u8; 8];
                    h.copy_from_slice(value);
                    return Some(format!("rule handle {}", u64::from_be_bytes(h)));
                }
                (NFT_MSG_NEWRULE, NFTA_RULE_EXPRESSIONS) => return Some("rule expressions".into()),
                _ => return Some(format!("attribute {ty}")),
            };
            let mut v = cstr(value);
            if v.chars().count() > 64 {
                v = v.chars().take(61).collect::<String>() + "...";
            }
            return Some(format!("{name} {v:?}"));
        }
        at -= padded;
        rest = &rest[padded..];
    }
    None
}

/// A rule read back from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleInfo {
    pub handle: u64,
    pub comment: String,
    /// The expression names in order ("meta", "cmp", ...), for structural checks.
    pub exprs: Vec<String>,
}

/// The rules of `table`/`chain` as (handle, comment). A missing table or chain has no
/// rules.
pub fn list_rules(family: u8, table: &str, chain: &str) -> Result<Vec<(u64, String)>> {
    Ok(dump_rules(family, table, chain)?
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.handle, r.comment))
        .collect())
}

/// The rules of `table`/`chain`, or `None` if the chain (or table) does not exist.
pub fn dump_rules(family: u8, table: &str, chain: &str) -> Result<Option<Vec<RuleInfo>>> {
    let sock = Socket::open(NlFamily::Netfilter)?;
    let p = payload(
        family,
        &[attr(NFTA_RULE_TABLE, table)?, attr(NFTA_RULE_CHAIN, chain)?],
    )?;
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let op = || format!("failed to list the nf_tables rules of {table} {chain}");
    let items = match sock.exchange(
        Expect::Dump,
        &|seq| Ok(frame(ty, flags, seq, p.as_ref())),
        &op,
    ) {
        Ok(items) => items,
        Err(e) if super::is_errno(&e, libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(items.iter().map(|b| parse_rule(b)).collect()))
}

/// A NEWRULE message of a dump: nfgenmsg, then the rule's attributes.
fn parse_rule(bytes: &[u8]) -> RuleInfo {
    let mut r = RuleInfo::default();
    for (ty, v) in super::parse_nested(bytes.get(4..).unwrap_or(&[])) {
        match ty {
            NFTA_RULE_HANDLE if v.len() == 8 => {
                r.handle = u64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]])
            }
            NFTA_RULE_USERDATA => r.comment = udata_comment(v),
            NFTA_RULE_EXPRESSIONS => {
                for (_, elem) in super::parse_nested(v) {
                    let name = super::parse_nested(elem)
                        .into_iter()
                        .find(|(t, _)| *t == NFTA_EXPR_NAME);
                    if let Some((_, n)) = name {
                        r.exprs.push(cstr(n));
                    }
                }
            }
            _ => {}
        }
    }
    r
}

// =======================================================================================
// Portmap additions (kept in this one section so that parallel changes above merge
// cleanly; nothing above is changed): the expressions `fib daddr type`, `immediate`
// data and `nat dnat`; address and interface-name matches for `ip`/`ip6` tables (no
// nfproto dependency there, and nft's `/0` and `"eth*"` forms); rules with raw userdata;
// one transaction over the `ip` and `ip6` tables of the same name; a dump of every rule
// of a table with its family, chain, userdata and expressions, and a comparison of
// dumped expressions with expected ones.

const NFT_MSG_DELTABLE: u16 = 2;
/// `NF_INET_LOCAL_OUT`: the `output` hook.
pub const NF_INET_LOCAL_OUT: u32 = 3;
/// Any family: a dump over every table of a name.
pub const NFPROTO_UNSPEC: u8 = 0;
/// `meta` keys.
pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_OIFNAME: u32 = 7;
pub const NFT_META_L4PROTO: u32 = 16;
/// Payload bases.
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

/// An expression of a rule added with [`Batch::add_rule_ext`]: any basic [`Expr`], or
/// one of the kinds port mapping needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExprExt {
    Base(Expr),
    /// `fib daddr type => reg 1` (compare with `RTN_LOCAL` = 2, host byte order)
    FibDaddrType,
    /// `immediate reg <reg> <data>`
    Imm {
        reg: u32,
        data: Vec<u8>,
    },
    /// `nat dnat <family> addr_min reg 1 proto_min reg 2`, as nft encodes
    /// `dnat to <addr>:<port>`
    Dnat {
        family: u8,
    },
}

impl From<Expr> for ExprExt {
    fn from(e: Expr) -> ExprExt {
        ExprExt::Base(e)
    }
}

impl ExprExt {
    pub fn name(&self) -> &'static str {
        match self {
            ExprExt::Base(e) => e.name(),
            ExprExt::FibDaddrType => "fib",
            ExprExt::Imm { .. } => "immediate",
            ExprExt::Dnat { .. } => "nat",
        }
    }

    fn encode(&self) -> Result<Rtattr<u16, Buffer>> {
        let be = |v: u32| Buffer::from(v.to_be_bytes().to_vec());
        let data: Vec<Rtattr<u16, Buffer>> = match self {
            ExprExt::Base(e) => return e.encode(),
            // NFTA_FIB_FLAGS = daddr, NFTA_FIB_RESULT = addrtype, NFTA_FIB_DREG: nft's order
            ExprExt::FibDaddrType => {
                vec![attr(3, be(2))?, attr(2, be(3))?, attr(1, be(NFT_REG_1))?]
            }
            ExprExt::Imm { reg, data } => vec![
                attr(1, be(*reg))?,
                nested(2, &[attr(NFTA_DATA_VALUE, Buffer::from(data.clone()))?])?,
            ],
            // type dnat, family, addr reg 1, proto reg 2, flags: proto specified
            ExprExt::Dnat { family } => vec![
                attr(1, be(1))?,
                attr(2, be(*family as u32))?,
                attr(3, be(1))?,
                attr(5, be(2))?,
                attr(7, be(2))?,
            ],
        };
        let elem = vec![
            attr(NFTA_EXPR_NAME, self.name())?,
            nested(NFTA_EXPR_DATA, &data)?,
        ];
        nested(NFTA_LIST_ELEM, &elem)
    }

    /// The expression's attribute bytes (an NFTA_LIST_ELEM) as [`exprs_match`]
    /// compares them with a dump: a nat's flags are left out, since the kernel reports
    /// the flags it derived (it adds "map IPs" to nft's "proto specified").
    pub fn to_wire(&self) -> Result<Vec<u8>> {
        let e = match self {
            ExprExt::Dnat { family } => {
                let be = |v: u32| Buffer::from(v.to_be_bytes().to_vec());
                let data = vec![
                    attr(1, be(1))?,
                    attr(2, be(*family as u32))?,
                    attr(3, be(1))?,
                    attr(5, be(2))?,
                ];
                nested(
                    NFTA_LIST_ELEM,
                    &[
                        attr(NFTA_EXPR_NAME, self.name())?,
                        nested(NFTA_EXPR_DATA, &data)?,
                    ],
                )?
            }
            other => other.encode()?,
        };
        let mut c = Cursor::new(Vec::new());
        e.to_bytes(&mut c)
            .map_err(|e| anyhow!("cannot encode nf_tables expression: {e}"))?;
        Ok(c.into_inner())
    }
}

/// `ip[6] saddr|daddr ==|!= <prefix>` in an `ip` or `ip6` table, as nft compiles it there:
/// no nfproto dependency; the bytes the prefix covers when it is byte-aligned, otherwise
/// the whole address masked (also for `/0`, which nft keeps as a match).
pub fn match_addr_in_family(net: &ipnet::IpNet, src: bool, neq: bool, out: &mut Vec<ExprExt>) {
    let (offset, bytes) = match net.trunc().addr() {
        IpAddr::V4(a) => (if src { 12 } else { 16 }, a.octets().to_vec()),
        IpAddr::V6(a) => (if src { 8 } else { 24 }, a.octets().to_vec()),
    };
    let plen = net.prefix_len() as usize;
    let base = NFT_PAYLOAD_NETWORK_HEADER;
    if plen > 0 && plen.is_multiple_of(8) {
        out.push(
            Expr::Payload {
                base,
                offset,
                len: (plen / 8) as u32,
            }
            .into(),
        );
        out.push(
            Expr::Cmp {
                neq,
                data: bytes[..plen / 8].to_vec(),
            }
            .into(),
        );
        return;
    }
    let mut mask = vec![0u8; bytes.len()];
    for (i, m) in mask.iter_mut().enumerate() {
        let bits = plen.saturating_sub(i * 8).min(8);
        *m = if bits == 0 { 0 } else { 0xff << (8 - bits) };
    }
    let data: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
    out.push(
        Expr::Payload {
            base,
            offset,
            len: bytes.len() as u32,
        }
        .into(),
    );
    out.push(Expr::Mask(mask).into());
    out.push(Expr::Cmp { neq, data }.into());
}

/// `iifname|oifname ==|!= "<name>"`: the name NUL-padded to IFNAMSIZ, or for a wildcard
/// `"eth*"` just the prefix, as nft compares them.
pub fn match_ifname(out_if: bool, name: &str, wildcard: bool, neq: bool, out: &mut Vec<ExprExt>) {
    let mut data = name.as_bytes().to_vec();
    if !wildcard {
        data.resize(16, 0);
    }
    let key = if out_if {
        NFT_META_OIFNAME
    } else {
        NFT_META_IIFNAME
    };
    out.push(Expr::Meta(key).into());
    out.push(Expr::Cmp { neq, data }.into());
}

/// `<proto> dport <port>`: the l4proto dependency, then the port.
pub fn match_dport(l4proto: u8, port: u16, out: &mut Vec<ExprExt>) {
    out.push(Expr::Meta(NFT_META_L4PROTO).into());
    out.push(
        Expr::Cmp {
            neq: false,
            data: vec![l4proto],
        }
        .into(),
    );
    out.push(
        Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: 2,
            len: 2,
        }
        .into(),
    );
    out.push(
        Expr::Cmp {
            neq: false,
            data: port.to_be_bytes().to_vec(),
        }
        .into(),
    );
}

/// `dnat to <addr>:<port>` (`[addr]:port` for IPv6).
pub fn dnat_to(addr: IpAddr, port: u16, out: &mut Vec<ExprExt>) {
    let (family, data) = match addr {
        IpAddr::V4(a) => (NFPROTO_IPV4, a.octets().to_vec()),
        IpAddr::V6(a) => (NFPROTO_IPV6, a.octets().to_vec()),
    };
    out.push(ExprExt::Imm {
        reg: NFT_REG_1,
        data,
    });
    out.push(ExprExt::Imm {
        reg: 2,
        data: port.to_be_bytes().to_vec(),
    });
    out.push(ExprExt::Dnat { family });
}

/// `fib daddr type local`.
pub fn match_fib_daddr_local(out: &mut Vec<ExprExt>) {
    out.push(ExprExt::FibDaddrType);
    out.push(
        Expr::Cmp {
            neq: false,
            data: (libc::RTN_LOCAL as u32).to_ne_bytes().to_vec(),
        }
        .into(),
    );
}

/// Rule userdata: the comment record nft reads (type 0, NUL-terminated), then `extra`
/// records. nft and libnftnl skip record types they do not know, so extra records do not
/// change what `nft list` prints. `None` if it does not fit the kernel's 256 bytes.
pub fn udata(comment: &str, extra: &[(u8, &[u8])]) -> Option<Vec<u8>> {
    let mut v = comment_udata(comment).as_ref().to_vec();
    if comment.len() + 1 > u8::MAX as usize {
        return None;
    }
    for (ty, val) in extra {
        if val.len() > u8::MAX as usize {
            return None;
        }
        v.push(*ty);
        v.push(val.len() as u8);
        v.extend_from_slice(val);
    }
    (v.len() <= 256).then_some(v)
}

/// The records of rule userdata: (type, value).
pub fn udata_records(b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = b;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let Some(v) = rest.get(2..2 + len) else { break };
        out.push((ty, v));
        rest = &rest[2 + len..];
    }
    out
}

impl Batch {
    /// Address the messages added from now on to the table of the same name in
    /// `family`: one transaction can then cover the `ip` and the `ip6` table.
    pub fn set_family(&mut self, family: u8) {
        self.family = family;
    }

    /// `add rule` (appended) with any [`ExprExt`] and raw userdata (see [`udata`]).
    pub fn add_rule_ext(
        &mut self,
        chain: &str,
        exprs: &[ExprExt],
        udata: Option<&[u8]>,
    ) -> Result<()> {
        let list = exprs
            .iter()
            .map(ExprExt::encode)
            .collect::<Result<Vec<_>>>()?;
        let mut a = vec![
            attr(NFTA_RULE_TABLE, self.table.as_str())?,
            attr(NFTA_RULE_CHAIN, chain)?,
            nested(NFTA_RULE_EXPRESSIONS, &list)?,
        ];
        if let Some(u) = udata {
            a.push(attr(NFTA_RULE_USERDATA, Buffer::from(u.to_vec()))?);
        }
        self.push(
            NFT_MSG_NEWRULE,
            (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16,
            &a,
        )
    }

    /// `delete table` (it must hold no chains by then).
    pub fn delete_table(&mut self) -> Result<()> {
        let a = [attr(NFTA_TABLE_NAME, self.table.as_str())?];
        self.push(NFT_MSG_DELTABLE, 0, &a)
    }

    /// How many messages the transaction holds.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }
}

/// A rule of a table dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpedRule {
    pub family: u8,
    pub chain: String,
    pub handle: u64,
    /// The comment record of the userdata ("" if none).
    pub comment: String,
    pub udata: Vec<u8>,
    /// The NFTA_RULE_EXPRESSIONS payload: a list of NFTA_LIST_ELEM.
    pub exprs: Vec<u8>,
}

/// Every rule of the tables named `table` in `family` ([`NFPROTO_UNSPEC`]: in every
/// family), in one dump. No such table: no rules.
///
/// The kernel stops a dump filtered by table name at the first table of that name, so
/// over all families the dump is of every rule and the table is picked out here.
pub fn dump_table(family: u8, table: &str) -> Result<Vec<DumpedRule>> {
    let sock = Socket::open(NlFamily::Netfilter)?;
    let filter = if family == NFPROTO_UNSPEC {
        vec![]
    } else {
        vec![attr(NFTA_RULE_TABLE, table)?]
    };
    let p = payload(family, &filter)?;
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let op = || format!("failed to list the nf_tables rules of table {table}");
    let items = match sock.exchange(
        Expect::Dump,
        &|seq| Ok(frame(ty, flags, seq, p.as_ref())),
        &op,
    ) {
        Ok(items) => items,
        Err(e) if super::is_errno(&e, libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(items
        .iter()
        .map(|b| parse_dumped_rule(b))
        .filter(|(t, _)| t == table)
        .map(|(_, r)| r)
        .collect())
}

/// A dumped NEWRULE message: its table's name, and the rule.
fn parse_dumped_rule(bytes: &[u8]) -> (String, DumpedRule) {
    let mut table = String::new();
    let mut r = DumpedRule {
        family: bytes.first().copied().unwrap_or(0),
        ..Default::default()
    };
    for (ty, v) in super::parse_nested(bytes.get(4..).unwrap_or(&[])) {
        match ty {
            NFTA_RULE_TABLE => table = cstr(v),
            NFTA_RULE_CHAIN => r.chain = cstr(v),
            NFTA_RULE_HANDLE if v.len() == 8 => {
                r.handle = u64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]])
            }
            NFTA_RULE_USERDATA => {
                r.comment = udata_comment(v);
                r.udata = v.to_vec();
            }
            NFTA_RULE_EXPRESSIONS => r.exprs = v.to_vec(),
            _ => {}
        }
    }
    (table, r)
}

/// Attributes with their flags kept: (type with flags, payload).
fn raw_attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]);
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let padded = (len + 3) & !3;
        if padded >= b.len() {
            break;
        }
        b = &b[padded..];
    }
    out
}

/// Does every attribute of `want` appear in `have` with the same value (recursively for
/// nested ones)? The kernel dumps attributes in its own order and adds some of its own
/// (a nat's addr_max, a bitwise's op), so equality is too strict.
fn attrs_subset(want: &[u8], have: &[u8]) -> bool {
    let have = raw_attrs(have);
    raw_attrs(want).into_iter().all(|(ty, w)| {
        let t = ty & 0x3fff;
        have.iter().any(|(hty, h)| {
            *hty & 0x3fff == t
                && if ty & NLA_F_NESTED != 0 {
                    attrs_subset(w, h)
                } else {
                    w == *h
                }
        })
    })
}

/// Do the dumped expressions (`DumpedRule::exprs`) say what `want` says, in order?
pub fn exprs_match(dumped: &[u8], want: &[ExprExt]) -> bool {
    let have = raw_attrs(dumped);
    if have.len() != want.len() {
        return false;
    }
    want.iter().zip(have).all(|(w, (_, h))| match w.to_wire() {
        // the wire form is one NFTA_LIST_ELEM; compare its contents
        Ok(bytes) => raw_attrs(&bytes)
            .first()
            .is_some_and(|(_, inner)| attrs_subset(inner, h)),
        Err(_) => false,
    })
}

#[cfg(test)]
mod portmap_tests {
    use super::*;

    fn elem(name: &str, data: &[Rtattr<u16, Buffer>]) -> Vec<u8> {
        let e = nested(
            NFTA_LIST_ELEM,
            &[
                attr(NFTA_EXPR_NAME, name).unwrap(),
                nested(NFTA_EXPR_DATA, data).unwrap(),
            ],
        )
        .unwrap();
        let mut c = Cursor::new(Vec::new());
        e.to_bytes(&mut c).unwrap();
        c.into_inner()
    }

    fn be(v: u32) -> Buffer {
        Buffer::from(v.to_be_bytes().to_vec())
    }

    #[test]
    fn wire_forms_are_nfts() {
        // `fib daddr type` as nft sends it: flags, result, dreg
        let fib = ExprExt::FibDaddrType.to_wire().unwrap();
        let want = elem(
            "fib",
            &[
                attr(3, be(2)).unwrap(),
                attr(2, be(3)).unwrap(),
                attr(1, be(1)).unwrap(),
            ],
        );
        assert_eq!(fib, want);
        // `nat dnat ip addr_min reg 1 proto_min reg 2`, flags "proto specified"
        let mut c = Cursor::new(Vec::new());
        ExprExt::Dnat {
            family: NFPROTO_IPV4,
        }
        .encode()
        .unwrap()
        .to_bytes(&mut c)
        .unwrap();
        let sent = c.into_inner();
        let want = elem(
            "nat",
            &[
                attr(1, be(1)).unwrap(),
                attr(2, be(2)).unwrap(),
                attr(3, be(1)).unwrap(),
                attr(5, be(2)).unwrap(),
                attr(7, be(2)).unwrap(),
            ],
        );
        assert_eq!(sent, want);
    }

    #[test]
    fn dumps_match_in_any_attribute_order_with_kernel_extras() {
        // the kernel dumps fib as dreg, result, flags; and nat with addr_max, proto_max
        // and the flags it derived (0x3)
        let fib = elem(
            "fib",
            &[
                attr(1, be(1)).unwrap(),
                attr(2, be(3)).unwrap(),
                attr(3, be(2)).unwrap(),
            ],
        );
        let nat = elem(
            "nat",
            &[
                attr(1, be(1)).unwrap(),
                attr(2, be(2)).unwrap(),
                attr(3, be(1)).unwrap(),
                attr(4, be(1)).unwrap(),
                attr(5, be(2)).unwrap(),
                attr(6, be(2)).unwrap(),
                attr(7, be(3)).unwrap(),
            ],
        );
        let dump = [fib.clone(), nat.clone()].concat();
        let want = [
            ExprExt::FibDaddrType,
            ExprExt::Dnat {
                family: NFPROTO_IPV4,
            },
        ];
        assert!(exprs_match(&dump, &want));
        // another family, another order of expressions, one missing: no match
        assert!(!exprs_match(
            &dump,
            &[
                ExprExt::FibDaddrType,
                ExprExt::Dnat {
                    family: NFPROTO_IPV6
                }
            ]
        ));
        assert!(!exprs_match(&[nat.clone(), fib].concat(), &want));
        assert!(!exprs_match(&nat, &want));
    }

    #[test]
    fn userdata_records() {
        let u = udata("ctr1", &[(0xcb, b"net")]).unwrap();
        assert_eq!(u, b"\x00\x05ctr1\x00\xcb\x03net");
        assert_eq!(udata_comment(&u), "ctr1");
        assert_eq!(
            udata_records(&u),
            vec![(0u8, &b"ctr1\x00"[..]), (0xcb, &b"net"[..])]
        );
        assert!(udata("c", &[(1, &[0u8; 255][..])]).is_none());
    }

    #[test]
    fn family_matches() {
        let mut e = Vec::new();
        match_addr_in_family(&"0.0.0.0/0".parse().unwrap(), true, false, &mut e);
        assert_eq!(
            e,
            vec![
                ExprExt::from(Expr::Payload {
                    base: 1,
                    offset: 12,
                    len: 4
                }),
                Expr::Mask(vec![0; 4]).into(),
                Expr::Cmp {
                    neq: false,
                    data: vec![0; 4]
                }
                .into()
            ]
        );
        let mut e = Vec::new();
        match_ifname(true, "lo", false, true, &mut e);
        assert_eq!(e[0], Expr::Meta(NFT_META_OIFNAME).into());
        assert_eq!(
            e[1],
            Expr::Cmp {
                neq: true,
                data: b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()
            }
            .into()
        );
    }
}

// End of the portmap additions.
// =======================================================================================

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_compile_like_nft() {
        let mut v = Vec::new();
        match_addr(&"10.0.0.0/24".parse().unwrap(), false, true, &mut v);
        assert_eq!(
            v,
            vec![
                Expr::Meta(15),
                Expr::Cmp {
                    neq: false,
                    data: vec![2]
                },
                Expr::Payload {
                    base: 1,
                    offset: 16,
                    len: 3
                },
                Expr::Cmp {
                    neq: true,
                    data: vec![10, 0, 0]
                }
            ]
        );
        let mut v = Vec::new();
        match_addr(&"224.0.0.0/4".parse().unwrap(), false, false, &mut v);
        assert_eq!(
            v[2..],
            [
                Expr::Payload {
                    base: 1,
                    offset: 16,
                    len: 4
                },
                Expr::Mask(vec![0xf0, 0, 0, 0]),
                Expr::Cmp {
                    neq: false,
                    data: vec![0xe0, 0, 0, 0]
                }
            ]
        );
        let mut v = Vec::new();
        match_addr(&"fd00::2/128".parse().unwrap(), true, false, &mut v);
        assert_eq!(
            v[1],
            Expr::Cmp {
                neq: false,
                data: vec![10]
            }
        );
        assert_eq!(
            v[2],
            Expr::Payload {
                base: 1,
                offset: 8,
                len: 16
            }
        );
    }

    #[test]
    fn comments_round_trip() {
        let b = comment_udata("abc");
        assert_eq!(b.as_ref(), b"\x00\x04abc\x00");
        assert_eq!(udata_comment(b.as_ref()), "abc");
    }
}
