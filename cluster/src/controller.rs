//! The controller group ("raft0"): the cluster's metadata as a replicated log.
//!
//! The controller is a Raft group of every node, built like any replicated partition (a
//! [`crate::replica::Replica`] over a partition log), in `{data_dir}/__cluster_metadata-0`,
//! outside the topic registry so no Kafka client sees it (as Kafka's KRaft keeps its
//! metadata in `__cluster_metadata`). Its records are commands; every node applies the
//! committed ones in offset order, so every node's registry goes through the same
//! changes. Today the one command is *create topic*, carrying the topic id the proposer
//! drew and the topic's whole configuration, so every node creates the same topic with the
//! same id whatever its own defaults are.
//!
//! A command is the value of one record (key `"create-topic"`); its bytes, big-endian:
//!
//! | field      | type                | meaning                                   |
//! |------------|---------------------|-------------------------------------------|
//! | version    | u8                  | 1                                         |
//! | kind       | u8                  | 1: create topic                           |
//! | id         | 16 bytes            | the topic id (a UUID, never nil)          |
//! | partitions | u32                 | partition count                           |
//! | name       | u16 length + bytes  | the topic name (UTF-8, at most 249 bytes) |
//! | pairs      | u16 count           | configuration entries that follow         |
//! | key        | u16 length + bytes  | a topic configuration key                 |
//! | value      | u16 length + bytes  | its value                                 |
//!
//! Every length is bounded before it is trusted; a command that does not decode is an
//! error that stops the node's applying (it would mean a bug or damage), never skipped.

use ringlog_engine::topic::{ConfigError, TopicConfig, TopicName};

/// The directory name (under the data directory) of the controller's log.
pub const CONTROLLER_TOPIC: &str = "__cluster_metadata";
/// The record key of a create-topic command.
pub const CREATE_TOPIC_KEY: &[u8] = b"create-topic";

const VERSION: u8 = 1;
const KIND_CREATE_TOPIC: u8 = 1;
/// The most configuration entries a command carries (a topic has about a dozen keys).
const PAIRS_MAX: usize = 64;

/// A topic to create on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopic {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: u32,
    /// The whole configuration, as `TopicConfig::to_pairs` gives it.
    pub pairs: Vec<(String, String)>,
}

/// Why a command's bytes are not a command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    #[error("controller command truncated at byte {at}")]
    Truncated { at: usize },
    #[error("controller command version {0} is not 1")]
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
}

impl CreateTopic {
    /// The command for `config`'s topic.
    pub fn new(name: &TopicName, id: [u8; 16], partitions: u32, config: &TopicConfig) -> Self {
        CreateTopic {
            name: name.as_str().to_owned(),
            id,
            partitions,
            pairs: config
                .to_pairs()
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        }
    }

    /// The command's bytes (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.name.len() + self.pairs.len() * 48);
        out.push(VERSION);
        out.push(KIND_CREATE_TOPIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.partitions.to_be_bytes());
        put_str(&mut out, &self.name);
        let count = u16::try_from(self.pairs.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (key, value) in self.pairs.iter().take(usize::from(count)) {
            put_str(&mut out, key);
            put_str(&mut out, value);
        }
        out
    }

    /// Decodes a command, every length checked against what is left.
    pub fn decode(bytes: &[u8]) -> Result<CreateTopic, CommandError> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.u8()?;
        if version != VERSION {
            return Err(CommandError::Version(version));
        }
        let kind = reader.u8()?;
        if kind != KIND_CREATE_TOPIC {
            return Err(CommandError::Kind(kind));
        }
        let mut id = [0; 16];
        id.copy_from_slice(reader.take(16)?);
        let partitions = u32::from_be_bytes(reader.array()?);
        let name = reader.str()?;
        let count = usize::from(u16::from_be_bytes(reader.array()?));
        if count > PAIRS_MAX {
            return Err(CommandError::TooManyPairs(count));
        }
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            pairs.push((reader.str()?, reader.str()?));
        }
        let rest = bytes.len() - reader.at;
        if rest != 0 {
            return Err(CommandError::Trailing(rest));
        }
        Ok(CreateTopic {
            name,
            id,
            partitions,
            pairs,
        })
    }

    /// The topic's name, checked.
    pub fn topic_name(&self) -> Result<TopicName, CommandError> {
        TopicName::new(self.name.as_str()).map_err(|error| CommandError::Name(error.to_string()))
    }

    /// The topic's configuration, rebuilt from the command's entries over the defaults.
    pub fn config(&self) -> Result<TopicConfig, CommandError> {
        let mut config = TopicConfig::default();
        config
            .apply_all(self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(CommandError::Config)?;
        Ok(config)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> CreateTopic {
        let config = TopicConfig::builder()
            .retention_ms(None)
            .segment_bytes(1 << 20)
            .build()
            .unwrap();
        CreateTopic::new(&TopicName::new("orders").unwrap(), [7; 16], 6, &config)
    }

    #[test]
    fn a_command_round_trips_with_its_configuration() {
        let command = command();
        let decoded = CreateTopic::decode(&command.encode()).unwrap();
        assert_eq!(decoded, command);
        let config = decoded.config().unwrap();
        assert_eq!(config.retention_ms(), None);
        assert_eq!(config.segment_bytes(), 1 << 20);
        assert_eq!(decoded.topic_name().unwrap().as_str(), "orders");
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let bytes = command().encode();
        for len in 0..bytes.len() {
            assert!(
                CreateTopic::decode(&bytes[..len]).is_err(),
                "a command cut at {len} of {} bytes decoded",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(CreateTopic::decode(&longer), Err(CommandError::Trailing(1)));
        let mut wrong = bytes;
        wrong[1] = 9;
        assert_eq!(CreateTopic::decode(&wrong), Err(CommandError::Kind(9)));
    }

    #[test]
    fn too_many_pairs_are_refused_before_allocating() {
        let mut bytes = command().encode();
        // The pair count sits after version, kind, id, partitions and the name.
        let at = 2 + 16 + 4 + 2 + "orders".len();
        bytes[at..at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            CreateTopic::decode(&bytes),
            Err(CommandError::TooManyPairs(usize::from(u16::MAX)))
        );
    }
}
