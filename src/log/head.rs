//! The `HEAD` control page: a 4 KiB file mapped shared by the appender and every reader, in
//! any process. It carries what is cheap to share and safe to lose:
//!
//! ```text
//!   0  magic           [u8; 8]  b"SHOALHED"
//!   8  version         u32      1
//!  12  appender_pid    u32      pid of the live appender, 0 when none
//!  64  notify          u32      futex word: bumped after records are published
//!  68  waiters         u32      tailers asleep (or about to sleep) on `notify`
//! 128  durable_offset  u64      every offset below this is durable (the word tailers read)
//! 192  durable slot 0  24 B     checksummed copy of the watermark (below)
//! 224  durable slot 1  24 B     the other copy
//! 256  role_epoch      u64      bumped by each appender that takes the writer role
//! 264  role_dirty      u32      1 while the role is held (left at 1 by a killed holder)
//! 272  tail_segment    u64      the active segment's id          \
//! 280  tail_position   u64      where its next record goes        | the holder's tail,
//! 288  tail_next       u64      the next offset                   | stored as it appends
//! 296  tail_index      u32      the active segment's next free index slot
//! 300  tail_index_at   u32      the position from which the next record gets an entry /
//! 320  role_wanted     u32      futex word: appenders waiting for the role
//! ```
//! The words from 256 on belong to the writer role of shared logs ([`super::role`]), in
//! space that was reserved: older builds ignore them.
//! (The words written by different parties sit on different cache lines.)
//!
//! # Checksummed copies of the watermark (added in version 1, in space that was reserved)
//! Recovery decides from the watermark whether damage is a torn tail or corruption, so one
//! flipped bit in the plain word must not be able to move it. The sync thread therefore
//! writes each new watermark first into the older of two slots, then into the plain word:
//! ```text
//!  0  value  u64  the watermark
//!  8  seq    u64  1 + the higher seq of the two slots when written
//! 16  crc    u32  CRC32C of bytes 0..16 prefixed with b"SHOALDUR"
//! 20  zero   u32
//! ```
//! Recovery, `verify` and the readers' cold checks use the valid slot with the highest
//! `seq` while both slots are valid. When one fails its checksum (reported by `verify`),
//! they use the higher of the other slot and the plain word: the older slot holds the
//! previous watermark, so trusting it alone would let one flipped bit in the newer slot
//! lower the watermark ([`Head::durable_checked`]). A page whose slots are both zero
//! (written by an older build) falls back to the plain word. Resetting the watermark (open, repair) writes both slots. Older builds
//! read the same page and only ignore the slots: the version stays 1.
//!
//! Wake-up protocol (Dekker style, so a wake-up is never missed): a tailer increments
//! `waiters` (SeqCst), issues a full fence, reads `notify`, re-checks the log for a record,
//! and only then sleeps in `FUTEX_WAIT` on `notify` with the value it read (the tailer's side
//! is written once, as `wait::Sleepers`). The appender publishes a record, fences, and when
//! `waiters` is non-zero bumps `notify` and calls `FUTEX_WAKE`. The futex is not
//! process-private, so it works across processes sharing the file.
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
use crate::sys::sigbus;

const HEAD_MAGIC: [u8; 8] = *b"SHOALHED";
const HEAD_VERSION: u32 = 1;
const HEAD_BYTES: u64 = 4096;
const APPENDER_PID: usize = 12;
const NOTIFY: usize = 64;
const WAITERS: usize = 68;
const DURABLE: usize = 128;
const DURABLE_SLOTS: [usize; 2] = [192, 224];
const SLOT_CRC_PREFIX: [u8; 8] = *b"SHOALDUR";
const ROLE_EPOCH: usize = 256;
const ROLE_DIRTY: usize = 264;
const TAIL_SEGMENT: usize = 272;
const TAIL_POSITION: usize = 280;
const TAIL_NEXT: usize = 288;
const TAIL_INDEX: usize = 296;
const TAIL_INDEX_AT: usize = 300;
const ROLE_WANTED: usize = 320;
/// File name of the control page.
pub const HEAD_FILE: &str = "HEAD";

