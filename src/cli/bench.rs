//! `shoal bench`: measures shoal on this machine next to the machine's own baselines,
//! measured in the same run, and prints each figure, its baseline and their ratio.
//!
//! # What is measured
//! | figure | shoal | baseline | goal |
//! | --- | --- | --- | --- |
//! | ring hop | `u64`s through a ring, `BusySpin`, `push_wait`/`pop_wait` | raw `rtrb` with spinning `push`/`pop` | >= 0.9x |
//! | ring hop, batched | `reserve`/`commit` and `read`/`commit`, batches of up to 256 | rtrb `write_chunk_uninit`/`read_chunk` | >= 0.9x |
//! | append `Never` | 100-byte `append`s | a 64 KiB `BufWriter` over a fresh `File` writing the same records, each prefixed by a u32 length | >= 2x |
//! | `append_batch` `Never` | 100-byte records, `append_batch` of 64 | the same `BufWriter` | >= the `append` row's ratio |
//! | close | the close (what dropping the appender costs) after each `Never` run, p50 and max | - | <= 5 ms |
//! | append `Interval` | 100-byte `append`s, timed until the last is durable | the `BufWriter` with an fdatasync every 1000 records and at the end | - |
//! | append `Batch` | 100-byte `append`s, timed until the last is durable | the same `BufWriter`, and a bare `write` + fdatasync per record | >= 5x the `BufWriter` |
//! | durable latency | one 4 KiB append, then `wait_durable` (p50, p99) | a 4 KiB `pwrite` at the end of a file + fdatasync (p50, p99) | p50 <= 1.1x, p99 <= 1.3x the baseline's |
//! | durable bandwidth | 64 KiB records, `Batch`, timed until durable | `O_DIRECT` sequential 1 MiB writes (aligned buffer, preallocated file) + fdatasync | >= 0.7x |
//! | replay | [`Reader::open`](shoal::log::Reader::open) and every 100-byte record read zero-copy (checksum checked), its payload touched; page cache warm | a 1 MiB `BufReader` parsing the `BufWriter`'s file of the same records, each payload touched | >= 1.5x and >= 5 GB/s |
//! | `shoal produce` | `shoal produce <fresh dir> --durability never` (and `batch`) fed lines of ~100 bytes from a file on stdin, spawn to exit | a hand-written program reading stdin with `BufRead` into a `BufWriter` of length-prefixed records (for `batch`, an fdatasync every 1000 lines and at the end) | `never` >= 1x, `batch` >= 2x |
//!
//! Every figure is measured by the kernels in `benches/kernels/` (included here with
//! `#[path]`), the same code that the criterion benches `benches/ring.rs` and
//! `benches/log.rs` run; this file only chooses sizes, interleaves rounds and reports.
//! The ring's two threads are pinned to two different usable CPUs (`shoal::affinity`) and
//! timed from the moment both run until the consumer has the last value; rtrb gets the same
//! pinning. Every log and file figure is measured as a user would see it: each run starts
//! from a fresh, empty directory and is timed from the open (the file's creation, the
//! process's spawn) to the close (the exit), so that shoal's open, rollovers, segment
//! preparation and close count, as do the baseline's creation, flush and close. The logs
//! use the default options, with the durability measured. A replay reads a log and a file
//! written before its rounds and read once to warm the page cache. The `shoal produce`
//! rows run this binary: `shoal produce` itself, and as the baseline this binary again with
//! the environment variable `SHOAL_BENCH_LINES_PEER` set, which makes `shoal bench` that
//! hand-written program and nothing else.
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
use shoal::log::{Durability, LogOptions};
use shoal::metrics::{format_ns, LatencyHistogram};

#[path = "../../benches/kernels/mod.rs"]
mod kernels;

use kernels::fs::{self as kfs, file_system, AlignedBuf, BLOCK_BYTES, DIRECT_WRITE_BYTES, SYNC_EVERY_RECORDS};
use kernels::log::{
    self as klog, log_options, AppendCalls, APPEND_BATCH_RECORDS, LARGE_RECORD_BYTES, LATENCY_RECORD_BYTES,
    SMALL_RECORD_BYTES,
};
use kernels::produce::{self as kproduce, LINES_PEER_ENV};
use kernels::ring::{self as kring, RING_BATCH_MAX, RING_CAPACITY};
use kernels::KernelError;

