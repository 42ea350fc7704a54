//! Waiting until any of several logs gets a record: spinning on the next record's commit
//! word in the mapping, sleeping in one `futex_waitv(2)` over the `notify` word of each log's
//! `HEAD` page (plus any futex words of the caller's own, such as a consumer group's
//! membership epoch), or first the one and then the other, as a [`TailWait`] says; across
//! processes.
//!
//! # Protocol
//! Sleeping follows the Dekker pattern of [`head`](super::head): register as a sleeper on
//! every log (which issues the heavy fence), re-check every reader, and only then sleep on the
//! words read while registering. An appender that publishes after our re-check sees the
//! registration and bumps the word, so the sleep returns at once; one that published before
//! it is seen by the re-check. `Sleepers` is that protocol, written once for every wait that
//! sleeps on a log ([`wait_any`] here, the async tailer and group member in `aio`). A log
//! with no `HEAD` page yet (no appender has opened it), or one mapped read-only, has no word
//! to wait on: the sleep is then cut to 1 ms and the caller polls.
//!
//! Spinning registers nothing: an appender pays a futex wake only for waiters that sleep
//! (`Head::notify_after_fence` reads the `waiters` count, which a spinner never raises). A
//! spinner loads the commit word of the slot each reader stands at, with `Acquire` (pairing
//! with the appender's `Release` store of it), so a record is seen the moment it is
//! published, with no syscall per check. Every `FULL_CHECK_SPINS` spins, and at once when
//! a reader stands at an end-of-segment marker or the end of its mapping, it runs the
//! readers' full check ([`Reader::ready`]: rollovers, damage), touches the next pages of each
//! reader's segment (so their page faults are not taken when their records are read), reads
//! the clock, and looks whether the logs still have an appender: where none has (every log
//! closed), spinning stops and the waiter sleeps, registered, so the next appender's first
//! record wakes it. A waiter about to sleep touches those pages too.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::LogError;
use super::format::END_OF_SEGMENT;
use super::head::Head;
use super::reader::Reader;
use crate::sys::futex::{self, FutexWaitv, WAITV_MAX};

/// Sleeps until one of `readers` has a record (or damage) at its position, one of `words`
/// no longer holds the value paired with it, or `timeout` passes. No wake-up is lost: a
/// record published at any moment during the call either is seen by the re-check or ends
/// the sleep. Spurious early returns happen; callers re-check and loop.
///
/// Returns `Ok(true)` when a reader was found ready (without sleeping), `Ok(false)` after
/// a sleep, whatever woke it.
///
/// Works for logs appended to by any process. Where `futex_waitv` is missing (Linux before
/// 5.16) or more than 127 logs are given, the sleep is cut to 1 ms.
///
/// # Errors
/// As [`Reader::ready`].
///
/// # Examples
/// ```
/// use shoal::log::{wait_any, Appender, LogOptions, Reader};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let (a, b) = (dir.path().join("a"), dir.path().join("b"));
/// let mut appender_a = Appender::open(&a, LogOptions::default())?;
/// let _appender_b = Appender::open(&b, LogOptions::default())?;
/// let (mut ra, mut rb) = (Reader::open(&a)?, Reader::open(&b)?);
/// assert!(!wait_any(&mut [&mut ra, &mut rb], &[], Duration::from_millis(1))?);
/// appender_a.append(b"wake")?;
/// assert!(wait_any(&mut [&mut ra, &mut rb], &[], Duration::from_secs(5))?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait_any(readers: &mut [&mut Reader], words: &[(&AtomicU32, u32)], timeout: Duration) -> Result<bool, LogError> {
    let mut sleepers = Sleepers::with_capacity(readers.len());
    sleepers.register(readers.iter_mut().map(|reader| &mut **reader));
    if sleepers.recheck(readers.iter_mut().map(|reader| &mut **reader))? {
        return Ok(true);
    }
    let mut list: Vec<FutexWaitv> = Vec::with_capacity(words.len() + sleepers.heads.len());
    list.extend(words.iter().map(|&(word, seen)| FutexWaitv::new(word, seen)));
    list.extend(sleepers.words().map(|(word, seen)| FutexWaitv::new(word, seen)));
    let timeout = if sleepers.skipped() == 0 && list.len() <= WAITV_MAX {
        timeout
    } else {
        timeout.min(Duration::from_millis(1))
    };
    if let ([(head, seen)], true) = (sleepers.heads.as_slice(), words.is_empty()) {
        // One log: a plain FUTEX_WAIT, available on every kernel.
        head.wait(*seen, timeout);
    } else {
        // SAFETY: the words live in the `HEAD` pages that `sleepers` holds (until it is
        // dropped at the end of this call, which also ends the registration) and in `words`
        // (borrowed for the whole call).
        unsafe { futex::wait_any(&list, timeout) };
    }
    Ok(false)
}