/// The mapped control page.
#[derive(Debug)]
pub struct Head {
    /// The page's registration with the `SIGBUS` handler (see [`crate::sys::sigbus`]): a
    /// `HEAD` truncated under the mapping then reads as zeros (watermark 0, no waiters)
    /// instead of killing the process. Declared before `map`, so it is dropped (and the
    /// range unregistered) before the mapping goes.
    _sigbus: Option<sigbus::Registration>,
    map: MmapRaw,
    /// False for a page mapped read-only (a reader on a read-only file system): it never
    /// stores, and a tailer waiting on it polls instead of registering as a sleeper.
    writable: bool,
}

/// The tail of a shared log as its last role holder stored it in the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TailWords {
    pub(crate) segment: u64,
    pub(crate) position: u64,
    pub(crate) next: u64,
    pub(crate) index_slot: u32,
    pub(crate) index_next_position: u32,
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
            return Err(LogError::DamagedHead {
                path: path.to_path_buf(),
                why: format!("{len} bytes, a control page is {HEAD_BYTES}"),
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
        // SAFETY: the range is exactly the new mapping, which `map` keeps until the `Head` is
        // dropped; the registration is a field declared before `map`, so it is dropped (and
        // unregistered) first: the range is never unmapped while registered.
        let registration = unsafe { sigbus::register(map.as_ptr(), HEAD_BYTES as usize) };
        Ok(Head { _sigbus: registration, map, writable })
    }

    /// Checks the magic (a zero one is a page not yet initialised by its appender) and the
    /// version.
    fn check(&self, path: &Path) -> Result<(), LogError> {
        let magic_word = self.u64_at(0).load(Ordering::Acquire);
        if magic_word != 0 && magic_word != u64::from_le_bytes(HEAD_MAGIC) {
            return Err(LogError::DamagedHead {
                path: path.to_path_buf(),
                why: "not a shoal control page (bad magic)".into(),
            });
        }
        let version = self.u32_at(8).load(Ordering::Relaxed);
        if version > HEAD_VERSION {
            return Err(LogError::DamagedHead { path: path.to_path_buf(), why: newer_or_damaged(version) });
        }
        Ok(())
    }

    #[inline]
    fn u32_at(&self, at: usize) -> &AtomicU32 {
        assert!(at % 4 == 0 && at + 4 <= HEAD_BYTES as usize);
        // SAFETY: in bounds of the 4 KiB mapping (asserted), 4-aligned (the mapping is
        // page-aligned); every process accesses these words only atomically.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(at).cast()) }
    }

    #[inline]
    fn u64_at(&self, at: usize) -> &AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= HEAD_BYTES as usize);
        // SAFETY: as for u32_at, 8-aligned.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(at).cast()) }
    }

    /// The durable watermark recorded by the appender.
    pub fn durable_offset(&self) -> u64 {
        self.u64_at(DURABLE).load(Ordering::Acquire)
    }

    /// Records the durable watermark (monotonic): the older checksummed slot first, then
    /// the plain word. Called by the sync thread, the only writer while an appender runs.
    pub fn set_durable_offset(&self, offset: u64) {
        if !self.writable {
            return;
        }
        let value = offset.max(self.durable_offset());
        self.write_slot(value);
        // pairs with the Acquire load in durable_offset
        self.u64_at(DURABLE).fetch_max(offset, Ordering::Release);
    }

    /// Sets the durable watermark, lowering it if needed (after a repair cut records off):
    /// both checksummed slots, then the plain word.
    pub fn reset_offsets(&self, next: u64) {
        if !self.writable {
            return;
        }
        self.write_slot(next);
        self.write_slot(next);
        self.u64_at(DURABLE).store(next, Ordering::Release);
    }

    /// The watermark as recovery trusts it: the newer slot while both pass their checksum,
    /// the higher of a lone valid slot and the plain word, or the plain word when no slot is
    /// valid (a page of an older build).
    pub fn durable_checked(&self) -> u64 {
        durable_from(&self.slots(), self.durable_offset())
    }

    /// The two checksummed slots, as decoded now.
    fn slots(&self) -> [SlotState; 2] {
        DURABLE_SLOTS.map(|at| {
            let value = self.u64_at(at).load(Ordering::Acquire);
            let seq = self.u64_at(at + 8).load(Ordering::Acquire);
            let crc = self.u32_at(at + 16).load(Ordering::Acquire);
            SlotState::decode(value, seq, crc)
        })
    }

    /// Writes `value` into the older (or damaged) of the two slots.
    fn write_slot(&self, value: u64) {
        let slots = self.slots();
        let seq_of = |s: &SlotState| if let SlotState::Valid { seq, .. } = s { *seq } else { 0 };
        let newest = seq_of(&slots[0]).max(seq_of(&slots[1]));
        let target = match (&slots[0], &slots[1]) {
            (SlotState::Valid { seq: a, .. }, SlotState::Valid { seq: b, .. }) => usize::from(a > b),
            (SlotState::Valid { .. }, _) => 1,
            _ => 0,
        };
        let Some(seq) = newest.checked_add(1) else {
            // A slot claims the last sequence number (only a damaged or crafted page can):
            // start the sequence over, the older slot first, so that until the second store
            // the newest valid slot still holds the watermark it held before.
            self.store_slot(DURABLE_SLOTS[target], value, 1);
            self.store_slot(DURABLE_SLOTS[1 - target], value, 2);
            return;
        };
        self.store_slot(DURABLE_SLOTS[target], value, seq);
    }

    /// Stores one slot: checksum cleared first, so a reader that sees it half-written finds
    /// a bad checksum and uses the other one.
    fn store_slot(&self, at: usize, value: u64, seq: u64) {
        self.u32_at(at + 16).store(0, Ordering::Release);
        self.u64_at(at).store(value, Ordering::Release);
        self.u64_at(at + 8).store(seq, Ordering::Release);
        self.u32_at(at + 16).store(slot_crc(value, seq), Ordering::Release);
    }

    /// The pid of the live appender recorded in the page (0 when none runs, or the log was
    /// closed cleanly).
    pub fn appender_pid(&self) -> u32 {
        self.u32_at(APPENDER_PID).load(Ordering::Acquire)
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
    /// re-checks for new records before waiting and calls [`Head::finish_wait`] afterwards:
    /// the protocol is written once, in `wait::Sleepers`, the only caller.
    pub(super) fn prepare_wait(&self) -> u32 {
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
    pub(super) fn notify_word(&self) -> &AtomicU32 {
        self.u32_at(NOTIFY)
    }

    /// The writer role's epoch word (bumped by each new holder).
    #[inline]
    pub(crate) fn role_epoch(&self) -> &AtomicU64 {
        self.u64_at(ROLE_EPOCH)
    }

    /// The writer role's dirty word: 1 while held, so a holder that died leaves it at 1.
    #[inline]
    pub(crate) fn role_dirty(&self) -> &AtomicU32 {
        self.u32_at(ROLE_DIRTY)
    }

    /// The futex word counting appenders that wait for the writer role.
    #[inline]
    pub(crate) fn role_wanted(&self) -> &AtomicU32 {
        self.u32_at(ROLE_WANTED)
    }

    /// Stores where the log's tail is (by the role holder, after each publication).
    #[inline]
    pub(crate) fn store_tail(&self, segment: u64, position: u64, next: u64) {
        self.u64_at(TAIL_SEGMENT).store(segment, Ordering::Relaxed);
        self.u64_at(TAIL_POSITION).store(position, Ordering::Relaxed);
        self.u64_at(TAIL_NEXT).store(next, Ordering::Relaxed);
    }

    /// Stores the active segment's index cursor (by the role holder, when it moves).
    pub(crate) fn store_tail_index(&self, slot: u32, next_position: u32) {
        self.u32_at(TAIL_INDEX).store(slot, Ordering::Relaxed);
        self.u32_at(TAIL_INDEX_AT).store(next_position, Ordering::Relaxed);
    }

    /// The tail as the last holder of the writer role left it (read after taking the role,
    /// whose lock orders these loads after that holder's stores).
    pub(crate) fn tail(&self) -> TailWords {
        TailWords {
            segment: self.u64_at(TAIL_SEGMENT).load(Ordering::Relaxed),
            position: self.u64_at(TAIL_POSITION).load(Ordering::Relaxed),
            next: self.u64_at(TAIL_NEXT).load(Ordering::Relaxed),
            index_slot: self.u32_at(TAIL_INDEX).load(Ordering::Relaxed),
            index_next_position: self.u32_at(TAIL_INDEX_AT).load(Ordering::Relaxed),
        }
    }

    /// Unregisters a sleeper (`wait::Sleepers`, the only caller).
    pub(super) fn finish_wait(&self) {
        if !self.writable {
            return;
        }
        self.u32_at(WAITERS).fetch_sub(1, Ordering::SeqCst);
    }

    /// The sleepers registered on this page now.
    #[cfg(test)]
    pub(super) fn waiters(&self) -> u32 {
        self.u32_at(WAITERS).load(Ordering::SeqCst)
    }

    /// The existing page of the log in `dir` mapped read-only, as a reader on a read-only
    /// file system maps it (where root could write the file anyway).
    #[cfg(test)]
    pub(super) fn open_read_only(dir: &Path) -> Head {
        let path = dir.join(HEAD_FILE);
        let file = open_file_at(&path, Open::Read).expect("open HEAD");
        Head::existing(&file, &path, false).expect("map HEAD read-only")
    }
}

/// A durable-watermark slot as read from the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// All zero: never written (a page of an older build).
    Unwritten,
    /// Passes its checksum.
    Valid {
        /// The watermark it holds.
        value: u64,
        /// Its write sequence.
        seq: u64,
    },
    /// Fails its checksum: damaged, or torn by a crash mid-write.
    Damaged,
}

