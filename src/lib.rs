//! shoal: a zero-copy, high-throughput event bus for one Linux box.
//!
//! Services that talk only through an event bus can be replaced, restarted or scaled without
//! the others noticing. shoal gives one machine such a bus without the usual costs of
//! contention: no lock on a shared queue, no syscall or allocation per event, no copy of the
//! payload, no `fsync` per message.
//!
//! | part | what it is |
//! | --- | --- |
//! | [`log`] | a memory-mapped, checksummed append log: group-committed data syncs on io_uring, a "durable up to offset N" watermark, zero-copy readers and tailers in any process, crash recovery |
//! | [`ring`] | SPSC rings over `rtrb` with spin, yield and park waits; fan-in and fan-out as sets of SPSC rings |
//! | [`affinity`] | usable CPUs, pinning and naming threads |
//! | [`pipeline`] | stages of pinned workers joined by rings; routing by key, round robin, broadcast; elastic `scale` with no loss and per-key order |
//! | [`bus`] | a directory of topics; each partition a log with one appender; stable key routing |
//! | [`group`] | consumer groups whose members (threads or processes) join, leave or die at any time; committed offsets; replay-then-live |
//! | [`metrics`] | latency histograms and snapshots for the CLI |
//! | `bridge` | export and import of topics to NATS JetStream (cargo feature `nats`) |
//! | `aio` | async waits on tokio (cargo feature `tokio`): tailer streams, durable futures, async ring pops, without a thread per waiter |
//!
//! The `shoal` command line is the crate's binary, behind the default cargo feature `cli`;
//! a library user who turns default features off compiles none of it.
//!
//! # Quickstart
//! ```
//! use shoal::bus::Bus;
//! use shoal::group::{GroupOptions, Member};
//! use shoal::log::{Durability, LogOptions};
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir()?;
//! let bus = Bus::open(dir.path())?;
//! let topic = bus.topic_or_create("orders", Some(4))?;
//! let opts = LogOptions::default().durability(Durability::Batch).segment_bytes(1 << 20).max_record_bytes(1 << 16);
//! let mut producer = topic.producer(opts)?;
//! for account in 0..100u64 {
//!     producer.send(account, format!("deposit {account}").as_bytes())?; // routed by key
//! }
//! producer.sync()?; // every record is durable now
//!
//! let mut member = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
//! let mut seen = 0;
//! while seen < 100 {
//!     for delivery in member.poll(1024, Duration::from_millis(100))? {
//!         assert!(delivery.record.payload().starts_with(b"deposit")); // borrowed from the log
//!         seen += 1;
//!     }
//!     member.commit()?;
//! }
//! member.leave()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//! - **Offsets** are dense per log or partition (0, 1, 2, ...), continuing across restarts.
//! - **Durability** is explicit ([`log::Durability`]): `Never` (page cache), `Interval`, or
//!   `Batch` (group commit). [`log::Appender::durable_offset`] is a watermark: every offset
//!   below it survived a data sync; `sync` and `wait_durable` block until it passes.
//! - **Crash**: after a kill at any instant, reopening keeps every record acknowledged
//!   durable, byte for byte, and cuts a torn tail; damage below the watermark is reported
//!   with the file and byte position ([`log::RecoveryMode`] decides what happens).
//! - **Ordering**: records of one log or partition are read in append order; a pipeline keeps
//!   per-key order under [`pipeline::Routing::ByKey`] across any number of `scale` calls.
//! - **Delivery**: a pipeline handles every event exactly once per stage. A consumer group
//!   delivers at least once; a graceful leave hands over with no duplicate, and after a
//!   `kill -9` the duplicates are at most the dead member's uncommitted records.
//! - **Bad input** (a foreign file, a newer format version, a truncated segment, a full disk,
//!   an oversized record, a bad topic name) is a clear error naming the path; nothing panics
//!   on bytes read from disk or from another process.
//!
//! # The unsafe code, and why it is sound
//! Shared mappings read and written as atomics where they change, syscalls by hand in one
//! bottom module, io_uring operations that reference no user buffer, and rings that commit
//! only initialised slots: the rationale for each, with what checks it (Miri, crash, fault
//! and multi-process tests, fuzzing), is in the repository's `ARCHITECTURE.md`, beside the
//! parts' layering and the on-disk layout of a bus.
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod affinity;
#[cfg(feature = "tokio")]
pub mod aio;
#[cfg(feature = "nats")]
pub mod bridge;
pub mod bus;
pub mod group;
pub mod log;
pub mod metrics;
pub mod pipeline;
pub mod ring;
mod sys;

/// The README's Rust examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
