//! Produce with acks=0 against the real binary: the broker appends the records, in order
//! with the connection's other produce requests, and sends no response at all (the next
//! frame on the connection answers the next request).

use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::wire::{encode_batch, max_version, produce_request, record, Connection, LATEST};

const NONE: i16 = 0;

#[test]
fn acks_0_appends_in_order_and_gets_no_response() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default().with("--auto-create-topics", "false");
    let server = Server::start(&dir.path().join("data"), &options);
    let mut c = Connection::connect(server.address());
    assert_eq!(c.create_topic("fire", 1), NONE);

    let produce_version = max_version(ApiKey::Produce);
    for values in [["a", "b"], ["c", "d"]] {
        let records: Vec<_> = values
            .iter()
            .map(|value| record(None, Some(value.as_bytes()), &[], 1_000))
            .collect();
        let request = produce_request("fire", 0, encode_batch(&records), 0);
        c.send(ApiKey::Produce, produce_version, &request)
            .expect("send an acks=0 produce");
    }
    // Had the broker answered either produce, this would read that answer instead and
    // fail on its correlation id.
    let versions_version = 3;
    let asked = c
        .send(
            ApiKey::ApiVersions,
            versions_version,
            &ApiVersionsRequest::default(),
        )
        .expect("send ApiVersions");
    let versions = c
        .receive::<ApiVersionsRequest>(versions_version, asked)
        .expect("the next frame answers ApiVersions");
    assert_eq!(versions.error_code, NONE);

    let acked = c.produce("fire", 0, &[record(None, Some(b"e"), &[], 1_000)], 1);
    assert_eq!(acked.error_code, NONE);
    assert_eq!(
        acked.base_offset, 4,
        "the acks=0 batches were appended first, in order"
    );
    assert_eq!(c.list_offset("fire", 0, LATEST), (NONE, 5));
    let values: Vec<Vec<u8>> = c
        .fetch_all("fire", 0, 0)
        .into_iter()
        .map(|r| r.value.unwrap_or_default().to_vec())
        .collect();
    assert_eq!(values, [&b"a"[..], b"b", b"c", b"d", b"e"]);
    server.stop_cleanly();
}
