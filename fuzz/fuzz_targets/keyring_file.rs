//! Fuzz target: [`dml_fuzz::keyring_file`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::keyring_file(data));
