//! Async waits (`shoal::aio`, feature `tokio`) under tokio's multi-thread runtime: a thousand
//! tailer streams in one process each get every record; a `next()` cancelled mid-wait loses
//! and duplicates nothing and leaves no sleeper registered; futures waiting when the appender
//! closes or the runtime shuts down neither hang nor panic; durable futures (of a watch, of
//! appends) resolve once covered, at every durability level, and with the error when every
//! sync fails; an async ring consumer gets every value a producer thread pushes, in order,
//! one at a time, in batches and as a stream, with pops cancelled mid-wait; and all of it
//! still works where `futex_waitv` is missing (the helpers' 1 ms re-check).
#![cfg(feature = "tokio")]

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use shoal::aio::{AppendDurable, AsyncConsumer, AsyncDurable, AsyncTailer};
use shoal::log::{AppendError, Appender, Durability, IoBackend, LogError, LogOptions, Offset, TailWait};
use shoal::ring::{channel, Closed, WaitStrategy};

use common::{child_mode, run_child_with_fail_point, small_opts};

/// Longest any single record may take to reach a waiting future before the test calls it
/// lost: far above any wake-up, so only a lost wake-up or a hang trips it.
const RECORD_WAIT: Duration = Duration::from_secs(20);

/// Offset of the `waiters` word in the `HEAD` page (see `src/log/head.rs`).
const HEAD_WAITERS_AT: u64 = 68;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn opts() -> LogOptions {
    small_opts(IoBackend::Auto)
}

/// The sleepers registered in a log's `HEAD` page right now.
fn waiters(dir: &Path) -> u32 {
    let file = std::fs::File::open(dir.join("HEAD")).expect("open HEAD");
    let mut word = [0u8; 4];
    file.read_exact_at(&mut word, HEAD_WAITERS_AT).expect("read waiters");
    u32::from_ne_bytes(word)
}

fn payload(log: usize, i: u64) -> Vec<u8> {
    let mut p = format!("log-{log}-record-{i}-").into_bytes();
    p.extend(std::iter::repeat_n(b'x', (i as usize * 31) % 300));
    p
}

