//! Worker threads: the stage loop, the source loop, and the per-worker control slot through
//! which [`scale`](super::Pipeline::scale) pauses and rewires a running worker.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use super::emit::{Emitter, Input, Output, Routing};
use super::error::PipelineError;
use super::frontier::{Progress, Topology};
use super::source::{Decode, SourceKind, Stops};
use super::{Config, Factory, WorkerId};
use crate::affinity::{self, CpuClaim};
use crate::log::Offset;
use crate::ring::{PopError, Waiter};
use crate::sys::histogram::LatencyHistogram;

/// Longest single wait on a control slot: a bound, not a polling interval (every change
/// of a slot notifies its condition variable).
const CONTROL_WAIT: Duration = Duration::from_millis(100);

/// Longest single wait of a following log source for new records; shutdown and pauses
/// reach an idle log source within this (its tailer sleeps on the log's futex, which the
/// pipeline cannot wake).
pub(crate) const LOG_IDLE_SLICE: Duration = Duration::from_millis(5);

pub(crate) fn lock<G>(m: &Mutex<G>) -> MutexGuard<'_, G> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State every thread of one pipeline shares.
pub(crate) struct Shared<T> {
    /// Stop everything now (a panic, a failed source, a dropped pipeline): blocked pushes
    /// and waits give up, workers exit without draining.
    pub(crate) abort: Arc<AtomicBool>,
    /// Shutdown: the source stops; the stages drain and exit as their inputs close.
    pub(crate) stop_source: AtomicBool,
    /// The first failure: kept, so every later call reports it.
    pub(crate) failure: Mutex<Option<Failure>>,
    /// Every worker's control (pruned of exited ones on scale), to wake them all on abort.
    pub(crate) controls: Mutex<Vec<Arc<Control<T>>>>,
    pub(crate) clock: quanta::Clock,
    pub(crate) config: Config,
    /// Per boundary (boundary `b` feeds stage `b`, from the source for `b = 0`), the counts
    /// of its rings now: the map a group source's frontiers walk. Empty unless
    /// `config.frontier`; replaced by a scale while the rings it replaces are drained.
    pub(crate) topology: Topology,
}

impl<T> Shared<T> {
    pub(crate) fn new(config: Config) -> Shared<T> {
        Shared {
            abort: Arc::new(AtomicBool::new(false)),
            stop_source: AtomicBool::new(false),
            failure: Mutex::new(None),
            controls: Mutex::new(Vec::new()),
            clock: quanta::Clock::new(),
            config,
            topology: Mutex::new(Vec::new()),
        }
    }

    #[inline]
    pub(crate) fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// What a group source's frontiers read.
    pub(crate) fn progress(&self) -> Progress<'_> {
        Progress { topology: &self.topology, abort: &self.abort }
    }

    /// Records `error` (the first one wins) and stops every thread.
    pub(crate) fn fail(&self, error: Failure) {
        {
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                *failure = Some(error);
            }
        }
        self.abort_all();
    }

    /// Stops every thread without recording an error.
    pub(crate) fn abort_all(&self) {
        self.abort.store(true, Ordering::SeqCst);
        let controls: Vec<Arc<Control<T>>> = lock(&self.controls).clone();
        for control in controls {
            control.wake();
        }
    }

    /// The error that stopped the pipeline, if one did: the same one on every call.
    pub(crate) fn failure(&self) -> Option<PipelineError> {
        lock(&self.failure).as_ref().map(Failure::error)
    }
}

/// What stopped a running pipeline. Recorded once (the first wins) and kept: `scale`, `join`
/// and `shutdown` each report it, however many of them come after the failure.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// A handler, a handler factory or the source panicked.
    Panicked { stage: String, worker: usize, message: String },
    /// The source met an error it cannot go on from.
    SourceFailed { name: String, message: String },
    /// A sink's append or final sync failed.
    SinkFailed { stage: String, message: String },
    /// A worker thread could not be started: the OS error's kind and text.
    Spawn { thread: String, kind: std::io::ErrorKind, message: String },
}

