//! Helpers shared by the engine's tests.

use crate::batch::RecordBatch;

/// Every record of the whole batches at the front of `bytes`, as (offset, value as text).
pub(crate) fn offsets_and_values(bytes: &[u8]) -> Vec<(i64, String)> {
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
pub(crate) fn values(bytes: &[u8]) -> Vec<String> {
    offsets_and_values(bytes)
        .into_iter()
        .map(|(_, value)| value)
        .collect()
}
