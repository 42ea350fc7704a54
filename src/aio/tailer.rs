//! [`AsyncTailer`]: a log tailer for async code, a zero-copy lending `next().await` and a
//! [`Stream`] of owned records.
//!
//! It waits the way [`Tailer`] does, by its [`TailWait`]: a spin budget first (spent as
//! re-checks between which the task yields to the runtime, so no runtime thread is blocked),
//! then a sleep registered on the log's `HEAD` futex word by the blocking tailer's protocol
//! (`log::Sleepers`: raise `waiters`, fence, read `notify`, re-check) and handed to the
//! process's wake-up helper (`super::wake`).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;

use super::wake::{wait_words, Scope, WordWait};
use crate::log::{DrySpell, LogError, Reader, Record, RecordRef, Sleepers, TailWait, Tailer};

/// Re-checks of a spinning tailer between two full checks of its reader (rollovers, damage,
/// a live appender): the other re-checks load only the next record's commit word.
const FULL_CHECK_POLLS: u32 = 32;

/// Pages after its position whose page faults a tailer takes before it sleeps (as the
/// blocking tailer does).
const TOUCH_AHEAD_PAGES: usize = 2;

/// How long a tailer of a log without a writable `HEAD` page (no appender opened it yet, or
/// the page is read-only) sleeps between re-checks: there is no registered sleeper to wake.
const POLL_WITHOUT_HEAD: Duration = Duration::from_millis(1);

