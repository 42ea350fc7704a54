//! The importer: JetStream stream -> topic (see the module docs of [`super`] for why a
//! restart neither skips nor duplicates).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::header::HeaderName;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_util::{FutureExt, StreamExt};

use super::positions::{create_dir, ImportPosition, PositionFile};
use super::{
    check_names, decode_key_text, get_stream, next_backoff, open, or_stop, parse_url, positions_dir, start,
    BridgeError, BridgeOptions, BridgeStats, BridgeStatus, Conn, Held, Meta, BACKOFF_MIN, HEADER_KEY, HEADER_KEY_TEXT,
    HEADER_META, HEADER_PARTITIONS, HEADER_TIMESTAMP_NS, IMPORT_BATCH, STOP_WAIT,
};
use crate::bus::{key_hash, partition_for_key, Bus, TopicProducer};
use crate::log::{DurableWatch, NewRecord, Offset, Reader};

/// The header names, built once (a name given as `&str` is copied at every lookup).
const META: HeaderName = HeaderName::from_static(HEADER_META);
const KEY_TEXT: HeaderName = HeaderName::from_static(HEADER_KEY_TEXT);
const KEY: HeaderName = HeaderName::from_static(HEADER_KEY);
const TIMESTAMP_NS: HeaderName = HeaderName::from_static(HEADER_TIMESTAMP_NS);
const PARTITIONS: HeaderName = HeaderName::from_static(HEADER_PARTITIONS);

/// Most messages appended between two syncs.
const BATCH_MAX: usize = IMPORT_BATCH;
const FIRST_WAIT: Duration = Duration::from_millis(200);
const NEXT_WAIT: Duration = Duration::from_millis(5);
/// Longest one batch collects messages before it is synced (and `stop` looked at).
const BATCH_TIME: Duration = Duration::from_millis(100);
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Idle heartbeat the server sends on a pull request with nothing to deliver; two missed
/// ones end the consumer's stream with an error, and the importer starts over.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one pull request stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// How long the server keeps a consumer nobody pulls from (after a crash or an outage).
const CONSUMER_INACTIVE: Duration = Duration::from_secs(60);

struct Part {
    pos: ImportPosition,
    file: PositionFile,
    /// Records past `pos.local_next` found at start (durable, position not stored).
    extra: u64,
    /// Reads those records back to check them.
    reader: Option<Reader>,
    /// Appended in the current batch.
    dirty: bool,
}

/// Where a message goes, with its key and its original timestamp (if it carries one).
fn route(
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    key_text: Option<&[u8]>,
    prefix: &str,
    partitions: u32,
) -> (u32, u64, Option<u64>) {
    let value = |name: HeaderName| headers.and_then(|h| h.get(name)).map(async_nats::HeaderValue::as_str);
    let meta = value(META).and_then(Meta::parse);
    let (key, timestamp_ns, count) = match meta {
        Some(m) => (Some(m.key), Some(m.timestamp_ns), Some(u64::from(m.partitions))),
        None => {
            // An older export (one header each) or a foreign message.
            let number = |name: HeaderName| value(name).and_then(|v| v.parse::<u64>().ok());
            (number(KEY), number(TIMESTAMP_NS), number(PARTITIONS))
        }
    };
    // A message with key text and no key (another client's): the key is the text's hash, as
    // `produce --keyed` makes it.
    let Some(key) = key.or_else(|| key_text.map(key_hash)) else {
        let key = key_hash(subject.as_bytes());
        return (partition_for_key(key, partitions), key, timestamp_ns);
    };
    // A shoal export of a topic with as many partitions: keep the partition.
    if count == Some(u64::from(partitions)) {
        let p = subject
            .strip_prefix(prefix)
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&p| p < partitions);
        if let Some(p) = p {
            return (p, key, timestamp_ns);
        }
    }
    // Another count: where `produce --keyed` puts the key.
    (partition_for_key(key, partitions), key, timestamp_ns)
}

