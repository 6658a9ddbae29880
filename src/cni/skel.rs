//! The command harness: the one place that reads the environment and stdin, validates
//! them with the spec's rules and codes, dispatches ADD/DEL/CHECK/GC/STATUS/VERSION to
//! an applet, and prints the result or the error object.
//!
//! Differences from the reference skel, all deliberate (see README "Deviations"):
//! - the "CNI_NETNS is my own netns" guard runs *before* the handler, not after it
//!   has already changed the host;
//! - `CNI_PATH` is required only for GC, as the spec says;
//! - VERSION echoes the requested `cniVersion`, as the spec says;
//! - error objects carry `cniVersion`;
//! - a result is always re-shaped for the requested version, and if it cannot be
//!   (an L2 result under 0.2.0), ADD is rolled back with DEL before the error is printed.
//!
//! Every call that names a command is also recorded by [`crate::log`] when the operator
//! turned the log on (never on stdout).

use crate::cni::args::CniArgs;
use crate::cni::decode;
use crate::cni::types::{
    shape_of, to_pretty, version_at_least, CniResult, ALL_VERSIONS, CURRENT_VERSION,
};
use crate::error::{cni_err, CniError, Code};
use crate::log;
use anyhow::Result;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::OnceLock;

/// Largest config accepted on stdin. Real configs are a few KiB; a runaway writer
/// must get a clear error instead of exhausting memory.
pub const MAX_STDIN: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }
}

/// The handlers of a CNI plugin applet. `None` means "nothing to do": success with no
/// output (for GC and STATUS, as the spec allows).
pub struct Plugin {
    /// Versions this plugin accepts, oldest first.
    pub versions: &'static [&'static str],
    /// `CNI_ARGS` keys the plugin understands (besides `IgnoreUnknown`); `None` for
    /// plugins that ignore `CNI_ARGS` entirely, as their reference counterparts do.
    pub cni_args: Option<&'static [&'static str]>,
    pub add: fn(&Ctx) -> Result<CniResult>,
    pub del: fn(&Ctx) -> Result<()>,
    pub check: fn(&Ctx) -> Result<()>,
    pub gc: Option<fn(&Ctx) -> Result<()>>,
    pub status: Option<fn(&Ctx) -> Result<()>>,
}

/// What an applet is: a CNI plugin driven by the harness, or a tool with its own argv.
pub enum Kind {
    Plugin(Plugin),
    Tool(fn(&[String]) -> i32),
}

pub struct Applet {
    pub name: &'static str,
    /// One line for `--list` and `--help`.
    pub about: &'static str,
    pub kind: Kind,
}

static TABLE: OnceLock<&'static [Applet]> = OnceLock::new();

/// The binary registers its applet table once, so delegation can run our own IPAM
/// applets in-process.
pub fn register(table: &'static [Applet]) {
    let _ = TABLE.set(table);
}

pub fn applets() -> &'static [Applet] {
    TABLE.get().copied().unwrap_or(&[])
}

pub fn find_applet(name: &str) -> Option<&'static Applet> {
    applets().iter().find(|a| a.name == name)
}

/// Common config keys every plugin may look at. Applets decode their own struct
/// from [`Ctx::raw`] for the rest.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    pub ipam: Option<IpamType>,
    pub dns: Option<Value>,
    #[serde(rename = "prevResult")]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig")]
    pub runtime_config: Option<Value>,
    pub args: Option<Value>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct IpamType {
    #[serde(rename = "type")]
    pub plugin_type: String,
}

impl NetConf {
    pub fn ipam_type(&self) -> &str {
        self.ipam
            .as_ref()
            .map(|i| i.plugin_type.as_str())
            .unwrap_or("")
    }
}

/// One invocation: environment, raw stdin, and the decoded common config.
pub struct Ctx {
    pub plugin_name: String,
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    pub stdin: Vec<u8>,
    pub raw: Value,
    pub conf: NetConf,
    pub cni_args: CniArgs,
}

