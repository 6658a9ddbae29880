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

// Expression attributes (linux/netfilter/nf_tables.h), per expression type. Every
// number an expression encoder or decoder writes is named here, once.
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
/// `fib daddr type`: look up the destination address (NFTA_FIB_F_DADDR) and load its
/// address type (NFT_FIB_RESULT_ADDRTYPE).
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFT_NAT_DNAT: u32 = 1;
/// `NF_NAT_RANGE_PROTO_SPECIFIED`: the rule names a port.
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;

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
const NFT_REG_2: u32 = 2;

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
            nested(
                NFTA_CMP_DATA,
                &[attr(NFTA_DATA_VALUE, Buffer::from(d.to_vec()))?],
            )
        };
        let data: Vec<Rtattr<u16, Buffer>> = match self {
            Expr::Meta(key) => vec![
                attr(NFTA_META_KEY, be(*key))?,
                attr(NFTA_META_DREG, be(NFT_REG_1))?,
            ],
            Expr::Payload { base, offset, len } => vec![
                attr(NFTA_PAYLOAD_DREG, be(NFT_REG_1))?,
                attr(NFTA_PAYLOAD_BASE, be(*base))?,
                attr(NFTA_PAYLOAD_OFFSET, be(*offset))?,
                attr(NFTA_PAYLOAD_LEN, be(*len))?,
            ],
            Expr::Cmp { neq, data } => vec![
                attr(NFTA_CMP_SREG, be(NFT_REG_1))?,
                attr(NFTA_CMP_OP, be(if *neq { NFT_CMP_NEQ } else { NFT_CMP_EQ }))?,
                value(data)?,
            ],
            Expr::Mask(mask) => {
                let zero = vec![0u8; mask.len()];
                let m = nested(
                    NFTA_BITWISE_MASK,
                    &[attr(NFTA_DATA_VALUE, Buffer::from(mask.clone()))?],
                )?;
                let x = nested(
                    NFTA_BITWISE_XOR,
                    &[attr(NFTA_DATA_VALUE, Buffer::from(zero))?],
                )?;
                vec![
                    attr(NFTA_BITWISE_SREG, be(NFT_REG_1))?,
                    attr(NFTA_BITWISE_DREG, be(NFT_REG_1))?,
                    attr(NFTA_BITWISE_LEN, be(mask.len() as u32))?,
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
                let d = nested(NFTA_IMMEDIATE_DATA, &[nested(NFTA_DATA_VERDICT, &v)?])?;
                vec![attr(NFTA_IMMEDIATE_DREG, be(NFT_REG_VERDICT))?, d]
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
        Expr::Meta(NFT_META_NFPROTO),
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
            base: NFT_PAYLOAD_NETWORK_HEADER,
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
        base: NFT_PAYLOAD_NETWORK_HEADER,
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
    out.push(Expr::Meta(NFT_META_IIFNAME));
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
    /// Per expression, its attribute values (see [`leaves`]), to compare rules by value.
    pub values: Vec<Vec<Leaf>>,
}

/// One attribute value inside an expression: the path of attribute types to it, and
/// its bytes.
pub type Leaf = (Vec<u16>, Vec<u8>);

/// The values inside `b`, depth first, with their paths. A payload that parses as a
/// whole list of attributes is a nest and is descended into instead (its own bytes
/// carry header flags, such as NLA_F_NESTED, that the kernel sets differently from
/// us); the kernel and we encode the same values the same way, so this needs no
/// per-expression schema.
fn leaves(b: &[u8], path: &mut Vec<u16>, out: &mut Vec<Leaf>) {
    for (ty, v) in super::parse_nested(b) {
        path.push(ty);
        if tiles(v) {
            leaves(v, path, out);
        } else {
            out.push((path.clone(), v.to_vec()));
        }
        path.pop();
    }
}

/// Does `b` consist exactly of well-formed attributes?
fn tiles(mut b: &[u8]) -> bool {
    if b.len() < 4 {
        return false;
    }
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        if len < 4 || len > b.len() {
            return false;
        }
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
    }
    b.is_empty()
}

impl Expr {
    /// This expression's attribute values, as [`RuleInfo::values`] holds them.
    fn leaves(&self) -> Result<Vec<Leaf>> {
        use neli::ToBytes;
        let mut c = std::io::Cursor::new(Vec::new());
        self.encode()?
            .to_bytes(&mut c)
            .map_err(|e| anyhow::anyhow!("cannot encode an nf_tables expression: {e}"))?;
        let elem = c.into_inner();
        // Skip the list element's own header: `values` starts inside it.
        let mut out = Vec::new();
        leaves(elem.get(4..).unwrap_or(&[]), &mut Vec::new(), &mut out);
        Ok(out)
    }
}

impl RuleInfo {
    /// Is this rule `want`, expression by expression, by kind and by value? Attributes
    /// the kernel adds on its own (defaults it dumps back) do not count against it.
    pub fn is(&self, want: &[Expr]) -> Result<bool> {
        if self.exprs.len() != want.len() || self.values.len() != want.len() {
            return Ok(false);
        }
        for ((name, have), w) in self.exprs.iter().zip(&self.values).zip(want) {
            if name != w.name() {
                return Ok(false);
            }
            if !w.leaves()?.iter().all(|l| have.contains(l)) {
                return Ok(false);
            }
        }
        Ok(true)
    }
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

/// Fuzzing: read arbitrary bytes as a rule of a dump (see `netlink::fuzz_reply`).
#[doc(hidden)]
pub fn fuzz_payload(b: &[u8]) {
    let _ = parse_rule(b);
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
                        let mut vals = Vec::new();
                        leaves(elem, &mut Vec::new(), &mut vals);
                        r.values.push(vals);
                    }
                }
            }
            _ => {}
        }
    }
    r
}

