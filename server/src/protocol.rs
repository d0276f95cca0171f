//! The Kafka wire protocol at ringlog's edge: request framing, header and body decoding,
//! the API versions ringlog implements, and response encoding.
//!
//! A frame is a 4-byte big-endian size followed by that many bytes; the size is checked
//! against `max_request_bytes` before anything is read or allocated. Inside: the request
//! header (its version follows from the API key and version) and the body, decoded with the
//! `kafka-protocol` crate. Record data stays opaque bytes. Responses carry the request's
//! correlation id in a response header of the version the API key and version call for.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Bytes of the size prefix of every frame.
pub const FRAME_SIZE_PREFIX_BYTES: usize = 4;

/// The API versions ringlog implements and tests: `(api, min, max)`. ApiVersions
/// advertises exactly these.
pub const SUPPORTED_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Metadata, 1, 13),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    // After a leader change: librdkafka sends version 2, the Java client 3 and 4.
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    // Consumer groups (classic protocol). Low minimums on purpose: librdkafka, aiokafka,
    // kafkajs and kafka-python 2 stop at JoinGroup v5 / SyncGroup v3, and kafkajs never
    // reads the broker's minimum.
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // The idempotent producer (transactional ids are refused).
    (ApiKey::InitProducerId, 0, 5),
    // Moving partitions between replica sets (a single node answers as a one-broker Kafka).
    // Last, so the fuzz regressions' first API choices still pick the APIs they were
    // found with.
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
];

/// The versions of `api` ringlog implements, if any.
pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_VERSIONS
        .iter()
        .find(|(key, ..)| *key == api)
        .map(|&(_, min, max)| (min, max))
}

/// A frame size prefix outside `0..=max_request_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame size {size} outside 0..={max}")]
pub struct FrameSizeError {
    /// The size the prefix declares.
    pub size: i32,
    /// The largest size accepted (`max_request_bytes`).
    pub max: usize,
}

/// What the front of a connection's input holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// One whole frame, without its size prefix, split off the input.
    Frame(Bytes),
    /// Not a whole frame yet: the input must hold at least this many bytes before the next
    /// call can split one off (or judge its size prefix).
    Need(usize),
}

/// The size of the frame at the front of `input` (without its prefix), once its size
/// prefix is whole (`None` before), checked against `max` (`max_request_bytes`).
pub fn frame_size(input: &[u8], max: usize) -> Result<Option<usize>, FrameSizeError> {
    let Some(prefix) = input.first_chunk::<FRAME_SIZE_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let size = i32::from_be_bytes(*prefix);
    usize::try_from(size)
        .ok()
        .filter(|&len| len <= max)
        .map(Some)
        .ok_or(FrameSizeError { size, max })
}

/// Splits the next frame off the front of `input`, the bytes received on a connection and
/// not yet consumed. The size prefix is checked against `max` (`max_request_bytes`) as soon
/// as it is whole, before the bytes it declares are waited for, so a client cannot make
/// the broker buffer more than `max` bytes of one request. `input` is left untouched
/// unless a frame is returned.
pub fn take_frame(input: &mut BytesMut, max: usize) -> Result<Framed, FrameSizeError> {
    let Some(size) = frame_size(input, max)? else {
        return Ok(Framed::Need(FRAME_SIZE_PREFIX_BYTES));
    };
    let whole = FRAME_SIZE_PREFIX_BYTES + size;
    if input.len() < whole {
        return Ok(Framed::Need(whole));
    }
    let mut frame = input.split_to(whole);
    let _ = frame.split_to(FRAME_SIZE_PREFIX_BYTES);
    Ok(Framed::Frame(frame.freeze()))
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// Why a frame could not become a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Too short to hold a request header's fixed part.
    #[error("frame of {len} bytes is too short for a request header")]
    Truncated { len: usize },
    /// The API key is not one Kafka defines.
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApi { api_key: i16, correlation_id: i32 },
    /// ringlog does not implement this API at this version.
    #[error("{api:?} version {version} is not supported (correlation id {correlation_id})")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    /// The header or body does not decode as the API's schema says.
    #[error("malformed {api:?} v{version} request: {detail}")]
    Malformed {
        api: ApiKey,
        version: i16,
        detail: String,
    },
}

