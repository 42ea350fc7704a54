//! Pipeline benchmarks (ARCHITECTURE.md, "Performance budget": one stage >= 1.0x and three
//! stages >= 1.5x the `disruptor` crate with the same topology; the pipeline's cost per event
//! <= 1.2x a hand-written loop over shoal's own ring; one stage scales near-linearly with
//! workers).
//!
//! | group | what | shoal | peer |
//! | --- | --- | --- | --- |
//! | `pipeline_1_stage` | `u64`s from a source to one summing stage (two threads each side) | `Pipeline`, `BusySpin`, the source emitting one event per call (`emit`) and 256 per call (`emit_slice`) | `disruptor` single producer, one summing handler: `publish` and `batch_publish(256)` |
//! | `pipeline_3_stage` | source -> A (`v * 3`) -> B (`^ 0x55`) -> summing sink, one worker each (four threads each side) | `Pipeline` with `BusySpin` and with `SpinThenYield`, one and 256 events per call | `disruptor` single producer, three chained handlers (`and_then`) computing the same |
//! | `pipeline_over_ring` | the one-stage topology | `Pipeline`, `BusySpin`, one and 256 events per call | a hand-written two-thread loop over `shoal::ring` (`push_wait` / `push_slice_wait`, `read` + `commit` of up to 256) |
//! | `pipeline_scale` | source -> a CPU-heavy round-robin stage of 1..N workers -> sink | `Pipeline`, `N = min(8, allowed CPUs)` | the 1-worker row |
//! | `pipeline_paced_latency` | one `u64` due every 100 ns or 1 us, from a source to one stage; each event's latency from when it was due to when the stage handled it, the first quarter of each run left out as warm-up (p50/p99/p99.9 printed at the end) | `Pipeline`, `BusySpin`, one event per call, with the default slip (200 ns) and with the slip off | `disruptor` single producer, `publish` per event, one handler |
//!
//! # How the peers are set up
//! The disruptor is set up as its README recommends: the `BusySpin` wait strategy, every
//! thread pinned (`pin_at_core` for the handlers, the producer's thread pinned by hand), a ring
//! of 4096 slots and, for the batched rows, `batch_publish`. Both sides use the same CPUs, by
//! the rule shoal's `Pinning::Spread` follows on an otherwise idle process: the `k`-th thread
//! started (the first stage's worker first, the source last) gets the `k % n`-th of the `n`
//! allowed CPUs ([`cpus`]); the shoal rows check that their workers got those CPUs. Every
//! handler does the same arithmetic on both sides, the last one sums and counts what it saw,
//! and each run checks the count and the sum (so nothing can be optimised away or lost).
//! shoal's stages emit what they compute into the next stage's ring; the disruptor's handlers
//! read one shared slot per event and keep what they compute in their own state (that is how
//! each library chains stages).
//!
//! # What is timed
//! From the source's (producer's) first event to the last stage's handler having seen the
//! last one, taken on those two threads. Opening (thread starts, pinning, ring allocation) and
//! closing (thread exits and joins) are outside the timed part, for both sides. The main
//! thread sleeps in a join meanwhile, so it takes no CPU from the pinned threads.
//!
//! # On a 2-CPU machine
//! The one-stage and ring rows run two spinning threads on two CPUs, one each. Three stages
//! need four threads, which cannot each spin on a CPU of their own on two CPUs: two threads
//! share each CPU, and a spinning thread holds its CPU for its whole time slice while the
//! thread it waits for cannot run there. The disruptor has only spinning strategies (its
//! producer always spins on a full ring), so its three-stage rows there measure the
//! scheduler more than the library (well under 1 M events/s, and varying run to run); shoal's
//! `SpinThenYield` rows show what yielding buys. The figures that count for the three-stage
//! goal are from a machine with at least four free CPUs.
//!
//! # Why an earlier version of this bench disagreed with a hand-made setup
//! Its disruptor measured 58 M/s in one run and 307 M/s in another. That swing was not
//! reproduced here; three things in the old setup could each cause it, and all are gone:
//! - the disruptor's CPUs came from the *calling thread's* mask (`usable_cpus`), so a caller
//!   pinned to one CPU put every disruptor thread on that CPU, while shoal's workers were
//!   placed by other rules; both sides now take the same CPUs from the process's allowed set
//!   (`allowed_cpus`), and nothing here pins the main thread;
//! - it used `BusySpinWithSpinLoopHint`, not the `BusySpin` its README recommends, and timed
//!   the disruptor from a thread start to a spin on a shared counter while shoal was timed
//!   from a start flag to `join` (thread exits included); both are now timed the same way;
//! - these vCPUs move between "near" and "far" host cores (a hop of about 50 ns or 250 ns,
//!   DESIGN.md), a 5x swing for any two-thread hand-off; only a ratio taken within one run
//!   means anything.
//!
//! # One run
//! 2 vCPUs, a quiet machine, the bench at nice -15, medians of one run of the one-stage, ring
//! and paced groups (ratio: shoal over its peer; for the ring group, the pipeline's time per
//! event over the loop's):
//!
//! | group | row | shoal | peer | ratio |
//! | --- | --- | --- | --- | --- |
//! | `pipeline_1_stage` | one per call | 57.8 M/s | 58.3 M/s | 0.99x |
//! | `pipeline_1_stage` | 256 per call | 548 M/s | 259 M/s | 2.12x |
//! | `pipeline_over_ring` | one per call | 51.4 M/s | 27.2 M/s | cost 0.53x |
//! | `pipeline_over_ring` | 256 per call | 571 M/s | 370 M/s | cost 0.65x |
//! | `pipeline_paced_latency` | p50, one every 100 ns, default slip / slip off | 809 / 595 ns | 561 ns | 1.44x / 1.06x |
//! | `pipeline_paced_latency` | p50, one every 1 us, default slip / slip off | 425 / 417 ns | 344 ns | 1.24x / 1.21x |
//!
//! The three-stage rows need four free CPUs and the scaling group eight to mean anything
//! (see "On a 2-CPU machine"). The paced rows' p99 (0.1-13 ms, any row) is this VM's
//! scheduler, not either library; their medians are the comparison.
//!
//! Ratios come from one run: the machines are shared and noisy.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use disruptor::ProcessorSettings as _;
use disruptor::Producer as _;
use shoal::metrics::{format_ns, LatencyHistogram};
use shoal::pipeline::{Emitter, Pipeline, Routing, Source, SourceStep};
use shoal::ring::WaitStrategy;

