//! The controller group ("raft0"): the cluster's metadata as a replicated log.
//!
//! The controller is a Raft group of every node, built like any replicated partition (a
//! [`crate::replica::Replica`] over a partition log), in `{data_dir}/__cluster_metadata-0`,
//! outside the topic registry so no Kafka client sees it (as Kafka's KRaft keeps its
//! metadata in `__cluster_metadata`). Its records are commands ([`Change`]); every node
//! applies the committed ones in offset order, so every node's registry goes through the
//! same changes. A command names its topic by name *and* id, so a command meant for a topic
//! that was deleted (and perhaps created again under the same name) changes nothing. It
//! carries every value it needs (a whole configuration, or the resolved value of each key
//! it sets), never "the default", since nodes may be started with different defaults.
//!
//! A command is the value of one record (its key names the kind, for a reader of the log:
//! `create-topic`, `delete-topic`, `create-partitions`, `alter-config`, `reassign`,
//! `reassigned`); its bytes,
//! big-endian, start with `version u8` (2; 1 is still read) and `kind u8`, then by kind:
//!
//! | kind | name              | fields after the kind                                                   |
//! |-----:|-------------------|-------------------------------------------------------------------------|
//! |    1 | create topic      | `id [16]`, `partitions u32`, `name str`, `pairs`, `placement` (version 2) |
//! |    2 | delete topic      | `id [16]`, `name str`                                                   |
//! |    3 | create partitions | `id [16]`, `partitions u32` (the new total), `name str`, `placement` (version 2, the new partitions') |
//! |    4 | alter config      | `id [16]`, `name str`, `pairs` (set over the topic's current configuration) |
//! |    5 | reassign          | `id [16]`, `name str`, `u32 count` (at most [`PARTITIONS_PER_TOPIC_MAX`]) of `partition u32`, `set` (the target; version 2 only) |
//! |    6 | reassigned        | `id [16]`, `name str`, `partition u32`, `epoch u64` (the move's, `placement.rs`), `set` (the replicas the group now has; version 2 only) |
//!
//! `str` is `u16 length + UTF-8 bytes` (a topic name at most 249 bytes); `pairs` is a
//! `u16 count` (at most 64) of `key str, value str`. The id is the topic's (a UUID, never
//! nil). Create topic's pairs are the whole configuration, so every node creates the same
//! topic whatever its own defaults are; alter config's are the keys it sets, each with its
//! value (AlterConfigs sends every key, IncrementalAlterConfigs those it edits).
//!
//! `placement` is each partition's replica set, in partition order: `u32 count` (at most
//! [`PARTITIONS_PER_TOPIC_MAX`]) of `set`s; a `set` is `u8 replicas` (1 to
//! [`REPLICATION_FACTOR_MAX`]) node ids `u64`, distinct and non-zero; a create topic's
//! lists every partition, a create
//! partitions' the new ones. A version 1 command has none: its partitions are replicated on
//! every node of the cluster (what a cluster did before replica sets).
//!
//! A reassignment (`placement.rs`) is two commands: `reassign` gives partitions a target
//! set (the current set again cancels a reassignment under way), and each partition's
//! group, once its leader has moved the group's voters to the target
//! (`Replica::reconfigure`), proposes `reassigned` with that set and the move's epoch, which
//! makes it the partition's set: the replicas of the move outside it are closed and their
//! files deleted. Nothing is deleted before: a redirected or cancelled move's nodes may be
//! voters until the group has reached the last target.
//!
//! Every length is bounded before it is trusted; a command that does not decode is an
//! error that stops the node's applying (it would mean a bug or damage), never skipped.

use ringlog_engine::limits::PARTITIONS_PER_TOPIC_MAX;
use ringlog_engine::topic::{keys, ConfigError, TopicConfig, TopicName};

/// The directory name (under the data directory) of the controller's log.
pub const CONTROLLER_TOPIC: &str = "__cluster_metadata";

