//! Running a delegate plugin (IPAM) the way the reference's `invoke` package does: find
//! `type` in `CNI_PATH`, pass our full environment with `CNI_COMMAND` overridden and our
//! stdin byte for byte, read a result or an error object (its code is kept).
//!
//! When the plugin found in `CNI_PATH` is this very binary and names one of our applets,
//! it runs in-process instead of being exec'd: through the same harness entry point with
//! the same environment and stdin, so its checks, its output and its errors are exactly
//! what an exec would produce, minus a fork/exec and a process start.
//!
//! Meta plugins (flannel, multinet) delegate whole attachments the same way, with their
//! own config and interface name ([`Attachment`]). Every delegate sees the `CNI_*`
//! variables of the call it serves (its [`Ctx`]), not the process's: an IPAM plugin run
//! for a meta plugin's second interface must reserve under that interface's name.

use crate::cni::skel::{self, Command, Ctx, Env, Kind};
use crate::cni::types::CniResult;
use crate::cni::value;
use crate::error::{cni_err, CniError, Code};
use anyhow::{anyhow, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Where `name` lives in `CNI_PATH`: the first regular file (symlinks followed).
/// A name with a path in it, or one found nowhere, is a config error (code 7: the
/// config names a plugin this node does not have); no `CNI_PATH` at all is a bad
/// environment (code 4).
pub fn find_in_path(name: &str, cni_path: &str) -> Result<PathBuf> {
    if name.is_empty() {
        return Err(cni_err(Code::InvalidConfig, "no plugin name provided"));
    }
    if name.contains('/') {
        return Err(value::invalid(
            "type",
            format!("{name:?}"),
            "is not a plugin name (it must not contain '/')",
        ));
    }
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    if dirs.is_empty() {
        return Err(cni_err(
            Code::InvalidEnv,
            format!("CNI_PATH is not set: cannot find plugin {name:?}"),
        ));
    }
    for d in &dirs {
        let p = PathBuf::from(d).join(name);
        if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            return Ok(p);
        }
    }
    Err(cni_err(
        Code::InvalidConfig,
        format!("failed to find plugin {name:?} in path {dirs:?}"),
    ))
}

/// Before an ADD changes anything: the IPAM plugin the config names must exist, so a
/// typo in `ipam.type` fails with nothing created.
pub fn ensure_available(ctx: &Ctx, name: &str) -> Result<()> {
    find_in_path(name, &ctx.path)
        .map(|_| ())
        .context("IPAM plugin (\"ipam\": {\"type\": ...})")
}

/// How long a delegate plugin may run before we give up (code 11) and kill it. Long
/// enough for a DHCP exchange with retries (the dhcp plugin's own waits reach tens of
/// seconds); override with `CNIBOX_DELEGATE_TIMEOUT` (seconds).
pub const DELEGATE_TIMEOUT: Duration = Duration::from_secs(60);

fn delegate_timeout() -> Duration {
    std::env::var("CNIBOX_DELEGATE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DELEGATE_TIMEOUT)
}

/// The raw outcome of running a delegate.
struct Output {
    exit_ok: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// The environment a delegate sees: the call's `CNI_*` values (from its [`Ctx`]) with
/// the command overridden; everything else from our process.
struct DelegateEnv<'a> {
    ctx: &'a Ctx,
    cmd: Command,
}

impl DelegateEnv<'_> {
    /// The five attachment variables, `None` for any other name.
    fn cni_var(&self, name: &str) -> Option<&str> {
        Some(match name {
            "CNI_CONTAINERID" => &self.ctx.container_id,
            "CNI_NETNS" => &self.ctx.netns,
            "CNI_IFNAME" => &self.ctx.ifname,
            "CNI_ARGS" => &self.ctx.args,
            "CNI_PATH" => &self.ctx.path,
            _ => return None,
        })
    }
}

