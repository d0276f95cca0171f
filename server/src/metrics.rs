//! Metrics in the Prometheus text format (version 0.0.4), served over HTTP on
//! `metrics_listen`.
//!
//! What is counted, and where:
//! - per API (`api` label, one of [`SUPPORTED_VERSIONS`]): requests answered, requests
//!   whose response carries a non-zero error code anywhere (top level, any topic or any
//!   partition — one error per request, however many partitions failed), request frame
//!   bytes and response bytes (encoded and spliced, size prefixes included). Produce with
//!   acks=0 counts as answered with no response bytes. Frames that do not decode close the
//!   connection and are not counted;
//! - connections: open now, refused at accept by limit, closed for a limit by reason; the
//!   bytes in flight and how often a connection stopped reading for them (`connection`);
//! - produce and fetch latency: from the whole request frame being read to its response
//!   being handed to the socket (a long-polling fetch's wait included);
//! - from the engine (`ringlog_engine::log::metrics`): records appended, group-commit bytes
//!   and appends per group, fdatasync latency; the batch cache's hit, miss, read and
//!   evicted bytes and its size; fetch bytes spliced, sent from the cache, or copied
//!   (`zero_copy`);
//! - at scrape time: every partition's log start, high watermark and log end offsets, and
//!   every consumer group's committed offset and lag per partition;
//! - in a cluster (`ringlog_cluster_*`): the Raft groups this node holds, leads, is still
//!   rejoining and has asleep (idle, `hibernation.rs`), whether the node rejoins, peers' messages dropped at a full group inbox,
//!   and snapshot fills' bytes received and served and requests retried.
//!
//! The request path only does relaxed atomic adds on statics (no lock, no allocation); a
//! scrape reads them without stopping anyone, so counters are not a consistent snapshot of
//! one another. The endpoint is minimal HTTP/1.1 on shard 0: `GET /metrics` (any query
//! string) answers 200 with the exposition, any other path 404, any other method 405, a
//! request head over [`HTTP_HEAD_BYTES_MAX`] 431; one request per connection
//! (`Connection: close`).

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use ringlog_cluster::node::ClusterMetrics;
use ringlog_engine::log::cache;
use ringlog_engine::log::metrics::{self as log_metrics, Histogram, HistogramSnapshot};
use ringlog_engine::rt::{self, IoBuf, TcpListener, TcpStream};
use ringlog_engine::shard::Engine;

use crate::connection::admission::CONNECTIONS_OPEN;
use crate::connection::budget::{IN_FLIGHT_BYTES, READS_PAUSED};
use crate::connection::{Refusal, CLOSED_FOR_LIMIT};
use crate::group::coordinator::{with_local, Coordinator};
use crate::protocol::SUPPORTED_VERSIONS;
use crate::server::{Lifecycle, ACCEPT_STOP_CHECK};
use crate::zero_copy::{BYTES_SENT_COPIED, BYTES_SENT_FROM_CACHE, BYTES_SENT_ZERO_COPY};

/// The largest HTTP request head (request line and headers) the endpoint reads.
pub const HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a metrics client has to send its request head.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The exposition's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One API's counters.
struct ApiCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

static APIS: [ApiCounters; SUPPORTED_VERSIONS.len()] = [const {
    ApiCounters {
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        request_bytes: AtomicU64::new(0),
        response_bytes: AtomicU64::new(0),
    }
}; SUPPORTED_VERSIONS.len()];

/// Produce latency in nanoseconds (see the module doc for what it spans).
static PRODUCE_LATENCY_NS: Histogram<17> = Histogram::new(log_metrics::LATENCY_BOUNDS_NS);
/// Fetch latency in nanoseconds.
static FETCH_LATENCY_NS: Histogram<17> = Histogram::new(log_metrics::LATENCY_BOUNDS_NS);

