#![no_main]
//! `cargo fuzz run cni_args`: see fuzz/targets.rs.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::cni_args(data));
