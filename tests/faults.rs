//! Fault tests of the durable log: torn tails at every byte, bit flips, truncated and foreign
//! segment files, a newer format version, a second appender (same and other process), a full
//! disk on a small tmpfs, and garbage files. Every case that touches I/O runs with both io
//! backends. Set `SHOAL_TEST_SEED` to replay the random cases.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal::log::{
    format, repair, stats, verify, AppendError, Appender, Durability, IoBackend, LogError, LogOptions, Offset, Reader,
    RecoveryMode, TailCut, Writers,
};

use common::{
    backend_name, child_command, child_mode, copy_dir, header_of, read_all, record_positions, report, segment_files,
    small_opts, wait_for_report, BACKENDS,
};

fn seed() -> u64 {
    let seed = std::env::var("SHOAL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("fault test seed: SHOAL_TEST_SEED={seed}");
    seed
}

/// Payload of record `i`: varied lengths, never empty, text only.
fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("record-{i}-").into_bytes();
    p.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, (i * 7) % 53));
    p
}

fn exclusive(backend: IoBackend) -> LogOptions {
    small_opts(backend).writers(Writers::Exclusive)
}

fn opts(backend: IoBackend, mode: RecoveryMode) -> LogOptions {
    small_opts(backend).recovery_mode(mode)
}

