//! Consumer-group benchmarks (ARCHITECTURE.md, "Performance budget": "Groups: a partition that moves
//! pauses p99 <= 1 ms; partitions that do not move never pause").
//!
//! | group | what | shoal | peer |
//! | --- | --- | --- | --- |
//! | `group_throughput` | drain a 4-partition topic of N 100-byte records, every payload touched | one `Member` of a fresh group in this thread by each poll: `member_poll_with` (records lent in place), `member_poll_with_commit_at_leave` (the same, committing only when it leaves: what the commits cost), `member_poll_into` (the caller's vector reused), `member_poll` (a new vector per poll); and 1, 2, 4 threads (`members_threads/k`, `poll`) and 1, 2, 4 processes (`members_processes/k`), committing after every poll | one thread reading the 4 partition logs with `shoal::log::Reader` (`single_reader`) |
//! | `rebalance` | a third member joins and leaves (gracefully) a group of two while a producer writes 8 partitions | the time of one join (until the newcomer holds its share) plus one `leave` | none: the figures are the latencies printed at the end of the group |
//!
//! `group_throughput`: each measured run starts members (threads or processes) in a fresh
//! group, so they replay the topic from offset 0, and ends when all of them have left. A thread
//! member stops once the members together delivered N; a process member stops when its poll
//! comes back empty after the parent has seen every partition's committed offset reach the end
//! (the committed offsets are read from the group's offsets files, the figure `describe`
//! reports as lag) and created a stop file. Process runs time from spawn to the last exit, so
//! they include exec and start-up of the bench binary (it runs itself in a child mode chosen by
//! `SHOAL_GROUP_BENCH_CHILD`), joining, handovers while members join one after another, and
//! the stop-file round trip: with small N they measure mostly start-up.
//!
//! `rebalance`: a producer appends one 100-byte record to each of 8 partitions every 100 us
//! (record timestamps are the append time); members A and B poll all along with a 1 ms timeout
//! and record, for each delivery, now - `RecordRef::timestamp_ns` (the appender's wall clock;
//! both sides are the system clock to within the appender's re-anchoring). A delivery counts as:
//! - *moving* when it is the first one of a partition after the member acquired it (the
//!   partition's pause plus one hop). C records its first deliveries the same way.
//! - *non-moving* when the member has held its partition since the start of the current cycle
//!   (one join and one leave of C). Per cycle rather than per run: C gets a new id at every
//!   join and rendezvous hashing gives it a different share each time, so over tens of cycles
//!   almost every partition moves at some point.
//! - *backlog*: the rest (records of a partition that moved in, after its first delivery).
//!
//! The cycles are criterion's iterations: C joins, polls until it holds its share, keeps
//! polling for 15 ms, leaves, and the driver waits 15 ms more. Each cycle is followed by an
//! empty baseline cycle of the same length and instants with no join or leave, so the two
//! phases share whatever else the (shared) machine is doing at the time. The end of the group
//! prints both phases: moving pauses, non-moving latency over the whole phase and within 2 ms
//! of each join or leave (of the same instants in the baseline cycles), and
//! `MemberStats::pause` (assignment naming the member to lock held).
//!
//! Scratch files go under `$SHOAL_BENCH_DIR` or else the system temp directory. Under
//! `cargo test --benches` (no `--bench` flag) criterion runs each bench once and the sizes
//! here shrink, so that mode stays quick.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, SamplingMode, Throughput};
use shoal::bus::Bus;
use shoal::group::{assign, decode_offsets, GroupOptions, Member};
use shoal::log::{now_ns, Durability, LogOptions, Reader};
use shoal::metrics::{format_ns, LatencyHistogram};

/// Selects the child mode of `members_processes`; its value is the bus directory.
const CHILD_ENV: &str = "SHOAL_GROUP_BENCH_CHILD";
/// The child's group name.
const CHILD_GROUP_ENV: &str = "SHOAL_GROUP_BENCH_GROUP";
/// The file whose existence tells a drained child to leave.
const CHILD_STOP_ENV: &str = "SHOAL_GROUP_BENCH_STOP";

const THROUGHPUT_TOPIC: &str = "records";
const THROUGHPUT_PARTITIONS: u32 = 4;
const REBALANCE_TOPIC: &str = "live";
const REBALANCE_PARTITIONS: u32 = 8;
const PAYLOAD_BYTES: usize = 100;
/// Records asked for by each `poll` of the throughput members.
const POLL_MAX: usize = 1024;
/// Longest a process run may take before the bench gives up on it.
const PROCESS_RUN_MAX: Duration = Duration::from_secs(120);

