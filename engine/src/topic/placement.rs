//! Which shard owns a partition.
//!
//! `shard_for` is a pure function of the topic name, the partition index and the shard
//! count: FNV-1a 64 over the name's bytes followed by the partition as 4 big-endian bytes,
//! modulo the shard count. It is written out here rather than taken from std's
//! `DefaultHasher`, whose algorithm and keys may change between Rust releases, so the same
//! node with the same shard count places every partition on the same shard after a restart
//! or an upgrade. (Partition directories do not depend on the shard, so a different shard
//! count only moves ownership, never files.)
//!
//! FNV's multiply carries low bits upward only, so the hash modulo a power of two depends
//! on the low bits of each input byte. For consecutive partitions of one topic that is an
//! exact round robin over power-of-two shard counts; the tests check the spread over other
//! counts and across topics too.

use super::TopicName;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `hash` (start with [`FNV_OFFSET_BASIS`]).
fn fnv1a_64(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The placement hash of one partition: FNV-1a 64 of `topic ++ partition.to_be_bytes()`.
pub fn partition_hash(topic: &TopicName, partition: u32) -> u64 {
    let hash = fnv1a_64(FNV_OFFSET_BASIS, topic.as_str().as_bytes());
    fnv1a_64(hash, &partition.to_be_bytes())
}

/// The shard, in `0..shards`, that owns `partition` of `topic`.
///
/// ```
/// use ringlog_engine::topic::{shard_for, TopicName};
/// let orders = TopicName::new("orders").unwrap();
/// assert_eq!(shard_for(&orders, 1, 8), 7);
/// ```
///
/// # Panics
///
/// If `shards` is 0: a node always runs at least one shard, so this is a bug in the caller.
pub fn shard_for(topic: &TopicName, partition: u32, shards: usize) -> usize {
    assert!(shards > 0, "shard_for needs at least one shard");
    // usize fits in u64 on every target Linux supports, and the remainder is below `shards`.
    (partition_hash(topic, partition) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str) -> TopicName {
        TopicName::new(name).unwrap()
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    // These values are a compatibility promise: if one changes, partitions move between
    // shards across an upgrade. They were computed by an independent implementation.
    #[test]
    fn hash_and_shards_are_fixed_values() {
        assert_eq!(partition_hash(&name("orders"), 0), 0xd54c_97ca_08f4_b60c);
        assert_eq!(partition_hash(&name("orders"), 1), 0xd54c_98ca_08f4_b7bf);
        assert_eq!(
            partition_hash(&name("__consumer_offsets"), 42),
            0x6bf3_6008_70c2_85f2
        );
        let cases = [
            ("orders", 0, [0, 2, 4, 2]),
            ("orders", 1, [1, 0, 7, 3]),
            ("orders", 7, [1, 1, 1, 1]),
            ("a", 0, [0, 1, 4, 4]),
            ("__consumer_offsets", 42, [0, 1, 2, 4]),
        ];
        for (topic, partition, expected) in cases {
            let shards = [2, 3, 8, 6].map(|count| shard_for(&name(topic), partition, count));
            assert_eq!(shards, expected, "{topic}-{partition}");
        }
    }

    #[test]
    fn partition_bytes_are_big_endian() {
        // Little-endian bytes would hash `orders` partition 1 like partition 1 << 24.
        let big_endian = fnv1a_64(fnv1a_64(FNV_OFFSET_BASIS, b"orders"), &[0, 0, 0, 1]);
        assert_eq!(partition_hash(&name("orders"), 1), big_endian);
        assert_ne!(
            partition_hash(&name("orders"), 1),
            partition_hash(&name("orders"), 1 << 24)
        );
    }

    #[test]
    fn one_shard_owns_everything() {
        for partition in 0..100 {
            assert_eq!(shard_for(&name("t"), partition, 1), 0);
        }
    }

    fn assert_even(counts: &[usize], total: usize) {
        let even = total as f64 / counts.len() as f64;
        for &count in counts {
            let ratio = count as f64 / even;
            assert!(
                (0.8..=1.2).contains(&ratio),
                "counts {counts:?} are not within 20%"
            );
        }
    }

    #[test]
    fn partitions_of_one_topic_spread_evenly() {
        for shards in [2, 3, 6, 8] {
            let mut counts = vec![0; shards];
            for partition in 0..1000 {
                counts[shard_for(&name("orders"), partition, shards)] += 1;
            }
            assert_even(&counts, 1000);
        }
    }

    #[test]
    fn single_partition_topics_spread_evenly() {
        for shards in [2, 3, 8] {
            let mut counts = vec![0; shards];
            for index in 0..1000 {
                counts[shard_for(&name(&format!("topic-{index}")), 0, shards)] += 1;
            }
            assert_even(&counts, 1000);
        }
    }
}
