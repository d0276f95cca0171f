//! A node of a cluster: every partition's replica on the shard that owns it, each driven
//! by a task of its own; the controller group on shard 0; and the internal transport
//! between nodes.
//!
//! - **Membership is static**: the nodes are those of `peers`, every one a voter of the
//!   controller's group. A topic's partitions are placed on replica sets of its
//!   replication factor (`placement.rs`): only a set's nodes open the partition's replica,
//!   its group's voters, and its leader announces itself to the other nodes
//!   (`Payload::Leader`), which answer Metadata with it.
//! - **One task per group** owns its [`Replica`]. Ticks, peers' messages and proposals
//!   reach it through its inbox; after each batch of commands it runs
//!   [`Replica::process_ready_sending`] until nothing is ready, handing the messages to the
//!   shard's [`Transport`] as soon as each may go (a leader's appends before its own write
//!   of the entries). A replica that fails (a failed write, an inconsistency) stops
//!   its task, is reported, and answers nothing more until the node restarts.
//! - **The inbox is bounded** (`GROUP_INBOX_COMMANDS_MAX`): a peer's message that finds it
//!   full is dropped and counted ([`Cluster::steps_dropped`]; Raft sends again), a proposal
//!   is refused with [`ClusterError::InboxFull`], which a client retries.
//! - **Ticks** come from one timer task per shard, every [`ClusterConfig::tick`]. A tick is
//!   a flag in the inbox that the task clears, not a queued command: a task held up by a
//!   slow fsync ticks once when it is back, never a burst that starts elections.
//! - **Proposals have a deadline** (the caller's): past it the caller is answered
//!   [`ClusterError::ProposalTimedOut`]; a proposal still in the inbox then is not made,
//!   one already made may still commit (as a Kafka produce that timed out may).
//! - **Routing.** A peer's message arrives on whichever shard accepted the connection and
//!   is sent to the owner's mailbox unless it is the owner (see `transport.rs`).
//! - **Status.** Each group task publishes its leader, term and in-sync voters into a
//!   table every shard reads (Metadata, Produce and Fetch routing).
//! - **The controller** (`controller.rs`): creating or deleting a topic, adding partitions
//!   and altering a configuration propose a command to the controller group; every node
//!   applies the committed commands in order, changing its registry and opening (or
//!   closing) the partitions' replicas. A node that does not lead the controller forwards a
//!   configuration change or an auto-created topic to the leader; CreateTopics,
//!   DeleteTopics and CreatePartitions are answered NOT_CONTROLLER there, as Kafka does.
//! - **A deleted topic's groups** are closed before its logs: each task ends at its next
//!   turn, its replica (journal included) dropped, before the directories go. Frames name a
//!   group with its topic's tag (`transport.rs`), so a group of a topic created again
//!   under the old name never hears the old one's replicas on a node that has not applied
//!   the deletion yet.
//! - **Liveness.** Idle groups sleep (`hibernation.rs`), so a peer's death must be noticed
//!   without their heartbeats. A node notices it two ways, and tells every group of every
//!   shard (`Command::PeerGone`): every connection the peer had to it closed (its process
//!   died: the kernel closes its sockets), or nothing came from the peer for an election
//!   timeout (a network partition leaves connections open). Any frame counts as heard
//!   (`Inner::heard`, set as frames are routed), and each shard sends every peer an alive
//!   frame every heartbeat interval, so an idle node pair exchanges a few bytes a second
//!   instead of every group's heartbeats. A follower of the silent or gone peer forgets
//!   that leader and the lowest-numbered other voter campaigns, with pre-vote, at its next
//!   tick; a leader wakes to let its in-sync set and quorum check see the loss. A group
//!   whose replica here stops after a failure wakes its peers, who then elect.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use raft::eraftpb::Message;
use ringlog_engine::batch::{BatchBuilder, FrameHeader, RecordBatch};
use ringlog_engine::limits::PARTITIONS_PER_TOPIC_MAX;
use ringlog_engine::log::{Appended, PartitionId, RAFT_JOURNAL_FILE};
use ringlog_engine::rt::{self, ShardHandle, TcpListener, TrySendError};
use ringlog_engine::shard::{self as engine_shard, Engine, EngineError};
use ringlog_engine::storage::DiskStorage;
use ringlog_engine::topic::{shard_for, TopicConfig, TopicError, TopicMeta, TopicName};

use crate::applied::{read_applied, write_applied, Applied, Stopped};
use crate::controller::{
    applied_over, check_replica_set, place, Change, CommandError, CreateTopic, TopicRef,
    CONTROLLER_TOPIC, REPLICATION_FACTOR_MAX,
};
use crate::fill::{FillCounters, Fills};
use crate::hibernation::Signal;
use crate::inbox::{self, Inbox};
use crate::limits::{
    ANCHOR_SYNC_TICKS, CONTROLLER_APPLY_WAIT_MS, CONTROLLER_PROPOSE_TIMEOUT_MS,
    CONTROLLER_READ_BYTES_MAX, ENTRY_CACHE_BYTES_MAX, FORWARDED_CREATE_WAIT_MS,
    GROUP_CLOSE_WAIT_MS, GROUP_INBOX_COMMANDS_MAX, LEADER_ANNOUNCE_TICKS, REASSIGNED_REPORT_TICKS,
    WINDOW_ENTRIES_KEEP, WINDOW_ENTRIES_MAX,
};
use crate::placement::{same_set, Placements};
use crate::rejoin::LogState;
use crate::replica::{AnswerAt, Reconfiguring, Replica, ReplicaConfig, ReplicaError};
use crate::snapshot::Fetched;
use crate::transport::{self, topic_tag, Group, Hello, Incoming, Payload, Transport};

/// A node of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its node id (never 0, unique).
    pub id: u64,
    /// Its internal listener.
    pub internal: SocketAddr,
}

/// How this node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// Every node of the cluster, this one included.
    pub peers: Vec<Peer>,
    /// Where this node listens for its peers.
    pub internal_listen: SocketAddr,
    /// Where Kafka clients reach this node (sent to peers for their Metadata answers).
    pub kafka_advertised: SocketAddr,
    /// The cluster's name: nodes of differently named clusters refuse each other.
    pub cluster_name: String,
    /// The data directory (the controller's log lives in it).
    pub data_dir: PathBuf,
    /// One Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns (randomized up to twice this).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Whether idle groups sleep (`hibernation.rs`): on by default; off, every group ticks
    /// and heartbeats forever, as raft-rs alone does.
    pub hibernate: bool,
    /// Topics every node creates alike outside the controller (the group coordinator's
    /// `__consumer_offsets`): replicated on every node, placed by no command.
    pub everywhere: Vec<String>,
}

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("cannot listen for peers on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// No replica of this partition on this node (the topic is unknown here, or the
    /// replica stopped after a failure).
    #[error("{topic}-{partition}: no replica on this node")]
    NoReplica { topic: String, partition: u32 },
    /// The controller group has no leader on this node: creating a topic goes through it.
    #[error("this node does not lead the controller (leader: {leader:?})")]
    NotController { leader: Option<u64> },
    #[error("topic {name} already exists")]
    TopicExists { name: String },
    #[error("the controller committed the command but this node did not apply it within {ms} ms")]
    ApplyTimedOut { ms: u64 },
    #[error("cannot create the controller's directory {}", path.display())]
    ControllerDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the rejoin marker {path}")]
    RejoinMarker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a shard of this node stopped")]
    ShardStopped,
    /// The group's inbox is full (its task is held up): a retriable refusal.
    #[error("{topic}-{partition}: the replica's inbox is full; try again")]
    InboxFull { topic: String, partition: u32 },
    /// The proposal did not commit within its deadline. It may still commit.
    #[error("{topic}-{partition}: the proposal did not commit within {ms} ms")]
    ProposalTimedOut {
        topic: String,
        partition: u32,
        ms: u64,
    },
    /// A group's task found its inbox gone (its replica was taken off the shard).
    #[error("{topic}-{partition}: the replica's inbox closed")]
    InboxClosed { topic: String, partition: u32 },
    /// This node's applier of the controller's commands stopped (its error is logged):
    /// nothing the controller commits is applied here until the node restarts.
    #[error("the controller's commands no longer apply on this node")]
    ControllerStopped,
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("cluster configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid topic configuration: {0}")]
    InvalidTopicConfig(String),
    #[error("invalid partition count {0}: 1 to {PARTITIONS_PER_TOPIC_MAX}")]
    InvalidPartitions(u32),
    #[error("topic {name} partition count: {message}")]
    PartitionsNotIncreased { name: String, message: String },
    #[error("unknown topic {name}")]
    UnknownTopic { name: String },
    /// The file recording how far the controller's log is applied is unreadable.
    #[error("the controller's applied offset: {0}")]
    AppliedFile(String),
    /// A replication factor or replica assignment the cluster cannot place.
    #[error("replication: {0}")]
    InvalidReplication(String),
    #[error("unknown partition {name}-{partition}")]
    UnknownPartition { name: String, partition: u32 },
    /// A reassignment's cancellation for a partition that is not being reassigned.
    #[error("{name}-{partition}: no reassignment in progress")]
    NoReassignment { name: String, partition: u32 },
}

/// A partition under reassignment, as [`Cluster::reassignments`] lists it (Kafka's
/// ListPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReassignment {
    pub topic: String,
    pub partition: u32,
    /// Every replica until it is done: the target's, then those leaving.
    pub replicas: Vec<u64>,
    pub adding: Vec<u64>,
    pub removing: Vec<u64>,
}

/// How a new topic's partitions are placed on the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// This many replicas per partition, placed by the controller (`controller::place`);
    /// `None`: [`DEFAULT_REPLICATION_FACTOR`], or the cluster's size if that is smaller.
    Factor(Option<usize>),
    /// Each partition's replicas, in partition order, as a client assigned them.
    Assigned(Vec<Vec<u64>>),
}

/// The replication factor of a topic created without one (Kafka's
/// `default.replication.factor` is 1, but a cluster exists to keep copies; three is what
/// Kafka's own internal topics get).
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// What a group's task last published: what routing and Metadata need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
// Each flag is a fact of its own that readers test alone, not a state encoded in several.
#[allow(clippy::struct_excessive_bools)]
pub struct GroupStatus {
    pub leader: Option<u64>,
    /// The Raft term: the partition's leader epoch.
    pub term: u64,
    /// The voters the leader knows to be caught up (all voters, as far as a follower
    /// knows).
    pub in_sync: Vec<u64>,
    /// Whether this node leads and has applied an entry of its term: its high watermark
    /// then covers everything committed (see [`Replica::leads_with_own_commit`]).
    pub leads_with_own_commit: bool,
    /// Whether this node's replica is still rejoining the group (`rejoin.rs`).
    pub rejoining: bool,
    /// Whether the group sleeps here (`hibernation.rs`).
    pub asleep: bool,
    /// This node's replica stopped after a failure (its disk failed, an inconsistency):
    /// `leader` and `term` are then those of the leader whose heartbeats and appends still
    /// reach this node, so its Metadata names the partition's leader; none until one does.
    pub stopped: bool,
}

/// Where the groups' statuses are published: every shard's tasks write it, every shard
/// reads it.
type StatusTable = Arc<Mutex<HashMap<(String, u32), GroupStatus>>>;

struct Inner {
    engine: Engine,
    config: ClusterConfig,
    status: StatusTable,
    /// Kafka addresses (host, port) of the nodes heard from (this one included).
    brokers: Mutex<BTreeMap<u64, (String, u16)>>,
    /// Each peer's connections to this node open now, over every shard ([`PeerLink`]).
    links: Mutex<HashMap<u64, usize>>,
    /// The controller log's offset applied so far.
    controller_applied: AtomicI64,
    /// Peers' messages dropped because their group's inbox was full (every shard's).
    steps_dropped: Arc<AtomicU64>,
    fill_counters: Arc<FillCounters>,
    /// This process's incarnation (`Hello::incarnation`), and the last one each peer
    /// announced.
    incarnation: u64,
    incarnations: Mutex<HashMap<u64, u64>>,
    /// Set while this node rejoins the cluster with a new data directory (`REJOIN_MARKER`
    /// in it): every replica it opens rejoins its group (`rejoin.rs`).
    rejoining: AtomicBool,
    /// When this node last heard anything from each peer, in milliseconds since `started`
    /// ("Liveness" in the module doc), to the tick: routing a frame reads `clock_ms`, which
    /// the shards' tickers move, rather than the clock, and writes only once a tick.
    heard: HashMap<u64, AtomicU64>,
    clock_ms: AtomicU64,
    started: Instant,
    /// Every replicated topic's replica sets (`placement.rs`).
    placements: Mutex<Placements>,
    /// The leaders of partitions with no replica here, as they announced themselves
    /// (`Payload::Leader`), by topic and partition.
    announced: Mutex<HashMap<(String, u32), Announced>>,
    /// Moves on at every peer's hello, and the count at each peer's last: each shard's
    /// ticker then announces every group it leads to the peers greeted since it last
    /// looked, which may have forgotten (`Cluster::announce_led`).
    hellos: AtomicU64,
    greeted: Mutex<HashMap<u64, u64>>,
}

/// A partition's leadership as its leader announced it to a node holding no replica.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Announced {
    /// The topic's tag (`transport.rs`): an announcement for an earlier topic of the name
    /// does not answer for this one.
    tag: u64,
    leader: u64,
    term: u64,
    in_sync: Vec<u64>,
    /// When it came (`Inner::clock_ms`): an announcement not repeated within
    /// `ANNOUNCED_FRESH_TICKS` is no longer believed.
    at_ms: u64,
}

/// Ticks an announced leader is believed without hearing it again: three of its periodic
/// announcements (`LEADER_ANNOUNCE_TICKS`) missed.
const ANNOUNCED_FRESH_TICKS: usize = 3 * LEADER_ANNOUNCE_TICKS;

/// The file in the data directory that says this node rejoins the cluster: made, before
/// anything else, when the node starts without the controller's directory (a new or a
/// wiped data directory); removed once every group the node held then has rejoined.
pub const REJOIN_MARKER: &str = "cluster-rejoining";