/// Opens an appender, waiting out a lock held only by a copy of our own descriptor: a
/// `flock` belongs to the open file, and a child that another test forks in this process
/// holds a copy of every descriptor until it execs (`O_CLOEXEC` closes them only then), so a
/// log closed a moment ago can still be locked by our own pid for that instant.
fn open_log(dir: impl AsRef<Path>, opts: LogOptions) -> Result<Appender, LogError> {
    let own = std::process::id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Appender::open(dir.as_ref(), opts) {
            Err(LogError::Locked { holder, .. })
                if holder == format!("another appender (pid {own})") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// Writes records `0..n` with `payload`, syncs and closes; returns the payloads.
fn write_log(dir: &Path, backend: IoBackend, n: usize) -> Vec<Vec<u8>> {
    let mut log = open_log(dir, small_opts(backend)).expect("open a new log");
    let payloads: Vec<Vec<u8>> = (0..n).map(payload).collect();
    for p in &payloads {
        log.append(p).expect("append");
    }
    log.sync().expect("sync");
    payloads
}

/// Reads records until the end or an error; returns them and the error.
fn read_until_error(dir: &Path) -> (Vec<Vec<u8>>, Option<LogError>) {
    let mut reader = match Reader::open(dir) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut out = Vec::new();
    let first = reader.next_offset().0;
    // Bounded: far more than any log here holds.
    for _ in 0..1_000_000 {
        match reader.next() {
            Ok(Some(rec)) => {
                assert_eq!(rec.offset().0, first + out.len() as u64, "offsets are not dense");
                out.push(rec.payload().to_vec());
            }
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
    panic!("reader never reached the end");
}

fn file_name(path: &Path) -> PathBuf {
    PathBuf::from(path.file_name().expect("file name"))
}

/// Asserts `e` is corruption of `path` at `position`, offset `offset`, and says so in text.
fn assert_corruption(e: &LogError, path: &Path, position: usize, offset: u64, context: &str) {
    match e {
        LogError::Corruption { path: p, position: pos, offset: off, .. } => {
            assert_eq!((p.as_path(), *pos, *off), (path, position as u64, offset), "{context}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(&path.display().to_string()) && text.contains(&format!("byte {position}")),
                "{context}: {text}"
            );
        }
        other => panic!("{context}: expected corruption at {} byte {position}, got {other:?}", path.display()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tear {
    /// The record's bytes from the position on are zero (the commit word stays).
    Zero,
    /// The file ends at the position.
    Truncate,
}

/// A crash mid-append at every byte of the last record: the commit word reached the file,
/// the rest of the record from byte `cut` on did not. Reopening cuts exactly that record.
#[test]
fn torn_last_record_at_every_byte_position() {
    for backend in BACKENDS {
        let pristine = tempfile::tempdir().expect("temp dir");
        // Four durable records, then one appended after the last sync: a crash can tear it.
        {
            let mut log = open_log(pristine.path(), small_opts(backend).durability(Durability::Never)).expect("open");
            for i in 0..4 {
                log.append(&payload(i)).expect("append");
            }
            log.sync().expect("sync");
            log.append(&payload(45)).expect("append the last record");
        }
        assert_eq!(
            stats(pristine.path()).expect("stats").durable_offset,
            4,
            "the last record must be past the watermark"
        );
        let seg_name = file_name(&segment_files(pristine.path())[0]);
        let bytes = std::fs::read(pristine.path().join(&seg_name)).expect("read segment");
        let records = record_positions(&bytes);
        assert_eq!(records.len(), 5);
        let (position, len) = records[4];
        let stride = format::record_stride(len);
        let segment_bytes = header_of(&pristine.path().join(&seg_name)).segment_bytes;
        let expected: Vec<Vec<u8>> = (0..4).map(payload).collect();

        for tear in [Tear::Zero, Tear::Truncate] {
            for cut in 4..stride {
                let context = format!("{backend:?} {tear:?} at byte {cut} of a {stride}-byte record");
                let scratch = tempfile::tempdir().expect("temp dir");
                copy_dir(pristine.path(), scratch.path());
                let seg = scratch.path().join(&seg_name);
                let file = OpenOptions::new().write(true).open(&seg).expect("open segment");
                match tear {
                    Tear::Zero => file.write_all_at(&vec![0u8; stride - cut], (position + cut) as u64).expect("zero"),
                    Tear::Truncate => file.set_len((position + cut) as u64).expect("truncate"),
                }
                drop(file);
                // Only the padding lost: the record is whole.
                let whole = tear == Tear::Zero && cut >= format::RECORD_HEADER_BYTES + len;

                // A reader never returns the torn record.
                let (read, err) = read_until_error(scratch.path());
                if whole {
                    assert_eq!((read.len(), err.is_none()), (5, true), "{context}: {err:?}");
                } else {
                    assert_eq!(read, expected, "{context}: reader before recovery ({err:?})");
                }

                // Strict refuses to open and changes nothing.
                match open_log(scratch.path(), opts(backend, RecoveryMode::Strict)) {
                    Ok(_) if whole => {}
                    Err(LogError::TornTail { path, position: p, offset, .. }) if !whole => {
                        assert_eq!((path, p, offset), (seg.clone(), position as u64, 4), "{context}");
                    }
                    other => panic!("{context}: strict open gave {other:?}"),
                }

                let mut log = open_log(scratch.path(), opts(backend, RecoveryMode::TruncateTail))
                    .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
                if whole {
                    assert_eq!(log.recovery().cut, None, "{context}");
                    assert_eq!(log.next_offset(), Offset(5), "{context}");
                } else {
                    assert_eq!(
                        log.recovery().cut,
                        Some(TailCut {
                            path: seg.clone(),
                            position: position as u64,
                            offset: 4,
                            records_dropped: 0,
                            torn: true
                        }),
                        "{context}"
                    );
                    assert_eq!(log.next_offset(), Offset(4), "{context}");
                }
                log.append(b"after recovery").expect("append after recovery");
                log.sync().expect("sync");
                drop(log);
                assert_eq!(std::fs::metadata(&seg).expect("stat").len(), segment_bytes, "{context}: length restored");
                let mut want = if whole { (0..4).chain([45]).map(payload).collect() } else { expected.clone() };
                want.push(b"after recovery".to_vec());
                assert_eq!(read_all(scratch.path()).unwrap_or_else(|e| panic!("{context}: {e}")), want, "{context}");
                assert!(verify(scratch.path()).expect("verify").is_sound(), "{context}");
            }
        }
    }
}

/// A crash before the commit word was stored leaves a record's other bytes behind the tail.
/// The next appender writes shorter records over them; readers and a strict reopen must not
/// trip over the stale bytes.
#[test]
fn unpublished_record_left_by_a_crash_is_overwritten_cleanly() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_log(dir.path(), backend, 4);
        let seg = segment_files(dir.path())[0].clone();
        let bytes = std::fs::read(&seg).expect("read segment");
        let (last, len) = *record_positions(&bytes).last().expect("records");
        let tail = last + format::record_stride(len);
        // What a killed appender leaves for offset 4: header fields and payload, no commit word.
        let stale_payload = vec![b'z'; 300];
        let mut stale = Vec::new();
        stale.extend_from_slice(&0u32.to_le_bytes());
        let mut fields = [0u8; 24];
        fields[0..8].copy_from_slice(&4u64.to_le_bytes());
        fields[8..16].copy_from_slice(&shoal::log::now_ns().to_le_bytes());
        let crc = format::record_crc(300, &fields, &stale_payload);
        stale.extend_from_slice(&crc.to_le_bytes());
        stale.extend_from_slice(&fields);
        stale.extend_from_slice(&stale_payload);
        OpenOptions::new().write(true).open(&seg).expect("open").write_all_at(&stale, tail as u64).expect("write");

        let mut log = open_log(dir.path(), small_opts(backend)).expect("reopen");
        assert_eq!(log.next_offset(), Offset(4), "{backend:?}");
        log.append(b"short").expect("append");
        log.sync().expect("sync");
        // A reader while the appender is open sees exactly the five records.
        let mut want = written.clone();
        want.push(b"short".to_vec());
        assert_eq!(read_all(dir.path()).unwrap_or_else(|e| panic!("{backend:?}: reader: {e}")), want);
        drop(log);
        let log = open_log(dir.path(), opts(backend, RecoveryMode::Strict))
            .unwrap_or_else(|e| panic!("{backend:?}: a cleanly closed log must open in Strict mode: {e}"));
        assert_eq!(log.next_offset(), Offset(5));
        drop(log);
        assert!(verify(dir.path()).expect("verify").is_sound(), "{backend:?}");
    }
}

/// Random bit flips in records below the durable watermark: opening refuses with corruption
/// naming the segment and byte position, `verify` and readers report it, and
/// `TruncateCorrupt` opens with every record before it.
#[test]
fn bit_flips_below_the_durable_watermark_are_corruption() {
    let mut rng = StdRng::seed_from_u64(seed());
    for backend in BACKENDS {
        let pristine = tempfile::tempdir().expect("temp dir");
        let n = 200;
        let written = write_log(pristine.path(), backend, n);
        assert_eq!(stats(pristine.path()).expect("stats").durable_offset, n as u64);
        let seg_name = file_name(&segment_files(pristine.path())[0]);
        let records = record_positions(&std::fs::read(pristine.path().join(&seg_name)).expect("read"));
        assert_eq!(records.len(), n, "the test wants every record in one segment");
        for _ in 0..30 {
            let i = rng.gen_range(0..n);
            let (position, len) = records[i];
            // Any byte the checksum and commit word cover (the zero padding is not covered).
            let byte = position + rng.gen_range(0..format::RECORD_HEADER_BYTES + len);
            let bit = rng.gen_range(0..8);
            let context = format!("{backend:?}: record {i} at {position}, flip bit {bit} of byte {byte}");
            let scratch = tempfile::tempdir().expect("temp dir");
            copy_dir(pristine.path(), scratch.path());
            let seg = scratch.path().join(&seg_name);
            let file = OpenOptions::new().read(true).write(true).open(&seg).expect("open segment");
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, byte as u64).expect("read byte");
            file.write_all_at(&[b[0] ^ (1 << bit)], byte as u64).expect("flip");
            drop(file);

            let report = verify(scratch.path()).expect("verify");
            assert!(!report.is_sound(), "{context}: verify found nothing");
            assert_eq!(
                (report.problems[0].path.clone(), report.problems[0].position),
                (seg.clone(), position as u64),
                "{context}"
            );

            let (read, err) = read_until_error(scratch.path());
            assert_eq!(read[..], written[..i], "{context}: reader");
            assert_corruption(&err.expect("the reader reports the damage"), &seg, position, i as u64, &context);

            for mode in [RecoveryMode::TruncateTail, RecoveryMode::Strict] {
                match open_log(scratch.path(), opts(backend, mode)) {
                    Err(e) => assert_corruption(&e, &seg, position, i as u64, &format!("{context}, {mode:?}")),
                    Ok(_) => panic!("{context}: {mode:?} opened a log with corruption below the durable watermark"),
                }
            }

            let mut log = open_log(scratch.path(), opts(backend, RecoveryMode::TruncateCorrupt))
                .unwrap_or_else(|e| panic!("{context}: TruncateCorrupt: {e}"));
            assert_eq!(
                log.recovery().cut,
                Some(TailCut {
                    path: seg.clone(),
                    position: position as u64,
                    offset: i as u64,
                    records_dropped: (n - 1 - i) as u64,
                    torn: false
                }),
                "{context}"
            );
            assert_eq!(log.next_offset(), Offset(i as u64), "{context}");
            log.append(b"after the cut").expect("append");
            log.sync().expect("sync");
            drop(log);
            let mut want = written[..i].to_vec();
            want.push(b"after the cut".to_vec());
            assert_eq!(read_all(scratch.path()).unwrap_or_else(|e| panic!("{context}: {e}")), want, "{context}");
        }
    }
}

/// A flip in an older, sealed segment: `verify` and readers name that segment and position.
#[test]
fn bit_flip_in_an_older_segment_is_reported() {
    let mut rng = StdRng::seed_from_u64(seed());
    let dir = tempfile::tempdir().expect("temp dir");
    let written = write_log(dir.path(), IoBackend::Auto, 3000);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3, "the test wants several segments, got {segs:?}");
    let records = record_positions(&std::fs::read(&segs[0]).expect("read"));
    let i = rng.gen_range(0..records.len());
    let (position, len) = records[i];
    let byte = position + rng.gen_range(0..format::RECORD_HEADER_BYTES + len);
    let file = OpenOptions::new().read(true).write(true).open(&segs[0]).expect("open");
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, byte as u64).expect("read");
    file.write_all_at(&[b[0] ^ 0x40], byte as u64).expect("write");
    let report = verify(dir.path()).expect("verify");
    assert_eq!((report.problems[0].path.clone(), report.problems[0].position), (segs[0].clone(), position as u64));
    assert_eq!(report.records_after_cut, (written.len() - i - 1) as u64);
    let (read, err) = read_until_error(dir.path());
    assert_eq!(read[..], written[..i]);
    assert_corruption(&err.expect("reader error"), &segs[0], position, i as u64, "older segment");
    // Repair cuts there and keeps everything before.
    let repaired = repair(dir.path()).expect("repair");
    assert_eq!(repaired.cut, Some((segs[0].clone(), position as u64, i as u64)));
    assert_eq!(read_all(dir.path()).expect("read after repair")[..], written[..i]);
}

/// Segment files cut short: mid-record below the watermark (corruption), right after the last
/// record (nothing lost), an older sealed segment, and shorter than a header.
#[test]
fn truncated_segment_files() {
    for backend in BACKENDS {
        let pristine = tempfile::tempdir().expect("temp dir");
        let written = write_log(pristine.path(), backend, 3000);
        let segs: Vec<PathBuf> = segment_files(pristine.path()).iter().map(|p| file_name(p)).collect();
        // The last segment in use is the one before the prepared one.
        let in_use: Vec<&PathBuf> = segs
            .iter()
            .filter(|s| header_of(&pristine.path().join(s)).base_offset != format::BASE_OFFSET_UNSET)
            .collect();
        assert!(in_use.len() >= 3, "want several segments in use");
        let tail_name = in_use[in_use.len() - 1].clone();
        let tail_base = header_of(&pristine.path().join(&tail_name)).base_offset as usize;
        let tail_records = record_positions(&std::fs::read(pristine.path().join(&tail_name)).expect("read"));
        let segment_bytes = header_of(&pristine.path().join(&tail_name)).segment_bytes;

        // (a) The tail segment cut in the middle of a durable record.
        let k = tail_records.len() / 2;
        let (position, _) = tail_records[k];
        let scratch = tempfile::tempdir().expect("temp dir");
        copy_dir(pristine.path(), scratch.path());
        let tail = scratch.path().join(&tail_name);
        OpenOptions::new().write(true).open(&tail).expect("open").set_len(position as u64 + 20).expect("truncate");
        let context = format!("{backend:?}: tail cut inside record {}", tail_base + k);
        match open_log(scratch.path(), small_opts(backend)) {
            Err(e) => assert_corruption(&e, &tail, position, (tail_base + k) as u64, &context),
            Ok(_) => panic!("{context}: opened although durable records are missing"),
        }
        let (read, err) = read_until_error(scratch.path());
        assert_eq!(read[..], written[..tail_base + k], "{context}");
        assert_corruption(&err.expect("reader error"), &tail, position, (tail_base + k) as u64, &context);
        let report = verify(scratch.path()).expect("verify");
        assert_eq!(
            (report.problems[0].path.clone(), report.problems[0].position),
            (tail.clone(), position as u64),
            "{context}"
        );
        let log = open_log(scratch.path(), opts(backend, RecoveryMode::TruncateCorrupt)).expect("TruncateCorrupt");
        assert_eq!(log.next_offset(), Offset((tail_base + k) as u64), "{context}");
        drop(log);
        assert_eq!(std::fs::metadata(&tail).expect("stat").len(), segment_bytes, "{context}: length restored");
        assert_eq!(read_all(scratch.path()).expect("read")[..], written[..tail_base + k], "{context}");

        // (b) The tail segment cut right after its last record: nothing is lost.
        let (last, len) = *tail_records.last().expect("records");
        let scratch = tempfile::tempdir().expect("temp dir");
        copy_dir(pristine.path(), scratch.path());
        let tail = scratch.path().join(&tail_name);
        OpenOptions::new()
            .write(true)
            .open(&tail)
            .expect("open")
            .set_len((last + format::record_stride(len)) as u64)
            .expect("truncate");
        let mut log = open_log(scratch.path(), small_opts(backend))
            .unwrap_or_else(|e| panic!("{backend:?}: a log whose tail file lost only zeros must open: {e}"));
        assert_eq!(log.next_offset(), Offset(written.len() as u64));
        log.append(b"more").expect("append");
        log.sync().expect("sync");
        drop(log);
        assert_eq!(std::fs::metadata(&tail).expect("stat").len(), segment_bytes);
        let mut want = written.clone();
        want.push(b"more".to_vec());
        assert_eq!(read_all(scratch.path()).expect("read"), want);

        // (c) An older, sealed segment cut short: readers and verify name it.
        let older_name = in_use[0].clone();
        let older_records = record_positions(&std::fs::read(pristine.path().join(&older_name)).expect("read"));
        let (position, _) = older_records[older_records.len() / 3];
        let scratch = tempfile::tempdir().expect("temp dir");
        copy_dir(pristine.path(), scratch.path());
        let older = scratch.path().join(&older_name);
        OpenOptions::new().write(true).open(&older).expect("open").set_len(position as u64 + 12).expect("truncate");
        let (read, err) = read_until_error(scratch.path());
        assert_eq!(read[..], written[..older_records.len() / 3]);
        match err {
            Some(LogError::Corruption { path, .. }) => assert_eq!(path, older),
            other => panic!("{backend:?}: reader over a truncated older segment gave {other:?}"),
        }
        let report = verify(scratch.path()).expect("verify");
        assert_eq!(report.problems.first().map(|p| p.path.clone()), Some(older.clone()));

        // (d) A segment shorter than its header: not a segment.
        let scratch = tempfile::tempdir().expect("temp dir");
        copy_dir(pristine.path(), scratch.path());
        let tail = scratch.path().join(&tail_name);
        OpenOptions::new().write(true).open(&tail).expect("open").set_len(10).expect("truncate");
        match open_log(scratch.path(), small_opts(backend)) {
            Err(LogError::NotASegment { path, .. }) => assert_eq!(path, tail),
            other => panic!("{backend:?}: open over a 10-byte segment gave {other:?}"),
        }
        // A reader reads the segments before it, then stops there.
        match read_until_error(scratch.path()).1 {
            Some(LogError::NotASegment { path, .. }) => assert_eq!(path, tail),
            other => panic!("{backend:?}: reader over a 10-byte segment gave {other:?}"),
        }
        assert!(verify(scratch.path()).expect("verify").problems.iter().any(|p| p.path == tail));
    }
}

/// Files named like segments that are not: text, a damaged header, a header naming another
/// segment. Each is `NotASegment` naming the file.
#[test]
fn file_named_like_a_segment_that_is_not_one() {
    for backend in BACKENDS {
        // Alone in an empty directory.
        let dir = tempfile::tempdir().expect("temp dir");
        let foreign = dir.path().join("00000000000000000000.seg");
        std::fs::write(&foreign, b"hello, I am not a shoal segment\n").expect("write");
        expect_not_a_segment(dir.path(), &foreign, backend, true);

        // Next to a real log, named as the next segment.
        let dir = tempfile::tempdir().expect("temp dir");
        write_log(dir.path(), backend, 10);
        let segs = segment_files(dir.path());
        let foreign = dir.path().join("00000000000000000007.seg");
        std::fs::write(&foreign, vec![0x5au8; 8192]).expect("write");
        // No segment is prepared yet (the active one is far from half full): readers see it.
        expect_not_a_segment(dir.path(), &foreign, backend, true);
        std::fs::remove_file(&foreign).expect("remove");

        // A real segment whose header checksum is damaged.
        let file = OpenOptions::new().read(true).write(true).open(&segs[0]).expect("open");
        // Flip the byte (writing a fixed value is no damage when the byte already holds it:
        // this one is part of the creation timestamp).
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, 50).expect("read header byte");
        file.write_all_at(&[byte[0] ^ 0xff], 50).expect("damage header");
        expect_not_a_segment(dir.path(), &segs[0], backend, true);

        // A real segment under another segment's name.
        let dir = tempfile::tempdir().expect("temp dir");
        write_log(dir.path(), backend, 10);
        let segs = segment_files(dir.path());
        let renamed = dir.path().join("00000000000000000001.seg");
        std::fs::copy(&segs[0], &renamed).expect("copy");
        expect_not_a_segment(dir.path(), &renamed, backend, true);
    }
}

fn expect_not_a_segment(dir: &Path, file: &Path, backend: IoBackend, reader_sees_it: bool) {
    match open_log(dir, small_opts(backend)) {
        Err(e @ LogError::NotASegment { .. }) => {
            let LogError::NotASegment { path, .. } = &e else { unreachable!() };
            assert_eq!(path, file, "{e}");
            assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        }
        other => panic!("{backend:?}: opening a log with {} gave {other:?}", file.display()),
    }
    if reader_sees_it {
        // At open when it is the first segment, else once the reader gets to it.
        match read_until_error(dir).1 {
            Some(LogError::NotASegment { path, .. }) => assert_eq!(path, file),
            other => panic!("reader over {} gave {other:?}", file.display()),
        }
    }
    let report = verify(dir).expect("verify");
    assert!(report.problems.iter().any(|p| p.path == file && !p.repairable), "{:?}", report.problems);
}

/// A segment whose header says a newer format version (with a valid header checksum).
#[test]
fn newer_format_version_is_unsupported() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("temp dir");
        write_log(dir.path(), backend, 10);
        let seg = segment_files(dir.path())[0].clone();
        let file = OpenOptions::new().read(true).write(true).open(&seg).expect("open");
        let mut header = [0u8; format::SEGMENT_HEADER_USED_BYTES];
        file.read_exact_at(&mut header, 0).expect("read header");
        let newer = format::FORMAT_VERSION + 1;
        header[8..12].copy_from_slice(&newer.to_le_bytes());
        header[12..16].fill(0);
        let crc = crc32c::crc32c(&header);
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&header, 0).expect("write header");
        drop(file);
        let check = |e: LogError, who: &str| match &e {
            LogError::UnsupportedVersion { path, found, supported } => {
                assert_eq!((path, *found, *supported), (&seg, newer, format::FORMAT_VERSION), "{who}");
                assert!(e.to_string().contains("upgrade"), "{who}: {e}");
            }
            other => panic!("{backend:?} {who}: expected UnsupportedVersion, got {other:?}"),
        };
        check(open_log(dir.path(), small_opts(backend)).expect_err("open must refuse"), "appender");
        check(Reader::open(dir.path()).expect_err("reader must refuse"), "reader");
        let report = verify(dir.path()).expect("verify");
        assert!(
            report.problems.iter().any(|p| p.path == seg && p.what.contains(&format!("version {newer}"))),
            "{:?}",
            report.problems
        );
    }
}

