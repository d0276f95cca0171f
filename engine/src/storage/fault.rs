//! An in-memory [`Storage`] for crash and fault tests: it keeps what was written and what
//! was made durable apart, and can fail, tear and crash on command.
//!
//! Model. A file is an inode with two images: `written` (what reads see, the page cache)
//! and `durable` (what survives power loss), plus the byte ranges made dirty (written, or
//! grown by `allocate`, `set_len` or a write past the end) since its last sync. A sync
//! (`sync_data`, or `write_at` with `sync_after`) writes the dirty bytes and the size
//! through to `durable`. Names live in directories, each with its current
//! entries and its durable entries; `sync_dir` makes the current ones durable, so a file
//! created, renamed or removed since the last `sync_dir` of its directory is undone by a
//! crash. Open handles refer to the inode, not the name, as on Unix: a handle keeps working
//! after its file is renamed or removed. Directories themselves are durable as soon as
//! `create_dir_all` returns (a simplification: the log never depends on losing one).
//!
//! Time. By default every method completes without suspending. With seeded latency
//! ([`FaultStorage::with_latency`]) each operation takes a pseudo-random number of executor
//! turns: a mutating operation passes the fault gate (and is counted) when it is issued and
//! takes effect when it completes, so operations issued together complete out of order and
//! writes can be in flight while a sync runs. A sync covers exactly the writes completed
//! before it was issued: it takes the dirty bytes and the size at issue and makes them
//! durable at completion, together with every sync of the file issued before it (a sync
//! never returns before the writeback earlier ones started, so the durable image never
//! goes back to older bytes). An operation in flight when the process dies fails with EIO
//! and changes nothing. Syncs can also be held (below): a held
//! `sync_data` waits, before it is issued, until they are released.
//!
//! Faults it can inject:
//! - **Fail the n-th mutating operation** ([`FaultStorage::fail_nth`]): it returns the
//!   given errno (EIO, ENOSPC, ...) and changes nothing. Mutating operations, counted by
//!   [`FaultStorage::op_count`], are every call of `write_at`, `sync_data`, `allocate`,
//!   `set_len`, `open` with `create` set, `rename`, `remove_file`, `create_dir_all` and
//!   `sync_dir`, whether or not it then succeeds.
//! - **Lose a sync** ([`FaultStorage::fail_nth_after_write`], the fsyncgate case): the
//!   operation's bytes reach `written` but it fails with EIO, and the file's dirty bytes
//!   are marked clean without reaching `durable`, as Linux does after a writeback error. A
//!   later sync succeeds without persisting them, so a caller that retries and then
//!   acknowledges is caught by the next crash.
//! - **Crash at a sync point** ([`FaultStorage::crash_at_sync`]): after `k` more syncs the
//!   process is dead: the next sync and every mutating operation after it fail with EIO and
//!   change nothing, except that the fatal `write_at` still lands its bytes (unsynced).
//!   Sync points are `sync_data`, `write_at` with `sync_after`, and `sync_dir`. Reads,
//!   `size`, `list_dir` and `open` without `create` keep working for the dead process.
//! - **Power loss** ([`FaultStorage::crash_with`]): a new storage holding, for every file
//!   reachable through a durable name, its durable bytes overlaid with the unsynced bytes
//!   of a seeded prefix of its dirty sectors (in offset order), the last surviving sector
//!   possibly torn (its unsynced bytes new up to a point, garbage after). A torn write
//!   garbles only bytes it changes, so durable bytes survive intact even when rewritten
//!   with the same value (an O_DIRECT tail-block rewrite; SQLite's "powersafe overwrite").
//!   Unsynced truncations are undone. [`FaultStorage::crash_clean`] keeps exactly the
//!   durable state.
//! - **A small disk** ([`FaultStorage::limit_capacity`]): the files together hold at most
//!   this many bytes; a write, `allocate` or `set_len` that would grow a file past it fails
//!   with ENOSPC and changes nothing. [`FaultStorage::free_bytes`] says what is left, as
//!   statvfs would. A removed or replaced file's bytes are free at once, even while a
//!   handle still holds it (a simplification), and whatever it then grows is not counted.
//! - **A short write** ([`FaultStorage::fail_nth_partially`]): the n-th mutating
//!   operation, if a write, lands only its first bytes (as many as asked, at most all)
//!   and then fails with the given errno, as a `pwritev` that wrote part of its buffers
//!   and whose continuation hit a full disk; any other operation just fails.
//! - **Reads that return wrong data** ([`FaultStorage::corrupt_reads`]): reads of a chosen
//!   byte range of a file come back with every bit flipped, without an error, while the
//!   file itself is unchanged (a bad cable or controller; bit rot as the reader sees it).
//! - **Reads that fail** ([`FaultStorage::fail_reads`]): every read of a chosen file fails
//!   with EIO (an unreadable sector), while writes to it still work.
//! - **Hold syncs** ([`FaultStorage::hold_syncs`]): every `sync_data` called from then on
//!   (the fdatasync `write_then_sync` leaves in flight among them) waits, before it
//!   counts or changes anything, until [`FaultStorage::release_syncs`]; then it runs as
//!   usual. A test sees writes completed with their syncs outstanding, for as long as it
//!   likes. `write_at` with `sync_after` and `sync_dir` are not held.
//! - **O_DIRECT misuse**: writes to a file opened `direct` must be 512-byte aligned in
//!   offset, length and memory, or fail with EINVAL, as the kernel would.
//!
//! Like the kernel: opening a missing file without `create` is ENOENT, writing to a file
//! opened read-only is EBADF, and a write past the end leaves a hole of zeros.
//!
//! A crash test runs its workload once to learn [`FaultStorage::sync_count`], then once per
//! `k` in `0..=count` on a fresh storage with `crash_at_sync(k)`, recording what was
//! acknowledged, and recovers from `crash_with(seed)`: everything acknowledged must be there.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::{OpenFlags, Storage, StorageFile};
use crate::rt::{self, IoBuf, PooledBuf};
use crate::testing::Rng;

/// The unit a crash keeps or tears, and the alignment O_DIRECT writes need.
pub const SECTOR_BYTES: u64 = 512;

/// What an injected fault does to the operation it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with this errno and changes nothing.
    Errno(i32),
    /// fsyncgate: a `write_at` lands its bytes, then it (or a `sync_data`) fails with EIO
    /// and the file's dirty bytes are dropped from the next sync. Any other operation
    /// fails with EIO and changes nothing.
    SyncLost,
    /// A short write: a write lands its first `landed` bytes (at most all), unsynced, then
    /// fails with `errno`. Any other operation fails with `errno` and changes nothing.
    Partial { landed: u64, errno: i32 },
}

/// Counters of what a [`FaultStorage`] was asked to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Calls of mutating operations (the count `fail_nth` indexes).
    pub ops_mutating: u64,
    /// Sync points passed: syncs the gate let through when they were issued (with latency,
    /// the last may still be in flight).
    pub syncs: u64,
    /// Mutating operations failed by an injected fault or by a dead process.
    pub ops_failed: u64,
    /// Bytes `write_at` landed in `written`.
    pub bytes_written: u64,
    /// Times a write and a sync (to any files) were in flight together (under latency): how
    /// often a workload exercised syncs that must not cover writes still running.
    pub sync_write_overlaps: u64,
    /// Operations that completed before one issued earlier (under latency).
    pub completions_reordered: u64,
}

/// An in-memory storage whose faults tests control; clones share one state.
#[derive(Debug, Clone, Default)]
pub struct FaultStorage {
    state: Rc<RefCell<State>>,
}

/// A file of [`FaultStorage`]: a handle on an inode.
#[derive(Debug, Clone)]
pub struct FaultFile {
    storage: FaultStorage,
    inode: InodeId,
    writable: bool,
    direct: bool,
}

type InodeId = u64;

#[derive(Debug, Clone, Default)]
struct Inode {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges written or grown since the last sync was issued: sorted, disjoint, not
    /// adjacent, within `written`.
    dirty: Vec<Range<u64>>,
    /// Syncs issued and not yet completed, oldest first: what each will make durable.
    syncing: Vec<SyncSnapshot>,
    sync_id_next: u64,
    /// No name refers to the inode any more: its bytes no longer count as used.
    unnamed: bool,
}

/// What a sync makes durable when it completes: the dirty bytes and the size as they were
/// when it was issued, so a write completing while it runs is not covered by it.
#[derive(Debug, Clone)]
struct SyncSnapshot {
    id: u64,
    pieces: Vec<(usize, Vec<u8>)>,
    len: usize,
}

#[derive(Debug, Clone, Default)]
struct Dir {
    names: BTreeMap<String, InodeId>,
    names_durable: BTreeMap<String, InodeId>,
}

