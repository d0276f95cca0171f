//! The engine as a user sees it: topics whose partitions live on shards, behind one
//! handle that hides which shard owns what.
//!
//! [`Engine::open`] starts one shard per core, loads the topic registry and opens (and
//! recovers) every partition on its owning shard, all shards in parallel. Every call names
//! a topic and partition; the engine sends the work to the owner through its mailbox
//! (`shard = hash(topic, partition) % shards`, see [`crate::topic::shard_for`]) and returns
//! the answer. The handle is `Send + Sync` and cheap to clone, so any thread or shard may
//! use it. The registry (control path) is behind a mutex; logs never leave their shard.
//! Every log of the node charges its preallocation to one [`PreallocBudget`] over the data
//! directory's free space (see `log/prealloc.rs`).
//!
//! ```
//! use bytes::Bytes;
//! use ringlog_engine::batch::BatchBuilder;
//! use ringlog_engine::log::Ack;
//! use ringlog_engine::rt::RuntimeConfig;
//! use ringlog_engine::shard::{Engine, EngineConfig};
//! use ringlog_engine::topic::TopicConfig;
//!
//! let dir = tempfile::tempdir()?;
//! let config = EngineConfig {
//!     data_dir: dir.path().to_path_buf(),
//!     runtime: RuntimeConfig { shards: 2, pin_threads: false },
//!     batch_cache_bytes: 64 << 20,
//!     retention_check_interval: None,
//! };
//! let engine = Engine::open(&config)?;
//! futures::executor::block_on(async {
//!     engine.create_topic("greetings", 3, TopicConfig::default()).await?;
//!     let mut builder = BatchBuilder::new();
//!     builder.push(0, Some(b"k".as_slice()), Some(b"hello".as_slice()), &[])?;
//!     let batch = Bytes::from(builder.build());
//!     let appended = engine.append("greetings", 1, batch, Ack::Durable).await?;
//!     assert_eq!(appended.offset_first, 0);
//!     let read = engine.read("greetings", 1, 0, 1 << 20).await?;
//!     assert_eq!(read.high_watermark, 1);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! engine.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::future::join_all;

use crate::log::{
    Ack, Appended, FoundOffset, LogError, Offsets, PartitionId, PartitionLog, PreallocBudget,
    ReadRange,
};
use crate::rt::{self, Runtime, RuntimeConfig, ShardHandle};
use crate::storage::DiskStorage;
use crate::topic::{
    shard_for, ProducerIdAllocator, TopicConfig, TopicError, TopicMeta, TopicName, TopicNameError,
    TopicRegistry,
};

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (created if missing; refused if it holds something else).
    pub data_dir: PathBuf,
    /// Shards and pinning.
    pub runtime: RuntimeConfig,
    /// Memory for the batch caches of direct-I/O logs, split evenly across the shards; 0
    /// turns them off (see `log/cache.rs`).
    pub batch_cache_bytes: u64,
    /// How often each log applies its retention (Kafka's `log.retention.check.interval.ms`);
    /// `None`: every `RETENTION_CHECK_INTERVAL_MS` (5 minutes).
    pub retention_check_interval: Option<std::time::Duration>,
}

/// Errors of the engine's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    TopicName(#[from] TopicNameError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The topic or partition does not exist.
    #[error("unknown topic or partition {topic}-{partition}")]
    UnknownTopicOrPartition { topic: String, partition: u32 },
    /// The shards could not start (io_uring unavailable, for one).
    #[error(transparent)]
    Runtime(#[from] rt::Error),
    /// The owning shard has stopped (the engine is shutting down).
    #[error("the shard owning {topic}-{partition} has stopped")]
    ShardStopped { topic: String, partition: u32 },
}

/// What a read returned: the record batches (copied; the broker sends file ranges
/// zero-copy instead) and the partition's offsets.
#[derive(Debug, Clone)]
pub struct ReadData {
    pub bytes: Vec<u8>,
    pub high_watermark: i64,
    pub log_start: i64,
    pub log_end: i64,
}

/// A byte range of a segment file that any thread can send: it owns a descriptor of the
/// file, which stays readable (even if retention deletes it) until the range is dropped.
#[derive(Debug)]
pub struct SendableRange {
    pub file: std::os::fd::OwnedFd,
    pub position: u64,
    pub len: u64,
}

