//! Hostile and excessive clients against the real binary, each limit set small by its flag
//! so the test is quick:
//!
//! - connections: 10,000 at once. Over `--max-connections`, the excess is closed at accept
//!   (counted, logged once per interval) and the held ones are served; with the defaults,
//!   all 10,000 are held while another client produces and fetches. Per address:
//!   `--max-connections-per-ip` counts each address apart;
//! - slow and silent connections: a frame sent a byte at a time, or a frame's size and
//!   then nothing, is closed after `--request-read-timeout-ms`; a silent connection, and
//!   one whose frame never completes, after `--connections-max-idle-ms`; an active one is
//!   not; other clients are served meanwhile;
//! - a client that never reads its responses: the broker stops reading its requests once
//!   its in-flight bytes are over `--max-in-flight-bytes-per-connection`, its memory stays
//!   bounded, other clients keep working, and the stalled connection is closed after the
//!   idle timeout;
//! - the request size: a frame of exactly `--max-request-bytes` is served, one byte more is
//!   refused unread and its connection closed;
//! - fetches of everything (`max_bytes` = i32::MAX on many partitions): a response carries
//!   at most `fetch_max_bytes` (55 MiB by default) plus one batch, and concurrent ones keep
//!   the broker's memory within their caps.
//!
//! Tests assert behaviour (served, refused, closed, bounded) with generous hang guards;
//! timings are lower bounds only (nothing is closed before its timeout). Throughput under
//! these loads is measured by `bench/scripts/hostile.sh`, not here. The tests that open
//! 10,000 sockets raise this process's open-file limit to its hard limit (the server
//! inherits it) and skip, saying so, when the hard limit is too low; they run one at a
//! time.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, FetchResponse, MetadataRequest, ProduceRequest,
};
use ringlog_tests::metrics::{sample, scrape, wait_for};
use ringlog_tests::process::{raise_open_file_limit, Server, ServerOptions};
use ringlog_tests::wire::{
    encode_batch, produce_request, record, request_frame, topic_name, Connection,
};

/// Connections the 10,000-connection tests open.
const MANY: usize = 10_000;
/// Descriptors this process needs beyond its sockets (the server's pipes, files, threads).
const DESCRIPTORS_SPARE: u64 = 500;
/// Fetch names topics by name up to this version, so no topic-id lookup is needed.
const FETCH_VERSION: i16 = 12;
/// Metric samples the tests read.
const OPEN: &str = "ringlog_connections_open";
const REFUSED_MAX: &str = "ringlog_connections_refused_total{reason=\"max_connections\"}";
const REFUSED_PER_IP: &str = "ringlog_connections_refused_total{reason=\"max_connections_per_ip\"}";
const CLOSED_IDLE: &str = "ringlog_connections_closed_total{reason=\"idle\"}";
const CLOSED_STALLED: &str = "ringlog_connections_closed_total{reason=\"stalled\"}";
const CLOSED_SLOW: &str = "ringlog_connections_closed_total{reason=\"request_read_timeout\"}";
const CLOSED_TOO_LARGE: &str = "ringlog_connections_closed_total{reason=\"request_too_large\"}";
const READS_PAUSED: &str = "ringlog_connection_reads_paused_total";
const IN_FLIGHT: &str = "ringlog_in_flight_bytes";
/// How long a test waits for something the broker does at once.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The tests that open thousands of sockets take turns: two at once would pass the
/// open-file limit.
static MANY_SOCKETS: Mutex<()> = Mutex::new(());

fn start(flags: &[(&str, &str)]) -> (tempfile::TempDir, Server, SocketAddr) {
    start_with(ServerOptions::default(), flags)
}

fn start_with(
    options: ServerOptions,
    flags: &[(&str, &str)],
) -> (tempfile::TempDir, Server, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options.with("--metrics-listen", "127.0.0.1:0");
    for (flag, value) in flags {
        options = options.with(flag, value);
    }
    let server = Server::start(&dir.path().join("data"), &options);
    let metrics = server
        .metrics_address()
        .expect("the serving line names the metrics");
    (dir, server, metrics)
}

/// `count` connections to `address`, none of them sending anything.
fn connect_many(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|index| {
            TcpStream::connect_timeout(&address, HANG_GUARD)
                .unwrap_or_else(|error| panic!("connection {index}: {error}"))
        })
        .collect()
}