/// `repair` never removes a segment file it cannot read. A cut removes every segment after
/// it, and it used to remove a newer-format segment (then tell the user to upgrade) or a
/// segment under another segment's name (which `verify` had said to move out), intact
/// records and all. Now the cut is refused, naming the file, and every file stays as it was.
#[test]
fn repair_never_removes_a_segment_it_cannot_read() {
    let make = |dir: &Path| {
        let payloads = write_log(dir, IoBackend::Syscalls, 3000);
        let segs = segment_files(dir);
        assert!(segs.len() >= 4, "several segments: {segs:?}");
        (payloads, segs)
    };
    let snapshot = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        segment_files(dir).into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("read segment"))).collect()
    };
    // A newer format (valid checksum) in the last segment in use, and the same segment
    // moved under a later name.
    for case in ["newer", "renamed"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, segs) = make(dir.path());
        let target = segs[segs.len() - 2].clone(); // the last in use (the last is prepared)
        let unreadable = if case == "newer" {
            let file = OpenOptions::new().read(true).write(true).open(&target).expect("open");
            let mut header = [0u8; format::SEGMENT_HEADER_USED_BYTES];
            file.read_exact_at(&mut header, 0).expect("read header");
            header[8..12].copy_from_slice(&(format::FORMAT_VERSION + 1).to_le_bytes());
            header[12..16].fill(0);
            let crc = crc32c::crc32c(&header);
            header[12..16].copy_from_slice(&crc.to_le_bytes());
            file.write_all_at(&header, 0).expect("write header");
            target
        } else {
            let renamed = dir.path().join("00000000000000000099.seg");
            std::fs::rename(&target, &renamed).expect("rename");
            renamed
        };
        let before = snapshot(dir.path());
        let report = repair(dir.path()).expect("repair runs");
        assert_eq!(report.cut, None, "{case}: {report:?}");
        assert!(
            report.unrepairable.iter().any(|p| p.path == unreadable && p.what.contains("not cut")),
            "{case}: {:?}",
            report.unrepairable
        );
        assert_eq!(snapshot(dir.path()), before, "{case}: repair changed segment files");
    }
}

