//! `ringlog topic create|list|describe|delete`: topic administration over the Kafka admin
//! API (CreateTopics, Metadata, ListOffsets, DescribeConfigs, DeleteTopics), so it works
//! against any Kafka-compatible broker, not only ringlog. `reassign` and `reassignments`
//! are in `admin::reassign`.
//!
//! Each command returns the text it prints on success; a Kafka error code in a response
//! becomes `AdminError::Kafka`, named as Kafka names it. `describe` asks DescribeConfigs
//! first, which never creates a topic, so describing a missing topic cannot auto-create it
//! even on a broker that only speaks Metadata versions without `allow_auto_topic_creation`.

use std::fmt::Write as _;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, ListOffsetsRequest,
    MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{reassign, AdminClient, AdminError};
use crate::cli::TopicCommand;
use crate::handlers::configs::{
    RESOURCE_TOPIC, SOURCE_DEFAULT_CONFIG, SOURCE_DYNAMIC_TOPIC_CONFIG, SOURCE_STATIC_BROKER_CONFIG,
};

/// How long the broker may take to create or delete a topic.
pub(crate) const ADMIN_TIMEOUT_MS: i32 = 30_000;
/// ListOffsets' special timestamps.
const EARLIEST: i64 = -2;
pub(crate) const LATEST: i64 = -1;
/// The first CreateTopics version where replication factor -1 means "the broker default".
const CREATE_DEFAULT_REPLICATION_VERSION: i16 = 4;
/// The first Metadata version with `allow_auto_topic_creation`.
const METADATA_NO_AUTO_CREATE_VERSION: i16 = 4;
/// The first DeleteTopics version that names topics in `topics` (not `topic_names`).
const DELETE_TOPIC_STATES_VERSION: i16 = 6;

/// Runs one `ringlog topic` command; returns what it prints.
pub fn run(client: &mut AdminClient, command: &TopicCommand) -> Result<String, AdminError> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => at_controller(client, |client| {
            create(client, name, *partitions, *replication_factor, configs)
        }),
        TopicCommand::List => list(client),
        TopicCommand::Describe { name } => describe(client, name),
        TopicCommand::Delete { name } => at_controller(client, |client| delete(client, name)),
        TopicCommand::Reassign {
            name,
            partitions,
            replicas,
            cancel,
        } => {
            let replicas = (!*cancel).then_some(replicas.as_slice());
            at_controller(client, |client| {
                reassign::reassign(client, name, partitions, replicas)
            })
        }
        TopicCommand::Reassignments { name } => reassign::list(client, name.as_deref()),
    }
}

/// The Kafka error code NOT_CONTROLLER.
const NOT_CONTROLLER: i16 = 41;
/// How many times a request the controller (or a coordinator) must take is sent again after
/// NOT_CONTROLLER (its leadership moved between the Metadata answer and the request), and
/// how long to wait between: an election takes 1–2 s.
pub(crate) const CONTROLLER_ATTEMPTS: usize = 10;
pub(crate) const CONTROLLER_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `request` at the broker leading the controller, as Kafka's admin clients send
/// CreateTopics, DeleteTopics and AlterPartitionReassignments: in a cluster, the node
/// Metadata names as the controller (connected to for the purpose), asked again after
/// NOT_CONTROLLER; alone, the broker `client` is connected to.
pub(crate) fn at_controller(
    client: &mut AdminClient,
    mut request: impl FnMut(&mut AdminClient) -> Result<String, AdminError>,
) -> Result<String, AdminError> {
    let mut attempt = 1;
    loop {
        let view = cluster_view(client)?;
        let mut controller = match view.brokers.get(&view.controller) {
            Some(address) if view.brokers.len() > 1 => Some(AdminClient::connect(address)?),
            _ => None,
        };
        let answered = request(controller.as_mut().unwrap_or(client));
        match answered {
            Err(AdminError::Kafka { code, .. })
                if code == NOT_CONTROLLER && attempt < CONTROLLER_ATTEMPTS =>
            {
                attempt += 1;
                std::thread::sleep(CONTROLLER_RETRY);
            }
            other => return other,
        }
    }
}

/// The brokers a Metadata answer lists (`HOST:PORT` by node id) and the controller it names.
pub(crate) struct ClusterView {
    pub(crate) controller: i32,
    pub(crate) brokers: std::collections::BTreeMap<i32, String>,
}

