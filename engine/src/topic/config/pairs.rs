//! The Kafka-style string form of a [`TopicConfig`]: `key=value` pairs as CreateTopics,
//! DescribeConfigs and AlterConfigs carry them, and as `topics.json` stores them.
//!
//! Invariants: `apply` changes nothing unless it succeeds; `apply_all` changes nothing
//! unless every pair succeeds, and its result does not depend on the order of the pairs
//! (Kafka sends configs as a map); `to_pairs` lists every key of [`keys::ALL`], and
//! `apply_all(to_pairs())` on any configuration gives back the same configuration.
//!
//! Numbers are decimal signed 64-bit integers, as Kafka sends them. Where a key allows
//! "none", `-1` says so, as in Kafka's `retention.ms=-1`; `flush.ms` and `flush.messages`
//! also take Kafka's default `9223372036854775807` as "off", and print it, so a config
//! copied from a Kafka broker is accepted unchanged. The words are case-sensitive, as in
//! Kafka (`CreateTime`, not `createtime`).

use super::{bounds, keys, out_of_range, ConfigError, FlushPolicy, IoMode, TopicConfig};
use crate::batch::TimestampType;

/// What Kafka prints for a disabled `flush.ms` or `flush.messages`.
const KAFKA_OFF: i64 = i64::MAX;

const FLUSH_POLICY_WORDS: &str = "always, never, periodic";
const TIMESTAMP_TYPE_WORDS: &str = "CreateTime, LogAppendTime";
const IO_MODE_WORDS: &str = "buffered, direct";
const FLUSH_MESSAGES_HINT: &str = "ringlog does not count messages: use flush.messages=1 (or \
     flush.policy=always) to sync every write, or flush.bytes / flush.ms";

