//! The measuring code of shoal's benchmarks, written once: the criterion benches
//! (`benches/ring.rs`, `benches/log.rs`) and `shoal bench` (`src/cli/bench.rs`) both include
//! this folder with `#[path]` and call the same kernels.
//!
//! A kernel runs one measured round of shoal or of its peer and returns the time it took
//! (`ring::hop_one_shoal`, `log::append_run`, `fs::bufwriter_run`, `fs::o_direct_write`,
//! `produce::shoal_produce`, ...). The log and file kernels measure as a user would: each
//! round starts from a fresh, empty directory and is timed from the open (or the file's
//! creation, or the process's spawn) to the close (or the exit), so that opening, rollovers,
//! the preparation of segments and the close (what dropping an appender costs) all count.
//! Only making the empty directory, writing what a replay or a `produce` reads, and deleting
//! the directory afterwards are outside the timed part. Criterion wraps the kernels in
//! `iter_custom`; `shoal bench` wraps them in interleaved rounds and reports medians.
//!
//! What both callers share besides the kernels:
//! - the file-system probe ([`fs::file_system`]) masks `statfs`'s `f_type` to its low 32 bits
//!   (it is signed on some targets) and names the same file systems on both sides;
//! - a wait for durability gives up after [`log::DURABLE_WAIT_MAX`] with an error;
//! - the peer program of `shoal produce` is the caller's own binary run again with
//!   [`produce::LINES_PEER_ENV`] set, which the caller checks before anything else.
//!
//! Kernels use only shoal's public API and crates that both the `shoal` binary and the benches
//! have (rtrb, libc, tempfile); the peers that are dev-dependencies (the `disruptor` crate,
//! crossbeam's queues) stay in the criterion benches.

pub mod fs;
pub mod log;
pub mod produce;
pub mod ring;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use shoal::log::{AppendError, LogError, Offset};

/// Why a kernel could not measure its round.
#[derive(Debug)]
pub enum KernelError {
    /// Opening, syncing or reading a log failed.
    Log(LogError),
    /// An append failed.
    Append(AppendError),
    /// An operation on a peer's file or a scratch directory failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A record was not durable within the wait allowed.
    NotDurable {
        /// The log's directory.
        dir: PathBuf,
        /// The record waited for.
        offset: Offset,
        /// How long the kernel waited.
        waited: Duration,
    },
    /// A replay, or the check after a run, read another number of records than were written.
    ReplayShort {
        /// The log's directory, or the peer's file.
        dir: PathBuf,
        /// Records read.
        read: u64,
        /// Records written.
        expected: u64,
    },
    /// A thread of a ring hop panicked (its message is on stderr).
    ThreadPanicked,
    /// A measured process (`shoal produce`, the peer program) failed.
    Process {
        /// Which process.
        what: &'static str,
        /// Its exit status and stderr, or what was wrong with its input.
        detail: String,
    },
}

impl KernelError {
    /// An I/O error of `what` on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> KernelError {
        KernelError::Io { what, path: path.into(), source }
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Log(e) => write!(f, "{e}"),
            KernelError::Append(e) => write!(f, "{e}"),
            KernelError::Io { what, path, source } => write!(f, "{}: {what} failed: {source}", path.display()),
            KernelError::NotDurable { dir, offset, waited } => {
                write!(f, "{}: record {offset} was not durable after {waited:?}; is the disk stalled?", dir.display())
            }
            KernelError::ReplayShort { dir, read, expected } => {
                write!(f, "{}: read {read} records back of the {expected} written", dir.display())
            }
            KernelError::Process { what, detail } => write!(f, "{what} failed: {detail}"),
            KernelError::ThreadPanicked => f.write_str("a ring bench thread panicked; see the message above"),
        }
    }
}

impl std::error::Error for KernelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KernelError::Log(e) => Some(e),
            KernelError::Append(e) => Some(e),
            KernelError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<LogError> for KernelError {
    fn from(e: LogError) -> KernelError {
        KernelError::Log(e)
    }
}

impl From<AppendError> for KernelError {
    fn from(e: AppendError) -> KernelError {
        KernelError::Append(e)
    }
}
