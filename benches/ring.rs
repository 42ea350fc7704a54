//! Benchmarks of the ring hop against the peers named by the performance budget (ARCHITECTURE.md,
//! "Performance budget": within 10% of raw rtrb, ahead of the `disruptor` crate and of
//! crossbeam/std channels; one-hop latency within 1.3x of a bare atomic ping-pong).
//!
//! Each group puts shoal and its peers side by side, so ratios come from one run on one
//! (shared, noisy) machine:
//!
//! | group | what moves | shoal | peers |
//! | --- | --- | --- | --- |
//! | `hop_one_at_a_time` | `u64`s from a producer thread to a consumer thread, one push/pop at a time | `push_wait`/`pop_wait`, `BusySpin` | raw rtrb, `disruptor` (single producer, busy spin, a handler summing values), crossbeam `ArrayQueue`, crossbeam bounded channel, std `sync_channel` |
//! | `hop_batched` | the same in batches of up to 256 | `reserve`/`commit`, `read`/`commit` | rtrb `write_chunk_uninit`/`read_chunk`, disruptor `batch_publish` |
//! | `hop_latency` | one value there and back between two threads | a ring pair | an rtrb pair, a bare atomic ping-pong (one `AtomicU64` each way: the floor) |
//!
//! The shoal and rtrb hops are the kernels in `kernels/ring.rs`, the same code that
//! `shoal bench` runs; the peers that are dev-dependencies only (the disruptor, crossbeam's
//! queue and channel) and the latency ping-pong are here. Every queue holds 4096 values.
//! The two threads are pinned to two different usable CPUs (`shoal::affinity`) when there
//! are two; which CPUs is printed at start. The benches use
//! `iter_custom` and time from the moment both threads are running (thread start and
//! pinning are outside the measured time) until the consumer has the last value.
//! At the end of each group a table gives every bench's throughput (or latency) and its
//! ratio to shoal; `hop_latency` also prints p50/p99 of the one-way hop (round trip / 2)
//! from a histogram of every round trip, and the ratio to the floor.
//!
//! Under `cargo test --benches` (no `--bench` flag) criterion runs each bench once and the
//! sizes here shrink, so that mode stays quick.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{black_box, BenchmarkGroup, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use disruptor::{ProcessorSettings as _, Producer as _};
use shoal::metrics::{format_ns, LatencyHistogram};
use shoal::ring::{self, WaitStrategy};

#[path = "kernels/mod.rs"]
#[allow(dead_code)] // the log and file kernels are for benches/log.rs and `shoal bench`
mod kernels;

// Slots in every queue under test (a power of two, as the disruptor needs), and the largest
// batch in `hop_batched`.
use kernels::ring::{cpu_pair, pin, RING_BATCH_MAX as BATCH_MAX, RING_CAPACITY as CAPACITY};

/// One bench: moves that many values, returns the time it took.
type Run = fn(u64) -> Duration;

/// Sizes for one run: full under `cargo bench`, small under `cargo test --benches`.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// Values moved by one iteration of the throughput benches.
    values_per_iter: u64,
    sample_size: usize,
    warm_up: Duration,
    measurement: Duration,
}

impl Scale {
    fn from_args() -> Scale {
        if std::env::args().any(|a| a == "--bench") {
            Scale {
                values_per_iter: 1 << 16,
                sample_size: 10,
                warm_up: Duration::from_millis(1500),
                measurement: Duration::from_secs(4),
            }
        } else {
            Scale {
                values_per_iter: 1 << 10,
                sample_size: 10,
                warm_up: Duration::from_millis(1),
                measurement: Duration::from_millis(1),
            }
        }
    }
}

/// Runs `producer` and `consumer` on two threads pinned to [`cpu_pair`] and started together
/// (the shared kernel); returns the time from when both run until the consumer returns.
fn timed_pair(producer: impl FnOnce() + Send, consumer: impl FnOnce() + Send) -> Duration {
    kernels::ring::timed_pair(cpu_pair(), producer, consumer).expect("a bench thread panicked")
}

fn shoal_one(total: u64) -> Duration {
    kernels::ring::hop_one_shoal(total, cpu_pair()).expect("ring hop")
}

fn rtrb_one(total: u64) -> Duration {
    kernels::ring::hop_one_rtrb(total, cpu_pair()).expect("ring hop")
}

