//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.
//!
//! Topic resources are read and written through the engine's `TopicConfig`: DescribeConfigs
//! lists `TopicConfig::to_pairs()`; AlterConfigs replaces the whole configuration, as Kafka
//! does (keys not given revert to the server default, `broker.config.topic_defaults`);
//! IncrementalAlterConfigs SETs and DELETEs (reverts) single keys. Every key ringlog knows
//! is a scalar, so APPEND and SUBTRACT are refused with INVALID_CONFIG.
//!
//! The engine stores a topic's full configuration, not the keys a user set, so "set by the
//! user" is read as "differs from the server default": DescribeConfigs reports such keys as
//! DYNAMIC_TOPIC_CONFIG and the rest as DEFAULT_CONFIG, and IncrementalAlterConfigs keeps
//! exactly those keys (its `overrides`) when it rebuilds a configuration from the defaults.
//! A key explicitly set to its default value therefore shows as DEFAULT_CONFIG.
//!
//! The flush keys describe one policy. Among the overrides it is written canonically:
//! `flush.policy` for `always`/`never`, `flush.ms` and `flush.bytes` for a periodic policy.
//! An incremental SET or DELETE of `flush.policy` or `flush.messages` replaces the whole
//! policy, dropping `flush.ms`/`flush.bytes` overrides; a SET of a trigger keeps the other
//! trigger, and contradicting the policy override is refused naming the key.
//!
//! Entries carry no documentation (`documentation` is null from version 3 on); synonyms,
//! when asked for, are the value itself and, for an override, the server default below it.
//!
//! The BROKER resource (this node, named `""` or `"0"`) describes a few read-only settings
//! (node id, listeners, data directory, auto-creation, default partitions, request size
//! limit) as STATIC_BROKER_CONFIG, whether they came from `ringlog.toml`, a flag or the
//! built-in default; broker configs cannot be altered at runtime (INVALID_REQUEST). Other resource types get INVALID_REQUEST. Resources named twice in
//! one alter request get INVALID_REQUEST, as in Kafka.

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringlog_engine::shard::EngineError;
use ringlog_engine::topic::{keys, ConfigError, TopicConfig};

use crate::broker::{Broker, NODE_ID};
use crate::errors;

/// Kafka's resource types (`ConfigResource.Type`).
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources (`DescribeConfigsResponse.ConfigSource`).
pub const SOURCE_DYNAMIC_TOPIC_CONFIG: i8 = 1;
pub const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
pub const SOURCE_DEFAULT_CONFIG: i8 = 5;

/// Kafka's config types (`DescribeConfigsResponse.ConfigType`), from version 3.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// IncrementalAlterConfigs' operations (`AlterConfigOp.OpType`).
pub const OP_SET: i8 = 0;
pub const OP_DELETE: i8 = 1;
pub const OP_APPEND: i8 = 2;
pub const OP_SUBTRACT: i8 = 3;

/// The first version of DescribeConfigs with `config_type` and `documentation`.
const DESCRIBE_TYPES_VERSION: i16 = 3;

/// Why one resource was refused: its error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: i16,
    message: String,
}

impl Refusal {
    fn new(error: ResponseError, message: String) -> Refusal {
        Refusal {
            code: error.code(),
            message,
        }
    }
    fn invalid_request(message: String) -> Refusal {
        Refusal::new(ResponseError::InvalidRequest, message)
    }
    fn config(error: &ConfigError) -> Refusal {
        Refusal {
            code: errors::config_code(error),
            message: error.to_string(),
        }
    }
    fn engine(error: &EngineError) -> Refusal {
        Refusal {
            code: errors::code(error),
            message: error.to_string(),
        }
    }
    fn unknown_topic(name: &str) -> Refusal {
        let message = format!("topic {name} does not exist");
        Refusal::new(ResponseError::UnknownTopicOrPartition, message)
    }
}

/// One config entry before it is put in a version's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: &'static str,
    value: String,
    source: i8,
    read_only: bool,
    config_type: i8,
    /// The server default when the value overrides it (the synonym below the value).
    default: Option<String>,
}

