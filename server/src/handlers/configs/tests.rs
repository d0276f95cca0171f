//! The pure parts of the config APIs: overrides, replacement, incremental edits, entries.

use ringlog_engine::topic::FlushPolicy;

use super::*;

fn config(pairs: &[(&str, &str)]) -> TopicConfig {
    let mut config = TopicConfig::default();
    config.apply_all(pairs.iter().copied()).unwrap();
    config
}

fn set(key: &str, value: &str) -> (String, i8, Option<String>) {
    (key.to_owned(), OP_SET, Some(value.to_owned()))
}

fn op(key: &str, op: i8) -> (String, i8, Option<String>) {
    (key.to_owned(), op, None)
}

fn samples() -> Vec<TopicConfig> {
    vec![
        TopicConfig::default(),
        config(&[("flush.policy", "always")]),
        config(&[("flush.ms", "100")]),
        config(&[("flush.bytes", "4096")]),
        config(&[("flush.ms", "100"), ("flush.bytes", "4096")]),
        config(&[("retention.ms", "-1"), ("segment.bytes", "1048576")]),
        config(&[
            ("message.timestamp.type", "LogAppendTime"),
            ("ringlog.io.mode", "direct"),
        ]),
        config(&[("flush.messages", "1"), ("retention.bytes", "1000")]),
    ]
}