/// Whether the broker still holds `stream` open: nothing to read and no end of stream.
fn is_held(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open = match stream.peek(&mut byte) {
        Err(error) if error.kind() == ErrorKind::WouldBlock => true,
        Ok(0) => false,
        Err(error) if error.kind() == ErrorKind::ConnectionReset => false,
        Ok(_) => panic!("the broker sent bytes nobody asked for"),
        Err(error) => panic!("peek: {error}"),
    };
    stream.set_nonblocking(false).unwrap();
    open
}

/// Waits until exactly `want` of `streams` are still held (the broker closes refused ones
/// as it accepts them); returns how many are.
fn wait_held(streams: &[TcpStream], want: usize) -> usize {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let count = streams.iter().filter(|stream| is_held(stream)).count();
        if count <= want || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An ApiVersions round trip on a held connection.
fn answers(stream: &TcpStream) {
    let mut client = Connection::from_stream(stream.try_clone().unwrap()).unwrap();
    let response = client.call(&ApiVersionsRequest::default(), 3).unwrap();
    assert_eq!(response.error_code, 0);
}

/// A normal client's work: creates `topic`, produces `count` records with acks=all and
/// reads them all back.
fn produce_and_fetch(client: &mut Connection, topic: &str, count: usize) {
    let code = client.create_topic(topic, 1);
    assert!(code == 0 || code == 36, "create {topic}: error {code}");
    let records: Vec<_> = (0..count)
        .map(|i| record(None, Some(format!("{topic}-{i}").as_bytes()), &[], 1))
        .collect();
    let answer = client.produce(topic, 0, &records, -1);
    assert_eq!(answer.error_code, 0, "produce to {topic}");
    let fetched = client.fetch_all(topic, 0, answer.base_offset);
    let values: Vec<_> = fetched.iter().map(|r| r.value.clone().unwrap()).collect();
    let sent: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, sent, "{topic} reads back what was produced");
}

/// Lines of the server's log that contain `text`.
fn log_lines(server: &Server, text: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|line| line.contains(text))
        .count()
}

#[test]
fn connections_over_max_connections_are_refused_at_accept_and_the_held_ones_are_served() {
    let _turn = MANY_SOCKETS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(why) = raise_open_file_limit(MANY as u64 + DESCRIPTORS_SPARE) {
        eprintln!("SKIPPED connections_over_max_connections…: {why}");
        return;
    }
    let limit = 2000;
    let (_dir, mut server, metrics) = start(&[("--max-connections", &limit.to_string())]);
    let started = Instant::now();
    let clients = connect_many(server.address(), MANY);
    let refused = wait_for(metrics, REFUSED_MAX, (MANY - limit) as u64, HANG_GUARD);
    assert_eq!(
        refused,
        (MANY - limit) as u64,
        "every connection over the limit refused"
    );
    assert_eq!(sample(metrics, OPEN), limit as u64);
    assert_eq!(
        wait_held(&clients, limit),
        limit,
        "the refused ones are closed"
    );
    let held: Vec<&TcpStream> = clients.iter().filter(|stream| is_held(stream)).collect();
    for stream in held.iter().step_by(100) {
        answers(stream);
    }
    let mut client = Connection::from_stream(held[0].try_clone().unwrap()).unwrap();
    produce_and_fetch(&mut client, "served", 100);
    // One warning per interval (10 s), not one per refused connection.
    let intervals = 1 + started.elapsed().as_secs() as usize / 10;
    let warnings = log_lines(&server, "connection refused");
    assert!(
        (1..=intervals).contains(&warnings),
        "{warnings} refusal warnings in {intervals} intervals"
    );
    server.assert_running();
    drop(clients);
    server.stop_cleanly();
}

#[test]
fn ten_thousand_idle_connections_are_held_by_default_while_a_client_produces_and_fetches() {
    let _turn = MANY_SOCKETS.lock().unwrap_or_else(PoisonError::into_inner);
    // The server's default `max_connections` is three quarters of its open-file limit,
    // which it inherits from this process.
    let needed = (MANY as u64 + DESCRIPTORS_SPARE) * 4 / 3;
    if let Err(why) = raise_open_file_limit(needed) {
        eprintln!("SKIPPED ten_thousand_idle_connections…: {why}");
        return;
    }
    let (_dir, mut server, metrics) = start(&[]);
    let clients = connect_many(server.address(), MANY);
    let open = wait_for(metrics, OPEN, MANY as u64, HANG_GUARD);
    assert_eq!(open, MANY as u64, "every connection held");
    let mut client = Connection::connect(server.address());
    produce_and_fetch(&mut client, "beside-the-idle", 1000);
    for stream in clients.iter().step_by(500) {
        answers(stream);
    }
    let samples = scrape(metrics);
    for refused in [REFUSED_MAX, REFUSED_PER_IP] {
        assert_eq!(samples.value(refused), 0, "{refused}");
    }
    assert_eq!(samples.value(OPEN), MANY as u64 + 1);
    server.assert_running();
    drop(clients);
    server.stop_cleanly();
}

