//! Pipeline tests: per-key order and exactly-once under repeated scaling, round robin,
//! broadcast, backpressure, panics, shutdown under load, idle CPU, log sources and sinks,
//! large payloads carried as `RecordRef`s, sinks and sources that fail (reported by
//! `join`/`shutdown` naming the stage), and a topic sink's sync figures.
//!
//! The tests take one lock each (`serial`): they measure the process (threads, CPU time,
//! RSS), which other tests running beside them would disturb. Workers are not pinned (the
//! test machines have two shared cores).

// Option structs are filled field by field: that keeps compiling once they are
// `#[non_exhaustive]`, where a struct literal outside the library does not.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use shoal::log::{Appender, Durability, LogOptions, Reader, RecordRef};
use shoal::pipeline::{Emitter, Pipeline, PipelineError, Routing, Sink, Source, SourceStep, WorkerId};
use shoal::ring::{self, WaitStrategy};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Threads of this process whose name starts with `shoal-` (pipeline workers and sources).
fn shoal_threads() -> usize {
    let mut n = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path().join("comm");
        if let Ok(name) = std::fs::read_to_string(path) {
            if name.starts_with("shoal-") {
                n += 1;
            }
        }
    }
    n
}

/// Waits (up to a second) for the pipeline threads to leave `/proc`: a joined thread's task
/// entry can outlive the join by a moment (the kernel wakes the joiner before it reaps the
/// task). Returns how many are left.
fn shoal_threads_after_join() -> usize {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let n = shoal_threads();
        if n == 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn all_threads() -> usize {
    std::fs::read_dir("/proc/self/task").expect("/proc/self/task").count()
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).expect("resident").parse().expect("number");
    pages * 4096
}

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Ev {
    key: u64,
    seq: u64,
    id: u64,
}

fn key_of(e: &Ev) -> u64 {
    e.key
}

/// A stage handler that passes every event on.
fn forward<T: Copy + Send + 'static>(_: WorkerId) -> impl FnMut(&[T], &mut Emitter<T>) + Send {
    |batch: &[T], out: &mut Emitter<T>| {
        for e in batch {
            out.emit(*e);
        }
    }
}

type EvHandler = Box<dyn FnMut(&[Ev], &mut Emitter<Ev>) + Send>;

/// Checks per-key order and counts every event seen, in a last stage keyed by `key`.
struct Checker {
    last: Vec<AtomicU64>,
    seen: Vec<AtomicU8>,
    disorder: AtomicU64,
    handled: AtomicU64,
}

impl Checker {
    fn new(keys: usize, events: usize) -> Arc<Checker> {
        Arc::new(Checker {
            last: (0..keys).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..events).map(|_| AtomicU8::new(0)).collect(),
            disorder: AtomicU64::new(0),
            handled: AtomicU64::new(0),
        })
    }

    fn sink(self: &Arc<Self>) -> impl Fn(WorkerId) -> EvHandler + Send + Sync {
        let me = self.clone();
        move |_| {
            let me = me.clone();
            Box::new(move |batch: &[Ev], _: &mut Emitter<Ev>| {
                for e in batch {
                    // seq + 1 so that 0 means "none yet"; each key lives on one sink worker.
                    let prev = me.last[e.key as usize].swap(e.seq + 1, Ordering::Relaxed);
                    if prev > e.seq {
                        me.disorder.fetch_add(1, Ordering::Relaxed);
                    }
                    me.seen[e.id as usize].fetch_add(1, Ordering::Relaxed);
                }
                me.handled.fetch_add(batch.len() as u64, Ordering::Relaxed);
            })
        }
    }

    fn assert_exactly_once(&self) {
        assert_eq!(self.disorder.load(Ordering::Relaxed), 0, "per-key order broken");
        let missing = self.seen.iter().filter(|s| s.load(Ordering::Relaxed) == 0).count();
        let twice = self.seen.iter().filter(|s| s.load(Ordering::Relaxed) > 1).count();
        assert_eq!((missing, twice), (0, 0), "events missing, events seen more than once");
    }
}

fn keyed_events(total: usize, keys: usize) -> impl Iterator<Item = Ev> {
    let mut next_seq = vec![0u64; keys];
    (0..total).map(move |id| {
        let key = (id * 7 + id / 3) % keys;
        let seq = next_seq[key];
        next_seq[key] += 1;
        Ev { key: key as u64, seq, id: id as u64 }
    })
}

