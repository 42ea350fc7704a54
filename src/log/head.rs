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

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use memmap2::MmapRaw;

use super::error::LogError;
use crate::sys::fence::AsymmetricFence;
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
}

impl Head {
    /// Opens (creating if missing) the control page of the log in `dir`.
    ///
    /// # Errors
    /// I/O errors, or a `HEAD` file that is not a shoal control page.
    pub fn open(dir: &Path) -> Result<Head, LogError> {
        let path = dir.join(HEAD_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LogError::io(&path, "open", e))?;
        let len = file.metadata().map_err(|e| LogError::io(&path, "stat", e))?.len();
        if len < HEAD_BYTES {
            file.set_len(HEAD_BYTES).map_err(|e| LogError::io(&path, "extend", e))?;
        }
        let map = memmap2::MmapOptions::new()
            .len(HEAD_BYTES as usize)
            .map_raw(&file)
            .map_err(|e| LogError::io(&path, "mmap", e))?;
        let head = Head { map };
        let magic_word = head.u64_at(0).load(Ordering::Acquire);
        if magic_word == 0 {
            head.u32_at(8).store(HEAD_VERSION, Ordering::Relaxed);
            // pairs with the Acquire load of the magic above in other openers
            head.u64_at(0).store(u64::from_le_bytes(HEAD_MAGIC), Ordering::Release);
        } else if magic_word != u64::from_le_bytes(HEAD_MAGIC) {
            return Err(LogError::NotASegment { path, why: "HEAD is not a shoal control page".into() });
        } else {
            let version = head.u32_at(8).load(Ordering::Relaxed);
            if version > HEAD_VERSION {
                return Err(LogError::UnsupportedVersion { path, found: version, supported: HEAD_VERSION });
            }
        }
        Ok(head)
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
        // pairs with the Acquire load in durable_offset
        self.u64_at(DURABLE).fetch_max(offset, Ordering::Release);
    }

    /// Sets the durable watermark, lowering it if needed (after a repair cut records off).
    pub fn reset_offsets(&self, next: u64) {
        self.u64_at(DURABLE).store(next, Ordering::Release);
    }

    /// Records the live appender's pid (0 when it closes).
    pub fn set_appender_pid(&self, pid: u32) {
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
        let word = self.u32_at(NOTIFY);
        word.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(word);
    }

    /// Registers a sleeper; returns the futex value to pass to [`Head::wait`]. The caller
    /// re-checks for new records before waiting and calls [`Head::finish_wait`] afterwards.
    pub fn prepare_wait(&self) -> u32 {
        self.u32_at(WAITERS).fetch_add(1, Ordering::SeqCst);
        AsymmetricFence::heavy();
        self.u32_at(NOTIFY).load(Ordering::SeqCst)
    }

    /// Sleeps until the futex word moves from `seen` or `timeout` passes.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        futex::wait(self.u32_at(NOTIFY), seen, timeout);
    }

    /// The futex word the appender bumps (for waiting on several logs at once with
    /// `futex_waitv`; follow the protocol of [`Head::prepare_wait`]).
    pub(crate) fn notify_word(&self) -> &AtomicU32 {
        self.u32_at(NOTIFY)
    }

    /// Unregisters a sleeper.
    pub fn finish_wait(&self) {
        self.u32_at(WAITERS).fetch_sub(1, Ordering::SeqCst);
    }
}
