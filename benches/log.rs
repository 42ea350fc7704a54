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
//!
//! The measuring code is in `kernels/` and is the same that `shoal bench` runs (see
//! `kernels/mod.rs`); here criterion wraps each kernel in `iter_custom`, so set-up is
//! outside the measured time. Appenders and the peers' files are kept open across measured
//! calls (started afresh between calls after a few segments, outside the measured time), so
//! that rollovers, the background preparation of fresh segments and retention stay inside the
//! measured time at their steady-state rate. `durable_latency` also prints p50/p99/p99.9 of
//! both sides from per-operation histograms.
//!
//! Scratch files go under `$SHOAL_BENCH_DIR` or else the system temp directory; its file
//! system is printed at start (durability figures on tmpfs mean nothing). Under
//! `cargo test --benches` (no `--bench` flag) criterion runs each bench once and the sizes
//! here shrink, so that mode stays quick.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, Throughput};
use shoal::log::{Appender, Durability};
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

fn main() {
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
    c.final_summary();
}
