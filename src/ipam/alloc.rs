//! host-local allocation, release, CHECK and GC over a [`Store`], following the
//! reference's algorithm: one address per range set, round-robin after
//! `last_reserved_ip.<set>`, requested addresses first, the store locked per set.
//! Beyond the reference: a range set found exhausted first reclaims the reservations
//! that outlived their containers (earlier boots, see [`Locked::reclaim_stale`]), then
//! is searched once more.

use super::range::RangeSet;
use super::store::{Locked, Removed, Store};
use anyhow::{bail, Result};
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its subnet's prefix length.
    pub address: IpNet,
    pub gateway: IpAddr,
}

/// What an ADD knows besides the attachment's name.
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// The container's netns path (`CNI_NETNS`), kept in the boot record: a reservation
    /// whose netns still exists is never reclaimed.
    pub netns: Option<String>,
    /// `reclaimStale` (default true): reclaim reservations of earlier boots when a
    /// range set is exhausted. Off, an exhausted range fails like the reference's.
    pub reclaim_stale: bool,
}

fn alloc_one(
    locked: &mut Locked<'_>,
    set: &RangeSet,
    idx: usize,
    id: &str,
    ifname: &str,
    requested: Option<IpAddr>,
    opts: &AddOptions,
) -> Result<Allocation> {
    let netns = opts.netns.as_deref();
    if let Some(ip) = requested {
        let r = set.range_for(ip)?;
        if ip == r.gateway {
            bail!("requested ip {ip} is subnet's gateway");
        }
        if !locked.reserve_in(id, ifname, netns, ip, idx)? {
            bail!("requested IP address {ip} is not available in range set {set}");
        }
        return Ok(Allocation {
            address: IpNet::new(ip, r.subnet.prefix_len())?,
            gateway: r.gateway,
        });
    }
    // The reference's duplicate rule: the attachment (or its container's legacy
    // id-only reservation) already holds an address of this set.
    for ip in locked.ips_of(id, ifname)? {
        if set.contains(ip) {
            bail!("{ip} has been allocated to {id}, duplicate allocation is not allowed");
        }
    }
    let mut reclaimed = !opts.reclaim_stale;
    loop {
        for (ip, r) in set.iter_from(locked.last_reserved(idx)) {
            if locked.reserve_in(id, ifname, netns, ip, idx)? {
                return Ok(Allocation {
                    address: IpNet::new(ip, r.subnet.prefix_len())?,
                    gateway: r.gateway,
                });
            }
        }
        if reclaimed {
            bail!("no IP addresses available in range set: {set}")
        }
        reclaimed = true;
        let gone = locked.reclaim_stale()?;
        report("reclaimed (reserved in an earlier boot)", &gone);
        if gone.is_empty() {
            bail!("no IP addresses available in range set: {set}")
        }
    }
}

/// What reclamation and GC removed goes to stderr, the runtime's log of the plugin.
fn report(what: &str, gone: &[Removed]) {
    if !gone.is_empty() {
        let list: Vec<String> = gone.iter().map(Removed::describe).collect();
        eprintln!("host-local: {what}: {}", list.join(", "));
    }
}

/// Allocate one address per set for (id, ifname), under one lock (the reference locks
/// per set; one lock makes a multi-set ADD atomic for other callers). On a failure after
/// some set was allocated, the attachment's reservations are released again.
pub fn allocate(
    store: &Store,
    sets: &[RangeSet],
    id: &str,
    ifname: &str,
    mut requested: Vec<IpAddr>,
    opts: &AddOptions,
) -> Result<Vec<Allocation>> {
    let mut locked = store.lock()?;
    let mut out = Vec::new();
    for (idx, set) in sets.iter().enumerate() {
        let want = requested
            .iter()
            .position(|ip| set.contains(*ip))
            .map(|i| requested.remove(i));
        match alloc_one(&mut locked, set, idx, id, ifname, want, opts) {
            Ok(a) => out.push(a),
            Err(e) => {
                // Only undo what this call took: a refused duplicate ADD must leave the
                // attachment's existing reservation alone (as the reference does).
                if !out.is_empty() {
                    let _ = locked.release(id, ifname);
                }
                return Err(e.context(format!("failed to allocate for range {idx}")));
            }
        }
    }
    if !requested.is_empty() {
        let _ = locked.release(id, ifname);
        let ips: Vec<String> = requested.iter().map(|i| i.to_string()).collect();
        bail!("failed to allocate all requested IPs: {}", ips.join(" "));
    }
    Ok(out)
}

pub fn release(store: &Store, id: &str, ifname: &str) -> Result<()> {
    store.lock()?.release(id, ifname)
}

/// CHECK: the attachment must hold some reservation (the reference's rule).
pub fn check(store: &Store, id: &str, ifname: &str) -> Result<()> {
    if store.lock()?.holds(id, ifname)? {
        return Ok(());
    }
    bail!(
        "host-local: Failed to find address added by container {}",
        id.trim()
    )
}

