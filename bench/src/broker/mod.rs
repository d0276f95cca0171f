//! `ringlog-bench produce` and `consume`: the broker measured over the Kafka protocol, by a
//! lean native client on the runtime (no Kafka client library on the hot path). What both
//! share is here: which broker (`--bootstrap HOST:PORT`, or `--embedded`: a broker started
//! in this process on a temporary data directory with the given server flags), creating the
//! topic, asking the API versions and the partitions' offsets (blocking `AdminClient`,
//! before anything is timed).

pub mod acks;
#[cfg(test)]
mod blackhole;
pub mod consume;
pub mod e2e;
pub mod hostile;
#[cfg(test)]
mod poisoned;
pub mod produce;
pub mod rdkafka;
pub mod stamp;
pub mod wire;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::Args;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use ringlog_engine::topic::TopicConfig;
use ringlog_server::admin::{self, AdminClient, AdminError};
use ringlog_server::config::ServerConfig;
use ringlog_server::server::Server;
use serde::Serialize;

use crate::engine::{FlushArg, IoModeArg};
use crate::error::{BenchError, IoContext};

/// Kafka's TOPIC_ALREADY_EXISTS: a `--bootstrap` topic may be reused.
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

/// Which broker, and for `--embedded`, how it is configured.
#[derive(Debug, Clone, Args, Serialize)]
pub struct TargetArgs {
    /// A running broker, `HOST:PORT`.
    #[arg(
        long,
        conflicts_with = "embedded",
        required_unless_present = "embedded"
    )]
    pub bootstrap: Option<String>,
    /// Start a broker in this process on a temporary data directory (deleted at the end).
    #[arg(long)]
    pub embedded: bool,
    /// `--embedded`: shards (threads pinned to cores) of the broker.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// `--embedded`: topic flush policy (`always`: fdatasync per group, acks wait for it).
    #[arg(long, value_enum, default_value_t = FlushArg::Never)]
    pub flush: FlushArg,
    /// `--embedded`: `direct` (O_DIRECT with the batch cache, `ringlog serve`'s default) or
    /// `buffered` (page cache).
    #[arg(long, value_enum, default_value_t = IoModeArg::Direct)]
    pub io_mode: IoModeArg,
    /// `--embedded`: bytes a segment file grows by per fallocate (`ringlog.preallocate.bytes`;
    /// 1,000 partitions preallocate 1,000 times this).
    #[arg(long, default_value = "64MiB", value_parser = crate::size::parse_size_bytes)]
    pub preallocate_bytes: u64,
    /// `--embedded`: where the temporary data directory goes (ext4 on the real disk, never
    /// tmpfs); created if missing.
    #[arg(long, default_value = "target/bench-tmp")]
    pub data_parent: PathBuf,
}

/// The broker a run talks to; an embedded one stops (and its data goes) when dropped.
pub struct Target {
    pub address: SocketAddr,
    embedded: Option<(Server, tempfile::TempDir)>,
}

impl Target {
    /// Resolves `--bootstrap`, or starts the embedded broker.
    pub fn start(args: &TargetArgs) -> Result<Target, BenchError> {
        if let Some(bootstrap) = &args.bootstrap {
            let address = bootstrap
                .to_socket_addrs()
                .context(|| format!("resolving {bootstrap}"))?
                .next()
                .ok_or_else(|| BenchError::InvalidArguments(format!("{bootstrap}: no address")))?;
            return Ok(Target::remote(address));
        }
        let topic_defaults = topic_defaults(args)?;
        Target::embedded(&args.data_parent, |config| {
            config.shards = args.shards;
            config.topic_defaults = topic_defaults;
        })
    }

