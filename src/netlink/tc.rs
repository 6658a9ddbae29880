//! Traffic control over rtnetlink: qdiscs (TBF, ingress, clsact), u32 filters with the
//! mirred redirect action, listing and deleting them (qdiscs, and filters one by one).
//!
//! Messages are built by hand (a `tcmsg` and attributes): neli has no typed tc support,
//! and the encodings have to match what `tc` and the Go plugins send, byte for byte
//! where the kernel keeps them. Values from include/uapi/linux/{rtnetlink,pkt_sched,
//! pkt_cls,tc_act/tc_mirred}.h.

use super::{cstr, parse_nested, u32_of, Expect, Nl};
use anyhow::Result;
use std::fmt;

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RTAB: u16 = 2;
const TCA_TBF_RATE64: u16 = 4;

const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TC_U32_TERMINAL: u8 = 1;

const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
const TCA_EGRESS_REDIR: i32 = 1;
const TC_ACT_STOLEN: i32 = 4;

const TC_LINKLAYER_ETHERNET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;

/// Parent of a root qdisc.
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// Parent of the ingress / clsact qdisc.
pub const TC_H_INGRESS: u32 = 0xffff_fff1;
/// Handle `ffff:`, the one an ingress or clsact qdisc must have.
pub const INGRESS_HANDLE: u32 = 0xffff_0000;
/// Parent of clsact's ingress filters (`ffff:fff2`).
pub const CLSACT_INGRESS: u32 = 0xffff_fff2;
/// ETH_P_ALL, in host order (it is sent in network order inside `tcm_info`).
pub const ETH_P_ALL: u16 = 0x0003;

/// `major:minor` handle.
pub const fn handle(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// `TIME_UNITS_PER_SEC` of the kernel's packet scheduler.
const TIME_UNITS_PER_SEC: f64 = 1_000_000.0;

/// The packet scheduler's clock, from /proc/net/psched: ticks per microsecond, as tc
/// and the Go netlink library compute it. Every kernel since 2.6.x prints
/// `000003e8 00000040 000f4240 3b9aca00`, i.e. 15.625; that is the fallback.
pub fn ticks_per_usec() -> f64 {
    let parse = || -> Option<f64> {
        let s = std::fs::read_to_string("/proc/net/psched").ok()?;
        let v: Vec<u64> = s
            .split_whitespace()
            .map(|p| u64::from_str_radix(p, 16))
            .collect::<std::result::Result<_, _>>()
            .ok()?;
        let (mut t2us, us2t, res) = (*v.first()?, *v.get(1)?, *v.get(2)?);
        if res == 1_000_000_000 {
            t2us = us2t;
        }
        if us2t == 0 {
            return None;
        }
        Some(t2us as f64 / us2t as f64 * (res as f64 / TIME_UNITS_PER_SEC))
    };
    parse().unwrap_or(15.625)
}

/// TBF parameters, in the kernel's units: bytes/s, bytes, scheduler ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tbf {
    /// Bytes per second.
    pub rate: u64,
    /// Queue limit in bytes.
    pub limit: u32,
    /// Bucket size, in scheduler ticks (the time `burst` bytes take at `rate`).
    pub buffer: u32,
}

impl Tbf {
    /// The bucket size in bytes, as `tc` prints it as "burst".
    pub fn burst_bytes(&self, ticks_per_usec: f64) -> u64 {
        let usec = self.buffer as f64 / ticks_per_usec;
        (usec * self.rate as f64 / TIME_UNITS_PER_SEC).round() as u64
    }
}

/// A qdisc read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub ifindex: u32,
    pub handle: u32,
    pub parent: u32,
    pub kind: String,
    /// For kind "tbf".
    pub tbf: Option<Tbf>,
}

/// A filter read back from the kernel (the u32 match-all-and-redirect kind we make).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub ifindex: u32,
    pub parent: u32,
    pub handle: u32,
    pub kind: String,
    pub prio: u16,
    /// Host order.
    pub protocol: u16,
    pub classid: u32,
    /// Target ifindexes of its mirred egress-redirect actions, in action order.
    pub redirects: Vec<u32>,
}

