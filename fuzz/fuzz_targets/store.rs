#![no_main]
//! `cargo fuzz run store`: see fuzz/targets.rs.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::store(data));
