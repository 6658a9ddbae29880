//! veth pairs across namespaces: creation (with its undo registered at once) and the
//! DEL-side deletion of the container end.

use super::Rollback;
use crate::netlink::link::{NewLink, Peer};
use crate::netlink::{Link, LinkId, Nl};
use crate::netns::Netns;
use crate::sysctl;
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use std::os::fd::AsFd;

/// `veth` + 8 random hex digits: NetworkManager ignores `veth*`, and the reference uses
/// the same form.
pub fn random_veth_name() -> String {
    // std's hasher keys are seeded from the OS's random source once per thread and
    // differ for every `RandomState`: random enough for a name, with no syscall of our
    // own. The pid is mixed in for processes forked from one parent.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let b = (h.finish() as u32).to_ne_bytes();
    format!("veth{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// Both ends of a new veth pair, as seen in their own namespaces.
pub struct VethPair {
    pub host: Link,
    pub cont: Link,
}

/// Create a veth pair whose container end is `ifname` (made directly in the container,
/// so it never clashes with a host link of the same name) and whose host end lands in
/// the host netns under `host_name` or a random `veth*` name. Both ends get `mtu`;
/// the container end gets `mac` if given. The host end is set up, with accept_ra off.
///
/// The pair's deletion is registered with `undo` the moment it exists, so any later
/// failure of the ADD (even a lookup right after the creation) removes it again.
#[allow(clippy::too_many_arguments)]
pub fn setup_veth<'a>(
    host_nl: &Nl,
    cont_nl: &'a Nl,
    host_ns: &Netns,
    ifname: &'a str,
    host_name: Option<&str>,
    mtu: u32,
    mac: Option<[u8; 6]>,
    undo: &mut Rollback<'a>,
) -> Result<VethPair> {
    if cont_nl.link(LinkId::Name(ifname))?.is_some() {
        bail!("container veth name {ifname:?} already exists");
    }
    let mut tries = 0;
    let host_if = loop {
        let name = host_name
            .map(str::to_string)
            .unwrap_or_else(random_veth_name);
        let req = NewLink {
            name: ifname,
            kind: "veth",
            mtu,
            mac,
            peer: Some(Peer {
                name: &name,
                mtu,
                mac: None,
                netns: Some(host_ns.file.as_fd()),
            }),
            ..Default::default()
        };
        match cont_nl.create_link(&req) {
            Ok(()) => {
                undo.push("delete the container veth", move || {
                    delete_cont_link(cont_nl, ifname).map(|_| ())
                });
                break name;
            }
            Err(e)
                if crate::netlink::is_errno(&e, libc::EEXIST)
                    && host_name.is_none()
                    && tries < 10 =>
            {
                tries += 1; // the random host name collided: pick another
            }
            Err(e) if crate::netlink::is_errno(&e, libc::EEXIST) => {
                return Err(e).context(format!(
                    "container veth name ({ifname:?}) peer provided ({name:?}) already exists"
                ));
            }
            Err(e) => return Err(e),
        }
    };
    let host = host_nl.link_must(LinkId::Name(&host_if))?;
    host_nl.set_up(host.index, true)?;
    // Router advertisements on the host side would configure the host; ignore failures
    // (IPv6 may be disabled).
    let _ = sysctl::set(&format!("net/ipv6/conf/{host_if}/accept_ra"), "0");
    let cont = cont_nl.link_must(LinkId::Name(ifname))?;
    let host = host_nl.link_must(LinkId::Index(host.index))?;
    Ok(VethPair { host, cont })
}

/// DEL's interface step for the veth-based plugins: delete `ifname` in `netns`. An
/// empty netns, a vanished netns and a missing link all count as done.
pub fn del_cont_iface(netns: &str, ifname: &str) -> Result<()> {
    let Some(ns) = Netns::open_if_present(netns)? else {
        return Ok(());
    };
    delete_cont_link(&Nl::open_in(&ns)?, ifname).map(|_| ())
}

/// The global unicast addresses of `ifname` in the container, then delete it. A link
/// that is already gone is fine (DEL is idempotent).
pub fn delete_cont_link(cont_nl: &Nl, ifname: &str) -> Result<Vec<IpNet>> {
    let Some(link) = cont_nl.link(LinkId::Name(ifname))? else {
        return Ok(vec![]);
    };
    let addrs = cont_nl
        .addrs(link.index, None)?
        .into_iter()
        .filter(|a| a.is_global_unicast())
        .map(|a| a.net)
        .collect();
    match cont_nl.delete_link(LinkId::Index(link.index)) {
        Ok(()) => Ok(addrs),
        Err(e) if crate::netlink::is_errno(&e, libc::ENODEV) => Ok(addrs),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names() {
        let n = random_veth_name();
        assert_eq!(n.len(), 12);
        assert!(n.starts_with("veth") && n[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(random_veth_name(), random_veth_name());
    }
}
