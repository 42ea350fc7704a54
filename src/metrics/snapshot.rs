//! Point-in-time figures of a bus (topics, partitions, consumer groups) and of a pipeline's
//! stages, as plain data: what `shoal top` prints and what [`export`](super::export) hands to
//! the `metrics` facade.
//!
//! # Cost
//! [`BusSnapshot::take`] reads no record. Per partition it lists the log directory, reads
//! each segment's 64-byte header, binary-searches the last segment's sparse offset index and
//! decodes the records after the last index entry (at most `index_interval_bytes`, 4 KiB by
//! default), then reads the durable watermark from the `HEAD` page. Per group it does what
//! [`describe`] does: a `flock` test per lease and per partition owner lock, one read of each
//! committed-offset file, and the same index search for each partition's end. That keeps a
//! snapshot of a bus with a few hundred partitions well under a millisecond per partition,
//! whatever the segments hold. (`shoal::log::stats` instead decodes and checksums every record
//! of the last segment: up to `segment_bytes`, 64 MiB by default, per partition and call.)
//!
//! # Rates
//! A snapshot holds counts; rates need two. [`BusSnapshot::rates_since`] fills the
//! per-second fields from an earlier snapshot of the same bus. Pipeline stage rates come from
//! [`Pipeline::metrics`](crate::pipeline::Pipeline::metrics), which measures them since its
//! previous call.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bus::{Bus, BusError, Topic};
use crate::group::{describe, GroupError, MemberInfo};
use crate::log::{Offset, Reader};
use crate::pipeline::StageMetrics;

use super::LatencyHistogram;

/// One partition of a topic: the log behind it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartitionSnapshot {
    /// The partition.
    pub partition: u32,
    /// Records held (retention may have removed older ones): `end_offset - first_offset`.
    pub records: u64,
    /// Disk space the segment files take: their allocated blocks (segments are sparse, so
    /// this grows with what was written and prepared ahead, not with the segment size).
    pub bytes: u64,
    /// First offset held, if any record is.
    pub first_offset: Option<u64>,
    /// Last offset held, if any record is.
    pub last_offset: Option<u64>,
    /// The next offset to be appended (every record ever appended, retention or not).
    pub end_offset: u64,
    /// Durable watermark: offsets below it are durable (exclusive, like
    /// [`Appender::durable_offset`](crate::log::Appender::durable_offset)).
    pub durable_offset: u64,
    /// Records appended per second since the previous snapshot; 0.0 until
    /// [`BusSnapshot::rates_since`] fills it.
    pub appended_per_s: f64,
    /// Appenders open on the partition, in any process ([`crate::log::producers`]).
    pub producers: u32,
}

/// A topic and its partitions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicSnapshot {
    /// The topic's name.
    pub name: String,
    /// Every partition, in order.
    pub partitions: Vec<PartitionSnapshot>,
}

impl TopicSnapshot {
    /// Records held over all partitions.
    pub fn records(&self) -> u64 {
        self.partitions.iter().map(|p| p.records).sum()
    }

    /// Bytes on disk over all partitions.
    pub fn bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.bytes).sum()
    }

    /// Records appended per second over all partitions (see
    /// [`PartitionSnapshot::appended_per_s`]).
    pub fn appended_per_s(&self) -> f64 {
        self.partitions.iter().map(|p| p.appended_per_s).sum()
    }
}

/// One partition as a consumer group sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupPartitionSnapshot {
    /// The partition.
    pub partition: u32,
    /// The member holding its owner lock, if any.
    pub owner: Option<String>,
    /// The committed offset: the next offset the group reads.
    pub committed: u64,
    /// The next offset to be appended to the partition.
    pub end: u64,
    /// `end - committed`: records not yet committed by the group.
    pub lag: u64,
    /// Offsets committed per second since the previous snapshot; 0.0 until
    /// [`BusSnapshot::rates_since`] fills it.
    pub committed_per_s: f64,
}

