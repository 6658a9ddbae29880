//! CNI results: one internal model (the 1.x shape) and conversion to and from every
//! spec version's JSON.
//!
//! Three result shapes exist: {0.1.0, 0.2.0} (`ip4`/`ip6`), {0.3.0, 0.3.1, 0.4.0}
//! (`ips[].version`) and {1.0.0, 1.1.0}. Everything inside cnibox works on [`CniResult`];
//! shapes only matter when reading a result (prevResult, a delegate's stdout) and when
//! printing one. Unlike the reference, printing always re-shapes, so a plugin can never
//! print a 1.x body labelled 0.3.1 (the reference's loopback does).

use crate::error::{cni_err, Code};
use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// Every spec version cnibox accepts and answers in, oldest first.
pub const ALL_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The version cnibox itself implements.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The three result shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    V02,
    V04,
    V1,
}

pub fn shape_of(version: &str) -> Option<Shape> {
    match version {
        "" | "0.1.0" | "0.2.0" => Some(Shape::V02),
        "0.3.0" | "0.3.1" | "0.4.0" => Some(Shape::V04),
        "1.0.0" | "1.1.0" => Some(Shape::V1),
        _ => None,
    }
}

/// Parse "a.b.c" (parts may be missing: "1" is 1.0.0) like the reference's ParseVersion.
pub fn parse_version(v: &str) -> Result<(u64, u64, u64)> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() > 3 {
        bail!("invalid version {v:?}: too many parts");
    }
    let num = |i: usize, what: &str| -> Result<u64> {
        match parts.get(i) {
            None => Ok(0),
            Some(p) => p
                .parse::<u64>()
                .map_err(|e| anyhow!("failed to convert {what} version part {p:?}: {e}")),
        }
    };
    Ok((num(0, "major")?, num(1, "minor")?, num(2, "micro")?))
}

/// `a >= b` for version strings; errors are decode failures (code 6).
pub fn version_at_least(a: &str, b: &str) -> Result<bool> {
    let pa = parse_version(a).map_err(|e| cni_err(Code::Decode, e.to_string()))?;
    let pb = parse_version(b).map_err(|e| cni_err(Code::Decode, e.to_string()))?;
    Ok(pa >= pb)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub sandbox: String,
    pub socket_path: String,
    pub pci_id: String,
}

impl Interface {
    /// A host-side interface (no sandbox).
    pub fn host(name: &str, mac: &str) -> Interface {
        Interface {
            name: name.to_string(),
            mac: mac.to_string(),
            ..Default::default()
        }
    }

    /// An interface inside the container's namespace `sandbox`.
    pub fn in_sandbox(name: &str, mac: &str, sandbox: &str) -> Interface {
        Interface {
            sandbox: sandbox.to_string(),
            ..Interface::host(name, mac)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into `interfaces`; IPAM results leave it unset.
    pub interface: Option<usize>,
    /// Address with its prefix length (host bits kept: "10.0.0.5/24").
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub mtu: i64,
    pub advmss: i64,
    pub priority: i64,
    pub table: Option<i64>,
    pub scope: Option<i64>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: 0,
            advmss: 0,
            priority: 0,
            table: None,
            scope: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Dns {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A result in the 1.x model. `cni_version` is the version it will be printed in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

// ---------------------------------------------------------------------------------------
// Parsing

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    crate::cni::decode::get_ci(obj, name).filter(|v| !v.is_null())
}

fn get_str(obj: &Map<String, Value>, name: &str) -> Result<String> {
    match field(obj, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("{name}: expected a string, got {other}"),
    }
}

fn get_int(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| anyhow!("{name}: expected an integer, got {v}")),
    }
}

fn get_list<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a [Value]> {
    match field(obj, name) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => bail!("{name}: expected a list, got {other}"),
    }
}

fn as_obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| anyhow!("{what}: expected an object, got {v}"))
}

/// Parse an IP as Go's net.ParseIP does for JSON (empty = unset).
pub fn parse_ip_opt(s: &str) -> Result<Option<IpAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<IpAddr>()
        .map(Some)
        .map_err(|_| anyhow!("invalid IP address: {s}"))
}

/// Parse "ip/len", keeping host bits, as Go's ParseCIDR-based IPNet does.
pub fn parse_cidr(s: &str) -> Result<IpNet> {
    s.parse::<IpNet>()
        .map_err(|_| anyhow!("invalid CIDR address: {s}"))
}

