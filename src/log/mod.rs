//! The durable log: a memory-mapped, checksummed, append-only sequence of records on disk.
//!
//! # Design
//! A log is a directory of segment files (see [`format`](mod@format) for the on-disk format,
//! version 2, which reads version 1). [`Appender`]s write records straight into the mapped
//! segment: header fields and payload first, the commit word last with `Release` ordering, so
//! readers in any process that load it with `Acquire` never see a partial record. Offsets are
//! dense: 0, 1, 2, ... A record's append time is the log's clock, never below the record
//! before it (the appender stores max(previous, now)), so [`Reader::seek_time`] binary
//! searches by time; a record may also carry its key's text and a producer's event time
//! ([`NewRecord`]), in an extension block that records without them do not have.
//!
//! Any number of appenders, in any threads and processes, append to one log at once
//! ([`Writers::Shared`], the default). They take turns holding the *writer role* (an
//! `flock(2)` on `APPEND`, see `role`): a lone appender keeps it across calls for the cost of
//! one atomic swap per append call; contending ones pass it on in turns of at least 100 us,
//! catching up from the tail the last holder stored in `HEAD` (an append call of a holder
//! costs a store, a compiler fence and two loads: see `role`). The kernel drops the role of a
//! killed holder at once, and the next holder, finding the role marked as held, repairs the
//! tail as an open does after a crash. Every appender runs its own sync thread; their rounds
//! take turns under an `flock` on `SYNC`, and a round skips its sync when another's already
//! covered it, so the durable watermark in `HEAD` is shared. Each appender holds `LOCK`
//! shared; [`Writers::Exclusive`] and [`repair`] hold it exclusively.
//!
//! Durability is group commit. Appends only write memory; a sync round issues a ranged data
//! sync that covers every record appended before it started, and then advances the durable
//! watermark ([`Appender::durable_offset`]). A caller of [`Appender::sync`] or
//! [`Appender::wait_durable`] runs the round itself when none is in flight (no hand-off to
//! another thread); else the background sync thread does. [`Durability`] picks when rounds
//! run on their own: never, on an interval, or back to back while appends keep coming
//! (`Batch`, where many appends share one sync).
//!
//! Segment files are sparse: a new one gets disk space for its header, index and first
//! [`LogOptions::prealloc_bytes`]; a preparation thread allocates space (`fallocate`) and
//! faults pages in ahead of the appender as it writes on (further ahead as the segment
//! fills), and prepares the next segment (header, sync, rename) once the active one is half
//! written, so a rollover does not wait and a quiet log stays small. An appender that
//! outruns it allocates what it needs itself, so a full disk is an error of the append that
//! needed the space, never a fault. Closing leaves the unmapping of written segments to a
//! reaper thread.
//!
//! Readers ([`Reader`], [`Tailer`]) map segments read-only and iterate records in place: a
//! [`Record`] borrows the mapped bytes, and `payload_as` reads a `bytemuck::Pod` type where it
//! lies. A sparse index in each segment makes [`Reader::seek`] O(log n). A tailer that has
//! caught up waits by its [`TailWait`]: it spins on the next record's commit word (no
//! syscall, no futex wake asked of the appender), sleeps on a futex in `HEAD` woken by the
//! appender, or by default spins 300 us and then sleeps; with `Park` an idle tailer costs no
//! CPU.
//!
//! Recovery ([`RecoveryMode`]) validates the tail at open: a torn last record (a crash
//! mid-append) is cut off; damage below the durable watermark, or followed by intact records,
//! is corruption, reported with the segment and byte position. The same rule (in `scan`)
//! judges every end of records, wherever it is found: an empty slot or end marker below the
//! watermark, or inside a sealed segment whose successor starts elsewhere, is corruption for
//! `verify`, for recovery and for every reader, never the end of the log. [`repair`] cuts at
//! the first damage through a synced journal, so a repair killed at any instant is finished
//! by the next repair or open.
//!
//! Retention ([`Retention`]) deletes whole sealed segments by total size or age. Readers that
//! still map a deleted segment keep reading it: an unlinked file lives while it is mapped.
//!
//! Files are the log's own: the appender holds the log directory open
//! (`crate::sys::fs::Dir`) and creates, renames and removes every file through it, never
//! through a symlink (`O_NOFOLLOW`; new files `O_EXCL`; renames `RENAME_NOREPLACE`); a
//! symlink or non-regular file planted as `LOCK`, `HEAD`, a segment or its temporary file is
//! an error naming it, for readers too. Segment ids never wrap: the largest id leaves no
//! room for a successor and is refused. Readers create nothing: they map `HEAD` as it is,
//! read-only where the file system allows no more, and a missing `HEAD` means a watermark
//! of 0.
//!
//! # Files
//! Each file owns one concept; the appender only assembles them.
//!
//! | file | owns |
//! | --- | --- |
//! | `format` | the on-disk format: constants, segment header, record codec, [`format::Region`] |
//! | `error` | [`LogError`] (cold path) and [`AppendError`] (hot path) |
//! | `io` | the I/O backends ([`IoBackend`]): ranged data syncs, preallocation |
//! | `head` | the shared `HEAD` page: durable watermark, appender pid, the tailers' futex |
//! | `segment` | segment files: naming, listing, mapping, preparing a new one, allocating and populating ahead, the reaper |
//! | `lock` | the log lock (`flock` on `LOCK`): shared by appenders of a shared log, exclusive otherwise |
//! | `role` | the writer role of a shared log (`flock` on `APPEND`, its words in `HEAD`, the keeper thread) |
//! | `scan` | the walk over a segment's records, shared by recovery and the checks, and the cut |
//! | `recovery` | recovery at open: returns the recovered tail and the [`RecoveryReport`] ([`TailCut`]) |
//! | `verify` | the offline checks: [`verify`], [`repair`], [`stats`] |
//! | `sync` | group commit: sync rounds (the sync thread's, or a waiter's inline), [`DurableWatch`], every [`Durability`] decision |
//! | `prepare` | the thread that prepares the next segment ahead of a rollover and makes space ready ahead of the appender |
//! | `appender` | [`Appender`]: open (lock, recover or catch up, start threads), append, publish, roll, retention; taking the role and catching up |
//! | `reader` | [`Reader`], [`Record`]: zero-copy iteration and seek |
//! | `wait` | [`wait_any`], [`wait_any_with`], [`TailWait`]: spinning on the next commit word, or sleeping on the `HEAD` futex, of several logs |
//! | `tailer` | [`Tailer`]: a reader that waits for new records |
//!
//! Which file uses which (`use super::...`, test modules aside); the graph between the files
//! is acyclic. Some files also take the shared types defined here in `mod.rs` (`Offset`,
//! `LogOptions`, `Durability`, `RecoveryMode`, `WallClock`, `now_ns`); `mod.rs` itself takes
//! from the files only what it re-exports, plus the format's `index_entries_for` (in
//! `validate`).
//!
//! ```text
//! format, error      (nothing)
//! io                 error, format
//! head, lock         error
//! role               error, head
//! segment            error, format, io
//! scan               error, format, lock, segment
//! recovery           error, format, head, io, lock, scan, segment
//! verify             error, format, head, lock, scan, segment
//! sync               error, format, head, io, segment
//! prepare            error, io, segment
//! appender           error, format, head, io, lock, prepare, recovery, role, segment, sync
//! reader             error, format, head, scan, segment
//! wait               error, format, reader
//! tailer             error, reader, wait
//! ```

