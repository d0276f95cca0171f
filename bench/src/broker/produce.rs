//! `ringlog-bench produce`: prebuilt record batches sent to a broker over Kafka Produce.
//!
//! Every request frame is encoded once before the timed region (one per partition and
//! distinct batch, plus the short last batch of a `--records` run); a send only patches
//! the correlation id. Each connection is one runtime task that keeps `--in-flight`
//! requests outstanding: it writes requests back to back until the window is full, then
//! reads one response (they come in order) and sends the next. Connection *c* owns the
//! partitions *p* with *p* mod C = *c* (or partition *c* mod P when there are more
//! connections than partitions) and cycles through them. Connections are spread over
//! `--client-threads` threads, each with its own `rt::block_on` runtime.
//!
//! A response with a Kafka error code counts as an acks error: the run stops (nothing is
//! resent) and fails naming the codes and partitions. A run with requests outstanding and
//! no record acknowledged for the stall timeout (see `acks`) fails too: a connection still
//! waiting for a response then shuts its socket down and names what the broker last
//! answered. With acks=0 nothing is answered, so nothing is outstanding either. The run's
//! budget (`--records` or `--duration`) is shared by all connections. A thread prints one
//! progress line per second to stderr.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::channel::mpsc;
use futures::StreamExt;
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringlog_engine::log::metrics::{
    HistogramSnapshot, FDATASYNC_LATENCY_NS, GROUP_COMMIT_APPENDS, GROUP_COMMIT_BYTES,
};
use ringlog_engine::rt::{self, TcpStream};
use serde::Serialize;

use super::acks::{kafka_label, AckWatch, STALL_TIMEOUT_MS_DEFAULT};
use super::rdkafka::{self, ClientArg};
use super::stamp::{Clock, StampSites};
use super::wire::{decode_response, encode_frame, set_correlation_id, FrameReader};
use super::{create_topic, version, Target, TargetArgs};
use crate::engine::batches::{parse_keys, Keys, PrebuiltBatches};
use crate::engine::latency::{Latencies, LatencySummary};
use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;
use crate::report::{mib_per_s, Report};
use crate::size::parse_size_bytes;

/// The last Produce version that names topics (v13 identifies them by id).
const PRODUCE_VERSION_MAX: i16 = 12;
/// How long the broker may take to acknowledge.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

/// `--acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum AcksArg {
    /// No response (fire and forget; no latency).
    #[value(name = "0")]
    #[serde(rename = "0")]
    None,
    /// The leader wrote it.
    #[value(name = "1")]
    #[serde(rename = "1")]
    Leader,
    /// Durable per the topic's flush policy.
    #[value(name = "all")]
    #[serde(rename = "all")]
    All,
}

impl AcksArg {
    fn wire(self) -> i16 {
        match self {
            AcksArg::None => 0,
            AcksArg::Leader => 1,
            AcksArg::All => -1,
        }
    }
}

/// Parameters of `produce`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The topic (created with `--partitions` if missing).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Value bytes per record.
    #[arg(long, default_value = "1KiB", value_parser = parse_size_bytes)]
    pub record_size: u64,
    /// Records to send (default 1,000,000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub records: Option<u64>,
    /// Seconds to send for.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Largest batch (one batch per request).
    #[arg(long, default_value = "64KiB", value_parser = parse_size_bytes)]
    pub batch_bytes: u64,
    /// How long a record may wait for its batch to fill (Kafka's linger.ms). The native
    /// client's records are always ready, so without `--rate` its batches are full; with
    /// `--rate` a partition's batch holds what arrives in this time (at most `--batch-bytes`).
    #[arg(long, default_value_t = 5.0)]
    pub linger_ms: f64,
    #[arg(long, value_enum, default_value_t = AcksArg::Leader)]
    pub acks: AcksArg,
    #[arg(long, default_value_t = 2)]
    pub connections: u32,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub in_flight: u32,
    /// Record keys: none, random, or N-distinct.
    #[arg(long, default_value = "none", value_parser = parse_keys)]
    pub keys: Keys,
    /// Records per second over all connections (default: as fast as acks come back).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Client threads (each one runtime); the broker shares the machine.
    #[arg(long, default_value_t = 1)]
    pub client_threads: u32,
    /// After producing, consume everything back (checks the count).
    #[arg(long)]
    pub then_consume: bool,
    /// The Kafka client that sends the load (and reads it back with `--then-consume`):
    /// `native`, or `rdkafka` (librdkafka, as a cross-check: one producer, so
    /// `--connections` and `--client-threads` do not apply; `--batch-bytes`, `--linger-ms`
    /// and `--in-flight` become its `batch.size`, `linger.ms` and
    /// `max.in.flight.requests.per.connection`).
    #[arg(long, value_enum, default_value_t = ClientArg::Native)]
    pub client: ClientArg,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
    /// How long the run waits with records outstanding and none acknowledged before it
    /// fails. Hidden: tests lower it; a benchmark has no reason to change it.
    #[arg(long, hide = true, default_value_t = STALL_TIMEOUT_MS_DEFAULT)]
    #[serde(skip)]
    pub stall_timeout_ms: u64,
    /// No progress line on stderr: for callers that show their own (`ringlog-tune`).
    #[arg(skip)]
    #[serde(skip)]
    pub quiet: bool,
}

