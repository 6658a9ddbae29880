//! The dhcp IPAM plugin's shared parts: its config, the options a lease asks for and
//! provides, and the CNI result built from a DHCPACK. The plugin (applets/dhcp.rs) talks
//! to the daemon ([`daemon`]) over Go's net/rpc ([`rpc`], [`gob`]); the daemon runs one
//! [`client`] per lease.

pub mod client;
pub mod daemon;
pub mod gob;
pub mod rpc;

use crate::cni::decode;
use crate::cni::types::{CniResult, Dns, IpConfig, Route};
use crate::error::{cni_err, Code};
use anyhow::{anyhow, Result};
use client::{ClientOptions, Lease};
use dhcproto::v4::{DhcpOption, OptionCode};
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};

pub const DEFAULT_SOCKET_PATH: &str = "/run/cni/dhcp.sock";
/// Longest client-id (option 61 has a one-byte length; the reference cuts at 254).
const MAX_CLIENT_ID: usize = 254;
/// `netlink.SCOPE_LINK`, for classless routes without a router.
const SCOPE_LINK: i64 = 253;

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(default)]
pub struct Provide {
    pub option: String,
    pub value: String,
    #[serde(rename = "fromArg")]
    pub from_arg: String,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(default)]
pub struct Request {
    #[serde(rename = "skipDefault")]
    pub skip_default: bool,
    pub option: String,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(default)]
pub struct Ipam {
    #[serde(rename = "daemonSocketPath")]
    pub daemon_socket_path: String,
    pub provide: Vec<Provide>,
    pub request: Vec<Request>,
    pub priority: i64,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(default)]
pub struct Conf {
    pub name: String,
    pub ipam: Option<Ipam>,
}

impl Conf {
    /// Decode a config with Go's rules (case-insensitive keys; a wrong type is code 6).
    pub fn parse(stdin: &[u8]) -> Result<Conf> {
        let v: serde_json::Value = serde_json::from_slice(stdin)
            .map_err(|e| cni_err(Code::Decode, format!("error parsing netconf: {e}")))?;
        decode::from_value(v)
            .map_err(|e| cni_err(Code::Decode, format!("error parsing netconf: {e}")))
    }

    pub fn ipam(&self) -> Ipam {
        self.ipam.clone().unwrap_or_default()
    }

    pub fn socket_path(&self) -> String {
        let p = self.ipam().daemon_socket_path;
        if p.is_empty() {
            DEFAULT_SOCKET_PATH.to_string()
        } else {
            p
        }
    }
}

/// The reference's default client-id: `<containerID>/<network>/<ifname>`, cut at 254.
pub fn client_id(container_id: &str, net: &str, ifname: &str) -> String {
    let mut id = format!("{container_id}/{net}/{ifname}");
    if id.len() > MAX_CLIENT_ID {
        let mut cut = MAX_CLIENT_ID;
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        id.truncate(cut);
    }
    id
}

/// An option by its dhcp-options(5) name or its number 0..=255.
pub fn option_code(key: &str, name: &str) -> Result<u8> {
    let known = match name {
        "dhcp-client-identifier" => Some(61),
        "subnet-mask" => Some(1),
        "routers" => Some(3),
        "host-name" => Some(12),
        "user-class" => Some(77),
        "vendor-class-identifier" => Some(60),
        _ => None,
    };
    known.or_else(|| name.parse::<u8>().ok()).ok_or_else(|| {
        cni_err(
            Code::InvalidConfig,
            format!("{key}: Can not parse option {name:?}: not an option name or a number 0..255"),
        )
    })
}

/// The reference's default parameter request list.
const REQUEST_DEFAULT: [u8; 2] = [3, 1];
/// What we additionally ask for so the result can carry them: DNS servers, domain, and
/// both kinds of static routes.
const REQUEST_ALWAYS: [u8; 4] = [6, 15, 121, 33];

/// The options one lease sends. Errors are code 7 and name the entry.
pub fn client_options(
    conf: &Conf,
    container_id: &str,
    ifname: &str,
    cni_args: &str,
) -> Result<ClientOptions> {
    let ipam = conf.ipam();
    let args: Vec<(String, String)> = crate::cni::args::parse_lenient(cni_args);
    let mut provide = Vec::new();
    for (i, p) in ipam.provide.iter().enumerate() {
        let key = format!("ipam.provide[{i}]");
        let code = option_code(&key, &p.option)?;
        let too_long = |v: &str, from: &str| {
            cni_err(
                Code::InvalidConfig,
                format!(
                    "{key}: value too long for option {:?}{from}: {} bytes (at most 255)",
                    p.option,
                    v.len()
                ),
            )
        };
        if !p.value.is_empty() {
            if p.value.len() > 255 {
                return Err(too_long(&p.value, ""));
            }
            provide.push((code, p.value.as_bytes().to_vec()));
        }
        if let Some((_, v)) = args.iter().find(|(k, _)| *k == p.from_arg) {
            if v.len() > 255 {
                return Err(too_long(v, &format!(" from CNI_ARGS {:?}", p.from_arg)));
            }
            provide.push((code, v.as_bytes().to_vec()));
        }
    }
    let mut request: Vec<u8> = Vec::new();
    let mut skip_default = false;
    for (i, r) in ipam.request.iter().enumerate() {
        skip_default |= r.skip_default;
        if r.option.is_empty() {
            continue;
        }
        let code = option_code(&format!("ipam.request[{i}]"), &r.option)?;
        if !request.contains(&code) {
            request.push(code);
        }
    }
    let defaults: &[u8] = if skip_default { &[] } else { &REQUEST_DEFAULT };
    for c in defaults.iter().chain(REQUEST_ALWAYS.iter()) {
        if !request.contains(c) {
            request.push(*c);
        }
    }
    // client-id (61): type 0 then the id, as the reference sends it.
    let mut client_id_opt = vec![0u8];
    client_id_opt.extend_from_slice(client_id(container_id, &conf.name, ifname).as_bytes());
    Ok(ClientOptions {
        client_id: client_id_opt,
        request,
        provide,
    })
}

