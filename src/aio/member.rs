//! The async consumer-group member: [`AsyncMember`].
//!
//! A [`Member`] polled from a task. Each poll runs one non-blocking step of the member
//! (membership upkeep, heartbeat, a round-robin read of the partitions it holds, exactly what
//! [`Member::poll`] does with a zero timeout); when it finds nothing it waits, like the blocking
//! poll, on the `HEAD` notify word of every partition it holds and on the group's epoch word
//! (moved by every join, leave and partition release), through the process-wide wake helper
//! of [`crate::aio`], so a record in any held partition or a rebalance wakes it. It also wakes
//! on a tokio timer every heartbeat interval (the smaller of
//! [`GroupOptions::liveness_check`] and a quarter of the session timeout), so an idle member
//! keeps its heartbeat moving, notices members that died, and keeps its partitions.
//!
//! Registration follows the blocking waits' protocol (`log::Sleepers`): raise each held
//! partition's `waiters` count (which fences), re-check every reader, and only then hand the
//! words and the values read to the helper; a record published after the re-check finds the
//! registration and wakes the word. The counts are lowered when the wait ends or is dropped.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use super::wake::{wait_words, Scope, WordWait};
use crate::bus::Bus;
use crate::group::{Delivery, GroupError, GroupOptions, Member, MemberStats};
#[cfg(doc)]
use crate::log::TailWait;
use crate::log::{LogError, Record, Sleepers};

/// How long a wait lasts when a held partition has no writable `HEAD` page to register on
/// (no appender has opened it yet): the member then re-checks it this often.
const NO_HEAD_RECHECK: Duration = Duration::from_millis(1);

/// Passes of one poll before it yields to the scheduler (each pass either returns, sleeps, or
/// found its wait ended).
const PASSES: usize = 4;

fn lock(member: &Mutex<Option<Member>>) -> MutexGuard<'_, Option<Member>> {
    // A commit that panicked on the blocking pool leaves the member as it was.
    member.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A consumer-group [`Member`] for async code: [`AsyncMember::poll`],
/// [`AsyncMember::poll_with`] (zero copy), a [`Stream`] of [`Delivery`]s,
/// [`AsyncMember::commit`], [`AsyncMember::commit_offsets`] and [`AsyncMember::leave`].
///
/// Waiting costs no thread: an idle member is a registration with the wake helper plus a
/// tokio timer at the heartbeat interval. The runtime needs its time driver
/// (`enable_time` or `enable_all`). The member's [`TailWait`] does not apply here: an async
/// member never spins, it sleeps as soon as it finds nothing.
///
/// Which calls block: a poll step runs inline on the task (a few microseconds: heartbeat,
/// reads from the mapped logs; when membership changes it reads the group's small files and
/// may wait up to 5 ms for a partition lock its previous owner is releasing). Commits and
/// leaving write (and with [`GroupOptions::sync_commits`], sync) files, so they run on the
/// runtime's blocking pool (`spawn_blocking`); so does [`AsyncMember::join`].
///
/// Every future is cancellation safe: a poll dropped while waiting took nothing (the records
/// it returns are read in the same step that returns them), and its registrations are
/// removed. A commit or leave dropped before it completes still completes on the blocking
/// pool (a commit is idempotent; the next poll waits for it).
///
/// # Examples
/// ```
/// use futures_util::StreamExt;
/// use shoal::aio::AsyncMember;
/// use shoal::bus::Bus;
/// use shoal::group::GroupOptions;
/// use shoal::log::LogOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let bus = Bus::open(dir.path())?;
/// let mut producer = bus.topic_or_create("orders", Some(2))?.producer(LogOptions::default())?;
/// for key in 0..10u64 {
///     producer.send(key, b"order")?;
/// }
/// let mut member = AsyncMember::join(&bus, "billing", "orders", GroupOptions::default()).await?;
/// let mut seen = 0;
/// while seen < 10 {
///     let delivery = member.next().await.expect("a member's stream never ends")?;
///     assert_eq!(delivery.record.payload(), b"order");
///     seen += 1;
/// }
/// member.commit().await?;
/// member.leave().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncMember {
    /// Shared with commits running on the blocking pool; `None` only inside `leave`.
    member: Arc<Mutex<Option<Member>>>,
    id: String,
    /// The pending wait on the held partitions' `HEAD` words and the epoch word.
    sleep: Option<WordWait>,
    /// The heartbeat timer (or the re-check of a partition without a `HEAD` page).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The pending wait's registration as a sleeper on the held partitions' `HEAD` pages.
    sleepers: Sleepers,
    /// The stream's one-record buffer, reused.
    one: Vec<Delivery>,
}

