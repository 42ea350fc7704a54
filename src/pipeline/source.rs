//! Where events come from ([`Source`]) and ready-made last stages ([`Sink`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::emit::Emitter;
use super::error::PipelineError;
use super::frontier::GroupSource;
use super::{Handle, Handler};
use crate::bus::TopicProducer;
use crate::group::{Delivery, Member};
use crate::log::{Appender, Durability, Record, RecordRef, Tailer};
use crate::ring::Consumer;
use crate::sys::histogram::LatencyHistogram;

/// What a closure source says after each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStep {
    /// Call again. A closure with nothing to emit should wait for something (block on its
    /// input) before returning, since the source thread calls it again at once.
    Continue,
    /// The source has ended: the stages drain what is in flight and the pipeline finishes
    /// (see [`Pipeline::join`](super::Pipeline::join)).
    Done,
}

type DecodeRecord<T> = Box<dyn FnMut(&Record<'_>) -> Option<T> + Send>;
type DecodeRef<T> = Box<dyn FnMut(RecordRef) -> Option<T> + Send>;
/// Up to `max` calls of a closure source (see [`closure_calls`]); says whether the source
/// goes on, or how a call panicked.
type StepsFn<T> = Box<dyn FnMut(&mut Emitter<T>, &Stops<'_>, usize) -> std::thread::Result<bool> + Send>;

/// What a closure source's thread looks at between two calls: the pipeline aborting, the
/// source told to stop, a control request (a pause for a scale) waiting.
pub(crate) struct Stops<'a> {
    pub(crate) abort: &'a AtomicBool,
    pub(crate) stop_source: &'a AtomicBool,
    pub(crate) pending: &'a AtomicBool,
}

impl Stops<'_> {
    /// Whether the source should stop calling (or waiting) and look at its loop.
    #[inline(always)]
    pub(crate) fn any(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
            || self.stop_source.load(Ordering::Relaxed)
            || self.pending.load(Ordering::Acquire)
    }
}

/// Calls a closure source up to `max` times, publishing what each call emitted as it
/// returns (an event never waits for a later call), with one panic guard for all the calls
/// and one look at [`Stops`] between two calls. Says whether the source goes on.
///
/// Built per closure type in [`Source::closure`] and boxed once: the dynamic call is paid
/// once per run of calls, and the closure, the emitter's staging and the publication
/// inline into this loop. A dynamic call per event cost a call frame of saved registers per
/// event, stores that wait in order behind the ring's tail store.
#[inline(always)]
fn closure_calls<T>(
    f: &mut impl FnMut(&mut Emitter<T>) -> SourceStep,
    emitter: &mut Emitter<T>,
    stops: &Stops<'_>,
    max: usize,
) -> std::thread::Result<bool> {
    catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..max {
            let step = f(emitter);
            emitter.notify();
            if step != SourceStep::Continue {
                return false;
            }
            if stops.any() {
                break;
            }
        }
        true
    }))
}

/// Decodes a log record into an event.
pub(crate) enum Decode<T> {
    /// From a borrowed record (the event copies what it needs).
    Record(DecodeRecord<T>),
    /// From an owned handle on the mapped record (no copy of the payload).
    Ref(DecodeRef<T>),
}

pub(crate) enum SourceKind<T> {
    /// A user's closure, which cannot fail (its step comes back in a register: no
    /// `Result` to write and read back through memory on every call).
    Steps(StepsFn<T>),
    /// A consumer-group member, committing what left the last stage.
    Group(Box<GroupSource<T>>),
    Ring(Consumer<T>),
    Log {
        tailer: Box<Tailer>,
        follow: bool,
        decode: Decode<T>,
        dir: PathBuf,
    },
}

