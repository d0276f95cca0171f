//! Tests of the registry: data directory checks, every operation and its refusals,
//! restarts, damage, and crash remains.

use super::*;
use crate::topic::{FlushPolicy, IoMode};

fn name(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn fresh() -> (tempfile::TempDir, TopicRegistry) {
    let dir = tempfile::tempdir().unwrap();
    let registry = TopicRegistry::open(dir.path().join("data")).unwrap();
    (dir, registry)
}

fn direct_always() -> TopicConfig {
    TopicConfig::builder()
        .flush(FlushPolicy::Always)
        .io_mode(IoMode::Direct)
        .segment_bytes(1 << 20)
        .build()
        .unwrap()
}

#[test]
fn open_creates_and_marks_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("a").join("data");
    let registry = TopicRegistry::open(&data_dir).unwrap();
    assert_eq!(registry.list().len(), 0);
    assert_eq!(registry.data_dir(), data_dir);
    assert_eq!(
        fs::read(data_dir.join("ringlog.meta")).unwrap(),
        b"ringlog-data-dir 1\n"
    );
    assert!(
        !data_dir.join("topics.json").exists(),
        "no topics, no file yet"
    );
}

#[test]
fn open_marks_an_empty_directory_and_a_fresh_mount_point() {
    let dir = tempfile::tempdir().unwrap();
    TopicRegistry::open(dir.path()).unwrap();
    assert!(dir.path().join("ringlog.meta").exists());
    let mount = tempfile::tempdir().unwrap();
    fs::create_dir(mount.path().join("lost+found")).unwrap();
    TopicRegistry::open(mount.path()).unwrap();
    assert!(mount.path().join("ringlog.meta").exists());
}

#[test]
fn a_foreign_non_empty_directory_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("thesis.tex"), b"precious").unwrap();
    let error = TopicRegistry::open(dir.path()).unwrap_err();
    assert!(
        matches!(&error, TopicError::NotADataDirectory { path } if path == dir.path()),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("not a ringlog data directory"),
        "{error}"
    );
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["thesis.tex"], "nothing was written");
}

#[test]
fn a_kafka_log_dir_is_refused() {
    // A directory of Kafka partitions looks like ours but has no marker.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("orders-0")).unwrap();
    assert!(matches!(
        TopicRegistry::open(dir.path()),
        Err(TopicError::NotADataDirectory { .. })
    ));
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_as_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    fs::write(&file, b"").unwrap();
    for path in [file.clone(), file.join("below")] {
        let error = TopicRegistry::open(&path).unwrap_err();
        assert!(
            matches!(&error, TopicError::NotADirectory { path: p } if *p == path),
            "{error:?}"
        );
        assert!(error.to_string().contains("is not a directory"), "{error}");
    }
    assert_eq!(fs::read(&file).unwrap(), b"", "the file is untouched");
}

#[test]
fn a_second_registry_on_a_data_dir_is_refused_until_the_first_is_dropped() {
    let (_dir, registry) = fresh();
    let data_dir = registry.data_dir().to_owned();
    let error = TopicRegistry::open(&data_dir).unwrap_err();
    assert!(
        matches!(&error, TopicError::DataDirLocked { path, holder_pid: Some(pid) }
            if *path == data_dir && *pid == std::process::id()),
        "{error:?}"
    );
    drop(registry);
    TopicRegistry::open(&data_dir).unwrap();
}

#[test]
fn a_foreign_directory_gets_no_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("someone-elses.txt"), b"x").unwrap();
    assert!(matches!(
        TopicRegistry::open(dir.path()),
        Err(TopicError::NotADataDirectory { .. })
    ));
    assert!(!dir.path().join("ringlog.lock").exists());
}

/// The topic names in `data_dir`'s `topics.json`, read without opening a registry (the
/// test's own registry holds the directory's lock).
fn names_on_disk(data_dir: &std::path::Path) -> Vec<String> {
    let path = data_dir.join("topics.json");
    let bytes = fs::read(&path).unwrap();
    let topics = super::metadata::decode_topics(&path, &bytes).unwrap();
    topics.keys().map(ToString::to_string).collect()
}

#[test]
fn an_unreadable_marker_is_an_io_error_naming_it() {
    // Permission bits do not stop root, which tests may run as; a directory where the
    // marker should be fails the read for everyone.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ringlog.meta");
    fs::create_dir(&marker).unwrap();
    let error = TopicRegistry::open(dir.path()).unwrap_err();
    assert!(
        matches!(&error, TopicError::Io { path, .. } if *path == marker),
        "{error:?}"
    );
    assert!(error.to_string().contains("ringlog.meta"), "{error}");
}

