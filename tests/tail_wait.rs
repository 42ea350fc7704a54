//! Tailers by wait strategy (`TailWait`): each strategy receives every record in order,
//! across segment rollovers, in this process and in another; each honours its timeout; a
//! spinning tailer never registers as a sleeper (so the appender pays no futex wake for it);
//! an idle `Park` (or default) tailer uses next to no CPU, while a busy one keeps spinning;
//! a consumer-group member polls by each strategy too.
//!
//! Cross-process tailers are this test binary run again as a child (see `common`).

mod common;

use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shoal::log::{Appender, IoBackend, LogOptions, TailWait, Tailer};

use common::{child_command, child_mode, parse_report, report, small_opts, wait_for_report};

/// Every strategy, by the name a child is given.
const STRATEGIES: [(&str, TailWait); 4] = [
    ("busy", TailWait::BusySpin),
    ("default", TailWait::SpinThenPark(TailWait::DEFAULT_SPIN)),
    ("short-spin", TailWait::SpinThenPark(Duration::from_micros(20))),
    ("park", TailWait::Park),
];

/// Records each run appends: with [`small_opts`]' 64 KiB segments and [`payload`]'s sizes,
/// about ten rollovers.
const RECORDS: u64 = 3_000;

/// Longest a tailer waits for one record before the test calls it lost: far above any
/// wake-up (microseconds to milliseconds), so only a lost record or a hang trips it.
const RECORD_WAIT: Duration = Duration::from_secs(20);

/// Offset of the `waiters` word in the `HEAD` page (see `src/log/head.rs`).
const HEAD_WAITERS_AT: u64 = 68;

fn strategy(name: &str) -> TailWait {
    STRATEGIES.iter().find(|(n, _)| *n == name).map(|(_, w)| *w).unwrap_or_else(|| panic!("no strategy {name}"))
}

/// Payload of record `i`: varied lengths so records end segments at different places.
fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("wait-{i}-").into_bytes();
    p.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, (i as usize * 37) % 400));
    p
}

