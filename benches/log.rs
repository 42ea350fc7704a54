//! Benchmarks of the durable log against the peers named by the performance budget
//! (ARCHITECTURE.md, "Performance budget"), measured as a user would see them.
//!
//! Every group puts shoal and its peer side by side, so the ratio comes from one run on one
//! (shared, noisy) machine, and prints it after the group with the goal:
//!
//! | group | shoal | peer | goal |
//! | --- | --- | --- | --- |
//! | `append_100B_never` | `append` of 100-byte records, `Durability::Never`; `append_batch` of 64 | a 64 KiB `BufWriter` over a fresh `File` of the same records, each prefixed by a u32 length; flushed | `append` >= 2x; `append_batch` >= `append`; the close after 4 M records p50 and max <= 5 ms |
//! | `append_100B_batch_durable` | `append` in `Batch` until the last record is durable | the `BufWriter` with an fdatasync every 1000 records and at the end; a bare write + fdatasync per record | >= 5x the `BufWriter` |
//! | `durable_latency` | one 4 KiB append, then wait until it is durable (per-op histograms) | `pwrite` of 4 KiB at the end of a file + fdatasync | p50 <= 1.1x, p99 <= 1.3x |
//! | `replay` | `Reader::open` and every 100-byte record read, its payload touched; page cache warm | a 1 MiB `BufReader` parsing the `BufWriter`'s file of the same records, each payload touched | >= 1.5x and >= 5 GB/s |
//! | `durable_bandwidth` | 64 KiB records in `Batch` until durable | a preallocated `O_DIRECT` file written sequentially, 1 MiB at a time, + fdatasync | >= 0.7x |
//! | `produce_cli` | `shoal produce <fresh dir> --durability never` (and `batch`) fed 2 M lines of ~100 bytes from a file on stdin | a hand-written program (this binary, see [`kernels::produce`]) reading stdin with `BufRead` into a `BufWriter` of length-prefixed records (with an fdatasync every 1000 lines for `batch`) | `never` >= 1x, `batch` >= 2x |
//! | `producers` | 64 B and 1 KiB records, `Never`: one `Writers::Shared` appender; 2 threads, each with its own shared appender; 2 processes | one `Writers::Exclusive` appender | shared alone >= 0.9x; 2 threads and 2 processes >= 0.8x in aggregate |
//!
//! Every measured iteration runs from a fresh, empty directory and is timed from the open to
//! the close, on both sides: shoal's open, rollovers, the preparation of segments and the
//! close (what dropping an appender costs) count, as do the peer's file creation, flush and
//! close. The logs use a user's defaults (`LogOptions::default()` with the durability
//! measured). The measuring code is in `kernels/` and is the same that `shoal bench` runs
//! (see `kernels/mod.rs`); here criterion wraps each kernel in `iter_custom`, so making and
//! deleting the empty directory stay outside the measured time. The groups sample "flat"
//! (the same count of whole runs in every sample), since one run takes up to a second.
//! After each group the mean rate of every function over all its iterations (warm-up
//! included) is printed with the ratio to its peer and the goal; `durable_latency` also
//! prints p50/p99/p99.9 of both sides from per-operation histograms.
//!
//! `produce_cli` spawns the `shoal` binary cargo built for this bench, and the peer program
//! is this binary run again with [`kernels::produce::LINES_PEER_ENV`] set. The `producers`
//! group runs this binary again as producer processes too (see [`PRODUCER_CHILD_ENV`]): the
//! children open nothing until the start signal, so their start-up is outside the measured
//! time. After the group it prints the mean throughput of each variant relative to the
//! exclusive appender, and p50/p99/p99.9 of single `append` calls for one producer alone and
//! for two contending threads.
//!
//! Scratch files go under `$SHOAL_BENCH_DIR` or else the system temp directory; its file
//! system is printed at start (durability figures on tmpfs mean nothing). Under
//! `cargo test --benches` (no `--bench` flag) criterion runs each bench once and the sizes
//! here shrink (see [`Scale`]), so that mode stays quick; it also reads back what each
//! `produce_cli` run wrote.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use criterion::{black_box, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use shoal::log::format::record_stride;
use shoal::log::{Appender, Durability, LogOptions, Reader, Writers};
use shoal::metrics::{format_ns, LatencyHistogram};

#[path = "kernels/mod.rs"]
#[allow(dead_code)] // the ring kernels are for benches/ring.rs and `shoal bench`
mod kernels;

use kernels::fs::{self, AlignedBuf, BLOCK_BYTES, DIRECT_WRITE_BYTES, SYNC_EVERY_RECORDS};
use kernels::log::{
    self as klog, log_options, AppendCalls, LARGE_RECORD_BYTES, LATENCY_RECORD_BYTES, SMALL_RECORD_BYTES,
};
use kernels::produce::{self as kproduce, LINES_PEER_ENV};

