//! The exporter: topic -> JetStream stream (see the module docs of [`super`]).

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::header::{HeaderName, NATS_MESSAGE_ID};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{HeaderMap, Subject};
use futures_util::FutureExt;

use super::positions::{create_dir, PositionFile};
use super::{
    check_names, encode_key_text, next_backoff, open, or_stop, parse_url, positions_dir, push_u64, start, BridgeError,
    BridgeOptions, BridgeStats, BridgeStatus, Conn, Meta, ACK_TIMEOUT, BACKOFF_MIN, HEADER_KEY_TEXT, HEADER_META,
    STOP_DRAIN,
};
use crate::bus::Bus;
use crate::log::{Offset, Reader};

const IDLE_POLL: Duration = Duration::from_millis(10);
const STATUS_EVERY: Duration = Duration::from_secs(1);
const SYNC_EVERY: Duration = Duration::from_secs(1);
const STORE_EVERY: Duration = Duration::from_millis(100);

/// The name of [`HEADER_META`], built once.
const META: HeaderName = HeaderName::from_static(HEADER_META);
const KEY_TEXT: HeaderName = HeaderName::from_static(HEADER_KEY_TEXT);

struct Part {
    /// `<prefix>.<p>`; a clone shares its bytes.
    subject: Subject,
    /// `<topic>/<p>/`, the message ids' prefix.
    id_prefix: String,
    reader: Reader,
    probe: Reader,
    /// Next offset not yet acknowledged (everything below is in the stream).
    acked: u64,
    /// Next offset to publish.
    sent: u64,
    /// Next offset past the end of the partition, as last probed.
    end: u64,
    stored: u64,
    file: PositionFile,
}

/// Publishes every record of every partition of `topic` to the JetStream stream
/// `opts.stream`, resuming from the stored positions, and follows the topic until `stop` is
/// set. `status` is called about once per second.
///
/// Called on a thread inside a tokio runtime, it runs the bridge on a thread of its own and
/// blocks until it ends (see the module docs, "In a tokio service"); from async code, await
/// [`export_async`] instead.
///
/// # Errors
/// [`BridgeError::BadUrl`], [`BridgeError::Unreachable`] (at start, after
/// [`super::CONNECT_ATTEMPTS`] tries), [`BridgeError::NoStream`], bus and log errors, a
/// damaged positions file. Once running, NATS failures are retried, not returned.
pub fn export(
    bus: &Bus,
    topic: &str,
    opts: &BridgeOptions,
    stop: &AtomicBool,
    status: &mut dyn FnMut(&BridgeStatus),
) -> Result<BridgeStats, BridgeError> {
    super::off_runtime(status, |status| export_here(bus, topic, opts, stop, status))
}

/// [`export`] for async code: runs the bridge on the current tokio runtime's blocking pool
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
/// Those of [`export`], and [`BridgeError::NoRuntime`] when polled outside a tokio runtime.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::{atomic::AtomicBool, Arc};
/// use shoal::bridge::{BridgeOptions, export_async};
///
/// let bus = shoal::bus::Bus::open("/var/lib/app/bus")?;
/// let opts = BridgeOptions::default().nats_url("nats://127.0.0.1:4222").stream("ORDERS");
/// let stop = Arc::new(AtomicBool::new(false));
/// let export = export_async(bus, "orders", opts, stop, |status| eprintln!("{status:?}"));
/// // Runs until Ctrl-C: dropping the future stops the bridge, positions stored.
/// tokio::select! {
///     stats = export => println!("{} records", stats?.records),
///     _ = tokio::signal::ctrl_c() => println!("stopped"),
/// }
/// # Ok(())
/// # }
/// ```
pub async fn export_async(
    bus: Bus,
    topic: impl Into<String>,
    opts: BridgeOptions,
    stop: std::sync::Arc<AtomicBool>,
    mut status: impl FnMut(&BridgeStatus) + Send + 'static,
) -> Result<BridgeStats, BridgeError> {
    let topic = topic.into();
    super::on_blocking_pool("shoal::bridge::export_async", stop, move |stop| {
        export_here(&bus, &topic, &opts, stop, &mut status)
    })
    .await
}

fn export_here(
    bus: &Bus,
    topic: &str,
    opts: &BridgeOptions,
    stop: &AtomicBool,
    status: &mut dyn FnMut(&BridgeStatus),
) -> Result<BridgeStats, BridgeError> {
    check_names(topic, opts)?;
    let started = Instant::now();
    let t = bus.topic(topic)?;
    let prefix = opts.prefix(topic);
    let dir = positions_dir(bus, "export", topic, &opts.stream);
    create_dir(&dir)?;
    let mut parts = Vec::with_capacity(t.partitions() as usize);
    for p in 0..t.partitions() {
        let (file, next) = PositionFile::open_export(dir.join(p.to_string()))?;
        let log_dir = t.partition_dir(p)?;
        let mut reader = Reader::open(&log_dir)?;
        reader.seek(Offset(next))?;
        let mut probe = Reader::open(&log_dir)?;
        probe.seek(Offset(next))?;
        parts.push(Part {
            subject: Subject::from(format!("{prefix}.{p}")),
            id_prefix: format!("{topic}/{p}/"),
            reader,
            probe,
            acked: next,
            sent: next,
            end: next,
            stored: next,
            file,
        });
    }
    run(opts, &prefix, &mut parts, stop, status, started)
}

