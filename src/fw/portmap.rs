//! Port mapping (the `portmap` meta plugin): forward host ports to a container, with
//! the reference's table, chain, comment and rule shapes on both backends, so either
//! implementation removes what the other created and `iptables-save` / `nft list
//! ruleset` look the same.
//!
//! iptables (`nat` table, per family): shared chains `CNI-HOSTPORT-DNAT` (jumped to from
//! PREROUTING and OUTPUT for local destinations), `CNI-HOSTPORT-SETMARK` and
//! `CNI-HOSTPORT-MASQ` (jumped to first in POSTROUTING), and per attachment a chain
//! `CNI-DN-<hash(net+cid)>` entered from `CNI-HOSTPORT-DNAT` by multiport rules commented
//! `dnat name: "<net>" id: "<cid>"`. One `iptables-save -t nat` and one
//! `iptables-restore --noflush` per family and call.
//!
//! nftables (tables `ip cni_hostport` and `ip6 cni_hostport`, spoken natively): chains
//! `hostports`, `hostip_hostports`, `hostports_all`, base chains `prerouting`, `output`
//! and `masquerading`; per-attachment rules commented with the container id. One rule
//! dump and one transaction (both families at once) per call.
//!
//! Rule generation is pure (tested without root); only the functions at the end touch
//! the kernel or run tools.
//!
//! Differences from the reference, on purpose:
//! - every config value is checked before anything changes (code 7 naming the key);
//! - nftables: a rule carries, besides the container-id comment the reference matches,
//!   a second userdata record with the network name ([`UDATA_NETWORK`]; nft and the Go
//!   plugins skip record types they do not know). So DEL leaves the container's mappings
//!   of *other* networks alone (the reference deletes them), a repeated ADD replaces the
//!   attachment's rules instead of duplicating them, and GC can tell this network's
//!   rules from others'. Untagged rules (made by the Go plugin) are removed by DEL, as
//!   the reference does;
//! - nftables honours `masqAll` (`saddr 0.0.0.0/0` / `::/0`, no localhost rule, like
//!   the reference's master branch);
//! - nftables `conditionsV4`/`V6` are parsed (the reference hands them to `nft` as text):
//!   `ip|ip6 saddr|daddr [==|!=] <address[/len]>` and `iifname|oifname [==|!=] <name>`;
//!   anything else is refused with code 7 rather than guessed at;
//! - iptables: a repeated ADD replaces the attachment's chain and entry rules (the
//!   reference appends what is missing, so changed mappings accumulated);
//! - an over-long comment is cut to 255 characters (the reference's 256 are refused by
//!   iptables);
//! - the shared skeleton an ADD created is removed again when that ADD fails (if nothing
//!   else uses it by then); a successful ADD's skeleton stays, like the reference's.

use super::ipmasq::Backend;
use super::{go_quote, hash_with_prefix, have, run};
use crate::cni::value::invalid;
use crate::error::{cni_err, Code};
use crate::netlink::nftables::{
    self, Batch, ChainSpec, DumpedRule, Expr, ExprExt, NFPROTO_IPV4, NFPROTO_IPV6,
};
use anyhow::{anyhow, bail, Result};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

// ---------------------------------------------------------------------------------------
// Configuration

/// The config keys portmap reads, as the runtime sends them.
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct RawConf {
    pub backend: Option<String>,
    pub snat: Option<bool>,
    #[serde(rename = "conditionsV4")]
    pub conditions_v4: Option<Vec<String>>,
    #[serde(rename = "conditionsV6")]
    pub conditions_v6: Option<Vec<String>>,
    #[serde(rename = "masqAll")]
    pub masq_all: bool,
    #[serde(rename = "markMasqBit")]
    pub mark_masq_bit: Option<i64>,
    #[serde(rename = "externalSetMarkChain")]
    pub external_set_mark_chain: Option<String>,
    #[serde(rename = "runtimeConfig")]
    pub runtime_config: RawRuntimeConfig,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct RawRuntimeConfig {
    #[serde(rename = "portMappings")]
    pub port_mappings: Vec<RawMapping>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(default)]
pub struct RawMapping {
    #[serde(rename = "hostPort")]
    pub host_port: i64,
    #[serde(rename = "containerPort")]
    pub container_port: i64,
    pub protocol: String,
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

/// The reference's default mark bit (Kubernetes uses 14 and 15, Calico 20-31).
pub const DEFAULT_MARK_BIT: u32 = 13;

/// Layer-4 protocols, in the order the reference sorts their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Sctp,
    Tcp,
    Udp,
}

impl Proto {
    /// `tcp`, `udp` or `sctp`, in any case (the reference passes the text to iptables,
    /// which ignores case, and to nft, which does not).
    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
    pub host_ip: Option<IpAddr>,
}

impl Mapping {
    /// For a container address of family `v6`: `None` if the mapping's hostIP is of the
    /// other family (skipped, as the reference does), else the destination address to
    /// match (`None` for no hostIP or an unspecified one).
    pub fn destination(&self, v6: bool) -> Option<Option<IpAddr>> {
        match self.host_ip {
            None => Some(None),
            Some(ip) if ip.is_ipv6() != v6 => None,
            Some(ip) if ip.is_unspecified() => Some(None),
            Some(ip) => Some(Some(ip)),
        }
    }
}

/// An nftables condition (`conditionsV4`/`V6` with the nftables backend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftCond {
    Addr {
        src: bool,
        net: IpNet,
        neq: bool,
    },
    Ifname {
        out: bool,
        name: String,
        wildcard: bool,
        neq: bool,
    },
}

/// A validated configuration for one attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub net: String,
    pub cid: String,
    pub mappings: Vec<Mapping>,
    pub snat: bool,
    pub masq_all: bool,
    pub mark_bit: u32,
    pub external_mark: Option<String>,
    /// Condition tokens as given (iptables arguments, or nftables text).
    pub cond_v4: Vec<String>,
    pub cond_v6: Vec<String>,
    pub backend: Backend,
}

/// Which backend conditions are written for: the reference's rule (an iptables
/// condition starts with `-` or `!`), `None` when there are none.
fn conditions_backend(c: &Option<Vec<String>>) -> Option<Backend> {
    let first = c.as_ref()?.first()?;
    match first.chars().next()? {
        '-' | '!' => Some(Backend::Iptables),
        _ => Some(Backend::Nftables),
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Iptables => "iptables",
        Backend::Nftables => "nftables",
    }
}

impl Config {
    /// Validate `raw` completely. `iptables_present` decides the default backend (the
    /// reference's: iptables when usable, else nftables).
    pub fn new(raw: RawConf, net: &str, cid: &str, iptables_present: bool) -> Result<Config> {
        if raw.mark_masq_bit.is_some() && raw.external_set_mark_chain.is_some() {
            return Err(invalid(
                "externalSetMarkChain",
                format!("{:?}", raw.external_set_mark_chain.unwrap_or_default()),
                "cannot be used together with markMasqBit",
            ));
        }
        let mark_bit = match raw.mark_masq_bit {
            None => DEFAULT_MARK_BIT,
            Some(b) if (0..=31).contains(&b) => b as u32,
            Some(b) => return Err(invalid("markMasqBit", b, "is out of range (0..31)")),
        };
        let backend = match raw.backend.as_deref() {
            None => {
                if iptables_present {
                    Backend::Iptables
                } else {
                    Backend::Nftables
                }
            }
            Some("iptables") => Backend::Iptables,
            Some("nftables") => Backend::Nftables,
            Some(other) => {
                return Err(invalid(
                    "backend",
                    format!("{other:?}"),
                    "is not a backend (\"iptables\" or \"nftables\")",
                ))
            }
        };
        // The reference's check: options of the other backend are an error.
        let mut wrong = Vec::new();
        if raw.external_set_mark_chain.is_some() && backend != Backend::Iptables {
            wrong.push("externalSetMarkChain");
        }
        for (key, c) in [
            ("conditionsV4", &raw.conditions_v4),
            ("conditionsV6", &raw.conditions_v6),
        ] {
            if conditions_backend(c).is_some_and(|b| b != backend) {
                wrong.push(key);
            }
        }
        if !wrong.is_empty() {
            let other = match backend {
                Backend::Iptables => Backend::Nftables,
                Backend::Nftables => Backend::Iptables,
            };
            return Err(cni_err(
                Code::InvalidConfig,
                format!(
                    "{} backend was requested but configuration contains {}-specific options [{}]",
                    backend_name(backend),
                    backend_name(other),
                    wrong.join(" ")
                ),
            ));
        }
        if let Some(ch) = &raw.external_set_mark_chain {
            let bad = ch.is_empty()
                || ch.len() > 28
                || ch.starts_with('-')
                || ch
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'');
            if bad {
                return Err(invalid(
                    "externalSetMarkChain",
                    format!("{ch:?}"),
                    "is not an iptables chain name (1 to 28 characters, no spaces or quotes)",
                ));
            }
        }
        let cond_v4 = raw.conditions_v4.unwrap_or_default();
        let cond_v6 = raw.conditions_v6.unwrap_or_default();
        for (key, toks, v6) in [
            ("conditionsV4", &cond_v4, false),
            ("conditionsV6", &cond_v6, true),
        ] {
            match backend {
                Backend::Iptables => {
                    if let Some(t) = toks.iter().find(|t| t.chars().any(char::is_control)) {
                        return Err(invalid(
                            key,
                            format!("{t:?}"),
                            "contains a control character (a newline would start a new iptables-restore line)",
                        ));
                    }
                }
                Backend::Nftables => {
                    parse_nft_conditions(key, toks, v6)?;
                }
            }
        }
        let mut mappings = Vec::new();
        for (i, m) in raw.runtime_config.port_mappings.iter().enumerate() {
            mappings.push(mapping(i, m)?);
        }
        Ok(Config {
            net: net.to_string(),
            cid: cid.to_string(),
            mappings,
            snat: raw.snat.unwrap_or(true),
            masq_all: raw.masq_all,
            mark_bit,
            external_mark: raw.external_set_mark_chain,
            cond_v4,
            cond_v6,
            backend,
        })
    }

    fn conditions(&self, v6: bool) -> &[String] {
        if v6 {
            &self.cond_v6
        } else {
            &self.cond_v4
        }
    }

    /// The parsed nftables conditions of a family (validated in [`Config::new`]).
    pub fn nft_conditions(&self, v6: bool) -> Result<Vec<NftCond>> {
        let key = if v6 { "conditionsV6" } else { "conditionsV4" };
        parse_nft_conditions(key, self.conditions(v6), v6)
    }

    /// The UDP host ports (their conntrack entries are flushed).
    pub fn udp_ports(&self) -> Vec<u16> {
        udp_ports(&self.mappings)
    }
}