#[derive(Debug, Default)]
struct State {
    inodes: BTreeMap<InodeId, Inode>,
    inode_next: InodeId,
    dirs: BTreeMap<PathBuf, Dir>,
    /// Injected faults by the (1-based) index of the mutating operation they hit.
    faults: BTreeMap<u64, Fault>,
    /// Syncs allowed to take effect before the process dies.
    syncs_limit: Option<u64>,
    dead: bool,
    stats: FaultStats,
    seed: u64,
    /// A nearly full disk: `allocate` calls for more bytes than this fail with ENOSPC.
    allocate_len_max: Option<u64>,
    /// A small disk: the files may hold at most this many bytes together.
    capacity_bytes: Option<u64>,
    /// Bytes of the files that a name refers to (`written` images).
    used_bytes: u64,
    /// Seeded latency: how long each operation takes (see [`FaultStorage::with_latency`]).
    latency: Option<Latency>,
    /// Byte ranges of inodes whose reads come back with every bit flipped.
    read_corruptions: Vec<(InodeId, Range<u64>)>,
    /// Inodes whose reads fail with EIO.
    read_failures: Vec<InodeId>,
    /// Writes and syncs issued and not yet completed.
    writes_in_flight: u64,
    syncs_in_flight: u64,
    /// Operations delayed so far, and the issue numbers of those still in flight.
    delays_issued: u64,
    delays_in_flight: std::collections::BTreeSet<u64>,
    /// `sync_data` waits while this is set; the wakers of the tasks waiting.
    syncs_held: bool,
    syncs_waiting: Vec<std::task::Waker>,
}

/// Each operation takes a pseudo-random number of executor turns, up to `turns_max`.
#[derive(Debug)]
struct Latency {
    rng: Rng,
    turns_max: u64,
}

/// What a mutating operation is, for the gate that decides whether it may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write { sync: bool },
    SyncData,
    SyncDir,
    Other,
}

/// The gate's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Proceed,
    /// Fail with this errno, changing nothing.
    Refuse(i32),
    /// Land a write's bytes (a sync: nothing), then fail with EIO; `lose_dirty` marks the
    /// file's dirty bytes clean without syncing them.
    FailAfterWrite {
        lose_dirty: bool,
    },
    /// Land the first `landed` bytes of a write, then fail with this errno.
    Partial {
        landed: u64,
        errno: i32,
    },
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn to_usize(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| errno(libc::EFBIG))
}

/// `path` with `.` and repeated or trailing separators removed, as a map key.
fn normal(path: &Path) -> PathBuf {
    path.components().collect()
}

/// The directory and file name of `path`.
fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let path = normal(path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(errno(libc::EINVAL));
    };
    let Some(name) = name.to_str() else {
        return Err(errno(libc::EINVAL));
    };
    Ok((dir.to_path_buf(), name.to_owned()))
}

impl FaultStorage {
    /// An empty storage (no directories) whose crashes start from seed 0.
    pub fn new() -> FaultStorage {
        FaultStorage::default()
    }

    /// An empty storage whose [`crash`](Self::crash) tears with `seed`.
    pub fn with_seed(seed: u64) -> FaultStorage {
        let storage = FaultStorage::new();
        storage.state.borrow_mut().seed = seed;
        storage
    }

    /// This storage with seeded latency: from now on every operation (reads, `size` and
    /// the mutating ones) takes a pseudo-random number of executor turns between 0 and
    /// `turns_max`, drawn from `seed`, before it completes. Operations issued together
    /// complete out of order, and a write can be in flight while a sync runs; a sync makes
    /// durable only what was written before it was issued. With the default (no latency)
    /// every operation completes without suspending.
    ///
    /// The latency is counted in executor turns (`yield_now`), not in time: the order in
    /// which operations complete then depends only on the seed and the workload, not on the
    /// machine's speed, so a failing seed replays exactly.
    #[must_use]
    pub fn with_latency(self, seed: u64, turns_max: u64) -> FaultStorage {
        self.state.borrow_mut().latency = Some(Latency {
            rng: Rng(seed),
            turns_max,
        });
        self
    }

    /// From now on reads of bytes `range` of the file now at `path` return them with every
    /// bit flipped (a medium that returns wrong data without an error); what the file holds
    /// does not change. Lasts as long as this storage (a crash forgets it).
    pub fn corrupt_reads(&self, path: &Path, range: Range<u64>) {
        let mut state = self.state.borrow_mut();
        let Some(id) = state.lookup(path, false) else {
            panic!("no file {} to corrupt reads of", path.display());
        };
        state.read_corruptions.push((id, range));
    }

    /// From now on every read of the file now at `path` fails with EIO; writes to it
    /// still work. Lasts as long as this storage (a crash forgets it).
    pub fn fail_reads(&self, path: &Path) {
        let mut state = self.state.borrow_mut();
        let Some(id) = state.lookup(path, false) else {
            panic!("no file {} to fail reads of", path.display());
        };
        state.read_failures.push(id);
    }

    /// Waits out the latency of the operation just issued.
    async fn delay(&self) {
        let (turns, issued) = {
            let mut state = self.state.borrow_mut();
            let Some(latency) = state.latency.as_mut() else {
                return;
            };
            let turns = latency.rng.below(latency.turns_max + 1);
            let issued = state.delays_issued;
            state.delays_issued += 1;
            state.delays_in_flight.insert(issued);
            (turns, issued)
        };
        for _ in 0..turns {
            rt::yield_now().await;
        }
        let mut state = self.state.borrow_mut();
        if state.delays_in_flight.first() != Some(&issued) {
            state.stats.completions_reordered += 1;
        }
        state.delays_in_flight.remove(&issued);
    }

    /// Makes the `n`-th mutating operation from now (`n = 1` is the next) fail with
    /// `errno` without effect. Later operations are unaffected.
    pub fn fail_nth(&self, n: u64, errno: i32) {
        self.inject(n, Fault::Errno(errno));
    }

    /// A nearly full disk: from now on every `allocate` of more than `len` bytes fails
    /// with ENOSPC, without effect.
    pub fn limit_allocations(&self, len: u64) {
        self.state.borrow_mut().allocate_len_max = Some(len);
    }

    /// A small disk: from now on the files may hold at most `bytes` together (see the
    /// module header).
    pub fn limit_capacity(&self, bytes: u64) {
        self.state.borrow_mut().capacity_bytes = Some(bytes);
    }

    /// Bytes the files may still grow by: what is left of the capacity, if it is limited.
    pub fn free_bytes(&self) -> Option<u64> {
        let state = self.state.borrow();
        let capacity = state.capacity_bytes?;
        Some(capacity.saturating_sub(state.used_bytes))
    }

    /// Makes the `n`-th mutating operation from now fail as [`Fault::SyncLost`] describes.
    pub fn fail_nth_after_write(&self, n: u64) {
        self.inject(n, Fault::SyncLost);
    }

    /// Makes the `n`-th mutating operation from now a short write as
    /// [`Fault::Partial`] describes: `landed` bytes land, then it fails with `errno`.
    pub fn fail_nth_partially(&self, n: u64, landed: u64, errno: i32) {
        self.inject(n, Fault::Partial { landed, errno });
    }

    /// Makes the `n`-th mutating operation from now (`n >= 1`) hit `fault`.
    pub fn inject(&self, n: u64, fault: Fault) {
        assert!(n >= 1, "operations are counted from 1: the next one is 1");
        let mut state = self.state.borrow_mut();
        let index = state.stats.ops_mutating + n;
        state.faults.insert(index, fault);
    }

    /// Lets `k` more syncs take effect; the one after them kills the process (see the
    /// module header). `crash_at_sync(0)` kills it at its next sync.
    pub fn crash_at_sync(&self, k: u64) {
        let mut state = self.state.borrow_mut();
        state.syncs_limit = Some(state.stats.syncs + k);
    }

    /// Whether a [`crash_at_sync`](Self::crash_at_sync) limit was reached.
    pub fn is_dead(&self) -> bool {
        self.state.borrow().dead
    }

    /// Makes every `sync_data` from now on wait until [`release_syncs`](Self::release_syncs)
    /// (see the module header).
    pub fn hold_syncs(&self) {
        self.state.borrow_mut().syncs_held = true;
    }

    /// Lets the held syncs run, and later ones pass at once.
    pub fn release_syncs(&self) {
        let waiting = {
            let mut state = self.state.borrow_mut();
            state.syncs_held = false;
            std::mem::take(&mut state.syncs_waiting)
        };
        for waker in waiting {
            waker.wake();
        }
    }

