//! Go `net/rpc` over HTTP CONNECT on a unix socket, as the reference's plugin and daemon
//! speak it: the client sends `CONNECT /_goRPC_ HTTP/1.0`, the server answers
//! `HTTP/1.0 200 Connected to Go RPC`, then each call is a gob `Request` header plus the
//! argument (`skel.CmdArgs`), and each answer a gob `Response` header plus the reply
//! (`current.Result` for `DHCP.Allocate`, `struct{}` for `DHCP.Release`).

use super::gob::{Decoder, Encoder, Ty, UserKind, UserTy, Value};
use crate::cni::types::{CniResult, Dns, IpConfig, Route};
use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub const RPC_PATH: &str = "/_goRPC_";
pub const CONNECTED: &str = "200 Connected to Go RPC";

static STRINGS: UserTy = UserTy {
    id: 80,
    name: "[]string",
    kind: UserKind::Slice(Ty::Str),
};
static IPNET: UserTy = UserTy {
    id: 82,
    name: "IPNet",
    kind: UserKind::Struct(&[("IP", Ty::Bytes), ("Mask", Ty::Bytes)]),
};
static INTERFACE: UserTy = UserTy {
    id: 83,
    name: "Interface",
    kind: UserKind::Struct(&[
        ("Name", Ty::Str),
        ("Mac", Ty::Str),
        ("Mtu", Ty::Int),
        ("Sandbox", Ty::Str),
        ("SocketPath", Ty::Str),
        ("PciID", Ty::Str),
    ]),
};
static INTERFACES: UserTy = UserTy {
    id: 84,
    name: "[]*types100.Interface",
    kind: UserKind::Slice(Ty::User(&INTERFACE)),
};
static IPCONFIG: UserTy = UserTy {
    id: 85,
    name: "IPConfig",
    kind: UserKind::Struct(&[
        ("Interface", Ty::Int),
        ("Address", Ty::User(&IPNET)),
        ("Gateway", Ty::Bytes),
    ]),
};
static IPCONFIGS: UserTy = UserTy {
    id: 86,
    name: "[]*types100.IPConfig",
    kind: UserKind::Slice(Ty::User(&IPCONFIG)),
};
static ROUTE: UserTy = UserTy {
    id: 87,
    name: "Route",
    kind: UserKind::Struct(&[
        ("Dst", Ty::User(&IPNET)),
        ("GW", Ty::Bytes),
        ("MTU", Ty::Int),
        ("AdvMSS", Ty::Int),
        ("Priority", Ty::Int),
        ("Table", Ty::Int),
        ("Scope", Ty::Int),
    ]),
};
static ROUTES: UserTy = UserTy {
    id: 88,
    name: "[]*types.Route",
    kind: UserKind::Slice(Ty::User(&ROUTE)),
};
static DNS: UserTy = UserTy {
    id: 89,
    name: "DNS",
    kind: UserKind::Struct(&[
        ("Nameservers", Ty::User(&STRINGS)),
        ("Domain", Ty::Str),
        ("Search", Ty::User(&STRINGS)),
        ("Options", Ty::User(&STRINGS)),
    ]),
};
/// `current.Result` (types/100).
pub static RESULT: UserTy = UserTy {
    id: 90,
    name: "Result",
    kind: UserKind::Struct(&[
        ("CNIVersion", Ty::Str),
        ("Interfaces", Ty::User(&INTERFACES)),
        ("IPs", Ty::User(&IPCONFIGS)),
        ("Routes", Ty::User(&ROUTES)),
        ("DNS", Ty::User(&DNS)),
    ]),
};
/// `skel.CmdArgs`.
pub static CMD_ARGS: UserTy = UserTy {
    id: 91,
    name: "CmdArgs",
    kind: UserKind::Struct(&[
        ("ContainerID", Ty::Str),
        ("Netns", Ty::Str),
        ("IfName", Ty::Str),
        ("Args", Ty::Str),
        ("Path", Ty::Str),
        ("NetnsOverride", Ty::Str),
        ("StdinData", Ty::Bytes),
    ]),
};
/// net/rpc's request header.
pub static REQUEST: UserTy = UserTy {
    id: 92,
    name: "Request",
    kind: UserKind::Struct(&[("ServiceMethod", Ty::Str), ("Seq", Ty::Uint)]),
};
/// net/rpc's response header.
pub static RESPONSE: UserTy = UserTy {
    id: 93,
    name: "Response",
    kind: UserKind::Struct(&[
        ("ServiceMethod", Ty::Str),
        ("Seq", Ty::Uint),
        ("Error", Ty::Str),
    ]),
};
/// `struct{}`: Release's reply, and the body net/rpc sends with an error.
pub static EMPTY: UserTy = UserTy {
    id: 94,
    name: "",
    kind: UserKind::Struct(&[]),
};

