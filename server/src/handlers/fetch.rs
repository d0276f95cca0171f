//! Fetch: record batches from each requested partition, up to the partition and request
//! byte limits, with long polling: when fewer than `min_bytes` are ready, the request waits
//! (without polling) until a partition it reads grows or `max_wait_ms` passes.
//!
//! Records never enter user space: each partition's data is a file range the connection
//! splices to the socket (`zero_copy.rs`); the response carries a marker in its place.
//!
//! Limits: a response carries at most the least of the request's `max_bytes`, the broker's
//! `fetch_max_bytes` (Kafka's `fetch.max.bytes`) and the room left in the connection's and
//! its shard's in-flight bytes (`connection/budget.rs`), except that the first partition
//! with data always gets one whole batch. Partitions are read in order, in waves of
//! concurrent reads whose per-partition limits together fit what is left, so the bytes a
//! fetch brings into memory (reads of a direct-I/O log into the batch cache) stay within
//! that however many partitions it names; once it is spent, the remaining partitions
//! answer their offsets without records, as in Kafka.
//!
//! Topics are named by name up to version 12 and by topic id from version 13 on; an id no
//! topic has (a deleted topic's, or nil) is UNKNOWN_TOPIC_ID for each of its partitions.
//! An id is checked again after every read, so a topic deleted and created again under the
//! same name while a request waits never answers for the old id. Each response topic
//! carries the name or the id exactly as its request entry did.
//!
//! ringlog keeps no fetch sessions (KIP-227, version 7 on): every answer is a full one with
//! session id 0, which tells the client no session was made, so it keeps sending full
//! requests (epoch 0 or -1) whose forgotten topics mean nothing. A request continuing a
//! session (any other epoch) names one ringlog never made: FETCH_SESSION_ID_NOT_FOUND.
//!
//! Versions 14 and 15 change nothing ringlog answers: 14 allows an error for tiered storage
//! ringlog does not have, 15 moves the follower's replica id (ringlog's followers replicate
//! through Raft, not Fetch). 16 adds leader hints (KIP-951): in a cluster, a partition
//! answered NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH carries the leader this node
//! knows and its epoch (`CurrentLeader`), and the response that leader's address
//! (`NodeEndpoints`), so the consumer goes there without a metadata refresh.
//!
//! `DivergingEpoch` (version 12 on) is never filled: it tells a fetcher whose last epoch
//! ends past where the leader's log has that epoch end, which happens only after an
//! unclean truncation of data the fetcher already read. Raft never truncates committed
//! entries, and consumers read only committed ones, so a consumer's position is always on
//! the leader's log; OffsetForLeaderEpoch answers the same question for clients that ask.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::{join_all, select_all};
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringlog_engine::shard::{ReadRanges, SendablePiece};
use ringlog_engine::topic::TopicMeta;
use uuid::Uuid;

use crate::broker::{wants_leader_hint, Broker};
use crate::connection::Budget;
use crate::errors;
use crate::zero_copy::{self, Records};

/// The first version that names topics by id instead of by name.
const TOPIC_ID_VERSION: i16 = 13;
/// The first version with fetch sessions.
const SESSION_VERSION: i16 = 7;
/// The first version with KIP-951's leader hints.
const LEADER_HINT_VERSION: i16 = 16;
/// The session epochs of a full request: INITIAL (make a session) and FINAL (none).
const FULL_REQUEST_EPOCHS: [i32; 2] = [0, -1];

/// What one partition of the request asks for.
struct Wanted {
    /// The topic's name; `None` if the request named it by an id no topic has.
    topic: Option<String>,
    /// The index of the topic in the request.
    topic_index: usize,
    partition: i32,
    offset: i64,
    max_bytes: u64,
    /// The client's leader epoch for the partition (-1: none given).
    leader_epoch: i32,
}

