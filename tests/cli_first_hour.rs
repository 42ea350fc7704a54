//! What a newcomer meets in a first hour with the `shoal` binary, against its contract:
//! log commands given a bus or a topic directory, and read commands given a directory
//! without a log, fail with one line saying what they expected and create nothing; every
//! printed watermark is exclusive (`durable below <N>`, `next offset`); the library's
//! warnings reach stderr through the binary's tracing subscriber, filtered by `SHOAL_LOG`
//! or `RUST_LOG`; `top` into a pipe writes no escape bytes; `topics` lists and creates
//! topics; `cat --from earliest|latest|<offset>`; `--segment-size 1M` on its own.

mod cli_support;
mod common;

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::*;
use common::{record_positions, segment_files};
use shoal::bus::Bus;
use shoal::log::{format, Appender, Durability, LogOptions};

/// Every path under `dir` (recursively), sorted, with each file's length: what a command
/// that must create nothing must leave as it was.
fn tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("list dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                todo.push(entry.path());
            }
            out.push((entry.path(), if meta.is_dir() { 0 } else { meta.len() }));
        }
    }
    out.sort();
    out
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A bus with topic `t` of 2 partitions holding two records.
fn bus_with_topic() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    ok(&["produce", path(dir.path()), "--topic", "t", "--partitions", "2"], b"a\nb\n");
    dir
}

#[test]
fn produce_without_topic_on_a_bus_or_topic_directory_fails_and_creates_nothing() {
    let bus = bus_with_topic();
    let before = tree(bus.path());
    let err = fails(&["produce", path(bus.path())], b"x\n");
    assert!(err.contains("is a bus directory") && err.contains("--topic <T>"), "{err}");
    assert_eq!(tree(bus.path()), before, "produce on a bus created or changed files");

    let topic_dir = bus.path().join("topics").join("t");
    let err = fails(&["produce", path(&topic_dir)], b"x\n");
    let want = format!("use `shoal produce {} --topic t`", bus.path().display());
    assert!(err.contains("is the directory of topic t") && err.contains(&want), "{err}");
    assert_eq!(tree(bus.path()), before, "produce on a topic directory created or changed files");
    // The records are where they were.
    let out = text(&ok(&["cat", path(bus.path()), "--topic", "t"], b""));
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn read_commands_on_a_bus_or_topic_directory_name_what_they_expected() {
    let bus = bus_with_topic();
    let before = tree(bus.path());
    let topic_dir = bus.path().join("topics").join("t");
    for command in ["cat", "stats", "verify"] {
        let err = fails(&[command, path(bus.path())], b"");
        assert!(err.contains("is a bus directory, not a log"), "{command}: {err}");
        assert!(err.contains(&format!("shoal topics {}", bus.path().display())), "{command}: {err}");
        if command == "cat" {
            assert!(err.contains("--topic <T>"), "{err}");
        } else {
            assert!(err.contains("the log of one partition") && err.contains("topics/<T>/<P>"), "{err}");
        }
        let err = fails(&[command, path(&topic_dir)], b"");
        assert!(err.contains("is the directory of topic t, not a log"), "{command}: {err}");
        if command == "cat" {
            assert!(err.contains(&format!("shoal cat {} --topic t", bus.path().display())), "{err}");
        } else {
            assert!(err.contains(&format!("{}/<P>", topic_dir.display())), "{command}: {err}");
        }
    }
    assert_eq!(tree(bus.path()), before, "a read command created or changed files");
    // One partition's directory is a log: stats reads it.
    let stats = text(&ok(&["stats", path(&topic_dir.join("0"))], b""));
    assert!(stats.contains("records"), "{stats}");
}

#[test]
fn read_commands_on_a_directory_without_a_log_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    for command in ["cat", "stats", "verify"] {
        let err = fails(&[command, path(dir.path())], b"");
        assert!(err.contains(&format!("{}: no shoal log here", dir.path().display())), "{command}: {err}");
    }
    assert_eq!(tree(dir.path()), vec![], "a read command created files");
}

/// The value of a `stats` row.
fn stats_row(dir: &Path, name: &str) -> String {
    let out = text(&ok(&["stats", path(dir)], b""));
    out.lines()
        .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with("  ")).map(|rest| rest.trim().to_string()))
        .unwrap_or_else(|| panic!("no {name:?} row in:\n{out}"))
}

