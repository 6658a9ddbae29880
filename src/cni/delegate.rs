//! Running another plugin the way the reference's `invoke` package does: find `type` in
//! `CNI_PATH`, pass our environment with the `CNI_*` variables of the call (a delegate
//! gets ours with `CNI_COMMAND` overridden) and stdin byte for byte, read a result or an
//! error object (its code is kept). Used for IPAM delegation and by [`crate::libcni`].
//!
//! When the plugin found in `CNI_PATH` is this very binary and names one of our applets,
//! it runs in-process instead of being exec'd: through the same harness entry point with
//! the same environment and stdin, so its checks, its output and its errors are exactly
//! what an exec would produce, minus a fork/exec and a process start.
//!
//! Meta plugins (flannel) delegate a whole attachment with their own config
//! ([`Attachment`]): the same invocation with another stdin, interface and `CNI_PATH`.

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

/// One plugin invocation as a runtime makes it: the `CNI_*` environment (every other
/// variable is inherited from this process, as the reference's `invoke` does) and stdin.
/// A plugin delegating to IPAM passes on its own values ([`Invocation::from_ctx`]); a
/// runtime (libcni) builds them from its runtime config.
#[derive(Clone, Copy, Debug)]
pub struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    /// `CNI_ARGS`, already joined (`K=V;K2=V2`).
    pub args: &'a str,
    /// `CNI_PATH`, colon-separated.
    pub path: &'a str,
    pub stdin: &'a [u8],
}

impl<'a> Invocation<'a> {
    /// The call a plugin makes to its delegate: its own environment and stdin, with
    /// only the command changed.
    pub fn from_ctx(ctx: &'a Ctx, command: Command) -> Invocation<'a> {
        Invocation {
            command,
            container_id: &ctx.container_id,
            netns: &ctx.netns,
            ifname: &ctx.ifname,
            args: &ctx.args,
            path: &ctx.path,
            stdin: &ctx.stdin,
        }
    }

    /// The `CNI_*` variables this invocation sets, in the order the reference sets them.
    fn cni_env(&self) -> [(&'static str, &str); 6] {
        [
            ("CNI_COMMAND", self.command.as_str()),
            ("CNI_CONTAINERID", self.container_id),
            ("CNI_NETNS", self.netns),
            ("CNI_ARGS", self.args),
            ("CNI_IFNAME", self.ifname),
            ("CNI_PATH", self.path),
        ]
    }
}

/// An in-process run sees the invocation's `CNI_*` values and this process's other
/// variables, exactly what an exec'd plugin would see.
struct InvocationEnv<'a>(&'a Invocation<'a>);

impl Env for InvocationEnv<'_> {
    fn var(&self, name: &str) -> String {
        match self.0.cni_env().iter().find(|(k, _)| *k == name) {
            Some((_, v)) => v.to_string(),
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

fn run_plugin(name: &str, inv: &Invocation) -> Result<Output> {
    let path = find_in_path(name, inv.path)?;
    if std::env::var_os("CNIBOX_NO_INPROCESS").is_none() && is_self(&path) {
        if let Some(Kind::Plugin(p)) = skel::find_applet(name).map(|a| &a.kind) {
            let out = skel::run(name, p, &InvocationEnv(inv), &mut &inv.stdin[..]);
            return Ok(Output {
                exit_ok: out.exit == 0,
                stdout: out.stdout,
                stderr: out.stderr,
            });
        }
    }
    exec(&path, inv)
}

fn exec(path: &Path, inv: &Invocation) -> Result<Output> {
    let cmd = inv.command;
    let mut tries = 0;
    let mut child = loop {
        let child = std::process::Command::new(path)
            .envs(inv.cni_env())
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
    let input = inv.stdin.to_vec();
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

/// Run plugin `name` (found in the invocation's `CNI_PATH`; one of our applets runs
/// in-process) and return its stdout; a failure is the plugin's error object, its code
/// unchanged.
pub fn invoke(name: &str, inv: &Invocation) -> Result<Vec<u8>> {
    let out = run_plugin(name, inv)?;
    // The plugin's diagnostics belong to the runtime's log, as with the reference.
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

/// A plugin's call to its delegate `name`: its own environment and stdin, `cmd` instead
/// of its command.
fn call(ctx: &Ctx, name: &str, cmd: Command) -> Result<Vec<u8>> {
    invoke(name, &Invocation::from_ctx(ctx, cmd))
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
    fn invocation<'a>(&'a self, parent: &'a Ctx, command: Command) -> Invocation<'a> {
        Invocation {
            ifname: self.ifname,
            path: self.path,
            stdin: &self.config,
            ..Invocation::from_ctx(parent, command)
        }
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
        let stdout = invoke(self.plugin, &self.invocation(parent, Command::Add))?;
        let v: serde_json::Value = serde_json::from_slice(&stdout).map_err(|e| {
            anyhow!(
                "failed to parse the result of plugin {:?}: {e}",
                self.plugin
            )
        })?;
        CniResult::parse_any(&v, &self.version())
            .with_context(|| format!("invalid result from plugin {:?}", self.plugin))
    }

    pub fn run(&self, parent: &Ctx, command: Command) -> Result<()> {
        invoke(self.plugin, &self.invocation(parent, command)).map(|_| ())
    }
}
