//! The `shoal` binary's options against the README's "Command line": every option that takes
//! a time takes a time before now as written (`--since -1h`, `--to -1h`); a value out of its
//! range is a usage error (exit 2) with the same message whatever the command; each
//! command's `--help` describes that command's own output and options.

mod cli_support;
use cli_support::*;

use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> (tempfile::TempDir, PathBuf, String) {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join(name);
    let arg = dir.to_str().expect("UTF-8 temp path").to_string();
    (temp, dir, arg)
}

/// Runs a command that must be refused as a usage error: exit 2, clap's `error: ...` on
/// stderr, nothing on stdout; returns stderr.
fn usage_error(args: &[&str]) -> String {
    let out = run(args, b"");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "shoal {args:?}: {err}");
    assert!(err.starts_with("error: "), "shoal {args:?}: {err}");
    assert!(out.stdout.is_empty(), "shoal {args:?} printed {}", text(&out.stdout));
    err
}

/// Every path under `dir`, sorted (empty when `dir` does not exist).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn every_option_that_takes_a_time_takes_one_before_now_as_written() {
    let (_temp, dir, bus) = temp_dir("bus");
    let log = dir.with_file_name("log");
    let log = log.to_str().expect("UTF-8 temp path");
    ok(&["produce", log], b"a\nb\n");
    ok(&["produce", &bus, "--topic", "t", "--partitions", "2"], b"a\nb\nc\n");

    // cat --since, of a log and of a topic: every record was appended within the hour.
    for form in [&["--since", "-1h"][..], &["--since=-1h"]] {
        assert_eq!(text(&ok(&[&["cat", log][..], form].concat(), b"")), "a\nb\n", "{form:?}");
        let topic = text(&ok(&[&["cat", &bus, "--topic", "t"][..], form].concat(), b""));
        assert_eq!(topic.lines().count(), 3, "{form:?}: {topic}");
    }

    // groups --reset-offsets --to: a dry run, then written, after the flags or before them.
    ok(&["group", &bus, "g", "--topic", "t", "--exit-when-idle", "100"], b"");
    for args in [
        &["groups", &bus, "g", "--reset-offsets", "--to", "-1h"][..],
        &["groups", &bus, "g", "--reset-offsets", "--to=-1h"],
        &["groups", &bus, "g", "--to", "-90s", "--reset-offsets"],
    ] {
        let plan = text(&ok(args, b""));
        assert!(plan.contains("dry run"), "{args:?}: {plan}");
    }
    let moved = text(&ok(&["groups", &bus, "g", "--reset-offsets", "--to", "-2d", "--execute"], b""));
    assert!(!moved.contains("dry run"), "{moved}");
    // Moved back to the first record: the group prints every record again.
    let again = text(&ok(&["group", &bus, "g", "--topic", "t", "--exit-when-idle", "100"], b""));
    assert_eq!(again.lines().count(), 3, "{again}");

    // An option where a value belongs is said to be one, not read as a time.
    for args in
        [&["cat", log, "--since", "--follow"][..], &["groups", &bus, "g", "--reset-offsets", "--to", "--execute"]]
    {
        let err = usage_error(args);
        assert!(err.contains("is an option, not a value"), "{args:?}: {err}");
    }
    // A time that is no time is still refused naming it.
    let err = usage_error(&["groups", &bus, "g", "--reset-offsets", "--to", "-1y"]);
    assert!(err.contains("`-1y` is not a reset target"), "{err}");
}

