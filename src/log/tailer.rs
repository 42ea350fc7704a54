//! Following a log: a [`Tailer`] is a [`Reader`] that sleeps when caught up, on the futex
//! of the log's `HEAD` page (through [`wait_any`](super::wait_any)), until the appender
//! publishes more.

use std::path::Path;
use std::time::{Duration, Instant};

use super::error::LogError;
use super::reader::{Reader, Record};
use super::wait::wait_any;

/// Follows a log: returns records as they are appended, sleeping when caught up.
///
/// Works in the appender's process and in any other: the appender wakes sleeping tailers
/// through a futex in the log's shared `HEAD` page; an idle tailer uses no CPU.
#[derive(Debug)]
pub struct Tailer {
    reader: Reader,
}

impl Tailer {
    /// A tailer from the first record still held.
    ///
    /// # Errors
    /// As [`Reader::open`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Tailer, LogError> {
        let reader = Reader::open(dir)?;
        Ok(Tailer::from_reader(reader))
    }

    /// A tailer continuing from where `reader` stands.
    pub fn from_reader(reader: Reader) -> Tailer {
        Tailer { reader }
    }

    /// The underlying reader (to seek, or read without waiting).
    pub fn reader(&mut self) -> &mut Reader {
        &mut self.reader
    }

    /// The next record, waiting up to `timeout` (forever with `None`) for one to be
    /// appended. `Ok(None)` when the timeout passed.
    ///
    /// # Errors
    /// As [`Reader::next`].
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Record<'_>>, LogError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.reader.ready()? {
                return self.reader.next();
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    (d - now).min(MAX_SLEEP)
                }
                None => MAX_SLEEP,
            };
            wait_any(&mut [&mut self.reader], &[], wait)?;
        }
    }
}

/// Longest single sleep: a safety net for a wake-up lost to a crashed process.
const MAX_SLEEP: Duration = Duration::from_millis(100);
