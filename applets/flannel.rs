//! flannel: the meta plugin of the flannel overlay. It does no kernel work itself: it
//! reads the node's lease from flanneld's `subnetFile` (default
//! `/run/flannel/subnet.env`), turns it into the config of another plugin (the
//! "delegate", `bridge` with `host-local` IPAM unless `delegate` says otherwise), saves
//! that config under `dataDir/<container id>` (default `/var/lib/cni/flannel`) and runs
//! the delegate with it. DEL runs the delegate's DEL with the saved copy, so it works
//! after the lease or the flannel config changed, then removes the copy.
//!
//! The delegate config is built as the upstream flannel CNI plugin
//! (github.com/flannel-io/cni-plugin) builds it:
//! - `delegate` keys are kept; `name` is the network's, `type` defaults to `bridge`,
//!   `ipMasq` to the opposite of `FLANNEL_IPMASQ` (masquerade here only when flanneld
//!   does not), `mtu` to `FLANNEL_MTU`, `isGateway` (bridge only) to true, `cniVersion`
//!   to ours, `runtimeConfig` to ours;
//! - `ipam` is our `ipam` (if any) with `type` defaulting to `host-local`, `ranges` set
//!   to one range set per family holding the node's subnet, and `routes` the configured
//!   ones followed by one route per flannel network.
//!
//! Beyond upstream: a subnet file line without a value, a missing variable or a value of
//! the wrong family is a config error naming it (upstream crashes on the first); a missing
//! subnet file is "try again later" (flanneld has not written its lease yet); a failed ADD
//! removes the saved copy; the copy is removed only once the delegate's DEL succeeded;
//! CHECK runs the delegate's CHECK; STATUS reports a missing lease; GC is forwarded to the
//! delegate and drops the saved copies of containers no longer valid.

use anyhow::{Context, Result};
use cnibox::cni::delegate::{self, Attachment};
use cnibox::cni::skel::{Applet, Command, Ctx, Kind, Plugin, ALL};
use cnibox::cni::types::route_json;
use cnibox::cni::CniResult;
use cnibox::cni::Route;
use cnibox::error::{cni_err, Code};
use cnibox::ipam::conf::parse_routes;
use cnibox::statefile;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

pub const APPLET: Applet = Applet {
    name: "flannel",
    about: "meta plugin: flannel's node lease turned into a bridge (or other) delegate",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        // CNI_ARGS are the delegate's business: they reach it unchanged.
        cni_args: None,
        add,
        del,
        check,
        gc: Some(gc),
        status: Some(status),
    }),
};

const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// flanneld writes a few hundred bytes; anything this large is not its file.
const MAX_SUBNET_FILE: u64 = 1 << 20;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conf {
    #[serde(rename = "subnetFile")]
    subnet_file: String,
    #[serde(rename = "dataDir")]
    data_dir: String,
    delegate: Option<Map<String, Value>>,
    ipam: Option<Map<String, Value>>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: Option<Map<String, Value>>,
}

impl Conf {
    fn load(ctx: &Ctx) -> Result<Conf> {
        ctx.decode()
    }

    fn subnet_file(&self) -> &str {
        if self.subnet_file.is_empty() {
            DEFAULT_SUBNET_FILE
        } else {
            &self.subnet_file
        }
    }

    fn data_dir(&self) -> &Path {
        Path::new(if self.data_dir.is_empty() {
            DEFAULT_DATA_DIR
        } else {
            &self.data_dir
        })
    }

    /// Where the delegate config of `container_id` is saved.
    fn saved_path(&self, container_id: &str) -> PathBuf {
        self.data_dir().join(container_id)
    }
}

/// The node's lease, as flanneld writes it.
#[derive(Debug, Default, PartialEq)]
struct SubnetEnv {
    networks: Vec<IpNet>,
    subnet: Option<IpNet>,
    ip6_networks: Vec<IpNet>,
    ip6_subnet: Option<IpNet>,
    mtu: Option<u32>,
    ipmasq: Option<bool>,
}

