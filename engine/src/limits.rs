//! Every length, count and queue bound of the engine, in one place.
//!
//! A limit is checked before the value it bounds is used; code names the constant rather
//! than repeating the number.

/// The largest record batch, header included, that the engine accepts whatever a topic's
/// configuration says: 16 MiB. A topic's `max.message.bytes` (Kafka's default is 1 MiB + 12
/// bytes) is passed to `batch::validate` and lowered to this if larger.
pub const BATCH_SIZE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The runtime's limits (ring sizes, mailbox, buffer pool, vectored I/O, pipes) live with
/// the runtime in `ringlog-rt`; those the engine's own code sizes things by are named here
/// too.
pub use ringlog_rt::limits::{BUF_ALIGN_BYTES, IOVECS_PER_OP_MAX};

/// The longest topic name, in bytes (topic names are ASCII): Kafka's limit, chosen so that a
/// partition directory `{topic}-{partition}` plus a deletion suffix fits the 255-byte file
/// name limit of Linux file systems.
pub const TOPIC_NAME_LEN_MAX: usize = 249;
/// Partitions one topic may have. Each partition is a directory with open segment files, so
/// this bounds what one CreateTopics or CreatePartitions request can ask of the disk.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 100_000;
/// The smallest `segment.bytes` a topic may set: one page. Kafka allows 14 bytes; anything
/// below a page only multiplies files and fsyncs, and tests that want quick rolls still can.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4096;
/// The largest `segment.bytes`: Kafka's `Integer.MAX_VALUE`, so that every file position
/// in a segment fits the 32-bit positions of the offset index.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = i32::MAX as u64;
/// The largest `ringlog.preallocate.bytes` (a partition's largest fallocate step): a
/// segment's largest size.
pub const PREALLOCATE_STEP_BYTES_MAX: u64 = SEGMENT_SIZE_BYTES_MAX;
/// A partition's first preallocation step, and the smallest its step shrinks to under the
/// node's budget (`log/prealloc.rs`): 1 MiB. Small enough that 2,000 idle partitions hold
/// 2 GB at most, large enough that a partition writing 4 KiB groups calls fallocate once
/// per 256 of them.
pub const PREALLOCATE_STEP_MIN_BYTES: u64 = 1 << 20;
/// A partition that needs its next preallocation within this time of the previous one
/// doubles its step (up to the topic's `ringlog.preallocate.bytes`): a partition writing
/// faster than its step per second gets larger steps, so it calls fallocate about once a
/// second at most until its step reaches the topic's maximum.
pub const PREALLOCATE_STEP_GROW_WITHIN_MS: u64 = 1000;
/// The node's preallocation budget (bytes preallocated ahead of segment tails and not yet
/// written, over all partitions) is the data directory's free space, counting those bytes
/// as free, divided by this: a quarter. Preallocation only spares the file system work per
/// write, so it may hold a small part of the disk, never the room records need: three
/// quarters stay for records, indexes and snapshots even when every partition holds its
/// whole grant, and after a crash, before recovery trims the preallocated tails.
pub const PREALLOCATE_BUDGET_FREE_SPACE_DIVISOR: u64 = 4;
/// How often the preallocation budget reads the data directory's free space (statvfs):
/// records written and segments deleted move it slowly against a quarter of it, and the
/// read stays off nearly every append.
pub const FREE_SPACE_REFRESH_MS: u64 = 1000;
/// The largest `index.interval.bytes`; an interval larger than a segment only means one
/// index entry per segment.
pub const INDEX_INTERVAL_BYTES_MAX: u32 = i32::MAX as u32;
/// The largest time or byte count a topic setting may hold: Kafka sends these as signed
/// 64-bit longs, and `to_pairs` must print what `apply` reads back.
pub const TOPIC_SETTING_VALUE_MAX: u64 = i64::MAX as u64;
/// The largest `topics.json` that the registry reads. Even 10,000 topics with every setting
/// spelled out stay far below it; a larger file is damage, not metadata.
pub const TOPIC_METADATA_FILE_BYTES_MAX: u64 = 64 << 20;

/// Entries one segment's offset index holds; its time index, whose entries are a subset,
/// holds no more. A segment is at most [`SEGMENT_SIZE_BYTES_MAX`] (2 GiB), and at Kafka's
/// default `index.interval.bytes` of 4096 a full 2 GiB segment needs 2^31 / 2^12 = 2^19
/// entries; this allows twice that (Kafka's default `segment.index.bytes`, 10 MiB, allows
/// 1.25 × 2^20). A smaller interval fills the index sooner: the index then stops adding
/// entries (lookups stay correct, scans get longer) and reports itself full so the segment
/// rolls, as Kafka rolls a segment whose index is full. In memory this bounds one segment's
/// indexes to 8 MiB (offset) + 12 MiB (time); decoding an index file checks its entry count
/// against it before allocating.
pub const INDEX_ENTRIES_PER_SEGMENT_MAX: usize = 1 << 20;