const VERSION: u8 = 2;
/// Version 1: no placement, every partition on every node.
const VERSION_UNPLACED: u8 = 1;
/// The most replicas a partition may have (Kafka bounds none; a replica set is one Raft
/// group's voters, and a group of more than a handful only slows every commit).
pub const REPLICATION_FACTOR_MAX: usize = 15;
const KIND_CREATE_TOPIC: u8 = 1;
const KIND_DELETE_TOPIC: u8 = 2;
const KIND_CREATE_PARTITIONS: u8 = 3;
const KIND_ALTER_CONFIG: u8 = 4;
const KIND_REASSIGN: u8 = 5;
const KIND_REASSIGNED: u8 = 6;
/// The most configuration entries a command carries: every key a topic has, with room to
/// grow. A command's pairs are distinct known keys (a configuration's, or an alter request's
/// once checked), so no command the node builds has more.
const PAIRS_MAX: usize = 64;
const _: () = assert!(keys::ALL.len() <= PAIRS_MAX);

/// Each partition's replica set (node ids), in partition order; `None` in a command written
/// before replica sets: every node of the cluster.
pub type Placement = Option<Vec<Vec<u64>>>;

/// A change to the cluster's metadata: one controller command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateTopic(CreateTopic),
    DeleteTopic(TopicRef),
    /// Raises the topic's partition count to `partitions`, the new ones on `replicas`.
    CreatePartitions {
        topic: TopicRef,
        partitions: u32,
        replicas: Placement,
    },
    /// Sets `pairs` over the topic's configuration.
    AlterConfig {
        topic: TopicRef,
        pairs: Vec<(String, String)>,
    },
    /// Gives partitions a target replica set each: `(partition, target)`.
    Reassign {
        topic: TopicRef,
        targets: Vec<(u32, Vec<u64>)>,
    },
    /// The partition's group has the voters `replicas`, the target of its move `epoch`.
    Reassigned {
        topic: TopicRef,
        partition: u32,
        replicas: Vec<u64>,
        epoch: u64,
    },
}

/// A topic as a command names it: a name, and the id that tells this topic from one of
/// the same name deleted or created since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRef {
    pub name: String,
    pub id: [u8; 16],
}

/// A topic to create on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopic {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: u32,
    /// The whole configuration, as `TopicConfig::to_pairs` gives it.
    pub pairs: Vec<(String, String)>,
    /// Each partition's replicas.
    pub replicas: Placement,
}

/// Why a command's bytes are not a command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    #[error("controller command truncated at byte {at}")]
    Truncated { at: usize },
    #[error("controller command version {0} is not 1 or 2")]
    Version(u8),
    #[error("unknown controller command kind {0}")]
    Kind(u8),
    #[error("controller command: {0} configuration entries, at most {PAIRS_MAX}")]
    TooManyPairs(usize),
    #[error("controller command: a name or configuration entry is not UTF-8")]
    NotUtf8,
    #[error("controller command: {0} bytes after the command")]
    Trailing(usize),
    #[error("controller command: topic name: {0}")]
    Name(String),
    #[error("controller command: topic configuration")]
    Config(#[source] ConfigError),
    #[error("controller command: placement: {0}")]
    Placement(String),
}

