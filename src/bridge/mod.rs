//! Bridges between a topic and a NATS JetStream stream, so that a topic can leave the box
//! without shoal growing a cluster of its own (cargo feature `nats`).
//!
//! The API is blocking: [`export`] and [`import`] each own a small single-threaded tokio
//! runtime and run until `stop` is set, calling `status` about once per second.
//!
//! # Export: topic -> stream
//! Every partition `p` of the topic is published to subject `<prefix>.<p>` (prefix
//! `shoal.<topic>` unless [`BridgeOptions::subject_prefix`] says otherwise), in offset order,
//! with async publishes and at most [`BridgeOptions::max_in_flight`] unacknowledged at once.
//! Each message carries the headers
//! `Nats-Msg-Id: <topic>/<p>/<offset>`, `Shoal-Key: <u64>`, `Shoal-Timestamp-Ns: <u64>`,
//! `Shoal-Partition: <p>` and `Shoal-Offset: <offset>`.
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
//! When a publish fails or is not acknowledged within [`ACK_TIMEOUT`], every publish in
//! flight is forgotten, the connection is thrown away whole, each partition rewinds to its
//! last acknowledged offset, and the bridge waits (50 ms doubling to 2 s) before connecting
//! afresh and sending again: nothing is dropped or skipped, and the lag (records in the topic
//! not yet acknowledged) shows in [`BridgeStatus`].
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
//! order with an ordered pull consumer (ephemeral, no server-side acknowledgements: the
//! position that counts is the local one). A message goes to partition `p` when its subject
//! is `<prefix>.<p>` and it carries `Shoal-Key` (a shoal export), else to the partition of
//! its key (`Shoal-Key`, or [`crate::bus::key_hash`] of the subject for foreign messages).
//! Messages are appended in batches; after each batch the touched partitions are synced
//! (durable), and only then is each partition's position written to
//! `<bus>/bridges/import-<topic>-<stream>/<p>` (format in [`positions`]):
//! `through_seq` (every message of the stream up to this sequence that belongs to `p` is in
//! `p` below `local_next`) and `local_next`.
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
//! # Limits
//! The record's timestamp travels in `Shoal-Timestamp-Ns`, but the local log stamps its own
//! time on import; keys and payloads arrive byte for byte.

mod export;
mod import;
pub mod positions;

use std::path::PathBuf;
use std::time::Duration;

pub use export::export;
pub use import::import;

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

/// Header carrying the record's key (decimal `u64`).
pub const HEADER_KEY: &str = "Shoal-Key";
/// Header carrying the record's timestamp in nanoseconds (decimal `u64`).
pub const HEADER_TIMESTAMP_NS: &str = "Shoal-Timestamp-Ns";
/// Header carrying the record's partition.
pub const HEADER_PARTITION: &str = "Shoal-Partition";
/// Header carrying the record's offset.
pub const HEADER_OFFSET: &str = "Shoal-Offset";

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
}

impl Default for BridgeOptions {
    fn default() -> BridgeOptions {
        BridgeOptions {
            nats_url: "nats://127.0.0.1:4222".into(),
            stream: String::new(),
            subject_prefix: None,
            max_in_flight: 1024,
            log_options: LogOptions::default(),
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

    /// The subject prefix for `topic`.
    pub fn prefix(&self, topic: &str) -> String {
        self.subject_prefix.clone().unwrap_or_else(|| format!("shoal.{topic}"))
    }
}

/// What a running bridge reports about once per second.
#[derive(Clone, Debug, Default)]
pub struct BridgeStatus {
    /// Records acknowledged by the stream (export) or made durable locally (import) in this run.
    pub records: u64,
    /// Records not yet acknowledged (export: in the topic past the acknowledged offsets;
    /// import: messages of the stream not yet imported, as the server counts them).
    pub lag: u64,
    /// Publishes awaiting an acknowledgement (export).
    pub in_flight: usize,
    /// Whether the last exchange with the server succeeded.
    pub connected: bool,
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
    /// Records acknowledged (export) or imported (import) in this run.
    pub records: u64,
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
}

fn runtime() -> Result<tokio::runtime::Runtime, BridgeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BridgeError::Config(format!("cannot start the bridge's tokio runtime: {e}")))
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

async fn connect(url: &str) -> Result<async_nats::Client, BridgeError> {
    let addr: async_nats::ServerAddr =
        url.parse().map_err(|e: std::io::Error| BridgeError::BadUrl { url: url.to_string(), why: e.to_string() })?;
    let mut delay = BACKOFF_MIN;
    let mut why = String::new();
    for attempt in 1..=CONNECT_ATTEMPTS {
        let opts = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(1));
        match opts.connect(addr.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) => why = e.to_string(),
        }
        if attempt < CONNECT_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = next_backoff(delay);
        }
    }
    Err(BridgeError::Unreachable { url: url.to_string(), attempts: CONNECT_ATTEMPTS, why })
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

/// Creates the stream `opts.stream` on `opts.nats_url` capturing `subjects` (file storage,
/// the server's default de-duplication window), or does nothing when it exists.
///
/// # Errors
/// [`BridgeError::BadUrl`], [`BridgeError::Unreachable`], [`BridgeError::JetStream`].
pub fn create_stream(opts: &BridgeOptions, subjects: &[String]) -> Result<(), BridgeError> {
    runtime()?.block_on(async {
        let client = connect(&opts.nats_url).await?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: opts.stream.clone(),
            subjects: subjects.to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| BridgeError::JetStream {
            url: opts.nats_url.clone(),
            what: "stream create",
            why: e.to_string(),
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
    fn backoff_is_bounded() {
        let mut d = BACKOFF_MIN;
        for _ in 0..20 {
            d = next_backoff(d);
        }
        assert_eq!(d, BACKOFF_MAX);
        assert_eq!(next_backoff(BACKOFF_MIN), BACKOFF_MIN * 2);
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
