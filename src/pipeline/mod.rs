//! Pipelines: stages of pinned worker threads connected by SPSC rings, with routing by key,
//! round robin or broadcast, elastic resize of a running stage, drain on shutdown, and a
//! panic anywhere stopping everything.
//!
//! # Shape
//! A pipeline carries one event type `T: Send + 'static` from a [`Source`] through one or
//! more stages. Each stage has `n` workers; each worker is its own thread (named
//! `shoal-<stage>-<i>`, pinned to a CPU with [`CpuPlan`] per [`PipelineBuilder::pin`])
//! and owns one handler made by the stage's factory, so workers own their state. Small
//! `Copy`/`bytemuck::Pod` events move through the rings by value, with no allocation; large
//! payloads travel as [`RecordRef`](crate::log::RecordRef)s (an `Arc` on a mapped log
//! segment: the payload is never copied).
//!
//! Between a stage of `m` workers (or the source, `m = 1`) and the next of `n` workers there
//! are `m x n` SPSC rings ([`crate::ring`]); there is no shared queue on the data path. Each
//! worker sleeps in one [`Waiter`] that is the consumer waiter of all its input rings and the
//! producer waiter of all its output rings, so progress on any ring wakes it.
//!
//! # A worker's loop
//! Poll the inputs round robin (starting after the one served last), read a batch of up to
//! `batch_max` values in place, hand it to the handler as one slice (two where the ring
//! wraps), commit it. The handler emits through an [`Emitter`], which routes each event to
//! its downstream ring ([`Routing`] of the *next* stage) and stages it there, written
//! straight into the ring's next free slot but not yet visible: up to 64 events per ring
//! are published in one commit (one release store of the ring's tail, so the index's cache
//! line crosses cores once per group, not once per event), when the stage is full and when
//! the handler returns; then each touched ring's consumer is woken once. A full ring holds
//! the pusher with the pipeline's [`WaitStrategy`] (backpressure): staged events sit in the
//! rings' own slots, so the memory in flight is bounded by the rings. With
//! nothing to read a worker waits (spin, yield, or park at about 0% CPU).
//! [`Emitter::emit_slice`] is the batch form of `emit`: where every event goes to one ring
//! (a next stage of one worker) it copies the slice into that ring's slots in runs, one
//! publication per run, without staging.
//!
//! The source's thread calls a closure source up to `batch_max` times per turn of its loop,
//! publishing what each call emitted as the call returns (so an event never waits for a
//! later call), and looks at the stop flags and its control slot between calls; the
//! producer side of a ring reads the consumer's position only when its cached copy shows
//! too little room, so publishing one event per call costs one release store, as the
//! disruptor's `publish` does.
//!
//! # Pinning
//! With [`Pinning::Spread`] (the default) the source and every worker are pinned, each to
//! its own CPU of the process's allowed set ([`crate::affinity::allowed_cpus`]: the cgroup's
//! online CPUs, narrowed by a multi-CPU main thread mask such as `taskset` sets; never the
//! mask of the thread that calls `build`). A CPU gets a second pinned thread only when every
//! allowed CPU already has one, counting the threads of every pipeline of the process, and
//! then the pipeline says so once with a `tracing` warning naming the counts.
//! [`Pinning::Strict`] makes that an error of `build` (and of a [`Pipeline::scale`] up)
//! instead; [`Pinning::Off`] (`.pin(false)`) leaves threads unpinned.
//!
//! # Elastic stages: [`Pipeline::scale`]
//! A barrier, a drain, a rewire. For stage `s`:
//! 1. its upstream (stage `s-1`'s workers, or the source) pauses at a batch boundary and
//!    acknowledges;
//! 2. stage `s`'s workers pause once their inputs are empty (nothing more can arrive) and
//!    their batch is done, so everything they received has been handled and emitted;
//! 3. stage `s+1`'s workers pause once their inputs are empty: every event stage `s` emitted
//!    under the old wiring is consumed before any event under the new one, which keeps
//!    per-key order downstream too;
//! 4. the controller builds the new ring sets and hands each paused worker its new inputs,
//!    outputs and routing through its control slot; added workers are spawned, removed
//!    ones (whose rings are empty) exit;
//! 5. everyone resumes. Other stages keep running throughout.
//!
//! No event is lost or duplicated (rings are replaced only when empty), and per-key order
//! holds (a key's events before the change are all handled and passed on before any after
//! it). Requests and acknowledgements go through a per-worker mutex and condition variable
//! (a worker checks one relaxed flag per loop); a request wakes its worker wherever it
//! sleeps by unparking its thread. The pause is measured and returned. A handler's state is
//! not migrated: a removed worker's handler is dropped, an added one is made by the factory.
//!
//! # Lifecycle and failure
//! [`Pipeline::shutdown`] stops the source; every stage then drains: a worker exits when all
//! its input producers are gone and its inputs are empty, which drops its output producers
//! and so closes the next stage's inputs. [`Pipeline::join`] waits for a source that ends by
//! itself. A panicking handler (or factory or source) is caught, recorded, and aborts the
//! whole pipeline: every blocked push and every wait observes the abort flag, every thread
//! exits and is joined, and `shutdown`/`join` return [`PipelineError::Panicked`] naming the
//! stage and worker. The error that stopped a pipeline is kept: every call after it
//! (`scale`, then `shutdown` or `join`) reports it, not only the first. A source or sink that meets an error it cannot go on from (a log or
//! group file that cannot be read, an append or final sync that fails) aborts the pipeline
//! the same way, with [`PipelineError::SourceFailed`] or [`PipelineError::SinkFailed`]
//! naming it. A stage's handler is finished (for a sink: its final sync) when the stage has
//! drained, never after an abort. Dropping a pipeline without `shutdown` aborts it the same
//! way (events in flight are dropped) and joins its threads.
//!
//! # At least once from a consumer group
//! A pipeline whose source is [`Source::group`] commits a partition's offset only once every
//! event made from the records below it has left the last stage. Each ring then also counts
//! the events pushed into it and the events its consumer *finished* (the batch's handler
//! returned and what it emitted was pushed downstream), each stored once per batch, never
//! per event; pipelines with another source keep no counts. After each poll the source
//! snapshots the pushed counts of the rings into the first stage; once their finished counts
//! reach it, it snapshots the rings into the next stage, and so on: when the rings into the
//! last stage have finished their snapshot, the poll's offsets are committed. The source
//! checks these frontiers on every turn without blocking, a scale keeps them (rings are
//! replaced only once drained, and the new ones are installed before anything is pushed into
//! them), and shutdown commits what completed once the stages have drained, then leaves the
//! group. A failed or panicking batch never counts as finished.
//!
//! # Metrics
//! [`Pipeline::metrics`] gives per stage: events handled, events/s since the last call,
//! ring occupancy (the stage's input rings), and, with [`PipelineBuilder::latency_metrics`],
//! a per-hop latency histogram. Hop latency is *sampled*: beside each ring rides a probe
//! that the sender arms (when free) with the index of one event it pushes and a clock
//! stamp (the TSC through `quanta`); the receiver records `now - stamp` when it reads that
//! event. So about one event per batch is timed, with two atomics per batch on each side,
//! and handlers still get the ring's own slots as `&[T]`. (Stamping every event would need
//! rings of `(T, u64)`, and then a handler could not be given `&[T]` without a copy.) With
//! latency metrics off the probes do not exist and cost nothing.
//!
//! ```
//! use shoal::pipeline::{Emitter, Pipeline, Routing, Source, SourceStep};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! let sum = Arc::new(AtomicU64::new(0));
//! let out = sum.clone();
//! let mut next = 0u64;
//! let pipeline = Pipeline::<u64>::builder()
//!     .pin(false)
//!     .source("numbers", Source::closure(move |e: &mut Emitter<u64>| {
//!         e.emit(next);
//!         next += 1;
//!         if next == 1000 { SourceStep::Done } else { SourceStep::Continue }
//!     }))
//!     .stage("double", 2, Routing::ByKey(|v| *v), |_| |batch: &[u64], e: &mut Emitter<u64>| {
//!         for v in batch {
//!             e.emit(v * 2);
//!         }
//!     })
//!     .stage("sum", 1, Routing::RoundRobin, move |_| {
//!         let out = out.clone();
//!         move |batch: &[u64], _: &mut Emitter<u64>| {
//!             out.fetch_add(batch.iter().sum::<u64>(), Ordering::Relaxed);
//!         }
//!     })
//!     .build()?;
//! pipeline.join()?;
//! assert_eq!(sum.load(Ordering::Relaxed), 999 * 1000);
//! # Ok::<(), shoal::pipeline::PipelineError>(())
//! ```

