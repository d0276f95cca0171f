//! The internal transport: raft-rs messages between the nodes of a cluster, for every
//! partition's group at once.
//!
//! **Topology.** A node runs one [`Transport`] per shard. Each opens its own connection to
//! every peer, so two nodes are joined by one connection per (sending shard, peer) pair,
//! each carrying messages one way. Receiving happens on whichever shard of the peer
//! accepted the connection ([`serve`] on a listener bound with SO_REUSEPORT on every
//! shard), which is not in general the shard that owns the partition: the `deliver`
//! callback routes each message on (the node sends it to the owner's mailbox). Messages of
//! one connection arrive in the order they were sent; there is no order between
//! connections, which Raft does not need.
//!
//! **Wire format.** A connection is a stream of frames. Lengths and numbers are big-endian
//! (network order, as Kafka's framing on the same node is):
//!
//! | offset | size | field                                                           |
//! |-------:|-----:|-----------------------------------------------------------------|
//! |      0 |    4 | length of kind and body, 1 ..= `TRANSPORT_FRAME_BYTES_MAX`      |
//! |      4 |    1 | kind: 1 hello, 2 Raft, 3 fill request, 4 fill chunk, 5 rejoin question, 6 rejoin answer, 7 forwarded command, 8 hibernation, 9 alive, 10 leader |
//! |      5 |    … | body, by kind (below)                                           |
//!
//! A string is `length u16 | UTF-8 bytes`, its length bounded by its field's limit. A hello's
//! body (`n`, `h`: the strings' lengths), nothing after it:
//!
//! |       offset | size | field                                                    |
//! |-------------:|-----:|----------------------------------------------------------|
//! |            0 |    8 | node id                                                  |
//! |            8 |    2 | cluster name length `n`, at most 255                     |
//! |           10 |  `n` | cluster name                                             |
//! |     10 + `n` |    2 | Kafka host length `h`, at most 255                       |
//! |     12 + `n` |  `h` | Kafka host                                               |
//! | 12 + `n + h` |    2 | Kafka port                                               |
//! | 14 + `n + h` |    8 | incarnation: drawn at random when the node's process starts |
//!
//! A Raft frame's body (`t`: the topic name's length):
//!
//! | offset   | size | field                                                          |
//! |---------:|-----:|----------------------------------------------------------------|
//! |        0 |    2 | topic name length `t`, 1 ..= 249                               |
//! |        2 |  `t` | topic name                                                     |
//! |  2 + `t` |    4 | partition                                                      |
//! |  6 + `t` |    8 | topic tag: the topic id's first 8 bytes (0: the controller)    |
//! | 14 + `t` |    … | raft-rs's `eraftpb.Message`, protobuf, to the end of the frame |
//!
//! **The tag tells a topic from an earlier one of the same name.** A topic deleted and
//! created again is a new group under the old name. A node that has not yet applied the
//! deletion still runs the old group, whose leader, of a higher term, would otherwise feed
//! its entries to the new group's replicas. A frame reaches only the group of its topic,
//! partition *and* tag ([`Group`]); one for another incarnation finds no group and is dropped.
//!
//! The fill frames carry a snapshot's batches (`snapshot.rs`): a replica installing a
//! snapshot asks a peer for the batches of its committed log from an offset on, and the
//! peer answers on its own connection back. Both start as a Raft frame does (topic name,
//! partition, tag), then:
//!
//! | kind | field after the tag                                                    |
//! |-----:|------------------------------------------------------------------------|
//! |    3 | `offset i64` (≥ 0), `max_bytes u32` (1 ..= `FILL_CHUNK_BYTES_MAX`)     |
//! |    4 | `offset i64` (≥ 0), `log_start i64` (≥ 0), the batches from `offset`, to the end of the frame. With batches, `log_start` is the peer's log start (it may lie inside the first batch). Without: if `log_start` is past `offset`, it is where the peer's first batch begins (its retention, or its group, deleted what lies before); else the peer cannot serve that offset now |
//!
//! The rejoin frames (`rejoin.rs`): a replica rejoining its group with no memory of it asks
//! each other voter for its term and last entry; the voter answers on its own connection
//! back. Both start as a Raft frame does, then:
//!
//! | kind | field after the tag                                                    |
//! |-----:|------------------------------------------------------------------------|
//! |    5 | nothing                                                                |
//! |    6 | `term u64`, `last_index u64`, `last_term u64` (at most `term`)         |
//!
//! A forwarded command (kind 7) starts as a Raft frame does, naming the controller's group (tag 0),
//! then carries a controller command (`controller.rs`, at least one byte) to the end of the
//! frame: a node that does not lead the controller asks its leader to propose it (a topic a
//! client's request auto-creates at another node). The transport bounds it by the frame
//! limit only; the controller's decoder checks the rest.
//!
//! A hibernation frame (kind 8, `hibernation.rs`) starts as a Raft frame does, then:
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    1 | 1 ask, 2 agree, 3 wake                                      |
//! |      1 |    8 | term                                                        |
//! |      9 |    8 | index (ask, agree); 0 (wake)                                |
//!
//! A leader frame (kind 10) starts as a Raft frame does, then says that the sending node
//! leads the group in a term, or no longer does (to a node that holds no replica of it,
//! which answers Metadata with it, `node.rs`):
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    8 | term                                                        |
//! |      8 |    1 | in-sync count `n`, 0 ..= 15 (`REPLICATION_FACTOR_MAX`); 0: the sender stepped down in that term |
//! |      9 |`8 n` | in-sync node ids                                            |
//!
//! An alive frame (kind 9) has no body and names no group: each shard sends one to every
//! peer every heartbeat interval, so that a node hears from its peers while their groups
//! sleep (`node.rs`, liveness). It reaches `deliver` as [`Payload::Alive`] with an empty
//! topic.
//!
//! There is no batch kind: a sender packs every frame queued for a peer into one send, so
//! the messages of many groups share a system call. The connecting side sends its hello
//! first; the accepting side checks it (same cluster name, not its own node id) and answers
//! with its own, which the connecting side checks (same cluster, the node it meant to
//! reach). After that only the connecting side sends, and only Raft, fill, rejoin,
//! forwarded, hibernation, alive and leader frames.
//!
//! **Bad input.** Every length read is bounded before it is trusted: a frame's length as
//! soon as its 4 bytes arrive (a hello's against the largest hello, anything later against
//! `TRANSPORT_FRAME_BYTES_MAX`), each string's against its field's limit. A receive buffer
//! grows only to the frame being read, so to at most the frame limit, and shrinks back once
//! empty. A bad frame (too long, empty, of an unknown kind, a field running past its frame,
//! a name too long or not UTF-8, a message that does not decode or names other nodes than
//! the connection's two) closes its connection with a logged reason; nothing else is
//! affected.
//!
//! **Loss.** Sending never waits. A peer's queue is bounded in bytes
//! (`TRANSPORT_PEER_QUEUE_BYTES_MAX`); past it, and for a peer this transport does not
//! know, messages are dropped and counted. When a connection fails or cannot be made, what
//! was queued for it is dropped, and the writer reconnects after a backoff. Raft resends
//! whatever is lost, so the transport never retries a message itself.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use protobuf::{CodedOutputStream, Message as _};
use raft::eraftpb::Message;
use ringlog_engine::limits::TOPIC_NAME_LEN_MAX;
use ringlog_engine::rt::{self, IoBuf, JoinHandle, TcpListener, TcpStream};

