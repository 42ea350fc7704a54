//! The `HEAD` control page: a 4 KiB file mapped shared by the appender and every reader, in
//! any process. It carries what is cheap to share and safe to lose:
//!
//! ```text
//!   0  magic           [u8; 8]  b"SHOALHED"
//!   8  version         u32      1
//!  12  appender_pid    u32      pid of the live appender, 0 when none
//!  64  notify          u32      futex word: bumped after records are published
//!  68  waiters         u32      tailers asleep (or about to sleep) on `notify`
//! 128  durable_offset  u64      every offset below this is durable
//! ```
//! (The words written by different parties sit on different cache lines.)
//!
//! Wake-up protocol (Dekker style, so a wake-up is never missed): a tailer increments
//! `waiters` (SeqCst), issues a full fence, reads `notify`, re-checks the log for a record,
//! and only then sleeps in `FUTEX_WAIT` on `notify` with the value it read. The appender
//! publishes a record, fences, and when `waiters` is non-zero bumps `notify` and calls
//! `FUTEX_WAKE`. The futex is not process-private, so it works across processes sharing the
//! file.
//!
//! The fence is asymmetric where the kernel allows (see [`AsymmetricFence`]): the appender's
//! side is a compiler fence only, and the rare side (a tailer about to sleep) pays for a
//! `membarrier(2)` that makes every thread of registered processes execute a full barrier.
//! Where `membarrier` is unavailable both sides use a real fence.
//!
//! The futex calls are those of [`crate::sys::futex`] (process-shared, written by hand).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use memmap2::MmapRaw;

use super::error::LogError;
use crate::sys::fence::AsymmetricFence;
use crate::sys::fs::{open_file_at, Dir, Open};
use crate::sys::futex;

const HEAD_MAGIC: [u8; 8] = *b"SHOALHED";
const HEAD_VERSION: u32 = 1;
const HEAD_BYTES: u64 = 4096;
const APPENDER_PID: usize = 12;
const NOTIFY: usize = 64;
const WAITERS: usize = 68;
const DURABLE: usize = 128;
/// File name of the control page.
pub const HEAD_FILE: &str = "HEAD";

/// The mapped control page.
#[derive(Debug)]
pub struct Head {
    map: MmapRaw,
    /// False for a page mapped read-only (a reader on a read-only file system): it never
    /// stores, and a tailer waiting on it polls instead of registering as a sleeper.
    writable: bool,
}

/// How long a tailer on a read-only page sleeps at most: it cannot register as a sleeper, so
/// no appender would wake it.
const READ_ONLY_WAIT: Duration = Duration::from_millis(1);

impl Head {
    /// Opens the control page of the log in `dir` for the appender, creating it if missing.
    /// The file is opened relative to the directory, never through a symlink.
    ///
    /// # Errors
    /// I/O errors, a symlink or non-regular file planted as `HEAD`, or a `HEAD` file that
    /// is not a shoal control page.
    pub fn create(dir: &Dir) -> Result<Head, LogError> {
        let path = dir.join(HEAD_FILE);
        let file = dir.open_file(HEAD_FILE, Open::ReadWriteCreate).map_err(|e| LogError::io(&path, "open", e))?;
        let len = file.metadata().map_err(|e| LogError::io(&path, "stat", e))?.len();
        if len < HEAD_BYTES {
            file.set_len(HEAD_BYTES).map_err(|e| LogError::io(&path, "extend", e))?;
        }
        let head = Head::map(&file, &path, true)?;
        if head.u64_at(0).load(Ordering::Acquire) == 0 {
            head.u32_at(8).store(HEAD_VERSION, Ordering::Relaxed);
            // pairs with the Acquire load of the magic in `Head::check` of other openers
            head.u64_at(0).store(u64::from_le_bytes(HEAD_MAGIC), Ordering::Release);
        }
        head.check(&path)?;
        Ok(head)
    }

