//! SPSC rings: the only queues on shoal's data path.
//!
//! A ring is an [`rtrb`] single-producer single-consumer ring buffer (a fixed array with a
//! head and a tail index on separate cache lines; no allocation after construction, no
//! compare-and-swap) plus what a pipeline needs around it:
//!
//! - **wait strategies** ([`WaitStrategy`]) for both "full" (the producer waits) and "empty"
//!   (the consumer waits): spin, spin-then-yield, or park, where the waiting thread sleeps
//!   in its [`Waiter`] and the other side wakes it (see [`wait`] for the protocol; the hot
//!   side pays a compiler fence and one relaxed load). Endpoints are `Send`: one may move to
//!   another thread between waits, and the waiter follows the thread that waits now;
//! - **batches in place**: [`Producer::reserve`] and [`Consumer::read`] hand out the ring's
//!   own slots (rtrb chunks), so a batch is written and read without a copy; a
//!   [`Reservation`] is filled safely with [`Reservation::push`] and published with
//!   [`Reservation::commit_written`] (or, unchecked, through its slots and the `unsafe`
//!   [`Reservation::commit`]);
//! - **waiting on both sides, in batches too**: [`Producer::push_slice_wait`] and
//!   [`Producer::wait_writable`] wait for room as [`Consumer::wait_readable`] waits for
//!   values, each with a `stop` condition and [`Closed`] once the other side is gone;
//! - **close and drain**: dropping the producer closes the ring; the consumer still drains
//!   what is in it and then sees [`PopError::Closed`]. Once the consumer is gone,
//!   [`Producer::is_closed`] says so and a push that would wait (the ring full) fails with
//!   [`PushError::Closed`], handing the value back; pushes into free slots are not checked
//!   (that would cost the hot path an atomic load), and their values are dropped with the ring.
//!
//! Fan-in (N producers to 1 consumer) and fan-out (1 to N) are sets of SPSC rings
//! ([`FanIn`], [`FanOut`]) with fair polling: there is no MPMC queue on the data path.
//!
//! ```
//! use shoal::ring::{channel, WaitStrategy};
//! let (mut tx, mut rx) = channel::<u64>(1024, WaitStrategy::Park);
//! let consumer = std::thread::spawn(move || {
//!     let mut sum = 0;
//!     while let Ok(v) = rx.pop_wait() {
//!         sum += v;
//!     }
//!     sum // the producer is gone and the ring drained
//! });
//! for i in 0..10_000 {
//!     tx.push_wait(i).unwrap();
//! }
//! drop(tx);
//! assert_eq!(consumer.join().unwrap(), (0..10_000).sum::<u64>());
//! ```

mod stage;
pub mod wait;

use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::Arc;

pub use wait::{AsymmetricFence, WaitStrategy, Waiter};

/// Why a push failed; the value comes back.
///
/// `Debug` and `Display` do not print the value, so the error works with any `T` (as
/// rtrb's does): `Full(_)`, `Closed(_)`.
#[derive(PartialEq, Eq)]
pub enum PushError<T> {
    /// The ring is full.
    Full(T),
    /// The consumer is gone.
    Closed(T),
}

impl<T> PushError<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(v) | PushError::Closed(v) => v,
        }
    }
}

impl<T> std::fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Full(_) => f.pad("Full(_)"),
            PushError::Closed(_) => f.pad("Closed(_)"),
        }
    }
}

impl<T> std::fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Full(_) => f.pad("the ring is full"),
            PushError::Closed(_) => f.pad("the consumer of the ring is gone"),
        }
    }
}

impl<T> std::error::Error for PushError<T> {}

/// Why a pop failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PopError {
    /// Nothing to pop now.
    Empty,
    /// The producer is gone and the ring is drained.
    Closed,
}

impl std::fmt::Display for PopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PopError::Empty => f.pad("the ring is empty"),
            PopError::Closed => f.pad("the producer of the ring is gone and the ring is drained"),
        }
    }
}

impl std::error::Error for PopError {}

/// The other side of the ring is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the other side of the ring is gone")
    }
}

impl std::error::Error for Closed {}

/// The writing end of a ring.
///
/// ```
/// use shoal::ring::{channel, PushError, WaitStrategy};
///
/// let (mut tx, mut rx) = channel::<u32>(4, WaitStrategy::Park);
/// for v in 0..4 {
///     tx.push(v)?;
/// }
/// assert_eq!(tx.push(4), Err(PushError::Full(4))); // full: the value comes back
/// assert_eq!(rx.pop()?, 0);
/// // A batch written in place: reserve free slots, fill them, commit once.
/// assert_eq!(tx.reserve(8).fill_from_iter([10, 11]), 1); // one slot was free
/// drop(tx); // closes the ring: the consumer drains it, then sees `Closed`
/// let mut rest = Vec::new();
/// while let Ok(v) = rx.pop_wait() {
///     rest.push(v);
/// }
/// assert_eq!(rest, [1, 2, 3, 10]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Producer<T> {
    ring: ManuallyDrop<rtrb::Producer<T>>,
    wait: WaitStrategy,
    /// Where this side sleeps when the ring is full.
    me: Arc<Waiter>,
    /// Where the consumer sleeps when the ring is empty.
    peer: Arc<Waiter>,
    /// Slots written past the tail and not yet published (see [`stage`]).
    stage: stage::Window<T>,
}

/// The reading end of a ring.
///
/// ```
/// use shoal::ring::{channel, PopError, WaitStrategy};
///
/// let (mut tx, mut rx) = channel::<u64>(8, WaitStrategy::Park);
/// assert_eq!(tx.push_slice(&[1, 2, 3, 4, 5]), 5);
/// // A batch read in place: borrowed from the ring's slots, gone from it at commit.
/// let batch = rx.read(3);
/// let (first, wrapped) = batch.as_slices();
/// assert_eq!((first, wrapped), (&[1, 2, 3][..], &[][..]));
/// batch.commit();
/// assert_eq!(rx.slots(), 2);
/// assert_eq!((rx.pop()?, rx.pop()?), (4, 5));
/// assert_eq!(rx.pop(), Err(PopError::Empty));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Consumer<T> {
    ring: ManuallyDrop<rtrb::Consumer<T>>,
    wait: WaitStrategy,
    me: Arc<Waiter>,
    peer: Arc<Waiter>,
}

