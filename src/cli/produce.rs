//! `shoal produce`: one record per stdin line, with optional durability acks.
//!
//! Stdin is read with plain `read(2)` calls of up to 1 MiB into one buffer: every complete
//! line that a read delivers goes into one `append_batch` (one publication, one wake-up of
//! the sync thread), and the partial line at the end waits for the next read. A read returns
//! as soon as any input is there, so a line is never held back waiting for more. Lines are
//! split with `memchr` (SIMD, many bytes per cycle) and appended straight from the buffer:
//! per line, only the scan to its newline and the append itself, no allocation, no syscall.
//!
//! Acks come from their own thread, so that they keep flowing while the main thread blocks on
//! a slow stdin. The thread sleeps in [`DurableWatch::wait_durable_passive`] until the
//! watermark passes what it last printed; the passive wait never asks for a sync, so the
//! durability level the user chose decides when acks come.

// Option structs are filled field by field: that keeps compiling once they are
// `#[non_exhaustive]`, where a struct literal outside the library does not.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::log_args::LogArgs;
use super::Error;
use shoal::bus::{Bus, TopicProducer};
use shoal::log::format::{Extensions, KEY_BYTES_MAX};
use shoal::log::{AppendError, Appender, Durability, DurableWatch, LogOptions, Offset};

/// Bytes asked of each `read(2)` on stdin: one read, one newline scan and one batch per
/// block keep the cost per line to the scan and the append. A pipe delivers at most its
/// buffer (64 KiB by default) per read; a file, all of it.
const READ_BLOCK_BYTES: usize = 1 << 20;
/// How long the ack thread sleeps between checks of its stop flag.
const ACK_WAIT: Duration = Duration::from_millis(50);

