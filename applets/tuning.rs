//! tuning: a chained meta plugin that changes the container side of an attachment:
//! network sysctls of the container's namespace, and the MAC, MTU, promiscuous mode,
//! all-multicast mode and tx queue length of `CNI_IFNAME`.
//!
//! ADD validates everything first (keys, values, that every sysctl file exists and is
//! writable, MAC length and MTU range against the device), saves the interface's
//! current values in the reference's backup file, then applies sysctls, MAC, promisc,
//! MTU, allmulti and txqlen in the reference's order; a failure undoes what was changed
//! and the backup. prevResult passes through, with the new MAC. DEL restores from the
//! backup (Go's backups too: same file name and JSON). CHECK compares the live values.
//!
//! Differences from the reference, on purpose (README "Deviations"):
//! - `args.cni.sysctl` without a top-level `sysctl` works (the reference panics);
//! - sysctl keys with `..` or a leading `/` are refused (code 7), and so are a missing or
//!   read-only sysctl, a MAC of the wrong length and an MTU outside the device's range,
//!   all before anything changes; a negative `mtu`/`txQLen` is refused (the reference
//!   wraps -1 to 4294967295 for txQLen);
//! - a failed ADD restores what it changed (the reference leaves it half-applied);
//! - a second ADD for the same attachment keeps the original values in the backup (the
//!   reference overwrites them with the tuned ones, so DEL could not restore);
//! - DEL removes the backup when the netns or the interface is gone (the reference
//!   leaks it in /run/cni/tuning);
//! - CHECK compares MACs as addresses (the reference compares strings, so an upper-case
//!   `mac` always failed CHECK), sysctl values with whitespace normalised (multi-value
//!   sysctls like tcp_rmem read back tab-separated), and checks promisc only when the
//!   config turns it on (the reference demands it off otherwise, which ADD never does);
//! - the result carries the MAC as the kernel prints it (lower case, colons), not the
//!   config's spelling.

use anyhow::{anyhow, bail, Context, Result};
use cnibox::cni::decode;
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::value::parse_hwaddr;
use cnibox::cni::CniResult;
use cnibox::error::{cni_err, Code};
use cnibox::l3::Rollback;
use cnibox::netlink::link::LinkSettings;
use cnibox::netlink::{LinkId, Nl};
use cnibox::netns::{self, Netns};
use cnibox::sysctl;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub const APPLET: Applet = Applet {
    name: "tuning",
    about: "set sysctls, MAC, MTU, promisc, allmulti, txqlen in a container (chained)",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: Some(&["MAC"]),
        add,
        del,
        check,
        gc: None,
        status: None,
    }),
};

const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";
const ALLOWLIST: &str = "/etc/cni/tuning/allowlist.conf";

