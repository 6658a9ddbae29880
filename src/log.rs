//! Opt-in operation log for debugging a node: one JSON line per plugin call, appended to
//! a file the operator names. Off unless a file is configured, and never written to
//! stdout (stdout is the runtime's: it carries the CNI result and nothing else).
//!
//! Settings: `logFile` (absolute path) and `logLevel` in the network config, each
//! overridden by `CNIBOX_LOG_FILE` / `CNIBOX_LOG_LEVEL` in the environment (a runtime
//! passes its environment on to plugins, so a node can be switched on without touching
//! any config). Levels: `off`, `error` (failed calls only), `info` (every call, the
//! default), `debug` (also the config received and the result printed).
//!
//! Each line is built in memory and handed to the kernel in a single `write(2)` on a
//! file opened with `O_APPEND`: concurrent plugin runs (a runtime starting 30 pods)
//! append whole lines, never interleaved ones.

use crate::cni::decode::get_ci;
use crate::cni::types::CniResult;
use crate::cni::value;
use crate::error::{cni_err, CniError, Code};
use anyhow::Result;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ENV_FILE: &str = "CNIBOX_LOG_FILE";
pub const ENV_LEVEL: &str = "CNIBOX_LOG_LEVEL";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Info,
    Debug,
}

impl Level {
    pub const NAMES: &'static str = "off, error, info, debug";

    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "off" | "none" => Level::Off,
            "error" => Level::Error,
            "info" | "" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Where and how much to log; `None` file means off.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub file: Option<PathBuf>,
    pub level: Option<Level>,
}

impl Settings {
    /// The effective settings: the environment's values win over the config's.
    /// `config` is the network config once it has been read (None before that, or for
    /// VERSION). A bad value is refused like any other: code 4 from the environment,
    /// code 7 from the config.
    pub fn resolve(env: &dyn Fn(&str) -> String, config: Option<&Value>) -> Result<Settings> {
        let conf = config.and_then(Value::as_object);
        let mut s = Settings::default();
        if let Some(c) = conf {
            s.file = conf_str(c, "logFile")?
                .map(|f| check_path("logFile", &f))
                .transpose()?;
            s.level = conf_str(c, "logLevel")?
                .map(|l| {
                    Level::parse(&l).ok_or_else(|| {
                        value::invalid(
                            "logLevel",
                            format!("{l:?}"),
                            format!("is not one of {}", Level::NAMES),
                        )
                    })
                })
                .transpose()?;
        }
        let f = env(ENV_FILE);
        if !f.is_empty() {
            s.file = Some(check_path(ENV_FILE, &f).map_err(|e| recode(e, Code::InvalidEnv))?);
        }
        let l = env(ENV_LEVEL);
        if !l.is_empty() {
            s.level = Some(Level::parse(&l).ok_or_else(|| {
                cni_err(
                    Code::InvalidEnv,
                    format!("{ENV_LEVEL}={l:?} is not one of {}", Level::NAMES),
                )
            })?);
        }
        Ok(s)
    }

    pub fn is_debug(&self) -> bool {
        self.level() == Level::Debug
    }

    fn level(&self) -> Level {
        match self.file {
            None => Level::Off,
            Some(_) => self.level.unwrap_or(Level::Info),
        }
    }
}

fn conf_str(c: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match get_ci(c, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(cni_err(
            Code::Decode,
            format!("failed to load netconf: {key:?}: expected a string, got {other}"),
        )),
    }
}

fn check_path(key: &str, p: &str) -> Result<PathBuf> {
    if !p.starts_with('/') {
        return Err(value::invalid(
            key,
            format!("{p:?}"),
            "is not an absolute path",
        ));
    }
    Ok(PathBuf::from(p))
}

fn recode(e: anyhow::Error, code: Code) -> anyhow::Error {
    let mut ce = CniError::from_anyhow(&e);
    ce.code = code as u32;
    ce.into()
}

/// What one call was about, filled in by the harness as it learns it.
#[derive(Debug, Default)]
pub struct Op {
    pub settings: Option<Settings>,
    pub command: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub network: String,
    pub cni_version: String,
    /// Kernel objects the call reports as made (ADD: the result's interfaces and
    /// addresses).
    pub objects: Vec<Value>,
    /// The config as received, for `debug`.
    pub config: Option<Value>,
}

impl Op {
    /// Note what an ADD made, from its result: the interfaces (and the netns they are
    /// in) and the addresses. Cheap, and what an operator looks for first.
    pub fn note_result(&mut self, r: &CniResult) {
        for i in &r.interfaces {
            let mut o = json!({"kind": "link", "name": i.name});
            if !i.sandbox.is_empty() {
                o["netns"] = json!(i.sandbox);
            }
            if !i.mac.is_empty() {
                o["mac"] = json!(i.mac);
            }
            self.objects.push(o);
        }
        for ip in &r.ips {
            let mut o = json!({"kind": "address", "address": ip.address.to_string()});
            if let Some(name) = ip.interface.and_then(|n| r.interfaces.get(n)) {
                o["link"] = json!(name.name);
            }
            self.objects.push(o);
        }
    }
}

