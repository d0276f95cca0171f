//! `--client rdkafka`: the `produce` and `consume` loads run through librdkafka (the
//! `rdkafka` crate, no async runtime), as a cross-check that the native client's figures
//! hold for the client people actually use. The results have the native client's shapes;
//! what librdkafka does not tell is `VERSION_NOT_KNOWN` (the Produce and Fetch versions it
//! negotiated) or 0 (the batches a consumer received).
//!
//! Produce: one `ThreadedProducer` (librdkafka keeps one connection per broker, so
//! `--connections` and `--client-threads` do not apply), fed by the calling thread from
//! one value buffer and one key buffer reused for every record (librdkafka copies each
//! record into its queue), its delivery reports served by the crate's polling thread. Not
//! a `BaseProducer` polled between sends: its `poll` spins through the last millisecond
//! of every timeout, and that spinning took a core from the broker. librdkafka builds the
//! batches (`--batch-bytes` is its `batch.size`, `--linger-ms` its `linger.ms`, and
//! `--in-flight` its `max.in.flight.requests.per.connection`) and picks the partitions
//! (its default partitioner: by key hash, or a sticky random partition without keys). It
//! is told not to retry (`message.send.max.retries=0`): a failed delivery counts as an
//! acks error and stops the run, naming its code and partition, as a Kafka error code does
//! for the native client. librdkafka still resends by itself, without counting a retry or
//! reporting anything, after the errors it takes for stale metadata (NOT_LEADER_OR_FOLLOWER
//! and the like; `rd_kafka_handle_Produce_error`), until `message.timeout.ms` (5 minutes).
//! So the run also stops when records are outstanding and none was delivered for the stall
//! timeout (see `acks`; checked every [`STALL_CHECK_INTERVAL`] while sending and while
//! flushing at the end). A record's latency runs from its first `send` to its delivery
//! report (the delivery opaque is the send time, in nanoseconds since the run's origin), so
//! unlike the native client's per-request latency it includes the time the record waited
//! in librdkafka's queue.
//!
//! Consume: one `BaseConsumer` `assign`ed every partition at explicit offsets listed
//! beforehand, polled until the expected count. librdkafka wants a `group.id` for
//! `assign`, but nothing is subscribed or committed: its group handle stays in its
//! coordinator query, and as the broker does not offer FindCoordinator it sends no group
//! request at all (librdkafka's `debug=cgrp,protocol` shows only ApiVersions, Metadata and
//! Fetch).
//!
//! Request and byte counts come from librdkafka's statistics (`statistics.interval.ms`):
//! bytes are what it sent (producer) or received (consumer) on its connections, like the
//! native client's request and batch bytes; they also drive the once-a-second progress
//! line. After the timed region the run waits for one more statistics report, so the
//! totals cover every request.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

use super::acks::{kafka_label, AckWatch};
use super::consume::{ConsumeArgs, ConsumeResults, FromArg};
use super::produce::{AcksArg, ProduceArgs, ProduceResults};
use super::{create_topic, list_offsets, Target};
use crate::engine::batches::{fill_pseudo_random, Keys};
use crate::engine::latency::Latencies;
use crate::error::BenchError;
use crate::report::mib_per_s;

/// `--client`: which Kafka client runs the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientArg {
    /// ringlog-bench's own client: prebuilt requests, pipelined on the runtime.
    Native,
    /// librdkafka, through the `rdkafka` crate.
    Rdkafka,
}

