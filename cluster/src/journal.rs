//! The Raft journal: what a partition's Raft log holds besides its record batches.
//!
//! A replicated partition's Raft log is its partition log (see `log.rs`): a data entry is
//! one record batch, kept only in the segments. What the segments cannot hold lives here,
//! in one append-only file per partition, `raft.journal`:
//! - **internal entries** — the empty entry a new leader appends and configuration
//!   changes — with their Raft index, term, and the Kafka offset they sit at (the log end
//!   when they were appended), so they take no offset and consumers never see them;
//! - the **anchor**: the last Raft index (and its term) below the partition's window of
//!   entries, and the Kafka offset where the entry after it starts;
//! - **truncations**: "every entry from index N on is gone";
//! - the **hard state** (term, vote, commit) and the **configuration** (voters, learners);
//! - **snapshots** installed from a leader: the new anchor, and the offset from which the
//!   partition log must be cut and filled up to the anchor's offset with the leader's
//!   batches (`fill_from`). The fill is done once a later anchor record says so;
//! - the **log start** the group decided (DeleteRecords, a compaction of
//!   `__consumer_offsets`): recorded when the entry deciding it is applied, so a crash
//!   before the partition log's start moved cannot lose it (raft-rs does not apply an
//!   entry twice).
//!
//! Each record is framed and checksummed on its own (little-endian):
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    4 | CRC-32C of bytes 4 .. 9 + body length                      |
//! |      4 |    4 | body length, at most `JOURNAL_RECORD_BYTES_MAX`             |
//! |      8 |    1 | kind: 1 anchor, 2 internal entry, 3 truncation, 4 hard state, 5 configuration, 6 snapshot, 7 log start |
//! |      9 |    … | body, by kind (below)                                       |
//!
//! Bodies: anchor `index u64, term u64, offset i64`; internal entry `index u64, term u64,
//! offset i64, entry type u8, context length u32, context, data`; truncation `index u64`;
//! hard state `term u64, vote u64, commit u64`; configuration: raft-rs's `ConfState` in
//! its protobuf encoding; snapshot `index u64, term u64, offset i64, fill_from i64`; log
//! start `offset i64` (the latest, or the highest, counts).
//!
//! Reading keeps the longest prefix of whole records whose checksums hold: a record is
//! made durable (fdatasync) before anything relies on it, so what follows a bad record was
//! never relied on, and opening cuts it off. Later records override earlier ones: an
//! internal entry or truncation at index N drops every internal entry at N or after, an
//! anchor at N every one at N or before, a snapshot every one. The file is rewritten (to a temporary file,
//! fdatasynced, renamed over it, directory synced) with only what is live once it grows
//! past `JOURNAL_BYTES_MAX`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, EntryType, HardState};
use ringlog_engine::storage::{OpenFlags, Storage, StorageFile};

use crate::limits::{JOURNAL_BYTES_MAX, JOURNAL_RECORD_BYTES_MAX};

const FILE_NAME: &str = ringlog_engine::log::RAFT_JOURNAL_FILE;
const TEMPORARY_NAME: &str = "raft.journal.tmp";

const CRC_AT: usize = 0;
const LEN_AT: usize = CRC_AT + 4;
const KIND_AT: usize = LEN_AT + 4;
const BODY_AT: usize = KIND_AT + 1;
const _: () = assert!(BODY_AT == 9);

const KIND_ANCHOR: u8 = 1;
const KIND_INTERNAL: u8 = 2;
const KIND_TRUNCATION: u8 = 3;
const KIND_HARD_STATE: u8 = 4;
const KIND_CONF_STATE: u8 = 5;
const KIND_SNAPSHOT: u8 = 6;
const KIND_LOG_START: u8 = 7;

/// The last entry below a partition's Raft window, and where the entry after it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Anchor {
    pub index: u64,
    pub term: u64,
    /// The Kafka offset of the first data entry after `index`.
    pub offset: i64,
}

/// An entry of Raft's own, kept out of the segments.
#[derive(Debug, Clone, PartialEq)]
pub struct Internal {
    pub index: u64,
    pub term: u64,
    /// The log end when it was appended: it follows every batch below this offset and
    /// precedes every batch at or after it.
    pub offset: i64,
    pub entry_type: EntryType,
    pub context: Bytes,
    pub data: Bytes,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Anchor(Anchor),
    Internal(Internal),
    Truncation {
        index: u64,
    },
    HardState(HardState),
    ConfState(ConfState),
    /// A leader's snapshot was taken: `anchor` is the new anchor, and the partition log is
    /// to be cut at `fill_from` and filled with the leader's batches up to `anchor.offset`.
    Snapshot {
        anchor: Anchor,
        fill_from: i64,
    },
    /// The group decided that the partition's log starts at `offset` (at the latest).
    LogStart {
        offset: i64,
    },
}

