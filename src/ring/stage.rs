//! Staging in the ring itself: values written into free slots past the tail, published
//! later with one store of the tail.
//!
//! A pipeline stage's emitter writes each event straight into the downstream ring's next
//! free slot and publishes the run of them once (when its handler returns, or when the run
//! reaches its bound). Per event that is one slot store and one private pointer store; the
//! tail, whose cache line the polling consumer keeps taking back, is stored once per run.
//! Staging in a separate buffer first, then copying into a reservation, cost four more
//! stores and a copy per event, and on x86 every store waits in order behind the tail's.
//!
//! rtrb has no such deferred publication, so it is built from its chunks: a
//! [`Producer::open_stage`] takes a write chunk of free slots and keeps raw pointers to its
//! contiguous first part without committing it (a `WriteChunkUninit` publishes nothing when
//! dropped). The slots stay free and unseen by the consumer, which reads only up to the
//! tail, and they stay ours because this side is the ring's only producer. Publishing takes
//! a chunk again at the same tail (the same slots) and commits how many were written.
//!
//! The window is the producer's own state: every other write ([`Producer::push`],
//! [`Producer::reserve`], ...) and the producer's drop first publish what is staged and
//! close the window, so values leave in the order they were written and none is lost.

use std::mem::size_of;

use super::Producer;

/// A run of free slots after the tail: `[origin, start)` published, `[start, next)`
/// written, `[next, end)` free.
///
/// The pointers are null while closed. Raw pointers into the ring's buffer, which the
/// producer keeps alive (it holds the buffer through its rtrb half).
#[derive(Debug)]
pub(super) struct Window<T> {
    origin: *mut T,
    start: *mut T,
    next: *mut T,
    end: *mut T,
    /// Values published through earlier windows.
    before: u64,
}

impl<T> Window<T> {
    pub(super) fn closed() -> Window<T> {
        let null = std::ptr::null_mut();
        Window { origin: null, start: null, next: null, end: null, before: 0 }
    }

    /// Values published through windows so far: counted from the pointers, so publishing
    /// stores no counter.
    fn published(&self) -> u64 {
        if self.start == self.origin {
            self.before
        } else {
            // SAFETY: both point into the one contiguous window, `origin <= start`.
            self.before + unsafe { self.start.offset_from(self.origin) as u64 }
        }
    }

    /// Closes the window, keeping its count.
    fn close(&mut self) {
        let before = self.published();
        *self = Window::closed();
        self.before = before;
    }

    /// Values written and not yet published.
    #[inline(always)]
    pub(super) fn staged(&self) -> usize {
        // `size_of::<T>() > 0` whenever a window is open (see `open_stage`).
        if self.next == self.start {
            0
        } else {
            // SAFETY: both point into the one contiguous window, `start <= next`.
            unsafe { self.next.offset_from(self.start) as usize }
        }
    }
}

// SAFETY: the pointers are into the ring's buffer, used only through `&mut Producer`; the
// producer moves between threads with its values exactly as rtrb's `Producer<T: Send>` does.
unsafe impl<T: Send> Send for Window<T> {}

impl<T> Producer<T> {
    /// Writes `value` into the next slot of the open window, unpublished; hands it back
    /// when the window is used up (or none is open): then [`Producer::open_stage`].
    #[inline(always)]
    pub(crate) fn stage(&mut self, value: T) -> Result<(), T> {
        let w = &mut self.stage;
        if w.next == w.end {
            return Err(value);
        }
        // SAFETY: `next < end`: a free slot of the window, which nothing else writes or
        // reads until it is published (module docs).
        unsafe {
            w.next.write(value);
            w.next = w.next.add(1);
        }
        Ok(())
    }

    /// Values staged and not yet published.
    #[inline(always)]
    pub(crate) fn staged(&self) -> usize {
        self.stage.staged()
    }

    /// Values published from stages since the producer was made (not counting other
    /// writes).
    #[inline]
    pub(crate) fn published_staged(&self) -> u64 {
        self.stage.published()
    }

    /// Publishes the staged values (one store of the tail) and returns how many; the window
    /// stays open for more. Wakes nobody: see [`Producer::notify`].
    #[inline]
    pub(crate) fn publish_staged(&mut self) -> usize {
        let n = self.stage.staged();
        if n > 0 {
            self.commit_staged(n);
        }
        n
    }

