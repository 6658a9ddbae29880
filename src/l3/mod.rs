//! Plumbing shared by the interface-creating plugins (bridge, ptp, and later macvlan,
//! ipvlan, vlan, host-device, dummy, tap), one concern per file:
//!
//! - [`veth`]: veth pairs across namespaces, and deleting the container end on DEL;
//! - [`iface`]: applying an IPAM result to an interface, forwarding, announcements;
//! - [`check`]: the CHECK validations;
//! - [`rollback`]: undoing a failed ADD, and DEL's run-everything teardown;
//! - [`result`]: IPAM through the delegate, masquerade, the `dns` override.

pub mod check;
pub mod iface;
pub mod result;
pub mod rollback;
pub mod veth;

pub use check::*;
pub use iface::*;
pub use result::*;
pub use rollback::*;
pub use veth::*;
