//! One client connection on one shard: read frames, answer requests, write responses in
//! request order, within the limits a connection is held to.
//!
//! Clients pipeline requests (an acks=all produce waits for an fdatasync; the requests
//! behind it must not wait for it too), so each request is handled by its own task, up to
//! `REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX` at once, and one writer sends the answers in the
//! order the requests came, as the protocol requires. Two produce requests of a connection
//! to the same partition are appended in their order (they reach the partition's queue in
//! the order they were read). A handler encodes its response itself, so the bytes a
//! response holds are known, and charged, before it waits for the writer.
//!
//! Limits (each a configuration key, see `config.rs`):
//! - which connections are taken at all: [`admission`], at accept;
//! - in-flight bytes, per connection and per shard: [`budget`]. The next request's body is
//!   read only once it fits both (or the connection's fair share of the shard's), so a
//!   client that does not read its responses stops being read; and a connection answers
//!   one Fetch at a time;
//! - the request size: a frame larger than `max_request_bytes`, or with a negative size, is
//!   refused as soon as its 4-byte size is read, before its body is received or memory is
//!   set aside for it, with a log line naming both sizes, and the connection is closed;
//! - time: [`deadline`]. A connection idle for `connections_max_idle_ms`, whose responses
//!   go unread that long, or whose request frame takes longer than
//!   `request_read_timeout_ms` from its first byte, is shut down.
//!
//! A request that does not decode closes the connection with a log line (as Kafka does),
//! after the answers to the requests before it, except an ApiVersions request of an unknown
//! version, which gets UNSUPPORTED_VERSION and the supported list.
//!
//! Every answered request is counted in `metrics` (bytes in and out, errors, latency), and
//! every connection closed for a limit in [`CLOSED_FOR_LIMIT`].

pub mod admission;
pub mod budget;
pub mod deadline;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::{mpsc, oneshot};
use futures::future::{select, Either};
use futures::{SinkExt, StreamExt};
use kafka_protocol::messages::{ApiKey, ResponseKind};
use ringlog_engine::rt::{self, IoBuf, Pipe, TcpStream};

use crate::broker::Broker;
use crate::handlers::api_versions;
use crate::limits::{IDLE_BUFFER_BYTES, REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX};
use crate::metrics;
use crate::protocol::{self, DecodeError, FrameSizeError, Framed, FRAME_SIZE_PREFIX_BYTES};
use crate::server::Lifecycle;
use crate::zero_copy::{Part, Parts, Records};

pub use admission::{Admitted, ConnectionLimits, Refusal};
pub use budget::{Budget, Charge, FetchTurn, FetchTurnHeld};
use deadline::{Activity, Expired, Paused, Timeouts};

/// Connections the broker closed for a limit, by reason (the metric's label): idle,
/// responses unread, a request frame too slow, a request frame too large.
pub static CLOSED_FOR_LIMIT: [(&str, AtomicU64); 4] = [
    ("idle", AtomicU64::new(0)),
    ("stalled", AtomicU64::new(0)),
    ("request_read_timeout", AtomicU64::new(0)),
    ("request_too_large", AtomicU64::new(0)),
];

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("peer closed the connection")]
    Peer,
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("negative request frame size {size}")]
    FrameSizeNegative { size: i32 },
    #[error(
        "request frame of {size} bytes is larger than max_request_bytes ({max}); refused \
         unread"
    )]
    FrameTooLarge { size: usize, max: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("could not encode the response: {0}")]
    Encode(String),
    #[error("a fetch response's record markers were not where they must be (a bug)")]
    Markers,
    #[error(transparent)]
    Expired(#[from] Expired),
}

impl Closed {
    /// The [`CLOSED_FOR_LIMIT`] label of a close for a limit.
    fn limit_label(&self) -> Option<&'static str> {
        match self {
            Closed::Expired(expired) => Some(expired.label()),
            Closed::FrameTooLarge { .. } => Some("request_too_large"),
            _ => None,
        }
    }
}