const MIB: usize = 1 << 20;

/// The `Interval` durability measured.
const INTERVAL: Duration = Duration::from_millis(10);

/// Sizes of one run: `--quick` (a few seconds, even for a debug build) or the default
/// (two to five minutes on a 2-vCPU machine, the most where fdatasync is slow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Scale {
    /// Rounds of every measurement; the median is reported.
    repeats: usize,
    /// Values moved by one ring run.
    ring_values: u64,
    /// 100-byte records of one `Never` append run (shoal and the `BufWriter`).
    never_records: u64,
    /// 100-byte records of one durable append run (shoal and the syncing `BufWriter`).
    durable_records: u64,
    /// Records of one run of the write + fdatasync-per-record baseline.
    sync_each_records: u64,
    /// Samples of each side of the durable-latency figure in each round (one run).
    latency_samples: u64,
    /// Bytes written by one durable-bandwidth run (each side).
    durable_bytes: u64,
    /// Payload bytes of the replayed log and of the baseline's file.
    replay_bytes: u64,
    /// Lines fed to one `shoal produce` run (each side).
    produce_lines: u64,
    /// Segment size of the logs (the default one, but for `--quick`).
    segment_bytes: u64,
    /// Whether each `shoal produce` run's output is read back and counted.
    check: bool,
}

impl Scale {
    fn new(quick: bool) -> Scale {
        if quick {
            Scale {
                repeats: 3,
                ring_values: 1 << 16,
                never_records: 20_000,
                durable_records: 20_000,
                sync_each_records: 30,
                latency_samples: 20,
                durable_bytes: 4 * MIB as u64,
                replay_bytes: 4 * MIB as u64,
                produce_lines: 20_000,
                segment_bytes: MIB as u64,
                check: true,
            }
        } else {
            Scale {
                repeats: 7,
                ring_values: 1 << 24,
                never_records: 4_000_000,
                durable_records: 1_000_000,
                sync_each_records: 500,
                latency_samples: 430,
                durable_bytes: 256 * MIB as u64,
                replay_bytes: 256 * MIB as u64,
                produce_lines: 2_000_000,
                segment_bytes: LogOptions::default().segment_bytes,
                check: false,
            }
        }
    }
}

