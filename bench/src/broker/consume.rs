//! `ringlog-bench consume`: every partition of a topic read back over Kafka Fetch.
//!
//! Each connection is one runtime task on one `rt::block_on` thread, with one Fetch in
//! flight for all the partitions it owns (partition *p* goes to connection *p* mod C),
//! following each partition's offset: the records of a response are counted by walking
//! the batch headers (framing checked: length, magic; no CRC), a cut-short last batch is
//! fetched again. Fetch is spoken at the highest version both sides know up to v12 (the
//! last that names topics). The run ends when `--expect` records were read, or, without
//! it, when every partition reached the end it had when the run started; reading more or
//! fewer than expected (nothing new for `IDLE_TIMEOUT`) fails the command.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringlog_engine::rt::{self, TcpStream};
use ringlog_server::admin::AdminClient;
use serde::Serialize;

use super::rdkafka::ClientArg;
use super::stamp::{read_stamps, Clock};
use super::wire::{decode_response, encode_frame, set_correlation_id, FrameReader};
use super::{list_offsets, version, Target, TargetArgs};
use crate::engine::latency::{Latencies, LatencySummary};
use crate::engine::read::walk_batches;
use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;
use crate::report::{mib_per_s, Report};
use crate::size::parse_size_bytes;

/// The last Fetch version that names topics (v13 identifies them by id).
const FETCH_VERSION_MAX: i16 = 12;
/// How long the broker may hold a fetch that has nothing new.
const FETCH_MAX_WAIT_MS: i32 = 100;
/// How long the run waits for records that do not come before it gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FromArg {
    Earliest,
    Latest,
}

/// Parameters of `consume`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, value_enum, default_value_t = FromArg::Earliest)]
    pub from: FromArg,
    /// `max_bytes` of each Fetch (Kafka's fetch.max.bytes).
    #[arg(long, default_value = "50MiB", value_parser = parse_size_bytes)]
    pub fetch_max_bytes: u64,
    /// `partition_max_bytes` of each partition in a Fetch.
    #[arg(long, default_value = "8MiB", value_parser = parse_size_bytes)]
    pub partition_max_bytes: u64,
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Records to read; more or fewer fails the command.
    #[arg(long)]
    pub expect: Option<u64>,
    /// The Kafka client that reads: `native`, or `rdkafka` (librdkafka, as a cross-check:
    /// one consumer assigned every partition, so `--connections` does not apply).
    #[arg(long, value_enum, default_value_t = ClientArg::Native)]
    pub client: ClientArg,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
}

/// What `consume` measured. MiB/s is 2^20 bytes per second, MB/s 10^6.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeResults {
    pub fetch_version: i16,
    pub partitions: u32,
    pub fetches: u64,
    pub records: u64,
    pub batches: u64,
    /// Whole record batches' bytes.
    pub bytes: u64,
    pub elapsed_s: f64,
    #[serde(rename = "records_per_sec")]
    pub records_per_s: f64,
    #[serde(rename = "mb_per_sec")]
    pub mb_per_s: f64,
    pub mib_per_s: f64,
    /// End-to-end runs: from each record's send to its fetch's arrival.
    #[serde(
        rename = "end_to_end_latency_us",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_to_end_latency: Option<LatencySummary>,
}

/// When a run's reading is done.
#[derive(Debug, Clone)]
pub enum Until {
    /// This many records read, in all.
    Count(u64),
    /// Every partition at the end it had when the run started.
    Ends,
    /// As many records as a producer running beside the reader publishes here when it
    /// finishes (`u64::MAX` until then).
    Published(Arc<AtomicU64>),
}

/// How one run reads.
struct Plan {
    address: std::net::SocketAddr,
    topic: String,
    version: i16,
    fetch_max_bytes: i32,
    partition_max_bytes: i32,
    until: Until,
    /// End-to-end runs: the clock the records' stamps were taken on.
    clock: Option<Clock>,
}

/// One connection's partitions: `(partition, next offset, end offset at the start)`.
type Cursors = Vec<(i32, i64, i64)>;

/// What the connections count together (one thread, so `Cell`s).
#[derive(Default)]
struct Tally {
    records: Cell<u64>,
    batches: Cell<u64>,
    bytes: Cell<u64>,
    fetches: Cell<u64>,
    /// End-to-end runs: per record, from its stamp to its fetch's arrival; the whole run
    /// and the current second (for the progress line).
    latencies: RefCell<Latencies>,
    interval: RefCell<Latencies>,
}

