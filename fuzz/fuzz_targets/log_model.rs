//! Model-based fuzzing of the log (after sled's `fuzz_model.rs`): an [`Appender`] in a
//! temporary directory against a `Vec<Vec<u8>>`, with appends, syncs, reopens, reads, seeks
//! and a crash that tears the tail.
//!
//! `TearTail` simulates a crash: it copies the log directory while the appender is still
//! running (what the page cache holds at that instant, with the `HEAD` watermark as it
//! stood), drops the appender, and continues on the copy. If the last record is not durable
//! (at or past both the watermark the appender acknowledged and the one in the copied
//! `HEAD`), it is damaged: a bit flip, a zeroed suffix (a torn write), or a cut file. Reopening
//! must succeed, keep every other record byte for byte, and drop the damaged one exactly when
//! bytes its CRC covers changed.

#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::log::format::{record_stride, AlignedBuf, SegmentHeader, Slot, BASE_OFFSET_UNSET};
use shoal::log::{AppendError, Appender, Durability, IoBackend, LogOptions, Offset, Reader, RecoveryMode};

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
    Sync,
    Reopen,
    TearTail(Tear),
    ReadAll,
    Seek(u16),
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

struct Model {
    records: Vec<Vec<u8>>,
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
    if payload.len() > MAX_RECORD_BYTES {
        assert!(matches!(result, Err(AppendError::TooLarge { .. })), "{result:?}");
        return;
    }
    match result {
        Ok(offset) => assert_eq!(offset.0, model.records.len() as u64),
        Err(e) => panic!("append failed: {e}"),
    }
    model.records.push(payload.to_vec());
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
                i += 1;
            }
            Ok(None) => break,
            Err(e) => panic!("reading record {i}: {e}"),
        }
    }
    assert_eq!(i, model.records.len(), "reader stopped early");
}

/// Where the record with offset `want` lies: (file, position, payload length, whether its
/// segment is the last one in use).
fn locate(dir: &Path, want: u64) -> Option<(std::path::PathBuf, usize, usize, bool)> {
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
    let count = in_use.len();
    for (k, (path, bytes, header)) in in_use.into_iter().enumerate() {
        if header.base_offset > want {
            break;
        }
        let mut buf = AlignedBuf::from_bytes(&bytes);
        let region = buf.region();
        let mut position = header.data_start();
        let mut offset = header.base_offset;
        while let Ok(Slot::Record(r)) = region.decode(position, Some(offset), usize::MAX) {
            if offset == want {
                return Some((path, position, r.payload.len(), k + 1 == count));
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
fn damage(path: &Path, position: usize, payload_len: usize, tear: &Tear) -> bool {
    let mut bytes = std::fs::read(path).expect("read the segment");
    let covered = 32 + payload_len;
    let stride = record_stride(payload_len);
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
    let mut model = Model { records: Vec::new(), durable: 0 };

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
                assert_eq!(appender.next_offset().0, model.records.len() as u64);
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
                    let (path, position, payload_len, _in_last_segment) = locate(dir.path(), last)
                        .unwrap_or_else(|| panic!("record {last} not found in the crash image"));
                    assert_eq!(payload_len, model.records[last as usize].len());
                    gone = damage(&path, position, payload_len, tear);
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
                }
                assert_eq!(reopened.next_offset().0, model.records.len() as u64, "{:?}", reopened.recovery());
                model.durable = model.records.len() as u64;
                log = Some(reopened);
            }
            Op::ReadAll => read_all(dir.path(), &model),
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