/// Runs `shoal bench`: see the module doc.
pub(super) fn run(quick: bool, json: bool, dir: Option<&Path>) -> Result<ExitCode, Error> {
    // The baseline program of the `shoal produce` rows: be that and nothing else.
    if let Some(spec) = std::env::var_os(LINES_PEER_ENV) {
        kproduce::lines_peer(&spec.to_string_lossy())?;
        return Ok(ExitCode::SUCCESS);
    }
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
    phase("shoal produce", produce_rows(&scale, root))?;
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
    /// Input lines per second (`shoal produce`).
    Lines,
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
            Unit::Lines => format!("{} lines/s", si(value)),
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
    /// The ratio at least this, which is another row's ratio (named).
    RatioOf(f64, &'static str),
    /// The ratio at least the first, and shoal's figure at least the second (in its unit).
    RatioAndAtLeast(f64, f64),
    /// Shoal's figure at most this (in its unit).
    AtMost(f64),
}

/// The baseline of a row and the JSON key of shoal's ratio to it.
#[derive(Clone, Debug)]
struct Versus {
    baseline: Figure,
    ratio_key: &'static str,
}

/// One line of the report: shoal's figure, the baseline's and their ratio, or shoal's alone
/// against a goal of its own.
#[derive(Clone, Debug)]
struct Row {
    what: String,
    shoal: Figure,
    versus: Option<Versus>,
    goal: Goal,
}

impl Row {
    /// A row of shoal's figure next to `baseline`.
    fn versus(what: impl Into<String>, shoal: Figure, baseline: Figure, ratio_key: &'static str, goal: Goal) -> Row {
        Row { what: what.into(), shoal, versus: Some(Versus { baseline, ratio_key }), goal }
    }

    /// Shoal over the baseline for rates, the baseline over shoal for latencies: above 1
    /// means shoal is better. `None` without a baseline.
    fn ratio(&self) -> Option<f64> {
        let base = self.versus.as_ref()?.baseline.value;
        Some(if self.shoal.unit == Unit::Ns { ratio(base, self.shoal.value) } else { ratio(self.shoal.value, base) })
    }

    /// The goal as text, and whether this run met it.
    fn goal_text(&self) -> String {
        let r = self.ratio().unwrap_or(0.0);
        let (text, met) = match self.goal {
            Goal::None => return "-".into(),
            Goal::Ratio(g) => (format!(">= {g:.2}x"), r >= g),
            Goal::RatioOf(g, of) => (format!(">= {g:.2}x ({of})"), r >= g),
            Goal::RatioAndAtLeast(g, v) => {
                (format!(">= {g:.2}x and >= {}", self.shoal.unit.show(v)), r >= g && self.shoal.value >= v)
            }
            Goal::AtMost(v) => (format!("<= {}", self.shoal.unit.show(v)), self.shoal.value <= v),
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
        let usable_cpus = shoal::affinity::allowed_cpus();
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
        Row::versus(
            "ring hop, one at a time",
            fig("ring_hop_values_per_s", "shoal ring", &shoal),
            fig("rtrb_hop_values_per_s", "raw rtrb", &rtrb),
            "ring_hop_vs_rtrb",
            Goal::Ratio(0.9),
        ),
        Row::versus(
            "ring hop, batches of 256",
            fig("ring_hop_batched_values_per_s", "shoal ring", &shoal_b),
            fig("rtrb_hop_batched_values_per_s", "raw rtrb chunks", &rtrb_b),
            "ring_hop_batched_vs_rtrb",
            Goal::Ratio(0.9),
        ),
    ])
}

// --- log append ------------------------------------------------------------------------------

/// The goal of the close after a `Never` run, p50 and max, in ns.
const CLOSE_GOAL_NS: f64 = 5e6;

fn append_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let payload = [0xA5u8; SMALL_RECORD_BYTES];
    let (n, durable, each) = (scale.never_records, scale.durable_records, scale.sync_each_records);
    let seg = scale.segment_bytes;
    let (never, interval, batch) = (
        log_options(Durability::Never, seg),
        log_options(Durability::Interval(INTERVAL), seg),
        log_options(Durability::Batch, seg),
    );
    let mut close = LatencyHistogram::new();
    let mut rates: [Vec<f64>; 7] = Default::default();
    // Round 0 warms the caches and the file system up and is not counted.
    for round in 0..=scale.repeats {
        let one = klog::append_run(root, never, &payload, n, AppendCalls::One)?;
        let batched = klog::append_run(root, never, &payload, n, AppendCalls::Batch)?;
        let took = [
            one.total,
            kfs::bufwriter_run(root, &payload, n, None)?,
            batched.total,
            klog::append_run(root, interval, &payload, durable, AppendCalls::One)?.total,
            klog::append_run(root, batch, &payload, durable, AppendCalls::One)?.total,
            kfs::bufwriter_run(root, &payload, durable, Some(SYNC_EVERY_RECORDS))?,
            kfs::write_fdatasync_each_run(root, &payload, each)?,
        ];
        if round > 0 {
            for (i, took) in took.into_iter().enumerate() {
                let records = match i {
                    0..=2 => n,
                    6 => each,
                    _ => durable,
                };
                rates[i].push(per_s(records, took));
            }
            close.record(one.close.as_nanos() as u64);
            close.record(batched.close.as_nanos() as u64);
        }
    }
    let fig = |key, name, i: usize| Figure { key, name, value: median(&rates[i]), unit: Unit::Records };
    let never = fig("append_never_records_per_s", "append, Never", 0);
    let bufwriter = fig("bufwriter_records_per_s", "BufWriter", 1);
    let batched = fig("append_batch64_never_records_per_s", "append_batch of 64, Never", 2);
    let interval = fig("append_interval_records_per_s", "append, Interval(10 ms), until durable", 3);
    let batch = fig("append_batch_records_per_s", "append, Batch, until durable", 4);
    let bufwriter_sync = fig("bufwriter_fdatasync_1000_records_per_s", "BufWriter, fdatasync every 1000", 5);
    let sync_each = fig("fdatasync_each_records_per_s", "write + fdatasync each record", 6);
    let close_fig = |key, name, value: u64| Figure { key, name, value: value as f64, unit: Unit::Ns };
    let append_row =
        Row::versus("append 100 B, Never", never, bufwriter.clone(), "append_never_vs_bufwriter", Goal::Ratio(2.0));
    let append_ratio = append_row.ratio().unwrap_or(0.0);
    let records = si(n as f64);
    Ok(vec![
        append_row,
        Row::versus(
            format!("append_batch of {APPEND_BATCH_RECORDS}, 100 B, Never"),
            batched,
            bufwriter,
            "append_batch64_never_vs_bufwriter",
            Goal::RatioOf(append_ratio, "append's"),
        ),
        Row {
            what: format!("close after {records} records, p50"),
            shoal: close_fig("close_after_never_run_p50_ns", "close", close.quantile_ns(0.5)),
            versus: None,
            goal: Goal::AtMost(CLOSE_GOAL_NS),
        },
        Row {
            what: format!("close after {records} records, max"),
            shoal: close_fig("close_after_never_run_max_ns", "close", close.max_ns()),
            versus: None,
            goal: Goal::AtMost(CLOSE_GOAL_NS),
        },
        Row::versus(
            "append 100 B, Interval(10 ms), until durable",
            interval,
            bufwriter_sync.clone(),
            "append_interval_vs_bufwriter_fdatasync_1000",
            Goal::None,
        ),
        Row::versus(
            "append 100 B, Batch, until durable",
            batch.clone(),
            bufwriter_sync,
            "append_batch_vs_bufwriter_fdatasync_1000",
            Goal::Ratio(5.0),
        ),
        Row::versus(
            "append 100 B, Batch, until durable",
            batch,
            sync_each,
            "append_batch_vs_fdatasync_each",
            Goal::None,
        ),
    ])
}

