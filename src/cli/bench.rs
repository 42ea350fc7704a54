//! `shoal bench`: measures shoal on this machine next to the machine's own baselines,
//! measured in the same run, and prints each figure, its baseline and their ratio.
//!
//! # What is measured
//! | figure | shoal | baseline |
//! | --- | --- | --- |
//! | ring hop | `u64`s through a ring, `BusySpin`, `push_wait`/`pop_wait` | raw `rtrb` with spinning `push`/`pop` |
//! | ring hop, batched | `reserve`/`commit` and `read`/`commit`, batches of up to 256 | rtrb `write_chunk_uninit`/`read_chunk` |
//! | append `Never` | 100-byte `append`s | a `BufWriter<File>` writing the same records, each prefixed by a u32 length |
//! | append `Interval` | 100-byte `append`s, timed until the last is durable | the `BufWriter` with an fdatasync every 1000 records and at the end |
//! | append `Batch` | 100-byte `append`s, timed until the last is durable | the same `BufWriter`, and a bare `write` + fdatasync per record |
//! | durable latency | one 100-byte append, then `wait_durable` (p50, p99) | a 4 KiB `write` at the end of a file + fdatasync (p50, p99) |
//! | durable bandwidth | 64 KiB records, `Batch`, timed until durable | `O_DIRECT` sequential 1 MiB writes (aligned buffer, preallocated file) + fdatasync |
//! | replay | zero-copy [`Reader`](shoal::log::Reader) over 100 B and 4 KiB records, every record checked and its payload touched | `memcpy` of as many bytes between two touched buffers |
//!
//! Every figure is measured by the kernels in `benches/kernels/` (included here with
//! `#[path]`), the same code that the criterion benches `benches/ring.rs` and
//! `benches/log.rs` run; this file only chooses sizes, interleaves rounds and reports.
//! The ring's two threads are pinned to two different usable CPUs (`shoal::affinity`) and
//! timed from the moment both run until the consumer has the last value; rtrb gets the same
//! pinning. Each append and bandwidth figure keeps one log open across its rounds (with
//! retention, so segments are prepared, rolled over and deleted at their steady-state rate
//! inside the timed part; it starts over, between rounds, every eight segments) after an
//! uncounted warm-up round, and the buffered baselines append to one file kept open likewise;
//! each O_DIRECT round writes a fresh preallocated file. Opening and set-up are outside the
//! timed part.
//!
//! # Noise
//! These machines are shared: every measurement runs [`Scale::repeats`] times, shoal and its
//! baseline interleaved within each round so that both see the same neighbours, and the
//! median of the rounds is reported. Ratios are ratios of the medians. Latency percentiles
//! come from one histogram per side, filled over interleaved rounds.
//!
//! # Ratios
//! For rates the ratio is shoal / baseline; for latencies it is baseline / shoal. Either way
//! a ratio above 1 means shoal is better. The table also shows the goal from the performance
//! budget (ARCHITECTURE.md) where there is one; those goals are for release builds.

use std::ffi::CStr;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{stdout_failed, Error};
use shoal::log::{Appender, Durability};
use shoal::metrics::{format_ns, LatencyHistogram};

#[path = "../../benches/kernels/mod.rs"]
mod kernels;

use kernels::fs::{
    self as kfs, file_system, AlignedBuf, BlockFile, SteadyFile, BLOCK_BYTES, DIRECT_WRITE_BYTES, SYNC_EVERY_RECORDS,
};
use kernels::log::{self as klog, log_options, SteadyLog, LARGE_RECORD_BYTES, SMALL_RECORD_BYTES};
use kernels::ring::{self as kring, RING_BATCH_MAX, RING_CAPACITY};
use kernels::KernelError;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// The `Interval` durability measured.
const INTERVAL: Duration = Duration::from_millis(10);