/// A consumer group on one topic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupSnapshot {
    /// The group.
    pub group: String,
    /// The topic it consumes.
    pub topic: String,
    /// Live members, in join order, with the partitions whose lock each holds.
    pub members: Vec<MemberInfo>,
    /// Every partition of the topic.
    pub partitions: Vec<GroupPartitionSnapshot>,
}

impl GroupSnapshot {
    /// Lag over all partitions.
    pub fn lag(&self) -> u64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }

    /// Committed offsets per second over all partitions.
    pub fn committed_per_s(&self) -> f64 {
        self.partitions.iter().map(|p| p.committed_per_s).sum()
    }
}

/// Every topic and consumer group of a bus at one instant.
#[derive(Clone, Debug)]
pub struct BusSnapshot {
    /// The bus directory.
    pub dir: PathBuf,
    /// When the snapshot was taken (monotonic clock, for rates).
    pub taken_at: Instant,
    /// When the snapshot was taken, in ns since the Unix epoch (wall clock, for people).
    pub taken_unix_ns: u64,
    /// The time between the previous snapshot and this one, once
    /// [`BusSnapshot::rates_since`] has filled the rates.
    pub rates_over: Option<Duration>,
    /// Topics, sorted by name.
    pub topics: Vec<TopicSnapshot>,
    /// Groups, sorted by group then topic.
    pub groups: Vec<GroupSnapshot>,
}

