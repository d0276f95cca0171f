//! Tests of the internal transport: its codec alone (round trips, and any bytes judged
//! without a panic), and whole transports over real loopback TCP through the real runtime —
//! many groups' messages exchanged intact and in order, a peer reached once it starts
//! listening, a closed connection made again at once, a full queue dropping, every kind of
//! bad frame closing only its own connection with its reason, and the hello exchange
//! telling each side the other's Kafka address.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use proptest::prelude::*;
use raft::eraftpb::{Entry, Message, MessageType};
use ringlog_engine::limits::BATCH_SIZE_BYTES_MAX;
use ringlog_engine::rt::{self, TcpListener, TcpStream};

use super::*;

const WAIT: Duration = Duration::from_secs(20);

fn run<F: Future>(future: F) -> F::Output {
    rt::block_on(future).expect("io_uring is available")
}

/// A node's hello, as the tests of other modules use it too.
pub(crate) fn hello(node_id: u64) -> Hello {
    Hello {
        node_id,
        cluster_name: "test-cluster".to_owned(),
        kafka_host: format!("kafka-{node_id}.example"),
        kafka_port: 9000 + node_id as u16,
        incarnation: 77 + node_id,
    }
}

/// An append from `from` to `to` carrying one entry of `data_bytes` (a pattern that
/// depends on `index`, so a mixed-up message shows).
fn message(from: u64, to: u64, index: u64, data_bytes: usize) -> Message {
    let data: Vec<u8> = (0..data_bytes)
        .map(|at| (at as u64 ^ index.wrapping_mul(31)) as u8)
        .collect();
    let entry = Entry {
        index: index + 1,
        term: 3,
        data: Bytes::from(data),
        ..Entry::default()
    };
    Message {
        msg_type: MessageType::MsgAppend,
        from,
        to,
        term: 3,
        log_term: 3,
        index,
        commit: index,
        entries: vec![entry].into(),
        ..Message::default()
    }
}

fn listen() -> Rc<TcpListener> {
    Rc::new(TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap())
}

/// An address nothing listens on (until a test binds it).
fn unused_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .local_addr()
}

/// What a serving side was given.
#[derive(Default)]
struct Received {
    hellos: RefCell<Vec<Hello>>,
    messages: RefCell<Vec<Incoming>>,
}

/// Serves `listener` as `local` until the returned guard is dropped.
fn start_serving(listener: Rc<TcpListener>, local: Hello) -> (Rc<Received>, AbortOnDrop) {
    let received = Rc::new(Received::default());
    let (hellos, messages) = (received.clone(), received.clone());
    let task = rt::spawn_local(serve(
        listener,
        local,
        move |hello: &Hello| hellos.hellos.borrow_mut().push(hello.clone()),
        move |incoming| messages.messages.borrow_mut().push(incoming),
    ));
    (received, AbortOnDrop(Some(task)))
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        rt::sleep(Duration::from_millis(2)).await;
    }
}

/// A frame as the wire has it, whatever its kind and body.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

fn raft_frame(topic: &str, partition: u32, message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_raft(&mut out, usize::MAX, at(topic, partition), message).unwrap();
    out
}

/// The group `(topic, partition)` with a tag of its own (see [`tag_of`]).
fn at(topic: &str, partition: u32) -> Group<'_> {
    Group {
        topic,
        partition,
        tag: tag_of(partition),
    }
}

/// The tag the tests give partition `partition`'s topic: not 0, and not the same for two.
fn tag_of(partition: u32) -> u64 {
    0xA5A5_0000_0000_0000 | u64::from(partition)
}

