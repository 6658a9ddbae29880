//! IP masquerade for bridge and ptp (`ipMasq: true`), byte-compatible with the
//! reference's two backends.
//!
//! iptables: chain `CNI-<sha512(net+cid)[:24]>` in `nat`, rules commented
//! `name: "<net>" id: "<cid>"`, and a `POSTROUTING -s <ip> -j <chain>` jump.
//! nftables: table `inet cni_plugins_masquerade`, one `masq_checks` rule per IP whose
//! comment starts with `<H(net)>-<H(ifname:cid)>`.
//!
//! Better than the reference: teardown needs no IP list (the chain name and the comment
//! prefix identify the attachment), so DEL cleans up even when the netns is gone; GC
//! works for both backends (iptables rules carry the network and container in their
//! comment).

use super::{go_quote, hash_with_prefix, have, run};
use crate::error::Code;
use crate::netlink::nftables::{self, Batch, ChainSpec, Expr};
use anyhow::{bail, Result};
use ipnet::IpNet;

pub const NFT_TABLE: &str = "cni_plugins_masquerade";
pub const NFT_CHAIN: &str = "masq_checks";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nftables,
}

/// `ipMasqBackend` → backend; unset prefers iptables, as the reference does, and falls
/// back to nftables (spoken natively, no `nft` binary needed) when iptables is absent.
pub fn backend(conf: Option<&str>) -> Result<Backend> {
    match conf {
        Some("iptables") => Ok(Backend::Iptables),
        Some("nftables") => Ok(Backend::Nftables),
        Some(other) => bail!("unknown ipmasq backend {other:?}"),
        None if !have("iptables") => Ok(Backend::Nftables),
        None => Ok(Backend::Iptables),
    }
}

pub fn chain_name(net: &str, cid: &str) -> String {
    hash_with_prefix(28, "CNI-", &format!("{net}{cid}"))
}

pub fn ipt_comment(net: &str, cid: &str) -> String {
    format!("name: {} id: {}", go_quote(net), go_quote(cid))
}

fn hash_net(net: &str) -> String {
    hash_with_prefix(16, "", net)
}

pub fn nft_prefix(net: &str, ifname: &str, cid: &str) -> String {
    format!(
        "{}-{}",
        hash_net(net),
        hash_with_prefix(16, "", &format!("{ifname}:{cid}"))
    )
}

pub fn nft_comment(net: &str, ifname: &str, cid: &str) -> String {
    let strip = |s: &str| s.replace('"', "");
    let mut c = format!(
        "{}, net: {}, if: {}, id: {}",
        nft_prefix(net, ifname, cid),
        strip(net),
        strip(ifname),
        strip(cid)
    );
    // knftables' comment limit; cut on a char boundary.
    while c.len() > 128 {
        c.pop();
    }
    c
}

// ---------------------------------------------------------------------------------------
// nftables, spoken natively (one nfnetlink batch per change; no `nft` process)

const TABLE_COMMENT: &str = "Masquerading for plugins from github.com/containernetworking/plugins";
const CHAIN_COMMENT: &str =
    "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";
/// nft's `srcnat` priority.
const SRCNAT: i32 = 100;

/// The `masq_checks` rule for one address: `ip[6] saddr == <ip> ip[6] daddr != <subnet>
/// masquerade`, with the attachment's comment.
pub fn nft_masq_rule(ip: &IpNet) -> Vec<Expr> {
    let mut e = Vec::new();
    let host = IpNet::new(ip.addr(), if ip.addr().is_ipv4() { 32 } else { 128 }).unwrap_or(*ip);
    nftables::match_addr(&host, true, false, &mut e);
    nftables::match_addr(&ip.trunc(), false, true, &mut e);
    e.push(Expr::Masq);
    e
}

/// The rules `postrouting` must hold: multicast returns, then a jump to `masq_checks`.
fn nft_postrouting_rules() -> Result<Vec<Vec<Expr>>> {
    let mut rules = Vec::new();
    for mcast in ["224.0.0.0/4", "ff00::/8"] {
        let mut e = Vec::new();
        let net: IpNet = mcast.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        nftables::match_addr(&net, false, false, &mut e);
        e.push(Expr::Verdict(nftables::NFT_RETURN, None));
        rules.push(e);
    }
    rules.push(vec![Expr::Verdict(
        nftables::NFT_GOTO,
        Some(NFT_CHAIN.to_string()),
    )]);
    Ok(rules)
}

