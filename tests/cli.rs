//! The `shoal` binary against its command-line contract: each test runs the real executable.

mod cli_support;
use cli_support::*;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use shoal::log::format;

fn log_dir() -> (tempfile::TempDir, PathBuf, String) {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("log");
    let arg = dir.to_str().expect("UTF-8 temp path").to_string();
    (temp, dir, arg)
}

/// The `N`s of `durable below <N>` lines; panics on any other line.
fn acks(stdout: &[u8]) -> Vec<u64> {
    text(stdout)
        .lines()
        .map(|l| {
            l.strip_prefix("durable below ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not an ack: {l:?}"))
        })
        .collect()
}

#[test]
fn produce_then_cat_as_lines_and_json() {
    let (_temp, _dir, log) = log_dir();
    ok(&["produce", &log], b"alpha\nbeta with \"quotes\"\n\xff\xfe\n\nlast without newline");
    let lines = ok(&["cat", &log], b"");
    assert_eq!(lines, b"alpha\nbeta with \"quotes\"\n\xff\xfe\n\nlast without newline\n");

    let json = json_lines(&ok(&["cat", &log, "--format", "json"], b""));
    assert_eq!(json.len(), 5);
    for (i, record) in json.iter().enumerate() {
        // 64-bit integers are strings, so JSON readers with 53-bit numbers read them exactly.
        assert_eq!(record["offset"], i.to_string());
        assert_eq!(record["routing_key"], "0");
        assert!(record.get("key").is_none(), "no key text: {record}");
        let ts = record["timestamp_ns"].as_str().and_then(|t| t.parse::<u64>().ok());
        assert!(ts.is_some_and(|t| t > 1 << 53), "{record}");
    }
    assert_eq!(json[0]["payload"], "alpha");
    assert_eq!(json[1]["payload"], "beta with \"quotes\"");
    assert_eq!(json[2]["payload_base64"], "//4=");
    assert!(json[2].get("payload").is_none(), "{}", json[2]);
    assert_eq!(json[3]["payload"], "");
    assert_eq!(json[4]["payload"], "last without newline");
}

#[test]
fn offsets_continue_across_runs_and_acks_name_the_durable_watermark() {
    let (_temp, _dir, log) = log_dir();
    let lines: String = (0..100).map(|i| format!("first run {i}\n")).collect();
    let first = acks(&ok(&["produce", &log, "--ack"], lines.as_bytes()));
    assert!(!first.is_empty());
    assert!(first.windows(2).all(|w| w[0] < w[1]), "acks must only advance: {first:?}");
    // Exclusive: offsets 0..=99 are durable.
    assert_eq!(first.last(), Some(&100));

    for durability in ["batch", "never", "interval=5"] {
        let second = acks(&ok(&["produce", &log, "--ack", "--durability", durability], b"one more\n"));
        assert!(!second.is_empty(), "{durability}: no final ack");
        assert!(second.windows(2).all(|w| w[0] < w[1]), "{durability}: {second:?}");
        let last = *second.last().unwrap_or(&0);
        assert!((101..=103).contains(&last), "{durability}: final ack {last}");
    }
    let json = json_lines(&ok(&["cat", &log, "--format", "json"], b""));
    assert_eq!(json.len(), 103);
    assert!(json.iter().enumerate().all(|(i, r)| r["offset"].as_str() == Some(i.to_string().as_str())));
    assert_eq!(json[99]["payload"], "first run 99");
    assert_eq!(json[100]["payload"], "one more");

    // No input: nothing appended, and the final ack still names the watermark.
    assert_eq!(acks(&ok(&["produce", &log, "--ack"], b"")), vec![103]);
}

