//! host-local address ranges: config, canonicalisation and validation with the
//! reference's rules and messages, and the round-robin iterator.

use crate::error::{cni_err, Code};
use anyhow::{anyhow, Result};
use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;

/// One range as written in the config (`subnet`, `rangeStart`, `rangeEnd`, `gateway`).
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(default)]
pub struct RangeConf {
    pub subnet: String,
    #[serde(rename = "rangeStart")]
    pub range_start: String,
    #[serde(rename = "rangeEnd")]
    pub range_end: String,
    pub gateway: String,
}

/// A canonical range: the subnet without host bits, inclusive start and end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::from((v as u32).to_be_bytes())
    } else {
        IpAddr::from(v.to_be_bytes())
    }
}

pub fn next_ip(ip: IpAddr) -> IpAddr {
    u128_to_ip(ip_to_u128(ip).wrapping_add(1), ip.is_ipv4())
}

/// A config error (code 7) located at `loc` ("ipam.ranges[0][1]", ...), so the user
/// sees which entry of which list is wrong.
pub fn config_err(loc: &str, msg: impl fmt::Display) -> anyhow::Error {
    cni_err(Code::InvalidConfig, format!("{loc}: {msg}"))
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// An IP address as Go's `net.ParseIP` reads it: IPv4-mapped IPv6 addresses are IPv4.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// An optional IP-valued key of a range (empty = unset).
fn ip_key(loc: &str, key: &str, s: &str) -> Result<Option<IpAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    parse_ip(s)
        .map(Some)
        .ok_or_else(|| config_err(loc, format!("\"{key}\": {s:?} is not an IP address")))
}

/// `subnet`: "address/prefix length", read by hand so the message says which half is
/// wrong (a prefix beyond the family's bits is the usual mistake).
fn parse_subnet(loc: &str, s: &str) -> Result<IpNet> {
    if s.is_empty() {
        return Err(config_err(loc, "\"subnet\" is missing"));
    }
    let Some((addr, len)) = s.split_once('/') else {
        return Err(config_err(
            loc,
            format!("\"subnet\": {s:?} is not a CIDR (address/prefix length)"),
        ));
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(config_err(
            loc,
            format!("\"subnet\": {s:?} is not a CIDR: {addr:?} is not an IP address"),
        ));
    };
    let bits: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len.parse::<u8>() {
        Ok(l) if l <= bits && len.bytes().all(|b| b.is_ascii_digit()) => l,
        _ => {
            return Err(config_err(
                loc,
                format!(
                    "\"subnet\": {s:?}: prefix length {len:?} is out of range for {} (0-{bits})",
                    family(ip)
                ),
            ))
        }
    };
    IpNet::new(ip, len).map_err(|e| config_err(loc, format!("\"subnet\": {s:?}: {e}")))
}