mod emit;
mod error;
mod frontier;
mod source;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use emit::{Emitter, Routing};
pub use error::PipelineError;
pub use source::{Sink, SinkStats, Source, SourceStep};

use crate::affinity::{CpuClaim, CpuPlan};
use crate::ring::{channel_between, WaitStrategy, Waiter};
use crate::sys::histogram::LatencyHistogram;
use emit::{Input, Output, Probe, RingCounts};
use source::SourceKind;
use worker::{lock, Control, Failure, Pause, Rewire, Shared, WorkerParts, WorkerStats};

/// What a worker calls: each batch it reads, then (once its inputs are closed and drained)
/// `finish`. An error stops the pipeline with [`PipelineError::SinkFailed`] naming the stage.
pub(crate) trait Handle<T>: Send {
    /// Handles one batch, emitting downstream.
    fn handle(&mut self, events: &[T], emitter: &mut Emitter<T>) -> Result<(), String>;
    /// Called once when the stage has drained every input (not when the pipeline aborts).
    fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// A stage's closure as a [`Handle`]: it cannot fail, and has nothing to finish.
pub(crate) struct StageFn<F>(pub(crate) F);

impl<T, F: FnMut(&[T], &mut Emitter<T>) + Send> Handle<T> for StageFn<F> {
    #[inline]
    fn handle(&mut self, events: &[T], emitter: &mut Emitter<T>) -> Result<(), String> {
        (self.0)(events, emitter);
        Ok(())
    }
}

/// A worker's handler.
pub(crate) type Handler<T> = Box<dyn Handle<T>>;
/// Makes one handler per worker.
pub(crate) type Factory<T> = Arc<dyn Fn(WorkerId) -> Handler<T> + Send + Sync>;

/// A worker's index in its stage (0-based), given to the stage's handler factory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub usize);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Settings shared by every worker.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) wait: WaitStrategy,
    pub(crate) ring_capacity: usize,
    pub(crate) batch_max: usize,
    pub(crate) pin: Pinning,
    pub(crate) latency: bool,
    /// How long a worker lets its rings fill after small batches in quick succession.
    pub(crate) slip: Duration,
    /// Every ring keeps [`RingCounts`] for the at-least-once frontiers of a group source.
    pub(crate) frontier: bool,
}