use crate::hibernation::Signal;
use crate::limits::{
    FILL_CHUNK_BYTES_MAX, TRANSPORT_ACCEPT_RETRY_MS, TRANSPORT_BUFFER_RETAINED_BYTES_MAX,
    TRANSPORT_CLUSTER_NAME_BYTES_MAX, TRANSPORT_CONNECTIONS_MAX, TRANSPORT_FRAME_BYTES_MAX,
    TRANSPORT_HANDSHAKE_TIMEOUT_MS, TRANSPORT_HOST_BYTES_MAX, TRANSPORT_PEER_QUEUE_BYTES_MAX,
    TRANSPORT_READ_BUFFER_BYTES, TRANSPORT_RECONNECT_BACKOFF_MAX_MS,
    TRANSPORT_RECONNECT_BACKOFF_MIN_MS, TRANSPORT_SEND_TIMEOUT_MS,
};
use crate::rejoin::LogState;

const LEN_AT: usize = 0;
const KIND_AT: usize = LEN_AT + 4;
const BODY_AT: usize = KIND_AT + 1;
const _: () = assert!(BODY_AT == 5);
/// What the length field does not count.
const LEN_FIELD_BYTES: usize = KIND_AT - LEN_AT;

const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;
const KIND_FILL_REQUEST: u8 = 3;
const KIND_FILL_CHUNK: u8 = 4;
const KIND_REJOIN_ASK: u8 = 5;
const KIND_REJOIN_ANSWER: u8 = 6;
const KIND_FORWARD: u8 = 7;
const KIND_HIBERNATION: u8 = 8;
const KIND_ALIVE: u8 = 9;
const KIND_LEADER: u8 = 10;
/// The most in-sync ids a leader frame carries: a replica set's largest.
const LEADER_IN_SYNC_MAX: usize = crate::controller::REPLICATION_FACTOR_MAX;

/// A hibernation frame's signal codes.
const SIGNAL_ASK: u8 = 1;
const SIGNAL_AGREE: u8 = 2;
const SIGNAL_WAKE: u8 = 3;

/// A string's length prefix.
const STRING_LEN_BYTES: usize = 2;
const PARTITION_BYTES: usize = 4;
const TAG_BYTES: usize = 8;

/// The largest hello frame's length field: kind, node id, the two strings at their limits,
/// port. The first frame of a connection is bounded by this, not by the frame limit, so a
/// connection that has not introduced itself cannot make the receiver allocate much.
const HELLO_FRAME_LEN_MAX: usize = 1
    + 8
    + STRING_LEN_BYTES
    + TRANSPORT_CLUSTER_NAME_BYTES_MAX
    + STRING_LEN_BYTES
    + TRANSPORT_HOST_BYTES_MAX
    + 2
    + 8;
const _: () = assert!(HELLO_FRAME_LEN_MAX == 533);
const _: () = assert!(HELLO_FRAME_LEN_MAX <= TRANSPORT_FRAME_BYTES_MAX);
// A peer's queue holds at least the largest frame, or that frame could never be sent.
const _: () =
    assert!(LEN_FIELD_BYTES + TRANSPORT_FRAME_BYTES_MAX <= TRANSPORT_PEER_QUEUE_BYTES_MAX);
// A topic name's length fits its u16 prefix.
const _: () = assert!(TOPIC_NAME_LEN_MAX <= u16::MAX as usize);
const _: () = assert!(TRANSPORT_HOST_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(TRANSPORT_CLUSTER_NAME_BYTES_MAX <= u16::MAX as usize);

/// How a node introduces itself on a connection, in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    /// Nodes of different clusters refuse each other's connections.
    pub cluster_name: String,
    /// Where Kafka clients reach this node (what Metadata advertises for it).
    pub kafka_host: String,
    pub kafka_port: u16,
    /// Drawn at random each time the node's process starts: a peer seeing another one
    /// knows the node restarted, and may have lost what it had not made durable — or, its
    /// data directory replaced, everything.
    pub incarnation: u64,
}

impl Hello {
    /// Whether this hello fits the wire's bounds; a node checks its configured values with
    /// this before starting a transport.
    pub fn validate(&self) -> Result<(), FrameError> {
        bounded(
            "cluster name",
            &self.cluster_name,
            TRANSPORT_CLUSTER_NAME_BYTES_MAX,
        )?;
        bounded("Kafka host", &self.kafka_host, TRANSPORT_HOST_BYTES_MAX)
    }

    fn assert_valid(&self) {
        if let Err(error) = self.validate() {
            panic!("the local hello must be validated before use: {error}");
        }
    }
}

fn bounded(field: &'static str, value: &str, max: usize) -> Result<(), FrameError> {
    if value.len() > max {
        return Err(FrameError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// The group a frame is for: a partition of a topic, and the tag of that topic (the first
/// 8 bytes of its id; see "The tag" in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub tag: u64,
}

/// A topic's tag: the first 8 bytes of its id.
pub fn topic_tag(id: &[u8; 16]) -> u64 {
    let mut tag = [0; 8];
    tag.copy_from_slice(&id[..8]);
    u64::from_be_bytes(tag)
}

/// A frame from a peer, for the group `(topic, partition, tag)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The sending node (the connection's hello said so, and a Raft message agrees).
    pub from: u64,
    pub topic: String,
    pub partition: u32,
    pub tag: u64,
    pub payload: Payload,
}

/// What a peer sent a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Raft(Message),
    /// Asks for the batches of the committed log from `offset` on, about `max_bytes`.
    FillRequest {
        offset: i64,
        max_bytes: u32,
    },
    /// Answers a fill request: the batches from `offset` on (empty: not servable now, or,
    /// with `log_start` past `offset`, deleted by the peer's retention).
    FillChunk {
        offset: i64,
        log_start: i64,
        batches: bytes::Bytes,
    },
    /// A rejoining replica asks for the group's term and last entry here (`rejoin.rs`).
    RejoinAsk,
    /// Answers a rejoin question.
    RejoinAnswer(LogState),
    /// A command for the group's leader to propose, from a node that does not lead it:
    /// the controller's group only (`Cluster::create_topic_anywhere`).
    Forward(bytes::Bytes),
    /// About the group sleeping (`hibernation.rs`).
    Hibernation(Signal),
    /// The peer is there (no group: the topic is empty).
    Alive,
    /// The sender leads the group in `term`, with these voters in sync (itself included);
    /// none: it stepped down in `term`, and knows no leader.
    Leader {
        term: u64,
        in_sync: Vec<u64>,
    },
}

impl Incoming {
    /// The Raft message, if that is what this is.
    pub fn message(&self) -> Option<&Message> {
        match &self.payload {
            Payload::Raft(message) => Some(message),
            _ => None,
        }
    }
}