#[test]
fn connections_per_address_are_limited_per_address() {
    let (_dir, mut server, metrics) = start(&[("--max-connections-per-ip", "50")]);
    let first = connect_many(server.address(), 80);
    // Loopback answers for all of 127/8: a second address on the same machine.
    let second: Vec<TcpStream> = (0..30)
        .map(|_| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let from = SocketAddr::from(([127, 0, 0, 2], 0));
            socket.bind(&from.into()).unwrap();
            socket.connect(&server.address().into()).unwrap();
            socket.into()
        })
        .collect();
    assert_eq!(wait_for(metrics, REFUSED_PER_IP, 30, HANG_GUARD), 30);
    assert_eq!(wait_held(&first, 50), 50, "50 held from 127.0.0.1");
    assert_eq!(wait_held(&second, 30), 30, "all 30 held from 127.0.0.2");
    answers(&second[29]);
    drop(first);
    // Places are given back: 127.0.0.1 connects again.
    let deadline = Instant::now() + HANG_GUARD;
    while sample(metrics, OPEN) > 30 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut again = Connection::connect(server.address());
    produce_and_fetch(&mut again, "again", 10);
    server.assert_running();
}

/// Sends `frame` one byte every `pause` on a new connection until it is sent or the broker
/// closes the connection; the thread returns how many bytes went out.
fn trickle(address: SocketAddr, frame: Vec<u8>, pause: Duration) -> (TcpStream, JoinHandle<usize>) {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        for byte in frame {
            if writer.write_all(&[byte]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(pause);
        }
        sent
    });
    (stream, sender)
}

/// Waits (at most the hang guard) for the broker to close `stream` without answering;
/// returns how long that took from `since`.
fn closed_after(mut stream: &TcpStream, since: Instant, what: &str) -> Duration {
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        Ok(_) => panic!("{what}: the broker answered"),
        Err(error) => panic!("{what}: not closed ({error})"),
    }
    since.elapsed()
}

/// A Metadata request frame: about 20 bytes.
fn metadata_frame() -> Vec<u8> {
    request_frame(ApiKey::Metadata, 1, 1, &MetadataRequest::default()).unwrap()
}

/// A client producing and fetching in a loop until `until`; the thread returns its rounds.
fn bystander(address: SocketAddr, until: Instant) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut client = Connection::connect(address);
        let mut rounds = 0;
        while Instant::now() < until {
            produce_and_fetch(&mut client, "bystander", 10);
            rounds += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        rounds
    })
}

#[test]
fn frames_sent_a_byte_at_a_time_or_never_finished_are_closed_after_the_request_read_timeout() {
    let timeout = Duration::from_secs(1);
    let (_dir, mut server, metrics) = start(&[("--request-read-timeout-ms", "1000")]);
    let address = server.address();
    let others = bystander(address, Instant::now() + Duration::from_secs(3));
    let frame = metadata_frame();
    let started = Instant::now();
    // 200 ms a byte: the whole frame would take about 4 s.
    let (slow, sender) = trickle(address, frame.clone(), Duration::from_millis(200));
    let mut silent = TcpStream::connect(address).unwrap();
    silent.write_all(&100i32.to_be_bytes()).unwrap();
    let slow_after = closed_after(&slow, started, "a byte at a time");
    let silent_after = closed_after(&silent, started, "a size and then nothing");
    assert!(
        slow_after >= timeout * 9 / 10,
        "closed after {slow_after:?}"
    );
    assert!(
        silent_after >= timeout * 9 / 10,
        "closed after {silent_after:?}"
    );
    let sent = sender.join().unwrap();
    assert!(
        sent < frame.len(),
        "the frame ({} bytes) was never whole: {sent}",
        frame.len()
    );
    assert_eq!(wait_for(metrics, CLOSED_SLOW, 2, HANG_GUARD), 2);
    assert!(
        others.join().unwrap() > 0,
        "the bystander was served meanwhile"
    );
    server.assert_running();
}

