//! Async waits (cargo feature `tokio`): futures over the log's tailers and durable watermark
//! and over the rings, woken without a thread per waiter.
//!
//! # Design
//! Every wait in shoal sleeps on a futex word: a log's `HEAD` page has `notify` (bumped by an
//! appender that finds a sleeper registered), a ring's `Waiter` its own word. A future cannot
//! sleep in the kernel, so it hands the word to `wake`, one registry per process: helper
//! threads named `shoal-aio-wake`, each sleeping in one `futex_waitv(2)` over up to 127 words
//! plus a control word of its own, wake the wakers of the futures whose word moved. More
//! words start more helpers; a helper with nothing to wait on sleeps on its control word, so
//! idle futures cost no CPU (no timer, no polling). Registrations of one word with one value
//! share a slot: a thousand tailers of one log cost one slot and one wake-up.
//!
//! The crate-internal interface, for every future of this module and of the group member's:
//! `wake::WordWait::new(&[(word, seen, Scope::Shared | Scope::Private)])` (also spelled
//! `wake::wait_words`) is a future that resolves once one of the words is woken or no longer
//! holds the value read from it. `Scope` is the futex key the waker uses: the log's `HEAD`
//! words are woken without `FUTEX_PRIVATE_FLAG` (the page is shared between processes), a
//! ring's word with it, and a wait only sees wakes of its own key.
//!
//! # Why no wake-up is lost
//! A future registers the way a blocking waiter does (Dekker's pattern): it first makes
//! itself known to the waking side (raises the `HEAD` page's `waiters` count, or a ring
//! `Waiter`'s sleeper flag), fences, reads the word, re-checks its condition, and only then
//! hands the word and the value it read to a helper. A record published before the re-check
//! is seen by it; one published after it finds the registration, so the publisher bumps the
//! word and wakes it. A helper that is not yet asleep when the word moves finds it moved when
//! it calls `futex_waitv` (`EAGAIN`), probes its words one by one (a zero-timeout
//! `FUTEX_WAIT`, which compares in the kernel) and fires the moved ones. A new registration
//! bumps the helper's control word, so a helper asleep on an older list wakes and re-reads
//! it. The future lowers its waiters count when it resolves or is dropped.
//!
//! # Cancellation safety
//! Every future of this module is cancellation safe: dropping one before it completes (a
//! `select!` that picked another branch, a timeout) removes its registration and lowers its
//! waiters count, and consumes nothing, so the next call sees the same record, value or
//! watermark the dropped one would have.
//!
//! # Where `futex_waitv` is missing
//! On Linux before 5.16 (`ENOSYS`) the helpers cannot sleep on many words at once; they
//! sleep for 1 ms ticks instead and re-check every registered word after each, so a wait
//! ends at most about 1 ms after its word moves and an idle registration costs a wake-up per
//! millisecond. With nothing registered a helper still sleeps without ticking.

mod durable;
mod member;
mod ring;
mod tailer;
pub(crate) mod wake;

pub use durable::{AppendDurable, AppendedDurable, AsyncDurable, SendDurable, WaitDurable};
pub use member::AsyncMember;
pub use ring::{AsyncConsumer, Pop, Read};
pub use tailer::{AsyncTailer, Next};
