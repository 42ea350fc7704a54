//! Consumer groups: members in threads and in child processes (killed with SIGKILL) join and
//! leave while a producer writes; every record is delivered at least once, in partition order
//! within each member, and duplicates only come from a crashed member's uncommitted records.
//! Also: replay-then-live, committed offsets across crashes, describe, bad names and files.
//!
//! Children are this test binary run again (see `common`); a member child reports
//! `rec <partition> <offset>` per record and `committed` after each commit.

mod cli_support;
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::bus::{Bus, BusError, TopicProducer};
use shoal::group::{describe, FormatError, GroupError, GroupOptions, Member};
use shoal::log::slots::SlotError;
use shoal::log::{Durability, LogOptions};

use common::{child_command, child_mode, parse_report, report, wait_for_report};

fn log_opts() -> LogOptions {
    LogOptions::default()
        .segment_bytes(256 << 10)
        .max_record_bytes(4 << 10)
        .durability(Durability::Never)
        .prefault(false)
}

fn opts(label: &str) -> GroupOptions {
    GroupOptions::default().label(label)
}

/// Writes `total` keyed records, pausing now and then so members join and leave mid-stream.
fn produce(mut producer: TopicProducer, total: u64, produced: &AtomicU64) {
    for i in 0..total {
        producer.send(i.wrapping_mul(0x9E37_79B9), &i.to_le_bytes()).unwrap();
        if i % 100 == 99 {
            produced.store(i + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    produced.store(total, Ordering::SeqCst);
}

/// Per-partition end offsets of a topic (next offset to append).
fn ends(bus: &Bus, topic: &str) -> Vec<u64> {
    let t = bus.topic(topic).unwrap();
    (0..t.partitions())
        .map(|p| {
            let mut r = shoal::log::Reader::open(t.partition_dir(p).unwrap()).unwrap();
            r.seek(shoal::log::Offset(u64::MAX)).unwrap();
            r.next_offset().0
        })
        .collect()
}

/// Checks per-member partition order, completeness, and that every duplicate lies in
/// `window` (records a crashed member returned after its last commit).
fn check_deliveries(seqs: &[Vec<(u32, u64)>], ends: &[u64], window: &HashSet<(u32, u64)>) -> usize {
    let mut count: HashMap<(u32, u64), u32> = HashMap::new();
    for (m, seq) in seqs.iter().enumerate() {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for &(p, o) in seq {
            if let Some(&prev) = last.get(&p) {
                assert!(o > prev, "member {m}: partition {p} went from {prev} to {o}");
            }
            last.insert(p, o);
            *count.entry((p, o)).or_default() += 1;
        }
    }
    for (p, &end) in ends.iter().enumerate() {
        for o in 0..end {
            assert!(count.contains_key(&(p as u32, o)), "record {p}/{o} was never delivered");
        }
    }
    let total: u64 = ends.iter().sum();
    assert_eq!(count.len() as u64, total, "delivered records that were never produced");
    let mut dups = 0;
    for (&(p, o), &c) in &count {
        if c > 1 {
            assert!(window.contains(&(p, o)), "{p}/{o} delivered {c} times outside a crashed member's window");
            assert_eq!(c, 2, "{p}/{o} delivered {c} times");
            dups += 1;
        }
    }
    dups
}

struct Shared {
    seen: Mutex<HashSet<(u32, u64)>>,
    total: u64,
    deadline: Instant,
}

impl Shared {
    fn done(&self) -> bool {
        assert!(Instant::now() < self.deadline, "members did not deliver every record in time");
        self.seen.lock().unwrap().len() as u64 >= self.total
    }
}

/// Polls and commits until `stop` says so; returns the member's (partition, offset) sequence.
fn consume(m: &mut Member, shared: &Shared, mut stop: impl FnMut() -> bool) -> Vec<(u32, u64)> {
    let mut seq = Vec::new();
    while !stop() {
        let batch = m.poll(64, Duration::from_millis(10)).unwrap();
        let mut seen = shared.seen.lock().unwrap();
        for d in &batch {
            seq.push((d.partition, d.record.offset().0));
            seen.insert((d.partition, d.record.offset().0));
        }
        drop(seen);
        m.commit().unwrap();
    }
    seq
}

#[test]
fn threads_join_leave_and_crash_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create("events", Some(8)).unwrap();
    let producer = topic.producer(log_opts()).unwrap();
    let total = 20_000u64;
    let shared = Arc::new(Shared {
        seen: Mutex::new(HashSet::new()),
        total,
        deadline: Instant::now() + Duration::from_secs(60),
    });
    let produced = Arc::new(AtomicU64::new(0));
    let at = |n: u64, produced: &AtomicU64| {
        while produced.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    };

    let mut a = Member::join(&bus, "g", "events", opts("a")).unwrap();
    assert_eq!(a.assigned(), (0..8).collect::<Vec<_>>(), "a lone member owns every partition");
    let a_thread = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let seq = consume(&mut a, &shared, || shared.done());
            let stats = a.stats();
            a.leave().unwrap();
            (seq, stats)
        })
    };
    let spawn_joiner = |name: &'static str, join_at: u64, leave_at: Option<u64>| {
        let (shared, produced, bus) = (shared.clone(), produced.clone(), bus.clone());
        std::thread::spawn(move || {
            at(join_at, &produced);
            let mut m = Member::join(&bus, "g", "events", opts(name)).unwrap();
            let seq = consume(&mut m, &shared, || match leave_at {
                Some(n) => produced.load(Ordering::SeqCst) >= n,
                None => shared.done(),
            });
            let stats = m.stats();
            m.leave().unwrap();
            (seq, stats)
        })
    };
    let b_thread = spawn_joiner("b", 4_000, Some(12_000));
    let c_thread = spawn_joiner("c", 8_000, None);
    // d "crashes": its last batch is never committed, and it is dropped without leaving.
    let d_thread = {
        let (shared, produced, bus) = (shared.clone(), produced.clone(), bus.clone());
        std::thread::spawn(move || {
            at(6_000, &produced);
            let mut m = Member::join(&bus, "g", "events", opts("d")).unwrap();
            let mut seq = consume(&mut m, &shared, || produced.load(Ordering::SeqCst) >= 10_000);
            let mut window = HashSet::new();
            for _ in 0..50 {
                let batch = m.poll(64, Duration::from_millis(10)).unwrap();
                for d in &batch {
                    seq.push((d.partition, d.record.offset().0));
                    window.insert((d.partition, d.record.offset().0));
                    shared.seen.lock().unwrap().insert((d.partition, d.record.offset().0));
                }
                if !window.is_empty() {
                    break;
                }
            }
            assert!(!window.is_empty(), "d read nothing before crashing");
            drop(m);
            (seq, window)
        })
    };
    let prod_thread = {
        let produced = produced.clone();
        std::thread::spawn(move || produce(producer, total, &produced))
    };
    prod_thread.join().unwrap();
    let (d_seq, window) = d_thread.join().unwrap();
    let (b_seq, b_stats) = b_thread.join().unwrap();
    let (c_seq, c_stats) = c_thread.join().unwrap();
    let (a_seq, a_stats) = a_thread.join().unwrap();
    for (name, seq) in [("b", &b_seq), ("c", &c_seq), ("d", &d_seq)] {
        assert!(!seq.is_empty(), "{name} got no records");
    }
    let dups = check_deliveries(&[a_seq, b_seq, c_seq, d_seq], &ends(&bus, "events"), &window);
    assert!(a_stats.rebalances >= 3, "a saw {} rebalances", a_stats.rebalances);
    let mut pause = a_stats.pause.clone();
    pause.merge(&b_stats.pause);
    pause.merge(&c_stats.pause);
    assert!(pause.count() > 0, "no partition moved");
    eprintln!(
        "threads: {total} records, {dups} duplicates (crash window {}), {} moves, pause p50 {} p99 {} max {}",
        window.len(),
        pause.count(),
        shoal::metrics::format_ns(pause.quantile_ns(0.5)),
        shoal::metrics::format_ns(pause.quantile_ns(0.99)),
        shoal::metrics::format_ns(pause.max_ns()),
    );
    // Everything committed: no lag, no members left.
    let info = describe(&bus).unwrap();
    assert_eq!(info.len(), 1);
    assert!(info[0].members.is_empty(), "{:?}", info[0].members);
    assert!(info[0].partitions.iter().all(|p| p.lag == 0 && p.owner.is_none()), "{:?}", info[0].partitions);
}

