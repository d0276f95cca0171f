//! Fuzz target `request`: the properties of `ringlog_server::fuzzing::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringlog_server::fuzzing::request(data));