/// What the journal holds once its records are applied in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalState {
    pub anchor: Anchor,
    pub internals: BTreeMap<u64, Internal>,
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// Set while a snapshot's fill is not done: the offset the partition log is to be cut
    /// at before it is filled up to the anchor's offset.
    pub fill_from: Option<i64>,
    /// The highest log start the group decided (0: none).
    pub log_start: i64,
}

impl JournalState {
    /// Applies `record` as reading the journal does.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Anchor(anchor) => {
                self.anchor = *anchor;
                self.internals = self.internals.split_off(&(anchor.index + 1));
                self.fill_from = None;
            }
            Record::Snapshot { anchor, fill_from } => {
                self.anchor = *anchor;
                self.internals.clear();
                self.fill_from = Some(*fill_from);
            }
            Record::Internal(internal) => {
                self.internals.split_off(&internal.index);
                self.internals.insert(internal.index, internal.clone());
            }
            Record::Truncation { index } => {
                self.internals.split_off(index);
            }
            Record::HardState(hard_state) => self.hard_state = hard_state.clone(),
            Record::ConfState(conf_state) => self.conf_state = conf_state.clone(),
            Record::LogStart { offset } => self.log_start = self.log_start.max(*offset),
        }
    }

    /// The records that rebuild this state in a fresh journal.
    fn records(&self) -> Vec<Record> {
        let anchor = match self.fill_from {
            Some(fill_from) => Record::Snapshot {
                anchor: self.anchor,
                fill_from,
            },
            None => Record::Anchor(self.anchor),
        };
        let mut records = vec![
            anchor,
            Record::HardState(self.hard_state.clone()),
            Record::ConfState(self.conf_state.clone()),
        ];
        if self.log_start > 0 {
            records.push(Record::LogStart {
                offset: self.log_start,
            });
        }
        records.extend(self.internals.values().cloned().map(Record::Internal));
        records
    }
}

/// Errors of the journal. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("raft journal {path}: {operation} failed")]
    Io {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    /// A record to write is larger than `JOURNAL_RECORD_BYTES_MAX`.
    #[error("raft journal {path}: a record of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge {
        path: PathBuf,
        len: usize,
        max: usize,
    },
}

/// A partition's open Raft journal.
pub struct Journal<S: Storage> {
    storage: S,
    dir: PathBuf,
    file: S::File,
    size_bytes: u64,
    /// The state its records make, kept to rewrite the file when it grows too long.
    state: JournalState,
}