/// Why a frame is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("a frame of {len} bytes (kind and body); the limit here is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("an empty frame (no kind)")]
    Empty,
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("the {field} runs past the end of its frame")]
    Truncated { field: &'static str },
    #[error("a {field} of {len} bytes; the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("an empty topic name")]
    TopicEmpty,
    #[error("the {field} is not UTF-8: {source}")]
    NotUtf8 {
        field: &'static str,
        source: std::str::Utf8Error,
    },
    #[error("{count} bytes after the last field of a frame")]
    TrailingBytes { count: usize },
    #[error("the Raft message does not decode: {source}")]
    Message { source: protobuf::ProtobufError },
    #[error("a fill frame's {field} of {value} is out of bounds")]
    FillOutOfBounds { field: &'static str, value: i64 },
    #[error("a rejoin answer's last entry is of term {last_term}, after its term {term}")]
    RejoinAnswerTerms { term: u64, last_term: u64 },
    #[error("a leader frame with {count} in-sync ids, at most {LEADER_IN_SYNC_MAX}")]
    LeaderInSync { count: u8 },
    #[error("unknown hibernation signal {code}")]
    UnknownSignal { code: u8 },
    #[error("a wake signal with index {index} (must be 0)")]
    WakeIndex { index: u64 },
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o error: {source}")]
    Io {
        #[from]
        source: io::Error,
    },
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error("the peer closed the connection {received} bytes into a frame of {expected}")]
    ClosedMidFrame { received: usize, expected: usize },
    #[error("no hello exchanged within {ms} ms")]
    HandshakeTimeout { ms: u64 },
    #[error("a send did not complete within {ms} ms")]
    SendTimeout { ms: u64 },
    #[error("a frame of kind {kind} before the hello")]
    ExpectedHello { kind: u8 },
    #[error("a second hello")]
    UnexpectedHello,
    #[error("the accepting side sent more than its hello")]
    UnexpectedData,
    #[error("the peer is of cluster {theirs:?}, this node of {ours:?}")]
    ClusterMismatch { ours: String, theirs: String },
    #[error("the peer says it is node {got}, expected node {expected}")]
    WrongNode { expected: u64, got: u64 },
    #[error("the peer says it is node {node_id}, this node's own id")]
    SameNode { node_id: u64 },
    #[error("a Raft message from node {from} to node {to} on a connection from {peer} to {local}")]
    Misaddressed {
        from: u64,
        to: u64,
        peer: u64,
        local: u64,
    },
}

// ---------------------------------------------------------------------------------------
// Frames.

/// The kinds of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello,
    Raft,
    FillRequest,
    FillChunk,
    RejoinAsk,
    RejoinAnswer,
    Forward,
    Hibernation,
    Alive,
    Leader,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Hello => KIND_HELLO,
            Kind::Raft => KIND_RAFT,
            Kind::FillRequest => KIND_FILL_REQUEST,
            Kind::FillChunk => KIND_FILL_CHUNK,
            Kind::RejoinAsk => KIND_REJOIN_ASK,
            Kind::RejoinAnswer => KIND_REJOIN_ANSWER,
            Kind::Forward => KIND_FORWARD,
            Kind::Hibernation => KIND_HIBERNATION,
            Kind::Alive => KIND_ALIVE,
            Kind::Leader => KIND_LEADER,
        }
    }
}

/// Judges the frame at the start of `bytes` as soon as enough of its header is there:
/// `None` until then, else its kind and length field (kind and body). The length is
/// checked against `len_max` with only its own 4 bytes present.
fn frame_header(bytes: &[u8], len_max: usize) -> Result<Option<(Kind, usize)>, FrameError> {
    let Some(len_field) = bytes.get(LEN_AT..KIND_AT) else {
        return Ok(None);
    };
    let mut len = [0; LEN_FIELD_BYTES];
    len.copy_from_slice(len_field);
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > len_max {
        return Err(FrameError::TooLarge { len, max: len_max });
    }
    let Some(&kind) = bytes.get(KIND_AT) else {
        return Ok(None);
    };
    match kind {
        KIND_HELLO => Ok(Some((Kind::Hello, len))),
        KIND_RAFT => Ok(Some((Kind::Raft, len))),
        KIND_FILL_REQUEST => Ok(Some((Kind::FillRequest, len))),
        KIND_FILL_CHUNK => Ok(Some((Kind::FillChunk, len))),
        KIND_REJOIN_ASK => Ok(Some((Kind::RejoinAsk, len))),
        KIND_REJOIN_ANSWER => Ok(Some((Kind::RejoinAnswer, len))),
        KIND_FORWARD => Ok(Some((Kind::Forward, len))),
        KIND_HIBERNATION => Ok(Some((Kind::Hibernation, len))),
        KIND_ALIVE => Ok(Some((Kind::Alive, len))),
        KIND_LEADER => Ok(Some((Kind::Leader, len))),
        kind => Err(FrameError::UnknownKind { kind }),
    }
}

/// Reads a frame body's fields in order, each checked against the bytes left.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < count {
            return Err(FrameError::Truncated { field });
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N, field)?);
        Ok(array)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<&'a str, FrameError> {
        let len = usize::from(u16::from_be_bytes(self.array(field)?));
        if len > max {
            return Err(FrameError::TooLong { field, len, max });
        }
        std::str::from_utf8(self.take(len, field)?)
            .map_err(|source| FrameError::NotUtf8 { field, source })
    }
}

fn decode_hello(body: &[u8]) -> Result<Hello, FrameError> {
    let mut fields = Fields { bytes: body };
    let hello = Hello {
        node_id: u64::from_be_bytes(fields.array("node id")?),
        cluster_name: fields
            .string("cluster name", TRANSPORT_CLUSTER_NAME_BYTES_MAX)?
            .to_owned(),
        kafka_host: fields
            .string("Kafka host", TRANSPORT_HOST_BYTES_MAX)?
            .to_owned(),
        kafka_port: u16::from_be_bytes(fields.array("Kafka port")?),
        incarnation: u64::from_be_bytes(fields.array("incarnation")?),
    };
    if !fields.bytes.is_empty() {
        return Err(FrameError::TrailingBytes {
            count: fields.bytes.len(),
        });
    }
    Ok(hello)
}

/// The group a Raft or fill frame's body names, and the fields after it.
fn decode_group(body: &[u8]) -> Result<(Group<'_>, Fields<'_>), FrameError> {
    let mut fields = Fields { bytes: body };
    let topic = fields.string("topic name", TOPIC_NAME_LEN_MAX)?;
    if topic.is_empty() {
        return Err(FrameError::TopicEmpty);
    }
    let partition = u32::from_be_bytes(fields.array("partition")?);
    let tag = u64::from_be_bytes(fields.array("topic tag")?);
    Ok((
        Group {
            topic,
            partition,
            tag,
        },
        fields,
    ))
}

/// A Raft frame's body: the group's topic and partition, and the message.
fn decode_raft(body: &[u8]) -> Result<(Group<'_>, Payload), FrameError> {
    let (group, fields) = decode_group(body)?;
    let message =
        Message::parse_from_bytes(fields.bytes).map_err(|source| FrameError::Message { source })?;
    Ok((group, Payload::Raft(message)))
}

