//! [`AsyncConsumer`]: the reading end of a ring for a consumer that lives on a runtime,
//! fed by a producer on any thread.
//!
//! An empty ring is waited for by the ring's own protocol (see `ring::wait`): the future
//! raises its `Waiter`'s sleeper flag, fences, reads the waiter's futex word, re-checks the
//! ring, and sleeps on the word through the wake-up helper. A producer that pushes after the
//! re-check finds the flag up and, with no thread to unpark, bumps and wakes the word.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::wake::{wait_words, Scope, WordWait};
use crate::ring::{Batch, Closed, Consumer, PopError};

/// A ring [`Consumer`] whose waits are futures.
///
/// With [`WaitStrategy::Park`](crate::ring::WaitStrategy::Park) (the default) an empty ring
/// is waited for without a thread and without CPU: the producer's push wakes the task. With
/// the spinning strategies the producer wakes nobody, so the consumer re-checks the ring
/// each time the runtime gets back to it (it yields between checks), keeping a runtime
/// thread busy while it waits.
///
/// A consumer's `Waiter` must not be waited on by a thread while the future waits: give an
/// async consumer a ring of its own ([`channel`](crate::ring::channel)) or a waiter that only
/// it uses. A consumer that waited on a thread before may be wrapped, and one taken back
/// with [`AsyncConsumer::into_inner`] may wait on a thread again: the producer wakes whichever
/// waited last.
///
/// Every wait is cancellation safe: a `pop()` or `read()` dropped while waiting takes
/// nothing from the ring.
///
/// # Examples
/// ```
/// use shoal::aio::AsyncConsumer;
/// use shoal::ring::{channel, WaitStrategy};
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let (mut tx, rx) = channel::<u64>(64, WaitStrategy::Park);
/// let mut rx = AsyncConsumer::new(rx);
/// let producer = std::thread::spawn(move || {
///     for i in 0..100 {
///         tx.push_wait(i).expect("the consumer is there");
///     }
///     // Dropping the producer closes the ring: the consumer drains it, then sees Closed.
/// });
/// let mut sum = 0;
/// while let Ok(v) = rx.pop().await {
///     sum += v;
/// }
/// assert_eq!(sum, 4950);
/// producer.join().expect("the producer panicked");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AsyncConsumer<T> {
    inner: Consumer<T>,
    /// The registered sleep on the waiter's word, while one is in flight.
    sleep: Option<WordWait>,
}

impl<T> AsyncConsumer<T> {
    /// Wraps `consumer`.
    pub fn new(consumer: Consumer<T>) -> AsyncConsumer<T> {
        AsyncConsumer { inner: consumer, sleep: None }
    }

    /// The ring consumer, for the calls that do not wait.
    pub fn get_mut(&mut self) -> &mut Consumer<T> {
        self.cancel_wait();
        &mut self.inner
    }

    /// The ring consumer back.
    pub fn into_inner(mut self) -> Consumer<T> {
        self.cancel_wait();
        self.inner
    }

    /// Pops one value, waiting while the ring is empty.
    ///
    /// Cancellation safe: a value leaves the ring only in the poll that returns it.
    ///
    /// # Errors
    /// [`Closed`] when the producer is gone and the ring is drained.
    pub fn pop(&mut self) -> Pop<'_, T> {
        Pop { consumer: self }
    }

    /// Borrows up to `max` values in place once at least one is readable: the async form of
    /// [`Consumer::read`]. They leave the ring when the batch is committed or dropped.
    ///
    /// Cancellation safe: nothing leaves the ring before the batch is handed out.
    ///
    /// # Errors
    /// [`Closed`] when the producer is gone and the ring is drained.
    pub fn read(&mut self, max: usize) -> Read<'_, T> {
        Read { consumer: Some(self), max }
    }

    /// Polls until a value is readable (`Ok`) or the ring is closed and drained.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        // Bounded: each pass returns, or follows a finished sleep with a re-check.
        for _ in 0..4 {
            if let Some(sleep) = self.sleep.as_mut() {
                if Pin::new(sleep).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.cancel_wait();
            }
            if !self.inner.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if self.inner.is_closed() {
                return Poll::Ready(Err(Closed));
            }
            let (waiter, parks) = self.inner.waiter();
            if !parks {
                // Nobody wakes us: re-check when the runtime comes back to this task.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let (word, seen) = waiter.prepare_async_wait();
            // Re-check after raising the flag (pairs with the producer's light fence after
            // its push): a push before this is seen here, one after it sees the flag.
            if self.inner.readable_or_abandoned() {
                self.inner.waiter().0.finish_async_wait();
                continue;
            }
            self.sleep = Some(wait_words(&[(word, seen, Scope::Private)]));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Drops a registered sleep and lowers the sleeper flag.
    fn cancel_wait(&mut self) {
        if self.sleep.take().is_some() {
            self.inner.waiter().0.finish_async_wait();
        }
    }
}

/// The future of [`AsyncConsumer::pop`].
///
/// Cancellation safe: dropping it takes nothing from the ring.
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Pop<'a, T> {
    consumer: &'a mut AsyncConsumer<T>,
}