impl AsyncMember {
    /// Joins `group` on `topic` (as [`Member::join`], on the runtime's blocking pool: joining
    /// reads and writes the group's files and may wait for other members' sweeps).
    ///
    /// # Errors
    /// As [`Member::join`].
    pub async fn join(bus: &Bus, group: &str, topic: &str, opts: GroupOptions) -> Result<AsyncMember, GroupError> {
        let (bus, group, topic) = (bus.clone(), group.to_string(), topic.to_string());
        let join = move || Member::join(&bus, &group, &topic, opts);
        let member = match tokio::runtime::Handle::try_current() {
            Ok(handle) => match handle.spawn_blocking(join).await {
                Ok(out) => out?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(not_run("join", "group member", e)),
            },
            Err(_) => join()?,
        };
        Ok(AsyncMember::new(member))
    }

    /// Wraps a member joined by the blocking API (with [`Member::join_with`] for a
    /// rebalance listener).
    pub fn new(member: Member) -> AsyncMember {
        let id = member.id().to_string();
        AsyncMember {
            member: Arc::new(Mutex::new(Some(member))),
            id,
            sleep: None,
            timer: None,
            sleepers: Sleepers::default(),
            one: Vec::with_capacity(1),
        }
    }

    /// This member's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The partitions this member holds now.
    pub fn assigned(&self) -> Vec<u32> {
        lock(&self.member).as_ref().map(Member::assigned).unwrap_or_default()
    }

    /// This member's counters.
    pub fn stats(&self) -> MemberStats {
        lock(&self.member).as_ref().map(Member::stats).unwrap_or_default()
    }

    /// Up to `max` records of the partitions this member holds, taken round-robin, as
    /// [`Member::poll`]; waits (without a thread) until there is at least one. Membership
    /// changes take effect here, as in the blocking poll.
    ///
    /// Cancellation safe: dropping the future takes no record.
    ///
    /// # Errors
    /// As [`Member::poll`].
    pub async fn poll(&mut self, max: usize) -> Result<Vec<Delivery>, GroupError> {
        let mut out = Vec::new();
        let read = EndsWait(self);
        std::future::poll_fn(|cx| {
            read.0.poll_step(cx, max == 0, |member| member.poll_into(&mut out, max, Duration::ZERO))
        })
        .await?;
        Ok(out)
    }

    /// [`AsyncMember::poll`] with zero copies: calls `each` with up to `max` records, each
    /// borrowed in place from the mapped log for the length of the call (as
    /// [`Member::poll_with`]), and returns how many, once there is at least one.
    ///
    /// Cancellation safe: `each` runs only in the poll that completes the future.
    ///
    /// # Errors
    /// As [`Member::poll`].
    pub async fn poll_with<F>(&mut self, max: usize, mut each: F) -> Result<usize, GroupError>
    where
        F: FnMut(u32, Record<'_>),
    {
        let read = EndsWait(self);
        std::future::poll_fn(|cx| {
            read.0.poll_step(cx, max == 0, |member| member.poll_with(max, Duration::ZERO, &mut each))
        })
        .await
    }

    /// Commits every record returned so far, for every partition held ([`Member::commit`]),
    /// on the runtime's blocking pool.
    ///
    /// # Errors
    /// As [`Member::commit`].
    pub async fn commit(&mut self) -> Result<(), GroupError> {
        self.blocking("commit", Member::commit).await
    }

    /// Commits chosen offsets ([`Member::commit_offsets`]: for each `(partition, offset)`,
    /// the next record the group reads there), on the runtime's blocking pool.
    ///
    /// # Errors
    /// As [`Member::commit_offsets`].
    pub async fn commit_offsets(&mut self, offsets: &[(u32, u64)]) -> Result<(), GroupError> {
        let offsets = offsets.to_vec();
        self.blocking("commit", move |member| member.commit_offsets(&offsets)).await
    }

    /// Leaves gracefully ([`Member::leave`]: hands every partition over, committing every
    /// record returned), on the runtime's blocking pool.
    ///
    /// # Errors
    /// As [`Member::leave`].
    pub async fn leave(mut self) -> Result<(), GroupError> {
        self.cancel_wait();
        let shared = self.member.clone();
        let id = self.id.clone();
        let leave = move || match lock(&shared).take() {
            Some(member) => member.leave(),
            None => Ok(()),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => match handle.spawn_blocking(leave).await {
                Ok(out) => out,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(not_run("leave", &id, e)),
            },
            Err(_) => leave(),
        }
    }

    /// Runs `f` on the member on the runtime's blocking pool (here when there is no
    /// runtime), after ending any pending wait (its partitions may change).
    async fn blocking<T: Send + 'static>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Member) -> Result<T, GroupError> + Send + 'static,
    ) -> Result<T, GroupError> {
        self.cancel_wait();
        let shared = self.member.clone();
        let run = move || match lock(&shared).as_mut() {
            Some(member) => f(member),
            None => Err(not_run(what, "group member", "it has left")),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => match handle.spawn_blocking(run).await {
                Ok(out) => out,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(not_run(what, &self.id, e)),
            },
            Err(_) => run(),
        }
    }