// --- durable latency -------------------------------------------------------------------------

fn latency_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let payload = [0x3Cu8; LATENCY_RECORD_BYTES];
    let block = [0xC3u8; BLOCK_BYTES];
    let opts = log_options(Durability::Batch, scale.segment_bytes);
    let (mut shoal, mut baseline) = (LatencyHistogram::new(), LatencyHistogram::new());
    for _ in 0..scale.repeats {
        klog::durable_latency_run(root, opts, &payload, scale.latency_samples, &mut shoal)?;
        kfs::fdatasync_latency_run(root, &block, scale.latency_samples, &mut baseline)?;
    }
    let fig = |key, name, h: &LatencyHistogram, q| Figure { key, name, value: h.quantile_ns(q) as f64, unit: Unit::Ns };
    Ok(vec![
        Row::versus(
            "durable latency 4 KiB p50",
            fig("durable_latency_p50_ns", "append + wait_durable", &shoal, 0.5),
            fig("fdatasync_4kib_p50_ns", "pwrite 4 KiB + fdatasync", &baseline, 0.5),
            "durable_latency_p50_vs_fdatasync_4kib",
            Goal::Ratio(1.0 / 1.1),
        ),
        Row::versus(
            "durable latency 4 KiB p99",
            fig("durable_latency_p99_ns", "append + wait_durable", &shoal, 0.99),
            fig("fdatasync_4kib_p99_ns", "pwrite 4 KiB + fdatasync", &baseline, 0.99),
            "durable_latency_p99_vs_fdatasync_4kib",
            Goal::Ratio(1.0 / 1.3),
        ),
    ])
}

// --- durable bandwidth -----------------------------------------------------------------------

fn bandwidth_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let buf = AlignedBuf::new(DIRECT_WRITE_BYTES, 0x99);
    let payload = vec![0x99u8; LARGE_RECORD_BYTES];
    let records = scale.durable_bytes / LARGE_RECORD_BYTES as u64;
    let opts = log_options(Durability::Batch, scale.segment_bytes);
    let (mut shoal, mut direct) = (Vec::new(), Vec::new());
    // Round 0 warms the caches and the file system up and is not counted.
    for round in 0..=scale.repeats {
        let s = klog::append_run(root, opts, &payload, records, AppendCalls::One)?.total;
        let d = kfs::o_direct_write(root, buf.as_slice(), scale.durable_bytes)
            .map_err(|e| Error::new(format!("{e}; pass --dir on another file system")))?;
        if round > 0 {
            shoal.push(per_s(records * LARGE_RECORD_BYTES as u64, s) / 1e6);
            direct.push(per_s(scale.durable_bytes, d) / 1e6);
        }
    }
    Ok(vec![Row::versus(
        "durable bandwidth, 64 KiB records",
        Figure {
            key: "durable_64kib_mb_per_s",
            name: "append, Batch, until durable",
            value: median(&shoal),
            unit: Unit::MBps,
        },
        Figure {
            key: "o_direct_fdatasync_mb_per_s",
            name: "O_DIRECT write + fdatasync",
            value: median(&direct),
            unit: Unit::MBps,
        },
        "durable_64kib_vs_o_direct",
        Goal::Ratio(0.7),
    )])
}

