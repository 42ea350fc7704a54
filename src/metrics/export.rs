//! Hands shoal's figures to the [`metrics`](https://docs.rs/metrics) facade (cargo feature
//! `metrics`), so that whatever recorder the application installed (a Prometheus exporter,
//! StatsD, a test's `DebuggingRecorder`) sees them with no glue code: call [`export`] with
//! each [`BusSnapshot`] and [`PipelineExporter::export`] (or [`export_pipeline`]) with each
//! [`Pipeline::metrics`](crate::pipeline::Pipeline::metrics), for example once a second.
//!
//! # Names (Prometheus conventions: base units, `_total` for counters)
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `shoal_partition_records` | gauge | `topic`, `partition` |
//! | `shoal_partition_bytes` | gauge | `topic`, `partition` |
//! | `shoal_partition_end_offset` | gauge | `topic`, `partition` |
//! | `shoal_partition_durable_offset` | gauge | `topic`, `partition` |
//! | `shoal_partition_appended_total` | counter (absolute: the end offset) | `topic`, `partition` |
//! | `shoal_partition_appended_per_second` | gauge (only once rates are filled) | `topic`, `partition` |
//! | `shoal_group_members` | gauge | `group`, `topic` |
//! | `shoal_group_committed_offset` | gauge | `group`, `topic`, `partition` |
//! | `shoal_group_lag` | gauge | `group`, `topic`, `partition` |
//! | `shoal_stage_workers` | gauge | `stage` |
//! | `shoal_stage_events_total` | counter (absolute) | `stage` |
//! | `shoal_stage_events_per_second` | gauge | `stage` |
//! | `shoal_stage_ring_occupancy` | gauge (0..=1) | `stage` |
//! | `shoal_stage_hop_latency_p50_seconds`, `_p99_seconds`, `_p999_seconds`, `_max_seconds` | gauge | `stage` |
//! | `shoal_stage_hop_latency_seconds` | histogram (new samples only, [`PipelineExporter`]) | `stage` |
//!
//! Counters are set with `absolute`: the values are shoal's own totals, so two exports of the
//! same snapshot count nothing twice. The latency histogram gets only the samples recorded
//! since the previous export, which is why it needs the state of a [`PipelineExporter`].

use std::collections::HashMap;

use crate::pipeline::StageMetrics;

use super::snapshot::{BusSnapshot, StageSnapshot};
use super::LatencyHistogram;

/// Records the gauges and counters of every partition and group of `snapshot` in the
/// installed `metrics` recorder (the names are listed in `src/metrics/export.rs`).
pub fn export(snapshot: &BusSnapshot) {
    let rates = snapshot.rates_over.is_some();
    for topic in &snapshot.topics {
        for p in &topic.partitions {
            let labels = [("topic", topic.name.clone()), ("partition", p.partition.to_string())];
            ::metrics::gauge!("shoal_partition_records", &labels).set(p.records as f64);
            ::metrics::gauge!("shoal_partition_bytes", &labels).set(p.bytes as f64);
            ::metrics::gauge!("shoal_partition_end_offset", &labels).set(p.end_offset as f64);
            ::metrics::gauge!("shoal_partition_durable_offset", &labels).set(p.durable_offset as f64);
            ::metrics::counter!("shoal_partition_appended_total", &labels).absolute(p.end_offset);
            if rates {
                ::metrics::gauge!("shoal_partition_appended_per_second", &labels).set(p.appended_per_s);
            }
        }
    }
    for g in &snapshot.groups {
        let labels = [("group", g.group.clone()), ("topic", g.topic.clone())];
        ::metrics::gauge!("shoal_group_members", &labels).set(g.members.len() as f64);
        for p in &g.partitions {
            let labels =
                [("group", g.group.clone()), ("topic", g.topic.clone()), ("partition", p.partition.to_string())];
            ::metrics::gauge!("shoal_group_committed_offset", &labels).set(p.committed as f64);
            ::metrics::gauge!("shoal_group_lag", &labels).set(p.lag as f64);
        }
    }
}

/// Records the gauges and counters of every stage in `metrics` (from
/// [`Pipeline::metrics`](crate::pipeline::Pipeline::metrics)), hop latency quantiles
/// included, but not the latency histogram: that takes a [`PipelineExporter`].
pub fn export_pipeline(metrics: &[StageMetrics]) {
    for m in metrics {
        export_stage(&StageSnapshot::from(m));
    }
}