#[test]
fn per_key_order_and_exactly_once_under_repeated_scaling() {
    let _serial = serial();
    const TOTAL: usize = 200_000;
    const KEYS: usize = 97;
    const CHUNKS: usize = 25;
    let checker = Checker::new(KEYS, TOTAL);
    let (mut tx, rx) = ring::channel::<Ev>(4096, WaitStrategy::Park);
    let mut pipeline = Pipeline::<Ev>::builder()
        .pin(false)
        .ring_capacity(256)
        .batch_max(64)
        .latency_metrics(true)
        .source("feed", Source::ring(rx))
        .stage("parse", 1, Routing::ByKey(key_of), forward)
        .stage("mid", 1, Routing::ByKey(key_of), forward)
        .stage("sink", 2, Routing::ByKey(key_of), checker.sink())
        .build()
        .expect("build");
    let scales_done = Arc::new(AtomicUsize::new(0));
    let feeder_done = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (scales_done, feeder_done) = (scales_done.clone(), feeder_done.clone());
        std::thread::spawn(move || {
            for (i, e) in keyed_events(TOTAL, KEYS).enumerate() {
                if i % (TOTAL / CHUNKS) == 0 {
                    // Let a scale happen while this chunk is in flight.
                    let chunk = i / (TOTAL / CHUNKS);
                    while scales_done.load(Ordering::Acquire) < chunk {
                        std::thread::yield_now();
                    }
                }
                tx.push_wait(e).expect("pipeline source ring");
            }
            feeder_done.store(true, Ordering::Release);
            // dropping tx ends the source
        })
    };
    let sizes = [3, 2, 4, 1];
    let mut pauses = Vec::new();
    let mut i = 0;
    while !feeder_done.load(Ordering::Acquire) {
        let to = sizes[i % sizes.len()];
        let report = pipeline.scale("mid", to).expect("scale mid");
        assert_eq!(report.to, to);
        pauses.push(report.pause);
        assert_eq!(pipeline.workers("mid").expect("mid"), to);
        i += 1;
        scales_done.store(i, Ordering::Release);
    }
    feeder.join().expect("feeder");
    let stats = pipeline.join().expect("join");
    assert!(i >= CHUNKS, "only {i} scales ran while events flowed");
    assert_eq!(checker.handled.load(Ordering::Relaxed), TOTAL as u64);
    checker.assert_exactly_once();
    let mid = &stats.stages[2];
    assert_eq!((mid.name.as_str(), mid.events), ("mid", TOTAL as u64));
    assert!(mid.hop_latency.as_ref().expect("latency on").count() > 0);
    pauses.sort();
    eprintln!("{i} scales; pause p50 {:?}, max {:?}", pauses[pauses.len() / 2], pauses[pauses.len() - 1]);
}

/// `emit_slice` from a closure source into a keyed stage scaled between one worker (where a
/// slice is copied into the one ring in runs) and several (where each event is routed on its
/// own), and from that stage's handlers into a keyed sink: every event once, per-key order.
#[test]
fn batched_emits_keep_per_key_order_and_exactly_once_across_scales() {
    let _serial = serial();
    const TOTAL: usize = 120_000;
    const KEYS: usize = 31;
    const BLOCK: usize = 300; // more than a ring holds: each slice waits for room
    const SCALES: usize = 8;
    let checker = Checker::new(KEYS, TOTAL);
    let events: Vec<Ev> = keyed_events(TOTAL, KEYS).collect();
    let emitted = Arc::new(AtomicUsize::new(0));
    let scales_done = Arc::new(AtomicUsize::new(0));
    let (at, scaled) = (emitted.clone(), scales_done.clone());
    let mut pipeline = Pipeline::<Ev>::builder()
        .pin(false)
        .ring_capacity(128)
        .batch_max(64)
        .source(
            "blocks",
            Source::closure(move |out: &mut Emitter<Ev>| {
                let from = at.load(Ordering::Relaxed);
                // The k-th eighth of the events goes out once k scales are done, so that
                // every scale happens while events flow. Returning (not waiting here) lets
                // the source thread serve the scale's pause between two calls.
                if scaled.load(Ordering::Acquire) < from * SCALES / TOTAL {
                    std::thread::yield_now();
                    return SourceStep::Continue;
                }
                let to = (from + BLOCK).min(TOTAL);
                out.emit_slice(&events[from..to]);
                at.store(to, Ordering::Release);
                if to == TOTAL {
                    SourceStep::Done
                } else {
                    SourceStep::Continue
                }
            }),
        )
        .stage("mid", 1, Routing::ByKey(key_of), |_| |batch: &[Ev], out: &mut Emitter<Ev>| out.emit_slice(batch))
        .stage("sink", 2, Routing::ByKey(key_of), checker.sink())
        .build()
        .expect("build");
    // One worker (slices copied into one ring) and several (events routed one by one), in turn.
    let sizes = [3, 1, 2, 1];
    for i in 0..SCALES {
        let to = sizes[i % sizes.len()];
        assert_eq!(pipeline.scale("mid", to).expect("scale mid").to, to);
        scales_done.store(i + 1, Ordering::Release);
    }
    let stats = pipeline.join().expect("join");
    assert_eq!(checker.handled.load(Ordering::Relaxed), TOTAL as u64);
    checker.assert_exactly_once();
    assert_eq!(stats.stages[0].events, TOTAL as u64, "the source counts every event of its slices");
    assert_eq!(stats.scales, SCALES as u64);
    assert_eq!(stats.discarded, 0);
}