/// Append the line for one finished call, if logging is on at a level that wants it.
/// `stdout` is what the call printed (the result, or the error object when `exit` is
/// not 0). Problems with the log file go to `stderr`, never fail the call.
pub fn record(
    applet: &str,
    op: &Op,
    elapsed: Duration,
    exit: i32,
    stdout: &[u8],
    stderr: &mut Vec<u8>,
) {
    let Some(settings) = &op.settings else { return };
    let level = settings.level();
    let failed = exit != 0;
    let line_level = if failed { Level::Error } else { Level::Info };
    let (Some(path), true) = (&settings.file, level != Level::Off && line_level <= level) else {
        return;
    };
    let printed: Option<Value> = serde_json::from_slice(stdout).ok();
    let mut line = Map::new();
    line.insert("ts".into(), json!(rfc3339(SystemTime::now())));
    line.insert("level".into(), json!(line_level.name()));
    line.insert("applet".into(), json!(applet));
    line.insert("command".into(), json!(op.command));
    line.insert("containerId".into(), json!(op.container_id));
    line.insert("ifname".into(), json!(op.ifname));
    line.insert("netns".into(), json!(op.netns));
    line.insert("network".into(), json!(op.network));
    line.insert("cniVersion".into(), json!(op.cni_version));
    line.insert("pid".into(), json!(std::process::id()));
    line.insert(
        "durationUs".into(),
        json!(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)),
    );
    line.insert("ok".into(), json!(!failed));
    if failed {
        let e = printed.as_ref();
        line.insert(
            "code".into(),
            e.map(|e| e["code"].clone()).unwrap_or(Value::Null),
        );
        line.insert(
            "msg".into(),
            e.map(|e| e["msg"].clone()).unwrap_or(Value::Null),
        );
        if let Some(d) = e.and_then(|e| e.get("details")) {
            line.insert("details".into(), d.clone());
        }
    }
    if !op.objects.is_empty() {
        line.insert("objects".into(), Value::Array(op.objects.clone()));
    }
    if level >= Level::Debug {
        if let Some(c) = &op.config {
            line.insert("config".into(), c.clone());
        }
        if let (false, Some(r)) = (failed, &printed) {
            line.insert("result".into(), r.clone());
        }
    }
    let Ok(mut bytes) = serde_json::to_vec(&Value::Object(line)) else {
        return;
    };
    bytes.push(b'\n');
    if let Err(e) = append(path, &bytes) {
        let _ = writeln!(stderr, "cnibox: log file {}: {e}", path.display());
    }
}

/// One line about a step inside a call (a meta plugin's attach or detach), in the same
/// file and format as the per-call lines: `ts`, `level`, `applet`, `pid`, `msg`.
pub fn event(settings: &Settings, level: Level, applet: &str, msg: &str) {
    let Some(path) = &settings.file else { return };
    if level == Level::Off || level > settings.level() {
        return;
    }
    let line = json!({"ts": rfc3339(SystemTime::now()), "level": level.name(), "applet": applet,
        "pid": std::process::id(), "msg": msg});
    let Ok(mut bytes) = serde_json::to_vec(&line) else {
        return;
    };
    bytes.push(b'\n');
    if let Err(e) = append(path, &bytes) {
        eprintln!("cnibox: log file {}: {e}", path.display());
    }
}

/// One `write(2)` on an `O_APPEND` file: the kernel appends the whole line at the end
/// under the inode lock, so lines from concurrent processes never mix. A log file that
/// turns out to be our own stdout is refused: stdout belongs to the runtime.
fn append(path: &std::path::Path, line: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let md = f.metadata()?;
    if let Ok(out) = nix::sys::stat::fstat(std::io::stdout()) {
        let (dev, ino): (u64, u64) = (out.st_dev, out.st_ino);
        if md.dev() == dev && md.ino() == ino {
            return Err(std::io::Error::other(
                "is this plugin's stdout, which carries only the CNI result: not logging there",
            ));
        }
    }
    let n = f.write(line)?;
    if n != line.len() {
        return Err(std::io::Error::other(format!(
            "short write ({n} of {} bytes)",
            line.len()
        )));
    }
    Ok(())
}

/// `2026-12-07T16:03:35.123456Z` (UTC, microseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_796_656_215), "2026-12-07T15:10:15.000000Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59.000000Z");
    }

    #[test]
    fn environment_wins_and_bad_values_are_refused() {
        let conf = json!({"logFile": "/a", "logLevel": "debug"});
        let none = |_: &str| String::new();
        let s = Settings::resolve(&none, Some(&conf)).unwrap();
        assert_eq!(
            (s.file.unwrap(), s.level),
            (PathBuf::from("/a"), Some(Level::Debug))
        );
        let env = |k: &str| match k {
            ENV_FILE => "/b".to_string(),
            ENV_LEVEL => "ERROR".to_string(),
            _ => String::new(),
        };
        let s = Settings::resolve(&env, Some(&conf)).unwrap();
        assert_eq!(
            (s.file.unwrap(), s.level),
            (PathBuf::from("/b"), Some(Level::Error))
        );
        let code = |r: Result<Settings>| CniError::from_anyhow(&r.unwrap_err()).code;
        assert_eq!(
            code(Settings::resolve(&none, Some(&json!({"logLevel": "loud"})))),
            7
        );
        assert_eq!(
            code(Settings::resolve(&none, Some(&json!({"logFile": "rel/x"})))),
            7
        );
        assert_eq!(
            code(Settings::resolve(&none, Some(&json!({"logFile": 5})))),
            6
        );
        let bad_env = |k: &str| {
            if k == ENV_LEVEL {
                "x".into()
            } else {
                String::new()
            }
        };
        assert_eq!(code(Settings::resolve(&bad_env, None)), 4);
        let rel_env = |k: &str| {
            if k == ENV_FILE {
                "x".into()
            } else {
                String::new()
            }
        };
        assert_eq!(code(Settings::resolve(&rel_env, None)), 4);
        assert_eq!(Settings::resolve(&none, None).unwrap().level(), Level::Off);
    }
}
