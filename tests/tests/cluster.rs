//! A three-node cluster of real `ringlog serve` processes on loopback, every partition
//! replicated on all three (tests/python/cluster.py, kafka-python at its default
//! settings):
//! - a producer goes on producing while the node leading a partition is killed with
//!   SIGKILL: no acknowledged record is lost, the offsets a consumer reads stay dense, a
//!   new leader takes over, and once the killed node is back and has caught up, every
//!   node's segments are the same bytes;
//! - the same with every partition's group asleep (idle, `hibernation.rs`) when the leader
//!   is killed: the node's liveness wakes the followers, which elect;
//! - a leader whose disk fails (every write EIO, root only) gives its partitions up, the
//!   producer goes on, nothing acknowledged is lost, and once healed the node catches up;
//! - a consumer group's committed offsets survive the death of its coordinator, after the
//!   coordinator compacted its partition of `__consumer_offsets` (every replica moving its
//!   log start): the group resumes, at the new coordinator, exactly after what it
//!   committed;
//! - a producer bootstrapped at any one node auto-creates its topic there (a node that
//!   does not lead the controller forwards the creation to the one that does);
//! - the admin clients' changes go through the controller to every node: partitions added,
//!   a topic deleted and created again at once under its name (the new topic holds only
//!   its own records, though a node may not have applied the deletion yet when its groups
//!   start), configurations altered both ways, records deleted (DeleteRecords) on every
//!   replica;
//! - partitions reassigned under load (AlterPartitionReassignments, asked at any node) move
//!   to their new replica sets: a replica joins, the leader leaves, no acknowledged record
//!   is lost or duplicated, the nodes that left delete their data, and ListPartition-
//!   Reassignments lists the partitions until they are done;
//! - a follower whose data directory is wiped catches up by a snapshot and rejoins;
//! - the same on a topic with retention, whose leader deleted the start of its log before
//!   the follower returned: the follower's log starts where the leader's does, and a
//!   consumer reads every acknowledged record from there once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, ApiKey, BrokerId, ListPartitionReassignmentsRequest,
    MetadataRequest,
};
use ringlog_tests::disk::Ext4;
use ringlog_tests::metrics::scrape;
use ringlog_tests::process::{free_port, ringlog_binary, wait_for, Server, ServerOptions};
use ringlog_tests::python::run_script;
use ringlog_tests::wire::{max_version, topic_name, Connection};

const TOPIC: &str = "replicated";
const PARTITIONS: usize = 3;
const COUNT: usize = 400;
const WAIT: Duration = Duration::from_secs(120);

/// The three nodes' flags: node ids 1..=3, internal listeners on free ports, and the
/// test's own.
struct Cluster {
    internal_ports: Vec<u16>,
    dirs: Vec<PathBuf>,
    flags: Vec<(&'static str, &'static str)>,
}

impl Cluster {
    fn options(&self, node: usize) -> ServerOptions {
        let peers: Vec<String> = (self.internal_ports.iter().enumerate())
            .map(|(index, port)| format!("{}@127.0.0.1:{port}", index + 1))
            .collect();
        let options = ServerOptions::default()
            .with("--node-id", &(node + 1).to_string())
            .with("--peers", &peers.join(","))
            .with(
                "--internal-listen",
                &format!("127.0.0.1:{}", self.internal_ports[node]),
            )
            .with("--metrics-listen", "127.0.0.1:0");
        (self.flags.iter()).fold(options, |options, (flag, value)| options.with(flag, value))
    }

    fn start(&self, node: usize) -> Server {
        Server::start(&self.dirs[node], &self.options(node))
    }
}

/// Each partition's segment bytes in a data directory, by file name (none for a partition
/// not created there yet).
fn segments(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let partition_dir = dir.join(format!("{TOPIC}-{partition}"));
        let Ok(entries) = std::fs::read_dir(&partition_dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|ext| ext == "log") {
                let name = format!(
                    "{partition}/{}",
                    path.file_name().unwrap().to_string_lossy()
                );
                found.insert(name, std::fs::read(&path).expect("segment bytes"));
            }
        }
    }
    found
}

/// The bytes of every segment, cut at the end of its last whole batch (a segment's file
/// may be preallocated beyond it).
fn written(segments: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    segments
        .into_iter()
        .map(|(name, bytes)| {
            let mut end = 0;
            while end + 12 <= bytes.len() {
                let length =
                    i32::from_be_bytes(bytes[end + 8..end + 12].try_into().unwrap()) as usize;
                if length == 0 || end + 12 + length > bytes.len() {
                    break;
                }
                end += 12 + length;
            }
            (name, bytes[..end].to_vec())
        })
        .collect()
}