const CNI_VARS: [&str; 5] = [
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

impl Env for DelegateEnv<'_> {
    fn var(&self, name: &str) -> String {
        if name == "CNI_COMMAND" {
            return self.cmd.as_str().to_string();
        }
        match self.cni_var(name) {
            Some(v) => v.to_string(),
            None => std::env::var(name).unwrap_or_default(),
        }
    }
}

/// True if `path` is this very binary (a cnibox symlink or copy of the same file).
fn is_self(path: &Path) -> bool {
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
            let env = DelegateEnv { ctx, cmd };
            let out = skel::run(name, p, &env, &mut ctx.stdin.as_slice());
            return Ok(Output {
                exit_ok: out.exit == 0,
                stdout: out.stdout,
                stderr: out.stderr,
            });
        }
    }
    exec(&path, ctx, cmd)
}

fn exec(path: &Path, ctx: &Ctx, cmd: Command) -> Result<Output> {
    let env = DelegateEnv { ctx, cmd };
    let mut tries = 0;
    let mut child = loop {
        let mut command = std::process::Command::new(path);
        command.env("CNI_COMMAND", cmd.as_str());
        for var in CNI_VARS {
            match env.cni_var(var) {
                Some(v) if !v.is_empty() => command.env(var, v),
                _ => command.env_remove(var),
            };
        }
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Ok(c) => break c,
            // A runtime may be replacing the binary; the reference retries too.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to run plugin {}", path.display()))
            }
        }
    };
    let stdin = child.stdin.take();
    let input = ctx.stdin.clone();
    // Feed stdin and drain both pipes on their own threads, so a plugin that writes a
    // lot before reading cannot deadlock us, and the wait below can have a deadline.
    let feeder = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            // A plugin that exits without reading its stdin is not our error.
            let _ = s.write_all(&input);
        }
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_t = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let limit = delegate_timeout();
    let deadline = Instant::now() + limit;
    let mut nap = Duration::from_micros(200);
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .with_context(|| format!("failed to wait for plugin {}", path.display()))?
        {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The pipe threads may still be held open by the plugin's own children:
            // leave them, the process ends soon after this error anyway.
            return Err(cni_err(
                Code::TryAgainLater,
                format!(
                    "plugin {} ({}) did not finish within {:?}; killed it",
                    path.display(),
                    cmd.as_str(),
                    limit
                ),
            ));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    let _ = feeder.join();
    Ok(Output {
        exit_ok: status.success(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
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

/// One attachment run by a meta plugin: plugin `plugin` with config `config` on interface
/// `ifname`, for the same container, netns and `CNI_ARGS` as the meta plugin's call.
/// `path` is the `CNI_PATH` the delegate is looked up in and sees.
pub struct Attachment<'a> {
    pub plugin: &'a str,
    pub config: Vec<u8>,
    pub ifname: &'a str,
    pub path: &'a str,
}

impl Attachment<'_> {
    fn ctx(&self, parent: &Ctx, cmd: Command) -> Ctx {
        let mut c = parent.for_delegate(cmd, self.plugin);
        c.ifname = self.ifname.to_string();
        c.path = self.path.to_string();
        c.stdin = self.config.clone();
        c
    }

    /// The delegate's version for parsing a result without its own `cniVersion`.
    fn version(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.config)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "0.1.0".to_string())
    }

    /// ADD: the delegate's result in the 1.x model.
    pub fn add(&self, parent: &Ctx) -> Result<CniResult> {
        let stdout = call(&self.ctx(parent, Command::Add), self.plugin, Command::Add)?;
        let v: serde_json::Value = serde_json::from_slice(&stdout).map_err(|e| {
            anyhow!(
                "failed to parse the result of plugin {:?}: {e}",
                self.plugin
            )
        })?;
        CniResult::parse_any(&v, &self.version())
            .with_context(|| format!("invalid result from plugin {:?}", self.plugin))
    }

    pub fn run(&self, parent: &Ctx, cmd: Command) -> Result<()> {
        call(&self.ctx(parent, cmd), self.plugin, cmd).map(|_| ())
    }
}