/// Runs `consume`, prints and writes its report.
pub fn run(args: &ConsumeArgs) -> Result<(), BenchError> {
    if args.connections == 0 {
        return Err(BenchError::InvalidArguments(
            "--connections must be positive".into(),
        ));
    }
    let target = Target::start(&args.target)?;
    let results = consume_with(&target, args)?;
    print_results(&results);
    target.stop()?;
    let report = Report {
        probe: "consume",
        parameters: args,
        results,
        // The disk is known only when the broker runs here.
        machine: MachineInfo::gather(
            args.target
                .embedded
                .then_some(args.target.data_parent.as_path()),
        ),
    };
    report.write_json(args.json.as_deref())
}

/// Reads `expect` records of every partition of `topic` from the earliest offsets with
/// `client`, one connection and `consume`'s default fetch sizes (what `produce
/// --then-consume` does).
pub fn consume_all(
    target: &Target,
    topic: &str,
    expect: u64,
    client: ClientArg,
) -> Result<ConsumeResults, BenchError> {
    let address = target.address.to_string();
    let expect = expect.to_string();
    let client = client
        .to_possible_value()
        .map(|value| value.get_name().to_owned())
        .unwrap_or_default();
    let args: ConsumeArgs = super::parse_args(&[
        "consume",
        "--bootstrap",
        &address,
        "--topic",
        topic,
        "--expect",
        &expect,
        "--client",
        &client,
    ])?;
    consume_with(target, &args)
}

/// Reads as `args` say with the client `args.client` names.
pub fn consume_with(target: &Target, args: &ConsumeArgs) -> Result<ConsumeResults, BenchError> {
    match args.client {
        ClientArg::Native => consume(target, args),
        ClientArg::Rdkafka => super::rdkafka::consume(target, args),
    }
}

/// The Fetch version to speak: the highest both sides know up to the last that names
/// topics.
pub fn fetch_version(admin: &AdminClient) -> Result<i16, BenchError> {
    version::<FetchRequest>(admin, FETCH_VERSION_MAX)
}

/// Reads the topic on `target` as `args` say and checks the count.
pub fn consume(target: &Target, args: &ConsumeArgs) -> Result<ConsumeResults, BenchError> {
    let mut admin = target.admin()?;
    let fetch_version = fetch_version(&admin)?;
    let partitions = partition_count(&mut admin, &args.topic)?;
    let ends = list_offsets(&mut admin, &args.topic, partitions, false)?;
    let starts = match args.from {
        FromArg::Earliest => list_offsets(&mut admin, &args.topic, partitions, true)?,
        FromArg::Latest => ends.clone(),
    };
    drop(admin);
    let until = match args.expect {
        Some(expect) => Until::Count(expect),
        None => Until::Ends,
    };
    let expected: u64 = args
        .expect
        .unwrap_or_else(|| starts.iter().zip(&ends).map(|(s, e)| e.abs_diff(*s)).sum());
    let results = read(
        target.address,
        fetch_version,
        args,
        &starts,
        &ends,
        until,
        None,
    )?;
    if results.records != expected {
        return Err(BenchError::Broker(format!(
            "read {} records, expected {expected}",
            results.records
        )));
    }
    Ok(results)
}