// ---------------------------------------------------------------------------------------
// Configuration

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConf {
    #[serde(rename = "dataDir")]
    data_dir: String,
    sysctl: Option<Map<String, Value>>,
    mac: String,
    promisc: bool,
    mtu: i64,
    #[serde(rename = "txQLen")]
    txqlen: Option<i64>,
    allmulti: Option<bool>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: RuntimeConfig,
    args: Option<RawArgs>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RuntimeConfig {
    mac: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawArgs {
    cni: Option<ArgsCni>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ArgsCni {
    sysctl: Option<Map<String, Value>>,
    mac: Option<String>,
    promisc: Option<bool>,
    mtu: Option<i64>,
    allmulti: Option<bool>,
    #[serde(rename = "txQLen")]
    txqlen: Option<i64>,
}

/// A config value and the key it came from, so errors name what the user wrote.
#[derive(Clone, Debug)]
struct Keyed<T> {
    value: T,
    key: &'static str,
}

fn keyed<T>(value: T, key: &'static str) -> Keyed<T> {
    Keyed { value, key }
}

/// The effective config: file values overridden like the reference does it.
struct Conf {
    data_dir: PathBuf,
    /// In config order, `args.cni.sysctl` entries merged in (same key: args wins).
    sysctls: Vec<(String, String)>,
    mac: Keyed<String>,
    promisc: Keyed<bool>,
    mtu: Keyed<i64>,
    allmulti: Option<Keyed<bool>>,
    txqlen: Option<Keyed<i64>>,
}

fn sysctl_entries(m: Map<String, Value>, key: &str) -> Result<Vec<(String, String)>> {
    m.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            // Go decodes a null into a map[string]string as "".
            Value::Null => Ok((k, String::new())),
            other => Err(cni_err(
                Code::Decode,
                format!(
                    "failed to load netconf: {key}: value of {k:?} must be a string, got {other}"
                ),
            )),
        })
        .collect()
}

fn load(ctx: &Ctx) -> Result<Conf> {
    let raw: RawConf = ctx.decode()?;
    let mut sysctls = sysctl_entries(raw.sysctl.unwrap_or_default(), "sysctl")?;
    // MAC priority (lowest first): mac, CNI_ARGS MAC, runtimeConfig.mac, args.cni.mac.
    let mut mac = keyed(raw.mac, "mac");
    if let Some(m) = ctx.cni_args.get("MAC").filter(|m| !m.is_empty()) {
        mac = keyed(m.to_string(), "CNI_ARGS MAC");
    }
    if !raw.runtime_config.mac.is_empty() {
        mac = keyed(raw.runtime_config.mac, "runtimeConfig.mac");
    }
    let mut promisc = keyed(raw.promisc, "promisc");
    let mut mtu = keyed(raw.mtu, "mtu");
    let mut allmulti = raw.allmulti.map(|v| keyed(v, "allmulti"));
    let mut txqlen = raw.txqlen.map(|v| keyed(v, "txQLen"));
    if let Some(a) = raw.args.and_then(|a| a.cni) {
        // The reference merges into the config's map and panics when there is none;
        // here a missing map is simply empty.
        if let Some(extra) = a.sysctl {
            for (k, v) in sysctl_entries(extra, "args.cni.sysctl")? {
                match sysctls.iter_mut().find(|(key, _)| *key == k) {
                    Some(e) => e.1 = v,
                    None => sysctls.push((k, v)),
                }
            }
        }
        if let Some(v) = a.mac {
            mac = keyed(v, "args.cni.mac");
        }
        if let Some(v) = a.promisc {
            promisc = keyed(v, "args.cni.promisc");
        }
        if let Some(v) = a.mtu {
            mtu = keyed(v, "args.cni.mtu");
        }
        if let Some(v) = a.allmulti {
            allmulti = Some(keyed(v, "args.cni.allmulti"));
        }
        if let Some(v) = a.txqlen {
            txqlen = Some(keyed(v, "args.cni.txQLen"));
        }
    }
    let data_dir = if raw.data_dir.is_empty() {
        PathBuf::from(DEFAULT_DATA_DIR)
    } else {
        PathBuf::from(raw.data_dir)
    };
    Ok(Conf {
        data_dir,
        sysctls,
        mac,
        promisc,
        mtu,
        allmulti,
        txqlen,
    })
}

/// What ADD will do and CHECK will compare, every value validated.
struct Plan {
    /// (key as written, /proc/sys path, value)
    sysctls: Vec<(String, String, String)>,
    mac: Option<Keyed<Vec<u8>>>,
    promisc: bool,
    mtu: Option<Keyed<u32>>,
    allmulti: Option<bool>,
    txqlen: Option<Keyed<u32>>,
}

impl Plan {
    fn touches_link(&self) -> bool {
        self.mac.is_some()
            || self.promisc
            || self.mtu.is_some()
            || self.allmulti.is_some()
            || self.txqlen.is_some()
    }
}

fn invalid(key: &str, value: impl std::fmt::Display, why: &str) -> anyhow::Error {
    cni_err(Code::InvalidConfig, format!("invalid {key} {value}: {why}"))
}

fn plan(c: &Conf, ifname: &str) -> Result<Plan> {
    let mut sysctls = Vec::with_capacity(c.sysctls.len());
    for (k, v) in &c.sysctls {
        sysctls.push((k.clone(), sysctl::net_key_path(k, ifname)?, v.clone()));
    }
    let mac = if c.mac.value.is_empty() {
        None
    } else {
        let m = parse_hwaddr(&c.mac.value).ok_or_else(|| {
            invalid(
                c.mac.key,
                format!("{:?}", c.mac.value),
                "not a MAC address (6, 8 or 20 hex bytes separated by ':' or '-', or xxxx.xxxx.xxxx)",
            )
        })?;
        Some(keyed(m, c.mac.key))
    };
    let mtu = match c.mtu.value {
        0 => None,
        v => {
            let m =
                u32::try_from(v).map_err(|_| invalid(c.mtu.key, v, "must be a positive number"))?;
            Some(keyed(m, c.mtu.key))
        }
    };
    let txqlen = match &c.txqlen {
        None => None,
        Some(t) => {
            let q = u32::try_from(t.value)
                .map_err(|_| invalid(t.key, t.value, "must be between 0 and 4294967295"))?;
            Some(keyed(q, t.key))
        }
    };
    Ok(Plan {
        sysctls,
        mac,
        promisc: c.promisc.value,
        mtu,
        allmulti: c.allmulti.as_ref().map(|a| a.value),
        txqlen,
    })
}

/// The reference refuses duplicate keys inside `sysctl` (Go would silently keep the
/// last); serde_json's map already merged them, so look at the raw text.
fn check_duplicate_sysctls(stdin: &[u8]) -> Result<()> {
    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;
    use std::collections::HashSet;

    struct Top<'a>(&'a RefCell<Option<String>>);
    struct Keys<'a>(&'a RefCell<Option<String>>, HashSet<String>);

    impl<'de> Visitor<'de> for Top<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a config object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut keys = Keys(self.0, HashSet::new());
            while let Some(k) = m.next_key::<String>()? {
                if k.eq_ignore_ascii_case("sysctl") {
                    // Go decodes every spelling of the key into the same map.
                    keys = m.next_value_seed(keys)?;
                } else {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }

    impl<'de, 'a> de::DeserializeSeed<'de> for Keys<'a> {
        type Value = Keys<'a>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Keys<'a>, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de, 'a> Visitor<'de> for Keys<'a> {
        type Value = Keys<'a>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("anything")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut m: A) -> Result<Keys<'a>, A::Error> {
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                if !self.1.insert(k.clone()) {
                    *self.0.borrow_mut() = Some(k);
                    return Err(de::Error::custom("duplicate"));
                }
            }
            Ok(self)
        }
        // Not an object: the real decode reports the type error.
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Keys<'a>, A::Error> {
            while s.next_element::<IgnoredAny>()?.is_some() {}
            Ok(self)
        }
        fn visit_unit<E>(self) -> Result<Keys<'a>, E> {
            Ok(self)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Keys<'a>, E> {
            Ok(self)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Keys<'a>, E> {
            Ok(self)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Keys<'a>, E> {
            Ok(self)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Keys<'a>, E> {
            Ok(self)
        }
        fn visit_str<E>(self, _: &str) -> Result<Keys<'a>, E> {
            Ok(self)
        }
    }

    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(stdin);
    // Other parse errors were reported by the harness already.
    let _ = de.deserialize_map(Top(&dup));
    if let Some(k) = dup.into_inner() {
        return Err(cni_err(
            Code::InvalidConfig,
            format!("invalid sysctl key {k:?}: duplicated sysctl keys are not allowed"),
        ));
    }
    Ok(())
}

