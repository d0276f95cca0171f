//! `ringlog-bench hostile`: a hostile or excessive client load held against a running
//! broker for `--duration` seconds, so that `bench/scripts/hostile.sh` can measure what it
//! costs a normal producer beside it. Plain blocking sockets on threads: the load is
//! about what the broker does, not about a fast client.
//!
//! The loads (`--load`):
//! - `idle`: `--connections` connections opened and held, sending nothing;
//! - `header-silence`: each connection sends a request frame's 4-byte size and then
//!   nothing; a connection the broker closes is opened again;
//! - `slowloris`: each connection sends a 1,000-byte frame one byte every
//!   `--byte-interval-ms`, so it never completes within the broker's request read timeout;
//!   closed ones are opened again;
//! - `non-reader`: each connection sends Fetch requests for everything in `--topic`
//!   (`max_bytes` and every `partition_max_bytes` at i32::MAX) as fast as the broker takes
//!   them and never reads a response; closed ones are opened again;
//! - `huge-fetch`: each connection fetches everything in `--topic` (i32::MAX again) in a
//!   loop and reads every response: an excessive but well-behaved consumer.
//!
//! At the end it prints one JSON line: the load, the connections held at the end, the
//! connections opened again, the requests sent and the response bytes read.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::wire::{encode_frame, set_correlation_id, RESPONSE_BYTES_MAX};
use crate::error::{BenchError, IoContext};

/// The last Fetch version that names topics (v13 identifies them by id).
const FETCH_VERSION: i16 = 12;
/// The size a slowloris frame declares: a thousand bytes, a byte at a time.
const SLOW_FRAME_BYTES: usize = 1000;
/// How long a blocked write of a non-reader waits before it tries again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a huge fetch waits for its response before the connection counts as broken.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How often closed connections are looked for (and opened again).
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// `--load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    Idle,
    HeaderSilence,
    Slowloris,
    NonReader,
    HugeFetch,
}

/// Parameters of `hostile`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct HostileArgs {
    /// The broker, `HOST:PORT`.
    #[arg(long)]
    pub bootstrap: String,
    #[arg(long, value_enum)]
    pub load: Load,
    /// Connections of the load.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Seconds to hold the load.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// `slowloris`: milliseconds between two bytes of a connection.
    #[arg(long, default_value_t = 100)]
    pub byte_interval_ms: u64,
    /// `non-reader` and `huge-fetch`: the topic fetched (it must exist).
    #[arg(long, default_value = "hostile-data")]
    pub topic: String,
    /// `non-reader` and `huge-fetch`: its partitions.
    #[arg(long, default_value_t = 16)]
    pub partitions: i32,
}

/// What the load did, printed at the end.
#[derive(Debug, Default, Serialize)]
struct Tally {
    load: Option<Load>,
    held_at_end: u64,
    reopened: u64,
    requests: u64,
    response_bytes: u64,
}

/// Counters the load's threads share.
#[derive(Debug, Default)]
struct Counters {
    reopened: AtomicU64,
    requests: AtomicU64,
    response_bytes: AtomicU64,
}

pub fn run(args: &HostileArgs) -> Result<(), BenchError> {
    let address = args
        .bootstrap
        .to_socket_addrs()
        .context(|| format!("resolving {}", args.bootstrap))?
        .next()
        .ok_or_else(|| BenchError::InvalidArguments(format!("{}: no address", args.bootstrap)))?;
    let until = Instant::now() + Duration::from_secs_f64(args.duration);
    let counters = Arc::new(Counters::default());
    let held = match args.load {
        Load::Idle => idle(address, args.connections, until)?,
        Load::HeaderSilence | Load::Slowloris => trickle(address, args, until, &counters)?,
        Load::NonReader | Load::HugeFetch => fetchers(address, args, until, &counters)?,
    };
    let tally = Tally {
        load: Some(args.load),
        held_at_end: held,
        reopened: counters.reopened.load(Ordering::Relaxed),
        requests: counters.requests.load(Ordering::Relaxed),
        response_bytes: counters.response_bytes.load(Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&tally)?);
    Ok(())
}

fn connect(address: SocketAddr) -> Result<TcpStream, BenchError> {
    TcpStream::connect(address).context(|| format!("connecting to {address}"))
}

/// Opens `count` connections and holds them until `until`; how many are still open then.
fn idle(address: SocketAddr, count: usize, until: Instant) -> Result<u64, BenchError> {
    let connections = (0..count)
        .map(|_| connect(address))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("hostile idle: {count} connections open");
    sleep_until(until);
    Ok(connections.iter().filter(|c| is_open(c)).count() as u64)
}

/// Whether the broker still holds `stream` open: no end of stream (unread responses
/// may wait).
fn is_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = match stream.peek(&mut byte) {
        Ok(read) => read > 0,
        Err(e) => e.kind() == ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    open
}

fn sleep_until(until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    std::thread::sleep(left);
}

/// One connection of a trickling load: its socket and how much of its frame went out.
struct Trickle {
    stream: TcpStream,
    sent: usize,
}

