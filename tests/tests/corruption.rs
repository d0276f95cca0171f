//! Damage done to a data directory while `ringlog serve` is stopped, then found by the real
//! binary: bytes flipped in sealed segments (in the middle of one, where the first fetch
//! finds it, and in the last batch of one, where recovery does) and in the active segment;
//! index files cut short, emptied or deleted; the recovery checkpoint damaged or deleted;
//! producer snapshots damaged or deleted. In both I/O modes (buffered fetches walk the file
//! before sending it; direct ones validate what they read into the batch cache).
//!
//! Checked with the raw wire client, whose decoder verifies every batch's CRC on its own:
//! the broker starts; it logs what is damaged (partition, segment file, byte, offsets);
//! no fetch ever carries a batch that fails its CRC (the decoder would refuse it, failing
//! the test); a damaged batch is answered CORRUPT_MESSAGE; every other acknowledged record
//! is served at its offset, the segments after a damaged one included; rebuilt indexes,
//! checkpoints and producer state lose nothing (a retried idempotent batch is still
//! recognised); and the partition takes produce again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest};
use kafka_protocol::records::Record;
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::wire::{idempotent_batch, max_version, record, Connection};

const CORRUPT_MESSAGE: i16 = 2;
/// Batches of this many records of [`VALUE_BYTES`] each: about 1.1 KiB a batch.
const RECORDS_PER_BATCH: usize = 5;
const VALUE_BYTES: usize = 200;
const BATCHES: usize = 60;
/// About 14 batches a segment, and an index entry for every batch.
const TOPIC_CONFIGS: [(&str, &str); 2] =
    [("segment.bytes", "16384"), ("index.interval.bytes", "1024")];

fn options() -> ServerOptions {
    ServerOptions::default().with("--auto-create-topics", "false")
}

fn value(batch: usize, index: usize) -> Vec<u8> {
    let mut value = format!("batch-{batch}-record-{index}-").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    value
}

/// The record values of each acknowledged batch, by base offset.
type Acknowledged = BTreeMap<i64, Vec<Vec<u8>>>;

/// Creates `topic` in `io_mode` and produces [`BATCHES`] batches with acks=all.
fn create_and_fill(c: &mut Connection, topic: &str, io_mode: &str) -> Acknowledged {
    let mut configs = TOPIC_CONFIGS.to_vec();
    configs.push(("ringlog.io.mode", io_mode));
    assert_eq!(c.create_topic_with_configs(topic, 1, &configs), 0);
    let mut acknowledged = Acknowledged::new();
    for batch in 0..BATCHES {
        let values: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH).map(|i| value(batch, i)).collect();
        let records = one_batch(&values);
        let answer = c.produce(topic, 0, &records, -1);
        assert_eq!(answer.error_code, 0);
        acknowledged.insert(answer.base_offset, values);
    }
    acknowledged
}

/// Records of `values` that the wire client encodes as one batch: its encoder starts a new
/// batch wherever offset minus sequence changes, so the sequences follow the offsets from
/// -1 (the batch's base sequence stays NO_SEQUENCE, as for a producer that is not
/// idempotent).
fn one_batch(values: &[Vec<u8>]) -> Vec<Record> {
    (0..)
        .zip(values)
        .map(|(index, value)| Record {
            sequence: index - 1,
            ..record(None, Some(value), &[], 1_700_000_000_000)
        })
        .collect()
}

/// The partition directory of `topic`'s partition 0.
fn partition_dir(data: &Path, topic: &str) -> PathBuf {
    data.join(format!("{topic}-0"))
}

/// The segment files of a partition, by base offset.
fn segments(dir: &Path) -> Vec<(i64, PathBuf)> {
    let mut segments: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, path))
        })
        .collect();
    segments.sort();
    segments
}

/// Each batch of a segment file: its position, base offset and size, read from the
/// Kafka batch header (big-endian base offset at 0, batch length at 8, after which come
/// the length's bytes).
fn batches(path: &Path) -> Vec<(usize, i64, usize)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let base = i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        let len = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        let size = 12 + usize::try_from(len).unwrap();
        out.push((at, base, size));
        at += size;
    }
    assert_eq!(at, bytes.len(), "{} holds whole batches", path.display());
    out
}

