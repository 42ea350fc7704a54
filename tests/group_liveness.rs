//! Group liveness: a member that stops making progress (SIGSTOP, or a handler that hangs and
//! never polls again) loses its partitions after the session timeout to a member that
//! delivers every record; when it wakes, its commit of the records it held is refused
//! (fenced), it is not handed those records again while the new owner holds them, and it
//! leaves cleanly. Also: group files planted as symlinks are refused, never followed.
//!
//! The stopped member is this test binary run again as a child (see `common`). It joins,
//! polls one batch of every partition without committing, reports
//! `polled <partition> <offset>...`, then blocks reading a line from stdin (the "handler").
//! After the line it commits, reports `fenced <message>` or `committed`, polls for a while
//! reporting `rec <partition> <offset>` for each record, then leaves and reports `left`.
//! One test runs two `shoal group` processes instead, with the default session timeout.

mod cli_support;
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use shoal::bus::Bus;
use shoal::group::{GroupError, GroupOptions, Member};
use shoal::log::{Durability, LogOptions};

use common::{child_command, child_mode, parse_report, report};

const PARTITIONS: u32 = 4;
const RECORDS: u64 = 2_000;
/// The surviving member's session timeout.
const SESSION: Duration = Duration::from_millis(800);
/// Allowed on top of the session timeout for the takeover (sweeps, a loaded machine).
const TAKEOVER_SLACK: Duration = Duration::from_secs(3);

fn log_opts() -> LogOptions {
    LogOptions::default()
        .segment_bytes(256 << 10)
        .max_record_bytes(4 << 10)
        .durability(Durability::Never)
        .prefault(false)
}

/// A bus with topic `events` holding `RECORDS` records.
fn filled_bus(dir: &std::path::Path) -> Bus {
    let bus = Bus::open(dir).unwrap();
    let topic = bus.topic_or_create("events", Some(PARTITIONS)).unwrap();
    let mut producer = topic.producer(log_opts()).unwrap();
    for i in 0..RECORDS {
        producer.send(i.wrapping_mul(0x9E37_79B9), format!("record {i}").as_bytes()).unwrap();
    }
    bus
}

/// Every (partition, offset) of the topic.
fn all_records(bus: &Bus) -> BTreeSet<(u32, u64)> {
    let t = bus.topic("events").unwrap();
    let mut all = BTreeSet::new();
    for p in 0..t.partitions() {
        let mut r = shoal::log::Reader::open(t.partition_dir(p).unwrap()).unwrap();
        while let Some(rec) = r.next_ref().unwrap() {
            all.insert((p, rec.offset().0));
        }
    }
    assert_eq!(all.len() as u64, RECORDS);
    all
}

/// The child: see the module docs.
fn stalling_child() -> ! {
    let bus = Bus::open(std::env::var("SHOAL_GROUP_BUS").unwrap()).unwrap();
    let mut m = Member::join(&bus, "g", "events", GroupOptions::default().label("stalling")).unwrap();
    // Alone in the group: it holds every partition; take records of each.
    let mut polled = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while polled.iter().map(|&(p, _)| p).collect::<BTreeSet<u32>>().len() < PARTITIONS as usize {
        assert!(Instant::now() < deadline, "child: records of every partition never came");
        for d in m.poll(16, Duration::from_millis(20)).unwrap() {
            polled.push((d.partition, d.record.offset().0));
        }
    }
    let list: Vec<String> = polled.iter().map(|(p, o)| format!("{p} {o}")).collect();
    report(&format!("polled {}", list.join(" ")));
    // The "handler": stuck until the parent writes a line (or stopped meanwhile).
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    match m.commit() {
        Err(e @ GroupError::Fenced { .. }) => report(&format!("fenced {e}")),
        Err(e) => report(&format!("error {e}")),
        Ok(()) => report("committed"),
    }
    report(&format!("holds {}", m.assigned().len()));
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        for d in m.poll(64, Duration::from_millis(20)).unwrap() {
            report(&format!("rec {} {}", d.partition, d.record.offset().0));
        }
        m.commit().unwrap();
    }
    m.leave().unwrap();
    report("left");
    std::process::exit(0);
}

