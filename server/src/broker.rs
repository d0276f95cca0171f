//! The broker: what each Kafka API does with the engine. One `Broker` is shared by every
//! connection on every shard; it holds the engine handle and the server configuration.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::ResponseError;

use crate::config::ServerConfig;
use crate::connection::Budget;
use crate::handlers;
use crate::protocol::Request;
use crate::server::Lifecycle;
use crate::zero_copy::Records;
use ringlog_cluster::node::{Cluster, GroupStatus};
use ringlog_engine::shard::Engine;
use ringlog_engine::topic::TopicMeta;

/// The node id ringlog reports for itself (a single-node cluster).
pub const NODE_ID: i32 = 0;

/// Where a partition's leader is, for a client that asked another node (KIP-951).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub host: String,
    pub port: u16,
}

/// Whether a partition error tells the client to look for the leader, so a KIP-951 hint
/// goes with it.
pub fn wants_leader_hint(code: i16) -> bool {
    code == ResponseError::NotLeaderOrFollower.code()
        || code == ResponseError::FencedLeaderEpoch.code()
}

/// Shared state of the request handlers.
pub struct Broker {
    pub engine: Engine,
    pub config: Arc<ServerConfig>,
    pub cluster_id: String,
    pub lifecycle: Arc<Lifecycle>,
    /// The cluster layer, when this node is one of a cluster: topics are then replicated
    /// and written through it.
    pub cluster: Option<Cluster>,
}

impl Broker {
    pub fn new(
        engine: Engine,
        config: Arc<ServerConfig>,
        lifecycle: Arc<Lifecycle>,
        cluster: Option<Cluster>,
    ) -> Broker {
        let cluster_id = cluster_id(&config);
        Broker {
            engine,
            config,
            cluster_id,
            lifecycle,
            cluster,
        }
    }

    /// The node id this broker reports: its cluster node id, or 0 alone.
    pub fn node_id(&self) -> i32 {
        self.cluster
            .as_ref()
            .map_or(NODE_ID, |cluster| node_id_i32(cluster.node_id()))
    }

    /// Whether this node may answer reads of a partition: always alone; in a cluster, a
    /// replicated partition only at its leader (NOT_LEADER_OR_FOLLOWER elsewhere, and
    /// while it has none). `epoch` is the client's leader epoch, or
    /// -1 when it sends none: an older one is FENCED_LEADER_EPOCH, a newer one (this
    /// node has not heard of it yet) UNKNOWN_LEADER_EPOCH, as Kafka answers.
    pub fn check_leader(&self, topic: &str, partition: u32, epoch: i32) -> Result<(), i16> {
        self.leader_status(topic, partition, epoch).map(|_| ())
    }

    /// [`Broker::check_leader`], answering the group status it checked (`None` for a
    /// partition that is not replicated), so a caller that needs the term or whether this
    /// leader committed in it reads the same status the check passed.
    pub fn leader_status(
        &self,
        topic: &str,
        partition: u32,
        epoch: i32,
    ) -> Result<Option<GroupStatus>, i16> {
        let Some(cluster) = self.replicated(topic) else {
            return Ok(None);
        };
        let Some(status) = cluster.status(topic, partition) else {
            return Err(ResponseError::NotLeaderOrFollower.code());
        };
        match status.leader {
            // During an election Kafka answers reads NOT_LEADER_OR_FOLLOWER too (the Java
            // consumer has no case for LEADER_NOT_AVAILABLE in a fetch response).
            None => return Err(ResponseError::NotLeaderOrFollower.code()),
            Some(leader) if leader != cluster.node_id() => {
                return Err(ResponseError::NotLeaderOrFollower.code())
            }
            Some(_) => {}
        }
        if epoch >= 0 {
            let term = i64::try_from(status.term).unwrap_or(i64::MAX);
            match i64::from(epoch).cmp(&term) {
                std::cmp::Ordering::Less => return Err(ResponseError::FencedLeaderEpoch.code()),
                std::cmp::Ordering::Greater => return Err(ResponseError::UnknownLeaderEpoch.code()),
                std::cmp::Ordering::Equal => {}
            }
        }
        Ok(Some(status))
    }

