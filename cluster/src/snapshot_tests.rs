//! Snapshots by segment shipping (`snapshot.rs`) among three replicas in one thread, on
//! real files: a follower cut off while its leader's window moves past it catches up by a
//! snapshot whose batches it copies from a peer's log, and a fill cut short by a crash is
//! done again when the replica opens. After each, every replica's log is the same bytes.
//! With retention on, a follower whose peers deleted what it lacks starts its log where
//! theirs start, and retention never deletes what a window holds.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use ringlog_engine::log::{PartitionId, PartitionLog};
use ringlog_engine::rt;
use ringlog_engine::storage::DiskStorage;
use ringlog_engine::topic::TopicConfig;

use crate::journal::{Internal, Journal, Record};
use crate::replica::{Replica, ReplicaConfig, ReplicaError};
use crate::snapshot::{Fetched, FillSource};
use crate::tests::{
    answered, assert_identical, config, id, read_from_first, topic, values_from, Cluster, NODES,
};

/// A window of 4 applied entries, at most 8 kept for followers: snapshots come quickly.
fn small_window(node: u64) -> ReplicaConfig {
    ReplicaConfig {
        window_entries_keep: 4,
        window_entries_max: 8,
        ..config(node)
    }
}

/// Fills from the other replicas' logs directly, a few hundred bytes at a time (so a fill
/// takes several chunks); `chunks_left`, when set, makes it stop (as a node stopping
/// does) after that many chunks.
struct PeerLogs {
    logs: Vec<PartitionLog<DiskStorage>>,
    chunks_left: Cell<Option<usize>>,
    fetches: Rc<Cell<usize>>,
}

impl FillSource for PeerLogs {
    fn fetch(
        &self,
        _partition: &PartitionId,
        offset: i64,
        _offset_end: i64,
    ) -> LocalBoxFuture<'static, Option<Fetched>> {
        if let Some(left) = self.chunks_left.get() {
            if left == 0 {
                return Box::pin(async { None });
            }
            self.chunks_left.set(Some(left - 1));
        }
        self.fetches.set(self.fetches.get() + 1);
        let logs = self.logs.clone();
        Box::pin(async move { Some(read_from_first(logs, offset, 300).await) })
    }
}

/// Gives `node` a source reading the other replicas' logs; returns its fetch count.
pub(crate) fn fill_from_peers(
    cluster: &mut Cluster,
    node: u64,
    chunks: Option<usize>,
) -> Rc<Cell<usize>> {
    let logs = (cluster.replicas.iter())
        .filter(|(other, _)| **other != node)
        .map(|(_, replica)| replica.log().clone())
        .collect();
    let fetches = Rc::new(Cell::new(0));
    let source = PeerLogs {
        logs,
        chunks_left: Cell::new(chunks),
        fetches: fetches.clone(),
    };
    let replica = cluster.replicas.get_mut(&node).unwrap();
    replica.set_fill_source(Rc::new(source));
    fetches
}

/// Ticks and settles until `node`'s log holds `count` records.
async fn catch_up(cluster: &mut Cluster, node: u64, count: i64) {
    for _ in 0..100 {
        cluster.tick();
        cluster.settle().await;
        if cluster.replicas[&node].high_watermark() == count {
            return;
        }
    }
    panic!("node {node} did not catch up to {count}");
}

/// A follower cut off while the leader commits `rounds` proposals of 3 records; returns
/// (leader, follower).
async fn leave_behind(cluster: &mut Cluster, rounds: usize) -> (u64, u64) {
    let leader = cluster.elect(|_| true).await;
    let follower = *NODES.iter().find(|node| **node != leader).unwrap();
    cluster.isolated.insert(follower);
    for round in 0..rounds {
        let mut answer = cluster.propose(leader, &format!("r{round}"), 3);
        cluster.settle().await;
        assert!(answered(&mut answer).unwrap().is_ok());
    }
    let anchor = cluster.replicas[&leader].anchor();
    let (behind, _) = cluster.replicas[&follower].last_index_and_term();
    assert!(
        anchor.index > behind,
        "the leader's window ({anchor:?}) moved past the follower's last entry {behind}"
    );
    (leader, follower)
}

