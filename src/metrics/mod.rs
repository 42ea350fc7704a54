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

pub use crate::sys::histogram::LatencyHistogram;
#[cfg(feature = "metrics")]
pub use export::{export, export_pipeline, PipelineExporter};
pub use snapshot::{
    stages, BusSnapshot, GroupPartitionSnapshot, GroupSnapshot, PartitionSnapshot, Snapshot, StageSnapshot,
    TopicSnapshot,
};

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
    fn formats_for_people() {
        assert_eq!(format_ns(999), "999 ns");
        assert_eq!(format_ns(12_345), "12.3 us");
    }
}