/// Events per timed run of the one-stage and ring groups (64x fewer under
/// `cargo test --benches`, which runs each bench once as a smoke test).
const EVENTS: u64 = 1 << 20;
/// Events per timed run of the three-stage group (64x fewer under `cargo test --benches`).
const EVENTS_3: u64 = 1 << 18;
/// Events per timed run of the scaling group (64x fewer under `cargo test --benches`).
const HEAVY_EVENTS: u64 = 1 << 16;
/// Ring slots (a power of two, as the disruptor needs).
const CAPACITY: usize = 4096;
/// Events per call of the batched rows, and the most a handler gets at once.
const BATCH: usize = 256;

/// `EVENTS`-style sizes, shrunk when criterion runs in test mode (no `--bench` argument).
fn sized(events: u64) -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        events
    } else {
        events / 64
    }
}

/// The CPU of the `k`-th thread started: the `k % n`-th of the process's `n` allowed CPUs.
fn cpus() -> Vec<usize> {
    shoal::affinity::allowed_cpus()
}

fn cpu_of(cpus: &[usize], k: usize) -> usize {
    cpus[k % cpus.len()]
}

/// When a run's first event left and its last one was handled.
#[derive(Default)]
struct Clock {
    start: OnceLock<Instant>,
    end: OnceLock<Instant>,
}

impl Clock {
    fn took(&self) -> Duration {
        match (self.start.get(), self.end.get()) {
            (Some(s), Some(e)) => e.saturating_duration_since(*s),
            _ => panic!("the run did not deliver every event"),
        }
    }
}

/// What the last stage saw: events and their sum, checked after the run.
#[derive(Default)]
struct Seen {
    count: AtomicU64,
    sum: AtomicU64,
}

/// The sum the last stage must see for `0..total` through `stages` stages (one: the values;
/// three: `(v * 3) ^ 0x55`).
fn expected_sum(total: u64, stages: usize) -> u64 {
    (0..total).fold(0u64, |acc, v| acc.wrapping_add(if stages == 1 { v } else { v.wrapping_mul(3) ^ 0x55 }))
}