/// A ring of `capacity` slots with fresh waiters on both sides.
///
/// # Panics
/// When `capacity` is 0, or when `capacity` slots of `T` take more than `isize::MAX` bytes.
/// Slots that cannot be allocated abort the process, as any failed allocation does.
pub fn channel<T>(capacity: usize, wait: WaitStrategy) -> (Producer<T>, Consumer<T>) {
    channel_between(capacity, wait, Arc::new(Waiter::new()), Arc::new(Waiter::new()))
}

/// A ring whose producer sleeps in `producer_waiter` and consumer in `consumer_waiter`:
/// threads with several rings share one waiter across them, so progress on any ring wakes
/// them.
///
/// # Panics
/// As [`channel`].
pub fn channel_between<T>(
    capacity: usize,
    wait: WaitStrategy,
    producer_waiter: Arc<Waiter>,
    consumer_waiter: Arc<Waiter>,
) -> (Producer<T>, Consumer<T>) {
    assert!(capacity > 0, "a ring needs at least one slot");
    assert!(
        capacity.checked_mul(std::mem::size_of::<T>()).is_some_and(|bytes| bytes <= isize::MAX as usize),
        "a ring of {capacity} slots of {} bytes does not fit in memory; use fewer slots",
        std::mem::size_of::<T>()
    );
    let (p, c) = rtrb::RingBuffer::new(capacity);
    // Registering early keeps the first push off the slow path.
    let _ = AsymmetricFence::registered();
    (
        Producer {
            ring: ManuallyDrop::new(p),
            wait,
            me: producer_waiter.clone(),
            peer: consumer_waiter.clone(),
            stage: stage::Window::closed(),
        },
        Consumer { ring: ManuallyDrop::new(c), wait, me: consumer_waiter, peer: producer_waiter },
    )
}

