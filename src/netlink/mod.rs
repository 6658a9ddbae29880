//! rtnetlink, hand-rolled on neli's single-threaded `NlSocketHandle`.
//!
//! One [`Nl`] is one socket bound to one network namespace; a socket keeps talking to
//! the namespace it was created in even after we switch back, so the usual pattern is
//! `Nl::open()` for the host and `Nl::open_in(&netns)` for the container, then drive
//! both from the host. Messages are neli's typed headers (`Ifinfomsg`, `Ifaddrmsg`,
//! `Rtmsg`) with attributes; the attribute numbers neli does not name live in
//! [`consts`]. Errors are [`NlError`]: the operation, the object, and the kernel errno.

pub mod addr;
pub mod consts;
pub mod link;
pub mod nftables;
pub mod route;

use crate::netns::Netns;
use anyhow::Result;
use neli::consts::nl::{NlmF, Nlmsg};
use neli::consts::rtnl::Rtm;
use neli::consts::socket::NlFamily;
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::rtnl::{Rtattr, RtattrBuilder};
use neli::socket::synchronous::NlSocketHandle;
use neli::types::Buffer;
use neli::utils::Groups;
use neli::{FromBytesWithInput, Size, ToBytes};
use std::cell::Cell;
use std::fmt;
use std::io::Cursor;

pub use addr::Addr;
pub use link::{Link, LinkId};
pub use route::RouteSpec;

/// A failed netlink request, with what we were doing and the kernel's errno.
#[derive(Debug)]
pub struct NlError {
    pub op: String,
    pub errno: i32,
    /// The kernel's extended-ack text, when it gave one.
    pub ext: String,
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.errno).to_string();
        // "File exists (os error 17)" -> "file exists", as Go's netlink errors read.
        let text = text
            .split(" (os error")
            .next()
            .unwrap_or(&text)
            .to_lowercase();
        write!(f, "{}: {}", self.op, text)?;
        if !self.ext.is_empty() {
            write!(f, " ({})", self.ext)?;
        }
        Ok(())
    }
}

impl std::error::Error for NlError {}

/// The kernel errno behind an error chain, if it came from netlink.
pub fn errno(err: &anyhow::Error) -> Option<i32> {
    err.chain()
        .find_map(|e| e.downcast_ref::<NlError>())
        .map(|e| e.errno)
}

pub fn is_errno(err: &anyhow::Error, code: i32) -> bool {
    errno(err) == Some(code)
}

/// One rtnetlink socket.
pub struct Nl {
    sock: NlSocketHandle,
    seq: Cell<u32>,
}

impl Nl {
    /// A socket in the calling thread's current namespace.
    pub fn open() -> Result<Nl> {
        let sock = NlSocketHandle::connect(NlFamily::Route, None, Groups::empty())
            .map_err(|e| anyhow::anyhow!("failed to open a netlink socket: {e}"))?;
        // Extended acks give the kernel's reason ("Unknown device type") in errors.
        let _ = sock.enable_ext_ack(true);
        let _ = sock.enable_strict_checking(true);
        Ok(Nl {
            sock,
            seq: Cell::new(1),
        })
    }

    /// A socket bound to `ns`; the thread enters `ns` only while creating it.
    pub fn open_in(ns: &Netns) -> Result<Nl> {
        ns.run(Nl::open)
    }

    fn next_seq(&self) -> u32 {
        let s = self.seq.get();
        self.seq.set(s.wrapping_add(1));
        s
    }