/// Waits until every node's segments hold the same bytes (up to their last whole batch);
/// returns how many. Fails after `WAIT` with the log `restarted` gives (the node that had
/// to catch up).
fn wait_until_identical(cluster: &Cluster, restarted: impl Fn() -> Option<String>) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let all: Vec<_> = (cluster.dirs.iter())
            .map(|dir| written(segments(dir)))
            .collect();
        if all.windows(2).all(|pair| pair[0] == pair[1]) {
            return all[0].values().map(Vec::len).sum();
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node did not catch up: segment sizes {:?}; its log:\n{}",
            all.iter()
                .map(|s| s
                    .iter()
                    .map(|(n, b)| (n.clone(), b.len()))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            restarted().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three nodes started, and `cluster.py MODE` running against them in a thread.
struct Run {
    cluster: Cluster,
    nodes: Vec<Option<Server>>,
    work: PathBuf,
    script: std::thread::JoinHandle<serde_json::Value>,
    _root: tempfile::TempDir,
}

fn start(mode: &'static str, count: usize) -> Run {
    start_with(mode, count, Vec::new())
}

/// [`start`], the nodes run with `flags` besides.
fn start_with(mode: &'static str, count: usize, flags: Vec<(&'static str, &'static str)>) -> Run {
    start_in(mode, count, flags, None)
}

/// [`start_with`], the nodes' data directories in `dirs` if given.
fn start_in(
    mode: &'static str,
    count: usize,
    flags: Vec<(&'static str, &'static str)>,
    dirs: Option<Vec<PathBuf>>,
) -> Run {
    let root = tempfile::tempdir().expect("temp dir");
    let dirs = dirs.unwrap_or_else(|| {
        (0..3)
            .map(|n| root.path().join(format!("node{}", n + 1)))
            .collect()
    });
    let cluster = Cluster {
        internal_ports: (0..3).map(|_| free_port()).collect(),
        dirs,
        flags,
    };
    let nodes: Vec<Option<Server>> = (0..3).map(|n| Some(cluster.start(n))).collect();
    let bootstrap: Vec<String> = (nodes.iter().flatten()).map(Server::bootstrap).collect();
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let script = {
        let (bootstrap, work) = (bootstrap.join(","), work.to_string_lossy().into_owned());
        std::thread::spawn(move || {
            run_script(
                "cluster.py",
                &[
                    mode,
                    &bootstrap,
                    TOPIC,
                    &PARTITIONS.to_string(),
                    &count.to_string(),
                    &work,
                ],
            )
        })
    };
    Run {
        cluster,
        nodes,
        work,
        script,
        _root: root,
    }
}

#[test]
fn a_leader_killed_with_sigkill_loses_no_acknowledged_record() {
    // kafka-python's producer is idempotent by default: its retries after the failover
    // must not be written twice either.
    leader_killed("run", true, false);
}

#[test]
fn a_librdkafka_producer_fails_over_without_losing_a_record() {
    // librdkafka's producer is not idempotent by default (at least once): a retry of a
    // batch whose answer the dead leader never sent may be written twice, as in Kafka.
    leader_killed("run-confluent", false, false);
}

#[test]
fn a_leader_killed_while_every_group_sleeps_loses_no_acknowledged_record() {
    // Nothing ticks or heartbeats: only the node's liveness (the dead node's connections
    // closing) can wake the followers so that they elect.
    leader_killed("run", true, true);
}

/// Waits until every group on every running node sleeps (`ringlog_cluster_groups_asleep`
/// equals `ringlog_cluster_groups`, the controller's and `__consumer_offsets`'s included).
fn wait_until_asleep(nodes: &[Option<Server>]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts: Vec<(u64, u64)> = (nodes.iter().flatten())
            .map(|node| {
                let address = node.metrics_address().expect("a metrics endpoint");
                let samples = scrape(address);
                (
                    samples.value("ringlog_cluster_groups"),
                    samples.value("ringlog_cluster_groups_asleep"),
                )
            })
            .collect();
        if counts
            .iter()
            .all(|&(groups, asleep)| groups > 0 && asleep == groups)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the idle groups never all slept: (groups, asleep) per node {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `cluster.py run` to write its first half; the node leading partition 0 then,
/// as the client saw it.
fn leader_at_half(work: &Path) -> usize {
    wait_for(&work.join("half"));
    let leaders: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("half")).expect("half")).expect("json");
    let leader = leaders["0"].as_u64().expect("partition 0 has a leader") as usize;
    assert!((1..=3).contains(&leader), "leader {leader} is a node id");
    leader
}

/// `cluster.py run`'s result: every record acknowledged and read back, densely; `logs`
/// say what the nodes did if not.
fn assert_every_record_once(result: &serde_json::Value, logs: &str) {
    assert_eq!(
        result["lost"],
        serde_json::json!([]),
        "acknowledged records lost: {result}\n{logs}"
    );
    assert_eq!(result["failed"], 0, "every record acknowledged: {result}");
    assert_eq!(result["acknowledged"], COUNT, "{result}");
    assert_eq!(result["offsets_dense"], true, "{result}");
}

/// Produces across a SIGKILL of partition 0's leader with the client of `mode`, then
/// checks the records and, after the killed node's restart, the replicas' bytes; if
/// `asleep`, the kill waits until every group of every node sleeps.
fn leader_killed(mode: &'static str, idempotent: bool, asleep: bool) {
    let Run {
        cluster,
        mut nodes,
        work,
        script,
        _root,
    } = start(mode, COUNT);
    let victim = leader_at_half(&work);
    if asleep {
        wait_until_asleep(&nodes);
    }
    let killed_log = nodes[victim - 1].take().expect("the leader runs").kill();
    std::fs::write(work.join("killed"), b"").expect("killed marker");
    let result = script.join().expect("the script thread");
    let log_of_others = || {
        nodes
            .iter()
            .flatten()
            .map(Server::log)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let logs = format!(
        "killed node's log:\n{killed_log}\nothers:\n{}",
        log_of_others()
    );
    assert_every_record_once(&result, &logs);
    assert_eq!(
        result["refused"], "InvalidPartitionsError",
        "a topic of too many partitions is refused before the controller commits it: {result}"
    );
    if idempotent {
        assert_eq!(
            result["duplicates"],
            serde_json::json!([]),
            "an idempotent producer's records are written once: {result}"
        );
    }
    let new_leader = result["leaders_after"]["0"].as_u64().expect("a new leader");
    assert_ne!(
        new_leader as usize, victim,
        "partition 0 is led by a live node after the kill: {result}"
    );

    // The killed node comes back, catches up, and every node holds the same bytes.
    nodes[victim - 1] = Some(cluster.start(victim - 1));
    let bytes = wait_until_identical(&cluster, || nodes[victim - 1].as_ref().map(Server::log));
    assert!(bytes > 0, "the segments hold the records");
    for node in nodes.into_iter().flatten() {
        node.stop_cleanly();
    }
}

/// Each node on its own small ext4 (root only); halfway through the producer's run, every
/// write of partition 0's leader's disk fails with EIO. Its replicas stop, the others
/// elect, and the producer goes on: nothing acknowledged is lost, nothing written twice.
/// Once the disk is healed, repaired and the node restarted, it catches up and every node
/// holds the same bytes.
#[test]
fn a_leader_whose_disk_fails_gives_way_and_loses_nothing() {
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let Some(mut disks) = (0..3)
        .map(|_| Ext4::create(parent, 512 << 20))
        .collect::<Option<Vec<Ext4>>>()
    else {
        return;
    };
    let dirs = disks.iter().map(|disk| disk.path().join("data")).collect();
    let Run {
        cluster,
        mut nodes,
        work,
        script,
        _root,
    } = start_in("run", COUNT, Vec::new(), Some(dirs));
    let victim = leader_at_half(&work);
    disks[victim - 1].fail_writes();
    std::fs::write(work.join("killed"), b"").expect("marker");
    let result = script.join().expect("the script thread");
    let victim_log = nodes[victim - 1]
        .as_ref()
        .map(Server::log)
        .unwrap_or_default();
    assert_every_record_once(&result, &format!("the failed node's log:\n{victim_log}"));
    assert_eq!(result["duplicates"], serde_json::json!([]), "{result}");
    let new_leader = result["leaders_after"]["0"].as_u64().expect("a new leader");
    assert_ne!(
        new_leader as usize, victim,
        "partition 0 is led by a node whose disk works: {result}\n{victim_log}"
    );
    assert!(
        victim_log.contains("replica stopped"),
        "the failed node's replicas stop:\n{victim_log}"
    );

    // Healed, repaired and restarted, it catches up.
    nodes[victim - 1].take().expect("it ran").kill();
    disks[victim - 1].heal();
    disks[victim - 1].remount_repaired();
    nodes[victim - 1] = Some(cluster.start(victim - 1));
    let bytes = wait_until_identical(&cluster, || nodes[victim - 1].as_ref().map(Server::log));
    assert!(bytes > 0, "the segments hold the records");
    for node in nodes.into_iter().flatten() {
        node.stop_cleanly();
    }
}

#[test]
fn committed_offsets_survive_the_death_of_the_groups_coordinator() {
    const RECORDS: usize = 60;
    let Run {
        cluster: _cluster,
        mut nodes,
        work,
        script,
        _root,
    } = start("groups", RECORDS);
    wait_for(&work.join("half"));
    let half: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("half")).expect("half")).expect("json");
    let coordinator = half["coordinator"].as_u64().expect("a coordinator id") as usize;
    assert!((1..=3).contains(&coordinator), "{half}");
    let killed_log = nodes[coordinator - 1].take().expect("it runs").kill();
    std::fs::write(work.join("killed"), b"").expect("killed marker");
    let result = script.join().expect("the script thread");
    let expected = |prefix: &str| {
        let mut values: Vec<String> = (0..RECORDS).map(|i| format!("{prefix}{i}")).collect();
        values.sort();
        serde_json::json!(values)
    };
    assert_eq!(result["first"], expected("a"), "{result}");
    assert_eq!(
        result["second"],
        expected("b"),
        "the group resumes after its committed offsets, at another coordinator: {result}\n\
         killed coordinator's log:\n{killed_log}"
    );
    assert_ne!(
        result["coordinator_after"].as_u64(),
        Some(coordinator as u64),
        "{result}"
    );
    // The first consumer's leave emptied the group, recorded (generation 2) before the
    // leave was answered: the new coordinator loads it Empty and the next consumer joins
    // generation 3 at once. Loaded with the member that left, the group would hold the
    // join until that member's session expired and answer generation 2.
    assert_eq!(result["generation_before"], 1, "{result}");
    assert_eq!(result["generation_after"], 3, "{result}");
    // Committing 40 partitions' offsets 30 times made the first coordinator compact its
    // partition of __consumer_offsets, and every replica moved its log start: the new
    // coordinator loaded the group from the rewrite.
    assert!(
        killed_log.contains("compacted __consumer_offsets"),
        "no compaction:\n{killed_log}"
    );
    let moved = |log: &str| {
        log.lines().any(|line| {
            line.contains("log start moved by the group") && line.contains("__consumer_offsets")
        })
    };
    assert!(moved(&killed_log), "{killed_log}");
    for node in nodes.into_iter().flatten() {
        let log = node.log();
        assert!(moved(&log), "a replica did not move its log start:\n{log}");
        node.stop_cleanly();
    }
}

#[test]
fn a_topic_is_auto_created_from_whichever_node_a_producer_bootstraps_at() {
    // Each node in turn is a producer's only bootstrap server; at least two of the three
    // do not lead the controller and forward the creation to the node that does.
    const RECORDS: usize = 20;
    let Run {
        cluster: _cluster,
        nodes,
        work: _work,
        script,
        _root,
    } = start("auto-create", RECORDS);
    let result = script.join().expect("the script thread");
    let expected: Vec<String> = (0..RECORDS).map(|i| format!("v{i}")).collect();
    for index in 0..3 {
        let name = format!("{TOPIC}-{index}");
        assert_eq!(
            result["topics"][&name],
            serde_json::json!(expected),
            "{name}: {result}"
        );
        assert_eq!(result["dense"][&name], true, "{result}");
    }
    // kafka-python asks Metadata of whichever broker it finds least loaded once it knows
    // them all, so its requests may all have reached the controller's leader: ask each
    // node directly too. At least two of the three forward.
    for (index, node) in nodes.iter().flatten().enumerate() {
        let mut connection = Connection::connect(node.address());
        let name = format!("{TOPIC}-direct-{index}");
        let topic = MetadataRequestTopic::default().with_name(Some(topic_name(&name)));
        let request = MetadataRequest::default()
            .with_topics(Some(vec![topic]))
            .with_allow_auto_topic_creation(true);
        connection
            .call(&request, max_version(ApiKey::Metadata))
            .expect("a Metadata answer");
    }
    let forwarded = || {
        let logs: Vec<String> = nodes.iter().flatten().map(Server::log).collect();
        let found = logs
            .iter()
            .any(|log| log.contains("a peer's controller command made"));
        (found, logs)
    };
    let deadline = Instant::now() + WAIT;
    let (mut found, mut logs) = forwarded();
    while !found && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        (found, logs) = forwarded();
    }
    assert!(
        found,
        "no creation was forwarded to the controller's leader:\n{}",
        logs.join("\n")
    );
    for node in nodes.into_iter().flatten() {
        node.stop_cleanly();
    }
}

