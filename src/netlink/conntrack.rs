//! nfnetlink_conntrack, the one operation port mapping needs: delete the conntrack
//! entries of flows of one L4 protocol whose original destination port is a given port
//! (the reference's `DeleteConntrackEntriesForDstPort`), so that a UDP "connection"
//! tracked before a host port was (re)mapped does not keep sending packets to the old
//! destination. No `conntrack` process: one filtered dump, then one delete per entry
//! found, on the shared transport (bounded receives, checked sequence numbers).
//!
//! The dump asks the kernel to filter (CTA_FILTER, Linux ≥ 5.9); an older kernel ignores
//! the filter and sends every entry of the family, so entries are filtered here too.
//! Each delete names the entry by its original tuple, zone and id, as the dump gave
//! them, so a new flow that reused the tuple in between is not touched; an entry that
//! expired in between (ENOENT) is not an error.

use super::{frame, parse_nested, Expect, Socket};
use anyhow::Result;
use neli::consts::socket::NlFamily;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// The kernel's CTA_FILTER_F_CTA_PROTO_NUM | CTA_FILTER_F_CTA_PROTO_DST_PORT.
const FILTER_PROTO_NUM_DST_PORT: u32 = (1 << 3) | (1 << 5);
const NLA_F_NESTED: u16 = 0x8000;

pub const IPPROTO_UDP: u8 = 17;

/// One attribute, 4-byte aligned.
fn put(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn nfgenmsg(v6: bool) -> Vec<u8> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    // family, NFNETLINK_V0, res_id 0 (big-endian)
    vec![family, 0, 0, 0]
}

/// The dump request: entries of the family whose original tuple has protocol `proto`
/// and destination port `port`.
pub fn dump_request(v6: bool, proto: u8, port: u16) -> Vec<u8> {
    let mut p = nfgenmsg(v6);
    let mut l4 = Vec::new();
    put(&mut l4, CTA_PROTO_NUM, &[proto]);
    put(&mut l4, CTA_PROTO_DST_PORT, &port.to_be_bytes());
    let mut tuple = Vec::new();
    put(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &l4);
    put(&mut p, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    let mut filter = Vec::new();
    // a host-endian u32 (NLA_U32), unlike the big-endian conntrack values
    put(
        &mut filter,
        CTA_FILTER_ORIG_FLAGS,
        &FILTER_PROTO_NUM_DST_PORT.to_ne_bytes(),
    );
    put(&mut p, CTA_FILTER | NLA_F_NESTED, &filter);
    p
}

/// An entry of a dump, reduced to what deleting it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub proto: u8,
    pub dst_port: u16,
    /// The raw CTA_TUPLE_ORIG, CTA_ZONE and CTA_ID attributes' payloads, sent back as
    /// they came.
    orig: Vec<u8>,
    zone: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
}

/// Parse one dumped entry (nfgenmsg, then attributes).
pub fn parse_entry(msg: &[u8]) -> Option<Entry> {
    let attrs = parse_nested(msg.get(4..)?);
    let orig = attrs.iter().find(|(t, _)| *t == CTA_TUPLE_ORIG)?.1;
    let l4 = parse_nested(orig)
        .into_iter()
        .find(|(t, _)| *t == CTA_TUPLE_PROTO)?
        .1;
    let mut proto = None;
    let mut dst_port = None;
    for (t, v) in parse_nested(l4) {
        match t {
            CTA_PROTO_NUM => proto = v.first().copied(),
            CTA_PROTO_DST_PORT if v.len() >= 2 => dst_port = Some(u16::from_be_bytes([v[0], v[1]])),
            _ => {}
        }
    }
    let get = |ty: u16| {
        attrs
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| v.to_vec())
    };
    Some(Entry {
        proto: proto?,
        dst_port: dst_port?,
        orig: orig.to_vec(),
        zone: get(CTA_ZONE),
        id: get(CTA_ID),
    })
}

/// The delete request for a dumped entry.
pub fn delete_request(v6: bool, e: &Entry) -> Vec<u8> {
    let mut p = nfgenmsg(v6);
    put(&mut p, CTA_TUPLE_ORIG | NLA_F_NESTED, &e.orig);
    if let Some(z) = &e.zone {
        put(&mut p, CTA_ZONE, z);
    }
    if let Some(id) = &e.id {
        put(&mut p, CTA_ID, id);
    }
    p
}