/// Reports of a child, on a thread.
fn reports(lines: impl BufRead + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in lines.lines() {
            let Ok(line) = line else { break };
            if let Some(r) = parse_report(&line) {
                if tx.send(r.to_string()).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

fn next_report(rx: &Receiver<String>, what: &str) -> String {
    rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no report from the child: waited for {what}"))
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Kills a child when the test fails before it waited for it, so a stopped child is not
/// left behind (holding the test's output pipes open). The child is not reaped until the
/// test waits for it, so its pid cannot have been reused.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kill(2) on our own unreaped child's pid; no memory is involved.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// The state letter of process `pid` in /proc (`T` when stopped).
fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

/// How the child stalls.
#[derive(Clone, Copy, PartialEq)]
enum Stall {
    /// Stopped by SIGSTOP in its handler.
    Signal,
    /// Its handler hangs (it is not stopped).
    Hang,
    /// Its handler returns and it commits, but stops itself (`SHOAL_FAIL_POINT`) inside the
    /// first partition's commit, between the owner check and the write.
    MidCommit,
}

/// Runs the scenario: the child stalls (see [`Stall`]), this process joins and must take
/// everything over and deliver every record.
fn stalled_member_is_replaced_and_fenced(test: &str, stall: Stall) {
    let stop = stall != Stall::Hang;
    if child_mode().as_deref() == Some("stalling") {
        stalling_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let bus = filled_bus(dir.path());
    let all = all_records(&bus);
    let mut child = child_command(test, "stalling");
    if stall == Stall::MidCommit {
        child.env("SHOAL_FAIL_POINT", "group-commit-checked");
    }
    let mut child =
        child.env("SHOAL_GROUP_BUS", dir.path()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let _guard = KillOnPanic(child.id());
    let mut stdin = child.stdin.take().unwrap();
    let lines = wait_for_report_prefix(&mut child);
    let rx = reports(lines.0);
    let child_polled: BTreeSet<(u32, u64)> = parse_pairs(lines.1.strip_prefix("polled ").unwrap()).collect();
    assert!(!child_polled.is_empty());
    if stall == Stall::MidCommit {
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
    if stall == Stall::Signal {
        signal(&child, libc::SIGSTOP);
    }
    if stop {
        let t = Instant::now();
        while proc_state(child.id()) != 'T' {
            assert!(t.elapsed() < Duration::from_secs(5), "the child never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let stalled_at = Instant::now();
    let opts =
        GroupOptions::default().label("survivor").session_timeout(SESSION).liveness_check(Duration::from_millis(20));
    let mut me = Member::join(&bus, "g", "events", opts).unwrap();
    let mut seen = BTreeSet::new();
    let mut took_all = None;
    while seen.len() < all.len() {
        for d in me.poll(256, Duration::from_millis(20)).unwrap() {
            assert!(seen.insert((d.partition, d.record.offset().0)), "delivered twice: {:?}", d.record.offset());
        }
        me.commit().unwrap();
        if took_all.is_none() && me.assigned().len() == PARTITIONS as usize {
            took_all = Some(stalled_at.elapsed());
        }
        assert!(
            stalled_at.elapsed() < SESSION + TAKEOVER_SLACK + Duration::from_secs(5),
            "the survivor delivered {} of {} records; holds {:?}",
            seen.len(),
            all.len(),
            me.assigned()
        );
    }
    let took_all = took_all.expect("the survivor holds every partition");
    assert!(took_all >= SESSION, "taken over after {took_all:?}, before the session timeout");
    assert!(took_all < SESSION + TAKEOVER_SLACK, "taken over only after {took_all:?}");
    assert_eq!(seen, all, "the survivor delivers every record, the stalled member's uncommitted ones included");
    assert_eq!(me.stats().fenced, 0);
    // Wake the child (or let its handler return): its commit is refused.
    if stall != Stall::MidCommit {
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
    if stop {
        signal(&child, libc::SIGCONT);
    }
    let fenced = next_report(&rx, "the child's commit");
    assert!(fenced.starts_with("fenced "), "the stale commit was not refused: {fenced}");
    assert!(fenced.contains("taken over after the session timeout") && fenced.contains(".lock"), "{fenced}");
    assert_eq!(next_report(&rx, "what the child holds"), "holds 0", "the woken member dropped its partitions");
    // While this member holds the partitions (and commits everything it returns), the
    // child is handed none of its records again.
    let mut child_recs = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let again = me.poll(256, Duration::from_millis(10)).unwrap();
        assert!(again.is_empty(), "nothing new was produced, yet {:?} came again", again[0].record.offset());
        me.commit().unwrap();
        match rx.try_recv() {
            Ok(r) if r == "left" => break,
            Ok(r) => {
                let rest = r.strip_prefix("rec ").unwrap_or_else(|| panic!("unexpected report {r}"));
                child_recs.extend(parse_pairs(rest));
            }
            Err(_) => assert!(Instant::now() < until, "the child never left"),
        }
    }
    assert!(child_recs.is_empty(), "the woken member was handed records the survivor held: {child_recs:?}");
    let status = child.wait().unwrap();
    assert!(status.success(), "the woken member left cleanly: {status:?}");
    // The survivor holds everything again once the child has left, and its offsets stand.
    let deadline = Instant::now() + Duration::from_secs(10);
    while me.assigned().len() < PARTITIONS as usize {
        assert!(me.poll(16, Duration::from_millis(20)).unwrap().is_empty());
        assert!(Instant::now() < deadline, "partitions never came back: {:?}", me.assigned());
    }
    let info = shoal::group::describe(&bus).unwrap();
    assert!(info[0].partitions.iter().all(|p| p.lag == 0), "{:?}", info[0].partitions);
    me.leave().unwrap();
}

/// Reads the child's stdout until its `polled` report; returns the rest and the report.
fn wait_for_report_prefix(child: &mut Child) -> (std::io::BufReader<std::process::ChildStdout>, String) {
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("child stdout piped"));
    let mut line = String::new();
    // Bounded by the child: it exits (EOF) or reports.
    loop {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0, "the child exited before it polled");
        if let Some(r) = parse_report(line.trim_end()) {
            assert!(r.starts_with("polled "), "unexpected report {r}");
            return (lines, r.to_string());
        }
    }
}

fn parse_pairs(s: &str) -> impl Iterator<Item = (u32, u64)> + '_ {
    let nums: Vec<u64> = s.split(' ').map(|x| x.parse().unwrap()).collect();
    (0..nums.len() / 2).map(move |i| (nums[2 * i] as u32, nums[2 * i + 1])).collect::<Vec<_>>().into_iter()
}

#[test]
fn a_sigstopped_member_loses_its_partitions_and_its_commit_is_fenced() {
    stalled_member_is_replaced_and_fenced(
        "a_sigstopped_member_loses_its_partitions_and_its_commit_is_fenced",
        Stall::Signal,
    );
}

/// A member stopped inside a commit, after its owner check and before its write, holds no
/// lock: it is replaced after the session timeout like any stopped member, and when it
/// wakes, the slot it writes reaches no file the group reads (the survivor's offsets
/// stand) and its commit is reported as fenced.
#[test]
fn a_member_stopped_inside_a_commit_is_replaced_and_its_late_write_is_fenced() {
    stalled_member_is_replaced_and_fenced(
        "a_member_stopped_inside_a_commit_is_replaced_and_its_late_write_is_fenced",
        Stall::MidCommit,
    );
}

#[test]
fn a_member_whose_handler_hangs_loses_its_partitions_and_its_commit_is_fenced() {
    stalled_member_is_replaced_and_fenced(
        "a_member_whose_handler_hangs_loses_its_partitions_and_its_commit_is_fenced",
        Stall::Hang,
    );
}

/// Two members take over from one stopped member at once (they may briefly disagree on
/// who gets what): the partition lock serialises their takeovers, so every record is
/// delivered by exactly one of them.
#[test]
fn two_members_taking_over_at_once_deliver_each_record_once() {
    const TEST: &str = "two_members_taking_over_at_once_deliver_each_record_once";
    if child_mode().as_deref() == Some("stalling") {
        stalling_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let bus = filled_bus(dir.path());
    let all = all_records(&bus);
    let mut child = child_command(TEST, "stalling")
        .env("SHOAL_GROUP_BUS", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let _lines = wait_for_report_prefix(&mut child);
    signal(&child, libc::SIGSTOP);
    let stopped_at = Instant::now();
    let done = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let survivors: Vec<_> = (0..2)
        .map(|i| {
            let bus = Bus::open(dir.path()).unwrap();
            let done = done.clone();
            let total = all.len();
            std::thread::spawn(move || {
                let opts = GroupOptions::default().label(format!("survivor {i}")).session_timeout(SESSION);
                let mut m = Member::join(&bus, "g", "events", opts).unwrap();
                let mut mine = Vec::new();
                while done.lock().unwrap().len() < total {
                    let batch = m.poll(64, Duration::from_millis(10)).unwrap();
                    m.commit().unwrap();
                    let mut seen = done.lock().unwrap();
                    for d in &batch {
                        mine.push((d.partition, d.record.offset().0));
                        seen.insert((d.partition, d.record.offset().0));
                    }
                    drop(seen);
                    assert!(stopped_at.elapsed() < Duration::from_secs(30), "survivor {i}: records never all came");
                }
                // Stay until the other one has also seen everything, then leave.
                m.leave().unwrap();
                mine
            })
        })
        .collect();
    let got: Vec<Vec<(u32, u64)>> = survivors.into_iter().map(|t| t.join().unwrap()).collect();
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let a: BTreeSet<_> = got[0].iter().copied().collect();
    let b: BTreeSet<_> = got[1].iter().copied().collect();
    assert_eq!(a.len(), got[0].len(), "survivor 0 delivered a record twice");
    assert_eq!(b.len(), got[1].len(), "survivor 1 delivered a record twice");
    assert!(a.is_disjoint(&b), "delivered by both: {:?}", a.intersection(&b).take(5).collect::<Vec<_>>());
    assert_eq!(a.union(&b).copied().collect::<BTreeSet<_>>(), all);
}

/// The `shoal group` command: a member stopped with SIGSTOP loses its partitions to a
/// second `shoal group` after the default session timeout (3 s); the second prints every
/// record the first had not; after SIGCONT the first goes on and both leave on SIGTERM
/// with exit 0.
#[test]
fn a_sigstopped_shoal_group_process_is_replaced_after_the_default_session_timeout() {
    use cli_support::{line_reader, shoal, KillOnDrop};
    let dir = tempfile::tempdir().unwrap();
    let bus = filled_bus(dir.path());
    let bus_arg = dir.path().to_str().unwrap();
    let start = || {
        let mut child = shoal()
            .args(["group", bus_arg, "g", "--topic", "events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = line_reader(child.stdout.take().unwrap());
        let errors = cli_support::drain(child.stderr.take().unwrap());
        (KillOnDrop(child), lines, errors)
    };
    let record = |line: &str| -> (u32, u64) {
        let mut it = line.split(' ');
        (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
    };
    let (a, a_lines, a_err) = start();
    let mut printed = BTreeSet::new();
    // `a` alone prints the records there are, then is stopped; more are appended.
    while printed.len() < RECORDS as usize {
        printed.insert(record(&cli_support::next_line(&a_lines, "a record from the first member")));
    }
    signal(&a.0, libc::SIGSTOP);
    let stopped_at = Instant::now();
    let mut producer = bus.topic("events").unwrap().producer(log_opts()).unwrap();
    let mut all = printed.clone();
    for i in RECORDS..RECORDS + 500 {
        let (p, offset) = producer.send(i.wrapping_mul(0x9E37_79B9), format!("record {i}").as_bytes()).unwrap();
        all.insert((p, offset.0));
    }
    drop(producer);
    let (b, b_lines, b_err) = start();
    let default_session = GroupOptions::default().session_timeout;
    assert_eq!(default_session, Duration::from_secs(3));
    let mut missing: BTreeSet<(u32, u64)> = all.difference(&printed).copied().collect();
    while !missing.is_empty() {
        // Lines `a` printed before it stopped may still be in its pipe.
        for line in a_lines.try_iter().chain(b_lines.recv_timeout(Duration::from_millis(100))).chain(b_lines.try_iter())
        {
            missing.remove(&record(&line));
        }
        assert!(
            stopped_at.elapsed() < default_session + TAKEOVER_SLACK + Duration::from_secs(5),
            "{} of {} records printed; missing {:?}; the group:\n{}",
            all.len() - missing.len(),
            all.len(),
            missing.iter().take(20).collect::<Vec<_>>(),
            cli_support::text(&cli_support::ok(&["groups", bus_arg], b""))
        );
    }
    assert!(stopped_at.elapsed() >= default_session, "taken over before the session timeout");
    signal(&a.0, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    for (mut m, name) in [(a, "a"), (b, "b")] {
        signal(&m.0, libc::SIGTERM);
        let status = cli_support::wait_until(&mut m.0, Instant::now() + Duration::from_secs(20), name);
        assert!(status.success(), "{name}: {status:?}");
    }
    for (errors, name) in [(a_err, "a"), (b_err, "b")] {
        let errors = cli_support::text(&errors.join().unwrap());
        // A stopped member may have been stopped between printing a batch and committing it:
        // its commit is then refused with a warning, never an error.
        assert!(errors.lines().all(|l| l.starts_with("shoal: warning: partition")), "{name}: {errors}");
    }
}

/// A member that keeps polling, however slowly within the session timeout, keeps its
/// partitions: the heartbeat, not the delivery of records, is what counts.
#[test]
fn a_slow_but_polling_member_keeps_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let bus = filled_bus(dir.path());
    let opts = || GroupOptions::default().session_timeout(Duration::from_millis(600));
    let mut a = Member::join(&bus, "g", "events", opts()).unwrap();
    a.poll(1, Duration::ZERO).unwrap();
    let mut b = Member::join(&bus, "g", "events", opts()).unwrap();
    // Settle: each holds two partitions.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.assigned().len() != 2 || b.assigned().len() != 2 {
        a.poll(1, Duration::from_millis(5)).unwrap();
        b.poll(1, Duration::from_millis(5)).unwrap();
        a.commit().unwrap();
        b.commit().unwrap();
        assert!(Instant::now() < deadline, "never balanced: {:?} {:?}", a.assigned(), b.assigned());
    }
    let held = a.assigned();
    // `a` polls every 200 ms (a third of the timeout) for 2 s; `b` polls all the time.
    let until = Instant::now() + Duration::from_secs(2);
    let mut next_a = Instant::now();
    while Instant::now() < until {
        if Instant::now() >= next_a {
            a.poll(1, Duration::ZERO).unwrap();
            a.commit().unwrap();
            next_a += Duration::from_millis(200);
        }
        b.poll(1, Duration::from_millis(5)).unwrap();
        b.commit().unwrap();
    }
    assert_eq!(a.assigned(), held);
    assert_eq!(a.stats().fenced, 0);
    assert_eq!(b.assigned().len(), 2);
    a.leave().unwrap();
    b.leave().unwrap();
}

/// `owners/0.lock` and `epoch` planted as symlinks to files outside the bus: joining fails
/// with an error naming the link, and the outside files are unchanged.
#[test]
fn symlinked_group_files_are_refused_and_their_targets_untouched() {
    for planted in ["owners/0.lock", "epoch", "members", "owners"] {
        let dir = tempfile::tempdir().unwrap();
        let bus_dir = dir.path().join("bus");
        let bus = Bus::open(&bus_dir).unwrap();
        bus.topic_or_create("events", Some(1)).unwrap();
        let base = bus_dir.join("groups/g/events");
        for sub in ["members", "owners", "offsets"] {
            std::fs::create_dir_all(base.join(sub)).unwrap();
        }
        let outside = dir.path().join("outside");
        let keep = b"outside the bus: keep me".to_vec();
        let link = base.join(planted);
        if planted.contains('.') || planted == "epoch" {
            std::fs::write(&outside, &keep).unwrap();
        } else {
            std::fs::create_dir(&outside).unwrap();
            std::fs::write(outside.join("0.lock"), &keep).unwrap();
            std::fs::remove_dir(&link).unwrap();
        }
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = Member::join(&bus, "g", "events", GroupOptions::default()).unwrap_err().to_string();
        assert!(e.contains(&link.display().to_string()) && e.contains("symbolic link"), "{planted}: {e}");
        if outside.is_file() {
            assert_eq!(std::fs::read(&outside).unwrap(), keep, "{planted}");
        } else {
            let names: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["0.lock"], "{planted}: nothing created outside");
            assert_eq!(std::fs::read(outside.join("0.lock")).unwrap(), keep, "{planted}");
        }
        // describe reads through the same rules.
        if planted != "epoch" {
            let e = shoal::group::describe(&bus).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{planted}: {e}");
        }
    }
}