impl SlotState {
    fn decode(value: u64, seq: u64, crc: u32) -> SlotState {
        if value == 0 && seq == 0 && crc == 0 {
            SlotState::Unwritten
        } else if crc == slot_crc(value, seq) {
            SlotState::Valid { value, seq }
        } else {
            SlotState::Damaged
        }
    }
}

fn slot_crc(value: u64, seq: u64) -> u32 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&SLOT_CRC_PREFIX);
    bytes[8..16].copy_from_slice(&value.to_le_bytes());
    bytes[16..24].copy_from_slice(&seq.to_le_bytes());
    crc32c::crc32c(&bytes)
}

/// The trusted watermark from the slots and the plain word, such that one damaged field
/// (a flipped bit, a torn write) cannot lower it:
/// - both slots valid: the newer one (the plain word, written after it, may be the damage);
/// - one slot valid, the other damaged or unwritten: the higher of the valid one and the
///   plain word. The damaged slot may have held the newest watermark, which the plain word
///   (written after every slot) still holds; or it was torn mid-write, when the plain word
///   and the valid slot both hold the watermark before that write;
/// - no slot valid (a page of an older build, or both damaged): the plain word.
fn durable_from(slots: &[SlotState; 2], plain: u64) -> u64 {
    match slots {
        [SlotState::Valid { value: a, seq: sa }, SlotState::Valid { value: b, seq: sb }] => {
            if sa > sb {
                *a
            } else {
                *b
            }
        }
        [SlotState::Valid { value, .. }, _] | [_, SlotState::Valid { value, .. }] => (*value).max(plain),
        _ => plain,
    }
}

