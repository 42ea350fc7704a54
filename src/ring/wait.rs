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
//! A waiter that is a future (feature `tokio`, `aio`) follows the same protocol but has no
//! thread to unpark: the waking side, finding no thread recorded, bumps the waiter's futex
//! word and wakes it (process-private), and the future sleeps on that word through the
//! wake-up helper.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
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
/// One `Waiter` belongs to one thread (the one that waits); any number of rings may point
/// at it, so a worker with several inputs and outputs sleeps in one place and is woken by
/// progress on any of them.
#[derive(Debug, Default)]
pub struct Waiter {
    waiting: CachePadded<AtomicBool>,
    thread: OnceLock<Thread>,
    /// Bumped and woken (private futex) in place of an unpark when no thread ever waited
    /// here: the sleeping place of an async waiter.
    word: AtomicU32,
}

impl Waiter {
    /// A waiter for whichever thread first waits on it.
    pub fn new() -> Waiter {
        Waiter::default()
    }

    /// Waits, per `strategy`, until `ready()` returns true or `stop()` does. Returns the
    /// last value of `ready()`.
    ///
    /// # Panics
    /// When two different threads park on the same waiter (a waiter belongs to one thread).
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
                    let me = self.thread.get_or_init(std::thread::current);
                    assert_eq!(me.id(), std::thread::current().id(), "a Waiter belongs to one thread");
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

    /// Unparks the waiting thread, or, where no thread ever waited here, moves and wakes the
    /// futex word an async waiter sleeps on.
    fn unpark(&self) {
        match self.thread.get() {
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
    /// that value, and calls [`Waiter::finish_async_wait`] afterwards. A waiter used this way
    /// must never be waited on by a thread (it would then unpark the thread instead).
    #[cfg(feature = "tokio")]
    pub(crate) fn prepare_async_wait(&self) -> (&AtomicU32, u32) {
        self.waiting.store(true, Ordering::SeqCst);
        AsymmetricFence::heavy();
        (&self.word, self.word.load(Ordering::SeqCst))
    }

    /// Lowers the sleeper flag after an async wait (the waking side lowers it too).
    #[cfg(feature = "tokio")]
    pub(crate) fn finish_async_wait(&self) {
        self.waiting.store(false, Ordering::Relaxed);
    }
}