/// How the source hands its events over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Calls {
    /// One event per call (`emit`, `publish`, `push_wait`).
    One,
    /// [`BATCH`] events per call (`emit_slice`, `batch_publish`, `push_slice_wait`).
    Batch,
}

/// Fails the run when a worker does not run on the CPU that [`cpus`] gave it.
fn check_cpu(expected: usize, who: &str) {
    let on = shoal::affinity::thread_cpus(0).unwrap_or_default();
    assert_eq!(on, vec![expected], "{who}: shoal pinned it elsewhere than the disruptor's thread");
}

/// `total` u64s through source -> (A -> B, when `stages == 3`) -> summing sink.
fn shoal_run(total: u64, stages: usize, wait: WaitStrategy, calls: Calls) -> Duration {
    let cpus = cpus();
    let clock = Arc::new(Clock::default());
    let seen = Arc::new(Seen::default());
    let mut next = 0u64;
    let mut buf = [0u64; BATCH];
    let source_clock = clock.clone();
    let builder = Pipeline::<u64>::builder().wait(wait).ring_capacity(CAPACITY).batch_max(BATCH).pin(true).source(
        "src",
        Source::closure(move |out: &mut Emitter<u64>| {
            if next == 0 {
                let _ = source_clock.start.set(Instant::now());
            }
            match calls {
                Calls::One => {
                    out.emit(next);
                    next += 1;
                }
                Calls::Batch => {
                    let n = (BATCH as u64).min(total - next) as usize;
                    for (slot, v) in buf[..n].iter_mut().zip(next..) {
                        *slot = v;
                    }
                    out.emit_slice(&buf[..n]);
                    next += n as u64;
                }
            }
            if next == total {
                SourceStep::Done
            } else {
                SourceStep::Continue
            }
        }),
    );
    let builder = if stages == 3 {
        let (a, b) = (cpu_of(&cpus, 0), cpu_of(&cpus, 1));
        builder
            .stage("a", 1, Routing::RoundRobin, move |_| {
                check_cpu(a, "stage a");
                |batch: &[u64], out: &mut Emitter<u64>| {
                    for v in batch {
                        out.emit(v.wrapping_mul(3));
                    }
                }
            })
            .stage("b", 1, Routing::RoundRobin, move |_| {
                check_cpu(b, "stage b");
                |batch: &[u64], out: &mut Emitter<u64>| {
                    for v in batch {
                        out.emit(v ^ 0x55);
                    }
                }
            })
    } else {
        builder
    };
    let sink_cpu = cpu_of(&cpus, stages - 1);
    let (sink_clock, sink_seen) = (clock.clone(), seen.clone());
    let pipeline = builder
        .stage("sink", 1, Routing::RoundRobin, move |_| {
            check_cpu(sink_cpu, "the sink");
            let (clock, seen) = (sink_clock.clone(), sink_seen.clone());
            let (mut count, mut sum) = (0u64, 0u64);
            move |batch: &[u64], _: &mut Emitter<u64>| {
                for v in batch {
                    sum = sum.wrapping_add(*v);
                }
                count += batch.len() as u64;
                if count == total {
                    let _ = clock.end.set(Instant::now());
                    seen.count.store(count, Ordering::Relaxed);
                    seen.sum.store(sum, Ordering::Relaxed);
                }
            }
        })
        .build()
        .expect("build the pipeline");
    pipeline.join().expect("pipeline run");
    check_seen(&seen, total, stages);
    clock.took()
}

fn check_seen(seen: &Seen, total: u64, stages: usize) {
    assert_eq!(seen.count.load(Ordering::Relaxed), total, "events seen by the last stage");
    assert_eq!(seen.sum.load(Ordering::Relaxed), expected_sum(total, stages), "their sum");
}

