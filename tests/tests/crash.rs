//! `kill -9` under load: the real `ringlog serve` is killed at seeded random moments while
//! producers write with acks=all (idempotent ones retrying every unanswered batch with its
//! sequence, plain ones never resending) and a consumer-group member reads and commits;
//! the broker is restarted on the same data directory and port each time. At the end every
//! partition is read back and checked:
//!
//! - every acknowledged record is present, exactly once, at the offset its acknowledgement
//!   gave, and each producer's records keep their order;
//! - offsets are dense from 0 and every batch passes its CRC (the client's decoder checks
//!   it, independently of ringlog's code);
//! - nothing appears twice, so no idempotent retry was written twice;
//! - everything the consumer read before a kill is still there after it;
//! - committed offsets never went backwards across restarts, and the consumer, joining the
//!   group again after each restart, resumed and caught up with the whole log.
//!
//! The seed is printed; `RINGLOG_CRASH_SEED=<n>` replays a run's kill moments, and
//! `RINGLOG_CRASH_CYCLES=<n>` (default 4) turns the test into a soak.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest};
use kafka_protocol::records::Record;
use ringlog_tests::member::Member;
use ringlog_tests::process::{free_port, Server, ServerOptions};
use ringlog_tests::wire::{
    self, decode_batches, encode_batch, fetch_request, idempotent_batch, max_version,
    produce_request, Connection, FETCH_BY_NAME_VERSION_MAX,
};
use ringlog_tests::TestRng;

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 3;
const GROUP: &str = "crash-readers";
const IDEMPOTENT_PRODUCERS: usize = 2;
const PLAIN_PRODUCERS: usize = 2;
/// Kills in a CI run; `RINGLOG_CRASH_CYCLES` overrides it.
const CYCLES_DEFAULT: u32 = 4;
/// How long the load runs between a start and the kill, at most (the least is a fifth).
const UP_MS_MAX: u64 = 1500;
/// How long a client waits before it tries a refused connection or request again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long the consumer may take to catch up with the log once the load stops.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Error codes a produce may get while the broker starts (its partitions or its producer
/// state still loading); an idempotent producer retries them with the same sequence.
const RETRIABLE: [i16; 4] = [
    5,  // LEADER_NOT_AVAILABLE
    6,  // NOT_LEADER_OR_FOLLOWER
    7,  // REQUEST_TIMED_OUT
    14, // COORDINATOR_LOAD_IN_PROGRESS
];

/// One record a producer was told is stored: where, and its value.
#[derive(Clone, Debug)]
struct Acknowledged {
    partition: i32,
    offset: i64,
    value: Vec<u8>,
}

/// What every client thread saw, checked against the log at the end.
#[derive(Default)]
struct Seen {
    /// Per producer, its acknowledged records in the order it was told of them.
    acknowledged: Vec<Vec<Acknowledged>>,
    /// `(partition, offset) -> value` of every record the consumer read.
    consumed: HashMap<(i32, i64), Vec<u8>>,
    /// Per partition, the highest offset a commit was acknowledged for.
    committed: BTreeMap<i32, i64>,
    /// Joins of the group that succeeded (one per start of the broker at least).
    joins: u32,
    /// Idempotent batches sent again after their answer was lost (printed: the harness
    /// reports how often it exercised the duplicate check).
    resent: u32,
    /// Promises broken while the load ran (a committed offset gone backwards, a refusal
    /// an idempotent producer cannot retry, a record read twice at different offsets).
    violations: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection, trying again until the broker accepts or the run stops.
fn connect(address: SocketAddr, stop: &AtomicBool) -> Option<Connection> {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(connection) = Connection::try_connect(address) {
            return Some(connection);
        }
        thread::sleep(RETRY_PAUSE);
    }
    None
}

/// Produces `batch` with acks=all: `Ok((error code, base offset))`, or the transport error
/// (the answer was lost, so the outcome is unknown).
fn produce(c: &mut Connection, partition: i32, batch: bytes::Bytes) -> anyhow::Result<(i16, i64)> {
    let request = produce_request(TOPIC, partition, batch, -1);
    let response = c.call(&request, max_version(ApiKey::Produce))?;
    let answer = response
        .responses
        .first()
        .and_then(|topic| topic.partition_responses.first())
        .ok_or_else(|| anyhow::anyhow!("a produce response without the partition"))?;
    Ok((answer.error_code, answer.base_offset))
}

fn value(producer: usize, batch: u64, index: usize) -> Vec<u8> {
    format!("p{producer}-b{batch}-r{index}").into_bytes()
}

