//! rtnetlink, hand-rolled: neli's typed messages over one transport of our own.
//!
//! One [`Nl`] is one socket bound to one network namespace; a socket keeps talking to
//! the namespace it was created in even after we switch back, so the usual pattern is
//! `Nl::open()` for the host and `Nl::open_in(&netns)` for the container, then drive
//! both from the host. Messages are neli's typed headers (`Ifinfomsg`, `Ifaddrmsg`,
//! `Rtmsg`) with attributes; the attribute numbers neli does not name live in
//! [`consts`]. Errors are [`NlError`]: the operation, the object, the kernel errno and
//! the kernel's extended-ack text.
//!
//! Every request, rtnetlink or nfnetlink ([`nftables`]), goes through [`Socket`]:
//! replies are matched by sequence number and port (stale ones skipped, only the kernel
//! believed), every receive is bounded by [`RECV_TIMEOUT`] (then CNI code 11), a dump
//! ends at NLMSG_DONE whose errno is checked, and a dump the kernel flags as
//! interrupted is sent again, up to [`DUMP_ATTEMPTS`] times (then code 11).

pub mod addr;
pub mod conntrack;
pub mod consts;
pub mod link;
pub mod nftables;
pub mod route;
pub mod rule;
pub mod tc;

use crate::error::{cni_err, Code};
use crate::netns::Netns;
use anyhow::Result;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::Rtm;
use neli::consts::socket::NlFamily;
use neli::rtnl::{Rtattr, RtattrBuilder};
use neli::socket::synchronous::NlSocketHandle;
use neli::types::Buffer;
use neli::utils::Groups;
use neli::{FromBytesWithInput, Size, ToBytes};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::Cursor;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// How long one receive waits for the kernel before the request fails with CNI code 11
/// (try again later). The kernel answers a request in microseconds and a dump in
/// milliseconds; a reply that takes seconds means something is wedged (a lock held in
/// the kernel, a stalled namespace), and a plugin must not hang its runtime forever.
/// Applies to every receive (rtnetlink and nfnetlink), each datagram of a dump on its own.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a dump is sent when the kernel flags it `NLM_F_DUMP_INTR` (the table
/// changed while it was being read, so the listing may be inconsistent). Same count as
/// the Go plugins' `netlinksafe`; unlike them, after the last attempt we fail (code 11)
/// rather than act on a listing known to be inconsistent.
pub const DUMP_ATTEMPTS: u32 = 5;

/// Interrupted dumps retried by this process (observability, and proof in tests that
/// the retry path ran).
static DUMP_RETRIES: AtomicU64 = AtomicU64::new(0);

/// How many interrupted dumps this process has retried so far.
pub fn dump_retries() -> u64 {
    DUMP_RETRIES.load(Ordering::Relaxed)
}

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_DUMP_INTR: u16 = 0x10;
/// In an NLMSG_ERROR: the echoed request was cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// In an NLMSG_ERROR or NLMSG_DONE: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message: header (`nlmsghdr`) and payload, ready to send.
pub fn frame(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(align4(len));
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel knows the sender
    out.extend_from_slice(payload);
    out.resize(align4(len), 0);
    out
}

/// A message of a received datagram.
#[derive(Debug)]
struct Msg<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    port: u32,
    payload: &'a [u8],
}

/// Split a datagram into its messages; a length that does not fit is an error (the
/// kernel never sends one, so the stream is not ours to guess at).
fn split(mut b: &[u8]) -> std::result::Result<Vec<Msg<'_>>, String> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(format!(
                "malformed netlink reply (message length {len}, {} bytes left)",
                b.len()
            ));
        }
        out.push(Msg {
            ty: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            port: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            payload: &b[NLMSG_HDRLEN..len],
        });
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// What one exchange waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A dump: every payload up to NLMSG_DONE. Retried when interrupted.
    Dump,
    /// One request sent with NLM_F_ACK: its payloads (a GET's answer), then the ack.
    Ack,
    /// An nfnetlink batch: BEGIN, `n` messages sent with NLM_F_ACK, END (n + 2 sequence
    /// numbers). Done when all `n` are acked; the first error wins.
    Batch(u32),
}