/// Where a pipeline's events come from. The source runs on its own thread
/// (`shoal-<name>-0`) and feeds the first stage per that stage's routing.
///
/// A replay of a log, decoded in place, into a sink:
///
/// ```
/// use shoal::log::{Appender, LogOptions};
/// use shoal::pipeline::{Pipeline, Sink, Source};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let dir = tempfile::tempdir()?;
/// let mut log = Appender::open(dir.path(), LogOptions::default())?;
/// for v in 1..=100u64 {
///     log.append_pod(v, &v)?;
/// }
/// log.close()?;
///
/// let total = Arc::new(AtomicU64::new(0));
/// let sum = total.clone();
/// // `None` from the decoder skips a record; a replay ends at the end of the log.
/// let source = Source::replay(dir.path(), |record| record.payload_as::<u64>().ok().copied())?;
/// let sink = Sink::closure(move |batch: &[u64]| {
///     sum.fetch_add(batch.iter().sum::<u64>(), Ordering::Relaxed);
/// });
/// Pipeline::builder().pin(false).source("replay", source).sink("sum", sink).build()?.join()?;
/// assert_eq!(total.load(Ordering::Relaxed), 5050);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Source<T> {
    pub(crate) kind: SourceKind<T>,
}

impl<T: Send + 'static> Source<T> {
    /// Calls `f` again and again on the source thread; `f` emits events through the
    /// [`Emitter`] (waiting when the first stage is full) and says whether to go on.
    ///
    /// Shutdown, and pausing the source for a [`scale`](super::Pipeline::scale) of the
    /// first stage, happen between two calls: `f` should return regularly.
    pub fn closure(f: impl FnMut(&mut Emitter<T>) -> SourceStep + Send + 'static) -> Source<T> {
        let mut f = f;
        Source {
            kind: SourceKind::Steps(Box::new(move |emitter: &mut Emitter<T>, stops: &Stops<'_>, max: usize| {
                closure_calls(&mut f, emitter, stops, max)
            })),
        }
    }

    /// Forwards what arrives on a ring (built with [`crate::ring::channel`]); ends when its
    /// producer is dropped and the ring is drained. The source thread sleeps in the ring's
    /// consumer waiter while it is empty.
    pub fn ring(rx: Consumer<T>) -> Source<T> {
        Source { kind: SourceKind::Ring(rx) }
    }

    /// Follows the log in `dir` from its first record, decoding each record into an event
    /// (`None` skips it); waits for new records until the pipeline shuts down.
    ///
    /// # Errors
    /// [`PipelineError::Log`] when the log cannot be opened.
    pub fn tailer(
        dir: impl AsRef<Path>,
        decode: impl FnMut(&Record<'_>) -> Option<T> + Send + 'static,
    ) -> Result<Source<T>, PipelineError> {
        Source::log(dir.as_ref(), true, Decode::Record(Box::new(decode)))
    }

    /// Reads the log in `dir` from its first record to its end, then ends (so
    /// [`Pipeline::join`](super::Pipeline::join) returns once everything is handled).
    ///
    /// # Errors
    /// [`PipelineError::Log`] when the log cannot be opened.
    pub fn replay(
        dir: impl AsRef<Path>,
        decode: impl FnMut(&Record<'_>) -> Option<T> + Send + 'static,
    ) -> Result<Source<T>, PipelineError> {
        Source::log(dir.as_ref(), false, Decode::Record(Box::new(decode)))
    }

    /// Follows the log in `dir` like [`Source::tailer`], handing each record over as a
    /// [`RecordRef`] (an `Arc` on the mapped segment: large payloads travel through the
    /// pipeline by reference, never copied). `wrap` makes the event (`None` skips it).
    ///
    /// # Errors
    /// [`PipelineError::Log`] when the log cannot be opened.
    pub fn tailer_refs(
        dir: impl AsRef<Path>,
        wrap: impl FnMut(RecordRef) -> Option<T> + Send + 'static,
    ) -> Result<Source<T>, PipelineError> {
        Source::log(dir.as_ref(), true, Decode::Ref(Box::new(wrap)))
    }

    /// Reads the log in `dir` to its end like [`Source::replay`], as [`RecordRef`]s.
    ///
    /// # Errors
    /// [`PipelineError::Log`] when the log cannot be opened.
    pub fn replay_refs(
        dir: impl AsRef<Path>,
        wrap: impl FnMut(RecordRef) -> Option<T> + Send + 'static,
    ) -> Result<Source<T>, PipelineError> {
        Source::log(dir.as_ref(), false, Decode::Ref(Box::new(wrap)))
    }

    /// Reads the partitions a consumer-group [`Member`] owns, decoding each delivery into
    /// an event (`None` skips it), until the pipeline shuts down; **at least once**: a
    /// partition's offset is committed only after every event made from the records below
    /// it has left the last stage.
    ///
    /// "Left the last stage" means: the last stage's handler returned for each event derived
    /// from the record (by every stage on the way, including events a stage emitted for it,
    /// and none for a record decoded to `None` or dropped by a stage). For
    /// [`Sink::appender`] and [`Sink::topic`] that is "appended", not "synced": the record is
    /// in the page cache, safe from a crash of the process, and durable within about one
    /// sync per the log's [`Durability`]; a crash of the machine (power loss) just after
    /// the commit can lose records appended since the last sync. A closure sink that must
    /// not lose them syncs before it returns.
    /// The source tracks this with per-ring counts published once per batch (see the
    /// module docs), commits on its own thread without blocking the stages, and commits
    /// the rest at shutdown, once the stages have drained, before leaving the group.
    ///
    /// What a crash (or an abort of the pipeline) redelivers: the next owner of each
    /// partition starts at its committed offset, so every record whose events had not all
    /// left the last stage is delivered again, and some that had may be too (the commit
    /// follows the last stage by a few batches): duplicates are possible, losses are not.
    /// Order per key is kept as far as the stages keep it (a partition's records are
    /// emitted in order, [`Routing::ByKey`](super::Routing::ByKey) keeps a key on one
    /// worker).
    ///
    /// A partition revoked from the member meanwhile is not committed past what left the
    /// last stage (its next owner delivers again from the committed offset): the source
    /// turns off the commit of every returned record that a member without a listener makes
    /// when a partition leaves it. A member joined with a listener ([`Member::join_with`])
    /// keeps it, and what that listener commits on revoke is its own choice. A failed poll
    /// or commit (an I/O error, a damaged group file) stops the pipeline with
    /// [`PipelineError::SourceFailed`] naming the source and the error; a partition fenced
    /// (taken over after the session timeout) is skipped.
    ///
    /// ```
    /// use shoal::bus::Bus;
    /// use shoal::group::{describe, GroupOptions, Member};
    /// use shoal::log::LogOptions;
    /// use shoal::pipeline::{Pipeline, Sink, Source};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use std::time::{Duration, Instant};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let bus = Bus::open(dir.path())?;
    /// let mut producer = bus.topic_or_create("orders", Some(2))?.producer(LogOptions::default())?;
    /// for n in 0..100u64 {
    ///     producer.send(n, &n.to_le_bytes())?;
    /// }
    /// let member = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
    /// let handled = Arc::new(AtomicU64::new(0));
    /// let count = handled.clone();
    /// let source = Source::group(member, |d| d.record.payload_as::<u64>().ok().copied());
    /// let sink = Sink::closure(move |batch: &[u64]| {
    ///     count.fetch_add(batch.len() as u64, Ordering::Relaxed);
    /// });
    /// let pipeline = Pipeline::builder().pin(false).source("orders", source).sink("bill", sink).build()?;
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// while handled.load(Ordering::Relaxed) < 100 && Instant::now() < deadline {
    ///     std::thread::sleep(Duration::from_millis(5));
    /// }
    /// pipeline.shutdown()?; // drains, commits, leaves
    /// let lag: u64 = describe(&bus)?[0].partitions.iter().map(|p| p.lag).sum();
    /// assert_eq!(lag, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn group(member: Member, decode: impl FnMut(Delivery) -> Option<T> + Send + 'static) -> Source<T> {
        Source { kind: SourceKind::Group(Box::new(GroupSource::new(member, Box::new(decode)))) }
    }

    fn log(dir: &Path, follow: bool, decode: Decode<T>) -> Result<Source<T>, PipelineError> {
        let tailer = Tailer::open(dir).map_err(|error| PipelineError::Log { path: dir.to_path_buf(), error })?;
        Ok(Source { kind: SourceKind::Log { tailer: Box::new(tailer), follow, decode, dir: dir.to_path_buf() } })
    }
}

