//! The DHCPv4 client (RFC 2131) of one lease, with `dhcproto` for the packets.
//!
//! Sockets are opened inside the container's netns (the thread enters it only for the
//! `socket(2)` calls, see `netns`) and then used from the daemon's own namespace: a socket
//! stays in the namespace it was created in. Sending goes through a UDP socket bound to
//! the interface (port 68, broadcast allowed: a kernel sends a limited broadcast from
//! 0.0.0.0 on a device-bound socket before the interface has an address). Receiving goes
//! through a packet socket, because before the address is configured the server's unicast
//! answer (to our MAC and the offered address) is not delivered to any UDP socket.

use crate::netlink::link::LinkId;
use crate::netlink::Nl;
use crate::netns::Netns;
use anyhow::{anyhow, bail, Context, Result};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable};
use nix::sys::socket::{
    recvfrom, setsockopt, socket, sockopt, AddressFamily, LinkAddr, SockFlag, SockProtocol,
    SockType,
};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// Timing and behaviour knobs (the daemon's flags).
#[derive(Clone, Debug)]
pub struct Params {
    /// How long one exchange waits for an answer (`-timeout`).
    pub timeout: Duration,
    /// Longest back-off between retries (`-resendmax`).
    pub resend_max: Duration,
    /// Total budget of one acquire/renew (`-resendtimeout`).
    pub resend_timeout: Duration,
    /// Ask the server to broadcast its answers (`-broadcast`).
    pub broadcast: bool,
}

/// The reference's retry budget: 4 fast retries 2 s apart, then back-off from 4 s
/// doubling up to `resend_max`, each ±1 s of jitter, until `resend_timeout`.
const FAST_DELAY: Duration = Duration::from_secs(2);
const FAST_TRIES: u32 = 4;
const BACKOFF_START: Duration = Duration::from_secs(4);
/// The reference's nclient4 sends each message up to 3 times within one exchange.
const SENDS_PER_EXCHANGE: u32 = 3;

/// What the client sends besides the message type: client-id, the parameter request
/// list and the `provide` options, by code.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientOptions {
    pub client_id: Vec<u8>,
    pub request: Vec<u8>,
    pub provide: Vec<(u8, Vec<u8>)>,
}

/// An interface in a container's netns. Nothing is held open between exchanges: holding
/// the netns would keep a deleted container's namespace alive, and an idle packet socket
/// would copy every packet of the container.
pub struct Link {
    pub netns: String,
    pub ifname: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The sockets of one exchange (see the module doc).
pub struct Sockets<'a> {
    link: &'a Link,
    udp: UdpSocket,
    packet: OwnedFd,
}

fn mac_bytes(s: &str) -> Result<[u8; 6]> {
    crate::netlink::link::parse_mac(s).with_context(|| format!("interface MAC {s:?}"))
}

impl Link {
    /// Find `ifname` in the netns at `netns`, bringing it up if it is down (as the
    /// reference does).
    pub fn open(netns: &str, ifname: &str) -> Result<Link> {
        let ns = Netns::open(netns)?;
        let nl = Nl::open_in(&ns)?;
        let link = nl
            .link(LinkId::Name(ifname))?
            .ok_or_else(|| anyhow!("error looking up {ifname:?}: link not found"))?;
        if !link.is_up() {
            nl.set_up(link.index, true)?;
        }
        Ok(Link {
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            ifindex: link.index,
            mac: mac_bytes(&link.mac)?,
        })
    }

