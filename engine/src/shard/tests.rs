//! Tests of the engine API across shards: placement, appends and reads through the
//! owners' mailboxes, topic lifecycle, and restart.

use bytes::Bytes;
use futures::executor::block_on;
use futures::future::join_all;

use super::*;
use crate::batch::BatchBuilder;
use crate::testing::values;
use crate::topic::FlushPolicy;

fn engine(dir: &std::path::Path) -> Engine {
    let config = EngineConfig {
        data_dir: dir.to_path_buf(),
        runtime: RuntimeConfig {
            shards: 2,
            pin_threads: false,
        },
        batch_cache_bytes: 64 << 20,
        retention_check_interval: None,
    };
    Engine::open(&config).unwrap()
}

fn batch(value: &str) -> Bytes {
    let mut builder = BatchBuilder::new();
    builder.push(0, None, Some(value.as_bytes()), &[]).unwrap();
    Bytes::from(builder.build())
}

#[test]
fn partitions_live_on_their_owning_shard_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    block_on(async {
        engine
            .create_topic("orders", 6, TopicConfig::default())
            .await
            .unwrap();
        for partition in 0..6 {
            for i in 0..3 {
                let value = format!("p{partition}-{i}");
                let appended = engine
                    .append("orders", partition, batch(&value), Ack::Durable)
                    .await
                    .unwrap();
                assert_eq!(appended.offset_first, i64::from(i));
            }
            let owner = engine
                .on_log("orders", partition, |_log| async {
                    Ok(std::thread::current().name().map(str::to_owned))
                })
                .await
                .unwrap();
            let name = TopicName::new("orders").unwrap();
            let expected = format!("ringlog-shard-{}", shard_for(&name, partition, 2));
            assert_eq!(owner.as_deref(), Some(expected.as_str()));
            let read = engine.read("orders", partition, 0, 1 << 20).await.unwrap();
            let expected: Vec<_> = (0..3).map(|i| format!("p{partition}-{i}")).collect();
            assert_eq!(values(&read.bytes), expected);
            assert_eq!(read.high_watermark, 3);
        }
        let unknown = engine
            .append("orders", 6, batch("x"), Ack::Written)
            .await
            .unwrap_err();
        assert!(matches!(
            unknown,
            EngineError::UnknownTopicOrPartition { partition: 6, .. }
        ));
        let bad_name = engine
            .create_topic("no/slash", 1, TopicConfig::default())
            .await;
        assert!(matches!(bad_name.unwrap_err(), EngineError::TopicName(_)));
    });
    engine.shutdown().unwrap();
}

#[test]
fn restart_reopens_every_partition_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine(dir.path());
        block_on(async {
            let always = TopicConfig::builder()
                .flush(FlushPolicy::Always)
                .build()
                .unwrap();
            engine.create_topic("events", 4, always).await.unwrap();
            for partition in 0..4 {
                engine
                    .append("events", partition, batch("before"), Ack::Durable)
                    .await
                    .unwrap();
            }
        });
        engine.shutdown().unwrap();
    }
    let engine = engine(dir.path());
    block_on(async {
        let meta = engine.topic("events").unwrap();
        assert_eq!(meta.partitions, 4);
        assert_eq!(meta.config.flush(), FlushPolicy::Always, "config persisted");
        for partition in 0..4 {
            let appended = engine
                .append("events", partition, batch("after"), Ack::Durable)
                .await
                .unwrap();
            assert_eq!(appended.offset_first, 1, "offsets continue");
            let read = engine.read("events", partition, 0, 1 << 20).await.unwrap();
            assert_eq!(values(&read.bytes), ["before", "after"]);
        }
    });
    engine.shutdown().unwrap();
}