/// `HOST:PORT` as `AdminClient::connect` takes it (an IPv6 host in brackets).
pub(crate) fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(crate) fn cluster_view(client: &mut AdminClient) -> Result<ClusterView, AdminError> {
    let version = client.version::<MetadataRequest>()?;
    // No topic asked (an empty list, not none: that would be every topic).
    let request = MetadataRequest::default().with_topics(Some(Vec::new()));
    let response = client.call(&request, version)?;
    let brokers = (response.brokers.iter())
        .map(|broker| (broker.node_id.0, host_port(&broker.host, broker.port)))
        .collect();
    Ok(ClusterView {
        controller: response.controller_id.0,
        brokers,
    })
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// Creates a topic; `replication_factor` `None` leaves it to the broker (a version of
/// CreateTopics before -1 meant that asks for 1).
pub fn create(
    client: &mut AdminClient,
    name: &str,
    partitions: u32,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> Result<String, AdminError> {
    let version = client.version::<CreateTopicsRequest>()?;
    let configs = configs
        .iter()
        .map(|(key, value)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(key.clone()))
                .with_value(Some(StrBytes::from_string(value.clone())))
        })
        .collect();
    let replication_factor = match replication_factor {
        Some(factor) => factor,
        None if version >= CREATE_DEFAULT_REPLICATION_VERSION => -1,
        None => 1,
    };
    let topic = CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(i32::try_from(partitions).unwrap_or(i32::MAX))
        .with_replication_factor(replication_factor)
        .with_configs(configs);
    let request = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(ADMIN_TIMEOUT_MS);
    let response = client.call(&request, version)?;
    let context = format!("create topic {name}");
    let result = response
        .topics
        .first()
        .ok_or_else(|| missing(client, &context))?;
    AdminError::check(&context, result.error_code, result.error_message.as_ref())?;
    Ok(format!(
        "created topic {name} with {partitions} partitions\n"
    ))
}

/// A response without the entry the request asked for.
pub(crate) fn missing(client: &AdminClient, context: &str) -> AdminError {
    AdminError::Kafka {
        context: context.to_owned(),
        code: -1,
        name: "UNKNOWN_SERVER_ERROR".to_owned(),
        message: Some(format!("{} answered without a result", client.address())),
    }
}

pub fn list(client: &mut AdminClient) -> Result<String, AdminError> {
    let version = client.version::<MetadataRequest>()?;
    let request = MetadataRequest::default()
        .with_topics(None)
        .with_allow_auto_topic_creation(version < METADATA_NO_AUTO_CREATE_VERSION);
    let response = client.call(&request, version)?;
    let mut names: Vec<String> = response
        .topics
        .iter()
        .filter(|topic| topic.error_code == 0 && !topic.is_internal)
        .filter_map(|topic| Some(topic.name.as_ref()?.0.to_string()))
        .collect();
    names.sort();
    let mut out = String::new();
    for name in &names {
        out.push_str(name);
        out.push('\n');
    }
    Ok(out)
}

pub fn describe(client: &mut AdminClient, name: &str) -> Result<String, AdminError> {
    let configs = describe_configs(client, name)?;
    let topic = metadata(client, name)?;
    let mut partitions: Vec<i32> = topic.partitions.iter().map(|p| p.partition_index).collect();
    partitions.sort_unstable();
    let starts = offsets_at_leaders(client, name, &partitions, EARLIEST)?;
    let ends = offsets_at_leaders(client, name, &partitions, LATEST)?;
    // Asked again: the leaders answered the offsets, so Metadata names them now (a topic
    // just created may have had none at the first answer).
    let topic = metadata(client, name)?;
    let mut out = format!("topic: {name}\n");
    if topic.topic_id != Uuid::nil() {
        let _ = writeln!(out, "id: {}", topic.topic_id);
    }
    let _ = writeln!(out, "partitions: {}", partitions.len());
    let _ = writeln!(
        out,
        "  {:<10} {:>16} {:>16} {:>7}  replicas",
        "partition", "log-start", "log-end", "leader"
    );
    for ((partition, start), end) in partitions.iter().zip(&starts).zip(&ends) {
        let entry = (topic.partitions.iter()).find(|p| p.partition_index == *partition);
        let leader = entry.map_or(-1, |p| p.leader_id.0);
        let replicas: Vec<String> = (entry.into_iter())
            .flat_map(|p| p.replica_nodes.iter().map(|id| id.0.to_string()))
            .collect();
        let replicas = replicas.join(",");
        let _ = writeln!(
            out,
            "  {partition:<10} {start:>16} {end:>16} {leader:>7}  {replicas}"
        );
    }
    out.push_str("configs:\n");
    for config in &configs {
        let value = config.value.as_ref().map_or("(null)", |v| v.as_str());
        let source = source_name(config.config_source);
        let _ = writeln!(out, "  {}={value} ({source})", config.name.as_str());
    }
    Ok(out)
}

