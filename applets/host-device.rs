//! host-device: move an existing host interface into the container under `CNI_IFNAME`,
//! and back on DEL.
//!
//! Selectors, the first one set wins (the reference's order): `device` (name),
//! `hwaddr` (MAC), `kernelpath` (`/sys/devices/...`, the first entry of its `net/`),
//! `pciBusID` (the first entry of `/sys/bus/pci/devices/<id>/net/`, or of its
//! `virtio*/net/`), and the auxiliary device from `runtimeConfig.deviceID` (capability
//! `deviceID`: a PCI address replaces `pciBusID`, an auxiliary-bus name selects
//! `/sys/bus/auxiliary/devices/<id>/net/`). A PCI device bound to a user-space driver
//! (vfio-pci, uio_pci_generic, igb_uio) is DPDK mode: nothing moves, IPAM addresses are
//! only reported. `ipam` is optional.
//!
//! ADD, like the reference: the device goes into a temporary namespace, is renamed
//! there to `CNI_IFNAME` and gets its original name as its alias (the reference's
//! marker: either implementation's DEL finds the name there), then into the container,
//! UP. The move drops the device's addresses and routes, so before it cnibox saves what
//! DEL must restore (name, alias, MTU, permanent addresses, routes, UP state) in
//! `<dataDir>/<containerID>_<ifname>.json` (`dataDir`, default `/run/cni/host-device`).
//! Every step is undone if a later one fails, IPAM included: the device is back under
//! its name with its addresses.
//!
//! DEL: IPAM, then the way back through a temporary namespace: original name, alias
//! and MTU restored, into the host, then its addresses, UP state and routes. If the
//! name is taken on the host meanwhile, DEL fails and leaves the device in the
//! container (a retry succeeds once the name is free), as the reference does. A device
//! ADDed by the Go plugin (alias, no saved state) comes back under its alias and DOWN,
//! as the reference leaves it. If the container's namespace is gone, a physical device
//! is back in the initial namespace under its container name (the kernel's doing; a
//! virtual one is destroyed): DEL finds it by its alias and MAC and restores it.
//!
//! Differences from the reference, on purpose: DEL restores MTU, addresses, routes and
//! the UP state (the reference leaves the device DOWN and loses its addresses) and the
//! device's own alias; DEL is idempotent, succeeds when the netns is empty or gone and
//! then still releases the IPAM addresses (the reference fails, or skips IPAM and leaks
//! them, cni#1167); DEL needs no selector (a device that left sysfs does not make it
//! fail); the selector values and an interface name already used in the container are
//! refused before anything moves; an L2 result under cniVersion 0.1.0/0.2.0 is refused
//! before anything moves (the reference moves the device, then fails to print); GC
//! forwards to IPAM.
//!
//! For tests, `CNIBOX_SYSFS_ROOT=DIR` makes every sysfs path above be read under DIR
//! (`DIR/sys/bus/pci/devices/...`), so PCI, auxiliary and kernel-path selection run
//! against a fixture tree. Only the paths move; the selection logic is the same.

use anyhow::{anyhow, bail, Context, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::types::{shape_of, Shape};
use cnibox::cni::value::parse_hwaddr;
use cnibox::cni::{decode, delegate, value, CniResult, Dns, Interface};
use cnibox::error::{cni_err, Code};
use cnibox::l3::{self, Rollback};
use cnibox::netlink::addr::{AddrSpec, Broadcast, IFA_F_NODAD, IFA_F_PERMANENT};
use cnibox::netlink::{Link, LinkId, Nl, RouteSpec};
use cnibox::netns::Netns;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub const APPLET: Applet = Applet {
    name: "host-device",
    about:
        "move a host interface (by name, MAC, sysfs path, PCI or auxiliary id) into the container",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: None,
        add,
        del,
        check,
        gc: Some(gc),
        status: Some(status),
    }),
};

const DEFAULT_DATA_DIR: &str = "/run/cni/host-device";
const SYS_BUS_PCI: &str = "/sys/bus/pci/devices";
const SYS_BUS_AUX: &str = "/sys/bus/auxiliary/devices";
/// Drivers that hand a PCI NIC to user space (DPDK): there is no kernel link to move.
const USERSPACE_DRIVERS: [&str; 3] = ["vfio-pci", "uio_pci_generic", "igb_uio"];
/// Address flags worth restoring (the others describe state the kernel recomputes).
const IFA_F_NOPREFIXROUTE: u32 = 0x200;
const IFA_F_MANAGETEMPADDR: u32 = 0x100;
const RTPROT_KERNEL: u8 = 2;
const RTPROT_RA: u8 = 9;
const RT_TABLE_LOCAL: u32 = 255;

