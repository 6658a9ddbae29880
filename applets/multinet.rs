//! multinet: attach one container to several networks with addresses decided elsewhere.
//!
//! The networks are ordinary network configs (`.conflist`, `.conf`) in `confDir`, found
//! by name as a runtime finds them. Which ones a container joins comes either from an
//! inventory service (`backend`: `GET <backend>?podName=<K8S_POD_NAME>`, answering
//! `{"code":0,"message":"...","data":[{"type","podIp","subnetMask","gateway","ifName",
//! "master"}, ...]}`) or from a fixed list in the config (`networks`, entries of the same
//! shape). For each entry the network named `type` is run with `ifName`; unless its first
//! plugin names an IPAM, it gets `static` IPAM with `podIp`/`subnetMask` and `gateway`
//! (and, for the master, a default route through that gateway). Exactly one entry is the
//! `master`: its result is returned, the other interfaces appended to it.
//!
//! What was attached is recorded per container under `stateDir` before each attachment
//! is made (write-ahead, atomic), so DEL detaches every network from the record even
//! when the backend is down or answers differently now, and a failed ADD rolls back
//! everything it started. CHECK checks every attachment; GC detaches the recorded
//! attachments of containers not in `cni.dev/valid-attachments`.
//!
//! Errors: a backend that does not answer in time is code 11 (as is one that cannot be
//! reached, or answers 5xx); an answer that is not the documented JSON is code 6 naming
//! what is wrong; a refusal (`code` != 0) is reported with its message; a network the
//! answer names that `confDir` lacks is code 7.

use anyhow::{Context, Result};
use cnibox::cni::args::parse_lenient;
use cnibox::cni::delegate;
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::{CniResult, Interface};
use cnibox::error::{cni_err, Code};
use cnibox::http;
use cnibox::libcni::{self, Cni, NetworkConfigList, RuntimeConf};
use cnibox::statefile;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const APPLET: Applet = Applet {
    name: "multinet",
    about: "meta plugin: several networks per container, from an inventory service or a list",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        // Read leniently (only K8S_POD_NAME matters here); delegates get CNI_ARGS as is.
        cni_args: None,
        add,
        del,
        check,
        gc: Some(gc),
        status: Some(status),
    }),
};

const DEFAULT_STATE_DIR: &str = "/var/lib/cni/multinet";
const DEFAULT_TIMEOUT_SECS: f64 = 10.0;
const MAX_TIMEOUT_SECS: f64 = 300.0;
/// An inventory answer lists a few networks; a megabyte is not one.
const MAX_ANSWER: usize = 1 << 20;
const STATE_KIND: &str = "multinetV1";

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conf {
    #[serde(rename = "confDir")]
    conf_dir: String,
    #[serde(rename = "binDir")]
    bin_dir: String,
    backend: String,
    networks: Option<Vec<Value>>,
    #[serde(rename = "stateDir")]
    state_dir: String,
    /// Seconds the backend has to answer.
    timeout: Option<f64>,
    #[serde(rename = "logFile")]
    log_file: String,
    #[serde(rename = "logLevel")]
    log_level: String,
    #[serde(rename = "runtimeConfig")]
    runtime_config: Option<Map<String, Value>>,
}

impl Conf {
    fn load(ctx: &Ctx) -> Result<Conf> {
        let c: Conf = ctx.decode()?;
        if c.conf_dir.is_empty() {
            return Err(cni_err(Code::InvalidConfig, "\"confDir\" is missing"));
        }
        match (c.backend.is_empty(), &c.networks) {
            (true, None) => return Err(cni_err(
                Code::InvalidConfig,
                "one of \"backend\" (an inventory URL) or \"networks\" (a fixed list) is required",
            )),
            (false, Some(_)) => {
                return Err(cni_err(
                    Code::InvalidConfig,
                    "\"backend\" and \"networks\" exclude each other",
                ))
            }
            _ => {}
        }
        if !c.backend.is_empty() {
            http::Url::parse(&c.backend).context("\"backend\"")?;
        }
        if let Some(t) = c.timeout {
            if !(t > 0.0 && t <= MAX_TIMEOUT_SECS) {
                return Err(cnibox::cni::value::invalid(
                    "timeout",
                    t,
                    format!("is out of range (seconds, above 0, at most {MAX_TIMEOUT_SECS})"),
                ));
            }
        }
        Ok(c)
    }