/// Consumes the JetStream stream `opts.stream` (only the subjects under
/// `opts.subject_prefix` when set) into `topic` (created with the default partition count if
/// it does not exist), resuming after the stored positions, and follows the stream until
/// `stop` is set. `status` is called about once per second.
///
/// Called on a thread inside a tokio runtime, it runs the bridge on a thread of its own and
/// blocks until it ends (see the module docs, "In a tokio service"); from async code, await
/// [`import_async`] instead.
///
/// # Errors
/// [`BridgeError::BadUrl`], [`BridgeError::Unreachable`] (at start), [`BridgeError::NoStream`],
/// [`BridgeError::Diverged`] when the local topic does not hold what the stored positions
/// say, bus and log errors, a damaged positions file. Once running, NATS failures are
/// retried, not returned.
pub fn import(
    bus: &Bus,
    topic: &str,
    opts: &BridgeOptions,
    stop: &AtomicBool,
    status: &mut dyn FnMut(&BridgeStatus),
) -> Result<BridgeStats, BridgeError> {
    super::off_runtime(status, |status| import_here(bus, topic, opts, stop, status))
}

/// [`import`] for async code: runs the bridge on the current tokio runtime's blocking pool
/// (`spawn_blocking`: it blocks on the disk and on its connection's own runtime) and resolves
/// with its [`BridgeStats`] once it stops: when `stop` is set, or by itself after
/// [`BridgeOptions::max_records`]. `status` is called on that blocking thread about once
/// per second.
///
/// Cancellation safe: dropping the future sets `stop`; the bridge then stops as it does for
/// any stop (within [`super::STOP_WAIT`], positions stored), so nothing is lost and a later
/// run resumes where it ended.
///
/// # Errors
/// Those of [`import`], and [`BridgeError::NoRuntime`] when polled outside a tokio runtime.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::{atomic::AtomicBool, Arc};
/// use shoal::bridge::{BridgeOptions, import_async};
///
/// let bus = shoal::bus::Bus::open("/var/lib/app/bus")?;
/// let opts = BridgeOptions::default().nats_url("nats://127.0.0.1:4222").stream("ORDERS");
/// let stop = Arc::new(AtomicBool::new(false));
/// // Set `stop` (or drop the future) to end it.
/// let stats = import_async(bus, "orders", opts, stop, |_status| {}).await?;
/// println!("{} records", stats.records);
/// # Ok(())
/// # }
/// ```
pub async fn import_async(
    bus: Bus,
    topic: impl Into<String>,
    opts: BridgeOptions,
    stop: std::sync::Arc<AtomicBool>,
    mut status: impl FnMut(&BridgeStatus) + Send + 'static,
) -> Result<BridgeStats, BridgeError> {
    let topic = topic.into();
    super::on_blocking_pool("shoal::bridge::import_async", stop, move |stop| {
        import_here(&bus, &topic, &opts, stop, &mut status)
    })
    .await
}

fn import_here(
    bus: &Bus,
    topic: &str,
    opts: &BridgeOptions,
    stop: &AtomicBool,
    status: &mut dyn FnMut(&BridgeStatus),
) -> Result<BridgeStats, BridgeError> {
    check_names(topic, opts)?;
    let started = Instant::now();
    let prefix = opts.prefix(topic);
    // The server and the stream first: a failed start creates nothing.
    let Some((conn, _stream)) = start(opts, &prefix, false, stop)? else {
        return Ok(BridgeStats { elapsed: started.elapsed(), ..Default::default() });
    };
    let t = bus.topic_or_create(topic, None)?;
    let dir = positions_dir(bus, "import", topic, &opts.stream);
    create_dir(&dir)?;
    let mut stored = Vec::with_capacity(t.partitions() as usize);
    for p in 0..t.partitions() {
        stored.push(PositionFile::open_import(dir.join(p.to_string()))?);
    }
    // Every message at or below `through` is in the topic (or was never ours).
    let through = stored.iter().map(|(_, pos)| pos.map_or(0, |pos| pos.stream_seq)).min().unwrap_or(0);
    let filter_subject = opts.subject_prefix.as_ref().map(|p| format!("{p}.>")).unwrap_or_default();
    // The partitions open (mostly waiting for the disk) while the consumer is created and
    // its first batch requested (mostly waiting for the server).
    let (producer, consumer) = std::thread::scope(|scope| {
        let open = || t.producer(opts.log_options);
        let opening = std::thread::Builder::new().name("shoal-import-open".into()).spawn_scoped(scope, open);
        let consumer = conn.block_on(or_stop(stop, consume(&conn.js, opts, &filter_subject, through + 1)));
        let producer = match opening {
            Ok(h) => h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => t.producer(opts.log_options),
        };
        (producer, consumer)
    });
    // Held before anything can return early: a subscription must be dropped inside its
    // connection's runtime.
    let consumer = consumer.map(|c| c.map(|m| conn.hold(m)));
    let mut producer = producer?;
    let Some(consumer) = consumer else {
        return Ok(BridgeStats { elapsed: started.elapsed(), ..Default::default() });
    };
    let mut parts = Vec::with_capacity(t.partitions() as usize);
    for (p, (mut file, stored)) in (0..t.partitions()).zip(stored) {
        let local_next = producer.next_offset(p).map_or(0, |o| o.0);
        let pos = match stored {
            Some(pos) => pos,
            None => {
                let pos = ImportPosition { generation: 0, stream_seq: 0, local_next, base_next: local_next };
                file.store_import(pos, true)?;
                pos
            }
        };
        if local_next < pos.local_next {
            return Err(BridgeError::Diverged {
                topic: topic.to_string(),
                partition: p,
                why: format!("the log ends at offset {local_next} but {} records were imported", pos.local_next),
                positions: dir.display().to_string(),
            });
        }
        let extra = local_next - pos.local_next;
        let reader = if extra > 0 {
            let mut r = Reader::open(t.partition_dir(p)?)?;
            r.seek(Offset(pos.local_next))?;
            Some(r)
        } else {
            None
        };
        parts.push(Part { pos, file, extra, reader, dirty: false });
    }
    let ctx = Ctx { topic, opts, dir: dir.display().to_string(), prefix, partitions: t.partitions() };
    run(&ctx, conn, consumer, &mut producer, &mut parts, stop, status, started)
}

