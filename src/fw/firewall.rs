//! The `firewall` meta plugin's rules: forwarding allowed to and from a container's
//! addresses, an admin override chain, and Docker-style isolation between bridges
//! (`ingressPolicy`), for two backends.
//!
//! **iptables** (table `filter`), byte-compatible with the reference, so either
//! implementation finds, checks and deletes what the other added:
//! - `FORWARD` → `-m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD`;
//! - `CNI-FORWARD` starts with `-m comment --comment "CNI firewall plugin admin
//!   overrides" -j <admin chain>` (default `CNI-ADMIN`), then per address
//!   `-d <ip>/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` and
//!   `-s <ip>/32 -j ACCEPT` (`/128` for IPv6);
//! - `same-bridge`/`isolated`: `CNI-ISOLATION-STAGE-1/2` with the reference's rules and
//!   comments, jumped to first from `FORWARD`.
//!
//! Each change is one `iptables-restore --noflush` per family, computed from one
//! `iptables-save -t filter`. Shared chains are created with `-N` in that same batch,
//! never declared (`:CHAIN`, which would flush the rules other containers put there).
//! Race-freedom comes from the namespace lock below: cnibox never computes a batch
//! from a stale save. Against other writers (the Go plugins, which do not take it)
//! `-N` bounds the damage: the batch fails as a whole ("Chain already exists") and is
//! recomputed from a fresh save, or iptables-nft replays it on a fresh cache, which
//! can at worst duplicate a jump; nobody's rules are ever flushed.
//!
//! **nftables** (no iptables on the host, or `backend: "nftables"`): table
//! `inet cni_firewall`, spoken natively in one nfnetlink batch, same chain names and
//! comments as iptables:
//! ```text
//! table inet cni_firewall {
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     jump CNI-ISOLATION-STAGE-1   (isolating policies only, first)
//!     jump CNI-FORWARD }
//!   chain CNI-FORWARD { jump CNI-ADMIN
//!     ip daddr <ip> ct state established,related accept comment "<attachment>"
//!     ip saddr <ip> accept comment "<attachment>" }
//!   chain CNI-ADMIN { }
//!   chain CNI-ISOLATION-STAGE-1 { iifname "<br>" oifname != "<br>" jump CNI-ISOLATION-STAGE-2
//!     iifname "<br>" oifname "<br>" drop   (isolated) }
//!   chain CNI-ISOLATION-STAGE-2 { oifname "<br>" drop }
//! }
//! ```
//! The per-address rules carry the attachment's identity in their comment (the ipMasq
//! scheme: `<H(net)>-<H(ifname:cid)>, net: .., if: .., id: ..`), so DEL needs no
//! prevResult and GC can find stale attachments. The table goes away with the last
//! attachment unless it holds something else (isolation rules, admin rules, a changed
//! policy). Note that an nftables `accept` only ends *this* table's chain: another
//! table's `drop` still drops (iptables' FORWARD policy has no such neighbour).
//!
//! cnibox's own read-modify-write cycles are serialised by an `flock` on the host
//! network namespace itself (`/proc/thread-self/ns/net`): one lock per namespace, no
//! lock file, bounded wait ([`LOCK_WAIT`], then code 11).

use super::ipmasq::{nft_comment, nft_prefix};
use super::{hash_with_prefix, have, run};
use crate::error::{cni_err, code_of, Code};
use crate::netlink::nftables::ext::{self, ChainX, RuleX, XExpr};
use crate::netlink::nftables::{self, Batch, ChainSpec, Expr};
use anyhow::{anyhow, bail, Result};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const PRIV_CHAIN: &str = "CNI-FORWARD";
pub const DEFAULT_ADMIN_CHAIN: &str = "CNI-ADMIN";
pub const STAGE1: &str = "CNI-ISOLATION-STAGE-1";
pub const STAGE2: &str = "CNI-ISOLATION-STAGE-2";
/// The nftables table (family `inet`) of the nftables backend.
pub const NFT_TABLE: &str = "cni_firewall";
/// Its base chain (hook forward, priority filter).
pub const NFT_BASE_CHAIN: &str = "forward";

const FILTER_COMMENT: &str = "CNI firewall plugin rules";
const ADMIN_COMMENT: &str = "CNI firewall plugin admin overrides";
const ISOLATION_COMMENT: &str = "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)";
const TABLE_COMMENT: &str =
    "CNI firewall plugin (cnibox): container forwarding and bridge isolation";

/// Chain names a configured admin chain may not take (built-ins, targets, ours).
pub const RESERVED_CHAINS: &[&str] = &[
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "DROP",
    "RETURN",
    "QUEUE",
    "REJECT",
    PRIV_CHAIN,
    STAGE1,
    STAGE2,
    NFT_BASE_CHAIN,
];

/// How long to wait for another cnibox changing the same namespace's firewall: longer
/// than its own bounded tool runs normally take, short enough to say "try again".
pub const LOCK_WAIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Open,
    SameBridge,
    Isolated,
}

impl Policy {
    /// `ingressPolicy`: empty means open, like the reference.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "" | "open" => Some(Policy::Open),
            "same-bridge" => Some(Policy::SameBridge),
            "isolated" => Some(Policy::Isolated),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Open => "open",
            Policy::SameBridge => "same-bridge",
            Policy::Isolated => "isolated",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nftables,
}

/// Who a set of rules belongs to (what the nftables comments carry).
#[derive(Clone, Copy, Debug)]
pub struct Attachment<'a> {
    pub net: &'a str,
    pub ifname: &'a str,
    pub cid: &'a str,
}

/// What ADD sets up and CHECK verifies, every value already validated.
#[derive(Clone, Debug)]
pub struct Setup<'a> {
    pub att: Attachment<'a>,
    /// The container's addresses (prevResult `ips`), without prefix lengths.
    pub ips: Vec<IpAddr>,
    pub admin_chain: String,
    pub policy: Policy,
    /// prevResult `interfaces[0].name` for the isolating policies.
    pub bridge: Option<String>,
}

impl Setup<'_> {
    fn family(&self, v6: bool) -> Vec<IpAddr> {
        unique(&self.ips)
            .into_iter()
            .filter(|i| i.is_ipv6() == v6)
            .collect()
    }

    fn isolating_bridge(&self) -> Option<&str> {
        match self.policy {
            Policy::Open => None,
            _ => self.bridge.as_deref(),
        }
    }
}