impl TopicConfig {
    /// Sets one key from its string value; on error nothing changes and the error names the
    /// key and the value.
    ///
    /// `flush.ms` or `flush.bytes` with a value makes the policy periodic (keeping the other
    /// trigger if it was periodic already); with `-1` it drops that trigger, and a periodic
    /// policy left without triggers becomes `never`.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let key = known_key(key)?;
        match key {
            keys::FLUSH_POLICY => self.flush = parse_flush_policy(self.flush, value)?,
            keys::FLUSH_MS => self.flush = with_interval(self.flush, parse(key, value)?),
            keys::FLUSH_BYTES => self.flush = with_bytes(self.flush, parse(key, value)?),
            keys::FLUSH_MESSAGES => self.flush = parse_flush_messages(self.flush, value)?,
            keys::SEGMENT_BYTES => self.segment_bytes = parse_required(key, value)?,
            keys::SEGMENT_MS => self.segment_ms = parse(key, value)?,
            keys::RETENTION_MS => self.retention_ms = parse(key, value)?,
            keys::RETENTION_BYTES => self.retention_bytes = parse(key, value)?,
            keys::INDEX_INTERVAL_BYTES => {
                self.index_interval_bytes = narrow(key, parse_required(key, value)?)?;
            }
            keys::MAX_MESSAGE_BYTES => {
                self.max_message_bytes = narrow(key, parse_required(key, value)?)?;
            }
            keys::MESSAGE_TIMESTAMP_TYPE => self.timestamp_type = parse_timestamp_type(value)?,
            keys::MIN_INSYNC_REPLICAS => {
                self.min_insync_replicas = narrow(key, parse_required(key, value)?)?;
            }
            keys::IO_MODE => self.io_mode = parse_io_mode(value)?,
            keys::PREALLOCATE_BYTES => self.preallocate_bytes = parse_required(key, value)?,
            _ => unreachable!("known_key returned {key}, which apply does not handle"),
        }
        debug_assert_eq!(self.validate(), Ok(()));
        Ok(())
    }

    /// Sets every pair, all or nothing, as one CreateTopics or AlterConfigs request does.
    ///
    /// A key given twice is refused. `flush.policy` is applied after the other keys, and
    /// every flush key must agree with the policy that results (`flush.policy=always` with
    /// `flush.ms=100` is refused rather than one of them silently losing).
    pub fn apply_all<'a, I>(&mut self, pairs: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut next = self.clone();
        let mut seen: Vec<&'static str> = Vec::with_capacity(keys::ALL.len());
        let mut flush_pairs: Vec<(&'static str, &str)> = Vec::new();
        // Every key is known and distinct or the loop returns, so it runs at most
        // `keys::ALL.len() + 1` times whatever a request holds.
        for (key, value) in pairs {
            let key = known_key(key)?;
            if seen.contains(&key) {
                return Err(ConfigError::DuplicateKey {
                    key: key.to_owned(),
                });
            }
            seen.push(key);
            if is_flush_key(key) {
                flush_pairs.push((key, value));
            }
            if key != keys::FLUSH_POLICY {
                next.apply(key, value)?;
            }
        }
        if let Some(&(key, value)) = flush_pairs.iter().find(|(k, _)| *k == keys::FLUSH_POLICY) {
            next.apply(key, value)?;
        }
        for (key, value) in flush_pairs {
            let mut probe = next.clone();
            probe.apply(key, value)?;
            if probe.flush != next.flush {
                return Err(ConfigError::FlushConflict {
                    key,
                    value: value.to_owned(),
                    policy: next.flush,
                });
            }
        }
        *self = next;
        Ok(())
    }

    /// Every key with its current value, in the order of [`keys::ALL`] (DescribeConfigs).
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        keys::ALL
            .iter()
            .map(|&key| (key, self.value_of(key)))
            .collect()
    }

    /// The current value of one key, or `None` for a key ringlog does not know.
    pub fn get(&self, key: &str) -> Option<String> {
        known_key(key).ok().map(|key| self.value_of(key))
    }

    fn value_of(&self, key: &'static str) -> String {
        let (interval_ms, flush_bytes) = match self.flush {
            FlushPolicy::Periodic { interval_ms, bytes } => (interval_ms, bytes),
            FlushPolicy::Always | FlushPolicy::Never => (None, None),
        };
        match key {
            keys::FLUSH_POLICY => flush_policy_word(self.flush).to_owned(),
            keys::FLUSH_MS => interval_ms.map_or(KAFKA_OFF.to_string(), |ms| ms.to_string()),
            keys::FLUSH_BYTES => optional_text(flush_bytes),
            keys::FLUSH_MESSAGES if self.flush == FlushPolicy::Always => "1".to_owned(),
            keys::FLUSH_MESSAGES => KAFKA_OFF.to_string(),
            keys::SEGMENT_BYTES => self.segment_bytes.to_string(),
            keys::SEGMENT_MS => optional_text(self.segment_ms),
            keys::RETENTION_MS => optional_text(self.retention_ms),
            keys::RETENTION_BYTES => optional_text(self.retention_bytes),
            keys::INDEX_INTERVAL_BYTES => self.index_interval_bytes.to_string(),
            keys::MAX_MESSAGE_BYTES => self.max_message_bytes.to_string(),
            keys::MESSAGE_TIMESTAMP_TYPE => timestamp_type_word(self.timestamp_type).to_owned(),
            keys::MIN_INSYNC_REPLICAS => self.min_insync_replicas.to_string(),
            keys::IO_MODE => io_mode_word(self.io_mode).to_owned(),
            keys::PREALLOCATE_BYTES => self.preallocate_bytes.to_string(),
            _ => unreachable!("value_of called with unknown key {key}"),
        }
    }
}

/// The `'static` spelling of a known key.
fn known_key(key: &str) -> Result<&'static str, ConfigError> {
    keys::ALL
        .iter()
        .copied()
        .find(|known| *known == key)
        .ok_or_else(|| ConfigError::UnknownKey {
            key: key.to_owned(),
        })
}

fn is_flush_key(key: &str) -> bool {
    matches!(
        key,
        keys::FLUSH_POLICY | keys::FLUSH_MS | keys::FLUSH_BYTES | keys::FLUSH_MESSAGES
    )
}

fn parse_i64(key: &'static str, value: &str) -> Result<i64, ConfigError> {
    value.parse().map_err(|source| ConfigError::NotAnInteger {
        key,
        value: value.to_owned(),
        source,
    })
}

/// A number within the key's bounds, or `None` for `-1` where the key allows none.
fn parse(key: &'static str, value: &str) -> Result<Option<u64>, ConfigError> {
    let number = parse_i64(key, value)?;
    let key_bounds = bounds(key);
    let is_none = number == -1 || (key == keys::FLUSH_MS && number == KAFKA_OFF);
    if key_bounds.none_allowed && is_none {
        return Ok(None);
    }
    u64::try_from(number)
        .ok()
        .filter(|number| (key_bounds.min..=key_bounds.max).contains(number))
        .map(Some)
        .ok_or_else(|| out_of_range(key, value.to_owned()))
}