/// Flips one byte of `path` at `at`.
fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// Fetches each acknowledged batch at its base offset: the base offsets refused with
/// CORRUPT_MESSAGE. Every batch served must decode (CRC included) and carry exactly the
/// acknowledged values from that offset.
fn fetch_each(c: &mut Connection, topic: &str, acknowledged: &Acknowledged) -> Vec<i64> {
    let mut refused = Vec::new();
    for (&offset, values) in acknowledged {
        let (code, _, records) = c.fetch_once(topic, 0, offset);
        if code == CORRUPT_MESSAGE {
            assert!(records.is_empty(), "{topic}: a refusal carries no records");
            refused.push(offset);
            continue;
        }
        assert_eq!(code, 0, "{topic}: fetch at {offset}");
        let served: Vec<_> = records
            .iter()
            .filter(|record| record.offset >= offset)
            .take(values.len())
            .map(|record| {
                (
                    record.offset,
                    record.value.clone().unwrap_or_default().to_vec(),
                )
            })
            .collect();
        let expected: Vec<_> = (offset..).zip(values.iter().cloned()).collect();
        assert_eq!(served, expected, "{topic}: the batch at {offset}");
    }
    refused
}

/// The lines of `log` that contain every one of `parts`.
fn lines_with<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .collect()
}

#[test]
fn damaged_batches_are_refused_and_every_other_record_is_served() {
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = data_dir.path().join("data");
    let server = Server::start(&data, &options());
    let mut c = Connection::connect(server.address());
    let topics = ["damaged-buffered", "damaged-direct"];
    let acknowledged: Vec<Acknowledged> = topics
        .iter()
        .zip(["buffered", "direct"])
        .map(|(topic, mode)| create_and_fill(&mut c, topic, mode))
        .collect();
    server.stop_cleanly();

    // In each topic: a batch in the middle of sealed segment 1, the last batch of sealed
    // segment 0, and the first batch of the active segment.
    let mut damaged: Vec<Vec<(i64, PathBuf, usize)>> = Vec::new();
    for topic in topics {
        let segments = segments(&partition_dir(&data, topic));
        assert!(segments.len() >= 4, "{topic}: {segments:?}");
        let (last, active) = (segments.len() - 1, &segments[segments.len() - 1]);
        let picks = [
            (&segments[1], batches(&segments[1].1)[3]),
            (&segments[0], *batches(&segments[0].1).last().unwrap()),
            (active, batches(&active.1)[0]),
        ];
        assert!(last > 1);
        let mut topic_damage = Vec::new();
        for ((_, path), (at, base, size)) in picks {
            // Inside the records, which the CRC covers.
            flip(path, at + size / 2);
            topic_damage.push((base, path.clone(), at));
        }
        damaged.push(topic_damage);
    }

    let server = Server::start(&data, &options());
    let mut c = Connection::connect(server.address());
    let log = server.log();
    for (topic, topic_damage) in topics.iter().zip(&damaged) {
        // Recovery finds the damaged tail of segment 0 and keeps the segment.
        let (base, path, at) = &topic_damage[1];
        let partition = format!("partition={topic}-0");
        let segment = format!("segment={}", path.display());
        let position = format!("position={at}");
        let kept = lines_with(
            &log,
            &["sealed segment damaged; kept", &partition, &segment],
        );
        assert_eq!(kept.len(), 1, "{topic}: recovery names the damage:\n{log}");
        assert!(kept[0].contains(&position) && kept[0].contains(&format!("offsets={base}..")));
    }
    for ((topic, acknowledged), topic_damage) in topics.iter().zip(&acknowledged).zip(&damaged) {
        let refused = fetch_each(&mut c, topic, acknowledged);
        let mut expected: Vec<i64> = topic_damage.iter().map(|(base, ..)| *base).collect();
        expected.sort_unstable();
        assert_eq!(
            refused, expected,
            "{topic}: exactly the damaged batches are refused"
        );
        // The partition takes produce again, after the damage.
        let answer = c.produce(topic, 0, &[record(None, Some(b"after"), &[], 0)], -1);
        assert_eq!(answer.error_code, 0);
    }
    let log = server.stop_cleanly();
    for (topic, topic_damage) in topics.iter().zip(&damaged) {
        for (base, path, at) in [&topic_damage[0], &topic_damage[2]] {
            let found = lines_with(
                &log,
                &[
                    "segment damaged: its batches from this byte fail their checks",
                    &format!("partition={topic}-0"),
                    &format!("segment={}", path.display()),
                    &format!("position={at}"),
                    &format!("offset={base}"),
                ],
            );
            assert_eq!(found.len(), 1, "{topic}: logged once, precisely:\n{log}");
        }
    }
}

/// An idempotent producer's id and epoch.
fn init_producer_id(c: &mut Connection) -> (i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    let answer = c
        .call(&request, max_version(ApiKey::InitProducerId))
        .unwrap();
    assert_eq!(answer.error_code, 0);
    (answer.producer_id.0, answer.producer_epoch)
}

