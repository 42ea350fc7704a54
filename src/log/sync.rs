//! Group commit: sync rounds, the durable watermark and every decision that [`Durability`]
//! drives.
//!
//! Appends only write memory and publish `written` (the offset after the last record). A
//! *round* reads `written`, data-syncs every byte of every pending segment published up to
//! then ([`IoDriver::sync_ranges`]), and only then moves `durable` to the offset it read, so
//! the watermark never runs ahead of the disk. At most one round of an appender is in flight
//! (the flag `round_busy`); whoever takes it runs the round:
//!
//! - the sync thread, when the durability level says a round is due ([`Shared::sync_due`]):
//!   back to back while records keep coming (`Batch`), at most once per interval
//!   (`Interval`), or only when asked (`Never`);
//! - a thread blocked in [`Appender::sync`](super::Appender::sync) or `wait_durable` for a
//!   record already appended, when no round is in flight: it syncs inline instead of waking
//!   the sync thread and being woken back, which saves two thread hand-offs on the latency
//!   path. When a round is in flight, it spins briefly on the watermark, then parks on a
//!   condition variable until the round ends, and takes the next round itself if the one
//!   that ended did not cover its record.
//!
//! The sync thread parks when nothing is due. An appender in `Batch` mode wakes it after a
//! publish only when it is parked ([`Shared::wake_after_publish`]: a load and a branch
//! otherwise); the Dekker pair of the asymmetric fence (light on the appender's side, heavy
//! here before parking) guarantees that either the appender sees `syncer_parked` or the
//! thread sees the new `written`.
//!
//! With a shared log ([`Writers::Shared`](super::Writers::Shared)) every appender runs its
//! own rounds, and the rounds of all of them take turns under an exclusive `flock` on the
//! file `SYNC` in the log directory: at most one sync per log is in flight, whoever issues
//! it (a sync thread or an inline waiter). Under that lock a round first reads the watermark
//! in `HEAD`: when another appender's round already made everything this one has seen
//! durable, it skips the sync and only moves its own watermark (one sync serves every
//! appender). The watermark in `HEAD` only ever rises, and every appender's own watermark
//! follows it.
//!
//! A failed sync is final: the log stops accepting appends and every waiter gets the error.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::error::LogError;
use super::format;
use super::head::Head;
use super::io::{IoDriver, SyncRange};
use super::segment::Segment;
use super::{Durability, Offset};
use crate::sys::fence::AsymmetricFence;
use crate::sys::file::{flock, unlock, Flock};
use crate::sys::fs::{Dir, Open};
use crate::sys::histogram::LatencyHistogram;

/// The file whose `flock` serialises the sync rounds of a shared log's appenders.
pub(crate) const SYNC_FILE: &str = "SYNC";

/// How long a waiter spins on the watermark while a round is in flight before it parks:
/// about the tail of a fast data sync (tens of microseconds on NVMe), and short enough
/// that a waiter on a slow disk gives its core back almost at once.
const SPIN_WAIT: Duration = Duration::from_micros(20);

/// Watermark checks between two reads of the clock while spinning.
const SPIN_CHECKS_PER_CLOCK: u32 = 64;

/// The longest a waiter or the sync thread parks without looking again (a safety net;
/// wake-ups end the wait early).
const PARK_MAX: Duration = Duration::from_millis(100);

/// A segment the sync thread still has to cover (its write position is `segment.written`).
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) segment: Arc<Segment>,
    /// Set when the segment is sealed; `segment.written` is then final.
    pub(crate) sealed: AtomicBool,
}

impl Pending {
    /// A segment not sealed yet.
    pub(crate) fn new(segment: Arc<Segment>) -> Pending {
        Pending { segment, sealed: AtomicBool::new(false) }
    }
}

/// Why the log stopped accepting appends.
#[derive(Debug)]
enum Failure {
    /// A data sync failed on this file.
    Sync(PathBuf, std::io::ErrorKind, String),
    /// This segment's file shrank under its mapping ([`Segment::shrank`]).
    Shrank(Arc<Segment>),
}