/// What a result field holds when librdkafka does not say (the Produce or Fetch version
/// it negotiated).
pub const VERSION_NOT_KNOWN: i16 = -1;
/// The group librdkafka requires for `assign`; never joined (see the module comment).
const GROUP_ID: &str = "ringlog-bench-assign-only";
const CLIENT_ID: &str = "ringlog-bench";
/// How often librdkafka reports statistics (and the progress line is printed).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(1);
/// librdkafka's largest `batch.num.messages`: batches are bounded by `batch.size` alone.
const BATCH_RECORDS_MAX: u32 = 1_000_000;
/// The producer queue holds this many in-flight windows (`--in-flight` × `--batch-bytes`):
/// one window in flight and one of full batches ready to go. A larger queue did not send
/// faster here; it only made each record wait longer in it (librdkafka's default queue is
/// 1 GiB, which would turn a record's latency into the time to drain that).
const QUEUE_WINDOWS: u64 = 2;
/// How long the sender sleeps when librdkafka's queue is full (a fraction of the time a
/// batch takes to be acknowledged, so the queue never runs dry).
const QUEUE_FULL_WAIT: Duration = Duration::from_micros(100);
/// How long the consumer waits for a record before it polls again.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How long librdkafka may take to deliver what is queued at the end (while it keeps
/// delivering), or to connect and learn the topic's metadata at the start.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the producer asks librdkafka whether records are outstanding (the count
/// takes a lock in librdkafka), to check for a stall.
const STALL_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// What a stalled librdkafka run adds to its error: the errors it may not have reported.
const STALL_NOTE: &str = " (librdkafka resends after some errors, such as \
    NOT_LEADER_OR_FOLLOWER, without reporting them)";
/// The code under which failed deliveries without an error code are counted (librdkafka's
/// codes are far from it).
const CODE_NOT_KNOWN: i32 = i32::MIN;
/// How long a consume run waits for records that do not come before it gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may hold a fetch that has nothing new (as the native client).
const FETCH_WAIT_MAX_MS: u32 = 100;

/// Which side a client is on: what its progress line and request count are called.
#[derive(Clone, Copy)]
enum Role {
    Produce,
    Consume,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Produce => "produce",
            Role::Consume => "consume",
        }
    }

    /// librdkafka's name for the requests that carry records.
    fn request(self) -> &'static str {
        match self {
            Role::Produce => "Produce",
            Role::Consume => "Fetch",
        }
    }
}

/// What librdkafka's statistics said, summed over the reports so far.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    reports: u64,
    /// Produce or Fetch requests sent (a cumulative counter).
    requests: u64,
    /// Bytes sent (producer) or received (consumer) over all of the client's connections
    /// (cumulative).
    bytes: u64,
    /// Record batches the producer built and their bytes (summed per-report windows).
    batches: u64,
    batch_bytes: u64,
}

/// The context of one run's client: what its callbacks (run by the thread that polls)
/// count, and the progress line.
struct Tally {
    role: Role,
    topic: String,
    /// The zero of delivery opaques.
    origin: Instant,
    /// Whether delivery reports carry a latency (not with acks=0).
    timed: bool,
    /// Records delivered (producer) or read (consumer).
    records: AtomicU64,
    /// The producer's deliveries and failed deliveries.
    acks: AckWatch,
    stop: AtomicBool,
    /// The whole run's latencies, and those since the last progress line.
    latencies: Mutex<(Latencies, Latencies)>,
    totals: Mutex<Totals>,
    /// While the load runs: when the last progress line was printed, and the records and
    /// bytes it had seen. `None` before and after (no line is printed then).
    progress: Mutex<Option<(Instant, u64, u64)>>,
}

impl Tally {
    fn new(role: Role, topic: &str, timed: bool) -> Tally {
        Tally {
            role,
            topic: topic.to_owned(),
            origin: Instant::now(),
            timed,
            records: AtomicU64::new(0),
            acks: AckWatch::new(),
            stop: AtomicBool::new(false),
            latencies: Mutex::new((Latencies::new(), Latencies::new())),
            totals: Mutex::new(Totals::default()),
            progress: Mutex::new(None),
        }
    }

    /// Nanoseconds since `origin`, as a delivery opaque.
    fn now_ns(&self) -> usize {
        usize::try_from(self.origin.elapsed().as_nanos()).unwrap_or(usize::MAX)
    }

    fn totals(&self) -> Totals {
        *lock(&self.totals)
    }

    /// Starts (`true`) or ends the progress lines: the timed region.
    fn set_running(&self, running: bool) {
        let start = (
            Instant::now(),
            self.records.load(Ordering::Relaxed),
            self.totals().bytes,
        );
        *lock(&self.progress) = running.then_some(start);
    }