impl Ctx {
    /// Decode the applet's own config struct (Go-style case-insensitive keys).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        decode::from_value(self.raw.clone())
            .map_err(|e| cni_err(Code::Decode, format!("failed to load netconf: {e}")))
    }

    pub fn version(&self) -> &str {
        &self.conf.cni_version
    }

    /// prevResult in the 1.x model, if the config carries one.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.conf.prev_result {
            None => Ok(None),
            Some(v) => CniResult::parse_prev(v, self.version()).map(Some),
        }
    }

    /// prevResult for CHECK (and chained plugins): its absence is a config error
    /// (code 7), since the runtime must pass the result it got from ADD.
    pub fn prev_result_required(&self) -> Result<CniResult> {
        self.prev_result()?.ok_or_else(|| {
            cni_err(
                Code::InvalidConfig,
                match self.command {
                    Command::Check => "\"prevResult\" is missing: CHECK needs the result of \
                                       the ADD it checks"
                        .to_string(),
                    _ => format!(
                        "\"prevResult\" is missing: {} of this chained plugin needs the \
                         previous plugin's result",
                        self.command.as_str()
                    ),
                },
            )
        })
    }

    /// A `runtimeConfig` entry by capability name (case-insensitive, like Go).
    pub fn runtime_config(&self, key: &str) -> Option<&Value> {
        let rc = self.conf.runtime_config.as_ref()?.as_object()?;
        decode::get_ci(rc, key).filter(|v| !v.is_null())
    }

    /// `args.cni.<key>` (case-insensitive).
    pub fn args_cni(&self, key: &str) -> Option<&Value> {
        let args = self.conf.args.as_ref()?.as_object()?;
        let cni = decode::get_ci(args, "cni")?.as_object()?;
        decode::get_ci(cni, key).filter(|v| !v.is_null())
    }

    /// GC's list of attachments to keep: `cni.dev/valid-attachments`, or the spec's
    /// spelling `cni.dev/attachments` (libcni sends both).
    pub fn valid_attachments(&self) -> Result<Vec<(String, String)>> {
        let obj = self.raw.as_object();
        let list = obj
            .and_then(|o| {
                o.get("cni.dev/valid-attachments")
                    .or_else(|| o.get("cni.dev/attachments"))
            })
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        #[derive(serde::Deserialize)]
        struct Att {
            #[serde(rename = "containerID")]
            container_id: String,
            #[serde(default)]
            ifname: String,
        }
        let atts: Vec<Att> = decode::from_value(list).map_err(|e| {
            cni_err(
                Code::Decode,
                format!("invalid cni.dev/valid-attachments: {e}"),
            )
        })?;
        Ok(atts
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect())
    }

    /// The same call for another plugin (a delegate), with the command overridden.
    pub fn for_delegate(&self, command: Command, plugin_name: &str) -> Ctx {
        Ctx {
            plugin_name: plugin_name.to_string(),
            command,
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self.args.clone(),
            path: self.path.clone(),
            stdin: self.stdin.clone(),
            raw: self.raw.clone(),
            conf: self.conf.clone(),
            cni_args: CniArgs::default(),
        }
    }
}

/// The inputs a harness run reads: the process environment in production, a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> String;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> String {
        std::env::var(name).unwrap_or_default()
    }
}

pub(crate) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub(crate) fn validate_container_id(id: &str) -> Result<()> {
    if !valid_name(id) {
        return Err(
            CniError::new(Code::InvalidEnv, "invalid characters in containerID")
                .with_details(id)
                .into(),
        );
    }
    Ok(())
}

pub(crate) fn validate_ifname(name: &str) -> Result<()> {
    let err = |msg: &str, details: &str| -> Result<()> {
        Err(CniError::new(Code::InvalidEnv, msg)
            .with_details(details)
            .into())
    };
    if name.len() > 15 {
        return err(
            "interface name is too long",
            "interface name should be less than 16 characters",
        );
    }
    if name == "." || name == ".." {
        return err("interface name is . or ..", "");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return err(
            "interface name contains / or : or whitespace characters",
            "",
        );
    }
    Ok(())
}

/// Everything a run produces, so tests can drive the harness without a process.
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: i32,
}

