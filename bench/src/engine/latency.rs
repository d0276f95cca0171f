//! Append latency: an HDR histogram in nanoseconds (3 significant digits, up to a minute;
//! longer values are clamped to the top), summarized in microseconds for reports.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency the histogram tells apart: one minute, in nanoseconds.
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// A histogram of operation latencies.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Latencies {
        let histogram = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3);
        let Ok(histogram) = histogram else {
            unreachable!("constant histogram bounds are valid")
        };
        Latencies { histogram }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(nanos.max(1));
    }

    /// Adds every latency `other` holds.
    pub fn add(&mut self, other: &Latencies) {
        // Both histograms have the same bounds, so adding cannot fail.
        let added = self.histogram.add(&other.histogram);
        assert!(added.is_ok(), "histograms of equal bounds add");
    }

    /// Percentiles, mean and maximum in microseconds.
    pub fn summary(&self) -> LatencySummary {
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        let histogram = &self.histogram;
        LatencySummary {
            count: histogram.len(),
            p50_us: us(histogram.value_at_quantile(0.50)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            mean_us: histogram.mean() / 1_000.0,
        }
    }
}

/// What a latency histogram says, in microseconds (reports name it `latency_us`, so its
/// keys are `p50`, `p99`, `p999`, `max`, `mean`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    #[serde(rename = "p50")]
    pub p50_us: f64,
    #[serde(rename = "p99")]
    pub p99_us: f64,
    #[serde(rename = "p999")]
    pub p999_us: f64,
    #[serde(rename = "max")]
    pub max_us: f64,
    #[serde(rename = "mean")]
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Latencies;

    #[test]
    fn percentiles_come_out_in_microseconds() {
        let mut latencies = Latencies::new();
        for micros in 1..=1000 {
            latencies.record(Duration::from_micros(micros));
        }
        let summary = latencies.summary();
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_us - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p99_us - 990.0).abs() < 1.0, "{summary:?}");
        assert!((summary.max_us - 1000.0).abs() < 1.0, "{summary:?}");
    }
}
