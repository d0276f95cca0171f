//! Per-topic configuration: durability, I/O mode, segment rolling, retention, limits.
//!
//! Invariant: every [`TopicConfig`] that exists outside this module is valid — each number
//! lies within the bounds of its key (see [`keys`] and `crate::limits`), and a
//! [`FlushPolicy::Periodic`] has at least one trigger. The builder checks on `build`, the
//! Kafka-style string codec (`pairs`) checks each value as it parses it, and both report
//! the offending key and value in a [`ConfigError`].
//!
//! The partition count is not part of the configuration: Kafka keeps it apart (CreateTopics'
//! `num_partitions`, CreatePartitions) from the configs that DescribeConfigs and
//! AlterConfigs see, and keeping it apart means altering a config can never shrink a topic.
//! It lives in `TopicMeta`.

mod pairs;

use crate::batch::{TimestampType, BATCH_SIZE_BYTES_MAX, HEADER_SIZE_BYTES};
use crate::limits::{
    INDEX_INTERVAL_BYTES_MAX, MIN_INSYNC_REPLICAS_MAX, PREALLOCATE_STEP_BYTES_MAX,
    SEGMENT_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN, TOPIC_SETTING_VALUE_MAX,
};

/// The config keys a topic understands, as CreateTopics, DescribeConfigs and AlterConfigs
/// spell them. Kafka's own keys keep Kafka's meaning; `ringlog.*` and `flush.policy`,
/// `flush.bytes` are ringlog's.
pub mod keys {
    /// `always` | `never` | `periodic` (ringlog). `periodic` needs `flush.ms` or
    /// `flush.bytes`; setting either of those alone already implies `periodic`.
    pub const FLUSH_POLICY: &str = "flush.policy";
    /// Kafka: fdatasync at least this often, in ms. `-1` or Kafka's default
    /// `9223372036854775807` turn the time trigger off.
    pub const FLUSH_MS: &str = "flush.ms";
    /// ringlog: fdatasync once this many bytes are unsynced. `-1` turns it off.
    pub const FLUSH_BYTES: &str = "flush.bytes";
    /// Kafka: fdatasync every N messages. ringlog does not count messages: `1` (sync every
    /// write) means `flush.policy=always`, `-1` or `9223372036854775807` (Kafka's default)
    /// mean no count trigger, and any other count is refused in favour of `flush.bytes`.
    pub const FLUSH_MESSAGES: &str = "flush.messages";
    /// Kafka: roll the active segment at this size.
    pub const SEGMENT_BYTES: &str = "segment.bytes";
    /// Kafka: roll the active segment at this age; `-1` (ringlog) never rolls by time.
    pub const SEGMENT_MS: &str = "segment.ms";
    /// Kafka: delete closed segments older than this; `-1` keeps them forever.
    pub const RETENTION_MS: &str = "retention.ms";
    /// Kafka: delete oldest closed segments while the log is larger; `-1` = no limit.
    pub const RETENTION_BYTES: &str = "retention.bytes";
    /// Kafka: bytes of log between two entries of the sparse offset index.
    pub const INDEX_INTERVAL_BYTES: &str = "index.interval.bytes";
    /// Kafka: the largest record batch the topic accepts, header included.
    pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
    /// Kafka: `CreateTime` | `LogAppendTime`.
    pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";
    /// Kafka: the fewest in-sync replicas (the leader included) a produce with acks=all
    /// needs to a replicated partition; with fewer it is refused (NOT_ENOUGH_REPLICAS)
    /// without being written. No effect on a single node, which is its only replica.
    pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
    /// ringlog: `buffered` (page cache) | `direct` (O_DIRECT).
    pub const IO_MODE: &str = "ringlog.io.mode";
    /// ringlog: the largest step a partition preallocates its segment file by (steps start
    /// small and grow with the write rate, within the node's budget); `0` preallocates only
    /// what each write needs.
    pub const PREALLOCATE_BYTES: &str = "ringlog.preallocate.bytes";

    /// Every key, in the order `TopicConfig::to_pairs` lists them.
    pub const ALL: [&str; 14] = [
        FLUSH_POLICY,
        FLUSH_MS,
        FLUSH_BYTES,
        FLUSH_MESSAGES,
        SEGMENT_BYTES,
        SEGMENT_MS,
        RETENTION_MS,
        RETENTION_BYTES,
        INDEX_INTERVAL_BYTES,
        MAX_MESSAGE_BYTES,
        MESSAGE_TIMESTAMP_TYPE,
        MIN_INSYNC_REPLICAS,
        IO_MODE,
        PREALLOCATE_BYTES,
    ];
}

