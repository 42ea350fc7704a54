//! Bridges between a topic and a NATS JetStream stream, so that a topic can leave the box
//! without shoal growing a cluster of its own (cargo feature `nats`).
//!
//! [`export`] and [`import`] block the calling thread until `stop` is set, calling `status`
//! about once per second; each connection to the server has a small single-threaded tokio
//! runtime of its own (see "Order across an outage" below for why).
//!
//! # In a tokio service
//! From async code, await [`export_async`] or [`import_async`]: the bridge runs on a thread
//! of the caller's runtime's blocking pool (`tokio::task::spawn_blocking`: its appends,
//! syncs and position writes block, and must not stall the runtime's workers), and the
//! caller's task only awaits its end. The future is cancellation safe: dropping it sets
//! `stop`, and the bridge stops within [`STOP_WAIT`] (plus [`STOP_DRAIN`] for an export's
//! acknowledgements in flight) with its positions stored, as after any stop; nothing is lost
//! or moved twice. A runtime being shut down waits for that end (as it waits for every
//! blocking task).
//!
//! The blocking calls ([`export`], [`import`], [`check_stream`], [`create_stream`]) also work
//! when called on a thread inside a runtime (a `#[tokio::main]` function, a task, a
//! current-thread runtime's `block_on`), where starting the connection's runtime on that
//! thread would panic: they notice the runtime (`Handle::try_current`) and then run the
//! bridge on a thread of their own, which they join, calling `status` from the calling
//! thread. They still block that thread (on a current-thread runtime, every task of that
//! runtime waits meanwhile): async code should await the `_async` forms instead.
//!
//! # Export: topic -> stream
//! Every partition `p` of the topic is published to subject `<prefix>.<p>` (prefix
//! `shoal.<topic>` unless [`BridgeOptions::subject_prefix`] says otherwise), in offset order,
//! with async publishes and at most [`BridgeOptions::max_in_flight`] unacknowledged at once.
//! Each message carries two headers: `Nats-Msg-Id: <topic>/<p>/<offset>` (for the stream's
//! de-duplication) and `Shoal-Meta: <key> <timestamp_ns> <partitions>` ([`HEADER_META`],
//! [`Meta`]: the record's key, its timestamp and the topic's partition count, three decimal
//! numbers). The partition and the offset are in the subject and the message id, not
//! repeated; every header is parsed and stored by the server, which is most of an export's
//! cost, so one compact header replaces the three of earlier versions (`Shoal-Key`,
//! `Shoal-Timestamp-Ns`, `Shoal-Partitions`, still read by import).
//!
//! The next offset to publish of each partition is stored (two checksummed slots, the format
//! of [`crate::group::format`]) in `<bus>/bridges/export-<topic>-<stream>/<p>` after the
//! stream has acknowledged every record below it, with an `fdatasync` at most once per second
//! and at exit. A restart resumes from it, so it re-sends at most the records acknowledged in
//! the last second before a crash plus those in flight; their message ids are the ones sent
//! before, so the stream's de-duplication window (2 minutes by default) drops them. The
//! bridge therefore neither skips (it advances only past acknowledged records) nor duplicates
//! (as long as it restarts within the stream's `duplicate_window`).
//!
//! When a publish fails, is not acknowledged within [`ACK_TIMEOUT`], or the connection is
//! lost (the client's connection state leaves `Connected`, which it does at once when the
//! server closes the socket, even while the bridge is idle), every publish in flight is
//! forgotten, the connection is thrown away whole, each partition rewinds to its last
//! acknowledged offset, and the bridge connects afresh after a back-off of 50 ms doubling to
//! 2 s ([`BACKOFF_MIN`], [`BACKOFF_MAX`]) per failed attempt: nothing is dropped or skipped,
//! and the lag (records in the topic not yet acknowledged) shows in [`BridgeStatus`], with
//! the attempt number and the time to the next one. The back-off starts again at 50 ms once a
//! connection is made, so after an outage the bridge is back within 2 s of the server.
//!
//! An acknowledgement with `duplicate` set (a re-send the stream's de-duplication dropped) is
//! counted apart, in [`BridgeStatus::duplicates`], not among the records acknowledged.
//!
//! The stream must capture the subjects `<prefix>.<p>`: export checks at start that one of
//! the stream's subjects covers `<prefix>.*` and fails with [`BridgeError::StreamSubjects`]
//! otherwise (a publish to a subject no stream captures is never acknowledged).
//!
//! Every wait of either direction (connecting, a JetStream request, an acknowledgement, a
//! back-off) is cut short when `stop` is set: the bridge returns within [`STOP_WAIT`] plus a
//! few milliseconds in every state, storing the positions acknowledged so far.
//!
//! **Order across an outage.** Within one connection the stream stores a partition's records
//! in offset order. The client's own reconnection is what could break that: it would flush
//! the publishes it held while reconnecting on the new connection, after some earlier ones
//! were lost with the dead one. So the exporter never lets a client reconnect: each client
//! runs on a runtime of its own that is shut down when the bridge discards it (its one
//! allowed reconnection attempt waits far longer than that), so what it still holds is never
//! sent. Each connection thus delivers, per partition, a gap-free run of offsets; the
//! re-sends on the next connection start at the last acknowledged offset, and the stream's
//! de-duplication drops the ones already stored, so every subject holds its partition's
//! records exactly once and in offset order. (A server that rejects one publish of a
//! connection yet stores a later one, e.g. a store error on one message, could still leave
//! a re-sent record after later ones; the exporter counts such a rejection as a failure and
//! re-sends from it.)
//!
//! # Import: stream -> topic
//! The stream (or the subjects under [`BridgeOptions::subject_prefix`]) is read in stream
//! order with an ephemeral pull consumer of its own (no server-side acknowledgements: the
//! position that counts is the local one; batches of [`IMPORT_BATCH`] messages, an idle
//! heartbeat of 1 s). The consumer sequence of each message must follow the previous one,
//! else the consumer is recreated from the last imported message, as after any failure.
//! Like export, the importer runs its own client that never reconnects by itself: a lost
//! connection is noticed at once and replaced after the same back-off, with a new consumer
//! that starts after the last message imported. (The client's own reconnection plus
//! async-nats' ordered consumer, with its 15 s heartbeat, resumed about 15 s after the
//! server came back.)
//!
//! A message of a shoal export carries `Shoal-Meta` (key, timestamp and the source topic's
//! partition count; an older export: `Shoal-Key`, `Shoal-Timestamp-Ns` and
//! `Shoal-Partitions`). When that count equals the local
//! topic's, the message keeps its partition (the `<p>` of its subject `<prefix>.<p>`); when
//! the counts differ, or the message carries no count, it goes to
//! [`crate::bus::partition_for_key`] of its key, where `shoal produce --keyed` would put it.
//! A foreign message (no valid `Shoal-Meta` nor `Shoal-Key`) goes to the partition of
//! [`crate::bus::key_hash`] of its subject. The record keeps its original timestamp (the
//! import's own time when the message carries none). Messages are appended in batches, with
//! one append of several records per partition and batch; the sync of a batch's partitions
//! is handed to their sync threads and runs while the next batch is fetched and appended
//! (at most one batch waits for its sync), and only once a batch's records are durable is
//! each partition's position written to
//! `<bus>/bridges/import-<topic>-<stream>/<p>` (format in [`positions`]):
//! `through_seq` (every message of the stream up to this sequence that belongs to `p` is in
//! `p` below `local_next`) and `local_next`.
//!
//! Import connects and finds the stream before it opens or creates the topic, so a failed
//! start (an unreachable server, a missing stream) creates nothing.
//!
//! ## Why a restart neither skips nor duplicates
//! A crash can leave a partition with records past its stored `local_next` (appended and
//! made durable, position not yet stored), never the opposite, because a position is written
//! only after the records it describes are durable. On restart the importer reads the
//! stream again from `min(through_seq) + 1`. Routing is a pure function of the message, and
//! the stream is immutable and read in order, so the `k` extra records of partition `p` are
//! exactly the next `k` messages after `through_seq` routed to `p`: the importer matches
//! them (and checks that key and payload are equal, failing with [`BridgeError::Diverged`]
//! otherwise) instead of appending them again, then appends from the first message that
//! has no record. Messages at or below a partition's `through_seq` are already there and
//! are passed over. Changing the partition count or the subject prefix between runs
//! changes the routing and is not supported.
//!
//! Keys, payloads and timestamps arrive byte for byte.

