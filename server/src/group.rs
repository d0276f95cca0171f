//! Consumer groups: the classic group coordinator and committed offsets.
//!
//! - [`state`]: one group's membership as Kafka's state machine (pure, time passed in).
//! - [`records`]: group metadata and committed offsets as `__consumer_offsets` records.
//! - [`coordinator`]: the groups of one shard, persisted through the storage engine.
//!
//! Where a group lives: `__consumer_offsets` has a fixed number of partitions (chosen
//! when the topic is first created, then read from the topic registry); a group belongs
//! to partition `java_hash(group) mod partitions`, as in Kafka, and so to the shard that
//! owns that partition. Every request for the group runs on that shard, where its state
//! lives without locks; its records are appended to its partition with acks=all before
//! any answer that depends on them is sent, and replayed into memory at start.

pub mod coordinator;
pub mod records;
pub mod state;

pub use coordinator::{on_coordinator, Coordinator};

/// The longest group id, member id, client id, instance id or protocol name accepted: a
/// record stores them with 16-bit lengths, and nothing real comes near.
pub const GROUP_STRING_BYTES_MAX: usize = 4096;
/// The internal topic holding group metadata and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Partitions of `__consumer_offsets` when ringlog creates it (Kafka's default is 50,
/// Redpanda's 16; each costs open files and a preallocated segment on every node, and
/// groups spread over shards by partition, so a few per shard is enough).
pub const OFFSETS_TOPIC_PARTITIONS: u32 = 8;

/// Whether `topic` is an internal topic (`__consumer_offsets`): only the coordinator
/// writes it, and clients may not produce to it, delete it, trim it or add partitions.
pub fn is_internal(topic: &str) -> bool {
    topic == OFFSETS_TOPIC
}

/// The `__consumer_offsets` partition of `group`: Kafka's
/// `abs(group.hashCode()) % partitions`, with Java's `String.hashCode` over UTF-16 code
/// units, so a group maps to the partition Kafka would give it.
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    let hash = group.encode_utf16().fold(0_i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs maps i32::MIN to 0 rather than overflowing.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive.unsigned_abs() % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_the_partitions_kafka_gives_them() {
        // "".hashCode() == 0; "a".hashCode() == 97; "group".hashCode() == 98629247.
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(partition_for("a", 50), 97 % 50);
        assert_eq!(partition_for("group", 50), 98_629_247 % 50);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        for group in ["x", "consumers", "ünïcödé"] {
            assert!(partition_for(group, 8) < 8);
        }
    }
}