    /// Completes once syncs are not held.
    async fn syncs_released(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if !state.syncs_held {
                return std::task::Poll::Ready(());
            }
            if !state.syncs_waiting.iter().any(|w| w.will_wake(cx.waker())) {
                state.syncs_waiting.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await;
    }

    /// Syncs (`sync_data`, `write_at` with `sync_after`, `sync_dir`) issued and let through:
    /// the sync points [`crash_at_sync`](Self::crash_at_sync) counts.
    pub fn sync_count(&self) -> u64 {
        self.state.borrow().stats.syncs
    }

    /// Mutating operations called so far (see the module header for which count).
    pub fn op_count(&self) -> u64 {
        self.state.borrow().stats.ops_mutating
    }

    /// All counters.
    pub fn stats(&self) -> FaultStats {
        self.state.borrow().stats
    }

    /// What reads of the file now named `path` see; `None` if there is no such file.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let id = state.lookup(path, false)?;
        Some(state.inodes[&id].written.clone())
    }

    /// What a clean crash would leave at `path`: the durable bytes of the file its durable
    /// directory entry names; `None` if that entry is not durable.
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let id = state.lookup(path, true)?;
        Some(state.inodes[&id].durable.clone())
    }

    /// The paths of all files by their current names, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let state = self.state.borrow();
        let mut paths = Vec::new();
        for (dir, entries) in &state.dirs {
            paths.extend(entries.names.keys().map(|name| dir.join(name)));
        }
        paths.sort();
        paths
    }

    /// Places a file holding `bytes` at `path`, durable with its name and directories, as if
    /// an earlier run had left it there (for recovery tests). Not a counted operation.
    pub fn put_file(&self, path: &Path, bytes: &[u8]) {
        let Ok((dir, name)) = split(path) else {
            panic!("{} is not a file path", path.display());
        };
        let mut state = self.state.borrow_mut();
        state.create_dirs(&dir);
        let id = state.inode_new();
        let inode = state.inode_mut(id);
        inode.written = bytes.to_vec();
        inode.durable = bytes.to_vec();
        state.used_bytes += bytes.len() as u64;
        let entries = state.dirs.get_mut(&dir).expect("created above");
        entries.names.insert(name.clone(), id);
        entries.names_durable.insert(name, id);
    }

    /// Power loss, torn with this storage's seed: see [`crash_with`](Self::crash_with).
    #[must_use]
    pub fn crash(&self) -> FaultStorage {
        let seed = self.state.borrow().seed;
        self.crash_with(seed)
    }

    /// The machine after power loss: a new storage (fresh counters, no faults) with only
    /// durable directory entries, each file its durable bytes overlaid with a prefix of its
    /// dirty sectors chosen by `seed`, the last one possibly torn. Deterministic in `seed`
    /// and the operations done. Handles on this storage keep working on it, not the new one.
    #[must_use]
    pub fn crash_with(&self, seed: u64) -> FaultStorage {
        self.state.borrow().crashed(Some(&mut Rng(seed)))
    }

    /// The machine after a power loss that kept exactly the durable state.
    #[must_use]
    pub fn crash_clean(&self) -> FaultStorage {
        self.state.borrow().crashed(None)
    }
}

impl State {
    /// Counts a mutating operation and decides its fate.
    fn gate(&mut self, op: Op) -> Verdict {
        self.stats.ops_mutating += 1;
        let fault = self.faults.remove(&self.stats.ops_mutating);
        let is_sync = matches!(op, Op::Write { sync: true } | Op::SyncData | Op::SyncDir);
        let verdict = if self.dead {
            Verdict::Refuse(libc::EIO)
        } else if let Some(fault) = fault {
            match (fault, op) {
                (Fault::Errno(code), _) => Verdict::Refuse(code),
                (Fault::SyncLost, Op::Write { .. } | Op::SyncData) => {
                    Verdict::FailAfterWrite { lose_dirty: true }
                }
                (Fault::SyncLost, _) => Verdict::Refuse(libc::EIO),
                (Fault::Partial { landed, errno }, Op::Write { .. }) => {
                    Verdict::Partial { landed, errno }
                }
                (Fault::Partial { errno, .. }, _) => Verdict::Refuse(errno),
            }
        } else if is_sync
            && self
                .syncs_limit
                .is_some_and(|limit| self.stats.syncs >= limit)
        {
            self.dead = true;
            match op {
                Op::Write { .. } => Verdict::FailAfterWrite { lose_dirty: false },
                _ => Verdict::Refuse(libc::EIO),
            }
        } else {
            Verdict::Proceed
        };
        if verdict != Verdict::Proceed {
            self.stats.ops_failed += 1;
        }
        verdict
    }

    /// After an operation's latency: EIO, and no effect, if the process died while it was
    /// in flight (a sync point after it was issued killed it).
    fn survived(&mut self) -> io::Result<()> {
        if self.dead {
            self.stats.ops_failed += 1;
            return Err(errno(libc::EIO));
        }
        Ok(())
    }

    /// What a read of `len` bytes at `offset` of inode `id` returns: `written`, with the
    /// bytes of corrupted ranges flipped; EIO for a file whose reads fail.
    fn read(&self, id: InodeId, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if self.read_failures.contains(&id) {
            return Err(errno(libc::EIO));
        }
        let written = &self.inodes[&id].written;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(written.len());
        let end = start.saturating_add(len).min(written.len());
        let mut bytes = written[start..end].to_vec();
        for (_, range) in self.read_corruptions.iter().filter(|(at, _)| *at == id) {
            let from = range.start.max(start as u64);
            let to = range.end.min(end as u64);
            for at in from..to {
                bytes[at as usize - start] ^= 0xff;
            }
        }
        Ok(bytes)
    }

    /// Gates an operation that either proceeds or fails without effect.
    fn gate_plain(&mut self, op: Op) -> io::Result<()> {
        match self.gate(op) {
            Verdict::Proceed => Ok(()),
            Verdict::Refuse(code) | Verdict::Partial { errno: code, .. } => Err(errno(code)),
            Verdict::FailAfterWrite { .. } => Err(errno(libc::EIO)),
        }
    }

    fn inode_new(&mut self) -> InodeId {
        let id = self.inode_next;
        self.inode_next += 1;
        self.inodes.insert(id, Inode::default());
        id
    }

    fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        match self.inodes.get_mut(&id) {
            Some(inode) => inode,
            None => unreachable!("inode {id} is held by a handle but missing"),
        }
    }

    /// The inode `path` names, by current or durable entries.
    fn lookup(&self, path: &Path, durable: bool) -> Option<InodeId> {
        let (dir, name) = split(path).ok()?;
        let entries = self.dirs.get(&dir)?;
        let names = if durable {
            &entries.names_durable
        } else {
            &entries.names
        };
        names.get(&name).copied()
    }

    fn create_dirs(&mut self, dir: &Path) {
        for ancestor in normal(dir).ancestors() {
            self.dirs.entry(ancestor.to_path_buf()).or_default();
        }
    }

    fn sync_inode(&mut self, id: InodeId) {
        self.inode_mut(id).sync();
        self.stats.syncs += 1;
    }

    /// ENOSPC if growing inode `id` to `len` bytes would pass the capacity.
    fn check_room(&self, id: InodeId, len: u64) -> io::Result<()> {
        let (Some(capacity), Some(inode)) = (self.capacity_bytes, self.inodes.get(&id)) else {
            return Ok(());
        };
        let grow = len.saturating_sub(inode.written.len() as u64);
        if !inode.unnamed && grow > 0 && self.used_bytes + grow > capacity {
            return Err(errno(libc::ENOSPC));
        }
        Ok(())
    }

    /// Changes inode `id` with `change`, counting its change of size as used or freed.
    fn resize(&mut self, id: InodeId, change: impl FnOnce(&mut Inode)) {
        let inode = self.inode_mut(id);
        let len_old = inode.written.len() as u64;
        change(inode);
        let (len_new, unnamed) = (inode.written.len() as u64, inode.unnamed);
        if !unnamed {
            self.used_bytes = self.used_bytes + len_new - len_old;
        }
    }

    /// No name refers to inode `id` any more: its bytes are free.
    fn unname(&mut self, id: InodeId) {
        let inode = self.inode_mut(id);
        if !inode.unnamed {
            inode.unnamed = true;
            let len = inode.written.len() as u64;
            self.used_bytes -= len;
        }
    }

    /// The state a power loss leaves; `rng` tears unsynced sectors, `None` drops them all.
    fn crashed(&self, mut rng: Option<&mut Rng>) -> FaultStorage {
        let mut dirs = BTreeMap::new();
        let mut inodes = BTreeMap::new();
        for (path, entries) in &self.dirs {
            for id in entries.names_durable.values() {
                if !inodes.contains_key(id) {
                    let bytes = self.inodes[id].crash_image(rng.as_deref_mut());
                    let inode = Inode {
                        written: bytes.clone(),
                        durable: bytes,
                        ..Inode::default()
                    };
                    inodes.insert(*id, inode);
                }
            }
            let names = entries.names_durable.clone();
            dirs.insert(
                path.clone(),
                Dir {
                    names: names.clone(),
                    names_durable: names,
                },
            );
        }
        let seed_next = rng.map_or(self.seed, Rng::next_u64);
        let used_bytes = inodes
            .values()
            .map(|inode| inode.written.len() as u64)
            .sum();
        let state = State {
            inodes,
            inode_next: self.inode_next,
            dirs,
            seed: seed_next,
            capacity_bytes: self.capacity_bytes,
            used_bytes,
            ..State::default()
        };
        FaultStorage {
            state: Rc::new(RefCell::new(state)),
        }
    }
}