fn shoal_batched(total: u64) -> Duration {
    kernels::ring::hop_batched_shoal(total, cpu_pair()).expect("ring hop")
}

fn rtrb_batched(total: u64) -> Duration {
    kernels::ring::hop_batched_rtrb(total, cpu_pair()).expect("ring hop")
}

/// Time and values moved per bench, summed over every call (warm-up included), for the
/// ratio table at the end of a group.
#[derive(Default)]
struct Tally {
    totals: RefCell<BTreeMap<&'static str, (u64, Duration)>>,
}

impl Tally {
    fn add(&self, name: &'static str, values: u64, took: Duration) -> Duration {
        let mut t = self.totals.borrow_mut();
        let e = t.entry(name).or_default();
        e.0 += values;
        e.1 += took;
        took
    }

    fn print_throughput(&self, group: &str) {
        let t = self.totals.borrow();
        let rate = |name: &str| t.get(name).map(|(v, d)| *v as f64 / d.as_secs_f64().max(1e-12));
        let Some(shoal) = rate("shoal") else { return };
        println!("{group}: values/s, and shoal's ratio to each (>1: shoal is faster)");
        for name in t.keys() {
            let r = rate(name).unwrap_or(0.0);
            println!("  {name:<24} {:>8.1} M/s   shoal/{name} = {:.2}", r / 1e6, shoal / r.max(1e-12));
        }
    }
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
    scale: Scale,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(scale.sample_size).warm_up_time(scale.warm_up).measurement_time(scale.measurement);
    g
}

// --- one at a time ------------------------------------------------------------------------

/// The disruptor's consumer is its own managed thread (pinned to the second CPU, a handler
/// summing values); the producer runs on a pinned thread of ours and the clock stops when
/// the handler has seen the last value.
fn disruptor_run(total: u64, batched: bool) -> Duration {
    let cpus = cpu_pair();
    let seen = Arc::new(CachePadded::new(AtomicU64::new(0)));
    let sum = Arc::new(AtomicU64::new(0));
    let mut builder = disruptor::build_single_producer(CAPACITY, || 0u64, disruptor::BusySpin);
    if let Some((_, consumer_cpu)) = cpus {
        builder = builder.pin_at_core(consumer_cpu);
    }
    let handler = {
        let (seen, sum_out) = (seen.clone(), sum.clone());
        let mut sum = 0u64;
        move |v: &u64, seq: disruptor::Sequence, end_of_batch: bool| {
            sum = sum.wrapping_add(*v);
            if end_of_batch {
                sum_out.store(sum, Ordering::Relaxed);
                // pairs with the Acquire load in the producer's final wait
                seen.store(seq as u64 + 1, Ordering::Release);
            }
        }
    };
    let mut producer = builder.handle_events_with(handler).build();
    let took = thread::scope(|s| {
        s.spawn(|| {
            pin(cpus.map(|c| c.0), "bench-producer");
            let start = Instant::now();
            if batched {
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
            } else {
                for i in 0..total {
                    producer.publish(|e| *e = i);
                }
            }
            // pairs with the Release store in the handler
            while seen.load(Ordering::Acquire) < total {
                spin_loop();
            }
            start.elapsed()
        })
        .join()
        .expect("disruptor producer thread")
    });
    drop(producer); // joins the handler thread
    black_box(sum.load(Ordering::Relaxed));
    took
}

fn array_queue_one(total: u64) -> Duration {
    let q = crossbeam_queue::ArrayQueue::<u64>::new(CAPACITY);
    timed_pair(
        || {
            for i in 0..total {
                while q.push(i).is_err() {
                    spin_loop();
                }
            }
        },
        || {
            let mut sum = 0u64;
            for _ in 0..total {
                loop {
                    if let Some(v) = q.pop() {
                        sum = sum.wrapping_add(v);
                        break;
                    }
                    spin_loop();
                }
            }
            black_box(sum);
        },
    )
}

fn crossbeam_channel_one(total: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<u64>(CAPACITY);
    timed_pair(
        move || {
            for i in 0..total {
                tx.send(i).expect("receiver alive");
            }
        },
        move || {
            let mut sum = 0u64;
            for _ in 0..total {
                sum = sum.wrapping_add(rx.recv().expect("sender alive"));
            }
            black_box(sum);
        },
    )
}