/// The node's cluster layer: `Send + Sync`, cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl ClusterError {
    /// Whether every node refuses the same command with this error (a bad name,
    /// configuration or partition count, a name taken, a topic gone): then the refusal is
    /// the command's outcome everywhere, and applying goes on.
    fn is_deterministic(&self) -> bool {
        matches!(
            self,
            ClusterError::InvalidTopic(_)
                | ClusterError::InvalidTopicConfig(_)
                | ClusterError::InvalidPartitions(_)
                | ClusterError::PartitionsNotIncreased { .. }
                | ClusterError::UnknownTopic { .. }
                | ClusterError::TopicExists { .. }
                | ClusterError::InvalidReplication(_)
                | ClusterError::Engine(
                    EngineError::Topic(
                        TopicError::AlreadyExists { .. }
                            | TopicError::Collides { .. }
                            | TopicError::PartitionCount { .. }
                            | TopicError::IdTaken { .. }
                            | TopicError::NotFound { .. }
                            | TopicError::PartitionsNotIncreased { .. }
                    ) | EngineError::TopicName(_)
                )
        )
    }
}

/// Runs `op` (creating a topic or partitions) until it no longer meets a leftover partition
/// directory, removing each it meets. In a cluster only the controller's commands make
/// topics, so the directory of a partition the registry does not hold is what a deletion
/// cut short by a crash left: its topic is gone on every node.
async fn without_leftovers<F, Fut>(mut op: F) -> Result<TopicMeta, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<TopicMeta, EngineError>>,
{
    loop {
        match op().await {
            Err(EngineError::Topic(TopicError::LeftoverPartitionDir { path })) => {
                tracing::warn!(path = %path.display(), "removing a deleted topic's leftover directory");
                std::fs::remove_dir_all(&path).map_err(|source| {
                    ClusterError::Engine(EngineError::Topic(TopicError::Io {
                        op: "removing a deleted topic's leftover directory",
                        path,
                        source,
                    }))
                })?;
            }
            other => return Ok(other?),
        }
    }
}

/// A command's name for `meta`'s topic.
fn topic_ref(meta: &TopicMeta) -> TopicRef {
    TopicRef {
        name: meta.name.as_str().to_owned(),
        id: meta.id,
    }
}

/// A topic's partition count may only grow, within bounds.
fn check_partitions_raised(meta: &TopicMeta, partitions: u32) -> Result<(), ClusterError> {
    if partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err(ClusterError::InvalidPartitions(partitions));
    }
    if partitions <= meta.partitions {
        return Err(ClusterError::PartitionsNotIncreased {
            name: meta.name.to_string(),
            message: format!("has {}, asked {partitions}", meta.partitions),
        });
    }
    Ok(())
}

/// What creating a replicated topic needs besides a free name: a partition count within
/// bounds, and no existing topic whose name collides ('.' and '_' alike). The proposer and
/// every applying node check it.
fn check_creatable(engine: &Engine, name: &TopicName, partitions: u32) -> Result<(), ClusterError> {
    if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
        return Err(ClusterError::InvalidPartitions(partitions));
    }
    let key = name.collision_key();
    if let Some(other) = (engine.topics().into_iter())
        .find(|meta| meta.name != *name && meta.name.collision_key() == key)
    {
        return Err(ClusterError::InvalidTopic(format!(
            "{name} collides with existing topic {} ('.' and '_' are alike)",
            other.name
        )));
    }
    Ok(())
}

/// A replication factor the cluster can place: 1 to its node count, at most
/// [`REPLICATION_FACTOR_MAX`].
fn check_factor(factor: usize, nodes: usize) -> Result<(), ClusterError> {
    let most = nodes.min(REPLICATION_FACTOR_MAX);
    if factor == 0 || factor > most {
        return Err(ClusterError::InvalidReplication(format!(
            "replication factor {factor}: 1 to {most} (the cluster's nodes, at most \
             {REPLICATION_FACTOR_MAX})"
        )));
    }
    Ok(())
}

/// Replica sets assigned to `count` partitions: one each, every set of known nodes,
/// distinct, all of one size (as Kafka requires of a topic's partitions).
fn check_assignment(nodes: &[u64], count: u32, sets: &[Vec<u64>]) -> Result<(), ClusterError> {
    let invalid = |message: String| Err(ClusterError::InvalidReplication(message));
    if sets.len() != count as usize {
        return invalid(format!(
            "{} replica sets for {count} partitions",
            sets.len()
        ));
    }
    for set in sets {
        check_replica_set(set).map_err(|e| ClusterError::InvalidReplication(e.to_string()))?;
        if let Some(unknown) = set.iter().find(|id| !nodes.contains(id)) {
            return invalid(format!(
                "replicas {set:?}: node {unknown} is not in the cluster"
            ));
        }
        if set.len() != sets[0].len() {
            return invalid(format!(
                "replicas {set:?} and {:?}: every partition needs as many",
                sets[0]
            ));
        }
    }
    Ok(())
}

/// One of a peer's connections to this node, counted in `Inner::links` while it is open
/// (the transport drops it when the connection ends).
struct PeerLink {
    inner: Arc<Inner>,
    peer: u64,
}

impl PeerLink {
    fn open(inner: Arc<Inner>, peer: u64) -> PeerLink {
        *lock(&inner.links).entry(peer).or_insert(0) += 1;
        PeerLink { inner, peer }
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        let gone = lock(&self.inner.links)
            .get_mut(&self.peer)
            .is_some_and(|open| {
                *open = open.saturating_sub(1);
                *open == 0
            });
        if gone {
            let cluster = Cluster {
                inner: self.inner.clone(),
            };
            cluster.forget_leader(self.peer);
            cluster.tell_groups(
                self.peer,
                "every connection of a peer closed",
                Command::PeerGone,
            );
        }
    }
}

/// A command to a group's task (ticks are a flag of its inbox, see `inbox.rs`).
enum Command {
    Step(Message),
    /// A rejoining peer asks for this replica's term and last entry.
    RejoinAsk(u64),
    /// A peer answers this replica's rejoin question.
    RejoinAnswer(u64, LogState),
    /// A peer's process restarted (its hello's incarnation changed).
    PeerRestarted(u64),
    /// Every connection a peer had to this node closed, or it has been silent for an
    /// election timeout.
    PeerGone(u64),
    /// A peer's word about the group sleeping.
    Hibernation(u64, Signal),
    Propose {
        batches: Bytes,
        max_message_bytes: usize,
        /// The term the proposer decided under, if it must be written in that term only.
        expected_term: Option<u64>,
        /// When the proposal is answered (at commit, or at the leader's write).
        answer: AnswerAt,
        reply: oneshot::Sender<ProposeAnswer>,
    },
    /// Proposes that the partition's log start at `offset` (DeleteRecords).
    MoveLogStart {
        offset: i64,
        reply: oneshot::Sender<Answer<i64>>,
    },
}

/// A replica's answer to a proposal: refused, or the channel its outcome comes on.
type Answer<T> = Result<oneshot::Receiver<Result<T, ReplicaError>>, ReplicaError>;
type ProposeAnswer = Answer<Appended>;
type GroupKey = (Rc<str>, u32);

/// A group whose replica lives on this shard.
struct Hosted {
    /// Its topic's tag (`transport.rs`): frames with another are not for it.
    tag: u64,
    /// What its task shares with the shard.
    shared: Rc<GroupShared>,
    inbox: Rc<Inbox<Command>>,
    /// Answered once its task ended and its replica is dropped (`Cluster::close_group`).
    ended: RefCell<Option<oneshot::Receiver<()>>>,
}

/// A move's target set and epoch (`placement::Move`).
type Target = (Vec<u64>, u64);

/// What a group's task shares with the rest of its shard.
#[derive(Debug, Default)]
struct GroupShared {
    /// The peers that are neither voters nor learners of the group, as its task last saw
    /// its configuration: told when this node leads it.
    outsiders: RefCell<Vec<u64>>,
    /// The replica set a reassignment moves the group to, and the move's epoch
    /// (`placement.rs`), until it is done.
    target: RefCell<Option<Target>>,
}

fn group(key: &GroupKey, tag: u64) -> Group<'_> {
    Group {
        topic: &key.0,
        partition: key.1,
        tag,
    }
}

/// A shard's part of the node.
struct Local {
    shard: usize,
    transport: Rc<Transport>,
    /// Snapshot fills: served to peers, fetched for this shard's replicas.
    fills: Rc<Fills>,
    groups: RefCell<HashMap<GroupKey, Hosted>>,
    /// How far the controller's log is applied, and the log (on shard 0, the controller's).
    controller_applied: Applied,
    controller_log: RefCell<Option<ringlog_engine::log::PartitionLog<DiskStorage>>>,
    /// The node's count of peers' messages dropped at a full inbox.
    steps_dropped: Arc<AtomicU64>,
    /// The node's table of the groups' statuses.
    status: StatusTable,
    /// The groups whose replica here stopped after a failure, with their topic's tag.
    stopped: RefCell<HashMap<GroupKey, u64>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn local() -> Option<Rc<Local>> {
    LOCAL.with(|local| local.borrow().clone())
}

impl Cluster {
    /// Joins the cluster: the transport and a ticker on every shard, the controller on
    /// shard 0, and a replica of every partition of every (non-internal) topic the engine
    /// holds. Blocks until all are open.
    pub fn start(engine: Engine, config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let rejoining = mark_rejoining(&config.data_dir)?;
        let applied = read_applied(&config.data_dir).map_err(ClusterError::AppliedFile)?;
        let mut brokers = BTreeMap::new();
        let kafka = &config.kafka_advertised;
        brokers.insert(config.node_id, (kafka.ip().to_string(), kafka.port()));
        let heard = (config.peers.iter())
            .filter(|peer| peer.id != config.node_id)
            .map(|peer| (peer.id, AtomicU64::new(0)))
            .collect();
        let cluster = Cluster {
            inner: Arc::new(Inner {
                engine,
                config,
                status: StatusTable::default(),
                brokers: Mutex::new(brokers),
                links: Mutex::default(),
                controller_applied: AtomicI64::new(applied),
                steps_dropped: Arc::new(AtomicU64::new(0)),
                fill_counters: Arc::default(),
                incarnation: uuid_v4().as_u64_pair().0,
                incarnations: Mutex::default(),
                rejoining: AtomicBool::new(rejoining),
                heard,
                clock_ms: AtomicU64::new(0),
                started: Instant::now(),
                placements: Mutex::default(),
                announced: Mutex::default(),
                hellos: AtomicU64::new(0),
                greeted: Mutex::default(),
            }),
        };
        futures::executor::block_on(cluster.start_shards())?;
        Ok(cluster)
    }

    async fn start_shards(&self) -> Result<(), ClusterError> {
        for (index, shard) in self.shards().iter().enumerate() {
            let cluster = self.clone();
            shard
                .spawn(move || async move { cluster.start_on_shard(index) })
                .await
                .map_err(|_| ClusterError::ShardStopped)??;
        }
        let cluster = self.clone();
        self.shards()[0]
            .spawn(move || async move { cluster.start_controller().await })
            .await
            .map_err(|_| ClusterError::ShardStopped)??;
        let cluster = self.clone();
        self.shards()[0]
            .spawn(move || async move { cluster.replay_placements().await })
            .await
            .map_err(|_| ClusterError::ShardStopped)??;
        for meta in self.inner.engine.topics() {
            if is_replicated(meta.name.as_str()) {
                self.open_replicas(&meta, 0).await?;
            }
        }
        // Only now: a command applied while the replicas above open could delete one.
        let cluster = self.clone();
        self.shards()[0]
            .spawn(move || async move { cluster.start_applying() })
            .await
            .map_err(|_| ClusterError::ShardStopped)?
    }

    fn shards(&self) -> &[ShardHandle] {
        self.inner.engine.shard_handles()
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.config.node_id
    }

    /// Every node of the cluster: the controller's voters, and those of every partition
    /// placed on every node.
    pub fn voters(&self) -> Vec<u64> {
        self.inner.config.peers.iter().map(|peer| peer.id).collect()
    }

    /// The partition's replicas (node ids, as placed: the first is the one placement
    /// prefers as leader), as this node applied the controller's commands; every node for
    /// a topic placed on all, or not placed.
    /// While the partition is being reassigned, both sets: the target's nodes, then those
    /// leaving (as Kafka lists them).
    pub fn replicas(&self, meta: &TopicMeta, partition: u32) -> Vec<u64> {
        let placements = lock(&self.inner.placements);
        let mut replicas = match placements.target(&meta.id, partition) {
            Some(target) => target.to_vec(),
            None => Vec::new(),
        };
        match placements.replicas(&meta.id, partition) {
            Some(set) if !set.is_empty() => {
                let leaving: Vec<u64> = (set.iter().copied())
                    .filter(|id| !replicas.contains(id))
                    .collect();
                replicas.extend(leaving);
                replicas
            }
            _ => self.voters(),
        }
    }

    /// Whether this node holds a replica of the partition (as placed; every partition of a
    /// topic that is not replicated).
    pub fn holds(&self, meta: &TopicMeta, partition: u32) -> bool {
        !is_replicated(meta.name.as_str()) || self.group_voters(meta, partition).is_some()
    }

    /// The voters of the partition's group if this node holds a replica of it: its replica
    /// set as placed (every node for a topic placed on all, or one of
    /// [`ClusterConfig::everywhere`]); none if this node is only in the move of a
    /// reassignment (its target, or an earlier one's): its replica joins the group with no
    /// configuration, which the leader's snapshot brings (`Replica::reconfigure`). `None` if it is placed elsewhere,
    /// or not placed yet: after a restart the table holds what the applied-offset file says
    /// was applied, and a topic the engine holds beyond that is opened when its command is
    /// applied again.
    fn group_voters(&self, meta: &TopicMeta, partition: u32) -> Option<Vec<u64>> {
        let everywhere = &self.inner.config.everywhere;
        let me = self.node_id();
        if everywhere.iter().any(|name| name == meta.name.as_str()) {
            return Some(self.voters());
        }
        let placements = lock(&self.inner.placements);
        let voters = match placements.replicas(&meta.id, partition)? {
            [] => self.voters(),
            set => set.to_vec(),
        };
        if voters.contains(&me) {
            return Some(voters);
        }
        let involved = placements
            .moving(&meta.id, partition)?
            .involved
            .contains(&me);
        involved.then(Vec::new)
    }