impl<S: Storage> Journal<S> {
    /// Opens (creating if missing) the journal in `dir` and reads its state, cutting off a
    /// torn or damaged tail.
    pub async fn open(storage: S, dir: &Path) -> Result<(Journal<S>, JournalState), JournalError> {
        let path = dir.join(FILE_NAME);
        let io = |operation| {
            let path = path.clone();
            move |source| JournalError::Io {
                path,
                operation,
                source,
            }
        };
        let file = storage
            .open(&path, OpenFlags::WRITE)
            .await
            .map_err(io("open"))?;
        let size = file.size().await.map_err(io("size"))?;
        if size == 0 {
            // The file may have just been created: its name is durable only once the
            // directory is synced, and a journal that vanished in a power loss would
            // forget votes.
            storage.sync_dir(dir).await.map_err(io("sync directory"))?;
        }
        let bytes = file
            .read_at(0, usize::try_from(size).unwrap_or(usize::MAX))
            .await
            .map_err(io("read"))?;
        let (records, valid_bytes) = decode_all(&bytes);
        if valid_bytes < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                valid_bytes,
                size_bytes = bytes.len(),
                "raft journal has a torn or damaged tail; cutting it off"
            );
            file.set_len(valid_bytes as u64)
                .await
                .map_err(io("truncate"))?;
            file.sync_data().await.map_err(io("fdatasync"))?;
        }
        let mut state = JournalState::default();
        for record in &records {
            state.apply(record);
        }
        let journal = Journal {
            storage,
            dir: dir.to_path_buf(),
            file,
            size_bytes: valid_bytes as u64,
            state: state.clone(),
        };
        Ok((journal, state))
    }

    /// Appends `records`, durable on return when `sync` is set. Rewrites the file with only
    /// what is live first if it has grown past `JOURNAL_BYTES_MAX`.
    pub async fn append(&mut self, records: &[Record], sync: bool) -> Result<(), JournalError> {
        let bytes = self.encode_all(records)?;
        if self.size_bytes + bytes.len() as u64 > JOURNAL_BYTES_MAX {
            self.rewrite().await?;
        }
        let len = bytes.len() as u64;
        let (written, _) = self.file.write_at(vec![bytes], self.size_bytes, sync).await;
        written.map_err(|source| self.error("write", source))?;
        self.size_bytes += len;
        for record in records {
            self.state.apply(record);
        }
        Ok(())
    }

    /// Makes every record appended so far durable.
    pub async fn sync(&mut self) -> Result<(), JournalError> {
        (self.file.sync_data().await).map_err(|source| self.error("fdatasync", source))
    }

    /// Replaces the file with one holding only the live state: written and fdatasynced
    /// under a temporary name, renamed over the journal, the directory synced.
    async fn rewrite(&mut self) -> Result<(), JournalError> {
        let bytes = self.encode_all(&self.state.records())?;
        let temporary = self.dir.join(TEMPORARY_NAME);
        let file = self
            .storage
            .open(&temporary, OpenFlags::WRITE)
            .await
            .map_err(|source| self.error("open", source))?;
        file.set_len(0)
            .await
            .map_err(|source| self.error("truncate", source))?;
        let len = bytes.len() as u64;
        let (written, _) = file.write_at(vec![bytes], 0, true).await;
        written.map_err(|source| self.error("write", source))?;
        self.storage
            .rename(&temporary, &self.dir.join(FILE_NAME))
            .await
            .map_err(|source| self.error("rename", source))?;
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(|source| self.error("sync directory", source))?;
        self.file = file;
        self.size_bytes = len;
        Ok(())
    }

    /// The framed bytes of `records`, or the error naming the first one over the limit.
    fn encode_all(&self, records: &[Record]) -> Result<Vec<u8>, JournalError> {
        let mut bytes = Vec::new();
        for record in records {
            encode(record, &mut bytes).map_err(|len| JournalError::RecordTooLarge {
                path: self.dir.join(FILE_NAME),
                len,
                max: JOURNAL_RECORD_BYTES_MAX,
            })?;
        }
        Ok(bytes)
    }

    /// The journal's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn error(&self, operation: &'static str, source: io::Error) -> JournalError {
        JournalError::Io {
            path: self.dir.join(FILE_NAME),
            operation,
            source,
        }
    }
}

/// Appends `record`'s framed bytes to `out`; the body's length if it is over the limit.
fn encode(record: &Record, out: &mut Vec<u8>) -> Result<(), usize> {
    let mut body = Vec::new();
    let kind = match record {
        Record::Anchor(anchor) => {
            body.extend_from_slice(&anchor.index.to_le_bytes());
            body.extend_from_slice(&anchor.term.to_le_bytes());
            body.extend_from_slice(&anchor.offset.to_le_bytes());
            KIND_ANCHOR
        }
        Record::Internal(internal) => {
            body.extend_from_slice(&internal.index.to_le_bytes());
            body.extend_from_slice(&internal.term.to_le_bytes());
            body.extend_from_slice(&internal.offset.to_le_bytes());
            body.push(internal.entry_type as u8);
            body.extend_from_slice(&(internal.context.len() as u32).to_le_bytes());
            body.extend_from_slice(&internal.context);
            body.extend_from_slice(&internal.data);
            KIND_INTERNAL
        }
        Record::Truncation { index } => {
            body.extend_from_slice(&index.to_le_bytes());
            KIND_TRUNCATION
        }
        Record::HardState(hard_state) => {
            body.extend_from_slice(&hard_state.term.to_le_bytes());
            body.extend_from_slice(&hard_state.vote.to_le_bytes());
            body.extend_from_slice(&hard_state.commit.to_le_bytes());
            KIND_HARD_STATE
        }
        Record::ConfState(conf_state) => {
            let Ok(encoded) = conf_state.write_to_bytes() else {
                unreachable!("a ConfState has no required field to miss");
            };
            body = encoded;
            KIND_CONF_STATE
        }
        Record::Snapshot { anchor, fill_from } => {
            body.extend_from_slice(&anchor.index.to_le_bytes());
            body.extend_from_slice(&anchor.term.to_le_bytes());
            body.extend_from_slice(&anchor.offset.to_le_bytes());
            body.extend_from_slice(&fill_from.to_le_bytes());
            KIND_SNAPSHOT
        }
        Record::LogStart { offset } => {
            body.extend_from_slice(&offset.to_le_bytes());
            KIND_LOG_START
        }
    };
    if body.len() > JOURNAL_RECORD_BYTES_MAX {
        return Err(body.len());
    }
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out[start + LEN_AT..]);
    out[start + CRC_AT..start + LEN_AT].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The records of the longest valid prefix of `bytes`, and its length.
