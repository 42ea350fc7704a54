//! A pipeline of typed events: a source of sensor readings, a keyed smoothing stage that is
//! scaled from 2 to 4 workers while events flow, and a sink. Run with
//! `cargo run --release --example sensors`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shoal::pipeline::{Emitter, Pipeline, Routing, Source, SourceStep};
use shoal::ring::WaitStrategy;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Reading {
    sensor: u64,
    value: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events = 1_000_000u64;
    let stored = Arc::new(AtomicU64::new(0));
    let mut n = 0u64;
    let mut pipeline = Pipeline::<Reading>::builder()
        .wait(WaitStrategy::Park) // idle workers sleep
        .source(
            "sensors",
            Source::closure(move |out: &mut Emitter<Reading>| {
                for _ in 0..256 {
                    out.emit(Reading { sensor: n % 64, value: n as f64 });
                    n += 1;
                    if n == events {
                        return SourceStep::Done;
                    }
                }
                SourceStep::Continue
            }),
        )
        .stage("smooth", 2, Routing::ByKey(|r: &Reading| r.sensor), |_worker| {
            let mut last = [0.0f64; 64]; // per-worker state; per-key order is kept
            move |batch: &[Reading], out: &mut Emitter<Reading>| {
                for r in batch {
                    let s = r.sensor as usize;
                    last[s] = 0.9 * last[s] + 0.1 * r.value;
                    out.emit(Reading { value: last[s], ..*r });
                }
            }
        })
        .stage("store", 1, Routing::RoundRobin, {
            let stored = stored.clone();
            move |_| {
                let stored = stored.clone();
                move |batch: &[Reading], _: &mut Emitter<Reading>| {
                    stored.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        })
        .build()?;
    let report = pipeline.scale("smooth", 4)?; // while events flow
    println!("scaled smooth {} -> {} workers, pause {:?}", report.from, report.to, report.pause);
    let stats = pipeline.join()?;
    for stage in &stats.stages {
        println!("{:>8}: {} workers, {} events", stage.name, stage.workers, stage.events);
    }
    println!("stored {} readings in {:?}", stored.load(Ordering::Relaxed), stats.elapsed);
    assert_eq!(stored.load(Ordering::Relaxed), events);
    Ok(())
}
