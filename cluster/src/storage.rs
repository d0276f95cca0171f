//! raft-rs's `Storage` over a partition: the entry table (`entries.rs`) for terms and
//! entries, the journal's hard state and configuration for the initial state.
//!
//! raft-rs reads its storage synchronously. Entries whose data is cached answer at once;
//! for data entries no longer cached, a read that may wait (sending entries to a follower)
//! is answered `LogTemporarilyUnavailable` and recorded, the replica reads the batches
//! back from the partition log, fills the table and tells raft-rs to try again
//! (`on_entries_fetched`). Reads that may not wait only ever ask for entries that are not
//! applied yet, which the table always caches.
//!
//! A snapshot is the anchor (`snapshot.rs`): raft-rs asks for one when a follower needs
//! entries at or below it, and the follower copies the batches below the anchor's offset
//! from a peer's log.

use std::cell::RefCell;
use std::rc::Rc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::entries::EntryTable;

/// A read raft-rs asked for and must be told about once its entries are cached.
pub struct Fetch {
    pub low: u64,
    pub high: u64,
    pub context: GetEntriesContext,
}

/// What the storage shares with the replica that drives it.
pub struct State {
    pub table: EntryTable,
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The index of the configuration change `conf_state` last took in (0: none since the
    /// group began). A snapshot says the configuration at its index, so one whose anchor
    /// lies below this is not made: a replica installing it would replay the change on a
    /// configuration that holds it already, which raft-rs refuses ("already joint").
    pub conf_index: u64,
    /// Set when a snapshot was refused for that reason: the replica then moves its anchor
    /// up to its applied index (`Replica::compact`), and the next request gets one.
    pub snapshot_waits_for_anchor: std::cell::Cell<bool>,
    /// The log start the group decided, as far as this replica knows (snapshots carry it).
    pub log_start: i64,
    /// Reads waiting for entries to be read back from the partition log.
    pub fetches: Vec<Fetch>,
}

/// raft-rs's view of a partition's Raft log. Cheap to clone: clones share the state.
#[derive(Clone)]
pub struct RaftStorage {
    pub state: Rc<RefCell<State>>,
}

impl RaftStorage {
    pub fn new(state: State) -> RaftStorage {
        RaftStorage {
            state: Rc::new(RefCell::new(state)),
        }
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self.state.borrow();
        Ok(RaftState::new(
            state.hard_state.clone(),
            state.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let mut state = self.state.borrow_mut();
        let table = &state.table;
        if low < table.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= table.last_index() + 1,
            "raft asked for entries {low}..{high} past the last, {}",
            table.last_index()
        );
        let max_size = max_size.into();
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let Some(entry) = table.entry(index) else {
                // Fewer entries than asked for are an answer: the rest are sent next.
                if !entries.is_empty() {
                    break;
                }
                if !context.can_async() {
                    unreachable!("raft read entry {index}, not cached, and may not wait");
                }
                state.fetches.push(Fetch { low, high, context });
                return Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable));
            };
            size += u64::from(protobuf::Message::compute_size(&entry));
            // Always at least one entry, as raft-rs's own storage does.
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let state = self.state.borrow();
        if index < state.table.anchor().index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        state
            .table
            .term(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.state.borrow().table.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.state.borrow().table.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let state = self.state.borrow();
        let anchor = state.table.anchor();
        // Index 0 is no snapshot (nothing below the window); one older than asked for
        // would not do.
        if anchor.index == 0 || anchor.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        if anchor.index < state.conf_index {
            state.snapshot_waits_for_anchor.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        snapshot.data = crate::snapshot::encode_data(crate::snapshot::SnapshotData {
            offset: anchor.offset,
            log_start: state.log_start,
        });
        let metadata = snapshot.mut_metadata();
        metadata.index = anchor.index;
        metadata.term = anchor.term;
        metadata.set_conf_state(state.conf_state.clone());
        Ok(snapshot)
    }
}