impl ProduceArgs {
    /// `--stall-timeout-ms` as a duration.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }
}

/// What `produce` measured. MiB/s is 2^20 bytes per second, MB/s 10^6.
#[derive(Debug, Clone, Serialize)]
pub struct ProduceResults {
    pub produce_version: i16,
    pub records_per_batch: u64,
    pub batch_len_bytes: u64,
    pub requests: u64,
    pub records: u64,
    /// Request frame bytes acknowledged (record batches plus about 80 bytes of framing).
    pub bytes: u64,
    pub elapsed_s: f64,
    #[serde(rename = "records_per_sec")]
    pub records_per_s: f64,
    #[serde(rename = "mb_per_sec")]
    pub mb_per_s: f64,
    pub mib_per_s: f64,
    /// From a request's send to its response; empty for acks=0.
    #[serde(rename = "latency_us")]
    pub latency: LatencySummary,
    pub acks_errors: u64,
    pub client_threads: u32,
    /// `--embedded` only (the engine's process-wide counters): the broker's group commits
    /// over the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_commits: Option<GroupCommits>,
    /// `--then-consume`: reading everything back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then_consume: Option<super::consume::ConsumeResults>,
}

/// What the embedded broker's group commits looked like over a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GroupCommits {
    pub groups: u64,
    /// Produce requests' partition parts per group.
    pub appends_per_group: f64,
    pub mib_per_group: f64,
    /// fdatasyncs of group commits, and their mean latency.
    pub fdatasyncs: u64,
    pub fdatasync_mean_us: f64,
    /// The upper bound of the engine's latency bucket holding the 99th percentile of the
    /// run's fdatasyncs (the buckets are coarse: a bound, not an estimate); 0 without any.
    pub fdatasync_p99_bound_us: f64,
}

/// The engine's group-commit counters at one moment.
struct GroupCounters {
    appends: HistogramSnapshot,
    bytes: HistogramSnapshot,
    syncs: HistogramSnapshot,
}

impl GroupCounters {
    fn now() -> GroupCounters {
        GroupCounters {
            appends: GROUP_COMMIT_APPENDS.snapshot(),
            bytes: GROUP_COMMIT_BYTES.snapshot(),
            syncs: FDATASYNC_LATENCY_NS.snapshot(),
        }
    }

    /// What happened between `self` and `later`.
    fn until(&self, later: &GroupCounters) -> GroupCommits {
        let groups = later.appends.count - self.appends.count;
        let per_group = |sum: u64| sum as f64 / groups.max(1) as f64;
        let fdatasyncs = later.syncs.count - self.syncs.count;
        GroupCommits {
            groups,
            appends_per_group: per_group(later.appends.sum - self.appends.sum),
            mib_per_group: per_group(later.bytes.sum - self.bytes.sum) / f64::from(1u32 << 20),
            fdatasyncs,
            fdatasync_mean_us: (later.syncs.sum - self.syncs.sum) as f64
                / fdatasyncs.max(1) as f64
                / 1e3,
            fdatasync_p99_bound_us: quantile_bound_ns(&self.syncs, &later.syncs, 0.99) as f64 / 1e3,
        }
    }
}

