//! The `shoal` binary's bus commands against their contract: `produce --topic`,
//! `cat --topic`, `group` and `groups` (and, for a partition planted as a symbolic link or a
//! log given as a bus, `topics` and `top`). Each test runs the real executable.

mod cli_support;
use cli_support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::bus::{key_hash, partition_for_key};

fn bus_dir() -> (tempfile::TempDir, String) {
    let temp = tempfile::tempdir().expect("tempdir");
    let arg = temp.path().join("bus").to_str().expect("UTF-8 temp path").to_string();
    (temp, arg)
}

/// (partition, offset, payload) of every record of a topic, from `cat --format json`.
fn records(bus: &str, topic: &str) -> Vec<(u64, u64, String)> {
    json_lines(&ok(&["cat", bus, "--topic", topic, "--format", "json"], b""))
        .iter()
        .map(|r| {
            let p = r["partition"].as_u64().unwrap_or_else(|| panic!("no partition: {r}"));
            let o =
                r["offset"].as_str().and_then(|o| o.parse::<u64>().ok()).unwrap_or_else(|| panic!("no offset: {r}"));
            (p, o, r["payload"].as_str().unwrap_or_else(|| panic!("no payload: {r}")).to_string())
        })
        .collect()
}

#[test]
fn keyed_lines_go_to_their_key_partition_and_json_names_it() {
    let (_temp, bus) = bus_dir();
    let lines: String = (0..200).map(|i| format!("key-{}\tvalue {i}\n", i % 13)).collect();
    ok(&["produce", &bus, "--topic", "orders", "--partitions", "8", "--keyed"], lines.as_bytes());
    let json = json_lines(&ok(&["cat", &bus, "--topic", "orders", "--format", "json"], b""));
    assert_eq!(json.len(), 200);
    let mut partition_of_key = BTreeMap::new();
    let mut next_offset = BTreeMap::new();
    let mut last_partition = 0;
    for record in &json {
        let p = record["partition"].as_u64().expect("partition");
        // Not following: partition by partition, offsets dense from 0 in each.
        assert!(p >= last_partition, "partition order: {record}");
        last_partition = p;
        let want = next_offset.entry(p).or_insert(0u64);
        assert_eq!(record["offset"], want.to_string(), "{record}");
        *want += 1;
        let payload = record["payload"].as_str().expect("payload");
        let i: usize = payload.strip_prefix("value ").and_then(|n| n.parse().ok()).expect("value <i>");
        let key = format!("key-{}", i % 13);
        let hash = key_hash(key.as_bytes());
        assert_eq!(record["key"], key.as_str(), "the key text is kept: {record}");
        assert_eq!(record["routing_key"], hash.to_string(), "the routing key is the hash of the key bytes: {record}");
        assert_eq!(p, u64::from(partition_for_key(hash, 8)), "{record}");
        assert_eq!(*partition_of_key.entry(key).or_insert(p), p, "one key, one partition");
        assert!(record["timestamp_ns"].as_str().and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t > 0));
    }
    assert!(partition_of_key.values().collect::<BTreeSet<_>>().len() > 1, "keys spread: {partition_of_key:?}");
    // Within a key, order holds (a key lives in one partition).
    for k in 0..13 {
        let values: Vec<usize> = json
            .iter()
            .filter_map(|r| r["payload"].as_str()?.strip_prefix("value ")?.parse().ok())
            .filter(|i| i % 13 == k)
            .collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "key-{k}: {values:?}");
    }
    // A payload may hold more tabs; an empty key is a key.
    ok(&["produce", &bus, "--topic", "orders", "--keyed"], b"\tempty key\nk\ta\tb\n");
    let json = json_lines(&ok(&["cat", &bus, "--topic", "orders", "--format", "json"], b""));
    let find = |payload: &str| json.iter().find(|r| r["payload"] == payload).unwrap_or_else(|| panic!("{payload}"));
    assert_eq!(find("empty key")["routing_key"], key_hash(b"").to_string());
    assert_eq!(find("empty key")["key"], "");
    assert_eq!(find("a\tb")["routing_key"], key_hash(b"k").to_string());
    assert_eq!(find("a\tb")["key"], "k");
}

