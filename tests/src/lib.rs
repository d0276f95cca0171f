//! End-to-end tests of ringlog across crates: real Kafka clients against the `ringlog`
//! binary, crash and fault tests, soak checks. The tests live in `tests/tests/`; this
//! library holds what they share:
//!
//! - [`process`]: finding (or building) the `ringlog` binary, running `ringlog serve` on a
//!   data directory and a free port, its memory, and stopping it with SIGTERM; raising the
//!   open-file limit for tests that open many sockets.
//! - [`python`]: a virtualenv under `target/` with pinned Kafka clients (kafka-python,
//!   confluent-kafka, i.e. librdkafka, and aiokafka) and a runner for `tests/python/`.
//! - [`node`]: kafkajs, pinned, under `target/`, and a runner for `tests/js/`.
//! - [`script`]: what both runners share (a tool folder made once, JSON out of a script).
//! - [`wire`]: a small Kafka client over a plain TCP socket, built on the `kafka-protocol`
//!   crate, for requests at exact versions and for frames no real client would send.
//! - [`metrics`]: a running server's `/metrics`, scraped into a map.
//! - [`disk`]: small file systems a test makes and breaks: a full tmpfs, an ext4 whose
//!   device fails every write (root).
//! - [`slow_disk`]: a cgroup whose writes to a disk the kernel throttles, to make a running
//!   node's disk slow for a while (fault tests).
//! - [`member`]: a consumer-group member on that client (join, sync, commit, fetch the
//!   committed offsets) that reports every refusal instead of panicking, for tests that
//!   kill the broker under it.

pub mod disk;
pub mod member;
pub mod metrics;
pub mod node;
pub mod process;
pub mod python;
pub mod script;
pub mod slow_disk;
pub mod wire;

/// Lowercase hex of `bytes`: how the Python scripts and the tests exchange binary data in
/// JSON.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// The bytes of lowercase or uppercase hex `text`; `None` if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}

/// A deterministic pseudo-random generator (SplitMix64) for test data: the same seed gives
/// the same bytes on every run, so a failure reproduces.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(hex(&bytes), "00017f80ff");
        assert_eq!(unhex("00017f80ff").unwrap(), bytes);
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
