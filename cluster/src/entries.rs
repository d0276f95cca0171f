//! The Raft entries of a partition's window, in memory: for each index from the anchor on,
//! its term and what it is — a record batch at a range of Kafka offsets, or one of Raft's
//! own entries (kept in the journal). Raft asks its storage for terms and entries by index;
//! this table answers without touching the disk, except for the data of batches it no
//! longer caches, which the replica reads back from the partition log.
//!
//! Invariants: indexes are dense from `anchor.index + 1`; the data entries' offset ranges
//! are dense and increasing from `anchor.offset`; an internal entry's offset is the end of
//! the data entries before it; cached data bytes are counted in `cached_bytes`.

use std::collections::VecDeque;

use bytes::Bytes;
use raft::eraftpb::{Entry, EntryType};

use crate::journal::{Anchor, Internal};

/// What an entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A record batch at `offset_first..offset_next`; its bytes while cached.
    Data {
        offset_first: i64,
        offset_next: i64,
        bytes: Option<Bytes>,
    },
    /// One of Raft's own entries.
    Internal {
        entry_type: EntryType,
        context: Bytes,
        data: Bytes,
    },
}

/// One entry of the window.
#[derive(Debug, Clone)]
pub struct Meta {
    pub term: u64,
    pub kind: Kind,
}

/// The window of a partition's Raft log held in memory.
#[derive(Debug, Default)]
pub struct EntryTable {
    anchor: Anchor,
    entries: VecDeque<Meta>,
    cached_bytes: u64,
}

impl EntryTable {
    /// An empty window after `anchor`.
    pub fn new(anchor: Anchor) -> EntryTable {
        EntryTable {
            anchor,
            entries: VecDeque::new(),
            cached_bytes: 0,
        }
    }

    pub fn anchor(&self) -> Anchor {
        self.anchor
    }

    /// The first index in the window.
    pub fn first_index(&self) -> u64 {
        self.anchor.index + 1
    }

    /// The last index in the window (the anchor's when it is empty).
    pub fn last_index(&self) -> u64 {
        self.anchor.index + self.entries.len() as u64
    }

