//! Benchmarks of the durable log against the peers named by the performance budget
//! (ARCHITECTURE.md, "Performance budget").
//!
//! Every group puts shoal and its peer side by side, so the ratio comes from one run on one
//! (shared, noisy) machine:
//!
//! | group | shoal | peer | goal |
//! | --- | --- | --- | --- |
//! | `append_100B_never` | `append` of 100-byte records, `Durability::Never` | `BufWriter<File>` of the same length-prefixed records | >= 3x |
//! | `append_100B_batch_durable` | `append` in `Batch` mode until the watermark covers the last record | the `BufWriter` with an fdatasync every 1000 records and at the end; a bare write + fdatasync per record | >= 5x |
//! | `durable_latency` | one 100-byte append, then wait until it is durable | a bare 4 KiB write at the end of a file + fdatasync | p99 within 1.5x |
//! | `replay` | zero-copy `Reader` over 100 B and 4 KiB records, every payload touched | memcpy of as many bytes from a touched buffer | >= 5 GB/s |
//! | `durable_bandwidth` | 64 KiB records in `Batch` mode until durable | O_DIRECT sequential write of the same bytes + fdatasync | >= 0.7x |
//! | `producers` | 64 B and 1 KiB records, `Never`: one `Writers::Shared` appender; 2 threads, each with its own shared appender; 2 processes | one `Writers::Exclusive` appender | shared alone >= 0.9x; 2 threads and 2 processes >= 0.8x in aggregate |
//!
//! The measuring code is in `kernels/` and is the same that `shoal bench` runs (see
//! `kernels/mod.rs`); here criterion wraps each kernel in `iter_custom`, so set-up is
//! outside the measured time. Appenders and the peers' files are kept open across measured
//! calls (started afresh between calls after a few segments, outside the measured time), so
//! that rollovers, the background preparation of fresh segments and retention stay inside the
//! measured time at their steady-state rate. `durable_latency` also prints p50/p99/p99.9 of
//! both sides from per-operation histograms.
//!
//! `producers` is the exception to kept-open logs: each measured iteration writes a fixed
//! count of records into a fresh directory and is timed from the first open to the last close
//! (or the last producer process's exit), so neither the exclusive nor the shared path is
//! spared its open, its rollovers or its close. Its process variant runs this binary again as
//! the producers (see [`PRODUCER_CHILD_ENV`]): the children open nothing until the start
//! signal, so their start-up is outside the measured time. After the group it prints the
//! mean throughput of each variant relative to the exclusive appender, and p50/p99/p99.9 of
//! single `append` calls for one producer alone and for two contending threads.
//!
//! Scratch files go under `$SHOAL_BENCH_DIR` or else the system temp directory; its file
//! system is printed at start (durability figures on tmpfs mean nothing). Under
//! `cargo test --benches` (no `--bench` flag) criterion runs each bench once and the sizes
//! here shrink, so that mode stays quick.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use shoal::log::{Appender, Durability, LogOptions, Reader, Writers};
use shoal::metrics::{format_ns, LatencyHistogram};

#[path = "kernels/mod.rs"]
#[allow(dead_code)] // the ring kernels are for benches/ring.rs and `shoal bench`
mod kernels;

use kernels::fs::{self, AlignedBuf, BlockFile, SteadyFile, BLOCK_BYTES, DIRECT_WRITE_BYTES, SYNC_EVERY_RECORDS};
use kernels::log::{self as klog, log_bytes, log_options, SteadyLog, LARGE_RECORD_BYTES, SMALL_RECORD_BYTES};

const MIB: u64 = 1 << 20;

/// Sizes for one run: full under `cargo bench`, small under `cargo test --benches`.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// Segment size of the logs written by the throughput benches.
    segment_bytes: u64,
    /// Payload bytes in each replayed log (and bytes copied by the memcpy floor).
    replay_bytes: u64,
}

impl Scale {
    fn from_args() -> Scale {
        if std::env::args().any(|a| a == "--bench") {
            Scale { segment_bytes: 256 * MIB, replay_bytes: 256 * MIB }
        } else {
            Scale { segment_bytes: 4 * MIB, replay_bytes: 4 * MIB }
        }
    }
}

/// Where scratch logs and files go.
fn bench_root() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn print_machine(scale: &Scale, root: &Path) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let clock = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let fs = fs::file_system(root);
    let note = if fs.in_memory { " (in memory: durability figures meaningless)" } else { "" };
    println!(
        "machine: {cpus} cpus; scratch dir {} on {}{note}; clocksource {clock}; {scale:?}",
        root.display(),
        fs.name
    );
}

