//! Benchmarks of the async waits (`shoal::aio`, feature `tokio`) against their blocking
//! counterparts, in the same run.
//!
//! | group | shoal | peer | goal |
//! | --- | --- | --- | --- |
//! | `async_tail_latency` | append -> record seen by an `AsyncTailer` in a task of a multi-thread tokio runtime (2 workers) | the blocking `Tailer` on a thread of its own, same log setup | p50 <= 2x the blocking tailer's, per wait strategy |
//! | `idle_streams` | 1,000 `AsyncTailer`s waiting on 10 quiet logs (appenders open, nothing appended) | - | the process's CPU <= 1% of one core |
//!
//! `async_tail_latency` runs each reader with both sides sleeping (`TailWait::Park`, a record
//! every 1 ms: each one finds the reader asleep) and with the default spin-then-park (a
//! record every 100 us, inside the 300 us spin budget: met spinning). One record is in flight
//! at a time: the writer appends a record carrying its send time, the reader measures the
//! hop and hands it back, and the writer paces the next. Criterion's time per iteration is
//! the mean hop; after the group every reader's p50, p99 and p99.9 are printed from
//! per-record histograms, with the ratio of each async tailer's p50 to the blocking one's.
//!
//! `idle_streams` reads the process's CPU time (`getrusage`) over a few seconds while the
//! streams wait, after they have spent their spin budgets; it includes the appenders'
//! background threads, so it is an upper bound of what the streams cost.
//!
//! `cargo bench --bench aio --features tokio` measures; under `cargo test --benches` (no
//! `--bench` flag) every part runs a few records only.

use std::path::Path;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use shoal::aio::AsyncTailer;
use shoal::log::{Appender, LogOptions, TailWait, Tailer};
use shoal::metrics::LatencyHistogram;

/// The clock both sides of a hop read: ns since this process first asked.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The readers of `async_tail_latency`: (name, async?, wait strategy, gap between records).
const READERS: [(&str, bool, TailWait, Duration); 4] = [
    ("blocking_park", false, TailWait::Park, Duration::from_millis(1)),
    ("async_park", true, TailWait::Park, Duration::from_millis(1)),
    ("blocking_default", false, TailWait::SpinThenPark(TailWait::DEFAULT_SPIN), Duration::from_micros(100)),
    ("async_default", true, TailWait::SpinThenPark(TailWait::DEFAULT_SPIN), Duration::from_micros(100)),
];

