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
//!   the role across append calls while nobody waits, so a lone appender pays no atomic
//!   read-modify-write and no syscall per call. When someone waits, the holder lets go at
//!   the end of an append call once it has held the role for [`HOLD`], and a keeper thread
//!   of each appender lets go of a role held by an idle appender at once.
//!
//! The appender and its keeper agree on who may touch the role with a Dekker pair over an
//! asymmetric fence ([`AsymmetricFence`]): an append call stores `busy` and then reads
//! `revoke` behind the light side (a compiler fence); the keeper stores `revoke` and then
//! reads `busy` behind the heavy side (`membarrier`). So either the keeper sees the call
//! and leaves the role alone, or the call sees the keeper at work and waits for it to
//! finish before it looks whether it still holds the role. A locked compare-and-swap per
//! call would do the same, but it drains the store buffer, full of the record just
//! written, at every call.
//!
//! What this costs and bounds: a lone appender, a store, a compiler fence and two loads per
//! append call (the exclusive mode skips them). Appenders that contend take turns of at least [`HOLD`], so
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
use crate::sys::fence::AsymmetricFence;
use crate::sys::file::{flock, try_flock, unlock, Flock};
use crate::sys::fs::{Dir, Open};
use crate::sys::futex;

/// The file whose `flock` is the writer role.
pub(crate) const ROLE_FILE: &str = "APPEND";

/// How long a holder keeps the role, once someone waits for it, before it lets go at the
/// end of an append call: long enough that a switch (a few microseconds) costs a few
/// percent of a busy appender's throughput, short enough to bound a waiter's wait.
pub(crate) const HOLD: Duration = Duration::from_micros(200);

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
    /// 1 while this appender holds the role (the `flock`), else 0; also the futex word the
    /// keeper sleeps on while the role is not held.
    held: AtomicU32,
    /// 1 while an append call runs; stored by the appender's thread only.
    busy: AtomicU32,
    /// 1 while the keeper looks whether it may let go of the role; stored by the keeper only.
    revoke: AtomicU32,
    /// The process is registered for `membarrier`: the light side of the fence is a
    /// compiler fence.
    light_fence: bool,
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
        self.held.store(0, Ordering::Release);
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
            held: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            revoke: AtomicU32::new(0),
            light_fence: AsymmetricFence::registered(),
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
        let inner = &*self.inner;
        inner.busy.store(1, Ordering::Relaxed);
        // pairs with the heavy side in `keep`: the keeper sees `busy`, or this sees `revoke`.
        AsymmetricFence::light(inner.light_fence);
        // Acquire: a `revoke` the keeper cleared after letting go comes with its `held` of 0.
        if inner.revoke.load(Ordering::Acquire) == 0 && inner.held.load(Ordering::Relaxed) != 0 {
            return Ok(None);
        }
        self.begin_slow()
    }

    /// [`Role::begin`] when the keeper is at work or the role is not held.
    #[cold]
    fn begin_slow(&self) -> Result<Option<Taken>, LogError> {
        let inner = &*self.inner;
        // The keeper is letting go (a few microseconds): wait for it to finish. It looks at
        // `busy` again before it starts anew, so it does not start while this call runs.
        while inner.revoke.load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
        if inner.held.load(Ordering::Acquire) != 0 {
            return Ok(None);
        }
        self.take().map(Some).inspect_err(|_| inner.busy.store(0, Ordering::Release))
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
            // Spin for about one turn of the holder before sleeping in the kernel: a sleeper
            // is woken only when the scheduler gets to it, which on a busy machine costs
            // more than a turn.
            let since = std::time::Instant::now();
            let mut taken = Ok(false);
            while since.elapsed() < HOLD * 2 {
                taken = try_flock(&inner.file, Flock::Exclusive);
                if !matches!(taken, Ok(false)) {
                    break;
                }
                std::thread::yield_now();
            }
            let taken = match taken {
                Ok(true) => Ok(()),
                Ok(false) => flock(&inner.file, Flock::Exclusive),
                Err(e) => Err(e),
            };
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
        // The keeper sleeps on `held` while the role is not held: wake it to watch for
        // waiters.
        inner.held.store(1, Ordering::Release);
        futex::wake_all(&inner.held);
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
        }
        self.inner.busy.store(0, Ordering::Release);
    }

    /// Ends an append call whose repair of a dead holder's tail failed: lets go without
    /// marking the page clean, so the next holder repairs again.
    pub(crate) fn abort(&self) {
        unlock(&self.inner.file);
        self.inner.held.store(0, Ordering::Release);
        self.inner.busy.store(0, Ordering::Release);
    }

    /// Lets go of the role if held (at close). With `dirty`, the page is left marked as
    /// held, as a killed holder leaves it ([`Appender::abandon`](super::Appender::abandon)).
    pub(crate) fn close(&mut self, dirty: bool) {
        self.inner.stop.store(true, Ordering::SeqCst);
        futex::wake_all(&self.inner.held);
        futex::wake_all(self.inner.head.role_wanted());
        if let Some(t) = self.keeper.take() {
            let _ = t.join();
        }
        // The keeper is gone and no call runs (`&mut self`): the role is this thread's alone.
        if self.inner.held.load(Ordering::Acquire) != 0 {
            if dirty {
                unlock(&self.inner.file);
                self.inner.held.store(0, Ordering::Release);
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
        if inner.held.load(Ordering::Acquire) == 0 {
            // Nothing to let go of: sleep until this appender takes the role (or a safety
            // timeout).
            futex::wait(&inner.held, 0, Duration::from_millis(100));
            continue;
        }
        if wanted.load(Ordering::SeqCst) == 0 {
            futex::wait(wanted, 0, Duration::from_millis(100));
            continue;
        }
        inner.revoke.store(1, Ordering::SeqCst);
        // pairs with the light side in `Role::begin` (see the module docs)
        AsymmetricFence::heavy();
        if inner.busy.load(Ordering::SeqCst) != 0 {
            // An append call runs: it lets go at its end once its turn is up; look again
            // after a while.
            inner.revoke.store(0, Ordering::Release);
            std::thread::sleep(HOLD / 2);
            continue;
        }
        if inner.held.load(Ordering::Acquire) != 0 {
            inner.yielded.store(inner.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
            inner.release();
        }
        inner.revoke.store(0, Ordering::Release);
    }
}