/// A client sending ApiVersions every 400 ms until `until`; the thread returns it.
fn pinger(address: SocketAddr, until: Instant) -> JoinHandle<Connection> {
    std::thread::spawn(move || {
        let mut client = Connection::connect(address);
        while Instant::now() < until {
            let response = client.call(&ApiVersionsRequest::default(), 3).unwrap();
            assert_eq!(response.error_code, 0);
            std::thread::sleep(Duration::from_millis(400));
        }
        client
    })
}

#[test]
fn silent_and_never_finished_connections_are_closed_after_the_idle_timeout_and_active_ones_not() {
    let idle = Duration::from_millis(1500);
    let (_dir, mut server, metrics) = start(&[("--connections-max-idle-ms", "1500")]);
    let address = server.address();
    let started = Instant::now();
    // A connection with a request every 400 ms is never idle.
    let active = pinger(address, started + idle * 3);
    let silent = TcpStream::connect(address).unwrap();
    let mut header_only = TcpStream::connect(address).unwrap();
    header_only.write_all(&100i32.to_be_bytes()).unwrap();
    // A 196-byte frame at 300 ms a byte; the request read timeout is 30 s, so here the
    // idle timeout is what closes it.
    let mut long_frame = 196i32.to_be_bytes().to_vec();
    long_frame.resize(200, 0);
    let (slow, _sender) = trickle(address, long_frame, Duration::from_millis(300));
    for (stream, what) in [
        (&silent, "silent"),
        (&header_only, "a size and then nothing"),
        (&slow, "a byte at a time"),
    ] {
        let after = closed_after(stream, started, what);
        assert!(after >= idle * 9 / 10, "{what}: closed after {after:?}");
    }
    let mut active = active.join().unwrap();
    produce_and_fetch(&mut active, "still-active", 10);
    assert_eq!(wait_for(metrics, CLOSED_IDLE, 3, HANG_GUARD), 3);
    server.assert_running();
}

/// What a flooding client managed before the broker stopped taking its bytes.
struct Flood {
    stream: TcpStream,
    requests: usize,
    blocked: bool,
}

/// Sends `frame(i)` for i = 0, 1, … on a new connection without ever reading, until a
/// write makes no progress for a second (the broker stopped reading and the socket
/// buffers are full) or `requests_max` are sent.
fn flood(
    address: SocketAddr,
    requests_max: usize,
    frame: impl Fn(usize) -> Vec<u8> + Send + 'static,
) -> JoinHandle<Flood> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut requests = 0;
        let mut blocked = false;
        while requests < requests_max {
            match stream.write_all(&frame(requests)) {
                Ok(()) => requests += 1,
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    blocked = true;
                    break;
                }
                Err(error) => panic!("flooding: {error}"),
            }
        }
        Flood {
            stream,
            requests,
            blocked,
        }
    })
}

/// A Fetch of everything from `offset` on `partitions` of `topic`: `max_bytes` and every
/// `partition_max_bytes` at i32::MAX.
fn fetch_everything(topic: &str, partitions: i32, offset: i64) -> FetchRequest {
    let partitions = (0..partitions)
        .map(|partition| {
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(i32::MAX)
        })
        .collect();
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(i32::MAX)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(partitions)])
}

/// Fills `partitions` partitions of a new `topic` with `batches` batches of one record
/// of `value_bytes` each.
fn fill(client: &mut Connection, topic: &str, partitions: i32, batches: usize, value_bytes: usize) {
    assert_eq!(client.create_topic(topic, partitions), 0);
    let value = vec![7u8; value_bytes];
    for partition in 0..partitions {
        for _ in 0..batches {
            let answer = client.produce(topic, partition, &[record(None, Some(&value), &[], 1)], 1);
            assert_eq!(answer.error_code, 0, "fill {topic}-{partition}");
        }
    }
}

/// Record bytes in a Fetch response, and whether each partition answered without error.
fn record_bytes(response: &FetchResponse) -> u64 {
    response
        .responses
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|partition| {
            assert_eq!(
                partition.error_code, 0,
                "partition {}",
                partition.partition_index
            );
            partition.records.as_ref().map_or(0, |r| r.len() as u64)
        })
        .sum()
}