mod export;
mod import;
pub mod positions;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use export::{export, export_async};
pub use import::{import, import_async};

use crate::bus::{validate_name, BusError};
use crate::log::{LogError, LogOptions};

/// How long a publish may wait for its acknowledgement before the bridge treats JetStream
/// as slow or gone and backs off.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// First back-off after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connection attempts at start before [`BridgeError::Unreachable`].
pub const CONNECT_ATTEMPTS: u32 = 5;
/// Longest a bridge takes to notice `stop` in any wait (it then stops waiting for the
/// acknowledgements still in flight after at most [`STOP_DRAIN`]).
pub const STOP_WAIT: Duration = Duration::from_millis(10);
/// How long a stopping exporter still waits for the acknowledgements in flight; those that
/// do not arrive are re-sent (and de-duplicated) by the next run.
pub const STOP_DRAIN: Duration = Duration::from_millis(300);
/// Most messages an importer asks the server for at once.
pub const IMPORT_BATCH: usize = 4096;

/// Header carrying a record's key, timestamp (ns) and the source topic's partition count in
/// one value: `<key> <timestamp_ns> <partitions>`, three decimal numbers split by one space.
pub const HEADER_META: &str = "Shoal-Meta";
/// Header of older exports carrying the record's key (decimal `u64`); still read by import
/// when a message has no [`HEADER_META`].
pub const HEADER_KEY: &str = "Shoal-Key";
/// Header of older exports carrying the record's timestamp in nanoseconds (decimal `u64`).
pub const HEADER_TIMESTAMP_NS: &str = "Shoal-Timestamp-Ns";
/// Header of older exports carrying the source topic's partition count.
pub const HEADER_PARTITIONS: &str = "Shoal-Partitions";