#[test]
fn watermarks_are_exclusive_in_stats_and_acks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    // Three records, offsets 0..=2: every one of them is durable, so the watermark is 3.
    let acks = text(&ok(&["produce", path(&log), "--ack"], b"a\nb\nc\n"));
    assert_eq!(acks.lines().last(), Some("durable below 3"), "{acks}");
    assert!(acks.lines().all(|l| l.starts_with("durable below ")), "{acks}");
    assert_eq!(stats_row(&log, "first offset"), "0");
    assert_eq!(stats_row(&log, "last offset"), "2");
    assert_eq!(stats_row(&log, "next offset"), "3");
    assert_eq!(stats_row(&log, "durable below"), "3");

    let bus = dir.path().join("bus");
    let acks = text(&ok(&["produce", path(&bus), "--topic", "t", "--partitions", "1", "--ack"], b"a\nb\n"));
    assert_eq!(acks.lines().last(), Some("partition 0 durable below 2"), "{acks}");
    // `top` agrees: DURABLE is the watermark, LAST the last record.
    let top = text(&ok(&["top", path(&bus), "--once"], b""));
    let row: Vec<&str> = top
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&"t"))
        .unwrap_or_else(|| panic!("no row of topic t:\n{top}"));
    // TOPIC PARTITION RECORDS BYTES (two cells: `512 B`) FIRST LAST DURABLE ...
    assert_eq!((row[5], row[6], row[7]), ("0", "1", "2"), "{top}");
}

/// The first segment of the log in `dir` and the position and payload length of its last
/// record.
fn last_record(dir: &Path) -> (PathBuf, usize, usize) {
    let seg = segment_files(dir).into_iter().next().expect("a segment");
    let bytes = std::fs::read(&seg).expect("read segment");
    let (position, len) = *record_positions(&bytes).last().expect("a record");
    (seg, position, len)
}

/// Runs `shoal produce <log>` with one line of input and the given environment; returns its
/// stderr.
fn produce_stderr(log: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.args(["produce", path(log)]).env_remove("SHOAL_LOG").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let stderr = drain(child.stderr.take().expect("stderr"));
    let status = wait_until(&mut child, Instant::now() + RUN_WAIT, "shoal produce");
    let stderr = text(&stderr.join().expect("stderr"));
    assert!(status.success(), "produce failed: {status:?}: {stderr}");
    stderr
}

/// A repair journal (the `REPAIR` file of `shoal::log::repair`) that names byte 1 of the
/// segment `seg`: not a cut any repair makes, so an open removes it and warns.
fn bogus_journal(seg: &Path) -> Vec<u8> {
    let id: u64 = seg
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .and_then(|n| n.parse().ok())
        .expect("segment file named by its id");
    let mut b = [0u8; 48];
    b[0..8].copy_from_slice(b"SHOALREP");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[16..24].copy_from_slice(&id.to_le_bytes());
    b[24..32].copy_from_slice(&1u64.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b.to_vec()
}

#[test]
fn library_warnings_reach_stderr_filtered_by_shoal_log_then_rust_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    ok(&["produce", path(&log)], b"a\n");
    let (seg, _, _) = last_record(&log);
    let journal = bogus_journal(&seg);
    let warned = |stderr: &str| {
        stderr
            .lines()
            .any(|l| l.starts_with("shoal: warning: ") && l.contains("ignored a repair journal naming byte 1"))
    };
    // (environment, whether the warning shows)
    let cases: [(&[(&str, &str)], bool); 6] = [
        (&[], true),
        (&[("SHOAL_LOG", "off")], false),
        (&[("RUST_LOG", "off")], false),
        (&[("RUST_LOG", "error")], false),
        (&[("SHOAL_LOG", "warn"), ("RUST_LOG", "off")], true),
        (&[("SHOAL_LOG", "info")], true),
    ];
    for (env, shows) in cases {
        std::fs::write(log.join("REPAIR"), &journal).expect("write journal");
        let stderr = produce_stderr(&log, env);
        assert_eq!(warned(&stderr), shows, "{env:?}: {stderr}");
        assert!(!stderr.contains('\x1b'), "no colours into a pipe: {stderr:?}");
        assert!(!log.join("REPAIR").exists(), "{env:?}: the open removed the journal");
    }
    // A filter that does not parse: said once, and the default (warnings) applies.
    std::fs::write(log.join("REPAIR"), &journal).expect("write journal");
    let stderr = produce_stderr(&log, &[("SHOAL_LOG", "shoal=loud")]);
    assert!(stderr.contains("shoal: warning: SHOAL_LOG=shoal=loud"), "{stderr}");
    assert!(warned(&stderr), "{stderr}");
}

