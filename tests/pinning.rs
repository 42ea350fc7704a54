//! Where a pipeline pins its threads: on the process's allowed CPUs whatever the mask of the
//! thread that builds it, one thread per CPU while CPUs are free (counting every pipeline of
//! the process), and an error instead of sharing with `Pinning::Strict`.
//!
//! Each thread's CPU is read back from the kernel (`/proc/self/task/<tid>/status`), not from
//! shoal. The assertions hold on any number of allowed CPUs (two on the CI machines); with a
//! single one, what cannot be shown there is said on stderr and the rest is still checked.
//! The tests take one lock each: pinned threads of one test would count against another's.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use shoal::affinity::allowed_cpus;
use shoal::pipeline::{Emitter, Pinning, Pipeline, PipelineError, Routing, Source};
use shoal::ring::{channel, Producer, WaitStrategy};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A kernel CPU list (`0-3,8`).
fn parse_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().expect("cpu")..=b.parse::<usize>().expect("cpu")),
            None => cpus.push(part.parse().expect("cpu")),
        }
    }
    cpus
}

/// The CPUs a thread of this process may run on, as the kernel reports them.
fn cpus_of(status: &str) -> Vec<usize> {
    let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).expect("Cpus_allowed_list");
    parse_list(&line["Cpus_allowed_list:".len()..])
}

/// The mask of every thread whose name starts with one of `prefixes`, by name.
fn masks(prefixes: &[&str]) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        let (Ok(name), Ok(status)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("status")))
        else {
            continue; // the thread exited meanwhile
        };
        let name = name.trim().to_string();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            out.insert(name, cpus_of(&status));
        }
    }
    out
}