impl BusSnapshot {
    /// Takes a snapshot of every topic and group of `bus`. Reads only: it never creates or
    /// removes a file, and reads no record (its cost is described in `src/metrics/snapshot.rs`).
    ///
    /// # Errors
    /// I/O errors listing the bus, a damaged topic `meta` file ([`BusError::BadMeta`]), log
    /// errors reading a partition's segment headers or index (all in [`GroupError::Bus`]), a
    /// damaged offsets file ([`GroupError::BadGroupFile`]). A topic removed while the
    /// snapshot is taken is skipped.
    pub fn take(bus: &Bus) -> Result<BusSnapshot, GroupError> {
        let taken_at = Instant::now();
        let taken_unix_ns =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut topics = Vec::new();
        for name in bus.topics()? {
            let topic = match bus.topic(&name) {
                Ok(topic) => topic,
                Err(BusError::NoTopic { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            topics.push(topic_snapshot(&topic)?);
        }
        let groups = describe(bus)?
            .into_iter()
            .map(|g| GroupSnapshot {
                group: g.group,
                topic: g.topic,
                members: g.members,
                partitions: g
                    .partitions
                    .into_iter()
                    .map(|p| GroupPartitionSnapshot {
                        partition: p.partition,
                        owner: p.owner,
                        committed: p.committed,
                        end: p.end,
                        lag: p.lag,
                        committed_per_s: 0.0,
                    })
                    .collect(),
            })
            .collect();
        Ok(BusSnapshot { dir: bus.dir().to_path_buf(), taken_at, taken_unix_ns, rates_over: None, topics, groups })
    }

    /// Fills the per-second fields (appends per partition, commits per group partition)
    /// from `previous`, an earlier snapshot of the same bus. Partitions and groups that
    /// `previous` lacks, or a `previous` that is not earlier, leave their rates at 0.0; a
    /// count that went down (a topic deleted and created again) counts as 0.
    pub fn rates_since(&mut self, previous: &BusSnapshot) {
        let secs = self.taken_at.saturating_duration_since(previous.taken_at).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        self.rates_over = Some(self.taken_at.saturating_duration_since(previous.taken_at));
        for topic in &mut self.topics {
            let Some(before) = previous.topic(&topic.name) else { continue };
            for p in &mut topic.partitions {
                if let Some(b) = before.partitions.iter().find(|b| b.partition == p.partition) {
                    p.appended_per_s = p.end_offset.saturating_sub(b.end_offset) as f64 / secs;
                }
            }
        }
        for group in &mut self.groups {
            let Some(before) = previous.group(&group.group, &group.topic) else { continue };
            for p in &mut group.partitions {
                if let Some(b) = before.partitions.iter().find(|b| b.partition == p.partition) {
                    p.committed_per_s = p.committed.saturating_sub(b.committed) as f64 / secs;
                }
            }
        }
    }

    /// The topic called `name`, if the snapshot has it.
    pub fn topic(&self, name: &str) -> Option<&TopicSnapshot> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// The group `group` on topic `topic`, if the snapshot has it.
    pub fn group(&self, group: &str, topic: &str) -> Option<&GroupSnapshot> {
        self.groups.iter().find(|g| g.group == group && g.topic == topic)
    }
}

/// Figures of every partition of `topic`.
fn topic_snapshot(topic: &Topic) -> Result<TopicSnapshot, BusError> {
    let mut partitions = Vec::with_capacity(topic.partitions() as usize);
    for p in 0..topic.partitions() {
        partitions.push(partition_snapshot(p, &topic.partition_dir(p)?)?);
    }
    Ok(TopicSnapshot { name: topic.name().to_string(), partitions })
}

/// Figures of the log of one partition; zeros for a partition never written to.
fn partition_snapshot(partition: u32, dir: &Path) -> Result<PartitionSnapshot, BusError> {
    let mut out = PartitionSnapshot { partition, ..PartitionSnapshot::default() };
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut reader = Reader::open(dir)?;
    let first = reader.first_offset()?.0;
    reader.seek(Offset(u64::MAX))?;
    let end = reader.next_offset().0;
    out.end_offset = end;
    if end > first {
        out.records = end - first;
        out.first_offset = Some(first);
        out.last_offset = Some(end - 1);
    }
    out.bytes = crate::log::disk_bytes(dir)?;
    out.durable_offset = reader.durable_offset().0.min(end);
    out.producers = crate::log::producers(dir)?.len() as u32;
    Ok(out)
}

/// One pipeline stage at one instant, from [`StageMetrics`].
#[derive(Clone, Debug, Default)]
pub struct StageSnapshot {
    /// The stage's name (the source comes first, under its own name).
    pub name: String,
    /// Workers now.
    pub workers: usize,
    /// Events handled since the start (the source: events emitted).
    pub events: u64,
    /// Events per second since the previous call to `Pipeline::metrics`.
    pub events_per_s: f64,
    /// Values waiting in the stage's input rings over their capacity, 0.0..=1.0.
    pub ring_occupancy: f64,
    /// Hop latencies sampled into the stage since the start (0 when latency metrics are off).
    pub hop_samples: u64,
    /// Median hop latency in ns, when latency metrics are on and a hop was sampled.
    pub hop_p50_ns: Option<u64>,
    /// 99th percentile hop latency in ns, as `hop_p50_ns`.
    pub hop_p99_ns: Option<u64>,
    /// 99.9th percentile hop latency in ns, as `hop_p50_ns`.
    pub hop_p999_ns: Option<u64>,
    /// Largest hop latency in ns, as `hop_p50_ns`.
    pub hop_max_ns: Option<u64>,
    /// The whole hop latency histogram, when latency metrics are on.
    pub hop_latency: Option<LatencyHistogram>,
}

impl From<&StageMetrics> for StageSnapshot {
    fn from(m: &StageMetrics) -> StageSnapshot {
        let sampled = m.hop_latency.as_ref().filter(|h| h.count() > 0);
        StageSnapshot {
            name: m.name.clone(),
            workers: m.workers,
            events: m.events,
            events_per_s: m.events_per_s,
            ring_occupancy: m.ring_occupancy,
            hop_samples: m.hop_latency.as_ref().map_or(0, LatencyHistogram::count),
            hop_p50_ns: sampled.map(|h| h.quantile_ns(0.5)),
            hop_p99_ns: sampled.map(|h| h.quantile_ns(0.99)),
            hop_p999_ns: sampled.map(|h| h.quantile_ns(0.999)),
            hop_max_ns: sampled.map(LatencyHistogram::max_ns),
            hop_latency: m.hop_latency.clone(),
        }
    }
}

/// Snapshots of every stage, in the order of `metrics` (the source first), from
/// [`Pipeline::metrics`](crate::pipeline::Pipeline::metrics).
pub fn stages(metrics: &[StageMetrics]) -> Vec<StageSnapshot> {
    metrics.iter().map(StageSnapshot::from).collect()
}

/// A bus and, optionally, a pipeline that works on it, at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Topics, partitions and groups.
    pub bus: BusSnapshot,
    /// Pipeline stages (empty when no pipeline was given).
    pub stages: Vec<StageSnapshot>,
}

impl Snapshot {
    /// Takes a snapshot of `bus` and converts `metrics` (from
    /// [`Pipeline::metrics`](crate::pipeline::Pipeline::metrics); pass `&[]` for none).
    ///
    /// # Errors
    /// As [`BusSnapshot::take`].
    pub fn take(bus: &Bus, metrics: &[StageMetrics]) -> Result<Snapshot, GroupError> {
        Ok(Snapshot { bus: BusSnapshot::take(bus)?, stages: stages(metrics) })
    }

    /// Fills the bus rates from `previous` (see [`BusSnapshot::rates_since`]); stage rates
    /// already come from the pipeline.
    pub fn rates_since(&mut self, previous: &Snapshot) {
        self.bus.rates_since(&previous.bus);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::group::{GroupOptions, Member};
    use crate::log::LogOptions;

    #[test]
    fn partitions_match_what_was_produced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = Bus::open(dir.path()).expect("bus");
        let topic = bus.topic_or_create("orders", Some(3)).expect("topic");
        let empty = BusSnapshot::take(&bus).expect("snapshot");
        let t = empty.topic("orders").expect("topic in snapshot");
        assert_eq!(t.partitions.len(), 3);
        assert!(t.partitions.iter().all(|p| p.records == 0 && p.first_offset.is_none() && p.end_offset == 0));

        let mut producer = topic.producer(LogOptions::default()).expect("producer");
        // 7 records into partition 0, 2 into 1, none into 2.
        for _ in 0..7 {
            producer.send_to(0, 0, b"seven").expect("send");
        }
        for _ in 0..2 {
            producer.send_to(1, 0, b"two").expect("send");
        }
        producer.sync().expect("sync");
        let before = BusSnapshot::take(&bus).expect("snapshot");
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..4 {
            producer.send_to(0, 0, b"more").expect("send");
        }
        let mut snap = BusSnapshot::take(&bus).expect("snapshot");
        snap.rates_since(&before);
        assert!(snap.rates_over.is_some_and(|d| d >= Duration::from_millis(20)));
        let t = snap.topic("orders").expect("topic in snapshot");
        let p0 = &t.partitions[0];
        assert_eq!((p0.records, p0.first_offset, p0.last_offset, p0.end_offset), (11, Some(0), Some(10), 11));
        let p1 = &t.partitions[1];
        assert_eq!((p1.records, p1.first_offset, p1.last_offset, p1.durable_offset), (2, Some(0), Some(1), 2));
        assert_eq!(t.partitions[2].records, 0);
        assert_eq!(t.records(), 13);
        // Batch durability: every acknowledged append is durable.
        producer.sync().expect("sync");
        let synced = BusSnapshot::take(&bus).expect("snapshot");
        assert_eq!(synced.topic("orders").map(|t| t.partitions[0].durable_offset), Some(11));
        // Rates: 4 appends to partition 0 over the interval, none elsewhere.
        let secs = snap.rates_over.map_or(0.0, |d| d.as_secs_f64());
        assert!((p0.appended_per_s - 4.0 / secs).abs() < 1e-6, "{}", p0.appended_per_s);
        assert_eq!(p1.appended_per_s, 0.0);
        // Same figures as the full scan of `log::stats`, bytes included. The producer is
        // closed first: while it is open its preparer thread may add the next segment file
        // between the snapshot and the scan.
        producer.close().expect("close");
        let settled = BusSnapshot::take(&bus).expect("snapshot");
        for p in &settled.topic("orders").expect("topic").partitions {
            let pdir = topic.partition_dir(p.partition).expect("dir");
            if !pdir.is_dir() {
                assert_eq!(p.bytes, 0);
                continue;
            }
            let full = crate::log::stats(&pdir).expect("stats");
            assert_eq!(
                (p.records, p.bytes, p.first_offset, p.last_offset, p.durable_offset),
                (full.records, full.bytes, full.first_offset, full.last_offset, full.durable_offset),
                "partition {}",
                p.partition
            );
        }
    }

    #[test]
    fn groups_show_members_committed_offsets_and_lag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = Bus::open(dir.path()).expect("bus");
        let topic = bus.topic_or_create("events", Some(2)).expect("topic");
        let mut producer = topic.producer(LogOptions::default()).expect("producer");
        for i in 0..20u32 {
            producer.send_to(i % 2, 0, b"e").expect("send");
        }
        producer.sync().expect("sync");
        let opts = GroupOptions { label: "test member".into(), ..GroupOptions::default() };
        let mut member = Member::join(&bus, "audit", "events", opts).expect("join");
        let mut read = 0;
        for _ in 0..200 {
            read += member.poll(4, Duration::from_millis(20)).expect("poll").len();
            if read >= 12 {
                break;
            }
        }
        member.commit().expect("commit");
        let before = BusSnapshot::take(&bus).expect("snapshot");
        let g = before.group("audit", "events").expect("group in snapshot");
        assert_eq!(g.members.len(), 1);
        assert_eq!(g.members[0].label, "test member");
        assert_eq!(g.members[0].partitions, vec![0, 1]);
        assert!(g.partitions.iter().all(|p| p.owner.as_deref() == Some(member.id())));
        let committed: u64 = g.partitions.iter().map(|p| p.committed).sum();
        assert_eq!(committed, read as u64);
        assert_eq!(g.lag(), 20 - read as u64);
        assert!(g.partitions.iter().all(|p| p.end == 10 && p.lag == p.end - p.committed));

        // Read and commit the rest: lag 0, and commit rates over the interval.
        std::thread::sleep(Duration::from_millis(10));
        let mut rest = 0;
        for _ in 0..200 {
            rest += member.poll(64, Duration::from_millis(20)).expect("poll").len();
            if read + rest >= 20 {
                break;
            }
        }
        member.commit().expect("commit");
        let mut after = BusSnapshot::take(&bus).expect("snapshot");
        after.rates_since(&before);
        let g = after.group("audit", "events").expect("group in snapshot");
        assert_eq!(g.lag(), 0);
        let secs = after.rates_over.map_or(0.0, |d| d.as_secs_f64());
        assert!((g.committed_per_s() - rest as f64 / secs).abs() < 1e-6);

        member.leave().expect("leave");
        let left = BusSnapshot::take(&bus).expect("snapshot");
        let g = left.group("audit", "events").expect("group in snapshot");
        assert!(g.members.is_empty());
        assert!(g.partitions.iter().all(|p| p.owner.is_none() && p.committed == 10));
    }

    #[test]
    fn stage_metrics_convert_with_quantiles() {
        let mut hist = LatencyHistogram::new();
        for ns in 1..=100u64 {
            hist.record(ns * 10);
        }
        let m = StageMetrics {
            name: "parse".into(),
            workers: 3,
            events: 42,
            events_per_s: 21.0,
            ring_occupancy: 0.5,
            hop_latency: Some(hist),
        };
        let off = StageMetrics { name: "src".into(), hop_latency: None, ..m.clone() };
        let s = stages(&[off, m]);
        assert_eq!(s[0].hop_p50_ns, None);
        assert_eq!(s[0].hop_samples, 0);
        let s = &s[1];
        assert_eq!((s.name.as_str(), s.workers, s.events, s.hop_samples), ("parse", 3, 42, 100));
        assert_eq!((s.events_per_s, s.ring_occupancy), (21.0, 0.5));
        assert_eq!(s.hop_p50_ns, Some(500));
        assert_eq!(s.hop_p99_ns, Some(990));
        assert_eq!(s.hop_max_ns, Some(1000));
    }

    #[test]
    fn a_bus_with_nothing_is_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = Bus::open(dir.path()).expect("bus");
        let snap = Snapshot::take(&bus, &[]).expect("snapshot");
        assert!(snap.bus.topics.is_empty() && snap.bus.groups.is_empty() && snap.stages.is_empty());
    }
}
