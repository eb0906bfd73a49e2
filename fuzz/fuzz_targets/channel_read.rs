//! Fuzz target: [`dml_fuzz::channel_read`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::channel_read(data));