/// Counts one answered request: its frame's bytes, the response's bytes (0 for none),
/// whether the response carries an error, and (for Produce and Fetch) its latency.
pub fn record_request(
    api: ApiKey,
    request_bytes: usize,
    response_bytes: u64,
    failed: bool,
    latency: Duration,
) {
    let Some(index) = SUPPORTED_VERSIONS.iter().position(|(key, ..)| *key == api) else {
        return;
    };
    let counters = &APIS[index];
    counters.requests.fetch_add(1, Ordering::Relaxed);
    counters
        .errors
        .fetch_add(u64::from(failed), Ordering::Relaxed);
    counters
        .request_bytes
        .fetch_add(request_bytes as u64, Ordering::Relaxed);
    counters
        .response_bytes
        .fetch_add(response_bytes, Ordering::Relaxed);
    match api {
        ApiKey::Produce => PRODUCE_LATENCY_NS.observe_duration(latency),
        ApiKey::Fetch => FETCH_LATENCY_NS.observe_duration(latency),
        _ => {}
    }
}

/// Whether a response carries a non-zero error code at its top level or for any topic,
/// partition or resource.
pub fn has_error(response: &ResponseKind) -> bool {
    fn any<T>(items: &[T], code: impl Fn(&T) -> bool) -> bool {
        items.iter().any(code)
    }
    match response {
        ResponseKind::Produce(r) => any(&r.responses, |t| {
            any(&t.partition_responses, |p| p.error_code != 0)
        }),
        ResponseKind::Fetch(r) => {
            r.error_code != 0 || any(&r.responses, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        ResponseKind::ListOffsets(r) => {
            any(&r.topics, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        ResponseKind::Metadata(r) => {
            r.error_code != 0
                || any(&r.topics, |t| {
                    t.error_code != 0 || any(&t.partitions, |p| p.error_code != 0)
                })
        }
        ResponseKind::ApiVersions(r) => r.error_code != 0,
        ResponseKind::CreateTopics(r) => any(&r.topics, |t| t.error_code != 0),
        ResponseKind::DeleteTopics(r) => any(&r.responses, |t| t.error_code != 0),
        ResponseKind::CreatePartitions(r) => any(&r.results, |t| t.error_code != 0),
        ResponseKind::AlterPartitionReassignments(r) => {
            r.error_code != 0 || any(&r.responses, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        ResponseKind::ListPartitionReassignments(r) => r.error_code != 0,
        ResponseKind::DescribeConfigs(r) => any(&r.results, |t| t.error_code != 0),
        ResponseKind::AlterConfigs(r) => any(&r.responses, |t| t.error_code != 0),
        ResponseKind::IncrementalAlterConfigs(r) => any(&r.responses, |t| t.error_code != 0),
        ResponseKind::DescribeCluster(r) => r.error_code != 0,
        ResponseKind::DeleteRecords(r) => {
            any(&r.topics, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        // The broker answers no other API; if it ever does, its errors go uncounted here
        // rather than miscounted.
        _ => false,
    }
}

/// A partition's offsets at scrape time.
struct PartitionOffsets {
    topic: String,
    partition: u32,
    log_start: i64,
    high_watermark: i64,
    log_end: i64,
}

/// The whole exposition: every counter and histogram, and the offsets of every partition
/// this node holds a replica of (in a cluster, a partition placed on other nodes only has
/// an empty log here, whose offsets would mislead).
pub async fn render(engine: &Engine, lifecycle: &Lifecycle) -> String {
    let cluster = lifecycle.cluster.get();
    let mut offsets = Vec::new();
    for meta in engine.topics() {
        for partition in 0..meta.partitions {
            if cluster.is_some_and(|cluster| !cluster.holds(&meta, partition)) {
                continue;
            }
            // A topic deleted since `topics()` has no offsets any more; leave it out.
            if let Ok(o) = engine.offsets(meta.name.as_str(), partition).await {
                offsets.push(PartitionOffsets {
                    topic: meta.name.as_str().to_owned(),
                    partition,
                    log_start: o.log_start,
                    high_watermark: o.high_watermark,
                    log_end: o.log_end,
                });
            }
        }
    }
    // One visit per shard: its groups' committed offsets, its ring's and its pool's counters.
    let mut committed = Vec::new();
    let mut shards = Vec::new();
    for shard in engine.shard_handles() {
        let found = shard
            .spawn(|| async {
                let offsets = with_local(Coordinator::committed_offsets).unwrap_or_default();
                (offsets, (rt::driver_stats(), rt::buf_pool().stats()))
            })
            .await;
        // A shard that stopped meanwhile has nothing to report.
        if let Ok((offsets, stats)) = found {
            committed.extend(offsets);
            shards.push((shard.id(), stats));
        }
    }
    committed.sort();
    let mut out = Exposition::default();
    render_requests(&mut out);
    render_connections(&mut out);
    render_engine(&mut out);
    render_shards(&mut out, &shards);
    render_partitions(&mut out, &offsets);
    render_groups(&mut out, &committed, &offsets);
    if let Some(cluster) = lifecycle.cluster.get() {
        render_cluster(&mut out, &cluster.metrics());
    }
    let in_flight = lifecycle.requests_in_flight.load(Ordering::Relaxed);
    out.family(
        "ringlog_requests_in_flight",
        "Requests being answered now.",
        "gauge",
    );
    out.sample("ringlog_requests_in_flight", &[], in_flight);
    out.text
}

fn render_requests(out: &mut Exposition) {
    type Field = fn(&ApiCounters) -> &AtomicU64;
    let families: [(&str, &str, Field); 4] = [
        (
            "ringlog_requests_total",
            "Requests answered, by API.",
            |c| &c.requests,
        ),
        (
            "ringlog_request_errors_total",
            "Requests whose response carried a non-zero error code (top level, or any \
             topic, partition or resource), by API.",
            |c| &c.errors,
        ),
        (
            "ringlog_request_bytes_total",
            "Bytes of request frames received (size prefix included), by API.",
            |c| &c.request_bytes,
        ),
        (
            "ringlog_response_bytes_total",
            "Bytes of responses sent, encoded and spliced (size prefix included), by API.",
            |c| &c.response_bytes,
        ),
    ];
    for (name, help, field) in families {
        out.family(name, help, "counter");
        for ((api, ..), counters) in SUPPORTED_VERSIONS.iter().zip(&APIS) {
            let value = field(counters).load(Ordering::Relaxed);
            out.sample(name, &[("api", &format!("{api:?}"))], value);
        }
    }
    let latency = "from the request frame read to the response handed to the socket.";
    out.histogram(
        "ringlog_produce_latency_seconds",
        &format!("Produce latency, {latency}"),
        &PRODUCE_LATENCY_NS.snapshot(),
        1e9,
    );
    out.histogram(
        "ringlog_fetch_latency_seconds",
        &format!("Fetch latency (long-poll wait included), {latency}"),
        &FETCH_LATENCY_NS.snapshot(),
        1e9,
    );
}

fn render_connections(out: &mut Exposition) {
    let name = "ringlog_connections_open";
    out.family(name, "Client connections open now.", "gauge");
    out.sample(name, &[], CONNECTIONS_OPEN.load(Ordering::Relaxed));
    let name = "ringlog_connections_refused_total";
    out.family(
        name,
        "Connections closed as they were accepted because a connection limit was reached, \
         by limit (max_connections, max_connections_per_ip, shard_full).",
        "counter",
    );
    for refusal in Refusal::ALL {
        out.sample(name, &[("reason", refusal.label())], refusal.count());
    }
    let name = "ringlog_connections_closed_total";
    out.family(
        name,
        "Connections the broker closed for a limit, by reason: idle (connections_max_idle_ms), \
         stalled (responses unread for connections_max_idle_ms), request_read_timeout \
         (request_read_timeout_ms), request_too_large (max_request_bytes).",
        "counter",
    );
    for (reason, count) in &CLOSED_FOR_LIMIT {
        out.sample(name, &[("reason", reason)], count.load(Ordering::Relaxed));
    }
    let name = "ringlog_in_flight_bytes";
    out.family(
        name,
        "Request and response bytes read and not yet answered to the last byte, all \
         connections together.",
        "gauge",
    );
    out.sample(name, &[], IN_FLIGHT_BYTES.load(Ordering::Relaxed));
    let name = "ringlog_connection_reads_paused_total";
    out.family(
        name,
        "Times a connection stopped reading requests until responses drained: its own or \
         its shard's in-flight bytes were over their limit, or a Fetch waited for the one \
         before it to be written.",
        "counter",
    );
    out.sample(name, &[], READS_PAUSED.load(Ordering::Relaxed));
}

fn render_engine(out: &mut Exposition) {
    let counters = [
        (
            "ringlog_records_appended_total",
            "Records written to partition logs (record counts of batches whose group \
             commit's write completed).",
            log_metrics::RECORDS_APPENDED.load(Ordering::Relaxed),
        ),
        (
            "ringlog_fetch_zero_copy_bytes_total",
            "Record bytes of fetch responses spliced from segment files to sockets.",
            BYTES_SENT_ZERO_COPY.load(Ordering::Relaxed),
        ),
        (
            "ringlog_fetch_copied_bytes_total",
            "Record bytes of fetch responses copied through user space.",
            BYTES_SENT_COPIED.load(Ordering::Relaxed),
        ),
        (
            "ringlog_fetch_cache_bytes_total",
            "Record bytes of fetch responses sent from the batch cache's buffers.",
            BYTES_SENT_FROM_CACHE.load(Ordering::Relaxed),
        ),
        (
            "ringlog_batch_cache_hit_bytes_total",
            "Record bytes fetches of direct-I/O partitions found in the batch cache.",
            cache::CACHE_HIT_BYTES.load(Ordering::Relaxed),
        ),
        (
            "ringlog_batch_cache_miss_bytes_total",
            "Record bytes fetches of direct-I/O partitions did not find in the batch cache \
             (read from the segment file for them).",
            cache::CACHE_MISS_BYTES.load(Ordering::Relaxed),
        ),
        (
            "ringlog_batch_cache_read_bytes_total",
            "Bytes read from segment files into the batch cache (misses and read-ahead).",
            cache::CACHE_READ_BYTES.load(Ordering::Relaxed),
        ),
        (
            "ringlog_batch_cache_evicted_bytes_total",
            "Bytes of batch cache buffers evicted to stay within the budget.",
            cache::CACHE_EVICTED_BYTES.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, help, "counter");
        out.sample(name, &[], value);
    }
    let name = "ringlog_batch_cache_bytes";
    out.family(
        name,
        "Bytes the batch caches of all shards hold (their buffers' capacities).",
        "gauge",
    );
    out.sample(name, &[], cache::CACHE_USED_BYTES.load(Ordering::Relaxed));
    out.histogram(
        "ringlog_group_commit_bytes",
        "Bytes of record batches per group commit.",
        &log_metrics::GROUP_COMMIT_BYTES.snapshot(),
        1.0,
    );
    out.histogram(
        "ringlog_group_commit_appends",
        "Appends (partitions' data of produce requests) per group commit.",
        &log_metrics::GROUP_COMMIT_APPENDS.snapshot(),
        1.0,
    );
    out.histogram(
        "ringlog_group_commit_write_seconds",
        "Time a group commit's write took, from stamping (preallocation and the copy into \
         an aligned buffer included) to the write's completion.",
        &log_metrics::GROUP_COMMIT_WRITE_NS.snapshot(),
        1e9,
    );
    out.histogram(
        "ringlog_fdatasync_latency_seconds",
        "Latency of group-commit and periodic-flush fdatasyncs.",
        &log_metrics::FDATASYNC_LATENCY_NS.snapshot(),
        1e9,
    );
}

/// The shards' rings and buffer pools: entries per `io_uring_enter` show how many
/// operations (of all partitions and connections of the shard) share one submission.
fn render_cluster(out: &mut Exposition, metrics: &ClusterMetrics) {
    let gauges = [
        (
            "ringlog_cluster_groups",
            "Raft groups with a replica on this node, the controller's included.",
            metrics.groups,
        ),
        (
            "ringlog_cluster_groups_led",
            "Raft groups this node leads.",
            metrics.groups_led,
        ),
        (
            "ringlog_cluster_groups_rejoining",
            "Raft groups whose replica here rejoins (withholds its vote until caught up).",
            metrics.groups_rejoining,
        ),
        (
            "ringlog_cluster_groups_asleep",
            "Raft groups asleep here: idle, neither ticking nor heartbeating.",
            metrics.groups_asleep,
        ),
        (
            "ringlog_cluster_rejoining",
            "1 while this node rejoins the cluster with a new data directory.",
            u64::from(metrics.rejoining),
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, help, "gauge");
        out.sample(name, &[], value);
    }
    let counters = [
        (
            "ringlog_cluster_steps_dropped_total",
            "Peers' Raft messages dropped at a full group inbox.",
            metrics.steps_dropped,
        ),
        (
            "ringlog_cluster_fill_received_bytes_total",
            "Bytes of batches received to fill snapshots.",
            metrics.fill_bytes_received,
        ),
        (
            "ringlog_cluster_fill_served_bytes_total",
            "Bytes of batches served to peers' snapshot fills.",
            metrics.fill_bytes_served,
        ),
        (
            "ringlog_cluster_fill_requests_retried_total",
            "Fill requests unanswered in time or answered empty, asked again.",
            metrics.fill_requests_retried,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, help, "counter");
        out.sample(name, &[], value);
    }
}

fn render_shards(out: &mut Exposition, shards: &[(usize, (rt::DriverStats, rt::PoolStats))]) {
    type Read = fn(&(rt::DriverStats, rt::PoolStats)) -> u64;
    let families: [(&str, &str, &str, Read); 7] = [
        (
            "ringlog_io_uring_enter_calls_total",
            "io_uring_enter system calls the shard made, to submit or to wait.",
            "counter",
            |(driver, _)| driver.enter_calls,
        ),
        (
            "ringlog_io_uring_submit_calls_total",
            "io_uring_enter system calls that submitted entries (each submits everything \
             the shard's tasks queued since the last).",
            "counter",
            |(driver, _)| driver.submit_calls,
        ),
        (
            "ringlog_io_uring_entries_submitted_total",
            "Submission queue entries the shard pushed (writes, fdatasyncs, reads, sends, \
             timers).",
            "counter",
            |(driver, _)| driver.entries_submitted,
        ),
        (
            "ringlog_io_uring_completions_total",
            "Completion queue entries the shard reaped.",
            "counter",
            |(driver, _)| driver.completions_reaped,
        ),
        (
            "ringlog_buffer_pool_reused_total",
            "Aligned buffers the shard's pool handed out from its idle buffers.",
            "counter",
            |(_, pool)| pool.reused,
        ),
        (
            "ringlog_buffer_pool_allocated_total",
            "Aligned buffers the shard's pool allocated (none idle of the size asked).",
            "counter",
            |(_, pool)| pool.allocated,
        ),
        (
            "ringlog_buffer_pool_idle_bytes",
            "Bytes of aligned buffers the shard's pool keeps idle for reuse.",
            "gauge",
            |(_, pool)| pool.idle_bytes,
        ),
    ];
    for (name, help, kind, read) in families {
        out.family(name, help, kind);
        for (index, stats) in shards {
            out.sample(name, &[("shard", &index.to_string())], read(stats));
        }
    }
}

fn render_partitions(out: &mut Exposition, partitions: &[PartitionOffsets]) {
    type Field = fn(&PartitionOffsets) -> i64;
    let families: [(&str, &str, Field); 3] = [
        (
            "ringlog_partition_log_start_offset",
            "A partition's log start offset (first offset still kept).",
            |p| p.log_start,
        ),
        (
            "ringlog_partition_high_watermark",
            "A partition's high watermark (the offset consumers may read up to).",
            |p| p.high_watermark,
        ),
        (
            "ringlog_partition_log_end_offset",
            "A partition's log end offset (the offset after the last written batch).",
            |p| p.log_end,
        ),
    ];
    for (name, help, field) in families {
        out.family(name, help, "gauge");
        for offsets in partitions {
            let partition = offsets.partition.to_string();
            let labels = [("topic", offsets.topic.as_str()), ("partition", &partition)];
            out.sample(name, &labels, field(offsets));
        }
    }
}

/// Each group's committed offsets, and its lag: the partition's high watermark minus the
/// committed offset (what the group has yet to read), never below zero.
fn render_groups(
    out: &mut Exposition,
    committed: &[(String, String, i32, i64)],
    partitions: &[PartitionOffsets],
) {
    let high_watermark = |topic: &str, partition: i32| {
        partitions
            .iter()
            .find(|p| p.topic == topic && i64::from(p.partition) == i64::from(partition))
            .map(|p| p.high_watermark)
    };
    out.family(
        "ringlog_group_committed_offset",
        "A consumer group's committed offset of a partition.",
        "gauge",
    );
    for (group, topic, partition, offset) in committed {
        let partition = partition.to_string();
        let labels = [
            ("group", group.as_str()),
            ("topic", topic.as_str()),
            ("partition", &partition),
        ];
        out.sample("ringlog_group_committed_offset", &labels, offset);
    }
    out.family(
        "ringlog_group_lag",
        "Records a consumer group has yet to read of a partition (high watermark minus \
         committed offset).",
        "gauge",
    );
    for (group, topic, partition, offset) in committed {
        let Some(end) = high_watermark(topic, *partition) else {
            continue;
        };
        let partition = partition.to_string();
        let labels = [
            ("group", group.as_str()),
            ("topic", topic.as_str()),
            ("partition", &partition),
        ];
        out.sample("ringlog_group_lag", &labels, (end - offset).max(0));
    }
}

/// Exposition text being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn line(&mut self, arguments: fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = self.text.write_fmt(arguments);
        self.text.push('\n');
    }

    /// A metric family's HELP and TYPE lines.
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        self.line(format_args!("# HELP {name} {help}"));
        self.line(format_args!("# TYPE {name} {kind}"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
        let _ = write!(self.text, "{name}");
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        self.line(format_args!(" {value}"));
    }

    /// A histogram family; bounds and sum are divided by `divisor` (1e9 turns nanoseconds
    /// into seconds).
    fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot, divisor: f64) {
        self.family(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        for (bound, count) in snapshot.bounds.iter().zip(&snapshot.cumulative) {
            let le = (*bound as f64 / divisor).to_string();
            self.sample(&bucket, &[("le", &le)], count);
        }
        self.sample(&bucket, &[("le", "+Inf")], snapshot.count);
        self.sample(&format!("{name}_sum"), &[], snapshot.sum as f64 / divisor);
        self.sample(&format!("{name}_count"), &[], snapshot.count);
    }
}

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Accepts metrics requests on `listener` (on the current shard) until the server stops.
pub async fn serve(listener: TcpListener, engine: Engine, lifecycle: Arc<Lifecycle>) {
    let mut incoming = listener.incoming();
    while !lifecycle.stopping.load(Ordering::SeqCst) {
        let stream = match rt::timeout(ACCEPT_STOP_CHECK, incoming.next()).await {
            Err(rt::Elapsed) => continue,
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                tracing::warn!(%error, "metrics accept failed");
                rt::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Ok(Some(Ok(stream))) => stream,
        };
        let (engine, lifecycle) = (engine.clone(), lifecycle.clone());
        rt::spawn_local(async move {
            if let Err(error) = answer(&stream, &engine, &lifecycle).await {
                tracing::debug!(%error, "metrics connection failed");
            }
        })
        .detach();
    }
}

/// Reads one request, sends one response, and lets the connection close.
async fn answer(stream: &TcpStream, engine: &Engine, lifecycle: &Lifecycle) -> std::io::Result<()> {
    let head = match rt::timeout(HTTP_READ_TIMEOUT, read_head(stream)).await {
        Err(rt::Elapsed) => return Ok(()),
        Ok(head) => head?,
    };
    let response = match head {
        Head::Complete(head) => match route(&head) {
            Route::Metrics => {
                http_response("200 OK", CONTENT_TYPE, &render(engine, lifecycle).await)
            }
            Route::NotFound => http_response("404 Not Found", "text/plain", "not found\n"),
            Route::MethodNotAllowed => http_response(
                "405 Method Not Allowed\r\nAllow: GET",
                "text/plain",
                "GET only\n",
            ),
            Route::BadRequest => http_response("400 Bad Request", "text/plain", "bad request\n"),
        },
        Head::TooLarge => http_response(
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n",
        ),
        Head::Closed => return Ok(()),
    };
    let (sent, _) = stream.send_all(response).await;
    sent
}

/// What the client sent before the end of its request head.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

/// Receives until the blank line that ends a request head, at most
/// [`HTTP_HEAD_BYTES_MAX`] bytes.
async fn read_head(stream: &TcpStream) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(HTTP_HEAD_BYTES_MAX);
    loop {
        if head.windows(4).any(|window| window == b"\r\n\r\n") {
            return Ok(Head::Complete(head));
        }
        if head.len() >= HTTP_HEAD_BYTES_MAX {
            return Ok(Head::TooLarge);
        }
        let start = head.len();
        let (received, slice) = stream.recv(head.slice(start..HTTP_HEAD_BYTES_MAX)).await;
        head = slice.into_inner();
        if received? == 0 {
            return Ok(Head::Closed);
        }
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let line_end = head
        .windows(2)
        .position(|window| window == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// A whole HTTP/1.1 response; `status` may carry extra header lines after the reason.
fn http_response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    response.push_str(body);
    response.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_exposed_cumulative_in_seconds() {
        let histogram = Histogram::new([1_000_000, 250_000_000]);
        histogram.observe(500_000);
        histogram.observe(2_000_000);
        histogram.observe(3_000_000_000);
        let mut out = Exposition::default();
        out.histogram("x_seconds", "Test.", &histogram.snapshot(), 1e9);
        let expected = "# HELP x_seconds Test.\n\
                        # TYPE x_seconds histogram\n\
                        x_seconds_bucket{le=\"0.001\"} 1\n\
                        x_seconds_bucket{le=\"0.25\"} 2\n\
                        x_seconds_bucket{le=\"+Inf\"} 3\n\
                        x_seconds_sum 3.0025\n\
                        x_seconds_count 3\n";
        assert_eq!(out.text, expected);
    }

    #[test]
    fn cluster_figures_are_exposed_by_name() {
        let mut out = Exposition::default();
        let metrics = ClusterMetrics {
            groups: 12,
            groups_led: 4,
            groups_rejoining: 2,
            groups_asleep: 6,
            rejoining: true,
            steps_dropped: 5,
            fill_bytes_received: 1 << 20,
            fill_bytes_served: 77,
            fill_requests_retried: 3,
        };
        render_cluster(&mut out, &metrics);
        for line in [
            "ringlog_cluster_groups 12\n",
            "ringlog_cluster_groups_led 4\n",
            "ringlog_cluster_groups_rejoining 2\n",
            "ringlog_cluster_groups_asleep 6\n",
            "ringlog_cluster_rejoining 1\n",
            "ringlog_cluster_steps_dropped_total 5\n",
            "ringlog_cluster_fill_received_bytes_total 1048576\n",
            "ringlog_cluster_fill_served_bytes_total 77\n",
            "ringlog_cluster_fill_requests_retried_total 3\n",
            "# TYPE ringlog_cluster_fill_served_bytes_total counter\n",
            "# TYPE ringlog_cluster_groups_rejoining gauge\n",
        ] {
            assert!(
                out.text.contains(line),
                "{line:?} missing from:\n{}",
                out.text
            );
        }
    }

    #[test]
    fn samples_carry_escaped_labels() {
        let mut out = Exposition::default();
        out.family("ringlog_x", "Help.", "gauge");
        out.sample(
            "ringlog_x",
            &[("topic", "a\"b\\c\nd"), ("partition", "3")],
            -1,
        );
        out.sample("ringlog_y", &[], 7);
        assert_eq!(
            out.text,
            "# HELP ringlog_x Help.\n# TYPE ringlog_x gauge\n\
             ringlog_x{topic=\"a\\\"b\\\\c\\nd\",partition=\"3\"} -1\nringlog_y 7\n"
        );
    }

    #[test]
    fn every_supported_api_has_its_counters() {
        let before = APIS[1].requests.load(Ordering::Relaxed);
        record_request(ApiKey::Fetch, 10, 20, true, Duration::from_millis(3));
        assert_eq!(SUPPORTED_VERSIONS[1].0, ApiKey::Fetch);
        assert!(APIS[1].requests.load(Ordering::Relaxed) > before);
        assert!(FETCH_LATENCY_NS.snapshot().count > 0);
        let mut out = Exposition::default();
        render_requests(&mut out);
        for (api, ..) in SUPPORTED_VERSIONS {
            let sample = format!("ringlog_requests_total{{api=\"{api:?}\"}} ");
            assert!(out.text.contains(&sample), "{sample}");
        }
        assert!(out
            .text
            .contains("ringlog_fetch_latency_seconds_bucket{le=\"0.005\"} "));
    }

    #[test]
    fn errors_are_found_at_any_depth() {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        use kafka_protocol::messages::ProduceResponse;
        let response = |code| {
            ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
                TopicProduceResponse::default().with_partition_responses(vec![
                    PartitionProduceResponse::default(),
                    PartitionProduceResponse::default().with_error_code(code),
                ]),
            ]))
        };
        assert!(!has_error(&response(0)));
        assert!(has_error(&response(3)));
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn responses_close_and_give_their_length() {
        let response = String::from_utf8(http_response("200 OK", "text/plain", "hi\n")).unwrap();
        assert_eq!(
            response,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
             Connection: close\r\n\r\nhi\n"
        );
    }
}