impl Expect {
    fn seqs(self) -> u32 {
        match self {
            Expect::Batch(n) => n + 2,
            _ => 1,
        }
    }
}

/// Why an exchange failed, before the operation's name is attached.
#[derive(Debug, PartialEq, Eq)]
enum Fail {
    /// The kernel's errno (positive), its extended-ack text and the offset of the
    /// attribute it blamed (from the start of the request).
    Kernel {
        errno: i32,
        ext: String,
        offset: Option<u32>,
        /// The sequence number of the request it answers (which message of a batch).
        seq: u32,
    },
    Malformed(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More,
    Complete,
    /// A complete dump, but flagged NLM_F_DUMP_INTR: to be sent again.
    Interrupted,
}

/// The reply side of one exchange, fed one datagram at a time. No socket in here: the
/// rules (stale replies skipped, port checked, the errno inside NLMSG_DONE, DUMP_INTR,
/// batch acks) are tested on crafted bytes.
struct Replies {
    /// Sequence numbers of our request(s): `first ..= last`.
    first: u32,
    last: u32,
    /// Our port id: the kernel addresses every reply to it.
    port: u32,
    expect: Expect,
    acks: u32,
    interrupted: bool,
    items: Vec<Vec<u8>>,
}

impl Replies {
    fn new(first: u32, port: u32, expect: Expect) -> Replies {
        Replies {
            first,
            last: first.wrapping_add(expect.seqs() - 1),
            port,
            expect,
            acks: 0,
            interrupted: false,
            items: Vec::new(),
        }
    }

    fn ours(&self, m: &Msg) -> bool {
        let off = m.seq.wrapping_sub(self.first);
        off <= self.last.wrapping_sub(self.first) && m.port == self.port
    }

    fn feed(&mut self, datagram: &[u8]) -> std::result::Result<Progress, Fail> {
        for m in split(datagram).map_err(Fail::Malformed)? {
            if !self.ours(&m) {
                // A late reply to an earlier request on this socket (e.g. the ack of a
                // request that timed out), or not addressed to us: not an answer.
                continue;
            }
            if m.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match m.ty {
                NLMSG_NOOP | NLMSG_OVERRUN => {}
                NLMSG_ERROR => {
                    let errno = m
                        .payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(|| Fail::Malformed("truncated netlink error".into()))?;
                    if errno != 0 {
                        return Err(kernel_error(errno, &m));
                    }
                    match self.expect {
                        Expect::Batch(n) => {
                            // Acks of BEGIN/END (never requested) would not count.
                            if m.seq != self.first && m.seq != self.last {
                                self.acks += 1;
                            }
                            if self.acks >= n {
                                return Ok(Progress::Complete);
                            }
                        }
                        // A dump is answered by DONE; an ack cannot end it.
                        Expect::Dump => {}
                        Expect::Ack => return Ok(Progress::Complete),
                    }
                }
                NLMSG_DONE => {
                    // A dump may end with an error the kernel met after it started,
                    // as a negative errno in DONE's payload.
                    let errno = m
                        .payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    if errno < 0 {
                        return Err(kernel_error(errno, &m));
                    }
                    if self.expect == Expect::Dump {
                        return Ok(if self.interrupted {
                            Progress::Interrupted
                        } else {
                            Progress::Complete
                        });
                    }
                }
                _ => self.items.push(m.payload.to_vec()),
            }
        }
        Ok(Progress::More)
    }
}

/// The errno and extended ack of an NLMSG_ERROR or NLMSG_DONE.
fn kernel_error(errno: i32, m: &Msg) -> Fail {
    let mut ext = String::new();
    let mut offset = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // NLMSG_ERROR: errno, the request's header (and its payload unless capped),
        // then the attributes. NLMSG_DONE: errno, then the attributes.
        let tlvs_at = if m.ty == NLMSG_ERROR {
            let echoed = m
                .payload
                .get(4..8)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(0);
            if m.flags & NLM_F_CAPPED != 0 {
                4 + NLMSG_HDRLEN
            } else {
                4 + align4(echoed.max(NLMSG_HDRLEN))
            }
        } else {
            4
        };
        for (ty, v) in parse_nested(m.payload.get(tlvs_at..).unwrap_or(&[])) {
            match ty {
                NLMSGERR_ATTR_MSG => ext = cstr(v),
                NLMSGERR_ATTR_OFFS if v.len() >= 4 => offset = Some(u32_of(v)),
                _ => {}
            }
        }
    }
    Fail::Kernel {
        errno: errno.saturating_neg(),
        ext,
        offset,
        seq: m.seq,
    }
}

