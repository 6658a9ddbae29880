//! Network namespaces.
//!
//! `setns(2)` with `CLONE_NEWNET` moves only the **calling thread**; other threads stay
//! where they are, and a thread spawned later starts in the namespace its parent thread
//! is in at that moment. Most work never enters a namespace at all: a netlink socket
//! stays bound to the netns it was opened in, so we open one socket inside the container
//! (briefly entering it) and then drive it from the host. Only `/proc/sys/net` writes
//! really need to run inside; [`Netns::run`] does that and always switches the thread
//! back, on every exit path (and aborts rather than continue in the wrong namespace).
//!
//! The invariants every caller (and the long-running dhcp daemon, with its many
//! threads) relies on:
//! - a thread is inside another namespace only for the duration of one `run` closure;
//! - no thread is spawned from inside a `run` closure (it would start in the container);
//! - work handed to other threads carries already-bound sockets, never a "current
//!   namespace" assumption (see `l3::both`).

use crate::error::{cni_err, Code};
use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::unix::fs::MetadataExt;

const NSFS_MAGIC: i64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// An open network namespace (the file keeps it alive while we work).
pub struct Netns {
    pub path: String,
    pub file: File,
}

/// Why a netns could not be opened: DEL treats "gone" as success.
pub fn is_gone(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
            || e.downcast_ref::<crate::error::CniError>()
                .is_some_and(|c| c.code == Code::UnknownContainer as u32)
    })
}

impl Netns {
    /// Open `path` and check that it really is a network namespace file (nsfs, or a
    /// /proc/<pid>/ns/net link), like the reference's `IsNSorErr`.
    pub fn open(path: &str) -> Result<Netns> {
        // A path that does not exist means the container (its sandbox) is gone or was
        // never there: code 3. Anything else wrong with CNI_NETNS is a bad environment
        // variable: code 4.
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(cni_err(
                    Code::UnknownContainer,
                    format!("CNI_NETNS {path:?} does not exist"),
                ))
            }
            Err(e) => {
                return Err(cni_err(
                    Code::InvalidEnv,
                    format!("CNI_NETNS {path:?} cannot be opened: {e}"),
                ))
            }
        };
        let st = nix::sys::statfs::fstatfs(&file)
            .with_context(|| format!("failed to statfs netns {path:?}"))?;
        let magic = st.filesystem_type().0 as i64;
        if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
            return Err(cni_err(
                Code::InvalidEnv,
                format!("CNI_NETNS {path:?} is not a network namespace (fs magic {magic:#x})"),
            ));
        }
        Ok(Netns {
            path: path.to_string(),
            file,
        })
    }

    /// For DEL: the namespace, or `None` when there is nothing left to clean inside it
    /// (the path is gone, or is only the empty file left behind by an unmounted netns).
    pub fn open_if_present(path: &str) -> Result<Option<Netns>> {
        if path.is_empty() {
            return Ok(None);
        }
        match Netns::open(path) {
            Ok(ns) => Ok(Some(ns)),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => {
                let not_ns = std::fs::metadata(path).is_ok_and(|m| m.is_file());
                if not_ns {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        let path = "/proc/thread-self/ns/net";
        let file = File::open(path).context("failed to open the current netns")?;
        Ok(Netns {
            path: path.to_string(),
            file,
        })
    }

    /// Run `f` inside this namespace and come back, whatever `f` returns.
    pub fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _guard = Guard::enter(&self.file)
            .with_context(|| format!("failed to enter netns {:?}", self.path))?;
        f()
    }
}

/// True if `file` is the calling thread's own network namespace.
pub fn is_current(file: &File) -> Result<bool> {
    let me = std::fs::metadata("/proc/thread-self/ns/net")?;
    let other = file.metadata()?;
    Ok(me.dev() == other.dev() && me.ino() == other.ino())
}

/// RAII switch into a netns; dropping it switches back.
struct Guard {
    origin: File,
}

impl Guard {
    fn enter(target: &File) -> Result<Guard> {
        let origin =
            File::open("/proc/thread-self/ns/net").context("failed to open the current netns")?;
        setns(target, CloneFlags::CLONE_NEWNET)?;
        Ok(Guard { origin })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.origin, CloneFlags::CLONE_NEWNET) {
            // Carrying on in the wrong namespace would change the wrong host's network.
            eprintln!("cnibox: fatal: cannot return to the original netns: {e}");
            std::process::abort();
        }
    }
}