// ---------------------------------------------------------------------------------------
// Configuration

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConf {
    device: String,
    hwaddr: String,
    kernelpath: String,
    #[serde(rename = "pciBusID")]
    pci_bus_id: String,
    /// An untagged field in the reference, so this key (any case) forces DPDK mode;
    /// kept for compatibility. A `pciBusID` decides it instead.
    #[serde(rename = "DPDKMode")]
    dpdk_mode: bool,
    #[serde(rename = "runtimeConfig")]
    runtime_config: RuntimeConfig,
    #[serde(rename = "dataDir")]
    data_dir: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RuntimeConfig {
    #[serde(rename = "deviceID")]
    device_id: String,
}

/// How the host device is found.
#[derive(Debug)]
enum Selector {
    Device(String),
    /// The MAC as the kernel prints it (lower case, colons), any length Go accepts.
    Hwaddr(String),
    KernelPath(String),
    Pci(String),
    Aux(String),
}

struct Conf {
    selector: Selector,
    dpdk: bool,
    data_dir: PathBuf,
}

/// A sysfs path, under `CNIBOX_SYSFS_ROOT` when set (tests' fixture trees).
fn sysfs(path: &str) -> PathBuf {
    match std::env::var("CNIBOX_SYSFS_ROOT") {
        Ok(root) if !root.is_empty() => PathBuf::from(root).join(path.trim_start_matches('/')),
        _ => PathBuf::from(path),
    }
}

/// A PCI address or auxiliary device name becomes one path component under /sys.
fn sysfs_name(key: &str, v: &str) -> Result<()> {
    if v.is_empty() || v == "." || v == ".." || v.contains('/') || v.contains('\0') {
        return Err(value::invalid(
            key,
            format!("{v:?}"),
            "is not a device id (like 0000:03:00.1)",
        ));
    }
    Ok(())
}

fn load(ctx: &Ctx) -> Result<Conf> {
    let c: RawConf = ctx.decode()?;
    let mut pci = c.pci_bus_id;
    let mut aux = String::new();
    let id = c.runtime_config.device_id;
    if !id.is_empty() {
        sysfs_name("runtimeConfig.deviceID", &id)?;
        if sysfs(SYS_BUS_PCI).join(&id).exists() {
            pci = id;
        } else if sysfs(SYS_BUS_AUX).join(&id).exists() {
            pci.clear();
            aux = id;
        } else {
            return Err(value::invalid(
                "runtimeConfig.deviceID",
                format!("{id:?}"),
                format!("not found or unsupported (neither {SYS_BUS_PCI}/{id} nor {SYS_BUS_AUX}/{id} exists)"),
            ));
        }
    }
    let selector = if !c.device.is_empty() {
        value::ifname("device", &c.device)?;
        Selector::Device(c.device)
    } else if !c.hwaddr.is_empty() {
        let mac = parse_hwaddr(&c.hwaddr).ok_or_else(|| {
            value::invalid(
                "hwaddr",
                format!("{:?}", c.hwaddr),
                "is not a MAC address (6, 8 or 20 hex octets)",
            )
        })?;
        Selector::Hwaddr(cnibox::netlink::mac_string(&mac))
    } else if !c.kernelpath.is_empty() {
        let p = &c.kernelpath;
        if !p.starts_with("/sys/devices/") || p.split('/').any(|s| s == "..") {
            return Err(value::invalid(
                "kernelpath",
                format!("{p:?}"),
                "must be absolute and begin with /sys/devices/",
            ));
        }
        Selector::KernelPath(c.kernelpath)
    } else if !pci.is_empty() {
        Selector::Pci(pci.clone())
    } else if !aux.is_empty() {
        Selector::Aux(aux)
    } else {
        return Err(cni_err(
            Code::InvalidConfig,
            "specify either \"device\", \"hwaddr\", \"kernelpath\" or \"pciBusID\"",
        ));
    };
    // As in the reference, a PCI address decides DPDK mode whichever selector is used.
    let dpdk = if pci.is_empty() {
        c.dpdk_mode
    } else {
        sysfs_name("pciBusID", &pci)?;
        has_dpdk_driver(&pci)?
    };
    let data_dir = if c.data_dir.is_empty() {
        PathBuf::from(DEFAULT_DATA_DIR)
    } else if !c.data_dir.starts_with('/') {
        return Err(value::invalid(
            "dataDir",
            format!("{:?}", c.data_dir),
            "must be an absolute path",
        ));
    } else {
        PathBuf::from(c.data_dir)
    };
    Ok(Conf {
        selector,
        dpdk,
        data_dir,
    })
}

fn has_dpdk_driver(pci: &str) -> Result<bool> {
    let link = sysfs(SYS_BUS_PCI).join(pci).join("driver");
    let target = std::fs::canonicalize(&link).map_err(|e| {
        value::invalid(
            "pciBusID",
            format!("{pci:?}"),
            format!("has no driver ({}: {e})", link.display()),
        )
    })?;
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
    Ok(USERSPACE_DRIVERS.contains(&name))
}

/// The state file of one attachment.
fn state_path(dir: &Path, ctx: &Ctx) -> PathBuf {
    dir.join(format!("{}_{}.json", ctx.container_id, ctx.ifname))
}

// ---------------------------------------------------------------------------------------
// Finding the host device

fn first_net_entry(nl: &Nl, dir: &Path) -> Result<Link> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read directory {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let first = names
        .first()
        .ok_or_else(|| anyhow!("failed to find network device in path {}", dir.display()))?;
    nl.link(LinkId::Name(first))?.ok_or_else(|| {
        anyhow!(
            "{} names {first:?}, which is not a link here",
            dir.display()
        )
    })
}

fn find_host_device(nl: &Nl, sel: &Selector) -> Result<Link> {
    let r = match sel {
        Selector::Device(name) => nl
            .link(LinkId::Name(name))?
            .ok_or_else(|| anyhow!("no link named {name:?}")),
        Selector::Hwaddr(mac) => nl
            .links()?
            .into_iter()
            .find(|l| l.mac == *mac)
            .ok_or_else(|| anyhow!("no link with MAC address {mac}")),
        Selector::KernelPath(p) => first_net_entry(nl, &sysfs(p).join("net")),
        Selector::Pci(id) => {
            let dev = sysfs(SYS_BUS_PCI).join(id);
            let net = dev.join("net");
            if std::fs::symlink_metadata(&net).is_ok() {
                first_net_entry(nl, &net)
            } else {
                // virtio NICs keep their net/ one level down, in virtioN/.
                let mut virtio: Vec<PathBuf> = std::fs::read_dir(&dev)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
                            .map(|e| e.path().join("net"))
                            .filter(|p| p.exists())
                            .collect()
                    })
                    .unwrap_or_default();
                virtio.sort();
                match virtio.first() {
                    Some(n) => first_net_entry(nl, n),
                    None => Err(anyhow!("no net directory under pci device {id}")),
                }
            }
        }
        Selector::Aux(id) => first_net_entry(nl, &sysfs(SYS_BUS_AUX).join(id).join("net")),
    };
    r.context("failed to find host device")
}