    /// Opens the existing control page of the log in `dir` read-write without creating or
    /// extending it (`repair`). `None` when there is none: no appender ever opened the log.
    ///
    /// # Errors
    /// As [`Head::open_existing`].
    pub fn open_writable(dir: &Dir) -> Result<Option<Head>, LogError> {
        let path = dir.join(HEAD_FILE);
        match dir.open_file(HEAD_FILE, Open::ReadWrite) {
            Ok(file) => Head::existing(&file, &path, true).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::io(&path, "open", e)),
        }
    }

    /// Opens the existing control page of the log in `dir` for a reader: never creates,
    /// extends or initialises it. `None` when there is none (no appender ever opened the
    /// log: its durable watermark is 0). The page is mapped read-write where the file allows
    /// it (a tailer registers as a sleeper there) and read-only otherwise (a read-only file
    /// system or a file the reader may not write), so the watermark reads everywhere.
    ///
    /// # Errors
    /// A symlink or non-regular file planted as `HEAD`, a file shorter than the page (one
    /// being created), one that is not a control page, I/O errors.
    pub fn open_existing(dir: &Path) -> Result<Option<Head>, LogError> {
        let path = dir.join(HEAD_FILE);
        let (file, writable) = match open_file_at(&path, Open::ReadWrite) {
            Ok(file) => (file, true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)) => {
                match open_file_at(&path, Open::Read) {
                    Ok(file) => (file, false),
                    Err(e) => return Err(LogError::io(&path, "open", e)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io(&path, "open", e)),
        };
        Head::existing(&file, &path, writable).map(Some)
    }

    /// Maps an existing page that must be whole, and checks it.
    fn existing(file: &File, path: &Path, writable: bool) -> Result<Head, LogError> {
        let len = file.metadata().map_err(|e| LogError::io(path, "stat", e))?.len();
        if len < HEAD_BYTES {
            return Err(LogError::NotASegment {
                path: path.to_path_buf(),
                why: format!("HEAD is {len} bytes, a control page is {HEAD_BYTES}"),
            });
        }
        let head = Head::map(file, path, writable)?;
        head.check(path)?;
        Ok(head)
    }

    /// Maps the first [`HEAD_BYTES`] of `file`, which is at least that long.
    fn map(file: &File, path: &Path, writable: bool) -> Result<Head, LogError> {
        let mut opts = memmap2::MmapOptions::new();
        opts.len(HEAD_BYTES as usize);
        let map = if writable { opts.map_raw(file) } else { opts.map_raw_read_only(file) }
            .map_err(|e| LogError::io(path, "mmap", e))?;
        Ok(Head { map, writable })
    }

    /// Checks the magic (a zero one is a page not yet initialised by its appender) and the
    /// version.
    fn check(&self, path: &Path) -> Result<(), LogError> {
        let magic_word = self.u64_at(0).load(Ordering::Acquire);
        if magic_word != 0 && magic_word != u64::from_le_bytes(HEAD_MAGIC) {
            return Err(LogError::NotASegment {
                path: path.to_path_buf(),
                why: "HEAD is not a shoal control page".into(),
            });
        }
        let version = self.u32_at(8).load(Ordering::Relaxed);
        if version > HEAD_VERSION {
            return Err(LogError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: HEAD_VERSION,
            });
        }
        Ok(())
    }

    fn u32_at(&self, at: usize) -> &AtomicU32 {
        assert!(at % 4 == 0 && at + 4 <= HEAD_BYTES as usize);
        // SAFETY: in bounds of the 4 KiB mapping (asserted), 4-aligned (the mapping is
        // page-aligned); every process accesses these words only atomically.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(at).cast()) }
    }

    fn u64_at(&self, at: usize) -> &AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= HEAD_BYTES as usize);
        // SAFETY: as for u32_at, 8-aligned.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(at).cast()) }
    }

    /// The durable watermark recorded by the appender.
    pub fn durable_offset(&self) -> u64 {
        self.u64_at(DURABLE).load(Ordering::Acquire)
    }

    /// Records the durable watermark (monotonic).
    pub fn set_durable_offset(&self, offset: u64) {
        if !self.writable {
            return;
        }
        // pairs with the Acquire load in durable_offset
        self.u64_at(DURABLE).fetch_max(offset, Ordering::Release);
    }

    /// Sets the durable watermark, lowering it if needed (after a repair cut records off).
    pub fn reset_offsets(&self, next: u64) {
        if !self.writable {
            return;
        }
        self.u64_at(DURABLE).store(next, Ordering::Release);
    }

    /// Records the live appender's pid (0 when it closes).
    pub fn set_appender_pid(&self, pid: u32) {
        if !self.writable {
            return;
        }
        self.u32_at(APPENDER_PID).store(pid, Ordering::Release);
    }

    /// Called by the appender after publishing records and issuing a SeqCst fence: wakes
    /// sleeping tailers, if any.
    ///
    /// The fence pairs with the SeqCst increment of `waiters` in [`Head::prepare_wait`]:
    /// either the tailer sees the new record on its re-check, or we see its registration.
    #[inline]
    pub fn notify_after_fence(&self) {
        if self.u32_at(WAITERS).load(Ordering::Relaxed) != 0 {
            self.wake();
        }
    }

    /// Bumps the futex word and wakes every sleeper.
    #[cold]
    pub fn wake(&self) {
        if !self.writable {
            return;
        }
        let word = self.u32_at(NOTIFY);
        word.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(word);
    }

    /// Registers a sleeper; returns the futex value to pass to [`Head::wait`]. The caller
    /// re-checks for new records before waiting and calls [`Head::finish_wait`] afterwards.
    pub fn prepare_wait(&self) -> u32 {
        if self.writable {
            self.u32_at(WAITERS).fetch_add(1, Ordering::SeqCst);
        }
        AsymmetricFence::heavy();
        self.u32_at(NOTIFY).load(Ordering::SeqCst)
    }

    /// Sleeps until the futex word moves from `seen` or `timeout` passes.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        let timeout = if self.writable { timeout } else { timeout.min(READ_ONLY_WAIT) };
        futex::wait(self.u32_at(NOTIFY), seen, timeout);
    }

    /// False for a page mapped read-only (see [`Head::open_existing`]): it registers no
    /// sleeper, so a waiter on it polls.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The futex word the appender bumps (for waiting on several logs at once with
    /// `futex_waitv`; follow the protocol of [`Head::prepare_wait`]).
    pub(crate) fn notify_word(&self) -> &AtomicU32 {
        self.u32_at(NOTIFY)
    }

    /// Unregisters a sleeper.
    pub fn finish_wait(&self) {
        if !self.writable {
            return;
        }
        self.u32_at(WAITERS).fetch_sub(1, Ordering::SeqCst);
    }
}