/// Parse one route object (`dst`, `gw`, `mtu`, `advmss`, `priority`, `table`, `scope`).
pub fn parse_route(v: &Value) -> Result<Route> {
    let o = as_obj(v, "route")?;
    Ok(Route {
        dst: parse_cidr(&get_str(o, "dst")?)?,
        gw: parse_ip_opt(&get_str(o, "gw")?)?,
        mtu: get_int(o, "mtu")?.unwrap_or(0),
        advmss: get_int(o, "advmss")?.unwrap_or(0),
        priority: get_int(o, "priority")?.unwrap_or(0),
        table: get_int(o, "table")?,
        scope: get_int(o, "scope")?,
    })
}

fn parse_dns(o: &Map<String, Value>) -> Result<Dns> {
    match field(o, "dns") {
        None => Ok(Dns::default()),
        Some(v) => crate::cni::decode::from_value(v.clone()).context("dns"),
    }
}

fn parse_ipconfig(v: &Value) -> Result<IpConfig> {
    let o = as_obj(v, "ips entry")?;
    let interface = match get_int(o, "interface")? {
        None => None,
        Some(i) if i >= 0 => Some(i as usize),
        Some(i) => bail!("invalid interface index {i}"),
    };
    Ok(IpConfig {
        interface,
        address: parse_cidr(&get_str(o, "address")?)?,
        gateway: parse_ip_opt(&get_str(o, "gateway")?)?,
    })
}

impl CniResult {
    /// Parse a result JSON of the given shape. `version` is the label it gets.
    pub fn parse_shape(v: &Value, shape: Shape, version: &str) -> Result<CniResult> {
        let o = as_obj(v, "result")?;
        let mut r = CniResult {
            cni_version: version.to_string(),
            dns: parse_dns(o)?,
            ..Default::default()
        };
        match shape {
            Shape::V02 => {
                for key in ["ip4", "ip6"] {
                    if let Some(ipc) = field(o, key) {
                        let ipc = as_obj(ipc, key)?;
                        r.ips.push(IpConfig {
                            interface: None,
                            address: parse_cidr(&get_str(ipc, "ip")?)?,
                            gateway: parse_ip_opt(&get_str(ipc, "gateway")?)?,
                        });
                        for rt in get_list(ipc, "routes")? {
                            r.routes.push(parse_route(rt)?);
                        }
                    }
                }
            }
            Shape::V04 | Shape::V1 => {
                for i in get_list(o, "interfaces")? {
                    let io = as_obj(i, "interface")?;
                    let mtu = get_int(io, "mtu")?.unwrap_or(0);
                    r.interfaces.push(Interface {
                        name: get_str(io, "name")?,
                        mac: get_str(io, "mac")?,
                        mtu: u32::try_from(mtu)
                            .map_err(|_| anyhow!("invalid interface mtu {mtu}"))?,
                        sandbox: get_str(io, "sandbox")?,
                        socket_path: get_str(io, "socketPath")?,
                        pci_id: get_str(io, "pciID")?,
                    });
                }
                for ip in get_list(o, "ips")? {
                    r.ips.push(parse_ipconfig(ip)?);
                }
                for rt in get_list(o, "routes")? {
                    r.routes.push(parse_route(rt)?);
                }
            }
        }
        Ok(r)
    }

    /// Parse a result printed by another plugin (a delegate): its own `cniVersion`
    /// decides the shape; without one, the caller's config version is assumed.
    pub fn parse_any(v: &Value, assumed_version: &str) -> Result<CniResult> {
        let version = match v.get("cniVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => assumed_version.to_string(),
        };
        let shape = shape_of(&version)
            .ok_or_else(|| anyhow!("unsupported result cniVersion {version:?}"))?;
        CniResult::parse_shape(v, shape, &version)
    }

    /// Parse a `prevResult` under a config of `conf_version`: the config's version picks
    /// the shape, and a prevResult labelled with a version of another shape is refused
    /// (its fields would be misread). Same-shape labels are relabelled to the config's.
    pub fn parse_prev(v: &Value, conf_version: &str) -> Result<CniResult> {
        let shape = shape_of(conf_version)
            .ok_or_else(|| anyhow!("unsupported cniVersion {conf_version:?}"))?;
        if let Some(Value::String(s)) = v.get("cniVersion") {
            if !s.is_empty() && shape_of(s) != Some(shape) {
                let same: Vec<&str> = ALL_VERSIONS
                    .iter()
                    .copied()
                    .filter(|x| shape_of(x) == Some(shape))
                    .collect();
                return Err(cni_err(
                    Code::Decode,
                    format!("failed to parse prevResult: result type supports {same:?} but unmarshalled CNIVersion is {s:?}"),
                ));
            }
        }
        CniResult::parse_shape(v, shape, conf_version)
            .map_err(|e| cni_err(Code::Decode, format!("failed to parse prevResult: {e:#}")))
    }

