//! The log's invariants stop the shard before a wrong log is written: a group whose
//! validated batches no longer parse, or whose sizes differ from what was validated, and a
//! log whose offsets or active segment were left inconsistent between groups (as a bug
//! elsewhere would leave them) panic before the next write instead of writing it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bytes::Bytes;
use futures::channel::oneshot;

use super::appender::Pending;
use super::segment::segment_path;
use super::*;
use crate::batch::{BatchBuilder, BatchInfo};
use crate::rt;
use crate::storage::fault::FaultStorage;
use crate::testing::values as record_values;

fn id() -> PartitionId {
    PartitionId {
        topic: Arc::from("invariants"),
        partition: 0,
    }
}

fn batch(tag: u32) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..4 {
        let value = format!("{tag}-{i}");
        builder.push(0, None, Some(value.as_bytes()), &[]).unwrap();
    }
    Bytes::from(builder.build())
}

/// A log opened on `storage` (its runtime gone: only its state is used).
fn opened(storage: &FaultStorage, dir: &Path) -> PartitionLog<FaultStorage> {
    let open = PartitionLog::open(storage.clone(), dir, id(), TopicConfig::default());
    rt::block_on(open).unwrap().unwrap()
}

/// An append of `batches` as the appender receives it, claiming `info` was validated.
fn pending(batches: Bytes, info: BatchInfo) -> Pending {
    let (reply, _) = oneshot::channel();
    Pending {
        batches,
        info,
        producer: None,
        ack: Ack::Written,
        replicated: false,
        reply,
    }
}

#[test]
#[should_panic(expected = "does not parse")]
fn a_group_batch_that_does_not_parse_is_a_panic_not_a_skip() {
    let log = opened(&FaultStorage::new(), Path::new("/data/unparsable-0"));
    let info = BatchInfo {
        batch_count: 1,
        record_count: 1,
        offset_count: 1,
        max_timestamp: Some(0),
        size_bytes: 100,
    };
    // A negative batch length: the header cannot be read, as if validation had been
    // skipped or the buffer changed after it.
    let garbage = Bytes::from(vec![0xab; 100]);
    let _ = group::stamp(&log.shared, vec![pending(garbage, info)]);
}

#[test]
#[should_panic(expected = "other bytes or offsets than were validated")]
fn a_group_append_of_other_bytes_than_validated_is_a_panic_in_release_builds_too() {
    let log = opened(&FaultStorage::new(), Path::new("/data/mismatch-0"));
    let bytes = batch(0);
    let mut info = crate::batch::validate(&bytes, usize::MAX).unwrap();
    info.size_bytes += 1;
    let _ = group::stamp(&log.shared, vec![pending(bytes, info)]);
}

/// Appends batch 0, breaks the log's state with `corrupt`, appends batch 1: returns the
/// panic's message and the values in the segment file afterwards.
fn append_after(corrupt: impl FnOnce(&mut State<FaultStorage>)) -> (String, Vec<String>) {
    let storage = FaultStorage::new();
    let dir = Path::new("/data/corrupt-0");
    let run = catch_unwind(AssertUnwindSafe(|| {
        rt::block_on(async {
            let log = PartitionLog::open(storage.clone(), dir, id(), TopicConfig::default())
                .await
                .unwrap();
            log.append(batch(0), Ack::Written).await.unwrap();
            corrupt(&mut log.shared.state.borrow_mut());
            let _ = log.append(batch(1), Ack::Written).await;
        })
    }));
    let Err(panic) = run else {
        panic!("the second append went through");
    };
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
        .unwrap_or_default();
    let bytes = storage.file_bytes(&segment_path(dir, 0, "log")).unwrap();
    (message, record_values(&bytes))
}

#[test]
fn offsets_left_out_of_order_stop_the_next_group_before_it_is_written() {
    let (message, values) = append_after(|state| state.offset_assign_next -= 1);
    assert!(message.contains("offsets out of order"), "{message}");
    assert_eq!(
        values,
        ["0-0", "0-1", "0-2", "0-3"],
        "batch 1 was not written"
    );
}

#[test]
fn an_active_segment_whose_size_moved_stops_the_next_group_before_it_is_written() {
    let (message, values) = append_after(|state| {
        let active = state.segments.values_mut().next_back().unwrap();
        active.size_bytes += 100;
    });
    assert!(message.contains("active segment 0 ends at"), "{message}");
    assert_eq!(
        values,
        ["0-0", "0-1", "0-2", "0-3"],
        "no batch after a hole"
    );
}