/// The values `cluster.py` writes with `prefix`, `count` of them ("<prefix><i>"), sorted.
fn sorted_values(prefix: &str, count: usize) -> Vec<String> {
    let mut values: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    values.sort();
    values
}

/// The values the script's result lists under `key`, sorted.
fn sorted_read(result: &serde_json::Value, key: &str) -> Vec<String> {
    let mut read: Vec<String> = serde_json::from_value(result[key].clone()).expect(key);
    read.sort();
    read
}

#[test]
fn admin_changes_go_through_the_controller_to_every_node() {
    const RECORDS: usize = 30;
    let Run {
        cluster,
        nodes,
        work: _work,
        script,
        _root,
    } = start("admin", RECORDS);
    let result = script.join().expect("the script thread");
    let values = |prefix: &str| sorted_values(prefix, RECORDS);
    let read = |key: &str| sorted_read(&result, key);
    assert_eq!(read("first"), values("a"), "{result}");
    assert_eq!(read("added"), values("b"), "{result}");
    assert_eq!(
        read("recreated"),
        values("c"),
        "the topic created again holds its own records only: {result}"
    );
    assert_eq!(result["recreated_dense"], true, "{result}");
    let configs = &result["configs"];
    assert_eq!(configs["segment.bytes"], "2097152", "{result}");
    assert_eq!(configs["max.message.bytes"], "500000", "{result}");
    assert_ne!(
        configs["retention.ms"], "3600000",
        "DELETE reverts it: {result}"
    );
    assert_eq!(result["low_watermark"], 10, "{result}");
    let after_delete: Vec<(i64, String)> =
        serde_json::from_value(result["after_delete"].clone()).expect("after_delete");
    let expected: Vec<(i64, String)> = (10..RECORDS as i64).map(|i| (i, format!("d{i}"))).collect();
    assert_eq!(
        after_delete, expected,
        "read from the new log start: {result}"
    );
    // Every node applied the same changes: the same registry entries, and no directory of
    // the deleted topic's partitions left.
    let configs_topic = format!("{TOPIC}-configs");
    let deadline = Instant::now() + WAIT;
    let entries = loop {
        let entries: Vec<_> = (cluster.dirs.iter())
            .map(|dir| (registered(dir, TOPIC), registered(dir, &configs_topic)))
            .collect();
        let settled = entries.iter().all(|(topic, configs)| {
            topic.as_ref().is_some_and(|t| t["partitions"] == 2)
                && configs
                    .as_ref()
                    .is_some_and(|c| c["config"]["segment.bytes"] == "2097152")
        });
        if settled || Instant::now() > deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (dir, entry) in cluster.dirs.iter().zip(&entries) {
        assert_eq!(entry, &entries[0], "{} differs from node 1", dir.display());
        for partition in 0..5 {
            let exists = dir.join(format!("{TOPIC}-{partition}")).exists();
            assert_eq!(
                exists,
                partition < 2,
                "{}: partition {partition}",
                dir.display()
            );
        }
    }
    let configs = &entries[0].1.as_ref().expect("the configs topic")["config"];
    assert_eq!(configs["max.message.bytes"], "500000");
    assert_eq!(configs["retention.ms"], result["configs"]["retention.ms"]);
    admin_cli_works_at_every_node(&nodes);
    for node in nodes.iter().flatten() {
        let log = node.log();
        for applied in [
            "partitions added by the controller",
            "topic deleted by the controller",
            "configuration altered by the controller",
            // Every replica moved its log start, not only the leader.
            "log start moved by the group",
        ] {
            assert!(log.contains(applied), "no \"{applied}\" in:\n{log}");
        }
    }
    for node in nodes.into_iter().flatten() {
        node.stop_cleanly();
    }
}

/// Calls `settled` every `interval` until it gives a value; fails after `WAIT` with what it
/// last said was missing.
fn poll<T>(interval: Duration, mut settled: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match settled() {
            Ok(value) => return value,
            Err(missing) => assert!(Instant::now() < deadline, "{missing}"),
        }
        std::thread::sleep(interval);
    }
}

