//! Model-based fuzzing of a log with several producers: two to four [`Appender`]s open at
//! once on one directory (`Writers::Shared`) in one process, against a model that knows, for
//! every offset, which producer was acknowledged it and with which payload.
//!
//! The operations append (one record, a generated run spread over the producers, a batch),
//! sync, abandon a producer the way a SIGKILL would (`Appender::abandon`: no final sync, the
//! writer role left dirty; the producer is opened again with `Appender::open` before its next
//! append), close and reopen every producer, try an exclusive appender beside them, and read
//! the log through.
//!
//! The properties, checked after every operation that can break them and at the end:
//! - offsets are dense and totally ordered: each append gets the next free offset, and each
//!   producer's offsets grow in its own append order;
//! - a `Reader` returns offsets 0, 1, 2, ... with exactly the bytes the model holds at each;
//! - every record acknowledged to a producer that is open or was closed cleanly is present,
//!   and so is every record below the durable watermark (which is shared: after one
//!   producer's `sync`, every open producer reports at least that watermark);
//! - a record of an abandoned producer above the watermark may be gone, but only from the
//!   tail (never a hole under a later record), and once gone it never comes back: its offset
//!   goes to the next append;
//! - an exclusive appender is refused with `LogError::Locked` while a shared one is open.

#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::log::{AppendError, Appender, Durability, IoBackend, LogError, LogOptions, Reader, Writers};

/// Largest payload the model's log accepts; appends above it must fail cleanly.
const MAX_RECORD_BYTES: usize = 256;
/// Operations per input, to keep executions fast.
const OPS_MAX: usize = 32;
/// Records in one batch at most.
const BATCH_MAX: usize = 16;
/// Fewest and most producers open on the log.
const PRODUCERS_MIN: usize = 2;
const PRODUCERS_MAX: usize = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    /// One record from producer `who` (modulo the producers).
    Append { who: u8, payload: Vec<u8> },
    /// `count` generated records of `len` bytes, producer `(start + i) % producers` appending
    /// the i-th: interleaves the producers and reaches segment rollovers quickly.
    AppendMany { start: u8, count: u8, len: u8, seed: u8 },
    /// A batch from producer `who`.
    AppendBatch { who: u8, payloads: Vec<Vec<u8>> },
    /// `sync` on producer `who`.
    Sync { who: u8 },
    /// Drop producer `who` as a SIGKILL would.
    Abandon { who: u8 },
    /// Close every producer cleanly and open them all again.
    ReopenAll,
    /// Open an exclusive appender beside the shared ones.
    TryExclusive,
    /// Read the whole log and check it against the model.
    ReadAll,
}

#[derive(Arbitrary, Debug)]
struct Input {
    producers: u8,
    ops: Vec<Op>,
}

fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("shoal-fuzz").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

/// One acknowledged record.
struct Acked {
    producer: usize,
    /// The appender (index into `Model::abandoned`) that appended it.
    handle: usize,
    payload: Vec<u8>,
}

/// A producer: its appender while open.
struct Producer {
    log: Option<Appender>,
    /// Its appender's index into `Model::abandoned`.
    handle: usize,
    /// The offset of its appender's last append.
    last: Option<u64>,
}

struct Model {
    /// The record acknowledged at each offset.
    records: Vec<Acked>,
    /// Records below this are durable (the greatest watermark any producer reported).
    durable: u64,
    /// For every appender opened so far, whether it was abandoned: the records it appended
    /// above the watermark may be lost from the tail (a repair may come at any later open or
    /// append, so they stay losable).
    abandoned: Vec<bool>,
}

impl Model {
    /// Whether the record at `offset` may be missing from the log.
    fn may_lose(&self, offset: u64) -> bool {
        offset >= self.durable && self.abandoned[self.records[offset as usize].handle]
    }

    /// The log ends at `end` (an append was given that offset, or a reader stopped there):
    /// every record the model holds from `end` on must be one that may be lost; they are gone.
    fn ends_at(&mut self, end: u64, what: &str) {
        let len = self.records.len() as u64;
        assert!(end <= len, "{what}: offset {end} leaves a hole after the {len} records acknowledged");
        for offset in end..len {
            let r = &self.records[offset as usize];
            assert!(
                self.may_lose(offset),
                "{what}: the log ends at {end}, but record {offset} of producer {} (durable below {}, appenders \
                 abandoned {:?}) may not be lost",
                r.producer,
                self.durable,
                self.abandoned
            );
        }
        self.records.truncate(end as usize);
    }