/// Sizes for one run: full under `cargo bench`, small under `cargo test --benches`.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// Records in the throughput topic (spread evenly over its partitions).
    records: u64,
    /// How long the rebalance rig runs before its first measured cycle.
    rig_warm_up: Duration,
    /// C's join+leave cycles timed before criterion starts, to size criterion's run.
    calibration_cycles: u32,
    /// C's join+leave cycles criterion should run (warm-up excluded), roughly.
    cycles_target: u32,
}

impl Scale {
    fn from_args() -> Scale {
        if std::env::args().any(|a| a == "--bench") {
            Scale {
                records: 1 << 20,
                rig_warm_up: Duration::from_millis(300),
                calibration_cycles: 3,
                cycles_target: 50,
            }
        } else {
            Scale { records: 1 << 13, rig_warm_up: Duration::from_millis(50), calibration_cycles: 1, cycles_target: 1 }
        }
    }
}

/// Where scratch buses go.
fn bench_root() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("shoal-bench-").tempdir_in(bench_root()).expect("create a scratch directory")
}

fn member_options(label: &str) -> GroupOptions {
    GroupOptions::default().label(label.to_string())
}

/// Touches a payload at both ends (what every reader in this file does with each record).
#[inline]
fn touch(payload: &[u8]) -> u64 {
    match (payload.first(), payload.last()) {
        (Some(&a), Some(&b)) => u64::from(a) ^ u64::from(b),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// group_throughput

/// Which poll `one_member` uses.
#[derive(Clone, Copy, Debug)]
enum Poll {
    /// `Member::poll_with`: records lent in place.
    With,
    /// `Member::poll_with`, committing only at the end (`leave`): what the commits cost.
    WithoutCommits,
    /// `Member::poll_into`: the caller's vector, reused.
    Into,
    /// `Member::poll`: a new vector each time.
    Vec,
}

/// A bus holding the throughput topic, filled once.
struct FilledTopic {
    _dir: tempfile::TempDir,
    bus: Bus,
    records: u64,
    /// Fresh group names.
    next_group: u64,
}

impl FilledTopic {
    fn new(records: u64) -> FilledTopic {
        assert_eq!(records % u64::from(THROUGHPUT_PARTITIONS), 0);
        let dir = scratch();
        let bus = Bus::open(dir.path()).expect("open bus");
        let topic = bus.topic_or_create(THROUGHPUT_TOPIC, Some(THROUGHPUT_PARTITIONS)).expect("create topic");
        let opts = LogOptions::default().durability(Durability::Never);
        let mut producer = topic.producer(opts).expect("producer");
        let mut payload = [0u8; PAYLOAD_BYTES];
        for i in 0..records {
            payload[0] = i as u8;
            payload[PAYLOAD_BYTES - 1] = (i >> 8) as u8;
            producer.send_to((i % u64::from(THROUGHPUT_PARTITIONS)) as u32, i, &payload).expect("append");
        }
        drop(producer);
        let filled = FilledTopic { _dir: dir, bus, records, next_group: 0 };
        assert_eq!(filled.read_all().0, records); // and warms the page cache
        filled
    }

    fn fresh_group(&mut self, kind: &str) -> String {
        self.next_group += 1;
        format!("{kind}-{}", self.next_group)
    }

    /// One thread reads every partition log with a zero-copy `Reader`; (records, fold).
    fn read_all(&self) -> (u64, u64) {
        let topic = self.bus.topic(THROUGHPUT_TOPIC).expect("topic");
        let (mut records, mut fold) = (0u64, 0u64);
        for p in 0..THROUGHPUT_PARTITIONS {
            let mut reader = Reader::open(topic.partition_dir(p).expect("partition")).expect("open reader");
            while let Some(record) = reader.next().expect("next") {
                fold = fold.wrapping_add(touch(record.payload()));
                records += 1;
            }
        }
        (records, fold)
    }

    /// Removes a finished group's state so the next runs start from a clean groups directory.
    fn remove_group(&self, group: &str) {
        let dir = self.bus.group_dir(group).expect("group name");
        std::fs::remove_dir_all(&dir).expect("remove group directory");
    }

    /// The sum of the committed offsets of `group` over the topic's partitions (0 for a
    /// partition with nothing committed or a file being written for the first time).
    fn committed_total(&self, group: &str) -> u64 {
        let base = self.bus.group_dir(group).expect("group name").join(THROUGHPUT_TOPIC).join("offsets");
        (0..THROUGHPUT_PARTITIONS)
            .map(|p| {
                std::fs::read(base.join(p.to_string()))
                    .ok()
                    .and_then(|bytes| decode_offsets(&bytes).ok().flatten())
                    .map_or(0, |slot| slot.offset)
            })
            .sum()
    }

    /// One member in this thread joins a fresh group, drains the topic by `how`, committing
    /// after every poll (but for `Poll::WithoutCommits`), and leaves; the time from join to
    /// leave, both included.
    fn one_member(&mut self, how: Poll) -> Duration {
        let group = self.fresh_group("one");
        let total = self.records;
        let start = Instant::now();
        let mut member = Member::join(&self.bus, &group, THROUGHPUT_TOPIC, member_options("one")).expect("join");
        let (mut delivered, mut fold) = (0u64, 0u64);
        let mut batch = Vec::with_capacity(POLL_MAX);
        while delivered < total {
            let n = match how {
                Poll::With | Poll::WithoutCommits => member
                    .poll_with(POLL_MAX, Duration::from_millis(1), |_, record| {
                        fold = fold.wrapping_add(touch(record.payload()));
                    })
                    .expect("poll_with"),
                Poll::Into => {
                    let n = member.poll_into(&mut batch, POLL_MAX, Duration::from_millis(1)).expect("poll_into");
                    for d in &batch {
                        fold = fold.wrapping_add(touch(d.record.payload()));
                    }
                    n
                }
                Poll::Vec => {
                    let batch = member.poll(POLL_MAX, Duration::from_millis(1)).expect("poll");
                    for d in &batch {
                        fold = fold.wrapping_add(touch(d.record.payload()));
                    }
                    batch.len()
                }
            };
            if n > 0 && !matches!(how, Poll::WithoutCommits) {
                member.commit().expect("commit");
            }
            delivered += n as u64;
        }
        member.leave().expect("leave");
        let elapsed = start.elapsed();
        black_box(fold);
        assert_eq!(delivered, total, "records delivered by one member");
        assert_eq!(self.committed_total(&group), total);
        self.remove_group(&group);
        elapsed
    }

    /// `members` threads join a fresh group and drain the topic; the time from the first
    /// spawn to the last member having left.
    fn members_threads(&mut self, members: usize) -> Duration {
        let group = self.fresh_group("threads");
        let delivered = Arc::new(AtomicU64::new(0));
        let total = self.records;
        let start = Instant::now();
        let handles: Vec<JoinHandle<u64>> = (0..members)
            .map(|i| {
                let bus = self.bus.clone();
                let group = group.clone();
                let delivered = delivered.clone();
                std::thread::spawn(move || {
                    let mut member =
                        Member::join(&bus, &group, THROUGHPUT_TOPIC, member_options(&format!("thread {i}")))
                            .expect("join");
                    let mut fold = 0u64;
                    while delivered.load(Ordering::Relaxed) < total {
                        let batch = member.poll(POLL_MAX, Duration::from_millis(1)).expect("poll");
                        if batch.is_empty() {
                            continue;
                        }
                        for d in &batch {
                            fold = fold.wrapping_add(touch(d.record.payload()));
                        }
                        member.commit().expect("commit");
                        delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    member.leave().expect("leave");
                    fold
                })
            })
            .collect();
        for h in handles {
            black_box(h.join().expect("member thread"));
        }
        let elapsed = start.elapsed();
        // Graceful handovers commit what was returned: no record is delivered twice.
        assert_eq!(delivered.load(Ordering::Relaxed), total, "records delivered by {members} thread members");
        assert_eq!(self.committed_total(&group), total);
        self.remove_group(&group);
        elapsed
    }

    /// `members` processes (this binary in child mode) join a fresh group and drain the
    /// topic; the time from the first spawn to the last exit.
    fn members_processes(&mut self, members: usize) -> Duration {
        let group = self.fresh_group("processes");
        let stop = self.bus.dir().join(format!("stop-{group}"));
        let exe = std::env::current_exe().expect("path of the bench binary");
        let start = Instant::now();
        let mut children: Vec<Child> = (0..members)
            .map(|_| {
                Command::new(&exe)
                    .env(CHILD_ENV, self.bus.dir())
                    .env(CHILD_GROUP_ENV, &group)
                    .env(CHILD_STOP_ENV, &stop)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn a member process")
            })
            .collect();
        let deadline = start + PROCESS_RUN_MAX;
        while self.committed_total(&group) < self.records {
            if Instant::now() > deadline {
                for child in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!("{members} member processes did not drain {} records in {PROCESS_RUN_MAX:?}", self.records);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        std::fs::File::create(&stop).expect("create the stop file");
        let mut delivered = 0u64;
        for mut child in children {
            let status = child.wait().expect("wait for a member process");
            assert!(status.success(), "member process failed: {status}");
            let mut out = String::new();
            child.stdout.take().expect("piped stdout").read_to_string(&mut out).expect("read child output");
            delivered += out.trim().parse::<u64>().expect("child prints its delivered count");
        }
        let elapsed = start.elapsed();
        assert_eq!(delivered, self.records, "records delivered by {members} member processes");
        std::fs::remove_file(&stop).expect("remove the stop file");
        self.remove_group(&group);
        elapsed
    }
}

/// The child mode of `members_processes`: join, drain, leave once the stop file exists, and
/// print the number of records delivered.
fn child_main(bus_dir: &std::ffi::OsStr) -> ! {
    let run = || -> Result<u64, String> {
        let group = std::env::var(CHILD_GROUP_ENV).map_err(|e| format!("{CHILD_GROUP_ENV}: {e}"))?;
        let stop = PathBuf::from(std::env::var_os(CHILD_STOP_ENV).ok_or(format!("{CHILD_STOP_ENV} unset"))?);
        let bus = Bus::open(bus_dir).map_err(|e| e.to_string())?;
        let label = format!("bench pid {}", std::process::id());
        let mut member =
            Member::join(&bus, &group, THROUGHPUT_TOPIC, member_options(&label)).map_err(|e| e.to_string())?;
        let (mut delivered, mut fold) = (0u64, 0u64);
        loop {
            let batch = member.poll(POLL_MAX, Duration::from_millis(1)).map_err(|e| e.to_string())?;
            if batch.is_empty() {
                if stop.exists() {
                    break;
                }
                continue;
            }
            for d in &batch {
                fold = fold.wrapping_add(touch(d.record.payload()));
            }
            member.commit().map_err(|e| e.to_string())?;
            delivered += batch.len() as u64;
        }
        black_box(fold);
        member.leave().map_err(|e| e.to_string())?;
        Ok(delivered)
    };
    match run() {
        Ok(delivered) => {
            println!("{delivered}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("group bench member process: {e}");
            std::process::exit(2)
        }
    }
}

fn group_throughput(c: &mut Criterion, scale: &Scale) {
    let mut group = c.benchmark_group("group_throughput");
    group.throughput(Throughput::Elements(scale.records));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    // Filled on first use (outside the measured time), so a filtered run skips it.
    let mut topic: Option<FilledTopic> = None;
    let records = scale.records;
    // Every measured pass (warm-up included) per entry: (name, passes, total time).
    let mut passes: Vec<(String, u64, Duration)> = Vec::new();
    let mut tally = |name: &str, iters: u64, elapsed: Duration| {
        match passes.iter_mut().find(|(n, ..)| n == name) {
            Some((_, count, total)) => {
                *count += iters;
                *total += elapsed;
            }
            None => passes.push((name.to_string(), iters, elapsed)),
        }
        elapsed
    };
    group.bench_function("single_reader", |b| {
        let topic = topic.get_or_insert_with(|| FilledTopic::new(records));
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let (n, fold) = topic.read_all();
                assert_eq!(n, records);
                black_box(fold);
            }
            tally("single_reader", iters, start.elapsed())
        })
    });
    for (name, how) in [
        ("member_poll_with", Poll::With),
        ("member_poll_with_commit_at_leave", Poll::WithoutCommits),
        ("member_poll_into", Poll::Into),
        ("member_poll", Poll::Vec),
    ] {
        group.bench_function(name, |b| {
            let topic = topic.get_or_insert_with(|| FilledTopic::new(records));
            b.iter_custom(|iters| {
                let elapsed = (0..iters).map(|_| topic.one_member(how)).sum();
                tally(name, iters, elapsed)
            })
        });
    }
    for members in [1usize, 2, 4] {
        let name = format!("members_threads/{members}");
        group.bench_function(&name, |b| {
            let topic = topic.get_or_insert_with(|| FilledTopic::new(records));
            b.iter_custom(|iters| {
                let elapsed = (0..iters).map(|_| topic.members_threads(members)).sum();
                tally(&name, iters, elapsed)
            })
        });
    }
    for members in [1usize, 2, 4] {
        let name = format!("members_processes/{members}");
        group.bench_function(&name, |b| {
            let topic = topic.get_or_insert_with(|| FilledTopic::new(records));
            b.iter_custom(|iters| {
                let elapsed = (0..iters).map(|_| topic.members_processes(members)).sum();
                tally(&name, iters, elapsed)
            })
        });
    }
    group.finish();
    let rate = |count: u64, total: Duration| (count * records) as f64 / total.as_secs_f64().max(1e-9);
    let Some(reader_rate) = passes.iter().find(|(n, ..)| n == "single_reader").map(|&(_, c, t)| rate(c, t)) else {
        return;
    };
    println!("group_throughput: records/s over every pass (warm-up included), and the ratio to single_reader");
    for (name, count, total) in &passes {
        let r = rate(*count, *total);
        println!("  {name:<22} {:>7.1} M/s  {:.2}x  ({count} passes)", r / 1e6, r / reader_rate);
    }
    println!("  (members_processes include process start-up, join and the stop-file round trip)");
}

// ---------------------------------------------------------------------------------------------
// rebalance

const PHASE_WARM_UP: u8 = 0;
const PHASE_REBALANCE: u8 = 1;
const PHASE_BASELINE: u8 = 2;
/// How long C keeps polling once it holds its share.
const DWELL: Duration = Duration::from_millis(15);
/// How long the driver waits after C leaves.
const GAP: Duration = Duration::from_millis(15);
/// Records appended within this long after a join or leave count in the "near an event" figures.
const EVENT_WINDOW_NS: u64 = 2_000_000;
/// The producer's period: one record per partition each tick.
const TICK: Duration = Duration::from_micros(100);
/// Longest C may wait to hold its share before the bench gives up.
const TAKE_OVER_MAX: Duration = Duration::from_secs(5);

/// What the driver publishes to the members.
#[derive(Debug, Default)]
struct Signals {
    phase: AtomicU8,
    /// Incremented at the start of every cycle (before C joins, or at the same instant of an
    /// empty baseline cycle).
    cycle: AtomicU64,
    /// Wall clock (ns) of the latest join or leave (or its stand-in in the baseline).
    event_ns: AtomicU64,
    stop: AtomicBool,
}

/// Latency histograms of one member, for the rebalance phase (index 0) and the baseline (1).
#[derive(Clone, Debug, Default)]
struct Latencies {
    moving: [LatencyHistogram; 2],
    non_moving: [LatencyHistogram; 2],
    non_moving_near_event: [LatencyHistogram; 2],
    backlog: [LatencyHistogram; 2],
    pause: LatencyHistogram,
}

impl Latencies {
    fn merge(&mut self, other: &Latencies) {
        for i in 0..2 {
            self.moving[i].merge(&other.moving[i]);
            self.non_moving[i].merge(&other.non_moving[i]);
            self.non_moving_near_event[i].merge(&other.non_moving_near_event[i]);
            self.backlog[i].merge(&other.backlog[i]);
        }
        self.pause.merge(&other.pause);
    }
}

/// Per-partition bookkeeping of one member across polls.
#[derive(Debug, Default)]
struct Holdings {
    /// Partitions held after the last poll.
    held: BTreeSet<u32>,
    /// Partitions acquired and not yet delivered from.
    fresh: BTreeSet<u32>,
    /// Partitions held since the start of the current cycle.
    steady: BTreeSet<u32>,
    seen_cycle: u64,
}

impl Holdings {
    /// Call before each poll with the current cycle.
    fn before_poll(&mut self, cycle: u64) {
        if cycle != self.seen_cycle {
            self.seen_cycle = cycle;
            self.steady = self.held.clone();
        }
    }

    /// Call after each poll with `assigned()`.
    fn after_poll(&mut self, assigned: &[u32]) {
        let now: BTreeSet<u32> = assigned.iter().copied().collect();
        for p in self.held.difference(&now) {
            self.steady.remove(p);
            self.fresh.remove(p);
        }
        for &p in now.difference(&self.held) {
            self.fresh.insert(p);
        }
        self.held = now;
    }

    /// Files one delivery's latency under its kind for `phase` (0 rebalance, 1 baseline).
    fn record(&mut self, lat: &mut Latencies, phase: Option<usize>, partition: u32, latency_ns: u64, near: bool) {
        let first = self.fresh.remove(&partition);
        let Some(i) = phase else { return };
        if first {
            lat.moving[i].record(latency_ns);
        } else if self.steady.contains(&partition) {
            lat.non_moving[i].record(latency_ns);
            if near {
                lat.non_moving_near_event[i].record(latency_ns);
            }
        } else {
            lat.backlog[i].record(latency_ns);
        }
    }
}

fn phase_index(phase: u8) -> Option<usize> {
    match phase {
        PHASE_REBALANCE => Some(0),
        PHASE_BASELINE => Some(1),
        PHASE_WARM_UP => None,
        other => unreachable!("phase {other}"),
    }
}

/// Polls as a long-lived member until told to stop; leaves and returns its latencies.
fn long_lived_member(mut member: Member, signals: Arc<Signals>) -> Latencies {
    let mut lat = Latencies::default();
    let mut holdings = Holdings { held: member.assigned().into_iter().collect(), ..Holdings::default() };
    while !signals.stop.load(Ordering::Relaxed) {
        holdings.before_poll(signals.cycle.load(Ordering::Relaxed));
        let phase = phase_index(signals.phase.load(Ordering::Relaxed));
        let batch = member.poll(256, Duration::from_millis(1)).expect("poll");
        let now = now_ns();
        holdings.after_poll(&member.assigned());
        let event_ns = signals.event_ns.load(Ordering::Relaxed);
        for d in &batch {
            let ts = d.record.timestamp_ns();
            let near = ts >= event_ns && ts - event_ns < EVENT_WINDOW_NS;
            holdings.record(&mut lat, phase, d.partition, now.saturating_sub(ts), near);
            black_box(touch(d.record.payload()));
        }
        if !batch.is_empty() {
            member.commit().expect("commit");
        }
    }
    lat.pause = member.stats().pause;
    member.leave().expect("leave");
    lat
}

/// The producer: one record per partition every `TICK`, until told to stop; returns the
/// records appended.
fn steady_producer(bus: Bus, signals: Arc<Signals>) -> u64 {
    let topic = bus.topic(REBALANCE_TOPIC).expect("topic");
    let opts = LogOptions::default().durability(Durability::Never).segment_bytes(16 << 20);
    let mut producer = topic.producer(opts).expect("producer");
    let payload = [0x42u8; PAYLOAD_BYTES];
    let mut sent = 0u64;
    let mut next = Instant::now();
    while !signals.stop.load(Ordering::Relaxed) {
        for p in 0..REBALANCE_PARTITIONS {
            producer.send_to(p, sent, &payload).expect("append");
            sent += 1;
        }
        next += TICK;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_millis(10) {
            next = now; // far behind (descheduled): do not burst to catch up
        }
    }
    sent
}

/// The producer, A and B, and what the cycles of C collected.
struct RebalanceRig {
    _dir: tempfile::TempDir,
    bus: Bus,
    signals: Arc<Signals>,
    producer: Option<JoinHandle<u64>>,
    members: Vec<JoinHandle<Latencies>>,
    /// Ids of A and B.
    ids: Vec<String>,
    /// C's first deliveries and `MemberStats::pause`, over the rebalance phase.
    c_latencies: Latencies,
    /// Timed part of each cycle (join until C holds its share, plus leave).
    cycle_timed: LatencyHistogram,
    cycles: u64,
    /// Wall time of the rebalance cycles and of the baseline cycles.
    rebalance_time: Duration,
    baseline_time: Duration,
}

impl RebalanceRig {
    fn start(scale: &Scale) -> RebalanceRig {
        let dir = scratch();
        let bus = Bus::open(dir.path()).expect("open bus");
        bus.topic_or_create(REBALANCE_TOPIC, Some(REBALANCE_PARTITIONS)).expect("create topic");
        let signals = Arc::new(Signals::default());
        let producer = {
            let (bus, signals) = (bus.clone(), signals.clone());
            std::thread::spawn(move || steady_producer(bus, signals))
        };
        // Wait for the producer's first records, so every partition has its log and HEAD.
        let topic = bus.topic(REBALANCE_TOPIC).expect("topic");
        let head_of_last = topic.partition_dir(REBALANCE_PARTITIONS - 1).expect("partition").join("HEAD");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !head_of_last.exists() {
            assert!(Instant::now() < deadline, "the producer did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut ids = Vec::new();
        let mut members = Vec::new();
        for name in ["A", "B"] {
            let member = Member::join(&bus, "rebalance", REBALANCE_TOPIC, member_options(name)).expect("join");
            ids.push(member.id().to_string());
            let signals = signals.clone();
            members.push(std::thread::spawn(move || long_lived_member(member, signals)));
        }
        std::thread::sleep(scale.rig_warm_up);
        RebalanceRig {
            _dir: dir,
            bus,
            signals,
            producer: Some(producer),
            members,
            ids,
            c_latencies: Latencies::default(),
            cycle_timed: LatencyHistogram::new(),
            cycles: 0,
            rebalance_time: Duration::ZERO,
            baseline_time: Duration::ZERO,
        }
    }

    /// One cycle of C: join, hold its share for `DWELL`, leave, wait `GAP`; then an empty
    /// baseline cycle with the same instants. Returns the time of the join until C holds its
    /// share, plus the time of `leave`.
    fn cycle(&mut self) -> Duration {
        self.signals.phase.store(PHASE_REBALANCE, Ordering::Relaxed);
        self.signals.cycle.fetch_add(1, Ordering::Relaxed);
        self.signals.event_ns.store(now_ns(), Ordering::Relaxed);
        let joined_at = Instant::now();
        let mut c = Member::join(&self.bus, "rebalance", REBALANCE_TOPIC, member_options("C")).expect("join");
        let mut live = self.ids.clone();
        live.push(c.id().to_string());
        live.sort();
        let share = assign::partitions_of(&live, REBALANCE_PARTITIONS, c.id()).len();
        let mut holdings = Holdings::default();
        let mut took_over: Option<Duration> = None;
        loop {
            let batch = c.poll(256, Duration::from_millis(1)).expect("poll");
            let now = now_ns();
            let assigned = c.assigned();
            holdings.after_poll(&assigned);
            for d in &batch {
                holdings.record(
                    &mut self.c_latencies,
                    Some(0),
                    d.partition,
                    now.saturating_sub(d.record.timestamp_ns()),
                    false,
                );
            }
            if !batch.is_empty() {
                c.commit().expect("commit");
            }
            let elapsed = joined_at.elapsed();
            if took_over.is_none() && assigned.len() >= share {
                took_over = Some(elapsed);
            }
            match took_over {
                Some(at) if elapsed >= at + DWELL => break,
                None => assert!(elapsed < TAKE_OVER_MAX, "C did not get its {share} partitions in {TAKE_OVER_MAX:?}"),
                _ => {}
            }
        }
        self.c_latencies.pause.merge(&c.stats().pause);
        self.signals.event_ns.store(now_ns(), Ordering::Relaxed);
        let leave_at = Instant::now();
        let leave_offset = joined_at.elapsed();
        c.leave().expect("leave");
        let timed = took_over.unwrap_or_default() + leave_at.elapsed();
        std::thread::sleep(GAP);
        let length = joined_at.elapsed();
        self.cycle_timed.record(timed.as_nanos() as u64);
        self.cycles += 1;
        self.rebalance_time += length;

        self.signals.phase.store(PHASE_BASELINE, Ordering::Relaxed);
        self.signals.cycle.fetch_add(1, Ordering::Relaxed);
        self.signals.event_ns.store(now_ns(), Ordering::Relaxed);
        let started = Instant::now();
        std::thread::sleep(leave_offset);
        self.signals.event_ns.store(now_ns(), Ordering::Relaxed);
        if let Some(rest) = length.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        self.baseline_time += started.elapsed();
        timed
    }

    /// Stops everything and prints the figures.
    fn finish(mut self) {
        self.signals.stop.store(true, Ordering::Relaxed);
        let mut lat = Latencies::default();
        for h in self.members.drain(..) {
            lat.merge(&h.join().expect("member thread"));
        }
        let sent = self.producer.take().map_or(0, |h| h.join().expect("producer thread"));
        let c = &self.c_latencies;
        let mut moving = lat.moving[0].clone();
        moving.merge(&c.moving[0]);

        println!(
            "rebalance: {} partitions, producer 1 record/partition every {TICK:?} ({sent} records), members A and B \
             polling with a 1 ms timeout; C joined and left {} times (rebalance cycles {:.2} s, interleaved \
             baseline cycles with no join or leave {:.2} s)",
            REBALANCE_PARTITIONS,
            self.cycles,
            self.rebalance_time.as_secs_f64(),
            self.baseline_time.as_secs_f64()
        );
        print_latency("C join->share held + leave", &self.cycle_timed);
        println!("  end-to-end latency (now - append timestamp):");
        print_latency("moving: 1st delivery (A,B,C)", &moving);
        print_latency("  of which taken by C", &c.moving[0]);
        print_latency("MemberStats::pause, C", &c.pause);
        print_latency("  A and B (since join)", &lat.pause);
        print_latency("non-moving, baseline", &lat.non_moving[1]);
        print_latency("non-moving, rebalance", &lat.non_moving[0]);
        print_latency("non-moving <2ms of event, base", &lat.non_moving_near_event[1]);
        print_latency("non-moving <2ms of event, reb.", &lat.non_moving_near_event[0]);
        print_latency("backlog after a move (reb.)", &lat.backlog[0]);
        if lat.moving[1].count() > 0 || lat.backlog[1].count() > 0 {
            println!(
                "  note: {} partition moves and {} backlog deliveries in the baseline cycles (moves of the previous \
                 cycle that finished late)",
                lat.moving[1].count(),
                lat.backlog[1].count()
            );
        }
        let ratio = |a: &LatencyHistogram, b: &LatencyHistogram, q: f64| {
            a.quantile_ns(q) as f64 / b.quantile_ns(q).max(1) as f64
        };
        println!(
            "  moving pause p50 {} p99 {} (goal p99 <= 1 ms); non-moving rebalance/baseline: p50 {:.2}x p99 {:.2}x \
             p99.9 {:.2}x, near events p99 {:.2}x (goal: ~1x)",
            format_ns(moving.quantile_ns(0.5)),
            format_ns(moving.quantile_ns(0.99)),
            ratio(&lat.non_moving[0], &lat.non_moving[1], 0.5),
            ratio(&lat.non_moving[0], &lat.non_moving[1], 0.99),
            ratio(&lat.non_moving[0], &lat.non_moving[1], 0.999),
            ratio(&lat.non_moving_near_event[0], &lat.non_moving_near_event[1], 0.99),
        );
    }
}

impl Drop for RebalanceRig {
    /// Stops the threads if `finish` did not run (a panic in a cycle).
    fn drop(&mut self) {
        self.signals.stop.store(true, Ordering::Relaxed);
    }
}

fn print_latency(name: &str, h: &LatencyHistogram) {
    println!(
        "  {name:<32} n={:<7} p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}",
        h.count(),
        format_ns(h.quantile_ns(0.5)),
        format_ns(h.quantile_ns(0.99)),
        format_ns(h.quantile_ns(0.999)),
        format_ns(h.max_ns())
    );
}

fn rebalance(c: &mut Criterion, scale: &Scale) {
    let mut group = c.benchmark_group("rebalance");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    // Started only when selected, so a filtered run skips it. Criterion's run is sized from a
    // few calibration cycles so that it runs about `cycles_target` cycles (its iteration count
    // follows the timed part of a cycle, while a cycle lasts that plus DWELL and GAP); cycles
    // are topped up to that count afterwards.
    let mut rig = RebalanceRig::start_if(group_is_selected("rebalance/join_leave"), scale);
    if let Some(rig) = rig.as_mut() {
        let timed: Duration = (0..scale.calibration_cycles).map(|_| rig.cycle()).sum();
        let mean = (timed / scale.calibration_cycles.max(1)).max(Duration::from_micros(50));
        group.warm_up_time(mean * 2);
        group.measurement_time(mean * scale.cycles_target);
    }
    group.bench_function("join_leave", |b| {
        let rig = rig.as_mut().expect("rig started for a selected bench");
        b.iter_custom(|iters| (0..iters).map(|_| rig.cycle()).sum())
    });
    group.finish();
    if let Some(mut rig) = rig {
        // Criterion's own count varies with its estimate; top up to the target so that the
        // latency figures always cover about as many moves.
        while rig.cycles < u64::from(scale.calibration_cycles + scale.cycles_target) {
            rig.cycle();
        }
        rig.finish();
    }
}

impl RebalanceRig {
    fn start_if(selected: bool, scale: &Scale) -> Option<RebalanceRig> {
        selected.then(|| RebalanceRig::start(scale))
    }
}

/// Whether criterion's name filter (the first free argument, a regex) can select `id`.
/// Only plain substrings are understood; anything else counts as selected.
fn group_is_selected(id: &str) -> bool {
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(arg) = args.next() {
        if arg == "--list" {
            return false;
        }
        if arg.starts_with('-') {
            // Options that take a value (criterion's and libtest's).
            if matches!(
                arg.as_str(),
                "--save-baseline" | "--baseline" | "--load-baseline" | "--profile-time" | "--color" | "--format"
            ) {
                args.next();
            }
            continue;
        }
        filter = Some(arg);
        break;
    }
    match filter {
        None => true,
        Some(f) if f.chars().all(|ch| ch.is_ascii_alphanumeric() || "_-/".contains(ch)) => id.contains(&f),
        Some(_) => true,
    }
}

fn main() {
    if let Some(bus_dir) = std::env::var_os(CHILD_ENV) {
        child_main(&bus_dir);
    }
    let scale = Scale::from_args();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cpus} cpus; scratch dir {}; {scale:?}", bench_root().display());
    let mut c = Criterion::default().configure_from_args();
    group_throughput(&mut c, &scale);
    rebalance(&mut c, &scale);
    c.final_summary();
}
