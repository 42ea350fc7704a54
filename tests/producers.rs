//! Many producers on one log or partition: threads and processes appending at once, producers
//! killed with SIGKILL at random moments while others go on, an appender abandoned in-process,
//! and the exclusive single-writer mode.
//!
//! Every payload checks itself: it is a pure function of (producer id, sequence number) with a
//! CRC32C at its end, so a record read back is either exactly the one that producer appended
//! as that sequence number or garbage ([`decode`]). After each run the log is read back
//! ([`read_back`]) and checked: offsets dense, no garbage, every producer's records the prefix
//! `0..n` of its sequence in increasing offset order (so none is lost, duplicated or
//! reordered), and every offset an append returned holds that record.
//!
//! Child processes are this test binary run again (see `common`); they report on stdout:
//! `a <seq> <offset>` per append (buffered, flushed with each ack), `ack <seq> <offset>` once
//! a sync or `wait_durable` made that record durable, `done <count> <longest append ns> <its seq> <appends over 10 ms> <its start, unix ns>` at a
//! clean end, `error <text>` on any error. Set `SHOAL_TEST_SEED` to replay the kill loop,
//! `SHOAL_KILL_ROUNDS=N` to run N rounds of it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal::bus::Bus;
use shoal::log::{Appender, Durability, IoBackend, LogError, LogOptions, Offset, Reader, Tailer, Writers};

use common::{backend_from_name, backend_name, child_command, child_mode, parse_report, small_opts, BACKENDS, MARK};

/// The longest a surviving producer's append call may take. Not a performance target: the
/// design bounds a dead producer's hold on the others far lower (a robust lock is handed over
/// at once, the tail repaired in microseconds); this only catches a producer that waits on a
/// dead one (a lock never handed over, a timeout-based takeover), with room for a loaded
/// 2-core CI machine that runs three builds beside the test.
const STALL_BOUND: Duration = Duration::from_secs(2);
/// How long a test waits for a child (or a tailer) that should finish on its own before it
/// kills it and fails: a hang is a failure, never a stuck test.
const RUN_WAIT: Duration = Duration::from_secs(60);
/// How long `wait_durable` may take in a child before the child reports an error.
const DURABLE_WAIT: Duration = Duration::from_secs(20);
/// Rounds of the SIGKILL loop in the suite (`SHOAL_KILL_ROUNDS` overrides).
const KILL_ROUNDS: usize = 50;
/// Kill rounds that share one log (then the next rounds start a new one, so that a long run
/// does not open ever longer logs).
const ROUNDS_PER_LOG: usize = 25;
/// Records each producer of a kill round appends when it is not killed.
const KILL_RECORDS: u64 = 1_000;

// ---------------------------------------------------------------------------------------------
// Payloads and the read-back check.

