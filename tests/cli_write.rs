//! The `shoal` binary's write path: `produce` splits stdin into records exactly (lines longer
//! than its read block, no final newline, empty lines, CR kept), and `--segment-size` sets
//! the segment files of a log and of a topic's partitions. Each test runs the real executable.

mod cli_support;
use cli_support::*;

use std::path::{Path, PathBuf};

use shoal::bus::{key_hash, partition_for_key};

/// `produce` reads stdin in blocks of this many bytes (1 MiB); lines here run past it.
const READ_BLOCK_BYTES: usize = 1 << 20;

/// Runs a command that must be refused as a usage error: exit 2, clap's `error: ...` on
/// stderr, nothing on stdout; returns stderr.
fn usage_error(args: &[&str], stdin: &[u8]) -> String {
    let out = run(args, stdin);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "shoal {args:?}: {err}");
    assert!(err.starts_with("error: "), "shoal {args:?}: {err}");
    assert!(out.stdout.is_empty(), "shoal {args:?} printed {}", text(&out.stdout));
    err
}

fn temp_dir(name: &str) -> (tempfile::TempDir, PathBuf, String) {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join(name);
    let arg = dir.to_str().expect("UTF-8 temp path").to_string();
    (temp, dir, arg)
}

/// The payloads of a log, from `cat --format json` (UTF-8 or base64, decoded by hand: the
/// payloads here are ASCII or `\r`).
fn payloads(log: &str) -> Vec<String> {
    json_lines(&ok(&["cat", log, "--format", "json"], b""))
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["offset"], i.to_string(), "{r}");
            r["payload"].as_str().unwrap_or_else(|| panic!("no UTF-8 payload: {r}")).to_string()
        })
        .collect()
}

/// A row of `shoal stats`.
fn stats_row(log: &str, name: &str) -> String {
    let stats = text(&ok(&["stats", log], b""));
    let line = stats.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} row: {stats}"));
    line[name.len()..].trim().to_string()
}

/// Sizes of the segment files under `dir` (recursively: a bus holds one log per partition).
fn segment_sizes(dir: &Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            sizes.extend(segment_sizes(&entry.path()));
        } else if entry.file_name().to_string_lossy().ends_with(".seg") {
            sizes.push(meta.len());
        }
    }
    sizes
}

#[test]
fn lines_longer_than_a_read_block_empty_lines_cr_and_no_final_newline() {
    let (_temp, _dir, log) = temp_dir("log");
    let long = "x".repeat(READ_BLOCK_BYTES * 2 + 3);
    let just_over = "y".repeat(READ_BLOCK_BYTES + 1);
    let want: Vec<String> = vec![
        "first".into(),
        String::new(),
        long.clone(),
        "crlf\r".into(),
        "\r".into(),
        String::new(),
        just_over.clone(),
        "a".into(),
        "last without newline".into(),
    ];
    let input = want.join("\n");
    ok(&["produce", &log, "--durability", "never"], input.as_bytes());
    assert_eq!(payloads(&log), want);
    assert_eq!(stats_row(&log, "records"), want.len().to_string());

    // A final newline ends the last line and adds no record; a lone newline is one empty line.
    ok(&["produce", &log], b"more\n");
    ok(&["produce", &log], b"\n");
    let mut want = want;
    want.extend(["more".to_string(), String::new()]);
    assert_eq!(payloads(&log), want);
    // `cat` as lines gives the input back, with every line ended.
    let lines = ok(&["cat", &log], b"");
    assert_eq!(text(&lines), want.iter().map(|l| format!("{l}\n")).collect::<String>());
}

#[test]
fn many_lines_across_small_segments_and_a_line_too_long_for_one() {
    let (_temp, dir, log) = temp_dir("log");
    // About 2.6 MB in 64 KiB segments: some 40 of them.
    let lines: Vec<String> = (0..24_000).map(|i| format!("{i:08} {}", "p".repeat(100))).collect();
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    ok(&["produce", &log, "--segment-size", "64K", "--durability", "never"], input.as_bytes());
    assert_eq!(payloads(&log), lines);
    assert_eq!(stats_row(&log, "records"), "24000");
    assert_eq!(stats_row(&log, "last offset"), "23999");
    let segments: usize = stats_row(&log, "segments").parse().expect("a number of segments");
    assert!(segments >= 30, "2.6 MB in 64 KiB segments, but {segments} segments");
    let sizes = segment_sizes(&dir);
    assert!(sizes.len() >= 30 && sizes.iter().all(|&s| s <= 64 << 10), "{sizes:?}");

    // A line longer than a 64 KiB segment holds: an error naming its offset, after the lines
    // before it.
    let err = fails(
        &["produce", &log, "--segment-size", "64K"],
        format!("before\n{}\nafter\n", "z".repeat(70_000)).as_bytes(),
    );
    assert!(err.contains("offset 24001") && err.contains("70000 bytes") && err.contains("largest record"), "{err}");
    assert_eq!(payloads(&log).last().map(String::as_str), Some("before"));
    assert_eq!(stats_row(&log, "records"), "24001");
}