fn store(parts: &mut [Part], sync: bool) -> Result<(), BridgeError> {
    for part in parts.iter_mut() {
        if part.stored != part.acked || sync {
            part.file.store_export(part.acked, sync)?;
            part.stored = part.acked;
        }
    }
    Ok(())
}

fn probe(parts: &mut [Part]) -> Result<u64, BridgeError> {
    let mut lag = 0;
    for part in parts.iter_mut() {
        while part.probe.next_ref()?.is_some() {}
        part.end = part.probe.next_offset().0.max(part.sent);
        lag += part.end.saturating_sub(part.acked);
    }
    Ok(lag)
}

/// Counts one acknowledgement of `offset` of partition `i`.
fn acked(parts: &mut [Part], st: &mut BridgeStatus, i: usize, offset: u64, duplicate: bool) {
    let part = &mut parts[i];
    debug_assert_eq!(part.acked, offset, "acknowledgements arrive in publish order");
    part.acked = offset + 1;
    if duplicate {
        st.duplicates += 1;
    } else {
        st.records += 1;
    }
}

/// Publishes records to fill the window (one per partition in turn), then collects the
/// oldest acknowledgement, or sleeps [`IDLE_POLL`] when nothing is in flight; runs on the
/// connection's runtime. `Ok(Err(why))` when the connection failed, `Ok(Ok(false))` when
/// stopped meanwhile.
async fn step(
    c: &Conn,
    parts: &mut [Part],
    in_flight: &mut VecDeque<(usize, u64, PublishAckFuture)>,
    st: &mut BridgeStatus,
    next_part: &mut usize,
    max_in_flight: usize,
    stop: &AtomicBool,
) -> Result<Result<bool, String>, BridgeError> {
    let js = &c.js;
    let partitions = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    let mut idle_parts = 0;
    while in_flight.len() < max_in_flight && idle_parts < parts.len() {
        let i = *next_part % parts.len();
        *next_part = next_part.wrapping_add(1);
        let part = &mut parts[i];
        let Some(rec) = part.reader.next_ref()? else {
            idle_parts += 1;
            continue;
        };
        idle_parts = 0;
        let offset = rec.offset().0;
        // Two headers; each value is one string the header map keeps (it takes owned
        // strings), written digit by digit without `format!`.
        let mut id = String::with_capacity(part.id_prefix.len() + 20);
        id.push_str(&part.id_prefix);
        push_u64(&mut id, offset);
        let mut meta = String::with_capacity(48);
        // The record's original time: its event time when it has one (an imported record's),
        // else its append time.
        let timestamp_ns = rec.event_time_ns().unwrap_or(rec.timestamp_ns());
        Meta { key: rec.key(), timestamp_ns, partitions }.encode_into(&mut meta);
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, id);
        headers.insert(META, meta);
        if let Some(text) = rec.key_bytes() {
            let mut value = String::with_capacity(text.len());
            encode_key_text(text, &mut value);
            headers.insert(KEY_TEXT, value);
        }
        let msg = PublishMessage::build().payload(rec.payload().to_vec().into()).headers(headers);
        let publish = js.send_publish(part.subject.clone(), msg);
        tokio::pin!(publish);
        // Most publishes go out at once: no timer (and no clock read) for those.
        let sent = match publish.as_mut().now_or_never() {
            Some(sent) => Some(Ok(sent)),
            None => or_stop(stop, tokio::time::timeout(ACK_TIMEOUT, publish)).await,
        };
        match sent {
            None => return Ok(Ok(false)),
            Some(Ok(Ok(fut))) => {
                part.sent = offset + 1;
                in_flight.push_back((i, offset, fut));
            }
            Some(Ok(Err(e))) => return Ok(Err(format!("publish: {e}"))),
            Some(Err(_)) => return Ok(Err("publish: timed out".into())),
        }
    }
    // Collect the oldest acknowledgement (others resolve meanwhile in the client).
    let Some((i, offset, fut)) = in_flight.pop_front() else {
        tokio::time::sleep(IDLE_POLL).await;
        return Ok(Ok(true));
    };
    // The acknowledgement future times out by itself after ACK_TIMEOUT (the context's
    // timeout): no second timer per record.
    match or_stop(stop, fut.into_future()).await {
        None => Ok(Ok(false)),
        Some(Ok(ack)) => {
            acked(parts, st, i, offset, ack.duplicate);
            st.connected = true;
            Ok(Ok(true))
        }
        Some(Err(e)) => Ok(Err(format!("acknowledgement: {e}"))),
    }
}

