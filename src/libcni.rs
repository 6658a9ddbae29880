//! The runtime side of CNI, as the reference's `libcni` (v1.3.0) does it: load a network
//! from a config directory, run its plugin list for ADD/CHECK/DEL/GC/STATUS, and keep
//! each attachment's result in libcni's cache layout, so a runtime using libcni and
//! cnibox read each other's cache files.
//!
//! - [`load`] finds a network by name in a directory: `*.conflist` files first (sorted
//!   by name), then the legacy single-plugin `*.conf`/`*.json` files, wrapped in a list.
//! - [`Cni`] runs a [`NetworkConfigList`] for a [`RuntimeConf`]: each plugin gets the
//!   list's `name` and `cniVersion`, the previous plugin's result as `prevResult`, and
//!   the runtime's capability arguments it declared in `capabilities` as
//!   `runtimeConfig`. Plugins are found in `CNI_PATH`; one of our own applets runs
//!   in-process, anything else is exec'd ([`crate::cni::delegate::invoke`]).
//! - The cache: `<cache dir>/results/<net>-<containerID>-<ifname>` (dir 0700, file
//!   0600), `{"kind":"cniCacheV1", ...}` with the list's bytes base64-encoded and the
//!   final ADD result; CHECK and DEL get that result as `prevResult`.
//!
//! Plugin stdin is marshalled the way Go's `encoding/json` marshals a map (keys sorted,
//! compact), so what a plugin reads, and what the cache holds, is byte for byte what
//! libcni would have produced.

use crate::cni::delegate::{self, Invocation};
use crate::cni::skel::{self, Command};
use crate::cni::types::{parse_version, CniResult, CURRENT_VERSION};
use crate::error::{cni_err, Code};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// libcni's default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// The cache file's `kind`.
pub const CACHE_KIND: &str = "cniCacheV1";

// ---------------------------------------------------------------------------------------
// Configuration

/// One plugin of a list, as written in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    /// `type`: the plugin binary (never empty).
    pub plugin_type: String,
    /// The plugin's own `name`, if it has one (only used in error messages: every
    /// plugin is run with the list's name).
    pub name: String,
    /// `capabilities`: which runtime capability arguments it wants in `runtimeConfig`.
    pub capabilities: BTreeMap<String, bool>,
    /// The whole object, as written.
    pub raw: Map<String, Value>,
}

/// A network: a named, versioned list of plugins (a `.conflist`, or a wrapped `.conf`).
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    /// The version every plugin is run with (the highest usable of `cniVersion` and
    /// `cniVersions`); may be empty (= 0.1.0).
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub load_only_inlined_plugins: bool,
    pub plugins: Vec<PluginConfig>,
    /// The bytes the list was read from (cached with each attachment).
    pub bytes: Vec<u8>,
}

/// Go's view of a plugin object: only these keys must have the right type.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct PluginKeys {
    #[serde(rename = "cniVersion")]
    _cni_version: String,
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
    capabilities: Option<BTreeMap<String, bool>>,
    ipam: Option<IpamKeys>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct IpamKeys {
    #[serde(rename = "type")]
    _plugin_type: String,
}

