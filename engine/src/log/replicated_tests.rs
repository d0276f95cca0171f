//! Tests of replicated appends (`PartitionLog::append_replicated`): a replica's log is the
//! leader's bytes, at the leader's offsets; a batch that would leave a gap or overlap is
//! refused whole; and a replica keeps the idempotent producers' state, so it answers a
//! producer's retry as the leader would once it leads.

use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::batch::{BatchBuilder, TimestampType};
use crate::rt;
use crate::storage::DiskStorage;
use crate::testing::tagged_batch as batch;
use crate::topic::IoMode;

fn id(partition: u32) -> PartitionId {
    PartitionId {
        topic: std::sync::Arc::from("replicated"),
        partition,
    }
}

/// A batch of `count` records of idempotent producer `pid` (epoch 0) from `sequence`.
fn idempotent(pid: i64, sequence: i32, count: usize) -> Bytes {
    let mut builder = BatchBuilder::new().producer(pid, 0, sequence);
    for i in 0..count {
        builder
            .push(i as i64, None, Some(b"idempotent"), &[])
            .unwrap();
    }
    Bytes::from(builder.build())
}

async fn open(dir: &Path, partition: u32, config: TopicConfig) -> PartitionLog<DiskStorage> {
    PartitionLog::open(DiskStorage, dir, id(partition), config)
        .await
        .unwrap()
}

async fn everything(log: &PartitionLog<DiskStorage>) -> Vec<u8> {
    log.read_bytes(0, 64 << 20).await.unwrap()
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    rt::block_on(future).unwrap()
}

#[test]
fn a_replica_writes_the_leaders_bytes_at_the_leaders_offsets() {
    for io_mode in [IoMode::Buffered, IoMode::Direct] {
        let dir = tempfile::tempdir().unwrap();
        // LogAppendTime: the leader stamps its clock; a replica must not stamp its own.
        let config = TopicConfig::builder()
            .io_mode(io_mode)
            .timestamp_type(TimestampType::LogAppendTime)
            .build()
            .unwrap();
        run(async {
            let leader = open(&dir.path().join("leader"), 0, config.clone()).await;
            let replica = open(&dir.path().join("replica"), 0, config).await;
            for (round, count) in [3, 1, 7].into_iter().enumerate() {
                leader
                    .append(batch(&format!("r{round}"), count), Ack::Durable)
                    .await
                    .unwrap();
            }
            let bytes = Bytes::from(everything(&leader).await);
            // Let the leader's clock move, so a replica stamping its own would differ.
            rt::sleep(std::time::Duration::from_millis(5)).await;
            let appended = replica
                .append_replicated(bytes.clone(), Ack::Durable)
                .await
                .unwrap();
            assert_eq!((appended.offset_first, appended.offset_next), (0, 11));
            assert_eq!(appended.log_append_time_ms, None);
            assert_eq!(everything(&replica).await, bytes);
            assert_eq!(replica.offsets().durable_end, 11);
            leader.close().await.unwrap();
            replica.close().await.unwrap();
        });
    }
}

#[test]
fn a_replicated_batch_must_continue_the_log() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let leader = open(&dir.path().join("leader"), 0, TopicConfig::default()).await;
        let replica = open(&dir.path().join("replica"), 0, TopicConfig::default()).await;
        leader.append(batch("a", 2), Ack::Written).await.unwrap();
        leader.append(batch("b", 3), Ack::Written).await.unwrap();
        leader.append(batch("c", 1), Ack::Written).await.unwrap();
        let bytes = Bytes::from(everything(&leader).await);
        let second = second_batch(&bytes);
        // The second batch alone leaves a gap at 0..2: refused, nothing written.
        let gap = replica
            .append_replicated(bytes.slice(second.clone()), Ack::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(
                gap,
                LogError::NotContiguous {
                    expected: 0,
                    found: 2,
                    ..
                }
            ),
            "{gap:?}"
        );
        assert_eq!(replica.offsets().log_end, 0);
        // The first batch, then the first again (an overlap), then the rest.
        let head = bytes.slice(..second.start);
        replica
            .append_replicated(head.clone(), Ack::Written)
            .await
            .unwrap();
        let overlap = replica
            .append_replicated(head, Ack::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(
                overlap,
                LogError::NotContiguous {
                    expected: 2,
                    found: 0,
                    ..
                }
            ),
            "{overlap:?}"
        );
        replica
            .append_replicated(bytes.slice(second.start..), Ack::Written)
            .await
            .unwrap();
        assert_eq!(everything(&replica).await, bytes);
    });
}

#[test]
fn a_replica_answers_a_producers_retry_with_the_leaders_offsets() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let leader = open(&dir.path().join("leader"), 0, TopicConfig::default()).await;
        let replica = open(&dir.path().join("replica"), 0, TopicConfig::default()).await;
        leader
            .append(batch("plain", 4), Ack::Written)
            .await
            .unwrap();
        let produced = idempotent(77, 0, 3);
        let original = leader.append(produced.clone(), Ack::Written).await.unwrap();
        let bytes = Bytes::from(everything(&leader).await);
        replica
            .append_replicated(bytes, Ack::Written)
            .await
            .unwrap();
        // The replica now leads; the producer retries its batch there.
        let retried = replica.append(produced, Ack::Written).await.unwrap();
        assert_eq!(retried, original);
        assert_eq!(
            replica.offsets().log_end,
            7,
            "the retry is not written twice"
        );
        // Its next batch continues the sequence, its gap is refused.
        replica
            .append(idempotent(77, 3, 1), Ack::Written)
            .await
            .unwrap();
        let gap = replica
            .append(idempotent(77, 9, 1), Ack::Written)
            .await
            .unwrap_err();
        assert!(matches!(gap, LogError::Producer { .. }), "{gap:?}");
    });
}

/// The byte range of the second batch of `bytes`.
fn second_batch(bytes: &[u8]) -> std::ops::Range<usize> {
    let size = |at: usize| {
        segment::BatchHeader::parse(&bytes[at..])
            .unwrap()
            .size_bytes as usize
    };
    let start = size(0);
    start..start + size(start)
}