/// The reference's `skel.CmdArgs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdArgs {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    pub stdin: Vec<u8>,
}

impl CmdArgs {
    pub fn to_value(&self) -> Value {
        Value::Struct(vec![
            ("ContainerID".into(), Value::str(&self.container_id)),
            ("Netns".into(), Value::str(&self.netns)),
            ("IfName".into(), Value::str(&self.ifname)),
            ("Args".into(), Value::str(&self.args)),
            ("Path".into(), Value::str(&self.path)),
            ("StdinData".into(), Value::Bytes(self.stdin.clone())),
        ])
    }

    pub fn from_value(v: &Value) -> Result<CmdArgs> {
        Ok(CmdArgs {
            container_id: v.string("ContainerID")?,
            netns: v.string("Netns")?,
            ifname: v.string("IfName")?,
            args: v.string("Args")?,
            path: v.string("Path")?,
            stdin: v.bytes("StdinData")?,
        })
    }
}

/// Go's `net.IP` travels as its bytes (4 or 16).
fn ip_text(ip: &IpAddr) -> Value {
    match ip {
        IpAddr::V4(a) => Value::Bytes(a.octets().to_vec()),
        IpAddr::V6(a) => Value::Bytes(a.octets().to_vec()),
    }
}

/// Go's IPNet: the IP's bytes, the mask as 4 or 16 bytes.
fn ipnet_value(n: &IpNet) -> Value {
    let mask = match n.netmask() {
        IpAddr::V4(m) => m.octets().to_vec(),
        IpAddr::V6(m) => m.octets().to_vec(),
    };
    Value::Struct(vec![
        ("IP".into(), ip_text(&n.addr())),
        ("Mask".into(), Value::Bytes(mask)),
    ])
}

fn ip_from(v: Option<&Value>) -> Result<Option<IpAddr>> {
    match v {
        None => Ok(None),
        Some(Value::Bytes(b)) if b.is_empty() => Ok(None),
        Some(Value::Bytes(b)) => match b.len() {
            4 => Ok(Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(
                &b[..],
            )?)))),
            16 => {
                let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&b[..])?);
                // Go keeps IPv4 in 16 bytes (::ffff:a.b.c.d): the family is IPv4.
                Ok(Some(match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                }))
            }
            n => bail!("an IP of {n} bytes"),
        },
        Some(other) => bail!("IP of unexpected shape {other:?}"),
    }
}

fn ipnet_from(v: Option<&Value>) -> Result<Option<IpNet>> {
    let Some(v) = v else { return Ok(None) };
    let Some(ip) = ip_from(v.field("IP"))? else {
        return Ok(None);
    };
    let mask = v.bytes("Mask")?;
    let prefix = match mask.len() {
        4 => Ipv4Addr::from(<[u8; 4]>::try_from(&mask[..])?)
            .to_bits()
            .leading_ones(),
        16 => Ipv6Addr::from(<[u8; 16]>::try_from(&mask[..])?)
            .to_bits()
            .leading_ones(),
        n => bail!("netmask of {n} bytes"),
    };
    // Go's IPv4 addresses may travel as 16-byte masks for v4: keep the family of the IP.
    let prefix = match (ip, mask.len()) {
        (IpAddr::V4(_), 16) => prefix.saturating_sub(96),
        _ => prefix,
    };
    IpNet::new(ip, prefix as u8).map(Some).map_err(Into::into)
}

