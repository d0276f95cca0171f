//! Every length, count and buffer bound of the broker's network layer, in one place (the
//! engine's are in `ringlog_engine::limits`, the runtime's in `ringlog_engine::rt::limits`).
//!
//! A limit is checked before the value it bounds is used; code names the constant rather
//! than repeating the number.

/// The smallest read, and what an idle connection's buffers start with: they grow to fit
/// the requests (and responses) that come, so a thousand connections that only ever sent
/// metadata requests cost a few MiB, not hundreds.
pub const IDLE_BUFFER_BYTES: usize = 4 * 1024;

/// Requests of one connection being handled at once; the next frame is read only when
/// one of them has been answered (backpressure on a client that pipelines more). A
/// produce waiting for room in a partition's append queue holds one of these.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 32;

/// The buffer a fetch copies record bytes through when they cannot be spliced from their
/// segment file (`zero_copy.rs`): read, then written, this many bytes at a time, so a
/// connection on that path holds at most this much beside its other buffers.
pub const FETCH_COPY_CHUNK_BYTES: usize = 256 * 1024;