/// The smallest bucket bound at or below which `quantile` of the observations between
/// `before` and `after` fall (the last bound when they are in the `+Inf` bucket; 0 when
/// there are none).
fn quantile_bound_ns(before: &HistogramSnapshot, after: &HistogramSnapshot, quantile: f64) -> u64 {
    let total = after.count - before.count;
    if total == 0 {
        return 0;
    }
    let wanted = (total as f64 * quantile).ceil() as u64;
    let cumulative = after.cumulative.iter().zip(&before.cumulative);
    for (bound, (after, before)) in after.bounds.iter().zip(cumulative) {
        if after - before >= wanted {
            return *bound;
        }
    }
    after.bounds.last().copied().unwrap_or(0)
}

/// The run's shared counters, read by the progress line.
#[derive(Default)]
struct Shared {
    records_left: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
    /// The acknowledgements and refusals, for the stall check and the run's error.
    acks: AckWatch,
    stop: AtomicBool,
    interval: Mutex<Option<Histogram<u64>>>,
}

/// What one connection sends: its partitions' frames, built before the timed region.
struct Plan {
    /// `frames[i]`: partition `i % partitions.len()`, batch `i / partitions.len()`.
    frames: Vec<Frame>,
    /// The short last batch's frame per partition, if the run has one.
    tail_frames: Vec<Frame>,
    partitions: usize,
    records_per_batch: u64,
    tail_records: u64,
}

/// One prebuilt request, and where to stamp it in an end-to-end run.
struct Frame {
    bytes: Vec<u8>,
    stamp: Option<StampSites>,
}

/// Runs `produce`, prints and writes its report; `--then-consume` reads it all back.
pub fn run(args: &ProduceArgs) -> Result<(), BenchError> {
    let target = Target::start(&args.target)?;
    let mut results = match args.client {
        ClientArg::Native => produce(args, &target)?,
        ClientArg::Rdkafka => rdkafka::produce(args, &target)?,
    };
    print_results(&results);
    if args.then_consume {
        let consumed =
            super::consume::consume_all(&target, &args.topic, results.records, args.client)?;
        super::consume::print_results(&consumed);
        results.then_consume = Some(consumed);
    }
    target.stop()?;
    let report = Report {
        probe: "produce",
        parameters: args,
        results,
        machine: MachineInfo::gather(Some(&args.target.data_parent)),
    };
    report.write_json(args.json.as_deref())
}

/// Creates the topic and produces the load to `target`; the count acknowledged is checked
/// against `--records`.
pub fn produce(args: &ProduceArgs, target: &Target) -> Result<ProduceResults, BenchError> {
    produce_stamped(args, target, None)
}