    /// Open the sockets of one exchange inside the netns, sending from `src` (0.0.0.0
    /// before we have an address; the leased address after, even when it is not
    /// configured on the interface yet: servers ignore a RELEASE from 0.0.0.0).
    pub fn sockets(&self, src: Ipv4Addr) -> Result<Sockets<'_>> {
        let ns = Netns::open(&self.netns)?;
        let ifname = self.ifname.as_str();
        let (udp, packet) = ns.run(|| {
            let udp = socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            setsockopt(&udp, sockopt::ReuseAddr, &true)?;
            setsockopt(&udp, sockopt::Broadcast, &true)?;
            setsockopt(
                &udp,
                sockopt::BindToDevice,
                &std::ffi::OsString::from(ifname),
            )?;
            setsockopt(&udp, sockopt::IpFreebind, &true)?;
            nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&udp),
                &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(src, CLIENT_PORT)),
            )
            .context("binding UDP port 68")?;
            let udp = UdpSocket::from(udp);
            let packet = socket(
                AddressFamily::Packet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
            .context("opening a packet socket")?;
            Ok((udp, packet))
        })?;
        Ok(Sockets {
            link: self,
            udp,
            packet,
        })
    }
}

impl Sockets<'_> {
    fn send(&self, msg: &Message, to: Ipv4Addr) -> Result<()> {
        let bytes = msg
            .to_vec()
            .map_err(|e| anyhow!("encoding DHCP message: {e}"))?;
        self.udp
            .send_to(&bytes, SocketAddrV4::new(to, SERVER_PORT))
            .with_context(|| format!("sending DHCP {:?} to {to}", msg.opts().msg_type()))?;
        Ok(())
    }

    /// The next DHCP reply for `xid` on this interface, or None at `deadline`.
    fn recv(&self, xid: u32, deadline: Instant) -> Result<Option<Message>> {
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let tv = nix::sys::time::TimeVal::new(
                left.as_secs() as i64,
                left.subsec_micros().max(1) as i64,
            );
            setsockopt(&self.packet, sockopt::ReceiveTimeout, &tv)?;
            let (n, from) =
                match recvfrom::<LinkAddr>(std::os::fd::AsRawFd::as_raw_fd(&self.packet), &mut buf)
                {
                    Ok(x) => x,
                    Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("receiving DHCP replies"),
                };
            if from.is_some_and(|a| a.ifindex() as u32 != self.link.ifindex) {
                continue;
            }
            let Some(payload) = udp_payload(&buf[..n.min(buf.len())]) else {
                continue;
            };
            let Ok(msg) = Message::decode(&mut Decoder::new(payload)) else {
                continue;
            };
            if msg.opcode() == Opcode::BootReply
                && msg.xid() == xid
                && msg.chaddr().get(..6) == Some(&self.link.mac[..])
            {
                return Ok(Some(msg));
            }
        }
    }
}

/// The UDP payload of an IPv4 packet to port 68, if that is what `p` is.
fn udp_payload(p: &[u8]) -> Option<&[u8]> {
    let first = *p.first()?;
    if first >> 4 != 4 || *p.get(9)? != 17 {
        return None;
    }
    let ihl = ((first & 0x0f) as usize) * 4;
    let udp = p.get(ihl..)?;
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]) as usize;
    if dport != CLIENT_PORT || len < 8 {
        return None;
    }
    udp.get(8..len.min(udp.len()))
}

/// A lease as the server acknowledged it.
#[derive(Clone, Debug)]
pub struct Lease {
    pub ack: Message,
    /// Unix time (seconds) the ACK arrived: T1, T2 and expiry count from it.
    pub acquired: u64,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Lease {
    pub fn yiaddr(&self) -> Ipv4Addr {
        self.ack.yiaddr()
    }

    pub fn server(&self) -> Option<Ipv4Addr> {
        match self.ack.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        }
    }

    fn u32_opt(&self, code: OptionCode) -> Option<u32> {
        match self.ack.opts().get(code) {
            Some(DhcpOption::AddressLeaseTime(t))
            | Some(DhcpOption::Renewal(t))
            | Some(DhcpOption::Rebinding(t)) => Some(*t),
            _ => None,
        }
    }

    /// Lease time, T1 and T2 in seconds, with the reference's defaults (60 min, 50 %,
    /// 85 %).
    pub fn times(&self) -> (u64, u64, u64) {
        let lease = self
            .u32_opt(OptionCode::AddressLeaseTime)
            .map(u64::from)
            .unwrap_or(3600);
        let t2 = self
            .u32_opt(OptionCode::Rebinding)
            .map(u64::from)
            .unwrap_or(lease * 85 / 100);
        let t1 = self
            .u32_opt(OptionCode::Renewal)
            .map(u64::from)
            .unwrap_or(lease / 2);
        (lease, t1, t2)
    }

