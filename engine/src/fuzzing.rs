//! The properties the engine's fuzz targets check, shared by `fuzz/fuzz_targets/` and by
//! the regression tests below, which replay every input kept in `fuzz/regressions/` on
//! each test run (stable toolchain, no fuzzer).
//!
//! Each function takes the fuzzer's raw bytes and panics when a property fails:
//!
//! - [`batch_validator`]: `validate_prefix` on arbitrary bytes; the valid prefix re-validates
//!   to the same result, every accepted batch carries the right CRC, its records round-trip
//!   through `BatchBuilder`, and the broker's stamps keep it valid.
//! - [`recovery_scan`]: the recovery scan of a segment file holding arbitrary bytes; its
//!   result does not depend on the read chunk size, never exceeds the input, agrees with
//!   the validator, re-scans to itself when cut to its valid prefix, and leaves an index
//!   whose entries point at the scanned batches and whose files decode to it.
//! - [`index_decode`]: the offset and time index decoders on arbitrary files (a decoded
//!   file encodes to the same bytes; lookups stay within the decoded entries and agree
//!   with a linear search), and indexes built from arbitrary batch sequences.
//!
//! A fuzzer cannot forge a CRC-32C, so most inputs have a choice bit that makes the
//! harness write the correct CRC into every batch or index file before the check, letting
//! mutations reach what lies behind the CRC.
//!
//! Compiled for tests and with the `fuzzing` feature only.

mod batch;
mod index;
mod recovery;

pub use batch::batch_validator;
pub use index::index_decode;
pub use recovery::recovery_scan;

use crate::batch::{declared_size_bytes, HEADER_SIZE_BYTES};

/// Writes the correct CRC-32C into every batch frame at the front of `bytes`, walking them
/// by their declared lengths, until one does not fit.
fn fix_batch_crcs(bytes: &mut [u8]) {
    const CRC_AT: usize = 17;
    const CRC_COVERS_FROM: usize = 21;
    let mut at = 0;
    while let Some(size) = declared_size_bytes(&bytes[at..]) {
        if size < HEADER_SIZE_BYTES || size > bytes.len() - at {
            break;
        }
        let batch = &mut bytes[at..at + size];
        let crc = crc32c::crc32c(&batch[CRC_COVERS_FROM..]);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        at += size;
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The inputs kept for `target` (crashes it found, and its minimized corpus).
    fn regressions(target: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions")
            .join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no inputs in {}", dir.display());
        files
    }

    fn replay(target: &str, check: fn(&[u8])) {
        for path in regressions(target) {
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(outcome.is_ok(), "{} fails", path.display());
        }
    }

    #[test]
    fn batch_regressions_hold() {
        replay("batch", super::batch_validator);
    }

    #[test]
    fn recovery_regressions_hold() {
        replay("recovery", super::recovery_scan);
    }

    #[test]
    fn index_regressions_hold() {
        replay("index", super::index_decode);
    }
}
