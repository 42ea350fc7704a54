//! Scanning segments, the one walk over records that open-time recovery, `verify`, `repair`
//! and `stats` share, and cutting a segment at a position.
//!
//! A scan walks a segment's records in order, checking each commit word, length, checksum
//! and offset. It ends at an empty slot (the tail), an end-of-segment marker, the end of the
//! file, or damage. [`judge_end`] says what that end is, the one rule every checker shares:
//!
//! - a slot that is not a valid record (a zero or all-ones commit word, a bad checksum, a
//!   wrong offset, a length past the end) is a *torn tail* (a crash mid-append) only in the
//!   last segment in use, at or past the durable watermark, with no intact record after it;
//! - an end (empty slot, end marker, end of file) where the next segment in use starts at the
//!   same offset is a segment boundary; when the end marker itself is what is missing (lost
//!   in a crash, or the file's last bytes cut off) it is a *lost seal*: no record is lost and
//!   a repair writes the marker back;
//! - anything else is *corruption*: an empty slot or end marker below the watermark, or with
//!   intact records after it, or inside a sealed segment whose successor starts elsewhere.
//!
//! A repair that cuts the log first writes a checksummed journal (`REPAIR`) naming the cut
//! and syncs it; the destructive steps follow; the journal goes last. A repair or an open
//! that finds a journal finishes that cut first, so a repair killed at any instant is
//! finished by the next one ([`finish_journal`]).

use std::path::Path;

use super::error::LogError;
use super::format::{self, RecordError, Region, SegmentHeader, Slot};
use super::lock::DirLock;
use super::segment::{list_segments, open_log_dir, segment_file_name, Segment, SegmentId};
use crate::sys::fs::{open_file_at, Open};

/// How a scan of one segment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// An empty slot: the segment is open for more records.
    Open,
    /// An end-of-segment marker.
    Sealed,
    /// The records fill the file exactly.
    Full,
    /// Damage at the position.
    Damaged(RecordError),
}

/// The result of scanning one segment.
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    /// Intact records found.
    pub records: u64,
    /// Offset after the last intact record.
    pub next_offset: u64,
    /// Position after the last intact record (where the end, tail or damage is).
    pub position: usize,
    /// How the scan ended.
    pub end: ScanEnd,
}

/// Scans a segment from its first record; `on_record(offset, position)` sees each intact one.
pub fn scan_segment(
    region: &Region,
    header: &SegmentHeader,
    payload_max: usize,
    mut on_record: impl FnMut(u64, usize),
) -> Scan {
    let mut position = header.data_start();
    let mut offset = header.base_offset;
    let mut records = 0;
    let end = loop {
        if position + 4 > region.len() {
            break ScanEnd::Full;
        }
        match region.decode(position, Some(offset), payload_max) {
            Ok(Slot::Empty) => break ScanEnd::Open,
            Ok(Slot::End) => break ScanEnd::Sealed,
            Ok(Slot::Record(r)) => {
                on_record(offset, position);
                position = r.next_position();
                offset += 1;
                records += 1;
            }
            Err(e) => break ScanEnd::Damaged(e),
        }
    };
    Scan { records, next_offset: offset, position, end }
}

/// Looks past damage for intact records: every 8-byte position after `from` whose bytes
/// decode as a whole record with an offset above `min_offset`. Bounded: at most
/// `budget_bytes` of checksumming. Only the stretches of `seg`'s file that may hold data
/// are looked at (a record is written whole, so none starts in a hole). Returns (records
/// found, highest offset).
pub fn records_after(seg: &Segment, from: usize, min_offset: u64, payload_max: usize) -> (u64, Option<u64>) {
    let region = seg.region();
    let mut budget_bytes: usize = region.len().saturating_mul(4).max(1 << 20);
    let mut position = format::align_up(from + 8, 8);
    let mut found = 0;
    let mut highest = None;
    for range in crate::sys::file::data_ranges(seg.fd(), position as u64, region.len() as u64) {
        // A record found in one stretch may reach into the next: go on after it.
        position = format::align_up((range.start as usize).max(position), 8);
        let stop = (range.end as usize).min(region.len());
        while position < stop && position + format::RECORD_HEADER_BYTES <= region.len() && budget_bytes > 0 {
            let commit = region.load_commit(position).unwrap_or(0);
            if commit & format::COMMIT_BIT != 0 && commit != format::END_OF_SEGMENT {
                let len = format::commit_payload_len(commit);
                // Only a length that fits costs a checksum; stray bits (a timestamp word with
                // the top bit set) must not use up the budget, which would hide the records
                // after it.
                let fits = position + format::record_stride(len) <= region.len();
                budget_bytes = budget_bytes.saturating_sub(if fits { len + 32 } else { 32 });
                if let Ok(Slot::Record(r)) = region.decode(position, None, payload_max) {
                    if r.offset > min_offset {
                        found += 1;
                        highest = Some(r.offset);
                        position = r.next_position();
                        continue;
                    }
                }
            }
            position += 8;
        }
    }
    (found, highest)
}

