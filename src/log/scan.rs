//! Scanning segments, the one walk over records that open-time recovery, `verify`, `repair`
//! and `stats` share, and cutting a segment at a position.
//!
//! A scan walks a segment's records in order, checking each commit word, length, checksum
//! and offset. It ends at an empty slot (the tail), an end-of-segment marker, the end of the
//! file, or damage. Damage is a *torn tail* when it sits at or past the durable watermark and
//! no intact record follows it (a crash mid-append); anything else is *corruption*.

use super::error::LogError;
use super::format::{self, RecordError, Region, SegmentHeader, Slot};
use super::lock::DirLock;
use super::segment::Segment;

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
/// `budget_bytes` of checksumming. Returns (records found, highest offset).
pub fn records_after(region: &Region, from: usize, min_offset: u64, payload_max: usize) -> (u64, Option<u64>) {
    let mut budget_bytes: usize = region.len().saturating_mul(4).max(1 << 20);
    let mut position = format::align_up(from + 8, 8);
    let mut found = 0;
    let mut highest = None;
    while position + format::RECORD_HEADER_BYTES <= region.len() && budget_bytes > 0 {
        let commit = region.load_commit(position).unwrap_or(0);
        if commit & format::COMMIT_BIT != 0 && commit != format::END_OF_SEGMENT {
            let len = (commit & !format::COMMIT_BIT) as usize;
            // Only a length that fits costs a checksum; stray bits (a timestamp word with the
            // top bit set) must not use up the budget, which would hide the records after it.
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
    let end = last_nonzero(&region, position);
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

pub(crate) fn last_nonzero(region: &Region, from: usize) -> usize {
    let mut end = from;
    let mut at = format::align_up(from, 8);
    while at + 8 <= region.len() {
        // Commit words are the only atomically-written words; the rest, past the tail, is
        // written by nobody now (we hold the lock), so plain copies are fine.
        let mut word = [0u8; 8];
        region.copy_out(at, &mut word);
        if word != [0; 8] {
            end = at + 8;
        }
        at += 8;
    }
    end
}
