//! Fuzz target: [`dml_fuzz::infer_jsonl`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dml_fuzz::infer_jsonl(data));
