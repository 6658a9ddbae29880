//! host-local address ranges: config, canonicalisation and validation with the
//! reference's rules and messages, and the round-robin iterator.

use anyhow::{anyhow, bail, Result};
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

fn parse_ip(s: &str) -> Result<Option<IpAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<IpAddr>()
        .map(Some)
        .map_err(|_| anyhow!("invalid IP address: {s}"))
}

impl Range {
    pub fn from_conf(c: &RangeConf) -> Result<Range> {
        let net: IpNet = c
            .subnet
            .parse()
            .map_err(|_| anyhow!("invalid CIDR address: {}", c.subnet))?;
        let bits = if net.addr().is_ipv4() { 32 } else { 128 };
        if net.prefix_len() > bits - 2 {
            bail!("Network {net} too small to allocate from");
        }
        if net.addr() != net.network() {
            bail!(
                "Network has host bits set. For a subnet mask of length {} the network address is {}",
                net.prefix_len(),
                net.network()
            );
        }
        let v4 = net.addr().is_ipv4();
        let first = next_ip(net.network());
        let last = if v4 {
            u128_to_ip(ip_to_u128(net.broadcast()) - 1, true)
        } else {
            net.broadcast()
        };
        let mut r = Range {
            subnet: net,
            start: first,
            end: last,
            gateway: first,
        };
        if let Some(gw) = parse_ip(&c.gateway)? {
            r.gateway = gw;
        }
        if let Some(s) = parse_ip(&c.range_start)? {
            if !r.contains(s) {
                bail!("RangeStart {s} not in network {net}");
            }
            r.start = s;
        }
        if let Some(e) = parse_ip(&c.range_end)? {
            if !r.contains(e) {
                bail!("RangeEnd {e} not in network {net}");
            }
            r.end = e;
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
    pub fn from_conf(confs: &[RangeConf]) -> Result<RangeSet> {
        if confs.is_empty() {
            bail!("empty range set");
        }
        let ranges = confs
            .iter()
            .map(Range::from_conf)
            .collect::<Result<Vec<_>>>()?;
        let v4 = ranges[0].subnet.addr().is_ipv4();
        if ranges.iter().any(|r| r.subnet.addr().is_ipv4() != v4) {
            bail!("mixed address families");
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    bail!("subnets {a} and {b} overlap");
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
/// ipam.ranges...]`, validated, with the 0.1/0.2 one-per-family limit.
pub fn build_range_sets(
    runtime: &[Vec<RangeConf>],
    legacy: Option<&RangeConf>,
    ranges: &[Vec<RangeConf>],
    cni_version: &str,
) -> Result<Vec<RangeSet>> {
    let mut all: Vec<&[RangeConf]> = runtime.iter().map(|v| v.as_slice()).collect();
    if let Some(l) = legacy.filter(|l| !l.subnet.is_empty()) {
        all.push(std::slice::from_ref(l));
    }
    all.extend(ranges.iter().map(|v| v.as_slice()));
    if all.is_empty() {
        bail!("no IP ranges specified");
    }
    let sets = all
        .into_iter()
        .map(RangeSet::from_conf)
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in sets.iter().enumerate() {
        for (j, b) in sets.iter().enumerate().take(i) {
            if a.overlaps(b) {
                bail!("range set {i} overlaps with {j}");
            }
        }
    }
    let old = matches!(cni_version, "" | "0.1.0" | "0.2.0");
    let v4 = sets.iter().filter(|s| s.is_v4()).count();
    if old && (v4 > 1 || sets.len() - v4 > 1) {
        bail!("CNI version {cni_version} does not support more than 1 address per family");
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn defaults() {
        let r = Range::from_conf(&rc("10.1.2.0/24", "", "")).unwrap();
        assert_eq!(
            (
                r.start.to_string(),
                r.end.to_string(),
                r.gateway.to_string()
            ),
            ("10.1.2.1".into(), "10.1.2.254".into(), "10.1.2.1".into())
        );
        let r = Range::from_conf(&rc("2001:db8::/120", "", "")).unwrap();
        assert_eq!(r.end.to_string(), "2001:db8::ff");
    }

    #[test]
    fn errors() {
        let e = |s: &str, a: &str, b: &str| Range::from_conf(&rc(s, a, b)).unwrap_err().to_string();
        assert_eq!(
            e("10.1.2.0/31", "", ""),
            "Network 10.1.2.0/31 too small to allocate from"
        );
        assert_eq!(
            e("2001:db8::/127", "", ""),
            "Network 2001:db8::/127 too small to allocate from"
        );
        assert_eq!(e("10.1.2.5/24", "", ""), "Network has host bits set. For a subnet mask of length 24 the network address is 10.1.2.0");
        assert_eq!(
            e("10.1.2.0/24", "10.1.3.1", ""),
            "RangeStart 10.1.3.1 not in network 10.1.2.0/24"
        );
        assert_eq!(
            e("10.1.2.0/24", "", "10.1.3.1"),
            "RangeEnd 10.1.3.1 not in network 10.1.2.0/24"
        );
        let set = |v: Vec<RangeConf>| RangeSet::from_conf(&v).unwrap_err().to_string();
        assert_eq!(
            set(vec![rc("10.1.2.0/24", "", ""), rc("2001:db8::/64", "", "")]),
            "mixed address families"
        );
        assert_eq!(
            set(vec![rc("10.1.2.0/24", "", ""), rc("10.1.2.128/25", "", "")]),
            "subnets 10.1.2.1-10.1.2.254 and 10.1.2.129-10.1.2.254 overlap"
        );
        let e = build_range_sets(
            &[],
            None,
            &[
                vec![rc("10.1.2.0/24", "", "")],
                vec![rc("10.1.2.0/24", "", "")],
            ],
            "1.0.0",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "range set 1 overlaps with 0");
        let e = build_range_sets(
            &[],
            None,
            &[
                vec![rc("10.1.2.0/24", "", "")],
                vec![rc("10.1.3.0/24", "", "")],
            ],
            "0.2.0",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "CNI version 0.2.0 does not support more than 1 address per family"
        );
        assert!(build_range_sets(
            &[],
            None,
            &[
                vec![rc("10.1.2.0/24", "", "")],
                vec![rc("2001:db8::/64", "", "")]
            ],
            "0.2.0"
        )
        .is_ok());
        assert_eq!(
            build_range_sets(&[], None, &[], "1.0.0")
                .unwrap_err()
                .to_string(),
            "no IP ranges specified"
        );
    }

    #[test]
    fn order_of_sets() {
        let sets = build_range_sets(
            &[vec![rc("10.9.0.0/24", "", "")]],
            Some(&rc("10.8.0.0/24", "", "")),
            &[vec![rc("10.7.0.0/24", "", "")]],
            "1.0.0",
        )
        .unwrap();
        let firsts: Vec<String> = sets.iter().map(|s| s.0[0].subnet.to_string()).collect();
        assert_eq!(firsts, vec!["10.9.0.0/24", "10.8.0.0/24", "10.7.0.0/24"]);
    }

    #[test]
    fn round_robin() {
        let set = RangeSet::from_conf(&[rc("10.1.2.0/29", "", "")]).unwrap();
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
        let set = RangeSet::from_conf(&[
            rc("10.1.2.0/24", "10.1.2.10", "10.1.2.11"),
            rc("10.1.3.0/24", "10.1.3.20", "10.1.3.21"),
        ])
        .unwrap();
        assert_eq!(
            ips(&set, Some("10.1.2.11")),
            vec!["10.1.3.20", "10.1.3.21", "10.1.2.10", "10.1.2.11"]
        );
        // an explicit start at the gateway skips it
        let set = RangeSet::from_conf(&[RangeConf {
            gateway: "10.1.2.3".into(),
            ..rc("10.1.2.0/29", "10.1.2.2", "10.1.2.4")
        }])
        .unwrap();
        assert_eq!(ips(&set, None), vec!["10.1.2.2", "10.1.2.4"]);
    }
}
