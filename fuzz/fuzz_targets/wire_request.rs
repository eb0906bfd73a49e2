//! Fuzz target: [`dml_fuzz::wire_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::wire_request(data));
