//! What opening a log cuts, it says: a torn tail (a crash mid-append after the commit word
//! reached the file) and the bytes of an append that never completed (a crash before the
//! commit word) are each cut with a `tracing` warning naming the segment file, the byte
//! position and the offset the log goes on from. The command line shows those warnings on
//! stderr; here a capturing subscriber collects them.

mod common;

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use shoal::log::{format, Appender, Durability, IoBackend, LogOptions, Offset};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use common::{record_positions, segment_files, small_opts};

/// The events of one thread, as (level, message).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(Level, String)>>>);

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = String::new();
        event.record(&mut Message(&mut text));
        self.0.lock().expect("capture lock").push((*event.metadata().level(), text));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Opens the log in `dir` under a capturing subscriber; returns the appender's next offset
/// and the warnings it logged.
fn open_capturing(dir: &Path, opts: LogOptions) -> (Offset, Vec<String>) {
    let capture = Capture::default();
    let next = tracing::subscriber::with_default(capture.clone(), || {
        let log = Appender::open(dir, opts).expect("reopen");
        let next = log.next_offset();
        log.close().expect("close");
        next
    });
    let events = capture.0.lock().expect("capture lock").clone();
    (next, events.into_iter().filter(|(level, _)| *level <= Level::WARN).map(|(_, m)| m).collect())
}

/// Four records synced and one more past the watermark; returns the segment file and the
/// last record's (position, payload length).
fn four_durable_and_one_more(dir: &Path) -> (std::path::PathBuf, (usize, usize)) {
    let mut log = Appender::open(dir, small_opts(IoBackend::Syscalls).durability(Durability::Never)).expect("open");
    for i in 0..4 {
        log.append(format!("record {i}").as_bytes()).expect("append");
    }
    log.sync().expect("sync");
    log.append(&[b'x'; 200]).expect("append the last record");
    drop(log);
    let seg = segment_files(dir)[0].clone();
    let records = record_positions(&std::fs::read(&seg).expect("read segment"));
    assert_eq!(records.len(), 5);
    (seg, records[4])
}

#[test]
fn a_torn_tail_cut_at_open_is_reported_with_what_was_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (seg, (position, _)) = four_durable_and_one_more(dir.path());
    // The commit word reached the file, the payload did not.
    let file = OpenOptions::new().write(true).open(&seg).expect("open segment");
    file.write_all_at(&[0u8; 100], (position + format::RECORD_HEADER_BYTES) as u64).expect("tear");
    drop(file);
    let (next, warnings) = open_capturing(dir.path(), small_opts(IoBackend::Syscalls));
    assert_eq!(next, Offset(4));
    let line = warnings.iter().find(|w| w.contains("torn tail")).unwrap_or_else(|| panic!("no warning: {warnings:?}"));
    for needle in [seg.display().to_string(), format!("byte {position}"), "offset 4".to_string()] {
        assert!(line.contains(&needle), "{needle:?} missing from {line:?}");
    }
}

#[test]
fn an_unfinished_append_cleared_at_open_is_reported_with_what_was_cleared() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (seg, (position, len)) = four_durable_and_one_more(dir.path());
    // A crash before the last record's commit word was stored: its other bytes stay behind.
    let file = OpenOptions::new().write(true).open(&seg).expect("open segment");
    file.write_all_at(&0u32.to_le_bytes(), position as u64).expect("clear the commit word");
    drop(file);
    let (next, warnings) = open_capturing(dir.path(), small_opts(IoBackend::Syscalls));
    assert_eq!(next, Offset(4));
    let line =
        warnings.iter().find(|w| w.contains("never completed")).unwrap_or_else(|| panic!("no warning: {warnings:?}"));
    for needle in [seg.display().to_string(), format!("byte {position}"), "offset 4".to_string()] {
        assert!(line.contains(&needle), "{needle:?} missing from {line:?}");
    }
    assert!(len > 0);
    // A clean reopen says nothing.
    let (_, warnings) = open_capturing(dir.path(), small_opts(IoBackend::Syscalls));
    assert!(warnings.is_empty(), "{warnings:?}");
}