/// `log_offsets` of `partitions` of topic `name` (in their order), each asked of its
/// leader: in a cluster, partitions are led by different nodes and only a leader answers
/// ListOffsets; alone, the connected broker leads them all. A partition without a leader
/// yet (a topic just created, an election) is waited for, as long as a controller's
/// request is asked again.
pub(crate) fn offsets_at_leaders(
    client: &mut AdminClient,
    name: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<Vec<i64>, AdminError> {
    let view = cluster_view(client)?;
    if view.brokers.len() <= 1 {
        return log_offsets(client, name, partitions, timestamp);
    }
    let mut attempt = 1;
    let leaders = loop {
        let topic = metadata(client, name)?;
        let mut leaders: Vec<(i32, String)> = Vec::new();
        let mut without = None;
        for &index in partitions {
            let leader = (topic.partitions.iter())
                .find(|partition| partition.partition_index == index)
                .and_then(|partition| view.brokers.get(&partition.leader_id.0));
            match leader {
                Some(address) => leaders.push((index, address.clone())),
                None => without = Some(index),
            }
        }
        let Some(index) = without else {
            break leaders;
        };
        if attempt >= CONTROLLER_ATTEMPTS {
            let code = kafka_protocol::ResponseError::LeaderNotAvailable.code();
            return Err(AdminError::Kafka {
                context: format!("list offsets of {name}-{index}"),
                code,
                name: crate::errors::name(code),
                message: None,
            });
        }
        attempt += 1;
        std::thread::sleep(CONTROLLER_RETRY);
    };
    let mut offsets = std::collections::BTreeMap::new();
    let mut addresses: Vec<&String> = leaders.iter().map(|(_, address)| address).collect();
    addresses.sort_unstable();
    addresses.dedup();
    for address in addresses {
        let led: Vec<i32> = (leaders.iter())
            .filter(|(_, at)| at == address)
            .map(|(index, _)| *index)
            .collect();
        let mut at_leader = AdminClient::connect(address)?;
        let found = log_offsets(&mut at_leader, name, &led, timestamp)?;
        offsets.extend(led.into_iter().zip(found));
    }
    // Every partition asked for was asked of its leader, and answered (or refused above).
    Ok(partitions
        .iter()
        .filter_map(|index| offsets.get(index).copied())
        .collect())
}

fn source_name(source: i8) -> String {
    match source {
        SOURCE_DYNAMIC_TOPIC_CONFIG => "topic".to_owned(),
        SOURCE_DEFAULT_CONFIG => "default".to_owned(),
        SOURCE_STATIC_BROKER_CONFIG => "broker".to_owned(),
        other => format!("source {other}"),
    }
}

fn describe_configs(
    client: &mut AdminClient,
    name: &str,
) -> Result<Vec<DescribeConfigsResourceResult>, AdminError> {
    let version = client.version::<DescribeConfigsRequest>()?;
    let resource = DescribeConfigsResource::default()
        .with_resource_type(RESOURCE_TOPIC)
        .with_resource_name(StrBytes::from_string(name.to_owned()))
        .with_configuration_keys(None);
    let request = DescribeConfigsRequest::default().with_resources(vec![resource]);
    let response = client.call(&request, version)?;
    let context = format!("describe topic {name}");
    let result = response
        .results
        .into_iter()
        .next()
        .ok_or_else(|| missing(client, &context))?;
    AdminError::check(&context, result.error_code, result.error_message.as_ref())?;
    Ok(result.configs)
}

pub(crate) fn metadata(
    client: &mut AdminClient,
    name: &str,
) -> Result<MetadataResponseTopic, AdminError> {
    let version = client.version::<MetadataRequest>()?;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(name)))
        ]))
        .with_allow_auto_topic_creation(version < METADATA_NO_AUTO_CREATE_VERSION);
    let response = client.call(&request, version)?;
    let context = format!("describe topic {name}");
    let topic = response
        .topics
        .into_iter()
        .next()
        .ok_or_else(|| missing(client, &context))?;
    AdminError::check(&context, topic.error_code, None)?;
    Ok(topic)
}

/// The offsets ListOffsets gives for `timestamp`, one per partition, in `partitions` order.
pub(crate) fn log_offsets(
    client: &mut AdminClient,
    name: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<Vec<i64>, AdminError> {
    let version = client.version::<ListOffsetsRequest>()?;
    let topic = ListOffsetsTopic::default()
        .with_name(topic_name(name))
        .with_partitions(
            partitions
                .iter()
                .map(|&index| {
                    ListOffsetsPartition::default()
                        .with_partition_index(index)
                        .with_timestamp(timestamp)
                })
                .collect(),
        );
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![topic]);
    let response = client.call(&request, version)?;
    let answered: Vec<_> = response
        .topics
        .into_iter()
        .flat_map(|topic| topic.partitions)
        .collect();
    partitions
        .iter()
        .map(|&index| {
            let context = format!("list offsets of {name}-{index}");
            let Some(partition) = answered.iter().find(|p| p.partition_index == index) else {
                return Err(missing(client, &context));
            };
            AdminError::check(&context, partition.error_code, None)?;
            Ok(partition.offset)
        })
        .collect()
}

pub fn delete(client: &mut AdminClient, name: &str) -> Result<String, AdminError> {
    let version = client.version::<DeleteTopicsRequest>()?;
    let request = DeleteTopicsRequest::default().with_timeout_ms(ADMIN_TIMEOUT_MS);
    let request = if version >= DELETE_TOPIC_STATES_VERSION {
        request.with_topics(vec![
            DeleteTopicState::default().with_name(Some(topic_name(name)))
        ])
    } else {
        request.with_topic_names(vec![topic_name(name)])
    };
    let response = client.call(&request, version)?;
    let context = format!("delete topic {name}");
    let result = response
        .responses
        .first()
        .ok_or_else(|| missing(client, &context))?;
    AdminError::check(&context, result.error_code, result.error_message.as_ref())?;
    Ok(format!("deleted topic {name}\n"))
}