/// The payload of record `seq` of producer `producer`: producer id, sequence number, 0 to 239
/// pseudo-random bytes drawn from both, then a CRC32C of all that.
fn payload(producer: u32, seq: u64) -> Vec<u8> {
    let mut x = (u64::from(producer) << 40) ^ seq ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = (next() % 240) as usize;
    let mut p = Vec::with_capacity(16 + len);
    p.extend_from_slice(&producer.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend((0..len).map(|_| next() as u8));
    let crc = crc32c::crc32c(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    p
}

/// The (producer, seq) a payload is, when it is byte for byte the one [`payload`] makes.
fn decode(bytes: &[u8]) -> Option<(u32, u64)> {
    let producer = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?);
    (payload(producer, seq) == bytes).then_some((producer, seq))
}

/// What a log holds from some offset on: per producer, the offsets of its records in order.
#[derive(Debug, Default)]
struct Found {
    /// The offset after the last record.
    end: u64,
    /// Producer -> offsets of its records; index `i` is its sequence number `i` (checked).
    offsets: BTreeMap<u32, Vec<u64>>,
}

impl Found {
    /// Records of `producer` found (its sequence numbers `0..n`).
    fn count(&self, producer: u32) -> u64 {
        self.offsets.get(&producer).map_or(0, |v| v.len() as u64)
    }

    /// The offset of record `seq` of `producer`, when present.
    fn offset_of(&self, producer: u32, seq: u64) -> Option<u64> {
        self.offsets.get(&producer)?.get(seq as usize).copied()
    }

    /// How often two neighbouring records come from different producers.
    fn switches(&self) -> usize {
        let mut owner: Vec<(u64, u32)> =
            self.offsets.iter().flat_map(|(&p, offs)| offs.iter().map(move |&o| (o, p))).collect();
        owner.sort_unstable();
        owner.windows(2).filter(|w| w[0].1 != w[1].1).count()
    }
}

/// Reads the log in `dir` from offset `from` to its end and checks it: offsets dense, every
/// payload intact, each producer's records its sequence numbers from 0 up, in offset order
/// (no gap, no duplicate, no reordering). `context` goes into every failure message.
fn read_back(dir: &Path, from: u64, context: &str) -> Found {
    let mut reader = Reader::open(dir).unwrap_or_else(|e| panic!("{context}: open a reader: {e}"));
    if from > 0 {
        reader.seek(Offset(from)).unwrap_or_else(|e| panic!("{context}: seek to {from}: {e}"));
    }
    let mut found = Found { end: from, offsets: BTreeMap::new() };
    // Bounded: a log holds finitely many records, and the reader never waits.
    while let Some(rec) = reader.next().unwrap_or_else(|e| panic!("{context}: read after offset {}: {e}", found.end)) {
        let offset = rec.offset().0;
        assert_eq!(offset, found.end, "{context}: offsets are not dense");
        let Some((producer, seq)) = decode(rec.payload()) else {
            let head = &rec.payload()[..rec.payload().len().min(32)];
            panic!("{context}: garbage at offset {offset} ({} bytes, starting {head:02x?})", rec.payload().len());
        };
        let mine = found.offsets.entry(producer).or_default();
        assert_eq!(
            seq,
            mine.len() as u64,
            "{context}: offset {offset} holds record {seq} of producer {producer}, but {} of its records came \
             before it (a record lost, duplicated or out of order)",
            mine.len()
        );
        mine.push(offset);
        found.end += 1;
    }
    found
}

/// Checks that every `(seq, offset)` an append returned to `producer` holds that record.
fn check_offsets(found: &Found, producer: u32, returned: &[(u64, u64)], context: &str) {
    for &(seq, offset) in returned {
        assert_eq!(
            found.offset_of(producer, seq),
            Some(offset),
            "{context}: producer {producer}'s append {seq} returned offset {offset}, but the record is not there"
        );
    }
}

fn shared_opts(backend: IoBackend, durability: Durability) -> LogOptions {
    small_opts(backend).durability(durability).writers(Writers::Shared)
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// What a child reported.
#[derive(Debug, Default)]
struct ChildReport {
    /// `(seq, offset)` of each append the child reported.
    appended: Vec<(u64, u64)>,
    /// `(seq, offset)` of each record acknowledged durable.
    acked: Vec<(u64, u64)>,
    /// What it reported at a clean end.
    done: Option<Done>,
    /// Errors the child reported.
    errors: Vec<String>,
    /// Lines that are none of these.
    strays: Vec<String>,
}

/// A child's `done` report.
#[derive(Debug, Clone, Copy)]
struct Done {
    /// Records appended.
    count: u64,
    /// The longest append call.
    longest: Duration,
    /// The sequence number of that call.
    longest_seq: u64,
    /// Append calls that took longer than [`SLOW_APPEND`].
    slow: u64,
    /// When the longest call started (system clock, ns since the Unix epoch).
    longest_at_ns: u64,
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Append calls longer than this are counted and reported (the target for a stall
/// caused by a dead producer), not asserted: on a loaded machine the scheduler alone makes
/// some.
const SLOW_APPEND: Duration = Duration::from_millis(10);

fn parse_done(rest: &str) -> Option<Done> {
    let mut parts = rest.split(' ').map(|p| p.parse::<u64>().ok());
    let mut next = || parts.next().flatten();
    Some(Done {
        count: next()?,
        longest: Duration::from_nanos(next()?),
        longest_seq: next()?,
        slow: next()?,
        longest_at_ns: next()?,
    })
}

/// One report event, as sent to the parent while the child runs.
#[derive(Debug, Clone, Copy)]
enum Event {
    Ready,
    Ack(u64),
}

fn parse_two(rest: &str) -> Option<(u64, u64)> {
    let mut parts = rest.split(' ');
    let a = parts.next()?.parse().ok()?;
    let b = parts.next()?.parse().ok()?;
    Some((a, b))
}

/// Reads a child's stdout on a thread until it closes; sends `ready` and acks on `events`.
fn collect(
    stdout: impl Read + Send + 'static,
    child: usize,
    events: mpsc::Sender<(usize, Event)>,
) -> std::thread::JoinHandle<ChildReport> {
    std::thread::spawn(move || {
        let mut report = ChildReport::default();
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            // A line cut short by a kill (no newline at its end) is dropped: it may hold a
            // number cut short.
            match lines.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {}
                _ => break,
            }
            let Some(msg) = parse_report(line.trim_end()) else { continue };
            if msg == "ready" {
                let _ = events.send((child, Event::Ready));
            } else if let Some(pair) = msg.strip_prefix("a ").and_then(parse_two) {
                report.appended.push(pair);
            } else if let Some(pair) = msg.strip_prefix("ack ").and_then(parse_two) {
                report.acked.push(pair);
                let _ = events.send((child, Event::Ack(pair.0)));
            } else if let Some(done) = msg.strip_prefix("done ").and_then(parse_done) {
                report.done = Some(done);
            } else if let Some(e) = msg.strip_prefix("error ") {
                report.errors.push(e.to_string());
            } else {
                report.strays.push(msg.to_string());
            }
        }
        report
    })
}

/// Where a child appends.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// One log: record `seq` goes to the log.
    Log,
    /// Topic `t` of a bus: record `seq` goes to partition `seq % partitions`.
    Topic,
}

/// A child's settings, passed in its environment.
struct ChildSpec<'a> {
    dir: &'a Path,
    target: Target,
    producer: u32,
    records: u64,
    /// An ack (sync or `wait_durable`) after every this many appends.
    ack_every: u64,
    backend: IoBackend,
    /// Wait for a byte on stdin after opening, before appending.
    barrier: bool,
}