/// Whether and how a pipeline pins its threads (the source and every worker) to CPUs; see
/// the [module docs](self#pinning). `true` and `false` convert to `Spread` and `Off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pinning {
    /// Threads run where the scheduler puts them (they inherit the building thread's mask).
    Off,
    /// Each thread on its own allowed CPU while there are free ones; more threads than free
    /// CPUs share them, with one warning per pipeline.
    #[default]
    Spread,
    /// As `Spread`, but more threads than free CPUs is an error
    /// ([`PipelineError::Oversubscribed`]) of `build` or `scale`.
    Strict,
}

impl From<bool> for Pinning {
    fn from(pin: bool) -> Pinning {
        if pin {
            Pinning::Spread
        } else {
            Pinning::Off
        }
    }
}

/// One stage's figures, from [`Pipeline::metrics`].
#[derive(Clone, Debug)]
pub struct StageMetrics {
    /// The stage's name (the source comes first, under its own name).
    pub name: String,
    /// Workers now.
    pub workers: usize,
    /// Events handled since the start (the source: events emitted).
    pub events: u64,
    /// Events per second since the previous call to `metrics` (or since the start).
    pub events_per_s: f64,
    /// Values waiting in the stage's input rings over their total capacity, 0.0..=1.0, as
    /// its workers last saw it (0 for the source, which has no input rings).
    pub ring_occupancy: f64,
    /// Sampled latency of the hop into this stage (send to handler), when
    /// [`PipelineBuilder::latency_metrics`] is on.
    pub hop_latency: Option<LatencyHistogram>,
}

/// What a [`Pipeline::scale`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleReport {
    /// The stage.
    pub stage: String,
    /// Workers before.
    pub from: usize,
    /// Workers after.
    pub to: usize,
    /// From the first pause request to the last resume: how long the stage, its upstream
    /// and its downstream stage did not take new events.
    pub pause: Duration,
}

/// Final figures of a pipeline, from [`Pipeline::shutdown`] or [`Pipeline::join`].
#[derive(Clone, Debug)]
pub struct PipelineStats {
    /// Per stage, the source first (see [`StageMetrics`]; `events_per_s` is over the
    /// pipeline's whole run).
    pub stages: Vec<StageMetrics>,
    /// Events emitted by the last stage (which has no downstream) and dropped.
    pub discarded: u64,
    /// Scales done.
    pub scales: u64,
    /// From build to the end.
    pub elapsed: Duration,
}

struct StageSpec<T> {
    name: String,
    workers: usize,
    routing: Routing<T>,
    factory: Factory<T>,
    max_workers: usize,
}

/// Builds a [`Pipeline`]: settings, a source, stages in order, then [`build`](Self::build).
pub struct PipelineBuilder<T> {
    config: Config,
    source: Option<(String, Source<T>)>,
    stages: Vec<StageSpec<T>>,
}

/// A worker's default slip (see [`PipelineBuilder::slip`]).
pub const SLIP_DEFAULT: Duration = Duration::from_nanos(200);

/// The longest slip [`PipelineBuilder::slip`] accepts.
pub const SLIP_MAX: Duration = Duration::from_millis(1);

/// Most workers a stage may have (a bound on threads and rings, `m x n` per boundary).
pub const STAGE_WORKERS_MAX: usize = 256;

/// Most slots [`PipelineBuilder::ring_capacity`] accepts (each ring allocates its slots
/// when the pipeline is built).
pub const RING_CAPACITY_MAX: usize = 1 << 24;