#[test]
fn a_marker_of_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ringlog.meta"), b"ringlog-data-dir 9\n").unwrap();
    assert!(matches!(
        TopicRegistry::open(dir.path()),
        Err(TopicError::UnsupportedFormat { .. })
    ));
}

#[test]
fn create_get_list_and_partition_dir() {
    let (_dir, mut registry) = fresh();
    let created = registry
        .create(&name("orders"), 3, direct_always())
        .unwrap()
        .clone();
    registry
        .create(&name("audit"), 1, TopicConfig::default())
        .unwrap();
    assert_eq!(created.partitions, 3);
    assert_eq!(created.config, direct_always());
    assert_ne!(created.id, [0; 16]);
    assert_eq!(created.id[6] >> 4, 4, "a version 4 UUID");
    assert_eq!(registry.get(&name("orders")), Some(&created));
    assert_eq!(registry.get(&name("missing")), None);
    let listed: Vec<&str> = registry.list().map(|meta| meta.name.as_str()).collect();
    assert_eq!(listed, ["audit", "orders"]);
    let orders = name("orders");
    assert_eq!(
        registry.partition_dir(&orders, 2),
        registry.data_dir().join("orders-2")
    );
}

#[test]
fn every_topic_gets_its_own_id() {
    let (_dir, mut registry) = fresh();
    let a = registry
        .create(&name("a"), 1, TopicConfig::default())
        .unwrap()
        .id;
    let b = registry
        .create(&name("b"), 1, TopicConfig::default())
        .unwrap()
        .id;
    assert_ne!(a, b);
    registry.delete(&name("a")).unwrap();
    let again = registry
        .create(&name("a"), 1, TopicConfig::default())
        .unwrap()
        .id;
    assert_ne!(a, again, "a re-created topic is a new topic");
}

#[test]
fn create_refuses_duplicates_and_collisions() {
    let (_dir, mut registry) = fresh();
    registry
        .create(&name("a.b"), 1, TopicConfig::default())
        .unwrap();
    assert!(matches!(
        registry.create(&name("a.b"), 2, TopicConfig::default()),
        Err(TopicError::AlreadyExists { name }) if name == "a.b"
    ));
    assert!(matches!(
        registry.create(&name("a_b"), 1, TopicConfig::default()),
        Err(TopicError::Collides { name, existing }) if name == "a_b" && existing == "a.b"
    ));
    assert_eq!(registry.list().len(), 1);
    assert_eq!(
        registry.get(&name("a.b")).unwrap().partitions,
        1,
        "the original is intact"
    );
    registry
        .create(&name("a-b"), 1, TopicConfig::default())
        .unwrap();
}

#[test]
fn create_checks_the_partition_count_bounds() {
    let (_dir, mut registry) = fresh();
    for count in [0, PARTITIONS_PER_TOPIC_MAX + 1, u32::MAX] {
        assert!(matches!(
            registry.create(&name("t"), count, TopicConfig::default()),
            Err(TopicError::PartitionCount { count: c, .. }) if c == count
        ));
    }
    assert_eq!(registry.list().len(), 0);
    registry
        .create(&name("t"), PARTITIONS_PER_TOPIC_MAX, TopicConfig::default())
        .unwrap();
}

#[test]
fn create_refuses_leftover_partition_dirs() {
    let (_dir, mut registry) = fresh();
    let leftover = registry.partition_dir(&name("orders"), 1);
    fs::create_dir(&leftover).unwrap();
    fs::write(leftover.join("00000000000000000000.log"), b"old data").unwrap();
    let error = registry
        .create(&name("orders"), 2, TopicConfig::default())
        .unwrap_err();
    assert!(matches!(&error, TopicError::LeftoverPartitionDir { path } if *path == leftover));
    assert!(
        leftover.join("00000000000000000000.log").exists(),
        "old data is not touched"
    );
    assert!(registry.get(&name("orders")).is_none());
}