fn hex_handle(h: u32) -> String {
    format!("{:x}:{:x}", h >> 16, h & 0xffff)
}

impl fmt::Display for Qdisc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} qdisc {} on ifindex {}",
            self.kind,
            hex_handle(self.handle),
            self.ifindex
        )
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

fn tlv(out: &mut Vec<u8>, ty: u16, v: &[u8]) {
    out.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(v);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut m = vec![0u8; 4]; // family AF_UNSPEC, padding
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&handle.to_ne_bytes());
    m.extend_from_slice(&parent.to_ne_bytes());
    m.extend_from_slice(&info.to_ne_bytes());
    m
}

/// `struct tc_ratespec`.
fn ratespec(out: &mut Vec<u8>, cell_log: u8, linklayer: u8, rate: u32) {
    out.push(cell_log);
    out.push(linklayer);
    out.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&(-1i16).to_ne_bytes()); // cell_align, as tc sets it
    out.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    out.extend_from_slice(&rate.to_ne_bytes());
}

/// The rate table `tc` sends with a TBF (iproute2 `tc_calc_rtable`): the transmission
/// time in ticks of `(i + 1) << cell_log` bytes for i in 0..256, with `cell_log` the
/// smallest that covers `mtu`. The kernel keeps only the rate and linklayer (the table
/// just lets old kernels detect ATM framing), but it is sent as tc does.
pub fn rate_table(rate: u64, mtu: u32, ticks_per_usec: f64) -> (u8, Vec<u32>) {
    let mut cell_log = 0u8;
    while (mtu >> cell_log) > 255 {
        cell_log += 1;
    }
    let table = (0..256u32)
        .map(|i| {
            let size = ((i + 1) << cell_log) as f64;
            let usec = TIME_UNITS_PER_SEC * size / rate.max(1) as f64;
            (usec * ticks_per_usec) as u32
        })
        .collect();
    (cell_log, table)
}

/// The TCA_OPTIONS payload of a TBF.
fn tbf_options(t: &Tbf, ticks_per_usec: f64) -> Vec<u8> {
    let mut parms = Vec::with_capacity(36);
    let rate32 = u32::try_from(t.rate).unwrap_or(u32::MAX);
    let (cell_log, table) = rate_table(t.rate, 2047, ticks_per_usec);
    ratespec(&mut parms, cell_log, TC_LINKLAYER_ETHERNET, rate32);
    ratespec(&mut parms, 0, 0, 0); // no peak rate
    parms[12 + 4..12 + 6].copy_from_slice(&0i16.to_ne_bytes());
    parms.extend_from_slice(&t.limit.to_ne_bytes());
    parms.extend_from_slice(&t.buffer.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes()); // mtu (peak rate only)
    let mut o = Vec::new();
    tlv(&mut o, TCA_TBF_PARMS, &parms);
    if t.rate >= 1 << 32 {
        tlv(&mut o, TCA_TBF_RATE64, &t.rate.to_ne_bytes());
    }
    let rtab: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
    tlv(&mut o, TCA_TBF_RTAB, &rtab);
    // No TCA_TBF_BURST: given one, the kernel recomputes the bucket from it and would
    // store a (rounded) buffer that differs from the ticks the Go plugin sends.
    o
}