fn std_channel_one(total: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(CAPACITY);
    timed_pair(
        move || {
            for i in 0..total {
                tx.send(i).expect("receiver alive");
            }
        },
        move || {
            let mut sum = 0u64;
            for _ in 0..total {
                sum = sum.wrapping_add(rx.recv().expect("sender alive"));
            }
            black_box(sum);
        },
    )
}

fn hop_one_at_a_time(c: &mut Criterion, scale: Scale) {
    let n = scale.values_per_iter;
    let tally = Tally::default();
    let mut g = configure(c, "hop_one_at_a_time", scale);
    g.throughput(Throughput::Elements(n));
    let peers: [(&'static str, Run); 6] = [
        ("shoal", shoal_one),
        ("rtrb", rtrb_one),
        ("disruptor", |total| disruptor_run(total, false)),
        ("crossbeam_array_queue", array_queue_one),
        ("crossbeam_channel", crossbeam_channel_one),
        ("std_sync_channel", std_channel_one),
    ];
    for (name, run) in peers {
        g.bench_function(name, |b| b.iter_custom(|iters| tally.add(name, iters * n, run(iters * n))));
    }
    g.finish();
    tally.print_throughput("hop_one_at_a_time");
}

// --- batched ------------------------------------------------------------------------------

fn hop_batched(c: &mut Criterion, scale: Scale) {
    let n = scale.values_per_iter;
    let tally = Tally::default();
    let mut g = configure(c, "hop_batched", scale);
    g.throughput(Throughput::Elements(n));
    let peers: [(&'static str, Run); 3] =
        [("shoal", shoal_batched), ("rtrb", rtrb_batched), ("disruptor", |total| disruptor_run(total, true))];
    for (name, run) in peers {
        g.bench_function(name, |b| b.iter_custom(|iters| tally.add(name, iters * n, run(iters * n))));
    }
    g.finish();
    tally.print_throughput("hop_batched");
}

// --- latency ------------------------------------------------------------------------------

/// One side of a ping-pong: `send` a value, `recv` blocks (spinning) until one arrives.
trait PingPong: Send {
    fn send(&mut self, v: u64);
    fn recv(&mut self) -> u64;
}

struct ShoalEnd(ring::Producer<u64>, ring::Consumer<u64>);

impl PingPong for ShoalEnd {
    #[inline]
    fn send(&mut self, v: u64) {
        self.0.push_wait(v).expect("the other side is alive");
    }
    #[inline]
    fn recv(&mut self) -> u64 {
        self.1.pop_wait().expect("the other side is alive")
    }
}

struct RtrbEnd(rtrb::Producer<u64>, rtrb::Consumer<u64>);

impl PingPong for RtrbEnd {
    #[inline]
    fn send(&mut self, v: u64) {
        while self.0.push(v).is_err() {
            spin_loop();
        }
    }
    #[inline]
    fn recv(&mut self) -> u64 {
        loop {
            if let Ok(v) = self.1.pop() {
                return v;
            }
            spin_loop();
        }
    }
}

/// The floor: one atomic each way; a value is "sent" by storing it, "received" when the
/// other side's word changes.
struct AtomicEnd {
    out: Arc<CachePadded<AtomicU64>>,
    inp: Arc<CachePadded<AtomicU64>>,
    last: u64,
}

impl PingPong for AtomicEnd {
    #[inline]
    fn send(&mut self, v: u64) {
        // pairs with the Acquire load in the other side's `recv`
        self.out.store(v, Ordering::Release);
    }
    #[inline]
    fn recv(&mut self) -> u64 {
        loop {
            // pairs with the Release store in the other side's `send`
            let v = self.inp.load(Ordering::Acquire);
            if v != self.last {
                self.last = v;
                return v;
            }
            spin_loop();
        }
    }
}

fn shoal_ends() -> (ShoalEnd, ShoalEnd) {
    let (tx_a, rx_b) = ring::channel(64, WaitStrategy::BusySpin);
    let (tx_b, rx_a) = ring::channel(64, WaitStrategy::BusySpin);
    (ShoalEnd(tx_a, rx_a), ShoalEnd(tx_b, rx_b))
}

fn rtrb_ends() -> (RtrbEnd, RtrbEnd) {
    let (tx_a, rx_b) = rtrb::RingBuffer::new(64);
    let (tx_b, rx_a) = rtrb::RingBuffer::new(64);
    (RtrbEnd(tx_a, rx_a), RtrbEnd(tx_b, rx_b))
}

fn atomic_ends() -> (AtomicEnd, AtomicEnd) {
    let ab = Arc::new(CachePadded::new(AtomicU64::new(0)));
    let ba = Arc::new(CachePadded::new(AtomicU64::new(0)));
    (AtomicEnd { out: ab.clone(), inp: ba.clone(), last: 0 }, AtomicEnd { out: ba, inp: ab, last: 0 })
}

/// `rounds` round trips between two pinned threads; returns their total time and records
/// each one-way hop (round trip / 2) in `hist`.
fn ping_pong(mut ping: impl PingPong, mut pong: impl PingPong, rounds: u64, hist: &mut LatencyHistogram) -> Duration {
    let cpus = cpu_pair();
    let clock = quanta::Clock::new();
    let barrier = Barrier::new(2);
    thread::scope(|s| {
        s.spawn(|| {
            pin(cpus.map(|c| c.1), "bench-pong");
            barrier.wait();
            for _ in 0..rounds {
                let v = pong.recv();
                pong.send(v);
            }
        });
        let pinger = s.spawn(|| {
            pin(cpus.map(|c| c.0), "bench-ping");
            let mut local = LatencyHistogram::new();
            barrier.wait();
            let start = Instant::now();
            let mut before = clock.raw();
            for i in 1..=rounds {
                ping.send(i);
                let v = ping.recv();
                debug_assert_eq!(v, i);
                let after = clock.raw();
                local.record(clock.delta_as_nanos(before, after) / 2);
                before = after;
            }
            (start.elapsed(), local)
        });
        let (took, local) = pinger.join().expect("ping thread");
        hist.merge(&local);
        took
    })
}

fn hop_latency(c: &mut Criterion, scale: Scale) {
    let mut hists: BTreeMap<&'static str, LatencyHistogram> = BTreeMap::new();
    let tally = Tally::default();
    let mut g = configure(c, "hop_latency", scale);
    g.throughput(Throughput::Elements(1));
    type Ends = fn(&mut LatencyHistogram, u64) -> Duration;
    let peers: [(&'static str, Ends); 3] = [
        ("shoal", |h, n| {
            let (a, b) = shoal_ends();
            ping_pong(a, b, n, h)
        }),
        ("rtrb", |h, n| {
            let (a, b) = rtrb_ends();
            ping_pong(a, b, n, h)
        }),
        ("atomic_floor", |h, n| {
            let (a, b) = atomic_ends();
            ping_pong(a, b, n, h)
        }),
    ];
    for (name, run) in peers {
        let hist = hists.entry(name).or_default();
        g.bench_function(name, |b| b.iter_custom(|iters| tally.add(name, iters, run(hist, iters))));
    }
    g.finish();
    let floor = hists.get("atomic_floor").map(|h| (h.quantile_ns(0.5).max(1), h.quantile_ns(0.99).max(1)));
    println!("hop_latency: one-way hop (round trip / 2) from {} round trips in all", {
        hists.values().map(LatencyHistogram::count).sum::<u64>()
    });
    for (name, h) in hists.iter().filter(|(_, h)| h.count() > 0) {
        let (p50, p99) = (h.quantile_ns(0.5), h.quantile_ns(0.99));
        let ratio = floor.map_or(String::new(), |(f50, f99)| {
            format!("   x floor: p50 {:.2}, p99 {:.2}", p50 as f64 / f50 as f64, p99 as f64 / f99 as f64)
        });
        println!("  {name:<14} p50 {:>8}  p99 {:>8}{ratio}", format_ns(p50), format_ns(p99));
    }
}

fn main() {
    let scale = Scale::from_args();
    match cpu_pair() {
        Some((a, b)) => println!("ring benches: threads pinned to cpus {a} and {b}"),
        None => println!("ring benches: fewer than two usable cpus, threads not pinned"),
    }
    let mut c = Criterion::default().configure_from_args();
    hop_one_at_a_time(&mut c, scale);
    hop_batched(&mut c, scale);
    hop_latency(&mut c, scale);
    c.final_summary();
}