/// A read-only look at a `HEAD` page (for `verify` and `stats`): read with `read(2)`, so it
/// works on a read-only mount and creates or changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadSnapshot {
    /// The plain watermark word.
    pub durable_plain: u64,
    /// The two checksummed slots.
    pub slots: [SlotState; 2],
    /// The recorded appender pid.
    pub appender_pid: u32,
}

impl HeadSnapshot {
    /// Reads the page of the log in `dir`: `Ok(None)` when there is no `HEAD` file.
    ///
    /// # Errors
    /// [`LogError::NotASegment`] for a page that is not a shoal control page (bad magic, cut
    /// short); [`LogError::UnsupportedVersion`]; I/O errors. Each names the file.
    pub fn read(dir: &Path) -> Result<Option<HeadSnapshot>, LogError> {
        let path = dir.join(HEAD_FILE);
        // Never through a symlink, and only a regular file (see `sys::fs`).
        let mut bytes = Vec::new();
        match open_file_at(&path, Open::Read) {
            Ok(file) => {
                let mut limited = std::io::Read::take(file, HEAD_BYTES);
                std::io::Read::read_to_end(&mut limited, &mut bytes).map_err(|e| LogError::io(&path, "read", e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io(&path, "open", e)),
        }
        HeadSnapshot::decode(&bytes).map(Some).map_err(|why| match why {
            HeadError::Version(found) => LogError::DamagedHead { path, why: newer_or_damaged(found) },
            HeadError::Bad(why) => LogError::DamagedHead { path, why: why.into() },
        })
    }

    /// Decodes the bytes of a page; never panics, whatever the bytes.
    ///
    /// # Errors
    /// What makes them no control page.
    pub fn decode(bytes: &[u8]) -> Result<HeadSnapshot, HeadError> {
        if bytes.len() < HEAD_BYTES as usize {
            return Err(HeadError::Bad("shorter than a control page (4096 bytes)"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        if bytes[0..8] != HEAD_MAGIC {
            return Err(HeadError::Bad("not a shoal control page (bad magic)"));
        }
        let version = u32_at(8);
        if version > HEAD_VERSION {
            return Err(HeadError::Version(version));
        }
        let slots = DURABLE_SLOTS.map(|at| SlotState::decode(u64_at(at), u64_at(at + 8), u32_at(at + 16)));
        Ok(HeadSnapshot { durable_plain: u64_at(DURABLE), slots, appender_pid: u32_at(APPENDER_PID) })
    }

    /// The watermark recovery trusts (see [`Head::durable_checked`]).
    pub fn durable(&self) -> u64 {
        durable_from(&self.slots, self.durable_plain)
    }
}

/// Why bytes are not a control page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Damaged or foreign (reason given).
    Bad(&'static str),
    /// A newer version than this build reads.
    Version(u32),
}

/// Why a page whose version this build does not know is refused: the page has no checksum,
/// so a newer shoal's page and a damaged version word look alike.
fn newer_or_damaged(version: u32) -> String {
    format!(
        "control page format version {version} is newer than the {HEAD_VERSION} this shoal reads, or the page is damaged; if a newer shoal wrote it, upgrade"
    )
}

/// Writes a fresh control page over the `HEAD` of the log in `dir` (after `verify` found it
/// damaged), with `durable` as the watermark, and syncs it. Only under the appender lock.
pub(crate) fn rewrite_head(dir: &Dir, durable: u64) -> Result<(), LogError> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(HEAD_FILE);
    let file = dir.open_file(HEAD_FILE, Open::ReadWriteCreate).map_err(|e| LogError::io(&path, "open", e))?;
    let mut page = vec![0u8; HEAD_BYTES as usize];
    page[0..8].copy_from_slice(&HEAD_MAGIC);
    page[8..12].copy_from_slice(&HEAD_VERSION.to_le_bytes());
    page[DURABLE..DURABLE + 8].copy_from_slice(&durable.to_le_bytes());
    for (i, at) in DURABLE_SLOTS.into_iter().enumerate() {
        let seq = i as u64 + 1;
        page[at..at + 8].copy_from_slice(&durable.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&seq.to_le_bytes());
        page[at + 16..at + 20].copy_from_slice(&slot_crc(durable, seq).to_le_bytes());
    }
    file.set_len(HEAD_BYTES).map_err(|e| LogError::io(&path, "truncate", e))?;
    file.write_all_at(&page, 0).map_err(|e| LogError::io(&path, "write", e))?;
    file.sync_data().map_err(|e| LogError::io(&path, "fdatasync", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(dir: &Path, durable: u64) -> Vec<u8> {
        let head = Head::create(&Dir::open(dir).expect("open the directory")).expect("open HEAD");
        head.set_durable_offset(durable);
        std::fs::read(dir.join(HEAD_FILE)).expect("read HEAD")
    }

    #[test]
    fn a_slot_at_the_last_sequence_number_starts_the_sequence_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        let head = Head::create(&Dir::open(dir.path()).expect("open the directory")).expect("open HEAD");
        head.set_durable_offset(5);
        // A crafted slot, valid by its checksum, claiming the last sequence number.
        head.store_slot(DURABLE_SLOTS[0], 7, u64::MAX);
        assert_eq!(head.durable_checked(), 7);
        head.set_durable_offset(9);
        assert_eq!(head.durable_checked(), 9);
        head.set_durable_offset(12);
        assert_eq!(head.durable_checked(), 12);
        let seqs: Vec<u64> =
            head.slots().iter().map(|s| if let SlotState::Valid { seq, .. } = s { *seq } else { 0 }).collect();
        assert!(seqs.iter().all(|&q| q < 8), "{seqs:?}");
    }

    #[test]
    fn a_flip_in_the_plain_word_or_one_slot_cannot_move_the_trusted_watermark() {
        let dir = tempfile::tempdir().expect("temp dir");
        page_with(dir.path(), 10);
        let bytes = page_with(dir.path(), 20);
        let snap = HeadSnapshot::decode(&bytes).expect("a control page");
        assert_eq!((snap.durable(), snap.durable_plain), (20, 20));
        // The older slot still holds the previous watermark: the case where trusting the
        // slots alone would lower it.
        assert!(snap.slots.iter().any(|s| matches!(s, SlotState::Valid { value: 10, .. })), "{snap:?}");
        // The plain word flipped, high or low: the copies win.
        for (at, bit) in [(DURABLE + 6, 0x01), (DURABLE, 0x04)] {
            let mut flipped = bytes.clone();
            flipped[at] ^= bit;
            assert_eq!(HeadSnapshot::decode(&flipped).expect("page").durable(), 20);
        }
        // Every single-bit flip in a slot: that slot is ignored, and the watermark stays.
        for at in DURABLE_SLOTS.iter().flat_map(|&s| s..s + 20) {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                let snap = HeadSnapshot::decode(&flipped).expect("page");
                assert!(snap.slots.contains(&SlotState::Damaged), "byte {at} bit {bit}");
                assert_eq!(snap.durable(), 20, "byte {at} bit {bit}");
            }
        }
    }

    #[test]
    fn a_slot_torn_mid_write_keeps_the_watermark_before_that_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        page_with(dir.path(), 10);
        let bytes = page_with(dir.path(), 20);
        let snap = HeadSnapshot::decode(&bytes).expect("a control page");
        // The next write goes to the older slot (value 10): tear it as a crash would, before
        // the plain word moved.
        let older = DURABLE_SLOTS[usize::from(matches!(snap.slots[1], SlotState::Valid { value: 10, .. }))];
        let mut torn = bytes.clone();
        torn[older..older + 8].copy_from_slice(&30u64.to_le_bytes());
        let snap = HeadSnapshot::decode(&torn).expect("page");
        assert!(snap.slots.contains(&SlotState::Damaged), "{snap:?}");
        assert_eq!(snap.durable(), 20);
    }

    #[test]
    fn a_page_of_an_older_build_falls_back_to_the_plain_word_and_reset_writes_both_slots() {
        let mut page = vec![0u8; HEAD_BYTES as usize];
        page[0..8].copy_from_slice(&HEAD_MAGIC);
        page[8..12].copy_from_slice(&1u32.to_le_bytes());
        page[DURABLE..DURABLE + 8].copy_from_slice(&77u64.to_le_bytes());
        let snap = HeadSnapshot::decode(&page).expect("page");
        assert_eq!(snap.slots, [SlotState::Unwritten; 2]);
        assert_eq!(snap.durable(), 77);
        assert!(HeadSnapshot::decode(&page[..100]).is_err());
        let dir = tempfile::tempdir().expect("temp dir");
        let head = Head::create(&Dir::open(dir.path()).expect("open the directory")).expect("open HEAD");
        head.set_durable_offset(50);
        head.reset_offsets(5);
        let snap = HeadSnapshot::read(dir.path()).expect("read").expect("a page");
        assert!(snap.slots.iter().all(|s| matches!(s, SlotState::Valid { value: 5, .. })), "{snap:?}");
        assert_eq!((snap.durable(), head.durable_checked()), (5, 5));
    }
}