/// `ips` without repeats, in order.
fn unique(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

/// The families the addresses use (IPv4 first).
pub fn families(ips: &[IpAddr]) -> Vec<bool> {
    [false, true]
        .into_iter()
        .filter(|v6| ips.iter().any(|i| i.is_ipv6() == *v6))
        .collect()
}

// ---------------------------------------------------------------------------------------
// iptables: rules in the form `iptables-save` prints them (matches, then the target),
// which `iptables-restore` also reads, so one string serves both.

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn comment(text: &str) -> String {
    format!("-m comment --comment \"{text}\"")
}

/// The two per-address rules of `CNI-FORWARD`.
pub fn ipt_ip_rules(ip: IpAddr) -> [String; 2] {
    let h = host(ip);
    [
        format!("-d {h} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-s {h} -j ACCEPT"),
    ]
}

fn ipt_forward_jump() -> String {
    format!("{} -j {PRIV_CHAIN}", comment(FILTER_COMMENT))
}

fn ipt_admin_jump(admin: &str) -> String {
    format!("{} -j {admin}", comment(ADMIN_COMMENT))
}

fn ipt_stage1_jump() -> String {
    format!("{} -j {STAGE1}", comment(ISOLATION_COMMENT))
}

fn policy_comment(p: Policy) -> String {
    comment(&format!(
        "CNI firewall plugin rules (ingressPolicy: {})",
        p.name()
    ))
}

fn ipt_stage1_bridge(br: &str, p: Policy) -> String {
    format!("-i {br} ! -o {br} {} -j {STAGE2}", policy_comment(p))
}

fn ipt_stage1_drop(br: &str) -> String {
    format!(
        "-i {br} -o {br} {} -j DROP",
        policy_comment(Policy::Isolated)
    )
}

fn ipt_stage_return() -> String {
    format!("{} -j RETURN", comment(ISOLATION_COMMENT))
}

fn ipt_stage2_drop(br: &str) -> String {
    format!("-o {br} {} -j DROP", comment(ISOLATION_COMMENT))
}

/// The `filter` table as `iptables-save -t filter` printed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterTable {
    pub chains: Vec<String>,
    /// (chain, rule) in order.
    pub rules: Vec<(String, String)>,
}

impl FilterTable {
    pub fn parse(save: &str) -> FilterTable {
        let mut t = FilterTable::default();
        let mut in_filter = false;
        for line in save.lines() {
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix('*') {
                in_filter = name == "filter";
            } else if !in_filter {
            } else if let Some(c) = line.strip_prefix(':') {
                if let Some(name) = c.split_whitespace().next() {
                    t.chains.push(name.to_string());
                }
            } else if let Some(r) = line.strip_prefix("-A ") {
                if let Some((chain, spec)) = r.split_once(' ') {
                    t.rules.push((chain.to_string(), spec.to_string()));
                }
            }
        }
        t
    }

    pub fn has_chain(&self, c: &str) -> bool {
        self.chains.iter().any(|x| x == c)
    }

    pub fn count(&self, chain: &str, spec: &str) -> usize {
        self.rules
            .iter()
            .filter(|(c, s)| c == chain && s == spec)
            .count()
    }

    fn has_rule(&self, chain: &str, spec: &str) -> bool {
        self.count(chain, spec) > 0
    }
}

/// An `iptables-restore` script and what it adds (for undoing a failed ADD).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IptScript {
    pub text: String,
    pub created_chains: Vec<String>,
    pub added: Vec<(String, String)>,
}

/// Builds a script against a model of the table, so "add if absent" also sees what the
/// script itself adds.
struct IptBuilder {
    t: FilterTable,
    lines: Vec<String>,
    out: IptScript,
}

impl IptBuilder {
    fn chain(&mut self, c: &str) {
        if !self.t.has_chain(c) {
            // `-N`, not `:c - [0:0]`: declaring an existing chain flushes it.
            self.lines.push(format!("-N {c}"));
            self.t.chains.push(c.to_string());
            self.out.created_chains.push(c.to_string());
        }
    }

    /// Add `spec` to `chain` unless it is anywhere in it already (the reference's
    /// `Exists` check): inserted first (`insert`) or appended.
    fn rule(&mut self, chain: &str, spec: &str, insert: bool) {
        if self.t.has_rule(chain, spec) {
            return;
        }
        let r = (chain.to_string(), spec.to_string());
        if insert {
            self.lines.push(format!("-I {chain} 1 {spec}"));
            let at = self
                .t
                .rules
                .iter()
                .position(|(c, _)| c == chain)
                .unwrap_or(self.t.rules.len());
            self.t.rules.insert(at, r.clone());
        } else {
            self.lines.push(format!("-A {chain} {spec}"));
            self.t.rules.push(r.clone());
        }
        self.out.added.push(r);
    }

    fn finish(mut self) -> Option<IptScript> {
        if self.lines.is_empty() {
            return None;
        }
        self.out.text = format!("*filter\n{}\nCOMMIT\n", self.lines.join("\n"));
        Some(self.out)
    }
}

/// ADD's script for one family (`ips` of that family), in the reference's order:
/// chains, the FORWARD and admin jumps (inserted first), the per-address rules
/// (appended), then the isolation chains. `None` when everything is in place.
pub fn ipt_setup_script(s: &Setup, ips: &[IpAddr], t: &FilterTable) -> Option<IptScript> {
    if ips.is_empty() {
        return None;
    }
    let mut b = IptBuilder {
        t: t.clone(),
        lines: Vec::new(),
        out: IptScript::default(),
    };
    b.chain(PRIV_CHAIN);
    b.chain(&s.admin_chain);
    b.rule("FORWARD", &ipt_forward_jump(), true);
    b.rule(PRIV_CHAIN, &ipt_admin_jump(&s.admin_chain), true);
    for ip in ips {
        for r in ipt_ip_rules(*ip) {
            b.rule(PRIV_CHAIN, &r, false);
        }
    }
    if let Some(br) = s.isolating_bridge() {
        b.chain(STAGE1);
        b.chain(STAGE2);
        // before CNI-FORWARD's jump, so isolation wins over the per-address accepts
        b.rule("FORWARD", &ipt_stage1_jump(), true);
        b.rule(STAGE1, &ipt_stage1_bridge(br, s.policy), true);
        if s.policy == Policy::Isolated {
            b.rule(STAGE1, &ipt_stage1_drop(br), true);
        }
        b.rule(STAGE1, &ipt_stage_return(), false);
        b.rule(STAGE2, &ipt_stage2_drop(br), true);
        b.rule(STAGE2, &ipt_stage_return(), false);
    }
    b.finish()
}

/// DEL's script for one family: every copy of the per-address rules of `ips`; the
/// shared chains and jumps stay (other containers use them), as in the reference.
pub fn ipt_teardown_script(ips: &[IpAddr], t: &FilterTable) -> Option<String> {
    let mut lines = Vec::new();
    for ip in unique(ips) {
        for r in ipt_ip_rules(ip) {
            for _ in 0..t.count(PRIV_CHAIN, &r) {
                lines.push(format!("-D {PRIV_CHAIN} {r}"));
            }
        }
    }
    if lines.is_empty() {
        return None;
    }
    Some(format!("*filter\n{}\nCOMMIT\n", lines.join("\n")))
}

