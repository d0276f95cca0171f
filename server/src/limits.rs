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

/// Connections one shard holds at most, whatever `max_connections` says. Every connection
/// keeps a receive in its shard's ring, and a ring has at most
/// [`OPS_IN_FLIGHT_MAX`](ringlog_engine::rt::limits::OPS_IN_FLIGHT_MAX) (65,536) operations
/// in the kernel: a quarter of them for idle connections leaves three quarters for the
/// shard's disk writes, syncs, sends and accepts, so a shard full of connections still
/// writes without waiting for one of them to receive something.
pub const CONNECTIONS_PER_SHARD_MAX: usize = ringlog_engine::rt::limits::OPS_IN_FLIGHT_MAX / 4;
const _: () = assert!(CONNECTIONS_PER_SHARD_MAX >= 1);

/// The default `max_connections` leaves this fraction (one in N) of the process's open-file
/// limit to everything else: segment files and their O_DIRECT descriptors, the pipe (two
/// descriptors) of each connection that fetches from files, and the descriptor of each
/// file range a fetch response holds until it is sent.
pub const OPEN_FILES_RESERVED_DIVISOR: u64 = 4;

/// Refused connections are logged at most once per this interval (with the counts so far),
/// so a client retrying in a loop cannot flood the log; the metrics count every one.
pub const REFUSALS_LOG_INTERVAL_MS: u64 = 10_000;

/// One Raft tick of a cluster node, in ms: the clock of every replicated partition.
pub const RAFT_TICK_MS: u64 = 100;
/// Ticks without a leader's word before a follower campaigns (randomized up to twice
/// this): a dead leader is replaced within 1 to 2 s and an election.
pub const RAFT_ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
pub const RAFT_HEARTBEAT_TICKS: usize = 2;

/// Group writes queued for one partition of `__consumer_offsets` before writers wait (the
/// writer takes all of them as one append).
pub const GROUP_WRITES_QUEUED_MAX: usize = 1024;

/// Bytes of `__consumer_offsets` read per step while a partition's groups are loaded.
pub const GROUP_REPLAY_READ_BYTES: u64 = 1 << 20;

/// A batch of group records is closed at this size and the next one begun (below
/// `GROUP_REPLAY_READ_BYTES`, so a load's read always holds a whole batch).
pub const GROUP_RECORD_BATCH_BYTES_MAX: usize = 512 * 1024;
const _: () = assert!((GROUP_RECORD_BATCH_BYTES_MAX as u64) < GROUP_REPLAY_READ_BYTES);

/// How long a group write in a cluster waits for its commit, in ms, before it is answered
/// COORDINATOR_NOT_AVAILABLE (Kafka's `offsets.commit.timeout.ms`): the partition's writer
/// holds its queue behind one proposal at most this long.
pub const GROUP_WRITE_TIMEOUT_MS: u64 = 5_000;