    /// Starts a broker in this process on a new temporary directory under `data_parent`
    /// (created if missing), with [`ServerConfig::ephemeral`] as `configure` changes it.
    pub fn embedded(
        data_parent: &Path,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Result<Target, BenchError> {
        std::fs::create_dir_all(data_parent)
            .context(|| format!("creating {}", data_parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("ringlog-embedded-")
            .tempdir_in(data_parent)
            .context(|| format!("creating a directory in {}", data_parent.display()))?;
        let mut config = ServerConfig::ephemeral(dir.path().to_path_buf());
        configure(&mut config);
        let server = Server::start(config)?;
        Ok(Target {
            address: server.address(),
            embedded: Some((server, dir)),
        })
    }

    /// Whether the broker runs in this process.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// A broker already running at `address`.
    pub fn remote(address: SocketAddr) -> Target {
        Target {
            address,
            embedded: None,
        }
    }

    /// Stops an embedded broker (closing every partition) and deletes its data.
    pub fn stop(mut self) -> Result<(), BenchError> {
        if let Some((server, dir)) = self.embedded.take() {
            server.stop()?;
            dir.close()
                .context(|| "deleting the embedded data directory".into())?;
        }
        Ok(())
    }

    /// A blocking admin connection to the broker.
    pub fn admin(&self) -> Result<AdminClient, BenchError> {
        Ok(AdminClient::connect(&self.address.to_string())?)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((server, _dir)) = self.embedded.take() {
            if let Err(error) = server.stop() {
                eprintln!("ringlog-bench: stopping the embedded broker: {error}");
            }
        }
    }
}

fn topic_defaults(args: &TargetArgs) -> Result<TopicConfig, BenchError> {
    let flush = match args.flush {
        FlushArg::Never => ringlog_engine::topic::FlushPolicy::Never,
        FlushArg::Always => ringlog_engine::topic::FlushPolicy::Always,
    };
    let io_mode = match args.io_mode {
        IoModeArg::Buffered => ringlog_engine::topic::IoMode::Buffered,
        IoModeArg::Direct => ringlog_engine::topic::IoMode::Direct,
    };
    Ok(TopicConfig::builder()
        .flush(flush)
        .io_mode(io_mode)
        .preallocate_bytes(args.preallocate_bytes)
        .build()?)
}

/// Parses one subcommand's arguments (`argv[0]` is its name), with the command line's
/// defaults for everything `argv` leaves out.
pub fn parse_args<T: clap::Args>(argv: &[&str]) -> Result<T, BenchError> {
    #[derive(clap::Parser)]
    struct Command<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    <Command<T> as clap::Parser>::try_parse_from(argv)
        .map(|command| command.args)
        .map_err(|error| BenchError::InvalidArguments(error.to_string()))
}

/// Creates `topic` with `partitions` partitions; an existing topic is kept.
pub fn create_topic(
    client: &mut AdminClient,
    topic: &str,
    partitions: u32,
) -> Result<(), BenchError> {
    match admin::topic::create(client, topic, partitions, None, &[]) {
        Ok(_) => Ok(()),
        Err(AdminError::Kafka { code, .. }) if code == TOPIC_ALREADY_EXISTS => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The version of `R` to speak: the highest both sides know, capped at `cap` (the last
/// version that names topics rather than giving their ids).
pub fn version<R: Request>(client: &AdminClient, cap: i16) -> Result<i16, BenchError> {
    let version = client.version::<R>()?;
    Ok(version.min(cap))
}

/// The offsets of partitions `0..partitions`: the earliest, or the latest (the end).
pub fn list_offsets(
    client: &mut AdminClient,
    topic: &str,
    partitions: u32,
    earliest: bool,
) -> Result<Vec<i64>, BenchError> {
    let version = client.version::<ListOffsetsRequest>()?;
    let timestamp = if earliest { EARLIEST } else { LATEST };
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(
                (0..partitions)
                    .map(|index| {
                        ListOffsetsPartition::default()
                            .with_partition_index(index as i32)
                            .with_timestamp(timestamp)
                    })
                    .collect(),
            )]);
    let response = client.call(&request, version)?;
    let mut offsets = vec![None; partitions as usize];
    for partition in response.topics.iter().flat_map(|topic| &topic.partitions) {
        AdminError::check("ListOffsets", partition.error_code, None)?;
        if let Some(slot) = offsets.get_mut(partition.partition_index as usize) {
            *slot = Some(partition.offset);
        }
    }
    offsets
        .into_iter()
        .enumerate()
        .map(|(index, offset)| {
            offset.ok_or_else(|| BenchError::Broker(format!("no offset for partition {index}")))
        })
        .collect()
}
