//! Log kernels: appends at each durability, durable latency, and a zero-copy replay.
//!
//! Every append kernel measures one run as a user would see it: a fresh directory, the
//! appender opened in it, the records appended (and, at a durable level, waited for until
//! durable), the appender closed; opening, rollovers, the background preparation of
//! segments and the close are all inside the timed part. Only creating the empty scratch
//! directory and deleting it afterwards are outside.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal::log::{Appender, Durability, LogOptions, Offset, Reader};
use shoal::metrics::LatencyHistogram;

use super::fs::scratch;
use super::KernelError;

/// Bytes of each record of the small-record figures (append, replay).
pub const SMALL_RECORD_BYTES: usize = 100;
/// Bytes of each record of the durable-latency figure (one page, like its peer's write).
pub const LATENCY_RECORD_BYTES: usize = 4 << 10;
/// Bytes of each record of the durable-bandwidth figure.
pub const LARGE_RECORD_BYTES: usize = 64 << 10;
/// Records in each `append_batch` call of the batched append figure.
pub const APPEND_BATCH_RECORDS: usize = 64;
/// Longest wait for records to become durable before a kernel gives up.
pub const DURABLE_WAIT_MAX: Duration = Duration::from_secs(60);
/// Name of the log directory inside a run's scratch directory: the appender creates it, so
/// that creating the log's directory is part of the run.
const LOG_DIR: &str = "log";

/// Options of a bench log: a user's defaults at `durability`, with `segment_bytes` (the
/// default segment size under `cargo bench` and `shoal bench`, smaller ones in quick runs)
/// and records up to the default limit or a quarter segment, whichever is smaller.
pub fn log_options(durability: Durability, segment_bytes: u64) -> LogOptions {
    let defaults = LogOptions::default();
    LogOptions::default()
        .segment_bytes(segment_bytes)
        .max_record_bytes(defaults.max_record_bytes.min(segment_bytes as usize / 4))
        .durability(durability)
}

/// How a run hands its records to the appender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendCalls {
    /// One `append` per record.
    One,
    /// `append_batch` of [`APPEND_BATCH_RECORDS`] records (fewer in the last call).
    Batch,
}

/// The times of one open-to-close run.
#[derive(Clone, Copy, Debug)]
pub struct RunTimes {
    /// From the call that opens the log to the return of its close.
    pub total: Duration,
    /// The close (what dropping the appender costs) alone.
    pub close: Duration,
}

/// Waits until `offset` is durable, for [`DURABLE_WAIT_MAX`] at most.
///
/// # Errors
/// The sync failed, or the record was not durable in time.
pub fn wait_durable(log: &Appender, offset: Offset) -> Result<(), KernelError> {
    if log.wait_durable(offset, Some(DURABLE_WAIT_MAX))? && log.durable_offset() > offset {
        Ok(())
    } else {
        Err(KernelError::NotDurable { dir: log.dir().to_path_buf(), offset, waited: DURABLE_WAIT_MAX })
    }
}

/// One run in a fresh directory under `root`: open a log with `opts`, append `records`
/// copies of `payload` through `calls`, wait (at a durable level) until the last is
/// durable, close.
///
/// # Errors
/// The scratch directory could not be made, or opening, an append, the sync or the close
/// failed.
pub fn append_run(
    root: &Path,
    opts: LogOptions,
    payload: &[u8],
    records: u64,
    calls: AppendCalls,
) -> Result<RunTimes, KernelError> {
    let dir = scratch(root)?;
    let batch = [payload; APPEND_BATCH_RECORDS];
    let start = Instant::now();
    let mut log = Appender::open(dir.path().join(LOG_DIR), opts)?;
    let mut left = records;
    let mut last = None;
    while left > 0 {
        let end = match calls {
            AppendCalls::One => {
                left -= 1;
                black_box(log.append(payload)?)
            }
            AppendCalls::Batch => {
                let n = left.min(APPEND_BATCH_RECORDS as u64);
                left -= n;
                Offset(black_box(log.append_batch(batch[..n as usize].iter().copied())?).end.0 - 1)
            }
        };
        last = Some(end);
    }
    if let (Some(last), true) = (last, opts.durability != Durability::Never) {
        wait_durable(&log, last)?;
    }
    let closing = Instant::now();
    log.close()?;
    let end = Instant::now();
    Ok(RunTimes { total: end - start, close: end - closing })
}