// ---------------------------------------------------------------------------------------
// What DEL restores

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct Saved {
    name: String,
    /// The device's own alias before ADD replaced it with the name.
    alias: String,
    mac: String,
    mtu: u32,
    up: bool,
    addrs: Vec<SavedAddr>,
    routes: Vec<SavedRoute>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct SavedAddr {
    cidr: String,
    flags: u32,
    /// Scope, IPv4 peer, broadcast and label as the device had them.
    scope: u8,
    peer: Option<IpAddr>,
    broadcast: Option<IpAddr>,
    label: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct SavedRoute {
    dst: String,
    gw: Option<IpAddr>,
    src: Option<IpAddr>,
    table: u32,
    scope: u8,
    priority: u32,
    protocol: u8,
    kind: u8,
}

impl Saved {
    /// The device as it is now: addresses that the moves will drop (permanent ones;
    /// IPv6 link-local ones come back by themselves, dynamic ones from their daemon)
    /// and the routes through it that the kernel or router advertisements will not
    /// recreate.
    fn capture(nl: &Nl, dev: &Link) -> Result<Saved> {
        let addrs = nl
            .addrs(dev.index, None)?
            .into_iter()
            .filter(|a| a.flags & IFA_F_PERMANENT != 0)
            .filter(|a| match a.net.addr() {
                IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 != 0xfe80,
                IpAddr::V4(_) => true,
            })
            .map(|a| SavedAddr {
                cidr: a.net.to_string(),
                flags: a.flags & (IFA_F_NODAD | IFA_F_NOPREFIXROUTE | IFA_F_MANAGETEMPADDR),
                scope: a.scope,
                peer: a.peer,
                broadcast: a.broadcast,
                // the kernel labels IPv4 addresses with the link name by default
                label: if a.label == dev.name {
                    String::new()
                } else {
                    a.label
                },
            })
            .collect();
        let mut routes = Vec::new();
        for v6 in [false, true] {
            for r in nl.routes(v6, 0)? {
                if r.oif != dev.index
                    || r.table == RT_TABLE_LOCAL
                    || r.protocol == RTPROT_KERNEL
                    || r.protocol == RTPROT_RA
                {
                    continue;
                }
                routes.push(SavedRoute {
                    dst: r.dst.to_string(),
                    gw: r.gw,
                    src: r.src,
                    table: r.table,
                    scope: r.scope,
                    priority: r.priority,
                    protocol: r.protocol,
                    kind: r.kind,
                });
            }
        }
        Ok(Saved {
            name: dev.name.clone(),
            alias: dev.alias.clone(),
            mac: dev.mac.clone(),
            mtu: dev.mtu,
            up: dev.is_up(),
            addrs,
            routes,
        })
    }

    fn read(path: &Path) -> Option<Saved> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                eprintln!("host-device: ignoring unreadable {}: {e}", path.display());
                return None;
            }
        };
        match decode::from_slice::<Saved>(&data) {
            Ok(s) if !s.name.is_empty() => Some(s),
            _ => {
                eprintln!("host-device: ignoring malformed {}", path.display());
                None
            }
        }
    }

    /// Written before the first change, atomically, mode 0600.
    fn write(&self, path: &Path) -> Result<()> {
        cnibox::statefile::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }
}