#[test]
fn unkeyed_lines_go_round_robin_and_offsets_continue_across_runs() {
    let (_temp, bus) = bus_dir();
    ok(&["produce", &bus, "--topic", "events"], b"l0\nl1\nl2\nl3\nl4\nl5\nl6\nl7");
    // Default: 4 partitions, line i in partition i % 4, in order.
    assert_eq!(ok(&["cat", &bus, "--topic", "events", "--partition", "2"], b""), b"l2\nl6\n");
    assert_eq!(ok(&["cat", &bus, "--topic", "events"], b""), b"l0\nl4\nl1\nl5\nl2\nl6\nl3\nl7\n");
    ok(&["produce", &bus, "--topic", "events", "--durability", "never"], b"m0\nm1\nm2\n");
    let all = records(&bus, "events");
    assert_eq!(all.len(), 11);
    let in_2: Vec<_> = all.iter().filter(|r| r.0 == 2).map(|r| (r.1, r.2.as_str())).collect();
    assert_eq!(in_2, vec![(0, "l2"), (1, "l6"), (2, "m2")]);
    // --from applies to the partition, or to each partition.
    assert_eq!(ok(&["cat", &bus, "--topic", "events", "--partition", "2", "--from", "1"], b""), b"l6\nm2\n");
    let from_2: Vec<_> = json_lines(&ok(&["cat", &bus, "--topic", "events", "--from", "2", "--format", "json"], b""))
        .iter()
        .map(|r| {
            (r["partition"].as_u64().expect("p"), r["offset"].as_str().and_then(|o| o.parse::<u64>().ok()).expect("o"))
        })
        .collect();
    assert_eq!(from_2, vec![(0, 2), (1, 2), (2, 2)]);
    // The partition count is fixed at creation.
    let err = fails(&["produce", &bus, "--topic", "events", "--partitions", "8"], b"x\n");
    assert!(err.contains("has 4 partitions, not 8"), "{err}");
    ok(&["produce", &bus, "--topic", "events", "--partitions", "4"], b"");
}

#[test]
fn topic_acks_name_partition_and_durable_watermark() {
    let (_temp, bus) = bus_dir();
    let out = text(&ok(&["produce", &bus, "--topic", "t", "--partitions", "3", "--ack"], b"a\nb\nc\nd\ne\n"));
    let mut last = BTreeMap::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 5, "partition <P> durable below <N>: {line:?}");
        assert_eq!((fields[0], fields[2], fields[3]), ("partition", "durable", "below"), "{line:?}");
        let p: u32 = fields[1].parse().expect("partition");
        let n: u64 = fields[4].parse().expect("offset");
        if let Some(before) = last.insert(p, n) {
            assert!(before < n, "acks of a partition only advance: {out}");
        }
    }
    // Exclusive watermarks: partitions 0 and 1 hold two records each, partition 2 one.
    assert_eq!(last, BTreeMap::from([(0, 2), (1, 2), (2, 1)]), "{out}");
    // Acks arrive while stdin is open.
    let mut child = shoal()
        .args(["produce", &bus, "--topic", "t", "--ack", "--keyed"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn produce");
    let mut input = child.stdin.take().expect("stdin");
    let lines = line_reader(child.stdout.take().expect("stdout"));
    let mut child = KillOnDrop(child);
    writeln!(input, "k\tslow").expect("write");
    input.flush().expect("flush");
    let p = partition_for_key(key_hash(b"k"), 3);
    let want = if p == 2 { 2 } else { 3 };
    assert_eq!(next_line(&lines, "the ack of one line"), format!("partition {p} durable below {want}"));
    drop(input);
    assert!(child.0.wait().expect("wait").success());
}

#[test]
fn cat_follow_of_a_topic_sees_new_records_of_every_partition() {
    let (_temp, bus) = bus_dir();
    ok(&["produce", &bus, "--topic", "live", "--partitions", "3"], b"old\n");
    let mut child = shoal()
        .args(["cat", &bus, "--topic", "live", "--follow", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cat --follow");
    let lines = line_reader(child.stdout.take().expect("stdout"));
    let _child = KillOnDrop(child);
    let first: serde_json::Value = serde_json::from_str(&next_line(&lines, "the old record")).expect("JSON");
    assert_eq!((first["partition"].as_u64(), first["payload"].as_str()), (Some(0), Some("old")));
    ok(&["produce", &bus, "--topic", "live"], b"n0\nn1\nn2\n");
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let r: serde_json::Value = serde_json::from_str(&next_line(&lines, "a new record")).expect("JSON");
        let payload = r["payload"].as_str().expect("payload").to_string();
        seen.insert((
            r["partition"].as_u64().expect("p"),
            r["offset"].as_str().and_then(|o| o.parse::<u64>().ok()).expect("o"),
            payload,
        ));
    }
    let want: BTreeSet<_> =
        [(0, 1, "n0"), (1, 0, "n1"), (2, 0, "n2")].into_iter().map(|(p, o, s)| (p, o, s.to_string())).collect();
    assert_eq!(seen, want);
}

#[test]
fn bad_names_and_bad_input_are_one_line_errors() {
    let (temp, bus) = bus_dir();
    ok(&["produce", &bus, "--topic", "good"], b"x\n");
    for bad in ["../escape", "a/b", ".hidden", "white space"] {
        let err = fails(&["produce", &bus, "--topic", bad], b"x\n");
        assert!(err.contains("invalid topic name"), "{err}");
        let err = fails(&["cat", &bus, "--topic", bad], b"");
        assert!(err.contains("invalid topic name"), "{err}");
    }
    assert!(!temp.path().join("escape").exists());
    let err = fails(&["cat", &bus, "--topic", "missing"], b"");
    assert!(err.contains("no topic \"missing\""), "{err}");
    let err = fails(&["cat", &bus, "--topic", "good", "--partition", "4"], b"");
    assert!(err.contains("partition 4 does not exist"), "{err}");
    let nobus = temp.path().join("nobus");
    let nobus = nobus.to_str().expect("UTF-8");
    let err = fails(&["cat", nobus, "--topic", "good"], b"");
    assert!(err.contains(nobus) && err.contains("no bus"), "{err}");
    assert!(!std::path::Path::new(nobus).exists(), "a read must not create a bus");
    // A keyed line without a tab stops produce; the lines before it are kept.
    let err = fails(&["produce", &bus, "--topic", "keyed", "--keyed"], b"k\tone\nno tab here\nk\tthree\n");
    assert!(err.contains("stdin line 2 has no tab"), "{err}");
    assert_eq!(records(&bus, "keyed").into_iter().map(|r| r.2).collect::<Vec<_>>(), vec!["one"]);
    // Usage errors exit 2.
    for args in [
        vec!["produce", &bus, "--keyed"],
        vec!["produce", &bus, "--partitions", "2"],
        vec!["produce", &bus, "--topic", "t", "--partitions", "0"],
        vec!["cat", &bus, "--partition", "1"],
        vec!["group", &bus, "g"],
        vec!["group", &bus, "--topic", "good"],
        vec!["group", &bus, "g", "--topic", "good", "--exit-when-idle", "soon"],
        vec!["groups"],
    ] {
        let out = run(&args, b"");
        assert_eq!(out.status.code(), Some(2), "shoal {args:?}: {}", text(&out.stderr));
    }
}

/// Sends `signal` to a child.
fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// One row of the partitions table of `shoal groups`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PartitionRow {
    partition: u32,
    owner: Option<String>,
    committed: u64,
    end: u64,
    lag: u64,
}

/// The partitions table of the one group that `shoal groups` reports (panics if the output
/// does not have exactly one group).
fn group_rows(bus: &str) -> (String, Vec<PartitionRow>) {
    let report = text(&ok(&["groups", bus], b""));
    assert_eq!(report.lines().filter(|l| l.starts_with("group ")).count(), 1, "{report}");
    let mut rows = Vec::new();
    let mut in_partitions = false;
    for line in report.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.first() == Some(&"PARTITION") {
            assert_eq!(cells, ["PARTITION", "OWNER", "COMMITTED", "END", "LAG"], "{report}");
            in_partitions = true;
            continue;
        }
        if in_partitions {
            assert_eq!(cells.len(), 5, "a partition row: {line:?}\n{report}");
            let num = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("not a number: {s:?} in {line:?}"));
            rows.push(PartitionRow {
                partition: u32::try_from(num(cells[0])).expect("partition"),
                owner: (cells[1] != "-").then(|| cells[1].to_string()),
                committed: num(cells[2]),
                end: num(cells[3]),
                lag: num(cells[4]),
            });
        }
    }
    (report, rows)
}