/// A Raft body with any topic bytes (too long, not UTF-8) and message bytes.
fn raft_body(topic: &[u8], partition: u32, message: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&tag_of(partition).to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// Connects to `address`, sends `bytes` (then shuts down writing if `shutdown_write`), and
/// reads until the other side closes: what it received, or `None` if it was not closed
/// within the wait.
async fn send_and_wait_closed(
    address: SocketAddr,
    bytes: Vec<u8>,
    shutdown_write: bool,
) -> Option<Vec<u8>> {
    let stream = TcpStream::connect(address).await.unwrap();
    // The other side may close before taking everything; what it does then is the test.
    let _ = stream.send_all(bytes).await;
    if shutdown_write {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut received = Vec::new();
    let closed = rt::timeout(WAIT, async {
        loop {
            let (result, buf) = stream.recv(Vec::with_capacity(4096)).await;
            match result {
                Ok(0) | Err(_) => return,
                Ok(_) => received.extend_from_slice(&buf),
            }
        }
    })
    .await;
    closed.ok().map(|()| received)
}

// ---------------------------------------------------------------------------------------
// The codec.

fn arbitrary_hello() -> impl Strategy<Value = Hello> {
    (
        any::<u64>(),
        "[a-z0-9-]{0,255}",
        "\\PC{0,60}",
        any::<u16>(),
        any::<u64>(),
    )
        .prop_map(
            |(node_id, cluster_name, kafka_host, kafka_port, incarnation)| Hello {
                node_id,
                cluster_name,
                kafka_host,
                kafka_port,
                incarnation,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hellos_round_trip(hello in arbitrary_hello()) {
        let encoded = encode_hello(&hello);
        let (kind, len) = frame_header(&encoded, HELLO_FRAME_LEN_MAX).unwrap().unwrap();
        prop_assert_eq!(kind, Kind::Hello);
        prop_assert_eq!(LEN_FIELD_BYTES + len, encoded.len());
        prop_assert_eq!(decode_hello(&encoded[BODY_AT..]).unwrap(), hello);
    }

    #[test]
    fn raft_frames_round_trip_and_are_whole_only_when_all_arrived(
        topic in "[a-zA-Z0-9._-]{1,249}",
        partition in any::<u32>(),
        index in any::<u64>(),
        data_bytes in 0usize..3000,
    ) {
        let sent = message(4, 5, index, data_bytes);
        let encoded = raft_frame(&topic, partition, &sent);
        for cut in 0..encoded.len() {
            let prefix = &encoded[..cut];
            match frame_header(prefix, TRANSPORT_FRAME_BYTES_MAX).unwrap() {
                None => {}
                Some((_, len)) => prop_assert!(LEN_FIELD_BYTES + len > cut),
            }
        }
        let (kind, len) = frame_header(&encoded, TRANSPORT_FRAME_BYTES_MAX).unwrap().unwrap();
        prop_assert_eq!(kind, Kind::Raft);
        prop_assert_eq!(LEN_FIELD_BYTES + len, encoded.len());
        let (group, got) = decode_raft(&encoded[BODY_AT..]).unwrap();
        prop_assert_eq!(group, at(&topic, partition));
        prop_assert_eq!(got, Payload::Raft(sent));
    }

    /// Any bytes are judged without a panic, and a frame is admitted only within bounds.
    #[test]
    fn any_bytes_are_judged_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        len_max in 1usize..700,
    ) {
        if let Ok(Some((kind, len))) = frame_header(&bytes, len_max) {
            prop_assert!((1..=len_max).contains(&len));
            if let Some(body) = bytes.get(BODY_AT..LEN_FIELD_BYTES + len) {
                match kind {
                    Kind::Hello => drop(decode_hello(body)),
                    Kind::Raft => drop(decode_raft(body)),
                    rejoin @ (Kind::RejoinAsk | Kind::RejoinAnswer) => {
                        drop(decode_rejoin(rejoin, body));
                    }
                    Kind::Forward => drop(decode_forward(body)),
                    fill => drop(decode_fill(fill, body)),
                }
            }
        }
        // Bodies straight from the bytes, past any header.
        drop(decode_hello(&bytes));
        drop(decode_raft(&bytes));
        drop(decode_fill(Kind::FillRequest, &bytes));
        drop(decode_fill(Kind::FillChunk, &bytes));
        drop(decode_rejoin(Kind::RejoinAsk, &bytes));
        drop(decode_rejoin(Kind::RejoinAnswer, &bytes));
        drop(decode_forward(&bytes));
    }
}

#[test]
fn a_length_is_judged_from_its_own_four_bytes() {
    let too_long = ((TRANSPORT_FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
    assert!(matches!(
        frame_header(&too_long, TRANSPORT_FRAME_BYTES_MAX),
        Err(FrameError::TooLarge { len, max })
            if len == TRANSPORT_FRAME_BYTES_MAX + 1 && max == TRANSPORT_FRAME_BYTES_MAX
    ));
    let at_limit = (TRANSPORT_FRAME_BYTES_MAX as u32).to_be_bytes();
    assert!(matches!(
        frame_header(&at_limit, TRANSPORT_FRAME_BYTES_MAX),
        Ok(None)
    ));
    assert!(matches!(
        frame_header(&[0, 0, 0, 0], TRANSPORT_FRAME_BYTES_MAX),
        Err(FrameError::Empty)
    ));
    assert!(matches!(
        frame_header(&[0, 0, 0, 1, 11], TRANSPORT_FRAME_BYTES_MAX),
        Err(FrameError::UnknownKind { kind: 11 })
    ));
}

#[test]
fn the_largest_message_raft_sends_fits_a_frame() {
    // One entry of the largest batch, and an append of many small entries up to raft-rs's
    // limit (each a few bytes more in the message than raft-rs counts it).
    let largest = message(1, 2, u64::MAX, BATCH_SIZE_BYTES_MAX);
    let mut encoded = Vec::new();
    let longest = "t".repeat(249);
    encode_raft(&mut encoded, usize::MAX, at(&longest, u32::MAX), &largest).unwrap();
    let mut many = message(1, 2, u64::MAX, 0);
    let entry = Entry {
        index: u64::MAX,
        term: u64::MAX,
        ..Entry::default()
    };
    let mut counted = 0;
    while counted <= crate::limits::APPEND_MESSAGE_BYTES_MAX {
        counted += u64::from(entry.compute_size());
        many.entries.push(entry.clone());
    }
    let mut encoded = Vec::new();
    encode_raft(&mut encoded, usize::MAX, at(&longest, u32::MAX), &many).unwrap();
}

#[test]
fn messages_that_cannot_be_sent_or_have_no_peer_are_dropped_and_counted() {
    run(async {
        let transport = Transport::new(hello(1), vec![(2, unused_address())]);
        transport.send(7, at("topic", 0), &message(1, 7, 0, 10));
        let too_large = message(1, 2, 0, TRANSPORT_FRAME_BYTES_MAX);
        transport.send(2, at("topic", 0), &too_large);
        transport.send(2, at(&"t".repeat(250), 0), &message(1, 2, 0, 10));
        transport.send(2, at("", 0), &message(1, 2, 0, 10));
        let stats = transport.stats();
        assert_eq!(stats.messages_dropped_unknown_peer, 1);
        assert_eq!(stats.messages_dropped_unsendable, 3);
        assert_eq!(stats.messages_queued, 0);
        assert!(transport.peers[&2].outbox.borrow().frames.is_empty());
    });
}

// ---------------------------------------------------------------------------------------
// Transports over loopback.

#[test]
fn two_transports_exchange_many_groups_messages_intact_and_in_order() {
    run(async {
        let (listener_1, listener_2) = (listen(), listen());
        let (received_1, _serving_1) = start_serving(listener_1.clone(), hello(1));
        let (received_2, _serving_2) = start_serving(listener_2.clone(), hello(2));
        let transport_1 = Transport::new(hello(1), vec![(2, listener_2.local_addr())]);
        let transport_2 = Transport::new(hello(2), vec![(1, listener_1.local_addr())]);

        let count = 3000u64;
        let mut sent: Vec<(u64, String, u32, Message)> = Vec::new();
        let mut suspensions = 0;
        for index in 0..count {
            let data_bytes = match index {
                1500 => BATCH_SIZE_BYTES_MAX,
                _ if index % 700 == 0 => 1 << 20,
                _ => (index as usize * 37) % 3000,
            };
            let (topic, partition) = (format!("topic-{}", index % 3), (index % 4) as u32);
            for (from, to, transport) in [(1, 2, &transport_1), (2, 1, &transport_2)] {
                let sending = message(from, to, index, data_bytes);
                transport.send(to, at(&topic, partition), &sending);
                sent.push((to, topic.clone(), partition, sending));
            }
            if index % 100 == 99 {
                rt::yield_now().await;
                suspensions += 1;
            }
        }
        let all_arrived =
            || received_1.messages.borrow().len() + received_2.messages.borrow().len();
        wait_until("every message arrived", || all_arrived() == sent.len()).await;

        for (node, received) in [(1, &received_1), (2, &received_2)] {
            let expected: Vec<_> = sent.iter().filter(|sent| sent.0 == node).collect();
            let received = received.messages.borrow();
            assert_eq!(received.len(), expected.len());
            for (got, (to, topic, partition, message)) in received.iter().zip(expected) {
                assert_eq!(got.from, 3 - to);
                assert_eq!((&got.topic, got.partition), (topic, *partition));
                assert_eq!(got.message(), Some(message));
            }
        }
        for transport in [&transport_1, &transport_2] {
            let stats = transport.stats();
            assert_eq!(stats.messages_queued, count);
            assert_eq!(stats.connections_opened, 1);
            let dropped = stats.messages_dropped_queue_full
                + stats.messages_dropped_disconnected
                + stats.messages_dropped_unsendable;
            assert_eq!(dropped, 0);
            // The writer runs only while the sending task is suspended, and takes all that
            // is queued each time: many messages per send.
            assert!(
                stats.batches_sent <= suspensions + 1,
                "{} sends for {suspensions} suspensions",
                stats.batches_sent
            );
        }
        assert_eq!(transport_1.peer_hello(2), Some(hello(2)));
        assert_eq!(transport_2.peer_hello(1), Some(hello(1)));
        assert_eq!(*received_1.hellos.borrow(), [hello(2)]);
        assert_eq!(*received_2.hellos.borrow(), [hello(1)]);
    });
}

#[test]
fn the_hello_exchange_tells_each_side_the_others_kafka_address() {
    run(async {
        // Node 2 only accepts: node 1 learns of it from its answer alone.
        let listener_2 = listen();
        let (received_2, _serving) = start_serving(listener_2.clone(), hello(2));
        let transport_1 = Transport::new(hello(1), vec![(2, listener_2.local_addr())]);
        wait_until("node 1 heard node 2", || {
            transport_1.peer_hello(2).is_some()
        })
        .await;
        let answered = transport_1.peer_hello(2).unwrap();
        assert_eq!(
            (answered.kafka_host.as_str(), answered.kafka_port),
            ("kafka-2.example", 9002)
        );
        assert_eq!(*received_2.hellos.borrow(), [hello(1)]);
        assert_eq!(received_2.hellos.borrow()[0].kafka_host, "kafka-1.example");
    });
}

#[test]
fn nodes_of_different_clusters_or_ids_refuse_each_other() {
    run(async {
        let listener = listen();
        let other_cluster = Hello {
            cluster_name: "another-cluster".to_owned(),
            ..hello(2)
        };
        let (received, _serving) = start_serving(listener.clone(), other_cluster);
        let transport = Transport::new(hello(1), vec![(2, listener.local_addr())]);
        // Node 3 is told node 2's address: whoever answers there is not the node it meant.
        let listener_2 = listen();
        let (_, _serving_2) = start_serving(listener_2.clone(), hello(2));
        let transport_3 = Transport::new(hello(3), vec![(4, listener_2.local_addr())]);
        wait_until("both failed twice", || {
            transport.stats().connect_failures >= 2 && transport_3.stats().connect_failures >= 2
        })
        .await;
        assert_eq!(transport.peer_hello(2), None);
        assert_eq!(transport.stats().connections_opened, 0);
        assert!(received.hellos.borrow().is_empty());
        assert_eq!(transport_3.peer_hello(4), None);
        assert_eq!(transport_3.stats().connections_opened, 0);
    });
}

#[test]
fn a_peer_down_at_first_is_reached_once_it_listens() {
    run(async {
        let address = unused_address();
        let transport = Transport::new(hello(1), vec![(2, address)]);
        transport.send(2, at("early", 0), &message(1, 2, 0, 100));
        wait_until("two attempts failed", || {
            transport.stats().connect_failures >= 2
        })
        .await;
        assert_eq!(transport.stats().messages_dropped_disconnected, 1);

        let listener = Rc::new(TcpListener::bind(address).unwrap());
        let (received, _serving) = start_serving(listener, hello(2));
        let mut index = 1;
        let deadline = Instant::now() + WAIT;
        while received.messages.borrow().is_empty() {
            assert!(
                Instant::now() < deadline,
                "nothing arrived once the peer listened"
            );
            transport.send(2, at("late", 0), &message(1, 2, index, 100));
            index += 1;
            rt::sleep(Duration::from_millis(10)).await;
        }
        let first_burst = index;
        for index in first_burst..first_burst + 100 {
            transport.send(2, at("late", 1), &message(1, 2, index, 100));
        }
        let arrived = |index| {
            received
                .messages
                .borrow()
                .iter()
                .any(|incoming| incoming.message().is_some_and(|m| m.index == index))
        };
        wait_until("the burst arrived", || arrived(first_burst + 99)).await;
        let indexes: Vec<u64> = received
            .messages
            .borrow()
            .iter()
            .filter_map(|incoming| incoming.message().map(|m| m.index))
            .collect();
        // What arrived is in order, without duplicates, and all of the burst.
        assert!(
            indexes.windows(2).all(|pair| pair[0] < pair[1]),
            "{indexes:?}"
        );
        assert!((first_burst..first_burst + 100).all(|index| indexes.contains(&index)));
        assert!(
            !indexes.contains(&0),
            "sent while the peer was down, dropped"
        );
        assert_eq!(transport.peer_hello(2), Some(hello(2)));
    });
}

/// Accepts one connection as node 2 and answers its hello.
async fn accept_as_node_2(listener: &TcpListener) -> (TcpStream, FrameReader) {
    let stream = rt::timeout(WAIT, listener.accept())
        .await
        .expect("a connection within the wait")
        .unwrap();
    let mut reader = FrameReader::new();
    assert_eq!(read_hello(&mut reader, &stream).await.unwrap(), hello(1));
    let (sent, _) = stream.send_all(encode_hello(&hello(2))).await;
    sent.unwrap();
    (stream, reader)
}

async fn next_message(reader: &mut FrameReader, stream: &TcpStream) -> Message {
    match reader
        .next(stream, TRANSPORT_FRAME_BYTES_MAX)
        .await
        .unwrap()
    {
        (Kind::Raft, body) => match decode_raft(body).unwrap().1 {
            Payload::Raft(message) => message,
            other => panic!("{other:?}"),
        },
        (kind, _) => panic!("a {kind:?} frame"),
    }
}

/// Counts the connections open now in a shared cell, as the node counts its peers' links.
struct OpenLink(Rc<Cell<usize>>);

impl OpenLink {
    fn open(count: &Rc<Cell<usize>>) -> OpenLink {
        count.set(count.get() + 1);
        OpenLink(count.clone())
    }
}

impl Drop for OpenLink {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

#[test]
fn what_the_hello_callback_answers_lives_as_long_as_the_connection() {
    run(async {
        let listener = listen();
        let open = Rc::new(Cell::new(0));
        let counted = open.clone();
        let _serving = AbortOnDrop(Some(rt::spawn_local(serve(
            listener.clone(),
            hello(2),
            move |_: &Hello| OpenLink::open(&counted),
            |_| {},
        ))));
        let first = Transport::new(hello(1), vec![(2, listener.local_addr())]);
        first.send(2, at("topic", 0), &message(1, 2, 0, 10));
        wait_until("node 1 is connected", || open.get() == 1).await;
        let second = TcpStream::connect(listener.local_addr()).await.unwrap();
        let _ = second.send_all(encode_hello(&hello(3))).await;
        wait_until("node 3 is connected too", || open.get() == 2).await;
        second.shutdown(Shutdown::Both).unwrap();
        drop(second);
        wait_until("node 3's connection is over", || open.get() == 1).await;
        drop(first);
        wait_until("node 1's connection is over", || open.get() == 0).await;
    });
}

#[test]
fn a_connection_the_peer_closes_is_made_again_at_once() {
    run(async {
        let listener = listen();
        let transport = Transport::new(hello(1), vec![(2, listener.local_addr())]);
        let (stream, mut reader) = accept_as_node_2(&listener).await;
        transport.send(2, at("topic", 0), &message(1, 2, 0, 10));
        assert_eq!(next_message(&mut reader, &stream).await.index, 0);
        stream.shutdown(Shutdown::Both).unwrap();
        drop(stream);

        // Nothing is sent meanwhile: only noticing the close makes the writer reconnect.
        let (stream, mut reader) = accept_as_node_2(&listener).await;
        transport.send(2, at("topic", 0), &message(1, 2, 1, 10));
        assert_eq!(next_message(&mut reader, &stream).await.index, 1);
        assert_eq!(transport.stats().connections_opened, 2);
    });
}

#[test]
fn a_full_queue_drops_new_messages_and_counts_them() {
    run(async {
        let listener = listen();
        let queue_bytes_max = 1 << 20;
        let transport = Transport::with_queue_bytes_max(
            hello(1),
            vec![(2, listener.local_addr())],
            queue_bytes_max,
        );
        // A peer that answers and then never reads.
        let (_stream, _reader) = accept_as_node_2(&listener).await;
        let peer = transport.peers[&2].clone();
        let mut index = 0;
        while transport.stats().messages_dropped_queue_full == 0 {
            assert!(index < 100_000, "the queue never filled");
            transport.send(2, at("topic", 0), &message(1, 2, index, 64 * 1024));
            let queued = {
                let outbox = peer.outbox.borrow();
                outbox.frames.len() + outbox.in_flight_bytes
            };
            assert!(queued <= queue_bytes_max, "{queued} bytes queued");
            index += 1;
            if index % 8 == 0 {
                rt::sleep(Duration::from_millis(1)).await;
            }
        }
        let stats = transport.stats();
        assert_eq!(
            stats.messages_queued + stats.messages_dropped_queue_full,
            index
        );
        assert_eq!(stats.messages_dropped_disconnected, 0);
    });
}

/// What a bad connection sends after its hello (or instead of it), and the reason it must
/// be closed for.
struct BadCase {
    name: &'static str,
    hello_first: bool,
    bytes: Vec<u8>,
    shutdown_write: bool,
    reason: fn(&ConnectionError) -> bool,
}

fn bad_cases() -> Vec<BadCase> {
    let mut cases = framing_cases();
    cases.extend(body_cases());
    cases.extend(fill_cases());
    cases.extend(rejoin_cases());
    cases.extend(hibernation_cases());
    cases.extend(leader_cases());
    cases.extend(cases_before_hello());
    cases
}

fn case(name: &'static str, bytes: Vec<u8>, reason: fn(&ConnectionError) -> bool) -> BadCase {
    BadCase {
        name,
        hello_first: true,
        bytes,
        shutdown_write: false,
        reason,
    }
}

fn frame_error(error: &ConnectionError) -> &FrameError {
    match error {
        ConnectionError::Frame(error) => error,
        other => panic!("not a frame error: {other:?}"),
    }
}

/// Bad lengths and kinds, after a hello.
fn framing_cases() -> Vec<BadCase> {
    let good = message(1, 2, 0, 10).write_to_bytes().unwrap();
    let mut mid_frame = frame(KIND_RAFT, &raft_body(b"topic", 0, &good));
    mid_frame.truncate(14);
    let one_above = ((TRANSPORT_FRAME_BYTES_MAX + 1) as u32)
        .to_be_bytes()
        .to_vec();
    vec![
        case(
            "a length above the limit, body never sent",
            vec![0xff; 4],
            |error| {
                matches!(frame_error(error), FrameError::TooLarge { len, max }
                if *len == u32::MAX as usize && *max == TRANSPORT_FRAME_BYTES_MAX)
            },
        ),
        case("a length one above the limit", one_above, |error| {
            matches!(frame_error(error), FrameError::TooLarge { len, .. }
                if *len == TRANSPORT_FRAME_BYTES_MAX + 1)
        }),
        case("an empty frame", vec![0; 4], |error| {
            matches!(frame_error(error), FrameError::Empty)
        }),
        case(
            "an unknown kind, body never sent",
            vec![0, 0, 0, 9, 11],
            |error| matches!(frame_error(error), FrameError::UnknownKind { kind: 11 }),
        ),
        case("a second hello", encode_hello(&hello(1)), |error| {
            matches!(error, ConnectionError::UnexpectedHello)
        }),
        BadCase {
            shutdown_write: true,
            ..case("the peer closing in a frame", mid_frame, |error| {
                matches!(error, ConnectionError::ClosedMidFrame { received: 14, .. })
            })
        },
    ]
}

/// Bad Raft bodies, after a hello.
fn body_cases() -> Vec<BadCase> {
    let good = message(1, 2, 0, 10).write_to_bytes().unwrap();
    let mut truncated_topic = frame(KIND_RAFT, &raft_body(b"topic-name", 0, &good));
    truncated_topic.truncate(BODY_AT + 5);
    truncated_topic[..4].copy_from_slice(&6u32.to_be_bytes());
    let partition_cut = frame(KIND_RAFT, &raft_body(b"topic", 0, &[])[..9]);
    let too_long = frame(KIND_RAFT, &raft_body(&[b'a'; 250], 0, &good));
    vec![
        case("a topic cut by its frame's end", truncated_topic, |error| {
            matches!(
                frame_error(error),
                FrameError::Truncated {
                    field: "topic name"
                }
            )
        }),
        case(
            "a partition cut by its frame's end",
            partition_cut,
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::Truncated { field: "partition" }
                )
            },
        ),
        case("a topic longer than the limit", too_long, |error| {
            matches!(
                frame_error(error),
                FrameError::TooLong {
                    field: "topic name",
                    len: 250,
                    max: 249
                }
            )
        }),
        case(
            "an empty topic",
            frame(KIND_RAFT, &raft_body(b"", 0, &good)),
            |error| matches!(frame_error(error), FrameError::TopicEmpty),
        ),
        case(
            "a topic not UTF-8",
            frame(KIND_RAFT, &raft_body(&[0xff, 0xfe], 0, &good)),
            |error| matches!(frame_error(error), FrameError::NotUtf8 { .. }),
        ),
        case(
            "a message that does not decode",
            frame(KIND_RAFT, &raft_body(b"topic", 0, &[0xff; 12])),
            |error| matches!(frame_error(error), FrameError::Message { .. }),
        ),
        case(
            "a message from another node",
            raft_frame("topic", 0, &message(3, 2, 0, 10)),
            |error| matches!(error, ConnectionError::Misaddressed { from: 3, .. }),
        ),
        case(
            "a message to another node",
            raft_frame("topic", 0, &message(1, 3, 0, 10)),
            |error| matches!(error, ConnectionError::Misaddressed { to: 3, .. }),
        ),
    ]
}

/// Bad fill frames after the hello.
fn fill_cases() -> Vec<BadCase> {
    vec![
        case(
            "a fill request for a negative offset",
            frame(KIND_FILL_REQUEST, &fill_body(-1, &1u32.to_be_bytes())),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::FillOutOfBounds {
                        field: "offset",
                        value: -1
                    }
                )
            },
        ),
        case(
            "a fill chunk from a negative log start",
            frame(KIND_FILL_CHUNK, &fill_body(0, &(-5i64).to_be_bytes())),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::FillOutOfBounds {
                        field: "log start",
                        value: -5
                    }
                )
            },
        ),
        case(
            "a fill chunk without its log start",
            frame(KIND_FILL_CHUNK, &fill_body(0, &[0; 7])),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::Truncated { field: "log start" }
                )
            },
        ),
        case(
            "a fill request for no bytes",
            frame(KIND_FILL_REQUEST, &fill_body(0, &0u32.to_be_bytes())),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::FillOutOfBounds {
                        field: "max bytes",
                        ..
                    }
                )
            },
        ),
        case(
            "a fill request for more than a chunk",
            frame(
                KIND_FILL_REQUEST,
                &fill_body(0, &(FILL_CHUNK_BYTES_MAX + 1).to_be_bytes()),
            ),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::FillOutOfBounds {
                        field: "max bytes",
                        ..
                    }
                )
            },
        ),
        case(
            "a fill request cut in its size",
            frame(KIND_FILL_REQUEST, &fill_body(0, &[0, 1])),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::Truncated { field: "max bytes" }
                )
            },
        ),
        case(
            "bytes after a fill request",
            frame(KIND_FILL_REQUEST, &fill_body(0, &[0, 0, 0, 1, 9])),
            |error| matches!(frame_error(error), FrameError::TrailingBytes { count: 1 }),
        ),
        case(
            "a fill chunk cut in its offset",
            frame(KIND_FILL_CHUNK, &raft_body(b"topic", 0, &[0; 7])),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::Truncated { field: "offset" }
                )
            },
        ),
    ]
}