#[test]
fn a_topic_takes_the_segment_size_for_every_partition() {
    let (_temp, dir, bus) = temp_dir("bus");
    // Keyed lines, some with CR, enough for several 64 KiB segments per partition.
    let lines: Vec<String> = (0..12_000).map(|i| format!("key-{}\tvalue {i:06} {}\r", i % 7, "q".repeat(80))).collect();
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let args = ["produce", &bus, "--topic", "t", "--partitions", "3", "--keyed", "--segment-size", "64k"];
    ok(&args, input.as_bytes());
    let json = json_lines(&ok(&["cat", &bus, "--topic", "t", "--format", "json"], b""));
    assert_eq!(json.len(), lines.len());
    let mut got: Vec<(u64, String)> = Vec::new();
    for r in &json {
        let payload = r["payload"].as_str().unwrap_or_else(|| panic!("payload: {r}"));
        let i: usize = payload["value ".len().."value ".len() + 6].parse().unwrap_or_else(|_| panic!("{r}"));
        let text = format!("key-{}", i % 7);
        let key = key_hash(text.as_bytes());
        assert_eq!(r["key"], text.as_str(), "{r}");
        assert_eq!(r["routing_key"], key.to_string(), "{r}");
        assert_eq!(r["partition"], u64::from(partition_for_key(key, 3)), "{r}");
        got.push((i as u64, payload.to_string()));
    }
    got.sort();
    let want: Vec<(u64, String)> =
        lines.iter().enumerate().map(|(i, l)| (i as u64, l[l.find('\t').expect("tab") + 1..].to_string())).collect();
    assert_eq!(got, want);
    let sizes = segment_sizes(&dir);
    assert!(sizes.len() >= 9 && sizes.iter().all(|&s| s <= 64 << 10), "{sizes:?}");

    // Round-robin over the partitions, into the same small segments.
    ok(&["produce", &bus, "--topic", "t", "--segment-size", "64K"], b"r0\nr1\nr2\n");
    let json = json_lines(&ok(&["cat", &bus, "--topic", "t", "--format", "json"], b""));
    let mut rr: Vec<(u64, String)> = json
        .iter()
        .filter(|r| r["payload"].as_str().is_some_and(|p| p.starts_with('r')))
        .map(|r| (r["partition"].as_u64().expect("partition"), r["payload"].as_str().unwrap_or("").to_string()))
        .collect();
    rr.sort();
    assert_eq!(rr.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![0, 1, 2], "{rr:?}");
}

#[test]
fn sizes_that_do_not_parse_and_sizes_the_log_refuses_are_usage_errors_that_name_the_flag() {
    let (_temp, dir, log) = temp_dir("log");
    for bad in ["64X", "lots", "1.5M", "64 K", "64KB"] {
        let out = run(&["produce", &log, "--segment-size", bad], b"a\n");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--segment-size {bad}: {err}");
        assert!(err.contains(&format!("`{bad}` is not a size")), "--segment-size {bad}: {err}");
    }
    for refused in ["4K", "65537", "2G"] {
        let err = usage_error(&["produce", &log, "--segment-size", refused], b"a\n");
        assert!(err.contains("segment_bytes") && err.contains("--segment-size"), "--segment-size {refused}: {err}");
        let err = usage_error(&["produce", &log, "--topic", "t", "--segment-size", refused], b"a\n");
        assert!(err.contains("--segment-size"), "--topic --segment-size {refused}: {err}");
    }
    // Nothing was created by a refused size.
    assert!(!dir.exists());
}