/// Adds `range` to `ranges` (sorted, disjoint, not adjacent), merging what it touches.
fn merge_range(ranges: &mut Vec<Range<u64>>, range: Range<u64>) {
    if range.is_empty() {
        return;
    }
    let mut merged = range;
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    for old in ranges.drain(..) {
        if old.end < merged.start || merged.end < old.start {
            kept.push(old);
        } else {
            merged = merged.start.min(old.start)..merged.end.max(old.end);
        }
    }
    let at = kept.partition_point(|old| old.start < merged.start);
    kept.insert(at, merged);
    *ranges = kept;
}

impl Inode {
    /// Marks bytes `range` dirty.
    fn mark_dirty(&mut self, range: Range<u64>) {
        merge_range(&mut self.dirty, range);
    }

    /// Grows `written` with zeros to `len` bytes; the growth is dirty like a write.
    fn grow(&mut self, len: usize) {
        let len_old = self.written.len();
        if len > len_old {
            self.written.resize(len, 0);
            self.mark_dirty(len_old as u64..len as u64);
        }
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = offset + bytes.len();
        self.grow(end);
        self.written[offset..end].copy_from_slice(bytes);
        self.mark_dirty(offset as u64..end as u64);
    }

    fn truncate(&mut self, len: usize) {
        self.written.truncate(len);
        for range in &mut self.dirty {
            range.end = range.end.min(len as u64);
        }
        self.dirty.retain(|range| !range.is_empty());
    }

    /// Writes the dirty bytes and the size through to `durable` at once.
    fn sync(&mut self) {
        let id = self.begin_sync();
        self.finish_sync(id);
    }

    /// Issues a sync: it will make durable the dirty bytes and the size as they are now
    /// (and only those). Returns its id for [`Inode::finish_sync`].
    fn begin_sync(&mut self) -> u64 {
        let id = self.sync_id_next;
        self.sync_id_next += 1;
        let pieces = self
            .dirty
            .drain(..)
            .map(|range| {
                let range = range.start as usize..range.end as usize;
                (range.start, self.written[range].to_vec())
            })
            .collect();
        let len = self.written.len();
        self.syncing.push(SyncSnapshot { id, pieces, len });
        id
    }

    /// Completes sync `id`, and every sync issued before it that is still running: a sync
    /// waits for the writeback earlier ones started, so it never returns before them.
    /// Applying them oldest first keeps `durable` from going back to older bytes.
    fn finish_sync(&mut self, id: u64) {
        let Some(last) = self.syncing.iter().position(|sync| sync.id == id) else {
            return;
        };
        for sync in self.syncing.drain(..=last) {
            self.durable.resize(sync.len, 0);
            for (start, bytes) in sync.pieces {
                let end = (start + bytes.len()).min(sync.len);
                if start < end {
                    self.durable[start..end].copy_from_slice(&bytes[..end - start]);
                }
            }
        }
    }

    /// Byte ranges of `written` not known to be durable: dirty, or covered by a sync still
    /// running. Sorted, disjoint, within `written`.
    fn unsynced(&self) -> Vec<Range<u64>> {
        let mut ranges = self.dirty.clone();
        for sync in &self.syncing {
            for (start, bytes) in &sync.pieces {
                merge_range(&mut ranges, *start as u64..(start + bytes.len()) as u64);
            }
        }
        let len = self.written.len() as u64;
        for range in &mut ranges {
            range.end = range.end.min(len);
        }
        ranges.retain(|range| !range.is_empty());
        ranges
    }

    /// The unsynced bytes cut at sector boundaries, in offset order: (sector index, bytes).
    fn dirty_pieces(&self) -> Vec<(u64, Range<usize>)> {
        let mut pieces = Vec::new();
        for range in self.unsynced() {
            let sectors = range.start / SECTOR_BYTES..range.end.div_ceil(SECTOR_BYTES);
            for sector in sectors {
                let start = (sector * SECTOR_BYTES).max(range.start);
                let end = ((sector + 1) * SECTOR_BYTES).min(range.end);
                pieces.push((sector, start as usize..end as usize));
            }
        }
        pieces
    }

    /// The bytes a power loss leaves: `durable` with the dirty bytes of a prefix of the
    /// dirty sectors (all of them to none, chosen by `rng`) written over it; in the last
    /// sector kept, the dirty bytes after a random point may be garbage. Durable bytes are
    /// never damaged, not even when rewritten unchanged: a torn write garbles only what it
    /// changes.
    fn crash_image(&self, rng: Option<&mut Rng>) -> Vec<u8> {
        let mut image = self.durable.clone();
        let Some(rng) = rng else {
            return image;
        };
        let pieces = self.dirty_pieces();
        let mut sectors: Vec<u64> = pieces.iter().map(|(sector, _)| *sector).collect();
        sectors.dedup();
        let sectors_kept = rng.below(sectors.len() as u64 + 1) as usize;
        let Some(&sector_last) = sectors_kept.checked_sub(1).map(|index| &sectors[index]) else {
            return image;
        };
        let bytes_last: usize = pieces
            .iter()
            .filter(|(sector, _)| *sector == sector_last)
            .map(|(_, range)| range.len())
            .sum();
        let torn = rng.below(3) == 0;
        let mut intact_left = if torn {
            rng.below(bytes_last as u64) as usize
        } else {
            usize::MAX
        };
        for (sector, range) in pieces
            .into_iter()
            .take_while(|(sector, _)| *sector <= sector_last)
        {
            if image.len() < range.end {
                image.resize(range.end, 0);
            }
            image[range.clone()].copy_from_slice(&self.written[range.clone()]);
            if sector != sector_last {
                continue;
            }
            for at in range {
                if intact_left > 0 {
                    intact_left -= 1;
                } else if self.durable.get(at) != Some(&self.written[at]) {
                    image[at] = rng.next_u64() as u8;
                }
            }
        }
        image
    }
}

impl Storage for FaultStorage {
    type File = FaultFile;

    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<FaultFile> {
        if flags.create {
            self.state.borrow_mut().gate_plain(Op::Other)?;
        }
        self.delay().await;
        let mut state = self.state.borrow_mut();
        if flags.create {
            state.survived()?;
        }
        let (dir, name) = split(path)?;
        if state.dirs.contains_key(&normal(path)) {
            return Err(errno(libc::EISDIR));
        }
        let existing = state
            .dirs
            .get(&dir)
            .ok_or_else(|| errno(libc::ENOENT))?
            .names
            .get(&name);
        let inode = match existing {
            Some(id) => *id,
            None if flags.create => {
                let id = state.inode_new();
                state
                    .dirs
                    .get_mut(&dir)
                    .expect("looked up above")
                    .names
                    .insert(name, id);
                id
            }
            None => return Err(errno(libc::ENOENT)),
        };
        let (writable, direct) = (flags.write, flags.direct);
        Ok(FaultFile {
            storage: self.clone(),
            inode,
            writable,
            direct,
        })
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.state.borrow_mut().gate_plain(Op::Other)?;
        self.delay().await;
        let mut state = self.state.borrow_mut();
        state.survived()?;
        let (dir, name) = split(path)?;
        let entries = state
            .dirs
            .get_mut(&dir)
            .ok_or_else(|| errno(libc::ENOENT))?;
        let id = entries
            .names
            .remove(&name)
            .ok_or_else(|| errno(libc::ENOENT))?;
        state.unname(id);
        Ok(())
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.state.borrow_mut().gate_plain(Op::Other)?;
        self.delay().await;
        let mut state = self.state.borrow_mut();
        state.survived()?;
        let ((dir_from, name_from), (dir_to, name_to)) = (split(from)?, split(to)?);
        if !state.dirs.contains_key(&dir_to) {
            return Err(errno(libc::ENOENT));
        }
        let entries_from = state
            .dirs
            .get_mut(&dir_from)
            .ok_or_else(|| errno(libc::ENOENT))?;
        let id = entries_from
            .names
            .remove(&name_from)
            .ok_or_else(|| errno(libc::ENOENT))?;
        let replaced = state
            .dirs
            .get_mut(&dir_to)
            .expect("checked above")
            .names
            .insert(name_to, id);
        if let Some(replaced) = replaced.filter(|&replaced| replaced != id) {
            state.unname(replaced);
        }
        Ok(())
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.state.borrow_mut().gate_plain(Op::Other)?;
        self.delay().await;
        let mut state = self.state.borrow_mut();
        state.survived()?;
        state.create_dirs(dir);
        Ok(())
    }