/// A ready-made last stage (one worker), added with
/// [`PipelineBuilder::sink`](super::PipelineBuilder::sink).
///
/// Every sink counts the events it took, and the log and topic sinks their data syncs, in
/// a [`SinkStats`] handle (take it with [`Sink::stats`] before handing the sink over).
/// An append or final sync that fails stops the pipeline with
/// [`PipelineError::SinkFailed`] naming the stage.
pub struct Sink<T> {
    pub(crate) handler: Handler<T>,
    stats: SinkStats,
}

impl<T: Send + 'static> Sink<T> {
    /// Hands every batch to `f` (one worker, so `f` may own state without sharing it).
    pub fn closure(f: impl FnMut(&[T]) + Send + 'static) -> Sink<T> {
        let stats = SinkStats::default();
        Sink { handler: Box::new(ClosureSink { f, stats: stats.clone() }), stats }
    }

    /// Appends every event to a log: `encode` writes the payload into the buffer it is
    /// given (cleared before each call) and returns the record's key. The appender is
    /// single-writer, so this stage has exactly one worker and cannot be scaled. It is
    /// closed (a final sync, per its durability) when the stage has drained; its syncs are
    /// then in [`Sink::stats`].
    ///
    /// A failed append or final sync stops the pipeline with
    /// [`PipelineError::SinkFailed`] naming the stage and the log.
    pub fn appender(appender: Appender, encode: impl FnMut(&T, &mut Vec<u8>) -> u64 + Send + 'static) -> Sink<T> {
        let stats = SinkStats::default();
        let writer = LogWriter { appender: Some(appender), stats: stats.clone() };
        Sink { handler: Box::new(EncodeSink { writer, encode, buf: Vec::new() }), stats }
    }

    /// Appends every event to a topic: `encode` writes the payload into the buffer it is
    /// given (cleared before each call) and returns the key that routes it to a partition
    /// ([`TopicProducer::send`]). One worker, like [`Sink::appender`]: a topic has one
    /// producer. When the stage has drained, every partition is synced (per its
    /// durability) and closed; the syncs of all partitions and the moment the last event
    /// became durable are then in [`Sink::stats`].
    ///
    /// A failed append or final sync stops the pipeline with
    /// [`PipelineError::SinkFailed`] naming the stage and the topic.
    ///
    /// # Examples
    /// ```
    /// use shoal::bus::{partition_for_key, Bus};
    /// use shoal::log::{LogOptions, Reader};
    /// use shoal::pipeline::{Pipeline, Sink, Source, SourceStep};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let topic = Bus::open(dir.path())?.topic_or_create("numbers", Some(2))?;
    /// let sink = Sink::topic(topic.producer(LogOptions::default())?, |n: &u64, buf: &mut Vec<u8>| {
    ///     buf.extend_from_slice(&n.to_le_bytes());
    ///     *n // the key
    /// });
    /// let stats = sink.stats();
    /// let mut next = 0u64;
    /// let source = Source::closure(move |e| {
    ///     e.emit(next);
    ///     next += 1;
    ///     if next == 100 { SourceStep::Done } else { SourceStep::Continue }
    /// });
    /// Pipeline::builder().pin(false).source("numbers", source).sink("topic", sink).build()?.join()?;
    /// assert_eq!(stats.records(), 100);
    /// assert!(stats.durable_at().is_some());
    ///
    /// // Each event sits in the partition of its key.
    /// let mut read = 0;
    /// for p in 0..topic.partitions() {
    ///     let mut reader = Reader::open(topic.partition_dir(p)?)?;
    ///     while let Some(record) = reader.next()? {
    ///         assert_eq!(record.payload(), record.key().to_le_bytes());
    ///         assert_eq!(partition_for_key(record.key(), 2), p);
    ///         read += 1;
    ///     }
    /// }
    /// assert_eq!(read, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn topic(producer: TopicProducer, encode: impl FnMut(&T, &mut Vec<u8>) -> u64 + Send + 'static) -> Sink<T> {
        let stats = SinkStats::default();
        let writer = TopicWriter { producer: Some(producer), stats: stats.clone() };
        Sink { handler: Box::new(EncodeSink { writer, encode, buf: Vec::new() }), stats }
    }

    /// A handle on this sink's figures, readable from any thread while the pipeline runs
    /// and after it has finished.
    pub fn stats(&self) -> SinkStats {
        self.stats.clone()
    }

    /// The handler factory of the one-worker stage: hands the handler over once.
    pub(crate) fn into_factory(self) -> impl Fn(super::WorkerId) -> Handler<T> + Send + Sync + 'static {
        let slot = Mutex::new(Some(self.handler));
        move |_| {
            let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            match taken {
                Some(h) => h,
                None => panic!("a sink has exactly one worker; its handler was already taken"),
            }
        }
    }
}