// =======================================================================================
// Additions for the firewall applet (`src/fw/firewall.rs`). Self-contained: nothing
// above is changed; everything lives in [`ext`].
// =======================================================================================

/// What the firewall applet needs beyond the core: conntrack state and interface-name
/// matches, rules inserted at the top of a chain, chains listed with their hook and
/// policy, rules read back *with* their expressions (to compare with what we would
/// add), and `delete table`. Encoded exactly as `nft` encodes the same text (see
/// `nft --debug=netlink`).
pub mod ext {
    use super::{
        attr, comment_udata, cstr, frame, nested, payload, udata_comment, Batch, Expect, Expr,
        Socket, NFNL_SUBSYS_NFTABLES, NFTA_BITWISE_DREG, NFTA_BITWISE_MASK, NFTA_BITWISE_OP,
        NFTA_BITWISE_SREG, NFTA_BITWISE_XOR, NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY,
        NFTA_CHAIN_TABLE, NFTA_CMP_DATA, NFTA_CMP_OP, NFTA_CMP_SREG, NFTA_CT_DIRECTION,
        NFTA_CT_DREG, NFTA_CT_KEY, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA,
        NFTA_EXPR_NAME, NFTA_HOOK_HOOKNUM, NFTA_IMMEDIATE_DATA, NFTA_IMMEDIATE_DREG,
        NFTA_LIST_ELEM, NFTA_META_DREG, NFTA_META_KEY, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_DREG,
        NFTA_PAYLOAD_LEN, NFTA_PAYLOAD_OFFSET, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS,
        NFTA_RULE_HANDLE, NFTA_RULE_TABLE, NFTA_RULE_USERDATA, NFTA_VERDICT_CHAIN,
        NFTA_VERDICT_CODE, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_MSG_NEWRULE, NFT_REG_1, NFT_REG_VERDICT,
    };
    use anyhow::Result;
    use neli::consts::socket::NlFamily;
    use neli::rtnl::Rtattr;
    use neli::types::Buffer;