/// Reads every partition of `args.topic` from `starts` until `until`, with `args`'
/// connections and fetch sizes; with a `clock`, also the records' end-to-end latencies.
/// `ends` are the partitions' ends at the start (for `Until::Ends`).
pub fn read(
    address: SocketAddr,
    fetch_version: i16,
    args: &ConsumeArgs,
    starts: &[i64],
    ends: &[i64],
    until: Until,
    clock: Option<Clock>,
) -> Result<ConsumeResults, BenchError> {
    let partitions = u32::try_from(starts.len()).unwrap_or(u32::MAX);
    let limit = |bytes: u64| i32::try_from(bytes).unwrap_or(i32::MAX);
    let plan = Rc::new(Plan {
        address,
        topic: args.topic.clone(),
        version: fetch_version,
        fetch_max_bytes: limit(args.fetch_max_bytes),
        partition_max_bytes: limit(args.partition_max_bytes),
        until,
        clock,
    });
    let cursors: Vec<Cursors> = (0..args.connections.min(partitions))
        .map(|connection| {
            (0..partitions)
                .filter(|p| p % args.connections == connection)
                .map(|p| (p as i32, starts[p as usize], ends[p as usize]))
                .collect()
        })
        .collect();
    let tally = Rc::new(Tally::default());
    let start = Instant::now();
    rt::block_on(read_all(Rc::clone(&plan), cursors, Rc::clone(&tally)))??;
    let elapsed_s = start.elapsed().as_secs_f64();
    let bytes = tally.bytes.get();
    let records = tally.records.get();
    Ok(ConsumeResults {
        fetch_version,
        partitions,
        fetches: tally.fetches.get(),
        records,
        batches: tally.batches.get(),
        bytes,
        elapsed_s,
        records_per_s: records as f64 / elapsed_s,
        mb_per_s: bytes as f64 / 1e6 / elapsed_s,
        mib_per_s: mib_per_s(bytes, elapsed_s),
        end_to_end_latency: plan.clock.map(|_| tally.latencies.borrow().summary()),
    })
}

/// The topic's partition count, from Metadata.
fn partition_count(
    admin: &mut ringlog_server::admin::AdminClient,
    topic: &str,
) -> Result<u32, BenchError> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::MetadataRequest;
    let version = admin.version::<MetadataRequest>()?;
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
    ]));
    let response = admin.call(&request, version)?;
    let topic_response = response
        .topics
        .first()
        .ok_or_else(|| BenchError::Broker(format!("no metadata for topic {topic}")))?;
    ringlog_server::admin::AdminError::check("Metadata", topic_response.error_code, None)?;
    u32::try_from(topic_response.partitions.len())
        .ok()
        .filter(|&count| count > 0)
        .ok_or_else(|| BenchError::Broker(format!("topic {topic} has no partitions")))
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

async fn read_all(
    plan: Rc<Plan>,
    cursors: Vec<Cursors>,
    tally: Rc<Tally>,
) -> Result<(), BenchError> {
    let progress = rt::spawn_local(print_progress(Rc::clone(&plan), Rc::clone(&tally)));
    let tasks: Vec<_> = cursors
        .into_iter()
        .map(|cursors| {
            rt::spawn_local(read_connection(
                Rc::clone(&plan),
                cursors,
                Rc::clone(&tally),
            ))
        })
        .collect();
    let mut outcome = Ok(());
    for task in tasks {
        if let Err(error) = task.await.map_err(BenchError::from).and_then(|done| done) {
            outcome = outcome.and(Err(error));
        }
    }
    drop(progress);
    outcome
}

/// Once a second: records/s and MB/s read in the last second, and for end-to-end runs its
/// p99 latency. Ends when dropped.
async fn print_progress(plan: Rc<Plan>, tally: Rc<Tally>) {
    let mut last = (Instant::now(), 0u64, 0u64);
    loop {
        rt::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        let (records, bytes) = (tally.records.get(), tally.bytes.get());
        let seconds = now.duration_since(last.0).as_secs_f64();
        let p99 = plan.clock.map_or_else(String::new, |_| {
            let summary = tally.interval.replace(Latencies::new()).summary();
            if summary.count == 0 {
                " end-to-end p99 -".into()
            } else {
                format!(" end-to-end p99 {:.2} ms", summary.p99_us / 1e3)
            }
        });
        eprintln!(
            "consume: {:>10.0} records/s {:>8.1} MB/s{p99}",
            (records - last.1) as f64 / seconds,
            (bytes - last.2) as f64 / 1e6 / seconds,
        );
        last = (now, records, bytes);
    }
}

/// Whether a connection is done (see `Until`).
fn done(plan: &Plan, tally: &Tally, cursors: &Cursors) -> bool {
    match &plan.until {
        Until::Count(expect) => tally.records.get() >= *expect,
        Until::Ends => cursors.iter().all(|&(_, next, end)| next >= end),
        Until::Published(expect) => tally.records.get() >= expect.load(Ordering::Acquire),
    }
}