    /// Once a second while the load runs: records/s and MB/s since the last line, and
    /// the p99 latency.
    fn print_progress(&self, bytes: u64) {
        let mut progress = lock(&self.progress);
        let Some(last) = progress.as_mut() else {
            return;
        };
        let now = Instant::now();
        let records = self.records.load(Ordering::Relaxed);
        let seconds = now.duration_since(last.0).as_secs_f64();
        let p99 = if self.timed {
            let summary = std::mem::take(&mut lock(&self.latencies).1).summary();
            match summary.count {
                0 => " p99 -".to_owned(),
                _ => format!(" p99 {:.2} ms", summary.p99_us / 1e3),
            }
        } else {
            String::new()
        };
        eprintln!(
            "{}: {:>10.0} records/s {:>8.1} MB/s{p99} (rdkafka)",
            self.role.label(),
            records.saturating_sub(last.1) as f64 / seconds,
            bytes.saturating_sub(last.2) as f64 / 1e6 / seconds,
        );
        *last = (now, records, bytes);
    }
}

/// A lock whose holder cannot leave the data half-updated: a poisoned one is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClientContext for Tally {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        eprintln!(
            "{}: librdkafka {level:?} {facility}: {message}",
            self.role.label()
        );
    }

    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("{}: librdkafka: {error}: {reason}", self.role.label());
    }

    fn stats(&self, statistics: Statistics) {
        let bytes = match self.role {
            Role::Produce => statistics.tx_bytes,
            Role::Consume => statistics.rx_bytes,
        };
        let bytes = u64::try_from(bytes).unwrap_or(0);
        {
            let mut totals = lock(&self.totals);
            totals.reports += 1;
            totals.bytes = bytes;
            totals.requests = statistics
                .brokers
                .values()
                .filter_map(|broker| broker.req.get(self.role.request()))
                .map(|&count| u64::try_from(count).unwrap_or(0))
                .sum();
            if let Some(topic) = statistics.topics.get(&self.topic) {
                totals.batches += u64::try_from(topic.batchcnt.cnt).unwrap_or(0);
                totals.batch_bytes += u64::try_from(topic.batchsize.sum).unwrap_or(0);
            }
        }
        self.print_progress(bytes);
    }
}