/// The same topology on the disruptor: one producer, then one handler (`stages == 1`) or
/// three chained handlers, each seeing every event after the previous one did.
fn disruptor_run(total: u64, stages: usize, calls: Calls) -> Duration {
    let cpus = cpus();
    let clock = Arc::new(Clock::default());
    let seen = Arc::new(Seen::default());
    let (sink_clock, sink_seen) = (clock.clone(), seen.clone());
    let (mut count, mut sum) = (0u64, 0u64);
    let sink = move |v: &u64, _: disruptor::Sequence, _: bool| {
        sum = sum.wrapping_add(if stages == 1 { *v } else { v.wrapping_mul(3) ^ 0x55 });
        count += 1;
        if count == total {
            let _ = sink_clock.end.set(Instant::now());
            sink_seen.count.store(count, Ordering::Relaxed);
            sink_seen.sum.store(sum, Ordering::Relaxed);
        }
    };
    let builder = disruptor::build_single_producer(CAPACITY, || 0u64, disruptor::BusySpin);
    // The two topologies build producers of different types: each drives its own.
    let producer_cpu = cpu_of(&cpus, stages);
    if stages == 1 {
        let producer = builder.pin_at_core(cpu_of(&cpus, 0)).handle_events_with(sink).build();
        drive_disruptor(producer, producer_cpu, total, calls, &clock);
    } else {
        let (mut a_acc, mut b_acc) = (0u64, 0u64);
        let producer = builder
            .pin_at_core(cpu_of(&cpus, 0))
            .handle_events_with(move |v: &u64, _, end_of_batch| {
                a_acc = a_acc.wrapping_add(v.wrapping_mul(3));
                if end_of_batch {
                    black_box(a_acc);
                }
            })
            .and_then()
            .pin_at_core(cpu_of(&cpus, 1))
            .handle_events_with(move |v: &u64, _, end_of_batch| {
                b_acc = b_acc.wrapping_add(v.wrapping_mul(3) ^ 0x55);
                if end_of_batch {
                    black_box(b_acc);
                }
            })
            .and_then()
            .pin_at_core(cpu_of(&cpus, 2))
            .handle_events_with(sink)
            .build();
        drive_disruptor(producer, producer_cpu, total, calls, &clock);
    }
    check_seen(&seen, total, stages);
    clock.took()
}

/// Publishes `0..total` from a thread pinned to `cpu`, then drops the producer there (which
/// waits for the handlers to finish and joins them), and returns once it has.
fn drive_disruptor(
    mut producer: impl disruptor::Producer<u64> + Send,
    cpu: usize,
    total: u64,
    calls: Calls,
    clock: &Clock,
) {
    std::thread::scope(|s| {
        s.spawn(move || {
            shoal::affinity::pin_current(cpu).expect("pin the disruptor's producer");
            let _ = clock.start.set(Instant::now());
            let mut next = 0u64;
            match calls {
                Calls::One => {
                    while next < total {
                        producer.publish(|e| *e = next);
                        next += 1;
                    }
                }
                Calls::Batch => {
                    while next < total {
                        let n = (BATCH as u64).min(total - next) as usize;
                        producer.batch_publish(n, |iter| {
                            for e in iter {
                                *e = next;
                                next += 1;
                            }
                        });
                    }
                }
            }
            drop(producer);
        })
        .join()
        .expect("disruptor producer thread");
    });
}

/// The one-stage topology by hand over `shoal::ring`: a producer thread pushes `0..total`, a
/// consumer thread reads batches of up to [`BATCH`] in place and sums them, each pinned to
/// the CPU the pipeline gives its source and its worker.
fn ring_run(total: u64, calls: Calls) -> Duration {
    let cpus = cpus();
    let clock = Clock::default();
    let seen = Seen::default();
    let (tx, mut rx) = shoal::ring::channel::<u64>(CAPACITY, WaitStrategy::BusySpin);
    std::thread::scope(|s| {
        s.spawn(|| {
            shoal::affinity::pin_current(cpu_of(&cpus, 0)).expect("pin the consumer");
            let (mut count, mut sum) = (0u64, 0u64);
            loop {
                let batch = rx.read(BATCH);
                if batch.is_empty() {
                    drop(batch);
                    if rx.wait_readable(|| false).is_err() {
                        break;
                    }
                    continue;
                }
                let (a, b) = batch.as_slices();
                for v in a.iter().chain(b) {
                    sum = sum.wrapping_add(*v);
                }
                count += batch.len() as u64;
                batch.commit();
                if count == total {
                    let _ = clock.end.set(Instant::now());
                }
            }
            seen.count.store(count, Ordering::Relaxed);
            seen.sum.store(sum, Ordering::Relaxed);
        });
        s.spawn(|| {
            shoal::affinity::pin_current(cpu_of(&cpus, 1)).expect("pin the producer");
            let _ = clock.start.set(Instant::now());
            let mut tx = tx;
            match calls {
                Calls::One => {
                    for v in 0..total {
                        tx.push_wait(v).expect("the consumer reads to the end");
                    }
                }
                Calls::Batch => {
                    let mut buf = [0u64; BATCH];
                    let mut next = 0u64;
                    while next < total {
                        let n = (BATCH as u64).min(total - next) as usize;
                        for (slot, v) in buf[..n].iter_mut().zip(next..) {
                            *slot = v;
                        }
                        tx.push_slice_wait(&buf[..n], || false).expect("the consumer reads to the end");
                        next += n as u64;
                    }
                }
            }
        });
    });
    check_seen(&seen, total, 1);
    clock.took()
}

