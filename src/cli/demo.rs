//! `shoal demo`: appends a few million events with `Batch` durability, replays and verifies
//! them, and prints what it measured.
//!
//! Every event is 100 bytes: its index (u64 LE) followed by 92 bytes derived from the index,
//! so that a lost, duplicated, reordered or altered event is told apart on replay. The
//! producer keeps a CRC32C over all payloads in append order; the replay computes the same
//! and the two must match.
//!
//! Durable latency is the time from an append returning until the durable watermark passes
//! that record. Every [`SAMPLE_EVERY`]th append sends `(offset, instant)` to a checker
//! thread, which waits on a [`DurableWatch`](crate::log::DurableWatch) and records the
//! elapsed time in a [`LatencyHistogram`]. The hot loop does no more than that per event: the
//! progress bar is updated every [`PROGRESS_EVERY`] events.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver};
use indicatif::{ProgressBar, ProgressStyle};

use super::inspect::table;
use super::Error;
use crate::log::{Appender, Durability, DurableWatch, LogError, LogOptions, Offset, Reader};
use crate::metrics::{format_ns, LatencyHistogram};

/// Bytes of every demo event.
const EVENT_BYTES: usize = 100;
/// One append in this many is timed until durable.
const SAMPLE_EVERY: u64 = 1000;
/// The progress bar moves every this many events.
const PROGRESS_EVERY: u64 = 1 << 16;
/// Samples the checker may lag behind by before the producer drops new ones.
const SAMPLES_QUEUED_MAX: usize = 1 << 14;
/// Longest wait for one sampled record to become durable.
const DURABLE_WAIT_MAX: Duration = Duration::from_secs(60);
/// Events appended one at a time, each waiting for its sync, for the durable-ack latency.
const PACED_EVENTS: u64 = 2000;