/// The response, and the file ranges its markers stand for, in order: no more record bytes
/// than the request's `max_bytes`, the broker's `fetch_max_bytes` and what `budget` (the
/// connection's and its shard's in-flight bytes) has room for, except that the first
/// partition with data gets one whole batch.
pub async fn handle(
    broker: &Broker,
    request: FetchRequest,
    version: i16,
    budget: &Budget,
) -> (FetchResponse, Vec<Records>) {
    if version >= SESSION_VERSION && !FULL_REQUEST_EPOCHS.contains(&request.session_epoch) {
        let error = ResponseError::FetchSessionIdNotFound.code();
        return (FetchResponse::default().with_error_code(error), Vec::new());
    }
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let min_bytes = u64::try_from(request.min_bytes.max(1)).unwrap_or(1);
    let max_bytes = u64::try_from(request.max_bytes.max(1))
        .unwrap_or(u64::MAX)
        .min(broker.config.fetch_max_bytes);
    let names = topic_names(broker, &request.topics, version);
    let wanted: Vec<Wanted> = request
        .topics
        .iter()
        .zip(&names)
        .enumerate()
        .flat_map(|(topic_index, (topic, name))| {
            topic.partitions.iter().map(move |partition| Wanted {
                topic: name.clone(),
                topic_index,
                partition: partition.partition,
                offset: partition.fetch_offset,
                max_bytes: u64::try_from(partition.partition_max_bytes.max(0)).unwrap_or(0),
                leader_epoch: partition.current_leader_epoch,
            })
        })
        .collect();
    loop {
        // The reads' bytes are charged before they exist; the response they become is
        // charged by the connection until it is written.
        let allowed = max_bytes.min(budget.room()).max(1);
        let reserved = budget.charge(allowed);
        let mut results = read_all(broker, &wanted, allowed).await;
        drop(reserved);
        if version >= TOPIC_ID_VERSION {
            let names_now = topic_names(broker, &request.topics, version);
            forget_replaced(&wanted, &names_now, &mut results);
        }
        let ready: u64 = results
            .iter()
            .map(|r| {
                r.as_ref()
                    .map_or(0, |d| d.pieces.iter().map(SendablePiece::len).sum())
            })
            .sum();
        let failed = results.iter().any(Result::is_err);
        if ready >= min_bytes || failed || Instant::now() >= deadline {
            let (response, files) = respond(request, results, version);
            if version >= LEADER_HINT_VERSION {
                return (with_leader_hints(broker, response, &names), files);
            }
            return (response, files);
        }
        wait_for_growth(broker, &wanted, &results, deadline).await;
    }
}

/// The name of each topic in `topics`: as given before version 13, found by id from 13 on.
fn topic_names(broker: &Broker, topics: &[FetchTopic], version: i16) -> Vec<Option<String>> {
    if version < TOPIC_ID_VERSION {
        return topics
            .iter()
            .map(|topic| Some(topic.topic.0.as_str().to_owned()))
            .collect();
    }
    names_by_id(topics, &broker.engine.topics())
}

/// The name of the topic among `known` with each requested topic's id; `None` where none
/// has it. The nil id is no topic's.
fn names_by_id(topics: &[FetchTopic], known: &[TopicMeta]) -> Vec<Option<String>> {
    let by_id: HashMap<Uuid, &str> = known
        .iter()
        .map(|meta| (Uuid::from_bytes(meta.id), meta.name.as_str()))
        .filter(|(id, _)| !id.is_nil())
        .collect();
    topics
        .iter()
        .map(|topic| by_id.get(&topic.topic_id).map(|name| (*name).to_owned()))
        .collect()
}

/// Turns the results of topics whose id no longer names the topic that was read (deleted,
/// perhaps created again under the same name, while the request ran) into UNKNOWN_TOPIC_ID.
fn forget_replaced(
    wanted: &[Wanted],
    names_now: &[Option<String>],
    results: &mut [Result<ReadRanges, i16>],
) {
    for (want, result) in wanted.iter().zip(results.iter_mut()) {
        if want.topic.is_some() && names_now[want.topic_index] != want.topic {
            *result = Err(ResponseError::UnknownTopicId.code());
        }
    }
}