impl PluginConfig {
    /// Parse one plugin object (libcni's `NetworkPluginConfFromBytes`).
    pub fn from_value(v: &Value) -> Result<PluginConfig> {
        let keys: PluginKeys = crate::cni::decode::from_value(v.clone())
            .map_err(|e| anyhow!("error parsing configuration: {e}"))?;
        let _ = keys.ipam;
        let raw = v
            .as_object()
            .cloned()
            .ok_or_else(|| anyhow!("error parsing configuration: not a JSON object"))?;
        if keys.plugin_type.is_empty() {
            bail!("error parsing configuration: missing 'type'");
        }
        Ok(PluginConfig {
            plugin_type: keys.plugin_type,
            name: keys.name,
            capabilities: keys.capabilities.unwrap_or_default(),
            raw,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<PluginConfig> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| anyhow!("error parsing configuration: {e}"))?;
        PluginConfig::from_value(&v)
    }

    /// `type="bridge" name="x"`, as libcni names a plugin in its errors.
    pub fn description(&self) -> String {
        let mut s = format!("type={:?}", self.plugin_type);
        if !self.name.is_empty() {
            s.push_str(&format!(" name={:?}", self.name));
        }
        s
    }
}

fn version_gt(a: &str, b: &str) -> Result<bool> {
    Ok(go_version(a)? > go_version(b)?)
}

/// A version as the reference parses it: "" is 0.1.0.
fn go_version(v: &str) -> Result<(u64, u64, u64)> {
    if v.is_empty() {
        return Ok((0, 1, 0));
    }
    parse_version(v)
}

/// `v >= min`; an unparseable version is an error.
pub fn version_at_least(v: &str, min: &str) -> Result<bool> {
    Ok(go_version(v)? >= go_version(min)?)
}

impl NetworkConfigList {
    /// Parse a `.conflist` (libcni's `NetworkConfFromBytes`). A list without `plugins`
    /// is accepted here (its plugins may live in `<dir>/<name>/*.conf`).
    pub fn from_bytes(bytes: &[u8]) -> Result<NetworkConfigList> {
        let pfx = "error parsing configuration list";
        let v: Value = serde_json::from_slice(bytes).map_err(|e| anyhow!("{pfx}: {e}"))?;
        let Value::Object(o) = v else {
            bail!("{pfx}: not a JSON object");
        };
        let name = match o.get("name") {
            None => bail!("{pfx}: no name"),
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail!("{pfx}: invalid name type {}", json_type(other)),
        };
        let mut cni_version = match o.get("cniVersion") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail!("{pfx}: invalid cniVersion type {}", json_type(other)),
        };
        if let Some(raw) = o.get("cniVersions") {
            let Value::Array(list) = raw else {
                bail!("{pfx}: invalid type for cniVersions: {}", json_type(raw));
            };
            let mut vs = Vec::new();
            for (i, rv) in list.iter().enumerate() {
                let Value::String(s) = rv else {
                    bail!(
                        "{pfx}: invalid type for cniVersions index {i}: {}",
                        json_type(rv)
                    );
                };
                // Versions newer than the one we implement are skipped.
                match version_gt(s, CURRENT_VERSION) {
                    Err(e) => bail!("{pfx}: invalid cniVersions entry {s} at index {i}: {e}"),
                    Ok(false) => vs.push(s.clone()),
                    Ok(true) => {}
                }
            }
            if !cni_version.is_empty() {
                match version_gt(&cni_version, CURRENT_VERSION) {
                    Err(e) => bail!("{pfx}: invalid cniVersion {cni_version}: {e}"),
                    Ok(false) => vs.push(cni_version.clone()),
                    Ok(true) => {}
                }
            }
            if let Some(best) = vs.iter().max_by_key(|v| go_version(v).unwrap_or((0, 0, 0))) {
                cni_version = best.clone();
            }
        }
        let read_bool = |key: &str| -> Result<bool> {
            match o.get(key) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(Value::String(s)) => match s.to_lowercase().as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    other => bail!("{pfx}: invalid value {other:?} for {key}"),
                },
                Some(other) => bail!("{pfx}: invalid type {} for {key}", json_type(other)),
            }
        };
        let mut list = NetworkConfigList {
            name,
            cni_version,
            disable_check: read_bool("disableCheck")?,
            disable_gc: read_bool("disableGC")?,
            load_only_inlined_plugins: read_bool("loadOnlyInlinedPlugins")?,
            plugins: Vec::new(),
            bytes: bytes.to_vec(),
        };
        let plugins = match o.get("plugins") {
            None if list.load_only_inlined_plugins => {
                bail!("{pfx}: `loadOnlyInlinedPlugins` is true, and no 'plugins' key")
            }
            None => return Ok(list),
            Some(Value::Array(a)) => a,
            Some(other) => bail!("{pfx}: invalid 'plugins' type {}", json_type(other)),
        };
        if plugins.is_empty() {
            bail!("{pfx}: no plugins in list");
        }
        for (i, p) in plugins.iter().enumerate() {
            let pc = PluginConfig::from_value(p)
                .with_context(|| format!("failed to parse plugin config {i}"))?;
            list.plugins.push(pc);
        }
        Ok(list)
    }

    /// Read a `.conflist` file, adding the plugins in `<dir>/<name>/*.conf` unless
    /// `loadOnlyInlinedPlugins` is set; a list that ends up with no plugin is an error.
    pub fn from_file(path: &Path) -> Result<NetworkConfigList> {
        let bytes =
            std::fs::read(path).with_context(|| format!("error reading {}", path.display()))?;
        let mut list = NetworkConfigList::from_bytes(&bytes)?;
        if !list.load_only_inlined_plugins {
            let dir = path.parent().unwrap_or(Path::new(".")).join(&list.name);
            let files = conf_files(&dir, &["conf"]).with_context(|| {
                format!("failed to read plugin config files in {}", dir.display())
            })?;
            for f in files {
                let b =
                    std::fs::read(&f).with_context(|| format!("error reading {}", f.display()))?;
                list.plugins.push(PluginConfig::from_bytes(&b)?);
            }
        }
        if list.plugins.is_empty() {
            bail!("no plugin configs found");
        }
        Ok(list)
    }

    /// Wrap a single-plugin config in a list of one (libcni's `ConfListFromConf`).
    pub fn from_plugin(p: &PluginConfig) -> Result<NetworkConfigList> {
        let version = p
            .raw
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut o = Map::new();
        o.insert("name".into(), Value::String(p.name.clone()));
        o.insert("cniVersion".into(), Value::String(version));
        o.insert(
            "plugins".into(),
            Value::Array(vec![Value::Object(p.raw.clone())]),
        );
        NetworkConfigList::from_bytes(&go_json(&Value::Object(o)))
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// The files in `dir` whose extension is one of `exts` (without the dot), sorted by
/// name; a missing directory has none.
pub fn conf_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let p = e.path();
        if p.extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| exts.contains(&x))
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Find network `name` in `dir` (libcni's `LoadNetworkConf`): the first `.conflist`
/// with that name, else the first `.conf`/`.json` plugin config with that name,
/// wrapped in a list. Any unreadable file met on the way is an error.
pub fn load(dir: &Path, name: &str) -> Result<NetworkConfigList> {
    let lists = conf_files(dir, &["conflist"])?;
    for f in &lists {
        let l = NetworkConfigList::from_file(f)?;
        if l.name == name {
            return Ok(l);
        }
    }
    let singles = conf_files(dir, &["conf", "json"])?;
    if singles.is_empty() && lists.is_empty() {
        bail!("no net configurations found in {}", dir.display());
    }
    for f in &singles {
        let b = std::fs::read(f).with_context(|| format!("error reading {}", f.display()))?;
        let p = PluginConfig::from_bytes(&b)?;
        if p.name == name {
            return NetworkConfigList::from_plugin(&p);
        }
    }
    bail!(
        "no net configuration with name {name:?} in {}",
        dir.display()
    )
}

// ---------------------------------------------------------------------------------------
// Running a list

/// What the runtime knows about one attachment (libcni's `RuntimeConf`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `mac`, ...); each plugin gets those it
    /// declares in `capabilities`, in `runtimeConfig`.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    fn args_string(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// An attachment found in the cache (libcni's `NetworkAttachment`).
#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    pub container_id: String,
    pub network: String,
    pub ifname: String,
    /// The list bytes the attachment was made with.
    pub config: Vec<u8>,
    pub netns: String,
    pub args: Vec<(String, String)>,
    pub capability_args: Map<String, Value>,
}

