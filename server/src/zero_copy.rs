//! Zero-copy fetch responses: record bytes go to the socket without being copied in user
//! space, either from segment files through a pipe (`splice`) or from the batch cache's
//! buffers (sent as they are, with the encoded pieces around them, in one `writev`); only
//! the response's fixed parts are encoded here.
//!
//! The copying fallback: when the kernel refuses to splice from a segment file (EINVAL
//! from a file system without splice support, ENOSYS or EOPNOTSUPP), or a splice ends
//! before the range does, the rest of the range is read into a buffer and written
//! ([`FETCH_COPY_CHUNK_BYTES`] at a time), and counted in [`BYTES_SENT_COPIED`]. Bytes that
//! cannot be read that way either (the file was cut shorter under the fetch) are gone: the
//! frame's length is already on the wire, so the send fails and the connection closes. A
//! range whose file was deleted meanwhile still splices: the range holds a descriptor.
//!
//! The handler encodes the response with a 16-byte marker in place of each partition's
//! records and hands over the pieces of records for each (file ranges and cached bytes).
//! Every length is known before the first byte goes out: [`Parts::split`] finds each
//! marker in the encoded bytes, rewrites the records length in front of it (an `int32`
//! before Fetch v12, an unsigned varint of length + 1 from v12 on), sets the frame size,
//! and yields encoded pieces, file ranges and cached bytes in order. A marker is 16 bytes: a zero byte, `RLZC` (bytes no topic name may hold), the
//! range's index and a per-process random 56-bit nonce; other binary fields of the
//! response (offsets, topic ids) would have to repeat all of it to be mistaken for one.
//!
//! Counters of bytes sent zero-copy, from the cache and copied feed the metrics and the
//! tests.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;

use ringlog_engine::limits::IOVECS_PER_OP_MAX;
use ringlog_engine::rt::{self, IoBuf, Pipe, TcpStream};
use ringlog_engine::shard::{SendablePiece, SendableRange};

use crate::limits::FETCH_COPY_CHUNK_BYTES;

/// Bytes of a records marker.
pub const MARKER_BYTES: usize = 16;
/// The first version of Fetch whose records field is a compact (varint-length) field.
const FETCH_FLEXIBLE_VERSION: i16 = 12;

/// Record bytes sent from files without copying.
pub static BYTES_SENT_ZERO_COPY: AtomicU64 = AtomicU64::new(0);
/// Record bytes sent from the batch cache's buffers (no copy either).
pub static BYTES_SENT_FROM_CACHE: AtomicU64 = AtomicU64::new(0);
/// Record bytes sent after copying them through user space: file ranges the kernel would
/// not splice (see the module doc).
pub static BYTES_SENT_COPIED: AtomicU64 = AtomicU64::new(0);

fn nonce() -> &'static [u8; 7] {
    static NONCE: OnceLock<[u8; 7]> = OnceLock::new();
    NONCE.get_or_init(|| {
        let random = uuid::Uuid::new_v4().into_bytes();
        let mut nonce = [0; 7];
        nonce.copy_from_slice(&random[..7]);
        nonce
    })
}

/// The marker standing for the `index`-th file range of a response.
pub fn marker(index: u32) -> Bytes {
    let mut marker = BytesMut::with_capacity(MARKER_BYTES);
    marker.put_slice(b"\0RLZC");
    marker.put_u32(index);
    marker.put_slice(nonce());
    marker.freeze()
}

/// One piece of a response frame.
#[derive(Debug)]
pub enum Part {
    Encoded(Bytes),
    File(SendableRange),
    Cached(Bytes),
}

impl Part {
    /// Bytes the piece puts on the wire.
    pub fn len(&self) -> u64 {
        match self {
            Part::Encoded(bytes) | Part::Cached(bytes) => bytes.len() as u64,
            Part::File(range) => range.len,
        }
    }