impl Change {
    /// The record key naming the command's kind.
    pub fn key(&self) -> &'static [u8] {
        match self {
            Change::CreateTopic(_) => b"create-topic",
            Change::DeleteTopic(_) => b"delete-topic",
            Change::CreatePartitions { .. } => b"create-partitions",
            Change::AlterConfig { .. } => b"alter-config",
            Change::Reassign { .. } => b"reassign",
            Change::Reassigned { .. } => b"reassigned",
        }
    }

    /// The name of the topic the command changes.
    pub fn topic_name(&self) -> &str {
        match self {
            Change::CreateTopic(create) => &create.name,
            Change::DeleteTopic(topic)
            | Change::CreatePartitions { topic, .. }
            | Change::AlterConfig { topic, .. }
            | Change::Reassign { topic, .. }
            | Change::Reassigned { topic, .. } => &topic.name,
        }
    }

    /// The command's bytes (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.topic_name().len());
        let unplaced = matches!(
            self,
            Change::CreateTopic(CreateTopic { replicas: None, .. })
                | Change::CreatePartitions { replicas: None, .. }
        );
        out.push(if unplaced { VERSION_UNPLACED } else { VERSION });
        match self {
            Change::CreateTopic(create) => {
                out.push(KIND_CREATE_TOPIC);
                out.extend_from_slice(&create.id);
                out.extend_from_slice(&create.partitions.to_be_bytes());
                put_str(&mut out, &create.name);
                put_pairs(&mut out, &create.pairs);
                if let Some(replicas) = &create.replicas {
                    put_placement(&mut out, replicas);
                }
            }
            Change::DeleteTopic(topic) => {
                out.push(KIND_DELETE_TOPIC);
                out.extend_from_slice(&topic.id);
                put_str(&mut out, &topic.name);
            }
            Change::CreatePartitions {
                topic,
                partitions,
                replicas,
            } => {
                out.push(KIND_CREATE_PARTITIONS);
                out.extend_from_slice(&topic.id);
                out.extend_from_slice(&partitions.to_be_bytes());
                put_str(&mut out, &topic.name);
                if let Some(replicas) = replicas {
                    put_placement(&mut out, replicas);
                }
            }
            Change::AlterConfig { topic, pairs } => {
                out.push(KIND_ALTER_CONFIG);
                out.extend_from_slice(&topic.id);
                put_str(&mut out, &topic.name);
                put_pairs(&mut out, pairs);
            }
            Change::Reassign { topic, targets } => {
                out.push(KIND_REASSIGN);
                out.extend_from_slice(&topic.id);
                put_str(&mut out, &topic.name);
                assert!(
                    targets.len() <= PARTITIONS_PER_TOPIC_MAX as usize,
                    "{} reassigned partitions",
                    targets.len()
                );
                out.extend_from_slice(&(targets.len() as u32).to_be_bytes());
                for (partition, target) in targets {
                    out.extend_from_slice(&partition.to_be_bytes());
                    put_set(&mut out, target);
                }
            }
            Change::Reassigned {
                topic,
                partition,
                replicas,
                epoch,
            } => {
                out.push(KIND_REASSIGNED);
                out.extend_from_slice(&topic.id);
                put_str(&mut out, &topic.name);
                out.extend_from_slice(&partition.to_be_bytes());
                out.extend_from_slice(&epoch.to_be_bytes());
                put_set(&mut out, replicas);
            }
        }
        out
    }

    /// Decodes a command, every length checked against what is left.
    pub fn decode(bytes: &[u8]) -> Result<Change, CommandError> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.u8()?;
        if version != VERSION && version != VERSION_UNPLACED {
            return Err(CommandError::Version(version));
        }
        let placed = version == VERSION;
        let kind = reader.u8()?;
        let id = reader.array::<16>()?;
        let change = match kind {
            KIND_CREATE_TOPIC => {
                let partitions = reader.partitions()?;
                let name = reader.str()?;
                let pairs = reader.pairs()?;
                let replicas = placed.then(|| reader.placement()).transpose()?;
                if replicas
                    .as_ref()
                    .is_some_and(|r| r.len() != partitions as usize)
                {
                    return Err(CommandError::Placement(format!(
                        "{} replica sets for {partitions} partitions",
                        replicas.as_ref().map_or(0, Vec::len)
                    )));
                }
                Change::CreateTopic(CreateTopic {
                    name,
                    id,
                    partitions,
                    pairs,
                    replicas,
                })
            }
            KIND_DELETE_TOPIC => Change::DeleteTopic(TopicRef {
                name: reader.str()?,
                id,
            }),
            KIND_CREATE_PARTITIONS => {
                let partitions = reader.partitions()?;
                let name = reader.str()?;
                let replicas = placed.then(|| reader.placement()).transpose()?;
                Change::CreatePartitions {
                    topic: TopicRef { name, id },
                    partitions,
                    replicas,
                }
            }
            KIND_ALTER_CONFIG => {
                let name = reader.str()?;
                let pairs = reader.pairs()?;
                Change::AlterConfig {
                    topic: TopicRef { name, id },
                    pairs,
                }
            }
            KIND_REASSIGN if placed => {
                let name = reader.str()?;
                let count = reader.partitions()?;
                let targets = (0..count)
                    .map(|_| Ok((u32::from_be_bytes(reader.array()?), reader.set()?)))
                    .collect::<Result<Vec<_>, CommandError>>()?;
                Change::Reassign {
                    topic: TopicRef { name, id },
                    targets,
                }
            }
            KIND_REASSIGNED if placed => {
                let name = reader.str()?;
                let partition = u32::from_be_bytes(reader.array()?);
                let epoch = u64::from_be_bytes(reader.array()?);
                let replicas = reader.set()?;
                Change::Reassigned {
                    topic: TopicRef { name, id },
                    partition,
                    replicas,
                    epoch,
                }
            }
            other => return Err(CommandError::Kind(other)),
        };
        let rest = bytes.len() - reader.at;
        if rest != 0 {
            return Err(CommandError::Trailing(rest));
        }
        Ok(change)
    }

    /// The command's topic name, checked.
    pub fn checked_name(&self) -> Result<TopicName, CommandError> {
        TopicName::new(self.topic_name()).map_err(|error| CommandError::Name(error.to_string()))
    }
}

