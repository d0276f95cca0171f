//! Every length, count and budget of the replication layer, in one place.

/// The largest record of a partition's Raft journal (`journal.rs`): configuration changes
/// and a new leader's empty entries are a few bytes to a few KiB; a length above this read
/// from the disk is damage, not a record.
pub const JOURNAL_RECORD_BYTES_MAX: usize = 1024 * 1024;

/// The size past which a partition's Raft journal is rewritten with only what is live: its
/// hard-state records (one per commit-index change a Ready carries) grow it steadily.
pub const JOURNAL_BYTES_MAX: u64 = 1024 * 1024;

/// Bytes of persisted data entries a replica keeps in memory for Raft's storage reads
/// beyond those it must keep (entries not applied yet). Older entries are read back from
/// the partition log when a lagging follower needs them.
pub const ENTRY_CACHE_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Data entries read from the partition log in one go when Raft asks for entries a replica
/// no longer keeps in memory (a follower that fell behind).
pub const ENTRY_FETCH_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Bytes of entries one append message to a follower carries at most (raft-rs's
/// `max_size_per_msg`), and messages in flight to one follower (`max_inflight_msgs`).
pub const APPEND_MESSAGE_BYTES_MAX: u64 = 1024 * 1024;
pub const APPEND_MESSAGES_IN_FLIGHT_MAX: usize = 256;

/// Bytes of the controller's log read at once when a node applies its commands (a
/// create-topic command is a few hundred bytes).
pub const CONTROLLER_READ_BYTES_MAX: u64 = 1024 * 1024;

/// How long creating a topic waits, once the controller committed the command, for this
/// node to apply it, in milliseconds (applying is a registry write and the partitions'
/// opening: milliseconds).
pub const CONTROLLER_APPLY_WAIT_MS: u64 = 10_000;

/// How long creating a topic waits for the controller to commit its command, in
/// milliseconds (a commit takes a round trip and an fdatasync on a majority).
pub const CONTROLLER_PROPOSE_TIMEOUT_MS: u64 = 10_000;

/// How often deleting a topic says it still waits for one of its groups' tasks on this
/// node to end (at its next turn, within milliseconds unless a slow disk holds it), in
/// milliseconds.
pub const GROUP_CLOSE_WAIT_MS: u64 = 10_000;

/// How long a node that forwarded a topic's auto-creation to the controller's leader waits
/// for the topic in its own metadata before answering the client without it (the client
/// asks again, as it does while Kafka creates a topic).
pub const FORWARDED_CREATE_WAIT_MS: u64 = 3_000;

/// Peers' messages and proposals a group's inbox holds (ticks are a flag beside it, never
/// queued). A peer's message that finds the inbox full is dropped and counted (Raft sends
/// again), a proposal refused with a retriable error: a group whose task is held up (a slow
/// fsync) makes its senders wait or retry instead of queueing without limit. A follower
/// receives at most `APPEND_MESSAGES_IN_FLIGHT_MAX` appends and a few heartbeats and votes.
pub const GROUP_INBOX_COMMANDS_MAX: usize = 4 * APPEND_MESSAGES_IN_FLIGHT_MAX;

/// The largest frame between nodes (`transport.rs`), counted as its length field counts it:
/// kind and body. raft-rs fills an append message with entries up to
/// `APPEND_MESSAGE_BYTES_MAX` (their own encodings, not the 2 to 6 bytes each takes in the
/// message, so up to twice that for the smallest entries) but always takes the first entry
/// whole, and a data entry is one record batch, up to the engine's `BATCH_SIZE_BYTES_MAX`.
/// 64 KiB more covers the topic name and the message's other fields. A longer length read
/// from a peer closes its connection before any of the body is read.
pub const TRANSPORT_FRAME_BYTES_MAX: usize = ringlog_engine::limits::BATCH_SIZE_BYTES_MAX
    + 2 * APPEND_MESSAGE_BYTES_MAX as usize
    + 64 * 1024;

/// Bytes of frames queued for one peer, and being written to it, on one shard. Past this,
/// new messages to that peer are dropped and counted: Raft resends what is lost.
pub const TRANSPORT_PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The longest cluster name a hello carries, in bytes.
pub const TRANSPORT_CLUSTER_NAME_BYTES_MAX: usize = 255;

/// The longest Kafka host a hello carries, in bytes (a DNS name has at most 253).
pub const TRANSPORT_HOST_BYTES_MAX: usize = 255;

/// Connections from peers one shard serves at once: one per shard of every other node is
/// what a cluster needs; a connection past this is closed as soon as it is accepted.
pub const TRANSPORT_CONNECTIONS_MAX: usize = 4096;

/// How long a connection may take to connect and exchange hellos, in milliseconds (either
/// side: a connection that says nothing is closed after this).
pub const TRANSPORT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// How long one write of queued frames to a peer may take, in milliseconds, before the
/// connection is given up as dead (a peer gone without a FIN or RST) and made again.
pub const TRANSPORT_SEND_TIMEOUT_MS: u64 = 30_000;

/// The wait before reconnecting to a peer: this after a connection ends, doubled after each
/// failed attempt up to `TRANSPORT_RECONNECT_BACKOFF_MAX_MS`.
pub const TRANSPORT_RECONNECT_BACKOFF_MIN_MS: u64 = 50;
pub const TRANSPORT_RECONNECT_BACKOFF_MAX_MS: u64 = 1_000;

/// The wait before accepting again after accept failed (out of descriptors, say).
pub const TRANSPORT_ACCEPT_RETRY_MS: u64 = 100;

/// A connection's receive buffer to start with. A receive or send buffer that a large
/// frame or batch grew past `TRANSPORT_BUFFER_RETAINED_BYTES_MAX` is given back once empty
/// (a receive buffer starts again at `TRANSPORT_READ_BUFFER_BYTES`).
pub const TRANSPORT_READ_BUFFER_BYTES: usize = 64 * 1024;
pub const TRANSPORT_BUFFER_RETAINED_BYTES_MAX: usize = 1024 * 1024;

/// Applied entries a replica's window keeps behind its applied index; the anchor moves in
/// steps of this many (80 bytes of memory each, plus one journal record per step). A
/// follower lagging within the window is sent entries; beyond it, a snapshot.
pub const WINDOW_ENTRIES_KEEP: u64 = 1024;

/// The most entries a leader keeps in its window for followers in touch that are catching
/// up (5 MiB of entry table): a follower further behind gets a snapshot and copies the
/// batches in bulk.
pub const WINDOW_ENTRIES_MAX: u64 = 64 * 1024;

/// The fewest ticks between two fdatasyncs of a replica's journal for its moving anchor
/// (10 s at the usual tick of 100 ms). Retention may delete a replicated log's segments
/// only below an anchor that is durable (a crash that lost a later anchor would reopen
/// with a window reaching into deleted segments), and the anchor moves every
/// `WINDOW_ENTRIES_KEEP` entries: syncing each move would cost a busy partition an
/// fdatasync every thousand batches, for a bound that retention, checked every few
/// minutes, never needs to the second.
pub const ANCHOR_SYNC_TICKS: usize = 100;

/// Ticks a leader waits for a follower it sent a snapshot to before it takes the snapshot
/// as lost and sends it again (1 s at the usual tick of 100 ms). A snapshot message is a
/// few bytes (the anchor; the batches are fetched apart), so repeating it is cheap: a
/// follower still filling takes the repeat once done, finds it no newer than what it
/// installed, and answers with its log's end, which resumes replication to it.
pub const SNAPSHOT_SILENCE_TICKS_MAX: usize = 10;

/// Bytes of batches one fill request asks a peer for (`snapshot.rs`); the answer's frame
/// must fit `TRANSPORT_FRAME_BYTES_MAX` with the largest batch, which is always sent whole.
pub const FILL_CHUNK_BYTES_MAX: u32 = 1024 * 1024;

/// How long a fill waits for a peer's answer before asking the next peer, and how long it
/// waits after a peer could not serve (its commit end not there yet, or it is down), in
/// milliseconds.
pub const FILL_ANSWER_TIMEOUT_MS: u64 = 5_000;
pub const FILL_RETRY_MS: u64 = 200;

/// Fill requests one shard serves at once (each a read of up to `FILL_CHUNK_BYTES_MAX`);
/// past this a request is answered empty and its asker tries another peer.
pub const FILL_SERVES_MAX: usize = 16;

/// Ticks between a rejoining replica's rounds of asking the voters that have not answered
/// (`rejoin.rs`): half a second at the default tick of 100 ms.
pub const REJOIN_ASK_TICKS: usize = 5;

/// Ticks between a leader's announcements of the groups it leads to the nodes that hold no
/// replica of them (they also go out as leadership changes, and after a peer's hello): a
/// frame lost to a full queue is corrected within this (5 s at 100 ms ticks).
pub const LEADER_ANNOUNCE_TICKS: usize = 50;

/// Ticks between a group leader's reports that its voters reached a reassignment's target
/// (a `reassigned` command, `controller.rs`), repeated until the report applies: a report
/// forwarded to a controller leader that just lost its leadership is lost (1 s at 100 ms
/// ticks).
pub const REASSIGNED_REPORT_TICKS: usize = 10;

/// Entries a learner may lag the commit index by and count as caught up, to become a voter
/// in a reassignment (`Replica::reconfigure`): under a steady write load its acknowledgement
/// of the latest entry is always a round trip behind, so "every committed entry" may never
/// hold at a tick. A voter this far behind catches up in milliseconds, and the old voters
/// keep their quorum meanwhile.
pub const LEARNER_CAUGHT_UP_ENTRIES: u64 = 256;