/// Undo a family's applied ADD script (a later family failed): remove the rules it
/// added and the chains it created. A created chain that meanwhile holds rules of
/// someone else stays, and so do the added rules that jump to it.
pub fn ipt_undo_script(done: &IptScript, t: &FilterTable) -> Option<String> {
    let target = |spec: &str| spec.rsplit_once(" -j ").map(|(_, j)| j.to_string());
    let kept: Vec<&String> = done
        .created_chains
        .iter()
        .filter(|c| {
            t.rules
                .iter()
                .any(|(rc, rs)| rc == *c && !done.added.iter().any(|(ac, a)| ac == rc && a == rs))
        })
        .collect();
    let mut lines = Vec::new();
    for (chain, spec) in done.added.iter().rev() {
        let keep = target(spec).is_some_and(|j| kept.contains(&&j));
        if !keep && t.has_rule(chain, spec) {
            lines.push(format!("-D {chain} {spec}"));
        }
    }
    for c in done.created_chains.iter().rev() {
        if !kept.contains(&c) && t.has_chain(c) {
            lines.push(format!("-X {c}"));
        }
    }
    if lines.is_empty() {
        return None;
    }
    Some(format!("*filter\n{}\nCOMMIT\n", lines.join("\n")))
}

/// CHECK for one family: the reference's checks (both chains, both jumps, both rules
/// per address), and the isolation rules of the bridge when a policy asks for them.
pub fn ipt_check(s: &Setup, ips: &[IpAddr], t: &FilterTable, tool: &str) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let mut chains = vec![PRIV_CHAIN, s.admin_chain.as_str()];
    let mut rules = vec![
        ("FORWARD".to_string(), ipt_forward_jump()),
        (PRIV_CHAIN.to_string(), ipt_admin_jump(&s.admin_chain)),
    ];
    for ip in ips {
        for r in ipt_ip_rules(*ip) {
            rules.push((PRIV_CHAIN.to_string(), r));
        }
    }
    if s.isolating_bridge().is_some() {
        chains.extend([STAGE1, STAGE2]);
    }
    for c in chains {
        if !t.has_chain(c) {
            bail!("expected chain {c} not found in table filter ({tool})");
        }
    }
    for (c, r) in rules {
        if !t.has_rule(&c, &r) {
            bail!("expected {c} rule \"{r}\" not found ({tool})");
        }
    }
    if let Some(br) = s.isolating_bridge() {
        // Compared without their comments: older plugins (Debian's 1.1.1) wrote
        // "(ingressPolicy: same-bridge)" on every one, and the rules are the same.
        let mut iso = vec![
            ("FORWARD", ipt_stage1_jump()),
            (STAGE1, ipt_stage1_bridge(br, s.policy)),
            (STAGE2, ipt_stage2_drop(br)),
        ];
        if s.policy == Policy::Isolated {
            iso.push((STAGE1, ipt_stage1_drop(br)));
        }
        for (c, r) in iso {
            let want = strip_comment(&r);
            if !t
                .rules
                .iter()
                .any(|(rc, rs)| rc == c && strip_comment(rs) == want)
            {
                bail!("expected {c} rule \"{r}\" not found ({tool})");
            }
        }
    }
    Ok(())
}

/// A rule without its `-m comment --comment "..."` match.
fn strip_comment(spec: &str) -> String {
    match spec.find("-m comment --comment \"") {
        Some(i) => {
            let rest = &spec[i + "-m comment --comment \"".len()..];
            let end = rest.find('"').map(|e| e + 1).unwrap_or(rest.len());
            format!("{}{}", &spec[..i], rest[end..].trim_start())
        }
        None => spec.to_string(),
    }
}

fn ipt_tools(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("ip6tables-save", "ip6tables-restore")
    } else {
        ("iptables-save", "iptables-restore")
    }
}

/// Are the iptables tools for every family of `ips` installed?
pub fn have_iptables(ips: &[IpAddr]) -> bool {
    families(ips).into_iter().all(|v6| {
        let (s, r) = ipt_tools(v6);
        have(s) && have(r)
    })
}

fn ipt_save(v6: bool) -> Result<FilterTable> {
    run(ipt_tools(v6).0, &["-t", "filter"], "").map(|s| FilterTable::parse(&s))
}

fn ipt_restore(v6: bool, script: &str) -> Result<()> {
    let wait = super::XTABLES_WAIT_SECS.to_string();
    run(ipt_tools(v6).1, &["--noflush", "--wait", &wait], script).map(|_| ())
}

/// How often ADD recomputes its script when another program created a chain between
/// our save and our restore (cnibox itself never does: it holds the namespace lock).
const CHAIN_RACE_ATTEMPTS: usize = 5;