const MS_PER_DAY: u64 = 24 * 60 * 60 * 1000;

/// The default `segment.bytes`: 1 GiB, as in Kafka.
pub const SEGMENT_BYTES_DEFAULT: u64 = 1 << 30;
/// The default `segment.ms` and `retention.ms`: 7 days, as in Kafka.
pub const SEVEN_DAYS_MS: u64 = 7 * MS_PER_DAY;
/// The default `index.interval.bytes`: 4 KiB, as in Kafka.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;
/// The default `max.message.bytes`: 1 MiB + 12 bytes (the log overhead), as in Kafka.
pub const MAX_MESSAGE_BYTES_DEFAULT: u32 = 1_048_588;
/// The default largest fallocate step: 64 MiB.
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 64 << 20;

/// When the appender fdatasyncs a partition's active segment.
///
/// Whatever the policy, an `acks=all` produce waits for the fdatasync covering its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushPolicy {
    /// fdatasync after every group commit; consumers only see durable records.
    Always,
    /// Leave writeback to the OS (Kafka's default).
    Never,
    /// fdatasync when `interval_ms` has passed since the last one or `bytes` are unsynced,
    /// whichever comes first. At least one of the two is set.
    Periodic {
        interval_ms: Option<u64>,
        bytes: Option<u64>,
    },
}

impl FlushPolicy {
    /// A periodic policy from its triggers, or `Never` when neither is set.
    pub fn periodic(interval_ms: Option<u64>, bytes: Option<u64>) -> FlushPolicy {
        if interval_ms.is_none() && bytes.is_none() {
            FlushPolicy::Never
        } else {
            FlushPolicy::Periodic { interval_ms, bytes }
        }
    }
}

/// How segment files are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoMode {
    /// Through the page cache.
    Buffered,
    /// O_DIRECT from aligned staging buffers into preallocated files.
    Direct,
}

/// Why a topic configuration, or one key=value of it, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The key is not one ringlog knows (see [`keys::ALL`]).
    #[error("unknown topic config key {key:?}")]
    UnknownKey { key: String },
    /// The same key appears twice in one request.
    #[error("topic config key {key:?} is given more than once")]
    DuplicateKey { key: String },
    /// A numeric key's value does not parse as a signed 64-bit integer.
    #[error("topic config {key}={value:?}: not an integer")]
    NotAnInteger {
        key: &'static str,
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    /// A numeric key's value is outside its bounds.
    #[error("topic config {key}={value}: out of range, expected {expected}")]
    OutOfRange {
        key: &'static str,
        value: String,
        expected: String,
    },
    /// A key that takes one of a few words got something else.
    #[error("topic config {key}={value:?}: expected one of {expected}")]
    NotAChoice {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A Kafka setting ringlog understands but cannot honour with this value.
    #[error("topic config {key}={value}: not supported; {hint}")]
    Unsupported {
        key: &'static str,
        value: String,
        hint: &'static str,
    },
    /// `flush.policy=periodic` without a time or byte trigger.
    #[error(
        "topic config flush.policy=periodic needs flush.ms or flush.bytes \
         (either alone already implies periodic)"
    )]
    PeriodicWithoutTrigger,
    /// Two flush keys of one request ask for different policies.
    #[error("topic config {key}={value} contradicts the resulting flush policy {policy:?}")]
    FlushConflict {
        key: &'static str,
        value: String,
        policy: FlushPolicy,
    },
}

/// One topic's configuration; see the module documentation for its invariant.
///
/// ```
/// use ringlog_engine::topic::{FlushPolicy, TopicConfig};
/// let mut config = TopicConfig::builder().segment_bytes(64 << 20).build().unwrap();
/// config.apply("flush.ms", "100").unwrap();
/// assert_eq!(config.flush(), FlushPolicy::Periodic { interval_ms: Some(100), bytes: None });
/// assert!(config.apply("segment.bytes", "0").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    flush: FlushPolicy,
    io_mode: IoMode,
    segment_bytes: u64,
    segment_ms: Option<u64>,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    index_interval_bytes: u32,
    max_message_bytes: u32,
    timestamp_type: TimestampType,
    min_insync_replicas: u32,
    preallocate_bytes: u64,
}

