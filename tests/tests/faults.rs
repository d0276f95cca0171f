//! A Jepsen-style fault harness: three real `ringlog serve` processes, each in a network
//! namespace of its own, take writes from two idempotent producers (tests/python/faults.py:
//! kafka-python at its defaults, confluent-kafka at its defaults with idempotence switched
//! on) while a seeded schedule of faults runs; then everything is healed and checked.
//!
//! **Network.** The test makes (as root) a bridge in the root namespace and, per node, a
//! namespace joined to it by a veth pair, all in a /24 of 10.0.0.0/8 derived from the test's
//! pid and not in use on the machine. Each node listens for Kafka clients and for its peers
//! on its namespace's address (`ip netns exec NS ringlog serve …`); the clients run in the
//! root namespace and reach every node through the bridge. Isolating a node is taking its
//! root-side veth down: it then hears no one and no one hears it (peers and clients alike);
//! healing is taking the link up again. Cutting two nodes apart (a partial partition, each
//! still reaching the third node and the clients) is a permanent neighbour entry in each
//! of the two namespaces that gives the other's address an unused MAC; mending removes
//! them. Neither needs a tool beyond iproute2. A drop guard removes the namespaces, veths and
//! bridge, also when the test panics; leftovers of a killed run (names `rlf<pid>…` of a
//! dead pid) are removed at the next start. Without root, or where namespaces cannot be
//! made, the test prints `skipped: …` and passes without running.
//!
//! **Faults**, one at a time, so a majority is always up and connected and the cluster is
//! expected to make progress: SIGKILL of a random node, or of the node leading a random
//! partition, restarted on its data directory after 1.5–5 s; isolation of a random node,
//! or of a partition's leader, for 1.5–5 s (an election takes 1–2 s, so some isolations
//! end before one, as a long pause would); the same node cut from one other node only, for
//! as long; the same node's disk made slow for as long (below); 0.5–2.5 s of calm between
//! faults. The leader is the
//! one the live nodes' Metadata names with the highest leader epoch. The seed is printed at
//! the start; `RINGLOG_FAULT_SEED=<n>` replays its choices (which fault, which partition or
//! node, how long), though not the timing of the processes, so a replay is close to the run
//! and not identical. `RINGLOG_FAULT_STEPS=<n>` (default 10, about a minute in all) makes
//! it a soak. The nodes' logs are kept (and their place printed) when the test fails, or
//! always with `RINGLOG_FAULT_KEEP_LOGS=1`.
//!
//! **Checks**, after the producers stopped and had every record answered, every node up
//! and every link up, and all three nodes agree on each partition's leader: each partition
//! is read from offset 0 to its high watermark at its leader (with the raw wire client,
//! whose decoder checks every batch's CRC), and
//! - offsets are dense from 0 to the high watermark;
//! - every acknowledged record is there, exactly once, at the offset it was acknowledged
//!   with; no record is there twice, acknowledged or not (both producers are idempotent),
//!   and every record is one a producer sent, in the partition it was sent to;
//! - in each partition, each producer's records are in the order it sent them, and each
//!   (producer id, epoch)'s sequence numbers run 0, 1, 2, … without a gap or a repeat;
//! - every node's segments of every partition (and of the controller's log) are the same
//!   bytes, and those bytes are exactly the batches read, ending at the high watermark;
//! - every node stops cleanly (exit status 0).
//!
//! **Slow disks** are the kernel's block I/O throttle (`ringlog_tests::slow_disk`): the
//! node's process is moved into a cgroup that may write at most `SLOW_WRITE_IOPS` requests
//! and `SLOW_WRITE_BYTES_PER_S` a second to the data directory's disk, and back after the
//! fault. Every write the node makes then waits its turn: its O_DIRECT segment writes, its
//! fdatasyncs, its Raft journal. The test checks that the slowed nodes did write through
//! the throttle. Where the machine has neither cgroup v1's blkio nor v2's io controller (or
//! the test is not root), the step injects nothing and says so.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest};
use kafka_protocol::records::Record;
use ringlog_tests::process::{wait_for, Server, ServerOptions};
use ringlog_tests::python::run_script_within;
use ringlog_tests::slow_disk::SlowDisk;
use ringlog_tests::wire::{decode_batches, max_version, topic_name, Connection};
use ringlog_tests::TestRng;