/// An appender never appends after a sealed segment whose records are missing: a deleted
/// middle segment, or one truncated inside its records, makes the open fail naming the file
/// (it used to append and acknowledge records that `verify --repair` would then drop). A
/// sealed segment cut only after its last record loses nothing and opens.
#[test]
fn an_appender_refuses_a_missing_or_truncated_sealed_segment() {
    let make = || {
        let dir = tempfile::tempdir().expect("temp dir");
        let payloads = write_log(dir.path(), IoBackend::Syscalls, 3000);
        let segs = segment_files(dir.path());
        assert!(segs.len() >= 4, "several segments: {segs:?}");
        (dir, payloads, segs)
    };
    // Deleted.
    let (dir, _, segs) = make();
    std::fs::remove_file(&segs[1]).expect("remove");
    match open_log(dir.path(), small_opts(IoBackend::Syscalls)) {
        Err(e @ LogError::Inconsistent { .. }) => {
            let LogError::Inconsistent { path, .. } = &e else { unreachable!() };
            assert_eq!(path, &segs[2], "{e}");
            assert!(e.to_string().contains("missing"), "{e}");
        }
        other => panic!("a deleted middle segment: {:?}", other.map(|_| "opened")),
    }
    // Cut inside its records.
    let (dir, _, segs) = make();
    let file = OpenOptions::new().write(true).open(&segs[1]).expect("open");
    file.set_len(32 << 10).expect("truncate");
    match open_log(dir.path(), small_opts(IoBackend::Syscalls)) {
        Err(e @ LogError::Inconsistent { .. }) => {
            let LogError::Inconsistent { path, .. } = &e else { unreachable!() };
            assert_eq!(path, &segs[1], "{e}");
        }
        other => panic!("a sealed segment cut inside its records: {:?}", other.map(|_| "opened")),
    }
    // Cut after its last record: nothing lost.
    let (dir, payloads, segs) = make();
    let (at, len) = *record_positions(&std::fs::read(&segs[1]).expect("read")).last().expect("records");
    let end = (at + format::record_stride(len)) as u64;
    OpenOptions::new().write(true).open(&segs[1]).expect("open").set_len(end).expect("truncate");
    let mut log = open_log(dir.path(), small_opts(IoBackend::Syscalls)).expect("a seal-only loss opens");
    assert_eq!(log.next_offset(), Offset(3000));
    log.append(b"after").expect("append");
    drop(log);
    let (read, err) = read_until_error(dir.path());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(read.len(), 3001);
    assert_eq!(read[..3000], payloads[..]);
}

