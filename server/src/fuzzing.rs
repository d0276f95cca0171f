//! The properties the wire-protocol fuzz targets check, shared by `fuzz/fuzz_targets/` and
//! by the regression tests below, which replay every input kept in `fuzz/regressions/` on
//! each test run (stable toolchain, no fuzzer).
//!
//! Each function takes the fuzzer's raw bytes and panics when a property fails:
//!
//! - [`frame`]: the bytes are a connection's input stream, received in pieces of a size
//!   taken from the input. Frames are split off exactly as the connection does
//!   ([`protocol::take_frame`]): the same frames whatever the pieces, each within
//!   `max_request_bytes`, together exactly the bytes consumed; every frame's header is
//!   judged consistently with its bytes ([`check_decoded`]).
//! - [`request`]: a request of an API and version the broker advertises, both chosen by
//!   the input, with the rest of the input as header and body. It decodes or is refused as
//!   malformed; a decoded request encodes again and decodes to an equal request.
//!
//! Compiled for tests and with the `fuzzing` feature only.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::protocol::{
    self, decode_request, DecodeError, Framed, Request, FRAME_SIZE_PREFIX_BYTES, SUPPORTED_VERSIONS,
};

/// The `max_request_bytes` a frame input runs with, chosen by its first byte: small limits
/// reach the size check, the last is the broker's default.
const FRAME_MAX_CHOICES: [usize; 6] = [0, 7, 8, 64, 4096, 100 << 20];

/// Checks the connection's framing and header decoding on the stream `data[2..]`; `data[0]`
/// picks `max_request_bytes`, `data[1]` the size of the pieces the stream arrives in (0:
/// all at once).
pub fn frame(data: &[u8]) {
    let [max_choice, piece, stream @ ..] = data else {
        return;
    };
    let max = FRAME_MAX_CHOICES[usize::from(*max_choice) % FRAME_MAX_CHOICES.len()];
    let piece_bytes = if *piece == 0 {
        stream.len().max(1)
    } else {
        usize::from(*piece)
    };
    let whole = split_stream(stream, max, stream.len().max(1));
    let pieces = split_stream(stream, max, piece_bytes);
    assert_eq!(whole, pieces, "framing depends on how the bytes arrived");
    let mut consumed = Vec::new();
    for frame in &whole.frames {
        // A frame's size came from an i32 prefix.
        consumed.extend_from_slice(&(frame.len() as i32).to_be_bytes());
        consumed.extend_from_slice(frame);
        check_decoded(frame, &decode_request(frame.clone()));
    }
    assert_eq!(
        consumed,
        stream[..consumed.len()],
        "frames are not the input"
    );
    match whole.end {
        End::Need(want) => {
            let have = stream.len() - consumed.len();
            assert!(want > have, "asked for {want} bytes with {have} unconsumed");
            assert!(
                want <= FRAME_SIZE_PREFIX_BYTES + max,
                "waits past the limit"
            );
        }
        End::TooLarge(error) => {
            let rest = &stream[consumed.len()..];
            let prefix = [rest[0], rest[1], rest[2], rest[3]];
            assert_eq!(error.size, i32::from_be_bytes(prefix));
            assert!(
                error.size < 0 || error.size as usize > max,
                "refused {error}"
            );
        }
    }
}

/// How a stream's framing ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Need(usize),
    TooLarge(protocol::FrameSizeError),
}

#[derive(Debug, PartialEq, Eq)]
struct Split {
    frames: Vec<Bytes>,
    end: End,
}

/// Frames `stream` as the connection does, receiving `piece_bytes` at a time whenever
/// [`protocol::take_frame`] asks for more.
fn split_stream(stream: &[u8], max: usize, piece_bytes: usize) -> Split {
    let mut input = BytesMut::new();
    let mut received = 0;
    let mut frames = Vec::new();
    loop {
        let before = input.len();
        match protocol::take_frame(&mut input, max) {
            Ok(Framed::Frame(frame)) => {
                assert!(frame.len() <= max, "a frame over the limit");
                assert_eq!(input.len(), before - FRAME_SIZE_PREFIX_BYTES - frame.len());
                frames.push(frame);
            }
            Ok(Framed::Need(want)) => {
                assert_eq!(input.len(), before, "input changed without a frame");
                assert!(want > input.len(), "asked for {want} bytes, had {before}");
                if received == stream.len() {
                    return Split {
                        frames,
                        end: End::Need(want),
                    };
                }
                while input.len() < want && received < stream.len() {
                    let end = (received + piece_bytes).min(stream.len());
                    input.put_slice(&stream[received..end]);
                    received = end;
                }
            }
            Err(error) => {
                assert_eq!(input.len(), before, "input changed on a refusal");
                return Split {
                    frames,
                    end: End::TooLarge(error),
                };
            }
        }
    }
}