    /// Render in `version`'s shape.
    pub fn to_json(&self, version: &str) -> Result<Value> {
        let shape = shape_of(version).ok_or_else(|| {
            cni_err(
                Code::IncompatibleVersion,
                format!("unsupported CNI result version {version:?}"),
            )
        })?;
        let mut o = Map::new();
        o.insert("cniVersion".into(), json!(version));
        match shape {
            Shape::V02 => {
                let v4 = self.ips.iter().find(|i| i.address.addr().is_ipv4());
                let v6 = self.ips.iter().find(|i| i.address.addr().is_ipv6());
                if v4.is_none() && v6.is_none() {
                    return Err(cni_err(
                        Code::IncompatibleVersion,
                        "cannot convert: no valid IP addresses",
                    ));
                }
                for (key, ipc, want_v4) in [("ip4", v4, true), ("ip6", v6, false)] {
                    let Some(ipc) = ipc else { continue };
                    let mut e = Map::new();
                    e.insert("ip".into(), json!(ipc.address.to_string()));
                    if let Some(gw) = ipc.gateway {
                        e.insert("gateway".into(), json!(gw.to_string()));
                    }
                    let routes: Vec<Value> = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.addr().is_ipv4() == want_v4)
                        .map(|r| {
                            let mut m = Map::new();
                            m.insert("dst".into(), json!(r.dst.to_string()));
                            if let Some(gw) = r.gw {
                                m.insert("gw".into(), json!(gw.to_string()));
                            }
                            Value::Object(m)
                        })
                        .collect();
                    if !routes.is_empty() {
                        e.insert("routes".into(), Value::Array(routes));
                    }
                    o.insert(key.into(), Value::Object(e));
                }
                o.insert("dns".into(), serde_json::to_value(&self.dns)?);
            }
            Shape::V04 | Shape::V1 => {
                let v1 = shape == Shape::V1;
                if !self.interfaces.is_empty() {
                    let list: Vec<Value> = self
                        .interfaces
                        .iter()
                        .map(|i| {
                            let mut m = Map::new();
                            m.insert("name".into(), json!(i.name));
                            let mut opt = |k: &str, v: &str| {
                                if !v.is_empty() {
                                    m.insert(k.into(), json!(v));
                                }
                            };
                            opt("mac", &i.mac);
                            if v1 && i.mtu != 0 {
                                m.insert("mtu".into(), json!(i.mtu));
                            }
                            let mut opt = |k: &str, v: &str| {
                                if !v.is_empty() {
                                    m.insert(k.into(), json!(v));
                                }
                            };
                            opt("sandbox", &i.sandbox);
                            if v1 {
                                opt("socketPath", &i.socket_path);
                                opt("pciID", &i.pci_id);
                            }
                            Value::Object(m)
                        })
                        .collect();
                    o.insert("interfaces".into(), Value::Array(list));
                }
                if !self.ips.is_empty() {
                    let list: Vec<Value> = self
                        .ips
                        .iter()
                        .map(|ip| {
                            let mut m = Map::new();
                            if !v1 {
                                let fam = if ip.address.addr().is_ipv4() {
                                    "4"
                                } else {
                                    "6"
                                };
                                m.insert("version".into(), json!(fam));
                            }
                            if let Some(i) = ip.interface {
                                m.insert("interface".into(), json!(i));
                            }
                            m.insert("address".into(), json!(ip.address.to_string()));
                            if let Some(gw) = ip.gateway {
                                m.insert("gateway".into(), json!(gw.to_string()));
                            }
                            Value::Object(m)
                        })
                        .collect();
                    o.insert("ips".into(), Value::Array(list));
                }
                if !self.routes.is_empty() {
                    o.insert(
                        "routes".into(),
                        Value::Array(self.routes.iter().map(route_json).collect()),
                    );
                }
                // 0.x always printed "dns": {}; 1.x omits it when empty (libcni >= 1.2).
                if !v1 || !self.dns.is_empty() {
                    o.insert("dns".into(), serde_json::to_value(&self.dns)?);
                }
            }
        }
        Ok(Value::Object(o))
    }

    /// Relabel and return the JSON in this result's own version.
    pub fn to_own_json(&self) -> Result<Value> {
        self.to_json(&self.cni_version)
    }
}

/// A route as the reference marshals `types.Route` (zero fields omitted).
pub fn route_json(r: &Route) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), json!(r.dst.to_string()));
    if let Some(gw) = r.gw {
        m.insert("gw".into(), json!(gw.to_string()));
    }
    for (k, v) in [
        ("mtu", r.mtu),
        ("advmss", r.advmss),
        ("priority", r.priority),
    ] {
        if v != 0 {
            m.insert(k.into(), json!(v));
        }
    }
    if let Some(t) = r.table {
        m.insert("table".into(), json!(t));
    }
    if let Some(s) = r.scope {
        m.insert("scope".into(), json!(s));
    }
    Value::Object(m)
}

