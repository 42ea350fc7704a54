//! `shoal top` against its contract, running the real executable: `--once` prints every topic
//! and partition with its records and offsets, and every group with its owners, committed
//! offsets and lag; a path that holds no bus is an error.

use std::process::{Command, Output};
use std::time::Duration;

use shoal::bus::Bus;
use shoal::group::{GroupOptions, Member};
use shoal::log::LogOptions;

fn shoal_top(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal")).arg("top").args(args).output().expect("run shoal top")
}

/// The whitespace-separated cells of each line of `text` whose first cells are `first`.
fn rows<'a>(text: &'a str, first: &[&str]) -> Vec<Vec<&'a str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.len() >= first.len() && cells[..first.len()] == *first)
        .collect()
}

#[test]
fn once_shows_topics_partitions_groups_and_lag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create("orders", Some(3)).expect("topic");
    let mut producer = topic.producer(LogOptions::default()).expect("producer");
    // Partition 0: 5 records, 1: 3, 2: none.
    for i in 0..8u32 {
        producer.send_to(if i < 5 { 0 } else { 1 }, 0, b"order").expect("send");
    }
    producer.sync().expect("sync");
    let opts = GroupOptions::default().label("top test");
    let mut member = Member::join(&bus, "billing", "orders", opts).expect("join");
    let mut read = 0;
    for _ in 0..200 {
        read += member.poll(2, Duration::from_millis(20)).expect("poll").len();
        if read >= 4 {
            break;
        }
    }
    member.commit().expect("commit");
    let bus_path = dir.path().to_str().expect("utf-8 temp path");

    let out = shoal_top(&[bus_path, "--once"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains('\x1b'), "--once uses no screen control:\n{stdout}");
    assert!(stdout.contains("TOPIC") && stdout.contains("GROUP"), "{stdout}");

    // TOPIC PARTITION RECORDS BYTES(2 cells) FIRST LAST DURABLE PRODUCERS APPEND/S
    // (the producer above is still open: one appender per partition)
    let topics = rows(&stdout, &["orders"]);
    let cells = |p: &str| {
        topics.iter().find(|r| r[1] == p).unwrap_or_else(|| panic!("no row for partition {p}:\n{stdout}")).clone()
    };
    assert_eq!(cells("0")[2], "5");
    assert_eq!(cells("0")[5..], ["0", "4", "5", "1", "-"], "{stdout}");
    assert_eq!(cells("1")[2], "3");
    assert_eq!(cells("1")[5..], ["0", "2", "3", "1", "-"], "{stdout}");
    assert_eq!(cells("2")[2], "0");
    assert_eq!(cells("*")[2], "8");

    // GROUP TOPIC MEMBERS PARTITION OWNER COMMITTED END LAG COMMIT/S
    let groups = rows(&stdout, &["billing", "orders"]);
    assert_eq!(groups.len(), 4, "three partitions and a total:\n{stdout}");
    let mut lag = 0;
    for g in groups.iter().filter(|g| g[3] != "*") {
        assert_eq!(g[2], "1", "one member:\n{stdout}");
        assert_eq!(g[4], member.id(), "the member owns every partition:\n{stdout}");
        let committed: u64 = g[5].parse().expect("committed");
        let end: u64 = g[6].parse().expect("end");
        let row_lag: u64 = g[7].parse().expect("lag");
        assert_eq!(row_lag, end - committed, "{stdout}");
        lag += row_lag;
    }
    assert_eq!(lag, 8 - read as u64, "{stdout}");
    let total = groups.iter().find(|g| g[3] == "*").expect("total row");
    assert_eq!(total[4], lag.to_string(), "{stdout}");

    member.leave().expect("leave");
    let out = shoal_top(&[bus_path, "--once"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let groups = rows(&stdout, &["billing", "orders"]);
    assert!(groups.iter().all(|g| g[2] == "0"), "no members after the leave:\n{stdout}");
    assert!(groups.iter().filter(|g| g[3] != "*").all(|g| g[4] == "-"), "no owners:\n{stdout}");
}

#[test]
fn live_view_refreshes_with_rates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create("events", Some(1)).expect("topic");
    let mut producer = topic.producer(LogOptions::default()).expect("producer");
    producer.send_to(0, 0, b"e").expect("send");
    producer.sync().expect("sync");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["top", dir.path().to_str().expect("utf-8 temp path"), "--interval", "100"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn shoal top");
    std::thread::sleep(Duration::from_millis(450));
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait for shoal top");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Into a pipe: plain snapshots, each after a blank line, no screen control.
    assert!(!stdout.contains('\x1b'), "{stdout}");
    let frames = stdout.matches("shoal top ").count();
    assert!(frames >= 2, "{frames} frames:\n{stdout}");
    // From the second frame on, rates are numbers.
    let last = stdout.rsplit("\n\nshoal top ").next().unwrap_or_default();
    let row = rows(last, &["events", "0"]).pop().unwrap_or_else(|| panic!("no partition row:\n{last}"));
    assert_eq!(row.last().copied(), Some("0.0"), "{last}");
}

#[test]
fn a_path_without_a_bus_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = shoal_top(&[dir.path().to_str().expect("utf-8 temp path"), "--once"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no bus here"), "{stderr}");
    assert!(!dir.path().join("topics").exists(), "top never creates a bus");
}