// --- replay ----------------------------------------------------------------------------------

fn replay_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let dir = kfs::scratch(root)?;
    let (log, peer) = (dir.path().join("log"), dir.path().join("peer.log"));
    let opts = log_options(Durability::Never, scale.segment_bytes);
    let (records, bytes) = klog::write_replay_log(&log, opts, SMALL_RECORD_BYTES, scale.replay_bytes)?;
    kfs::write_framed_file(&peer, SMALL_RECORD_BYTES, records, klog::replay_payload)?;
    // A first pass of each warms the page cache (and the reader's mappings).
    klog::replay(&log, records)?;
    kfs::bufreader_replay(&peer, records)?;
    let (mut shoal, mut bufreader) = (Vec::new(), Vec::new());
    for _ in 0..scale.repeats {
        shoal.push(per_s(bytes, klog::replay(&log, records)?) / 1e9);
        bufreader.push(per_s(bytes, kfs::bufreader_replay(&peer, records)?) / 1e9);
    }
    Ok(vec![Row::versus(
        "replay, 100 B records",
        Figure { key: "replay_100b_gb_per_s", name: "Reader", value: median(&shoal), unit: Unit::GBps },
        Figure { key: "bufreader_100b_gb_per_s", name: "BufReader", value: median(&bufreader), unit: Unit::GBps },
        "replay_100b_vs_bufreader",
        Goal::RatioAndAtLeast(1.5, 5.0),
    )])
}

// --- shoal produce ---------------------------------------------------------------------------

fn produce_rows(scale: &Scale, root: &Path) -> Result<Vec<Row>, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(format!("finding this binary to run `shoal produce` failed: {e}")))?;
    let lines = scale.produce_lines;
    let dir = kfs::scratch(root)?;
    let input = dir.path().join("lines");
    kproduce::write_lines(&input, lines)?;
    let mut rates: [Vec<f64>; 4] = Default::default();
    // Round 0 warms the caches (the input file, both binaries) up and is not counted.
    for round in 0..=scale.repeats {
        let took = [
            kproduce::shoal_produce(&exe, root, &input, "never", lines, scale.check)?,
            kproduce::peer_produce(&exe, &["bench"], root, &input, None, lines, scale.check)?,
            kproduce::shoal_produce(&exe, root, &input, "batch", lines, scale.check)?,
            kproduce::peer_produce(&exe, &["bench"], root, &input, Some(SYNC_EVERY_RECORDS), lines, scale.check)?,
        ];
        if round > 0 {
            for (rate, took) in rates.iter_mut().zip(took) {
                rate.push(per_s(lines, took));
            }
        }
    }
    let fig = |key, name, i: usize| Figure { key, name, value: median(&rates[i]), unit: Unit::Lines };
    let lines = si(lines as f64);
    Ok(vec![
        Row::versus(
            format!("shoal produce --durability never, {lines} lines"),
            fig("produce_never_lines_per_s", "shoal produce", 0),
            fig("bufwriter_program_lines_per_s", "BufWriter program", 1),
            "produce_never_vs_bufwriter_program",
            Goal::Ratio(1.0),
        ),
        Row::versus(
            format!("shoal produce --durability batch, {lines} lines"),
            fig("produce_batch_lines_per_s", "shoal produce", 2),
            fig("bufwriter_program_fdatasync_1000_lines_per_s", "BufWriter program, fdatasync every 1000", 3),
            "produce_batch_vs_bufwriter_program_fdatasync_1000",
            Goal::Ratio(2.0),
        ),
    ])
}

// --- output ----------------------------------------------------------------------------------