/// A waiter's registration as a sleeper on the `HEAD` pages of the logs it waits on: the
/// protocol of the module docs, written once for every wait that sleeps ([`wait_any`], the
/// async tailer and the async group member).
///
/// [`Sleepers::register`] raises each page's `waiters` count and reads its `notify` word,
/// with the heavy fence between; the caller then re-checks its readers
/// ([`Sleepers::recheck`]) and only then sleeps on [`Sleepers::words`], the words and the
/// values read. The counts go down in [`Sleepers::finish`] or on drop, so a future dropped
/// mid-wait leaves no sleeper behind. Each page registered on is held (shared with its
/// reader), so its count goes down on that page even when the reader went meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Sleepers {
    /// Each page registered on, with the `notify` value read while registering.
    heads: Vec<(Arc<Head>, u32)>,
    /// Readers of the last registration that registered nothing (no `HEAD` page yet, or one
    /// mapped read-only): their logs must be polled.
    skipped: usize,
}

impl Sleepers {
    /// No registration yet, with room for `readers` without allocating.
    pub(crate) fn with_capacity(readers: usize) -> Sleepers {
        Sleepers { heads: Vec::with_capacity(readers), skipped: 0 }
    }

    /// Registers as a sleeper on the `HEAD` page of each of `readers` (ending any earlier
    /// registration first). A reader whose log has no page yet, or whose page is mapped
    /// read-only, registers nothing and counts in [`Sleepers::skipped`]. Next: re-check the
    /// readers ([`Sleepers::recheck`]), and sleep on [`Sleepers::words`] only if none is ready.
    pub(crate) fn register<'r>(&mut self, readers: impl IntoIterator<Item = &'r mut Reader>) {
        self.finish();
        for reader in readers {
            self.add(reader.shared_head());
        }
    }

    /// Registers on one reader's page, or counts it as skipped.
    fn add(&mut self, head: Option<&Arc<Head>>) {
        match head {
            // A page mapped read-only cannot register a sleeper: poll that log.
            Some(head) if head.is_writable() => {
                // Raises `waiters` (SeqCst), then the heavy fence, then reads `notify`: pairs
                // with the appender's fence after publishing (`Head::notify_after_fence`), so
                // either the re-check sees its record or it sees this sleeper and bumps
                // `notify` away from the value read here.
                let seen = head.prepare_wait();
                self.heads.push((Arc::clone(head), seen));
            }
            _ => self.skipped += 1,
        }
    }

    /// The re-check after registering: true when one of `readers` (those just registered)
    /// has a record (or damage) at its position; the sleep must not start then.
    ///
    /// # Errors
    /// The first error of [`Reader::ready`].
    pub(crate) fn recheck<'r>(&self, readers: impl IntoIterator<Item = &'r mut Reader>) -> Result<bool, LogError> {
        // Re-check after registering (pairs with the appender's fence after publishing): a
        // record published before the registration is seen here; one published after it
        // finds the registration and bumps `notify`, so the sleep on `words` ends at once.
        for reader in readers {
            if reader.ready()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What the futex wait needs: the `notify` word of each page registered on and the value
    /// read from it while registering.
    pub(crate) fn words(&self) -> impl ExactSizeIterator<Item = (&AtomicU32, u32)> + '_ {
        self.heads.iter().map(|(head, seen)| (head.notify_word(), *seen))
    }

    /// Readers of the last registration that registered nothing: while not 0, a sleep must be
    /// cut short so that their logs are polled (no appender would wake them).
    pub(crate) fn skipped(&self) -> usize {
        self.skipped
    }

    /// Ends the registration: lowers the `waiters` count of every page registered on. Does
    /// nothing when there is none; keeps the room allocated.
    pub(crate) fn finish(&mut self) {
        for (head, _) in self.heads.drain(..) {
            head.finish_wait();
        }
        self.skipped = 0;
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        self.finish();
    }
}