    /// What DEL and GC need (where the records are, where plugins are, the log), read
    /// without judging the rest: a config ADD would refuse must not make DEL fail, or a
    /// runtime retries it forever.
    fn for_teardown(ctx: &Ctx) -> Conf {
        let s = |key: &str| {
            ctx.raw
                .as_object()
                .and_then(|o| cnibox::cni::decode::get_ci(o, key))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Conf {
            conf_dir: s("confDir"),
            bin_dir: s("binDir"),
            state_dir: s("stateDir"),
            log_file: s("logFile"),
            log_level: s("logLevel"),
            runtime_config: ctx
                .raw
                .get("runtimeConfig")
                .and_then(Value::as_object)
                .cloned(),
            ..Conf::default()
        }
    }

    fn state_root(&self, network: &str) -> PathBuf {
        let dir = if self.state_dir.is_empty() {
            DEFAULT_STATE_DIR
        } else {
            &self.state_dir
        };
        Path::new(dir).join(network)
    }

    /// Plugins are looked up in `binDir` first, then in `CNI_PATH`.
    fn cni(&self, ctx: &Ctx) -> Cni {
        let path = match (self.bin_dir.is_empty(), ctx.path.is_empty()) {
            (true, _) => ctx.path.clone(),
            (false, true) => self.bin_dir.clone(),
            (false, false) => format!("{}:{}", self.bin_dir, ctx.path),
        };
        Cni::new(&path).with_cache_dir(self.state_root(&ctx.conf.name).join("cache"))
    }
}

/// A small log for operators (`logFile`, `logLevel`): one line per event, appended.
/// Attach/detach lines in the operation log (`logFile`/`logLevel`, or the environment's
/// `CNIBOX_LOG_*`), beside the harness's line for the whole call.
struct Log {
    settings: cnibox::log::Settings,
}

impl Log {
    fn open(conf: &Conf) -> Log {
        let raw = serde_json::json!({"logFile": conf.log_file, "logLevel": conf.log_level});
        // The harness has refused bad values for ADD already; DEL logs what it can.
        let settings =
            cnibox::log::Settings::resolve(&|k| std::env::var(k).unwrap_or_default(), Some(&raw))
                .unwrap_or_default();
        Log { settings }
    }

    fn write(&self, level: cnibox::log::Level, msg: &str) {
        cnibox::log::event(&self.settings, level, "multinet", msg);
    }
    fn error(&self, msg: &str) {
        self.write(cnibox::log::Level::Error, msg)
    }
    fn info(&self, msg: &str) {
        self.write(cnibox::log::Level::Info, msg)
    }
    fn debug(&self, msg: &str) {
        self.write(cnibox::log::Level::Debug, msg)
    }
}

// ---------------------------------------------------------------------------------------
// Which networks: the backend's answer or the fixed list

/// Where entries came from: it decides the error code of a bad one (a bad answer is
/// content we cannot decode, 6; a bad fixed list is our config, 7).
#[derive(Clone, Copy, PartialEq)]
enum Source {
    Backend,
    Config,
}

impl Source {
    fn err(self, msg: impl Into<String>) -> anyhow::Error {
        let (code, pfx) = match self {
            Source::Backend => (Code::Decode, "backend answer"),
            Source::Config => (Code::InvalidConfig, "\"networks\""),
        };
        cni_err(code, format!("{pfx}: {}", msg.into()))
    }
}

/// One network to join.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    network: String,
    /// `podIp` with the prefix length of `subnetMask`.
    address: Option<IpNet>,
    gateway: Option<IpAddr>,
    ifname: String,
    master: bool,
}

/// A netmask ("255.255.255.0", "ffff:ffff:ffff:ffff::") or a prefix length ("24") for
/// an address of `ip`'s family.
fn prefix_len(mask: &str, ip: IpAddr) -> Option<u8> {
    let bits: u8 = if ip.is_ipv4() { 32 } else { 128 };
    if !mask.is_empty() && mask.bytes().all(|b| b.is_ascii_digit()) {
        return mask.parse::<u8>().ok().filter(|l| *l <= bits);
    }
    let m: IpAddr = mask.parse().ok()?;
    let (v, width) = match (m, ip) {
        (IpAddr::V4(m), IpAddr::V4(_)) => (u128::from(u32::from(m)) << 96, 32),
        (IpAddr::V6(m), IpAddr::V6(_)) => (u128::from(m), 128),
        _ => return None,
    };
    let ones = v.leading_ones();
    // Contiguous: nothing set after the leading ones.
    (v.checked_shl(ones).unwrap_or(0) == 0).then_some(ones.min(width) as u8)
}

