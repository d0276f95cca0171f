//! Fuzz target `index`: the properties of `ringlog_engine::fuzzing::index_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringlog_engine::fuzzing::index_decode(data));