/// One netlink socket (any family) with the receive discipline every request follows:
/// sequence numbers and port checked, replies only from the kernel, a receive timeout,
/// the errno of NLMSG_DONE, extended acks, and interrupted dumps sent again.
pub struct Socket {
    sock: NlSocketHandle,
    port: u32,
    seq: Cell<u32>,
    timeout: Cell<Duration>,
    buf: RefCell<Vec<u8>>,
}

impl Socket {
    /// A socket of `family` in the calling thread's current namespace.
    pub fn open(family: NlFamily) -> Result<Socket> {
        let sock = NlSocketHandle::connect(family, None, Groups::empty())
            .map_err(|e| anyhow::anyhow!("failed to open a netlink socket: {e}"))?;
        // Extended acks give the kernel's reason ("Unknown device type") in errors.
        let _ = sock.enable_ext_ack(true);
        if family == NlFamily::Route {
            let _ = sock.enable_strict_checking(true);
        }
        let s = Socket {
            port: sock.pid(),
            sock,
            seq: Cell::new(1),
            timeout: Cell::new(RECV_TIMEOUT),
            buf: RefCell::new(vec![0; 32 * 1024]),
        };
        s.set_timeout(RECV_TIMEOUT)?;
        Ok(s)
    }

    /// Change the receive timeout (tests; [`RECV_TIMEOUT`] otherwise).
    pub fn set_timeout(&self, d: Duration) -> Result<()> {
        use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
        let tv = nix::sys::time::TimeVal::new(
            d.as_secs() as libc::time_t,
            d.subsec_micros() as libc::suseconds_t,
        );
        setsockopt(&borrow_fd(&self.sock), ReceiveTimeout, &tv)
            .map_err(|e| anyhow::anyhow!("failed to set the netlink receive timeout: {e}"))?;
        self.timeout.set(d);
        Ok(())
    }