const MIB: u64 = 1 << 20;

/// Sizes for one run: full under `cargo bench`, small under `cargo test --benches`.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// Whether this is `cargo bench` (full sizes).
    bench: bool,
    /// Segment size of the logs (the default under `cargo bench`).
    segment_bytes: u64,
    /// 100-byte records of one `append_100B_never` run (each side).
    never_records: u64,
    /// 100-byte records of one `append_100B_batch_durable` run of shoal and the `BufWriter`.
    durable_records: u64,
    /// Records of one run of the write + fdatasync-per-record peer.
    sync_each_records: u64,
    /// Durable appends (and peer writes) of one `durable_latency` run.
    latency_samples: u64,
    /// Bytes of one `durable_bandwidth` run (each side).
    durable_bytes: u64,
    /// Payload bytes of the replayed log (and of the peer's file).
    replay_bytes: u64,
    /// Lines fed to one `produce_cli` run.
    produce_lines: u64,
}

impl Scale {
    fn from_args() -> Scale {
        if std::env::args().any(|a| a == "--bench") {
            Scale {
                bench: true,
                segment_bytes: LogOptions::default().segment_bytes,
                never_records: 4_000_000,
                durable_records: 1_000_000,
                sync_each_records: 500,
                latency_samples: 200,
                durable_bytes: 256 * MIB,
                replay_bytes: 256 * MIB,
                produce_lines: 2_000_000,
            }
        } else {
            Scale {
                bench: false,
                segment_bytes: MIB,
                never_records: 20_000,
                durable_records: 20_000,
                sync_each_records: 20,
                latency_samples: 10,
                durable_bytes: 4 * MIB,
                replay_bytes: 4 * MIB,
                produce_lines: 20_000,
            }
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

/// Items and time of every measured iteration of a group's functions (warm-up included),
/// for the ratios printed after the group.
#[derive(Default)]
struct Tally(RefCell<BTreeMap<&'static str, (u64, Duration)>>);

impl Tally {
    /// `iters` runs of `run` (each moving `items` items) as function `name`: their total time.
    fn runs(&self, name: &'static str, iters: u64, items: u64, mut run: impl FnMut() -> Duration) -> Duration {
        let took: Duration = (0..iters).map(|_| run()).sum();
        let mut all = self.0.borrow_mut();
        let entry = all.entry(name).or_default();
        entry.0 += iters * items;
        entry.1 += took;
        took
    }

    /// The mean rate of `name` in items per second, if it ran.
    fn rate(&self, name: &str) -> Option<f64> {
        self.0.borrow().get(name).filter(|(n, _)| *n > 0).map(|(n, t)| *n as f64 / t.as_secs_f64().max(1e-9))
    }

    /// Prints the mean rate of `shoal` (`unit` per second, scaled by `div`), of `peer`, their
    /// ratio and whether it meets `goal` (a ratio), or nothing when either was filtered out.
    fn compare(&self, shoal: &str, peer: &str, unit: &str, div: f64, goal: Option<f64>) -> Option<f64> {
        let (s, p) = (self.rate(shoal)?, self.rate(peer)?);
        let ratio = s / p.max(f64::MIN_POSITIVE);
        let goal = goal.map_or_else(String::new, |g| {
            format!("  (goal >= {g:.2}x: {})", if ratio >= g { "met" } else { "MISSED" })
        });
        println!("  {shoal} {:.2} {unit}/s, {peer} {:.2} {unit}/s: {ratio:.2}x{goal}", s / div, p / div);
        Some(ratio)
    }
}

/// Criterion settings of a group whose every iteration is a whole open-to-close run.
fn whole_runs<M: criterion::measurement::Measurement>(group: &mut BenchmarkGroup<'_, M>) {
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
}

/// Goal of the close after [`Scale::never_records`] records, p50 and max.
const CLOSE_GOAL: Duration = Duration::from_millis(5);

fn append_100b_never(c: &mut Criterion, scale: &Scale, root: &Path) {
    let payload = [0xA5u8; SMALL_RECORD_BYTES];
    let n = scale.never_records;
    let opts = log_options(Durability::Never, scale.segment_bytes);
    let tally = Tally::default();
    let mut close = [LatencyHistogram::new(), LatencyHistogram::new()];
    let mut group = c.benchmark_group("append_100B_never");
    whole_runs(&mut group);
    group.throughput(Throughput::Elements(n));
    for (i, (name, calls)) in
        [("shoal_append", AppendCalls::One), ("shoal_append_batch64", AppendCalls::Batch)].into_iter().enumerate()
    {
        let hist = &mut close[i];
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                tally.runs(name, iters, n, || {
                    let t = klog::append_run(root, opts, &payload, n, calls).expect("append run");
                    hist.record(t.close.as_nanos() as u64);
                    t.total
                })
            })
        });
    }
    group.bench_function("bufwriter", |b| {
        b.iter_custom(|iters| {
            tally.runs("bufwriter", iters, n, || fs::bufwriter_run(root, &payload, n, None).expect("bufwriter run"))
        })
    });
    group.finish();