    #[inline]
    fn commit_staged(&mut self, n: usize) {
        // The window's slots are free and the tail has not moved since it opened (only this
        // side moves it, and every other write closes the window first), so a chunk of `n`
        // at the tail is exactly the staged slots; the copy of the head that showed them
        // free shows them still, so this loads nothing shared.
        match self.ring.write_chunk_uninit(n) {
            Ok(chunk) => {
                // SAFETY: the first `n` slots after the tail are the staged ones, each
                // written once by `stage`.
                unsafe { chunk.commit(n) };
                self.stage.start = self.stage.next;
            }
            Err(_) => unreachable!("{n} staged slots were free when the window opened and the head only moves on"),
        }
    }

    /// Publishes what is staged and opens a window of up to `max` free slots, contiguous in
    /// the ring (so fewer where it wraps around, and fewer when fewer are free; the
    /// consumer's position is loaded only when the cached copy shows fewer than `max`).
    /// Returns the window's size: 0 when the ring is full (or `T` has no size, which never
    /// stages).
    #[inline(never)]
    pub(crate) fn open_stage(&mut self, max: usize) -> usize {
        self.close_stage();
        if size_of::<T>() == 0 || max == 0 {
            return 0;
        }
        let want = if self.ring.cached_slots() >= max { max } else { max.min(self.ring.slots()) };
        // The chunk is left uncommitted (it has no drop): its slots stay free and unpublished.
        let (start, len) = match self.ring.write_chunk_uninit(want) {
            Ok(mut chunk) => {
                let (first, _) = chunk.as_mut_slices();
                (first.as_mut_ptr().cast::<T>(), first.len())
            }
            Err(_) => return 0,
        };
        // SAFETY: `start..start + len` is the chunk's contiguous first part.
        let end = unsafe { start.add(len) };
        self.stage = Window { origin: start, start, next: start, end, before: self.stage.before };
        len
    }

    /// Publishes what is staged and closes the window (before any other write).
    #[inline(always)]
    pub(super) fn close_stage(&mut self) {
        if !self.stage.end.is_null() {
            self.close_stage_open();
        }
    }

