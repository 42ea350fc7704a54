//! The exporter: topic -> JetStream stream (see the module docs of [`super`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;

use super::positions::{create_dir, PositionFile};
use super::{
    check_names, get_stream, next_backoff, positions_dir, runtime, BridgeError, BridgeOptions, BridgeStats,
    BridgeStatus, ACK_TIMEOUT, BACKOFF_MIN, CONNECT_ATTEMPTS, HEADER_KEY, HEADER_OFFSET, HEADER_PARTITION,
    HEADER_TIMESTAMP_NS,
};
use crate::bus::Bus;
use crate::log::{Offset, Reader};

const IDLE_POLL: Duration = Duration::from_millis(10);
const STATUS_EVERY: Duration = Duration::from_secs(1);
const SYNC_EVERY: Duration = Duration::from_secs(1);
const STORE_EVERY: Duration = Duration::from_millis(100);

/// One connection to the server, used until its first failure and then thrown away whole.
///
/// The client's connection handler runs on a runtime of its own, so that discarding the
/// connection ends that task at once: the client never reconnects on its own and never
/// sends the publishes it still holds on a later connection (that would let a later offset
/// of a partition reach the stream before an earlier one lost with the old connection).
struct Conn {
    /// Dropped to end the thread that drives the connection's runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

/// One attempt to open a [`Conn`]. Dropping the [`Conn`] stops its runtime's thread, which
/// then drops the runtime and with it the connection handler, without a flush.
async fn open(addr: &async_nats::ServerAddr, opts: &BridgeOptions) -> Result<Conn, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime for the connection: {e}"))?;
    let handle = rt.handle().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("shoal-nats-conn".into())
        .spawn(move || {
            let _ = rt.block_on(stop_rx);
            drop(rt);
        })
        .map_err(|e| format!("cannot start the connection's thread: {e}"))?;
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
    let client = match handle.spawn(connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(format!("connection task: {e}")),
    };
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .max_ack_inflight(opts.max_in_flight.max(1))
        .backpressure_on_inflight(true)
        .build(client.clone());
    Ok(Conn { _stop: stop_tx, client, js })
}

fn parse_url(url: &str) -> Result<async_nats::ServerAddr, BridgeError> {
    url.parse().map_err(|e: std::io::Error| BridgeError::BadUrl { url: url.to_string(), why: e.to_string() })
}

struct Part {
    subject: String,
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
            subject: format!("{prefix}.{p}"),
            reader,
            probe,
            acked: next,
            sent: next,
            end: next,
            stored: next,
            file,
        });
    }
    runtime()?.block_on(run(topic, opts, &prefix, &mut parts, stop, status, started))
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

async fn run(
    topic: &str,
    opts: &BridgeOptions,
    prefix: &str,
    parts: &mut [Part],
    stop: &AtomicBool,
    status: &mut dyn FnMut(&BridgeStatus),
    started: Instant,
) -> Result<BridgeStats, BridgeError> {
    let addr = parse_url(&opts.nats_url)?;
    let mut conn = None;
    let mut delay = BACKOFF_MIN;
    let mut why = String::new();
    for attempt in 1..=CONNECT_ATTEMPTS {
        match open(&addr, opts).await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) => why = e,
        }
        if attempt < CONNECT_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = next_backoff(delay);
        }
    }
    let Some(first) = conn else {
        return Err(BridgeError::Unreachable { url: opts.nats_url.clone(), attempts: CONNECT_ATTEMPTS, why });
    };
    get_stream(&first.js, opts, format!("{prefix}.>")).await?;
    let mut conn = Some(first);

    let mut in_flight: VecDeque<(usize, u64, PublishAckFuture)> = VecDeque::with_capacity(opts.max_in_flight);
    let mut st = BridgeStatus { connected: true, ..Default::default() };
    let mut backoff = BACKOFF_MIN;
    let mut last_status = Instant::now();
    let mut last_sync = Instant::now();
    let mut last_store = Instant::now();
    let mut next_part = 0usize;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && in_flight.is_empty() {
            break;
        }
        // Fill the window, one record per partition in turn.
        let mut failure: Option<String> = None;
        if conn.is_none() && !stopping {
            match open(&addr, opts).await {
                Ok(c) => conn = Some(c),
                Err(e) => failure = Some(format!("reconnect: {e}")),
            }
        }
        if let (Some(c), None, false) = (conn.as_ref(), failure.as_ref(), stopping) {
            let js = &c.js;
            let mut idle_parts = 0;
            while in_flight.len() < opts.max_in_flight && idle_parts < parts.len() {
                let i = next_part % parts.len();
                next_part = next_part.wrapping_add(1);
                let part = &mut parts[i];
                let Some(rec) = part.reader.next_ref()? else {
                    idle_parts += 1;
                    continue;
                };
                idle_parts = 0;
                let offset = rec.offset().0;
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{topic}/{i}/{offset}"));
                headers.insert(HEADER_KEY, rec.key().to_string());
                headers.insert(HEADER_TIMESTAMP_NS, rec.timestamp_ns().to_string());
                headers.insert(HEADER_PARTITION, i.to_string());
                headers.insert(HEADER_OFFSET, offset.to_string());
                let msg = PublishMessage::build().payload(rec.payload().to_vec().into()).headers(headers);
                match tokio::time::timeout(ACK_TIMEOUT, js.send_publish(part.subject.clone(), msg)).await {
                    Ok(Ok(fut)) => {
                        part.sent = offset + 1;
                        in_flight.push_back((i, offset, fut));
                    }
                    Ok(Err(e)) => {
                        failure = Some(format!("publish: {e}"));
                        break;
                    }
                    Err(_) => {
                        failure = Some("publish: timed out".into());
                        break;
                    }
                }
            }
        }
        // Collect the oldest acknowledgement (others resolve meanwhile in the client).
        if failure.is_none() {
            if let Some((i, offset, fut)) = in_flight.pop_front() {
                match tokio::time::timeout(ACK_TIMEOUT, fut).await {
                    Ok(Ok(_ack)) => {
                        let part = &mut parts[i];
                        debug_assert_eq!(part.acked, offset, "acknowledgements arrive in publish order");
                        part.acked = offset + 1;
                        st.records += 1;
                        st.connected = true;
                        backoff = BACKOFF_MIN;
                    }
                    Ok(Err(e)) => failure = Some(format!("acknowledgement: {e}")),
                    Err(_) => failure = Some(format!("no acknowledgement within {ACK_TIMEOUT:?}")),
                }
            } else if !stopping {
                tokio::time::sleep(IDLE_POLL).await;
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
            st.last_error = Some(why);
            if stopping {
                break;
            }
            let wait = backoff;
            backoff = next_backoff(backoff);
            let until = Instant::now() + wait;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(IDLE_POLL.max(wait / 10)).await;
            }
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
            status(&st);
            last_status = Instant::now();
        }
    }
    store(parts, true)?;
    if let Some(c) = conn.take() {
        let _ = c.client.flush().await;
    }
    Ok(BridgeStats { records: st.records, recovered: 0, retries: st.retries, elapsed: started.elapsed() })
}
