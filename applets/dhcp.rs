//! dhcp (IPAM): addresses leased from a DHCP server by the dhcp daemon.
//!
//! The plugin is a thin client: it validates the config, then asks the daemon
//! (`dhcp daemon`, at `ipam.daemonSocketPath`, default /run/cni/dhcp.sock) over Go's
//! net/rpc, exactly as the reference plugin does, so either side may be the Go one.
//! ADD calls `DHCP.Allocate`; DEL `DHCP.Release`. Beyond the reference: CHECK asks our
//! daemon's `DHCP.Check`, which verifies the lease without acquiring one (a Go daemon
//! lacks it: then `DHCP.Allocate`, as the reference does); GC calls `DHCP.GC`; STATUS is
//! code 50 when the daemon does not answer; DEL succeeds when the daemon is down (the
//! lease then dies with it), saying so on stderr.

use anyhow::{anyhow, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::CniResult;
use cnibox::dhcp::client::Params;
use cnibox::dhcp::rpc::{self, Client, CmdArgs, ServerError};
use cnibox::dhcp::{client_options, daemon, Conf, DEFAULT_SOCKET_PATH};
use cnibox::error::{cni_err, Code};
use std::time::Duration;

pub const APPLET: Applet = Applet {
    name: "dhcp",
    about: "IPAM: leases from a DHCP server, kept by `dhcp daemon`",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: None,
        add,
        del,
        check,
        gc: Some(gc),
        status: Some(status),
    }),
};

/// Longest wait for the daemon's answer: an Allocate may retry for the daemon's
/// `-resendtimeout` (208 s by default).
const CALL_TIMEOUT: Duration = Duration::from_secs(240);

fn cmd_args(ctx: &Ctx) -> Result<CmdArgs> {
    // The daemon may run in another working directory: send an absolute netns path.
    let netns = if ctx.netns.is_empty() || ctx.netns.starts_with('/') {
        ctx.netns.clone()
    } else {
        std::env::current_dir()?
            .join(&ctx.netns)
            .to_string_lossy()
            .into_owned()
    };
    Ok(CmdArgs {
        container_id: ctx.container_id.clone(),
        netns,
        ifname: ctx.ifname.clone(),
        args: ctx.args.clone(),
        path: ctx.path.clone(),
        stdin: ctx.stdin.clone(),
    })
}

fn socket_path(conf: &Conf) -> Result<String> {
    let p = conf.socket_path();
    if !p.starts_with('/') || p.contains('\0') {
        return Err(cni_err(
            Code::InvalidConfig,
            format!("ipam.daemonSocketPath: {p:?} is not an absolute path"),
        ));
    }
    Ok(p)
}

fn dial(path: &str) -> Result<Client> {
    Client::dial(path, CALL_TIMEOUT).map_err(|e| {
        cni_err(
            Code::TryAgainLater,
            format!(
                "error dialing DHCP daemon: the dhcp daemon does not answer at {path}: {e} \
                 (start it with `dhcp daemon`)"
            ),
        )
    })
}

/// A daemon error keeps the code our daemon put in front of it; a Go daemon's is 999.
fn call(client: &mut Client, method: &str, args: &CmdArgs) -> Result<cnibox::dhcp::gob::Value> {
    client.call(method, args).map_err(|e| {
        if let Some(ServerError(msg)) = e.downcast_ref::<ServerError>() {
            if let Some(rest) = msg.strip_prefix("cni code ") {
                if let Some((code, text)) = rest.split_once(": ") {
                    if let Some(c) = code.parse::<u32>().ok().and_then(code_from) {
                        return cni_err(c, format!("error calling {method}: {text}"));
                    }
                }
            }
            return anyhow!("error calling {method}: {msg}");
        }
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            })
        }) {
            return cni_err(
                Code::TryAgainLater,
                format!("error calling {method}: no answer within {CALL_TIMEOUT:?}"),
            );
        }
        e.context(format!("error calling {method}"))
    })
}

fn code_from(c: u32) -> Option<Code> {
    Some(match c {
        1 => Code::IncompatibleVersion,
        3 => Code::UnknownContainer,
        4 => Code::InvalidEnv,
        6 => Code::Decode,
        7 => Code::InvalidConfig,
        11 => Code::TryAgainLater,
        999 => Code::Internal,
        _ => return None,
    })
}

fn is_missing_method(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("rpc: can't find method")
}

/// Everything ADD checks before contacting the daemon.
fn validate(ctx: &Ctx) -> Result<(Conf, String)> {
    let conf = Conf::parse(&ctx.stdin)?;
    if conf.ipam.is_none() {
        return Err(cni_err(
            Code::InvalidConfig,
            "IPAM config missing 'ipam' key",
        ));
    }
    client_options(&conf, &ctx.container_id, &ctx.ifname, &ctx.args)?;
    let path = socket_path(&conf)?;
    cnibox::netns::Netns::open(&ctx.netns)?;
    Ok((conf, path))
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let (_, path) = validate(ctx)?;
    let mut c = dial(&path)?;
    let v = call(&mut c, "DHCP.Allocate", &cmd_args(ctx)?)?;
    let mut r = rpc::result_from_value(&v)?;
    r.cni_version = ctx.version().to_string();
    Ok(r)
}