pub fn udp_ports(mappings: &[Mapping]) -> Vec<u16> {
    let mut v: Vec<u16> = mappings
        .iter()
        .filter(|m| m.proto == Proto::Udp)
        .map(|m| m.host_port)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn mapping(i: usize, m: &RawMapping) -> Result<Mapping> {
    let key = |k: &str| format!("runtimeConfig.portMappings[{i}].{k}");
    let port = |k: &str, v: i64| -> Result<u16> {
        match u16::try_from(v) {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(invalid(&key(k), v, "is not a port number (1..65535)")),
        }
    };
    let host_port = port("hostPort", m.host_port)?;
    let container_port = port("containerPort", m.container_port)?;
    let proto = Proto::parse(&m.protocol).ok_or_else(|| {
        invalid(
            &key("protocol"),
            format!("{:?}", m.protocol),
            "is not a protocol (\"tcp\", \"udp\" or \"sctp\")",
        )
    })?;
    let host_ip = if m.host_ip.is_empty() {
        None
    } else {
        let ip: IpAddr = m.host_ip.parse().map_err(|_| {
            invalid(
                &key("hostIP"),
                format!("{:?}", m.host_ip),
                "is not an IP address",
            )
        })?;
        // Go's To4(): an IPv4-mapped IPv6 address is IPv4.
        Some(match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        })
    };
    Ok(Mapping {
        host_port,
        container_port,
        proto,
        host_ip,
    })
}

/// Split condition text into tokens: whitespace-separated, `"..."` kept together.
fn tokens(parts: &[String]) -> std::result::Result<Vec<String>, String> {
    let text = parts.join(" ");
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if quoted {
        return Err("unbalanced quotes".into());
    }
    if started {
        out.push(cur);
    }
    Ok(out)
}

/// Parse nftables condition text. cnibox builds rules itself (no `nft` process), so it
/// understands a set of matches rather than the whole nft language.
pub fn parse_nft_conditions(key: &str, parts: &[String], v6: bool) -> Result<Vec<NftCond>> {
    const UNDERSTOOD: &str = "cnibox understands \"ip|ip6 saddr|daddr [==|!=] <address[/len]>\" \
                              and \"iifname|oifname [==|!=] <name>\" (a trailing * matches a prefix)";
    let text = parts.join(" ");
    let err = |why: &str| invalid(key, format!("{text:?}"), format!("{why}; {UNDERSTOOD}"));
    let toks = tokens(parts).map_err(|e| err(&e))?;
    let mut out = Vec::new();
    let mut i = 0;
    let next = |i: &mut usize| -> Option<String> {
        let t = toks.get(*i).cloned();
        *i += 1;
        t
    };
    while let Some(t) = next(&mut i) {
        let t = if t == "meta" {
            match next(&mut i) {
                Some(k) if k == "iifname" || k == "oifname" => k,
                _ => return Err(err("unsupported meta match")),
            }
        } else {
            t
        };
        let op_value = |i: &mut usize| -> Result<(bool, String)> {
            let v = next(i).ok_or_else(|| err(&format!("{t} without a value")))?;
            match v.as_str() {
                "==" | "eq" => Ok((false, next(i).ok_or_else(|| err("missing value"))?)),
                "!=" | "ne" => Ok((true, next(i).ok_or_else(|| err("missing value"))?)),
                _ => Ok((false, v)),
            }
        };
        match t.as_str() {
            "ip" | "ip6" => {
                if (t == "ip6") != v6 {
                    return Err(err(&format!(
                        "\"{t}\" matches the other IP family's packets"
                    )));
                }
                let src = match next(&mut i).as_deref() {
                    Some("saddr") => true,
                    Some("daddr") => false,
                    _ => return Err(err(&format!("unsupported {t} match"))),
                };
                let (neq, v) = op_value(&mut i)?;
                let net: IpNet = match v.parse::<IpNet>() {
                    Ok(n) => n,
                    Err(_) => match v.parse::<IpAddr>() {
                        Ok(a) => IpNet::from(a),
                        Err(_) => return Err(err(&format!("{v:?} is not an address"))),
                    },
                };
                if net.addr().is_ipv6() != v6 {
                    return Err(err(&format!("{v:?} is of the other IP family")));
                }
                out.push(NftCond::Addr { src, net, neq });
            }
            "iifname" | "oifname" => {
                let (neq, v) = op_value(&mut i)?;
                let (name, wildcard) = match v.strip_suffix('*') {
                    Some(p) => (p.to_string(), true),
                    None => (v.clone(), false),
                };
                if name.is_empty()
                    || name.len() > 15
                    || name.contains(['*', '\\', '/'])
                    || name.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(err(&format!("{v:?} is not an interface name")));
                }
                out.push(NftCond::Ifname {
                    out: t == "oifname",
                    name,
                    wildcard,
                    neq,
                });
            }
            _ => return Err(err(&format!("unsupported match {t:?}"))),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// iptables

pub const DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
pub const SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
pub const MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
/// The top-level chain of the per-attachment SNAT chains of old plugin versions, torn
/// down by DEL only.
pub const OLD_SNAT_CHAIN: &str = "CNI-HOSTPORT-SNAT";

/// `CNI-DN-` + sha512(net + cid), 28 characters.
pub fn dn_chain(net: &str, cid: &str) -> String {
    hash_with_prefix(28, "CNI-DN-", &format!("{net}{cid}"))
}

/// The legacy `CNI-SN-` chain of an attachment.
pub fn sn_chain(net: &str, cid: &str) -> String {
    hash_with_prefix(28, "CNI-SN-", &format!("{net}{cid}"))
}

/// `dnat name: "<net>" id: "<cid>"`, cut to iptables' 255 characters (the reference
/// cuts to 256, which iptables refuses).
pub fn dnat_comment(net: &str, cid: &str) -> String {
    let c = format!("dnat name: \"{net}\" id: \"{cid}\"");
    if c.len() <= 255 {
        return c;
    }
    let mut cut = 252;
    while !c.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &c[..cut])
}

fn mark(bit: u32) -> String {
    let v = 1u32 << bit;
    format!("{v:#x}/{v:#x}")
}

/// An argument for an `iptables-restore` line: quoted when it has to be.
fn ipt_arg(t: &str) -> String {
    if t.is_empty()
        || t.chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '#'))
    {
        go_quote(t)
    } else {
        t.to_string()
    }
}

fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv6() {
        128
    } else {
        32
    }
}

/// The attachment's chain for a container address, as `iptables-save` prints it (the
/// reference's rules: per mapping a hairpin mark, for IPv4 a localhost mark, and the
/// DNAT).
pub fn ipt_dn_rules(c: &Config, cont: &IpNet) -> Vec<String> {
    let v6 = cont.addr().is_ipv6();
    let chain = dn_chain(&c.net, &c.cid);
    let target = c.external_mark.as_deref().unwrap_or(SETMARK_CHAIN);
    let mut out = Vec::new();
    for m in &c.mappings {
        let Some(dst) = m.destination(v6) else {
            continue;
        };
        let d = dst
            .map(|ip| format!(" -d {ip}/{}", host_len(ip)))
            .unwrap_or_default();
        let p = m.proto.name();
        let l4 = format!(" -p {p} -m {p} --dport {}", m.host_port);
        if c.snat {
            // -s 0.0.0.0/0 (masqAll) is printed as nothing
            let src = if c.masq_all {
                String::new()
            } else {
                format!(" -s {}", cont.trunc())
            };
            out.push(format!("-A {chain}{src}{d}{l4} -j {target}"));
            if !v6 && !c.masq_all {
                out.push(format!("-A {chain} -s 127.0.0.1/32{d}{l4} -j {target}"));
            }
        }
        let to = match cont.addr() {
            IpAddr::V4(a) => format!("{a}:{}", m.container_port),
            IpAddr::V6(a) => format!("[{a}]:{}", m.container_port),
        };
        out.push(format!("-A {chain}{d}{l4} -j DNAT --to-destination {to}"));
    }
    out
}