/// What a [`Sink`] did: events taken and, for a log or topic sink, its data syncs. A
/// cloneable handle (an `Arc`); the sync figures are final once
/// [`Pipeline::join`](super::Pipeline::join) or [`shutdown`](super::Pipeline::shutdown)
/// has returned.
#[derive(Clone, Debug, Default)]
pub struct SinkStats {
    shared: Arc<SinkShared>,
}

#[derive(Debug, Default)]
struct SinkShared {
    records: AtomicU64,
    syncs: Mutex<SyncFigures>,
}

#[derive(Clone, Debug, Default)]
struct SyncFigures {
    syncs: u64,
    latency: Option<LatencyHistogram>,
    durable_at: Option<Instant>,
    final_sync_error: Option<String>,
}

impl SinkStats {
    /// Events the sink has taken (appended, for a log or topic sink).
    pub fn records(&self) -> u64 {
        // Relaxed: a counter read on its own; pairs with nothing.
        self.shared.records.load(Ordering::Relaxed)
    }

    /// Data syncs of the sink's log (all partitions of its topic), counted when the sink
    /// finished: 0 before, and for a closure sink.
    pub fn syncs(&self) -> u64 {
        self.figures().syncs
    }

    /// The latencies (ns) of those syncs.
    pub fn sync_latency(&self) -> LatencyHistogram {
        self.figures().latency.unwrap_or_default()
    }