/// A runtime: where plugins are found and where results are cached.
#[derive(Clone, Debug)]
pub struct Cni {
    /// `CNI_PATH`, colon-separated, passed on to every plugin.
    pub path: String,
    /// Default `/var/lib/cni`; results go to `<cache_dir>/results`.
    pub cache_dir: PathBuf,
}

impl Cni {
    pub fn new(path: &str) -> Cni {
        Cni {
            path: path.to_string(),
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
        }
    }

    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Cni {
        self.cache_dir = dir.into();
        self
    }

    fn run(
        &self,
        p: &PluginConfig,
        cmd: Command,
        rt: &RuntimeConf,
        stdin: &[u8],
    ) -> Result<Vec<u8>> {
        let args = rt.args_string();
        let inv = Invocation {
            command: cmd,
            container_id: &rt.container_id,
            netns: &rt.netns,
            ifname: &rt.ifname,
            args: &args,
            path: &self.path,
            stdin,
        };
        delegate::invoke(&p.plugin_type, &inv)
    }

    /// ADD every plugin in order, each getting the previous one's result; cache and
    /// return the last result (in the version the last plugin printed it).
    pub fn add_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<CniResult> {
        let mut prev: Option<CniResult> = None;
        for p in &list.plugins {
            let r = self
                .add_one(list, p, prev.as_ref(), rt)
                .with_context(|| format!("plugin {} failed (add)", p.description()))?;
            prev = Some(r);
        }
        let result = prev.ok_or_else(|| anyhow!("network {:?} has no plugins", list.name))?;
        self.cache_add(list, rt, &result)
            .with_context(|| format!("failed to set network {:?} cached result", list.name))?;
        Ok(result)
    }

