//! The raw OS primitives every other part uses, written once: futex wait and wake (one word
//! or several with `futex_waitv`), the asymmetric fence (`membarrier`), `flock`,
//! files opened relative to a directory without following symlinks (`openat`, `renameat2`),
//! `fallocate`, the affinity syscalls, the `SIGBUS` handler that turns a shrunk file mapping
//! into an error, and the latency histogram that timing code records
//! into.
//!
//! # Design
//! This is the bottom layer: it imports nothing from the rest of shoal. Each primitive is a
//! thin, safe function over `libc` where its contract can be stated in types (a `&AtomicU32`
//! that outlives the call, a `&File` that stays open), and an `unsafe fn` with a `# Safety`
//! section where it cannot (`futex_waitv` over raw addresses). The syscalls are called by
//! hand because the maintained wrappers cover less than shoal needs: `atomic-wait` and
//! `parking_lot_core` use process-private futexes only, no crate wraps `futex_waitv` or the
//! global-expedited `membarrier` commands, and `fs2`/`fs4` lock files but report
//! `EWOULDBLOCK` and `EINTR` in ways that would still need the same loop written here.
//!
//! None of these items is part of shoal's public API except where another module re-exports
//! one ([`crate::ring::AsymmetricFence`], [`crate::metrics::LatencyHistogram`]).

pub mod affinity;
pub mod fence;
pub mod file;
pub mod fs;
pub mod futex;
pub mod histogram;
pub mod sigbus;
