//! The process-wide wake-up helper: futures wait on futex words without a thread each.
//!
//! A waiting future hands [`WordWait`] the words it waits on (address, the value it expects,
//! [`Scope`]) and returns `Pending`. The words go to helper threads (named `shoal-aio-wake`),
//! each owning up to [`SLOTS_PER_HELPER`] distinct words plus a control word of its own, and
//! sleeping in one `futex_waitv(2)` over all of them. Registrations of the same word with the
//! same value share one slot, so a thousand tailers of one log cost one slot. When a word is
//! woken, or the call finds a value already moved (`EAGAIN`, each slot is then probed with a
//! zero-timeout `FUTEX_WAIT`, which compares in the kernel), the helper marks the slot's
//! registrations fired, drops the slot and wakes their wakers; a future registers again
//! when it is polled again. A new registration bumps the control word and wakes it (private
//! futex) so that the helper re-reads its list. More distinct words than one helper holds
//! start another helper; a helper with nothing to wait on sleeps on its control word only.
//!
//! The helpers never read a registered word themselves: only the kernel does, through its
//! checked accessors. A registration that outlives its word (a future leaked with
//! `mem::forget`) can therefore not make this process read freed memory; its slot is fired
//! (as moved or unreadable) and dropped.
//!
//! Where `futex_waitv` is missing (Linux < 5.16, `ENOSYS`) a helper re-checks its words every
//! [`FALLBACK_TICK`] instead of sleeping on them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::sys::futex::{self, FutexWaitv, Waitv, WAITV_MAX};

/// Which futex key a word is woken with: the registration must use the waker's.
///
/// A word woken with `FUTEX_PRIVATE_FLAG` is seen only by private waits, and a word woken
/// without it (a log's `HEAD` page, shared between processes) only by shared ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Woken by a plain `FUTEX_WAKE`, from any process (a log's `HEAD` words).
    Shared,
    /// Woken by `FUTEX_WAKE | FUTEX_PRIVATE_FLAG` from this process (a ring's `Waiter`).
    Private,
}

/// Distinct words one helper thread waits on, besides its control word.
pub(crate) const SLOTS_PER_HELPER: usize = WAITV_MAX - 1;

/// How often a helper re-checks its words where `futex_waitv` is unavailable.
pub(crate) const FALLBACK_TICK: Duration = Duration::from_millis(1);

/// One word and the value a waiter expects in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    addr: usize,
    seen: u32,
    private: bool,
}

impl Key {
    fn waitv(self) -> FutexWaitv {
        FutexWaitv::at(self.addr, self.seen, self.private)
    }
}

