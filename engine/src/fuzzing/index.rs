//! The index decoders' fuzz properties: arbitrary `.index` and `.timeindex` files, and
//! indexes built from arbitrary sequences of appends and truncations.

use arbitrary::{Result, Unstructured};

use crate::index::{
    BatchMeta, MaxTimestamp, OffsetIndex, SegmentIndex, TimeIndex, OFFSET_INDEX_HEADER_SIZE_BYTES,
    SEGMENT_BASE_OFFSET_MAX, TIME_INDEX_HEADER_SIZE_BYTES,
};

/// Index intervals an input runs with.
const INTERVALS: [u32; 4] = [0, 64, 4096, u32::MAX];

/// Where each file keeps its CRC (`index/offset.rs`, `index/time.rs`).
const OFFSET_CRC_AT: usize = OFFSET_INDEX_HEADER_SIZE_BYTES - 4;
const TIME_CRC_AT: usize = TIME_INDEX_HEADER_SIZE_BYTES - 4;

/// The first byte chooses: bit 0, write correct CRCs into the files; bit 1, build an index
/// from appends instead of decoding files; bits 2-3, the index interval.
pub fn index_decode(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(mode) = input.arbitrary::<u8>() else {
        return;
    };
    let interval = INTERVALS[usize::from(mode >> 2 & 0b11)];
    if mode & 0b10 == 0 {
        decode_files(input, mode & 1 != 0, interval);
    } else {
        // Running out of input ends the sequence; what was built is checked.
        let _ = build_and_truncate(&mut input, interval);
    }
}

/// Decodes an offset index file and a time index file cut from the input, each alone and
/// together, and checks what decodes.
fn decode_files(mut input: Unstructured<'_>, fix_crcs: bool, interval: u32) {
    let Ok(offset_file_len) = input.arbitrary::<u16>() else {
        return;
    };
    let rest = input.take_rest();
    let (offset_file, time_file) = rest.split_at(usize::from(offset_file_len).min(rest.len()));
    let (mut offset_file, mut time_file) = (offset_file.to_vec(), time_file.to_vec());
    if fix_crcs {
        fix_crc(&mut offset_file, OFFSET_CRC_AT);
        fix_crc(&mut time_file, TIME_CRC_AT);
    }
    let base_offset = [&offset_file, &time_file]
        .into_iter()
        .find_map(|file| file.get(8..16))
        .map(|raw| {
            i64::from_le_bytes([
                raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
            ])
        })
        .filter(|base| (0..=SEGMENT_BASE_OFFSET_MAX).contains(base))
        .unwrap_or(0);

    let offsets = OffsetIndex::decode(base_offset, interval, &offset_file);
    if let Ok(offsets) = &offsets {
        let mut encoded = Vec::new();
        offsets.encode(&mut encoded);
        assert_eq!(
            encoded, offset_file,
            "a decoded offset index encodes otherwise"
        );
        check_offset_lookups(offsets);
    }
    let times = TimeIndex::decode(base_offset, &time_file);
    if let Ok(times) = &times {
        let mut encoded = Vec::new();
        times.encode(&mut encoded);
        assert_eq!(encoded, time_file, "a decoded time index encodes otherwise");
        check_time_lookups(times);
    }
    let Ok(mut index) = SegmentIndex::decode(base_offset, interval, &offset_file, &time_file)
    else {
        return;
    };
    let (Ok(offsets), Ok(times)) = (offsets, times) else {
        panic!("a segment index decoded from a file that does not decode alone");
    };
    assert_eq!(
        (index.offset_index(), index.time_index()),
        (&offsets, &times)
    );
    check_segment_index(&index);
    // What recovery does with a closed segment's decoded index: cut it at its last entry
    // and scan the log from there.
    let (offset, position) = index.lookup_offset(i64::MAX);
    index.truncate_to(offset, position);
    index.set_end(offset, u64::from(position));
    let batch = BatchMeta {
        base_offset: offset,
        last_offset: offset,
        max_timestamp_ms: 0,
        position,
        size_bytes: 1,
    };
    if index.check_batch(&batch).is_ok() {
        index.on_batch_appended(offset, offset, 0, position, 1);
    }
    check_segment_index(&index);
}