/// About 300 ns of arithmetic per event.
#[inline(never)]
fn heavy(mut x: u64) -> u64 {
    for _ in 0..256 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// source -> a round-robin stage of `workers` running [`heavy`] -> summing sink; timed from
/// the first event to the sink having the last.
fn shoal_scaled(total: u64, workers: usize) -> Duration {
    let clock = Arc::new(Clock::default());
    let seen = Arc::new(AtomicU64::new(0));
    let mut next = 0u64;
    let source_clock = clock.clone();
    let pipeline = Pipeline::<u64>::builder()
        .wait(WaitStrategy::SpinThenYield)
        .ring_capacity(1024)
        .batch_max(64)
        .pin(true)
        .source(
            "src",
            Source::closure(move |out: &mut Emitter<u64>| {
                if next == 0 {
                    let _ = source_clock.start.set(Instant::now());
                }
                let end = (next + 64).min(total);
                for v in next..end {
                    out.emit(v + 1);
                }
                next = end;
                if next == total {
                    SourceStep::Done
                } else {
                    SourceStep::Continue
                }
            }),
        )
        .stage("work", workers, Routing::RoundRobin, |_| {
            |batch: &[u64], out: &mut Emitter<u64>| {
                for v in batch {
                    out.emit(heavy(*v));
                }
            }
        })
        .stage("sink", 1, Routing::RoundRobin, {
            let (clock, seen) = (clock.clone(), seen.clone());
            move |_| {
                let (clock, seen) = (clock.clone(), seen.clone());
                let (mut count, mut sum) = (0u64, 0u64);
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    sum = batch.iter().fold(sum, |a, v| a.wrapping_add(*v));
                    count += batch.len() as u64;
                    if count == total {
                        let _ = clock.end.set(Instant::now());
                        seen.store(count, Ordering::Relaxed);
                        black_box(sum);
                    }
                }
            }
        })
        .build()
        .expect("build the pipeline");
    pipeline.join().expect("pipeline run");
    assert_eq!(seen.load(Ordering::Relaxed), total, "events seen by the sink");
    clock.took()
}

/// Events per paced run of the latency group (64x fewer under `cargo test --benches`).
const PACED_EVENTS: u64 = 1 << 15;

/// When each paced event is due: `i * gap` after the source's first call (so that opening
/// the pipeline or the disruptor makes no event late).
struct Pace {
    base: OnceLock<Instant>,
    gap_ns: u64,
}

impl Pace {
    fn new(gap_ns: u64) -> Pace {
        Pace { base: OnceLock::new(), gap_ns }
    }

    /// Nanoseconds since the source's first call (which every event follows).
    fn now_ns(&self) -> u64 {
        self.base.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    /// Spins until event `i` is due and returns when it was due: the latency of an event is
    /// taken from then, so a late source (or a full ring) counts against the run, not only
    /// the hand-off (no coordinated omission).
    fn due(&self, i: u64) -> u64 {
        let due = i * self.gap_ns;
        while self.now_ns() < due {
            std::hint::spin_loop();
        }
        due
    }
}

/// How the paced rows hand events over.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Paced {
    /// A pipeline with its default slip (200 ns).
    ShoalSlipDefault,
    /// A pipeline with `slip(Duration::ZERO)`.
    ShoalSlipOff,
    /// The disruptor, busy spin, `publish` per event.
    Disruptor,
}

impl Paced {
    fn name(self) -> &'static str {
        match self {
            Paced::ShoalSlipDefault => "shoal_slip_200ns",
            Paced::ShoalSlipOff => "shoal_slip_off",
            Paced::Disruptor => "disruptor",
        }
    }
}