/// A fill frame's body (request or chunk): the group, and what it asks or answers.
fn decode_fill(kind: Kind, body: &[u8]) -> Result<(Group<'_>, Payload), FrameError> {
    let (group, mut fields) = decode_group(body)?;
    let offset = i64::from_be_bytes(fields.array("offset")?);
    if offset < 0 {
        return Err(FrameError::FillOutOfBounds {
            field: "offset",
            value: offset,
        });
    }
    let payload = if kind == Kind::FillRequest {
        let max_bytes = u32::from_be_bytes(fields.array("max bytes")?);
        if !(1..=FILL_CHUNK_BYTES_MAX).contains(&max_bytes) {
            return Err(FrameError::FillOutOfBounds {
                field: "max bytes",
                value: i64::from(max_bytes),
            });
        }
        if !fields.bytes.is_empty() {
            return Err(FrameError::TrailingBytes {
                count: fields.bytes.len(),
            });
        }
        Payload::FillRequest { offset, max_bytes }
    } else {
        let log_start = i64::from_be_bytes(fields.array("log start")?);
        if log_start < 0 {
            return Err(FrameError::FillOutOfBounds {
                field: "log start",
                value: log_start,
            });
        }
        let batches = bytes::Bytes::copy_from_slice(fields.bytes);
        Payload::FillChunk {
            offset,
            log_start,
            batches,
        }
    };
    Ok((group, payload))
}

/// A rejoin frame's body (question or answer): the group, and the answer's state.
fn decode_rejoin(kind: Kind, body: &[u8]) -> Result<(Group<'_>, Payload), FrameError> {
    let (group, mut fields) = decode_group(body)?;
    let payload = if kind == Kind::RejoinAsk {
        Payload::RejoinAsk
    } else {
        let term = u64::from_be_bytes(fields.array("term")?);
        let last_index = u64::from_be_bytes(fields.array("last index")?);
        let last_term = u64::from_be_bytes(fields.array("last term")?);
        if last_term > term {
            return Err(FrameError::RejoinAnswerTerms { term, last_term });
        }
        Payload::RejoinAnswer(LogState {
            term,
            last_index,
            last_term,
        })
    };
    if !fields.bytes.is_empty() {
        return Err(FrameError::TrailingBytes {
            count: fields.bytes.len(),
        });
    }
    Ok((group, payload))
}

/// A forwarded command's body: the group, and the command (not empty).
fn decode_forward(body: &[u8]) -> Result<(Group<'_>, Payload), FrameError> {
    let (group, fields) = decode_group(body)?;
    if fields.bytes.is_empty() {
        return Err(FrameError::Truncated { field: "command" });
    }
    let command = bytes::Bytes::copy_from_slice(fields.bytes);
    Ok((group, Payload::Forward(command)))
}

/// A leader frame's body: the group, the term, and the in-sync ids.
fn decode_leader(body: &[u8]) -> Result<(Group<'_>, Payload), FrameError> {
    let (group, mut fields) = decode_group(body)?;
    let term = u64::from_be_bytes(fields.array("term")?);
    let [count] = fields.array("in-sync count")?;
    if usize::from(count) > LEADER_IN_SYNC_MAX {
        return Err(FrameError::LeaderInSync { count });
    }
    let in_sync = (0..count)
        .map(|_| Ok(u64::from_be_bytes(fields.array("in-sync id")?)))
        .collect::<Result<Vec<u64>, FrameError>>()?;
    if !fields.bytes.is_empty() {
        return Err(FrameError::TrailingBytes {
            count: fields.bytes.len(),
        });
    }
    Ok((group, Payload::Leader { term, in_sync }))
}

/// A hibernation frame's body: the group, and the signal.
fn decode_hibernation(body: &[u8]) -> Result<(Group<'_>, Payload), FrameError> {
    let (group, mut fields) = decode_group(body)?;
    let [code] = fields.array("signal")?;
    let term = u64::from_be_bytes(fields.array("term")?);
    let index = u64::from_be_bytes(fields.array("index")?);
    if !fields.bytes.is_empty() {
        return Err(FrameError::TrailingBytes {
            count: fields.bytes.len(),
        });
    }
    let signal = match code {
        SIGNAL_ASK => Signal::Ask { term, index },
        SIGNAL_AGREE => Signal::Agree { term, index },
        SIGNAL_WAKE if index == 0 => Signal::Wake { term },
        SIGNAL_WAKE => return Err(FrameError::WakeIndex { index }),
        code => return Err(FrameError::UnknownSignal { code }),
    };
    Ok((group, Payload::Hibernation(signal)))
}

/// Appends a frame's header; its length field is patched by [`finish_frame`].
fn begin_frame(out: &mut Vec<u8>, kind: Kind) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_FIELD_BYTES]);
    out.push(kind.code());
    start
}