#[test]
fn a_follower_behind_the_window_copies_the_batches_below_it_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with(dir.path(), small_window).await;
        let (leader, follower) = leave_behind(&mut cluster, 30).await;
        let fetches = fill_from_peers(&mut cluster, follower, None);
        cluster.isolated.clear();
        catch_up(&mut cluster, follower, 90).await;

        let stats = cluster.replicas[&follower].snapshot_stats();
        assert_eq!(stats.installed, 1);
        assert!(
            fetches.get() > 1,
            "copied in several chunks: {}",
            fetches.get()
        );
        let anchor = cluster.replicas[&follower].anchor();
        assert!(anchor.index > 0 && anchor.offset > 0, "{anchor:?}");
        // Everything below the anchor came by copy; the rest as entries.
        assert!(stats.fill_bytes > 0);
        let values = assert_identical(&cluster).await;
        assert_eq!(values.len(), 90);
        assert_eq!(&values[..3], ["r0-0", "r0-1", "r0-2"]);

        // It takes part as any follower from then on, and all of it survives a restart.
        let mut more = cluster.propose(leader, "after", 2);
        cluster.settle().await;
        assert_eq!(answered(&mut more).unwrap().unwrap().offset_first, 90);
        let windows: Vec<_> = (cluster.replicas.values())
            .map(|replica| (replica.anchor(), replica.last_index_and_term()))
            .collect();
        let dir = cluster.close().await;
        let mut cluster = Cluster::open_with(&dir, small_window).await;
        let reopened: Vec<_> = (cluster.replicas.values())
            .map(|replica| (replica.anchor(), replica.last_index_and_term()))
            .collect();
        assert_eq!(reopened, windows, "anchors and windows rebuilt from disk");
        let leader = cluster.elect(|_| true).await;
        let mut last = cluster.propose(leader, "restarted", 1);
        cluster.settle().await;
        assert_eq!(answered(&mut last).unwrap().unwrap().offset_first, 92);
        assert_eq!(assert_identical(&cluster).await.len(), 93);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_fill_cut_short_is_done_again_when_the_replica_opens() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with(dir.path(), small_window).await;
        let (_, follower) = leave_behind(&mut cluster, 20).await;
        fill_from_peers(&mut cluster, follower, Some(2));
        cluster.isolated.clear();
        // Heal until the follower installs the snapshot and its fill stops part-way.
        let mut stopped = None;
        'heal: for _ in 0..100 {
            for replica in cluster.replicas.values_mut() {
                replica.tick();
            }
            for _ in 0..50 {
                for (node, replica) in &mut cluster.replicas {
                    if !replica.has_ready() {
                        continue;
                    }
                    match replica.process_ready().await {
                        Ok(sent) => cluster.in_flight.extend(sent),
                        Err(error) => {
                            assert_eq!(*node, follower, "{error}");
                            stopped = Some(error);
                            break 'heal;
                        }
                    }
                }
                for message in std::mem::take(&mut cluster.in_flight) {
                    cluster
                        .replicas
                        .get_mut(&message.to)
                        .unwrap()
                        .step(message)
                        .unwrap();
                }
            }
        }
        assert!(
            matches!(stopped, Some(ReplicaError::Unsupported { .. })),
            "{stopped:?}"
        );
        let partial = cluster.replicas[&follower].log().offsets().log_end;
        let anchor = cluster.replicas[&follower].anchor();
        assert!(
            partial < anchor.offset,
            "stopped part-way: {partial} of {}",
            anchor.offset
        );

        // A crash: the follower is dropped as it is, and opened again from its files.
        drop(cluster.replicas.remove(&follower));
        let reopened = open(&cluster.dir().join(format!("node-{follower}")), follower).await;
        assert_eq!(reopened.anchor(), anchor, "the snapshot's anchor is kept");
        cluster.replicas.insert(follower, reopened);
        assert!(
            cluster.replicas[&follower].has_ready(),
            "the fill is still to do"
        );
        fill_from_peers(&mut cluster, follower, None);
        catch_up(&mut cluster, follower, 60).await;
        assert_eq!(assert_identical(&cluster).await.len(), 60);
        cluster.close().await;
    })
    .unwrap();
}

