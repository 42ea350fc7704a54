//! Whole log directories built from arbitrary bytes, in format versions 1 and 2 (records
//! with and without an extension block: key text, event time).
//!
//! The input describes up to three segment files and an optional `HEAD` page. Each segment
//! is either raw bytes or a valid header (built from the input, so the fuzzer gets past the
//! magic and CRC at once) followed by index entries and record bytes; the input can ask for
//! the records' offsets and CRCs to be fixed up so that long intact chains, damage after
//! them, sealed segments and truncated files are all reachable. Then everything that reads
//! a log from disk runs over it: `verify`, `stats`, a `Reader` (iterate, seek, iterate), and
//! `Appender::open` in each `RecoveryMode` over a fresh copy. The `HEAD` page may carry
//! checksummed watermark copies (valid or spoiled), and an interrupted repair's journal
//! (whole or any bytes) may lie beside. `repair` runs over a fresh copy: where it reports
//! nothing unrepairable, `verify` must be sound after it, a second repair must change
//! nothing, and an appender must open. Errors are fine; panics are not. After an appender opens, a record appended and synced must read back at its offset.

#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::log::format::{
    align_up, data_start, record_crc_in_place, record_stride_ext, SegmentHeader, BASE_OFFSET_UNSET, COMMIT_BIT,
    END_OF_SEGMENT, EXTENDED_BIT, EXT_EVENT_TIME, EXT_HEADER_BYTES, EXT_KEY_BYTES, PAGE_BYTES, RECORD_HEADER_BYTES,
};
use shoal::log::{Appender, Durability, IoBackend, LogOptions, NewRecord, Offset, Reader, RecoveryMode};

#[derive(Arbitrary, Debug)]
struct SegSpec {
    /// Use `raw` as the whole file, header included.
    raw_file: bool,
    /// Sequence number: the file's position in the list, unless `seq_override`.
    seq_override: Option<u8>,
    /// Base offset; `None` continues from the previous segment's records.
    base_offset: Option<u64>,
    /// The segment is prepared (unused): base offset unset.
    prepared: bool,
    /// Index capacity (0 puts records right after the header page).
    index_entries: u8,
    /// Index interval, in 8-byte words (0 is invalid and tests the header check).
    index_interval_words: u16,
    /// Pages of records.
    record_pages: u8,
    /// Index entries written at the start of the index area.
    index: Vec<u64>,
    /// Fix the offsets and CRCs of this many records from the start of the data area.
    fix_records: u8,
    /// Cut the file to this many bytes (from the end), when set.
    truncate_by: Option<u16>,
    /// Write the header as format version 1 did (its records are laid out alike).
    version_1: bool,
    /// Bytes of the record area (or the whole file with `raw_file`).
    raw: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    segments: Vec<SegSpec>,
    /// Durable watermark to record in `HEAD`; no `HEAD` when `None`.
    head_durable: Option<u64>,
    /// Raw bytes over the `HEAD` page instead of a valid one.
    head_raw: Option<Vec<u8>>,
    /// Checksummed watermark copies written into a valid `HEAD`: (value, seq, spoil the
    /// checksum).
    head_slots: Vec<(u64, u64, bool)>,
    /// A repair journal left by an interrupted repair.
    journal: Option<JournalSpec>,
    seeks: Vec<u16>,
    /// Times to seek to (`Reader::seek_time`), as small numbers around the records' times.
    seek_times: Vec<u64>,
    backend_uring: bool,
}

#[derive(Arbitrary, Debug)]
enum JournalSpec {
    /// A whole, checksummed journal naming a cut.
    Built { segment: u8, position: u32, offset: u64, records_dropped: u64 },
    /// Any bytes.
    Raw(Vec<u8>),
}

fn journal_bytes(spec: &JournalSpec) -> Vec<u8> {
    match spec {
        JournalSpec::Raw(raw) => raw.iter().copied().take(256).collect(),
        JournalSpec::Built { segment, position, offset, records_dropped } => {
            let mut b = vec![0u8; 48];
            b[0..8].copy_from_slice(b"SHOALREP");
            b[8..12].copy_from_slice(&1u32.to_le_bytes());
            b[16..24].copy_from_slice(&u64::from(*segment).to_le_bytes());
            b[24..32].copy_from_slice(&u64::from(*position).to_le_bytes());
            b[32..40].copy_from_slice(&offset.to_le_bytes());
            b[40..48].copy_from_slice(&records_dropped.to_le_bytes());
            let crc = crc32c::crc32c(&b);
            b[12..16].copy_from_slice(&crc.to_le_bytes());
            b
        }
    }
}

