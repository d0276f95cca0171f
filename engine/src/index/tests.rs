//! Tests of `SegmentIndex`, and property tests of both indexes against a naive model: a
//! plain list of every batch, searched linearly.

use proptest::prelude::*;

use super::*;

/// Batches back to back from position 0, from `(offset gap, last offset delta, size, max
/// timestamp)`.
fn layout(base_offset: i64, shapes: &[(i64, i64, u32, i64)]) -> Vec<BatchMeta> {
    let mut batches = Vec::with_capacity(shapes.len());
    let (mut offset_next, mut position) = (base_offset, 0);
    for &(gap, delta, size_bytes, max_timestamp_ms) in shapes {
        let base_offset = offset_next + gap;
        let last_offset = base_offset + delta;
        batches.push(BatchMeta {
            base_offset,
            last_offset,
            max_timestamp_ms,
            position,
            size_bytes,
        });
        offset_next = last_offset + 1;
        position += size_bytes;
    }
    batches
}

fn build(base_offset: i64, interval: u32, batches: &[BatchMeta]) -> SegmentIndex {
    let mut index = SegmentIndex::new(base_offset, interval);
    for b in batches {
        index.on_batch_appended(
            b.base_offset,
            b.last_offset,
            b.max_timestamp_ms,
            b.position,
            b.size_bytes,
        );
    }
    index
}

fn encode(index: &SegmentIndex) -> (Vec<u8>, Vec<u8>) {
    let (mut offset_bytes, mut time_bytes) = (Vec::new(), Vec::new());
    index.offset_index().encode(&mut offset_bytes);
    index.time_index().encode(&mut time_bytes);
    (offset_bytes, time_bytes)
}

/// The batches the interval rule indexes, found by walking every batch.
fn model_indexed(interval: u32, batches: &[BatchMeta]) -> Vec<&BatchMeta> {
    let mut indexed: Vec<&BatchMeta> = Vec::new();
    for batch in batches {
        if indexed
            .last()
            .is_none_or(|last| batch.position - last.position >= interval)
        {
            indexed.push(batch);
        }
    }
    indexed
}

/// The time index entries `(timestamp, offset)` the rules give, by walking every batch.
fn model_time_entries(interval: u32, batches: &[BatchMeta]) -> Vec<(i64, i64)> {
    let indexed = model_indexed(interval, batches);
    let (mut entries, mut max) = (Vec::<(i64, i64)>::new(), i64::MIN);
    for batch in batches {
        max = max.max(batch.max_timestamp_ms);
        let is_indexed = indexed.iter().any(|b| b.base_offset == batch.base_offset);
        if is_indexed && entries.last().is_none_or(|&(ts, _)| max > ts) {
            entries.push((max, batch.base_offset));
        }
    }
    entries
}

const BASE: i64 = 10_000;

#[test]
fn check_batch_refuses_what_cannot_come_next() {
    let batches = layout(BASE, &[(0, 4, 100, 1), (0, 0, 100, 2)]);
    let index = build(BASE, 150, &batches);
    assert_eq!(
        (index.offset_next_min(), index.position_next_min()),
        (BASE + 6, 200)
    );
    let next = BatchMeta {
        base_offset: BASE + 6,
        last_offset: BASE + 6,
        max_timestamp_ms: 3,
        position: 200,
        size_bytes: 61,
    };
    assert_eq!(index.check_batch(&next), Ok(()));
    let inverted = BatchMeta {
        last_offset: BASE + 5,
        ..next
    };
    assert!(matches!(
        index.check_batch(&inverted),
        Err(IndexError::InvalidBatch { .. })
    ));
    let empty = BatchMeta {
        size_bytes: 0,
        ..next
    };
    assert!(matches!(
        index.check_batch(&empty),
        Err(IndexError::InvalidBatch { .. })
    ));
    let overlapping = BatchMeta {
        base_offset: BASE + 5,
        ..next
    };
    assert!(matches!(
        index.check_batch(&overlapping),
        Err(IndexError::BatchOutOfOrder { .. })
    ));
    let overlapping = BatchMeta {
        position: 199,
        ..next
    };
    assert!(matches!(
        index.check_batch(&overlapping),
        Err(IndexError::BatchOutOfOrder { .. })
    ));
    let far = BatchMeta {
        last_offset: BASE + (1 << 32),
        ..next
    };
    let range = Err(IndexError::SegmentRangeExceeded {
        base_offset: BASE,
        last_offset: BASE + (1 << 32),
        position_end: 261,
    });
    assert_eq!(index.check_batch(&far), range);
    let last_addressable = BatchMeta {
        last_offset: BASE + i64::from(u32::MAX),
        ..next
    };
    assert_eq!(index.check_batch(&last_addressable), Ok(()));
    let past_4_gib = BatchMeta {
        position: u32::MAX - 10,
        size_bytes: 12,
        ..next
    };
    assert!(matches!(
        index.check_batch(&past_4_gib),
        Err(IndexError::SegmentRangeExceeded { .. })
    ));
}