/// One waiting future's registration.
#[derive(Debug, Default)]
struct Entry {
    /// Set (under the helper's slot lock) when one of its words fired.
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// A distinct word of a helper and the registrations waiting on it.
struct Slot {
    key: Key,
    entries: Vec<Arc<Entry>>,
}

/// A helper thread's state.
struct Helper {
    /// Bumped (and woken, privately) when a slot is added, so the helper re-reads its list.
    control: AtomicU32,
    slots: Mutex<Vec<Slot>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (each critical section
    // only pushes or removes whole elements), so a poisoned lock is used as it is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every helper of the process, in the order they were started.
static HELPERS: Mutex<Vec<Arc<Helper>>> = Mutex::new(Vec::new());

impl Helper {
    fn start() -> Arc<Helper> {
        let helper = Arc::new(Helper { control: AtomicU32::new(0), slots: Mutex::new(Vec::new()) });
        let own = helper.clone();
        std::thread::Builder::new().name("shoal-aio-wake".into()).spawn(move || own.run()).unwrap_or_else(|e| {
            panic!("shoal-aio-wake: cannot start a wake-up helper thread ({e}); raise the process's thread limit")
        });
        helper
    }

    /// Adds `entry` to the slot of `key`, creating the slot if needed; returns whether it
    /// did (the caller then bumps the control word).
    fn add(slots: &mut Vec<Slot>, key: Key, entry: &Arc<Entry>) -> bool {
        match slots.iter_mut().find(|slot| slot.key == key) {
            Some(slot) => {
                slot.entries.push(entry.clone());
                false
            }
            None => {
                slots.push(Slot { key, entries: vec![entry.clone()] });
                true
            }
        }
    }

    fn kick(&self) {
        // pairs with the Acquire load in `run`, which reads the value it then waits on
        self.control.fetch_add(1, Ordering::Release);
        futex::wake_all_private(&self.control);
    }

    /// Removes `entry` from every slot of this helper.
    fn remove(&self, entry: &Arc<Entry>) {
        let mut slots = lock(&self.slots);
        for slot in slots.iter_mut() {
            slot.entries.retain(|e| !Arc::ptr_eq(e, entry));
        }
        slots.retain(|slot| !slot.entries.is_empty());
    }

    /// Fires every slot for which `moved` says so: its entries are marked fired and woken,
    /// and the slot is dropped.
    fn fire(&self, mut moved: impl FnMut(Key) -> bool) {
        let mut fired: Vec<Arc<Entry>> = Vec::new();
        {
            let mut slots = lock(&self.slots);
            slots.retain_mut(|slot| {
                if !moved(slot.key) {
                    return true;
                }
                for entry in slot.entries.drain(..) {
                    // pairs with the Acquire load in `WordWait::poll`, under the waker lock
                    entry.fired.store(true, Ordering::Release);
                    fired.push(entry);
                }
                false
            });
        }
        for entry in fired {
            let waker = lock(&entry.waker).take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// The helper thread: sleeps in `futex_waitv` over its slots and control word, fires
    /// what moved, and goes back to sleep. Runs for the life of the process.
    fn run(self: Arc<Self>) {
        let mut list: Vec<FutexWaitv> = Vec::with_capacity(WAITV_MAX);
        let mut keys: Vec<Key> = Vec::with_capacity(SLOTS_PER_HELPER);
        loop {
            list.clear();
            keys.clear();
            let control = {
                let slots = lock(&self.slots);
                // pairs with the Release bump in `kick`: a slot added after this load bumps
                // the word, so the wait below returns at once
                let control = self.control.load(Ordering::Acquire);
                keys.extend(slots.iter().map(|slot| slot.key));
                control
            };
            list.extend(keys.iter().map(|key| key.waitv()));
            list.push(FutexWaitv::at(self.control.as_ptr() as usize, control, true));
            match futex::waitv(&list) {
                Waitv::Woken(i) if i < keys.len() => {
                    let key = keys[i];
                    self.fire(|k| k == key);
                }
                Waitv::Woken(_) | Waitv::Interrupted => {}
                Waitv::Moved => self.fire(|k| futex::differs(k.addr, k.seen, k.private)),
                Waitv::Unsupported => {
                    // No futex_waitv: sleep on the control word alone, for a tick while
                    // anything is registered, and re-check every word.
                    let tick = if keys.is_empty() { Duration::from_secs(3600) } else { FALLBACK_TICK };
                    futex::wait_private(&self.control, control, tick);
                    self.fire(|k| futex::differs(k.addr, k.seen, k.private));
                }
            }
        }
    }
}

/// A future that resolves once one of its words is woken or no longer holds its value.
///
/// The caller follows the waker's protocol first (raise the waiters count or sleeper flag
/// the waking side checks, fence, re-check its condition), reads the word values, and only
/// then awaits this. The future resolves through a wake-up from a helper thread or at once
/// when a value already moved; it can also resolve spuriously, so callers re-check and loop.
///
/// Cancellation safe: dropping it removes its registration, and nothing is consumed.
///
/// The words are only ever read by the kernel once registered: the caller keeps them mapped
/// for as long as it wants the wait to work, but a word that goes away cannot cause a read
/// of freed memory (the wait then ends).
#[derive(Debug)]
pub(crate) struct WordWait {
    keys: Vec<Key>,
    /// Set when a value differed at construction.
    moved: bool,
    /// The registration and the helpers holding it, once polled.
    entry: Option<Arc<Entry>>,
    helpers: Vec<Arc<HelperRef>>,
    done: bool,
}

/// A helper as held by a registration (kept opaque to `Debug`).
struct HelperRef(Arc<Helper>);

impl std::fmt::Debug for HelperRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Helper")
    }
}

impl WordWait {
    /// A wait on `words`: each a word, the value the caller read from it, and the scope its
    /// waker uses.
    pub(crate) fn new(words: &[(&AtomicU32, u32, Scope)]) -> WordWait {
        let keys = words
            .iter()
            .map(|&(word, seen, scope)| Key { addr: word.as_ptr() as usize, seen, private: scope == Scope::Private })
            .collect();
        // pairs with the Release (or stronger) store of whoever moves a word
        let moved = words.iter().any(|&(word, seen, _)| word.load(Ordering::Acquire) != seen);
        WordWait { keys, moved, entry: None, helpers: Vec::new(), done: false }
    }

    /// The number of distinct helper threads holding this wait's registration (for tests).
    #[cfg(test)]
    fn helper_ptrs(&self) -> Vec<*const Helper> {
        self.helpers.iter().map(|h| Arc::as_ptr(&h.0)).collect()
    }

    fn register(&mut self, waker: &Waker) {
        let entry = Arc::new(Entry { fired: AtomicBool::new(false), waker: Mutex::new(Some(waker.clone())) });
        let mut kick: Vec<Arc<Helper>> = Vec::new();
        {
            let mut helpers = lock(&HELPERS);
            for &key in &self.keys {
                // A helper already waiting on this word with this value, else one with room,
                // else a new one.
                let mut placed = None;
                for helper in helpers.iter() {
                    let mut slots = lock(&helper.slots);
                    if slots.iter().any(|slot| slot.key == key) || slots.len() < SLOTS_PER_HELPER {
                        if Helper::add(&mut slots, key, &entry) {
                            kick.push(helper.clone());
                        }
                        placed = Some(helper.clone());
                        break;
                    }
                }
                let helper = match placed {
                    Some(helper) => helper,
                    None => {
                        let helper = Helper::start();
                        Helper::add(&mut lock(&helper.slots), key, &entry);
                        kick.push(helper.clone());
                        helpers.push(helper.clone());
                        helper
                    }
                };
                if !self.helpers.iter().any(|h| Arc::ptr_eq(&h.0, &helper)) {
                    self.helpers.push(Arc::new(HelperRef(helper)));
                }
            }
        }
        kick.dedup_by(|a, b| Arc::ptr_eq(a, b));
        for helper in kick {
            helper.kick();
        }
        self.entry = Some(entry);
    }

    fn unregister(&mut self) {
        if let Some(entry) = self.entry.take() {
            for helper in self.helpers.drain(..) {
                helper.0.remove(&entry);
            }
        }
    }
}

impl Future for WordWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(());
        }
        if this.moved || this.keys.is_empty() {
            this.done = true;
            return Poll::Ready(());
        }
        let Some(entry) = this.entry.clone() else {
            this.register(cx.waker());
            return Poll::Pending;
        };
        {
            let mut waker = lock(&entry.waker);
            // pairs with the Release store in `Helper::fire`; the helper takes the waker
            // only after that store, so either we see `fired` or it sees the waker below
            if !entry.fired.load(Ordering::Acquire) {
                match waker.as_mut() {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        }
        this.done = true;
        this.unregister();
        Poll::Ready(())
    }
}

impl Drop for WordWait {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Waits until one of `words` is woken or no longer holds its value: [`WordWait::new`].
pub(crate) fn wait_words(words: &[(&AtomicU32, u32, Scope)]) -> WordWait {
    WordWait::new(words)
}

/// Distinct words registered with helpers right now, and the number of helper threads.
#[cfg(test)]
fn census() -> (usize, usize) {
    let helpers = lock(&HELPERS);
    (helpers.iter().map(|h| lock(&h.slots).len()).sum(), helpers.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;
    use std::time::Instant;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(wait: &mut WordWait, count: &Arc<Count>) -> Poll<()> {
        let waker = Waker::from(count.clone());
        Pin::new(wait).poll(&mut Context::from_waker(&waker))
    }

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn bump(word: &AtomicU32, scope: Scope) {
        word.fetch_add(1, Ordering::SeqCst);
        match scope {
            Scope::Shared => futex::wake_all(word),
            Scope::Private => futex::wake_all_private(word),
        }
    }

    #[test]
    fn a_word_changed_and_woken_wakes_the_task() {
        for scope in [Scope::Shared, Scope::Private] {
            let word = Box::new(AtomicU32::new(7));
            let count = Arc::new(Count::default());
            let mut wait = wait_words(&[(&word, 7, scope)]);
            assert_eq!(poll(&mut wait, &count), Poll::Pending);
            // Not woken while the word stands still.
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(count.0.load(Ordering::SeqCst), 0, "{scope:?}: woken with no change");
            assert_eq!(poll(&mut wait, &count), Poll::Pending);
            bump(&word, scope);
            until("the wake-up", || count.0.load(Ordering::SeqCst) > 0);
            assert_eq!(poll(&mut wait, &count), Poll::Ready(()));
        }
    }

    #[test]
    fn an_already_changed_value_wakes_at_once() {
        let word = AtomicU32::new(3);
        let count = Arc::new(Count::default());
        // Moved before the wait was made: ready on the first poll, nothing registered.
        let mut wait = wait_words(&[(&word, 2, Scope::Shared)]);
        assert_eq!(poll(&mut wait, &count), Poll::Ready(()));
        assert!(wait.entry.is_none());
        // Moved between the wait's making and its registration (no wake issued at all):
        // the helper's futex_waitv finds the value moved and fires it.
        let mut wait = wait_words(&[(&word, 3, Scope::Private)]);
        word.store(4, Ordering::SeqCst);
        wait.moved = false;
        assert_eq!(poll(&mut wait, &count), Poll::Pending);
        until("the moved value", || count.0.load(Ordering::SeqCst) > 0);
        assert_eq!(poll(&mut wait, &count), Poll::Ready(()));
    }

    #[test]
    fn three_hundred_registrations_span_three_helpers_and_all_wake() {
        let words: Vec<AtomicU32> = (0..300).map(|_| AtomicU32::new(0)).collect();
        let count = Arc::new(Count::default());
        let mut waits: Vec<WordWait> = words.iter().map(|w| wait_words(&[(w, 0, Scope::Private)])).collect();
        let mut helpers: Vec<*const Helper> = Vec::new();
        for wait in &mut waits {
            assert_eq!(poll(wait, &count), Poll::Pending);
            helpers.extend(wait.helper_ptrs());
        }
        helpers.sort();
        helpers.dedup();
        assert!(helpers.len() >= 3, "300 distinct words on {} helpers", helpers.len());
        for helper in lock(&HELPERS).iter() {
            assert!(lock(&helper.slots).len() <= SLOTS_PER_HELPER);
        }
        for word in &words {
            bump(word, Scope::Private);
        }
        until("all 300 wake-ups", || count.0.load(Ordering::SeqCst) >= 300);
        for wait in &mut waits {
            assert_eq!(poll(wait, &count), Poll::Ready(()));
        }
    }

    #[test]
    fn a_dropped_registration_is_removed() {
        let word = Box::new(AtomicU32::new(0));
        let count = Arc::new(Count::default());
        let mut wait = wait_words(&[(&word, 0, Scope::Shared)]);
        assert_eq!(poll(&mut wait, &count), Poll::Pending);
        let addr = word.as_ptr() as usize;
        let registered = || lock(&HELPERS).iter().any(|h| lock(&h.slots).iter().any(|s| s.key.addr == addr));
        assert!(registered());
        drop(wait);
        assert!(!registered(), "the dropped wait's word is still registered");
        // And its waker is never called afterwards.
        bump(&word, Scope::Shared);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        let (_, helpers) = census();
        assert!(helpers >= 1);
    }

    /// Polls `wait` to its end on this thread, parking between polls; false when it did not
    /// end within `bound`.
    fn block_on(wait: &mut WordWait, bound: Duration) -> bool {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let start = Instant::now();
        while Pin::new(&mut *wait).poll(&mut Context::from_waker(&waker)).is_pending() {
            if start.elapsed() > bound {
                return false;
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
        true
    }

    /// The registration races a single bump of its word, from another thread, at every
    /// moment: before the wait is registered, while its helper re-reads its list, while it
    /// sleeps. Each round's one wake-up must end the wait (a lost one hangs it).
    #[test]
    fn a_single_bump_at_any_moment_ends_the_wait() {
        const ROUNDS: u32 = 2_000;
        for scope in [Scope::Private, Scope::Shared] {
            let word = Arc::new(AtomicU32::new(0));
            let asked = Arc::new(AtomicU32::new(0));
            let (w, a) = (word.clone(), asked.clone());
            let bumper = std::thread::spawn(move || {
                for round in 1..=ROUNDS {
                    while a.load(Ordering::SeqCst) < round {
                        std::hint::spin_loop();
                    }
                    // 0 to ~40 us after the waiter read the word.
                    for _ in 0..(round % 8) * 500 {
                        std::hint::spin_loop();
                    }
                    bump(&w, scope);
                }
            });
            for round in 1..=ROUNDS {
                let seen = word.load(Ordering::SeqCst);
                asked.store(round, Ordering::SeqCst);
                let mut wait = wait_words(&[(&word, seen, scope)]);
                assert!(block_on(&mut wait, Duration::from_secs(10)), "{scope:?}: round {round}: the wake-up was lost");
                // The next round reads the word after this bump.
                while word.load(Ordering::SeqCst) == seen {
                    std::hint::spin_loop();
                }
            }
            bumper.join().expect("bumper");
        }
    }

    #[test]
    fn waits_on_one_word_share_a_slot() {
        let word = Box::new(AtomicU32::new(0));
        let counts: Vec<Arc<Count>> = (0..50).map(|_| Arc::new(Count::default())).collect();
        let mut waits: Vec<WordWait> = counts.iter().map(|_| wait_words(&[(&word, 0, Scope::Shared)])).collect();
        for (wait, count) in waits.iter_mut().zip(&counts) {
            assert_eq!(poll(wait, count), Poll::Pending);
        }
        let addr = word.as_ptr() as usize;
        let slots: usize =
            lock(&HELPERS).iter().map(|h| lock(&h.slots).iter().filter(|s| s.key.addr == addr).count()).sum();
        assert_eq!(slots, 1);
        bump(&word, Scope::Shared);
        until("50 wake-ups", || counts.iter().all(|c| c.0.load(Ordering::SeqCst) > 0));
    }
}