/// ADD's transaction. The reference re-declares both chains and rewrites `postrouting`
/// on every ADD; re-declaring an existing chain makes the kernel wait an RCU grace period
/// (~10-20 ms), so that part is done only when the chains are missing or `postrouting`
/// does not hold the expected rules (`in_place` false). Then: drop stale rules of this
/// attachment and add one rule per IP.
pub fn nft_setup_batch(
    ips: &[IpNet],
    net: &str,
    ifname: &str,
    cid: &str,
    stale: &[u64],
    in_place: bool,
) -> Result<Batch> {
    let mut b = Batch::new(nftables::NFPROTO_INET, NFT_TABLE);
    if !in_place {
        b.add_table(Some(TABLE_COMMENT))?;
        b.add_chain(&ChainSpec {
            name: NFT_CHAIN,
            comment: Some(CHAIN_COMMENT),
            base: None,
        })?;
        b.add_chain(&ChainSpec {
            name: "postrouting",
            comment: None,
            base: Some(("nat", nftables::NF_INET_POST_ROUTING, SRCNAT)),
        })?;
        b.flush_chain("postrouting")?;
        for rule in nft_postrouting_rules()? {
            b.add_rule("postrouting", &rule, None)?;
        }
    }
    for h in stale {
        b.delete_rule(NFT_CHAIN, *h)?;
    }
    let comment = nft_comment(net, ifname, cid);
    for ip in ips {
        b.add_rule(NFT_CHAIN, &nft_masq_rule(ip), Some(&comment))?;
    }
    Ok(b)
}