/// The reference's optional allow-list: if the file exists, every sysctl key (as
/// written, before IFNAME substitution) must match one of its regexps.
fn check_allowlist(c: &Conf) -> Result<()> {
    let text = match std::fs::read_to_string(ALLOWLIST) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {ALLOWLIST}")),
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pats = lines
        .iter()
        .map(|l| sysctl::pattern::Pattern::new(l))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("cannot use {ALLOWLIST}"))?;
    for (k, _) in &c.sysctls {
        if !pats.iter().any(|p| p.is_match(k)) {
            return Err(cni_err(
                Code::InvalidConfig,
                format!(
                    "Sysctl {k} is not allowed. Only the following sysctls are allowed: [{}]",
                    lines.join(" ")
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Backup file: `<dataDir>/<containerID>_<ifname>.json`, the reference's name and JSON.

#[derive(Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(default)]
struct Backup {
    mac: String,
    promisc: Option<bool>,
    mtu: i64,
    allmulti: Option<bool>,
    #[serde(rename = "txQLen")]
    txqlen: Option<i64>,
}

impl Backup {
    /// Go's `json.MarshalIndent(v, "", " ")` of the reference's struct: keys in its
    /// field order, empty `mac` and zero `mtu` omitted, no trailing newline.
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut m = Map::new();
        if !self.mac.is_empty() {
            m.insert("mac".into(), Value::from(self.mac.clone()));
        }
        if let Some(p) = self.promisc {
            m.insert("promisc".into(), Value::from(p));
        }
        if self.mtu != 0 {
            m.insert("mtu".into(), Value::from(self.mtu));
        }
        if let Some(a) = self.allmulti {
            m.insert("allmulti".into(), Value::from(a));
        }
        if let Some(q) = self.txqlen {
            m.insert("txQLen".into(), Value::from(q));
        }
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&Value::Object(m), &mut ser)?;
        Ok(out)
    }

    /// The current values of what `plan` will change.
    fn of(link: &LinkSettings, plan: &Plan) -> Backup {
        Backup {
            mac: if plan.mac.is_some() {
                link.mac()
            } else {
                String::new()
            },
            promisc: plan.promisc.then(|| link.promisc()),
            mtu: if plan.mtu.is_some() {
                i64::from(link.mtu)
            } else {
                0
            },
            allmulti: plan.allmulti.map(|_| link.allmulti()),
            txqlen: plan.txqlen.as_ref().map(|_| i64::from(link.txqlen)),
        }
    }

    /// Values already saved by an earlier ADD are the originals: keep them.
    fn keep_older(mut self, older: &Backup) -> Backup {
        if !older.mac.is_empty() {
            self.mac = older.mac.clone();
        }
        if older.mtu != 0 {
            self.mtu = older.mtu;
        }
        self.promisc = older.promisc.or(self.promisc);
        self.allmulti = older.allmulti.or(self.allmulti);
        self.txqlen = older.txqlen.or(self.txqlen);
        self
    }
}

fn backup_path(dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir.join(format!("{container_id}_{ifname}.json"))
}

/// Write atomically (temp file + rename): a crash never leaves a torn backup, which
/// DEL could not restore from.
fn write_backup(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    // 0700, not the reference's 0600: a directory needs its x bit (root does not care,
    // so the two implementations share the directory either way).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create backup directory {}", dir.display()))?;
    let tmp = path.with_extension("json.cnibox-tmp");
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("failed to save backup {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// ADD

fn add(ctx: &Ctx) -> Result<CniResult> {
    check_duplicate_sysctls(&ctx.stdin)?;
    let c = load(ctx)?;
    check_allowlist(&c)?;
    let mut prev = ctx.prev_result_required()?;
    let p = plan(&c, &ctx.ifname)?;
    let ns = Netns::open(&ctx.netns)?;

    // Every sysctl must exist and be writable: checked before anything changes, and the
    // old values kept for a rollback (None: write-only, like route/flush).
    let old_sysctls: Vec<Option<String>> = ns.run(|| {
        p.sysctls
            .iter()
            .map(|(key, path, value)| {
                use std::os::unix::fs::PermissionsExt;
                let md = std::fs::metadata(path).map_err(|e| {
                    let why = match e.kind() {
                        std::io::ErrorKind::NotFound => format!("{path} does not exist"),
                        _ => format!("{path}: {}", errno_text(&e)),
                    };
                    invalid("sysctl", format!("{key:?}={value:?}"), &why)
                })?;
                if !md.is_file() {
                    return Err(invalid(
                        "sysctl",
                        format!("{key:?}"),
                        &format!("{path} is not a sysctl"),
                    ));
                }
                if md.permissions().mode() & 0o200 == 0 {
                    return Err(invalid(
                        "sysctl",
                        format!("{key:?}"),
                        &format!("{path} is read-only"),
                    ));
                }
                Ok(std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim_end_matches('\n').to_string()))
            })
            .collect()
    })?;

    let nl = Nl::open_in(&ns)?;
    let link = if p.touches_link() {
        let l = nl
            .link_settings(LinkId::Name(&ctx.ifname))?
            .ok_or_else(|| anyhow!("failed to get {:?}: link not found", ctx.ifname))?;
        validate_against(&p, &l)?;
        Some(l)
    } else {
        None
    };

    let mut undo = Rollback::default();
    let r = (|| -> Result<()> {
        let Some(link) = &link else {
            return apply_sysctls(&ns, &p, &old_sysctls, &mut undo);
        };
        // The backup first, so a crash after any change still lets DEL restore.
        let path = backup_path(&c.data_dir, &ctx.container_id, &ctx.ifname);
        let before = std::fs::read(&path).ok();
        let mut saved = Backup::of(link, &p);
        if let Some(older) = before
            .as_deref()
            .and_then(|b| decode::from_slice::<Backup>(b).ok())
        {
            saved = saved.keep_older(&older);
        }
        write_backup(&path, &saved.to_bytes()?)?;
        undo.push("restore the backup file", move || match before {
            Some(b) => write_backup(&path, &b),
            None => std::fs::remove_file(&path).context("failed to remove the backup"),
        });

        apply_sysctls(&ns, &p, &old_sysctls, &mut undo)?;
        let ix = link.index;
        let ifname = &ctx.ifname;
        let nl = &nl;
        if let Some(mac) = &p.mac {
            nl.set_hwaddr(ix, &mac.value)
                .with_context(|| format!("failed to set the MAC of {ifname:?} from {}", mac.key))?;
            let old = link.hwaddr.clone();
            undo.push("restore the MAC", move || nl.set_hwaddr(ix, &old));
        }
        if p.promisc {
            nl.set_promisc(ix, true)
                .with_context(|| format!("failed to turn on promiscuous mode of {ifname:?}"))?;
            let old = link.promisc();
            undo.push("restore promisc", move || nl.set_promisc(ix, old));
        }
        if let Some(mtu) = &p.mtu {
            nl.set_mtu(ix, mtu.value)
                .with_context(|| format!("failed to set the MTU of {ifname:?} from {}", mtu.key))?;
            let old = link.mtu;
            undo.push("restore the MTU", move || nl.set_mtu(ix, old));
        }
        if let Some(on) = p.allmulti {
            nl.set_allmulti(ix, on)
                .with_context(|| format!("failed to set all-multicast mode of {ifname:?}"))?;
            let old = link.allmulti();
            undo.push("restore allmulti", move || nl.set_allmulti(ix, old));
        }
        if let Some(q) = &p.txqlen {
            nl.set_txqlen(ix, q.value).with_context(|| {
                format!(
                    "failed to set the tx queue length of {ifname:?} from {}",
                    q.key
                )
            })?;
            let old = link.txqlen;
            undo.push("restore the txqlen", move || nl.set_txqlen(ix, old));
        }
        Ok(())
    })();
    match r {
        Ok(()) => undo.commit(),
        Err(e) => {
            undo.run();
            return Err(e);
        }
    }

    if let Some(mac) = &p.mac {
        let printed = cnibox::netlink::mac_string(&mac.value);
        for i in prev.interfaces.iter_mut().filter(|i| i.name == ctx.ifname) {
            i.mac = printed.clone();
        }
    }
    prev.cni_version = ctx.version().to_string();
    Ok(prev)
}

/// What the kernel would refuse, refused first with the config key named (code 7).
fn validate_against(p: &Plan, l: &LinkSettings) -> Result<()> {
    if let Some(mac) = &p.mac {
        let shown = cnibox::netlink::mac_string(&mac.value);
        if mac.value.len() != l.hwaddr.len() {
            return Err(invalid(
                mac.key,
                &shown,
                &format!("{} has {}-byte addresses", l.name, l.hwaddr.len()),
            ));
        }
        // Ethernet-style devices refuse multicast and all-zero addresses.
        if mac.value.len() == 6 && (mac.value[0] & 1 == 1 || mac.value.iter().all(|b| *b == 0)) {
            return Err(invalid(mac.key, &shown, "not a unicast address"));
        }
    }
    if let Some(mtu) = &p.mtu {
        if mtu.value < l.min_mtu || (l.max_mtu > 0 && mtu.value > l.max_mtu) {
            return Err(invalid(
                mtu.key,
                mtu.value,
                &format!("{} accepts {}..{}", l.name, l.min_mtu, l.max_mtu),
            ));
        }
    }
    Ok(())
}

/// Write the sysctls inside the netns; each one written gets its undo step.
fn apply_sysctls<'a>(
    ns: &'a Netns,
    p: &Plan,
    old: &[Option<String>],
    undo: &mut Rollback<'a>,
) -> Result<()> {
    for ((key, path, value), old) in p.sysctls.iter().zip(old) {
        ns.run(|| {
            std::fs::write(path, value).map_err(|e| {
                if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ERANGE)) {
                    invalid(
                        "sysctl",
                        format!("{key:?}={value:?}"),
                        &format!("the kernel refused it ({})", errno_text(&e)),
                    )
                } else {
                    anyhow!(
                        "failed to set sysctl {path} to {value:?}: {}",
                        errno_text(&e)
                    )
                }
            })
        })?;
        if let Some(old) = old.clone() {
            let path = path.clone();
            undo.push(format!("restore {path}"), move || {
                ns.run(|| {
                    std::fs::write(&path, &old).with_context(|| format!("failed to write {path}"))
                })
            });
        }
    }
    Ok(())
}

/// "invalid argument" rather than "Invalid argument (os error 22)", as netlink errors read.
fn errno_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_lowercase()
}