    /// The Kafka addresses (host, port) of the nodes this one has heard from, itself
    /// included.
    pub fn brokers(&self) -> BTreeMap<u64, (String, u16)> {
        lock(&self.inner.brokers).clone()
    }

    /// The live nodes among [`Cluster::brokers`]: this one, and every peer with a
    /// connection to this node open now. A peer's process that dies closes its
    /// connections at once (the kernel does), so a killed node leaves this set within
    /// milliseconds, not an election timeout later; it comes back with its first
    /// connection.
    pub fn live_brokers(&self) -> BTreeMap<u64, (String, u16)> {
        let links = lock(&self.inner.links).clone();
        let own = self.node_id();
        let mut brokers = self.brokers();
        brokers.retain(|id, _| *id == own || links.get(id).is_some_and(|open| *open > 0));
        brokers
    }

    /// What the partition's group last published, if it has a replica here; for a replica
    /// that stopped after a failure, the leader learned since (`GroupStatus::stopped`);
    /// for a partition with no replica here, what its leader announced (`None` until it
    /// has, and once that leader is gone).
    pub fn status(&self, topic: &str, partition: u32) -> Option<GroupStatus> {
        let key = (topic.to_owned(), partition);
        if let Some(status) = lock(&self.inner.status).get(&key) {
            return Some(status.clone());
        }
        let announced = lock(&self.inner.announced).get(&key).cloned()?;
        let tag = self
            .inner
            .engine
            .topic(topic)
            .map(|meta| topic_tag(&meta.id));
        let fresh_ms = duration_ms(self.inner.config.tick) * ANNOUNCED_FRESH_TICKS as u64;
        let now = self.inner.clock_ms.load(Ordering::Relaxed);
        let fresh = now.saturating_sub(announced.at_ms) <= fresh_ms;
        (fresh && tag == Some(announced.tag)).then(|| GroupStatus {
            leader: Some(announced.leader),
            term: announced.term,
            in_sync: announced.in_sync,
            ..GroupStatus::default()
        })
    }

    /// The controller group's leader, as this node knows it.
    pub fn controller(&self) -> Option<u64> {
        self.status(CONTROLLER_TOPIC, 0)
            .and_then(|status| status.leader)
    }

    /// Proposes a produce request's batches to the partition's group; answers when
    /// `answer` says (they commit, or the leader's own write of them is durable), with
    /// their offsets, or [`ClusterError::ProposalTimedOut`] after `timeout` (a proposal
    /// still queued then is not made; one made may still commit). With `expected_term`,
    /// the replica refuses the proposal unless that is its term
    /// ([`ReplicaError::TermChanged`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn propose(
        &self,
        topic: &str,
        partition: u32,
        batches: Bytes,
        max_message_bytes: usize,
        expected_term: Option<u64>,
        answer: AnswerAt,
        timeout: Duration,
    ) -> Result<Appended, ClusterError> {
        let command = move |reply| Command::Propose {
            batches,
            max_message_bytes,
            expected_term,
            answer,
            reply,
        };
        self.propose_at_owner(topic, partition, timeout, command)
            .await
    }