impl Range {
    /// Validate and canonicalise one range as the reference does (same defaults, same
    /// refusals), plus what the reference accepts but can never work: a gateway outside
    /// the subnet, `rangeStart` after `rangeEnd`, a range that holds only its gateway.
    pub fn from_conf(c: &RangeConf, loc: &str) -> Result<Range> {
        let net = parse_subnet(loc, &c.subnet)?;
        let v4 = net.addr().is_ipv4();
        let bits = if v4 { 32 } else { 128 };
        // Network and gateway take two addresses (and broadcast a third in IPv4), so
        // /31, /32, /127 and /128 leave nothing to hand out; the reference refuses them.
        if net.prefix_len() > bits - 2 {
            return Err(config_err(
                loc,
                format!(
                    "\"subnet\": {net} is too small to allocate from (the smallest is /{})",
                    bits - 2
                ),
            ));
        }
        if net.addr() != net.network() {
            return Err(config_err(
                loc,
                format!(
                    "\"subnet\": {net} has host bits set (the network is {})",
                    net.trunc()
                ),
            ));
        }
        let first = next_ip(net.network());
        let last = if v4 {
            u128_to_ip(ip_to_u128(net.broadcast()) - 1, true)
        } else {
            net.broadcast()
        };
        let inside = |key: &str, ip: Option<IpAddr>| -> Result<()> {
            match ip {
                Some(ip) if !net.contains(&ip) => Err(config_err(
                    loc,
                    format!("\"{key}\": {ip} is outside \"subnet\" {net}"),
                )),
                _ => Ok(()),
            }
        };
        let gateway = ip_key(loc, "gateway", &c.gateway)?;
        let start = ip_key(loc, "rangeStart", &c.range_start)?;
        let end = ip_key(loc, "rangeEnd", &c.range_end)?;
        inside("gateway", gateway)?;
        inside("rangeStart", start)?;
        inside("rangeEnd", end)?;
        let r = Range {
            subnet: net,
            start: start.unwrap_or(first),
            end: end.unwrap_or(last),
            gateway: gateway.unwrap_or(first),
        };
        if ip_to_u128(r.start) > ip_to_u128(r.end) {
            let what = |given: Option<IpAddr>| if given.is_some() { "" } else { " (default)" };
            return Err(config_err(
                loc,
                format!(
                    "\"rangeStart\": {}{} is after \"rangeEnd\" {}{}",
                    r.start,
                    what(start),
                    r.end,
                    what(end)
                ),
            ));
        }
        if r.start == r.end && r.start == r.gateway {
            return Err(config_err(
                loc,
                format!(
                    "the range {r} holds only its \"gateway\" {}: no address to allocate",
                    r.gateway
                ),
            ));
        }
        Ok(r)
    }