#[test]
fn overrides_applied_to_the_defaults_give_the_config_back_whatever_the_defaults() {
    for defaults in samples() {
        for config in samples() {
            let overrides = overrides(&config, &defaults);
            let mut rebuilt = defaults.clone();
            rebuilt
                .apply_all(overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .unwrap_or_else(|e| panic!("{overrides:?} onto {defaults:?}: {e}"));
            assert_eq!(rebuilt, config, "overrides {overrides:?} onto {defaults:?}");
        }
    }
}

#[test]
fn overrides_of_the_defaults_are_empty_and_list_only_changed_keys() {
    let defaults = TopicConfig::default();
    assert!(overrides(&defaults, &defaults).is_empty());
    let changed = config(&[("retention.ms", "1000")]);
    assert_eq!(
        overrides(&changed, &defaults),
        vec![("retention.ms".to_owned(), "1000".to_owned())]
    );
}

#[test]
fn entries_mark_keys_that_differ_from_the_server_default_as_dynamic() {
    let defaults = config(&[("retention.ms", "5000")]);
    let topic = config(&[("retention.ms", "5000"), ("segment.bytes", "1048576")]);
    let entries = topic_entries(&topic, &defaults);
    assert_eq!(entries.len(), keys::ALL.len());
    let find = |name: &str| entries.iter().find(|e| e.name == name).unwrap().clone();
    let segment = find("segment.bytes");
    assert_eq!(segment.value, "1048576");
    assert_eq!(segment.source, SOURCE_DYNAMIC_TOPIC_CONFIG);
    assert_eq!(segment.default.as_deref(), Some("1073741824"));
    assert_eq!(segment.config_type, TYPE_INT);
    let retention = find("retention.ms");
    assert_eq!(retention.value, "5000");
    assert_eq!(
        retention.source, SOURCE_DEFAULT_CONFIG,
        "equal to the server default"
    );
    assert_eq!(retention.default, None);
    assert_eq!(retention.config_type, TYPE_LONG);
    assert_eq!(find("flush.policy").config_type, TYPE_STRING);
}

#[test]
fn entries_take_the_shape_of_the_version() {
    let entry = topic_entries(&config(&[("retention.ms", "1")]), &TopicConfig::default())
        .into_iter()
        .find(|e| e.name == "retention.ms")
        .unwrap();
    let v2 = entry_for_version(entry.clone(), false, 2);
    assert_eq!(v2.config_type, 0, "no config types before version 3");
    assert!(v2.synonyms.is_empty(), "synonyms only when asked for");
    assert_eq!(v2.config_source, SOURCE_DYNAMIC_TOPIC_CONFIG);
    let v4 = entry_for_version(entry, true, 4);
    assert_eq!(v4.config_type, TYPE_LONG);
    assert_eq!(v4.documentation, None);
    let synonyms: Vec<(String, i8)> = v4
        .synonyms
        .iter()
        .map(|s| (s.value.as_ref().unwrap().to_string(), s.source))
        .collect();
    assert_eq!(
        synonyms,
        vec![
            ("1".to_owned(), SOURCE_DYNAMIC_TOPIC_CONFIG),
            ("604800000".to_owned(), SOURCE_DEFAULT_CONFIG)
        ]
    );
}

#[test]
fn replacement_reverts_keys_not_given_to_the_server_default() {
    let defaults = config(&[("retention.ms", "5000")]);
    let replaced = replaced_config(&defaults, &[set("segment.bytes", "1048576")]).unwrap();
    assert_eq!(replaced.segment_bytes(), 1 << 20);
    assert_eq!(replaced.retention_ms(), Some(5000));
    let without_value = [("segment.bytes".to_owned(), OP_SET, None)];
    assert_eq!(
        replaced_config(&defaults, &without_value).unwrap(),
        defaults
    );
}

#[test]
fn replacement_refuses_bad_keys_and_values_naming_the_key() {
    let defaults = TopicConfig::default();
    let unknown = replaced_config(&defaults, &[set("retention.fortnights", "2")]).unwrap_err();
    assert_eq!(unknown.code, ResponseError::InvalidConfig.code());
    assert!(
        unknown.message.contains("retention.fortnights"),
        "{}",
        unknown.message
    );
    let bad = replaced_config(&defaults, &[set("segment.bytes", "12")]).unwrap_err();
    assert_eq!(bad.code, ResponseError::InvalidConfig.code());
    assert!(bad.message.contains("segment.bytes"), "{}", bad.message);
}

#[test]
fn incremental_set_keeps_other_overrides_and_delete_reverts_one_key() {
    let defaults = TopicConfig::default();
    let current = config(&[("retention.ms", "1000"), ("segment.bytes", "1048576")]);
    let edited = edited_config(&current, &defaults, &[set("retention.bytes", "99")]).unwrap();
    assert_eq!(edited.retention_bytes(), Some(99));
    assert_eq!(edited.retention_ms(), Some(1000));
    assert_eq!(edited.segment_bytes(), 1 << 20);
    let deleted = edited_config(&current, &defaults, &[op("retention.ms", OP_DELETE)]).unwrap();
    assert_eq!(deleted.retention_ms(), defaults.retention_ms());
    assert_eq!(deleted.segment_bytes(), 1 << 20);
}

#[test]
fn incremental_flush_policy_replaces_the_triggers_and_a_trigger_keeps_the_other() {
    let defaults = TopicConfig::default();
    let periodic = config(&[("flush.ms", "100")]);
    let always = edited_config(&periodic, &defaults, &[set("flush.policy", "always")]).unwrap();
    assert_eq!(always.flush(), FlushPolicy::Always);
    let both = edited_config(&periodic, &defaults, &[set("flush.bytes", "4096")]).unwrap();
    assert_eq!(both.flush(), FlushPolicy::periodic(Some(100), Some(4096)));
    let reverted = edited_config(&always, &defaults, &[op("flush.policy", OP_DELETE)]).unwrap();
    assert_eq!(reverted.flush(), FlushPolicy::Never);
    let conflict = edited_config(&always, &defaults, &[set("flush.ms", "100")]).unwrap_err();
    assert_eq!(conflict.code, ResponseError::InvalidConfig.code());
    assert!(
        conflict.message.contains("flush.ms"),
        "{}",
        conflict.message
    );
}

#[test]
fn incremental_refusals_have_kafkas_codes() {
    let defaults = TopicConfig::default();
    let current = TopicConfig::default();
    let refused =
        |ops: &[(String, i8, Option<String>)]| edited_config(&current, &defaults, ops).unwrap_err();
    let append = refused(&[("retention.ms".to_owned(), OP_APPEND, Some("1".to_owned()))]);
    assert_eq!(append.code, ResponseError::InvalidConfig.code());
    assert!(
        append.message.contains("retention.ms"),
        "{}",
        append.message
    );
    assert_eq!(refused(&[op("segment.ms", OP_SUBTRACT)]).code, 40);
    assert_eq!(
        refused(&[op("segment.ms", 9)]).code,
        42,
        "unknown operation"
    );
    assert_eq!(
        refused(&[op("segment.ms", OP_SET)]).code,
        42,
        "SET without a value"
    );
    let twice = [set("segment.ms", "1"), op("segment.ms", OP_DELETE)];
    assert_eq!(refused(&twice).code, 42, "a key twice");
    let unknown = refused(&[op("no.such.key", OP_DELETE)]);
    assert_eq!(unknown.code, 40);
    assert!(
        unknown.message.contains("no.such.key"),
        "{}",
        unknown.message
    );
    let bad_value = refused(&[set("retention.ms", "soon")]);
    assert_eq!(bad_value.code, 40);
    assert!(
        bad_value.message.contains("retention.ms"),
        "{}",
        bad_value.message
    );
}

#[test]
fn only_this_node_is_a_broker_resource() {
    assert!(check_broker_name("").is_ok());
    assert!(check_broker_name("0").is_ok());
    assert_eq!(check_broker_name("7").unwrap_err().code, 42);
}
