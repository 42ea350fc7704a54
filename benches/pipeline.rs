//! Pipeline benchmarks (ARCHITECTURE.md, "Performance budget": a 3-stage pipeline >= 1.5x the
//! `disruptor` crate with the same topology; one stage scales near-linearly with workers).
//!
//! | group | what | shoal | peer |
//! | --- | --- | --- | --- |
//! | `pipeline_1_stage` | `u64` events: source -> sink (two threads each side) | `Pipeline` with `SpinThenYield` and `Park` | `disruptor` single producer, one handler |
//! | `pipeline_3_stage` | `u64` events: source -> A -> B -> sink, one worker each | `Pipeline` with `SpinThenYield`, with `Park`, and with `Park` plus latency metrics | `disruptor` single producer, three chained handlers, `BusySpinWithSpinLoopHint` |
//! | `pipeline_scale` | source -> a CPU-heavy round-robin stage of 1..N workers -> sink | `Pipeline`, `N = min(8, usable CPUs)` | the 1-worker row |
//!
//! Every run builds its pipeline (threads start), then times from the first event to the
//! last one handled. Ratios come from one run: the machines are shared and noisy.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use disruptor::ProcessorSettings as _;
use shoal::pipeline::{Emitter, Pipeline, Routing, Source, SourceStep};
use shoal::ring::WaitStrategy;

/// Events per timed run of the 3-stage group (under `cargo test --benches`, which runs each
/// bench once as a smoke test, 64x fewer).
const EVENTS: u64 = 1 << 20;
/// Events per timed run of the scaling group (64x fewer under `cargo test --benches`).
const HEAVY_EVENTS: u64 = 1 << 16;

/// `EVENTS`-style sizes, shrunk when criterion runs in test mode (no `--bench` argument).
fn sized(events: u64) -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        events
    } else {
        events / 64
    }
}
/// Ring slots (a power of two, as the disruptor needs).
const CAPACITY: usize = 4096;
const BATCH_MAX: usize = 256;

/// Runs `total` u64s through source -> A -> B -> sink; returns the time from the first
/// event to the sink having seen the last.
fn shoal_3_stage(total: u64, wait: WaitStrategy, latency: bool) -> Duration {
    shoal_chain(total, wait, latency, true)
}

/// source -> (A -> B, when `middle`) -> sink.
fn shoal_chain(total: u64, wait: WaitStrategy, latency: bool, middle: bool) -> Duration {
    let go = Arc::new(AtomicBool::new(false));
    let sum = Arc::new(AtomicU64::new(0));
    let mut next = 0u64;
    let builder = Pipeline::<u64>::builder()
        .wait(wait)
        .ring_capacity(CAPACITY)
        .batch_max(BATCH_MAX)
        .pin(true)
        .latency_metrics(latency)
        .source("src", {
            let go = go.clone();
            Source::closure(move |out: &mut Emitter<u64>| {
                while !go.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                let end = (next + BATCH_MAX as u64).min(total);
                for v in next..end {
                    out.emit(v);
                }
                next = end;
                if next == total {
                    SourceStep::Done
                } else {
                    SourceStep::Continue
                }
            })
        });
    let builder = if middle {
        builder
            .stage("a", 1, Routing::RoundRobin, |_| {
                |batch: &[u64], out: &mut Emitter<u64>| {
                    for v in batch {
                        out.emit(v.wrapping_mul(3));
                    }
                }
            })
            .stage("b", 1, Routing::RoundRobin, |_| {
                |batch: &[u64], out: &mut Emitter<u64>| {
                    for v in batch {
                        out.emit(v ^ 0x55);
                    }
                }
            })
    } else {
        builder
    };
    let pipeline = builder
        .stage("sink", 1, Routing::RoundRobin, {
            let sum = sum.clone();
            move |_| {
                let sum = sum.clone();
                let mut acc = 0u64;
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    for v in batch {
                        acc = acc.wrapping_add(*v);
                    }
                    sum.store(acc, Ordering::Relaxed);
                }
            }
        })
        .build()
        .expect("build the pipeline");
    let start = Instant::now();
    go.store(true, Ordering::Release);
    pipeline.join().expect("pipeline run");
    let took = start.elapsed();
    black_box(sum.load(Ordering::Relaxed));
    took
}

