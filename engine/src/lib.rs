//! ringlog's storage engine: record-batch validation, segments and indexes, partition logs,
//! durability and recovery, and the thread-per-core io_uring runtime they run on (see
//! DESIGN.md). The engine knows nothing of the Kafka wire protocol beyond the record-batch
//! format.
//!
//! The runtime ([`rt`]) gives every core a pinned shard thread with its own io_uring, a
//! single-threaded executor, timers, a buffer pool and a bounded cross-core mailbox. The
//! storage layers are built on it and never share mutable state between shards.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod index;
pub mod limits;
pub mod log;
pub mod rt;
pub mod shard;
pub mod storage;
#[cfg(test)]
mod testing;
pub mod topic;
