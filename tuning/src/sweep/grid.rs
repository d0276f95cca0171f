//! What the sweep measures: the grid's axes, their short and full values, and the points
//! they make.
//!
//! The sweep has two stages. **Stage 1** (the broker's settings) runs every combination of
//! flush policy × I/O mode × producer batch size × acks with the producer sending as fast
//! as acknowledgements come back: it finds each configuration's throughput and its latency
//! at that throughput. Linger does not enter stage 1: a producer with records always ready
//! fills every batch whatever its linger. **Stage 2** (the producers' batching) then holds
//! the recommended broker configuration at half its stage-1 throughput, an operating point
//! with room for bursts, and runs batch size × linger: there linger decides how full the
//! batches are, and so the latency a record sees.
//!
//! The short grid prunes one axis product: with acks=all every group commit is fdatasynced
//! whatever the flush policy, so acks=all is run with `always` and `never` only (the
//! periodic policies would add their timer's syncs to the same cost). `--full` runs it all.

use std::fmt;

use ringlog_bench::broker::produce::AcksArg;
use ringlog_bench::size::parse_size_bytes;
use ringlog_engine::topic::{FlushPolicy, IoMode};

/// A flush policy as the sweep names and sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flush {
    /// fdatasync linked after every group commit.
    Always,
    /// fdatasync at most this many ms after the last one (`flush.ms`).
    IntervalMs(u64),
    /// fdatasync once this many bytes are unsynced (`flush.bytes`).
    Bytes(u64),
    /// Writeback left to the OS (and the disk).
    Never,
}

impl Flush {
    /// The topic's policy.
    pub fn policy(self) -> FlushPolicy {
        match self {
            Flush::Always => FlushPolicy::Always,
            Flush::IntervalMs(interval_ms) => FlushPolicy::periodic(Some(interval_ms), None),
            Flush::Bytes(bytes) => FlushPolicy::periodic(None, Some(bytes)),
            Flush::Never => FlushPolicy::Never,
        }
    }

    /// The `[topic]` keys of `ringlog.toml` that set it.
    pub fn toml_keys(self) -> Vec<(&'static str, String)> {
        use ringlog_engine::topic::keys;
        match self {
            Flush::Always => vec![(keys::FLUSH_POLICY, "\"always\"".into())],
            Flush::IntervalMs(interval_ms) => vec![
                (keys::FLUSH_POLICY, "\"periodic\"".into()),
                (keys::FLUSH_MS, interval_ms.to_string()),
            ],
            Flush::Bytes(bytes) => vec![
                (keys::FLUSH_POLICY, "\"periodic\"".into()),
                (keys::FLUSH_BYTES, bytes.to_string()),
            ],
            Flush::Never => vec![(keys::FLUSH_POLICY, "\"never\"".into())],
        }
    }

    /// Parses `always`, `never`, `interval:5` (ms) or `bytes:4MiB`.
    pub fn parse(text: &str) -> Result<Flush, String> {
        let text = text.trim();
        match text {
            "always" => return Ok(Flush::Always),
            "never" => return Ok(Flush::Never),
            _ => {}
        }
        let bad = || format!("`{text}`: expected always, never, interval:MS or bytes:SIZE");
        let (kind, value) = text.split_once(':').ok_or_else(bad)?;
        match kind {
            "interval" => {
                let interval_ms: u64 = value.parse().map_err(|_| bad())?;
                if interval_ms == 0 {
                    return Err(format!("`{text}`: the interval must be at least 1 ms"));
                }
                Ok(Flush::IntervalMs(interval_ms))
            }
            "bytes" => {
                let bytes = parse_size_bytes(value)?;
                if bytes == 0 {
                    return Err(format!("`{text}`: the byte trigger must be positive"));
                }
                Ok(Flush::Bytes(bytes))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Flush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flush::Always => f.write_str("always"),
            Flush::IntervalMs(interval_ms) => write!(f, "interval {interval_ms} ms"),
            Flush::Bytes(bytes) => write!(f, "bytes {}", size_label(*bytes)),
            Flush::Never => f.write_str("never"),
        }
    }
}

/// `64 KiB`, `1 MiB`, or plain bytes.
pub fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// The I/O mode's name as `ringlog.io.mode` spells it.
pub fn io_mode_name(io_mode: IoMode) -> &'static str {
    match io_mode {
        IoMode::Buffered => "buffered",
        IoMode::Direct => "direct",
    }
}

/// acks as Kafka clients spell it.
pub fn acks_name(acks: AcksArg) -> &'static str {
    match acks {
        AcksArg::None => "0",
        AcksArg::Leader => "1",
        AcksArg::All => "all",
    }
}

/// The axes' values.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub flush: Vec<Flush>,
    pub io_modes: Vec<IoMode>,
    pub batch_bytes: Vec<u64>,
    pub acks: Vec<AcksArg>,
    /// Stage 2 only.
    pub linger_ms: Vec<f64>,
    /// Stage 2's batch sizes.
    pub stage2_batch_bytes: Vec<u64>,
    /// Run acks=all with every flush policy (`--full`), not only `always` and `never`.
    pub acks_all_every_policy: bool,
}

impl Grid {
    /// The default grid: about 40 points, under 5 minutes on a 2-core machine at 3 s each.
    pub fn short() -> Grid {
        Grid {
            flush: vec![
                Flush::Always,
                Flush::IntervalMs(5),
                Flush::IntervalMs(20),
                Flush::Bytes(4 << 20),
                Flush::Never,
            ],
            io_modes: vec![IoMode::Direct, IoMode::Buffered],
            batch_bytes: vec![64 << 10, 256 << 10],
            acks: vec![AcksArg::Leader, AcksArg::All],
            linger_ms: vec![1.0, 5.0, 20.0],
            stage2_batch_bytes: vec![16 << 10, 64 << 10, 256 << 10],
            acks_all_every_policy: false,
        }
    }