impl<T> Producer<T> {
    /// Pushes one value without waiting.
    ///
    /// # Errors
    /// [`PushError::Full`] or [`PushError::Closed`], with the value.
    #[inline(always)]
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        // Always inline, the refusal out of line: a call per push costs a frame of saved
        // registers, stores that on x86 wait in order behind the tail's store whose cache
        // line the polling consumer keeps taking back (it halved `ring_one` in
        // benches/pipeline.rs).
        self.close_stage();
        match self.ring.push(value) {
            Ok(()) => {
                self.notify();
                Ok(())
            }
            Err(rtrb::PushError::Full(v)) => Err(self.refused(v)),
        }
    }

    /// Why a push found no free slot: the ring is full, or the consumer is gone.
    #[cold]
    #[inline(never)]
    fn refused(&self, value: T) -> PushError<T> {
        if self.ring.is_abandoned() {
            PushError::Closed(value)
        } else {
            PushError::Full(value)
        }
    }

    /// Pushes one value without waking a sleeping consumer; call [`Producer::notify`] after
    /// a run of these (a batch), so the wake-up check is paid once.
    ///
    /// # Errors
    /// As [`Producer::push`].
    #[inline(always)]
    pub fn push_quiet(&mut self, value: T) -> Result<(), PushError<T>> {
        self.close_stage();
        match self.ring.push(value) {
            Ok(()) => Ok(()),
            Err(rtrb::PushError::Full(v)) => Err(self.refused(v)),
        }
    }

    /// Pushes one value, waiting per the ring's strategy while it is full.
    ///
    /// # Errors
    /// [`Closed`] when the consumer is gone (the value is dropped).
    #[inline(always)]
    pub fn push_wait(&mut self, value: T) -> Result<(), Closed> {
        self.push_wait_or_stop(value, || false).map_err(|_| Closed)
    }

    /// [`Producer::push_wait`] that gives up when `stop()` turns true (a pipeline shutting
    /// down); the value comes back in the error.
    ///
    /// With [`WaitStrategy::Park`], a `stop()` that turns true while the thread sleeps is
    /// seen when the consumer next makes room, or after at most [`wait::PARK_TIMEOUT`]. To
    /// stop at once, wake the thread: [`Waiter::wake_unconditionally`] on the producer's
    /// waiter (given to [`channel_between`]).
    ///
    /// # Errors
    /// [`PushError::Closed`] when the consumer is gone, [`PushError::Full`] when stopped.
    #[inline(always)]
    pub fn push_wait_or_stop(&mut self, value: T, stop: impl Fn() -> bool) -> Result<(), PushError<T>> {
        // The fast path stays inline in the caller's loop; waiting is out of line. A call per
        // push slowed the producer enough that the consumer kept catching up, and both sides
        // then bounced the ring's cache lines on every value: `hop_one_at_a_time` in
        // benches/ring.rs measured about 20x fewer values per second than raw rtrb.
        match self.push(value) {
            Ok(()) => Ok(()),
            Err(PushError::Full(v)) => self.push_wait_full(v, stop),
            Err(closed) => Err(closed),
        }
    }

    /// The waiting part of [`Producer::push_wait_or_stop`], entered when the ring is full.
    #[inline(never)]
    fn push_wait_full(&mut self, mut value: T, stop: impl Fn() -> bool) -> Result<(), PushError<T>> {
        loop {
            let ring = &self.ring;
            self.me.wait_until(self.wait, || !ring.is_full() || ring.is_abandoned(), &stop);
            value = match self.push(value) {
                Ok(()) => return Ok(()),
                Err(PushError::Full(v)) if stop() => return Err(PushError::Full(v)),
                Err(PushError::Full(v)) => v,
                Err(closed) => return Err(closed),
            };
        }
    }

    /// Waits per the ring's strategy until `n` slots are free (at most the ring's capacity:
    /// a larger `n` waits for an empty ring) or `stop()`; returns whether they are. The
    /// producer's side of [`Consumer::wait_readable`]; `stop()` is seen as in
    /// [`Producer::push_wait_or_stop`].
    ///
    /// # Errors
    /// [`Closed`] when the consumer is gone.
    ///
    /// ```
    /// use shoal::ring::{channel, Closed, WaitStrategy};
    ///
    /// let (mut tx, rx) = channel::<u8>(2, WaitStrategy::Park);
    /// assert_eq!(tx.wait_writable(2, || false), Ok(true)); // empty: two slots free
    /// tx.push_slice(&[1, 2]);
    /// assert_eq!(tx.wait_writable(1, || true), Ok(false)); // full, and told to stop
    /// drop(rx);
    /// assert_eq!(tx.wait_writable(1, || false), Err(Closed));
    /// ```
    pub fn wait_writable(&mut self, n: usize, stop: impl Fn() -> bool) -> Result<bool, Closed> {
        let want = n.min(self.capacity());
        let ring = &self.ring;
        let ready = self.me.wait_until(self.wait, || ring.slots() >= want || ring.is_abandoned(), stop);
        if ring.is_abandoned() {
            return Err(Closed);
        }
        Ok(ready && ring.slots() >= want)
    }

    /// Pushes all of `values` in order, as many at once as there are free slots, waiting per
    /// the ring's strategy while the ring is full, until all are in or `stop()` turns true
    /// while it waits. Returns how many went in: `values.len()` unless stopped. The batch
    /// counterpart of [`Producer::push_wait_or_stop`] (and `stop()` is seen as there).
    ///
    /// # Errors
    /// [`Closed`] when the consumer is gone (whatever was pushed before is dropped with the
    /// ring).
    ///
    /// ```
    /// use shoal::ring::{channel, WaitStrategy};
    ///
    /// let (mut tx, mut rx) = channel::<u64>(4, WaitStrategy::Park);
    /// let consumer = std::thread::spawn(move || std::iter::from_fn(|| rx.pop_wait().ok()).sum::<u64>());
    /// let values: Vec<u64> = (0..100).collect();
    /// assert_eq!(tx.push_slice_wait(&values, || false)?, 100); // waits while the ring is full
    /// drop(tx);
    /// assert_eq!(consumer.join().unwrap(), 4950);
    /// # Ok::<(), shoal::ring::Closed>(())
    /// ```
    pub fn push_slice_wait(&mut self, values: &[T], stop: impl Fn() -> bool) -> Result<usize, Closed>
    where
        T: Copy,
    {
        let mut pushed = 0;
        // Bounded: each pass pushes at least one value, or returns (stopped or closed).
        while pushed < values.len() {
            let n = self.push_slice(&values[pushed..]);
            pushed += n;
            if n == 0 {
                if self.ring.is_abandoned() {
                    return Err(Closed);
                }
                if !self.wait_writable(1, &stop)? {
                    return Ok(pushed);
                }
            }
        }
        Ok(pushed)
    }

    /// Wakes the consumer if it sleeps (after [`Producer::push_quiet`]s).
    #[inline(always)]
    pub fn notify(&self) {
        if self.wait.parks() {
            self.peer.wake();
        }
    }

    /// Reserves up to `n` free slots to write in place; fewer when fewer are free (possibly
    /// zero). Values become visible to the consumer at [`Reservation::commit`].
    #[inline]
    pub fn reserve(&mut self, n: usize) -> Reservation<'_, T> {
        self.close_stage();
        // The consumer's position is read only when the copy this side keeps of it shows
        // fewer than `n` free slots: a reservation that fits costs no load of the consumer's
        // cache line (loading it on every call made a one-event-per-call pipeline source
        // wait for that line on every event).
        let n = if self.ring.cached_slots() >= n { n } else { n.min(self.ring.slots()) };
        // `n` free slots exist (we are the only producer, and the cached position or the
        // one just loaded shows them), so this cannot fail.
        let chunk = self.ring.write_chunk_uninit(n).ok();
        Reservation { chunk, written: 0, peer: &self.peer, parks: self.wait.parks() }
    }

    /// Pushes as much of `values` as fits, without waiting; returns how many went in.
    #[inline]
    pub fn push_slice(&mut self, values: &[T]) -> usize
    where
        T: Copy,
    {
        let mut r = self.reserve(values.len());
        let n = r.len();
        let (a, b) = r.slots();
        let split = a.len();
        for (slot, v) in a.iter_mut().zip(values) {
            slot.write(*v);
        }
        for (slot, v) in b.iter_mut().zip(&values[split..]) {
            slot.write(*v);
        }
        // SAFETY: the loops above initialised the first `n` slots (a then b, `n` in all).
        unsafe { r.commit(n) };
        n
    }

    /// Free slots now.
    pub fn slots(&self) -> usize {
        self.ring.slots() - self.stage.staged()
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.ring.buffer().capacity()
    }

    /// True when the consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.ring.is_abandoned()
    }

    /// Closes the ring: the consumer drains what is in it, then sees [`PopError::Closed`].
    pub fn close(self) {}
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // Staged values are published: the consumer drains them, or the ring drops them.
        self.close_stage();
        // SAFETY: dropped exactly once, here, and never used again.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        // The ring is marked abandoned now: a consumer woken here sees it.
        self.peer.wake_unconditionally();
    }
}