/// Delete the entries of family `v6` whose original tuple is (`proto`, any, any,
/// destination port `port`); how many went.
pub fn delete_by_dst_port(v6: bool, proto: u8, port: u16) -> Result<usize> {
    let sock = Socket::open(NlFamily::Netfilter)?;
    let ty = |msg: u16| (NFNL_SUBSYS_CTNETLINK << 8) | msg;
    let req = dump_request(v6, proto, port);
    let fam = if v6 { "IPv6" } else { "IPv4" };
    let op = || format!("failed to list the {fam} conntrack entries to port {port}");
    let dump_flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let items = sock.exchange(
        Expect::Dump,
        &|seq| Ok(frame(ty(IPCTNL_MSG_CT_GET), dump_flags, seq, &req)),
        &op,
    )?;
    let mut deleted = 0;
    for e in items.iter().filter_map(|m| parse_entry(m)) {
        if e.proto != proto || e.dst_port != port {
            continue;
        }
        let del = delete_request(v6, &e);
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        let op = || format!("failed to delete a {fam} conntrack entry to port {port}");
        match sock.exchange(
            Expect::Ack,
            &|seq| Ok(frame(ty(IPCTNL_MSG_CT_DELETE), flags, seq, &del)),
            &op,
        ) {
            Ok(_) => deleted += 1,
            // expired (or deleted by someone else) since the dump
            Err(err) if super::is_errno(&err, libc::ENOENT) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_request_bytes() {
        // nfgenmsg; CTA_TUPLE_ORIG { CTA_TUPLE_PROTO { NUM 17, DST_PORT 8080 } };
        // CTA_FILTER { ORIG_FLAGS 0x28 }
        let want: Vec<u8> = [
            &[2u8, 0, 0, 0][..],
            &[24, 0, 0x01, 0x80],
            &[20, 0, 0x02, 0x80],
            &[5, 0, 1, 0, 17, 0, 0, 0],
            &[6, 0, 3, 0, 0x1f, 0x90, 0, 0],
            &[12, 0, 25, 0x80],
            &[8, 0, 1, 0],
            &0x28u32.to_ne_bytes(),
        ]
        .concat();
        assert_eq!(dump_request(false, 17, 8080), want);
        assert_eq!(dump_request(true, 17, 8080)[0], 10);
    }

    /// A dumped UDP entry as the kernel sends it (trimmed to the attributes we use and
    /// one we ignore).
    fn dumped(dport: u16) -> Vec<u8> {
        let mut ip = Vec::new();
        put(&mut ip, 1, &[10, 0, 0, 1]);
        put(&mut ip, 2, &[10, 0, 0, 2]);
        let mut l4 = Vec::new();
        put(&mut l4, CTA_PROTO_NUM, &[17]);
        put(&mut l4, 2, &40000u16.to_be_bytes());
        put(&mut l4, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
        let mut tuple = Vec::new();
        put(&mut tuple, 1 | NLA_F_NESTED, &ip);
        put(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &l4);
        let mut m = vec![2, 0, 0, 0];
        put(&mut m, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
        put(&mut m, 2 | NLA_F_NESTED, &tuple); // reply tuple: not used
        put(&mut m, 3, &0x188u32.to_be_bytes()); // status
        put(&mut m, CTA_ID, &0xdeadbeefu32.to_be_bytes());
        m
    }

    #[test]
    fn entries_parse_and_delete_by_tuple_and_id() {
        let e = parse_entry(&dumped(8080)).unwrap();
        assert_eq!((e.proto, e.dst_port), (17, 8080));
        assert_eq!(e.zone, None);
        let del = delete_request(false, &e);
        // nfgenmsg, then the original tuple exactly as dumped, then the id
        assert_eq!(&del[..4], &[2, 0, 0, 0]);
        let attrs = parse_nested(&del[4..]);
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0], (CTA_TUPLE_ORIG, &e.orig[..]));
        assert_eq!(attrs[1], (CTA_ID, &0xdeadbeefu32.to_be_bytes()[..]));
        assert_eq!(
            u16::from_ne_bytes([del[6], del[7]]),
            CTA_TUPLE_ORIG | NLA_F_NESTED
        );
        // truncated or foreign messages are skipped, not misread
        assert!(parse_entry(&[2, 0]).is_none());
        assert!(parse_entry(&[2, 0, 0, 0, 8, 0, 12, 0, 1, 2, 3, 4]).is_none());
    }
}
