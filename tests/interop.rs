//! A node switching between the Go plugins and cnibox while containers run: cnibox
//! CHECKs and DELs attachments that Go v1.9.1 ADDed, Go CHECKs and DELs attachments
//! cnibox ADDed, on the same host (one bridge, one host-local directory, one masquerade
//! table or chain set). After the DELs nothing is left: links, reservations, rules.

mod common;

use common::*;
use serde_json::{json, Value};

fn conf(rig: &Rig, plugin: &str, ver: &str, backend: &str) -> Value {
    let mut c = json!({"cniVersion": ver, "name": "mixnet", "type": plugin,
        "ipMasq": true, "ipMasqBackend": backend,
        "ipam": {"type": "host-local", "dataDir": rig.data_dir(),
                 "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}});
    if plugin == "bridge" {
        c["bridge"] = json!("cbr0");
        c["isGateway"] = json!(true);
    }
    c
}

/// Host veths (the only veths in the rig's host namespace are the attachments').
fn host_veths(rig: &Rig) -> Vec<String> {
    links(&rig.host)
        .into_iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "veth")
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// Masquerade rules of `cid` on the host: iptables chains and jumps (both families)
/// and nftables rules.
fn masq_rules(rig: &Rig, cid: &str) -> usize {
    let ipt = [false, true]
        .iter()
        .map(|v6| {
            iptables_rules(&rig.host, *v6)
                .iter()
                .filter(|r| r.contains(&format!("id: \\\"{cid}\\\"")))
                .count()
        })
        .sum::<usize>();
    let nft = nft_ruleset(&rig.host)
        .lines()
        .filter(|l| l.contains("masquerade comment") && l.contains(&format!("id: {cid}\"")))
        .count();
    ipt + nft
}

/// `call` for container `id` in `ns`.
fn at<'a>(call: Call<'a>, id: &str, ns: &Netns) -> Call<'a> {
    call.id(id).netns(ns.path.to_str().unwrap())
}

#[test]
fn check_and_del_across_implementations() {
    for plugin in ["bridge", "ptp"] {
        for backend in ["iptables", "nftables"] {
            for ver in ["0.4.0", "1.0.0"] {
                let what = format!("{plugin} {backend} {ver}");
                let rig = Rig::new();
                let c = conf(&rig, plugin, ver, backend);
                let go_ns = rig.add_cont();
                let our_ns = rig.add_cont();
                let go_at = |call| at(call, "fromgo", &go_ns);
                let our_at = |call| at(call, "fromus", &our_ns);
                let gv = go_at(rig.call(plugin, "ADD", &c)).go().run().ok().clone();
                let ov = our_at(rig.call(plugin, "ADD", &c)).run().ok().clone();
                assert!(masq_rules(&rig, "fromgo") >= 2, "{what}");
                assert!(masq_rules(&rig, "fromus") >= 2, "{what}");
                assert_eq!(
                    reservations(&rig.data_dir().join("mixnet")).len(),
                    4,
                    "{what}"
                );
                assert_eq!(host_veths(&rig).len(), 2, "{what}");
                // Each CHECKs the other's attachment (and its own).
                let gprev = with_prev(&c, &gv);
                let oprev = with_prev(&c, &ov);
                go_at(rig.call(plugin, "CHECK", &gprev)).run().ok();
                our_at(rig.call(plugin, "CHECK", &oprev)).go().run().ok();
                go_at(rig.call(plugin, "CHECK", &gprev)).go().run().ok();
                our_at(rig.call(plugin, "CHECK", &oprev)).run().ok();
                // Our CHECK of Go's attachment is a real check: a missing address fails.
                let addr = gv["ips"][0]["address"].as_str().unwrap();
                go_ns.ip(&["addr", "del", addr, "dev", "eth0"]);
                go_at(rig.call(plugin, "CHECK", &gprev))
                    .run()
                    .fails_with(999, &format!("Failed to match addr {addr}"));
                go_ns.ip(&["addr", "add", addr, "dev", "eth0"]);

                // cnibox DELs Go's attachment: only Go's things go.
                go_at(rig.call(plugin, "DEL", &gprev)).run().ok();
                assert!(link(&go_ns, "eth0").is_none(), "{what}");
                assert_eq!(masq_rules(&rig, "fromgo"), 0, "{what}");
                assert_eq!(
                    reservations(&rig.data_dir().join("mixnet")).len(),
                    2,
                    "{what}"
                );
                assert_eq!(host_veths(&rig).len(), 1, "{what}");
                our_at(rig.call(plugin, "CHECK", &oprev)).go().run().ok();
                // Go DELs ours.
                our_at(rig.call(plugin, "DEL", &oprev)).go().run().ok();
                assert!(link(&our_ns, "eth0").is_none(), "{what}");
                assert_eq!(masq_rules(&rig, "fromus"), 0, "{what}");
                // Nothing left: no veth, no reservation, no masquerade rule or chain.
                assert!(host_veths(&rig).is_empty(), "{what}");
                let left = reservations(&rig.data_dir().join("mixnet"));
                assert!(left.is_empty(), "{what}: {left:?}");
                for v6 in [false, true] {
                    let save = iptables_save(&rig.host, v6);
                    assert!(!save.contains("CNI-"), "{what}: {save}");
                }
                let nft = nft_ruleset(&rig.host);
                assert!(!nft.contains("masquerade comment"), "{what}: {nft}");
                // A second DEL by either side is still a success.
                go_at(rig.call(plugin, "DEL", &gprev)).run().ok();
                our_at(rig.call(plugin, "DEL", &oprev)).go().run().ok();
            }
        }
    }
}