    /// Whether the piece puts nothing on the wire.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One partition's records in a response: its pieces, in order.
pub type Records = Vec<SendablePiece>;

/// A response frame as encoded pieces, file ranges and cached bytes.
#[derive(Debug)]
pub struct Parts(pub Vec<Part>);

impl Parts {
    /// Splits `frame` (size prefix included) at the markers of `records`, in order, fixing
    /// the records lengths and the frame size. `None` if a marker or its length field is not
    /// where it must be: a bug, on which the caller closes the connection rather than send
    /// a response it cannot vouch for.
    pub fn split(frame: &[u8], records: Vec<Records>, version: i16) -> Option<Parts> {
        let mut parts = Vec::with_capacity(records.len() * 3 + 1);
        let mut cursor = 0;
        let mut total = 0usize;
        for (index, pieces) in records.into_iter().enumerate() {
            let marker = marker(u32::try_from(index).ok()?);
            let found = find(&frame[cursor..], &marker)? + cursor;
            let records_len: u64 = pieces.iter().map(SendablePiece::len).sum();
            let (field_len, length) = records_length(records_len, version)?;
            let field_start = found.checked_sub(field_len)?;
            if frame[field_start..found] != placeholder_length(version)? {
                return None;
            }
            let mut piece = BytesMut::with_capacity(field_start - cursor + length.len());
            piece.put_slice(&frame[cursor..field_start]);
            piece.put_slice(&length);
            total += piece.len() + usize::try_from(records_len).ok()?;
            parts.push(Part::Encoded(piece.freeze()));
            parts.extend(pieces.into_iter().map(|piece| match piece {
                SendablePiece::File(range) => Part::File(range),
                SendablePiece::Memory(bytes) => Part::Cached(bytes),
            }));
            cursor = found + MARKER_BYTES;
        }
        let rest = Bytes::copy_from_slice(&frame[cursor..]);
        total += rest.len();
        parts.push(Part::Encoded(rest));
        let size = i32::try_from(total - 4).ok()?;
        let Some(Part::Encoded(first)) = parts.first_mut() else {
            return None;
        };
        let mut patched = BytesMut::from(&first[..]);
        patched[..4].copy_from_slice(&size.to_be_bytes());
        *first = patched.freeze();
        Some(Parts(parts))
    }