async fn open(dir: &Path, node: u64) -> Replica<DiskStorage> {
    Replica::open(DiskStorage, dir, id(), topic(), &small_window(node))
        .await
        .unwrap()
}

/// `node`'s data directory is lost: it comes back empty, rejoining (as its node makes a
/// replica of a new data directory do), with the other replicas' logs to fill from.
async fn wipe(cluster: &mut Cluster, node: u64) {
    let wiped = cluster.replicas.remove(&node).unwrap();
    wiped.close().await.unwrap();
    let node_dir = cluster.dir().join(format!("node-{node}"));
    std::fs::remove_dir_all(&node_dir).unwrap();
    let mut replica = open(&node_dir, node).await;
    replica.start_rejoin();
    cluster.replicas.insert(node, replica);
    fill_from_peers(cluster, node, None);
}

#[test]
fn a_follower_whose_data_is_wiped_is_probed_again_and_refilled() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with(dir.path(), small_window).await;
        let leader = cluster.elect(|_| true).await;
        let follower = *NODES.iter().find(|node| **node != leader).unwrap();
        for round in 0..30 {
            let mut answer = cluster.propose(leader, &format!("w{round}"), 2);
            cluster.settle().await;
            assert!(answered(&mut answer).unwrap().is_ok());
        }
        wipe(&mut cluster, follower).await;
        // Its leader hears of the restart (a new incarnation in the peer's hello).
        cluster
            .replicas
            .get_mut(&leader)
            .unwrap()
            .peer_restarted(follower);
        catch_up(&mut cluster, follower, 60).await;
        assert_eq!(cluster.replicas[&follower].snapshot_stats().installed, 1);
        assert!(!cluster.replicas[&follower].rejoining());
        assert_eq!(assert_identical(&cluster).await.len(), 60);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_wiped_follower_votes_for_no_one_lacking_what_it_acknowledged_before() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with(dir.path(), small_window).await;
        let leader = cluster.elect(|_| true).await;
        let mut followers = NODES.iter().copied().filter(|node| *node != leader);
        let (wiped, stale) = (followers.next().unwrap(), followers.next().unwrap());
        // 40 records committed by the leader and one follower, the other cut off.
        cluster.isolated.insert(stale);
        for round in 0..20 {
            let mut answer = cluster.propose(leader, &format!("c{round}"), 2);
            cluster.settle().await;
            assert!(answered(&mut answer).unwrap().is_ok());
        }
        let term_before = cluster.replicas[&leader].term();
        // That follower loses its data directory, then the leader is cut off: the stale
        // follower and the wiped one are a majority, and only the cut-off leader holds
        // the records. The wiped one cannot hear from every voter, so takes no part: no
        // leader, rather than the stale one (which an empty log would vote for).
        wipe(&mut cluster, wiped).await;
        // The stale one is behind the leader's window: it will need a snapshot too.
        fill_from_peers(&mut cluster, stale, None);
        cluster.isolated.remove(&stale);
        cluster.isolated.insert(leader);
        for _ in 0..100 {
            cluster.tick();
            cluster.settle().await;
            assert!(
                !cluster.replicas[&stale].is_leader() && !cluster.replicas[&wiped].is_leader(),
                "a leader without the committed records"
            );
        }
        assert!(cluster.replicas[&wiped].rejoining());
        // The leader is back: the wiped follower hears from every voter, takes the
        // highest term, and follows; the records are kept.
        cluster.isolated.remove(&leader);
        let elected = cluster.elect(|_| true).await;
        assert_eq!(
            elected, leader,
            "only the leader holds every committed record"
        );
        assert!(cluster.replicas[&wiped].term() > term_before);
        catch_up(&mut cluster, wiped, 40).await;
        catch_up(&mut cluster, stale, 40).await;
        assert!(!cluster.replicas[&wiped].rejoining());
        let values = assert_identical(&cluster).await;
        assert_eq!(values.len(), 40);
        assert_eq!(values[0], "c0-0");
        cluster.close().await;
    })
    .unwrap();
}

/// Segments of 4 KiB (about 40 of the tests' batches) and retention of nothing more than
/// it must keep: only the anchor bounds what retention deletes.
fn retained() -> TopicConfig {
    let mut config = topic();
    config
        .apply_all([("segment.bytes", "4096"), ("retention.bytes", "0")])
        .unwrap();
    config
}