impl SubnetEnv {
    fn load(path: &str) -> Result<SubnetEnv> {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                // flanneld has not written its lease yet: a retry will succeed.
                Code::TryAgainLater
            } else {
                Code::Io
            };
            cni_err(
                code,
                format!("failed to load flannel subnet file {path}: {e} (check the flannel pod log for this node)"),
            )
        })?;
        let mut text = String::new();
        f.take(MAX_SUBNET_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| cni_err(Code::Io, format!("failed to read {path}: {e}")))?;
        if text.len() as u64 > MAX_SUBNET_FILE {
            return Err(bad_env(
                path,
                "is larger than 1 MiB: not a flannel subnet file",
            ));
        }
        Self::parse(path, &text)
    }

    fn parse(path: &str, text: &str) -> Result<SubnetEnv> {
        let mut se = SubnetEnv::default();
        for (i, line) in text.lines().enumerate() {
            let (key, value) = match line.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (line, None),
            };
            let known = [
                "FLANNEL_NETWORK",
                "FLANNEL_SUBNET",
                "FLANNEL_IPV6_NETWORK",
                "FLANNEL_IPV6_SUBNET",
                "FLANNEL_MTU",
                "FLANNEL_IPMASQ",
            ];
            if !known.contains(&key) {
                continue;
            }
            let Some(value) = value else {
                return Err(bad_env(
                    path,
                    format!("line {}: {key} has no value (expected {key}=...)", i + 1),
                ));
            };
            let at = |what: &str| format!("line {}: {key}={value:?}: {what}", i + 1);
            let cidr = |s: &str, v6: bool| -> Result<IpNet> {
                let n: IpNet = s
                    .parse()
                    .map_err(|_| bad_env(path, at(&format!("{s:?} is not a CIDR"))))?;
                if n.addr().is_ipv6() != v6 {
                    let fam = if v6 { "IPv6" } else { "IPv4" };
                    return Err(bad_env(path, at(&format!("{s:?} is not an {fam} CIDR"))));
                }
                // Go's ParseCIDR: the network, host bits cleared.
                Ok(n.trunc())
            };
            let list = |v6: bool| -> Result<Vec<IpNet>> {
                let mut out: Vec<IpNet> = Vec::new();
                for s in value.split(',') {
                    let n = cidr(s, v6)?;
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                Ok(out)
            };
            match key {
                "FLANNEL_NETWORK" => se.networks = list(false)?,
                "FLANNEL_IPV6_NETWORK" => se.ip6_networks = list(true)?,
                "FLANNEL_SUBNET" => se.subnet = Some(cidr(value, false)?),
                "FLANNEL_IPV6_SUBNET" => se.ip6_subnet = Some(cidr(value, true)?),
                "FLANNEL_MTU" => {
                    let mtu = value
                        .parse::<u32>()
                        .ok()
                        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| bad_env(path, at("not an MTU")))?;
                    se.mtu = Some(mtu);
                }
                // Upstream: anything but "true" is false.
                _ => se.ipmasq = Some(value == "true"),
            }
        }
        let mut missing = Vec::new();
        if se.networks.is_empty() && se.ip6_networks.is_empty() {
            missing.push("FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK)");
        }
        if se.subnet.is_none() && se.ip6_subnet.is_none() {
            missing.push("FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET)");
        }
        if se.mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if se.ipmasq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        if !missing.is_empty() {
            return Err(bad_env(path, format!("is missing {}", missing.join(", "))));
        }
        Ok(se)
    }
}

/// A subnet file flanneld would not write: code 7 naming the file.
fn bad_env(path: &str, what: impl std::fmt::Display) -> anyhow::Error {
    cni_err(
        Code::InvalidConfig,
        format!("flannel subnet file {path} {what}"),
    )
}

/// The delegate config for `conf` and the lease `se`, exactly as upstream assembles it,
/// keys ordered as Go's encoder orders a map.
fn delegate_config(ctx: &Ctx, conf: &Conf, se: &SubnetEnv) -> Result<Map<String, Value>> {
    let mut d = conf.delegate.clone().unwrap_or_default();
    match d.get("type") {
        None | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(cni_err(
                Code::InvalidConfig,
                "\"delegate\": \"type\", if present, must be a string",
            ))
        }
    }
    for key in ["name", "ipam"] {
        if d.contains_key(key) {
            return Err(cni_err(
                Code::InvalidConfig,
                format!("\"delegate\" must not have a {key:?} key: flannel sets it"),
            ));
        }
    }
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), Value::Object(rc.clone()));
    }
    d.insert("name".into(), json!(ctx.conf.name));
    d.entry("type").or_insert_with(|| json!("bridge"));
    d.entry("ipMasq")
        .or_insert_with(|| json!(!se.ipmasq.unwrap_or(false)));
    d.entry("mtu").or_insert_with(|| json!(se.mtu.unwrap_or(0)));
    if d.get("type") == Some(&json!("bridge")) {
        d.entry("isGateway").or_insert(json!(true));
    }
    // Upstream reads cniVersion from the raw config, so "no version" stays absent.
    if let Some(Value::String(v)) = ctx.raw.get("cniVersion") {
        if !v.is_empty() {
            d.insert("cniVersion".into(), json!(v));
        }
    }

    let mut ipam = conf.ipam.clone().unwrap_or_default();
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    let ranges: Vec<Value> = [se.subnet, se.ip6_subnet]
        .into_iter()
        .flatten()
        .map(|sn| json!([{"subnet": sn.to_string()}]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes: Vec<Route> = match ipam.get("routes") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => parse_routes(a, "ipam.routes")?,
        Some(other) => {
            return Err(cni_err(
                Code::Decode,
                format!("\"ipam.routes\": expected a list of routes, got {other}"),
            ))
        }
    };
    routes.extend(
        se.networks
            .iter()
            .chain(&se.ip6_networks)
            .map(|n| Route::new(*n, None)),
    );
    let mut d = go_order(Value::Object(d));
    let mut ipam = go_order(Value::Object(ipam));
    // Routes are Go structs, not maps: their keys stay in field order.
    if let Some(o) = ipam.as_object_mut() {
        o.insert(
            "routes".into(),
            Value::Array(routes.iter().map(route_json).collect()),
        );
        o.sort_keys();
    }
    let mut out = d.as_object_mut().map(std::mem::take).unwrap_or_default();
    out.insert("ipam".into(), ipam);
    out.sort_keys();
    Ok(out)
}

