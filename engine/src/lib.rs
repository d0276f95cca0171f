//! ringlog's storage engine and the thread-per-core runtime it runs on.
//!
//! The runtime (`rt`) gives every core a pinned shard thread with its own io_uring, a
//! single-threaded executor, timers, a buffer pool and a bounded cross-core mailbox. The
//! storage layers are built on it and never share mutable state between shards.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod limits;
pub mod rt;