/// Slots reserved in a ring, written in place, then committed.
///
/// Two ways to fill them:
/// - **safe, counted**: [`Reservation::push`] writes the next slot and counts it;
///   [`Reservation::commit_written`] publishes exactly the slots pushed (and
///   [`Reservation::fill_from_iter`] does both);
/// - **in place, unchecked**: write through [`Reservation::slots`], then the `unsafe`
///   [`Reservation::commit`] with how many were initialised, for callers that fill slots in
///   any order or from raw memory at no cost per slot.
///
/// Dropping a reservation publishes nothing; values pushed into it are dropped.
///
/// ```
/// use shoal::ring::{channel, WaitStrategy};
///
/// let (mut tx, mut rx) = channel::<String>(8, WaitStrategy::Park);
/// let mut r = tx.reserve(3);
/// r.push("a".to_string()).unwrap();
/// r.push("b".to_string()).unwrap();
/// assert_eq!(r.commit_written(), 2); // the third slot was never written: not published
/// assert_eq!(rx.slots(), 2);
/// assert_eq!(rx.pop().unwrap(), "a");
/// ```
pub struct Reservation<'a, T> {
    chunk: Option<rtrb::chunks::WriteChunkUninit<'a, T>>,
    /// Slots initialised by `push`, from the first: `written <= len()`.
    written: usize,
    peer: &'a Waiter,
    parks: bool,
}

impl<T> Reservation<'_, T> {
    /// Slots reserved.
    #[inline]
    pub fn len(&self) -> usize {
        self.chunk.as_ref().map_or(0, |c| c.len())
    }

    /// True when nothing could be reserved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots written by [`Reservation::push`] so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// The reserved slots not yet written by [`Reservation::push`] (all of them when none
    /// was), in two parts where the ring wraps around.
    #[inline]
    pub fn slots(&mut self) -> (&mut [MaybeUninit<T>], &mut [MaybeUninit<T>]) {
        unwritten(&mut self.chunk, self.written)
    }

    /// Writes `value` into the next reserved slot and counts it.
    ///
    /// # Errors
    /// The value comes back when every reserved slot is written.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let (a, b) = self.slots();
        // The first part may be used up while the wrapped second part is not.
        match a.first_mut().or_else(|| b.first_mut()) {
            Some(slot) => {
                slot.write(value);
                self.written += 1;
                Ok(())
            }
            None => Err(value),
        }
    }

    /// Publishes exactly the slots written by [`Reservation::push`], waking a sleeping
    /// consumer; returns how many.
    #[inline]
    pub fn commit_written(mut self) -> usize {
        let n = self.written;
        self.written = 0;
        if let Some(c) = self.chunk.take() {
            // SAFETY: `push` initialised the first `written` slots (first part, then second),
            // and `slots` never hands them out again, so none was replaced since.
            unsafe { c.commit(n) };
            if n > 0 && self.parks {
                self.peer.wake();
            }
        }
        n
    }

    /// Fills the slots not yet written from an iterator and commits every written slot;
    /// returns how many were written by this call.
    ///
    /// When the iterator panics, nothing is published: the values written before (by this
    /// call and by [`Reservation::push`]) are dropped with the reservation.
    #[inline]
    pub fn fill_from_iter(mut self, iter: impl IntoIterator<Item = T>) -> usize {
        let mut iter = iter.into_iter();
        let start = self.written;
        let (a, b) = unwritten(&mut self.chunk, start);
        let written = &mut self.written;
        // Bounded by the reservation's length; takes no value beyond it from `iter`.
        for slot in a.iter_mut().chain(b) {
            let Some(v) = iter.next() else { break };
            slot.write(v);
            // Counted at once: if `iter` panics later, the reservation's drop drops it.
            *written += 1;
        }
        let n = self.written - start;
        self.commit_written();
        n
    }

    /// Makes the first `n` reserved slots visible to the consumer.
    ///
    /// # Safety
    /// The first `n` slots (the first part, then the second) must have been initialised,
    /// by [`Reservation::push`] or through [`Reservation::slots`]. Pushed values beyond `n`
    /// are forgotten (never dropped).
    #[inline]
    pub unsafe fn commit(mut self, n: usize) {
        self.written = 0;
        if let Some(c) = self.chunk.take() {
            // SAFETY: the caller initialised the first `n` slots.
            unsafe { c.commit(n) };
            if n > 0 && self.parks {
                self.peer.wake();
            }
        }
    }
}

/// The slots of a reservation's chunk past the first `written`, in two parts where the ring
/// wraps around.
#[inline]
fn unwritten<'c, T>(
    chunk: &'c mut Option<rtrb::chunks::WriteChunkUninit<'_, T>>,
    written: usize,
) -> (&'c mut [MaybeUninit<T>], &'c mut [MaybeUninit<T>]) {
    match chunk {
        Some(c) => {
            let (a, b) = c.as_mut_slices();
            if written <= a.len() {
                (&mut a[written..], b)
            } else {
                (&mut b[written - a.len()..], &mut [])
            }
        }
        None => (&mut [], &mut []),
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        let written = self.written;
        if written == 0 {
            return;
        }
        if let Some(c) = &mut self.chunk {
            let (a, b) = c.as_mut_slices();
            let in_a = written.min(a.len());
            for slot in a[..in_a].iter_mut().chain(b[..written - in_a].iter_mut()) {
                // SAFETY: the first `written` slots were initialised by `push` and are not
                // published (the chunk was not committed), so each is dropped here once.
                unsafe { slot.assume_init_drop() };
            }
        }
    }
}