#[test]
fn delete_removes_the_topic_and_its_directories() {
    let (_dir, mut registry) = fresh();
    let created = registry
        .create(&name("orders"), 2, TopicConfig::default())
        .unwrap()
        .clone();
    registry
        .create(&name("keep"), 1, TopicConfig::default())
        .unwrap();
    for partition in 0..2 {
        let dir = registry.partition_dir(&name("orders"), partition);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("00000000000000000000.log"), b"x").unwrap();
    }
    let keep_dir = registry.partition_dir(&name("keep"), 0);
    fs::create_dir(&keep_dir).unwrap();
    assert_eq!(registry.delete(&name("orders")).unwrap(), created);
    assert!(registry.get(&name("orders")).is_none());
    assert!(!registry.partition_dir(&name("orders"), 0).exists());
    assert!(!registry.partition_dir(&name("orders"), 1).exists());
    assert!(keep_dir.exists(), "another topic's directory is untouched");
    assert!(matches!(
        registry.delete(&name("orders")),
        Err(TopicError::NotFound { .. })
    ));
    let data_dir = registry.data_dir().to_owned();
    drop(registry);
    let reopened = TopicRegistry::open(data_dir).unwrap();
    assert!(
        reopened.get(&name("orders")).is_none(),
        "the delete is durable"
    );
}

#[test]
fn add_partitions_only_grows() {
    let (_dir, mut registry) = fresh();
    let id = registry
        .create(&name("t"), 3, TopicConfig::default())
        .unwrap()
        .id;
    for requested in [3, 2] {
        let refusal = registry.add_partitions(&name("t"), requested);
        assert!(matches!(
            refusal,
            Err(TopicError::PartitionsNotIncreased { current: 3, requested: r, .. })
                if r == requested
        ));
    }
    assert!(matches!(
        registry.add_partitions(&name("t"), PARTITIONS_PER_TOPIC_MAX + 1),
        Err(TopicError::PartitionCount { .. })
    ));
    assert!(matches!(
        registry.add_partitions(&name("nope"), 5),
        Err(TopicError::NotFound { .. })
    ));
    let grown = registry.add_partitions(&name("t"), 5).unwrap();
    assert_eq!((grown.partitions, grown.id), (5, id));
}

#[test]
fn add_partitions_refuses_leftover_dirs_of_new_partitions_only() {
    let (_dir, mut registry) = fresh();
    registry
        .create(&name("t"), 1, TopicConfig::default())
        .unwrap();
    fs::create_dir(registry.partition_dir(&name("t"), 0)).unwrap();
    let leftover = registry.partition_dir(&name("t"), 2);
    fs::create_dir(&leftover).unwrap();
    let error = registry.add_partitions(&name("t"), 3).unwrap_err();
    assert!(matches!(&error, TopicError::LeftoverPartitionDir { path } if *path == leftover));
    fs::remove_dir(&leftover).unwrap();
    assert_eq!(
        registry.add_partitions(&name("t"), 3).unwrap().partitions,
        3
    );
}

#[test]
fn alter_config_replaces_the_config_only() {
    let (_dir, mut registry) = fresh();
    let created = registry
        .create(&name("t"), 4, TopicConfig::default())
        .unwrap()
        .clone();
    let altered = registry.alter_config(&name("t"), direct_always()).unwrap();
    assert_eq!(altered.config, direct_always());
    assert_eq!((altered.id, altered.partitions), (created.id, 4));
    assert!(matches!(
        registry.alter_config(&name("nope"), TopicConfig::default()),
        Err(TopicError::NotFound { .. })
    ));
}

#[test]
fn a_restart_loads_the_same_topics() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = TopicRegistry::open(dir.path()).unwrap();
    registry
        .create(&name("orders"), 3, direct_always())
        .unwrap();
    registry
        .create(&name("events.eu"), 1, TopicConfig::default())
        .unwrap();
    registry
        .create(&name("gone"), 1, TopicConfig::default())
        .unwrap();
    registry.add_partitions(&name("events.eu"), 8).unwrap();
    let mut retention = TopicConfig::default();
    retention.apply("retention.ms", "-1").unwrap();
    registry.alter_config(&name("orders"), retention).unwrap();
    registry.delete(&name("gone")).unwrap();
    let before: Vec<TopicMeta> = registry.list().cloned().collect();
    drop(registry);
    let reopened = TopicRegistry::open(dir.path()).unwrap();
    let after: Vec<TopicMeta> = reopened.list().cloned().collect();
    assert_eq!(after, before);
    assert_eq!(after.len(), 2);
    assert_eq!(reopened.get(&name("events.eu")).unwrap().partitions, 8);
    assert_eq!(
        reopened.get(&name("orders")).unwrap().config.retention_ms(),
        None
    );
    // A collision is still refused after a restart: the names came back validated.
    let mut reopened = reopened;
    assert!(matches!(
        reopened.create(&name("events_eu"), 1, TopicConfig::default()),
        Err(TopicError::Collides { .. })
    ));
}

