//! Benchmarks of the durable log against the peers named by the performance budget
//! (DESIGN.md, "Performance budget").
//!
//! Every group puts shoal and its peer side by side, so the ratio comes from one run on one
//! (shared, noisy) machine:
//!
//! | group | shoal | peer | goal |
//! | --- | --- | --- | --- |
//! | `append_100B_never` | `append` of 100-byte records, `Durability::Never` | `BufWriter<File>` of the same length-prefixed records | >= 3x |
//! | `append_100B_batch_durable` | `append` in `Batch` mode until the watermark covers the last record | the `BufWriter` with an fdatasync every 1000 records and at the end | >= 5x |
//! | `durable_latency` | one 100-byte append, then wait until it is durable | a bare 4 KiB write at the end of a file + fdatasync | p99 within 1.5x |
//! | `replay` | zero-copy `Reader` over 100 B and 4 KiB records, every payload touched | memcpy of as many bytes from a touched buffer | >= 5 GB/s |
//! | `durable_bandwidth` | 64 KiB records in `Batch` mode until durable | O_DIRECT sequential write of the same bytes + fdatasync | >= 0.7x |
//!
//! The benches use `iter_custom`, so set-up is outside the measured time. Appenders and the
//! peers' files are kept open across measured calls (started afresh between calls after a
//! few segments, outside the measured time), so that rollovers, the background preparation of
//! fresh segments and retention stay inside the measured time at their steady-state rate.
//! `durable_latency` also prints p50/p99/p99.9 of both sides from per-operation histograms.
//!
//! Scratch files go under `$SHOAL_BENCH_DIR` or else the system temp directory; its file
//! system is printed at start (durability figures on tmpfs mean nothing). Under
//! `cargo test --benches` (no `--bench` flag) criterion runs each bench once and the sizes
//! here shrink, so that mode stays quick.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, Throughput};
use shoal::log::{Appender, Durability, LogOptions, Offset, Reader, Retention};
use shoal::metrics::{format_ns, LatencyHistogram};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Sizes for one run: full under `cargo bench`, small under `cargo test --benches`.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// Segment size of the logs written by the throughput benches.
    segment_bytes: u64,
    /// Payload bytes in each replayed log (and bytes copied by the memcpy floor).
    replay_bytes: u64,
    /// Size of the peer's O_DIRECT writes.
    direct_write_bytes: usize,
}

impl Scale {
    fn from_args() -> Scale {
        if std::env::args().any(|a| a == "--bench") {
            Scale { segment_bytes: 256 * MIB, replay_bytes: 256 * MIB, direct_write_bytes: MIB as usize }
        } else {
            Scale { segment_bytes: 4 * MIB, replay_bytes: 4 * MIB, direct_write_bytes: MIB as usize }
        }
    }
}

/// Where scratch logs and files go.
fn bench_root() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("shoal-bench-").tempdir_in(bench_root()).expect("create a scratch directory")
}

/// The name of the file system holding `path`, from `statfs(2)`.
fn fs_type(path: &Path) -> String {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: `statfs` is plain old data; all-zero is a valid value that the call overwrites.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a statfs we own.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as u64 {
        0xEF53 => "ext2/3/4".into(),
        0x0102_1994 => "tmpfs (durability figures meaningless)".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("{other:#x}"),
    }
}

fn print_machine(scale: &Scale) {
    let root = bench_root();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let clock = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    println!(
        "machine: {cpus} cpus; scratch dir {} on {}; clocksource {clock}; {scale:?}",
        root.display(),
        fs_type(&root)
    );
}

/// Options for a bench log: fresh pages prefaulted by the preparer as in production, old
/// segments deleted so long runs do not fill the disk.
fn log_options(durability: Durability, segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        max_record_bytes: (MIB as usize).min(segment_bytes as usize / 4),
        durability,
        retention: Retention { max_bytes: Some(segment_bytes * 4), max_age: None },
        ..LogOptions::default()
    }
}

/// A log kept open across measured calls, so that rollovers, segment preparation and
/// retention run in their steady state. Between calls (outside the measured time) it starts
/// over in a fresh directory once it has written `restart_bytes`; that bounds what a `Never`
/// log pins: sealed segments stay mapped until a sync covers them, even after retention
/// unlinks them.
struct SteadyLog {
    opts: LogOptions,
    restart_bytes: u64,
    written_bytes: u64,
    log: Option<(Appender, tempfile::TempDir)>,
}

impl SteadyLog {
    /// Opens the first log now, so criterion's warm-up does not count the opening.
    fn new(opts: LogOptions) -> SteadyLog {
        let mut steady = SteadyLog { opts, restart_bytes: opts.segment_bytes * 8, written_bytes: 0, log: None };
        steady.appender(0);
        steady
    }

    /// The appender for a call that will write about `bytes` of records.
    fn appender(&mut self, bytes: u64) -> &mut Appender {
        if self.written_bytes > self.restart_bytes {
            self.log = None;
        }
        if self.log.is_none() {
            self.written_bytes = 0;
        }
        self.written_bytes += bytes;
        let opts = self.opts;
        &mut self
            .log
            .get_or_insert_with(|| {
                let dir = scratch();
                (Appender::open(dir.path(), opts).expect("open"), dir)
            })
            .0
    }
}