/// The TCA_OPTIONS payload of a u32 filter that matches every packet (one zero key,
/// terminal) and redirects it to `target` (mirred egress redirect, then stolen).
fn u32_redirect_options(classid: u32, target: u32) -> Vec<u8> {
    let mut o = Vec::new();
    if classid != 0 {
        tlv(&mut o, TCA_U32_CLASSID, &classid.to_ne_bytes());
    }
    // struct tc_u32_sel: flags, offshift, nkeys, pad, offmask, off, offoff, hoff, hmask
    let mut sel = vec![TC_U32_TERMINAL, 0, 1, 0];
    sel.extend_from_slice(&[0u8; 12]);
    sel.extend_from_slice(&[0u8; 16]); // the key: mask 0, val 0, off 0, offmask 0
    tlv(&mut o, TCA_U32_SEL, &sel);
    // struct tc_mirred: index, capab, action, refcnt, bindcnt, eaction, ifindex
    let mut parms = Vec::new();
    parms.extend_from_slice(&0u32.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes());
    parms.extend_from_slice(&TC_ACT_STOLEN.to_ne_bytes());
    parms.extend_from_slice(&0i32.to_ne_bytes());
    parms.extend_from_slice(&0i32.to_ne_bytes());
    parms.extend_from_slice(&TCA_EGRESS_REDIR.to_ne_bytes());
    parms.extend_from_slice(&target.to_ne_bytes());
    let mut mopts = Vec::new();
    tlv(&mut mopts, TCA_MIRRED_PARMS, &parms);
    let mut act = Vec::new();
    tlv(&mut act, TCA_ACT_KIND, b"mirred\0");
    tlv(&mut act, TCA_ACT_OPTIONS | NLA_F_NESTED, &mopts);
    let mut tab = Vec::new();
    tlv(&mut tab, 1 | NLA_F_NESTED, &act); // action order 1
    tlv(&mut o, TCA_U32_ACT | NLA_F_NESTED, &tab);
    o
}

// ---------------------------------------------------------------------------------------
// Decoding

fn parse_tbf(opts: &[u8]) -> Option<Tbf> {
    let mut t = None;
    let mut rate64 = None;
    for (ty, v) in parse_nested(opts) {
        match ty {
            TCA_TBF_PARMS if v.len() >= 36 => {
                t = Some(Tbf {
                    rate: u32_of(&v[8..12]) as u64,
                    limit: u32_of(&v[24..28]),
                    buffer: u32_of(&v[28..32]),
                })
            }
            TCA_TBF_RATE64 if v.len() >= 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[..8]);
                rate64 = Some(u64::from_ne_bytes(b));
            }
            _ => {}
        }
    }
    let mut t = t?;
    if let Some(r) = rate64 {
        t.rate = r;
    }
    Some(t)
}

/// (ifindex, handle, parent, info) of a tcmsg.
type TcHeader = (u32, u32, u32, u32);
/// Attributes of a message: (type, payload).
type Attrs<'a> = Vec<(u16, &'a [u8])>;

/// The header of a tcmsg, and its attributes.
fn split_tcmsg(p: &[u8]) -> Option<(TcHeader, Attrs<'_>)> {
    if p.len() < 20 {
        return None;
    }
    let hdr = (
        u32_of(&p[4..8]),
        u32_of(&p[8..12]),
        u32_of(&p[12..16]),
        u32_of(&p[16..20]),
    );
    Some((hdr, parse_nested(&p[20..])))
}

fn parse_qdisc(p: &[u8]) -> Option<Qdisc> {
    let ((ifindex, handle, parent, _), attrs) = split_tcmsg(p)?;
    let mut q = Qdisc {
        ifindex,
        handle,
        parent,
        kind: String::new(),
        tbf: None,
    };
    let mut opts = None;
    for (ty, v) in attrs {
        match ty {
            TCA_KIND => q.kind = cstr(v),
            TCA_OPTIONS => opts = Some(v),
            _ => {}
        }
    }
    if q.kind == "tbf" {
        q.tbf = opts.and_then(parse_tbf);
    }
    Some(q)
}

fn parse_mirred_targets(acts: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut tab = parse_nested(acts);
    tab.sort_by_key(|(order, _)| *order);
    for (_, act) in tab {
        let attrs = parse_nested(act);
        let kind = attrs
            .iter()
            .find(|(t, _)| *t == TCA_ACT_KIND)
            .map(|(_, v)| cstr(v));
        if kind.as_deref() != Some("mirred") {
            continue;
        }
        for (t, v) in &attrs {
            if *t != TCA_ACT_OPTIONS {
                continue;
            }
            for (pt, pv) in parse_nested(v) {
                if pt == TCA_MIRRED_PARMS && pv.len() >= 28 {
                    let eaction = u32_of(&pv[20..24]) as i32;
                    if eaction == TCA_EGRESS_REDIR {
                        out.push(u32_of(&pv[24..28]));
                    }
                }
            }
        }
    }
    out
}