    /// One poll of a read: ends a finished wait, runs a step (`step`), and when it read
    /// nothing (and `once` is false) registers a wait and returns `Pending`.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        once: bool,
        mut step: impl FnMut(&mut Member) -> Result<usize, GroupError>,
    ) -> Poll<Result<usize, GroupError>> {
        // Bounded: each pass returns, or registers a wait and polls it once more.
        for _ in 0..PASSES {
            if let Some(sleep) = self.sleep.as_mut() {
                let woken = Pin::new(sleep).poll(cx).is_ready();
                let due = self.timer.as_mut().is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if !woken && !due {
                    return Poll::Pending;
                }
            }
            self.cancel_wait();
            let shared = self.member.clone();
            let mut guard = lock(&shared);
            let Some(member) = guard.as_mut() else {
                return Poll::Ready(Err(not_run("poll", &self.id, "it has left")));
            };
            match step(member) {
                Ok(0) if !once => {}
                out => return Poll::Ready(out),
            }
            match self.register(member) {
                Ok(true) => {}
                // A record arrived (or the epoch moved) while registering: step again.
                Ok(false) => self.cancel_wait(),
                Err(e) => {
                    self.cancel_wait();
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
        // A run of wake-ups that found nothing: come back through the scheduler.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Registers a wait on the held partitions and the epoch word (see the module docs);
    /// `Ok(false)` when the re-check found a reader ready, which the caller then cancels.
    fn register(&mut self, member: &mut Member) -> Result<bool, LogError> {
        let (epoch, epoch_seen, mut readers, nap) = member.wait_set();
        self.sleepers.register(readers.iter_mut().map(|(_, reader)| &mut **reader));
        match self.sleepers.recheck(readers.iter_mut().map(|(_, reader)| &mut **reader)) {
            Ok(false) => {}
            // Ready, or retention removed what a reader was to read next: the next step reads
            // (or moves the reader on to the first record held, as `Member::poll` does).
            Ok(true) | Err(LogError::OffsetGone { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut words = Vec::with_capacity(self.sleepers.words().len() + 1);
        words.push((epoch, epoch_seen, Scope::Shared));
        words.extend(self.sleepers.words().map(|(word, seen)| (word, seen, Scope::Shared)));
        self.sleep = Some(wait_words(&words));
        let wait = if self.sleepers.skipped() == 0 { nap } else { nap.min(NO_HEAD_RECHECK) };
        self.timer = Some(Box::pin(tokio::time::sleep(wait)));
        Ok(true)
    }

    /// Ends a pending wait: drops its registration and timer and lowers the `waiters` count
    /// of each partition it raised (on the pages the registration holds: the member's lock
    /// is not needed).
    fn cancel_wait(&mut self) {
        self.sleep = None;
        self.timer = None;
        self.sleepers.finish();
    }
}

/// Held by a read's future: when the future is dropped mid-wait, the wait ends with it, so
/// no sleeper stays registered (appenders would pay a futex wake per publish until the
/// member's next read).
struct EndsWait<'a>(&'a mut AsyncMember);

impl Drop for EndsWait<'_> {
    fn drop(&mut self) {
        self.0.cancel_wait();
    }
}

impl From<Member> for AsyncMember {
    fn from(member: Member) -> AsyncMember {
        AsyncMember::new(member)
    }
}

impl Drop for AsyncMember {
    fn drop(&mut self) {
        self.cancel_wait();
    }
}

/// The records of the partitions this member holds, one at a time, as they arrive; never
/// ends. Each record is returned by its own poll step, so every record the stream yielded
/// counts as returned (for [`AsyncMember::commit`]) and none that it did not. An error is
/// yielded as an item; the stream goes on after it.
///
/// Cancellation safe: a `next()` dropped while waiting took no record.
impl Stream for AsyncMember {
    type Item = Result<Delivery, GroupError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut one = std::mem::take(&mut this.one);
        let out = this.poll_step(cx, false, |member| member.poll_into(&mut one, 1, Duration::ZERO));
        let item = match out {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(_)) => match one.pop() {
                Some(delivery) => Poll::Ready(Some(Ok(delivery))),
                None => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
        };
        this.one = one;
        item
    }
}

/// The error of a blocking-pool call that did not run (the runtime shut down first) or of a
/// call on a member that has left.
fn not_run(what: &'static str, id: &str, why: impl std::fmt::Display) -> GroupError {
    GroupError::Io {
        path: PathBuf::from(format!("group member {id}")),
        op: what,
        source: std::io::Error::other(format!("did not run: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogOptions;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    /// Offset of the `waiters` word in the `HEAD` page (see `src/log/head.rs`).
    const HEAD_WAITERS_AT: u64 = 68;

    /// The sleepers registered in the `HEAD` page of each of the two partitions of `events`.
    fn waiters(bus: &Path) -> [u32; 2] {
        [0, 1].map(|p| {
            let head = bus.join("topics").join("events").join(p.to_string()).join("HEAD");
            let mut word = [0u8; 4];
            let file = std::fs::File::open(&head).expect("open HEAD");
            file.read_exact_at(&mut word, HEAD_WAITERS_AT).expect("read waiters");
            u32::from_ne_bytes(word)
        })
    }

    #[test]
    fn a_waiting_poll_is_a_sleeper_on_every_held_partition_until_it_ends_is_dropped_or_the_member_goes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = Bus::open(dir.path()).expect("open the bus");
        let topic = bus.topic_or_create("events", Some(2)).expect("create the topic");
        let mut producer = topic.producer(LogOptions::default()).expect("open a producer");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async {
            // The heartbeat timer comes after the test: only a record ends the first wait.
            let opts = GroupOptions::default()
                .liveness_check(Duration::from_secs(240))
                .session_timeout(Duration::from_secs(240));
            let mut member = AsyncMember::join(&bus, "g", "events", opts).await.expect("join");
            {
                let mut poll = std::pin::pin!(member.poll(8));
                assert!(futures_util::poll!(poll.as_mut()).is_pending(), "nothing to read yet");
                assert_eq!(waiters(dir.path()), [1, 1], "a waiting poll sleeps on both partitions");
                producer.send_to(1, 7, b"wake").expect("send");
                let got = tokio::time::timeout(Duration::from_secs(30), poll).await.expect("woken").expect("poll");
                assert_eq!(got.len(), 1);
            }
            assert_eq!(waiters(dir.path()), [0, 0], "a poll that returned left sleepers registered");
            {
                let mut poll = std::pin::pin!(member.poll(8));
                assert!(futures_util::poll!(poll.as_mut()).is_pending(), "nothing more to read");
                assert_eq!(waiters(dir.path()), [1, 1]);
            }
            assert_eq!(waiters(dir.path()), [0, 0], "a poll dropped mid-wait left sleepers registered");
            {
                let mut poll = std::pin::pin!(member.poll_with(8, |_, _| {}));
                assert!(futures_util::poll!(poll.as_mut()).is_pending(), "nothing more to read");
                assert_eq!(waiters(dir.path()), [1, 1]);
            }
            assert_eq!(waiters(dir.path()), [0, 0], "a poll_with dropped mid-wait left sleepers registered");
            let mut poll = Box::pin(member.poll(8));
            assert!(futures_util::poll!(poll.as_mut()).is_pending(), "nothing more to read");
            std::mem::forget(poll);
            assert_eq!(waiters(dir.path()), [1, 1], "a forgotten poll keeps its wait");
            drop(member);
            assert_eq!(waiters(dir.path()), [0, 0], "a member dropped mid-wait left sleepers registered");
        });
    }
}
