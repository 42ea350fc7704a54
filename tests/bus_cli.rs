//! The `shoal` binary's bus commands against their contract: `produce --topic`,
//! `cat --topic`, `group` and `groups`. Each test runs the real executable.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use shoal::bus::{key_hash, partition_for_key};

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

/// How long one command may run before the test kills it and fails.
const RUN_WAIT: Duration = Duration::from_secs(60);
/// How long a test waits for one line from a running child before failing.
const LINE_WAIT: Duration = Duration::from_secs(20);

/// Waits for `child` until `deadline`; kills it and panics past it, so a hang fails the test.
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait for shoal") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran at its deadline; killed it");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads a child's pipe to the end on a thread.
fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs `shoal args...` with `stdin` as its input and waits for it (at most [`RUN_WAIT`]).
fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = shoal()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // A command may exit without reading its input: a broken pipe is no failure of the test.
    let writer = std::thread::spawn(move || match input.write_all(&stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    });
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let status = wait_until(&mut child, Instant::now() + RUN_WAIT, &format!("shoal {args:?}"));
    writer.join().expect("stdin writer").expect("write stdin");
    Output { status, stdout: stdout.join().expect("stdout"), stderr: stderr.join().expect("stderr") }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = run(args, stdin);
    assert!(out.status.success(), "shoal {args:?} failed: {:?}\n{}", out.status, text(&out.stderr));
    out.stdout
}

/// Runs a command that must fail at runtime: exit 1 and one line on stderr; returns it.
fn fails(args: &[&str], stdin: &[u8]) -> String {
    let out = run(args, stdin);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "shoal {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "shoal {args:?}: one line: {err}");
    assert!(err.starts_with("shoal: "), "{err}");
    err
}

fn bus_dir() -> (tempfile::TempDir, String) {
    let temp = tempfile::tempdir().expect("tempdir");
    let arg = temp.path().join("bus").to_str().expect("UTF-8 temp path").to_string();
    (temp, arg)
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    text(stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

/// Lines of a child's stdout, read on a thread so that a test can wait with a timeout.
fn line_reader(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(lines: &Receiver<String>, what: &str) -> String {
    lines.recv_timeout(LINE_WAIT).unwrap_or_else(|e| panic!("no line for {what} within {LINE_WAIT:?}: {e}"))
}

/// Kills a child (and reaps it) when the test ends, even by a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (partition, offset, payload) of every record of a topic, from `cat --format json`.
fn records(bus: &str, topic: &str) -> Vec<(u64, u64, String)> {
    json_lines(&ok(&["cat", bus, "--topic", topic, "--format", "json"], b""))
        .iter()
        .map(|r| {
            let p = r["partition"].as_u64().unwrap_or_else(|| panic!("no partition: {r}"));
            let o = r["offset"].as_u64().unwrap_or_else(|| panic!("no offset: {r}"));
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
        assert_eq!(record["offset"], *want, "{record}");
        *want += 1;
        let payload = record["payload"].as_str().expect("payload");
        let i: usize = payload.strip_prefix("value ").and_then(|n| n.parse().ok()).expect("value <i>");
        let key = format!("key-{}", i % 13);
        let hash = key_hash(key.as_bytes());
        assert_eq!(record["key"], hash, "the record's key is the hash of the key bytes: {record}");
        assert_eq!(p, u64::from(partition_for_key(hash, 8)), "{record}");
        assert_eq!(*partition_of_key.entry(key).or_insert(p), p, "one key, one partition");
        assert!(record["timestamp_ns"].as_u64().is_some_and(|t| t > 0));
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
    assert_eq!(find("empty key")["key"], key_hash(b""));
    assert_eq!(find("a\tb")["key"], key_hash(b"k"));
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
        .map(|r| (r["partition"].as_u64().expect("p"), r["offset"].as_u64().expect("o")))
        .collect();
    assert_eq!(from_2, vec![(0, 2), (1, 2), (2, 2)]);
    // The partition count is fixed at creation.
    let err = fails(&["produce", &bus, "--topic", "events", "--partitions", "8"], b"x\n");
    assert!(err.contains("has 4 partitions, not 8"), "{err}");
    ok(&["produce", &bus, "--topic", "events", "--partitions", "4"], b"");
}

#[test]
fn topic_acks_name_partition_and_last_durable_offset() {
    let (_temp, bus) = bus_dir();
    let out = text(&ok(&["produce", &bus, "--topic", "t", "--partitions", "3", "--ack"], b"a\nb\nc\nd\ne\n"));
    let mut last = BTreeMap::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "durable <partition> <N>: {line:?}");
        assert_eq!(fields[0], "durable", "{line:?}");
        let p: u32 = fields[1].parse().expect("partition");
        let n: u64 = fields[2].parse().expect("offset");
        if let Some(before) = last.insert(p, n) {
            assert!(before < n, "acks of a partition only advance: {out}");
        }
    }
    assert_eq!(last, BTreeMap::from([(0, 1), (1, 1), (2, 0)]), "{out}");
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
    let want = if p == 2 { 1 } else { 2 };
    assert_eq!(next_line(&lines, "the ack of one line"), format!("durable {p} {want}"));
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
        seen.insert((r["partition"].as_u64().expect("p"), r["offset"].as_u64().expect("o"), payload));
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
