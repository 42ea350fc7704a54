//! Model-based fuzzing of the log (after sled's `fuzz_model.rs`): an [`Appender`] in a
//! temporary directory against a `Vec<Vec<u8>>`, with appends, syncs, reopens, reads, seeks
//! and a crash that tears the tail. Records may carry key text and an event time (format
//! version 2's extension block); the model holds them next to each payload, and `SeekTime`
//! checks [`Reader::seek_time`] against the append times read back (which must never go
//! down).
//!
//! `TearTail` simulates a crash: it copies the log directory while the appender is still
//! running (what the page cache holds at that instant, with the `HEAD` watermark as it
//! stood), drops the appender, and continues on the copy. If the last record is not durable
//! (at or past both the watermark the appender acknowledged and the one in the copied
//! `HEAD`), it is damaged: a bit flip, a zeroed suffix (a torn write), or a cut file. Reopening
//! must succeed, keep every other record byte for byte, and drop the damaged one exactly when
//! bytes its CRC covers changed.
//!
//! `Damage` closes the log and damages any file of it (flip any byte, zero any 8-byte word,
//! truncate any file; anywhere, or near a chosen record), optionally kills a repair midway
//! (a fail point that stops it at a step, leaving the files as a SIGKILL there would), and
//! checks the property: every acknowledged (durable) record survives byte for byte, or the
//! damage is reported by `verify` and by a reader that stops at it; never a silent loss,
//! never a wrong byte. Then `repair` (run twice when the first was stopped) must leave a
//! sound log holding a prefix of the model, and an appender must go on from its end.

#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::log::format::{AlignedBuf, Extensions, SegmentHeader, Slot, BASE_OFFSET_UNSET};
use shoal::log::{AppendError, Appender, Durability, IoBackend, LogOptions, NewRecord, Offset, Reader, RecoveryMode};

#[derive(Arbitrary, Debug)]
enum Where {
    /// Byte `at` (modulo the file's length) of file `file` (modulo the files of the log).
    Anywhere { file: u8, at: u32 },
    /// `delta` bytes into record `record` (modulo the records held).
    NearRecord { record: u16, delta: u8 },
}

#[derive(Arbitrary, Debug)]
enum Hurt {
    Flip {
        mask: u8,
    },
    ZeroWord,
    /// Cut the file there.
    Truncate,
}

#[derive(Arbitrary, Debug)]
struct Damage {
    at: Where,
    hurt: Hurt,
    /// Stop the first repair at this step (index into `KILL_STEPS`, modulo), if set.
    kill_repair: Option<u8>,
}

const KILL_STEPS: [&str; 6] =
    ["repair-seal", "repair-journal", "repair-cut", "repair-unlink", "repair-head", "repair-done"];

/// Largest payload the model's log accepts; appends above it must fail cleanly.
const MAX_RECORD_BYTES: usize = 256;
/// Operations per input, to keep executions fast.
const OPS_MAX: usize = 48;

#[derive(Arbitrary, Debug)]
enum Tear {
    /// XOR one covered byte with a non-zero mask.
    Flip { at: u16, mask: u8 },
    /// Zero the record from a byte on (a write that reached the disk only in part).
    ZeroFrom { at: u16 },
    /// Cut the file inside the record.
    Cut { at: u16 },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Append(Vec<u8>),
    /// `count` generated records of `len` bytes: reaches segment rollovers quickly.
    AppendMany {
        count: u8,
        len: u8,
        seed: u8,
    },
    AppendBatch(Vec<Vec<u8>>),
    /// A record with key text (cut to 40 bytes) and maybe an event time.
    AppendKeyed {
        key: Vec<u8>,
        event_time: Option<u64>,
        payload: Vec<u8>,
    },
    /// Seek to the append time of record `i` (modulo the records held), and past the last.
    SeekTime(u16),
    Sync,
    Reopen,
    TearTail(Tear),
    ReadAll,
    Seek(u16),
    Damage(Damage),
}

#[derive(Arbitrary, Debug)]
struct Input {
    batch: bool,
    uring: bool,
    ops: Vec<Op>,
}

fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("shoal-fuzz").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

/// The key text and event time of a record.
type Extra = (Option<Vec<u8>>, Option<u64>);

