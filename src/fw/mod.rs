//! Netfilter: IP masquerade (bridge, ptp) and the bridge MAC spoof check, with the
//! reference's table, chain and comment names so either implementation can remove what
//! the other created.
//!
//! Every change is one batch: an nf_tables transaction sent natively over nfnetlink
//! (`crate::netlink::nftables`, no `nft` process), or one
//! `iptables-restore --noflush --wait` per family. Finding existing rules costs one read
//! (an nf_tables rule dump, or `iptables-save -t nat`). The iptables scripts are pure
//! code, tested without root; only [`run`] executes tools.

pub mod ipmasq;
pub mod spoofcheck;

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha512};
use std::io::Write;
use std::process::{Command, Stdio};

/// Lower-case hex of sha512(`s`), cut to `len` characters, after `prefix`; the
/// reference's `MustFormatHashWithPrefix`.
pub fn hash_with_prefix(len: usize, prefix: &str, s: &str) -> String {
    let digest = Sha512::digest(s.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = format!("{prefix}{hex}");
    out.truncate(len);
    out
}

/// Go's `%q` for the plain strings CNI names can hold: quotes and backslashes escaped.
pub fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Is `prog` on PATH?
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Run `prog args` with `input` on stdin; stdout on success, a readable error otherwise.
pub fn run(prog: &str, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run {prog}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("failed to write to {prog}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("failed to wait for {prog}"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{prog} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            if input.is_empty() {
                String::new()
            } else {
                format!("\ninput was:\n{input}")
            }
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_reference() {
        // Values from the reference notes (network "mynet", container "abc").
        assert_eq!(
            hash_with_prefix(28, "CNI-", "mynetabc"),
            "CNI-e88f49d94512ff752ebe6070"
        );
        assert_eq!(
            hash_with_prefix(28, "CNI-", "invtnetinvtc1"),
            "CNI-8434cd1f2f7d9314ff003912"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(go_quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