/// Zeroes a segment from `position` to its end (cutting a torn tail), index entries that
/// point at or past it included, restores the file's full length, and syncs it.
pub(crate) fn cut_segment(
    _lock: &DirLock,
    seg: &Segment,
    header: &SegmentHeader,
    position: usize,
) -> Result<(), LogError> {
    let len = seg.file.metadata().map_err(|e| LogError::io(&seg.path, "stat", e))?.len();
    if len < header.segment_bytes {
        // A truncated file: give it back its length (the new bytes read as zeros). Bytes past
        // the mapping (a cut that is not 8-aligned) are dropped first: the region below does
        // not reach them, and a later record could end where they would read as a commit word.
        seg.file.set_len(seg.mapped_bytes as u64).map_err(|e| LogError::io(&seg.path, "truncate", e))?;
        seg.file.set_len(header.segment_bytes).map_err(|e| LogError::io(&seg.path, "extend", e))?;
    }
    let region = seg.region();
    // Only the non-zero stretch needs writing: find its end.
    let end = last_nonzero(seg, position);
    // SAFETY: we hold the appender lock (`_lock`), so no writer; readers only poll commit words, which
    // `zero` stores atomically.
    unsafe { region.zero(position, end) };
    for i in 0..header.index_entries as usize {
        match region.load_index(i) {
            Some(0) | None => break,
            Some(entry) => {
                let (_, pos) = format::index_entry_parts(entry);
                if pos as usize >= position {
                    region.store_index(i, 0);
                }
            }
        }
    }
    seg.file.sync_data().map_err(|e| LogError::io(&seg.path, "fdatasync", e))?;
    Ok(())
}

/// The end of the last non-zero 8-byte word of `seg` at or after `from` (`from` when there
/// is none). Only the stretches the file system says may hold data are read: holes of the
/// sparse segment read as zeros, and reading them would fault in pages of zeros.
pub(crate) fn last_nonzero(seg: &Segment, from: usize) -> usize {
    const CHUNK: usize = 4096;
    let region = seg.region();
    let mut end = from;
    let mut buf = [0u8; CHUNK];
    for range in crate::sys::file::data_ranges(seg.fd(), from as u64, region.len() as u64) {
        let mut at = format::align_up((range.start as usize).max(from), 8);
        let stop = (range.end as usize).min(region.len()) & !7;
        while at < stop {
            let n = (stop - at).min(CHUNK);
            // Commit words are the only atomically-written words; the rest, past the tail, is
            // written by nobody now (we hold the lock), so plain copies are fine.
            region.copy_out(at, &mut buf[..n]);
            if let Some(i) = buf[..n].chunks_exact(8).rposition(|w| w != [0u8; 8]) {
                end = at + i * 8 + 8;
            }
            at += n;
        }
    }
    end
}

/// What the end of a segment's records is, by the rule in the module doc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A clean end: the open tail, a sealed or full segment followed where it should be.
    Clean,
    /// The end marker is missing (or the file's tail after the last record was cut off) but
    /// the next segment starts right after the last record: nothing is lost.
    LostSeal,
    /// A torn tail (reason given): may be cut at open.
    Torn(String),
    /// Corruption (reason given).
    Corrupt(String),
}

/// What a segment's end is judged against.
#[derive(Clone, Copy, Debug)]
pub struct EndContext {
    /// The base offset of the next segment in use; `None` for the last one in use.
    pub next_base: Option<u64>,
    /// The durable watermark (from [`super::head::Head::durable_checked`]).
    pub durable: u64,
    /// Intact records found after the end in this segment ([`records_after`]).
    pub after: u64,
    /// The file is shorter than its header says.
    pub short: bool,
}