#[test]
#[should_panic(expected = "bug: appended a batch the index refuses")]
fn appending_out_of_order_is_a_bug() {
    let mut index = build(BASE, 0, &layout(BASE, &[(0, 4, 100, 1)]));
    index.on_batch_appended(BASE + 4, BASE + 4, 1, 100, 100);
}

#[test]
fn lookups_give_offsets_and_positions() {
    // Positions 0, 100, 200, 300; interval 150 indexes 0 and 200.
    let shapes = [
        (0, 9, 100, 50),
        (0, 9, 100, 80),
        (0, 9, 100, 60),
        (0, 9, 100, 90),
    ];
    let index = build(BASE, 150, &layout(BASE, &shapes));
    assert_eq!(index.lookup_offset(BASE + 15), (BASE, 0));
    assert_eq!(index.lookup_offset(BASE + 25), (BASE + 20, 200));
    assert_eq!(index.lookup_timestamp(50), Some((BASE, 0)));
    assert_eq!(index.lookup_timestamp(81), Some((BASE + 20, 200)));
    assert_eq!(index.lookup_timestamp(90), Some((BASE + 20, 200)));
    assert_eq!(index.lookup_timestamp(91), None);
    let max = MaxTimestamp::Known {
        timestamp_ms: 90,
        offset: BASE + 30,
    };
    assert_eq!(index.time_index().max_timestamp(), max);
}

#[test]
fn truncate_to_cuts_both_indexes_and_appends_resume() {
    let batches = layout(BASE, &[(0, 0, 100, 5); 6]);
    let mut index = build(BASE, 0, &batches);
    index.truncate_to(BASE + 3, 300);
    assert_eq!(index, build(BASE, 0, &batches[..3]));
    let b = batches[3];
    index.on_batch_appended(b.base_offset, b.last_offset, 9, b.position, b.size_bytes);
    assert_eq!(index.offset_index().len(), 4);
}

#[test]
#[should_panic(expected = "disagree")]
fn truncate_to_needs_offset_and_position_of_the_same_cut() {
    let mut index = build(BASE, 0, &layout(BASE, &[(0, 0, 100, 5); 6]));
    index.truncate_to(BASE + 3, 150);
}

#[test]
fn decode_continues_where_the_files_end() {
    let batches = layout(BASE, &[(0, 2, 100, 5); 8]);
    let index = build(BASE, 250, &batches[..5]);
    let (offset_bytes, time_bytes) = encode(&index);
    let mut decoded = SegmentIndex::decode(BASE, 250, &offset_bytes, &time_bytes).unwrap();
    assert_eq!(
        decoded.offset_index().entries(),
        index.offset_index().entries()
    );
    assert_eq!(decoded.time_index().entries(), index.time_index().entries());
    for b in &batches[5..] {
        decoded.check_batch(b).unwrap();
        decoded.on_batch_appended(
            b.base_offset,
            b.last_offset,
            b.max_timestamp_ms,
            b.position,
            b.size_bytes,
        );
    }
    let whole = build(BASE, 250, &batches);
    assert_eq!(
        decoded.offset_index().entries(),
        whole.offset_index().entries()
    );
}

