//! Recovery at open: what an [`Appender`](super::Appender) finds on disk, made sound before
//! the first append.
//!
//! [`recover`] runs under the appender lock and returns the recovered tail: the segments in
//! use, the tail segment and where its next record goes, the prepared segment a previous run
//! left, and a [`RecoveryReport`]. It starts no thread; the appender does that afterwards, so
//! recovery is apart from the writer.
//!
//! The steps, in order: leftover temporary files of an interrupted preparation are removed;
//! every segment header is read and the sequence checked (offsets rise, no segment in use
//! after a prepared one); the last segment in use is scanned ([`scan`](super::scan)). Damage
//! at the end of its records is a torn tail (at or past the durable watermark recorded in
//! `HEAD`, nothing intact after it) or corruption; [`RecoveryMode`] says which of the two may
//! be cut ([`TailCut`]) and which refuse the open. A file cut short gets its length back,
//! stale bytes past an open tail are zeroed, the tail's sparse index is rebuilt, the
//! predecessor's end marker (lost in a crash) is put back, and the tail is synced.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::LogError;
use super::format::{self, SegmentHeader, BASE_OFFSET_UNSET};
use super::head::Head;
use super::io::{IoDriver, SyncRange};
use super::lock::DirLock;
use super::scan::{
    cut_segment, finish_journal, judge_end, last_nonzero, records_after, restore_seal, scan_segment, EndContext, Scan,
    ScanEnd, Verdict,
};
use super::segment::{list_segments, next_segment_id, open_log_file, read_header_from_file, Segment, SegmentId};
use super::{LogOptions, RecoveryMode};
use crate::sys::fs::Open;

/// What opening the log found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use.
    pub segments: u64,
    /// Offset the next append gets.
    pub next_offset: u64,
    /// The cut made at open, if recovery cut the log.
    pub cut: Option<TailCut>,
}

/// A cut made at open: the last segment in use was truncated at its first damaged record,
/// and everything from there on dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailCut {
    /// The segment file that was cut.
    pub path: PathBuf,
    /// Byte position in that file where the damage started; the bytes from here on were
    /// zeroed.
    pub position: u64,
    /// The first offset dropped (the damaged record's); the next append gets it.
    pub offset: u64,
    /// Intact records found after the damage and dropped with it (0 for a torn tail).
    pub records_dropped: u64,
    /// True when the damage was a torn tail (a crash mid-append), false for corruption cut
    /// under [`RecoveryMode::TruncateCorrupt`].
    pub torn: bool,
}

/// A segment in use, as retention sees it: (id, path, base offset, bytes, activated_ns).
pub(crate) type InUse = (SegmentId, PathBuf, u64, u64, u64);

/// The tail segment, open for appends after recovery.
#[derive(Debug)]
pub(crate) struct Tail {
    /// The last segment in use, mapped writable.
    pub(crate) segment: Arc<Segment>,
    /// Where the next record goes: after the last intact record, or the end of the mapping
    /// when the segment is sealed or full (the first append then rolls over).
    pub(crate) position: usize,
}

/// The log as recovery leaves it, ready for an appender.
#[derive(Debug)]
pub(crate) struct RecoveredTail {
    /// What recovery found and did; `report.next_offset` is also the durable offset, since
    /// the tail was synced.
    pub(crate) report: RecoveryReport,
    /// Segments in use, oldest first.
    pub(crate) in_use: VecDeque<InUse>,
    /// The tail segment; `None` when no segment is in use (an empty log).
    pub(crate) tail: Option<Tail>,
    /// A prepared (unused) segment left by a previous run, to be used next.
    pub(crate) prepared: Option<Arc<Segment>>,
    /// Sequence number of the next segment to prepare.
    pub(crate) next_seq: SegmentId,
}