impl CreateTopic {
    /// The command for `config`'s topic, its partitions on `replicas`.
    pub fn new(
        name: &TopicName,
        id: [u8; 16],
        config: &TopicConfig,
        replicas: Vec<Vec<u64>>,
    ) -> Self {
        CreateTopic {
            name: name.as_str().to_owned(),
            id,
            partitions: u32::try_from(replicas.len()).unwrap_or(u32::MAX),
            pairs: config_pairs(config),
            replicas: Some(replicas),
        }
    }

    /// The topic's configuration, rebuilt from the command's entries over the defaults.
    pub fn config(&self) -> Result<TopicConfig, CommandError> {
        applied_over(&TopicConfig::default(), &self.pairs)
    }
}

/// Every key of `config` with its value, as a create or alter command carries them.
pub fn config_pairs(config: &TopicConfig) -> Vec<(String, String)> {
    config
        .to_pairs()
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// `base` with `pairs` set over it, checked as a topic's configuration.
pub fn applied_over(
    base: &TopicConfig,
    pairs: &[(String, String)],
) -> Result<TopicConfig, CommandError> {
    let mut config = base.clone();
    config
        .apply_all(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(CommandError::Config)?;
    Ok(config)
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(String, String)]) {
    // Encoding more than the decoder takes would commit a command no node can apply; the
    // pairs are distinct known keys (see `PAIRS_MAX`).
    assert!(
        pairs.len() <= PAIRS_MAX,
        "{} configuration entries",
        pairs.len()
    );
    out.extend_from_slice(&(pairs.len() as u16).to_be_bytes());
    for (key, value) in pairs {
        put_str(out, key);
        put_str(out, value);
    }
}

/// Checks one partition's replica set: 1 to [`REPLICATION_FACTOR_MAX`] distinct, non-zero
/// node ids.
pub fn check_replica_set(replicas: &[u64]) -> Result<(), CommandError> {
    if replicas.is_empty() || replicas.len() > REPLICATION_FACTOR_MAX {
        return Err(CommandError::Placement(format!(
            "{} replicas, 1 to {REPLICATION_FACTOR_MAX} allowed",
            replicas.len()
        )));
    }
    for (at, id) in replicas.iter().enumerate() {
        if *id == 0 || replicas[..at].contains(id) {
            return Err(CommandError::Placement(format!(
                "replicas {replicas:?}: node ids must be distinct and non-zero"
            )));
        }
    }
    Ok(())
}

/// Places `count` partitions numbered from `first` on `factor` of `nodes` each: partition
/// `p`'s replicas are the `factor` nodes from position `start + p` on, round the sorted
/// list, so replica sets (and the first replica of each, the one a client sees as the
/// leader until an election says otherwise) spread evenly. `start` varies the placement
/// between topics (a topic's id picks it), so topics of one partition do not all land on
/// the same nodes. `factor` must be 1 to `nodes.len()`.
pub fn place(nodes: &[u64], first: u32, count: u32, factor: usize, start: usize) -> Vec<Vec<u64>> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    let n = nodes.len().max(1);
    (first..first.saturating_add(count))
        .map(|partition| {
            let at = start.wrapping_add(partition as usize);
            (0..factor.min(nodes.len()))
                .map(|j| nodes[(at.wrapping_add(j)) % n])
                .collect()
        })
        .collect()
}