/// Decodes one frame (without its size prefix) into a request.
pub fn decode_request(frame: Bytes) -> Result<Request, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Truncated { len: frame.len() });
    }
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(api_key_raw).map_err(|()| DecodeError::UnknownApi {
        api_key: api_key_raw,
        correlation_id,
    })?;
    let in_range = supported(api_key).is_some_and(|(min, max)| (min..=max).contains(&version));
    if !in_range {
        return Err(DecodeError::UnsupportedVersion {
            api: api_key,
            version,
            correlation_id,
        });
    }
    let malformed = |error: anyhow::Error| DecodeError::Malformed {
        api: api_key,
        version,
        detail: format!("{error:#}"),
    };
    let mut bytes = frame;
    let header = RequestHeader::decode(&mut bytes, api_key.request_header_version(version))
        .map_err(malformed)?;
    let body = RequestKind::decode(api_key, &mut bytes, version).map_err(malformed)?;
    Ok(Request {
        api_key,
        version,
        header,
        body,
    })
}

/// Encodes `response` to `request`'s API and version as one frame (size prefix included)
/// at the end of `out`.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    let start = out.len();
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(out, api_key.response_header_version(version))?;
    response.encode(out, version)?;
    let size = i32::try_from(out.len() - start - FRAME_SIZE_PREFIX_BYTES)?;
    out[start..start + FRAME_SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Produce v3 header and body prefix declaring `i32::MAX` topics in a few bytes: the
    /// decoder must refuse it, not try to allocate for them (which aborted the process
    /// before the vendored kafka-protocol fix).
    #[test]
    fn absurd_array_counts_are_malformed_not_allocated() {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Produce as i16);
        frame.put_i16(3);
        frame.put_i32(7); // correlation id
        frame.put_i16(-1); // client id: null
        frame.put_i16(-1); // transactional id: null
        frame.put_i16(1); // acks
        frame.put_i32(1000); // timeout
        frame.put_i32(i32::MAX); // topic count
        let error = decode_request(frame.freeze()).unwrap_err();
        assert!(
            matches!(
                error,
                DecodeError::Malformed {
                    api: ApiKey::Produce,
                    ..
                }
            ),
            "{error}"
        );
    }

    /// Found by the `request` fuzz target: an unknown tagged field with a tag of 2^31 or
    /// more decoded, but the vendored encoder counted it without writing it, so the request
    /// encoded again did not decode (fixed in `vendor/kafka-protocol`).
    #[test]
    fn tags_above_i32_max_survive_a_round_trip() {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::ApiVersions as i16);
        frame.put_i16(3); // request header v2: with tagged fields
        frame.put_i32(9); // correlation id
        frame.put_i16(1);
        frame.put_slice(b"c"); // client id
        frame.put_slice(&[2, 5, 1, 0x55]); // two tagged fields: tag 5, one byte
        frame.put_slice(&[0x80, 0x80, 0x80, 0x80, 0x08, 1, 0x66]); // tag 2^31, one byte
        frame.put_slice(&[1, 1, 0]); // body: two empty compact strings, no tagged fields
        let request = decode_request(frame.freeze()).unwrap();
        assert_eq!(request.header.unknown_tagged_fields.len(), 2);
        let mut encoded = BytesMut::new();
        request.header.encode(&mut encoded, 2).unwrap();
        request.body.encode(&mut encoded, 3).unwrap();
        let again = decode_request(encoded.freeze()).unwrap();
        assert_eq!(again.header, request.header);
        assert_eq!(again.body, request.body);
    }

    #[test]
    fn unknown_apis_and_versions_are_named() {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Fetch as i16);
        frame.put_i16(99);
        frame.put_i32(5);
        let error = decode_request(frame.freeze()).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::UnsupportedVersion {
                version: 99,
                correlation_id: 5,
                ..
            }
        ));
        let error =
            decode_request(Bytes::from_static(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1])).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::UnknownApi {
                api_key: 0x7f7f,
                ..
            }
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 1])).unwrap_err(),
            DecodeError::Truncated { len: 2 }
        ));
    }
}