fn entries_from(list: &[Value], src: Source) -> Result<Vec<Entry>> {
    if list.is_empty() {
        return Err(src.err("lists no network"));
    }
    let mut out: Vec<Entry> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let at = |what: String| src.err(format!("data[{i}]: {what}"));
        let Some(o) = v.as_object() else {
            return Err(at(format!("expected an object, got {v}")));
        };
        let string = |key: &str, required: bool| -> Result<Option<String>> {
            match o.get(key) {
                None | Some(Value::Null) if !required => Ok(None),
                None | Some(Value::Null) => Err(at(format!("{key:?} is missing"))),
                Some(Value::String(s)) if s.is_empty() && !required => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Err(at(format!("{key:?} is empty"))),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(at(format!("{key:?} must be a string, got {other}"))),
            }
        };
        let network = string("type", true)?.unwrap_or_default();
        let ifname = string("ifName", true)?.unwrap_or_default();
        cnibox::cni::value::ifname("ifName", &ifname).map_err(|e| at(format!("{e:#}")))?;
        let master = match o.get("master") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(at(format!("\"master\" must be true or false, got {other}")))
            }
        };
        let address = match string("podIp", false)? {
            None => None,
            Some(ip_s) => {
                let ip: IpAddr = ip_s
                    .parse()
                    .map_err(|_| at(format!("\"podIp\": {ip_s:?} is not an IP address")))?;
                let mask = string("subnetMask", true)?.unwrap_or_default();
                let len = prefix_len(&mask, ip).ok_or_else(|| {
                    at(format!(
                        "\"subnetMask\": {mask:?} is not a netmask or prefix length for {ip}"
                    ))
                })?;
                Some(IpNet::new(ip, len).map_err(|e| at(format!("{e}")))?)
            }
        };
        let gateway = match string("gateway", false)? {
            None => None,
            Some(g) => {
                let gw: IpAddr = g
                    .parse()
                    .map_err(|_| at(format!("\"gateway\": {g:?} is not an IP address")))?;
                if let Some(a) = address {
                    if !a.contains(&gw) || gw == a.addr() {
                        return Err(at(format!(
                            "\"gateway\": {gw} is not another address of {}",
                            a.trunc()
                        )));
                    }
                }
                Some(gw)
            }
        };
        if let Some(prev) = out.iter().find(|e| e.ifname == ifname) {
            return Err(at(format!(
                "\"ifName\" {ifname:?} is already used by network {:?}",
                prev.network
            )));
        }
        out.push(Entry {
            network,
            address,
            gateway,
            ifname,
            master,
        });
    }
    match out.iter().filter(|e| e.master).count() {
        1 => Ok(out),
        0 => Err(src.err("no entry is the master (exactly one must have \"master\": true)")),
        n => Err(src.err(format!(
            "{n} entries are the master (exactly one must have \"master\": true)"
        ))),
    }
}

/// A short, printable excerpt of a body for error messages.
fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if body.len() > 200 {
        format!("{s:?}...")
    } else {
        format!("{s:?}")
    }
}

/// Ask the backend which networks `pod` joins.
fn query_backend(conf: &Conf, pod: &str, log: &Log) -> Result<Vec<Entry>> {
    let url = http::Url::parse(&conf.backend)?.with_query("podName", pod);
    let limits = http::Limits {
        timeout: Duration::from_secs_f64(conf.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)),
        max_body: MAX_ANSWER,
    };
    log.debug(&format!("asking {} about pod {pod:?}", conf.backend));
    let resp = http::get(&url, limits).context("inventory backend")?;
    if resp.status != 200 {
        let code = if resp.status >= 500 {
            Code::TryAgainLater
        } else {
            Code::Internal
        };
        return Err(cni_err(
            code,
            format!(
                "inventory backend answered HTTP {} for pod {pod:?}: {}",
                resp.status,
                excerpt(&resp.body)
            ),
        ));
    }
    parse_answer(&resp.body, pod)
}

