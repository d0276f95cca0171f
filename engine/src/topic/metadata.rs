//! The on-disk form of topic metadata: the data directory marker and `topics.json`.
//!
//! `ringlog.meta` marks a directory as ringlog's. It is one line of text:
//!
//! | bytes | content |
//! | --- | --- |
//! | `ringlog-data-dir 1\n` | magic word, one space, the data directory format version |
//!
//! `topics.json` is a JSON document (UTF-8, pretty-printed so an operator can read it):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `format` | string | always `"ringlog-topics"` |
//! | `version` | integer | `1` |
//! | `topics` | array | one object per topic, sorted by name |
//! | `topics[].name` | string | a legal topic name |
//! | `topics[].id` | string | the topic id, a UUID in hyphenated form |
//! | `topics[].partitions` | integer | 1..=`PARTITIONS_PER_TOPIC_MAX` |
//! | `topics[].config` | object | every key of `TopicConfig::to_pairs`, values as strings |
//!
//! Invariant of decoding: a file either decodes to a set of topics that a registry could
//! have written — legal, distinct and non-colliding names, distinct ids, partition counts
//! and configs in bounds — or is refused with an error naming the path. An unknown
//! `format` or `version` is refused as unsupported, never read as empty. Config keys absent
//! from a file (written before the key existed) take their defaults.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{MetadataError, TopicConfig, TopicError, TopicName};
use crate::limits::PARTITIONS_PER_TOPIC_MAX;

/// The name of the data directory marker file.
pub const MARKER_FILE_NAME: &str = "ringlog.meta";
/// The name of the topic metadata file.
pub const TOPICS_FILE_NAME: &str = "topics.json";

const MARKER_MAGIC: &str = "ringlog-data-dir";
const MARKER_VERSION: u32 = 1;
const TOPICS_FORMAT: &str = "ringlog-topics";
const TOPICS_VERSION: u32 = 1;

/// One topic as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    /// The topic's name.
    pub name: TopicName,
    /// The topic id (a random UUID v4) Kafka clients see in Metadata responses; a topic
    /// deleted and created again under the same name gets a new one.
    pub id: [u8; 16],
    /// Partitions `0..partitions`.
    pub partitions: u32,
    /// The topic's configuration.
    pub config: TopicConfig,
}

impl TopicMeta {
    /// The id as a hyphenated UUID string.
    pub fn id_hyphenated(&self) -> String {
        Uuid::from_bytes(self.id).hyphenated().to_string()
    }
}

/// The content of a new marker file.
pub(crate) fn encode_marker() -> Vec<u8> {
    format!("{MARKER_MAGIC} {MARKER_VERSION}\n").into_bytes()
}

/// Accepts a marker of the version this build writes.
pub(crate) fn check_marker(path: &Path, bytes: &[u8]) -> Result<(), TopicError> {
    let text = String::from_utf8_lossy(bytes);
    let corrupt = || TopicError::corrupt(path, MetadataError::Marker(text.clone().into_owned()));
    let line = text.strip_suffix('\n').ok_or_else(corrupt)?;
    let (magic, version) = line.split_once(' ').ok_or_else(corrupt)?;
    if magic != MARKER_MAGIC || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt());
    }
    if version != MARKER_VERSION.to_string() {
        return Err(unsupported(
            path,
            format!("{magic} {version}"),
            MARKER_MAGIC,
            MARKER_VERSION,
        ));
    }
    Ok(())
}

fn unsupported(path: &Path, found: String, format: &str, version: u32) -> TopicError {
    TopicError::UnsupportedFormat {
        path: path.to_owned(),
        found,
        expected: format!("{format} {version}"),
    }
}

#[derive(Deserialize)]
struct FileHeader {
    format: String,
    version: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFileV1 {
    format: String,
    version: u32,
    topics: Vec<TopicRecordV1>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicRecordV1 {
    name: String,
    id: String,
    partitions: u32,
    config: BTreeMap<String, String>,
}

/// The content of `topics.json` holding `topics`.
pub(crate) fn encode_topics<'a>(topics: impl Iterator<Item = &'a TopicMeta>) -> Vec<u8> {
    let file = TopicsFileV1 {
        format: TOPICS_FORMAT.to_owned(),
        version: TOPICS_VERSION,
        topics: topics.map(record_of).collect(),
    };
    // Serializing strings, integers and string maps cannot fail.
    let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_else(|error| {
        unreachable!("topics.json encoding failed: {error}");
    });
    bytes.push(b'\n');
    bytes
}

fn record_of(meta: &TopicMeta) -> TopicRecordV1 {
    let config = meta.config.to_pairs().into_iter();
    TopicRecordV1 {
        name: meta.name.to_string(),
        id: meta.id_hyphenated(),
        partitions: meta.partitions,
        config: config.map(|(key, value)| (key.to_owned(), value)).collect(),
    }
}

/// Decodes `topics.json`; see the module documentation for what is refused.
pub(crate) fn decode_topics(
    path: &Path,
    bytes: &[u8],
) -> Result<BTreeMap<TopicName, TopicMeta>, TopicError> {
    let corrupt = |source: MetadataError| TopicError::corrupt(path, source);
    let header: FileHeader = serde_json::from_slice(bytes).map_err(|e| corrupt(e.into()))?;
    if header.format != TOPICS_FORMAT || header.version != u64::from(TOPICS_VERSION) {
        let found = format!("{} {}", header.format, header.version);
        return Err(unsupported(path, found, TOPICS_FORMAT, TOPICS_VERSION));
    }
    let file: TopicsFileV1 = serde_json::from_slice(bytes).map_err(|e| corrupt(e.into()))?;
    let mut topics = BTreeMap::new();
    let mut by_collision_key: BTreeMap<String, String> = BTreeMap::new();
    let mut by_id: BTreeMap<[u8; 16], String> = BTreeMap::new();
    for record in file.topics {
        let meta = decode_topic(record).map_err(corrupt)?;
        let name = meta.name.to_string();
        if let Some(other) = by_collision_key.insert(meta.name.collision_key(), name.clone()) {
            return Err(corrupt(MetadataError::Duplicate { topic: name, other }));
        }
        if let Some(other) = by_id.insert(meta.id, name.clone()) {
            let id = meta.id_hyphenated();
            return Err(corrupt(MetadataError::DuplicateId {
                topic: name,
                other,
                id,
            }));
        }
        topics.insert(meta.name.clone(), meta);
    }
    Ok(topics)
}

fn decode_topic(record: TopicRecordV1) -> Result<TopicMeta, MetadataError> {
    let name = TopicName::new(record.name.as_str()).map_err(|source| MetadataError::Name {
        name: record.name.clone(),
        source,
    })?;
    let id = Uuid::parse_str(&record.id).map_err(|source| MetadataError::Id {
        topic: record.name.clone(),
        id: record.id.clone(),
        source,
    })?;
    if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&record.partitions) {
        return Err(MetadataError::PartitionCount {
            topic: record.name,
            count: record.partitions,
        });
    }
    let mut config = TopicConfig::default();
    let pairs = record
        .config
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()));
    config
        .apply_all(pairs)
        .map_err(|source| MetadataError::Config {
            topic: record.name.clone(),
            source,
        })?;
    Ok(TopicMeta {
        name,
        id: id.into_bytes(),
        partitions: record.partitions,
        config,
    })
}

#[cfg(test)]
mod tests;