    /// When everything the sink appended was durable (after its final sync); `None` before
    /// the sink finished, when the final sync failed, and for a closure sink.
    pub fn durable_at(&self) -> Option<Instant> {
        self.figures().durable_at
    }

    /// The final sync's error, if it failed (the pipeline then also reports
    /// [`PipelineError::SinkFailed`]).
    pub fn final_sync_error(&self) -> Option<String> {
        self.figures().final_sync_error
    }

    fn figures(&self) -> SyncFigures {
        self.shared.syncs.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    #[inline]
    fn took(&self, events: usize) {
        self.shared.records.fetch_add(events as u64, Ordering::Relaxed);
    }

    fn set(&self, figures: SyncFigures) {
        *self.shared.syncs.lock().unwrap_or_else(PoisonError::into_inner) = figures;
    }
}

/// A closure sink.
struct ClosureSink<F> {
    f: F,
    stats: SinkStats,
}

impl<T, F: FnMut(&[T]) + Send> Handle<T> for ClosureSink<F> {
    fn handle(&mut self, events: &[T], _: &mut Emitter<T>) -> Result<(), String> {
        (self.f)(events);
        self.stats.took(events.len());
        Ok(())
    }
}

/// Where an [`EncodeSink`] appends: one log or a topic.
trait Writer: Send {
    fn write(&mut self, key: u64, payload: &[u8]) -> Result<(), String>;
    fn stats(&self) -> &SinkStats;
    /// The final sync and close; records the sync figures.
    fn finish(&mut self) -> Result<(), String>;
}

/// A sink that encodes each event into a buffer and appends it.
struct EncodeSink<W, E> {
    writer: W,
    encode: E,
    buf: Vec<u8>,
}

impl<T, W: Writer, E: FnMut(&T, &mut Vec<u8>) -> u64 + Send> Handle<T> for EncodeSink<W, E> {
    fn handle(&mut self, events: &[T], _: &mut Emitter<T>) -> Result<(), String> {
        for event in events {
            self.buf.clear();
            let key = (self.encode)(event, &mut self.buf);
            self.writer.write(key, &self.buf)?;
        }
        self.writer.stats().took(events.len());
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        self.writer.finish()
    }
}

/// The figures of a final close that ended with `closed`; `durable` when it synced
/// everything (any durability but `Never`).
fn figures(closed: Result<(), String>, durable: bool, (syncs, latency): (u64, LatencyHistogram)) -> SyncFigures {
    let durable_at = (durable && closed.is_ok()).then(Instant::now);
    SyncFigures { syncs, latency: Some(latency), durable_at, final_sync_error: closed.err() }
}

/// The figures of a sink dropped without finishing (the pipeline aborted).
fn aborted((syncs, latency): (u64, LatencyHistogram)) -> SyncFigures {
    SyncFigures { syncs, latency: Some(latency), durable_at: None, final_sync_error: None }
}

/// The appender of [`Sink::appender`] (taken when it is closed).
struct LogWriter {
    appender: Option<Appender>,
    stats: SinkStats,
}

impl Writer for LogWriter {
    #[inline]
    fn write(&mut self, key: u64, payload: &[u8]) -> Result<(), String> {
        let Some(appender) = &mut self.appender else { return Err("the log was already closed".to_string()) };
        match appender.append_keyed(key, payload) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("append to the log at {} failed: {e}", appender.dir().display())),
        }
    }

    fn stats(&self) -> &SinkStats {
        &self.stats
    }

    fn finish(&mut self) -> Result<(), String> {
        let Some(mut appender) = self.appender.take() else { return Ok(()) };
        let dir = appender.dir().to_path_buf();
        let durable = appender.options().durability != Durability::Never;
        let mut synced = Ok(());
        if durable {
            synced = appender.sync().map(drop);
        }
        let sync_stats = appender.sync_stats();
        let closed = synced.and_then(|()| appender.close());
        let closed = closed.map_err(|e| format!("the final sync of the log at {} failed: {e}", dir.display()));
        self.stats.set(figures(closed.clone(), durable, sync_stats));
        closed
    }
}