/// `total` events, one due every `gap_ns`, each carrying when it was due, from a source to
/// one stage that records each event's latency (due -> handled) in `hist`, but for the first
/// quarter of the run (its warm-up).
fn paced_run(total: u64, gap_ns: u64, how: Paced, hist: &Arc<Mutex<LatencyHistogram>>) -> Duration {
    let cpus = cpus();
    let pace = Arc::new(Pace::new(gap_ns));
    let clock = Arc::new(Clock::default());
    let record = {
        let (pace, clock, hist) = (pace.clone(), clock.clone(), hist.clone());
        let mut local = LatencyHistogram::new();
        let mut count = 0u64;
        // The first quarter of a run is its warm-up, left out on both sides: how soon a
        // freshly started handler thread spins is the scheduler's, not the hand-off's.
        let warm_up_ns = total / 4 * gap_ns;
        move |due: u64| {
            let now = pace.now_ns();
            if due >= warm_up_ns {
                local.record(now.saturating_sub(due));
            }
            count += 1;
            if count == total {
                let _ = clock.end.set(Instant::now());
                hist.lock().expect("histogram").merge(&local);
            }
        }
    };
    match how {
        Paced::ShoalSlipDefault | Paced::ShoalSlipOff => {
            let source_pace = pace.clone();
            let source_clock = clock.clone();
            let mut next = 0u64;
            let builder = Pipeline::<u64>::builder().wait(WaitStrategy::BusySpin).ring_capacity(CAPACITY).pin(true);
            let builder = if how == Paced::ShoalSlipOff { builder.slip(Duration::ZERO) } else { builder };
            let sink_cpu = cpu_of(&cpus, 0);
            let record = Mutex::new(Some(record));
            let pipeline = builder
                .source(
                    "src",
                    Source::closure(move |out: &mut Emitter<u64>| {
                        if next == 0 {
                            let _ = source_clock.start.set(Instant::now());
                        }
                        out.emit(source_pace.due(next));
                        next += 1;
                        if next == total {
                            SourceStep::Done
                        } else {
                            SourceStep::Continue
                        }
                    }),
                )
                .stage("sink", 1, Routing::RoundRobin, move |_| {
                    check_cpu(sink_cpu, "the sink");
                    let mut record = record.lock().expect("record").take().expect("one sink worker");
                    move |batch: &[u64], _: &mut Emitter<u64>| {
                        for due in batch {
                            record(*due);
                        }
                    }
                })
                .build()
                .expect("build the pipeline");
            pipeline.join().expect("pipeline run");
        }
        Paced::Disruptor => {
            let mut record = record;
            let producer = disruptor::build_single_producer(CAPACITY, || 0u64, disruptor::BusySpin)
                .pin_at_core(cpu_of(&cpus, 0))
                .handle_events_with(move |due: &u64, _, _| record(*due))
                .build();
            let producer_cpu = cpu_of(&cpus, 1);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut producer = producer;
                    shoal::affinity::pin_current(producer_cpu).expect("pin the disruptor's producer");
                    let _ = clock.start.set(Instant::now());
                    for i in 0..total {
                        let due = pace.due(i);
                        producer.publish(|e| *e = due);
                    }
                    drop(producer);
                })
                .join()
                .expect("disruptor producer thread");
            });
        }
    }
    clock.took()
}

/// Runs `run(events)` for `iters` rounds of `per_iter` events each, one run per round, and
/// sums the times.
fn rounds(iters: u64, per_iter: u64, run: impl Fn(u64) -> Duration) -> Duration {
    (0..iters).map(|_| run(per_iter)).sum()
}

fn one_stage(c: &mut Criterion) {
    let events = sized(EVENTS);
    let mut g = c.benchmark_group("pipeline_1_stage");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (calls, name) in [(Calls::One, "one"), (Calls::Batch, "batch_256")] {
        g.bench_function(format!("shoal_{name}"), |b| {
            b.iter_custom(|iters| rounds(iters, events, |n| shoal_run(n, 1, WaitStrategy::BusySpin, calls)))
        });
        g.bench_function(format!("disruptor_{name}"), |b| {
            b.iter_custom(|iters| rounds(iters, events, |n| disruptor_run(n, 1, calls)))
        });
    }
    g.finish();
}