impl Failure {
    /// The failure as the error a call reports.
    pub(crate) fn error(&self) -> PipelineError {
        match self.clone() {
            Failure::Panicked { stage, worker, message } => PipelineError::Panicked { stage, worker, message },
            Failure::SourceFailed { name, message } => PipelineError::SourceFailed { name, message },
            Failure::SinkFailed { stage, message } => PipelineError::SinkFailed { stage, message },
            Failure::Spawn { thread, kind, message } => {
                PipelineError::Spawn { thread, error: std::io::Error::new(kind, message) }
            }
        }
    }
}

/// A worker's counters, written by the worker and read by [`super::Pipeline::metrics`].
#[derive(Debug, Default)]
pub(crate) struct WorkerStats {
    /// Events handled (a stage worker) or emitted (the source).
    pub(crate) events: CachePadded<AtomicU64>,
    /// Values waiting in the worker's inputs at its last look, and their capacity.
    pub(crate) backlog: AtomicU64,
    pub(crate) capacity: AtomicU64,
    /// Events emitted with no downstream, or dropped because the pipeline was aborting.
    pub(crate) discarded: AtomicU64,
    /// Sampled hop latency of the worker's inputs (when latency metrics are on).
    pub(crate) hop_latency: Option<Mutex<LatencyHistogram>>,
}

impl WorkerStats {
    pub(crate) fn new(latency: bool) -> WorkerStats {
        WorkerStats { hop_latency: latency.then(|| Mutex::new(LatencyHistogram::new())), ..WorkerStats::default() }
    }
}

/// When a paused worker acknowledges a pause request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pause {
    /// At the next batch boundary (the upstream of a stage being scaled).
    Now,
    /// Once every input is empty (the stage being scaled, whose upstream is paused; and
    /// the stage after it, whose upstream is then paused and drained).
    WhenDrained,
}

/// New wiring handed to a paused worker; it resumes when it gets one.
pub(crate) struct Rewire<T> {
    pub(crate) inputs: Option<Vec<Input<T>>>,
    pub(crate) outputs: Option<(Vec<Output<T>>, Routing<T>)>,
    /// Leave the pipeline (a worker removed by a scale down; its inputs are empty).
    pub(crate) exit: bool,
}

pub(crate) struct Slot<T> {
    request: Option<Pause>,
    /// Requests posted so far, and the last one acknowledged: a worker that resumes from
    /// one pause may find the next request already posted, and must not clear it.
    requested: u64,
    acked: u64,
    exited: bool,
    rewire: Option<Rewire<T>>,
}

/// A worker's control slot: the controller (a thread in `scale`) posts a pause request,
/// the worker acknowledges and waits, the controller hands it new wiring, the worker
/// resumes. The worker checks `pending` once per loop (one relaxed load); everything else
/// is behind the mutex, off the hot path.
pub(crate) struct Control<T> {
    pub(crate) pending: CachePadded<AtomicBool>,
    slot: Mutex<Slot<T>>,
    cond: Condvar,
    /// The worker's thread, to unpark it wherever it sleeps (set right after spawn).
    pub(crate) thread: OnceLock<Thread>,
}

/// What serving a control request came to.
pub(crate) enum Served<T> {
    /// The request waits for a condition (inputs drained) not met yet.
    NotYet,
    /// Paused, then resumed with this wiring.
    Resumed(Rewire<T>),
    /// The pipeline is aborting.
    Abort,
}

impl<T> Control<T> {
    pub(crate) fn new() -> Control<T> {
        Control {
            pending: CachePadded::new(AtomicBool::new(false)),
            slot: Mutex::new(Slot { request: None, requested: 0, acked: 0, exited: false, rewire: None }),
            cond: Condvar::new(),
            thread: OnceLock::new(),
        }
    }

