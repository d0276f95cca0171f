//! The node's side of snapshot fills (`snapshot.rs`), one per shard: serving peers' fill
//! requests from the committed logs of the shard's groups, and fetching the chunks a
//! replica of the shard needs to fill a snapshot it installs.
//!
//! - **Serving.** A request names a group and an offset; the answer is the whole batches
//!   of this node's log from that offset, below its commit end (a replicated log's reads
//!   stop there), about `FILL_CHUNK_BYTES_MAX` of them (the first batch always whole), and
//!   the log's start. An offset below the log's start gets no batches and that start: the
//!   asker's log must start there (retention deleted the rest). A group not open here, an
//!   offset past the committed log, or a shard already serving `FILL_SERVES_MAX` requests
//!   gets an empty chunk: the asker tries another peer.
//! - **Fetching.** One request in flight per filling replica, to one peer at a time, in
//!   turn from the last that answered; an answer that does not come within
//!   `FILL_ANSWER_TIMEOUT_MS` or comes empty sends the next request to the next peer after
//!   `FILL_RETRY_MS`. Answers are matched to requests by group and offset; one nobody waits
//!   for (late, or a peer's mistake) is dropped.
//! - **Tags.** Requests and answers carry the tag of the asking replica's topic
//!   (`transport.rs`): a request for another incarnation of a topic of the same name is
//!   answered empty, and an answer for another is dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use ringlog_engine::batch::FrameHeader;
use ringlog_engine::log::{PartitionId, PartitionLog};
use ringlog_engine::rt;
use ringlog_engine::storage::{DiskStorage, Storage};

use crate::limits::{FILL_ANSWER_TIMEOUT_MS, FILL_CHUNK_BYTES_MAX, FILL_RETRY_MS, FILL_SERVES_MAX};
use crate::snapshot::{Fetched, FillSource};
use crate::transport::{Group as Addressed, Payload, Transport};

type Group = (Rc<str>, u32);

/// A partition log served here, with its topic's tag.
struct Served {
    tag: u64,
    log: PartitionLog<DiskStorage>,
    /// The group's other voters: those a fill of it asks (the node's other peers hold no
    /// replica of it when its replica set is smaller than the cluster).
    peers: Vec<u64>,
}

/// What the node's fills did, over every shard.
#[derive(Debug, Default)]
pub struct FillCounters {
    /// Bytes of batches this node received for fills, and served to peers' fills.
    pub bytes_received: AtomicU64,
    pub bytes_served: AtomicU64,
    /// Requests this node sent that went unanswered in time or were answered empty.
    pub requests_retried: AtomicU64,
}

/// One shard's fills.
pub struct Fills {
    peers: Vec<u64>,
    transport: Rc<Transport>,
    counters: Arc<FillCounters>,
    /// The logs of the shard's groups, to serve from.
    logs: RefCell<HashMap<Group, Served>>,
    /// The requests this shard's replicas wait on, by group and offset.
    waiting: RefCell<HashMap<(Group, i64), oneshot::Sender<Fetched>>>,
    /// The peer that answered last: asked first next time.
    next_peer: Cell<usize>,
    serving: Cell<usize>,
}

impl Fills {
    /// The fills of a shard of a node whose other nodes are `peers`.
    pub fn new(
        peers: Vec<u64>,
        transport: Rc<Transport>,
        counters: Arc<FillCounters>,
    ) -> Rc<Fills> {
        Rc::new(Fills {
            peers,
            transport,
            counters,
            logs: RefCell::default(),
            waiting: RefCell::default(),
            next_peer: Cell::new(0),
            serving: Cell::new(0),
        })
    }

    /// Serves fill requests for `log`'s group, of the topic tagged `tag`, from now on.
    /// Serves `log`, of the topic tagged `tag`, to peers' fills, and lets its replica fill
    /// from `peers` (its group's other voters; every peer of the node if empty).
    pub fn register(&self, log: PartitionLog<DiskStorage>, tag: u64, peers: Vec<u64>) {
        let id = log.id();
        let group = (Rc::from(&*id.topic), id.partition);
        self.logs
            .borrow_mut()
            .insert(group, Served { tag, log, peers });
    }

    fn tag_of(&self, group: &Group) -> Option<u64> {
        self.logs.borrow().get(group).map(|served| served.tag)
    }

    /// Stops serving `partition` (its replica stopped).
    pub fn forget(&self, partition: &PartitionId) {
        let group = (Rc::from(&*partition.topic), partition.partition);
        self.logs.borrow_mut().remove(&group);
        // A fetch waiting for an answer wakes now, and gives up after its retry pause
        // (`fetch`).
        self.waiting
            .borrow_mut()
            .retain(|(waiting, _), _| *waiting != group);
    }

    /// A fill source for this shard's replicas.
    pub fn source(self: &Rc<Self>) -> Rc<dyn FillSource> {
        Rc::new(PeerSource {
            fills: self.clone(),
        })
    }

