//! Helpers shared by the engine's tests and, through the `testing` feature, by other
//! crates' tests: test batches, reading records back, and a seedable random source. Never
//! on a path input reaches: a helper that meets what it did not expect panics.
#![allow(clippy::expect_used)]

use bytes::Bytes;

use crate::batch::{BatchBuilder, RecordBatch};

/// A batch of `count` records without keys whose values are `"{tag}-{i}"`.
pub fn tagged_batch(tag: &str, count: usize) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let value = format!("{tag}-{i}");
        builder
            .push(i as i64, None, Some(value.as_bytes()), &[])
            .expect("a small test record fits a batch");
    }
    Bytes::from(builder.build())
}

/// splitmix64: small, seedable, and good enough to choose what a crash keeps or what a
/// simulation does next.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// Every record of the whole batches at the front of `bytes`, as (offset, value as text).
pub fn offsets_and_values(bytes: &[u8]) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok((batch, next)) = RecordBatch::parse(rest) {
        for record in batch
            .records()
            .expect("a parsed test batch has readable records")
        {
            let record = record.expect("test records decode");
            let value = record
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned());
            out.push((
                batch.base_offset() + i64::from(record.offset_delta),
                value.unwrap_or_default(),
            ));
        }
        rest = next;
    }
    out
}

/// The values of [`offsets_and_values`].
pub fn values(bytes: &[u8]) -> Vec<String> {
    offsets_and_values(bytes)
        .into_iter()
        .map(|(_, value)| value)
        .collect()
}