impl Drop for LogWriter {
    /// After an abort the appender closes on drop (its final sync is not reported); the
    /// figures so far are still recorded.
    fn drop(&mut self) {
        if let Some(appender) = &self.appender {
            self.stats.set(aborted(appender.sync_stats()));
        }
    }
}

/// The producer of [`Sink::topic`] (taken when it is closed).
struct TopicWriter {
    producer: Option<TopicProducer>,
    stats: SinkStats,
}

impl Writer for TopicWriter {
    #[inline]
    fn write(&mut self, key: u64, payload: &[u8]) -> Result<(), String> {
        let Some(producer) = &mut self.producer else { return Err("the topic was already closed".to_string()) };
        match producer.send(key, payload) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("append to topic {} failed: {e}", producer.topic().name())),
        }
    }

    fn stats(&self) -> &SinkStats {
        &self.stats
    }

    fn finish(&mut self) -> Result<(), String> {
        let Some(mut producer) = self.producer.take() else { return Ok(()) };
        let name = producer.topic().name().to_string();
        let durable = producer.options().durability != Durability::Never;
        let mut synced = Ok(());
        if durable {
            synced = producer.sync();
        }
        let sync_stats = producer.sync_stats();
        let closed = synced.and_then(|()| producer.close());
        let closed = closed.map_err(|e| format!("the final sync of topic {name} failed: {e}"));
        self.stats.set(figures(closed.clone(), durable, sync_stats));
        closed
    }
}

impl Drop for TopicWriter {
    /// After an abort the producer closes on drop (its final sync is not reported); the
    /// figures so far are still recorded.
    fn drop(&mut self) {
        if let Some(producer) = &self.producer {
            self.stats.set(aborted(producer.sync_stats()));
        }
    }
}