/// One piece of a partition's record bytes to send.
#[derive(Debug)]
pub enum SendablePiece {
    /// A range of a segment file, sent from the file without entering user space.
    File(SendableRange),
    /// Whole batches the batch cache holds, sent from that memory as they are.
    Memory(bytes::Bytes),
}

impl SendablePiece {
    /// Bytes in the piece.
    pub fn len(&self) -> u64 {
        match self {
            SendablePiece::File(range) => range.len,
            SendablePiece::Memory(bytes) => bytes.len() as u64,
        }
    }

    /// Whether the piece has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a read returned: the pieces of record bytes to send, in order, and the partition's
/// offsets.
#[derive(Debug)]
pub struct ReadRanges {
    pub pieces: Vec<SendablePiece>,
    pub high_watermark: i64,
    pub log_start: i64,
    pub log_end: i64,
}

type Logs = HashMap<(Rc<str>, u32), PartitionLog<DiskStorage>>;

thread_local! {
    /// The partitions this shard owns.
    static LOGS: RefCell<Logs> = RefCell::new(HashMap::new());
}

/// The log of a partition this shard owns (called on the owning shard; `None` elsewhere
/// or if the partition does not exist). The cluster layer wraps it in a replica.
pub fn local_log(topic: &str, partition: u32) -> Option<PartitionLog<DiskStorage>> {
    shard_log(topic, partition)
}

fn shard_log(topic: &str, partition: u32) -> Option<PartitionLog<DiskStorage>> {
    LOGS.with(|logs| logs.borrow().get(&(Rc::from(topic), partition)).cloned())
}

struct Inner {
    runtime: Mutex<Option<Runtime>>,
    shards: Vec<ShardHandle>,
    registry: Mutex<TopicRegistry>,
    producer_ids: Mutex<ProducerIdAllocator>,
    /// Why the data directory's file system refused O_DIRECT, if it did.
    direct_io_refused: Option<String>,
    /// The preallocation budget every log of the node charges.
    budget: PreallocBudget,
}

/// The storage engine: topics, partitions and their shards. See the module doc.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Opens the data directory, starts the shards and opens (recovering) every partition.
    /// Blocks the calling thread until all partitions are open.
    pub fn open(config: &EngineConfig) -> Result<Engine, EngineError> {
        // The shards first: if io_uring is unavailable, nothing is written to the disk.
        let runtime = Runtime::start(&config.runtime, |_shard| async {})?;
        let registry = TopicRegistry::open(config.data_dir.clone())?;
        // After the registry, which holds the data directory's lock.
        let producer_ids = ProducerIdAllocator::open(registry.data_dir())?;
        let direct_io_refused = match crate::storage::probe_direct_io(registry.data_dir()) {
            Ok(()) => None,
            Err(error) if crate::storage::refuses_direct_io(&error) => Some(error.to_string()),
            Err(error) => {
                tracing::warn!(
                    data_dir = %registry.data_dir().display(),
                    %error,
                    "could not write the O_DIRECT probe file; assuming the file system \
                     takes O_DIRECT, as disk file systems do"
                );
                None
            }
        };
        let budget = PreallocBudget::for_dir(registry.data_dir());
        let shards = runtime.shards().to_vec();
        let per_shard = config.batch_cache_bytes / shards.len().max(1) as u64;
        let retention_check_interval = config.retention_check_interval;
        let inits = shards.iter().map(|shard| {
            shard.spawn(move || async move {
                crate::log::cache::init_for_this_thread(per_shard);
                crate::log::set_retention_check_interval_for_this_thread(retention_check_interval);
            })
        });
        for (shard, init) in futures::executor::block_on(join_all(inits))
            .into_iter()
            .enumerate()
        {
            // A shard that stopped this early panicked (its message is on stderr).
            init.map_err(|_| EngineError::Runtime(rt::Error::ShardPanicked { shard }))?;
        }
        let topics: Vec<TopicMeta> = registry.list().cloned().collect();
        let engine = Engine {
            inner: Arc::new(Inner {
                runtime: Mutex::new(Some(runtime)),
                shards,
                registry: Mutex::new(registry),
                producer_ids: Mutex::new(producer_ids),
                direct_io_refused,
                budget,
            }),
        };
        futures::executor::block_on(async {
            for meta in &topics {
                engine.open_partitions(meta, 0).await?;
            }
            Ok::<(), EngineError>(())
        })?;
        Ok(engine)
    }