/// Sizes of one run: `--quick` (a few seconds, even for a debug build) or the default
/// (about half a minute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Scale {
    /// Rounds of every measurement; the median is reported.
    repeats: usize,
    /// Values moved by one ring run.
    ring_values: u64,
    /// 100-byte records appended by one append run (shoal and the buffered baselines).
    small_records: u64,
    /// Records of one run of the write + fdatasync-per-record baseline.
    sync_each_records: u64,
    /// Samples of each side of the durable-latency figure, over all rounds.
    latency_samples: u64,
    /// Bytes written by one durable-bandwidth run (each side).
    durable_bytes: u64,
    /// Payload bytes of each replayed log, and bytes copied by the memcpy baseline.
    replay_bytes: u64,
    /// Segment size of the logs.
    segment_bytes: u64,
}

impl Scale {
    fn new(quick: bool) -> Scale {
        if quick {
            Scale {
                repeats: 3,
                ring_values: 1 << 16,
                small_records: 20_000,
                sync_each_records: 30,
                latency_samples: 60,
                durable_bytes: 4 * MIB as u64,
                replay_bytes: 4 * MIB as u64,
                segment_bytes: 4 * MIB as u64,
            }
        } else {
            Scale {
                repeats: 7,
                ring_values: 1 << 24,
                small_records: 2_000_000,
                sync_each_records: 500,
                latency_samples: 3_000,
                durable_bytes: 256 * MIB as u64,
                replay_bytes: 256 * MIB as u64,
                segment_bytes: 64 * MIB as u64,
            }
        }
    }
}

/// Runs `shoal bench`: see the module doc.
pub(super) fn run(quick: bool, json: bool, dir: Option<&Path>) -> Result<ExitCode, Error> {
    let scale = Scale::new(quick);
    let scratch_root = bench_root(dir)?;
    let root = scratch_root.path();
    let machine = Machine::probe(root);
    note(&format!(
        "shoal bench: {} build, {} cpus{}, scratch {} on {}; {} rounds per figure, medians reported",
        machine.build,
        machine.cpus,
        machine.pinned.map_or_else(|| ", threads not pinned".to_string(), |(a, b)| format!(", pinned to {a} and {b}")),
        root.display(),
        machine.filesystem,
        scale.repeats
    ));
    if file_system(root).in_memory {
        note(&format!(
            "shoal bench: {} is in memory ({}): the durability figures there mean nothing; pass --dir on a disk",
            root.display(),
            machine.filesystem
        ));
    }
    if cfg!(debug_assertions) {
        note("shoal bench: this is a debug build; its figures say little about shoal (use --release)");
    }

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut phase = |name: &str, measured: Result<Vec<Row>, Error>| -> Result<(), Error> {
        rows.extend(measured?);
        note(&format!("shoal bench: {name} measured ({:.1} s in all)", started.elapsed().as_secs_f64()));
        Ok(())
    };
    phase("ring hop", ring_rows(&scale, machine.pinned))?;
    phase("log append", append_rows(&scale, root))?;
    phase("durable latency", latency_rows(&scale, root))?;
    phase("durable bandwidth", bandwidth_rows(&scale, root))?;
    phase("replay", replay_rows(&scale, root))?;
    drop(scratch_root);

    let text = if json { to_json(&rows, &machine, &scale).to_string() } else { to_table(&rows, &machine, &scale) };
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        return stdout_failed(e);
    }
    Ok(ExitCode::SUCCESS)
}

// --- figures, medians, ratios ----------------------------------------------------------------

/// The median of `values` (the mean of the two middle ones for an even count); 0 when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `numerator / denominator`, with the denominator kept above zero so that the ratio stays
/// finite (every figure here is positive: rates and latencies have a floor of one unit).
fn ratio(numerator: f64, denominator: f64) -> f64 {
    numerator / denominator.max(f64::MIN_POSITIVE)
}

/// Items per second, with the elapsed time floored at 1 ns.
fn per_s(items: u64, took: Duration) -> f64 {
    items as f64 / took.as_secs_f64().max(1e-9)
}

/// The unit of a figure, which also says how it is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// Values per second (ring).
    Values,
    /// Records per second (log).
    Records,
    /// Nanoseconds (latency; lower is better).
    Ns,
    /// 10^6 bytes per second.
    MBps,
    /// 10^9 bytes per second.
    GBps,
}

