//! Errors of the log: one enum for the cold path (open, recover, configure, read) and a small
//! one for the append hot path.

use std::io;
use std::path::PathBuf;

/// Errors from opening, recovering, configuring, reading or repairing a log.
///
/// Every variant names the file and says what a person can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O call failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Another appender (in this or another process) holds the log in a way that excludes
    /// this one: an exclusive appender or a repair, or shared appenders when this one (or a
    /// repair) needs the log alone.
    #[error("{path}: the log is locked by {holder}; stop it, or open a reader instead")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it: "another appender (pid N)", or "appenders of the shared log".
        holder: String,
    },
    /// A file named like a segment is not one.
    #[error("{path}: not a shoal segment ({why}); move it out of the log directory")]
    NotASegment {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The `HEAD` control page is damaged (or, for a version this build does not know,
    /// written by a newer shoal: the page has no checksum to tell). It holds no records.
    #[error("{path}: {why}; `shoal verify --repair` rewrites the control page (it holds no records)")]
    DamagedHead {
        /// The `HEAD` file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A segment written by a newer shoal.
    #[error(
        "{path}: segment format version {found} is newer than version {supported} that this shoal reads; upgrade shoal"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// Damage in records that were (or may have been) acknowledged durable.
    #[error("{path}: corruption at byte {position} (offset {offset}): {why}; run `shoal verify --repair` to truncate the log there, or open with RecoveryMode::TruncateCorrupt")]
    Corruption {
        /// The segment file.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// The offset expected at that position.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// A torn tail found while the recovery mode forbids cutting it.
    #[error("{path}: torn record at byte {position} (offset {offset}): {why}; open with RecoveryMode::TruncateTail or run `shoal verify --repair`")]
    TornTail {
        /// The segment file.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// The offset expected at that position.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// The segment files contradict each other (a gap, a missing file).
    #[error("{path}: {why}; restore the missing segment or run `shoal verify` for details")]
    Inconsistent {
        /// The file where the contradiction shows.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A configuration value is out of range.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// The disk is full: space for a segment could not be allocated.
    #[error(
        "{path}: no space left on the device{}; free disk space, lower retention, or use smaller segments \
         (`--segment-size` on the command line, `LogOptions::segment_bytes` in the library)",
        asked(*.bytes)
    )]
    NoSpace {
        /// The file that could not be allocated.
        path: PathBuf,
        /// Bytes asked for (0 when unknown).
        bytes: u64,
    },
    /// The requested offset was removed by retention.
    #[error("{path}: offset {offset} was removed by retention; the first offset still held is {first}")]
    OffsetGone {
        /// The log directory.
        path: PathBuf,
        /// Offset asked for.
        offset: u64,
        /// First offset still in the log.
        first: u64,
    },
    /// The directory is a bus or one of its topics, not a log: a log command or type
    /// pointed one level too high.
    #[error("{path}: this is {what}, not a log; {hint}")]
    WrongDirectory {
        /// The directory.
        path: PathBuf,
        /// What it is ("a bus directory", "a topic directory").
        what: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// Options that the log cannot be opened with.
    #[error("{path}: {why}")]
    Options {
        /// The log directory.
        path: PathBuf,
        /// Which option is wrong, and what to change.
        why: String,
    },
    /// The log directory does not exist or holds no log.
    #[error("{path}: no shoal log here; create it with an appender (`shoal produce`)")]
    NoLog {
        /// The directory.
        path: PathBuf,
    },
    /// io_uring was required but is unavailable.
    #[error("io_uring is unavailable ({source}); use IoBackend::Auto or IoBackend::Syscalls")]
    UringUnavailable {
        /// Why setting up a ring failed.
        source: io::Error,
    },
    /// A data sync failed; the log refuses further writes, since the page cache can no
    /// longer be trusted to match the disk.
    #[error("{path}: data sync failed ({source}); the log stopped accepting appends; reopen it to recover")]
    SyncFailed {
        /// The segment whose sync failed.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another program truncated a segment file while it was mapped: the pages past its new
    /// end read as zeros. Records there are lost; nothing written there since was
    /// acknowledged durable.
    #[error("{path}: the segment file shrank to {len_bytes} bytes (of {mapped_bytes}) while in use; something outside shoal truncated it: stop it, then run `shoal verify --repair` on the log")]
    SegmentShrank {
        /// The segment file.
        path: PathBuf,
        /// Its length when the shrink was found.
        len_bytes: u64,
        /// Bytes mapped (its length at open).
        mapped_bytes: u64,
    },
    /// The appender was closed, or its background thread is gone.
    #[error("the log is closed")]
    Closed,
}

/// The space a [`LogError::NoSpace`] asked for, for its message (nothing when unknown).
fn asked(bytes: u64) -> String {
    if bytes == 0 {
        String::new()
    } else {
        format!(" for the {bytes} bytes of segment space asked for")
    }
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> LogError {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return LogError::NoSpace { path, bytes: 0 };
        }
        LogError::Io { path, op, source }
    }
}

/// Errors of the append hot path: cheap to match, no allocation.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The record is larger than the log's `max_record_bytes` (its payload, and its
    /// extension block when it has key text or an event time).
    #[error("record of {len} bytes exceeds the log's maximum of {max} bytes; raise LogOptions::max_record_bytes or split the record")]
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The record's key text is longer than the format allows.
    #[error("key text of {len} bytes exceeds the format's maximum of {max} bytes; use a shorter key")]
    KeyTooLong {
        /// Bytes of key text given.
        len: usize,
        /// The format's maximum ([`KEY_BYTES_MAX`](super::format::KEY_BYTES_MAX)).
        max: usize,
    },
    /// The log could not go on (disk full, a failed sync, I/O error); records already
    /// appended are intact.
    #[error(transparent)]
    Log(#[from] LogError),
}