const TOPIC: &str = "faults";
const PARTITIONS: usize = 3;
const NODES: usize = 3;
const KAFKA_PORT: u16 = 9092;
const INTERNAL_PORT: u16 = 9093;
/// Fault steps when `RINGLOG_FAULT_STEPS` is not set: the CI size (about a minute).
const STEPS_DEFAULT: u64 = 10;
/// Records a second each producer sends at most (two cores run three nodes and both
/// clients).
const RATE_PER_PRODUCER: u32 = 300;
/// How long the cluster may take to agree on leaders, and the replicas to converge, after
/// healing.
const SETTLE: Duration = Duration::from_secs(120);
/// The controller's log, replicated like a partition's (compared, not read).
const CONTROLLER_LOG: &str = "__cluster_metadata-0";
/// How a node's Metadata is asked for while faults run: a node that does not answer within
/// this is skipped.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// A locally administered MAC address no interface of the test has: frames sent to it are
/// flooded by the bridge and dropped by every veth.
const UNUSED_MAC: &str = "02:00:5e:00:de:ad";
/// A slow disk's write requests a second: each group commit (a write and an fdatasync)
/// then waits tens of milliseconds, a hundred times what this machine's disk takes.
const SLOW_WRITE_IOPS: u32 = 20;
/// A slow disk's written bytes a second: a few times what the producers write.
const SLOW_WRITE_BYTES_PER_S: u64 = 256 << 10;