    /// Why the data directory's file system refused O_DIRECT (ramfs does, and tmpfs before
    /// Linux 6.6), or `None` if direct I/O works there.
    pub fn direct_io_refused(&self) -> Option<&str> {
        self.inner.direct_io_refused.as_deref()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The preallocation budget every partition of the node charges (for metrics).
    pub fn prealloc_budget(&self) -> &PreallocBudget {
        &self.inner.budget
    }

    /// Handles to the shards, to run other work (a listener, say) beside the partitions.
    pub fn shard_handles(&self) -> &[ShardHandle] {
        &self.inner.shards
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, TopicRegistry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens partitions `first..meta.partitions` of a topic on their shards, each shard's in
    /// parallel with the others'.
    async fn open_partitions(&self, meta: &TopicMeta, first: u32) -> Result<(), EngineError> {
        let shards = self.shard_count();
        let mut by_shard: Vec<Vec<u32>> = vec![Vec::new(); shards];
        for partition in first..meta.partitions {
            by_shard[shard_for(&meta.name, partition, shards)].push(partition);
        }
        let dirs_by_shard: Vec<(usize, Vec<(u32, PathBuf)>)> = {
            let registry = self.registry();
            by_shard
                .into_iter()
                .enumerate()
                .filter(|(_, partitions)| !partitions.is_empty())
                .map(|(shard, partitions)| {
                    let dirs = partitions
                        .iter()
                        .map(|&p| (p, registry.partition_dir(&meta.name, p)))
                        .collect();
                    (shard, dirs)
                })
                .collect()
        };
        let work: Vec<_> = dirs_by_shard
            .into_iter()
            .map(|(shard, dirs)| {
                let topic = meta.name.as_str().to_owned();
                let config = meta.config.clone();
                let budget = self.inner.budget.clone();
                self.inner.shards[shard].spawn(move || open_on_shard(topic, dirs, config, budget))
            })
            .collect();
        for result in join_all(work).await {
            let Ok(opened) = result else {
                let topic = meta.name.as_str().to_owned();
                return Err(EngineError::ShardStopped {
                    topic,
                    partition: first,
                });
            };
            opened?;
        }
        Ok(())
    }

    /// Creates a topic with `partitions` partitions and opens them.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicMeta, EngineError> {
        let name = TopicName::new(name)?;
        let meta = self.registry().create(&name, partitions, config)?.clone();
        self.open_partitions(&meta, 0).await?;
        Ok(meta)
    }

    /// [`Engine::create_topic`] under a given topic id (a cluster's nodes use the id the
    /// controller chose).
    pub async fn create_topic_with_id(
        &self,
        name: &str,
        id: [u8; 16],
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicMeta, EngineError> {
        let name = TopicName::new(name)?;
        let meta = (self.registry())
            .create_with_id(&name, Some(id), partitions, config)?
            .clone();
        self.open_partitions(&meta, 0).await?;
        Ok(meta)
    }

    /// Raises a topic's partition count to `partitions` and opens the new ones.
    pub async fn add_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<TopicMeta, EngineError> {
        let name = TopicName::new(name)?;
        let (meta, first) = {
            let mut registry = self.registry();
            let first = registry.get(&name).map_or(0, |meta| meta.partitions);
            (registry.add_partitions(&name, partitions)?.clone(), first)
        };
        self.open_partitions(&meta, first).await?;
        Ok(meta)
    }

    /// Deletes everything a partition's directory holds and opens the partition again,
    /// empty, at offset 0: for a replicated partition whose replica left this node (a
    /// reassignment moved it elsewhere), so that no stale data stays, and a replica that
    /// joins again later starts from nothing, as a new one does. The directory is renamed
    /// aside ([`EMPTIED_SUFFIX`]) before anything in it is deleted, so a crash leaves the
    /// whole old directory or a new empty one, never a part of the old; a directory left
    /// aside is removed when the registry next opens.
    pub async fn empty_partition(&self, name: &str, partition: u32) -> Result<(), EngineError> {
        let unknown = || EngineError::UnknownTopicOrPartition {
            topic: name.to_owned(),
            partition,
        };
        let (dir, data_dir, config) = {
            let registry = self.registry();
            let topic = TopicName::new(name)?;
            let meta = registry.get(&topic).ok_or_else(unknown)?;
            if partition >= meta.partitions {
                return Err(unknown());
            }
            let dir = registry.partition_dir(&topic, partition);
            (dir, registry.data_dir().to_path_buf(), meta.config.clone())
        };
        let budget = self.inner.budget.clone();
        self.on_owner(name, partition, move |topic, partition| async move {
            let key = (Rc::from(topic.as_str()), partition);
            if let Some(log) = LOGS.with(|logs| logs.borrow_mut().remove(&key)) {
                log.close().await?;
            }
            let aside = PathBuf::from(format!("{}{EMPTIED_SUFFIX}", dir.display()));
            let io = |op| {
                let path = dir.clone();
                move |source| TopicError::Io { op, path, source }
            };
            remove_dir_if_exists(&aside).map_err(io("remove a partition emptied before"))?;
            rt::rename(&dir, &aside)
                .await
                .map_err(io("set a partition's files aside"))?;
            rt::sync_dir(&data_dir)
                .await
                .map_err(io("fsync the data directory"))?;
            let id = PartitionId {
                topic: Arc::from(topic.as_str()),
                partition,
            };
            let log = PartitionLog::open_with_budget(DiskStorage, &dir, id, config, budget).await?;
            rt::sync_dir(&data_dir)
                .await
                .map_err(io("fsync the data directory"))?;
            LOGS.with(|logs| logs.borrow_mut().insert(key, log));
            remove_dir_if_exists(&aside).map_err(io("remove an emptied partition's files"))?;
            Ok(())
        })
        .await
    }

    /// Closes a topic's partitions and deletes the topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<TopicMeta, EngineError> {
        let name = TopicName::new(name)?;
        let partitions = self.registry().get(&name).map(|meta| meta.partitions);
        let Some(partitions) = partitions else {
            return Err(TopicError::NotFound {
                name: name.as_str().to_owned(),
            }
            .into());
        };
        let closes: Vec<_> = (0..partitions)
            .map(|partition| {
                self.on_owner(
                    name.as_str(),
                    partition,
                    move |topic, partition| async move {
                        let log = LOGS.with(|logs| {
                            logs.borrow_mut()
                                .remove(&(Rc::from(topic.as_str()), partition))
                        });
                        match log {
                            Some(log) => log.close().await.map_err(EngineError::from),
                            None => Ok(()),
                        }
                    },
                )
            })
            .collect();
        for closed in join_all(closes).await {
            if let Err(error) = closed {
                tracing::warn!(topic = %name, %error, "closing a partition of a deleted topic failed");
            }
        }
        Ok(self.registry().delete(&name)?)
    }

    /// Replaces a topic's configuration; partitions apply it from their next group commit.
    pub async fn alter_config(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicMeta, EngineError> {
        let updated = self.update_config(name, |_| Ok::<_, std::convert::Infallible>(config));
        match updated.await? {
            Ok(meta) => Ok(meta),
            Err(never) => match never {},
        }
    }

    /// Replaces a topic's configuration with `update(current)`, read and written under one
    /// lock of the registry, so concurrent edits of the same topic cannot lose one another.
    /// `update`'s refusal comes back as the inner `Err`, with nothing changed.
    pub async fn update_config<E>(
        &self,
        name: &str,
        update: impl FnOnce(&TopicConfig) -> Result<TopicConfig, E>,
    ) -> Result<Result<TopicMeta, E>, EngineError> {
        let name = TopicName::new(name)?;
        let meta = {
            let mut registry = self.registry();
            let Some(current) = registry.get(&name).map(|meta| meta.config.clone()) else {
                return Err(TopicError::NotFound {
                    name: name.as_str().to_owned(),
                }
                .into());
            };
            match update(&current) {
                Ok(next) => registry.alter_config(&name, next)?.clone(),
                Err(refusal) => return Ok(Err(refusal)),
            }
        };
        for partition in 0..meta.partitions {
            let config = meta.config.clone();
            self.on_log(name.as_str(), partition, move |log| async move {
                log.set_config(config);
                Ok(())
            })
            .await?;
        }
        Ok(Ok(meta))
    }

    /// A producer id never handed out before in this data directory, for an idempotent
    /// producer (InitProducerId). Blocks on an fsync once per `PRODUCER_ID_BLOCK_SIZE` ids.
    pub fn allocate_producer_id(&self) -> Result<i64, EngineError> {
        let mut allocator = self
            .inner
            .producer_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(allocator.allocate()?)
    }

    /// Every topic.
    pub fn topics(&self) -> Vec<TopicMeta> {
        self.registry().list().cloned().collect()
    }

    /// One topic, if it exists.
    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        let name = TopicName::new(name).ok()?;
        self.registry().get(&name).cloned()
    }

    /// Appends `batches` to a partition (see [`PartitionLog::append`]).
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        batches: Bytes,
        ack: Ack,
    ) -> Result<Appended, EngineError> {
        self.on_log(topic, partition, move |log| async move {
            Ok(log.append(batches, ack).await?)
        })
        .await
    }

