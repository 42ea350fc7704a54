//! The offline checks of a log: `verify` (read-only, every record's checksum, the `HEAD`
//! page and an interrupted repair's journal), `repair` (under the appender lock) and `stats`.
//!
//! Every segment's end is judged by [`judge_end`](super::scan::judge_end): damage is a torn
//! tail only at the end of the last segment in use, at or past the durable watermark, with
//! nothing intact after it; a lost end marker with the next segment starting right after the
//! last record is a lost seal (nothing lost); anything else is corruption.
//!
//! [`repair`] first finishes a repair that was killed (its journal, see
//! [`scan`](super::scan)), then writes back lost end markers, then cuts at the first damage
//! (journal first, synced, then the cut, the removal of later segments, the watermark), then
//! rewrites a damaged `HEAD`. Killed at any instant, a second repair finishes the work; the
//! fail points of [`fail_point`](super::scan::fail_point) stop it at each step for tests.

use std::path::{Path, PathBuf};

use super::error::LogError;
use super::format::{self, BASE_OFFSET_UNSET};
use super::head::{rewrite_head, Head, HeadSnapshot, SlotState, HEAD_FILE};
use super::lock::DirLock;
use super::scan::{
    finish_journal, judge_end, last_nonzero, read_journal, records_after, restore_seal, scan_segment, write_journal,
    EndContext, Journal, ScanEnd, Verdict, JOURNAL_FILE,
};
use super::segment::{list_segments, open_log_dir, Segment, SegmentId};
use crate::sys::fs::Dir;