#[test]
fn an_emptied_partition_starts_again_at_offset_0_and_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let partition_dir = dir.path().join("moved-1");
    {
        let engine = engine(dir.path());
        block_on(async {
            engine
                .create_topic("moved", 2, TopicConfig::default())
                .await
                .unwrap();
            for partition in 0..2 {
                for value in ["a", "b", "c"] {
                    let batch = batch(value);
                    engine
                        .append("moved", partition, batch, Ack::Durable)
                        .await
                        .unwrap();
                }
            }
            std::fs::write(partition_dir.join(crate::log::RAFT_JOURNAL_FILE), b"x").unwrap();
            engine.empty_partition("moved", 1).await.unwrap();
            let offsets = engine.offsets("moved", 1).await.unwrap();
            assert_eq!((offsets.log_start, offsets.log_end), (0, 0));
            assert!(engine
                .read("moved", 1, 0, 1 << 20)
                .await
                .unwrap()
                .bytes
                .is_empty());
            assert!(!partition_dir.join(crate::log::RAFT_JOURNAL_FILE).exists());
            assert!(!dir.path().join(format!("moved-1{EMPTIED_SUFFIX}")).exists());
            // The other partition is untouched, and the emptied one takes appends again.
            let read = engine.read("moved", 0, 0, 1 << 20).await.unwrap();
            assert_eq!(values(&read.bytes), ["a", "b", "c"]);
            let appended = engine.append("moved", 1, batch("d"), Ack::Durable).await;
            assert_eq!(appended.unwrap().offset_first, 0);
            assert!(matches!(
                engine.empty_partition("moved", 2).await,
                Err(EngineError::UnknownTopicOrPartition { .. })
            ));
        });
        engine.shutdown().unwrap();
    }
    // A crash between setting the files aside and removing them leaves the aside
    // directory: the next open removes it and keeps the partition as it was emptied.
    let aside = dir.path().join(format!("moved-0{EMPTIED_SUFFIX}"));
    std::fs::create_dir(&aside).unwrap();
    std::fs::write(aside.join("00000000000000000000.log"), b"old").unwrap();
    let engine = engine(dir.path());
    assert!(!aside.exists());
    block_on(async {
        let read = engine.read("moved", 1, 0, 1 << 20).await.unwrap();
        assert_eq!(values(&read.bytes), ["d"]);
    });
    engine.shutdown().unwrap();
}

/// Waits until the partition's fdatasyncs in flight have completed: a command on the
/// appender's queue runs only after them, and DeleteRecords at offset 0 changes nothing.
async fn settle(engine: &Engine, topic: &str, partition: u32) {
    let log_start = engine.offsets(topic, partition).await.unwrap().log_start;
    let unchanged = engine.delete_records_before(topic, partition, 0).await;
    assert_eq!(unchanged.unwrap(), log_start);
}

#[test]
fn topics_grow_change_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    block_on(async {
        let always = TopicConfig::builder()
            .flush(FlushPolicy::Always)
            .build()
            .unwrap();
        engine.create_topic("t", 1, always).await.unwrap();
        engine.add_partitions("t", 3).await.unwrap();
        engine
            .append("t", 2, batch("new partition"), Ack::Written)
            .await
            .unwrap();
        settle(&engine, "t", 2).await;
        let offsets = engine.offsets("t", 2).await.unwrap();
        assert_eq!(
            (offsets.log_end, offsets.durable_end),
            (1, 1),
            "flush.policy=always syncs an acks=1 append"
        );
        let never = TopicConfig::builder()
            .flush(FlushPolicy::Never)
            .build()
            .unwrap();
        engine.alter_config("t", never).await.unwrap();
        engine
            .append("t", 2, batch("unsynced"), Ack::Written)
            .await
            .unwrap();
        settle(&engine, "t", 2).await;
        let offsets = engine.offsets("t", 2).await.unwrap();
        assert_eq!(offsets.log_end, 2);
        assert_eq!(
            offsets.durable_end, 1,
            "the new flush policy (never) applies to the open partition"
        );
        assert_eq!(
            offsets.high_watermark, 2,
            "never: consumers read the log end"
        );
        assert_eq!(engine.delete_records_before("t", 2, 1).await.unwrap(), 1);
        engine.delete_topic("t").await.unwrap();
        assert!(engine.topic("t").is_none());
        assert!(!dir.path().join("t-2").exists(), "partition data removed");
        let gone = engine.read("t", 0, 0, 100).await.unwrap_err();
        assert!(matches!(gone, EngineError::UnknownTopicOrPartition { .. }));
    });
    engine.shutdown().unwrap();
}

#[test]
fn two_thousand_partitions_at_default_settings_preallocate_within_the_node_budget() {
    const PARTITIONS: u32 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let budget = engine.prealloc_budget().clone();
    block_on(async {
        let meta = engine
            .create_topic("many", PARTITIONS, TopicConfig::default())
            .await
            .unwrap();
        assert_eq!(meta.config.preallocate_bytes(), 64 << 20);
        let appends = (0..PARTITIONS)
            .map(|partition| engine.append("many", partition, batch("x"), Ack::Written));
        for (partition, appended) in join_all(appends).await.into_iter().enumerate() {
            let appended = appended.unwrap_or_else(|e| panic!("partition {partition}: {e}"));
            assert_eq!(appended.offset_first, 0);
        }
    });
    // Every partition holds its first step at most (1 MiB, not 64 MiB), and all of them
    // together no more than the budget's cap beyond the groups' last blocks.
    assert_eq!(budget.logs(), u64::from(PARTITIONS));
    let reserved = budget.reserved_bytes();
    assert!(reserved <= u64::from(PARTITIONS) << 20, "{budget:?}");
    assert!(
        reserved <= budget.cap_bytes() + u64::from(PARTITIONS) * 4096,
        "{budget:?}"
    );
    engine.shutdown().unwrap();
    assert_eq!(
        budget.reserved_bytes(),
        0,
        "closed logs hold no preallocation"
    );
}