/// Recovers the log in `dir`, held locked by `lock`, according to `opts.recovery_mode`;
/// `head` gives the durable watermark recorded by the previous appender and `io` syncs the
/// tail.
///
/// # Errors
/// [`LogError::Corruption`] or [`LogError::TornTail`] where the recovery mode refuses to cut;
/// [`LogError::Inconsistent`] for a broken sequence of segments; [`LogError::NotASegment`],
/// [`LogError::UnsupportedVersion`], I/O errors.
///
/// `alone` is false when other appenders of a shared log are open (a repair after a holder
/// of the writer role died): the temporary files of their preparations in flight are then
/// left alone.
pub(crate) fn recover(
    lock: &DirLock,
    dir: &Path,
    opts: &LogOptions,
    head: &Head,
    io: &mut IoDriver,
    alone: bool,
) -> Result<RecoveredTail, LogError> {
    // A repair killed midway left its journal: finish that cut before anything else.
    finish_journal(lock, dir, |offset| {
        head.reset_offsets(offset);
        Ok(())
    })?;
    let (segments, temps) = list_segments(dir)?;
    let next_seq = next_segment_id(&segments)?;
    for temp in temps.iter().filter(|_| alone) {
        std::fs::remove_file(temp).map_err(|e| LogError::io(temp, "remove", e))?;
    }
    let headers = read_headers(&segments)?;
    let in_use = check_sequence(&segments, &headers)?;
    check_sealed(&segments[..in_use], &headers[..in_use])?;
    let mut report = RecoveryReport { segments: in_use as u64, ..RecoveryReport::default() };
    let tail = if in_use > 0 {
        let (tail, scan, cut) = recover_tail(lock, &segments[..in_use], opts, head.durable_checked(), io)?;
        report.next_offset = scan.next_offset;
        report.cut = cut;
        Some(tail)
    } else {
        None
    };
    let prepared = reuse_prepared(&segments[in_use..], opts.prefault)?;
    let in_use = segments
        .iter()
        .zip(&headers)
        .take(in_use)
        .map(|((id, path), header)| (*id, path.clone(), header.base_offset, header.segment_bytes, header.activated_ns))
        .collect();
    Ok(RecoveredTail { report, in_use, tail, prepared, next_seq })
}

/// The segments in use of the log in `dir`, oldest first, as retention sees them (for an
/// appender of a shared log that catches up with segments other appenders added or
/// removed; it holds the writer role, so none is added or removed meanwhile).
///
/// # Errors
/// As [`recover`] for a broken sequence or an unreadable header.
pub(crate) fn list_in_use(dir: &Path) -> Result<VecDeque<InUse>, LogError> {
    let (segments, _) = list_segments(dir)?;
    let headers = read_headers(&segments)?;
    let in_use = check_sequence(&segments, &headers)?;
    Ok(segments
        .iter()
        .zip(&headers)
        .take(in_use)
        .map(|((id, path), header)| (*id, path.clone(), header.base_offset, header.segment_bytes, header.activated_ns))
        .collect())
}

/// Reads and checks the header of every segment file.
fn read_headers(segments: &[(SegmentId, PathBuf)]) -> Result<Vec<SegmentHeader>, LogError> {
    let mut headers = Vec::with_capacity(segments.len());
    for (id, path) in segments {
        let mut file = open_log_file(path, Open::Read).map_err(|e| LogError::io(path, "open", e))?;
        let header = read_header_from_file(path, &mut file)?;
        if header.seq != id.0 {
            return Err(LogError::NotASegment {
                path: path.clone(),
                why: format!("its header says segment {}, its name says {}", header.seq, id.0),
            });
        }
        headers.push(header);
    }
    Ok(headers)
}