    /// Answers node `from`'s request for `asked`'s batches from `offset`.
    pub fn serve(self: &Rc<Self>, from: u64, asked: Addressed<'_>, offset: i64, max_bytes: u32) {
        let group: Group = (Rc::from(asked.topic), asked.partition);
        let tag = asked.tag;
        let log = (self.logs.borrow().get(&group))
            .filter(|served| served.tag == tag)
            .map(|served| served.log.clone());
        let (Some(log), true) = (log, self.serving.get() < FILL_SERVES_MAX) else {
            self.answer_to(from, &group, tag, offset, 0, Bytes::new());
            return;
        };
        self.serving.set(self.serving.get() + 1);
        let fills = self.clone();
        rt::spawn_local(async move {
            let (log_start, batches) = match read_for_fill(&log, offset, max_bytes).await {
                Some(Fetched::Batches { batches, log_start }) => (log_start, batches),
                Some(Fetched::StartsAt(first)) => (first, Bytes::new()),
                None => (0, Bytes::new()),
            };
            fills.serving.set(fills.serving.get() - 1);
            (fills.counters.bytes_served).fetch_add(batches.len() as u64, Ordering::Relaxed);
            fills.answer_to(from, &group, tag, offset, log_start, batches);
        })
        .detach();
    }

    /// Hands a peer's answer to the replica waiting for it, if any (of the same topic).
    pub fn answered(&self, answered: Addressed<'_>, offset: i64, fetched: Fetched) {
        let group: Group = (Rc::from(answered.topic), answered.partition);
        if self.tag_of(&group) != Some(answered.tag) {
            return;
        }
        if let Some(waiting) = self.waiting.borrow_mut().remove(&(group, offset)) {
            let _ = waiting.send(fetched);
        }
    }

    fn answer_to(
        &self,
        to: u64,
        group: &Group,
        tag: u64,
        offset: i64,
        log_start: i64,
        batches: Bytes,
    ) {
        let chunk = Payload::FillChunk {
            offset,
            log_start,
            batches,
        };
        self.transport
            .send_payload(to, addressed(group, tag), &chunk);
    }

    /// Asks peers in turn until one answers with batches. A peer whose log starts past
    /// `offset` does not end the search: only once every peer was asked since the first
    /// such answer, none with batches, is the lowest start they named the answer (a peer
    /// that keeps the batches longer, or answers later, is preferred to emptying a log).
    async fn fetch(&self, group: Group, offset: i64) -> Option<Fetched> {
        // A replica fills only while registered here (`Cluster::spawn_group`).
        let tag = self.tag_of(&group)?;
        let peers = (self.logs.borrow().get(&group))
            .map(|served| served.peers.clone())
            .filter(|peers| !peers.is_empty())
            .unwrap_or_else(|| self.peers.clone());
        let count = peers.len();
        if count == 0 {
            return None;
        }
        let mut turn = self.next_peer.get();
        // The lowest log start named past `offset`, and the peers asked since the first.
        let mut lowest_start: Option<i64> = None;
        let mut asked_since = 0;
        loop {
            if self.tag_of(&group) != Some(tag) {
                // Its group was closed here (its topic deleted): nothing to fill.
                return None;
            }
            let peer = peers[turn % count];
            let (reply, answer) = oneshot::channel();
            self.waiting
                .borrow_mut()
                .insert((group.clone(), offset), reply);
            let request = Payload::FillRequest {
                offset,
                max_bytes: FILL_CHUNK_BYTES_MAX,
            };
            (self.transport).send_payload(peer, addressed(&group, tag), &request);
            let wait = Duration::from_millis(FILL_ANSWER_TIMEOUT_MS);
            match rt::timeout(wait, answer).await {
                Ok(Ok(Fetched::Batches { batches, log_start })) if !batches.is_empty() => {
                    self.next_peer.set(turn % count);
                    (self.counters.bytes_received)
                        .fetch_add(batches.len() as u64, Ordering::Relaxed);
                    return Some(Fetched::Batches { batches, log_start });
                }
                Ok(Ok(Fetched::StartsAt(start))) => {
                    lowest_start = Some(lowest_start.map_or(start, |lowest| lowest.min(start)));
                }
                _ => {}
            }
            self.waiting.borrow_mut().remove(&(group.clone(), offset));
            if let Some(lowest) = lowest_start {
                asked_since += 1;
                if asked_since >= count {
                    return Some(Fetched::StartsAt(lowest));
                }
            }
            self.counters
                .requests_retried
                .fetch_add(1, Ordering::Relaxed);
            turn += 1;
            rt::sleep(Duration::from_millis(FILL_RETRY_MS)).await;
        }
    }
}

fn addressed(group: &Group, tag: u64) -> Addressed<'_> {
    Addressed {
        topic: &group.0,
        partition: group.1,
        tag,
    }
}

/// A replica's view of its shard's fills.
struct PeerSource {
    fills: Rc<Fills>,
}