/// Objects with their keys sorted, all the way down (Go marshals maps that way).
fn go_order(v: Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut o: Map<String, Value> = o.into_iter().map(|(k, v)| (k, go_order(v))).collect();
            o.sort_keys();
            Value::Object(o)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(go_order).collect()),
        other => other,
    }
}

fn plugin_of(config: &Map<String, Value>) -> Result<String> {
    match config.get("type") {
        Some(Value::String(t)) if !t.is_empty() => Ok(t.clone()),
        _ => Err(cni_err(
            Code::InvalidConfig,
            "the delegate config has no \"type\"",
        )),
    }
}

fn attachment<'a>(ctx: &'a Ctx, plugin: &'a str, config: Vec<u8>) -> Attachment<'a> {
    Attachment {
        plugin,
        config,
        ifname: &ctx.ifname,
        path: &ctx.path,
    }
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let conf = Conf::load(ctx)?;
    let se = SubnetEnv::load(conf.subnet_file())?;
    let config = delegate_config(ctx, &conf, &se)?;
    let plugin = plugin_of(&config)?;
    // Before anything is written: the delegate must exist.
    delegate::find_in_path(&plugin, &ctx.path)
        .context("flannel delegate (\"delegate\": {\"type\": ...})")?;
    let bytes = serde_json::to_vec(&config)?;
    let saved = conf.saved_path(&ctx.container_id);
    statefile::write_atomic(&saved, &bytes)
        .context("failed to save the delegate config for DEL")?;
    let att = attachment(ctx, &plugin, bytes);
    match att.add(ctx) {
        Ok(mut r) => {
            r.cni_version = ctx.version().to_string();
            Ok(r)
        }
        Err(e) => {
            // The delegate cleans up after a failed ADD itself; its DEL makes sure of it
            // for delegates that do not. Then nothing of this ADD is left.
            let _ = att.run(ctx, Command::Del);
            let _ = statefile::remove(&saved);
            Err(e.context(format!("failed to delegate ADD to {plugin:?}")))
        }
    }
}

/// The saved delegate config of this container, if any. A copy that is not a JSON
/// object naming a plugin is reported and dropped: nothing can be done with it.
fn load_saved(conf: &Conf, ctx: &Ctx) -> Result<Option<(PathBuf, Map<String, Value>)>> {
    let path = conf.saved_path(&ctx.container_id);
    let Some(bytes) = statefile::read_optional(&path)? else {
        return Ok(None);
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) if plugin_of(&o).is_ok() => Ok(Some((path, o))),
        _ => {
            eprintln!(
                "flannel: {} is not a delegate config; removing it",
                path.display()
            );
            statefile::remove(&path)?;
            Ok(None)
        }
    }
}