    /// The term of `index`, from the anchor's to the last entry's.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.anchor.index {
            return Some(self.anchor.term);
        }
        self.get(index).map(|meta| meta.term)
    }

    pub fn get(&self, index: u64) -> Option<&Meta> {
        let position = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(position).ok()?)
    }

    /// The Kafka offset after the data entries below `index` (the whole window's for an
    /// index past it): where the next data entry at `index` starts.
    pub fn offset_at(&self, index: u64) -> i64 {
        let below = index
            .saturating_sub(self.first_index())
            .min(self.entries.len() as u64) as usize;
        self.entries
            .range(..below)
            .rev()
            .find_map(|meta| match meta.kind {
                Kind::Data { offset_next, .. } => Some(offset_next),
                Kind::Internal { .. } => None,
            })
            .unwrap_or(self.anchor.offset)
    }

    /// The Kafka offset after the last data entry.
    pub fn offset_next(&self) -> i64 {
        self.offset_at(self.last_index() + 1)
    }

    /// The last index whose entry is data ending at or below `offset`, or the anchor's:
    /// the Raft index a Kafka offset has reached.
    pub fn data_index_through(&self, offset: i64) -> u64 {
        let mut index = self.anchor.index;
        for (at, meta) in self.entries.iter().enumerate() {
            if let Kind::Data { offset_next, .. } = meta.kind {
                if offset_next > offset {
                    break;
                }
                index = self.first_index() + at as u64;
            }
        }
        index
    }

    /// Adds the entry at `index`, which must be the next one.
    pub fn push(&mut self, index: u64, meta: Meta) {
        assert_eq!(index, self.last_index() + 1, "entries are added in order");
        if let Kind::Data {
            offset_first,
            offset_next,
            bytes,
        } = &meta.kind
        {
            assert!(
                *offset_first == self.offset_next() && offset_next > offset_first,
                "data entry {index} at offsets {offset_first}..{offset_next} does not \
                 continue the window at {}",
                self.offset_next()
            );
            self.cached_bytes += bytes.as_ref().map_or(0, |b| b.len() as u64);
        }
        self.entries.push_back(meta);
    }

    /// Adds an internal entry read from the journal.
    pub fn push_internal(&mut self, internal: &Internal) {
        assert_eq!(
            internal.offset,
            self.offset_next(),
            "internal entry {} sits at the window's offset end",
            internal.index
        );
        self.push(
            internal.index,
            Meta {
                term: internal.term,
                kind: Kind::Internal {
                    entry_type: internal.entry_type,
                    context: internal.context.clone(),
                    data: internal.data.clone(),
                },
            },
        );
    }

    /// Drops every entry at `index` or after.
    pub fn truncate_from(&mut self, index: u64) {
        assert!(index > self.anchor.index, "the anchor is never truncated");
        while self.last_index() >= index {
            if let Some(Meta {
                kind: Kind::Data {
                    bytes: Some(bytes), ..
                },
                ..
            }) = self.entries.pop_back()
            {
                self.cached_bytes -= bytes.len() as u64;
            }
        }
    }

    /// Moves the anchor forward to `anchor.index`, dropping the entries up to it: the
    /// window then starts after it. `anchor` must describe an entry of the window as the
    /// window does (its term, and where the data after it starts).
    pub fn compact_to(&mut self, anchor: Anchor) {
        assert!(
            anchor.index >= self.anchor.index && anchor.index <= self.last_index(),
            "anchor {} outside the window {}..={}",
            anchor.index,
            self.anchor.index,
            self.last_index()
        );
        assert_eq!(
            self.term(anchor.index),
            Some(anchor.term),
            "the anchor's term"
        );
        assert_eq!(
            self.offset_at(anchor.index + 1),
            anchor.offset,
            "the anchor's offset"
        );
        while self.anchor.index < anchor.index {
            if let Some(Meta {
                kind: Kind::Data {
                    bytes: Some(bytes), ..
                },
                ..
            }) = self.entries.pop_front()
            {
                self.cached_bytes -= bytes.len() as u64;
            }
            self.anchor.index += 1;
        }
        self.anchor = anchor;
    }

    /// The entry at `index` as Raft knows it; `None` if it is a data entry whose bytes are
    /// not cached (or outside the window).
    pub fn entry(&self, index: u64) -> Option<Entry> {
        let meta = self.get(index)?;
        let mut entry = Entry {
            index,
            term: meta.term,
            ..Entry::default()
        };
        match &meta.kind {
            Kind::Data { bytes, .. } => entry.data = bytes.clone()?,
            Kind::Internal {
                entry_type,
                context,
                data,
            } => {
                entry.set_entry_type(*entry_type);
                entry.context = context.clone();
                entry.data = data.clone();
            }
        }
        Some(entry)
    }

    /// Caches `bytes` as the data of `index`, if it is an uncached data entry.
    pub fn fill(&mut self, index: u64, data: Bytes) {
        let Some(position) = index.checked_sub(self.first_index()) else {
            return;
        };
        if let Some(Meta {
            kind: Kind::Data { bytes, .. },
            ..
        }) = self.entries.get_mut(position as usize)
        {
            if bytes.is_none() {
                self.cached_bytes += data.len() as u64;
                *bytes = Some(data);
            }
        }
    }

    /// Drops the cached bytes of the oldest entries below `keep_from` while more than
    /// `budget_bytes` are cached.
    pub fn evict(&mut self, keep_from: u64, budget_bytes: u64) {
        let first = self.first_index();
        for (at, meta) in self.entries.iter_mut().enumerate() {
            if self.cached_bytes <= budget_bytes || first + at as u64 >= keep_from {
                break;
            }
            if let Kind::Data { bytes, .. } = &mut meta.kind {
                if let Some(bytes) = bytes.take() {
                    self.cached_bytes -= bytes.len() as u64;
                }
            }
        }
    }

    pub fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(term: u64, offset_first: i64, offset_next: i64, len: usize) -> Meta {
        Meta {
            term,
            kind: Kind::Data {
                offset_first,
                offset_next,
                bytes: Some(Bytes::from(vec![7; len])),
            },
        }
    }

    fn noop(term: u64) -> Meta {
        Meta {
            term,
            kind: Kind::Internal {
                entry_type: EntryType::EntryNormal,
                context: Bytes::new(),
                data: Bytes::new(),
            },
        }
    }

    /// Anchor at index 4 / offset 100; then data 5 [100,110), no-op 6, data 7 [110,115),
    /// no-op 8.
    fn table() -> EntryTable {
        let mut table = EntryTable::new(Anchor {
            index: 4,
            term: 1,
            offset: 100,
        });
        table.push(5, data(1, 100, 110, 10));
        table.push(6, noop(2));
        table.push(7, data(2, 110, 115, 20));
        table.push(8, noop(3));
        table
    }

    #[test]
    fn indexes_terms_and_offsets_map_both_ways() {
        let table = table();
        assert_eq!((table.first_index(), table.last_index()), (5, 8));
        let terms: Vec<_> = (3..=9).map(|index| table.term(index)).collect();
        assert_eq!(
            terms,
            [None, Some(1), Some(1), Some(2), Some(2), Some(3), None]
        );
        let offsets: Vec<_> = (5..=9).map(|index| table.offset_at(index)).collect();
        assert_eq!(offsets, [100, 110, 110, 115, 115]);
        assert_eq!(table.offset_next(), 115);
        let reached: Vec<_> = [99, 100, 109, 110, 114, 115, 200]
            .map(|offset| table.data_index_through(offset))
            .to_vec();
        assert_eq!(reached, [4, 4, 4, 5, 5, 7, 7]);
    }

    #[test]
    fn truncation_evicts_and_refills_keep_the_cached_byte_count() {
        let mut table = table();
        assert_eq!(table.cached_bytes(), 30);
        table.evict(7, 25);
        assert!(table.entry(5).is_none(), "the oldest data left the cache");
        assert_eq!(table.entry(7).unwrap().data.len(), 20);
        assert_eq!(table.cached_bytes(), 20);
        table.fill(5, Bytes::from(vec![1; 10]));
        assert_eq!(table.cached_bytes(), 30);
        table.evict(5, 0);
        assert_eq!(table.cached_bytes(), 30, "entries from keep_from on stay");
        table.truncate_from(7);
        assert_eq!((table.last_index(), table.offset_next()), (6, 110));
        assert_eq!(table.cached_bytes(), 10);
        table.push(7, data(4, 110, 111, 1));
        assert_eq!(table.term(7), Some(4));
    }

    #[test]
    fn compaction_moves_the_anchor_and_keeps_what_follows() {
        let mut table = table();
        let anchor = Anchor {
            index: 6,
            term: 2,
            offset: 110,
        };
        table.compact_to(anchor);
        assert_eq!(table.anchor(), anchor);
        assert_eq!((table.first_index(), table.last_index()), (7, 8));
        assert_eq!((table.term(6), table.term(5)), (Some(2), None));
        assert_eq!(table.entry(7).unwrap().data.len(), 20);
        assert_eq!(
            table.cached_bytes(),
            20,
            "the dropped entry's bytes are uncounted"
        );
        assert_eq!(table.offset_at(7), 110);
        // Up to the last entry: the window is then empty after it.
        let last = Anchor {
            index: 8,
            term: 3,
            offset: 115,
        };
        table.compact_to(last);
        assert_eq!((table.first_index(), table.last_index()), (9, 8));
        assert_eq!((table.cached_bytes(), table.offset_next()), (0, 115));
        table.push(9, data(3, 115, 116, 1));
        assert_eq!(table.offset_at(9), 115);
    }

    #[test]
    #[should_panic(expected = "the anchor's offset")]
    fn an_anchor_that_misplaces_the_data_is_a_bug() {
        table().compact_to(Anchor {
            index: 5,
            term: 1,
            offset: 111,
        });
    }

    #[test]
    #[should_panic(expected = "does not continue the window")]
    fn a_data_entry_that_leaves_a_gap_is_a_bug() {
        let mut table = table();
        table.push(9, data(3, 116, 120, 1));
    }
}