fn remove_state(path: &Path) -> Result<()> {
    cnibox::statefile::remove(path)
}

/// Put the saved addresses, UP state and routes back on `dev` in the host. Best
/// effort: the device is home under its name already, so a failure here is reported
/// (stderr) but cannot be fixed by failing DEL (a retry would find nothing to move).
fn reapply(nl: &Nl, dev: &Link, s: &Saved) {
    let warn = |what: String, e: anyhow::Error| {
        eprintln!("host-device: could not restore {what} on {}: {e:#}", s.name)
    };
    for a in &s.addrs {
        let Ok(net) = a.cidr.parse::<IpNet>() else {
            continue;
        };
        let spec = AddrSpec {
            net,
            flags: a.flags,
            scope: a.scope,
            peer: a.peer,
            broadcast: a.broadcast.map_or(Broadcast::Unset, Broadcast::Addr),
            label: a.label.clone(),
        };
        match nl.add_addr_spec(dev.index, &spec) {
            Err(e) if !cnibox::netlink::is_errno(&e, libc::EEXIST) => {
                warn(format!("address {net}"), e)
            }
            _ => {}
        }
    }
    if !s.up {
        return;
    }
    if let Err(e) = nl.set_up(dev.index, true) {
        return warn("the UP state".into(), e);
    }
    for r in &s.routes {
        let Ok(dst) = r.dst.parse::<IpNet>() else {
            continue;
        };
        let spec = RouteSpec {
            dst,
            gw: r.gw,
            oif: dev.index,
            src: r.src,
            table: r.table,
            scope: r.scope,
            priority: r.priority,
            protocol: r.protocol,
            kind: r.kind,
        };
        match nl.add_route(&spec) {
            Err(e) if !cnibox::netlink::is_errno(&e, libc::EEXIST) => {
                warn(format!("route {spec}"), e)
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Moving through a temporary namespace

/// A fresh, empty network namespace, alive while the returned file is open. Renames
/// happen in there, where no udev or NetworkManager watches and no name can clash.
fn temp_netns() -> Result<Netns> {
    // unshare() moves only the calling thread, so a short-lived thread makes it and
    // hands back a handle; this thread never leaves its namespace.
    let file = std::thread::spawn(|| -> Result<File> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("failed to create a temporary netns")?;
        File::open("/proc/thread-self/ns/net").context("failed to open the temporary netns")
    })
    .join()
    .map_err(|_| anyhow!("failed to create a temporary netns"))??;
    Ok(Netns {
        path: "(temporary netns)".into(),
        file,
    })
}

/// The host namespace, a temporary one, and a netlink socket in each.
struct Mover {
    host_ns: Netns,
    host_nl: Nl,
    temp: Netns,
    temp_nl: Nl,
}

impl Mover {
    fn new() -> Result<Mover> {
        let temp = temp_netns()?;
        Ok(Mover {
            host_ns: Netns::current()?,
            host_nl: Nl::open()?,
            temp_nl: Nl::open_in(&temp)?,
            temp,
        })
    }

    /// Move link `index` from the namespace `from` talks to into the temporary one.
    fn to_temp(&self, from: &Nl, index: u32) -> Result<()> {
        from.set_netns(index, self.temp.file.as_fd())
    }

    /// The device in the temporary namespace, whichever of `names` it has now.
    fn in_temp(&self, names: &[&str]) -> Result<Link> {
        for n in names {
            if let Some(l) = self.temp_nl.link(LinkId::Name(n))? {
                return Ok(l);
            }
        }
        bail!("device {names:?} not found in the temporary netns")
    }

    /// From the temporary namespace into the host as `name`: name, alias and MTU set
    /// there, then the move (EEXIST if the name is taken on the host, with the device
    /// still in the temporary namespace), then addresses, UP and routes.
    fn home(&self, names: &[&str], name: &str, saved: Option<&Saved>) -> Result<()> {
        let t = self.in_temp(names)?;
        if t.name != name {
            self.temp_nl
                .set_name(t.index, name)
                .with_context(|| format!("failed to rename device {:?} to {name:?}", t.name))?;
        }
        match saved.map(|s| s.alias.as_str()).filter(|a| !a.is_empty()) {
            Some(a) => self.temp_nl.set_alias(t.index, a)?,
            None if !t.alias.is_empty() => self.temp_nl.clear_alias(t.index)?,
            None => {}
        }
        if let Some(s) = saved.filter(|s| s.mtu != 0 && s.mtu != t.mtu) {
            if let Err(e) = self.temp_nl.set_mtu(t.index, s.mtu) {
                eprintln!(
                    "host-device: could not restore the MTU {} of {name}: {e:#}",
                    s.mtu
                );
            }
        }
        match self.temp_nl.set_netns(t.index, self.host_ns.file.as_fd()) {
            Ok(()) => {}
            Err(e) if cnibox::netlink::is_errno(&e, libc::EEXIST) => {
                bail!("failed to move {:?} back to the host as {name:?}: an interface of that name exists there", t.name)
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to move {name:?} to the host"))
            }
        }
        // As the reference does without saved state: we do not know how it was, so it
        // stays DOWN.
        if let Some(s) = saved {
            let dev = self.host_nl.link_must(LinkId::Name(name))?;
            reapply(&self.host_nl, &dev, s);
        }
        Ok(())
    }

    /// Bring device `link` (as it was in the namespace `from_nl` talks to) home under
    /// `name`. If it cannot reach the host, it goes back where it was, as it was.
    fn bring_home(
        &self,
        from_nl: &Nl,
        from_ns: &Netns,
        link: &Link,
        name: &str,
        saved: Option<&Saved>,
    ) -> Result<()> {
        Rollback::guard(|undo| {
            self.to_temp(from_nl, link.index)
                .with_context(|| format!("failed to move {:?} to a temporary netns", link.name))?;
            undo.push("move the device back where it was", move || {
                let t = self.in_temp(&[name, &link.name])?;
                if t.name != link.name {
                    self.temp_nl.set_name(t.index, &link.name)?;
                }
                if !link.alias.is_empty() {
                    self.temp_nl.set_alias(t.index, &link.alias)?;
                }
                self.temp_nl.set_netns(t.index, from_ns.file.as_fd())?;
                if link.is_up() {
                    let back = from_nl.link_must(LinkId::Name(&link.name))?;
                    from_nl.set_up(back.index, true)?;
                }
                Ok(())
            });
            self.home(&[&link.name], name, saved)
        })
    }
}

// ---------------------------------------------------------------------------------------
// ADD

fn add(ctx: &Ctx) -> Result<CniResult> {
    let c = load(ctx)?;
    let ipam_type = ctx.conf.ipam_type();
    let l3 = !ipam_type.is_empty();
    if !l3 && shape_of(ctx.version()) == Some(Shape::V02) {
        // Refuse before changing anything: a result without IPs has no 0.x form.
        return Err(cni_err(
            Code::IncompatibleVersion,
            "cannot convert: no valid IP addresses",
        ));
    }
    let dns: Dns = match &ctx.conf.dns {
        Some(v) if l3 => decode::from_value(v.clone())
            .map_err(|e| cni_err(Code::Decode, format!("invalid dns: {e}")))?,
        _ => Dns::default(),
    };
    if l3 {
        delegate::ensure_available(ctx, ipam_type)?;
    }
    let cont_ns = Netns::open(&ctx.netns)?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let ifname = ctx.ifname.as_str();
    let mover = if c.dpdk { None } else { Some(Mover::new()?) };
    let state = state_path(&c.data_dir, ctx);

    Rollback::guard(|undo| {
        let mut iface = Interface::in_sandbox(ifname, "", &ctx.netns);
        if let Some(m) = &mover {
            let dev = find_host_device(&m.host_nl, &c.selector)?;
            if cont_nl.link(LinkId::Name(ifname))?.is_some() {
                bail!(
                    "cannot move {:?} into the container as {ifname:?}: the container already has an interface of that name",
                    dev.name
                );
            }
            let saved = Saved::capture(&m.host_nl, &dev)?;
            saved.write(&state)?;
            let st = &state;
            undo.push("remove the saved state", move || remove_state(st));

            m.to_temp(&m.host_nl, dev.index)
                .with_context(|| format!("failed to move {:?} to a temporary netns", dev.name))?;
            let orig = saved.name.clone();
            let back = saved.clone();
            undo.push("move the device back to the host", move || {
                m.home(&[ifname, &orig], &orig, Some(&back))
            });
            let t = m.in_temp(&[&saved.name])?;
            m.temp_nl.set_name(t.index, ifname).with_context(|| {
                format!(
                    "failed to rename host device {:?} to {ifname:?}",
                    saved.name
                )
            })?;
            // The reference's marker, which both implementations' DEL read.
            m.temp_nl.set_alias(t.index, &saved.name)?;
            m.temp_nl
                .set_netns(t.index, cont_ns.file.as_fd())
                .with_context(|| {
                    format!(
                        "failed to move {ifname:?} (host: {:?}) to the container",
                        saved.name
                    )
                })?;
            let cnl = &cont_nl;
            undo.push("move the device out of the container", move || {
                match cnl.link(LinkId::Name(ifname))? {
                    Some(l) => m.to_temp(cnl, l.index),
                    None => Ok(()),
                }
            });
            let cdev = cont_nl.link_must(LinkId::Name(ifname))?;
            cont_nl
                .set_up(cdev.index, true)
                .with_context(|| format!("failed to set {ifname:?} up"))?;
            iface.mac = cdev.mac;
        }
        let mut res = CniResult {
            cni_version: ctx.version().to_string(),
            interfaces: vec![iface],
            ..Default::default()
        };
        if l3 {
            let ipam = l3::ipam_add(ctx)?;
            undo.push("release the IPAM allocation", || {
                delegate::del(ctx, ipam_type)
            });
            res.ips = ipam.ips;
            res.routes = ipam.routes;
            for ip in &mut res.ips {
                ip.interface = Some(0);
            }
            if !c.dpdk {
                l3::configure_iface(&cont_nl, &cont_ns, ifname, &res)?;
            }
            // The reference puts the config's `dns` in the result (IPAM's is dropped).
            res.dns = dns.clone();
        }
        Ok(res)
    })
}

// ---------------------------------------------------------------------------------------
// DEL

#[derive(Deserialize, Default)]
#[serde(default)]
struct DelConf {
    #[serde(rename = "dataDir")]
    data_dir: String,
}

/// DEL reads only `ipam.type` and `dataDir`: it never fails because ADD would reject
/// the config (no selector, a device that left sysfs, a bad `deviceID`).
fn del(ctx: &Ctx) -> Result<()> {
    let data_dir = ctx
        .decode::<DelConf>()
        .ok()
        .map(|c| c.data_dir)
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
    let ipam = match ctx.conf.ipam_type() {
        "" => Ok(()),
        t => delegate::del(ctx, t),
    };
    let dev = move_out(ctx, &state_path(Path::new(&data_dir), ctx));
    l3::all_errors([ipam, dev])
}

fn move_out(ctx: &Ctx, state: &Path) -> Result<()> {
    let saved = Saved::read(state);
    let ifname = ctx.ifname.as_str();
    if let Some(cont_ns) = Netns::open_if_present(&ctx.netns)? {
        let cont_nl = Nl::open_in(&cont_ns)?;
        if let Some(link) = cont_nl.link(LinkId::Name(ifname))? {
            // Our state, if it is about this device; else the reference's marker.
            let (name, saved) = match saved {
                Some(s) if s.name == link.alias => (s.name.clone(), Some(s)),
                _ if !link.alias.is_empty() => (link.alias.clone(), None),
                _ => {
                    eprintln!(
                        "host-device: {ifname:?} in the container has no original name (alias): not ours, left alone"
                    );
                    return remove_state(state);
                }
            };
            let m = Mover::new()?;
            m.bring_home(&cont_nl, &cont_ns, &link, &name, saved.as_ref())?;
            return remove_state(state);
        }
    } else if let Some(s) = &saved {
        // The namespace is gone: a physical device is back in the initial namespace
        // under its container name (a virtual one was destroyed with it).
        let m = Mover::new()?;
        let stray =
            m.host_nl.links()?.into_iter().find(|l| {
                l.alias == s.name && l.mac.eq_ignore_ascii_case(&s.mac) && l.name != s.name
            });
        if let Some(l) = stray {
            m.bring_home(&m.host_nl, &m.host_ns, &l, &s.name, Some(s))?;
        }
    }
    remove_state(state)
}

// ---------------------------------------------------------------------------------------
// CHECK, STATUS, GC

fn check(ctx: &Ctx) -> Result<()> {
    let c = load(ctx)?;
    let prev = ctx.prev_result_required()?;
    let cont_ns = Netns::open(&ctx.netns)?;
    let ipam_type = ctx.conf.ipam_type();
    if !ipam_type.is_empty() {
        delegate::check(ctx, ipam_type)?;
    }
    if c.dpdk {
        return Ok(());
    }
    let iface = l3::find_container_iface(&prev, &ctx.ifname, &ctx.netns)?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let link = cont_nl.link(LinkId::Name(&iface.name))?.ok_or_else(|| {
        anyhow!(
            "Container Interface name in prevResult: {} not found",
            iface.name
        )
    })?;
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&link.mac) {
        bail!(
            "Interface {} Mac {} doesn't match container Mac: {}",
            iface.name,
            iface.mac,
            link.mac
        );
    }
    l3::validate_ips(&cont_nl, &ctx.ifname, &prev.ips)?;
    l3::validate_routes(&cont_nl, &prev.routes)
}

fn status(ctx: &Ctx) -> Result<()> {
    match ctx.conf.ipam_type() {
        "" => Ok(()),
        t => delegate::status(ctx, t),
    }
}

/// GC (the reference has none): the addresses of vanished attachments, through IPAM.
fn gc(ctx: &Ctx) -> Result<()> {
    match ctx.conf.ipam_type() {
        "" => Ok(()),
        t => delegate::gc(ctx, t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwaddr_like_go() {
        assert_eq!(
            parse_hwaddr("0A:58:0a:f4:01:05"),
            Some(vec![0x0a, 0x58, 0x0a, 0xf4, 1, 5])
        );
        assert_eq!(parse_hwaddr("0a-58-0a-f4-01-05").map(|v| v.len()), Some(6));
        assert_eq!(parse_hwaddr("0a58.0af4.0105").map(|v| v.len()), Some(6));
        assert_eq!(
            parse_hwaddr("00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01")
                .map(|v| v.len()),
            Some(20)
        );
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58-0a:f4:01:05",
            "0a:58:0a:f4:01:5",
            "0a:58:0a:f4:01:zz",
            "0a:58:0a:f4:01:05:06",
            "0a58.0af4.010",
            "ä:58:0a:f4:01:05",
        ] {
            assert_eq!(parse_hwaddr(bad), None, "{bad}");
        }
    }
}
