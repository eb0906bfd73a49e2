//! Fuzz target: [`dml_fuzz::membership`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::membership(data));
