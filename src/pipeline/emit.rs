//! Routing and the [`Emitter`]: how events leave a worker (or the source) for the next stage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::ring::{Consumer, Producer};

/// How events enter a stage: which of its workers gets each event.
pub enum Routing<T> {
    /// Worker `mix(key(event)) % workers`: every event with the same key goes to the same
    /// worker, so per-key order is kept (across [`scale`](super::Pipeline::scale) too).
    ByKey(fn(&T) -> u64),
    /// Workers in turn, event by event: each event is handled once, by one worker.
    RoundRobin,
    /// A copy to every worker (built with [`Routing::broadcast`], which needs `T: Clone`).
    Broadcast(fn(&T) -> T),
}

impl<T> Clone for Routing<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Routing<T> {}

impl<T> std::fmt::Debug for Routing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Routing::ByKey(_) => "ByKey",
            Routing::RoundRobin => "RoundRobin",
            Routing::Broadcast(_) => "Broadcast",
        })
    }
}

impl<T: Clone> Routing<T> {
    /// Every worker of the stage gets a clone of every event.
    pub fn broadcast() -> Routing<T> {
        Routing::Broadcast(<T as Clone>::clone)
    }
}

/// The worker of `workers` that handles `key`: a multiplicative mix (so that keys with a
/// pattern, such as multiples of the worker count, still spread), then a modulo.
#[inline]
pub(crate) fn bucket(key: u64, workers: usize) -> usize {
    let mixed = (key ^ (key >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed ^ (mixed >> 29)) % workers as u64) as usize
}

/// One event in flight per ring carries a send time, for per-hop latency.
///
/// The sender arms the probe (when it is free) with the index of an event it pushes and the
/// time; the receiver records `now - time` when it reads that event and frees the probe. One
/// sender and one receiver per probe, like the ring it rides beside.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    /// 0: free; else 1 + the index (in the ring's push order) of the probed event.
    armed: CachePadded<AtomicU64>,
    /// Raw clock value at the push.
    stamp: AtomicU64,
}

/// How far one ring's events have gone, for the at-least-once frontiers of a group source
/// (see [`super::frontier`]); only pipelines fed by a consumer group have them.
///
/// The producer publishes how many events it pushed, the consumer how many it *finished*:
/// their batch's handler returned and everything it emitted was pushed downstream (the
/// consumer stores its downstream rings' `pushed` first, then `done` with Release). Each is
/// stored once per batch, never per event.
#[derive(Debug, Default)]
pub(crate) struct RingCounts {
    /// Events pushed into the ring so far (monotonic).
    pub(crate) pushed: CachePadded<AtomicU64>,
    /// Events taken from the ring and finished (monotonic).
    pub(crate) done: CachePadded<AtomicU64>,
}

/// The reading end of one ring into a worker.
pub(crate) struct Input<T> {
    pub(crate) rx: Consumer<T>,
    pub(crate) probe: Option<Arc<Probe>>,
    /// Events read from this ring so far.
    pub(crate) taken: u64,
    /// The ring's counts, when the pipeline keeps frontiers.
    pub(crate) counts: Option<Arc<RingCounts>>,
}

impl<T> Input<T> {
    pub(crate) fn new(rx: Consumer<T>, probe: Option<Arc<Probe>>, counts: Option<Arc<RingCounts>>) -> Input<T> {
        Input { rx, probe, taken: 0, counts }
    }
}

impl Probe {
    /// Whether the probed event is among the `n` events read after the first `taken`;
    /// frees the probe and returns the hop latency in ns when it is.
    #[inline]
    pub(crate) fn took(&self, taken: u64, n: usize, clock: &quanta::Clock) -> Option<u64> {
        // pairs with the Release store in `Output::stamp`
        let armed = self.armed.load(Ordering::Acquire);
        if armed != 0 && armed <= taken + n as u64 {
            let sent = self.stamp.load(Ordering::Relaxed);
            // pairs with the Acquire load in `Output::stamp`
            self.armed.store(0, Ordering::Release);
            return Some(clock.delta_as_nanos(sent, clock.raw()));
        }
        None
    }
}

/// Events an [`Output`] stages before it publishes them to its ring in one commit.
///
/// Publishing event by event makes the ring's tail index (and the consumer's copy of it)
/// bounce between the two cores once per event whenever the consumer keeps up; one commit
/// per group of events pays that once per group. The stage is flushed when full and
/// whenever the handler (or the source step) returns, so an event waits at most one batch.
///
/// Events are staged in the ring itself (see `ring::stage`): written into its free slots
/// past the tail and published with one store of the tail.
pub(crate) const STAGE_MAX: usize = 64;

