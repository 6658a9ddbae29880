//! Running a delegate plugin (IPAM) the way the reference's `invoke` package does: find
//! `type` in `CNI_PATH`, pass our full environment with `CNI_COMMAND` overridden and our
//! stdin byte for byte, read a result or an error object (its code is kept).
//!
//! When the plugin found in `CNI_PATH` is this very binary and names one of our applets,
//! it runs in-process instead of being exec'd: through the same harness entry point with
//! the same environment and stdin, so its checks, its output and its errors are exactly
//! what an exec would produce, minus a fork/exec and a process start.

use crate::cni::skel::{self, Command, Ctx, Env, Kind};
use crate::cni::types::CniResult;
use crate::error::{CniError, Code};
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

/// Where `name` lives in `CNI_PATH`: the first regular file (symlinks followed).
pub fn find_in_path(name: &str, cni_path: &str) -> Result<PathBuf> {
    if name.is_empty() {
        bail!("no plugin name provided");
    }
    if name.contains('/') {
        bail!("invalid plugin name: {name}");
    }
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    if dirs.is_empty() {
        bail!("CNI_PATH is not set: cannot find plugin {name:?}");
    }
    for d in &dirs {
        let p = PathBuf::from(d).join(name);
        if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            return Ok(p);
        }
    }
    bail!("failed to find plugin {name:?} in path {dirs:?}")
}

/// The raw outcome of running a delegate.
struct Output {
    exit_ok: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

struct OverrideEnv(Command);

impl Env for OverrideEnv {
    fn var(&self, name: &str) -> String {
        if name == "CNI_COMMAND" {
            self.0.as_str().to_string()
        } else {
            std::env::var(name).unwrap_or_default()
        }
    }
}

fn is_self(path: &PathBuf) -> bool {
    match (
        std::fs::canonicalize(path),
        std::fs::canonicalize("/proc/self/exe"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn run_delegate(ctx: &Ctx, name: &str, cmd: Command) -> Result<Output> {
    let path = find_in_path(name, &ctx.path)?;
    if std::env::var_os("CNIBOX_NO_INPROCESS").is_none() && is_self(&path) {
        if let Some(Kind::Plugin(p)) = skel::find_applet(name).map(|a| &a.kind) {
            let out = skel::run(name, p, &OverrideEnv(cmd), &mut ctx.stdin.as_slice());
            return Ok(Output {
                exit_ok: out.exit == 0,
                stdout: out.stdout,
                stderr: out.stderr,
            });
        }
    }
    exec(&path, ctx, cmd)
}

fn exec(path: &PathBuf, ctx: &Ctx, cmd: Command) -> Result<Output> {
    let mut tries = 0;
    loop {
        let child = std::process::Command::new(path)
            .env("CNI_COMMAND", cmd.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            // A runtime may be replacing the binary; the reference retries too.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to run plugin {}", path.display()))
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading its stdin is not our error.
            let _ = stdin.write_all(&ctx.stdin);
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("failed to wait for plugin {}", path.display()))?;
        return Ok(Output {
            exit_ok: out.status.success(),
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
}

/// Run `name` for `cmd`; on failure return its error object unchanged.
fn call(ctx: &Ctx, name: &str, cmd: Command) -> Result<Vec<u8>> {
    let out = run_delegate(ctx, name, cmd)?;
    // The delegate's diagnostics belong to the runtime's log, as with the reference.
    let _ = std::io::stderr().write_all(&out.stderr);
    if out.exit_ok {
        return Ok(out.stdout);
    }
    if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(anyhow!(CniError::new(
            Code::Internal,
            format!("netplugin failed: {msg:?}")
        )));
    }
    match serde_json::from_slice::<CniError>(&out.stdout) {
        Ok(e) => Err(anyhow!(e)),
        Err(_) => Err(anyhow!(CniError::new(
            Code::Internal,
            format!(
                "netplugin failed but error parsing its diagnostic message {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        ))),
    }
}

/// IPAM ADD: the delegate's result in the 1.x model.
pub fn add(ctx: &Ctx, name: &str) -> Result<CniResult> {
    let stdout = call(ctx, name, Command::Add)?;
    let v: serde_json::Value = serde_json::from_slice(&stdout)
        .map_err(|e| anyhow!("failed to parse the result of IPAM plugin {name:?}: {e}"))?;
    CniResult::parse_any(&v, ctx.version())
        .with_context(|| format!("invalid result from IPAM plugin {name:?}"))
}

pub fn del(ctx: &Ctx, name: &str) -> Result<()> {
    call(ctx, name, Command::Del).map(|_| ())
}

pub fn check(ctx: &Ctx, name: &str) -> Result<()> {
    call(ctx, name, Command::Check).map(|_| ())
}

pub fn status(ctx: &Ctx, name: &str) -> Result<()> {
    call(ctx, name, Command::Status).map(|_| ())
}

pub fn gc(ctx: &Ctx, name: &str) -> Result<()> {
    call(ctx, name, Command::Gc).map(|_| ())
}