/// Print JSON the way the reference does: 4-space indent, no trailing newline.
pub fn to_pretty(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serializing a Value into a Vec cannot fail.
    let _ = serde::Serialize::serialize(v, &mut ser);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: 1400,
                sandbox: "/run/netns/x".into(),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    interface: Some(0),
                    address: "10.1.2.3/24".parse().unwrap(),
                    gateway: Some("10.1.2.1".parse().unwrap()),
                },
                IpConfig {
                    interface: Some(0),
                    address: "10.9.2.3/24".parse().unwrap(),
                    gateway: None,
                },
                IpConfig {
                    interface: Some(0),
                    address: "2001:db8::3/64".parse().unwrap(),
                    gateway: Some("2001:db8::1".parse().unwrap()),
                },
            ],
            routes: vec![
                Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.1.2.1".parse().unwrap()),
                ),
                Route {
                    table: Some(0),
                    scope: Some(253),
                    ..Route::new("::/0".parse().unwrap(), None)
                },
            ],
            dns: Dns {
                nameservers: vec!["8.8.8.8".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn v1_shape() {
        let v = sample().to_json("1.0.0").unwrap();
        assert_eq!(v["interfaces"][0]["mtu"], 1400);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][1]["table"], 0);
        assert_eq!(v["routes"][1]["scope"], 253);
        let mut empty = sample();
        empty.dns = Dns::default();
        assert!(empty.to_json("1.1.0").unwrap().get("dns").is_none());
    }

    #[test]
    fn v04_shape() {
        let v = sample().to_json("0.3.1").unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][2]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
        let mut empty = sample();
        empty.dns = Dns::default();
        assert_eq!(empty.to_json("0.4.0").unwrap()["dns"], json!({}));
    }

    #[test]
    fn v02_shape_takes_first_of_each_family() {
        let v = sample().to_json("0.2.0").unwrap();
        assert_eq!(v["ip4"]["ip"], "10.1.2.3/24");
        assert_eq!(
            v["ip4"]["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}])
        );
        assert_eq!(v["ip6"]["ip"], "2001:db8::3/64");
        assert_eq!(v["ip6"]["routes"], json!([{"dst": "::/0"}]));
        assert!(v.get("interfaces").is_none());
    }

    #[test]
    fn v02_needs_an_ip() {
        let r = CniResult {
            cni_version: "0.2.0".into(),
            interfaces: sample().interfaces,
            ..Default::default()
        };
        let e = r.to_json("0.2.0").unwrap_err();
        assert_eq!(
            crate::error::CniError::from_anyhow(&e).msg,
            "cannot convert: no valid IP addresses"
        );
    }

    #[test]
    fn round_trip_every_version() {
        for ver in ALL_VERSIONS {
            let v = sample().to_json(ver).unwrap();
            let back = CniResult::parse_any(&v, "1.1.0").unwrap();
            assert_eq!(back.cni_version, *ver);
            let again = back.to_json(ver).unwrap();
            assert_eq!(v, again, "version {ver}");
        }
    }

    #[test]
    fn up_conversion_from_02() {
        let v = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24", "gateway": "10.0.0.1",
            "routes": [{"dst": "0.0.0.0/0"}]}, "ip6": {"ip": "fd00::2/64"}, "dns": {}});
        let r = CniResult::parse_any(&v, "1.0.0").unwrap();
        let out = r.to_json("1.0.0").unwrap();
        assert_eq!(
            out,
            json!({"cniVersion": "1.0.0", "ips": [
            {"address": "10.0.0.2/24", "gateway": "10.0.0.1"}, {"address": "fd00::2/64"}],
            "routes": [{"dst": "0.0.0.0/0"}]})
        );
        let out = r.to_json("0.4.0").unwrap();
        assert_eq!(out["ips"][1]["version"], "6");
    }

    #[test]
    fn prev_result_shape_must_match_config() {
        let v = sample().to_json("0.4.0").unwrap();
        let e = CniResult::parse_prev(&v, "1.0.0").unwrap_err();
        assert_eq!(crate::error::CniError::from_anyhow(&e).code, 6);
        let r = CniResult::parse_prev(&v, "0.3.1").unwrap();
        assert_eq!(r.to_own_json().unwrap()["cniVersion"], "0.3.1");
        let mut unlabelled = sample().to_json("1.0.0").unwrap();
        unlabelled.as_object_mut().unwrap().remove("cniVersion");
        assert!(CniResult::parse_prev(&unlabelled, "1.1.0").is_ok());
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("1.1.0", "0.4.0").unwrap());
        assert!(!version_at_least("0.3.1", "0.4.0").unwrap());
        assert!(version_at_least("1", "1.0.0").unwrap());
        assert!(version_at_least("x.1", "1.0.0").is_err());
    }
}