/// Does `postrouting` hold exactly the expected rules, by expression and by value? (An
/// address altered by hand must be put back: it decides what is masqueraded.)
fn nft_postrouting_ok() -> Result<bool> {
    let Some(have) = nftables::dump_rules(nftables::NFPROTO_INET, NFT_TABLE, "postrouting")? else {
        return Ok(false);
    };
    let want = nft_postrouting_rules()?;
    if have.len() != want.len() {
        return Ok(false);
    }
    for (h, w) in have.iter().zip(&want) {
        if !h.is(w)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn nft_rules_with_prefix(prefix: &str) -> Result<Vec<(u64, String)>> {
    Ok(
        nftables::list_rules(nftables::NFPROTO_INET, NFT_TABLE, NFT_CHAIN)?
            .into_iter()
            .filter(|(_, c)| c.starts_with(prefix))
            .collect(),
    )
}

fn nft_delete(handles: Vec<u64>, what: &str) -> Result<()> {
    let mut b = Batch::new(nftables::NFPROTO_INET, NFT_TABLE);
    for h in handles {
        b.delete_rule(NFT_CHAIN, h)?;
    }
    b.commit(what)
}

fn nft_setup(ips: &[IpNet], net: &str, ifname: &str, cid: &str) -> Result<()> {
    let masq = nftables::dump_rules(nftables::NFPROTO_INET, NFT_TABLE, NFT_CHAIN)?;
    let prefix = nft_prefix(net, ifname, cid);
    let stale: Vec<u64> = masq
        .iter()
        .flatten()
        .filter(|r| r.comment.starts_with(&prefix))
        .map(|r| r.handle)
        .collect();
    let in_place = masq.is_some() && nft_postrouting_ok()?;
    nft_setup_batch(ips, net, ifname, cid, &stale, in_place)?
        .commit("failed to set up ip masquerade (nftables)")
}

fn nft_teardown(net: &str, ifname: &str, cid: &str) -> Result<()> {
    let handles = nft_rules_with_prefix(&nft_prefix(net, ifname, cid))?
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    nft_delete(handles, "failed to tear down ip masquerade (nftables)")
}

fn nft_gc(net: &str, valid: &[(String, String)]) -> Result<()> {
    let keep: Vec<String> = valid
        .iter()
        .map(|(cid, ifname)| nft_comment(net, ifname, cid))
        .collect();
    let handles = nft_rules_with_prefix(&hash_net(net))?
        .into_iter()
        .filter(|(_, c)| !keep.contains(c))
        .map(|(h, _)| h)
        .collect();
    nft_delete(
        handles,
        "failed to garbage-collect ip masquerade rules (nftables)",
    )
}

// ---------------------------------------------------------------------------------------
// iptables

fn ipt_tools(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("ip6tables-save", "ip6tables-restore")
    } else {
        ("iptables-save", "iptables-restore")
    }
}

/// Declared chains are flushed by `iptables-restore --noflush`, so declaring ours makes
/// ADD idempotent (the reference appends only if absent: same end state). The jump is
/// added only if `save` (the current `iptables-save -t nat`) lacks it.
pub fn ipt_setup_script(ips: &[IpNet], net: &str, cid: &str, save: &str) -> String {
    let chain = chain_name(net, cid);
    let comment = go_quote(&ipt_comment(net, cid));
    let v6 = ips.first().is_some_and(|i| i.addr().is_ipv6());
    let mcast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    let mut s = format!("*nat\n:{chain} - [0:0]\n");
    for ip in ips {
        s += &format!(
            "-A {chain} -d {} -m comment --comment {comment} -j ACCEPT\n",
            ip.trunc()
        );
    }
    s += &format!("-A {chain} ! -d {mcast} -m comment --comment {comment} -j MASQUERADE\n");
    for ip in ips {
        let host = if v6 {
            format!("{}/128", ip.addr())
        } else {
            format!("{}/32", ip.addr())
        };
        let exists = save.lines().any(|l| {
            l.starts_with("-A POSTROUTING ")
                && l.contains(&format!("-s {host} "))
                && l.ends_with(&format!("-j {chain}"))
        });
        if !exists {
            s += &format!("-A POSTROUTING -s {host} -m comment --comment {comment} -j {chain}\n");
        }
    }
    s += "COMMIT\n";
    s
}

/// Remove every POSTROUTING jump to the attachment's chain (any source form), then the
/// chain. `None` when there is nothing to remove.
pub fn ipt_teardown_script(chain: &str, save: &str) -> Option<String> {
    let jumps: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING ") && l.ends_with(&format!("-j {chain}")))
        .collect();
    let has_chain = save
        .lines()
        .any(|l| l == format!(":{chain} - [0:0]") || l.starts_with(&format!(":{chain} ")));
    if jumps.is_empty() && !has_chain {
        return None;
    }
    let mut s = String::from("*nat\n");
    for j in jumps {
        s += &format!("-D{}\n", &j[2..]);
    }
    if has_chain {
        s += &format!("-F {chain}\n-X {chain}\n");
    }
    s += "COMMIT\n";
    Some(s)
}

/// Container ids of this network that own a masquerade chain, read from the rule
/// comments (`name: "<net>" id: "<cid>"`; names and ids cannot contain quotes, the
/// harness validates them).
pub fn ipt_owned_cids(net: &str, save: &str) -> Vec<String> {
    let prefix = format!("--comment \"name: \\\"{net}\\\" id: \\\"");
    let mut out = Vec::new();
    for l in save.lines() {
        let Some(pos) = l.find(&prefix) else { continue };
        let rest = &l[pos + prefix.len()..];
        if let Some(end) = rest.find("\\\"\"") {
            let cid = rest[..end].to_string();
            if !cid.is_empty() && !out.contains(&cid) {
                out.push(cid);
            }
        }
    }
    out
}

fn ipt_save(v6: bool) -> Result<String> {
    run(ipt_tools(v6).0, &["-t", "nat"], "")
}

fn ipt_restore(v6: bool, script: &str) -> Result<()> {
    // A bounded wait for the xtables lock (legacy iptables); the run itself is bounded
    // by `run`.
    let wait = super::XTABLES_WAIT_SECS.to_string();
    run(ipt_tools(v6).1, &["--noflush", "--wait", &wait], script).map(|_| ())
}

/// All or nothing: when a family fails (typically IPv6, after IPv4 went in), the
/// families already set up are torn down again before the error is returned. A family
/// whose own run failed changed nothing (`iptables-restore` commits a table at once), so
/// it is not touched again: with a hung tool that would only wait a second time.
fn ipt_setup(ips: &[IpNet], net: &str, cid: &str) -> Result<()> {
    let mut applied = Vec::new();
    for v6 in [false, true] {
        let fam: Vec<IpNet> = ips
            .iter()
            .copied()
            .filter(|i| i.addr().is_ipv6() == v6)
            .collect();
        if fam.is_empty() {
            continue;
        }
        let step =
            ipt_save(v6).and_then(|save| ipt_restore(v6, &ipt_setup_script(&fam, net, cid, &save)));
        if let Err(e) = step {
            let undo: Vec<String> = applied
                .iter()
                .filter_map(|v6| ipt_teardown_family(*v6, net, cid).err())
                .map(|u| format!("{u:#}"))
                .collect();
            if undo.is_empty() {
                return Err(e);
            }
            // `context` keeps the original error (and its CNI code) in the chain.
            return Err(e.context(format!(
                "failed to set up ip masquerade, and to remove its partial rules ({})",
                undo.join("; ")
            )));
        }
        applied.push(v6);
    }
    Ok(())
}

/// Remove the attachment's chain and jumps from one family (nothing to do is fine).
fn ipt_teardown_family(v6: bool, net: &str, cid: &str) -> Result<()> {
    let save = ipt_save(v6)?;
    match ipt_teardown_script(&chain_name(net, cid), &save) {
        Some(script) => ipt_restore(v6, &script),
        None => Ok(()),
    }
}

/// `iptables-save -t nat` of a family for DEL and GC: `None` when the family cannot
/// even be listed (no ip6tables, no nat table), which means it holds nothing of ours; a
/// tool that timed out (code 11) is an error, not "nothing there".
fn ipt_save_for_cleanup(v6: bool) -> Result<Option<String>> {
    match ipt_save(v6) {
        Ok(save) => Ok(Some(save)),
        Err(e) if crate::error::code_of(&e) == Some(Code::TryAgainLater as u32) => Err(e),
        Err(_) => Ok(None),
    }
}

fn ipt_teardown(net: &str, cid: &str) -> Result<()> {
    for v6 in [false, true] {
        let Some(save) = ipt_save_for_cleanup(v6)? else {
            continue;
        };
        if let Some(script) = ipt_teardown_script(&chain_name(net, cid), &save) {
            ipt_restore(v6, &script)?;
        }
    }
    Ok(())
}

fn ipt_gc(net: &str, valid: &[(String, String)]) -> Result<()> {
    for v6 in [false, true] {
        let Some(save) = ipt_save_for_cleanup(v6)? else {
            continue;
        };
        for cid in ipt_owned_cids(net, &save) {
            if valid.iter().any(|(c, _)| *c == cid) {
                continue;
            }
            if let Some(script) = ipt_teardown_script(&chain_name(net, &cid), &save) {
                ipt_restore(v6, &script)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

fn ignore_unsupported(e: anyhow::Error) -> Result<()> {
    match crate::netlink::errno(&e) {
        Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) | Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

/// ADD: masquerade traffic from `ips` leaving their subnets.
pub fn setup(backend: Backend, ips: &[IpNet], net: &str, ifname: &str, cid: &str) -> Result<()> {
    match backend {
        Backend::Iptables => ipt_setup(ips, net, cid),
        Backend::Nftables => nft_setup(ips, net, ifname, cid),
    }
}

/// Both backends' errors as one; if either is "try again later" (a tool or the kernel
/// timed out), so is the whole, so that the runtime retries rather than gives up.
fn combine(what: &str, errs: Vec<anyhow::Error>) -> Result<()> {
    if errs.is_empty() {
        return Ok(());
    }
    let again = errs
        .iter()
        .any(|e| crate::error::code_of(e) == Some(Code::TryAgainLater as u32));
    let text = errs
        .iter()
        .map(|e| format!("{e:#}"))
        .collect::<Vec<_>>()
        .join("; ");
    if again {
        return Err(crate::error::cni_err(
            Code::TryAgainLater,
            format!("{what}: {text}"),
        ));
    }
    bail!("{what}: {text}")
}

/// DEL: remove the attachment's rules from both backends (whichever exist); a backend
/// whose tool is not installed cannot hold rules and is skipped.
pub fn teardown(net: &str, ifname: &str, cid: &str) -> Result<()> {
    let mut errs = Vec::new();
    if have("iptables-save") {
        errs.extend(ipt_teardown(net, cid).err());
    }
    // Native: no tool needed; a kernel without nf_tables answers "not supported", which
    // simply means there is nothing to remove.
    errs.extend(
        nft_teardown(net, ifname, cid)
            .or_else(ignore_unsupported)
            .err(),
    );
    combine("failed to tear down ip masquerade", errs)
}

/// GC: remove rules of this network whose attachment is not valid.
pub fn gc(net: &str, valid: &[(String, String)]) -> Result<()> {
    let mut errs = Vec::new();
    if have("iptables-save") {
        errs.extend(ipt_gc(net, valid).err());
    }
    errs.extend(nft_gc(net, valid).or_else(ignore_unsupported).err());
    combine("failed to garbage-collect ip masquerade rules", errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            chain_name("invtnet", "invtc1"),
            "CNI-8434cd1f2f7d9314ff003912"
        );
        assert_eq!(ipt_comment("n", "c"), r#"name: "n" id: "c""#);
        let c = nft_comment("mynet", "eth0", "abc");
        assert!(c.starts_with(&format!("{}-", hash_net("mynet"))));
        assert!(c.ends_with(", net: mynet, if: eth0, id: abc"));
        assert!(nft_comment(&"x".repeat(200), "eth0", "c").len() <= 128);
    }

    #[test]
    fn nft_rules() {
        let rule = nft_masq_rule(&"10.0.0.2/24".parse().unwrap());
        // as `nft --debug=netlink` shows for the same rule text
        assert_eq!(rule.len(), 7, "{rule:?}");
        assert_eq!(
            rule[3],
            Expr::Cmp {
                neq: false,
                data: vec![10, 0, 0, 2]
            }
        );
        assert_eq!(
            rule[4],
            Expr::Payload {
                base: 1,
                offset: 16,
                len: 3
            }
        );
        assert_eq!(
            rule[5],
            Expr::Cmp {
                neq: true,
                data: vec![10, 0, 0]
            }
        );
        assert_eq!(rule[6], Expr::Masq);
        let ips: Vec<IpNet> = vec![
            "10.0.0.2/24".parse().unwrap(),
            "fd00::2/64".parse().unwrap(),
        ];
        assert!(!nft_setup_batch(&ips, "n", "eth0", "c", &[5], false)
            .unwrap()
            .is_empty());
        let names: Vec<&str> = nft_postrouting_rules().unwrap()[0]
            .iter()
            .map(Expr::name)
            .collect();
        assert_eq!(
            names,
            ["meta", "cmp", "payload", "bitwise", "cmp", "immediate"]
        );
    }

    #[test]
    fn combined_errors_keep_try_again_later() {
        use crate::error::{cni_err, code_of};
        assert!(combine("x", vec![]).is_ok());
        let e = combine(
            "failed to tear down ip masquerade",
            vec![
                anyhow::anyhow!("nft: boom"),
                cni_err(Code::TryAgainLater, "iptables-save timed out"),
            ],
        )
        .unwrap_err();
        assert_eq!(code_of(&e), Some(11));
        assert_eq!(
            format!("{e}"),
            "failed to tear down ip masquerade: nft: boom; iptables-save timed out"
        );
        let e = combine("y", vec![anyhow::anyhow!("plain")]).unwrap_err();
        assert_eq!(code_of(&e), None);
    }

    #[test]
    fn ipt_scripts() {
        let ips: Vec<IpNet> = vec!["10.0.0.2/24".parse().unwrap()];
        let chain = chain_name("n", "c");
        let s = ipt_setup_script(&ips, "n", "c", "");
        assert!(s.contains(&format!(":{chain} - [0:0]\n")));
        assert!(s.contains(&format!("-A {chain} -d 10.0.0.0/24 -m comment --comment \"name: \\\"n\\\" id: \\\"c\\\"\" -j ACCEPT")));
        assert!(s.contains(&format!("-A POSTROUTING -s 10.0.0.2/32 -m comment --comment \"name: \\\"n\\\" id: \\\"c\\\"\" -j {chain}")));
        // iptables-save's own rendering of what we (or the Go plugin) added:
        let save = format!(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:{chain} - [0:0]\n-A POSTROUTING -s 10.0.0.2/32 -m comment --comment \"name: \\\"n\\\" id: \\\"c\\\"\" -j {chain}\nCOMMIT\n"
        );
        assert!(!ipt_setup_script(&ips, "n", "c", &save).contains("-A POSTROUTING"));
        let t = ipt_teardown_script(&chain, &save).unwrap();
        assert!(t.contains(&format!("-D POSTROUTING -s 10.0.0.2/32 -m comment --comment \"name: \\\"n\\\" id: \\\"c\\\"\" -j {chain}\n")));
        assert!(t.contains(&format!("-F {chain}\n-X {chain}\n")));
        assert!(ipt_teardown_script(&chain, "*nat\nCOMMIT\n").is_none());
        assert_eq!(ipt_owned_cids("n", &save), vec!["c".to_string()]);
        assert!(ipt_owned_cids("other", &save).is_empty());
    }
}