/// How a reader that has caught up waits for the next record: the log's counterpart of the
/// rings' wait strategies, for [`Tailer`](super::Tailer), [`wait_any_with`] and consumer-group
/// members.
///
/// ```
/// use shoal::log::{Tailer, TailWait};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// # let _log = shoal::log::Appender::open(dir.path(), shoal::log::LogOptions::default())?;
/// // Lowest latency, one core burnt while waiting:
/// let busy = Tailer::open_with(dir.path(), TailWait::BusySpin)?;
/// // The default: spin for a while, then sleep.
/// assert_eq!(Tailer::open(dir.path())?.wait(), TailWait::default());
/// // No CPU while idle, a wake-up through the kernel per record that finds it asleep:
/// let parked = Tailer::open(dir.path())?.with_wait(TailWait::Park);
/// # drop((busy, parked));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailWait {
    /// Spin on the next record's commit word in the shared mapping until it is published:
    /// well under a microsecond from append to read, across processes, for one core kept
    /// busy while waiting. Sleeps only while no appender has the log open.
    BusySpin,
    /// Spin for up to this long, then sleep until the appender wakes the waiter. Records that
    /// come more often than the budget are met spinning; a quiet log costs the budget once,
    /// then no CPU.
    SpinThenPark(Duration),
    /// Sleep at once on the log's futex until the appender wakes the waiter: no CPU while
    /// idle, a wake-up through the kernel (tens of microseconds on a VM) for each record
    /// that finds the waiter asleep.
    Park,
}

impl TailWait {
    /// The spin budget of the default strategy: longer than the gap between records of a
    /// stream of 5000 records/s, so such a stream is met spinning; a quiet log costs it once
    /// per record, then sleeps.
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(300);

    /// The strategy left once `spent` of a wait has passed (a spin budget shrinks by it), for
    /// callers that wait in several calls but want to spin for one budget in all.
    #[must_use]
    pub fn after(self, spent: Duration) -> TailWait {
        match self {
            TailWait::SpinThenPark(budget) => TailWait::SpinThenPark(budget.saturating_sub(spent)),
            other => other,
        }
    }
}

/// Since when, and at which offset, a tailer has found nothing to read: a spin budget counts
/// from there, across calls, so a caller that waits in short slices spins once per dry spell
/// (the blocking [`Tailer`](super::Tailer) and the async one keep one each).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DrySpell(Option<(Instant, super::Offset)>);

impl DrySpell {
    /// What is left of `wait` at `now` for a reader standing at `at`, and whether a new dry
    /// spell started here (the reader moved since the last call, or none was running).
    pub(crate) fn wait_left(&mut self, wait: TailWait, now: Instant, at: super::Offset) -> (TailWait, bool) {
        match self.0 {
            Some((since, offset)) if offset == at => (wait.after(now - since), false),
            _ => {
                self.0 = Some((now, at));
                (wait, true)
            }
        }
    }

    /// A record was found: the spell is over.
    pub(crate) fn end(&mut self) {
        self.0 = None;
    }
}

impl Default for TailWait {
    /// [`TailWait::SpinThenPark`] with [`TailWait::DEFAULT_SPIN`].
    fn default() -> TailWait {
        TailWait::SpinThenPark(TailWait::DEFAULT_SPIN)
    }
}

/// Spins between two full checks of a spinning waiter (each runs [`Reader::ready`] on every
/// reader, reads the clock and looks for a live appender): a few microseconds of
/// `spin_loop` hints, short against any spin budget and cheap against the checks.
const FULL_CHECK_SPINS: u32 = 128;

/// Pages after a waiting reader's position whose page faults it takes while it waits (see
/// `Reader::touch_ahead`): 8 KiB, dozens of small records, so a reader that keeps up never
/// faults on the records it reads; the touch costs a load per page.
const TOUCH_AHEAD_PAGES: usize = 2;