    #[inline]
    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Wakes the worker wherever it waits: its control slot, a ring's waiter, a park.
    pub(crate) fn wake(&self) {
        drop(lock(&self.slot));
        self.cond.notify_all();
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// Controller: asks the worker to pause.
    pub(crate) fn request(&self, pause: Pause) {
        {
            let mut slot = lock(&self.slot);
            slot.request = Some(pause);
            slot.requested += 1;
            // pairs with the Acquire load in `pending`; the unpark below also
            // synchronizes with the worker's park returning.
            self.pending.store(true, Ordering::SeqCst);
        }
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// Controller: waits until the worker acknowledged (true) or exited (false).
    ///
    /// # Errors
    /// `Err(())` when the pipeline aborts meanwhile.
    pub(crate) fn wait_ack(&self, abort: &AtomicBool) -> Result<bool, ()> {
        let mut slot = lock(&self.slot);
        loop {
            if slot.exited {
                return Ok(false);
            }
            if slot.acked == slot.requested {
                return Ok(true);
            }
            if abort.load(Ordering::SeqCst) {
                return Err(());
            }
            slot = self.cond.wait_timeout(slot, CONTROL_WAIT).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Controller: resumes a paused worker with new wiring (dropped if it exited).
    pub(crate) fn resume(&self, rewire: Rewire<T>) {
        let mut slot = lock(&self.slot);
        if slot.exited {
            return;
        }
        slot.rewire = Some(rewire);
        drop(slot);
        self.cond.notify_all();
    }

    /// True once the worker's thread has left its loop.
    pub(crate) fn exited(&self) -> bool {
        lock(&self.slot).exited
    }

    /// Worker: serves a pending request. Pauses (acknowledges, then waits for new wiring)
    /// when the request's condition holds; `drained` says whether every input is empty.
    pub(crate) fn serve(&self, drained: impl FnOnce() -> bool, abort: &AtomicBool) -> Served<T> {
        let mut slot = lock(&self.slot);
        match slot.request {
            None => {
                self.pending.store(false, Ordering::Relaxed);
                return Served::NotYet;
            }
            Some(Pause::WhenDrained) if !drained() => return Served::NotYet,
            Some(_) => {}
        }
        slot.acked = slot.requested;
        self.cond.notify_all();
        loop {
            if let Some(rewire) = slot.rewire.take() {
                if slot.acked == slot.requested {
                    slot.request = None;
                    self.pending.store(false, Ordering::Relaxed);
                }
                return Served::Resumed(rewire);
            }
            if abort.load(Ordering::SeqCst) {
                return Served::Abort;
            }
            slot = self.cond.wait_timeout(slot, CONTROL_WAIT).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// Marks the worker exited when its thread leaves (normally or by unwinding).
struct ExitGuard<T>(Arc<Control<T>>);

impl<T> Drop for ExitGuard<T> {
    fn drop(&mut self) {
        let mut slot = lock(&self.0.slot);
        slot.exited = true;
        slot.rewire = None;
        drop(slot);
        self.0.cond.notify_all();
    }
}

/// What one worker thread (or the source thread) starts with.
pub(crate) struct WorkerParts<T> {
    pub(crate) stage: Arc<str>,
    pub(crate) index: usize,
    pub(crate) inputs: Vec<Input<T>>,
    pub(crate) emitter: Emitter<T>,
    pub(crate) control: Arc<Control<T>>,
    pub(crate) waiter: Arc<Waiter>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) shared: Arc<Shared<T>>,
    /// The CPU to pin to, held until the thread exits.
    pub(crate) cpu: Option<CpuClaim>,
}

impl<T> WorkerParts<T> {
    fn start_thread(&self) {
        affinity::name_current(&format!("shoal-{}-{}", self.stage, self.index));
        if let Some(cpu) = self.cpu.as_ref().map(CpuClaim::cpu) {
            if let Err(e) = affinity::pin_current(cpu) {
                tracing::warn!("shoal-{}-{}: cannot pin to cpu {cpu}: {e}; running unpinned", self.stage, self.index);
            }
        }
    }

    fn panicked(&self, payload: &(dyn std::any::Any + Send)) {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".to_string());
        self.shared.fail(Failure::Panicked { stage: self.stage.to_string(), worker: self.index, message });
    }

    fn sink_failed(&self, message: String) {
        self.shared.fail(Failure::SinkFailed { stage: self.stage.to_string(), message });
    }

    fn publish_backlog(&self) {
        let (mut backlog, mut capacity) = (0u64, 0u64);
        for input in &self.inputs {
            backlog += input.rx.slots() as u64;
            capacity += input.rx.capacity() as u64;
        }
        self.stats.backlog.store(backlog, Ordering::Relaxed);
        self.stats.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Turns what a source's run of calls came to into whether the source goes on, failing the
    /// pipeline on an error or a panic.
    fn source_result(&self, result: std::thread::Result<Result<bool, String>>) -> bool {
        match result {
            Ok(Ok(go_on)) => go_on,
            Ok(Err(message)) => {
                self.shared.fail(Failure::SourceFailed { name: self.stage.to_string(), message });
                false
            }
            Err(payload) => {
                self.panicked(payload.as_ref());
                false
            }
        }
    }

    fn finish(&mut self) {
        self.emitter.notify();
        self.stats.discarded.store(self.emitter.discarded, Ordering::Relaxed);
        self.stats.backlog.store(0, Ordering::Relaxed);
    }
}

/// Batches shorter than this count as small for [`Slip`] (four cache lines of `u64`
/// events: with 8, a pipeline settled at just under 8 per slip, 32-34 M/s in
/// `benches/pipeline.rs` against 42-45 M/s with 32).
const SLIP_BATCH: usize = 32;

/// The worker's slip: after a small batch it lets its rings fill for a moment before it
/// reads again.
///
/// A single-producer single-consumer hand-off is bistable. While the producer stays ahead,
/// the consumer reads whole batches and neither side waits for the other's cache lines.
/// Once the consumer keeps up, it reads each event as it lands: every event then moves the
/// slot's cache line and the tail's across cores, and each of the producer's stores waits
/// for a line the consumer just took. Both sides then run at the speed of those transfers.
/// Letting the producer run ahead by a few hundred nanoseconds puts the pair back in the
/// fast state (FastForward's "temporal slipping"); `benches/pipeline.rs` shows it.
///
/// The slip comes after the batch is handled, so it delays no event that was read: only
/// one that lands during the slip, by at most the slip. A lone event, and events further
/// apart than the slip, never wait for it.
struct Slip {
    ns: u64,
    /// Slipping now, since this time (raw clock).
    since: Option<u64>,
}

impl Slip {
    fn new(period: Duration) -> Slip {
        Slip { ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX), since: None }
    }

    /// A batch of `len` events was just handled.
    #[inline]
    fn read(&mut self, len: usize, clock: &quanta::Clock) {
        if self.ns > 0 && len < SLIP_BATCH {
            self.since = Some(clock.raw());
        }
    }

    /// Waits out a slip, if one is due (bounded by the period, at most 1 ms).
    #[inline]
    fn wait(&mut self, clock: &quanta::Clock) {
        if let Some(since) = self.since.take() {
            while clock.delta_as_nanos(since, clock.raw()) < self.ns {
                std::hint::spin_loop();
            }
        }
    }
}

/// A stage worker's thread: poll inputs fairly, hand each batch to the handler, route what
/// it emits, serve control requests, sleep when idle; exit when every input is closed and
/// drained, when told to by a scale down, or when the pipeline aborts.
pub(crate) fn run_stage_worker<T: Send + 'static>(mut w: WorkerParts<T>, factory: Factory<T>) {
    w.start_thread();
    let _guard = ExitGuard(w.control.clone());
    let mut handler = match catch_unwind(AssertUnwindSafe(|| factory(WorkerId(w.index)))) {
        Ok(h) => h,
        Err(payload) => {
            w.panicked(payload.as_ref());
            return;
        }
    };
    let shared = w.shared.clone();
    let (batch_max, wait) = (shared.config.batch_max, shared.config.wait);
    let mut start = 0usize;
    let mut events = 0u64;
    let mut loops = 0u32;
    let mut slip = Slip::new(shared.config.slip);
    'run: loop {
        slip.wait(&shared.clock);
        if shared.aborted() {
            break;
        }
        if w.control.pending() {
            let inputs = &w.inputs;
            match w.control.serve(|| inputs.iter().all(|i| i.rx.is_empty()), &shared.abort) {
                Served::NotYet => {}
                Served::Abort => break,
                Served::Resumed(rewire) => {
                    if rewire.exit {
                        break;
                    }
                    if let Some(inputs) = rewire.inputs {
                        w.inputs = inputs;
                        start = 0;
                    }
                    if let Some((outputs, routing)) = rewire.outputs {
                        w.emitter.rewire(outputs, routing);
                    }
                    w.publish_backlog();
                    continue;
                }
            }
        }
        let n = w.inputs.len();
        if n == 0 {
            // Every producer is gone and every input drained: the handler finishes.
            match catch_unwind(AssertUnwindSafe(|| handler.finish())) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => w.sink_failed(message),
                Err(payload) => w.panicked(payload.as_ref()),
            }
            break;
        }
        let mut worked = false;
        let mut closed = false;
        for k in 0..n {
            let at = if start + k >= n { start + k - n } else { start + k };
            let Input { rx, probe, taken, counts } = &mut w.inputs[at];
            let batch = rx.read(batch_max);
            let len = batch.len();
            if len == 0 {
                drop(batch);
                closed |= rx.is_closed();
                continue;
            }
            if let Some(probe) = probe {
                if let Some(ns) = probe.took(*taken, len, &shared.clock) {
                    if let Some(hist) = &w.stats.hop_latency {
                        lock(hist).record(ns);
                    }
                }
            }
            *taken += len as u64;
            let (a, b) = batch.as_slices();
            let emitter = &mut w.emitter;
            let result = catch_unwind(AssertUnwindSafe(|| {
                handler.handle(a, emitter)?;
                if !b.is_empty() {
                    handler.handle(b, emitter)?;
                }
                Ok(())
            }));
            w.emitter.notify();
            batch.commit();
            events += len as u64;
            w.stats.events.store(events, Ordering::Relaxed);
            match result {
                Ok(Ok(())) => {
                    if let Some(counts) = counts {
                        // Finished: what the batch made is pushed downstream (the stores
                        // of `publish_pushed` come first). Pairs with the Acquire load in
                        // `frontier::Pending::reached`. A failed batch never counts.
                        w.emitter.publish_pushed();
                        counts.done.store(*taken, Ordering::Release);
                    }
                }
                Ok(Err(message)) => {
                    w.sink_failed(message);
                    break 'run;
                }
                Err(payload) => {
                    w.panicked(payload.as_ref());
                    break 'run;
                }
            }
            worked = true;
            slip.read(len, &shared.clock);
            start = at + 1;
            break;
        }
        if closed {
            w.inputs.retain(|i| !i.rx.is_closed());
            start = 0;
            continue;
        }
        loops = loops.wrapping_add(1);
        if !worked || loops % 8 == 0 {
            w.publish_backlog();
        }
        if !worked {
            let (inputs, control) = (&w.inputs, &w.control);
            w.waiter.wait_until(
                wait,
                || control.pending() || inputs.iter().any(|i| !i.rx.is_empty() || i.rx.is_closed()),
                || shared.aborted(),
            );
        }
    }
    w.finish();
}

/// The source's thread: produce events, serve pause requests between two batches, stop on
/// shutdown or abort, or when the source ends.
pub(crate) fn run_source<T: Send + 'static>(mut w: WorkerParts<T>, mut kind: SourceKind<T>) {
    w.start_thread();
    let _guard = ExitGuard(w.control.clone());
    let shared = w.shared.clone();
    let batch_max = shared.config.batch_max;
    loop {
        if shared.aborted() || shared.stop_source.load(Ordering::Relaxed) {
            break;
        }
        if w.control.pending() {
            match w.control.serve(|| true, &shared.abort) {
                Served::NotYet => {}
                Served::Abort => break,
                Served::Resumed(rewire) => {
                    if rewire.exit {
                        break;
                    }
                    if let Some((outputs, routing)) = rewire.outputs {
                        w.emitter.rewire(outputs, routing);
                    }
                    continue;
                }
            }
        }
        let go_on = match &mut kind {
            SourceKind::Steps(f) => {
                let stops =
                    Stops { abort: &shared.abort, stop_source: &shared.stop_source, pending: &w.control.pending };
                let result = f(&mut w.emitter, &stops, batch_max).map(Ok);
                w.source_result(result)
            }
            SourceKind::Group(g) => {
                let result =
                    catch_unwind(AssertUnwindSafe(|| g.turn(&mut w.emitter, &shared.progress()).map(|()| true)));
                w.source_result(result)
            }
            SourceKind::Ring(rx) => {
                let mut got = 0;
                let mut open = true;
                while got < batch_max {
                    match rx.pop() {
                        Ok(v) => {
                            w.emitter.emit(v);
                            got += 1;
                        }
                        Err(PopError::Empty) => break,
                        Err(PopError::Closed) => {
                            open = false;
                            break;
                        }
                    }
                }
                if got == 0 && open {
                    w.emitter.notify();
                    let stops =
                        Stops { abort: &shared.abort, stop_source: &shared.stop_source, pending: &w.control.pending };
                    open = rx.wait_readable(|| stops.any()).is_ok();
                }
                open
            }
            SourceKind::Log { tailer, follow, decode, dir } => {
                let mut got = 0;
                let mut result = Ok(());
                while got < batch_max {
                    let event = match decode {
                        Decode::Record(f) => match tailer.reader().next() {
                            Ok(Some(record)) => f(&record),
                            Ok(None) => break,
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        },
                        Decode::Ref(f) => match tailer.reader().next_ref() {
                            Ok(Some(record)) => f(record),
                            Ok(None) => break,
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        },
                    };
                    got += 1;
                    if let Some(event) = event {
                        w.emitter.emit(event);
                    }
                }
                if result.is_ok() && got == 0 && *follow {
                    // Sleep on the log's futex for a slice, then step back onto the record
                    // that woke us, so the batch loop above reads it (as a ref if need be).
                    w.emitter.notify();
                    result = match tailer.next(Some(LOG_IDLE_SLICE)) {
                        Ok(Some(record)) => {
                            let offset: Offset = record.offset();
                            tailer.reader().seek(offset)
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    };
                }
                match result {
                    Err(e) => {
                        shared.fail(Failure::SourceFailed {
                            name: w.stage.to_string(),
                            message: format!("reading the log at {}: {e}", dir.display()),
                        });
                        false
                    }
                    Ok(()) => got > 0 || *follow,
                }
            }
        };
        w.emitter.notify();
        w.stats.events.store(w.emitter.emitted(), Ordering::Relaxed);
        if !go_on {
            break;
        }
    }
    if let (SourceKind::Group(g), false) = (&mut kind, shared.aborted()) {
        // Shutdown: the stages drain while the source still holds its rings; what left
        // the last stage is committed, then the member leaves.
        let result = catch_unwind(AssertUnwindSafe(|| g.finish(&shared.progress()).map(|()| false)));
        w.source_result(result);
    }
    w.finish();
}
