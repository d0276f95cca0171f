//! One client connection on one shard: read frames, answer requests, write responses in
//! request order.
//!
//! Clients pipeline requests (an acks=all produce waits for an fdatasync; the requests
//! behind it must not wait for it too), so each request is handled by its own task, up to
//! `REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX` at once, and one writer sends the answers in the
//! order the requests came, as the protocol requires. Two produce requests of a connection
//! to the same partition are appended in their order (they reach the partition's queue in
//! the order they were read). A frame larger than
//! `max_request_bytes`, a negative size, or a request that does not decode closes the
//! connection with a log line (as Kafka does), except an ApiVersions request of an unknown
//! version, which gets UNSUPPORTED_VERSION and the supported list.
//!
//! Every answered request is counted in `metrics` (bytes in and out, errors, latency).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures::channel::{mpsc, oneshot};
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

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("peer closed the connection")]
    Peer,
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("frame size {size} outside 0..={max}")]
    FrameSize { size: i64, max: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("could not encode the response: {0}")]
    Encode(String),
    #[error("a fetch response's record markers were not where they must be (a bug)")]
    Markers,
}

pub async fn serve(stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>) {
    let _ = stream.set_nodelay(true);
    // Requests are read and handled concurrently (a pipelining client keeps several in
    // flight: an acks=all produce waits for an fdatasync, and the next request must not
    // wait behind it); one writer sends the answers in request order.
    let (answers, in_order) = mpsc::channel(REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX);
    let writer = rt::spawn_local(write_answers(stream.clone(), in_order));
    let read = read_requests(&stream, peer, &broker, answers).await;
    let written = writer.await.unwrap_or(Ok(()));
    match read.and(written) {
        Ok(()) | Err(Closed::Peer) => tracing::debug!(%peer, "connection closed"),
        Err(error) => tracing::warn!(%peer, %error, "closing connection"),
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A request being answered: its handler runs as its own task.
type Answer = rt::JoinHandle<Result<(), Closed>>;

/// What the writer needs of one answered request.
struct Reply {
    header: (ApiKey, i16, i32),
    answer: Option<(ResponseKind, Vec<Records>)>,
    received: Instant,
    request_bytes: usize,
}

/// Reads frames and starts a handler for each; stops at the first bad frame (after the
/// answers of the requests before it) or when the writer is gone.
async fn read_requests(
    stream: &TcpStream,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    mut answers: mpsc::Sender<oneshot::Receiver<Reply>>,
) -> Result<(), Closed> {
    let max = broker.config.max_request_bytes;
    let mut input = BytesMut::with_capacity(IDLE_BUFFER_BYTES);
    loop {
        let frame = read_frame(stream, &mut input, max).await?;
        let received = Instant::now();
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
        if answers.send(replied).await.is_err() {
            return Ok(());
        }
        let broker = broker.clone();
        let handler: Answer = rt::spawn_local(async move {
            let _in_flight = InFlight::enter(&broker.lifecycle);
            let (header, answer) = match request {
                Ok(request) => {
                    let header = (
                        request.api_key,
                        request.version,
                        request.header.correlation_id,
                    );
                    (header, broker.handle(request, peer).await)
                }
                Err(correlation_id) => {
                    let response = ResponseKind::ApiVersions(api_versions::unsupported());
                    (
                        (ApiKey::ApiVersions, 0, correlation_id),
                        Some((response, Vec::new())),
                    )
                }
            };
            let _ = reply.send(Reply {
                header,
                answer,
                received,
                request_bytes,
            });
            Ok(())
        });
        handler.detach();
    }
}

/// Sends the answers in request order.
async fn write_answers(
    stream: TcpStream,
    mut in_order: mpsc::Receiver<oneshot::Receiver<Reply>>,
) -> Result<(), Closed> {
    let mut outgoing = Outgoing {
        output: BytesMut::with_capacity(IDLE_BUFFER_BYTES),
        pipe: None,
    };
    while let Some(replied) = in_order.next().await {
        // A handler that never answers was dropped with the runtime: stop.
        let Ok(reply) = replied.await else {
            return Ok(());
        };
        let (failed, response_bytes) = match reply.answer {
            Some((response, files)) => {
                let failed = metrics::has_error(&response);
                let sent = outgoing
                    .send(&stream, reply.header, &response, files)
                    .await?;
                (failed, sent)
            }
            // Produce with acks=0: no response.
            None => (false, 0),
        };
        let latency = reply.received.elapsed();
        metrics::record_request(
            reply.header.0,
            reply.request_bytes,
            response_bytes,
            failed,
            latency,
        );
    }
    Ok(())
}

/// A connection's response buffer, and the pipe zero-copy fetches splice through (made on
/// the first one).
struct Outgoing {
    output: BytesMut,
    pipe: Option<Pipe>,
}

impl Outgoing {
    /// Encodes and sends one response (`header`: API, version, correlation id), splicing
    /// `files` in place of their markers; returns the bytes sent.
    async fn send(
        &mut self,
        stream: &TcpStream,
        (api, version, correlation_id): (ApiKey, i16, i32),
        response: &ResponseKind,
        files: Vec<Records>,
    ) -> Result<u64, Closed> {
        self.output.clear();
        protocol::encode_response(api, version, correlation_id, response, &mut self.output)
            .map_err(|error| Closed::Encode(format!("{error:#}")))?;
        if !files.is_empty() {
            let parts = Parts::split(&self.output, files, version).ok_or(Closed::Markers)?;
            let len = parts.0.iter().map(Part::len).sum();
            let pipe = match &self.pipe {
                Some(pipe) => pipe,
                None => self.pipe.insert(Pipe::new()?),
            };
            parts.send(stream, pipe).await?;
            return Ok(len);
        }
        let buffer = std::mem::take(&mut self.output);
        let len = buffer.len() as u64;
        let (sent, buffer) = stream.send_all(buffer).await;
        self.output = buffer;
        sent?;
        Ok(len)
    }
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

/// Reads the next frame's bytes (without the size prefix).
async fn read_frame(
    stream: &TcpStream,
    input: &mut BytesMut,
    max: usize,
) -> Result<bytes::Bytes, Closed> {
    loop {
        let framed = protocol::take_frame(input, max).map_err(|FrameSizeError { size, max }| {
            Closed::FrameSize {
                size: i64::from(size),
                max,
            }
        })?;
        match framed {
            Framed::Frame(frame) => return Ok(frame),
            Framed::Need(want) => fill(stream, input, want).await?,
        }
    }
}

/// Receives until `input` holds at least `want` bytes.
async fn fill(stream: &TcpStream, input: &mut BytesMut, want: usize) -> Result<(), Closed> {
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
    }
    Ok(())
}