/// Bad rejoin frames after the hello.
fn rejoin_cases() -> Vec<BadCase> {
    let answer = |term: u64, last_index: u64, last_term: u64| {
        let mut rest = term.to_be_bytes().to_vec();
        rest.extend_from_slice(&last_index.to_be_bytes());
        rest.extend_from_slice(&last_term.to_be_bytes());
        rest
    };
    let mut trailing = answer(5, 10, 5);
    trailing.push(0);
    vec![
        case(
            "bytes after a rejoin question",
            frame(KIND_REJOIN_ASK, &raft_body(b"topic", 0, &[1])),
            |error| matches!(frame_error(error), FrameError::TrailingBytes { count: 1 }),
        ),
        case(
            "a rejoin answer cut in its last term",
            frame(
                KIND_REJOIN_ANSWER,
                &raft_body(b"topic", 0, &answer(5, 10, 5)[..20]),
            ),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::Truncated { field: "last term" }
                )
            },
        ),
        case(
            "bytes after a rejoin answer",
            frame(KIND_REJOIN_ANSWER, &raft_body(b"topic", 0, &trailing)),
            |error| matches!(frame_error(error), FrameError::TrailingBytes { count: 1 }),
        ),
        case(
            "a rejoin answer whose last entry is of a later term than its own",
            frame(
                KIND_REJOIN_ANSWER,
                &raft_body(b"topic", 0, &answer(5, 10, 6)),
            ),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::RejoinAnswerTerms {
                        term: 5,
                        last_term: 6
                    }
                )
            },
        ),
        case(
            "a forwarded frame without a command",
            frame(KIND_FORWARD, &raft_body(b"topic", 0, &[])),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::Truncated { field: "command" }
                )
            },
        ),
        case(
            "a forwarded frame cut in its partition",
            frame(KIND_FORWARD, &raft_body(b"topic", 0, &[])[..8]),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::Truncated { field: "partition" }
                )
            },
        ),
    ]
}

