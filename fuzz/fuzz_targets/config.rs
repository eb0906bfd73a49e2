//! Fuzz target: [`dml_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::config(data));
