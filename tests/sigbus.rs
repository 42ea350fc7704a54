//! A segment file truncated by another program while shoal has it mapped: readers, tailers
//! and appenders get [`LogError::SegmentShrank`] naming the segment, and the `shoal` commands
//! exit 1 with one line saying so, instead of dying of `SIGBUS` (exit 135, no message). A
//! `SIGBUS` on memory that is not shoal's still kills the process as before.
//!
//! Each case truncates the active segment at its data start (a page boundary), so the page
//! under the reader's or appender's position lies wholly past the end of the file.

mod cli_support;
mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use shoal::log::{format, AppendError, Appender, IoBackend, LogError, Reader, Tailer};

use cli_support::{line_reader, next_line, shoal, text, wait_until, KillOnDrop, RUN_WAIT};
use common::{child_command, child_mode, header_of, report, segment_files, small_opts, wait_for_report, BACKENDS};

/// The segment records are appended to now: the newest one with a base offset.
fn active_segment(dir: &Path) -> PathBuf {
    segment_files(dir)
        .into_iter()
        .rev()
        .find(|p| header_of(p).base_offset != format::BASE_OFFSET_UNSET)
        .expect("an active segment")
}

/// Cuts `segment` at its data start: every record page is gone. Returns the new length.
fn truncate_records_away(segment: &Path) -> u64 {
    let data_start = header_of(segment).data_start() as u64;
    assert_eq!(data_start % 4096, 0, "the data start is page aligned");
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .expect("open the segment")
        .set_len(data_start)
        .expect("truncate");
    data_start
}

fn assert_shrank(err: &LogError, segment: &Path, what: &str) {
    match err {
        LogError::SegmentShrank { path, len_bytes, .. } => {
            assert_eq!(path, segment, "{what}: the error names the segment");
            assert_eq!(*len_bytes, header_of(segment).data_start() as u64, "{what}: the length now");
        }
        other => panic!("{what}: expected SegmentShrank, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&segment.display().to_string()), "{message}");
    assert!(message.contains("shoal verify --repair"), "the message says what to do: {message}");
}

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i:06}-{}", "x".repeat(90)).into_bytes()
}

/// (a) A `Reader` and a `Tailer` that caught up with the tail, while the appender in this
/// process keeps appending after the cut.
#[test]
fn a_segment_truncated_under_a_reader_and_a_tailer_is_an_error_naming_it() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut log = Appender::open(dir.path(), small_opts(backend)).expect("open");
        for i in 0..100 {
            log.append(&payload(i)).expect("append");
        }
        log.sync().expect("sync");
        let mut reader = Reader::open(dir.path()).expect("reader");
        let mut tailer = Tailer::open(dir.path()).expect("tailer");
        for i in 0..100 {
            assert_eq!(reader.next().expect("read").expect("a record").payload(), payload(i));
            assert_eq!(tailer.next(Some(Duration::ZERO)).expect("tail").expect("a record").payload(), payload(i));
        }
        assert!(reader.next().expect("at the tail").is_none());
        let segment = active_segment(dir.path());
        truncate_records_away(&segment);
        // The appender in this process writes on (into its own mapping) and wakes the tailer.
        let _ = log.append(b"after the cut");
        let err = reader.next().expect_err("the reader reports the shrunk segment");
        assert_shrank(&err, &segment, "reader");
        let err = tailer.next(Some(Duration::from_secs(5))).expect_err("the tailer reports the shrunk segment");
        assert_shrank(&err, &segment, "tailer");
        // Asked again, they say it again: the error is not a one-off.
        assert_shrank(&reader.next().expect_err("again"), &segment, "reader, again");
    }
}