/// Produces [`BATCHES`] batches of one idempotent producer with acks=all: what was
/// acknowledged, and the last batch with its offset (to send again later).
fn fill_idempotent(c: &mut Connection, topic: &str) -> (Acknowledged, (bytes::Bytes, i64)) {
    let (producer_id, epoch) = init_producer_id(c);
    let mut acknowledged = Acknowledged::new();
    let mut last = None;
    for batch in 0..BATCHES {
        let values: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH).map(|i| value(batch, i)).collect();
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let sequence = i32::try_from(batch * RECORDS_PER_BATCH).unwrap();
        let bytes = idempotent_batch(producer_id, epoch, sequence, &slices);
        let answer = c.produce_raw(topic, 0, bytes.clone(), -1);
        assert_eq!(answer.error_code, 0);
        acknowledged.insert(answer.base_offset, values);
        last = Some((bytes, answer.base_offset));
    }
    (acknowledged, last.unwrap())
}

/// Damages the metadata of the partition in `dir`: one `.index` cut short, one
/// `.timeindex` emptied, one `.index` deleted, the checkpoint's CRC broken, the newest
/// producer snapshot damaged and the one before it deleted. Returns each file whose
/// damage recovery must log, with the words of its warning.
fn damage_metadata(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    const INDEX_UNUSABLE: &str = "index files unusable; rebuilding them from the segment";
    let segments = segments(dir);
    assert!(segments.len() >= 4);
    let with = |base: i64, extension: &str| dir.join(format!("{base:020}.{extension}"));
    let index = with(segments[1].0, "index");
    let len = std::fs::metadata(&index).unwrap().len();
    let file = std::fs::File::options().write(true).open(&index).unwrap();
    file.set_len(len - 5).unwrap();
    let time_index = with(segments[2].0, "timeindex");
    std::fs::write(&time_index, b"").unwrap();
    let deleted_index = with(segments[3].0, "index");
    std::fs::remove_file(&deleted_index).unwrap();
    let checkpoint = dir.join("recovery-checkpoint");
    flip(&checkpoint, 20);
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "snapshot"))
        .collect();
    snapshots.sort();
    assert!(snapshots.len() >= 2, "{snapshots:?}");
    let newest = snapshots.pop().unwrap();
    flip(&newest, 30);
    std::fs::remove_file(snapshots.pop().unwrap()).unwrap();
    vec![
        (index, INDEX_UNUSABLE),
        (time_index, INDEX_UNUSABLE),
        (deleted_index, INDEX_UNUSABLE),
        (checkpoint, "recovery checkpoint damaged"),
        (
            newest,
            "producer snapshot ignored; rebuilding the state from the log",
        ),
    ]
}

#[test]
fn damaged_indexes_checkpoint_and_snapshots_cost_a_rebuild_and_nothing_else() {
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = data_dir.path().join("data");
    let topic = "rebuilt";
    let server = Server::start(&data, &options());
    let mut c = Connection::connect(server.address());
    let mut configs = TOPIC_CONFIGS.to_vec();
    configs.push(("ringlog.io.mode", "buffered"));
    assert_eq!(c.create_topic_with_configs(topic, 1, &configs), 0);
    let (acknowledged, last) = fill_idempotent(&mut c, topic);
    server.stop_cleanly();

    let dir = partition_dir(&data, topic);
    let damaged = damage_metadata(&dir);

    let server = Server::start(&data, &options());
    let mut c = Connection::connect(server.address());
    let log = server.log();
    let partition = format!("partition={topic}-0");
    for (file, message) in &damaged {
        let file = file.display().to_string();
        let found = lines_with(&log, &[message, &file]);
        assert_eq!(found.len(), 1, "'{message}' names {file}:\n{log}");
        assert!(
            found[0].contains(&partition) || message.starts_with("recovery checkpoint"),
            "{}",
            found[0]
        );
    }
    assert!(fetch_each(&mut c, topic, &acknowledged).is_empty());
    // The producer state was rebuilt from the log: the last batch, sent again, is known.
    let (bytes, offset) = last;
    let answer = c.produce_raw(topic, 0, bytes, -1);
    assert_eq!(
        (answer.error_code, answer.base_offset),
        (0, offset),
        "a retried batch is answered with its original offset, not written again"
    );
    let end = c.list_offset(topic, 0, ringlog_tests::wire::LATEST).1;
    assert_eq!(end, offset + RECORDS_PER_BATCH as i64);
    server.stop_cleanly();

    // A checkpoint lost altogether: the whole active segment is scanned, nothing lost.
    std::fs::remove_file(dir.join("recovery-checkpoint")).unwrap();
    let server = Server::start(&data, &options());
    let mut c = Connection::connect(server.address());
    let log = server.log();
    let found = lines_with(&log, &["no usable recovery checkpoint", &partition]);
    assert_eq!(found.len(), 1, "{log}");
    assert!(fetch_each(&mut c, topic, &acknowledged).is_empty());
    server.stop_cleanly();
}