fn append_100b_never(c: &mut Criterion, scale: &Scale, root: &Path) {
    let payload = [0xA5u8; SMALL_RECORD_BYTES];
    let batch: Vec<&[u8]> = vec![&payload[..]; 64];
    let mut group = c.benchmark_group("append_100B_never");
    group.throughput(Throughput::Elements(1));
    let mut steady = SteadyLog::open(root, log_options(Durability::Never, scale.segment_bytes)).expect("open");
    group.bench_function("shoal", |b| {
        b.iter_custom(|iters| klog::append(&mut steady, &payload, iters).expect("append"))
    });
    drop(steady);
    let mut steady = SteadyLog::open(root, log_options(Durability::Never, scale.segment_bytes)).expect("open");
    group.bench_function("shoal_batch64", |b| {
        b.iter_custom(|iters| {
            let log = steady.appender(log_bytes(payload.len(), iters)).expect("start over");
            let start = Instant::now();
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(batch.len());
                black_box(log.append_batch(batch[..n].iter().copied()).expect("append_batch"));
                left -= n;
            }
            start.elapsed()
        })
    });
    drop(steady);
    let peer = SteadyFile::open(root).expect("peer file");
    group.bench_function("bufwriter", |b| {
        b.iter_custom(|iters| fs::bufwriter(&peer, &payload, iters, None).expect("bufwriter"))
    });
    group.finish();
}

fn append_100b_batch_durable(c: &mut Criterion, scale: &Scale, root: &Path) {
    let payload = [0x5Au8; SMALL_RECORD_BYTES];
    let mut group = c.benchmark_group("append_100B_batch_durable");
    group.throughput(Throughput::Elements(1));
    let mut steady = SteadyLog::open(root, log_options(Durability::Batch, scale.segment_bytes)).expect("open");
    group.bench_function("shoal", |b| {
        b.iter_custom(|iters| klog::append(&mut steady, &payload, iters).expect("append"))
    });
    drop(steady);
    let peer = SteadyFile::open(root).expect("peer file");
    group.bench_function("bufwriter_fdatasync_1000", |b| {
        b.iter_custom(|iters| fs::bufwriter(&peer, &payload, iters, Some(SYNC_EVERY_RECORDS)).expect("bufwriter"))
    });
    group.bench_function("write_fdatasync_each", |b| {
        b.iter_custom(|iters| fs::write_fdatasync_each(&peer, &payload, iters).expect("write + fdatasync"))
    });
    group.finish();
}

fn print_latency(name: &str, h: &LatencyHistogram) {
    println!(
        "  {name:<28} n={:<7} p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}",
        h.count(),
        format_ns(h.quantile_ns(0.5)),
        format_ns(h.quantile_ns(0.99)),
        format_ns(h.quantile_ns(0.999)),
        format_ns(h.max_ns())
    );
}

/// `iters` runs of `kernel`, each recorded in `hist`; returns their total time.
fn sampled(iters: u64, hist: &mut LatencyHistogram, mut kernel: impl FnMut() -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let took = kernel();
        hist.record(took.as_nanos() as u64);
        total += took;
    }
    total
}

fn durable_latency(c: &mut Criterion, scale: &Scale, root: &Path) {
    let payload = [0x3Cu8; SMALL_RECORD_BYTES];
    let block = [0xC3u8; BLOCK_BYTES];
    let mut group = c.benchmark_group("durable_latency");
    group.throughput(Throughput::Elements(1));

    let dir = fs::scratch(root).expect("scratch dir");
    let opts = log_options(Durability::Batch, scale.segment_bytes.min(64 * MIB));
    let mut log = Appender::open(dir.path().join("log"), opts).expect("open");
    let backend = log.io_backend();
    let mut shoal_hist = LatencyHistogram::new();
    group.bench_function("shoal_append_wait_durable", |b| {
        b.iter_custom(|iters| {
            sampled(iters, &mut shoal_hist, || klog::durable_latency(&mut log, &payload).expect("durable append"))
        })
    });
    drop(log);

    let mut peer = BlockFile::create(dir.path()).expect("peer file");
    let mut peer_hist = LatencyHistogram::new();
    group.bench_function("write_4KiB_fdatasync", |b| {
        b.iter_custom(|iters| {
            sampled(iters, &mut peer_hist, || fs::fdatasync_latency(&mut peer, &block).expect("write + fdatasync"))
        })
    });
    group.finish();

    if shoal_hist.count() == 0 || peer_hist.count() == 0 {
        return; // filtered out
    }
    println!("durable_latency (per-op histograms, warm-up included; shoal backend {backend}):");
    print_latency("shoal append + wait_durable", &shoal_hist);
    print_latency("write 4 KiB + fdatasync", &peer_hist);
    let ratio = |q: f64| shoal_hist.quantile_ns(q) as f64 / peer_hist.quantile_ns(q).max(1) as f64;
    println!(
        "  shoal / peer: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  (goal: p99 <= 1.5x)",
        ratio(0.5),
        ratio(0.99),
        ratio(0.999)
    );
}