/// `header-silence` and `slowloris`: every connection sends the start of a frame (all of
/// the size, then a byte per interval for slowloris); a connection the broker closed is
/// opened again.
fn trickle(
    address: SocketAddr,
    args: &HostileArgs,
    until: Instant,
    counters: &Counters,
) -> Result<u64, BenchError> {
    let mut frame = u32::try_from(SLOW_FRAME_BYTES - 4)
        .unwrap_or_default()
        .to_be_bytes()
        .to_vec();
    frame.resize(SLOW_FRAME_BYTES, 0);
    let open = |counters: &Counters| -> Result<Trickle, BenchError> {
        let mut stream = connect(address)?;
        stream.set_nodelay(true).context(|| "TCP_NODELAY".into())?;
        // The size goes out whole: the broker has a frame begun from the start.
        stream
            .write_all(&frame[..4])
            .context(|| "sending a frame size".into())?;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Trickle { stream, sent: 4 })
    };
    let mut connections = (0..args.connections)
        .map(|_| open(counters))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "hostile {:?}: {} connections open",
        args.load,
        connections.len()
    );
    let interval = match args.load {
        Load::Slowloris => Duration::from_millis(args.byte_interval_ms),
        _ => CHECK_INTERVAL,
    };
    while Instant::now() < until {
        std::thread::sleep(interval);
        for connection in &mut connections {
            let alive = match args.load {
                Load::Slowloris if connection.sent < frame.len() => {
                    let byte = &frame[connection.sent..=connection.sent];
                    let written = connection.stream.write_all(byte).is_ok();
                    connection.sent += 1;
                    written && is_open(&connection.stream)
                }
                _ => is_open(&connection.stream),
            };
            if !alive {
                *connection = open(counters)?;
                counters.reopened.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(connections.iter().filter(|c| is_open(&c.stream)).count() as u64)
}

/// A Fetch of everything in `topic`: `max_bytes` and every partition's at i32::MAX.
fn fetch_everything(topic: &str, partitions: i32) -> FetchRequest {
    let partitions = (0..partitions)
        .map(|partition| {
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_partition_max_bytes(i32::MAX)
        })
        .collect();
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(i32::MAX)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(partitions)])
}

/// `non-reader` and `huge-fetch`: a thread per connection.
fn fetchers(
    address: SocketAddr,
    args: &HostileArgs,
    until: Instant,
    counters: &Arc<Counters>,
) -> Result<u64, BenchError> {
    let frame = encode_frame(
        &fetch_everything(&args.topic, args.partitions),
        FETCH_VERSION,
    )?;
    let threads: Vec<_> = (0..args.connections)
        .map(|_| {
            let (frame, counters, load) = (frame.clone(), counters.clone(), args.load);
            std::thread::spawn(move || fetcher(address, frame, load, until, &counters))
        })
        .collect();
    eprintln!("hostile {:?}: {} connections", args.load, threads.len());
    let mut held = 0;
    for thread in threads {
        held += u64::from(
            thread
                .join()
                .map_err(|_| BenchError::ThreadPanicked("fetcher"))??,
        );
    }
    Ok(held)
}

/// One fetching connection until `until`; whether it is open at the end.
fn fetcher(
    address: SocketAddr,
    mut frame: Vec<u8>,
    load: Load,
    until: Instant,
    counters: &Counters,
) -> Result<bool, BenchError> {
    let open = |counters: &Counters| -> Result<TcpStream, BenchError> {
        let stream = connect(address)?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .context(|| "write timeout".into())?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .context(|| "read timeout".into())?;
        counters.reopened.fetch_add(1, Ordering::Relaxed);
        Ok(stream)
    };
    let mut stream = open(counters)?;
    counters.reopened.fetch_sub(1, Ordering::Relaxed);
    let mut correlation_id = 0;
    let mut response = Vec::new();
    while Instant::now() < until {
        correlation_id += 1;
        set_correlation_id(&mut frame, correlation_id);
        let Some(sent) = send(&mut stream, &frame, until) else {
            stream = open(counters)?;
            continue;
        };
        if !sent {
            break;
        }
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if load == Load::HugeFetch {
            let Ok(read) = read_frame(&mut stream, &mut response) else {
                stream = open(counters)?;
                continue;
            };
            counters
                .response_bytes
                .fetch_add(read as u64, Ordering::Relaxed);
        }
    }
    Ok(is_open(&stream))
}

/// Sends all of `frame`, waiting as long as the broker does not read (up to `until`):
/// `Some(true)` once sent, `Some(false)` if `until` came first, `None` if the connection
/// broke.
fn send(stream: &mut TcpStream, frame: &[u8], until: Instant) -> Option<bool> {
    let mut sent = 0;
    while sent < frame.len() {
        match stream.write(&frame[sent..]) {
            Ok(0) => return None,
            Ok(count) => sent += count,
            // The broker stopped reading: keep the pressure on.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= until {
                    return Some(false);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(true)
}

/// Reads one response frame into `body`; its size.
fn read_frame(stream: &mut TcpStream, body: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let size = usize::try_from(i32::from_be_bytes(size))
        .ok()
        .filter(|&size| size <= RESPONSE_BYTES_MAX)
        .ok_or_else(|| std::io::Error::other("response frame size"))?;
    body.resize(size, 0);
    stream.read_exact(body)?;
    Ok(size)
}