pub(crate) fn decode_all(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((record, len)) = decode(&bytes[at..]) {
        records.push(record);
        at += len;
    }
    (records, at)
}

/// The record at the front of `bytes` and its framed length, if it is whole and valid.
fn decode(bytes: &[u8]) -> Option<(Record, usize)> {
    let header = bytes.get(..BODY_AT)?;
    let stored = u32::from_le_bytes(header[CRC_AT..LEN_AT].try_into().ok()?);
    let len = u32::from_le_bytes(header[LEN_AT..KIND_AT].try_into().ok()?) as usize;
    if len > JOURNAL_RECORD_BYTES_MAX {
        return None;
    }
    let framed = bytes.get(..BODY_AT + len)?;
    if crc32c::crc32c(&framed[LEN_AT..]) != stored {
        return None;
    }
    let body = &framed[BODY_AT..];
    let mut fields = Fields(body);
    let record = match header[KIND_AT] {
        KIND_ANCHOR => Record::Anchor(Anchor {
            index: fields.u64()?,
            term: fields.u64()?,
            offset: fields.u64()? as i64,
        }),
        KIND_INTERNAL => {
            let index = fields.u64()?;
            let term = fields.u64()?;
            let offset = fields.u64()? as i64;
            let entry_type = match fields.take(1)?[0] {
                0 => EntryType::EntryNormal,
                1 => EntryType::EntryConfChange,
                2 => EntryType::EntryConfChangeV2,
                _ => return None,
            };
            let context_len = u32::from_le_bytes(fields.take(4)?.try_into().ok()?) as usize;
            let context = Bytes::copy_from_slice(fields.take(context_len)?);
            let data = Bytes::copy_from_slice(fields.0);
            Record::Internal(Internal {
                index,
                term,
                offset,
                entry_type,
                context,
                data,
            })
        }
        KIND_TRUNCATION => Record::Truncation {
            index: fields.u64()?,
        },
        KIND_HARD_STATE => Record::HardState(HardState {
            term: fields.u64()?,
            vote: fields.u64()?,
            commit: fields.u64()?,
            ..HardState::default()
        }),
        KIND_CONF_STATE => Record::ConfState(ConfState::parse_from_bytes(body).ok()?),
        KIND_SNAPSHOT => Record::Snapshot {
            anchor: Anchor {
                index: fields.u64()?,
                term: fields.u64()?,
                offset: fields.u64()? as i64,
            },
            fill_from: fields.u64()? as i64,
        },
        KIND_LOG_START => Record::LogStart {
            offset: fields.u64()? as i64,
        },
        _ => return None,
    };
    Some((record, BODY_AT + len))
}