pub(super) fn run(dir: Option<&Path>, events: u64) -> Result<ExitCode, Error> {
    // The temporary directory (if any) lives until the end of the demo.
    let temp;
    let dir: PathBuf = match dir {
        Some(dir) => dir.to_path_buf(),
        None => {
            temp = tempfile::Builder::new().prefix("shoal-demo-").tempdir().map_err(|e| {
                Error::new(format!("creating a temporary directory failed: {e}; set TMPDIR or pass --dir"))
            })?;
            temp.path().to_path_buf()
        }
    };
    let opts = LogOptions { durability: Durability::Batch, ..LogOptions::default() };
    let mut log = Appender::open(&dir, opts)?;
    let first = log.next_offset().0;
    eprintln!(
        "shoal demo: {} events of {EVENT_BYTES} bytes into {} (Batch durability, {} backend)",
        grouped(events),
        dir.display(),
        log.io_backend()
    );

    let produced = produce(&mut log, events)?;
    let (syncs, sync_hist) = log.sync_stats();
    log.close()?;
    let one_at_a_time = durable_one_at_a_time(&dir.join("one-at-a-time"), PACED_EVENTS.min(events))?;

    let replay = replay(&dir, first, events)?;
    let check = verify(&dir, first, events)?;

    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    let payload_bytes = (events * EVENT_BYTES as u64) as f64;
    let latency = &produced.latency;
    let rows = [
        ("events", format!("{} x {EVENT_BYTES} bytes", grouped(events))),
        (
            "append",
            format!(
                "{:.2} M events/s, {:.0} MB/s ({:.2} s)",
                events as f64 / secs(produced.append) / 1e6,
                payload_bytes / secs(produced.append) / 1e6,
                produced.append.as_secs_f64()
            ),
        ),
        ("all durable after", format!("{:.2} s (appends and the final sync)", produced.all_durable.as_secs_f64())),
        (
            "data syncs",
            format!(
                "{}, each p50 {} / p99 {}",
                grouped(syncs),
                format_ns(sync_hist.quantile_ns(0.5)),
                format_ns(sync_hist.quantile_ns(0.99))
            ),
        ),
        (
            "durable latency",
            format!(
                "p50 {} / p99 {} / p99.9 {} / max {} ({} samples{})",
                format_ns(latency.quantile_ns(0.5)),
                format_ns(latency.quantile_ns(0.99)),
                format_ns(latency.quantile_ns(0.999)),
                format_ns(latency.max_ns()),
                grouped(latency.count()),
                if produced.samples_missed > 0 {
                    format!(", {} not timed", grouped(produced.samples_missed))
                } else {
                    String::new()
                }
            ),
        ),
        (
            "durable ack",
            format!(
                "p50 {} / p99 {} / p99.9 {} one at a time ({} appends, each waiting for its own sync)",
                format_ns(one_at_a_time.quantile_ns(0.5)),
                format_ns(one_at_a_time.quantile_ns(0.99)),
                format_ns(one_at_a_time.quantile_ns(0.999)),
                grouped(one_at_a_time.count()),
            ),
        ),
        (
            "replay",
            format!(
                "{:.2} GB/s of payload, {:.1} M events/s ({:.3} s)",
                payload_bytes / secs(replay) / 1e9,
                events as f64 / secs(replay) / 1e6,
                replay.as_secs_f64()
            ),
        ),
        (
            "verified",
            format!(
                "{} intact, {} lost, {} duplicated, {} corrupt; checksum {}",
                grouped(check.intact),
                grouped(check.lost),
                grouped(check.duplicated),
                grouped(check.corrupt),
                if check.crc == produced.crc { "matches" } else { "DIFFERS" }
            ),
        ),
    ];
    let mut out = io::stdout().lock();
    let note = "durable latency: append until the watermark passes the record, with appends running flat out \
                (so it includes waiting behind the disk's write bandwidth); durable ack: the same, one append at a \
                time, in a log of its own";
    if let Err(e) = writeln!(out, "{}\n\n{note}", table(&rows)).and_then(|()| out.flush()) {
        return super::stdout_failed(e);
    }
    if let Some(e) = check.error {
        return Err(e.into());
    }
    if check.lost + check.duplicated + check.corrupt > 0 || check.crc != produced.crc {
        return Err(Error::new(format!(
            "{}: the replay does not match what was appended; the log is kept there for inspection",
            dir.display()
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// What the append phase measured.
struct Produced {
    append: Duration,
    all_durable: Duration,
    crc: u32,
    latency: LatencyHistogram,
    samples_missed: u64,
}

fn produce(log: &mut Appender, events: u64) -> Result<Produced, Error> {
    let (tx, rx) = bounded::<(u64, Instant)>(SAMPLES_QUEUED_MAX);
    let watch = log.durable_watch();
    let checker = std::thread::Builder::new()
        .name("shoal-demo-durable".into())
        .spawn(move || time_durable(&watch, &rx))
        .map_err(|e| Error::new(format!("starting the latency checker failed: {e}")))?;

    let bar = ProgressBar::new(events);
    if let Ok(style) = ProgressStyle::with_template("appending [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut crc = 0u32;
    let mut dropped = 0u64;
    let started = Instant::now();
    for i in 0..events {
        let offset = log.append_with(EVENT_BYTES, |buf| {
            fill_event(buf, i);
            crc = crc32c::crc32c_append(crc, buf);
        })?;
        if i % SAMPLE_EVERY == 0 && tx.try_send((offset.0, Instant::now())).is_err() {
            dropped += 1;
        }
        if i % PROGRESS_EVERY == 0 {
            bar.set_position(i);
        }
    }
    let append = started.elapsed();
    log.sync()?;
    let all_durable = started.elapsed();
    bar.finish_and_clear();
    drop(tx);
    let (latency, missed) = match checker.join() {
        Ok(result) => result?,
        Err(_) => return Err(Error::new("the latency checker thread panicked")),
    };
    Ok(Produced { append, all_durable, crc, latency, samples_missed: dropped + missed })
}

/// Times each sampled append until it is durable; returns the histogram and how many
/// samples could not be timed.
/// Appends one event at a time into a log of its own and waits for each to be durable: the
/// latency an application sees when it acknowledges every request only once it is on disk.
fn durable_one_at_a_time(dir: &Path, events: u64) -> Result<LatencyHistogram, Error> {
    let mut log = Appender::open(dir, LogOptions { durability: Durability::Batch, ..LogOptions::default() })?;
    let mut hist = LatencyHistogram::new();
    let mut event = [0u8; EVENT_BYTES];
    for i in 0..events {
        fill_event(&mut event, i);
        let started = Instant::now();
        let offset = log.append(&event)?;
        log.wait_durable(offset, None)?;
        hist.record(started.elapsed().as_nanos() as u64);
    }
    log.close()?;
    Ok(hist)
}

fn time_durable(watch: &DurableWatch, samples: &Receiver<(u64, Instant)>) -> Result<(LatencyHistogram, u64), LogError> {
    let mut hist = LatencyHistogram::new();
    let mut missed = 0;
    for (offset, appended) in samples {
        if watch.wait_durable(Offset(offset), Some(DURABLE_WAIT_MAX))? {
            hist.record(appended.elapsed().as_nanos() as u64);
        } else {
            missed += 1;
        }
    }
    Ok((hist, missed))
}

/// Writes event `index`: the index, then 92 bytes derived from it.
#[inline]
fn fill_event(buf: &mut [u8], index: u64) {
    buf[..8].copy_from_slice(&index.to_le_bytes());
    let seed = splitmix64(index);
    for (k, chunk) in buf[8..].chunks_mut(8).enumerate() {
        let word = seed.wrapping_add((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

#[inline]
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Reads every event once, zero-copy, touching each payload; returns the time it took.
fn replay(dir: &Path, first: u64, events: u64) -> Result<Duration, Error> {
    let started = Instant::now();
    let mut reader = Reader::open(dir)?;
    reader.seek(Offset(first))?;
    let mut bytes = 0u64;
    let mut fold = 0u64;
    for _ in 0..events {
        match reader.next()? {
            Some(record) => {
                let payload = record.payload();
                bytes += payload.len() as u64;
                fold ^= payload.first().copied().unwrap_or(0) as u64;
            }
            None => break,
        }
    }
    let elapsed = started.elapsed();
    // Keeps the reads from being optimised away.
    std::hint::black_box((bytes, fold));
    Ok(elapsed)
}

/// What the verification pass found.
#[derive(Debug, Default)]
struct Check {
    intact: u64,
    lost: u64,
    duplicated: u64,
    corrupt: u64,
    crc: u32,
    /// The read error that ended the pass early, if any.
    error: Option<LogError>,
}

/// Reads the events back and checks each against what was appended.
fn verify(dir: &Path, first: u64, events: u64) -> Result<Check, Error> {
    let bar = ProgressBar::new(events);
    if let Ok(style) = ProgressStyle::with_template("verifying [{bar:40}] {human_pos}/{human_len}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut reader = Reader::open(dir)?;
    reader.seek(Offset(first))?;
    let mut check = Check::default();
    let mut next = 0u64;
    let mut expected = [0u8; EVENT_BYTES];
    // Bounded: at most one record per appended event is examined.
    for n in 0..events {
        if n % PROGRESS_EVERY == 0 {
            bar.set_position(n);
        }
        let record = match reader.next() {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(e) => {
                check.corrupt += 1;
                check.error = Some(e);
                break;
            }
        };
        let payload = record.payload();
        check.crc = crc32c::crc32c_append(check.crc, payload);
        let Some(index) = payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else {
            check.corrupt += 1;
            continue;
        };
        fill_event(&mut expected, index);
        if index >= events || payload != expected {
            check.corrupt += 1;
        } else if index < next {
            check.duplicated += 1;
        } else {
            check.lost += index - next;
            check.intact += 1;
            next = index + 1;
        }
    }
    check.lost += events - next.min(events);
    bar.finish_and_clear();
    Ok(check)
}

/// `3000000` -> `3,000,000`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_encode_their_index() {
        let mut a = [0u8; EVENT_BYTES];
        let mut b = [0u8; EVENT_BYTES];
        fill_event(&mut a, 41);
        fill_event(&mut b, 42);
        assert_ne!(a, b);
        assert_eq!(u64::from_le_bytes(a[..8].try_into().expect("8 bytes")), 41);
        assert_eq!(grouped(3_000_000), "3,000,000");
        assert_eq!(grouped(999), "999");
    }

    #[test]
    fn a_small_demo_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let code = run(Some(dir.path()), 20_000).expect("demo");
        assert_eq!(code, ExitCode::SUCCESS);
    }

    #[test]
    fn verification_counts_lost_duplicated_and_corrupt_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions {
            segment_bytes: 1 << 20,
            max_record_bytes: 512 << 10,
            durability: Durability::Never,
            ..LogOptions::default()
        };
        let mut log = Appender::open(dir.path(), opts).expect("open");
        let mut buf = [0u8; EVENT_BYTES];
        for index in [0u64, 1, 3, 3, 4] {
            fill_event(&mut buf, index);
            log.append(&buf).expect("append");
        }
        fill_event(&mut buf, 5);
        buf[50] ^= 1;
        log.append(&buf).expect("append");
        log.close().expect("close");
        let check = verify(dir.path(), 0, 7).expect("verify");
        assert_eq!((check.intact, check.lost, check.duplicated, check.corrupt), (4, 3, 1, 1));
    }
}