#[test]
fn faults_lose_no_acknowledged_record_and_leave_identical_replicas() {
    if let Err(reason) = can_make_namespaces() {
        println!("skipped: {reason}");
        eprintln!("skipped: {reason}");
        return;
    }
    let seed = seed();
    let steps: u64 = std::env::var("RINGLOG_FAULT_STEPS")
        .ok()
        .and_then(|steps| steps.parse().ok())
        .unwrap_or(STEPS_DEFAULT);
    eprintln!("fault harness: RINGLOG_FAULT_SEED={seed} RINGLOG_FAULT_STEPS={steps}");
    let started = Instant::now();
    let root = tempfile::tempdir().expect("temp dir");
    let network = Network::create().unwrap_or_else(|error| panic!("network: {error}"));
    let mut cluster = Cluster::start(network, root.path());
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let script = {
        let (bootstrap, work) = (cluster.bootstrap(), work.to_string_lossy().into_owned());
        // Room for every step's longest fault, calm and restart, and the flush.
        let timeout = Duration::from_secs(240 + 20 * steps);
        std::thread::spawn(move || {
            run_script_within(
                "faults.py",
                &[
                    "run",
                    &bootstrap,
                    TOPIC,
                    &PARTITIONS.to_string(),
                    &RATE_PER_PRODUCER.to_string(),
                    &work,
                ],
                timeout,
            )
        })
    };
    wait_for(&work.join("started"));
    let mut rng = TestRng::new(seed);
    for step in 1..=steps {
        inject(&mut cluster, &mut rng, step, steps);
    }
    std::fs::write(work.join("stop"), b"").expect("stop marker");
    let result = script.join().expect("the producers' script");
    if let (Some(disk), true) = (&cluster.slow_disk, cluster.slowed_steps > 0) {
        let written = disk.written_bytes();
        eprintln!(
            "fault harness: {} slow-disk steps; the slowed nodes wrote {written} bytes \
             through the throttle",
            cluster.slowed_steps
        );
        if written == 0 {
            cluster.fail(seed, "the slowed nodes wrote nothing through the throttle");
        }
    }
    let Some(leaders) = cluster.agreed_leaders() else {
        cluster.fail(seed, "the nodes never agreed on every partition's leader");
    };
    let read = read_partitions(&cluster, &leaders);
    let mut failures = check_records(&read, &result);
    let summary = summary(&read, &result);
    eprintln!("fault harness: seed {seed}, {steps} steps: {summary}");
    failures.extend(cluster.check_replicas(&read));
    if !failures.is_empty() {
        cluster.fail(seed, &failures.join("\n"));
    }
    cluster.stop_cleanly(seed);
    if std::env::var_os("RINGLOG_FAULT_KEEP_LOGS").is_some() {
        eprintln!(
            "fault harness: the nodes' logs are in {}",
            cluster.keep_logs()
        );
    }
    eprintln!(
        "fault harness: seed {seed} passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `RINGLOG_FAULT_SEED`, or one drawn from the clock.
fn seed() -> u64 {
    std::env::var("RINGLOG_FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos() as u64);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        })
}

/// One fault, healed before it returns, then a calm. The random numbers a step uses are
/// drawn before it acts, the same count every step, so a seed replays the same choices
/// whatever the leaders turn out to be.
fn inject(cluster: &mut Cluster, rng: &mut TestRng, step: u64, steps: u64) {
    let kind = rng.below(8);
    let partition = rng.below(PARTITIONS as u64) as usize;
    let random_node = rng.below(NODES as u64) as usize;
    let other = 1 + rng.below(NODES as u64 - 1) as usize;
    let fault_for = Duration::from_millis(1_500 + rng.below(3_500));
    let calm_for = Duration::from_millis(500 + rng.below(2_000));
    let (node, whom) = if kind % 2 == 0 {
        (random_node, "a random node".to_owned())
    } else {
        match cluster.leader_of(partition) {
            Some(leader) => (leader, format!("the leader of partition {partition}")),
            None => (
                random_node,
                format!("a random node (partition {partition} has no leader)"),
            ),
        }
    };
    let peer = (node + other) % NODES;
    let what = match kind {
        0 | 1 => format!("SIGKILL node {} ({whom})", node + 1),
        2 | 3 => format!("isolate node {} ({whom})", node + 1),
        4 | 5 => format!("cut node {} ({whom}) from node {} only", node + 1, peer + 1),
        _ => match &cluster.slow_disk_refused {
            None => format!("slow the disk of node {} ({whom})", node + 1),
            Some(reason) => format!("nothing (slow disks unavailable: {reason})"),
        },
    };
    eprintln!(
        "fault harness: step {step}/{steps}: {what} for {:.1} s, then {:.1} s calm",
        fault_for.as_secs_f64(),
        calm_for.as_secs_f64()
    );
    match kind {
        0 | 1 => {
            cluster.kill(node);
            std::thread::sleep(fault_for);
            cluster.restart(node);
        }
        2 | 3 => {
            cluster.network.isolate(node);
            std::thread::sleep(fault_for);
            cluster.network.heal(node);
        }
        4 | 5 => {
            cluster.network.cut(node, peer);
            std::thread::sleep(fault_for);
            cluster.network.mend(node, peer);
        }
        _ => {
            let pid = cluster.slow(node);
            std::thread::sleep(fault_for);
            if let (Some(pid), Some(disk)) = (pid, cluster.slow_disk.as_mut()) {
                disk.restore(pid);
            }
        }
    }
    std::thread::sleep(calm_for);
    let leaders: Vec<String> = (0..PARTITIONS)
        .map(|partition| match cluster.leader_of(partition) {
            Some(leader) => (leader + 1).to_string(),
            None => "none".to_owned(),
        })
        .collect();
    eprintln!("fault harness: leaders of the partitions now {leaders:?}");
}

/// Whether this process may make network namespaces: root, and `ip` present.
fn can_make_namespaces() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".to_owned());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!("`ip -V` failed: {}", output.status)),
        Err(error) => Err(format!("no `ip` command (iproute2): {error}")),
    }
}

/// Runs `ip ARGS`; `Err` with its stderr if it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The namespaces, veths and bridge of one test run; removed when dropped.
struct Network {
    /// `rlf<pid>`: the prefix of every name this run makes.
    prefix: String,
    /// The first two octets after 10 of the run's /24.
    subnet: [u8; 2],
    /// What was made, to remove in reverse order.
    made: Vec<Made>,
}

enum Made {
    Bridge(String),
    Namespace(String),
    Veth(String),
}

impl Network {
    fn create() -> Result<Network, String> {
        remove_leftovers();
        let pid = std::process::id();
        let mut network = Network {
            prefix: format!("rlf{pid}"),
            subnet: free_subnet(pid)?,
            made: Vec::new(),
        };
        let bridge = format!("{}b", network.prefix);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        network.made.push(Made::Bridge(bridge.clone()));
        let gateway = format!("{}/24", network.gateway());
        ip(&["addr", "add", &gateway, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for node in 0..NODES {
            network.add_node(node, &bridge)?;
        }
        Ok(network)
    }

    fn add_node(&mut self, node: usize, bridge: &str) -> Result<(), String> {
        let namespace = self.namespace(node);
        ip(&["netns", "add", &namespace])?;
        self.made.push(Made::Namespace(namespace.clone()));
        let (outside, inside) = (self.veth(node), self.inner_veth(node));
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ])?;
        self.made.push(Made::Veth(outside.clone()));
        ip(&["link", "set", &inside, "netns", &namespace])?;
        ip(&["link", "set", &outside, "master", bridge])?;
        ip(&["link", "set", &outside, "up"])?;
        let address = format!("{}/24", self.address(node));
        let in_namespace = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &namespace, "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        in_namespace(&["addr", "add", &address, "dev", &inside])?;
        in_namespace(&["link", "set", &inside, "up"])?;
        in_namespace(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn namespace(&self, node: usize) -> String {
        format!("{}n{}", self.prefix, node + 1)
    }

    /// The root-namespace end of the node's veth pair (on the bridge).
    fn veth(&self, node: usize) -> String {
        format!("{}h{}", self.prefix, node + 1)
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 1)
    }

    fn address(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 11 + node as u8)
    }

    /// The node's end of its veth pair (in its namespace).
    fn inner_veth(&self, node: usize) -> String {
        format!("{}p{}", self.prefix, node + 1)
    }

    /// Cuts the link between nodes `a` and `b` only: each holds a permanent neighbour entry
    /// giving the other's address a MAC no interface has, so their frames to each other
    /// are dropped, while both still reach the third node and the clients.
    fn cut(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let (namespace, to) = (self.namespace(from), self.address(to).to_string());
            let device = self.inner_veth(from);
            ip(&[
                "netns",
                "exec",
                &namespace,
                "ip",
                "neigh",
                "replace",
                &to,
                "lladdr",
                UNUSED_MAC,
                "dev",
                &device,
                "nud",
                "permanent",
            ])
            .expect("neighbour entry");
        }
    }

    /// Undoes [`Network::cut`]: the neighbour entries go, and ARP finds the real ones.
    fn mend(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let (namespace, to) = (self.namespace(from), self.address(to).to_string());
            let device = self.inner_veth(from);
            ip(&[
                "netns", "exec", &namespace, "ip", "neigh", "del", &to, "dev", &device,
            ])
            .expect("neighbour entry removed");
        }
    }

    fn isolate(&self, node: usize) {
        ip(&["link", "set", &self.veth(node), "down"]).expect("link down");
    }

    fn heal(&self, node: usize) {
        ip(&["link", "set", &self.veth(node), "up"]).expect("link up");
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for made in self.made.drain(..).rev() {
            let result = match &made {
                Made::Bridge(name) | Made::Veth(name) => ip(&["link", "del", name]),
                Made::Namespace(name) => ip(&["netns", "del", name]),
            };
            // A veth goes with its peer's namespace; anything else left is worth a word.
            if let (Err(error), Made::Bridge(_) | Made::Namespace(_)) = (result, &made) {
                eprintln!("fault harness: cleaning up: {error}");
            }
        }
    }
}