/// The pid in a member id `<join ns>-<pid>-<n>`.
fn pid_of_member(id: &str) -> u32 {
    id.split('-').nth(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("member id {id:?}"))
}

/// A `shoal group` process whose stdout lines are collected on a thread.
struct GroupMember {
    name: &'static str,
    child: KillOnDrop,
    /// Complete lines (without their `\n`).
    lines: Arc<Mutex<Vec<String>>>,
    /// While set, the output is not read (the member blocks once its pipe is full).
    paused: Arc<AtomicBool>,
    /// The bytes after the last `\n` when the output ended (a killed member's cut line).
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl GroupMember {
    fn start(name: &'static str, bus: &str, group: &str, topic: &str, extra: &[&str]) -> GroupMember {
        let mut child = shoal()
            .args(["group", bus, group, "--topic", topic])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shoal group");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let paused = Arc::new(AtomicBool::new(false));
        let reader = std::thread::spawn({
            let lines = lines.clone();
            let paused = paused.clone();
            move || {
                let mut stdout = BufReader::new(stdout);
                loop {
                    while paused.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let mut line = Vec::new();
                    match stdout.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return line,
                        Ok(_) if line.last() != Some(&b'\n') => return line,
                        Ok(_) => {
                            line.pop();
                            lines.lock().expect("lines").push(text(&line));
                        }
                    }
                }
            }
        });
        GroupMember { name, child: KillOnDrop(child), lines, paused, reader: Some(reader) }
    }

    fn printed(&self) -> usize {
        self.lines.lock().expect("lines").len()
    }

