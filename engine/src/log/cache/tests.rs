//! The cache's bookkeeping: hits and misses, whole batches within the byte and offset
//! limits, overlap-free inserts, LRU eviction under the budget, and invalidation.

use super::*;

/// A run of `count` batches of `batch_bytes` each, one offset per batch, from `first`; its
/// buffer is `capacity` bytes and each batch's bytes are its base offset's low byte.
fn run(first: i64, count: usize, batch_bytes: usize, capacity: usize) -> Run {
    let mut buf = AlignedBuf::with_capacity(capacity);
    let mut batches = Vec::new();
    for index in 0..count {
        let base = first + index as i64;
        batches.push((base, index * batch_bytes));
        buf.extend_from_slice(&vec![base as u8; batch_bytes]);
    }
    Run {
        range: 0..count * batch_bytes,
        buf,
        batches,
        offset_next: first + count as i64,
    }
}

fn offsets_of(got: &(Vec<Bytes>, i64), batch_bytes: usize) -> Vec<u8> {
    got.0
        .iter()
        .flat_map(|piece| piece.chunks(batch_bytes).map(|chunk| chunk[0]))
        .collect()
}

#[test]
fn a_hit_returns_whole_batches_from_the_one_holding_the_offset() {
    let cache = BatchCache::new(1 << 20);
    let log = cache.register();
    cache.insert(log, 0, run(10, 8, 100, 4096));
    let pieces = cache.get(log, 13, 250, i64::MAX).unwrap();
    // Batches 13 and 14 fit 250 bytes; 15 would not, and is where the next read starts.
    assert_eq!(offsets_of(&pieces, 100), [13, 14]);
    assert_eq!(pieces.1, 15);
    // The first batch comes whole even when it alone exceeds the limit.
    let pieces = cache.get(log, 13, 1, i64::MAX).unwrap();
    assert_eq!(offsets_of(&pieces, 100), [13]);
    // Nothing at or past the offset limit (the high watermark).
    let pieces = cache.get(log, 13, 1 << 20, 16).unwrap();
    assert_eq!(offsets_of(&pieces, 100), [13, 14, 15]);
    assert!(
        cache.get(log, 18, 1 << 20, i64::MAX).is_none(),
        "past the run"
    );
    assert!(
        cache.get(log, 9, 1 << 20, i64::MAX).is_none(),
        "before the run"
    );
}

#[test]
fn consecutive_runs_are_read_as_one_and_a_gap_ends_the_read() {
    let cache = BatchCache::new(1 << 20);
    let log = cache.register();
    cache.insert(log, 0, run(0, 4, 100, 4096));
    cache.insert(log, 0, run(4, 4, 100, 4096));
    cache.insert(log, 0, run(10, 4, 100, 4096));
    let pieces = cache.get(log, 2, 1 << 20, i64::MAX).unwrap();
    assert_eq!(offsets_of(&pieces, 100), [2, 3, 4, 5, 6, 7]);
    assert_eq!(pieces.1, 8, "the read ends at the gap");
    assert_eq!(cache.first_gap(log, 2, 1 << 20), Some(8));
    assert_eq!(cache.first_gap(log, 2, 500), None);
    assert_eq!(cache.first_gap(log, 8, 1), Some(8));
}

#[test]
fn an_insert_keeps_only_batches_no_entry_holds() {
    let cache = BatchCache::new(1 << 20);
    let log = cache.register();
    cache.insert(log, 0, run(4, 2, 100, 4096));
    // 0..8 overlaps 4..6: only 0..4 is new, and the entry stops where 4..6 starts.
    cache.insert(log, 0, run(0, 8, 100, 4096));
    assert_eq!(cache.stats().entries, 2);
    let pieces = cache.get(log, 0, 1 << 20, i64::MAX).unwrap();
    assert_eq!(offsets_of(&pieces, 100), [0, 1, 2, 3, 4, 5]);
    // Wholly held: nothing is added.
    cache.insert(log, 0, run(1, 3, 100, 4096));
    assert_eq!(cache.stats().entries, 2);
    assert_eq!(cache.stats().used_bytes, 2 * 4096);
}

