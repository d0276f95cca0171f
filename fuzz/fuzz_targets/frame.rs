//! Fuzz target `frame`: the properties of `ringlog_server::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringlog_server::fuzzing::frame(data));