#[test]
fn decode_refuses_files_of_different_indexes() {
    let shapes = [(0, 0, 100, 1), (0, 0, 100, 2), (0, 0, 100, 3)];
    let dense = build(BASE, 0, &layout(BASE, &shapes));
    let sparse = build(BASE, 200, &layout(BASE, &shapes));
    let (offset_bytes, _) = encode(&sparse);
    let (_, time_bytes) = encode(&dense);
    let found = SegmentIndex::decode(BASE, 0, &offset_bytes, &time_bytes);
    assert_eq!(found, Err(IndexError::IndexesDisagree { offset: BASE + 1 }));
    // Swapped files have the wrong magic.
    let (offset_bytes, time_bytes) = encode(&dense);
    let found = SegmentIndex::decode(BASE, 0, &time_bytes, &offset_bytes);
    assert!(matches!(
        found,
        Err(IndexError::BadMagic {
            kind: IndexKind::Offset,
            ..
        })
    ));
}

#[test]
fn rebuild_from_stops_at_a_damaged_batch() {
    let mut batches = layout(BASE, &[(0, 1, 100, 5); 6]);
    batches[4].base_offset = BASE; // a flipped baseOffset, which the batch CRC does not cover
    let mut index = build(BASE, 0, &batches[..1]);
    let found = index.rebuild_from(batches.iter().copied());
    assert!(matches!(
        found,
        Err(IndexError::BatchOutOfOrder { position: 400, .. })
    ));
    assert_eq!(index, build(BASE, 0, &batches[..4]));
}

/// Up to 60 batches with small gaps, sizes and timestamps (so ties and reorderings occur).
fn batches_strategy() -> impl Strategy<Value = (i64, u32, Vec<BatchMeta>)> {
    let shape = (0..3i64, 0..5i64, 1..300u32, -20..100i64);
    (
        0..1_000_000_000i64,
        0..600u32,
        proptest::collection::vec(shape, 0..60),
    )
        .prop_map(|(base, interval, shapes)| (base, interval, layout(base, &shapes)))
}