struct Model {
    records: Vec<Vec<u8>>,
    /// `extras[i]`: record i's key text and event time (as long as `records`).
    extras: Vec<Extra>,
    /// Records below this were acknowledged durable.
    durable: u64,
}

fn open(dir: &Path, opts: LogOptions) -> Appender {
    match Appender::open(dir, opts) {
        Ok(log) => log,
        Err(e) => panic!("reopening the log failed: {e}"),
    }
}

fn check_append(model: &mut Model, result: Result<Offset, AppendError>, payload: &[u8]) {
    check_append_ext(model, result, payload, (None, None));
}

/// As [`check_append`] for a record with extensions (which count toward the largest record).
fn check_append_ext(model: &mut Model, result: Result<Offset, AppendError>, payload: &[u8], extra: Extra) {
    let ext = Extensions { key_bytes: extra.0.as_deref(), event_time_ns: extra.1 };
    if payload.len() + ext.encoded_bytes() > MAX_RECORD_BYTES {
        assert!(matches!(result, Err(AppendError::TooLarge { .. })), "{result:?}");
        return;
    }
    match result {
        Ok(offset) => assert_eq!(offset.0, model.records.len() as u64),
        Err(e) => panic!("append failed: {e}"),
    }
    model.records.push(payload.to_vec());
    model.extras.push(extra);
}

fn read_all(dir: &Path, model: &Model) {
    let mut reader = Reader::open(dir).expect("open a reader");
    let mut i = 0usize;
    loop {
        match reader.next() {
            Ok(Some(record)) => {
                assert!(i < model.records.len(), "reader returned extra record {i}");
                assert_eq!(record.offset().0, i as u64);
                assert_eq!(record.payload(), &model.records[i][..], "record {i}");
                let (key, time) = &model.extras[i];
                assert_eq!((record.key_bytes(), record.event_time_ns()), (key.as_deref(), *time), "record {i}");
                i += 1;
            }
            Ok(None) => break,
            Err(e) => panic!("reading record {i}: {e}"),
        }
    }
    assert_eq!(i, model.records.len(), "reader stopped early");
}

/// Where the record with offset `want` lies and its size.
struct Located {
    path: std::path::PathBuf,
    position: usize,
    payload_len: usize,
    /// Bytes from the record's start to its payload's end (what its CRC covers, less padding).
    covered: usize,
    stride: usize,
}

/// Where the record with offset `want` lies.
fn locate(dir: &Path, want: u64) -> Option<Located> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "seg")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    names.sort();
    let mut in_use = Vec::new();
    for path in names {
        let bytes = std::fs::read(&path).ok()?;
        let header = SegmentHeader::decode(&bytes).ok()?;
        if header.base_offset == BASE_OFFSET_UNSET {
            break;
        }
        in_use.push((path, bytes, header));
    }
    for (path, bytes, header) in in_use {
        if header.base_offset > want {
            break;
        }
        let mut buf = AlignedBuf::from_bytes(&bytes);
        let region = buf.region();
        let mut position = header.data_start();
        let mut offset = header.base_offset;
        while let Ok(Slot::Record(r)) = region.decode(position, Some(offset), usize::MAX) {
            if offset == want {
                let covered = r.payload_position() - position + r.payload.len();
                return Some(Located { path, position, payload_len: r.payload.len(), covered, stride: r.stride });
            }
            position = r.next_position();
            offset += 1;
        }
    }
    None
}

/// Copies the regular files of `from` into a fresh directory (the crash image).
fn snapshot(from: &Path) -> tempfile::TempDir {
    let to = temp_dir();
    for entry in std::fs::read_dir(from).expect("list the log").flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        // A segment being prepared may be renamed away meanwhile: skip it.
        match std::fs::read(&path) {
            Ok(bytes) => std::fs::write(to.path().join(entry.file_name()), bytes).expect("write the snapshot"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("snapshot {}: {e}", path.display()),
        }
    }
    to
}

