//! Fuzz target: [`dml_fuzz::registry`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::registry(data));
