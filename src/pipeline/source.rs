//! Where events come from ([`Source`]) and ready-made last stages ([`Sink`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::emit::Emitter;
use super::error::PipelineError;
use super::Handler;
use crate::bus::TopicProducer;
use crate::group::{Delivery, Member};
use crate::log::{Appender, Record, RecordRef, Tailer};
use crate::ring::Consumer;

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
type SourceFn<T> = Box<dyn FnMut(&mut Emitter<T>) -> SourceStep + Send>;

/// Decodes a log record into an event.
pub(crate) enum Decode<T> {
    /// From a borrowed record (the event copies what it needs).
    Record(DecodeRecord<T>),
    /// From an owned handle on the mapped record (no copy of the payload).
    Ref(DecodeRef<T>),
}

pub(crate) enum SourceKind<T> {
    Closure(SourceFn<T>),
    Ring(Consumer<T>),
    Log { tailer: Box<Tailer>, follow: bool, decode: Decode<T>, dir: PathBuf },
}

/// Where a pipeline's events come from. The source runs on its own thread
/// (`shoal-<name>-0`) and feeds the first stage per that stage's routing.
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
        Source { kind: SourceKind::Closure(Box::new(f)) }
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
    /// an event (`None` skips it), until the pipeline shuts down.
    ///
    /// Each poll's records are emitted to the first stage, then committed: a commit means
    /// "handed downstream", not "handled by every stage". After a crash, the next owner of
    /// a partition re-delivers at most the last batch (at least once); on shutdown the
    /// member is dropped after its last commit, so its partitions move on with no
    /// duplicate as long as the stages drain what is in flight. Rebalances happen inside
    /// the polls, so the source keeps up with members joining and leaving.
    ///
    /// A failed poll or commit panics in the source thread, which stops the pipeline with
    /// [`PipelineError::Panicked`] naming the error.
    pub fn group(mut member: Member, mut decode: impl FnMut(Delivery) -> Option<T> + Send + 'static) -> Source<T> {
        const BATCH: usize = 256;
        const WAIT: Duration = Duration::from_millis(50);
        Source::closure(move |emitter: &mut Emitter<T>| {
            let batch = match member.poll(BATCH, WAIT) {
                Ok(batch) => batch,
                Err(e) => panic!("consumer group member {} failed to poll: {e}", member.id()),
            };
            if batch.is_empty() {
                return SourceStep::Continue;
            }
            for delivery in batch {
                if let Some(event) = decode(delivery) {
                    emitter.emit(event);
                }
            }
            if let Err(e) = member.commit() {
                panic!("consumer group member {} failed to commit: {e}", member.id());
            }
            SourceStep::Continue
        })
    }

    fn log(dir: &Path, follow: bool, decode: Decode<T>) -> Result<Source<T>, PipelineError> {
        let tailer = Tailer::open(dir).map_err(|error| PipelineError::Log { path: dir.to_path_buf(), error })?;
        Ok(Source { kind: SourceKind::Log { tailer: Box::new(tailer), follow, decode, dir: dir.to_path_buf() } })
    }
}

/// A ready-made last stage (one worker), added with
/// [`PipelineBuilder::sink`](super::PipelineBuilder::sink).
pub struct Sink<T> {
    pub(crate) handler: Handler<T>,
}

impl<T: Send + 'static> Sink<T> {
    /// Hands every batch to `f` (one worker, so `f` may own state without sharing it).
    pub fn closure(mut f: impl FnMut(&[T]) + Send + 'static) -> Sink<T> {
        Sink { handler: Box::new(move |events: &[T], _: &mut Emitter<T>| f(events)) }
    }

    /// Appends every event to a log: `encode` writes the payload into the buffer it is
    /// given (cleared before each call) and returns the record's key. The appender is
    /// single-writer, so this stage has exactly one worker and cannot be scaled. It is
    /// closed (a final sync, per its durability) when the pipeline finishes.
    ///
    /// A failed append panics in the sink's worker, which stops the pipeline with
    /// [`PipelineError::Panicked`] naming the error.
    pub fn appender(
        mut appender: Appender,
        mut encode: impl FnMut(&T, &mut Vec<u8>) -> u64 + Send + 'static,
    ) -> Sink<T> {
        let mut buf = Vec::new();
        let dir = appender.dir().to_path_buf();
        Sink {
            handler: Box::new(move |events: &[T], _: &mut Emitter<T>| {
                for event in events {
                    buf.clear();
                    let key = encode(event, &mut buf);
                    if let Err(e) = appender.append_keyed(key, &buf) {
                        panic!("append to the log at {} failed: {e}", dir.display());
                    }
                }
            }),
        }
    }

    /// Appends every event to a topic: `encode` writes the payload into the buffer it is
    /// given (cleared before each call) and returns the key that routes it to a partition
    /// ([`TopicProducer::send`]). One worker, like [`Sink::appender`]: a topic has one
    /// producer.
    ///
    /// A failed append panics in the sink's worker, which stops the pipeline with
    /// [`PipelineError::Panicked`] naming the error.
    pub fn topic(
        mut producer: TopicProducer,
        mut encode: impl FnMut(&T, &mut Vec<u8>) -> u64 + Send + 'static,
    ) -> Sink<T> {
        let mut buf = Vec::new();
        Sink {
            handler: Box::new(move |events: &[T], _: &mut Emitter<T>| {
                for event in events {
                    buf.clear();
                    let key = encode(event, &mut buf);
                    if let Err(e) = producer.send(key, &buf) {
                        panic!("append to topic {} failed: {e}", producer.topic().name());
                    }
                }
            }),
        }
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