/// Header carrying a record's key text (present only for records that keep one), percent-
/// encoded: printable ASCII other than `%` and space as itself, every other byte as `%XX`
/// (upper-case hex), so `alice` travels as `alice`.
pub const HEADER_KEY_TEXT: &str = "Shoal-Key-Text";

/// Appends the [`HEADER_KEY_TEXT`] value of the key text `bytes` to `out`.
pub fn encode_key_text(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// Decodes a [`HEADER_KEY_TEXT`] value (borrowed when it holds no `%`); `None` unless every
/// `%` is followed by two hex digits and every other character is printable ASCII other than
/// space.
pub fn decode_key_text(value: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
    let bytes = value.as_bytes();
    if !bytes.contains(&b'%') {
        return bytes.iter().all(u8::is_ascii_graphic).then_some(std::borrow::Cow::Borrowed(bytes));
    }
    let hex = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (hi, lo) = (hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?);
            out.push(hi << 4 | lo);
            i += 3;
        } else if b.is_ascii_graphic() {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    Some(std::borrow::Cow::Owned(out))
}

/// What a [`HEADER_META`] value says about a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The record's key.
    pub key: u64,
    /// The record's timestamp, in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// The partition count of the topic it was exported from.
    pub partitions: u32,
}

impl Meta {
    /// Appends the [`HEADER_META`] value of this record to `out`, without formatting
    /// machinery (the exporter builds one per record).
    pub fn encode_into(&self, out: &mut String) {
        push_u64(out, self.key);
        out.push(' ');
        push_u64(out, self.timestamp_ns);
        out.push(' ');
        push_u64(out, u64::from(self.partitions));
    }

    /// Parses a [`HEADER_META`] value; `None` unless it is exactly three decimal numbers
    /// (key and timestamp `u64`, partitions `u32`) split by single spaces.
    pub fn parse(value: &str) -> Option<Meta> {
        let mut fields = value.split(' ');
        let key = parse_u64(fields.next()?)?;
        let timestamp_ns = parse_u64(fields.next()?)?;
        let partitions = u32::try_from(parse_u64(fields.next()?)?).ok()?;
        fields.next().is_none().then_some(Meta { key, timestamp_ns, partitions })
    }
}

/// Appends the decimal digits of `n` to `out`.
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// A plain decimal `u64` (digits only, no sign, no overflow).
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Where and how a bridge connects. Build it from the default with its setters:
/// `BridgeOptions::default().stream("ORDERS").max_in_flight(256)`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BridgeOptions {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// The JetStream stream.
    pub stream: String,
    /// Subject prefix; the subject of partition `p` is `<prefix>.<p>`. `None`: `shoal.<topic>`.
    pub subject_prefix: Option<String>,
    /// Most publishes awaiting their acknowledgement at once (export).
    pub max_in_flight: usize,
    /// What import opens the topic's partitions with (segment size, durability, ...).
    pub log_options: LogOptions,
    /// Stop by itself once this many records were moved in this run (export: acknowledged
    /// as new by the stream; import: appended and durable, positions stored). `None`: run
    /// until `stop` is set.
    pub max_records: Option<u64>,
}