/// Each partition of `topics` as a node's Metadata answers: (topic, partition) -> (replicas
/// sorted, leader).
type Placement = BTreeMap<(String, i32), (Vec<i32>, i32)>;

fn placement_at(node: &Server, topics: &[&str]) -> Placement {
    let mut connection = Connection::connect(node.address());
    let request = MetadataRequest::default().with_topics(Some(
        (topics.iter())
            .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
            .collect(),
    ));
    let response = connection
        .call(&request, max_version(ApiKey::Metadata))
        .expect("a Metadata answer");
    let mut found = BTreeMap::new();
    for topic in response.topics {
        let name = topic.name.expect("a name").0.to_string();
        for partition in topic.partitions {
            let mut replicas: Vec<i32> = partition.replica_nodes.iter().map(|id| id.0).collect();
            replicas.sort_unstable();
            let isr = partition.isr_nodes.iter().map(|id| id.0);
            assert!(
                isr.clone().all(|id| replicas.contains(&id)),
                "{name}-{}: in sync {:?} outside replicas {replicas:?}",
                partition.partition_index,
                partition.isr_nodes
            );
            let index = partition.partition_index;
            found.insert((name.clone(), index), (replicas, partition.leader_id.0));
        }
    }
    found
}

/// Waits until every running node answers Metadata for `topics` alike, each partition with
/// a leader among its replicas; returns that answer.
fn settled_placement(nodes: &[Option<Server>], topics: &[&str], partitions: usize) -> Placement {
    poll(Duration::from_millis(100), || {
        let answers: Vec<Placement> = (nodes.iter().flatten())
            .map(|node| placement_at(node, topics))
            .collect();
        let settled = answers.windows(2).all(|pair| pair[0] == pair[1])
            && answers[0].len() == partitions
            && (answers[0].values()).all(|(replicas, leader)| replicas.contains(leader));
        if settled {
            return Ok(answers.into_iter().next().expect("a node"));
        }
        Err(format!(
            "the nodes' Metadata answers differ or lack leaders: {answers:#?}"
        ))
    })
}

