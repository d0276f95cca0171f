//! Kafka framing for the load's connections: requests encoded once into whole frames (the
//! correlation id patched in place per send), and responses read off a runtime
//! `TcpStream` frame by frame.
//!
//! Request frame: `size: i32` (bytes after it), then the request header, whose first
//! fields are fixed in every header version:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | size |
//! | 4 | 2 | request_api_key |
//! | 6 | 2 | request_api_version |
//! | 8 | 4 | correlation_id |
//!
//! Responses are read into one reused buffer; a frame larger than half of it (a fetch's
//! records) is received straight into a second buffer sized to it, so its bytes are
//! copied only by the kernel; that buffer is reused for the next large frame once the
//! previous one is dropped.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use ringlog_engine::rt::{IoBuf, TcpStream};

use crate::error::{BenchError, IoContext};

/// Where the correlation id sits in a request frame (table above).
pub const CORRELATION_ID_AT: usize = 8;
/// The client id in every request header.
const CLIENT_ID: &str = "ringlog-bench";
/// The largest response frame accepted.
pub const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// The reused receive buffer of a connection.
const RECEIVE_BUFFER_BYTES: usize = 256 << 10;

/// `R`'s API key.
pub fn api_key<R: Request>() -> ApiKey {
    match ApiKey::try_from(R::KEY) {
        Ok(api) => api,
        Err(()) => unreachable!("kafka-protocol request type with unknown key {}", R::KEY),
    }
}

/// One whole request frame (size prefix, header, body) with correlation id 0.
pub fn encode_frame<R: Request>(request: &R, version: i16) -> Result<Vec<u8>, BenchError> {
    let api = api_key::<R>();
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0; 4]);
    header
        .encode(&mut frame, api.request_header_version(version))
        .map_err(|error| encode_error(api, version, &error))?;
    request
        .encode(&mut frame, version)
        .map_err(|error| encode_error(api, version, &error))?;
    let size = u32::try_from(frame.len() - 4)
        .map_err(|_| BenchError::Broker(format!("{api:?} request of {} bytes", frame.len())))?;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame.to_vec())
}

/// Sets the correlation id of an encoded frame.
pub fn set_correlation_id(frame: &mut [u8], correlation_id: i32) {
    frame[CORRELATION_ID_AT..CORRELATION_ID_AT + 4].copy_from_slice(&correlation_id.to_be_bytes());
}

/// Decodes a response frame's body: checks it answers `correlation_id`.
pub fn decode_response<R: Request>(
    mut body: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response, BenchError> {
    let api = api_key::<R>();
    let bad = |detail: String| BenchError::Broker(format!("{api:?} v{version} response: {detail}"));
    let header = ResponseHeader::decode(&mut body, api.response_header_version(version))
        .map_err(|error| bad(format!("{error:#}")))?;
    if header.correlation_id != correlation_id {
        return Err(bad(format!(
            "correlation id {} answers request {correlation_id}",
            header.correlation_id
        )));
    }
    R::Response::decode(&mut body, version).map_err(|error| bad(format!("{error:#}")))
}

/// Reads response frames off one connection.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where large frames are received: handed out frozen, and reused (no fresh pages to
    /// fault in) once the caller has dropped every part of the previous one.
    large: BytesMut,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    /// A reader with an empty receive buffer.
    pub fn new() -> FrameReader {
        FrameReader {
            buf: vec![0; RECEIVE_BUFFER_BYTES],
            start: 0,
            end: 0,
            large: BytesMut::new(),
        }
    }

    /// The next response frame's body (after the size prefix).
    pub async fn next_frame(&mut self, stream: &TcpStream) -> Result<Bytes, BenchError> {
        while self.end - self.start < 4 {
            self.fill(stream).await?;
        }
        let size_bytes: [u8; 4] = self.buf[self.start..self.start + 4]
            .try_into()
            .unwrap_or_default();
        let size = i32::from_be_bytes(size_bytes);
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size <= RESPONSE_BYTES_MAX)
            .ok_or_else(|| BenchError::Broker(format!("response frame size {size}")))?;
        self.start += 4;
        if size > RECEIVE_BUFFER_BYTES / 2 {
            return self.large_frame(stream, size).await;
        }
        while self.end - self.start < size {
            self.fill(stream).await?;
        }
        let body = Bytes::copy_from_slice(&self.buf[self.start..self.start + size]);
        self.start += size;
        Ok(body)
    }

    /// Receives a large frame into the large-frame buffer: what is buffered, then the rest.
    async fn large_frame(&mut self, stream: &TcpStream, size: usize) -> Result<Bytes, BenchError> {
        let buffered = (self.end - self.start).min(size);
        // Reclaims the previous frame's allocation if nothing refers to it any more.
        self.large.clear();
        self.large.reserve(size);
        self.large
            .extend_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        while self.large.len() < size {
            let filled = self.large.len();
            let body = std::mem::take(&mut self.large);
            let (result, slice) = stream.recv(body.slice(filled..size)).await;
            self.large = slice.into_inner();
            if result.context(|| "receiving a response".into())? == 0 {
                return Err(closed());
            }
        }
        Ok(self.large.split().freeze())
    }

    /// Receives more bytes after `end`, moving the unread ones to the front first.
    async fn fill(&mut self, stream: &TcpStream) -> Result<(), BenchError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let buf = std::mem::take(&mut self.buf);
        let capacity = buf.len();
        let (result, slice) = stream.recv(buf.slice(self.end..capacity)).await;
        self.buf = slice.into_inner();
        match result.context(|| "receiving a response".into())? {
            0 => Err(closed()),
            received => {
                self.end += received;
                Ok(())
            }
        }
    }
}

fn closed() -> BenchError {
    BenchError::Broker("the broker closed the connection".into())
}

fn encode_error(api: ApiKey, version: i16, error: &dyn std::fmt::Display) -> BenchError {
    BenchError::Broker(format!("encoding {api:?} v{version}: {error}"))
}