fn parse_filter(p: &[u8]) -> Option<Filter> {
    let ((ifindex, handle, parent, info), attrs) = split_tcmsg(p)?;
    let mut f = Filter {
        ifindex,
        parent,
        handle,
        kind: String::new(),
        prio: (info >> 16) as u16,
        protocol: u16::from_be((info & 0xffff) as u16),
        classid: 0,
        redirects: vec![],
    };
    for (ty, v) in attrs {
        match ty {
            TCA_KIND => f.kind = cstr(v),
            TCA_OPTIONS if f.kind == "u32" => {
                for (t, o) in parse_nested(v) {
                    match t {
                        TCA_U32_CLASSID => f.classid = u32_of(o),
                        TCA_U32_ACT => f.redirects = parse_mirred_targets(o),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(f)
}

/// Fuzzing: read arbitrary bytes as a qdisc and as a filter of a dump.
#[doc(hidden)]
pub fn fuzz_payload(b: &[u8]) {
    let _ = parse_qdisc(b);
    let _ = parse_filter(b);
}

// ---------------------------------------------------------------------------------------
// Requests

impl Nl {
    fn tc_request(
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

    /// `tc qdisc add dev <ifindex> parent <parent> handle <handle> tbf ...` (fails if
    /// a qdisc is there already, like the reference).
    pub fn add_tbf(&self, ifindex: u32, handle: u32, parent: u32, t: &Tbf) -> Result<()> {
        let mut m = tcmsg(ifindex, handle, parent, 0);
        tlv(&mut m, TCA_KIND, b"tbf\0");
        tlv(&mut m, TCA_OPTIONS, &tbf_options(t, ticks_per_usec()));
        self.tc_request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, m, &|| {
            format!("failed to add a tbf qdisc on ifindex {ifindex}")
        })?;
        Ok(())
    }

    /// The ingress qdisc (`kind` "ingress") or clsact (`kind` "clsact"), handle `ffff:`.
    pub fn add_ingress_qdisc(&self, ifindex: u32, kind: &str) -> Result<()> {
        let mut m = tcmsg(ifindex, INGRESS_HANDLE, TC_H_INGRESS, 0);
        tlv(&mut m, TCA_KIND, format!("{kind}\0").as_bytes());
        self.tc_request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, m, &|| {
            format!("failed to add an {kind} qdisc on ifindex {ifindex}")
        })?;
        Ok(())
    }

    /// Delete the qdisc at `parent` (with `handle`, 0 = whatever is there).
    pub fn del_qdisc(&self, ifindex: u32, handle: u32, parent: u32) -> Result<()> {
        let m = tcmsg(ifindex, handle, parent, 0);
        self.tc_request(RTM_DELQDISC, 0, m, &|| {
            format!(
                "failed to delete qdisc {} on ifindex {ifindex}",
                hex_handle(handle)
            )
        })?;
        Ok(())
    }

    /// Qdiscs of `ifindex` (0 = every device), the kernel's default ones included.
    pub fn qdiscs(&self, ifindex: u32) -> Result<Vec<Qdisc>> {
        let items = self.tc_request(RTM_GETQDISC, NLM_F_DUMP, tcmsg(0, 0, 0, 0), &|| {
            "failed to list qdiscs".into()
        })?;
        Ok(items
            .iter()
            .filter_map(|p| parse_qdisc(p))
            .filter(|q| ifindex == 0 || q.ifindex == ifindex)
            .collect())
    }

    /// `tc filter add dev <ifindex> parent <parent> protocol <protocol> prio <prio>
    /// u32 match u32 0 0 [classid] action mirred egress redirect dev <target>`.
    pub fn add_u32_redirect(
        &self,
        ifindex: u32,
        parent: u32,
        prio: u16,
        protocol: u16,
        classid: u32,
        target: u32,
    ) -> Result<()> {
        let info = ((prio as u32) << 16) | protocol.to_be() as u32;
        let mut m = tcmsg(ifindex, 0, parent, info);
        tlv(&mut m, TCA_KIND, b"u32\0");
        tlv(&mut m, TCA_OPTIONS, &u32_redirect_options(classid, target));
        self.tc_request(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, m, &|| {
            format!("failed to add a redirect filter on ifindex {ifindex} to ifindex {target}")
        })?;
        Ok(())
    }

    /// `tc filter del dev <ifindex> parent <parent> protocol <protocol> prio <prio>
    /// [handle <handle> <kind>]`: the kernel's RTM_DELTFILTER model. A filter is found by
    /// its block (`parent`), then its classifier instance (`prio` and `protocol`), then
    /// its handle inside that instance; `handle` 0 deletes the whole instance (every
    /// filter of that prio and protocol). `prio` 0 would make the kernel flush the whole
    /// chain, which no caller means by "delete a filter": refused here.
    pub fn del_filter(
        &self,
        ifindex: u32,
        parent: u32,
        prio: u16,
        protocol: u16,
        handle: u32,
        kind: &str,
    ) -> Result<()> {
        if prio == 0 {
            return Err(anyhow::anyhow!(
                "refusing to delete filter {} on ifindex {ifindex} without a prio: the kernel \
                 would flush every filter under the parent",
                hex_handle(handle)
            ));
        }
        let info = ((prio as u32) << 16) | protocol.to_be() as u32;
        let mut m = tcmsg(ifindex, handle, parent, info);
        // With a kind, the kernel also checks the instance is that classifier
        // (EINVAL otherwise) rather than deleting whatever sits at that prio.
        if !kind.is_empty() {
            tlv(&mut m, TCA_KIND, format!("{kind}\0").as_bytes());
        }
        self.tc_request(RTM_DELTFILTER, 0, m, &|| {
            format!("failed to delete {kind} filter {handle:x} prio {prio} on ifindex {ifindex}")
        })?;
        Ok(())
    }

    /// Filters of `ifindex` under `parent`. u32 lists each instance's header and hash
    /// tables as filters too (kind "u32", no redirects) beside its key nodes.
    pub fn filters(&self, ifindex: u32, parent: u32) -> Result<Vec<Filter>> {
        let items = self.tc_request(
            RTM_GETTFILTER,
            NLM_F_DUMP,
            tcmsg(ifindex, 0, parent, 0),
            &|| format!("failed to list filters of ifindex {ifindex}"),
        )?;
        Ok(items.iter().filter_map(|p| parse_filter(p)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_options_encode_the_parameters() {
        let t = Tbf {
            rate: 125_000,
            limit: 13_125,
            buffer: 1_250_000,
        };
        let o = tbf_options(&t, 15.625);
        let back = parse_tbf(&o).unwrap();
        assert_eq!(back, t);
        // rate table: 256 u32 after a 4-byte header, cell_log 3 for mtu 2047
        let rtab = parse_nested(&o)
            .into_iter()
            .find(|(t, _)| *t == TCA_TBF_RTAB)
            .unwrap()
            .1;
        assert_eq!(rtab.len(), 1024);
        let parms = parse_nested(&o)[0].1;
        assert_eq!(parms.len(), 36);
        assert_eq!(parms[0], 3, "cell_log");
        assert_eq!(parms[1], TC_LINKLAYER_ETHERNET);
        // 8 bytes at 125000 B/s = 64 us = 1000 ticks
        assert_eq!(u32_of(&rtab[..4]), 1000);
        assert_eq!(t.burst_bytes(15.625), 10_000);
    }

    #[test]
    fn a_64_bit_rate_is_sent_twice() {
        let t = Tbf {
            rate: 5 << 32,
            limit: 1,
            buffer: 1,
        };
        assert_eq!(parse_tbf(&tbf_options(&t, 15.625)).unwrap().rate, 5 << 32);
    }

    #[test]
    fn the_redirect_filter_reads_back() {
        let mut m = tcmsg(7, 0x800_800, INGRESS_HANDLE, (1 << 16) | 0x0300);
        tlv(&mut m, TCA_KIND, b"u32\0");
        tlv(&mut m, TCA_OPTIONS, &u32_redirect_options(handle(1, 1), 9));
        let f = parse_filter(&m).unwrap();
        assert_eq!(
            (f.kind.as_str(), f.prio, f.protocol, f.classid, f.redirects),
            ("u32", 1, ETH_P_ALL, 0x10001, vec![9])
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        for n in 0..64 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            fuzz_payload(&b);
        }
    }
}