/// Appends [`RECORDS`] records, in bursts with pauses between them long enough for any
/// tailer to run dry and (but a busy one) fall asleep, and some spaced by less than the
/// default spin budget.
fn append_all(log: &mut Appender) {
    for i in 0..RECORDS {
        log.append(&payload(i)).expect("append");
        match i % 500 {
            0 => std::thread::sleep(Duration::from_millis(5)),
            1..=20 => {
                let until = Instant::now() + Duration::from_micros(100);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            _ => {}
        }
    }
}

/// Reads [`RECORDS`] records and checks each one's offset and bytes; `Err` says what was
/// wrong.
fn read_all(tailer: &mut Tailer) -> Result<(), String> {
    for i in 0..RECORDS {
        match tailer.next(Some(RECORD_WAIT)) {
            Ok(Some(record)) => {
                if record.offset().0 != i {
                    return Err(format!("record {i} came as offset {}", record.offset()));
                }
                if record.payload() != &payload(i)[..] {
                    return Err(format!("record {i} has other bytes"));
                }
            }
            Ok(None) => return Err(format!("no record {i} within {RECORD_WAIT:?}")),
            Err(e) => return Err(format!("record {i}: {e}")),
        }
    }
    Ok(())
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("list")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg")))
        .count()
}

#[test]
fn each_strategy_reads_every_record_in_order_across_rollovers() {
    for (name, wait) in STRATEGIES {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = Appender::open(dir.path(), small_opts(IoBackend::Auto)).expect("open");
        let mut tailer = Tailer::open_with(dir.path(), wait).expect("tailer");
        assert_eq!(tailer.wait(), wait);
        std::thread::scope(|s| {
            let reading = s.spawn(|| read_all(&mut tailer));
            append_all(&mut log);
            reading.join().expect("tailer thread").unwrap_or_else(|e| panic!("{name}: {e}"));
        });
        let segments = segment_count(dir.path());
        assert!(segments >= 5, "{name}: only {segments} segments; the test wants rollovers");
    }
}

/// The child: tails the log in `SHOAL_TAIL_DIR` with the strategy named by its mode.
fn tail_child(name: &str) -> ! {
    let dir = std::env::var("SHOAL_TAIL_DIR").expect("SHOAL_TAIL_DIR");
    let mut tailer = Tailer::open_with(&dir, strategy(name)).expect("child: open tailer");
    report("ready");
    match read_all(&mut tailer) {
        Ok(()) => report("done"),
        Err(e) => report(&format!("failed: {e}")),
    }
    std::process::exit(0);
}

#[test]
fn each_strategy_reads_every_record_in_order_in_another_process() {
    if let Some(mode) = child_mode() {
        tail_child(&mode);
    }
    for (name, _) in STRATEGIES {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = Appender::open(dir.path(), small_opts(IoBackend::Auto)).expect("open");
        let mut child = child_command("each_strategy_reads_every_record_in_order_in_another_process", name)
            .env("SHOAL_TAIL_DIR", dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tailer");
        let lines = wait_for_report(&mut child, "ready");
        append_all(&mut log);
        let outcome = lines
            .lines()
            .map(|line| line.expect("read child stdout"))
            .find_map(|line| parse_report(&line).map(str::to_string))
            .unwrap_or_else(|| panic!("{name}: the tailer exited without a report"));
        assert!(child.wait().expect("wait tailer").success());
        assert_eq!(outcome, "done", "{name}: the tailer in another process failed");
        let segments = segment_count(dir.path());
        assert!(segments >= 5, "{name}: only {segments} segments; the test wants rollovers");
    }
}

/// Slack allowed past a timeout before a `next` counts as not honouring it: generous for a
/// loaded 2-core machine (a tailer checks its deadline at least every 100 ms).
const TIMEOUT_SLACK: Duration = Duration::from_secs(2);

/// Waits for a record that does not come and checks the wait took the timeout, no less and
/// not much more.
fn expect_timeout(tailer: &mut Tailer, name: &str, case: &str) {
    let timeout = Duration::from_millis(30);
    let start = Instant::now();
    let got = tailer.next(Some(timeout)).expect("next").is_some();
    let took = start.elapsed();
    assert!(!got, "{name}, {case}: a record came from nowhere");
    assert!(took >= timeout, "{name}, {case}: returned after {took:?}, before the timeout");
    assert!(took < timeout + TIMEOUT_SLACK, "{name}, {case}: returned only after {took:?}");
}

#[test]
fn each_strategy_honours_its_timeout_with_and_without_an_appender() {
    // A spin budget longer than the timeout too: the spin alone must stop at the deadline.
    let long_spin = ("long-spin", TailWait::SpinThenPark(Duration::from_secs(5)));
    for (name, wait) in STRATEGIES.into_iter().chain([long_spin]) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = Appender::open(dir.path(), LogOptions::default()).expect("open");
        log.append(b"only").expect("append");
        let mut tailer = Tailer::open_with(dir.path(), wait).expect("tailer");
        let first = tailer.next(Some(RECORD_WAIT)).expect("next").map(|r| r.payload().to_vec());
        assert_eq!(first.as_deref(), Some(&b"only"[..]), "{name}");
        expect_timeout(&mut tailer, name, "an appender open");
        log.close().expect("close");
        expect_timeout(&mut tailer, name, "no appender");
        // A zero timeout looks once and returns.
        let start = Instant::now();
        assert!(tailer.next(Some(Duration::ZERO)).expect("next").is_none());
        assert!(start.elapsed() < TIMEOUT_SLACK, "{name}: a zero timeout took {:?}", start.elapsed());
    }
}

/// The `waiters` word of the log's `HEAD` page, read from the file.
fn head_waiters(dir: &Path) -> u32 {
    let file = std::fs::File::open(dir.join("HEAD")).expect("open HEAD");
    let mut word = [0u8; 4];
    file.read_exact_at(&mut word, HEAD_WAITERS_AT).expect("read HEAD");
    u32::from_le_bytes(word)
}

#[test]
fn only_a_sleeping_tailer_registers_as_a_sleeper() {
    for (name, wait, sleeps) in [
        ("busy", TailWait::BusySpin, false),
        ("long spin", TailWait::SpinThenPark(Duration::from_secs(5)), false),
        ("park", TailWait::Park, true),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = Appender::open(dir.path(), LogOptions::default()).expect("open");
        let mut tailer = Tailer::open_with(dir.path(), wait).expect("tailer");
        std::thread::scope(|s| {
            let waiting = s.spawn(|| tailer.next(Some(RECORD_WAIT)).expect("next").map(|r| r.offset().0));
            // Long enough for the tailer to be in its wait; read the word a few times.
            let mut registered = 0;
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(10));
                registered = registered.max(head_waiters(dir.path()));
            }
            log.append(b"go").expect("append");
            assert_eq!(waiting.join().expect("tailer thread"), Some(0), "{name}: the tailer missed the record");
            if sleeps {
                assert_eq!(registered, 1, "{name}: a sleeping tailer must register, or no append wakes it");
            } else {
                assert_eq!(registered, 0, "{name}: a spinning tailer registered as a sleeper");
            }
        });
        assert_eq!(head_waiters(dir.path()), 0, "{name}: the registration outlived the wait");
    }
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, writable rusage; RUSAGE_THREAD names the calling thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD): {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The CPU time an idle waiting tailer may use over a second: the goal is at most 1% of a
/// core (10 ms); twice that, because the kernel may account CPU time in scheduler ticks
/// (4 ms at 250 Hz) and a thread woken ten times a second (the 100 ms safety-net wake) can
/// be charged a whole tick by bad luck. A tailer that spins instead uses the whole second.
const IDLE_CPU_MAX: Duration = Duration::from_millis(20);

#[test]
fn an_idle_park_or_default_tailer_uses_next_to_no_cpu_a_busy_one_spins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = Appender::open(dir.path(), LogOptions::default()).expect("open");
    log.append(b"first").expect("append");
    for (name, wait, idle) in [
        ("park", TailWait::Park, Duration::from_secs(1)),
        ("default", TailWait::default(), Duration::from_secs(1)),
        ("busy", TailWait::BusySpin, Duration::from_millis(300)),
    ] {
        let mut tailer = Tailer::open_with(dir.path(), wait).expect("tailer");
        assert!(tailer.next(Some(RECORD_WAIT)).expect("next").is_some());
        // The wait runs on a thread of its own, so only its CPU time is counted.
        let (cpu, wall) = std::thread::scope(|s| {
            s.spawn(|| {
                let (cpu0, start) = (thread_cpu(), Instant::now());
                assert!(tailer.next(Some(idle)).expect("next").is_none(), "{name}: a record came from nowhere");
                (thread_cpu() - cpu0, start.elapsed())
            })
            .join()
            .expect("tailer thread")
        });
        eprintln!("{name}: {cpu:?} of CPU over {wall:?} of waiting");
        let allowed = IDLE_CPU_MAX.mul_f64(wall.as_secs_f64());
        if wait == TailWait::BusySpin {
            // It never sleeps while an appender lives: the same measurement must see it over
            // the idle bound (even on a loaded machine that takes its core away at times),
            // or the bound above proves nothing.
            assert!(cpu > allowed, "{name}: a busy tailer used only {cpu:?} of CPU in {wall:?}");
        } else {
            assert!(cpu <= allowed, "{name}: an idle tailer used {cpu:?} of CPU in {wall:?} (at most {allowed:?})");
        }
    }
}