/// Waits as [`wait_any`] does, by `wait`'s strategy: [`TailWait::BusySpin`] spins until one
/// of `readers` has a record (or damage) or one of `words` moves, for up to `timeout`;
/// [`TailWait::SpinThenPark`] spins for up to its budget and then sleeps for the rest of
/// `timeout`; [`TailWait::Park`] sleeps at once. While every log has no live appender
/// (closed, or never opened), spinning gives way to sleeping. No wake-up is lost, and the
/// appender pays a futex wake only for a waiter that sleeps.
///
/// Returns `Ok(true)` when a reader was found ready without sleeping, `Ok(false)` when
/// `timeout` passed, a word moved or a sleep ended, whatever ended it.
///
/// # Errors
/// As [`Reader::ready`].
///
/// # Examples
/// ```
/// use shoal::log::{wait_any_with, Appender, LogOptions, Reader, TailWait};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let mut appender = Appender::open(dir.path(), LogOptions::default())?;
/// let mut reader = Reader::open(dir.path())?;
/// assert!(!wait_any_with(&mut [&mut reader], &[], TailWait::BusySpin, Duration::from_millis(1))?);
/// appender.append(b"spun")?;
/// assert!(wait_any_with(&mut [&mut reader], &[], TailWait::BusySpin, Duration::from_secs(5))?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait_any_with(
    readers: &mut [&mut Reader],
    words: &[(&AtomicU32, u32)],
    wait: TailWait,
    timeout: Duration,
) -> Result<bool, LogError> {
    let start = Instant::now();
    let spin = match wait {
        TailWait::BusySpin => timeout,
        TailWait::SpinThenPark(budget) => budget.min(timeout),
        TailWait::Park => Duration::ZERO,
    };
    if !spin.is_zero() {
        match spin_until(readers, words, start.checked_add(spin))? {
            Spun::Ready => return Ok(true),
            Spun::Moved => return Ok(false),
            Spun::Spent if wait == TailWait::BusySpin => return Ok(false),
            Spun::Spent | Spun::NoAppender => {}
        }
    }
    let left = timeout.saturating_sub(start.elapsed());
    if left.is_zero() {
        return Ok(false);
    }
    for reader in readers.iter() {
        reader.touch_ahead(TOUCH_AHEAD_PAGES);
    }
    wait_any(readers, words, left)
}

/// How a spin ended.
enum Spun {
    /// A reader has a record (or damage) at its position.
    Ready,
    /// One of the caller's words moved.
    Moved,
    /// The time given passed.
    Spent,
    /// No log has a live appender: nothing will come soon, so the waiter should sleep.
    NoAppender,
}