/// One connection: fetches its partitions until the run is done.
async fn read_connection(
    plan: Rc<Plan>,
    mut cursors: Cursors,
    tally: Rc<Tally>,
) -> Result<(), BenchError> {
    let stream = TcpStream::connect(plan.address)
        .await
        .context(|| format!("connecting to {}", plan.address))?;
    stream.set_nodelay(true).context(|| "TCP_NODELAY".into())?;
    let mut reader = FrameReader::new();
    let mut correlation_id = 0i32;
    let mut last_progress = Instant::now();
    while !done(&plan, &tally, &cursors) {
        correlation_id = correlation_id.wrapping_add(1);
        let mut frame = encode_frame(&fetch_request(&plan, &cursors), plan.version)?;
        set_correlation_id(&mut frame, correlation_id);
        let (result, _) = stream.send_all(frame).await;
        result.context(|| "sending a fetch request".into())?;
        let body = reader.next_frame(&stream).await?;
        let response = decode_response::<FetchRequest>(body, plan.version, correlation_id)?;
        tally.fetches.set(tally.fetches.get() + 1);
        if let Some(clock) = plan.clock {
            record_latencies(&response, clock, &tally)?;
        }
        if advance(&response, &mut cursors, &tally)? {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > IDLE_TIMEOUT {
            return Err(BenchError::Broker(format!(
                "no new records for {IDLE_TIMEOUT:?} after {} records",
                tally.records.get()
            )));
        }
    }
    Ok(())
}

fn fetch_request(plan: &Plan, cursors: &Cursors) -> FetchRequest {
    let partitions = cursors
        .iter()
        .map(|&(partition, next, _)| {
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(next)
                .with_partition_max_bytes(plan.partition_max_bytes)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(plan.fetch_max_bytes)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(&plan.topic))
            .with_partitions(partitions)])
}

/// Records each fetched record's end-to-end latency: from its stamp to now (when its
/// response was read).
fn record_latencies(
    response: &FetchResponse,
    clock: Clock,
    tally: &Tally,
) -> Result<(), BenchError> {
    let mut latencies = tally.latencies.borrow_mut();
    let mut interval = tally.interval.borrow_mut();
    for records in response
        .responses
        .iter()
        .flat_map(|topic| &topic.partitions)
        .filter_map(|partition| partition.records.as_deref())
    {
        read_stamps(records, |stamp| {
            let latency = clock.since(stamp);
            latencies.record(latency);
            interval.record(latency);
        })?;
    }
    Ok(())
}

/// Counts a response's whole batches and moves each partition's offset past them; returns
/// whether any records came.
fn advance(
    response: &FetchResponse,
    cursors: &mut Cursors,
    tally: &Tally,
) -> Result<bool, BenchError> {
    if response.error_code != 0 {
        return Err(BenchError::Broker(format!(
            "fetch error code {}",
            response.error_code
        )));
    }
    let mut progressed = false;
    for partition in response
        .responses
        .iter()
        .flat_map(|topic| &topic.partitions)
    {
        if partition.error_code != 0 {
            return Err(BenchError::Broker(format!(
                "fetch of partition {}: error code {}",
                partition.partition_index, partition.error_code
            )));
        }
        let Some(records) = partition.records.as_deref() else {
            continue;
        };
        let walk = walk_batches(records);
        if let Some(at) = walk.bad_framing_at {
            return Err(BenchError::Broker(format!(
                "partition {}: bad record batch framing at byte {at} of a fetch",
                partition.partition_index
            )));
        }
        let Some(cursor) = cursors
            .iter_mut()
            .find(|c| c.0 == partition.partition_index)
        else {
            continue;
        };
        if let Some(next) = walk.offset_next.filter(|&next| next > cursor.1) {
            cursor.1 = next;
            progressed = true;
        }
        tally.records.set(tally.records.get() + walk.records);
        tally.batches.set(tally.batches.get() + walk.batches);
        tally.bytes.set(tally.bytes.get() + walk.bytes);
    }
    Ok(progressed)
}

/// Prints a consume run's summary line.
pub fn print_results(results: &ConsumeResults) {
    println!(
        "consume: {} records ({} batches, {} fetches) from {} partitions in {:.2} s: \
         {:.0} records/s, {:.1} MB/s",
        results.records,
        results.batches,
        results.fetches,
        results.partitions,
        results.elapsed_s,
        results.records_per_s,
        results.mb_per_s,
    );
}