/// Set one family up; the script that was applied, if any.
fn ipt_add_family(s: &Setup, v6: bool) -> Result<Option<IptScript>> {
    let ips = s.family(v6);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = ipt_save(v6)?;
        let Some(script) = ipt_setup_script(s, &ips, &t) else {
            return Ok(None);
        };
        match ipt_restore(v6, &script.text) {
            Ok(()) => return Ok(Some(script)),
            Err(e)
                if attempt < CHAIN_RACE_ATTEMPTS && format!("{e}").contains("already exists") =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
}

/// All or nothing across families: when one fails, those already set up are undone.
fn ipt_add(s: &Setup) -> Result<()> {
    let mut applied: Vec<(bool, IptScript)> = Vec::new();
    for v6 in families(&s.ips) {
        match ipt_add_family(s, v6) {
            Ok(Some(done)) => applied.push((v6, done)),
            Ok(None) => {}
            Err(e) => {
                let undo: Vec<String> = applied
                    .iter()
                    .rev()
                    .filter_map(|(v6, done)| {
                        let t = ipt_save(*v6).ok()?;
                        let script = ipt_undo_script(done, &t)?;
                        ipt_restore(*v6, &script).err()
                    })
                    .map(|u| format!("{u:#}"))
                    .collect();
                if undo.is_empty() {
                    return Err(e);
                }
                return Err(e.context(format!(
                    "failed to set up the firewall, and to remove its partial rules ({})",
                    undo.join("; ")
                )));
            }
        }
    }
    Ok(())
}

/// `iptables-save -t filter` for DEL: `None` when the family cannot even be listed
/// (then it holds nothing of ours); a timed-out tool (code 11) is an error.
fn ipt_save_for_cleanup(v6: bool) -> Result<Option<FilterTable>> {
    match ipt_save(v6) {
        Ok(t) => Ok(Some(t)),
        Err(e) if code_of(&e) == Some(Code::TryAgainLater as u32) => Err(e),
        Err(_) => Ok(None),
    }
}

fn ipt_del(ips: &[IpAddr]) -> Result<()> {
    for v6 in families(ips) {
        let (save, _) = ipt_tools(v6);
        if !have(save) {
            continue;
        }
        let fam: Vec<IpAddr> = ips.iter().copied().filter(|i| i.is_ipv6() == v6).collect();
        let Some(t) = ipt_save_for_cleanup(v6)? else {
            continue;
        };
        if let Some(script) = ipt_teardown_script(&fam, &t) {
            ipt_restore(v6, &script)?;
        }
    }
    Ok(())
}

fn ipt_check_all(s: &Setup) -> Result<()> {
    for v6 in families(&s.ips) {
        let t = ipt_save(v6)?;
        ipt_check(
            s,
            &s.family(v6),
            &t,
            ipt_tools(v6).0.trim_end_matches("-save"),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// nftables: the same rules as expressions; the changes as a list of operations (pure,
// tested), sent as one batch.

/// One change of an nftables transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftOp {
    AddTable,
    /// A regular chain.
    AddChain(String),
    /// The base chain `forward` (policy accept).
    AddBaseChain,
    AddRule {
        chain: String,
        exprs: Vec<XExpr>,
        comment: Option<String>,
        insert: bool,
    },
    DelRule {
        chain: String,
        handle: u64,
    },
    DelTable,
}

/// The table as the kernel holds it.
#[derive(Clone, Debug, Default)]
pub struct NftState {
    pub chains: Vec<ChainX>,
    pub rules: Vec<RuleX>,
}

impl NftState {
    pub fn read() -> Result<NftState> {
        Ok(NftState {
            chains: ext::table_chains(nftables::NFPROTO_INET, NFT_TABLE)?,
            rules: ext::table_rules(nftables::NFPROTO_INET, NFT_TABLE)?,
        })
    }

    fn has_chain(&self, c: &str) -> bool {
        self.chains.iter().any(|x| x.name == c)
    }

    fn has_rule(&self, chain: &str, exprs: &[XExpr]) -> bool {
        self.rules
            .iter()
            .any(|r| r.chain == chain && r.exprs == exprs)
    }

    fn mine<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s RuleX> + 's {
        self.rules
            .iter()
            .filter(move |r| r.chain == PRIV_CHAIN && r.comment.starts_with(prefix))
    }
}

fn nft_jump(chain: &str) -> Vec<XExpr> {
    vec![XExpr::Core(Expr::Verdict(
        nftables::NFT_JUMP,
        Some(chain.to_string()),
    ))]
}

/// The two per-address rules: `ip daddr <ip> ct state established,related accept`
/// and `ip saddr <ip> accept` (`ip6` for IPv6).
pub fn nft_ip_rules(ip: IpAddr) -> [Vec<XExpr>; 2] {
    let net = ipnet::IpNet::from(ip);
    let mut d = Vec::new();
    nftables::match_addr(&net, false, false, &mut d);
    let mut d = ext::core(d);
    ext::match_ct_established_related(&mut d);
    d.push(XExpr::Core(Expr::Verdict(nftables::NF_ACCEPT, None)));
    let mut s = Vec::new();
    nftables::match_addr(&net, true, false, &mut s);
    let mut s = ext::core(s);
    s.push(XExpr::Core(Expr::Verdict(nftables::NF_ACCEPT, None)));
    [d, s]
}

fn nft_stage1_bridge(br: &str) -> Vec<XExpr> {
    let mut e = Vec::new();
    ext::match_ifname(ext::NFT_META_IIFNAME, br, false, &mut e);
    ext::match_ifname(ext::NFT_META_OIFNAME, br, true, &mut e);
    e.extend(nft_jump(STAGE2));
    e
}

fn nft_stage1_drop(br: &str) -> Vec<XExpr> {
    let mut e = Vec::new();
    ext::match_ifname(ext::NFT_META_IIFNAME, br, false, &mut e);
    ext::match_ifname(ext::NFT_META_OIFNAME, br, false, &mut e);
    e.push(XExpr::Core(Expr::Verdict(nftables::NF_DROP, None)));
    e
}

fn nft_stage2_drop(br: &str) -> Vec<XExpr> {
    let mut e = Vec::new();
    ext::match_ifname(ext::NFT_META_OIFNAME, br, false, &mut e);
    e.push(XExpr::Core(Expr::Verdict(nftables::NF_DROP, None)));
    e
}

fn add_rule(chain: &str, exprs: Vec<XExpr>, comment: &str, insert: bool) -> NftOp {
    NftOp::AddRule {
        chain: chain.to_string(),
        exprs,
        comment: Some(comment.to_string()),
        insert,
    }
}

/// ADD's transaction against the current table. Chains are declared only when missing
/// (re-declaring `forward` would reset a policy an admin set, and costs an RCU grace
/// period); shared rules are added only when absent; this attachment's old rules are
/// replaced.
pub fn nft_setup_ops(s: &Setup, st: &NftState) -> Vec<NftOp> {
    let mut ops = Vec::new();
    if st.chains.is_empty() {
        ops.push(NftOp::AddTable);
    }
    if !st.has_chain(NFT_BASE_CHAIN) {
        ops.push(NftOp::AddBaseChain);
    }
    let mut chains = vec![PRIV_CHAIN, s.admin_chain.as_str()];
    if s.isolating_bridge().is_some() {
        chains.extend([STAGE1, STAGE2]);
    }
    for c in chains {
        if !st.has_chain(c) {
            ops.push(NftOp::AddChain(c.to_string()));
        }
    }
    if !st.has_rule(NFT_BASE_CHAIN, &nft_jump(PRIV_CHAIN)) {
        ops.push(add_rule(
            NFT_BASE_CHAIN,
            nft_jump(PRIV_CHAIN),
            FILTER_COMMENT,
            false,
        ));
    }
    let admin = nft_jump(&s.admin_chain);
    if !st.has_rule(PRIV_CHAIN, &admin) {
        ops.push(add_rule(PRIV_CHAIN, admin, ADMIN_COMMENT, true));
    }
    let prefix = nft_prefix(s.att.net, s.att.ifname, s.att.cid);
    for r in st.mine(&prefix) {
        ops.push(NftOp::DelRule {
            chain: r.chain.clone(),
            handle: r.handle,
        });
    }
    let c = nft_comment(s.att.net, s.att.ifname, s.att.cid);
    for ip in unique(&s.ips) {
        for r in nft_ip_rules(ip) {
            ops.push(add_rule(PRIV_CHAIN, r, &c, false));
        }
    }
    if let Some(br) = s.isolating_bridge() {
        if !st.has_rule(NFT_BASE_CHAIN, &nft_jump(STAGE1)) {
            ops.push(add_rule(
                NFT_BASE_CHAIN,
                nft_jump(STAGE1),
                ISOLATION_COMMENT,
                true,
            ));
        }
        let pc = format!(
            "CNI firewall plugin rules (ingressPolicy: {})",
            s.policy.name()
        );
        if !st.has_rule(STAGE1, &nft_stage1_bridge(br)) {
            ops.push(add_rule(STAGE1, nft_stage1_bridge(br), &pc, true));
        }
        if s.policy == Policy::Isolated && !st.has_rule(STAGE1, &nft_stage1_drop(br)) {
            ops.push(add_rule(STAGE1, nft_stage1_drop(br), &pc, true));
        }
        if !st.has_rule(STAGE2, &nft_stage2_drop(br)) {
            ops.push(add_rule(
                STAGE2,
                nft_stage2_drop(br),
                ISOLATION_COMMENT,
                true,
            ));
        }
    }
    ops
}

/// Does the table hold nothing but its skeleton once the rules `gone` are deleted?
/// Then it is deleted as a whole. Anything else (isolation rules, rules or chains an
/// admin added, a changed policy) keeps it.
fn nft_disposable(st: &NftState, gone: &[u64]) -> bool {
    let left: Vec<&RuleX> = st
        .rules
        .iter()
        .filter(|r| !gone.contains(&r.handle))
        .collect();
    let is_jump = |r: &RuleX, to: Option<&str>| match r.exprs.as_slice() {
        [XExpr::Core(Expr::Verdict(nftables::NFT_JUMP, Some(c)))] => to.is_none_or(|t| t == c),
        _ => false,
    };
    let admin_chains: Vec<String> = left
        .iter()
        .filter(|r| r.chain == PRIV_CHAIN && r.comment == ADMIN_COMMENT && is_jump(r, None))
        .filter_map(|r| match r.exprs.as_slice() {
            [XExpr::Core(Expr::Verdict(_, Some(c)))] => Some(c.clone()),
            _ => None,
        })
        .collect();
    let known = |c: &str| {
        [NFT_BASE_CHAIN, PRIV_CHAIN, STAGE1, STAGE2].contains(&c)
            || admin_chains.iter().any(|a| a == c)
    };
    st.chains.iter().all(|c| {
        known(&c.name)
            && (c.name != NFT_BASE_CHAIN
                || c.policy.is_none_or(|p| p == nftables::NF_ACCEPT as u32))
    }) && left.iter().all(|r| match r.chain.as_str() {
        NFT_BASE_CHAIN => is_jump(r, Some(PRIV_CHAIN)) || is_jump(r, Some(STAGE1)),
        PRIV_CHAIN => r.comment == ADMIN_COMMENT && is_jump(r, None),
        _ => false,
    })
}

/// Delete the rules `handles` (of `CNI-FORWARD`), or the whole table if nothing else
/// would be left in it.
fn nft_removal_ops(st: &NftState, handles: Vec<u64>) -> Vec<NftOp> {
    if handles.is_empty() {
        return Vec::new();
    }
    if nft_disposable(st, &handles) {
        return vec![NftOp::DelTable];
    }
    handles
        .into_iter()
        .map(|handle| NftOp::DelRule {
            chain: PRIV_CHAIN.to_string(),
            handle,
        })
        .collect()
}

/// DEL's transaction: the attachment's rules, found by their comment.
pub fn nft_teardown_ops(att: &Attachment, st: &NftState) -> Vec<NftOp> {
    let prefix = nft_prefix(att.net, att.ifname, att.cid);
    let handles = st.mine(&prefix).map(|r| r.handle).collect();
    nft_removal_ops(st, handles)
}

/// GC's transaction: rules of network `net` whose attachment is not in `valid`
/// (container id, ifname).
pub fn nft_gc_ops(net: &str, valid: &[(String, String)], st: &NftState) -> Vec<NftOp> {
    let keep: Vec<String> = valid
        .iter()
        .map(|(cid, ifname)| nft_prefix(net, ifname, cid))
        .collect();
    // "<H(net)>-": this network's rules
    let ours = format!("{}-", hash_with_prefix(16, "", net));
    let handles = st
        .mine(&ours)
        .filter(|r| !keep.iter().any(|k| r.comment.starts_with(k.as_str())))
        .map(|r| r.handle)
        .collect();
    nft_removal_ops(st, handles)
}

/// CHECK: the chains, both jumps and both rules per address with the attachment's
/// comment; the bridge's isolation rules when a policy asks for them.
pub fn nft_check(s: &Setup, st: &NftState) -> Result<()> {
    let mut chains = vec![NFT_BASE_CHAIN, PRIV_CHAIN, s.admin_chain.as_str()];
    let mut rules = vec![
        (
            NFT_BASE_CHAIN,
            nft_jump(PRIV_CHAIN),
            "jump CNI-FORWARD".to_string(),
        ),
        (
            PRIV_CHAIN,
            nft_jump(&s.admin_chain),
            format!("jump {}", s.admin_chain),
        ),
    ];
    if let Some(br) = s.isolating_bridge() {
        chains.extend([STAGE1, STAGE2]);
        rules.push((NFT_BASE_CHAIN, nft_jump(STAGE1), format!("jump {STAGE1}")));
        rules.push((
            STAGE1,
            nft_stage1_bridge(br),
            format!("iifname {br:?} oifname != {br:?} jump {STAGE2}"),
        ));
        if s.policy == Policy::Isolated {
            rules.push((
                STAGE1,
                nft_stage1_drop(br),
                format!("iifname {br:?} oifname {br:?} drop"),
            ));
        }
        rules.push((STAGE2, nft_stage2_drop(br), format!("oifname {br:?} drop")));
    }
    for c in chains {
        if !st.has_chain(c) {
            bail!("expected chain {c} not found in table inet {NFT_TABLE}");
        }
    }
    for (c, e, text) in rules {
        if !st.has_rule(c, &e) {
            bail!("expected rule \"{text}\" not found in chain {c} of table inet {NFT_TABLE}");
        }
    }
    let prefix = nft_prefix(s.att.net, s.att.ifname, s.att.cid);
    for ip in unique(&s.ips) {
        let [d, src] = nft_ip_rules(ip);
        for (e, text) in [(d, "daddr"), (src, "saddr")] {
            if !st.mine(&prefix).any(|r| r.exprs == e) {
                bail!(
                    "expected the {text} {ip} rule of this attachment not found in chain {PRIV_CHAIN} of table inet {NFT_TABLE}"
                );
            }
        }
    }
    Ok(())
}

/// Send `ops` as one batch.
pub fn nft_commit(ops: &[NftOp], what: &str) -> Result<()> {
    let mut b = Batch::new(nftables::NFPROTO_INET, NFT_TABLE);
    for op in ops {
        match op {
            NftOp::AddTable => b.add_table(Some(TABLE_COMMENT))?,
            NftOp::AddChain(c) => b.add_chain(&ChainSpec {
                name: c,
                comment: None,
                base: None,
            })?,
            NftOp::AddBaseChain => b.add_chain(&ChainSpec {
                name: NFT_BASE_CHAIN,
                comment: None,
                base: Some(("filter", ext::NF_INET_FORWARD, 0)),
            })?,
            NftOp::AddRule {
                chain,
                exprs,
                comment,
                insert,
            } => b.add_rule_x(chain, exprs, comment.as_deref(), *insert)?,
            NftOp::DelRule { chain, handle } => b.delete_rule(chain, *handle)?,
            NftOp::DelTable => b.delete_table()?,
        }
    }
    b.commit(what)
}

/// A kernel without nf_tables holds no nftables rules of ours.
fn ignore_unsupported(e: anyhow::Error) -> Result<()> {
    match crate::netlink::errno(&e) {
        Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) | Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

fn nft_del(att: &Attachment) -> Result<()> {
    let st = NftState::read()?;
    nft_commit(
        &nft_teardown_ops(att, &st),
        "failed to remove the firewall rules (nftables)",
    )
}

// ---------------------------------------------------------------------------------------
// The namespace lock

/// An exclusive `flock` on the calling thread's network namespace file, held while
/// the guard lives. Every process in the same namespace opens the same nsfs inode, so
/// this serialises cnibox's firewall changes per namespace, with no file to create or
/// leave behind.
pub struct NetnsLock(#[allow(dead_code)] std::fs::File);

pub fn lock_netns(wait: Duration) -> Result<NetnsLock> {
    let f = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| anyhow!("failed to open the network namespace to lock it: {e}"))?;
    let deadline = Instant::now() + wait;
    let mut nap = Duration::from_millis(1);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(NetnsLock(f)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow!("failed to lock the network namespace: {e}"))
            }
        }
        if Instant::now() >= deadline {
            return Err(cni_err(
                Code::TryAgainLater,
                format!(
                    "another cnibox kept this network namespace's firewall locked for more than {}s",
                    wait.as_secs()
                ),
            ));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Entry points

/// ADD: set up `s` with `backend`, all or nothing.
pub fn add(s: &Setup, backend: Backend) -> Result<()> {
    let _lock = lock_netns(LOCK_WAIT)?;
    match backend {
        Backend::Iptables => ipt_add(s),
        Backend::Nftables => {
            let st = NftState::read()?;
            nft_commit(
                &nft_setup_ops(s, &st),
                "failed to set up the firewall rules (nftables)",
            )
        }
    }
}

/// CHECK: are `s`'s rules in place?
pub fn check(s: &Setup, backend: Backend) -> Result<()> {
    match backend {
        Backend::Iptables => ipt_check_all(s),
        Backend::Nftables => nft_check(s, &NftState::read()?),
    }
}

/// Both backends' errors as one; "try again later" if any of them is.
fn combine(what: &str, errs: Vec<anyhow::Error>) -> Result<()> {
    if errs.is_empty() {
        return Ok(());
    }
    let again = errs
        .iter()
        .any(|e| code_of(e) == Some(Code::TryAgainLater as u32));
    let text = errs
        .iter()
        .map(|e| format!("{e:#}"))
        .collect::<Vec<_>>()
        .join("; ");
    if again {
        return Err(cni_err(Code::TryAgainLater, format!("{what}: {text}")));
    }
    bail!("{what}: {text}")
}

/// DEL: the attachment's rules in both backends, whichever hold them: iptables by
/// address (`ips`; its rules carry nothing else), nftables by comment.
pub fn del(att: &Attachment, ips: &[IpAddr]) -> Result<()> {
    let _lock = lock_netns(LOCK_WAIT)?;
    let mut errs = Vec::new();
    errs.extend(ipt_del(ips).err());
    errs.extend(nft_del(att).or_else(ignore_unsupported).err());
    combine("failed to remove the firewall rules", errs)
}

/// GC: nftables rules of `net` whose attachment is not valid. The iptables rules carry
/// only an address (they must, to stay the reference's), so there is nothing to go by.
pub fn gc(net: &str, valid: &[(String, String)]) -> Result<()> {
    let _lock = lock_netns(LOCK_WAIT)?;
    let r = NftState::read().and_then(|st| {
        nft_commit(
            &nft_gc_ops(net, valid, &st),
            "failed to garbage-collect firewall rules (nftables)",
        )
    });
    r.or_else(ignore_unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(ips: &[&str], policy: Policy) -> Setup<'static> {
        Setup {
            att: Attachment {
                net: "net1",
                ifname: "eth0",
                cid: "ctr1",
            },
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            admin_chain: DEFAULT_ADMIN_CHAIN.into(),
            policy,
            bridge: Some("cbr0".into()),
        }
    }

    const EMPTY: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

    /// What iptables-save printed after the reference's ADD (isolated, one address).
    const AFTER_ISOLATED: &str = r#"# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CNI-ADMIN - [0:0]
:CNI-FORWARD - [0:0]
:CNI-ISOLATION-STAGE-1 - [0:0]
:CNI-ISOLATION-STAGE-2 - [0:0]
-A FORWARD -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j CNI-ISOLATION-STAGE-1
-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
-A CNI-FORWARD -d 10.1.2.3/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A CNI-FORWARD -s 10.1.2.3/32 -j ACCEPT
-A CNI-ISOLATION-STAGE-1 -i cbr0 -o cbr0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: isolated)" -j DROP
-A CNI-ISOLATION-STAGE-1 -i cbr0 ! -o cbr0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: isolated)" -j CNI-ISOLATION-STAGE-2
-A CNI-ISOLATION-STAGE-1 -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j RETURN
-A CNI-ISOLATION-STAGE-2 -o cbr0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j DROP
-A CNI-ISOLATION-STAGE-2 -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j RETURN
COMMIT
"#;

    #[test]
    fn first_add_creates_everything_in_the_references_order() {
        let s = setup(&["10.1.2.3"], Policy::Isolated);
        let t = FilterTable::parse(EMPTY);
        let script = ipt_setup_script(&s, &s.family(false), &t).unwrap();
        assert_eq!(
            script.text,
            r#"*filter
-N CNI-FORWARD
-N CNI-ADMIN
-I FORWARD 1 -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
-I CNI-FORWARD 1 -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
-A CNI-FORWARD -d 10.1.2.3/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A CNI-FORWARD -s 10.1.2.3/32 -j ACCEPT
-N CNI-ISOLATION-STAGE-1
-N CNI-ISOLATION-STAGE-2
-I FORWARD 1 -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j CNI-ISOLATION-STAGE-1
-I CNI-ISOLATION-STAGE-1 1 -i cbr0 ! -o cbr0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: isolated)" -j CNI-ISOLATION-STAGE-2
-I CNI-ISOLATION-STAGE-1 1 -i cbr0 -o cbr0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: isolated)" -j DROP
-A CNI-ISOLATION-STAGE-1 -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j RETURN
-I CNI-ISOLATION-STAGE-2 1 -o cbr0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j DROP
-A CNI-ISOLATION-STAGE-2 -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j RETURN
COMMIT
"#
        );
        assert_eq!(script.created_chains.len(), 4);
        assert_eq!(script.added.len(), 10);
        // the model after the script is what iptables-save then prints
        let after = FilterTable::parse(AFTER_ISOLATED);
        assert!(ipt_setup_script(&s, &s.family(false), &after).is_none());
        ipt_check(&s, &s.family(false), &after, "iptables").unwrap();
    }

    #[test]
    fn second_add_only_adds_its_own_rules() {
        let after = FilterTable::parse(AFTER_ISOLATED);
        let s = setup(&["10.1.2.4", "fd00::4"], Policy::Isolated);
        let script = ipt_setup_script(&s, &s.family(false), &after).unwrap();
        assert_eq!(
            script.text,
            "*filter\n-A CNI-FORWARD -d 10.1.2.4/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A CNI-FORWARD -s 10.1.2.4/32 -j ACCEPT\nCOMMIT\n"
        );
        assert!(script.created_chains.is_empty());
        // IPv6 goes to its own table, where everything is new
        let v6 = ipt_setup_script(&s, &s.family(true), &FilterTable::parse(EMPTY)).unwrap();
        assert!(v6
            .text
            .contains("-A CNI-FORWARD -s fd00::4/128 -j ACCEPT\n"));
        // a second bridge with same-bridge adds its own isolation rules only
        let mut s2 = setup(&["10.1.3.4"], Policy::SameBridge);
        s2.bridge = Some("cbr1".into());
        let t = ipt_setup_script(&s2, &s2.family(false), &after)
            .unwrap()
            .text;
        assert!(t.contains("-I CNI-ISOLATION-STAGE-1 1 -i cbr1 ! -o cbr1 -m comment --comment \"CNI firewall plugin rules (ingressPolicy: same-bridge)\" -j CNI-ISOLATION-STAGE-2\n"));
        assert!(t.contains("-I CNI-ISOLATION-STAGE-2 1 -o cbr1 "));
        assert!(!t.contains("-j DROP\n-A") && !t.contains("-N "), "{t}");
        // a custom admin chain gets its own chain and jump
        let mut s3 = setup(&["10.1.2.5"], Policy::Open);
        s3.admin_chain = "MY-ADMIN".into();
        let t = ipt_setup_script(&s3, &s3.family(false), &after)
            .unwrap()
            .text;
        assert!(t.contains("-N MY-ADMIN\n"));
        assert!(t.contains("-I CNI-FORWARD 1 -m comment --comment \"CNI firewall plugin admin overrides\" -j MY-ADMIN\n"));
        assert!(!t.contains("STAGE"));
    }

    #[test]
    fn teardown_removes_every_copy_and_nothing_shared() {
        let mut save =
            AFTER_ISOLATED.replace("COMMIT", "-A CNI-FORWARD -s 10.1.2.3/32 -j ACCEPT\nCOMMIT");
        save.push_str("*nat\n-A CNI-FORWARD -s 10.1.2.3/32 -j ACCEPT\nCOMMIT\n");
        let t = FilterTable::parse(&save);
        assert_eq!(
            t.count(PRIV_CHAIN, "-s 10.1.2.3/32 -j ACCEPT"),
            2,
            "nat ignored"
        );
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let script = ipt_teardown_script(&[ip, ip], &t).unwrap();
        assert_eq!(
            script,
            "*filter\n-D CNI-FORWARD -d 10.1.2.3/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-D CNI-FORWARD -s 10.1.2.3/32 -j ACCEPT\n-D CNI-FORWARD -s 10.1.2.3/32 -j ACCEPT\nCOMMIT\n"
        );
        assert!(ipt_teardown_script(&["10.9.9.9".parse().unwrap()], &t).is_none());
        let s = setup(&["10.1.2.3"], Policy::Open);
        let gone = FilterTable::parse(
            &AFTER_ISOLATED.replace("-A CNI-FORWARD -s 10.1.2.3/32 -j ACCEPT\n", ""),
        );
        let e = ipt_check(&s, &s.family(false), &gone, "iptables").unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected CNI-FORWARD rule \"-s 10.1.2.3/32 -j ACCEPT\" not found (iptables)"
        );
    }

    #[test]
    fn undo_reverts_a_first_add_and_keeps_what_others_use() {
        let s = setup(&["10.1.2.3"], Policy::Isolated);
        let done = ipt_setup_script(&s, &s.family(false), &FilterTable::parse(EMPTY)).unwrap();
        let after = FilterTable::parse(AFTER_ISOLATED);
        let undo = ipt_undo_script(&done, &after).unwrap();
        assert_eq!(undo.matches("\n-D ").count(), 10, "{undo}");
        assert!(undo.ends_with("-X CNI-ISOLATION-STAGE-2\n-X CNI-ISOLATION-STAGE-1\n-X CNI-ADMIN\n-X CNI-FORWARD\nCOMMIT\n"), "{undo}");
        // someone else's address arrived in CNI-FORWARD meanwhile: it and its jumps stay
        let busy = FilterTable::parse(
            &AFTER_ISOLATED.replace("COMMIT", "-A CNI-FORWARD -s 10.7.7.7/32 -j ACCEPT\nCOMMIT"),
        );
        let undo = ipt_undo_script(&done, &busy).unwrap();
        assert!(!undo.contains("-X CNI-FORWARD"), "{undo}");
        assert!(
            !undo.contains(
                "-D FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD"
            ),
            "{undo}"
        );
        assert!(undo.contains("-D CNI-FORWARD -s 10.1.2.3/32 -j ACCEPT\n"));
        assert!(undo.contains("-X CNI-ISOLATION-STAGE-1\n"));
    }

    fn rule(chain: &str, handle: u64, comment: &str, exprs: Vec<XExpr>) -> RuleX {
        RuleX {
            chain: chain.into(),
            handle,
            comment: comment.into(),
            exprs,
        }
    }

    fn chains(names: &[&str]) -> Vec<ChainX> {
        names
            .iter()
            .map(|n| ChainX {
                name: n.to_string(),
                hook: (*n == NFT_BASE_CHAIN).then_some(ext::NF_INET_FORWARD),
                policy: (*n == NFT_BASE_CHAIN).then_some(nftables::NF_ACCEPT as u32),
            })
            .collect()
    }

    /// The state after `nft_setup_ops(s)` on an empty table, as the kernel would
    /// return it.
    fn state_after(s: &Setup) -> NftState {
        let ops = nft_setup_ops(s, &NftState::default());
        let mut st = NftState::default();
        let mut h = 0;
        for op in ops {
            match op {
                NftOp::AddBaseChain => st.chains.extend(chains(&[NFT_BASE_CHAIN])),
                NftOp::AddChain(c) => st.chains.extend(chains(&[&c])),
                NftOp::AddRule {
                    chain,
                    exprs,
                    comment,
                    insert,
                } => {
                    h += 1;
                    let r = rule(&chain, h, &comment.unwrap_or_default(), exprs);
                    if insert {
                        st.rules.insert(0, r)
                    } else {
                        st.rules.push(r)
                    }
                }
                _ => {}
            }
        }
        st
    }

    #[test]
    fn nft_first_add_then_in_place() {
        let s = setup(&["10.1.2.3", "fd00::3"], Policy::Isolated);
        let ops = nft_setup_ops(&s, &NftState::default());
        assert_eq!(ops[0], NftOp::AddTable);
        assert_eq!(ops[1], NftOp::AddBaseChain);
        let adds = ops
            .iter()
            .filter(|o| matches!(o, NftOp::AddRule { .. }))
            .count();
        // jump, admin jump, 2x2 addresses, stage-1 jump, 2 stage-1, 1 stage-2
        assert_eq!(adds, 10);
        let st = state_after(&s);
        nft_check(&s, &st).unwrap();
        // a second ADD of the same attachment replaces its own rules only
        let again = nft_setup_ops(&s, &st);
        assert_eq!(
            again
                .iter()
                .filter(|o| matches!(o, NftOp::DelRule { .. }))
                .count(),
            4
        );
        assert_eq!(again.len(), 8, "{again:?}");
        // an address listed twice (not next to each other) gets its rules once
        let twice = setup(&["10.1.2.3", "fd00::3", "10.1.2.3"], Policy::Open);
        let n = nft_setup_ops(&twice, &NftState::default())
            .iter()
            .filter(|o| matches!(o, NftOp::AddRule { comment: Some(c), .. } if c.contains("ctr1")))
            .count();
        assert_eq!(n, 4);
        // the table stays (isolation rules are shared per bridge)
        assert!(!matches!(
            nft_teardown_ops(&s.att, &st)[..],
            [NftOp::DelTable]
        ));
    }

    #[test]
    fn nft_table_goes_with_the_last_attachment_unless_it_holds_more() {
        let s = setup(&["10.1.2.3"], Policy::Open);
        let st = state_after(&s);
        assert_eq!(nft_teardown_ops(&s.att, &st), vec![NftOp::DelTable]);
        // another attachment left: only ours go
        let mut other = setup(&["10.1.2.4"], Policy::Open);
        other.att.cid = "ctr2";
        let mut st2 = st.clone();
        for (i, r) in nft_ip_rules("10.1.2.4".parse().unwrap())
            .into_iter()
            .enumerate()
        {
            st2.rules.push(rule(
                PRIV_CHAIN,
                100 + i as u64,
                &nft_comment("net1", "eth0", "ctr2"),
                r,
            ));
        }
        let ops = nft_teardown_ops(&s.att, &st2);
        assert_eq!(ops.len(), 2);
        assert!(ops.iter().all(|o| matches!(o, NftOp::DelRule { .. })));
        // GC keeps ctr2 (valid) and drops ctr1
        let gc = nft_gc_ops("net1", &[("ctr2".into(), "eth0".into())], &st2);
        assert_eq!(gc, ops);
        assert!(nft_gc_ops("other-net", &[], &st2).is_empty());
        // an admin's rule, or a changed policy, keeps the table
        let mut admin = st.clone();
        admin.rules.push(rule(DEFAULT_ADMIN_CHAIN, 50, "", vec![]));
        assert!(!nft_teardown_ops(&s.att, &admin).contains(&NftOp::DelTable));
        let mut pol = st.clone();
        pol.chains[0].policy = Some(nftables::NF_DROP as u32);
        assert!(!nft_teardown_ops(&s.att, &pol).contains(&NftOp::DelTable));
        let mut extra = st.clone();
        extra.chains.extend(chains(&["mine"]));
        assert!(!nft_teardown_ops(&s.att, &extra).contains(&NftOp::DelTable));
        // nothing of ours: nothing to do
        let mut stranger = s.clone();
        stranger.att.cid = "nobody";
        assert!(nft_teardown_ops(&stranger.att, &st).is_empty());
    }

    #[test]
    fn nft_check_names_what_is_missing() {
        let s = setup(&["10.1.2.3"], Policy::SameBridge);
        let mut st = state_after(&s);
        st.rules.retain(|r| r.chain != STAGE2);
        let e = nft_check(&s, &st).unwrap_err().to_string();
        assert!(e.contains("oifname \"cbr0\" drop"), "{e}");
        let mut st = state_after(&s);
        st.rules
            .retain(|r| !(r.chain == PRIV_CHAIN && r.exprs.len() == 5));
        let e = nft_check(&s, &st).unwrap_err().to_string();
        assert!(e.contains("saddr 10.1.2.3"), "{e}");
    }

    #[test]
    fn nft_rules_compile_like_nft() {
        let [d, s] = nft_ip_rules("10.1.2.3".parse().unwrap());
        // as `nft --debug=netlink` shows for
        // `ip daddr 10.1.2.3 ct state established,related accept`
        let names: Vec<&str> = d.iter().map(XExpr::name).collect();
        assert_eq!(
            names,
            [
                "meta",
                "cmp",
                "payload",
                "cmp",
                "ct",
                "bitwise",
                "cmp",
                "immediate"
            ]
        );
        assert_eq!(
            s[2],
            XExpr::Core(Expr::Payload {
                base: 1,
                offset: 12,
                len: 4
            })
        );
        let b = nft_stage1_bridge("cbr0");
        assert_eq!(
            b[3],
            XExpr::Core(Expr::Cmp {
                neq: true,
                data: b"cbr0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()
            })
        );
    }

    #[test]
    fn isolation_rules_are_checked_without_their_comments() {
        assert_eq!(
            strip_comment(&ipt_stage1_bridge("cbr0", Policy::Isolated)),
            "-i cbr0 ! -o cbr0 -j CNI-ISOLATION-STAGE-2"
        );
        assert_eq!(
            strip_comment("-s 1.2.3.4/32 -j ACCEPT"),
            "-s 1.2.3.4/32 -j ACCEPT"
        );
        // as Debian's 1.1.1 wrote them
        let debian = AFTER_ISOLATED
            .replace("(ingressPolicy: isolated)", "(ingressPolicy: same-bridge)")
            .replace("same-bridge|isolated", "same-bridge");
        let s = setup(&["10.1.2.3"], Policy::SameBridge);
        ipt_check(
            &s,
            &s.family(false),
            &FilterTable::parse(&debian),
            "iptables",
        )
        .unwrap();
        let no_stage2 = debian.replace(
            "-A CNI-ISOLATION-STAGE-2 -o cbr0",
            "-A CNI-ISOLATION-STAGE-2 -o cbr9",
        );
        let e = ipt_check(
            &s,
            &s.family(false),
            &FilterTable::parse(&no_stage2),
            "iptables",
        );
        assert!(e.unwrap_err().to_string().contains("-o cbr0"));
    }

    #[test]
    fn policies() {
        assert_eq!(Policy::parse(""), Some(Policy::Open));
        assert_eq!(Policy::parse("isolated"), Some(Policy::Isolated));
        assert_eq!(Policy::parse("Isolated"), None);
        assert_eq!(families(&["fd00::1".parse().unwrap()]), vec![true]);
    }
}