/// A fill frame's body for group ("topic", 0): the offset, then `tail` as it is.
fn fill_body(offset: i64, tail: &[u8]) -> Vec<u8> {
    let mut rest = offset.to_be_bytes().to_vec();
    rest.extend_from_slice(tail);
    raft_body(b"topic", 0, &rest)
}

#[test]
fn fill_requests_and_chunks_arrive_as_sent_between_raft_messages() {
    run(async {
        let listener = listen();
        let (received, _serving) = start_serving(listener.clone(), hello(2));
        let transport = Transport::new(hello(1), vec![(2, listener.local_addr())]);
        let request = Payload::FillRequest {
            offset: 12,
            max_bytes: FILL_CHUNK_BYTES_MAX,
        };
        let chunk = Payload::FillChunk {
            offset: 7,
            log_start: 0,
            batches: bytes::Bytes::from(vec![5; 100_000]),
        };
        let unservable = Payload::FillChunk {
            offset: 0,
            log_start: 4096,
            batches: bytes::Bytes::new(),
        };
        transport.send(2, at("topic", 3), &message(1, 2, 1, 10));
        transport.send_payload(2, at("topic", 3), &request);
        transport.send_payload(2, at("other", 0), &chunk);
        transport.send_payload(2, at("other", 1), &unservable);
        transport.send(2, at("topic", 3), &message(1, 2, 2, 10));
        wait_until("all five", || received.messages.borrow().len() == 5).await;
        let got: Vec<_> = (received.messages.borrow().iter())
            .map(|incoming| (incoming.from, incoming.partition, incoming.payload.clone()))
            .collect();
        for incoming in received.messages.borrow().iter() {
            assert_eq!(incoming.tag, tag_of(incoming.partition), "{incoming:?}");
        }
        assert_eq!(
            got,
            [
                (1, 3, Payload::Raft(message(1, 2, 1, 10))),
                (1, 3, request),
                (1, 0, chunk),
                (1, 1, unservable),
                (1, 3, Payload::Raft(message(1, 2, 2, 10))),
            ]
        );
    });
}