impl<T> Future for Pop<'_, T> {
    type Output = Result<T, Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let consumer = &mut *self.get_mut().consumer;
        poll_pop(consumer, cx)
    }
}

fn poll_pop<T>(consumer: &mut AsyncConsumer<T>, cx: &mut Context<'_>) -> Poll<Result<T, Closed>> {
    // Bounded: a readable ring pops; a value taken meanwhile by nobody else cannot vanish
    // (one consumer), so a second pass only follows a spurious readiness.
    for _ in 0..4 {
        match consumer.poll_readable(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(Closed)) => return Poll::Ready(Err(Closed)),
            Poll::Ready(Ok(())) => {}
        }
        match consumer.inner.pop() {
            Ok(v) => return Poll::Ready(Ok(v)),
            Err(PopError::Closed) => return Poll::Ready(Err(Closed)),
            Err(PopError::Empty) => {}
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl<T> Drop for Pop<'_, T> {
    fn drop(&mut self) {
        self.consumer.cancel_wait();
    }
}

/// The future of [`AsyncConsumer::read`]: a batch borrowed in place from the ring.
///
/// Cancellation safe: dropping it takes nothing from the ring.
#[must_use = "futures do nothing unless awaited"]
pub struct Read<'a, T> {
    consumer: Option<&'a mut AsyncConsumer<T>>,
    max: usize,
}

impl<T> std::fmt::Debug for Read<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Read").field("max", &self.max).field("done", &self.consumer.is_none()).finish()
    }
}

impl<'a, T> Future for Read<'a, T> {
    type Output = Result<Batch<'a, T>, Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(consumer) = this.consumer.as_mut() else {
            panic!("AsyncConsumer::read polled again after it completed");
        };
        match consumer.poll_readable(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(Closed)) => {
                this.consumer = None;
                return Poll::Ready(Err(Closed));
            }
            Poll::Ready(Ok(())) => {}
        }
        let Some(consumer) = this.consumer.take() else { unreachable!("checked above") };
        Poll::Ready(Ok(consumer.inner.read(this.max)))
    }
}

impl<T> Drop for Read<'_, T> {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.as_mut() {
            consumer.cancel_wait();
        }
    }
}

impl<T> Stream for AsyncConsumer<T> {
    type Item = T;

    /// The next value; the stream ends when the producer is gone and the ring is drained.
    ///
    /// A `StreamExt::next` future dropped mid-wait takes nothing, but leaves the sleeper flag
    /// up until the consumer is polled again (the producer meanwhile wakes it on each push).
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        poll_pop(self.get_mut(), cx).map(Result::ok)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::ring::{channel_between, WaitStrategy, Waiter};

    /// Far above any wake-up: only a lost wake-up trips it.
    const HANG: Duration = Duration::from_secs(20);

    #[test]
    fn a_consumer_that_slept_on_a_thread_is_woken_as_a_future() {
        let waiter = Arc::new(Waiter::new());
        let (mut tx, mut rx) = channel_between::<u64>(4, WaitStrategy::Park, Arc::new(Waiter::new()), waiter.clone());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        for round in 0..20u64 {
            // A wait on a thread, woken by a push once the thread sleeps.
            let thread = std::thread::spawn(move || (rx.pop_wait(), rx));
            while !waiter.flag_up() && !thread.is_finished() {
                std::thread::yield_now();
            }
            tx.push(2 * round).expect("room");
            let (got, back) = thread.join().expect("the waiting thread");
            assert_eq!(got, Ok(2 * round));
            // The same consumer waits as a future on the runtime, woken by the next push.
            let mut rx_async = AsyncConsumer::new(back);
            let task = rt.spawn(async move { (rx_async.pop().await, rx_async.into_inner()) });
            while !waiter.flag_up() && !task.is_finished() {
                std::thread::yield_now();
            }
            tx.push(2 * round + 1).expect("room");
            let (got, back) = rt
                .block_on(async { tokio::time::timeout(HANG, task).await })
                .expect("a future woken by the push")
                .expect("the task");
            assert_eq!(got, Ok(2 * round + 1));
            rx = back;
        }
    }
}