/// Checks that the segments in use come first, with rising base offsets; returns how many
/// are in use.
fn check_sequence(segments: &[(SegmentId, PathBuf)], headers: &[SegmentHeader]) -> Result<usize, LogError> {
    let in_use = headers.iter().take_while(|h| h.base_offset != BASE_OFFSET_UNSET).count();
    if let Some(i) = headers[in_use..].iter().position(|h| h.base_offset != BASE_OFFSET_UNSET) {
        return Err(LogError::Inconsistent {
            path: segments[in_use + i].0 .0.to_string().into(),
            why: "a segment in use follows a prepared (unused) one".into(),
        });
    }
    for w in headers[..in_use].windows(2) {
        if w[1].base_offset <= w[0].base_offset {
            return Err(LogError::Inconsistent {
                path: segments[0].1.clone(),
                why: format!(
                    "segment {} starts at offset {} after segment {} at {}",
                    w[1].seq, w[1].base_offset, w[0].seq, w[0].base_offset
                ),
            });
        }
    }
    Ok(in_use)
}

/// Checks what can be checked of the sealed segments (every one in use but the last) without
/// reading their records, so an appender never appends after a segment whose records are
/// missing: their ids follow each other (a deleted segment leaves a gap: retention only
/// removes the oldest), and a file shorter than its header says (truncated) is scanned, to
/// see its records still reach the next segment's base offset (only the bytes after its
/// last record were lost). A flipped bit inside a sealed segment's records is found by
/// readers and `verify`, which check every record; checking them here would read the whole
/// log at every open.
fn check_sealed(in_use: &[(SegmentId, PathBuf)], headers: &[SegmentHeader]) -> Result<(), LogError> {
    for (i, pair) in in_use.windows(2).enumerate() {
        let ((id, path), (next_id, next_path)) = (&pair[0], &pair[1]);
        if id.0.checked_add(1) != Some(next_id.0) {
            return Err(LogError::Inconsistent {
                path: next_path.clone(),
                why: format!(
                    "the segment before it is missing: segment {} ends the run before it, so the records from offset {} to {} are gone",
                    id.0,
                    headers[i].base_offset,
                    headers[i + 1].base_offset.saturating_sub(1)
                ),
            });
        }
        let len = std::fs::metadata(path).map_err(|e| LogError::io(path, "stat", e))?.len();
        if len >= headers[i].segment_bytes {
            continue;
        }
        let seg = Segment::open(path, *id, false)?;
        let scan = scan_segment(&seg.region(), &seg.header, format::PAYLOAD_BYTES_FORMAT_MAX, |_, _| {});
        let next_base = headers[i + 1].base_offset;
        if scan.next_offset != next_base {
            return Err(LogError::Inconsistent {
                path: path.clone(),
                why: format!(
                    "the file is {len} bytes of {}, and its records end at offset {} (byte {}) while the next segment starts at offset {next_base}",
                    headers[i].segment_bytes, scan.next_offset, scan.position
                ),
            });
        }
    }
    Ok(())
}

/// Recovers the last of the segments in use (`in_use` is not empty); its predecessor's seal
/// is checked too. Returns the tail, the scan of its records and the cut made, if any.
fn recover_tail(
    lock: &DirLock,
    in_use: &[(SegmentId, PathBuf)],
    opts: &LogOptions,
    durable_recorded: u64,
    io: &mut IoDriver,
) -> Result<(Tail, Scan, Option<TailCut>), LogError> {
    // The format's bound, as readers and `verify` use: never this appender's options, which
    // may be smaller than those the records were written with (a record still has to fit
    // in its segment, which decoding checks).
    let payload_max = format::PAYLOAD_BYTES_FORMAT_MAX;
    let last = in_use.len() - 1;
    let (last_id, last_path) = in_use[last].clone();
    let seg = Segment::open(&last_path, last_id, true)?;
    let header = seg.header;
    let mut index_fix = Vec::new();
    let scan = scan_segment(&seg.region(), &header, payload_max, |offset, position| index_fix.push((offset, position)));
    let short = (seg.mapped_bytes as u64) < header.segment_bytes;
    let cut = settle_end(lock, &seg, &scan, short, opts.recovery_mode, durable_recorded, payload_max)?;
    let seg = if short { Segment::open(&last_path, last_id, true)? } else { seg };
    rebuild_index(&seg, &header, &index_fix, scan.position);
    // The predecessor must be sealed at our base offset: a crash can lose its end marker
    // while records of this segment survive, so add it back.
    if last > 0 {
        seal_predecessor(lock, &in_use[last - 1], header.base_offset, durable_recorded, payload_max)?;
    }
    let range_end = scan.position.min(seg.mapped_bytes);
    io.sync_ranges(&[SyncRange { fd: seg.fd(), map: seg.region().as_ptr(), offset: 0, len: range_end.max(1) as u64 }])
        .map_err(|e| LogError::io(&last_path, "fdatasync", e))?;
    // A file cut short ends its scan "full" at the cut; it was extended again above, so
    // appends go on at the tail rather than in a new segment.
    let sealed = scan.end == ScanEnd::Sealed || (scan.end == ScanEnd::Full && !short);
    let position = if sealed { seg.mapped_bytes } else { scan.position };
    Ok((Tail { segment: Arc::new(seg), position }, scan, cut))
}