#[test]
fn never_without_ack_leaves_records_in_the_page_cache_and_with_ack_syncs_them() {
    let (_temp, _dir, log) = temp_dir("log");
    ok(&["produce", &log, "--durability", "never"], b"a\nb\n");
    assert_eq!(stats_row(&log, "records"), "2");
    assert_eq!(stats_row(&log, "durable below"), "0", "no sync at the end of `never`");
    assert_eq!(text(&ok(&["produce", &log, "--durability", "never", "--ack"], b"c\n")), "durable below 3\n");
    assert_eq!(stats_row(&log, "durable below"), "3");
    // The other levels sync at the end, acks or not.
    for level in ["batch", "interval=60000"] {
        ok(&["produce", &log, "--durability", level], b"d\n");
        let next = stats_row(&log, "next offset");
        assert_eq!(stats_row(&log, "durable below"), next, "{level}");
    }
}

/// `bridge import` takes `--segment-size` too, and refuses a bad one before it connects or
/// creates the bus (so no NATS server is needed here).
#[cfg(feature = "nats")]
#[test]
fn bridge_import_refuses_a_segment_size_before_touching_the_bus() {
    let (_temp, dir, bus) = temp_dir("bus");
    let args = ["bridge", "import", &bus, "--topic", "t", "--nats", "nats://127.0.0.1:1", "--stream", "S"];
    let err = usage_error(&[&args[..], &["--segment-size", "4K"]].concat(), b"");
    assert!(err.contains("segment_bytes") && err.contains("choose another --segment-size"), "{err}");
    assert!(!dir.exists());
    let out = run(&[&args[..], &["--segment-size", "4X"]].concat(), b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// Disk space taken by the files under `dir` (recursively), from their allocated blocks.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).expect("list dir") {
        let meta = entry.expect("entry").metadata().expect("metadata");
        bytes += if meta.is_dir() { 0 } else { meta.blocks() * 512 };
    }
    bytes
}

#[test]
fn prealloc_sets_the_disk_space_a_quiet_log_takes() {
    let (_temp, dir, log) = temp_dir("log");
    let big = dir.with_file_name("big");
    let big_arg = big.to_str().expect("UTF-8 temp path");
    ok(&["produce", &log, "--prealloc", "64K"], b"one\n");
    ok(&["produce", big_arg, "--prealloc", "4M"], b"one\n");
    // The segment files are sparse past what was allocated ahead of the writer.
    let (small, large) = (disk_bytes(&dir), disk_bytes(&big));
    assert!(small < 1 << 20, "a one-record log with --prealloc 64K takes {small} bytes");
    assert!(large >= 4 << 20, "a one-record log with --prealloc 4M takes {large} bytes");
    assert_eq!(payloads(&log), vec!["one".to_string()]);

    for refused in ["4K", "65537", "0"] {
        let err = usage_error(&["produce", &log, "--prealloc", refused], b"a\n");
        assert!(err.contains("prealloc_bytes") && err.contains("choose another --prealloc"), "{refused}: {err}");
    }
    let out = run(&["produce", &log, "--prealloc", "lots"], b"a\n");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(payloads(&log), vec!["one".to_string()]);
}

#[test]
fn the_disk_full_message_names_what_to_do_on_the_command_line_and_in_the_library() {
    use shoal::log::LogError;
    let full = LogError::NoSpace { path: "/bus/log/00000000000000000000.seg".into(), bytes: 524_288 }.to_string();
    for part in
        ["00000000000000000000.seg", "524288 bytes", "free disk space", "--segment-size", "LogOptions::segment_bytes"]
    {
        assert!(full.contains(part), "{part}: {full}");
    }
    let unknown = LogError::NoSpace { path: "/bus/log".into(), bytes: 0 }.to_string();
    assert!(!unknown.contains("0 bytes") && unknown.contains("--segment-size"), "{unknown}");
}

#[test]
fn demo_takes_the_sizes_and_refuses_a_bad_one_before_creating_its_bus() {
    let (_temp, dir, bus) = temp_dir("bus");
    let err = usage_error(&["demo", "--dir", &bus, "--events", "10", "--segment-size", "4K"], b"");
    assert!(err.contains("choose another --segment-size"), "{err}");
    let err = usage_error(&["demo", "--dir", &bus, "--events", "10", "--prealloc", "4K"], b"");
    assert!(err.contains("choose another --prealloc"), "{err}");
    assert!(!dir.exists());
}