impl Default for TopicConfig {
    /// Kafka's defaults where Kafka has the key; buffered I/O and a 64 MiB fallocate step.
    fn default() -> TopicConfig {
        TopicConfig {
            flush: FlushPolicy::Never,
            io_mode: IoMode::Buffered,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_ms: Some(SEVEN_DAYS_MS),
            retention_ms: Some(SEVEN_DAYS_MS),
            retention_bytes: None,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            max_message_bytes: MAX_MESSAGE_BYTES_DEFAULT,
            timestamp_type: TimestampType::CreateTime,
            min_insync_replicas: 1,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
        }
    }
}

impl TopicConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> TopicConfigBuilder {
        TopicConfigBuilder {
            config: TopicConfig::default(),
        }
    }

    /// When the active segment is fdatasynced.
    pub fn flush(&self) -> FlushPolicy {
        self.flush
    }
    /// Page cache or O_DIRECT.
    pub fn io_mode(&self) -> IoMode {
        self.io_mode
    }
    /// Sets the I/O mode (every mode is valid with every other setting).
    pub fn set_io_mode(&mut self, io_mode: IoMode) {
        self.io_mode = io_mode;
    }
    /// The size at which the active segment rolls.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }
    /// The age at which the active segment rolls; `None` never rolls by time.
    pub fn segment_ms(&self) -> Option<u64> {
        self.segment_ms
    }
    /// The age after which closed segments are deleted; `None` keeps them forever.
    pub fn retention_ms(&self) -> Option<u64> {
        self.retention_ms
    }
    /// The log size above which the oldest closed segments are deleted; `None` = no limit.
    pub fn retention_bytes(&self) -> Option<u64> {
        self.retention_bytes
    }
    /// Bytes of log between two offset-index entries.
    pub fn index_interval_bytes(&self) -> u32 {
        self.index_interval_bytes
    }
    /// The largest record batch accepted, header included.
    pub fn max_message_bytes(&self) -> u32 {
        self.max_message_bytes
    }
    /// Whose clock stamps the records.
    pub fn timestamp_type(&self) -> TimestampType {
        self.timestamp_type
    }
    /// The fewest in-sync replicas an acks=all produce to a replicated partition needs.
    pub fn min_insync_replicas(&self) -> u32 {
        self.min_insync_replicas
    }
    /// The largest step a partition's segment file grows by per fallocate (see
    /// `log/prealloc.rs` for how the step adapts); `0` preallocates only what each write
    /// needs.
    pub fn preallocate_bytes(&self) -> u64 {
        self.preallocate_bytes
    }

    /// Checks every field against its bounds; the first violation is returned.
    fn validate(&self) -> Result<(), ConfigError> {
        if let FlushPolicy::Periodic { interval_ms, bytes } = self.flush {
            if interval_ms.is_none() && bytes.is_none() {
                return Err(ConfigError::PeriodicWithoutTrigger);
            }
            check_optional(keys::FLUSH_MS, interval_ms)?;
            check_optional(keys::FLUSH_BYTES, bytes)?;
        }
        check(keys::SEGMENT_BYTES, self.segment_bytes)?;
        check_optional(keys::SEGMENT_MS, self.segment_ms)?;
        check_optional(keys::RETENTION_MS, self.retention_ms)?;
        check_optional(keys::RETENTION_BYTES, self.retention_bytes)?;
        check(keys::INDEX_INTERVAL_BYTES, self.index_interval_bytes.into())?;
        check(keys::MAX_MESSAGE_BYTES, self.max_message_bytes.into())?;
        check(keys::MIN_INSYNC_REPLICAS, self.min_insync_replicas.into())?;
        check(keys::PREALLOCATE_BYTES, self.preallocate_bytes)
    }
}

/// Builds a [`TopicConfig`] from the defaults; `build` checks every bound.
#[derive(Clone, Debug)]
#[must_use]
pub struct TopicConfigBuilder {
    config: TopicConfig,
}