    println!("append_100B_never ({n} records a run, open to close; mean of every run):");
    let one = tally.compare("shoal_append", "bufwriter", "M records", 1e6, Some(2.0));
    tally.compare("shoal_append_batch64", "bufwriter", "M records", 1e6, one);
    for (name, hist) in ["shoal_append", "shoal_append_batch64"].iter().zip(&close) {
        if hist.count() > 0 {
            let (p50, max) = (hist.quantile_ns(0.5), hist.max_ns());
            let met = Duration::from_nanos(p50.max(max)) <= CLOSE_GOAL;
            println!(
                "  close after {n} records ({name}, n={}): p50 {} max {}  (goal <= {}: {})",
                hist.count(),
                format_ns(p50),
                format_ns(max),
                format_ns(CLOSE_GOAL.as_nanos() as u64),
                if met { "met" } else { "MISSED" }
            );
        }
    }
}

fn append_100b_batch_durable(c: &mut Criterion, scale: &Scale, root: &Path) {
    let payload = [0x5Au8; SMALL_RECORD_BYTES];
    let (n, each) = (scale.durable_records, scale.sync_each_records);
    let opts = log_options(Durability::Batch, scale.segment_bytes);
    let tally = Tally::default();
    let mut group = c.benchmark_group("append_100B_batch_durable");
    whole_runs(&mut group);
    group.throughput(Throughput::Elements(n));
    group.bench_function("shoal_append", |b| {
        b.iter_custom(|iters| {
            tally.runs("shoal_append", iters, n, || {
                klog::append_run(root, opts, &payload, n, AppendCalls::One).expect("append run").total
            })
        })
    });
    group.bench_function("bufwriter_fdatasync_1000", |b| {
        b.iter_custom(|iters| {
            tally.runs("bufwriter_fdatasync_1000", iters, n, || {
                fs::bufwriter_run(root, &payload, n, Some(SYNC_EVERY_RECORDS)).expect("bufwriter run")
            })
        })
    });
    group.throughput(Throughput::Elements(each));
    group.bench_function("write_fdatasync_each", |b| {
        b.iter_custom(|iters| {
            tally.runs("write_fdatasync_each", iters, each, || {
                fs::write_fdatasync_each_run(root, &payload, each).expect("write + fdatasync run")
            })
        })
    });
    group.finish();
    println!("append_100B_batch_durable ({n} records a run, open to durable to close; mean of every run):");
    tally.compare("shoal_append", "bufwriter_fdatasync_1000", "M records", 1e6, Some(5.0));
    tally.compare("shoal_append", "write_fdatasync_each", "M records", 1e6, None);
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

fn durable_latency(c: &mut Criterion, scale: &Scale, root: &Path) {
    let payload = [0x3Cu8; LATENCY_RECORD_BYTES];
    let block = [0xC3u8; BLOCK_BYTES];
    let samples = scale.latency_samples;
    let opts = log_options(Durability::Batch, scale.segment_bytes);
    let (mut shoal, mut peer) = (LatencyHistogram::new(), LatencyHistogram::new());
    let mut group = c.benchmark_group("durable_latency");
    whole_runs(&mut group);
    group.throughput(Throughput::Elements(samples));
    group.bench_function("shoal_4KiB_append_wait_durable", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| klog::durable_latency_run(root, opts, &payload, samples, &mut shoal).expect("durable run"))
                .sum()
        })
    });
    group.bench_function("pwrite_4KiB_fdatasync", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| fs::fdatasync_latency_run(root, &block, samples, &mut peer).expect("pwrite + fdatasync run"))
                .sum()
        })
    });
    group.finish();

    if shoal.count() == 0 || peer.count() == 0 {
        return; // filtered out
    }
    println!("durable_latency ({samples} operations a run, each run from a fresh directory; warm-up included):");
    print_latency("shoal 4 KiB append + wait", &shoal);
    print_latency("pwrite 4 KiB + fdatasync", &peer);
    for (q, goal) in [(0.5, 1.1), (0.99, 1.3)] {
        let ratio = shoal.quantile_ns(q) as f64 / peer.quantile_ns(q).max(1) as f64;
        println!(
            "  shoal / peer at p{}: {ratio:.2}x  (goal <= {goal:.1}x: {})",
            q * 100.0,
            if ratio <= goal { "met" } else { "MISSED" }
        );
    }
}