/// The entry rules in `CNI-HOSTPORT-DNAT`: per protocol (sorted) and per 15 host ports
/// (of every mapping, whatever its hostIP, as the reference does), with the family's
/// conditions. Without conditions this is also how `iptables-save` prints them.
pub fn ipt_entry_rules(c: &Config, v6: bool) -> Vec<(Proto, String, String)> {
    let chain = dn_chain(&c.net, &c.cid);
    let comment = go_quote(&dnat_comment(&c.net, &c.cid));
    let conds: String = c
        .conditions(v6)
        .iter()
        .map(|t| format!(" {}", ipt_arg(t)))
        .collect();
    let mut protos: Vec<Proto> = c.mappings.iter().map(|m| m.proto).collect();
    protos.sort();
    protos.dedup();
    let mut out = Vec::new();
    for p in protos {
        let ports: Vec<String> = c
            .mappings
            .iter()
            .filter(|m| m.proto == p)
            .map(|m| m.host_port.to_string())
            .collect();
        for chunk in ports.chunks(15) {
            let list = chunk.join(",");
            out.push((
                p,
                list.clone(),
                format!(
                    "-A {DNAT_CHAIN} -p {} -m comment --comment {comment} -m multiport --dports {list}{conds} -j {chain}",
                    p.name()
                ),
            ));
        }
    }
    out
}

const SETMARK_COMMENT: &str = "CNI portfwd masquerade mark";
const MASQ_COMMENT: &str = "CNI portfwd requiring masquerade";

fn setmark_rule(bit: u32) -> String {
    format!(
        "-A {SETMARK_CHAIN} -m comment --comment \"{SETMARK_COMMENT}\" -j MARK --set-xmark {}",
        mark(bit)
    )
}

fn masq_rule(bit: u32) -> String {
    format!("-A {MASQ_CHAIN} -m mark --mark {} -j MASQUERADE", mark(bit))
}

fn postrouting_jump() -> String {
    format!("-A POSTROUTING -m comment --comment \"{MASQ_COMMENT}\" -j {MASQ_CHAIN}")
}

fn local_jump(from: &str) -> String {
    format!("-A {from} -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}")
}

fn has_chain(save: &str, chain: &str) -> bool {
    let decl = format!(":{chain} ");
    save.lines().any(|l| l.starts_with(&decl))
}

fn has_rule(save: &str, rule: &str) -> bool {
    save.lines().any(|l| l.trim_end() == rule)
}

/// Every rule (in any chain) that jumps to `chain`.
fn jumps_to<'a>(save: &'a str, chain: &str) -> Vec<&'a str> {
    let suffix = format!(" -j {chain}");
    save.lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("-A ") && l.ends_with(&suffix))
        .collect()
}

fn rules_of<'a>(save: &'a str, chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    save.lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

/// What an ADD created of the shared skeleton (so that a failed ADD can remove it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Created {
    /// iptables: CNI-HOSTPORT-DNAT and its PREROUTING/OUTPUT jumps; nftables: the table.
    pub dnat: bool,
    /// iptables: CNI-HOSTPORT-SETMARK, CNI-HOSTPORT-MASQ and the POSTROUTING jump.
    pub masq: bool,
}

/// ADD's `iptables-restore --noflush` script for one family, given its current
/// `iptables-save -t nat`. Shared chains and rules are added only if missing (as the
/// reference does); the attachment's chain is declared, which creates or empties it,
/// and its entry rules are replaced, so a repeated ADD leaves exactly one set.
pub fn ipt_setup_script(c: &Config, cont: &IpNet, save: &str) -> (String, Created) {
    let v6 = cont.addr().is_ipv6();
    let chain = dn_chain(&c.net, &c.cid);
    let mut created = Created::default();
    let mut decl = String::from("*nat\n");
    let mut rules = String::new();
    let add_chain = |name: &str, decl: &mut String| -> bool {
        if has_chain(save, name) {
            false
        } else {
            *decl += &format!(":{name} - [0:0]\n");
            true
        }
    };
    if c.snat && c.external_mark.is_none() {
        created.masq |= add_chain(SETMARK_CHAIN, &mut decl);
        created.masq |= add_chain(MASQ_CHAIN, &mut decl);
        for r in [setmark_rule(c.mark_bit), masq_rule(c.mark_bit)] {
            if !has_rule(save, &r) {
                rules += &format!("{r}\n");
            }
        }
        let j = postrouting_jump();
        if !has_rule(save, &j) {
            // first, ahead of the bridge/ptp masquerade rules that would otherwise win
            rules += &format!("-I POSTROUTING 1{}\n", &j["-A POSTROUTING".len()..]);
        }
    }
    created.dnat = add_chain(DNAT_CHAIN, &mut decl);
    for from in ["PREROUTING", "OUTPUT"] {
        let j = local_jump(from);
        if !has_rule(save, &j) {
            rules += &format!("{j}\n");
        }
    }
    decl += &format!(":{chain} - [0:0]\n");
    for r in ipt_dn_rules(c, cont) {
        rules += &format!("{r}\n");
    }
    for old in jumps_to(save, &chain) {
        rules += &format!("-D{}\n", &old[2..]);
    }
    for (_, _, r) in ipt_entry_rules(c, v6) {
        rules += &format!("{r}\n");
    }
    (format!("{decl}{rules}COMMIT\n"), created)
}

/// Remove an attachment from one family: every jump to its chain (and to the legacy
/// `CNI-SN-` chain), then the chains. With `created`, also the shared skeleton a failed
/// ADD created, if nothing else uses it any more. `None` when there is nothing to do.
pub fn ipt_teardown_script(net: &str, cid: &str, save: &str, created: Created) -> Option<String> {
    let mut s = String::new();
    let mut removed: Vec<String> = Vec::new();
    for chain in [dn_chain(net, cid), sn_chain(net, cid)] {
        for j in jumps_to(save, &chain) {
            s += &format!("-D{}\n", &j[2..]);
            removed.push(j.to_string());
        }
        if has_chain(save, &chain) {
            s += &format!("-F {chain}\n-X {chain}\n");
        }
    }
    if created.dnat && has_chain(save, DNAT_CHAIN) {
        let left = rules_of(save, DNAT_CHAIN)
            .into_iter()
            .any(|r| !removed.iter().any(|x| x == r));
        let other_refs = jumps_to(save, DNAT_CHAIN)
            .into_iter()
            .any(|r| r != local_jump("PREROUTING") && r != local_jump("OUTPUT"));
        if !left && !other_refs {
            for from in ["PREROUTING", "OUTPUT"] {
                let j = local_jump(from);
                if has_rule(save, &j) {
                    s += &format!("-D{}\n", &j[2..]);
                }
            }
            // no -F: it is empty by now, and iptables-nft's restore brings back a rule
            // deleted earlier in the same script when the chain is flushed after it
            // (the -X then fails with EBUSY)
            s += &format!("-X {DNAT_CHAIN}\n");
        }
    }
    if created.masq && has_chain(save, SETMARK_CHAIN) && has_chain(save, MASQ_CHAIN) {
        // SETMARK is used by other attachments' chains; only our own rules (removed
        // above with our chain) may have pointed at it.
        let dn = dn_chain(net, cid);
        let setmark_users = jumps_to(save, SETMARK_CHAIN)
            .into_iter()
            .any(|r| !r.starts_with(&format!("-A {dn} ")));
        let masq_users = jumps_to(save, MASQ_CHAIN)
            .into_iter()
            .any(|r| r != postrouting_jump());
        if !setmark_users && !masq_users {
            if has_rule(save, &postrouting_jump()) {
                s += &format!("-D{}\n", &postrouting_jump()[2..]);
            }
            s += &format!(
                "-F {MASQ_CHAIN}\n-X {MASQ_CHAIN}\n-F {SETMARK_CHAIN}\n-X {SETMARK_CHAIN}\n"
            );
        }
    }
    if s.is_empty() {
        return None;
    }
    Some(format!("*nat\n{s}COMMIT\n"))
}

/// CHECK for one family: the attachment's chain holds the expected rules, its entry
/// rules exist, and so does the shared skeleton.
pub fn ipt_check(c: &Config, cont: &IpNet, save: &str) -> Result<()> {
    let v6 = cont.addr().is_ipv6();
    let chain = dn_chain(&c.net, &c.cid);
    let fam = if v6 { "ip6tables" } else { "iptables" };
    if !has_chain(save, &chain) {
        bail!("chain {chain} not found in {fam} table nat");
    }
    let have = rules_of(save, &chain);
    for r in ipt_dn_rules(c, cont) {
        if !have.contains(&r.as_str()) {
            bail!("rule \"{r}\" not found in {fam} table nat");
        }
    }
    let entries = rules_of(save, DNAT_CHAIN);
    let suffix = format!(" -j {chain}");
    for (p, ports, r) in ipt_entry_rules(c, v6) {
        let found = if c.conditions(v6).is_empty() {
            entries.contains(&r.as_str())
        } else {
            // iptables-save reorders conditions; match what it keeps verbatim
            entries.iter().any(|l| {
                l.ends_with(&suffix)
                    && l.contains(&format!(" -p {} ", p.name()))
                    && l.contains(&format!(" --dports {ports} "))
            })
        };
        if !found {
            bail!("rule \"{r}\" not found in {fam} table nat");
        }
    }
    let mut shared = vec![local_jump("PREROUTING"), local_jump("OUTPUT")];
    if c.snat && c.external_mark.is_none() {
        shared.extend([
            setmark_rule(c.mark_bit),
            masq_rule(c.mark_bit),
            postrouting_jump(),
        ]);
    }
    for r in shared {
        if !has_rule(save, &r) {
            bail!("rule \"{r}\" not found in {fam} table nat");
        }
    }
    Ok(())
}