/// Run `applet` as a CNI plugin: the binary's entry point for every plugin applet.
pub fn plugin_main(name: &str, plugin: &Plugin) -> i32 {
    let mut stdin = std::io::stdin().lock();
    let out = run(name, plugin, &ProcessEnv, &mut stdin);
    // A runtime that closed our stdout cannot be told anything anyway; never panic.
    let _ = std::io::stdout().lock().write_all(&out.stdout);
    let _ = std::io::stderr().lock().write_all(&out.stderr);
    out.exit
}

pub fn run(name: &str, plugin: &Plugin, env: &dyn Env, stdin: &mut dyn Read) -> Outcome {
    let mut out = Outcome {
        stdout: Vec::new(),
        stderr: Vec::new(),
        exit: 0,
    };
    let started = std::time::Instant::now();
    let mut op = log::Op::default();
    match dispatch(name, plugin, env, stdin, &mut out, &mut op) {
        Ok(()) => {}
        Err(e) => {
            let mut ce = CniError::from_anyhow(&e);
            if shape_of(&op.cni_version).is_some() && !op.cni_version.is_empty() {
                ce.cni_version = op.cni_version.clone();
            }
            let v =
                serde_json::to_value(&ce).unwrap_or_else(|_| json!({"code": 999, "msg": "error"}));
            out.stdout = to_pretty(&v);
            out.exit = 1;
        }
    }
    if !op.command.is_empty() {
        // A call refused before the settings were read (a missing CNI_* variable) is
        // still logged where the environment says.
        if op.settings.is_none() {
            op.settings = log::Settings::resolve(&|k: &str| env.var(k), None).ok();
        }
        log::record(
            name,
            &op,
            started.elapsed(),
            out.exit,
            &out.stdout,
            &mut out.stderr,
        );
    }
    out
}