impl<T: Send + 'static> PipelineBuilder<T> {
    /// How workers wait for input and for room downstream (default [`WaitStrategy::Park`]:
    /// about 0% CPU when idle).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.config.wait = wait;
        self
    }

    /// Slots in each ring (default 1024; 1 to [`RING_CAPACITY_MAX`], checked by
    /// [`PipelineBuilder::build`]).
    pub fn ring_capacity(mut self, slots: usize) -> Self {
        self.config.ring_capacity = slots;
        self
    }

    /// Most events handed to a handler at once (default 256).
    pub fn batch_max(mut self, events: usize) -> Self {
        self.config.batch_max = events;
        self
    }

    /// How long a worker waits after handling a small batch (fewer than 32 events) before
    /// it reads again, so its rings fill and it takes whole cache lines of events instead
    /// of racing the producer for each one (default 200 ns; at most 1 ms;
    /// [`Duration::ZERO`] turns it off).
    ///
    /// Without it, a worker that keeps up with a fast producer reads each event as it
    /// lands, and both then wait on the same cache lines for every event: one event per
    /// call through one stage then moves 15-20 M events/s (`benches/pipeline.rs`; 84 M/s
    /// when the producer happens to stay ahead), and 51-54 M/s with the default slip.
    /// The wait comes after a batch is handled: a lone event, and events further apart
    /// than the slip, never wait for it; an event that lands during a slip waits at most
    /// the slip. Turn it off where every event's latency counts more than throughput.
    ///
    /// ```
    /// use shoal::pipeline::Pipeline;
    /// use std::time::Duration;
    ///
    /// let builder = Pipeline::<u64>::builder().slip(Duration::ZERO); // read every event at once
    /// # let _ = builder;
    /// ```
    pub fn slip(mut self, period: Duration) -> Self {
        self.config.slip = period;
        self
    }

    /// Pins the source and each worker thread to its own CPU of the process's allowed set
    /// (default [`Pinning::Spread`]; `true`/`false` are `Spread`/`Off`; [`Pinning::Strict`]
    /// fails rather than put two pinned threads on one CPU). See the
    /// [module docs](self#pinning).
    ///
    /// ```
    /// use shoal::pipeline::{Emitter, Pinning, Pipeline, PipelineError, Routing, Source, SourceStep};
    ///
    /// let cpus = shoal::affinity::allowed_cpus().len();
    /// let built = Pipeline::<u64>::builder()
    ///     .pin(Pinning::Strict)
    ///     .source("none", Source::closure(|_: &mut Emitter<u64>| SourceStep::Done))
    ///     .stage("work", cpus, Routing::RoundRobin, |_| |_: &[u64], _: &mut Emitter<u64>| {})
    ///     .build(); // the source and `cpus` workers: one thread more than CPUs
    /// assert!(matches!(built, Err(PipelineError::Oversubscribed { .. })));
    /// ```
    pub fn pin(mut self, pin: impl Into<Pinning>) -> Self {
        self.config.pin = pin.into();
        self
    }

    /// Keeps sampled per-hop latency histograms (default off).
    pub fn latency_metrics(mut self, on: bool) -> Self {
        self.config.latency = on;
        self
    }

    /// Sets the source (the last call wins).
    pub fn source(mut self, name: impl Into<String>, source: Source<T>) -> Self {
        self.source = Some((name.into(), source));
        self
    }

    /// Adds a stage after the previous one: `workers` threads, each with a handler made by
    /// `factory`, fed per `routing` (how events *enter* this stage).
    ///
    /// A handler gets each batch as a slice and emits zero or more events to the next
    /// stage; in the last stage, emitted events are dropped (see [`Emitter`]).
    pub fn stage<F, H>(mut self, name: impl Into<String>, workers: usize, routing: Routing<T>, factory: F) -> Self
    where
        F: Fn(WorkerId) -> H + Send + Sync + 'static,
        H: FnMut(&[T], &mut Emitter<T>) + Send + 'static,
    {
        let factory: Factory<T> = Arc::new(move |id| Box::new(StageFn(factory(id))) as Handler<T>);
        self.stages.push(StageSpec { name: name.into(), workers, routing, factory, max_workers: STAGE_WORKERS_MAX });
        self
    }

    /// Adds a one-worker last stage (it cannot be scaled), such as
    /// [`Sink::appender`].
    pub fn sink(mut self, name: impl Into<String>, sink: Sink<T>) -> Self {
        let factory: Factory<T> = Arc::new(sink.into_factory());
        self.stages.push(StageSpec {
            name: name.into(),
            workers: 1,
            routing: Routing::RoundRobin,
            factory,
            max_workers: 1,
        });
        self
    }

    /// Checks the settings, wires the rings and starts every thread.
    ///
    /// # Errors
    /// [`PipelineError::NoSource`], [`PipelineError::NoStages`],
    /// [`PipelineError::DuplicateName`], [`PipelineError::InvalidWorkers`],
    /// [`PipelineError::Config`], or [`PipelineError::Spawn`] (threads already started are
    /// stopped and joined).
    pub fn build(self) -> Result<Pipeline<T>, PipelineError> {
        let PipelineBuilder { config, source, stages } = self;
        if config.ring_capacity == 0 {
            return Err(PipelineError::Config("ring_capacity must be at least 1".into()));
        }
        let ring_bytes = config.ring_capacity.checked_mul(std::mem::size_of::<T>());
        if config.ring_capacity > RING_CAPACITY_MAX || ring_bytes.is_none_or(|b| b > isize::MAX as usize) {
            return Err(PipelineError::Config(format!(
                "ring_capacity must be at most {RING_CAPACITY_MAX} slots (and their bytes must fit in memory), \
                 not {}: every ring allocates its slots when the pipeline is built",
                config.ring_capacity
            )));
        }
        if config.slip > SLIP_MAX {
            return Err(PipelineError::Config(format!(
                "slip must be at most {SLIP_MAX:?}, not {:?}: it is a pause of nanoseconds between reads",
                config.slip
            )));
        }
        if config.batch_max == 0 {
            return Err(PipelineError::Config("batch_max must be at least 1".into()));
        }
        let (source_name, source) = source.ok_or(PipelineError::NoSource)?;
        let mut config = config;
        config.frontier = matches!(source.kind, SourceKind::Group(_));
        if stages.is_empty() {
            return Err(PipelineError::NoStages);
        }
        let mut names = vec![source_name.clone()];
        for spec in &stages {
            if names.contains(&spec.name) {
                return Err(PipelineError::DuplicateName { name: spec.name.clone() });
            }
            names.push(spec.name.clone());
            if spec.workers == 0 || spec.workers > spec.max_workers {
                return Err(PipelineError::InvalidWorkers {
                    stage: spec.name.clone(),
                    workers: spec.workers,
                    max: spec.max_workers,
                });
            }
        }
        let plan = CpuPlan::new();
        let threads = 1 + stages.iter().map(|s| s.workers).sum::<usize>();
        let (claims, short) = claim_cpus(&plan, config.pin, threads)?;
        if let Some(short) = short {
            warn_oversubscribed(&source_name, short);
        }
        let shared = Arc::new(Shared::new(config));
        let source_node = Node::new(config.latency);
        let stage_nodes: Vec<Vec<Node<T>>> =
            stages.iter().map(|s| (0..s.workers).map(|_| Node::new(config.latency)).collect()).collect();

        // Rings: boundary b feeds stage b (from the source for b = 0).
        let mut outputs: Vec<Vec<Vec<Output<T>>>> = Vec::new(); // [producer stage + 1][worker]
        let mut inputs: Vec<Vec<Vec<Input<T>>>> = Vec::new(); // [stage][worker]
        for b in 0..stages.len() {
            let up: Vec<&Node<T>> = if b == 0 { vec![&source_node] } else { stage_nodes[b - 1].iter().collect() };
            let down: Vec<&Node<T>> = stage_nodes[b].iter().collect();
            let (o, i, counts) = wire(&config, &up, &down);
            outputs.push(o);
            inputs.push(i);
            lock(&shared.topology).push(counts);
        }

        let mut pipeline = Pipeline {
            shared: shared.clone(),
            source: SourceState { name: source_name.into(), node: source_node },
            stages: Vec::new(),
            plan,
            claims,
            warned: short.is_some(),
            started: Instant::now(),
            last_metrics: Mutex::new(Vec::new()),
            scales: 0,
            finished: false,
        };
        // Every stage's state first (a worker's emitter routes per the next stage's
        // routing), then the threads: the stages, the source last.
        for (spec, nodes) in stages.into_iter().zip(stage_nodes) {
            pipeline.stages.push(StageState {
                name: spec.name.into(),
                routing: spec.routing,
                factory: spec.factory,
                max_workers: spec.max_workers,
                workers: nodes,
                retired: Retired::default(),
            });
        }
        let mut outputs = outputs.into_iter();
        let source_outputs = outputs.next().and_then(|o| o.into_iter().next()).unwrap_or_default();
        let mut later_outputs: Vec<Vec<Vec<Output<T>>>> = outputs.collect();
        later_outputs.push(Vec::new()); // the last stage has no outputs
        for (s, (ins, outs)) in inputs.into_iter().zip(later_outputs).enumerate() {
            let mut outs = outs.into_iter();
            for (i, ins) in ins.into_iter().enumerate() {
                let outs_i = outs.next().unwrap_or_default();
                pipeline.spawn_stage_worker(s, i, ins, outs_i)?;
            }
        }
        pipeline.spawn_source(source, source_outputs)?;
        Ok(pipeline)
    }
}