    /// Waits for the exit (killing it past `deadline`) and for the end of its output;
    /// returns the status and the parsed lines (partition, offset, payload). A last line cut
    /// short (no `\n`) is dropped where `may_be_cut` (a killed member), else it fails.
    fn finish(mut self, deadline: Instant, may_be_cut: bool) -> (std::process::ExitStatus, Vec<(u32, u64, String)>) {
        let status = wait_until(&mut self.child.0, deadline, self.name);
        self.paused.store(false, Ordering::Relaxed);
        let cut = self.reader.take().map(|r| r.join().expect("output reader")).unwrap_or_default();
        assert!(may_be_cut || cut.is_empty(), "{}: output ends in a cut line {:?}", self.name, text(&cut));
        let lines = self.lines.lock().expect("lines").clone();
        let parsed = lines
            .iter()
            .map(|l| {
                let mut it = l.splitn(3, ' ');
                let p = it.next().and_then(|p| p.parse().ok());
                let o = it.next().and_then(|o| o.parse().ok());
                match (p, o, it.next()) {
                    (Some(p), Some(o), Some(payload)) => (p, o, payload.to_string()),
                    _ => panic!("{}: not `<partition> <offset> <payload>`: {l:?}", self.name),
                }
            })
            .collect();
        (status, parsed)
    }
}

