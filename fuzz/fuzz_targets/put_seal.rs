//! Fuzz target: [`dml_fuzz::put_seal`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::put_seal(data));