/// Every replica's committed batches from the highest log start on (where retention left
/// them all), which must be the same bytes; returns their values.
async fn assert_identical_tails(cluster: &Cluster) -> Vec<String> {
    let from = (cluster.replicas.values())
        .map(|replica| replica.log().offsets().log_start)
        .max()
        .unwrap();
    let mut tails = Vec::new();
    for (node, replica) in &cluster.replicas {
        let tail = replica.log().read_bytes(from, 64 << 20).await.unwrap();
        if let Some((_, first)) = tails.first() {
            assert_eq!(&tail, first, "node {node}'s log differs from {from} on");
        }
        tails.push((*node, tail));
    }
    // A log start inside a batch: reads start at the batch.
    let first = ringlog_engine::batch::FrameHeader::parse(&tails[0].1)
        .map_or(from, |header| header.base_offset);
    values_from(&tails[0].1, first)
}

#[test]
fn a_follower_whose_peers_deleted_what_it_lacks_starts_its_log_where_theirs_start() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with_topic(dir.path(), small_window, retained()).await;
        let (leader, follower) = leave_behind(&mut cluster, 200).await;
        let follower_end = cluster.replicas[&follower].log().offsets().log_end;
        for (node, replica) in &cluster.replicas {
            let deleted = replica.log().enforce_retention().await.unwrap();
            let log_start = replica.log().offsets().log_start;
            let anchor = replica.anchor();
            assert!(
                log_start <= anchor.offset,
                "node {node}: retention deleted into the window ({log_start} > {anchor:?})"
            );
            if *node != follower {
                assert!(
                    deleted > 0 && log_start > follower_end,
                    "node {node}: {log_start}"
                );
            }
        }

        // The follower installs the snapshot; its first fetch finds the peers' logs
        // starting past its end, and it starts its own there. Then a crash, one chunk
        // later.
        fill_from_peers(&mut cluster, follower, Some(2));
        cluster.isolated.clear();
        let mut stopped = false;
        for _ in 0..100 {
            cluster.tick();
            if let Err(error) = try_settle(&mut cluster).await {
                assert!(matches!(error, ReplicaError::Unsupported { .. }), "{error}");
                stopped = true;
                break;
            }
        }
        assert!(stopped, "the fill stopped part-way");
        let restarted_at = cluster.replicas[&follower].log().offsets().log_start;
        assert!(restarted_at > follower_end, "{restarted_at}");
        drop(cluster.replicas.remove(&follower));
        let follower_dir = cluster.dir().join(format!("node-{follower}"));
        let reopened = Replica::open(
            DiskStorage,
            &follower_dir,
            id(),
            retained(),
            &small_window(follower),
        )
        .await
        .unwrap();
        assert_eq!(reopened.log().offsets().log_start, restarted_at);
        cluster.replicas.insert(follower, reopened);
        fill_from_peers(&mut cluster, follower, None);
        catch_up(&mut cluster, follower, 600).await;

        let values = assert_identical_tails(&cluster).await;
        assert_eq!(values.last().unwrap(), "r199-2");
        let from = 600 - values.len();
        assert_eq!(values[0], format!("r{}-{}", from / 3, from % 3));

        // It goes on as any follower, and all of it survives a restart.
        let mut more = cluster.propose(leader, "after", 2);
        cluster.settle().await;
        assert_eq!(answered(&mut more).unwrap().unwrap().offset_first, 600);
        let dir = cluster.close().await;
        let mut cluster = Cluster::open_with_topic(&dir, small_window, retained()).await;
        let leader = cluster.elect(|_| true).await;
        let mut last = cluster.propose(leader, "restarted", 1);
        cluster.settle().await;
        assert_eq!(answered(&mut last).unwrap().unwrap().offset_first, 602);
        assert_eq!(
            assert_identical_tails(&cluster).await.last().unwrap(),
            "restarted-0"
        );
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn the_group_moves_every_replicas_log_start_and_a_follower_left_behind_starts_there() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with(dir.path(), small_window).await;
        // 60 records committed while one follower is cut off, far behind.
        let (leader, behind) = leave_behind(&mut cluster, 20).await;
        let with = *NODES
            .iter()
            .find(|node| **node != leader && **node != behind)
            .unwrap();
        let replica = cluster.replicas.get_mut(&leader).unwrap();
        assert!(
            matches!(replica.propose_log_start(61), Err(ReplicaError::Log { .. })),
            "past the high watermark"
        );
        let mut moved = replica.propose_log_start(31).unwrap();
        assert!(moved.try_recv().unwrap().is_none(), "not before it commits");
        cluster.settle().await;
        assert_eq!(moved.try_recv().unwrap().unwrap().unwrap(), 31);
        for node in [leader, with] {
            let replica = &cluster.replicas[&node];
            assert_eq!(replica.log().offsets().log_start, 31, "node {node}");
            assert!(
                replica.anchor().offset >= 31,
                "node {node}: the window starts past it"
            );
            assert!(
                replica.log().read_bytes(30, 1 << 20).await.is_err(),
                "node {node}"
            );
        }
        // Once there, asking again is answered at once.
        let again = cluster
            .replicas
            .get_mut(&leader)
            .unwrap()
            .propose_log_start(20);
        assert_eq!(again.unwrap().try_recv().unwrap().unwrap().unwrap(), 31);

        // The follower left behind gets a snapshot; its peers' logs start past what it
        // holds, so its own starts there too.
        cluster.isolated.clear();
        fill_from_peers(&mut cluster, behind, None);
        catch_up(&mut cluster, behind, 60).await;
        assert_eq!(cluster.replicas[&behind].log().offsets().log_start, 31);
        let mut more = cluster.propose(leader, "after", 2);
        cluster.settle().await;
        assert_eq!(answered(&mut more).unwrap().unwrap().offset_first, 60);
        let values = assert_identical_tails(&cluster).await;
        // Offset 31 is round 10's second record; reads start at its batch.
        assert_eq!(values[0], "r10-0");
        assert_eq!(values.last().unwrap(), "after-1");

        // Every replica's start survives a restart.
        let dir = cluster.close().await;
        let cluster = Cluster::open_with(&dir, small_window).await;
        for (node, replica) in &cluster.replicas {
            assert_eq!(
                replica.log().offsets().log_start,
                31,
                "node {node} reopened"
            );
        }
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_follower_that_missed_only_the_log_start_entry_takes_it_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with(dir.path(), small_window).await;
        let leader = commit_everywhere(&mut cluster, 10).await;
        let behind = *NODES.iter().find(|node| **node != leader).unwrap();
        assert_eq!(cluster.replicas[&behind].high_watermark(), 30);
        // Cut off only while the log start entry commits: it holds every batch already, so
        // the snapshot it gets has nothing to fill.
        cluster.isolated.insert(behind);
        let replica = cluster.replicas.get_mut(&leader).unwrap();
        let mut moved = replica.propose_log_start(16).unwrap();
        cluster.settle().await;
        assert_eq!(moved.try_recv().unwrap().unwrap().unwrap(), 16);
        cluster.isolated.clear();
        fill_from_peers(&mut cluster, behind, None);
        for _ in 0..50 {
            cluster.tick();
            cluster.settle().await;
        }
        assert!(cluster.replicas[&behind].snapshot_stats().installed > 0);
        for (node, replica) in &cluster.replicas {
            assert_eq!(replica.log().offsets().log_start, 16, "node {node}");
        }
        let dir = cluster.close().await;
        let cluster = Cluster::open_with(&dir, small_window).await;
        for (node, replica) in &cluster.replicas {
            assert_eq!(
                replica.log().offsets().log_start,
                16,
                "node {node} reopened"
            );
        }
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_log_start_entry_committed_but_not_applied_before_a_crash_moves_the_start_at_open() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with(dir.path(), small_window).await;
        let leader = commit_everywhere(&mut cluster, 4).await;
        let (last, term) = cluster.replicas[&leader].last_index_and_term();
        let dir = cluster.close().await;
        // Every replica holds the entry deciding start 6 and a commit index covering it,
        // but crashed before applying it: no log start record.
        let entry = last + 1;
        append_to_journals(&dir, &unapplied_log_start(entry, term, leader, 12, 6)).await;
        let mut cluster = Cluster::open_with(&dir, small_window).await;
        let leader = cluster.elect(|_| true).await;
        let mut more = cluster.propose(leader, "after", 1);
        cluster.settle().await;
        assert_eq!(answered(&mut more).unwrap().unwrap().offset_first, 12);
        for (node, replica) in &cluster.replicas {
            assert_eq!(replica.log().offsets().log_start, 6, "node {node}");
        }
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_start_found_at_open_survives_a_crash_once_the_anchor_passed_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open_with(dir.path(), small_window).await;
        let leader = commit_everywhere(&mut cluster, 4).await;
        let (last, term) = cluster.replicas[&leader].last_index_and_term();
        let dir = cluster.close().await;
        // A first crash: the entry deciding start 6 and a commit covering it, not applied.
        let entry = last + 1;
        append_to_journals(&dir, &unapplied_log_start(entry, term, leader, 12, 6)).await;
        // Reopened (the start found in the window), then a second crash once the anchor
        // passed the entry and before the log's start moved.
        Cluster::open_with(&dir, small_window).await.close().await;
        let anchor = crate::journal::Anchor {
            index: entry,
            term,
            offset: 12,
        };
        append_to_journals(&dir, &[Record::Anchor(anchor)]).await;
        let mut cluster = Cluster::open_with(&dir, small_window).await;
        let leader = cluster.elect(|_| true).await;
        let mut more = cluster.propose(leader, "after", 1);
        cluster.settle().await;
        assert_eq!(answered(&mut more).unwrap().unwrap().offset_first, 12);
        for (node, replica) in &cluster.replicas {
            assert_eq!(replica.log().offsets().log_start, 6, "node {node}");
        }
        cluster.close().await;
    })
    .unwrap();
}

