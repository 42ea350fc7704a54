//! The writer role of a shared log ([`Writers::Shared`](super::Writers::Shared)): the
//! right to append, which the appenders of a log (threads and processes alike) take in
//! turns.
//!
//! The role is an exclusive `flock(2)` on the file `APPEND` in the log directory. The
//! kernel drops it the moment its holder dies, however it dies, so a killed appender blocks
//! nobody: the next one gets the role at once. What the holder leaves behind is told by
//! words of the `HEAD` page ([`Head`]):
//! - `role_dirty` is 1 while the role is held and set back to 0 by a holder that lets go
//!   cleanly. A new holder that finds it at 1 knows its predecessor died holding the role
//!   (possibly mid-record or mid-rollover) and repairs the tail the way an open does after a
//!   crash, before it appends.
//! - `role_epoch` is bumped by every new holder. An appender that finds the epoch it set
//!   itself knows nobody appended since it let go, and goes on from its own state; else it
//!   reads the tail the last holder stored (`tail_*`, stored after each publication) and
//!   catches up: a few loads when the active segment is the same, a map of the new segment
//!   (and a listing for retention) when it moved on.
//! - `role_wanted` counts appenders waiting for the role (a futex word). The holder keeps
//!   the role across append calls while nobody waits, so a lone appender pays one atomic
//!   swap per call and no syscall. When someone waits, the holder lets go at the end of an
//!   append call once it has held the role for [`HOLD`], and a keeper thread of each
//!   appender lets go of a role held by an idle appender at once.
//!
//! What this costs and bounds: a lone appender, one uncontended swap per append call (the
//! exclusive mode skips it). Appenders that contend take turns of at least [`HOLD`], so
//! each switch (two `flock` calls and a catch-up, a few microseconds) is paid once per
//! turn, not per record. A waiting appender waits at most one turn of the holder (plus its
//! current call) while the holder runs; when the holder dies, the next one waits only for
//! the repair of the tail (a scan of the records of the last segment after the
//! predecessor's end, as at open).
//!
//! A holder stopped with `SIGSTOP` while it holds the role (inside an append call, or
//! idle before its keeper let go) keeps the others waiting until it continues: a stopped
//! process cannot be told apart from a slow one without a lease timeout, and taking the role
//! from a live holder could let two writers write the same bytes (the failure of forced
//! unlocks after a timeout). This is the one case in which an appender holds up the others'
//! appends; one stopped inside a sync round (under the `SYNC` lock, see
//! [`super::sync`]) holds up their syncs the same way.
//!
//! A waiter killed while it waits leaves `role_wanted` one too high: holders then let go at
//! the end of every turn although nobody waits (a few microseconds per turn), until the log
//! is next opened by an appender alone, which resets the word.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::error::LogError;
use super::head::Head;
use crate::sys::file::{flock, try_flock, unlock, Flock};
use crate::sys::fs::{Dir, Open};
use crate::sys::futex;

/// The file whose `flock` is the writer role.
pub(crate) const ROLE_FILE: &str = "APPEND";

/// How long a holder keeps the role, once someone waits for it, before it lets go at the
/// end of an append call: long enough that a switch (a few microseconds) costs a few
/// percent of a busy appender's throughput, short enough to bound a waiter's wait.
pub(crate) const HOLD: Duration = Duration::from_micros(100);

/// `state` values: the role is not held by this appender.
const FREE: u32 = 0;
/// Held, and no append call runs: the keeper may let go.
const IDLE: u32 = 1;
/// An append call runs (holding the role, or about to take it).
const BUSY: u32 = 2;

/// What the appender finds when it takes the role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Nobody appended since this appender let go: its own state is current.
    Current,
    /// Others appended: catch up from the tail stored in `HEAD`.
    Moved,
    /// The previous holder died holding the role: repair the tail first.
    Dead,
}