/// `produce`; with a `clock`, every record's value starts with the time its request was
/// sent on that clock (see `stamp`), for end-to-end latency.
pub fn produce_stamped(
    args: &ProduceArgs,
    target: &Target,
    clock: Option<Clock>,
) -> Result<ProduceResults, BenchError> {
    validate(args)?;
    let mut admin = target.admin()?;
    create_topic(&mut admin, &args.topic, args.partitions)?;
    let version = version::<ProduceRequest>(&admin, PRODUCE_VERSION_MAX)?;
    drop(admin);
    let records_total = match (args.records, args.duration) {
        (Some(records), _) => records,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1_000_000,
    };
    let batches = PrebuiltBatches::with_keys(
        args.record_size as usize,
        args.batch_bytes as usize,
        args.keys,
        lingered_batch_records(args),
    )?;
    let tail_records = if records_total == u64::MAX {
        0
    } else {
        records_total % batches.records_per_batch()
    };
    let tail = (tail_records > 0)
        .then(|| {
            PrebuiltBatches::with_keys(
                args.record_size as usize,
                args.batch_bytes as usize,
                args.keys,
                Some(tail_records),
            )
        })
        .transpose()?;
    let plans = (0..args.connections)
        .map(|connection| {
            plan(
                args,
                version,
                connection,
                &batches,
                tail.as_ref(),
                clock.is_some(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shared = Arc::new(Shared {
        records_left: AtomicU64::new(records_total),
        interval: Mutex::new(Some(new_histogram())),
        ..Shared::default()
    });
    let counters = target.is_embedded().then(GroupCounters::now);
    let (latencies, elapsed) = drive(args, target, version, plans, &shared, clock)?;
    let mut results = results(args, version, &batches, &shared, &latencies, elapsed);
    results.group_commits = counters.map(|before| before.until(&GroupCounters::now()));
    if let Some(error) = shared.acks.refused_error() {
        return Err(error);
    }
    if args.records.is_some() && results.records != records_total {
        return Err(BenchError::Broker(format!(
            "{} records acknowledged, {records_total} sent",
            results.records
        )));
    }
    Ok(results)
}

/// With `--rate`, the records a partition's batch gathers in `--linger-ms` (at least one;
/// `--batch-bytes` caps it further); without it, `None`: batches are filled.
fn lingered_batch_records(args: &ProduceArgs) -> Option<u64> {
    let per_partition = args.rate? / f64::from(args.partitions);
    Some(((per_partition * args.linger_ms / 1_000.0).floor() as u64).max(1))
}

/// Checks the arguments every client's `produce` shares (`--connections` and
/// `--client-threads` have defaults either client accepts).
pub fn validate(args: &ProduceArgs) -> Result<(), BenchError> {
    if args.partitions == 0
        || args.connections == 0
        || args.in_flight == 0
        || args.client_threads == 0
        || args.batch_bytes == 0
        || args.stall_timeout_ms == 0
    {
        return Err(BenchError::InvalidArguments(
            "--partitions, --connections, --in-flight, --client-threads, --batch-bytes and \
             --stall-timeout-ms must be positive"
                .into(),
        ));
    }
    let positive = |value: f64| value > 0.0; // false for NaN
    if args.rate.is_some_and(|rate| !positive(rate))
        || args.duration.is_some_and(|seconds| !positive(seconds))
        || args.linger_ms.is_nan()
        || args.linger_ms < 0.0
    {
        return Err(BenchError::InvalidArguments(
            "--rate and --duration must be positive, --linger-ms not negative".into(),
        ));
    }
    Ok(())
}

fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000_000, 3) {
        Ok(histogram) => histogram,
        Err(_) => unreachable!("constant histogram bounds are valid"),
    }
}

/// The partitions connection `connection` owns.
fn partitions_of(args: &ProduceArgs, connection: u32) -> Vec<i32> {
    if args.connections >= args.partitions {
        return vec![(connection % args.partitions) as i32];
    }
    (0..args.partitions)
        .filter(|partition| partition % args.connections == connection)
        .map(|partition| partition as i32)
        .collect()
}

fn plan(
    args: &ProduceArgs,
    version: i16,
    connection: u32,
    batches: &PrebuiltBatches,
    tail: Option<&PrebuiltBatches>,
    stamped: bool,
) -> Result<Plan, BenchError> {
    let partitions = partitions_of(args, connection);
    let frame = |partition: i32, batch: &[u8]| {
        let request = ProduceRequest::default()
            .with_acks(args.acks.wire())
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(args.topic.clone())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(bytes::Bytes::copy_from_slice(batch)))])]);
        let bytes = encode_frame(&request, version)?;
        let stamp = stamped
            .then(|| StampSites::locate(&bytes, batch))
            .transpose()?;
        Ok::<_, BenchError>(Frame { bytes, stamp })
    };
    let mut frames = Vec::new();
    for batch in 0..crate::engine::batches::DISTINCT_BATCHES {
        for &partition in &partitions {
            frames.push(frame(partition, batches.get(batch))?);
        }
    }
    let tail_frames = match tail {
        Some(tail) => partitions
            .iter()
            .map(|&p| frame(p, tail.get(0)))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Plan {
        frames,
        tail_frames,
        partitions: partitions.len(),
        records_per_batch: batches.records_per_batch(),
        tail_records: tail.map_or(0, PrebuiltBatches::records_per_batch),
    })
}