#[test]
fn the_least_recently_used_entries_go_when_the_budget_is_passed() {
    let cache = BatchCache::new(3 * 4096);
    let log = cache.register();
    for first in [0, 10, 20] {
        cache.insert(log, 0, run(first, 2, 100, 4096));
    }
    // 0 is used again, so 10 is now the least recently used.
    assert!(cache.get(log, 0, 1, i64::MAX).is_some());
    cache.insert(log, 0, run(30, 2, 100, 4096));
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.used_bytes), (3, 3 * 4096));
    assert!(cache.get(log, 10, 1, i64::MAX).is_none(), "evicted");
    for kept in [0, 20, 30] {
        assert!(cache.get(log, kept, 1, i64::MAX).is_some(), "{kept} kept");
    }
    // A run larger than the whole budget is not kept at all.
    cache.insert(log, 0, run(40, 2, 100, 4 * 4096));
    assert!(cache.get(log, 40, 1, i64::MAX).is_none());
    assert_eq!(cache.stats().entries, 3);
}

#[test]
fn bytes_handed_out_stay_valid_after_eviction() {
    let cache = BatchCache::new(4096);
    let log = cache.register();
    cache.insert(log, 0, run(0, 2, 100, 4096));
    let pieces = cache.get(log, 0, 1 << 20, i64::MAX).unwrap();
    cache.insert(log, 0, run(2, 2, 100, 4096));
    assert!(cache.get(log, 0, 1, i64::MAX).is_none(), "evicted");
    assert_eq!(offsets_of(&pieces, 100), [0, 1]);
}

#[test]
fn truncation_drops_entries_from_the_cut_and_refuses_reads_started_before_it() {
    let cache = BatchCache::new(1 << 20);
    let log = cache.register();
    cache.insert(log, 0, run(0, 4, 100, 4096));
    cache.insert(log, 0, run(4, 4, 100, 4096));
    let generation = cache.generation(log);
    cache.remove_from(log, 6);
    // The entry holding 6 goes whole; the one before stays.
    assert!(cache.get(log, 4, 1, i64::MAX).is_none());
    let pieces = cache.get(log, 0, 1 << 20, i64::MAX).unwrap();
    assert_eq!(offsets_of(&pieces, 100), [0, 1, 2, 3]);
    // A read of the old log end, finished after the cut, is not kept.
    cache.insert(log, generation, run(4, 4, 100, 4096));
    assert!(cache.get(log, 4, 1, i64::MAX).is_none());
    cache.insert(log, cache.generation(log), run(4, 1, 100, 4096));
    assert!(cache.get(log, 4, 1, i64::MAX).is_some());
}

#[test]
fn deleting_records_and_forgetting_a_log_free_its_entries() {
    let cache = BatchCache::new(1 << 20);
    let log = cache.register();
    let other = cache.register();
    cache.insert(log, 0, run(0, 4, 100, 4096));
    cache.insert(log, 0, run(4, 4, 100, 4096));
    cache.insert(other, 0, run(0, 4, 100, 4096));
    cache.remove_below(log, 5);
    assert!(cache.get(log, 0, 1, i64::MAX).is_none());
    assert!(
        cache.get(log, 5, 1, i64::MAX).is_some(),
        "straddling entry kept"
    );
    cache.forget(log);
    assert!(cache.get(log, 5, 1, i64::MAX).is_none());
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.used_bytes), (1, 4096));
    assert!(
        cache.get(other, 0, 1, i64::MAX).is_some(),
        "other logs untouched"
    );
}

#[test]
fn a_disabled_cache_keeps_nothing() {
    let cache = BatchCache::new(0);
    let log = cache.register();
    assert!(!cache.enabled());
    cache.insert(log, 0, run(0, 4, 100, 4096));
    assert!(cache.get(log, 0, 1, i64::MAX).is_none());
    assert_eq!(cache.stats().used_bytes, 0);
}