impl Unit {
    fn show(self, value: f64) -> String {
        match self {
            Unit::Values => format!("{} values/s", si(value)),
            Unit::Records => format!("{} records/s", si(value)),
            Unit::Ns => format_ns(value as u64),
            Unit::MBps => format!("{value:.0} MB/s"),
            Unit::GBps => format!("{value:.2} GB/s"),
        }
    }
}

/// `3.21 M`, `45.6 k`, `812`: three significant figures or so.
fn si(value: f64) -> String {
    if value >= 1e9 {
        format!("{:.2} G", value / 1e9)
    } else if value >= 1e6 {
        format!("{:.2} M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1} k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// One measured figure: its JSON key (unit last), what it is, its value.
#[derive(Clone, Debug)]
struct Figure {
    key: &'static str,
    name: &'static str,
    value: f64,
    unit: Unit,
}

/// What the performance budget asks of a row.
#[derive(Clone, Copy, Debug)]
enum Goal {
    /// No goal in the budget.
    None,
    /// The ratio at least this.
    Ratio(f64),
    /// Shoal's figure at least this (in the figure's unit).
    AtLeast(f64),
}

/// One line of the report: shoal's figure, the baseline's, and their ratio.
#[derive(Clone, Debug)]
struct Row {
    what: &'static str,
    shoal: Figure,
    baseline: Figure,
    /// JSON key of the ratio.
    ratio_key: &'static str,
    goal: Goal,
}

impl Row {
    /// Shoal over the baseline for rates, the baseline over shoal for latencies: above 1
    /// means shoal is better.
    fn ratio(&self) -> f64 {
        if self.shoal.unit == Unit::Ns {
            ratio(self.baseline.value, self.shoal.value)
        } else {
            ratio(self.shoal.value, self.baseline.value)
        }
    }

    /// The goal as text, and whether this run met it.
    fn goal_text(&self) -> String {
        let (text, met) = match self.goal {
            Goal::None => return "-".into(),
            Goal::Ratio(r) => (format!(">= {r:.2}x"), self.ratio() >= r),
            Goal::AtLeast(v) => (format!(">= {}", self.shoal.unit.show(v)), self.shoal.value >= v),
        };
        format!("{text} {}", if met { "met" } else { "MISSED" })
    }
}

/// Facts about the machine and the bench directory.
#[derive(Clone, Debug)]
struct Machine {
    cpus: usize,
    usable_cpus: Vec<usize>,
    pinned: Option<(usize, usize)>,
    cpu_model: String,
    kernel: String,
    filesystem: String,
    dir: PathBuf,
    clocksource: String,
    build: &'static str,
}

impl Machine {
    fn probe(dir: &Path) -> Machine {
        let usable_cpus = shoal::affinity::usable_cpus().unwrap_or_default();
        let pinned = kring::cpu_pair();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let clocksource = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
        Machine {
            cpus: thread::available_parallelism().map_or(0, |n| n.get()),
            usable_cpus,
            pinned,
            cpu_model,
            kernel: kernel_release(),
            filesystem: file_system(dir).name,
            dir: dir.to_path_buf(),
            clocksource,
            build: if cfg!(debug_assertions) { "debug" } else { "release" },
        }
    }
}

/// The kernel release from `uname(2)`.
fn kernel_release() -> String {
    // SAFETY: `utsname` is plain old data; all-zero is a valid value that the call overwrites.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a pointer to a utsname we own.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates every field within its array, and `uts` outlives the CStr.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

// --- the scratch directory -------------------------------------------------------------------

/// The directory that holds every scratch log and file of the run (removed at the end): a
/// new `shoal-bench-*` directory in `dir` when given, else in the system's temporary
/// directory, or in `/var/tmp` when that one lives in memory.
fn bench_root(dir: Option<&Path>) -> Result<tempfile::TempDir, Error> {
    let parent = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::new(format!("{}: creating the bench directory failed: {e}", dir.display())))?;
            dir.to_path_buf()
        }
        None => {
            let tmp = std::env::temp_dir();
            let var_tmp = PathBuf::from("/var/tmp");
            let tmp_fs = file_system(&tmp);
            if !tmp_fs.in_memory {
                tmp
            } else if var_tmp.is_dir() && !file_system(&var_tmp).in_memory {
                var_tmp
            } else {
                return Err(Error::new(format!(
                    "{} is in memory ({}), so durability figures there would mean nothing; pass --dir on a disk",
                    tmp.display(),
                    tmp_fs.name
                )));
            }
        }
    };
    tempfile::Builder::new()
        .prefix("shoal-bench-")
        .tempdir_in(&parent)
        .map_err(|e| Error::new(format!("{}: creating a scratch directory failed: {e}; pass --dir", parent.display())))
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Error {
        Error::new(e.to_string())
    }
}

/// One progress line on stderr (ignored when stderr is gone).
fn note(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

// --- ring hop --------------------------------------------------------------------------------

fn ring_rows(scale: &Scale, cpus: Option<(usize, usize)>) -> Result<Vec<Row>, Error> {
    // Two spinning threads sharing one CPU hand over once per time slice: keep that short.
    let n = if cpus.is_some() { scale.ring_values } else { (scale.ring_values / 64).max(RING_CAPACITY as u64) };
    let (mut shoal, mut rtrb, mut shoal_b, mut rtrb_b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..scale.repeats {
        shoal.push(per_s(n, kring::hop_one_shoal(n, cpus)?));
        rtrb.push(per_s(n, kring::hop_one_rtrb(n, cpus)?));
        shoal_b.push(per_s(n, kring::hop_batched_shoal(n, cpus)?));
        rtrb_b.push(per_s(n, kring::hop_batched_rtrb(n, cpus)?));
    }
    let fig = |key, name, v: &[f64]| Figure { key, name, value: median(v), unit: Unit::Values };
    Ok(vec![
        Row {
            what: "ring hop, one at a time",
            shoal: fig("ring_hop_values_per_s", "shoal ring", &shoal),
            baseline: fig("rtrb_hop_values_per_s", "raw rtrb", &rtrb),
            ratio_key: "ring_hop_vs_rtrb",
            goal: Goal::Ratio(0.9),
        },
        Row {
            what: "ring hop, batches of 256",
            shoal: fig("ring_hop_batched_values_per_s", "shoal ring", &shoal_b),
            baseline: fig("rtrb_hop_batched_values_per_s", "raw rtrb chunks", &rtrb_b),
            ratio_key: "ring_hop_batched_vs_rtrb",
            goal: Goal::Ratio(0.9),
        },
    ])
}

// --- log append ------------------------------------------------------------------------------

fn append_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let payload = [0xA5u8; SMALL_RECORD_BYTES];
    let n = scale.small_records;
    let each = scale.sync_each_records;
    let mut never = SteadyLog::open(root, log_options(Durability::Never, scale.segment_bytes))?;
    let mut interval = SteadyLog::open(root, log_options(Durability::Interval(INTERVAL), scale.segment_bytes))?;
    let mut batch = SteadyLog::open(root, log_options(Durability::Batch, scale.segment_bytes))?;
    let peer = SteadyFile::open(root)?;
    let mut rates: [Vec<f64>; 6] = Default::default();
    // Round 0 warms the logs up (segments prepared and recycled) and is not counted.
    for round in 0..=scale.repeats {
        let took = [
            klog::append(&mut never, &payload, n)?,
            kfs::bufwriter(&peer, &payload, n, None)?,
            klog::append(&mut interval, &payload, n)?,
            klog::append(&mut batch, &payload, n)?,
            kfs::bufwriter(&peer, &payload, n, Some(SYNC_EVERY_RECORDS))?,
            kfs::write_fdatasync_each(&peer, &payload, each)?,
        ];
        if round > 0 {
            for (i, took) in took.into_iter().enumerate() {
                rates[i].push(per_s(if i == 5 { each } else { n }, took));
            }
        }
    }
    let fig = |key, name, i: usize| Figure { key, name, value: median(&rates[i]), unit: Unit::Records };
    let never = fig("append_never_records_per_s", "append, Never", 0);
    let bufwriter = fig("bufwriter_records_per_s", "BufWriter", 1);
    let interval = fig("append_interval_records_per_s", "append, Interval(10 ms), until durable", 2);
    let batch = fig("append_batch_records_per_s", "append, Batch, until durable", 3);
    let bufwriter_sync = fig("bufwriter_fdatasync_1000_records_per_s", "BufWriter, fdatasync every 1000", 4);
    let sync_each = fig("fdatasync_each_records_per_s", "write + fdatasync each record", 5);
    Ok(vec![
        Row {
            what: "append 100 B, Never",
            shoal: never,
            baseline: bufwriter,
            ratio_key: "append_never_vs_bufwriter",
            goal: Goal::Ratio(3.0),
        },
        Row {
            what: "append 100 B, Interval(10 ms), until durable",
            shoal: interval,
            baseline: bufwriter_sync.clone(),
            ratio_key: "append_interval_vs_bufwriter_fdatasync_1000",
            goal: Goal::None,
        },
        Row {
            what: "append 100 B, Batch, until durable",
            shoal: batch.clone(),
            baseline: bufwriter_sync,
            ratio_key: "append_batch_vs_bufwriter_fdatasync_1000",
            goal: Goal::Ratio(5.0),
        },
        Row {
            what: "append 100 B, Batch, until durable",
            shoal: batch,
            baseline: sync_each,
            ratio_key: "append_batch_vs_fdatasync_each",
            goal: Goal::None,
        },
    ])
}

// --- durable latency -------------------------------------------------------------------------

fn latency_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let payload = [0x3Cu8; SMALL_RECORD_BYTES];
    let block = [0xC3u8; BLOCK_BYTES];
    let dir = kfs::scratch(root)?;
    let mut log = Appender::open(dir.path().join("log"), log_options(Durability::Batch, scale.segment_bytes))?;
    let mut peer = BlockFile::create(dir.path())?;
    let (mut shoal, mut baseline) = (LatencyHistogram::new(), LatencyHistogram::new());
    let per_round = scale.latency_samples.div_ceil(scale.repeats as u64);
    for _ in 0..scale.repeats {
        for _ in 0..per_round {
            shoal.record(klog::durable_latency(&mut log, &payload)?.as_nanos() as u64);
        }
        for _ in 0..per_round {
            baseline.record(kfs::fdatasync_latency(&mut peer, &block)?.as_nanos() as u64);
        }
    }
    log.close()?;
    let fig = |key, name, h: &LatencyHistogram, q| Figure { key, name, value: h.quantile_ns(q) as f64, unit: Unit::Ns };
    Ok(vec![
        Row {
            what: "durable latency p50",
            shoal: fig("durable_latency_p50_ns", "append + wait_durable", &shoal, 0.5),
            baseline: fig("fdatasync_4kib_p50_ns", "write 4 KiB + fdatasync", &baseline, 0.5),
            ratio_key: "durable_latency_p50_vs_fdatasync_4kib",
            goal: Goal::None,
        },
        Row {
            what: "durable latency p99",
            shoal: fig("durable_latency_p99_ns", "append + wait_durable", &shoal, 0.99),
            baseline: fig("fdatasync_4kib_p99_ns", "write 4 KiB + fdatasync", &baseline, 0.99),
            ratio_key: "durable_latency_p99_vs_fdatasync_4kib",
            goal: Goal::Ratio(1.0 / 1.5),
        },
    ])
}

// --- durable bandwidth -----------------------------------------------------------------------

fn bandwidth_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let buf = AlignedBuf::new(DIRECT_WRITE_BYTES, 0x99);
    let payload = vec![0x99u8; LARGE_RECORD_BYTES];
    let records = scale.durable_bytes / LARGE_RECORD_BYTES as u64;
    let mut steady = SteadyLog::open(root, log_options(Durability::Batch, scale.segment_bytes))?;
    let (mut shoal, mut direct) = (Vec::new(), Vec::new());
    // Round 0 warms the log up (segments prepared and recycled) and is not counted.
    for round in 0..=scale.repeats {
        let s = klog::append(&mut steady, &payload, records)?;
        let d = kfs::o_direct_write(root, buf.as_slice(), scale.durable_bytes)
            .map_err(|e| Error::new(format!("{e}; pass --dir on another file system")))?;
        if round > 0 {
            shoal.push(per_s(records * LARGE_RECORD_BYTES as u64, s) / 1e6);
            direct.push(per_s(scale.durable_bytes, d) / 1e6);
        }
    }
    Ok(vec![Row {
        what: "durable bandwidth, 64 KiB records",
        shoal: Figure {
            key: "durable_64kib_mb_per_s",
            name: "append, Batch, until durable",
            value: median(&shoal),
            unit: Unit::MBps,
        },
        baseline: Figure {
            key: "o_direct_fdatasync_mb_per_s",
            name: "O_DIRECT write + fdatasync",
            value: median(&direct),
            unit: Unit::MBps,
        },
        ratio_key: "durable_64kib_vs_o_direct",
        goal: Goal::Ratio(0.7),
    }])
}

