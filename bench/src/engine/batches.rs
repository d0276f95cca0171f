//! The record batches an engine load appends, built once before the timed region.
//!
//! A few distinct batches (so consecutive appends do not carry identical bytes) of
//! uncompressed records with `record_bytes`-byte values and no key, as many records per batch
//! as fit in `batch_bytes` with the batch header. Every batch has the same size and record
//! count. Values are pseudo-random, so nothing downstream can shortcut on zeros.
//!
//! Timestamps are the current wall-clock time: the log's time retention (7 days by default)
//! would otherwise delete closed segments of a long run as soon as it checked.

use std::time::{SystemTime, UNIX_EPOCH};

use ringlog_engine::batch::BatchBuilder;

use crate::error::BenchError;

/// Distinct batches a load cycles through.
pub const DISTINCT_BATCHES: usize = 4;

/// The keys of a load's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keys {
    /// No key (Kafka's null key).
    None,
    /// A 16-byte pseudo-random key per record.
    Random,
    /// Keys cycling through this many distinct values (`key-0`, `key-1`, …).
    Distinct(u64),
}

/// Parses `--keys`: `none`, `random` or a number of distinct keys (`1000` or
/// `1000-distinct`).
pub fn parse_keys(text: &str) -> Result<Keys, String> {
    match text {
        "none" => return Ok(Keys::None),
        "random" => return Ok(Keys::Random),
        _ => {}
    }
    let count = text.strip_suffix("-distinct").unwrap_or(text);
    match count.parse::<u64>() {
        Ok(count) if count > 0 => Ok(Keys::Distinct(count)),
        _ => Err(format!(
            "`{text}`: use none, random or N-distinct with N > 0"
        )),
    }
}

/// Prebuilt, valid record batches, all of one size.
#[derive(Debug)]
pub struct PrebuiltBatches {
    batches: Vec<Vec<u8>>,
    records_per_batch: u64,
}

/// What every batch of a load is made of.
struct Recipe {
    record_bytes: usize,
    batch_bytes: usize,
    keys: Keys,
    base_timestamp_ms: i64,
}

/// The generator state carried from one batch to the next.
struct Fill {
    value: Vec<u8>,
    key: Vec<u8>,
    seed: u64,
    key_index: u64,
}

impl PrebuiltBatches {
    /// Builds `DISTINCT_BATCHES` batches of `record_bytes`-byte values, each at most
    /// `batch_bytes` long.
    pub fn new(record_bytes: usize, batch_bytes: usize) -> Result<PrebuiltBatches, BenchError> {
        PrebuiltBatches::with_keys(record_bytes, batch_bytes, Keys::None, None)
    }

    /// As [`PrebuiltBatches::new`], with `keys`, and with at most `records_max` records per
    /// batch when given (the short last batch of a load).
    pub fn with_keys(
        record_bytes: usize,
        batch_bytes: usize,
        keys: Keys,
        records_max: Option<u64>,
    ) -> Result<PrebuiltBatches, BenchError> {
        let recipe = Recipe {
            record_bytes,
            batch_bytes,
            keys,
            base_timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis() as i64),
        };
        let mut fill = Fill {
            value: vec![0u8; record_bytes],
            key: Vec::new(),
            seed: 0x9E37_79B9_7F4A_7C15_u64,
            key_index: 0,
        };
        let mut batches = Vec::with_capacity(DISTINCT_BATCHES);
        let mut records_per_batch = None;
        for _ in 0..DISTINCT_BATCHES {
            let (batch, count) = build_batch(&recipe, &mut fill, records_max)?;
            assert!(
                records_per_batch.is_none_or(|c| c == count),
                "batches differ in size"
            );
            records_per_batch = Some(count);
            batches.push(batch);
        }
        Ok(PrebuiltBatches {
            batches,
            records_per_batch: records_per_batch.unwrap_or(0),
        })
    }

    /// The `index`-th batch, cycling through the distinct ones.
    pub fn get(&self, index: usize) -> &[u8] {
        &self.batches[index % self.batches.len()]
    }

    /// Bytes of every batch.
    pub fn batch_len_bytes(&self) -> usize {
        self.batches[0].len()
    }

    /// Records in every batch.
    pub fn records_per_batch(&self) -> u64 {
        self.records_per_batch
    }
}

/// One batch: as many records as fit `recipe.batch_bytes` (and `records_max`).
fn build_batch(
    recipe: &Recipe,
    fill: &mut Fill,
    records_max: Option<u64>,
) -> Result<(Vec<u8>, u64), BenchError> {
    let mut builder = BatchBuilder::with_capacity(recipe.batch_bytes)
        .base_timestamp(recipe.base_timestamp_ms)
        .producer(-1, -1, -1);
    while records_max.is_none_or(|max| u64::try_from(builder.record_count()).unwrap_or(0) < max) {
        fill_pseudo_random(&mut fill.value, &mut fill.seed);
        match recipe.keys {
            Keys::None => fill.key.clear(),
            Keys::Random => {
                fill.key.resize(16, 0);
                fill_pseudo_random(&mut fill.key, &mut fill.seed);
            }
            Keys::Distinct(count) => {
                fill.key.clear();
                fill.key
                    .extend_from_slice(format!("key-{}", fill.key_index % count).as_bytes());
                fill.key_index += 1;
            }
        }
        let key = (recipe.keys != Keys::None).then_some(fill.key.as_slice());
        // Trying on a clone keeps the batch within `batch_bytes` exactly; it costs a few
        // MiB of copying once, before anything is timed.
        let mut trial = builder.clone();
        trial.push(0, key, Some(&fill.value), &[])?;
        if trial.size_bytes() > recipe.batch_bytes {
            break;
        }
        builder = trial;
    }
    let count = u64::try_from(builder.record_count()).unwrap_or(0);
    if count == 0 {
        return Err(BenchError::InvalidArguments(format!(
            "a {}-byte record does not fit a {}-byte batch",
            recipe.record_bytes, recipe.batch_bytes
        )));
    }
    Ok((builder.build(), count))
}

/// Fills `bytes` from a xorshift64 generator (fast, and good enough to defeat dedup).
pub fn fill_pseudo_random(bytes: &mut [u8], seed: &mut u64) {
    for chunk in bytes.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use ringlog_engine::batch::{validate, BATCH_SIZE_BYTES_MAX};

    use super::PrebuiltBatches;

    #[test]
    fn batches_are_valid_distinct_and_within_the_size() {
        let batches = PrebuiltBatches::new(1024, 65_536).unwrap();
        assert!(batches.batch_len_bytes() <= 65_536);
        assert!(batches.batch_len_bytes() > 65_536 - 1100);
        assert_eq!(batches.records_per_batch(), 63);
        for index in 0..super::DISTINCT_BATCHES {
            let info = validate(batches.get(index), BATCH_SIZE_BYTES_MAX).unwrap();
            assert_eq!(info.record_count, batches.records_per_batch());
            assert_eq!(batches.get(index).len(), batches.batch_len_bytes());
        }
        assert_ne!(batches.get(0), batches.get(1));
    }

    #[test]
    fn refuses_a_record_larger_than_the_batch() {
        assert!(PrebuiltBatches::new(4096, 1024).is_err());
    }
}