    fn acknowledge(&mut self, producers: &mut [Producer], who: usize, offset: u64, payload: &[u8]) {
        self.ends_at(offset, "append");
        let producer = &mut producers[who];
        if let Some(last) = producer.last {
            assert!(offset > last, "producer {who}: offset {offset} after {last}");
        }
        producer.last = Some(offset);
        self.records.push(Acked { producer: who, handle: producer.handle, payload: payload.to_vec() });
    }

    fn saw_durable(&mut self, durable: u64, what: &str) {
        let len = self.records.len() as u64;
        assert!(durable <= len, "{what}: durable watermark {durable} past the {len} records appended");
        self.durable = self.durable.max(durable);
    }
}

fn options(writers: Writers) -> LogOptions {
    LogOptions::default()
        .segment_bytes(64 << 10)
        .max_record_bytes(MAX_RECORD_BYTES)
        .durability(Durability::Never)
        .io_backend(IoBackend::Syscalls)
        .index_interval_bytes(256)
        .prefault(false)
        .writers(writers)
}

/// Producer `who`'s appender, opened again first if it was abandoned or closed.
fn appender<'a>(dir: &Path, producers: &'a mut [Producer], model: &mut Model, who: usize) -> &'a mut Appender {
    let producer = &mut producers[who];
    if producer.log.is_none() {
        match Appender::open(dir, options(Writers::Shared)) {
            Ok(log) => producer.log = Some(log),
            Err(e) => panic!("producer {who}: opening failed: {e}"),
        }
        producer.handle = model.abandoned.len();
        producer.last = None;
        model.abandoned.push(false);
    }
    producer.log.as_mut().expect("opened above")
}

fn append_one(dir: &Path, producers: &mut [Producer], model: &mut Model, who: usize, payload: &[u8]) {
    let result = appender(dir, producers, model, who).append(payload);
    if payload.len() > MAX_RECORD_BYTES {
        assert!(matches!(result, Err(AppendError::TooLarge { .. })), "producer {who}: {result:?}");
        return;
    }
    match result {
        Ok(offset) => model.acknowledge(producers, who, offset.0, payload),
        Err(e) => panic!("producer {who}: append failed: {e}"),
    }
}

/// Reads the log through: dense offsets, the model's bytes at each, nothing past the model,
/// and every record the model holds present unless it may be lost (then the model drops it).
fn read_all(dir: &Path, model: &mut Model, what: &str) {
    let mut reader = Reader::open(dir).unwrap_or_else(|e| panic!("{what}: opening a reader: {e}"));
    let mut i = 0u64;
    loop {
        match reader.next() {
            Ok(Some(record)) => {
                assert_eq!(record.offset().0, i, "{what}: offsets are dense");
                let Some(acked) = model.records.get(i as usize) else {
                    panic!("{what}: record {i} was never acknowledged ({} were)", model.records.len())
                };
                assert_eq!(record.payload(), &acked.payload[..], "{what}: record {i} of producer {}", acked.producer);
                i += 1;
            }
            Ok(None) => break,
            Err(e) => panic!("{what}: reading record {i}: {e}"),
        }
    }
    model.ends_at(i, what);
}