/// Checks a request of the API and version `data[0]` and `data[1]` pick among those the
/// broker advertises; `data[2..]` is the rest of the frame (correlation id, header, body).
pub fn request(data: &[u8]) {
    let [api_choice, version_choice, rest @ ..] = data else {
        return;
    };
    let (api, min, max) = SUPPORTED_VERSIONS[usize::from(*api_choice) % SUPPORTED_VERSIONS.len()];
    let span = i32::from(max) - i32::from(min) + 1;
    let version = min + (i32::from(*version_choice) % span) as i16;
    let mut frame = BytesMut::with_capacity(4 + rest.len());
    frame.put_i16(api as i16);
    frame.put_i16(version);
    frame.put_slice(rest);
    let frame = frame.freeze();
    let decoded = decode_request(frame.clone());
    check_decoded(&frame, &decoded);
    match decoded {
        Ok(request) => check_round_trip(&request),
        Err(DecodeError::Malformed { .. } | DecodeError::Truncated { .. }) => {}
        Err(error) => panic!("an advertised API and version refused: {error}"),
    }
}

/// Checks that what [`decode_request`] made of `frame` agrees with the frame's fixed
/// header fields (API key, version, correlation id) and with the supported versions.
pub fn check_decoded(frame: &Bytes, decoded: &Result<Request, DecodeError>) {
    let field = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
    };
    let api_key_raw = field(0);
    let version_raw = field(2);
    let correlation_id_raw = frame
        .get(4..8)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let supported = |api: ApiKey, version: i16| {
        protocol::supported(api).is_some_and(|(min, max)| (min..=max).contains(&version))
    };
    match decoded {
        Ok(request) => {
            assert_eq!(Some(request.api_key as i16), api_key_raw);
            assert_eq!(Some(request.version), version_raw);
            assert_eq!(Some(request.header.correlation_id), correlation_id_raw);
            assert_eq!(request.header.request_api_key, request.api_key as i16);
            assert_eq!(request.header.request_api_version, request.version);
            assert!(supported(request.api_key, request.version));
        }
        Err(DecodeError::Truncated { len }) => {
            assert_eq!(*len, frame.len());
            assert!(correlation_id_raw.is_none(), "a whole fixed header refused");
        }
        Err(DecodeError::UnknownApi {
            api_key,
            correlation_id,
        }) => {
            assert_eq!(Some(*api_key), api_key_raw);
            assert_eq!(Some(*correlation_id), correlation_id_raw);
            assert!(ApiKey::try_from(*api_key).is_err(), "a known API refused");
        }
        Err(DecodeError::UnsupportedVersion {
            api,
            version,
            correlation_id,
        }) => {
            assert_eq!(Some(*api as i16), api_key_raw);
            assert_eq!(Some(*version), version_raw);
            assert_eq!(Some(*correlation_id), correlation_id_raw);
            assert!(!supported(*api, *version), "a supported version refused");
        }
        Err(DecodeError::Malformed { api, version, .. }) => {
            assert_eq!(Some(*api as i16), api_key_raw);
            assert_eq!(Some(*version), version_raw);
            assert!(supported(*api, *version), "an unsupported version decoded");
        }
    }
}

/// Encodes a decoded request's header and body again and checks that the result decodes
/// to an equal request.
fn check_round_trip(request: &Request) {
    let header_version = request.api_key.request_header_version(request.version);
    let mut encoded = BytesMut::new();
    if let Err(error) = request.header.encode(&mut encoded, header_version) {
        panic!("a decoded header does not encode: {error:#}");
    }
    let header_bytes = encoded.len();
    if let Err(error) = request.body.encode(&mut encoded, request.version) {
        panic!(
            "a decoded {:?} v{} body does not encode: {error:#}",
            request.api_key, request.version
        );
    }
    let encoded = encoded.freeze();
    let header = RequestHeader::decode(&mut encoded.slice(..header_bytes), header_version);
    assert_eq!(
        header.ok().as_ref(),
        Some(&request.header),
        "header round trip"
    );
    match decode_request(encoded) {
        Ok(again) => {
            assert_eq!(again.header, request.header, "header round trip");
            assert!(
                again.body == request.body,
                "body round trip: {:?}",
                request.api_key
            );
        }
        Err(error) => panic!("a re-encoded request does not decode: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The inputs kept for `target` (crashes it found, and its minimized corpus).
    fn regressions(target: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions")
            .join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no inputs in {}", dir.display());
        files
    }

    fn replay(target: &str, check: fn(&[u8])) {
        for path in regressions(target) {
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(outcome.is_ok(), "{} fails", path.display());
        }
    }

    #[test]
    fn frame_regressions_hold() {
        replay("frame", super::frame);
    }

    #[test]
    fn request_regressions_hold() {
        replay("request", super::request);
    }
}
