//! The registry of a node's topics, and the data directory it lives in.
//!
//! Invariants:
//! - One registry at a time on a data directory: it holds the directory's [`DataDirLock`]
//!   from before it reads or writes anything there until it is dropped.
//! - The registry only writes into a directory that is empty (then it marks it with
//!   `ringlog.meta`) or already marked; it never writes into someone else's directory.
//! - `topics.json` is replaced atomically and durably (see `atomic_file`) before the
//!   in-memory state changes, so what a caller was told succeeded survives a crash, and a
//!   crash mid-write leaves the previous content. A temporary file left by a crash is
//!   removed on open and never read.
//! - Topic names are distinct and never collide ('.' and '_' alike); ids are distinct;
//!   partition counts lie in 1..=`PARTITIONS_PER_TOPIC_MAX` and only grow.
//! - If a write fails after the rename, what is on disk is unknown: the registry is then
//!   poisoned and refuses changes until it is reopened, rather than guessing.
//!
//! This is control-path code: synchronous `std::fs`, called rarely and off the shards'
//! hot paths. Partition directories are named `{data_dir}/{topic}-{partition}` as in
//! Kafka; creating them and the segments inside is the partition log's job, on the shard
//! that owns the partition. Deleting a topic removes its directories, so the caller must
//! have closed the topic's partitions on their shards first.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::atomic_file::{self, tmp_path};
use super::lock::{DataDirLock, LOCK_FILE_NAME};
use super::metadata::{self, MARKER_FILE_NAME, TOPICS_FILE_NAME};
use super::{TopicConfig, TopicError, TopicMeta, TopicName};
use crate::limits::{PARTITIONS_PER_TOPIC_MAX, TOPIC_METADATA_FILE_BYTES_MAX};

/// Entries a fresh file system puts in a new mount point; a data directory that is a
/// mount point holds them before ringlog ever ran.
const IGNORED_WHEN_EMPTY: [&str; 1] = ["lost+found"];

/// A node's topics, persisted in `{data_dir}/topics.json`.
///
/// ```
/// use ringlog_engine::topic::{TopicConfig, TopicName, TopicRegistry};
/// let dir = tempfile::tempdir().unwrap();
/// let mut registry = TopicRegistry::open(dir.path().join("data")).unwrap();
/// let orders = TopicName::new("orders").unwrap();
/// registry.create(&orders, 3, TopicConfig::default()).unwrap();
/// assert_eq!(registry.get(&orders).unwrap().partitions, 3);
/// assert!(registry.partition_dir(&orders, 2).ends_with("orders-2"));
/// ```
#[derive(Debug)]
pub struct TopicRegistry {
    data_dir: PathBuf,
    topics: BTreeMap<TopicName, TopicMeta>,
    poisoned: bool,
    _lock: DataDirLock,
}