impl Default for BridgeOptions {
    fn default() -> BridgeOptions {
        BridgeOptions {
            nats_url: "nats://127.0.0.1:4222".into(),
            stream: String::new(),
            subject_prefix: None,
            max_in_flight: 1024,
            log_options: LogOptions::default(),
            max_records: None,
        }
    }
}

impl BridgeOptions {
    /// Sets [`BridgeOptions::nats_url`].
    #[must_use]
    pub fn nats_url(mut self, nats_url: impl Into<String>) -> BridgeOptions {
        self.nats_url = nats_url.into();
        self
    }

    /// Sets [`BridgeOptions::stream`].
    #[must_use]
    pub fn stream(mut self, stream: impl Into<String>) -> BridgeOptions {
        self.stream = stream.into();
        self
    }

    /// Sets [`BridgeOptions::subject_prefix`] (`None`: `shoal.<topic>`).
    #[must_use]
    pub fn subject_prefix(mut self, subject_prefix: Option<String>) -> BridgeOptions {
        self.subject_prefix = subject_prefix;
        self
    }

    /// Sets [`BridgeOptions::max_in_flight`].
    #[must_use]
    pub fn max_in_flight(mut self, max_in_flight: usize) -> BridgeOptions {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets [`BridgeOptions::log_options`].
    #[must_use]
    pub fn log_options(mut self, log_options: LogOptions) -> BridgeOptions {
        self.log_options = log_options;
        self
    }

    /// Sets [`BridgeOptions::max_records`].
    #[must_use]
    pub fn max_records(mut self, max_records: Option<u64>) -> BridgeOptions {
        self.max_records = max_records;
        self
    }

    /// The subject prefix for `topic`.
    pub fn prefix(&self, topic: &str) -> String {
        self.subject_prefix.clone().unwrap_or_else(|| format!("shoal.{topic}"))
    }
}

/// What a running bridge reports about once per second.
#[derive(Clone, Debug, Default)]
pub struct BridgeStatus {
    /// Records acknowledged by the stream as new (export) or made durable locally (import)
    /// in this run.
    pub records: u64,
    /// Re-sends the stream acknowledged as duplicates and dropped (export).
    pub duplicates: u64,
    /// Records not yet acknowledged (export: in the topic past the acknowledged offsets;
    /// import: messages of the stream not yet imported, as the server counts them).
    pub lag: u64,
    /// Publishes awaiting an acknowledgement (export).
    pub in_flight: usize,
    /// Whether the bridge holds a connection to the server that the client reports as
    /// connected (false while the server is gone, however idle the bridge is).
    pub connected: bool,
    /// While not connected: the number of the next connection attempt of this outage
    /// (1, 2, ...); 0 when connected.
    pub attempt: u32,
    /// While not connected: how long until that attempt.
    pub next_attempt_in: Option<Duration>,
    /// Failures met and retried in this run.
    pub retries: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Time since the bridge started.
    pub elapsed: Duration,
}

/// What a bridge did, returned when it stops.
#[derive(Clone, Debug, Default)]
pub struct BridgeStats {
    /// Records acknowledged as new (export) or imported (import) in this run.
    pub records: u64,
    /// Re-sends acknowledged as duplicates (export).
    pub duplicates: u64,
    /// Records found already present after a restart and not appended again (import).
    pub recovered: u64,
    /// Failures met and retried.
    pub retries: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Errors of a bridge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The URL does not parse.
    #[error("bad NATS URL {url:?}: {why}; use nats://HOST:PORT")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The server did not answer at start.
    #[error(
        "cannot connect to NATS at {url} after {attempts} attempts: {why}; is nats-server running there (with -js)?"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        why: String,
    },
    /// The stream does not exist.
    #[error(
        "stream {stream} does not exist on {url}; create it with `nats stream add {stream} --subjects '{subjects}'` (or shoal::bridge::create_stream)"
    )]
    NoStream {
        /// The stream.
        stream: String,
        /// The URL.
        url: String,
        /// The subjects an export would publish to.
        subjects: String,
    },
    /// The stream exists but none of its subjects covers the ones export publishes to.
    #[error(
        "stream {stream} captures {subjects:?}, which do not cover {wanted}; add {wanted} to it (`nats stream edit {stream} --subjects ...`), export to another stream, or pick a prefix it covers with --subject-prefix"
    )]
    StreamSubjects {
        /// The stream.
        stream: String,
        /// Its subjects.
        subjects: Vec<String>,
        /// The subjects the export publishes to.
        wanted: String,
    },
    /// `create_stream` found the subjects already captured by another stream.
    #[error(
        "cannot create stream {stream} over {subjects:?} on {url}: another stream already captures these subjects ({why}); export to that stream, or pick another prefix with --subject-prefix"
    )]
    Overlap {
        /// The stream.
        stream: String,
        /// The subjects asked for.
        subjects: Vec<String>,
        /// The URL.
        url: String,
        /// The server's answer.
        why: String,
    },
    /// A JetStream request failed at start (JetStream disabled, no permission, ...).
    #[error(
        "JetStream at {url}: {what} failed: {why}; is the server started with JetStream enabled (nats-server -js)?"
    )]
    JetStream {
        /// The URL.
        url: String,
        /// The request.
        what: &'static str,
        /// The failure.
        why: String,
    },
    /// A bad option.
    #[error("bridge option: {0}")]
    Config(String),
    /// A stored position is damaged.
    #[error("{path}: {why}; restore it, or remove it to restart the bridge of that partition from the beginning")]
    BadPositions {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: crate::log::slots::SlotError,
    },
    /// The local topic does not match the stored import position.
    #[error("partition {partition} of topic {topic:?}: {why}; import into a fresh topic or remove {positions}")]
    Diverged {
        /// The local topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What does not match.
        why: String,
        /// The positions directory.
        positions: String,
    },
    /// An I/O call on a positions file failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bus error (topic, partition, log).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A log error.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The thread that runs a bridge called inside a tokio runtime could not be started.
    #[error("cannot start a thread to run the bridge on: {0}; raise the process's thread or memory limit")]
    Thread(std::io::Error),
    /// An `_async` bridge call was polled outside a tokio runtime.
    #[error("{0} must be awaited on a tokio runtime (it runs the bridge with spawn_blocking); call the blocking form instead")]
    NoRuntime(&'static str),
}