    /// Sends the frame: encoded pieces and cached bytes together with `writev`, file ranges
    /// spliced through `pipe`.
    pub async fn send(self, stream: &TcpStream, pipe: &Pipe) -> io::Result<()> {
        let mut memory = Vec::new();
        let mut cached_bytes = 0u64;
        for part in self.0 {
            match part {
                Part::Encoded(bytes) => memory.push(bytes),
                Part::Cached(bytes) => {
                    cached_bytes += bytes.len() as u64;
                    memory.push(bytes);
                }
                Part::File(range) => {
                    send_all_vectored(stream, std::mem::take(&mut memory)).await?;
                    send_range(stream, range, pipe).await?;
                }
            }
        }
        send_all_vectored(stream, memory).await?;
        BYTES_SENT_FROM_CACHE.fetch_add(cached_bytes, Ordering::Relaxed);
        Ok(())
    }
}

/// Sends a file range: spliced file → pipe → socket while the kernel splices from the
/// file, then copied for whatever is left (see the module doc). Counts the bytes each way.
async fn send_range(stream: &TcpStream, range: SendableRange, pipe: &Pipe) -> io::Result<()> {
    let file = rt::File::from_owned_fd(range.file);
    let mut sent = 0u64;
    while sent < range.len {
        let want = usize::try_from(range.len - sent)
            .map_or(pipe.capacity(), |left| left.min(pipe.capacity()));
        let filled = match pipe
            .fill_from_file(&file, range.position + sent, want)
            .await
        {
            Ok(0) => break,
            Ok(filled) => filled,
            Err(error) if splice_refused(&error) => break,
            Err(error) => return Err(error),
        };
        // The pipe holds `filled` bytes of this range: they go out before anything else.
        let mut drained = 0;
        while drained < filled {
            let count = pipe.drain_to_stream(stream, filled - drained).await?;
            if count == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            drained += count;
        }
        sent += filled as u64;
        BYTES_SENT_ZERO_COPY.fetch_add(filled as u64, Ordering::Relaxed);
    }
    if sent < range.len {
        tracing::debug!(
            position = range.position + sent,
            bytes = range.len - sent,
            "segment bytes could not be spliced; copying them"
        );
        send_copied(stream, &file, range.position + sent, range.len - sent).await?;
    }
    Ok(())
}

/// Whether a splice error means the file cannot be spliced from (its bytes may still be
/// read): no splice support in its file system, or none in this kernel.
fn splice_refused(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Reads `len` bytes of `file` at `position` into a buffer and sends them, a chunk at a
/// time; an `UnexpectedEof` error if the file ends first.
async fn send_copied(
    stream: &TcpStream,
    file: &rt::File,
    position: u64,
    len: u64,
) -> io::Result<()> {
    let chunk_max = FETCH_COPY_CHUNK_BYTES as u64;
    let mut buffer = Vec::with_capacity(len.min(chunk_max) as usize);
    let mut copied = 0u64;
    while copied < len {
        buffer.clear();
        let want = (len - copied).min(chunk_max) as usize;
        let (read, slice) = file.read_at(buffer.slice(0..want), position + copied).await;
        let mut filled = slice.into_inner();
        let count = read?;
        if count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "segment file ends at byte {} of a fetch range that needs {}",
                    position + copied,
                    position + len
                ),
            ));
        }
        filled.truncate(count);
        let (written, sent) = stream.send_all(filled).await;
        written?;
        copied += sent.len() as u64;
        BYTES_SENT_COPIED.fetch_add(sent.len() as u64, Ordering::Relaxed);
        buffer = sent;
    }
    Ok(())
}

/// Sends all of `bufs`, in order, in as few `writev`s as the socket takes.
async fn send_all_vectored(stream: &TcpStream, bufs: Vec<Bytes>) -> io::Result<()> {
    let mut left: VecDeque<Bytes> = bufs.into_iter().filter(|b| !b.is_empty()).collect();
    while !left.is_empty() {
        let count = left.len().min(IOVECS_PER_OP_MAX);
        let batch: Vec<Bytes> = left.drain(..count).collect();
        let (sent, batch) = stream.send_vectored(batch).await;
        let mut sent = sent?;
        if sent == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Put back what the socket did not take, the partly sent buffer cut to its rest.
        let mut rest = Vec::new();
        for mut buf in batch {
            if sent >= buf.len() {
                sent -= buf.len();
                continue;
            }
            let _ = buf.split_to(sent);
            sent = 0;
            rest.push(buf);
        }
        for buf in rest.into_iter().rev() {
            left.push_front(buf);
        }
    }
    Ok(())
}

/// The records length field for `len` bytes at `version`: its size in the placeholder and
/// its new encoding.
fn records_length(len: u64, version: i16) -> Option<(usize, Vec<u8>)> {
    if version < FETCH_FLEXIBLE_VERSION {
        return Some((4, i32::try_from(len).ok()?.to_be_bytes().to_vec()));
    }
    let mut value = len.checked_add(1)?;
    let mut encoded = Vec::with_capacity(5);
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            encoded.push(byte);
            break;
        }
        encoded.push(byte | 0x80);
    }
    Some((1, encoded))
}