    /// Send what `build(first_seq)` makes (one message, or a whole nfnetlink batch, in
    /// one `send`: the kernel applies a batch only if it arrives whole) and collect the
    /// payloads of the replies. `op` names the operation in errors.
    pub fn exchange(
        &self,
        expect: Expect,
        build: &dyn Fn(u32) -> Result<Vec<u8>>,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<Vec<u8>>> {
        self.exchange_blaming(expect, build, op, &|_, _| None)
    }

    /// [`Socket::exchange`], with `blame(seq, offset)` describing the attribute the
    /// kernel pointed at (NLMSGERR_ATTR_OFFS: `offset` bytes into the message sent with
    /// sequence number `seq`) for the error text; many kernel errors carry only that.
    pub fn exchange_blaming(
        &self,
        expect: Expect,
        build: &dyn Fn(u32) -> Result<Vec<u8>>,
        op: &dyn Fn() -> String,
        blame: &dyn Fn(u32, u32) -> Option<String>,
    ) -> Result<Vec<Vec<u8>>> {
        let attempts = if expect == Expect::Dump {
            DUMP_ATTEMPTS
        } else {
            1
        };
        retry_interrupted(attempts, op, || {
            let first = self.seq.get();
            self.seq.set(first.wrapping_add(expect.seqs()));
            let msg = build(first)?;
            self.send(&msg, op)?;
            let mut replies = Replies::new(first, self.port, expect);
            let progress = self.collect(&mut replies, op, blame)?;
            Ok((progress, replies.items))
        })
    }

    fn send(&self, msg: &[u8], op: &dyn Fn() -> String) -> Result<()> {
        loop {
            use nix::sys::socket::{send, MsgFlags};
            match send(self.sock.as_raw_fd(), msg, MsgFlags::empty()) {
                Ok(n) if n == msg.len() => return Ok(()),
                Ok(n) => anyhow::bail!(
                    "{}: netlink send failed: {n} of {} bytes sent",
                    op(),
                    msg.len()
                ),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => anyhow::bail!("{}: netlink send failed: {e}", op()),
            }
        }
    }

    /// Receive until `replies` is complete (or failed).
    fn collect(
        &self,
        replies: &mut Replies,
        op: &dyn Fn() -> String,
        blame: &dyn Fn(u32, u32) -> Option<String>,
    ) -> Result<Progress> {
        let mut buf = self.buf.borrow_mut();
        loop {
            let Some(n) = self.recv(&mut buf, op)? else {
                continue;
            };
            match replies.feed(&buf[..n]) {
                Ok(Progress::More) => {}
                Ok(p) => return Ok(p),
                Err(Fail::Malformed(why)) => anyhow::bail!("{}: {why}", op()),
                Err(Fail::Kernel {
                    errno,
                    mut ext,
                    offset,
                    seq,
                }) => {
                    if let Some(what) = offset.and_then(|o| blame(seq, o)) {
                        if !ext.is_empty() {
                            ext.push_str(": ");
                        }
                        ext.push_str(&what);
                    }
                    return Err(NlError {
                        op: op(),
                        errno,
                        ext,
                    }
                    .into());
                }
            }
        }
    }

    /// One datagram into `buf` (grown to fit): its length, or `None` if it did not come
    /// from the kernel (anyone may send to our port; only the kernel answers requests).
    fn recv(&self, buf: &mut Vec<u8>, op: &dyn Fn() -> String) -> Result<Option<usize>> {
        let fd = self.sock.as_raw_fd();
        loop {
            // Peek with MSG_TRUNC for the datagram's real size, so nothing is cut off.
            let n = recv_from(fd, buf, true);
            let n = match n {
                Ok((n, _)) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ETIMEDOUT)) =>
                {
                    return Err(cni_err(
                        Code::TryAgainLater,
                        format!(
                            "{}: no reply from the kernel within {:?} (netlink receive timed out)",
                            op(),
                            self.timeout.get()
                        ),
                    ));
                }
                Err(e) => anyhow::bail!("{}: netlink receive failed: {e}", op()),
            };
            if n > buf.len() {
                buf.resize(n, 0);
            }
            match recv_from(fd, buf, false) {
                Ok((n, sender)) => return Ok((sender == 0).then_some(n)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => anyhow::bail!("{}: netlink receive failed: {e}", op()),
            }
        }
    }
}

/// Run `once` (send a request, collect its replies) up to `attempts` times while the
/// kernel reports the dump as interrupted; then fail with code 11.
fn retry_interrupted(
    attempts: u32,
    op: &dyn Fn() -> String,
    mut once: impl FnMut() -> Result<(Progress, Vec<Vec<u8>>)>,
) -> Result<Vec<Vec<u8>>> {
    for attempt in 1..=attempts {
        match once()? {
            (Progress::Interrupted, _) => {
                if attempt < attempts {
                    DUMP_RETRIES.fetch_add(1, Ordering::Relaxed);
                }
            }
            (_, items) => return Ok(items),
        }
    }
    Err(cni_err(
        Code::TryAgainLater,
        format!(
            "{}: the kernel interrupted the listing {attempts} times in a row \
             (NLM_F_DUMP_INTR: it kept changing while being read)",
            op()
        ),
    ))
}

/// Fuzzing entry (fuzz/targets.rs): everything that reads kernel bytes, fed arbitrary
/// bytes. The first 8 bytes choose the sequence number and port the replies are checked
/// against; the rest is one datagram, given to each kind of exchange, and each payload
/// it yields is read as a link, an address, a route and an nf_tables rule.
#[doc(hidden)]
pub fn fuzz_reply(data: &[u8]) {
    let (Some(seq), Some(port), Some(rest)) = (data.get(..4), data.get(4..8), data.get(8..)) else {
        return;
    };
    let seq = u32::from_ne_bytes([seq[0], seq[1], seq[2], seq[3]]);
    let port = u32::from_ne_bytes([port[0], port[1], port[2], port[3]]);
    for expect in [Expect::Dump, Expect::Ack, Expect::Batch(3)] {
        let mut r = Replies::new(seq, port, expect);
        let _ = r.feed(rest);
        for item in &r.items {
            link::fuzz_payload(item);
            addr::fuzz_payload(item);
            route::fuzz_payload(item);
            nftables::fuzz_payload(item);
            tc::fuzz_payload(item);
            rule::fuzz_payload(item);
            let _ = parse_nested(item);
        }
    }
}

