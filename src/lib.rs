//! cnibox's shared core. Applets (in `applets/`) read like the spec of their plugin;
//! everything they share lives here:
//!
//! - [`cni`]: CNI types, version conversion, Go-compatible decoding, `CNI_ARGS`, and the
//!   command harness every plugin runs under;
//! - [`netlink`]: rtnetlink on neli's socket (links, addresses, routes, bridge ports);
//! - [`netns`]: entering network namespaces safely;
//! - [`sysctl`]: `/proc/sys` reads and writes;
//! - [`error`]: the one CNI error type;
//! - [`libcni`]: the runtime side (load a network, run its plugin list, the result cache);
//! - [`http`]: a small blocking HTTP/1.1 client with deadlines (multinet's backend);
//! - [`statefile`]: atomic state files of meta plugins;
//! - [`log`]: the opt-in JSON-lines operation log;
//! - [`help`]: per-applet help (config keys, example) and the man page.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cni;
pub mod dhcp;
pub mod error;
pub mod fw;
pub mod help;
pub mod http;
pub mod ipam;
pub mod l3;
pub mod libcni;
pub mod log;
pub mod netlink;
pub mod netns;
pub mod statefile;
pub mod sysctl;
pub mod tap;

pub use anyhow::{Context, Result};