fn dispatch(
    name: &str,
    plugin: &Plugin,
    env: &dyn Env,
    stdin: &mut dyn Read,
    out: &mut Outcome,
    op: &mut log::Op,
) -> Result<()> {
    let cmd_s = env.var("CNI_COMMAND");
    if cmd_s.is_empty() {
        // No command: print the about text, exactly as the reference skel does.
        let _ = writeln!(
            out.stderr,
            "CNI {name} plugin cnibox v{}",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out.stderr,
            "CNI protocol versions supported: {}",
            plugin.versions.join(", ")
        );
        return Ok(());
    }
    let cmd = Command::parse(&cmd_s);
    op.command = cmd_s.clone();
    op.container_id = env.var("CNI_CONTAINERID");
    op.netns = env.var("CNI_NETNS");
    op.ifname = env.var("CNI_IFNAME");

    // Environment, in the reference's order: the first invalid value is reported at
    // once, missing variables are collected and reported together.
    let required = |var: &str| -> bool {
        use Command::*;
        matches!(
            (var, cmd),
            ("CNI_CONTAINERID", Some(Add | Del | Check))
                | ("CNI_NETNS", Some(Add | Check))
                | ("CNI_IFNAME", Some(Add | Del | Check))
                | ("CNI_PATH", Some(Gc))
        )
    };
    let mut missing = Vec::new();
    let mut get = |var: &str, validate: Option<fn(&str) -> Result<()>>| -> Result<String> {
        let v = env.var(var);
        if v.is_empty() {
            if required(var) {
                missing.push(var.to_string());
            }
        } else if let (true, Some(f)) = (required(var), validate) {
            f(&v)?;
        }
        Ok(v)
    };
    let container_id = get("CNI_CONTAINERID", Some(validate_container_id))?;
    let netns = get("CNI_NETNS", None)?;
    let ifname = get("CNI_IFNAME", Some(validate_ifname))?;
    let args = get("CNI_ARGS", None)?;
    let path = get("CNI_PATH", None)?;
    if !missing.is_empty() {
        return Err(cni_err(
            Code::InvalidEnv,
            format!("required env variables [{}] missing", missing.join(",")),
        ));
    }
    let Some(cmd) = cmd else {
        return Err(cni_err(
            Code::InvalidEnv,
            format!("unknown CNI_COMMAND: {cmd_s}"),
        ));
    };
    // Logging as the environment asks, until the config can say more. A bad setting is
    // refused like any other, except by DEL, which must never fail over something ADD
    // would refuse (it then logs as far as the good settings allow).
    let env_var = |k: &str| env.var(k);
    match log::Settings::resolve(&env_var, None) {
        Ok(s) => op.settings = Some(s),
        Err(e) if cmd != Command::Del => return Err(e),
        Err(_) => {}
    }

    let mut stdin_data = Vec::new();
    stdin
        .take(MAX_STDIN + 1)
        .read_to_end(&mut stdin_data)
        .map_err(|e| cni_err(Code::Io, format!("error reading from stdin: {e}")))?;
    if stdin_data.len() as u64 > MAX_STDIN {
        // Readable but not a config we will decode: a decoding failure (6), not I/O.
        return Err(cni_err(
            Code::Decode,
            format!("error reading from stdin: config larger than {MAX_STDIN} bytes"),
        ));
    }

    if cmd == Command::Version {
        return version_reply(plugin, &stdin_data, out);
    }

    let raw: Value = serde_json::from_slice(&stdin_data).map_err(|e| {
        cni_err(
            Code::Decode,
            format!("error unmarshall network config: {e}"),
        )
    })?;
    if !raw.is_object() {
        return Err(cni_err(
            Code::Decode,
            "error unmarshall network config: the config must be a JSON object",
        ));
    }
    let conf: NetConf = decode::from_value(raw.clone()).map_err(|e| {
        cni_err(
            Code::Decode,
            format!("error unmarshall network config: {e}"),
        )
    })?;
    if conf.name.is_empty() {
        return Err(cni_err(Code::InvalidConfig, "missing network name"));
    }
    if !valid_name(&conf.name) {
        return Err(CniError::new(
            Code::InvalidConfig,
            "invalid characters found in network name",
        )
        .with_details(&conf.name)
        .into());
    }
    let mut conf = conf;
    if conf.cni_version.is_empty() {
        conf.cni_version = "0.1.0".to_string();
    }
    op.cni_version = conf.cni_version.clone();
    op.network = conf.name.clone();
    match log::Settings::resolve(&env_var, Some(&raw)) {
        Ok(s) => op.settings = Some(s),
        Err(e) if cmd != Command::Del => return Err(e),
        Err(_) => {}
    }
    if op.settings.as_ref().is_some_and(log::Settings::is_debug) {
        op.config = Some(raw.clone());
    }
    let version = conf.cni_version.clone();

    let min = match cmd {
        Command::Check => Some("0.4.0"),
        Command::Gc | Command::Status => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = min {
        if !version_at_least(&version, min)? {
            return Err(cni_err(
                Code::IncompatibleVersion,
                format!("config version does not allow {}", cmd.as_str()),
            ));
        }
    }
    if !plugin.versions.contains(&version.as_str()) {
        return Err(
            CniError::new(Code::IncompatibleVersion, "incompatible CNI versions")
                .with_details(format!(
                    "config is {version:?}, plugin supports {:?}",
                    plugin.versions
                ))
                .into(),
        );
    }

    if matches!(cmd, Command::Add | Command::Del) {
        check_not_own_netns(&netns, &env.var("CNI_NETNS_OVERRIDE"))?;
    }

    let cni_args = match plugin.cni_args {
        Some(keys) if matches!(cmd, Command::Add | Command::Del | Command::Check) => {
            CniArgs::parse(&args, keys)?
        }
        _ => CniArgs::default(),
    };
    let ctx = Ctx {
        plugin_name: name.to_string(),
        command: cmd,
        container_id,
        netns,
        ifname,
        args,
        path,
        stdin: stdin_data,
        raw,
        conf,
        cni_args,
    };
    match cmd {
        Command::Add => {
            let result = (plugin.add)(&ctx)?;
            out.stdout = to_pretty(&render_or_undo(plugin, &ctx, &result)?);
            op.note_result(&result);
        }
        Command::Del => (plugin.del)(&ctx)?,
        Command::Check => (plugin.check)(&ctx)?,
        Command::Gc => {
            if let Some(gc) = plugin.gc {
                gc(&ctx)?
            }
        }
        Command::Status => {
            if let Some(status) = plugin.status {
                status(&ctx)?
            }
        }
        Command::Version => unreachable!("handled above"),
    }
    Ok(())
}

/// Print `result` in the caller's version; if that version cannot express it, undo the
/// ADD so nothing is left behind for a result the runtime never saw.
fn render_or_undo(plugin: &Plugin, ctx: &Ctx, result: &CniResult) -> Result<Value> {
    match result.to_json(ctx.version()) {
        Ok(v) => Ok(v),
        Err(e) => {
            let del = ctx.for_delegate(Command::Del, &ctx.plugin_name);
            if let Err(undo) = (plugin.del)(&del) {
                return Err(e.context(format!("(rolling back the ADD also failed: {undo:#})")));
            }
            Err(e)
        }
    }
}

fn version_reply(plugin: &Plugin, stdin: &[u8], out: &mut Outcome) -> Result<()> {
    // The spec: echo the requested version. With no readable request, say ours.
    let requested = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| CURRENT_VERSION.to_string());
    let v = json!({"cniVersion": requested, "supportedVersions": plugin.versions});
    let mut s = serde_json::to_vec(&v)?;
    s.push(b'\n');
    out.stdout = s;
    Ok(())
}

