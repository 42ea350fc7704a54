//! Sleeping until any of several logs gets a record: one `futex_waitv(2)` over the `notify`
//! word of each log's `HEAD` page, plus any futex words of the caller's own (a consumer
//! group's membership epoch), across processes.
//!
//! # Protocol
//! The Dekker pattern of [`head`](super::head): register as a sleeper on every log (which
//! issues the heavy fence), re-check every reader, and only then sleep on the words read
//! while registering. An appender that publishes after our re-check sees the registration
//! and bumps the word, so the sleep returns at once; one that published before it is seen by
//! the re-check. A log with no `HEAD` page yet (no appender has opened it) has no word to
//! wait on: the sleep is then cut to 1 ms and the caller polls.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use super::error::LogError;
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
    let mut list: Vec<FutexWaitv> = Vec::with_capacity(words.len() + readers.len());
    list.extend(words.iter().map(|&(word, seen)| FutexWaitv::new(word, seen)));
    let mut every_head = true;
    let mut registered = Vec::with_capacity(readers.len());
    let mut last_seen = 0;
    for (i, reader) in readers.iter_mut().enumerate() {
        match reader.head() {
            // A page mapped read-only cannot register a sleeper: poll that log.
            Some(head) if head.is_writable() => {
                let seen = head.prepare_wait();
                last_seen = seen;
                list.push(FutexWaitv::new(head.notify_word(), seen));
                registered.push(i);
            }
            _ => every_head = false,
        }
    }
    // Re-check after registering (pairs with the appender's fence after publishing).
    let mut ready = Ok(false);
    for reader in readers.iter_mut() {
        ready = reader.ready();
        if !matches!(ready, Ok(false)) {
            break;
        }
    }
    if matches!(ready, Ok(false)) {
        let timeout =
            if every_head && list.len() <= WAITV_MAX { timeout } else { timeout.min(Duration::from_millis(1)) };
        if list.len() == 1 && words.is_empty() {
            // One log: a plain FUTEX_WAIT, available on every kernel.
            if let Some(head) = readers.iter_mut().find_map(|r| r.head()) {
                head.wait(last_seen, timeout);
            }
        } else {
            // SAFETY: the words live in the `HEAD` pages mapped by `readers` (borrowed
            // mutably for the whole call, so none is unmapped) and in `words` (borrowed).
            unsafe { futex::wait_any(&list, timeout) };
        }
    }
    for &i in &registered {
        if let Some(head) = readers[i].head() {
            head.finish_wait();
        }
    }
    ready
}