/// The replayed log and the peer's file of the same records, written on first use (outside
/// the measured time, so that a filtered run skips it) and read once to warm the page cache.
struct ReplayFiles {
    _dir: tempfile::TempDir,
    log: PathBuf,
    peer: PathBuf,
    records: u64,
}

impl ReplayFiles {
    fn write(root: &Path, scale: &Scale) -> ReplayFiles {
        let dir = fs::scratch(root).expect("scratch dir");
        let (log, peer) = (dir.path().join("log"), dir.path().join("peer.log"));
        let opts = log_options(Durability::Never, scale.segment_bytes);
        let (records, bytes) =
            klog::write_replay_log(&log, opts, SMALL_RECORD_BYTES, scale.replay_bytes).expect("write the log");
        // Payload bytes differ from `replay_bytes` by less than one record.
        assert!(bytes - scale.replay_bytes < SMALL_RECORD_BYTES as u64);
        fs::write_framed_file(&peer, SMALL_RECORD_BYTES, records, klog::replay_payload).expect("write the peer file");
        klog::replay(&log, records).expect("replay");
        fs::bufreader_replay(&peer, records).expect("peer replay");
        ReplayFiles { _dir: dir, log, peer, records }
    }
}

/// Replay goal: at least this many payload bytes per second.
const REPLAY_GOAL_BYTES_PER_S: f64 = 5e9;

fn replay(c: &mut Criterion, scale: &Scale, root: &Path) {
    let files: RefCell<Option<ReplayFiles>> = RefCell::default();
    let with_files = |f: &mut dyn FnMut(&ReplayFiles) -> Duration| {
        let mut files = files.borrow_mut();
        f(files.get_or_insert_with(|| ReplayFiles::write(root, scale)))
    };
    let tally = Tally::default();
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Bytes(scale.replay_bytes));
    group.bench_function("shoal_100B", |b| {
        b.iter_custom(|iters| {
            with_files(&mut |f| {
                tally.runs("shoal_100B", iters, scale.replay_bytes, || klog::replay(&f.log, f.records).expect("replay"))
            })
        })
    });
    group.bench_function("bufreader_100B", |b| {
        b.iter_custom(|iters| {
            with_files(&mut |f| {
                tally.runs("bufreader_100B", iters, scale.replay_bytes, || {
                    fs::bufreader_replay(&f.peer, f.records).expect("peer replay")
                })
            })
        })
    });
    group.finish();
    println!(
        "replay (100 B records, {} MiB of payload, page cache warm; mean of every pass):",
        scale.replay_bytes >> 20
    );
    tally.compare("shoal_100B", "bufreader_100B", "GB", 1e9, Some(1.5));
    if let Some(rate) = tally.rate("shoal_100B") {
        let met = if rate >= REPLAY_GOAL_BYTES_PER_S { "met" } else { "MISSED" };
        println!("  shoal_100B {:.2} GB/s  (goal >= {:.0} GB/s: {met})", rate / 1e9, REPLAY_GOAL_BYTES_PER_S / 1e9);
    }
}

fn durable_bandwidth(c: &mut Criterion, scale: &Scale, root: &Path) {
    let payload = vec![0x99u8; LARGE_RECORD_BYTES];
    let records = scale.durable_bytes / LARGE_RECORD_BYTES as u64;
    let opts = log_options(Durability::Batch, scale.segment_bytes);
    let buf = AlignedBuf::new(DIRECT_WRITE_BYTES, 0x99);
    let tally = Tally::default();
    let mut group = c.benchmark_group("durable_bandwidth");
    whole_runs(&mut group);
    group.throughput(Throughput::Bytes(scale.durable_bytes));
    group.bench_function("shoal_64KiB_batch", |b| {
        b.iter_custom(|iters| {
            tally.runs("shoal_64KiB_batch", iters, scale.durable_bytes, || {
                klog::append_run(root, opts, &payload, records, AppendCalls::One).expect("append run").total
            })
        })
    });
    group.bench_function("o_direct_write_fdatasync", |b| {
        b.iter_custom(|iters| {
            tally.runs("o_direct_write_fdatasync", iters, scale.durable_bytes, || {
                fs::o_direct_write(root, buf.as_slice(), scale.durable_bytes).expect("O_DIRECT write")
            })
        })
    });
    group.finish();
    println!(
        "durable_bandwidth ({} MiB a run, open to durable to close; mean of every run):",
        scale.durable_bytes >> 20
    );
    tally.compare("shoal_64KiB_batch", "o_direct_write_fdatasync", "MB", 1e6, Some(0.7));
}

