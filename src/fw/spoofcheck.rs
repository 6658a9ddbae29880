//! Bridge MAC spoof check (`macspoofchk`), nftables family `bridge`, table `nat`, with
//! the reference's names: base chain `PREROUTING`, per-attachment chains
//! `cni-br-iface-<cid>-<ifname>` and `...-mac`, rules commented
//! `macspoofchk-<cid>-<ifname>`.

use super::{nft_quote, run};
use anyhow::{Context, Result};

fn id(cid: &str, ifname: &str) -> String {
    format!("{cid}-{ifname}")
}

pub fn iface_chain(cid: &str, ifname: &str) -> String {
    format!("cni-br-iface-{}", id(cid, ifname))
}

pub fn comment(cid: &str, ifname: &str) -> String {
    format!("macspoofchk-{}", id(cid, ifname))
}

/// One transaction: declare the table and chains, rewrite the attachment's chains, and
/// hook the host port into them. Only frames from `mac` leave the container's port.
pub fn setup_script(host_if: &str, mac: &str, cid: &str, ifname: &str) -> String {
    let ic = iface_chain(cid, ifname);
    let mc = format!("{ic}-mac");
    let cm = nft_quote(&comment(cid, ifname));
    let mut s = String::from("add table bridge nat\n");
    s += "add chain bridge nat PREROUTING { type filter hook prerouting priority -300 ; policy accept ; }\n";
    s += &format!("add chain bridge nat {ic}\nadd chain bridge nat {mc}\n");
    s += &format!("flush chain bridge nat {ic}\nflush chain bridge nat {mc}\n");
    s += &format!(
        "add rule bridge nat PREROUTING iifname {} jump {ic} comment {cm}\n",
        nft_quote(host_if)
    );
    s += &format!("add rule bridge nat {ic} jump {mc} comment {cm}\n");
    s += &format!("add rule bridge nat {mc} ether saddr {mac} return comment {cm}\n");
    s += &format!("add rule bridge nat {mc} drop comment {cm}\n");
    s
}

/// The teardown transaction for what `table_json` (`nft -j list table bridge nat`)
/// shows of this attachment; `None` if nothing is there.
pub fn teardown_script(table_json: &str, cid: &str, ifname: &str) -> Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_str(table_json).context("cannot parse nft's JSON output")?;
    let ic = iface_chain(cid, ifname);
    let mc = format!("{ic}-mac");
    let cm = comment(cid, ifname);
    let mut s = String::new();
    let mut chains = Vec::new();
    for item in v
        .get("nftables")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(r) = item.get("rule") {
            let in_prerouting = r.get("chain").and_then(|c| c.as_str()) == Some("PREROUTING");
            if in_prerouting && r.get("comment").and_then(|c| c.as_str()) == Some(cm.as_str()) {
                if let Some(h) = r.get("handle").and_then(|h| h.as_u64()) {
                    s += &format!("delete rule bridge nat PREROUTING handle {h}\n");
                }
            }
        }
        if let Some(name) = item
            .get("chain")
            .and_then(|c| c.get("name"))
            .and_then(|n| n.as_str())
        {
            if name == ic || name == mc {
                chains.push(name.to_string());
            }
        }
    }
    // The iface chain jumps to the mac chain: flush both before deleting either.
    for c in &chains {
        s += &format!("flush chain bridge nat {c}\n");
    }
    for c in [&ic, &mc] {
        if chains.contains(c) {
            s += &format!("delete chain bridge nat {c}\n");
        }
    }
    Ok(if s.is_empty() { None } else { Some(s) })
}

pub fn setup(host_if: &str, mac: &str, cid: &str, ifname: &str) -> Result<()> {
    run(
        "nft",
        &["-f", "-"],
        &setup_script(host_if, mac, cid, ifname),
    )
    .map(|_| ())
    .context("failed to set up the MAC spoof check")
}

pub fn teardown(cid: &str, ifname: &str) -> Result<()> {
    let listing = match run("nft", &["-j", "list", "table", "bridge", "nat"], "") {
        Ok(l) => l,
        Err(e) if e.to_string().contains("No such file or directory") => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Some(script) = teardown_script(&listing, cid, ifname)? {
        run("nft", &["-f", "-"], &script).context("failed to tear down the MAC spoof check")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts() {
        let s = setup_script("veth1234", "0a:58:0a:00:00:02", "c1", "eth0");
        assert!(s.contains("add rule bridge nat PREROUTING iifname \"veth1234\" jump cni-br-iface-c1-eth0 comment \"macspoofchk-c1-eth0\""));
        assert!(s.contains(
            "add rule bridge nat cni-br-iface-c1-eth0-mac ether saddr 0a:58:0a:00:00:02 return"
        ));
        let listing = r#"{"nftables":[{"chain":{"name":"PREROUTING"}},{"chain":{"name":"cni-br-iface-c1-eth0"}},
            {"chain":{"name":"cni-br-iface-c1-eth0-mac"}},
            {"rule":{"chain":"PREROUTING","handle":4,"comment":"macspoofchk-c1-eth0"}},
            {"rule":{"chain":"PREROUTING","handle":5,"comment":"macspoofchk-c2-eth0"}}]}"#;
        let t = teardown_script(listing, "c1", "eth0").unwrap().unwrap();
        assert!(t.contains("delete rule bridge nat PREROUTING handle 4\n"));
        assert!(!t.contains("handle 5"));
        assert!(t.ends_with("delete chain bridge nat cni-br-iface-c1-eth0\ndelete chain bridge nat cni-br-iface-c1-eth0-mac\n"));
        assert!(teardown_script(r#"{"nftables":[]}"#, "c1", "eth0")
            .unwrap()
            .is_none());
    }
}