#[test]
fn a_torn_tail_cut_at_open_is_reported_on_stderr() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    {
        // Four durable records, then one past the watermark that a crash can tear.
        let opts =
            LogOptions::default().segment_bytes(1 << 20).max_record_bytes(64 << 10).durability(Durability::Never);
        let mut appender = Appender::open(&log, opts).expect("open");
        for i in 0..4 {
            appender.append(format!("durable {i}").as_bytes()).expect("append");
        }
        appender.sync().expect("sync");
        appender.append(&[7u8; 100]).expect("append the last record");
    }
    let (seg, position, len) = last_record(&log);
    // The commit word reached the file; the payload's last bytes did not.
    let file = OpenOptions::new().write(true).open(&seg).expect("open segment");
    let torn_from = position + format::RECORD_HEADER_BYTES + len / 2;
    file.write_all_at(&vec![0u8; format::record_stride(len) - (torn_from - position)], torn_from as u64)
        .expect("tear the record");
    drop(file);
    let stderr = produce_stderr(&log, &[]);
    let file_name = seg.file_name().and_then(|n| n.to_str()).expect("file name");
    let line = stderr
        .lines()
        .find(|l| l.contains(file_name))
        .unwrap_or_else(|| panic!("no line names the segment {file_name}: {stderr:?}"));
    assert!(line.contains("cut") && line.contains(&position.to_string()), "says what was cut, where: {line}");
    // The torn record is gone, the durable ones and the new line are there.
    let out = text(&ok(&["cat", path(&log)], b""));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["durable 0", "durable 1", "durable 2", "durable 3"], "{out}");
}

/// How long the `top` test reads a pipe for three snapshots at 50 ms: generous for a loaded
/// 2-core machine, where one snapshot of a small bus takes milliseconds.
const TOP_FRAMES_WAIT: Duration = Duration::from_secs(20);

#[test]
fn top_into_a_pipe_prints_plain_snapshots() {
    let bus = bus_with_topic();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["top", path(bus.path()), "--interval", "50"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn top"),
    );
    let mut stdout = child.0.stdout.take().expect("stdout");
    let deadline = Instant::now() + TOP_FRAMES_WAIT;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches("shoal top ").count() < 3 {
        assert!(Instant::now() < deadline, "fewer than 3 snapshots in {TOP_FRAMES_WAIT:?}: {:?}", text(&seen));
        let n = stdout.read(&mut buf).expect("read top");
        assert!(n > 0, "top exited: {:?}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(child);
    let out = text(&seen);
    assert!(!out.contains('\x1b'), "escape bytes in a pipe: {out:?}");
    // Snapshots one after another, each after a blank line.
    assert!(out.starts_with("shoal top "), "{out:?}");
    assert_eq!(out.matches("\n\nshoal top ").count(), out.matches("shoal top ").count() - 1, "{out:?}");
    assert!(out.matches("TOPIC").count() >= 3, "{out:?}");
}

/// The rows of `shoal topics` after its header, as whitespace-separated cells.
fn topics_rows(out: &str) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "SCHEMA"], "{out}");
    lines.map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
}

#[test]
fn topics_lists_and_creates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = dir.path().join("bus");
    // Reading a path without a bus is an error that creates nothing.
    let err = fails(&["topics", path(&bus)], b"");
    assert!(err.contains("no bus here"), "{err}");
    assert!(!bus.exists(), "topics created the bus");

    let out = text(&ok(&["topics", "create", path(&bus), "orders", "--partitions", "3"], b""));
    assert!(out.contains("created topic orders with 3 partitions"), "{out}");
    let out = text(&ok(&["topics", "create", path(&bus), "orders", "--partitions", "3"], b""));
    assert!(out.contains("topic orders exists with 3 partitions"), "{out}");
    let out = text(&ok(&["topics", "create", path(&bus), "orders"], b""));
    assert!(out.contains("topic orders exists with 3 partitions"), "{out}");
    let err = fails(&["topics", "create", path(&bus), "orders", "--partitions", "2"], b"");
    assert!(err.contains("exists with 3 partitions, not 2"), "{err}");
    ok(&["topics", "create", path(&bus), "audit", "--partitions", "1", "--segment-size", "1M"], b"");
    let seg = segment_files(&bus.join("topics/audit/0")).into_iter().next().expect("the partition's log is created");
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), 1 << 20, "a 1 MiB segment");

    ok(&["produce", path(&bus), "--topic", "orders"], b"a\nb\nc\nd\n");
    let before = tree(&bus);
    let out = text(&ok(&["topics", path(&bus)], b""));
    let listed = text(&ok(&["topics", "list", path(&bus)], b""));
    assert_eq!(out, listed, "`topics <BUS>` is `topics list <BUS>`");
    let rows = topics_rows(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0][..3], ["audit", "1", "0"], "{out}");
    assert_eq!(rows[1][..3], ["orders", "3", "4"], "{out}");
    assert!(rows[1][3].parse::<u64>().expect("bytes") > 0, "{out}");
    assert_eq!(tree(&bus), before, "listing changed the bus");

    // An empty bus says so.
    let empty = dir.path().join("empty");
    Bus::open(&empty).expect("bus");
    let out = text(&ok(&["topics", path(&empty)], b""));
    assert!(out.contains("no topics"), "{out}");
}