/// Damages the record at `position` of `path`; returns whether it must be gone.
fn damage(path: &Path, position: usize, covered: usize, stride: usize, tear: &Tear) -> bool {
    let mut bytes = std::fs::read(path).expect("read the segment");
    match *tear {
        Tear::Flip { at, mask } => {
            bytes[position + usize::from(at) % covered] ^= mask | 1;
            std::fs::write(path, &bytes).expect("write the segment");
            true
        }
        Tear::ZeroFrom { at } => {
            let from = position + usize::from(at) % covered;
            let changed = bytes[from..position + covered].iter().any(|&b| b != 0);
            bytes[from..position + stride].fill(0);
            std::fs::write(path, &bytes).expect("write the segment");
            changed
        }
        Tear::Cut { at } => {
            let len = position + usize::from(at) % (stride + 1);
            let file = std::fs::OpenOptions::new().write(true).open(path).expect("open the segment");
            file.set_len(len as u64).expect("cut the segment");
            (len & !7) < position + stride
        }
    }
}

/// The files of the log a damage may hit: segments (prepared ones included) and `HEAD`.
fn damageable_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list the log")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name.ends_with(".seg") && !name.starts_with('.')) || name == "HEAD"
        })
        .collect();
    files.sort();
    files
}

/// Applies a damage; returns what was hit (for messages), or `None` when there was nothing
/// to hit.
fn apply_damage(dir: &Path, model: &Model, damage: &Damage) -> Option<String> {
    let (path, at) = match damage.at {
        Where::Anywhere { file, at } => {
            let files = damageable_files(dir);
            if files.is_empty() {
                return None;
            }
            let path = files[usize::from(file) % files.len()].clone();
            let len = std::fs::metadata(&path).ok()?.len() as usize;
            if len == 0 {
                return None;
            }
            (path, at as usize % len)
        }
        Where::NearRecord { record, delta } => {
            if model.records.is_empty() {
                return None;
            }
            let k = usize::from(record) % model.records.len();
            let at = locate(dir, k as u64)?;
            (at.path, at.position + usize::from(delta))
        }
    };
    let mut bytes = std::fs::read(&path).ok()?;
    if at >= bytes.len() {
        return None;
    }
    match damage.hurt {
        Hurt::Flip { mask } => bytes[at] ^= mask | 1,
        Hurt::ZeroWord => {
            let word = at & !7;
            let end = (word + 8).min(bytes.len());
            bytes[word..end].fill(0);
        }
        Hurt::Truncate => bytes.truncate(at),
    }
    std::fs::write(&path, &bytes).expect("write the damaged file");
    Some(format!("{:?} at byte {at} of {}", damage.hurt, path.display()))
}

/// Reads the log to its first error: the records read (each checked against the model: a
/// wrong byte is a failure at once) and whether it stopped at an error.
fn read_checked(dir: &Path, model: &Model, what: &str) -> (usize, bool) {
    let mut reader = match Reader::open(dir) {
        Ok(r) => r,
        Err(_) => return (0, true),
    };
    let mut i = 0usize;
    loop {
        match reader.next() {
            Ok(Some(record)) => {
                assert_eq!(record.offset().0, i as u64, "{what}: offsets are dense");
                assert!(i < model.records.len(), "{what}: a record {i} that was never appended");
                assert_eq!(record.payload(), &model.records[i][..], "{what}: record {i} has wrong bytes");
                i += 1;
            }
            Ok(None) => return (i, false),
            Err(_) => return (i, true),
        }
    }
}

