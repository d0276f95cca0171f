//! A probe's result as printed and as written with `--json FILE`: the probe's name, its
//! parameters, its measurements and the machine it ran on. Throughput units are spelled out
//! in every field name: `mib_per_s` is 2^20 bytes per second, `gb_per_s` is 10^9.

use std::path::Path;

use serde::Serialize;

use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;

/// One probe run, ready to serialize.
#[derive(Debug, Serialize)]
pub struct Report<P: Serialize, R: Serialize> {
    /// Which probe: `write`, `nop` or `tcp-echo`.
    pub probe: &'static str,
    pub parameters: P,
    pub results: R,
    pub machine: MachineInfo,
}

impl<P: Serialize, R: Serialize> Report<P, R> {
    /// Writes the report as pretty JSON to `path`, if one was given.
    pub fn write_json(&self, path: Option<&Path>) -> Result<(), BenchError> {
        let Some(path) = path else { return Ok(()) };
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").context(|| format!("writing {}", path.display()))
    }
}

/// Bytes per second in MiB/s (2^20).
pub fn mib_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20) / seconds
}

/// Bytes per second in GB/s (10^9).
pub fn gb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e9 / seconds
}

#[cfg(test)]
mod tests {
    use super::{gb_per_s, mib_per_s};

    #[test]
    fn throughput_units_are_binary_and_decimal_as_named() {
        assert!((mib_per_s(1 << 30, 2.0) - 512.0).abs() < 1e-9);
        assert!((gb_per_s(3_000_000_000, 1.5) - 2.0).abs() < 1e-9);
    }
}