// ---------------------------------------------------------------------------------------
// DEL

fn del(ctx: &Ctx) -> Result<()> {
    let c = load(ctx)?;
    let path = backup_path(&c.data_dir, &ctx.container_id, &ctx.ifname);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    let remove = || {
        std::fs::remove_file(&path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .with_context(|| format!("failed to remove {}", path.display()))
    };
    let saved: Backup = match decode::from_slice(&data) {
        Ok(b) => b,
        Err(e) => {
            // Like the reference: not ours to judge; leave it for a human.
            eprintln!("tuning: ignoring unreadable backup {}: {e}", path.display());
            return Ok(());
        }
    };
    if ctx.netns.is_empty() {
        return remove();
    }
    let ns = match Netns::open(&ctx.netns) {
        Ok(ns) => ns,
        // The interface went with its namespace: nothing left to restore.
        Err(e) if netns::is_gone(&e) => return remove(),
        Err(e) => return Err(e),
    };
    let nl = Nl::open_in(&ns)?;
    let Some(link) = nl.link_settings(LinkId::Name(&ctx.ifname))? else {
        return remove();
    };
    let failures = restore(&nl, &link, &saved);
    if failures.is_empty() {
        return remove();
    }
    // DEL must not fail here (the reference never does): a runtime would retry it
    // forever and the container could not be torn down. The backup stays, so a later
    // DEL tries again.
    eprintln!(
        "tuning: could not restore {}: {}",
        ctx.ifname,
        failures.join("; ")
    );
    Ok(())
}

/// Restore in the reference's order: MTU, MAC, promisc, allmulti, txqlen. Each failure
/// is reported; the others are still attempted.
fn restore(nl: &Nl, link: &LinkSettings, b: &Backup) -> Vec<String> {
    let ix = link.index;
    let mut failures = Vec::new();
    let mut step = |what: &str, r: Result<()>| {
        if let Err(e) = r {
            failures.push(format!("failed to restore {what}: {e:#}"));
        }
    };
    if b.mtu != 0 {
        step(
            "MTU",
            u32::try_from(b.mtu)
                .map_err(|_| anyhow!("invalid MTU {} in the backup", b.mtu))
                .and_then(|m| nl.set_mtu(ix, m)),
        );
    }
    if !b.mac.is_empty() {
        step(
            "MAC address",
            parse_hwaddr(&b.mac)
                .ok_or_else(|| anyhow!("invalid MAC {:?} in the backup", b.mac))
                .and_then(|m| nl.set_hwaddr(ix, &m)),
        );
    }
    if let Some(p) = b.promisc {
        step("promiscuous mode", nl.set_promisc(ix, p));
    }
    if let Some(a) = b.allmulti {
        step("all-multicast mode", nl.set_allmulti(ix, a));
    }
    if let Some(q) = b.txqlen {
        step(
            "transmit queue length",
            u32::try_from(q)
                .map_err(|_| anyhow!("invalid txQLen {q} in the backup"))
                .and_then(|q| nl.set_txqlen(ix, q)),
        );
    }
    failures
}

// ---------------------------------------------------------------------------------------
// CHECK

fn check(ctx: &Ctx) -> Result<()> {
    check_duplicate_sysctls(&ctx.stdin)?;
    let c = load(ctx)?;
    let p = plan(&c, &ctx.ifname)?;
    ctx.prev_result_required()?;
    let ns = Netns::open(&ctx.netns)?;
    let nl = Nl::open_in(&ns)?;
    let ifname = &ctx.ifname;
    // The interface first: if it is gone, that is the news (not a missing sysctl of it).
    let l = nl
        .link_settings(LinkId::Name(ifname))?
        .ok_or_else(|| anyhow!("Cannot find container link {ifname}"))?;
    ns.run(|| {
        for (key, path, want) in &p.sysctls {
            let have = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read sysctl {key:?} ({path})"))?;
            if !same_sysctl(want, &have) {
                bail!(
                    "Tuning configured value of {path} is {want}, current value is {}",
                    have.trim_end_matches('\n')
                );
            }
        }
        Ok(())
    })?;
    if let Some(mac) = &p.mac {
        if mac.value != l.hwaddr {
            bail!(
                "Tuning configured Ethernet of {ifname} is {}, current value is {}",
                cnibox::netlink::mac_string(&mac.value),
                l.mac()
            );
        }
    }
    if p.promisc && !l.promisc() {
        bail!("Tuning link {ifname} configured promisc is true, current value is false");
    }
    if let Some(mtu) = &p.mtu {
        if mtu.value != l.mtu {
            bail!(
                "Tuning configured MTU of {ifname} is {}, current value is {}",
                mtu.value,
                l.mtu
            );
        }
    }
    if let Some(a) = p.allmulti {
        if a != l.allmulti() {
            bail!(
                "Tuning configured all-multicast mode of {ifname} is {a}, current value is {}",
                l.allmulti()
            );
        }
    }
    if let Some(q) = &p.txqlen {
        if q.value != l.txqlen {
            bail!(
                "Tuning configured Transmit Queue Length of {ifname} is {}, current value is {}",
                q.value,
                l.txqlen
            );
        }
    }
    Ok(())
}

/// Multi-value sysctls read back tab-separated whatever was written; compare words.
fn same_sysctl(want: &str, have: &str) -> bool {
    want.split_whitespace().eq(have.split_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwaddr_like_go() {
        assert_eq!(
            parse_hwaddr("0a:58:0A:f4:01:05"),
            Some(vec![0x0a, 0x58, 0x0a, 0xf4, 1, 5])
        );
        assert_eq!(
            parse_hwaddr("0a-58-0a-f4-01-05"),
            Some(vec![0x0a, 0x58, 0x0a, 0xf4, 1, 5])
        );
        assert_eq!(
            parse_hwaddr("0a58.0af4.0105"),
            Some(vec![0x0a, 0x58, 0x0a, 0xf4, 1, 5])
        );
        assert_eq!(
            parse_hwaddr("02:00:00:00:00:00:00:01").map(|v| v.len()),
            Some(8)
        );
        assert_eq!(
            parse_hwaddr("00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01")
                .map(|v| v.len()),
            Some(20)
        );
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:05:",
            "0a:58-0a:f4:01:05",
            "0a:58:0a:f4:01:5",
            "0a:58:0a:f4:01:zz",
            "0a:58:0a:f4:01:055",
            "0a58.0af4.010",
            "0a:58:0a:f4:01:05:06",
            "ä:58:0a:f4:01:05:",
        ] {
            assert_eq!(parse_hwaddr(bad), None, "{bad}");
        }
    }

    #[test]
    fn backup_bytes_like_go() {
        let b = Backup {
            mac: "0a:58:0a:f4:01:05".into(),
            promisc: Some(false),
            mtu: 1500,
            allmulti: Some(true),
            txqlen: Some(0),
        };
        assert_eq!(
            String::from_utf8(b.to_bytes().unwrap()).unwrap(),
            "{\n \"mac\": \"0a:58:0a:f4:01:05\",\n \"promisc\": false,\n \"mtu\": 1500,\n \"allmulti\": true,\n \"txQLen\": 0\n}"
        );
        assert_eq!(Backup::default().to_bytes().unwrap(), b"{}");
    }

    #[test]
    fn duplicates_found_in_raw_text() {
        assert!(check_duplicate_sysctls(br#"{"sysctl":{"a":"1","b":"2"}}"#).is_ok());
        assert!(check_duplicate_sysctls(br#"{"sysctl":null,"x":{"a":"1","a":"1"}}"#).is_ok());
        let e = check_duplicate_sysctls(br#"{"x":[1,{"y":2}],"SysCtl":{"a":"1","a":"2"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("duplicated sysctl keys"), "{e}");
        assert!(check_duplicate_sysctls(br#"{"sysctl":{"a":"1"},"sysctl":{"a":"2"}}"#).is_err());
    }
}
