//! Tests of the metadata codec: round trips, and every kind of damage refused by name.

use super::*;
use crate::topic::{FlushPolicy, IoMode};

fn meta(name: &str, id_byte: u8, partitions: u32) -> TopicMeta {
    TopicMeta {
        name: TopicName::new(name).unwrap(),
        id: [id_byte; 16],
        partitions,
        config: TopicConfig::default(),
    }
}

fn path() -> &'static Path {
    Path::new("/data/topics.json")
}

fn decode_text(text: &str) -> Result<BTreeMap<TopicName, TopicMeta>, TopicError> {
    decode_topics(path(), text.as_bytes())
}

/// A valid one-topic file with `field` set to `value` (raw JSON) in the topic object.
fn file_with(field: &str, value: &str) -> String {
    let mut topic = serde_json::json!({
        "name": "orders",
        "id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "partitions": 3,
        "config": {},
    });
    topic[field] = serde_json::from_str(value).unwrap();
    serde_json::json!({ "format": "ringlog-topics", "version": 1, "topics": [topic] }).to_string()
}

fn assert_corrupt(result: Result<BTreeMap<TopicName, TopicMeta>, TopicError>, what: &str) {
    match result {
        Err(TopicError::CorruptMetadata { path: p, source }) => {
            assert_eq!(p, path(), "{what}");
            assert!(!source.to_string().is_empty());
        }
        other => panic!("{what}: expected CorruptMetadata, got {other:?}"),
    }
}

#[test]
fn topics_round_trip_with_configs_and_ids() {
    let mut special = meta("b.events", 0xab, 100_000);
    special.config = TopicConfig::builder()
        .flush(FlushPolicy::periodic(Some(5), Some(4096)))
        .io_mode(IoMode::Direct)
        .retention_ms(None)
        .build()
        .unwrap();
    let topics = [meta("a", 1, 1), special];
    let bytes = encode_topics(topics.iter());
    let decoded = decode_topics(path(), &bytes).unwrap();
    let decoded: Vec<TopicMeta> = decoded.into_values().collect();
    assert_eq!(decoded, topics);
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.contains("\"id\": \"abababab-abab-abab-abab-abababababab\""),
        "{text}"
    );
    assert!(text.contains("\"retention.ms\": \"-1\""), "{text}");
}

#[test]
fn an_empty_topic_list_decodes_to_no_topics() {
    let bytes = encode_topics([].iter());
    assert!(decode_topics(path(), &bytes).unwrap().is_empty());
}

#[test]
fn missing_config_keys_take_defaults() {
    let decoded = decode_text(&file_with("config", r#"{"segment.bytes": "1048576"}"#)).unwrap();
    let orders = decoded.values().next().unwrap();
    assert_eq!(orders.config.segment_bytes(), 1 << 20);
    assert_eq!(
        orders.config.retention_ms(),
        TopicConfig::default().retention_ms()
    );
    assert_eq!(
        orders.id_hyphenated(),
        "67e55044-10b1-426f-9247-bb680e5fe0c8"
    );
}

#[test]
fn unknown_format_or_version_is_unsupported_not_empty() {
    for (format, version, found) in [
        ("ringlog-topics", "2", "ringlog-topics 2"),
        ("ringlog-topics", "0", "ringlog-topics 0"),
        ("kafka-meta", "1", "kafka-meta 1"),
    ] {
        let text = format!(r#"{{"format": "{format}", "version": {version}, "topics": []}}"#);
        match decode_text(&text) {
            Err(TopicError::UnsupportedFormat {
                path: p, found: f, ..
            }) => {
                assert_eq!((p.as_path(), f.as_str()), (path(), found));
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn damaged_documents_are_corrupt() {
    let valid = String::from_utf8(encode_topics([meta("orders", 7, 2)].iter())).unwrap();
    assert_corrupt(decode_text(""), "empty file");
    assert_corrupt(decode_text(&valid[..valid.len() / 2]), "truncated file");
    assert_corrupt(decode_text("\0\0\0\0"), "zeroed block");
    assert_corrupt(decode_text(r#"{"format": "ringlog-topics"}"#), "no version");
    let extra = valid.replacen("\"topics\"", "\"extra\": 1, \"topics\"", 1);
    assert_corrupt(decode_text(&extra), "unknown field");
}

#[test]
fn illegal_topic_contents_are_corrupt() {
    let cases = [
        ("name", r#""bad/name""#),
        ("name", r#""""#),
        ("id", r#""not-a-uuid""#),
        ("partitions", "0"),
        ("partitions", "100001"),
        ("partitions", "-1"),
        ("config", r#"{"cleanup.policy": "compact"}"#),
        ("config", r#"{"segment.bytes": "0"}"#),
    ];
    for (field, value) in cases {
        assert_corrupt(
            decode_text(&file_with(field, value)),
            &format!("{field}={value}"),
        );
    }
}

#[test]
fn duplicate_names_collisions_and_ids_are_corrupt() {
    let duplicate_name = [meta("orders", 1, 1), meta("orders", 2, 1)];
    let colliding = [meta("a.b", 1, 1), meta("a_b", 2, 1)];
    let duplicate_id = [meta("a", 9, 1), meta("b", 9, 1)];
    for (what, topics) in [
        ("duplicate name", duplicate_name),
        ("collision", colliding),
        ("duplicate id", duplicate_id),
    ] {
        assert_corrupt(decode_topics(path(), &encode_topics(topics.iter())), what);
    }
}

#[test]
fn marker_of_this_version_is_accepted_and_others_are_not() {
    let marker = Path::new("/data/ringlog.meta");
    assert_eq!(encode_marker(), b"ringlog-data-dir 1\n");
    check_marker(marker, &encode_marker()).unwrap();
    assert!(matches!(
        check_marker(marker, b"ringlog-data-dir 2\n"),
        Err(TopicError::UnsupportedFormat { found, .. }) if found == "ringlog-data-dir 2"
    ));
    for garbage in [
        &b""[..],
        b"ringlog-data-dir 1",
        b"ringlog-data-dir \n",
        b"something 1\n",
    ] {
        assert!(
            matches!(
                check_marker(marker, garbage),
                Err(TopicError::CorruptMetadata { .. })
            ),
            "{garbage:?}"
        );
    }
}