    /// Send one request and collect its replies (the payloads of a dump, or nothing
    /// for an acked change). `op` names the operation for error messages.
    pub fn request<P>(
        &self,
        ty: Rtm,
        flags: NlmF,
        payload: P,
        op: impl Fn() -> String,
    ) -> Result<Vec<P>>
    where
        P: Size + ToBytes + FromBytesWithInput<Input = usize> + fmt::Debug,
    {
        let dump = flags.contains(NlmF::DUMP);
        let seq = self.next_seq();
        let mut all = NlmF::REQUEST | flags;
        if !dump {
            all |= NlmF::ACK;
        }
        let msg = NlmsghdrBuilder::default()
            .nl_type(ty)
            .nl_flags(all)
            .nl_seq(seq)
            .nl_payload(NlPayload::Payload(payload))
            .build()
            .map_err(|e| anyhow::anyhow!("{}: cannot build netlink message: {e}", op()))?;
        self.sock
            .send(&msg)
            .map_err(|e| anyhow::anyhow!("{}: netlink send failed: {e}", op()))?;

        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let (iter, _) = self
                .sock
                .recv::<u16, Buffer>()
                .map_err(|e| anyhow::anyhow!("{}: netlink receive failed: {e}", op()))?;
            for m in iter {
                let m: Nlmsghdr<u16, Buffer> =
                    m.map_err(|e| anyhow::anyhow!("{}: bad netlink reply: {e}", op()))?;
                if *m.nl_seq() != seq {
                    continue; // a stale reply to an earlier request
                }
                if m.nl_flags().contains(NlmF::DUMP_INTR) {
                    interrupted = true;
                }
                let ty = *m.nl_type();
                if ty == u16::from(Nlmsg::Done) {
                    if interrupted {
                        // The table changed under the dump; the caller may retry.
                        return Err(NlError {
                            op: op(),
                            errno: libc::EINTR,
                            ext: "dump interrupted".into(),
                        }
                        .into());
                    }
                    return Ok(out);
                }
                match m.nl_payload() {
                    NlPayload::Ack(_) => return Ok(out),
                    NlPayload::Err(e) => {
                        let ext = e
                            .ext_ack()
                            .iter()
                            .find(|a| u16::from(*a.nla_type().nla_type()) == 1)
                            .map(|a| cstr(a.nla_payload().as_ref()))
                            .unwrap_or_default();
                        return Err(NlError {
                            op: op(),
                            errno: -*e.error(),
                            ext,
                        }
                        .into());
                    }
                    NlPayload::Payload(buf) => {
                        let bytes: &[u8] = buf.as_ref();
                        let p = P::from_bytes_with_input(&mut Cursor::new(bytes), bytes.len())
                            .map_err(|e| {
                                anyhow::anyhow!("{}: cannot parse netlink reply: {e}", op())
                            })?;
                        out.push(p);
                        if !dump {
                            // Some GET replies come without an ack.
                            if !m.nl_flags().contains(NlmF::MULTI) {
                                return Ok(out);
                            }
                        }
                    }
                    NlPayload::DumpExtAck(_) | NlPayload::Empty => return Ok(out),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attribute helpers shared by link/addr/route.

/// Build an attribute from any neli payload.
pub fn attr<T: neli::consts::rtnl::RtaType, P: Size + ToBytes>(
    ty: T,
    payload: P,
) -> Result<Rtattr<T, Buffer>> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(payload)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build netlink attribute: {e}"))
}

/// An attribute that nests `children`, with NLA_F_NESTED set when `flag` is true
/// (the bridge code insists on it for IFLA_PROTINFO and IFLA_AF_SPEC).
pub fn nest<T: neli::consts::rtnl::RtaType>(
    ty: T,
    children: &[Rtattr<u16, Buffer>],
) -> Result<Rtattr<T, Buffer>> {
    let mut a = attr(ty, Buffer::from(Vec::new()))?;
    for c in children {
        a = a
            .nest(c)
            .map_err(|e| anyhow::anyhow!("cannot nest netlink attribute: {e}"))?;
    }
    Ok(a)
}

/// Raw (type, payload) pairs of a nested attribute payload.
pub fn parse_nested(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
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

pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub fn u32_of(b: &[u8]) -> u32 {
    b.get(..4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

pub fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
