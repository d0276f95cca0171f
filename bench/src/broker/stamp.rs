//! End-to-end time stamps: an `e2e` run writes, into the first 8 bytes of every record's
//! value, the time its request is sent (nanoseconds on a [`Clock`] the producers and the
//! consumers of the process share, little-endian), moves the batch's `CreateTime` to the
//! wall clock and reseals the CRC; the consumer reads the stamps back from the fetched
//! records. The places to write are found once per prebuilt request frame, before anything
//! is timed ([`StampSites::locate`]); a send then costs 8 bytes per record plus one CRC-32C
//! pass over the batch.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringlog_engine::batch::{restamp_create_time, RecordBatch, HEADER_SIZE_BYTES};

use crate::error::BenchError;

/// Bytes of a record value that hold its stamp.
pub const STAMP_BYTES: usize = 8;

/// Monotonic nanoseconds since the clock was made; copies read the same clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the clock started.
    pub fn now_ns(self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The time from `stamp_ns` to now (zero if the stamp lies ahead).
    pub fn since(self, stamp_ns: u64) -> Duration {
        Duration::from_nanos(self.now_ns().saturating_sub(stamp_ns))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Where, in one request frame, its batch starts and each record's value starts.
#[derive(Debug, Clone)]
pub struct StampSites {
    batch_at: usize,
    values_at: Vec<usize>,
}

impl StampSites {
    /// Finds `batch` (the one record batch `frame` carries) inside `frame` and its records'
    /// values; every value must hold at least [`STAMP_BYTES`].
    pub fn locate(frame: &[u8], batch: &[u8]) -> Result<StampSites, BenchError> {
        let header = batch.get(..HEADER_SIZE_BYTES).ok_or_else(|| {
            BenchError::InvalidArguments("a batch shorter than its header".into())
        })?;
        // The records sit at the end of a Produce request, followed only by tagged fields:
        // search backwards.
        let batch_at = frame
            .windows(header.len())
            .rposition(|window| window == header)
            .filter(|&at| frame.get(at..at + batch.len()) == Some(batch))
            .ok_or_else(|| BenchError::Broker("the batch is not inside its request".into()))?;
        let (view, _) = RecordBatch::parse(batch)
            .map_err(|error| BenchError::Broker(format!("prebuilt batch: {error}")))?;
        let records = view
            .records()
            .map_err(|error| BenchError::Broker(format!("prebuilt batch: {error}")))?;
        let mut values_at = Vec::new();
        for record in records {
            let record =
                record.map_err(|error| BenchError::Broker(format!("prebuilt batch: {error}")))?;
            let value = record
                .value
                .filter(|value| value.len() >= STAMP_BYTES)
                .ok_or_else(|| {
                    BenchError::InvalidArguments(format!(
                        "end-to-end stamps need records of at least {STAMP_BYTES} value bytes"
                    ))
                })?;
            // The value borrows from `batch`, so its distance from the batch's start is
            // its place in the batch.
            values_at.push(batch_at + (value.as_ptr() as usize - batch.as_ptr() as usize));
        }
        Ok(StampSites {
            batch_at,
            values_at,
        })
    }

    /// Stamps every record of the frame's batch with `clock`'s now, sets the batch's
    /// `CreateTime` to the wall clock, and reseals its CRC.
    pub fn stamp(&self, frame: &mut [u8], clock: Clock) -> Result<(), BenchError> {
        let stamp = clock.now_ns().to_le_bytes();
        for &at in &self.values_at {
            frame[at..at + STAMP_BYTES].copy_from_slice(&stamp);
        }
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        restamp_create_time(&mut frame[self.batch_at..], wall_ms)
            .map_err(|error| BenchError::Broker(format!("restamping a batch: {error}")))
    }
}

/// Calls `each` with the stamp of every record in `records` (whole batches, as a fetch
/// returns them; a cut-short last batch is skipped, it is fetched again). A record whose
/// value is too short to hold a stamp, or a batch that does not parse, is an error: the
/// topic holds something other than this run's records.
pub fn read_stamps(records: &[u8], mut each: impl FnMut(u64)) -> Result<(), BenchError> {
    let mut rest = records;
    while !rest.is_empty() {
        let Ok((batch, after)) = RecordBatch::parse(rest) else {
            // Only a cut-short last batch may fail to parse; a broken whole batch is caught
            // by the consumer's framing walk and by the broker's CRC check on produce.
            return Ok(());
        };
        rest = after;
        let records = batch
            .records()
            .map_err(|error| BenchError::Broker(format!("fetched batch: {error}")))?;
        for record in records {
            let record =
                record.map_err(|error| BenchError::Broker(format!("fetched record: {error}")))?;
            let stamp = record
                .value
                .and_then(|value| value.get(..STAMP_BYTES))
                .and_then(|bytes| <[u8; STAMP_BYTES]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    BenchError::Broker("a fetched record without an end-to-end stamp".into())
                })?;
            each(u64::from_le_bytes(stamp));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ringlog_engine::batch::{validate, BatchBuilder, RecordBatch};

    use super::{read_stamps, Clock, StampSites};

    #[test]
    fn stamps_every_record_and_keeps_the_batch_valid() {
        let mut builder = BatchBuilder::new().base_timestamp(5);
        for value in [[1u8; 16], [2u8; 16], [3u8; 16]] {
            builder.push(0, Some(b"key"), Some(&value), &[]).unwrap();
        }
        let batch = builder.build();
        let mut frame = b"request header and fields".to_vec();
        frame.extend_from_slice(&batch);
        frame.extend_from_slice(&[0, 0, 0]);
        let sites = StampSites::locate(&frame, &batch).unwrap();
        let clock = Clock::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        sites.stamp(&mut frame, clock).unwrap();
        let stamped = &frame[25..25 + batch.len()];
        validate(stamped, 1 << 20).unwrap();
        let (view, _) = RecordBatch::parse(stamped).unwrap();
        assert!(
            view.base_timestamp() > 1_600_000_000_000,
            "wall-clock CreateTime"
        );
        let mut stamps = Vec::new();
        read_stamps(stamped, |stamp| stamps.push(stamp)).unwrap();
        assert_eq!(stamps.len(), 3);
        assert!(stamps.iter().all(|&stamp| stamp == stamps[0]));
        assert!(
            stamps[0] >= 2_000_000,
            "stamped after the 2 ms sleep: {}",
            stamps[0]
        );
        let values: Vec<_> = view
            .records()
            .unwrap()
            .map(|record| record.unwrap().value.unwrap()[8..].to_vec())
            .collect();
        assert_eq!(
            values,
            [[1u8; 8], [2u8; 8], [3u8; 8]],
            "only the stamp bytes change"
        );
    }

    #[test]
    fn refuses_values_too_short_for_a_stamp() {
        let mut builder = BatchBuilder::new();
        builder.push(0, None, Some(b"short"), &[]).unwrap();
        let batch = builder.build();
        assert!(StampSites::locate(&batch, &batch).is_err());
    }
}