/// Reads every partition, in order, within `max_bytes` (the first partition with data
/// always gets its first batch, as in Kafka): in waves of concurrent reads whose limits
/// together fit what is left of `max_bytes`, so the bytes a fetch brings into memory stay
/// within it however many partitions it names and whatever each asks. A partition that a
/// wave's result would take past `max_bytes` gets no records, and ends the reading: from
/// then on, as once `max_bytes` is spent, the rest answer their offsets alone.
async fn read_all(
    broker: &Broker,
    wanted: &[Wanted],
    max_bytes: u64,
) -> Vec<Result<ReadRanges, i16>> {
    let mut results = Vec::with_capacity(wanted.len());
    let mut total = 0u64;
    let mut full = false;
    while results.len() < wanted.len() {
        let rest = &wanted[results.len()..];
        let left = max_bytes.saturating_sub(total);
        if left == 0 || full {
            let offsets = rest.iter().map(|want| offsets_only(broker, want));
            results.extend(join_all(offsets).await);
            break;
        }
        let mut assigned = 0u64;
        let mut limits = Vec::new();
        for want in rest {
            if assigned >= left && !limits.is_empty() {
                break;
            }
            let limit = want.max_bytes.min(left - assigned);
            assigned += limit;
            limits.push(limit);
        }
        let reads = rest
            .iter()
            .zip(limits)
            .map(|(want, limit)| read(broker, want, limit));
        for mut result in join_all(reads).await {
            if let Ok(data) = &mut result {
                let len: u64 = data.pieces.iter().map(SendablePiece::len).sum();
                if total > 0 && total + len > max_bytes {
                    data.pieces.clear();
                    full = true;
                }
                total += data.pieces.iter().map(SendablePiece::len).sum::<u64>();
            }
            results.push(result);
        }
    }
    results
}

/// Reads one partition from its offset, up to `max_bytes` (and at least one batch).
async fn read(broker: &Broker, want: &Wanted, max_bytes: u64) -> Result<ReadRanges, i16> {
    let (topic, partition) = partition_of(want)?;
    broker.check_leader(topic, partition, want.leader_epoch)?;
    broker
        .engine
        .read_ranges(topic, partition, want.offset, max_bytes)
        .await
        .map_err(|error| errors::code(&error))
}

/// One partition's offsets without its records: OFFSET_OUT_OF_RANGE where a read would
/// answer it.
async fn offsets_only(broker: &Broker, want: &Wanted) -> Result<ReadRanges, i16> {
    let (topic, partition) = partition_of(want)?;
    broker.check_leader(topic, partition, want.leader_epoch)?;
    let offsets = broker
        .engine
        .offsets(topic, partition)
        .await
        .map_err(|error| errors::code(&error))?;
    if want.offset < offsets.log_start || want.offset > offsets.high_watermark {
        return Err(ResponseError::OffsetOutOfRange.code());
    }
    Ok(ReadRanges {
        pieces: Vec::new(),
        high_watermark: offsets.high_watermark,
        log_start: offsets.log_start,
        log_end: offsets.log_end,
    })
}

/// The topic and partition a request entry names, or the error code for it.
fn partition_of(want: &Wanted) -> Result<(&str, u32), i16> {
    let Some(topic) = &want.topic else {
        return Err(ResponseError::UnknownTopicId.code());
    };
    let Ok(partition) = u32::try_from(want.partition) else {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    };
    Ok((topic, partition))
}

/// Waits until any wanted partition has more than the read just found (`results`, one per
/// wanted partition): its high watermark passes both its fetch offset and the high
/// watermark that read saw. Waiting only for the fetch offset would return at once for a
/// partition with data short of `min_bytes`, and the request would re-read it until the
/// deadline.
async fn wait_for_growth(
    broker: &Broker,
    wanted: &[Wanted],
    results: &[Result<ReadRanges, i16>],
    deadline: Instant,
) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let waits: Vec<_> = wanted
        .iter()
        .zip(results)
        .filter_map(|(want, result)| {
            let topic = want.topic.as_deref()?;
            let partition = u32::try_from(want.partition).ok()?;
            let seen = result
                .as_ref()
                .map_or(want.offset, |read| read.high_watermark);
            let beyond = want.offset.max(seen);
            let wait = broker
                .engine
                .wait_beyond(topic, partition, beyond, remaining);
            Some(Box::pin(wait))
        })
        .collect();
    if waits.is_empty() {
        ringlog_engine::rt::sleep(remaining).await;
        return;
    }
    let _ = select_all(waits).await;
}

