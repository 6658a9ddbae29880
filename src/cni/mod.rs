//! The CNI protocol: types, decoding, arguments, the harness, and delegation.

pub mod args;
pub mod decode;
pub mod delegate;
pub mod skel;
pub mod types;
pub mod value;

pub use skel::{Applet, Command, Ctx, Kind, Plugin};
pub use types::{CniResult, Dns, Interface, IpConfig, Route};