/// Serves one accepted connection until it closes; `admitted` is its place among the
/// connections (given back at the end).
pub async fn serve(stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>, admitted: Admitted) {
    let _ = stream.set_nodelay(true);
    let config = &broker.config;
    let budget = Budget::new(
        config.max_in_flight_bytes_per_connection,
        config.max_in_flight_bytes_per_shard,
    );
    let timeouts = Timeouts {
        idle: Duration::from_millis(config.connections_max_idle_ms),
        request_read: Duration::from_millis(config.request_read_timeout_ms),
    };
    let activity = Rc::new(Activity::new(Instant::now()));
    // Requests are read and handled concurrently (a pipelining client keeps several in
    // flight: an acks=all produce waits for an fdatasync, and the next request must not
    // wait behind it); one writer sends the answers in request order.
    let (answers, in_order) = mpsc::channel(REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX);
    let writer = rt::spawn_local(write_answers(stream.clone(), in_order, activity.clone()));
    let work = async {
        let read = read_requests(&stream, peer, &broker, answers, &budget, &activity).await;
        let written = writer.await.unwrap_or(Ok(()));
        read.and(written)
    };
    let ended = match select(pin!(work), pin!(deadline::watch(&activity, timeouts))).await {
        Either::Left((ended, _)) => ended,
        Either::Right((expired, _)) => {
            // The receive and any send fail at once; the writer ends on its own and the
            // charges of unwritten responses go with it.
            let _ = stream.shutdown(Shutdown::Both);
            Err(expired.into())
        }
    };
    if let Err(closed) = &ended {
        if let Some(label) = closed.limit_label() {
            if let Some((_, count)) = CLOSED_FOR_LIMIT.iter().find(|(l, _)| *l == label) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    match ended {
        Ok(()) | Err(Closed::Peer) => tracing::debug!(%peer, "connection closed"),
        // Timeouts can close thousands of connections at once: counted, not logged each.
        Err(Closed::Expired(expired)) => tracing::debug!(%peer, %expired, "closing connection"),
        Err(error) => tracing::warn!(%peer, %error, "closing connection"),
    }
    let _ = stream.shutdown(Shutdown::Both);
    drop(admitted);
}

/// A request being answered: its handler runs as its own task.
type Answer = rt::JoinHandle<()>;

/// A response as the writer sends it.
enum Encoded {
    /// Produce with acks=0: nothing is sent.
    Nothing,
    /// A whole frame.
    Frame(Bytes),
    /// A fetch response: encoded pieces and the record bytes between them.
    Parts(Parts),
}

impl Encoded {
    fn len(&self) -> u64 {
        match self {
            Encoded::Nothing => 0,
            Encoded::Frame(frame) => frame.len() as u64,
            Encoded::Parts(parts) => parts.0.iter().map(Part::len).sum(),
        }
    }
}

/// What the writer needs of one answered request.
struct Reply {
    api: ApiKey,
    response: Result<Encoded, Closed>,
    failed: bool,
    received: Instant,
    request_bytes: usize,
    /// The request's frame and the response, charged until the response is written.
    _charges: (Charge, Charge),
    /// A Fetch's turn, held until its response is written.
    _fetch_turn: Option<FetchTurnHeld>,
}

/// Reads frames and starts a handler for each; stops at the first bad frame (after the
/// answers of the requests before it) or when the writer is gone.
async fn read_requests(
    stream: &TcpStream,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    mut answers: mpsc::Sender<oneshot::Receiver<Reply>>,
    budget: &Budget,
    activity: &Rc<Activity>,
) -> Result<(), Closed> {
    let max = broker.config.max_request_bytes;
    let mut input = BytesMut::with_capacity(IDLE_BUFFER_BYTES);
    let fetch_turn = FetchTurn::default();
    loop {
        let (frame, frame_charge) = read_frame(stream, &mut input, max, budget, activity).await?;
        let received = Instant::now();
        activity.request_read(received, !input.is_empty());
        let request_bytes = FRAME_SIZE_PREFIX_BYTES + frame.len();
        if broker.lifecycle.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let request = match protocol::decode_request(frame) {
            Ok(request) => Ok(request),
            Err(DecodeError::UnsupportedVersion {
                api: ApiKey::ApiVersions,
                correlation_id,
                ..
            }) => Err(correlation_id),
            Err(error) => return Err(error.into()),
        };
        let (reply, replied) = oneshot::channel();
        // With every request slot taken, or a Fetch waiting for the one before it, the
        // reader waits here: not reading either.
        activity.set_paused(Paused::ForConnection, received);
        if answers.send(replied).await.is_err() {
            return Ok(());
        }
        let fetch_turn = match &request {
            Ok(request) if request.api_key == ApiKey::Fetch => {
                if fetch_turn.is_taken() {
                    budget::READS_PAUSED.fetch_add(1, Ordering::Relaxed);
                }
                Some(fetch_turn.take().await)
            }
            _ => None,
        };
        activity.set_paused(Paused::No, Instant::now());
        activity.handler_started();
        let working = Working(activity.clone());
        let (broker, budget) = (broker.clone(), budget.clone());
        let handler: Answer = rt::spawn_local(async move {
            let _in_flight = InFlight::enter(&broker.lifecycle);
            let (header, answer) = match request {
                Ok(request) => {
                    let header = (
                        request.api_key,
                        request.version,
                        request.header.correlation_id,
                    );
                    (header, broker.handle(request, peer, &budget).await)
                }
                Err(correlation_id) => {
                    let response = ResponseKind::ApiVersions(api_versions::unsupported());
                    (
                        (ApiKey::ApiVersions, 0, correlation_id),
                        Some((response, Vec::new())),
                    )
                }
            };
            let failed = answer
                .as_ref()
                .is_some_and(|(response, _)| metrics::has_error(response));
            let response = encode(header, answer);
            let response_bytes = response.as_ref().map_or(0, Encoded::len);
            let response_charge = budget.charge(response_bytes);
            drop(working);
            let _ = reply.send(Reply {
                api: header.0,
                response,
                failed,
                received,
                request_bytes,
                _charges: (frame_charge, response_charge),
                _fetch_turn: fetch_turn,
            });
        });
        handler.detach();
    }
}

/// Encodes an answer (`header`: API, version, correlation id), splicing the records of a
/// fetch in place of their markers.
fn encode(
    (api, version, correlation_id): (ApiKey, i16, i32),
    answer: Option<(ResponseKind, Vec<Records>)>,
) -> Result<Encoded, Closed> {
    let Some((response, files)) = answer else {
        return Ok(Encoded::Nothing);
    };
    let mut frame = BytesMut::with_capacity(IDLE_BUFFER_BYTES);
    protocol::encode_response(api, version, correlation_id, &response, &mut frame)
        .map_err(|error| Closed::Encode(format!("{error:#}")))?;
    if files.is_empty() {
        return Ok(Encoded::Frame(frame.freeze()));
    }
    let parts = Parts::split(&frame, files, version).ok_or(Closed::Markers)?;
    Ok(Encoded::Parts(parts))
}

/// Sends the answers in request order.
async fn write_answers(
    stream: TcpStream,
    mut in_order: mpsc::Receiver<oneshot::Receiver<Reply>>,
    activity: Rc<Activity>,
) -> Result<(), Closed> {
    // The pipe zero-copy fetches splice through, made on the first one.
    let mut pipe = None;
    while let Some(replied) = in_order.next().await {
        // A handler that never answers was dropped with the runtime: stop.
        let Ok(reply) = replied.await else {
            return Ok(());
        };
        let response_bytes = match reply.response? {
            Encoded::Nothing => 0,
            Encoded::Frame(frame) => {
                let len = frame.len() as u64;
                let (sent, _) = stream.send_all(frame).await;
                sent?;
                len
            }
            Encoded::Parts(parts) => {
                let len = parts.0.iter().map(Part::len).sum();
                let pipe = match &pipe {
                    Some(pipe) => pipe,
                    None => pipe.insert(Pipe::new()?),
                };
                parts.send(&stream, pipe).await?;
                len
            }
        };
        metrics::record_request(
            reply.api,
            reply.request_bytes,
            response_bytes,
            reply.failed,
            reply.received.elapsed(),
        );
        activity.answered(Instant::now());
    }
    Ok(())
}

/// Counts a request as in flight while it lives.
struct InFlight<'a>(&'a Lifecycle);

impl<'a> InFlight<'a> {
    fn enter(lifecycle: &'a Lifecycle) -> InFlight<'a> {
        lifecycle.requests_in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(lifecycle)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.requests_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A handler at work, as the connection's [`Activity`] knows it, until dropped (also when
/// its task is dropped with the runtime).
struct Working(Rc<Activity>);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.handler_done(Instant::now());
    }
}

/// Reads the next frame's bytes (without the size prefix), charged to `budget` from the
/// moment its size is known: its body is received only once it fits the connection's and
/// the shard's in-flight bytes (until then the connection is not read).
async fn read_frame(
    stream: &TcpStream,
    input: &mut BytesMut,
    max: usize,
    budget: &Budget,
    activity: &Activity,
) -> Result<(Bytes, Charge), Closed> {
    // The size prefix is judged as soon as it is whole (`protocol::frame_size`, which the
    // `frame` fuzz target drives through `protocol::take_frame`), before any of the body
    // is waited for.
    let size = loop {
        match protocol::frame_size(input, max) {
            Ok(Some(size)) => break size,
            Ok(None) => fill(stream, input, FRAME_SIZE_PREFIX_BYTES, activity).await?,
            Err(FrameSizeError { size, max }) => {
                return Err(match usize::try_from(size) {
                    Ok(size) => Closed::FrameTooLarge { size, max },
                    Err(_) => Closed::FrameSizeNegative { size },
                })
            }
        }
    };
    let bytes = (FRAME_SIZE_PREFIX_BYTES + size) as u64;
    let waited = budget
        .admit(bytes, |waited| {
            let paused = match waited {
                budget::Waited::Shard => Paused::ForShard,
                _ => Paused::ForConnection,
            };
            activity.set_paused(paused, Instant::now());
        })
        .await;
    if waited != budget::Waited::No {
        activity.set_paused(Paused::No, Instant::now());
    }
    let charge = budget.charge(bytes);
    fill(stream, input, FRAME_SIZE_PREFIX_BYTES + size, activity).await?;
    match protocol::take_frame(input, max) {
        Ok(Framed::Frame(frame)) => Ok((frame, charge)),
        framed => unreachable!("a whole frame of {size} bytes was received: {framed:?}"),
    }
}

/// Receives until `input` holds at least `want` bytes.
async fn fill(
    stream: &TcpStream,
    input: &mut BytesMut,
    want: usize,
    activity: &Activity,
) -> Result<(), Closed> {
    while input.len() < want {
        input.reserve((want - input.len()).max(IDLE_BUFFER_BYTES));
        let buffer = std::mem::take(input);
        let start = buffer.len();
        let end = buffer.capacity();
        let (received, slice) = stream.recv(buffer.slice(start..end)).await;
        *input = slice.into_inner();
        if received? == 0 {
            return Err(Closed::Peer);
        }
        activity.frame_begun(Instant::now());
    }
    Ok(())
}