pub(super) fn run(dir: &Path, durability: Durability, ack: bool, log_args: &LogArgs) -> Result<ExitCode, Error> {
    let opts = log_args.log_options(LogOptions::default().durability(durability))?;
    let mut log = Appender::open(dir, opts)?;
    // The watermark before the first append: the thread may start after records are durable.
    let acked = log.durable_offset().0;
    let acker = if ack { Some(Acker::start(log.durable_watch(), acked)?) } else { None };
    let appended = append_lines(&mut log, &mut io::stdin().lock());
    // Whatever went wrong with the input, the records appended so far are made durable and
    // acked before the error is reported.
    let synced = if syncs_at_end(durability, ack) { log.sync().map(drop) } else { Ok(()) };
    let printed = match acker {
        Some(acker) => acker.finish(),
        None => None,
    };
    appended?;
    synced?;
    let end = log.next_offset().0;
    log.close()?;
    // Only a line past the last one printed: with other producers the ack thread may have
    // printed beyond this appender's own records already.
    if ack && end > 0 && printed.is_none_or(|p| p < end) {
        let mut out = io::stdout().lock();
        let written = writeln!(out, "durable below {end}").and_then(|()| out.flush());
        if let Err(e) = written {
            return super::stdout_failed(e);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `produce` makes every record durable at the end of its input: always, except with
/// `--durability never` and no `--ack`, where records stay in the page cache as the level
/// says (a sync of everything at exit would write the whole input to disk before exiting).
fn syncs_at_end(durability: Durability, ack: bool) -> bool {
    ack || durability != Durability::Never
}

/// `shoal produce <BUS> --topic <T>`: creates the topic if needed, then routes each line by
/// key hash (`--keyed`) or round-robin. A typed topic (one with a schema) is refused.
pub(super) fn run_topic(
    dir: &Path,
    topic: &str,
    partitions: Option<u32>,
    keyed: bool,
    durability: Durability,
    ack: bool,
    log_args: &LogArgs,
) -> Result<ExitCode, Error> {
    // Options first: a refused size creates no bus.
    let opts = log_args.log_options(LogOptions::default().durability(durability))?;
    let bus = Bus::open(dir)?;
    let topic = bus.topic_or_create(topic, partitions)?;
    // Text lines are never records of a typed topic's schema (a line of its exact size
    // would read as one without complaint): refused before any partition is opened.
    if let Some(schema) = topic.schema() {
        return Err(Error::new(format!(
            "{}: topic {} holds records of schema {schema}; `shoal produce` writes text lines, which are not \
             records of that type: write to it from a program with Topic::producer_typed, or produce the lines \
             to another topic",
            dir.join("topics").join(topic.name()).display(),
            topic.name()
        )));
    }
    let mut sink = TopicLines::new(topic.producer(opts)?, dir.join("topics").join(topic.name()), keyed);
    let watches = sink.producer.durable_watches();
    let acked: Vec<u64> = watches.iter().map(|w| w.durable_offset().0).collect();
    let acker = if ack { Some(TopicAcker::start(watches, acked)?) } else { None };
    let appended = append_lines(&mut sink, &mut io::stdin().lock());
    // As for a single log: what was appended is made durable and acked before any error.
    let synced = if syncs_at_end(durability, ack) { sink.producer.sync().map(drop) } else { Ok(()) };
    let printed = match acker {
        Some(acker) => acker.finish(),
        None => None,
    };
    appended?;
    synced?;
    if ack {
        let mut out = io::stdout().lock();
        let mut written = Ok(());
        for (p, watch) in sink.producer.durable_watches().iter().enumerate() {
            let end = watch.durable_offset().0;
            let last = printed.as_ref().and_then(|printed| printed[p]);
            if end > 0 && last != Some(end) {
                written = written.and_then(|()| writeln!(out, "partition {p} durable below {end}"));
            }
        }
        if let Err(e) = written.and_then(|()| out.flush()) {
            return super::stdout_failed(e);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The partitions of a topic as a [`LineSink`].
struct TopicLines {
    producer: TopicProducer,
    /// The topic directory, for errors.
    dir: PathBuf,
    keyed: bool,
    /// The partition of the next unkeyed line.
    next: u32,
    /// Lines read so far (1-based number of the next line), for errors.
    line: u64,
    /// Unkeyed lines of the current read, per partition (reused).
    batches: Vec<Vec<(usize, usize)>>,
    /// The largest record of every partition (all opened with the same options).
    max_record_bytes: usize,
}

impl TopicLines {
    fn new(producer: TopicProducer, dir: PathBuf, keyed: bool) -> TopicLines {
        let batches = vec![Vec::new(); producer.topic().partitions() as usize];
        let max_record_bytes = producer.max_record_bytes();
        TopicLines { producer, dir, keyed, next: 0, line: 1, batches, max_record_bytes }
    }
}

impl LineSink for TopicLines {
    fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    fn place(&self) -> String {
        format!("{}: stdin line {}", self.dir.display(), self.line)
    }

    fn append_lines(&mut self, lines: &[u8]) -> Result<(), Error> {
        let max = self.max_record_bytes;
        if self.keyed {
            for line in Lines::new(lines) {
                let Some(tab) = memchr::memchr(b'\t', line) else {
                    return Err(Error::new(format!(
                        "{}: stdin line {} has no tab; with --keyed each line is <key><TAB><payload>",
                        self.dir.display(),
                        self.line
                    )));
                };
                let (key, payload) = (&line[..tab], &line[tab + 1..]);
                // The kept key text counts toward the record's size.
                let stored = payload.len() + Extensions { key_bytes: Some(key), event_time_ns: None }.encoded_bytes();
                if stored > max {
                    return Err(too_long(self.place(), Some(stored), max));
                }
                if key.len() > KEY_BYTES_MAX {
                    return Err(Error::new(format!(
                        "{}: the key is {} bytes, longer than the {KEY_BYTES_MAX} a record keeps; shorten the text before \
                         the first tab",
                        self.place(),
                        key.len()
                    )));
                }
                // The text is kept in the record; its hash routes it (`key_hash`).
                self.producer.send_keyed(key, payload)?;
                self.line += 1;
            }
            return Ok(());
        }
        // Round-robin: one batch (one publication) per partition for the lines of one read.
        // The lines are checked before any is appended, so that a long one stops the lines
        // after it in every partition, not only in its own.
        let partitions = self.producer.topic().partitions();
        let mut start = 0usize;
        let mut next = self.next;
        let mut refused = None;
        for line in Lines::new(lines) {
            if line.len() > max {
                refused = Some(line.len());
                break;
            }
            self.batches[next as usize].push((start, start + line.len()));
            start += line.len() + 1;
            next = if next + 1 == partitions { 0 } else { next + 1 };
        }
        self.next = next;
        for p in 0..partitions {
            let batch = std::mem::take(&mut self.batches[p as usize]);
            if batch.is_empty() {
                continue;
            }
            let appended = self.producer.send_batch_to(p, batch.iter().map(|&(from, to)| &lines[from..to]));
            self.line += batch.len() as u64;
            // Keep the allocation for the next read.
            self.batches[p as usize] = batch;
            self.batches[p as usize].clear();
            appended?;
        }
        match refused {
            Some(len) => Err(too_long(self.place(), Some(len), max)),
            None => Ok(()),
        }
    }
}

/// Where [`append_lines`] puts the lines it reads: a log, or a topic's partitions.
trait LineSink {
    /// The largest record the sink takes.
    fn max_record_bytes(&self) -> usize;
    /// Where the next line goes, for error messages ("<dir>: the stdin line at offset 7").
    fn place(&self) -> String;
    /// Appends complete lines: `lines` is one or more lines joined by `\n`. A line longer
    /// than [`LineSink::max_record_bytes`] is an error, after the lines before it.
    fn append_lines(&mut self, lines: &[u8]) -> Result<(), Error>;
}

impl LineSink for Appender {
    fn max_record_bytes(&self) -> usize {
        self.options().max_record_bytes
    }

    fn place(&self) -> String {
        format!("{}: the stdin line at offset {}", self.dir().display(), self.next_offset())
    }

    fn append_lines(&mut self, lines: &[u8]) -> Result<(), Error> {
        match self.append_batch(Lines::new(lines)) {
            Ok(_) => Ok(()),
            // The lines before it are appended; `place` names the offset the long one would get.
            Err(AppendError::TooLarge { len, max }) => Err(too_long(self.place(), Some(len), max)),
            Err(e) => Err(e.into()),
        }
    }
}

/// Appends every line of `input` (bytes without the `\n`; a last line without one counts).
///
/// Each `read` asks for up to [`READ_BLOCK_BYTES`] into one buffer; the complete lines of
/// the buffer go to the sink in one call, and the partial line at its end moves to the front
/// for the next read. A line longer than the buffer grows it, up to one byte past the largest
/// record (where it is an error), so memory stays bounded by the largest record.
fn append_lines(log: &mut impl LineSink, input: &mut impl Read) -> Result<(), Error> {
    let max = log.max_record_bytes();
    let mut buf = vec![0u8; READ_BLOCK_BYTES];
    // buf[..filled] holds a partial line (no newline in it) before each read.
    let mut filled = 0usize;
    loop {
        if filled == buf.len() {
            if filled > max {
                return Err(too_long(log.place(), None, max));
            }
            // Bounded: the buffer stops growing once it holds more than `max` bytes.
            let grown = (buf.len() * 2).min(max + 1).max(buf.len() + 1);
            buf.resize(grown, 0);
        }
        let n = match input.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::new(format!("reading stdin failed: {e}"))),
        };
        if n == 0 {
            if filled > 0 {
                if filled > max {
                    return Err(too_long(log.place(), Some(filled), max));
                }
                log.append_lines(&buf[..filled])?;
            }
            return Ok(());
        }
        let new = filled..filled + n;
        filled += n;
        // Only the new bytes can hold the first newline after the partial line.
        if let Some(last_nl) = memchr::memrchr(b'\n', &buf[new.clone()]).map(|i| new.start + i) {
            log.append_lines(&buf[..last_nl])?;
            buf.copy_within(last_nl + 1..filled, 0);
            filled -= last_nl + 1;
        }
    }
}

/// The lines of `block`, split at each `\n` with `memchr`: `a\nb` gives `a` and `b`, `a\n`
/// gives `a` and the empty line, the empty block one empty line (as `<[u8]>::split` does).
struct Lines<'a> {
    /// What is left; `None` after the last line.
    rest: Option<&'a [u8]>,
}

impl<'a> Lines<'a> {
    fn new(block: &'a [u8]) -> Lines<'a> {
        Lines { rest: Some(block) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// A line longer than the largest record (`len`: its length, where known), as one line for
/// a person; `place` is [`LineSink::place`].
fn too_long(place: String, len: Option<usize>, max: usize) -> Error {
    let len = len.map_or(String::new(), |len| format!(" ({len} bytes)"));
    Error::new(format!("{place}{len} is longer than the largest record ({max} bytes); split it"))
}

/// The thread that prints `durable below <N>` lines.
struct Acker {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Option<u64>>,
}

impl Acker {
    /// Starts the thread; it prints from the first advance past `acked`, the watermark
    /// (exclusive) that was already there when the log opened.
    fn start(watch: DurableWatch, acked: u64) -> Result<Acker, Error> {
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("shoal-produce-ack".into())
            .spawn({
                let done = done.clone();
                move || ack_loop(&mut io::stdout().lock(), &watch, acked, &done)
            })
            .map_err(|e| Error::new(format!("starting the ack thread failed: {e}")))?;
        Ok(Acker { done, thread })
    }

    /// Stops the thread after it has printed the watermark as it stands now; returns the
    /// last watermark it printed.
    fn finish(self) -> Option<u64> {
        // pairs with the Acquire load in ack_loop
        self.done.store(true, Ordering::Release);
        self.thread.join().unwrap_or(None)
    }
}

/// Prints each advance of the watermark past `seen` until `done`, as `durable below <N>`
/// (exclusive: every record below N is durable); returns the last N printed.
fn ack_loop(out: &mut impl Write, watch: &DurableWatch, mut seen: u64, done: &AtomicBool) -> Option<u64> {
    let mut printed = None;
    let mut stdout_open = true;
    loop {
        // Read the flag before the watermark: after `done` is set, the watermark read below
        // includes everything the main thread synced before setting it.
        // pairs with the Release store in Acker::finish
        let finishing = done.load(Ordering::Acquire);
        let durable = watch.durable_offset().0;
        if durable > seen {
            seen = durable;
            if stdout_open {
                stdout_open = writeln!(out, "durable below {durable}").and_then(|()| out.flush()).is_ok();
                printed = Some(durable);
            }
        }
        if finishing {
            return printed;
        }
        // `Ok(false)` is a timeout; an error (a failed sync) is reported by the main thread's
        // own sync, so here it only slows the loop down.
        if watch.wait_durable_passive(Offset(seen), Some(ACK_WAIT)).is_err() {
            std::thread::sleep(ACK_WAIT);
        }
    }
}

/// The thread that prints `partition <P> durable below <N>` lines for a topic.
struct TopicAcker {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Option<u64>>>,
}

impl TopicAcker {
    /// Starts the thread; `acked[p]` is partition p's watermark (exclusive) at open.
    fn start(watches: Vec<DurableWatch>, acked: Vec<u64>) -> Result<TopicAcker, Error> {
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("shoal-produce-ack".into())
            .spawn({
                let done = done.clone();
                move || topic_ack_loop(&mut io::stdout().lock(), &watches, acked, &done)
            })
            .map_err(|e| Error::new(format!("starting the ack thread failed: {e}")))?;
        Ok(TopicAcker { done, thread })
    }

    /// Stops the thread after it has printed the watermarks as they stand now; returns the
    /// last watermark it printed per partition.
    fn finish(self) -> Option<Vec<Option<u64>>> {
        // pairs with the Acquire load in topic_ack_loop
        self.done.store(true, Ordering::Release);
        self.thread.join().ok()
    }
}

/// How long the topic ack thread waits on one partition before it looks at all of them.
const TOPIC_ACK_WAIT: Duration = Duration::from_millis(10);

/// [`ack_loop`] over several partitions: prints each advance of partition p's watermark past
/// `seen[p]` until `done`. One thread serves every partition: it waits passively on a
/// partition that has records not yet durable (or sleeps when none has) for at most
/// [`TOPIC_ACK_WAIT`], then looks at all of them, so an ack comes at most that much late.
fn topic_ack_loop(
    out: &mut impl Write,
    watches: &[DurableWatch],
    mut seen: Vec<u64>,
    done: &AtomicBool,
) -> Vec<Option<u64>> {
    let mut printed = vec![None; watches.len()];
    let mut stdout_open = true;
    let mut turn = 0usize;
    loop {
        // As in ack_loop: the flag before the watermarks.
        // pairs with the Release store in TopicAcker::finish
        let finishing = done.load(Ordering::Acquire);
        let mut wrote = false;
        for (p, watch) in watches.iter().enumerate() {
            let durable = watch.durable_offset().0;
            if durable > seen[p] {
                seen[p] = durable;
                if stdout_open {
                    stdout_open = writeln!(out, "partition {p} durable below {durable}").is_ok();
                    printed[p] = Some(durable);
                    wrote = true;
                }
            }
        }
        if wrote && stdout_open {
            stdout_open = out.flush().is_ok();
        }
        if finishing {
            return printed;
        }
        // Bounded: one pass over the partitions, starting after the last one waited on.
        let pending = (0..watches.len())
            .map(|i| (turn + 1 + i) % watches.len())
            .find(|&p| watches[p].written_offset().0 > seen[p]);
        match pending {
            Some(p) => {
                turn = p;
                if watches[p].wait_durable_passive(Offset(seen[p]), Some(TOPIC_ACK_WAIT)).is_err() {
                    std::thread::sleep(TOPIC_ACK_WAIT);
                }
            }
            None => std::thread::sleep(TOPIC_ACK_WAIT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::log::Reader;

    /// Hands out its input in the given pieces, one per `read`.
    struct Pieces(Vec<Vec<u8>>);

    impl Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some(piece) = self.0.first_mut() else { return Ok(0) };
            let n = piece.len().min(out.len());
            out[..n].copy_from_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }

    fn payloads(dir: &Path) -> Vec<Vec<u8>> {
        let mut reader = Reader::open(dir).expect("reader");
        let mut out = Vec::new();
        while let Some(r) = reader.next().expect("record") {
            out.push(r.payload().to_vec());
        }
        out
    }

    #[test]
    fn lines_split_across_reads_become_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions::default().segment_bytes(8 << 20).max_record_bytes(4 << 20).durability(Durability::Never);
        let mut log = Appender::open(dir.path(), opts).expect("open");
        let mut input = Pieces(vec![
            b"one\ntw".to_vec(),
            b"o\n\nthr".to_vec(),
            b"ee\xff\n".to_vec(),
            vec![b'x'; READ_BLOCK_BYTES * 3],
            b"\nlast".to_vec(),
        ]);
        append_lines(&mut log, &mut input).expect("append");
        log.close().expect("close");
        let got = payloads(dir.path());
        let long = vec![b'x'; READ_BLOCK_BYTES * 3];
        let want: Vec<&[u8]> = vec![b"one", b"two", b"", b"three\xff", &long, b"last"];
        assert_eq!(got, want);
    }

    proptest::proptest! {
        #[test]
        fn lines_split_as_slice_split_does(block in proptest::collection::vec(
            proptest::sample::select(vec![b'\n', b'\r', b'\t', b'a', 0xff]), 0..300)) {
            let got: Vec<&[u8]> = Lines::new(&block).collect();
            let want: Vec<&[u8]> = block.split(|&b| b == b'\n').collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_long_line_mid_block_keeps_the_lines_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions::default().segment_bytes(1 << 20).max_record_bytes(1000).durability(Durability::Never);
        let mut log = Appender::open(dir.path(), opts).expect("open");
        let mut block = b"a\nb\n".to_vec();
        block.extend(vec![b'y'; 1001]);
        block.extend(b"\nc\n");
        let err = append_lines(&mut log, &mut Pieces(vec![block])).expect_err("too long");
        assert!(
            err.to_string().contains("offset 2 (1001 bytes) is longer than the largest record (1000 bytes)"),
            "{err}"
        );
        log.close().expect("close");
        assert_eq!(payloads(dir.path()), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn acks_count_from_the_watermark_at_open_not_at_thread_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions::default().segment_bytes(1 << 20).max_record_bytes(512 << 10);
        let mut log = Appender::open(dir.path(), opts).expect("open");
        let acked = log.durable_offset().0;
        // The ack thread is late: both records are durable before it looks.
        log.append_batch([&b"a"[..], b"b"]).expect("append");
        log.sync().expect("sync");
        let mut out = Vec::new();
        let printed = ack_loop(&mut out, &log.durable_watch(), acked, &AtomicBool::new(true));
        assert_eq!(printed, Some(2));
        assert_eq!(out, b"durable below 2\n");
        log.close().expect("close");
    }

    #[test]
    fn a_line_longer_than_a_record_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions::default().segment_bytes(1 << 20).max_record_bytes(1000).durability(Durability::Never);
        let mut log = Appender::open(dir.path(), opts).expect("open");
        let mut input = Pieces(vec![b"ok\n".to_vec(), vec![b'y'; 200_000], b"\n".to_vec()]);
        let err = append_lines(&mut log, &mut input).expect_err("too long");
        assert!(err.to_string().contains("longer than the largest record"), "{err}");
        log.close().expect("close");
        assert_eq!(payloads(dir.path()), vec![b"ok".to_vec()]);
    }
}