fn parse_answer(body: &[u8], pod: &str) -> Result<Vec<Entry>> {
    let src = Source::Backend;
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| src.err(format!("not JSON ({e}): {}", excerpt(body))))?;
    let Some(o) = v.as_object() else {
        return Err(src.err(format!("expected an object, got {}", excerpt(body))));
    };
    let code = match o.get("code") {
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(-1),
        Some(other) => return Err(src.err(format!("\"code\" must be an integer, got {other}"))),
        None => return Err(src.err("\"code\" is missing")),
    };
    let message = match o.get("message") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(src.err(format!("\"message\" must be a string, got {other}"))),
    };
    if code != 0 {
        return Err(cni_err(
            Code::Internal,
            format!("inventory backend refused pod {pod:?}: code {code}: {message}"),
        ));
    }
    match o.get("data") {
        Some(Value::Array(a)) => entries_from(a, src),
        Some(other) => Err(src.err(format!("\"data\" must be a list, got {other}"))),
        None => Err(src.err("\"data\" is missing")),
    }
}

fn entries(ctx: &Ctx, conf: &Conf, log: &Log) -> Result<Vec<Entry>> {
    if let Some(list) = &conf.networks {
        return entries_from(list, Source::Config);
    }
    let pod = parse_lenient(&ctx.args)
        .into_iter()
        .rev()
        .find(|(k, _)| k == "K8S_POD_NAME")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            cni_err(
                Code::InvalidEnv,
                "CNI_ARGS has no K8S_POD_NAME: the inventory backend is asked by pod name",
            )
        })?;
    query_backend(conf, &pod, log)
}

// ---------------------------------------------------------------------------------------
// The networks, as run

/// Network `entry.network` from `confDir`, with static IPAM for the entry's address
/// unless its first plugin names an IPAM: the exact list that is run and recorded.
fn network_for(conf: &Conf, entry: &Entry) -> Result<Value> {
    let list = libcni::load(Path::new(&conf.conf_dir), &entry.network).map_err(|e| {
        cni_err(
            Code::InvalidConfig,
            format!(
                "network {:?} (\"confDir\": {:?}): {e:#}",
                entry.network, conf.conf_dir
            ),
        )
    })?;
    let mut plugins: Vec<Value> = list
        .plugins
        .iter()
        .map(|p| Value::Object(p.raw.clone()))
        .collect();
    let first = plugins
        .first_mut()
        .and_then(Value::as_object_mut)
        .ok_or_else(|| cni_err(Code::InvalidConfig, "network has no plugins"))?;
    let names_ipam = first
        .get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !names_ipam {
        let address = entry.address.ok_or_else(|| {
            cni_err(
                Code::InvalidConfig,
                format!(
                    "network {:?} names no IPAM, so its entry needs \"podIp\" and \"subnetMask\"",
                    entry.network
                ),
            )
        })?;
        let mut a = json!({"address": address.to_string()});
        let mut routes = vec![];
        if let Some(gw) = entry.gateway {
            a["gateway"] = json!(gw.to_string());
            if entry.master {
                let default = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                routes.push(json!({"dst": default, "gw": gw.to_string()}));
            }
        }
        first.insert(
            "ipam".into(),
            json!({"type": "static", "addresses": [a], "routes": routes}),
        );
    }
    Ok(json!({
        "cniVersion": list.cni_version,
        "name": list.name,
        "disableCheck": list.disable_check,
        "disableGC": list.disable_gc,
        "loadOnlyInlinedPlugins": true,
        "plugins": plugins,
    }))
}

fn list_of(config: &Value) -> Result<NetworkConfigList> {
    NetworkConfigList::from_bytes(&libcni::go_json(config))
}

/// One recorded attachment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    network: String,
    ifname: String,
    master: bool,
    /// The network list exactly as run (static IPAM included).
    config: Value,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct State {
    kind: String,
    /// The container's netns at ADD: GC detaches with it (as libcni's GC uses the netns
    /// it cached); DEL uses the runtime's `CNI_NETNS`.
    #[serde(default)]
    netns: String,
    attachments: Vec<Record>,
}

fn state_path(conf: &Conf, ctx: &Ctx, container_id: &str) -> PathBuf {
    conf.state_root(&ctx.conf.name)
        .join(format!("{container_id}.json"))
}