/// Spins until a reader is ready, a word moves, `until` passes (never with `None`), or no log
/// has a live appender. Registers no sleeper. See the module docs for what each spin checks.
fn spin_until(
    readers: &mut [&mut Reader],
    words: &[(&AtomicU32, u32)],
    until: Option<Instant>,
) -> Result<Spun, LogError> {
    let mut spins = 0u32;
    // Set once an end of segment was met and checked at once; later checks of it wait for the
    // periodic one (the next segment may take a while to be listed).
    let mut end_checked = false;
    // Bounded by `until` (checked every FULL_CHECK_SPINS spins), or, without one, by the
    // caller's choice of spinning for ever (`BusySpin` with no timeout).
    loop {
        for reader in readers.iter() {
            match reader.commit_word() {
                Some(0) => {}
                // A record is published there: `Reader::ready` says so at once.
                Some(word) if word != END_OF_SEGMENT => return Ok(Spun::Ready),
                // An end marker or the end of the mapping: a rollover to follow now.
                _ if !end_checked => {
                    end_checked = true;
                    spins = FULL_CHECK_SPINS;
                }
                _ => {}
            }
        }
        for &(word, seen) in words {
            // pairs with the Release (or stronger) store of whoever moves the word
            if word.load(Ordering::Acquire) != seen {
                return Ok(Spun::Moved);
            }
        }
        spins += 1;
        if spins >= FULL_CHECK_SPINS {
            spins = 0;
            for reader in readers.iter_mut() {
                if reader.ready()? {
                    return Ok(Spun::Ready);
                }
                reader.touch_ahead(TOUCH_AHEAD_PAGES);
            }
            if until.is_some_and(|until| Instant::now() >= until) {
                return Ok(Spun::Spent);
            }
            if readers.iter_mut().all(|reader| reader.head().is_none_or(|head| head.appender_pid() == 0)) {
                return Ok(Spun::NoAppender);
            }
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Appender, LogOptions};

    /// A log with an appender (so a `HEAD` page) and a reader of it.
    fn a_log() -> (tempfile::TempDir, Appender, Reader) {
        let dir = tempfile::tempdir().expect("temp dir");
        let appender = Appender::open(dir.path(), LogOptions::default()).expect("open the log");
        let reader = Reader::open(dir.path()).expect("open a reader");
        (dir, appender, reader)
    }

    /// The sleepers counted in the `HEAD` page of `reader`'s log now.
    fn waiters(reader: &mut Reader) -> u32 {
        reader.head().expect("the log has a HEAD page").waiters()
    }

    #[test]
    fn registering_raises_waiters_and_finishing_or_dropping_lowers_them_once() {
        let (_dir, _appender, mut reader) = a_log();
        let mut sleepers = Sleepers::default();
        sleepers.register([&mut reader]);
        assert_eq!((sleepers.skipped(), waiters(&mut reader)), (0, 1));
        let head = reader.head().expect("a HEAD page");
        let notify = head.notify_word();
        let words: Vec<_> = sleepers.words().map(|(word, seen)| (word.as_ptr(), seen)).collect();
        assert_eq!(words, [(notify.as_ptr(), notify.load(Ordering::SeqCst))], "the word to wait on");
        sleepers.finish();
        sleepers.finish();
        assert_eq!(waiters(&mut reader), 0, "finishing twice lowers the count once");
        assert_eq!(sleepers.words().len(), 0);
        sleepers.register([&mut reader]);
        sleepers.register([&mut reader]);
        assert_eq!(waiters(&mut reader), 1, "registering again ends the earlier registration");
        drop(sleepers);
        assert_eq!(waiters(&mut reader), 0, "dropping the registration ends it");
    }

    #[test]
    fn a_log_without_a_head_page_or_with_a_read_only_one_is_skipped() {
        let (bare, live) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
        let _appender = Appender::open(live.path(), LogOptions::default()).expect("open the log");
        let mut without_head = Reader::open(bare.path()).expect("open a reader");
        let mut with_head = Reader::open(live.path()).expect("open a reader");
        let mut sleepers = Sleepers::default();
        sleepers.register([&mut without_head, &mut with_head]);
        assert_eq!((sleepers.skipped(), sleepers.words().len()), (1, 1));
        assert_eq!(waiters(&mut with_head), 1);
        sleepers.finish();
        assert_eq!(sleepers.skipped(), 0, "finishing forgets the skipped readers too");

        sleepers.add(Some(&Arc::new(Head::open_read_only(live.path()))));
        assert_eq!((sleepers.skipped(), sleepers.words().len()), (1, 0), "a read-only page registers nothing");
        assert_eq!(waiters(&mut with_head), 0);
    }

    #[test]
    fn a_record_published_after_registering_is_seen_by_the_recheck_and_moves_the_word() {
        let (_dir, mut appender, mut reader) = a_log();
        let mut sleepers = Sleepers::default();
        sleepers.register([&mut reader]);
        assert!(!sleepers.recheck([&mut reader]).expect("re-check"), "nothing published yet");
        appender.append(b"wake").expect("append");
        assert!(sleepers.recheck([&mut reader]).expect("re-check"));
        let moved = sleepers.words().all(|(word, seen)| word.load(Ordering::SeqCst) != seen);
        assert!(moved, "the appender saw the sleeper and bumped notify");
    }

    #[test]
    fn a_registration_outlives_its_reader_and_ends_on_its_page() {
        let (dir, _appender, mut reader) = a_log();
        let mut sleepers = Sleepers::default();
        sleepers.register([&mut reader]);
        drop(reader);
        let mut other = Reader::open(dir.path()).expect("open a reader");
        assert_eq!(waiters(&mut other), 1);
        drop(sleepers);
        assert_eq!(waiters(&mut other), 0);
    }
}
