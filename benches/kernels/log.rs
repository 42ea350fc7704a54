//! Log kernels: appends at each durability, one durable append, and a zero-copy replay.
//!
//! Appends go to a [`SteadyLog`]: a log kept open across rounds, so that rollovers, the
//! background preparation of fresh segments and retention run at their steady-state rate
//! inside the timed part.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal::log::format::record_stride;
use shoal::log::{Appender, Durability, LogOptions, Offset, Reader, Retention};

use super::fs::scratch;
use super::KernelError;

/// Bytes of each record of the small-record figures (append, durable latency, replay).
pub const SMALL_RECORD_BYTES: usize = 100;
/// Bytes of each record of the durable-bandwidth figure.
pub const LARGE_RECORD_BYTES: usize = 64 << 10;
/// Longest wait for records to become durable before a kernel gives up.
pub const DURABLE_WAIT_MAX: Duration = Duration::from_secs(60);
/// A [`SteadyLog`] starts over once it has written this many segments.
pub const RESTART_SEGMENTS: u64 = 8;

/// Options of a bench log: the defaults (prefaulted segments, as in production) with
/// `segment_bytes`, records up to a quarter segment (1 MiB at most), and old segments deleted
/// past four segments so that long runs do not fill the disk.
pub fn log_options(durability: Durability, segment_bytes: u64) -> LogOptions {
    let retention = Retention::default().max_bytes(Some(segment_bytes * 4));
    LogOptions::default()
        .segment_bytes(segment_bytes)
        .max_record_bytes((1usize << 20).min(segment_bytes as usize / 4))
        .durability(durability)
        .retention(retention)
}

/// Bytes of log that `records` records of `payload_len` bytes take.
pub fn log_bytes(payload_len: usize, records: u64) -> u64 {
    records * record_stride(payload_len) as u64
}

/// A log kept open across rounds. Between rounds (outside the timed part) it starts over in
/// a fresh directory once it has written [`RESTART_SEGMENTS`] segments, whatever its
/// durability: that bounds the disk it takes and what a `Never` log pins (its sealed segments
/// stay mapped until a sync covers them, even after retention unlinks them).
pub struct SteadyLog {
    root: PathBuf,
    opts: LogOptions,
    written_bytes: u64,
    log: Option<(Appender, tempfile::TempDir)>,
}

impl SteadyLog {
    /// Opens the first log now, in a fresh directory under `root`, outside any timed part.
    ///
    /// # Errors
    /// The scratch directory or the log could not be created.
    pub fn open(root: &Path, opts: LogOptions) -> Result<SteadyLog, KernelError> {
        let mut steady = SteadyLog { root: root.to_path_buf(), opts, written_bytes: 0, log: None };
        steady.appender(0)?;
        Ok(steady)
    }

    /// The durability of its log.
    pub fn durability(&self) -> Durability {
        self.opts.durability
    }

    /// The appender for a round that will write about `bytes` of log.
    ///
    /// # Errors
    /// Starting over failed: the scratch directory or the log could not be created.
    pub fn appender(&mut self, bytes: u64) -> Result<&mut Appender, KernelError> {
        if self.written_bytes > self.opts.segment_bytes * RESTART_SEGMENTS {
            self.log = None;
        }
        if self.log.is_none() {
            self.written_bytes = 0;
        }
        self.written_bytes += bytes;
        let log = match self.log.take() {
            Some(log) => log,
            None => {
                let dir = scratch(&self.root)?;
                (Appender::open(dir.path(), self.opts)?, dir)
            }
        };
        Ok(&mut self.log.insert(log).0)
    }
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

/// Appends `records` copies of `payload` one `append` at a time; for a durable level the
/// time runs until the last record is durable.
///
/// # Errors
/// An append or the sync failed, or the log could not start over.
pub fn append(steady: &mut SteadyLog, payload: &[u8], records: u64) -> Result<Duration, KernelError> {
    let durable = steady.durability() != Durability::Never;
    let log = steady.appender(log_bytes(payload.len(), records))?;
    let start = Instant::now();
    let mut last = Offset(0);
    for _ in 0..records {
        last = black_box(log.append(payload)?);
    }
    if durable && records > 0 {
        wait_durable(log, last)?;
    }
    Ok(start.elapsed())
}

/// One `payload` appended to a durable log, then waited for until durable.
///
/// # Errors
/// The append or the sync failed.
pub fn durable_latency(log: &mut Appender, payload: &[u8]) -> Result<Duration, KernelError> {
    let start = Instant::now();
    let offset = log.append(payload)?;
    wait_durable(log, offset)?;
    Ok(start.elapsed())
}

/// Writes, in `dir`, a log of `payload_len`-byte records holding at least `payload_bytes` of
/// payload, keeping every segment; returns the record count and the payload bytes written.
/// This is a replay's set-up, not measured.
///
/// # Errors
/// Opening, appending or closing the log failed.
pub fn write_replay_log(
    dir: &Path,
    segment_bytes: u64,
    payload_len: usize,
    payload_bytes: u64,
) -> Result<(u64, u64), KernelError> {
    let mut opts = log_options(Durability::Never, segment_bytes);
    opts.retention = Retention::default(); // the replay reads every segment
    let mut log = Appender::open(dir, opts)?;
    let records = payload_bytes.div_ceil(payload_len as u64);
    let mut payload = vec![0u8; payload_len];
    for i in 0..records {
        if let Some(first) = payload.first_mut() {
            *first = i as u8;
        }
        log.append(&payload)?;
    }
    log.close()?;
    Ok((records, records * payload_len as u64))
}

/// One zero-copy pass of a [`Reader`] over the log in `dir`, which must hold `records`
/// records: every record decoded (checksum checked) and its payload touched at both ends.
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
    let took = start.elapsed();
    if read != records {
        return Err(KernelError::ReplayShort { dir: dir.to_path_buf(), read, expected: records });
    }
    Ok(took)
}