fn load_state(path: &Path) -> Result<Option<State>> {
    let Some(bytes) = statefile::read_optional(path)? else {
        return Ok(None);
    };
    let s: State = serde_json::from_slice(&bytes)
        .with_context(|| format!("unreadable multinet state {}", path.display()))?;
    Ok(Some(s))
}

fn save_state(path: &Path, s: &State) -> Result<()> {
    statefile::write_atomic(path, &serde_json::to_vec_pretty(s)?)
}

fn runtime_conf(
    ctx: &Ctx,
    conf: &Conf,
    container_id: &str,
    netns: &str,
    ifname: &str,
) -> RuntimeConf {
    RuntimeConf {
        container_id: container_id.to_string(),
        netns: netns.to_string(),
        ifname: ifname.to_string(),
        args: parse_lenient(&ctx.args),
        capability_args: conf.runtime_config.clone().unwrap_or_default(),
    }
}

/// DEL every recorded attachment, last first. Those detached are dropped from the
/// record (rewritten after each), so a retry only redoes what failed; the record goes
/// once it is empty.
fn detach_all(
    ctx: &Ctx,
    conf: &Conf,
    path: &Path,
    state: &mut State,
    container_id: &str,
    netns: &str,
    log: &Log,
) -> Result<()> {
    let cni = conf.cni(ctx);
    let mut first_err: Option<anyhow::Error> = None;
    let mut kept = Vec::new();
    while let Some(rec) = state.attachments.pop() {
        let rt = runtime_conf(ctx, conf, container_id, netns, &rec.ifname);
        let r = list_of(&rec.config).and_then(|l| cni.del_list(&l, &rt));
        match r {
            Ok(()) => log.info(&format!(
                "{container_id}: detached network {:?} ({})",
                rec.network, rec.ifname
            )),
            Err(e) => {
                let e = e.context(format!(
                    "failed to detach network {:?} ({})",
                    rec.network, rec.ifname
                ));
                log.error(&format!("{container_id}: {e:#}"));
                kept.insert(0, rec);
                first_err.get_or_insert(e);
            }
        }
    }
    state.attachments = kept;
    if state.attachments.is_empty() {
        statefile::remove(path)?;
    } else {
        save_state(path, state)?;
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let conf = Conf::load(ctx)?;
    let log = Log::open(&conf);
    let path = state_path(&conf, ctx, &ctx.container_id);
    if statefile::read_optional(&path)?.is_some() {
        return Err(cni_err(
            Code::InvalidEnv,
            format!(
                "container {} already has multinet attachments ({}): DEL it first",
                ctx.container_id,
                path.display()
            ),
        ));
    }
    let entries = entries(ctx, &conf, &log).map_err(|e| {
        log.error(&format!("{}: {e:#}", ctx.container_id));
        e
    })?;
    // Everything is loaded and checked before the first change.
    let cni = conf.cni(ctx);
    let mut planned = Vec::new();
    for e in &entries {
        let config = network_for(&conf, e)?;
        let list = list_of(&config)?;
        // Every plugin and IPAM plugin a network names (the injected `static` too) must
        // exist, or the first networks would be attached only to be rolled back.
        for p in &list.plugins {
            let ipam = p
                .raw
                .get("ipam")
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty());
            for name in std::iter::once(p.plugin_type.as_str()).chain(ipam) {
                delegate::find_in_path(name, &cni.path)
                    .with_context(|| format!("network {:?}", e.network))?;
            }
        }
        planned.push((e, config, list));
    }

    let mut state = State {
        kind: STATE_KIND.into(),
        netns: ctx.netns.clone(),
        attachments: vec![],
    };
    let mut master: Option<CniResult> = None;
    let mut others: Vec<Interface> = Vec::new();
    for (e, config, list) in planned {
        // Recorded before it is made: whatever it leaves behind is DEL's to remove.
        state.attachments.push(Record {
            network: e.network.clone(),
            ifname: e.ifname.clone(),
            master: e.master,
            config,
        });
        let rt = runtime_conf(ctx, &conf, &ctx.container_id, &ctx.netns, &e.ifname);
        let attached = save_state(&path, &state).and_then(|()| {
            cni.add_list(&list, &rt).with_context(|| {
                format!("failed to attach network {:?} as {}", e.network, e.ifname)
            })
        });
        match attached {
            Ok(r) => {
                log.info(&format!(
                    "{}: attached network {:?} as {}",
                    ctx.container_id, e.network, e.ifname
                ));
                if e.master {
                    master = Some(r);
                } else {
                    others.extend(r.interfaces);
                }
            }
            Err(err) => {
                log.error(&format!("{}: {err:#}; rolling back", ctx.container_id));
                if let Err(undo) = detach_all(
                    ctx,
                    &conf,
                    &path,
                    &mut state,
                    &ctx.container_id,
                    &ctx.netns,
                    &log,
                ) {
                    return Err(err.context(format!("(rolling back also failed: {undo:#})")));
                }
                return Err(err);
            }
        }
    }
    let mut result = master.ok_or_else(|| cni_err(Code::Internal, "no master attachment"))?;
    result.interfaces.extend(others);
    result.cni_version = ctx.version().to_string();
    Ok(result)
}