fn del(ctx: &Ctx) -> Result<()> {
    // Only the keys DEL needs: a config ADD would refuse must still be deletable.
    let path = Conf::parse(&ctx.stdin)
        .map(|c| c.socket_path())
        .unwrap_or_else(|_| DEFAULT_SOCKET_PATH.to_string());
    let mut c = match Client::dial(&path, CALL_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "dhcp: DEL: the dhcp daemon does not answer at {path} ({e}): nothing to release"
            );
            return Ok(());
        }
    };
    call(&mut c, "DHCP.Release", &cmd_args(ctx)?)?;
    Ok(())
}

fn check(ctx: &Ctx) -> Result<()> {
    let (_, path) = validate(ctx)?;
    let prev = ctx.prev_result()?;
    let mut c = dial(&path)?;
    let args = cmd_args(ctx)?;
    let v = match call(&mut c, "DHCP.Check", &args) {
        Err(e) if is_missing_method(&e) => call(&mut c, "DHCP.Allocate", &args)?,
        other => other?,
    };
    let held = rpc::result_from_value(&v)?;
    if let Some(prev) = prev {
        for ip in &held.ips {
            if !prev.ips.iter().any(|p| p.address == ip.address) {
                return Err(anyhow!(
                    "the lease's address {} is not in prevResult",
                    ip.address
                ));
            }
        }
    }
    Ok(())
}

fn gc(ctx: &Ctx) -> Result<()> {
    let conf = Conf::parse(&ctx.stdin)?;
    let path = socket_path(&conf)?;
    let mut c = dial(&path)?;
    match call(&mut c, "DHCP.GC", &cmd_args(ctx)?) {
        Err(e) if is_missing_method(&e) => {
            eprintln!("dhcp: GC: the daemon at {path} has no GC (a reference daemon): skipped");
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

fn status(ctx: &Ctx) -> Result<()> {
    let conf = Conf::parse(&ctx.stdin)?;
    let path = socket_path(&conf)?;
    Client::dial(&path, Duration::from_secs(5)).map_err(|e| {
        cni_err(
            Code::NotAvailable,
            format!("the dhcp daemon does not answer at {path}: {e}"),
        )
    })?;
    Ok(())
}

/// Parse a Go `time.Duration` ("10s", "1m30s", "250ms", "1.5h").
fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// `dhcp daemon [flags]`: the reference's flags, Go-style (`-flag value`, `-flag=value`,
/// `--flag`), plus `-statefile`.
pub fn daemon_main(args: &[String]) -> i32 {
    use clap::{Arg, ArgAction, Command};
    // Go's flag package takes one or two dashes; clap wants two for long names.
    let argv: Vec<String> = std::iter::once("dhcp daemon".to_string())
        .chain(args.iter().map(|a| {
            if a.starts_with('-') && !a.starts_with("--") && a.len() > 2 {
                format!("-{a}")
            } else {
                a.clone()
            }
        }))
        .collect();
    let dur = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .default_value(default)
            .value_parser(go_duration)
            .help(help)
    };
    let cmd = Command::new("dhcp daemon")
        // Go's flag package: a repeated flag takes the last value.
        .args_override_self(true)
        .about("Serve DHCP leases to the dhcp plugin over a unix socket")
        .arg(Arg::new("pidfile").long("pidfile").default_value("").help("optional path to write daemon PID to"))
        .arg(Arg::new("hostprefix").long("hostprefix").default_value("").help("optional prefix to host root"))
        .arg(Arg::new("socketpath").long("socketpath").default_value("").help("optional dhcp server socketpath"))
        .arg(Arg::new("statefile").long("statefile").default_value("").help(
            "where leases are kept across restarts (default: dhcp-leases.json beside the socket)",
        ))
        .arg(
            Arg::new("broadcast")
                .long("broadcast")
                .num_args(0..=1)
                .require_equals(true)
                .default_value("false")
                .default_missing_value("true")
                .value_parser(clap::value_parser!(bool))
                .action(ArgAction::Set)
                .help("broadcast DHCP leases"),
        )
        .arg(dur("timeout", "10s", "optional dhcp client timeout duration for each request"))
        .arg(dur("resendmax", "62s", "optional dhcp client max resend delay between requests"))
        .arg(dur(
            "resendtimeout",
            "208s",
            "optional dhcp client resend timeout, no more retries after this timeout",
        ));
    let m = match cmd.try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let s = |k: &str| m.get_one::<String>(k).cloned().unwrap_or_default();
    let d = |k: &str| m.get_one::<Duration>(k).copied().unwrap_or_default();
    let mut socket_path = s("socketpath");
    if socket_path.is_empty() {
        socket_path = DEFAULT_SOCKET_PATH.to_string();
    }
    let mut state_file = s("statefile");
    if state_file.is_empty() {
        let dir = std::path::Path::new(&socket_path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/run/cni".into());
        state_file = format!("{}{dir}/dhcp-leases.json", s("hostprefix"));
    }
    let opts = daemon::Options {
        socket_path,
        pidfile: s("pidfile"),
        hostprefix: s("hostprefix"),
        state_file,
        params: Params {
            timeout: d("timeout"),
            resend_max: d("resendmax"),
            resend_timeout: d("resendtimeout"),
            broadcast: m.get_one::<bool>("broadcast").copied().unwrap_or(false),
        },
    };
    match daemon::run(opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dhcp daemon: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::go_duration;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert!(go_duration("10").is_err());
        assert!(go_duration("").is_err());
        assert!(go_duration("-1s").is_err());
    }
}