mod appender;
mod error;
pub mod format;
mod head;
mod io;
mod lock;
mod prepare;
mod reader;
mod recovery;
mod role;
mod scan;
mod segment;
pub mod slots;
mod sync;
mod tailer;
mod verify;
mod wait;

use std::time::Duration;

pub use appender::{Appender, NewRecord};
pub use error::{AppendError, LogError};
pub use format::key_hash;
pub use io::IoBackend;
pub use reader::{PodError, Reader, Record, RecordRef};
pub use recovery::{RecoveryReport, TailCut};
pub use segment::{directory_kind, DirKind, SegmentId};
pub use sync::DurableWatch;
pub use tailer::Tailer;
pub use verify::{disk_bytes, producers, repair, stats, verify, LogStats, Problem, RepairReport, VerifyReport};
pub use wait::{wait_any, wait_any_with, TailWait};
#[cfg(feature = "tokio")]
pub(crate) use wait::{DrySpell, Sleepers};

/// The position of a record in a log: dense, starting at 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// When appended records are made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Page cache only; records become durable on an explicit [`Appender::sync`] (or when
    /// the kernel writes them back, which shoal does not track).
    Never,
    /// A data sync at most this often while there are new records.
    Interval(Duration),
    /// Group commit: syncs run back to back while records arrive, each covering every record
    /// appended before it started. A record is durable within about one sync of its append.
    #[default]
    Batch,
}