fn del(ctx: &Ctx) -> Result<()> {
    let conf = Conf::for_teardown(ctx);
    let log = Log::open(&conf);
    let path = state_path(&conf, ctx, &ctx.container_id);
    let mut state = match load_state(&path) {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(()),
        Err(e) if path.exists() => {
            // Nothing in it can be used; keeping it would fail every DEL to come.
            log.error(&format!("{e:#}; removing it"));
            eprintln!("multinet: {e:#}; removing it");
            return statefile::remove(&path);
        }
        Err(e) => return Err(e),
    };
    detach_all(
        ctx,
        &conf,
        &path,
        &mut state,
        &ctx.container_id,
        &ctx.netns,
        &log,
    )
}

fn check(ctx: &Ctx) -> Result<()> {
    let conf = Conf::load(ctx)?;
    let path = state_path(&conf, ctx, &ctx.container_id);
    let Some(state) = load_state(&path)? else {
        return Err(cni_err(
            Code::UnknownContainer,
            format!("container {} has no multinet attachments", ctx.container_id),
        ));
    };
    let cni = conf.cni(ctx);
    for rec in &state.attachments {
        let rt = runtime_conf(ctx, &conf, &ctx.container_id, &ctx.netns, &rec.ifname);
        list_of(&rec.config)
            .and_then(|l| cni.check_list(&l, &rt))
            .with_context(|| format!("network {:?} ({})", rec.network, rec.ifname))?;
    }
    Ok(())
}

/// Detach the recorded attachments of every container not in the valid list.
fn gc(ctx: &Ctx) -> Result<()> {
    let conf = Conf::for_teardown(ctx);
    let log = Log::open(&conf);
    let valid = ctx.valid_attachments()?;
    let root = conf.state_root(&ctx.conf.name);
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to list {}", root.display())),
    };
    let mut errs = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') || valid.iter().any(|(v, _)| v == id) {
            continue;
        }
        let path = e.path();
        let r = load_state(&path).and_then(|s| match s {
            Some(mut s) => {
                let netns = s.netns.clone();
                detach_all(ctx, &conf, &path, &mut s, id, &netns, &log)
            }
            None => Ok(()),
        });
        if let Err(err) = r {
            errs.push(format!("container {id}: {err:#}"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("GC: {}", errs.join("; ")))
    }
}

