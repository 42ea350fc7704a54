//! Zero-copy reading: [`Reader`] iterates and seeks over the records of a log, in this process
//! or another; [`Tailer`](super::Tailer) follows it as it grows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::LogError;
use super::format::{self, Region, Slot, BASE_OFFSET_UNSET};
use super::head::Head;
use super::segment::{list_segments, Segment, SegmentId};
use super::Offset;

/// One record, borrowed from the mapped segment.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    offset: Offset,
    timestamp_ns: u64,
    key: u64,
    payload: &'a [u8],
    event_time_ns: Option<u64>,
    key_bytes: Option<&'a [u8]>,
}

/// An owned handle on a record in a mapped segment: cloning it clones an `Arc`, never the
/// payload. It keeps the segment mapped (even after retention removes its file), so large
/// payloads can travel through rings and across threads as references to the log.
#[derive(Clone, Debug)]
pub struct RecordRef {
    segment: Arc<Segment>,
    /// Byte position of the payload in the segment.
    payload_at: usize,
    len: usize,
    offset: Offset,
    timestamp_ns: u64,
    key: u64,
    event_time_ns: Option<u64>,
    /// (byte position, length) of the key text in the segment.
    key_at: Option<(usize, usize)>,
}

impl RecordRef {
    /// The record's offset.
    pub fn offset(&self) -> Offset {
        self.offset
    }

    /// The append time: the log's wall clock at append, ns since the Unix epoch
    /// (non-decreasing in offset order in segments of format version 2).
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }

    /// The routing key given at append (with key text, its hash).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The producer's event time, when the record carries one.
    pub fn event_time_ns(&self) -> Option<u64> {
        self.event_time_ns
    }

    /// The key's bytes, when the record carries them, in place in the mapped segment.
    pub fn key_bytes(&self) -> Option<&[u8]> {
        let (at, len) = self.key_at?;
        Some(self.bytes_at(at, len))
    }

    /// The payload, in place in the mapped segment.
    pub fn payload(&self) -> &[u8] {
        self.bytes_at(self.payload_at, self.len)
    }

    /// The record borrowed from this handle, as a [`Reader`] returns it.
    pub fn record(&self) -> Record<'_> {
        Record {
            offset: self.offset,
            timestamp_ns: self.timestamp_ns,
            key: self.key,
            payload: self.payload(),
            event_time_ns: self.event_time_ns,
            key_bytes: self.key_bytes(),
        }
    }

    fn bytes_at(&self, at: usize, len: usize) -> &[u8] {
        let region = self.segment.region();
        match region.committed_bytes(at, len) {
            // SAFETY: the bytes lie in the mapping owned by `self.segment`, which lives as
            // long as `self`; they are a committed record's, hence never written again.
            Some(bytes) => unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) },
            None => &[],
        }
    }

    /// Reads the payload in place as a `bytemuck::Pod` type.
    ///
    /// # Errors
    /// [`PodError`] when the size or alignment does not fit `T`.
    pub fn payload_as<T: bytemuck::Pod>(&self) -> Result<&T, PodError> {
        Record {
            offset: self.offset,
            timestamp_ns: self.timestamp_ns,
            key: self.key,
            payload: self.payload(),
            event_time_ns: None,
            key_bytes: None,
        }
        .payload_as::<T>()
    }
}

/// Why a payload cannot be read as a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The payload's length differs from the type's size.
    #[error("payload is {payload} bytes, the type is {expected}")]
    Size {
        /// Bytes in the payload.
        payload: usize,
        /// Size of the type.
        expected: usize,
    },
    /// The payload is not aligned for the type (types aligned above 8 bytes).
    #[error("payload is not aligned to {align} bytes for the type")]
    Alignment {
        /// The type's alignment.
        align: usize,
    },
}

impl<'a> Record<'a> {
    /// The record's offset.
    pub fn offset(&self) -> Offset {
        self.offset
    }