/// Adds KIP-951's hints to the partitions told to look for their leader: the leader and its
/// epoch in the partition, its address once in `node_endpoints`. `names` are the response
/// topics' names, in order (the response names them by id from version 13 on).
fn with_leader_hints(
    broker: &Broker,
    mut response: FetchResponse,
    names: &[Option<String>],
) -> FetchResponse {
    let mut endpoints: Vec<NodeEndpoint> = Vec::new();
    for (topic, name) in response.responses.iter_mut().zip(names) {
        let Some(name) = name else {
            continue;
        };
        for partition in &mut topic.partitions {
            if !wants_leader_hint(partition.error_code) {
                continue;
            }
            let Ok(index) = u32::try_from(partition.partition_index) else {
                continue;
            };
            let Some(hint) = broker.leader_hint(name, index) else {
                continue;
            };
            partition.current_leader = LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(hint.leader_id))
                .with_leader_epoch(hint.leader_epoch);
            if !endpoints.iter().any(|e| e.node_id.0 == hint.leader_id) {
                endpoints.push(
                    NodeEndpoint::default()
                        .with_node_id(BrokerId(hint.leader_id))
                        .with_host(StrBytes::from_string(hint.host))
                        .with_port(i32::from(hint.port))
                        .with_rack(None),
                );
            }
        }
    }
    response.with_node_endpoints(endpoints)
}

fn respond(
    request: FetchRequest,
    results: Vec<Result<ReadRanges, i16>>,
    version: i16,
) -> (FetchResponse, Vec<Records>) {
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
                    let records = if data.pieces.is_empty() {
                        bytes::Bytes::new()
                    } else {
                        let marker = zero_copy::marker(files.len() as u32);
                        files.push(data.pieces);
                        marker
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
        // The request decoder left whichever of name and id the version lacks at its
        // default, which is what the encoder needs for that version.
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic)
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    (FetchResponse::default().with_responses(topics), files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;
    use ringlog_engine::topic::{TopicConfig, TopicName as EngineTopicName};

    fn meta(name: &str, id: Uuid) -> TopicMeta {
        TopicMeta {
            name: EngineTopicName::new(name).unwrap(),
            id: id.into_bytes(),
            partitions: 1,
            config: TopicConfig::default(),
        }
    }

    fn by_id(id: Uuid) -> FetchTopic {
        FetchTopic::default().with_topic_id(id)
    }

    #[test]
    fn topic_ids_map_to_names_and_unknown_ids_to_none() {
        let orders = Uuid::new_v4();
        let events = Uuid::new_v4();
        let known = [meta("orders", orders), meta("events", events)];
        let requested = [
            by_id(events),
            by_id(Uuid::new_v4()),
            by_id(orders),
            by_id(Uuid::nil()),
            by_id(events),
        ];
        let names = names_by_id(&requested, &known);
        let want = [Some("events"), None, Some("orders"), None, Some("events")];
        assert_eq!(names, want.map(|name| name.map(str::to_owned)));
    }

    #[test]
    fn the_name_in_a_topic_id_request_is_ignored() {
        let id = Uuid::new_v4();
        let named = FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("orders")))
            .with_topic_id(Uuid::new_v4());
        let names = names_by_id(&[named], &[meta("orders", id)]);
        assert_eq!(names, [None]);
    }

    #[test]
    fn a_topic_replaced_while_the_request_ran_is_unknown() {
        let wanted = |topic: Option<&str>, topic_index| Wanted {
            topic: topic.map(str::to_owned),
            topic_index,
            partition: 0,
            offset: 0,
            max_bytes: 1,
            leader_epoch: -1,
        };
        let wanted = [
            wanted(Some("kept"), 0),
            wanted(Some("replaced"), 1),
            wanted(None, 2),
        ];
        let names_now = [Some("kept".to_owned()), None, None];
        let mut results: Vec<Result<ReadRanges, i16>> = vec![Err(1), Err(1), Err(3)];
        forget_replaced(&wanted, &names_now, &mut results);
        let codes: Vec<i16> = results.into_iter().map(|r| r.unwrap_err()).collect();
        assert_eq!(codes, [1, ResponseError::UnknownTopicId.code(), 3]);
    }
}
