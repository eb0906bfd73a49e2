//! Fuzz target: [`dml_fuzz::raft_rpc`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::raft_rpc(data));