/// Runs `shoal cat <args> --follow` and, while it runs, produces `new <i>` lines with
/// `produce_args` until cat prints one; returns the first line cat printed.
fn first_followed_line(cat_args: &[&str], produce_args: &[&str]) -> String {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(cat_args)
            .arg("--follow")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cat"),
    );
    let lines = line_reader(child.0.stdout.take().expect("stdout"));
    // Bounded: LINE_WAIT over 50 ms steps, then the test fails.
    for i in 0..LINE_WAIT.as_millis() / 50 {
        ok(produce_args, format!("new {i}\n").as_bytes());
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) {
            return line;
        }
    }
    panic!("cat {cat_args:?} --follow printed nothing in {LINE_WAIT:?}");
}

#[test]
fn cat_from_earliest_latest_or_an_offset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    ok(&["produce", path(&log)], b"old 0\nold 1\nold 2\n");
    let cat = |from: &str| text(&ok(&["cat", path(&log), "--from", from], b""));
    assert_eq!(cat("earliest"), "old 0\nold 1\nold 2\n");
    assert_eq!(cat("1"), "old 1\nold 2\n");
    assert_eq!(cat("latest"), "");
    assert_eq!(text(&ok(&["cat", path(&log)], b"")), "old 0\nold 1\nold 2\n", "earliest is the default");
    let err = run(&["cat", path(&log), "--from", "last"], b"");
    assert_eq!(err.status.code(), Some(2), "a usage error");
    assert!(text(&err.stderr).contains("`last` is not earliest, latest or an offset"), "{}", text(&err.stderr));
    // Following from latest prints only records appended after cat started.
    let first = first_followed_line(&["cat", path(&log), "--from", "latest"], &["produce", path(&log)]);
    assert!(first.starts_with("new "), "{first}");

    let bus = dir.path().join("bus");
    ok(&["produce", path(&bus), "--topic", "t", "--partitions", "2"], b"old 0\nold 1\nold 2\n");
    ok(&["topics", "create", path(&bus), "empty", "--partitions", "2"], b"");
    let cat = |topic: &str, from: &str| text(&ok(&["cat", path(&bus), "--topic", topic, "--from", from], b""));
    assert_eq!(cat("t", "latest"), "");
    assert_eq!(cat("t", "earliest").lines().count(), 3);
    // Round-robin: partition 0 holds old 0 and old 2, partition 1 old 1.
    assert_eq!(cat("t", "1"), "old 2\n", "offset 1 of each partition: only partition 0 has one");
    assert_eq!(cat("empty", "latest"), "", "partitions without a log yet");
    let first = first_followed_line(
        &["cat", path(&bus), "--topic", "t", "--from", "latest"],
        &["produce", path(&bus), "--topic", "t"],
    );
    assert!(first.starts_with("new "), "{first}");
}

#[test]
fn segment_size_alone_shrinks_the_largest_record_to_fit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    let mut input = vec![b'x'; 900 << 10];
    input.push(b'\n');
    ok(&["produce", path(&log), "--segment-size", "1M"], &input);
    let seg = segment_files(&log).into_iter().next().expect("a segment");
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), 1 << 20);
    assert_eq!(ok(&["cat", path(&log)], b""), input);
    // A line larger than a segment holds is refused by name, after the lines before it.
    let mut input = b"small\n".to_vec();
    input.extend(vec![b'y'; 1 << 20]);
    let err = fails(&["produce", path(&log), "--segment-size", "1M"], &input);
    assert!(err.contains("longer than the largest record"), "{err}");
    assert_eq!(text(&ok(&["cat", path(&log), "--from", "1"], b"")), "small\n");
    // The same for a topic.
    let bus = dir.path().join("bus");
    let mut input = vec![b'z'; 900 << 10];
    input.push(b'\n');
    ok(&["produce", path(&bus), "--topic", "t", "--partitions", "1", "--segment-size", "1M"], &input);
    assert_eq!(ok(&["cat", path(&bus), "--topic", "t"], b""), input);
}
