//! Running the broker: the engine and its shards, one SO_REUSEPORT listener per shard, the
//! metrics endpoint on shard 0 (when `metrics_listen` is set), and a graceful stop on
//! SIGTERM or SIGINT.
//!
//! One process per data directory (the engine holds its lock) and per listen address: the
//! shards' listeners share the address among themselves only (see `listen_check`), and
//! no shard accepts before that is checked.
//!
//! Stop sequence: stop accepting, let connections finish the request they are on (up to a
//! grace period), then close every partition (fdatasync, indexes, checkpoint) and stop the
//! shards. The process then exits 0.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ringlog_engine::rt::{self, RuntimeConfig, TcpListener};
use ringlog_engine::shard::{Engine, EngineConfig, EngineError};
use ringlog_engine::topic::IoMode;

use ringlog_cluster::node::{Cluster, ClusterConfig, ClusterError, Peer};

use crate::broker::Broker;
use crate::config::{ClusterMembership, LoadError, ServerConfig};
use crate::connection::{self, ConnectionLimits};
use crate::limits::{OPEN_FILES_RESERVED_DIVISOR, REFUSALS_LOG_INTERVAL_MS};
use crate::limits::{RAFT_ELECTION_TICKS, RAFT_HEARTBEAT_TICKS, RAFT_TICK_MS};
use crate::listen_check::{self, ForeignListener};
use crate::metrics;
use crate::open_files;

/// How long a stop waits for connections to finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The open-file limit assumed when it cannot be read: Linux's usual soft limit.
const OPEN_FILES_ASSUMED: u64 = 1024;
/// How often an idle accept loop looks whether the server is stopping.
pub(crate) const ACCEPT_STOP_CHECK: Duration = Duration::from_millis(100);

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Groups(#[from] crate::group::coordinator::GroupLoadError),
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Another process serves the listen address already.
    #[error(
        "cannot listen on {address}: it is already served by {holder}; stop that process \
         or choose another listen address"
    )]
    AddressInUse {
        address: SocketAddr,
        holder: ForeignListener,
    },
    /// Direct I/O was asked for, and the data directory's file system refuses it.
    #[error(
        "ringlog.io.mode = direct, but the file system of {data_dir} refuses O_DIRECT \
         ({reason}); choose --io-mode buffered or a data directory on a disk file system"
    )]
    DirectIoRefused { data_dir: PathBuf, reason: String },
}

/// What the listeners and connections share with the thread that stops them.
pub struct Lifecycle {
    /// Set when the server stops: listeners stop accepting, connections stop reading.
    pub stopping: AtomicBool,
    /// Requests being answered right now.
    pub requests_in_flight: AtomicUsize,
    /// The node's cluster layer, once joined (for the metrics).
    pub cluster: OnceLock<Cluster>,
}

/// A running server.
pub struct Server {
    engine: Engine,
    lifecycle: Arc<Lifecycle>,
    address: SocketAddr,
    metrics_address: Option<SocketAddr>,
}

/// Direct I/O where the data directory's file system supports it: a default of `direct`
/// falls back to `buffered` (saying why) where it does not; a chosen `direct` is refused.
fn choose_io_mode(engine: &Engine, config: &mut ServerConfig) -> Result<(), ServerError> {
    let Some(reason) = engine.direct_io_refused() else {
        return Ok(());
    };
    if config.topic_defaults.io_mode() != IoMode::Direct {
        return Ok(());
    }
    if config.io_mode_chosen {
        return Err(ServerError::DirectIoRefused {
            data_dir: config.data_dir.clone(),
            reason: reason.to_owned(),
        });
    }
    tracing::warn!(
        data_dir = %config.data_dir.display(),
        reason,
        "the data directory's file system refuses O_DIRECT: new topics use buffered I/O \
         (the page cache) instead of direct I/O with the batch cache"
    );
    config.topic_defaults.set_io_mode(IoMode::Buffered);
    Ok(())
}

/// The batch cache's budget as the startup line shows it: MiB, or 0 when no topic default
/// uses it.
fn cache_mib(config: &ServerConfig) -> u64 {
    if config.topic_defaults.io_mode() == IoMode::Direct {
        config.batch_cache_bytes >> 20
    } else {
        0
    }
}