/// State shared by the appender, its sync thread and [`DurableWatch`] handles.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Offset of the next record (all below are published). Written by the appender.
    pub(crate) written: CachePadded<AtomicU64>,
    /// All offsets below are durable. Written by the sync thread.
    pub(crate) durable: CachePadded<AtomicU64>,
    /// An explicit sync asked for everything below this offset.
    sync_target: AtomicU64,
    /// Segments with records the sync thread may not have covered yet.
    pub(crate) pending: Mutex<Vec<Arc<Pending>>>,
    syncer_parked: CachePadded<AtomicBool>,
    syncer: OnceLock<std::thread::Thread>,
    /// Set while a round is in flight (taken by [`Shared::try_round`]).
    round_busy: AtomicBool,
    /// The state of the rounds; locked only by the holder of `round_busy`.
    rounds: Mutex<Rounds>,
    /// When the last round ended, in ns since `epoch` (for `Interval`).
    last_sync_ns: AtomicU64,
    epoch: Instant,
    waiters: AtomicUsize,
    durable_lock: Mutex<()>,
    durable_changed: Condvar,
    /// Futex word bumped (and woken, process-private) wherever `durable_changed` is
    /// notified, for async waiters (`aio`), which cannot wait on the condition variable.
    durable_word: AtomicU32,
    pub(crate) failed: AtomicBool,
    failure: Mutex<Option<Failure>>,
    shutdown: AtomicBool,
    durability: Durability,
    head: Arc<Head>,
    sync_latency: Mutex<LatencyHistogram>,
    syncs: AtomicU64,
    /// The longest data sync so far (ns): a waiter with a timeout runs a round itself only
    /// where this fits in what is left of it.
    sync_max_ns: AtomicU64,
    /// The `SYNC` file of a shared log (`None` for an exclusive one).
    sync_lock: Option<File>,
}

impl Shared {
    /// The state of a log whose records below `next_offset` are published and below
    /// `durable` durable. `shared_log` in `dir`: sync rounds take the `SYNC` lock.
    ///
    /// # Errors
    /// Opening `SYNC` (a symlink or non-regular file planted there, I/O errors).
    pub(crate) fn new(
        next_offset: u64,
        durable: u64,
        durability: Durability,
        head: Arc<Head>,
        dir: &Dir,
        shared_log: bool,
    ) -> Result<Shared, LogError> {
        let sync_lock = if shared_log {
            let path = dir.join(SYNC_FILE);
            Some(dir.open_file(SYNC_FILE, Open::ReadWriteCreate).map_err(|e| LogError::io(&path, "open", e))?)
        } else {
            None
        };
        Ok(Shared {
            written: CachePadded::new(AtomicU64::new(next_offset)),
            durable: CachePadded::new(AtomicU64::new(durable)),
            sync_target: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            syncer_parked: CachePadded::new(AtomicBool::new(false)),
            syncer: OnceLock::new(),
            round_busy: AtomicBool::new(false),
            rounds: Mutex::new(Rounds { io: IoDriver::Syscalls, synced_to: Vec::new(), ranges: Vec::with_capacity(4) }),
            last_sync_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            waiters: AtomicUsize::new(0),
            durable_lock: Mutex::new(()),
            durable_changed: Condvar::new(),
            durable_word: AtomicU32::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            durability,
            head,
            sync_latency: Mutex::new(LatencyHistogram::new()),
            syncs: AtomicU64::new(0),
            sync_max_ns: AtomicU64::new(0),
            sync_lock,
        })
    }

