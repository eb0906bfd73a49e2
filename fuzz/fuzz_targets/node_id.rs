//! Fuzz target: [`dml_fuzz::node_id`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::node_id(data));