    /// Inside the subnet and between start and end (inclusive).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.addr().is_ipv4()
            && self.subnet.contains(&ip)
            && ip_to_u128(ip) >= ip_to_u128(self.start)
            && ip_to_u128(ip) <= ip_to_u128(self.end)
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.subnet.addr().is_ipv4() == o.subnet.addr().is_ipv4()
            && (self.contains(o.start)
                || self.contains(o.end)
                || o.contains(self.start)
                || o.contains(self.end))
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A range set yields one address; its ranges are a pool tried in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    /// `loc` names the set ("ipam.ranges[1]"); its ranges are `loc[i]`.
    pub fn from_conf(confs: &[RangeConf], loc: &str) -> Result<RangeSet> {
        if confs.is_empty() {
            return Err(config_err(
                loc,
                "the range set is empty (it needs at least one range)",
            ));
        }
        let ranges = confs
            .iter()
            .enumerate()
            .map(|(i, c)| Range::from_conf(c, &format!("{loc}[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let first = ranges[0].subnet;
        if let Some((i, r)) = ranges
            .iter()
            .enumerate()
            .find(|(_, r)| r.subnet.addr().is_ipv4() != first.addr().is_ipv4())
        {
            return Err(config_err(
                &format!("{loc}[{i}]"),
                format!(
                    "\"subnet\" {} is {} but {loc}[0] ({first}) is {}: a range set holds one family",
                    r.subnet,
                    family(r.subnet.addr()),
                    family(first.addr())
                ),
            ));
        }
        for (i, a) in ranges.iter().enumerate() {
            for (j, b) in ranges.iter().enumerate().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(config_err(
                        &format!("{loc}[{j}]"),
                        format!(
                            "{b} (in {}) overlaps {loc}[{i}] ({a} in {})",
                            b.subnet, a.subnet
                        ),
                    ));
                }
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn is_v4(&self) -> bool {
        self.0.first().is_some_and(|r| r.subnet.addr().is_ipv4())
    }

    pub fn range_for(&self, ip: IpAddr) -> Result<&Range> {
        self.0
            .iter()
            .find(|r| r.contains(ip))
            .ok_or_else(|| anyhow!("{ip} not in range set {self}"))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }

    fn overlaps(&self, o: &RangeSet) -> bool {
        self.0.iter().any(|a| o.0.iter().any(|b| a.overlaps(b)))
    }

    /// Candidates in the reference's round-robin order: after `last` (if it lies in the
    /// set), else from the first range's start; wrapping from a range's end to the next
    /// range's start; skipping gateways; each address once. Yields (address, range).
    pub fn iter_from(&self, last: Option<IpAddr>) -> RangeIter<'_> {
        let start = last.filter(|ip| self.contains(*ip));
        let idx = start
            .and_then(|ip| self.0.iter().position(|r| r.contains(ip)))
            .unwrap_or(0);
        RangeIter {
            set: self,
            idx,
            cur: start,
            first: None,
            done: false,
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|r| r.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

pub struct RangeIter<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<IpAddr>,
    first: Option<IpAddr>,
    done: bool,
}

impl<'a> Iterator for RangeIter<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done || self.set.0.is_empty() {
                return None;
            }
            let r = &self.set.0[self.idx];
            let next = match self.cur {
                None => r.start,
                Some(c) if c == r.end => {
                    self.idx = (self.idx + 1) % self.set.0.len();
                    self.set.0[self.idx].start
                }
                Some(c) => next_ip(c),
            };
            self.cur = Some(next);
            match self.first {
                None => self.first = Some(next),
                Some(f) if f == next => {
                    self.done = true;
                    return None;
                }
                Some(_) => {}
            }
            let r = &self.set.0[self.idx];
            if next == r.gateway {
                continue;
            }
            return Some((next, r));
        }
    }
}

/// The effective range sets: `[runtimeConfig.ipRanges..., legacy top-level range,
/// ipam.ranges...]`, validated, with the 0.1/0.2 one-per-family limit. `ranges` is
/// `None` when the key is absent (so an explicitly empty list can be named).
pub fn build_range_sets(
    runtime: &[Vec<RangeConf>],
    legacy: Option<&RangeConf>,
    ranges: Option<&[Vec<RangeConf>]>,
    cni_version: &str,
) -> Result<Vec<RangeSet>> {
    let mut all: Vec<(String, &[RangeConf])> = runtime
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("runtimeConfig.ipRanges[{i}]"), v.as_slice()))
        .collect();
    // Like the reference, the top-level keys form a range only when `subnet` is set.
    if let Some(l) = legacy.filter(|l| !l.subnet.is_empty()) {
        all.push(("ipam".to_string(), std::slice::from_ref(l)));
    }
    all.extend(
        ranges
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("ipam.ranges[{i}]"), v.as_slice())),
    );
    if all.is_empty() {
        let why = match ranges {
            Some(_) => "\"ranges\" is empty and there is no \"subnet\"",
            None => "neither \"ranges\" nor \"subnet\" is set",
        };
        return Err(cni_err(
            Code::InvalidConfig,
            format!("no IP ranges specified: {why}"),
        ));
    }
    let sets = all
        .iter()
        .map(|(loc, confs)| {
            if *loc == "ipam" {
                // The legacy range is a set of one, located at the ipam object itself.
                Range::from_conf(&confs[0], loc).map(|r| RangeSet(vec![r]))
            } else {
                RangeSet::from_conf(confs, loc)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in sets.iter().enumerate() {
        for (j, b) in sets.iter().enumerate().take(i) {
            if a.overlaps(b) {
                return Err(config_err(
                    &all[i].0,
                    format!("range set {a} overlaps {} ({b})", all[j].0),
                ));
            }
        }
    }
    let old = matches!(cni_version, "" | "0.1.0" | "0.2.0");
    let v4 = sets.iter().filter(|s| s.is_v4()).count();
    if old && (v4 > 1 || sets.len() - v4 > 1) {
        return Err(cni_err(
            Code::InvalidConfig,
            format!("CNI version {cni_version} does not support more than 1 address per family"),
        ));
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CniError;

    fn rc(subnet: &str, start: &str, end: &str) -> RangeConf {
        RangeConf {
            subnet: subnet.into(),
            range_start: start.into(),
            range_end: end.into(),
            gateway: String::new(),
        }
    }

    fn ips(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        set.iter_from(last.map(|l| l.parse().unwrap()))
            .map(|(ip, _)| ip.to_string())
            .collect()
    }

    /// The message of a coded config error (and that it is code 7).
    fn msg7(e: anyhow::Error) -> String {
        let c = CniError::from_anyhow(&e);
        assert_eq!(c.code, 7, "{}", c.msg);
        c.msg
    }

    #[test]
    fn defaults() {
        let r = Range::from_conf(&rc("10.1.2.0/24", "", ""), "x").unwrap();
        assert_eq!(
            (
                r.start.to_string(),
                r.end.to_string(),
                r.gateway.to_string()
            ),
            ("10.1.2.1".into(), "10.1.2.254".into(), "10.1.2.1".into())
        );
        let r = Range::from_conf(&rc("2001:db8::/120", "", ""), "x").unwrap();
        assert_eq!(r.end.to_string(), "2001:db8::ff");
        // the smallest networks the reference accepts
        let r = Range::from_conf(&rc("10.1.2.0/30", "", ""), "x").unwrap();
        assert_eq!(ips(&RangeSet(vec![r]), None), vec!["10.1.2.2"]);
        assert!(Range::from_conf(&rc("2001:db8::/126", "", ""), "x").is_ok());
        // IPv4-mapped addresses are IPv4, as for Go's net.ParseIP
        let r = Range::from_conf(&rc("10.1.2.0/24", "::ffff:10.1.2.9", ""), "x").unwrap();
        assert_eq!(r.start.to_string(), "10.1.2.9");
    }

    #[test]
    fn errors() {
        let e = |s: &str, a: &str, b: &str| msg7(Range::from_conf(&rc(s, a, b), "L").unwrap_err());
        assert_eq!(
            e("10.1.2.0/31", "", ""),
            "L: \"subnet\": 10.1.2.0/31 is too small to allocate from (the smallest is /30)"
        );
        assert_eq!(
            e("2001:db8::/127", "", ""),
            "L: \"subnet\": 2001:db8::/127 is too small to allocate from (the smallest is /126)"
        );
        assert_eq!(
            e("10.1.2.5/24", "", ""),
            "L: \"subnet\": 10.1.2.5/24 has host bits set (the network is 10.1.2.0/24)"
        );
        assert_eq!(
            e("10.1.2.0/24", "10.1.3.1", ""),
            "L: \"rangeStart\": 10.1.3.1 is outside \"subnet\" 10.1.2.0/24"
        );
        assert_eq!(
            e("10.1.2.0/24", "", "10.1.3.1"),
            "L: \"rangeEnd\": 10.1.3.1 is outside \"subnet\" 10.1.2.0/24"
        );
        let set = |v: Vec<RangeConf>| msg7(RangeSet::from_conf(&v, "S").unwrap_err());
        assert_eq!(
            set(vec![rc("10.1.2.0/24", "", ""), rc("2001:db8::/64", "", "")]),
            "S[1]: \"subnet\" 2001:db8::/64 is IPv6 but S[0] (10.1.2.0/24) is IPv4: a range set holds one family"
        );
        assert_eq!(
            set(vec![rc("10.1.2.0/24", "", ""), rc("10.1.2.128/25", "", "")]),
            "S[1]: 10.1.2.129-10.1.2.254 (in 10.1.2.128/25) overlaps S[0] (10.1.2.1-10.1.2.254 in 10.1.2.0/24)"
        );
        assert_eq!(
            set(vec![]),
            "S: the range set is empty (it needs at least one range)"
        );
        let sets = |ranges: &[Vec<RangeConf>], v: &str| {
            msg7(build_range_sets(&[], None, Some(ranges), v).unwrap_err())
        };
        assert_eq!(
            sets(
                &[
                    vec![rc("10.1.2.0/24", "", "")],
                    vec![rc("10.1.2.0/24", "", "")]
                ],
                "1.0.0"
            ),
            "ipam.ranges[1]: range set 10.1.2.1-10.1.2.254 overlaps ipam.ranges[0] (10.1.2.1-10.1.2.254)"
        );
        assert_eq!(
            sets(
                &[
                    vec![rc("10.1.2.0/24", "", "")],
                    vec![rc("10.1.3.0/24", "", "")]
                ],
                "0.2.0"
            ),
            "CNI version 0.2.0 does not support more than 1 address per family"
        );
        assert!(build_range_sets(
            &[],
            None,
            Some(&[
                vec![rc("10.1.2.0/24", "", "")],
                vec![rc("2001:db8::/64", "", "")]
            ]),
            "0.2.0"
        )
        .is_ok());
        assert_eq!(
            msg7(build_range_sets(&[], None, None, "1.0.0").unwrap_err()),
            "no IP ranges specified: neither \"ranges\" nor \"subnet\" is set"
        );
        assert_eq!(
            sets(&[], "1.0.0"),
            "no IP ranges specified: \"ranges\" is empty and there is no \"subnet\""
        );
        // a legacy range without subnet is ignored, as by the reference
        let stray = RangeConf {
            gateway: "10.9.9.9".into(),
            ..Default::default()
        };
        assert!(build_range_sets(
            &[],
            Some(&stray),
            Some(&[vec![rc("10.1.2.0/24", "", "")]]),
            "1.0.0"
        )
        .is_ok());
    }

    #[test]
    fn order_of_sets() {
        let sets = build_range_sets(
            &[vec![rc("10.9.0.0/24", "", "")]],
            Some(&rc("10.8.0.0/24", "", "")),
            Some(&[vec![rc("10.7.0.0/24", "", "")]]),
            "1.0.0",
        )
        .unwrap();
        let firsts: Vec<String> = sets.iter().map(|s| s.0[0].subnet.to_string()).collect();
        assert_eq!(firsts, vec!["10.9.0.0/24", "10.8.0.0/24", "10.7.0.0/24"]);
    }

    #[test]
    fn round_robin() {
        let set = RangeSet::from_conf(&[rc("10.1.2.0/29", "", "")], "x").unwrap();
        assert_eq!(
            ips(&set, None),
            vec!["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]
        );
        assert_eq!(
            ips(&set, Some("10.1.2.4")),
            vec!["10.1.2.5", "10.1.2.6", "10.1.2.2", "10.1.2.3", "10.1.2.4"]
        );
        assert_eq!(
            ips(&set, Some("10.1.2.6")),
            vec!["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]
        );
        // a last-reserved address outside the set is ignored
        assert_eq!(ips(&set, Some("10.9.9.9"))[0], "10.1.2.2");
        // end of one range continues at the next range's start
        let set = RangeSet::from_conf(
            &[
                rc("10.1.2.0/24", "10.1.2.10", "10.1.2.11"),
                rc("10.1.3.0/24", "10.1.3.20", "10.1.3.21"),
            ],
            "x",
        )
        .unwrap();
        assert_eq!(
            ips(&set, Some("10.1.2.11")),
            vec!["10.1.3.20", "10.1.3.21", "10.1.2.10", "10.1.2.11"]
        );
        // an explicit start at the gateway skips it
        let set = RangeSet::from_conf(
            &[RangeConf {
                gateway: "10.1.2.3".into(),
                ..rc("10.1.2.0/29", "10.1.2.2", "10.1.2.4")
            }],
            "x",
        )
        .unwrap();
        assert_eq!(ips(&set, None), vec!["10.1.2.2", "10.1.2.4"]);
    }
}