/// The writing end of one ring out of a worker.
pub(crate) struct Output<T> {
    pub(crate) tx: Producer<T>,
    pub(crate) probe: Option<Arc<Probe>>,
    /// Events published into this ring other than from its stage (which the ring counts:
    /// see [`Output::pushed`]).
    pushed_other: u64,
    /// Published to since the last notify, and not woken yet.
    touched: bool,
    /// The ring's counts, when the pipeline keeps frontiers.
    counts: Option<Arc<RingCounts>>,
}

impl<T> Output<T> {
    pub(crate) fn new(tx: Producer<T>, probe: Option<Arc<Probe>>, counts: Option<Arc<RingCounts>>) -> Output<T> {
        Output { tx, probe, pushed_other: 0, touched: false, counts }
    }

    /// Events published into this ring so far.
    #[inline]
    fn pushed(&self) -> u64 {
        self.pushed_other + self.tx.published_staged()
    }

    /// Stamps the probe, when it is free, for the first of `n` events just published.
    #[inline]
    fn stamp(&self, n: usize, clock: &quanta::Clock) {
        if let Some(probe) = &self.probe {
            // pairs with the Release store in `Probe::took`: the receiver is done with the
            // last stamp before we write a new one.
            if probe.armed.load(Ordering::Acquire) == 0 {
                probe.stamp.store(clock.raw(), Ordering::Relaxed);
                // pairs with the Acquire load in `Probe::took`
                probe.armed.store(self.pushed() - n as u64 + 1, Ordering::Release);
            }
        }
    }

    /// Counts `n` events just published other than from the stage, and stamps the probe.
    #[inline]
    fn published(&mut self, n: usize, clock: &quanta::Clock) {
        self.pushed_other += n as u64;
        self.stamp(n, clock);
    }

    /// Publishes the staged events, if any; returns how many. The ring counts them.
    #[inline(always)]
    fn flush(&mut self, clock: &quanta::Clock) -> usize {
        let n = self.tx.publish_staged();
        if n > 0 {
            self.stamp(n, clock);
        }
        n
    }

    /// Publishes the staged events and wakes the receiver if anything was published since
    /// the last wake.
    #[inline(always)]
    fn notify(&mut self, clock: &quanta::Clock) {
        let n = self.flush(clock);
        if n > 0 || self.touched {
            if self.touched {
                self.touched = false;
            }
            self.tx.notify();
        }
    }

    /// Stages `event` once the open window is used up: publishes the staged events and opens
    /// a new window, waiting (with the pipeline's strategy) while the ring is full. Returns
    /// 1 when the event was dropped because the pipeline is stopping or the receiver is
    /// gone, else 0.
    #[inline(never)]
    fn stage_cold(&mut self, mut event: T, clock: &quanta::Clock, abort: &AtomicBool) -> u64 {
        if self.flush(clock) > 0 {
            self.touched = true;
        }
        // Bounded: each pass stages the event, or waits and then returns when the pipeline
        // stops or the receiver is gone.
        loop {
            if self.tx.open_stage(STAGE_MAX) > 0 {
                match self.tx.stage(event) {
                    Ok(()) => return 0,
                    Err(e) => event = e,
                }
                continue;
            }
            // Full (or `T` has no size, which never stages): push it through the ring as
            // a value, waiting for room. The receiver may sleep on a ring filled quietly,
            // so it is woken first.
            self.tx.notify();
            self.touched = false;
            return match self.tx.push_wait_or_stop(event, || abort.load(Ordering::Relaxed)) {
                Ok(()) => {
                    self.published(1, clock);
                    0
                }
                Err(_) => 1,
            };
        }
    }

    /// Copies `events` into the ring after what is in it, in runs as long as the ring has
    /// room, waiting (with the pipeline's strategy) while it is full. Returns how many were
    /// dropped because the pipeline is stopping or the receiver is gone.
    fn push_slice(&mut self, events: &[T], clock: &quanta::Clock, abort: &AtomicBool) -> u64
    where
        T: Copy,
    {
        // What is staged was emitted first: it goes in first.
        if self.flush(clock) > 0 {
            self.touched = true;
        }
        let mut rest = events;
        // Bounded: each pass publishes at least one event, or waits and then returns when
        // the pipeline stops or the receiver is gone.
        while !rest.is_empty() {
            let n = self.tx.push_slice(rest);
            if n > 0 {
                self.published(n, clock);
                self.touched = true;
                rest = &rest[n..];
                continue;
            }
            self.tx.notify();
            self.touched = false;
            match self.tx.wait_writable(1, || abort.load(Ordering::Relaxed)) {
                Ok(true) => {}
                Ok(false) | Err(_) => return rest.len() as u64,
            }
        }
        0
    }
}