impl ProducerContext for Tally {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at_ns: usize) {
        match result {
            Ok(_) => {
                self.records.fetch_add(1, Ordering::Relaxed);
                self.acks.acknowledged();
                if self.timed {
                    let latency =
                        Duration::from_nanos(self.now_ns().saturating_sub(sent_at_ns) as u64);
                    let mut latencies = lock(&self.latencies);
                    latencies.0.record(latency);
                    latencies.1.record(latency);
                }
            }
            Err((error, message)) => {
                if self.acks.refusal_count() == 0 {
                    eprintln!(
                        "produce: a record for partition {} failed: {error}",
                        message.partition()
                    );
                }
                let (code, label) = error_code(error);
                self.acks.refused(message.partition(), code, || label);
                self.stop.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl ConsumerContext for Tally {}

/// A failed delivery's code and its label: a broker's code (0 and up) as Kafka names it,
/// one of librdkafka's own (negative: a timeout, a purge) as librdkafka does; an error
/// without a code (no delivery report carries one) by its message, under a code of its own.
fn error_code(error: &KafkaError) -> (i32, String) {
    let Some(code) = error.rdkafka_error_code() else {
        return (CODE_NOT_KNOWN, format!("librdkafka error \"{error}\""));
    };
    let number = code as i32;
    match i16::try_from(number) {
        Ok(kafka) if kafka >= 0 => (number, kafka_label(kafka)),
        _ => (number, format!("librdkafka {code:?} ({number})")),
    }
}

/// A librdkafka failure, with what was being done. The bench's error type has no variant
/// of its own for a client library; librdkafka's failures are the client's I/O, and an
/// `io::Error` keeps the `KafkaError` (and its cause) in the chain.
fn kafka(context: &str) -> impl FnOnce(KafkaError) -> BenchError + '_ {
    move |error| {
        BenchError::io(
            format!("librdkafka: {context}"),
            std::io::Error::other(error),
        )
    }
}

/// Calls `poll` (which polls the client) until librdkafka has sent one more statistics
/// report, so that the totals cover everything done before the call.
fn await_statistics(tally: &Tally, mut poll: impl FnMut()) {
    let reports = tally.totals().reports;
    let deadline = Instant::now() + 3 * STATISTICS_INTERVAL;
    while tally.totals().reports == reports && Instant::now() < deadline {
        poll();
    }
}

/// Produces `args`' load to `target` through librdkafka; the count delivered is checked
/// against `--records`.
pub fn produce(args: &ProduceArgs, target: &Target) -> Result<ProduceResults, BenchError> {
    super::produce::validate(args)?;
    let mut admin = target.admin()?;
    create_topic(&mut admin, &args.topic, args.partitions)?;
    drop(admin);
    let records_total = match (args.records, args.duration) {
        (Some(records), _) => records,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1_000_000,
    };
    let tally = Tally::new(Role::Produce, &args.topic, args.acks != AcksArg::None);
    let producer: ThreadedProducer<Tally> = producer_config(args, target)
        .create_with_context(tally)
        .map_err(kafka("creating the producer"))?;
    // Connecting and learning the topic's leaders are not part of the load.
    producer
        .client()
        .fetch_metadata(Some(&args.topic), METADATA_TIMEOUT)
        .map_err(kafka("fetching the topic's metadata"))?;
    producer.context().set_running(true);
    let start = Instant::now();
    let mut stall = StallCheck::new(args.stall_timeout(), start);
    send_load(&producer, args, records_total, start, &mut stall)?;
    flush(&producer, &mut stall)?;
    let elapsed = start.elapsed();
    producer.context().set_running(false);
    await_statistics(producer.context(), || std::thread::sleep(QUEUE_FULL_WAIT));
    let results = produce_results(producer.context(), elapsed);
    if let Some(error) = producer.context().acks.refused_error() {
        return Err(error);
    }
    if args.records.is_some() && results.records != records_total {
        return Err(BenchError::Broker(format!(
            "{} records delivered, {records_total} sent",
            results.records
        )));
    }
    Ok(results)
}

/// What the native client's checks say about the arguments librdkafka uses.
/// The settings every librdkafka client of the bench has.
fn base_config(target: &Target) -> ClientConfig {
    let mut config = ClientConfig::new();
    // The crate takes its log level from the `log` crate's, which the bench does not set
    // up (so: errors only); librdkafka's warnings are worth seeing.
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
        .set("bootstrap.servers", target.address.to_string())
        .set("client.id", CLIENT_ID)
        .set(
            "statistics.interval.ms",
            STATISTICS_INTERVAL.as_millis().to_string(),
        );
    config
}

fn producer_config(args: &ProduceArgs, target: &Target) -> ClientConfig {
    let acks = match args.acks {
        AcksArg::None => "0",
        AcksArg::Leader => "1",
        AcksArg::All => "all",
    };
    let window_bytes = args.batch_bytes * u64::from(args.in_flight);
    let queue_kbytes = (window_bytes * QUEUE_WINDOWS)
        .div_ceil(1024)
        .min(i32::MAX as u64);
    let mut config = base_config(target);
    config
        .set("acks", acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_bytes.to_string())
        .set("batch.num.messages", BATCH_RECORDS_MAX.to_string())
        .set(
            "max.in.flight.requests.per.connection",
            args.in_flight.to_string(),
        )
        .set("compression.type", "none")
        .set("enable.idempotence", "false")
        // A failed delivery is an acks error, not something to hide behind a retry.
        .set("message.send.max.retries", "0")
        .set("queue.buffering.max.kbytes", queue_kbytes.to_string())
        // The byte bound alone governs (0: no count bound), whatever the record size.
        .set("queue.buffering.max.messages", "0");
    config
}

/// Watches a producer for a stall: records outstanding in librdkafka and none delivered
/// for `timeout`.
struct StallCheck {
    timeout: Duration,
    /// When librdkafka last had nothing outstanding (or the run started).
    outstanding_since: Instant,
    next_check: Instant,
}

impl StallCheck {
    fn new(timeout: Duration, start: Instant) -> StallCheck {
        StallCheck {
            timeout,
            outstanding_since: start,
            next_check: start,
        }
    }

    /// Fails with the stall error once the producer stalled; asks librdkafka at most once
    /// per [`STALL_CHECK_INTERVAL`].
    fn check(&mut self, producer: &ThreadedProducer<Tally>) -> Result<(), BenchError> {
        let now = Instant::now();
        if now < self.next_check {
            return Ok(());
        }
        self.next_check = now + STALL_CHECK_INTERVAL;
        if producer.in_flight_count() == 0 {
            self.outstanding_since = now;
            return Ok(());
        }
        let acks = &producer.context().acks;
        if now >= acks.stall_deadline(self.outstanding_since, self.timeout) {
            return Err(acks.stalled(self.timeout, STALL_NOTE));
        }
        Ok(())
    }
}

/// Waits (at most [`FLUSH_TIMEOUT`]) until librdkafka delivered or failed every record,
/// unless the producer stalls first.
fn flush(producer: &ThreadedProducer<Tally>, stall: &mut StallCheck) -> Result<(), BenchError> {
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    loop {
        match producer.flush(STALL_CHECK_INTERVAL) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline =>
            {
                stall.check(producer)?;
            }
            Err(error) => return Err(kafka("flushing the producer")(error)),
        }
    }
}

/// Queues the load's records until the budget, the deadline or an acks error stops it,
/// or the producer stalls.
fn send_load(
    producer: &ThreadedProducer<Tally>,
    args: &ProduceArgs,
    records_total: u64,
    start: Instant,
    stall: &mut StallCheck,
) -> Result<(), BenchError> {
    let tally = producer.context();
    let mut value = vec![0u8; args.record_size as usize];
    fill_pseudo_random(&mut value, &mut 0x9E37_79B9_7F4A_7C15);
    let mut keys = KeyWriter::new(args.keys);
    let deadline = args
        .duration
        .map(|seconds| start + Duration::from_secs_f64(seconds));
    let mut sent = 0u64;
    while sent < records_total && !tally.stop.load(Ordering::Relaxed) {
        let mut now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            break;
        }
        if let Some(rate) = args.rate {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if now < due {
                std::thread::sleep(due - now);
                now = Instant::now();
            }
        }
        let sent_at_ns = usize::try_from(now.duration_since(tally.origin).as_nanos());
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&args.topic, sent_at_ns.unwrap_or(usize::MAX))
                .payload(value.as_slice());
        if let Some(key) = keys.next() {
            record = record.key(key);
        }
        enqueue(producer, record, stall)?;
        sent += 1;
    }
    Ok(())
}