fn produce_cli(c: &mut Criterion, scale: &Scale, root: &Path) {
    let lines = scale.produce_lines;
    let shoal = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let peer = std::env::current_exe().expect("the bench binary's path");
    let input: RefCell<Option<(tempfile::TempDir, PathBuf)>> = RefCell::default();
    // Written on first use (outside the measured time), so that a filtered run skips it.
    let input_path = || {
        let mut input = input.borrow_mut();
        let (_, path) = input.get_or_insert_with(|| {
            let dir = fs::scratch(root).expect("scratch dir");
            let path = dir.path().join("lines");
            kproduce::write_lines(&path, lines).expect("write the input lines");
            (dir, path)
        });
        path.clone()
    };
    let check = !scale.bench;
    let tally = Tally::default();
    let mut group = c.benchmark_group("produce_cli");
    whole_runs(&mut group);
    group.throughput(Throughput::Elements(lines));
    for (durability, sync_every, shoal_name, peer_name) in [
        ("never", None, "shoal_produce_never", "bufwriter_program"),
        ("batch", Some(SYNC_EVERY_RECORDS), "shoal_produce_batch", "bufwriter_program_fdatasync_1000"),
    ] {
        group.bench_function(shoal_name, |b| {
            b.iter_custom(|iters| {
                let input = input_path();
                tally.runs(shoal_name, iters, lines, || {
                    kproduce::shoal_produce(shoal, root, &input, durability, lines, check).expect("shoal produce")
                })
            })
        });
        group.bench_function(peer_name, |b| {
            b.iter_custom(|iters| {
                let input = input_path();
                tally.runs(peer_name, iters, lines, || {
                    kproduce::peer_produce(&peer, &[], root, &input, sync_every, lines, check).expect("peer program")
                })
            })
        });
    }
    group.finish();
    println!("produce_cli ({lines} lines of ~100 B a run, process spawn to exit; mean of every run):");
    tally.compare("shoal_produce_never", "bufwriter_program", "M lines", 1e6, Some(1.0));
    tally.compare("shoal_produce_batch", "bufwriter_program_fdatasync_1000", "M lines", 1e6, Some(2.0));
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
    let bytes = if scale.bench { 10 * MIB } else { MIB / 5 };
    (bytes / record_stride(payload_len) as u64).next_multiple_of(PRODUCERS as u64)
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
    // A tailer process of the `tail_latency` group: do that and nothing else.
    if let Some(spec) = std::env::var_os(TAIL_CHILD_ENV) {
        std::process::exit(tail_child(&spec.to_string_lossy()));
    }
    // A producer process of the `producers` group, or the peer program of `produce_cli`: do
    // that and nothing else.
    if let Some(spec) = std::env::var_os(PRODUCER_CHILD_ENV) {
        std::process::exit(producer_child(&spec.to_string_lossy()));
    }
    if let Some(spec) = std::env::var_os(LINES_PEER_ENV) {
        if let Err(e) = kproduce::lines_peer(&spec.to_string_lossy()) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
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
    produce_cli(&mut c, &scale, &root);
    producers(&mut c, &scale, &root);
    tail_latency(&mut c, &scale, &root);
    c.final_summary();
}

// --- tail_latency ---------------------------------------------------------------------------

/// Set in a child of the `tail_latency` group to `<reader>\t<path>`: the process follows
/// `path` (a log, or for `peer_atomic` the shared counter file) and reports latencies on
/// stdout (see [`tail_child`]).
const TAIL_CHILD_ENV: &str = "SHOAL_BENCH_TAIL_CHILD";

/// Payload bytes of a `tail_latency` record: its kind (a `TAIL_*` word), then the send time
/// (`now_ns`), then filler.
const TAIL_PAYLOAD_BYTES: usize = 64;
/// A record whose latency counts.
const TAIL_DATA: u64 = 0;
/// Asks the child for the sum and count of the latencies since the last report.
const TAIL_REPORT: u64 = 1;
/// Asks the child for its quantiles, then to exit.
const TAIL_STOP: u64 = 2;

/// The readers of the group: a `Tailer` per wait strategy, then the peer.
const TAIL_READERS: [&str; 4] = ["busy", "default", "park", "peer_atomic"];

/// Gaps between appended records (the two rates: 5 000 and 50 000 records/s).
const TAIL_INTERVALS: [Duration; 2] = [Duration::from_micros(200), Duration::from_micros(20)];

/// How far ahead of a record's due time the writer stops sleeping and spins: more than the
/// kernel's default timer slack (50 us), so records go out on time.
const TAIL_SLEEP_MARGIN: Duration = Duration::from_micros(100);

/// Least records per measured call of a `tail_latency` bench under `cargo bench`: criterion
/// sizes its calls by the latencies returned, a few microseconds each, so it would ask for one
/// record per call where a wake-up took a millisecond; the quantiles want thousands.
const TAIL_LEAST_RECORDS: u64 = 1000;

/// Segment size of a `tail_latency` log: a measured run of a few thousand records rolls over
/// now and then, as a log does in its steady state.
const TAIL_SEGMENT_BYTES: u64 = 4 * MIB;

/// Pause after opening a `tail_latency` log, before any record: the appender's background
/// preparation of its first segments (fresh pages, faulted in) is done by then, as in a log
/// open for a while; on 2 vCPUs it would otherwise compete with the two spinning processes.
const TAIL_SETTLE: Duration = Duration::from_millis(300);

/// Longest the child waits for a record, and the writer for the peer reader: a bound on a
/// hang, far above any latency measured.
const TAIL_HANG: Duration = Duration::from_secs(60);

fn tail_wait(reader: &str) -> Option<shoal::log::TailWait> {
    match reader {
        "busy" => Some(shoal::log::TailWait::BusySpin),
        "default" => Some(shoal::log::TailWait::default()),
        "park" => Some(shoal::log::TailWait::Park),
        _ => None,
    }
}

/// The peer's shared file: the least a queue between two processes can be. Two counters on
/// their own cache lines, then a ring of slots (send time, kind). The writer fills slot
/// `seq % SLOTS` and stores `seq + 1` into [`PeerWords::SEQ`] (Release); the reader spins
/// on that word, reads the slots up to it, and stores how many it took into
/// [`PeerWords::TAKEN`] (Release), which the writer waits on only when the ring is full. Like
/// the log, it queues values its reader has not taken yet, so a reader kept off its core
/// sees the same backlog.
struct PeerWords {
    map: memmap2::MmapRaw,
}

impl PeerWords {
    /// Values written so far.
    const SEQ: usize = 0;
    /// Values taken by the reader so far.
    const TAKEN: usize = 64;
    /// The first slot: 16 bytes each, send time then kind.
    const SLOTS_AT: usize = 4096;
    const SLOTS: u64 = 4096;
    const BYTES: usize = PeerWords::SLOTS_AT + PeerWords::SLOTS as usize * 16;

    /// The offset of the slot of value `seq`: its send time, then its kind 8 bytes on.
    fn slot(seq: u64) -> usize {
        PeerWords::SLOTS_AT + (seq % PeerWords::SLOTS) as usize * 16
    }

    fn map(path: &Path) -> std::io::Result<PeerWords> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        file.set_len(PeerWords::BYTES as u64)?;
        let map = memmap2::MmapOptions::new().len(PeerWords::BYTES).map_raw(&file)?;
        Ok(PeerWords { map })
    }

    fn word(&self, at: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= PeerWords::BYTES);
        // SAFETY: in bounds of the page-aligned mapping (asserted), 8-aligned; both processes
        // access these words only atomically; the mapping lives as long as `self`.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.map.as_mut_ptr().add(at).cast()) }
    }
}