/// GC: release every reservation whose attachment is not in `valid`, whatever its
/// boot. A legacy id-only file is kept if its container has any valid attachment.
/// Reports what went on stderr, and returns how many.
pub fn gc(store: &Store, valid: &[(String, String)]) -> Result<usize> {
    let gone = store.lock()?.gc(valid)?;
    report("GC released", &gone);
    Ok(gone.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::range::{RangeConf, RangeSet};

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cbx-ut-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn opts() -> AddOptions {
        AddOptions {
            netns: None,
            reclaim_stale: true,
        }
    }

    fn set(subnet: &str) -> RangeSet {
        RangeSet::from_conf(
            &[RangeConf {
                subnet: subnet.into(),
                ..Default::default()
            }],
            "x",
        )
        .unwrap()
    }

    #[test]
    fn allocate_release_and_files() {
        let d = tmpdir("alloc");
        let store = Store::open(&d, "net").unwrap();
        let sets = vec![set("10.1.2.0/24"), set("2001:db8::/64")];
        let a = allocate(&store, &sets, "c1", "eth0", vec![], &opts()).unwrap();
        assert_eq!(a[0].address.to_string(), "10.1.2.2/24");
        assert_eq!(a[1].address.to_string(), "2001:db8::2/64");
        assert_eq!(
            std::fs::read_to_string(d.join("net/10.1.2.2")).unwrap(),
            "c1\r\neth0"
        );
        let e = format!(
            "{:#}",
            allocate(&store, &sets, "c1", "eth0", vec![], &opts()).unwrap_err()
        );
        assert_eq!(e, "failed to allocate for range 0: 10.1.2.2 has been allocated to c1, duplicate allocation is not allowed");
        check(&store, "c1", "eth0").unwrap();
        release(&store, "c1", "eth0").unwrap();
        assert!(!d.join("net/10.1.2.2").exists());
        assert!(check(&store, "c1", "eth0").is_err());
        release(&store, "c1", "eth0").unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn foreign_changes_are_seen() {
        let d = tmpdir("stale");
        let store = Store::open(&d, "net").unwrap();
        let sets = vec![set("10.1.2.0/24")];
        allocate(&store, &sets, "c1", "eth0", vec![], &opts()).unwrap();
        // Go released it and gave the attachment another address, unknown to our index.
        std::fs::remove_file(d.join("net/10.1.2.2")).unwrap();
        std::fs::write(d.join("net/10.1.2.9"), "c1\r\neth0").unwrap();
        let e = allocate(&store, &sets, "c1", "eth0", vec![], &opts()).unwrap_err();
        assert!(
            format!("{e:#}").contains("10.1.2.9 has been allocated to c1"),
            "{e:#}"
        );
        release(&store, "c1", "eth0").unwrap();
        assert!(!d.join("net/10.1.2.9").exists());
        // A legacy id-only reservation counts for the duplicate check, as in the reference.
        std::fs::write(d.join("net/10.1.2.20"), "c2").unwrap();
        let e = allocate(&store, &sets, "c2", "eth0", vec![], &opts()).unwrap_err();
        assert!(
            format!("{e:#}").contains("10.1.2.20 has been allocated to c2"),
            "{e:#}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn gc_keeps_valid() {
        let d = tmpdir("gc");
        let store = Store::open(&d, "net").unwrap();
        let sets = vec![set("10.1.2.0/24")];
        for i in 0..10 {
            allocate(&store, &sets, &format!("c{i}"), "eth0", vec![], &opts()).unwrap();
        }
        std::fs::write(d.join("net/10.1.2.200"), "c1").unwrap(); // legacy, valid container
        std::fs::write(d.join("net/10.1.2.201"), "zz").unwrap(); // legacy, stale
        let valid: Vec<(String, String)> = ["c1", "c2", "c3", "c4"]
            .iter()
            .map(|c| (c.to_string(), "eth0".to_string()))
            .collect();
        assert_eq!(gc(&store, &valid).unwrap(), 7);
        assert!(d.join("net/10.1.2.200").exists());
        assert!(d.join("net/last_reserved_ip.0").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_handles_never_share_an_ip() {
        let d = tmpdir("conc");
        let sets = vec![set("10.1.2.0/24")];
        let ips: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let (d, sets) = (&d, &sets);
                    s.spawn(move || {
                        let store = Store::open(d, "net").unwrap();
                        (0..8)
                            .map(|i| {
                                allocate(
                                    &store,
                                    sets,
                                    &format!("t{t}c{i}"),
                                    "eth0",
                                    vec![],
                                    &opts(),
                                )
                                .unwrap()[0]
                                    .address
                                    .to_string()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let uniq: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(uniq.len(), 64);
        let _ = std::fs::remove_dir_all(&d);
    }
}