#[derive(Debug)]
struct Inner {
    file: File,
    head: Arc<Head>,
    /// [`FREE`], [`IDLE`] or [`BUSY`]; also the futex word the keeper sleeps on while the
    /// role is free.
    state: AtomicU32,
    /// The epoch this appender set when it last took the role (0: never).
    epoch: AtomicU64,
    /// That epoch when this appender last let go because others waited (0: it did not).
    yielded: AtomicU64,
    stop: AtomicBool,
}

impl Inner {
    /// Lets go of the role: marks the page clean (Release: the tail words stored before are
    /// seen by the next holder) and drops the lock.
    fn release(&self) {
        self.head.role_dirty().store(0, Ordering::Release);
        unlock(&self.file);
    }
}

/// One appender's side of the writer role of a shared log.
#[derive(Debug)]
pub(crate) struct Role {
    inner: Arc<Inner>,
    keeper: Option<JoinHandle<()>>,
}

impl Role {
    /// Opens the role file of the log in `dir` (never through a symlink) and starts the
    /// keeper thread. The role is not taken.
    ///
    /// # Errors
    /// A symlink or non-regular file planted as `APPEND`; I/O errors; a thread that cannot
    /// be spawned.
    pub(crate) fn open(dir: &Dir, head: Arc<Head>) -> Result<Role, LogError> {
        let path = dir.join(ROLE_FILE);
        let file = dir.open_file(ROLE_FILE, Open::ReadWriteCreate).map_err(|e| LogError::io(&path, "open", e))?;
        let inner = Arc::new(Inner {
            file,
            head,
            state: AtomicU32::new(FREE),
            epoch: AtomicU64::new(0),
            yielded: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let keeper = std::thread::Builder::new()
            .name("shoal-log-role".into())
            .spawn({
                let inner = inner.clone();
                move || keep(&inner)
            })
            .map_err(|e| LogError::io("shoal-log-role", "spawn thread", e))?;
        Ok(Role { inner, keeper: Some(keeper) })
    }

    /// Starts an append call: `None` when this appender still holds the role, else takes
    /// it (blocking while another holds it) and says what was found.
    ///
    /// # Errors
    /// I/O errors of `flock` (the call then ends as if [`Role::end`] was called, without
    /// the role).
    #[inline]
    pub(crate) fn begin(&self) -> Result<Option<Taken>, LogError> {
        let state = &self.inner.state;
        loop {
            match state.compare_exchange(IDLE, BUSY, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(None),
                Err(FREE) => {
                    if state.compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                        return self.take().map(Some).inspect_err(|_| state.store(FREE, Ordering::Release));
                    }
                }
                // The keeper is letting go (a few microseconds): wait for it to finish.
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    #[cold]
    fn take(&self) -> Result<Taken, LogError> {
        let inner = &*self.inner;
        let path = Path::new(ROLE_FILE);
        // An `flock` has no queue: a holder that let go for a waiter and asks again at once
        // would mostly win it back before the waiter is scheduled. So after letting go for
        // others, wait (briefly) until one of them has taken the role.
        let yielded = inner.yielded.swap(0, Ordering::Relaxed);
        if yielded != 0 {
            let since = std::time::Instant::now();
            while inner.head.role_epoch().load(Ordering::Acquire) == yielded
                && inner.head.role_wanted().load(Ordering::Relaxed) != 0
                && since.elapsed() < HOLD * 10
            {
                std::thread::yield_now();
            }
        }
        if !try_flock(&inner.file, Flock::Exclusive).map_err(|e| LogError::io(path, "flock", e))? {
            let wanted = inner.head.role_wanted();
            wanted.fetch_add(1, Ordering::SeqCst);
            futex::wake_all(wanted);
            let taken = flock(&inner.file, Flock::Exclusive);
            wanted.fetch_sub(1, Ordering::SeqCst);
            taken.map_err(|e| LogError::io(path, "flock", e))?;
        }
        Ok(self.taken())
    }

    /// Marks the role taken in the page: what the previous holder left, and a new epoch.
    fn taken(&self) -> Taken {
        let inner = &*self.inner;
        // pairs with the Release store of 0 in `Inner::release`
        let dead = inner.head.role_dirty().swap(1, Ordering::AcqRel) != 0;
        let epoch = inner.head.role_epoch().load(Ordering::Acquire);
        let mine = inner.epoch.load(Ordering::Relaxed);
        let next = epoch.wrapping_add(1).max(1);
        inner.head.role_epoch().store(next, Ordering::Release);
        inner.epoch.store(next, Ordering::Relaxed);
        inner.head.set_appender_pid(std::process::id());
        // The keeper sleeps on `state` while the role is free: wake it to watch for waiters.
        futex::wake_all(&inner.state);
        if dead {
            Taken::Dead
        } else if mine != 0 && mine == epoch {
            Taken::Current
        } else {
            Taken::Moved
        }
    }

    /// Takes the role at open, when this appender is the only one on the log (it holds the
    /// log lock exclusively): resets `role_wanted`, which only a waiter killed while it
    /// waited can have left above 0. What a previous holder left does not matter: the
    /// caller recovers the log.
    pub(crate) fn take_alone(&self) -> Result<(), LogError> {
        self.inner.head.role_wanted().store(0, Ordering::SeqCst);
        match self.begin()? {
            Some(_) => Ok(()),
            None => Err(LogError::Inconsistent {
                path: ROLE_FILE.into(),
                why: "the writer role was taken before open".into(),
            }),
        }
    }

    /// Whether another appender waits for the role.
    #[inline]
    pub(crate) fn wanted(&self) -> bool {
        self.inner.head.role_wanted().load(Ordering::Relaxed) != 0
    }

    /// Ends an append call: lets go of the role when `release`, else keeps it (idle, for
    /// the keeper to let go if someone asks while this appender does not append).
    #[inline]
    pub(crate) fn end(&self, release: bool) {
        if release {
            self.inner.yielded.store(self.inner.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
            self.inner.release();
            self.inner.state.store(FREE, Ordering::Release);
        } else {
            self.inner.state.store(IDLE, Ordering::Release);
        }
    }

    /// Ends an append call whose repair of a dead holder's tail failed: lets go without
    /// marking the page clean, so the next holder repairs again.
    pub(crate) fn abort(&self) {
        unlock(&self.inner.file);
        self.inner.state.store(FREE, Ordering::Release);
    }

    /// Lets go of the role if held (at close). With `dirty`, the page is left marked as
    /// held, as a killed holder leaves it ([`Appender::abandon`](super::Appender::abandon)).
    pub(crate) fn close(&mut self, dirty: bool) {
        self.inner.stop.store(true, Ordering::SeqCst);
        futex::wake_all(&self.inner.state);
        futex::wake_all(self.inner.head.role_wanted());
        if let Some(t) = self.keeper.take() {
            let _ = t.join();
        }
        if self.inner.state.swap(FREE, Ordering::AcqRel) != FREE {
            if dirty {
                unlock(&self.inner.file);
            } else {
                self.inner.release();
            }
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.close(false);
    }
}

/// The keeper thread: while this appender holds the role idle and another waits, lets go.
fn keep(inner: &Inner) {
    let wanted = inner.head.role_wanted();
    while !inner.stop.load(Ordering::SeqCst) {
        let state = inner.state.load(Ordering::Acquire);
        if state == FREE {
            // Nothing to let go of: sleep until this appender takes the role (or a safety
            // timeout).
            futex::wait(&inner.state, FREE, Duration::from_millis(100));
            continue;
        }
        if wanted.load(Ordering::SeqCst) == 0 {
            futex::wait(wanted, 0, Duration::from_millis(100));
            continue;
        }
        match inner.state.compare_exchange(IDLE, BUSY, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => {
                inner.yielded.store(inner.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
                inner.release();
                inner.state.store(FREE, Ordering::Release);
            }
            // An append call runs: it lets go at its end once its turn is up; look again
            // after a while.
            Err(_) => std::thread::sleep(HOLD / 2),
        }
    }
}