/// Hands `record` to librdkafka, waiting while its queue is full (unless it stalls).
fn enqueue(
    producer: &ThreadedProducer<Tally>,
    mut record: BaseRecord<'_, [u8], [u8], usize>,
    stall: &mut StallCheck,
) -> Result<(), BenchError> {
    loop {
        stall.check(producer)?;
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                std::thread::sleep(QUEUE_FULL_WAIT);
            }
            Err((error, _)) => return Err(kafka("queueing a record")(error)),
        }
    }
}

fn produce_results(tally: &Tally, elapsed: Duration) -> ProduceResults {
    let totals = tally.totals();
    let records = tally.records.load(Ordering::Relaxed);
    let elapsed_s = elapsed.as_secs_f64();
    ProduceResults {
        produce_version: VERSION_NOT_KNOWN,
        records_per_batch: records.checked_div(totals.batches).unwrap_or(0),
        batch_len_bytes: totals.batch_bytes.checked_div(totals.batches).unwrap_or(0),
        requests: totals.requests,
        records,
        bytes: totals.bytes,
        elapsed_s,
        records_per_s: records as f64 / elapsed_s,
        mb_per_s: totals.bytes as f64 / 1e6 / elapsed_s,
        mib_per_s: mib_per_s(totals.bytes, elapsed_s),
        latency: lock(&tally.latencies).0.summary(),
        acks_errors: tally.acks.refusal_count(),
        client_threads: 1,
        group_commits: None,
        then_consume: None,
    }
}

/// `--keys`, written into one reused buffer: no key, 16 pseudo-random bytes, or
/// `key-{i mod N}` (as the native client's batches have them).
struct KeyWriter {
    keys: Keys,
    buffer: [u8; 32],
    seed: u64,
    index: u64,
}

impl KeyWriter {
    fn new(keys: Keys) -> KeyWriter {
        KeyWriter {
            keys,
            buffer: [0; 32],
            seed: 0x2545_F491_4F6C_DD1D,
            index: 0,
        }
    }