    /// Makes durable the names the directory had when the sync was issued.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = normal(dir);
        let names = {
            let mut state = self.state.borrow_mut();
            state.gate_plain(Op::SyncDir)?;
            let entries = state.dirs.get(&dir).ok_or_else(|| errno(libc::ENOENT))?;
            let names = entries.names.clone();
            state.stats.syncs += 1;
            names
        };
        self.delay().await;
        let mut state = self.state.borrow_mut();
        state.survived()?;
        if let Some(entries) = state.dirs.get_mut(&dir) {
            entries.names_durable = names;
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.borrow();
        let dir = normal(dir);
        let entries = state.dirs.get(&dir).ok_or_else(|| errno(libc::ENOENT))?;
        let mut names: Vec<String> = entries.names.keys().cloned().collect();
        for path in state.dirs.keys() {
            if path.parent() == Some(dir.as_path()) {
                names.extend(
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .map(str::to_owned),
                );
            }
        }
        names.sort_unstable();
        Ok(names)
    }
}

impl FaultFile {
    /// Writes `bufs` at `offset`: the gate decides at issue, the bytes land when the write
    /// completes (after its latency), and with `sync_after` are made durable then.
    async fn write_bufs<B: IoBuf>(
        &self,
        bufs: &[B],
        offset: u64,
        sync_after: bool,
    ) -> io::Result<()> {
        let verdict = self
            .storage
            .state
            .borrow_mut()
            .gate(Op::Write { sync: sync_after });
        if let Verdict::Refuse(code) = verdict {
            return Err(errno(code));
        }
        if !self.writable {
            return Err(errno(libc::EBADF));
        }
        if self.direct && !direct_aligned(bufs, offset) {
            return Err(errno(libc::EINVAL));
        }
        let mut bytes: Vec<u8> = bufs
            .iter()
            .flat_map(|buf| rt::initialized(buf))
            .copied()
            .collect();
        if let Verdict::Partial { landed, .. } = verdict {
            bytes.truncate(usize::try_from(landed).unwrap_or(usize::MAX));
        }
        let offset = to_usize(offset)?;
        let end = offset
            .checked_add(bytes.len())
            .ok_or_else(|| errno(libc::EFBIG))?;
        {
            let mut state = self.storage.state.borrow_mut();
            state.writes_in_flight += 1;
            if state.syncs_in_flight > 0 {
                state.stats.sync_write_overlaps += 1;
            }
        }
        self.storage.delay().await;
        let mut state = self.storage.state.borrow_mut();
        state.writes_in_flight -= 1;
        if verdict == Verdict::Proceed {
            state.survived()?;
        }
        state.check_room(self.inode, end as u64)?;
        state.resize(self.inode, |inode| inode.write(offset, &bytes));
        state.stats.bytes_written += bytes.len() as u64;
        match verdict {
            Verdict::Proceed if sync_after => state.sync_inode(self.inode),
            Verdict::Proceed => {}
            Verdict::Partial { errno: code, .. } => return Err(errno(code)),
            Verdict::FailAfterWrite { lose_dirty } => {
                if lose_dirty {
                    state.inode_mut(self.inode).dirty.clear();
                }
                return Err(errno(libc::EIO));
            }
            Verdict::Refuse(_) => unreachable!("refused above"),
        }
        Ok(())
    }

    /// What a read of `len` bytes at `offset` returns, after the read's latency.
    async fn read_bytes(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.storage.delay().await;
        self.storage.state.borrow().read(self.inode, offset, len)
    }
}

/// Whether an O_DIRECT write of `bufs` at `offset` is aligned as the kernel demands.
fn direct_aligned<B: IoBuf>(bufs: &[B], offset: u64) -> bool {
    let sector = SECTOR_BYTES as usize;
    offset % SECTOR_BYTES == 0
        && bufs
            .iter()
            .all(|buf| buf.bytes_init() % sector == 0 && (buf.stable_ptr() as usize) % sector == 0)
}

impl StorageFile for FaultFile {
    async fn size(&self) -> io::Result<u64> {
        self.storage.delay().await;
        let state = self.storage.state.borrow();
        Ok(state.inodes[&self.inode].written.len() as u64)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.read_bytes(offset, len).await
    }

    async fn read_append(&self, offset: u64, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let spare = buf.capacity() - buf.len();
        match self.read_bytes(offset, spare).await {
            Ok(bytes) => {
                buf.extend_from_slice(&bytes);
                (Ok(bytes.len()), buf)
            }
            Err(error) => (Err(error), buf),
        }
    }

    async fn read_aligned(&self, offset: u64, buf: PooledBuf) -> (io::Result<usize>, PooledBuf) {
        let mut buf = buf;
        buf.clear();
        match self.read_bytes(offset, buf.capacity()).await {
            Ok(bytes) => {
                buf.extend_from_slice(&bytes);
                (Ok(bytes.len()), buf)
            }
            Err(error) => (Err(error), buf),
        }
    }

