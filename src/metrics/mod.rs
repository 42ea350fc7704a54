//! Metrics: latency histograms and counters that the parts of shoal record and the CLI
//! prints.
//!
//! Histograms are `hdrhistogram` with 3 significant figures over 1 ns .. 1 hour; recording
//! never allocates after construction.
//!
//! # Snapshots and export
//! [`BusSnapshot`] gathers, per topic and partition, records, bytes, first, last and durable
//! offsets and (from two snapshots) append rates; per consumer group, members, owners,
//! committed offsets and lag. [`StageSnapshot`] turns a pipeline's [`StageMetrics`](crate::pipeline::StageMetrics)
//! into plain figures with hop latency quantiles; [`Snapshot`] holds both. `shoal top`
//! prints them. With the cargo feature `metrics`, `export` (and `export_pipeline`,
//! `PipelineExporter`) record them through the `metrics` facade, so that any exporter the
//! application installed (Prometheus or another) sees them.

mod snapshot;

#[cfg(feature = "metrics")]
mod export;

#[cfg(feature = "metrics")]
pub use export::{export, export_pipeline, PipelineExporter};
pub use snapshot::{
    stages, BusSnapshot, GroupPartitionSnapshot, GroupSnapshot, PartitionSnapshot, Snapshot, StageSnapshot,
    TopicSnapshot,
};

/// A latency histogram in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    hist: hdrhistogram::Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram covering 1 ns to one hour.
    pub fn new() -> LatencyHistogram {
        // Fixed, valid bounds (1 <= low, high >= 2 * low, 3 significant figures): this
        // constructor cannot fail.
        let hist = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("constant histogram bounds are valid");
        LatencyHistogram { hist }
    }

    /// Records one value in ns (clamped into range).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0.0..=1.0), in ns; 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }

    /// Largest value recorded, in ns.
    pub fn max_ns(&self) -> u64 {
        self.hist.max()
    }

    /// Mean in ns.
    pub fn mean_ns(&self) -> f64 {
        self.hist.mean()
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        let _ = self.hist.add(&other.hist);
    }

    /// The underlying histogram (for exporters that walk its buckets).
    #[cfg(feature = "metrics")]
    pub(crate) fn hdr(&self) -> &hdrhistogram::Histogram<u64> {
        &self.hist
    }
}

/// Formats nanoseconds for people: `850 ns`, `12.3 us`, `4.56 ms`, `1.23 s`.
pub fn format_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} us", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_the_values() {
        let mut h = LatencyHistogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile_ns(0.5);
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        assert!(h.quantile_ns(0.99) >= 989_000);
        assert_eq!(format_ns(999), "999 ns");
        assert_eq!(format_ns(12_345), "12.3 us");
    }
}