/// Waits until `due`: sleeps while more than 200 us remain, then spins (a thread sleep
/// overshoots by tens of microseconds, which would stretch the gaps).
fn pace_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        if due - now > Duration::from_micros(200) {
            std::thread::sleep(due - now - Duration::from_micros(150));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A log, its appender, and a reader that reports each record's hop (ns) on a channel.
struct Session {
    log: Appender,
    hops: mpsc::Receiver<u64>,
    gap: Duration,
    reader: Option<std::thread::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl Session {
    fn start(is_async: bool, wait: TailWait, gap: Duration) -> Session {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Appender::open(dir.path(), LogOptions::default()).expect("open the log");
        let (tx, hops) = mpsc::channel();
        let (reader, runtime) = if is_async {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            let mut tailer = AsyncTailer::open_with(dir.path(), wait).expect("async tailer");
            runtime.spawn(async move {
                loop {
                    let Ok(record) = tailer.next().await else { return };
                    let sent = u64::from_le_bytes(record.payload()[..8].try_into().expect("8 bytes"));
                    if sent == u64::MAX || tx.send(now_ns().saturating_sub(sent)).is_err() {
                        return;
                    }
                }
            });
            (None, Some(runtime))
        } else {
            let mut tailer = Tailer::open_with(dir.path(), wait).expect("tailer");
            let thread = std::thread::spawn(move || loop {
                let Ok(Some(record)) = tailer.next(Some(Duration::from_secs(30))) else { return };
                let sent = u64::from_le_bytes(record.payload()[..8].try_into().expect("8 bytes"));
                if sent == u64::MAX || tx.send(now_ns().saturating_sub(sent)).is_err() {
                    return;
                }
            });
            (Some(thread), None)
        };
        Session { log, hops, gap, reader, runtime, _dir: dir }
    }

    /// `n` hops, one in flight at a time; returns their sum, recording each in `hist`.
    fn run(&mut self, n: u64, hist: &mut LatencyHistogram) -> Duration {
        let mut total = 0u64;
        let mut due = Instant::now() + self.gap;
        for _ in 0..n {
            pace_until(due);
            let mut payload = [0u8; 64];
            payload[..8].copy_from_slice(&now_ns().to_le_bytes());
            self.log.append(&payload).expect("append");
            let hop = self.hops.recv_timeout(Duration::from_secs(30)).expect("the reader lost a record");
            hist.record(hop);
            total += hop;
            due = Instant::now() + self.gap;
        }
        Duration::from_nanos(total)
    }

    fn finish(mut self) {
        self.log.append(&u64::MAX.to_le_bytes()).expect("append the end mark");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the reader thread panicked");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
        self.log.close().expect("close");
    }
}

fn print_latency(name: &str, h: &LatencyHistogram) {
    println!(
        "  {name:<18} n={:<7} p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us",
        h.count(),
        h.quantile_ns(0.5) as f64 / 1e3,
        h.quantile_ns(0.99) as f64 / 1e3,
        h.quantile_ns(0.999) as f64 / 1e3,
    );
}

fn async_tail_latency(c: &mut Criterion) {
    let mut hists: Vec<LatencyHistogram> = READERS.iter().map(|_| LatencyHistogram::new()).collect();
    let mut group = c.benchmark_group("async_tail_latency");
    for ((name, is_async, wait, gap), hist) in READERS.iter().zip(hists.iter_mut()) {
        let mut session = Session::start(*is_async, *wait, *gap);
        // Let the reader catch up and fall asleep first.
        std::thread::sleep(Duration::from_millis(20));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| session.run(iters, hist));
        });
        session.finish();
    }
    group.finish();
    println!("async_tail_latency (append -> seen, one record in flight; every iteration's hop):");
    for ((name, ..), hist) in READERS.iter().zip(&hists) {
        print_latency(name, hist);
    }
    for pair in [(0, 1), (2, 3)] {
        let (blocking, async_) = (&hists[pair.0], &hists[pair.1]);
        if blocking.count() == 0 || async_.count() == 0 {
            continue;
        }
        let ratio = async_.quantile_ns(0.5) as f64 / blocking.quantile_ns(0.5).max(1) as f64;
        let verdict = if !full_run() {
            "a smoke run of a few records, not a measurement"
        } else if ratio <= 2.0 {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "  p50 {} / {}: {ratio:.2}x  (goal <= 2.00x: {verdict}); p99 ratio {:.2}x",
            READERS[pair.1].0,
            READERS[pair.0].0,
            async_.quantile_ns(0.99) as f64 / blocking.quantile_ns(0.99).max(1) as f64
        );
    }
}

/// CPU time (user + system) of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct on our stack, nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn idle_streams(root: &Path) {
    const LOGS: usize = 10;
    const STREAMS: usize = 1_000;
    let window = if full_run() { Duration::from_secs(5) } else { Duration::from_millis(500) };
    for (name, wait) in [("park", TailWait::Park), ("default", TailWait::default())] {
        let dirs: Vec<_> = (0..LOGS).map(|l| root.join(format!("idle-{name}-{l}"))).collect();
        let logs: Vec<Appender> =
            dirs.iter().map(|d| Appender::open(d, LogOptions::default()).expect("open")).collect();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        for s in 0..STREAMS {
            let mut tailer = AsyncTailer::open_with(&dirs[s % LOGS], wait).expect("tailer");
            runtime.spawn(async move {
                let _ = tailer.next().await;
            });
        }
        // Past every spin budget, with the registrations and the new logs' background work
        // (segment preparation) settled.
        std::thread::sleep(if full_run() { Duration::from_secs(1) } else { Duration::from_millis(500) });
        let (cpu0, t0) = (process_cpu(), Instant::now());
        std::thread::sleep(window);
        let (cpu, wall) = (process_cpu() - cpu0, t0.elapsed());
        let percent = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
        let verdict = if !full_run() {
            "a smoke run, not a measurement"
        } else if percent <= 1.0 {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "idle_streams: {STREAMS} AsyncTailers ({name}) on {LOGS} quiet logs: {:.3} ms CPU in {:.2} s = {percent:.3}% of one core  (goal <= 1%: {verdict})",
            cpu.as_secs_f64() * 1e3,
            wall.as_secs_f64()
        );
        runtime.shutdown_timeout(Duration::from_secs(5));
        for log in logs {
            log.close().expect("close");
        }
    }
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut c = Criterion::default()
        .sample_size(if full_run() { 20 } else { 10 })
        .warm_up_time(Duration::from_millis(if full_run() { 500 } else { 50 }))
        .measurement_time(Duration::from_secs(if full_run() { 3 } else { 1 }))
        .configure_from_args();
    async_tail_latency(&mut c);
    idle_streams(root.path());
    c.final_summary();
}