    pub fn renew_at(&self) -> u64 {
        self.acquired + self.times().1
    }
    pub fn rebind_at(&self) -> u64 {
        self.acquired + self.times().2
    }
    pub fn expires_at(&self) -> u64 {
        self.acquired + self.times().0
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.ack
            .to_vec()
            .map_err(|e| anyhow!("encoding lease: {e}"))
    }

    pub fn from_bytes(b: &[u8], acquired: u64) -> Result<Lease> {
        let ack = Message::decode(&mut Decoder::new(b)).map_err(|e| anyhow!("lease: {e}"))?;
        Ok(Lease { ack, acquired })
    }
}

/// A new request message carrying our options.
fn message(link: &Link, xid: u32, ty: MessageType, opts: &ClientOptions, bcast: bool) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &link.mac,
    );
    if bcast {
        m.set_flags(Flags::default().set_broadcast());
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(ty));
    o.insert(DhcpOption::ClientIdentifier(opts.client_id.clone()));
    if !opts.request.is_empty() {
        o.insert(DhcpOption::ParameterRequestList(
            opts.request.iter().map(|c| OptionCode::from(*c)).collect(),
        ));
    }
    // Provided options replace defaults with the same code (the client-id included), as
    // in the reference.
    for (code, value) in &opts.provide {
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(*code),
            value.clone(),
        )));
    }
    m
}

fn random_xid() -> u32 {
    rand_u32()
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // /dev/urandom cannot fail on Linux in practice; a fixed fallback still works (xid
    // only needs to differ between exchanges on one link).
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b = (std::process::id() ^ now_unix() as u32).to_be_bytes();
    }
    u32::from_be_bytes(b)
}

/// Send `msg` (up to 3 times, `timeout` each) until `accept` takes a reply.
fn exchange(
    link: &Sockets,
    msg: &Message,
    to: Ipv4Addr,
    p: &Params,
    accept: &dyn Fn(&Message) -> bool,
) -> Result<Option<Message>> {
    for _ in 0..SENDS_PER_EXCHANGE {
        link.send(msg, to)?;
        let deadline = Instant::now() + p.timeout;
        while let Some(reply) = link.recv(msg.xid(), deadline)? {
            if accept(&reply) {
                return Ok(Some(reply));
            }
        }
    }
    Ok(None)
}

fn is(m: &Message, ty: MessageType) -> bool {
    m.opts().has_msg_type(ty)
}

/// One DISCOVER/OFFER/REQUEST/ACK round (or, with `requested`, INIT-REBOOT-like
/// REQUEST of an address we held).
fn request_once(link: &Link, opts: &ClientOptions, p: &Params) -> Result<Lease> {
    let socks = link.sockets(Ipv4Addr::UNSPECIFIED)?;
    let xid = random_xid();
    let discover = message(link, xid, MessageType::Discover, opts, p.broadcast);
    let offer = exchange(&socks, &discover, Ipv4Addr::BROADCAST, p, &|m| {
        is(m, MessageType::Offer)
    })?
    .ok_or_else(|| anyhow!("no DHCPOFFER received on {}", link.ifname))?;
    let mut req = message(link, xid, MessageType::Request, opts, p.broadcast);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    if let Some(DhcpOption::ServerIdentifier(s)) = offer.opts().get(OptionCode::ServerIdentifier) {
        req.opts_mut().insert(DhcpOption::ServerIdentifier(*s));
    }
    let ack = exchange(&socks, &req, Ipv4Addr::BROADCAST, p, &|m| {
        is(m, MessageType::Ack) || is(m, MessageType::Nak)
    })?
    .ok_or_else(|| anyhow!("no DHCPACK received on {}", link.ifname))?;
    if is(&ack, MessageType::Nak) {
        bail!("DHCPNAK received for {}", offer.yiaddr());
    }
    Ok(Lease {
        ack,
        acquired: now_unix(),
    })
}