fn run(
    opts: &BridgeOptions,
    prefix: &str,
    parts: &mut [Part],
    stop: &AtomicBool,
    status: &mut dyn FnMut(&BridgeStatus),
    started: Instant,
) -> Result<BridgeStats, BridgeError> {
    let addr = parse_url(&opts.nats_url)?;
    let Some((first, _stream)) = start(opts, prefix, true, stop)? else {
        return Ok(BridgeStats { elapsed: started.elapsed(), ..Default::default() });
    };
    let mut conn: Option<Conn> = Some(first);

    let mut in_flight: VecDeque<(usize, u64, PublishAckFuture)> = VecDeque::with_capacity(opts.max_in_flight);
    let mut st = BridgeStatus { connected: true, ..Default::default() };
    let mut backoff = BACKOFF_MIN;
    // While disconnected: when the next connection attempt is due.
    let mut retry_at = Instant::now();
    let mut last_status = Instant::now();
    let mut last_sync = Instant::now();
    let mut last_store = Instant::now();
    let mut next_part = 0usize;
    loop {
        if stop.load(Ordering::Relaxed) || opts.max_records.is_some_and(|max| st.records >= max) {
            // Collect what arrives within STOP_DRAIN; the rest is re-sent (and de-duplicated)
            // by the next run.
            if let Some(c) = conn.as_ref() {
                c.block_on(async {
                    let deadline = tokio::time::Instant::now() + STOP_DRAIN;
                    while let Some((i, offset, fut)) = in_flight.pop_front() {
                        match tokio::time::timeout_at(deadline, fut).await {
                            Ok(Ok(ack)) => acked(parts, &mut st, i, offset, ack.duplicate),
                            _ => break,
                        }
                    }
                });
            }
            break;
        }
        let mut failure: Option<String> = None;
        if conn.as_ref().is_some_and(|c| !c.is_up()) {
            failure = Some("connection lost".into());
        }
        if conn.is_none() {
            let now = Instant::now();
            if now < retry_at {
                std::thread::sleep(IDLE_POLL.min(retry_at - now));
            } else {
                match open(&addr, opts.max_in_flight, stop) {
                    Ok(None) => continue,
                    Ok(Some(c)) => {
                        conn = Some(c);
                        backoff = BACKOFF_MIN;
                        st.attempt = 0;
                        st.next_attempt_in = None;
                        st.connected = true;
                    }
                    Err(e) => failure = Some(format!("reconnect: {e}")),
                }
            }
        }
        if let (Some(c), None) = (conn.as_ref(), failure.as_ref()) {
            let stepped =
                c.block_on(step(c, parts, &mut in_flight, &mut st, &mut next_part, opts.max_in_flight, stop))?;
            match stepped {
                Ok(true) => {}
                // Stopped while waiting: what is left in flight is re-sent by the next run.
                Ok(false) => {
                    in_flight.clear();
                    break;
                }
                Err(why) => failure = Some(why),
            }
        }
        if let Some(why) = failure {
            // Forget everything in flight, discard the connection with whatever its client
            // still holds, and rewind: the re-sends go out in offset order on a fresh
            // connection and carry the same message ids, so the ones that did reach the
            // stream are de-duplicated.
            in_flight.clear();
            conn = None;
            for part in parts.iter_mut() {
                part.reader.seek(Offset(part.acked))?;
                part.sent = part.acked;
            }
            st.retries += 1;
            st.connected = false;
            st.attempt += 1;
            st.last_error = Some(why);
            retry_at = Instant::now() + backoff;
            backoff = next_backoff(backoff);
        }
        if last_store.elapsed() >= STORE_EVERY {
            let sync = last_sync.elapsed() >= SYNC_EVERY;
            store(parts, sync)?;
            last_store = Instant::now();
            if sync {
                last_sync = last_store;
            }
        }
        if last_status.elapsed() >= STATUS_EVERY {
            st.lag = probe(parts)?;
            st.in_flight = in_flight.len();
            st.elapsed = started.elapsed();
            st.connected = conn.as_ref().is_some_and(Conn::is_up);
            st.next_attempt_in = (!st.connected).then(|| retry_at.saturating_duration_since(Instant::now()));
            status(&st);
            last_status = Instant::now();
        }
    }
    store(parts, true)?;
    // Every publish that counts was acknowledged: nothing to flush, and a flush on a dead
    // connection would wait for ever.
    drop(conn);
    Ok(BridgeStats {
        records: st.records,
        duplicates: st.duplicates,
        recovered: 0,
        retries: st.retries,
        elapsed: started.elapsed(),
    })
}
