//! Fuzz target: [`dml_fuzz::sdfs_name`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::sdfs_name(data));