/// The `Damage` operation on a closed log; returns the appender reopened after the repair,
/// or `None` when the damage left a log that no repair can fix (reported as such).
fn damage_op(dir: &Path, opts: LogOptions, model: &mut Model, damage: &Damage) -> Option<Appender> {
    let Some(what) = apply_damage(dir, model, damage) else { return Some(open(dir, opts)) };
    let durable = (model.durable as usize).min(model.records.len());
    let report = shoal::log::verify(dir);
    let (read, stopped) = read_checked(dir, model, &what);
    if read < durable {
        // A durable record is not readable: the damage must be reported, by the reader and
        // by verify.
        assert!(stopped, "{what}: the reader stopped silently at {read} of {durable} durable records");
        assert!(
            report.as_ref().map_or(true, |r| !r.is_sound()),
            "{what}: verify calls the log sound but only {read} of {durable} durable records read"
        );
    }
    if let Some(step) = damage.kill_repair {
        std::env::set_var("SHOAL_FAIL_POINT", KILL_STEPS[usize::from(step) % KILL_STEPS.len()]);
        std::env::set_var("SHOAL_FAIL_POINT_ACTION", "error");
        let _ = shoal::log::repair(dir);
        std::env::remove_var("SHOAL_FAIL_POINT");
        std::env::remove_var("SHOAL_FAIL_POINT_ACTION");
        // What a stopped repair leaves never shows wrong bytes.
        let _ = read_checked(dir, model, &what);
    }
    let unrepairable = report.as_ref().map_or(true, |r| r.problems.iter().any(|p| !p.repairable));
    let repaired = match shoal::log::repair(dir) {
        Ok(r) => r,
        Err(_) if unrepairable => return None,
        Err(e) => panic!("{what}: repair failed: {e}"),
    };
    if !repaired.unrepairable.is_empty() {
        return None;
    }
    let after = shoal::log::verify(dir).expect("verify after a repair");
    assert!(after.is_sound(), "{what}: unsound after a repair: {:?} (repair: {repaired:?})", after.problems);
    let (kept, stopped) = read_checked(dir, model, &what);
    assert!(!stopped, "{what}: the reader fails after a repair");
    if kept < durable {
        // Durable records dropped by the repair: only when the damage was reported above.
        assert!(report.as_ref().map_or(true, |r| !r.is_sound()), "{what}: a repair dropped durable records silently");
    }
    model.records.truncate(kept);
    model.extras.truncate(kept);
    model.durable = model.durable.min(kept as u64);
    let log = match Appender::open(dir, opts) {
        Ok(log) => log,
        Err(e) => panic!("{what}: opening after a repair: {e} (repair: {repaired:?})"),
    };
    assert_eq!(log.next_offset().0, kept as u64, "{what}: the appender goes on after the kept records");
    Some(log)
}

