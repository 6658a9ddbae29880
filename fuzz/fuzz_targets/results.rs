#![no_main]
//! `cargo fuzz run results`: see fuzz/targets.rs.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::results(data));
