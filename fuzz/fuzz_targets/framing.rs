//! Fuzz target: [`dml_fuzz::framing`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::framing(data));