// --- replay ----------------------------------------------------------------------------------

fn replay_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let small_dir = kfs::scratch(root)?;
    let large_dir = kfs::scratch(root)?;
    let (small_records, small_bytes) =
        klog::write_replay_log(small_dir.path(), scale.segment_bytes, SMALL_RECORD_BYTES, scale.replay_bytes)?;
    let (large_records, large_bytes) =
        klog::write_replay_log(large_dir.path(), scale.segment_bytes, 4 * KIB, scale.replay_bytes)?;
    // A first pass of each warms the page cache and the mappings, as memcpy's buffers are.
    klog::replay(small_dir.path(), small_records)?;
    klog::replay(large_dir.path(), large_records)?;
    let src = vec![0x77u8; scale.replay_bytes as usize];
    let mut dst = vec![0u8; scale.replay_bytes as usize];
    dst.copy_from_slice(&src);
    let (mut small, mut large, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..scale.repeats {
        small.push(per_s(small_bytes, klog::replay(small_dir.path(), small_records)?) / 1e9);
        large.push(per_s(large_bytes, klog::replay(large_dir.path(), large_records)?) / 1e9);
        copy.push(per_s(scale.replay_bytes, kfs::memcpy(&mut dst, &src)) / 1e9);
    }
    let memcpy = Figure { key: "memcpy_gb_per_s", name: "memcpy", value: median(&copy), unit: Unit::GBps };
    Ok(vec![
        Row {
            what: "replay, 100 B records",
            shoal: Figure { key: "replay_100b_gb_per_s", name: "Reader", value: median(&small), unit: Unit::GBps },
            baseline: memcpy.clone(),
            ratio_key: "replay_100b_vs_memcpy",
            goal: Goal::None,
        },
        Row {
            what: "replay, 4 KiB records",
            shoal: Figure { key: "replay_4kib_gb_per_s", name: "Reader", value: median(&large), unit: Unit::GBps },
            baseline: memcpy,
            ratio_key: "replay_4kib_vs_memcpy",
            goal: Goal::AtLeast(5.0),
        },
    ])
}