/// Refuse to work on the plugin's own netns (code 8), unless overridden. An unopenable
/// path passes: DEL must succeed for a netns that is already gone.
fn check_not_own_netns(netns: &str, override_var: &str) -> Result<()> {
    if override_var == "1" || override_var.eq_ignore_ascii_case("true") || netns.is_empty() {
        return Ok(());
    }
    let Ok(target) = std::fs::File::open(netns) else {
        return Ok(());
    };
    if crate::netns::is_current(&target).unwrap_or(false) {
        return Err(cni_err(
            Code::InvalidNetns,
            "plugin's netns and netns from CNI_NETNS should not be the same",
        ));
    }
    Ok(())
}

/// All versions, for plugins that accept every one.
pub const ALL: &[&str] = ALL_VERSIONS;

#[cfg(test)]
mod tests {
    //! The harness against malformed input: every case must produce the right code and
    //! a parseable error object, never a panic.
    use super::*;
    use crate::cni::types::IpConfig;
    use std::collections::HashMap;

    struct MapEnv(HashMap<String, String>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> String {
            self.0.get(name).cloned().unwrap_or_default()
        }
    }

    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct TestConf {
        #[allow(dead_code)]
        mtu: u32,
    }

    fn add(ctx: &Ctx) -> Result<CniResult> {
        let _: TestConf = ctx.decode()?;
        let _ = ctx.prev_result()?;
        Ok(CniResult {
            cni_version: ctx.version().into(),
            ips: vec![IpConfig {
                interface: None,
                address: "10.0.0.2/24".parse()?,
                gateway: None,
            }],
            ..Default::default()
        })
    }
    fn ok(_: &Ctx) -> Result<()> {
        Ok(())
    }
    fn gc(ctx: &Ctx) -> Result<()> {
        ctx.valid_attachments().map(|_| ())
    }