impl TopicConfigBuilder {
    /// See [`TopicConfig::flush`].
    pub fn flush(mut self, flush: FlushPolicy) -> Self {
        self.config.flush = flush;
        self
    }
    /// See [`TopicConfig::io_mode`].
    pub fn io_mode(mut self, io_mode: IoMode) -> Self {
        self.config.io_mode = io_mode;
        self
    }
    /// See [`TopicConfig::segment_bytes`].
    pub fn segment_bytes(mut self, segment_bytes: u64) -> Self {
        self.config.segment_bytes = segment_bytes;
        self
    }
    /// See [`TopicConfig::segment_ms`].
    pub fn segment_ms(mut self, segment_ms: Option<u64>) -> Self {
        self.config.segment_ms = segment_ms;
        self
    }
    /// See [`TopicConfig::retention_ms`].
    pub fn retention_ms(mut self, retention_ms: Option<u64>) -> Self {
        self.config.retention_ms = retention_ms;
        self
    }
    /// See [`TopicConfig::retention_bytes`].
    pub fn retention_bytes(mut self, retention_bytes: Option<u64>) -> Self {
        self.config.retention_bytes = retention_bytes;
        self
    }
    /// See [`TopicConfig::index_interval_bytes`].
    pub fn index_interval_bytes(mut self, index_interval_bytes: u32) -> Self {
        self.config.index_interval_bytes = index_interval_bytes;
        self
    }
    /// See [`TopicConfig::max_message_bytes`].
    pub fn max_message_bytes(mut self, max_message_bytes: u32) -> Self {
        self.config.max_message_bytes = max_message_bytes;
        self
    }
    /// See [`TopicConfig::timestamp_type`].
    pub fn timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.config.timestamp_type = timestamp_type;
        self
    }
    /// See [`TopicConfig::min_insync_replicas`].
    pub fn min_insync_replicas(mut self, min_insync_replicas: u32) -> Self {
        self.config.min_insync_replicas = min_insync_replicas;
        self
    }
    /// See [`TopicConfig::preallocate_bytes`].
    pub fn preallocate_bytes(mut self, preallocate_bytes: u64) -> Self {
        self.config.preallocate_bytes = preallocate_bytes;
        self
    }

    /// The configuration, if every field is within its bounds.
    pub fn build(self) -> Result<TopicConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// The bounds of a numeric key: `min..=max`, and whether `-1` means "none" (infinite/off).
#[derive(Clone, Copy, Debug)]
struct Bounds {
    min: u64,
    max: u64,
    none_allowed: bool,
}

/// The one table of numeric bounds; both the builder and the string codec consult it.
fn bounds(key: &'static str) -> Bounds {
    let (min, max, none_allowed) = match key {
        // Kafka's `flush.ms` default, Long.MAX_VALUE, means "off", so it is not a value.
        keys::FLUSH_MS => (1, TOPIC_SETTING_VALUE_MAX - 1, true),
        keys::FLUSH_BYTES | keys::SEGMENT_MS => (1, TOPIC_SETTING_VALUE_MAX, true),
        keys::RETENTION_MS | keys::RETENTION_BYTES => (0, TOPIC_SETTING_VALUE_MAX, true),
        keys::SEGMENT_BYTES => (SEGMENT_SIZE_BYTES_MIN, SEGMENT_SIZE_BYTES_MAX, false),
        keys::INDEX_INTERVAL_BYTES => (0, INDEX_INTERVAL_BYTES_MAX.into(), false),
        keys::MAX_MESSAGE_BYTES => (HEADER_SIZE_BYTES as u64, BATCH_SIZE_BYTES_MAX as u64, false),
        keys::PREALLOCATE_BYTES => (0, PREALLOCATE_STEP_BYTES_MAX, false),
        keys::MIN_INSYNC_REPLICAS => (1, MIN_INSYNC_REPLICAS_MAX, false),
        _ => unreachable!("no numeric bounds for config key {key}"),
    };
    Bounds {
        min,
        max,
        none_allowed,
    }
}

fn out_of_range(key: &'static str, value: String) -> ConfigError {
    let Bounds {
        min,
        max,
        none_allowed,
    } = bounds(key);
    let none = if none_allowed { " or -1 (none)" } else { "" };
    ConfigError::OutOfRange {
        key,
        value,
        expected: format!("{min}..={max}{none}"),
    }
}

fn check(key: &'static str, value: u64) -> Result<(), ConfigError> {
    let Bounds { min, max, .. } = bounds(key);
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(out_of_range(key, value.to_string()))
    }
}