/// What opening a log does with damage it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open on any damage, even a torn tail; nothing is changed on disk.
    Strict,
    /// Cut a torn tail (damage at or past the durable watermark with nothing intact after
    /// it); refuse to open on corruption anywhere else.
    #[default]
    TruncateTail,
    /// Cut the log at the first damage wherever it is, dropping every record after it.
    /// The drop is reported in [`Appender::recovery`].
    TruncateCorrupt,
}

/// Who may append to a log at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Writers {
    /// Any number of appenders, in any threads and processes, append to the log at once
    /// (one [`Appender`] each). They take turns holding the *writer role* (see
    /// [`Appender`]'s docs): offsets stay dense, with one total order, and each appender's
    /// records appear in its own append order. An appender killed at any point holds up the
    /// others only until the next one has repaired the tail.
    #[default]
    Shared,
    /// One appender only, which holds the writer role for its whole life; any other gets
    /// [`LogError::Locked`]. It skips the one check per append call that the shared role
    /// needs.
    Exclusive,
}

/// Which sealed segments to delete. Build it with its setters:
/// `Retention::default().max_bytes(1 << 30)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Keep the log's segment files under this many bytes (the active and the prepared
    /// segment are always kept).
    pub max_bytes: Option<u64>,
    /// Delete a segment once its newest record is older than this.
    pub max_age: Option<Duration>,
}

/// The default [`LogOptions::max_record_bytes`]: 4 MiB, or what one segment holds when
/// that is less.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 << 20;

/// Configuration of a log, used when an [`Appender`] opens it. Build it from the default
/// with its setters (one per field, named after it):
///
/// ```
/// use shoal::log::{Durability, LogOptions};
///
/// let opts =
///     LogOptions::default().durability(Durability::Never).segment_bytes(1 << 20).max_record_bytes(64 << 10);
/// assert_eq!((opts.segment_bytes, opts.durability), (1 << 20, Durability::Never));
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct LogOptions {
    /// Size of each segment file; a multiple of 4096 between 64 KiB and 1 GiB. Files are
    /// sparse: disk space is allocated [`prealloc_bytes`](LogOptions::prealloc_bytes) at a
    /// time ahead of the appender.
    pub segment_bytes: u64,
    /// Largest payload accepted; at most what fits in one segment. The default,
    /// [`DEFAULT_MAX_RECORD_BYTES`] (4 MiB), shrinks at open to what fits a smaller segment;
    /// any other value that does not fit is an error.
    pub max_record_bytes: usize,
    /// When records become durable.
    pub durability: Durability,
    /// Which I/O backend issues syncs and preallocation.
    pub io_backend: IoBackend,
    /// What opening does with damage.
    pub recovery_mode: RecoveryMode,
    /// Which old segments to delete.
    pub retention: Retention,
    /// Bytes of records between two sparse-index entries (a multiple of 8).
    pub index_interval_bytes: u32,
    /// Disk space allocated ahead of the appender (a multiple of 4096, at least 64 KiB): a
    /// new segment gets space for its header, its index and data up to this many bytes in
    /// all, and as the appender writes on, the space (and with [`prefault`](LogOptions::prefault)
    /// the pages) at least this far ahead of it is made ready in the background (further,
    /// up to 8 MiB, as the segment fills). Stores into
    /// the mapping never fail for space: a full disk is an error of the append that needed
    /// the space. The next segment is prepared once the active one is half written, so a
    /// log with few records costs about this much disk.
    pub prealloc_bytes: u64,
    /// Fault in the pages ahead of the appender before it reaches them, so appends take no
    /// page fault.
    pub prefault: bool,
    /// Who may append at once (default: any number, [`Writers::Shared`]).
    pub writers: Writers,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            durability: Durability::Batch,
            io_backend: IoBackend::Auto,
            recovery_mode: RecoveryMode::TruncateTail,
            retention: Retention::default(),
            index_interval_bytes: 4096,
            prealloc_bytes: 512 << 10,
            prefault: true,
            writers: Writers::Shared,
        }
    }
}