/// Which nodes (1-based) hold a Raft journal for the partition: those that opened a
/// replica of it.
fn journals(cluster: &Cluster, topic: &str, partition: usize) -> Vec<usize> {
    (cluster.dirs.iter().enumerate())
        .filter(|(_, dir)| {
            (dir.join(format!("{topic}-{partition}"))
                .join("raft.journal"))
            .exists()
        })
        .map(|(index, _)| index + 1)
        .collect()
}

/// Each node exports the offsets of the partitions of `assigned` (partition p on node
/// p + 1) it holds, not of the empty logs of those placed elsewhere.
fn assert_offsets_exported_where_held(nodes: &[Option<Server>], assigned: &str) {
    for (index, node) in nodes.iter().flatten().enumerate() {
        let samples = scrape(node.metrics_address().expect("a metrics endpoint"));
        for partition in 0..3 {
            let name = format!(
                "ringlog_partition_log_end_offset{{topic=\"{assigned}\",partition=\"{partition}\"}}"
            );
            assert_eq!(
                samples.0.contains_key(&name),
                partition == index,
                "node {}: {name}",
                index + 1
            );
        }
    }
}

/// Node 3 died: the partitions it has no replica of keep their leaders; those it held
/// lose theirs (a set of two needs both, of one its only node), and no survivor names a
/// leader for them any more, hosted there or not (a leader that lost its quorum steps
/// down and says so; a dead one is forgotten).
fn assert_leaders_of_dead_node_forgotten(nodes: &[Option<Server>], topics: &[&str]) {
    poll(Duration::from_millis(200), || {
        let answers: Vec<Placement> = (nodes.iter().flatten())
            .map(|node| placement_at(node, topics))
            .collect();
        let settled = answers.iter().all(|answer| {
            answer.len() == PARTITIONS + 3
                && answer.values().all(|(replicas, leader)| {
                    if replicas.contains(&3) {
                        *leader == -1
                    } else {
                        replicas.contains(leader)
                    }
                })
        });
        settled.then_some(()).ok_or_else(|| {
            format!(
                "after node 3's death the survivors still name it, or lost others: {answers:#?}"
            )
        })
    });
}

#[test]
fn replica_sets_smaller_than_the_cluster_are_placed_and_answered_at_every_node() {
    const RECORDS: usize = 60;
    let Run {
        cluster,
        mut nodes,
        work,
        script,
        _root,
    } = start("placed", RECORDS);
    let assigned = format!("{TOPIC}-assigned");
    let topics = [TOPIC, assigned.as_str()];
    wait_for(&work.join("half"));
    let check = |nodes: &[Option<Server>]| {
        let placement = settled_placement(nodes, &topics, PARTITIONS + 3);
        let mut per_node = [0; 3];
        for partition in 0..PARTITIONS {
            let (replicas, _) = &placement[&(TOPIC.to_owned(), partition as i32)];
            assert_eq!(replicas.len(), 2, "{placement:?}");
            for id in replicas {
                per_node[*id as usize - 1] += 1;
            }
            let hosts: Vec<usize> = replicas.iter().map(|&id| id as usize).collect();
            assert_eq!(
                journals(&cluster, TOPIC, partition),
                hosts,
                "{TOPIC}-{partition}"
            );
        }
        assert_eq!(per_node, [2, 2, 2], "placed evenly: {placement:?}");
        for partition in 0..3_i32 {
            let node = partition + 1;
            let key = (assigned.clone(), partition);
            assert_eq!(placement[&key], (vec![node], node), "{placement:?}");
            assert_eq!(
                journals(&cluster, &assigned, partition as usize),
                [node as usize]
            );
        }
    };
    check(&nodes);
    // A restarted node places its replicas from the controller's log again: it opens the
    // same ones, with the same voters, and answers as before.
    let restarted = nodes[0].take().expect("node 1 runs").stop_cleanly();
    nodes[0] = Some(cluster.start(0));
    check(&nodes);
    assert_offsets_exported_where_held(&nodes, &assigned);
    std::fs::write(work.join("killed"), b"").expect("killed marker");
    let result = script.join().expect("the script thread");
    let values = |prefix: &str| sorted_values(prefix, RECORDS);
    let read = |key: &str| sorted_read(&result, key);
    assert_eq!(read("placed"), values("p"), "{result}");
    assert_eq!(read("assigned"), values("q"), "{result}");
    let mut both = [values("q"), values("s")].concat();
    both.sort();
    assert_eq!(read("assigned_after"), both, "{result}\n{restarted}");
    assert_eq!(
        result["refused"], "InvalidReplicationFactorError",
        "{result}"
    );
    nodes[2].take().expect("node 3 runs").kill();
    assert_leaders_of_dead_node_forgotten(&nodes, &topics);
    for node in nodes.into_iter().flatten() {
        node.stop_cleanly();
    }
}

/// Runs the ringlog CLI against `node`; returns what it printed (it must succeed).
fn cli(node: &Server, args: &[&str]) -> String {
    let output = std::process::Command::new(ringlog_binary())
        .args(args)
        .args(["--bootstrap", &node.bootstrap()])
        .output()
        .expect("the ringlog CLI runs");
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{args:?}: {out}{err}");
    out.into_owned()
}