    fn add_one(
        &self,
        list: &NetworkConfigList,
        p: &PluginConfig,
        prev: Option<&CniResult>,
        rt: &RuntimeConf,
    ) -> Result<CniResult> {
        delegate::find_in_path(&p.plugin_type, &self.path)?;
        if rt.container_id.is_empty() {
            return Err(cni_err(Code::UnknownContainer, "missing containerID"));
        }
        skel::validate_container_id(&rt.container_id)?;
        if !skel::valid_name(&list.name) {
            return Err(crate::error::CniError::new(
                Code::InvalidConfig,
                "invalid characters found in network name",
            )
            .with_details(&list.name)
            .into());
        }
        if rt.ifname.is_empty() {
            return Err(cni_err(Code::InvalidEnv, "interface name is empty"));
        }
        skel::validate_ifname(&rt.ifname)?;
        let stdin = plugin_stdin(list, p, prev, Some(rt))?;
        let out = self.run(p, Command::Add, rt, &stdin)?;
        parse_result(&out, &list.cni_version)
    }

    /// CHECK every plugin in order with the cached result (nothing when the list says
    /// `disableCheck`; an error before 0.4.0).
    pub fn check_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        if !version_at_least(&list.cni_version, "0.4.0")? {
            bail!(
                "configuration version {:?} does not support the CHECK command",
                list.cni_version
            );
        }
        if list.disable_check {
            return Ok(());
        }
        let cached = self
            .cached_result(list, rt)
            .with_context(|| format!("failed to get network {:?} cached result", list.name))?;
        for p in &list.plugins {
            delegate::find_in_path(&p.plugin_type, &self.path)?;
            let stdin = plugin_stdin(list, p, cached.as_ref(), Some(rt))?;
            self.run(p, Command::Check, rt, &stdin)?;
        }
        Ok(())
    }

    /// DEL every plugin in reverse order with the cached result (from 0.4.0; an
    /// unreadable cache entry is dropped), then remove the cache entry.
    pub fn del_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        let mut cached = None;
        if version_at_least(&list.cni_version, "0.4.0")? {
            match self.cached_result(list, rt) {
                Ok(r) => cached = r,
                Err(_) => self.cache_del(&list.name, rt),
            }
        }
        for p in list.plugins.iter().rev() {
            delegate::find_in_path(&p.plugin_type, &self.path)
                .and_then(|_| {
                    let stdin = plugin_stdin(list, p, cached.as_ref(), Some(rt))?;
                    self.run(p, Command::Del, rt, &stdin)
                })
                .with_context(|| format!("plugin {} failed (delete)", p.description()))?;
        }
        self.cache_del(&list.name, rt);
        Ok(())
    }

    /// GC (libcni's `GCNetworkList`): DEL every cached attachment of this network that
    /// is not in `valid`, then (from 1.1.0) send GC to every plugin with the valid list
    /// (`None`: no list is sent, so plugins keep nothing). Keeps going on errors and
    /// reports them all, one per line.
    pub fn gc_list(
        &self,
        list: &NetworkConfigList,
        valid: Option<&[(String, String)]>,
    ) -> Result<()> {
        if list.disable_gc {
            return Ok(());
        }
        let mut errs: Vec<String> = Vec::new();
        let cached = self.cached_attachments("").unwrap_or_default();
        for a in cached.iter().filter(|a| a.network == list.name) {
            let still_valid = valid.is_some_and(|v| {
                v.iter()
                    .any(|(c, i)| *c == a.container_id && *i == a.ifname)
            });
            if still_valid {
                continue;
            }
            let rt = RuntimeConf {
                container_id: a.container_id.clone(),
                netns: a.netns.clone(),
                ifname: a.ifname.clone(),
                args: a.args.clone(),
                capability_args: a.capability_args.clone(),
            };
            if let Err(e) = self.del_list(list, &rt) {
                errs.push(format!(
                    "failed to delete stale attachment {} {}: {e:#}",
                    rt.container_id, rt.ifname
                ));
            }
        }
        if version_at_least(&list.cni_version, "1.1.0").unwrap_or(false) {
            let atts = valid.map(|v| {
                Value::Array(
                    v.iter()
                        .map(|(c, i)| serde_json::json!({"containerID": c, "ifname": i}))
                        .collect(),
                )
            });
            for p in &list.plugins {
                let mut o = p.raw.clone();
                o.insert("name".into(), Value::String(list.name.clone()));
                o.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
                if let Some(a) = &atts {
                    o.insert("cni.dev/valid-attachments".into(), a.clone());
                    // The spec's spelling too (libcni sends both).
                    o.insert("cni.dev/attachments".into(), a.clone());
                }
                let stdin = go_json(&Value::Object(o));
                if let Err(e) = self.run(p, Command::Gc, &RuntimeConf::default(), &stdin) {
                    errs.push(format!("failed to GC plugin {}: {e:#}", p.plugin_type));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(errs.join("\n")))
        }
    }

    /// STATUS every plugin in order, stopping at the first error (nothing to ask
    /// before 1.1.0).
    pub fn status_list(&self, list: &NetworkConfigList) -> Result<()> {
        if !version_at_least(&list.cni_version, "1.1.0").unwrap_or(false) {
            return Ok(());
        }
        for p in &list.plugins {
            let mut o = p.raw.clone();
            o.insert("name".into(), Value::String(list.name.clone()));
            o.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
            self.run(
                p,
                Command::Status,
                &RuntimeConf::default(),
                &go_json(&Value::Object(o)),
            )?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // The result cache

    /// `<cache_dir>/results/<net>-<containerID>-<ifname>`.
    pub fn cache_file(&self, net: &str, rt: &RuntimeConf) -> Result<PathBuf> {
        if net.is_empty() || rt.container_id.is_empty() || rt.ifname.is_empty() {
            bail!(
                "cache file path requires network name ({net:?}), container ID ({:?}), and interface name ({:?})",
                rt.container_id,
                rt.ifname
            );
        }
        Ok(self
            .cache_dir
            .join("results")
            .join(format!("{net}-{}-{}", rt.container_id, rt.ifname)))
    }

    fn cache_add(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        result: &CniResult,
    ) -> Result<()> {
        let path = self.cache_file(&list.name, rt)?;
        let bytes = cache_entry(list, rt, result)?;
        crate::statefile::write_atomic(&path, &bytes)
    }

    fn cache_del(&self, net: &str, rt: &RuntimeConf) {
        if let Ok(p) = self.cache_file(net, rt) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The cached ADD result of `list` for `rt`, converted to the list's version;
    /// `None` when nothing is cached. Reads libcni's `cniCacheV1` entries and the older
    /// bare-result files.
    pub fn cached_result(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Option<CniResult>> {
        let path = self.cache_file(&list.name, rt)?;
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("failed to parse cache file {}: {e}", path.display()))?;
        let raw = match v.get("kind") {
            Some(Value::String(k)) if k == CACHE_KIND => {
                v.get("result").cloned().unwrap_or(Value::Null)
            }
            _ => v,
        };
        let mut r = CniResult::parse_any(&raw, "0.1.0")?;
        // Plugins get prevResult in the config's version (the list may have changed
        // since the ADD).
        r.to_json(&list.cni_version).with_context(|| {
            format!(
                "failed to convert cached result to config version {:?}",
                list.cni_version
            )
        })?;
        r.cni_version = list.cni_version.clone();
        Ok(Some(r))
    }

    /// Every readable `cniCacheV1` entry in the cache, sorted by file name; with a
    /// non-empty `container_id`, only that container's.
    pub fn cached_attachments(&self, container_id: &str) -> Result<Vec<Attachment>> {
        let dir = self.cache_dir.join("results");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if !container_id.is_empty() {
                let part = format!("-{container_id}-");
                match n.find(&part) {
                    Some(pos) if pos > 0 && pos + part.len() < n.len() => {}
                    _ => continue,
                }
            }
            let Ok(bytes) = std::fs::read(dir.join(&n)) else {
                continue;
            };
            let Some(a) = parse_cache_entry(&bytes) else {
                continue;
            };
            if !container_id.is_empty() && a.container_id != container_id {
                continue;
            }
            if a.ifname.is_empty() || a.network.is_empty() {
                continue;
            }
            out.push(a);
        }
        Ok(out)
    }
}

/// What plugin `p` of `list` reads on stdin: its config with the list's `name` and
/// `cniVersion`, `prevResult` (in its own version) and, when `rt` is given, the
/// capability arguments it declares as `runtimeConfig` (replacing any written there).
pub fn plugin_stdin(
    list: &NetworkConfigList,
    p: &PluginConfig,
    prev: Option<&CniResult>,
    rt: Option<&RuntimeConf>,
) -> Result<Vec<u8>> {
    let mut o = p.raw.clone();
    o.insert("name".into(), Value::String(list.name.clone()));
    o.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(r) = prev {
        o.insert("prevResult".into(), r.to_own_json()?);
    }
    if let Some(rt) = rt {
        let rc: Map<String, Value> = p
            .capabilities
            .iter()
            .filter(|(_, on)| **on)
            .filter_map(|(cap, _)| {
                rt.capability_args
                    .get(cap)
                    .map(|v| (cap.clone(), v.clone()))
            })
            .collect();
        if !rc.is_empty() {
            o.insert("runtimeConfig".into(), Value::Object(rc));
        }
    }
    Ok(go_json(&Value::Object(o)))
}

/// A plugin's ADD output as a result: its own `cniVersion` decides the shape, the
/// config's version when it names none.
fn parse_result(out: &[u8], conf_version: &str) -> Result<CniResult> {
    let v: Value =
        serde_json::from_slice(out).map_err(|e| anyhow!("failed to unmarshal raw result: {e}"))?;
    let assumed = if conf_version.is_empty() {
        "0.1.0"
    } else {
        conf_version
    };
    CniResult::parse_any(&v, assumed)
}

/// The cache file for one attachment, field by field as libcni writes it.
fn cache_entry(list: &NetworkConfigList, rt: &RuntimeConf, result: &CniResult) -> Result<Vec<u8>> {
    let mut o = Map::new();
    o.insert("kind".into(), Value::String(CACHE_KIND.into()));
    o.insert("containerId".into(), Value::String(rt.container_id.clone()));
    o.insert("config".into(), Value::String(base64_encode(&list.bytes)));
    o.insert("ifName".into(), Value::String(rt.ifname.clone()));
    o.insert("networkName".into(), Value::String(list.name.clone()));
    if !rt.netns.is_empty() {
        o.insert("netns".into(), Value::String(rt.netns.clone()));
    }
    if !rt.args.is_empty() {
        let pairs = rt
            .args
            .iter()
            .map(|(k, v)| serde_json::json!([k, v]))
            .collect();
        o.insert("cniArgs".into(), Value::Array(pairs));
    }
    if !rt.capability_args.is_empty() {
        o.insert(
            "capabilityArgs".into(),
            Value::Object(rt.capability_args.clone()),
        );
    }
    let r = result.to_own_json()?;
    if r.as_object().is_some_and(|m| !m.is_empty()) {
        o.insert("result".into(), r);
    }
    // The top level is a Go struct (field order kept); everything below is a map.
    let mut out = b"{".to_vec();
    for (i, (k, v)) in o.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_go(&Value::String(k.clone()), &mut out);
        out.push(b':');
        write_go(v, &mut out);
    }
    out.push(b'}');
    Ok(out)
}

fn parse_cache_entry(bytes: &[u8]) -> Option<Attachment> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let o = v.as_object()?;
    if o.get("kind")?.as_str()? != CACHE_KIND {
        return None;
    }
    let s = |k: &str| -> Option<String> {
        match o.get(k) {
            None | Some(Value::Null) => Some(String::new()),
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => None,
        }
    };
    let args = match o.get("cniArgs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| {
                let p = p.as_array()?;
                match p.as_slice() {
                    [Value::String(k), Value::String(v)] => Some((k.clone(), v.clone())),
                    _ => None,
                }
            })
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    let capability_args = match o.get("capabilityArgs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return None,
    };
    Some(Attachment {
        container_id: s("containerId")?,
        network: s("networkName")?,
        ifname: s("ifName")?,
        config: base64_decode(&s("config")?)?,
        netns: s("netns")?,
        args,
        capability_args,
    })
}