/// Child: a member that reports each record and each commit, until killed. Note that
/// commit-on-revoke also commits when the parent joins: the window is then a superset.
fn member_child() -> ! {
    let bus = Bus::open(std::env::var("SHOAL_GROUP_BUS").unwrap()).unwrap();
    let mut m = Member::join(&bus, "g", "events", opts("child")).unwrap();
    report("joined");
    // Commits every third batch, so a kill usually leaves an uncommitted window.
    let mut batches = 0u64;
    loop {
        let batch = m.poll(64, Duration::from_millis(20)).unwrap();
        for d in &batch {
            report(&format!("rec {} {}", d.partition, d.record.offset().0));
        }
        if !batch.is_empty() {
            batches += 1;
            if batches % 3 == 0 {
                m.commit().unwrap();
                report("committed");
            }
        }
    }
}

#[test]
fn a_member_process_killed_with_sigkill_is_replaced() {
    if child_mode().as_deref() == Some("member") {
        member_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create("events", Some(8)).unwrap();
    let producer = topic.producer(log_opts()).unwrap();
    let total = 12_000u64;
    let mut child = child_command("a_member_process_killed_with_sigkill_is_replaced", "member")
        .env("SHOAL_GROUP_BUS", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = wait_for_report(&mut child, "joined");
    // The child's records, and which of them came after its last commit.
    let child_log = Arc::new(Mutex::new((Vec::<(u32, u64)>::new(), 0usize)));
    let reader = {
        let child_log = child_log.clone();
        std::thread::spawn(move || {
            for line in lines.lines() {
                let Ok(line) = line else { break };
                let Some(r) = parse_report(&line) else { continue };
                let mut log = child_log.lock().unwrap();
                if r == "committed" {
                    log.1 = log.0.len();
                } else if let Some(rest) = r.strip_prefix("rec ") {
                    let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
                    let (p, o) = (it.next().unwrap() as u32, it.next().unwrap());
                    log.0.push((p, o));
                }
            }
        })
    };
    let shared = Arc::new(Shared {
        seen: Mutex::new(HashSet::new()),
        total,
        deadline: Instant::now() + Duration::from_secs(60),
    });
    let produced = Arc::new(AtomicU64::new(0));
    let prod_thread = {
        let produced = produced.clone();
        std::thread::spawn(move || produce(producer, total, &produced))
    };
    let mut me = Member::join(&bus, "g", "events", opts("parent")).unwrap();
    let killed = AtomicBool::new(false);
    let mut seq = Vec::new();
    while !(killed.load(Ordering::SeqCst) && shared.done()) {
        let batch = me.poll(64, Duration::from_millis(10)).unwrap();
        for d in &batch {
            seq.push((d.partition, d.record.offset().0));
            shared.seen.lock().unwrap().insert((d.partition, d.record.offset().0));
        }
        me.commit().unwrap();
        if !killed.load(Ordering::SeqCst) && child_log.lock().unwrap().0.len() >= 2_000 {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            child.wait().unwrap();
            reader.is_finished();
            killed.store(true, Ordering::SeqCst);
        }
        if killed.load(Ordering::SeqCst) {
            // Count the child's deliveries once it is dead.
            let log = child_log.lock().unwrap();
            shared.seen.lock().unwrap().extend(log.0.iter().copied());
        }
        assert!(Instant::now() < shared.deadline, "child never delivered 2000 records");
    }
    prod_thread.join().unwrap();
    reader.join().unwrap();
    let (child_seq, committed_at) = child_log.lock().unwrap().clone();
    let window: HashSet<(u32, u64)> = child_seq[committed_at..].iter().copied().collect();
    let dups = check_deliveries(&[seq, child_seq.clone()], &ends(&bus, "events"), &window);
    let stats = me.stats();
    eprintln!(
        "kill -9: child delivered {}, {} uncommitted, {dups} delivered again; parent took {} partitions, pause p50 {} p99 {}",
        child_seq.len(),
        window.len(),
        stats.pause.count(),
        shoal::metrics::format_ns(stats.pause.quantile_ns(0.5)),
        shoal::metrics::format_ns(stats.pause.quantile_ns(0.99)),
    );
    assert_eq!(me.assigned().len(), 8, "the survivor owns everything");
    me.leave().unwrap();
}

/// Child: a producer that appends `SHOAL_GROUP_COUNT` records durably, says so, and waits.
fn producer_child() -> ! {
    let bus = Bus::open(std::env::var("SHOAL_GROUP_BUS").unwrap()).unwrap();
    let n: u64 = std::env::var("SHOAL_GROUP_COUNT").unwrap().parse().unwrap();
    let mut producer = bus.topic("events").unwrap().producer(log_opts()).unwrap();
    for i in 0..n {
        producer.send(i, &i.to_le_bytes()).unwrap();
    }
    producer.sync().unwrap();
    report("acked");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Child: a member that reads `SHOAL_GROUP_COUNT` records, commits, reports the committed
/// offsets, and waits to be killed.
fn commit_child() -> ! {
    let bus = Bus::open(std::env::var("SHOAL_GROUP_BUS").unwrap()).unwrap();
    let n: usize = std::env::var("SHOAL_GROUP_COUNT").unwrap().parse().unwrap();
    let mut m = Member::join(&bus, "g", "events", opts("committer")).unwrap();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut got = 0;
    while got < n {
        for d in m.poll(n - got, Duration::from_millis(50)).unwrap() {
            next.insert(d.partition, d.record.offset().0 + 1);
            got += 1;
        }
    }
    m.commit().unwrap();
    let line: Vec<String> = next.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    report(&format!("committed {}", line.join(",")));
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn kill_after(mode: &str, test: &str, dir: &std::path::Path, count: u64, want: &str) -> String {
    let mut child = child_command(test, mode)
        .env("SHOAL_GROUP_BUS", dir)
        .env("SHOAL_GROUP_COUNT", count.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut got = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(r) = parse_report(&line) {
            if r.starts_with(want) {
                got = Some(r.to_string());
                break;
            }
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    got.unwrap_or_else(|| panic!("child {mode} never reported {want}"))
}

#[test]
fn committed_offsets_survive_member_and_producer_crashes() {
    const TEST: &str = "committed_offsets_survive_member_and_producer_crashes";
    match child_mode().as_deref() {
        Some("producer") => producer_child(),
        Some("committer") => commit_child(),
        _ => {}
    }
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    bus.topic_or_create("events", Some(4)).unwrap();
    kill_after("producer", TEST, dir.path(), 4_000, "acked");
    let line = kill_after("committer", TEST, dir.path(), 1_500, "committed");
    let committed: BTreeMap<u32, u64> = line["committed ".len()..]
        .split(',')
        .map(|kv| {
            let (p, o) = kv.split_once(':').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect();
    assert_eq!(committed.values().map(|&o| o as usize).sum::<usize>(), 1_500);
    // describe sees the crashed member's commits and the lag left.
    let info = describe(&bus).unwrap();
    let g = &info[0];
    assert!(g.members.is_empty(), "the killed member's lease is not live: {:?}", g.members);
    for p in &g.partitions {
        assert_eq!(p.committed, committed.get(&p.partition).copied().unwrap_or(0));
        assert_eq!(p.lag, p.end - p.committed);
        assert_eq!(p.owner, None);
    }
    assert_eq!(g.partitions.iter().map(|p| p.lag).sum::<u64>(), 2_500);
    // A new producer recovers the crashed producer's log and appends more.
    let mut producer = bus.topic("events").unwrap().producer(log_opts()).unwrap();
    for i in 4_000..5_000u64 {
        producer.send(i, &i.to_le_bytes()).unwrap();
    }
    // A new member resumes exactly at the committed offsets.
    let mut m = Member::join(&bus, "g", "events", opts("resumer")).unwrap();
    let mut first: BTreeMap<u32, u64> = BTreeMap::new();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < 3_500 {
        assert!(Instant::now() < deadline, "resumer got {got} of 3500");
        for d in m.poll(256, Duration::from_millis(50)).unwrap() {
            first.entry(d.partition).or_insert(d.record.offset().0);
            got += 1;
        }
    }
    assert!(m.poll(256, Duration::from_millis(50)).unwrap().is_empty(), "more records than were unread");
    for (p, o) in &first {
        assert_eq!(*o, committed.get(p).copied().unwrap_or(0), "partition {p} resumed at {o}");
    }
    // Lag as describe reports it matches what is unread: nothing, once committed.
    let before = describe(&bus).unwrap();
    assert_eq!(before[0].partitions.iter().map(|p| p.lag).sum::<u64>(), 3_500);
    assert_eq!(before[0].members.len(), 1);
    assert_eq!(before[0].members[0].label, "resumer");
    assert_eq!(before[0].members[0].partitions, vec![0, 1, 2, 3]);
    assert!(before[0].partitions.iter().all(|p| p.owner.as_deref() == Some(m.id())));
    m.commit().unwrap();
    let after = describe(&bus).unwrap();
    assert!(after[0].partitions.iter().all(|p| p.lag == 0 && p.committed == p.end), "{:?}", after[0].partitions);
    m.leave().unwrap();
}

#[test]
fn a_new_group_replays_then_follows_live() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create("events", Some(4)).unwrap();
    let mut producer = topic.producer(log_opts()).unwrap();
    for i in 0..3_000u64 {
        producer.send(i, &i.to_le_bytes()).unwrap();
    }
    let mut m = Member::join(&bus, "fresh", "events", opts("late")).unwrap();
    let live = std::thread::spawn(move || {
        for i in 3_000..6_000u64 {
            producer.send(i, &i.to_le_bytes()).unwrap();
            if i % 200 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut seen = HashSet::new();
    let mut next = [0u64; 4];
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 6_000 {
        assert!(Instant::now() < deadline, "got {} of 6000", seen.len());
        for d in m.poll(128, Duration::from_millis(20)).unwrap() {
            let o = d.record.offset().0;
            assert_eq!(o, next[d.partition as usize], "gap or duplicate in partition {}", d.partition);
            next[d.partition as usize] += 1;
            let v = u64::from_le_bytes(d.record.payload().try_into().unwrap());
            assert!(seen.insert(v), "value {v} twice");
        }
    }
    live.join().unwrap();
    assert!(m.poll(16, Duration::from_millis(30)).unwrap().is_empty());
    assert_eq!(m.stats().delivered, 6_000);
    m.leave().unwrap();
}

#[test]
fn bad_names_and_damaged_offsets_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    bus.topic_or_create("events", Some(2)).unwrap();
    for (group, topic) in [("../x", "events"), ("g", "../events"), ("", "events"), ("g/h", "events")] {
        let e = Member::join(&bus, group, topic, GroupOptions::default()).unwrap_err();
        assert!(matches!(e, GroupError::Bus(BusError::InvalidName { .. })), "{group:?}/{topic:?}: {e}");
    }
    assert!(matches!(
        Member::join(&bus, "g", "nope", GroupOptions::default()),
        Err(GroupError::Bus(BusError::NoTopic { .. }))
    ));
    // A damaged offsets file: joining (which takes partition 0) and describe both say which file.
    let offsets = dir.path().join("groups/g/events/offsets");
    std::fs::create_dir_all(&offsets).unwrap();
    std::fs::write(offsets.join("0"), [0x5au8; 128]).unwrap();
    let e = Member::join(&bus, "g", "events", GroupOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, GroupError::BadGroupFile { why: FormatError::Slots(SlotError::BadMagic { .. }), .. })
            && msg.contains("offsets/0")
            && msg.contains("magic"),
        "{msg}"
    );
    let e = describe(&bus).unwrap_err().to_string();
    assert!(e.contains("offsets/0"), "{e}");
    std::fs::write(offsets.join("0"), b"short").unwrap();
    assert!(describe(&bus).unwrap_err().to_string().contains("5 bytes"));
}

#[test]
fn a_pipeline_source_can_be_a_member_and_a_sink_can_write_a_topic() {
    use shoal::pipeline::{Pipeline, Sink, Source};
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let input = bus.topic_or_create("in", Some(4)).unwrap();
    let output = bus.topic_or_create("out", Some(2)).unwrap();
    let mut producer = input.producer(log_opts()).unwrap();
    for i in 0..2_000u64 {
        producer.send(i, &i.to_le_bytes()).unwrap();
    }
    let member = Member::join(&bus, "pipe", "in", opts("pipeline")).unwrap();
    let source = Source::group(member, |d| Some(u64::from_le_bytes(d.record.payload().try_into().ok()?)));
    let sink = Sink::topic(output.producer(log_opts()).unwrap(), |v: &u64, buf: &mut Vec<u8>| {
        buf.extend_from_slice(&(v * 2).to_le_bytes());
        *v
    });
    let pipeline = Pipeline::builder().pin(false).source("group", source).sink("out", sink).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends(&bus, "out").iter().sum::<u64>() < 2_000 {
        assert!(Instant::now() < deadline, "pipeline wrote {:?}", ends(&bus, "out"));
        std::thread::sleep(Duration::from_millis(5));
    }
    pipeline.shutdown().unwrap();
    // Everything was committed by the source, and every value doubled landed once.
    let info = describe(&bus).unwrap();
    let g = info.iter().find(|g| g.group == "pipe").unwrap();
    assert!(g.partitions.iter().all(|p| p.lag == 0), "{:?}", g.partitions);
    let mut values = Vec::new();
    for p in 0..2 {
        let mut r = shoal::log::Reader::open(output.partition_dir(p).unwrap()).unwrap();
        while let Some(rec) = r.next().unwrap() {
            values.push(u64::from_le_bytes(rec.payload().try_into().unwrap()));
        }
    }
    values.sort_unstable();
    assert_eq!(values, (0..2_000u64).map(|v| v * 2).collect::<Vec<_>>());
}

/// A damaged topic `meta` under a group is reported (naming the file), not skipped as if
/// there were no groups: by `describe` and by `shoal groups` (non-zero exit).
#[test]
fn a_damaged_topic_meta_is_reported_by_describe_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    bus.topic_or_create("events", Some(2)).unwrap();
    Member::join(&bus, "g", "events", opts("one")).unwrap().leave().unwrap();
    assert_eq!(describe(&bus).unwrap().len(), 1);
    let meta = dir.path().join("topics/events/meta");
    let mut bytes = std::fs::read(&meta).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&meta, &bytes).unwrap();
    let e = describe(&bus).unwrap_err();
    assert!(matches!(e, GroupError::Bus(BusError::BadMeta { .. })), "{e}");
    assert!(e.to_string().contains(&meta.display().to_string()), "{e}");
    let err = cli_support::fails(&["groups", dir.path().to_str().unwrap()], b"");
    assert!(err.contains("topics/events/meta") && !err.contains("no consumer groups"), "{err}");
}

/// Byte positions of the records in a segment file, in order.
fn record_positions(segment: &std::path::Path) -> Vec<usize> {
    use shoal::log::format;
    let bytes = std::fs::read(segment).unwrap();
    assert_eq!(&bytes[..8], &format::SEGMENT_MAGIC);
    let index_entries = u32::from_le_bytes(bytes[40..44].try_into().unwrap());
    let mut position = format::data_start(index_entries);
    let mut positions = Vec::new();
    loop {
        let commit = u32::from_le_bytes(bytes[position..position + 4].try_into().unwrap());
        if commit == 0 || commit == format::END_OF_SEGMENT {
            return positions;
        }
        positions.push(position);
        position += format::record_stride((commit & !format::COMMIT_BIT) as usize);
    }
}

/// A one-partition topic of 300 durable records with one bit flipped in the payload of
/// record 200; the damaged byte's record position.
fn topic_damaged_at_200(bus: &Bus) -> usize {
    let topic = bus.topic_or_create("events", Some(1)).unwrap();
    let mut producer = topic.producer(log_opts()).unwrap();
    for i in 0..300u32 {
        producer.send_to(0, 0, format!("record {i:04}").as_bytes()).unwrap();
    }
    producer.sync().unwrap();
    producer.close().unwrap();
    let segment = topic.partition_dir(0).unwrap().join("00000000000000000000.seg");
    let positions = record_positions(&segment);
    assert_eq!(positions.len(), 300);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[positions[200] + shoal::log::format::RECORD_HEADER_BYTES + 3] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    positions[200]
}

#[test]
fn a_member_delivers_and_commits_every_intact_record_before_damage_then_stops_there() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let position = topic_damaged_at_200(&bus);
    let is_the_damage = |e: &GroupError| {
        let msg = e.to_string();
        matches!(e, GroupError::Log(shoal::log::LogError::Corruption { .. }))
            && msg.contains("00000000000000000000.seg")
            && msg.contains(&format!("byte {position} (offset 200)"))
    };

    // poll: every record before the damage (in batches), then the error, again and again.
    let mut m = Member::join(&bus, "g", "events", opts("poll")).unwrap();
    let mut offsets = Vec::new();
    let e = loop {
        match m.poll(64, Duration::from_millis(10)) {
            Ok(batch) => {
                assert!(!batch.is_empty(), "an empty poll before the damage was reported");
                offsets.extend(batch.iter().map(|d| d.record.offset().0));
                m.commit().unwrap();
            }
            Err(e) => break e,
        }
    };
    assert_eq!(offsets, (0..200).collect::<Vec<u64>>());
    assert!(is_the_damage(&e), "{e}");
    let again = m.poll(64, Duration::from_millis(10)).unwrap_err();
    assert!(is_the_damage(&again), "{again}");
    m.leave().unwrap();
    let info = describe(&bus).unwrap();
    assert_eq!(info[0].partitions[0].committed, 200, "every intact record before the damage committed");

    // poll_with and poll_into, in one batch larger than what is intact.
    let mut m = Member::join(&bus, "h", "events", opts("poll_with")).unwrap();
    let mut seen = Vec::new();
    let n = m.poll_with(4096, Duration::from_millis(10), |_, r| seen.push(r.offset().0)).unwrap();
    assert_eq!((n, seen.len(), seen.last()), (200, 200, Some(&199)));
    let e = m.poll_with(4096, Duration::from_millis(10), |_, _| panic!("a record past the damage")).unwrap_err();
    assert!(is_the_damage(&e), "{e}");
    m.commit().unwrap();
    drop(m);
    let mut m = Member::join(&bus, "i", "events", opts("poll_into")).unwrap();
    let mut out = Vec::new();
    assert_eq!(m.poll_into(&mut out, 4096, Duration::from_millis(10)).unwrap(), 200);
    let e = m.poll_into(&mut out, 4096, Duration::from_millis(10)).unwrap_err();
    assert!(is_the_damage(&e) && out.is_empty(), "{e}");
    // Group h committed its 200 and starts at the damage: the error at once.
    let mut m = Member::join(&bus, "h", "events", opts("again")).unwrap();
    assert!(is_the_damage(&m.poll(64, Duration::from_millis(10)).unwrap_err()));
}

#[test]
fn an_offsets_file_without_a_commit_is_an_error_and_an_empty_one_is_none_yet() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create("events", Some(1)).unwrap();
    let mut producer = topic.producer(log_opts()).unwrap();
    for i in 0..10u64 {
        producer.send_to(0, 0, &i.to_le_bytes()).unwrap();
    }
    let latest = || opts("latest").start(shoal::group::Start::Latest);
    let mut m = Member::join(&bus, "g", "events", opts("first")).unwrap();
    // Taken, nothing committed: the file is there and empty, which reads as no commit.
    let file = dir.path().join("groups/g/events/offsets/0");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    assert_eq!(describe(&bus).unwrap()[0].partitions[0].committed, 0);
    assert_eq!(m.poll(64, Duration::from_millis(10)).unwrap().len(), 10);
    // The first commit writes the whole file.
    m.commit().unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 128);
    m.leave().unwrap();
    for i in 10..20u64 {
        producer.send_to(0, 0, &i.to_le_bytes()).unwrap();
    }

    // Zero-filled: the commit is lost, which is an error naming the file, not a start from
    // scratch (or, with Start::Latest, a skip of records 10..20).
    std::fs::write(&file, [0u8; 128]).unwrap();
    let e = Member::join(&bus, "g", "events", latest()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, GroupError::BadGroupFile { why: FormatError::NoCommit { len: 128, .. }, .. })
            && msg.contains("offsets/0")
            && msg.contains("no commit in either slot")
            && msg.contains("restore it"),
        "{msg}"
    );
    assert!(describe(&bus).unwrap_err().to_string().contains("offsets/0"));
    let reset = shoal::group::reset_offsets(&bus, "g", "events", shoal::group::ResetTo::Earliest, false);
    assert!(reset.unwrap_err().to_string().contains("no commit in either slot"));

    // Empty: the state of a partition taken and never committed; removing the file restarts
    // the partition as the group's start says.
    std::fs::write(&file, b"").unwrap();
    let mut m = Member::join(&bus, "g", "events", latest()).unwrap();
    assert_eq!(m.position(0).unwrap(), 20);
    m.commit().unwrap();
    drop(m);
    assert_eq!(describe(&bus).unwrap()[0].partitions[0].committed, 20);
}