#[test]
fn sizes_the_log_refuses_are_usage_errors_that_name_the_flag_and_create_nothing() {
    let (temp, dir, target) = temp_dir("target");
    let commands: [&[&str]; 5] = [
        &["produce", &target],
        &["produce", &target, "--topic", "t"],
        &["topics", "create", &target, "t"],
        &["demo", "--dir", &target, "--events", "10"],
        // Options come before the positional arguments as well.
        &["produce", "--durability", "never", &target],
    ];
    for command in commands {
        for size in ["0", "4096", "63K", "2G", "65537"] {
            let err = usage_error(&[command, &["--segment-size", size]].concat());
            assert!(
                err.contains("segment_bytes") && err.contains("choose another --segment-size"),
                "{command:?} --segment-size {size}: {err}"
            );
        }
        for size in ["0", "4K", "65537"] {
            let err = usage_error(&[command, &["--prealloc", size]].concat());
            assert!(
                err.contains("prealloc_bytes") && err.contains("choose another --prealloc"),
                "{command:?} --prealloc {size}: {err}"
            );
        }
    }
    assert!(!dir.exists(), "a refused size created {:?}", tree(&dir));
    assert_eq!(tree(temp.path()), Vec::<PathBuf>::new());
    // The edges are taken.
    ok(&["produce", &target, "--segment-size", "64K", "--prealloc", "64K"], b"a\n");
    ok(&["produce", &target, "--segment-size", "1G"], b"b\n");
}

#[test]
fn other_values_out_of_range_are_usage_errors_too() {
    let (_temp, _dir, bus) = temp_dir("bus");
    for (args, names) in [
        (&["produce", &bus, "--topic", "t", "--partitions", "0"][..], "--partitions"),
        (&["topics", "create", &bus, "t", "--partitions", "0"], "--partitions"),
        (&["cat", &bus, "--topic", "t", "--partition", "4096"], "--partition"),
        (&["top", &bus, "--interval", "0"], "--interval"),
        (&["demo", "--events", "0"], "--events"),
        (&["produce", &bus, "--durability", "interval=0"], "--durability"),
        (&["cat", &bus, "--from", "x"], "--from"),
    ] {
        let err = usage_error(args);
        assert!(err.contains(names), "{args:?}: {err}");
    }
}

/// The long help of `shoal <command...> --help`.
fn help(command: &[&str]) -> String {
    text(&ok(&[command, &["--help"]].concat(), b""))
}

#[test]
fn each_help_describes_its_own_command() {
    // group's lines are `<partition> <offset> <payload>`, not cat's bare payload.
    let group = help(&["group"]);
    assert!(!group.contains("The payload and a newline"), "{group}");
    let lines = group.lines().find(|l| l.trim_start().starts_with("- lines:")).expect("the lines value");
    assert!(lines.contains("<partition> <offset> <payload>"), "{lines}");
    let cat = help(&["cat"]);
    let lines = cat.lines().find(|l| l.trim_start().starts_with("- lines:")).expect("the lines value");
    assert!(lines.contains("The payload and a newline"), "{lines}");

    // Only produce has --topic among the commands that take --segment-size; each says of
    // which logs, and its own default.
    for (command, of, default) in [
        (&["produce"][..], "of the log (with --topic: of each partition's log)", "Default: 64M"),
        (&["topics", "create"], "of each partition's log", "Default: 64M"),
        (&["demo"], "of each partition's log of the demo's topic", "Default: sized to --events"),
    ] {
        let text = help(command);
        let line = text
            .lines()
            .skip_while(|l| !l.contains("--segment-size"))
            .nth(1)
            .unwrap_or_else(|| panic!("{command:?}: no --segment-size: {text}"));
        assert!(line.contains(&format!("Largest size of each segment file {of}:")), "{command:?}: {line}");
        assert!(line.contains(default), "{command:?}: {line}");
    }
    for command in [&["demo"][..], &["topics", "create"]] {
        let text = help(command);
        assert!(!text.contains("--topic"), "{command:?} has no --topic: {text}");
    }

    // The README's synopsis names these values; the help shows them the same way.
    assert!(help(&["produce"]).contains("--durability <never|batch|interval=MS>"));
    assert!(help(&["cat"]).contains("--partition <P>"));
    assert!(help(&["demo"]).contains("--events <N>"));
    assert!(help(&["top"]).contains("at least 50"));
    let stats = help(&["stats"]);
    assert!(stats.contains("shoal verify") && stats.contains("last segment"), "{stats}");
}
