//! Fetch: record batches from each requested partition, up to the partition and request
//! byte limits, with long polling: when fewer than `min_bytes` are ready, the request waits
//! (without polling) until a partition it reads grows or `max_wait_ms` passes.
//!
//! Records never enter user space: each partition's data is a file range the connection
//! splices to the socket (`zero_copy.rs`); the response carries a marker in its place.

use std::time::{Duration, Instant};

use futures::future::{join_all, select_all};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use ringlog_engine::shard::{ReadRanges, SendableRange};

use crate::broker::Broker;
use crate::errors;
use crate::zero_copy;

/// What one partition of the request asks for.
struct Wanted {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: u64,
}

/// The response, and the file ranges its markers stand for, in order.
pub async fn handle(
    broker: &Broker,
    request: FetchRequest,
    version: i16,
) -> (FetchResponse, Vec<SendableRange>) {
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let min_bytes = u64::try_from(request.min_bytes.max(1)).unwrap_or(1);
    let max_bytes = u64::try_from(request.max_bytes.max(1)).unwrap_or(u64::MAX);
    let wanted: Vec<Wanted> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|partition| Wanted {
                topic: topic.topic.0.as_str().to_owned(),
                partition: partition.partition,
                offset: partition.fetch_offset,
                max_bytes: u64::try_from(partition.partition_max_bytes.max(0)).unwrap_or(0),
            })
        })
        .collect();
    loop {
        let results = read_all(broker, &wanted, max_bytes).await;
        let ready: u64 = results
            .iter()
            .map(|r| {
                r.as_ref()
                    .map_or(0, |d| d.ranges.iter().map(|range| range.len).sum())
            })
            .sum();
        let failed = results.iter().any(Result::is_err);
        if ready >= min_bytes || failed || Instant::now() >= deadline {
            return respond(request, results, version);
        }
        wait_for_growth(broker, &wanted, deadline).await;
    }
}

/// Reads every partition; the request limit cuts later partitions (the first with data
/// always gets its bytes, as in Kafka).
async fn read_all(
    broker: &Broker,
    wanted: &[Wanted],
    max_bytes: u64,
) -> Vec<Result<ReadRanges, i16>> {
    let reads = wanted.iter().map(|want| async move {
        let Ok(partition) = u32::try_from(want.partition) else {
            return Err(kafka_protocol::ResponseError::UnknownTopicOrPartition.code());
        };
        broker
            .engine
            .read_ranges(&want.topic, partition, want.offset, want.max_bytes)
            .await
            .map_err(|error| errors::code(&error))
    });
    let mut results = join_all(reads).await;
    let mut total = 0u64;
    for data in results.iter_mut().flatten() {
        let len: u64 = data.ranges.iter().map(|range| range.len).sum();
        if total > 0 && total + len > max_bytes {
            data.ranges.clear();
        }
        total += data.ranges.iter().map(|range| range.len).sum::<u64>();
    }
    results
}

/// Waits until any wanted partition's high watermark passes its fetch offset, or the
/// deadline.
async fn wait_for_growth(broker: &Broker, wanted: &[Wanted], deadline: Instant) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let waits: Vec<_> = wanted
        .iter()
        .filter_map(|want| {
            let partition = u32::try_from(want.partition).ok()?;
            let wait = broker
                .engine
                .wait_beyond(&want.topic, partition, want.offset, remaining);
            Some(Box::pin(wait))
        })
        .collect();
    if waits.is_empty() {
        ringlog_engine::rt::sleep(remaining).await;
        return;
    }
    let _ = select_all(waits).await;
}

fn respond(
    request: FetchRequest,
    results: Vec<Result<ReadRanges, i16>>,
    version: i16,
) -> (FetchResponse, Vec<SendableRange>) {
    // The log start offset is in responses from version 5 on.
    let log_start = |offset: i64| if version >= 5 { offset } else { -1 };
    let mut results = results.into_iter();
    let mut files = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let entry = PartitionData::default().with_partition_index(partition.partition);
            let entry = match results.next() {
                Some(Ok(data)) => {
                    let records = match data.ranges.into_iter().next() {
                        Some(range) => {
                            let marker = zero_copy::marker(files.len() as u32);
                            files.push(range);
                            marker
                        }
                        None => bytes::Bytes::new(),
                    };
                    entry
                        .with_high_watermark(data.high_watermark)
                        .with_last_stable_offset(data.high_watermark)
                        .with_log_start_offset(log_start(data.log_start))
                        .with_records(Some(records))
                }
                Some(Err(code)) => entry
                    .with_error_code(code)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_records(Some(bytes::Bytes::new())),
                None => unreachable!("one result per requested partition"),
            };
            partitions.push(entry);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic)
                .with_partitions(partitions),
        );
    }
    (FetchResponse::default().with_responses(topics), files)
}