/// The rows as a table for people.
fn to_table(rows: &[Row], machine: &Machine, scale: &Scale) -> String {
    let header = ["figure", "shoal", "baseline", "ratio", "goal"];
    let mut cells: Vec<[String; 5]> = vec![header.map(String::from)];
    for row in rows {
        cells.push([
            row.what.clone(),
            row.shoal.unit.show(row.shoal.value),
            row.versus.as_ref().map_or_else(
                || "-".to_string(),
                |v| format!("{}: {}", v.baseline.name, v.baseline.unit.show(v.baseline.value)),
            ),
            row.ratio().map_or_else(|| "-".to_string(), |r| format!("{r:.2}x")),
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
        if let (Some(v), Some(r)) = (&row.versus, row.ratio()) {
            obj.insert(v.baseline.key.into(), json!(v.baseline.value));
            obj.insert(v.ratio_key.into(), json!(r));
        }
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
            "never_records": scale.never_records,
            "append_batch_records": APPEND_BATCH_RECORDS,
            "durable_records": scale.durable_records,
            "fdatasync_each_records": scale.sync_each_records,
            "interval_ms": INTERVAL.as_millis() as u64,
            "latency_record_bytes": LATENCY_RECORD_BYTES,
            "latency_samples_per_round": scale.latency_samples,
            "large_record_bytes": LARGE_RECORD_BYTES,
            "durable_bytes": scale.durable_bytes,
            "replay_bytes": scale.replay_bytes,
            "produce_lines": scale.produce_lines,
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
        let rate = Row::versus("w", fig(200.0, Unit::Records), fig(100.0, Unit::Records), "r", Goal::Ratio(3.0));
        assert_eq!(rate.ratio(), Some(2.0));
        assert_eq!(rate.goal_text(), ">= 3.00x MISSED");
        let of = Row { goal: Goal::RatioOf(1.5, "append's"), ..rate.clone() };
        assert_eq!(of.goal_text(), ">= 1.50x (append's) met");
        // A latency: shoal takes half the time, so it is also 2x better.
        let latency = Row::versus("w", fig(50.0, Unit::Ns), fig(100.0, Unit::Ns), "r", Goal::None);
        assert_eq!(latency.ratio(), Some(2.0));
        assert_eq!(latency.goal_text(), "-");
        // Both halves of a two-part goal must hold.
        let both = |value| {
            Row::versus("w", fig(value, Unit::GBps), fig(2.0, Unit::GBps), "r", Goal::RatioAndAtLeast(1.5, 5.0))
        };
        assert_eq!(both(4.0).goal_text(), ">= 1.50x and >= 5.00 GB/s MISSED");
        assert_eq!(both(6.0).goal_text(), ">= 1.50x and >= 5.00 GB/s met");
        // A figure alone, against a bound of its own.
        let alone =
            |value| Row { what: "w".into(), shoal: fig(value, Unit::Ns), versus: None, goal: Goal::AtMost(5e6) };
        assert_eq!(alone(4e6).ratio(), None);
        assert_eq!(alone(4e6).goal_text(), "<= 5.00 ms met");
        assert_eq!(alone(6e6).goal_text(), "<= 5.00 ms MISSED");
    }

    #[test]
    fn units_read_well() {
        assert_eq!(Unit::Records.show(3_210_000.0), "3.21 M records/s");
        assert_eq!(Unit::Values.show(1.5e9), "1.50 G values/s");
        assert_eq!(Unit::Records.show(6_900.0), "6.9 k records/s");
        assert_eq!(Unit::Lines.show(2_000_000.0), "2.00 M lines/s");
        assert_eq!(Unit::Ns.show(150_000.0), "150.0 us");
        assert_eq!(Unit::GBps.show(5.123), "5.12 GB/s");
    }

    #[test]
    fn quick_is_smaller_than_default() {
        let (quick, full) = (Scale::new(true), Scale::new(false));
        assert!(quick.ring_values < full.ring_values && quick.never_records < full.never_records);
        assert!(quick.produce_lines < full.produce_lines && quick.durable_records < full.durable_records);
        assert_eq!(full.segment_bytes, LogOptions::default().segment_bytes, "full runs use the default segments");
        assert!(
            quick.durable_bytes % DIRECT_WRITE_BYTES as u64 == 0 && full.durable_bytes % DIRECT_WRITE_BYTES as u64 == 0
        );
    }
}
