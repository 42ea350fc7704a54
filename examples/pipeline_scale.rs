//! Scaling a pipeline stage up and down while events flow: events `(key, sequence)` enter
//! through a ring, a keyed stage "work" starts with 1 worker and is scaled to 4, then to 2,
//! then back to 1, with events in flight at each step; a one-worker sink counts every event
//! and checks that each key's events arrive in order. The example prints each scale's pause
//! (how long the stage, its upstream and its downstream were held) and the events handled by
//! the stage, and fails if an event was lost, duplicated or reordered within its key.
//!
//! Run with `cargo run --release --example pipeline_scale`. Exits 0 in about a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shoal::pipeline::{Emitter, Pipeline, Routing, Sink, Source};
use shoal::ring::{channel, WaitStrategy};

type Error = Box<dyn std::error::Error>;

/// Keys of the events; each key's sequence numbers must reach the sink in order.
const KEYS: u64 = 64;
/// Events pushed before each scale (and after the last one).
const EVENTS_PER_STEP: u64 = 100_000;
/// The worker counts "work" is scaled to, in turn.
const STEPS: [usize; 3] = [4, 2, 1];

/// An event: its key and its place in that key's sequence.
#[derive(Clone, Copy, Debug)]
struct Event {
    key: u64,
    seq: u64,
}

/// What the sink found: events seen, and events out of order within their key.
#[derive(Default)]
struct Tally {
    events: u64,
    out_of_order: u64,
}

fn main() -> Result<(), Error> {
    let (mut input, rx) = channel::<Event>(4096, WaitStrategy::Park);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sink_tally = tally.clone();
    let mut next_seen = vec![0u64; KEYS as usize];
    let handled = Arc::new(AtomicU64::new(0));
    let stage_handled = handled.clone();
    let mut pipeline = Pipeline::<Event>::builder()
        .pin(false) // several examples may run side by side on a small machine
        .source("input", Source::ring(rx))
        .stage("work", 1, Routing::ByKey(|e: &Event| e.key), move |_worker| {
            let handled = stage_handled.clone();
            move |batch: &[Event], out: &mut Emitter<Event>| {
                handled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for event in batch {
                    out.emit(*event);
                }
            }
        })
        .sink(
            "check",
            Sink::closure(move |batch: &[Event]| {
                let mut tally = sink_tally.lock().unwrap_or_else(|p| p.into_inner());
                for event in batch {
                    let next = &mut next_seen[event.key as usize];
                    if event.seq != *next {
                        tally.out_of_order += 1;
                    }
                    *next = event.seq + 1;
                    tally.events += 1;
                }
            }),
        )
        .build()?;

    let mut pushed = 0u64;
    let mut push = |input: &mut shoal::ring::Producer<Event>| -> Result<(), Error> {
        for _ in 0..EVENTS_PER_STEP {
            input.push_wait(Event { key: pushed % KEYS, seq: pushed / KEYS })?;
            pushed += 1;
        }
        Ok(())
    };
    println!("{:<14} {:>12} {:>18}", "work workers", "pause", "handled by then");
    for workers in STEPS {
        push(&mut input)?; // the last of these are still in the rings when the scale starts
        let from = pipeline.workers("work")?;
        let report = pipeline.scale("work", workers)?;
        println!(
            "{:<14} {:>9} us {:>18}",
            format!("{from} -> {}", report.to),
            report.pause.as_micros(),
            handled.load(Ordering::Relaxed)
        );
    }
    push(&mut input)?;
    drop(input); // the source ends once its ring is drained
    let stats = pipeline.join()?;

    let total = EVENTS_PER_STEP * (STEPS.len() as u64 + 1);
    let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "{total} events pushed, {} handled by \"work\", {} reached the sink, {} out of order; {} scales in {:?}",
        handled.load(Ordering::Relaxed),
        tally.events,
        tally.out_of_order,
        stats.scales,
        stats.elapsed
    );
    if tally.events != total || handled.load(Ordering::Relaxed) != total || tally.out_of_order != 0 {
        return Err("events were lost, duplicated or reordered".into());
    }
    Ok(())
}
