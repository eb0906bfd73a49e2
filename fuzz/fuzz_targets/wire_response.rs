//! Fuzz target: [`dml_fuzz::wire_response`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::wire_response(data));