/// One boundary's rings: each upstream worker's outputs, each downstream worker's inputs,
/// and every ring's counts (empty unless the pipeline keeps frontiers).
type Wiring<T> = (Vec<Vec<Output<T>>>, Vec<Vec<Input<T>>>, Vec<Arc<RingCounts>>);

/// Builds the `up x down` rings of one boundary: the outputs of each upstream worker
/// (indexed by downstream worker) and the inputs of each downstream worker.
fn wire<T>(config: &Config, up: &[&Node<T>], down: &[&Node<T>]) -> Wiring<T> {
    let mut outputs: Vec<Vec<Output<T>>> = up.iter().map(|_| Vec::with_capacity(down.len())).collect();
    let mut inputs: Vec<Vec<Input<T>>> = down.iter().map(|_| Vec::with_capacity(up.len())).collect();
    let mut all_counts = Vec::new();
    for (j, u) in up.iter().enumerate() {
        for (i, d) in down.iter().enumerate() {
            let (tx, rx) = channel_between(config.ring_capacity, config.wait, u.waiter.clone(), d.waiter.clone());
            let probe = config.latency.then(|| Arc::new(Probe::default()));
            let counts = config.frontier.then(|| Arc::new(RingCounts::default()));
            if let Some(c) = &counts {
                all_counts.push(c.clone());
            }
            outputs[j].push(Output::new(tx, probe.clone(), counts.clone()));
            inputs[i].push(Input::new(rx, probe, counts));
        }
    }
    (outputs, inputs, all_counts)
}

/// A worker as the pipeline sees it.
struct Node<T> {
    control: Arc<Control<T>>,
    waiter: Arc<Waiter>,
    stats: Arc<WorkerStats>,
    thread: Option<JoinHandle<()>>,
}

impl<T> Node<T> {
    fn new(latency: bool) -> Node<T> {
        Node {
            control: Arc::new(Control::new()),
            waiter: Arc::new(Waiter::new()),
            stats: Arc::new(WorkerStats::new(latency)),
            thread: None,
        }
    }
}

/// Figures of workers removed by scale downs.
#[derive(Default)]
struct Retired {
    events: u64,
    discarded: u64,
    hop_latency: Option<LatencyHistogram>,
}

struct StageState<T> {
    name: Arc<str>,
    routing: Routing<T>,
    factory: Factory<T>,
    max_workers: usize,
    workers: Vec<Node<T>>,
    retired: Retired,
}

struct SourceState<T> {
    name: Arc<str>,
    node: Node<T>,
}

/// A running pipeline; see the [module docs](self).
///
/// A stage scaled up and down while events flow handles each event once:
///
/// ```
/// use shoal::pipeline::{Emitter, Pipeline, Routing, Source};
/// use shoal::ring::{channel, WaitStrategy};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let handled = Arc::new(AtomicU64::new(0));
/// let counter = handled.clone();
/// let (mut input, rx) = channel::<u64>(1024, WaitStrategy::Park);
/// let mut pipeline = Pipeline::<u64>::builder()
///     .pin(false)
///     .source("input", Source::ring(rx))
///     .stage("count", 1, Routing::ByKey(|v: &u64| *v % 16), move |_worker| {
///         let counter = counter.clone();
///         move |batch: &[u64], _: &mut Emitter<u64>| {
///             counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
///         }
///     })
///     .build()?;
/// for v in 0..1000 {
///     input.push_wait(v)?;
/// }
/// let report = pipeline.scale("count", 4)?; // events may still be in flight
/// assert_eq!((report.from, report.to), (1, 4));
/// for v in 1000..2000 {
///     input.push_wait(v)?;
/// }
/// pipeline.scale("count", 2)?;
/// assert_eq!(pipeline.workers("count")?, 2);
/// drop(input); // the ring source ends once its ring is drained
/// pipeline.join()?;
/// assert_eq!(handled.load(Ordering::Relaxed), 2000); // none lost, none twice
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pipeline<T> {
    shared: Arc<Shared<T>>,
    source: SourceState<T>,
    stages: Vec<StageState<T>>,
    plan: CpuPlan,
    /// CPUs claimed for threads not started yet (taken from the end).
    claims: Vec<CpuClaim>,
    /// The oversubscription warning was given.
    warned: bool,
    started: Instant,
    last_metrics: Mutex<Vec<(Instant, u64)>>,
    scales: u64,
    finished: bool,
}

