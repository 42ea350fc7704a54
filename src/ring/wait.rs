//! Waiting without losing a wake-up: wait strategies, the per-thread [`Waiter`], and the
//! asymmetric fence that keeps the hot side of every wake-up protocol down to a compiler
//! fence.
//!
//! # Protocol
//! A thread that finds nothing to do (an empty input, a full output) may sleep. Before it
//! sleeps it raises its `waiting` flag, issues a heavy fence, and re-checks its condition;
//! the other side, after it makes progress (a push, a pop), issues a light fence and, if the
//! flag is up, lowers it and unparks the sleeper. This is Dekker's pattern: either the sleeper's
//! re-check sees the progress, or the other side sees the flag. With
//! [`AsymmetricFence`] the light fence is only a compiler fence; the heavy one is a
//! `membarrier(2)` that makes every running thread of the process execute a full barrier,
//! which is what the pattern needs on the hot side. Sleeps are also bounded
//! ([`PARK_TIMEOUT`]) as a second line of defence.
//!
//! A waiter follows the thread that waits on it now: a ring endpoint is `Send`, so the
//! thread that waits may change between waits (only one waits at a time: the owner of the
//! `&mut` endpoint). Before it raises the flag, a sleeper records itself as the waiter's
//! thread under a lock, and the waking side reads the thread to unpark under the same lock
//! after it saw the flag. So a waker that saw the new thread's flag unparks the new thread;
//! one that still saw an earlier thread's flag and reads the thread before the new one is
//! recorded unparks the earlier thread (a spurious wake-up there, which every sleep
//! tolerates), and then its progress happened before that lock was released, so the new
//! thread's re-check, after its own turn at the lock, sees it. Either way no wake-up is lost.
//! A stop request ([`Waiter::wake_unconditionally`]) reaches a moved thread the same way.
//!
//! A waiter that is a future (feature `tokio`, `aio`) follows the same protocol but has no
//! thread to unpark: the waking side, finding no thread recorded, bumps the waiter's futex
//! word and wakes it (process-private), and the future sleeps on that word through the
//! wake-up helper.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_utils::{Backoff, CachePadded};

pub use crate::sys::fence::AsymmetricFence;

/// How a thread waits for its ring to become non-empty (consumer) or non-full (producer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin on the ring: the lowest latency, one core burnt per waiting thread.
    BusySpin,
    /// Spin a little, then `yield_now` between checks: low latency, shares the core.
    SpinThenYield,
    /// Spin a little, then sleep until the other side wakes it: about 0% CPU when idle, a
    /// few microseconds to wake.
    #[default]
    Park,
}

impl WaitStrategy {
    /// True when a waiting thread may sleep, so progress on the other side must wake it.
    #[inline]
    pub fn parks(self) -> bool {
        self == WaitStrategy::Park
    }
}

/// Longest single sleep of a parked thread: a bound, not a polling interval (wake-ups are
/// never lost by the protocol).
pub const PARK_TIMEOUT: Duration = Duration::from_millis(50);

/// A thread's sleeping place: the flag the other side checks, and the handle it unparks.
///
/// One thread waits on a `Waiter` at a time; any number of rings may point at it, so a
/// worker with several inputs and outputs sleeps in one place and is woken by progress on
/// any of them. The thread that waits may change between waits (an endpoint moved to
/// another thread): the waiter follows it (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct Waiter {
    waiting: CachePadded<AtomicBool>,
    /// The thread that waits here (the last one that slept), and how many of its waits are
    /// in progress.
    sleeper: Mutex<Sleeper>,
    /// Bumped and woken (private futex) in place of an unpark when no thread is recorded:
    /// the sleeping place of an async waiter.
    word: AtomicU32,
}

/// Who sleeps in a [`Waiter`]: recorded by each sleep, read by the waking side.
#[derive(Debug, Default)]
struct Sleeper {
    thread: Option<Thread>,
    /// Waits of `thread` between recording it and their return (more than one only when a
    /// `stop` condition waits on the same waiter).
    inside: usize,
}

/// One sleep's turn in a [`Waiter`]: ends it when dropped (also when `ready` or `stop`
/// panics).
struct Turn<'a>(&'a Waiter);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.sleeper().inside -= 1;
    }
}

impl Waiter {
    /// A waiter for whichever thread waits on it.
    pub fn new() -> Waiter {
        Waiter::default()
    }