/// Where a handler (or the source) sends events to the next stage.
///
/// [`emit`](Emitter::emit) routes each event to one downstream ring (or all, for broadcast)
/// and stages it there; staged events are published to the ring in one commit when
/// 64 of them are waiting or when the handler returns, and each touched receiver
/// is woken once then. When a downstream ring is full, the emitter waits with the
/// pipeline's wait strategy (backpressure): it never holds more than 64 events
/// per downstream ring.
///
/// In the **last stage** there is no downstream: emitted events are dropped and counted in
/// [`PipelineStats::discarded`](super::PipelineStats::discarded). Handlers of the last
/// stage are sinks and normally emit nothing.
pub struct Emitter<T> {
    pub(crate) outputs: Vec<Output<T>>,
    pub(crate) routing: Routing<T>,
    next: usize,
    pub(crate) abort: Arc<AtomicBool>,
    pub(crate) clock: quanta::Clock,
    /// Events emitted where there is no downstream, or dropped because the pipeline stopped.
    pub(crate) discarded: u64,
    /// Events emitted and not counted by the one output's `pushed` (see [`Emitter::emitted`]).
    emitted: u64,
    /// One downstream ring, routed by key or round robin: every event goes to it, staged
    /// without routing and counted by its `pushed`.
    single: bool,
}

impl<T> Emitter<T> {
    pub(crate) fn new(abort: Arc<AtomicBool>, clock: quanta::Clock) -> Emitter<T> {
        Emitter {
            outputs: Vec::new(),
            routing: Routing::RoundRobin,
            next: 0,
            abort,
            clock,
            discarded: 0,
            emitted: 0,
            single: false,
        }
    }

    /// Replaces the downstream rings (on a scale).
    pub(crate) fn rewire(&mut self, outputs: Vec<Output<T>>, routing: Routing<T>) {
        self.notify();
        self.emitted = self.emitted();
        self.single = outputs.len() == 1 && !matches!(routing, Routing::Broadcast(_));
        self.outputs = outputs;
        self.routing = routing;
        self.next = 0;
    }

    /// Events emitted so far. With one downstream ring the count is that ring's (what was
    /// published plus what is staged), so emitting costs no counter store.
    pub(crate) fn emitted(&self) -> u64 {
        match (self.single, self.outputs.first()) {
            (true, Some(out)) => self.emitted + out.pushed() + out.tx.staged() as u64,
            _ => self.emitted,
        }
    }

    /// Sends `event` to the next stage, per that stage's [`Routing`]; waits while the chosen
    /// ring is full. Dropped (and counted) in the last stage, and when the pipeline is
    /// stopping after a panic.
    #[inline]
    pub fn emit(&mut self, event: T) {
        if self.single {
            if let Some(out) = self.outputs.first_mut() {
                // The hot path: one slot store and one pointer store.
                if let Err(event) = out.tx.stage(event) {
                    self.emit_cold(event);
                }
                return;
            }
        }
        self.emit_routed(event);
    }

    /// [`Emitter::emit`] to the one output once its window is used up.
    #[inline(never)]
    fn emit_cold(&mut self, event: T) {
        if let Some(out) = self.outputs.first_mut() {
            let dropped = out.stage_cold(event, &self.clock, &self.abort);
            // A dropped event is counted here, not by the output.
            self.emitted += dropped;
            self.discarded += dropped;
        }
    }

    /// [`Emitter::emit`] with no downstream, or several rings to route between.
    fn emit_routed(&mut self, event: T) {
        self.emitted += 1;
        let n = self.outputs.len();
        if n == 0 {
            self.discarded += 1;
            return;
        }
        match self.routing {
            Routing::ByKey(key) => {
                let at = if n == 1 { 0 } else { bucket(key(&event), n) };
                self.push(at, event);
            }
            Routing::RoundRobin => {
                let at = self.next;
                self.next = if at + 1 == n { 0 } else { at + 1 };
                self.push(at, event);
            }
            Routing::Broadcast(clone) => {
                for at in 0..n - 1 {
                    let copy = clone(&event);
                    self.push(at, copy);
                }
                self.push(n - 1, event);
            }
        }
    }

