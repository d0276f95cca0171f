//! The classic lab, with real clients: a producer sends a text file line by line to a
//! one-partition topic, a consumer reads the topic from offset 0 and writes the lines back,
//! and the copy is the file, byte for byte. Each client's producer is read by the other
//! client's consumer.

use std::fmt::Write;

use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::python::run_script;
use ringlog_tests::wire::Connection;
use ringlog_tests::TestRng;

/// A text file with what line-oriented code gets wrong: empty lines, CRLF, tabs and
/// trailing spaces, multi-byte UTF-8, a long line, and no newline at the very end.
fn text_file(seed: u64) -> String {
    let mut rng = TestRng::new(seed);
    let mut text = String::new();
    for index in 0..3000u64 {
        match index % 50 {
            7 => text.push('\n'),
            11 => text.push_str("a line ending in CRLF\r\n"),
            13 => text.push_str("\ttabbed,   trailing spaces   \n"),
            17 => text.push_str("ünïcödé — 日本語 — 🦀 — ελληνικά\n"),
            19 if index == 19 => {
                let long: String = (0..40_000)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                text.push_str(&long);
                text.push('\n');
            }
            _ => {
                let _ = writeln!(text, "line {index}: {:016x}", rng.next_u64());
            }
        }
    }
    text.push_str("the last line has no newline");
    text
}

#[test]
fn a_file_sent_line_by_line_is_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &ServerOptions::default());
    let input = dir.path().join("input.txt");
    let text = text_file(7);
    std::fs::write(&input, &text).unwrap();
    let lines = text.split_inclusive('\n').count() as u64;
    for (producer, consumer) in [("kafka-python", "confluent"), ("confluent", "kafka-python")] {
        let topic = format!("lab-{producer}");
        let mut connection = Connection::connect(server.address());
        assert_eq!(connection.create_topic(&topic, 1), 0, "create {topic}");
        let input = input.to_str().unwrap();
        let sent = run_script(
            "lab.py",
            &["produce", producer, &server.bootstrap(), &topic, input],
        );
        assert_eq!(sent["lines"], lines, "{producer} sent every line");
        let output = dir.path().join(format!("output-{consumer}.txt"));
        let read = run_script(
            "lab.py",
            &[
                "consume",
                consumer,
                &server.bootstrap(),
                &topic,
                output.to_str().unwrap(),
            ],
        );
        assert_eq!(
            read["records"], lines,
            "{consumer} read one record per line"
        );
        assert_eq!(
            read["high_watermark"], lines,
            "offsets 0..lines, nothing else"
        );
        let copy = std::fs::read(&output).unwrap();
        assert!(
            copy == text.as_bytes(),
            "{producer} -> {consumer}: the copy differs from the file ({} vs {} bytes)",
            copy.len(),
            text.len()
        );
    }
    server.stop_cleanly();
}