fn three_stage(c: &mut Criterion) {
    let events = sized(EVENTS_3);
    let mut g = c.benchmark_group("pipeline_3_stage");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (calls, name) in [(Calls::One, "one"), (Calls::Batch, "batch_256")] {
        g.bench_function(format!("shoal_busy_spin_{name}"), |b| {
            b.iter_custom(|iters| rounds(iters, events, |n| shoal_run(n, 3, WaitStrategy::BusySpin, calls)))
        });
        g.bench_function(format!("shoal_spin_then_yield_{name}"), |b| {
            b.iter_custom(|iters| rounds(iters, events, |n| shoal_run(n, 3, WaitStrategy::SpinThenYield, calls)))
        });
        g.bench_function(format!("disruptor_{name}"), |b| {
            b.iter_custom(|iters| rounds(iters, events, |n| disruptor_run(n, 3, calls)))
        });
    }
    g.finish();
}

fn over_ring(c: &mut Criterion) {
    let events = sized(EVENTS);
    let mut g = c.benchmark_group("pipeline_over_ring");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (calls, name) in [(Calls::One, "one"), (Calls::Batch, "batch_256")] {
        g.bench_function(format!("pipeline_{name}"), |b| {
            b.iter_custom(|iters| rounds(iters, events, |n| shoal_run(n, 1, WaitStrategy::BusySpin, calls)))
        });
        g.bench_function(format!("ring_{name}"), |b| {
            b.iter_custom(|iters| rounds(iters, events, |n| ring_run(n, calls)))
        });
    }
    g.finish();
}

fn scaling(c: &mut Criterion) {
    let max = cpus().len().clamp(1, 8);
    let events = sized(HEAVY_EVENTS);
    let mut g = c.benchmark_group("pipeline_scale");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let mut workers = 1;
    loop {
        g.bench_with_input(BenchmarkId::new("cpu_heavy_stage", workers), &workers, |b, &w| {
            b.iter_custom(|iters| rounds(iters, events, |n| shoal_scaled(n, w)))
        });
        if workers == max {
            break;
        }
        workers = (workers * 2).min(max);
    }
    g.finish();
}

/// The slip's cost in latency: events paced at a fixed gap through one stage, each event's
/// latency taken from when it was due to when the stage handled it. A gap of 100 ns is the
/// worst case for the slip (events land during every slip); at 1 us a worker has read each
/// event long before the next is due.
fn paced_latency(c: &mut Criterion) {
    let events = sized(PACED_EVENTS);
    let hists: Mutex<BTreeMap<(u64, Paced), LatencyHistogram>> = Mutex::default();
    let mut g = c.benchmark_group("pipeline_paced_latency");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(2));
    for gap_ns in [100u64, 1_000] {
        for how in [Paced::ShoalSlipDefault, Paced::ShoalSlipOff, Paced::Disruptor] {
            let hist = Arc::new(Mutex::new(LatencyHistogram::new()));
            g.bench_with_input(BenchmarkId::new(how.name(), format!("gap_{gap_ns}ns")), &gap_ns, |b, &gap| {
                b.iter_custom(|iters| rounds(iters, events, |n| paced_run(n, gap, how, &hist)))
            });
            let hist = std::mem::take(&mut *hist.lock().expect("histogram"));
            hists.lock().expect("histograms").insert((gap_ns, how), hist);
        }
    }
    g.finish();
    let hists = hists.into_inner().expect("histograms");
    println!("pipeline_paced_latency: due -> handled, every event after each run's warm-up");
    for ((gap_ns, how), h) in &hists {
        let peer = hists.get(&(*gap_ns, Paced::Disruptor)).map(|p| p.quantile_ns(0.5).max(1));
        let ratio =
            peer.map_or(String::new(), |p| format!("   p50 x disruptor {:.2}", h.quantile_ns(0.5) as f64 / p as f64));
        println!(
            "  gap {:>6} {:<18} p50 {:>8}  p99 {:>8}  p99.9 {:>8}  events {}{ratio}",
            format_ns(*gap_ns),
            how.name(),
            format_ns(h.quantile_ns(0.5)),
            format_ns(h.quantile_ns(0.99)),
            format_ns(h.quantile_ns(0.999)),
            h.count(),
        );
    }
}

criterion_group!(benches, one_stage, over_ring, three_stage, scaling, paced_latency);
criterion_main!(benches);