/// Container ids of network `net` that have entry rules (from their comments).
pub fn ipt_owned_cids(net: &str, save: &str) -> Vec<String> {
    let prefix = format!("--comment \"dnat name: \\\"{net}\\\" id: \\\"");
    let mut out = Vec::new();
    for l in rules_of(save, DNAT_CHAIN) {
        let Some(pos) = l.find(&prefix) else { continue };
        let rest = &l[pos + prefix.len()..];
        if let Some(end) = rest.find("\\\"\"") {
            let cid = rest[..end].to_string();
            if !cid.is_empty() && !out.contains(&cid) {
                out.push(cid);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// nftables

pub const NFT_TABLE: &str = "cni_hostport";
const NFT_TABLE_COMMENT: &str = "CNI portmap plugin";
pub const NFT_HOSTPORTS: &str = "hostports";
/// Used for hostIP rules by older versions; kept (empty) and cleaned like the reference.
pub const NFT_HOSTIP_HOSTPORTS: &str = "hostip_hostports";
pub const NFT_HOSTPORTS_ALL: &str = "hostports_all";
pub const NFT_PREROUTING: &str = "prerouting";
pub const NFT_OUTPUT: &str = "output";
pub const NFT_MASQUERADING: &str = "masquerading";
/// nft's `dstnat` and `srcnat` priorities.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
/// The userdata record type holding the network name of a rule (see the module docs).
pub const UDATA_NETWORK: u8 = 0xcb;

/// The chains whose rules belong to attachments.
const ATTACHMENT_CHAINS: [&str; 3] = [NFT_HOSTPORTS, NFT_HOSTIP_HOSTPORTS, NFT_MASQUERADING];

fn nft_family(v6: bool) -> u8 {
    if v6 {
        NFPROTO_IPV6
    } else {
        NFPROTO_IPV4
    }
}

/// The rule of `prerouting` and `output`: `<conditions> fib daddr type local jump
/// hostports_all`.
pub fn nft_entry_rule(conds: &[NftCond]) -> Vec<ExprExt> {
    let mut e = Vec::new();
    for c in conds {
        match c {
            NftCond::Addr { src, net, neq } => {
                nftables::match_addr_in_family(net, *src, *neq, &mut e)
            }
            NftCond::Ifname {
                out,
                name,
                wildcard,
                neq,
            } => nftables::match_ifname(*out, name, *wildcard, *neq, &mut e),
        }
    }
    nftables::match_fib_daddr_local(&mut e);
    e.push(Expr::Verdict(nftables::NFT_JUMP, Some(NFT_HOSTPORTS_ALL.into())).into());
    e
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::new(ip, host_len(ip)).unwrap_or_else(|_| IpNet::from(ip))
}

/// The `hostports` rules for a container address: `[ip[6] daddr <hostIP>] <proto>
/// dport <hostPort> dnat to <addr>:<port>`.
pub fn nft_hostport_rules(c: &Config, cont: &IpNet) -> Vec<Vec<ExprExt>> {
    let v6 = cont.addr().is_ipv6();
    let mut out = Vec::new();
    for m in &c.mappings {
        let Some(dst) = m.destination(v6) else {
            continue;
        };
        let mut e = Vec::new();
        if let Some(ip) = dst {
            nftables::match_addr_in_family(&host_net(ip), false, false, &mut e);
        }
        nftables::match_dport(m.proto.number(), m.host_port, &mut e);
        nftables::dnat_to(cont.addr(), m.container_port, &mut e);
        out.push(e);
    }
    out
}

/// The `masquerading` rules (with `snat`): hairpin `ip saddr <c> ip daddr <c>` and, for
/// IPv4, localhost `ip saddr 127.0.0.1 ip daddr <c>`; with `masqAll` one rule from any
/// source instead.
pub fn nft_masq_rules(c: &Config, cont: &IpNet) -> Vec<Vec<ExprExt>> {
    if !c.snat {
        return Vec::new();
    }
    let ip = cont.addr();
    let v6 = ip.is_ipv6();
    let sources: Vec<IpNet> = if c.masq_all {
        let any: IpAddr = if v6 {
            IpAddr::from([0u16; 8])
        } else {
            IpAddr::from([0u8; 4])
        };
        vec![IpNet::new(any, 0).unwrap_or_else(|_| IpNet::from(any))]
    } else if v6 {
        vec![host_net(ip)]
    } else {
        vec![host_net(ip), host_net(IpAddr::from([127, 0, 0, 1]))]
    };
    sources
        .iter()
        .map(|src| {
            let mut e = Vec::new();
            nftables::match_addr_in_family(src, true, false, &mut e);
            nftables::match_addr_in_family(&host_net(ip), false, false, &mut e);
            e.push(Expr::Masq.into());
            e
        })
        .collect()
}

/// The userdata of an attachment's rules: the container id as the comment (what the
/// reference matches), and the network name record, left out if it does not fit.
pub fn nft_udata(net: &str, cid: &str) -> Result<Vec<u8>> {
    nftables::udata(cid, &[(UDATA_NETWORK, net.as_bytes())])
        .or_else(|| nftables::udata(cid, &[]))
        .ok_or_else(|| {
            cni_err(
                Code::InvalidConfig,
                format!("container id {cid:?} is too long for an nftables comment"),
            )
        })
}

/// The network a rule was tagged with, if any.
pub fn nft_rule_network(r: &DumpedRule) -> Option<String> {
    nftables::udata_records(&r.udata)
        .into_iter()
        .find(|(t, _)| *t == UDATA_NETWORK)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn fam_rules(rules: &[DumpedRule], v6: bool) -> Vec<&DumpedRule> {
    let f = nft_family(v6);
    rules.iter().filter(|r| r.family == f).collect()
}

fn chain_rules<'a>(rules: &[&'a DumpedRule], chain: &str) -> Vec<&'a DumpedRule> {
    rules.iter().copied().filter(|r| r.chain == chain).collect()
}

fn same_rules(have: &[&DumpedRule], want: &[Vec<ExprExt>]) -> bool {
    have.len() == want.len()
        && have
            .iter()
            .zip(want)
            .all(|(h, w)| nftables::exprs_match(&h.exprs, w))
}

fn hostports_all_rules() -> Vec<Vec<ExprExt>> {
    [NFT_HOSTIP_HOSTPORTS, NFT_HOSTPORTS]
        .iter()
        .map(|c| vec![Expr::Verdict(nftables::NFT_JUMP, Some(c.to_string())).into()])
        .collect()
}

/// Are the family's shared chains already what this ADD would write? Then they are not
/// declared and rewritten again (the reference does so on every ADD; re-declaring a
/// chain makes the kernel wait for an RCU grace period).
fn nft_skeleton_in_place(rules: &[&DumpedRule], entry: &[ExprExt]) -> bool {
    let entry = vec![entry.to_vec()];
    same_rules(
        &chain_rules(rules, NFT_HOSTPORTS_ALL),
        &hostports_all_rules(),
    ) && same_rules(&chain_rules(rules, NFT_PREROUTING), &entry)
        && same_rules(&chain_rules(rules, NFT_OUTPUT), &entry)
}

/// ADD's transaction for the container addresses `conts` (at most one per family),
/// given the current rules of both tables: the skeleton when it is missing or altered
/// (conditions are global, as in the reference: the last ADD's win), this attachment's
/// earlier rules removed, its new rules added.
pub fn nft_setup_batch(
    c: &Config,
    conts: &[IpNet],
    rules: &[DumpedRule],
) -> Result<(Batch, Vec<(bool, Created)>)> {
    let mut b = Batch::new(NFPROTO_IPV4, NFT_TABLE);
    let udata = nft_udata(&c.net, &c.cid)?;
    let mut created = Vec::new();
    for cont in conts {
        let v6 = cont.addr().is_ipv6();
        b.set_family(nft_family(v6));
        let fam = fam_rules(rules, v6);
        let entry = nft_entry_rule(&c.nft_conditions(v6)?);
        let in_place = nft_skeleton_in_place(&fam, &entry);
        created.push((
            v6,
            Created {
                dnat: fam.is_empty(),
                masq: false,
            },
        ));
        if !in_place {
            b.add_table(Some(NFT_TABLE_COMMENT))?;
            for name in [NFT_HOSTPORTS, NFT_HOSTIP_HOSTPORTS, NFT_HOSTPORTS_ALL] {
                b.add_chain(&ChainSpec {
                    name,
                    comment: None,
                    base: None,
                })?;
            }
            b.flush_chain(NFT_HOSTPORTS_ALL)?;
            for r in hostports_all_rules() {
                b.add_rule_ext(NFT_HOSTPORTS_ALL, &r, None)?;
            }
            for (name, hook) in [
                (NFT_PREROUTING, nftables::NF_INET_PRE_ROUTING),
                (NFT_OUTPUT, nftables::NF_INET_LOCAL_OUT),
            ] {
                b.add_chain(&ChainSpec {
                    name,
                    comment: None,
                    base: Some(("nat", hook, DSTNAT)),
                })?;
                b.flush_chain(name)?;
                b.add_rule_ext(name, &entry, None)?;
            }
        }
        // An empty masquerading chain does not show in a rule dump: declare it unless
        // rules prove it is there.
        if c.snat && (!in_place || chain_rules(&fam, NFT_MASQUERADING).is_empty()) {
            b.add_chain(&ChainSpec {
                name: NFT_MASQUERADING,
                comment: None,
                base: Some(("nat", nftables::NF_INET_POST_ROUTING, SRCNAT)),
            })?;
        }
        for r in &fam {
            if ATTACHMENT_CHAINS.contains(&r.chain.as_str())
                && r.comment == c.cid
                && nft_rule_network(r).as_deref() == Some(c.net.as_str())
            {
                b.delete_rule(&r.chain, r.handle)?;
            }
        }
        for r in nft_hostport_rules(c, cont) {
            b.add_rule_ext(NFT_HOSTPORTS, &r, Some(&udata))?;
        }
        for r in nft_masq_rules(c, cont) {
            b.add_rule_ext(NFT_MASQUERADING, &r, Some(&udata))?;
        }
    }
    Ok((b, created))
}

/// Is `r` one of the attachment's rules for DEL: its container id, and this network or
/// no network record (a rule made by the reference, which DEL removes as it would).
fn nft_rule_is_ours_for_del(r: &DumpedRule, net: &str, cid: &str) -> bool {
    ATTACHMENT_CHAINS.contains(&r.chain.as_str())
        && r.comment == cid
        && nft_rule_network(r).is_none_or(|n| n == net)
}

/// DEL's transaction (both families). With `created` (per family: did the failed ADD
/// being undone create the table?), that table goes too, object by object: if a
/// concurrent ADD put rules into it meanwhile, the kernel refuses to delete a non-empty
/// chain and the transaction fails as a whole.
pub fn nft_teardown_batch(
    net: &str,
    cid: &str,
    rules: &[DumpedRule],
    created: &[(bool, Created)],
) -> Result<Batch> {
    let mut b = Batch::new(NFPROTO_IPV4, NFT_TABLE);
    for v6 in [false, true] {
        b.set_family(nft_family(v6));
        let made = created.iter().any(|(f, cr)| *f == v6 && cr.dnat);
        let fam = fam_rules(rules, v6);
        let ours: Vec<&&DumpedRule> = fam
            .iter()
            .filter(|r| nft_rule_is_ours_for_del(r, net, cid))
            .collect();
        for r in &ours {
            b.delete_rule(&r.chain, r.handle)?;
        }
        let others = fam.iter().any(|r| {
            ATTACHMENT_CHAINS.contains(&r.chain.as_str()) && !nft_rule_is_ours_for_del(r, net, cid)
        });
        if made && !fam.is_empty() && !others {
            for name in [NFT_HOSTPORTS_ALL, NFT_PREROUTING, NFT_OUTPUT] {
                b.flush_chain(name)?;
            }
            for name in [
                NFT_PREROUTING,
                NFT_OUTPUT,
                NFT_HOSTPORTS_ALL,
                NFT_HOSTPORTS,
                NFT_HOSTIP_HOSTPORTS,
                NFT_MASQUERADING,
            ] {
                // masquerading exists only with snat; it had our rules if so
                if name == NFT_MASQUERADING && !ours.iter().any(|r| r.chain == name) {
                    continue;
                }
                b.delete_chain(name)?;
            }
            b.delete_table()?;
        }
    }
    Ok(b)
}

/// CHECK for one family: every expected rule is there with the attachment's comment,
/// and so is the skeleton's entry rule.
pub fn nft_check(c: &Config, cont: &IpNet, rules: &[DumpedRule]) -> Result<()> {
    let v6 = cont.addr().is_ipv6();
    let fam = fam_rules(rules, v6);
    let table = format!("{} {NFT_TABLE}", if v6 { "ip6" } else { "ip" });
    let entry = nft_entry_rule(&c.nft_conditions(v6)?);
    for chain in [NFT_PREROUTING, NFT_OUTPUT] {
        if !chain_rules(&fam, chain)
            .iter()
            .any(|r| nftables::exprs_match(&r.exprs, &entry))
        {
            bail!("missing the hostport entry rule in {table} chain {chain:?}");
        }
    }
    for (chain, want) in [
        (NFT_HOSTPORTS, nft_hostport_rules(c, cont)),
        (NFT_MASQUERADING, nft_masq_rules(c, cont)),
    ] {
        let have: Vec<&DumpedRule> = chain_rules(&fam, chain)
            .into_iter()
            .filter(|r| r.comment == c.cid)
            .collect();
        for w in &want {
            if !have.iter().any(|r| nftables::exprs_match(&r.exprs, w)) {
                bail!("missing hostport rules in {table} chain {chain:?}");
            }
        }
    }
    Ok(())
}

/// GC's transaction: rules tagged with network `net` whose container is not in `valid`.
/// Untagged rules cannot be attributed to a network and are kept.
pub fn nft_gc_batch(net: &str, valid: &[String], rules: &[DumpedRule]) -> Result<Batch> {
    let mut b = Batch::new(NFPROTO_IPV4, NFT_TABLE);
    for v6 in [false, true] {
        b.set_family(nft_family(v6));
        for r in fam_rules(rules, v6) {
            if ATTACHMENT_CHAINS.contains(&r.chain.as_str())
                && nft_rule_network(r).as_deref() == Some(net)
                && !valid.contains(&r.comment)
            {
                b.delete_rule(&r.chain, r.handle)?;
            }
        }
    }
    Ok(b)
}

// ---------------------------------------------------------------------------------------
// Applying

fn ipt_tools(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("ip6tables-save", "ip6tables-restore")
    } else {
        ("iptables-save", "iptables-restore")
    }
}

fn ipt_save(v6: bool) -> Result<String> {
    run(ipt_tools(v6).0, &["-t", "nat"], "")
}

fn ipt_restore(v6: bool, script: &str) -> Result<()> {
    let wait = super::XTABLES_WAIT_SECS.to_string();
    run(ipt_tools(v6).1, &["--noflush", "--wait", &wait], script).map(|_| ())
}

/// `iptables-save -t nat` for DEL, CHECK and GC: `None` when the family cannot be listed
/// at all (no ip6tables, no nat support), which means it holds nothing; a tool that
/// timed out (code 11) is an error.
fn ipt_save_if_usable(v6: bool) -> Result<Option<String>> {
    if !have(ipt_tools(v6).0) {
        return Ok(None);
    }
    match ipt_save(v6) {
        Ok(save) => Ok(Some(save)),
        Err(e) if crate::error::code_of(&e) == Some(Code::TryAgainLater as u32) => Err(e),
        Err(_) => Ok(None),
    }
}

fn ignore_unsupported(e: anyhow::Error) -> Result<()> {
    match crate::netlink::errno(&e) {
        Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) | Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

/// What a successful [`setup`] did, for [`undo`].
#[derive(Clone, Debug, Default)]
pub struct Applied {
    backend: Option<Backend>,
    /// (family is IPv6, skeleton created) per family set up.
    families: Vec<(bool, Created)>,
}

/// ADD: forward the configured ports to `conts` (at most one address per family). All
/// or nothing: a family that fails after another went in takes the other out again.
pub fn setup(c: &Config, conts: &[IpNet]) -> Result<Applied> {
    let mut applied = Applied {
        backend: Some(c.backend),
        families: Vec::new(),
    };
    match c.backend {
        Backend::Iptables => {
            for cont in conts {
                let v6 = cont.addr().is_ipv6();
                let step = ipt_save(v6).and_then(|save| {
                    let (script, created) = ipt_setup_script(c, cont, &save);
                    ipt_restore(v6, &script).map(|_| created)
                });
                match step {
                    Ok(created) => applied.families.push((v6, created)),
                    Err(e) => {
                        if let Err(u) = undo(c, &applied) {
                            return Err(e.context(format!(
                                "failed to set up port forwarding, and to remove its partial rules ({u:#})"
                            )));
                        }
                        return Err(e);
                    }
                }
            }
        }
        Backend::Nftables => {
            // A rule that vanished between the dump and the transaction (a concurrent
            // DEL, or a table removed by hand) fails the whole transaction with ENOENT;
            // one fresh attempt sees the new state.
            let mut attempt = 0;
            let created = loop {
                attempt += 1;
                let rules = nftables::dump_table(nftables::NFPROTO_UNSPEC, NFT_TABLE)?;
                let (batch, created) = nft_setup_batch(c, conts, &rules)?;
                match batch.commit("unable to set up nftables rules for port mappings") {
                    Ok(()) => break created,
                    Err(e) if attempt < 2 && crate::netlink::is_errno(&e, libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            };
            applied.families = created;
        }
    }
    Ok(applied)
}

/// Undo a [`setup`]: the attachment's rules, and the skeleton it created if unused.
pub fn undo(c: &Config, a: &Applied) -> Result<()> {
    match a.backend {
        None => Ok(()),
        Some(Backend::Iptables) => {
            for (v6, created) in &a.families {
                let save = ipt_save(*v6)?;
                if let Some(script) = ipt_teardown_script(&c.net, &c.cid, &save, *created) {
                    ipt_restore(*v6, &script)?;
                }
            }
            Ok(())
        }
        Some(Backend::Nftables) => {
            let rules = nftables::dump_table(nftables::NFPROTO_UNSPEC, NFT_TABLE)?;
            nft_teardown_batch(&c.net, &c.cid, &rules, &a.families)?
                .commit("failed to remove the port mapping rules of a failed ADD")
        }
    }
}

/// Both backends' errors as one; "try again later" (a timeout) wins, so that the
/// runtime retries.
fn combine(what: &str, errs: Vec<anyhow::Error>) -> Result<()> {
    if errs.is_empty() {
        return Ok(());
    }
    let text = errs
        .iter()
        .map(|e| format!("{e:#}"))
        .collect::<Vec<_>>()
        .join("; ");
    if errs
        .iter()
        .any(|e| crate::error::code_of(e) == Some(Code::TryAgainLater as u32))
    {
        return Err(cni_err(Code::TryAgainLater, format!("{what}: {text}")));
    }
    Err(anyhow!("{what}: {text}"))
}

/// DEL: remove the attachment's rules from both backends, whichever hold any (the
/// config's backend may have changed since ADD). Found by name, so no addresses are
/// needed and a vanished netns does not matter.
pub fn teardown(net: &str, cid: &str) -> Result<()> {
    let mut errs = Vec::new();
    for v6 in [false, true] {
        let step = ipt_save_if_usable(v6).and_then(|save| {
            match save.and_then(|s| ipt_teardown_script(net, cid, &s, Created::default())) {
                Some(script) => ipt_restore(v6, &script),
                None => Ok(()),
            }
        });
        errs.extend(step.err());
    }
    let nft = nftables::dump_table(nftables::NFPROTO_UNSPEC, NFT_TABLE).and_then(|rules| {
        nft_teardown_batch(net, cid, &rules, &[])?.commit("error deleting nftables rules")
    });
    errs.extend(nft.or_else(ignore_unsupported).err());
    combine("failed to remove port mappings", errs)
}

/// CHECK with the configured backend, for each container address.
pub fn check(c: &Config, conts: &[IpNet]) -> Result<()> {
    match c.backend {
        Backend::Iptables => {
            for cont in conts {
                let v6 = cont.addr().is_ipv6();
                let save = ipt_save(v6)?;
                ipt_check(c, cont, &save)?;
            }
        }
        Backend::Nftables => {
            let rules = nftables::dump_table(nftables::NFPROTO_UNSPEC, NFT_TABLE)?;
            for cont in conts {
                nft_check(c, cont, &rules)?;
            }
        }
    }
    Ok(())
}

/// GC: remove the rules of network `net`'s attachments whose container is not in
/// `valid`, from both backends.
pub fn gc(net: &str, valid: &[String]) -> Result<()> {
    let mut errs = Vec::new();
    for v6 in [false, true] {
        let step = ipt_save_if_usable(v6).and_then(|save| {
            let Some(save) = save else { return Ok(()) };
            let mut script = String::new();
            for cid in ipt_owned_cids(net, &save) {
                if valid.contains(&cid) {
                    continue;
                }
                if let Some(s) = ipt_teardown_script(net, &cid, &save, Created::default()) {
                    script += s.trim_start_matches("*nat\n").trim_end_matches("COMMIT\n");
                }
            }
            if script.is_empty() {
                return Ok(());
            }
            ipt_restore(v6, &format!("*nat\n{script}COMMIT\n"))
        });
        errs.extend(step.err());
    }
    let nft = nftables::dump_table(nftables::NFPROTO_UNSPEC, NFT_TABLE).and_then(|rules| {
        nft_gc_batch(net, valid, &rules)?.commit("failed to garbage-collect nftables port mappings")
    });
    errs.extend(nft.or_else(ignore_unsupported).err());
    combine("failed to garbage-collect port mappings", errs)
}

/// The host interface that routes to `ip` (`ip route get`), whose `route_localnet` lets
/// 127.0.0.1 cross to the container; `None` if there is no route.
pub fn routable_host_if(ip: std::net::Ipv4Addr) -> Result<Option<String>> {
    use crate::netlink::{attr, u32_of, LinkId, Nl};
    use neli::consts::nl::NlmF;
    use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, Rtn, Rtprot};
    use neli::rtnl::RtmsgBuilder;
    use neli::types::{Buffer, RtBuffer};
    let nl = Nl::open()?;
    let req = RtmsgBuilder::default()
        .rtm_family(RtAddrFamily::Inet)
        .rtm_dst_len(32)
        .rtm_src_len(0)
        .rtm_tos(0)
        .rtm_table(RtTable::Unspec)
        .rtm_protocol(Rtprot::Unspec)
        .rtm_scope(RtScope::Universe)
        .rtm_type(Rtn::Unspec)
        .rtattrs(RtBuffer::from_iter([attr(
            Rta::Dst,
            Buffer::from(ip.octets().to_vec()),
        )?]))
        .build()
        .map_err(|e| anyhow!("cannot build route request: {e}"))?;
    let replies = match nl.request(Rtm::Getroute, NlmF::empty(), req, || {
        format!("failed to get the route to {ip}")
    }) {
        Ok(r) => r,
        // no route (ENETUNREACH and friends): no interface, as in the reference
        Err(e) if crate::netlink::errno(&e).is_some() => return Ok(None),
        Err(e) => return Err(e),
    };
    let oif = replies.iter().find_map(|m| {
        m.rtattrs()
            .iter()
            .find(|a| *a.rta_type() == Rta::Oif)
            .map(|a| u32_of(a.rta_payload().as_ref()))
    });
    match oif {
        Some(index) if index != 0 => Ok(nl.link(LinkId::Index(index))?.map(|l| l.name)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CniError;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> Result<Config> {
        let raw: RawConf = crate::cni::decode::from_value(v).unwrap();
        Config::new(raw, "mynet", "ctr1", true)
    }

    fn maps(m: serde_json::Value) -> serde_json::Value {
        json!({"runtimeConfig": {"portMappings": m}})
    }

    fn std_maps() -> serde_json::Value {
        maps(json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8081, "containerPort": 81, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "192.168.1.1"},
            {"hostPort": 99, "containerPort": 99, "protocol": "sctp"},
            {"hostPort": 54, "containerPort": 54, "protocol": "udp", "hostIP": "2001:db8::1"}
        ]))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn names_match_the_reference() {
        assert_eq!(dn_chain("mynet", "abc"), "CNI-DN-e88f49d94512ff752ebe6");
        assert_eq!(dn_chain("mynet", "ctr1"), "CNI-DN-5145007e2a8415ce07579");
        assert!(sn_chain("mynet", "ctr1").starts_with("CNI-SN-"));
        assert_eq!(dnat_comment("n", "c"), r#"dnat name: "n" id: "c""#);
        let long = dnat_comment("n", &"c".repeat(300));
        assert_eq!(long.len(), 255);
        assert!(long.ends_with("..."));
        assert_eq!(mark(13), "0x2000/0x2000");
        assert_eq!(mark(0), "0x1/0x1");
        assert_eq!(mark(31), "0x80000000/0x80000000");
    }

    #[test]
    fn defaults_and_backend_choice() {
        let c = conf(std_maps()).unwrap();
        assert!(c.snat && !c.masq_all);
        assert_eq!((c.mark_bit, c.backend), (13, Backend::Iptables));
        assert_eq!(c.mappings.len(), 5);
        assert_eq!(c.udp_ports(), vec![53, 54]);
        let raw: RawConf = crate::cni::decode::from_value(std_maps()).unwrap();
        assert_eq!(
            Config::new(raw, "n", "c", false).unwrap().backend,
            Backend::Nftables
        );
        let c = conf(
            json!({"backend": "nftables", "snat": false, "masqAll": true,
            "conditionsV4": ["ip saddr 10.0.0.0/8"]}),
        )
        .unwrap();
        assert_eq!(c.backend, Backend::Nftables);
        assert!(!c.snat && c.masq_all && c.mappings.is_empty());
        // case-insensitive keys and protocols, like the reference
        let c = conf(json!({"RuntimeConfig": {"PortMappings": [
            {"HostPort": 1, "containerport": 2, "Protocol": "UDP", "hostip": "::ffff:10.0.0.1"}]}}))
        .unwrap();
        assert_eq!(c.mappings[0].proto, Proto::Udp);
        assert_eq!(c.mappings[0].host_ip, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn malformed_configs_are_code_7_naming_the_key() {
        let cases: &[(serde_json::Value, &str)] = &[
            (
                maps(json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}])),
                "protocol",
            ),
            (
                maps(json!([{"hostPort": 80, "containerPort": 80}])),
                "protocol",
            ),
            (
                maps(json!([{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}])),
                "hostPort",
            ),
            (
                maps(json!([{"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}])),
                "hostPort",
            ),
            (
                maps(json!([{"hostPort": 80, "containerPort": -1, "protocol": "tcp"}])),
                "containerPort",
            ),
            (
                maps(
                    json!([{"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "nope"}]),
                ),
                "hostIP",
            ),
            (json!({"markMasqBit": 40}), "markMasqBit"),
            (json!({"markMasqBit": -1}), "markMasqBit"),
            (
                json!({"markMasqBit": 3, "externalSetMarkChain": "KUBE-MARK-MASQ"}),
                "externalSetMarkChain",
            ),
            (
                json!({"externalSetMarkChain": "has space"}),
                "externalSetMarkChain",
            ),
            (json!({"backend": "pf"}), "backend"),
            (
                json!({"backend": "nftables", "externalSetMarkChain": "X"}),
                "iptables-specific options [externalSetMarkChain]",
            ),
            (
                json!({"backend": "iptables", "conditionsV4": ["ip saddr 1.2.3.4"]}),
                "nftables-specific options [conditionsV4]",
            ),
            (
                json!({"backend": "nftables", "conditionsV6": ["-s", "::1"]}),
                "iptables-specific options [conditionsV6]",
            ),
            (
                json!({"backend": "nftables", "conditionsV4": ["tcp dport 22"]}),
                "conditionsV4",
            ),
            (
                json!({"backend": "nftables", "conditionsV4": ["ip6 saddr ::1"]}),
                "conditionsV4",
            ),
            (
                json!({"backend": "nftables", "conditionsV6": ["ip6 saddr 10.0.0.1"]}),
                "conditionsV6",
            ),
            (
                json!({"backend": "nftables", "conditionsV4": ["iifname \"eth0"]}),
                "conditionsV4",
            ),
            (
                json!({"conditionsV4": ["-s", "1.2.3.4\n-A INPUT -j DROP"]}),
                "conditionsV4",
            ),
        ];
        for (v, key) in cases {
            let e = conf(v.clone()).unwrap_err();
            let c = CniError::from_anyhow(&e);
            assert_eq!(c.code, 7, "{v}: {}", c.msg);
            assert!(c.msg.contains(key), "{v}: {:?} lacks {key:?}", c.msg);
        }
    }

    #[test]
    fn nft_conditions_parse() {
        let p = |s: &[&str], v6| {
            let parts: Vec<String> = s.iter().map(|x| x.to_string()).collect();
            parse_nft_conditions("conditionsV4", &parts, v6)
        };
        assert_eq!(
            p(
                &["ip", "saddr", "!=", "10.0.0.0/8", "iifname \"eth*\""],
                false
            )
            .unwrap(),
            vec![
                NftCond::Addr {
                    src: true,
                    net: net("10.0.0.0/8"),
                    neq: true
                },
                NftCond::Ifname {
                    out: false,
                    name: "eth".into(),
                    wildcard: true,
                    neq: false
                }
            ]
        );
        assert_eq!(
            p(&["meta oifname lo ip6 daddr fd00::1"], true)
                .unwrap()
                .len(),
            2
        );
        assert!(p(&[], false).unwrap().is_empty());
        for bad in [
            &["ip"][..],
            &["ip saddr"],
            &["ip protocol tcp"],
            &["iifname *"],
            &["iifname a234567890123456"],
            &["ct state new"],
        ] {
            assert!(p(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn iptables_rules_are_the_references() {
        let c = conf(std_maps()).unwrap();
        let ch = "CNI-DN-5145007e2a8415ce07579";
        // as iptables-save printed the Go plugin's rules
        let v4: Vec<String> = [
            "-s 10.1.2.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
            "-s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
            "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.2.3:80",
            "-s 10.1.2.0/24 -p tcp -m tcp --dport 8081 -j CNI-HOSTPORT-SETMARK",
            "-s 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j CNI-HOSTPORT-SETMARK",
            "-p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.1.2.3:81",
            "-s 10.1.2.0/24 -d 192.168.1.1/32 -p udp -m udp --dport 53 -j CNI-HOSTPORT-SETMARK",
            "-s 127.0.0.1/32 -d 192.168.1.1/32 -p udp -m udp --dport 53 -j CNI-HOSTPORT-SETMARK",
            "-d 192.168.1.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.1.2.3:5353",
            "-s 10.1.2.0/24 -p sctp -m sctp --dport 99 -j CNI-HOSTPORT-SETMARK",
            "-s 127.0.0.1/32 -p sctp -m sctp --dport 99 -j CNI-HOSTPORT-SETMARK",
            "-p sctp -m sctp --dport 99 -j DNAT --to-destination 10.1.2.3:99",
        ]
        .iter()
        .map(|r| format!("-A {ch} {r}"))
        .collect();
        assert_eq!(ipt_dn_rules(&c, &net("10.1.2.3/24")), v4);
        let v6 = ipt_dn_rules(&c, &net("fd00::3/64"));
        assert_eq!(v6.len(), 8, "{v6:?}");
        assert_eq!(
            v6[1],
            format!("-A {ch} -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00::3]:80")
        );
        assert_eq!(
            v6[6],
            format!("-A {ch} -s fd00::/64 -d 2001:db8::1/128 -p udp -m udp --dport 54 -j CNI-HOSTPORT-SETMARK")
        );
        let e: Vec<String> = ipt_entry_rules(&c, false)
            .into_iter()
            .map(|e| e.2)
            .collect();
        let cm = r#"-m comment --comment "dnat name: \"mynet\" id: \"ctr1\"""#;
        assert_eq!(
            e,
            vec![
                format!("-A CNI-HOSTPORT-DNAT -p sctp {cm} -m multiport --dports 99 -j {ch}"),
                format!("-A CNI-HOSTPORT-DNAT -p tcp {cm} -m multiport --dports 8080,8081 -j {ch}"),
                format!("-A CNI-HOSTPORT-DNAT -p udp {cm} -m multiport --dports 53,54 -j {ch}"),
            ]
        );
        // masqAll: any source, no localhost rule; snat off: DNAT only; external chain
        let mut m = c.clone();
        m.masq_all = true;
        m.external_mark = Some("KUBE-MARK-MASQ".into());
        let r = ipt_dn_rules(&m, &net("10.1.2.3/24"));
        assert_eq!(
            r[0],
            format!("-A {ch} -p tcp -m tcp --dport 8080 -j KUBE-MARK-MASQ")
        );
        assert_eq!(r.len(), 8);
        m.snat = false;
        assert_eq!(ipt_dn_rules(&m, &net("10.1.2.3/24")).len(), 4);
    }

    #[test]
    fn iptables_multiport_groups_of_15_and_conditions() {
        let list: Vec<serde_json::Value> = (1..=16)
            .map(|p| json!({"hostPort": 1000 + p, "containerPort": p, "protocol": "tcp"}))
            .collect();
        let mut v = maps(json!(list));
        v["conditionsV4"] = json!(["-s", "1.2.3.4", "-m", "comment", "--comment", "a b"]);
        let c = conf(v).unwrap();
        let e = ipt_entry_rules(&c, false);
        assert_eq!(e.len(), 2);
        assert!(e[0].1.ends_with(",1015") && e[1].1 == "1016");
        assert!(
            e[1].2.ends_with(r#" --dports 1016 -s 1.2.3.4 -m comment --comment "a b" -j CNI-DN-5145007e2a8415ce07579"#),
            "{}",
            e[1].2
        );
        // conditionsV4 do not apply to IPv6
        assert!(!ipt_entry_rules(&c, true)[0].2.contains("1.2.3.4"));
    }

    #[test]
    fn iptables_setup_is_idempotent_and_teardown_complete() {
        let c = conf(std_maps()).unwrap();
        let cont = net("10.1.2.3/24");
        let (s, created) = ipt_setup_script(&c, &cont, "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(
            created,
            Created {
                dnat: true,
                masq: true
            }
        );
        for want in [
            ":CNI-HOSTPORT-SETMARK - [0:0]\n",
            ":CNI-HOSTPORT-MASQ - [0:0]\n",
            ":CNI-HOSTPORT-DNAT - [0:0]\n",
            ":CNI-DN-5145007e2a8415ce07579 - [0:0]\n",
            "-I POSTROUTING 1 -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ\n",
            "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n",
            "-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000\n",
        ] {
            assert!(s.contains(want), "{want} missing from\n{s}");
        }
        assert!(s.starts_with("*nat\n") && s.ends_with("COMMIT\n"));
        // What iptables-save prints after that ADD: a second ADD adds no shared rule,
        // and replaces the entries.
        let mut save = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-5145007e2a8415ce07579 - [0:0]\n");
        for l in [
            local_jump("PREROUTING"),
            local_jump("OUTPUT"),
            postrouting_jump(),
            setmark_rule(13),
            masq_rule(13),
        ] {
            save += &format!("{l}\n");
        }
        for l in ipt_dn_rules(&c, &cont) {
            save += &format!("{l}\n");
        }
        for (_, _, l) in ipt_entry_rules(&c, false) {
            save += &format!("{l}\n");
        }
        save += "COMMIT\n";
        let (s2, created) = ipt_setup_script(&c, &cont, &save);
        assert_eq!(created, Created::default());
        assert_eq!(s2.matches("-D CNI-HOSTPORT-DNAT").count(), 3, "{s2}");
        assert_eq!(s2.matches("-A CNI-HOSTPORT-DNAT").count(), 3);
        assert!(!s2.contains("POSTROUTING") && !s2.contains("SETMARK -m"));
        ipt_check(&c, &cont, &save).unwrap();
        let e = ipt_check(
            &c,
            &cont,
            &save.replace("--dport 8081 -j DNAT", "--dport 8082 -j DNAT"),
        );
        assert!(e.unwrap_err().to_string().contains("--dport 8081"));
        assert_eq!(ipt_owned_cids("mynet", &save), vec!["ctr1".to_string()]);
        assert!(ipt_owned_cids("other", &save).is_empty());

        let t = ipt_teardown_script("mynet", "ctr1", &save, Created::default()).unwrap();
        assert_eq!(t.matches("-D CNI-HOSTPORT-DNAT ").count(), 3);
        assert!(t.contains("-F CNI-DN-5145007e2a8415ce07579\n-X CNI-DN-5145007e2a8415ce07579\n"));
        assert!(!t.contains("-X CNI-HOSTPORT"), "the skeleton stays: {t}");
        // undoing a failed ADD that created the skeleton removes it too
        let all = Created {
            dnat: true,
            masq: true,
        };
        let t = ipt_teardown_script("mynet", "ctr1", &save, all).unwrap();
        for gone in [
            "-X CNI-HOSTPORT-DNAT",
            "-X CNI-HOSTPORT-MASQ",
            "-X CNI-HOSTPORT-SETMARK",
            "-D POSTROUTING",
            "-D PREROUTING",
            "-D OUTPUT",
        ] {
            assert!(t.contains(gone), "{gone} missing from\n{t}");
        }
        // ... unless another attachment uses it meanwhile
        let other = save.replace("COMMIT\n", "-A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 1 -j CNI-DN-other\n-A CNI-DN-other -p tcp -m tcp --dport 1 -j CNI-HOSTPORT-SETMARK\nCOMMIT\n");
        let t = ipt_teardown_script("mynet", "ctr1", &other, all).unwrap();
        assert!(
            !t.contains("CNI-HOSTPORT-DNAT\n-X") && !t.contains("-X CNI-HOSTPORT"),
            "{t}"
        );
        assert!(ipt_teardown_script("mynet", "ctr1", "*nat\nCOMMIT\n", all).is_none());
        // the legacy SNAT chain goes too
        let legacy = format!(
            "*nat\n:{0} - [0:0]\n-A CNI-HOSTPORT-SNAT -j {0}\nCOMMIT\n",
            sn_chain("mynet", "ctr1")
        );
        let t = ipt_teardown_script("mynet", "ctr1", &legacy, Created::default()).unwrap();
        assert!(t.contains("-D CNI-HOSTPORT-SNAT -j CNI-SN-") && t.contains("-X CNI-SN-"));
    }

    fn names(e: &[ExprExt]) -> Vec<&'static str> {
        e.iter().map(ExprExt::name).collect()
    }

    #[test]
    fn nftables_rules_compile_like_nft() {
        let c = conf(std_maps()).unwrap();
        let cont = net("10.1.2.3/24");
        let r = nft_hostport_rules(&c, &cont);
        assert_eq!(r.len(), 4, "the IPv6 hostIP mapping is skipped");
        // `ip daddr 192.168.1.1 udp dport 53 dnat to 10.1.2.3:5353` (nft --debug=netlink)
        assert_eq!(
            r[2],
            vec![
                Expr::Payload {
                    base: 1,
                    offset: 16,
                    len: 4
                }
                .into(),
                Expr::Cmp {
                    neq: false,
                    data: vec![192, 168, 1, 1]
                }
                .into(),
                Expr::Meta(16).into(),
                Expr::Cmp {
                    neq: false,
                    data: vec![17]
                }
                .into(),
                Expr::Payload {
                    base: 2,
                    offset: 2,
                    len: 2
                }
                .into(),
                Expr::Cmp {
                    neq: false,
                    data: vec![0, 53]
                }
                .into(),
                ExprExt::Imm {
                    reg: 1,
                    data: vec![10, 1, 2, 3]
                },
                ExprExt::Imm {
                    reg: 2,
                    data: 5353u16.to_be_bytes().to_vec()
                },
                ExprExt::Dnat {
                    family: NFPROTO_IPV4
                },
            ]
        );
        let m = nft_masq_rules(&c, &cont);
        assert_eq!(m.len(), 2);
        assert_eq!(names(&m[1]), ["payload", "cmp", "payload", "cmp", "masq"]);
        assert_eq!(
            m[1][1],
            Expr::Cmp {
                neq: false,
                data: vec![127, 0, 0, 1]
            }
            .into()
        );
        let v6 = nft_masq_rules(&c, &net("fd00::3/64"));
        assert_eq!(v6.len(), 1);
        assert_eq!(
            v6[0][0],
            Expr::Payload {
                base: 1,
                offset: 8,
                len: 16
            }
            .into()
        );
        // masqAll: `ip saddr 0.0.0.0/0` is kept by nft as a masked compare
        let mut all = c.clone();
        all.masq_all = true;
        let m = nft_masq_rules(&all, &cont);
        assert_eq!(m.len(), 1);
        assert_eq!(
            names(&m[0]),
            ["payload", "bitwise", "cmp", "payload", "cmp", "masq"]
        );
        all.snat = false;
        assert!(nft_masq_rules(&all, &cont).is_empty());
        // `ip saddr 10.0.0.0/8 iifname "eth*" fib daddr type local jump hostports_all`
        let e = nft_entry_rule(&[
            NftCond::Addr {
                src: true,
                net: net("10.0.0.0/8"),
                neq: false,
            },
            NftCond::Ifname {
                out: false,
                name: "eth".into(),
                wildcard: true,
                neq: false,
            },
        ]);
        assert_eq!(
            names(&e),
            ["payload", "cmp", "meta", "cmp", "fib", "cmp", "immediate"]
        );
        assert_eq!(
            e[3],
            Expr::Cmp {
                neq: false,
                data: b"eth".to_vec()
            }
            .into()
        );
        assert_eq!(
            e[5],
            Expr::Cmp {
                neq: false,
                data: 2u32.to_ne_bytes().to_vec()
            }
            .into()
        );
    }

    fn dumped(
        family: u8,
        chain: &str,
        handle: u64,
        cid: &str,
        net: Option<&str>,
        exprs: &[ExprExt],
    ) -> DumpedRule {
        let udata = match net {
            Some(n) => nftables::udata(cid, &[(UDATA_NETWORK, n.as_bytes())]).unwrap(),
            None => nftables::udata(cid, &[]).unwrap(),
        };
        DumpedRule {
            family,
            chain: chain.into(),
            handle,
            comment: cid.into(),
            udata,
            exprs: exprs.iter().flat_map(|e| e.to_wire().unwrap()).collect(),
        }
    }

    #[test]
    fn nftables_transactions() {
        let c = conf(
            json!({"backend": "nftables", "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}),
        )
        .unwrap();
        let cont = net("10.1.2.3/24");
        // nothing there: the skeleton and the rules
        let (b, created) = nft_setup_batch(&c, &[cont], &[]).unwrap();
        assert_eq!(
            created,
            vec![(
                false,
                Created {
                    dnat: true,
                    masq: false
                }
            )]
        );
        // table, 3 chains, flush + 2 jumps, 2 x (chain, flush, rule), masquerading,
        // 1 DNAT, 2 masquerade
        assert_eq!(b.len(), 1 + 3 + 3 + 6 + 1 + 1 + 2);
        // the skeleton in place and an earlier set of our rules: only those replaced
        let entry = nft_entry_rule(&[]);
        let jumps = hostports_all_rules();
        let hp = nft_hostport_rules(&c, &cont);
        let rules = vec![
            dumped(2, NFT_HOSTPORTS_ALL, 1, "", None, &jumps[0]),
            dumped(2, NFT_HOSTPORTS_ALL, 2, "", None, &jumps[1]),
            dumped(2, NFT_PREROUTING, 3, "", None, &entry),
            dumped(2, NFT_OUTPUT, 4, "", None, &entry),
            dumped(2, NFT_HOSTPORTS, 5, "ctr1", Some("mynet"), &hp[0]),
            dumped(2, NFT_HOSTPORTS, 6, "ctr1", Some("othernet"), &hp[0]),
            dumped(2, NFT_HOSTPORTS, 7, "ctr1", None, &hp[0]),
            dumped(2, NFT_MASQUERADING, 8, "ctr2", Some("mynet"), &hp[0]),
        ];
        let (b, created) = nft_setup_batch(&c, &[cont], &rules).unwrap();
        assert_eq!(created[0].1, Created::default());
        assert_eq!(b.len(), 1 + 1 + 2, "delete handle 5, add 3 rules");
        nft_check(&c, &cont, &rules).unwrap_err(); // no masquerade rules for ctr1
        let mut nosnat = c.clone();
        nosnat.snat = false;
        nft_check(&nosnat, &cont, &rules).unwrap();
        assert!(nft_check(&nosnat, &net("10.1.2.4/24"), &rules).is_err());
        // a changed condition rewrites the skeleton
        let mut cond = c.clone();
        cond.cond_v4 = vec!["iifname eth0".into()];
        let (b, _) = nft_setup_batch(&cond, &[cont], &rules).unwrap();
        assert!(b.len() > 10);
        // DEL: ours and the reference's (untagged), not another network's
        assert_eq!(
            nft_teardown_batch("mynet", "ctr1", &rules, &[])
                .unwrap()
                .len(),
            2
        );
        // GC: tagged rules of this network whose container is gone
        assert_eq!(
            nft_gc_batch("mynet", &["ctr1".into()], &rules)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            nft_gc_batch("mynet", &["ctr1".into(), "ctr2".into()], &rules)
                .unwrap()
                .len(),
            0
        );
        assert_eq!(nft_gc_batch("othernet", &[], &rules).unwrap().len(), 1);
        // undoing an ADD that created the table removes it, unless others use it
        let mine: Vec<DumpedRule> = rules[..5].to_vec();
        let made = [(
            false,
            Created {
                dnat: true,
                masq: false,
            },
        )];
        let b = nft_teardown_batch("mynet", "ctr1", &mine, &made).unwrap();
        // rule 5, 3 flushes, 5 chains (no masquerading rule of ours), table
        assert_eq!(b.len(), 1 + 3 + 5 + 1);
        assert_eq!(
            nft_teardown_batch("mynet", "ctr1", &rules, &made)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn userdata_carries_the_network() {
        let u = nft_udata("mynet", "ctr1").unwrap();
        assert_eq!(&u[..7], b"\x00\x05ctr1\x00");
        assert_eq!(&u[7..], b"\xcb\x05mynet");
        let r = DumpedRule {
            udata: u,
            ..Default::default()
        };
        assert_eq!(nft_rule_network(&r).as_deref(), Some("mynet"));
        // a network name that does not fit is left out, the comment stays
        let u = nft_udata(&"n".repeat(250), "ctr1").unwrap();
        assert_eq!(u.len(), 7);
        assert!(nft_udata("n", &"c".repeat(300)).is_err());
    }
}