pub fn describe(
    broker: &Broker,
    request: &DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match describe_resource(broker, resource) {
                Ok(entries) => result.with_configs(
                    entries
                        .into_iter()
                        .map(|entry| entry_for_version(entry, request.include_synonyms, version))
                        .collect(),
                ),
                Err(refusal) => result
                    .with_error_code(refusal.code)
                    .with_error_message(Some(StrBytes::from_string(refusal.message))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// The entries of one resource, only those asked for (all when no keys are named).
fn describe_resource(
    broker: &Broker,
    resource: &DescribeConfigsResource,
) -> Result<Vec<Entry>, Refusal> {
    let name = resource.resource_name.as_str();
    let entries = match resource.resource_type {
        RESOURCE_TOPIC => {
            let config = topic_config(broker, name)?;
            topic_entries(&config, &broker.config.topic_defaults)
        }
        RESOURCE_BROKER => {
            check_broker_name(name)?;
            broker_entries(broker)
        }
        other => return Err(unsupported_resource(other)),
    };
    Ok(match &resource.configuration_keys {
        Some(wanted) if !wanted.is_empty() => entries
            .into_iter()
            .filter(|entry| wanted.iter().any(|key| key.as_str() == entry.name))
            .collect(),
        _ => entries,
    })
}

/// A topic's configuration, or why there is none.
fn topic_config(broker: &Broker, name: &str) -> Result<TopicConfig, Refusal> {
    if let Err(error) = ringlog_engine::topic::TopicName::new(name) {
        let message = error.to_string();
        return Err(Refusal::new(ResponseError::InvalidTopicException, message));
    }
    broker
        .engine
        .topic(name)
        .map(|meta| meta.config)
        .ok_or_else(|| Refusal::unknown_topic(name))
}

fn unsupported_resource(resource_type: i8) -> Refusal {
    Refusal::invalid_request(format!(
        "config resource type {resource_type} is not supported; ringlog has topic \
         ({RESOURCE_TOPIC}) and broker ({RESOURCE_BROKER}) configs"
    ))
}

/// This node is the only broker: `""` (the default broker) or its id.
fn check_broker_name(name: &str) -> Result<(), Refusal> {
    if name.is_empty() || name == NODE_ID.to_string() {
        return Ok(());
    }
    Err(Refusal::invalid_request(format!(
        "unexpected broker id {name:?}: this node is broker {NODE_ID}"
    )))
}

fn topic_entries(config: &TopicConfig, defaults: &TopicConfig) -> Vec<Entry> {
    config
        .to_pairs()
        .into_iter()
        .map(|(name, value)| {
            let default = defaults.get(name).unwrap_or_default();
            let overridden = value != default;
            Entry {
                name,
                value,
                source: if overridden {
                    SOURCE_DYNAMIC_TOPIC_CONFIG
                } else {
                    SOURCE_DEFAULT_CONFIG
                },
                read_only: false,
                config_type: topic_key_type(name),
                default: overridden.then_some(default),
            }
        })
        .collect()
}

/// The Kafka config type of a topic key, for clients that show or validate it.
fn topic_key_type(key: &str) -> i8 {
    match key {
        keys::FLUSH_POLICY | keys::MESSAGE_TIMESTAMP_TYPE | keys::IO_MODE => TYPE_STRING,
        keys::SEGMENT_BYTES
        | keys::INDEX_INTERVAL_BYTES
        | keys::MAX_MESSAGE_BYTES
        | keys::MIN_INSYNC_REPLICAS => TYPE_INT,
        _ => TYPE_LONG,
    }
}

/// The broker settings DescribeConfigs shows: read-only, from `ringlog.toml` and flags.
fn broker_entries(broker: &Broker) -> Vec<Entry> {
    let config = &broker.config;
    let entry = |name, value: String, config_type| Entry {
        name,
        value,
        source: SOURCE_STATIC_BROKER_CONFIG,
        read_only: true,
        config_type,
        default: None,
    };
    vec![
        entry("node.id", NODE_ID.to_string(), TYPE_INT),
        entry("broker.id", NODE_ID.to_string(), TYPE_INT),
        entry(
            "listeners",
            format!("PLAINTEXT://{}", config.listen),
            TYPE_LIST,
        ),
        entry(
            "advertised.listeners",
            format!("PLAINTEXT://{}", config.advertised_listener),
            TYPE_LIST,
        ),
        entry(
            "log.dirs",
            config.data_dir.display().to_string(),
            TYPE_STRING,
        ),
        entry(
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        entry(
            "num.partitions",
            config.default_partitions.to_string(),
            TYPE_INT,
        ),
        entry("default.replication.factor", "1".to_owned(), TYPE_INT),
        entry(
            "socket.request.max.bytes",
            config.max_request_bytes.to_string(),
            TYPE_INT,
        ),
    ]
}

/// An entry in `version`'s shape: synonyms only when asked for, types from version 3.
fn entry_for_version(
    entry: Entry,
    include_synonyms: bool,
    version: i16,
) -> DescribeConfigsResourceResult {
    let name = StrBytes::from_static_str(entry.name);
    let synonyms = if include_synonyms {
        let synonym = |value: &str, source| {
            DescribeConfigsSynonym::default()
                .with_name(name.clone())
                .with_value(Some(StrBytes::from_string(value.to_owned())))
                .with_source(source)
        };
        let mut synonyms = vec![synonym(&entry.value, entry.source)];
        if let Some(default) = &entry.default {
            synonyms.push(synonym(default, SOURCE_DEFAULT_CONFIG));
        }
        synonyms
    } else {
        Vec::new()
    };
    let result = DescribeConfigsResourceResult::default()
        .with_name(name)
        .with_value(Some(StrBytes::from_string(entry.value)))
        .with_read_only(entry.read_only)
        .with_config_source(entry.source)
        .with_is_sensitive(false)
        .with_synonyms(synonyms);
    if version >= DESCRIBE_TYPES_VERSION {
        result
            .with_config_type(entry.config_type)
            .with_documentation(None)
    } else {
        result
    }
}

/// One resource of an alter request, whichever of the two APIs it came in.
struct AlterResource {
    resource_type: i8,
    name: StrBytes,
    /// `(key, operation, value)`; AlterConfigs' entries are all SETs.
    ops: Vec<(String, i8, Option<String>)>,
}

pub async fn alter(broker: &Broker, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let resources = request
        .resources
        .into_iter()
        .map(|resource| AlterResource {
            resource_type: resource.resource_type,
            name: resource.resource_name,
            ops: resource
                .configs
                .into_iter()
                .map(|c| (c.name.to_string(), OP_SET, c.value.map(|v| v.to_string())))
                .collect(),
        })
        .collect();
    let outcomes = alter_all(broker, resources, request.validate_only, Mode::Replace).await;
    let responses = outcomes
        .into_iter()
        .map(|(resource_type, name, outcome)| {
            let response = alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(name);
            match outcome {
                Ok(()) => response.with_error_message(None),
                Err(refusal) => response
                    .with_error_code(refusal.code)
                    .with_error_message(Some(StrBytes::from_string(refusal.message))),
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter(
    broker: &Broker,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let resources = request
        .resources
        .into_iter()
        .map(|resource| AlterResource {
            resource_type: resource.resource_type,
            name: resource.resource_name,
            ops: resource
                .configs
                .into_iter()
                .map(|c| {
                    let value = c.value.map(|v| v.to_string());
                    (c.name.to_string(), c.config_operation, value)
                })
                .collect(),
        })
        .collect();
    let outcomes = alter_all(broker, resources, request.validate_only, Mode::Incremental).await;
    let responses = outcomes
        .into_iter()
        .map(|(resource_type, name, outcome)| {
            let response =
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(name);
            match outcome {
                Ok(()) => response.with_error_message(None),
                Err(refusal) => response
                    .with_error_code(refusal.code)
                    .with_error_message(Some(StrBytes::from_string(refusal.message))),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// AlterConfigs replaces a configuration; IncrementalAlterConfigs edits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Replace,
    Incremental,
}

type Outcome = (i8, StrBytes, Result<(), Refusal>);

async fn alter_all(
    broker: &Broker,
    resources: Vec<AlterResource>,
    validate_only: bool,
    mode: Mode,
) -> Vec<Outcome> {
    let named: Vec<(i8, StrBytes)> = resources
        .iter()
        .map(|r| (r.resource_type, r.name.clone()))
        .collect();
    let mut outcomes = Vec::with_capacity(resources.len());
    for resource in resources {
        let key = (resource.resource_type, resource.name.clone());
        let outcome = if named.iter().filter(|named| **named == key).count() > 1 {
            Err(Refusal::invalid_request(format!(
                "resource {} (type {}) appears more than once in the request",
                resource.name, resource.resource_type
            )))
        } else {
            alter_resource(broker, &resource, validate_only, mode).await
        };
        outcomes.push((resource.resource_type, resource.name, outcome));
    }
    outcomes
}

async fn alter_resource(
    broker: &Broker,
    resource: &AlterResource,
    validate_only: bool,
    mode: Mode,
) -> Result<(), Refusal> {
    let name = resource.name.as_str();
    match resource.resource_type {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            check_broker_name(name)?;
            return Err(Refusal::invalid_request(
                "broker configs are static: set them in ringlog.toml or with `ringlog serve` \
                 flags and restart"
                    .to_owned(),
            ));
        }
        other => return Err(unsupported_resource(other)),
    }
    let current = topic_config(broker, name)?;
    let defaults = &broker.config.topic_defaults;
    let ops = &resource.ops;
    let next = match mode {
        Mode::Replace => replaced_config(defaults, ops)?,
        Mode::Incremental => edited_config(&current, defaults, ops)?,
    };
    if let Some(cluster) = broker.replicated(name) {
        return alter_replicated(cluster, name, next, ops, mode, validate_only).await;
    }
    if validate_only {
        return Ok(());
    }
    // The edit is computed again under the registry's lock, from the configuration as it
    // is then, so a concurrent edit of the same topic is not lost.
    let updated = broker
        .engine
        .update_config(name, |current| match mode {
            Mode::Replace => Ok(next),
            Mode::Incremental => edited_config(current, defaults, ops),
        })
        .await
        .map_err(|error| Refusal::engine(&error))?;
    updated.map(|_| ())
}

/// A replicated topic's change goes through the controller, from any node (one that does
/// not lead it forwards the change), and is answered once this node applied it. The
/// command carries values, never "the default": AlterConfigs sends the whole configuration
/// it computed (over this node's defaults); IncrementalAlterConfigs the keys the request
/// names (with their values in `next`), set over the configuration as each node has it
/// when it applies the command, so a concurrent edit of other keys is kept. Every named
/// key goes, changed or not here: this node's view may trail the controller's.
async fn alter_replicated(
    cluster: &ringlog_cluster::node::Cluster,
    name: &str,
    next: TopicConfig,
    ops: &[(String, i8, Option<String>)],
    mode: Mode,
    validate_only: bool,
) -> Result<(), Refusal> {
    let factor = (cluster.replication_factor(name)).unwrap_or(cluster.voters().len());
    crate::handlers::topics::check_min_insync(&next, Some(factor))
        .map_err(|(error, message)| Refusal::new(error, message))?;
    if validate_only {
        return Ok(());
    }
    let pairs = match mode {
        Mode::Replace => ringlog_cluster::controller::config_pairs(&next),
        Mode::Incremental => named_pairs(&next, ops),
    };
    if pairs.is_empty() {
        return Ok(());
    }
    cluster
        .alter_config_anywhere(name, pairs)
        .await
        .map(|_| ())
        .map_err(|error| Refusal {
            code: errors::cluster_code(&error),
            message: error.to_string(),
        })
}

/// The keys `ops` name, with their values in `next`; the flush keys all together if any
/// of them is named, since they make one policy (set together, they give `next`'s policy
/// whatever the current one is).
fn named_pairs(next: &TopicConfig, ops: &[(String, i8, Option<String>)]) -> Vec<(String, String)> {
    let named = |key: &str| ops.iter().any(|(op_key, ..)| op_key == key);
    let flush_named = FLUSH_KEYS.iter().any(|key| named(key));
    (next.to_pairs().into_iter())
        .filter(|(key, _)| named(key) || (flush_named && FLUSH_KEYS.contains(key)))
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// AlterConfigs: the defaults with the given keys set. Entries without a value are
/// skipped (they revert to the default), as Kafka's AlterConfigs does.
fn replaced_config(
    defaults: &TopicConfig,
    ops: &[(String, i8, Option<String>)],
) -> Result<TopicConfig, Refusal> {
    let mut config = defaults.clone();
    let pairs = ops
        .iter()
        .filter_map(|(key, _, value)| Some((key.as_str(), value.as_deref()?)));
    config.apply_all(pairs).map_err(|e| Refusal::config(&e))?;
    Ok(config)
}

/// IncrementalAlterConfigs: `current`'s overrides edited by `ops`, applied to the defaults.
/// Run under the registry's lock (`Engine::update_config`), so concurrent edits of one
/// topic apply one after the other.
fn edited_config(
    current: &TopicConfig,
    defaults: &TopicConfig,
    ops: &[(String, i8, Option<String>)],
) -> Result<TopicConfig, Refusal> {
    let mut overrides = overrides(current, defaults);
    for (index, (key, op, value)) in ops.iter().enumerate() {
        if ops[..index].iter().any(|(earlier, ..)| earlier == key) {
            let message = format!("config key {key} appears more than once in the request");
            return Err(Refusal::invalid_request(message));
        }
        if defaults.get(key).is_none() {
            let error = ConfigError::UnknownKey { key: key.clone() };
            return Err(Refusal::config(&error));
        }
        match *op {
            OP_SET | OP_DELETE => {
                let replaced: &[&str] = if is_policy_key(key) { &FLUSH_KEYS } else { &[] };
                overrides.retain(|(k, _)| k != key && !replaced.contains(&k.as_str()));
            }
            OP_APPEND | OP_SUBTRACT => {
                let message = format!(
                    "config {key} is not a list: APPEND and SUBTRACT apply only to list configs"
                );
                return Err(Refusal::new(ResponseError::InvalidConfig, message));
            }
            other => {
                let message = format!("unknown config operation {other} for {key}");
                return Err(Refusal::invalid_request(message));
            }
        }
        if *op == OP_SET {
            let Some(value) = value else {
                let message = format!("config {key}: SET needs a value");
                return Err(Refusal::invalid_request(message));
            };
            overrides.push((key.clone(), value.clone()));
        }
    }
    let mut next = defaults.clone();
    let pairs = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    next.apply_all(pairs).map_err(|e| Refusal::config(&e))?;
    Ok(next)
}

const FLUSH_KEYS: [&str; 4] = [
    keys::FLUSH_POLICY,
    keys::FLUSH_MS,
    keys::FLUSH_BYTES,
    keys::FLUSH_MESSAGES,
];

/// Keys that name a whole flush policy (rather than one trigger of a periodic one).
fn is_policy_key(key: &str) -> bool {
    key == keys::FLUSH_POLICY || key == keys::FLUSH_MESSAGES
}

/// The keys of `config` that differ from `defaults`, such that applying them to `defaults`
/// gives `config` back. The flush policy is written canonically (see the module doc).
fn overrides(config: &TopicConfig, defaults: &TopicConfig) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = config
        .to_pairs()
        .into_iter()
        .filter(|(key, value)| {
            !FLUSH_KEYS.contains(key) && defaults.get(key).as_deref() != Some(value.as_str())
        })
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    if config.flush() != defaults.flush() {
        pairs.extend(flush_pairs(config.flush()));
    }
    pairs
}

fn flush_pairs(flush: ringlog_engine::topic::FlushPolicy) -> Vec<(String, String)> {
    use ringlog_engine::topic::FlushPolicy;
    let text = |value: Option<u64>| value.map_or_else(|| "-1".to_owned(), |v| v.to_string());
    match flush {
        FlushPolicy::Always => vec![(keys::FLUSH_POLICY.to_owned(), "always".to_owned())],
        FlushPolicy::Never => vec![(keys::FLUSH_POLICY.to_owned(), "never".to_owned())],
        FlushPolicy::Periodic { interval_ms, bytes } => vec![
            (keys::FLUSH_MS.to_owned(), text(interval_ms)),
            (keys::FLUSH_BYTES.to_owned(), text(bytes)),
        ],
    }
}

#[cfg(test)]
mod tests;