/// Runs the blocking bridge call `f` so that it works on any thread. Outside a tokio runtime
/// it runs here. Inside one (where the connection's own runtime could neither be driven nor
/// dropped on this thread: tokio panics), it runs on a thread of its own, joined before
/// returning, while this thread hands it its `status` calls; a panic of that thread resumes
/// here.
fn off_runtime<T: Send>(
    status: &mut dyn FnMut(&BridgeStatus),
    f: impl FnOnce(&mut dyn FnMut(&BridgeStatus)) -> Result<T, BridgeError> + Send,
) -> Result<T, BridgeError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f(status);
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<BridgeStatus>();
        let worker = std::thread::Builder::new()
            .name("shoal-bridge".into())
            .spawn_scoped(scope, move || {
                // The receiver lives until this thread is joined: a send cannot fail.
                f(&mut |st: &BridgeStatus| drop(tx.send(st.clone())))
            })
            .map_err(BridgeError::Thread)?;
        // Ends when the worker returns (and drops its sender).
        for st in rx {
            status(&st);
        }
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Sets its `stop` when dropped, unless disarmed: what cancels a bridge whose `_async`
/// future is dropped.
struct StopOnDrop {
    stop: std::sync::Arc<AtomicBool>,
    armed: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs the blocking bridge call `f` on the current runtime's blocking pool and awaits it;
/// dropping the returned future sets `stop` (see the module docs, "In a tokio service").
async fn on_blocking_pool<T: Send + 'static>(
    what: &'static str,
    stop: std::sync::Arc<AtomicBool>,
    f: impl FnOnce(&AtomicBool) -> Result<T, BridgeError> + Send + 'static,
) -> Result<T, BridgeError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| BridgeError::NoRuntime(what))?;
    let mut guard = StopOnDrop { stop: stop.clone(), armed: true };
    let task = handle.spawn_blocking(move || f(&stop));
    let out = task.await;
    guard.armed = false;
    match out {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // A blocking task is only cancelled by a runtime shutting down before it started.
        Err(e) => Err(BridgeError::Config(format!("{what} did not run: {e}"))),
    }
}

fn check_names(topic: &str, opts: &BridgeOptions) -> Result<(), BridgeError> {
    validate_name("topic", topic)?;
    if opts.stream.is_empty() || !opts.stream.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(BridgeError::Config(format!(
            "stream name {:?} must be 1 or more characters of A-Z a-z 0-9 _ -",
            opts.stream
        )));
    }
    if opts.max_in_flight == 0 {
        return Err(BridgeError::Config("max_in_flight must be at least 1".into()));
    }
    let prefix = opts.prefix(topic);
    if prefix.is_empty() || prefix.split('.').any(|t| t.is_empty() || t.contains(['*', '>', ' '])) {
        return Err(BridgeError::Config(format!("subject prefix {prefix:?} is not a valid NATS subject")));
    }
    Ok(())
}