impl Retention {
    /// Sets [`Retention::max_bytes`] (`None`: no size limit).
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: impl Into<Option<u64>>) -> Retention {
        self.max_bytes = max_bytes.into();
        self
    }

    /// Sets [`Retention::max_age`] (`None`: no age limit).
    #[must_use]
    pub fn max_age(mut self, max_age: impl Into<Option<Duration>>) -> Retention {
        self.max_age = max_age.into();
        self
    }
}

impl LogOptions {
    /// Sets [`LogOptions::segment_bytes`].
    #[must_use]
    pub const fn segment_bytes(mut self, segment_bytes: u64) -> LogOptions {
        self.segment_bytes = segment_bytes;
        self
    }

    /// Sets [`LogOptions::max_record_bytes`].
    #[must_use]
    pub const fn max_record_bytes(mut self, max_record_bytes: usize) -> LogOptions {
        self.max_record_bytes = max_record_bytes;
        self
    }

    /// Sets [`LogOptions::durability`].
    #[must_use]
    pub const fn durability(mut self, durability: Durability) -> LogOptions {
        self.durability = durability;
        self
    }

    /// Sets [`LogOptions::io_backend`].
    #[must_use]
    pub const fn io_backend(mut self, io_backend: IoBackend) -> LogOptions {
        self.io_backend = io_backend;
        self
    }

    /// Sets [`LogOptions::recovery_mode`].
    #[must_use]
    pub const fn recovery_mode(mut self, recovery_mode: RecoveryMode) -> LogOptions {
        self.recovery_mode = recovery_mode;
        self
    }

    /// Sets [`LogOptions::retention`].
    #[must_use]
    pub const fn retention(mut self, retention: Retention) -> LogOptions {
        self.retention = retention;
        self
    }

    /// Sets [`LogOptions::index_interval_bytes`].
    #[must_use]
    pub const fn index_interval_bytes(mut self, index_interval_bytes: u32) -> LogOptions {
        self.index_interval_bytes = index_interval_bytes;
        self
    }

    /// Sets [`LogOptions::prealloc_bytes`].
    #[must_use]
    pub const fn prealloc_bytes(mut self, prealloc_bytes: u64) -> LogOptions {
        self.prealloc_bytes = prealloc_bytes;
        self
    }

    /// Sets [`LogOptions::prefault`].
    #[must_use]
    pub const fn prefault(mut self, prefault: bool) -> LogOptions {
        self.prefault = prefault;
        self
    }

    /// Sets [`LogOptions::writers`].
    #[must_use]
    pub const fn writers(mut self, writers: Writers) -> LogOptions {
        self.writers = writers;
        self
    }

    /// The largest payload a segment of `segment_bytes` holds with this index interval.
    fn record_room(&self) -> usize {
        let entries = format::index_entries_for(self.segment_bytes, self.index_interval_bytes);
        (self.segment_bytes as usize).saturating_sub(format::data_start(entries) + format::RECORD_HEADER_BYTES)
    }

    /// These options with the default record limit lowered to what one segment holds, when
    /// the segment is too small for it (an explicit limit is left for
    /// [`LogOptions::validate`] to refuse).
    pub(crate) fn fitted(mut self) -> LogOptions {
        if self.max_record_bytes == DEFAULT_MAX_RECORD_BYTES && self.index_interval_bytes != 0 {
            let room = self.record_room() & !7;
            if room > 0 && room < self.max_record_bytes {
                self.max_record_bytes = room;
            }
        }
        self
    }