fn check_optional(key: &'static str, value: Option<u64>) -> Result<(), ConfigError> {
    value.map_or(Ok(()), |value| check(key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_kafka_where_kafka_has_the_key() {
        let config = TopicConfig::default();
        assert_eq!(config.segment_bytes(), 1_073_741_824);
        assert_eq!(config.segment_ms(), Some(604_800_000));
        assert_eq!(config.retention_ms(), Some(604_800_000));
        assert_eq!(config.retention_bytes(), None);
        assert_eq!(config.index_interval_bytes(), 4096);
        assert_eq!(config.max_message_bytes(), 1_048_588);
        assert_eq!(config.timestamp_type(), TimestampType::CreateTime);
        assert_eq!(config.flush(), FlushPolicy::Never);
        assert_eq!(config.io_mode(), IoMode::Buffered);
        assert_eq!(config.preallocate_bytes(), 64 << 20);
        assert_eq!(TopicConfig::builder().build(), Ok(config));
    }

    #[test]
    fn builder_sets_every_field() {
        let config = TopicConfig::builder()
            .flush(FlushPolicy::Always)
            .io_mode(IoMode::Direct)
            .segment_bytes(1 << 20)
            .segment_ms(None)
            .retention_ms(Some(0))
            .retention_bytes(Some(1 << 30))
            .index_interval_bytes(0)
            .max_message_bytes(1 << 20)
            .timestamp_type(TimestampType::LogAppendTime)
            .preallocate_bytes(0)
            .build()
            .unwrap();
        assert_eq!(config.flush(), FlushPolicy::Always);
        assert_eq!(config.io_mode(), IoMode::Direct);
        assert_eq!(config.segment_bytes(), 1 << 20);
        assert_eq!(config.segment_ms(), None);
        assert_eq!(config.retention_ms(), Some(0));
        assert_eq!(config.retention_bytes(), Some(1 << 30));
        assert_eq!(config.index_interval_bytes(), 0);
        assert_eq!(config.max_message_bytes(), 1 << 20);
        assert_eq!(config.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(config.preallocate_bytes(), 0);
    }

    #[test]
    fn builder_refuses_out_of_bounds_values_naming_the_key() {
        let cases: [(TopicConfigBuilder, &str, &str); 7] = [
            (
                TopicConfig::builder().segment_bytes(4095),
                keys::SEGMENT_BYTES,
                "4095",
            ),
            (
                TopicConfig::builder().segment_bytes(1 << 31),
                keys::SEGMENT_BYTES,
                "2147483648",
            ),
            (
                TopicConfig::builder().segment_ms(Some(0)),
                keys::SEGMENT_MS,
                "0",
            ),
            (
                TopicConfig::builder().max_message_bytes(60),
                keys::MAX_MESSAGE_BYTES,
                "60",
            ),
            (
                TopicConfig::builder().max_message_bytes(16 * 1024 * 1024 + 1),
                keys::MAX_MESSAGE_BYTES,
                "16777217",
            ),
            (
                TopicConfig::builder().flush(FlushPolicy::periodic(Some(0), None)),
                keys::FLUSH_MS,
                "0",
            ),
            (
                TopicConfig::builder().retention_bytes(Some(u64::MAX)),
                keys::RETENTION_BYTES,
                "18446744073709551615",
            ),
        ];
        for (builder, key, value) in cases {
            match builder.build() {
                Err(ConfigError::OutOfRange {
                    key: k, value: v, ..
                }) => {
                    assert_eq!((k, v.as_str()), (key, value));
                }
                other => panic!("{key}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn bounds_are_inclusive_at_both_ends() {
        let smallest = TopicConfig::builder()
            .segment_bytes(SEGMENT_SIZE_BYTES_MIN)
            .max_message_bytes(HEADER_SIZE_BYTES as u32)
            .build();
        assert!(smallest.is_ok(), "{smallest:?}");
        let largest = TopicConfig::builder()
            .segment_bytes(SEGMENT_SIZE_BYTES_MAX)
            .max_message_bytes(BATCH_SIZE_BYTES_MAX as u32)
            .retention_ms(Some(TOPIC_SETTING_VALUE_MAX))
            .build();
        assert!(largest.is_ok(), "{largest:?}");
    }

    #[test]
    fn periodic_without_trigger_cannot_be_built() {
        let empty = FlushPolicy::Periodic {
            interval_ms: None,
            bytes: None,
        };
        assert_eq!(
            TopicConfig::builder().flush(empty).build(),
            Err(ConfigError::PeriodicWithoutTrigger)
        );
        assert_eq!(FlushPolicy::periodic(None, None), FlushPolicy::Never);
    }
}