/// A source emitting one event per call into a ring of 4 slots whose reader stalls now and
/// then: single-event publications meet a full ring and wait, and every event arrives once,
/// in order.
#[test]
fn one_event_per_call_into_a_full_ring_waits_and_keeps_order() {
    let _serial = serial();
    const TOTAL: u64 = 20_000;
    let mut next = 0u64;
    let got = Arc::new(Mutex::new(Vec::with_capacity(TOTAL as usize)));
    let pipeline = Pipeline::<u64>::builder()
        .pin(false)
        .ring_capacity(4)
        .source(
            "one",
            Source::closure(move |out: &mut Emitter<u64>| {
                out.emit(next);
                next += 1;
                if next == TOTAL {
                    SourceStep::Done
                } else {
                    SourceStep::Continue
                }
            }),
        )
        .stage("slow", 1, Routing::RoundRobin, {
            let got = got.clone();
            move |_| {
                let got = got.clone();
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    let mut got = got.lock().unwrap_or_else(PoisonError::into_inner);
                    got.extend_from_slice(batch);
                    if got.len() % 1000 < batch.len() {
                        std::thread::sleep(Duration::from_millis(2)); // the source fills the ring
                    }
                }
            }
        })
        .build()
        .expect("build");
    let stats = pipeline.join().expect("join");
    let got = got.lock().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(got.len() as u64, TOTAL);
    assert!(got.iter().copied().eq(0..TOTAL), "events out of order");
    assert_eq!(stats.stages[0].events, TOTAL);
}