#[test]
fn a_scan_of_old_data_does_not_evict_recent_writes() {
    let cache = BatchCache::new(8 * 4096);
    let recent = cache.register();
    let old = cache.register();
    // Written groups fill half the budget.
    for first in [0, 10, 20, 30] {
        cache.insert(recent, 0, run(first, 2, 100, 4096));
    }
    // A consumer catching up on another log: 32 runs read from the disk, each read once,
    // in order, four times what the budget holds.
    for chunk in 0..32 {
        let first = chunk * 10;
        assert!(cache.insert_read(old, 0, run(first, 2, 100, 4096)));
        let got = cache.get(old, first, 1 << 20, i64::MAX).unwrap();
        assert_eq!(got.1, first + 2);
    }
    for first in [0, 10, 20, 30] {
        assert!(
            cache.get(recent, first, 1, i64::MAX).is_some(),
            "the written run at {first} was evicted by the scan"
        );
    }
    // The scan kept what the writes left room for: its last four runs.
    assert_eq!(cache.stats().used_bytes, 8 * 4096);
    assert!(cache.get(old, 270, 1, i64::MAX).is_none());
    assert!(cache.get(old, 280, 1, i64::MAX).is_some());
}

#[test]
fn a_run_read_again_from_an_offset_already_served_is_protected() {
    let cache = BatchCache::new(4 * 4096);
    let old = cache.register();
    cache.insert_read(old, 0, run(0, 4, 100, 4096));
    // The scan that brought it in moves forward through it...
    assert_eq!(cache.get(old, 0, 200, i64::MAX).unwrap().1, 2);
    assert_eq!(cache.get(old, 2, 200, i64::MAX).unwrap().1, 4);
    // ...and later runs of the same scan pass through the cache on probation.
    for chunk in 1..4 {
        let first = chunk * 10;
        cache.insert_read(old, 0, run(first, 2, 100, 4096));
        cache.get(old, first, 1 << 20, i64::MAX).unwrap();
    }
    // A second reader from the start protects the first run...
    assert_eq!(cache.get(old, 0, 1 << 20, i64::MAX).unwrap().1, 4);
    // ...so the next runs of the scan evict the other runs on probation, not it, although
    // it is older than they are in use.
    for chunk in 4..12 {
        let first = chunk * 10;
        cache.insert_read(old, 0, run(first, 2, 100, 4096));
        cache.get(old, first, 1 << 20, i64::MAX).unwrap();
    }
    assert!(
        cache.get(old, 0, 1, i64::MAX).is_some(),
        "the run read twice"
    );
    for evicted in [10, 20, 30, 40, 50, 60, 70, 80] {
        assert!(cache.get(old, evicted, 1, i64::MAX).is_none(), "{evicted}");
    }
    assert_eq!(cache.stats().entries, 4);
}

#[test]
fn a_scan_keeps_what_it_read_ahead_and_drops_what_it_has_read() {
    // Eight runs of budget: six written, and a floor of four runs for the scan.
    let cache = BatchCache::new(8 * 4096);
    let recent = cache.register();
    let old = cache.register();
    for first in [100, 110, 120, 130, 140, 150] {
        cache.insert(recent, 0, run(first, 2, 100, 4096));
    }
    // The consumer reads run 0, the read-ahead brings 10 and 20, the consumer reads 10,
    // the read-ahead brings 30, 40 and 50.
    cache.insert_read(old, 0, run(0, 2, 100, 4096));
    cache.get(old, 0, 1 << 20, i64::MAX).unwrap();
    cache.insert_read(old, 0, run(10, 2, 100, 4096));
    cache.insert_read(old, 0, run(20, 2, 100, 4096));
    cache.get(old, 10, 1 << 20, i64::MAX).unwrap();
    for first in [30, 40, 50] {
        cache.insert_read(old, 0, run(first, 2, 100, 4096));
    }
    // What was read (0, then 10) went first; 20, read ahead and not reached yet, stays.
    for gone in [0, 10] {
        assert!(cache.get(old, gone, 1, i64::MAX).is_none(), "{gone} kept");
    }
    for kept in [20, 30, 40, 50] {
        assert!(
            cache.get(old, kept, 1, i64::MAX).is_some(),
            "{kept} evicted"
        );
    }
}