fn replay(c: &mut Criterion, scale: &Scale, root: &Path) {
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Bytes(scale.replay_bytes));
    for (name, payload_len) in [("shoal_100B", SMALL_RECORD_BYTES), ("shoal_4KiB", 4096)] {
        // Written on first use (outside the measured time), so a filtered run skips it.
        let mut log: Option<(tempfile::TempDir, u64)> = None;
        group.bench_function(name, |b| {
            let (dir, records) = log.get_or_insert_with(|| {
                let dir = fs::scratch(root).expect("scratch dir");
                let (records, bytes) =
                    klog::write_replay_log(dir.path(), scale.segment_bytes, payload_len, scale.replay_bytes)
                        .expect("write the log");
                // Payload bytes differ from `replay_bytes` by less than one record.
                assert!(bytes - scale.replay_bytes < payload_len as u64);
                klog::replay(dir.path(), records).expect("replay"); // and warms the page cache
                (dir, records)
            });
            b.iter_custom(|iters| (0..iters).map(|_| klog::replay(dir.path(), *records).expect("replay")).sum())
        });
    }
    let src = vec![0x77u8; scale.replay_bytes as usize];
    let mut dst = vec![0u8; scale.replay_bytes as usize];
    dst.copy_from_slice(&src); // touch both
    group.bench_function("memcpy", |b| b.iter_custom(|iters| (0..iters).map(|_| fs::memcpy(&mut dst, &src)).sum()));
    group.finish();
}

fn durable_bandwidth(c: &mut Criterion, scale: &Scale, root: &Path) {
    let payload = vec![0x99u8; LARGE_RECORD_BYTES];
    let mut group = c.benchmark_group("durable_bandwidth");
    group.throughput(Throughput::Bytes(LARGE_RECORD_BYTES as u64));
    let mut steady = SteadyLog::open(root, log_options(Durability::Batch, scale.segment_bytes)).expect("open");
    group.bench_function("shoal_64KiB_batch", |b| {
        b.iter_custom(|iters| klog::append(&mut steady, &payload, iters).expect("append"))
    });
    drop(steady);
    let buf = AlignedBuf::new(DIRECT_WRITE_BYTES, 0x99);
    group.bench_function("o_direct_write_fdatasync", |b| {
        b.iter_custom(|iters| {
            fs::o_direct_write(root, buf.as_slice(), iters * LARGE_RECORD_BYTES as u64).expect("O_DIRECT write")
        })
    });
    group.finish();
}

/// Set in a child of the `producers` group to `<log dir>\t<records>\t<payload bytes>`: the
/// process then waits for a byte on stdin (after printing `ready`), opens a shared appender
/// on the directory, appends the records, closes and exits.
const PRODUCER_CHILD_ENV: &str = "SHOAL_BENCH_PRODUCER_CHILD";

/// Producers in the contended variants of the `producers` group.
const PRODUCERS: usize = 2;

/// Segment size of the `producers` logs: small enough that each iteration rolls over a few
/// times.
const PRODUCER_SEGMENT_BYTES: u64 = 4 * MIB;

/// Options of a `producers` log: [`log_options`] at `Never` with `writers`.
fn producer_options(writers: Writers) -> LogOptions {
    log_options(Durability::Never, PRODUCER_SEGMENT_BYTES).writers(writers)
}

/// Records written per measured iteration (in all, over every producer) for `payload_len`:
/// about 10 MiB of log under `cargo bench`, 1/50 of that under `cargo test --benches`.
fn producer_records(scale: &Scale, payload_len: usize) -> u64 {
    let bytes = if scale.segment_bytes > 4 * MIB { 10 * MIB } else { MIB / 5 };
    (bytes / log_bytes(payload_len, 1)).next_multiple_of(PRODUCERS as u64)
}

/// Opens a `writers` appender on `dir`, appends `records` copies of `payload`, closes.
fn produce(dir: &Path, writers: Writers, payload: &[u8], records: u64) -> Result<(), String> {
    let mut log = Appender::open(dir, producer_options(writers)).map_err(|e| format!("open: {e}"))?;
    for _ in 0..records {
        black_box(log.append(payload).map_err(|e| format!("append: {e}"))?);
    }
    log.close().map_err(|e| format!("close: {e}"))
}