struct Ctx<'a> {
    topic: &'a str,
    opts: &'a BridgeOptions,
    dir: String,
    prefix: String,
    partitions: u32,
}

impl Ctx<'_> {
    fn diverged(&self, partition: u32, why: String) -> BridgeError {
        BridgeError::Diverged { topic: self.topic.to_string(), partition, why, positions: self.dir.clone() }
    }
}

/// Takes one batch of `(stream sequence, message)` in stream order: each message is matched
/// against a record already there, passed over, or appended, with one append of several
/// records per partition. Returns how many were appended.
fn take(
    ctx: &Ctx<'_>,
    producer: &mut TopicProducer,
    parts: &mut [Part],
    batch: &[(u64, async_nats::jetstream::Message)],
    stats: &mut BridgeStats,
) -> Result<u64, BridgeError> {
    // Key texts first (borrowed from their headers unless percent-escaped), so that the
    // records below can borrow them.
    let texts: Vec<Option<Cow<'_, [u8]>>> = batch
        .iter()
        .map(|(_, msg)| msg.headers.as_ref().and_then(|h| h.get(KEY_TEXT)).and_then(|v| decode_key_text(v.as_str())))
        .collect();
    let mut appends: Vec<Vec<NewRecord<'_>>> = parts.iter().map(|_| Vec::new()).collect();
    for ((seq, msg), text) in batch.iter().zip(&texts) {
        let seq = *seq;
        let text = text.as_deref();
        let (p, key, timestamp_ns) =
            route(msg.subject.as_str(), msg.headers.as_ref(), text, &ctx.prefix, ctx.partitions);
        let part = &mut parts[p as usize];
        if seq <= part.pos.stream_seq {
            continue;
        }
        if part.extra > 0 {
            let at = part.pos.local_next;
            let reader =
                part.reader.as_mut().ok_or_else(|| ctx.diverged(p, "no reader for the records to check".into()))?;
            let rec = reader.next_ref()?.ok_or_else(|| ctx.diverged(p, format!("record {at} vanished")))?;
            if rec.offset().0 != at || rec.key() != key || rec.payload() != &msg.payload[..] {
                return Err(ctx.diverged(
                    p,
                    format!("record {at} is not stream message {seq} (different key or payload); the stream changed"),
                ));
            }
            part.extra -= 1;
            part.pos.local_next = at + 1;
            stats.recovered += 1;
            continue;
        }
        // The original time becomes the event time; the append time is this log's.
        let mut record = NewRecord::new(&msg.payload[..]);
        if let Some(text) = text {
            record = record.key(text);
        }
        record = record.key_hash(key);
        if let Some(ns) = timestamp_ns {
            record = record.event_time(ns);
        }
        appends[p as usize].push(record);
    }
    let mut appended = 0;
    for (p, records) in appends.into_iter().enumerate() {
        if records.is_empty() {
            continue;
        }
        let n = records.len() as u64;
        let part = &mut parts[p];
        let offsets = producer.send_records_to(p as u32, records)?;
        debug_assert_eq!(offsets.start.0, part.pos.local_next);
        debug_assert_eq!(offsets.end.0 - offsets.start.0, n);
        part.pos.local_next = offsets.end.0;
        part.dirty = true;
        appended += n;
    }
    Ok(appended)
}