    fn next(&mut self) -> Option<&[u8]> {
        match self.keys {
            Keys::None => None,
            Keys::Random => {
                fill_pseudo_random(&mut self.buffer[..16], &mut self.seed);
                Some(&self.buffer[..16])
            }
            Keys::Distinct(count) => {
                let mut rest = &mut self.buffer[..];
                let written = write!(rest, "key-{}", self.index % count);
                assert!(written.is_ok(), "`key-` and a u64 fit 32 bytes");
                let len = 32 - rest.len();
                self.index += 1;
                Some(&self.buffer[..len])
            }
        }
    }
}

/// Reads the topic on `target` as `args` say, through librdkafka, and checks the count.
pub fn consume(target: &Target, args: &ConsumeArgs) -> Result<ConsumeResults, BenchError> {
    let tally = Tally::new(Role::Consume, &args.topic, false);
    let consumer: BaseConsumer<Tally> = consumer_config(args, target)
        .create_with_context(tally)
        .map_err(kafka("creating the consumer"))?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), METADATA_TIMEOUT)
        .map_err(kafka("fetching the topic's metadata"))?;
    let partitions = metadata
        .topics()
        .first()
        .and_then(|topic| u32::try_from(topic.partitions().len()).ok())
        .filter(|&count| count > 0)
        .ok_or_else(|| BenchError::Broker(format!("topic {} has no partitions", args.topic)))?;
    let mut admin = target.admin()?;
    let ends = list_offsets(&mut admin, &args.topic, partitions, false)?;
    let starts = match args.from {
        FromArg::Earliest => list_offsets(&mut admin, &args.topic, partitions, true)?,
        FromArg::Latest => ends.clone(),
    };
    drop(admin);
    let mut assignment = TopicPartitionList::new();
    for (partition, &offset) in starts.iter().enumerate() {
        assignment
            .add_partition_offset(&args.topic, partition as i32, Offset::Offset(offset))
            .map_err(kafka("listing the assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(kafka("assigning the partitions"))?;
    let available: u64 = starts.iter().zip(&ends).map(|(s, e)| e.abs_diff(*s)).sum();
    let expected = args.expect.unwrap_or(available);
    if expected < available {
        // The consumer stops at the count, so more records must be caught here.
        return Err(BenchError::Broker(format!(
            "the topic holds {available} records past the start, expected {expected}"
        )));
    }
    // Without --expect, records written after the ends were listed are not the run's.
    let ends = args.expect.is_none().then_some(ends.as_slice());
    consumer.context().set_running(true);
    let start = Instant::now();
    let records = read_until(&consumer, expected, ends)?;
    let elapsed_s = start.elapsed().as_secs_f64();
    consumer.context().set_running(false);
    // Whatever the consumer still reads while it waits is past the run and not counted.
    await_statistics(consumer.context(), || drop(consumer.poll(POLL_WAIT)));
    let bytes = consumer.context().totals().bytes;
    Ok(ConsumeResults {
        fetch_version: VERSION_NOT_KNOWN,
        partitions,
        fetches: consumer.context().totals().requests,
        records,
        // librdkafka hands out records, not the batches they came in.
        batches: 0,
        bytes,
        elapsed_s,
        records_per_s: records as f64 / elapsed_s,
        mb_per_s: bytes as f64 / 1e6 / elapsed_s,
        mib_per_s: mib_per_s(bytes, elapsed_s),
        end_to_end_latency: None,
    })
}

fn consumer_config(args: &ConsumeArgs, target: &Target) -> ClientConfig {
    let mut config = base_config(target);
    config
        .set("group.id", GROUP_ID)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Offsets are explicit; one that is out of range fails instead of skipping.
        .set("auto.offset.reset", "error")
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        .set(
            "fetch.max.bytes",
            clamp_i32(args.fetch_max_bytes).to_string(),
        )
        .set(
            "max.partition.fetch.bytes",
            clamp_i32(args.partition_max_bytes).to_string(),
        );
    config
}

fn clamp_i32(bytes: u64) -> u64 {
    bytes.min(i32::MAX as u64)
}

/// Polls until `expected` records were read (with `ends`, only those before each
/// partition's end count); returns the count. Fails after `IDLE_TIMEOUT` without records.
fn read_until(
    consumer: &BaseConsumer<Tally>,
    expected: u64,
    ends: Option<&[i64]>,
) -> Result<u64, BenchError> {
    let tally = consumer.context();
    let mut records = 0u64;
    let mut idle_since = None;
    while records < expected {
        let Some(polled) = consumer.poll(POLL_WAIT) else {
            let idle_since = *idle_since.get_or_insert_with(Instant::now);
            if idle_since.elapsed() > IDLE_TIMEOUT {
                return Err(BenchError::Broker(format!(
                    "no new records for {IDLE_TIMEOUT:?} after {records} of {expected} records"
                )));
            }
            continue;
        };
        let message = polled.map_err(kafka("reading a record"))?;
        idle_since = None;
        let counted = ends.is_none_or(|ends| {
            let end = usize::try_from(message.partition())
                .ok()
                .and_then(|p| ends.get(p));
            end.is_some_and(|&end| message.offset() < end)
        });
        if counted {
            records += 1;
            tally.records.store(records, Ordering::Relaxed);
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{produce, ClientArg, KeyWriter};
    use crate::broker::blackhole::{broker_behind_blackhole, within};
    use crate::broker::consume::consume_all;
    use crate::broker::produce::ProduceArgs;
    use crate::broker::{list_offsets, parse_args, Target};
    use crate::engine::batches::Keys;
    use crate::error::BenchError;

    /// Far beyond the stall timeout the tests set: a run still going then has hung.
    const RUN_LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn a_broker_that_never_answers_produce_stops_the_rdkafka_run_as_a_stall() {
        let parent = tempfile::tempdir().unwrap();
        let (target, _blackhole) = broker_behind_blackhole(parent.path()).unwrap();
        let address = target.address.to_string();
        let args: ProduceArgs = parse_args(&[
            "produce",
            "--bootstrap",
            &address,
            "--records",
            "1000",
            "--record-size",
            "100",
            "--linger-ms",
            "0",
            "--client",
            "rdkafka",
            "--stall-timeout-ms",
            "500",
        ])
        .unwrap();
        let error = within(RUN_LIMIT, move || produce(&args, &target)).unwrap_err();
        assert!(matches!(error, BenchError::Stalled { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("no response arrived"), "{message}");
        assert!(message.contains("librdkafka resends"), "{message}");
    }

    #[test]
    fn embedded_rdkafka_produce_then_consume_counts_every_record() {
        let parent = tempfile::tempdir().unwrap();
        let parent = parent.path().to_str().unwrap();
        let args: ProduceArgs = parse_args(&[
            "produce",
            "--embedded",
            "--data-parent",
            parent,
            "--records",
            "2000",
            "--record-size",
            "100",
            "--partitions",
            "3",
            "--keys",
            "100",
            "--client",
            "rdkafka",
        ])
        .unwrap();
        let target = Target::start(&args.target).unwrap();
        let produced = produce(&args, &target).unwrap();
        assert_eq!(produced.records, 2000);
        assert_eq!(produced.acks_errors, 0);
        assert_eq!(produced.latency.count, 2000);
        // What the broker holds, apart from what librdkafka's delivery reports say: every
        // record once, spread by key over every partition.
        let mut admin = target.admin().unwrap();
        let ends = list_offsets(&mut admin, "bench", 3, false).unwrap();
        drop(admin);
        assert_eq!(ends.iter().sum::<i64>(), 2000, "{ends:?}");
        assert!(ends.iter().all(|&end| end > 0), "{ends:?}");
        let consumed = consume_all(&target, "bench", 2000, ClientArg::Rdkafka).unwrap();
        assert_eq!(consumed.records, 2000);
        assert_eq!(consumed.partitions, 3);
        target.stop().unwrap();
    }

    #[test]
    fn distinct_keys_cycle_and_random_keys_change() {
        let mut keys = KeyWriter::new(Keys::Distinct(3));
        let written: Vec<Vec<u8>> = (0..4).map(|_| keys.next().unwrap().to_vec()).collect();
        assert_eq!(written, [&b"key-0"[..], b"key-1", b"key-2", b"key-0"]);
        let mut keys = KeyWriter::new(Keys::Random);
        let first = keys.next().unwrap().to_vec();
        assert_eq!(first.len(), 16);
        assert_ne!(keys.next().unwrap(), first.as_slice());
        assert!(KeyWriter::new(Keys::None).next().is_none());
    }
}