fn strings(v: &[String]) -> Value {
    Value::List(v.iter().map(|s| Value::str(s)).collect())
}

fn strings_from(v: &Value, name: &str) -> Result<Vec<String>> {
    v.list(name)?
        .iter()
        .map(|s| match s {
            Value::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| anyhow!("not UTF-8")),
            other => bail!("{name}: not a string: {other:?}"),
        })
        .collect()
}

/// A result in Go's `current.Result` shape (IPAM results carry no interfaces).
pub fn result_to_value(r: &CniResult) -> Value {
    let ips = r
        .ips
        .iter()
        .map(|ip| {
            let mut f = vec![("Address".into(), ipnet_value(&ip.address))];
            if let Some(i) = ip.interface {
                f.push(("Interface".into(), Value::Int(i as i64)));
            }
            if let Some(gw) = &ip.gateway {
                f.push(("Gateway".into(), ip_text(gw)));
            }
            Value::Struct(f)
        })
        .collect();
    let routes = r
        .routes
        .iter()
        .map(|rt| {
            let mut f = vec![
                ("Dst".into(), ipnet_value(&rt.dst)),
                ("MTU".into(), Value::Int(rt.mtu)),
                ("AdvMSS".into(), Value::Int(rt.advmss)),
                ("Priority".into(), Value::Int(rt.priority)),
            ];
            if let Some(gw) = &rt.gw {
                f.push(("GW".into(), ip_text(gw)));
            }
            // Go's *int: a pointer to 0 is sent as 0 and comes back as nil; harmless here.
            if let Some(t) = rt.table {
                f.push(("Table".into(), Value::Int(t)));
            }
            if let Some(s) = rt.scope {
                f.push(("Scope".into(), Value::Int(s)));
            }
            Value::Struct(f)
        })
        .collect();
    Value::Struct(vec![
        ("CNIVersion".into(), Value::str(&r.cni_version)),
        ("IPs".into(), Value::List(ips)),
        ("Routes".into(), Value::List(routes)),
        (
            "DNS".into(),
            Value::Struct(vec![
                ("Nameservers".into(), strings(&r.dns.nameservers)),
                ("Domain".into(), Value::str(&r.dns.domain)),
                ("Search".into(), strings(&r.dns.search)),
                ("Options".into(), strings(&r.dns.options)),
            ]),
        ),
    ])
}

pub fn result_from_value(v: &Value) -> Result<CniResult> {
    let mut r = CniResult {
        cni_version: v.string("CNIVersion")?,
        ..Default::default()
    };
    for ip in v.list("IPs")? {
        let address = ipnet_from(ip.field("Address"))?
            .ok_or_else(|| anyhow!("daemon result: an IP without an address"))?;
        r.ips.push(IpConfig {
            interface: ip.int("Interface")?.map(|i| i.max(0) as usize),
            address,
            gateway: ip_from(ip.field("Gateway"))?,
        });
    }
    for rt in v.list("Routes")? {
        let dst = ipnet_from(rt.field("Dst"))?
            .ok_or_else(|| anyhow!("daemon result: a route without a destination"))?;
        r.routes.push(Route {
            gw: ip_from(rt.field("GW"))?,
            mtu: rt.int("MTU")?.unwrap_or(0),
            advmss: rt.int("AdvMSS")?.unwrap_or(0),
            priority: rt.int("Priority")?.unwrap_or(0),
            table: rt.int("Table")?,
            scope: rt.int("Scope")?,
            ..Route::new(dst, None)
        });
    }
    if let Some(dns) = v.field("DNS") {
        r.dns = Dns {
            nameservers: strings_from(dns, "Nameservers")?,
            domain: dns.string("Domain")?,
            search: strings_from(dns, "Search")?,
            options: strings_from(dns, "Options")?,
        };
    }
    Ok(r)
}