/// How the encoder wrote the placeholder's (the marker's) length.
fn placeholder_length(version: i16) -> Option<Vec<u8>> {
    records_length(MARKER_BYTES as u64, version).map(|(_, encoded)| encoded)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_the_protocol() {
        assert_eq!(records_length(16, 12).unwrap(), (1, vec![17]));
        assert_eq!(records_length(127, 12).unwrap(), (1, vec![0x80, 0x01]));
        assert_eq!(records_length(300, 12).unwrap(), (1, vec![0xad, 0x02]));
        assert_eq!(records_length(300, 11).unwrap(), (4, vec![0, 0, 1, 44]));
    }

    #[test]
    fn markers_are_distinct_and_start_with_a_zero_byte() {
        assert_ne!(marker(0), marker(1));
        assert_eq!(marker(7)[0], 0);
        assert_eq!(marker(7).len(), MARKER_BYTES);
    }

    /// The tests below read process-wide counters before and after: one at a time.
    static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Sends `parts` to a client on a loopback connection; returns what `send` returned,
    /// the bytes the client received, and the bytes counted as spliced and as copied.
    fn send_to_client(parts: Parts) -> (io::Result<()>, Vec<u8>, u64, u64) {
        let _alone = COUNTING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let listener = rt::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr();
        let client = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            let mut received = Vec::new();
            std::io::Read::read_to_end(&mut stream, &mut received).unwrap();
            received
        });
        let (zero_copy, copied) = (
            BYTES_SENT_ZERO_COPY.load(Ordering::SeqCst),
            BYTES_SENT_COPIED.load(Ordering::SeqCst),
        );
        let sent = rt::block_on(async {
            let stream = listener.accept().await.unwrap();
            let pipe = Pipe::new().unwrap();
            let sent = parts.send(&stream, &pipe).await;
            stream.shutdown(std::net::Shutdown::Both).unwrap();
            sent
        })
        .unwrap();
        let received = client.join().unwrap();
        (
            sent,
            received,
            BYTES_SENT_ZERO_COPY.load(Ordering::SeqCst) - zero_copy,
            BYTES_SENT_COPIED.load(Ordering::SeqCst) - copied,
        )
    }

    /// A frame of an encoded head, `len` bytes of `file` from `position`, and a tail.
    fn frame_around(file: std::fs::File, position: u64, len: u64) -> Parts {
        Parts(vec![
            Part::Encoded(Bytes::from_static(b"head")),
            Part::File(SendableRange {
                file: file.into(),
                position,
                len,
            }),
            Part::Encoded(Bytes::from_static(b"tail")),
        ])
    }

    #[test]
    fn a_file_the_kernel_will_not_splice_from_is_copied_and_counted() {
        // procfs files refuse splice (EINVAL) but read fine: a file system without splice
        // support, as a data directory might be on.
        let path = "/proc/self/cmdline";
        let expected_records = std::fs::read(path).unwrap();
        assert!(
            expected_records.len() > 8,
            "the test binary has a command line"
        );
        let file = std::fs::File::open(path).unwrap();
        let len = expected_records.len() as u64 - 3;
        let (sent, received, zero_copy, copied) = send_to_client(frame_around(file, 3, len));
        sent.unwrap();
        let mut expected = b"head".to_vec();
        expected.extend_from_slice(&expected_records[3..]);
        expected.extend_from_slice(b"tail");
        assert_eq!(received, expected, "the client got every byte, in place");
        assert_eq!((zero_copy, copied), (0, len), "counted as copied");
    }

    #[test]
    fn a_file_cut_shorter_under_a_fetch_fails_the_send_after_what_it_still_had() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment.log");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // Cut after the range was taken: the splice runs dry at 40,000 bytes, and a read
        // of the rest finds nothing either.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(40_000)
            .unwrap();
        let (sent, received, zero_copy, copied) =
            send_to_client(frame_around(file, 0, bytes.len() as u64));
        let error = sent.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        assert_eq!(&received[..4], b"head");
        assert_eq!(&received[4..], &bytes[..40_000], "what the file still had");
        assert_eq!((zero_copy, copied), (40_000, 0));
    }

    #[test]
    fn a_whole_file_range_is_spliced_and_nothing_copied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment.log");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (sent, received, zero_copy, copied) = send_to_client(frame_around(file, 1000, 250_000));
        sent.unwrap();
        assert_eq!(&received[4..received.len() - 4], &bytes[1000..251_000]);
        assert_eq!((zero_copy, copied), (250_000, 0));
    }
}