    /// Queues the proposal `command` makes in the group's inbox, on the shard that owns
    /// the group, and waits for its answer, for at most `timeout`.
    async fn propose_at_owner<T: Send + 'static>(
        &self,
        topic: &str,
        partition: u32,
        timeout: Duration,
        command: impl FnOnce(oneshot::Sender<Answer<T>>) -> Command + Send + 'static,
    ) -> Result<T, ClusterError> {
        let owner = owner(topic, partition, self.shards().len());
        let topic = topic.to_owned();
        self.shards()[owner]
            .spawn(move || async move {
                let proposed = rt::timeout(timeout, propose_here(&topic, partition, command));
                proposed.await.unwrap_or_else(|_| {
                    Err(ClusterError::ProposalTimedOut {
                        topic,
                        partition,
                        ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    })
                })
            })
            .await
            .map_err(|_| ClusterError::ShardStopped)?
    }

    /// Moves a replicated partition's log start to `offset` on every replica (Kafka's
    /// DeleteRecords; `Replica::propose_log_start`): this node must lead the partition.
    /// Answers with the leader's new log start once it moved, or
    /// [`ClusterError::ProposalTimedOut`] after `timeout` (the move may still happen).
    pub async fn move_log_start(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        timeout: Duration,
    ) -> Result<i64, ClusterError> {
        let command = move |reply| Command::MoveLogStart { offset, reply };
        self.propose_at_owner(topic, partition, timeout, command)
            .await
    }

    /// Creates a topic on every node through the controller group: proposes the command
    /// (this node must lead the controller) and answers once this node applied it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication: Replication,
        config: TopicConfig,
    ) -> Result<TopicMeta, ClusterError> {
        let (name, command) = self.new_topic_command(name, partitions, replication, &config)?;
        self.propose_create(&name, command).await
    }

    /// The command creating a topic, with a new id, its partitions placed, once
    /// [`Cluster::check_new_topic`] passed.
    fn new_topic_command(
        &self,
        name: &str,
        partitions: u32,
        replication: Replication,
        config: &TopicConfig,
    ) -> Result<(TopicName, CreateTopic), ClusterError> {
        let name = self.check_new_topic(name, partitions)?;
        let id = *uuid_v4().as_bytes();
        let replicas = self.placed(&id, 0, partitions, replication)?;
        let command = CreateTopic::new(&name, id, config, replicas);
        Ok((name, command))
    }

    /// Replica sets for the partitions `first..first + count` of the topic `id`: placed by
    /// `controller::place` at the factor asked, starting at a node the topic's id picks
    /// (so topics spread), or as assigned, checked.
    fn placed(
        &self,
        id: &[u8; 16],
        first: u32,
        count: u32,
        replication: Replication,
    ) -> Result<Vec<Vec<u64>>, ClusterError> {
        let nodes = self.voters();
        match replication {
            Replication::Factor(factor) => {
                let factor = factor.unwrap_or(DEFAULT_REPLICATION_FACTOR.min(nodes.len()));
                check_factor(factor, nodes.len())?;
                let start = u64::from_be_bytes([
                    id[8], id[9], id[10], id[11], id[12], id[13], id[14], id[15],
                ]);
                let start = usize::try_from(start % nodes.len() as u64).unwrap_or(0);
                Ok(place(&nodes, first, count, factor, start))
            }
            Replication::Assigned(sets) => {
                check_assignment(&nodes, count, &sets)?;
                Ok(sets)
            }
        }
    }

    /// [`Cluster::create_topic`] from any node, for a topic a client's request
    /// auto-creates: a node that does not lead the controller forwards the command to the
    /// node that does (`Payload::Forward`) and answers once its own applier has the topic,
    /// waiting at most `FORWARDED_CREATE_WAIT_MS` (the client asks again after that, as it
    /// does while Kafka creates a topic). A topic of that name created meanwhile by another
    /// request is answered as created.
    pub async fn create_topic_anywhere(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicMeta, ClusterError> {
        let replication = Replication::Factor(None);
        let (name, command) = self.new_topic_command(name, partitions, replication, &config)?;
        let leader = match self.propose_create(&name, command.clone()).await {
            Err(ClusterError::NotController {
                leader: Some(leader),
            }) if leader != self.node_id() => leader,
            other => return other,
        };
        self.forward(leader, &Change::CreateTopic(command)).await?;
        tracing::debug!(topic = %name, leader, "topic creation forwarded to the controller");
        let wait = Duration::from_millis(FORWARDED_CREATE_WAIT_MS);
        self.wait_for(wait, |engine| engine.topic(name.as_str()))
            .await
    }

    /// Proposes a topic's creation to the controller group (led here, else
    /// `NotController`) and answers once this node applied it.
    async fn propose_create(
        &self,
        name: &TopicName,
        command: CreateTopic,
    ) -> Result<TopicMeta, ClusterError> {
        let id = command.id;
        self.propose_change(&Change::CreateTopic(command)).await?;
        match self.inner.engine.topic(name.as_str()) {
            Some(meta) if meta.id == id => Ok(meta),
            // Another request created the name first; its command won.
            _ => Err(ClusterError::TopicExists {
                name: name.to_string(),
            }),
        }
    }

    /// Deletes a replicated topic on every node through the controller (this node must
    /// lead it, else `NotController`); answers, with what the topic was, once this node
    /// applied the deletion.
    pub async fn delete_topic(&self, name: &str) -> Result<TopicMeta, ClusterError> {
        let meta = self.replicated_topic(name)?;
        self.propose_change(&Change::DeleteTopic(topic_ref(&meta)))
            .await?;
        Ok(meta)
    }

    /// Raises a replicated topic's partition count to `partitions` through the controller
    /// (this node must lead it), the new partitions on `assigned` (one replica set each, of
    /// the topic's replication factor) or placed as the topic's first partitions were;
    /// answers once this node applied it and opened the new partitions' replicas.
    pub async fn create_partitions(
        &self,
        name: &str,
        partitions: u32,
        assigned: Option<Vec<Vec<u64>>>,
    ) -> Result<TopicMeta, ClusterError> {
        let meta = self.replicated_topic(name)?;
        check_partitions_raised(&meta, partitions)?;
        let placed_everywhere = lock(&self.inner.placements).factor(&meta.id).is_none();
        let factor = self.factor_of(&meta);
        let replication = match assigned {
            Some(sets) => {
                if let Some(wrong) = sets.iter().find(|set| set.len() != factor) {
                    return Err(ClusterError::InvalidReplication(format!(
                        "replicas {wrong:?}: the topic's partitions have {factor} replicas each"
                    )));
                }
                Replication::Assigned(sets)
            }
            None => Replication::Factor(Some(factor)),
        };
        let added = partitions - meta.partitions;
        let replicas = if placed_everywhere && matches!(replication, Replication::Factor(_)) {
            // A topic on every node (placed before replica sets) grows on every node.
            None
        } else {
            Some(self.placed(&meta.id, meta.partitions, added, replication)?)
        };
        let change = Change::CreatePartitions {
            topic: topic_ref(&meta),
            partitions,
            replicas,
        };
        self.propose_change(&change).await?;
        match self.inner.engine.topic(name) {
            Some(now) if now.id == meta.id && now.partitions >= partitions => Ok(now),
            _ => Err(ClusterError::UnknownTopic {
                name: name.to_owned(),
            }),
        }
    }

    /// What [`Cluster::create_partitions`] would refuse before proposing (CreatePartitions'
    /// `validate_only`): the topic, and a count that grows within bounds.
    pub fn check_create_partitions(&self, name: &str, partitions: u32) -> Result<(), ClusterError> {
        check_partitions_raised(&self.replicated_topic(name)?, partitions)
    }

    /// A replicated topic's replication factor: its first partition's replica count (the
    /// cluster's size for a topic on every node); `None` for a topic it does not have.
    pub fn replication_factor(&self, name: &str) -> Option<usize> {
        let meta = self.replicated_topic(name).ok()?;
        Some(self.factor_of(&meta))
    }

    fn factor_of(&self, meta: &TopicMeta) -> usize {
        (lock(&self.inner.placements).factor(&meta.id)).unwrap_or(self.voters().len())
    }

    /// What placing `partitions` partitions as `replication` asks would refuse
    /// (CreateTopics' `validate_only`).
    pub fn check_placement(
        &self,
        partitions: u32,
        replication: Replication,
    ) -> Result<(), ClusterError> {
        self.placed(&[0; 16], 0, partitions, replication)
            .map(|_| ())
    }

    /// Sets `pairs` (keys with their values, checked against the topic's configuration)
    /// over a replicated topic's configuration on every node, through the controller:
    /// proposed here if this node leads it, else forwarded to the node that does. Answers
    /// with the topic once this node applied the change (a forwarded one within
    /// `FORWARDED_CREATE_WAIT_MS`).
    pub async fn alter_config_anywhere(
        &self,
        name: &str,
        pairs: Vec<(String, String)>,
    ) -> Result<TopicMeta, ClusterError> {
        let meta = self.replicated_topic(name)?;
        applied_over(&meta.config, &pairs)
            .map_err(|e| ClusterError::InvalidTopicConfig(e.to_string()))?;
        let change = Change::AlterConfig {
            topic: topic_ref(&meta),
            pairs: pairs.clone(),
        };
        if self.propose_anywhere(&change).await? {
            return self.replicated_topic(name);
        }
        // Applied here once setting the pairs again would change nothing (or the topic
        // is another one now, deleted and created again).
        let applied = |engine: &Engine| {
            let now = engine.topic(name)?;
            let done = now.id != meta.id
                || applied_over(&now.config, &pairs).is_ok_and(|config| config == now.config);
            done.then_some(now)
        };
        let wait = Duration::from_millis(FORWARDED_CREATE_WAIT_MS);
        let now = self.wait_for(wait, applied).await?;
        if now.id != meta.id {
            return Err(ClusterError::UnknownTopic {
                name: name.to_owned(),
            });
        }
        Ok(now)
    }

    /// Moves partitions of a replicated topic to new replica sets (Kafka's
    /// AlterPartitionReassignments): each `(partition, target)` as
    /// [`Cluster::check_reassignment`] resolved it. Proposed here if this node leads the
    /// controller, else forwarded to the node that does; answers once this node applied it
    /// (a forwarded one within `FORWARDED_CREATE_WAIT_MS`). Each partition's group then
    /// moves on its own, driven by its leader (`Replica::reconfigure`), and reports when it
    /// is done; [`Cluster::reassignments`] lists the partitions not done yet.
    pub async fn reassign_partitions(
        &self,
        name: &str,
        targets: Vec<(u32, Vec<u64>)>,
    ) -> Result<(), ClusterError> {
        let meta = self.replicated_topic(name)?;
        let change = Change::Reassign {
            topic: topic_ref(&meta),
            targets: targets.clone(),
        };
        self.check_change(&change)?;
        if self.propose_anywhere(&change).await? {
            return Ok(());
        }
        // Applied here once each partition has its target, or has reached it already.
        let applied = |_: &Engine| {
            let placements = lock(&self.inner.placements);
            let reached = |(partition, target): &(u32, Vec<u64>)| match placements
                .target(&meta.id, *partition)
            {
                Some(now) => same_set(now, target),
                None => (placements.replicas(&meta.id, *partition))
                    .is_some_and(|set| same_set(set, target)),
            };
            targets.iter().all(reached).then_some(())
        };
        let wait = Duration::from_millis(FORWARDED_CREATE_WAIT_MS);
        self.wait_for(wait, applied).await
    }

    /// The target a reassignment request asks for a partition of a replicated topic,
    /// checked: `target`, or for a cancellation (`None`) the partition's replica set, which
    /// its group goes back to ([`ClusterError::NoReassignment`] if none is under way).
    pub fn check_reassignment(
        &self,
        name: &str,
        partition: u32,
        target: Option<Vec<u64>>,
    ) -> Result<Vec<u64>, ClusterError> {
        let meta = self.replicated_topic(name)?;
        let target = if let Some(target) = target {
            target
        } else {
            let placements = lock(&self.inner.placements);
            let no_reassignment = || ClusterError::NoReassignment {
                name: name.to_owned(),
                partition,
            };
            placements
                .target(&meta.id, partition)
                .ok_or_else(no_reassignment)?;
            let set = placements.replicas(&meta.id, partition);
            set.ok_or_else(no_reassignment)?.to_vec()
        };
        self.check_target(&meta, partition, &target)?;
        Ok(target)
    }

    /// The partitions under reassignment, by topic and partition.
    pub fn reassignments(&self) -> Vec<PartitionReassignment> {
        let listed = lock(&self.inner.placements).reassignments();
        let topics = self.inner.engine.topics();
        let named = |id: &[u8; 16]| topics.iter().find(|meta| meta.id == *id);
        let mut all: Vec<PartitionReassignment> = (listed.into_iter())
            .filter_map(|moving| {
                let meta = named(&moving.id)?;
                let (target, involved) = (&moving.moving.target, &moving.moving.involved);
                let adding: Vec<u64> = (target.iter().copied())
                    .filter(|id| !moving.replicas.contains(id))
                    .collect();
                let removing: Vec<u64> = (involved.iter().copied())
                    .filter(|id| !target.contains(id))
                    .collect();
                let mut replicas = target.clone();
                replicas.extend(&removing);
                Some(PartitionReassignment {
                    topic: meta.name.to_string(),
                    partition: moving.partition,
                    replicas,
                    adding,
                    removing,
                })
            })
            .collect();
        all.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        all
    }

    /// A replicated topic's partition count, as this node applied it.
    pub fn partition_count(&self, name: &str) -> Option<u32> {
        Some(self.replicated_topic(name).ok()?.partitions)
    }

    /// A replicated topic this node holds.
    fn replicated_topic(&self, name: &str) -> Result<TopicMeta, ClusterError> {
        self.inner
            .engine
            .topic(name)
            .filter(|meta| is_replicated(meta.name.as_str()))
            .ok_or_else(|| ClusterError::UnknownTopic {
                name: name.to_owned(),
            })
    }

    /// Proposes a change to the controller group (led here, else `NotController`) and
    /// answers once this node applied it (whatever its outcome: a command refused when
    /// applied is refused alike on every node).
    async fn propose_change(&self, change: &Change) -> Result<(), ClusterError> {
        let mut builder = BatchBuilder::new();
        let value = change.encode();
        builder
            .push(0, Some(change.key()), Some(value.as_slice()), &[])
            .map_err(|e| ClusterError::InvalidTopic(e.to_string()))?;
        let batch = Bytes::from(builder.build());
        let timeout = Duration::from_millis(CONTROLLER_PROPOSE_TIMEOUT_MS);
        let proposed = self.propose(
            CONTROLLER_TOPIC,
            0,
            batch,
            usize::MAX,
            None,
            AnswerAt::Commit,
            timeout,
        );
        let committed = match proposed.await {
            Err(ClusterError::Replica(ReplicaError::NotLeader { leader, .. })) => {
                return Err(ClusterError::NotController { leader })
            }
            other => other?,
        };
        let wait = Duration::from_millis(CONTROLLER_APPLY_WAIT_MS);
        self.wait_applied(committed.offset_next, wait).await
    }

    /// Proposes `change` to the controller group if this node leads it, and answers `true`
    /// once this node applied it; else forwards it to the node that does and answers
    /// `false` (the caller waits for its effect in this node's applied metadata).
    async fn propose_anywhere(&self, change: &Change) -> Result<bool, ClusterError> {
        let leader = match self.propose_change(change).await {
            Err(ClusterError::NotController {
                leader: Some(leader),
            }) if leader != self.node_id() => leader,
            other => return other.map(|()| true),
        };
        self.forward(leader, change).await?;
        Ok(false)
    }

    /// Sends `change` to node `leader`, the controller's leader, to propose.
    async fn forward(&self, leader: u64, change: &Change) -> Result<(), ClusterError> {
        let forward = Payload::Forward(Bytes::from(change.encode()));
        let sent = self.shards()[0]
            .spawn(move || async move {
                let local = local().ok_or(ClusterError::ShardStopped)?;
                let controller = Group {
                    topic: CONTROLLER_TOPIC,
                    partition: 0,
                    tag: 0,
                };
                local.transport.send_payload(leader, controller, &forward);
                Ok::<(), ClusterError>(())
            })
            .await;
        sent.map_err(|_| ClusterError::ShardStopped)?
    }

    /// A command another node forwarded to this one, as the controller's leader
    /// (`Payload::Forward`): checked and proposed as if a client had asked here. Nothing
    /// is answered: the forwarding node waits for the change in its own applied metadata.
    /// A command that does not decode, or is for another group, is dropped with a warning.
    fn forwarded(&self, from: u64, topic: &str, partition: u32, command: &[u8]) {
        if topic != CONTROLLER_TOPIC || partition != 0 {
            tracing::warn!(
                from,
                topic,
                partition,
                "a forwarded command for a group other than the controller's; dropped"
            );
            return;
        }
        let change = match Change::decode(command) {
            Ok(change) => change,
            Err(error) => {
                tracing::warn!(from, %error, "a forwarded controller command does not decode; dropped");
                return;
            }
        };
        let cluster = self.clone();
        rt::spawn_local(async move {
            let made = async {
                cluster.check_change(&change)?;
                cluster.propose_change(&change).await
            };
            let topic = change.topic_name();
            match made.await {
                Ok(()) => tracing::info!(from, topic, "a peer's controller command made"),
                Err(error) => {
                    tracing::debug!(from, topic, %error, "a peer's controller command not made");
                }
            }
        })
        .detach();
    }

    /// What applying `change` would refuse here, checked before it is proposed.
    fn check_change(&self, change: &Change) -> Result<(), ClusterError> {
        let invalid = |error: CommandError| ClusterError::InvalidTopic(error.to_string());
        let name = change.checked_name().map_err(invalid)?;
        let current = |topic: &TopicRef| {
            self.replicated_topic(&topic.name)
                .ok()
                .filter(|meta| meta.id == topic.id)
                .ok_or_else(|| ClusterError::UnknownTopic {
                    name: topic.name.clone(),
                })
        };
        match change {
            Change::CreateTopic(create) => {
                // Its configuration must rebuild here as on every applying node.
                create.config().map_err(invalid)?;
                self.check_new_topic(name.as_str(), create.partitions)?;
                if let Some(sets) = &create.replicas {
                    check_assignment(&self.voters(), create.partitions, sets)?;
                }
            }
            Change::DeleteTopic(topic) => {
                current(topic)?;
            }
            Change::CreatePartitions {
                topic,
                partitions,
                replicas,
            } => {
                let meta = current(topic)?;
                check_partitions_raised(&meta, *partitions)?;
                if let Some(sets) = replicas {
                    check_assignment(&self.voters(), *partitions - meta.partitions, sets)?;
                }
            }
            Change::AlterConfig { topic, pairs } => {
                applied_over(&current(topic)?.config, pairs)
                    .map_err(|e| ClusterError::InvalidTopicConfig(e.to_string()))?;
            }
            Change::Reassign { topic, targets } => {
                let meta = current(topic)?;
                for (partition, target) in targets {
                    self.check_target(&meta, *partition, target)?;
                }
            }
            Change::Reassigned {
                topic,
                partition,
                replicas,
                epoch,
            } => {
                let meta = current(topic)?;
                let placements = lock(&self.inner.placements);
                let moving = placements.moving(&meta.id, *partition);
                if !moving.is_some_and(|moving| moving.ends(replicas, *epoch)) {
                    return Err(ClusterError::NoReassignment {
                        name: topic.name.clone(),
                        partition: *partition,
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks a reassignment's target for a partition of `meta`: a replica set of nodes of
    /// the cluster, for a partition that exists, of a topic placed on replica sets.
    fn check_target(
        &self,
        meta: &TopicMeta,
        partition: u32,
        target: &[u64],
    ) -> Result<(), ClusterError> {
        if partition >= meta.partitions {
            return Err(ClusterError::UnknownPartition {
                name: meta.name.to_string(),
                partition,
            });
        }
        let everywhere = (self.inner.config.everywhere.iter()).any(|n| n == meta.name.as_str());
        if everywhere || lock(&self.inner.placements).factor(&meta.id).is_none() {
            return Err(ClusterError::InvalidReplication(format!(
                "{}: a topic on every node is not reassigned",
                meta.name
            )));
        }
        check_replica_set(target).map_err(|e| ClusterError::InvalidReplication(e.to_string()))?;
        let nodes = self.voters();
        if let Some(unknown) = target.iter().find(|id| !nodes.contains(id)) {
            return Err(ClusterError::InvalidReplication(format!(
                "node {unknown} is not in the cluster (nodes {nodes:?})"
            )));
        }
        Ok(())
    }

    /// Waits until `found` finds what it looks for in this node's applied metadata, for at
    /// most `wait`: looking again after each command applied.
    async fn wait_for<T>(
        &self,
        wait: Duration,
        found: impl Fn(&Engine) -> Option<T>,
    ) -> Result<T, ClusterError> {
        let deadline = Instant::now() + wait;
        loop {
            // Read before looking: a change applied after this is past it.
            let applied = self.inner.controller_applied.load(Ordering::Acquire);
            if let Some(found) = found(&self.inner.engine) {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_applied(applied + 1, left).await {
                Err(ClusterError::ApplyTimedOut { .. }) => {
                    return Err(ClusterError::ApplyTimedOut {
                        ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    })
                }
                other => other?,
            }
        }
    }

    /// What creating the topic would refuse before proposing it (the name, an existing
    /// topic, what applying refuses), without proposing: CreateTopics' `validate_only`.
    pub fn check_new_topic(&self, name: &str, partitions: u32) -> Result<TopicName, ClusterError> {
        let name = TopicName::new(name).map_err(|e| ClusterError::InvalidTopic(e.to_string()))?;
        if !is_replicated(name.as_str()) {
            return Err(ClusterError::InvalidTopic(format!(
                "{name}: internal topics are not replicated"
            )));
        }
        if self.inner.engine.topic(name.as_str()).is_some() {
            return Err(ClusterError::TopicExists {
                name: name.to_string(),
            });
        }
        // What applying would refuse is refused here, so a committed command applies.
        check_creatable(&self.inner.engine, &name, partitions)?;
        Ok(name)
    }

    /// Waits until this node applied the controller's log up to `offset` (woken by the
    /// applier on shard 0), for at most `wait`.
    async fn wait_applied(&self, offset: i64, wait: Duration) -> Result<(), ClusterError> {
        let waited = self.shards()[0]
            .spawn(move || async move {
                let local = local().ok_or(ClusterError::ShardStopped)?;
                match rt::timeout(wait, local.controller_applied.wait(offset)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(Stopped)) => Err(ClusterError::ControllerStopped),
                    Err(_) => Err(ClusterError::ApplyTimedOut {
                        ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    }),
                }
            })
            .await;
        waited.map_err(|_| ClusterError::ShardStopped)?
    }

    /// Peers' messages dropped so far because their group's inbox was full.
    pub fn steps_dropped(&self) -> u64 {
        self.inner.steps_dropped.load(Ordering::Relaxed)
    }

    /// What the node's metrics show of the cluster layer, read now.
    pub fn metrics(&self) -> ClusterMetrics {
        let status = lock(&self.inner.status);
        let fills = &self.inner.fill_counters;
        ClusterMetrics {
            groups: status.values().filter(|group| !group.stopped).count() as u64,
            groups_led: status
                .values()
                .filter(|group| group.leader == Some(self.node_id()))
                .count() as u64,
            groups_rejoining: status.values().filter(|group| group.rejoining).count() as u64,
            groups_asleep: status.values().filter(|group| group.asleep).count() as u64,
            rejoining: self.inner.rejoining.load(Ordering::Acquire),
            steps_dropped: self.steps_dropped(),
            fill_bytes_received: fills.bytes_received.load(Ordering::Relaxed),
            fill_bytes_served: fills.bytes_served.load(Ordering::Relaxed),
            fill_requests_retried: fills.requests_retried.load(Ordering::Relaxed),
        }
    }
}

/// The cluster layer's figures for the node's metrics ([`Cluster::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterMetrics {
    /// Groups with a replica on this node (the controller's included), those it leads, and
    /// those still rejoining (`rejoin.rs`).
    pub groups: u64,
    pub groups_led: u64,
    pub groups_rejoining: u64,
    /// Groups asleep here (`hibernation.rs`).
    pub groups_asleep: u64,
    /// Whether the node rejoins the cluster (its rejoin marker is there).
    pub rejoining: bool,
    /// Peers' messages dropped at a full group inbox.
    pub steps_dropped: u64,
    /// Snapshot fills: bytes received and served, requests retried (`fill.rs`).
    pub fill_bytes_received: u64,
    pub fill_bytes_served: u64,
    pub fill_requests_retried: u64,
}

impl Cluster {
    /// The shard's transport, listener and ticker.
    fn start_on_shard(&self, shard: usize) -> Result<(), ClusterError> {
        let config = &self.inner.config;
        let hello = Hello {
            node_id: config.node_id,
            cluster_name: config.cluster_name.clone(),
            kafka_host: config.kafka_advertised.ip().to_string(),
            kafka_port: config.kafka_advertised.port(),
            incarnation: self.inner.incarnation,
        };
        hello
            .validate()
            .map_err(|e| ClusterError::InvalidConfig(e.to_string()))?;
        let peers: Vec<(u64, SocketAddr)> = config
            .peers
            .iter()
            .filter(|peer| peer.id != config.node_id)
            .map(|peer| (peer.id, peer.internal))
            .collect();
        let peer_ids = peers.iter().map(|(id, _)| *id).collect();
        let transport = Transport::new(hello.clone(), peers);
        let fills = Fills::new(
            peer_ids,
            transport.clone(),
            self.inner.fill_counters.clone(),
        );
        let listener = TcpListener::bind_reuse_port(config.internal_listen).map_err(|source| {
            ClusterError::Listen {
                address: config.internal_listen,
                source,
            }
        })?;
        let local = Rc::new(Local {
            shard,
            transport,
            fills,
            groups: RefCell::new(HashMap::new()),
            controller_applied: Applied::new(self.inner.controller_applied.load(Ordering::Acquire)),
            controller_log: RefCell::new(None),
            steps_dropped: self.inner.steps_dropped.clone(),
            status: self.inner.status.clone(),
            stopped: RefCell::default(),
        });
        LOCAL.with(|slot| *slot.borrow_mut() = Some(local.clone()));
        let cluster = self.clone();
        let on_hello = move |hello: &Hello| {
            let kafka = (hello.kafka_host.clone(), hello.kafka_port);
            lock(&cluster.inner.brokers).insert(hello.node_id, kafka);
            let before = lock(&cluster.inner.incarnations).insert(hello.node_id, hello.incarnation);
            if before.is_some_and(|before| before != hello.incarnation) {
                cluster.peer_restarted(hello.node_id);
            }
            let seq = cluster.inner.hellos.fetch_add(1, Ordering::AcqRel) + 1;
            lock(&cluster.inner.greeted).insert(hello.node_id, seq);
            PeerLink::open(cluster.inner.clone(), hello.node_id)
        };
        let cluster = self.clone();
        let deliver = move |incoming: Incoming| cluster.route(incoming);
        rt::spawn_local(transport::serve(
            Rc::new(listener),
            hello,
            on_hello,
            deliver,
        ))
        .detach();
        let cluster = self.clone();
        rt::spawn_local(async move { cluster.run_ticker(&local).await }).detach();
        Ok(())
    }

    /// The shard's clock: ticks its groups, sends its peers an alive frame every heartbeat
    /// interval, and tells its groups of a peer it has not heard from for an election
    /// timeout ("Liveness" in the module doc).
    async fn run_ticker(&self, local: &Local) {
        let config = &self.inner.config;
        let silence_ms = duration_ms(config.tick) * config.election_ticks as u64;
        let mut silent = HashSet::new();
        let mut ticks = 0_usize;
        let mut hellos = 0;
        loop {
            rt::sleep(config.tick).await;
            ticks = ticks.wrapping_add(1);
            for hosted in local.groups.borrow().values() {
                hosted.inbox.tick();
            }
            let hellos_now = self.inner.hellos.load(Ordering::Acquire);
            if ticks % LEADER_ANNOUNCE_TICKS == 0 {
                self.announce_led(local, None);
            } else if hellos_now != hellos {
                let greeted: Vec<u64> = (lock(&self.inner.greeted).iter())
                    .filter(|&(_, &seq)| seq > hellos)
                    .map(|(&peer, _)| peer)
                    .collect();
                self.announce_led(local, Some(&greeted));
            }
            hellos = hellos_now;
            if ticks % config.heartbeat_ticks.max(1) == 0 {
                for &peer in self.inner.heard.keys() {
                    local.transport.send_alive(peer);
                }
            }
            let now = self.elapsed_ms();
            self.inner.clock_ms.fetch_max(now, Ordering::Relaxed);
            for (&peer, heard) in &self.inner.heard {
                let quiet_ms = now.saturating_sub(heard.load(Ordering::Relaxed));
                if quiet_ms <= silence_ms {
                    silent.remove(&peer);
                } else if silent.insert(peer) {
                    if local.shard == 0 {
                        tracing::info!(
                            peer,
                            quiet_ms,
                            "nothing heard from a peer for an election timeout"
                        );
                    }
                    tell_local(local, peer, "a peer is silent", Command::PeerGone);
                    self.forget_leader(peer);
                }
            }
        }
    }

    /// Announces every group of the shard this node leads to the peers that hold no
    /// replica of it (`Payload::Leader`): again every `LEADER_ANNOUNCE_TICKS`, and after a
    /// peer's hello, since a restarted peer, or one whose frames were dropped, knows
    /// nothing of it (a group announces itself as its leadership changes, in `drive`).
    fn announce_led(&self, local: &Local, only: Option<&[u64]>) {
        let me = Some(self.node_id());
        let mut led = Vec::new();
        {
            let status = lock(&self.inner.status);
            for (key, hosted) in local.groups.borrow().iter() {
                let outsiders: Vec<u64> = (hosted.shared.outsiders.borrow().iter().copied())
                    .filter(|peer| only.is_none_or(|only| only.contains(peer)))
                    .collect();
                if outsiders.is_empty() {
                    continue;
                }
                if let Some(group_status) = status.get(&(key.0.to_string(), key.1)) {
                    if group_status.leader == me {
                        let said = (group_status.term, group_status.in_sync.clone());
                        led.push((key.clone(), hosted.tag, outsiders, said));
                    }
                }
            }
        }
        for (key, tag, outsiders, (term, in_sync)) in led {
            announce(local, group(&key, tag), &outsiders, term, in_sync);
        }
    }

    /// A peer's word that it leads a group this node holds no replica of, or no longer does
    /// (`Payload::Leader`, no in-sync ids): taken if it is about the topic this node has (its
    /// tag) and a partition of it, and no older than what this node knows.
    fn take_announcement(&self, from: u64, key: (String, u32), tag: u64, said: (u64, Vec<u64>)) {
        let (term, in_sync) = said;
        let current = (self.inner.engine.topic(&key.0))
            .is_some_and(|meta| topic_tag(&meta.id) == tag && key.1 < meta.partitions);
        if !current {
            return;
        }
        let at_ms = self.inner.clock_ms.load(Ordering::Relaxed);
        let mut announced = lock(&self.inner.announced);
        let known = announced.get(&key);
        if in_sync.is_empty() {
            // Stepped down: no longer named, unless a later term named another.
            if known.is_some_and(|known| known.leader == from && known.term <= term) {
                announced.remove(&key);
            }
            return;
        }
        if known.is_some_and(|known| known.term > term) {
            return;
        }
        let leader = from;
        let entry = Announced {
            tag,
            leader,
            term,
            in_sync,
            at_ms,
        };
        announced.insert(key, entry);
    }

    /// Forgets what `peer` announced it leads: it is gone (its connections closed, or
    /// silent for an election timeout), so this node no longer names it (the partitions'
    /// next leader announces itself).
    fn forget_leader(&self, peer: u64) {
        lock(&self.inner.announced).retain(|_, announced| announced.leader != peer);
    }

    /// Milliseconds since this node's cluster layer started.
    fn elapsed_ms(&self) -> u64 {
        duration_ms(self.inner.started.elapsed())
    }

    /// Sends a peer's message to the task of its group, on the shard that owns it.
    fn route(&self, incoming: Incoming) {
        if let Some(heard) = self.inner.heard.get(&incoming.from) {
            let now = self.inner.clock_ms.load(Ordering::Relaxed);
            if heard.load(Ordering::Relaxed) < now {
                heard.fetch_max(now, Ordering::Relaxed);
            }
        }
        if incoming.payload == Payload::Alive {
            return;
        }
        if let Payload::Forward(command) = &incoming.payload {
            self.forwarded(incoming.from, &incoming.topic, incoming.partition, command);
            return;
        }
        if let Payload::Leader { term, in_sync } = incoming.payload {
            let key = (incoming.topic, incoming.partition);
            self.take_announcement(incoming.from, key, incoming.tag, (term, in_sync));
            return;
        }
        let owner = owner(&incoming.topic, incoming.partition, self.shards().len());
        let Some(here) = local() else { return };
        if owner == here.shard {
            deliver_here(&here, incoming);
            return;
        }
        let work = Box::new(move || {
            if let Some(local) = local() {
                deliver_here(&local, incoming);
            }
        });
        // A full mailbox drops the message, as a lossy network would; Raft resends.
        let _ = self.shards()[owner].try_run(work);
    }

    /// Tells every group of every shard that `peer` restarted: a leader forgets what the
    /// peer acknowledged and finds its log's end again, and a group the peer led elects
    /// another leader at once (`Replica::peer_restarted`).
    fn peer_restarted(&self, peer: u64) {
        tracing::info!(
            peer,
            "a peer restarted; its groups' leaders probe its log again, and the groups it led elect"
        );
        self.tell_groups(peer, "a peer restarted", Command::PeerRestarted);
    }

    /// Pushes `command(peer)` into every group's inbox on every shard; `what` names the
    /// event in the warnings when an inbox or a shard's mailbox is full (the event is then
    /// lost for those groups, which fall back on Raft's own timeouts).
    fn tell_groups(&self, peer: u64, what: &'static str, command: fn(u64) -> Command) {
        for shard in self.shards() {
            let work = Box::new(move || {
                if let Some(local) = local() {
                    tell_local(&local, peer, what, command);
                }
            });
            // A stopping node's shards take nothing more (`Closed`): nothing is lost.
            if let Err(TrySendError::Full(_)) = shard.try_run(work) {
                tracing::warn!(
                    peer,
                    "a shard's mailbox is full: its groups not told that {what}"
                );
            }
        }
    }

    /// Opens the controller group on this shard (0) and starts applying its commands.
    async fn start_controller(&self) -> Result<(), ClusterError> {
        let dir = self
            .inner
            .config
            .data_dir
            .join(format!("{CONTROLLER_TOPIC}-0"));
        rt::create_dir_all(&dir)
            .await
            .map_err(|source| ClusterError::ControllerDir {
                path: dir.clone(),
                source,
            })?;
        let config = TopicConfig::builder()
            .retention_ms(None)
            .build()
            .map_err(|e| ClusterError::InvalidTopic(e.to_string()))?;
        let replica = Replica::open(
            DiskStorage,
            &dir,
            controller_id(),
            config,
            &self.replica_config(self.voters()),
        )
        .await?;
        let log = replica.log().clone();
        if let Some(local) = local() {
            *local.controller_log.borrow_mut() = Some(log.clone());
        }
        self.spawn_group(replica, 0, None);
        if self.inner.rejoining.load(Ordering::Acquire) {
            let cluster = self.clone();
            rt::spawn_local(async move { cluster.end_rejoin(log).await }).detach();
        }
        Ok(())
    }

    /// Starts applying the controller's committed commands, on shard 0, the controller's.
    fn start_applying(&self) -> Result<(), ClusterError> {
        let log = controller_log()?;
        let cluster = self.clone();
        rt::spawn_local(async move {
            if let Err(error) = cluster.apply_controller(log).await {
                tracing::error!(%error, "the controller's commands stopped applying on this node");
                // Those waiting for a command to apply are answered now, not at their
                // deadline.
                if let Some(local) = local() {
                    local.controller_applied.stop();
                }
            }
        })
        .detach();
        Ok(())
    }

    /// Ends the node's rejoin once it is over: the controller's replica rejoined, the
    /// controller's log is applied as far as it reached then (so every group that existed
    /// is open here), and every replica opened meanwhile rejoined. Groups opened
    /// after that are new to every node and need no rejoin.
    async fn end_rejoin(&self, controller_log: ringlog_engine::log::PartitionLog<DiskStorage>) {
        let key = (CONTROLLER_TOPIC.to_owned(), 0);
        let mut target = None;
        loop {
            rt::sleep(self.inner.config.tick).await;
            let status = lock(&self.inner.status);
            if status.get(&key).is_none_or(|group| group.rejoining) {
                continue;
            }
            // Its log's end, not its high watermark: the log reached the floor, but the
            // commit may not have followed yet, and a topic created in between must be
            // opened (and rejoined) before the marker goes.
            let target = *target.get_or_insert_with(|| controller_log.offsets().log_end);
            if self.inner.controller_applied.load(Ordering::Acquire) < target
                || status.values().any(|group| group.rejoining)
            {
                continue;
            }
            break;
        }
        let marker = self.inner.config.data_dir.join(REJOIN_MARKER);
        let removed = match rt::remove_file(&marker).await {
            Ok(()) => rt::sync_dir(&self.inner.config.data_dir).await,
            Err(error) => Err(error),
        };
        match removed {
            Ok(()) => {
                self.inner.rejoining.store(false, Ordering::Release);
                tracing::info!("rejoined the cluster: every group this node holds rejoined");
            }
            // Left set: groups opened from now on rejoin too, which is safe (only slower),
            // and the next start tries again.
            Err(error) => tracing::error!(
                path = %marker.display(),
                %error,
                "cannot remove the rejoin marker"
            ),
        }
    }

    /// How a replica of a group of `voters` (if it is new) is run.
    fn replica_config(&self, voters: Vec<u64>) -> ReplicaConfig {
        let config = &self.inner.config;
        ReplicaConfig {
            node_id: config.node_id,
            voters,
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            entry_cache_bytes_max: ENTRY_CACHE_BYTES_MAX,
            window_entries_keep: WINDOW_ENTRIES_KEEP,
            window_entries_max: WINDOW_ENTRIES_MAX,
            hibernate: config.hibernate,
            anchor_sync_ticks: ANCHOR_SYNC_TICKS,
        }
    }

    /// Rebuilds the placement table from the controller's commands this node applied before
    /// it stopped (`placement.rs`), before any replica opens: which partitions it holds,
    /// and with which voters, is what those commands placed.
    async fn replay_placements(&self) -> Result<(), ClusterError> {
        let log = controller_log()?;
        let applied = self.inner.controller_applied.load(Ordering::Acquire);
        let mut next = log.offsets().log_start;
        while next < applied {
            let batches = read_commands(&log, next).await?;
            if batches.is_empty() {
                return Err(ClusterError::InvalidTopic(format!(
                    "the controller's log has no command at offset {next}, applied up to {applied}"
                )));
            }
            for (batch_next, changes) in batches {
                if batch_next > applied {
                    break;
                }
                let mut placements = lock(&self.inner.placements);
                for change in &changes {
                    // Refused as when it was applied: the same check, the same table.
                    let _ = placements.apply_checked(change);
                }
                next = batch_next;
            }
        }
        Ok(())
    }

    /// Applies the controller's committed commands in order, forever, from where this node
    /// left off (`applied.rs`).
    async fn apply_controller(
        &self,
        log: ringlog_engine::log::PartitionLog<DiskStorage>,
    ) -> Result<(), ClusterError> {
        let mut next = self.inner.controller_applied.load(Ordering::Acquire);
        let data_dir = self.inner.config.data_dir.clone();
        loop {
            let version = log.version();
            if log.offsets().high_watermark <= next {
                log.changed_since(version).await;
                continue;
            }
            // Whether `next` moved since the applied offset was last written.
            let mut unsaved = false;
            for (batch_next, changes) in read_commands(&log, next).await? {
                let mut altered = false;
                for change in changes {
                    // A reassignment's commands too: after a restart, the table says which
                    // replicas this node holds (one a `reassigned` closed and emptied is not
                    // opened again as a voter of its old set).
                    altered |= matches!(
                        change,
                        Change::AlterConfig { .. }
                            | Change::Reassign { .. }
                            | Change::Reassigned { .. }
                    );
                    match self.apply_placed(&change).await {
                        Ok(()) => {}
                        // Refused alike on every node: the command's outcome, not a
                        // reason to stop applying the ones after it.
                        Err(refused) if refused.is_deterministic() => {
                            tracing::warn!(
                                topic = change.topic_name(),
                                command = %String::from_utf8_lossy(change.key()),
                                error = %refused,
                                "a committed controller command is refused; skipped"
                            );
                        }
                        Err(error) => return Err(error),
                    }
                }
                next = batch_next;
                // At once after a configuration change: a restart must not apply an older
                // configuration again, even for a moment. Creations, deletions and added
                // partitions apply again harmlessly (a creation applied again opens the
                // replicas a restart did not, `group_voters`), so for them once a read (a
                // new or wiped node replays the whole log without three fsyncs a command).
                if altered {
                    write_applied(&data_dir, next)
                        .await
                        .map_err(|e| ClusterError::AppliedFile(e.to_string()))?;
                }
                unsaved = !altered;
                (self.inner.controller_applied).store(next, Ordering::Release);
                if let Some(local) = local() {
                    local.controller_applied.advance(next);
                }
            }
            if unsaved {
                write_applied(&data_dir, next)
                    .await
                    .map_err(|e| ClusterError::AppliedFile(e.to_string()))?;
            }
        }
    }

    /// Applies one command: its placement first (the replicas it opens are placed by it),
    /// then the change itself.
    async fn apply_placed(&self, change: &Change) -> Result<(), ClusterError> {
        (lock(&self.inner.placements).apply_checked(change))
            .map_err(|e| ClusterError::InvalidReplication(e.to_string()))?;
        self.apply_change(change).await
    }

    async fn apply_change(&self, change: &Change) -> Result<(), ClusterError> {
        match change {
            Change::CreateTopic(create) => self.apply_create_topic(create).await,
            Change::DeleteTopic(topic) => self.apply_delete_topic(topic).await,
            Change::CreatePartitions {
                topic, partitions, ..
            } => self.apply_create_partitions(topic, *partitions).await,
            Change::AlterConfig { topic, pairs } => {
                let Some(meta) = self.current(topic) else {
                    return Ok(());
                };
                let config = applied_over(&meta.config, pairs)
                    .map_err(|e| ClusterError::InvalidTopicConfig(e.to_string()))?;
                self.inner.engine.alter_config(&topic.name, config).await?;
                tracing::info!(
                    topic = topic.name,
                    "configuration altered by the controller"
                );
                Ok(())
            }
            Change::Reassign { topic, targets } => {
                let Some(meta) = self.current(topic) else {
                    return Ok(());
                };
                for (partition, target) in targets {
                    tracing::info!(topic = topic.name, partition, ?target, "reassigning");
                    self.settle_replica(&meta, *partition, false).await?;
                }
                Ok(())
            }
            Change::Reassigned {
                topic,
                partition,
                replicas,
                ..
            } => {
                let Some(meta) = self.current(topic) else {
                    return Ok(());
                };
                tracing::info!(topic = topic.name, partition, ?replicas, "reassigned");
                self.settle_replica(&meta, *partition, true).await
            }
        }
    }

    /// Brings this node's replica of a partition in line with the placement table after a
    /// reassignment's command: opens it if this node is involved in the move or in the
    /// partition's set and it is not open (a replica that joins the group), else hands the
    /// group its target (none once done). Once the move is done (`left`), a node no longer
    /// involved closes its replica and deletes the partition's data: the group's voters are
    /// the new set, which reported it holds every committed entry. Nothing is deleted while
    /// a move is under way: a redirect or a cancellation leaves the nodes of the earlier
    /// target involved, as they may be voters.
    async fn settle_replica(
        &self,
        meta: &TopicMeta,
        partition: u32,
        left: bool,
    ) -> Result<(), ClusterError> {
        if partition >= meta.partitions {
            return Ok(());
        }
        if self.group_voters(meta, partition).is_some() {
            return self.open_replica(meta, partition).await;
        }
        if !left {
            return Ok(());
        }
        self.close_replica(meta.name.as_str(), partition).await?;
        let dir = (self.inner.config.data_dir).join(format!("{}-{partition}", meta.name));
        // Only where a replica lived: the other nodes' logs of the partition are empty. A
        // failure leaves the data (never read: no replica opens it) and this node applying.
        if dir.join(RAFT_JOURNAL_FILE).exists() {
            match self
                .inner
                .engine
                .empty_partition(meta.name.as_str(), partition)
                .await
            {
                Ok(()) => {
                    tracing::info!(topic = %meta.name, partition, "replica left: its data deleted");
                }
                Err(error) => tracing::error!(
                    topic = %meta.name,
                    partition,
                    %error,
                    "a replica that left could not delete its data; delete it by hand"
                ),
            }
        }
        Ok(())
    }

    /// Closes this node's replica of a partition, if it has one, and waits until its task
    /// ended and its replica (journal included) is dropped.
    async fn close_replica(&self, topic: &str, partition: u32) -> Result<(), ClusterError> {
        let name = topic.to_owned();
        let owner = owner(&name, partition, self.shards().len());
        let cluster = self.clone();
        let ended = self.shards()[owner]
            .spawn(move || async move { close_group(&cluster, &name, partition) })
            .await
            .map_err(|_| ClusterError::ShardStopped)?;
        if let Some(mut ended) = ended {
            // The task ends at its next turn (a fill in progress gives up once its group
            // is no longer served); a dropped sender means it ended anyway. Its files are
            // not deleted under it before: a slow disk holds the controller's applier here.
            let wait = Duration::from_millis(GROUP_CLOSE_WAIT_MS);
            while rt::timeout(wait, &mut ended).await.is_err() {
                tracing::warn!(
                    topic,
                    partition,
                    "waiting for a closed replica's task to end"
                );
            }
        }
        Ok(())
    }

    /// The topic a command names, if it is still the one here (same id).
    fn current(&self, topic: &TopicRef) -> Option<TopicMeta> {
        let meta = self.inner.engine.topic(&topic.name)?;
        if meta.id != topic.id {
            tracing::debug!(
                topic = topic.name,
                "a controller command for an earlier topic of the same name; nothing to do"
            );
            return None;
        }
        Some(meta)
    }

    /// Creates a committed topic here (once: a topic that exists is left as it is).
    async fn apply_create_topic(&self, command: &CreateTopic) -> Result<(), ClusterError> {
        let engine = &self.inner.engine;
        if let Some(meta) = engine.topic(&command.name) {
            if meta.id != command.id {
                tracing::warn!(
                    topic = command.name,
                    "a committed create-topic command names a topic that exists with another id; \
                     the first one stays"
                );
                return Ok(());
            }
            // Applied already: its replicas may not be open yet (`group_voters`).
            return self.open_replicas(&meta, 0).await;
        }
        let invalid = |e: CommandError| ClusterError::InvalidTopic(e.to_string());
        let name = Change::CreateTopic(command.clone())
            .checked_name()
            .map_err(invalid)?;
        let config = command
            .config()
            .map_err(|e| ClusterError::InvalidTopicConfig(e.to_string()))?;
        check_creatable(engine, &name, command.partitions)?;
        let meta = without_leftovers(|| {
            engine.create_topic_with_id(
                name.as_str(),
                command.id,
                command.partitions,
                config.clone(),
            )
        })
        .await?;
        tracing::info!(topic = %name, partitions = command.partitions, "topic created by the controller");
        self.open_replicas(&meta, 0).await
    }

    /// Deletes a committed topic here: closes its groups, then its logs and directories.
    async fn apply_delete_topic(&self, topic: &TopicRef) -> Result<(), ClusterError> {
        let Some(meta) = self.current(topic) else {
            return Ok(());
        };
        for partition in 0..meta.partitions {
            // Nor is a new topic's made in place of its files before.
            self.close_replica(&topic.name, partition).await?;
        }
        let deleted = self.inner.engine.delete_topic(&topic.name).await;
        if let Err(error) = deleted {
            if self.inner.engine.topic(&topic.name).is_some() {
                return Err(error.into());
            }
            // The registry no longer has it: deleted, with a directory left behind, which a
            // later creation of the name removes.
            tracing::error!(topic = topic.name, %error, "a deleted topic's data was not all removed");
        }
        lock(&self.inner.announced).retain(|(name, _), _| *name != topic.name);
        tracing::info!(topic = topic.name, "topic deleted by the controller");
        Ok(())
    }

    /// Adds a committed topic's new partitions here, and their replicas.
    async fn apply_create_partitions(
        &self,
        topic: &TopicRef,
        partitions: u32,
    ) -> Result<(), ClusterError> {
        let Some(meta) = self.current(topic) else {
            return Ok(());
        };
        if meta.partitions >= partitions {
            // Applied already: its replicas may not be open yet (the node restarted before
            // the applied offset passed it, `group_voters`). Or refused alike everywhere.
            self.open_replicas(&meta, 0).await?;
            return Err(ClusterError::PartitionsNotIncreased {
                name: topic.name.clone(),
                message: format!("has {}, asked {partitions}", meta.partitions),
            });
        }
        let first = meta.partitions;
        let engine = &self.inner.engine;
        let meta = without_leftovers(|| engine.add_partitions(&topic.name, partitions)).await?;
        tracing::info!(
            topic = topic.name,
            partitions,
            "partitions added by the controller"
        );
        self.open_replicas(&meta, first).await
    }

    /// Wraps each of the topic's partition logs from `first` on in a replica, on its shard.
    async fn open_replicas(&self, meta: &TopicMeta, first: u32) -> Result<(), ClusterError> {
        for partition in first..meta.partitions {
            self.open_replica(meta, partition).await?;
        }
        Ok(())
    }

    /// Wraps the partition's log in a replica on its shard, if this node holds one, or
    /// hands the open one its reassignment's target.
    async fn open_replica(&self, meta: &TopicMeta, partition: u32) -> Result<(), ClusterError> {
        let tag = topic_tag(&meta.id);
        let Some(voters) = self.group_voters(meta, partition) else {
            // Placed on other nodes: its log here stays empty, and this node answers for
            // it with what its leader announces.
            return Ok(());
        };
        let target = (lock(&self.inner.placements).moving(&meta.id, partition))
            .map(|moving| (moving.target.clone(), moving.epoch));
        let topic = meta.name.as_str().to_owned();
        let dir = (self.inner.config.data_dir).join(format!("{topic}-{partition}"));
        let cluster = self.clone();
        let owner = owner(&topic, partition, self.shards().len());
        self.shards()[owner]
            .spawn(move || async move {
                let key: GroupKey = (Rc::from(topic.as_str()), partition);
                let local = local().ok_or(ClusterError::ShardStopped)?;
                if let Some(hosted) = local.groups.borrow().get(&key) {
                    // Opened already (the controller's applier and the start both open a
                    // topic created just before a restart), or being reassigned.
                    if hosted.tag == tag {
                        *hosted.shared.target.borrow_mut() = target;
                        // Its next tick comes even if it sleeps.
                        hosted.inbox.set_asleep(false);
                    }
                    return Ok(());
                }
                let log = engine_shard::local_log(&topic, partition).ok_or_else(|| {
                    ClusterError::NoReplica {
                        topic: topic.clone(),
                        partition,
                    }
                })?;
                let config = cluster.replica_config(voters);
                let replica = Replica::open_with_log(log, DiskStorage, &dir, &config).await?;
                cluster.spawn_group(replica, tag, target);
                Ok::<(), ClusterError>(())
            })
            .await
            .map_err(|_| ClusterError::ShardStopped)?
    }

    /// Starts the task that drives `replica`, of the topic tagged `tag`, on this shard,
    /// towards `target` if it is being reassigned.
    fn spawn_group(&self, mut replica: Replica<DiskStorage>, tag: u64, target: Option<Target>) {
        let Some(local) = local() else { return };
        let id = replica.id().clone();
        let peers = replica.other_voters();
        let shared = Rc::new(GroupShared {
            outsiders: RefCell::new(self.outsiders(&replica)),
            target: RefCell::new(target),
        });
        // A replica with no configuration yet (one that joins the group in a move) has no
        // one to ask and no vote to withhold: it learns the group from the leader's
        // snapshot. (Wiped after it became a voter, it may vote before it holds what it
        // acknowledged; docs/ARCHITECTURE.md, "Reassignment".)
        let configured = !replica.members().0.is_empty();
        if self.inner.rejoining.load(Ordering::Acquire) && configured {
            replica.start_rejoin();
        }
        // Published before the task runs: the node's rejoin is not over while it is.
        let status = GroupStatus {
            rejoining: replica.rejoining(),
            ..GroupStatus::default()
        };
        lock(&self.inner.status).insert((id.topic.to_string(), id.partition), status);
        replica.set_fill_source(local.fills.source());
        local
            .fills
            .register(replica.log().clone(), tag, peers.clone());
        let key: GroupKey = (Rc::from(&*id.topic), id.partition);
        let inbox = Inbox::new(GROUP_INBOX_COMMANDS_MAX);
        let commands = Rc::downgrade(&inbox);
        let (ended, on_end) = oneshot::channel();
        let hosted = Hosted {
            tag,
            shared: shared.clone(),
            inbox,
            ended: RefCell::new(Some(on_end)),
        };
        local.groups.borrow_mut().insert(key.clone(), hosted);
        let cluster = self.clone();
        rt::spawn_local(async move {
            let to = Outward {
                tag,
                shared: &shared,
            };
            let failure = cluster.drive(replica, commands.clone(), &local, &key, to).await;
            if commands.strong_count() == 0 {
                // Closed on purpose (`close_group`), which took it off the shard (a group
                // of the topic created again may hold its place now); whatever ended the
                // task (its turn, or a fill that lost its source), the replica is dropped.
                tracing::debug!(partition = %id, error = %failure, "replica closed");
                let _ = ended.send(());
                return;
            }
            // The group's peers may sleep: woken, they elect a leader without this replica.
            for peer in peers {
                let wake = Payload::Hibernation(Signal::Wake { term: 0 });
                local.transport.send_payload(peer, group(&key, tag), &wake);
            }
            local.groups.borrow_mut().remove(&key);
            local.fills.forget(&id);
            // Kept, stopped, to learn the leader from what still reaches this node. A
            // replica stopped while rejoining still holds the node's rejoin back.
            local.stopped.borrow_mut().insert(key.clone(), tag);
            let mut status = lock(&cluster.inner.status);
            let status_key = (key.0.to_string(), key.1);
            let rejoining = status.get(&status_key).is_some_and(|group| group.rejoining);
            let stopped = GroupStatus {
                stopped: true,
                rejoining,
                ..GroupStatus::default()
            };
            status.insert(status_key, stopped);
            drop(status);
            tracing::error!(partition = %id, error = %failure, "replica stopped; restart the node to reopen it");
        })
        .detach();
    }

    /// A group's task: commands in, ready out, status published. Returns why it stopped.
    async fn drive(
        &self,
        mut replica: Replica<DiskStorage>,
        commands: Weak<Inbox<Command>>,
        local: &Local,
        key: &GroupKey,
        outward: Outward<'_>,
    ) -> ClusterError {
        let to = group(key, outward.tag);
        let mut published = None;
        // What this replica last told the outsiders: the term, and whether it led then.
        let mut said: Option<(u64, bool)> = None;
        // The configurations the replica had taken in when last looked at (its members then),
        // and ticks to the next report that a reassignment is done.
        let mut configurations = replica.configurations();
        let mut report_in = 0;
        loop {
            let Some(taken) = inbox::take(&commands).await else {
                return ClusterError::InboxClosed {
                    topic: key.0.to_string(),
                    partition: key.1,
                };
            };
            if taken.tick {
                replica.tick();
                for peer in replica.rejoin_asks() {
                    (local.transport).send_payload(peer, to, &Payload::RejoinAsk);
                }
                let target = outward.shared.target.borrow().clone();
                if let Some((target, epoch)) = target {
                    let done = match self.reassign_step(&mut replica, key, &target).await {
                        Ok(done) => done,
                        Err(error) => return error,
                    };
                    report_in = if done && replica.is_leader() {
                        self.report_done(key, outward.tag, (target, epoch), report_in)
                    } else {
                        0
                    };
                }
            }
            for command in taken.commands {
                if let Command::RejoinAsk(peer) = command {
                    let answer = Payload::RejoinAnswer(replica.log_state());
                    local.transport.send_payload(peer, to, &answer);
                    continue;
                }
                if let Err(error) = apply_command(&mut replica, command) {
                    return error.into();
                }
            }
            while replica.has_ready() {
                let send = |messages: Vec<Message>| {
                    for message in messages {
                        local.transport.send(message.to, to, &message);
                    }
                };
                if let Err(error) = replica.process_ready_sending(send).await {
                    return error.into();
                }
            }
            // After the Ready's messages: a follower's agreement to sleep follows its
            // answer to the heartbeat that carried the commit index.
            for (peer, signal) in replica.take_hibernation_signals() {
                let payload = Payload::Hibernation(signal);
                local.transport.send_payload(peer, to, &payload);
            }
            if replica.configurations() != configurations {
                configurations = replica.configurations();
                self.members_changed(local, &replica, to, outward.shared);
            }
            if let Some(inbox) = commands.upgrade() {
                // A group being reassigned keeps ticking: its leader drives the change.
                let moving = outward.shared.target.borrow().is_some();
                inbox.set_asleep(replica.asleep() && !moving);
            }
            let status = GroupStatus {
                leader: replica.leader(),
                term: replica.term(),
                in_sync: replica.in_sync(),
                leads_with_own_commit: replica.leads_with_own_commit(),
                rejoining: replica.rejoining(),
                asleep: replica.asleep(),
                stopped: false,
            };
            // Not once closed: a group of the topic created again may be published there.
            if published.as_ref() != Some(&status) && commands.strong_count() > 0 {
                lock(&self.inner.status).insert((key.0.to_string(), key.1), status.clone());
                // At once when it leads in a new term, or stops leading; changes of the
                // in-sync set go with the periodic announcements (`announce_led`).
                let leads = status.leader == Some(self.node_id());
                let now = (status.term, leads);
                if said != Some(now) && (leads || said.is_some_and(|(_, led)| led)) {
                    let in_sync = if leads {
                        status.in_sync.clone()
                    } else {
                        Vec::new()
                    };
                    let outsiders = outward.shared.outsiders.borrow().clone();
                    announce(local, to, &outsiders, status.term, in_sync);
                }
                said = Some(now);
                published = Some(status);
            }
        }
    }
}

impl Cluster {
    /// The peers that are neither voters nor learners of `replica`'s group.
    fn outsiders(&self, replica: &Replica<DiskStorage>) -> Vec<u64> {
        let (voters, learners) = replica.members();
        (self.inner.heard.keys().copied())
            .filter(|peer| !voters.contains(peer) && !learners.contains(peer))
            .collect()
    }

    /// After the group's configuration changed (a reassignment's step, or a joining
    /// replica's snapshot): its fills ask its new members, and the peers it no longer
    /// counts hear from its leader at once, not at the next periodic announcement.
    fn members_changed(
        &self,
        local: &Local,
        replica: &Replica<DiskStorage>,
        to: Group<'_>,
        shared: &GroupShared,
    ) {
        let outsiders = self.outsiders(replica);
        let (voters, learners) = replica.members();
        let me = self.node_id();
        let others: Vec<u64> = (voters.iter().chain(&learners).copied())
            .filter(|&id| id != me)
            .collect();
        local.fills.register(replica.log().clone(), to.tag, others);
        let newly_out: Vec<u64> = (outsiders.iter().copied())
            .filter(|peer| !shared.outsiders.borrow().contains(peer))
            .collect();
        *shared.outsiders.borrow_mut() = outsiders;
        if replica.leader() == Some(me) {
            announce(local, to, &newly_out, replica.term(), replica.in_sync());
        }
    }

    /// One tick of a reassignment on this replica: on the group's leader, its voters go a
    /// step towards `target` (`Replica::reconfigure`). A step raft-rs refuses (a leadership
    /// transfer under way, say) is tried again at the next tick; a failure of the replica's
    /// storage stops it. Answers whether the group's configuration is the target.
    async fn reassign_step(
        &self,
        replica: &mut Replica<DiskStorage>,
        key: &GroupKey,
        target: &[u64],
    ) -> Result<bool, ClusterError> {
        match replica.reconfigure(target).await {
            Ok(Reconfiguring::Waiting(step)) => {
                tracing::debug!(topic = %key.0, partition = key.1, step, "reassigning");
                Ok(false)
            }
            Ok(Reconfiguring::Done) => Ok(true),
            Ok(Reconfiguring::NotLeader) => Ok(false),
            Err(ReplicaError::Raft { source, .. }) => {
                tracing::debug!(
                    topic = %key.0,
                    partition = key.1,
                    error = %source,
                    "a reassignment's step refused; tried again at the next tick"
                );
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// On the leader of a group whose voters are its reassignment's target: reports it to
    /// the controller (`reassigned`), again every `REASSIGNED_REPORT_TICKS` until the
    /// report applies here and clears the target. Returns the ticks to the next report.
    fn report_done(&self, key: &GroupKey, tag: u64, target: Target, report_in: usize) -> usize {
        if report_in > 0 {
            return report_in - 1;
        }
        let meta = (self.inner.engine.topic(&key.0)).filter(|meta| topic_tag(&meta.id) == tag);
        let Some(meta) = meta else { return 0 };
        let change = Change::Reassigned {
            topic: topic_ref(&meta),
            partition: key.1,
            replicas: target.0,
            epoch: target.1,
        };
        let cluster = self.clone();
        rt::spawn_local(async move {
            match cluster.propose_anywhere(&change).await {
                Ok(_) => tracing::info!(
                    topic = change.topic_name(),
                    "a partition's group reached its reassignment's target; reported"
                ),
                Err(error) => tracing::debug!(
                    topic = change.topic_name(),
                    %error,
                    "a reassignment's end not reported; reported again"
                ),
            }
        })
        .detach();
        REASSIGNED_REPORT_TICKS
    }
}

/// The controller's commands in `log` from offset `next` on, as far as one read reaches:
/// per whole batch past `next`, the offset after it and its commands. A batch the read
/// ends inside is left for the next read, from its start.
async fn read_commands(
    log: &ringlog_engine::log::PartitionLog<DiskStorage>,
    next: i64,
) -> Result<Vec<(i64, Vec<Change>)>, ClusterError> {
    let bytes = log
        .read_bytes(next, CONTROLLER_READ_BYTES_MAX)
        .await
        .map_err(|e| ClusterError::Engine(EngineError::Log(e)))?;
    let mut rest = bytes.as_slice();
    let mut batches = Vec::new();
    while FrameHeader::parse(rest).is_ok_and(|header| header.size_bytes <= rest.len()) {
        let (batch, after) = RecordBatch::parse(rest)
            .map_err(|e| ClusterError::InvalidTopic(format!("controller batch: {e}")))?;
        rest = after;
        let batch_next =
            batch.base_offset() + i64::try_from(batch.offset_count()).unwrap_or(i64::MAX);
        if batch_next <= next {
            continue;
        }
        let records = batch
            .records()
            .map_err(|e| ClusterError::InvalidTopic(format!("controller batch: {e}")))?;
        let mut changes = Vec::new();
        for record in records {
            let record = record
                .map_err(|e| ClusterError::InvalidTopic(format!("controller record: {e}")))?;
            let change = Change::decode(record.value.unwrap_or_default())
                .map_err(|e| ClusterError::InvalidTopic(e.to_string()))?;
            changes.push(change);
        }
        batches.push((batch_next, changes));
    }
    Ok(batches)
}

/// The controller's log, on shard 0.
fn controller_log() -> Result<ringlog_engine::log::PartitionLog<DiskStorage>, ClusterError> {
    local()
        .and_then(|local| local.controller_log.borrow().clone())
        .ok_or_else(|| ClusterError::NoReplica {
            topic: CONTROLLER_TOPIC.to_owned(),
            partition: 0,
        })
}

/// A group task's ways out besides its voters: its topic's tag, and what it shares with
/// the shard (the peers that hold no replica of the group, its reassignment's target).
#[derive(Clone, Copy)]
struct Outward<'a> {
    tag: u64,
    shared: &'a GroupShared,
}

/// Tells `outsiders` that this node leads the group `to` in `term` with `in_sync`, or (no
/// ids) that it stopped leading it.
fn announce(local: &Local, to: Group<'_>, outsiders: &[u64], term: u64, in_sync: Vec<u64>) {
    if outsiders.is_empty() {
        return;
    }
    let payload = Payload::Leader { term, in_sync };
    for &peer in outsiders {
        local.transport.send_payload(peer, to, &payload);
    }
}

/// A leader's message for a group whose replica here stopped: its sender leads (in its
/// term), which this node's Metadata then says.
fn learn_leader(local: &Local, to: Group<'_>, message: &Message) {
    use raft::eraftpb::MessageType::{MsgAppend, MsgHeartbeat, MsgSnapshot};
    if !matches!(
        message.get_msg_type(),
        MsgAppend | MsgHeartbeat | MsgSnapshot
    ) {
        return;
    }
    // Of the topic whose replica stopped here, not an earlier or later one of its name.
    let key: GroupKey = (Rc::from(to.topic), to.partition);
    if local.stopped.borrow().get(&key) != Some(&to.tag) {
        return;
    }
    let mut status = lock(&local.status);
    let Some(entry) = status.get_mut(&(to.topic.to_owned(), to.partition)) else {
        return;
    };
    // A later term, even from the same leader (elected again).
    let newer = message.term > entry.term || (message.term == entry.term && entry.leader.is_none());
    if entry.stopped && newer {
        entry.leader = Some(message.from);
        entry.term = message.term;
        entry.in_sync = vec![message.from];
    }
}

/// Takes a group off this shard (a deleted topic's): its task ends at its next turn, and
/// the receiver answers once it has and its replica is dropped. `None` if the group is not
/// here.
fn close_group(cluster: &Cluster, topic: &str, partition: u32) -> Option<oneshot::Receiver<()>> {
    // A stopped replica's status too.
    lock(&cluster.inner.status).remove(&(topic.to_owned(), partition));
    let local = local()?;
    let key: GroupKey = (Rc::from(topic), partition);
    local.stopped.borrow_mut().remove(&key);
    let hosted = local.groups.borrow_mut().remove(&key)?;
    let id = PartitionId {
        topic: Arc::from(topic),
        partition,
    };
    local.fills.forget(&id);
    let ended = hosted.ended.borrow_mut().take();
    ended
}

/// Pushes `command(peer)` into the inbox of every group of this shard (see
/// [`Cluster::tell_groups`]).
fn tell_local(local: &Local, peer: u64, what: &'static str, command: fn(u64) -> Command) {
    for (key, hosted) in local.groups.borrow().iter() {
        if hosted.inbox.push(command(peer)).is_err() {
            tracing::warn!(
                topic = %key.0,
                partition = key.1,
                peer,
                "a group's inbox is full: not told that {what}"
            );
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Queues a proposal in the group's inbox, on the shard that owns the group, and waits for
/// its commit. `command` makes the command from the channel its answer comes back on.
async fn propose_here<T>(
    topic: &str,
    partition: u32,
    command: impl FnOnce(oneshot::Sender<Answer<T>>) -> Command,
) -> Result<T, ClusterError> {
    let no_replica = || ClusterError::NoReplica {
        topic: topic.to_owned(),
        partition,
    };
    let inbox = local()
        .and_then(|local| {
            let key = (Rc::from(topic), partition);
            let inbox = local.groups.borrow().get(&key)?.inbox.clone();
            Some(inbox)
        })
        .ok_or_else(no_replica)?;
    let (reply, replied) = oneshot::channel();
    if inbox.push(command(reply)).is_err() {
        return Err(ClusterError::InboxFull {
            topic: topic.to_owned(),
            partition,
        });
    }
    drop(inbox);
    // A closed channel: the group's task stopped before it answered.
    let committed = replied.await.map_err(|_| no_replica())??;
    committed
        .await
        .map_err(|_| no_replica())?
        .map_err(ClusterError::from)
}

fn apply_command(replica: &mut Replica<DiskStorage>, command: Command) -> Result<(), ReplicaError> {
    match command {
        Command::Step(message) => match replica.step(message) {
            // A message of an older term or for a stale peer is Raft's to ignore.
            Err(ReplicaError::Raft { source, .. }) if is_ignorable(&source) => Ok(()),
            other => other,
        },
        Command::PeerRestarted(peer) => {
            replica.peer_restarted(peer);
            Ok(())
        }
        Command::PeerGone(peer) => {
            replica.peer_gone(peer);
            Ok(())
        }
        Command::Hibernation(peer, signal) => {
            replica.hibernation_signal(peer, signal);
            Ok(())
        }
        Command::RejoinAnswer(peer, state) => {
            replica.rejoin_answer(peer, state);
            Ok(())
        }
        // Answered by the group's task, which holds the transport.
        Command::RejoinAsk(_) => Ok(()),
        Command::Propose {
            batches,
            max_message_bytes,
            expected_term,
            answer,
            reply,
        } => {
            // Its proposer gave up waiting (its deadline passed): not proposed at all.
            if !reply.is_canceled() {
                let proposed =
                    replica.propose_in_term(&batches, max_message_bytes, expected_term, answer);
                let _ = reply.send(proposed);
            }
            Ok(())
        }
        Command::MoveLogStart { offset, reply } => {
            if !reply.is_canceled() {
                let _ = reply.send(replica.propose_log_start(offset));
            }
            Ok(())
        }
    }
}

/// raft-rs errors a peer's message may cause that say nothing about this replica.
fn is_ignorable(error: &raft::Error) -> bool {
    matches!(
        error,
        raft::Error::StepPeerNotFound | raft::Error::StepLocalMsg | raft::Error::ProposalDropped
    )
}

/// Hands a peer's frame, on the shard that owns its group, to the group's task (a Raft
/// message) or to the shard's fills (a fill request or answer).
fn deliver_here(local: &Local, incoming: Incoming) {
    let Incoming {
        from,
        topic,
        partition,
        tag,
        payload,
    } = incoming;
    let to = Group {
        topic: &topic,
        partition,
        tag,
    };
    match payload {
        Payload::Raft(message) => {
            if let Some(Command::Step(message)) = deliver_local(local, to, Command::Step(message)) {
                learn_leader(local, to, &message);
            }
        }
        Payload::RejoinAsk => {
            deliver_local(local, to, Command::RejoinAsk(from));
        }
        Payload::RejoinAnswer(state) => {
            deliver_local(local, to, Command::RejoinAnswer(from, state));
        }
        Payload::FillRequest { offset, max_bytes } => {
            local.fills.serve(from, to, offset, max_bytes);
        }
        Payload::FillChunk {
            offset,
            log_start,
            batches,
        } => {
            let fetched = if batches.is_empty() && log_start > offset {
                Fetched::StartsAt(log_start)
            } else {
                Fetched::Batches { batches, log_start }
            };
            local.fills.answered(to, offset, fetched);
        }
        Payload::Hibernation(signal) => {
            deliver_local(local, to, Command::Hibernation(from, signal));
        }
        Payload::Forward(_) | Payload::Alive | Payload::Leader { .. } => {
            unreachable!(
                "forwarded commands, alive and leader frames are handled by Cluster::route"
            )
        }
    }
}

/// Hands a peer's message to its group's task, on the shard that owns the group. A message
/// for a group not (yet) open here, or for another topic of the same name (its tag), is
/// given back (the caller drops it, having learned what it can from it); one that finds
/// the group's inbox full is dropped (counted): Raft sends again, as a rejoining replica
/// asks again.
fn deliver_local(local: &Local, to: Group<'_>, command: Command) -> Option<Command> {
    let Group {
        topic,
        partition,
        tag,
    } = to;
    let key: GroupKey = (Rc::from(topic), partition);
    let inbox = (local.groups.borrow().get(&key))
        .filter(|hosted| hosted.tag == tag)
        .map(|hosted| hosted.inbox.clone());
    let Some(inbox) = inbox else {
        return Some(command);
    };
    if inbox.push(command).is_err() {
        let dropped = local.steps_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            topic,
            partition,
            dropped,
            "a group's inbox is full; message dropped"
        );
    }
    None
}

/// The shard that owns a group: the controller lives on shard 0, partitions where the
/// engine places them.
fn owner(topic: &str, partition: u32, shards: usize) -> usize {
    match TopicName::new(topic) {
        Ok(name) if topic != CONTROLLER_TOPIC => shard_for(&name, partition, shards),
        // The controller, and a name no topic can have (a peer's message for it finds no
        // group and is dropped).
        _ => 0,
    }
}

/// Whether a topic's partitions are replicated: every topic, `__consumer_offsets`
/// included, but the controller's own log.
pub fn is_replicated(topic: &str) -> bool {
    topic != CONTROLLER_TOPIC
}

fn controller_id() -> PartitionId {
    PartitionId {
        topic: Arc::from(CONTROLLER_TOPIC),
        partition: 0,
    }
}

/// Makes the rejoin marker (durably) if `data_dir` holds no controller directory: a new
/// or wiped data directory, whose node must not trust its empty memory of any group.
/// Returns whether the node rejoins (the marker is there, made now or left by an earlier
/// start that did not finish rejoining).
fn mark_rejoining(data_dir: &Path) -> Result<bool, ClusterError> {
    let marker = data_dir.join(REJOIN_MARKER);
    let failed = |source| ClusterError::RejoinMarker {
        path: marker.clone(),
        source,
    };
    if marker.exists() {
        return Ok(true);
    }
    if data_dir.join(format!("{CONTROLLER_TOPIC}-0")).exists() {
        return Ok(false);
    }
    let file = std::fs::File::create(&marker).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed)?;
    tracing::info!(
        data_dir = %data_dir.display(),
        "no cluster state in the data directory: every group rejoins before this node votes"
    );
    Ok(true)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn uuid_v4() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;
    use std::sync::Arc;

    use futures::channel::oneshot;
    use raft::eraftpb::Message;

    use super::{
        apply_command, deliver_local, learn_leader, Command, GroupKey, GroupStatus, Hosted, Local,
    };
    use crate::applied::Applied;
    use crate::fill::Fills;
    use crate::inbox::{self, Inbox};
    use crate::replica::{AnswerAt, ReplicaError};
    use crate::tests::{answered, assert_identical, batch, Cluster, MAX_MESSAGE_BYTES};
    use crate::transport::{Group, Transport};
    use ringlog_engine::rt;

    fn proposal(
        tag: &str,
        expected_term: Option<u64>,
    ) -> (Command, oneshot::Receiver<super::ProposeAnswer>) {
        let (reply, replied) = oneshot::channel();
        let command = Command::Propose {
            batches: batch(tag, 1),
            max_message_bytes: MAX_MESSAGE_BYTES,
            expected_term,
            answer: AnswerAt::Commit,
            reply,
        };
        (command, replied)
    }

    #[test]
    fn a_frame_reaches_only_the_group_of_its_topics_tag() {
        rt::block_on(async {
            let transport = Transport::new(crate::transport::tests::hello(1), Vec::new());
            let fills = Fills::new(Vec::new(), transport.clone(), Arc::default());
            let local = Local {
                shard: 0,
                transport,
                fills,
                groups: RefCell::new(HashMap::new()),
                controller_applied: Applied::new(0),
                controller_log: RefCell::new(None),
                steps_dropped: Arc::default(),
                status: Arc::default(),
                stopped: RefCell::default(),
            };
            let inbox = Inbox::new(8);
            let key: GroupKey = (Rc::from("orders"), 2);
            let hosted = Hosted {
                tag: 0xBEEF,
                shared: Rc::default(),
                inbox: inbox.clone(),
                ended: RefCell::new(None),
            };
            local.groups.borrow_mut().insert(key, hosted);
            let to = |tag| Group {
                topic: "orders",
                partition: 2,
                tag,
            };
            // The same topic name and partition, an earlier (or later) topic's tag.
            let stale = deliver_local(&local, to(0xDEAD), Command::Step(Message::default()));
            assert!(matches!(stale, Some(Command::Step(_))), "given back");
            assert!(deliver_local(&local, to(0xBEEF), Command::PeerGone(3)).is_none());
            let taken = inbox::take(&Rc::downgrade(&inbox)).await.unwrap();
            let commands: Vec<_> = taken.commands.into_iter().collect();
            assert_eq!(commands.len(), 1, "only the frame of the group's own tag");
            assert!(matches!(commands[0], Command::PeerGone(3)));

            // A group whose replica here stopped learns its leader from its heartbeats.
            let key = ("orders".to_owned(), 3);
            let stopped = GroupStatus {
                stopped: true,
                ..GroupStatus::default()
            };
            local.status.lock().unwrap().insert(key.clone(), stopped);
            local
                .stopped
                .borrow_mut()
                .insert((Rc::from("orders"), 3), 0xBEEF);
            let at_3 = Group {
                topic: "orders",
                partition: 3,
                tag: 0xBEEF,
            };
            let mut vote = Message::default();
            vote.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
            (vote.from, vote.term) = (2, 7);
            learn_leader(&local, at_3, &vote);
            assert_eq!(
                local.status.lock().unwrap()[&key].leader,
                None,
                "a vote names no leader"
            );
            let mut heartbeat = Message::default();
            heartbeat.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
            (heartbeat.from, heartbeat.term) = (2, 7);
            let other_topic = Group {
                tag: 0xDEAD,
                ..at_3
            };
            learn_leader(&local, other_topic, &heartbeat);
            assert_eq!(
                local.status.lock().unwrap()[&key].leader,
                None,
                "not from another topic of the same name"
            );
            learn_leader(&local, at_3, &heartbeat);
            let learned = local.status.lock().unwrap()[&key].clone();
            assert_eq!((learned.leader, learned.term), (Some(2), 7));
            (heartbeat.from, heartbeat.term) = (3, 6);
            learn_leader(&local, at_3, &heartbeat);
            assert_eq!(
                local.status.lock().unwrap()[&key].leader,
                Some(2),
                "an older term's leader is not taken"
            );
            // The same leader, elected again in a later term.
            (heartbeat.from, heartbeat.term) = (2, 9);
            learn_leader(&local, at_3, &heartbeat);
            assert_eq!(
                local.status.lock().unwrap()[&key].term,
                9,
                "the leader's new term is learned"
            );
        })
        .unwrap();
    }

    #[test]
    fn a_proposal_is_refused_in_another_term_than_its_proposer_decided_under() {
        let dir = tempfile::tempdir().unwrap();
        rt::block_on(async {
            let mut cluster = Cluster::open(dir.path()).await;
            let first = cluster.elect(|_| true).await;
            let loaded_in = cluster.replicas[&first].term();
            // Leadership moves away and back: the same node leads, in a later term. (A
            // node that missed a term's entry loses the next election, so it takes a few.)
            let mut leader = first;
            for _ in 0..10 {
                cluster.isolated = [leader].into();
                leader = cluster.elect(|node| node != leader).await;
                if leader == first {
                    break;
                }
            }
            assert_eq!(leader, first, "leadership did not come back");
            cluster.isolated.clear();
            cluster.settle().await;
            let term = cluster.replicas[&first].term();
            assert!(term > loaded_in);
            let replica = cluster.replicas.get_mut(&first).unwrap();
            let (stale, mut refused) = proposal("stale", Some(loaded_in));
            apply_command(replica, stale).unwrap();
            let refused = refused.try_recv().unwrap().unwrap();
            assert!(
                matches!(refused, Err(ReplicaError::TermChanged { expected, .. }) if expected == loaded_in),
                "{refused:?}"
            );
            let (current, mut taken) = proposal("current", Some(term));
            apply_command(replica, current).unwrap();
            let mut answer = taken.try_recv().unwrap().unwrap().unwrap();
            cluster.settle().await;
            assert!(answered(&mut answer).unwrap().is_ok());
            // Heartbeats bring the node that was cut off last up to date.
            for _ in 0..20 {
                for replica in cluster.replicas.values_mut() {
                    replica.tick();
                }
                cluster.settle().await;
            }
            assert_eq!(assert_identical(&cluster).await, ["current-0"]);
            cluster.close().await;
        })
        .unwrap();
    }

    #[test]
    fn a_proposal_whose_proposer_gave_up_is_not_made() {
        let dir = tempfile::tempdir().unwrap();
        rt::block_on(async {
            let mut cluster = Cluster::open(dir.path()).await;
            let leader = cluster.elect(|_| true).await;
            let replica = cluster.replicas.get_mut(&leader).unwrap();
            let (late, replied) = proposal("late", None);
            // Its deadline passed while it waited in the inbox.
            drop(replied);
            apply_command(replica, late).unwrap();
            let (kept, mut taken) = proposal("kept", None);
            apply_command(replica, kept).unwrap();
            let mut answer = taken.try_recv().unwrap().unwrap().unwrap();
            cluster.settle().await;
            let appended = answered(&mut answer).unwrap().unwrap();
            assert_eq!(appended.offset_first, 0, "nothing was proposed before it");
            assert_eq!(assert_identical(&cluster).await, ["kept-0"]);
            cluster.close().await;
        })
        .unwrap();
    }
}