/// A sealed segment whose header is damaged does not hide the segments before it: a reader
/// reads every record before it, then stops with the error naming it (it used to fail at
/// open, reading nothing; `cat` printed 0 records).
#[test]
fn a_damaged_segment_header_stops_a_reader_there_not_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let payloads = write_log(dir.path(), IoBackend::Syscalls, 3000);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 4, "several segments: {segs:?}");
    let target = segs[2].clone();
    let expected = header_of(&target).base_offset as usize;
    let file = OpenOptions::new().read(true).write(true).open(&target).expect("open");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 40).expect("read");
    file.write_all_at(&[byte[0] ^ 0x01], 40).expect("damage the header");
    drop(file);
    let (read, err) = read_until_error(dir.path());
    assert_eq!(read.len(), expected, "{err:?}");
    assert_eq!(read[..], payloads[..expected]);
    match err {
        Some(LogError::NotASegment { path, .. }) => assert_eq!(path, target),
        other => panic!("{other:?}"),
    }
}

/// An exclusive appender is the only one within a process: a second (exclusive or shared)
/// is refused, and a shared one keeps an exclusive one out.
#[test]
fn second_appender_in_the_same_process_is_locked() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = open_log(dir.path(), small_opts(backend)).expect("a shared appender");
        match Appender::open(dir.path(), exclusive(backend)) {
            Err(e @ LogError::Locked { .. }) => assert!(e.to_string().contains("appenders of the shared log"), "{e}"),
            other => panic!("{backend:?}: an exclusive appender next to a shared one got {other:?}"),
        }
        drop(shared);
        let mut first = open_log(dir.path(), exclusive(backend)).expect("first appender");
        first.append(b"one").expect("append");
        let lock = dir.path().join("LOCK");
        let check = |r: Result<Appender, LogError>| match r {
            Err(e @ LogError::Locked { .. }) => {
                let LogError::Locked { path, holder } = &e else { unreachable!() };
                assert_eq!((path, holder.clone()), (&lock, format!("another appender (pid {})", std::process::id())));
                assert!(e.to_string().contains("locked"), "{e}");
            }
            other => panic!("{backend:?}: a second appender got {other:?}"),
        };
        check(Appender::open(dir.path(), exclusive(backend)));
        check(Appender::open(dir.path(), small_opts(backend)));
        let path = dir.path().to_path_buf();
        check(std::thread::spawn(move || Appender::open(path, exclusive(backend))).join().expect("thread"));
        assert!(matches!(repair(dir.path()), Err(LogError::Locked { .. })), "repair must not run under an appender");
        first.sync().expect("sync");
        drop(first);
        let mut second = open_log(dir.path(), small_opts(backend)).expect("open after the first closed");
        assert_eq!(second.append(b"two").expect("append"), Offset(1));
    }
}