#[test]
fn a_wait_beyond_the_high_watermark_times_out_when_nothing_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    block_on(async {
        engine
            .create_topic("quiet", 1, TopicConfig::default())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let timeout = std::time::Duration::from_millis(300);
        engine.wait_beyond("quiet", 0, 0, timeout).await.unwrap();
        assert!(
            started.elapsed() >= timeout,
            "returned after {:?}",
            started.elapsed()
        );
        assert_eq!(engine.offsets("quiet", 0).await.unwrap().high_watermark, 0);
    });
    engine.shutdown().unwrap();
}

/// A wait with a long timeout and an append: the wait returns once the high watermark
/// passes its offset (long before the timeout; half of it bounds the test).
fn a_wait_wakes_when_an_append_moves_the_high_watermark(flush: FlushPolicy) {
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    block_on(async {
        let config = TopicConfig::builder().flush(flush).build().unwrap();
        engine.create_topic("woken", 1, config).await.unwrap();
        let started = std::time::Instant::now();
        let waiting = engine.wait_beyond("woken", 0, 0, TIMEOUT);
        let appending = async {
            // Queued on the owning shard behind the wait, so the wait is in place first.
            engine
                .append("woken", 0, batch("wake up"), Ack::Written)
                .await
                .unwrap()
        };
        let (waited, appended) = futures::join!(waiting, appending);
        waited.unwrap();
        assert_eq!(appended.offset_first, 0);
        assert!(
            started.elapsed() < TIMEOUT / 2,
            "{flush:?}: the wait ran {:?}, as if nothing woke it",
            started.elapsed()
        );
        assert!(engine.offsets("woken", 0).await.unwrap().high_watermark > 0);
    });
    engine.shutdown().unwrap();
}

#[test]
fn a_wait_wakes_when_the_log_end_passes_its_offset() {
    a_wait_wakes_when_an_append_moves_the_high_watermark(FlushPolicy::Never);
}

#[test]
fn a_wait_on_a_flush_always_topic_wakes_when_the_durable_end_passes_its_offset() {
    a_wait_wakes_when_an_append_moves_the_high_watermark(FlushPolicy::Always);
}

#[test]
fn a_read_range_stays_intact_when_delete_records_removes_its_segment() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let config = TopicConfig::builder().segment_bytes(4096).build().unwrap();
    let expected: Vec<String> = (0..60)
        .map(|i| format!("{i:03}-{}", "v".repeat(100)))
        .collect();
    let ranges = block_on(async {
        engine.create_topic("trimmed", 1, config).await.unwrap();
        for value in &expected {
            engine
                .append("trimmed", 0, batch(value), Ack::Written)
                .await
                .unwrap();
        }
        let ranges = engine.read_ranges("trimmed", 0, 0, 1 << 20).await.unwrap();
        // Past the first two segments: both files go while the range is held.
        let second_base = std::fs::read_dir(dir.path().join("trimmed-0"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter_map(|name| name.strip_suffix(".log")?.parse::<i64>().ok())
            .filter(|&base| base > 0)
            .min()
            .unwrap();
        let start = engine
            .delete_records_before("trimmed", 0, second_base + 1)
            .await
            .unwrap();
        assert_eq!(start, second_base + 1);
        ranges
    });
    let first_segment = dir.path().join("trimmed-0/00000000000000000000.log");
    assert!(
        !first_segment.exists(),
        "the segment the range reads is deleted"
    );
    let [SendablePiece::File(range)] = &ranges.pieces[..] else {
        panic!("one file range from a buffered log: {:?}", ranges.pieces);
    };
    let file = std::fs::File::from(range.file.try_clone().unwrap());
    let mut bytes = vec![0; usize::try_from(range.len).unwrap()];
    file.read_exact_at(&mut bytes, range.position).unwrap();
    let read = values(&bytes);
    assert!(
        !read.is_empty() && read.len() < expected.len(),
        "{}",
        read.len()
    );
    assert_eq!(
        read,
        expected[..read.len()],
        "the bytes are the batches appended"
    );
    engine.shutdown().unwrap();
}