fn parse_required(key: &'static str, value: &str) -> Result<u64, ConfigError> {
    parse(key, value)?.ok_or_else(|| out_of_range(key, value.to_owned()))
}

/// Bounds of 32-bit keys lie within `u32`, so this only fails if the bounds table is wrong.
fn narrow(key: &'static str, value: u64) -> Result<u32, ConfigError> {
    u32::try_from(value).map_err(|_| out_of_range(key, value.to_string()))
}

fn optional_text(value: Option<u64>) -> String {
    value.map_or_else(|| "-1".to_owned(), |value| value.to_string())
}

fn with_interval(flush: FlushPolicy, interval_ms: Option<u64>) -> FlushPolicy {
    match flush {
        FlushPolicy::Periodic { bytes, .. } => FlushPolicy::periodic(interval_ms, bytes),
        other if interval_ms.is_none() => other,
        _ => FlushPolicy::periodic(interval_ms, None),
    }
}

fn with_bytes(flush: FlushPolicy, bytes: Option<u64>) -> FlushPolicy {
    match flush {
        FlushPolicy::Periodic { interval_ms, .. } => FlushPolicy::periodic(interval_ms, bytes),
        other if bytes.is_none() => other,
        _ => FlushPolicy::periodic(None, bytes),
    }
}

fn parse_flush_policy(flush: FlushPolicy, value: &str) -> Result<FlushPolicy, ConfigError> {
    match value {
        "always" => Ok(FlushPolicy::Always),
        "never" => Ok(FlushPolicy::Never),
        "periodic" if matches!(flush, FlushPolicy::Periodic { .. }) => Ok(flush),
        "periodic" => Err(ConfigError::PeriodicWithoutTrigger),
        _ => Err(ConfigError::NotAChoice {
            key: keys::FLUSH_POLICY,
            value: value.to_owned(),
            expected: FLUSH_POLICY_WORDS,
        }),
    }
}

fn parse_flush_messages(flush: FlushPolicy, value: &str) -> Result<FlushPolicy, ConfigError> {
    match parse_i64(keys::FLUSH_MESSAGES, value)? {
        1 => Ok(FlushPolicy::Always),
        -1 | KAFKA_OFF => Ok(flush),
        _ => Err(ConfigError::Unsupported {
            key: keys::FLUSH_MESSAGES,
            value: value.to_owned(),
            hint: FLUSH_MESSAGES_HINT,
        }),
    }
}

fn parse_timestamp_type(value: &str) -> Result<TimestampType, ConfigError> {
    match value {
        "CreateTime" => Ok(TimestampType::CreateTime),
        "LogAppendTime" => Ok(TimestampType::LogAppendTime),
        _ => Err(ConfigError::NotAChoice {
            key: keys::MESSAGE_TIMESTAMP_TYPE,
            value: value.to_owned(),
            expected: TIMESTAMP_TYPE_WORDS,
        }),
    }
}

fn parse_io_mode(value: &str) -> Result<IoMode, ConfigError> {
    match value {
        "buffered" => Ok(IoMode::Buffered),
        "direct" => Ok(IoMode::Direct),
        _ => Err(ConfigError::NotAChoice {
            key: keys::IO_MODE,
            value: value.to_owned(),
            expected: IO_MODE_WORDS,
        }),
    }
}

fn flush_policy_word(flush: FlushPolicy) -> &'static str {
    match flush {
        FlushPolicy::Always => "always",
        FlushPolicy::Never => "never",
        FlushPolicy::Periodic { .. } => "periodic",
    }
}

fn timestamp_type_word(timestamp_type: TimestampType) -> &'static str {
    match timestamp_type {
        TimestampType::CreateTime => "CreateTime",
        TimestampType::LogAppendTime => "LogAppendTime",
    }
}

fn io_mode_word(io_mode: IoMode) -> &'static str {
    match io_mode {
        IoMode::Buffered => "buffered",
        IoMode::Direct => "direct",
    }
}

#[cfg(test)]
mod tests;