/// Asks `node` to reassign partitions of `topic` (AlterPartitionReassignments; a target of
/// `None` cancels); returns each partition's error code, in the order asked.
fn alter_reassignments(
    node: &Server,
    topic: &str,
    targets: &[(i32, Option<Vec<i32>>)],
) -> Vec<i16> {
    let partitions = (targets.iter())
        .map(|(partition, target)| {
            let replicas =
                (target.as_ref()).map(|ids| ids.iter().map(|&id| BrokerId(id)).collect());
            ReassignablePartition::default()
                .with_partition_index(*partition)
                .with_replicas(replicas)
        })
        .collect();
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(partitions)]);
    let response = Connection::connect(node.address())
        .call(&request, 0)
        .expect("an AlterPartitionReassignments answer");
    assert_eq!(response.error_code, 0, "{response:?}");
    (response.responses.iter())
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| partition.error_code)
        })
        .collect()
}

/// The partitions `node` lists as being reassigned (ListPartitionReassignments, every
/// topic): (topic, partition) -> (replicas, adding, removing).
type Listed = BTreeMap<(String, i32), (Vec<i32>, Vec<i32>, Vec<i32>)>;

fn listed_reassignments(node: &Server) -> Listed {
    let request = ListPartitionReassignmentsRequest::default().with_timeout_ms(30_000);
    let response = Connection::connect(node.address())
        .call(&request, 0)
        .expect("a ListPartitionReassignments answer");
    assert_eq!(response.error_code, 0, "{response:?}");
    let ids = |ids: &[BrokerId]| ids.iter().map(|id| id.0).collect::<Vec<i32>>();
    let mut listed = BTreeMap::new();
    for topic in &response.topics {
        for partition in &topic.partitions {
            let key = (topic.name.0.to_string(), partition.partition_index);
            let value = (
                ids(&partition.replicas),
                ids(&partition.adding_replicas),
                ids(&partition.removing_replicas),
            );
            listed.insert(key, value);
        }
    }
    listed
}

/// Waits until no node lists a reassignment and every node's Metadata names `targets` as
/// the partitions' replicas; returns that placement.
fn reassignments_done(nodes: &[Option<Server>], targets: &BTreeMap<i32, Vec<i32>>) -> Placement {
    poll(Duration::from_millis(200), || {
        let listed: Vec<Listed> = nodes.iter().flatten().map(listed_reassignments).collect();
        if listed.iter().all(BTreeMap::is_empty) {
            let placement = settled_placement(nodes, &[TOPIC], PARTITIONS);
            let reached = (targets.iter())
                .all(|(partition, target)| placement[&(TOPIC.to_owned(), *partition)].0 == *target);
            if reached {
                return Ok(placement);
            }
        }
        Err(format!("the reassignments are not done: {listed:?}"))
    })
}

#[test]
fn partitions_reassigned_under_load_move_to_their_new_replicas() {
    const RECORDS: usize = 100;
    let Run {
        cluster,
        mut nodes,
        work,
        script,
        _root,
    } = start("reassign", RECORDS);
    wait_for(&work.join("half"));
    let before = settled_placement(&nodes, &[TOPIC], PARTITIONS);
    // Each partition moves to the node it lacks and the follower it has: its leader
    // leaves, handing its leadership over first.
    let mut targets = BTreeMap::new();
    let mut leaving = BTreeMap::new();
    for ((_, partition), (replicas, leader)) in &before {
        let joining = (1..=3)
            .find(|id| !replicas.contains(id))
            .expect("a node lacks it");
        let staying = *replicas
            .iter()
            .find(|id| *id != leader)
            .expect("a follower");
        let mut target = vec![joining, staying];
        target.sort_unstable();
        targets.insert(*partition, target);
        leaving.insert(*partition, *leader as usize);
    }
    // Refused: a node the cluster does not have, a partition it does not have, and a
    // cancellation of a reassignment not under way.
    let refused = [(0, Some(vec![1, 9])), (7, Some(vec![1, 2])), (1, None)];
    assert_eq!(
        alter_reassignments(nodes[1].as_ref().unwrap(), TOPIC, &refused),
        [39, 3, 85],
        "INVALID_REPLICA_ASSIGNMENT, UNKNOWN_TOPIC_OR_PARTITION, NO_REASSIGNMENT_IN_PROGRESS"
    );
    // Each asked at another node (all but the controller's leader forward it), the first
    // with the CLI.
    for (partition, target) in &targets {
        let node = nodes[*partition as usize % 3].as_ref().unwrap();
        if *partition == 0 {
            let replicas: Vec<String> = target.iter().map(i32::to_string).collect();
            let args = ["--partition", "0", "--replicas", &replicas.join(",")];
            let printed = cli(node, &[&["topic", "reassign", TOPIC][..], &args].concat());
            assert!(printed.contains("reassigning"), "{printed}");
            continue;
        }
        let asked = [(*partition, Some(target.clone()))];
        assert_eq!(alter_reassignments(node, TOPIC, &asked), [0], "{partition}");
    }
    let asked = Instant::now();
    let after = reassignments_done(&nodes, &targets);
    eprintln!(
        "reassigned in {:?}: {before:?} -> {after:?}",
        asked.elapsed()
    );
    for (partition, target) in &targets {
        let hosts: Vec<usize> = target.iter().map(|&id| id as usize).collect();
        assert_eq!(journals(&cluster, TOPIC, *partition as usize), hosts);
        // The node that left deleted the partition's data.
        let dir = &cluster.dirs[leaving[partition] - 1];
        let left = written(segments(dir));
        let prefix = format!("{partition}/");
        assert!(
            left.iter()
                .filter(|(name, _)| name.starts_with(&prefix))
                .all(|(_, b)| b.is_empty()),
            "node {} still holds {TOPIC}-{partition}'s records",
            leaving[partition]
        );
    }
    let listed = cli(nodes[2].as_ref().unwrap(), &["topic", "reassignments"]);
    assert_eq!(listed.trim(), "", "nothing is being reassigned");
    // A restart places the replicas as the reassignments left them.
    let node = leaving[&0] - 1;
    nodes[node].take().expect("the node runs").stop_cleanly();
    nodes[node] = Some(cluster.start(node));
    reassignments_done(&nodes, &targets);
    std::fs::write(work.join("killed"), b"").expect("killed marker");
    let result = script.join().expect("the script thread");
    eprintln!("{result}");
    assert_eq!(result["lost"], serde_json::json!([]), "{result}");
    assert_eq!(result["duplicates"], serde_json::json!([]), "{result}");
    assert_eq!(result["failed"], 0, "{result}");
    assert_eq!(result["offsets_dense"], true, "{result}");
    assert!(
        result["acknowledged"].as_u64() > Some(2 * RECORDS as u64),
        "{result}"
    );
    for node in nodes.into_iter().flatten() {
        node.stop_cleanly();
    }
}

