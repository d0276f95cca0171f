//! Every length, count and budget of the replication layer, in one place.

/// The largest record of a partition's Raft journal (`journal.rs`): configuration changes
/// and a new leader's empty entries are a few bytes to a few KiB; a length above this read
/// from the disk is damage, not a record.
pub const JOURNAL_RECORD_BYTES_MAX: usize = 1024 * 1024;

/// The size past which a partition's Raft journal is rewritten with only what is live: its
/// hard-state records (one per commit-index change a Ready carries) grow it steadily.
pub const JOURNAL_BYTES_MAX: u64 = 1024 * 1024;

/// Bytes of persisted data entries a replica keeps in memory for Raft's storage reads
/// beyond those it must keep (entries not applied yet). Older entries are read back from
/// the partition log when a lagging follower needs them.
pub const ENTRY_CACHE_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Data entries read from the partition log in one go when Raft asks for entries a replica
/// no longer keeps in memory (a follower that fell behind).
pub const ENTRY_FETCH_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Bytes of entries one append message to a follower carries at most (raft-rs's
/// `max_size_per_msg`), and messages in flight to one follower (`max_inflight_msgs`).
pub const APPEND_MESSAGE_BYTES_MAX: u64 = 1024 * 1024;
pub const APPEND_MESSAGES_IN_FLIGHT_MAX: usize = 256;