/// Judges how a segment's scan ended (see the module doc).
pub fn judge_end(scan: &Scan, cx: &EndContext) -> Verdict {
    let n = scan.next_offset;
    let what = match scan.end {
        ScanEnd::Damaged(e) => e.to_string(),
        ScanEnd::Open if cx.short => "the file is cut short after the last record".to_string(),
        ScanEnd::Full if cx.short => "the file is cut short after the last record".to_string(),
        ScanEnd::Open => "empty slot (commit word 0)".to_string(),
        ScanEnd::Sealed => "end-of-segment marker".to_string(),
        ScanEnd::Full => "end of the file".to_string(),
    };
    let marker = matches!(scan.end, ScanEnd::Sealed) || (scan.end == ScanEnd::Full && !cx.short);
    if let Some(base) = cx.next_base {
        if scan.records == 0 {
            // An appender never seals a segment before its first record: base offsets rise.
            return Verdict::Corrupt(format!(
                "{what} at the start of a segment in use (offset {n}) with a successor starting at offset {base}"
            ));
        }
        if base == n && cx.after == 0 {
            return if marker { Verdict::Clean } else { Verdict::LostSeal };
        }
        return Verdict::Corrupt(format!(
            "{what} at offset {n} inside a sealed segment, whose successor starts at offset {base}{}",
            if cx.after > 0 { format!("; {} intact records follow it", cx.after) } else { String::new() }
        ));
    }
    if n < cx.durable {
        return Verdict::Corrupt(format!("{what} at offset {n}, below the durable watermark {}", cx.durable));
    }
    if cx.after > 0 {
        return Verdict::Corrupt(format!("{what} at offset {n}, followed by {} intact records", cx.after));
    }
    match scan.end {
        ScanEnd::Open if !cx.short => Verdict::Clean,
        ScanEnd::Sealed => Verdict::Clean,
        ScanEnd::Full if !cx.short => Verdict::Clean,
        _ => Verdict::Torn(what),
    }
}

/// File name of the repair journal.
pub const JOURNAL_FILE: &str = "REPAIR";
const JOURNAL_MAGIC: [u8; 8] = *b"SHOALREP";
const JOURNAL_VERSION: u32 = 1;
const JOURNAL_BYTES: usize = 48;

/// A cut a repair is making, as its journal names it:
/// ```text
///  0  magic            [u8; 8]  b"SHOALREP"
///  8  version          u32      1
/// 12  crc              u32      CRC32C of bytes 0..48 with this field as zero
/// 16  segment          u64      id of the segment cut; every later segment is removed
/// 24  position         u64      byte position of the cut in it
/// 32  offset           u64      first offset dropped; the new durable watermark
/// 40  records_dropped  u64      intact records dropped with the cut (for the report)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Journal {
    /// The segment cut.
    pub segment: SegmentId,
    /// Where in it.
    pub position: u64,
    /// The first offset dropped.
    pub offset: u64,
    /// Intact records dropped.
    pub records_dropped: u64,
}

impl Journal {
    /// Encodes the journal, checksum included.
    pub fn encode(&self) -> [u8; JOURNAL_BYTES] {
        let mut b = [0u8; JOURNAL_BYTES];
        b[0..8].copy_from_slice(&JOURNAL_MAGIC);
        b[8..12].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.position.to_le_bytes());
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.records_dropped.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a journal; `None` for anything that is not a whole, checksummed one.
    pub fn decode(bytes: &[u8]) -> Option<Journal> {
        if bytes.len() != JOURNAL_BYTES || bytes[0..8] != JOURNAL_MAGIC {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let mut copy = [0u8; JOURNAL_BYTES];
        copy.copy_from_slice(bytes);
        copy[12..16].fill(0);
        let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or([0; 4]));
        if crc32c::crc32c(&copy) != crc
            || u32::from_le_bytes(bytes[8..12].try_into().unwrap_or([0; 4])) != JOURNAL_VERSION
        {
            return None;
        }
        Some(Journal {
            segment: SegmentId(u64_at(16)),
            position: u64_at(24),
            offset: u64_at(32),
            records_dropped: u64_at(40),
        })
    }
}

/// Kills this process at the named step of a repair when the environment variable
/// `SHOAL_FAIL_POINT` names it, so tests can stop a repair at each step (the way
/// raft-engine's fail points do). Read only on the cold repair path. With
/// `SHOAL_FAIL_POINT_ACTION=error` the step returns an error instead (what the files hold is
/// the same as after a kill there: every step before it has synced), for in-process tests
/// and fuzzing. The steps, in order: `repair-seal` (a lost end marker written back),
/// `repair-journal` (journal written and synced), `repair-cut` (the cut segment zeroed and
/// synced), `repair-unlink` (after each later segment is removed), `repair-head` (the
/// watermark reset), `repair-done` (journal removed).
pub(crate) fn fail_point(step: &str) -> Result<(), LogError> {
    if std::env::var_os("SHOAL_FAIL_POINT").is_none_or(|v| v != step) {
        return Ok(());
    }
    if std::env::var_os("SHOAL_FAIL_POINT_ACTION").is_some_and(|v| v == "error") {
        let e = std::io::Error::other("stopped by SHOAL_FAIL_POINT");
        return Err(LogError::io(Path::new(step), "repair step", e));
    }
    // SAFETY: raise(2) with a valid signal number has no memory-safety preconditions.
    unsafe { libc::raise(libc::SIGKILL) };
    Ok(())
}