/// Follows a log from async code: a [`Tailer`] whose waits are futures.
///
/// Records come two ways:
/// - [`AsyncTailer::next`] lends each record in place in the mapped segment (zero copy, no
///   allocation), valid until the next call;
/// - as a [`Stream`] of [`RecordRef`]s: owned (an `Arc` on the record's segment, so still no
///   copy of the payload), `Send`, for combinators and for handing records to other tasks.
///
/// A tailer that has caught up waits by its [`TailWait`], as [`Tailer`] does: the default
/// spins for [`TailWait::DEFAULT_SPIN`] (re-checking the log and yielding to the runtime
/// between checks: the runtime's thread stays free for other tasks) and then sleeps until
/// the appender publishes; with [`TailWait::Park`] it sleeps at once, and an idle tailer then
/// costs no CPU and no thread (the process's wake-up helper sleeps for all of them). With
/// [`TailWait::BusySpin`] it re-checks until a record comes, keeping one runtime thread busy.
///
/// Every wait is cancellation safe: a `next()` (or a stream poll) dropped while waiting, by a
/// `select!` or a timeout, loses nothing, and the next call returns the record the dropped
/// one would have.
///
/// # Examples
/// ```
/// use futures_util::StreamExt;
/// use shoal::aio::AsyncTailer;
/// use shoal::log::{Appender, LogOptions, TailWait};
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let dir = tempfile::tempdir()?;
/// let mut log = Appender::open(dir.path(), LogOptions::default())?;
/// let mut tailer = AsyncTailer::open_with(dir.path(), TailWait::Park)?;
/// let producer = tokio::task::spawn_blocking(move || -> Result<_, shoal::log::AppendError> {
///     for key in [7, 8, 9] {
///         log.append_keyed(key, b"tick")?;
///     }
///     Ok(log)
/// });
/// // Zero copy: the record is borrowed from the mapped segment until the next call.
/// let record = tailer.next().await?;
/// assert_eq!((record.key(), record.payload()), (7, &b"tick"[..]));
/// // Owned records, as a stream.
/// let mut keys = Vec::new();
/// while let Some(record) = StreamExt::next(&mut tailer).await {
///     keys.push(record?.key()); // a RecordRef: owned, Send, still no copy of the payload
///     if keys.len() == 2 {
///         break;
///     }
/// }
/// assert_eq!(keys, [8, 9]);
/// producer.await??.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AsyncTailer {
    reader: Reader,
    wait: TailWait,
    /// Since when the tailer has found nothing to read (the spin budget counts from there,
    /// as in `Tailer`).
    dry: DrySpell,
    /// Passes while spinning (every `FULL_CHECK_POLLS`-th runs the full check).
    polls: u32,
    /// True while the tailer spends its spin budget (it yielded and comes back to re-check).
    spinning: bool,
    /// The registered sleep on `HEAD`'s `notify` word, while one is in flight.
    sleep: Option<WordWait>,
    /// This tailer's registration as a sleeper on `HEAD` (counted in its `waiters`), while
    /// one is held.
    sleepers: Sleepers,
    /// The re-check timer of a log without a writable `HEAD` page.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncTailer {
    /// A tailer from the first record still held, waiting by the default [`TailWait`].
    ///
    /// # Errors
    /// As [`Reader::open`].
    pub fn open(dir: impl AsRef<Path>) -> Result<AsyncTailer, LogError> {
        AsyncTailer::open_with(dir, TailWait::default())
    }

    /// A tailer from the first record still held, waiting by `wait`.
    ///
    /// # Errors
    /// As [`Reader::open`].
    pub fn open_with(dir: impl AsRef<Path>, wait: TailWait) -> Result<AsyncTailer, LogError> {
        Ok(AsyncTailer::from_reader(Reader::open(dir)?, wait))
    }

    /// A tailer continuing where `reader` stands, waiting by `wait`.
    pub fn from_reader(reader: Reader, wait: TailWait) -> AsyncTailer {
        AsyncTailer {
            reader,
            wait,
            dry: DrySpell::default(),
            polls: 0,
            spinning: false,
            sleep: None,
            sleepers: Sleepers::with_capacity(1),
            timer: None,
        }
    }

    /// How this tailer waits.
    pub fn wait(&self) -> TailWait {
        self.wait
    }

    /// The underlying reader (to seek, or read without waiting).
    pub fn reader(&mut self) -> &mut Reader {
        self.cancel_wait();
        &mut self.reader
    }

    /// The next record, borrowed in place from the mapped segment (valid until the next call
    /// on this tailer), waiting by this tailer's [`TailWait`] until one is appended.
    ///
    /// Cancellation safe: dropping the future before it completes consumes nothing.
    ///
    /// This inherent `next` takes precedence over `StreamExt::next`; for an owned record from
    /// the stream, write `StreamExt::next(&mut tailer)`.
    ///
    /// # Errors
    /// As [`Reader::next`]: [`LogError::Corruption`] at a damaged record (the tailer stays
    /// there), [`LogError::OffsetGone`] when retention removed the next segment.
    ///
    /// # Panics
    /// When the future is polled again after it completed, and when the tailer must poll (a log whose `HEAD` page no appender has created yet, or
    /// one mapped read-only) in a runtime built without its time driver.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Next<'_> {
        Next { tailer: Some(self) }
    }

    /// Polls until a record (or damage) waits at the reader's position.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LogError>> {
        // Bounded: each pass either returns, or moves from spinning to sleeping, or from a
        // finished sleep to a re-check.
        for _ in 0..4 {
            if let Some(sleep) = self.sleep.as_mut() {
                if Pin::new(sleep).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.cancel_wait();
            }
            if let Some(timer) = self.timer.as_mut() {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.timer = None;
            }
            // While spinning, a pass loads only the next record's commit word, and every
            // FULL_CHECK_POLLS-th runs the reader's full check (rollovers, damage).
            let quick = self.spinning && self.polls % FULL_CHECK_POLLS != 0;
            let ready = match self.reader.commit_word() {
                Some(0) if quick => Ok(false),
                _ => self.reader.ready(),
            };
            match ready {
                Ok(true) => return Poll::Ready(self.found()),
                Ok(false) if self.spinning && !quick => self.reader.touch_ahead(TOUCH_AHEAD_PAGES),
                Ok(false) => {}
                Err(e) => {
                    self.spinning = false;
                    return Poll::Ready(Err(e));
                }
            }
            let (left, fresh) = self.dry.wait_left(self.wait, Instant::now(), self.reader.next_offset());
            if fresh {
                self.polls = 0;
            }
            let spinning = match left {
                TailWait::BusySpin => true,
                TailWait::SpinThenPark(left) => !left.is_zero(),
                TailWait::Park => false,
            };
            if spinning && self.reader.head().is_some_and(|head| head.appender_pid() != 0) {
                // Come back through the scheduler: the runtime runs what else is ready first.
                self.spinning = true;
                self.polls = self.polls.wrapping_add(1);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.spinning = false;
            self.reader.touch_ahead(TOUCH_AHEAD_PAGES);
            self.sleepers.register([&mut self.reader]);
            if self.sleepers.skipped() != 0 {
                // No writable `HEAD` page: nothing registered, nothing would wake a sleep.
                let mut timer = Box::pin(tokio::time::sleep(POLL_WITHOUT_HEAD));
                if timer.as_mut().poll(cx).is_pending() {
                    self.timer = Some(timer);
                    return Poll::Pending;
                }
                continue;
            }
            match self.sleepers.recheck([&mut self.reader]) {
                Ok(false) => {}
                Ok(true) => {
                    self.cancel_wait();
                    return Poll::Ready(self.found());
                }
                Err(e) => {
                    self.cancel_wait();
                    return Poll::Ready(Err(e));
                }
            }
            let Some((word, seen)) = self.sleepers.words().next() else { continue };
            self.sleep = Some(wait_words(&[(word, seen, Scope::Shared)]));
        }
        // Four passes without a record or a pending wait: a run of spurious wake-ups. Come
        // back through the scheduler rather than loop here.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// A record is at the reader's position: the dry spell is over.
    fn found(&mut self) -> Result<(), LogError> {
        self.dry.end();
        self.spinning = false;
        Ok(())
    }

    /// Drops a registered sleep (its registration with the helper) and leaves `waiters`.
    fn cancel_wait(&mut self) {
        self.sleep = None;
        self.timer = None;
        self.sleepers.finish();
    }
}