/// The socket's fd as a borrowed fd, for nix's socket options. neli exposes only
/// `AsRawFd`; this is the crate's one `unsafe` block.
#[allow(unsafe_code)]
fn borrow_fd(sock: &NlSocketHandle) -> std::os::fd::BorrowedFd<'_> {
    // SAFETY: the fd belongs to `sock`, which outlives the returned borrow and closes
    // the fd only when dropped.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) }
}

/// `recvfrom` on a netlink socket: (length, sender's port id). With `peek`, the
/// datagram stays queued and the length is its full size (MSG_TRUNC), not what fit.
fn recv_from(fd: RawFd, buf: &mut [u8], peek: bool) -> std::io::Result<(usize, u32)> {
    use nix::sys::socket::{recv, recvfrom, MsgFlags, NetlinkAddr};
    if peek {
        let n = recv(fd, buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC)?;
        return Ok((n, 0));
    }
    let (n, from) = recvfrom::<NetlinkAddr>(fd, buf)?;
    Ok((n, from.map(|a| a.pid()).unwrap_or(0)))
}

/// One rtnetlink socket.
pub struct Nl {
    sock: Socket,
}

impl Nl {
    /// A socket in the calling thread's current namespace.
    pub fn open() -> Result<Nl> {
        Ok(Nl {
            sock: Socket::open(NlFamily::Route)?,
        })
    }

    /// A socket bound to `ns`; the thread enters `ns` only while creating it.
    pub fn open_in(ns: &Netns) -> Result<Nl> {
        ns.run(Nl::open)
    }