/// Writes the length of the frame begun at `start`.
fn finish_frame(out: &mut [u8], start: usize) {
    let len = out.len() - start - LEN_FIELD_BYTES;
    assert!(
        (1..=TRANSPORT_FRAME_BYTES_MAX).contains(&len),
        "frame length {len}"
    );
    out[start + LEN_AT..start + KIND_AT].copy_from_slice(&(len as u32).to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, value: &str) {
    let len = u16::try_from(value.len());
    let Ok(len) = len else {
        unreachable!("strings are bounded below u16::MAX before they are encoded")
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

fn encode_hello(hello: &Hello) -> Vec<u8> {
    hello.assert_valid();
    let mut out = Vec::with_capacity(LEN_FIELD_BYTES + HELLO_FRAME_LEN_MAX);
    let start = begin_frame(&mut out, Kind::Hello);
    out.extend_from_slice(&hello.node_id.to_be_bytes());
    put_string(&mut out, &hello.cluster_name);
    put_string(&mut out, &hello.kafka_host);
    out.extend_from_slice(&hello.kafka_port.to_be_bytes());
    out.extend_from_slice(&hello.incarnation.to_be_bytes());
    finish_frame(&mut out, start);
    out
}

/// A frame to queue: a Raft message, or another frame for a group (fill, rejoin).
#[derive(Clone, Copy)]
enum Outgoing<'a> {
    Raft(&'a Message),
    Payload(&'a Payload),
}

/// Why a message could not be queued.
#[derive(Debug)]
enum Unsent {
    QueueFull,
    /// A topic name out of bounds, a frame above the limit, or an encoding failure: never
    /// sendable, so a bug (or an entry above the batch limit) on this side.
    Unsendable(String),
}

/// The length field of a Raft frame for `topic` and a message of `message_bytes`.
fn raft_frame_len(topic: &str, message_bytes: usize) -> usize {
    1 + STRING_LEN_BYTES + topic.len() + PARTITION_BYTES + TAG_BYTES + message_bytes
}

/// Refuses a topic name no frame can carry (a bug on this side).
fn check_topic(topic: &str) -> Result<(), Unsent> {
    if topic.is_empty() || topic.len() > TOPIC_NAME_LEN_MAX {
        return Err(Unsent::Unsendable(format!(
            "topic name of {} bytes",
            topic.len()
        )));
    }
    Ok(())
}

/// Whether a frame whose length field is `len` may be sent at all, and fits `room` now.
fn check_room(len: usize, room: usize) -> Result<(), Unsent> {
    if len > TRANSPORT_FRAME_BYTES_MAX {
        return Err(Unsent::Unsendable(format!(
            "a frame of {len} bytes; the limit is {TRANSPORT_FRAME_BYTES_MAX}"
        )));
    }
    if LEN_FIELD_BYTES + len > room {
        return Err(Unsent::QueueFull);
    }
    Ok(())
}

/// Appends a Raft frame to `out` if it fits `room` bytes; leaves `out` as it was if not.
fn encode_raft(
    out: &mut Vec<u8>,
    room: usize,
    group: Group<'_>,
    message: &Message,
) -> Result<(), Unsent> {
    let Group {
        topic,
        partition,
        tag,
    } = group;
    check_topic(topic)?;
    let len = raft_frame_len(topic, message.compute_size() as usize);
    check_room(len, room)?;
    out.reserve(LEN_FIELD_BYTES + len);
    let start = begin_frame(out, Kind::Raft);
    put_string(out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&tag.to_be_bytes());
    let mut stream = CodedOutputStream::vec(out);
    // `compute_size` above cached the sizes this relies on; the message is borrowed, so it
    // cannot have changed since.
    let written = message
        .write_to_with_cached_sizes(&mut stream)
        .and_then(|()| stream.flush());
    drop(stream);
    if let Err(error) = written {
        out.truncate(start);
        return Err(Unsent::Unsendable(format!(
            "the message does not encode: {error}"
        )));
    }
    assert_eq!(
        out.len() - start,
        LEN_FIELD_BYTES + len,
        "the size computed is written"
    );
    finish_frame(out, start);
    Ok(())
}

/// Appends a fill, rejoin or forwarded frame to `out` if it fits `room` bytes.
fn encode_group_frame(
    out: &mut Vec<u8>,
    room: usize,
    group: Group<'_>,
    payload: &Payload,
) -> Result<(), Unsent> {
    let Group {
        topic,
        partition,
        tag,
    } = group;
    check_topic(topic)?;
    let (kind, body_bytes) = match payload {
        Payload::FillRequest { offset, max_bytes } => {
            assert!(
                (1..=FILL_CHUNK_BYTES_MAX).contains(max_bytes),
                "{max_bytes}"
            );
            assert!(*offset >= 0, "fill offset {offset}");
            (Kind::FillRequest, 8 + 4)
        }
        Payload::FillChunk {
            offset,
            log_start,
            batches,
        } => {
            assert!(
                *offset >= 0 && *log_start >= 0,
                "fill {offset}, {log_start}"
            );
            (Kind::FillChunk, 2 * 8 + batches.len())
        }
        Payload::RejoinAsk => (Kind::RejoinAsk, 0),
        Payload::RejoinAnswer(state) => {
            assert!(state.last_term <= state.term, "{state:?}");
            (Kind::RejoinAnswer, 3 * 8)
        }
        Payload::Forward(command) => {
            assert!(!command.is_empty(), "an empty forwarded command");
            (Kind::Forward, command.len())
        }
        Payload::Hibernation(_) => (Kind::Hibernation, 1 + 2 * 8),
        Payload::Leader { in_sync, .. } => {
            assert!(
                in_sync.len() <= LEADER_IN_SYNC_MAX,
                "{} in sync",
                in_sync.len()
            );
            (Kind::Leader, 8 + 1 + 8 * in_sync.len())
        }
        Payload::Raft(_) => unreachable!("Raft messages are encoded by encode_raft"),
        Payload::Alive => unreachable!("alive frames are encoded by encode_alive"),
    };
    let len = 1 + STRING_LEN_BYTES + topic.len() + PARTITION_BYTES + TAG_BYTES + body_bytes;
    check_room(len, room)?;
    out.reserve(LEN_FIELD_BYTES + len);
    let start = begin_frame(out, kind);
    put_string(out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&tag.to_be_bytes());
    match payload {
        Payload::FillRequest { offset, max_bytes } => {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&max_bytes.to_be_bytes());
        }
        Payload::FillChunk {
            offset,
            log_start,
            batches,
        } => {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&log_start.to_be_bytes());
            out.extend_from_slice(batches);
        }
        Payload::RejoinAnswer(state) => {
            out.extend_from_slice(&state.term.to_be_bytes());
            out.extend_from_slice(&state.last_index.to_be_bytes());
            out.extend_from_slice(&state.last_term.to_be_bytes());
        }
        Payload::Forward(command) => out.extend_from_slice(command),
        Payload::Hibernation(signal) => {
            let (code, term, index) = match *signal {
                Signal::Ask { term, index } => (SIGNAL_ASK, term, index),
                Signal::Agree { term, index } => (SIGNAL_AGREE, term, index),
                Signal::Wake { term } => (SIGNAL_WAKE, term, 0),
            };
            out.push(code);
            out.extend_from_slice(&term.to_be_bytes());
            out.extend_from_slice(&index.to_be_bytes());
        }
        Payload::Leader { term, in_sync } => {
            out.extend_from_slice(&term.to_be_bytes());
            out.push(in_sync.len() as u8);
            for id in in_sync {
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        Payload::RejoinAsk | Payload::Raft(_) | Payload::Alive => {}
    }
    finish_frame(out, start);
    Ok(())
}

/// Appends an alive frame (no body) to `out` if it fits `room` bytes.
fn encode_alive(out: &mut Vec<u8>, room: usize) -> Result<(), Unsent> {
    check_room(1, room)?;
    let start = begin_frame(out, Kind::Alive);
    finish_frame(out, start);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading frames from a connection.

/// A connection's receive buffer: frames are read into it in as few receives as the
/// kernel allows and handed out in place. Its capacity is at most the larger of
/// `TRANSPORT_READ_BUFFER_BYTES` and the frame being read (so at most the frame limit plus
/// its length field), and it shrinks back once emptied of a large frame. A receive
/// abandoned half-way (a timeout) takes the buffer with it: the connection is given up then.
struct FrameReader {
    buf: Vec<u8>,
    /// Bytes of `buf` before this are consumed.
    start: usize,
    /// Bytes of the frame handed out last, consumed at the next call.
    handed_out: usize,
}

impl FrameReader {
    fn new() -> FrameReader {
        FrameReader {
            buf: Vec::with_capacity(TRANSPORT_READ_BUFFER_BYTES),
            start: 0,
            handed_out: 0,
        }
    }

    /// Bytes received and not yet handed out in a frame.
    fn buffered(&self) -> usize {
        self.buf.len() - self.start - self.handed_out
    }

    /// The next whole frame: its kind and body, its length field at most `len_max`.
    async fn next(
        &mut self,
        stream: &TcpStream,
        len_max: usize,
    ) -> Result<(Kind, &[u8]), ConnectionError> {
        self.start += std::mem::take(&mut self.handed_out);
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > TRANSPORT_BUFFER_RETAINED_BYTES_MAX {
                self.buf = Vec::with_capacity(TRANSPORT_READ_BUFFER_BYTES);
            }
        }
        let (kind, len) = loop {
            match frame_header(&self.buf[self.start..], len_max)? {
                Some((kind, len)) if self.buf.len() - self.start >= LEN_FIELD_BYTES + len => {
                    break (kind, len);
                }
                Some((_, len)) => self.receive(stream, LEN_FIELD_BYTES + len).await?,
                None => self.receive(stream, BODY_AT).await?,
            }
        };
        self.handed_out = LEN_FIELD_BYTES + len;
        Ok((
            kind,
            &self.buf[self.start + BODY_AT..self.start + self.handed_out],
        ))
    }

    /// Receives once, with room for `want` bytes from `start` (more than it holds).
    async fn receive(&mut self, stream: &TcpStream, want: usize) -> Result<(), ConnectionError> {
        assert!(
            self.buf.len() < self.start + want,
            "receiving only what is missing"
        );
        if self.start + want > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
            let capacity = want.max(TRANSPORT_READ_BUFFER_BYTES);
            if capacity > self.buf.capacity() {
                self.buf.reserve_exact(capacity - self.buf.len());
            }
        }
        let buf = std::mem::take(&mut self.buf);
        let (len, capacity) = (buf.len(), buf.capacity());
        let (received, slice) = stream.recv(buf.slice(len..capacity)).await;
        self.buf = slice.into_inner();
        assert!(
            self.buf.capacity() == capacity,
            "a receive does not reallocate"
        );
        if received? > 0 {
            return Ok(());
        }
        let received = self.buf.len() - self.start;
        if received == 0 {
            Err(ConnectionError::PeerClosed)
        } else {
            Err(ConnectionError::ClosedMidFrame {
                received,
                expected: want,
            })
        }
    }
}

/// Reads the first frame of a connection, which must be a hello.
async fn read_hello(
    reader: &mut FrameReader,
    stream: &TcpStream,
) -> Result<Hello, ConnectionError> {
    match reader.next(stream, HELLO_FRAME_LEN_MAX).await? {
        (Kind::Hello, body) => Ok(decode_hello(body)?),
        (kind, _) => Err(ConnectionError::ExpectedHello { kind: kind.code() }),
    }
}

/// Runs `future` within the handshake timeout.
async fn within_handshake<T>(
    future: impl std::future::Future<Output = Result<T, ConnectionError>>,
) -> Result<T, ConnectionError> {
    let ms = TRANSPORT_HANDSHAKE_TIMEOUT_MS;
    rt::timeout(Duration::from_millis(ms), future)
        .await
        .unwrap_or(Err(ConnectionError::HandshakeTimeout { ms }))
}

fn check_cluster(local: &Hello, peer: &Hello) -> Result<(), ConnectionError> {
    if peer.cluster_name != local.cluster_name {
        return Err(ConnectionError::ClusterMismatch {
            ours: local.cluster_name.clone(),
            theirs: peer.cluster_name.clone(),
        });
    }
    if peer.node_id == local.node_id {
        return Err(ConnectionError::SameNode {
            node_id: peer.node_id,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sending.

/// What a [`Transport`] has done since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages encoded into a peer's queue.
    pub messages_queued: u64,
    /// Messages dropped because their peer's queue was full.
    pub messages_dropped_queue_full: u64,
    /// Messages to a node this transport has no address for.
    pub messages_dropped_unknown_peer: u64,
    /// Messages that can never be sent: a frame above the limit, a topic name out of
    /// bounds, an encoding failure (each logged as an error).
    pub messages_dropped_unsendable: u64,
    /// Messages queued, or being written, when their connection failed or could not be
    /// made.
    pub messages_dropped_disconnected: u64,
    /// Writes of queued frames (each one send of everything queued for a peer).
    pub batches_sent: u64,
    pub bytes_sent: u64,
    /// Connections to peers that completed their hello exchange.
    pub connections_opened: u64,
    /// Attempts to connect that failed (refused, timed out, a hello refused).
    pub connect_failures: u64,
}

type Stats = Rc<RefCell<TransportStats>>;

/// Frames waiting for a peer's writer, and what the writer is sending.
#[derive(Default)]
struct Outbox {
    frames: Vec<u8>,
    messages: u64,
    in_flight_bytes: usize,
    in_flight_messages: u64,
    /// Whether dropping for a full queue was logged since the last batch went out.
    full_logged: bool,
}

/// One peer, as this shard's transport sees it.
struct Peer {
    id: u64,
    address: SocketAddr,
    queue_bytes_max: usize,
    outbox: RefCell<Outbox>,
    /// The writer, when it waits for frames.
    writer: Cell<Option<Waker>>,
    /// The hello the peer answered on the latest connection.
    answered: RefCell<Option<Hello>>,
}

impl Peer {
    fn wake_writer(&self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    fn enqueue(&self, group: Group<'_>, frame: Outgoing<'_>) -> Result<(), Unsent> {
        let mut outbox = self.outbox.borrow_mut();
        let queued = outbox.frames.len() + outbox.in_flight_bytes;
        assert!(queued <= self.queue_bytes_max, "{queued} bytes queued");
        let room = self.queue_bytes_max - queued;
        match frame {
            Outgoing::Raft(message) => {
                encode_raft(&mut outbox.frames, room, group, message)?;
            }
            Outgoing::Payload(Payload::Alive) => encode_alive(&mut outbox.frames, room)?,
            Outgoing::Payload(payload) => {
                encode_group_frame(&mut outbox.frames, room, group, payload)?;
            }
        }
        outbox.messages += 1;
        assert!(outbox.frames.len() + outbox.in_flight_bytes <= self.queue_bytes_max);
        Ok(())
    }

    /// Moves what is queued into `batch` (empty), to be written.
    fn take_batch(&self, mut batch: Vec<u8>) -> Vec<u8> {
        assert!(batch.is_empty());
        let mut outbox = self.outbox.borrow_mut();
        assert_eq!(outbox.in_flight_bytes, 0, "one batch in flight at a time");
        std::mem::swap(&mut outbox.frames, &mut batch);
        outbox.in_flight_bytes = batch.len();
        outbox.in_flight_messages = std::mem::take(&mut outbox.messages);
        batch
    }

    fn batch_sent(&self) {
        let mut outbox = self.outbox.borrow_mut();
        outbox.in_flight_bytes = 0;
        outbox.in_flight_messages = 0;
        outbox.full_logged = false;
    }

    /// Drops what was queued and in flight (the connection failed); returns how many
    /// messages.
    fn discard(&self) -> u64 {
        let mut outbox = self.outbox.borrow_mut();
        let dropped = outbox.messages + outbox.in_flight_messages;
        outbox.frames.clear();
        if outbox.frames.capacity() > TRANSPORT_BUFFER_RETAINED_BYTES_MAX {
            outbox.frames = Vec::new();
        }
        outbox.messages = 0;
        outbox.in_flight_bytes = 0;
        outbox.in_flight_messages = 0;
        dropped
    }
}

/// Aborts a task when dropped (a [`JoinHandle`] dropped detaches it).
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// One shard's sending side of the transport: a queue and a writer task per peer.
///
/// Dropping it stops its writers and closes their connections.
pub struct Transport {
    local: Hello,
    peers: HashMap<u64, Rc<Peer>>,
    stats: Stats,
    _writers: Vec<AbortOnDrop>,
}

impl Transport {
    /// A transport from the node `local` describes to `peers` (node id, internal address),
    /// with a writer task per peer that connects at once and stays connected.
    ///
    /// # Panics
    /// Outside a ringlog runtime, or if `local` does not pass [`Hello::validate`].
    pub fn new(local: Hello, peers: Vec<(u64, SocketAddr)>) -> Rc<Transport> {
        Self::with_queue_bytes_max(local, peers, TRANSPORT_PEER_QUEUE_BYTES_MAX)
    }

    fn with_queue_bytes_max(
        local: Hello,
        peers: Vec<(u64, SocketAddr)>,
        queue_bytes_max: usize,
    ) -> Rc<Transport> {
        local.assert_valid();
        let stats = Stats::default();
        let local_shared = Rc::new(local.clone());
        let mut writers = Vec::with_capacity(peers.len());
        let peers: HashMap<u64, Rc<Peer>> = peers
            .into_iter()
            .map(|(id, address)| {
                let peer = Rc::new(Peer {
                    id,
                    address,
                    queue_bytes_max,
                    outbox: RefCell::default(),
                    writer: Cell::new(None),
                    answered: RefCell::new(None),
                });
                let writer = run_writer(peer.clone(), local_shared.clone(), stats.clone());
                writers.push(AbortOnDrop(Some(rt::spawn_local(writer))));
                (id, peer)
            })
            .collect();
        Rc::new(Transport {
            local,
            peers,
            stats,
            _writers: writers,
        })
    }

    /// Queues `message` for node `to`, for `group`, and wakes that
    /// peer's writer; never waits. The message is dropped (and counted in
    /// [`Transport::stats`]) if `to` is not a peer, if the peer's queue is full, or if it
    /// can never be sent (logged as an error).
    ///
    /// # Panics
    /// If `message` is not from this node to `to`: the receiver would refuse it.
    pub fn send(&self, to: u64, group: Group<'_>, message: &Message) {
        assert_eq!(message.to, to, "a message goes to the node it names");
        assert_eq!(
            message.from, self.local.node_id,
            "a message is sent by its sender"
        );
        self.queue(to, group, Outgoing::Raft(message));
    }

    /// Queues a fill request or chunk (`snapshot.rs`), or a rejoin question or answer
    /// (`rejoin.rs`), for node `to`, as
    /// [`Transport::send`] queues a Raft message (counted with them, dropped as they are).
    ///
    /// # Panics
    /// If `payload` is a Raft message (use [`Transport::send`]).
    pub fn send_payload(&self, to: u64, group: Group<'_>, payload: &Payload) {
        assert!(
            !matches!(payload, Payload::Raft(_)),
            "Raft messages go through send"
        );
        self.queue(to, group, Outgoing::Payload(payload));
    }

    /// Queues an alive frame for node `to` (node liveness, `node.rs`), as
    /// [`Transport::send`] queues a Raft message.
    pub fn send_alive(&self, to: u64) {
        let nobody = Group {
            topic: "",
            partition: 0,
            tag: 0,
        };
        self.queue(to, nobody, Outgoing::Payload(&Payload::Alive));
    }

    fn queue(&self, to: u64, group: Group<'_>, frame: Outgoing<'_>) {
        let Some(peer) = self.peers.get(&to) else {
            tracing::debug!(
                to,
                topic = group.topic,
                partition = group.partition,
                "dropping a Raft message to an unknown node"
            );
            self.stats.borrow_mut().messages_dropped_unknown_peer += 1;
            return;
        };
        let mut stats = self.stats.borrow_mut();
        match peer.enqueue(group, frame) {
            Ok(()) => {
                stats.messages_queued += 1;
                peer.wake_writer();
            }
            Err(Unsent::QueueFull) => {
                stats.messages_dropped_queue_full += 1;
                let mut outbox = peer.outbox.borrow_mut();
                if !std::mem::replace(&mut outbox.full_logged, true) {
                    tracing::warn!(
                        peer = to,
                        queued_bytes_max = peer.queue_bytes_max,
                        "the queue to a peer is full: dropping Raft messages until it drains"
                    );
                }
            }
            Err(Unsent::Unsendable(reason)) => {
                stats.messages_dropped_unsendable += 1;
                tracing::error!(
                    peer = to,
                    topic = group.topic,
                    partition = group.partition,
                    %reason,
                    "dropping a Raft message"
                );
            }
        }
    }

    /// The hello `node_id` answered on this shard's latest connection to it: its Kafka
    /// address, once connected.
    pub fn peer_hello(&self, node_id: u64) -> Option<Hello> {
        self.peers.get(&node_id)?.answered.borrow().clone()
    }

    pub fn stats(&self) -> TransportStats {
        *self.stats.borrow()
    }
}

/// A peer's writer: connects (again after a backoff whenever the connection fails), then
/// sends whatever is queued, all of it in one send.
async fn run_writer(peer: Rc<Peer>, local: Rc<Hello>, stats: Stats) {
    let backoff_min = Duration::from_millis(TRANSPORT_RECONNECT_BACKOFF_MIN_MS);
    let backoff_max = Duration::from_millis(TRANSPORT_RECONNECT_BACKOFF_MAX_MS);
    let mut backoff = backoff_min;
    let mut failing = false;
    loop {
        match connect(&peer, &local).await {
            Ok((stream, hello)) => {
                stats.borrow_mut().connections_opened += 1;
                tracing::debug!(peer = peer.id, address = %peer.address, "connected to a peer");
                *peer.answered.borrow_mut() = Some(hello);
                failing = false;
                backoff = backoff_min;
                let error = write_until_closed(&peer, &stream, &stats).await;
                let _ = stream.shutdown(Shutdown::Both);
                tracing::warn!(peer = peer.id, address = %peer.address, %error,
                    "the connection to a peer ended; reconnecting");
            }
            Err(error) => {
                stats.borrow_mut().connect_failures += 1;
                // The first failure in a row is worth a warning; the retries are not.
                if failing {
                    tracing::debug!(peer = peer.id, address = %peer.address, %error,
                        "connecting to a peer failed again");
                } else {
                    tracing::warn!(peer = peer.id, address = %peer.address, %error,
                        "connecting to a peer failed; retrying");
                }
                if failing {
                    backoff = (backoff * 2).min(backoff_max);
                }
                failing = true;
            }
        }
        stats.borrow_mut().messages_dropped_disconnected += peer.discard();
        rt::sleep(backoff).await;
    }
}

/// Connects to `peer` and exchanges hellos.
async fn connect(peer: &Peer, local: &Hello) -> Result<(TcpStream, Hello), ConnectionError> {
    within_handshake(async {
        let stream = TcpStream::connect(peer.address).await?;
        stream.set_nodelay(true)?;
        let (sent, _) = stream.send_all(encode_hello(local)).await;
        sent?;
        let mut reader = FrameReader::new();
        let hello = read_hello(&mut reader, &stream).await?;
        if reader.buffered() > 0 {
            return Err(ConnectionError::UnexpectedData);
        }
        check_cluster(local, &hello)?;
        if hello.node_id != peer.id {
            return Err(ConnectionError::WrongNode {
                expected: peer.id,
                got: hello.node_id,
            });
        }
        Ok((stream, hello))
    })
    .await
}

/// Sends what is queued for `peer` until the connection fails; returns why.
async fn write_until_closed(peer: &Rc<Peer>, stream: &TcpStream, stats: &Stats) -> ConnectionError {
    let closed: Rc<RefCell<Option<ConnectionError>>> = Rc::default();
    let _watcher = AbortOnDrop(Some(rt::spawn_local(watch(
        stream.clone(),
        peer.clone(),
        closed.clone(),
    ))));
    let timeout = Duration::from_millis(TRANSPORT_SEND_TIMEOUT_MS);
    let mut spare = Vec::new();
    loop {
        poll_fn(|cx| {
            if closed.borrow().is_some() || !peer.outbox.borrow().frames.is_empty() {
                return Poll::Ready(());
            }
            peer.writer.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        if let Some(error) = closed.borrow_mut().take() {
            return error;
        }
        let batch = peer.take_batch(spare);
        let bytes = batch.len();
        let Ok((sent, mut batch)) = rt::timeout(timeout, stream.send_all(batch)).await else {
            return ConnectionError::SendTimeout {
                ms: TRANSPORT_SEND_TIMEOUT_MS,
            };
        };
        if let Err(source) = sent {
            return ConnectionError::Io { source };
        }
        peer.batch_sent();
        let mut stats = stats.borrow_mut();
        stats.batches_sent += 1;
        stats.bytes_sent += bytes as u64;
        batch.clear();
        if batch.capacity() > TRANSPORT_BUFFER_RETAINED_BYTES_MAX {
            batch = Vec::new();
        }
        spare = batch;
    }
}

/// Waits for the accepting side to close the connection (it sends nothing after its
/// hello), so the writer reconnects at once rather than at its next failed send.
async fn watch(stream: TcpStream, peer: Rc<Peer>, closed: Rc<RefCell<Option<ConnectionError>>>) {
    let (received, _) = stream.recv(Vec::with_capacity(1)).await;
    let error = match received {
        Ok(0) => ConnectionError::PeerClosed,
        Ok(_) => ConnectionError::UnexpectedData,
        Err(source) => ConnectionError::Io { source },
    };
    *closed.borrow_mut() = Some(error);
    peer.wake_writer();
}

// ---------------------------------------------------------------------------------------
// Receiving.

/// What the accepting side shares between its connections.
struct Inbound<H, D> {
    local: Hello,
    on_hello: H,
    deliver: D,
    connections: Cell<usize>,
}

/// Accepts peers' connections on `listener` until dropped: each one's hello is checked,
/// answered with `local`, and given to `on_hello` (a peer's node id and Kafka address),
/// whose answer is kept as long as the connection lasts and dropped when it ends (a guard
/// counting a peer's open connections, say); then each Raft message it carries is given
/// to `deliver`. A connection with a bad frame
/// is closed (logged); the others go on. Connections already accepted stay open when this
/// future is dropped, until their peers close them.
///
/// # Panics
/// Outside a ringlog runtime, or if `local` does not pass [`Hello::validate`].
pub async fn serve<G: 'static>(
    listener: Rc<TcpListener>,
    local: Hello,
    on_hello: impl Fn(&Hello) -> G + 'static,
    deliver: impl Fn(Incoming) + 'static,
) {
    local.assert_valid();
    let inbound = Rc::new(Inbound {
        local,
        on_hello,
        deliver,
        connections: Cell::new(0),
    });
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a peer's connection failed");
                rt::sleep(Duration::from_millis(TRANSPORT_ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        if inbound.connections.get() >= TRANSPORT_CONNECTIONS_MAX {
            tracing::warn!(
                limit = TRANSPORT_CONNECTIONS_MAX,
                "refusing a peer's connection: this shard serves as many as it may"
            );
            continue;
        }
        let inbound = inbound.clone();
        rt::spawn_local(async move { serve_counted(&inbound, stream).await }).detach();
    }
}

async fn serve_counted<H, G, D>(inbound: &Inbound<H, D>, stream: TcpStream)
where
    H: Fn(&Hello) -> G,
    D: Fn(Incoming),
{
    let _counted = Counted::enter(&inbound.connections);
    let address = stream.peer_addr().ok();
    let node = Cell::new(None);
    // Dropped when this function returns: the connection is over.
    let guard = RefCell::new(None);
    let result = serve_connection(
        &stream,
        &inbound.local,
        |hello| {
            node.set(Some(hello.node_id));
            *guard.borrow_mut() = Some((inbound.on_hello)(hello));
        },
        &inbound.deliver,
    )
    .await;
    match result {
        ConnectionError::PeerClosed => {
            tracing::debug!(?address, node = node.get(), "a peer closed its connection");
        }
        error => {
            tracing::warn!(?address, node = node.get(), %error, "closing a peer's connection");
        }
    }
}

/// One connection counted in its shard's total while it lives.
struct Counted<'a>(&'a Cell<usize>);

impl<'a> Counted<'a> {
    fn enter(count: &'a Cell<usize>) -> Counted<'a> {
        count.set(count.get() + 1);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        assert!(self.0.get() > 0);
        self.0.set(self.0.get() - 1);
    }
}

/// Serves one accepted connection until it fails or closes; returns why.
async fn serve_connection(
    stream: &TcpStream,
    local: &Hello,
    on_hello: impl Fn(&Hello),
    deliver: impl Fn(Incoming),
) -> ConnectionError {
    let mut reader = FrameReader::new();
    let hello = within_handshake(async {
        let hello = read_hello(&mut reader, stream).await?;
        check_cluster(local, &hello)?;
        let (sent, _) = stream.send_all(encode_hello(local)).await;
        sent?;
        Ok(hello)
    })
    .await;
    let hello = match hello {
        Ok(hello) => hello,
        Err(error) => return error,
    };
    on_hello(&hello);
    loop {
        let decoded = match reader.next(stream, TRANSPORT_FRAME_BYTES_MAX).await {
            Ok((Kind::Raft, body)) => decode_raft(body),
            Ok((kind @ (Kind::FillRequest | Kind::FillChunk), body)) => decode_fill(kind, body),
            Ok((kind @ (Kind::RejoinAsk | Kind::RejoinAnswer), body)) => decode_rejoin(kind, body),
            Ok((Kind::Forward, body)) => decode_forward(body),
            Ok((Kind::Hibernation, body)) => decode_hibernation(body),
            Ok((Kind::Leader, body)) => decode_leader(body),
            Ok((Kind::Alive, [])) => Ok((
                Group {
                    topic: "",
                    partition: 0,
                    tag: 0,
                },
                Payload::Alive,
            )),
            Ok((Kind::Alive, body)) => {
                return FrameError::TrailingBytes { count: body.len() }.into()
            }
            Ok((Kind::Hello, _)) => return ConnectionError::UnexpectedHello,
            Err(error) => return error,
        };
        let incoming = match decoded {
            Ok((group, payload)) => Incoming {
                from: hello.node_id,
                topic: group.topic.to_owned(),
                partition: group.partition,
                tag: group.tag,
                payload,
            },
            Err(error) => return error.into(),
        };
        if let Some(message) = incoming.message() {
            if message.from != hello.node_id || message.to != local.node_id {
                return ConnectionError::Misaddressed {
                    from: message.from,
                    to: message.to,
                    peer: hello.node_id,
                    local: local.node_id,
                };
            }
        }
        deliver(incoming);
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
pub(crate) mod tests;