/// A cursor over a record's body.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (taken, rest) = (self.0.get(..len)?, self.0.get(len..)?);
        self.0 = rest;
        Some(taken)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_engine::rt;
    use ringlog_engine::storage::DiskStorage;

    fn internal(index: u64, term: u64, offset: i64) -> Record {
        Record::Internal(Internal {
            index,
            term,
            offset,
            entry_type: EntryType::EntryNormal,
            context: Bytes::new(),
            data: Bytes::new(),
        })
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> Record {
        Record::HardState(HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        })
    }

    fn sample() -> Vec<Record> {
        let conf_state = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        vec![
            Record::ConfState(conf_state),
            Record::Anchor(Anchor {
                index: 4,
                term: 1,
                offset: 100,
            }),
            internal(5, 2, 100),
            hard_state(2, 1, 3),
            internal(9, 3, 180),
            Record::Internal(Internal {
                index: 12,
                term: 3,
                offset: 200,
                entry_type: EntryType::EntryConfChangeV2,
                context: Bytes::from_static(b"ctx"),
                data: Bytes::from_static(b"change"),
            }),
            Record::Truncation { index: 12 },
            hard_state(4, 2, 8),
            Record::Snapshot {
                anchor: Anchor {
                    index: 30,
                    term: 4,
                    offset: 500,
                },
                fill_from: 180,
            },
            internal(31, 4, 500),
            Record::LogStart { offset: 450 },
        ]
    }

    #[test]
    fn records_read_back_as_written_and_later_ones_override_earlier() {
        let mut bytes = Vec::new();
        for record in sample() {
            encode(&record, &mut bytes).unwrap();
        }
        let (records, valid) = decode_all(&bytes);
        assert_eq!((records, valid), (sample(), bytes.len()));
        let mut state = JournalState::default();
        for record in &sample() {
            state.apply(record);
        }
        // The snapshot dropped every internal entry before it and left a fill to do.
        assert_eq!((state.anchor.index, state.anchor.offset), (30, 500));
        assert_eq!(state.fill_from, Some(180));
        assert_eq!(state.internals.keys().copied().collect::<Vec<_>>(), [31]);
        assert_eq!((state.hard_state.term, state.hard_state.commit), (4, 8));
        assert_eq!(state.conf_state.voters, [1, 2, 3]);
        assert_eq!(state.log_start, 450);
        // A log start never goes back.
        state.apply(&Record::LogStart { offset: 300 });
        assert_eq!(state.log_start, 450);
        // A rewrite keeps the fill to do and the log start.
        let mut rebuilt = JournalState::default();
        for record in &state.records() {
            rebuilt.apply(record);
        }
        assert_eq!(rebuilt, state);
        // An anchor says the fill is done.
        let done = Anchor {
            index: 30,
            term: 4,
            offset: 500,
        };
        state.apply(&Record::Anchor(done));
        assert_eq!(state.fill_from, None);

        let mut state = JournalState::default();
        for record in &sample()[..8] {
            state.apply(record);
        }
        assert_eq!(state.anchor.offset, 100);
        assert_eq!(state.internals.keys().copied().collect::<Vec<_>>(), [5, 9]);
        state.apply(&internal(7, 4, 150));
        assert_eq!(state.internals.keys().copied().collect::<Vec<_>>(), [5, 7]);
        state.apply(&Record::Anchor(Anchor {
            index: 5,
            term: 2,
            offset: 100,
        }));
        assert_eq!(state.internals.keys().copied().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn any_cut_or_flipped_byte_keeps_exactly_the_whole_records_before_it() {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for record in sample() {
            encode(&record, &mut bytes).unwrap();
            ends.push(bytes.len());
        }
        let whole_before = |at: usize| ends.iter().filter(|&&end| end <= at).count();
        for cut in 0..bytes.len() {
            let (records, valid) = decode_all(&bytes[..cut]);
            assert_eq!(records.len(), whole_before(cut), "cut at {cut}");
            assert_eq!(
                valid,
                ends.get(records.len().wrapping_sub(1)).map_or(0, |e| *e)
            );
        }
        for flip in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[flip] ^= 0x40;
            let (records, _) = decode_all(&damaged);
            let record_of_flip = ends.iter().filter(|&&end| end <= flip).count();
            assert_eq!(records.len(), record_of_flip, "flip at {flip}");
        }
    }

    #[test]
    fn a_reopened_journal_holds_what_was_appended_and_survives_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        rt::block_on(async {
            let (mut journal, state) = Journal::open(DiskStorage, dir.path()).await.unwrap();
            assert_eq!(state, JournalState::default());
            journal.append(&sample(), true).await.unwrap();
            // Enough hard states to pass the size limit several times over.
            let each = {
                let mut bytes = Vec::new();
                encode(&hard_state(0, 0, 0), &mut bytes).unwrap();
                bytes.len() as u64
            };
            let appends = 3 * JOURNAL_BYTES_MAX / each;
            for commit in 0..appends {
                journal
                    .append(&[hard_state(9, 3, commit)], false)
                    .await
                    .unwrap();
            }
            assert!(journal.size_bytes() <= JOURNAL_BYTES_MAX);
            journal.append(&[internal(32, 9, 500)], true).await.unwrap();
            let expected = journal.state.clone();
            drop(journal);
            let (_, state) = Journal::open(DiskStorage, dir.path()).await.unwrap();
            assert_eq!(state, expected);
            assert_eq!(state.hard_state.commit, appends - 1);
            assert_eq!(
                state.internals.keys().copied().collect::<Vec<_>>(),
                [31, 32]
            );
        })
        .unwrap();
    }
}