impl Server {
    /// Opens the engine and starts listening on every shard.
    pub fn start(mut config: ServerConfig) -> Result<Server, ServerError> {
        let engine_config = EngineConfig {
            data_dir: config.data_dir.clone(),
            runtime: RuntimeConfig {
                shards: config.shards,
                pin_threads: true,
            },
            batch_cache_bytes: config.batch_cache_bytes,
            retention_check_interval: Some(Duration::from_millis(
                config.retention_check_interval_ms,
            )),
        };
        let engine = Engine::open(&engine_config)?;
        choose_io_mode(&engine, &mut config)?;
        let settings = crate::group::coordinator::GroupSettings {
            initial_rebalance_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms),
            offsets_retention: Duration::from_secs(config.offsets_retention_minutes * 60),
        };
        // In a cluster every node gives `__consumer_offsets` the same id.
        let offsets_topic_id = config
            .cluster
            .as_ref()
            .map(|_| offsets_topic_id(&crate::broker::cluster_id(&config)));
        crate::group::coordinator::start(&engine, settings, offsets_topic_id)?;
        let lifecycle = Arc::new(Lifecycle {
            stopping: AtomicBool::new(false),
            requests_in_flight: AtomicUsize::new(0),
            cluster: OnceLock::new(),
        });
        let metrics_address = match config.metrics_listen {
            Some(address) => Some(bind_metrics(&engine, address, &lifecycle)?),
            None => None,
        };
        let open_files = match open_files::raise_to_hard_limit() {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot read the open-file limit; assuming 1024");
                OPEN_FILES_ASSUMED
            }
        };
        let max_connections = config.max_connections_or_default(open_files);
        let room = open_files - open_files / OPEN_FILES_RESERVED_DIVISOR;
        if max_connections as u64 > room {
            tracing::warn!(
                max_connections,
                open_files,
                "max_connections leaves less than a quarter of the open-file limit to \
                 segment files and fetches: raise the limit (ulimit -n) or lower \
                 max_connections"
            );
        }
        let connections = Arc::new(ConnectionLimits::new(
            max_connections,
            config.max_connections_per_ip,
        ));
        let address = bind_all(&engine, &mut config, &lifecycle, &connections)?;
        tracing::info!(
            listen = %address,
            metrics_listen = %metrics_address.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            advertised = %config.advertised_listener,
            shards = engine.shard_count(),
            data_dir = %config.data_dir.display(),
            flush = ?config.topic_defaults.flush(),
            io_mode = ?config.topic_defaults.io_mode(),
            batch_cache_mib = cache_mib(&config),
            max_connections,
            open_files,
            "ringlog serving"
        );
        Ok(Server {
            engine,
            lifecycle,
            address,
            metrics_address,
        })
    }

    /// The address the listeners are bound to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address the metrics endpoint is bound to, if `metrics_listen` was set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Stops accepting, waits for in-flight requests (up to a grace period), closes every
    /// partition and stops the shards.
    pub fn stop(self) -> Result<(), ServerError> {
        self.lifecycle.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.lifecycle.requests_in_flight.load(Ordering::SeqCst) > 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.engine.shutdown()?;
        tracing::info!("ringlog stopped; every partition closed and synced");
        Ok(())
    }
}

/// Binds a listener on every shard (the first picks the port if `listen` says 0; the
/// others share it through SO_REUSEPORT), checks that no other process listens on the
/// address, and starts their accept loops.
fn bind_all(
    engine: &Engine,
    config: &mut ServerConfig,
    lifecycle: &Arc<Lifecycle>,
    connections: &Arc<ConnectionLimits>,
) -> Result<SocketAddr, ServerError> {
    let mut address = config.listen;
    let mut own_inodes = Vec::with_capacity(engine.shard_count());
    for (index, shard) in engine.shard_handles().iter().enumerate() {
        let listener = futures::executor::block_on(shard.spawn(move || async move {
            let listener = TcpListener::bind_reuse_port(address)?;
            let bound = (listener.local_addr(), listener.socket_inode()?);
            LISTENER.with(|slot| *slot.borrow_mut() = Some(Rc::new(listener)));
            Ok::<_, std::io::Error>(bound)
        }));
        let (bound, inode) = match listener {
            Ok(Ok(bound)) => bound,
            Ok(Err(source)) => return Err(listen_error(address, &own_inodes, source)),
            Err(_) => return Err(shard_stopped()),
        };
        own_inodes.push(inode);
        if index == 0 {
            address = bound;
            if config.advertised_listener.port() == 0 {
                config.advertised_listener.set_port(bound.port());
            }
        }
    }
    match listen_check::foreign_listener_settled(address, &own_inodes) {
        Ok(None) => {}
        Ok(Some(holder)) => return Err(ServerError::AddressInUse { address, holder }),
        Err(source) => return Err(ServerError::Listen { address, source }),
    }
    let cluster = match config.cluster.clone() {
        Some(membership) => {
            let cluster = start_cluster(engine, config, &membership)?;
            crate::group::coordinator::attach_cluster(engine, &cluster)?;
            let _ = lifecycle.cluster.set(cluster.clone());
            Some(cluster)
        }
        None => None,
    };
    let broker = Arc::new(Broker::new(
        engine.clone(),
        Arc::new(config.clone()),
        lifecycle.clone(),
        cluster,
    ));
    for shard in engine.shard_handles() {
        let (broker, connections) = (broker.clone(), connections.clone());
        let started = futures::executor::block_on(shard.run(move || {
            rt::spawn_local(accept_loop(broker, connections)).detach();
        }));
        if started.is_err() {
            return Err(shard_stopped());
        }
    }
    Ok(address)
}

