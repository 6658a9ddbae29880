//! `/proc/sys` access. Values under `net/` follow the calling thread's network
//! namespace, so container sysctls are written inside [`crate::netns::Netns::run`].

use anyhow::{Context, Result};

fn path(key: &str) -> String {
    // Accept both "net.ipv4.ip_forward" and "net/ipv4/ip_forward"; a dotted key's
    // interface part may itself contain dots only in the slash form.
    if key.contains('/') {
        format!("/proc/sys/{key}")
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    }
}

pub fn get(key: &str) -> Result<String> {
    let p = path(key);
    let s = std::fs::read_to_string(&p).with_context(|| format!("failed to read sysctl {p}"))?;
    Ok(s.trim().to_string())
}

pub fn set(key: &str, value: &str) -> Result<()> {
    let p = path(key);
    std::fs::write(&p, value).with_context(|| format!("failed to set sysctl {p} to {value}"))
}

/// Write only if different (forwarding switches are global and often already on).
pub fn ensure(key: &str, value: &str) -> Result<()> {
    if get(key).ok().as_deref() == Some(value) {
        return Ok(());
    }
    set(key, value)
}