#[test]
fn rejoin_forwarded_hibernation_and_alive_frames_arrive_as_sent() {
    run(async {
        let listener = listen();
        let (received, _serving) = start_serving(listener.clone(), hello(2));
        let transport = Transport::new(hello(1), vec![(2, listener.local_addr())]);
        let answer = Payload::RejoinAnswer(LogState {
            term: u64::MAX,
            last_index: 1 << 40,
            last_term: 7,
        });
        transport.send_payload(2, at("topic", 3), &Payload::RejoinAsk);
        transport.send_payload(2, at("other", 0), &answer);
        transport.send(2, at("topic", 3), &message(1, 2, 1, 10));
        let command = Payload::Forward(bytes::Bytes::from_static(b"any command"));
        transport.send_payload(2, at("__cluster_metadata", 0), &command);
        let ask = Payload::Hibernation(Signal::Ask {
            term: 3,
            index: u64::MAX,
        });
        let agree = Payload::Hibernation(Signal::Agree { term: 3, index: 9 });
        let wake = Payload::Hibernation(Signal::Wake { term: u64::MAX });
        transport.send_payload(2, at("topic", 3), &ask);
        transport.send_alive(2);
        transport.send_payload(2, at("topic", 4), &agree);
        transport.send_payload(2, at("other", 0), &wake);
        let leader = Payload::Leader {
            term: u64::MAX,
            in_sync: vec![1, 3, u64::MAX],
        };
        transport.send_payload(2, at("topic", 5), &leader);
        let stepped_down = Payload::Leader {
            term: 9,
            in_sync: Vec::new(),
        };
        transport.send_payload(2, at("topic", 6), &stepped_down);
        wait_until("all ten", || received.messages.borrow().len() == 10).await;
        let got: Vec<_> = (received.messages.borrow().iter())
            .map(|incoming| {
                (
                    incoming.topic.clone(),
                    incoming.partition,
                    incoming.payload.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("topic".to_owned(), 3, Payload::RejoinAsk),
                ("other".to_owned(), 0, answer),
                ("topic".to_owned(), 3, Payload::Raft(message(1, 2, 1, 10))),
                ("__cluster_metadata".to_owned(), 0, command),
                ("topic".to_owned(), 3, ask),
                (String::new(), 0, Payload::Alive),
                ("topic".to_owned(), 4, agree),
                ("other".to_owned(), 0, wake),
                ("topic".to_owned(), 5, leader),
                ("topic".to_owned(), 6, stepped_down),
            ]
        );
    });
}

/// Bad hibernation and alive frames after the hello.
fn hibernation_cases() -> Vec<BadCase> {
    let signal = |code: u8, index: u64| {
        let mut rest = vec![code];
        rest.extend_from_slice(&5u64.to_be_bytes());
        rest.extend_from_slice(&index.to_be_bytes());
        rest
    };
    let mut trailing = signal(1, 10);
    trailing.push(0);
    vec![
        case(
            "an unknown hibernation signal",
            frame(KIND_HIBERNATION, &raft_body(b"topic", 0, &signal(4, 10))),
            |error| matches!(frame_error(error), FrameError::UnknownSignal { code: 4 }),
        ),
        case(
            "a wake signal with an index",
            frame(KIND_HIBERNATION, &raft_body(b"topic", 0, &signal(3, 1))),
            |error| matches!(frame_error(error), FrameError::WakeIndex { index: 1 }),
        ),
        case(
            "a hibernation signal cut in its index",
            frame(
                KIND_HIBERNATION,
                &raft_body(b"topic", 0, &signal(2, 1)[..16]),
            ),
            |error| matches!(frame_error(error), FrameError::Truncated { field: "index" }),
        ),
        case(
            "bytes after a hibernation signal",
            frame(KIND_HIBERNATION, &raft_body(b"topic", 0, &trailing)),
            |error| matches!(frame_error(error), FrameError::TrailingBytes { count: 1 }),
        ),
        case(
            "an alive frame with a body",
            frame(KIND_ALIVE, &[0, 0]),
            |error| matches!(frame_error(error), FrameError::TrailingBytes { count: 2 }),
        ),
    ]
}

/// Bad leader frames after the hello.
fn leader_cases() -> Vec<BadCase> {
    let leader = |count: u8, ids: usize| {
        let mut rest = 7u64.to_be_bytes().to_vec();
        rest.push(count);
        for id in 0..ids {
            rest.extend_from_slice(&(id as u64 + 1).to_be_bytes());
        }
        rest
    };
    vec![
        case(
            "a leader frame with more in-sync ids than a replica set has",
            frame(KIND_LEADER, &raft_body(b"topic", 0, &leader(16, 16))),
            |error| matches!(frame_error(error), FrameError::LeaderInSync { count: 16 }),
        ),
        case(
            "a leader frame cut in its ids",
            frame(KIND_LEADER, &raft_body(b"topic", 0, &leader(3, 2))),
            |error| {
                matches!(
                    frame_error(error),
                    FrameError::Truncated {
                        field: "in-sync id"
                    }
                )
            },
        ),
        case(
            "bytes after a leader frame's ids",
            frame(KIND_LEADER, &raft_body(b"topic", 0, &leader(2, 3))),
            |error| matches!(frame_error(error), FrameError::TrailingBytes { count: 8 }),
        ),
    ]
}

/// Bad first frames.
fn cases_before_hello() -> Vec<BadCase> {
    let before_hello = |name, bytes, reason| BadCase {
        hello_first: false,
        ..case(name, bytes, reason)
    };
    let mut trailing = encode_hello(&hello(1));
    trailing.push(0);
    let trailing = frame(KIND_HELLO, &trailing[BODY_AT..]);
    let other_cluster = encode_hello(&Hello {
        cluster_name: "another-cluster".to_owned(),
        ..hello(1)
    });
    vec![
        before_hello(
            "a Raft frame before the hello",
            raft_frame("topic", 0, &message(1, 2, 0, 10)),
            |error| matches!(error, ConnectionError::ExpectedHello { kind: KIND_RAFT }),
        ),
        before_hello(
            "a hello longer than any hello",
            frame(KIND_HELLO, &[0; HELLO_FRAME_LEN_MAX]),
            |error| {
                matches!(frame_error(error), FrameError::TooLarge { len, max }
                    if *len == HELLO_FRAME_LEN_MAX + 1 && *max == HELLO_FRAME_LEN_MAX)
            },
        ),
        before_hello("bytes after a hello's fields", trailing, |error| {
            matches!(frame_error(error), FrameError::TrailingBytes { count: 1 })
        }),
        before_hello("a hello of another cluster", other_cluster, |error| {
            matches!(error, ConnectionError::ClusterMismatch { .. })
        }),
        before_hello(
            "a hello with the accepting node's own id",
            encode_hello(&hello(2)),
            |error| matches!(error, ConnectionError::SameNode { node_id: 2 }),
        ),
    ]
}

/// The bytes a bad case sends: a hello and a good message first when it is a case about
/// what follows the hello.
fn bad_case_bytes(case: &BadCase) -> Vec<u8> {
    if !case.hello_first {
        return case.bytes.clone();
    }
    let mut bytes = encode_hello(&hello(1));
    bytes.extend(raft_frame("good", 7, &message(1, 2, 42, 10)));
    bytes.extend_from_slice(&case.bytes);
    bytes
}

#[test]
fn each_bad_frame_closes_its_connection_with_its_reason() {
    run(async {
        let listener = listen();
        for case in bad_cases() {
            let client = rt::spawn_local(send_and_wait_closed(
                listener.local_addr(),
                bad_case_bytes(&case),
                case.shutdown_write,
            ));
            let stream = listener.accept().await.unwrap();
            let delivered = RefCell::new(Vec::new());
            let hellos = RefCell::new(Vec::new());
            let error = serve_connection(
                &stream,
                &hello(2),
                |hello| hellos.borrow_mut().push(hello.clone()),
                |incoming| delivered.borrow_mut().push(incoming),
            )
            .await;
            assert!((case.reason)(&error), "{}: closed for {error:?}", case.name);
            drop(stream);
            let received = client.await.unwrap();
            let received = received.unwrap_or_else(|| panic!("{}: not closed", case.name));
            let delivered = delivered.into_inner();
            if case.hello_first {
                // Answered, and the whole frames before the bad one delivered.
                assert_eq!(received, encode_hello(&hello(2)), "{}", case.name);
                assert_eq!(*hellos.borrow(), [hello(1)], "{}", case.name);
                assert_eq!(delivered.len(), 1, "{}", case.name);
                assert_eq!(
                    (delivered[0].topic.as_str(), delivered[0].partition),
                    ("good", 7)
                );
                assert_eq!(delivered[0].message(), Some(&message(1, 2, 42, 10)));
            } else {
                assert!(received.is_empty(), "{}: answered a bad hello", case.name);
                assert!(hellos.borrow().is_empty(), "{}", case.name);
                assert!(delivered.is_empty(), "{}", case.name);
            }
        }
    });
}

#[test]
fn the_listener_keeps_serving_others_while_bad_connections_are_closed() {
    run(async {
        let listener = listen();
        let (received, _serving) = start_serving(listener.clone(), hello(2));
        let transport = Transport::new(hello(1), vec![(2, listener.local_addr())]);
        transport.send(2, at("before", 0), &message(1, 2, 0, 10));
        wait_until("the first message", || {
            received.messages.borrow().len() == 1
        })
        .await;
        let mut closed = Vec::new();
        for case in bad_cases() {
            let bytes = bad_case_bytes(&case);
            closed.push(rt::spawn_local(send_and_wait_closed(
                listener.local_addr(),
                bytes,
                case.shutdown_write,
            )));
        }
        for (case, closed) in bad_cases().iter().zip(closed) {
            assert!(
                closed.await.unwrap().is_some(),
                "{} was not closed",
                case.name
            );
        }
        transport.send(2, at("after", 0), &message(1, 2, 1, 10));
        // A connection made after the bad ones is served too.
        let late = Transport::new(hello(3), vec![(2, listener.local_addr())]);
        late.send(2, at("late", 0), &message(3, 2, 2, 10));
        let from_good_peers = || {
            received
                .messages
                .borrow()
                .iter()
                .filter(|incoming| incoming.topic != "good")
                .count()
        };
        wait_until("the later messages", || from_good_peers() == 3).await;
        assert_eq!(transport.stats().connections_opened, 1, "never disturbed");
    });
}

#[test]
fn a_receive_buffer_grows_to_the_frame_and_shrinks_back() {
    run(async {
        let listener = listen();
        let (got_large, large_read) = oneshot::channel::<()>();
        let client = rt::spawn_local({
            let address = listener.local_addr();
            async move {
                let stream = TcpStream::connect(address).await.unwrap();
                let large = message(1, 2, 0, BATCH_SIZE_BYTES_MAX);
                let (sent, _) = stream.send_all(raft_frame("topic", 0, &large)).await;
                sent.unwrap();
                large_read.await.unwrap();
                let (sent, _) = stream
                    .send_all(raft_frame("topic", 0, &message(1, 2, 1, 10)))
                    .await;
                sent.unwrap();
                stream
            }
        });
        let stream = listener.accept().await.unwrap();
        let mut reader = FrameReader::new();
        assert_eq!(next_message(&mut reader, &stream).await.index, 0);
        let capacity = reader.buf.capacity();
        assert!(capacity > BATCH_SIZE_BYTES_MAX);
        assert!(
            capacity <= LEN_FIELD_BYTES + TRANSPORT_FRAME_BYTES_MAX,
            "{capacity}"
        );
        got_large.send(()).unwrap();
        assert_eq!(next_message(&mut reader, &stream).await.index, 1);
        assert_eq!(reader.buf.capacity(), TRANSPORT_READ_BUFFER_BYTES);
        drop(client.await.unwrap());
    });
}

#[test]
fn a_connection_that_never_says_hello_is_closed() {
    run(async {
        let listener = listen();
        let address = listener.local_addr();
        let silent = rt::spawn_local(async move { TcpStream::connect(address).await.unwrap() });
        let stream = listener.accept().await.unwrap();
        let error = serve_connection(&stream, &hello(2), |_| {}, |_| {}).await;
        let expected = TRANSPORT_HANDSHAKE_TIMEOUT_MS;
        assert!(
            matches!(error, ConnectionError::HandshakeTimeout { ms } if ms == expected),
            "{error:?}"
        );
        drop(silent.await.unwrap());
    });
}