/// The body of a producer process (see [`PRODUCER_CHILD_ENV`]); returns its exit code.
fn producer_child(spec: &str) -> i32 {
    let run = || -> Result<(), String> {
        let mut parts = spec.split('\t');
        let (Some(dir), Some(records), Some(len), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{PRODUCER_CHILD_ENV}={spec:?} is not <dir>\\t<records>\\t<bytes>"));
        };
        let records: u64 = records.parse().map_err(|e| format!("records {records:?}: {e}"))?;
        let len: usize = len.parse().map_err(|e| format!("bytes {len:?}: {e}"))?;
        let payload = vec![0xB7u8; len];
        let mut stdout = std::io::stdout();
        stdout.write_all(b"ready\n").and_then(|()| stdout.flush()).map_err(|e| format!("stdout: {e}"))?;
        let mut go = [0u8; 1];
        std::io::stdin().read_exact(&mut go).map_err(|e| format!("waiting for the start: {e}"))?;
        produce(Path::new(dir), Writers::Shared, &payload, records)
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("producer process {}: {e}", std::process::id());
            1
        }
    }
}

/// How one iteration of a `producers` variant writes its records.
#[derive(Clone, Copy, Debug)]
enum ProducerSetup {
    /// One appender of this mode.
    One(Writers),
    /// [`PRODUCERS`] threads, each with its own shared appender.
    Threads,
    /// [`PRODUCERS`] processes, each with its own shared appender.
    Processes,
}

/// One iteration: `records` records of `payload_len` bytes in all into a fresh directory
/// under `root`, timed from the first open to the last close or exit. The log is then read
/// through (outside the measured time) to check it holds every record.
fn producers_once(root: &Path, setup: ProducerSetup, payload_len: usize, records: u64) -> Duration {
    let dir = fs::scratch(root).expect("scratch dir");
    let log_dir = dir.path().join("log");
    let payload = vec![0xB7u8; payload_len];
    let each = records / PRODUCERS as u64;
    let took = match setup {
        ProducerSetup::One(writers) => {
            let start = Instant::now();
            produce(&log_dir, writers, &payload, records).expect("produce");
            start.elapsed()
        }
        ProducerSetup::Threads => {
            let start = Instant::now();
            std::thread::scope(|s| {
                let workers: Vec<_> =
                    (0..PRODUCERS).map(|_| s.spawn(|| produce(&log_dir, Writers::Shared, &payload, each))).collect();
                for w in workers {
                    w.join().expect("a producer thread panicked").expect("produce");
                }
            });
            start.elapsed()
        }
        ProducerSetup::Processes => {
            let exe = std::env::current_exe().expect("the bench binary's path");
            let spec = format!("{}\t{each}\t{payload_len}", log_dir.display());
            let mut children: Vec<_> = (0..PRODUCERS)
                .map(|_| {
                    Command::new(&exe)
                        .env(PRODUCER_CHILD_ENV, &spec)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .expect("start a producer process")
                })
                .collect();
            for child in &mut children {
                let mut line = String::new();
                let stdout = child.stdout.as_mut().expect("piped stdout");
                BufReader::new(stdout).read_line(&mut line).expect("read the producer's ready line");
                assert_eq!(line, "ready\n", "a producer process failed to start");
            }
            let start = Instant::now();
            for child in &mut children {
                let mut stdin = child.stdin.take().expect("piped stdin");
                stdin.write_all(b"g").expect("start a producer process");
            }
            for mut child in children {
                let status = child.wait().expect("wait for a producer process");
                assert!(status.success(), "a producer process failed: {status}");
            }
            start.elapsed()
        }
    };
    let mut reader = Reader::open(&log_dir).expect("open a reader");
    let mut read = 0u64;
    while let Some(record) = reader.next().expect("read the log") {
        assert_eq!(record.offset().0, read, "offsets are dense");
        assert_eq!(record.payload(), &payload[..]);
        read += 1;
    }
    assert_eq!(read, records, "{setup:?}: the log holds {read} of {records} records");
    took
}

/// Latency of every `append` call of `records` 64-byte records through one appender of
/// `writers` on `dir`, recorded in `hist`.
fn append_latencies(dir: &Path, writers: Writers, records: u64, hist: &mut LatencyHistogram) {
    let payload = [0x6Du8; 64];
    let mut log = Appender::open(dir, producer_options(writers)).expect("open");
    for _ in 0..records {
        let start = Instant::now();
        black_box(log.append(&payload).expect("append"));
        hist.record(start.elapsed().as_nanos() as u64);
    }
    log.close().expect("close");
}