impl<T: Send + 'static> Pipeline<T> {
    /// A builder with the defaults: park when idle, 1024-slot rings, batches of up to 256,
    /// pinned workers, no latency histograms.
    pub fn builder() -> PipelineBuilder<T> {
        PipelineBuilder {
            config: Config {
                wait: WaitStrategy::Park,
                ring_capacity: 1024,
                batch_max: 256,
                pin: Pinning::Spread,
                latency: false,
                slip: SLIP_DEFAULT,
                frontier: false,
            },
            source: None,
            stages: Vec::new(),
        }
    }

    /// The stages' names, in order (without the source).
    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.to_string()).collect()
    }

    /// Workers of a stage now.
    ///
    /// # Errors
    /// [`PipelineError::UnknownStage`].
    pub fn workers(&self, stage: &str) -> Result<usize, PipelineError> {
        Ok(self.stages[self.stage_index(stage)?].workers.len())
    }

    /// True once the pipeline stopped on a failure (a panic, a failed source or sink); `shutdown`
    /// or `join` then returns the error.
    pub fn is_failed(&self) -> bool {
        self.shared.aborted()
    }

    fn stage_index(&self, stage: &str) -> Result<usize, PipelineError> {
        self.stages
            .iter()
            .position(|s| &*s.name == stage)
            .ok_or_else(|| PipelineError::UnknownStage { name: stage.to_string(), known: self.stage_names() })
    }

    fn next_cpu(&mut self) -> Option<CpuClaim> {
        self.claims.pop()
    }

    fn parts(
        &mut self,
        stage: Option<usize>,
        index: usize,
        inputs: Vec<Input<T>>,
        outputs: Vec<Output<T>>,
    ) -> WorkerParts<T> {
        let cpu = self.next_cpu();
        let (name, node, routing) = match stage {
            None => (self.source.name.clone(), &self.source.node, self.stages.first().map(|s| s.routing)),
            Some(s) => {
                (self.stages[s].name.clone(), &self.stages[s].workers[index], self.stages.get(s + 1).map(|n| n.routing))
            }
        };
        let mut emitter = Emitter::new(self.shared.abort.clone(), self.shared.clock.clone());
        emitter.rewire(outputs, routing.unwrap_or(Routing::RoundRobin));
        WorkerParts {
            stage: name,
            index,
            inputs,
            emitter,
            control: node.control.clone(),
            waiter: node.waiter.clone(),
            stats: node.stats.clone(),
            shared: self.shared.clone(),
            cpu,
        }
    }

    /// Starts stage `s`'s worker `index` (its node already in `workers`).
    fn spawn_stage_worker(
        &mut self,
        s: usize,
        index: usize,
        inputs: Vec<Input<T>>,
        outputs: Vec<Output<T>>,
    ) -> Result<(), PipelineError> {
        let parts = self.parts(Some(s), index, inputs, outputs);
        let factory = self.stages[s].factory.clone();
        let name = format!("shoal-{}-{}", self.stages[s].name, index);
        let spawned =
            std::thread::Builder::new().name(name.clone()).spawn(move || worker::run_stage_worker(parts, factory));
        let control = self.stages[s].workers[index].control.clone();
        let handle = self.started_thread(control, spawned, name)?;
        self.stages[s].workers[index].thread = Some(handle);
        Ok(())
    }

    fn spawn_source(&mut self, source: Source<T>, outputs: Vec<Output<T>>) -> Result<(), PipelineError> {
        let parts = self.parts(None, 0, Vec::new(), outputs);
        let kind: SourceKind<T> = source.kind;
        let name = format!("shoal-{}-0", self.source.name);
        let spawned = std::thread::Builder::new().name(name.clone()).spawn(move || worker::run_source(parts, kind));
        let control = self.source.node.control.clone();
        let handle = self.started_thread(control, spawned, name)?;
        self.source.node.thread = Some(handle);
        Ok(())
    }

    /// Registers a started thread, or stops the pipeline when it could not start.
    fn started_thread(
        &self,
        control: Arc<Control<T>>,
        spawned: std::io::Result<JoinHandle<()>>,
        name: String,
    ) -> Result<JoinHandle<()>, PipelineError> {
        match spawned {
            Ok(handle) => {
                let _ = control.thread.set(handle.thread().clone());
                lock(&self.shared.controls).push(control);
                Ok(handle)
            }
            Err(error) => {
                let failure = Failure::Spawn { thread: name.clone(), kind: error.kind(), message: error.to_string() };
                self.shared.fail(failure);
                Err(PipelineError::Spawn { thread: name, error })
            }
        }
    }

    /// Per-stage figures, the source first.
    pub fn metrics(&self) -> Vec<StageMetrics> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.stages.len() + 1);
        out.push(StageMetrics {
            name: self.source.name.to_string(),
            workers: 1,
            events: self.source.node.stats.events.load(Ordering::Relaxed),
            events_per_s: 0.0,
            ring_occupancy: 0.0,
            hop_latency: None,
        });
        for stage in &self.stages {
            let mut events = stage.retired.events;
            let (mut backlog, mut capacity) = (0u64, 0u64);
            let mut hist = self.shared.config.latency.then(LatencyHistogram::new);
            if let (Some(h), Some(r)) = (&mut hist, &stage.retired.hop_latency) {
                h.merge(r);
            }
            for node in &stage.workers {
                events += node.stats.events.load(Ordering::Relaxed);
                backlog += node.stats.backlog.load(Ordering::Relaxed);
                capacity += node.stats.capacity.load(Ordering::Relaxed);
                if let (Some(h), Some(w)) = (&mut hist, &node.stats.hop_latency) {
                    h.merge(&lock(w));
                }
            }
            out.push(StageMetrics {
                name: stage.name.to_string(),
                workers: stage.workers.len(),
                events,
                events_per_s: 0.0,
                ring_occupancy: if capacity == 0 { 0.0 } else { (backlog as f64 / capacity as f64).min(1.0) },
                hop_latency: hist,
            });
        }
        let mut last = lock(&self.last_metrics);
        if last.len() != out.len() {
            *last = vec![(self.started, 0); out.len()];
        }
        for (m, (at, events)) in out.iter_mut().zip(last.iter_mut()) {
            let secs = now.duration_since(*at).as_secs_f64();
            if secs > 0.0 {
                m.events_per_s = m.events.saturating_sub(*events) as f64 / secs;
            }
            *at = now;
            *events = m.events;
        }
        out
    }

    /// The error that stopped the pipeline (kept: every call reports it), or `AlreadyStopped`.
    fn stopped_error(&self) -> PipelineError {
        self.shared.failure().unwrap_or(PipelineError::AlreadyStopped)
    }

    /// Resizes a running stage to `workers` workers, with no event lost or duplicated and
    /// per-key order kept (see the [module docs](self) for the protocol). Other stages keep
    /// running; the stage, its upstream and the next stage pause for the returned time.
    ///
    /// # Errors
    /// [`PipelineError::UnknownStage`]; [`PipelineError::InvalidWorkers`] for 0, more than
    /// [`STAGE_WORKERS_MAX`], or more than 1 for a sink; [`PipelineError::Spawn`] (the
    /// pipeline then stops); the error that stopped the pipeline (such as
    /// [`PipelineError::Panicked`]) when it stopped before or during the scale.
    pub fn scale(&mut self, stage: &str, workers: usize) -> Result<ScaleReport, PipelineError> {
        if self.finished || self.shared.aborted() {
            return Err(self.stopped_error());
        }
        let s = self.stage_index(stage)?;
        let max = self.stages[s].max_workers;
        if workers == 0 || workers > max {
            return Err(PipelineError::InvalidWorkers { stage: stage.to_string(), workers, max });
        }
        let from = self.stages[s].workers.len();
        if workers == from {
            return Ok(ScaleReport { stage: stage.to_string(), from, to: workers, pause: Duration::ZERO });
        }
        if workers > from {
            let (claims, short) = claim_cpus(&self.plan, self.shared.config.pin, workers - from)?;
            if let (Some(short), false) = (short, self.warned) {
                warn_oversubscribed(&self.source.name, short);
                self.warned = true;
            }
            // Taken from the end: the first added worker gets the first claim.
            self.claims = claims.into_iter().rev().collect();
        }
        let begun = Instant::now();
        let abort = self.shared.abort.clone();
        let has_next = s + 1 < self.stages.len();

        // 1. Pause the upstream at a batch boundary.
        let ups: Vec<&Node<T>> =
            if s == 0 { vec![&self.source.node] } else { self.stages[s - 1].workers.iter().collect() };
        let up_alive = pause_all(&ups, Pause::Now, &abort).map_err(|()| self.stopped_error())?;
        // 2. Pause the stage once drained.
        let mine: Vec<&Node<T>> = self.stages[s].workers.iter().collect();
        pause_all(&mine, Pause::WhenDrained, &abort).map_err(|()| self.stopped_error())?;
        // 3. Pause the next stage once everything the stage emitted is consumed.
        if has_next {
            let next: Vec<&Node<T>> = self.stages[s + 1].workers.iter().collect();
            pause_all(&next, Pause::WhenDrained, &abort).map_err(|()| self.stopped_error())?;
        }

        // 4. New rings, new wiring.
        let config = self.shared.config;
        let mut removed: Vec<Node<T>> = Vec::new();
        if workers < from {
            removed = self.stages[s].workers.drain(workers..).collect();
        } else {
            for _ in from..workers {
                self.stages[s].workers.push(Node::new(config.latency));
            }
        }
        let live_ups: Vec<&Node<T>> = ups_of(&self.source, &self.stages, s)
            .into_iter()
            .zip(&up_alive)
            .filter_map(|(n, &alive)| alive.then_some(n))
            .collect();
        let mine: Vec<&Node<T>> = self.stages[s].workers.iter().collect();
        let (up_outputs, my_inputs, counts_in) = wire(&config, &live_ups, &mine);
        let (my_outputs, next_inputs, counts_out) = if has_next {
            let next: Vec<&Node<T>> = self.stages[s + 1].workers.iter().collect();
            wire(&config, &mine, &next)
        } else {
            (mine.iter().map(|_| Vec::new()).collect(), Vec::new(), Vec::new())
        };
        if config.frontier {
            // Installed while every ring being replaced is drained and before anyone
            // pushes into the new ones: a frontier snapshot taken from here on sees the
            // new rings, one taken before waits on the old ones, whose counts are final.
            let mut topology = lock(&self.shared.topology);
            topology[s] = counts_in;
            if has_next {
                topology[s + 1] = counts_out;
            }
        }
        let routing_in = self.stages[s].routing;
        let routing_out = self.stages.get(s + 1).map_or(Routing::RoundRobin, |n| n.routing);

        // 5. Resume everyone: upstream, the stage (survivors, removed, added), the next stage.
        for (node, outputs) in live_ups.iter().zip(up_outputs) {
            node.control.resume(Rewire { inputs: None, outputs: Some((outputs, routing_in)), exit: false });
        }
        for node in &removed {
            node.control.resume(Rewire { inputs: None, outputs: None, exit: true });
        }
        if has_next {
            for (node, inputs) in self.stages[s + 1].workers.iter().zip(next_inputs) {
                node.control.resume(Rewire { inputs: Some(inputs), outputs: None, exit: false });
            }
        }
        let mut added = Vec::new();
        for (i, (inputs, outputs)) in my_inputs.into_iter().zip(my_outputs).enumerate() {
            if i < from.min(workers) {
                let rewire = Rewire { inputs: Some(inputs), outputs: Some((outputs, routing_out)), exit: false };
                self.stages[s].workers[i].control.resume(rewire);
            } else {
                added.push((i, inputs, outputs));
            }
        }
        for (i, inputs, outputs) in added {
            self.spawn_stage_worker(s, i, inputs, outputs)?;
        }
        self.claims.clear();
        let pause = begun.elapsed();

        // Removed workers leave at once (their rings are empty): join them, keep their figures.
        for mut node in removed {
            if let Some(t) = node.thread.take() {
                let _ = t.join();
            }
            let retired = &mut self.stages[s].retired;
            retired.events += node.stats.events.load(Ordering::Relaxed);
            retired.discarded += node.stats.discarded.load(Ordering::Relaxed);
            if let Some(h) = &node.stats.hop_latency {
                retired.hop_latency.get_or_insert_with(LatencyHistogram::new).merge(&lock(h));
            }
        }
        lock(&self.shared.controls).retain(|c| !c.exited());
        self.scales += 1;
        if self.shared.aborted() {
            return Err(self.stopped_error());
        }
        Ok(ScaleReport { stage: stage.to_string(), from, to: workers, pause })
    }

    /// Stops the source, lets every stage drain what is in flight, joins every thread.
    ///
    /// # Errors
    /// The error that stopped the pipeline, if one did ([`PipelineError::Panicked`],
    /// [`PipelineError::SourceFailed`], [`PipelineError::SinkFailed`], ...).
    pub fn shutdown(mut self) -> Result<PipelineStats, PipelineError> {
        self.shared.stop_source.store(true, Ordering::SeqCst);
        self.source.node.control.wake();
        self.finish()
    }

    /// Waits for a source that ends by itself (and for the stages to drain), joins every
    /// thread.
    ///
    /// # Errors
    /// As [`Pipeline::shutdown`].
    pub fn join(mut self) -> Result<PipelineStats, PipelineError> {
        self.finish()
    }

    fn join_threads(&mut self) {
        if let Some(t) = self.source.node.thread.take() {
            let _ = t.join();
        }
        for stage in &mut self.stages {
            for node in &mut stage.workers {
                if let Some(t) = node.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }

    fn finish(&mut self) -> Result<PipelineStats, PipelineError> {
        self.join_threads();
        self.finished = true;
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        let elapsed = self.started.elapsed();
        lock(&self.last_metrics).clear();
        let stages = self.metrics();
        let mut discarded = 0;
        for stage in &self.stages {
            discarded += stage.retired.discarded;
            discarded += stage.workers.iter().map(|n| n.stats.discarded.load(Ordering::Relaxed)).sum::<u64>();
        }
        Ok(PipelineStats { stages, discarded, scales: self.scales, elapsed })
    }
}

impl<T> Drop for Pipeline<T> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.shared.abort_all();
        if let Some(t) = self.source.node.thread.take() {
            let _ = t.join();
        }
        for stage in &mut self.stages {
            for node in &mut stage.workers {
                if let Some(t) = node.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// Claims CPUs for `threads` threads to be pinned per `pin` (none when off), in the order
/// they are spawned (the last claim first).
///
/// # Errors
/// [`PipelineError::Oversubscribed`] with [`Pinning::Strict`] when some would share a CPU.
fn claim_cpus(
    plan: &CpuPlan,
    pin: Pinning,
    threads: usize,
) -> Result<(Vec<CpuClaim>, Option<crate::affinity::Oversubscribed>), PipelineError> {
    if pin == Pinning::Off {
        return Ok((Vec::new(), None));
    }
    match plan.claim(threads, pin == Pinning::Strict) {
        Ok((mut claims, short)) => {
            claims.reverse();
            Ok((claims, short))
        }
        Err(short) => Err(PipelineError::Oversubscribed { threads: short.threads, cpus: short.cpus, free: short.free }),
    }
}

/// The one warning of a pipeline whose pinned threads share CPUs.
fn warn_oversubscribed(pipeline: &str, short: crate::affinity::Oversubscribed) {
    tracing::warn!(
        "pipeline {pipeline:?}: {short}; pinned threads share CPUs (use fewer workers, Pinning::Strict to fail \
         instead, or pin(false))"
    );
}

/// The upstream nodes of stage `s`.
fn ups_of<'a, T>(source: &'a SourceState<T>, stages: &'a [StageState<T>], s: usize) -> Vec<&'a Node<T>> {
    if s == 0 {
        vec![&source.node]
    } else {
        stages[s - 1].workers.iter().collect()
    }
}

/// Asks every node to pause and waits for each to acknowledge; says which are alive (a
/// node that exited meanwhile counts as paused).
fn pause_all<T>(nodes: &[&Node<T>], pause: Pause, abort: &std::sync::atomic::AtomicBool) -> Result<Vec<bool>, ()> {
    for node in nodes {
        node.control.request(pause);
    }
    nodes.iter().map(|n| n.control.wait_ack(abort)).collect()
}
