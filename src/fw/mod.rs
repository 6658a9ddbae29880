//! Netfilter: IP masquerade (bridge, ptp) and the bridge MAC spoof check, with the
//! reference's table, chain and comment names so either implementation can remove what
//! the other created.
//!
//! Every change is one batch: `nft -f -` (an atomic transaction) or
//! `iptables-restore --noflush --wait` per family. Finding existing rules costs one
//! read (`nft -j list`, `iptables-save -t nat`). Script building is pure code, tested
//! without root; only [`run`] touches the system. Native nfnetlink is the planned next
//! step; the scripts here are the first one.

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

/// Quote a string for nft's parser.
pub fn nft_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}

/// Rules of one nft chain as (handle, comment), from `nft -j list chain ...`.
/// A missing table or chain is "no rules".
pub fn nft_list_rules(family: &str, table: &str, chain: &str) -> Result<Vec<(u64, String)>> {
    let out = match run("nft", &["-j", "list", "chain", family, table, chain], "") {
        Ok(o) => o,
        Err(e) if e.to_string().contains("No such file or directory") => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    parse_nft_rules(&out)
}

pub fn parse_nft_rules(json: &str) -> Result<Vec<(u64, String)>> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("cannot parse nft's JSON output")?;
    let mut out = Vec::new();
    for item in v
        .get("nftables")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(rule) = item.get("rule") {
            let handle = rule.get("handle").and_then(|h| h.as_u64()).unwrap_or(0);
            let comment = rule
                .get("comment")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string();
            out.push((handle, comment));
        }
    }
    Ok(out)
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
        assert_eq!(nft_quote(r#"a"b"#), r#""ab""#);
    }

    #[test]
    fn nft_json_rules() {
        let j = r#"{"nftables":[{"metainfo":{}},{"chain":{"name":"masq_checks"}},
            {"rule":{"handle":7,"comment":"abc, net: n"}},{"rule":{"handle":9}}]}"#;
        assert_eq!(
            parse_nft_rules(j).unwrap(),
            vec![(7, "abc, net: n".into()), (9, String::new())]
        );
    }
}