    /// Checks the values against the format's limits.
    ///
    /// # Errors
    /// [`LogError::Config`] naming the bad value.
    pub fn validate(&self) -> Result<(), LogError> {
        let seg = self.segment_bytes;
        if seg % format::PAGE_BYTES as u64 != 0 || seg < 64 << 10 || seg > format::SEGMENT_BYTES_FORMAT_MAX as u64 {
            return Err(LogError::Config(format!(
                "segment_bytes {seg} must be a multiple of 4096 between 64 KiB and 1 GiB"
            )));
        }
        if self.prealloc_bytes % format::PAGE_BYTES as u64 != 0 || self.prealloc_bytes < 64 << 10 {
            return Err(LogError::Config(format!(
                "prealloc_bytes {} must be a multiple of 4096 and at least 64 KiB",
                self.prealloc_bytes
            )));
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes % 8 != 0 {
            return Err(LogError::Config(format!(
                "index_interval_bytes {} must be a positive multiple of 8",
                self.index_interval_bytes
            )));
        }
        let room = self.record_room().min(format::PAYLOAD_BYTES_FORMAT_MAX);
        if self.max_record_bytes > room {
            return Err(LogError::Config(format!(
                "LogOptions::max_record_bytes {} does not fit in a segment of LogOptions::segment_bytes {seg} \
                 (a record there holds at most {room} bytes); lower max_record_bytes to {room} or less, or raise \
                 segment_bytes (`--segment-size` on the command line)",
                self.max_record_bytes
            )));
        }
        if let Durability::Interval(d) = self.durability {
            if d.is_zero() {
                return Err(LogError::Config("Durability::Interval needs a non-zero interval; use Batch".into()));
            }
        }
        Ok(())
    }
}

/// A wall clock for record timestamps that costs a few ns: the CPU's time-stamp counter
/// (through `quanta`, which calibrates it and falls back to the OS clock where the counter is
/// unusable), anchored to the system clock. It re-anchors itself once [`REANCHOR_NS`] of
/// counter time has passed since the last anchor (and the appender at every segment
/// activation), so the counter's calibration error (tens of ppm) never adds up to more
/// than a fraction of a microsecond against the system clock. Anchoring only at
/// activations let a busy segment's timestamps run hundreds of microseconds ahead of the
/// system clock within seconds.
#[derive(Debug, Clone)]
pub(crate) struct WallClock {
    clock: quanta::Clock,
    anchor_raw: u64,
    anchor_ns: u64,
}

impl WallClock {
    pub(crate) fn new() -> WallClock {
        let clock = quanta::Clock::new();
        let anchor_raw = clock.raw();
        WallClock { clock, anchor_raw, anchor_ns: now_ns() }
    }

    pub(crate) fn reanchor(&mut self) {
        self.anchor_raw = self.clock.raw();
        self.anchor_ns = now_ns();
    }

    #[inline]
    pub(crate) fn now_ns(&mut self) -> u64 {
        let since = self.clock.delta_as_nanos(self.anchor_raw, self.clock.raw());
        if since >= REANCHOR_NS {
            self.reanchor();
            return self.anchor_ns;
        }
        self.anchor_ns + since
    }
}

/// Counter time after which [`WallClock`] reads the system clock again (one
/// `clock_gettime` per millisecond at most).
pub(crate) const REANCHOR_NS: u64 = 1_000_000;

/// Wall clock in ns since the Unix epoch (0 if the clock is before it).
#[inline]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_goes_back_to_the_system_clock_after_a_millisecond() {
        let mut clock = WallClock::new();
        // An anchor a second off (as a counter calibrated a little wrong drifts over a long
        // segment, magnified): the next reading past REANCHOR_NS must not keep the error.
        clock.anchor_ns -= 1_000_000_000;
        std::thread::sleep(Duration::from_nanos(2 * REANCHOR_NS));
        let (before, read, after) = (now_ns(), clock.now_ns(), now_ns());
        assert!(before <= read && read <= after, "{before} <= {read} <= {after}");
        // And it then counts on from the new anchor.
        let next = clock.now_ns();
        assert!(next >= read && next <= now_ns(), "{read} <= {next}");
    }
}
