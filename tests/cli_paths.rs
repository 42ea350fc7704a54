//! The read commands (`cat`, `stats`, `verify`) against paths that hold no log: each is an
//! error that says what was found there, with a non-zero exit, and nothing is created; and
//! `cat --from` is honoured when following.

mod cli_support;
use cli_support::*;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every entry under `dir`, as relative paths, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            out.push(path.strip_prefix(dir).expect("under dir").display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn read_commands_on_what_is_not_a_log_fail_and_say_what_they_found() {
    let temp = tempfile::tempdir().expect("tempdir");
    let root = temp.path();
    let empty = root.join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    std::fs::write(empty.join("notes.txt"), b"not a log").expect("write");
    let file = root.join("file");
    std::fs::write(&file, b"plain bytes").expect("write");
    let bus = root.join("bus");
    let bus_arg = bus.to_str().expect("UTF-8").to_string();
    ok(&["produce", &bus_arg, "--topic", "orders"], b"a\nb\n");
    let missing = root.join("missing");
    let before = tree(root);

    for cmd in [&["cat"][..], &["stats"], &["verify"], &["verify", "--repair"], &["cat", "--follow"]] {
        let run_on = |path: &Path| {
            let mut args: Vec<&str> = vec![cmd[0]];
            args.push(path.to_str().expect("UTF-8"));
            args.extend(&cmd[1..]);
            fails(&args, b"")
        };
        let err = run_on(&empty);
        assert!(err.contains("no shoal log here"), "{cmd:?} on an empty directory: {err}");
        let err = run_on(&file);
        assert!(err.contains("is a file, not a log directory"), "{cmd:?} on a file: {err}");
        let err = run_on(&bus);
        assert!(
            err.contains("is a bus directory, not a log")
                && (err.contains("--topic") || err.contains("topics/<T>/<P>")),
            "{cmd:?} on a bus: {err}"
        );
        let err = run_on(&missing);
        assert!(err.contains("no such directory"), "{cmd:?} on a missing path: {err}");
    }
    // Read commands created nothing anywhere (no LOCK, no HEAD, no directory).
    assert_eq!(tree(root), before);
    // The log of the bus's partition is still a log: the check is about the path, not the bytes.
    let partition = bus.join("topics").join("orders").join("0");
    let out = ok(&["stats", partition.to_str().expect("UTF-8")], b"");
    assert!(text(&out).contains("segments"), "{}", text(&out));
}

#[test]
fn cat_from_past_the_end_waits_for_that_offset_when_following() {
    let temp = tempfile::tempdir().expect("tempdir");
    let log = temp.path().join("log");
    let log_arg = log.to_str().expect("UTF-8").to_string();
    let first: String = (0..10).map(|i| format!("r{i}\n")).collect();
    ok(&["produce", &log_arg], first.as_bytes());
    // Without --follow: nothing at or past 15 yet.
    assert_eq!(text(&ok(&["cat", &log_arg, "--from", "15"], b"")), "");

    let mut cat = shoal()
        .args(["cat", &log_arg, "--from", "15", "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cat --follow");
    let lines = line_reader(cat.stdout.take().expect("stdout"));
    let cat = KillOnDrop(cat);
    let mut producer = shoal()
        .args(["produce", &log_arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn produce");
    {
        let mut stdin = producer.stdin.take().expect("stdin");
        for i in 10..20 {
            writeln!(stdin, "r{i}").expect("write a line");
        }
    }
    let status = wait_until(&mut producer, Instant::now() + Duration::from_secs(30), "produce");
    assert!(status.success(), "produce: {status:?}");
    let got: Vec<String> = (15..20).map(|_| next_line(&lines, "a followed record")).collect();
    assert_eq!(got, (15..20).map(|i| format!("r{i}")).collect::<Vec<_>>());
    drop(cat);
}

/// Reads of a topic refuse a partition directory that is a symbolic link, as `produce` does:
/// shoal never follows a link inside a bus, whichever command meets it.
#[test]
fn cat_of_a_topic_refuses_a_partition_that_is_a_symbolic_link() {
    let temp = tempfile::tempdir().expect("tempdir");
    let bus = temp.path().join("bus");
    let bus_arg = bus.to_str().expect("UTF-8");
    ok(&["produce", bus_arg, "--topic", "t", "--partitions", "2"], b"a\nb\nc\nd\n");
    let outside = temp.path().join("outside");
    ok(&["produce", outside.to_str().expect("UTF-8")], b"planted 1\nplanted 2\n");
    let partition = bus.join("topics").join("t").join("1");
    std::fs::remove_dir_all(&partition).expect("remove partition 1");
    std::os::unix::fs::symlink(&outside, &partition).expect("plant the link");

    let shown = partition.display().to_string();
    let produced = fails(&["produce", bus_arg, "--topic", "t"], b"e\n");
    assert!(produced.contains(&shown) && produced.contains("is a symbolic link"), "{produced}");
    for args in [
        &["cat", bus_arg, "--topic", "t"][..],
        &["cat", bus_arg, "--topic", "t", "--partition", "1"],
        &["cat", bus_arg, "--topic", "t", "--from", "latest"],
        &["cat", bus_arg, "--topic", "t", "--since", "-1h"],
        &["cat", bus_arg, "--topic", "t", "--follow"],
        &["cat", bus_arg, "--topic", "t", "--partition", "1", "--follow", "--format", "json"],
    ] {
        let out = run(args, b"");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&shown) && err.contains("is a symbolic link; shoal never follows links"),
            "{args:?}: {err}"
        );
        assert!(!text(&out.stdout).contains("planted"), "{args:?} read through the link: {}", text(&out.stdout));
    }
    // The partition that is a directory still reads.
    assert_eq!(text(&ok(&["cat", bus_arg, "--topic", "t", "--partition", "0"], b"")), "a\nc\n");
}