/// Elects a leader and commits `rounds` proposals of 3 records (`r<round>`), then ticks
/// until every follower learned the commit of all of them; returns the leader.
async fn commit_everywhere(cluster: &mut Cluster, rounds: usize) -> u64 {
    let leader = cluster.elect(|_| true).await;
    for round in 0..rounds {
        let mut answer = cluster.propose(leader, &format!("r{round}"), 3);
        cluster.settle().await;
        assert!(answered(&mut answer).unwrap().is_ok());
    }
    for _ in 0..5 {
        cluster.tick();
        cluster.settle().await;
    }
    leader
}

/// The journal records of a log-start entry (index `entry`, at `offset`, deciding
/// `start`) persisted with a commit index covering it, as a replica leaves them if it
/// crashes before applying it.
fn unapplied_log_start(entry: u64, term: u64, vote: u64, offset: i64, start: i64) -> [Record; 2] {
    let mut context = b"ringlog.log-start:".to_vec();
    context.extend_from_slice(&start.to_be_bytes());
    let internal = Internal {
        index: entry,
        term,
        offset,
        entry_type: raft::eraftpb::EntryType::EntryNormal,
        context: context.into(),
        data: bytes::Bytes::new(),
    };
    let hard_state = raft::eraftpb::HardState {
        term,
        vote,
        commit: entry,
        ..Default::default()
    };
    [Record::Internal(internal), Record::HardState(hard_state)]
}

/// Appends `records` (synced) to every replica's journal under `dir`.
async fn append_to_journals(dir: &Path, records: &[Record]) {
    for node in NODES {
        let (mut journal, _) = Journal::open(DiskStorage, &dir.join(format!("node-{node}")))
            .await
            .unwrap();
        journal.append(records, true).await.unwrap();
    }
}

/// One round of `Cluster::settle`, stopping at the first replica error.
async fn try_settle(cluster: &mut Cluster) -> Result<(), ReplicaError> {
    for _ in 0..50 {
        for replica in cluster.replicas.values_mut() {
            if replica.has_ready() {
                let sent = replica.process_ready().await?;
                cluster.in_flight.extend(sent);
            }
        }
        for message in std::mem::take(&mut cluster.in_flight) {
            if cluster.isolated.contains(&message.to) || cluster.isolated.contains(&message.from) {
                continue;
            }
            cluster
                .replicas
                .get_mut(&message.to)
                .unwrap()
                .step(message)?;
        }
    }
    Ok(())
}
