//! The offline checks of a log: `verify` (read-only, every record's checksum), `repair` (cut
//! at the first damage, under the appender lock) and `stats`.

use std::path::{Path, PathBuf};

use super::error::LogError;
use super::format::{self, BASE_OFFSET_UNSET};
use super::head::{Head, HEAD_FILE};
use super::lock::DirLock;
use super::scan::{cut_segment, records_after, scan_segment, ScanEnd};
use super::segment::{list_segments, open_log_dir, segment_file_name, Segment};

/// One problem found by [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// Byte position in the file.
    pub position: u64,
    /// What is wrong.
    pub what: String,
    /// True when `repair` can fix it by cutting the log there.
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
            if self.repairable { " (repairable: `shoal verify --repair` truncates the log here)" } else { "" }
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
    /// Where a repair would cut: (segment index in the listing, path, position, offset).
    cut: Option<(usize, PathBuf, usize, u64)>,
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
    /// Bytes of segment files on disk.
    pub bytes: u64,
    /// First offset held, if any record is.
    pub first_offset: Option<u64>,
    /// Last offset held, if any record is.
    pub last_offset: Option<u64>,
    /// Durable watermark recorded by the appender: offsets below it are durable.
    pub durable_offset: u64,
}

/// Checks every segment of the log in `dir`, every record's checksum included. Never
/// changes anything and never panics, whatever the files hold.
///
/// # Errors
/// Only when the directory cannot be listed; damaged files are problems in the report.
pub fn verify(dir: &Path) -> Result<VerifyReport, LogError> {
    let (segments, _temps) = list_segments(dir)?;
    if segments.is_empty() && !dir.join(HEAD_FILE).exists() {
        return Err(LogError::NoLog { path: dir.to_path_buf() });
    }
    let durable = read_durable(dir)?;
    let mut report = VerifyReport { segments: segments.len() as u64, ..VerifyReport::default() };
    let mut expected: Option<u64> = None;
    let mut prepared_seen = false;
    let opened: Vec<Result<Segment, LogError>> =
        segments.iter().map(|(id, path)| Segment::open(path, *id, false)).collect();
    let last_in_use = opened.iter().rposition(|s| s.as_ref().is_ok_and(|s| s.header.base_offset != BASE_OFFSET_UNSET));
    for (index, ((_, path), seg)) in segments.iter().zip(opened).enumerate() {
        let seg = match seg {
            Ok(seg) => seg,
            Err(e) => {
                report.problems.push(Problem {
                    path: path.clone(),
                    position: 0,
                    what: e.to_string(),
                    repairable: false,
                });
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
        if let Some(exp) = expected {
            if header.base_offset != exp && report.cut.is_none() {
                report.problems.push(Problem {
                    path: path.clone(),
                    position: 24,
                    what: format!(
                        "starts at offset {} but the previous segment ends at offset {exp}",
                        header.base_offset
                    ),
                    repairable: false,
                });
            }
        }
        if report.cut.is_some() {
            // Everything after a cut is dropped by a repair: count it.
            let scan = scan_segment(&region, &header, format::PAYLOAD_BYTES_FORMAT_MAX, |_, _| {});
            report.records_after_cut += scan.records;
            continue;
        }
        let is_last_in_use = last_in_use == Some(index);
        expected = Some(check_records(&mut report, index, path, &seg, is_last_in_use, durable));
    }
    Ok(report)
}

/// Scans the records of a segment in use (segment `index` of the listing, at `path`) into
/// `report`: counts them and reports damage, or a file cut short, as a problem and as the
/// cut a repair would make. Returns the offset after its last intact record.
fn check_records(
    report: &mut VerifyReport,
    index: usize,
    path: &Path,
    seg: &Segment,
    is_last_in_use: bool,
    durable: u64,
) -> u64 {
    let header = seg.header;
    let region = seg.region();
    let short = (seg.mapped_bytes as u64) < header.segment_bytes;
    let scan = scan_segment(&region, &header, format::PAYLOAD_BYTES_FORMAT_MAX, |_, _| {});
    report.records += scan.records;
    let mut damage = match scan.end {
        ScanEnd::Damaged(e) => Some(e.to_string()),
        _ => None,
    };
    if short && damage.is_none() && scan.end != ScanEnd::Sealed {
        damage = Some(format!("file is {} bytes, its header says {}", seg.mapped_bytes, header.segment_bytes));
    }
    if let Some(what) = damage {
        let (after, _) = records_after(&region, scan.position, scan.next_offset, format::PAYLOAD_BYTES_FORMAT_MAX);
        let torn = is_last_in_use && after == 0 && scan.next_offset >= durable;
        let what = if torn {
            format!("torn record at offset {}: {what}", scan.next_offset)
        } else {
            format!(
                "corrupt record at offset {}: {what}{}",
                scan.next_offset,
                if scan.next_offset < durable { " (below the durable watermark)" } else { "" }
            )
        };
        report.problems.push(Problem {
            path: path.to_path_buf(),
            position: scan.position as u64,
            what,
            repairable: true,
        });
        report.records_after_cut += after;
        report.cut = Some((index, path.to_path_buf(), scan.position, scan.next_offset));
    } else if short {
        report.problems.push(Problem {
            path: path.to_path_buf(),
            position: seg.mapped_bytes as u64,
            what: format!("file is {} bytes, its header says {}", seg.mapped_bytes, header.segment_bytes),
            repairable: true,
        });
    }
    scan.next_offset
}

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// Where the log was cut: (file, byte position, first offset dropped); `None` when
    /// nothing needed cutting.
    pub cut: Option<(PathBuf, u64, u64)>,
    /// Intact records dropped after the damage.
    pub records_dropped: u64,
    /// Problems `repair` cannot fix (foreign files, gaps, newer versions).
    pub unrepairable: Vec<Problem>,
}

/// Cuts the log in `dir` at its first damaged record, keeping everything before it. Takes
/// the appender lock for the duration.
///
/// # Errors
/// [`LogError::Locked`] when an appender is running; I/O errors.
pub fn repair(dir: &Path) -> Result<RepairReport, LogError> {
    // Nothing is created: not the directory, and no `LOCK` where there is no log.
    let handle = open_log_dir(dir)?;
    if list_segments(dir)?.0.is_empty() && !dir.join(HEAD_FILE).exists() {
        return Err(LogError::NoLog { path: dir.to_path_buf() });
    }
    let lock = DirLock::acquire(&handle)?;
    let report = verify(dir)?;
    let unrepairable: Vec<Problem> = report.problems.iter().filter(|p| !p.repairable).cloned().collect();
    let (segments, _) = list_segments(dir)?;
    if let Some((index, path, position, offset)) = report.cut.clone() {
        let seg = Segment::open(&path, segments[index].0, true)?;
        let header = seg.header;
        cut_segment(&lock, &seg, &header, position)?;
        for (id, later) in &segments[index + 1..] {
            handle.unlink(&segment_file_name(*id)).map_err(|e| LogError::io(later, "remove", e))?;
        }
        handle.sync().map_err(|e| LogError::io(dir, "fsync", e))?;
        if let Ok(Some(head)) = Head::open_writable(&handle) {
            head.reset_offsets(offset);
        }
        return Ok(RepairReport {
            cut: Some((path, position as u64, offset)),
            records_dropped: report.records_after_cut,
            unrepairable,
        });
    }
    Ok(RepairReport { cut: None, records_dropped: 0, unrepairable })
}

/// Figures of the log in `dir` (scans the last segment in use; trusts older ones' headers).
///
/// # Errors
/// I/O errors or files that are not segments.
pub fn stats(dir: &Path) -> Result<LogStats, LogError> {
    let (segments, _) = list_segments(dir)?;
    let mut out =
        LogStats { segments: segments.len() as u64, durable_offset: read_durable(dir)?, ..LogStats::default() };
    let mut last_in_use: Option<Segment> = None;
    for (id, path) in &segments {
        out.bytes += std::fs::metadata(path).map_err(|e| LogError::io(path, "stat", e))?.len();
        let seg = Segment::open(path, *id, false)?;
        if seg.header.base_offset != BASE_OFFSET_UNSET {
            out.first_offset.get_or_insert(seg.header.base_offset);
            last_in_use = Some(seg);
        }
    }
    if let Some(seg) = last_in_use {
        let scan = scan_segment(&seg.region(), &seg.header, format::PAYLOAD_BYTES_FORMAT_MAX, |_, _| {});
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

/// The durable watermark recorded in `HEAD`, or 0 when there is none. `HEAD` is opened as
/// it is (never created or extended), read-only where it cannot be written.
///
/// # Errors
/// A `HEAD` that cannot be opened (a symlink or non-regular file planted there, I/O).
fn read_durable(dir: &Path) -> Result<u64, LogError> {
    match Head::open_existing(dir) {
        Ok(head) => Ok(head.map_or(0, |h| h.durable_offset())),
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