fn spawn_child(test_name: &str, spec: &ChildSpec<'_>) -> Child {
    let mode = match spec.target {
        Target::Log => "log",
        Target::Topic => "topic",
    };
    child_command(test_name, mode)
        .env("SHOAL_PROD_DIR", spec.dir)
        .env("SHOAL_PROD_ID", spec.producer.to_string())
        .env("SHOAL_PROD_RECORDS", spec.records.to_string())
        .env("SHOAL_PROD_ACK_EVERY", spec.ack_every.to_string())
        .env("SHOAL_PROD_BACKEND", backend_name(spec.backend))
        .env("SHOAL_PROD_BARRIER", if spec.barrier { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a producer child")
}

/// Where a child appends: a log's appender or a topic's producer.
enum Sink {
    Log(Box<Appender>),
    Topic(shoal::bus::TopicProducer, u32),
}

/// Report lines of a child, buffered; [`Reports::flush`] sends them.
struct Reports(BufWriter<std::io::Stdout>);

impl Reports {
    fn line(&mut self, line: std::fmt::Arguments<'_>) {
        // A parent that went away makes this fail; the child then has nothing left to do.
        if writeln!(self.0, "{MARK}{line}").is_err() {
            std::process::exit(3);
        }
    }

    fn flush(&mut self) {
        if self.0.flush().is_err() {
            std::process::exit(3);
        }
    }

    fn fail(&mut self, what: std::fmt::Arguments<'_>) -> ! {
        self.line(format_args!("error {what}"));
        self.flush();
        std::process::exit(1);
    }
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{name} unset or not a number"))
}

/// The child: appends its records, acking every `ack_every`, then syncs and reports `done`.
fn producer_child(target: Target) -> ! {
    let dir = std::env::var("SHOAL_PROD_DIR").expect("SHOAL_PROD_DIR");
    let producer = env_u64("SHOAL_PROD_ID") as u32;
    let records = env_u64("SHOAL_PROD_RECORDS");
    let ack_every = env_u64("SHOAL_PROD_ACK_EVERY").max(1);
    let backend = backend_from_name(&std::env::var("SHOAL_PROD_BACKEND").expect("SHOAL_PROD_BACKEND"));
    let barrier = std::env::var("SHOAL_PROD_BARRIER").as_deref() == Ok("1");
    let mut out = Reports(BufWriter::new(std::io::stdout()));
    let opts = shared_opts(backend, Durability::Batch);
    let mut sink = match target {
        Target::Log => match Appender::open(&dir, opts) {
            Ok(log) => Sink::Log(Box::new(log)),
            Err(e) => out.fail(format_args!("open: {e}")),
        },
        Target::Topic => {
            let opened = Bus::open(&dir).and_then(|bus| bus.topic("t")).and_then(|topic| {
                let partitions = topic.partitions();
                topic.producer(opts).map(|p| (p, partitions))
            });
            match opened {
                Ok((p, partitions)) => Sink::Topic(p, partitions),
                Err(e) => out.fail(format_args!("open: {e}")),
            }
        }
    };
    if barrier {
        out.line(format_args!("ready"));
        out.flush();
        let mut go = [0u8; 1];
        if std::io::stdin().read_exact(&mut go).is_err() {
            out.fail(format_args!("no go byte on stdin"));
        }
    }
    let (mut longest, mut longest_seq, mut longest_at_ns, mut slow) = (Duration::ZERO, 0, 0, 0u64);
    for seq in 0..records {
        let bytes = payload(producer, seq);
        let started = Instant::now();
        let started_ns = unix_ns();
        let appended = match &mut sink {
            Sink::Log(log) => log.append(&bytes).map_err(|e| e.to_string()),
            Sink::Topic(p, partitions) => {
                p.send_to((seq % u64::from(*partitions)) as u32, seq, &bytes).map_err(|e| e.to_string())
            }
        };
        let took = started.elapsed();
        if took > longest {
            (longest, longest_seq, longest_at_ns) = (took, seq, started_ns);
        }
        slow += u64::from(took > SLOW_APPEND);
        let offset = match appended {
            Ok(offset) => offset,
            Err(e) => out.fail(format_args!("append {seq}: {e}")),
        };
        out.line(format_args!("a {seq} {}", offset.0));
        if (seq + 1) % ack_every == 0 {
            // Alternate the two ways to wait: a sync of everything, or a wait for this record.
            let durable: Result<Offset, String> = match &mut sink {
                Sink::Log(log) if (seq / ack_every) % 2 == 0 => {
                    log.sync().map(|_| log.durable_offset()).map_err(|e| e.to_string())
                }
                Sink::Log(log) => match log.wait_durable(offset, Some(DURABLE_WAIT)) {
                    Ok(true) => Ok(log.durable_offset()),
                    Ok(false) => Err(format!("wait_durable({offset}) timed out after {DURABLE_WAIT:?}")),
                    Err(e) => Err(e.to_string()),
                },
                Sink::Topic(p, partitions) => {
                    let part = (seq % u64::from(*partitions)) as u32;
                    p.sync_partition(part).map_err(|e| e.to_string())
                }
            };
            match durable {
                Ok(durable) if durable > offset => {}
                Ok(durable) => out.fail(format_args!("durable offset {durable} after the sync of {offset}")),
                Err(e) => out.fail(format_args!("sync after {seq}: {e}")),
            }
            out.line(format_args!("ack {seq} {}", offset.0));
            out.flush();
        }
    }
    let closed = match sink {
        Sink::Log(log) => log.close().map_err(|e| e.to_string()),
        Sink::Topic(p, _) => p.close().map_err(|e| e.to_string()),
    };
    if let Err(e) = closed {
        out.fail(format_args!("close: {e}"));
    }
    out.line(format_args!("done {records} {} {longest_seq} {slow} {longest_at_ns}", longest.as_nanos()));
    out.flush();
    std::process::exit(0);
}

fn child_entry() {
    match child_mode().as_deref() {
        Some("log") => producer_child(Target::Log),
        Some("topic") => producer_child(Target::Topic),
        _ => {}
    }
}

/// Waits for `child` until `deadline`; kills it and panics past it.
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran {RUN_WAIT:?} after it started; killed it");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks a child that ran to its end: exit 0, no error, `done` with all its records, every
/// record present, every returned offset right. Returns its `done` report.
fn check_finished(
    found: &Found,
    producer: u32,
    records: u64,
    status: ExitStatus,
    report: &ChildReport,
    context: &str,
) -> Done {
    assert!(report.errors.is_empty(), "{context}: producer {producer} saw errors: {:?}", report.errors);
    assert!(status.success(), "{context}: producer {producer} exited {status}");
    assert!(report.strays.is_empty(), "{context}: producer {producer} printed {:?}", report.strays);
    let done = report.done.unwrap_or_else(|| panic!("{context}: producer {producer} reported no `done`"));
    let count = done.count;
    assert_eq!(count, records, "{context}: producer {producer} appended {count} records");
    assert_eq!(found.count(producer), records, "{context}: records of producer {producer} in the log");
    assert_eq!(report.appended.len() as u64, records, "{context}: appends producer {producer} reported");
    check_offsets(found, producer, &report.appended, context);
    check_offsets(found, producer, &report.acked, context);
    done
}

// ---------------------------------------------------------------------------------------------
// 1. Threads.

/// 4 threads, each with its own appender on one log (opened together in this thread and moved
/// into its thread), append at once across many segment rollovers, retention off; then every
/// record is there once, in each producer's order, at the offset its append returned, and
/// each producer's sync covers its own last record.
#[test]
fn threads_with_their_own_appenders_share_one_log() {
    const THREADS: u32 = 4;
    const RECORDS: u64 = 2_500;
    for backend in BACKENDS {
        for durability in [Durability::Never, Durability::Batch] {
            let context = format!("{backend:?}, {durability:?}");
            let dir = tempfile::tempdir().expect("temp dir");
            let opts = shared_opts(backend, durability).segment_bytes(256 << 10);
            assert_eq!(opts.retention, shoal::log::Retention::default(), "retention is off");
            let logs: Vec<Appender> = (0..THREADS)
                .map(|i| {
                    Appender::open(dir.path(), opts).unwrap_or_else(|e| panic!("{context}: open appender {i}: {e}"))
                })
                .collect();
            let start = Arc::new(Barrier::new(THREADS as usize));
            let returned: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
                let threads: Vec<_> = logs
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut log)| {
                        let start = start.clone();
                        let context = &context;
                        s.spawn(move || {
                            let producer = i as u32;
                            start.wait();
                            let mut returned = Vec::with_capacity(RECORDS as usize);
                            for seq in 0..RECORDS {
                                let offset = log
                                    .append(&payload(producer, seq))
                                    .unwrap_or_else(|e| panic!("{context}: producer {producer} append {seq}: {e}"));
                                returned.push((seq, offset.0));
                            }
                            let last = Offset(returned.last().expect("appended").1);
                            let synced = log.sync().unwrap_or_else(|e| panic!("{context}: sync: {e}"));
                            assert!(
                                synced > last,
                                "{context}: producer {producer}'s sync returned {synced}, its last is {last}"
                            );
                            let durable = log.durable_offset();
                            assert!(
                                durable > last,
                                "{context}: durable_offset {durable} after producer {producer}'s sync of {last}"
                            );
                            log.close().unwrap_or_else(|e| panic!("{context}: close: {e}"));
                            returned
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().expect("producer thread")).collect()
            });
            let found = read_back(dir.path(), 0, &context);
            assert_eq!(found.end, u64::from(THREADS) * RECORDS, "{context}: records in the log");
            for (producer, returned) in returned.iter().enumerate() {
                assert_eq!(found.count(producer as u32), RECORDS, "{context}: records of producer {producer}");
                check_offsets(&found, producer as u32, returned, &context);
            }
            let segments = common::segment_files(dir.path()).len();
            assert!(segments >= 4, "{context}: the records filled only {segments} segments: no rollover under load");
            eprintln!(
                "{context}: {} records over {segments} segments, {} producer switches",
                found.end,
                found.switches()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Processes.

/// Runs `PRODUCERS` children appending at once to `dir` (all open before any appends) and
/// checks them; returns the children's reports and what was found per partition.
fn run_processes(test_name: &str, dir: &Path, target: Target, records: u64) -> Vec<ChildReport> {
    const PRODUCERS: usize = 3;
    let (events_tx, events) = mpsc::channel();
    let mut children = Vec::new();
    let mut collectors = Vec::new();
    for i in 0..PRODUCERS {
        let spec = ChildSpec {
            dir,
            target,
            producer: i as u32,
            records,
            ack_every: 97 + 50 * i as u64,
            backend: BACKENDS[i % BACKENDS.len()],
            barrier: true,
        };
        let mut child = spawn_child(test_name, &spec);
        collectors.push(collect(child.stdout.take().expect("stdout piped"), i, events_tx.clone()));
        children.push(child);
    }
    drop(events_tx);
    // Every child has its appender open before any appends.
    let deadline = Instant::now() + RUN_WAIT;
    let mut ready = 0;
    while ready < PRODUCERS {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((_, Event::Ready)) => ready += 1,
            Ok(_) => {}
            Err(e) => {
                for child in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!("{target:?}: only {ready} of {PRODUCERS} producers opened within {RUN_WAIT:?} ({e})");
            }
        }
    }
    for child in &mut children {
        child.stdin.take().expect("stdin piped").write_all(b"g").expect("send the go byte");
    }
    let statuses: Vec<ExitStatus> =
        children.iter_mut().map(|c| wait_until(c, deadline, &format!("a {target:?} producer"))).collect();
    let reports: Vec<ChildReport> = collectors.into_iter().map(|c| c.join().expect("collector")).collect();
    for (i, (status, report)) in statuses.iter().zip(&reports).enumerate() {
        assert!(report.errors.is_empty(), "{target:?}: producer {i} saw errors: {:?}", report.errors);
        assert!(status.success(), "{target:?}: producer {i} exited {status}");
        let done = report.done.unwrap_or_else(|| panic!("{target:?}: producer {i} did not finish"));
        assert_eq!(done.count, records, "{target:?}: producer {i}'s records");
        eprintln!(
            "{target:?}: producer {i}: longest append {:?} (append {}), {} appends over {SLOW_APPEND:?}",
            done.longest, done.longest_seq, done.slow
        );
    }
    reports
}

/// 3 processes append at once to one log: same checks as for threads.
#[test]
fn processes_append_to_one_log_at_once() {
    child_entry();
    const RECORDS: u64 = 3_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let reports = run_processes("processes_append_to_one_log_at_once", dir.path(), Target::Log, RECORDS);
    let found = read_back(dir.path(), 0, "log");
    assert_eq!(found.end, RECORDS * reports.len() as u64, "records in the log");
    for (i, report) in reports.iter().enumerate() {
        let producer = i as u32;
        assert_eq!(found.count(producer), RECORDS, "records of producer {producer}");
        check_offsets(&found, producer, &report.appended, "log");
        check_offsets(&found, producer, &report.acked, "log");
    }
    eprintln!("3 processes: {} records, {} producer switches", found.end, found.switches());
}

/// 3 processes append at once to a 4-partition topic, record `seq` to partition `seq % 4`:
/// every partition holds, per producer, exactly its records for that partition in order, at
/// the offsets `send_to` returned.
#[test]
fn processes_append_to_one_topic_at_once() {
    child_entry();
    const RECORDS: u64 = 3_000;
    const PARTITIONS: u32 = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = Bus::open(dir.path()).expect("bus").topic_or_create("t", Some(PARTITIONS)).expect("topic");
    let reports = run_processes("processes_append_to_one_topic_at_once", dir.path(), Target::Topic, RECORDS);
    let mut total = 0;
    for p in 0..PARTITIONS {
        let context = format!("partition {p}");
        let part_dir = topic.partition_dir(p).expect("partition dir");
        let mut reader = Reader::open(&part_dir).unwrap_or_else(|e| panic!("{context}: reader: {e}"));
        // Per producer: its sequence numbers in offset order, and where each one is.
        let mut seen: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut end = 0u64;
        while let Some(rec) = reader.next().unwrap_or_else(|e| panic!("{context}: read: {e}")) {
            assert_eq!(rec.offset().0, end, "{context}: offsets are not dense");
            let (producer, seq) = decode(rec.payload()).unwrap_or_else(|| panic!("{context}: garbage at offset {end}"));
            assert_eq!(
                seq % u64::from(PARTITIONS),
                u64::from(p),
                "{context}: record {seq} of producer {producer} is here"
            );
            seen.entry(producer).or_default().push((seq, end));
            end += 1;
        }
        total += end;
        for (i, report) in reports.iter().enumerate() {
            let producer = i as u32;
            let want: Vec<(u64, u64)> = report
                .appended
                .iter()
                .copied()
                .filter(|(seq, _)| seq % u64::from(PARTITIONS) == u64::from(p))
                .collect();
            assert_eq!(
                want.len() as u64,
                RECORDS / u64::from(PARTITIONS),
                "{context}: appends producer {producer} reported for it"
            );
            assert_eq!(
                seen.get(&producer).map_or(&[][..], |v| &v[..]),
                &want[..],
                "{context}: producer {producer}'s records (seq, offset) are not exactly its appends in order"
            );
        }
    }
    assert_eq!(total, RECORDS * reports.len() as u64, "records in the topic");
}

// ---------------------------------------------------------------------------------------------
// 3. The SIGKILL loop.

/// When the parent kills its victim.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// 0-3 ms after the spawn: often before or during its open.
    Start,
    /// 0-10 ms after its first ack: mid-stream, with acknowledged records.
    AfterFirstAck,
    /// Right after an ack past the middle of its records: many rollovers in.
    Late,
}

fn seed() -> u64 {
    let seed = std::env::var("SHOAL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("kill loop seed: SHOAL_TEST_SEED={seed}");
    seed
}

/// A tailer on a thread following the log from `from`; it checks every record it sees and
/// stops once it has reached the offset sent on its channel, or fails.
fn follow(dir: &Path, from: u64) -> (mpsc::Sender<u64>, std::thread::JoinHandle<Result<u64, String>>) {
    let dir = dir.to_path_buf();
    let (end_tx, end_rx) = mpsc::channel::<u64>();
    let thread = std::thread::spawn(move || {
        let mut tailer = Tailer::open(&dir).map_err(|e| format!("open a tailer: {e}"))?;
        tailer.reader().seek(Offset(from)).map_err(|e| format!("tailer seek to {from}: {e}"))?;
        let mut next = from;
        let mut end: Option<u64> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            if end.is_none() {
                if let Ok(e) = end_rx.try_recv() {
                    end = Some(e);
                    deadline = Some(Instant::now() + RUN_WAIT);
                }
            }
            if end.is_some_and(|e| next >= e) {
                return Ok(next);
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(format!("the tailer stalled at offset {next}, the log ends at {end:?}"));
            }
            match tailer.next(Some(Duration::from_millis(20))) {
                Ok(Some(rec)) => {
                    if rec.offset().0 != next {
                        return Err(format!("the tailer read offset {} where {next} was next", rec.offset()));
                    }
                    if decode(rec.payload()).is_none() {
                        return Err(format!("the tailer read garbage at offset {next}"));
                    }
                    next += 1;
                }
                Ok(None) => {}
                Err(e) => return Err(format!("the tailer failed at offset {next}: {e}")),
            }
        }
    });
    (end_tx, thread)
}

/// A new log for the kill loop, created before a round's tailer opens it.
fn new_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    Appender::open(dir.path(), shared_opts(IoBackend::Auto, Durability::Batch))
        .and_then(Appender::close)
        .expect("create the log");
    dir
}

/// After the last round on a log of `end` records: the whole log reads back once more from
/// the start, `verify` finds nothing, and an appender continues right after the last record.
fn finish_log(dir: &Path, end: u64, round: usize) {
    let context = format!("the log of the rounds before round {round}");
    let found = read_back(dir, 0, &context);
    assert_eq!(found.end, end, "{context}: records of all its rounds");
    let verified = shoal::log::verify(dir).expect("verify");
    assert!(verified.problems.is_empty(), "{context}: verify found problems: {:?}", verified.problems);
    let mut log = Appender::open(dir, shared_opts(IoBackend::Auto, Durability::Batch)).expect("reopen");
    assert_eq!(log.append(&payload(u32::MAX, 0)).expect("append"), Offset(end), "{context}: the next offset");
    log.close().expect("close");
}

/// Each round starts 2 or 3 producer processes on one log with 64 KiB segments (each child's
/// records fill several), kills one of them with SIGKILL at a random moment ([`KillAt`]) and
/// lets the others finish, while a tailer follows. Then: every record acknowledged durable to
/// any producer is there, once, byte for byte, at the offset its append returned; every
/// record of a survivor is there; the victim's records are a prefix of its sequence; offsets
/// dense, no garbage; survivors saw no error, and none of their appends took longer than
/// [`STALL_BOUND`]; the tailer reaches the end. [`ROUNDS_PER_LOG`] rounds share a log, so
/// most rounds also open a log whose last writer was killed.
#[test]
fn producers_killed_with_sigkill_block_no_one() {
    const TEST: &str = "producers_killed_with_sigkill_block_no_one";
    child_entry();
    let rounds: usize = std::env::var("SHOAL_KILL_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(KILL_ROUNDS);
    let started = Instant::now();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dir = new_log();
    let mut start = 0u64;
    let mut records_checked = 0u64;
    // The longest survivor append: (duration, round, its seq, the round's context), and per
    // kill moment the survivor appends over SLOW_APPEND and all survivor appends.
    let mut longest_append = (Duration::ZERO, 0, 0, String::new(), 0i64);
    let mut slow_appends: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut killed_running = 0usize;
    let mut killed_after_ack = 0usize;
    let mut acked_records_checked = 0u64;
    for round in 0..rounds {
        if round > 0 && round % 100 == 0 {
            eprintln!(
                "kill loop: {round} rounds done, longest survivor append {:?}, {:?}",
                longest_append.0,
                started.elapsed()
            );
        }
        if round > 0 && round % ROUNDS_PER_LOG == 0 {
            finish_log(dir.path(), start, round);
            records_checked += start;
            dir = new_log();
            start = 0;
        }
        let producers = rng.gen_range(2..=3usize);
        let victim = rng.gen_range(0..producers);
        let kill_at = match rng.gen_range(0..3) {
            0 => KillAt::Start,
            1 => KillAt::AfterFirstAck,
            _ => KillAt::Late,
        };
        let id = |i: usize| (round * 4 + i) as u32;
        let acks_every: Vec<u64> = (0..producers).map(|_| rng.gen_range(8..=64)).collect();
        let backends: Vec<IoBackend> = (0..producers).map(|i| BACKENDS[(round + i) % BACKENDS.len()]).collect();
        let context = format!(
            "round {round} (seed {seed}): {producers} producers {backends:?}, acks every {acks_every:?}, \
             producer {} killed at {kill_at:?}",
            id(victim)
        );
        let (tailer_end, tailer) = follow(dir.path(), start);
        let (events_tx, events) = mpsc::channel();
        let mut children = Vec::new();
        let mut collectors = Vec::new();
        for i in 0..producers {
            let spec = ChildSpec {
                dir: dir.path(),
                target: Target::Log,
                producer: id(i),
                records: KILL_RECORDS,
                ack_every: acks_every[i],
                backend: backends[i],
                barrier: false,
            };
            let mut child = spawn_child(TEST, &spec);
            collectors.push(collect(child.stdout.take().expect("stdout piped"), i, events_tx.clone()));
            children.push(child);
        }
        drop(events_tx);

        let first_ack_wait = Instant::now() + RUN_WAIT;
        let wait_for_victim_ack = |at_least: u64| loop {
            match events.recv_timeout(first_ack_wait.saturating_duration_since(Instant::now())) {
                Ok((i, Event::Ack(seq))) if i == victim && seq >= at_least => return true,
                Ok(_) => {}
                // The victim finished or failed before acking that far; checked below.
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("{context}: no ack from the victim within {RUN_WAIT:?}"),
            }
        };
        match kill_at {
            KillAt::Start => std::thread::sleep(Duration::from_micros(rng.gen_range(0..3_000))),
            KillAt::AfterFirstAck => {
                if wait_for_victim_ack(0) {
                    killed_after_ack += 1;
                }
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..10_000)));
            }
            KillAt::Late => {
                if wait_for_victim_ack(KILL_RECORDS / 2) {
                    killed_after_ack += 1;
                }
            }
        }
        if children[victim].try_wait().expect("poll the victim").is_none() {
            killed_running += 1;
        }
        let killed_at_ns = unix_ns();
        let _ = children[victim].kill(); // SIGKILL; fails only when it already exited
        let deadline = Instant::now() + RUN_WAIT;
        let statuses: Vec<ExitStatus> =
            children.iter_mut().map(|c| wait_until(c, deadline, &format!("{context}: a producer"))).collect();
        let reports: Vec<ChildReport> = collectors.into_iter().map(|c| c.join().expect("collector")).collect();

        let found = read_back(dir.path(), start, &context);
        for &producer in found.offsets.keys() {
            assert!(
                (0..producers).any(|i| id(i) == producer),
                "{context}: records of producer {producer}, not of this round"
            );
        }
        for (i, (status, report)) in statuses.iter().zip(&reports).enumerate() {
            let producer = id(i);
            if i != victim {
                let done = check_finished(&found, producer, KILL_RECORDS, *status, report, &context);
                assert!(
                    done.longest <= STALL_BOUND,
                    "{context}: producer {producer}'s append {} took {:?}, over the stall bound {STALL_BOUND:?}",
                    done.longest_seq,
                    done.longest
                );
                if done.longest > longest_append.0 {
                    // Where the call started, relative to the kill (negative: before it).
                    let from_kill_us = (done.longest_at_ns as i64 - killed_at_ns as i64) / 1000;
                    longest_append = (done.longest, round, done.longest_seq, context.clone(), from_kill_us);
                }
                let slow = slow_appends.entry(format!("{kill_at:?}")).or_default();
                slow.0 += done.slow;
                slow.1 += done.count;
                continue;
            }
            // The victim: what it reported (acked and appended) is there; its records are a
            // prefix of its sequence (read_back checked), at least everything it had acked.
            assert!(report.errors.is_empty(), "{context}: the victim saw errors: {:?}", report.errors);
            let acked = report.acked.last().map_or(0, |&(seq, _)| seq + 1);
            assert!(
                found.count(producer) >= acked,
                "{context}: the victim had records 0..{acked} acknowledged durable, the log holds {}",
                found.count(producer)
            );
            check_offsets(&found, producer, &report.acked, &context);
            check_offsets(&found, producer, &report.appended, &context);
            if let Some(Done { count, .. }) = report.done {
                // It finished before the kill reached it.
                assert_eq!(
                    found.count(producer),
                    count,
                    "{context}: the victim finished, not all its records are there"
                );
            }
            acked_records_checked += acked;
        }
        acked_records_checked += (0..producers).filter(|&i| i != victim).count() as u64 * KILL_RECORDS;

        // A send fails when the tailer already stopped with an error: the join reports it.
        let _ = tailer_end.send(found.end);
        match tailer.join().expect("tailer thread") {
            Ok(at) => assert_eq!(at, found.end, "{context}: where the tailer stopped"),
            Err(e) => panic!("{context}: {e}"),
        }
        start = found.end;
    }

    finish_log(dir.path(), start, rounds);
    records_checked += start;
    assert!(
        killed_running * 2 >= rounds,
        "only {killed_running} of {rounds} victims were still running when killed: the loop did not test kills"
    );
    eprintln!(
        "kill loop: {rounds} rounds, {records_checked} records checked ({acked_records_checked} acknowledged durable or \
         of survivors), {killed_running} victims killed running ({killed_after_ack} after an ack), longest \
         survivor append {:?} (append {} of {}, started {} us after the kill), survivor appends over {SLOW_APPEND:?} (of all) by kill moment \
         {slow_appends:?}, {:?}",
        longest_append.0,
        longest_append.2,
        longest_append.3,
        longest_append.4,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. abandon().

/// An appender abandoned mid-stream (as a SIGKILL would leave it): another appender of the
/// same process, already open, appends on and repairs; one opened afterwards does too. Every
/// record any of them appended is there, once, in order, at its returned offset.
#[test]
fn an_abandoned_appender_blocks_no_one() {
    for backend in BACKENDS {
        for open_after in [false, true] {
            let context = format!("{backend:?}, next appender opened after the abandon: {open_after}");
            let dir = tempfile::tempdir().expect("temp dir");
            let opts = shared_opts(backend, Durability::Batch);
            let mut returned: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 3];
            let append = |log: &mut Appender, producer: u32, n: u64, returned: &mut Vec<Vec<(u64, u64)>>| {
                let mine = &mut returned[producer as usize];
                for _ in 0..n {
                    let seq = mine.len() as u64;
                    let started = Instant::now();
                    let offset = log
                        .append(&payload(producer, seq))
                        .unwrap_or_else(|e| panic!("{context}: producer {producer} append {seq}: {e}"));
                    let took = started.elapsed();
                    assert!(took <= STALL_BOUND, "{context}: producer {producer}'s append took {took:?}");
                    mine.push((seq, offset.0));
                }
            };
            let mut a = Appender::open(dir.path(), opts).expect("open a");
            let mut b = Appender::open(dir.path(), opts).expect("open b");
            append(&mut a, 0, 300, &mut returned);
            a.sync().expect("sync a");
            append(&mut b, 1, 200, &mut returned);
            let b = if open_after {
                b.close().expect("close b");
                None
            } else {
                Some(b)
            };
            // Past a rollover: 64 KiB segments hold a few hundred of these records.
            append(&mut a, 0, 500, &mut returned);
            a.abandon();
            let mut next = match b {
                Some(b) => b,
                // No appender is open: the next one repairs at open.
                None => Appender::open(dir.path(), opts).expect("open after the abandon"),
            };
            let producer = if open_after { 2 } else { 1 };
            append(&mut next, producer, 600, &mut returned);
            let last = Offset(returned[producer as usize].last().expect("appended").1);
            assert!(next.sync().expect("sync") > last, "{context}: sync after the abandon");
            next.close().expect("close");

            let found = read_back(dir.path(), 0, &context);
            let total: usize = returned.iter().map(Vec::len).sum();
            assert_eq!(found.end, total as u64, "{context}: records in the log");
            for (producer, returned) in returned.iter().enumerate() {
                assert_eq!(found.count(producer as u32), returned.len() as u64, "{context}: records of {producer}");
                check_offsets(&found, producer as u32, returned, &context);
            }
        }
    }
}

/// An appender abandoned while another thread appends: that thread never sees an error nor
/// an append call longer than [`STALL_BOUND`], and every record of both is there.
#[test]
fn an_appender_abandoned_while_another_thread_appends() {
    const RECORDS: u64 = 3_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = shared_opts(IoBackend::Auto, Durability::Batch);
    let mut a = Appender::open(dir.path(), opts).expect("open a");
    let b = Appender::open(dir.path(), opts).expect("open b");
    let start = Arc::new(Barrier::new(2));
    let survivor = std::thread::spawn({
        let start = start.clone();
        move || {
            let mut b = b;
            start.wait();
            let mut returned = Vec::new();
            let mut longest = Duration::ZERO;
            for seq in 0..RECORDS {
                let started = Instant::now();
                let offset = b.append(&payload(1, seq)).unwrap_or_else(|e| panic!("survivor append {seq}: {e}"));
                longest = longest.max(started.elapsed());
                returned.push((seq, offset.0));
            }
            b.close().expect("close the survivor");
            (returned, longest)
        }
    });
    start.wait();
    let mut returned_a = Vec::new();
    for seq in 0..RECORDS / 2 {
        let offset = a.append(&payload(0, seq)).expect("append a");
        returned_a.push((seq, offset.0));
    }
    a.abandon();
    let (returned_b, longest) = survivor.join().expect("survivor thread");
    assert!(longest <= STALL_BOUND, "the survivor's longest append took {longest:?}, over {STALL_BOUND:?}");
    let found = read_back(dir.path(), 0, "abandon while appending");
    assert_eq!(found.end, RECORDS + RECORDS / 2, "records in the log");
    check_offsets(&found, 0, &returned_a, "the abandoned appender");
    check_offsets(&found, 1, &returned_b, "the survivor");
    assert_eq!(found.count(0), RECORDS / 2);
    assert_eq!(found.count(1), RECORDS);
    eprintln!("abandon while appending: longest survivor append {longest:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Writers::Exclusive.

fn assert_locked(result: Result<Appender, LogError>, what: &str) {
    match result {
        Err(LogError::Locked { .. }) => {}
        Err(e) => panic!("{what}: want LogError::Locked, got {e}"),
        Ok(_) => panic!("{what}: opened, but the log is held by an exclusive appender"),
    }
}

/// An exclusive appender keeps every other appender out, shared or exclusive; an exclusive
/// one cannot open while a shared one is open; shared ones open side by side.
#[test]
fn an_exclusive_appender_keeps_every_other_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = small_opts(IoBackend::Auto).durability(Durability::Never);
    let exclusive = base.writers(Writers::Exclusive);
    let shared = base.writers(Writers::Shared);
    assert_eq!(LogOptions::default().writers, Writers::Shared, "the default is shared");

    let mut first = Appender::open(dir.path(), exclusive).expect("open exclusive");
    assert_eq!(first.append(b"one").expect("append"), Offset(0));
    assert_locked(Appender::open(dir.path(), shared), "a shared appender beside an exclusive one");
    assert_locked(Appender::open(dir.path(), exclusive), "a second exclusive appender");
    first.close().expect("close");

    let mut a = Appender::open(dir.path(), shared).expect("open shared after the exclusive one closed");
    let mut b = Appender::open(dir.path(), shared).expect("a second shared appender");
    assert_locked(Appender::open(dir.path(), exclusive), "an exclusive appender beside shared ones");
    assert_eq!(a.append(b"two").expect("append"), Offset(1));
    assert_eq!(b.append(b"three").expect("append"), Offset(2));
    a.close().expect("close a");
    assert_locked(Appender::open(dir.path(), exclusive), "an exclusive appender beside one shared one");
    b.close().expect("close b");

    let mut last = Appender::open(dir.path(), exclusive).expect("exclusive once every shared one closed");
    assert_eq!(last.append(b"four").expect("append"), Offset(3));
    last.close().expect("close");
    let records = common::read_all(dir.path()).expect("read");
    assert_eq!(records, [&b"one"[..], b"two", b"three", b"four"]);
}