/// The bytes of one segment file, and the offset after its last fixed record.
fn build_segment(i: usize, spec: &SegSpec, base_default: u64) -> (Vec<u8>, u64) {
    let seq = spec.seq_override.map_or(i as u64, u64::from);
    if spec.raw_file {
        let mut raw = spec.raw.clone();
        raw.truncate(64 << 10);
        return (raw, base_default);
    }
    let base = if spec.prepared { BASE_OFFSET_UNSET } else { spec.base_offset.unwrap_or(base_default) };
    let entries = u32::from(spec.index_entries);
    let data = data_start(entries);
    let segment_bytes = data + (usize::from(spec.record_pages % 16) + 1) * PAGE_BYTES;
    let header = SegmentHeader {
        seq,
        base_offset: base,
        segment_bytes: segment_bytes as u64,
        index_entries: entries,
        index_interval: u32::from(spec.index_interval_words) * 8,
        created_ns: 1,
        activated_ns: 2,
    };
    let mut file = vec![0u8; segment_bytes];
    file[..64].copy_from_slice(&header.encode());
    if spec.version_1 {
        file[8..12].copy_from_slice(&1u32.to_le_bytes());
        file[12..16].fill(0);
        let crc = crc32c::crc32c(&file[..64]);
        file[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    for (k, e) in spec.index.iter().take(entries as usize).enumerate() {
        let at = 4096 + k * 8;
        file[at..at + 8].copy_from_slice(&e.to_le_bytes());
    }
    let room = segment_bytes - data;
    let n = spec.raw.len().min(room);
    file[data..data + n].copy_from_slice(&spec.raw[..n]);
    // Fix up a chain of records so that they decode.
    let mut position = data;
    let mut offset = base;
    for _ in 0..spec.fix_records {
        if position + RECORD_HEADER_BYTES > segment_bytes {
            break;
        }
        let commit = u32::from_le_bytes(file[position..position + 4].try_into().unwrap_or([0; 4]));
        if commit == END_OF_SEGMENT || commit == 0 {
            break;
        }
        let len = ((commit & !(COMMIT_BIT | EXTENDED_BIT)) as usize) % 512;
        // An extension block when the commit word asks for one: its flags and key length
        // from the bytes there, made valid.
        let extended = commit & EXTENDED_BIT != 0 && position + RECORD_HEADER_BYTES + EXT_HEADER_BYTES <= segment_bytes;
        let ext = if extended {
            let at = position + RECORD_HEADER_BYTES;
            let flags = match file[at] & (EXT_EVENT_TIME | EXT_KEY_BYTES) {
                0 => EXT_KEY_BYTES,
                f => f,
            };
            let key_len = if flags & EXT_KEY_BYTES != 0 { usize::from(file[at + 2]) % 64 } else { 0 };
            file[at] = flags;
            file[at + 1] = 0;
            file[at + 2..at + 4].copy_from_slice(&(key_len as u16).to_le_bytes());
            file[at + 4..at + 8].fill(0);
            EXT_HEADER_BYTES + if flags & EXT_EVENT_TIME != 0 { 8 } else { 0 } + align_up(key_len, 8)
        } else {
            0
        };
        let stride = record_stride_ext(ext, len);
        if position + stride > segment_bytes {
            break;
        }
        let seed = if extended { EXTENDED_BIT | len as u32 } else { len as u32 };
        file[position..position + 4].copy_from_slice(&(COMMIT_BIT | seed).to_le_bytes());
        file[position + 8..position + 16].copy_from_slice(&offset.to_le_bytes());
        file[position + stride - (align_up(len, 8) - len)..position + stride].fill(0);
        let crc = record_crc_in_place(seed, &file[position + 8..position + stride]);
        file[position + 4..position + 8].copy_from_slice(&crc.to_le_bytes());
        position += stride;
        offset = offset.wrapping_add(1);
    }
    if let Some(cut) = spec.truncate_by {
        file.truncate(file.len().saturating_sub(usize::from(cut)));
    }
    (file, offset)
}

fn write_log(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write a file of the fuzz log");
    }
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

fuzz_target!(|input: Input| {
    let mut files = Vec::new();
    let mut next_base = 0u64;
    for (i, spec) in input.segments.iter().take(3).enumerate() {
        let (bytes, after) = build_segment(i, spec, next_base);
        next_base = after;
        let seq = spec.seq_override.map_or(i as u64, u64::from);
        files.push((format!("{seq:020}.seg"), bytes));
    }
    if let Some(raw) = &input.head_raw {
        let mut page = raw.clone();
        page.truncate(4096);
        files.push(("HEAD".to_string(), page));
    } else if let Some(durable) = input.head_durable {
        let mut page = vec![0u8; 4096];
        page[0..8].copy_from_slice(b"SHOALHED");
        page[8..12].copy_from_slice(&1u32.to_le_bytes());
        page[128..136].copy_from_slice(&durable.to_le_bytes());
        for (k, &(value, seq, spoil)) in input.head_slots.iter().take(2).enumerate() {
            let at = 192 + 32 * k;
            let mut covered = Vec::with_capacity(24);
            covered.extend_from_slice(b"SHOALDUR");
            covered.extend_from_slice(&value.to_le_bytes());
            covered.extend_from_slice(&seq.to_le_bytes());
            let crc = crc32c::crc32c(&covered) ^ u32::from(spoil);
            page[at..at + 8].copy_from_slice(&value.to_le_bytes());
            page[at + 8..at + 16].copy_from_slice(&seq.to_le_bytes());
            page[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
        }
        files.push(("HEAD".to_string(), page));
    }
    if let Some(journal) = &input.journal {
        files.push(("REPAIR".to_string(), journal_bytes(journal)));
    }

    // Read-only paths.
    let dir = temp_dir();
    write_log(dir.path(), &files);
    let _ = shoal::log::verify(dir.path()).map(|report| {
        for p in &report.problems {
            let _ = p.to_string();
        }
        report.is_sound()
    });
    let _ = shoal::log::stats(dir.path());
    if let Ok(mut reader) = Reader::open(dir.path()) {
        let mut n = 0;
        while let Ok(Some(record)) = reader.next() {
            let _ = (record.offset(), record.timestamp_ns(), record.key(), record.payload_as::<u64>());
            let _ = (record.key_bytes().map(<[u8]>::len), record.event_time_ns());
            n += 1;
            if n > 20_000 {
                break;
            }
        }
        // Seeking by time never panics, and where it lands the record is at or after the time
        // (whatever order the times of these records are in).
        for &ns in input.seek_times.iter().take(4) {
            if let Ok(at) = reader.seek_time(ns) {
                if let Ok(Some(record)) = reader.next() {
                    assert_eq!(record.offset(), at);
                    assert!(record.timestamp_ns() >= ns);
                }
            }
            let _ = reader.offset_for_time(ns);
        }
        for &s in input.seeks.iter().take(8) {
            let base = reader.first_offset().map_or(0, |o| o.0);
            if reader.seek(Offset(base.saturating_add(u64::from(s)))).is_ok() {
                for _ in 0..4 {
                    match reader.next() {
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
            }
        }
    }
    drop(dir);

    // Repair over a fresh copy: where it says it fixed everything, the log is sound after it
    // and an appender opens it.
    {
        let dir = temp_dir();
        write_log(dir.path(), &files);
        if let Ok(report) = shoal::log::repair(dir.path()) {
            if report.unrepairable.is_empty() {
                let after = shoal::log::verify(dir.path()).expect("verify after a repair");
                assert!(after.is_sound(), "unsound after a repair: {:?} (repair: {report:?})", after.problems);
                let again = shoal::log::repair(dir.path()).expect("a second repair");
                assert!(again.is_noop(), "a second repair changed something: {again:?}");
                let opts = LogOptions::default()
                    .segment_bytes(64 << 10)
                    .max_record_bytes(1024)
                    .durability(Durability::Never)
                    .io_backend(IoBackend::Syscalls)
                    .prefault(false);
                if let Err(e) = Appender::open(dir.path(), opts) {
                    panic!("opening after a repair that fixed everything: {e} (repair: {report:?})");
                }
            }
        }
    }

    // The appender, once per recovery mode, each over a fresh copy.
    for mode in [RecoveryMode::Strict, RecoveryMode::TruncateTail, RecoveryMode::TruncateCorrupt] {
        let dir = temp_dir();
        write_log(dir.path(), &files);
        let opts = LogOptions::default()
            .segment_bytes(64 << 10)
            .max_record_bytes(1024)
            .durability(Durability::Never)
            .io_backend(if input.backend_uring { IoBackend::Auto } else { IoBackend::Syscalls })
            .recovery_mode(mode)
            .prefault(false);
        let Ok(mut log) = Appender::open(dir.path(), opts) else { continue };
        let _ = log.recovery();
        let next = log.next_offset();
        let offset = match log.append_record(&NewRecord::new(b"fuzz").key(b"key").event_time(7)) {
            Ok(offset) => offset,
            Err(_) => continue,
        };
        assert_eq!(offset, next);
        let _ = log.sync();
        drop(log);
        let _ = shoal::log::verify(dir.path());
        // Only the tail is checked at open, so older damage may still stop the reader;
        // where it can seek there, the new record must be there.
        if let Ok(mut reader) = Reader::open(dir.path()) {
            if reader.seek(offset).is_ok() {
                match reader.next() {
                    Ok(Some(record)) => {
                        assert_eq!(record.offset(), offset, "{mode:?}");
                        assert_eq!(record.payload(), b"fuzz", "{mode:?}");
                        assert_eq!((record.key_bytes(), record.event_time_ns()), (Some(&b"key"[..]), Some(7)));
                    }
                    Ok(None) => panic!("{mode:?}: record {offset} appended and synced but not found"),
                    Err(_) => {}
                }
            }
        }
    }
});