/// Batches appended but not yet known to be durable, oldest first: the positions each
/// batch leaves every partition at, stored once the records below them are durable.
struct Unsynced {
    batches: VecDeque<(Vec<ImportPosition>, u64)>,
    watches: Vec<DurableWatch>,
}

impl Unsynced {
    /// Asks for the records of the partitions touched by the last batch to be made durable,
    /// without waiting, and remembers the positions that describe them.
    fn push(&mut self, parts: &mut [Part], appended: u64) -> Result<(), BridgeError> {
        for (part, watch) in parts.iter_mut().zip(&self.watches) {
            if part.dirty && part.pos.local_next > 0 {
                // A zero timeout only hands the sync to the log's sync thread.
                watch.wait_durable(Offset(part.pos.local_next - 1), Some(Duration::ZERO))?;
                part.dirty = false;
            }
        }
        self.batches.push_back((parts.iter().map(|p| p.pos).collect(), appended));
        Ok(())
    }

    /// Records appended whose positions are not stored yet.
    fn appended(&self) -> u64 {
        self.batches.iter().map(|(_, appended)| appended).sum()
    }

    /// Stores the positions of every batch whose records are durable, oldest first; with
    /// `keep` set, first waits until at most `keep` batches are left unsynced. Returns the
    /// records of the stored batches.
    fn settle(&mut self, parts: &mut [Part], keep: usize) -> Result<u64, BridgeError> {
        let mut records = 0;
        while let Some((positions, appended)) = self.batches.front() {
            let wait = self.batches.len() > keep;
            for (pos, watch) in positions.iter().zip(&self.watches) {
                let want = pos.local_next;
                if want > 0 && watch.durable_offset().0 < want {
                    if !wait {
                        return Ok(records);
                    }
                    watch.wait_durable(Offset(want - 1), None)?;
                }
            }
            // Durable first, then the positions that describe it.
            for (part, pos) in parts.iter_mut().zip(positions) {
                part.file.store_import(*pos, false)?;
            }
            records += appended;
            self.batches.pop_front();
        }
        Ok(records)
    }
}

/// Creates the importer's consumer, delivering from `start_sequence` on, and its stream of
/// messages.
async fn consume(
    js: &async_nats::jetstream::Context,
    opts: &BridgeOptions,
    filter_subject: &str,
    start_sequence: u64,
) -> Result<pull::Stream, String> {
    let stream = get_stream(js, opts, String::new()).await.map_err(|e| e.to_string())?;
    let config = pull::Config {
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
        ack_policy: AckPolicy::None,
        filter_subject: filter_subject.to_string(),
        inactive_threshold: CONSUMER_INACTIVE,
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| format!("consumer: {e}"))?;
    consumer
        .stream()
        .max_messages_per_batch(IMPORT_BATCH)
        .heartbeat(HEARTBEAT)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| format!("consumer: {e}"))
}

/// Takes up to [`BATCH_MAX`] messages past `through` from `m` into `batch` (for at most
/// [`BATCH_TIME`], waiting [`FIRST_WAIT`] for the first and [`NEXT_WAIT`] for each next one);
/// runs on the connection's runtime. Returns the stream sequence of the last message taken
/// (`through` when none), and `Err(why)` when the consumer failed (the messages taken before
/// stay in `batch`).
async fn fetch(
    m: &mut pull::Stream,
    batch: &mut Vec<(u64, async_nats::jetstream::Message)>,
    through: u64,
    consumer_seq: &mut u64,
    st: &mut BridgeStatus,
    stop: &AtomicBool,
) -> (u64, Option<String>) {
    let mut batch_through = through;
    let batch_started = Instant::now();
    for n in 0..BATCH_MAX {
        if n > 0 && (batch_started.elapsed() >= BATCH_TIME || stop.load(Ordering::Relaxed)) {
            break;
        }
        // Most messages are there already: no timer for those.
        let next = match m.next().now_or_never() {
            Some(next) => next,
            None => {
                let wait = if n == 0 { FIRST_WAIT } else { NEXT_WAIT };
                match tokio::time::timeout(wait, m.next()).await {
                    Err(_) => break,
                    Ok(next) => next,
                }
            }
        };
        let msg = match next {
            None => return (batch_through, Some("the consumer ended".to_string())),
            Some(Err(e)) => return (batch_through, Some(e.to_string())),
            Some(Ok(msg)) => msg,
        };
        let (seq, delivered, pending) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.consumer_sequence, info.pending),
            Err(e) => return (batch_through, Some(format!("a message without JetStream metadata: {e}"))),
        };
        // A gap in the consumer's sequence is a message lost on the way: start over after
        // the last one taken.
        if delivered != *consumer_seq + 1 {
            return (batch_through, Some(format!("consumer sequence {delivered} after {consumer_seq}")));
        }
        *consumer_seq = delivered;
        st.lag = pending;
        if seq <= batch_through {
            continue;
        }
        batch_through = seq;
        batch.push((seq, msg));
    }
    (batch_through, None)
}

