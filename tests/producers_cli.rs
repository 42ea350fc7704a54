//! Two `shoal produce` at once on one plain log and on one topic: both succeed, their
//! `--ack` lines are right, and `shoal cat` shows every line once.
//!
//! The two processes are started together and fed their stdin in interleaved chunks, so
//! both have the log open and append while the other does. `--ack` lines are checked against
//! the log read back: in each process they only go up, none is past the records that exist
//! (a watermark is exclusive), and the last covers every record that process appended (the durable watermark is shared, so
//! an ack may also cover the other's records, never less than its own).

mod cli_support;
use cli_support::*;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// Lines each producer writes.
const LINES: usize = 4_000;
/// Lines per chunk written to a producer's stdin before the other producer's turn.
const CHUNK_LINES: usize = 250;

/// Line `i` of producer `k`.
fn line(k: usize, i: usize) -> String {
    format!("p{k}-{i:05}-{}", "x".repeat(i % 37))
}

/// Runs `shoal <args_k>` for both `k` at once, feeding each its lines in interleaved chunks.
fn run_two(args: [Vec<String>; 2]) -> [Output; 2] {
    let mut children: Vec<KillOnDrop> = args
        .iter()
        .map(|a| {
            KillOnDrop(
                shoal()
                    .args(a)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn shoal produce"),
            )
        })
        .collect();
    let mut stdins: Vec<_> = children.iter_mut().map(|c| Some(c.0.stdin.take().expect("stdin"))).collect();
    let outs: Vec<_> = children.iter_mut().map(|c| drain(c.0.stdout.take().expect("stdout"))).collect();
    let errs: Vec<_> = children.iter_mut().map(|c| drain(c.0.stderr.take().expect("stderr"))).collect();
    for from in (0..LINES).step_by(CHUNK_LINES) {
        for (k, stdin) in stdins.iter_mut().enumerate() {
            let chunk: String = (from..(from + CHUNK_LINES).min(LINES)).map(|i| line(k, i) + "\n").collect();
            stdin.as_mut().expect("stdin open").write_all(chunk.as_bytes()).expect("write a producer's stdin");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // End of input: each producer syncs, prints its last ack and exits.
    stdins.iter_mut().for_each(|s| drop(s.take()));
    let deadline = Instant::now() + RUN_WAIT;
    let statuses: Vec<_> = children.iter_mut().map(|c| wait_until(&mut c.0, deadline, "shoal produce")).collect();
    let mut outputs = statuses.into_iter().zip(outs.into_iter().zip(errs)).map(|(status, (out, err))| Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    });
    let first = outputs.next().expect("two outputs");
    let second = outputs.next().expect("two outputs");
    [first, second]
}

/// Checks one process's acks (exclusive watermarks) of one log (or partition): strictly
/// increasing, none past `records`, the last past `own_last` (the offset of its last record
/// there).
fn check_acks(acks: &[u64], records: u64, own_last: Option<u64>, what: &str) {
    assert!(acks.windows(2).all(|w| w[0] < w[1]), "{what}: acks do not go up: {acks:?}");
    if let Some(&last) = acks.last() {
        assert!(last <= records, "{what}: ack {last}, but the log holds {records} records");
    }
    if let Some(own) = own_last {
        let last = acks.last().copied();
        assert!(
            last.is_some_and(|a| a > own),
            "{what}: its last record is at offset {own}, its last ack is {last:?}: not acknowledged durable"
        );
    }
}

/// The producer (0 or 1) and line number of a line both producers could have written.
fn owner(payload: &str) -> (usize, usize) {
    let rest = payload.strip_prefix('p').unwrap_or_else(|| panic!("a line no producer wrote: {payload:?}"));
    let (k, rest) = rest.split_once('-').unwrap_or_else(|| panic!("a line no producer wrote: {payload:?}"));
    let (i, _) = rest.split_once('-').unwrap_or_else(|| panic!("a line no producer wrote: {payload:?}"));
    let (k, i): (usize, usize) = (k.parse().expect("producer"), i.parse().expect("line number"));
    assert_eq!(payload, line(k, i), "a line changed");
    (k, i)
}

/// Checks that the records (offset order) hold every line of both producers once, each
/// producer's in its order; returns each producer's offset of its last record.
fn check_lines(records: &[(u64, String)], what: &str) -> [Option<u64>; 2] {
    let mut next = [0usize; 2];
    let mut last = [None; 2];
    for (offset, payload) in records {
        let (k, i) = owner(payload);
        assert_eq!(i, next[k], "{what}: offset {offset} holds line {i} of producer {k}, expected its line {}", next[k]);
        next[k] += 1;
        last[k] = Some(*offset);
    }
    last
}

fn assert_succeeded(outputs: &[Output; 2], what: &str) {
    for (k, out) in outputs.iter().enumerate() {
        assert!(out.status.success(), "{what}: producer {k} failed ({:?}): {}", out.status, text(&out.stderr));
    }
}

/// Two `shoal produce <LOGDIR> --ack` at once.
#[test]
fn two_log_producers_at_once() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("log");
    let dir = dir.to_str().expect("UTF-8 path").to_string();
    let args = |_: usize| vec!["produce".to_string(), dir.clone(), "--ack".to_string()];
    let outputs = run_two([args(0), args(1)]);
    assert_succeeded(&outputs, "plain log");

    let records: Vec<(u64, String)> = json_lines(&ok(&["cat", &dir, "--format", "json"], b""))
        .iter()
        .map(|r| {
            let o =
                r["offset"].as_str().and_then(|o| o.parse::<u64>().ok()).unwrap_or_else(|| panic!("no offset: {r}"));
            (o, r["payload"].as_str().unwrap_or_else(|| panic!("no payload: {r}")).to_string())
        })
        .collect();
    assert_eq!(records.len(), 2 * LINES, "records in the log");
    assert!(records.iter().enumerate().all(|(i, (o, _))| *o == i as u64), "offsets are not dense");
    let last = check_lines(&records, "plain log");
    let plain: Vec<String> = text(&ok(&["cat", &dir], b"")).lines().map(str::to_string).collect();
    assert_eq!(plain, records.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(), "cat lines and cat json differ");

    for (k, out) in outputs.iter().enumerate() {
        let acks: Vec<u64> = text(&out.stdout)
            .lines()
            .map(|l| {
                l.strip_prefix("durable below ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("producer {k} printed {l:?}, not `durable below <N>`"))
            })
            .collect();
        check_acks(&acks, records.len() as u64, last[k], &format!("producer {k}"));
    }
}

/// Runs two `shoal produce <BUS> --topic t --ack` at once and checks them.
fn two_topic_producers(bus: &str) {
    let args =
        |_: usize| ["produce", bus, "--topic", "t", "--ack"].iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let outputs = run_two([args(0), args(1)]);
    assert_succeeded(&outputs, "topic");

    let mut partitions: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for r in json_lines(&ok(&["cat", bus, "--topic", "t", "--format", "json"], b"")) {
        let p = r["partition"].as_u64().unwrap_or_else(|| panic!("no partition: {r}"));
        let o = r["offset"].as_str().and_then(|o| o.parse::<u64>().ok()).unwrap_or_else(|| panic!("no offset: {r}"));
        let payload = r["payload"].as_str().unwrap_or_else(|| panic!("no payload: {r}")).to_string();
        partitions.entry(p).or_default().push((o, payload));
    }
    let total: usize = partitions.values().map(Vec::len).sum();
    assert_eq!(total, 2 * LINES, "records in the topic");
    // Every line once: the lines of each producer over all partitions are 0..LINES.
    let mut seen = [vec![false; LINES], vec![false; LINES]];
    let mut last: BTreeMap<u64, [Option<u64>; 2]> = BTreeMap::new();
    for (&p, records) in &partitions {
        let what = format!("partition {p}");
        assert!(records.iter().enumerate().all(|(i, (o, _))| *o == i as u64), "{what}: offsets are not dense");
        let mut own_last = [None; 2];
        let mut prev = [None::<usize>; 2];
        for (offset, payload) in records {
            let (k, i) = owner(payload);
            assert!(!seen[k][i], "line {i} of producer {k} appears twice");
            seen[k][i] = true;
            assert!(prev[k].is_none_or(|j| j < i), "{what}: producer {k}'s lines out of order at offset {offset}");
            prev[k] = Some(i);
            own_last[k] = Some(*offset);
        }
        last.insert(p, own_last);
    }
    assert!(seen.iter().flatten().all(|&s| s), "lines missing from the topic");

    for (k, out) in outputs.iter().enumerate() {
        let mut acks: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for l in text(&out.stdout).lines() {
            let parsed = l.strip_prefix("partition ").and_then(|rest| {
                let (p, n) = rest.split_once(" durable below ")?;
                Some((p.parse().ok()?, n.parse().ok()?))
            });
            let (p, n) =
                parsed.unwrap_or_else(|| panic!("producer {k} printed {l:?}, not `partition <P> durable below <N>`"));
            acks.entry(p).or_default().push(n);
        }
        for (&p, records) in &partitions {
            let own = last[&p][k];
            let got = acks.get(&p).map_or(&[][..], |v| &v[..]);
            check_acks(got, records.len() as u64, own, &format!("producer {k}, partition {p}"));
        }
        assert!(
            acks.keys().all(|p| partitions.contains_key(p)),
            "producer {k} acked partitions {:?}, records are in {:?}",
            acks.keys().collect::<Vec<_>>(),
            partitions.keys().collect::<Vec<_>>()
        );
    }
}

/// Two `shoal produce <BUS> --topic t --ack` at once on a topic that exists.
#[test]
fn two_topic_producers_at_once() {
    let temp = tempfile::tempdir().expect("temp dir");
    let bus = temp.path().join("bus").to_str().expect("UTF-8 path").to_string();
    ok(&["produce", &bus, "--topic", "t", "--partitions", "4"], b"");
    two_topic_producers(&bus);
}

/// Two `shoal produce <BUS> --topic t --ack` at once on a fresh bus: both create the topic.
#[test]
fn two_topic_producers_create_the_topic_at_once() {
    let temp = tempfile::tempdir().expect("temp dir");
    let bus = temp.path().join("bus").to_str().expect("UTF-8 path").to_string();
    two_topic_producers(&bus);
}