    /// The append time: the log's wall clock at append, ns since the Unix epoch
    /// (non-decreasing in offset order in segments of format version 2).
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }

    /// The routing key given at append (0 when none; with key text, its hash).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The key's bytes (the key text), when the record carries them, in place in the
    /// mapped segment.
    pub fn key_bytes(&self) -> Option<&'a [u8]> {
        self.key_bytes
    }

    /// The producer's event time (ns since the Unix epoch), when the record carries one.
    pub fn event_time_ns(&self) -> Option<u64> {
        self.event_time_ns
    }

    /// The payload, in place in the mapped segment.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Reads the payload in place as a `bytemuck::Pod` type. Payloads are 8-byte aligned,
    /// so any type aligned to 8 or less works when the size matches.
    ///
    /// # Errors
    /// [`PodError`] when the size or alignment does not fit `T`.
    pub fn payload_as<T: bytemuck::Pod>(&self) -> Result<&'a T, PodError> {
        bytemuck::try_from_bytes(self.payload).map_err(|e| match e {
            bytemuck::PodCastError::TargetAlignmentGreaterAndInputNotAligned => {
                PodError::Alignment { align: std::mem::align_of::<T>() }
            }
            _ => PodError::Size { payload: self.payload.len(), expected: std::mem::size_of::<T>() },
        })
    }
}

/// A reader over a log directory: iterates records in offset order from any offset,
/// zero-copy. Needs no lock and works while an appender writes, in this or another process.
///
/// ```
/// use shoal::log::{Appender, LogOptions, Offset, Reader};
/// let dir = tempfile::tempdir()?;
/// let mut log = Appender::open(dir.path(), LogOptions::default())?;
/// for i in 0..100u64 {
///     log.append_pod(i, &i)?;
/// }
/// let mut reader = Reader::open(dir.path())?;
/// reader.seek(Offset(42))?;
/// let record = reader.next()?.expect("record 42");
/// assert_eq!(*record.payload_as::<u64>()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    /// Known segments in use: (id, base offset), ascending.
    known: Vec<(SegmentId, u64)>,
    current: Option<Arc<Segment>>,
    region: Option<Region>,
    position: usize,
    next_offset: u64,
    /// The log's `HEAD` page, mapped on first need once it exists (an appender creates it);
    /// shared with a sleeper registration on it (`wait::Sleepers`), which may outlive the
    /// reader.
    head: Option<Arc<Head>>,
    /// The slot (segment, position) where a stopped log was last found to end cleanly, so
    /// that a follower polling it does not look past it again.
    checked_end: Option<(SegmentId, usize)>,
    /// A segment after the known ones whose header cannot be read (damaged, foreign, a newer
    /// format): reported when the reader gets to it, so the records before it stay readable.
    unreadable: Option<(SegmentId, PathBuf)>,
}

/// The header of segment `id` at `path`, checked against its name; `None` when the file is
/// gone (removed by retention after the listing).
fn segment_header(path: &Path, id: SegmentId) -> Result<Option<format::SegmentHeader>, LogError> {
    let mut file = match super::segment::open_log_file(path, crate::sys::fs::Open::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(path, "open", e)),
    };
    let header = super::segment::read_header_from_file(path, &mut file)?;
    if header.seq != id.0 {
        return Err(LogError::NotASegment {
            path: path.to_path_buf(),
            why: format!("its header says segment {}, its name says {}", header.seq, id.0),
        });
    }
    Ok(Some(header))
}

/// What the slot where a reader stopped turned out to be.
enum Stop {
    /// The tail: nothing more yet.
    Tail,
    /// A record arrived meanwhile: look again.
    Retry,
    /// The end of this segment; records go on in the next.
    Next,
}