#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &Ctx<'_>,
    first: Conn,
    consumer: Result<Held<pull::Stream>, String>,
    producer: &mut TopicProducer,
    parts: &mut [Part],
    stop: &AtomicBool,
    status: &mut dyn FnMut(&BridgeStatus),
    started: Instant,
) -> Result<BridgeStats, BridgeError> {
    let opts = ctx.opts;
    let addr = parse_url(&opts.nats_url)?;
    let filter_subject = opts.subject_prefix.as_ref().map(|p| format!("{p}.>")).unwrap_or_default();

    // Every message at or below `through` is in the topic (or was never ours).
    let mut through = parts.iter().map(|p| p.pos.stream_seq).min().unwrap_or(0);
    let mut stats = BridgeStats::default();
    let mut st = BridgeStatus { connected: true, ..Default::default() };
    let mut conn = Some(first);
    // The first consumer's failure, if it failed, is handled as any later one's.
    let mut first_failure = None;
    // Declared after `conn`, so dropped before it.
    let mut messages: Option<Held<pull::Stream>> = match consumer {
        Ok(m) => Some(m),
        Err(why) => {
            first_failure = Some(why);
            None
        }
    };
    // The consumer sequence of the last message taken from `messages`.
    let mut consumer_seq = 0u64;
    let mut backoff = BACKOFF_MIN;
    // While disconnected: when the next connection attempt is due.
    let mut retry_at = Instant::now();
    let mut last_status = Instant::now();
    // The messages of the batch being taken (kept for the allocation).
    let mut batch: Vec<(u64, async_nats::jetstream::Message)> = Vec::with_capacity(BATCH_MAX);
    let mut unsynced = Unsynced { batches: VecDeque::with_capacity(2), watches: producer.durable_watches() };
    while !stop.load(Ordering::Relaxed) {
        let mut failure: Option<String> = first_failure.take();
        if failure.is_none() && conn.as_ref().is_some_and(|c| !c.is_up()) {
            failure = Some("connection lost".into());
        } else if failure.is_none() && conn.is_none() {
            let now = Instant::now();
            if now < retry_at {
                std::thread::sleep(STOP_WAIT.min(retry_at - now));
            } else {
                match open(&addr, opts.max_in_flight, stop) {
                    Ok(None) => break,
                    Ok(Some(c)) => {
                        conn = Some(c);
                        backoff = BACKOFF_MIN;
                        st.attempt = 0;
                        st.next_attempt_in = None;
                    }
                    Err(e) => failure = Some(format!("reconnect: {e}")),
                }
            }
        }
        if let (Some(c), None, None) = (conn.as_ref(), messages.as_ref(), failure.as_ref()) {
            match c.block_on(or_stop(stop, consume(&c.js, opts, &filter_subject, through + 1))) {
                None => break,
                Some(Ok(m)) => {
                    messages = Some(c.hold(m));
                    consumer_seq = 0;
                }
                Some(Err(why)) => failure = Some(why),
            }
        }
        let mut batch_through = through;
        batch.clear();
        if let (Some(c), Some(m), None) = (conn.as_ref(), messages.as_mut(), failure.as_ref()) {
            let (last, failed) = c.block_on(fetch(m.get_mut(), &mut batch, through, &mut consumer_seq, &mut st, stop));
            batch_through = last;
            failure = failed;
        }
        if batch_through > through {
            let appended = take(ctx, producer, parts, &batch, &mut stats)?;
            for part in parts.iter_mut() {
                part.pos.stream_seq = part.pos.stream_seq.max(batch_through);
                if part.extra == 0 {
                    part.reader = None;
                }
            }
            through = batch_through;
            // The sync of this batch runs while the next one is fetched and appended; the
            // one before must be durable (and its positions stored) first.
            unsynced.push(parts, appended)?;
            stats.records += unsynced.settle(parts, 1)?;
            st.records = stats.records;
        } else {
            stats.records += unsynced.settle(parts, usize::MAX)?;
            st.records = stats.records;
        }
        // Enough appended: the settle after the loop makes them durable and stores their
        // positions (waiting here for a message past the last would only add a fetch's wait).
        if opts.max_records.is_some_and(|max| stats.records + unsynced.appended() >= max) {
            break;
        }
        if let Some(why) = failure {
            // Drop the consumer and the connection; the next ones start after `through`.
            messages = None;
            conn = None;
            st.retries += 1;
            st.attempt += 1;
            st.last_error = Some(why);
            retry_at = Instant::now() + backoff;
            backoff = next_backoff(backoff);
        }
        if last_status.elapsed() >= STATUS_EVERY {
            st.connected = messages.is_some() && conn.as_ref().is_some_and(Conn::is_up);
            st.next_attempt_in = conn.is_none().then(|| retry_at.saturating_duration_since(Instant::now()));
            st.elapsed = started.elapsed();
            status(&st);
            last_status = Instant::now();
        }
    }
    // Everything appended is made durable and its positions stored before returning.
    stats.records += unsynced.settle(parts, 0)?;
    stats.retries = st.retries;
    stats.elapsed = started.elapsed();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`route`] of a message without key text.
    fn route_(
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        prefix: &str,
        partitions: u32,
    ) -> (u32, u64, Option<u64>) {
        route(subject, headers, None, prefix, partitions)
    }

    #[test]
    fn key_text_without_a_key_routes_by_its_hash_as_produce_keyed_does() {
        let k = key_hash(b"alice");
        assert_eq!(route("other.subject", None, Some(b"alice"), "shoal.t", 4), (partition_for_key(k, 4), k, None));
        // A key given beside the text is the one kept.
        let mut h = async_nats::HeaderMap::new();
        h.insert(HEADER_META, "77 123 4");
        assert_eq!(route("shoal.t.3", Some(&h), Some(b"alice"), "shoal.t", 4), (3, 77, Some(123)));
    }

    #[test]
    fn routing_keeps_the_partition_only_for_an_equal_count_else_follows_the_key() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(HEADER_META, "77 123 4");
        assert_eq!(route_("shoal.t.3", Some(&h), "shoal.t", 4), (3, 77, Some(123)));
        // Another count: the key decides, below the count too.
        for partitions in [2, 3, 8] {
            assert_eq!(route_("shoal.t.1", Some(&h), "shoal.t", partitions).0, partition_for_key(77, partitions));
        }
        // An older export, one header each, reads the same.
        let mut old = async_nats::HeaderMap::new();
        old.insert(HEADER_KEY, "77");
        old.insert(HEADER_TIMESTAMP_NS, "123");
        old.insert(HEADER_PARTITIONS, "4");
        assert_eq!(route_("shoal.t.3", Some(&old), "shoal.t", 4), (3, 77, Some(123)));
        // No count: the key decides.
        let mut key_only = async_nats::HeaderMap::new();
        key_only.insert(HEADER_KEY, "77");
        assert_eq!(route_("shoal.t.3", Some(&key_only), "shoal.t", 4), (partition_for_key(77, 4), 77, None));
        // A foreign message: the subject's hash decides, the import's time stands.
        let k = key_hash(b"other.subject");
        assert_eq!(route_("other.subject", None, "shoal.t", 4), (partition_for_key(k, 4), k, None));
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(HEADER_KEY, "not a number");
        assert_eq!(route_("shoal.t.1", Some(&bad), "shoal.t", 4).1, key_hash(b"shoal.t.1"));
        // A damaged meta value counts as none.
        let mut damaged = async_nats::HeaderMap::new();
        damaged.insert(HEADER_META, "77 123");
        assert_eq!(
            route_("shoal.t.1", Some(&damaged), "shoal.t", 4),
            (partition_for_key(key_hash(b"shoal.t.1"), 4), key_hash(b"shoal.t.1"), None)
        );
    }
}
