//! IPAM config values shared by host-local and static: routes and requested addresses,
//! checked with located messages. A value that cannot mean anything (a `dst` that is
//! not a CIDR, a requested address that is not an IP) is a config error (code 7) naming
//! the key and the value; a JSON type mismatch stays a decode error (code 6), as for
//! every other key.

use super::range::{config_err, parse_ip};
use crate::cni::decode::get_ci;
use crate::cni::types::{parse_route, Route};
use crate::error::{cni_err, Code};
use anyhow::Result;
use ipnet::IpNet;
use serde_json::Value;
use std::net::IpAddr;

/// The route list at `loc` ("ipam.routes").
pub fn parse_routes(routes: &[Value], loc: &str) -> Result<Vec<Route>> {
    routes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let loc = format!("{loc}[{i}]");
            let o = v.as_object().ok_or_else(|| {
                cni_err(Code::Decode, format!("{loc}: expected an object, got {v}"))
            })?;
            match get_ci(o, "dst") {
                None | Some(Value::Null) => return Err(config_err(&loc, "\"dst\" is missing")),
                Some(Value::String(s)) if s.parse::<IpNet>().is_err() => {
                    return Err(config_err(
                        &loc,
                        format!("\"dst\": {s:?} is not a CIDR (address/prefix length)"),
                    ))
                }
                _ => {}
            }
            if let Some(Value::String(s)) = get_ci(o, "gw") {
                if !s.is_empty() && s.parse::<IpAddr>().is_err() {
                    return Err(config_err(
                        &loc,
                        format!("\"gw\": {s:?} is not an IP address"),
                    ));
                }
            }
            // What is left to fail is a value of the wrong JSON type.
            parse_route(v).map_err(|e| cni_err(Code::Decode, format!("{loc}: {e}")))
        })
        .collect()
}

/// A requested address: "ip" or "ip/len" (a valid CIDR whose prefix is ignored, as
/// Go's `ip.IP` reads it).
pub fn parse_requested(s: &str) -> Option<IpAddr> {
    match s.split_once('/') {
        None => parse_ip(s),
        Some(_) => s.parse::<IpNet>().ok().map(|n| n.addr().to_canonical()),
    }
}

/// The strings of a list-of-strings value at `loc` (code 6 for another JSON type).
pub fn string_list<'a>(v: &'a Value, loc: &str) -> Result<Vec<&'a str>> {
    let bad = || {
        cni_err(
            Code::Decode,
            format!("{loc}: expected a list of strings, got {v}"),
        )
    };
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|x| x.as_str().ok_or_else(bad))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CniError;
    use serde_json::json;

    fn err(v: Value) -> (u32, String) {
        let e = parse_routes(&[json!({"dst": "0.0.0.0/0"}), v], "ipam.routes").unwrap_err();
        let c = CniError::from_anyhow(&e);
        (c.code, c.msg)
    }

    #[test]
    fn routes() {
        let ok = parse_routes(
            &[
                json!({"dst": "10.0.0.0/8", "gw": "10.1.0.1", "mtu": 1400}),
                json!({"DST": "::/0"}),
            ],
            "r",
        )
        .unwrap();
        assert_eq!(ok[0].dst.to_string(), "10.0.0.0/8");
        assert_eq!(ok[0].mtu, 1400);
        assert_eq!(ok[1].dst.to_string(), "::/0");
        assert_eq!(
            err(json!({"dst": "10.0.0.0"})),
            (
                7,
                "ipam.routes[1]: \"dst\": \"10.0.0.0\" is not a CIDR (address/prefix length)"
                    .into()
            )
        );
        assert_eq!(
            err(json!({"gw": "10.0.0.1"})),
            (7, "ipam.routes[1]: \"dst\" is missing".into())
        );
        assert_eq!(
            err(json!({"dst": "0.0.0.0/0", "gw": "10.0.0.256"})),
            (
                7,
                "ipam.routes[1]: \"gw\": \"10.0.0.256\" is not an IP address".into()
            )
        );
        assert_eq!(err(json!({"dst": 5})).0, 6);
        assert_eq!(err(json!({"dst": "0.0.0.0/0", "mtu": "x"})).0, 6);
        assert_eq!(err(json!("0.0.0.0/0")).0, 6);
    }

    #[test]
    fn requested() {
        assert_eq!(
            parse_requested("10.0.0.5/24").unwrap().to_string(),
            "10.0.0.5"
        );
        assert_eq!(parse_requested("fd00::5").unwrap().to_string(), "fd00::5");
        assert_eq!(
            parse_requested("::ffff:10.0.0.5").unwrap().to_string(),
            "10.0.0.5"
        );
        for bad in ["nope", "10.0.0.5/33", "10.0.0.256", "", "10.0.0.5/"] {
            assert!(parse_requested(bad).is_none(), "{bad}");
        }
    }
}