impl From<Tailer> for AsyncTailer {
    /// An async tailer continuing where `tailer` stands, waiting the way it did.
    fn from(tailer: Tailer) -> AsyncTailer {
        let wait = tailer.wait();
        AsyncTailer::from_reader(tailer.into_reader(), wait)
    }
}

impl Drop for AsyncTailer {
    fn drop(&mut self) {
        self.cancel_wait();
    }
}

/// The future of [`AsyncTailer::next`]: the next record, borrowed from the mapping.
///
/// Cancellation safe: dropping it before it completes consumes nothing and ends the
/// tailer's registration with the log.
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Next<'a> {
    tailer: Option<&'a mut AsyncTailer>,
}

impl<'a> Future for Next<'a> {
    type Output = Result<Record<'a>, LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(tailer) = self.tailer.as_mut() else {
            panic!("AsyncTailer::next polled again after it completed");
        };
        match tailer.poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                self.tailer = None;
                return Poll::Ready(Err(e));
            }
            Poll::Ready(Ok(())) => {}
        }
        let Some(tailer) = self.tailer.take() else { unreachable!("checked above") };
        let dir = tailer.reader.dir().to_path_buf();
        let at = tailer.reader.next_offset();
        Poll::Ready(match tailer.reader.next() {
            Ok(Some(record)) => Ok(record),
            // `ready` saw a published record at this position, and published records never
            // change: only a segment changed under the reader gets here.
            Ok(None) => Err(LogError::Inconsistent {
                path: dir,
                why: format!("the record at offset {at} was published and then gone"),
            }),
            Err(e) => Err(e),
        })
    }
}

impl Drop for Next<'_> {
    fn drop(&mut self) {
        if let Some(tailer) = self.tailer.as_mut() {
            tailer.cancel_wait();
        }
    }
}

impl Stream for AsyncTailer {
    /// Owned records: an `Arc` on the record's segment, no copy of the payload.
    type Item = Result<RecordRef, LogError>;

    /// The next record, waiting by the tailer's [`TailWait`]. The stream never ends: a log
    /// may always get more records. An error is yielded each time it is met (the tailer stays
    /// at a damaged record, as [`Reader::next`] does).
    ///
    /// A `StreamExt::next` future dropped mid-wait loses nothing either, but the tailer stays
    /// registered as a sleeper until it is polled again or dropped (the appender meanwhile
    /// wakes it on each append, as it would a sleeping tailer).
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Bounded: a ready reader returns a record, or (a segment changed under it) loops.
        for _ in 0..4 {
            match this.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(())) => {}
            }
            match this.reader.next_ref() {
                Ok(Some(record)) => return Poll::Ready(Some(Ok(record))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
