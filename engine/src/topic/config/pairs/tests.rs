//! Tests of the string codec: every key, every bound, the flush-key algebra, atomicity and
//! the `to_pairs` round trip.

use super::*;
use crate::limits::{SEGMENT_SIZE_BYTES_MAX, TOPIC_SETTING_VALUE_MAX};

fn config_with(pairs: &[(&str, &str)]) -> TopicConfig {
    let mut config = TopicConfig::default();
    config.apply_all(pairs.iter().copied()).unwrap();
    config
}

fn periodic(interval_ms: Option<u64>, bytes: Option<u64>) -> FlushPolicy {
    FlushPolicy::Periodic { interval_ms, bytes }
}

#[test]
fn apply_sets_each_key() {
    let config = config_with(&[
        ("segment.bytes", "1048576"),
        ("segment.ms", "60000"),
        ("retention.ms", "3600000"),
        ("retention.bytes", "1000000000"),
        ("index.interval.bytes", "0"),
        ("max.message.bytes", "2000000"),
        ("message.timestamp.type", "LogAppendTime"),
        ("ringlog.io.mode", "direct"),
        ("ringlog.preallocate.bytes", "8388608"),
        ("flush.policy", "always"),
    ]);
    assert_eq!(config.segment_bytes(), 1_048_576);
    assert_eq!(config.segment_ms(), Some(60_000));
    assert_eq!(config.retention_ms(), Some(3_600_000));
    assert_eq!(config.retention_bytes(), Some(1_000_000_000));
    assert_eq!(config.index_interval_bytes(), 0);
    assert_eq!(config.max_message_bytes(), 2_000_000);
    assert_eq!(config.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(config.io_mode(), IoMode::Direct);
    assert_eq!(config.preallocate_bytes(), 8 << 20);
    assert_eq!(config.flush(), FlushPolicy::Always);
}

#[test]
fn minus_one_means_none_where_allowed() {
    let config = config_with(&[
        ("segment.ms", "-1"),
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
    ]);
    assert_eq!(config.segment_ms(), None);
    assert_eq!(config.retention_ms(), None);
    assert_eq!(config.retention_bytes(), None);
    // Zero retention is Kafka's "purge this topic" idiom, not "infinite".
    let purge = config_with(&[("retention.ms", "0"), ("retention.bytes", "0")]);
    assert_eq!(purge.retention_ms(), Some(0));
    assert_eq!(purge.retention_bytes(), Some(0));
}

#[test]
fn unknown_key_is_refused_and_nothing_changes() {
    let mut config = TopicConfig::default();
    let error = config.apply("cleanup.policy", "compact").unwrap_err();
    assert_eq!(
        error,
        ConfigError::UnknownKey {
            key: "cleanup.policy".to_owned()
        }
    );
    assert!(error.to_string().contains("cleanup.policy"));
    assert_eq!(config, TopicConfig::default());
    assert_eq!(config.get("cleanup.policy"), None);
}

#[test]
fn non_integer_names_key_and_value_and_keeps_the_cause() {
    let mut config = TopicConfig::default();
    for value in ["", "1GiB", "1.5", " 10", "99999999999999999999"] {
        let error = config.apply("segment.bytes", value).unwrap_err();
        assert!(
            matches!(&error, ConfigError::NotAnInteger { key: "segment.bytes", value: v, .. }
                if v == value),
            "{value:?}: {error:?}"
        );
        assert!(std::error::Error::source(&error).is_some(), "source kept");
    }
    assert_eq!(config, TopicConfig::default());
}

#[test]
fn out_of_range_values_are_refused_naming_key_and_value() {
    let cases = [
        ("segment.bytes", "-1"),
        ("segment.bytes", "0"),
        ("segment.bytes", "4095"),
        ("segment.bytes", "2147483648"),
        ("segment.ms", "0"),
        ("segment.ms", "-2"),
        ("retention.ms", "-2"),
        ("retention.bytes", "-100"),
        ("flush.ms", "0"),
        ("flush.bytes", "0"),
        ("index.interval.bytes", "-1"),
        ("index.interval.bytes", "2147483648"),
        ("max.message.bytes", "0"),
        ("max.message.bytes", "16777217"),
        ("ringlog.preallocate.bytes", "-1"),
        ("ringlog.preallocate.bytes", "2147483648"),
    ];
    for (key, value) in cases {
        let mut config = TopicConfig::default();
        let error = config.apply(key, value).unwrap_err();
        match &error {
            ConfigError::OutOfRange {
                key: k, value: v, ..
            } => assert_eq!((*k, v.as_str()), (key, value)),
            other => panic!("{key}={value}: {other:?}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(key) && message.contains(value),
            "{message}"
        );
        assert_eq!(
            config,
            TopicConfig::default(),
            "{key}={value} changed the config"
        );
    }
}

#[test]
fn range_message_says_what_is_expected() {
    let error = TopicConfig::default()
        .apply("retention.ms", "-5")
        .unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("expected 0..=9223372036854775807 or -1 (none)"),
        "{error}"
    );
    let error = TopicConfig::default()
        .apply("segment.bytes", "1")
        .unwrap_err();
    assert!(
        error.to_string().ends_with("expected 4096..=2147483647"),
        "{error}"
    );
}

#[test]
fn words_are_checked_case_sensitively() {
    let cases = [
        ("message.timestamp.type", "createtime"),
        ("message.timestamp.type", "Create"),
        ("ringlog.io.mode", "Direct"),
        ("ringlog.io.mode", "mmap"),
        ("flush.policy", "ALWAYS"),
        ("flush.policy", "sometimes"),
    ];
    for (key, value) in cases {
        let error = TopicConfig::default().apply(key, value).unwrap_err();
        assert!(
            matches!(&error, ConfigError::NotAChoice { key: k, value: v, .. }
                if *k == key && v == value),
            "{key}={value}: {error:?}"
        );
    }
}

#[test]
fn flush_ms_and_bytes_build_up_and_tear_down_a_periodic_policy() {
    let mut config = TopicConfig::default();
    config.apply("flush.ms", "100").unwrap();
    assert_eq!(config.flush(), periodic(Some(100), None));
    config.apply("flush.bytes", "1048576").unwrap();
    assert_eq!(
        config.flush(),
        periodic(Some(100), Some(1 << 20)),
        "keeps the interval"
    );
    config.apply("flush.ms", "-1").unwrap();
    assert_eq!(
        config.flush(),
        periodic(None, Some(1 << 20)),
        "keeps the byte trigger"
    );
    config.apply("flush.bytes", "-1").unwrap();
    assert_eq!(config.flush(), FlushPolicy::Never, "no trigger left");
}

#[test]
fn turning_a_trigger_off_leaves_always_and_never_alone() {
    let mut config = TopicConfig::builder()
        .flush(FlushPolicy::Always)
        .build()
        .unwrap();
    config.apply("flush.ms", "9223372036854775807").unwrap();
    config.apply("flush.bytes", "-1").unwrap();
    config
        .apply("flush.messages", "9223372036854775807")
        .unwrap();
    assert_eq!(config.flush(), FlushPolicy::Always);
    config.apply("flush.ms", "250").unwrap();
    assert_eq!(
        config.flush(),
        periodic(Some(250), None),
        "a trigger replaces always"
    );
}

#[test]
fn flush_messages_maps_one_to_always_and_refuses_counts() {
    let mut config = TopicConfig::default();
    config.apply("flush.messages", "1").unwrap();
    assert_eq!(config.flush(), FlushPolicy::Always);
    for value in ["2", "10000", "0", "-2"] {
        let error = config.apply("flush.messages", value).unwrap_err();
        assert!(
            matches!(&error, ConfigError::Unsupported { key: "flush.messages", value: v, .. }
                if v == value),
            "{value}: {error:?}"
        );
        assert!(
            error.to_string().contains("flush.bytes"),
            "the hint names the remedy"
        );
    }
    assert_eq!(config.flush(), FlushPolicy::Always);
}

#[test]
fn periodic_needs_a_trigger() {
    let mut config = TopicConfig::default();
    assert_eq!(
        config.apply("flush.policy", "periodic"),
        Err(ConfigError::PeriodicWithoutTrigger)
    );
    assert_eq!(config.flush(), FlushPolicy::Never);
    config.apply("flush.bytes", "4096").unwrap();
    config.apply("flush.policy", "periodic").unwrap();
    assert_eq!(
        config.flush(),
        periodic(None, Some(4096)),
        "periodic keeps its triggers"
    );
}

#[test]
fn apply_all_does_not_depend_on_order() {
    let forward = config_with(&[("flush.policy", "periodic"), ("flush.ms", "50")]);
    let backward = config_with(&[("flush.ms", "50"), ("flush.policy", "periodic")]);
    assert_eq!(forward.flush(), periodic(Some(50), None));
    assert_eq!(forward, backward);
}

#[test]
fn apply_all_refuses_contradicting_flush_keys() {
    let contradictions: [&[(&str, &str)]; 4] = [
        &[("flush.policy", "always"), ("flush.ms", "100")],
        &[("flush.ms", "100"), ("flush.policy", "never")],
        &[("flush.messages", "1"), ("flush.bytes", "4096")],
        &[
            ("flush.policy", "periodic"),
            ("flush.messages", "1"),
            ("flush.ms", "5"),
        ],
    ];
    for pairs in contradictions {
        let mut config = TopicConfig::default();
        let error = config.apply_all(pairs.iter().copied()).unwrap_err();
        assert!(
            matches!(error, ConfigError::FlushConflict { .. }),
            "{pairs:?}: {error:?}"
        );
        assert_eq!(config, TopicConfig::default());
    }
    // Agreeing keys are fine.
    let agreeing = config_with(&[
        ("flush.policy", "always"),
        ("flush.messages", "1"),
        ("flush.ms", "-1"),
    ]);
    assert_eq!(agreeing.flush(), FlushPolicy::Always);
}

#[test]
fn apply_all_is_all_or_nothing() {
    let mut config = TopicConfig::default();
    let pairs = [("segment.bytes", "1048576"), ("retention.ms", "-7")];
    let error = config.apply_all(pairs).unwrap_err();
    assert!(
        matches!(
            &error,
            ConfigError::OutOfRange { key: "retention.ms", value, .. } if value == "-7"
        ),
        "{error:?}"
    );
    assert_eq!(
        config.segment_bytes(),
        TopicConfig::default().segment_bytes()
    );
}

#[test]
fn apply_all_refuses_duplicate_keys() {
    let mut config = TopicConfig::default();
    let pairs = [("segment.ms", "1000"), ("segment.ms", "2000")];
    assert_eq!(
        config.apply_all(pairs),
        Err(ConfigError::DuplicateKey {
            key: "segment.ms".to_owned()
        })
    );
    assert_eq!(config, TopicConfig::default());
}

#[test]
fn kafka_default_configs_are_accepted_unchanged() {
    let kafka_defaults = config_with(&[
        ("flush.ms", "9223372036854775807"),
        ("flush.messages", "9223372036854775807"),
        ("segment.bytes", "1073741824"),
        ("segment.ms", "604800000"),
        ("retention.ms", "604800000"),
        ("retention.bytes", "-1"),
        ("index.interval.bytes", "4096"),
        ("max.message.bytes", "1048588"),
        ("message.timestamp.type", "CreateTime"),
    ]);
    assert_eq!(kafka_defaults, TopicConfig::default());
}

#[test]
fn to_pairs_lists_every_key_once_in_order() {
    let pairs = TopicConfig::default().to_pairs();
    let listed: Vec<&str> = pairs.iter().map(|(key, _)| *key).collect();
    assert_eq!(listed, keys::ALL);
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("retention.bytes"), Some("-1"));
    assert_eq!(value("flush.ms"), Some("9223372036854775807"));
    assert_eq!(value("flush.policy"), Some("never"));
    assert_eq!(value("message.timestamp.type"), Some("CreateTime"));
    assert_eq!(
        TopicConfig::default().get("segment.bytes").as_deref(),
        Some("1073741824")
    );
}

