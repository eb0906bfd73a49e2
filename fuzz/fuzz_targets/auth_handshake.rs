//! Fuzz target: [`dml_fuzz::auth_handshake`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::auth_handshake(data));
