//! The recovery scan's fuzz properties: the scan of one segment file holding arbitrary
//! bytes, read in chunks of a size the input chooses.

use arbitrary::Unstructured;

use super::fix_batch_crcs;
use crate::batch::{validate_prefix, RecordBatch, BATCH_SIZE_BYTES_MAX, HEADER_SIZE_BYTES};
use crate::index::{IndexError, MaxTimestamp, SegmentIndex, SEGMENT_BASE_OFFSET_MAX};
use crate::limits::RECOVERY_READ_CHUNK_BYTES;
use crate::log::{scan_segment, ScanStop, SegmentScan};

/// Index intervals an input runs with: an entry for every batch, a few, only the first.
const INTERVALS: [u32; 4] = [0, 64, 4096, u32::MAX];

/// Scans the bytes after two bytes of choices (the read chunk size; the index interval and
/// whether to give every batch a correct CRC first) as a segment based at the first batch's
/// base offset, as a segment's name says, and checks the scan against a model, against
/// itself with the engine's chunk size and cut to its valid prefix, and the index it left.
pub fn recovery_scan(data: &[u8]) {
    let mut choices = Unstructured::new(data);
    let (Ok(chunk_choice), Ok(flags)) = (choices.arbitrary::<u8>(), choices.arbitrary::<u8>())
    else {
        return;
    };
    let chunk_bytes = 2 + usize::from(chunk_choice);
    let interval = INTERVALS[usize::from(flags >> 1 & 0b11)];
    let mut bytes = choices.take_rest().to_vec();
    if flags & 1 != 0 {
        fix_batch_crcs(&mut bytes);
    }
    let base_offset = bytes
        .first_chunk::<8>()
        .map(|raw| i64::from_be_bytes(*raw))
        .filter(|base| (0..=SEGMENT_BASE_OFFSET_MAX).contains(base))
        .unwrap_or(0);

    let scan = scan_segment(base_offset, interval, &bytes, RECOVERY_READ_CHUNK_BYTES);
    let chunked = scan_segment(base_offset, interval, &bytes, chunk_bytes);
    assert_eq!(
        chunked, scan,
        "the scan depends on its chunk size {chunk_bytes}"
    );
    let model = Model::of(base_offset, &bytes);
    assert_eq!(
        (scan.valid_bytes, scan.batches, &scan.stop),
        (model.valid_bytes, model.batches.len() as u64, &model.stop),
        "the scan disagrees with the validator"
    );
    assert!(
        scan.valid_bytes <= bytes.len() as u64,
        "valid bytes past the input"
    );
    assert_eq!(scan.size_bytes, scan.valid_bytes);
    assert_eq!(scan.offset_next, model.offset_next);
    assert_eq!(scan.max_timestamp, model.max_timestamp());
    assert_eq!(
        scan.stop.is_damage(),
        matches!(
            scan.stop,
            ScanStop::OffsetGap { .. } | ScanStop::Unindexable { .. }
        ) || matches!(&scan.stop, ScanStop::Invalid { error, .. }
                if !matches!(error, crate::batch::BatchError::Truncated { .. }))
    );

    let valid = &bytes[..scan.valid_bytes as usize];
    let rescan = scan_segment(base_offset, interval, valid, chunk_bytes);
    let expected = SegmentScan {
        stop: ScanStop::EndOfFile,
        ..scan.clone()
    };
    assert_eq!(rescan, expected, "the valid prefix scans differently");

    check_index(&scan, &model, base_offset, interval);
}

/// What the scan should find, computed from the whole input at once.
struct Model {
    /// `(position, base offset, last offset, max timestamp)` of each batch kept.
    batches: Vec<(u64, i64, i64, i64)>,
    valid_bytes: u64,
    offset_next: i64,
    stop: ScanStop,
}

