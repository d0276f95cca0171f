//! Fuzz target `recovery`: the properties of `ringlog_engine::fuzzing::recovery_scan`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringlog_engine::fuzzing::recovery_scan(data));