#[test]
fn a_client_that_never_reads_its_responses_stops_being_read_and_holds_bounded_memory() {
    const PER_CONNECTION: u64 = 8 << 20;
    const HOSTILE: usize = 4;
    // One shard whose limit two of the four floods fill: the others must still be served
    // (each connection keeps its fair share of the shard).
    let one_shard = ServerOptions {
        shards: 1,
        ..ServerOptions::default()
    };
    let (_dir, mut server, metrics) = start_with(
        one_shard,
        &[
            (
                "--max-in-flight-bytes-per-connection",
                &PER_CONNECTION.to_string(),
            ),
            (
                "--max-in-flight-bytes-per-shard",
                &(2 * PER_CONNECTION).to_string(),
            ),
            ("--batch-cache-bytes", &(16u64 << 20).to_string()),
            ("--connections-max-idle-ms", "10000"),
        ],
    );
    let address = server.address();
    let mut client = Connection::connect(address);
    // 4 partitions of 24 batches of 512 KiB: 48 MiB, three times the batch cache.
    fill(&mut client, "big", 4, 24, 512 << 10);
    let before = server.memory_kib();
    let fetchers: Vec<_> = (0..HOSTILE)
        .map(|connection| {
            flood(address, 1_000_000, move |i| {
                // Each asks for everything from a different batch: fresh reads, no sharing.
                let offset = ((i + connection * 7) % 24) as i64;
                let request = fetch_everything("big", 4, offset);
                request_frame(ApiKey::Fetch, FETCH_VERSION, i as i32, &request).unwrap()
            })
        })
        .collect();
    let batch = encode_batch(&[record(None, Some(&[1u8; 1024]), &[], 1)]);
    let producer = flood(address, 20_000, move |i| {
        let request = produce_request("flooded", 0, batch.clone(), 1);
        request_frame(ApiKey::Produce, 9, i as i32, &request).unwrap()
    });
    let floods: Vec<Flood> = fetchers.into_iter().map(|f| f.join().unwrap()).collect();
    for flood in &floods {
        assert!(
            flood.blocked,
            "a fetch flood was taken whole: {} requests",
            flood.requests
        );
    }
    let during = server.memory_kib();
    let samples = scrape(metrics);
    let in_flight = samples.value(IN_FLIGHT);
    let requests: Vec<usize> = floods.iter().map(|flood| flood.requests).collect();
    eprintln!(
        "never-read floods: requests sent before blocking {requests:?}; broker memory \
         before {before:?}, during {during:?}; {in_flight} bytes in flight"
    );
    let grown_mib = during.resident_kib.saturating_sub(before.resident_kib) / 1024;
    assert!(
        grown_mib < 256,
        "the broker grew by {grown_mib} MiB under {HOSTILE} connections that never read \
         (before {before:?}, during {during:?})"
    );
    // Each connection holds at most its limit and one batch over.
    let bound = HOSTILE as u64 * (PER_CONNECTION + (1 << 20));
    assert!(
        in_flight <= bound,
        "{in_flight} bytes in flight, bound {bound}"
    );
    assert!(
        samples.value(READS_PAUSED) >= HOSTILE as u64,
        "the fetch floods were paused"
    );
    // Others are served while the floods are held, before the idle timeout frees them.
    produce_and_fetch(&mut client, "beside-the-floods", 100);
    let mut fetched = Connection::connect(address);
    let response = fetched
        .call(&fetch_everything("big", 4, 0), FETCH_VERSION)
        .unwrap();
    assert!(record_bytes(&response) > 0);
    assert_eq!(
        sample(metrics, CLOSED_STALLED),
        0,
        "served only once the floods were closed"
    );
    // The stalled connections are closed after the idle timeout.
    let stalled = wait_for(metrics, CLOSED_STALLED, HOSTILE as u64, HANG_GUARD);
    assert!(
        stalled >= HOSTILE as u64,
        "{stalled} stalled connections closed"
    );
    let producer = producer.join().unwrap();
    assert!(producer.requests > 0);
    drop((floods, producer.stream));
    server.assert_running();
    server.stop_cleanly();
}

/// A Produce request (acks=1, partition 0 of `topic`, correlation id 1) with one record
/// whose value makes the frame, size prefix excluded, exactly `size` bytes; and the
/// value's length.
fn produce_frame_of(topic: &str, size: usize) -> (Vec<u8>, usize) {
    let frame_for = |value_bytes: usize| {
        let batch = encode_batch(&[record(None, Some(&vec![3u8; value_bytes]), &[], 1)]);
        let request = produce_request(topic, 0, batch, 1);
        request_frame(ApiKey::Produce, 9, 1, &request).unwrap()
    };
    let mut value_bytes = size - 200;
    for _ in 0..8 {
        let frame = frame_for(value_bytes);
        let body = frame.len() - 4;
        if body == size {
            return (frame, value_bytes);
        }
        // Varint lengths grow by a byte now and then: step towards the size again.
        value_bytes = (value_bytes as i64 + size as i64 - body as i64) as usize;
    }
    panic!("no value length gives a {size}-byte frame");
}