    /// With a shared log, takes the `SYNC` lock for a round (or a change of the watermark
    /// outside one); the guard lets go. A lock that cannot be taken (an I/O error of
    /// `flock`) is logged and the round goes on without it: rounds then may overlap, which
    /// costs syncs, never durability.
    pub(crate) fn sync_turn(&self) -> SyncTurn<'_> {
        let Some(file) = &self.sync_lock else { return SyncTurn(None) };
        match flock(file, Flock::Exclusive) {
            Ok(()) => SyncTurn(Some(file)),
            Err(e) => {
                tracing::warn!("{SYNC_FILE}: taking the sync lock failed: {e}");
                SyncTurn(None)
            }
        }
    }

    /// Raises this appender's watermark to the shared one in `HEAD` (a shared log: other
    /// appenders' syncs count for all) and wakes waiters when it moved.
    fn absorb_shared(&self) {
        if self.sync_lock.is_none() {
            return;
        }
        let shared = self.head.durable_offset();
        if self.durable.fetch_max(shared, Ordering::SeqCst) < shared {
            self.notify_waiters();
        }
    }

    /// This appender's watermark, raised to the shared one first (a shared log).
    pub(crate) fn durable_now(&self) -> u64 {
        if self.sync_lock.is_some() {
            let shared = self.head.durable_offset();
            self.durable.fetch_max(shared, Ordering::SeqCst).max(shared)
        } else {
            self.durable.load(Ordering::SeqCst)
        }
    }

    fn notify_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.durable_changed.notify_all();
            self.bump_durable_word();
        }
    }

    /// Moves the async waiters' futex word and wakes it.
    fn bump_durable_word(&self) {
        // pairs with the SeqCst load in `watch_begin`
        self.durable_word.fetch_add(1, Ordering::SeqCst);
        crate::sys::futex::wake_all_private(&self.durable_word);
    }

    /// The error of the failed sync (or [`LogError::Closed`]).
    pub(crate) fn failure(&self) -> LogError {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(Failure::Sync(path, kind, msg)) => {
                LogError::SyncFailed { path: path.clone(), source: std::io::Error::new(*kind, msg.clone()) }
            }
            Some(Failure::Shrank(segment)) => segment.shrank_error(),
            None => LogError::Closed,
        }
    }

    fn wake_syncer(&self) {
        if self.syncer_parked.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.syncer.get() {
                t.unpark();
            }
        }
    }

    /// Called by the appender after each publish (after its light fence): in `Batch` mode a
    /// parked sync thread is woken to cover the new records. `durability` is the appender's
    /// own copy of the level, so that the hot path reads no other line of `Shared` than the
    /// padded `syncer_parked`.
    #[inline]
    pub(crate) fn wake_after_publish(&self, durability: Durability) {
        if durability == Durability::Batch && self.syncer_parked.load(Ordering::Relaxed) {
            self.wake_syncer();
        }
    }

    /// Whether a sync round is due now: there are records not yet durable, and the
    /// durability level (or an explicit request up to `target`) asks for them.
    fn sync_due(&self, written: u64, durable: u64, target: u64, last_sync: Instant) -> bool {
        written > durable
            && match self.durability {
                Durability::Batch => true,
                Durability::Interval(d) => target > durable || last_sync.elapsed() >= d,
                Durability::Never => target > durable,
            }
    }

    /// How long the sync thread sleeps when no round is due: until the interval is up, or
    /// 100 ms (a safety net; wake-ups end the sleep early).
    fn idle_sleep(&self, written: u64, durable: u64, last_sync: Instant) -> Duration {
        match self.durability {
            Durability::Interval(d) if written > durable => d.saturating_sub(last_sync.elapsed()),
            _ => PARK_MAX,
        }
    }

    /// When the last round ended.
    fn last_sync(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_sync_ns.load(Ordering::Relaxed))
    }

    /// Runs one round unless one is in flight (`false` then). The round syncs what was
    /// published before it started, if anything is not durable yet.
    fn try_round(&self) -> bool {
        // pairs with the SeqCst store in RoundTurn::drop: a waiter that sees the flag clear
        // has seen the watermark the round left.
        if self.round_busy.compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed).is_err() {
            return false;
        }
        let _turn = RoundTurn(self);
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        round(self, &mut rounds);
        true
    }

    /// Blocks until the round in flight ends (or 100 ms pass, a safety net).
    fn wait_round_end(&self) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let guard = self.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
        // pairs with the SeqCst store in RoundTurn::drop, which notifies under this lock
        if self.round_busy.load(Ordering::SeqCst) && !self.failed.load(Ordering::Acquire) {
            let _ = self.durable_changed.wait_timeout(guard, PARK_MAX);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether closing the log syncs what was appended first (all levels but `Never`, and
    /// only while syncs succeed).
    pub(crate) fn syncs_on_close(&self) -> bool {
        self.durability != Durability::Never && !self.failed.load(Ordering::Acquire)
    }

    /// Asks for a sync of every offset below `target` (not 0) and blocks until it is done.
    pub(crate) fn sync_through(&self, target: u64) -> Result<(), LogError> {
        self.sync_target.fetch_max(target, Ordering::SeqCst);
        self.wait_durable(target - 1, None, true).map(|_| ())
    }

    /// Blocks until `offset` is durable (`Ok(true)`) or `timeout` passes (`Ok(false)`).
    /// With `request_sync`, a record already appended is synced inline when no round is in
    /// flight and the longest sync so far fits in the time left, and otherwise asked of the
    /// sync thread where the level would not sync on its own soon.
    pub(crate) fn wait_durable(
        &self,
        offset: u64,
        timeout: Option<Duration>,
        request_sync: bool,
    ) -> Result<bool, LogError> {
        if self.durable_now() > offset {
            return Ok(true);
        }
        // A timeout too long for the clock to reach (`Duration::MAX`) waits without one.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let inline_fits = timeout.is_none_or(|t| t > Duration::from_nanos(self.sync_max_ns.load(Ordering::Relaxed)));
        if request_sync
            && self.durability != Durability::Batch
            // pairs with the Release store of `written` in Appender::publish
            && (self.written.load(Ordering::Acquire) <= offset || !inline_fits)
        {
            // Not appended yet (or no time to sync inline): the sync thread covers it.
            self.sync_target.fetch_max(offset.saturating_add(1), Ordering::SeqCst);
            self.syncer_parked.store(true, Ordering::SeqCst);
            self.wake_syncer();
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            // pairs with the SeqCst store of `durable` in round_done
            if self.durable_now() > offset {
                break Ok(true);
            }
            if self.failed.load(Ordering::Acquire) {
                break Err(self.failure());
            }
            let appended = self.written.load(Ordering::Acquire) > offset;
            if self.shutdown.load(Ordering::Acquire) && !appended {
                break Err(LogError::Closed);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break Ok(false);
            }
            // Sync inline when no round is in flight (and the longest sync so far fits in
            // the time left); the round covers `offset`.
            let fits =
                deadline.is_none_or(|d| d - now > Duration::from_nanos(self.sync_max_ns.load(Ordering::Relaxed)));
            if request_sync && appended && fits && self.try_round() {
                continue;
            }
            // A round is in flight (or the record is not appended yet): watch the watermark
            // for a moment, since the round may be about to end, then park.
            if self.spin_on_watermark(offset, request_sync && appended) {
                continue;
            }
            let guard = self.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
            // Under the lock that RoundTurn::drop, fail and absorb_shared notify under: no
            // wake-up is lost between these checks and the wait.
            let idle = request_sync && appended && fits && !self.round_busy.load(Ordering::SeqCst);
            if self.durable_now() > offset || self.failed.load(Ordering::Acquire) || idle {
                continue;
            }
            let wait = deadline.map_or(PARK_MAX, |d| (d - now).min(PARK_MAX));
            drop(self.durable_changed.wait_timeout(guard, wait).unwrap_or_else(|p| p.into_inner()));
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Spins for up to [`SPIN_WAIT`] until `offset` is durable, a sync failed, or (with
    /// `until_idle`) no round is in flight; `true` when one of those happened.
    fn spin_on_watermark(&self, offset: u64, until_idle: bool) -> bool {
        let start = Instant::now();
        loop {
            for _ in 0..SPIN_CHECKS_PER_CLOCK {
                // pairs with the SeqCst stores of `durable` (round_done) and of `round_busy`
                // (RoundTurn::drop)
                if self.durable.load(Ordering::SeqCst) > offset
                    || self.failed.load(Ordering::Relaxed)
                    || (until_idle && !self.round_busy.load(Ordering::SeqCst))
                {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= SPIN_WAIT {
                return false;
            }
        }
    }

    /// Data syncs done so far and their latency histogram (ns).
    pub(crate) fn sync_stats(&self) -> (u64, LatencyHistogram) {
        let hist = self.sync_latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (self.syncs.load(Ordering::SeqCst), hist)
    }

    /// Stops the sync thread (after the round in progress) and waits for it.
    pub(crate) fn stop_syncer(&self, thread: JoinHandle<()>) {
        self.shutdown.store(true, Ordering::SeqCst);
        // Async waiters re-check for the shutdown (blocking ones do within PARK_MAX).
        self.bump_durable_word();
        self.syncer_parked.store(true, Ordering::SeqCst);
        self.wake_syncer();
        let _ = thread.join();
    }
}

/// The `SYNC` lock of a shared log while held (nothing for an exclusive log).
pub(crate) struct SyncTurn<'a>(Option<&'a File>);

impl Drop for SyncTurn<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.0 {
            unlock(file);
        }
    }
}

/// A cloneable handle on an appender's durable watermark, for other threads (an `--ack`
/// printer, a request handler waiting for its record).
///
/// ```
/// use shoal::log::{Appender, Durability, LogOptions};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let opts = LogOptions::default().durability(Durability::Never); // no sync unless asked
/// let mut log = Appender::open(dir.path(), opts)?;
/// let watch = log.durable_watch();
/// let offset = log.append(b"reply once this is on disk")?;
/// assert_eq!(watch.written_offset().0, offset.0 + 1); // published to readers already
/// let handler = std::thread::spawn(move || {
///     // Asks for a sync (here: runs it in this thread) and waits for the watermark.
///     watch.wait_durable(offset, Some(Duration::from_secs(10)))
/// });
/// assert!(handler.join().expect("the handler panicked")?);
/// assert!(log.durable_offset() > offset); // every offset below the watermark is durable
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct DurableWatch {
    shared: Arc<Shared>,
}

impl DurableWatch {
    pub(crate) fn new(shared: Arc<Shared>) -> DurableWatch {
        DurableWatch { shared }
    }

    /// Every offset below this is durable.
    pub fn durable_offset(&self) -> Offset {
        Offset(self.shared.durable_now())
    }

    /// Offset the next append gets (everything below is published to readers).
    pub fn written_offset(&self) -> Offset {
        Offset(self.shared.written.load(Ordering::Acquire))
    }

    /// Blocks until `offset` is durable, or `timeout` passes (returns `Ok(false)`). When the
    /// record is appended already, no sync round is in flight and the longest sync so far
    /// fits in the time left, the calling thread runs the round itself (one data sync that
    /// covers every record published so far) instead of handing it to the sync thread.
    ///
    /// # Errors
    /// [`LogError::SyncFailed`] when a sync failed; [`LogError::Closed`] when the appender
    /// closed before the record was appended.
    pub fn wait_durable(&self, offset: Offset, timeout: Option<Duration>) -> Result<bool, LogError> {
        self.shared.wait_durable(offset.0, timeout, true)
    }

    /// Like [`DurableWatch::wait_durable`], but never asks for a sync: it only watches the
    /// watermark move at the pace the durability level sets (for a printer of progress, say).
    ///
    /// # Errors
    /// As [`DurableWatch::wait_durable`].
    pub fn wait_durable_passive(&self, offset: Offset, timeout: Option<Duration>) -> Result<bool, LogError> {
        self.shared.wait_durable(offset.0, timeout, false)
    }

    /// For an async waiter (`aio`): whether the wait for `offset` is over: `Some(Ok)` once
    /// it is durable, `Some(Err)` after a failed sync or a close before it was appended,
    /// `None` while it is still to come. The checks of [`Shared::wait_durable`]'s loop.
    #[cfg(feature = "tokio")]
    pub(crate) fn settled(&self, offset: Offset) -> Option<Result<(), LogError>> {
        let shared = &self.shared;
        // pairs with the SeqCst store of `durable` in round_done
        if shared.durable_now() > offset.0 {
            return Some(Ok(()));
        }
        if shared.failed.load(Ordering::Acquire) {
            return Some(Err(shared.failure()));
        }
        let appended = shared.written.load(Ordering::Acquire) > offset.0;
        if shared.shutdown.load(Ordering::Acquire) && !appended {
            return Some(Err(LogError::Closed));
        }
        None
    }

    /// For an async waiter: asks for a sync that covers `offset` where the durability level
    /// would not run one on its own, handing the round to the sync thread (an async waiter
    /// never runs a data sync on its runtime's thread).
    #[cfg(feature = "tokio")]
    pub(crate) fn ask_sync(&self, offset: Offset) {
        let shared = &self.shared;
        if shared.durability != Durability::Batch {
            shared.sync_target.fetch_max(offset.0 + 1, Ordering::SeqCst);
            shared.syncer_parked.store(true, Ordering::SeqCst);
            shared.wake_syncer();
        }
    }

    /// For an async waiter: registers it as one the waking side must bump the futex word
    /// for (Dekker's pattern, with the SeqCst store of the watermark) and returns the word
    /// and its value, read after registering. The caller re-checks [`DurableWatch::settled`]
    /// before it sleeps on the word, and calls [`DurableWatch::watch_end`] once done.
    #[cfg(feature = "tokio")]
    pub(crate) fn watch_begin(&self) -> (&AtomicU32, u32) {
        self.shared.waiters.fetch_add(1, Ordering::SeqCst);
        // pairs with the SeqCst bump in `bump_durable_word`
        (&self.shared.durable_word, self.shared.durable_word.load(Ordering::SeqCst))
    }

    /// Ends an async waiter's registration ([`DurableWatch::watch_begin`]).
    #[cfg(feature = "tokio")]
    pub(crate) fn watch_end(&self) {
        self.shared.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the rounds keep from one to the next: the I/O driver and each pending segment with
/// the file position synced so far.
#[derive(Debug)]
struct Rounds {
    io: IoDriver,
    synced_to: Vec<(Arc<Pending>, u64)>,
    /// The ranges of the round in progress (kept to reuse the allocation).
    ranges: Vec<SyncRange>,
}

/// The turn of the round in flight: letting go clears `round_busy` and wakes the waiters
/// (those watching the watermark and those waiting for the turn).
struct RoundTurn<'a>(&'a Shared);

impl Drop for RoundTurn<'_> {
    fn drop(&mut self) {
        // pairs with the SeqCst loads of `round_busy` in wait_durable and wait_round_end
        self.0.round_busy.store(false, Ordering::SeqCst);
        self.0.notify_waiters();
    }
}

/// Starts the sync thread; the rounds (whoever runs them) use `io`.
pub(crate) fn spawn_syncer(shared: Arc<Shared>, io: IoDriver) -> Result<JoinHandle<()>, LogError> {
    shared.rounds.lock().unwrap_or_else(|p| p.into_inner()).io = io;
    let handle = std::thread::Builder::new()
        .name("shoal-log-sync".into())
        .spawn({
            let shared = shared.clone();
            move || sync_loop(&shared)
        })
        .map_err(|e| LogError::io("shoal-log-sync", "spawn thread", e))?;
    let _ = shared.syncer.set(handle.thread().clone());
    Ok(handle)
}

/// The sync thread: runs a round whenever the durability level says one is due, and parks
/// otherwise.
fn sync_loop(shared: &Shared) {
    loop {
        shared.absorb_shared();
        // pairs with the Release store of `written` in Appender::publish
        let written = shared.written.load(Ordering::Acquire);
        let durable = shared.durable.load(Ordering::SeqCst);
        let target = shared.sync_target.load(Ordering::SeqCst);
        let shutting_down = shared.shutdown.load(Ordering::Acquire);
        let last_sync = shared.last_sync();
        if !shared.sync_due(written, durable, target, last_sync) || shared.failed.load(Ordering::Relaxed) {
            if shutting_down {
                return;
            }
            park(shared, shared.idle_sleep(written, durable, last_sync), durable);
            continue;
        }
        if !shared.try_round() {
            // A waiter runs a round inline; look again once it ends.
            shared.wait_round_end();
        }
    }
}

/// One round, run by the holder of `round_busy`: syncs every byte published before it
/// started and then moves the durable watermark to the offset read at the start. Does
/// nothing when that is durable already or the log failed.
fn round(shared: &Shared, rounds: &mut Rounds) {
    shared.absorb_shared();
    // pairs with the Release store of `written` in Appender::publish
    let written = shared.written.load(Ordering::Acquire);
    if written <= shared.durable.load(Ordering::SeqCst) || shared.failed.load(Ordering::Acquire) {
        return;
    }
    let _turn = shared.sync_turn();
    if shared.sync_lock.is_some() && shared.head.durable_offset() >= written {
        // Another appender's round covered everything this one has seen.
        shared.absorb_shared();
        return;
    }
    let Rounds { io, synced_to, ranges } = rounds;
    plan_round(shared, synced_to, ranges);
    let started = Instant::now();
    let result = sync_fail_point().and_then(|()| io.sync_ranges(ranges));
    let elapsed = started.elapsed();
    shared.last_sync_ns.store(shared.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    match result {
        // A page that faulted past a shrunk file's end took the writes as zeros: the
        // watermark must not cover them.
        Ok(()) => match synced_to.iter().find(|(p, _)| p.segment.shrank()) {
            Some((p, _)) => fail(shared, Failure::Shrank(p.segment.clone())),
            None => round_done(shared, synced_to, ranges, written, elapsed),
        },
        Err(e) => round_failed(shared, synced_to, e),
    }
}

/// The fail point `sync`, for tests, named the way the repair steps' are
/// ([`fail_point`](super::scan::fail_point)): with `SHOAL_FAIL_POINT=sync` every round's sync
/// fails with an I/O error (a kill there would add nothing to the crash tests, which kill
/// appenders at random instants). The environment is read once per process.
fn sync_fail_point() -> std::io::Result<()> {
    static FAIL: OnceLock<bool> = OnceLock::new();
    if *FAIL.get_or_init(|| std::env::var_os("SHOAL_FAIL_POINT").is_some_and(|v| v == "sync")) {
        return Err(std::io::Error::other("stopped by SHOAL_FAIL_POINT"));
    }
    Ok(())
}

/// Parks the sync thread for up to `sleep`, unless records arrived (in `Batch` mode) or a
/// sync was asked for since `durable` was read.
fn park(shared: &Shared, sleep: Duration, durable: u64) {
    shared.syncer_parked.store(true, Ordering::SeqCst);
    // pairs with the light fence in Appender::publish: either it sees `parked` and wakes us,
    // or we see its `written` here.
    AsymmetricFence::heavy();
    let again = shared.written.load(Ordering::Acquire) > durable && shared.durability == Durability::Batch;
    let requested = shared.sync_target.load(Ordering::SeqCst) > durable;
    if !(again || requested) || shared.failed.load(Ordering::Relaxed) {
        std::thread::park_timeout(sleep);
    }
    shared.syncer_parked.store(false, Ordering::SeqCst);
}

/// Takes up segments newly pending and lists the range of each that is published but not
/// yet synced (from its page boundary).
fn plan_round(shared: &Shared, synced_to: &mut Vec<(Arc<Pending>, u64)>, ranges: &mut Vec<SyncRange>) {
    {
        let pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        for p in pending.iter() {
            if !synced_to.iter().any(|(q, _)| Arc::ptr_eq(p, q)) {
                synced_to.push((p.clone(), 0));
            }
        }
    }
    ranges.clear();
    for (p, done) in synced_to.iter() {
        let end = p.segment.written.load(Ordering::Acquire);
        if end > *done {
            let from = *done & !(format::PAGE_BYTES as u64 - 1);
            ranges.push(SyncRange {
                fd: p.segment.fd(),
                map: p.segment.region().as_ptr(),
                offset: from,
                len: end - from,
            });
        }
    }
}

/// After a successful round: records its latency, advances each segment's synced position,
/// drops sealed segments that are fully synced and moves the watermark to `written`.
fn round_done(
    shared: &Shared,
    synced_to: &mut Vec<(Arc<Pending>, u64)>,
    ranges: &[SyncRange],
    written: u64,
    elapsed: Duration,
) {
    shared.sync_latency.lock().unwrap_or_else(|p| p.into_inner()).record(elapsed.as_nanos() as u64);
    shared.sync_max_ns.fetch_max(elapsed.as_nanos() as u64, Ordering::Relaxed);
    for (p, done) in synced_to.iter_mut() {
        *done = (*done).max(ranges.iter().find(|r| r.fd == p.segment.fd()).map_or(*done, |r| r.offset + r.len));
    }
    // Sealed segments that are fully synced leave the list.
    let finished: Vec<Arc<Pending>> = synced_to
        .iter()
        .filter(|(p, done)| p.sealed.load(Ordering::Acquire) && *done >= p.segment.written.load(Ordering::Acquire))
        .map(|(p, _)| p.clone())
        .collect();
    if !finished.is_empty() {
        synced_to.retain(|(p, _)| !finished.iter().any(|f| Arc::ptr_eq(f, p)));
        shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| !finished.iter().any(|f| Arc::ptr_eq(f, p)));
    }
    // pairs with the SeqCst loads in wait_durable
    shared.durable.fetch_max(written, Ordering::SeqCst);
    shared.head.set_durable_offset(written);
    // Counted after the watermark moved: whoever saw the old watermark after reading the
    // count sees a larger count once the round that moved it is done.
    shared.syncs.fetch_add(1, Ordering::SeqCst);
    // The waiters are woken as the round's turn ends (RoundTurn::drop), once.
}

/// After a failed round: the failure is recorded, the log stops accepting appends, and
/// every waiter gets the error.
fn round_failed(shared: &Shared, synced_to: &[(Arc<Pending>, u64)], e: std::io::Error) {
    let path = synced_to.first().map(|(p, _)| p.segment.path.clone()).unwrap_or_default();
    tracing::error!("{}: data sync failed: {e}; the log stops accepting appends", path.display());
    fail(shared, Failure::Sync(path, e.kind(), e.to_string()));
}

/// Records why the log stopped, stops appends and wakes every waiter with the error.
fn fail(shared: &Shared, failure: Failure) {
    *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
    shared.failed.store(true, Ordering::Release);
    let _guard = shared.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
    shared.durable_changed.notify_all();
    shared.bump_durable_word();
}
