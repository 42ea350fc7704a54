//! Durability: `sync` and `wait_durable` from many threads at once, sync rounds run inline by
//! a waiter or by the sync thread covering the records of other appenders of a shared log,
//! and a failed sync reported to every waiter.
//!
//! A waiter returns only once the watermark covers its record and a data sync completed after
//! it last saw the watermark below that record: the count of syncs (`Appender::sync_stats`)
//! rises just after the watermark moved, so a count read before a watermark below the record
//! must grow once the wait returned (the test gives it [`WAIT_BOUND`] to, since the round
//! that moved the watermark may not have counted itself yet when the waiter sees it).
//!
//! The failure case runs in a child process (this test binary run again, see `common`) with
//! the fail point `SHOAL_FAIL_POINT=sync`, which makes every sync of that process fail.

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use shoal::log::{AppendError, Appender, Durability, IoBackend, LogError, LogOptions, Offset, Writers};

use common::{backend_from_name, backend_name, child_mode, run_child_with_fail_point, small_opts, BACKENDS};

/// How long a wait for durability may take before the test calls it a hang: no performance
/// bound, only room for a loaded 2-core CI machine whose disk syncs take milliseconds each.
const WAIT_BOUND: Duration = Duration::from_secs(30);
/// Threads waiting for durability at once.
const WAITERS: usize = 4;
/// Waits each of those threads makes.
const WAITS_PER_THREAD: usize = 25;

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Never => "never",
        Durability::Batch => "batch",
        other => panic!("no name for {other:?}"),
    }
}

fn durability_from_name(name: &str) -> Durability {
    match name {
        "never" => Durability::Never,
        "batch" => Durability::Batch,
        other => panic!("unknown durability {other:?}"),
    }
}

fn opts(backend: IoBackend, durability: Durability, writers: Writers) -> LogOptions {
    small_opts(backend).durability(durability).writers(writers)
}

/// One thread appends (and now and then syncs) while [`WAITERS`] threads each wait for the
/// last record appended so far, [`WAITS_PER_THREAD`] times (each time a newer one); every wait must end covered,
/// after a sync that completed once the waiter had seen the watermark below its record.
fn waiters_race_the_appender(backend: IoBackend, durability: Durability) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Appender::open(dir.path(), opts(backend, durability, Writers::Exclusive)).expect("open");
    let watch = log.durable_watch();
    let log = Arc::new(Mutex::new(log));
    let start = Arc::new(Barrier::new(WAITERS + 1));
    let context = format!("{backend:?} {durability:?}");
    let waiters: Vec<_> = (0..WAITERS)
        .map(|w| {
            let (log, watch, start, context) = (log.clone(), watch.clone(), start.clone(), context.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut waited = 0;
                // Each wait is for a record this thread has not waited for yet.
                let mut next_new = 1;
                while waited < WAITS_PER_THREAD {
                    // Under the appender's lock, so that no append falls between the two.
                    let (next, syncs_before) = {
                        let log = log.lock().expect("appender lock");
                        (log.next_offset().0, log.sync_stats().0)
                    };
                    if next < next_new {
                        std::thread::yield_now();
                        continue;
                    }
                    next_new = next + 1;
                    let record = Offset(next - 1);
                    let durable_before = watch.durable_offset().0;
                    let covered = watch.wait_durable(record, Some(WAIT_BOUND)).expect("wait_durable");
                    assert!(covered, "{context}: waiter {w} still waits for offset {} after {WAIT_BOUND:?}", record.0);
                    let durable = watch.durable_offset().0;
                    assert!(durable > record.0, "{context}: waiter {w} returned with the watermark at {durable}");
                    assert!(durable <= watch.written_offset().0, "{context}: the watermark passed the written offset");
                    if durable_before <= record.0 {
                        // The round that moved the watermark counts itself just after it
                        // moved it, so the count may trail the watermark this thread saw by
                        // a moment; it must catch up.
                        let deadline = std::time::Instant::now() + WAIT_BOUND;
                        let syncs_after = loop {
                            let syncs = log.lock().expect("appender lock").sync_stats().0;
                            if syncs > syncs_before || std::time::Instant::now() > deadline {
                                break syncs;
                            }
                            std::thread::yield_now();
                        };
                        assert!(
                            syncs_after > syncs_before,
                            "{context}: waiter {w} saw offset {} covered with no sync completed since it saw the \
                             watermark at {durable_before}",
                            record.0
                        );
                    }
                    waited += 1;
                }
            })
        })
        .collect();
    start.wait();
    let mut batch = 0usize;
    while !waiters.iter().all(|w| w.is_finished()) {
        let mut log = log.lock().expect("appender lock");
        for i in 0..1 + batch % 16 {
            log.append(format!("record {batch}.{i}").as_bytes()).expect("append");
        }
        if batch % 8 == 7 {
            let durable = log.sync().expect("sync");
            assert!(durable == log.next_offset(), "{context}: sync returned {durable:?} below the next offset");
        }
        drop(log);
        batch += 1;
        std::thread::yield_now();
    }
    for w in waiters {
        w.join().expect("waiter thread");
    }
    let log = Arc::into_inner(log).expect("waiters gone").into_inner().expect("appender lock");
    let next = log.next_offset();
    let syncs = log.sync_stats().0;
    log.close().expect("close");
    assert!(syncs > 0, "{context}: no sync ran");
    assert_eq!(common::read_all(dir.path()).expect("read back").len() as u64, next.0, "{context}");
}