/// The same topology on the disruptor: one producer, handlers A, B and a sink chained
/// (each sees every event after the previous one did).
fn disruptor_3_stage(total: u64) -> Duration {
    let cpus = shoal::affinity::usable_cpus().unwrap_or_default();
    let cpu = |i: usize| if cpus.is_empty() { None } else { Some(cpus[i % cpus.len()]) };
    let seen = Arc::new(AtomicU64::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let mut builder = disruptor::build_single_producer(CAPACITY, || 0u64, disruptor::BusySpinWithSpinLoopHint);
    if let Some(c) = cpu(1) {
        builder = builder.pin_at_core(c);
    }
    let mut a_acc = 0u64;
    let builder = builder.handle_events_with(move |v: &u64, _, _| {
        a_acc = a_acc.wrapping_add(v.wrapping_mul(3));
        black_box(a_acc);
    });
    let mut builder = builder.and_then();
    if let Some(c) = cpu(2) {
        builder = builder.pin_at_core(c);
    }
    let mut b_acc = 0u64;
    let builder = builder.handle_events_with(move |v: &u64, _, _| {
        b_acc ^= v ^ 0x55;
        black_box(b_acc);
    });
    let mut builder = builder.and_then();
    if let Some(c) = cpu(3) {
        builder = builder.pin_at_core(c);
    }
    let (seen_in, sum_in) = (seen.clone(), sum.clone());
    let mut acc = 0u64;
    let builder = builder.handle_events_with(move |v: &u64, seq: disruptor::Sequence, end_of_batch: bool| {
        acc = acc.wrapping_add((v.wrapping_mul(3)) ^ 0x55);
        if end_of_batch {
            sum_in.store(acc, Ordering::Relaxed);
            // pairs with the Acquire load below
            seen_in.store(seq as u64 + 1, Ordering::Release);
        }
    });
    let mut producer = builder.build();
    // The producer runs on a pinned thread of its own (pinning this one would shrink the
    // usable set that later benches read).
    let producer_cpu = cpu(0);
    let took = drive_disruptor(&mut producer, producer_cpu, total, &seen);
    drop(producer); // joins the handler threads
    black_box(sum.load(Ordering::Relaxed));
    took
}

/// Publishes `total` values in batches from a thread pinned to `cpu` and waits until the
/// last handler has seen them all (it stores the count in `seen`); returns the time taken.
fn drive_disruptor(
    producer: &mut (impl disruptor::Producer<u64> + Send),
    cpu: Option<usize>,
    total: u64,
    seen: &AtomicU64,
) -> Duration {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(c) = cpu {
                let _ = shoal::affinity::pin_current(c);
            }
            let start = Instant::now();
            let mut next = 0u64;
            while next < total {
                let n = (BATCH_MAX as u64).min(total - next);
                producer.batch_publish(n as usize, |iter| {
                    for e in iter {
                        *e = next;
                        next += 1;
                    }
                });
            }
            // pairs with the Release store in the last handler
            while seen.load(Ordering::Acquire) < total {
                std::hint::spin_loop();
            }
            start.elapsed()
        })
        .join()
        .expect("disruptor producer thread")
    })
}