/// An exclusive appender is the only one across processes, and a killed holder releases
/// the lock.
#[test]
fn second_appender_in_another_process_is_locked() {
    match child_mode().as_deref() {
        Some("hold") => {
            let dir = std::env::var("SHOAL_LOCK_DIR").expect("SHOAL_LOCK_DIR");
            let mut log = open_log(&dir, exclusive(IoBackend::Auto)).expect("child appender");
            log.append(b"from the child").expect("append");
            log.sync().expect("sync");
            report("holding");
            // Hold the lock until the parent closes stdin (or kills us).
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
            std::process::exit(0);
        }
        Some("try") => {
            let dir = std::env::var("SHOAL_LOCK_DIR").expect("SHOAL_LOCK_DIR");
            match open_log(&dir, exclusive(IoBackend::Auto)) {
                Err(LogError::Locked { holder, .. }) => report(&format!("locked {holder}")),
                Err(e) => report(&format!("error {e}")),
                Ok(_) => report("opened"),
            }
            std::process::exit(0);
        }
        _ => {}
    }
    let test = "second_appender_in_another_process_is_locked";
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("temp dir");
        // The child holds the log; we are refused.
        let mut child = child_command(test, "hold")
            .env("SHOAL_LOCK_DIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let _out = wait_for_report(&mut child, "holding");
        match open_log(dir.path(), exclusive(backend)) {
            Err(LogError::Locked { holder, .. }) => {
                assert_eq!(holder, format!("another appender (pid {})", child.id()))
            }
            other => panic!("{backend:?}: opening while another process appends gave {other:?}"),
        }
        assert!(matches!(repair(dir.path()), Err(LogError::Locked { .. })));
        // A killed holder's lock goes with it; its records stay.
        child.kill().expect("kill child");
        child.wait().expect("wait child");
        let mut log = open_log(dir.path(), exclusive(backend)).expect("open after the holder died");
        assert_eq!(log.next_offset(), Offset(1));

        // We hold the log; a child is refused and names us.
        log.append(b"from the parent").expect("append");
        let out = child_command(test, "try").env("SHOAL_LOCK_DIR", dir.path()).output().expect("run child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = format!("locked another appender (pid {})", std::process::id());
        assert!(
            stdout.lines().any(|l| common::parse_report(l) == Some(want.as_str())),
            "{backend:?}: child said {stdout:?}, wanted {want:?}"
        );
        drop(log);
        assert_eq!(read_all(dir.path()).expect("read"), vec![b"from the child".to_vec(), b"from the parent".to_vec()]);
        let _ = backend_name(backend);
    }
}

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "shoal-test"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount(8) to make a small tmpfs for the full-disk test: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} ({}): the full-disk test needs root (CAP_SYS_ADMIN) to mount a \
             small filesystem; run the tests as root",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .output()
            .expect("run mount");
        assert!(out.status.success(), "remount failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg("-l").arg(self.path()).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("warning: could not unmount the test tmpfs at {}", self.path().display());
        }
    }
}

/// Appends until a new segment cannot be allocated; returns the error that stopped the
/// appends and the payload that was refused.
fn append_until_full(log: &mut Appender, from: usize, written: &mut Vec<Vec<u8>>) -> (LogError, Vec<u8>) {
    // Bounded: the filesystems here hold far fewer records.
    for i in from..from + 1_000_000 {
        let p = format!("full-disk-{i}-{}", "p".repeat(i % 90)).into_bytes();
        match log.append(&p) {
            Ok(offset) => {
                assert_eq!(offset, Offset(written.len() as u64));
                written.push(p);
            }
            Err(AppendError::Log(e)) => return (e, p),
            Err(e) => panic!("unexpected append error {e}"),
        }
    }
    panic!("the small filesystem never filled up");
}

/// A full disk: appends stop with `NoSpace` naming the file, nothing appended before is
/// lost, and freeing space (deleting a file, growing the filesystem) lets appends go on.
#[test]
fn full_disk_stops_appends_with_no_space_and_loses_nothing() {
    for backend in BACKENDS {
        let fs = Tmpfs::mount("1m");
        let ballast = fs.path().join("ballast");
        std::fs::write(&ballast, vec![1u8; 256 << 10]).expect("write ballast");
        let dir = fs.path().join("log");
        let opts = small_opts(backend).durability(Durability::Batch);
        let mut written = Vec::new();
        let mut log = open_log(&dir, opts).expect("open on tmpfs");
        let (e, refused) = append_until_full(&mut log, 0, &mut written);
        match &e {
            LogError::NoSpace { path, .. } => {
                assert!(path.starts_with(&dir), "{e}");
                assert!(e.to_string().contains("no space"), "{e}");
            }
            other => panic!("{backend:?}: a full disk gave {other:?}, not NoSpace"),
        }
        assert!(written.len() > 1000, "{backend:?}: only {} records fit", written.len());
        // Still full: the next append says so again; everything before is durable.
        assert!(matches!(log.append(&refused), Err(AppendError::Log(LogError::NoSpace { .. }))), "{backend:?}");
        log.sync().expect("sync after NoSpace");
        assert_eq!(log.durable_offset(), Offset(written.len() as u64));
        drop(log);
        assert_eq!(read_all(&dir).expect("read after NoSpace"), written, "{backend:?}");

        // Reopen while still full: every record is there.
        let mut log = open_log(&dir, opts).expect("reopen on a full disk");
        assert_eq!(log.next_offset(), Offset(written.len() as u64));
        assert_eq!(read_all(&dir).expect("read"), written);

        // Free space by deleting a file: appends continue, into new segments.
        std::fs::remove_file(&ballast).expect("remove ballast");
        let before = written.len();
        let (e, _) = append_until_full(&mut log, before, &mut written);
        assert!(matches!(e, LogError::NoSpace { .. }), "{backend:?}: {e}");
        assert!(
            written.len() > before + 1000,
            "{backend:?}: freeing 256 KiB let only {} appends through",
            written.len() - before
        );

        // Grow the filesystem: appends continue again.
        fs.remount("2m");
        let before = written.len();
        let (e, _) = append_until_full(&mut log, before, &mut written);
        assert!(matches!(e, LogError::NoSpace { .. }), "{backend:?}: {e}");
        assert!(
            written.len() > before + 4000,
            "{backend:?}: growing by 1 MiB let only {} appends through",
            written.len() - before
        );
        log.sync().expect("sync");
        assert_eq!(log.durable_offset(), Offset(written.len() as u64));
        drop(log);
        assert_eq!(read_all(&dir).expect("read at the end"), written, "{backend:?}");
        assert!(verify(&dir).expect("verify").is_sound());
    }
}