fn ipv4s(lease: &Lease, code: OptionCode) -> Vec<Ipv4Addr> {
    match lease.ack.opts().get(code) {
        Some(DhcpOption::Router(v)) | Some(DhcpOption::DomainNameServer(v)) => v.clone(),
        _ => Vec::new(),
    }
}

/// A classful network's default prefix, as Go's `IP.DefaultMask`.
fn classful(ip: Ipv4Addr) -> u8 {
    match ip.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// The CNI result of a lease: address and gateway, routes (121, else 33 plus a default
/// route via the router), DNS servers and domain, route priority from the config.
pub fn result_of(lease: &Lease, priority: i64) -> Result<CniResult> {
    let mask = match lease.ack.opts().get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        _ => return Err(anyhow!("DHCP option Subnet Mask not found in DHCPACK")),
    };
    let prefix = mask.to_bits().leading_ones() as u8;
    let address = IpNet::new(IpAddr::V4(lease.yiaddr()), prefix)?;
    let gateway = ipv4s(lease, OptionCode::Router).first().copied();
    let mut routes = Vec::new();
    match lease.ack.opts().get(OptionCode::ClasslessStaticRoute) {
        Some(DhcpOption::ClasslessStaticRoute(list)) if !list.is_empty() => {
            for (net, router) in list {
                let mut r = Route::new(IpNet::V4(*net), None);
                if router.is_unspecified() {
                    r.scope = Some(SCOPE_LINK);
                } else {
                    r.gw = Some(IpAddr::V4(*router));
                }
                routes.push(r);
            }
        }
        _ => {
            if let Some(DhcpOption::StaticRoutingTable(list)) =
                lease.ack.opts().get(OptionCode::StaticRoutingTable)
            {
                for (dst, router) in list {
                    let net = Ipv4Net::new(*dst, classful(*dst))?;
                    routes.push(Route::new(IpNet::V4(net), Some(IpAddr::V4(*router))));
                }
            }
            if let Some(gw) = gateway {
                routes.push(Route::new(
                    IpNet::V4(Ipv4Net::default()),
                    Some(IpAddr::V4(gw)),
                ));
            }
        }
    }
    if priority != 0 {
        for r in &mut routes {
            r.priority = priority;
        }
    }
    let domain = match lease.ack.opts().get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) => d.clone(),
        _ => String::new(),
    };
    Ok(CniResult {
        cni_version: crate::cni::types::CURRENT_VERSION.to_string(),
        interfaces: vec![],
        ips: vec![IpConfig {
            interface: None,
            address,
            gateway: gateway.map(IpAddr::V4),
        }],
        routes,
        dns: Dns {
            nameservers: ipv4s(lease, OptionCode::DomainNameServer)
                .iter()
                .map(|a| a.to_string())
                .collect(),
            domain,
            ..Default::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_cut_at_254_bytes() {
        let long = "c".repeat(300);
        assert_eq!(client_id(&long, "net", "eth0").len(), 254);
        assert_eq!(client_id("ctr", "net", "eth0"), "ctr/net/eth0");
    }

    fn ack(opts: Vec<DhcpOption>) -> Lease {
        let mut m = dhcproto::v4::Message::default();
        m.set_yiaddr(Ipv4Addr::new(10, 1, 2, 3));
        for o in opts {
            m.opts_mut().insert(o);
        }
        Lease {
            ack: m,
            acquired: 0,
        }
    }

    #[test]
    fn classless_routes_win_and_an_on_link_route_gets_link_scope() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let gw = Ipv4Addr::new(10, 1, 2, 1);
        let l = ack(vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![gw]),
            DhcpOption::ClasslessStaticRoute(vec![
                (net("10.9.0.0/16"), Ipv4Addr::UNSPECIFIED),
                (net("0.0.0.0/0"), gw),
            ]),
            DhcpOption::StaticRoutingTable(vec![(Ipv4Addr::new(192, 168, 1, 0), gw)]),
        ]);
        let r = result_of(&l, 5).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.2.3/24");
        assert_eq!(r.routes.len(), 2, "option 33 and the router ignored: {r:?}");
        assert_eq!(r.routes[0].scope, Some(SCOPE_LINK));
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.routes[1].gw, Some(IpAddr::V4(gw)));
        assert!(r.routes.iter().all(|x| x.priority == 5));
    }

    #[test]
    fn no_subnet_mask_is_an_error() {
        let e = result_of(&ack(vec![]), 0).unwrap_err();
        assert!(e.to_string().contains("Subnet Mask not found"));
    }

    #[test]
    fn option_names_and_numbers() {
        assert_eq!(option_code("k", "host-name").unwrap(), 12);
        assert_eq!(option_code("k", "200").unwrap(), 200);
        for bad in ["256", "-1", "hostname", ""] {
            let e = option_code("k", bad).unwrap_err();
            assert_eq!(crate::error::code_of(&e), Some(7), "{bad}");
        }
    }
}