proptest! {
    #[test]
    fn encode_decode_round_trips((base, interval, batches) in batches_strategy()) {
        let index = build(base, interval, &batches);
        let (offset_bytes, time_bytes) = encode(&index);
        let decoded = SegmentIndex::decode(base, interval, &offset_bytes, &time_bytes).unwrap();
        prop_assert_eq!(decoded.offset_index().entries(), index.offset_index().entries());
        prop_assert_eq!(decoded.time_index().entries(), index.time_index().entries());
        prop_assert_eq!(decoded.time_index().max_timestamp(), index.time_index().max_timestamp());
        prop_assert!(decoded.offset_next_min() <= index.offset_next_min());
        prop_assert!(decoded.position_next_min() <= index.position_next_min());
        prop_assert_eq!(encode(&decoded), (offset_bytes, time_bytes));
    }

    #[test]
    fn any_single_byte_corruption_is_detected(
        (base, interval, batches) in batches_strategy(),
        at in any::<prop::sample::Index>(),
        flip in 1..=255u8,
        time_file in any::<bool>(),
    ) {
        let index = build(base, interval, &batches);
        let (mut offset_bytes, mut time_bytes) = encode(&index);
        if time_file {
            let at = at.index(time_bytes.len());
            time_bytes[at] ^= flip;
            prop_assert!(TimeIndex::decode(base, &time_bytes).is_err());
        } else {
            let at = at.index(offset_bytes.len());
            offset_bytes[at] ^= flip;
            prop_assert!(OffsetIndex::decode(base, interval, &offset_bytes).is_err());
        }
        prop_assert!(SegmentIndex::decode(base, interval, &offset_bytes, &time_bytes).is_err());
    }

    #[test]
    fn any_truncation_is_detected(
        (base, interval, batches) in batches_strategy(),
        at in any::<prop::sample::Index>(),
    ) {
        let (offset_bytes, time_bytes) = encode(&build(base, interval, &batches));
        let offset_len = at.index(offset_bytes.len());
        prop_assert!(OffsetIndex::decode(base, interval, &offset_bytes[..offset_len]).is_err());
        let time_len = at.index(time_bytes.len());
        prop_assert!(TimeIndex::decode(base, &time_bytes[..time_len]).is_err());
    }

    #[test]
    fn offset_lookup_matches_a_linear_scan(
        (base, interval, batches) in batches_strategy(),
        targets in proptest::collection::vec(-10..400i64, 1..20),
    ) {
        let index = build(base, interval, &batches);
        let indexed = model_indexed(interval, &batches);
        let model: Vec<_> = indexed.iter().map(|b| (b.base_offset, b.position)).collect();
        let entries: Vec<_> =
            index.offset_index().entries().iter().map(|e| (e.offset(base), e.position)).collect();
        prop_assert_eq!(entries, model.clone());
        for target in targets.into_iter().map(|t| base + t) {
            let expected = model.iter().rev().find(|&&(offset, _)| offset <= target);
            prop_assert_eq!(index.lookup_offset(target), *expected.unwrap_or(&(base, 0)));
        }
    }

    #[test]
    fn time_lookup_leads_a_scan_to_the_first_batch_at_or_after_the_time(
        (base, interval, batches) in batches_strategy(),
        targets in proptest::collection::vec(-30..110i64, 1..20),
    ) {
        let index = build(base, interval, &batches);
        let model = model_time_entries(interval, &batches);
        let entries: Vec<_> =
            index.time_index().entries().iter().map(|e| (e.timestamp_ms, e.offset(base))).collect();
        prop_assert_eq!(entries, model.clone());
        for target in targets {
            let first = batches.iter().find(|b| b.max_timestamp_ms >= target);
            let found = index.lookup_timestamp(target);
            prop_assert_eq!(found.is_some(), first.is_some());
            let (Some((start, position)), Some(first)) = (found, first) else { continue };
            let expected_start = model.iter().rev().find(|&&(ts, _)| ts < target);
            prop_assert_eq!(start, expected_start.map_or(base, |&(_, offset)| offset));
            let scanned = batches
                .iter()
                .skip_while(|b| b.position < position)
                .find(|b| b.max_timestamp_ms >= target);
            prop_assert_eq!(scanned, Some(first));
        }
    }

    #[test]
    fn truncation_equals_building_the_prefix(
        (base, interval, batches) in batches_strategy(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut index = build(base, interval, &batches);
        let max_before = index.time_index().max_timestamp();
        let kept = cut.index(batches.len() + 1);
        let (offset, position) = batches
            .get(kept)
            .map_or((index.offset_next_min(), index.position_next_min() as u32), |b| {
                (b.base_offset, b.position)
            });
        index.truncate_to(offset, position);
        let prefix = build(base, interval, &batches[..kept]);
        prop_assert_eq!(index.offset_index().entries(), prefix.offset_index().entries());
        prop_assert_eq!(index.time_index().entries(), prefix.time_index().entries());
        let expected_max = match max_before {
            _ if kept == 0 => MaxTimestamp::NoBatch,
            MaxTimestamp::Known { offset: max_offset, .. } if max_offset >= offset => {
                MaxTimestamp::Unknown
            }
            _ => prefix.time_index().max_timestamp(),
        };
        prop_assert_eq!(index.time_index().max_timestamp(), expected_max);
        prop_assert_eq!(index.offset_next_min(), offset, "the log ends before the cut");
        prop_assert_eq!(index.position_next_min(), prefix.position_next_min());
    }

    #[test]
    fn rebuild_equals_incremental((base, interval, batches) in batches_strategy()) {
        let mut rebuilt = build(base, interval, &batches[..batches.len() / 2]);
        rebuilt.rebuild_from(batches.iter().copied()).unwrap();
        prop_assert_eq!(rebuilt, build(base, interval, &batches));
    }
}

#[test]
fn set_end_makes_a_decoded_index_exact_again() {
    let batches = layout(BASE, &[(0, 2, 100, 5); 8]);
    let index = build(BASE, 250, &batches);
    let (offset_bytes, time_bytes) = encode(&index);
    let mut decoded = SegmentIndex::decode(BASE, 250, &offset_bytes, &time_bytes).unwrap();
    assert!(
        decoded.position_next_min() < 800,
        "a decode knows only a lower bound"
    );
    decoded.set_end(BASE + 24, 800);
    assert_eq!(
        (decoded.offset_next_min(), decoded.position_next_min()),
        (index.offset_next_min(), index.position_next_min())
    );
    let gap = BatchMeta {
        position: 700,
        ..batches[7]
    };
    assert!(
        decoded.check_batch(&gap).is_err(),
        "no batch before the end"
    );
}

#[test]
#[should_panic(expected = "below the indexed batches")]
fn set_end_refuses_an_end_inside_the_indexed_batches() {
    let mut index = build(BASE, 0, &layout(BASE, &[(0, 0, 100, 5); 6]));
    index.set_end(BASE + 6, 550);
}