/// One producer and one handler on the disruptor: two threads, like shoal's source -> sink,
/// so that on a 2-core machine neither side is starved by spinning threads.
fn disruptor_1_stage(total: u64) -> Duration {
    let cpus = shoal::affinity::usable_cpus().unwrap_or_default();
    let cpu = |i: usize| if cpus.is_empty() { None } else { Some(cpus[i % cpus.len()]) };
    let seen = Arc::new(AtomicU64::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let mut builder = disruptor::build_single_producer(CAPACITY, || 0u64, disruptor::BusySpinWithSpinLoopHint);
    if let Some(c) = cpu(1) {
        builder = builder.pin_at_core(c);
    }
    let (seen_in, sum_in) = (seen.clone(), sum.clone());
    let mut acc = 0u64;
    let builder = builder.handle_events_with(move |v: &u64, seq: disruptor::Sequence, end_of_batch: bool| {
        acc = acc.wrapping_add(*v);
        if end_of_batch {
            sum_in.store(acc, Ordering::Relaxed);
            // pairs with the Acquire load below
            seen_in.store(seq as u64 + 1, Ordering::Release);
        }
    });
    let mut producer = builder.build();
    let producer_cpu = cpu(0);
    let took = drive_disruptor(&mut producer, producer_cpu, total, &seen);
    drop(producer);
    black_box(sum.load(Ordering::Relaxed));
    took
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

fn shoal_scaled(total: u64, workers: usize) -> Duration {
    let go = Arc::new(AtomicBool::new(false));
    let sum = Arc::new(AtomicU64::new(0));
    let mut next = 0u64;
    let pipeline = Pipeline::<u64>::builder()
        .wait(WaitStrategy::SpinThenYield)
        .ring_capacity(1024)
        .batch_max(64)
        .pin(true)
        .source("src", {
            let go = go.clone();
            Source::closure(move |out: &mut Emitter<u64>| {
                while !go.load(Ordering::Acquire) {
                    std::thread::yield_now();
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
            })
        })
        .stage("work", workers, Routing::RoundRobin, |_| {
            |batch: &[u64], out: &mut Emitter<u64>| {
                for v in batch {
                    out.emit(heavy(*v));
                }
            }
        })
        .stage("sink", 1, Routing::RoundRobin, {
            let sum = sum.clone();
            move |_| {
                let sum = sum.clone();
                move |batch: &[u64], _: &mut Emitter<u64>| {
                    sum.fetch_add(batch.iter().fold(0u64, |a, v| a.wrapping_add(*v)), Ordering::Relaxed);
                }
            }
        })
        .build()
        .expect("build the pipeline");
    let start = Instant::now();
    go.store(true, Ordering::Release);
    pipeline.join().expect("pipeline run");
    let took = start.elapsed();
    black_box(sum.load(Ordering::Relaxed));
    took
}

/// Runs `run(events)` for `iters` rounds of `per_iter` events each, in one pipeline run
/// per round, and sums the times.
fn rounds(iters: u64, per_iter: u64, run: impl Fn(u64) -> Duration) -> Duration {
    (0..iters).map(|_| run(per_iter)).sum()
}

fn three_stage(c: &mut Criterion) {
    let events = sized(EVENTS);
    let mut g = c.benchmark_group("pipeline_3_stage");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    g.bench_function("shoal_spin_then_yield", |b| {
        b.iter_custom(|iters| rounds(iters, events, |n| shoal_3_stage(n, WaitStrategy::SpinThenYield, false)))
    });
    g.bench_function("shoal_park", |b| {
        b.iter_custom(|iters| rounds(iters, events, |n| shoal_3_stage(n, WaitStrategy::Park, false)))
    });
    // The cost of sampled hop-latency histograms.
    g.bench_function("shoal_park_latency_metrics", |b| {
        b.iter_custom(|iters| rounds(iters, events, |n| shoal_3_stage(n, WaitStrategy::Park, true)))
    });
    g.bench_function("disruptor", |b| b.iter_custom(|iters| rounds(iters, events, disruptor_3_stage)));
    g.finish();
}

/// Two threads on each side (a producer and one handler): the comparison that a 2-core
/// machine can make fairly; the 3-stage group needs at least 4 free cores for the
/// disruptor's spinning threads.
fn one_stage(c: &mut Criterion) {
    let events = sized(EVENTS);
    let mut g = c.benchmark_group("pipeline_1_stage");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    g.bench_function("shoal_spin_then_yield", |b| {
        b.iter_custom(|iters| rounds(iters, events, |n| shoal_chain(n, WaitStrategy::SpinThenYield, false, false)))
    });
    g.bench_function("shoal_park", |b| {
        b.iter_custom(|iters| rounds(iters, events, |n| shoal_chain(n, WaitStrategy::Park, false, false)))
    });
    g.bench_function("disruptor", |b| b.iter_custom(|iters| rounds(iters, events, disruptor_1_stage)));
    g.finish();
}

fn scaling(c: &mut Criterion) {
    let cpus = shoal::affinity::usable_cpus().map(|c| c.len()).unwrap_or(1).max(1);
    let max = cpus.min(8);
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

criterion_group!(benches, one_stage, three_stage, scaling);
criterion_main!(benches);