impl FillSource for PeerSource {
    fn fetch(
        &self,
        partition: &PartitionId,
        offset: i64,
        _offset_end: i64,
    ) -> LocalBoxFuture<'static, Option<Fetched>> {
        let fills = self.fills.clone();
        let group: Group = (Rc::from(&*partition.topic), partition.partition);
        Box::pin(async move { fills.fetch(group, offset).await })
    }
}

/// What `log` answers a fill from `offset` with: its whole batches from the one at
/// `offset` on, about `max_bytes` of them, with its log start; or, if its first batch at or
/// after its log start begins past `offset`, where that batch begins (retention or the
/// group deleted what lies before). `None`: nothing to serve now (past the committed end,
/// or a failed read).
pub async fn read_for_fill<S: Storage>(
    log: &PartitionLog<S>,
    offset: i64,
    max_bytes: u32,
) -> Option<Fetched> {
    let log_start = log.offsets().log_start;
    // A read from inside a batch starts at the batch: the one holding the log start.
    let read = log
        .read_bytes(offset.max(log_start), u64::from(max_bytes))
        .await;
    let bytes = match read {
        Ok(bytes) => Bytes::from(bytes),
        Err(error) => {
            tracing::debug!(partition = %log.id(), offset, %error, "cannot serve a fill");
            return None;
        }
    };
    match FrameHeader::parse(&bytes).map(|header| header.base_offset) {
        Ok(first) if first > offset => Some(Fetched::StartsAt(first)),
        Ok(_) => {
            let batches = leading_batches(&bytes, offset, max_bytes as usize);
            (!batches.is_empty()).then_some(Fetched::Batches { batches, log_start })
        }
        // Nothing committed from the start on: the log starts at its end.
        Err(_) if offset < log_start => Some(Fetched::StartsAt(log_start)),
        Err(_) => None,
    }
}

/// The whole batches at the front of `bytes` (read from `offset`) that fit `max_bytes`,
/// the first always: what one chunk carries.
fn leading_batches(bytes: &Bytes, offset: i64, max_bytes: usize) -> Bytes {
    let mut at = 0;
    while let Ok(header) = FrameHeader::parse(&bytes[at..]) {
        let fits = at == 0 || at + header.size_bytes <= max_bytes;
        if (at == 0 && header.base_offset > offset) || !fits || bytes.len() - at < header.size_bytes
        {
            break;
        }
        at += header.size_bytes;
    }
    bytes.slice(..at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_engine::batch::BatchBuilder;

    fn batch_at(base_offset: i64, values: usize) -> Vec<u8> {
        let mut builder = BatchBuilder::new().base_offset(base_offset);
        for i in 0..values {
            builder.push(i as i64, None, Some(&[7; 100]), &[]).unwrap();
        }
        builder.build()
    }

    #[test]
    fn a_chunk_holds_whole_batches_within_its_size_and_the_first_always() {
        let (a, b, c) = (batch_at(0, 5), batch_at(5, 5), batch_at(10, 5));
        let all = Bytes::from([a.clone(), b.clone(), c.clone()].concat());
        assert_eq!(leading_batches(&all, 0, all.len()), all);
        assert_eq!(
            leading_batches(&all, 0, a.len() + b.len()).len(),
            a.len() + b.len()
        );
        // The first batch alone is larger than asked: sent whole anyway.
        assert_eq!(leading_batches(&all, 0, 10).len(), a.len());
        // A cut last batch is left out.
        let cut = all.slice(..all.len() - 3);
        assert_eq!(leading_batches(&cut, 0, all.len()).len(), a.len() + b.len());
        // The batch holding the offset starts before it: that is where a read starts.
        assert_eq!(leading_batches(&all, 3, a.len()).len(), a.len());
        assert!(leading_batches(&all.slice(..20), 0, all.len()).is_empty());
    }

    #[test]
    fn a_fetch_gives_up_once_its_group_is_forgotten() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        rt::block_on(async {
            let transport = Transport::new(crate::transport::tests::hello(1), Vec::new());
            let fills = Fills::new(vec![2], transport, Arc::default());
            let id = PartitionId {
                topic: Arc::from("orders"),
                partition: 0,
            };
            let config = ringlog_engine::topic::TopicConfig::default();
            let log = PartitionLog::open(DiskStorage, dir.path(), id.clone(), config)
                .await
                .unwrap();
            fills.register(log, 0xBEEF, Vec::new());
            let mut fetch = Box::pin(fills.source().fetch(&id, 0, 10));
            assert!(
                fetch.as_mut().now_or_never().is_none(),
                "it waits for peer 2"
            );
            // Its topic is deleted: `close_group` forgets the group while its task fills.
            fills.forget(&id);
            let given_up = rt::timeout(Duration::from_secs(5), fetch).await;
            assert_eq!(given_up.ok(), Some(None), "the fill gives up");
        })
        .unwrap();
    }
}