/// Whether the producer is gone and every value it pushed has been read. Abandonment is
/// looked at first, then emptiness: a value pushed just before the producer left must still
/// be read. The abandonment check is a relaxed load of the buffer's reference count; the
/// acquire fence after it pairs with the release decrement of the producer's drop, so the
/// producer's last position store (made before that drop) is visible to the emptiness check.
fn drained<T>(ring: &rtrb::Consumer<T>) -> bool {
    if !ring.is_abandoned() {
        return false;
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    ring.is_empty()
}

impl<T> Consumer<T> {
    /// Pops one value without waiting.
    ///
    /// # Errors
    /// [`PopError::Empty`], or [`PopError::Closed`] when the producer is gone and the ring
    /// is drained.
    #[inline]
    pub fn pop(&mut self) -> Result<T, PopError> {
        match self.ring.pop() {
            Ok(v) => {
                if self.wait.parks() {
                    self.peer.wake();
                }
                Ok(v)
            }
            Err(rtrb::PopError::Empty) => {
                // Check abandonment, then emptiness again: a value pushed just before the
                // producer left must still be drained.
                if drained(&self.ring) {
                    Err(PopError::Closed)
                } else {
                    Err(PopError::Empty)
                }
            }
        }
    }

    /// Pops one value, waiting per the ring's strategy while it is empty.
    ///
    /// # Errors
    /// [`Closed`] when the producer is gone and the ring is drained.
    #[inline]
    pub fn pop_wait(&mut self) -> Result<T, Closed> {
        loop {
            match self.pop() {
                Ok(v) => return Ok(v),
                Err(PopError::Closed) => return Err(Closed),
                Err(PopError::Empty) => {
                    let ring = &self.ring;
                    self.me.wait_until(self.wait, || !ring.is_empty() || ring.is_abandoned(), || false);
                }
            }
        }
    }

    /// Waits per the ring's strategy until a value is readable or `stop()`; returns whether
    /// one is.
    ///
    /// With [`WaitStrategy::Park`], a `stop()` that turns true while the thread sleeps is
    /// seen at the producer's next push, or after at most [`wait::PARK_TIMEOUT`]. To stop at
    /// once, wake the thread: [`Waiter::wake_unconditionally`] on the consumer's waiter
    /// (given to [`channel_between`]).
    ///
    /// # Errors
    /// [`Closed`] when the producer is gone and the ring is drained.
    pub fn wait_readable(&mut self, stop: impl Fn() -> bool) -> Result<bool, Closed> {
        let ring = &self.ring;
        let ready = self.me.wait_until(self.wait, || !ring.is_empty() || ring.is_abandoned(), stop);
        if drained(ring) {
            return Err(Closed);
        }
        Ok(ready && !ring.is_empty())
    }

    /// Borrows up to `max` readable values in place (possibly none); they leave the ring at
    /// [`Batch::commit`] (or when the batch drops).
    #[inline]
    pub fn read(&mut self, max: usize) -> Batch<'_, T> {
        let n = max.min(self.ring.slots());
        let chunk = self.ring.read_chunk(n).ok();
        Batch { chunk, peer: &self.peer, parks: self.wait.parks() }
    }

    /// Values readable now.
    pub fn slots(&self) -> usize {
        self.ring.slots()
    }

    /// True when nothing is readable now.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// True when the producer is gone and the ring is drained.
    pub fn is_closed(&self) -> bool {
        drained(&self.ring)
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.ring.buffer().capacity()
    }

    /// For an async consumer (`aio`): where it sleeps, and whether the producer wakes it
    /// (only under [`WaitStrategy::Park`]).
    #[cfg(feature = "tokio")]
    pub(crate) fn waiter(&self) -> (&Waiter, bool) {
        (&self.me, self.wait.parks())
    }

    /// For an async consumer's re-check: a value is readable, or the producer is gone.
    #[cfg(feature = "tokio")]
    pub(crate) fn readable_or_abandoned(&self) -> bool {
        !self.ring.is_empty() || self.ring.is_abandoned()
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here, and never used again.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        self.peer.wake_unconditionally();
    }
}

/// Values borrowed in place from a ring; they leave it when the batch is committed or
/// dropped.
pub struct Batch<'a, T> {
    chunk: Option<rtrb::chunks::ReadChunk<'a, T>>,
    peer: &'a Waiter,
    parks: bool,
}

impl<T> Batch<'_, T> {
    /// Values in the batch.
    pub fn len(&self) -> usize {
        self.chunk.as_ref().map_or(0, |c| c.len())
    }

    /// True when the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values, in two parts where the ring wraps around.
    pub fn as_slices(&self) -> (&[T], &[T]) {
        match &self.chunk {
            Some(c) => c.as_slices(),
            None => (&[], &[]),
        }
    }

    /// Removes the values from the ring (dropping them) and wakes a waiting producer.
    pub fn commit(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(c) = self.chunk.take() {
            let n = c.len();
            c.commit_all();
            if n > 0 && self.parks {
                self.peer.wake();
            }
        }
    }
}

impl<T> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// N producers into one consumer: N SPSC rings polled fairly (round robin, starting after
/// the ring served last), with one waiter for the consumer.
#[derive(Debug)]
pub struct FanIn<T> {
    inputs: Vec<Consumer<T>>,
    next: usize,
    me: Arc<Waiter>,
    wait: WaitStrategy,
}

/// Builds `n` rings feeding one [`FanIn`].
///
/// # Panics
/// When `capacity` is 0.
pub fn fan_in<T>(n: usize, capacity: usize, wait: WaitStrategy) -> (Vec<Producer<T>>, FanIn<T>) {
    let me = Arc::new(Waiter::new());
    let (producers, inputs) =
        (0..n).map(|_| channel_between(capacity, wait, Arc::new(Waiter::new()), me.clone())).unzip();
    (producers, FanIn { inputs, next: 0, me, wait })
}

impl<T> FanIn<T> {
    /// Wraps consumers that all sleep in `waiter` (built with [`channel_between`]).
    pub fn from_consumers(inputs: Vec<Consumer<T>>, waiter: Arc<Waiter>, wait: WaitStrategy) -> FanIn<T> {
        FanIn { inputs, next: 0, me: waiter, wait }
    }

    /// Pops from the next ring that has a value, without waiting.
    ///
    /// # Errors
    /// [`PopError::Empty`], or [`PopError::Closed`] once every producer is gone and every
    /// ring drained.
    pub fn pop(&mut self) -> Result<T, PopError> {
        let n = self.inputs.len();
        let mut closed = 0;
        for i in 0..n {
            let at = (self.next + i) % n;
            match self.inputs[at].pop() {
                Ok(v) => {
                    self.next = (at + 1) % n;
                    return Ok(v);
                }
                Err(PopError::Closed) => closed += 1,
                Err(PopError::Empty) => {}
            }
        }
        if closed == n {
            Err(PopError::Closed)
        } else {
            Err(PopError::Empty)
        }
    }