// ---------------------------------------------------------------------------------------
// Go's encoding

/// `v` marshalled as Go's `encoding/json` marshals a `map[string]interface{}`: keys
/// sorted at every level, compact, `<`, `>`, `&` escaped, whole floats without a
/// fraction.
pub fn go_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_go(v, &mut out);
    out
}

fn write_go(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_go_str(k, out);
                out.push(b':');
                if let Some(x) = m.get(*k) {
                    write_go(x, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_go(x, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_go_str(s, out),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 1e21 => {
                out.extend_from_slice(format!("{f:.0}").as_bytes())
            }
            _ => out.extend_from_slice(n.to_string().as_bytes()),
        },
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn write_go_str(s: &str, out: &mut Vec<u8>) {
    let mut enc = serde_json::to_string(s).unwrap_or_default();
    if enc.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        enc = enc
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029");
    }
    out.extend_from_slice(enc.as_bytes());
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (Go's encoding of a `[]byte` field).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`base64_encode`]; `None` for anything that is not valid base64.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s: Vec<u8> = s.bytes().filter(|b| *b != b'\r' && *b != b'\n').collect();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.chunks(4) {
        let pad = chunk.iter().rev().take_while(|b| **b == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n: u32 = 0;
        for (i, c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                B64.iter().position(|x| x == c)? as u32
            };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_round_trips_like_go() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        for s in [&b""[..], b"a", b"ab", b"abc", b"{\"name\":\"x\"}\n"] {
            assert_eq!(base64_decode(&base64_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(base64_decode("Zg="), None);
        assert_eq!(base64_decode("Z!=="), None);
    }

    #[test]
    fn go_json_sorts_and_escapes() {
        let v = json!({"b": 1, "a": {"z": [1.0, 2.5], "y": "<&>"}});
        assert_eq!(
            String::from_utf8(go_json(&v)).unwrap(),
            r#"{"a":{"y":"\u003c\u0026\u003e","z":[1,2.5]},"b":1}"#
        );
    }

    #[test]
    fn list_parsing_follows_libcni() {
        let l = NetworkConfigList::from_bytes(
            br#"{"name":"n","cniVersion":"0.4.0","cniVersions":["1.0.0","9.9.9"],"disableCheck":"TRUE",
                "plugins":[{"type":"bridge","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        assert_eq!(l.cni_version, "1.0.0");
        assert!(l.disable_check && !l.disable_gc);
        assert!(l.plugins[0].capabilities["portMappings"]);
        for (bad, msg) in [
            (&br#"{"cniVersion":"1.0.0"}"#[..], "no name"),
            (br#"{"name":"n","plugins":[]}"#, "no plugins in list"),
            (
                br#"{"name":"n","plugins":[{"name":"x"}]}"#,
                "missing 'type'",
            ),
            (
                br#"{"name":"n","disableGC":"maybe"}"#,
                "invalid value \"maybe\" for disableGC",
            ),
            (br#"{"name":"n","plugins":{}}"#, "invalid 'plugins' type"),
        ] {
            let e = format!("{:#}", NetworkConfigList::from_bytes(bad).unwrap_err());
            assert!(e.contains(msg), "{e}");
        }
    }

    #[test]
    fn stdin_injects_name_version_prev_and_only_declared_capabilities() {
        let l = NetworkConfigList::from_bytes(
            br#"{"name":"n","cniVersion":"1.0.0","plugins":[
                {"type":"portmap","name":"own","capabilities":{"portMappings":true,"bandwidth":false},
                 "runtimeConfig":{"old":1}},
                {"type":"tuning"}]}"#,
        )
        .unwrap();
        let mut rt = RuntimeConf::default();
        rt.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 80}]));
        rt.capability_args
            .insert("bandwidth".into(), json!({"x": 1}));
        let prev = CniResult {
            cni_version: "1.0.0".into(),
            ..Default::default()
        };
        let s: Value = serde_json::from_slice(
            &plugin_stdin(&l, &l.plugins[0], Some(&prev), Some(&rt)).unwrap(),
        )
        .unwrap();
        assert_eq!(s["name"], "n");
        assert_eq!(
            s["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 80}]})
        );
        assert_eq!(s["prevResult"]["cniVersion"], "1.0.0");
        // A plugin without capabilities keeps its own runtimeConfig (here: none).
        let s: Value =
            serde_json::from_slice(&plugin_stdin(&l, &l.plugins[1], None, Some(&rt)).unwrap())
                .unwrap();
        assert!(s.get("runtimeConfig").is_none() && s.get("prevResult").is_none());
        assert_eq!(l.plugins[0].description(), "type=\"portmap\" name=\"own\"");
    }

    #[test]
    fn cache_entry_round_trips() {
        let l = NetworkConfigList::from_bytes(
            br#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        let rt = RuntimeConf {
            container_id: "c1".into(),
            netns: "/run/netns/a".into(),
            ifname: "eth0".into(),
            args: vec![("K".into(), "V".into())],
            capability_args: Map::new(),
        };
        let r = CniResult::parse_any(
            &json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}),
            "1.0.0",
        )
        .unwrap();
        let b = cache_entry(&l, &rt, &r).unwrap();
        let s = String::from_utf8(b.clone()).unwrap();
        assert!(
            s.starts_with(r#"{"kind":"cniCacheV1","containerId":"c1","config":""#),
            "{s}"
        );
        assert!(s.ends_with(r#""cniArgs":[["K","V"]],"result":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}"#), "{s}");
        let a = parse_cache_entry(&b).unwrap();
        assert_eq!(
            (a.network.as_str(), a.ifname.as_str(), a.config),
            ("n", "eth0", l.bytes)
        );
    }
}