#[test]
fn a_corrupt_topics_file_is_an_error_naming_it_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = TopicRegistry::open(dir.path()).unwrap();
    registry
        .create(&name("orders"), 3, TopicConfig::default())
        .unwrap();
    drop(registry);
    let path = dir.path().join("topics.json");
    let good = fs::read(&path).unwrap();
    for damage in [&good[..good.len() - 20], b"", b"{\"format\":1}"] {
        fs::write(&path, damage).unwrap();
        let error = TopicRegistry::open(dir.path()).unwrap_err();
        assert!(
            matches!(&error, TopicError::CorruptMetadata { path: p, .. } if *p == path),
            "{error:?}"
        );
        assert!(error.to_string().contains("topics.json"), "{error}");
        assert_eq!(
            fs::read(&path).unwrap(),
            damage,
            "the damaged file is left as it was"
        );
    }
}

#[test]
fn an_oversized_topics_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    TopicRegistry::open(dir.path()).unwrap();
    let path = dir.path().join("topics.json");
    let file = fs::File::create(&path).unwrap();
    file.set_len(TOPIC_METADATA_FILE_BYTES_MAX + 1).unwrap();
    match TopicRegistry::open(dir.path()) {
        Err(TopicError::CorruptMetadata { path: p, source }) => {
            assert_eq!(p, path);
            assert!(matches!(
                *source,
                crate::topic::MetadataError::TooLarge { .. }
            ));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_torn_temporary_file_is_removed_and_the_old_content_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = TopicRegistry::open(dir.path()).unwrap();
    registry
        .create(&name("orders"), 3, TopicConfig::default())
        .unwrap();
    let before: Vec<TopicMeta> = registry.list().cloned().collect();
    drop(registry);
    // A crash after writing half of the next version, before the rename.
    let tmp = dir.path().join("topics.json.tmp");
    fs::write(
        &tmp,
        br#"{"format": "ringlog-topics", "version": 1, "topics": [{"na"#,
    )
    .unwrap();
    let mut reopened = TopicRegistry::open(dir.path()).unwrap();
    assert_eq!(reopened.list().cloned().collect::<Vec<_>>(), before);
    assert!(!tmp.exists(), "the remains are cleaned up");
    reopened
        .create(&name("next"), 1, TopicConfig::default())
        .unwrap();
    drop(reopened);
    assert_eq!(TopicRegistry::open(dir.path()).unwrap().list().len(), 2);
}

#[test]
fn a_crash_while_marking_does_not_make_the_directory_foreign() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ringlog.meta.tmp"), b"ringlog-da").unwrap();
    TopicRegistry::open(dir.path()).unwrap();
    assert_eq!(
        fs::read(dir.path().join("ringlog.meta")).unwrap(),
        b"ringlog-data-dir 1\n"
    );
}

#[test]
fn a_failed_write_changes_nothing() {
    let (_dir, mut registry) = fresh();
    registry
        .create(&name("a"), 1, TopicConfig::default())
        .unwrap();
    // A directory where the temporary file goes makes the next write fail before the
    // rename: the old file stays, the registry stays usable.
    let tmp = registry.data_dir().join("topics.json.tmp");
    fs::create_dir(&tmp).unwrap();
    assert!(matches!(
        registry.create(&name("b"), 1, TopicConfig::default()),
        Err(TopicError::Io { .. })
    ));
    assert!(registry.get(&name("b")).is_none(), "memory unchanged");
    fs::remove_dir(&tmp).unwrap();
    assert_eq!(
        names_on_disk(registry.data_dir()),
        ["a"],
        "the old file is intact"
    );
    registry
        .create(&name("b"), 1, TopicConfig::default())
        .unwrap();
    assert_eq!(names_on_disk(registry.data_dir()), ["a", "b"]);
}

#[test]
fn a_poisoned_registry_refuses_changes() {
    let (_dir, mut registry) = fresh();
    registry
        .create(&name("a"), 1, TopicConfig::default())
        .unwrap();
    registry.poisoned = true;
    let refusals = [
        registry
            .create(&name("b"), 1, TopicConfig::default())
            .map(|_| ()),
        registry.add_partitions(&name("a"), 2).map(|_| ()),
        registry
            .alter_config(&name("a"), TopicConfig::default())
            .map(|_| ()),
        registry.delete(&name("a")).map(|_| ()),
    ];
    for refusal in refusals {
        assert!(
            matches!(refusal, Err(TopicError::Poisoned { .. })),
            "{refusal:?}"
        );
    }
    assert_eq!(registry.get(&name("a")).unwrap().partitions, 1);
}