/// The peers' file, opened for appending once and kept across measured calls; it is
/// truncated between calls once it passes 1 GiB.
struct SteadyFile {
    _dir: tempfile::TempDir,
    file: File,
}

impl SteadyFile {
    fn new() -> SteadyFile {
        let dir = scratch();
        let file = OpenOptions::new().append(true).create(true).open(dir.path().join("peer.log")).expect("create");
        SteadyFile { _dir: dir, file }
    }

    fn file(&self) -> &File {
        if self.file.metadata().expect("stat").len() > 1 << 30 {
            self.file.set_len(0).expect("truncate");
        }
        &self.file
    }
}

/// The peer's record framing: u32 length (LE), then the payload.
#[inline]
fn write_framed(w: &mut impl Write, payload: &[u8]) {
    w.write_all(&(payload.len() as u32).to_le_bytes()).expect("peer write");
    w.write_all(payload).expect("peer write");
}

/// Bytes of log a 100-byte record takes (32-byte header + payload padded to 8).
const STRIDE_100B: u64 = 136;

fn append_100b_never(c: &mut Criterion, scale: &Scale) {
    let payload = [0xA5u8; 100];
    let batch: Vec<&[u8]> = vec![&payload[..]; 64];
    let mut group = c.benchmark_group("append_100B_never");
    group.throughput(Throughput::Elements(1));
    let mut steady = SteadyLog::new(log_options(Durability::Never, scale.segment_bytes));
    group.bench_function("shoal", |b| {
        b.iter_custom(|iters| {
            let log = steady.appender(iters * STRIDE_100B);
            let start = Instant::now();
            for _ in 0..iters {
                black_box(log.append(&payload).expect("append"));
            }
            start.elapsed()
        })
    });
    drop(steady);
    let mut steady = SteadyLog::new(log_options(Durability::Never, scale.segment_bytes));
    group.bench_function("shoal_batch64", |b| {
        b.iter_custom(|iters| {
            let log = steady.appender(iters * STRIDE_100B);
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
    let peer = SteadyFile::new();
    group.bench_function("bufwriter", |b| {
        b.iter_custom(|iters| {
            let file = peer.file();
            let start = Instant::now();
            let mut w = BufWriter::new(file);
            for _ in 0..iters {
                write_framed(&mut w, black_box(&payload));
            }
            w.flush().expect("flush");
            start.elapsed()
        })
    });
    group.finish();
}

fn append_100b_batch_durable(c: &mut Criterion, scale: &Scale) {
    let payload = [0x5Au8; 100];
    let mut group = c.benchmark_group("append_100B_batch_durable");
    group.throughput(Throughput::Elements(1));
    let mut steady = SteadyLog::new(log_options(Durability::Batch, scale.segment_bytes));
    group.bench_function("shoal", |b| {
        b.iter_custom(|iters| {
            let log = steady.appender(iters * STRIDE_100B);
            let start = Instant::now();
            let mut last = Offset(0);
            for _ in 0..iters {
                last = log.append(&payload).expect("append");
            }
            assert!(log.wait_durable(last, None).expect("wait_durable"));
            let elapsed = start.elapsed();
            assert!(log.durable_offset() > last);
            elapsed
        })
    });
    drop(steady);
    let peer = SteadyFile::new();
    group.bench_function("bufwriter_fdatasync_1000", |b| {
        b.iter_custom(|iters| {
            let file = peer.file();
            let start = Instant::now();
            let mut w = BufWriter::new(file);
            for i in 1..=iters {
                write_framed(&mut w, black_box(&payload));
                if i % 1000 == 0 {
                    w.flush().expect("flush");
                    file.sync_data().expect("fdatasync");
                }
            }
            w.flush().expect("flush");
            file.sync_data().expect("fdatasync");
            start.elapsed()
        })
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

fn durable_latency(c: &mut Criterion, scale: &Scale) {
    let payload = [0x3Cu8; 100];
    let block = [0xC3u8; 4096];
    let mut group = c.benchmark_group("durable_latency");
    group.throughput(Throughput::Elements(1));

    let dir = scratch();
    let mut log =
        Appender::open(dir.path(), log_options(Durability::Batch, scale.segment_bytes.min(64 * MIB))).expect("open");
    let backend = log.io_backend();
    let mut shoal_hist = LatencyHistogram::new();
    group.bench_function("shoal_append_wait_durable", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let offset = log.append(&payload).expect("append");
                assert!(log.wait_durable(offset, None).expect("wait_durable"));
                let took = start.elapsed();
                shoal_hist.record(took.as_nanos() as u64);
                total += took;
            }
            total
        })
    });
    drop(log);

    // The peer appends 4 KiB blocks at the end of a plain file; the file starts over (outside
    // the measured time) after 64 MiB.
    let peer_path = dir.path().join("peer.log");
    let file = File::create(&peer_path).expect("create");
    let mut end = 0u64;
    let mut peer_hist = LatencyHistogram::new();
    group.bench_function("write_4KiB_fdatasync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if end >= 64 * MIB {
                    file.set_len(0).expect("truncate");
                    end = 0;
                }
                let start = Instant::now();
                file.write_all_at(black_box(&block), end).expect("write");
                file.sync_data().expect("fdatasync");
                let took = start.elapsed();
                end += block.len() as u64;
                peer_hist.record(took.as_nanos() as u64);
                total += took;
            }
            total
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

/// Writes a log of `payload_len`-byte records holding at least `total_bytes` of payload;
/// returns the record count and the payload bytes.
fn write_replay_log(dir: &Path, payload_len: usize, total_bytes: u64, scale: &Scale) -> (u64, u64) {
    let mut opts = log_options(Durability::Never, scale.segment_bytes);
    opts.retention = Retention::default();
    let mut log = Appender::open(dir, opts).expect("open");
    let records = total_bytes.div_ceil(payload_len as u64);
    let mut payload = vec![0u8; payload_len];
    for i in 0..records {
        payload[0] = i as u8;
        log.append(&payload).expect("append");
    }
    log.close().expect("close");
    (records, records * payload_len as u64)
}

/// One zero-copy pass over the log: every record decoded (CRC checked) and its payload
/// touched at both ends. Returns (records, fold).
fn replay_once(dir: &Path) -> (u64, u64) {
    let mut reader = Reader::open(dir).expect("open reader");
    let (mut records, mut fold) = (0u64, 0u64);
    while let Some(record) = reader.next().expect("next") {
        let p = record.payload();
        fold = fold.wrapping_add(u64::from(p[0]) ^ u64::from(p[p.len() - 1]));
        records += 1;
    }
    (records, fold)
}

fn replay(c: &mut Criterion, scale: &Scale) {
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Bytes(scale.replay_bytes));
    for (name, payload_len) in [("shoal_100B", 100usize), ("shoal_4KiB", 4096)] {
        // Written on first use (outside the measured time), so a filtered run skips it.
        let mut log: Option<(tempfile::TempDir, u64)> = None;
        group.bench_function(name, |b| {
            let (dir, records) = log.get_or_insert_with(|| {
                let dir = scratch();
                let (records, bytes) = write_replay_log(dir.path(), payload_len, scale.replay_bytes, scale);
                // Payload bytes differ from `replay_bytes` by less than one record.
                assert!(bytes - scale.replay_bytes < payload_len as u64);
                assert_eq!(replay_once(dir.path()).0, records); // and warms the page cache
                (dir, records)
            });
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let (n, fold) = replay_once(dir.path());
                    assert_eq!(n, *records);
                    black_box(fold);
                }
                start.elapsed()
            })
        });
    }
    let src = vec![0x77u8; scale.replay_bytes as usize];
    let mut dst = vec![0u8; scale.replay_bytes as usize];
    dst.copy_from_slice(&src); // touch both
    group.bench_function("memcpy", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Preallocates `len` bytes of `file` (allocated blocks, like a shoal segment).
fn fallocate(file: &File, len: u64) {
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
}

fn durable_bandwidth(c: &mut Criterion, scale: &Scale) {
    const RECORD: usize = 64 * KIB as usize;
    let payload = vec![0x99u8; RECORD];
    let mut group = c.benchmark_group("durable_bandwidth");
    group.throughput(Throughput::Bytes(RECORD as u64));
    let mut steady = SteadyLog::new(log_options(Durability::Batch, scale.segment_bytes));
    group.bench_function("shoal_64KiB_batch", |b| {
        b.iter_custom(|iters| {
            let log = steady.appender(iters * (RECORD as u64 + 32));
            let start = Instant::now();
            let mut last = Offset(0);
            for _ in 0..iters {
                last = log.append(&payload).expect("append");
            }
            assert!(log.wait_durable(last, None).expect("wait_durable"));
            start.elapsed()
        })
    });
    drop(steady);
    // An aligned buffer for O_DIRECT, carved out of a plain Vec.
    let chunk = scale.direct_write_bytes;
    let backing = vec![0x99u8; chunk + 4096];
    let at = backing.as_ptr().align_offset(4096);
    let buf = &backing[at..at + chunk];
    group.bench_function("o_direct_write_fdatasync", |b| {
        b.iter_custom(|iters| {
            let dir = scratch();
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(dir.path().join("peer.direct"))
                .expect("open O_DIRECT");
            let total = iters * RECORD as u64;
            fallocate(&file, total);
            let start = Instant::now();
            let mut at = 0u64;
            while at < total {
                let n = (total - at).min(chunk as u64) as usize;
                file.write_all_at(&buf[..n], at).expect("O_DIRECT write");
                at += n as u64;
            }
            file.sync_data().expect("fdatasync");
            start.elapsed()
        })
    });
    group.finish();
}

fn main() {
    let scale = Scale::from_args();
    print_machine(&scale);
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    append_100b_never(&mut c, &scale);
    append_100b_batch_durable(&mut c, &scale);
    durable_latency(&mut c, &scale);
    replay(&mut c, &scale);
    durable_bandwidth(&mut c, &scale);
    c.final_summary();
}