/// RENEWING (unicast to the server) or REBINDING (broadcast): a REQUEST with ciaddr.
fn renew_once(
    link: &Link,
    lease: &Lease,
    opts: &ClientOptions,
    p: &Params,
    rebind: bool,
) -> Result<Lease> {
    let xid = random_xid();
    let mut req = message(link, xid, MessageType::Request, opts, p.broadcast && rebind);
    req.set_ciaddr(lease.yiaddr());
    let server = lease.server().filter(|_| !rebind);
    let to = server.unwrap_or(Ipv4Addr::BROADCAST);
    let socks = link.sockets(lease.yiaddr())?;
    let reply = match exchange(&socks, &req, to, p, &|m| {
        is(m, MessageType::Ack) || is(m, MessageType::Nak)
    }) {
        Ok(r) => r,
        // The address may not be configured yet (no route to the server): broadcast.
        Err(_) if to != Ipv4Addr::BROADCAST => {
            exchange(&socks, &req, Ipv4Addr::BROADCAST, p, &|m| {
                is(m, MessageType::Ack) || is(m, MessageType::Nak)
            })?
        }
        Err(e) => return Err(e),
    }
    .ok_or_else(|| anyhow!("no answer to DHCPREQUEST (renew) on {}", link.ifname))?;
    if is(&reply, MessageType::Nak) {
        bail!("DHCPNAK received renewing {}", lease.yiaddr());
    }
    Ok(Lease {
        ack: reply,
        acquired: now_unix(),
    })
}

/// Retry `f` with the reference's budget; `stop` is polled between tries (true = give up).
pub fn with_retries<T>(
    p: &Params,
    stop: &dyn Fn(Duration) -> bool,
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut fast = FAST_TRIES;
    let mut delay = BACKOFF_START;
    loop {
        let err = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let jitter_ms = (rand_u32() % 2000) as i64 - 1000;
        let base = if fast > 0 { FAST_DELAY } else { delay };
        let sleep = Duration::from_millis((base.as_millis() as i64 + jitter_ms).max(0) as u64);
        if start.elapsed() + sleep >= p.resend_timeout {
            // The budget ran out: a bounded wait, try again later.
            return Err(crate::error::cni_err(
                crate::error::Code::TryAgainLater,
                format!(
                    "no more tries after {:?} (-resendtimeout): {err:#}",
                    p.resend_timeout
                ),
            ));
        }
        if stop(sleep) {
            return Err(err.context("stopped"));
        }
        if fast > 0 {
            fast -= 1;
        } else if delay < p.resend_max {
            delay = (delay * 2).min(p.resend_max.max(BACKOFF_START));
        }
    }
}

pub fn acquire(
    link: &Link,
    opts: &ClientOptions,
    p: &Params,
    stop: &dyn Fn(Duration) -> bool,
) -> Result<Lease> {
    with_retries(p, stop, || request_once(link, opts, p))
}

pub fn renew(
    link: &Link,
    lease: &Lease,
    opts: &ClientOptions,
    p: &Params,
    rebind: bool,
) -> Result<Lease> {
    renew_once(link, lease, opts, p, rebind)
}

/// DHCPRELEASE, unicast to the server (no answer comes).
pub fn release(link: &Link, lease: &Lease, opts: &ClientOptions) -> Result<()> {
    let mut m = message(link, random_xid(), MessageType::Release, opts, false);
    m.set_ciaddr(lease.yiaddr());
    let o = m.opts_mut();
    o.remove(OptionCode::ParameterRequestList);
    if let Some(s) = lease.server() {
        o.insert(DhcpOption::ServerIdentifier(s));
    }
    let to = lease.server().unwrap_or(Ipv4Addr::BROADCAST);
    let socks = link.sockets(lease.yiaddr())?;
    socks.send(&m, to).or_else(|e| {
        eprintln!(
            "dhcp daemon: {}: unicast DHCPRELEASE failed ({e:#}), broadcasting it",
            link.ifname
        );
        socks.send(&m, Ipv4Addr::BROADCAST)
    })
}
