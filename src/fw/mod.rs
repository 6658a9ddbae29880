//! Netfilter: IP masquerade (bridge, ptp) and the bridge MAC spoof check, with the
//! reference's table, chain and comment names so either implementation can remove what
//! the other created.
//!
//! Every change is one batch: an nf_tables transaction sent natively over nfnetlink
//! (`crate::netlink::nftables`, no `nft` process), or one
//! `iptables-restore --noflush --wait 5` per family. Finding existing rules costs one
//! read (an nf_tables rule dump, or `iptables-save -t nat`). The iptables scripts are
//! pure code, tested without root; only [`run`] executes tools, and nothing waits
//! forever: the xtables lock for [`XTABLES_WAIT_SECS`], a tool for [`EXEC_DEADLINE`],
//! the kernel for [`crate::netlink::RECV_TIMEOUT`]; past that, CNI code 11.

pub mod firewall;
pub mod ipmasq;
pub mod portmap;
pub mod spoofcheck;

use crate::error::{cni_err, Code};
use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha512};
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// How long `iptables-restore` waits for the xtables lock (`--wait <seconds>`) before
/// giving up. The legacy iptables serialise on that lock (`/run/xtables.lock`, or
/// `$XTABLES_LOCKFILE`, which the child inherits from us); a program holding it longer
/// than this is stuck or very busy, and the ADD fails with code 11 (try again later)
/// naming the lock, instead of waiting forever as `--wait` alone would.
pub const XTABLES_WAIT_SECS: u64 = 5;

/// The most one run of an iptables tool may take, lock wait included; a child still
/// running then is killed and the call fails with code 11.
pub const EXEC_DEADLINE: Duration = Duration::from_secs(XTABLES_WAIT_SECS + 5);

/// The lock file the xtables tools use (the variable is theirs).
pub fn xtables_lock() -> String {
    std::env::var("XTABLES_LOCKFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/run/xtables.lock".to_string())
}

/// Run `prog args` with `input` on stdin, bounded by [`EXEC_DEADLINE`]; stdout on
/// success, a readable error otherwise.
pub fn run(prog: &str, args: &[&str], input: &str) -> Result<String> {
    run_until(prog, args, input, EXEC_DEADLINE)
}

/// [`run`] with an explicit time limit.
pub fn run_until(prog: &str, args: &[&str], input: &str, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    let cmdline = std::iter::once(prog)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run {prog}"))?;
    // The pipes are served by threads, so a child blocked on one of them cannot keep
    // us past the deadline (and a big script cannot deadlock against a full stdout).
    let writer = child.stdin.take().map(|mut pipe| {
        let input = input.as_bytes().to_vec();
        std::thread::spawn(move || pipe.write_all(&input))
    });
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let timed_out = || {
        cni_err(
            Code::TryAgainLater,
            format!(
                "{cmdline} did not finish within {}s and was killed",
                limit.as_secs_f32()
            ),
        )
    };
    let status = match wait_until(&mut child, deadline)
        .with_context(|| format!("failed to wait for {prog}"))?
    {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        }
    };
    // A child that exited but left its output open (to a process it started) is cut off
    // at the deadline too.
    let left = || deadline.saturating_duration_since(Instant::now());
    let out = stdout.recv_timeout(left()).map_err(|_| timed_out())?;
    let err = stderr.recv_timeout(left()).map_err(|_| timed_out())?;
    let err = String::from_utf8_lossy(&err);
    if !status.success() {
        // legacy iptables: "Another app is currently holding the xtables lock. Stopped
        // waiting after 5s." (exit status 4)
        if err.contains("xtables lock") {
            return Err(cni_err(
                Code::TryAgainLater,
                format!(
                    "{cmdline}: the xtables lock {} was held by another program for more than {XTABLES_WAIT_SECS}s",
                    xtables_lock()
                ),
            ));
        }
        return Err(anyhow!(
            "{cmdline} failed: {}{}",
            err.trim(),
            if input.is_empty() {
                String::new()
            } else {
                format!("\ninput was:\n{input}")
            }
        ));
    }
    if let Some(Ok(Err(e))) = writer.map(|w| w.join()) {
        return Err(anyhow!("failed to write to {prog}: {e}"));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Read a pipe to its end on a thread; the bytes arrive on the returned channel.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    match pipe {
        Some(mut p) => {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = p.read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
        }
        None => {
            let _ = tx.send(Vec::new());
        }
    }
    rx
}

/// Wait for `child` until `deadline`: its status, or `None` if it is still running.
/// Polls with short naps that grow from 100 us to 5 ms, so a quick tool is noticed
/// within a fraction of its own run time (no pidfd: that would need unsafe code).
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut nap = Duration::from_micros(100);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(nap.min(left));
        nap = (nap * 2).min(Duration::from_millis(5));
    }
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

    #[test]
    fn a_hanging_child_is_killed_at_the_deadline() {
        let t = Instant::now();
        let e = run_until("sleep", &["30"], "", Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let c = crate::error::CniError::from_anyhow(&e.context("bridge ADD"));
        assert_eq!(c.code, 11);
        assert_eq!(
            c.msg,
            "bridge ADD: sleep 30 did not finish within 0.2s and was killed"
        );
        // exited, but a process it left behind holds the output open
        let t = Instant::now();
        let e = run_until("sh", &["-c", "sleep 30 &"], "", Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(
            crate::error::CniError::from_anyhow(&e.unwrap_err()).code,
            11
        );
    }

    #[test]
    fn output_input_and_failures() {
        let big = "x".repeat(300_000); // more than a pipe holds, both ways
        assert_eq!(run("cat", &[], &big).unwrap().len(), big.len());
        let e = run("sh", &["-c", "echo nope >&2; exit 3"], "in").unwrap_err();
        assert_eq!(
            format!("{e}"),
            "sh -c echo nope >&2; exit 3 failed: nope\ninput was:\nin"
        );
        assert_eq!(crate::error::CniError::from_anyhow(&e).code, 999);
        let e = run(
            "sh",
            &[
                "-c",
                "echo 'Another app is currently holding the xtables lock.' >&2; exit 4",
            ],
            "",
        );
        let c = crate::error::CniError::from_anyhow(&e.unwrap_err());
        assert_eq!(c.code, 11);
        assert!(c.msg.contains("the xtables lock /"), "{}", c.msg);
    }
}