/// Settles the end of the tail segment's records: damage is cut where `mode` allows it
/// (returning the cut) and refuses the open where it does not; a sealed file truncated after
/// its seal gets its length back; stale bytes past an open tail are zeroed.
fn settle_end(
    lock: &DirLock,
    seg: &Segment,
    scan: &Scan,
    short: bool,
    mode: RecoveryMode,
    durable_recorded: u64,
    payload_max: usize,
) -> Result<Option<TailCut>, LogError> {
    let header = seg.header;
    let region = seg.region();
    let path = &seg.path;
    // Bytes past the end (after the end marker, when there is one) that are not zero: stale
    // bytes of an unpublished record, or records after damage.
    let stale_from = if scan.end == ScanEnd::Sealed { scan.position + 8 } else { scan.position };
    let stale_end = if stale_from < region.len() { last_nonzero(seg, stale_from) } else { stale_from };
    let stale = stale_end > stale_from;
    let after = if stale || matches!(scan.end, ScanEnd::Damaged(_)) {
        records_after(seg, scan.position, scan.next_offset, payload_max).0
    } else {
        0
    };
    let verdict = judge_end(scan, &EndContext { next_base: None, durable: durable_recorded, after, short });
    let (torn, why) = match verdict {
        Verdict::Clean | Verdict::LostSeal => {
            if short {
                // Sealed (or full) but truncated after its end: restore the length.
                seg.file.set_len(header.segment_bytes).map_err(|e| LogError::io(path, "extend", e))?;
            } else if scan.end == ScanEnd::Open && stale {
                // A crash before a record's commit word was stored leaves the record's other
                // bytes past the tail; shorter records appended over them would end inside
                // them, and readers would take the stale bytes for a damaged record.
                tracing::warn!(
                    "{}: cleared {} bytes of an append that never completed at byte {} (offset {} was never \
                     published, so never acknowledged); the log goes on from offset {}",
                    path.display(),
                    stale_end - stale_from,
                    scan.position,
                    scan.next_offset,
                    scan.next_offset
                );
                cut_segment(lock, seg, &header, scan.position)?;
            }
            return Ok(None);
        }
        Verdict::Torn(why) => (true, why),
        Verdict::Corrupt(why) => (false, why),
    };
    let cut_allowed = match mode {
        RecoveryMode::Strict => false,
        RecoveryMode::TruncateTail => torn,
        RecoveryMode::TruncateCorrupt => true,
    };
    if !cut_allowed {
        let (path, position, offset) = (path.clone(), scan.position as u64, scan.next_offset);
        return Err(if torn {
            LogError::TornTail { path, position, offset, why }
        } else {
            LogError::Corruption { path, position, offset, why }
        });
    }
    if torn {
        tracing::warn!(
            "{}: cut a torn tail at byte {} (offset {}): {why}; it was past the durable watermark, so never \
             acknowledged durable; the log goes on from offset {}",
            path.display(),
            scan.position,
            scan.next_offset,
            scan.next_offset
        );
    } else {
        tracing::warn!(
            "{}: cut the log at byte {} (offset {}): {why}; {after} intact records after it were dropped",
            path.display(),
            scan.position,
            scan.next_offset
        );
    }
    cut_segment(lock, seg, &header, scan.position)?;
    Ok(Some(TailCut {
        path: path.clone(),
        position: scan.position as u64,
        offset: scan.next_offset,
        records_dropped: after,
        torn,
    }))
}