/// Polls the threads' masks until `done` holds for them (workers pin themselves as they
/// start), failing with the last ones seen after 10 s.
fn settled(
    prefixes: &[&str],
    what: &str,
    done: impl Fn(&BTreeMap<String, Vec<usize>>) -> bool,
) -> BTreeMap<String, Vec<usize>> {
    let start = Instant::now();
    loop {
        let now = masks(prefixes);
        if done(&now) {
            return now;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: the threads' CPUs are {now:?}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Pinned to one CPU each: the CPU of every thread.
fn single_cpus(masks: &BTreeMap<String, Vec<usize>>) -> Option<Vec<usize>> {
    masks.values().map(|m| (m.len() == 1).then(|| m[0])).collect()
}

/// A pipeline whose ring source runs until its producer is dropped: source `s<tag>`, one
/// stage `<tag>` of `workers` workers.
fn pipeline(tag: &str, workers: usize, pin: Pinning) -> Result<(Producer<u64>, Pipeline<u64>), PipelineError> {
    let (tx, rx) = channel::<u64>(64, WaitStrategy::Park);
    let built = Pipeline::<u64>::builder()
        .pin(pin)
        .source(format!("s{tag}"), Source::ring(rx))
        .stage(tag, workers, Routing::RoundRobin, |_| |_: &[u64], _: &mut Emitter<u64>| {})
        .build()?;
    Ok((tx, built))
}

fn finish((tx, pipeline): (Producer<u64>, Pipeline<u64>)) {
    drop(tx);
    pipeline.join().expect("the pipeline drains and stops");
}

/// The allowed set, checked against the kernel's view of the main thread.
fn allowed() -> Vec<usize> {
    let allowed = allowed_cpus();
    assert!(!allowed.is_empty());
    let main = cpus_of(&std::fs::read_to_string("/proc/self/status").expect("/proc/self/status"));
    if main.len() > 1 {
        assert!(allowed.iter().all(|c| main.contains(c)), "allowed {allowed:?} outside the main thread's {main:?}");
    }
    if allowed.len() == 1 {
        eprintln!("one allowed CPU ({allowed:?}): spreading over CPUs cannot be shown here, only the rest");
    }
    allowed
}

#[test]
fn a_pipeline_built_from_a_thread_pinned_to_one_cpu_spreads_over_the_allowed_set() {
    let _serial = serial();
    let allowed = allowed();
    // One thread per allowed CPU (the source and the workers), at most 8, at least 2.
    let threads = allowed.len().clamp(2, 8);
    let first = allowed[0];
    let built = thread::spawn(move || {
        shoal::affinity::pin_current(first).expect("pin the building thread");
        pipeline("p", threads - 1, Pinning::Spread)
    })
    .join()
    .expect("the building thread")
    .expect("build");
    let expect_distinct = threads <= allowed.len();
    let seen = settled(&["shoal-sp-", "shoal-p-"], "spread from a pinned builder", |m| {
        m.len() == threads
            && single_cpus(m).is_some_and(|cpus| {
                let mut distinct = cpus.clone();
                distinct.sort_unstable();
                distinct.dedup();
                cpus.iter().all(|c| allowed.contains(c)) && (!expect_distinct || distinct.len() == cpus.len())
            })
    });
    eprintln!("built from a thread on cpu {first}: {seen:?}");
    finish(built);
}

#[test]
fn pipelines_of_one_process_share_cpus_only_when_every_cpu_holds_a_thread() {
    let _serial = serial();
    let allowed = allowed();
    let n = allowed.len();
    // Each pipeline has one thread more than there are CPUs: the first puts two on one
    // CPU; the second must start on the CPUs that have one, so no CPU ends with two more
    // than another (placing each pipeline on its own would stack 4 threads on one CPU).
    let a = pipeline("a", n, Pinning::Spread).expect("build a");
    let b = pipeline("b", n, Pinning::Spread).expect("build b");
    let seen = settled(&["shoal-sa-", "shoal-a-", "shoal-sb-", "shoal-b-"], "two pipelines", |m| {
        m.len() == 2 * (n + 1) && single_cpus(m).is_some()
    });
    let mut load: BTreeMap<usize, usize> = allowed.iter().map(|&c| (c, 0)).collect();
    for cpu in single_cpus(&seen).expect("pinned") {
        *load.get_mut(&cpu).unwrap_or_else(|| panic!("cpu {cpu} is not allowed ({allowed:?})")) += 1;
    }
    let (least, most) = (load.values().min().copied(), load.values().max().copied());
    assert!(most.zip(least).is_some_and(|(m, l)| m - l <= 1), "threads per CPU {load:?}: {seen:?}");
    finish(a);
    finish(b);
}

#[test]
fn strict_pinning_fails_rather_than_share_a_cpu() {
    let _serial = serial();
    let allowed = allowed();
    let n = allowed.len();
    // The source and n workers: one thread more than CPUs.
    let err = pipeline("x", n, Pinning::Strict).map(|_| ()).expect_err("more threads than CPUs");
    match &err {
        PipelineError::Oversubscribed { threads, cpus, free } => assert_eq!((*threads, *cpus, *free), (n + 1, n, n)),
        other => panic!("expected Oversubscribed, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("{} threads", n + 1)) && message.contains(&format!("{n} allowed CPUs")),
        "{message}"
    );
    // Nothing was claimed by the failed build: as many threads as CPUs still fit.
    if n < 2 {
        eprintln!("one allowed CPU: a strict pipeline (at least two threads) never fits; the rest is not checked");
        return;
    }
    let (tx, mut fits) = pipeline("y", n - 1, Pinning::Strict).expect("n threads on n CPUs");
    settled(&["shoal-sy-", "shoal-y-"], "the strict pipeline", |m| m.len() == n && single_cpus(m).is_some());
    // Every CPU is now held: another strict pipeline, or a scale up, fails and changes nothing.
    match pipeline("z", 1, Pinning::Strict).map(|_| ()) {
        Err(PipelineError::Oversubscribed { threads: 2, cpus, free: 0 }) => assert_eq!(cpus, n),
        other => panic!("expected Oversubscribed with no CPU free, got {other:?}"),
    }
    match fits.scale("y", n) {
        Err(PipelineError::Oversubscribed { threads: 1, free: 0, .. }) => {}
        other => panic!("expected the scale up to fail, got {other:?}"),
    }
    assert_eq!(fits.workers("y").expect("stage"), n - 1);
    // A scale down frees a CPU (once the removed worker has exited) for a scale up.
    if n > 2 {
        fits.scale("y", n - 2).expect("scale down");
        fits.scale("y", n - 1).expect("the freed CPU is claimed again");
    }
    // Spread shares instead, and says so once per pipeline.
    let (shared, warnings) = warnings_of(|| pipeline("w", 1, Pinning::Spread).expect("spread shares CPUs"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("\"sw\"")
            && warnings[0].contains(&format!("2 threads to pin but 0 of the {n} allowed CPUs free")),
        "{warnings:?}"
    );
    let (mut tx_w, mut shared) = shared;
    let (_, again) = warnings_of(|| shared.scale("w", 2).expect("scale up, shared"));
    assert_eq!(again, Vec::<String>::new(), "the pipeline already warned");
    tx_w.push_wait(1).expect("the shared pipeline runs");
    finish((tx_w, shared));
    finish((tx, fits));
}

/// Runs `f` on this thread and returns what it returned and the messages of the warnings
/// it logged through `tracing`.
fn warnings_of<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    use std::sync::Arc;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    #[derive(Default)]
    struct Warnings(Mutex<Vec<String>>);
    struct Message(String);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    impl Subscriber for Warnings {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            if *event.metadata().level() == Level::WARN {
                let mut message = Message(String::new());
                event.record(&mut message);
                self.0.lock().unwrap_or_else(PoisonError::into_inner).push(message.0);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
    let warnings = Arc::new(Warnings::default());
    let r = tracing::subscriber::with_default(warnings.clone(), f);
    let seen = std::mem::take(&mut *warnings.0.lock().unwrap_or_else(PoisonError::into_inner));
    (r, seen)
}