/// Runs every entry point over a directory and checks none panics. Returns whether the
/// appender opened, the reader's error, and the verify report's problem count.
fn survive(dir: &Path, backend: IoBackend, context: &str) -> (bool, Option<String>, usize) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let problems = verify(dir).map(|r| r.problems.len()).unwrap_or(usize::MAX);
        let _ = stats(dir);
        let (read, err) = read_until_error(dir);
        let _ = read;
        let mut opened = false;
        for mode in [RecoveryMode::Strict, RecoveryMode::TruncateTail, RecoveryMode::TruncateCorrupt] {
            let scratch = tempfile::tempdir().expect("temp dir");
            copy_dir(dir, scratch.path());
            if let Ok(mut log) = open_log(scratch.path(), opts(backend, mode)) {
                opened = true;
                // An appender that opened over garbage must work.
                let at = log.append(b"after garbage").expect("append after opening garbage");
                log.sync().expect("sync");
                drop(log);
                let mut reader = Reader::open(scratch.path()).expect("reader over a log that opened");
                reader.seek(at).expect("seek to the new record");
                let rec = reader.next().expect("read the new record").expect("the new record");
                assert_eq!((rec.offset(), rec.payload()), (at, &b"after garbage"[..]), "{context}: {mode:?}");
            }
        }
        let scratch = tempfile::tempdir().expect("temp dir");
        copy_dir(dir, scratch.path());
        let _ = repair(scratch.path());
        let _ = verify(scratch.path());
        (opened, err.map(|e| e.to_string()), problems)
    }));
    result.unwrap_or_else(|_| panic!("{context}: a log entry point panicked"))
}

/// A valid segment header with the given fields and checksum.
fn header_bytes(seq: u64, base_offset: u64, segment_bytes: u64, index_entries: u32, index_interval: u32) -> Vec<u8> {
    format::SegmentHeader {
        seq,
        base_offset,
        segment_bytes,
        index_entries,
        index_interval,
        created_ns: 1,
        activated_ns: 2,
    }
    .encode()
    .to_vec()
}

/// Garbage into open, verify, stats, repair and readers: errors, never a panic.
#[test]
fn garbage_files_give_errors_not_panics() {
    let mut rng = StdRng::seed_from_u64(seed());
    let seg0 = "00000000000000000000.seg";
    for backend in BACKENDS {
        // An empty file.
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(seg0), b"").expect("write");
        let (opened, read_err, problems) = survive(dir.path(), backend, "empty segment file");
        assert!(!opened && read_err.is_some() && problems > 0, "empty file accepted");

        // Random bytes.
        for round in 0..8 {
            let dir = tempfile::tempdir().expect("temp dir");
            let len = rng.gen_range(0..70_000);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            std::fs::write(dir.path().join(seg0), &bytes).expect("write");
            let (opened, read_err, problems) = survive(dir.path(), backend, &format!("random file {round}"));
            assert!(!opened && read_err.is_some() && problems > 0, "random bytes accepted as a segment");
        }

        // Valid headers with random fields over random or hostile bodies.
        for round in 0..12 {
            let dir = tempfile::tempdir().expect("temp dir");
            let segment_bytes =
                [64u64 << 10, 4096, 8192, 1 << 30, rng.gen_range(1..16_384) * 4096][rng.gen_range(0..5)];
            let base = [0, 1, u64::MAX - 1, u64::MAX - 3, rng.gen()][rng.gen_range(0..5)];
            let entries = [0, 1, 15, rng.gen_range(0..100_000), u32::MAX / 2][rng.gen_range(0..5)];
            let interval = [8, 4096, rng.gen_range(1..1000) * 8][rng.gen_range(0..3)];
            let mut bytes = header_bytes(0, base, segment_bytes, entries, interval);
            let file_len = rng.gen_range(64..140_000usize);
            bytes.resize(file_len, 0);
            let data = format::data_start(entries).min(file_len);
            match round % 3 {
                0 => rng.fill(&mut bytes[64..]),
                1 => {
                    // Commit words claiming huge lengths.
                    let mut at = format::align_up(data, 8);
                    while at + 4 <= file_len {
                        let len =
                            [0x7fff_fff0u32, 0x7fff_fffe, rng.gen_range(0..0x7fff_ffff), 40_000][rng.gen_range(0..4)];
                        bytes[at..at + 4].copy_from_slice(&(format::COMMIT_BIT | len).to_le_bytes());
                        at += rng.gen_range(1..64) * 8;
                    }
                }
                _ => {
                    // Random index entries pointing anywhere.
                    let mut at = format::SEGMENT_HEADER_BYTES;
                    while at + 8 <= data.min(file_len) && at < 64 << 10 {
                        bytes[at..at + 8].copy_from_slice(&rng.gen::<u64>().to_le_bytes());
                        at += 8;
                    }
                }
            }
            std::fs::write(dir.path().join(seg0), &bytes).expect("write");
            // A garbage HEAD too, now and then.
            if rng.gen_bool(0.3) {
                std::fs::write(dir.path().join("HEAD"), (0..4096).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>())
                    .expect("write");
            }
            let context = format!(
                "header round {round}: segment_bytes {segment_bytes}, base {base}, entries {entries}, interval {interval}, \
                 file {file_len} bytes"
            );
            survive(dir.path(), backend, &context);
            // Seeking anywhere in such a log does not panic either.
            let sought = catch_unwind(AssertUnwindSafe(|| {
                if let Ok(mut r) = Reader::open(dir.path()) {
                    for target in [0, 1, 100, base, base.wrapping_add(5), u64::MAX] {
                        let _ = r.seek(Offset(target));
                        let _ = r.next();
                    }
                }
            }));
            assert!(sought.is_ok(), "{context}: seek panicked");
        }

        // A real log whose records are then overwritten with huge lengths: readers stop with
        // an error at the first one, and never return its bytes.
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_log(dir.path(), backend, 50);
        let seg = segment_files(dir.path())[0].clone();
        let records = record_positions(&std::fs::read(&seg).expect("read"));
        let (position, _) = records[20];
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open")
            .write_all_at(&(format::COMMIT_BIT | 0x7fff_fff0).to_le_bytes(), position as u64)
            .expect("write");
        let (read, err) = read_until_error(dir.path());
        assert_eq!(read[..], written[..20]);
        assert_corruption(&err.expect("reader error"), &seg, position, 20, "huge length");
        survive(dir.path(), backend, "huge length in a real log");
    }
}