#[test]
fn acks_arrive_while_stdin_is_still_open() {
    let (_temp, _dir, log) = log_dir();
    let mut child = shoal()
        .args(["produce", &log, "--ack"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn produce");
    let mut input = child.stdin.take().expect("stdin");
    let lines = line_reader(child.stdout.take().expect("stdout"));
    let mut child = KillOnDrop(child);
    for i in 0..3u64 {
        writeln!(input, "slow line {i}").expect("write a line");
        input.flush().expect("flush");
        // The ack for this line must come before the next line is even written.
        assert_eq!(next_line(&lines, "an ack"), format!("durable below {}", i + 1));
    }
    drop(input);
    let status = child.0.wait().expect("wait");
    assert!(status.success());
    let rest: Vec<String> = lines.iter().collect();
    assert!(rest.iter().all(|l| l == "durable below 3"), "after the end of input: {rest:?}");
}

#[test]
fn cat_from_an_offset() {
    let (_temp, _dir, log) = log_dir();
    ok(&["produce", &log], b"r0\nr1\nr2\nr3\nr4\n");
    assert_eq!(ok(&["cat", &log, "--from", "3"], b""), b"r3\nr4\n");
    let json = json_lines(&ok(&["cat", &log, "--from", "4", "--format", "json"], b""));
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["offset"], "4");
    assert_eq!(ok(&["cat", &log, "--from", "5"], b""), b"");
    assert_eq!(ok(&["cat", &log, "--from", "1000"], b""), b"");
}

#[test]
fn cat_follow_sees_records_appended_after_it_started() {
    let (_temp, _dir, log) = log_dir();
    ok(&["produce", &log], b"before\n");
    let mut child = shoal()
        .args(["cat", &log, "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cat --follow");
    let lines = line_reader(child.stdout.take().expect("stdout"));
    let _child = KillOnDrop(child);
    assert_eq!(next_line(&lines, "the existing record"), "before");
    ok(&["produce", &log], b"after 1\nafter 2\n");
    assert_eq!(next_line(&lines, "the first new record"), "after 1");
    assert_eq!(next_line(&lines, "the second new record"), "after 2");
    ok(&["produce", &log], b"after 3\n");
    assert_eq!(next_line(&lines, "a record from a later run"), "after 3");
}

#[test]
fn cat_ends_quietly_when_its_reader_goes_away() {
    let (_temp, _dir, log) = log_dir();
    let lines: String = (0..30_000).map(|i| format!("line number {i}\n")).collect();
    ok(&["produce", &log, "--durability", "never"], lines.as_bytes());
    let mut child = shoal()
        .args(["cat", &log])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cat");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 13];
    stdout.read_exact(&mut first).expect("read the first bytes");
    assert_eq!(&first, b"line number 0");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}: {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

/// Byte positions of the records in a segment file, in order.
fn record_positions(segment: &Path) -> Vec<usize> {
    let bytes = std::fs::read(segment).expect("read segment");
    assert_eq!(&bytes[..8], &format::SEGMENT_MAGIC);
    let index_entries = u32::from_le_bytes(bytes[40..44].try_into().expect("4 bytes"));
    let mut position = format::data_start(index_entries);
    let mut positions = Vec::new();
    loop {
        let commit = u32::from_le_bytes(bytes[position..position + 4].try_into().expect("4 bytes"));
        if commit == 0 || commit == format::END_OF_SEGMENT {
            return positions;
        }
        assert_ne!(commit & format::COMMIT_BIT, 0, "a record at byte {position}");
        positions.push(position);
        position += format::record_stride((commit & !format::COMMIT_BIT) as usize);
    }
}

/// Flips one bit in the payload of the record at `position`.
fn damage_payload(segment: &Path, position: usize) {
    let mut bytes = std::fs::read(segment).expect("read segment");
    bytes[position + format::RECORD_HEADER_BYTES + 3] ^= 0x40;
    std::fs::write(segment, &bytes).expect("write segment");
}

#[test]
fn verify_reports_a_damaged_record_and_repair_cuts_it() {
    let (_temp, dir, log) = log_dir();
    let lines: String = (0..10).map(|i| format!("record {i}\n")).collect();
    ok(&["produce", &log], lines.as_bytes());
    let sound = ok(&["verify", &log], b"");
    assert!(text(&sound).contains("sound"), "{}", text(&sound));

    let segment = dir.join("00000000000000000000.seg");
    let positions = record_positions(&segment);
    assert_eq!(positions.len(), 10);
    let position = positions[9];
    damage_payload(&segment, position);

    let out = run(&["verify", &log], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line per problem: {err}");
    assert!(err.contains("00000000000000000000.seg"), "names the file: {err}");
    assert!(err.contains(&format!("byte {position}")), "names the byte position {position}: {err}");
    assert!(err.contains("repairable"), "{err}");

    // cat prints the good records, then stops at the damage without printing its bytes.
    let out = run(&["cat", &log], b"");
    assert_eq!(out.status.code(), Some(1));
    let want: String = (0..9).map(|i| format!("record {i}\n")).collect();
    assert_eq!(text(&out.stdout), want);
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("shoal: ") && err.contains("00000000000000000000.seg"), "{err}");

    let repaired = text(&ok(&["verify", &log, "--repair"], b""));
    assert!(repaired.contains(&format!("byte {position}")), "{repaired}");
    assert!(repaired.contains("offset 9"), "{repaired}");
    assert!(repaired.contains("(0 intact records"), "{repaired}");
    assert_eq!(text(&ok(&["cat", &log], b"")), want);
    ok(&["verify", &log], b"");

    // The log goes on from the cut.
    ok(&["produce", &log], b"record 9 again\n");
    let json = json_lines(&ok(&["cat", &log, "--from", "9", "--format", "json"], b""));
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["offset"], "9");
    assert_eq!(json[0]["payload"], "record 9 again");
}

#[test]
fn repair_of_damage_mid_log_says_how_many_records_it_drops() {
    let (_temp, dir, log) = log_dir();
    let lines: String = (0..10).map(|i| format!("record {i}\n")).collect();
    ok(&["produce", &log], lines.as_bytes());
    let segment = dir.join("00000000000000000000.seg");
    let position = record_positions(&segment)[5];
    damage_payload(&segment, position);

    let out = run(&["verify", &log], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("byte {position}")) && err.contains("offset 5"), "{err}");

    let repaired = text(&ok(&["verify", &log, "--repair"], b""));
    assert!(repaired.contains(&format!("byte {position}")), "{repaired}");
    assert!(repaired.contains("(4 intact records after the damage)"), "{repaired}");
    let want: String = (0..5).map(|i| format!("record {i}\n")).collect();
    assert_eq!(text(&ok(&["cat", &log], b"")), want);
    let stats = text(&ok(&["stats", &log], b""));
    assert!(stats.lines().any(|l| l.starts_with("last offset") && l.ends_with(" 4")), "{stats}");
}

#[test]
fn stats_prints_the_figures() {
    let (_temp, _dir, log) = log_dir();
    ok(&["produce", &log], b"a\nb\nc\nd\ne\n");
    let stats = text(&ok(&["stats", &log], b""));
    let row = |name: &str| -> String {
        let line = stats.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} row: {stats}"));
        line[name.len()..].trim().to_string()
    };
    assert_eq!(row("records"), "5");
    assert_eq!(row("first offset"), "0");
    assert_eq!(row("last offset"), "4");
    assert_eq!(row("next offset"), "5");
    assert_eq!(row("durable below"), "5");
    let segments: u64 = row("segments").parse().expect("a number of segments");
    assert!(segments >= 1);
    assert!(row("bytes").split(' ').next().and_then(|b| b.parse::<u64>().ok()).is_some_and(|b| b > 0), "{stats}");
    // The value column is aligned.
    let columns: Vec<usize> =
        stats.lines().map(|l| l.len() - l[l.find("  ").unwrap_or(0)..].trim_start().len()).collect();
    assert!(columns.windows(2).all(|w| w[0] == w[1]), "{stats}");
}

