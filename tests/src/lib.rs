//! End-to-end tests of ringlog across crates: real Kafka clients against the `ringlog`
//! binary, crash and fault tests, soak checks. The tests live in `tests/tests/`; this
//! library holds what they share.