    fn sleeper(&self) -> MutexGuard<'_, Sleeper> {
        // Nothing panics while the lock is held; a poisoned lock still holds a whole value.
        self.sleeper.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the calling thread as the one to unpark, before it raises the flag.
    ///
    /// # Panics
    /// When another thread sleeps here now.
    fn enter(&self) -> Turn<'_> {
        let me = std::thread::current();
        let mut sleeper = self.sleeper();
        match &sleeper.thread {
            Some(t) if t.id() == me.id() => {}
            Some(t) if sleeper.inside > 0 => {
                let other = t.id();
                drop(sleeper);
                panic!(
                    "two threads wait on one Waiter at once ({other:?} and {:?}): a ring endpoint, or the \
                     endpoints that share a waiter, must be waited on by one thread at a time",
                    me.id()
                );
            }
            _ => sleeper.thread = Some(me),
        }
        sleeper.inside += 1;
        Turn(self)
    }

    /// Waits, per `strategy`, until `ready()` returns true or `stop()` does. Returns the
    /// last value of `ready()`.
    ///
    /// # Panics
    /// When it is about to sleep while another thread sleeps on the same waiter (one thread
    /// waits on a waiter at a time; a later wait may come from another thread).
    pub fn wait_until(&self, strategy: WaitStrategy, mut ready: impl FnMut() -> bool, stop: impl Fn() -> bool) -> bool {
        let backoff = Backoff::new();
        loop {
            if ready() {
                return true;
            }
            if stop() {
                return false;
            }
            match strategy {
                WaitStrategy::BusySpin => std::hint::spin_loop(),
                WaitStrategy::SpinThenYield => backoff.snooze(),
                WaitStrategy::Park => {
                    if !backoff.is_completed() {
                        backoff.snooze();
                        continue;
                    }
                    // Recorded before the flag goes up: a waker that sees the flag unparks
                    // this thread, not one that waited here before (see the module docs).
                    let _turn = self.enter();
                    self.waiting.store(true, Ordering::SeqCst);
                    // pairs with the light fence in `wake`: either the re-check below sees the
                    // other side's progress, or the other side sees `waiting`.
                    AsymmetricFence::heavy();
                    if !ready() && !stop() {
                        std::thread::park_timeout(PARK_TIMEOUT);
                    }
                    self.waiting.store(false, Ordering::Relaxed);
                }
            }
        }
    }

    /// Called by the other side after making progress: wakes the thread if it sleeps.
    #[inline]
    pub fn wake(&self) {
        AsymmetricFence::light(AsymmetricFence::registered());
        if self.waiting.load(Ordering::Relaxed) {
            self.wake_now();
        }
    }

    #[cold]
    fn wake_now(&self) {
        if self.waiting.swap(false, Ordering::SeqCst) {
            self.unpark();
        }
    }

    /// Wakes the thread whether or not it is known to sleep (for stop requests).
    pub fn wake_unconditionally(&self) {
        self.waiting.store(false, Ordering::SeqCst);
        self.unpark();
    }

    /// Unparks the waiting thread, or, where no thread is recorded (none waited here, or an
    /// async waiter did last), moves and wakes the futex word an async waiter sleeps on.
    fn unpark(&self) {
        // Read under the lock a sleeper records itself under (see the module docs); unparked
        // after it is released.
        let thread = self.sleeper().thread.clone();
        match thread {
            Some(thread) => thread.unpark(),
            None => {
                // pairs with the SeqCst load in `prepare_async_wait`
                self.word.fetch_add(1, Ordering::SeqCst);
                crate::sys::futex::wake_all_private(&self.word);
            }
        }
    }

    /// For an async waiter (`aio`): raises the sleeper flag, issues the heavy fence (pairing
    /// with the light one in [`Waiter::wake`]) and returns the futex word with its value,
    /// read after both. The caller re-checks its condition, sleeps on the word while it holds
    /// that value, and calls [`Waiter::finish_async_wait`] afterwards.
    ///
    /// A thread that waited here before (a consumer that waited on a thread, then moved to a
    /// runtime) is forgotten first, under the lock a thread records itself under, so the
    /// waking side bumps the word instead of unparking that thread (the argument in the
    /// module docs holds with the word in place of the new thread). A thread and a future
    /// must not wait here at the same time: the waking side would unpark only the thread.
    #[cfg(feature = "tokio")]
    pub(crate) fn prepare_async_wait(&self) -> (&AtomicU32, u32) {
        {
            let mut sleeper = self.sleeper();
            if sleeper.inside == 0 {
                sleeper.thread = None;
            }
        }
        self.waiting.store(true, Ordering::SeqCst);
        AsymmetricFence::heavy();
        (&self.word, self.word.load(Ordering::SeqCst))
    }

    /// Lowers the sleeper flag after an async wait (the waking side lowers it too).
    #[cfg(feature = "tokio")]
    pub(crate) fn finish_async_wait(&self) {
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// For tests: whether a sleeper's flag is up (it is about to sleep, or sleeps).
    #[cfg(test)]
    pub(crate) fn flag_up(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }

    /// For tests: the thread the waking side unparks.
    #[cfg(test)]
    pub(crate) fn sleeper_thread(&self) -> Option<std::thread::ThreadId> {
        self.sleeper().thread.as_ref().map(Thread::id)
    }
}