    /// Sends every event of `events`, in order, as [`emit`](Emitter::emit) would one by one,
    /// and waits as it would while a ring is full.
    ///
    /// Where every event goes to one ring (a next stage of one worker, routed by key or
    /// round robin) the events are copied into that ring's slots in runs as long as it has
    /// room, with one publication per run: the batch counterpart of `emit`, at the cost of
    /// a copy into the ring. Otherwise each event is routed on its own.
    ///
    /// ```
    /// use shoal::pipeline::{Emitter, Pipeline, Routing, Source, SourceStep};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let sum = Arc::new(AtomicU64::new(0));
    /// let out = sum.clone();
    /// let pipeline = Pipeline::<u64>::builder()
    ///     .pin(false)
    ///     .source("numbers", Source::closure(|e: &mut Emitter<u64>| {
    ///         let block: Vec<u64> = (0..1000).collect();
    ///         e.emit_slice(&block); // 1000 events, published in runs
    ///         SourceStep::Done
    ///     }))
    ///     .stage("sum", 1, Routing::RoundRobin, move |_| {
    ///         let out = out.clone();
    ///         move |batch: &[u64], _: &mut Emitter<u64>| {
    ///             out.fetch_add(batch.iter().sum::<u64>(), Ordering::Relaxed);
    ///         }
    ///     })
    ///     .build()?;
    /// pipeline.join()?;
    /// assert_eq!(sum.load(Ordering::Relaxed), 999 * 1000 / 2);
    /// # Ok::<(), shoal::pipeline::PipelineError>(())
    /// ```
    pub fn emit_slice(&mut self, events: &[T])
    where
        T: Copy,
    {
        match (self.outputs.len(), self.routing) {
            (0, _) => {
                self.emitted += events.len() as u64;
                self.discarded += events.len() as u64;
            }
            (1, Routing::ByKey(_) | Routing::RoundRobin) => {
                let out = &mut self.outputs[0];
                // Pushed events count as the output's; dropped ones here.
                let dropped = out.push_slice(events, &self.clock, &self.abort);
                self.emitted += dropped;
                self.discarded += dropped;
            }
            _ => {
                for event in events {
                    self.emit(*event);
                }
            }
        }
    }

    /// Publishes, for frontiers, how many events were pushed into each downstream ring (one
    /// relaxed store per ring; the caller's Release store of its `done` count orders them).
    /// Call after [`Emitter::notify`], when nothing is staged.
    #[inline]
    pub(crate) fn publish_pushed(&self) {
        for out in &self.outputs {
            if let Some(counts) = &out.counts {
                debug_assert_eq!(out.tx.staged(), 0);
                // Relaxed: ordered before the Release store of the caller's `done` count
                // (or, for the source, read on this same thread).
                counts.pushed.store(out.pushed(), Ordering::Relaxed);
            }
        }
    }

    /// Workers in the next stage (0 in the last stage).
    pub fn downstream_workers(&self) -> usize {
        self.outputs.len()
    }

    #[inline(always)]
    fn push(&mut self, at: usize, event: T) {
        let out = &mut self.outputs[at];
        if let Err(event) = out.tx.stage(event) {
            self.discarded += out.stage_cold(event, &self.clock, &self.abort);
        }
    }

    /// Publishes every staged event and wakes every receiver published to since the last
    /// call. Inline for one downstream ring (a source calling it after every step).
    #[inline(always)]
    pub(crate) fn notify(&mut self) {
        if let [out] = &mut self.outputs[..] {
            out.notify(&self.clock);
        } else {
            self.notify_all();
        }
    }

    #[inline(never)]
    fn notify_all(&mut self) {
        for out in &mut self.outputs {
            out.notify(&self.clock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_spreads_patterned_keys_and_is_stable() {
        for workers in 1..=8 {
            let mut hits = vec![0u32; workers];
            // Multiples of the worker count would all land on worker 0 with a bare modulo.
            for k in 0..8000u64 {
                let at = bucket(k * workers as u64, workers);
                assert_eq!(at, bucket(k * workers as u64, workers));
                hits[at] += 1;
            }
            let (min, max) = (hits.iter().min().copied(), hits.iter().max().copied());
            assert!(min.unwrap_or(0) * 2 > max.unwrap_or(0), "{workers} workers: {hits:?}");
        }
    }

    #[test]
    fn probes_time_the_armed_event_only() {
        let clock = quanta::Clock::new();
        let probe = Probe::default();
        assert_eq!(probe.took(0, 10, &clock), None, "nothing armed");
        probe.stamp.store(clock.raw(), Ordering::Relaxed);
        probe.armed.store(5, Ordering::Release); // the 5th event pushed
        assert_eq!(probe.took(0, 4, &clock), None, "events 1..=4");
        assert!(probe.took(4, 1, &clock).is_some(), "event 5");
        assert_eq!(probe.armed.load(Ordering::Acquire), 0, "freed for the next stamp");
    }
}