/// Prints p50/p99/p99.9 of `append` calls: an exclusive appender, one shared appender alone,
/// and [`PRODUCERS`] threads with a shared appender each, writing at once.
fn print_append_latency(scale: &Scale, root: &Path) {
    let records = producer_records(scale, 64) / PRODUCERS as u64;
    let alone = |writers| {
        let dir = fs::scratch(root).expect("scratch dir");
        let mut hist = LatencyHistogram::new();
        append_latencies(&dir.path().join("log"), writers, records, &mut hist);
        hist
    };
    let exclusive = alone(Writers::Exclusive);
    let shared = alone(Writers::Shared);
    let dir = fs::scratch(root).expect("scratch dir");
    let log_dir = dir.path().join("log");
    let mut contended = LatencyHistogram::new();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                s.spawn(|| {
                    let mut hist = LatencyHistogram::new();
                    append_latencies(&log_dir, Writers::Shared, records, &mut hist);
                    hist
                })
            })
            .collect();
        for w in workers {
            contended.merge(&w.join().expect("a producer thread panicked"));
        }
    });
    println!("producers: append-call latency, 64 B records, Never ({records} appends per producer, open to close):");
    print_latency("exclusive, alone", &exclusive);
    print_latency("shared, alone", &shared);
    print_latency(&format!("shared, {PRODUCERS} threads at once"), &contended);
    let ratio = |q: f64| contended.quantile_ns(q) as f64 / shared.quantile_ns(q).max(1) as f64;
    println!(
        "  contended / alone (shared): p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x",
        ratio(0.5),
        ratio(0.99),
        ratio(0.999)
    );
}

/// A `producers` variant: payload bytes and name.
type VariantKey = (usize, &'static str);

fn producers(c: &mut Criterion, scale: &Scale, root: &Path) {
    // Records and time of every measured iteration, by variant, for the ratios printed after.
    let totals: RefCell<BTreeMap<VariantKey, (u64, Duration)>> = RefCell::default();
    let mut group = c.benchmark_group("producers");
    group.measurement_time(Duration::from_secs(3));
    let variants: [(&'static str, ProducerSetup); 4] = [
        ("exclusive", ProducerSetup::One(Writers::Exclusive)),
        ("shared_1", ProducerSetup::One(Writers::Shared)),
        ("shared_2_threads", ProducerSetup::Threads),
        ("shared_2_processes", ProducerSetup::Processes),
    ];
    for payload_len in [64usize, 1024] {
        let records = producer_records(scale, payload_len);
        group.throughput(Throughput::Elements(records));
        let size = if payload_len < 1024 { format!("{payload_len}B") } else { format!("{}KiB", payload_len >> 10) };
        for (name, setup) in variants {
            group.bench_function(BenchmarkId::new(name, &size), |b| {
                b.iter_custom(|iters| {
                    let took: Duration = (0..iters).map(|_| producers_once(root, setup, payload_len, records)).sum();
                    let mut totals = totals.borrow_mut();
                    let entry = totals.entry((payload_len, name)).or_default();
                    entry.0 += iters * records;
                    entry.1 += took;
                    took
                })
            });
        }
    }
    group.finish();

    let totals = totals.into_inner();
    if totals.is_empty() {
        return; // filtered out
    }
    println!("producers: mean throughput of every iteration (warm-up included), relative to the exclusive appender:");
    for ((payload_len, name), (records, took)) in &totals {
        let rate = *records as f64 / took.as_secs_f64().max(1e-9);
        let base = totals
            .get(&(*payload_len, "exclusive"))
            .map(|(r, t)| *r as f64 / t.as_secs_f64().max(1e-9))
            .filter(|r| *r > 0.0);
        let ratio = base.map_or_else(|| "-".to_string(), |b| format!("{:.2}x", rate / b));
        println!("  {payload_len:>5} B {name:<20} {:>8.2} M records/s  {ratio}", rate / 1e6);
    }
    print_append_latency(scale, root);
}

fn main() {
    // A producer process of the `producers` group: do that and nothing else.
    if let Some(spec) = std::env::var_os(PRODUCER_CHILD_ENV) {
        std::process::exit(producer_child(&spec.to_string_lossy()));
    }
    let scale = Scale::from_args();
    let root = bench_root();
    print_machine(&scale, &root);
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    append_100b_never(&mut c, &scale, &root);
    append_100b_batch_durable(&mut c, &scale, &root);
    durable_latency(&mut c, &scale, &root);
    replay(&mut c, &scale, &root);
    durable_bandwidth(&mut c, &scale, &root);
    producers(&mut c, &scale, &root);
    c.final_summary();
}
