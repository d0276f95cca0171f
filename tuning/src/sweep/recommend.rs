//! The recommendation: of the points that keep the durability asked and a produce p99
//! within the budget, the one with the most records per second; and the `ringlog.toml`
//! that sets it, each key with the reason it has its value.

use std::fmt::Write as _;
use std::path::Path;

use ringlog_bench::broker::produce::AcksArg;

use super::grid::{acks_name, io_mode_name, size_label, Point};
use super::point::Measurement;
use super::Outcome;

/// `--durability`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Durability {
    /// Every acknowledged record fdatasynced before its acknowledgement.
    Always,
    /// At most this many ms of acknowledged writes at risk on power loss.
    BoundedMs(f64),
    /// Nothing asked: writeback may be left to the OS.
    None,
}

impl Durability {
    /// Parses `always`, `bounded-ms:N` or `none`.
    pub fn parse(text: &str) -> Result<Durability, String> {
        match text.trim() {
            "always" => Ok(Durability::Always),
            "none" => Ok(Durability::None),
            other => {
                let bad = || format!("`{other}`: expected always, bounded-ms:N or none");
                let value = other.strip_prefix("bounded-ms:").ok_or_else(bad)?;
                let bound_ms: f64 = value.parse().map_err(|_| bad())?;
                if !(bound_ms.is_finite() && bound_ms > 0.0) {
                    return Err(format!(
                        "`{other}`: the bound must be a positive number of ms"
                    ));
                }
                Ok(Durability::BoundedMs(bound_ms))
            }
        }
    }

    /// Whether a point whose acknowledged writes at risk are `at_risk_ms` keeps it.
    pub fn allows(self, at_risk_ms: Option<f64>) -> bool {
        match self {
            Durability::Always => at_risk_ms == Some(0.0),
            Durability::BoundedMs(bound_ms) => at_risk_ms.is_some_and(|ms| ms <= bound_ms),
            Durability::None => true,
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Always => f.write_str("always (every acknowledged record fdatasynced)"),
            Durability::BoundedMs(bound_ms) => write!(
                f,
                "bounded: at most {bound_ms} ms of acknowledged records at risk on power loss"
            ),
            Durability::None => f.write_str("none asked (writeback may be left to the OS)"),
        }
    }
}

/// The chosen point, and whether it met the latency budget.
#[derive(Clone, Debug)]
pub struct Choice {
    pub index: usize,
    /// `false`: no point met the budget with the durability asked; this is the one with
    /// the lowest p99 among those that keep the durability.
    pub within_budget: bool,
}

/// Chooses among `outcomes` (failed points never count).
pub fn choose(outcomes: &[Outcome], durability: Durability, p99_ms: f64) -> Option<Choice> {
    let durable = || {
        outcomes.iter().enumerate().filter_map(|(index, outcome)| {
            let measured = outcome.result.as_ref().ok()?;
            durability
                .allows(measured.at_risk_ms)
                .then_some((index, measured))
        })
    };
    let best = durable()
        .filter(|(_, measured)| measured.p99_ms <= p99_ms)
        .max_by(|a, b| a.1.records_per_s.total_cmp(&b.1.records_per_s));
    if let Some((index, _)) = best {
        return Some(Choice {
            index,
            within_budget: true,
        });
    }
    durable()
        .min_by(|a, b| a.1.p99_ms.total_cmp(&b.1.p99_ms))
        .map(|(index, _)| Choice {
            index,
            within_budget: false,
        })
}

/// What `recommended.toml` is written from.
pub struct Recommendation<'a> {
    pub point: &'a Point,
    pub measured: &'a Measurement,
    pub within_budget: bool,
    pub durability: Durability,
    pub p99_ms: f64,
    pub data_dir: &'a Path,
    pub shards: usize,
    /// Stage 2's linger for the producers, if it ran.
    pub linger_ms: Option<f64>,
}