fn put_placement(out: &mut Vec<u8>, replicas: &[Vec<u64>]) {
    // A command is encoded only with placement the node built or checked (`place`,
    // `check_replica_set`); one the decoder refuses would stop every node's applying.
    assert!(
        replicas.len() <= PARTITIONS_PER_TOPIC_MAX as usize
            && replicas.iter().all(|set| check_replica_set(set).is_ok()),
        "placement beyond the bounds: {replicas:?}"
    );
    out.extend_from_slice(&(replicas.len() as u32).to_be_bytes());
    for set in replicas {
        put_set(out, set);
    }
}

/// One replica set: `u8 replicas`, then the ids.
fn put_set(out: &mut Vec<u8>, set: &[u64]) {
    // As for a placement: a set the decoder refuses would stop every node's applying.
    assert!(
        check_replica_set(set).is_ok(),
        "replica set beyond the bounds: {set:?}"
    );
    out.push(set.len() as u8);
    for id in set {
        out.extend_from_slice(&id.to_be_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Names and configuration values are far below 64 KiB; a longer one is cut at the
    // bound, which decoding then reads back as it was cut (never past the buffer).
    let bytes = &text.as_bytes()[..text.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], CommandError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(CommandError::Truncated { at: self.at })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CommandError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CommandError> {
        Ok(self.array::<1>()?[0])
    }

    fn str(&mut self) -> Result<String, CommandError> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CommandError::NotUtf8)
    }

    /// A partition count, at most [`PARTITIONS_PER_TOPIC_MAX`] (what every proposer checks),
    /// so nothing sized by it is allocated unbounded.
    fn partitions(&mut self) -> Result<u32, CommandError> {
        let partitions = u32::from_be_bytes(self.array()?);
        if partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(CommandError::Placement(format!(
                "{partitions} partitions, at most {PARTITIONS_PER_TOPIC_MAX}"
            )));
        }
        Ok(partitions)
    }

    fn placement(&mut self) -> Result<Vec<Vec<u64>>, CommandError> {
        let count = u32::from_be_bytes(self.array()?);
        if count > PARTITIONS_PER_TOPIC_MAX {
            return Err(CommandError::Placement(format!(
                "{count} replica sets, at most {PARTITIONS_PER_TOPIC_MAX}"
            )));
        }
        (0..count).map(|_| self.set()).collect()
    }

    /// One replica set, checked ([`check_replica_set`]).
    fn set(&mut self) -> Result<Vec<u64>, CommandError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > REPLICATION_FACTOR_MAX {
            return Err(CommandError::Placement(format!(
                "{len} replicas, 1 to {REPLICATION_FACTOR_MAX} allowed"
            )));
        }
        let set = (0..len)
            .map(|_| Ok(u64::from_be_bytes(self.array()?)))
            .collect::<Result<Vec<u64>, CommandError>>()?;
        check_replica_set(&set)?;
        Ok(set)
    }

    fn pairs(&mut self) -> Result<Vec<(String, String)>, CommandError> {
        let count = usize::from(u16::from_be_bytes(self.array()?));
        if count > PAIRS_MAX {
            return Err(CommandError::TooManyPairs(count));
        }
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            pairs.push((self.str()?, self.str()?));
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> CreateTopic {
        let config = TopicConfig::builder()
            .retention_ms(None)
            .segment_bytes(1 << 20)
            .build()
            .unwrap();
        let replicas = place(&[1, 2, 3], 0, 6, 2, 0);
        CreateTopic::new(
            &TopicName::new("orders").unwrap(),
            [7; 16],
            &config,
            replicas,
        )
    }

    fn orders() -> TopicRef {
        TopicRef {
            name: "orders".to_owned(),
            id: [7; 16],
        }
    }

    fn every_kind() -> Vec<Change> {
        vec![
            Change::CreateTopic(create()),
            Change::DeleteTopic(orders()),
            Change::CreatePartitions {
                topic: orders(),
                partitions: 12,
                replicas: Some(place(&[1, 2, 3], 6, 6, 3, 0)),
            },
            Change::AlterConfig {
                topic: orders(),
                pairs: vec![("retention.ms".to_owned(), "60000".to_owned())],
            },
            Change::Reassign {
                topic: orders(),
                targets: vec![(0, vec![2, 3]), (5, vec![1])],
            },
            Change::Reassigned {
                topic: orders(),
                partition: 5,
                replicas: vec![1],
                epoch: 9,
            },
        ]
    }

    #[test]
    fn every_command_round_trips() {
        for change in every_kind() {
            assert_eq!(Change::decode(&change.encode()).unwrap(), change);
            assert_eq!(change.checked_name().unwrap().as_str(), "orders");
        }
        let Change::CreateTopic(decoded) =
            Change::decode(&Change::CreateTopic(create()).encode()).unwrap()
        else {
            panic!("not a create");
        };
        let config = decoded.config().unwrap();
        assert_eq!(config.retention_ms(), None);
        assert_eq!(config.segment_bytes(), 1 << 20);
    }

    #[test]
    fn an_alter_sets_its_keys_over_the_current_configuration() {
        let current = create().config().unwrap();
        let pairs = vec![("retention.ms".to_owned(), "60000".to_owned())];
        let altered = applied_over(&current, &pairs).unwrap();
        assert_eq!(altered.retention_ms(), Some(60_000));
        assert_eq!(altered.segment_bytes(), 1 << 20, "a key not named is kept");
        let bad = vec![("retention.ms".to_owned(), "soon".to_owned())];
        assert!(matches!(
            applied_over(&current, &bad),
            Err(CommandError::Config(_))
        ));
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        for change in every_kind() {
            let bytes = change.encode();
            for len in 0..bytes.len() {
                assert!(
                    Change::decode(&bytes[..len]).is_err(),
                    "{change:?} cut at {len} of {} bytes decoded",
                    bytes.len()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Change::decode(&longer), Err(CommandError::Trailing(1)));
            let mut wrong = bytes;
            wrong[1] = 9;
            assert_eq!(Change::decode(&wrong), Err(CommandError::Kind(9)));
        }
    }

    #[test]
    fn a_version_1_command_places_nothing() {
        // As a node before replica sets wrote them: version 1, no placement.
        let mut unplaced = create();
        unplaced.replicas = None;
        let add = Change::CreatePartitions {
            topic: orders(),
            partitions: 12,
            replicas: None,
        };
        for change in [Change::CreateTopic(unplaced), add] {
            let bytes = change.encode();
            assert_eq!(bytes[0], 1);
            assert_eq!(Change::decode(&bytes).unwrap(), change);
        }
        assert_eq!(Change::decode(&[3, 1]), Err(CommandError::Version(3)));
        // A count past the bound is refused before anything is sized by it.
        let mut huge = create();
        huge.replicas = None;
        huge.partitions = u32::MAX;
        assert!(matches!(
            Change::decode(&Change::CreateTopic(huge).encode()),
            Err(CommandError::Placement(_))
        ));
    }

    #[test]
    fn a_placement_out_of_bounds_is_refused() {
        let create = create();
        let bytes = Change::CreateTopic(create.clone()).encode();
        // The placement follows the pairs: its count, then `u8 len` and ids per partition.
        let at = bytes.len() - (4 + 6 * (1 + 2 * 8));
        let mut short = bytes.clone();
        short[at..at + 4].copy_from_slice(&5_u32.to_be_bytes());
        assert!(matches!(
            Change::decode(&short),
            Err(CommandError::Placement(_) | CommandError::Trailing(_))
        ));
        let mut huge = bytes.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Change::decode(&huge),
            Err(CommandError::Placement(_))
        ));
        let mut empty_set = bytes.clone();
        empty_set[at + 4] = 0;
        assert!(matches!(
            Change::decode(&empty_set),
            Err(CommandError::Placement(_))
        ));
        let mut twice = bytes;
        // The first set's second id made equal to its first.
        let (first, second) = (at + 5, at + 5 + 8);
        let id: [u8; 8] = twice[first..first + 8].try_into().unwrap();
        twice[second..second + 8].copy_from_slice(&id);
        assert!(matches!(
            Change::decode(&twice),
            Err(CommandError::Placement(_))
        ));
        assert!(check_replica_set(&[1, 0]).is_err());
        assert!(check_replica_set(&[]).is_err());
        assert!(check_replica_set(&(1..=16).collect::<Vec<u64>>()).is_err());
        assert!(check_replica_set(&[3, 1]).is_ok());
    }

    #[test]
    fn placement_spreads_replicas_and_first_replicas_evenly() {
        let nodes = [3, 1, 2, 5, 4];
        let placed = place(&nodes, 0, 10, 3, 2);
        let mut firsts = [0_usize; 6];
        let mut replicas = [0_usize; 6];
        for set in &placed {
            assert!(check_replica_set(set).is_ok(), "{set:?}");
            assert_eq!(set.len(), 3);
            firsts[set[0] as usize] += 1;
            for &id in set {
                replicas[id as usize] += 1;
            }
        }
        assert_eq!(&firsts[1..], &[2, 2, 2, 2, 2], "{placed:?}");
        assert_eq!(&replicas[1..], &[6, 6, 6, 6, 6], "{placed:?}");
        assert_eq!(
            placed[0],
            [3, 4, 5],
            "from position start + partition, sorted"
        );
        // Partitions added later continue the rotation.
        assert_eq!(
            place(&nodes, 10, 1, 3, 2),
            [place(&nodes, 0, 1, 3, 2)[0].clone()]
        );
        assert_eq!(
            place(&[1, 2, 3], 0, 2, 3, 0),
            [vec![1, 2, 3], vec![2, 3, 1]]
        );
    }

    #[test]
    fn a_reassignment_out_of_bounds_is_refused() {
        let reassign = Change::Reassign {
            topic: orders(),
            targets: vec![(0, vec![2, 3])],
        };
        let bytes = reassign.encode();
        // After version, kind, id and name: the count, then partition, `u8 len` and ids.
        let at = 2 + 16 + 2 + "orders".len();
        let mut huge = bytes.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Change::decode(&huge),
            Err(CommandError::Placement(_))
        ));
        let mut twice = bytes.clone();
        let first = at + 4 + 4 + 1;
        let id: [u8; 8] = twice[first..first + 8].try_into().unwrap();
        twice[first + 8..first + 16].copy_from_slice(&id);
        assert!(matches!(
            Change::decode(&twice),
            Err(CommandError::Placement(_))
        ));
        // Version 1 has no reassignments.
        let mut old = bytes;
        old[0] = 1;
        assert_eq!(Change::decode(&old), Err(CommandError::Kind(5)));
    }

    #[test]
    fn too_many_pairs_are_refused_before_allocating() {
        let mut bytes = Change::CreateTopic(create()).encode();
        // The pair count sits after version, kind, id, partitions and the name.
        let at = 2 + 16 + 4 + 2 + "orders".len();
        bytes[at..at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            Change::decode(&bytes),
            Err(CommandError::TooManyPairs(usize::from(u16::MAX)))
        );
    }
}