/// Joins the cluster: the internal listener, the controller, a replica of every
/// partition.
fn start_cluster(
    engine: &Engine,
    config: &mut ServerConfig,
    membership: &ClusterMembership,
) -> Result<Cluster, ServerError> {
    let cluster_config = ClusterConfig {
        node_id: membership.node_id,
        peers: (membership.peers.iter())
            .map(|&(id, internal)| Peer { id, internal })
            .collect(),
        internal_listen: membership.internal_listen,
        kafka_advertised: config.advertised_listener,
        cluster_name: crate::broker::cluster_id(config),
        data_dir: config.data_dir.clone(),
        tick: Duration::from_millis(RAFT_TICK_MS),
        election_ticks: RAFT_ELECTION_TICKS,
        heartbeat_ticks: RAFT_HEARTBEAT_TICKS,
        hibernate: config.raft_hibernate,
        everywhere: vec![crate::group::OFFSETS_TOPIC.to_owned()],
    };
    let cluster = Cluster::start(engine.clone(), cluster_config)?;
    tracing::info!(
        node_id = membership.node_id,
        internal_listen = %membership.internal_listen,
        peers = membership.peers.len(),
        "cluster node started"
    );
    Ok(cluster)
}

/// The topic id of `__consumer_offsets` in the cluster named `cluster_id`: the same on
/// every node (two FNV-1a 64 hashes of the name, marked as a version 8 UUID), where a
/// single node draws a random one.
fn offsets_topic_id(cluster_id: &str) -> [u8; 16] {
    let fnv = |seed: u8| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in std::iter::once(seed).chain(cluster_id.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash.to_be_bytes()
    };
    let mut id = [0; 16];
    id[..8].copy_from_slice(&fnv(1));
    id[8..].copy_from_slice(&fnv(2));
    // RFC 9562: version 8 (custom) and the variant bits.
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// A failed bind, naming the process that holds the address when that is why.
fn listen_error(address: SocketAddr, own_inodes: &[u64], source: std::io::Error) -> ServerError {
    if source.raw_os_error() == Some(libc::EADDRINUSE) {
        if let Ok(Some(holder)) = listen_check::foreign_listener(address, own_inodes) {
            return ServerError::AddressInUse { address, holder };
        }
    }
    ServerError::Listen { address, source }
}

fn shard_stopped() -> ServerError {
    EngineError::ShardStopped {
        topic: String::new(),
        partition: 0,
    }
    .into()
}

/// Binds the metrics endpoint on shard 0 and starts serving it there.
fn bind_metrics(
    engine: &Engine,
    address: SocketAddr,
    lifecycle: &Arc<Lifecycle>,
) -> Result<SocketAddr, ServerError> {
    let Some(shard) = engine.shard_handles().first() else {
        unreachable!("an engine has at least one shard");
    };
    let (engine_for_task, lifecycle_for_task) = (engine.clone(), lifecycle.clone());
    let started = futures::executor::block_on(shard.spawn(move || async move {
        let listener = TcpListener::bind(address)?;
        let bound = listener.local_addr();
        rt::spawn_local(metrics::serve(
            listener,
            engine_for_task,
            lifecycle_for_task,
        ))
        .detach();
        Ok::<_, std::io::Error>(bound)
    }));
    match started {
        Ok(Ok(bound)) => Ok(bound),
        Ok(Err(source)) => Err(listen_error(address, &[], source)),
        Err(_) => Err(shard_stopped()),
    }
}

thread_local! {
    /// This shard's listener.
    static LISTENER: RefCell<Option<Rc<TcpListener>>> = const { RefCell::new(None) };
}

/// Accepts connections on this shard's listener until the server stops; each one over a
/// connection limit is closed at once (see `connection::admission`).
async fn accept_loop(broker: Arc<Broker>, connections: Arc<ConnectionLimits>) {
    let Some(listener) = LISTENER.with(|slot| slot.borrow().clone()) else {
        return;
    };
    let mut incoming = listener.incoming();
    let mut failures = AcceptFailures::default();
    while !broker.lifecycle.stopping.load(Ordering::SeqCst) {
        let next = rt::timeout(ACCEPT_STOP_CHECK, incoming.next()).await;
        let stream = match next {
            Err(rt::Elapsed) => continue,
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                failures.log(&error);
                rt::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Ok(Some(Ok(stream))) => stream,
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        // A refused connection is dropped here, which closes it.
        let Ok(admitted) = connections.admit(peer.ip()) else {
            continue;
        };
        rt::spawn_local(connection::serve(stream, peer, broker.clone(), admitted)).detach();
    }
    LISTENER.with(|slot| slot.borrow_mut().take());
}

/// Failed accepts (out of descriptors, say), logged at most once per
/// [`REFUSALS_LOG_INTERVAL_MS`] with how many failed since the last line.
#[derive(Default)]
struct AcceptFailures {
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    fn log(&mut self, error: &std::io::Error) {
        self.unlogged += 1;
        let interval = Duration::from_millis(REFUSALS_LOG_INTERVAL_MS);
        if self.logged.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        tracing::warn!(%error, failed = self.unlogged, "accept failed (logged at most every 10 s)");
        self.logged = Some(Instant::now());
        self.unlogged = 0;
    }
}