    const PLUGIN: Plugin = Plugin {
        versions: ALL,
        cni_args: Some(&["IP"]),
        add,
        del: ok,
        check: ok,
        gc: Some(gc),
        status: None,
    };

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"net1","type":"test"}"#;

    fn env(cmd: &str) -> HashMap<String, String> {
        let mut m = HashMap::new();
        for (k, v) in [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", "/nonexistent/netns"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    fn run_with(e: HashMap<String, String>, stdin: &[u8]) -> Outcome {
        run("test", &PLUGIN, &MapEnv(e), &mut &stdin[..])
    }

    /// One malformed input from `testdata/malformed-harness.json`: the command, the
    /// environment changed from [`env`], stdin (the plain `CONF` when absent), and the
    /// code and message fragment the error object must carry.
    #[derive(serde::Deserialize)]
    struct Case {
        what: String,
        command: String,
        #[serde(default)]
        set: HashMap<String, String>,
        #[serde(default)]
        unset: Vec<String>,
        stdin: Option<String>,
        stdin_bytes: Option<Vec<u8>>,
        #[serde(default)]
        stdin_oversized: bool,
        code: u64,
        msg: String,
    }

    fn cases() -> Vec<Case> {
        serde_json::from_str(include_str!("../../testdata/malformed-harness.json"))
            .expect("testdata/malformed-harness.json parses")
    }

    #[test]
    fn malformed_inputs_get_the_right_code() {
        let cases = cases();
        assert!(cases.len() >= 59);
        for case in cases {
            let what = &case.what;
            let mut e = env(&case.command);
            for k in &case.unset {
                e.remove(k);
            }
            e.extend(case.set.clone());
            let stdin = if case.stdin_oversized {
                let mut big = b"{\"name\":\"n\",\"x\":\"".to_vec();
                big.resize(MAX_STDIN as usize + 10, b'a');
                big
            } else if let Some(b) = case.stdin_bytes {
                b
            } else {
                case.stdin.unwrap_or_else(|| CONF.to_string()).into_bytes()
            };
            let out = run_with(e, &stdin);
            assert_eq!(out.exit, 1, "{what}: exit status");
            let v: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|err| panic!("{what}: stdout is not JSON: {err}"));
            assert_eq!(v["code"], case.code, "{what}: {v}");
            let m = format!(
                "{} {}",
                v["msg"].as_str().unwrap_or(""),
                v["details"].as_str().unwrap_or("")
            );
            assert!(m.contains(&case.msg), "{what}: {m:?} lacks {:?}", case.msg);
        }
    }

    #[test]
    fn no_command_prints_about() {
        let out = run_with(HashMap::new(), b"");
        assert_eq!(out.exit, 0);
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CNI test plugin"), "{err}");
        assert!(
            err.contains("CNI protocol versions supported: 0.1.0, 0.2.0"),
            "{err}"
        );
    }

    #[test]
    fn version_echoes_request() {
        let out = run_with(env("VERSION"), br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(out.exit, 0);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "{\"cniVersion\":\"0.4.0\",\"supportedVersions\":[\"0.1.0\",\"0.2.0\",\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n"
        );
        let out = run_with(
            HashMap::from([("CNI_COMMAND".into(), "VERSION".into())]),
            b"garbage",
        );
        assert_eq!(out.exit, 0);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"cniVersion\":\"1.1.0\""));
    }

    #[test]
    fn results_follow_the_requested_version() {
        for ver in ALL {
            let conf = format!(r#"{{"cniVersion":"{ver}","name":"n"}}"#);
            let out = run_with(env("ADD"), conf.as_bytes());
            assert_eq!(out.exit, 0, "{ver}");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["cniVersion"], *ver);
            match shape_of(ver) {
                Some(crate::cni::types::Shape::V02) => assert_eq!(v["ip4"]["ip"], "10.0.0.2/24"),
                Some(crate::cni::types::Shape::V04) => assert_eq!(v["ips"][0]["version"], "4"),
                _ => assert!(v["ips"][0].get("version").is_none()),
            }
        }
        // No cniVersion means 0.1.0.
        let out = run_with(env("ADD"), br#"{"name":"n"}"#);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.1.0");
    }

    #[test]
    fn gc_and_status_without_handler_succeed_silently() {
        let out = run_with(env("STATUS"), br#"{"cniVersion":"1.1.0","name":"n"}"#);
        assert_eq!((out.exit, out.stdout.len()), (0, 0));
        let out = run_with(env("GC"), br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#);
        assert_eq!((out.exit, out.stdout.len()), (0, 0));
    }

    #[test]
    fn own_netns_can_be_overridden() {
        let mut e = env("DEL");
        e.insert("CNI_NETNS".into(), "/proc/self/ns/net".into());
        e.insert("CNI_NETNS_OVERRIDE".into(), "TRUE".into());
        assert_eq!(run_with(e, CONF.as_bytes()).exit, 0);
    }

    #[test]
    fn errors_carry_the_config_version() {
        let out = run_with(with_args("FOO=1"), CONF.as_bytes());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        fn with_args(a: &str) -> HashMap<String, String> {
            let mut e = env("ADD");
            e.insert("CNI_ARGS".into(), a.into());
            e
        }
    }
}