fuzz_target!(|input: Input| {
    let opts = LogOptions::default()
        .segment_bytes(64 << 10)
        .max_record_bytes(MAX_RECORD_BYTES)
        .durability(if input.batch { Durability::Batch } else { Durability::Never })
        .io_backend(if input.uring { IoBackend::Auto } else { IoBackend::Syscalls })
        .recovery_mode(RecoveryMode::TruncateTail)
        .index_interval_bytes(256)
        .prefault(false);
    let mut dir = temp_dir();
    let mut log = Some(open(dir.path(), opts));
    let mut model = Model { records: Vec::new(), extras: Vec::new(), durable: 0 };

    for op in input.ops.iter().take(OPS_MAX) {
        let appender = log.as_mut().expect("the appender is open between operations");
        match op {
            Op::Append(payload) => {
                let payload = &payload[..payload.len().min(MAX_RECORD_BYTES + 64)];
                let result = appender.append(payload);
                check_append(&mut model, result, payload);
            }
            Op::AppendMany { count, len, seed } => {
                for i in 0..usize::from(*count) {
                    let payload: Vec<u8> =
                        (0..usize::from(*len)).map(|j| seed.wrapping_add((i * 31 + j) as u8)).collect();
                    let result = appender.append(&payload);
                    check_append(&mut model, result, &payload);
                }
            }
            Op::AppendBatch(payloads) => {
                let payloads: Vec<&[u8]> =
                    payloads.iter().take(16).map(|p| &p[..p.len().min(MAX_RECORD_BYTES + 64)]).collect();
                let first = model.records.len() as u64;
                let result = appender.append_batch(payloads.iter().copied());
                let fitting = payloads.iter().take_while(|p| p.len() <= MAX_RECORD_BYTES).count();
                match result {
                    Ok(range) => {
                        assert_eq!(fitting, payloads.len());
                        assert_eq!(range, Offset(first)..Offset(first + fitting as u64));
                    }
                    Err(AppendError::TooLarge { .. }) => assert!(fitting < payloads.len()),
                    Err(e) => panic!("append_batch failed: {e}"),
                }
                model.records.extend(payloads[..fitting].iter().map(|p| p.to_vec()));
                model.extras.resize(model.records.len(), (None, None));
                assert_eq!(appender.next_offset().0, model.records.len() as u64);
            }
            Op::AppendKeyed { key, event_time, payload } => {
                let key = &key[..key.len().min(40)];
                let payload = &payload[..payload.len().min(MAX_RECORD_BYTES + 64)];
                let mut record = NewRecord::new(payload).key(key);
                if let Some(t) = *event_time {
                    record = record.event_time(t);
                }
                let result = appender.append_record(&record);
                check_append_ext(&mut model, result, payload, (Some(key.to_vec()), *event_time));
            }
            Op::SeekTime(i) => {
                let mut reader = Reader::open(dir.path()).expect("open a reader");
                let mut times = Vec::with_capacity(model.records.len());
                while let Some(record) = reader.next().expect("read") {
                    times.push(record.timestamp_ns());
                }
                assert_eq!(times.len(), model.records.len());
                assert!(times.windows(2).all(|w| w[0] <= w[1]), "append times went down: {times:?}");
                let probes = match times.len() {
                    0 => vec![0, u64::MAX],
                    n => {
                        let t = times[usize::from(*i) % n];
                        vec![t, t.saturating_sub(1), t.saturating_add(1), times[n - 1].saturating_add(1), 0]
                    }
                };
                for ns in probes {
                    let want = times.iter().position(|&t| t >= ns).unwrap_or(times.len()) as u64;
                    assert_eq!(reader.seek_time(ns).expect("seek_time").0, want, "seek_time({ns}) over {times:?}");
                    match reader.next().expect("read after seek_time") {
                        Some(record) => assert_eq!(record.offset().0, want),
                        None => assert_eq!(want, times.len() as u64),
                    }
                }
            }
            Op::Sync => {
                let durable = appender.sync().expect("sync");
                assert_eq!(durable.0, model.records.len() as u64);
                model.durable = durable.0;
            }
            Op::Reopen => {
                drop(log.take());
                let reopened = open(dir.path(), opts);
                assert!(reopened.recovery().cut.is_none(), "a clean close left damage: {:?}", reopened.recovery());
                assert_eq!(reopened.next_offset().0, model.records.len() as u64);
                log = Some(reopened);
            }
            Op::TearTail(tear) => {
                let acked = model.durable.max(appender.durable_offset().0);
                let image = snapshot(dir.path());
                drop(log.take());
                dir = image;
                let len = model.records.len() as u64;
                let recorded = shoal::log::stats(dir.path()).expect("stats of the crash image").durable_offset;
                assert!(recorded <= len, "HEAD says {recorded} durable of {len} records");
                let durable = acked.max(recorded);
                let mut gone = false;
                if len > durable {
                    let last = len - 1;
                    let at = locate(dir.path(), last)
                        .unwrap_or_else(|| panic!("record {last} not found in the crash image"));
                    assert_eq!(at.payload_len, model.records[last as usize].len());
                    gone = damage(&at.path, at.position, at.covered, at.stride, tear);
                }
                let reopened = match Appender::open(dir.path(), opts) {
                    Ok(log) => log,
                    Err(e) => panic!(
                        "reopening after tearing record {} (durable {durable}, {tear:?}): {e}",
                        len.saturating_sub(1)
                    ),
                };
                if gone {
                    model.records.pop();
                    model.extras.pop();
                }
                assert_eq!(reopened.next_offset().0, model.records.len() as u64, "{:?}", reopened.recovery());
                model.durable = model.records.len() as u64;
                log = Some(reopened);
            }
            Op::ReadAll => read_all(dir.path(), &model),
            Op::Damage(damage) => {
                drop(log.take());
                match damage_op(dir.path(), opts, &mut model, damage) {
                    Some(reopened) => log = Some(reopened),
                    // A foreign or headless file: no repair can help; the run ends here.
                    None => return,
                }
            }
            Op::Seek(i) => {
                let len = model.records.len();
                let target = usize::from(*i) % (len + 1);
                let mut reader = Reader::open(dir.path()).expect("open a reader");
                reader.seek(Offset(target as u64)).expect("seek");
                match reader.next().expect("read after seek") {
                    Some(record) => {
                        assert!(target < len, "a record past the end at {target}");
                        assert_eq!(record.offset().0, target as u64);
                        assert_eq!(record.payload(), &model.records[target][..]);
                        assert_eq!(record.key_bytes(), model.extras[target].0.as_deref());
                    }
                    None => assert_eq!(target, len, "seek to {target} of {len} found nothing"),
                }
            }
        }
        if let Some(appender) = log.as_ref() {
            let durable = appender.durable_offset().0;
            assert!(durable <= model.records.len() as u64);
            assert!(durable >= model.durable.min(model.records.len() as u64));
            model.durable = model.durable.max(durable);
        }
    }
    // The end of every run: what is there is exactly the model.
    read_all(dir.path(), &model);
    drop(log);
    drop(dir);
});