/// Runs every connection on `--client-threads` threads, with the progress line; returns
/// the merged latencies and the elapsed time.
fn drive(
    args: &ProduceArgs,
    target: &Target,
    version: i16,
    plans: Vec<Plan>,
    shared: &Arc<Shared>,
    clock: Option<Clock>,
) -> Result<(Latencies, Duration), BenchError> {
    let mut per_thread: Vec<Vec<Plan>> = (0..args.client_threads).map(|_| Vec::new()).collect();
    for (index, plan) in plans.into_iter().enumerate() {
        per_thread[index % args.client_threads as usize].push(plan);
    }
    let start = Instant::now();
    let progress = if args.quiet {
        None
    } else {
        let shared = Arc::clone(shared);
        let thread = std::thread::Builder::new()
            .name("produce-progress".into())
            .spawn(move || print_progress(&shared))
            .context(|| "starting the progress thread".into())?;
        Some(thread)
    };
    let threads = per_thread
        .into_iter()
        .enumerate()
        .map(|(index, plans)| {
            let connection = Connection::new(args, target, version, shared, start, clock);
            std::thread::Builder::new()
                .name(format!("produce-{index}"))
                .spawn(move || rt::block_on(run_thread(connection, plans)))
                .context(|| "starting a client thread".into())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut latencies = Latencies::new();
    let mut first_error = None;
    for thread in threads {
        let outcome = thread
            .join()
            .map_err(|_| BenchError::ThreadPanicked("produce client"))
            .and_then(|ran| ran?);
        match outcome {
            Ok(thread_latencies) => latencies.add(&thread_latencies),
            Err(error) => {
                shared.stop.store(true, Ordering::SeqCst);
                first_error.get_or_insert(error);
            }
        }
    }
    let elapsed = start.elapsed();
    shared.stop.store(true, Ordering::SeqCst);
    if let Some(progress) = progress {
        progress
            .join()
            .map_err(|_| BenchError::ThreadPanicked("produce progress"))?;
    }
    first_error.map_or(Ok((latencies, elapsed)), Err)
}

/// What every connection of a thread shares.
#[derive(Clone)]
struct Connection {
    address: std::net::SocketAddr,
    version: i16,
    in_flight: usize,
    acks_none: bool,
    deadline: Option<Instant>,
    stall_timeout: Duration,
    /// Records per second of one connection, with `--rate`.
    records_per_s: Option<f64>,
    /// End-to-end runs: the clock every record is stamped with when sent.
    clock: Option<Clock>,
    shared: Arc<Shared>,
}

impl Connection {
    fn new(
        args: &ProduceArgs,
        target: &Target,
        version: i16,
        shared: &Arc<Shared>,
        start: Instant,
        clock: Option<Clock>,
    ) -> Connection {
        Connection {
            address: target.address,
            version,
            in_flight: args.in_flight as usize,
            acks_none: args.acks == AcksArg::None,
            deadline: args
                .duration
                .map(|seconds| start + Duration::from_secs_f64(seconds)),
            stall_timeout: args.stall_timeout(),
            records_per_s: args.rate.map(|rate| rate / f64::from(args.connections)),
            clock,
            shared: Arc::clone(shared),
        }
    }
}

/// One client thread: its connections as tasks; returns their merged latencies.
async fn run_thread(connection: Connection, plans: Vec<Plan>) -> Result<Latencies, BenchError> {
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|plan| rt::spawn_local(produce_connection(connection.clone(), plan)))
        .collect();
    let mut latencies = Latencies::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(task_latencies)) => latencies.add(&task_latencies),
            Ok(Err(error)) => {
                connection.shared.stop.store(true, Ordering::SeqCst);
                first_error.get_or_insert(error);
            }
            Err(cancelled) => {
                first_error.get_or_insert(cancelled.into());
            }
        }
    }
    first_error.map_or(Ok(latencies), Err)
}

/// Takes up to one batch of records from the shared budget: `Some(true)` for a full
/// batch, `Some(false)` for the short tail, `None` when the budget is spent.
fn take_batch(connection: &Connection, plan: &Plan) -> Option<bool> {
    let shared = &connection.shared;
    if shared.stop.load(Ordering::Relaxed)
        || connection.deadline.is_some_and(|d| Instant::now() >= d)
    {
        return None;
    }
    let mut full = true;
    shared
        .records_left
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            let take = left.min(plan.records_per_batch);
            full = take == plan.records_per_batch;
            (take > 0).then_some(left - take)
        })
        .ok()
        .map(|_| full)
}