/// The admin CLI, each command given a different node: create and delete go to the
/// controller's leader, describe asks each partition's leader for its offsets.
fn admin_cli_works_at_every_node(nodes: &[Option<Server>]) {
    let nodes: Vec<&Server> = nodes.iter().flatten().collect();
    let cli = |args: &[&str], at: usize| cli(nodes[at], args);
    cli(&["topic", "create", "cli-made", "--partitions", "3"], 0);
    let described = cli(&["topic", "describe", "cli-made"], 1);
    assert!(described.contains("partitions: 3"), "{described}");
    cli(
        &[
            "topic",
            "create",
            "cli-pair",
            "--partitions",
            "3",
            "--replication-factor",
            "2",
        ],
        2,
    );
    let described = cli(&["topic", "describe", "cli-pair"], 0);
    // Each partition's line ends with its two replicas, the leader among them.
    let rows: Vec<&str> = (described.lines())
        .filter(|line| line.trim_start().starts_with(['0', '1', '2']))
        .collect();
    assert_eq!(rows.len(), 3, "{described}");
    for row in rows {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let replicas: Vec<&str> = fields[4].split(',').collect();
        assert_eq!(replicas.len(), 2, "{described}");
        assert!(
            replicas.contains(&fields[3]),
            "the leader is a replica: {described}"
        );
    }
    // A group's commands go to its coordinator, wherever they are given.
    cli(
        &[
            "group",
            "reset-offsets",
            "cli-readers",
            "--topic",
            "cli-made",
            "--to",
            "latest",
        ],
        2,
    );
    let groups = cli(&["group", "list"], 0);
    assert!(
        groups.contains("cli-readers"),
        "every node's groups are listed: {groups}"
    );
    let described = cli(&["group", "describe", "cli-readers"], 1);
    assert!(described.contains("cli-made"), "{described}");
    cli(&["topic", "delete", "cli-made"], 2);
    cli(&["topic", "create", "cli-made", "--partitions", "2"], 1);
    let described = cli(&["topic", "describe", "cli-made"], 2);
    assert!(described.contains("partitions: 2"), "{described}");
}

/// Topic `name`'s entry in the registry of the node whose data directory is `dir`.
fn registered(dir: &Path, name: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("topics.json")).ok()?;
    let registry: serde_json::Value = serde_json::from_str(&text).ok()?;
    (registry["topics"].as_array()?.iter())
        .find(|topic| topic["name"] == name)
        .cloned()
}

/// Waits for `cluster.py ship` to write its first half; the records' partition, its leader
/// and a follower of it (node ids).
fn ship_half_way(work: &Path) -> (u64, usize, usize) {
    wait_for(&work.join("half"));
    let half: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("half")).expect("half")).expect("json");
    let partition = half["partition"].as_u64().expect("the records' partition");
    let leader = half["leader"].as_u64().expect("a leader") as usize;
    let follower = (1..=3).find(|node| *node != leader).expect("a follower");
    (partition, leader, follower)
}

/// Kills node `node` (its id), empties its data directory and starts it again.
fn wipe_and_restart(cluster: &Cluster, nodes: &mut [Option<Server>], node: usize) {
    nodes[node - 1].take().expect("it runs").kill();
    let dir = &cluster.dirs[node - 1];
    std::fs::remove_dir_all(dir).expect("wipe the node's data directory");
    std::fs::create_dir_all(dir).expect("an empty data directory");
    nodes[node - 1] = Some(cluster.start(node - 1));
}