/// One problem found by [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// Byte position in the file.
    pub position: u64,
    /// What is wrong.
    pub what: String,
    /// True when `repair` can fix it.
    pub repairable: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: byte {}: {}{}",
            self.path.display(),
            self.position,
            self.what,
            if self.repairable { " (repairable: run `shoal verify --repair`)" } else { "" }
        )
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Segment files checked.
    pub segments: u64,
    /// Intact records.
    pub records: u64,
    /// Problems, in log order.
    pub problems: Vec<Problem>,
    /// Where a repair would cut: (segment id, path, position, offset).
    cut: Option<(SegmentId, PathBuf, usize, u64)>,
    /// Segments whose lost end marker a repair writes back: (id, path, position).
    seals: Vec<(SegmentId, PathBuf, usize)>,
    /// The `HEAD` page needs rewriting.
    head_damaged: bool,
    /// Offset after the last intact record before any cut.
    end_offset: u64,
    /// Highest offset of an intact record after the cut.
    last_after_cut: Option<u64>,
    /// Intact records after the cut point (what a repair drops).
    pub records_after_cut: u64,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Figures of a log for `shoal stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Segment files (in use and prepared).
    pub segments: u64,
    /// Records in the log.
    pub records: u64,
    /// Disk space the segment files take: their allocated blocks (segments are sparse, so
    /// this grows with what was written and prepared ahead, not with the segment size).
    pub bytes: u64,
    /// First offset held, if any record is.
    pub first_offset: Option<u64>,
    /// Last offset held, if any record is.
    pub last_offset: Option<u64>,
    /// Durable watermark recorded by the appender: offsets below it are durable.
    pub durable_offset: u64,
    /// The pids of the processes with an appender open on the log, one entry per appender
    /// (see [`producers`]).
    pub producers: Vec<u32>,
}

/// The pids of the processes with an appender open on the log in `dir`, one entry per
/// appender (a process with two appenders on it appears twice), sorted: the holders of the
/// log lock, as `/proc/locks` lists them. Empty when none is open (or there is no procfs).
///
/// # Errors
/// A symlink or non-regular file planted as `LOCK`; I/O errors opening it.
pub fn producers(dir: &Path) -> Result<Vec<u32>, LogError> {
    let path = dir.join(super::lock::LOCK_FILE);
    let file = match crate::sys::fs::open_file_at(&path, crate::sys::fs::Open::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(&path, "open", e)),
    };
    let mut pids = crate::sys::file::flock_holders(&file).unwrap_or_default();
    pids.sort_unstable();
    Ok(pids)
}

/// Checks every segment of the log in `dir`, every record's checksum included, the `HEAD`
/// page (its checksummed watermark copies) and whether a repair was interrupted. Never
/// changes or creates anything and never panics, whatever the files hold.
///
/// # Errors
/// Only when the directory cannot be listed, holds no log, or is a bus or topic directory
/// ([`LogError::WrongDirectory`]); damaged files are problems in the report.
pub fn verify(dir: &Path) -> Result<VerifyReport, LogError> {
    super::segment::refuse_bus_dir(dir)?;
    let (segments, _temps) = list_segments(dir)?;
    if segments.is_empty() && !dir.join(HEAD_FILE).exists() && !dir.join(JOURNAL_FILE).exists() {
        return Err(LogError::NoLog { path: dir.to_path_buf() });
    }
    let mut report = VerifyReport { segments: segments.len() as u64, ..VerifyReport::default() };
    check_journal(&mut report, dir)?;
    let durable = check_head(&mut report, dir);
    let opened: Vec<Result<Segment, LogError>> =
        segments.iter().map(|(id, path)| Segment::open(path, *id, false)).collect();
    // Base offset of the segment after each one, as the boundary check needs it: `None`
    // after the last segment in use; the segment's own end when the next file cannot be
    // read (that file is reported on its own and not cut away).
    let in_use = |s: &Result<Segment, LogError>| s.as_ref().is_ok_and(|s| s.header.base_offset != BASE_OFFSET_UNSET);
    let last_in_use = opened.iter().rposition(in_use);
    let mut expected: Option<u64> = None;
    let mut prepared_seen = false;
    for (index, ((id, path), seg)) in segments.iter().zip(&opened).enumerate() {
        let seg = match seg {
            Ok(seg) => seg,
            Err(e) => {
                report.problems.push(Problem {
                    path: path.clone(),
                    position: 0,
                    what: e.to_string(),
                    repairable: false,
                });
                expected = None;
                continue;
            }
        };
        let header = seg.header;
        if header.base_offset == BASE_OFFSET_UNSET {
            prepared_seen = true;
            continue;
        }
        if prepared_seen {
            report.problems.push(Problem {
                path: path.clone(),
                position: 24,
                what: "segment in use after a prepared (unused) segment".into(),
                repairable: false,
            });
        }
        let region = seg.region();
        if report.cut.is_some() {
            // Everything after a cut is dropped by a repair: count it.
            let scan = scan_segment(&region, &header, format::PAYLOAD_BYTES_FORMAT_MAX, |_, _| {});
            report.records_after_cut += scan.records;
            if scan.records > 0 {
                report.last_after_cut = Some(scan.next_offset - 1);
            }
            continue;
        }
        let next_base = if Some(index) == last_in_use {
            None
        } else {
            match opened.get(index + 1) {
                Some(Ok(next)) if next.header.base_offset != BASE_OFFSET_UNSET => Some(next.header.base_offset),
                // A prepared or unreadable successor: judged by its own problem, not here.
                _ => None,
            }
        };
        let unknown_successor = next_base.is_none() && Some(index) != last_in_use;
        expected = Some(check_records(&mut report, (*id, path), seg, next_base, unknown_successor, durable));
    }
    if report.cut.is_none() {
        report.end_offset = expected.unwrap_or(report.end_offset);
    }
    Ok(report)
}

/// Reports the journal of an interrupted repair.
fn check_journal(report: &mut VerifyReport, dir: &Path) -> Result<(), LogError> {
    let path = dir.join(JOURNAL_FILE);
    if !path.exists() {
        return Ok(());
    }
    let what = match read_journal(dir)? {
        Some(j) => format!(
            "a repair was interrupted while cutting segment {} at byte {} (offset {} onward)",
            j.segment.0, j.position, j.offset
        ),
        None => "an unfinished repair journal (written before any change)".to_string(),
    };
    report.problems.push(Problem { path, position: 0, what, repairable: true });
    Ok(())
}

/// Checks the `HEAD` page; returns the durable watermark to judge damage by (0 when the
/// page is unreadable: every judgement then leans to "torn", and the page is reported).
fn check_head(report: &mut VerifyReport, dir: &Path) -> u64 {
    let path = dir.join(HEAD_FILE);
    // A live appender may be rewriting a slot this instant: read again before calling it
    // damaged.
    let mut snapshot = HeadSnapshot::read(dir);
    for _ in 0..3 {
        let torn = matches!(&snapshot, Ok(Some(s)) if s.slots.contains(&SlotState::Damaged));
        if !torn {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        snapshot = HeadSnapshot::read(dir);
    }
    match snapshot {
        Ok(None) => 0,
        Err(e) => {
            report.head_damaged = true;
            report.problems.push(Problem { path, position: 0, what: e.to_string(), repairable: true });
            0
        }
        Ok(Some(head)) => {
            for (i, slot) in head.slots.iter().enumerate() {
                if *slot == SlotState::Damaged {
                    report.head_damaged = true;
                    report.problems.push(Problem {
                        path: path.clone(),
                        position: [192, 224][i],
                        what: format!(
                            "durable-watermark copy {i} fails its checksum (ignored; the higher of the other copy and the plain word is used)"
                        ),
                        repairable: true,
                    });
                }
            }
            let trusted = head.durable();
            let any_valid = head.slots.iter().any(|s| matches!(s, SlotState::Valid { .. }));
            if any_valid && head.durable_plain > trusted {
                report.head_damaged = true;
                report.problems.push(Problem {
                    path,
                    position: 128,
                    what: format!(
                        "durable watermark word says {} but its checksummed copies say {trusted} (the copies are trusted)",
                        head.durable_plain
                    ),
                    repairable: true,
                });
            }
            trusted
        }
    }
}

/// Scans the records of segment `id` at `path` into `report`: counts them and judges how
/// they end, recording a problem and what a repair does about it. Returns the offset after
/// its last intact record.
fn check_records(
    report: &mut VerifyReport,
    (id, path): (SegmentId, &PathBuf),
    seg: &Segment,
    next_base: Option<u64>,
    unknown_successor: bool,
    durable: u64,
) -> u64 {
    let header = seg.header;
    let region = seg.region();
    let short = (seg.mapped_bytes as u64) < header.segment_bytes;
    let payload_max = format::PAYLOAD_BYTES_FORMAT_MAX;
    let scan = scan_segment(&region, &header, payload_max, |_, _| {});
    report.records += scan.records;
    let from = if scan.end == ScanEnd::Sealed { scan.position + 8 } else { scan.position };
    let (after, highest) = if from < region.len() && last_nonzero(seg, from) > from {
        records_after(seg, scan.position, scan.next_offset, payload_max)
    } else {
        (0, None)
    };
    // A successor that cannot be read is reported on its own; judge this end as if the
    // successor started right here.
    let next_base = if unknown_successor { Some(scan.next_offset) } else { next_base };
    let verdict = judge_end(&scan, &EndContext { next_base, durable, after, short });
    let n = scan.next_offset;
    match verdict {
        Verdict::Clean if short => {
            report.problems.push(Problem {
                path: path.clone(),
                position: seg.mapped_bytes as u64,
                what: format!(
                    "file is {} bytes, its header says {} (nothing lost; a repair restores the length)",
                    seg.mapped_bytes, header.segment_bytes
                ),
                repairable: true,
            });
            report.seals.push((id, path.clone(), scan.position));
        }
        Verdict::Clean => {}
        Verdict::LostSeal => {
            report.problems.push(Problem {
                path: path.clone(),
                position: scan.position as u64,
                what: format!(
                    "end-of-segment marker missing after offset {} (the next segment starts at {n}; no record is lost, a repair writes the marker back)",
                    n.wrapping_sub(1)
                ),
                repairable: true,
            });
            report.seals.push((id, path.clone(), scan.position));
        }
        Verdict::Torn(_) | Verdict::Corrupt(_) => {
            let (torn, why) = match verdict {
                Verdict::Torn(why) => (true, why),
                Verdict::Corrupt(why) => (false, why),
                _ => (false, String::new()),
            };
            let what = if torn {
                format!("torn record at offset {n}: {why}")
            } else {
                format!("corrupt record at offset {n}: {why}")
            };
            report.problems.push(Problem {
                path: path.clone(),
                position: scan.position as u64,
                what,
                repairable: true,
            });
            report.records_after_cut += after;
            report.last_after_cut = highest;
            report.end_offset = n;
            report.cut = Some((id, path.clone(), scan.position, n));
        }
    }
    n
}

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// Where the log was cut: (file, byte position, first offset dropped); `None` when
    /// nothing needed cutting.
    pub cut: Option<(PathBuf, u64, u64)>,
    /// Intact records dropped after the damage.
    pub records_dropped: u64,
    /// The highest offset dropped, when intact records were dropped.
    pub last_offset_dropped: Option<u64>,
    /// Sealed segments whose lost end marker (or cut-off length) was written back, no record
    /// lost.
    pub seals_restored: Vec<PathBuf>,
    /// An interrupted repair was finished first: its cut (segment file, byte, first offset
    /// dropped).
    pub resumed: Option<(PathBuf, u64, u64)>,
    /// The `HEAD` page was rewritten (it was damaged).
    pub head_rewritten: bool,
    /// Problems `repair` cannot fix (foreign files, newer versions).
    pub unrepairable: Vec<Problem>,
}

impl RepairReport {
    /// True when the repair changed nothing.
    pub fn is_noop(&self) -> bool {
        self.cut.is_none() && self.seals_restored.is_empty() && self.resumed.is_none() && !self.head_rewritten
    }
}

/// Repairs the log in `dir`: finishes an interrupted repair, writes back lost end markers,
/// cuts at the first damaged record keeping every intact record before it, and rewrites a
/// damaged `HEAD`. Takes the appender lock for the duration. Crash-safe: killed at any
/// instant, running it again finishes the job.
///
/// # Errors
/// [`LogError::NoLog`] when `dir` holds no log (nothing is created); [`LogError::Locked`]
/// when an appender is running; I/O errors.
pub fn repair(dir: &Path) -> Result<RepairReport, LogError> {
    // Read-only first: a directory that holds no log gets an error and no lock file (nor is
    // the directory created).
    let handle = open_log_dir(dir)?;
    verify(dir)?;
    let lock = DirLock::acquire(&handle)?;
    let reset = |offset: u64| reset_head(&handle, offset);
    let resumed = finish_journal(&lock, dir, reset)?
        .map(|j| (dir.join(super::segment::segment_file_name(j.segment)), j.position, j.offset));
    let report = verify(dir)?;
    let unrepairable: Vec<Problem> = report.problems.iter().filter(|p| !p.repairable).cloned().collect();
    let mut out = RepairReport {
        cut: None,
        records_dropped: 0,
        last_offset_dropped: None,
        seals_restored: Vec::new(),
        resumed,
        head_rewritten: false,
        unrepairable,
    };
    for (id, path, position) in &report.seals {
        let seg = Segment::open(path, *id, true)?;
        restore_seal(&lock, &seg, *position)?;
        out.seals_restored.push(path.clone());
    }
    let unreadable = match &report.cut {
        Some((id, ..)) => unreadable_after(dir, *id)?,
        None => Vec::new(),
    };
    if let (Some((_, path, position, offset)), false) = (&report.cut, unreadable.is_empty()) {
        // A cut removes every segment after it: never one this build cannot read (a newer
        // format, a file of another log, a damaged header), whose records it cannot count
        // and may not be damaged at all.
        for (later, why) in unreadable {
            out.unrepairable.push(Problem {
                what: format!(
                    "not cut: a repair would cut {} at byte {position} (offset {offset} onward) and remove this file, which this shoal cannot read ({why}); move it out of the log directory if it does not belong to this log, or use a shoal that reads it, then repair again",
                    path.display()
                ),
                path: later,
                position: 0,
                repairable: false,
            });
        }
    } else if let Some((id, path, position, offset)) = report.cut.clone() {
        let journal =
            Journal { segment: id, position: position as u64, offset, records_dropped: report.records_after_cut };
        write_journal(&lock, dir, &journal)?;
        finish_journal(&lock, dir, reset)?;
        out.cut = Some((path, position as u64, offset));
        out.records_dropped = report.records_after_cut;
        out.last_offset_dropped = report.last_after_cut;
    } else if report.head_damaged {
        // Every record held is intact: sync the last segment in use, then call it durable.
        let (segments, _) = list_segments(dir)?;
        for (id, path) in segments.iter().rev() {
            let seg = Segment::open(path, *id, true)?;
            if seg.header.base_offset != BASE_OFFSET_UNSET {
                seg.file.sync_data().map_err(|e| LogError::io(path, "fdatasync", e))?;
                break;
            }
        }
        rewrite_head(&handle, report.end_offset)?;
        out.head_rewritten = true;
    }
    Ok(out)
}

/// The segment files after segment `id` that cannot be opened as segments of this log, with
/// why.
fn unreadable_after(dir: &Path, id: SegmentId) -> Result<Vec<(PathBuf, String)>, LogError> {
    let (segments, _) = list_segments(dir)?;
    Ok(segments
        .iter()
        .filter(|(later, _)| *later > id)
        .filter_map(|(later, path)| Segment::open(path, *later, false).err().map(|e| (path.clone(), e.to_string())))
        .collect())
}

/// Sets the watermark after a cut; a page that cannot be mapped as a control page is
/// rewritten whole.
fn reset_head(dir: &Dir, offset: u64) -> Result<(), LogError> {
    match Head::open_writable(dir) {
        Ok(None) => Ok(()),
        Ok(Some(head)) => {
            head.reset_offsets(offset);
            Ok(())
        }
        // A symlink or other planted entry stays an error; a page that is no control page
        // is rewritten whole.
        Err(e @ LogError::Io { .. }) => Err(e),
        Err(_) => rewrite_head(dir, offset),
    }
}

/// Disk space the segment files of the log in `dir` take: their allocated blocks (segments
/// are sparse, so this is what they hold, not their length). A segment removed by retention
/// between the listing and its `stat` is not counted.
///
/// # Errors
/// [`LogError::NoLog`] when `dir` is not a directory; I/O errors listing it or reading a
/// segment's metadata.
pub fn disk_bytes(dir: &Path) -> Result<u64, LogError> {
    segments_disk_bytes(&list_segments(dir)?.0)
}

fn segments_disk_bytes(segments: &[(SegmentId, PathBuf)]) -> Result<u64, LogError> {
    let mut bytes = 0;
    for (_, path) in segments {
        match std::fs::metadata(path) {
            Ok(meta) => bytes += std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io(path, "stat", e)),
        }
    }
    Ok(bytes)
}

/// Figures of the log in `dir` (scans the last segment in use; trusts older ones' headers).
///
/// # Errors
/// [`LogError::NoLog`] when `dir` holds no log; [`LogError::WrongDirectory`] for a bus or
/// topic directory; I/O errors or files that are not segments.
pub fn stats(dir: &Path) -> Result<LogStats, LogError> {
    super::segment::refuse_bus_dir(dir)?;
    let (segments, _) = list_segments(dir)?;
    if segments.is_empty() && !dir.join(HEAD_FILE).exists() {
        return Err(LogError::NoLog { path: dir.to_path_buf() });
    }
    let mut out = LogStats {
        segments: segments.len() as u64,
        durable_offset: read_durable(dir)?,
        producers: producers(dir)?,
        ..LogStats::default()
    };
    out.bytes = segments_disk_bytes(&segments)?;
    let mut last_in_use: Option<Segment> = None;
    for (id, path) in &segments {
        let seg = Segment::open(path, *id, false)?;
        if seg.header.base_offset != BASE_OFFSET_UNSET {
            out.first_offset.get_or_insert(seg.header.base_offset);
            last_in_use = Some(seg);
        }
    }
    if let Some(seg) = last_in_use {
        let region = seg.region();
        let payload_max = format::PAYLOAD_BYTES_FORMAT_MAX;
        let scan = scan_segment(&region, &seg.header, payload_max, |_, _| {});
        // The end of the last segment is judged as `verify` judges it: figures that stop at
        // damage would read as a shorter, sound log.
        let from = if scan.end == ScanEnd::Sealed { scan.position + 8 } else { scan.position };
        let after = if from < region.len() && last_nonzero(&seg, from) > from {
            records_after(&seg, scan.position, scan.next_offset, payload_max).0
        } else {
            0
        };
        let short = (seg.mapped_bytes as u64) < seg.header.segment_bytes;
        let cx = EndContext { next_base: None, durable: out.durable_offset, after, short };
        if let Verdict::Corrupt(why) = judge_end(&scan, &cx) {
            return Err(LogError::Corruption {
                path: seg.path.clone(),
                position: scan.position as u64,
                offset: scan.next_offset,
                why: format!("{why}; `shoal verify` lists the damage and `shoal verify --repair` cuts it"),
            });
        }
        let first = out.first_offset.unwrap_or(0);
        // Older headers are trusted, not checked: a damaged one can claim a base offset past
        // the last segment's records.
        out.records = scan.next_offset.saturating_sub(first);
        if scan.next_offset > first {
            out.last_offset = Some(scan.next_offset - 1);
        } else {
            out.first_offset = None;
        }
        out.durable_offset = out.durable_offset.min(scan.next_offset);
    }
    Ok(out)
}

/// The durable watermark recorded in `HEAD` (its checksummed copies), read without
/// changing anything; 0 when there is none or it is unreadable.
///
/// # Errors
/// A `HEAD` that cannot be opened (a symlink or non-regular file planted there, I/O).
fn read_durable(dir: &Path) -> Result<u64, LogError> {
    match HeadSnapshot::read(dir) {
        Ok(head) => Ok(head.map_or(0, |h| h.durable())),
        Err(e @ LogError::Io { .. }) => Err(e),
        Err(_) => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::{data_start, SegmentHeader};

    fn write_segment(dir: &Path, seq: u64, base_offset: u64) {
        let segment_bytes = data_start(0) + 4096;
        let header = SegmentHeader {
            seq,
            base_offset,
            segment_bytes: segment_bytes as u64,
            index_entries: 0,
            index_interval: 4096,
            created_ns: 1,
            activated_ns: 2,
        };
        let mut bytes = vec![0u8; segment_bytes];
        bytes[..64].copy_from_slice(&header.encode());
        std::fs::write(dir.join(crate::log::segment::segment_file_name(crate::log::SegmentId(seq))), bytes)
            .expect("write a segment");
    }

    /// Found by the `decode_segment` fuzz target: `stats` subtracted the first segment's
    /// base offset from the last one's end and overflowed when a damaged (or foreign)
    /// header put the first segment past the last.
    #[test]
    fn stats_survives_base_offsets_that_go_backwards() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        write_segment(dir.path(), 0, 1000);
        write_segment(dir.path(), 1, 5);
        let stats = stats(dir.path()).expect("stats of well-formed segment files");
        assert_eq!(stats.records, 0);
        assert_eq!(stats.last_offset, None);
        assert!(verify(dir.path()).is_ok_and(|r| !r.is_sound()), "verify reports the gap");
    }
}