#[test]
fn a_group_member_receives_every_record_in_order_and_honours_its_timeout_with_each_strategy() {
    use shoal::bus::Bus;
    use shoal::group::{GroupOptions, Member};

    let total = 2_000u64;
    for (name, wait) in STRATEGIES {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = Bus::open(dir.path()).expect("bus");
        let topic = bus.topic_or_create("events", Some(2)).expect("topic");
        let opts = small_opts(IoBackend::Auto).durability(shoal::log::Durability::Never);
        let mut producer = topic.producer(opts).expect("producer");
        let mut member = Member::join(&bus, "g", "events", GroupOptions::default().tail_wait(wait)).expect("join");
        assert_eq!(member.assigned(), vec![0, 1], "{name}: a lone member owns every partition");

        // Nothing yet: a poll waits out its timeout, by this strategy.
        let timeout = Duration::from_millis(30);
        let start = Instant::now();
        assert!(member.poll(64, timeout).expect("poll").is_empty(), "{name}: records from nowhere");
        let took = start.elapsed();
        assert!(took >= timeout && took < timeout + TIMEOUT_SLACK, "{name}: an empty poll took {took:?}");

        let mut next = [0u64; 2];
        let mut received = 0u64;
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..total {
                    producer.send(i, &payload(i)).expect("send");
                    if i % 400 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
            let deadline = Instant::now() + RECORD_WAIT;
            while received < total {
                assert!(Instant::now() < deadline, "{name}: only {received} of {total} records arrived");
                for delivery in member.poll(64, Duration::from_millis(50)).expect("poll") {
                    let p = delivery.partition as usize;
                    assert_eq!(delivery.record.offset().0, next[p], "{name}: partition {p} out of order");
                    next[p] += 1;
                    received += 1;
                }
            }
        });
        assert_eq!(next.iter().sum::<u64>(), total, "{name}");
        member.leave().expect("leave");
    }
}