#[test]
fn a_thousand_tailer_streams_each_get_every_record() {
    const LOGS: usize = 10;
    const STREAMS_PER_LOG: usize = 100;
    const RECORDS: u64 = 40;
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<_> = (0..LOGS).map(|l| root.path().join(format!("log-{l}"))).collect();
    let appenders: Vec<Appender> = dirs.iter().map(|d| Appender::open(d, opts()).expect("open")).collect();
    let rt = runtime();
    let mut tasks = Vec::new();
    for (l, dir) in dirs.iter().enumerate() {
        for s in 0..STREAMS_PER_LOG {
            // Half sleep at once, half spin first (the default): both must see everything.
            let wait = if s % 2 == 0 { TailWait::Park } else { TailWait::default() };
            let mut tailer = AsyncTailer::open_with(dir, wait).expect("tailer");
            tasks.push(rt.spawn(async move {
                let mut got = Vec::new();
                while (got.len() as u64) < RECORDS {
                    let record = tokio::time::timeout(RECORD_WAIT, tailer.next())
                        .await
                        .unwrap_or_else(|_| panic!("log {l} stream {s}: record {} lost", got.len()))
                        .expect("read");
                    got.push((record.offset().0, record.payload().to_vec()));
                }
                (l, got)
            }));
        }
    }
    // Let every stream catch up and fall asleep, then append in bursts with pauses, from a
    // plain thread.
    std::thread::sleep(Duration::from_millis(50));
    let producer = std::thread::spawn(move || {
        let mut appenders = appenders;
        for i in 0..RECORDS {
            for (l, log) in appenders.iter_mut().enumerate() {
                log.append(&payload(l, i)).expect("append");
            }
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        appenders
    });
    let appenders = producer.join().expect("producer");
    rt.block_on(async {
        for task in tasks {
            let (l, got) = task.await.expect("stream task");
            for (i, (offset, bytes)) in got.into_iter().enumerate() {
                assert_eq!(offset, i as u64, "log {l}: out of order");
                assert_eq!(bytes, payload(l, i as u64), "log {l}: wrong bytes at {i}");
            }
        }
    });
    for (dir, log) in dirs.iter().zip(appenders) {
        assert_eq!(waiters(dir), 0, "{}: a finished stream left a sleeper registered", dir.display());
        log.close().expect("close");
    }
}

#[test]
fn the_stream_of_owned_records_follows_the_log_across_rollovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Appender::open(dir.path(), opts()).expect("open");
    let rt = runtime();
    const RECORDS: u64 = 2_000; // about ten 64 KiB segments
    let tailer = AsyncTailer::open_with(dir.path(), TailWait::Park).expect("tailer");
    let reading = rt.spawn(async move {
        // The stream's items are owned and Send: collect them in another task.
        let records: Vec<_> = tailer.take(RECORDS as usize).collect().await;
        records.into_iter().map(|r| r.expect("read")).map(|r| (r.offset().0, r.payload().to_vec())).collect::<Vec<_>>()
    });
    for i in 0..RECORDS {
        log.append(&payload(0, i)).expect("append");
        if i % 300 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let got =
        rt.block_on(async { tokio::time::timeout(RECORD_WAIT, reading).await }).expect("stream ended").expect("task");
    assert_eq!(got.len() as u64, RECORDS);
    for (i, (offset, bytes)) in got.into_iter().enumerate() {
        assert_eq!((offset, bytes), (i as u64, payload(0, i as u64)));
    }
    log.close().expect("close");
}

#[test]
fn a_next_cancelled_mid_wait_loses_and_duplicates_nothing() {
    const RECORDS: u64 = 300;
    let rt = runtime();
    for wait in [TailWait::Park, TailWait::default(), TailWait::BusySpin] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Appender::open(dir.path(), opts()).expect("open");
        let mut tailer = AsyncTailer::open_with(dir.path(), wait).expect("tailer");
        let producer = std::thread::spawn(move || {
            for i in 0..RECORDS {
                log.append(&payload(0, i)).expect("append");
                // Gaps of 0 to 600 us: some records come while a next() is being
                // cancelled, some while one sleeps.
                std::thread::sleep(Duration::from_micros((i % 7) * 100));
            }
            log
        });
        let (got, cancelled) = rt.block_on(async {
            let (mut got, mut cancelled) = (Vec::new(), 0u64);
            let deadline = tokio::time::Instant::now() + RECORD_WAIT;
            while (got.len() as u64) < RECORDS {
                assert!(tokio::time::Instant::now() < deadline, "{wait:?}: record {} lost", got.len());
                tokio::select! {
                    record = tailer.next() => {
                        let record = record.expect("read");
                        got.push((record.offset().0, record.payload().to_vec()));
                    }
                    _ = tokio::time::sleep(Duration::from_micros(50 + (cancelled % 5) * 100)) => cancelled += 1,
                }
            }
            (got, cancelled)
        });
        assert!(cancelled > 0, "{wait:?}: no next() was cancelled; the test tested nothing");
        for (i, (offset, bytes)) in got.into_iter().enumerate() {
            assert_eq!(offset, i as u64, "{wait:?}: a record lost or read twice");
            assert_eq!(bytes, payload(0, i as u64), "{wait:?}");
        }
        let log = producer.join().expect("producer");
        assert_eq!(waiters(dir.path()), 0, "{wait:?}: a cancelled next() left a sleeper registered");
        // A next() that sleeps counts as a sleeper, and stops counting when dropped.
        if wait == TailWait::Park {
            rt.block_on(async {
                let mut next = tailer.next();
                assert!(tokio::time::timeout(Duration::from_millis(20), &mut next).await.is_err());
                assert_eq!(waiters(dir.path()), 1, "a sleeping next() is not registered");
                drop(next);
                assert_eq!(waiters(dir.path()), 0, "a dropped next() is still registered");
            });
        }
        log.close().expect("close");
    }
}