fn sample_configs() -> Vec<TopicConfig> {
    let flushes = [
        FlushPolicy::Always,
        FlushPolicy::Never,
        periodic(Some(10), None),
        periodic(None, Some(1 << 20)),
        periodic(Some(1), Some(1)),
        periodic(
            Some(TOPIC_SETTING_VALUE_MAX - 1),
            Some(TOPIC_SETTING_VALUE_MAX),
        ),
    ];
    let mut configs: Vec<TopicConfig> = flushes
        .iter()
        .map(|&flush| TopicConfig::builder().flush(flush).build().unwrap())
        .collect();
    let odd = TopicConfig::builder()
        .io_mode(IoMode::Direct)
        .segment_bytes(SEGMENT_SIZE_BYTES_MAX)
        .segment_ms(None)
        .retention_ms(Some(TOPIC_SETTING_VALUE_MAX))
        .retention_bytes(Some(0))
        .index_interval_bytes(1)
        .max_message_bytes(61)
        .timestamp_type(TimestampType::LogAppendTime)
        .preallocate_bytes(0);
    configs.push(odd.build().unwrap());
    configs
}

#[test]
fn to_pairs_round_trips_onto_any_base() {
    let configs = sample_configs();
    for original in &configs {
        let pairs = original.to_pairs();
        let borrowed = || pairs.iter().map(|(key, value)| (*key, value.as_str()));
        for base in &configs {
            let mut copy = base.clone();
            copy.apply_all(borrowed()).unwrap();
            assert_eq!(&copy, original, "onto {base:?}");
        }
        let mut reversed = TopicConfig::default();
        reversed.apply_all(borrowed().rev()).unwrap();
        assert_eq!(&reversed, original, "reversed order");
    }
}