/// A request on the wire, waiting for its response.
struct Sent {
    correlation_id: i32,
    at: Instant,
    records: u64,
    frame_len: usize,
}

/// One connection: keeps up to `in_flight` requests outstanding until the budget is spent.
///
/// Sending and reading responses are two tasks, so that a response is read when it arrives
/// even while the sender waits for its next `--rate` slot (its latency is then the
/// broker's, not the schedule's). The sender hands each request to the reader through
/// `sent` (responses come in request order) and takes a window slot per request from
/// `slots`, which the reader returns per response.
async fn produce_connection(connection: Connection, plan: Plan) -> Result<Latencies, BenchError> {
    let stream = Rc::new(
        TcpStream::connect(connection.address)
            .await
            .context(|| format!("connecting to {}", connection.address))?,
    );
    stream.set_nodelay(true).context(|| "TCP_NODELAY".into())?;
    if connection.acks_none {
        send_requests(&stream, &connection, plan, None).await?;
        return Ok(Latencies::new());
    }
    let (sent_tx, sent_rx) = mpsc::unbounded();
    let (slot_tx, slot_rx) = mpsc::unbounded();
    for _ in 0..connection.in_flight {
        // The receiver is alive: it is in this scope.
        let _ = slot_tx.unbounded_send(());
    }
    let reader = rt::spawn_local(read_responses(
        Rc::clone(&stream),
        connection.clone(),
        sent_rx,
        slot_tx,
    ));
    let sending = send_requests(&stream, &connection, plan, Some((sent_tx, slot_rx))).await;
    // The sender's end of `sent` is gone now: the reader drains what is in flight and ends.
    let latencies = reader.await?;
    sending?;
    latencies
}