    /// Pops from the next ring that has a value, waiting per the strategy while all are
    /// empty.
    ///
    /// # Errors
    /// [`Closed`] once every producer is gone and every ring drained.
    pub fn pop_wait(&mut self) -> Result<T, Closed> {
        loop {
            match self.pop() {
                Ok(v) => return Ok(v),
                Err(PopError::Closed) => return Err(Closed),
                Err(PopError::Empty) => {
                    let inputs = &self.inputs;
                    self.me.wait_until(
                        self.wait,
                        || inputs.iter().any(|c| !c.ring.is_empty() || c.ring.is_abandoned()),
                        || false,
                    );
                }
            }
        }
    }

    /// The rings, for batch reads.
    pub fn inputs(&mut self) -> &mut [Consumer<T>] {
        &mut self.inputs
    }
}

/// One producer into N consumers: N SPSC rings, one per consumer; the producer picks the
/// ring (by key, round robin) or sends to all (broadcast).
///
/// ```
/// use shoal::ring::{fan_in, fan_out, WaitStrategy};
///
/// let (mut out, mut consumers) = fan_out::<u64>(2, 16, WaitStrategy::Park);
/// for v in 0..6 {
///     out.push_keyed(v, v)?; // consumer `key % 2`
/// }
/// out.broadcast(100)?; // one copy each
/// drop(out);
/// let odd: Vec<u64> = std::iter::from_fn(|| consumers[1].pop_wait().ok()).collect();
/// assert_eq!(odd, [1, 3, 5, 100]);
///
/// // The other way round: N producers into one consumer, polled fairly.
/// let (mut producers, mut merged) = fan_in::<u64>(3, 16, WaitStrategy::Park);
/// for (i, p) in producers.iter_mut().enumerate() {
///     p.push_wait(i as u64)?;
/// }
/// drop(producers);
/// let mut all: Vec<u64> = std::iter::from_fn(|| merged.pop_wait().ok()).collect();
/// all.sort();
/// assert_eq!(all, [0, 1, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FanOut<T> {
    outputs: Vec<Producer<T>>,
    next: usize,
}

/// Builds one [`FanOut`] feeding `n` consumers.
///
/// # Panics
/// When `capacity` is 0.
pub fn fan_out<T>(n: usize, capacity: usize, wait: WaitStrategy) -> (FanOut<T>, Vec<Consumer<T>>) {
    let me = Arc::new(Waiter::new());
    let (outputs, consumers) =
        (0..n).map(|_| channel_between(capacity, wait, me.clone(), Arc::new(Waiter::new()))).unzip();
    (FanOut { outputs, next: 0 }, consumers)
}

impl<T> FanOut<T> {
    /// Wraps producers that all sleep in one waiter (built with [`channel_between`]).
    pub fn from_producers(outputs: Vec<Producer<T>>) -> FanOut<T> {
        FanOut { outputs, next: 0 }
    }

    /// Consumers fed.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    /// True when there is no consumer.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Sends to consumer `key % n` (per-key order), waiting while its ring is full.
    ///
    /// # Errors
    /// [`Closed`] when that consumer is gone.
    pub fn push_keyed(&mut self, key: u64, value: T) -> Result<(), Closed> {
        let n = self.outputs.len() as u64;
        if n == 0 {
            return Err(Closed);
        }
        self.outputs[(key % n) as usize].push_wait(value)
    }

    /// Sends to the consumers in turn, waiting while the chosen ring is full.
    ///
    /// # Errors
    /// [`Closed`] when that consumer is gone.
    pub fn push_round_robin(&mut self, value: T) -> Result<(), Closed> {
        if self.outputs.is_empty() {
            return Err(Closed);
        }
        let at = self.next;
        self.next = (at + 1) % self.outputs.len();
        self.outputs[at].push_wait(value)
    }

    /// Sends a copy to every consumer.
    ///
    /// # Errors
    /// [`Closed`] when a consumer is gone (the others still get theirs).
    pub fn broadcast(&mut self, value: T) -> Result<(), Closed>
    where
        T: Clone,
    {
        let mut result = Ok(());
        for out in &mut self.outputs {
            if out.push_wait(value.clone()).is_err() {
                result = Err(Closed);
            }
        }
        result
    }