/// A sealed segment that lost only its tail after its last record (the end marker and the
/// zeros after it, no record bytes): readers go on into the next segment, an appender opens
/// and appends, and `repair` writes the end marker back without dropping a record. Before,
/// readers could never pass the segment ("segment file is truncated") and a repair dropped
/// every record after it.
#[test]
fn a_sealed_segment_that_lost_only_its_end_marker_loses_no_record() {
    let backend = IoBackend::Auto;
    let pristine = tempfile::tempdir().expect("temp dir");
    let written = write_log(pristine.path(), backend, 3000);
    let segments = segment_files(pristine.path());
    assert!(segments.len() >= 4, "want several segments");
    for which in [0usize, 1] {
        let scratch = tempfile::tempdir().expect("temp dir");
        copy_dir(pristine.path(), scratch.path());
        let files = segment_files(scratch.path());
        let target = &files[which];
        let bytes = std::fs::read(target).expect("read");
        let (last, len) = *record_positions(&bytes).last().expect("records");
        let end = last + format::record_stride(len);
        assert_eq!(u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4")), format::END_OF_SEGMENT);
        OpenOptions::new().write(true).open(target).expect("open").set_len(end as u64).expect("truncate");
        let context = format!("segment {which} cut after its last record");

        let (read, err) = read_until_error(scratch.path());
        assert!(err.is_none(), "{context}: {err:?}");
        assert_eq!(read, written, "{context}");
        let report = verify(scratch.path()).expect("verify");
        assert_eq!(report.problems.len(), 1, "{context}: {:?}", report.problems);
        assert!(
            report.problems[0].repairable && report.problems[0].path == *target,
            "{context}: {:?}",
            report.problems
        );
        assert_eq!(report.records_after_cut, 0, "{context}");
        let repaired = repair(scratch.path()).expect("repair");
        assert_eq!((repaired.cut.clone(), repaired.records_dropped), (None, 0), "{context}: {repaired:?}");
        assert_eq!(repaired.seals_restored, vec![target.clone()], "{context}");
        assert!(verify(scratch.path()).expect("verify").is_sound(), "{context}");
        let mut log = open_log(scratch.path(), small_opts(backend)).expect("open after repair");
        log.append(b"more").expect("append");
        log.sync().expect("sync");
        drop(log);
        let mut want = written.clone();
        want.push(b"more".to_vec());
        assert_eq!(read_all(scratch.path()).expect("read"), want, "{context}");
    }
    // The tail's predecessor cut the same way: the appender's open writes its marker back.
    let scratch = tempfile::tempdir().expect("temp dir");
    copy_dir(pristine.path(), scratch.path());
    let in_use: Vec<PathBuf> = segment_files(scratch.path())
        .into_iter()
        .filter(|p| header_of(p).base_offset != format::BASE_OFFSET_UNSET)
        .collect();
    let prev = &in_use[in_use.len() - 2];
    let bytes = std::fs::read(prev).expect("read");
    let (last, len) = *record_positions(&bytes).last().expect("records");
    OpenOptions::new()
        .write(true)
        .open(prev)
        .expect("open")
        .set_len((last + format::record_stride(len)) as u64)
        .expect("truncate");
    let mut log = open_log(scratch.path(), small_opts(backend)).expect("open over a predecessor without its marker");
    log.append(b"more").expect("append");
    log.sync().expect("sync");
    drop(log);
    assert!(verify(scratch.path()).expect("verify").is_sound());
    assert_eq!(read_all(scratch.path()).expect("read").len(), written.len() + 1);
}

/// A zeroed commit word inside a sealed segment: a reader and a tailer report corruption
/// naming the segment and byte (before, the reader stopped there as if at the end and a
/// tailer waited forever), `verify` reports it, and `repair` cuts there.
#[test]
fn an_empty_slot_inside_a_sealed_segment_is_corruption_for_every_reader() {
    let backend = IoBackend::Auto;
    let dir = tempfile::tempdir().expect("temp dir");
    let written = write_log(dir.path(), backend, 3000);
    let seg0 = segment_files(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg0).expect("read");
    let positions = record_positions(&bytes);
    let k = positions.len() / 2;
    let position = positions[k].0;
    bytes[position..position + 4].fill(0);
    std::fs::write(&seg0, &bytes).expect("write");

    let (read, err) = read_until_error(dir.path());
    assert_eq!(read[..], written[..k]);
    assert_corruption(&err.expect("reader error"), &seg0, position, k as u64, "reader");
    let mut tailer = shoal::log::Tailer::open(dir.path()).expect("tailer");
    let mut got = 0;
    let err = loop {
        match tailer.next(Some(std::time::Duration::from_secs(5))) {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("the tailer waited at the damage instead of reporting it"),
            Err(e) => break e,
        }
    };
    assert_eq!(got, k);
    assert_corruption(&err, &seg0, position, k as u64, "tailer");
    let report = verify(dir.path()).expect("verify");
    assert_eq!(report.problems[0].path, seg0);
    assert_eq!(report.problems[0].position, position as u64);
    assert_eq!(report.records_after_cut, (written.len() - k - 1) as u64);
    let repaired = repair(dir.path()).expect("repair");
    assert_eq!(repaired.cut, Some((seg0.clone(), position as u64, k as u64)));
    assert_eq!(repaired.records_dropped, (written.len() - k - 1) as u64);
    assert_eq!(repaired.last_offset_dropped, Some(written.len() as u64 - 1));
    assert!(verify(dir.path()).expect("verify").is_sound());
    assert_eq!(read_all(dir.path()).expect("read")[..], written[..k]);
}

/// A prepared segment (never activated, no record in it) cut short outside shoal: the next
/// open removes it and the appender rolls into a whole one; appending never writes past a
/// mapping (found by fuzzing `decode_segment`: the appender rolled into the short segment and
/// wrote past its end).
#[test]
fn a_prepared_segment_cut_short_is_replaced_not_written_past() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = small_opts(IoBackend::Syscalls);
    let mut log = Appender::open(dir.path(), opts).expect("open");
    log.append(b"first").expect("append");
    // Past half of the segment, the next one is prepared.
    let big = vec![1u8; opts.max_record_bytes];
    let bigs = opts.segment_bytes as usize / 2 / opts.max_record_bytes + 1;
    for _ in 0..bigs {
        log.append(&big).expect("append");
    }
    log.sync().expect("sync");
    log.close().expect("close");
    let prepared: Vec<PathBuf> = segment_files(dir.path())
        .into_iter()
        .filter(|p| header_of(p).base_offset == format::BASE_OFFSET_UNSET)
        .collect();
    assert_eq!(prepared.len(), 1, "the appender prepares one segment ahead: {prepared:?}");
    let short = header_of(&prepared[0]).data_start() as u64 + 8;
    OpenOptions::new().write(true).open(&prepared[0]).expect("open").set_len(short).expect("truncate");

    let mut log = Appender::open(dir.path(), opts).expect("open after the cut");
    let payload = vec![7u8; 1000];
    let records = 3 * opts.segment_bytes / 1000;
    for _ in 0..records {
        log.append(&payload).expect("append across rollovers");
    }
    log.sync().expect("sync");
    log.close().expect("close");
    let all = read_all(dir.path()).expect("read back");
    assert_eq!(all.len(), 1 + bigs + records as usize);
    assert_eq!(all[0], b"first");
    assert!(all[1..=bigs].iter().all(|r| *r == big));
    assert!(all[1 + bigs..].iter().all(|r| *r == payload));
    shoal::log::verify(dir.path()).map(|r| assert!(r.is_sound(), "{:?}", r.problems)).expect("verify");
}