    /// Reads from `offset` (see [`PartitionLog::read`]), copying the bytes.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u64,
    ) -> Result<ReadData, EngineError> {
        self.on_log(topic, partition, move |log| async move {
            let offsets = log.offsets();
            let bytes = log.read_bytes(offset, max_bytes).await?;
            Ok(ReadData {
                bytes,
                high_watermark: offsets.high_watermark,
                log_start: offsets.log_start,
                log_end: offsets.log_end,
            })
        })
        .await
    }

    /// Waits until the partition's high watermark passes `offset`, or `timeout` elapses
    /// (long-polling fetches). Waits on the log's change notification, never by polling.
    pub async fn wait_beyond(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        timeout: std::time::Duration,
    ) -> Result<(), EngineError> {
        self.on_log(topic, partition, move |log| async move {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let version = log.version();
                if log.offsets().high_watermark > offset {
                    return Ok(());
                }
                let remaining = deadline.saturating_duration_since(std::time::Instant::now());
                if rt::timeout(remaining, log.changed_since(version))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        })
        .await
    }

    /// Reads from `offset` (see [`PartitionLog::read`]) as pieces to send: cached batches, or
    /// file ranges to send to a socket without copying, for which the owning shard hands
    /// over a descriptor of the segment file (a `dup`, so the range outlives the shard's
    /// handle).
    pub async fn read_ranges(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u64,
    ) -> Result<ReadRanges, EngineError> {
        self.on_log(topic, partition, move |log| async move {
            let slice = log.read(offset, max_bytes).await?;
            let mut pieces = Vec::with_capacity(slice.ranges.len());
            for range in slice.ranges {
                let range = match range {
                    ReadRange::File(range) => range,
                    ReadRange::Memory(bytes) => {
                        pieces.push(SendablePiece::Memory(bytes));
                        continue;
                    }
                };
                let Some(file) = crate::storage::StorageFile::runtime_file(&range.file) else {
                    unreachable!("disk storage files are runtime files");
                };
                let fd = file
                    .try_clone_fd()
                    .map_err(|source| LogError::io(log.id(), "dup segment file", source))?;
                pieces.push(SendablePiece::File(SendableRange {
                    file: fd,
                    position: range.position,
                    len: range.len,
                }));
            }
            Ok(ReadRanges {
                pieces,
                high_watermark: slice.high_watermark,
                log_start: slice.log_start,
                log_end: slice.log_end,
            })
        })
        .await
    }

    /// A partition's offsets.
    pub async fn offsets(&self, topic: &str, partition: u32) -> Result<Offsets, EngineError> {
        self.on_log(topic, partition, |log| async move { Ok(log.offsets()) })
            .await
    }

    /// The first offset at or after `timestamp_ms` (see
    /// [`PartitionLog::offset_for_timestamp`]).
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<FoundOffset>, EngineError> {
        self.on_log(topic, partition, move |log| async move {
            Ok(log.offset_for_timestamp(timestamp_ms).await?)
        })
        .await
    }

    /// The record with the largest timestamp (see [`PartitionLog::max_timestamp_offset`]).
    pub async fn max_timestamp_offset(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<FoundOffset>, EngineError> {
        self.on_log(topic, partition, |log| async move {
            Ok(log.max_timestamp_offset().await?)
        })
        .await
    }

    /// Where leader epoch `requested` ends in a partition led at epoch `current`, and the
    /// largest epoch at or below it (see [`PartitionLog::epoch_end_offset`]).
    pub async fn epoch_end_offset(
        &self,
        topic: &str,
        partition: u32,
        requested: i32,
        current: i32,
    ) -> Result<(i32, i64), EngineError> {
        self.on_log(topic, partition, move |log| async move {
            Ok(log.epoch_end_offset(requested, current).await?)
        })
        .await
    }

    /// The leader epoch of the batch holding `offset` (see [`PartitionLog::epoch_at`]).
    pub async fn epoch_at(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<Option<i32>, EngineError> {
        self.on_log(topic, partition, move |log| async move {
            Ok(log.epoch_at(offset).await?)
        })
        .await
    }

    /// Moves a partition's log start offset (Kafka's DeleteRecords).
    pub async fn delete_records_before(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<i64, EngineError> {
        self.on_log(topic, partition, move |log| async move {
            Ok(log.delete_records_before(offset).await?)
        })
        .await
    }

    /// Runs `work` with the partition's log on its owning shard.
    async fn on_log<W, F, T>(&self, topic: &str, partition: u32, work: W) -> Result<T, EngineError>
    where
        W: FnOnce(PartitionLog<DiskStorage>) -> F + Send + 'static,
        F: std::future::Future<Output = Result<T, EngineError>> + 'static,
        T: Send + 'static,
    {
        self.on_owner(topic, partition, move |topic, partition| async move {
            match shard_log(&topic, partition) {
                Some(log) => work(log).await,
                None => Err(EngineError::UnknownTopicOrPartition { topic, partition }),
            }
        })
        .await
    }

    /// Runs `work(topic, partition)` on the shard owning the partition.
    async fn on_owner<W, F, T>(
        &self,
        topic: &str,
        partition: u32,
        work: W,
    ) -> Result<T, EngineError>
    where
        W: FnOnce(String, u32) -> F + Send + 'static,
        F: std::future::Future<Output = Result<T, EngineError>> + 'static,
        T: Send + 'static,
    {
        let unknown = || EngineError::UnknownTopicOrPartition {
            topic: topic.to_owned(),
            partition,
        };
        let name = TopicName::new(topic).map_err(|_| unknown())?;
        let shard = shard_for(&name, partition, self.shard_count());
        let owned = topic.to_owned();
        match self.inner.shards[shard]
            .spawn(move || work(owned, partition))
            .await
        {
            Ok(result) => result,
            Err(rt::Cancelled) => Err(EngineError::ShardStopped {
                topic: topic.to_owned(),
                partition,
            }),
        }
    }

    /// Closes every partition cleanly (fdatasync, indexes, checkpoints) and stops the
    /// shards. Blocks the calling thread.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        let closes: Vec<_> = self
            .inner
            .shards
            .iter()
            .map(|shard| shard.spawn(close_all_on_shard))
            .collect();
        let mut first_error = None;
        for result in futures::executor::block_on(join_all(closes)) {
            if let Ok(Err(error)) = result {
                first_error.get_or_insert(error);
            }
        }
        let runtime = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown()?;
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// What a partition directory set aside by [`Engine::empty_partition`] is named after:
/// `{topic}-{partition}.emptied` (no partition directory's name ends so).
pub const EMPTIED_SUFFIX: &str = ".emptied";

fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Opens partitions of one topic on this shard, concurrently.
async fn open_on_shard(
    topic: String,
    dirs: Vec<(u32, PathBuf)>,
    config: TopicConfig,
    budget: PreallocBudget,
) -> Result<(), EngineError> {
    let topic: Rc<str> = Rc::from(topic.as_str());
    let opens = dirs.into_iter().map(|(partition, dir)| {
        let id = PartitionId {
            topic: Arc::from(&*topic),
            partition,
        };
        let config = config.clone();
        let budget = budget.clone();
        async move {
            let log = PartitionLog::open_with_budget(DiskStorage, &dir, id, config, budget).await?;
            Ok::<_, EngineError>((partition, log))
        }
    });
    for opened in join_all(opens).await {
        let (partition, log) = opened?;
        LOGS.with(|logs| logs.borrow_mut().insert((topic.clone(), partition), log));
    }
    Ok(())
}

/// Closes every partition this shard owns.
async fn close_all_on_shard() -> Result<(), EngineError> {
    let logs: Vec<_> = LOGS.with(|logs| logs.borrow_mut().drain().map(|(_, log)| log).collect());
    let mut first_error = None;
    for closed in join_all(logs.iter().map(PartitionLog::close)).await {
        if let Err(error) = closed {
            first_error.get_or_insert(EngineError::from(error));
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests;