    /// The rings.
    pub fn outputs(&mut self) -> &mut [Producer<T>] {
        &mut self.outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn close_and_drain() {
        let (mut tx, mut rx) = channel::<u32>(4, WaitStrategy::Park);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        drop(tx);
        assert_eq!(rx.pop(), Ok(1));
        assert_eq!(rx.pop_wait(), Ok(2));
        assert_eq!(rx.pop(), Err(PopError::Closed));
        let (mut tx, rx) = channel::<u32>(1, WaitStrategy::SpinThenYield);
        tx.push(1).unwrap();
        assert_eq!(tx.push(2), Err(PushError::Full(2)));
        drop(rx);
        assert_eq!(tx.push(3), Err(PushError::Closed(3)));
        assert!(tx.is_closed());
    }

    #[test]
    #[should_panic(expected = "does not fit in memory")]
    fn a_ring_larger_than_memory_is_refused_with_a_message() {
        let _ = channel::<u64>(usize::MAX, WaitStrategy::Park);
    }

    #[test]
    fn batches_in_place_match_a_model() {
        let (mut tx, mut rx) = channel::<u64>(7, WaitStrategy::BusySpin);
        let mut model = VecDeque::new();
        let mut next = 0u64;
        for round in 0..200u64 {
            let want = (round * 7919) % 9;
            let values: Vec<u64> = (next..next + want).collect();
            let pushed = tx.push_slice(&values);
            assert_eq!(pushed, want.min(7 - model.len() as u64) as usize);
            model.extend(&values[..pushed]);
            next += pushed as u64;
            let take = (round * 31) % 6;
            let batch = rx.read(take as usize);
            let (a, b) = batch.as_slices();
            let got: Vec<u64> = a.iter().chain(b).copied().collect();
            let expect: Vec<u64> = model.drain(..got.len()).collect();
            assert_eq!(got, expect);
            assert_eq!(got.len(), (take as usize).min(expect.len().max(got.len())));
            batch.commit();
        }
    }

    #[test]
    fn counted_reservations_publish_and_drop_exactly_what_was_pushed() {
        // Strings: Miri sees a double drop, a leak, or a read of an uninitialised slot.
        let (mut tx, mut rx) = channel::<String>(4, WaitStrategy::Park);
        for round in 0..6 {
            // The reservation wraps around from round 1 on (three slots used per round).
            let mut r = tx.reserve(3);
            assert_eq!(r.len(), 3);
            for i in 0..3 {
                r.push(format!("{round}-{i}")).unwrap();
            }
            assert_eq!(r.push("spare".to_string()), Err("spare".to_string()));
            assert_eq!(r.slots().0.len() + r.slots().1.len(), 0);
            if round % 2 == 0 {
                assert_eq!(r.commit_written(), 3);
                let got: Vec<String> = std::iter::from_fn(|| rx.pop().ok()).collect();
                assert_eq!(got, [0, 1, 2].map(|i| format!("{round}-{i}")));
            } else {
                drop(r); // drops the three pushed values, publishes nothing
                assert_eq!(rx.pop(), Err(PopError::Empty));
            }
        }
        let mut r = tx.reserve(4);
        r.push("x".to_string()).unwrap();
        assert_eq!(r.fill_from_iter(["y".to_string(), "z".to_string()]), 2);
        // Left in the ring: dropped with it.
        let mut r = tx.reserve(4);
        r.push("w".to_string()).unwrap();
        assert_eq!(r.commit_written(), 1);
        assert_eq!(rx.pop().as_deref(), Ok("x"));
    }

    #[test]
    fn a_panicking_iterator_publishes_nothing_and_its_values_are_dropped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut tx, mut rx) = channel::<Counted>(8, WaitStrategy::Park);
        // Wrapped: the reservation's two parts are both written before the panic.
        for _ in 0..6 {
            tx.push(Counted(drops.clone())).unwrap();
        }
        for _ in 0..6 {
            drop(rx.pop().unwrap());
        }
        drops.store(0, Ordering::SeqCst);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut r = tx.reserve(5);
            r.push(Counted(drops.clone())).unwrap_or_else(|_| panic!("room"));
            let mut given = 0;
            r.fill_from_iter(std::iter::from_fn(|| {
                given += 1;
                if given == 4 {
                    panic!("the iterator fails");
                }
                Some(Counted(drops.clone()))
            }))
        }));
        assert!(result.is_err());
        assert_eq!(drops.load(Ordering::SeqCst), 4, "one pushed and three from the iterator, each dropped once");
        assert!(matches!(rx.pop(), Err(PopError::Empty)), "nothing published");
        // The ring goes on: the slots are free again.
        assert_eq!(tx.reserve(8).fill_from_iter((0..8).map(|_| Counted(drops.clone()))), 8);
        drop((tx, rx));
        assert_eq!(drops.load(Ordering::SeqCst), 12);
    }

    #[test]
    fn reservations_see_slots_freed_after_the_cached_position() {
        // A reservation that fits the producer's cached copy of the consumer's position does
        // not load the position; one that does not fit must load it and see what was freed.
        let (mut tx, mut rx) = channel::<u64>(8, WaitStrategy::BusySpin);
        for round in 0..5u64 {
            assert_eq!(tx.push_slice(&[round; 8]), 8, "round {round}: an empty ring takes 8");
            assert_eq!(tx.reserve(1).len(), 0, "full");
            let batch = rx.read(5);
            assert_eq!(batch.len(), 5);
            batch.commit();
            assert_eq!(tx.reserve(3).len(), 3, "three of the five freed slots");
            assert_eq!(tx.reserve(8).len(), 5, "all five, not more");
            assert_eq!(tx.push_slice(&[round; 2]), 2);
            let got: Vec<u64> = std::iter::from_fn(|| rx.pop().ok()).collect();
            assert_eq!(got, [round; 5]);
        }
    }

    #[test]
    fn push_slice_wait_fills_a_ring_drained_by_another_thread() {
        let (mut tx, mut rx) = channel::<u64>(3, WaitStrategy::Park);
        let n = if cfg!(miri) { 40 } else { 10_000 };
        let consumer = std::thread::spawn(move || std::iter::from_fn(|| rx.pop_wait().ok()).collect::<Vec<u64>>());
        let values: Vec<u64> = (0..n).collect();
        assert_eq!(tx.push_slice_wait(&values, || false), Ok(n as usize));
        drop(tx);
        assert_eq!(consumer.join().unwrap(), values);
    }

    #[test]
    fn parked_threads_are_woken_both_ways() {
        for wait in [WaitStrategy::Park, WaitStrategy::SpinThenYield, WaitStrategy::BusySpin] {
            let (mut tx, mut rx) = channel::<u64>(2, wait);
            // Miri runs the same protocol on fewer values (it interprets every step).
            let (n, consumer_pause, producer_pause) = if cfg!(miri) { (60, 25, 20) } else { (20_000u64, 5000, 7000) };
            let consumer = std::thread::spawn(move || {
                let mut expect = 0;
                while let Ok(v) = rx.pop_wait() {
                    assert_eq!(v, expect);
                    expect += 1;
                    if expect % consumer_pause == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        // producer parks on full
                    }
                }
                expect
            });
            for i in 0..n {
                tx.push_wait(i).unwrap();
                if i % producer_pause == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2)); // consumer parks on empty
                }
            }
            drop(tx);
            assert_eq!(consumer.join().unwrap(), n);
        }
    }

    /// Waits until `waiter`'s flag is up (its thread is about to sleep or sleeps) or
    /// `thread` ended (a failed wait).
    fn until_flag_up<R>(waiter: &Waiter, thread: &std::thread::JoinHandle<R>) {
        while !waiter.flag_up() && !thread.is_finished() {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_consumer_moved_between_parked_waits_is_woken_on_its_new_thread() {
        let (mut tx, mut rx) = channel::<u64>(4, WaitStrategy::Park);
        let waiter = rx.me.clone();
        let rounds = if cfg!(miri) { 4 } else { 200 };
        for round in 0..rounds {
            // Each wait runs on a fresh thread and sleeps (its flag up) before the push.
            let waiting = std::thread::spawn(move || {
                let got = rx.pop_wait();
                (got, rx, std::thread::current().id())
            });
            until_flag_up(&waiter, &waiting);
            tx.push(round).unwrap();
            let (got, back, id) = waiting.join().expect("a wait on a new thread");
            assert_eq!(got, Ok(round));
            assert_eq!(waiter.sleeper_thread(), Some(id), "round {round}: the waiter follows the thread");
            rx = back;
        }
    }

    #[test]
    fn a_producer_moved_between_parked_waits_is_woken_on_its_new_thread() {
        let (mut tx, mut rx) = channel::<u64>(1, WaitStrategy::Park);
        let waiter = tx.me.clone();
        tx.push(0).unwrap();
        let rounds = if cfg!(miri) { 4 } else { 200 };
        for round in 1..=rounds {
            // The ring is full: each push waits on a fresh thread until the pop below.
            let waiting = std::thread::spawn(move || {
                let pushed = tx.push_wait(round);
                (pushed, tx, std::thread::current().id())
            });
            until_flag_up(&waiter, &waiting);
            assert_eq!(rx.pop(), Ok(round - 1));
            let (pushed, back, id) = waiting.join().expect("a wait on a new thread");
            assert_eq!(pushed, Ok(()));
            assert_eq!(waiter.sleeper_thread(), Some(id), "round {round}: the waiter follows the thread");
            tx = back;
        }
    }

    #[test]
    fn both_ends_moved_to_new_threads_every_round_lose_nothing() {
        let (mut tx, mut rx) = channel::<u64>(2, WaitStrategy::Park);
        let (rounds, per_round) = if cfg!(miri) { (3, 6) } else { (100, 200) };
        for round in 0..rounds {
            let first = round * per_round;
            // Neither side waits for the other to sleep: a waker may be about to unpark the
            // thread that waited in the previous round while the new one goes to sleep.
            let consumer = std::thread::spawn(move || {
                for expect in first..first + per_round {
                    assert_eq!(rx.pop_wait(), Ok(expect));
                }
                rx
            });
            let producer = std::thread::spawn(move || {
                for v in first..first + per_round {
                    tx.push_wait(v).unwrap();
                }
                tx
            });
            rx = consumer.join().expect("consumer");
            tx = producer.join().expect("producer");
        }
        assert_eq!(rx.pop(), Err(PopError::Empty));
    }

    #[test]
    fn two_threads_sleeping_on_one_waiter_at_once_is_refused() {
        let waiter = Arc::new(Waiter::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sleeping = {
            let (waiter, stop) = (waiter.clone(), stop.clone());
            std::thread::spawn(move || {
                waiter.wait_until(WaitStrategy::Park, || false, || stop.load(std::sync::atomic::Ordering::SeqCst))
            })
        };
        until_flag_up(&waiter, &sleeping);
        let second = {
            let waiter = waiter.clone();
            std::thread::spawn(move || waiter.wait_until(WaitStrategy::Park, || false, || false))
        };
        let panic = second.join().expect_err("a second thread sleeping on the waiter");
        let message = panic.downcast_ref::<String>().map_or("", String::as_str);
        assert!(message.contains("two threads wait on one Waiter at once"), "{message}");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        waiter.wake_unconditionally();
        assert!(!sleeping.join().expect("the first sleeper"));
        // The refused wait left no trace: the first thread's turn ended, another may sleep.
        assert!(waiter.wait_until(WaitStrategy::Park, || true, || false));
        let mut calls = 0;
        assert!(waiter.wait_until(
            WaitStrategy::Park,
            || {
                calls += 1;
                calls > 30
            },
            || false
        ));
    }

    #[test]
    fn fan_in_is_fair_and_closes_when_all_producers_leave() {
        let (mut producers, mut fan) = fan_in::<(usize, u32)>(3, 64, WaitStrategy::Park);
        for (i, p) in producers.iter_mut().enumerate() {
            for j in 0..10 {
                p.push((i, j)).unwrap();
            }
        }
        let first: Vec<usize> = (0..6).map(|_| fan.pop().unwrap().0).collect();
        assert_eq!(first, vec![0, 1, 2, 0, 1, 2], "round robin across inputs");
        drop(producers);
        let mut rest = 0;
        while fan.pop_wait().is_ok() {
            rest += 1;
        }
        assert_eq!(rest, 24);
    }

    #[test]
    fn fan_out_routes_by_key_round_robin_and_broadcast() {
        let (mut fan, mut consumers) = fan_out::<u64>(3, 64, WaitStrategy::Park);
        for k in 0..9 {
            fan.push_keyed(k, k).unwrap();
        }
        fan.push_round_robin(100).unwrap();
        fan.push_round_robin(101).unwrap();
        fan.broadcast(7).unwrap();
        drop(fan);
        let got: Vec<Vec<u64>> = consumers.iter_mut().map(|c| std::iter::from_fn(|| c.pop().ok()).collect()).collect();
        assert_eq!(got[0], vec![0, 3, 6, 100, 7]);
        assert_eq!(got[1], vec![1, 4, 7, 101, 7]);
        assert_eq!(got[2], vec![2, 5, 8, 7]);
    }
}