#[test]
fn waiters_on_many_threads_return_only_once_covered() {
    for backend in BACKENDS {
        for durability in [Durability::Never, Durability::Batch] {
            waiters_race_the_appender(backend, durability);
        }
    }
}

/// Appends `n` records to `log`, returning the offset after the last.
fn append_n(log: &mut Appender, n: usize, tag: &str) -> u64 {
    let mut next = 0;
    for i in 0..n {
        next = log.append(format!("{tag} {i}").as_bytes()).expect("append").0 + 1;
    }
    next
}

/// With a shared log, a round covers every record this appender has seen, whoever appended
/// it: `sync` of one appender (run inline by the caller) covers another's records, and so
/// does the sync thread of a third in `Batch` mode, while the appender that wrote them never
/// syncs.
#[test]
fn rounds_cover_the_records_of_other_appenders_of_a_shared_log() {
    for backend in BACKENDS {
        let context = format!("{backend:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Appender::open(dir.path(), opts(backend, Durability::Never, Writers::Shared)).expect("open a");
        let mut b = Appender::open(dir.path(), opts(backend, Durability::Never, Writers::Shared)).expect("open b");

        // Inline: `a` syncs what `b` appended.
        let b_next = append_n(&mut b, 40, "b");
        let durable = a.sync().expect("sync a");
        assert!(durable.0 >= b_next, "{context}: a's sync stopped at {durable:?}, below b's records ({b_next})");
        assert!(b.durable_offset().0 >= b_next, "{context}: b does not see a's sync");
        assert!(a.sync_stats().0 > 0, "{context}: a ran no sync");

        // The sync thread: `c` (Batch) catches up on `b`'s records with its own append, and its
        // round covers them; `b` only watches, passively.
        let mut c = Appender::open(dir.path(), opts(backend, Durability::Batch, Writers::Shared)).expect("open c");
        let b_next = append_n(&mut b, 40, "b again");
        let c_offset = c.append(b"c").expect("append c");
        assert!(c_offset.0 >= b_next, "{context}: c appended at {c_offset:?}, before b's records");
        let covered = b.durable_watch().wait_durable_passive(Offset(b_next - 1), Some(WAIT_BOUND)).expect("wait");
        assert!(covered, "{context}: c's sync thread did not cover b's records within {WAIT_BOUND:?}");
        assert_eq!(b.sync_stats().0, 0, "{context}: b synced although it only watched");
        assert!(c.sync_stats().0 > 0, "{context}: c's sync thread ran no round");

        c.close().expect("close c");
        b.close().expect("close b");
        a.close().expect("close a");
        assert_eq!(common::read_all(dir.path()).expect("read back").len() as u64, c_offset.0 + 1, "{context}");
    }
}

/// In a child: every sync fails (`SHOAL_FAIL_POINT=sync`); every waiter, `sync` and later
/// append gets the error.
fn child_sync_fails(dir: &Path, backend: IoBackend, durability: Durability) {
    let context = format!("{backend:?} {durability:?}");
    let mut log = Appender::open(dir, opts(backend, durability, Writers::Exclusive)).expect("open");
    let mut appended = 0u64;
    for i in 0..20 {
        match log.append(format!("record {i}").as_bytes()) {
            Ok(offset) => appended = offset.0 + 1,
            // In Batch mode the sync thread's first round may fail before the appends end.
            Err(AppendError::Log(LogError::SyncFailed { .. })) if durability == Durability::Batch => break,
            Err(e) => panic!("{context}: append {i}: {e}"),
        }
    }
    assert!(appended > 0, "{context}: not one append went through");
    let watch = log.durable_watch();
    let start = Arc::new(Barrier::new(WAITERS));
    let waiters: Vec<_> = (0..WAITERS as u64)
        .map(|w| {
            let (watch, start) = (watch.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                watch.wait_durable(Offset(w.min(appended - 1)), Some(WAIT_BOUND))
            })
        })
        .collect();
    for (w, waiter) in waiters.into_iter().enumerate() {
        match waiter.join().expect("waiter thread") {
            Err(LogError::SyncFailed { .. }) => {}
            other => panic!("{context}: waiter {w} got {other:?}, not the sync failure"),
        }
    }
    match log.sync() {
        Err(LogError::SyncFailed { .. }) => {}
        other => panic!("{context}: sync got {other:?}, not the sync failure"),
    }
    match log.append(b"after") {
        Err(AppendError::Log(LogError::SyncFailed { .. })) => {}
        other => panic!("{context}: an append after the failure got {other:?}"),
    }
    assert_eq!(log.durable_offset(), Offset(0), "{context}: the watermark moved although no sync succeeded");
}

#[test]
fn a_failed_sync_reaches_every_waiter() {
    const TEST: &str = "a_failed_sync_reaches_every_waiter";
    if let Some(mode) = child_mode() {
        let mut words = mode.split(' ');
        let (Some(dir), Some(backend), Some(durability)) = (words.next(), words.next(), words.next()) else {
            panic!("bad child mode {mode:?}");
        };
        child_sync_fails(Path::new(dir), backend_from_name(backend), durability_from_name(durability));
        std::process::exit(0);
    }
    for backend in BACKENDS {
        for durability in [Durability::Never, Durability::Batch] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mode = format!("{} {} {}", dir.path().display(), backend_name(backend), durability_name(durability));
            run_child_with_fail_point(TEST, &mode, "sync", &format!("{backend:?} {durability:?}"));
        }
    }
}
