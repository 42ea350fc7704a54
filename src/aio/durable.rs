//! Awaitable durability: [`AsyncDurable::wait`] on a [`DurableWatch`], and appends whose
//! future resolves once the record is durable ([`AppendDurable`], [`SendDurable`]).
//!
//! A waiter registers the way the blocking [`DurableWatch::wait_durable`] counts itself (the
//! waking side then bumps a futex word of the log's sync state wherever it notifies the
//! blocking waiters: a round that moved the watermark, a failed sync, a close), re-checks,
//! and sleeps on that word through the wake helper. A sync the level would not run on its
//! own is handed to the log's sync thread: the runtime's thread never runs a data sync.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::wake::{wait_words, Scope, WordWait};
use crate::bus::TopicProducer;
use crate::log::{AppendError, Appender, DurableWatch, LogError, NewRecord, Offset};

/// The longest a durable waiter sleeps before it re-checks the watermark on its own: the
/// blocking waiters' bound, a second line of defence (wake-ups are not lost by the protocol;
/// this covers a shared log's watermark moved by another process's sync round, which this
/// process learns of only when its own sync thread next looks).
const RECHECK: Duration = Duration::from_millis(100);

/// Awaitable waits on a [`DurableWatch`].
///
/// # Examples
/// ```
/// use shoal::aio::AsyncDurable;
/// use shoal::log::{Appender, Durability, LogOptions};
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let dir = tempfile::tempdir()?;
/// let opts = LogOptions::default().durability(Durability::Never); // no sync unless asked
/// let mut log = Appender::open(dir.path(), opts)?;
/// let watch = log.durable_watch();
/// let offset = log.append(b"reply once this is on disk")?;
/// // Asks the log's sync thread for a sync and waits for the watermark, without blocking
/// // the runtime's thread.
/// watch.wait(offset).await?;
/// assert!(log.durable_offset() > offset);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait AsyncDurable {
    /// Resolves once `offset` is durable, asking for a sync where the durability level would
    /// not run one soon (handed to the log's sync thread). The async form of
    /// [`DurableWatch::wait_durable`] with no timeout (put it in `tokio::time::timeout` for
    /// one).
    ///
    /// Cancellation safe: dropping the future unregisters it; a sync already asked for still
    /// runs.
    ///
    /// # Errors
    /// [`LogError::SyncFailed`] when a sync failed; [`LogError::Closed`] when the appender
    /// closed before the record was appended.
    ///
    /// # Panics
    /// When polled in a runtime built without its time driver, or again after it completed.
    fn wait(&self, offset: Offset) -> WaitDurable;

    /// Like [`AsyncDurable::wait`], but never asks for a sync: it only watches the watermark
    /// move at the pace the durability level sets.
    ///
    /// # Errors
    /// As [`AsyncDurable::wait`].
    fn wait_passive(&self, offset: Offset) -> WaitDurable;
}

impl AsyncDurable for DurableWatch {
    fn wait(&self, offset: Offset) -> WaitDurable {
        WaitDurable::new(self.clone(), offset, true)
    }

    fn wait_passive(&self, offset: Offset) -> WaitDurable {
        WaitDurable::new(self.clone(), offset, false)
    }
}