/// Read an HTTP head (request or status line plus headers) up to its blank line.
fn read_head(r: &mut impl BufRead) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        // A bounded head: 64 lines of 1 KiB is far more than CONNECT ever needs.
        let n = r.by_ref().take(1024).read_line(&mut line)?;
        if n == 0 {
            bail!("connection closed during the HTTP handshake");
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(lines);
        }
        if lines.len() > 64 {
            bail!("HTTP head too long");
        }
        lines.push(line);
    }
}

/// An error the daemon returned (the call reached it), as opposed to a transport failure.
#[derive(Debug)]
pub struct ServerError(pub String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ServerError {}

/// A client connection to a dhcp daemon.
pub struct Client {
    enc: Encoder<UnixStream>,
    dec: Decoder<BufReader<UnixStream>>,
    seq: u64,
}

impl Client {
    /// Connect and do the HTTP CONNECT handshake. `timeout` bounds every read and write.
    pub fn dial(path: &str, timeout: Duration) -> std::io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut w = stream.try_clone()?;
        w.write_all(format!("CONNECT {RPC_PATH} HTTP/1.0\n\n").as_bytes())?;
        let mut r = BufReader::new(stream);
        let head = read_head(&mut r).map_err(std::io::Error::other)?;
        let status = head.first().map(String::as_str).unwrap_or("");
        if !status.ends_with(CONNECTED) {
            return Err(std::io::Error::other(format!(
                "unexpected HTTP response: {status:?}"
            )));
        }
        Ok(Client {
            enc: Encoder::new(w),
            dec: Decoder::new(r),
            seq: 0,
        })
    }

    /// One call: `reply` is the reply's value (Go discards it on error, so do we).
    pub fn call(&mut self, method: &str, args: &CmdArgs) -> Result<Value> {
        let header = Value::Struct(vec![
            ("ServiceMethod".into(), Value::str(method)),
            ("Seq".into(), Value::Uint(self.seq)),
        ]);
        self.seq += 1;
        self.enc
            .send(&[(&REQUEST, &header), (&CMD_ARGS, &args.to_value())])
            .context("sending the request")?;
        let resp = self.dec.read().context("reading the response")?;
        let body = self.dec.read().context("reading the reply")?;
        let err = resp.string("Error")?;
        if !err.is_empty() {
            return Err(ServerError(err).into());
        }
        Ok(body)
    }
}

/// A method's answer: the reply's type and value, or the error text sent back.
pub type Reply = Result<(&'static UserTy, Value), String>;

/// The server side of one connection: answers the handshake, then serves calls until
/// the peer closes. `handle(method, args)` returns the reply's type and value.
pub fn serve_conn(stream: UnixStream, handle: &dyn Fn(&str, CmdArgs) -> Reply) -> Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let head = read_head(&mut r)?;
    let line = head.first().map(String::as_str).unwrap_or("");
    let mut parts = line.split(' ');
    if parts.next() != Some("CONNECT") || parts.next() != Some(RPC_PATH) {
        w.write_all(b"HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n405 must CONNECT\n")?;
        bail!("not an RPC CONNECT: {line:?}");
    }
    w.write_all(format!("HTTP/1.0 {CONNECTED}\n\n").as_bytes())?;
    let mut enc = Encoder::new(w);
    let mut dec = Decoder::new(r);
    loop {
        let req = match dec.read() {
            Ok(v) => v,
            Err(e) => {
                let eof = e
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
                return if eof { Ok(()) } else { Err(e) };
            }
        };
        let method = req.string("ServiceMethod")?;
        let seq = req.int("Seq")?.unwrap_or(0) as u64;
        let body = dec.read()?;
        let outcome = match CmdArgs::from_value(&body) {
            Ok(args) => handle(&method, args),
            Err(e) => Err(format!("reading body {e:#}")),
        };
        let (err, ty, reply) = match outcome {
            Ok((ty, v)) => (String::new(), ty, v),
            Err(msg) => (msg, &EMPTY, Value::Struct(vec![])),
        };
        let header = Value::Struct(vec![
            ("ServiceMethod".into(), Value::str(&method)),
            ("Seq".into(), Value::Uint(seq)),
            ("Error".into(), Value::str(&err)),
        ]);
        enc.send(&[(&RESPONSE, &header), (ty, &reply)])?;
    }
}