impl Recommendation<'_> {
    /// The configuration file, every key commented with why.
    pub fn toml(&self) -> String {
        let Recommendation {
            point, measured, ..
        } = self;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# ringlog.toml recommended by `ringlog-tune sweep` (see report.md beside it).\n\
             # Asked: durability {}; produce p99 within {} ms.\n\
             # Chosen point: {point}.\n\
             # Measured there: {:.0} records/s ({:.1} MB/s, {:.2} of the limit {:.0} MB/s), \
             produce p99 {:.2} ms.",
            self.durability,
            self.p99_ms,
            measured.records_per_s,
            measured.mb_per_s,
            measured.ratio_to_limit,
            measured.limit_mb_per_s,
            measured.p99_ms,
        );
        if !self.within_budget {
            let _ = writeln!(
                text,
                "# NOTE: no configuration kept this durability within a p99 of {} ms; this is \
                 the one with the lowest p99.",
                self.p99_ms
            );
        }
        let linger = self.linger_ms.map_or_else(
            || "5 (the clients' usual default)".into(),
            |ms| ms.to_string(),
        );
        let _ = writeln!(
            text,
            "# Producers: acks={}, batch.size={}, linger.ms={linger} (report.md says why).\n",
            acks_name(point.acks),
            point.batch_bytes,
        );
        let data_dir = self.data_dir.display().to_string();
        let _ = writeln!(
            text,
            "# The file system the sweep measured; a data directory elsewhere needs its own \
             sweep.\ndata_dir = {}\n",
            toml_string(&data_dir)
        );
        let _ = writeln!(
            text,
            "# One shard per core the sweep ran on, as measured.\nshards = {}\n",
            self.shards
        );
        text.push_str("[topic]\n");
        let _ = writeln!(text, "# {}", self.flush_reason());
        for (key, value) in point.flush.toml_keys() {
            let _ = writeln!(text, "\"{key}\" = {value}");
        }
        let _ = writeln!(
            text,
            "# {}\n\"{}\" = \"{}\"",
            self.io_mode_reason(),
            ringlog_engine::topic::keys::IO_MODE,
            io_mode_name(point.io_mode)
        );
        text
    }

    fn flush_reason(&self) -> String {
        let measured = self.measured;
        let risk = match measured.at_risk_ms {
            Some(0.0) => "nothing acknowledged at risk".to_owned(),
            Some(ms) => format!("at most {ms:.1} ms of acknowledged writes at risk"),
            None => "acknowledged writes at risk until the OS writes them back".to_owned(),
        };
        let acks_all = if self.point.acks == AcksArg::All {
            " With acks=all every group with such an append is fdatasynced before its \
             answer, whatever this policy; a producer with acks=1 gets only the policy's \
             bound."
        } else {
            ""
        };
        format!(
            "flush {}: the most records/s ({:.0}) with {risk}, at {}.{acks_all}",
            self.point.flush,
            measured.records_per_s,
            measured.syncs_phrase()
        )
    }

    fn io_mode_reason(&self) -> String {
        format!(
            "{} I/O, batches of {} from the producer: {:.0} MB/s against a {:.0} MB/s limit \
             ({:.2}).",
            io_mode_name(self.point.io_mode),
            size_label(self.point.batch_bytes),
            self.measured.mb_per_s,
            self.measured.limit_mb_per_s,
            self.measured.ratio_to_limit
        )
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::grid::Flush;
    use ringlog_engine::topic::IoMode;

    fn outcome(flush: Flush, acks: AcksArg, records_per_s: f64, p99_ms: f64) -> Outcome {
        let at_risk_ms = match (acks, flush) {
            (AcksArg::All, _) => Some(0.0),
            (_, Flush::IntervalMs(ms)) => Some(ms as f64),
            _ => None,
        };
        Outcome {
            point: Point {
                flush,
                io_mode: IoMode::Direct,
                batch_bytes: 64 << 10,
                acks,
                linger_ms: None,
                rate: None,
            },
            result: Ok(Measurement {
                records_per_s,
                mb_per_s: records_per_s / 1000.0,
                p50_ms: p99_ms / 2.0,
                p99_ms,
                p999_ms: p99_ms * 2.0,
                fdatasyncs_per_s: 100.0,
                fdatasync_mean_ms: 1.0,
                fdatasync_p99_bound_ms: 2.0,
                group_bytes: 65536.0,
                limit_mb_per_s: 1000.0,
                ratio_to_limit: 0.5,
                at_risk_ms,
            }),
        }
    }

    #[test]
    fn durability_parses_and_judges_the_window() {
        assert_eq!(Durability::parse("always"), Ok(Durability::Always));
        assert_eq!(
            Durability::parse("bounded-ms:20"),
            Ok(Durability::BoundedMs(20.0))
        );
        assert_eq!(Durability::parse("none"), Ok(Durability::None));
        for bad in ["bounded-ms:0", "bounded-ms:-1", "bounded-ms:x", "sometimes"] {
            assert!(Durability::parse(bad).is_err(), "{bad}");
        }
        assert!(Durability::Always.allows(Some(0.0)));
        assert!(!Durability::Always.allows(Some(0.5)));
        assert!(Durability::BoundedMs(10.0).allows(Some(7.0)));
        assert!(!Durability::BoundedMs(10.0).allows(None));
        assert!(Durability::None.allows(None));
    }

    #[test]
    fn the_fastest_point_within_budget_and_durability_wins() {
        let outcomes = vec![
            outcome(Flush::Never, AcksArg::Leader, 900_000.0, 3.0),
            outcome(Flush::IntervalMs(5), AcksArg::Leader, 800_000.0, 4.0),
            outcome(Flush::IntervalMs(20), AcksArg::Leader, 850_000.0, 30.0),
            outcome(Flush::Always, AcksArg::All, 400_000.0, 6.0),
        ];
        let pick = |durability, p99_ms| choose(&outcomes, durability, p99_ms).unwrap();
        assert_eq!(pick(Durability::None, 10.0).index, 0);
        assert_eq!(pick(Durability::BoundedMs(10.0), 10.0).index, 1);
        assert_eq!(pick(Durability::BoundedMs(50.0), 50.0).index, 2);
        assert_eq!(pick(Durability::Always, 10.0).index, 3);
        // Nothing durable within 5 ms: the lowest p99 among the durable ones, flagged.
        let fallback = pick(Durability::Always, 5.0);
        assert_eq!((fallback.index, fallback.within_budget), (3, false));
        let mut failed = outcomes.clone();
        failed[3].result = Err("broker: refused".into());
        assert!(choose(&failed, Durability::Always, 10.0).is_none());
    }

    #[test]
    fn the_file_loads_in_the_server_with_the_chosen_settings() {
        let outcomes = [
            outcome(Flush::IntervalMs(5), AcksArg::Leader, 800_000.0, 4.0),
            outcome(Flush::Bytes(4 << 20), AcksArg::Leader, 800_000.0, 4.0),
            outcome(Flush::Always, AcksArg::All, 800_000.0, 4.0),
            outcome(Flush::Never, AcksArg::All, 800_000.0, 4.0),
        ];
        for outcome in &outcomes {
            let measured = outcome.result.as_ref().unwrap();
            let dir = Path::new("/var/lib/ringlog \"x\"");
            let text = Recommendation {
                point: &outcome.point,
                measured,
                within_budget: true,
                durability: Durability::None,
                p99_ms: 10.0,
                data_dir: dir,
                shards: 2,
                linger_ms: Some(1.0),
            }
            .toml();
            let file: ringlog_server::config::FileConfig = toml::from_str(&text).unwrap();
            let config = ringlog_server::config::ServerConfig::from_file(file).unwrap();
            assert_eq!(config.data_dir, dir, "{text}");
            assert_eq!(config.shards, 2);
            assert_eq!(config.topic_defaults.flush(), outcome.point.flush.policy());
            assert_eq!(config.topic_defaults.io_mode(), IoMode::Direct);
            assert!(config.io_mode_chosen);
        }
    }
}
