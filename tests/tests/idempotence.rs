//! The idempotent producer against the real binary, with the raw wire client: InitProducerId
//! hands out distinct ids at epoch 0 (and refuses transactional ids); a retried batch gets
//! its original offset and is stored once; that holds after a clean restart and after
//! SIGKILL; a gap is OUT_OF_ORDER_SEQUENCE_NUMBER and an older epoch INVALID_PRODUCER_EPOCH;
//! producer ids are never handed out twice across restarts.

use std::path::Path;

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::wire::{idempotent_batch, max_version, record, Connection};

const TOPIC: &str = "exactly-once";
const NONE: i16 = 0;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_REQUEST: i16 = 42;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

fn start(data: &Path) -> Server {
    let options = ServerOptions::default().with("--auto-create-topics", "false");
    Server::start(data, &options)
}

/// `(error, producer id, epoch)` of an InitProducerId at `version`.
fn init_producer_id(
    c: &mut Connection,
    version: i16,
    transactional: Option<&str>,
) -> (i16, i64, i16) {
    let transactional_id =
        transactional.map(|id| TransactionalId(StrBytes::from_string(id.to_owned())));
    let request = InitProducerIdRequest::default()
        .with_transactional_id(transactional_id)
        .with_transaction_timeout_ms(60_000);
    let response = c.call(&request, version).expect("init producer id");
    (
        response.error_code,
        response.producer_id.0,
        response.producer_epoch,
    )
}

/// Produces one idempotent batch with acks=all; `(error, base offset)`.
fn produce(
    c: &mut Connection,
    pid: i64,
    epoch: i16,
    sequence: i32,
    values: &[&[u8]],
) -> (i16, i64) {
    let batch = idempotent_batch(pid, epoch, sequence, values);
    let answer = c.produce_raw(TOPIC, 0, batch, -1);
    (answer.error_code, answer.base_offset)
}

fn values(c: &mut Connection) -> Vec<(i64, String)> {
    c.fetch_all(TOPIC, 0, 0)
        .into_iter()
        .map(|r| {
            let value = r.value.map(|v| String::from_utf8_lossy(&v).into_owned());
            (r.offset, value.unwrap_or_default())
        })
        .collect()
}

fn expected(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
    pairs.iter().map(|(o, v)| (*o, (*v).to_owned())).collect()
}

#[test]
fn a_retried_batch_is_stored_once_and_answered_with_its_offset_across_restarts_and_kills() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data);
    let mut c = Connection::connect(server.address());
    assert_eq!(c.create_topic(TOPIC, 1), NONE);
    let mut ids = Vec::new();
    for version in 0..=max_version(ApiKey::InitProducerId) {
        let (error, pid, epoch) = init_producer_id(&mut c, version, None);
        assert_eq!((error, epoch), (NONE, 0), "v{version}");
        ids.push(pid);
    }
    let refused = init_producer_id(&mut c, max_version(ApiKey::InitProducerId), Some("tx-1"));
    assert_eq!(
        refused,
        (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1, -1),
        "no transactions"
    );
    let empty = init_producer_id(&mut c, max_version(ApiKey::InitProducerId), Some(""));
    assert_eq!(
        empty,
        (INVALID_REQUEST, -1, -1),
        "an empty transactional id"
    );
    let pid = ids[0];

    assert_eq!(
        produce(&mut c, pid, 0, 0, &[b"a0", b"a1", b"a2"]),
        (NONE, 0)
    );
    let plain = c.produce(TOPIC, 0, &[record(None, Some(b"plain"), &[], 1)], -1);
    assert_eq!((plain.error_code, plain.base_offset), (NONE, 3));
    assert_eq!(
        produce(&mut c, pid, 0, 0, &[b"a0", b"a1", b"a2"]),
        (NONE, 0),
        "retry"
    );
    let once = expected(&[(0, "a0"), (1, "a1"), (2, "a2"), (3, "plain")]);
    assert_eq!(values(&mut c), once, "the retry was not stored");
    server.stop_cleanly();

    let server = start(&data);
    let mut c = Connection::connect(server.address());
    assert_eq!(
        produce(&mut c, pid, 0, 0, &[b"a0", b"a1", b"a2"]),
        (NONE, 0),
        "after a stop"
    );
    assert_eq!(produce(&mut c, pid, 0, 3, &[b"b3"]), (NONE, 4));
    let log = server.kill();
    assert!(!log.contains("panicked"), "{log}");

    let server = start(&data);
    let mut c = Connection::connect(server.address());
    assert_eq!(
        produce(&mut c, pid, 0, 3, &[b"b3"]),
        (NONE, 4),
        "after SIGKILL"
    );
    assert_eq!(
        produce(&mut c, pid, 0, 0, &[b"a0", b"a1", b"a2"]),
        (NONE, 0)
    );
    let gap = produce(&mut c, pid, 0, 10, &[b"lost"]);
    assert_eq!(gap.0, OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(
        produce(&mut c, pid, 1, 0, &[b"c0"]),
        (NONE, 5),
        "a new epoch at 0"
    );
    let zombie = produce(&mut c, pid, 0, 4, &[b"zombie"]);
    assert_eq!(zombie.0, INVALID_PRODUCER_EPOCH);
    let (error, fresh, _) = init_producer_id(&mut c, max_version(ApiKey::InitProducerId), None);
    assert_eq!(error, NONE);
    assert!(
        ids.iter().all(|old| fresh > *old),
        "{fresh} after {ids:?}: never reused"
    );
    let all = expected(&[
        (0, "a0"),
        (1, "a1"),
        (2, "a2"),
        (3, "plain"),
        (4, "b3"),
        (5, "c0"),
    ]);
    assert_eq!(values(&mut c), all);
    server.stop_cleanly();
}
