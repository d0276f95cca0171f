//! ringlog's storage engine: record-batch validation, segments and indexes, partition logs,
//! durability and recovery, and the thread-per-core `io_uring` runtime they run on (see
//! DESIGN.md). The engine knows nothing of the Kafka wire protocol beyond the record-batch
//! format.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod batch;
