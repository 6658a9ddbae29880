//! Checks for config values shared by several plugins. Each failure is a code-7 error
//! ("invalid network config") whose message names the key and the offending value, so
//! an operator can fix the config without reading our source.

use crate::error::{cni_err, Code};
use anyhow::Result;
use std::fmt::Display;

/// `"key": value reason` as a code-7 error.
pub fn invalid(key: &str, value: impl Display, reason: impl Display) -> anyhow::Error {
    cni_err(Code::InvalidConfig, format!("{key:?}: {value} {reason}"))
}

/// `mtu`: 0 (keep the kernel's default) or a size the kernel accepts for IP.
pub fn mtu(v: i64) -> Result<u32> {
    if v == 0 {
        return Ok(0);
    }
    match u32::try_from(v) {
        Ok(m) if (68..=65535).contains(&m) => Ok(m),
        _ => Err(invalid(
            "mtu",
            v,
            "is out of range (68..65535, or 0 for the default)",
        )),
    }
}

/// A Linux interface name given in the config (`bridge`, `master`, ...): what the
/// kernel would refuse, refused before anything is created.
pub fn ifname(key: &str, name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > 15 {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is not a valid interface name"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(invalid(key, format!("{name:?}"), why))
}

/// A MAC address from the config, `runtimeConfig` or `args`: 6 hex octets.
pub fn mac(key: &str, s: &str) -> Result<[u8; 6]> {
    crate::netlink::link::parse_mac(s).map_err(|_| {
        invalid(
            key,
            format!("{s:?}"),
            "is not a MAC address (aa:bb:cc:dd:ee:ff)",
        )
    })
}

/// Go's `net.ParseMAC`: 6, 8 or 20 octets as `xx:xx:..`, `xx-xx-..` or `xxxx.xxxx.xxxx`,
/// one separator throughout (tuning's `mac`, host-device's `hwaddr`).
pub fn parse_hwaddr(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let (sep, width) = match (b.get(2), b.get(4)) {
        (Some(b':'), _) => (':', 2),
        (Some(b'-'), _) => ('-', 2),
        (_, Some(b'.')) => ('.', 4),
        _ => return None,
    };
    let mut out = Vec::new();
    for group in s.split(sep) {
        if group.len() != width || !group.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        for i in (0..width).step_by(2) {
            out.push(u8::from_str_radix(group.get(i..i + 2)?, 16).ok()?);
        }
    }
    [6, 8, 20].contains(&out.len()).then_some(out)
}

/// The container MAC a runtime may pass, lowest priority first: `CNI_ARGS MAC`,
/// `args.cni.mac`, `runtimeConfig.mac` (later ones win; empty strings are absent). Every
/// value given is checked with `parse`, not only the winner; a bad `CNI_ARGS` value is a
/// bad environment (code 4, saying it is not `a <what>`), the others bad config (7).
pub fn runtime_mac(
    ctx: &crate::cni::Ctx,
    parse: fn(&str, &str) -> Result<[u8; 6]>,
    what: &str,
) -> Result<Option<[u8; 6]>> {
    let mut mac = None;
    if let Some(m) = ctx.cni_args.get("MAC").filter(|m| !m.is_empty()) {
        let bytes = parse("MAC", m).map_err(|_| {
            cni_err(
                Code::InvalidEnv,
                format!("CNI_ARGS MAC={m:?} is not a {what}"),
            )
        })?;
        mac = Some(bytes);
    }
    for (key, v) in [
        ("args.cni.mac", ctx.args_cni("mac")),
        ("runtimeConfig.mac", ctx.runtime_config("mac")),
    ] {
        match v {
            None => {}
            Some(serde_json::Value::String(m)) if m.is_empty() => {}
            Some(serde_json::Value::String(m)) => mac = Some(parse(key, m)?),
            Some(other) => return Err(invalid(key, other, "is not a MAC address string")),
        }
    }
    Ok(mac)
}

/// `ipMasqBackend`: absent (choose like the reference) or one of the two backends.
pub fn masq_backend(v: Option<&str>) -> Result<()> {
    match v {
        None | Some("iptables") | Some("nftables") => Ok(()),
        Some(other) => Err(invalid(
            "ipMasqBackend",
            format!("{other:?}"),
            "is not a backend (\"iptables\" or \"nftables\")",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CniError;

    fn code_msg(e: anyhow::Error) -> (u32, String) {
        let c = CniError::from_anyhow(&e);
        (c.code, c.msg)
    }

    #[test]
    fn mtu_bounds() {
        assert_eq!(mtu(0).unwrap(), 0);
        assert_eq!(mtu(68).unwrap(), 68);
        assert_eq!(mtu(65535).unwrap(), 65535);
        for bad in [-5, 1, 67, 65536, i64::MAX] {
            let (code, msg) = code_msg(mtu(bad).unwrap_err());
            assert_eq!(code, 7);
            assert!(
                msg.contains("\"mtu\"") && msg.contains(&bad.to_string()),
                "{msg}"
            );
        }
    }

    #[test]
    fn interface_names() {
        ifname("bridge", "cni0").unwrap();
        ifname("bridge", "a23456789012345").unwrap();
        for bad in ["", "a234567890123456", "a/b", "a:b", "a b", ".", ".."] {
            let (code, msg) = code_msg(ifname("bridge", bad).unwrap_err());
            assert_eq!(code, 7, "{bad}");
            assert!(msg.starts_with("\"bridge\""), "{msg}");
        }
    }

    #[test]
    fn macs_and_backends() {
        assert_eq!(mac("mac", "0a:58:0a:00:00:01").unwrap()[5], 1);
        let (code, msg) = code_msg(mac("mac", "zz:zz").unwrap_err());
        assert_eq!(code, 7);
        assert!(msg.contains("zz:zz"), "{msg}");
        masq_backend(None).unwrap();
        masq_backend(Some("nftables")).unwrap();
        let (code, msg) = code_msg(masq_backend(Some("pf")).unwrap_err());
        assert_eq!(code, 7);
        assert!(msg.contains("ipMasqBackend") && msg.contains("pf"), "{msg}");
    }
}