    /// The `forward` hook.
    pub const NF_INET_FORWARD: u32 = 2;
    /// Meta keys: input and output interface name, layer-3 protocol.
    pub use super::{NFT_META_IIFNAME, NFT_META_NFPROTO, NFT_META_OIFNAME};
    /// The conntrack key `state`.
    pub const NFT_CT_STATE: u32 = 0;
    /// `ct state` bits (`NF_CT_STATE_BIT`): established and related.
    pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
    pub const CT_STATE_RELATED: u32 = 1 << 2;

    const NFT_MSG_GETCHAIN: u16 = 4;
    const NFT_MSG_GETRULE: u16 = 7;

    /// A rule expression: a core [`Expr`], or one the core does not cover. Rules read
    /// back from the kernel decode into the same values, so "is this rule there" is a
    /// plain comparison.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum XExpr {
        Core(Expr),
        /// `ct load <key> => reg 1`
        Ct(u32),
        /// Read back: an expression (or a form of one) we never write, by name.
        Other(String),
    }

    impl XExpr {
        pub fn name(&self) -> &str {
            match self {
                XExpr::Core(e) => e.name(),
                XExpr::Ct(_) => "ct",
                XExpr::Other(n) => n,
            }
        }

        fn encode(&self) -> Result<Rtattr<u16, Buffer>> {
            match self {
                XExpr::Core(e) => e.encode(),
                XExpr::Ct(key) => {
                    let be = |v: u32| Buffer::from(v.to_be_bytes().to_vec());
                    let data = [
                        attr(NFTA_CT_KEY, be(*key))?,
                        attr(NFTA_CT_DREG, be(NFT_REG_1))?,
                    ];
                    nested(
                        NFTA_LIST_ELEM,
                        &[attr(NFTA_EXPR_NAME, "ct")?, nested(NFTA_EXPR_DATA, &data)?],
                    )
                }
                XExpr::Other(n) => anyhow::bail!("cannot encode the nf_tables expression {n:?}"),
            }
        }
    }

    /// Core expressions as [`XExpr`]s.
    pub fn core(v: Vec<Expr>) -> Vec<XExpr> {
        v.into_iter().map(XExpr::Core).collect()
    }

    /// `ct state established,related`: load, mask the two bits, compare with zero. The
    /// state is a host-endian u32 in the register (unlike addresses).
    pub fn match_ct_established_related(out: &mut Vec<XExpr>) {
        out.push(XExpr::Ct(NFT_CT_STATE));
        out.push(XExpr::Core(Expr::Mask(
            (CT_STATE_ESTABLISHED | CT_STATE_RELATED)
                .to_ne_bytes()
                .to_vec(),
        )));
        out.push(XExpr::Core(Expr::Cmp {
            neq: true,
            data: vec![0; 4],
        }));
    }

    /// `iifname|oifname ==|!= "<name>"` (`key` = [`NFT_META_IIFNAME`] or
    /// [`NFT_META_OIFNAME`]): the name NUL-padded to IFNAMSIZ, as nft compares it.
    pub fn match_ifname(key: u32, name: &str, neq: bool, out: &mut Vec<XExpr>) {
        let mut data = name.as_bytes().to_vec();
        data.resize(16, 0);
        out.push(XExpr::Core(Expr::Meta(key)));
        out.push(XExpr::Core(Expr::Cmp { neq, data }));
    }

    impl Batch {
        /// `add rule` (`insert` false: appended) or `insert rule` (`insert` true: put
        /// at the top of the chain), with extension expressions.
        pub fn add_rule_x(
            &mut self,
            chain: &str,
            exprs: &[XExpr],
            comment: Option<&str>,
            insert: bool,
        ) -> Result<()> {
            let list = exprs
                .iter()
                .map(XExpr::encode)
                .collect::<Result<Vec<_>>>()?;
            let mut a = vec![
                attr(NFTA_RULE_TABLE, self.table.as_str())?,
                attr(NFTA_RULE_CHAIN, chain)?,
                nested(NFTA_RULE_EXPRESSIONS, &list)?,
            ];
            if let Some(c) = comment {
                a.push(attr(NFTA_RULE_USERDATA, comment_udata(c))?);
            }
            // Without NLM_F_APPEND (and without a position) the kernel puts the rule
            // at the head of the chain: what `nft insert rule` sends.
            let mut flags = libc::NLM_F_CREATE as u16;
            if !insert {
                flags |= libc::NLM_F_APPEND as u16;
            }
            self.push(NFT_MSG_NEWRULE, flags, &a)
        }
    }

    /// A chain of a table, read back.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct ChainX {
        pub name: String,
        /// The hook number of a base chain.
        pub hook: Option<u32>,
        /// A base chain's policy (`NF_ACCEPT`, `NF_DROP`).
        pub policy: Option<u32>,
    }

    /// A rule of a table, read back with its expressions.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct RuleX {
        pub chain: String,
        pub handle: u64,
        pub comment: String,
        pub exprs: Vec<XExpr>,
    }

    fn dump(
        family: u8,
        msg: u16,
        attrs: &[Rtattr<u16, Buffer>],
        what: &str,
    ) -> Result<Vec<Vec<u8>>> {
        let sock = Socket::open(NlFamily::Netfilter)?;
        let p = payload(family, attrs)?;
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        let op = || what.to_string();
        match sock.exchange(
            Expect::Dump,
            &|seq| Ok(frame(ty, flags, seq, p.as_ref())),
            &op,
        ) {
            Ok(items) => Ok(items),
            // Some kernels answer a filtered dump of a missing table with ENOENT.
            Err(e) if crate::netlink::is_errno(&e, libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn be32(v: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
    }

    /// The chains of `table` (empty when the table does not exist). The kernel does not
    /// filter chain dumps by table: the family's chains come back, ours are picked.
    pub fn table_chains(family: u8, table: &str) -> Result<Vec<ChainX>> {
        let items = dump(
            family,
            NFT_MSG_GETCHAIN,
            &[attr(NFTA_CHAIN_TABLE, table)?],
            &format!("failed to list the nf_tables chains of {table}"),
        )?;
        let mut out = Vec::new();
        for b in &items {
            let mut c = ChainX::default();
            let mut t = String::new();
            for (ty, v) in crate::netlink::parse_nested(b.get(4..).unwrap_or(&[])) {
                match ty {
                    NFTA_CHAIN_TABLE => t = cstr(v),
                    NFTA_CHAIN_NAME => c.name = cstr(v),
                    NFTA_CHAIN_POLICY => c.policy = be32(v),
                    NFTA_CHAIN_HOOK => {
                        c.hook = crate::netlink::parse_nested(v)
                            .into_iter()
                            .find(|(t, _)| *t == NFTA_HOOK_HOOKNUM)
                            .and_then(|(_, h)| be32(h))
                    }
                    _ => {}
                }
            }
            if t == table {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Every rule of `table`, in chain order (empty when the table does not exist).
    pub fn table_rules(family: u8, table: &str) -> Result<Vec<RuleX>> {
        let items = dump(
            family,
            NFT_MSG_GETRULE,
            &[attr(NFTA_RULE_TABLE, table)?],
            &format!("failed to list the nf_tables rules of {table}"),
        )?;
        let mut out = Vec::new();
        for b in &items {
            let mut r = RuleX::default();
            let mut t = String::new();
            for (ty, v) in crate::netlink::parse_nested(b.get(4..).unwrap_or(&[])) {
                match ty {
                    NFTA_RULE_TABLE => t = cstr(v),
                    NFTA_RULE_CHAIN => r.chain = cstr(v),
                    NFTA_RULE_HANDLE => {
                        if let Ok(h) = <[u8; 8]>::try_from(v) {
                            r.handle = u64::from_be_bytes(h)
                        }
                    }
                    NFTA_RULE_USERDATA => r.comment = udata_comment(v),
                    NFTA_RULE_EXPRESSIONS => {
                        r.exprs = crate::netlink::parse_nested(v)
                            .into_iter()
                            .map(|(_, e)| decode_expr(e))
                            .collect()
                    }
                    _ => {}
                }
            }
            if t == table {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// One expression as the kernel dumps it (NFTA_LIST_ELEM payload), decoded into
    /// the value we would have encoded; anything else becomes [`XExpr::Other`].
    pub fn decode_expr(elem: &[u8]) -> XExpr {
        let mut name = String::new();
        let mut data: &[u8] = &[];
        for (ty, v) in crate::netlink::parse_nested(elem) {
            match ty {
                NFTA_EXPR_NAME => name = cstr(v),
                NFTA_EXPR_DATA => data = v,
                _ => {}
            }
        }
        let attrs = crate::netlink::parse_nested(data);
        let get = |t: u16| attrs.iter().find(|(ty, _)| *ty == t).map(|(_, v)| *v);
        let u = |t: u16| get(t).and_then(be32);
        let value = |t: u16| -> Option<Vec<u8>> {
            crate::netlink::parse_nested(get(t)?)
                .into_iter()
                .find(|(ty, _)| *ty == NFTA_DATA_VALUE)
                .map(|(_, v)| v.to_vec())
        };
        let other = || XExpr::Other(name.clone());
        let decoded = match name.as_str() {
            // meta/payload/ct: a load into reg 1 (a set has no DREG)
            "meta" if u(NFTA_META_DREG) == Some(NFT_REG_1) => {
                u(NFTA_META_KEY).map(|k| XExpr::Core(Expr::Meta(k)))
            }
            "payload" if u(NFTA_PAYLOAD_DREG) == Some(NFT_REG_1) => match (
                u(NFTA_PAYLOAD_BASE),
                u(NFTA_PAYLOAD_OFFSET),
                u(NFTA_PAYLOAD_LEN),
            ) {
                (Some(base), Some(offset), Some(len)) => {
                    Some(XExpr::Core(Expr::Payload { base, offset, len }))
                }
                _ => None,
            },
            "ct" if u(NFTA_CT_DREG) == Some(NFT_REG_1) && get(NFTA_CT_DIRECTION).is_none() => {
                u(NFTA_CT_KEY).map(XExpr::Ct)
            }
            "cmp" if u(NFTA_CMP_SREG) == Some(NFT_REG_1) => match u(NFTA_CMP_OP) {
                Some(op @ (NFT_CMP_EQ | NFT_CMP_NEQ)) => value(NFTA_CMP_DATA).map(|data| {
                    XExpr::Core(Expr::Cmp {
                        neq: op == NFT_CMP_NEQ,
                        data,
                    })
                }),
                _ => None,
            },
            // a mask-and-xor with xor zero (op absent or NFT_BITWISE_BOOL)
            "bitwise"
                if u(NFTA_BITWISE_SREG) == Some(NFT_REG_1)
                    && u(NFTA_BITWISE_DREG) == Some(NFT_REG_1) =>
            {
                match (
                    value(NFTA_BITWISE_MASK),
                    value(NFTA_BITWISE_XOR),
                    u(NFTA_BITWISE_OP).unwrap_or(0),
                ) {
                    (Some(mask), Some(xor), 0) if xor.iter().all(|b| *b == 0) => {
                        Some(XExpr::Core(Expr::Mask(mask)))
                    }
                    _ => None,
                }
            }
            "immediate" if u(NFTA_IMMEDIATE_DREG) == Some(NFT_REG_VERDICT) => {
                get(NFTA_IMMEDIATE_DATA).and_then(|d| {
                    let v = crate::netlink::parse_nested(d)
                        .into_iter()
                        .find(|(ty, _)| *ty == NFTA_DATA_VERDICT)?
                        .1;
                    let va = crate::netlink::parse_nested(v);
                    let code = va
                        .iter()
                        .find(|(t, _)| *t == NFTA_VERDICT_CODE)
                        .and_then(|(_, c)| be32(c))? as i32;
                    let chain = va
                        .iter()
                        .find(|(t, _)| *t == NFTA_VERDICT_CHAIN)
                        .map(|(_, c)| cstr(c));
                    Some(XExpr::Core(Expr::Verdict(code, chain)))
                })
            }
            "masq" if attrs.is_empty() => Some(XExpr::Core(Expr::Masq)),
            _ => None,
        };
        decoded.unwrap_or_else(other)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Encoding then decoding gives the same expression back (what the kernel
        /// echoes in a dump has the same attributes, plus some we ignore).
        #[test]
        fn expressions_round_trip() {
            let mut e = Vec::new();
            crate::netlink::nftables::match_addr(
                &"10.1.2.3/32".parse().unwrap(),
                false,
                false,
                &mut e,
            );
            let mut x = core(e);
            match_ct_established_related(&mut x);
            match_ifname(NFT_META_OIFNAME, "cbr0", true, &mut x);
            x.push(XExpr::Core(Expr::Mask(vec![0xf0, 0, 0, 0])));
            x.push(XExpr::Core(Expr::Verdict(
                crate::netlink::nftables::NFT_JUMP,
                Some("CNI-FORWARD".into()),
            )));
            x.push(XExpr::Core(Expr::Verdict(
                crate::netlink::nftables::NF_ACCEPT,
                None,
            )));
            for want in &x {
                let a = want.encode().unwrap();
                let mut c = std::io::Cursor::new(Vec::new());
                neli::ToBytes::to_bytes(&a, &mut c).unwrap();
                // skip the NFTA_LIST_ELEM header
                let got = decode_expr(&c.get_ref()[4..]);
                assert_eq!(&got, want);
            }
            assert_eq!(
                x.iter().map(XExpr::name).collect::<Vec<_>>(),
                [
                    "meta",
                    "cmp",
                    "payload",
                    "cmp",
                    "ct",
                    "bitwise",
                    "cmp",
                    "meta",
                    "cmp",
                    "bitwise",
                    "immediate",
                    "immediate"
                ]
            );
            // the ct state mask is host-endian, as nft writes it
            assert_eq!(x[5], XExpr::Core(Expr::Mask(6u32.to_ne_bytes().to_vec())));
            assert!(matches!(decode_expr(b""), XExpr::Other(_)));
            assert!(XExpr::Other("counter".into()).encode().is_err());
        }
    }
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
pub const NFT_META_NFPROTO: u32 = 15;
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
            // flags, result, register: the order nft writes them in
            ExprExt::FibDaddrType => vec![
                attr(NFTA_FIB_FLAGS, be(NFTA_FIB_F_DADDR))?,
                attr(NFTA_FIB_RESULT, be(NFT_FIB_RESULT_ADDRTYPE))?,
                attr(NFTA_FIB_DREG, be(NFT_REG_1))?,
            ],
            ExprExt::Imm { reg, data } => vec![
                attr(NFTA_IMMEDIATE_DREG, be(*reg))?,
                nested(
                    NFTA_IMMEDIATE_DATA,
                    &[attr(NFTA_DATA_VALUE, Buffer::from(data.clone()))?],
                )?,
            ],
            ExprExt::Dnat { family } => {
                let mut v = dnat_attrs(*family)?;
                v.push(attr(NFTA_NAT_FLAGS, be(NF_NAT_RANGE_PROTO_SPECIFIED))?);
                v
            }
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
                let data = dnat_attrs(*family)?;
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

/// `dnat` of `family` with the address in register 1 and the port in register 2 (the
/// registers the portmap rule loads them into); the flags are added by the caller.
fn dnat_attrs(family: u8) -> Result<Vec<Rtattr<u16, Buffer>>> {
    let be = |v: u32| Buffer::from(v.to_be_bytes().to_vec());
    Ok(vec![
        attr(NFTA_NAT_TYPE, be(NFT_NAT_DNAT))?,
        attr(NFTA_NAT_FAMILY, be(family as u32))?,
        attr(NFTA_NAT_REG_ADDR_MIN, be(NFT_REG_1))?,
        attr(NFTA_NAT_REG_PROTO_MIN, be(NFT_REG_2))?,
    ])
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
        reg: NFT_REG_2,
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

    /// `delete table`, with everything still in it.
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
                Expr::Meta(NFT_META_NFPROTO),
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