/// A producer that never resends: a batch whose answer is lost may or may not be stored,
/// and is never sent again (at most once).
fn plain_producer(id: usize, address: SocketAddr, stop: &AtomicBool, seen: &Shared) {
    let mut connection = None;
    for batch in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if connection.is_none() {
            connection = connect(address, stop);
        }
        let Some(c) = connection.as_mut() else {
            return;
        };
        let partition = (batch % PARTITIONS as u64) as i32;
        let count = 1 + (batch % 4) as usize;
        let values: Vec<Vec<u8>> = (0..count).map(|index| value(id, batch, index)).collect();
        let records: Vec<Record> = values
            .iter()
            .map(|v| wire::record(None, Some(v), &[], 1_700_000_000_000))
            .collect();
        match produce(c, partition, encode_batch(&records)) {
            Ok((0, base)) => record_acknowledged(seen, id, partition, base, values),
            Ok(_) => thread::sleep(RETRY_PAUSE),
            Err(_) => connection = None,
        }
    }
}

/// An idempotent producer with one batch in flight: a batch whose answer is lost is sent
/// again with the same sequence until it is answered, so it must be stored exactly once.
fn idempotent_producer(id: usize, address: SocketAddr, stop: &AtomicBool, seen: &Shared) {
    let mut connection = None;
    let mut identity = None;
    let mut sequences = [0i32; PARTITIONS as usize];
    let mut batch = 0u64;
    let mut refusals = 0u32;
    let mut unanswered = false;
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            connection = connect(address, stop);
        }
        let Some(c) = connection.as_mut() else {
            return;
        };
        let Some((producer_id, epoch)) = identity else {
            // An idempotent producer has no transactional id (the field's default is "").
            let request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000);
            match c.call(&request, max_version(ApiKey::InitProducerId)) {
                Ok(answer) if answer.error_code == 0 => {
                    identity = Some((answer.producer_id.0, answer.producer_epoch));
                }
                Ok(_) => thread::sleep(RETRY_PAUSE),
                Err(_) => connection = None,
            }
            continue;
        };
        let partition = (batch % PARTITIONS as u64) as i32;
        let count = 1 + (batch % 3) as usize;
        let values: Vec<Vec<u8>> = (0..count).map(|index| value(id, batch, index)).collect();
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let sequence = sequences[partition as usize];
        let bytes = idempotent_batch(producer_id, epoch, sequence, &slices);
        if unanswered {
            lock(seen).resent += 1;
        }
        let answer = produce(c, partition, bytes);
        unanswered = answer.is_err();
        match answer {
            Ok((0, base)) => {
                record_acknowledged(seen, id, partition, base, values);
                sequences[partition as usize] += count as i32;
                batch += 1;
                refusals = 0;
            }
            Ok((code, _)) if RETRIABLE.contains(&code) && refusals < 1000 => {
                refusals += 1;
                thread::sleep(RETRY_PAUSE);
            }
            Ok((code, _)) => {
                lock(seen).violations.push(format!(
                    "idempotent producer {id}: batch {batch} (partition {partition}, sequence \
                     {sequence}) refused with error {code}"
                ));
                return;
            }
            Err(_) => connection = None,
        }
    }
}

fn record_acknowledged(
    seen: &Shared,
    producer: usize,
    partition: i32,
    base: i64,
    values: Vec<Vec<u8>>,
) {
    let mut seen = lock(seen);
    let acknowledged = &mut seen.acknowledged[producer];
    for (index, value) in values.into_iter().enumerate() {
        acknowledged.push(Acknowledged {
            partition,
            offset: base + index as i64,
            value,
        });
    }
}

/// One fetch of `partition` from `offset` (by name, without waiting): `(error, high
/// watermark, records)`.
fn fetch(
    c: &mut Connection,
    partition: i32,
    offset: i64,
) -> anyhow::Result<(i16, i64, Vec<Record>)> {
    let request = fetch_request(TOPIC, partition, offset);
    let response = c.call(&request, FETCH_BY_NAME_VERSION_MAX)?;
    let answer = response
        .responses
        .first()
        .and_then(|topic| topic.partitions.first())
        .ok_or_else(|| anyhow::anyhow!("a fetch response without the partition"))?;
    let records = match answer.records.clone() {
        Some(bytes) => decode_batches(bytes)?,
        None => Vec::new(),
    };
    Ok((answer.error_code, answer.high_watermark, records))
}