#[test]
fn waiting_futures_survive_the_appender_closing_and_the_runtime_shutting_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Appender::open(dir.path(), opts()).expect("open");
    log.append(b"first").expect("append");
    let rt = runtime();
    let mut tailers: Vec<AsyncTailer> =
        (0..20).map(|_| AsyncTailer::open_with(dir.path(), TailWait::Park).expect("tailer")).collect();
    // Each reads the first record, then waits for a second that comes only from the next
    // appender, after this one closed.
    let tasks: Vec<_> = tailers
        .drain(..)
        .map(|mut tailer| {
            rt.spawn(async move {
                assert_eq!(tailer.next().await.expect("read").payload(), b"first");
                let record = tailer.next().await.expect("read");
                (record.offset().0, record.payload().to_vec())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    log.close().expect("close");
    std::thread::sleep(Duration::from_millis(50));
    assert!(tasks.iter().all(|t| !t.is_finished()), "a future ended without a record");
    let mut log = Appender::open(dir.path(), opts()).expect("reopen");
    log.append(b"second").expect("append");
    rt.block_on(async {
        for task in tasks {
            let got = tokio::time::timeout(RECORD_WAIT, task).await.expect("a waiting future missed the record");
            assert_eq!(got.expect("task"), (1, b"second".to_vec()));
        }
    });
    // Futures still waiting when the runtime shuts down are dropped with it: no hang, no
    // panic, and no sleeper left registered.
    let waiting: Vec<_> = (0..20)
        .map(|_| {
            let mut tailer = AsyncTailer::open_with(dir.path(), TailWait::Park).expect("tailer");
            rt.spawn(async move {
                loop {
                    tailer.next().await.expect("read");
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    assert!(waiting.iter().all(|t| !t.is_finished()));
    assert_eq!(waiters(dir.path()), 20, "the waiting futures are not registered as sleepers");
    rt.shutdown_timeout(Duration::from_secs(10));
    assert_eq!(waiters(dir.path()), 0, "futures dropped at shutdown left sleepers registered");
    log.append(b"after").expect("append after the runtime is gone");
    log.close().expect("close");
}

/// In a child whose every data sync fails (`SHOAL_FAIL_POINT=sync`): durable futures, those
/// of appends and those of a watch, resolve with the sync's error, none hangs, and an
/// append after the failure resolves with it at once.
fn child_durable_futures_see_the_sync_error(dir: &Path, durability: Durability) {
    let rt = runtime();
    rt.block_on(async {
        let mut log = Appender::open(dir, opts().durability(durability)).expect("open");
        let watch = log.durable_watch();
        let mut acks = Vec::new();
        for i in 0..20u64 {
            let ack = log.append_durable(format!("record {i}").as_bytes());
            acks.push(tokio::spawn(ack));
        }
        let waits: Vec<_> = (0..5).map(|o| tokio::spawn(watch.wait(Offset(o)))).collect();
        for (i, ack) in acks.into_iter().enumerate() {
            match tokio::time::timeout(RECORD_WAIT, ack).await.expect("an append's durable future hung").expect("task")
            {
                Err(AppendError::Log(LogError::SyncFailed { .. })) => {}
                // In Batch mode the sync thread's first round may fail before the appends
                // end: later appends fail at once with the same error.
                other => panic!("{durability:?}: append {i} resolved to {other:?}, not the sync failure"),
            }
        }
        for (o, wait) in waits.into_iter().enumerate() {
            match tokio::time::timeout(RECORD_WAIT, wait).await.expect("a watch's durable future hung").expect("task") {
                Err(LogError::SyncFailed { .. }) => {}
                other => panic!("{durability:?}: wait for {o} resolved to {other:?}, not the sync failure"),
            }
        }
        match log.append_durable(b"after").await {
            Err(AppendError::Log(LogError::SyncFailed { .. })) => {}
            other => panic!("{durability:?}: an append after the failure resolved to {other:?}"),
        }
        assert_eq!(log.durable_offset(), Offset(0), "{durability:?}: the watermark moved with every sync failing");
    });
}

#[test]
fn durable_futures_resolve_with_a_sync_error() {
    const TEST: &str = "durable_futures_resolve_with_a_sync_error";
    if let Some(mode) = child_mode() {
        let (dir, durability) = mode.split_once(' ').expect("child mode: dir durability");
        let durability = if durability == "batch" { Durability::Batch } else { Durability::Never };
        child_durable_futures_see_the_sync_error(Path::new(dir), durability);
        std::process::exit(0);
    }
    for durability in ["never", "batch"] {
        let dir = tempfile::tempdir().expect("tempdir");
        run_child_with_fail_point(TEST, &format!("{} {durability}", dir.path().display()), "sync", durability);
    }
}

#[test]
fn durable_futures_resolve_once_covered_and_cancel_cleanly() {
    let rt = runtime();
    for durability in [Durability::Never, Durability::Interval(Duration::from_secs(3600)), Durability::Batch] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Appender::open(dir.path(), opts().durability(durability)).expect("open");
        let watch = log.durable_watch();
        rt.block_on(async {
            // A passive wait is not a request: at these levels nothing syncs, and it stays
            // pending; dropping it (cancelled by the timeout) unregisters it.
            let first = log.append(b"first").expect("append");
            if durability != Durability::Batch {
                let passive = tokio::time::timeout(Duration::from_millis(50), watch.wait_passive(first)).await;
                assert!(passive.is_err(), "{durability:?}: a passive wait resolved with nothing syncing");
            }
            // Each append's future resolves once it is covered, in any order of awaiting,
            // from other tasks, while the appender goes on.
            let acks: Vec<_> =
                (0..50u64).map(|i| tokio::spawn(log.append_durable(format!("record {i}").as_bytes()))).collect();
            for (i, ack) in acks.into_iter().enumerate().rev() {
                let offset =
                    tokio::time::timeout(RECORD_WAIT, ack).await.expect("hung").expect("task").expect("durable");
                assert_eq!(offset, Offset(i as u64 + 1));
                assert!(watch.durable_offset() > offset, "{durability:?}: resolved before the watermark passed");
            }
            // The passive wait on the first record is over now, at once.
            assert_eq!(watch.wait_passive(first).await.expect("durable"), first);
        });
        log.close().expect("close");
        // A wait for a record never appended ends when the appender closes.
        let closed = rt.block_on(async { tokio::time::timeout(RECORD_WAIT, watch.wait(Offset(1_000))).await });
        assert!(matches!(closed, Ok(Err(LogError::Closed))), "{durability:?}: {closed:?}");
    }
}

#[test]
fn an_async_ring_consumer_gets_every_value_from_a_producer_thread() {
    const VALUES: u64 = 100_000;
    let rt = runtime();
    for wait in [WaitStrategy::Park, WaitStrategy::SpinThenYield] {
        let (mut tx, rx) = channel::<u64>(256, wait);
        let mut rx = AsyncConsumer::new(rx);
        let producer = std::thread::spawn(move || {
            for i in 0..VALUES {
                tx.push_wait(i).expect("the consumer is there");
                // Pauses now and then, so the consumer runs dry and sleeps.
                if i % 5_000 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        let consume = async move {
            let (mut next, mut cancelled, mut i) = (0u64, 0u64, 0u64);
            loop {
                i += 1;
                match i % 3 {
                    // One at a time.
                    0 => match rx.pop().await {
                        Ok(v) => {
                            assert_eq!(v, next, "{wait:?}");
                            next += 1;
                        }
                        Err(Closed) => break,
                    },
                    // A batch in place.
                    1 => match rx.read(64).await {
                        Ok(batch) => {
                            let (a, b) = batch.as_slices();
                            for &v in a.iter().chain(b) {
                                assert_eq!(v, next, "{wait:?}");
                                next += 1;
                            }
                            batch.commit();
                        }
                        Err(Closed) => break,
                    },
                    // A pop cancelled mid-wait now and then: it takes nothing.
                    _ => tokio::select! {
                        v = rx.pop() => match v {
                            Ok(v) => {
                                assert_eq!(v, next, "{wait:?}");
                                next += 1;
                            }
                            Err(Closed) => break,
                        },
                        _ = tokio::time::sleep(Duration::from_micros(100)) => cancelled += 1,
                    },
                }
            }
            assert!(cancelled > 0, "{wait:?}: no pop was cancelled; that part tested nothing");
            next
        };
        let got = rt.block_on(async { tokio::time::timeout(RECORD_WAIT, consume).await.expect("the consumer hung") });
        producer.join().expect("producer");
        assert_eq!(got, VALUES, "{wait:?}: the consumer saw Closed before the last value");
    }
}

#[test]
fn an_async_ring_consumer_as_a_stream_ends_when_the_producer_goes() {
    let rt = runtime();
    let (mut tx, rx) = channel::<String>(4, WaitStrategy::Park);
    let producer = std::thread::spawn(move || {
        for i in 0..100 {
            tx.push_wait(format!("value {i}")).expect("push");
        }
    });
    let values: Vec<String> = rt.block_on(async {
        tokio::time::timeout(RECORD_WAIT, AsyncConsumer::new(rx).collect::<Vec<_>>()).await.expect("the stream hung")
    });
    producer.join().expect("producer");
    assert_eq!(values, (0..100).map(|i| format!("value {i}")).collect::<Vec<_>>());
}

/// In a child that behaves as on a kernel without `futex_waitv` (Linux < 5.16): the wake
/// helpers re-check every 1 ms instead, and every kind of future still gets its record,
/// value or watermark.
fn child_without_futex_waitv(dir: &Path) {
    let rt = runtime();
    let mut log = Appender::open(dir, opts()).expect("open");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let mut tailer = AsyncTailer::open_with(dir, TailWait::Park).expect("tailer");
            rt.spawn(async move {
                let mut offsets = Vec::new();
                while offsets.len() < 20 {
                    offsets.push(tailer.next().await.expect("read").offset().0);
                }
                offsets
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    for i in 0..20 {
        log.append(&payload(0, i)).expect("append");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut tx, rx) = channel::<u64>(8, WaitStrategy::Park);
    let producer = std::thread::spawn(move || {
        for i in 0..1_000 {
            tx.push_wait(i).expect("push");
        }
    });
    rt.block_on(async {
        tokio::time::timeout(RECORD_WAIT, async {
            for task in tasks {
                assert_eq!(task.await.expect("task"), (0..20).collect::<Vec<u64>>());
            }
            let values: Vec<u64> = AsyncConsumer::new(rx).collect().await;
            assert_eq!(values, (0..1_000).collect::<Vec<u64>>());
            let offset = log.append_durable(b"durable").await.expect("durable");
            assert!(log.durable_offset() > offset);
        })
        .await
        .expect("a future hung without futex_waitv");
    });
    producer.join().expect("producer");
    log.close().expect("close");
}

#[test]
fn without_futex_waitv_every_future_still_completes() {
    const TEST: &str = "without_futex_waitv_every_future_still_completes";
    if let Some(dir) = child_mode() {
        child_without_futex_waitv(Path::new(&dir));
        std::process::exit(0);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    run_child_with_fail_point(TEST, &dir.path().display().to_string(), "no_futex_waitv", "no futex_waitv");
}