impl Reader {
    /// Opens a reader positioned at the first record still held.
    ///
    /// # Errors
    /// [`LogError::NoLog`] when `dir` does not exist; [`LogError::WrongDirectory`] when it
    /// is a bus or topic directory; header errors of its segments. An existing directory
    /// with no segment yet is an empty log (an appender may create it later).
    pub fn open(dir: impl AsRef<Path>) -> Result<Reader, LogError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(LogError::NoLog { path: dir });
        }
        super::segment::refuse_bus_dir(&dir)?;
        let mut reader = Reader {
            dir,
            known: Vec::new(),
            current: None,
            region: None,
            position: 0,
            next_offset: 0,
            head: None,
            checked_end: None,
            unreadable: None,
        };
        reader.refresh()?;
        if let Some(&(id, base)) = reader.known.first() {
            reader.enter(id, base)?;
        }
        Ok(reader)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Offset of the record the next [`Reader::next`] returns.
    pub fn next_offset(&self) -> Offset {
        Offset(self.next_offset)
    }

    /// First offset still held (retention may have removed older ones).
    pub fn first_offset(&mut self) -> Result<Offset, LogError> {
        self.refresh()?;
        Ok(Offset(self.known.first().map_or(0, |k| k.1)))
    }

    /// Re-reads the directory listing (new segments, retention).
    fn refresh(&mut self) -> Result<(), LogError> {
        let (segments, _) = list_segments(&self.dir)?;
        let mut known = Vec::with_capacity(segments.len());
        self.unreadable = None;
        for (id, path) in segments {
            if let Some(&(kid, base)) = self.known.iter().find(|k| k.0 == id) {
                known.push((kid, base));
                continue;
            }
            let header = match segment_header(&path, id) {
                Ok(Some(header)) => header,
                // Removed by retention between listing and opening.
                Ok(None) => continue,
                Err(e @ LogError::Io { .. }) => return Err(e),
                // The segments before it stay readable: the reader reports this one when it
                // gets there (`Reader::unreadable_next`).
                Err(_) if !known.is_empty() => {
                    self.unreadable = Some((id, path));
                    break;
                }
                Err(e) => return Err(e),
            };
            if header.base_offset == BASE_OFFSET_UNSET {
                break; // prepared, not in use yet; so is everything after it
            }
            known.push((id, header.base_offset));
        }
        self.known = known;
        Ok(())
    }

    /// The error of an unreadable segment right after segment `id`, when the reader has read
    /// all it can before it.
    fn unreadable_next(&self, id: SegmentId) -> Option<LogError> {
        let (next, path) = self.unreadable.as_ref()?;
        if *next <= id || self.known.iter().any(|k| k.0 > id) {
            return None;
        }
        // Read again for the error itself (it is not `Clone`); readable now means it was
        // being written, and the next refresh takes it.
        segment_header(path, *next).err()
    }

    fn enter(&mut self, id: SegmentId, base: u64) -> Result<(), LogError> {
        let path = self.dir.join(super::segment::segment_file_name(id));
        let seg = match Segment::open(&path, id, false) {
            Ok(seg) => seg,
            Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                self.refresh()?;
                let first = self.known.first().map_or(base, |k| k.1);
                return Err(LogError::OffsetGone { path: self.dir.clone(), offset: base, first });
            }
            Err(e) => return Err(e),
        };
        if seg.header.base_offset != base {
            return Err(LogError::Inconsistent {
                path,
                why: format!("header says base offset {}, expected {base}", seg.header.base_offset),
            });
        }
        let seg = Arc::new(seg);
        self.position = seg.header.data_start();
        self.next_offset = base;
        self.region = Some(seg.region());
        self.current = Some(seg);
        Ok(())
    }

    /// Moves to the segment after the current one, if it is in use. Returns false when it
    /// is not there yet.
    fn advance(&mut self) -> Result<bool, LogError> {
        let current = match &self.current {
            Some(c) => c.id,
            None => {
                self.refresh()?;
                return match self.known.first().copied() {
                    Some((id, base)) => self.enter(id, base).map(|()| true),
                    None => Ok(false),
                };
            }
        };
        let next = match self.known.iter().find(|k| k.0 > current).copied() {
            Some(k) => Some(k),
            None => {
                self.refresh()?;
                self.known.iter().find(|k| k.0 > current).copied()
            }
        };
        match next {
            Some((id, base)) => {
                if base != self.next_offset {
                    return Err(LogError::Inconsistent {
                        path: self.dir.join(super::segment::segment_file_name(id)),
                        why: format!("segment starts at offset {base}, the previous one ends at {}", self.next_offset),
                    });
                }
                self.enter(id, base)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next record, or `None` when the reader has caught up with the appender.
    ///
    /// # Errors
    /// [`LogError::Corruption`] at a record that fails its checks (the reader stays there);
    /// [`LogError::OffsetGone`] when retention removed the next segment.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record<'_>>, LogError> {
        // Fast path: a whole record right here (one commit-word load, one checksum).
        if let Some(region) = self.region {
            if let Ok(Slot::Record(r)) =
                region.decode(self.position, Some(self.next_offset), format::PAYLOAD_BYTES_FORMAT_MAX)
            {
                self.position = r.next_position();
                self.next_offset += 1;
                // SAFETY: the payload and key bytes lie in the mapping owned by
                // `self.current`, which is only replaced or dropped through `&mut self`; the
                // returned record borrows `self`, so the mapping outlives it. The bytes are
                // committed, hence immutable.
                return Ok(Some(unsafe { record_of(&r) }));
            }
        }
        // Slow path: the end of a segment, the tail, or damage to report.
        if !self.ready()? {
            return Ok(None);
        }
        let position = self.position;
        let Some(region) = self.region else { return Ok(None) };
        let error = match region.decode(position, Some(self.next_offset), format::PAYLOAD_BYTES_FORMAT_MAX) {
            Ok(Slot::Record(r)) => {
                self.position = r.next_position();
                self.next_offset += 1;
                // SAFETY: as in the fast path above: the bytes lie in the mapping owned by
                // `self.current`, which is only replaced or dropped through `&mut self`, and
                // the returned record borrows `self`; committed bytes are immutable.
                return Ok(Some(unsafe { record_of(&r) }));
            }
            Ok(_) => return Ok(None),
            Err(e) => e,
        };
        // A record cut by a truncation under the mapping reads as zeros past the cut: the
        // truncation is the error, not damage to repair.
        if let Some(seg) = &self.current {
            seg.check_length()?;
        }
        if self.damaged_end_marker()? {
            // Bounded: each call enters a newer segment.
            return self.next();
        }
        Err(corruption(&self.current, &self.dir, position, self.next_offset, error.to_string()))
    }

    /// At bytes that are not a record: when the next segment starts at the reader's offset,
    /// they are this segment's damaged end marker (no record is missing), and the reader
    /// moves on into that segment.
    #[cold]
    #[inline(never)]
    fn damaged_end_marker(&mut self) -> Result<bool, LogError> {
        let Some(current) = self.current.as_ref().map(|c| c.id) else { return Ok(false) };
        self.refresh()?;
        match self.known.iter().find(|k| k.0 > current) {
            Some(&(_, base)) if base == self.next_offset => self.advance(),
            _ => Ok(false),
        }
    }

    /// The next record as an owned [`RecordRef`] (an `Arc` on its segment, no copy), or
    /// `None` when caught up.
    ///
    /// # Errors
    /// As [`Reader::next`].
    pub fn next_ref(&mut self) -> Result<Option<RecordRef>, LogError> {
        let Some(record) = self.next()? else { return Ok(None) };
        let (offset, timestamp_ns, key, event_time_ns) =
            (record.offset, record.timestamp_ns, record.key, record.event_time_ns);
        let (payload_ptr, len) = (record.payload.as_ptr() as usize, record.payload.len());
        let key_ptr = record.key_bytes.map(|k| (k.as_ptr() as usize, k.len()));
        // `next` leaves the reader just past the record, in the record's segment.
        let segment = self.current.clone().ok_or(LogError::Closed)?;
        let base = segment.region().as_ptr() as usize;
        let payload_at = payload_ptr - base;
        let key_at = key_ptr.map(|(p, l)| (p - base, l));
        Ok(Some(RecordRef { segment, payload_at, len, offset, timestamp_ns, key, event_time_ns, key_at }))
    }

    fn corruption(&self, position: usize, why: String) -> LogError {
        corruption(&self.current, &self.dir, position, self.next_offset, why)
    }

    /// The durable watermark the log's appender last recorded in the shared `HEAD` page:
    /// every offset below it survived a data sync. 0 when no appender has opened the log.
    pub fn durable_offset(&mut self) -> Offset {
        // The page is opened as it is, never created (a read creates nothing), read-only
        // where the file system allows no more.
        Offset(self.head().map_or(0, |h| h.durable_checked()))
    }

    /// The log's control page, mapped on first use once an appender has created it.
    pub(crate) fn head(&mut self) -> Option<&Head> {
        self.shared_head().map(|head| &**head)
    }

    /// The log's control page as [`Reader::head`] opens it, shared: a sleeper registration
    /// (`wait::Sleepers`) holds it so that it lowers the count on the page it raised it on.
    pub(super) fn shared_head(&mut self) -> Option<&Arc<Head>> {
        if self.head.is_none() {
            self.head = Head::open_existing(&self.dir).ok().flatten().map(Arc::new);
        }
        self.head.as_ref()
    }

    /// The commit word of the slot at the reader's position, loaded with `Acquire` and
    /// nothing else checked (no syscall, no `HEAD` access): `None` before a segment is
    /// entered or at the end of the mapping. For spinning waiters (`wait::spin_until`): a
    /// word other than 0 and the end marker is a record that [`Reader::ready`] reports at once.
    #[inline]
    pub(crate) fn commit_word(&self) -> Option<u32> {
        self.region.as_ref()?.load_commit(self.position)
    }

    /// Reads one word in each of the `pages` pages after the one the reader stands in, so a
    /// waiting tailer takes their page faults (mapping the page-cache pages the appender
    /// writes) before the records in them arrive, not as it reads them. Reads only; the
    /// values are ignored, and words past the mapping are skipped.
    pub(crate) fn touch_ahead(&self, pages: usize) {
        let Some(region) = self.region.as_ref() else { return };
        let first = (self.position / format::PAGE_BYTES + 1) * format::PAGE_BYTES;
        for page in 0..pages {
            std::hint::black_box(region.load_commit(first + page * format::PAGE_BYTES));
        }
    }

    /// True when a record (or damage) waits at the reader's position; moves across
    /// segment boundaries as needed.
    ///
    /// # Errors
    /// As [`Reader::next`].
    pub fn ready(&mut self) -> Result<bool, LogError> {
        // Bounded: each pass either returns or enters a newer segment.
        for _ in 0..1_000_000 {
            let Some(region) = self.region else {
                if !self.advance()? {
                    return Ok(false);
                }
                continue;
            };
            let at_end = self.position + 4 > region.len();
            let commit = if at_end { None } else { region.load_commit(self.position) };
            match commit {
                Some(0) | Some(format::END_OF_SEGMENT) | None => match self.judge_stop(commit)? {
                    Stop::Tail => return Ok(false),
                    Stop::Retry => {}
                    Stop::Next => {
                        if !self.advance()? {
                            return Ok(false);
                        }
                    }
                },
                Some(_) => return Ok(true),
            }
        }
        Ok(false)
    }

    /// The cold branch of [`Reader::ready`]: the reader stands at an empty slot (`Some(0)`),
    /// an end marker, or the end of the file (`None`). Decides whether that is the tail, the
    /// end of the segment, or damage, by the rule of [`scan`](super::scan): only here does a
    /// reader look at the durable watermark, at later segments (a directory listing, only
    /// when there is reason to: an end marker, the end of the file, a slot below the
    /// watermark, a stopped log) and, for a stopped log, at whether intact records follow.
    #[cold]
    #[inline(never)]
    fn judge_stop(&mut self, commit: Option<u32>) -> Result<Stop, LogError> {
        let (Some(region), Some(seg)) = (self.region, self.current.clone()) else { return Ok(Stop::Tail) };
        let (n, position) = (self.next_offset, self.position);
        // A segment truncated under us reads as zeros past the cut (see `sys::sigbus`).
        seg.check_shrank()?;
        let short = (seg.mapped_bytes as u64) < seg.header.segment_bytes;
        // The watermark first, then the slot again: a record published before the watermark
        // passed it is then seen (Acquire on both, pairing with the appender's Release
        // stores of the commit word and, through the sync thread, of the watermark).
        let (durable, stopped) = match self.head() {
            Some(h) => (h.durable_checked(), h.appender_pid() == 0),
            None => (0, true),
        };
        if commit == Some(0) && region.load_commit(position) != Some(0) {
            return Ok(Stop::Retry);
        }
        let marker = commit == Some(format::END_OF_SEGMENT) || (commit.is_none() && !short);
        let later_known = self.known.iter().any(|k| k.0 > seg.id);
        if !(marker || short || later_known || stopped || n < durable || self.unreadable.is_some()) {
            return Ok(Stop::Tail);
        }
        if stopped
            && commit.is_some()
            && !short
            && !later_known
            && n >= durable
            && self.checked_end == Some((seg.id, position))
        {
            return Ok(Stop::Tail);
        }
        self.refresh()?;
        // An appender may have filled the slot (and rolled over to the segment just listed)
        // since it was read: the slot is then no end at all.
        if region.load_commit(position) != commit {
            return Ok(Stop::Retry);
        }
        if let Some(e) = self.unreadable_next(seg.id) {
            return Err(e);
        }
        let what = match commit {
            Some(0) => "empty slot (commit word 0)",
            Some(_) => "end-of-segment marker",
            None if short => "segment file is truncated",
            None => "end of the segment file",
        };
        if let Some(&(_, base)) = self.known.iter().find(|k| k.0 > seg.id) {
            if base == n {
                return Ok(Stop::Next);
            }
            // Retention deletes from the oldest segment on: this one is gone from the
            // directory (the reader still maps it) and so are its successors up to `base`.
            // Not damage: the records in between were removed.
            if self.known.first().is_some_and(|k| k.0 > seg.id) {
                return Err(LogError::OffsetGone { path: self.dir.clone(), offset: n, first: base });
            }
            return Err(self.corruption(
                position,
                format!("{what} at offset {n} inside a sealed segment, whose successor starts at offset {base}"),
            ));
        }
        if n < durable {
            return Err(
                self.corruption(position, format!("{what} at offset {n}, below the durable watermark {durable}"))
            );
        }
        if short && (commit.is_none() || position + format::RECORD_HEADER_BYTES > region.len()) {
            return Err(self.corruption(position, "segment file is truncated".into()));
        }
        if stopped && commit.is_some() {
            let (after, _) = super::scan::records_after(&seg, position, n, format::PAYLOAD_BYTES_FORMAT_MAX);
            if after > 0 {
                return Err(
                    self.corruption(position, format!("{what} at offset {n}, followed by {after} intact records"))
                );
            }
            self.checked_end = Some((seg.id, position));
        }
        Ok(Stop::Tail)
    }

    /// Positions the reader at `offset` (or at the tail, if `offset` is past it), in
    /// O(log n): a binary search over segments, then over the segment's sparse index, then
    /// a scan of at most one index interval.
    ///
    /// # Errors
    /// [`LogError::OffsetGone`] when retention removed `offset`; corruption met while
    /// scanning.
    pub fn seek(&mut self, offset: Offset) -> Result<(), LogError> {
        let target = offset.0;
        if self.known.last().is_none_or(|k| k.1 <= target) {
            self.refresh()?;
        }
        let first = match self.known.first() {
            Some(k) => k.1,
            None => return Ok(()),
        };
        if target < first {
            return Err(LogError::OffsetGone { path: self.dir.clone(), offset: target, first });
        }
        let i = self.known.partition_point(|k| k.1 <= target) - 1;
        let (id, base) = self.known[i];
        if self.current.as_ref().is_none_or(|c| c.id != id) {
            self.enter(id, base)?;
        }
        let seg = self.current.clone().ok_or(LogError::Closed)?;
        let region = seg.region();
        let header = seg.header;
        // Binary search the populated prefix of the index for the last entry <= target.
        let populated = {
            let (mut lo, mut hi) = (0usize, header.index_entries as usize);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if region.load_index(mid).is_some_and(|e| e != 0) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let rel = target - base;
        let (mut lo, mut hi) = (0usize, populated);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (r, _) = format::index_entry_parts(region.load_index(mid).unwrap_or(0));
            if (r as u64) <= rel {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.position = header.data_start();
        self.next_offset = base;
        if lo > 0 {
            let (r, pos) = format::index_entry_parts(region.load_index(lo - 1).unwrap_or(0));
            // The index is a hint: use it only when it points at the record it names.
            if let Ok(Slot::Record(_)) =
                region.decode(pos as usize, Some(base + r as u64), format::PAYLOAD_BYTES_FORMAT_MAX)
            {
                self.position = pos as usize;
                self.next_offset = base + r as u64;
            }
        }
        while self.next_offset < target {
            if self.next()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Positions the reader at the first record whose append time
    /// ([`Record::timestamp_ns`]) is at or after `ns` (ns since the Unix epoch), or at the
    /// tail when there is none, and returns its offset: Kafka's `offsetsForTimes`. O(log n):
    /// a binary search over the segments (their first records), then over the sparse index
    /// of one segment (the records its entries point at), then a scan of at most one index
    /// interval.
    ///
    /// Append times are non-decreasing in segments of format version 2; in older segments
    /// (whose records could be given any timestamp) the result is a record at or after `ns`
    /// found by the same search, not necessarily the first.
    ///
    /// ```
    /// use shoal::log::{Appender, LogOptions, Reader};
    /// let dir = tempfile::tempdir()?;
    /// let mut log = Appender::open(dir.path(), LogOptions::default())?;
    /// log.append(b"early")?;
    /// let cut = shoal::log::now_ns();
    /// std::thread::sleep(std::time::Duration::from_millis(2));
    /// log.append(b"late")?;
    /// let mut reader = Reader::open(dir.path())?;
    /// let at = reader.seek_time(cut + 1_000_000)?;
    /// assert_eq!(at.0, 1);
    /// assert_eq!(reader.next()?.expect("a record").payload(), b"late");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Reader::seek`]: a segment removed by retention meanwhile, corruption met while
    /// scanning.
    pub fn seek_time(&mut self, ns: u64) -> Result<Offset, LogError> {
        self.refresh()?;
        let Some(&(_, first_base)) = self.known.first() else { return Ok(Offset(self.next_offset)) };
        // Segments whose first record is earlier than `ns`: a prefix of `known`.
        let (mut lo, mut hi) = (0usize, self.known.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (id, base) = self.known[mid];
            if self.first_time(id, base)?.is_some_and(|t| t < ns) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let start = if lo == 0 {
            first_base
        } else {
            let (id, base) = self.known[lo - 1];
            self.index_start_before(id, base, ns)?
        };
        self.seek(Offset(start))?;
        // Bounded: at most one index interval of records (or to the next segment's first
        // record, which is at or after `ns`), then the tail.
        loop {
            let at = self.next_offset;
            let (position, current) = (self.position, self.current.clone());
            let region = self.region;
            match self.next()? {
                Some(r) if r.timestamp_ns >= ns => {
                    // Step back onto it: the reader stands at the record it returns.
                    if let (Some(seg), Some(region)) = (current, region) {
                        if self.current.as_ref().is_some_and(|c| c.id == seg.id) {
                            self.position = position;
                            self.next_offset = at;
                            self.region = Some(region);
                            return Ok(Offset(at));
                        }
                    }
                    self.seek(Offset(at))?;
                    return Ok(Offset(at));
                }
                Some(_) => {}
                None => return Ok(Offset(self.next_offset)),
            }
        }
    }

    /// The offset of the first record whose append time is at or after `ns`, or the
    /// offset the next record will get when there is none (see [`Reader::seek_time`]);
    /// leaves the reader where it was. For resetting a consumer's position to a time.
    ///
    /// # Errors
    /// As [`Reader::seek_time`].
    pub fn offset_for_time(&mut self, ns: u64) -> Result<Offset, LogError> {
        let saved = (self.current.clone(), self.region, self.position, self.next_offset);
        let found = self.seek_time(ns);
        (self.current, self.region, self.position, self.next_offset) = saved;
        found
    }

    /// The append time of the first record of segment `id` (`None` when it holds none or
    /// it is not a record).
    fn first_time(&self, id: SegmentId, base: u64) -> Result<Option<u64>, LogError> {
        let seg = self.segment_for(id)?;
        let region = seg.region();
        Ok(match region.decode(seg.header.data_start(), Some(base), format::PAYLOAD_BYTES_FORMAT_MAX) {
            Ok(Slot::Record(r)) => Some(r.timestamp_ns),
            _ => None,
        })
    }

    /// The offset of the last record named by segment `id`'s sparse index whose append
    /// time is before `ns` (the segment's first offset when none is).
    fn index_start_before(&self, id: SegmentId, base: u64, ns: u64) -> Result<u64, LogError> {
        let seg = self.segment_for(id)?;
        let region = seg.region();
        let entries = seg.header.index_entries as usize;
        let earlier = |i: usize| -> Option<u64> {
            let entry = region.load_index(i).filter(|e| *e != 0)?;
            let (rel, pos) = format::index_entry_parts(entry);
            match region.decode(pos as usize, Some(base + rel as u64), format::PAYLOAD_BYTES_FORMAT_MAX) {
                Ok(Slot::Record(r)) if r.timestamp_ns < ns => Some(r.offset),
                _ => None,
            }
        };
        // Entries are filled in order, and their records' times are non-decreasing: the
        // entries before `ns` are a prefix. An entry that is empty or does not point at its
        // record ends the prefix (the scan then starts earlier: slower, still exact).
        let (mut lo, mut hi) = (0usize, entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if earlier(mid).is_some() {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(if lo == 0 { base } else { earlier(lo - 1).unwrap_or(base) })
    }

    /// Segment `id`: the current one, or mapped for a look.
    fn segment_for(&self, id: SegmentId) -> Result<Arc<Segment>, LogError> {
        if let Some(current) = self.current.as_ref().filter(|c| c.id == id) {
            return Ok(current.clone());
        }
        let path = self.dir.join(super::segment::segment_file_name(id));
        Ok(Arc::new(Segment::open(&path, id, false)?))
    }
}

/// A [`Record`] of a decoded record view, with the lifetime the caller gives it.
///
/// # Safety
/// The bytes `r` borrows stay mapped and unchanged for the lifetime `'b` (the caller's
/// borrow of the reader that owns the mapping).
#[inline]
unsafe fn record_of<'b>(r: &format::RecordView<'_>) -> Record<'b> {
    // SAFETY: per the caller's contract.
    let payload = unsafe { std::slice::from_raw_parts(r.payload.as_ptr(), r.payload.len()) };
    Record {
        offset: Offset(r.offset),
        timestamp_ns: r.timestamp_ns,
        key: r.key,
        payload,
        event_time_ns: r.event_time_ns,
        // SAFETY: per the caller's contract.
        key_bytes: r.key_bytes.map(|k| unsafe { std::slice::from_raw_parts(k.as_ptr(), k.len()) }),
    }
}

fn corruption(current: &Option<Arc<Segment>>, dir: &Path, position: usize, offset: u64, why: String) -> LogError {
    LogError::Corruption {
        path: current.as_ref().map(|s| s.path.clone()).unwrap_or_else(|| dir.to_path_buf()),
        position: position as u64,
        offset,
        why,
    }
}