/// A group member that joins, resumes from the committed offsets, reads every partition
/// and commits what it read, joining again whenever the broker goes away. It stops once
/// every producer has returned (`produced`) and it has read every partition to its end.
fn consumer(address: SocketAddr, produced: &AtomicBool, seen: &Shared) {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let never = AtomicBool::new(false);
    let mut member_id = String::new();
    'join: loop {
        let Some(mut c) = connect(address, &never) else {
            return;
        };
        let Ok(member) = Member::join(&mut c, GROUP, TOPIC, &partitions, &member_id) else {
            thread::sleep(RETRY_PAUSE);
            continue;
        };
        member.member_id().clone_into(&mut member_id);
        let Ok(committed) = member.committed(&mut c) else {
            continue;
        };
        {
            let mut seen = lock(seen);
            seen.joins += 1;
            for (&partition, &offset) in partitions.iter().zip(&committed) {
                let acknowledged = seen.committed.get(&partition).copied().unwrap_or(-1);
                if offset < acknowledged {
                    seen.violations.push(format!(
                        "partition {partition}: committed offset {offset} after a commit of \
                         {acknowledged} was acknowledged"
                    ));
                }
            }
        }
        let mut positions: Vec<i64> = committed.iter().map(|&offset| offset.max(0)).collect();
        loop {
            let stopping = produced.load(Ordering::Relaxed);
            let mut at_end = true;
            for (&partition, position) in partitions.iter().zip(positions.iter_mut()) {
                let Ok((error, high_watermark, records)) = fetch(&mut c, partition, *position)
                else {
                    continue 'join;
                };
                if error != 0 {
                    thread::sleep(RETRY_PAUSE);
                    continue 'join;
                }
                let mut seen = lock(seen);
                let from = *position;
                for record in records.into_iter().filter(|r| r.offset >= from) {
                    let value = record.value.map(|v| v.to_vec()).unwrap_or_default();
                    if let Some(earlier) = seen
                        .consumed
                        .insert((partition, record.offset), value.clone())
                    {
                        if earlier != value {
                            seen.violations.push(format!(
                                "partition {partition} offset {}: read {:?} after a restart, \
                                 {:?} before",
                                record.offset,
                                String::from_utf8_lossy(&value),
                                String::from_utf8_lossy(&earlier)
                            ));
                        }
                    }
                    *position = record.offset + 1;
                }
                at_end &= *position >= high_watermark;
            }
            let progressed = {
                let seen = lock(seen);
                partitions
                    .iter()
                    .zip(&positions)
                    .any(|(p, &position)| seen.committed.get(p) != Some(&position))
            };
            if !progressed && !stopping {
                thread::sleep(RETRY_PAUSE);
                continue;
            }
            if member.commit(&mut c, &positions).is_err() {
                continue 'join;
            }
            let mut seen = lock(seen);
            for (&partition, &position) in partitions.iter().zip(&positions) {
                seen.committed.insert(partition, position);
            }
            if stopping && at_end {
                return;
            }
        }
    }
}