/// Doubles a back-off, up to [`BACKOFF_MAX`].
fn next_backoff(d: Duration) -> Duration {
    (d * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

fn parse_url(url: &str) -> Result<async_nats::ServerAddr, BridgeError> {
    url.parse().map_err(|e: std::io::Error| BridgeError::BadUrl { url: url.to_string(), why: e.to_string() })
}

/// Runs `fut` until it completes or `stop` is set (looked at every [`STOP_WAIT`]); `None`
/// when stopped first.
async fn or_stop<F: std::future::Future>(stop: &AtomicBool, fut: F) -> Option<F::Output> {
    use futures_util::FutureExt;
    tokio::pin!(fut);
    // Most publishes and acknowledgements are ready at once: no timer for those.
    if let Some(out) = (&mut fut).now_or_never() {
        return Some(out);
    }
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        tokio::select! {
            out = &mut fut => return Some(out),
            () = tokio::time::sleep(STOP_WAIT) => {}
        }
    }
}

/// One connection to the server, used until its first failure and then thrown away whole.
///
/// The connection has a current-thread runtime of its own, which the bridge's thread drives
/// ([`Conn::block_on`]) whenever it talks to the server: the client's connection handler,
/// its publishes and acknowledgements and the bridge's own calls all run on one thread, as a
/// plain single-threaded async-nats program does, with no hand-over between threads per
/// message. Discarding the connection drops that runtime and with it the handler, at once:
/// the client never reconnects on its own and never sends the publishes it still holds on a
/// later connection (that would let a later offset of a partition reach the stream before an
/// earlier one lost with the old connection), and the bridge, not the client, decides when
/// to try again (the documented back-off).
struct Conn {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// Declared last, so dropped after the client: ends the handler without a flush.
    rt: tokio::runtime::Runtime,
}

impl Conn {
    /// Whether the client still reports its connection as up (it leaves `Connected` as soon
    /// as the socket closes, idle or not).
    fn is_up(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Keeps `value` so that it is dropped inside this connection's runtime.
    fn hold<T>(&self, value: T) -> Held<T> {
        Held { value: Some(value), rt: self.rt.handle().clone() }
    }

    /// Runs `fut` on the bridge's thread, together with the connection's handler.
    fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }
}

/// A value tied to a [`Conn`] (a consumer's subscription) whose drop must run inside the
/// connection's runtime: async-nats unsubscribes on drop with `tokio::spawn`, which panics
/// outside a runtime. Once the runtime is gone the drop spawns nothing and sends nothing.
struct Held<T> {
    value: Option<T>,
    rt: tokio::runtime::Handle,
}

impl<T> Held<T> {
    fn get_mut(&mut self) -> &mut T {
        self.value.as_mut().expect("a held value is only taken by its drop")
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        let _inside = self.rt.enter();
        self.value.take();
    }
}

/// Sleeps on the calling thread for `d`, in slices of [`STOP_WAIT`], until `stop` is set.
/// `false` when stopped first.
fn sleep_or_stop(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_WAIT));
    }
}

/// One attempt to open a [`Conn`]; `Ok(None)` when `stop` was set first.
fn open(addr: &async_nats::ServerAddr, max_in_flight: usize, stop: &AtomicBool) -> Result<Option<Conn>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime for the connection: {e}"))?;
    // The delay callback also runs before the first connection attempt: no wait then. After
    // a disconnection the handler's one allowed reconnection attempt waits an hour, long
    // after the bridge has noticed the failure and dropped the runtime that runs it.
    let first = AtomicBool::new(true);
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .max_reconnects(1)
        .reconnect_delay_callback(move |_| {
            if first.swap(false, Ordering::Relaxed) {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            }
        })
        .connect(addr.clone());
    let client = match rt.block_on(or_stop(stop, connect)) {
        None => return Ok(None),
        Some(Ok(client)) => client,
        Some(Err(e)) => return Err(e.to_string()),
    };
    // The context spawns a task: it must be built inside the connection's runtime.
    let js = {
        let _inside = rt.enter();
        async_nats::jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(max_in_flight.max(1))
            .backpressure_on_inflight(true)
            .build(client.clone())
    };
    Ok(Some(Conn { client, js, rt }))
}