/// Records one stage's gauges and counters.
fn export_stage(s: &StageSnapshot) {
    let labels = [("stage", s.name.clone())];
    ::metrics::gauge!("shoal_stage_workers", &labels).set(s.workers as f64);
    ::metrics::counter!("shoal_stage_events_total", &labels).absolute(s.events);
    ::metrics::gauge!("shoal_stage_events_per_second", &labels).set(s.events_per_s);
    ::metrics::gauge!("shoal_stage_ring_occupancy", &labels).set(s.ring_occupancy);
    let quantiles = [
        ("shoal_stage_hop_latency_p50_seconds", s.hop_p50_ns),
        ("shoal_stage_hop_latency_p99_seconds", s.hop_p99_ns),
        ("shoal_stage_hop_latency_p999_seconds", s.hop_p999_ns),
        ("shoal_stage_hop_latency_max_seconds", s.hop_max_ns),
    ];
    for (name, ns) in quantiles {
        if let Some(ns) = ns {
            ::metrics::gauge!(name, &labels).set(ns as f64 / 1e9);
        }
    }
}

/// Exports a pipeline's stages again and again, feeding the `shoal_stage_hop_latency_seconds`
/// histogram with the samples recorded since the previous export (a pipeline's histograms
/// count from its start). One exporter per pipeline.
#[derive(Debug, Default)]
pub struct PipelineExporter {
    /// Per stage, the histogram as it stood at the previous export.
    exported: HashMap<String, LatencyHistogram>,
}

impl PipelineExporter {
    /// An exporter that has exported nothing yet.
    pub fn new() -> PipelineExporter {
        PipelineExporter::default()
    }

    /// Does [`export_pipeline`] and records each stage's new hop latency samples in the
    /// `shoal_stage_hop_latency_seconds` histogram.
    pub fn export(&mut self, metrics: &[StageMetrics]) {
        export_pipeline(metrics);
        for m in metrics {
            let Some(now) = &m.hop_latency else { continue };
            let histogram = ::metrics::histogram!("shoal_stage_hop_latency_seconds", "stage" => m.name.clone());
            let mut new = now.hdr().clone();
            if let Some(before) = self.exported.get(&m.name) {
                // A histogram that shrank belongs to another pipeline under the same stage
                // name: its samples all count as new.
                if before.count() > now.count() || new.subtract(before.hdr()).is_err() {
                    new = now.hdr().clone();
                }
            }
            for v in new.iter_recorded() {
                let count = usize::try_from(v.count_at_value()).unwrap_or(usize::MAX);
                histogram.record_many(v.value_iterated_to() as f64 / 1e9, count);
            }
            self.exported.insert(m.name.clone(), now.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::{CompositeKey, MetricKind};

    use super::*;
    use crate::bus::Bus;
    use crate::group::{GroupOptions, Member};
    use crate::log::LogOptions;

    /// (kind, name, sorted labels) -> value, from a debugging recorder.
    type Seen = HashMap<(MetricKind, String, Vec<(String, String)>), DebugValue>;

    fn seen(recorder: &DebuggingRecorder) -> Seen {
        recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value): (CompositeKey, _, _, _)| {
                let (kind, key) = key.into_parts();
                let mut labels: Vec<(String, String)> =
                    key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
                labels.sort();
                ((kind, key.name().to_string(), labels), value)
            })
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v.sort();
        v
    }

    fn gauge(seen: &Seen, name: &str, pairs: &[(&str, &str)]) -> f64 {
        match seen.get(&(MetricKind::Gauge, name.to_string(), labels(pairs))) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("gauge {name} {pairs:?}: {other:?}"),
        }
    }

    #[test]
    fn bus_figures_reach_the_recorder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = Bus::open(dir.path()).expect("bus");
        let topic = bus.topic_or_create("orders", Some(2)).expect("topic");
        let mut producer = topic.producer(LogOptions::default()).expect("producer");
        for i in 0..10u32 {
            producer.send_to(i % 2, 0, b"x").expect("send");
        }
        producer.sync().expect("sync");
        let mut member = Member::join(&bus, "billing", "orders", GroupOptions::default()).expect("join");
        let mut read = 0;
        for _ in 0..100 {
            read += member.poll(3, std::time::Duration::from_millis(50)).expect("poll").len();
            if read >= 3 {
                break;
            }
        }
        member.commit().expect("commit");
        let before = BusSnapshot::take(&bus).expect("snapshot");
        producer.send_to(0, 0, b"y").expect("send");
        let mut snap = BusSnapshot::take(&bus).expect("snapshot");
        snap.rates_since(&before);

