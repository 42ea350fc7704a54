//! Following a log: a [`Tailer`] is a [`Reader`] that waits when caught up, by its
//! [`TailWait`] strategy: spinning on the next record's commit word in the shared mapping
//! (no syscall per check, and no futex wake asked of the appender), sleeping on the futex of
//! the log's `HEAD` page until the appender publishes more, or spinning for a budget and then
//! sleeping (the default). The waiting itself is [`wait_any_with`](super::wait_any_with).

use std::path::Path;
use std::time::{Duration, Instant};

use super::error::LogError;
use super::reader::{Reader, Record};
use super::wait::{wait_any_with, DrySpell, TailWait};

/// Follows a log: returns records as they are appended, waiting when caught up.
///
/// Works in the appender's process and in any other. How it waits is its [`TailWait`]:
/// by default it spins for [`TailWait::DEFAULT_SPIN`] and then sleeps on a futex in the log's
/// shared `HEAD` page, which the appender wakes; with [`TailWait::BusySpin`] it sees a record
/// well under a microsecond after its append, and with [`TailWait::Park`] an idle tailer uses
/// no CPU at all.
///
/// A tailer in another thread following an appender (another process works the same way):
///
/// ```
/// use shoal::log::{Appender, LogOptions, TailWait, Tailer};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let mut log = Appender::open(dir.path(), LogOptions::default())?;
/// let mut tailer = Tailer::open_with(dir.path(), TailWait::Park)?; // no CPU while idle
/// let follower = std::thread::spawn(move || -> Result<Vec<u64>, shoal::log::LogError> {
///     let mut keys = Vec::new();
///     while keys.len() < 3 {
///         // A generous bound: the appends come at once, a loaded machine may be slow.
///         let record = tailer.next(Some(Duration::from_secs(10)))?.expect("appended meanwhile");
///         keys.push(record.key());
///     }
///     // Caught up: `next` waits up to its timeout, then says there is nothing new.
///     assert!(tailer.next(Some(Duration::from_millis(1)))?.is_none());
///     Ok(keys)
/// });
/// for key in [7, 8, 9] {
///     log.append_keyed(key, b"tick")?;
/// }
/// assert_eq!(follower.join().expect("the follower panicked")?, [7, 8, 9]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Tailer {
    reader: Reader,
    wait: TailWait,
    /// Since when the tailer has found nothing to read (its spin budget counts from there).
    dry: DrySpell,
}

impl Tailer {
    /// A tailer from the first record still held, waiting by the default [`TailWait`].
    ///
    /// # Errors
    /// As [`Reader::open`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Tailer, LogError> {
        Tailer::open_with(dir, TailWait::default())
    }

    /// A tailer from the first record still held, waiting by `wait`.
    ///
    /// # Errors
    /// As [`Reader::open`].
    pub fn open_with(dir: impl AsRef<Path>, wait: TailWait) -> Result<Tailer, LogError> {
        let reader = Reader::open(dir)?;
        Ok(Tailer::from_reader(reader).with_wait(wait))
    }

    /// A tailer continuing from where `reader` stands, waiting by the default [`TailWait`].
    pub fn from_reader(reader: Reader) -> Tailer {
        Tailer { reader, wait: TailWait::default(), dry: DrySpell::default() }
    }

    /// This tailer, waiting by `wait` from now on.
    #[must_use]
    pub fn with_wait(mut self, wait: TailWait) -> Tailer {
        self.wait = wait;
        self
    }

    /// How this tailer waits.
    pub fn wait(&self) -> TailWait {
        self.wait
    }

    /// The underlying reader (to seek, or read without waiting).
    pub fn reader(&mut self) -> &mut Reader {
        &mut self.reader
    }

    /// The reader, for a waiter of another kind (`aio::AsyncTailer`) that continues where
    /// this tailer stands.
    #[cfg(feature = "tokio")]
    pub(crate) fn into_reader(self) -> Reader {
        self.reader
    }

    /// The next record, waiting up to `timeout` (forever with `None`) for one to be
    /// appended, by this tailer's [`TailWait`]. A spin budget counts from when the tailer
    /// first found nothing to read at its offset, across calls: a caller that waits in short
    /// slices spins once per quiet spell, not once per call. `Ok(None)` when the timeout
    /// passed.
    ///
    /// # Errors
    /// As [`Reader::next`].
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Record<'_>>, LogError> {
        let start = Instant::now();
        let deadline = timeout.map(|t| start.checked_add(t));
        // Bounded by the deadline: each pass waits (spins or sleeps) up to MAX_SLEEP.
        loop {
            if self.reader.ready()? {
                self.dry.end();
                return self.reader.next();
            }
            let now = Instant::now();
            let (left, _) = self.dry.wait_left(self.wait, now, self.reader.next_offset());
            let wait = match deadline {
                Some(Some(d)) => {
                    if now >= d {
                        return Ok(None);
                    }
                    (d - now).min(MAX_SLEEP)
                }
                // No timeout, or one too long for the clock to reach.
                Some(None) | None => MAX_SLEEP,
            };
            wait_any_with(&mut [&mut self.reader], &[], left, wait)?;
        }
    }
}

/// Longest single wait: a safety net for a wake-up lost to a crashed process (and how often a
/// busy-spinning tailer of a log with no appender looks for a new one).
const MAX_SLEEP: Duration = Duration::from_millis(100);
