//! ringlog's storage engine: record-batch validation, segments and indexes, partition logs,
//! durability and recovery (see docs/ARCHITECTURE.md). The engine knows nothing of the
//! Kafka wire protocol beyond the record-batch format.
//!
//! It runs on ringlog's thread-per-core io_uring runtime, the `ringlog-rt` crate, re-exported
//! here as [`rt`]: every core a pinned shard thread with its own io_uring, a single-threaded
//! executor, timers, a buffer pool and a bounded cross-core mailbox. The storage layers
//! never share mutable state between shards.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
#[cfg(any(test, feature = "testing"))]
pub mod error_examples;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod index;
pub mod limits;
pub mod log;
pub use ringlog_rt as rt;
pub mod shard;
pub mod storage;
#[cfg(any(test, feature = "testing", feature = "fuzzing"))]
pub mod testing;
pub mod topic;