/// Writes the journal of a cut into the log directory and syncs it (and the directory)
/// before any destructive step.
pub(crate) fn write_journal(_lock: &DirLock, dir: &Path, journal: &Journal) -> Result<(), LogError> {
    use std::io::Write;
    let path = dir.join(JOURNAL_FILE);
    let handle = open_log_dir(dir)?;
    // A new file (`O_EXCL`, never through a symlink): a journal left by an earlier repair
    // was finished or removed before this one is written.
    let mut file = handle.open_file(JOURNAL_FILE, Open::CreateNew).map_err(|e| LogError::io(&path, "create", e))?;
    file.write_all(&journal.encode()).map_err(|e| LogError::io(&path, "write", e))?;
    file.sync_all().map_err(|e| LogError::io(&path, "fsync", e))?;
    handle.sync().map_err(|e| LogError::io(dir, "fsync", e))?;
    fail_point("repair-journal")?;
    Ok(())
}

/// Reads the journal of an interrupted repair, if one is there: `Ok(None)` when there is
/// none, or when it is not whole (a repair killed before it was synced, before any
/// destructive step).
pub fn read_journal(dir: &Path) -> Result<Option<Journal>, LogError> {
    let path = dir.join(JOURNAL_FILE);
    match open_file_at(&path, Open::Read) {
        Ok(file) => {
            let mut bytes = Vec::new();
            // A journal is 48 bytes; a longer file is not one (decode says so).
            std::io::Read::read_to_end(&mut std::io::Read::take(file, 4096), &mut bytes)
                .map_err(|e| LogError::io(&path, "read", e))?;
            Ok(Journal::decode(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io(&path, "open", e)),
    }
}

/// Makes the cut a journal names (every step is idempotent): zeroes the segment from the
/// position, removes every later segment, resets the watermark through `reset_head`, then
/// removes the journal. A journal that is not whole is removed: no destructive step ran.
pub(crate) fn finish_journal(
    lock: &DirLock,
    dir: &Path,
    reset_head: impl FnOnce(u64) -> Result<(), LogError>,
) -> Result<Option<Journal>, LogError> {
    let path = dir.join(JOURNAL_FILE);
    if path.symlink_metadata().is_err() {
        return Ok(None);
    }
    let handle = open_log_dir(dir)?;
    let Some(journal) = read_journal(dir)? else {
        handle.unlink(JOURNAL_FILE).map_err(|e| LogError::io(&path, "remove", e))?;
        return Ok(None);
    };
    let (segments, _) = list_segments(dir)?;
    if let Some((id, seg_path)) = segments.iter().find(|(id, _)| *id == journal.segment) {
        let seg = Segment::open(seg_path, *id, true)?;
        let header = seg.header;
        let position = usize::try_from(journal.position).unwrap_or(usize::MAX);
        if position < header.data_start() || position as u64 > header.segment_bytes || position % 8 != 0 {
            // Not a cut this build would have journaled: no repair started from it.
            tracing::warn!(
                "{}: ignored a repair journal naming byte {position} of {}",
                path.display(),
                seg_path.display()
            );
            handle.unlink(JOURNAL_FILE).map_err(|e| LogError::io(&path, "remove", e))?;
            return Ok(None);
        }
        cut_segment(lock, &seg, &header, position)?;
        fail_point("repair-cut")?;
    }
    for (id, later) in segments.iter().filter(|(id, _)| *id > journal.segment).rev() {
        match handle.unlink(&segment_file_name(*id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io(later, "remove", e)),
        }
        fail_point("repair-unlink")?;
    }
    handle.sync().map_err(|e| LogError::io(dir, "fsync", e))?;
    reset_head(journal.offset)?;
    fail_point("repair-head")?;
    handle.unlink(JOURNAL_FILE).map_err(|e| LogError::io(&path, "remove", e))?;
    handle.sync().map_err(|e| LogError::io(dir, "fsync", e))?;
    fail_point("repair-done")?;
    Ok(Some(journal))
}

/// Writes back the end marker a sealed segment lost (its file cut short after its last
/// record, or the marker zeroed): restores the file's length, stores the marker at
/// `position` and syncs. Idempotent.
pub(crate) fn restore_seal(_lock: &DirLock, seg: &Segment, position: usize) -> Result<(), LogError> {
    let header = seg.header;
    let len = std::fs::metadata(&seg.path).map_err(|e| LogError::io(&seg.path, "stat", e))?.len();
    let reopened;
    let seg = if len < header.segment_bytes {
        seg.file.set_len(seg.mapped_bytes as u64).map_err(|e| LogError::io(&seg.path, "truncate", e))?;
        seg.file.set_len(header.segment_bytes).map_err(|e| LogError::io(&seg.path, "extend", e))?;
        reopened = Segment::open(&seg.path, seg.id, true)?;
        &reopened
    } else {
        seg
    };
    let region = seg.region();
    if position + 8 <= region.len() {
        // SAFETY: we hold the appender lock, so no writer; the bytes from the marker on are
        // past the last record, and readers only poll commit words, which `zero` stores
        // atomically.
        unsafe { region.zero(position, last_nonzero(seg, position).max(position)) };
        region.publish(position, format::END_OF_SEGMENT);
    }
    seg.file.sync_data().map_err(|e| LogError::io(&seg.path, "fdatasync", e))?;
    fail_point("repair-seal")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(end: ScanEnd, records: u64, next_offset: u64) -> Scan {
        Scan { records, next_offset, position: 8192, end }
    }

    fn cx(next_base: Option<u64>, durable: u64, after: u64, short: bool) -> EndContext {
        EndContext { next_base, durable, after, short }
    }

    #[test]
    fn the_end_of_records_is_judged_by_one_rule() {
        let bad = ScanEnd::Damaged(RecordError::BadChecksum);
        // The last segment: torn only at or past the watermark with nothing after it.
        assert_eq!(judge_end(&scan(ScanEnd::Open, 5, 5), &cx(None, 5, 0, false)), Verdict::Clean);
        assert!(matches!(judge_end(&scan(ScanEnd::Open, 2, 2), &cx(None, 6, 0, false)), Verdict::Corrupt(_)));
        assert!(matches!(judge_end(&scan(ScanEnd::Open, 2, 2), &cx(None, 2, 3, false)), Verdict::Corrupt(_)));
        assert!(matches!(judge_end(&scan(ScanEnd::Sealed, 2, 2), &cx(None, 6, 0, false)), Verdict::Corrupt(_)));
        assert!(matches!(judge_end(&scan(ScanEnd::Sealed, 2, 2), &cx(None, 2, 1, false)), Verdict::Corrupt(_)));
        assert!(matches!(judge_end(&scan(bad, 5, 5), &cx(None, 5, 0, false)), Verdict::Torn(_)));
        assert!(matches!(judge_end(&scan(bad, 5, 5), &cx(None, 6, 0, false)), Verdict::Corrupt(_)));
        assert!(matches!(judge_end(&scan(ScanEnd::Full, 5, 5), &cx(None, 5, 0, true)), Verdict::Torn(_)));
        // A sealed segment: its successor must start right after its last record.
        assert_eq!(judge_end(&scan(ScanEnd::Sealed, 5, 5), &cx(Some(5), 9, 0, false)), Verdict::Clean);
        assert_eq!(judge_end(&scan(ScanEnd::Open, 5, 5), &cx(Some(5), 9, 0, false)), Verdict::LostSeal);
        assert_eq!(judge_end(&scan(ScanEnd::Full, 5, 5), &cx(Some(5), 9, 0, true)), Verdict::LostSeal);
        assert_eq!(judge_end(&scan(bad, 5, 5), &cx(Some(5), 9, 0, false)), Verdict::LostSeal);
        assert!(matches!(judge_end(&scan(ScanEnd::Open, 3, 3), &cx(Some(5), 0, 0, false)), Verdict::Corrupt(_)));
        assert!(matches!(judge_end(&scan(ScanEnd::Open, 5, 5), &cx(Some(5), 0, 1, false)), Verdict::Corrupt(_)));
        assert!(matches!(judge_end(&scan(ScanEnd::Sealed, 0, 5), &cx(Some(5), 0, 0, false)), Verdict::Corrupt(_)));
    }

    #[test]
    fn the_journal_round_trips_and_rejects_any_flip() {
        let journal = Journal { segment: SegmentId(3), position: 8192, offset: 77, records_dropped: 12 };
        let bytes = journal.encode();
        assert_eq!(Journal::decode(&bytes), Some(journal));
        for at in 0..bytes.len() {
            let mut flipped = bytes;
            flipped[at] ^= 0x20;
            assert_eq!(Journal::decode(&flipped), None, "byte {at}");
        }
        assert_eq!(Journal::decode(&bytes[..40]), None);
    }
}
