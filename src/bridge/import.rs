//! The importer: JetStream stream -> topic (see the module docs of [`super`] for why a
//! restart neither skips nor duplicates).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_util::StreamExt;

use super::positions::{create_dir, ImportPosition, PositionFile};
use super::{
    check_names, get_stream, next_backoff, open, or_stop, parse_url, positions_dir, runtime, start, BridgeError,
    BridgeOptions, BridgeStats, BridgeStatus, Conn, BACKOFF_MIN, HEADER_KEY, HEADER_PARTITIONS, HEADER_TIMESTAMP_NS,
    IMPORT_BATCH, STOP_WAIT,
};
use crate::bus::{key_hash, partition_for_key, Bus, TopicProducer};
use crate::log::{Offset, Reader};

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
    prefix: &str,
    partitions: u32,
) -> (u32, u64, Option<u64>) {
    let number = |name: &str| headers.and_then(|h| h.get(name)).and_then(|v| v.as_str().parse::<u64>().ok());
    let timestamp_ns = number(HEADER_TIMESTAMP_NS);
    let Some(key) = number(HEADER_KEY) else {
        let key = key_hash(subject.as_bytes());
        return (partition_for_key(key, partitions), key, timestamp_ns);
    };
    // A shoal export of a topic with as many partitions: keep the partition.
    if number(HEADER_PARTITIONS) == Some(u64::from(partitions)) {
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
    check_names(topic, opts)?;
    let started = Instant::now();
    let prefix = opts.prefix(topic);
    let rt = runtime()?;
    // The server and the stream first: a failed start creates nothing.
    let Some((conn, _stream)) = rt.block_on(start(opts, &prefix, false, stop))? else {
        return Ok(BridgeStats { elapsed: started.elapsed(), ..Default::default() });
    };
    let t = bus.topic_or_create(topic, None)?;
    let dir = positions_dir(bus, "import", topic, &opts.stream);
    create_dir(&dir)?;
    let mut producer = t.producer(opts.log_options)?;
    let mut parts = Vec::with_capacity(t.partitions() as usize);
    for p in 0..t.partitions() {
        let (mut file, stored) = PositionFile::open_import(dir.join(p.to_string()))?;
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
    rt.block_on(run(&ctx, conn, &mut producer, &mut parts, stop, status, started))
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

/// Takes one message: appends it, matches it against a record already there, or passes
/// over it. Returns whether it was appended.
fn take(
    ctx: &Ctx<'_>,
    producer: &mut TopicProducer,
    parts: &mut [Part],
    seq: u64,
    msg: &async_nats::jetstream::Message,
    stats: &mut BridgeStats,
) -> Result<bool, BridgeError> {
    let (p, key, timestamp_ns) = route(msg.subject.as_str(), msg.headers.as_ref(), &ctx.prefix, ctx.partitions);
    let part = &mut parts[p as usize];
    if seq <= part.pos.stream_seq {
        return Ok(false);
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
        return Ok(false);
    }
    let offset = match timestamp_ns {
        Some(ts) => producer.send_to_at(p, key, ts, &msg.payload)?,
        None => producer.send_to(p, key, &msg.payload)?,
    };
    debug_assert_eq!(offset.0, part.pos.local_next);
    part.pos.local_next = offset.0 + 1;
    part.dirty = true;
    Ok(true)
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

async fn run(
    ctx: &Ctx<'_>,
    first: Conn,
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
    let mut messages: Option<pull::Stream> = None;
    // The consumer sequence of the last message taken from `messages`.
    let mut consumer_seq = 0u64;
    let mut backoff = BACKOFF_MIN;
    // While disconnected: when the next connection attempt is due.
    let mut retry_at = Instant::now();
    let mut last_status = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut failure: Option<String> = None;
        if conn.as_ref().is_some_and(|c| !c.is_up()) {
            failure = Some("connection lost".into());
        } else if conn.is_none() {
            if Instant::now() < retry_at {
                tokio::time::sleep(STOP_WAIT.min(retry_at - Instant::now())).await;
            } else {
                match or_stop(stop, open(&addr, opts.max_in_flight)).await {
                    None => break,
                    Some(Ok(c)) => {
                        conn = Some(c);
                        backoff = BACKOFF_MIN;
                        st.attempt = 0;
                        st.next_attempt_in = None;
                    }
                    Some(Err(e)) => failure = Some(format!("reconnect: {e}")),
                }
            }
        }
        if let (Some(c), None, None) = (conn.as_ref(), messages.as_ref(), failure.as_ref()) {
            match or_stop(stop, consume(&c.js, opts, &filter_subject, through + 1)).await {
                None => break,
                Some(Ok(m)) => {
                    messages = Some(m);
                    consumer_seq = 0;
                }
                Some(Err(why)) => failure = Some(why),
            }
        }
        let mut batch_through = through;
        let mut appended = 0u64;
        if let (Some(m), None) = (messages.as_mut(), failure.as_ref()) {
            let batch_started = Instant::now();
            for n in 0..BATCH_MAX {
                if n > 0 && (batch_started.elapsed() >= BATCH_TIME || stop.load(Ordering::Relaxed)) {
                    break;
                }
                let wait = if n == 0 { FIRST_WAIT } else { NEXT_WAIT };
                let msg = match tokio::time::timeout(wait, m.next()).await {
                    Err(_) => break,
                    Ok(None) => {
                        failure = Some("the consumer ended".to_string());
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        failure = Some(e.to_string());
                        break;
                    }
                    Ok(Some(Ok(msg))) => msg,
                };
                let (seq, delivered, pending) = match msg.info() {
                    Ok(info) => (info.stream_sequence, info.consumer_sequence, info.pending),
                    Err(e) => {
                        failure = Some(format!("a message without JetStream metadata: {e}"));
                        break;
                    }
                };
                // A gap in the consumer's sequence is a message lost on the way: start over
                // after the last one taken.
                if delivered != consumer_seq + 1 {
                    failure = Some(format!("consumer sequence {delivered} after {consumer_seq}"));
                    break;
                }
                consumer_seq = delivered;
                st.lag = pending;
                if seq <= batch_through {
                    continue;
                }
                if take(ctx, producer, parts, seq, &msg, &mut stats)? {
                    appended += 1;
                }
                batch_through = seq;
            }
        }
        if batch_through > through {
            // Durable first, then the positions that describe it.
            for (p, part) in parts.iter_mut().enumerate() {
                if part.dirty {
                    producer.sync_partition(p as u32)?;
                    part.dirty = false;
                }
            }
            for part in parts.iter_mut() {
                part.pos.stream_seq = part.pos.stream_seq.max(batch_through);
                if part.extra == 0 {
                    part.reader = None;
                }
                part.file.store_import(part.pos, false)?;
            }
            through = batch_through;
            stats.records += appended;
            st.records = stats.records;
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
    stats.retries = st.retries;
    stats.elapsed = started.elapsed();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keeps_the_partition_only_for_an_equal_count_else_follows_the_key() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(HEADER_KEY, "77");
        h.insert(HEADER_TIMESTAMP_NS, "123");
        h.insert(HEADER_PARTITIONS, "4");
        assert_eq!(route("shoal.t.3", Some(&h), "shoal.t", 4), (3, 77, Some(123)));
        // Another count: the key decides, below the count too.
        for partitions in [2, 3, 8] {
            assert_eq!(route("shoal.t.1", Some(&h), "shoal.t", partitions).0, partition_for_key(77, partitions));
        }
        // No count (not a shoal export of this version): the key decides.
        let mut old = async_nats::HeaderMap::new();
        old.insert(HEADER_KEY, "77");
        assert_eq!(route("shoal.t.3", Some(&old), "shoal.t", 4), (partition_for_key(77, 4), 77, None));
        let k = key_hash(b"other.subject");
        assert_eq!(route("other.subject", None, "shoal.t", 4), (partition_for_key(k, 4), k, None));
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(HEADER_KEY, "not a number");
        assert_eq!(route("shoal.t.1", Some(&bad), "shoal.t", 4).1, key_hash(b"shoal.t.1"));
    }
}