/// The first connection of a run: [`CONNECT_ATTEMPTS`] attempts with the back-off between
/// them. `Ok(None)` when `stop` was set meanwhile.
fn open_first(opts: &BridgeOptions, stop: &AtomicBool) -> Result<Option<Conn>, BridgeError> {
    let addr = parse_url(&opts.nats_url)?;
    let mut delay = BACKOFF_MIN;
    let mut why = String::new();
    for attempt in 1..=CONNECT_ATTEMPTS {
        match open(&addr, opts.max_in_flight, stop) {
            Ok(None) => return Ok(None),
            Ok(Some(c)) => return Ok(Some(c)),
            Err(e) => why = e,
        }
        if attempt < CONNECT_ATTEMPTS {
            if !sleep_or_stop(stop, delay) {
                return Ok(None);
            }
            delay = next_backoff(delay);
        }
    }
    Err(BridgeError::Unreachable { url: opts.nats_url.clone(), attempts: CONNECT_ATTEMPTS, why })
}

/// Whether the subject pattern `pattern` (tokens, `*`, `>`) matches every subject
/// `<prefix>.<one token>`.
fn covers(pattern: &str, prefix: &str) -> bool {
    let want: Vec<&str> = prefix.split('.').chain(std::iter::once("*")).collect();
    let have: Vec<&str> = pattern.split('.').collect();
    for (i, w) in want.iter().enumerate() {
        match have.get(i) {
            None => return false,
            Some(&">") => return true,
            Some(&"*") => {}
            Some(h) if h == w && *w != "*" => {}
            Some(_) => return false,
        }
    }
    have.len() == want.len()
}

async fn get_stream(
    js: &async_nats::jetstream::Context,
    opts: &BridgeOptions,
    subjects: String,
) -> Result<async_nats::jetstream::stream::Stream, BridgeError> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    match js.get_stream(&opts.stream).await {
        Ok(s) => Ok(s),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Err(BridgeError::NoStream { stream: opts.stream.clone(), url: opts.nats_url.clone(), subjects })
            }
            _ => Err(BridgeError::JetStream { url: opts.nats_url.clone(), what: "stream lookup", why: e.to_string() }),
        },
    }
}

/// Connects (or `Ok(None)` when stopped meanwhile) and finds the stream; for an export,
/// checks that it captures `<prefix>.*`.
fn start(
    opts: &BridgeOptions,
    prefix: &str,
    export: bool,
    stop: &AtomicBool,
) -> Result<Option<(Conn, async_nats::jetstream::stream::Stream)>, BridgeError> {
    let Some(conn) = open_first(opts, stop)? else { return Ok(None) };
    let lookup = get_stream(&conn.js, opts, format!("{prefix}.>"));
    let Some(stream) = conn.block_on(or_stop(stop, lookup)).transpose()? else { return Ok(None) };
    if export {
        let subjects = &stream.cached_info().config.subjects;
        if !subjects.iter().any(|s| covers(s, prefix)) {
            return Err(BridgeError::StreamSubjects {
                stream: opts.stream.clone(),
                subjects: subjects.clone(),
                wanted: format!("{prefix}.>"),
            });
        }
    }
    Ok(Some((conn, stream)))
}

/// Connects to `opts.nats_url` and checks that the stream `opts.stream` exists, and for an
/// export (`export`) that it captures the subjects of `topic`, without touching any bus: the
/// command line calls it before it creates the bus of an import, so that a failed start
/// creates nothing. `Ok(false)` when `stop` was set before the answer came.
///
/// # Errors
/// [`BridgeError::BadUrl`], [`BridgeError::Unreachable`], [`BridgeError::NoStream`],
/// [`BridgeError::StreamSubjects`], [`BridgeError::JetStream`], [`BridgeError::Config`] for
/// a bad name.
pub fn check_stream(topic: &str, opts: &BridgeOptions, export: bool, stop: &AtomicBool) -> Result<bool, BridgeError> {
    check_names(topic, opts)?;
    off_runtime(&mut |_| {}, |_| Ok(start(opts, &opts.prefix(topic), export, stop)?.is_some()))
}

/// Creates the stream `opts.stream` on `opts.nats_url` capturing `subjects` (file storage,
/// the server's default de-duplication window), or does nothing when it exists.
///
/// # Errors
/// [`BridgeError::BadUrl`], [`BridgeError::Unreachable`], [`BridgeError::Overlap`] when
/// another stream captures these subjects, [`BridgeError::JetStream`].
pub fn create_stream(opts: &BridgeOptions, subjects: &[String]) -> Result<(), BridgeError> {
    off_runtime(&mut |_| {}, |_| create_stream_here(opts, subjects))
}

