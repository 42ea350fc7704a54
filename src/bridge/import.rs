//! The importer: JetStream stream -> topic (see the module docs of [`super`] for why a
//! restart neither skips nor duplicates).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures_util::StreamExt;

use super::positions::{create_dir, ImportPosition, PositionFile};
use super::{
    check_names, connect, get_stream, next_backoff, positions_dir, runtime, BridgeError, BridgeOptions, BridgeStats,
    BridgeStatus, BACKOFF_MIN, HEADER_KEY,
};
use crate::bus::{key_hash, partition_for_key, Bus, TopicProducer};
use crate::log::{Offset, Reader};

const BATCH_MAX: usize = 512;
const FIRST_WAIT: Duration = Duration::from_millis(200);
const NEXT_WAIT: Duration = Duration::from_millis(5);
const STATUS_EVERY: Duration = Duration::from_secs(1);

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

/// Where a message goes.
fn route(subject: &str, headers: Option<&async_nats::HeaderMap>, prefix: &str, partitions: u32) -> (u32, u64) {
    let key = headers.and_then(|h| h.get(HEADER_KEY)).and_then(|v| v.as_str().parse::<u64>().ok());
    if let Some(key) = key {
        let p = subject
            .strip_prefix(prefix)
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&p| p < partitions);
        if let Some(p) = p {
            return (p, key);
        }
        return (partition_for_key(key, partitions), key);
    }
    let key = key_hash(subject.as_bytes());
    (partition_for_key(key, partitions), key)
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
    let ctx =
        Ctx { topic, opts, dir: dir.display().to_string(), prefix: opts.prefix(topic), partitions: t.partitions() };
    runtime()?.block_on(run(&ctx, &mut producer, &mut parts, stop, status, started))
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
    let (p, key) = route(msg.subject.as_str(), msg.headers.as_ref(), &ctx.prefix, ctx.partitions);
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
    let offset = producer.send_to(p, key, &msg.payload)?;
    debug_assert_eq!(offset.0, part.pos.local_next);
    part.pos.local_next = offset.0 + 1;
    part.dirty = true;
    Ok(true)
}

async fn run(
    ctx: &Ctx<'_>,
    producer: &mut TopicProducer,
    parts: &mut [Part],
    stop: &AtomicBool,
    status: &mut dyn FnMut(&BridgeStatus),
    started: Instant,
) -> Result<BridgeStats, BridgeError> {
    let opts = ctx.opts;
    let client = connect(&opts.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = get_stream(&js, opts, format!("{}.>", ctx.prefix)).await?;
    let filter_subject = opts.subject_prefix.as_ref().map(|p| format!("{p}.>")).unwrap_or_default();

    // Every message at or below `through` is in the topic (or was never ours).
    let mut through = parts.iter().map(|p| p.pos.stream_seq).min().unwrap_or(0);
    let mut stats = BridgeStats::default();
    let mut st = BridgeStatus::default();
    let mut messages = None;
    let mut backoff = BACKOFF_MIN;
    let mut last_status = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if messages.is_none() {
            let config = OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: through + 1 },
                filter_subject: filter_subject.clone(),
                ..Default::default()
            };
            let made = match stream.create_consumer(config).await {
                Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match made {
                Ok(m) => {
                    messages = Some(m);
                    st.connected = true;
                }
                Err(why) => {
                    st.retries += 1;
                    st.connected = false;
                    st.last_error = Some(format!("consumer: {why}"));
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                    continue;
                }
            }
        }
        let Some(m) = messages.as_mut() else { continue };
        let mut batch_through = through;
        let mut appended = 0u64;
        let mut failure = None;
        for n in 0..BATCH_MAX {
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
            let (seq, pending) = match msg.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(e) => {
                    failure = Some(format!("a message without JetStream metadata: {e}"));
                    break;
                }
            };
            st.lag = pending;
            if seq <= batch_through {
                continue;
            }
            if take(ctx, producer, parts, seq, &msg, &mut stats)? {
                appended += 1;
            }
            batch_through = seq;
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
            st.connected = true;
            backoff = BACKOFF_MIN;
        }
        if let Some(why) = failure {
            messages = None;
            st.retries += 1;
            st.connected = false;
            st.last_error = Some(why);
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
        }
        if last_status.elapsed() >= STATUS_EVERY {
            // Idle but connected counts as connected.
            st.connected = messages.is_some() && client.connection_state() == async_nats::connection::State::Connected;
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
    fn routing_follows_the_subject_of_a_shoal_export_else_the_key() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(HEADER_KEY, "77");
        assert_eq!(route("shoal.t.3", Some(&h), "shoal.t", 4), (3, 77));
        assert_eq!(route("shoal.t.9", Some(&h), "shoal.t", 4), (partition_for_key(77, 4), 77));
        let k = key_hash(b"other.subject");
        assert_eq!(route("other.subject", None, "shoal.t", 4), (partition_for_key(k, 4), k));
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(HEADER_KEY, "not a number");
        assert_eq!(route("shoal.t.1", Some(&bad), "shoal.t", 4).1, key_hash(b"shoal.t.1"));
    }
}