#[test]
fn a_request_of_max_request_bytes_is_served_and_one_byte_more_is_refused_unread() {
    let max = 1 << 20;
    let (_dir, mut server, metrics) = start(&[("--max-request-bytes", &max.to_string())]);
    let address = server.address();
    let mut client = Connection::connect(address);
    assert_eq!(client.create_topic("sized", 1), 0);
    let (at_limit, value_bytes) = produce_frame_of("sized", max);
    let mut sized = Connection::connect(address);
    sized.send_raw(&at_limit).unwrap();
    let response = sized.receive::<ProduceRequest>(9, 1).unwrap();
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(
        answer.error_code, 0,
        "a frame of exactly max_request_bytes is served"
    );
    let (over, _) = produce_frame_of("sized", max + 1);
    let mut refused = Connection::connect(address);
    // The broker closes the connection once it read the size: the rest may not go out.
    let _ = refused.send_raw(&over);
    refused.assert_closed_by_broker("one byte over max_request_bytes");
    assert_eq!(wait_for(metrics, CLOSED_TOO_LARGE, 1, HANG_GUARD), 1);
    let line = format!(
        "request frame of {} bytes is larger than max_request_bytes ({max})",
        max + 1
    );
    assert_eq!(
        log_lines(&server, &line),
        1,
        "one clear line:\n{}",
        server.log()
    );
    // Only that connection is closed: the others, and new ones, are served.
    let records = sized.fetch_all("sized", 0, 0);
    let values: Vec<_> = records
        .iter()
        .map(|r| r.value.as_ref().map(bytes::Bytes::len))
        .collect();
    assert_eq!(values, [Some(value_bytes)]);
    produce_and_fetch(&mut client, "after", 10);
    server.assert_running();
}

#[test]
fn a_fetch_of_everything_carries_at_most_fetch_max_bytes_and_one_batch() {
    let (_dir, mut server, _metrics) = start(&[]);
    let mut client = Connection::connect(server.address());
    // 24 partitions of 3 MiB: 72 MiB, more than the default 55 MiB.
    fill(&mut client, "everything", 24, 6, 512 << 10);
    let response = client
        .call(&fetch_everything("everything", 24, 0), FETCH_VERSION)
        .unwrap();
    let bytes = record_bytes(&response);
    let batch_max = 513 << 10;
    assert!(
        (50 << 20..=(55 << 20) + batch_max).contains(&bytes),
        "{bytes} record bytes for a fetch of everything"
    );
    for topic in &response.responses {
        for partition in &topic.partitions {
            assert_eq!(
                partition.high_watermark, 6,
                "every partition answers its offsets"
            );
        }
    }
    server.assert_running();
}

#[test]
fn concurrent_fetches_of_everything_hold_memory_within_fetch_max_bytes() {
    const FETCH_MAX: u64 = 4 << 20;
    let (_dir, mut server, _metrics) = start(&[
        ("--fetch-max-bytes", &FETCH_MAX.to_string()),
        ("--batch-cache-bytes", &(8u64 << 20).to_string()),
    ]);
    let address = server.address();
    let mut client = Connection::connect(address);
    // 32 partitions of 2 MiB: 64 MiB, eight times the batch cache.
    fill(&mut client, "wide", 32, 4, 512 << 10);
    let before = server.memory_kib();
    let fetchers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = Connection::connect(address);
                for round in 0..4 {
                    let request = fetch_everything("wide", 32, round);
                    let response = client.call(&request, FETCH_VERSION).unwrap();
                    let bytes = record_bytes(&response);
                    assert!(
                        (1..=FETCH_MAX + (513 << 10)).contains(&bytes),
                        "{bytes} record bytes"
                    );
                }
            })
        })
        .collect();
    for fetcher in fetchers {
        fetcher.join().unwrap();
    }
    let after = server.memory_kib();
    let grown_mib = after.peak_kib.saturating_sub(before.peak_kib) / 1024;
    eprintln!("concurrent fetches of everything: broker memory before {before:?}, after {after:?}");
    assert!(
        grown_mib < 160,
        "8 concurrent fetches of 64 MiB capped at 4 MiB grew the broker by {grown_mib} MiB \
         (before {before:?}, after {after:?})"
    );
    server.assert_running();
}