fn del(ctx: &Ctx) -> Result<()> {
    // Only `dataDir` matters: a config ADD would refuse must not make DEL fail.
    let data_dir = ctx
        .raw
        .as_object()
        .and_then(|o| cnibox::cni::decode::get_ci(o, "dataDir"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let conf = Conf {
        data_dir,
        ..Conf::default()
    };
    let Some((path, saved)) = load_saved(&conf, ctx)? else {
        // Never added, or already deleted.
        return Ok(());
    };
    let plugin = plugin_of(&saved)?;
    attachment(ctx, &plugin, serde_json::to_vec(&saved)?)
        .run(ctx, Command::Del)
        .with_context(|| format!("failed to delegate DEL to {plugin:?}"))?;
    // Only now: a failed DEL is retried by the runtime and needs the copy again.
    statefile::remove(&path)
}

fn check(ctx: &Ctx) -> Result<()> {
    let conf = Conf::load(ctx)?;
    let Some((_, mut saved)) = load_saved(&conf, ctx)? else {
        return Err(cni_err(
            Code::UnknownContainer,
            format!(
                "no saved delegate config for container {} in {}",
                ctx.container_id,
                conf.data_dir().display()
            ),
        ));
    };
    let plugin = plugin_of(&saved)?;
    if let Some(prev) = &ctx.conf.prev_result {
        saved.insert("prevResult".into(), prev.clone());
    }
    attachment(ctx, &plugin, serde_json::to_vec(&saved)?)
        .run(ctx, Command::Check)
        .with_context(|| format!("delegate {plugin:?} CHECK"))
}

fn status(ctx: &Ctx) -> Result<()> {
    let conf = Conf::load(ctx)?;
    let se = SubnetEnv::load(conf.subnet_file()).map_err(|e| {
        cni_err(
            Code::NotAvailable,
            format!("no flannel lease on this node: {e:#}"),
        )
    })?;
    let config = delegate_config(ctx, &conf, &se)?;
    let plugin = plugin_of(&config)?;
    attachment(ctx, &plugin, serde_json::to_vec(&config)?).run(ctx, Command::Status)
}

/// Forward GC to the delegate (its IPAM frees what no valid attachment holds), then drop
/// the saved copies of containers the runtime no longer knows.
fn gc(ctx: &Ctx) -> Result<()> {
    let conf = Conf::load(ctx)?;
    let valid = ctx.valid_attachments()?;
    if let Ok(se) = SubnetEnv::load(conf.subnet_file()) {
        let mut config = delegate_config(ctx, &conf, &se)?;
        let plugin = plugin_of(&config)?;
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            if let Some(v) = ctx.raw.get(key) {
                config.insert(key.into(), v.clone());
            }
        }
        attachment(ctx, &plugin, serde_json::to_vec(&config)?).run(ctx, Command::Gc)?;
    }
    let dir = conf.data_dir();
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to list {}", dir.display())),
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') || valid.iter().any(|(v, _)| *v == id) {
            continue;
        }
        // A data dir may be shared: only copies saved for this network are ours to judge.
        let ours = statefile::read_optional(&e.path())?
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v.get("name") == Some(&json!(ctx.conf.name)));
        if ours {
            statefile::remove(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnibox::error::CniError;

    fn parse(text: &str) -> Result<SubnetEnv> {
        SubnetEnv::parse("subnet.env", text)
    }

    #[test]
    fn lease_is_read_like_upstream() {
        let se = parse("FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\nOTHER=x\n").unwrap();
        assert_eq!(se.networks.len(), 2, "duplicates dropped");
        assert_eq!(se.subnet.unwrap().to_string(), "10.1.17.0/24");
        assert_eq!((se.mtu, se.ipmasq), (Some(1472), Some(true)));
        let se = parse("FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=yes\n").unwrap();
        assert_eq!(se.ip6_subnet.unwrap().to_string(), "fc00::/64");
        assert_eq!(se.ipmasq, Some(false), "only \"true\" is true");
    }

    #[test]
    fn bad_leases_name_the_variable() {
        for (text, want) in [
            ("foo=bar", "is missing FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK), FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET), FLANNEL_MTU, FLANNEL_IPMASQ"),
            ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPMASQ=true", "is missing FLANNEL_MTU"),
            ("FLANNEL_MTU\n", "line 1: FLANNEL_MTU has no value"),
            ("FLANNEL_MTU=abc\n", "line 1: FLANNEL_MTU=\"abc\": not an MTU"),
            ("FLANNEL_MTU=-1\n", "not an MTU"),
            ("FLANNEL_SUBNET=10.1.17.1/33\n", "is not a CIDR"),
            ("FLANNEL_SUBNET=fc00::1/64\n", "is not an IPv4 CIDR"),
            ("FLANNEL_IPV6_NETWORK=10.0.0.0/8\n", "is not an IPv6 CIDR"),
            ("FLANNEL_NETWORK=\n", "\"\" is not a CIDR"),
        ] {
            let e = CniError::from_anyhow(&parse(text).unwrap_err());
            assert_eq!(e.code, 7, "{text}");
            assert!(e.msg.contains(want), "{text}: {}", e.msg);
            assert!(e.msg.contains("subnet.env"), "{}", e.msg);
        }
    }
}
