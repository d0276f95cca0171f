//! Replication for ringlog: every partition is a Raft group (raft-rs), and the partition
//! log is the group's Raft log — data entries are record batches in the segments, stamped
//! by the leader with their offsets and its term (as `partitionLeaderEpoch`), so every
//! replica holds the same bytes; Raft's own entries live in a journal beside the segments
//! and take no Kafka offset (`journal.rs`, `entries.rs`, `storage.rs`). `replica.rs`
//! drives one group: proposals, persistence through the partition log's group commit,
//! commit (the high watermark), and leadership.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod applied;
pub mod controller;
pub mod entries;
pub mod fill;
pub mod hibernation;
mod inbox;
pub mod journal;
pub mod limits;
pub mod logger;
pub mod node;
pub mod placement;
pub mod rejoin;
pub mod replica;
pub mod snapshot;
pub mod storage;
pub mod transport;

#[cfg(test)]
mod hibernation_tests;
#[cfg(test)]
mod idempotence_tests;
#[cfg(test)]
mod reconfigure_tests;
#[cfg(test)]
mod simulation_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