    /// Every value the issue names: 9 policies × 2 modes × 4 batch sizes × 2 acks, then
    /// 4 batch sizes × 5 lingers.
    pub fn full() -> Grid {
        Grid {
            flush: vec![
                Flush::Always,
                Flush::IntervalMs(1),
                Flush::IntervalMs(5),
                Flush::IntervalMs(20),
                Flush::IntervalMs(100),
                Flush::Bytes(1 << 20),
                Flush::Bytes(4 << 20),
                Flush::Bytes(16 << 20),
                Flush::Never,
            ],
            io_modes: vec![IoMode::Direct, IoMode::Buffered],
            batch_bytes: vec![16 << 10, 64 << 10, 256 << 10, 1 << 20],
            acks: vec![AcksArg::Leader, AcksArg::All],
            linger_ms: vec![0.0, 1.0, 5.0, 10.0, 20.0],
            stage2_batch_bytes: vec![16 << 10, 64 << 10, 256 << 10, 1 << 20],
            acks_all_every_policy: true,
        }
    }

    /// Stage 1's points, in the order they run.
    pub fn stage1(&self) -> Vec<Point> {
        let mut points = Vec::new();
        for &io_mode in &self.io_modes {
            for &flush in &self.flush {
                for &acks in &self.acks {
                    let pruned = acks == AcksArg::All
                        && !self.acks_all_every_policy
                        && !matches!(flush, Flush::Always | Flush::Never);
                    if pruned {
                        continue;
                    }
                    for &batch_bytes in &self.batch_bytes {
                        points.push(Point {
                            flush,
                            io_mode,
                            batch_bytes,
                            acks,
                            linger_ms: None,
                            rate: None,
                        });
                    }
                }
            }
        }
        points
    }

    /// Stage 2's points: `base`'s broker settings at `rate` records/s.
    pub fn stage2(&self, base: &Point, rate: f64) -> Vec<Point> {
        let mut points = Vec::new();
        for &batch_bytes in &self.stage2_batch_bytes {
            for &linger_ms in &self.linger_ms {
                points.push(Point {
                    batch_bytes,
                    linger_ms: Some(linger_ms),
                    rate: Some(rate),
                    ..*base
                });
            }
        }
        points
    }
}

/// One measured configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub flush: Flush,
    pub io_mode: IoMode,
    /// The producer's batch size (`batch.size`).
    pub batch_bytes: u64,
    pub acks: AcksArg,
    /// Stage 2: the producer's linger (`linger.ms`); stage 1 has none (batches fill).
    pub linger_ms: Option<f64>,
    /// Stage 2: the offered load in records/s; stage 1 sends as fast as it can.
    pub rate: Option<f64>,
}

impl Point {
    /// Whether every group this point writes is fdatasynced before it is answered or
    /// served: acks=all, or `flush.policy=always`.
    pub fn syncs_every_group(&self) -> bool {
        self.acks == AcksArg::All || self.flush == Flush::Always
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flush {}, {}, batch {}, acks={}",
            self.flush,
            io_mode_name(self.io_mode),
            size_label(self.batch_bytes),
            acks_name(self.acks)
        )?;
        if let Some(linger_ms) = self.linger_ms {
            write!(f, ", linger {linger_ms} ms")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policies_parse_and_print() {
        assert_eq!(Flush::parse("always"), Ok(Flush::Always));
        assert_eq!(Flush::parse("interval:5"), Ok(Flush::IntervalMs(5)));
        assert_eq!(Flush::parse("bytes:4MiB"), Ok(Flush::Bytes(4 << 20)));
        assert_eq!(Flush::parse("never"), Ok(Flush::Never));
        for bad in [
            "interval:0",
            "bytes:0",
            "sometimes",
            "interval:x",
            "bytes:4XB",
        ] {
            assert!(Flush::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Flush::Bytes(4 << 20).to_string(), "bytes 4 MiB");
        assert_eq!(
            Flush::IntervalMs(5).policy(),
            FlushPolicy::Periodic {
                interval_ms: Some(5),
                bytes: None
            }
        );
    }

    #[test]
    fn the_short_grid_prunes_acks_all_to_always_and_never_and_fits_five_minutes() {
        let grid = Grid::short();
        let stage1 = grid.stage1();
        // 5 policies × 2 modes × 2 batch sizes with acks=1, 2 × 2 × 2 with acks=all.
        assert_eq!(stage1.len(), 20 + 8);
        assert!(stage1
            .iter()
            .filter(|point| point.acks == AcksArg::All)
            .all(|point| matches!(point.flush, Flush::Always | Flush::Never)));
        let base = stage1[0];
        let stage2 = grid.stage2(&base, 1000.0);
        assert_eq!(stage2.len(), 9);
        assert!(stage2.iter().all(|point| point.rate == Some(1000.0)
            && point.flush == base.flush
            && point.linger_ms.is_some()));
        // 3 s a point and about 1 s to start and stop the broker: under 5 minutes with
        // the probes' half minute.
        assert!((stage1.len() + stage2.len()) * 4 + 30 < 300);
        let full = Grid::full().stage1();
        assert_eq!(full.len(), 9 * 2 * 4 * 2);
    }
}