    /// KIP-951's hint for a client told NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH about
    /// a replicated partition: the leader this node knows, at its epoch (the term), and that
    /// leader's Kafka address; `None` when the partition is not replicated, has no leader
    /// this node knows, or the leader is not live here (`Cluster::live_brokers`).
    pub fn leader_hint(&self, topic: &str, partition: u32) -> Option<LeaderHint> {
        let cluster = self.replicated(topic)?;
        let status = cluster.status(topic, partition)?;
        let leader = status.leader?;
        let (host, port) = cluster.live_brokers().remove(&leader)?;
        Some(LeaderHint {
            leader_id: node_id_i32(leader),
            leader_epoch: i32::try_from(status.term).unwrap_or(i32::MAX),
            host,
            port,
        })
    }

    /// The cluster layer if `topic` is one of its replicated topics.
    pub fn replicated(&self, topic: &str) -> Option<&Cluster> {
        self.cluster
            .as_ref()
            .filter(|_| ringlog_cluster::node::is_replicated(topic))
    }

    /// Answers one request; `None` when the protocol wants no response (produce with
    /// acks=0). A fetch response comes with the records its markers stand for, no more
    /// than `budget` (the connection's and its shard's in-flight bytes) has room for.
    pub async fn handle(
        &self,
        request: Request,
        peer: SocketAddr,
        budget: &Budget,
    ) -> Option<(ResponseKind, Vec<Records>)> {
        let version = request.version;
        let client_id = request
            .header
            .client_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let response = match request.body {
            RequestKind::ApiVersions(_) => {
                ResponseKind::ApiVersions(handlers::api_versions::handle(version))
            }
            RequestKind::Metadata(body) => {
                ResponseKind::Metadata(handlers::metadata::handle(self, body, version).await)
            }
            RequestKind::Produce(body) => {
                let acks = body.acks;
                let response = handlers::produce::handle(self, body, version).await;
                if acks == 0 {
                    return None;
                }
                ResponseKind::Produce(response)
            }
            RequestKind::Fetch(body) => {
                let (response, files) = handlers::fetch::handle(self, body, version, budget).await;
                return Some((ResponseKind::Fetch(response), files));
            }
            RequestKind::ListOffsets(body) => {
                ResponseKind::ListOffsets(handlers::list_offsets::handle(self, body, version).await)
            }
            RequestKind::OffsetForLeaderEpoch(body) => ResponseKind::OffsetForLeaderEpoch(
                handlers::offset_for_leader_epoch::handle(self, body).await,
            ),
            RequestKind::FindCoordinator(body) => ResponseKind::FindCoordinator(
                handlers::groups::find_coordinator(self, body, version),
            ),
            RequestKind::JoinGroup(body) => ResponseKind::JoinGroup(
                handlers::groups::join(self, body, version, client_id, peer).await,
            ),
            RequestKind::SyncGroup(body) => {
                ResponseKind::SyncGroup(handlers::groups::sync(self, body).await)
            }
            RequestKind::Heartbeat(body) => {
                ResponseKind::Heartbeat(handlers::groups::heartbeat(self, body).await)
            }
            RequestKind::LeaveGroup(body) => {
                ResponseKind::LeaveGroup(handlers::groups::leave(self, body, version).await)
            }
            RequestKind::ListGroups(body) => {
                ResponseKind::ListGroups(handlers::groups::list(self, body).await)
            }
            RequestKind::DescribeGroups(body) => {
                ResponseKind::DescribeGroups(handlers::groups::describe(self, body).await)
            }
            RequestKind::DeleteGroups(body) => {
                ResponseKind::DeleteGroups(handlers::groups::delete(self, body).await)
            }
            RequestKind::OffsetCommit(body) => {
                ResponseKind::OffsetCommit(handlers::offsets::commit(self, body).await)
            }
            RequestKind::OffsetFetch(body) => {
                ResponseKind::OffsetFetch(handlers::offsets::fetch(self, body, version).await)
            }
            RequestKind::OffsetDelete(body) => {
                ResponseKind::OffsetDelete(handlers::offsets::delete(self, body).await)
            }
            RequestKind::InitProducerId(body) => {
                ResponseKind::InitProducerId(handlers::init_producer_id::handle(self, &body))
            }
            other => self.handle_admin(other, version).await,
        };
        Some((response, Vec::new()))
    }