/// With a fixed list: every network must be ready (its plugins' STATUS). With a backend
/// the networks are not known before a pod asks.
fn status(ctx: &Ctx) -> Result<()> {
    let conf = Conf::load(ctx)?;
    let Some(list) = &conf.networks else {
        return Ok(());
    };
    let cni = conf.cni(ctx);
    for e in entries_from(list, Source::Config)? {
        let l = list_of(&network_for(&conf, &e)?)?;
        cni.status_list(&l)
            .with_context(|| format!("network {:?}", e.network))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnibox::error::CniError;

    fn code_msg(r: Result<Vec<Entry>>) -> (u32, String) {
        let c = CniError::from_anyhow(&r.unwrap_err());
        (c.code, c.msg)
    }

    #[test]
    fn masks() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(prefix_len("255.255.255.0", v4), Some(24));
        assert_eq!(prefix_len("255.255.255.255", v4), Some(32));
        assert_eq!(prefix_len("0.0.0.0", v4), Some(0));
        assert_eq!(prefix_len("24", v4), Some(24));
        assert_eq!(prefix_len("ffff:ffff:ffff:ffff::", v6), Some(64));
        assert_eq!(prefix_len("64", v6), Some(64));
        for bad in ["255.0.255.0", "33", "", "x", "ffff::"] {
            assert_eq!(prefix_len(bad, v4), None, "{bad}");
        }
        assert_eq!(prefix_len("255.255.255.0", v6), None);
    }

    #[test]
    fn a_good_answer() {
        let body = br#"{"code":0,"message":"ok","data":[
            {"type":"net1","podIp":"192.168.1.2","subnetMask":"255.255.255.0","gateway":"192.168.1.1","ifName":"eth0","master":true},
            {"type":"net2","podIp":"10.9.0.5","subnetMask":"255.255.0.0","ifName":"net1"}]}"#;
        let e = parse_answer(body, "p").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].address.unwrap().to_string(), "192.168.1.2/24");
        assert_eq!(e[0].gateway, Some("192.168.1.1".parse().unwrap()));
        assert!(e[0].master && !e[1].master);
        assert_eq!((e[1].gateway, e[1].ifname.as_str()), (None, "net1"));
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        let one = |entry: &str| format!(r#"{{"code":0,"data":[{{{entry}}}]}}"#);
        let ok = r#""type":"n","podIp":"10.0.0.2","subnetMask":"255.255.255.0","ifName":"eth0","master":true"#;
        for (body, code, want) in [
            ("<html>".to_string(), 6, "not JSON"),
            ("[1]".to_string(), 6, "expected an object"),
            (
                r#"{"code":"0","data":[]}"#.to_string(),
                6,
                "\"code\" must be an integer",
            ),
            (
                r#"{"code":0.5,"data":[]}"#.to_string(),
                6,
                "\"code\" must be an integer",
            ),
            (r#"{"data":[]}"#.to_string(), 6, "\"code\" is missing"),
            (
                r#"{"code":3,"message":"no such pod"}"#.to_string(),
                999,
                "refused pod \"p\": code 3: no such pod",
            ),
            (
                r#"{"code":0,"data":{}}"#.to_string(),
                6,
                "\"data\" must be a list",
            ),
            (r#"{"code":0,"data":[]}"#.to_string(), 6, "lists no network"),
            (
                r#"{"code":0,"data":[5]}"#.to_string(),
                6,
                "data[0]: expected an object",
            ),
            (
                one(&ok.replace("\"n\"", "7")),
                6,
                "\"type\" must be a string",
            ),
            (
                one(&ok.replace("10.0.0.2", "10.0.0.300")),
                6,
                "\"podIp\": \"10.0.0.300\" is not an IP",
            ),
            (
                one(&ok.replace("255.255.255.0", "255.0.255.0")),
                6,
                "\"subnetMask\": \"255.0.255.0\"",
            ),
            (
                one(&format!(r#"{ok},"gateway":"10.9.9.9""#)),
                6,
                "\"gateway\": 10.9.9.9 is not another address of 10.0.0.0/24",
            ),
            (
                one(&ok.replace("true", "\"yes\"")),
                6,
                "\"master\" must be true or false",
            ),
            (
                one(&ok.replace("true", "false")),
                6,
                "no entry is the master",
            ),
            (one(&ok.replace("eth0", "a/b")), 6, "\"ifName\""),
            (
                format!(r#"{{"code":0,"data":[{{{ok}}},{{{ok}}}]}}"#),
                6,
                "already used",
            ),
            (
                format!(
                    r#"{{"code":0,"data":[{{{ok}}},{{{}}}]}}"#,
                    ok.replace("eth0", "eth1")
                ),
                6,
                "2 entries are the master",
            ),
        ] {
            let (c, m) = code_msg(parse_answer(body.as_bytes(), "p"));
            assert_eq!(c, code, "{body}: {m}");
            assert!(m.contains(want), "{body}: {m}");
        }
    }

    #[test]
    fn fixed_list_errors_are_config_errors() {
        let (c, m) = code_msg(entries_from(
            &[json!({"type": "n", "ifName": "eth0"})],
            Source::Config,
        ));
        assert_eq!(c, 7);
        assert!(m.starts_with("\"networks\": no entry is the master"), "{m}");
    }
}
