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

/// Flips one payload byte of the record whose payload starts with `needle`; returns the
/// segment file it is in.
fn damage_record(log: &Path, needle: &[u8]) -> std::path::PathBuf {
    for entry in std::fs::read_dir(log).expect("list log") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read segment");
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + needle.len()] ^= 0x01;
            std::fs::write(&path, &bytes).expect("write segment");
            return path;
        }
    }
    panic!("no record {} in {}", String::from_utf8_lossy(needle), log.display());
}

/// `stats` reads the records of the last segment only: damage there is an error, damage in an
/// older segment is not looked for; its output says so (`checked`), and `verify` finds both.
#[test]
fn stats_says_what_it_checked_and_verify_finds_the_damage_it_does_not() {
    let temp = tempfile::tempdir().expect("tempdir");
    let input: String = (0..3000).map(|i| format!("record-{i:04}-with-some-padding-to-fill-segments\n")).collect();
    let [sealed, tail] = ["sealed", "tail"].map(|name| {
        let log = temp.path().join(name);
        ok(&["produce", log.to_str().expect("UTF-8"), "--segment-size", "64K"], input.as_bytes());
        log
    });
    let first_segment = damage_record(&sealed, b"record-0100-");
    let last_segment = damage_record(&tail, b"record-2990-");
    assert_ne!(first_segment.file_name(), last_segment.file_name(), "the damage is in two different segments");

    // Damage in a sealed segment: the figures, and a row saying that only the last segment's
    // records were read, so exit 0 does not claim the log is sound.
    let out = text(&ok(&["stats", sealed.to_str().expect("UTF-8")], b""));
    let checked = out.lines().find(|l| l.starts_with("checked")).unwrap_or_else(|| panic!("no checked row: {out}"));
    assert!(checked.contains("last segment only") && checked.contains("shoal verify"), "{checked}");
    let err = text(&run(&["verify", sealed.to_str().expect("UTF-8")], b"").stderr);
    assert!(err.contains(&first_segment.display().to_string()), "{err}");

    // Damage in the last segment: stats meets it, and says which command lists it.
    let err = fails(&["stats", tail.to_str().expect("UTF-8")], b"");
    assert!(err.contains(&last_segment.display().to_string()) && err.contains("shoal verify"), "{err}");
    let verified = run(&["verify", tail.to_str().expect("UTF-8")], b"");
    assert_eq!(verified.status.code(), Some(1), "{}", text(&verified.stderr));
}