fuzz_target!(|input: Input| {
    let n = PRODUCERS_MIN + usize::from(input.producers) % (PRODUCERS_MAX - PRODUCERS_MIN + 1);
    let dir = temp_dir();
    let path = dir.path();
    let mut producers: Vec<Producer> = (0..n).map(|_| Producer { log: None, handle: 0, last: None }).collect();
    let mut model = Model { records: Vec::new(), durable: 0, abandoned: Vec::new() };
    for who in 0..n {
        appender(path, &mut producers, &mut model, who);
    }

    for op in input.ops.iter().take(OPS_MAX) {
        match op {
            Op::Append { who, payload } => {
                let payload = &payload[..payload.len().min(MAX_RECORD_BYTES + 64)];
                append_one(path, &mut producers, &mut model, usize::from(*who) % n, payload);
            }
            Op::AppendMany { start, count, len, seed } => {
                for i in 0..usize::from(*count) {
                    let payload: Vec<u8> =
                        (0..usize::from(*len)).map(|j| seed.wrapping_add((i * 31 + j) as u8)).collect();
                    append_one(path, &mut producers, &mut model, (usize::from(*start) + i) % n, &payload);
                }
            }
            Op::AppendBatch { who, payloads } => {
                let who = usize::from(*who) % n;
                // Every record fits: the prefix a refused batch appends would have offsets the
                // error does not tell (oversized records are `Append`'s case).
                let payloads: Vec<&[u8]> =
                    payloads.iter().take(BATCH_MAX).map(|p| &p[..p.len().min(MAX_RECORD_BYTES)]).collect();
                match appender(path, &mut producers, &mut model, who).append_batch(payloads.iter().copied()) {
                    Ok(range) => {
                        // A batch takes consecutive offsets.
                        assert_eq!(range.end.0 - range.start.0, payloads.len() as u64, "producer {who}: {range:?}");
                        for (k, p) in payloads.iter().enumerate() {
                            model.acknowledge(&mut producers, who, range.start.0 + k as u64, p);
                        }
                    }
                    Err(e) => panic!("producer {who}: append_batch failed: {e}"),
                }
            }
            Op::Sync { who } => {
                let who = usize::from(*who) % n;
                let durable = appender(path, &mut producers, &mut model, who)
                    .sync()
                    .unwrap_or_else(|e| panic!("producer {who}: sync failed: {e}"));
                // A sync covers every record appended before it, whoever appended it.
                model.ends_at(durable.0, &format!("sync of producer {who} returned {durable:?}"));
                model.saw_durable(durable.0, "sync");
            }
            Op::Abandon { who } => {
                let who = usize::from(*who) % n;
                if let Some(log) = producers[who].log.take() {
                    log.abandon();
                    model.abandoned[producers[who].handle] = true;
                }
            }
            Op::ReopenAll => {
                for (who, producer) in producers.iter_mut().enumerate() {
                    if let Some(log) = producer.log.take() {
                        log.close().unwrap_or_else(|e| panic!("producer {who}: close failed: {e}"));
                    }
                }
                read_all(path, &mut model, "after closing every producer");
                for who in 0..n {
                    appender(path, &mut producers, &mut model, who);
                }
                read_all(path, &mut model, "after opening every producer again");
            }
            Op::TryExclusive => {
                let open = producers.iter().filter(|p| p.log.is_some()).count();
                match Appender::open(path, options(Writers::Exclusive)) {
                    Err(LogError::Locked { .. }) => {
                        assert!(open > 0, "an exclusive appender refused with no producer open");
                    }
                    Err(e) => panic!("opening an exclusive appender: {e}"),
                    Ok(log) => {
                        assert_eq!(open, 0, "an exclusive appender opened beside {open} shared ones");
                        // It repaired what abandoned producers left, and appends nothing.
                        log.close().expect("closing the exclusive appender");
                        read_all(path, &mut model, "after an exclusive appender");
                    }
                }
            }
            Op::ReadAll => read_all(path, &mut model, "read"),
        }
        // The watermark is shared: every open producer sees at least what any one reported.
        for (who, producer) in producers.iter().enumerate() {
            if let Some(log) = producer.log.as_ref() {
                let durable = log.durable_offset().0;
                assert!(durable >= model.durable, "producer {who} reports durable {durable} below {}", model.durable);
                model.saw_durable(durable, "durable_offset");
            }
        }
    }
    // The end of every run: the log holds the model (less what abandoned appenders may lose
    // from the tail), before and after every producer closes.
    read_all(path, &mut model, "at the end");
    for (who, producer) in producers.iter_mut().enumerate() {
        if let Some(log) = producer.log.take() {
            log.close().unwrap_or_else(|e| panic!("producer {who}: close failed: {e}"));
        }
    }
    read_all(path, &mut model, "after the last close");
    drop(dir);
});