    /// Answers one request of the admin APIs: topics, their configurations and replicas,
    /// the cluster, records' deletion.
    async fn handle_admin(&self, body: RequestKind, version: i16) -> ResponseKind {
        match body {
            RequestKind::CreateTopics(body) => {
                ResponseKind::CreateTopics(handlers::topics::create(self, body, version).await)
            }
            RequestKind::DeleteTopics(body) => {
                ResponseKind::DeleteTopics(handlers::topics::delete(self, body, version).await)
            }
            RequestKind::CreatePartitions(body) => ResponseKind::CreatePartitions(
                handlers::topics::create_partitions(self, body).await,
            ),
            RequestKind::AlterPartitionReassignments(body) => {
                ResponseKind::AlterPartitionReassignments(
                    handlers::reassignments::alter(self, body).await,
                )
            }
            RequestKind::ListPartitionReassignments(body) => {
                ResponseKind::ListPartitionReassignments(handlers::reassignments::list(self, &body))
            }
            RequestKind::DescribeConfigs(body) => {
                ResponseKind::DescribeConfigs(handlers::configs::describe(self, &body, version))
            }
            RequestKind::AlterConfigs(body) => {
                ResponseKind::AlterConfigs(handlers::configs::alter(self, body).await)
            }
            RequestKind::IncrementalAlterConfigs(body) => ResponseKind::IncrementalAlterConfigs(
                handlers::configs::incremental_alter(self, body).await,
            ),
            RequestKind::DescribeCluster(body) => {
                ResponseKind::DescribeCluster(handlers::cluster::handle(self, &body, version))
            }
            RequestKind::DeleteRecords(body) => {
                ResponseKind::DeleteRecords(handlers::records::handle(self, body).await)
            }
            other => unreachable!("decode_request admits only supported APIs, not {other:?}"),
        }
    }

    /// The topic, created with the server's defaults if it is missing and auto-creation is
    /// on. `None` if it does not exist (and was not created).
    pub async fn topic_or_create(&self, name: &str) -> Option<TopicMeta> {
        if let Some(meta) = self.engine.topic(name) {
            return Some(meta);
        }
        if !self.config.auto_create_topics || is_reserved(name) {
            return None;
        }
        let partitions = self.config.default_partitions;
        let defaults = self.config.topic_defaults.clone();
        if let Some(cluster) = self.replicated(name) {
            // Through the controller, forwarded to the node leading it if that is not this one.
            return match cluster
                .create_topic_anywhere(name, partitions, defaults)
                .await
            {
                Ok(meta) => {
                    tracing::info!(
                        topic = name,
                        partitions,
                        "topic auto-created in the cluster"
                    );
                    Some(meta)
                }
                Err(error) => {
                    tracing::debug!(topic = name, %error, "topic not auto-created");
                    self.engine.topic(name)
                }
            };
        }
        match self.engine.create_topic(name, partitions, defaults).await {
            Ok(meta) => {
                tracing::info!(topic = name, partitions, "topic auto-created");
                Some(meta)
            }
            // Another request created it meanwhile, or the name is invalid.
            Err(_) => self.engine.topic(name),
        }
    }
}

/// Whether `topic` is a name no client may create: the controller's log
/// (`__cluster_metadata`, as in Kafka's KRaft), which lives in the data directory outside the
/// topic registry, so a topic of that name would collide with it on disk — on a single node
/// too, which may later join a cluster.
pub fn is_reserved(topic: &str) -> bool {
    topic == ringlog_cluster::controller::CONTROLLER_TOPIC
}

/// A cluster node id as Kafka's 32-bit broker id (the configuration refuses ids past
/// `i32::MAX`, so the fallback of -1, no broker, is never taken).
pub fn node_id_i32(id: u64) -> i32 {
    i32::try_from(id).unwrap_or(-1)
}

/// The cluster id Metadata reports: a cluster's nodes derive the same one from the
/// smallest node id's internal address; a single node from its port.
pub fn cluster_id(config: &ServerConfig) -> String {
    match &config.cluster {
        Some(membership) => {
            let first = membership.peers.iter().min_by_key(|(id, _)| *id);
            first.map_or_else(String::new, |(_, address)| format!("ringlog-{address}"))
        }
        None => format!("ringlog-{}", config.advertised_listener.port()),
    }
}
