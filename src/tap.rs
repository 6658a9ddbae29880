//! Persistent TAP devices through `/dev/net/tun`: the only way the kernel creates them
//! (rtnetlink cannot). The device is created in the network namespace of the calling
//! thread, so callers run [`create`] inside `Netns::run`. Everything after creation
//! (MTU, MAC, master, up) is ordinary rtnetlink.
//!
//! The ioctls take pointers and integers the kernel reads; `libc::ioctl` is `unsafe`,
//! and this module is the one place in the crate allowed to call it.

#![allow(unsafe_code)]

use anyhow::{anyhow, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};

const TUN_DEV: &str = "/dev/net/tun";

/// `struct ifreq` as TUNSETIFF reads and writes it: the name, then the flags in the
/// union. 40 bytes on every Linux ABI with 64-bit pointers (and 32 on 32-bit ones,
/// where the union is 16 bytes): the kernel copies `sizeof(struct ifreq)`.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; std::mem::size_of::<libc::ifreq>() - libc::IFNAMSIZ - 2],
}

/// How a tap is created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapSpec {
    pub name: String,
    /// IFF_MULTI_QUEUE: several file descriptors (queues) may attach.
    pub multi_queue: bool,
    /// IFF_VNET_HDR: frames carry a virtio-net header by default.
    pub vnet_hdr: bool,
    /// Leave IFF_NO_PI off, so frames carry the 4-byte packet-information header by
    /// default. (Whoever attaches later sets these features again for itself.)
    pub packet_info: bool,
    /// TUNSETOWNER / TUNSETGROUP: who may attach without CAP_NET_ADMIN.
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

impl TapSpec {
    /// The TUNSETIFF flags. IFF_TUN_EXCL makes the kernel refuse (EBUSY) to *attach*
    /// to an existing device of that name instead of creating one: without it a
    /// TUNSETIFF on an existing persistent tap silently succeeds, and a failed ADD
    /// would then delete somebody else's device.
    pub fn flags(&self) -> libc::c_short {
        let mut f = libc::IFF_TAP | libc::IFF_TUN_EXCL;
        if !self.packet_info {
            f |= libc::IFF_NO_PI;
        }
        if self.vnet_hdr {
            f |= libc::IFF_VNET_HDR;
        }
        if self.multi_queue {
            f |= libc::IFF_MULTI_QUEUE;
        }
        // The flag bits all fit in 16 bits (0x8000 is IFF_TUN_EXCL, the sign bit).
        f as u16 as libc::c_short
    }
}

fn ifreq(name: &str, flags: libc::c_short) -> Result<IfReq> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(anyhow!("invalid tap name {name:?}"));
    }
    let mut r = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _union_rest: [0; std::mem::size_of::<libc::ifreq>() - libc::IFNAMSIZ - 2],
    };
    r.name[..b.len()].copy_from_slice(b);
    Ok(r)
}

fn open_tun() -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEV)
        .map_err(|e| anyhow!("failed to open {TUN_DEV}: {e}"))
}

/// The failed ioctl as an [`NlError`](crate::netlink::NlError), so callers test the
/// errno the same way as for netlink (`netlink::is_errno`).
fn os_err(what: &str, name: &str) -> anyhow::Error {
    let e = std::io::Error::last_os_error();
    anyhow::Error::new(crate::netlink::NlError {
        op: format!("failed to {what} for tap {name:?}"),
        errno: e.raw_os_error().unwrap_or(0),
        ext: String::new(),
    })
}

fn set_iff(f: &File, req: &mut IfReq, name: &str) -> Result<()> {
    // SAFETY: `f` is an open /dev/net/tun descriptor; TUNSETIFF reads and writes one
    // `struct ifreq`, and `req` is a properly sized, aligned and initialised #[repr(C)]
    // ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, req as *mut IfReq) };
    if rc < 0 {
        return Err(os_err("create (TUNSETIFF)", name));
    }
    Ok(())
}

fn set_int(f: &File, req: libc::Ioctl, arg: libc::c_ulong, what: &str, name: &str) -> Result<()> {
    // SAFETY: TUNSETPERSIST, TUNSETOWNER and TUNSETGROUP take their argument by value
    // (an integer, no pointer is dereferenced); `f` is an open, attached tun descriptor.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req, arg) };
    if rc < 0 {
        return Err(os_err(what, name));
    }
    Ok(())
}

/// Create the persistent tap `spec.name` in the calling thread's network namespace.
/// Owner and group are set before the device is made persistent, so if anything
/// fails the descriptor's close destroys the half-made device: either a complete
/// persistent tap exists afterwards, or none.
pub fn create(spec: &TapSpec) -> Result<()> {
    let f = open_tun()?;
    let mut req = ifreq(&spec.name, spec.flags())?;
    set_iff(&f, &mut req, &spec.name)?;
    if let Some(uid) = spec.owner {
        set_int(
            &f,
            libc::TUNSETOWNER,
            libc::c_ulong::from(uid),
            "set the owner (TUNSETOWNER)",
            &spec.name,
        )?;
    }
    if let Some(gid) = spec.group {
        set_int(
            &f,
            libc::TUNSETGROUP,
            libc::c_ulong::from(gid),
            "set the group (TUNSETGROUP)",
            &spec.name,
        )?;
    }
    set_int(
        &f,
        libc::TUNSETPERSIST,
        1,
        "make persistent (TUNSETPERSIST)",
        &spec.name,
    )?;
    Ok(())
}

/// Attach to the existing tap `name` as one queue, as a VM monitor or a user-space
/// switch does (`multi_queue` must match the device). The caller's credentials decide:
/// the kernel allows the device's owner or group, or CAP_NET_ADMIN.
pub fn attach(name: &str, multi_queue: bool) -> Result<OwnedFd> {
    let f = open_tun()?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let mut req = ifreq(name, flags as libc::c_short)?;
    set_iff(&f, &mut req, name)?;
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_libc() {
        assert_eq!(
            std::mem::size_of::<IfReq>(),
            std::mem::size_of::<libc::ifreq>()
        );
        assert!(ifreq("", 0).is_err());
        assert!(ifreq("a234567890123456", 0).is_err());
        assert!(ifreq("a\0b", 0).is_err());
        let r = ifreq("tap0", 2).unwrap();
        assert_eq!(&r.name[..5], b"tap0\0");
    }

    #[test]
    fn flags_like_the_reference_paths() {
        // `ip tuntap add mode tap` (the reference without owner and group).
        let ip = TapSpec::default();
        assert_eq!(
            ip.flags() as u16 as i32,
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL
        );
        // Its netlink path (owner and group both set): vnet_hdr, packet info on.
        let nl = TapSpec {
            vnet_hdr: true,
            packet_info: true,
            ..Default::default()
        };
        assert_eq!(
            nl.flags() as u16 as i32,
            libc::IFF_TAP | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL
        );
        let mq = TapSpec {
            multi_queue: true,
            ..Default::default()
        };
        assert_ne!(mq.flags() as u16 as i32 & libc::IFF_MULTI_QUEUE, 0);
    }
}