#[test]
fn usage_errors_exit_2() {
    let (_temp, _dir, log) = log_dir();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["cat"],
        vec!["cat", &log, "--from", "minus one"],
        vec!["cat", &log, "--format", "xml"],
        vec!["produce", &log, "--durability", "sometimes"],
        vec!["produce", &log, "--durability", "interval=0"],
        vec!["verify", &log, "--fix"],
        vec!["demo", "--events", "0"],
    ] {
        let out = run(&args, b"");
        assert_eq!(out.status.code(), Some(2), "shoal {args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn a_missing_directory_is_one_line_naming_it() {
    let (temp, _dir, _log) = log_dir();
    let missing = temp.path().join("no such log");
    let missing = missing.to_str().expect("UTF-8 path");
    for command in ["cat", "stats", "verify"] {
        let out = run(&[command, missing], b"");
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{command}: {err}");
        assert!(err.starts_with("shoal: ") && err.contains(missing), "{command}: {err}");
        assert!(out.stdout.is_empty(), "{command}");
    }
}

/// A second `shoal produce` on a log another one holds open appends too: its record comes
/// after the first's, and both are acknowledged with their own offsets.
#[test]
fn a_second_producer_appends_while_the_first_runs() {
    let (_temp, _dir, log) = log_dir();
    let mut first = shoal()
        .args(["produce", &log, "--ack"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn produce");
    let mut input = first.stdin.take().expect("stdin");
    let acks = line_reader(first.stdout.take().expect("stdout"));
    let mut first = KillOnDrop(first);
    writeln!(input, "held").expect("write");
    input.flush().expect("flush");
    assert_eq!(next_line(&acks, "the first producer's ack"), "durable below 1");

    // `stats` names the running producer.
    let stats = text(&ok(&["stats", &log], b""));
    let pid = first.0.id();
    assert!(stats.lines().any(|l| l.starts_with("producers") && l.ends_with(&format!("1 (pid {pid})"))), "{stats}");
    let out = ok(&["produce", &log, "--ack"], b"second\n");
    assert_eq!(text(&out), "durable below 2\n");
    writeln!(input, "third").expect("write");
    input.flush().expect("flush");
    // The watermark is shared: the first producer may also report the second's record.
    let mut ack = next_line(&acks, "the first producer's second ack");
    if ack == "durable below 2" {
        ack = next_line(&acks, "the first producer's ack of its second record");
    }
    assert_eq!(ack, "durable below 3");

    drop(input);
    assert!(first.0.wait().expect("wait").success());
    assert_eq!(ok(&["cat", &log], b""), b"held\nsecond\nthird\n");
}

#[test]
fn demo_runs_the_whole_scenario_and_verifies_every_order() {
    let (_temp, _dir, bus) = log_dir();
    let started = Instant::now();
    let out = text(&ok(&["demo", "--dir", &bus, "--events", "20000"], b""));
    eprintln!("shoal demo --events 20000 took {:?}", started.elapsed());
    for row in [
        "events",
        "events/s",
        "durable MB/s",
        "end-to-end",
        "scale pauses",
        "membership",
        "rebalance pauses",
        "delivered",
        "replay",
        "verified",
    ] {
        assert!(out.lines().any(|l| l.starts_with(row)), "no {row} row: {out}");
    }
    assert!(out.contains("20,000 orders x 48 bytes"), "{out}");
    assert!(out.contains("20,000 intact, 0 lost, 0 duplicated, 0 corrupt, 0 out of order; checksum matches"), "{out}");
    assert!(out.contains("risk stage 1 -> 2 -> 3 -> 2 -> 1 workers"), "{out}");
    assert!(out
        .lines()
        .any(|l| l.starts_with("membership") && l.contains("(process ") && l.contains("joined at order")));
    assert!(out.lines().any(|l| l.starts_with("membership") && l.contains("left at order")), "{out}");
    assert!(out.contains("20,000 to the group: 0 duplicates, 0 never delivered, 0 unreadable, lag at end 0"), "{out}");
    // The member process delivered part of the orders.
    let child = out
        .lines()
        .find(|l| l.starts_with("rebalance pauses") && l.contains("(process "))
        .unwrap_or_else(|| panic!("no row for the member process: {out}"));
    assert!(!child.ends_with("; 0 delivered"), "{child}");
    // The bus stays, with the group fully committed; a second demo there is refused.
    let groups = text(&ok(&["groups", &bus], b""));
    assert!(groups.contains("group risk-report, topic orders") && groups.contains("lag 0"), "{groups}");
    let again = run(&["demo", "--dir", &bus, "--events", "10"], b"");
    assert_eq!(again.status.code(), Some(1));
    let err = text(&again.stderr);
    assert!(err.lines().any(|l| l.starts_with("shoal: ") && l.contains("earlier demo")), "{err}");
}

/// Sets the commit word of the record at `position` to `word`.
fn set_commit_word(segment: &Path, position: usize, word: u32) {
    let mut bytes = std::fs::read(segment).expect("read segment");
    bytes[position..position + 4].copy_from_slice(&word.to_le_bytes());
    std::fs::write(segment, &bytes).expect("write segment");
}

/// A zeroed or all-ones commit word below the durable watermark (bit 31 of an empty
/// record's commit word flipped, or the word set to the end marker) is corruption, not the
/// end of the log: `verify` exits 1 calling it corrupt (not torn), `cat` prints the records
/// before it and fails naming the file and byte, `produce` refuses instead of erasing
/// records 2-5 and reusing offset 2, and `verify --repair` cuts there saying what it drops.
#[test]
fn a_zero_or_all_ones_commit_word_below_the_watermark_is_corruption() {
    for word in [0u32, u32::MAX] {
        let (_temp, dir, log) = log_dir();
        assert_eq!(acks(&ok(&["produce", &log, "--ack"], b"a\nb\n\nc\nd\ne\n")).last(), Some(&6));
        let segment = dir.join("00000000000000000000.seg");
        let position = record_positions(&segment)[2];
        set_commit_word(&segment, position, word);
        let context = format!("commit word {word:#x}");

        let out = run(&["verify", &log], b"");
        assert_eq!(out.status.code(), Some(1), "{context}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(
            err.contains("00000000000000000000.seg") && err.contains(&format!("byte {position}")),
            "{context}: {err}"
        );
        assert!(err.contains("corrupt") && !err.contains("torn"), "{context}: {err}");
        assert!(err.contains("offset 2"), "{context}: {err}");

        let out = run(&["cat", &log], b"");
        assert_ne!(out.status.code(), Some(0), "{context}: cat must fail");
        assert_eq!(text(&out.stdout), "a\nb\n", "{context}");
        let err = text(&out.stderr);
        assert!(
            err.contains("00000000000000000000.seg") && err.contains(&format!("byte {position}")),
            "{context}: {err}"
        );

        // `stats` does not report the log as two records long (last offset 1): it names the
        // damage.
        let out = run(&["stats", &log], b"");
        assert_ne!(out.status.code(), Some(0), "{context}: stats of a damaged log: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("byte {position}")) && err.contains("verify --repair"), "{context}: {err}");

        let out = run(&["produce", &log, "--ack"], b"NEW\n");
        assert_ne!(out.status.code(), Some(0), "{context}: produce appended past damage: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("verify --repair"), "{context}: {}", text(&out.stderr));

        let repaired = text(&ok(&["verify", &log, "--repair"], b""));
        assert!(
            repaired.contains(&format!("byte {position}")) && repaired.contains("offset 2"),
            "{context}: {repaired}"
        );
        assert!(
            repaired.contains("(3 intact records after the damage); offsets 2 to 5 dropped"),
            "{context}: {repaired}"
        );
        ok(&["verify", &log], b"");
        assert_eq!(acks(&ok(&["produce", &log, "--ack"], b"NEW\n")).last(), Some(&3), "{context}");
        assert_eq!(text(&ok(&["cat", &log], b"")), "a\nb\nNEW\n", "{context}");
    }
}

/// A damaged `HEAD` page: `verify` names it (it used to say "sound" while `produce`
/// refused), `--repair` rewrites it, and then `verify` is sound and `produce` works. A flip
/// in the plain watermark word alone is outvoted by its checksummed copies: `produce` works
/// without a repair and `verify` still reports the word.
#[test]
fn head_damage_is_reported_and_repaired() {
    let (_temp, dir, log) = log_dir();
    ok(&["produce", &log, "--ack"], b"a\nb\nc\n");
    let head = dir.join("HEAD");
    let pristine = std::fs::read(&head).expect("read HEAD");

    let mut bytes = pristine.clone();
    bytes[128 + 5] ^= 0x10; // the plain watermark word, far above the log's end
    std::fs::write(&head, &bytes).expect("write HEAD");
    let out = run(&["verify", &log], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("HEAD") && text(&out.stderr).contains("byte 128"), "{}", text(&out.stderr));
    ok(&["produce", &log, "--ack"], b"d\n");
    ok(&["verify", &log], b"");

    let mut bytes = std::fs::read(&head).expect("read HEAD");
    bytes[2] ^= 0x01; // the magic
    std::fs::write(&head, &bytes).expect("write HEAD");
    let out = run(&["verify", &log], b"");
    assert_eq!(out.status.code(), Some(1), "verify must not call a log with a broken HEAD sound");
    assert!(text(&out.stderr).contains("HEAD"), "{}", text(&out.stderr));
    // `produce` names the page and the repair, not "move it out" or "upgrade".
    let out = run(&["produce", &log], b"e\n");
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("HEAD") && err.contains("verify --repair") && !err.contains("move it out"), "{err}");
    // A flipped bit in the version word: not "upgrade" alone, but newer or damaged.
    let mut version = std::fs::read(&head).expect("read HEAD");
    version[..8].copy_from_slice(&pristine[..8]);
    version[8] ^= 0x10;
    std::fs::write(&head, &version).expect("write HEAD");
    let err = text(&run(&["produce", &log], b"e\n").stderr);
    assert!(err.contains("or the page is damaged") && err.contains("verify --repair"), "{err}");
    let repaired = text(&ok(&["verify", &log, "--repair"], b""));
    assert!(repaired.contains("HEAD"), "{repaired}");
    ok(&["verify", &log], b"");
    ok(&["produce", &log], b"e\n");
    assert_eq!(text(&ok(&["cat", &log], b"")), "a\nb\nc\nd\ne\n");

    // One damaged checksummed copy: the other is used, verify names it, repair rewrites it.
    let mut bytes = std::fs::read(&head).expect("read HEAD");
    bytes[192] ^= 0x04;
    std::fs::write(&head, &bytes).expect("write HEAD");
    let out = run(&["verify", &log], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("byte 192"), "{}", text(&out.stderr));
    ok(&["verify", &log, "--repair"], b"");
    ok(&["verify", &log], b"");
}

/// One flipped bit in either checksummed copy of the watermark cannot lower it. After one
/// `--ack` run the older copy still holds the watermark written at open (0), which recovery
/// used to trust alone when the newer copy was damaged: with the last acknowledged record
/// damaged too, `produce` then cut that record as a torn tail and reused its offset. Now
/// `verify` calls it corrupt (not torn) and `produce` refuses.
#[test]
fn a_flip_in_either_watermark_copy_keeps_the_records_below_it_acknowledged() {
    for slot in [192usize, 224] {
        let (_temp, dir, log) = log_dir();
        assert_eq!(acks(&ok(&["produce", &log, "--ack"], b"a\nb\nc\nd\ne\n")).last(), Some(&5));
        let head = dir.join("HEAD");
        let mut bytes = std::fs::read(&head).expect("read HEAD");
        bytes[slot + 3] ^= 0x02;
        std::fs::write(&head, &bytes).expect("write HEAD");
        let segment = dir.join("00000000000000000000.seg");
        set_commit_word(&segment, record_positions(&segment)[4], 0);
        let context = format!("HEAD byte {}", slot + 3);

        let out = run(&["verify", &log], b"");
        assert_eq!(out.status.code(), Some(1), "{context}");
        let err = text(&out.stderr);
        assert!(err.contains("corrupt") && !err.contains("torn") && err.contains("offset 4"), "{context}: {err}");
        let out = run(&["produce", &log, "--ack"], b"NEW\n");
        assert_ne!(out.status.code(), Some(0), "{context}: produce cut an acknowledged record: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("verify --repair"), "{context}: {}", text(&out.stderr));
        let out = run(&["cat", &log], b"");
        assert_ne!(out.status.code(), Some(0), "{context}");
        assert_eq!(text(&out.stdout), "a\nb\nc\nd\n", "{context}");
    }
}

/// Damage in a sealed (older) segment: `cat` fails naming it instead of printing the records
/// before it and exiting 0, `cat --follow` fails instead of hanging there, and
/// `verify --repair` cuts there (it used to answer "nothing to repair"), after which
/// `verify` is sound and `produce` works.
#[test]
fn damage_in_a_sealed_segment_stops_cat_and_follow_with_an_error_and_repair_cuts_it() {
    let (_temp, dir, log) = log_dir();
    {
        let opts = shoal::log::LogOptions::default().segment_bytes(64 << 10).max_record_bytes(1024);
        let mut appender = shoal::log::Appender::open(&dir, opts).expect("open");
        for i in 0..3000u32 {
            appender.append(format!("r{i}").as_bytes()).expect("append");
        }
        appender.sync().expect("sync");
    }
    let segment = dir.join("00000000000000000000.seg");
    let positions = record_positions(&segment);
    assert!(positions.len() > 100 && positions.len() < 3000, "several segments");
    let k = positions.len() / 2;
    set_commit_word(&segment, positions[k], 0);

    let out = run(&["cat", &log], b"");
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().count(), k);
    assert!(text(&out.stderr).contains("00000000000000000000.seg"), "{}", text(&out.stderr));

    let mut child = shoal()
        .args(["cat", &log, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cat --follow");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let status = wait_until(&mut child, Instant::now() + std::time::Duration::from_secs(20), "cat --follow");
    assert!(!status.success());
    assert_eq!(text(&stdout.join().expect("stdout")).lines().count(), k);
    assert!(text(&stderr.join().expect("stderr")).contains(&format!("byte {}", positions[k])));

    let out = run(&["verify", &log], b"");
    assert_eq!(out.status.code(), Some(1));
    let repaired = text(&ok(&["verify", &log, "--repair"], b""));
    assert!(repaired.contains(&format!("dropping offset {k} onward")), "{repaired}");
    assert!(repaired.contains(&format!("); offsets {k} to 2999 dropped")), "{repaired}");
    ok(&["verify", &log], b"");
    ok(&["produce", &log], b"after\n");
    let all = text(&ok(&["cat", &log], b""));
    assert_eq!(all.lines().count(), k + 1);
    assert_eq!(all.lines().last(), Some("after"));
}
