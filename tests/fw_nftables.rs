//! nf_tables cleanup and atomicity when the ruleset is not what we left: spoof-check
//! chains removed by hand before DEL, a chain someone else still references, and a
//! masquerade ADD whose transaction the kernel refuses.
//!
//! Hermetic: every plugin call and `nft` command runs in the rig's own netns.

mod common;

use common::*;
use serde_json::json;

const IC: &str = "cni-br-iface-ctr1-eth0";

fn v4() -> serde_json::Value {
    json!([[{"subnet": "10.1.2.0/24"}]])
}

fn nft_cmd(ns: &Netns, args: &[&str]) {
    let out = ns.exec(&[&["nft"][..], args].concat());
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The handle of the rule in `chain` whose text contains `needle`.
fn handle(ns: &Netns, chain: &str, needle: &str) -> String {
    let out = ns.exec(&["nft", "-a", "list", "chain", "bridge", "nat", chain]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no rule with {needle:?} in {chain}:\n{text}"))
}

fn add_with_spoofcheck(rig: &Rig) -> serde_json::Value {
    let conf = bridge_conf(rig, "1.0.0", json!({"macspoofchk": true}), v4());
    rig.call("bridge", "ADD", &conf).run().ok();
    let nft = nft_ruleset(&rig.host);
    assert!(nft.contains(&format!("chain {IC}-mac")), "{nft}");
    conf
}

#[test]
fn spoofcheck_del_after_the_iface_chain_was_removed_by_hand() {
    let rig = Rig::new();
    let conf = add_with_spoofcheck(&rig);
    // an admin removes the attachment's first chain (and the jump to it)
    let h = handle(&rig.host, "PREROUTING", IC);
    nft_cmd(
        &rig.host,
        &[
            "delete",
            "rule",
            "bridge",
            "nat",
            "PREROUTING",
            "handle",
            &h,
        ],
    );
    nft_cmd(&rig.host, &["flush", "chain", "bridge", "nat", IC]);
    nft_cmd(&rig.host, &["delete", "chain", "bridge", "nat", IC]);
    rig.call("bridge", "DEL", &conf).run().ok();
    let nft = nft_ruleset(&rig.host);
    assert!(!nft.contains(IC), "the -mac chain leaked:\n{nft}");
}

#[test]
fn spoofcheck_del_after_the_mac_chain_was_removed_by_hand() {
    let rig = Rig::new();
    let conf = add_with_spoofcheck(&rig);
    let mc = format!("{IC}-mac");
    nft_cmd(&rig.host, &["flush", "chain", "bridge", "nat", IC]); // its jump to -mac
    nft_cmd(&rig.host, &["flush", "chain", "bridge", "nat", &mc]);
    nft_cmd(&rig.host, &["delete", "chain", "bridge", "nat", &mc]);
    rig.call("bridge", "DEL", &conf).run().ok();
    let nft = nft_ruleset(&rig.host);
    assert!(!nft.contains(IC), "the iface chain leaked:\n{nft}");
    assert!(!nft.contains("macspoofchk-ctr1-eth0"), "{nft}");
}

#[test]
fn spoofcheck_del_reports_a_real_error_and_still_removes_the_rest() {
    let rig = Rig::new();
    let conf = add_with_spoofcheck(&rig);
    // someone else's rule jumps to our -mac chain: it cannot be deleted (EBUSY)
    let mc = format!("{IC}-mac");
    nft_cmd(
        &rig.host,
        &["add", "rule", "bridge", "nat", "PREROUTING", "jump", &mc],
    );
    // Something real is left, so bridge DEL fails (the runtime will retry it), naming
    // what is left, after removing everything else it could.
    let out = rig.call("bridge", "DEL", &conf).run();
    out.err_code();
    let msg = out.json.as_ref().unwrap()["msg"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("resource busy") && msg.contains(&format!("chain \"{mc}\"")),
        "{msg}"
    );
    assert!(
        link(&rig.cont, "eth0").is_none(),
        "the container veth stays"
    );
    let nft = nft_ruleset(&rig.host);
    assert!(
        !nft.contains(&format!("chain {IC} ")),
        "iface chain kept:\n{nft}"
    );
    assert!(
        !nft.contains(&format!("jump {IC} ")),
        "our jump kept:\n{nft}"
    );
    // the chain in use stays, whole (its flush and delete are one transaction)
    assert!(nft.contains(&format!("chain {mc} ")), "{nft}");
    // the library call itself fails, naming what is left
    let ns = cnibox::netns::Netns::open(rig.host.path.to_str().unwrap()).unwrap();
    let e = ns
        .run(|| cnibox::fw::spoofcheck::teardown("ctr1", "eth0"))
        .unwrap_err();
    assert!(cnibox::netlink::is_errno(&e, libc::EBUSY), "{e:#}");
    // once the other rule is gone, DEL completes
    let h = handle(&rig.host, "PREROUTING", &mc);
    nft_cmd(
        &rig.host,
        &[
            "delete",
            "rule",
            "bridge",
            "nat",
            "PREROUTING",
            "handle",
            &h,
        ],
    );
    let out = rig.call("bridge", "DEL", &conf).run();
    out.ok();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert!(!nft_ruleset(&rig.host).contains(IC));
}

/// nftables masquerade ADD is one transaction: when the kernel refuses any part (here a
/// `postrouting` chain someone made with another hook), none of it is applied and the
/// error says why.
#[test]
fn nft_masquerade_setup_is_all_or_nothing() {
    let rig = Rig::new();
    let t = "cni_plugins_masquerade";
    nft_cmd(&rig.host, &["add", "table", "inet", t]);
    nft_cmd(
        &rig.host,
        &[
            "add",
            "chain",
            "inet",
            t,
            "postrouting",
            "{ type filter hook input priority 0 ; }",
        ],
    );
    let conf = bridge_conf(
        &rig,
        "1.0.0",
        json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": "nftables"}),
        json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd01:2::/64"}]]),
    );
    let out = rig.call("bridge", "ADD", &conf).run();
    out.err_code();
    assert!(
        out.stdout
            .contains("failed to set up ip masquerade (nftables)"),
        "{}",
        out.stdout
    );
    let nft = nft_ruleset(&rig.host);
    assert!(
        !nft.contains("masq_checks"),
        "part of the batch applied:\n{nft}"
    );
    assert!(!nft.contains("saddr"), "{nft}");
}