/// One run in a fresh directory under `root`: open a log with `opts` (a durable level),
/// then `samples` times append `payload` and wait until it is durable, each recorded in
/// `hist`; close. Returns the whole run's time.
///
/// # Errors
/// The scratch directory could not be made, or opening, an append, a sync or the close
/// failed.
pub fn durable_latency_run(
    root: &Path,
    opts: LogOptions,
    payload: &[u8],
    samples: u64,
    hist: &mut LatencyHistogram,
) -> Result<Duration, KernelError> {
    let dir = scratch(root)?;
    let start = Instant::now();
    let mut log = Appender::open(dir.path().join(LOG_DIR), opts)?;
    for _ in 0..samples {
        let op = Instant::now();
        let offset = log.append(payload)?;
        wait_durable(&log, offset)?;
        hist.record(op.elapsed().as_nanos() as u64);
    }
    log.close()?;
    Ok(start.elapsed())
}

/// The `i`th record of a replayed log (of either side): `payload_len` bytes, the first one
/// `i as u8`, so that no two neighbours are alike.
pub fn replay_payload(payload: &mut [u8], i: u64) {
    if let Some(first) = payload.first_mut() {
        *first = i as u8;
    }
}

/// Writes, in `dir`, a log of `payload_len`-byte records holding at least `payload_bytes` of
/// payload (records from [`replay_payload`]); returns the record count and the payload bytes
/// written. This is a replay's set-up, not measured.
///
/// # Errors
/// Opening, appending or closing the log failed.
pub fn write_replay_log(
    dir: &Path,
    opts: LogOptions,
    payload_len: usize,
    payload_bytes: u64,
) -> Result<(u64, u64), KernelError> {
    let mut log = Appender::open(dir, opts.durability(Durability::Never))?;
    let records = payload_bytes.div_ceil(payload_len as u64);
    let mut payload = vec![0u8; payload_len];
    for i in 0..records {
        replay_payload(&mut payload, i);
        log.append(&payload)?;
    }
    log.close()?;
    Ok((records, records * payload_len as u64))
}

/// One zero-copy pass of a [`Reader`] over the log in `dir`, which must hold `records`
/// records: the reader opened, every record decoded (checksum checked) and its payload
/// touched at both ends.
///
/// # Errors
/// Reading failed, or the pass read another number of records.
pub fn replay(dir: &Path, records: u64) -> Result<Duration, KernelError> {
    let start = Instant::now();
    let mut reader = Reader::open(dir)?;
    let (mut read, mut fold) = (0u64, 0u64);
    while let Some(record) = reader.next()? {
        let p = record.payload();
        if let (Some(first), Some(last)) = (p.first(), p.last()) {
            fold = fold.wrapping_add(u64::from(*first) ^ u64::from(*last));
        }
        read += 1;
    }
    black_box(fold);
    drop(reader);
    let took = start.elapsed();
    if read != records {
        return Err(KernelError::ReplayShort { dir: dir.to_path_buf(), read, expected: records });
    }
    Ok(took)
}

/// Records in the log in `dir`, read through once: the check, outside any timed part, that
/// a run wrote what it was asked to.
///
/// # Errors
/// Opening or reading the log failed.
pub fn count_records(dir: &Path) -> Result<u64, KernelError> {
    let mut reader = Reader::open(dir)?;
    let mut read = 0u64;
    while reader.next()?.is_some() {
        read += 1;
    }
    Ok(read)
}