/// A segment cut in the middle of its records under a reader and a tailer that are behind:
/// the record that straddles the cut (its bytes past the end read as zeros) is reported as
/// the truncation, not as a corrupt record to repair by cutting the log.
#[test]
fn a_segment_cut_mid_record_under_a_reader_is_an_error_naming_the_truncation() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut log = Appender::open(dir.path(), small_opts(IoBackend::Syscalls)).expect("open");
    for i in 0..200 {
        log.append(&payload(i)).expect("append");
    }
    log.sync().expect("sync");
    let mut reader = Reader::open(dir.path()).expect("reader");
    let mut tailer = Tailer::open(dir.path()).expect("tailer");
    for _ in 0..10 {
        reader.next().expect("read").expect("a record");
        tailer.next(Some(Duration::ZERO)).expect("tail").expect("a record");
    }
    let segment = active_segment(dir.path());
    let cut = header_of(&segment).data_start() as u64 + 8192 + 100; // inside a record
    std::fs::OpenOptions::new().write(true).open(&segment).expect("open").set_len(cut).expect("truncate");
    let err = loop {
        match reader.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the reader passed the cut"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, LogError::SegmentShrank { len_bytes, .. } if len_bytes == cut), "reader: {err:?}");
    let err = loop {
        match tailer.next(Some(Duration::from_secs(5))) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the tailer passed the cut"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, LogError::SegmentShrank { len_bytes, .. } if len_bytes == cut), "tailer: {err:?}");
}

/// (b) An `Appender` appending: the append after the one that hit the dead page fails, and
/// nothing written after the cut is ever acknowledged durable.
#[test]
fn a_segment_truncated_under_an_appender_fails_the_log_and_acks_nothing_after_the_cut() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut log = Appender::open(dir.path(), small_opts(backend)).expect("open");
        for i in 0..50 {
            log.append(&payload(i)).expect("append");
        }
        assert_eq!(log.sync().expect("sync").0, 50);
        let segment = active_segment(dir.path());
        truncate_records_away(&segment);
        let mut failed = None;
        // Bounded: the first append after the cut writes into the dead page, the next fails.
        for i in 50..60 {
            match log.append(&payload(i)) {
                Ok(_) => {}
                Err(AppendError::Log(e)) => {
                    failed = Some(e);
                    break;
                }
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        let err = failed.expect("an append fails once the segment shrank");
        assert_shrank(&err, &segment, "append");
        let err = log.sync().expect_err("nothing after the cut becomes durable");
        assert_shrank(&err, &segment, "sync");
        assert_eq!(log.durable_offset().0, 50, "the watermark never covers a record written after the cut");
        let err = log.append(b"more").expect_err("the log stays failed");
        assert!(matches!(err, AppendError::Log(LogError::SegmentShrank { .. })), "{err:?}");
        drop(log);
    }
}

/// (c) `shoal cat --follow` and `shoal produce` in child processes: both exit 1 with one
/// line naming the segment, instead of being killed by `SIGBUS`.
#[test]
fn cli_produce_and_cat_follow_exit_with_an_error_naming_the_truncated_segment() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = dir.path().join("L");
    let log_arg = log.to_str().expect("a UTF-8 path");
    let out = cli_support::run(&["produce", log_arg], b"a\nb\nc\n");
    assert!(out.status.success(), "produce: {}", text(&out.stderr));

    let mut cat = KillOnDrop(
        shoal()
            .args(["cat", log_arg, "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cat --follow"),
    );
    let cat_lines = line_reader(cat.0.stdout.take().expect("stdout"));
    let cat_err = cli_support::drain(cat.0.stderr.take().expect("stderr"));
    for want in ["a", "b", "c"] {
        assert_eq!(next_line(&cat_lines, "cat --follow"), want);
    }

    let mut produce = KillOnDrop(
        shoal()
            .args(["produce", log_arg])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn produce"),
    );
    let mut stdin = produce.0.stdin.take().expect("stdin");
    let produce_err = cli_support::drain(produce.0.stderr.take().expect("stderr"));
    stdin.write_all(b"d\n").and_then(|()| stdin.flush()).expect("write to produce");
    assert_eq!(next_line(&cat_lines, "cat --follow sees the running produce"), "d");

    let segment = active_segment(&log);
    truncate_records_away(&segment);
    // Lines after the cut: the first lands in the dead page, the next fails. produce may
    // exit (a broken pipe here) before all are written.
    let deadline = Instant::now() + RUN_WAIT;
    for i in 0..1000 {
        if stdin.write_all(format!("after-{i}\n").as_bytes()).and_then(|()| stdin.flush()).is_err() {
            break;
        }
        if produce.0.try_wait().expect("poll produce").is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let status = wait_until(&mut produce.0, Instant::now() + RUN_WAIT, "produce");
    let err = text(&produce_err.join().expect("produce stderr"));
    check_one_line_error(status, &err, &segment, "produce");

    let status = wait_until(&mut cat.0, Instant::now() + RUN_WAIT, "cat --follow");
    let err = text(&cat_err.join().expect("cat stderr"));
    check_one_line_error(status, &err, &segment, "cat --follow");
}

fn check_one_line_error(status: std::process::ExitStatus, err: &str, segment: &Path, what: &str) {
    assert_eq!(status.signal(), None, "{what} was killed by a signal ({status}); stderr: {err}");
    assert_eq!(status.code(), Some(1), "{what}: {status}; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    assert!(err.starts_with("shoal: "), "{what}: {err}");
    assert!(err.contains(&segment.display().to_string()), "{what}: names the segment: {err}");
    assert!(err.contains("shrank"), "{what}: says what happened: {err}");
}

/// The child of [`a_sigbus_outside_shoals_mappings_still_kills_the_process`]: with a log
/// open (so shoal's handler is installed and a segment registered), it touches a page past
/// the end of a file it mapped itself.
fn foreign_fault_child(dir: &Path) -> ! {
    let mut log = Appender::open(dir.join("log"), small_opts(IoBackend::Syscalls)).expect("open");
    log.append(b"x").expect("append");
    let mut reader = Reader::open(dir.join("log")).expect("reader");
    assert!(reader.next().expect("read").is_some());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join("foreign"))
        .expect("create the foreign file");
    file.set_len(4 * 4096).expect("size the foreign file");
    let map = memmap2::MmapOptions::new().len(4 * 4096).map_raw(&file).expect("map the foreign file");
    file.set_len(0).expect("truncate the foreign file");
    report("armed");
    // SAFETY: in bounds of the mapping; the page lies past the end of the file, so this
    // raises SIGBUS, which must kill the process.
    let byte = unsafe { std::ptr::read_volatile(map.as_ptr().add(2 * 4096)) };
    report(&format!("survived {byte}"));
    std::process::exit(0);
}

/// A `SIGBUS` on a mapping that is not a segment's still kills the process with `SIGBUS`.
/// `HEAD` cut to nothing under an appender and a tailer of this process: both keep going
/// (the page reads as zeros; the tailer falls back to its bounded sleeps), nothing is killed,
/// and every record appended is read back.
#[test]
fn a_head_page_truncated_under_an_appender_and_a_tailer_kills_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Appender::open(dir.path(), small_opts(IoBackend::Syscalls)).expect("open");
    log.append(&payload(0)).expect("append");
    let mut tailer = Tailer::open(dir.path()).expect("tailer");
    assert!(tailer.next(Some(Duration::from_secs(5))).expect("next").is_some());
    std::fs::OpenOptions::new().write(true).open(dir.path().join("HEAD")).expect("open HEAD").set_len(0).expect("cut");
    for i in 1..100 {
        log.append(&payload(i)).expect("append after HEAD was cut");
    }
    log.sync().expect("sync");
    for i in 1..100 {
        let record = tailer.next(Some(Duration::from_secs(5))).expect("next").expect("a record");
        assert_eq!(record.payload(), payload(i).as_slice());
    }
    log.close().expect("close");
}

#[test]
fn a_sigbus_outside_shoals_mappings_still_kills_the_process() {
    if let Some(mode) = child_mode() {
        assert_eq!(mode, "foreign-fault");
        foreign_fault_child(Path::new(&std::env::var("SHOAL_SIGBUS_DIR").expect("SHOAL_SIGBUS_DIR")));
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut child = KillOnDrop(
        child_command("a_sigbus_outside_shoals_mappings_still_kills_the_process", "foreign-fault")
            .env("SHOAL_SIGBUS_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child"),
    );
    let mut rest = wait_for_report(&mut child.0, "armed");
    let status = wait_until(&mut child.0, Instant::now() + RUN_WAIT, "the faulting child");
    let mut after = String::new();
    let _ = std::io::Read::read_to_string(&mut rest, &mut after);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "the child ended with {status}; it printed {after:?}");
}