    /// Send one request and collect its replies (the payloads of a dump, or of a GET,
    /// or nothing for an acked change). `op` names the operation for error messages.
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
        let mut all = NlmF::REQUEST | flags;
        if !dump {
            all |= NlmF::ACK;
        }
        let mut body = Cursor::new(Vec::new());
        payload
            .to_bytes(&mut body)
            .map_err(|e| anyhow::anyhow!("{}: cannot build netlink message: {e}", op()))?;
        let body = body.into_inner();
        let ty = u16::from(ty);
        let expect = if dump { Expect::Dump } else { Expect::Ack };
        let items =
            self.sock
                .exchange(expect, &|seq| Ok(frame(ty, all.bits(), seq, &body)), &op)?;
        items
            .iter()
            .map(|bytes| {
                P::from_bytes_with_input(&mut Cursor::new(bytes), bytes.len())
                    .map_err(|e| anyhow::anyhow!("{}: cannot parse netlink reply: {e}", op()))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CniError;
    use anyhow::Context;

    const PORT: u32 = 4242;

    /// One message as the kernel would address it to us.
    fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = frame(ty, flags, seq, payload);
        m[12..16].copy_from_slice(&PORT.to_ne_bytes());
        m
    }

    fn tlv(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut out = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(v);
        out.resize(align4(out.len()), 0);
        out
    }

    /// An NLMSG_ERROR for `request` (echoed whole, as without NETLINK_CAP_ACK).
    fn error(errno: i32, request: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let seq = u32::from_ne_bytes([request[8], request[9], request[10], request[11]]);
        let mut p = errno.to_ne_bytes().to_vec();
        p.extend_from_slice(request);
        p.extend_from_slice(tlvs);
        let flags = if tlvs.is_empty() { 0 } else { NLM_F_ACK_TLVS };
        msg(NLMSG_ERROR, flags, seq, &p)
    }

    fn done(seq: u32, flags: u16, payload: &[u8]) -> Vec<u8> {
        msg(NLMSG_DONE, NLM_F_MULTI | flags, seq, payload)
    }

    const NLM_F_MULTI: u16 = 0x2;

    #[test]
    fn a_dump_collects_its_own_replies_only() {
        let mut r = Replies::new(7, PORT, Expect::Dump);
        let mut d = msg(16, NLM_F_MULTI, 7, b"one\0");
        d.extend(msg(16, NLM_F_MULTI, 6, b"stale")); // an earlier request's
        let mut other = msg(16, NLM_F_MULTI, 7, b"not-for-us");
        other[12..16].copy_from_slice(&99u32.to_ne_bytes());
        d.extend(other);
        assert_eq!(r.feed(&d), Ok(Progress::More));
        // the dump goes on in the next datagram; an ack cannot end a dump
        let mut d = msg(16, NLM_F_MULTI, 7, b"two\0");
        d.extend(error(0, &frame(18, 1, 7, &[]), &[]));
        assert_eq!(r.feed(&d), Ok(Progress::More));
        assert_eq!(r.feed(&done(6, 0, &0i32.to_ne_bytes())), Ok(Progress::More));
        assert_eq!(
            r.feed(&done(7, 0, &0i32.to_ne_bytes())),
            Ok(Progress::Complete)
        );
        assert_eq!(r.items, vec![b"one\0".to_vec(), b"two\0".to_vec()]);
        // an empty DONE (older kernels) ends a dump as well
        let mut r = Replies::new(1, PORT, Expect::Dump);
        assert_eq!(r.feed(&done(1, 0, &[])), Ok(Progress::Complete));
    }

    #[test]
    fn done_can_carry_an_error() {
        let mut r = Replies::new(3, PORT, Expect::Dump);
        assert_eq!(r.feed(&msg(16, NLM_F_MULTI, 3, b"x")), Ok(Progress::More));
        let mut p = (-libc::EMSGSIZE).to_ne_bytes().to_vec();
        p.extend(tlv(NLMSGERR_ATTR_MSG, b"dump too large\0"));
        assert_eq!(
            r.feed(&done(3, NLM_F_ACK_TLVS, &p)),
            Err(Fail::Kernel {
                errno: libc::EMSGSIZE,
                ext: "dump too large".into(),
                offset: None,
                seq: 3
            })
        );
        let mut r = Replies::new(3, PORT, Expect::Dump);
        assert!(matches!(
            r.feed(&done(3, 0, &(-libc::EBUSY).to_ne_bytes())),
            Err(Fail::Kernel {
                errno: libc::EBUSY,
                ..
            })
        ));
    }

    #[test]
    fn an_interrupted_dump_is_reported_once_complete() {
        let mut r = Replies::new(5, PORT, Expect::Dump);
        let mut d = msg(16, NLM_F_MULTI, 5, b"a");
        d.extend(msg(16, NLM_F_MULTI | NLM_F_DUMP_INTR, 5, b"b"));
        assert_eq!(r.feed(&d), Ok(Progress::More));
        assert_eq!(
            r.feed(&done(5, 0, &0i32.to_ne_bytes())),
            Ok(Progress::Interrupted)
        );
        // the flag on DONE alone counts too
        let mut r = Replies::new(5, PORT, Expect::Dump);
        assert_eq!(
            r.feed(&done(5, NLM_F_DUMP_INTR, &0i32.to_ne_bytes())),
            Ok(Progress::Interrupted)
        );
    }

    #[test]
    fn errors_carry_the_extended_ack() {
        let req = frame(16, 0x605, 9, &[0u8; 20]);
        let mut tlvs = tlv(NLMSGERR_ATTR_MSG, b"Unknown device type\0");
        tlvs.extend(tlv(NLMSGERR_ATTR_OFFS, &36u32.to_ne_bytes()));
        let mut r = Replies::new(9, PORT, Expect::Ack);
        assert_eq!(
            r.feed(&error(-libc::EOPNOTSUPP, &req, &tlvs)),
            Err(Fail::Kernel {
                errno: libc::EOPNOTSUPP,
                ext: "Unknown device type".into(),
                offset: Some(36),
                seq: 9
            })
        );
        // capped: only the request's header is echoed before the attributes
        let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
        p.extend_from_slice(&req[..16]);
        p.extend(tlv(NLMSGERR_ATTR_MSG, b"bad\0"));
        let m = msg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 9, &p);
        let mut r = Replies::new(9, PORT, Expect::Ack);
        assert!(matches!(r.feed(&m), Err(Fail::Kernel { ext, .. }) if ext == "bad"));
    }

