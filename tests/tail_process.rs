//! A `Tailer` in another process: it follows a log while this process appends (across many
//! segment rollovers) and sees every record exactly once, in order; and while nothing is
//! appended it sleeps instead of burning a core.
//!
//! The tailer is this test binary run again as a child (see `common`); it prints
//! `rec <offset> <crc32c of the payload>` for each record it reads.

mod common;

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shoal::log::{Appender, IoBackend, Offset, Tailer};

use common::{
    child_command, child_mode, clock_ticks_per_second, cpu_ticks, parse_report, report, small_opts, wait_for_report,
    BACKENDS,
};

/// Payload of record `i`: varied lengths so records straddle segment ends differently.
fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("tail-{i}-").into_bytes();
    p.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, (i as usize * 13) % 300));
    p
}

/// The child: tails the log in `SHOAL_TAIL_DIR` until it has `SHOAL_TAIL_COUNT` records.
fn tailer_child() -> ! {
    let dir = std::env::var("SHOAL_TAIL_DIR").expect("SHOAL_TAIL_DIR");
    let count: u64 = std::env::var("SHOAL_TAIL_COUNT").expect("SHOAL_TAIL_COUNT").parse().expect("count");
    let idle_after: Option<u64> = std::env::var("SHOAL_TAIL_IDLE_AFTER").ok().and_then(|s| s.parse().ok());
    let mut tailer = Tailer::open(&dir).expect("child: open tailer");
    report("ready");
    let mut seen = 0u64;
    while seen < count {
        if idle_after == Some(seen) {
            report("caught-up");
        }
        match tailer.next(Some(Duration::from_secs(20))) {
            Ok(Some(rec)) => {
                report(&format!("rec {} {}", rec.offset().0, crc32c::crc32c(rec.payload())));
                seen += 1;
            }
            Ok(None) => {
                report(&format!("timeout after {seen} records"));
                std::process::exit(1);
            }
            Err(e) => {
                report(&format!("error {e}"));
                std::process::exit(1);
            }
        }
    }
    report("done");
    std::process::exit(0);
}

/// Reads the child's reports until `done`; returns the records (offset, crc) it saw.
fn collect_records(lines: impl BufRead) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    for line in lines.lines() {
        let line = line.expect("read child stdout");
        let Some(msg) = parse_report(&line) else { continue };
        if msg == "done" {
            return out;
        }
        if let Some(rest) = msg.strip_prefix("rec ") {
            let mut parts = rest.split(' ');
            let offset = parts.next().and_then(|s| s.parse().ok()).expect("offset");
            let crc = parts.next().and_then(|s| s.parse().ok()).expect("crc");
            out.push((offset, crc));
        } else {
            panic!("the tailer failed: {msg} (after {} records)", out.len());
        }
    }
    panic!("the tailer exited after {} records without finishing", out.len());
}

#[test]
fn tailer_in_another_process_sees_every_record_once_in_order() {
    if child_mode().as_deref() == Some("tail") {
        tailer_child();
    }
    for backend in BACKENDS {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let total = 20_000u64;
        let early = 500u64;
        let mut log = Appender::open(dir.path(), small_opts(backend)).expect("open");
        // Some records before the tailer starts, the rest while it follows.
        for i in 0..early {
            log.append(&payload(i)).expect("append");
        }
        let mut child = child_command("tailer_in_another_process_sees_every_record_once_in_order", "tail")
            .env("SHOAL_TAIL_DIR", dir.path())
            .env("SHOAL_TAIL_COUNT", total.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tailer");
        let lines = wait_for_report(&mut child, "ready");
        let collector = std::thread::spawn(move || collect_records(lines));
        for i in early..total {
            log.append(&payload(i)).expect("append");
            // Pauses now and then, so the tailer catches up and goes to sleep in between.
            if i % 2500 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        log.sync().expect("sync");
        let segments = std::fs::read_dir(dir.path())
            .expect("list")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg")))
            .count();
        assert!(segments >= 10, "{backend:?}: only {segments} segments; the test wants many rollovers");
        let seen = collector.join().expect("collector");
        let status = child.wait().expect("wait tailer");
        assert!(status.success(), "{backend:?}: tailer exited with {status}");
        assert_eq!(seen.len() as u64, total, "{backend:?}: the tailer saw {} records of {total}", seen.len());
        for (i, &(offset, crc)) in seen.iter().enumerate() {
            assert_eq!(offset, i as u64, "{backend:?}: record {i} came as offset {offset}");
            assert_eq!(crc, crc32c::crc32c(&payload(i as u64)), "{backend:?}: record {i} has other bytes");
        }
        eprintln!("{backend:?}: {total} records over {segments} segments tailed in {:?}", started.elapsed());
    }
}

#[test]
fn idle_tailer_in_another_process_sleeps() {
    if child_mode().as_deref() == Some("tail") {
        tailer_child();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = Appender::open(dir.path(), small_opts(IoBackend::Auto)).expect("open");
    for i in 0..10 {
        log.append(&payload(i)).expect("append");
    }
    let mut child = child_command("idle_tailer_in_another_process_sleeps", "tail")
        .env("SHOAL_TAIL_DIR", dir.path())
        .env("SHOAL_TAIL_COUNT", "11")
        .env("SHOAL_TAIL_IDLE_AFTER", "10")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tailer");
    let lines = wait_for_report(&mut child, "caught-up");
    // Let it settle into its wait, then measure its CPU time over about a second.
    std::thread::sleep(Duration::from_millis(200));
    let pid = child.id();
    let (ticks_before, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let (ticks_after, elapsed) = (cpu_ticks(pid), t0.elapsed());
    let cpu = Duration::from_secs_f64((ticks_after - ticks_before) as f64 / clock_ticks_per_second() as f64);
    let share = cpu.as_secs_f64() / elapsed.as_secs_f64();
    assert!(share < 0.05, "an idle tailer used {:.1}% of a core ({cpu:?} in {elapsed:?})", share * 100.0);

    // It was waiting, not gone: one more record wakes it.
    let appended = Instant::now();
    log.append(b"wake up").expect("append");
    let seen = collect_records(lines);
    let woke = appended.elapsed();
    assert!(child.wait().expect("wait").success());
    // Records 0..10 were reported before "caught-up"; only the new one follows.
    assert_eq!(seen, vec![(10, crc32c::crc32c(b"wake up"))]);
    assert!(woke < Duration::from_secs(5), "the tailer took {woke:?} to see a new record");
    assert_eq!(log.next_offset(), Offset(11));
    eprintln!("idle tailer: {:.2}% of a core over {elapsed:?}; woke in {woke:?}", share * 100.0);
}
