//! `report.md`: the limits first, then stage 1's table sorted by throughput, the
//! recommendation with the figures it rests on, stage 2's table and the producer settings
//! for the common clients, and every point skipped or failed with why.

use std::fmt::Write as _;

use super::grid::{acks_name, io_mode_name, size_label, Point};
use super::limits::Limits;
use super::point::Measurement;
use super::recommend::{Choice, Durability};
use super::{Outcome, Sweep};

/// Everything the report is written from.
pub struct ReportInput<'a> {
    pub sweep: &'a Sweep,
    pub limits: &'a Limits,
    pub stage1: &'a [Outcome],
    pub stage2: &'a [Outcome],
    pub choice: Option<&'a Choice>,
    /// Stage 2's chosen point (the lowest record latency that kept up), if any.
    pub client_choice: Option<usize>,
    pub durability: Durability,
    pub p99_ms: f64,
    /// What this file system could not do, and the points skipped for it.
    pub notes: &'a [String],
    pub elapsed_s: f64,
}

impl ReportInput<'_> {
    pub fn markdown(&self) -> String {
        let mut text = String::from("# ringlog-tune sweep\n\n");
        self.header(&mut text);
        self.limits_section(&mut text);
        self.recommendation_section(&mut text);
        text.push_str("## Stage 1: the broker's settings, producer at full speed\n\n");
        text.push_str(
            "Sorted by records/s. Latency is a produce request's send to its response. \
             \"Limit\" is what the same node's probe allows this point: write+fdatasync at \
             the point's mean group size where every group is synced, else the I/O mode's \
             sequential write, and never more than loopback TCP. \"At risk\" is the \
             acknowledged writes a power loss can take (0: none; ∞: until the OS writes \
             them back). A buffered point can pass its limit: one that never syncs ends \
             with its writes in the page cache, where the probe's end with an fsync, and \
             the write+fdatasync probes write with O_DIRECT where the file system allows \
             it.\n\n",
        );
        table(&mut text, self.stage1, true);
        text.push_str("\n![throughput against p99](throughput-latency.svg)\n\n");
        self.stage2_section(&mut text);
        self.not_run_section(&mut text);
        text
    }

    fn header(&self, text: &mut String) {
        let sweep = self.sweep;
        let _ = writeln!(
            text,
            "- machine: {} cores allowed, {} memory, Linux {}\n\
             - data directory: `{}` ({})\n\
             - load: {} records, {} partitions, {} s per point ({}), native producer over \
             loopback with 2 connections × 8 requests in flight, broker embedded with {} \
             shards\n\
             - asked: durability {}; produce p99 within {} ms\n\
             - sweep time: {:.0} s ({} points)\n",
            ringlog_engine::rt::allowed_cpus().len(),
            crate::check::human_bytes(ringlog_server::config::memory_bytes()),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
            sweep.data_dir.display(),
            sweep.file_system,
            size_label(sweep.load.record_bytes),
            sweep.load.partitions,
            sweep.load.seconds,
            if sweep.load.repeat == 1 {
                "one run each: on a noisy machine, `--repeat 3` keeps the median of three".into()
            } else {
                format!("the median of {} runs by records/s", sweep.load.repeat)
            },
            sweep.shards,
            self.durability,
            self.p99_ms,
            self.elapsed_s,
            self.stage1.len() + self.stage2.len(),
        );
    }

    fn limits_section(&self, text: &mut String) {
        let limits = self.limits;
        text.push_str("## The node's limits (measured first, same run)\n\n");
        text.push_str("| probe | MB/s | note |\n|---|---:|---|\n");
        match limits.direct_write_mb_per_s {
            Some(mb) => {
                let _ = writeln!(
                    text,
                    "| sequential write, O_DIRECT, 1 MiB × QD 8 | {mb:.0} | ends with fsync |"
                );
            }
            None => {
                text.push_str("| sequential write, O_DIRECT | – | refused by this file system |\n");
            }
        }
        let _ = writeln!(
            text,
            "| sequential write, buffered, 1 MiB × QD 8 | {:.0} | ends with fsync |",
            limits.buffered_write_mb_per_s
        );
        for sync in &limits.sync_writes {
            let _ = writeln!(
                text,
                "| write + fdatasync, {} per sync × {} writers | {:.0} | {:.2} ms per write and \
                 sync |",
                size_label(sync.size_bytes),
                self.sweep.load.partitions.clamp(1, 8),
                sync.mb_per_s,
                sync.latency_ms
            );
        }
        let _ = writeln!(
            text,
            "| loopback TCP, one way, 64 KiB messages | {:.0} | |\n\n\
             Memory warmed before the first point: {}.\n",
            limits.tcp_one_way_mb_per_s,
            crate::check::human_bytes(limits.warmed_bytes)
        );
    }

    fn recommendation_section(&self, text: &mut String) {
        text.push_str("## Recommendation\n\n");
        let Some(choice) = self.choice else {
            text.push_str(
                "None: no point that ran keeps the durability asked (see the tables and the \
                 failures below). `recommended.toml` was not written.\n\n",
            );
            return;
        };
        let outcome = &self.stage1[choice.index];
        let Ok(measured) = &outcome.result else {
            return;
        };
        if !choice.within_budget {
            let _ = writeln!(
                text,
                "**No point kept durability {} within a p99 of {} ms.** The one with the lowest \
                 p99 is recommended instead; raise `--p99-ms` or relax `--durability` to \
                 trade.\n",
                self.durability, self.p99_ms
            );
        }
        let _ = writeln!(
            text,
            "**{}**: {:.0} records/s ({:.1} MB/s, {:.2} of its {:.0} MB/s limit), produce p50 \
             {:.2} / p99 {:.2} / p99.9 {:.2} ms, {}, acknowledged writes at risk: {}. It is the fastest of the points that keep the \
             durability asked within the p99 budget. `recommended.toml` sets it; \
             `ringlog serve --config recommended.toml` takes it as it is.\n",
            outcome.point,
            measured.records_per_s,
            measured.mb_per_s,
            measured.ratio_to_limit,
            measured.limit_mb_per_s,
            measured.p50_ms,
            measured.p99_ms,
            measured.p999_ms,
            measured.syncs_phrase(),
            at_risk(measured),
        );
        self.client_settings(text, &outcome.point);
    }

    fn client_settings(&self, text: &mut String, point: &Point) {
        let chosen = self.client_choice.and_then(|index| self.stage2.get(index));
        let linger_ms = chosen.and_then(|outcome| outcome.point.linger_ms);
        let batch_bytes = chosen.map_or(point.batch_bytes, |outcome| outcome.point.batch_bytes);
        let linger = linger_ms.map_or_else(|| "5".to_owned(), |ms| format!("{ms}"));
        let acks = acks_name(point.acks);
        let _ = writeln!(
            text,
            "Batching starts in the client. Producer settings that match (batch size from \
             {}: a cap, which batches fill to at full load; linger from stage 2{}):\n\n\
             | client | settings |\n|---|---|\n\
             | librdkafka (confluent-kafka, kcat: `-X`) | `acks={acks}` `batch.size={batch_bytes}` \
             `linger.ms={linger}` |\n\
             | kafka-python | `acks={}` `batch_size={batch_bytes}` `linger_ms={linger}` |\n\
             | Java | `acks={acks}` `batch.size={batch_bytes}` `linger.ms={linger}` |\n",
            if batch_bytes == point.batch_bytes {
                "stage 1"
            } else {
                "stage 2, as no point at stage 1's size kept up"
            },
            if linger_ms.is_some() {
                ""
            } else {
                "; stage 2 did not run, so 5 ms, the clients' usual default"
            },
            if acks == "all" { "'all'" } else { acks },
        );
    }

    fn stage2_section(&self, text: &mut String) {
        if self.stage2.is_empty() {
            return;
        }
        let rate = self.stage2[0].point.rate.unwrap_or(0.0);
        let _ = writeln!(
            text,
            "## Stage 2: the producers' batching at {rate:.0} records/s\n\n\
             The recommended broker settings at half their stage-1 throughput: linger \
             decides how full a batch is. A record also waits up to the linger before its \
             request is sent, so its latency is at most the request's plus the linger \
             (\"record p99 ≤\"). A point that could not send the offered rate shows it in \
             records/s.\n"
        );
        table(text, self.stage2, false);
        if let Some(outcome) = self.client_choice.and_then(|index| self.stage2.get(index)) {
            let _ = writeln!(
                text,
                "\nChosen for the clients: batch {} with linger {} ms (the lowest record p99 \
                 bound among the points that sent at least 95 % of the offered rate, at stage \
                 1's batch size if one of those kept up).",
                size_label(outcome.point.batch_bytes),
                outcome.point.linger_ms.unwrap_or(0.0)
            );
        }
        text.push('\n');
    }

    fn not_run_section(&self, text: &mut String) {
        let failed: Vec<_> = self
            .stage1
            .iter()
            .chain(self.stage2)
            .filter_map(|outcome| {
                let error = outcome.result.as_ref().err()?;
                Some(format!("- {}: {error}", outcome.point))
            })
            .collect();
        if self.notes.is_empty() && failed.is_empty() {
            return;
        }
        text.push_str("## Notes, skipped and failed points\n\n");
        for note in self.notes {
            let _ = writeln!(text, "- {note}");
        }
        for line in failed {
            let _ = writeln!(text, "{line}");
        }
        text.push('\n');
    }
}

