//! IPAM building blocks: host-local's ranges, store and allocator.

pub mod alloc;
pub mod range;
pub mod store;