/// The body of a `tail_latency` child (see [`TAIL_CHILD_ENV`]); returns its exit code.
///
/// It prints `ready`, then reads records (or peer values) until [`TAIL_STOP`]: on each
/// [`TAIL_REPORT`] it prints `<sum of latencies ns> <count>` of the records since the last
/// report, and on [`TAIL_STOP`] `<p50> <p99> <p99.9> <max> <count>` (ns) of all of them. A
/// latency is the child's `now_ns()` when the record is returned to it minus the writer's
/// `now_ns()` just before the append (the same clock in both processes).
fn tail_child(spec: &str) -> i32 {
    use std::sync::atomic::Ordering;
    let run = || -> Result<(), String> {
        let Some((reader, path)) = spec.split_once('\t') else {
            return Err(format!("{TAIL_CHILD_ENV}={spec:?} is not <reader>\\t<path>"));
        };
        let mut out = std::io::stdout();
        let mut say = |line: String| -> Result<(), String> {
            writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))
        };
        let mut hist = LatencyHistogram::new();
        let (mut sum, mut count) = (0u64, 0u64);
        // Handles one value; true at the stop.
        let mut take = |kind: u64, sent: u64, now: u64, say: &mut dyn FnMut(String) -> Result<(), String>| {
            match kind {
                TAIL_DATA => {
                    let latency = now.saturating_sub(sent);
                    hist.record(latency);
                    (sum, count) = (sum + latency, count + 1);
                }
                TAIL_REPORT => {
                    say(format!("{sum} {count}"))?;
                    (sum, count) = (0, 0);
                }
                _ => {
                    let q = |q: f64| hist.quantile_ns(q);
                    say(format!("{} {} {} {} {}", q(0.5), q(0.99), q(0.999), hist.max_ns(), hist.count()))?;
                    return Ok(true);
                }
            }
            Ok::<bool, String>(false)
        };
        if let Some(wait) = tail_wait(reader) {
            let mut tailer = shoal::log::Tailer::open_with(path, wait).map_err(|e| format!("open {path}: {e}"))?;
            say("ready".into())?;
            loop {
                let record = tailer.next(Some(TAIL_HANG)).map_err(|e| format!("tail: {e}"))?;
                let now = shoal::log::now_ns();
                let record = record.ok_or_else(|| format!("no record for {TAIL_HANG:?}"))?;
                let word = |i: usize| {
                    record
                        .payload()
                        .get(i * 8..i * 8 + 8)
                        .map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().unwrap()))
                };
                if take(word(0), word(1), now, &mut say)? {
                    return Ok(());
                }
            }
        }
        let words = PeerWords::map(Path::new(path)).map_err(|e| format!("map {path}: {e}"))?;
        say("ready".into())?;
        let mut taken = words.word(PeerWords::TAKEN).load(Ordering::Acquire);
        loop {
            // pairs with the writer's Release store of SEQ: the slots below it are written
            let seq = words.word(PeerWords::SEQ).load(Ordering::Acquire);
            if seq == taken {
                std::hint::spin_loop();
                continue;
            }
            let now = shoal::log::now_ns();
            let slot = PeerWords::slot(taken);
            let (sent, kind) = (words.word(slot).load(Ordering::Relaxed), words.word(slot + 8).load(Ordering::Relaxed));
            taken += 1;
            // pairs with the writer's Acquire load of TAKEN before it reuses the slot
            words.word(PeerWords::TAKEN).store(taken, Ordering::Release);
            if take(kind, sent, now, &mut say)? {
                return Ok(());
            }
        }
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tail_latency child {}: {e}", std::process::id());
            1
        }
    }
}

