//! IPAM building blocks: host-local's ranges, store and allocator, and the config
//! values host-local and static share.

pub mod alloc;
pub mod conf;
pub mod range;
pub mod store;