/// The sending half: takes batches from the budget, paces them (`--rate`), stamps them
/// (end-to-end runs) and writes them, one window slot each. `window` is `None` for acks=0,
/// whose requests get no response and are counted when written.
async fn send_requests(
    stream: &TcpStream,
    connection: &Connection,
    mut plan: Plan,
    mut window: Option<(mpsc::UnboundedSender<Sent>, mpsc::UnboundedReceiver<()>)>,
) -> Result<(), BenchError> {
    let mut correlation_id = 0i32;
    let mut next_frame = 0usize;
    let mut next_send_at = Instant::now();
    let send_interval = connection
        .records_per_s
        .map(|rate| Duration::from_secs_f64(plan.records_per_batch as f64 / rate));
    loop {
        if let Some((_, slots)) = window.as_mut() {
            if slots.next().await.is_none() {
                // The reader stopped (its error is the run's).
                return Ok(());
            }
        }
        let Some(full) = take_batch(connection, &plan) else {
            return Ok(());
        };
        if let Some(interval) = send_interval {
            rt::sleep_until(next_send_at).await;
            next_send_at += interval;
        }
        let (frames, index, records) = if full {
            next_frame += 1;
            let index = (next_frame - 1) % plan.frames.len();
            (&mut plan.frames, index, plan.records_per_batch)
        } else {
            let index = next_frame % plan.partitions;
            (&mut plan.tail_frames, index, plan.tail_records)
        };
        let frame = &mut frames[index];
        correlation_id = correlation_id.wrapping_add(1);
        let mut bytes = std::mem::take(&mut frame.bytes);
        set_correlation_id(&mut bytes, correlation_id);
        if let (Some(sites), Some(clock)) = (&frame.stamp, connection.clock) {
            sites.stamp(&mut bytes, clock)?;
        }
        let sent_at = Instant::now();
        let (result, bytes) = stream.send_all(bytes).await;
        let frame_len = bytes.len();
        frame.bytes = bytes;
        result.context(|| "sending a produce request".into())?;
        match &window {
            None => count(&connection.shared, records, frame_len),
            Some((sent, _)) => {
                let request = Sent {
                    correlation_id,
                    at: sent_at,
                    records,
                    frame_len,
                };
                if sent.unbounded_send(request).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The reading half: one response per request sent, in order; records an acknowledged
/// request's latency and returns its window slot.
async fn read_responses(
    stream: Rc<TcpStream>,
    connection: Connection,
    mut sent: mpsc::UnboundedReceiver<Sent>,
    slots: mpsc::UnboundedSender<()>,
) -> Result<Latencies, BenchError> {
    let mut reader = FrameReader::new();
    let mut latencies = Latencies::new();
    while let Some(request) = sent.next().await {
        let body = next_response(&stream, &mut reader, &connection, request.at).await?;
        let response =
            decode_response::<ProduceRequest>(body, connection.version, request.correlation_id)?;
        let latency = request.at.elapsed();
        if check_response(&connection.shared, &response) {
            latencies.record(latency);
            record_interval(&connection.shared, latency);
            count(&connection.shared, request.records, request.frame_len);
        }
        // The sender may have finished; its slots are no longer needed then.
        let _ = slots.unbounded_send(());
    }
    Ok(latencies)
}

/// The response to the request sent at `sent_at`, unless the run stalls first: no record
/// acknowledged on any connection for the stall timeout while this request waits. Then
/// the run stops, and the socket is shut down so that a send blocked on a broker that no
/// longer reads fails instead of waiting forever.
async fn next_response(
    stream: &TcpStream,
    reader: &mut FrameReader,
    connection: &Connection,
    sent_at: Instant,
) -> Result<bytes::Bytes, BenchError> {
    let acks = &connection.shared.acks;
    let mut frame = std::pin::pin!(reader.next_frame(stream));
    loop {
        let deadline = acks.stall_deadline(sent_at, connection.stall_timeout);
        let wait = deadline.saturating_duration_since(Instant::now());
        // The frame's future stays pinned across the waits: a timeout drops only the
        // borrow, so no received byte is lost when the deadline moved on meanwhile.
        if let Ok(body) = rt::timeout(wait, frame.as_mut()).await {
            return body;
        }
        if Instant::now() >= acks.stall_deadline(sent_at, connection.stall_timeout) {
            connection.shared.stop.store(true, Ordering::Relaxed);
            // The run fails with the stall whether or not the shutdown works.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Err(acks.stalled(connection.stall_timeout, ""));
        }
    }
}

fn count(shared: &Shared, records: u64, frame_len: usize) {
    shared.records.fetch_add(records, Ordering::Relaxed);
    shared.bytes.fetch_add(frame_len as u64, Ordering::Relaxed);
    shared.requests.fetch_add(1, Ordering::Relaxed);
}

fn record_interval(shared: &Shared, latency: Duration) {
    if let Ok(mut interval) = shared.interval.lock() {
        if let Some(histogram) = interval.as_mut() {
            let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            histogram.saturating_record(nanos.max(1));
        }
    }
}

/// Whether every partition of a response acknowledged its records. Each Kafka error code
/// is an acks error, noted with its partition; the run then stops (nothing is resent).
fn check_response(shared: &Shared, response: &kafka_protocol::messages::ProduceResponse) -> bool {
    let mut acknowledged = true;
    for partition in response
        .responses
        .iter()
        .flat_map(|topic| &topic.partition_responses)
    {
        if partition.error_code != 0 {
            if shared.acks.refusal_count() == 0 {
                eprintln!(
                    "produce: partition {} answered {}",
                    partition.index,
                    kafka_label(partition.error_code)
                );
            }
            shared
                .acks
                .refused_kafka(partition.index, partition.error_code);
            shared.stop.store(true, Ordering::Relaxed);
            acknowledged = false;
        }
    }
    if acknowledged {
        shared.acks.acknowledged();
    }
    acknowledged
}

/// Once a second until the run stops: records/s, MB/s and p99 of the last second.
fn print_progress(shared: &Shared) {
    let mut last = (Instant::now(), 0u64, 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.0.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let now = Instant::now();
        let records = shared.records.load(Ordering::Relaxed);
        let bytes = shared.bytes.load(Ordering::Relaxed);
        let seconds = now.duration_since(last.0).as_secs_f64();
        let p99_ms = shared.interval.lock().ok().and_then(|mut interval| {
            let histogram = interval.as_mut()?;
            let p99 =
                (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.99) as f64 / 1e6);
            histogram.reset();
            p99
        });
        eprintln!(
            "produce: {:>10.0} records/s {:>8.1} MB/s p99 {}",
            (records - last.1) as f64 / seconds,
            (bytes - last.2) as f64 / 1e6 / seconds,
            p99_ms.map_or_else(|| "-".into(), |ms| format!("{ms:.2} ms")),
        );
        last = (now, records, bytes);
    }
}

fn results(
    args: &ProduceArgs,
    version: i16,
    batches: &PrebuiltBatches,
    shared: &Shared,
    latencies: &Latencies,
    elapsed: Duration,
) -> ProduceResults {
    let elapsed_s = elapsed.as_secs_f64();
    let records = shared.records.load(Ordering::Relaxed);
    let bytes = shared.bytes.load(Ordering::Relaxed);
    ProduceResults {
        produce_version: version,
        records_per_batch: batches.records_per_batch(),
        batch_len_bytes: batches.batch_len_bytes() as u64,
        requests: shared.requests.load(Ordering::Relaxed),
        records,
        bytes,
        elapsed_s,
        records_per_s: records as f64 / elapsed_s,
        mb_per_s: bytes as f64 / 1e6 / elapsed_s,
        mib_per_s: mib_per_s(bytes, elapsed_s),
        latency: latencies.summary(),
        acks_errors: shared.acks.refusal_count(),
        client_threads: args.client_threads,
        group_commits: None,
        then_consume: None,
    }
}

pub fn print_results(results: &ProduceResults) {
    let latency = &results.latency;
    println!(
        "produce: {} records in {:.2} s: {:.0} records/s, {:.1} MB/s; latency p50 {:.0} / \
         p99 {:.0} / p99.9 {:.0} / max {:.0} us; {} acks errors",
        results.records,
        results.elapsed_s,
        results.records_per_s,
        results.mb_per_s,
        latency.p50_us,
        latency.p99_us,
        latency.p999_us,
        latency.max_us,
        results.acks_errors,
    );
    if let Some(groups) = &results.group_commits {
        println!(
            "produce: broker group commits {}: {:.1} appends, {:.2} MiB each; {} fdatasyncs, \
             mean {:.0} us",
            groups.groups,
            groups.appends_per_group,
            groups.mib_per_group,
            groups.fdatasyncs,
            groups.fdatasync_mean_us,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{produce, ProduceArgs};
    use crate::broker::blackhole::{broker_behind_blackhole, within};
    use crate::broker::consume::consume_all;
    use crate::broker::rdkafka::ClientArg;
    use crate::broker::{parse_args, Target};
    use crate::error::BenchError;

    /// Far beyond the stall timeout the tests set: a run still going then has hung.
    const RUN_LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn a_broker_that_never_answers_produce_stops_the_run_as_a_stall() {
        let parent = tempfile::tempdir().unwrap();
        let (target, _blackhole) = broker_behind_blackhole(parent.path()).unwrap();
        let address = target.address.to_string();
        let args: ProduceArgs = parse_args(&[
            "produce",
            "--bootstrap",
            &address,
            "--duration",
            "60",
            "--record-size",
            "100",
            "--partitions",
            "3",
            "--stall-timeout-ms",
            "500",
        ])
        .unwrap();
        let error = within(RUN_LIMIT, move || produce(&args, &target)).unwrap_err();
        assert!(
            matches!(error, BenchError::Stalled { waited, .. } if waited.as_millis() == 500),
            "{error}"
        );
        assert!(error.to_string().contains("no response arrived"), "{error}");
    }

    #[test]
    fn embedded_produce_then_consume_counts_every_record() {
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
            "--connections",
            "2",
        ])
        .unwrap();
        let target = Target::start(&args.target).unwrap();
        let produced = produce(&args, &target).unwrap();
        assert_eq!(produced.records, 2000);
        assert_eq!(produced.acks_errors, 0);
        let consumed = consume_all(&target, "bench", 2000, ClientArg::Native).unwrap();
        assert_eq!(consumed.records, 2000);
        target.stop().unwrap();
    }
}