/// How often a partition's appender checks retention (Kafka's
/// `log.retention.check.interval.ms` default: 5 minutes).
pub const RETENTION_CHECK_INTERVAL_MS: u64 = 5 * 60 * 1000;
/// Bytes recovery reads from a segment at a time while validating its tail.
pub const RECOVERY_READ_CHUNK_BYTES: usize = 4 << 20;
/// Bytes a fetch reads at a time (more for a larger batch) while it checks segment bytes
/// nobody checked since the log was opened, before it sends them: about one fetch's worth
/// for a partition, so most checks are one read.
pub const FETCH_CHECK_READ_CHUNK_BYTES: usize = 1 << 20;
/// How often a partition writes its recovery checkpoint (and the active segment's
/// indexes) when its durable end has moved, bounding what recovery must scan after an
/// unclean stop to what was written since (Kafka checkpoints its recovery point every 60 s).
pub const CHECKPOINT_INTERVAL_MS: u64 = 10_000;
/// Group-commit fdatasyncs a partition may have in flight while its appender writes the
/// next group. Measured on the reference virtio disk (BENCHMARKS.md): 2 halves each group
/// (the next one starts while the previous sync runs) and lost ~20% of durable throughput
/// against 1, so 1 it is: a group's sync completes before the next group's write. Segment
/// seals are not counted (they never hold up appends).
pub const SYNCS_IN_FLIGHT_MAX: usize = 1;

/// Commands queued at one partition's appender: appends, and the rare truncation,
/// retention, record deletion, checkpoint and close. An append that finds the queue full
/// waits for room (`log/queue.rs`), holding one of its connection's request slots (the
/// server's `REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX`), so a partition that
/// cannot keep up slows its producers instead of growing a queue. The appender takes the
/// whole queue as its next group: measured groups held 32 appends (BENCHMARKS.md), so this
/// leaves groups 32 times that room, and bounds the appends one partition holds (queued,
/// plus the group in hand) to twice this.
pub const COMMANDS_QUEUED_PER_PARTITION_MAX: usize = 1024;

/// Batches of one idempotent producer a partition remembers, to recognise a retried one:
/// Kafka's `ProducerStateEntry.NUM_BATCHES_TO_RETAIN`, which is also why producers keep at
/// most 5 requests in flight per connection (`max.in.flight.requests.per.connection`).
pub const BATCHES_PER_PRODUCER_MAX: usize = 5;
/// Idempotent producers one partition tracks at once. Each costs about 200 bytes; past the
/// limit the producer idle longest is forgotten (as if it had expired), so a flood of
/// short-lived producers cannot exhaust memory. It also bounds a producer snapshot
/// (140 bytes per producer: 9 MiB at most).
pub const PRODUCERS_PER_PARTITION_MAX: usize = 1 << 16;
/// How long a partition remembers an idempotent producer that stopped writing: Kafka's
/// `producer.id.expiration.ms` default, one day. Checked with retention
/// ([`RETENTION_CHECK_INTERVAL_MS`]).
pub const PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;
/// Producer ids reserved in the data directory's `producer-ids` file at a time: the file
/// is rewritten (and fsynced) once per this many InitProducerId requests.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// The default batch cache budget, as a fraction of the machine's memory: one eighth, split
/// evenly across the shards. Direct I/O leaves the page cache out, so this is the memory
/// tailing consumers are served from; an eighth keeps room for the page cache of the
/// metadata files, the connections' buffers and the rest of the node.
pub const BATCH_CACHE_MEMORY_FRACTION_DEFAULT: u64 = 8;
/// Bytes one read of a direct-I/O segment into the batch cache asks for at least (more if
/// the fetch wants more). Large reads keep the disk's queue full: the block layer splits a
/// 2 MiB O_DIRECT read into requests the device serves in parallel.
pub const BATCH_CACHE_READ_CHUNK_BYTES: usize = 2 << 20;
/// How far ahead of a catching-up consumer the log reads into the batch cache: the
/// consumer's next fetches find their batches in memory while the disk reads further on.
pub const BATCH_CACHE_READAHEAD_BYTES: u64 = 16 << 20;

/// The most leader epochs a partition log remembers the first offset of
/// (`log/epochs.rs`, 12 bytes each): a Raft term or Kafka leader epoch per election, so a
/// partition reaches it only after that many leader changes; the oldest is then forgotten.
pub const LEADER_EPOCHS_MAX: usize = 65_536;

/// The largest `min.insync.replicas` a topic accepts: far above any replication factor a
/// cluster of ringlog nodes has (one replica per node), so only nonsense is refused here;
/// CreateTopics in a cluster checks it against the replication factor.
pub const MIN_INSYNC_REPLICAS_MAX: u64 = 1024;