impl TopicRegistry {
    /// Opens the registry of `data_dir`, creating and marking the directory if it is
    /// missing or empty, taking its lock, and loading `topics.json` (no file: no topics).
    /// Refuses a directory another registry holds ([`TopicError::DataDirLocked`]).
    pub fn open(data_dir: impl Into<PathBuf>) -> Result<TopicRegistry, TopicError> {
        let data_dir = data_dir.into();
        let lock = prepare_data_dir(&data_dir)?;
        let topics_path = data_dir.join(TOPICS_FILE_NAME);
        atomic_file::remove_if_exists(&tmp_path(&topics_path))?;
        remove_emptied(&data_dir)?;
        let topics = match atomic_file::read_bounded(&topics_path, TOPIC_METADATA_FILE_BYTES_MAX)? {
            Some(bytes) => metadata::decode_topics(&topics_path, &bytes)?,
            None => BTreeMap::new(),
        };
        Ok(TopicRegistry {
            data_dir,
            topics,
            poisoned: false,
            _lock: lock,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of one partition: `{data_dir}/{topic}-{partition}`.
    pub fn partition_dir(&self, topic: &TopicName, partition: u32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{partition}"))
    }

    /// The topic named `name`, if there is one.
    pub fn get(&self, name: &TopicName) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> impl ExactSizeIterator<Item = &TopicMeta> + '_ {
        self.topics.values()
    }

    /// Creates a topic with a new random id. Refuses a name that exists or collides, a
    /// partition count out of bounds, and leftover directories of the new partitions.
    pub fn create(
        &mut self,
        name: &TopicName,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<&TopicMeta, TopicError> {
        self.create_with_id(name, None, partitions, config)
    }

    /// [`TopicRegistry::create`] with the topic id given (a cluster's nodes create a topic
    /// under the id its controller chose, so clients see one id from every broker); `None`
    /// draws a new random one. A nil id, or one another topic has, is refused.
    pub fn create_with_id(
        &mut self,
        name: &TopicName,
        id: Option<[u8; 16]>,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<&TopicMeta, TopicError> {
        self.check_not_poisoned()?;
        if let Some(id) = id {
            if id == [0; 16] || self.topics.values().any(|meta| meta.id == id) {
                return Err(TopicError::IdTaken {
                    name: name.to_string(),
                    id: Uuid::from_bytes(id).hyphenated().to_string(),
                });
            }
        }
        check_partition_count(name, partitions)?;
        if self.topics.contains_key(name) {
            return Err(TopicError::AlreadyExists {
                name: name.to_string(),
            });
        }
        let key = name.collision_key();
        if let Some(existing) = self
            .topics
            .keys()
            .find(|other| other.collision_key() == key)
        {
            return Err(TopicError::Collides {
                name: name.to_string(),
                existing: existing.to_string(),
            });
        }
        self.check_no_leftover_dirs(name, 0..partitions)?;
        let meta = TopicMeta {
            name: name.clone(),
            id: id.unwrap_or_else(|| self.new_topic_id()),
            partitions,
            config,
        };
        let mut next = self.topics.clone();
        next.insert(name.clone(), meta);
        self.commit(next)?;
        Ok(&self.topics[name])
    }

    /// Deletes a topic and then its partition directories, and returns what it was.
    ///
    /// The caller must have closed the topic's partitions first. If removing a directory
    /// fails, the topic is deleted all the same and the error names the directory; a later
    /// create of the same name refuses until it is gone.
    pub fn delete(&mut self, name: &TopicName) -> Result<TopicMeta, TopicError> {
        self.check_not_poisoned()?;
        let mut next = self.topics.clone();
        let meta = next.remove(name).ok_or_else(|| not_found(name))?;
        self.commit(next)?;
        for partition in 0..meta.partitions {
            let dir = self.partition_dir(name, partition);
            match fs::remove_dir_all(&dir) {
                Err(source) if source.kind() != io::ErrorKind::NotFound => {
                    return Err(TopicError::Io {
                        op: "topic deleted, but could not remove its partition directory",
                        path: dir,
                        source,
                    });
                }
                _ => {}
            }
        }
        atomic_file::sync_dir(&self.data_dir)?;
        Ok(meta)
    }

    /// Raises a topic's partition count to `partitions` (CreatePartitions gives the new
    /// total, which must be larger than the current one).
    pub fn add_partitions(
        &mut self,
        name: &TopicName,
        partitions: u32,
    ) -> Result<&TopicMeta, TopicError> {
        self.check_not_poisoned()?;
        let current = self.get(name).ok_or_else(|| not_found(name))?.partitions;
        check_partition_count(name, partitions)?;
        if partitions <= current {
            return Err(TopicError::PartitionsNotIncreased {
                name: name.to_string(),
                current,
                requested: partitions,
            });
        }
        self.check_no_leftover_dirs(name, current..partitions)?;
        self.update(name, |meta| meta.partitions = partitions)
    }

    /// Replaces a topic's configuration.
    pub fn alter_config(
        &mut self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<&TopicMeta, TopicError> {
        self.check_not_poisoned()?;
        self.update(name, |meta| meta.config = config)
    }

    fn update(
        &mut self,
        name: &TopicName,
        change: impl FnOnce(&mut TopicMeta),
    ) -> Result<&TopicMeta, TopicError> {
        let mut next = self.topics.clone();
        change(next.get_mut(name).ok_or_else(|| not_found(name))?);
        self.commit(next)?;
        Ok(&self.topics[name])
    }

    /// Makes `next` durable, then current. A failure before the rename leaves the old file
    /// and the old state; one after it poisons the registry.
    fn commit(&mut self, next: BTreeMap<TopicName, TopicMeta>) -> Result<(), TopicError> {
        let bytes = metadata::encode_topics(next.values());
        let path = self.data_dir.join(TOPICS_FILE_NAME);
        if let Err(failure) = atomic_file::replace(&path, &bytes) {
            self.poisoned = failure.renamed;
            return Err(failure.error);
        }
        self.topics = next;
        Ok(())
    }

    fn check_not_poisoned(&self) -> Result<(), TopicError> {
        if self.poisoned {
            return Err(TopicError::Poisoned {
                path: self.data_dir.join(TOPICS_FILE_NAME),
            });
        }
        Ok(())
    }

    fn check_no_leftover_dirs(
        &self,
        name: &TopicName,
        partitions: std::ops::Range<u32>,
    ) -> Result<(), TopicError> {
        for partition in partitions {
            let path = self.partition_dir(name, partition);
            match fs::symlink_metadata(&path) {
                Ok(_) => return Err(TopicError::LeftoverPartitionDir { path }),
                Err(source) if source.kind() != io::ErrorKind::NotFound => {
                    return Err(TopicError::Io {
                        op: "checking for a leftover partition directory",
                        path,
                        source,
                    });
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// A random id that is not nil and not any existing topic's.
    fn new_topic_id(&self) -> [u8; 16] {
        loop {
            let id = Uuid::new_v4().into_bytes();
            if id != [0; 16] && self.topics.values().all(|meta| meta.id != id) {
                return id;
            }
        }
    }
}

fn not_found(name: &TopicName) -> TopicError {
    TopicError::NotFound {
        name: name.to_string(),
    }
}

fn check_partition_count(name: &TopicName, count: u32) -> Result<(), TopicError> {
    if (1..=PARTITIONS_PER_TOPIC_MAX).contains(&count) {
        Ok(())
    } else {
        Err(TopicError::PartitionCount {
            name: name.to_string(),
            count,
        })
    }
}

/// Creates `data_dir` if missing and locks it; marks it if empty; refuses it if it holds
/// files but no marker; checks the marker's version otherwise.
///
/// The ownership check runs before the lock file is created (a directory that is someone
/// else's gets nothing written into it) and again under the lock (another ringlog may
/// have marked the directory in between).
fn prepare_data_dir(data_dir: &Path) -> Result<DataDirLock, TopicError> {
    create_data_dir(data_dir)?;
    check_ours_or_empty(data_dir)?;
    let lock = DataDirLock::acquire(data_dir)?;
    let marker = data_dir.join(MARKER_FILE_NAME);
    if check_ours_or_empty(data_dir)? == Ownership::Ours {
        return Ok(lock);
    }
    // The marker makes the directory ours; the parent's fsync makes a new directory's own
    // entry durable, so a crash cannot lose the directory under a marked state.
    atomic_file::replace(&marker, &metadata::encode_marker()).map_err(|failure| failure.error)?;
    let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty());
    atomic_file::sync_dir(parent.unwrap_or(Path::new(".")))?;
    Ok(lock)
}

/// Removes the partition directories a crash left set aside by
/// [`crate::shard::Engine::empty_partition`]: their partitions were opened again, empty.
fn remove_emptied(data_dir: &Path) -> Result<(), TopicError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| TopicError::Io { op, path, source }
    };
    let entries = match fs::read_dir(data_dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(io("list the data directory", data_dir))?,
    };
    for entry in entries {
        let path = entry
            .map_err(io("list the data directory", data_dir))?
            .path();
        let emptied = (path.file_name().and_then(|name| name.to_str()))
            .is_some_and(|name| name.ends_with(crate::shard::EMPTIED_SUFFIX));
        if emptied {
            fs::remove_dir_all(&path).map_err(io("remove an emptied partition's files", &path))?;
        }
    }
    Ok(())
}

/// Creates `data_dir` and its parents if missing; refuses a path that is not a directory
/// (`create_dir_all` would only say "File exists").
fn create_data_dir(data_dir: &Path) -> Result<(), TopicError> {
    match fs::create_dir_all(data_dir) {
        Ok(()) => Ok(()),
        Err(source) => match fs::metadata(data_dir) {
            Ok(meta) if !meta.is_dir() => Err(TopicError::NotADirectory {
                path: data_dir.to_owned(),
            }),
            _ if source.raw_os_error() == Some(libc::ENOTDIR) => Err(TopicError::NotADirectory {
                path: data_dir.to_owned(),
            }),
            _ => Err(TopicError::Io {
                op: "creating data directory",
                path: data_dir.to_owned(),
                source,
            }),
        },
    }
}

/// Whether a data directory is ringlog's already or still empty.
#[derive(Debug, PartialEq, Eq)]
enum Ownership {
    /// It holds a marker of a version this build reads.
    Ours,
    /// It holds nothing but what a fresh file system or an earlier start left (a mount
    /// point's `lost+found`, the lock file, a marker's temporary file).
    Empty,
}

/// Reads `data_dir`'s marker, or checks that it is empty; refuses anything else.
fn check_ours_or_empty(data_dir: &Path) -> Result<Ownership, TopicError> {
    let io_error = |op: &'static str| {
        move |source| TopicError::Io {
            op,
            path: data_dir.to_owned(),
            source,
        }
    };
    let marker = data_dir.join(MARKER_FILE_NAME);
    if let Some(bytes) = atomic_file::read_bounded(&marker, TOPIC_METADATA_FILE_BYTES_MAX)? {
        metadata::check_marker(&marker, &bytes)?;
        return Ok(Ownership::Ours);
    }
    let entries = fs::read_dir(data_dir).map_err(io_error("listing data directory"))?;
    let marker_tmp = tmp_path(&marker);
    for entry in entries {
        let entry = entry.map_err(io_error("listing data directory"))?;
        let file_name = entry.file_name();
        let ours = entry.path() == marker_tmp || file_name == LOCK_FILE_NAME;
        if !ours
            && !IGNORED_WHEN_EMPTY
                .iter()
                .any(|ignored| file_name == *ignored)
        {
            return Err(TopicError::NotADataDirectory {
                path: data_dir.to_owned(),
            });
        }
    }
    Ok(Ownership::Empty)
}

#[cfg(test)]
mod tests;
