//! Fuzz target `batch`: the properties of `ringlog_engine::fuzzing::batch_validator`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringlog_engine::fuzzing::batch_validator(data));