/// The future of [`AsyncDurable::wait`]: resolves to the offset waited for once it is
/// durable. Owns a handle on the watermark, so it may be sent to another task and awaited
/// there while the appender goes on appending.
///
/// Cancellation safe: dropping it unregisters it and consumes nothing.
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct WaitDurable {
    watch: DurableWatch,
    offset: Offset,
    request_sync: bool,
    /// True while counted as a waiter of the log's sync state.
    registered: bool,
    sleep: Option<WordWait>,
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl WaitDurable {
    fn new(watch: DurableWatch, offset: Offset, request_sync: bool) -> WaitDurable {
        WaitDurable { watch, offset, request_sync, registered: false, sleep: None, recheck: None, done: false }
    }

    /// The offset this future waits for.
    pub fn offset(&self) -> Offset {
        self.offset
    }

    fn finish(&mut self, result: Result<(), LogError>) -> Poll<Result<Offset, LogError>> {
        self.unregister();
        self.done = true;
        Poll::Ready(result.map(|()| self.offset))
    }

    fn unregister(&mut self) {
        self.sleep = None;
        self.recheck = None;
        if self.registered {
            self.registered = false;
            self.watch.watch_end();
        }
    }
}

impl Future for WaitDurable {
    type Output = Result<Offset, LogError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(!this.done, "WaitDurable polled again after it completed");
        // Bounded: each pass ends pending, ready, or after a wake-up that came before the
        // sleep was polled (a word that moved meanwhile); a run of those goes through the
        // scheduler instead.
        for _ in 0..4 {
            if let Some(result) = this.watch.settled(this.offset) {
                return this.finish(result);
            }
            if !this.registered {
                if this.request_sync {
                    this.ask_sync_once();
                }
                let (word, seen) = this.watch.watch_begin();
                this.registered = true;
                // Re-check after registering: a round that moved the watermark before this
                // is seen here; one after it finds the registration and bumps the word.
                if let Some(result) = this.watch.settled(this.offset) {
                    return this.finish(result);
                }
                this.sleep = Some(wait_words(&[(word, seen, Scope::Private)]));
                this.recheck = Some(Box::pin(tokio::time::sleep(RECHECK)));
            }
            let woken = this.sleep.as_mut().is_some_and(|sleep| Pin::new(sleep).poll(cx).is_ready());
            let timed_out = this.recheck.as_mut().is_some_and(|recheck| recheck.as_mut().poll(cx).is_ready());
            if !(woken || timed_out) {
                return Poll::Pending;
            }
            // Go round again: re-check, register anew, sleep.
            this.unregister();
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl WaitDurable {
    /// Asks for the sync once per registration (a round the level would not run on its
    /// own), as the blocking wait does before it waits.
    fn ask_sync_once(&self) {
        self.watch.ask_sync(self.offset);
    }
}

impl Drop for WaitDurable {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// The future of an append that resolves once its record is durable
/// ([`AppendDurable::append_durable`], [`SendDurable::send_durable`]): to the record's
/// position (`Offset` for a log, `(partition, Offset)` for a topic).
///
/// The record is appended when the call returns this future, not when it is awaited:
/// dropping the future (cancelling it) does not undo the append, it only stops waiting.
/// Polling it again after it completed panics.
#[derive(Debug)]
#[must_use = "the record is appended already; await this to know it is durable"]
pub struct AppendedDurable<T> {
    state: Appended<T>,
}

#[derive(Debug)]
enum Appended<T> {
    Failed(Option<AppendError>),
    Waiting(T, WaitDurable),
}

impl<T: Copy + Unpin> Future for AppendedDurable<T> {
    type Output = Result<T, AppendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            Appended::Failed(error) => {
                Poll::Ready(Err(error.take().expect("AppendedDurable polled again after it completed")))
            }
            Appended::Waiting(at, wait) => match Pin::new(wait).poll(cx) {
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(*at)),
                Poll::Ready(Err(e)) => Poll::Ready(Err(AppendError::Log(e))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Appends to a log with a future that resolves once the record is durable.
///
/// # Examples
/// ```
/// use shoal::aio::AppendDurable;
/// use shoal::log::{Appender, Durability, LogOptions};
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let dir = tempfile::tempdir()?;
/// let mut log = Appender::open(dir.path(), LogOptions::default().durability(Durability::Batch))?;
/// // Many appends share one data sync (group commit); each future resolves when its record
/// // is covered.
/// let acks: Vec<_> = (0..10).map(|i| log.append_durable(format!("order {i}").as_bytes())).collect();
/// for (i, ack) in acks.into_iter().enumerate() {
///     assert_eq!(ack.await?.0, i as u64);
/// }
/// assert_eq!(log.durable_offset().0, 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait AppendDurable {
    /// Appends `payload` now and returns a future that resolves to its offset once it is
    /// durable, asking for a sync where the durability level would not run one on its own.
    ///
    /// # Errors
    /// The future resolves to the append's error (the record was not appended), or to
    /// [`LogError::SyncFailed`] (in [`AppendError::Log`]) when the sync that should have
    /// covered it failed.
    fn append_durable(&mut self, payload: &[u8]) -> AppendedDurable<Offset>;

    /// [`AppendDurable::append_durable`] for a record with its optional parts.
    ///
    /// # Errors
    /// As [`AppendDurable::append_durable`].
    fn append_record_durable(&mut self, record: &NewRecord<'_>) -> AppendedDurable<Offset>;
}

impl AppendDurable for Appender {
    fn append_durable(&mut self, payload: &[u8]) -> AppendedDurable<Offset> {
        let result = self.append(payload);
        appended(result.map(|offset| (offset, self.durable_watch())))
    }

    fn append_record_durable(&mut self, record: &NewRecord<'_>) -> AppendedDurable<Offset> {
        let result = self.append_record(record);
        appended(result.map(|offset| (offset, self.durable_watch())))
    }
}

/// Sends to a topic with a future that resolves once the record is durable.
///
/// # Examples
/// ```
/// use shoal::aio::SendDurable;
/// use shoal::bus::Bus;
/// use shoal::log::LogOptions;
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let dir = tempfile::tempdir()?;
/// let bus = Bus::open(dir.path())?;
/// let mut producer = bus.topic_or_create("orders", Some(4))?.producer(LogOptions::default())?;
/// let (partition, offset) = producer.send_durable(42, b"deposit").await?;
/// assert!(producer.durable_watch(partition).expect("a partition").durable_offset() > offset);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait SendDurable {
    /// Sends `payload` under `key` now (to the key's partition) and returns a future that
    /// resolves to (partition, offset) once the record is durable.
    ///
    /// # Errors
    /// As [`AppendDurable::append_durable`].
    fn send_durable(&mut self, key: u64, payload: &[u8]) -> AppendedDurable<(u32, Offset)>;

    /// [`SendDurable::send_durable`] for a record with its optional parts, routed by its
    /// routing key.
    ///
    /// # Errors
    /// As [`AppendDurable::append_durable`].
    fn send_record_durable(&mut self, record: &NewRecord<'_>) -> AppendedDurable<(u32, Offset)>;
}

impl SendDurable for TopicProducer {
    fn send_durable(&mut self, key: u64, payload: &[u8]) -> AppendedDurable<(u32, Offset)> {
        let result = self.send(key, payload);
        sent(self, result)
    }

    fn send_record_durable(&mut self, record: &NewRecord<'_>) -> AppendedDurable<(u32, Offset)> {
        let result = self.send_record(record);
        sent(self, result)
    }
}

fn sent(producer: &TopicProducer, result: Result<(u32, Offset), AppendError>) -> AppendedDurable<(u32, Offset)> {
    appended(result.and_then(|(p, offset)| {
        // The partition the record went to exists: the producer just appended to it.
        let watch = producer.durable_watch(p).ok_or(AppendError::Log(LogError::Closed))?;
        Ok(((p, offset), watch, offset))
    }))
}

/// The future of a finished append: waiting on `watch` for the record, or the error.
fn appended<T, R: IntoWait<T>>(result: Result<R, AppendError>) -> AppendedDurable<T> {
    match result {
        Ok(r) => {
            let (at, watch, offset) = r.into_wait();
            AppendedDurable { state: Appended::Waiting(at, watch.wait(offset)) }
        }
        Err(e) => AppendedDurable { state: Appended::Failed(Some(e)) },
    }
}

/// What an append returned, as (what the future resolves to, the watermark, the offset).
trait IntoWait<T> {
    fn into_wait(self) -> (T, DurableWatch, Offset);
}

impl IntoWait<Offset> for (Offset, DurableWatch) {
    fn into_wait(self) -> (Offset, DurableWatch, Offset) {
        (self.0, self.1, self.0)
    }
}

impl IntoWait<(u32, Offset)> for ((u32, Offset), DurableWatch, Offset) {
    fn into_wait(self) -> ((u32, Offset), DurableWatch, Offset) {
        self
    }
}