/// A /24 of 10.0.0.0/8 derived from `pid` that no address on the machine is in.
fn free_subnet(pid: u32) -> Result<[u8; 2], String> {
    let addresses = ip(&["-4", "-o", "addr", "show"])?;
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    for attempt in 0..64u32 {
        let mixed = pid.wrapping_add(attempt.wrapping_mul(7919));
        let subnet = [200 + (mixed >> 8) as u8 % 50, mixed as u8];
        let needle = format!("10.{}.{}.", subnet[0], subnet[1]);
        if !addresses.contains(&needle) && !routes.contains(&needle) {
            return Ok(subnet);
        }
    }
    Err("no free /24 in 10.200.0.0-10.249.255.0".to_owned())
}

/// Removes the namespaces and links of runs whose process is gone (killed mid-run).
fn remove_leftovers() {
    let is_stale = |name: &str| {
        let Some(rest) = name.strip_prefix("rlf") else {
            return false;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !digits.is_empty() && !Path::new(&format!("/proc/{digits}")).exists()
    };
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    for name in namespaces
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        if is_stale(name) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    let links = ip(&["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // "7: rlf123h1@if6: <…>"
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        if is_stale(name) {
            let _ = ip(&["link", "del", name]);
        }
    }
    // A killed run's slow-disk cgroup: empty, its processes being gone.
    for root in ["/sys/fs/cgroup/blkio", "/sys/fs/cgroup"] {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if is_stale(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// Three nodes, one per namespace. Fields drop in order: the servers before the network.
struct Cluster {
    nodes: Vec<Option<Server>>,
    dirs: Vec<PathBuf>,
    /// The logs of each node's earlier runs (ended by SIGKILL).
    history: Vec<String>,
    /// The throttled cgroup slow-disk steps move a node into, or why there is none.
    slow_disk: Option<SlowDisk>,
    slow_disk_refused: Option<String>,
    slowed_steps: u32,
    network: Network,
}

impl Cluster {
    fn start(network: Network, root: &Path) -> Cluster {
        let dirs: Vec<PathBuf> = (1..=NODES)
            .map(|node| root.join(format!("node{node}")))
            .collect();
        let name = format!("rlf{}-slow", std::process::id());
        let (slow_disk, slow_disk_refused) =
            match SlowDisk::create(root, &name, SLOW_WRITE_IOPS, SLOW_WRITE_BYTES_PER_S) {
                Ok(disk) => (Some(disk), None),
                Err(reason) => {
                    eprintln!("fault harness: slow disks will not be injected: {reason}");
                    (None, Some(reason))
                }
            };
        let mut cluster = Cluster {
            nodes: (0..NODES).map(|_| None).collect(),
            dirs,
            history: vec![String::new(); NODES],
            slow_disk,
            slow_disk_refused,
            slowed_steps: 0,
            network,
        };
        for node in 0..NODES {
            cluster.restart(node);
        }
        cluster
    }

    fn options(&self, node: usize) -> ServerOptions {
        let peers: Vec<String> = (0..NODES)
            .map(|peer| {
                let address = self.network.address(peer);
                format!("{}@{address}:{INTERNAL_PORT}", peer + 1)
            })
            .collect();
        let address = self.network.address(node);
        let mut options = ServerOptions::default()
            .with("--node-id", &(node + 1).to_string())
            .with("--peers", &peers.join(","))
            .with("--internal-listen", &format!("{address}:{INTERNAL_PORT}"));
        options.listen = format!("{address}:{KAFKA_PORT}");
        let namespace = self.network.namespace(node);
        options.command_prefix = ["ip", "netns", "exec", &namespace]
            .map(str::to_owned)
            .to_vec();
        options
    }

    fn bootstrap(&self) -> String {
        (0..NODES)
            .map(|node| self.kafka_address(node).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn kafka_address(&self, node: usize) -> SocketAddr {
        SocketAddr::from((self.network.address(node), KAFKA_PORT))
    }

    fn kill(&mut self, node: usize) {
        let server = self.nodes[node].take().expect("the node runs");
        let log = server.kill();
        self.history[node].push_str(&log);
        self.history[node].push_str("---- SIGKILL ----\n");
    }

    /// Moves `node`'s process into the slow disk's cgroup; its pid, to move it back.
    fn slow(&mut self, node: usize) -> Option<u32> {
        let disk = self.slow_disk.as_mut()?;
        let pid = self.nodes[node].as_ref().expect("the node runs").pid();
        match disk.slow(pid) {
            Ok(()) => {
                self.slowed_steps += 1;
                Some(pid)
            }
            Err(error) => panic!("slowing node {}'s disk: {error}", node + 1),
        }
    }

    fn restart(&mut self, node: usize) {
        assert!(self.nodes[node].is_none(), "node {} runs", node + 1);
        self.nodes[node] = Some(Server::start(&self.dirs[node], &self.options(node)));
    }

    /// Each partition's (leader, leader epoch) as `node`'s Metadata tells it; `None` if the
    /// node does not answer in time.
    fn metadata(&self, node: usize) -> Option<Vec<(i32, i32)>> {
        let stream =
            TcpStream::connect_timeout(&self.kafka_address(node), METADATA_TIMEOUT).ok()?;
        stream.set_read_timeout(Some(METADATA_TIMEOUT)).ok()?;
        let mut connection = Connection::from_stream(stream).ok()?;
        let topic = MetadataRequestTopic::default().with_name(Some(topic_name(TOPIC)));
        let request = MetadataRequest::default()
            .with_topics(Some(vec![topic]))
            .with_allow_auto_topic_creation(false);
        let response = connection
            .call(&request, max_version(ApiKey::Metadata))
            .ok()?;
        let topic = response.topics.first()?;
        let mut leaders = vec![(-1, -1); PARTITIONS];
        for partition in &topic.partitions {
            let index = usize::try_from(partition.partition_index).ok()?;
            *leaders.get_mut(index)? = (partition.leader_id.0, partition.leader_epoch);
        }
        Some(leaders)
    }

    /// The node leading `partition` as far as the nodes that answer know: the leader named
    /// with the highest epoch.
    fn leader_of(&self, partition: usize) -> Option<usize> {
        (0..NODES)
            .filter(|node| self.nodes[*node].is_some())
            .filter_map(|node| self.metadata(node))
            .map(|leaders| leaders[partition])
            .filter(|(leader, _)| *leader >= 1)
            .max_by_key(|(_, epoch)| *epoch)
            .and_then(|(leader, _)| usize::try_from(leader - 1).ok())
    }

    /// Each partition's leader (a node index) once every node names the same leader at the
    /// same epoch for every partition; `None` if that does not happen within `SETTLE`.
    fn agreed_leaders(&self) -> Option<Vec<usize>> {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            let answers: Option<Vec<_>> = (0..NODES).map(|node| self.metadata(node)).collect();
            if let Some(answers) = answers {
                let agreed = answers.windows(2).all(|pair| pair[0] == pair[1]);
                if agreed && answers[0].iter().all(|(leader, _)| *leader >= 1) {
                    let leaders = answers[0].iter().map(|(leader, _)| *leader as usize - 1);
                    return Some(leaders.collect());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// The replicas' checks: every node's segments the same bytes, and those bytes the
    /// batches `read` from the leaders. Waits for the followers to catch up first.
    fn check_replicas(&self, read: &[Partition]) -> Vec<String> {
        let mut logs: Vec<String> = (0..PARTITIONS).map(|p| format!("{TOPIC}-{p}")).collect();
        logs.push(CONTROLLER_LOG.to_owned());
        let deadline = Instant::now() + SETTLE;
        let stored = loop {
            let stored: Vec<Vec<Vec<u8>>> = (self.dirs.iter())
                .map(|dir| logs.iter().map(|log| written(&dir.join(log))).collect())
                .collect();
            if stored.windows(2).all(|pair| pair[0] == pair[1]) || Instant::now() > deadline {
                break stored;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut failures = Vec::new();
        for (index, log) in logs.iter().enumerate() {
            let sizes: Vec<usize> = stored.iter().map(|node| node[index].len()).collect();
            if stored.iter().any(|node| node[index] != stored[0][index]) {
                failures.push(format!(
                    "{log}: the nodes' segments differ (bytes: {sizes:?})"
                ));
            }
        }
        for (partition, read) in read.iter().enumerate() {
            for (node, stored) in stored.iter().enumerate() {
                let bytes = Bytes::from(stored[partition].clone());
                let ok = decode_batches(bytes).map(|records| same_records(&records, &read.records));
                if !matches!(ok, Ok(true)) {
                    failures.push(format!(
                        "{TOPIC}-{partition}: node {}'s segments are not the {} records read \
                         up to the high watermark {} ({ok:?})",
                        node + 1,
                        read.records.len(),
                        read.high_watermark
                    ));
                }
            }
        }
        failures
    }

    /// Keeps the nodes' logs and panics with `why`, the seed and where the logs are.
    fn fail(&self, seed: u64, why: &str) -> ! {
        let place = self.keep_logs();
        panic!("fault harness, RINGLOG_FAULT_SEED={seed}: {why}\nthe nodes' logs are in {place}");
    }

    /// Writes every node's logs (all its runs) into a new directory that is kept; where.
    fn keep_logs(&self) -> String {
        let kept = tempfile::Builder::new()
            .prefix("ringlog-faults-")
            .tempdir()
            .map(tempfile::TempDir::keep);
        match kept {
            Ok(dir) => {
                for node in 0..NODES {
                    let mut log = self.history[node].clone();
                    log.push_str(
                        &self.nodes[node]
                            .as_ref()
                            .map(Server::log)
                            .unwrap_or_default(),
                    );
                    let path = dir.join(format!("node{}.log", node + 1));
                    let _ = std::fs::write(path, log);
                }
                dir.display().to_string()
            }
            Err(error) => format!("nowhere ({error})"),
        }
    }

    fn stop_cleanly(&mut self, seed: u64) {
        for node in 0..NODES {
            let server = self.nodes[node].take().expect("every node runs");
            let (status, log) = server.stop();
            self.history[node].push_str(&log);
            if status.code() != Some(0) {
                self.fail(seed, &format!("node {} stopped with {status}", node + 1));
            }
        }
    }
}

/// A partition as read from its leader.
struct Partition {
    high_watermark: i64,
    records: Vec<Record>,
}

fn read_partitions(cluster: &Cluster, leaders: &[usize]) -> Vec<Partition> {
    (0..PARTITIONS)
        .map(|partition| {
            let leader = leaders[partition];
            let mut connection = Connection::connect(cluster.kafka_address(leader));
            let (_, high_watermark) = connection.list_offset(TOPIC, partition as i32, -1);
            let records = connection.fetch_all(TOPIC, partition as i32, 0);
            Partition {
                high_watermark,
                records,
            }
        })
        .collect()
}

/// Whether two record lists hold the same records: offsets, values and producers.
fn same_records(stored: &[Record], read: &[Record]) -> bool {
    let key = |record: &Record| {
        (
            record.offset,
            record.value.clone(),
            record.producer_id,
            record.producer_epoch,
            record.sequence,
        )
    };
    stored.len() == read.len() && stored.iter().map(key).eq(read.iter().map(key))
}

/// The bytes of a partition's segments in offset order, each cut at the end of its last
/// whole batch (a segment file may be preallocated beyond it).
fn written(partition_dir: &Path) -> Vec<u8> {
    let Ok(entries) = std::fs::read_dir(partition_dir) else {
        return Vec::new();
    };
    let mut segments: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    segments.sort();
    let mut all = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment).expect("segment bytes");
        let mut end = 0;
        while end + 12 <= bytes.len() {
            let length = i32::from_be_bytes(bytes[end + 8..end + 12].try_into().expect("4 bytes"));
            let Ok(length) = usize::try_from(length) else {
                break;
            };
            if length == 0 || end + 12 + length > bytes.len() {
                break;
            }
            end += 12 + length;
        }
        all.extend_from_slice(&bytes[..end]);
    }
    all
}

/// What the producers were told, from the script's JSON.
struct Producer {
    name: String,
    sent: usize,
    /// The acknowledged offset of each record sent, by index.
    offsets: Vec<Option<i64>>,
}

fn producers(result: &serde_json::Value) -> Vec<Producer> {
    let producers = result["producers"]
        .as_object()
        .expect("producers in the result");
    producers
        .iter()
        .map(|(name, report)| Producer {
            name: name.clone(),
            sent: report["sent"].as_u64().expect("sent") as usize,
            offsets: (report["offsets"].as_array().expect("offsets").iter())
                .map(serde_json::Value::as_i64)
                .collect(),
        })
        .collect()
}

/// `NAME-<i>` as (NAME, i).
fn parse_value(value: &[u8]) -> Option<(&str, usize)> {
    let text = std::str::from_utf8(value).ok()?;
    let (name, index) = text.rsplit_once('-')?;
    Some((name, index.parse().ok()?))
}

/// Every record check; a description of each failure (at most a few of each kind).
fn check_records(read: &[Partition], result: &serde_json::Value) -> Vec<String> {
    let mut failures = Failures::default();
    let producers = producers(result);
    for (name, report) in result["producers"].as_object().expect("producers") {
        if report["wrong_partition"] != serde_json::json!([]) {
            let wrong = &report["wrong_partition"];
            failures.add(
                "misplaced",
                format!("producer {name}: acknowledged elsewhere: {wrong}"),
            );
        }
        if !report["fatal"].is_null() || report["unanswered"] != 0 {
            failures.add("client", format!("producer {name}: {report:?}"));
        }
    }
    // Where each record is: value -> (partition, offset).
    let mut found: HashMap<(String, usize), (usize, i64)> = HashMap::new();
    for (partition, read) in read.iter().enumerate() {
        check_partition(partition, read, &producers, &mut found, &mut failures);
    }
    for producer in &producers {
        let acknowledged = producer.offsets.iter().flatten().count();
        if acknowledged == 0 {
            failures.add(
                "progress",
                format!("producer {}: nothing acknowledged", producer.name),
            );
        }
        for (index, offset) in producer.offsets.iter().enumerate() {
            let Some(offset) = offset else { continue };
            let at = (index % PARTITIONS, *offset);
            match found.get(&(producer.name.clone(), index)) {
                Some(place) if *place == at => {}
                place => failures.add(
                    "lost",
                    format!(
                        "{}-{index} acknowledged at {TOPIC}-{}@{}, found at {place:?}",
                        producer.name, at.0, at.1
                    ),
                ),
            }
        }
    }
    failures.into_list()
}

/// One partition's checks: dense offsets up to the high watermark, known and unique
/// records in their partition, each producer's order, each producer epoch's sequences.
fn check_partition(
    partition: usize,
    read: &Partition,
    producers: &[Producer],
    found: &mut HashMap<(String, usize), (usize, i64)>,
    failures: &mut Failures,
) {
    let offsets_dense = read
        .records
        .iter()
        .enumerate()
        .all(|(i, r)| r.offset == i as i64);
    if !offsets_dense || read.records.len() as i64 != read.high_watermark {
        let first: Vec<i64> = read.records.iter().take(5).map(|r| r.offset).collect();
        failures.add(
            "dense",
            format!(
                "{TOPIC}-{partition}: {} records up to the high watermark {}, offsets not 0, \
                 1, 2, …: first {first:?}",
                read.records.len(),
                read.high_watermark
            ),
        );
    }
    let mut last_index: HashMap<&str, usize> = HashMap::new();
    let mut next_sequence: HashMap<(i64, i16), i32> = HashMap::new();
    for record in &read.records {
        let at = format!("{TOPIC}-{partition}@{}", record.offset);
        let value = record.value.as_deref().unwrap_or_default();
        let parsed = parse_value(value).and_then(|(name, index)| {
            let producer = producers.iter().find(|p| p.name == name)?;
            (index < producer.sent).then_some((producer.name.as_str(), index))
        });
        let Some((name, index)) = parsed else {
            failures.add(
                "unknown",
                format!("{at}: a record no producer sent: {value:?}"),
            );
            continue;
        };
        if index % PARTITIONS != partition {
            failures.add(
                "misplaced",
                format!("{at}: {name}-{index} in the wrong partition"),
            );
        }
        if let Some(earlier) = found.insert((name.to_owned(), index), (partition, record.offset)) {
            failures.add(
                "duplicate",
                format!("{at}: {name}-{index} also at {earlier:?}"),
            );
        }
        if let Some(previous) = last_index.insert(name, index) {
            if previous >= index {
                failures.add(
                    "order",
                    format!("{at}: {name}-{index} after {name}-{previous}"),
                );
            }
        }
        let expected = next_sequence
            .entry((record.producer_id, record.producer_epoch))
            .or_insert(0);
        if record.sequence != *expected {
            failures.add(
                "sequence",
                format!(
                    "{at}: producer id {} epoch {} sequence {}, expected {}",
                    record.producer_id, record.producer_epoch, record.sequence, expected
                ),
            );
        }
        *expected = record.sequence + 1;
    }
}

/// Failures by kind, a few of each kept in full and the rest counted.
#[derive(Default)]
struct Failures {
    by_kind: BTreeMap<&'static str, (usize, Vec<String>)>,
}

impl Failures {
    const KEPT_PER_KIND: usize = 10;

    fn add(&mut self, kind: &'static str, failure: String) {
        let (count, kept) = self.by_kind.entry(kind).or_default();
        *count += 1;
        if kept.len() < Self::KEPT_PER_KIND {
            kept.push(failure);
        }
    }

    fn into_list(self) -> Vec<String> {
        let mut list = Vec::new();
        for (kind, (count, kept)) in self.by_kind {
            list.push(format!("{count} failures of kind {kind:?}, the first:"));
            list.extend(kept.into_iter().map(|failure| format!("  {failure}")));
        }
        list
    }
}

/// One line on what the run did, printed whether it passes or fails.
fn summary(read: &[Partition], result: &serde_json::Value) -> String {
    let records: Vec<usize> = read
        .iter()
        .map(|partition| partition.records.len())
        .collect();
    let mut text = format!("records per partition {records:?}");
    for (name, report) in result["producers"].as_object().expect("producers") {
        let offsets = report["offsets"].as_array().map_or(&[][..], Vec::as_slice);
        let acknowledged = offsets.iter().filter(|offset| !offset.is_null()).count();
        let _ = write!(
            text,
            "; {name}: sent {}, acknowledged {acknowledged}, errors {}",
            report["sent"], report["errors"]
        );
    }
    text
}

/// The checks themselves: a log a broken cluster could leave behind (a record stored twice,
/// an acknowledged one lost, a gap in the offsets, a sequence out of step, a stranger's
/// record) fails each of the checks meant to catch it, and a good one passes.
#[test]
fn the_record_checks_catch_what_a_broken_cluster_gets_wrong() {
    let record = |offset: i64, name: &str, index: usize, sequence: i32| Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 1,
        producer_id: if name == "kp" { 1000 } else { 2000 },
        producer_epoch: 0,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset,
        sequence,
        timestamp: 0,
        key: None,
        value: Some(Bytes::from(format!("{name}-{index}"))),
        headers: kafka_protocol::indexmap::IndexMap::default(),
    };
    // Records kp-0, kp-3, kp-6 (partition 0 of 3), acknowledged at offsets 0, 1, 2.
    let result = serde_json::json!({"partitions": 3, "producers": {"kp": {
        "sent": 7, "offsets": [0, null, null, 1, null, null, 2], "errors": {},
        "fatal": null, "wrong_partition": [], "unanswered": 0}}});
    let good = vec![
        record(0, "kp", 0, 0),
        record(1, "kp", 3, 1),
        record(2, "kp", 6, 2),
    ];
    let partitions = |records: Vec<Record>| {
        let mut read: Vec<Partition> = (0..PARTITIONS)
            .map(|_| Partition {
                high_watermark: 0,
                records: Vec::new(),
            })
            .collect();
        read[0].high_watermark = records.len() as i64;
        read[0].records = records;
        read
    };
    assert_eq!(
        check_records(&partitions(good.clone()), &result),
        Vec::<String>::new()
    );
    let kinds = |records: Vec<Record>| check_records(&partitions(records), &result).join("\n");
    // kp-3 written twice (a retry proposed again), the second time after kp-6.
    let mut twice = good.clone();
    twice.push(record(3, "kp", 3, 1));
    let found = kinds(twice);
    for kind in ["\"duplicate\"", "\"order\"", "\"sequence\""] {
        assert!(found.contains(kind), "{kind} in {found}");
    }
    // kp-3 lost: kp-6 moves to offset 1.
    let found = kinds(vec![record(0, "kp", 0, 0), record(1, "kp", 6, 2)]);
    assert!(
        found.contains("\"lost\"") && found.contains("\"sequence\""),
        "{found}"
    );
    // A gap in the offsets.
    let mut gap = good.clone();
    gap[2].offset = 3;
    assert!(kinds(gap).contains("\"dense\""));
    // A record no producer sent, and one in the wrong partition.
    let mut strangers = good;
    strangers.push(record(3, "kp", 1, 3));
    strangers.push(record(4, "xx", 0, 0));
    let found = kinds(strangers);
    assert!(
        found.contains("\"misplaced\"") && found.contains("\"unknown\""),
        "{found}"
    );
}