/// Rebuilds the sparse index of the tail segment from the records scanned before `end`:
/// entries past the tail were zeroed by a cut; missing ones are added.
fn rebuild_index(seg: &Segment, header: &SegmentHeader, records: &[(u64, usize)], end: usize) {
    let region = seg.region();
    let mut slot = 0usize;
    let mut next_pos = header.data_start();
    for (offset, position) in records.iter().copied().take_while(|(_, p)| *p < end) {
        if position >= next_pos && slot < header.index_entries as usize {
            region.store_index(slot, format::index_entry((offset - header.base_offset) as u32, position as u32));
            slot += 1;
            next_pos = position + header.index_interval as usize;
        }
    }
}

/// Checks that the segment before the tail ends where the tail starts, putting back an end
/// marker lost in a crash (or with the file's last bytes).
fn seal_predecessor(
    lock: &DirLock,
    prev: &(SegmentId, PathBuf),
    base_offset: u64,
    durable: u64,
    payload_max: usize,
) -> Result<(), LogError> {
    let (prev_id, prev_path) = prev.clone();
    let prev = Segment::open(&prev_path, prev_id, true)?;
    let region = prev.region();
    let prev_scan = scan_segment(&region, &prev.header, payload_max, |_, _| {});
    let short = (prev.mapped_bytes as u64) < prev.header.segment_bytes;
    let from = if prev_scan.end == ScanEnd::Sealed { prev_scan.position + 8 } else { prev_scan.position };
    let after = if from < region.len() && last_nonzero(&prev, from) > from {
        records_after(&prev, prev_scan.position, prev_scan.next_offset, payload_max).0
    } else {
        0
    };
    let cx = EndContext { next_base: Some(base_offset), durable, after, short };
    match judge_end(&prev_scan, &cx) {
        Verdict::Clean if !short => Ok(()),
        Verdict::Clean | Verdict::LostSeal => restore_seal(lock, &prev, prev_scan.position),
        Verdict::Torn(why) | Verdict::Corrupt(why) => Err(LogError::Corruption {
            path: prev_path,
            position: prev_scan.position as u64,
            offset: prev_scan.next_offset,
            why,
        }),
    }
}

/// Opens the first prepared (unused) segment a previous run left, to be used next, and
/// removes any others.
fn reuse_prepared(unused: &[(SegmentId, PathBuf)], prefault: bool) -> Result<Option<Arc<Segment>>, LogError> {
    let mut prepared = None;
    for (i, (id, path)) in unused.iter().enumerate() {
        if i == 0 {
            let seg = Segment::open(path, *id, true)?;
            if (seg.mapped_bytes as u64) < seg.header.segment_bytes {
                // Cut short outside shoal: it holds no record (never activated), so it is
                // removed like any extra prepared segment, and the preparer makes a whole one.
                tracing::warn!("{}: removed a prepared segment shorter than its header says", path.display());
                drop(seg);
                std::fs::remove_file(path).map_err(|e| LogError::io(path, "remove", e))?;
                continue;
            }
            if prefault {
                let _ = seg.region(); // mapping populated lazily by appends
            }
            prepared = Some(Arc::new(seg));
        } else {
            std::fs::remove_file(path).map_err(|e| LogError::io(path, "remove", e))?;
        }
    }
    Ok(prepared)
}