        let recorder = DebuggingRecorder::new();
        ::metrics::with_local_recorder(&recorder, || export(&snap));
        let seen = seen(&recorder);
        assert_eq!(gauge(&seen, "shoal_partition_records", &[("topic", "orders"), ("partition", "0")]), 6.0);
        assert_eq!(gauge(&seen, "shoal_partition_records", &[("topic", "orders"), ("partition", "1")]), 5.0);
        assert_eq!(gauge(&seen, "shoal_partition_durable_offset", &[("topic", "orders"), ("partition", "1")]), 5.0);
        assert!(gauge(&seen, "shoal_partition_appended_per_second", &[("topic", "orders"), ("partition", "0")]) > 0.0);
        assert_eq!(
            seen.get(&(
                MetricKind::Counter,
                "shoal_partition_appended_total".into(),
                labels(&[("topic", "orders"), ("partition", "0")])
            )),
            Some(&DebugValue::Counter(6))
        );
        let group = snap.group("billing", "orders").expect("group in snapshot");
        assert_eq!(gauge(&seen, "shoal_group_members", &[("group", "billing"), ("topic", "orders")]), 1.0);
        let mut lag = 0.0;
        for p in &group.partitions {
            let part = p.partition.to_string();
            let l = [("group", "billing"), ("topic", "orders"), ("partition", part.as_str())];
            assert_eq!(gauge(&seen, "shoal_group_lag", &l), p.lag as f64);
            assert_eq!(gauge(&seen, "shoal_group_committed_offset", &l), p.committed as f64);
            lag += gauge(&seen, "shoal_group_lag", &l);
        }
        // 11 records, `read` of them committed.
        assert_eq!(lag, (11 - read) as f64);
        member.leave().expect("leave");
    }

    #[test]
    fn stage_figures_and_new_latency_samples_reach_the_recorder() {
        let mut hist = LatencyHistogram::new();
        for ns in [100u64, 200, 300, 400, 100_000] {
            hist.record(ns);
        }
        let mut stage = StageMetrics {
            name: "enrich".into(),
            workers: 2,
            events: 500,
            events_per_s: 250.0,
            ring_occupancy: 0.25,
            hop_latency: Some(hist.clone()),
        };
        let recorder = DebuggingRecorder::new();
        let mut exporter = PipelineExporter::new();
        ::metrics::with_local_recorder(&recorder, || exporter.export(std::slice::from_ref(&stage)));
        let first = seen(&recorder);
        let s = [("stage", "enrich")];
        assert_eq!(gauge(&first, "shoal_stage_events_per_second", &s), 250.0);
        assert_eq!(gauge(&first, "shoal_stage_ring_occupancy", &s), 0.25);
        assert_eq!(gauge(&first, "shoal_stage_workers", &s), 2.0);
        let p50 = gauge(&first, "shoal_stage_hop_latency_p50_seconds", &s);
        assert!((2.9e-7..=3.01e-7).contains(&p50), "{p50}");
        assert!(gauge(&first, "shoal_stage_hop_latency_max_seconds", &s) >= 1e-4 * 0.999);
        let samples = |seen: &Seen| match seen.get(&(
            MetricKind::Histogram,
            "shoal_stage_hop_latency_seconds".into(),
            labels(&s),
        )) {
            Some(DebugValue::Histogram(v)) => v.len(),
            other => panic!("histogram: {other:?}"),
        };
        assert_eq!(samples(&first), 5);
        // Two more samples: only they are recorded the second time.
        hist.record(500);
        hist.record(600);
        stage.hop_latency = Some(hist);
        stage.events = 700;
        ::metrics::with_local_recorder(&recorder, || exporter.export(std::slice::from_ref(&stage)));
        let second = seen(&recorder);
        assert_eq!(samples(&second), 2, "the snapshot drains the histogram: only new samples");
        assert_eq!(
            second.get(&(MetricKind::Counter, "shoal_stage_events_total".into(), labels(&s))),
            Some(&DebugValue::Counter(700))
        );
    }
}