    async fn write_at<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
        sync_after: bool,
    ) -> (io::Result<()>, Vec<B>) {
        (self.write_bufs(&bufs, offset, sync_after).await, bufs)
    }

    /// The write lands when it completes; the sync is issued when the returned future is
    /// first polled and covers what was written by then, so a crash between the two keeps
    /// the bytes unsynced, as on a disk.
    async fn write_then_sync<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> (io::Result<()>, Vec<B>, crate::storage::PendingSync) {
        let written = self.write_bufs(&bufs, offset, false).await;
        let file = self.clone();
        (
            written,
            bufs,
            Box::pin(async move { file.sync_data().await }),
        )
    }

    /// Issued when first polled: it covers the writes completed by then, and makes them
    /// durable when it completes (after its latency), unless the process died meanwhile.
    async fn sync_data(&self) -> io::Result<()> {
        self.storage.syncs_released().await;
        let issued = {
            let mut state = self.storage.state.borrow_mut();
            match state.gate(Op::SyncData) {
                Verdict::Proceed => {
                    state.stats.syncs += 1;
                    state.syncs_in_flight += 1;
                    if state.writes_in_flight > 0 {
                        state.stats.sync_write_overlaps += 1;
                    }
                    Ok(state.inode_mut(self.inode).begin_sync())
                }
                Verdict::Refuse(code) | Verdict::Partial { errno: code, .. } => {
                    return Err(errno(code))
                }
                Verdict::FailAfterWrite { lose_dirty } => {
                    if lose_dirty {
                        state.inode_mut(self.inode).dirty.clear();
                    }
                    Err(errno(libc::EIO))
                }
            }
        };
        self.storage.delay().await;
        let id = issued?;
        let mut state = self.storage.state.borrow_mut();
        state.syncs_in_flight -= 1;
        state.survived()?;
        state.inode_mut(self.inode).finish_sync(id);
        Ok(())
    }

    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.storage.state.borrow_mut().gate_plain(Op::Other)?;
        if !self.writable {
            return Err(errno(libc::EBADF));
        }
        if len == 0 {
            return Err(errno(libc::EINVAL));
        }
        self.storage.delay().await;
        let mut state = self.storage.state.borrow_mut();
        state.survived()?;
        if state.allocate_len_max.is_some_and(|max| len > max) {
            return Err(errno(libc::ENOSPC));
        }
        let end = offset.checked_add(len).ok_or_else(|| errno(libc::EFBIG))?;
        let end = to_usize(end)?;
        state.check_room(self.inode, end as u64)?;
        state.resize(self.inode, |inode| inode.grow(end));
        Ok(())
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        self.storage.state.borrow_mut().gate_plain(Op::Other)?;
        if !self.writable {
            return Err(errno(libc::EINVAL));
        }
        self.storage.delay().await;
        let mut state = self.storage.state.borrow_mut();
        state.survived()?;
        state.check_room(self.inode, len)?;
        let len = to_usize(len)?;
        state.resize(self.inode, |inode| {
            if len < inode.written.len() {
                inode.truncate(len);
            } else {
                inode.grow(len);
            }
        });
        Ok(())
    }

    fn runtime_file(&self) -> Option<&rt::File> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::rc::Rc;

    use super::*;
    use crate::rt::AlignedBuf;

    const DIR: &str = "/data/topic-0";

    fn run<F: std::future::Future>(future: F) -> F::Output {
        rt::block_on(future).expect("io_uring is available on the test machine")
    }

    /// Runs `future` as a spawned task: tasks take turns with each other (a `yield_now`
    /// lets every other ready task run once), while the root future of `block_on` runs
    /// only between rounds of up to 256 task turns.
    fn run_as_task<F: std::future::Future + 'static>(future: F) -> F::Output {
        run(async { rt::spawn_local(future).await.unwrap() })
    }

    fn path(name: &str) -> PathBuf {
        Path::new(DIR).join(name)
    }

    /// A storage with `DIR` and a durable, empty file `log` in it (3 mutating operations,
    /// 1 sync).
    async fn with_log() -> (FaultStorage, FaultFile) {
        let storage = FaultStorage::new();
        storage.create_dir_all(Path::new(DIR)).await.unwrap();
        let file = storage.open(&path("log"), OpenFlags::WRITE).await.unwrap();
        storage.sync_dir(Path::new(DIR)).await.unwrap();
        (storage, file)
    }

    async fn write(file: &FaultFile, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()> {
        file.write_at(vec![bytes.to_vec()], offset, sync).await.0
    }

    fn raw(result: io::Result<()>) -> Option<i32> {
        result.err().and_then(|error| error.raw_os_error())
    }

    #[test]
    fn reads_see_written_bytes_with_holes_and_short_reads() {
        run(async {
            let (_, file) = with_log().await;
            let (result, _) = file
                .write_at(vec![b"ab".to_vec(), b"c".to_vec()], 0, false)
                .await;
            result.unwrap();
            write(&file, 10, b"xyz", false).await.unwrap();
            assert_eq!(file.size().await.unwrap(), 13);
            assert_eq!(file.read_at(0, 100).await.unwrap(), b"abc\0\0\0\0\0\0\0xyz");
            assert_eq!(file.read_at(11, 1).await.unwrap(), b"y");
            assert!(file.read_at(20, 5).await.unwrap().is_empty());
            assert!(file.runtime_file().is_none());
        });
    }

    #[test]
    fn errors_are_the_kernels() {
        run(async {
            let (storage, file) = with_log().await;
            let missing = storage
                .open(&path("missing"), OpenFlags::READ)
                .await
                .unwrap_err();
            assert_eq!(missing.kind(), io::ErrorKind::NotFound);
            let no_dir = storage
                .open(Path::new("/nowhere/f"), OpenFlags::WRITE)
                .await;
            assert_eq!(no_dir.unwrap_err().kind(), io::ErrorKind::NotFound);
            let removed = storage.remove_file(&path("missing")).await.unwrap_err();
            assert_eq!(removed.kind(), io::ErrorKind::NotFound);
            write(&file, 0, b"abc", true).await.unwrap();
            let reader = storage.open(&path("log"), OpenFlags::READ).await.unwrap();
            assert_eq!(raw(write(&reader, 0, b"x", false).await), Some(libc::EBADF));
            assert_eq!(raw(reader.allocate(0, 10).await), Some(libc::EBADF));
            assert_eq!(reader.read_at(0, 3).await.unwrap(), b"abc");
            assert_eq!(storage.list_dir(Path::new("/data")).unwrap(), ["topic-0"]);
            assert_eq!(storage.list_dir(Path::new(DIR)).unwrap(), ["log"]);
        });
    }

    #[test]
    fn direct_writes_must_be_sector_aligned() {
        run(async {
            let (storage, _) = with_log().await;
            let flags = OpenFlags {
                direct: true,
                ..OpenFlags::WRITE
            };
            let file = storage.open(&path("direct"), flags).await.unwrap();
            let mut buf = AlignedBuf::with_capacity(4096);
            buf.set_len(512);
            let (result, mut bufs) = file.write_at(vec![buf], 100, false).await;
            assert_eq!(raw(result), Some(libc::EINVAL), "offset not aligned");
            bufs[0].set_len(100);
            let (result, mut bufs) = file.write_at(bufs, 0, false).await;
            assert_eq!(raw(result), Some(libc::EINVAL), "length not aligned");
            bufs[0].set_len(1024);
            file.write_at(bufs, 512, true).await.0.unwrap();
            assert_eq!(file.size().await.unwrap(), 1536);
        });
    }

    #[test]
    fn a_handle_follows_its_file_across_rename_and_remove() {
        run(async {
            let (storage, _) = with_log().await;
            let file = storage.open(&path("tmp"), OpenFlags::WRITE).await.unwrap();
            storage.rename(&path("tmp"), &path("final")).await.unwrap();
            write(&file, 0, b"meta", true).await.unwrap();
            assert_eq!(storage.file_bytes(&path("final")).unwrap(), b"meta");
            assert!(storage.file_bytes(&path("tmp")).is_none());
            storage.remove_file(&path("final")).await.unwrap();
            write(&file, 4, b"!", false).await.unwrap();
            assert_eq!(file.read_at(0, 10).await.unwrap(), b"meta!");
            assert_eq!(storage.files(), [path("log")]);
        });
    }

    #[test]
    fn fail_nth_fails_that_operation_only_and_without_effect() {
        run(async {
            let (storage, file) = with_log().await;
            assert_eq!(storage.op_count(), 3);
            storage.fail_nth(2, libc::ENOSPC);
            write(&file, 0, b"a", false).await.unwrap();
            assert_eq!(raw(write(&file, 1, b"b", false).await), Some(libc::ENOSPC));
            assert_eq!(storage.file_bytes(&path("log")).unwrap(), b"a");
            write(&file, 1, b"c", false).await.unwrap();
            assert_eq!(storage.file_bytes(&path("log")).unwrap(), b"ac");

            storage.fail_nth(1, libc::EIO);
            let created = storage.open(&path("segment"), OpenFlags::WRITE).await;
            assert_eq!(created.unwrap_err().raw_os_error(), Some(libc::EIO));
            assert_eq!(
                storage.files(),
                [path("log")],
                "the failed create left no file"
            );
            storage.fail_nth(1, libc::EIO);
            assert_eq!(raw(file.sync_data().await), Some(libc::EIO));
            assert!(storage.durable_bytes(&path("log")).unwrap().is_empty());
            let stats = storage.stats();
            assert_eq!(
                (stats.ops_mutating, stats.ops_failed, stats.syncs),
                (8, 3, 1)
            );
        });
    }

    #[test]
    fn a_lost_sync_leaves_written_bytes_that_no_later_sync_makes_durable() {
        run(async {
            let (storage, file) = with_log().await;
            write(&file, 0, b"durable", true).await.unwrap();
            storage.fail_nth_after_write(1);
            assert_eq!(raw(write(&file, 7, b" lost", true).await), Some(libc::EIO));
            assert_eq!(storage.file_bytes(&path("log")).unwrap(), b"durable lost");
            assert_eq!(storage.durable_bytes(&path("log")).unwrap(), b"durable");
            file.sync_data().await.unwrap();
            let durable = storage.durable_bytes(&path("log")).unwrap();
            assert_eq!(
                durable, b"durable\0\0\0\0\0",
                "the retry persisted the size only"
            );

            write(&file, 12, b"x", false).await.unwrap();
            storage.fail_nth_after_write(1);
            assert_eq!(raw(file.sync_data().await), Some(libc::EIO));
            file.sync_data().await.unwrap();
            let recovered = storage.crash_with(7).file_bytes(&path("log")).unwrap();
            assert_eq!(recovered, b"durable\0\0\0\0\0\0");
        });
    }

    #[test]
    fn crash_keeps_only_durable_bytes_and_dir_synced_names() {
        run(async {
            let (storage, file) = with_log().await;
            write(&file, 0, b"synced", true).await.unwrap();
            write(&file, 6, b" unsynced", false).await.unwrap();
            storage.put_file(&path("renamed"), b"r");
            storage.put_file(&path("removed"), b"x");
            let fresh = storage
                .open(&path("fresh"), OpenFlags::WRITE)
                .await
                .unwrap();
            write(&fresh, 0, b"data synced, name not", true)
                .await
                .unwrap();
            storage
                .rename(&path("renamed"), &path("target"))
                .await
                .unwrap();
            storage.remove_file(&path("removed")).await.unwrap();

            let after = storage.crash_clean();
            let names = ["log", "removed", "renamed"].map(path);
            assert_eq!(after.files(), names);
            assert_eq!(after.file_bytes(&path("log")).unwrap(), b"synced");
            assert_eq!(after.file_bytes(&path("removed")).unwrap(), b"x");
            assert_eq!(after.stats(), FaultStats::default());

            storage.sync_dir(Path::new(DIR)).await.unwrap();
            let after = storage.crash_clean();
            assert_eq!(after.files(), ["fresh", "log", "target"].map(path));
            assert_eq!(after.file_bytes(&path("target")).unwrap(), b"r");
        });
    }

    #[test]
    fn allocation_and_truncation_are_durable_only_after_sync() {
        run(async {
            let (storage, file) = with_log().await;
            file.allocate(0, 4096).await.unwrap();
            assert_eq!(file.size().await.unwrap(), 4096);
            assert!(storage.durable_bytes(&path("log")).unwrap().is_empty());
            file.sync_data().await.unwrap();
            write(&file, 0, b"rec", false).await.unwrap();
            let durable = storage.durable_bytes(&path("log")).unwrap();
            assert_eq!(
                durable,
                vec![0; 4096],
                "an unsynced overwrite is not durable"
            );
            file.set_len(100).await.unwrap();
            assert_eq!(file.size().await.unwrap(), 100);
            assert_eq!(
                storage
                    .crash_clean()
                    .file_bytes(&path("log"))
                    .unwrap()
                    .len(),
                4096
            );
            file.sync_data().await.unwrap();
            let durable = storage.durable_bytes(&path("log")).unwrap();
            assert_eq!((durable.len(), &durable[..3]), (100, &b"rec"[..]));
        });
    }

    #[test]
    fn a_small_disk_refuses_growth_past_its_capacity_and_frees_removed_files() {
        run(async {
            let (storage, file) = with_log().await;
            assert_eq!(storage.free_bytes(), None, "no capacity until one is set");
            storage.limit_capacity(10_000);
            file.allocate(0, 6000).await.unwrap();
            assert_eq!(storage.free_bytes(), Some(4000));
            let full = file.allocate(6000, 4001).await.unwrap_err();
            assert_eq!(full.raw_os_error(), Some(libc::ENOSPC));
            assert_eq!(
                file.size().await.unwrap(),
                6000,
                "a refused allocation changes nothing"
            );
            write(&file, 0, &[7; 6000], false).await.unwrap();
            let past = write(&file, 6000, &[7; 4001], false).await.unwrap_err();
            assert_eq!(past.raw_os_error(), Some(libc::ENOSPC));
            assert_eq!(raw(file.set_len(10_001).await), Some(libc::ENOSPC));
            file.set_len(1000).await.unwrap();
            assert_eq!(storage.free_bytes(), Some(9000));
            let other = storage
                .open(&path("other"), OpenFlags::WRITE)
                .await
                .unwrap();
            write(&other, 0, &[1; 9000], false).await.unwrap();
            assert_eq!(storage.free_bytes(), Some(0));
            // Replacing a file by a rename, and removing one, frees their bytes.
            storage.rename(&path("other"), &path("log")).await.unwrap();
            assert_eq!(storage.free_bytes(), Some(1000));
            storage.remove_file(&path("log")).await.unwrap();
            assert_eq!(storage.free_bytes(), Some(10_000));
            assert_eq!(storage.crash_clean().free_bytes(), Some(10_000));
        });
    }

    /// A file with 1000 durable bytes of 1 and 3000 unsynced bytes of 2 after them.
    async fn durable_then_unsynced() -> FaultStorage {
        let (storage, file) = with_log().await;
        write(&file, 0, &[1; 1000], true).await.unwrap();
        write(&file, 1000, &[2; 3000], false).await.unwrap();
        storage
    }

    #[test]
    fn a_crash_keeps_a_prefix_of_unsynced_sectors_torn_only_at_its_end() {
        run(async {
            let storage = durable_then_unsynced().await;
            let (mut lens, mut torn) = (BTreeSet::new(), 0);
            for seed in 0..300 {
                let image = storage.crash_with(seed).file_bytes(&path("log")).unwrap();
                assert!(
                    image[..1000].iter().all(|&byte| byte == 1),
                    "durable bytes intact"
                );
                let len = image.len();
                assert!(
                    len == 1000 || len == 4000 || len % 512 == 0,
                    "sector end: {len}"
                );
                let last_sector_start = ((len - 1) / 512 * 512).max(1000);
                assert!(image[1000..last_sector_start].iter().all(|&byte| byte == 2));
                torn += usize::from(image[last_sector_start..].iter().any(|&byte| byte != 2));
                lens.insert(len);
            }
            assert_eq!(
                lens.len(),
                8,
                "every prefix of the 7 dirty sectors occurs: {lens:?}"
            );
            assert!(torn > 0, "some crash tore its last sector");
        });
    }

    #[test]
    fn a_torn_rewrite_never_garbles_durable_bytes_it_rewrote_unchanged() {
        run(async {
            let (storage, file) = with_log().await;
            write(&file, 0, &[1; 1000], true).await.unwrap();
            let mut block = vec![1; 1000];
            block.resize(1536, 2);
            write(&file, 0, &block, false).await.unwrap();
            let mut torn = 0;
            for seed in 0..300 {
                let image = storage.crash_with(seed).file_bytes(&path("log")).unwrap();
                assert!(image[..1000].iter().all(|&byte| byte == 1), "seed {seed}");
                torn += usize::from(image[1000..].iter().any(|&byte| byte != 2));
            }
            assert!(torn > 0, "the changed bytes were torn in some crash");
        });
    }

    #[test]
    fn a_crash_is_deterministic_in_its_seed() {
        run(async {
            let storage = durable_then_unsynced().await;
            let image = |after: FaultStorage| after.file_bytes(&path("log")).unwrap();
            let images: BTreeSet<Vec<u8>> = (0..20)
                .map(|seed| image(storage.crash_with(seed)))
                .collect();
            assert!(images.len() > 1, "seeds choose different outcomes");
            for seed in 0..20 {
                assert_eq!(
                    image(storage.crash_with(seed)),
                    image(storage.crash_with(seed))
                );
            }
            let seeded = FaultStorage::with_seed(5);
            seeded.put_file(&path("log"), b"");
            assert_eq!(seeded.crash().files(), [path("log")]);
            assert_eq!(image(storage.crash_clean()), vec![1; 1000]);
        });
    }

    #[test]
    fn crash_at_sync_kills_the_process_at_the_next_sync() {
        run(async {
            let (storage, file) = with_log().await;
            storage.crash_at_sync(2);
            write(&file, 0, b"a", true).await.unwrap();
            write(&file, 1, b"b", false).await.unwrap();
            file.sync_data().await.unwrap();
            write(&file, 2, b"c", false).await.unwrap();
            assert!(!storage.is_dead());
            assert_eq!(raw(write(&file, 3, b"d", true).await), Some(libc::EIO));
            assert!(storage.is_dead());
            assert_eq!(raw(write(&file, 4, b"e", false).await), Some(libc::EIO));
            assert_eq!(raw(file.set_len(0).await), Some(libc::EIO));
            let created = storage.open(&path("new"), OpenFlags::WRITE).await;
            assert_eq!(created.unwrap_err().raw_os_error(), Some(libc::EIO));
            assert_eq!(
                storage.sync_count(),
                3,
                "the directory sync and the two allowed"
            );
            assert_eq!(
                file.read_at(0, 10).await.unwrap(),
                b"abcd",
                "the fatal write landed"
            );
            assert_eq!(
                storage.crash_clean().file_bytes(&path("log")).unwrap(),
                b"ab"
            );
        });
    }

    #[test]
    fn a_held_sync_waits_for_its_release_and_then_makes_the_bytes_durable() {
        run(async {
            let (storage, file) = with_log().await;
            storage.hold_syncs();
            let (written, _, sync) = file.write_then_sync(vec![b"held".to_vec()], 0).await;
            written.unwrap();
            let syncs_before = storage.sync_count();
            let sync = rt::spawn_local(sync);
            for _ in 0..10 {
                rt::yield_now().await;
            }
            assert_eq!(
                storage.sync_count(),
                syncs_before,
                "the held sync has not run"
            );
            assert_eq!(storage.durable_bytes(&path("log")).unwrap(), b"");
            storage.sync_dir(Path::new(DIR)).await.unwrap();
            assert_eq!(
                storage.sync_count(),
                syncs_before + 1,
                "sync_dir is not held"
            );
            storage.release_syncs();
            sync.await.unwrap().unwrap();
            assert_eq!(storage.sync_count(), syncs_before + 2);
            assert_eq!(storage.durable_bytes(&path("log")).unwrap(), b"held");
        });
    }

    /// A stand-in for the partition log: length-prefixed, checksummed records appended
    /// with a sync each; `Err` once an append fails (the log is poisoned).
    async fn append_all(storage: &FaultStorage, records: &[Vec<u8>]) -> Vec<usize> {
        let mut acknowledged = Vec::new();
        let dir = Path::new(DIR);
        let Ok(()) = storage.create_dir_all(dir).await else {
            return acknowledged;
        };
        let Ok(file) = storage.open(&path("log"), OpenFlags::WRITE).await else {
            return acknowledged;
        };
        let Ok(()) = storage.sync_dir(dir).await else {
            return acknowledged;
        };
        let mut position = 0;
        for (index, record) in records.iter().enumerate() {
            let mut frame = (record.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&crc32c::crc32c(record).to_le_bytes());
            frame.extend_from_slice(record);
            let frame_len = frame.len() as u64;
            if file.write_at(vec![frame], position, true).await.0.is_err() {
                break;
            }
            position += frame_len;
            acknowledged.push(index);
        }
        acknowledged
    }

    /// The records of the longest valid prefix of the log.
    fn recover(storage: &FaultStorage) -> Vec<Vec<u8>> {
        let bytes = storage.file_bytes(&path("log")).unwrap_or_default();
        let mut records = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 8 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
            let Some(record) = rest.get(8..8 + len) else {
                break;
            };
            if len == 0 || crc32c::crc32c(record) != crc {
                break;
            }
            records.push(record.to_vec());
            rest = &rest[8 + len..];
        }
        records
    }

    #[test]
    fn crashing_at_every_sync_point_loses_nothing_acknowledged() {
        run(async {
            let records: Vec<Vec<u8>> = (0..12u8)
                .map(|i| vec![i + 1; 100 + 97 * usize::from(i)])
                .collect();
            let dry = FaultStorage::new();
            assert_eq!(append_all(&dry, &records).await.len(), records.len());
            let sync_points = dry.sync_count();
            for k in 0..=sync_points {
                for seed in 0..8 {
                    let storage = FaultStorage::new();
                    storage.crash_at_sync(k);
                    let acknowledged = append_all(&storage, &records).await;
                    let recovered = recover(&storage.crash_with(seed));
                    assert!(acknowledged.len() <= recovered.len(), "k {k} seed {seed}");
                    for (index, record) in recovered.iter().enumerate() {
                        assert_eq!(record, &records[index], "k {k} seed {seed}: in order");
                    }
                }
            }
        });
    }

    /// Runs `operations` as concurrent tasks (issued in order) on `storage`; returns the
    /// order their indexes completed in.
    async fn completion_order(
        operations: Vec<futures::future::LocalBoxFuture<'static, ()>>,
    ) -> Vec<usize> {
        let done = Rc::new(RefCell::new(Vec::new()));
        let tasks: Vec<_> = operations
            .into_iter()
            .enumerate()
            .map(|(index, operation)| {
                let done = done.clone();
                rt::spawn_local(async move {
                    operation.await;
                    done.borrow_mut().push(index);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let order = done.borrow().clone();
        order
    }

    #[test]
    fn latency_completes_operations_out_of_order_and_replays_by_seed() {
        run(async {
            let mut orders = BTreeSet::new();
            for seed in 0..20 {
                let mut replays = Vec::new();
                for _ in 0..2 {
                    let (storage, file) = with_log().await;
                    let storage = storage.with_latency(seed, 8);
                    let operations = (0..6u64)
                        .map(|index| {
                            let file = file.clone();
                            let operation = async move {
                                write(&file, index * 10, b"data", false).await.unwrap();
                            };
                            futures::FutureExt::boxed_local(operation)
                        })
                        .collect();
                    replays.push(completion_order(operations).await);
                    assert_eq!(storage.file_bytes(&path("log")).unwrap().len(), 54);
                }
                assert_eq!(replays[0], replays[1], "seed {seed} replays exactly");
                orders.insert(replays[0].clone());
            }
            assert!(
                orders.len() > 1,
                "seeds choose different orders: {orders:?}"
            );
            assert!(
                orders
                    .iter()
                    .any(|order| order.windows(2).any(|w| w[0] > w[1])),
                "some operations complete before ones issued earlier"
            );
        });
    }

    #[test]
    fn a_sync_covers_only_the_writes_completed_before_it_was_issued() {
        run_as_task(async {
            let (mut covered, mut in_flight) = (0, 0);
            for seed in 0..40 {
                let (storage, file) = with_log().await;
                let storage = storage.with_latency(seed, 6);
                write(&file, 0, b"first", false).await.unwrap();
                let done = Rc::new(std::cell::Cell::new(false));
                let writer = {
                    let (file, done) = (file.clone(), done.clone());
                    rt::spawn_local(async move {
                        write(&file, 5, b"-second", false).await.unwrap();
                        done.set(true);
                    })
                };
                rt::yield_now().await;
                let completed_before_sync = done.get();
                file.sync_data().await.unwrap();
                writer.await.unwrap();
                let durable = storage.durable_bytes(&path("log")).unwrap();
                if completed_before_sync {
                    covered += 1;
                    assert_eq!(durable, b"first-second", "seed {seed}");
                } else {
                    in_flight += 1;
                    assert_eq!(durable, b"first", "seed {seed}: the write was in flight");
                    let after = storage.crash_clean().file_bytes(&path("log")).unwrap();
                    assert_eq!(after, b"first", "seed {seed}");
                }
            }
            assert!(
                covered > 0 && in_flight > 0,
                "{covered} covered, {in_flight} in flight"
            );
        });
    }

    #[test]
    fn a_later_sync_completing_first_never_lets_durable_bytes_go_back() {
        run_as_task(async {
            let mut overtaken = 0;
            for seed in 0..40 {
                let (storage, file) = with_log().await;
                let storage = storage.with_latency(seed, 6);
                write(&file, 0, b"older", false).await.unwrap();
                let finished = Rc::new(RefCell::new(Vec::new()));
                let first = {
                    let (file, finished) = (file.clone(), finished.clone());
                    rt::spawn_local(async move {
                        file.sync_data().await.unwrap();
                        finished.borrow_mut().push("first");
                    })
                };
                rt::yield_now().await;
                write(&file, 0, b"newer", false).await.unwrap();
                file.sync_data().await.unwrap();
                finished.borrow_mut().push("second");
                first.await.unwrap();
                overtaken += usize::from(finished.borrow()[0] == "second");
                let durable = storage.durable_bytes(&path("log")).unwrap();
                assert_eq!(durable, b"newer", "seed {seed}: {:?}", finished.borrow());
            }
            assert!(overtaken > 0, "some later sync completed first");
        });
    }

    #[test]
    fn a_short_write_lands_a_prefix_unsynced_then_fails() {
        run(async {
            let (storage, file) = with_log().await;
            write(&file, 0, b"durable", true).await.unwrap();
            storage.fail_nth_partially(1, 3, libc::ENOSPC);
            assert_eq!(
                raw(write(&file, 7, b"-partial", true).await),
                Some(libc::ENOSPC)
            );
            assert_eq!(storage.file_bytes(&path("log")).unwrap(), b"durable-pa");
            assert_eq!(
                storage.crash_clean().file_bytes(&path("log")).unwrap(),
                b"durable",
                "the landed prefix was not synced"
            );
            storage.fail_nth_partially(1, 3, libc::ENOSPC);
            assert_eq!(
                raw(file.sync_data().await),
                Some(libc::ENOSPC),
                "any other operation just fails"
            );
        });
    }

    #[test]
    fn reads_of_a_failing_file_fail_while_writes_go_on() {
        run(async {
            let (storage, file) = with_log().await;
            write(&file, 0, b"abc", true).await.unwrap();
            storage.fail_reads(&path("log"));
            let read = file.read_at(0, 3).await;
            assert_eq!(read.unwrap_err().raw_os_error(), Some(libc::EIO));
            let (read, _) = file.read_append(0, Vec::with_capacity(3)).await;
            assert_eq!(read.unwrap_err().raw_os_error(), Some(libc::EIO));
            write(&file, 3, b"d", true).await.unwrap();
            assert_eq!(storage.file_bytes(&path("log")).unwrap(), b"abcd");
        });
    }

    #[test]
    fn reads_of_a_corrupted_range_come_back_flipped_and_the_file_is_unchanged() {
        run(async {
            let (storage, file) = with_log().await;
            write(&file, 0, b"abcdefgh", true).await.unwrap();
            storage.corrupt_reads(&path("log"), 2..4);
            let read = file.read_at(0, 8).await.unwrap();
            assert_eq!(read, [b'a', b'b', !b'c', !b'd', b'e', b'f', b'g', b'h']);
            assert_eq!(file.read_at(3, 2).await.unwrap(), [!b'd', b'e']);
            let mut buf = Vec::with_capacity(8);
            let (appended, buf_read) = file.read_append(1, buf).await;
            buf = buf_read;
            assert_eq!(
                (appended.unwrap(), &buf[..3]),
                (7, &[b'b', !b'c', !b'd'][..])
            );
            assert_eq!(storage.file_bytes(&path("log")).unwrap(), b"abcdefgh");
            let after = storage.crash_clean();
            let reopened = after.open(&path("log"), OpenFlags::READ).await.unwrap();
            assert_eq!(
                reopened.read_at(0, 8).await.unwrap(),
                b"abcdefgh",
                "a crash forgets it"
            );
        });
    }
}