    #[inline(never)]
    fn close_stage_open(&mut self) {
        self.publish_staged();
        self.stage.close();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{channel, PopError, WaitStrategy};

    #[test]
    fn staged_values_are_unseen_until_published_and_keep_their_order() {
        let (mut tx, mut rx) = channel::<String>(8, WaitStrategy::BusySpin);
        assert_eq!(tx.stage("x".into()), Err("x".to_string()), "no window open yet");
        assert_eq!(tx.open_stage(3), 3);
        for v in ["a", "b"] {
            tx.stage(v.into()).unwrap();
        }
        assert_eq!(tx.staged(), 2);
        assert_eq!(rx.pop(), Err(PopError::Empty), "staged is not published");
        assert_eq!(tx.slots(), 6, "staged slots are not free");
        assert_eq!(tx.publish_staged(), 2);
        assert_eq!(rx.pop().unwrap(), "a");
        tx.stage("c".into()).unwrap();
        assert_eq!(tx.stage("d".into()), Err("d".to_string()), "the window of 3 is used up");
        // Another write publishes the staged value first.
        tx.push("e".into()).unwrap();
        assert_eq!(tx.staged(), 0);
        let got: Vec<String> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(got, ["b", "c", "e"]);
        assert_eq!(tx.published_staged(), 3, "a, b, c: the pushed e is not counted");
        assert_eq!(tx.open_stage(2), 2);
        tx.stage("f".into()).unwrap();
        assert_eq!(tx.published_staged(), 3, "staged is not published");
        tx.publish_staged();
        assert_eq!(tx.published_staged(), 4, "counted across windows");
    }

    #[test]
    fn windows_stop_at_the_wrap_and_at_the_consumer() {
        let (mut tx, mut rx) = channel::<u32>(4, WaitStrategy::BusySpin);
        assert_eq!(tx.push_slice(&[1, 2, 3]), 3);
        assert_eq!(tx.open_stage(8), 1, "one slot free");
        tx.stage(4).unwrap();
        assert_eq!(tx.open_stage(8), 0, "full: the open published the staged 4");
        assert_eq!((rx.pop(), rx.pop()), (Ok(1), Ok(2)));
        // Tail at the end of the buffer: two free slots, contiguous only after the wrap.
        assert_eq!(tx.open_stage(8), 2);
        tx.stage(5).unwrap();
        tx.stage(6).unwrap();
        assert_eq!(tx.stage(7), Err(7));
        tx.publish_staged();
        let got: Vec<u32> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(got, [3, 4, 5, 6]);
        // Around the wrap: tail at index 2 of 4, all free, so the window is the last two.
        assert_eq!(tx.open_stage(4), 2);
    }

    #[test]
    fn staged_values_are_published_when_the_producer_drops_and_dropped_with_the_ring() {
        use std::sync::Arc;
        let token = Arc::new(());
        let (mut tx, mut rx) = channel::<Arc<()>>(4, WaitStrategy::BusySpin);
        assert_eq!(tx.open_stage(4), 4);
        for _ in 0..3 {
            tx.stage(token.clone()).unwrap();
        }
        drop(tx);
        assert!(rx.pop().is_ok(), "published by the drop");
        assert_eq!(Arc::strong_count(&token), 3);
        drop(rx);
        assert_eq!(Arc::strong_count(&token), 1, "the ring dropped the rest");
    }

    /// Random runs of every producer and consumer call against a `VecDeque` model, staged
    /// values included: values leave in order, each once, and the counts agree; boxed
    /// values let Miri (which runs this module) see a double drop or a leak.
    #[test]
    fn staging_mixed_with_every_other_call_matches_a_model() {
        use std::collections::VecDeque;
        let steps = if cfg!(miri) { 400 } else { 20_000 };
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for capacity in [1usize, 3, 8] {
            let (mut tx, mut rx) = channel::<Box<u64>>(capacity, WaitStrategy::BusySpin);
            // Published values, then staged ones.
            let (mut model, mut staged) = (VecDeque::new(), VecDeque::new());
            let (mut next, mut published_staged) = (0u64, 0u64);
            for _ in 0..steps {
                match rand(7) {
                    0 => {
                        let max = rand(5) as usize;
                        published_staged += staged.len() as u64;
                        model.extend(staged.drain(..));
                        // Every value ever written is published now: the tail is at `next`.
                        let to_wrap = capacity - (next as usize % capacity);
                        let want = max.min(capacity - model.len()).min(to_wrap);
                        assert_eq!(tx.open_stage(max), want);
                    }
                    1 | 2 => match tx.stage(Box::new(next)) {
                        Ok(()) => {
                            staged.push_back(next);
                            next += 1;
                        }
                        Err(v) => assert_eq!(*v, next),
                    },
                    3 => {
                        assert_eq!(tx.publish_staged(), staged.len());
                        published_staged += staged.len() as u64;
                        model.extend(staged.drain(..));
                    }
                    4 => {
                        published_staged += staged.len() as u64;
                        model.extend(staged.drain(..));
                        let fits = model.len() < capacity;
                        assert_eq!(tx.push(Box::new(next)).is_ok(), fits);
                        if fits {
                            model.push_back(next);
                            next += 1;
                        }
                    }
                    5 => assert_eq!(rx.pop().ok().map(|b| *b), model.pop_front()),
                    _ => {
                        let batch = rx.read(rand(4) as usize);
                        let (a, b) = batch.as_slices();
                        let got: Vec<u64> = a.iter().chain(b).map(|v| **v).collect();
                        let want: Vec<u64> = model.drain(..got.len()).collect();
                        assert_eq!(got, want);
                        batch.commit();
                    }
                }
                assert_eq!(tx.staged(), staged.len());
                assert_eq!(tx.published_staged(), published_staged);
                assert_eq!(rx.slots(), model.len());
                assert_eq!(tx.slots(), capacity - model.len() - staged.len());
            }
            // The producer's drop publishes what is staged; the ring drops what is left.
            drop(tx);
            model.extend(staged.drain(..));
            let rest: Vec<u64> = std::iter::from_fn(|| rx.pop().ok().map(|b| *b)).collect();
            assert_eq!(rest, Vec::from(model));
        }
    }

    #[test]
    fn zero_sized_values_never_stage() {
        let (mut tx, mut rx) = channel::<()>(4, WaitStrategy::BusySpin);
        assert_eq!(tx.open_stage(4), 0);
        assert_eq!(tx.stage(()), Err(()));
        tx.push(()).unwrap();
        assert_eq!(rx.pop(), Ok(()));
    }

    #[test]
    fn a_consumer_thread_reads_every_staged_value_in_order() {
        let (mut tx, mut rx) = channel::<u64>(16, WaitStrategy::SpinThenYield);
        let total = if cfg!(miri) { 300 } else { 100_000 };
        let reader = std::thread::spawn(move || {
            let mut next = 0u64;
            while let Ok(v) = rx.pop_wait() {
                assert_eq!(v, next);
                next += 1;
            }
            next
        });
        let mut v = 0u64;
        while v < total {
            match tx.stage(v) {
                Ok(()) => {
                    v += 1;
                    // Publish runs of varying length, as a handler returning would.
                    if v % 7 == 0 {
                        tx.publish_staged();
                        tx.notify();
                    }
                }
                Err(_) => {
                    if tx.open_stage(5) == 0 {
                        tx.notify();
                        tx.wait_writable(1, || false).unwrap();
                    }
                }
            }
        }
        drop(tx);
        assert_eq!(reader.join().unwrap(), total);
    }
}