fn create_stream_here(opts: &BridgeOptions, subjects: &[String]) -> Result<(), BridgeError> {
    use async_nats::jetstream::context::CreateStreamErrorKind;
    let never = AtomicBool::new(false);
    let conn = open_first(opts, &never)?.ok_or_else(|| BridgeError::Config("stopped".into()))?;
    conn.block_on(async {
        conn.js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: opts.stream.clone(),
                subjects: subjects.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|e| match e.kind() {
                CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP =>
                {
                    BridgeError::Overlap {
                        stream: opts.stream.clone(),
                        subjects: subjects.to_vec(),
                        url: opts.nats_url.clone(),
                        why: j.to_string(),
                    }
                }
                _ => BridgeError::JetStream { url: opts.nats_url.clone(), what: "stream create", why: e.to_string() },
            })?;
        Ok(())
    })
}

fn positions_dir(bus: &crate::bus::Bus, kind: &str, topic: &str, stream: &str) -> PathBuf {
    bus.dir().join("bridges").join(format!("{kind}-{topic}-{stream}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips_every_byte_and_keeps_printable_text_readable() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut value = String::new();
        encode_key_text(&all, &mut value);
        assert!(value.bytes().all(|b| b.is_ascii_graphic()), "{value}");
        assert_eq!(decode_key_text(&value).as_deref(), Some(&all[..]));
        let mut value = String::new();
        encode_key_text(b"alice/42 %", &mut value);
        assert_eq!(value, "alice/42%20%25");
        assert_eq!(decode_key_text(&value).as_deref(), Some(&b"alice/42 %"[..]));
        for bad in ["%", "%4", "%G0", "a b", "\u{e9}"] {
            assert_eq!(decode_key_text(bad), None, "{bad:?}");
        }
        assert_eq!(decode_key_text("").as_deref(), Some(&b""[..]));
        assert!(matches!(decode_key_text("alice"), Some(std::borrow::Cow::Borrowed(b"alice"))));
    }

    #[test]
    fn meta_round_trips_and_rejects_anything_else() {
        for meta in [
            Meta { key: 0, timestamp_ns: 0, partitions: 1 },
            Meta { key: u64::MAX, timestamp_ns: 1_700_000_000_123_456_789, partitions: u32::MAX },
            Meta { key: 77, timestamp_ns: 123, partitions: 4 },
        ] {
            let mut value = String::new();
            meta.encode_into(&mut value);
            assert_eq!(value, format!("{} {} {}", meta.key, meta.timestamp_ns, meta.partitions));
            assert_eq!(Meta::parse(&value), Some(meta));
        }
        for bad in [
            "",
            "1 2",
            "1 2 3 4",
            "1  2 3",
            " 1 2 3",
            "1 2 3 ",
            "-1 2 3",
            "+1 2 3",
            "a 2 3",
            "1 2 4294967296",
            "18446744073709551616 2 3",
            "1 2 3\u{0}",
        ] {
            assert_eq!(Meta::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_is_bounded() {
        let mut d = BACKOFF_MIN;
        for _ in 0..20 {
            d = next_backoff(d);
        }
        assert_eq!(d, BACKOFF_MAX);
        assert_eq!(next_backoff(BACKOFF_MIN), BACKOFF_MIN * 2);
    }

    #[test]
    fn a_stream_subject_covers_the_partition_subjects_of_a_prefix() {
        for pattern in ["shoal.t.>", "shoal.t.*", "shoal.>", ">", "shoal.*.*", "*.t.>"] {
            assert!(covers(pattern, "shoal.t"), "{pattern}");
        }
        for pattern in ["shoal.t", "shoal.u.>", "shoal.t.0", "shoal.t.*.x", "other.>", "shoal", "shoal.*"] {
            assert!(!covers(pattern, "shoal.t"), "{pattern}");
        }
    }

    #[test]
    fn names_are_checked() {
        let opts = BridgeOptions { stream: "S".into(), ..Default::default() };
        assert!(check_names("t", &opts).is_ok());
        assert!(check_names("t", &BridgeOptions { stream: "a.b".into(), ..Default::default() }).is_err());
        assert!(check_names("t", &BridgeOptions { subject_prefix: Some("a..b".into()), ..opts.clone() }).is_err());
        assert!(check_names("t", &BridgeOptions { max_in_flight: 0, ..opts }).is_err());
    }
}