impl Model {
    fn of(base_offset: i64, bytes: &[u8]) -> Model {
        let prefix = validate_prefix(bytes, BATCH_SIZE_BYTES_MAX);
        let mut model = Model {
            batches: Vec::new(),
            valid_bytes: 0,
            offset_next: base_offset,
            stop: ScanStop::EndOfFile,
        };
        let mut rest = &bytes[..prefix.valid.size_bytes];
        while let Ok((batch, next)) = RecordBatch::parse(rest) {
            let position = model.valid_bytes;
            if batch.base_offset() != model.offset_next {
                model.stop = ScanStop::OffsetGap {
                    position,
                    offset: batch.base_offset(),
                    expected: model.offset_next,
                };
                return model;
            }
            let last_offset = batch
                .base_offset()
                .saturating_add(i64::from(batch.last_offset_delta()));
            let position_end = position + batch.size_bytes() as u64;
            if last_offset - base_offset > i64::from(u32::MAX) || position_end > 1 << 32 {
                let error = IndexError::SegmentRangeExceeded {
                    base_offset,
                    last_offset,
                    position_end,
                };
                model.stop = ScanStop::Unindexable { position, error };
                return model;
            }
            let max_timestamp = batch.max_timestamp();
            model
                .batches
                .push((position, batch.base_offset(), last_offset, max_timestamp));
            model.offset_next = last_offset + 1;
            model.valid_bytes += batch.size_bytes() as u64;
            rest = next;
        }
        let position = model.valid_bytes;
        let after = &bytes[position as usize..];
        model.stop = match prefix.error {
            None => ScanStop::EndOfFile,
            Some(_) if !after.is_empty() && zeros(after) => ScanStop::Zeros { position },
            Some(error) => ScanStop::Invalid { position, error },
        };
        model
    }

    fn max_timestamp(&self) -> i64 {
        self.batches
            .iter()
            .map(|&(.., max)| max)
            .fold(i64::MIN, i64::max)
    }
}

/// Whether a header's worth of `bytes` (or all of it, if shorter) is zeros.
fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().take(HEADER_SIZE_BYTES).all(|&byte| byte == 0)
}

/// Checks the index the scan left: entries at scanned batches, the first batch always
/// indexed, lookups within the entries, and index files that decode to it.
fn check_index(scan: &SegmentScan, model: &Model, base_offset: i64, interval: u32) {
    let index = &scan.index;
    let offsets = index.offset_index();
    let times = index.time_index();
    let batch_at = |position: u32| {
        model
            .batches
            .iter()
            .find(|&&(at, ..)| at == u64::from(position))
    };
    for entry in offsets.entries() {
        let Some(&(_, offset, ..)) = batch_at(entry.position) else {
            panic!("an offset entry at byte {} starts no batch", entry.position);
        };
        assert_eq!(entry.offset(base_offset), offset);
    }
    assert_eq!(offsets.entries().is_empty(), model.batches.is_empty());
    let mut running_max = i64::MIN;
    let mut max = MaxTimestamp::NoBatch;
    for &(_, offset, _, batch_max) in &model.batches {
        if running_max < batch_max || max == MaxTimestamp::NoBatch {
            max = MaxTimestamp::Known {
                timestamp_ms: batch_max,
                offset,
            };
        }
        running_max = running_max.max(batch_max);
        if let Some(entry) = times
            .entries()
            .iter()
            .find(|e| e.offset(base_offset) == offset)
        {
            assert_eq!(entry.timestamp_ms, running_max, "a time entry's time");
        }
    }
    assert_eq!(times.max_timestamp(), max);
    assert_eq!(
        (index.offset_next_min(), index.position_next_min()),
        (scan.offset_next, scan.valid_bytes)
    );

    let mut targets = vec![i64::MIN, base_offset - 1, scan.offset_next, i64::MAX];
    targets.extend(
        model
            .batches
            .iter()
            .flat_map(|&(_, first, last, _)| [first, last]),
    );
    for target in targets {
        let (offset, position) = index.lookup_offset(target);
        let from_entry = offsets
            .entries()
            .iter()
            .rev()
            .find(|e| e.offset(base_offset) <= target)
            .map_or((base_offset, 0), |e| (e.offset(base_offset), e.position));
        assert_eq!((offset, position), from_entry, "lookup of offset {target}");
        assert!(u64::from(position) <= scan.valid_bytes);
    }
    let mut times_targets = vec![i64::MIN, i64::MAX];
    times_targets.extend(model.batches.iter().map(|&(.., max)| max));
    for target in times_targets {
        let found = index.lookup_timestamp(target);
        let Some((offset, position)) = found else {
            assert!(running_max < target || model.batches.is_empty());
            continue;
        };
        assert!(u64::from(position) <= scan.valid_bytes);
        for &(_, first, _, batch_max) in &model.batches {
            if first < offset {
                assert!(
                    batch_max < target,
                    "a lookup of {target} skips batch {first}"
                );
            }
        }
    }

    let (mut offset_file, mut time_file) = (Vec::new(), Vec::new());
    offsets.encode(&mut offset_file);
    times.encode(&mut time_file);
    match SegmentIndex::decode(base_offset, interval, &offset_file, &time_file) {
        Ok(mut decoded) => {
            decoded.set_end(scan.offset_next, scan.valid_bytes);
            assert_eq!(&decoded, index, "the index files decode to another index");
        }
        Err(error) => panic!("the scanned index's files do not decode: {error}"),
    }
}