// --- output ----------------------------------------------------------------------------------

/// The rows as a table for people.
fn to_table(rows: &[Row], machine: &Machine, scale: &Scale) -> String {
    let header = ["figure", "shoal", "baseline", "ratio", "goal"];
    let mut cells: Vec<[String; 5]> = vec![header.map(String::from)];
    for row in rows {
        cells.push([
            row.what.to_string(),
            row.shoal.unit.show(row.shoal.value),
            format!("{}: {}", row.baseline.name, row.baseline.unit.show(row.baseline.value)),
            format!("{:.2}x", row.ratio()),
            row.goal_text(),
        ]);
    }
    let mut widths = [0usize; 5];
    for line in &cells {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "shoal bench: {} build; {} cpus ({}); kernel {}; clocksource {}; {} on {}; median of {} rounds\n\n",
        machine.build,
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.clocksource,
        machine.dir.display(),
        machine.filesystem,
        scale.repeats
    );
    for line in &cells {
        let text: Vec<String> = line.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(
        "\nratio: shoal / baseline for rates, baseline / shoal for latencies; above 1 means shoal is better.\n\
         ring threads ",
    );
    out.push_str(&machine.pinned.map_or_else(
        || "not pinned (fewer than two usable cpus)".to_string(),
        |(a, b)| format!("pinned to cpus {a} and {b}"),
    ));
    out.push_str(&format!("; Interval is {} ms; goals are the performance budget's.", INTERVAL.as_millis()));
    out
}

/// The rows, machine facts and sizes as one JSON object.
fn to_json(rows: &[Row], machine: &Machine, scale: &Scale) -> Value {
    let mut obj = Map::new();
    for row in rows {
        obj.insert(row.shoal.key.into(), json!(row.shoal.value));
        obj.insert(row.baseline.key.into(), json!(row.baseline.value));
        obj.insert(row.ratio_key.into(), json!(row.ratio()));
    }
    obj.insert(
        "ratio_convention".into(),
        json!("shoal / baseline for rates, baseline / shoal for latencies; above 1 means shoal is better"),
    );
    obj.insert(
        "machine".into(),
        json!({
            "cpus": machine.cpus,
            "usable_cpus": machine.usable_cpus,
            "pinned_cpus": machine.pinned.map(|(a, b)| vec![a, b]),
            "cpu_model": machine.cpu_model,
            "kernel": machine.kernel,
            "filesystem": machine.filesystem,
            "bench_dir": machine.dir.display().to_string(),
            "clocksource": machine.clocksource,
            "build": machine.build,
        }),
    );
    obj.insert(
        "settings".into(),
        json!({
            "repeats": scale.repeats,
            "ring_values": scale.ring_values,
            "ring_capacity": RING_CAPACITY,
            "ring_batch_max": RING_BATCH_MAX,
            "small_record_bytes": SMALL_RECORD_BYTES,
            "small_records": scale.small_records,
            "fdatasync_each_records": scale.sync_each_records,
            "interval_ms": INTERVAL.as_millis() as u64,
            "latency_samples": scale.latency_samples,
            "large_record_bytes": LARGE_RECORD_BYTES,
            "durable_bytes": scale.durable_bytes,
            "replay_bytes": scale.replay_bytes,
            "segment_bytes": scale.segment_bytes,
        }),
    );
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[1.0, 100.0, 2.0, 3.0, 1e9]), 3.0);
    }

    #[test]
    fn ratios_stay_finite_and_favour_shoal_above_one() {
        assert_eq!(ratio(6.0, 3.0), 2.0);
        assert!(ratio(1.0, 0.0).is_finite());
        assert_eq!(per_s(10, Duration::from_secs(2)), 5.0);
        assert!(per_s(10, Duration::ZERO).is_finite());
        let fig = |value, unit| Figure { key: "k", name: "n", value, unit };
        // A rate: shoal twice as fast.
        let rate = Row {
            what: "w",
            shoal: fig(200.0, Unit::Records),
            baseline: fig(100.0, Unit::Records),
            ratio_key: "r",
            goal: Goal::Ratio(3.0),
        };
        assert_eq!(rate.ratio(), 2.0);
        assert_eq!(rate.goal_text(), ">= 3.00x MISSED");
        // A latency: shoal takes half the time, so it is also 2x better.
        let latency = Row { shoal: fig(50.0, Unit::Ns), baseline: fig(100.0, Unit::Ns), goal: Goal::None, ..rate };
        assert_eq!(latency.ratio(), 2.0);
        assert_eq!(latency.goal_text(), "-");
    }

    #[test]
    fn units_read_well() {
        assert_eq!(Unit::Records.show(3_210_000.0), "3.21 M records/s");
        assert_eq!(Unit::Values.show(1.5e9), "1.50 G values/s");
        assert_eq!(Unit::Records.show(6_900.0), "6.9 k records/s");
        assert_eq!(Unit::Ns.show(150_000.0), "150.0 us");
        assert_eq!(Unit::GBps.show(5.123), "5.12 GB/s");
    }

    #[test]
    fn quick_is_smaller_than_default() {
        let (quick, full) = (Scale::new(true), Scale::new(false));
        assert!(quick.ring_values < full.ring_values && quick.small_records < full.small_records);
        assert!(quick.durable_bytes % DIRECT_WRITE_BYTES as u64 == 0 && full.durable_bytes % (4 * KIB) as u64 == 0);
    }
}