/// Sleeps, then spins, until `due`.
fn pace_until(due: Instant) {
    let now = Instant::now();
    if due > now + TAIL_SLEEP_MARGIN {
        std::thread::sleep(due - now - TAIL_SLEEP_MARGIN);
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

/// What the writer side of a `tail_latency` bench writes into.
enum TailSink {
    Log(Box<Appender>),
    Peer(PeerWords),
}

/// A child following one log (or peer file) for one bench, and the writer's side of it.
struct TailSession {
    child: std::process::Child,
    lines: BufReader<std::process::ChildStdout>,
    sink: TailSink,
    /// Values written to the peer so far.
    seq: u64,
    _dir: tempfile::TempDir,
}

impl TailSession {
    fn start(reader: &str, root: &Path) -> TailSession {
        let dir = fs::scratch(root).expect("scratch dir");
        let (path, sink) = if tail_wait(reader).is_some() {
            let path = dir.path().join("log");
            let log = Appender::open(&path, log_options(Durability::Never, TAIL_SEGMENT_BYTES)).expect("open the log");
            std::thread::sleep(TAIL_SETTLE);
            (path, TailSink::Log(Box::new(log)))
        } else {
            let path = dir.path().join("peer");
            (path.clone(), TailSink::Peer(PeerWords::map(&path).expect("map the peer file")))
        };
        let mut child = Command::new(std::env::current_exe().expect("the bench binary's path"))
            .env(TAIL_CHILD_ENV, format!("{reader}\t{}", path.display()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a tailer process");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        lines.read_line(&mut line).expect("read the tailer's ready line");
        assert_eq!(line, "ready\n", "the {reader} tailer process failed to start");
        TailSession { child, lines, sink, seq: 0, _dir: dir }
    }

    /// Writes one value of `kind`, stamped with the time just before.
    fn send(&mut self, kind: u64) {
        use std::sync::atomic::Ordering;
        match &mut self.sink {
            TailSink::Log(log) => {
                let mut payload = [0u8; TAIL_PAYLOAD_BYTES];
                payload[..8].copy_from_slice(&kind.to_le_bytes());
                let sent = shoal::log::now_ns();
                payload[8..16].copy_from_slice(&sent.to_le_bytes());
                black_box(log.append(&payload).expect("append"));
            }
            TailSink::Peer(words) => {
                // Never overwrite a slot the reader has not taken (only a full ring waits).
                let start = Instant::now();
                // pairs with the reader's Release store of TAKEN
                while self.seq - words.word(PeerWords::TAKEN).load(Ordering::Acquire) >= PeerWords::SLOTS {
                    assert!(start.elapsed() < TAIL_HANG, "the peer reader stopped taking values");
                    std::hint::spin_loop();
                }
                let slot = PeerWords::slot(self.seq);
                words.word(slot + 8).store(kind, Ordering::Relaxed);
                words.word(slot).store(shoal::log::now_ns(), Ordering::Relaxed);
                self.seq += 1;
                // pairs with the reader's Acquire load of SEQ
                words.word(PeerWords::SEQ).store(self.seq, Ordering::Release);
            }
        }
    }

    fn read_numbers(&mut self) -> Vec<u64> {
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("read the tailer's report");
        let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        assert!(!numbers.is_empty(), "the tailer process failed (it said {line:?})");
        numbers
    }

    /// Writes `iters` records `interval` apart, or `least` if that is more, and returns the
    /// sum of their latencies, scaled to `iters` records (the mean stays theirs).
    fn run(&mut self, iters: u64, least: u64, interval: Duration) -> Duration {
        let records = iters.max(least);
        let mut due = Instant::now() + interval;
        for _ in 0..records {
            pace_until(due);
            self.send(TAIL_DATA);
            // No burst after a stall: the next record is due an interval from now at most.
            due = (due + interval).max(Instant::now());
        }
        self.send(TAIL_REPORT);
        let report = self.read_numbers();
        assert_eq!(report.get(1), Some(&records), "the tailer saw {report:?} (sum, count) of {records} records");
        Duration::from_nanos((report[0] as u128 * iters as u128 / records as u128) as u64)
    }

    /// Stops the child; returns its p50, p99, p99.9, max (ns) and count.
    fn finish(mut self) -> Vec<u64> {
        self.send(TAIL_STOP);
        let quantiles = self.read_numbers();
        let status = self.child.wait().expect("wait for the tailer process");
        assert!(status.success(), "the tailer process failed: {status}");
        quantiles
    }
}

/// `tail_latency`: a 64-byte record appended every 200 us and every 20 us, read by a
/// `Tailer` in another process (this binary again, see [`TAIL_CHILD_ENV`]) with each wait
/// strategy; the peer passes the send time through an atomic counter and a ring of slots in a
/// shared mapped file ([`PeerWords`]) to a reader that spins on the counter. Criterion's figure is the mean latency (the child's receive time
/// minus the send time, one clock); after the group it prints p50/p99/p99.9 of each, with the
/// goals: busy p50 <= 1 us and p99 <= 3 us, default p50 <= 15 us and p99 <= 200 us.
fn tail_latency(c: &mut Criterion, scale: &Scale, root: &Path) {
    let mut group = c.benchmark_group("tail_latency");
    // Criterion budgets by the latencies returned, not the wall time (an interval per
    // record): small budgets keep a run to seconds per bench. Each call writes at least
    // `least` records (a few under `cargo test --benches`).
    group.warm_up_time(Duration::from_millis(2)).measurement_time(Duration::from_millis(10));
    let least = if scale.segment_bytes > 4 * MIB { TAIL_LEAST_RECORDS } else { 20 };
    let mut results = Vec::new();
    for interval in TAIL_INTERVALS {
        for reader in TAIL_READERS {
            let mut session: Option<TailSession> = None;
            let id = BenchmarkId::new(reader, format!("{}us", interval.as_micros()));
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    session.get_or_insert_with(|| TailSession::start(reader, root)).run(iters, least, interval)
                })
            });
            if let Some(session) = session {
                results.push((reader, interval, session.finish()));
            }
        }
    }
    group.finish();
    if results.is_empty() {
        return; // filtered out
    }
    println!("tail_latency: append -> read in another process, 64 B records (per record, warm-up included):");
    for (reader, interval, q) in &results {
        let peer = results.iter().find(|(r, i, _)| *r == "peer_atomic" && i == interval).map(|(_, _, q)| q);
        let ratio = |i: usize| peer.map_or_else(|| "-".into(), |p| format!("{:.1}x", q[i] as f64 / p[i].max(1) as f64));
        println!(
            "  {reader:<12} every {:>3} us  n={:<7} p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  vs peer p50 {} p99 {}",
            interval.as_micros(),
            q[4],
            format_ns(q[0]),
            format_ns(q[1]),
            format_ns(q[2]),
            format_ns(q[3]),
            ratio(0),
            ratio(1)
        );
    }
    println!("  goals: busy p50 <= 1 us, p99 <= 3 us; default p50 <= 15 us, p99 <= 200 us");
}