fn seed() -> u64 {
    std::env::var("RINGLOG_CRASH_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        })
}

fn cycles() -> u32 {
    std::env::var("RINGLOG_CRASH_CYCLES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(CYCLES_DEFAULT)
}

/// Every record of `partition`, from offset 0 to the high watermark, checked dense.
fn read_partition(c: &mut Connection, partition: i32) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    loop {
        let next = values.len() as i64;
        let (error, high_watermark, records) =
            fetch(c, partition, next).expect("fetch after the last restart (and the CRC holds)");
        assert_eq!(error, 0, "fetch {TOPIC}-{partition} at {next}");
        for record in records.into_iter().filter(|r| r.offset >= next) {
            assert_eq!(
                record.offset,
                values.len() as i64,
                "{TOPIC}-{partition}: offsets are dense"
            );
            values.push(record.value.map(|v| v.to_vec()).unwrap_or_default());
        }
        if values.len() as i64 >= high_watermark {
            return values;
        }
    }
}

#[test]
fn nothing_acknowledged_is_lost_when_the_broker_is_killed_under_load() {
    let seed = seed();
    let cycles = cycles();
    eprintln!("crash test: RINGLOG_CRASH_SEED={seed} RINGLOG_CRASH_CYCLES={cycles}");
    let mut rng = TestRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut options = ServerOptions::default().with("--group-initial-rebalance-delay-ms", "0");
    options.listen = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(&data, &options);
    let address = server.address();
    assert_eq!(
        Connection::connect(address).create_topic(TOPIC, PARTITIONS),
        0,
        "create {TOPIC}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Shared = Arc::new(Mutex::new(Seen {
        acknowledged: vec![Vec::new(); IDEMPOTENT_PRODUCERS + PLAIN_PRODUCERS],
        ..Seen::default()
    }));
    let mut clients = Vec::new();
    for id in 0..IDEMPOTENT_PRODUCERS + PLAIN_PRODUCERS {
        let (stop, seen) = (stop.clone(), seen.clone());
        clients.push(thread::spawn(move || {
            if id < IDEMPOTENT_PRODUCERS {
                idempotent_producer(id, address, &stop, &seen);
            } else {
                plain_producer(id, address, &stop, &seen);
            }
        }));
    }
    // Set once every producer has returned, so the consumer's last round reads all.
    let produced = Arc::new(AtomicBool::new(false));
    let reader = {
        let (produced, seen) = (produced.clone(), seen.clone());
        thread::spawn(move || consumer(address, &produced, &seen))
    };

    for cycle in 0..cycles {
        let up = UP_MS_MAX / 5 + rng.below(UP_MS_MAX * 4 / 5);
        thread::sleep(Duration::from_millis(up));
        let acknowledged: usize = lock(&seen).acknowledged.iter().map(Vec::len).sum();
        eprintln!(
            "cycle {cycle}: kill -9 after {up} ms, {acknowledged} records acknowledged so far"
        );
        server.kill();
        thread::sleep(Duration::from_millis(rng.below(200)));
        server = Server::start(&data, &options);
    }
    thread::sleep(Duration::from_millis(UP_MS_MAX / 2));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a producer thread");
    }
    produced.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + CATCH_UP;
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "the consumer did not catch up");
        thread::sleep(RETRY_PAUSE);
    }
    reader.join().expect("the consumer thread");

    // The last start recovered the log after a kill; check it as a new server reads it.
    let mut c = Connection::connect(server.address());
    let log: Vec<Vec<Vec<u8>>> = (0..PARTITIONS).map(|p| read_partition(&mut c, p)).collect();
    check(seed, cycles, &log, &lock(&seen));
    server.stop_cleanly();
}

/// Checks the log read back after the last restart against what the clients saw.
fn check(seed: u64, cycles: u32, log: &[Vec<Vec<u8>>], seen: &Seen) {
    assert!(
        seen.violations.is_empty(),
        "seed {seed}: {:#?}",
        seen.violations
    );

    let mut where_stored: HashMap<&[u8], (i32, usize)> = HashMap::new();
    for (partition, values) in log.iter().enumerate() {
        for (offset, value) in values.iter().enumerate() {
            let earlier = where_stored.insert(value, (partition as i32, offset));
            assert!(
                earlier.is_none(),
                "seed {seed}: {} stored twice, at {earlier:?} and ({partition}, {offset})",
                String::from_utf8_lossy(value)
            );
        }
    }
    let mut acknowledged_total = 0;
    for (producer, records) in seen.acknowledged.iter().enumerate() {
        let mut last_offset: HashMap<i32, i64> = HashMap::new();
        for record in records {
            let stored = log[record.partition as usize].get(record.offset as usize);
            assert_eq!(
                stored.map(Vec::as_slice),
                Some(record.value.as_slice()),
                "seed {seed}: producer {producer}'s acknowledged record at {TOPIC}-{}@{}",
                record.partition,
                record.offset
            );
            let previous = last_offset.insert(record.partition, record.offset);
            assert!(
                previous < Some(record.offset),
                "seed {seed}: producer {producer}'s records out of order in partition {}",
                record.partition
            );
        }
        acknowledged_total += records.len();
    }
    for (producer, records) in seen.acknowledged.iter().enumerate() {
        assert!(
            !records.is_empty(),
            "seed {seed}: producer {producer} had nothing acknowledged"
        );
    }
    for ((partition, offset), value) in &seen.consumed {
        assert_eq!(
            log[*partition as usize].get(*offset as usize),
            Some(value),
            "seed {seed}: the consumer read {TOPIC}-{partition}@{offset} before a kill; it is gone"
        );
    }
    for (partition, values) in log.iter().enumerate() {
        assert_eq!(
            seen.committed.get(&(partition as i32)).copied(),
            Some(values.len() as i64),
            "seed {seed}: the consumer's last commit of partition {partition} is the log's end"
        );
    }
    assert!(
        seen.joins >= 2,
        "seed {seed}: the consumer joined {} times over {} starts",
        seen.joins,
        cycles + 1
    );
    eprintln!(
        "crash test: {acknowledged_total} acknowledged records over {cycles} kills, all present; \
         {} idempotent batches sent again after a lost answer, {} records read by the group",
        seen.resent,
        seen.consumed.len()
    );
}