    #[test]
    fn a_request_ends_with_its_own_ack() {
        let mut r = Replies::new(4, PORT, Expect::Ack);
        // the ack of an earlier request that timed out is not ours
        assert_eq!(
            r.feed(&error(0, &frame(16, 5, 3, &[]), &[])),
            Ok(Progress::More)
        );
        let mut d = msg(16, 0, 4, b"link");
        d.extend(error(0, &frame(18, 5, 4, &[]), &[]));
        assert_eq!(r.feed(&d), Ok(Progress::Complete));
        assert_eq!(r.items, vec![b"link".to_vec()]);
    }

    #[test]
    fn a_batch_needs_every_ack_and_names_the_failing_message() {
        // BEGIN 10, messages 11 and 12, END 13
        let mut r = Replies::new(10, PORT, Expect::Batch(2));
        assert_eq!(
            r.feed(&error(0, &frame(0xa06, 5, 11, &[]), &[])),
            Ok(Progress::More)
        );
        assert_eq!(
            r.feed(&error(0, &frame(0xa06, 5, 12, &[]), &[])),
            Ok(Progress::Complete)
        );
        let mut r = Replies::new(10, PORT, Expect::Batch(2));
        let mut d = error(0, &frame(0xa06, 5, 11, &[]), &[]);
        d.extend(error(-libc::ENOENT, &frame(0xa05, 5, 12, &[]), &[]));
        assert!(matches!(
            r.feed(&d),
            Err(Fail::Kernel {
                errno: libc::ENOENT,
                seq: 12,
                ..
            })
        ));
        // sequence numbers wrap
        let mut r = Replies::new(u32::MAX, PORT, Expect::Batch(1));
        assert_eq!(
            r.feed(&error(0, &frame(0xa06, 5, 0, &[]), &[])),
            Ok(Progress::Complete)
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        let mut r = Replies::new(1, PORT, Expect::Dump);
        let mut m = msg(16, 0, 1, b"abcd");
        m[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(matches!(r.feed(&m), Err(Fail::Malformed(_))));
        let mut r = Replies::new(1, PORT, Expect::Ack);
        assert!(matches!(
            r.feed(&msg(NLMSG_ERROR, 0, 1, &[1])),
            Err(Fail::Malformed(_))
        ));
    }

    #[test]
    fn interrupted_dumps_are_retried_then_code_11() {
        let op = || "failed to list links".to_string();
        let mut calls = 0;
        let v = retry_interrupted(DUMP_ATTEMPTS, &op, || {
            calls += 1;
            let p = if calls < 3 {
                Progress::Interrupted
            } else {
                Progress::Complete
            };
            Ok((p, vec![vec![calls as u8]]))
        })
        .unwrap();
        assert_eq!((calls, v), (3, vec![vec![3]]));
        let mut calls = 0;
        let e = retry_interrupted(DUMP_ATTEMPTS, &op, || {
            calls += 1;
            Ok((Progress::Interrupted, vec![]))
        })
        .unwrap_err();
        assert_eq!(calls, DUMP_ATTEMPTS);
        let c = CniError::from_anyhow(&e.context("bridge ADD"));
        assert_eq!(c.code, Code::TryAgainLater as u32);
        assert!(c.msg.contains("failed to list links"), "{}", c.msg);
    }

    #[test]
    fn a_receive_times_out_with_code_11() {
        // A real socket nobody answers: nothing is sent, so the kernel stays silent.
        let s = Socket::open(NlFamily::Route).unwrap();
        s.set_timeout(Duration::from_millis(100)).unwrap();
        let mut r = Replies::new(1, s.port, Expect::Ack);
        let t = std::time::Instant::now();
        let op = || "failed to create link \"x\"".to_string();
        let e = s.collect(&mut r, &op, &|_, _| None).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        let c = CniError::from_anyhow(&Err::<(), _>(e).context("ADD").unwrap_err());
        assert_eq!(c.code, 11);
        assert!(
            c.msg.starts_with(
                "ADD: failed to create link \"x\": no reply from the kernel within 100ms"
            ),
            "{}",
            c.msg
        );
    }
}