#[test]
fn round_robin_delivers_exactly_once() {
    let _serial = serial();
    const TOTAL: usize = 100_000;
    let checker = Checker::new(1, TOTAL);
    let mut next = 0u64;
    let mut pipeline = Pipeline::<Ev>::builder()
        .pin(false)
        .ring_capacity(128)
        .source(
            "count",
            Source::closure(move |out: &mut Emitter<Ev>| {
                for _ in 0..100 {
                    // key 0, seq = id: round robin reorders, so the sink only counts.
                    out.emit(Ev { key: 0, seq: next, id: next });
                    next += 1;
                }
                if next as usize == TOTAL {
                    SourceStep::Done
                } else {
                    SourceStep::Continue
                }
            }),
        )
        .stage("spread", 3, Routing::RoundRobin, forward)
        .stage("gather", 1, Routing::RoundRobin, {
            let checker = checker.clone();
            move |_| {
                let checker = checker.clone();
                move |batch: &[Ev], _: &mut Emitter<Ev>| {
                    for e in batch {
                        checker.seen[e.id as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    checker.handled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        })
        .build()
        .expect("build");
    pipeline.scale("spread", 2).expect("scale down");
    pipeline.scale("spread", 4).expect("scale up");
    let stats = pipeline.join().expect("join");
    assert_eq!(checker.handled.load(Ordering::Relaxed), TOTAL as u64);
    checker.assert_exactly_once();
    assert_eq!(stats.stages[0].events, TOTAL as u64);
    assert_eq!(stats.stages[1].events, TOTAL as u64);
    assert_eq!(stats.scales, 2);
}

#[test]
fn broadcast_reaches_every_worker() {
    let _serial = serial();
    const TOTAL: u64 = 10_000;
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let sums: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let mut next = 0u64;
    let pipeline = Pipeline::<u64>::builder()
        .pin(false)
        .source(
            "numbers",
            Source::closure(move |out: &mut Emitter<u64>| {
                out.emit(next);
                next += 1;
                if next == TOTAL {
                    SourceStep::Done
                } else {
                    SourceStep::Continue
                }
            }),
        )
        .stage("all", 3, Routing::broadcast(), {
            let (counts, sums) = (counts.clone(), sums.clone());
            move |id: WorkerId| {
                let (counts, sums) = (counts.clone(), sums.clone());
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    counts[id.0].fetch_add(batch.len() as u64, Ordering::Relaxed);
                    sums[id.0].fetch_add(batch.iter().sum::<u64>(), Ordering::Relaxed);
                }
            }
        })
        .build()
        .expect("build");
    pipeline.join().expect("join");
    for w in 0..3 {
        assert_eq!(counts[w].load(Ordering::Relaxed), TOTAL, "worker {w}");
        assert_eq!(sums[w].load(Ordering::Relaxed), TOTAL * (TOTAL - 1) / 2, "worker {w}");
    }
}

#[test]
fn backpressure_holds_memory_flat() {
    let _serial = serial();
    const TOTAL: u64 = 1_000_000;
    const CAPACITY: usize = 256;
    const BATCH: usize = 64;
    let mut next = 0u64;
    let handled = Arc::new(AtomicU64::new(0));
    let pipeline = Pipeline::<u64>::builder()
        .pin(false)
        .ring_capacity(CAPACITY)
        .batch_max(BATCH)
        .source(
            "fast",
            Source::closure(move |out: &mut Emitter<u64>| {
                for _ in 0..1000 {
                    out.emit(next);
                    next += 1;
                }
                if next >= TOTAL {
                    SourceStep::Done
                } else {
                    SourceStep::Continue
                }
            }),
        )
        .stage("pass", 1, Routing::RoundRobin, forward)
        .stage("slow", 1, Routing::RoundRobin, {
            let handled = handled.clone();
            move |_| {
                let handled = handled.clone();
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    // ~2x slower than the source: a busy loop, not a sleep (timer slack).
                    let until = Instant::now() + Duration::from_nanos(150 * batch.len() as u64);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    handled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        })
        .build()
        .expect("build");
    std::thread::sleep(Duration::from_millis(20));
    let rss_start = rss_bytes();
    let mut rss_max = rss_start;
    let mut occupancy_max: f64 = 0.0;
    let mut in_flight_max = 0u64;
    // Rings: source->pass and pass->slow; each worker may hold one batch outside them.
    let bound = 2 * CAPACITY as u64 + 3 * BATCH as u64 + 1000;
    while handled.load(Ordering::Relaxed) < TOTAL {
        let m = pipeline.metrics();
        for s in &m[1..] {
            assert!(s.ring_occupancy <= 1.0);
            occupancy_max = occupancy_max.max(s.ring_occupancy);
        }
        let in_flight = m[0].events.saturating_sub(m[2].events);
        in_flight_max = in_flight_max.max(in_flight);
        assert!(in_flight <= bound, "{in_flight} events in flight, more than the rings hold ({bound})");
        rss_max = rss_max.max(rss_bytes());
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = pipeline.join().expect("join");
    assert_eq!(stats.stages[2].events, TOTAL);
    assert!(occupancy_max > 0.5, "the slow sink never backed the rings up ({occupancy_max})");
    let growth = rss_max.saturating_sub(rss_start);
    assert!(growth < 8 << 20, "RSS grew by {growth} bytes while 1M events flowed");
    eprintln!("in flight max {in_flight_max}, occupancy max {occupancy_max:.2}, RSS growth {growth} B");
}

#[test]
fn panic_in_a_handler_stops_the_pipeline() {
    let _serial = serial();
    assert_eq!(shoal_threads_after_join(), 0, "a previous test leaked pipeline threads");
    let threads_before = all_threads();
    let armed = Arc::new(AtomicBool::new(false));
    let mut next = 0u64;
    let pipeline = Pipeline::<u64>::builder()
        .pin(false)
        .ring_capacity(64)
        .source(
            "endless",
            Source::closure(move |out: &mut Emitter<u64>| {
                out.emit(next);
                next += 1;
                SourceStep::Continue
            }),
        )
        .stage("fan", 2, Routing::ByKey(|v| *v), forward)
        .stage("boom", 2, Routing::ByKey(|v| *v), {
            let armed = armed.clone();
            move |_| {
                let armed = armed.clone();
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    if armed.load(Ordering::Relaxed) && batch.iter().any(|v| v % 1000 == 0) {
                        panic!("boom at a multiple of 1000");
                    }
                }
            }
        })
        .stage("after", 1, Routing::RoundRobin, |_| |_: &[u64], _: &mut Emitter<u64>| {})
        .build()
        .expect("build");
    // Threads name themselves as they start.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shoal_threads() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(shoal_threads(), 6, "source, 2 + 2 + 1 workers");
    let started = Instant::now();
    armed.store(true, Ordering::Relaxed);
    let err = pipeline.join().expect_err("a handler panicked");
    let took = started.elapsed();
    match &err {
        PipelineError::Panicked { stage, worker, message } => {
            assert_eq!(stage, "boom");
            assert!(*worker < 2);
            assert!(message.contains("boom at a multiple of 1000"), "{message}");
        }
        other => panic!("wrong error: {other}"),
    }
    assert!(err.to_string().contains("boom"), "{err}");
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    // Every thread the pipeline started is named shoal-*: none is left. (The harness's own
    // threads come and go, so the total is not compared.)
    assert_eq!(shoal_threads_after_join(), 0, "pipeline threads left behind");
    assert!(all_threads() <= threads_before + 1, "threads left behind");
}

#[test]
fn a_panic_during_a_scale_fails_the_scale_and_shutdown() {
    let _serial = serial();
    let mut pipeline = Pipeline::<u64>::builder()
        .pin(false)
        .source(
            "one",
            Source::closure(|out: &mut Emitter<u64>| {
                out.emit(1);
                SourceStep::Continue
            }),
        )
        .stage("explode", 1, Routing::RoundRobin, |_| {
            let mut calls = 0u32;
            move |_: &[u64], _: &mut Emitter<u64>| {
                calls += 1;
                if calls == 50 {
                    panic!("late failure");
                }
            }
        })
        .build()
        .expect("build");
    for n in [2, 1, 3, 1].into_iter().cycle().take(400) {
        if let Err(e) = pipeline.scale("explode", n) {
            assert!(matches!(e, PipelineError::Panicked { .. }), "{e}");
            break;
        }
    }
    // The panic lands during a scale (which reports it) or right after the loop; the
    // shutdown reports it either way.
    let err = pipeline.shutdown().expect_err("the handler panicked");
    assert!(matches!(err, PipelineError::Panicked { .. }), "{err}");
    assert_eq!(shoal_threads_after_join(), 0);
}

#[test]
fn a_handler_panic_is_reported_by_every_call_after_it() {
    let _serial = serial();
    for end_with_join in [true, false] {
        let mut next = 0u64;
        let mut pipeline = Pipeline::<u64>::builder()
            .pin(false)
            .source(
                "numbers",
                Source::closure(move |out: &mut Emitter<u64>| {
                    out.emit(next);
                    next += 1;
                    SourceStep::Continue
                }),
            )
            .stage("boom", 2, Routing::RoundRobin, |_| {
                |batch: &[u64], _: &mut Emitter<u64>| {
                    if batch.contains(&5000) {
                        panic!("handler panic at 5000");
                    }
                }
            })
            .build()
            .expect("build");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pipeline.is_failed() {
            assert!(Instant::now() < deadline, "the handler never saw event 5000");
            std::thread::sleep(Duration::from_millis(1));
        }
        let is_the_panic = |e: &PipelineError| {
            matches!(e, PipelineError::Panicked { stage, message, .. }
                if stage == "boom" && message.contains("handler panic at 5000"))
        };
        // The first call that sees the failure reports it, and so does every call after it.
        for _ in 0..2 {
            let e = pipeline.scale("boom", 3).expect_err("the pipeline stopped");
            assert!(is_the_panic(&e), "scale: {e}");
        }
        let end = if end_with_join { pipeline.join() } else { pipeline.shutdown() };
        let e = end.expect_err("the pipeline stopped on a panic");
        assert!(is_the_panic(&e), "{}: {e}", if end_with_join { "join" } else { "shutdown" });
        assert_eq!(shoal_threads_after_join(), 0);
    }
}

#[test]
fn shutdown_under_load_drains_every_event() {
    let _serial = serial();
    let emitted = Arc::new(AtomicU64::new(0));
    let handled = Arc::new(AtomicU64::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let mut next = 0u64;
    let pipeline = Pipeline::<u64>::builder()
        .pin(false)
        .ring_capacity(1024)
        .source("endless", {
            let emitted = emitted.clone();
            Source::closure(move |out: &mut Emitter<u64>| {
                for _ in 0..64 {
                    out.emit(next);
                    next += 1;
                }
                emitted.store(next, Ordering::Relaxed);
                SourceStep::Continue
            })
        })
        .stage("a", 2, Routing::RoundRobin, |_| {
            |batch: &[u64], out: &mut Emitter<u64>| {
                for v in batch {
                    out.emit(v + 1);
                }
            }
        })
        .stage("b", 2, Routing::ByKey(|v| *v), {
            let (handled, sum) = (handled.clone(), sum.clone());
            move |_| {
                let (handled, sum) = (handled.clone(), sum.clone());
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    handled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    sum.fetch_add(batch.iter().sum::<u64>(), Ordering::Relaxed);
                }
            }
        })
        .build()
        .expect("build");
    while handled.load(Ordering::Relaxed) < 50_000 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = pipeline.shutdown().expect("shutdown");
    let n = emitted.load(Ordering::Relaxed);
    assert!(n > 0);
    assert_eq!(handled.load(Ordering::Relaxed), n, "every emitted event is handled");
    assert_eq!(sum.load(Ordering::Relaxed), n * (n + 1) / 2);
    assert_eq!(stats.stages[0].events, n);
    assert_eq!(stats.stages[2].events, n);
    assert_eq!(stats.discarded, 0);
    assert_eq!(shoal_threads_after_join(), 0);
}

#[test]
fn idle_pipeline_uses_almost_no_cpu_with_park() {
    let _serial = serial();
    let (mut tx, rx) = ring::channel::<u64>(1024, WaitStrategy::Park);
    let handled = Arc::new(AtomicU64::new(0));
    let pipeline = Pipeline::<u64>::builder()
        .pin(false)
        .wait(WaitStrategy::Park)
        .source("quiet", Source::ring(rx))
        .stage("a", 2, Routing::RoundRobin, forward)
        .stage("b", 2, Routing::ByKey(|v| *v), {
            let handled = handled.clone();
            move |_| {
                let handled = handled.clone();
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    handled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        })
        .build()
        .expect("build");
    // Some traffic first, so every worker has run and then gone idle.
    for i in 0..10_000 {
        tx.push_wait(i).expect("push");
    }
    while handled.load(Ordering::Relaxed) < 10_000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(100));
    let ticks_per_s = {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as u64
        } else {
            100
        }
    };
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(Duration::from_secs(1));
    let (wall, used) = (t0.elapsed(), cpu_ticks() - c0);
    let share = used as f64 / ticks_per_s as f64 / wall.as_secs_f64();
    assert!(share < 0.05, "an idle pipeline used {:.1}% of a core", share * 100.0);
    eprintln!("idle: {:.2}% of a core", share * 100.0);
    drop(tx);
    pipeline.join().expect("join");
}

fn log_opts() -> LogOptions {
    LogOptions::default().segment_bytes(4 << 20).max_record_bytes(128 << 10).durability(Durability::Never)
}

#[test]
fn tailer_source_and_appender_sink_round_trip() {
    let _serial = serial();
    let input = tempfile::tempdir().expect("tempdir");
    let output = tempfile::tempdir().expect("tempdir");
    const TOTAL: u64 = 20_000;
    let mut log_in = Appender::open(input.path(), log_opts()).expect("open input log");
    for i in 0..TOTAL / 2 {
        log_in.append_pod(i % 13, &i).expect("append");
    }
    let log_out = Appender::open(output.path(), log_opts()).expect("open output log");
    let source = Source::tailer(input.path(), |r| r.payload_as::<u64>().ok().map(|v| (r.key(), *v))).expect("tailer");
    let pipeline = Pipeline::<(u64, u64)>::builder()
        .pin(false)
        .source("tail", source)
        .stage("square", 2, Routing::ByKey(|e: &(u64, u64)| e.0), |_| {
            |batch: &[(u64, u64)], out: &mut Emitter<(u64, u64)>| {
                for &(k, v) in batch {
                    out.emit((k, v * v));
                }
            }
        })
        .sink(
            "store",
            Sink::appender(log_out, |e: &(u64, u64), buf: &mut Vec<u8>| {
                buf.extend_from_slice(&e.1.to_le_bytes());
                e.0
            }),
        )
        .build()
        .expect("build");
    // The second half arrives while the tailer follows.
    for i in TOTAL / 2..TOTAL {
        log_in.append_pod(i % 13, &i).expect("append");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while pipeline.metrics()[2].events < TOTAL {
        assert!(Instant::now() < deadline, "the sink got {} of {TOTAL}", pipeline.metrics()[2].events);
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = pipeline.shutdown().expect("shutdown");
    assert_eq!(stats.stages[2].events, TOTAL);
    let mut reader = Reader::open(output.path()).expect("reader");
    let mut got = Vec::new();
    while let Some(r) = reader.next().expect("read") {
        got.push((r.key(), *r.payload_as::<u64>().expect("u64")));
    }
    assert_eq!(got.len() as u64, TOTAL);
    // Per key, in order (the keyed stage keeps it); as a set, every square once.
    for key in 0..13 {
        let values: Vec<u64> = got.iter().filter(|e| e.0 == key).map(|e| e.1).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "key {key} out of order");
    }
    let set: HashSet<u64> = got.iter().map(|e| e.1).collect();
    assert_eq!(set, (0..TOTAL).map(|i| i * i).collect::<HashSet<u64>>());
}

/// A large-payload event: a reference into the log plus what a stage adds.
#[derive(Clone)]
struct Blob {
    record: RecordRef,
    checked: bool,
}

#[test]
fn record_refs_carry_large_payloads_without_copying() {
    let _serial = serial();
    const RECORDS: usize = 40;
    const BYTES: usize = 64 << 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Appender::open(dir.path(), log_opts()).expect("open");
    for i in 0..RECORDS {
        log.append_keyed(i as u64, &vec![i as u8; BYTES]).expect("append");
    }
    log.close().expect("close");
    let at_source: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let at_sink: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let source = Source::replay_refs(dir.path(), {
        let at_source = at_source.clone();
        move |record: RecordRef| {
            at_source.lock().expect("lock").push((record.offset().0, record.payload().as_ptr() as usize));
            Some(Blob { record, checked: false })
        }
    })
    .expect("replay");
    let pipeline = Pipeline::<Blob>::builder()
        .pin(false)
        .ring_capacity(8)
        .source("log", source)
        .stage("check", 2, Routing::ByKey(|b: &Blob| b.record.key()), |_| {
            |batch: &[Blob], out: &mut Emitter<Blob>| {
                for b in batch {
                    let payload = b.record.payload();
                    assert_eq!(payload.len(), BYTES);
                    assert!(payload.iter().all(|&x| x == b.record.key() as u8));
                    out.emit(Blob { record: b.record.clone(), checked: true });
                }
            }
        })
        .sink("keep", {
            let at_sink = at_sink.clone();
            Sink::closure(move |batch: &[Blob]| {
                for b in batch {
                    assert!(b.checked);
                    at_sink.lock().expect("lock").push((b.record.offset().0, b.record.payload().as_ptr() as usize));
                }
            })
        })
        .build()
        .expect("build");
    pipeline.join().expect("join");
    let mut src = at_source.lock().expect("lock").clone();
    let mut dst = at_sink.lock().expect("lock").clone();
    src.sort();
    dst.sort();
    assert_eq!(src.len(), RECORDS);
    assert_eq!(src, dst, "the sink sees each payload at the address the source read it from");
    // Consecutive records lie one after the other in the mapped segment.
    for w in src.windows(2) {
        let gap = w[1].1 - w[0].1;
        assert!((BYTES..BYTES + 4096).contains(&gap), "payloads are not in one mapping (gap {gap})");
    }
}

/// A worker's slip after small batches (one event per source call keeps every batch
/// small) loses and reorders nothing, off, at its default and long; a slip past the bound
/// is refused naming the option.
#[test]
fn the_slip_after_small_batches_loses_nothing_and_is_bounded() {
    let _serial = serial();
    const TOTAL: u64 = 5_000;
    for slip in [Duration::ZERO, shoal::pipeline::SLIP_DEFAULT, Duration::from_micros(50)] {
        let mut next = 0u64;
        let seen = Arc::new(Mutex::new(Vec::with_capacity(TOTAL as usize)));
        let sink_seen = seen.clone();
        let p = Pipeline::<u64>::builder()
            .pin(false)
            .wait(WaitStrategy::SpinThenYield)
            .slip(slip)
            .source(
                "one-per-call",
                Source::closure(move |e: &mut Emitter<u64>| {
                    e.emit(next);
                    next += 1;
                    if next == TOTAL {
                        SourceStep::Done
                    } else {
                        SourceStep::Continue
                    }
                }),
            )
            .stage("double", 1, Routing::RoundRobin, |_| {
                |batch: &[u64], out: &mut Emitter<u64>| {
                    for v in batch {
                        out.emit(v * 2);
                    }
                }
            })
            .sink("keep", Sink::closure(move |batch: &[u64]| sink_seen.lock().unwrap().extend_from_slice(batch)))
            .build()
            .expect("build");
        p.join().expect("join");
        let seen = seen.lock().unwrap();
        assert_eq!(*seen, (0..TOTAL).map(|v| v * 2).collect::<Vec<_>>(), "slip {slip:?}");
    }
    let err = Pipeline::<u64>::builder()
        .slip(Duration::from_millis(2))
        .source("s", Source::closure(|_: &mut Emitter<u64>| SourceStep::Done))
        .stage("a", 1, Routing::RoundRobin, |_| |_: &[u64], _: &mut Emitter<u64>| {})
        .build()
        .err()
        .expect("a 2 ms slip is refused");
    assert!(matches!(err, PipelineError::Config(_)) && err.to_string().contains("slip"), "{err}");
}

#[test]
fn builder_and_scale_errors_say_what_to_do() {
    let _serial = serial();
    let noop = |_: WorkerId| |_: &[u64], _: &mut Emitter<u64>| {};
    let source = || Source::closure(|_: &mut Emitter<u64>| SourceStep::Done);
    let err = Pipeline::<u64>::builder().stage("a", 1, Routing::RoundRobin, noop).build().err().expect("no source");
    assert!(matches!(err, PipelineError::NoSource));
    let err = Pipeline::<u64>::builder().source("s", source()).build().err().expect("no stage");
    assert!(matches!(err, PipelineError::NoStages));
    let err = Pipeline::<u64>::builder()
        .source("s", source())
        .stage("a", 0, Routing::RoundRobin, noop)
        .build()
        .err()
        .expect("0");
    assert!(matches!(err, PipelineError::InvalidWorkers { workers: 0, .. }), "{err}");
    let err = Pipeline::<u64>::builder()
        .source("s", source())
        .stage("a", 1, Routing::RoundRobin, noop)
        .stage("a", 1, Routing::RoundRobin, noop)
        .build()
        .err()
        .expect("duplicate");
    assert!(err.to_string().contains("used twice"), "{err}");
    // Rings too large to allocate are refused by build, not a panic or an abort in it.
    for slots in [shoal::pipeline::RING_CAPACITY_MAX + 1, 1 << 40, usize::MAX] {
        let err = Pipeline::<u64>::builder()
            .ring_capacity(slots)
            .source("s", source())
            .stage("a", 1, Routing::RoundRobin, noop)
            .build()
            .err()
            .expect("a ring too large");
        assert!(matches!(err, PipelineError::Config(_)) && err.to_string().contains("ring_capacity"), "{err}");
    }
    let (tx, rx) = ring::channel::<u64>(16, WaitStrategy::Park);
    let mut p = Pipeline::<u64>::builder()
        .pin(false)
        .source("s", Source::ring(rx))
        .stage("a", 1, Routing::RoundRobin, noop)
        .sink("end", Sink::closure(|_: &[u64]| {}))
        .build()
        .expect("build");
    let err = p.scale("nope", 2).expect_err("unknown");
    assert!(err.to_string().contains("\"a\""), "names the known stages: {err}");
    assert!(matches!(p.scale("a", 0), Err(PipelineError::InvalidWorkers { .. })));
    assert!(matches!(p.scale("end", 2), Err(PipelineError::InvalidWorkers { max: 1, .. })));
    assert_eq!(p.scale("a", 1).expect("same size").pause, Duration::ZERO);
    drop(tx);
    p.join().expect("join");
    assert_eq!(shoal_threads_after_join(), 0);
}

#[test]
fn dropping_a_running_pipeline_stops_its_threads() {
    let _serial = serial();
    let pipeline = Pipeline::<u64>::builder()
        .pin(false)
        .ring_capacity(16)
        .source(
            "endless",
            Source::closure(|out: &mut Emitter<u64>| {
                out.emit(7);
                SourceStep::Continue
            }),
        )
        .stage("slow", 1, Routing::RoundRobin, |_| {
            |_: &[u64], _: &mut Emitter<u64>| std::thread::sleep(Duration::from_micros(100))
        })
        .build()
        .expect("build");
    std::thread::sleep(Duration::from_millis(20));
    drop(pipeline);
    assert_eq!(shoal_threads_after_join(), 0);
}

/// Options whose segments fill after a few hundred records, so appends soon need a new
/// segment file.
fn small_segments() -> LogOptions {
    LogOptions::default()
        .segment_bytes(64 << 10)
        .max_record_bytes(1 << 10)
        .durability(Durability::Batch)
        .prefault(false)
}

/// A source of `total` numbers, then done.
fn numbers(total: u64) -> Source<u64> {
    let mut next = 0u64;
    Source::closure(move |e: &mut Emitter<u64>| {
        let end = (next + 1024).min(total);
        for v in next..end {
            e.emit(v);
        }
        next = end;
        if next == total {
            SourceStep::Done
        } else {
            SourceStep::Continue
        }
    })
}

fn encode_padded(v: &u64, buf: &mut Vec<u8>) -> u64 {
    buf.extend_from_slice(&v.to_le_bytes());
    buf.resize(256, 0);
    *v
}

#[test]
fn a_log_sink_that_cannot_write_fails_the_pipeline_naming_the_stage() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    let appender = Appender::open(&log_dir, small_segments()).expect("open");
    // The directory goes away under the open appender: its next segment cannot be created.
    remove_under_appender(&log_dir);
    let sink = Sink::appender(appender, encode_padded);
    let stats = sink.stats();
    let pipeline = Pipeline::builder().pin(false).source("numbers", numbers(100_000)).sink("store", sink).build();
    let err = pipeline.expect("build").join().expect_err("the appends cannot all succeed");
    match &err {
        PipelineError::SinkFailed { stage, message } => {
            assert_eq!(stage, "store");
            assert!(message.contains(&log_dir.display().to_string()), "{message}");
        }
        other => panic!("expected SinkFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("sink \"store\" failed"), "{err}");
    assert!(stats.records() < 100_000, "{} records taken", stats.records());
    assert_eq!(stats.durable_at(), None);
}

/// Removes a log directory while its appender is open. The appender's preparer thread may be
/// creating the next segment file at that moment ("directory not empty"); it prepares one
/// segment ahead and then waits for appends, so a few tries win.
fn remove_under_appender(dir: &std::path::Path) {
    let mut tries = 0;
    while let Err(e) = std::fs::remove_dir_all(dir) {
        tries += 1;
        assert!(tries < 200, "remove {}: {e}", dir.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_topic_sink_that_cannot_write_fails_the_pipeline_naming_the_stage() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = shoal::bus::Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create("out", Some(2)).expect("topic");
    let producer = topic.producer(small_segments()).expect("producer");
    for p in 0..2 {
        remove_under_appender(&topic.partition_dir(p).expect("partition"));
    }
    let sink = Sink::topic(producer, encode_padded);
    let pipeline = Pipeline::builder().pin(false).source("numbers", numbers(100_000)).sink("topic", sink).build();
    let err = pipeline.expect("build").join().expect_err("the appends cannot all succeed");
    match &err {
        PipelineError::SinkFailed { stage, message } => {
            assert_eq!(stage, "topic");
            assert!(message.contains("topic out"), "{message}");
        }
        other => panic!("expected SinkFailed, got {other:?}"),
    }
}

#[test]
fn a_topic_sink_reports_its_syncs_and_when_everything_was_durable() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = shoal::bus::Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create("out", Some(2)).expect("topic");
    let mut opts = small_segments();
    opts.segment_bytes = 4 << 20;
    let sink = Sink::topic(topic.producer(opts).expect("producer"), encode_padded);
    let stats = sink.stats();
    let started = Instant::now();
    let pipeline = Pipeline::builder().pin(false).source("numbers", numbers(10_000)).sink("topic", sink).build();
    pipeline.expect("build").join().expect("join");
    assert_eq!(stats.records(), 10_000);
    assert!(stats.syncs() >= 2, "{} syncs (one per partition at least)", stats.syncs());
    assert_eq!(stats.sync_latency().count(), stats.syncs());
    assert!(stats.durable_at().expect("durable") >= started);
    assert_eq!(stats.final_sync_error(), None);
    // Closed: a new producer can open the topic, and every record is there.
    let producer = topic.producer(opts).expect("reopen");
    assert_eq!((0..2).map(|p| producer.next_offset(p).expect("partition").0).sum::<u64>(), 10_000);
}

#[test]
fn a_group_source_whose_files_are_damaged_fails_the_pipeline_naming_the_source() {
    use shoal::group::{GroupOptions, Member};
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = shoal::bus::Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create("in", Some(1)).expect("topic");
    let mut producer = topic.producer(log_opts()).expect("producer");
    for v in 0..100u64 {
        producer.send(v, &v.to_le_bytes()).expect("send");
    }
    let mut opts = GroupOptions::default().label("first".to_string());
    let first = Member::join(&bus, "g", "in", opts.clone()).expect("join");
    opts.label = "second".to_string();
    let second = Member::join(&bus, "g", "in", opts).expect("join");
    // The committed offsets of the partition are damaged, then the member holding it
    // leaves: the source's member reads the damaged file when it takes the partition over.
    let offsets = bus.group_dir("g").expect("group").join("in").join("offsets").join("0");
    let source = Source::group(second, |d| Some(d.record.offset().0));
    let pipeline = Pipeline::builder()
        .pin(false)
        .source("group", source)
        .sink("count", Sink::closure(|_: &[u64]| {}))
        .build()
        .expect("build");
    std::fs::write(&offsets, vec![0xA5; 200]).expect("damage the offsets file");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pipeline.is_failed() {
        assert!(Instant::now() < deadline, "the damaged offsets file went unnoticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    match pipeline.shutdown().expect_err("the source failed") {
        PipelineError::SourceFailed { name, message } => {
            assert_eq!(name, "group");
            assert!(message.contains("failed to poll"), "{message}");
            assert!(message.contains(&offsets.display().to_string()), "{message}");
        }
        other => panic!("expected SourceFailed, got {other:?}"),
    }
}