fn at_risk(measured: &Measurement) -> String {
    match measured.at_risk_ms {
        Some(0.0) => "0".into(),
        Some(ms) => format!("≤ {ms:.1} ms"),
        None => "∞".into(),
    }
}

/// The table of `outcomes`, sorted by records/s (failed points last); `stage1` leaves out
/// the linger and record-bound columns.
fn table(text: &mut String, outcomes: &[Outcome], stage1: bool) {
    let mut rows: Vec<&Outcome> = outcomes.iter().collect();
    rows.sort_by(|a, b| {
        let rate = |outcome: &Outcome| outcome.result.as_ref().map_or(-1.0, |m| m.records_per_s);
        rate(b).total_cmp(&rate(a))
    });
    if stage1 {
        text.push_str(
            "| flush | I/O | batch | acks | records/s | MB/s | p50 ms | p99 ms | p99.9 ms | \
             fdatasyncs/s | fdatasync ms (mean / p99 ≤) | group | limit MB/s | ratio | at risk |\n\
             |---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
    } else {
        text.push_str(
            "| batch | linger ms | records/s | MB/s | p50 ms | p99 ms | record p99 ≤ ms | \
             group | ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
    }
    for outcome in rows {
        let point = &outcome.point;
        let Ok(m) = &outcome.result else {
            continue;
        };
        if stage1 {
            let _ =
                writeln!(
                text,
                "| {} | {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | \
                 {:.0} | {:.2} | {} |",
                point.flush,
                io_mode_name(point.io_mode),
                size_label(point.batch_bytes),
                acks_name(point.acks),
                m.records_per_s,
                m.mb_per_s,
                m.p50_ms,
                m.p99_ms,
                m.p999_ms,
                m.fdatasyncs_per_s,
                if m.fdatasyncs_per_s > 0.0 {
                    format!("{:.2} / {:.1}", m.fdatasync_mean_ms, m.fdatasync_p99_bound_ms)
                } else {
                    "–".into()
                },
                crate::check::human_bytes(m.group_bytes as u64),
                m.limit_mb_per_s,
                m.ratio_to_limit,
                at_risk(m),
            );
        } else {
            let linger_ms = point.linger_ms.unwrap_or(0.0);
            let _ = writeln!(
                text,
                "| {} | {linger_ms} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {:.2} |",
                size_label(point.batch_bytes),
                m.records_per_s,
                m.mb_per_s,
                m.p50_ms,
                m.p99_ms,
                m.p99_ms + linger_ms,
                crate::check::human_bytes(m.group_bytes as u64),
                m.ratio_to_limit,
            );
        }
    }
}