#[test]
fn a_wiped_follower_catches_up_by_copying_the_leaders_batches() {
    // Enough batches in one partition that the leader's window (1,024 applied entries
    // kept, moving in steps of as many) has moved past its start when the follower
    // returns empty.
    const RECORDS: usize = 2_500;
    let Run {
        cluster,
        mut nodes,
        work,
        script,
        _root,
    } = start("ship", RECORDS);
    let (partition, _leader, follower) = ship_half_way(&work);
    wipe_and_restart(&cluster, &mut nodes, follower);
    std::fs::write(work.join("killed"), b"").expect("killed marker");
    let result = script.join().expect("the script thread");
    assert_eq!(result["lost"], serde_json::json!([]), "{result}");
    assert_eq!(result["failed"], 0, "{result}");
    assert_eq!(result["acknowledged"], 2 * RECORDS, "{result}");
    assert_eq!(result["offsets_dense"], true, "{result}");
    assert_eq!(result["first_offset"], 0, "no retention: {result}");

    let bytes = wait_until_identical(&cluster, || nodes[follower - 1].as_ref().map(Server::log));
    assert!(
        bytes > 2 * RECORDS * 60,
        "the segments hold the records: {bytes}"
    );
    // It caught up by a snapshot: the batches below the leader's anchor were copied.
    let log = nodes[follower - 1].as_ref().expect("it runs").log();
    let installed = format!("partition={TOPIC}-{partition}");
    assert!(
        log.lines()
            .any(|line| line.contains("snapshot installed") && line.contains(&installed)),
        "no snapshot installed for {TOPIC}-{partition}; the wiped node's log:\n{log}"
    );
    // It rejoined every group (asked every voter, caught up to the most up-to-date log)
    // before it voted again, then dropped its rejoin marker (`rejoin.rs`).
    let marker = cluster.dirs[follower - 1].join(ringlog_cluster::node::REJOIN_MARKER);
    let deadline = Instant::now() + WAIT;
    while marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the wiped node never finished rejoining; its log:\n{}",
            nodes[follower - 1]
                .as_ref()
                .map(Server::log)
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = nodes[follower - 1].as_ref().expect("it runs").log();
    assert!(
        log.contains("rejoined the cluster"),
        "the wiped node's log:\n{log}"
    );
    // The records' group was rejoined behind a floor: the most up-to-date log among the
    // other voters, which held the records.
    let floor = log
        .lines()
        .find(|line| line.contains("every voter answered") && line.contains(&installed))
        .and_then(|line| line.split("floor_index=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|index| index.parse::<u64>().ok());
    assert!(
        floor.is_some_and(|floor| floor as usize >= RECORDS),
        "the rejoin of {TOPIC}-{partition} had no floor past the records: {floor:?}"
    );
    for (index, dir) in cluster.dirs.iter().enumerate() {
        let marker = dir.join(ringlog_cluster::node::REJOIN_MARKER);
        assert!(!marker.exists(), "node {} is still rejoining", index + 1);
    }
    for node in nodes.into_iter().flatten() {
        node.stop_cleanly();
    }
}

#[test]
fn a_wiped_follower_starts_its_log_where_retention_left_its_peers() {
    // Retention keeps 64 KiB of 16 KiB segments, checked every 200 ms; the leader's
    // window (its anchor moves after 2,048 applied entries) lets it delete the first
    // segments while all three nodes are up.
    const RECORDS: usize = 2_500;
    let Run {
        cluster,
        mut nodes,
        work,
        script,
        _root,
    } = start_with(
        "ship-retained",
        RECORDS,
        vec![("--retention-check-interval-ms", "200")],
    );
    let (partition, leader, follower) = ship_half_way(&work);
    // The leader's retention deletes its first segment.
    let first_segment = cluster.dirs[leader - 1]
        .join(format!("{TOPIC}-{partition}"))
        .join(format!("{:020}.log", 0));
    let deadline = Instant::now() + WAIT;
    while first_segment.exists() {
        assert!(
            Instant::now() < deadline,
            "the leader's retention deleted nothing; its log:\n{}",
            nodes[leader - 1]
                .as_ref()
                .map(Server::log)
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wipe_and_restart(&cluster, &mut nodes, follower);
    std::fs::write(work.join("killed"), b"").expect("killed marker");
    let result = script.join().expect("the script thread");
    eprintln!("{result}");
    assert_eq!(result["lost"], serde_json::json!([]), "{result}");
    assert_eq!(result["duplicates"], serde_json::json!([]), "{result}");
    assert_eq!(result["failed"], 0, "{result}");
    assert_eq!(result["offsets_dense"], true, "{result}");
    let first = result["first_offset"].as_u64().expect("a first offset") as usize;
    assert!(
        first > 0 && result["read"] == 2 * RECORDS - first,
        "retention moved the log start and everything after it is read: {result}"
    );

    // The follower's fill found its peers' logs starting past its (empty) end, and its
    // log starts where retention left theirs. From the latest start of the three, every
    // node's log is the same bytes (segment boundaries may differ: a fill writes whole
    // chunks).
    let log = || nodes[follower - 1].as_ref().map(Server::log);
    let deadline = Instant::now() + WAIT;
    loop {
        let streams: Vec<(i64, Vec<u8>)> = (cluster.dirs.iter())
            .map(|dir| batches_from_start(written(segments(dir))))
            .collect();
        let from = streams.iter().map(|(start, _)| *start).max().unwrap_or(0);
        let tails: Vec<Option<&[u8]>> = (streams.iter())
            .map(|(start, bytes)| tail_from(*start, bytes, from))
            .collect();
        if tails[0].is_some_and(|tail| !tail.is_empty()) && tails.windows(2).all(|p| p[0] == p[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower's log never matched its peers' from offset {from} (starts and \
             sizes {:?}); its log:\n{}",
            streams
                .iter()
                .map(|(start, bytes)| (*start, bytes.len()))
                .collect::<Vec<_>>(),
            log().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = log().unwrap_or_default();
    assert!(
        text.lines()
            .any(|line| line.contains("starting this log again")
                && line.contains(&format!("partition={TOPIC}-{partition}"))),
        "the follower did not start its log at its peers' start; its log:\n{text}"
    );
    for node in nodes.into_iter().flatten() {
        node.stop_cleanly();
    }
}

/// The partition's segments (one partition's: the test writes one) as one stream of
/// batches, with the base offset of its first batch.
fn batches_from_start(segments: BTreeMap<String, Vec<u8>>) -> (i64, Vec<u8>) {
    let bytes: Vec<u8> = segments.into_values().flatten().collect();
    let start = bytes
        .get(..8)
        .map_or(0, |base| i64::from_be_bytes(base.try_into().unwrap()));
    (start, bytes)
}

/// The batches of `bytes` (whose first batch is at `start`) from the one at `from`; `None`
/// if no batch starts there.
fn tail_from(start: i64, bytes: &[u8], from: i64) -> Option<&[u8]> {
    let mut at = 0;
    let mut offset = start;
    while offset < from {
        let header = bytes.get(at..at + 12)?;
        let length = i32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
        let next = bytes.get(at + 12 + length..at + 12 + length + 8)?;
        at += 12 + length;
        offset = i64::from_be_bytes(next.try_into().unwrap());
    }
    (offset == from).then(|| &bytes[at..])
}