/// Waits (polling) until `done()` or `deadline`; panics with `what` at the deadline.
fn wait_for(deadline: Instant, what: &str, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pads the payloads of the group test, so that a member whose output is not read fills its
/// pipe (64 KiB) with a few hundred records.
const PADDING_BYTES: usize = 2000;

/// Issue 4's member test: member processes over a topic of 8 partitions while a producer
/// writes; one joins mid-stream, one is killed with SIGKILL, one leaves with SIGTERM.
#[test]
fn group_members_join_die_and_leave_while_a_producer_writes() {
    const RECORDS: usize = 4000;
    let (_temp, bus) = bus_dir();
    let padding = ".".repeat(PADDING_BYTES);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    ok(&["produce", &bus, "--topic", "stream", "--partitions", "8"], b"");
    let a = GroupMember::start("member A", &bus, "readers", "stream", &[]);
    let b = GroupMember::start("member B", &bus, "readers", "stream", &[]);

    // The producer: numbered keyed lines, steadily, from a thread.
    let mut producer = shoal()
        .args(["produce", &bus, "--topic", "stream", "--keyed", "--durability", "never"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn produce");
    let mut input = producer.stdin.take().expect("stdin");
    let mut producer = KillOnDrop(producer);
    let written = Arc::new(AtomicUsize::new(0));
    let writer = std::thread::spawn({
        let written = written.clone();
        let padding = padding.clone();
        move || -> std::io::Result<()> {
            for chunk in 0..RECORDS / 40 {
                let lines: String = (chunk * 40..chunk * 40 + 40).map(|i| format!("k{i}\tn{i} {padding}\n")).collect();
                input.write_all(lines.as_bytes())?;
                input.flush()?;
                written.store(chunk * 40 + 40, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(25));
            }
            Ok(())
        }
    });
    let written_at_least = |n: usize| {
        let written = &written;
        move || written.load(Ordering::Relaxed) >= n
    };

    wait_for(deadline, "a quarter of the records", written_at_least(RECORDS / 4));
    wait_for(deadline, "member A to print", || a.printed() > 0);
    // From here A's output is not read: its pipe fills and it blocks writing a batch it has
    // not committed, the window that the kill below turns into duplicates.
    a.paused.store(true, Ordering::Relaxed);
    let c = GroupMember::start("member C", &bus, "readers", "stream", &[]);
    wait_for(deadline, "half of the records", written_at_least(RECORDS / 2));

    // Freeze A, read its committed offsets (it still holds its partitions, so nobody
    // commits them meanwhile), then kill it.
    signal(&a.child.0, libc::SIGSTOP);
    let (report, at_kill) = group_rows(&bus);
    let a_pid = a.child.0.id();
    signal(&a.child.0, libc::SIGKILL);
    let a_window: BTreeMap<u32, u64> = at_kill
        .iter()
        .filter(|r| r.owner.as_deref().is_some_and(|o| pid_of_member(o) == a_pid))
        .map(|r| (r.partition, r.committed))
        .collect();
    assert!(!a_window.is_empty(), "member A owned no partition when it was killed:\n{report}");
    let (a_status, a_out) = a.finish(deadline, true);
    assert!(!a_status.success(), "member A was killed: {a_status:?}");

    wait_for(deadline, "three quarters of the records", written_at_least(RECORDS * 3 / 4));
    signal(&b.child.0, libc::SIGTERM);
    let (b_status, b_out) = b.finish(deadline, false);
    assert!(b_status.success(), "member B must leave with exit 0 on SIGTERM: {b_status:?}");

    writer.join().expect("writer").expect("write to the producer");
    let producer_status = wait_until(&mut producer.0, deadline, "the producer");
    assert!(producer_status.success(), "{producer_status:?}");

    // C is the last member: it ends up with every partition; stop it once all is printed.
    let seen_by_c = |c: &GroupMember| {
        let lines = c.lines.lock().expect("lines");
        let mut payloads: BTreeSet<&str> = lines.iter().filter_map(|l| l.splitn(3, ' ').nth(2)).collect();
        payloads.extend(a_out.iter().chain(&b_out).map(|r| r.2.as_str()));
        payloads.len() >= RECORDS
    };
    // On a timeout, go on: the checks below say which records are missing.
    let all_printed = Instant::now() + Duration::from_secs(20);
    while !seen_by_c(&c) && Instant::now() < all_printed {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !seen_by_c(&c) {
        eprintln!("not every record printed after 20 s; the group now:\n{}", group_rows(&bus).0);
    }
    signal(&c.child.0, libc::SIGTERM);
    let (c_status, c_out) = c.finish(deadline, false);
    assert!(c_status.success(), "member C must leave with exit 0 on SIGTERM: {c_status:?}");

    // Graceful leaves committed everything: a new member finds nothing to print.
    let d = GroupMember::start("member D", &bus, "readers", "stream", &["--exit-when-idle", "300"]);
    let (d_status, d_out) = d.finish(deadline, false);
    assert!(d_status.success(), "member D: {d_status:?}");
    assert!(d_out.is_empty(), "after graceful leaves nothing is delivered again: {d_out:?}");
    let (report, at_end) = group_rows(&bus);
    assert!(at_end.iter().all(|r| r.lag == 0 && r.owner.is_none()), "{report}");

    // Every record printed at least once, at the partition its key routes to, each
    // (partition, offset) naming one record.
    let outputs = [("A", &a_out), ("B", &b_out), ("C", &c_out)];
    let mut record_at: BTreeMap<(u32, u64), &str> = BTreeMap::new();
    let mut printers: BTreeMap<(u32, u64), Vec<&str>> = BTreeMap::new();
    for (name, out) in outputs {
        assert!(!out.is_empty(), "member {name} printed nothing");
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (p, o, payload) in out.iter() {
            if let Some(before) = last.insert(*p, *o) {
                assert!(before < *o, "member {name}: partition {p} went from offset {before} to {o}");
            }
            let i: usize = payload
                .strip_prefix('n')
                .and_then(|rest| rest.strip_suffix(padding.as_str()))
                .and_then(|i| i.trim_end().parse().ok())
                .unwrap_or_else(|| panic!("member {name}: not n<i> <padding>: {payload:?}"));
            assert_eq!(*p, partition_for_key(key_hash(format!("k{i}").as_bytes()), 8), "{payload}");
            assert_eq!(*record_at.entry((*p, *o)).or_insert(payload), payload, "({p}, {o}) is one record");
            printers.entry((*p, *o)).or_default().push(name);
        }
    }
    let payloads: BTreeSet<&str> = record_at.values().copied().collect();
    let missing: Vec<usize> = (0..RECORDS).filter(|i| !payloads.contains(format!("n{i} {padding}").as_str())).collect();
    assert!(missing.is_empty(), "never printed: {missing:?}");
    assert_eq!(record_at.len(), RECORDS);

    // Every duplicate lies in A's uncommitted window: printed by A, in a partition A held,
    // at or after its committed offset there when it was killed.
    let mut duplicates = 0;
    for (&(p, o), names) in &printers {
        if names.len() == 1 {
            continue;
        }
        duplicates += 1;
        assert_eq!(names.len(), 2, "({p}, {o}) printed by {names:?}");
        assert!(names.contains(&"A"), "({p}, {o}) printed twice, but not by the killed member: {names:?}");
        let committed = a_window.get(&p).unwrap_or_else(|| panic!("({p}, {o}) duplicated; A did not hold {p}"));
        assert!(o >= *committed, "({p}, {o}) duplicated below A's committed offset {committed}");
    }
    eprintln!(
        "group test: {RECORDS} records, A {} B {} C {} lines, {duplicates} duplicates, {:?}",
        a_out.len(),
        b_out.len(),
        c_out.len(),
        started.elapsed()
    );
}

#[test]
fn groups_reports_lag_as_the_records_not_yet_consumed() {
    let (_temp, bus) = bus_dir();
    let deadline = Instant::now() + Duration::from_secs(40);
    let lines: String = (0..100).map(|i| format!("r{i}\n")).collect();
    ok(&["produce", &bus, "--topic", "work"], lines.as_bytes());
    assert_eq!(text(&ok(&["groups", &bus], b"")), format!("{bus}: no consumer groups\n"));

    // A member whose stdout is closed prints nothing, so it commits nothing, and exits 0.
    let mut closed = shoal()
        .args(["group", &bus, "jobs", "--topic", "work", "--exit-when-idle", "200"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal group");
    drop(closed.stdout.take());
    let stderr = drain(closed.stderr.take().expect("stderr"));
    let mut closed = KillOnDrop(closed);
    let status = wait_until(&mut closed.0, deadline, "a member with a closed stdout");
    assert!(status.success(), "{status:?}: {}", text(&stderr.join().expect("stderr")));
    let (report, rows) = group_rows(&bus);
    assert!(report.starts_with("group jobs, topic work: 0 members, lag 100\n"), "{report}");
    assert_eq!(
        rows.iter().map(|r| (r.partition, r.committed, r.end, r.lag)).collect::<Vec<_>>(),
        [(0, 0, 25, 25), (1, 0, 25, 25), (2, 0, 25, 25), (3, 0, 25, 25)]
    );

    // One member consumes everything and leaves when idle: no lag.
    let first = GroupMember::start("first member", &bus, "jobs", "work", &["--exit-when-idle", "300"]);
    let (status, out) = first.finish(deadline, false);
    assert!(status.success(), "{status:?}");
    assert_eq!(out.len(), 100);
    let (report, rows) = group_rows(&bus);
    assert!(rows.iter().all(|r| r.committed == 25 && r.lag == 0 && r.owner.is_none()), "{report}");

    // More records: the lag of each partition is what `cat --from <committed>` still shows.
    let lines: String = (100..137).map(|i| format!("r{i}\n")).collect();
    ok(&["produce", &bus, "--topic", "work"], lines.as_bytes());
    let (report, rows) = group_rows(&bus);
    assert!(report.starts_with("group jobs, topic work: 0 members, lag 37\n"), "{report}");
    for row in &rows {
        let p = row.partition.to_string();
        let unread =
            ok(&["cat", &bus, "--topic", "work", "--partition", &p, "--from", &row.committed.to_string()], b"");
        assert_eq!(row.lag, text(&unread).lines().count() as u64, "{report}");
        assert_eq!(row.lag, row.end - row.committed, "{report}");
    }

    // A live member shows with its partitions; SIGINT leaves gracefully and commits.
    let live = GroupMember::start("live member", &bus, "jobs", "work", &[]);
    wait_for(deadline, "the live member to print the new records", || live.printed() == 37);
    let (report, rows) = group_rows(&bus);
    let pid = live.child.0.id();
    assert!(report.contains(&format!("shoal group, pid {pid}")), "{report}");
    assert!(rows.iter().all(|r| r.owner.as_deref().is_some_and(|o| pid_of_member(o) == pid)), "{report}");
    signal(&live.child.0, libc::SIGINT);
    let (status, out) = live.finish(deadline, false);
    assert!(status.success(), "SIGINT: {status:?}");
    let printed: BTreeSet<String> = out.iter().map(|r| r.2.clone()).collect();
    assert_eq!(printed, (100..137).map(|i| format!("r{i}")).collect());
    let (report, rows) = group_rows(&bus);
    assert!(rows.iter().all(|r| r.lag == 0), "{report}");
    assert!(report.starts_with("group jobs, topic work: 0 members, lag 0\n"), "{report}");
}

#[test]
fn group_commands_reject_bad_names_and_missing_topics() {
    let (temp, bus) = bus_dir();
    ok(&["produce", &bus, "--topic", "t"], b"x\n");
    for bad in ["../up", "a/b", ".g", ""] {
        let err = fails(&["group", &bus, bad, "--topic", "t", "--exit-when-idle", "10"], b"");
        assert!(err.contains("invalid group name"), "{err}");
        let err = fails(&["group", &bus, "g", "--topic", bad, "--exit-when-idle", "10"], b"");
        assert!(err.contains("invalid topic name"), "{err}");
    }
    assert!(!temp.path().join("up").exists());
    let err = fails(&["group", &bus, "g", "--topic", "none", "--exit-when-idle", "10"], b"");
    assert!(err.contains("no topic \"none\""), "{err}");
    let nobus = temp.path().join("nobus");
    let nobus = nobus.to_str().expect("UTF-8");
    for args in [vec!["group", nobus, "g", "--topic", "t"], vec!["groups", nobus]] {
        let err = fails(&args, b"");
        assert!(err.contains(nobus) && err.contains("no bus"), "{err}");
    }
    assert!(!std::path::Path::new(nobus).exists(), "a member must not create a bus");
}

#[test]
fn a_log_directory_is_never_made_a_bus() {
    let temp = tempfile::tempdir().expect("tempdir");
    let log_path = temp.path().join("log");
    let log = log_path.to_str().expect("UTF-8");
    ok(&["produce", log], b"1\n2\n3\n");
    let err = fails(&["produce", log, "--topic", "t"], b"x\n");
    assert!(err.contains(&format!("{log} holds a log (")) && err.contains("not a bus"), "{err}");
    assert!(!log_path.join("topics").exists() && !log_path.join("groups").exists(), "a bus was made over the log");
    let err = fails(&["topics", "create", log, "t"], b"");
    assert!(err.contains("holds a log"), "{err}");
    // The library refuses it too, whether it would create the bus or only read it.
    for e in [shoal::bus::Bus::open(&log_path).unwrap_err(), shoal::bus::Bus::open_existing(&log_path).unwrap_err()] {
        assert!(matches!(e, shoal::bus::BusError::LogDirectory { bus_too: false, .. }), "{e}");
    }
    // A log with only its HEAD left is still a log.
    let head_only = temp.path().join("head-only");
    std::fs::create_dir(&head_only).expect("mkdir");
    std::fs::copy(log_path.join("HEAD"), head_only.join("HEAD")).expect("copy HEAD");
    assert!(matches!(shoal::bus::Bus::open(&head_only), Err(shoal::bus::BusError::LogDirectory { .. })));
    // The log is as it was, for every log command.
    assert_eq!(text(&ok(&["cat", log], b"")), "1\n2\n3\n");
    ok(&["produce", log], b"4\n");
    ok(&["verify", log], b"");

    // The commands that read a bus call it a log, not a missing bus.
    for args in [
        vec!["cat", log, "--topic", "t"],
        vec!["group", log, "g", "--topic", "t", "--exit-when-idle", "10"],
        vec!["groups", log],
        vec!["groups", log, "g"],
        vec!["topics", log],
        vec!["top", log, "--once"],
    ] {
        let err = fails(&args, b"");
        assert!(
            err.contains(&format!("{log} holds a log ("))
                && err.contains("read it as a log")
                && !err.contains("no bus"),
            "{args:?}: {err}"
        );
    }

    // A bus made over a log (by an older shoal): the bus commands say what happened.
    std::fs::create_dir_all(log_path.join("topics/t/0")).expect("mkdir");
    std::fs::create_dir_all(log_path.join("groups")).expect("mkdir");
    for args in [
        vec!["cat", log, "--topic", "t"],
        vec!["group", log, "g", "--topic", "t", "--exit-when-idle", "10"],
        vec!["groups", log],
        vec!["topics", log],
        vec!["produce", log, "--topic", "t"],
    ] {
        let err = fails(&args, b"x\n");
        assert!(err.contains(&format!("{log} holds a log (")) && err.contains("remove them"), "{args:?}: {err}");
    }
}

#[test]
fn a_topic_whose_meta_was_removed_is_not_made_again() {
    let (temp, bus) = bus_dir();
    ok(&["produce", &bus, "--topic", "t", "--partitions", "2"], b"a\nb\nc\n");
    let meta = temp.path().join("bus/topics/t/meta");
    std::fs::remove_file(&meta).expect("remove meta");
    for args in [vec!["produce", &bus, "--topic", "t"], vec!["cat", &bus, "--topic", "t"], vec!["topics", &bus]] {
        let err = fails(&args, b"x\n");
        assert!(
            err.contains(meta.to_str().expect("UTF-8"))
                && err.contains("topic meta is missing, yet the topic directory holds 2 partition directories")
                && err.contains("restore it or remove the topic directory"),
            "{args:?}: {err}"
        );
    }
    assert!(!meta.exists(), "no meta was made with a default partition count");
    let bus_handle = shoal::bus::Bus::open(temp.path().join("bus")).expect("bus");
    for e in [bus_handle.topic_or_create("t", None).unwrap_err(), bus_handle.topic("t").unwrap_err()] {
        assert!(
            matches!(&e, shoal::bus::BusError::BadMeta { why: shoal::bus::MetaError::Missing { partitions: 2 }, .. }),
            "{e}"
        );
    }
    // A topic directory with no partition yet (a creator that stopped before writing meta)
    // is still made.
    std::fs::create_dir_all(temp.path().join("bus/topics/fresh")).expect("mkdir");
    ok(&["produce", &bus, "--topic", "fresh", "--partitions", "3"], b"x\n");
    assert_eq!(bus_handle.topic("fresh").expect("topic").partitions(), 3);
}

#[test]
fn a_group_member_prints_and_commits_every_record_before_damage_then_fails_naming_it() {
    let (temp, bus) = bus_dir();
    let lines: String = (0..300).map(|i| format!("record {i:04}\n")).collect();
    ok(&["produce", &bus, "--topic", "t", "--partitions", "1", "--ack"], lines.as_bytes());
    let segment = temp.path().join("bus/topics/t/0/00000000000000000000.seg");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    let index_entries = u32::from_le_bytes(bytes[40..44].try_into().expect("4 bytes"));
    // Every record has an 11-byte payload: one stride apart.
    let stride = shoal::log::format::record_stride(11);
    let position = shoal::log::format::data_start(index_entries) + 200 * stride;
    bytes[position + shoal::log::format::RECORD_HEADER_BYTES + 3] ^= 0x40;
    std::fs::write(&segment, &bytes).expect("damage");
    let cat = run(&["cat", &bus, "--topic", "t"], b"");
    assert_eq!((cat.status.code(), text(&cat.stdout).lines().count()), (Some(1), 200));

    let out = run(&["group", &bus, "g", "--topic", "t", "--exit-when-idle", "200"], b"");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let printed = text(&out.stdout);
    let want: String = (0..200).map(|i| format!("0 {i} record {i:04}\n")).collect();
    assert_eq!(printed, want);
    assert!(
        err.contains(segment.to_str().expect("UTF-8"))
            && err.contains(&format!("corruption at byte {position} (offset 200)")),
        "{err}"
    );
    let (report, rows) = group_rows(&bus);
    assert_eq!((rows[0].committed, rows[0].end), (200, 300), "{report}");
    // Run again: nothing before the damage is printed twice; the same error.
    let again = run(&["group", &bus, "g", "--topic", "t", "--exit-when-idle", "200"], b"");
    assert_eq!((again.status.code(), again.stdout.len()), (Some(1), 0), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("(offset 200)"), "{}", text(&again.stderr));
}

#[test]
fn a_zero_filled_offsets_file_is_an_error_naming_it() {
    let (temp, bus) = bus_dir();
    let lines: String = (1..=40).map(|i| format!("{i}\n")).collect();
    ok(&["produce", &bus, "--topic", "t", "--partitions", "2"], lines.as_bytes());
    ok(&["group", &bus, "g", "--topic", "t", "--exit-when-idle", "200"], b"");
    let lines: String = (41..=60).map(|i| format!("{i}\n")).collect();
    ok(&["produce", &bus, "--topic", "t"], lines.as_bytes());
    let file = temp.path().join("bus/groups/g/t/offsets/0");
    std::fs::write(&file, [0u8; 128]).expect("zero the offsets file");
    for args in [
        vec!["groups", &bus, "g"],
        vec!["group", &bus, "g", "--topic", "t", "--from", "latest", "--exit-when-idle", "200"],
    ] {
        let err = fails(&args, b"");
        assert!(
            err.contains(file.to_str().expect("UTF-8")) && err.contains("no commit in either slot"),
            "{args:?}: {err}"
        );
    }
}

/// Every read of a partition refuses a partition directory that is a symbolic link, as
/// `produce` and `cat` do: in the library (members, `describe`, snapshots) and so in every
/// command (`group`, `groups` and its END column, `topics`, `top`).
#[test]
fn reads_of_a_bus_refuse_a_partition_that_is_a_symbolic_link() {
    let temp = tempfile::tempdir().expect("tempdir");
    let bus_path = temp.path().join("bus");
    let bus = bus_path.to_str().expect("UTF-8");
    ok(&["produce", bus, "--topic", "t", "--partitions", "2"], b"a\nb\nc\nd\n");
    ok(&["group", bus, "g", "--topic", "t", "--exit-when-idle", "50"], b"");
    let outside = temp.path().join("outside");
    ok(&["produce", outside.to_str().expect("UTF-8")], b"planted 1\nplanted 2\nplanted 3\n");
    let before = std::fs::read_dir(&outside).expect("list").count();
    let partition = bus_path.join("topics").join("t").join("1");
    std::fs::remove_dir_all(&partition).expect("remove partition 1");
    std::os::unix::fs::symlink(&outside, &partition).expect("plant the link");
    let shown = partition.display().to_string();
    let refused = |err: &str| err.contains(&shown) && err.contains("is a symbolic link; shoal never follows links");

    for args in [
        &["group", bus, "g2", "--topic", "t", "--exit-when-idle", "50"][..],
        &["group", bus, "g", "--topic", "t", "--exit-when-idle", "50"],
        &["groups", bus],
        &["groups", bus, "g"],
        &["groups", bus, "g", "--reset-offsets", "--to", "earliest"],
        &["topics", bus],
        &["top", bus, "--once"],
    ] {
        let out = run(args, b"");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(refused(&err), "{args:?}: {err}");
        assert!(!text(&out.stdout).contains("planted"), "{args:?} read through the link: {}", text(&out.stdout));
    }

    let handle = shoal::bus::Bus::open_existing(&bus_path).expect("bus");
    let topic = handle.topic("t").expect("topic");
    assert!(topic.partition_dir(0).is_ok(), "a partition that is a directory is fine");
    let err = topic.partition_dir(1).expect_err("a symlinked partition").to_string();
    assert!(refused(&err), "{err}");
    let err = shoal::group::Member::join(&handle, "g3", "t", shoal::group::GroupOptions::default())
        .expect_err("a member of a topic with a symlinked partition")
        .to_string();
    assert!(refused(&err), "{err}");
    let err = shoal::group::describe(&handle).expect_err("describe").to_string();
    assert!(refused(&err), "{err}");
    let err = shoal::metrics::BusSnapshot::take(&handle).expect_err("a snapshot").to_string();
    assert!(refused(&err), "{err}");
    assert_eq!(std::fs::read_dir(&outside).expect("list").count(), before, "nothing written through the link");
    assert_eq!(text(&ok(&["cat", outside.to_str().expect("UTF-8")], b"")), "planted 1\nplanted 2\nplanted 3\n");
}

#[test]
fn groups_help_names_every_reset_target() {
    let help = text(&ok(&["groups", "--help"], b""));
    assert!(help.contains("--reset-offsets --to earliest|latest|OFFSET|TIME"), "{help}");
    assert!(help.contains("TIME each partition's first record appended at or after that time"), "{help}");
}