/// Writes the CRC-32C of everything but the CRC field into a file long enough to hold one.
fn fix_crc(file: &mut [u8], crc_at: usize) {
    if file.len() < crc_at + 4 {
        return;
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&file[..crc_at]), &file[crc_at + 4..]);
    file[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Offsets to look up in an index: the extremes, and around every entry.
fn offset_targets(base_offset: i64, entries: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut targets = vec![i64::MIN, base_offset - 1, base_offset, i64::MAX];
    for offset in entries {
        targets.extend([offset - 1, offset, offset + 1]);
    }
    targets
}

/// Lookups return the last entry at or before the target (or the segment's start), as a
/// linear search does.
fn check_offset_lookups(offsets: &OffsetIndex) {
    let base = offsets.base_offset();
    for target in offset_targets(base, offsets.entries().iter().map(|e| e.offset(base))) {
        let expected = offsets
            .entries()
            .iter()
            .rev()
            .find(|e| e.offset(base) <= target)
            .map_or((base, 0), |e| (e.offset(base), e.position));
        assert_eq!(
            offsets.lookup(target),
            expected,
            "offset lookup of {target}"
        );
    }
}

/// Lookups return the last entry with an earlier timestamp (or the segment's start), or
/// nothing when no batch can be at or after the target.
fn check_time_lookups(times: &TimeIndex) {
    let base = times.base_offset();
    let mut targets = vec![i64::MIN, i64::MAX];
    for entry in times.entries() {
        targets.extend([
            entry.timestamp_ms.saturating_sub(1),
            entry.timestamp_ms,
            entry.timestamp_ms.saturating_add(1),
        ]);
    }
    if let MaxTimestamp::Known { timestamp_ms, .. } = times.max_timestamp() {
        targets.extend([timestamp_ms, timestamp_ms.saturating_add(1)]);
    }
    for target in targets {
        let none = match times.max_timestamp() {
            MaxTimestamp::NoBatch => true,
            MaxTimestamp::Known { timestamp_ms, .. } => target > timestamp_ms,
            MaxTimestamp::Unknown => false,
        };
        let expected = (!none).then(|| {
            times
                .entries()
                .iter()
                .rev()
                .find(|e| e.timestamp_ms < target)
                .map_or(base, |e| e.offset(base))
        });
        assert_eq!(times.lookup(target), expected, "time lookup of {target}");
    }
}

/// Checks a segment index's two halves against each other and its lookups against its
/// entries.
fn check_segment_index(index: &SegmentIndex) {
    let offsets = index.offset_index();
    let times = index.time_index();
    let base = index.base_offset();
    check_offset_lookups(offsets);
    check_time_lookups(times);
    for entry in times.entries() {
        let offset = entry.offset(base);
        assert!(
            offsets.entries().iter().any(|e| e.offset(base) == offset),
            "time entry at {offset} without an offset entry"
        );
    }
    if let Some(last) = offsets.entries().last() {
        assert!(index.offset_next_min() > last.offset(base));
        assert!(index.position_next_min() > u64::from(last.position));
    }
    let mut targets = vec![i64::MIN, i64::MAX];
    targets.extend(times.entries().iter().map(|e| e.timestamp_ms));
    for target in targets {
        if let Some((offset, position)) = index.lookup_timestamp(target) {
            let is_entry = offsets
                .entries()
                .iter()
                .any(|e| (e.offset(base), e.position) == (offset, position));
            assert!(is_entry || (offset, position) == (base, 0));
        }
    }
}

/// Builds an index from appends and truncations the input describes, checking after each
/// step that it matches an index rebuilt from the batches it still holds, and that its
/// files decode to it.
fn build_and_truncate(input: &mut Unstructured<'_>, interval: u32) -> Result<()> {
    let base_offset = match input.int_in_range(0..=3u8)? {
        0 => 0,
        1 => SEGMENT_BASE_OFFSET_MAX,
        _ => input.int_in_range(0..=SEGMENT_BASE_OFFSET_MAX)?,
    };
    let mut index = SegmentIndex::new(base_offset, interval);
    let mut batches: Vec<BatchMeta> = Vec::new();
    // An exhausted `Unstructured` keeps answering zeros: stop when the input is used up.
    let result = (|| loop {
        if input.is_empty() {
            return Ok(());
        }
        if input.ratio(1, 8)? && !batches.is_empty() {
            let keep = input.choose_index(batches.len())?;
            let cut = batches[keep];
            batches.truncate(keep);
            index.truncate_to(cut.base_offset, cut.position);
            index.set_end(cut.base_offset, u64::from(cut.position));
        } else {
            let batch = next_batch(input, &index)?;
            match index.check_batch(&batch) {
                Ok(()) => {
                    index.on_batch_appended(
                        batch.base_offset,
                        batch.last_offset,
                        batch.max_timestamp_ms,
                        batch.position,
                        batch.size_bytes,
                    );
                    batches.push(batch);
                }
                Err(_) => assert!(!fits(&index, &batch), "a fitting batch refused"),
            }
        }
        check_built(&index, &batches, interval);
    })();
    check_built(&index, &batches, interval);
    result
}

/// The next batch: usually right after the previous one, sometimes with a gap, sometimes
/// anywhere.
fn next_batch(input: &mut Unstructured<'_>, index: &SegmentIndex) -> Result<BatchMeta> {
    let base_offset = if input.ratio(1, 16)? {
        input.arbitrary()?
    } else {
        index
            .offset_next_min()
            .saturating_add(i64::from(input.arbitrary::<u8>()? / 4))
    };
    let offset_count = if input.ratio(1, 16)? {
        i64::from(input.arbitrary::<u32>()?)
    } else {
        i64::from(input.int_in_range(0..=8u8)?)
    };
    let position = if input.ratio(1, 16)? {
        input.arbitrary()?
    } else {
        u32::try_from(index.position_next_min())
            .unwrap_or(u32::MAX)
            .saturating_add(u32::from(input.arbitrary::<u8>()? / 8))
    };
    Ok(BatchMeta {
        base_offset,
        last_offset: base_offset.saturating_add(offset_count - 1),
        max_timestamp_ms: input.arbitrary()?,
        position,
        size_bytes: u32::from(input.arbitrary::<u16>()?),
    })
}

/// Whether `batch` can be appended to `index`, restated from `check_batch`'s contract.
fn fits(index: &SegmentIndex, batch: &BatchMeta) -> bool {
    let base = index.base_offset();
    batch.last_offset >= batch.base_offset
        && batch.size_bytes > 0
        && batch.base_offset >= index.offset_next_min()
        && u64::from(batch.position) >= index.position_next_min()
        && batch.last_offset - base <= i64::from(u32::MAX)
        && u64::from(batch.position) + u64::from(batch.size_bytes) <= 1 << 32
}

/// Checks a built index against one rebuilt from `batches`, and its files' round trip.
fn check_built(index: &SegmentIndex, batches: &[BatchMeta], interval: u32) {
    let mut rebuilt = SegmentIndex::new(index.base_offset(), interval);
    if let Err(error) = rebuilt.rebuild_from(batches.iter().copied()) {
        panic!("the batches an index took do not rebuild it: {error}");
    }
    assert_eq!(
        index.offset_index().entries(),
        rebuilt.offset_index().entries(),
        "offset entries differ from a rebuild"
    );
    let times = index.time_index();
    if times.max_timestamp() != MaxTimestamp::Unknown {
        let rebuilt = rebuilt.time_index();
        assert_eq!(
            times.entries(),
            rebuilt.entries(),
            "time entries differ from a rebuild"
        );
        assert_eq!(times.max_timestamp(), rebuilt.max_timestamp());
    }
    check_segment_index(index);
    let (mut offset_file, mut time_file) = (Vec::new(), Vec::new());
    index.offset_index().encode(&mut offset_file);
    index.time_index().encode(&mut time_file);
    let decoded = SegmentIndex::decode(index.base_offset(), interval, &offset_file, &time_file);
    match decoded {
        Ok(mut decoded) => {
            // After appends the halves keep looser lower bounds of the end than the whole;
            // made exact on both sides, the two must be equal.
            let (offset_next, position_next) = (index.offset_next_min(), index.position_next_min());
            decoded.set_end(offset_next, position_next);
            let mut exact = index.clone();
            exact.set_end(offset_next, position_next);
            assert_eq!(decoded, exact, "an index's files decode to another index");
        }
        Err(error) => panic!("an index's own files do not decode: {error}"),
    }
}
