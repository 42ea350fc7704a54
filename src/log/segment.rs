//! Segment files: naming, preparation (preallocate, header, sync, rename), mapping, and the
//! directory listing readers and recovery start from.
//!
//! Every mapping is registered with [`crate::sys::sigbus`] for as long as it lives: when
//! another program truncates a mapped segment, touching a page past the new end of the file
//! reads zeros instead of killing the process with `SIGBUS`, and [`Segment::check_shrank`]
//! then reports it ([`LogError::SegmentShrank`]). Readers check it where they find an empty
//! slot, the appender before each append and the sync thread before it moves the durable
//! watermark, so nothing stored into a dead page is ever acknowledged.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{unbounded, RecvTimeoutError, Sender};

use memmap2::{Advice, MmapOptions, MmapRaw};

use super::error::LogError;
use super::format::{self, HeaderError, Region, SegmentHeader, BASE_OFFSET_UNSET, FORMAT_VERSION};
use super::io::IoDriver;
use crate::sys::fs::{self as sysfs, Dir, Open};
use crate::sys::sigbus;

/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// Newtype for a segment's sequence number (its file name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

/// File name of segment `id`.
pub fn segment_file_name(id: SegmentId) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", id.0)
}

/// The temporary name a segment is prepared under: unique to the process and the call, as
/// appenders of a shared log may prepare the same id at once (the first rename wins).
fn temp_file_name(id: SegmentId) -> String {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{:020}.{}-{serial}{SEGMENT_SUFFIX}.tmp", id.0, std::process::id())
}

/// Parses a segment file name; `None` for any other name.
pub fn parse_segment_name(name: &str) -> Option<SegmentId> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(SegmentId)
}

/// Segment files of a directory: (id, path), sorted by id.
pub type Listing = Vec<(SegmentId, PathBuf)>;

/// Segment files of a directory, sorted by id. Leftover temporary files are reported in
/// the second list.
pub fn list_segments(dir: &Path) -> Result<(Listing, Vec<PathBuf>), LogError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) {
            LogError::NoLog { path: dir.to_path_buf() }
        } else {
            LogError::io(dir, "list", e)
        }
    })?;
    let mut segments = Vec::new();
    let mut temps = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(dir, "list", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let segment = parse_segment_name(name);
        let temp = name.starts_with('.') && name.ends_with(".seg.tmp");
        if segment.is_some() || temp || matches!(name, "LOCK" | "HEAD" | "APPEND" | "SYNC") {
            // The log's own files are regular files: a symlink or anything else planted
            // under one of their names is refused, never followed.
            let kind = entry.file_type().map_err(|e| LogError::io(entry.path(), "stat", e))?;
            if let Some(e) = sysfs::refuse_entry(&entry.path(), kind) {
                return Err(LogError::io(entry.path(), "open", e));
            }
        }
        if let Some(id) = segment {
            segments.push((id, entry.path()));
        } else if temp {
            temps.push(entry.path());
        }
    }
    segments.sort_by_key(|(id, _)| *id);
    Ok((segments, temps))
}

/// The id the segment after the listed ones gets (0 for none). Ids never wrap: a segment
/// whose id leaves no room for a successor is an error naming it, so that a new segment can
/// never be created under (or renamed over) the id of an old one.
///
/// # Errors
/// [`LogError::NotASegment`] for a segment with the largest id.
pub fn next_segment_id(segments: &[(SegmentId, PathBuf)]) -> Result<SegmentId, LogError> {
    match segments.last() {
        None => Ok(SegmentId(0)),
        Some((id, path)) => id.0.checked_add(1).map(SegmentId).ok_or_else(|| LogError::NotASegment {
            path: path.clone(),
            why: format!("segment id {} is the largest there is and leaves no room for a next segment", id.0),
        }),
    }
}

/// Opens the file at `path` (a file of a log directory) for `how`, never through a symlink.
///
/// # Errors
/// The I/O error, with `NotFound` kept as it is.
pub fn open_log_file(path: &Path, how: Open) -> std::io::Result<File> {
    sysfs::open_file_at(path, how)
}

/// The error for a path that should be a log directory but is a file.
fn not_a_directory(path: &Path) -> LogError {
    LogError::io(
        path,
        "open log directory",
        std::io::Error::other("it is a file, not a log directory; give the path of a log directory"),
    )
}

/// Refuses a directory that is a bus root (it holds `topics/`) or a topic directory (it
/// holds a `meta` file): a log never holds either, and opening a log there would create
/// segment files among the bus's own. Looks without following symlinks.
///
/// # Errors
/// [`LogError::WrongDirectory`] saying what the directory is and what to name instead.
pub fn refuse_bus_dir(path: &Path) -> Result<(), LogError> {
    match directory_kind(path) {
        Some(DirKind::Bus) => Err(LogError::WrongDirectory {
            path: path.to_path_buf(),
            what: "a bus directory",
            hint: "name a topic (`--topic <TOPIC>` on the command line, `Bus::topic` in the library), or a \
                   partition's log directory (`<bus>/topics/<topic>/<partition>`)",
        }),
        Some(DirKind::Topic) => Err(LogError::WrongDirectory {
            path: path.to_path_buf(),
            what: "a topic directory",
            hint: "pass the bus directory with `--topic <TOPIC>` (`Bus::topic` in the library), or one \
                   partition's log directory (`<topic>/<partition>`)",
        }),
        None => Ok(()),
    }
}

/// A shoal directory that is not a log, as [`directory_kind`] recognises it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKind {
    /// A bus root: it holds a `topics/` directory.
    Bus,
    /// A topic's directory: it holds a `meta` file.
    Topic,
}

/// Whether `path` is a bus root or a topic directory (looked at without following a
/// symlink planted in it), which no log command may treat as a log; `None` for anything else.
pub fn directory_kind(path: &Path) -> Option<DirKind> {
    let is = |name: &str, dir: bool| {
        std::fs::symlink_metadata(path.join(name)).is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() })
    };
    if is("topics", true) {
        Some(DirKind::Bus)
    } else if is("meta", false) {
        Some(DirKind::Topic)
    } else {
        None
    }
}

/// Opens the existing log directory at `path`.
///
/// # Errors
/// [`LogError::NoLog`] when it does not exist; an error saying so when it is a file;
/// [`LogError::WrongDirectory`] for a bus or topic directory.
pub fn open_log_dir(path: &Path) -> Result<Dir, LogError> {
    refuse_bus_dir(path)?;
    Dir::open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => LogError::NoLog { path: path.to_path_buf() },
        Some(libc::ENOTDIR) if path.exists() => not_a_directory(path),
        _ => LogError::io(path, "open directory", e),
    })
}

/// Opens the log directory at `path`, creating it (and its parents) if missing.
///
/// # Errors
/// An error saying so when `path` is a file; I/O errors.
pub fn create_log_dir(path: &Path) -> Result<Dir, LogError> {
    match open_log_dir(path) {
        Err(LogError::NoLog { .. }) => {}
        other => return other,
    }
    if let Err(e) = std::fs::create_dir_all(path) {
        if path.exists() && !path.is_dir() {
            return Err(not_a_directory(path));
        }
        if let Ok(target) = std::fs::read_link(path) {
            // A dangling link: `create_dir_all` says only "File exists".
            return Err(LogError::io(
                path,
                "open log directory",
                std::io::Error::other(format!(
                    "it is a symbolic link to {}, which does not exist; create that directory, or remove the link",
                    target.display()
                )),
            ));
        }
        return Err(LogError::io(path, "create directory", e));
    }
    open_log_dir(path)
}

/// Maps a header error to the error a person sees.
pub fn header_error(path: &Path, e: HeaderError) -> LogError {
    match e {
        HeaderError::NewerVersion(found) => {
            LogError::UnsupportedVersion { path: path.to_path_buf(), found, supported: FORMAT_VERSION }
        }
        other => LogError::NotASegment { path: path.to_path_buf(), why: other.to_string() },
    }
}

/// Reads and validates the header of a segment file without mapping it.
pub fn read_header_from_file(path: &Path, file: &mut File) -> Result<SegmentHeader, LogError> {
    let mut bytes = [0u8; format::SEGMENT_HEADER_USED_BYTES];
    let mut got = 0;
    while got < bytes.len() {
        match file.read(&mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LogError::io(path, "read header", e)),
        }
    }
    SegmentHeader::decode(&bytes[..got]).map_err(|e| header_error(path, e))
}

/// A mapped segment file.
#[derive(Debug)]
pub struct Segment {
    /// The file's path.
    pub path: PathBuf,
    /// Its id.
    pub id: SegmentId,
    /// The open file.
    pub file: File,
    /// The mapping's registration with the `SIGBUS` handler; dropped before `map` (see
    /// `Drop`). `None` when the registry was full.
    sigbus: Option<sigbus::Registration>,
    map: MmapRaw,
    /// Bytes mapped (the file length, rounded down to 8; normally `segment_bytes`).
    pub mapped_bytes: usize,
    /// The header as read at open (base offset may be set later by activation).
    pub header: SegmentHeader,
    /// The appender's write position in this segment (after the last published record or
    /// end marker). Read by the sync thread (what to sync) and the preparation thread (where
    /// populating pages ahead of the appender is still useful).
    pub written: AtomicU64,
    /// Bytes from the start of the file known to have disk space allocated (`fallocate`),
    /// so that stores through the mapping below it cannot fail for space. Only rises; 0 for
    /// a segment opened as found (its allocation is then made again, which costs nothing
    /// where the space is there).
    pub allocated: AtomicU64,
}

impl Segment {
    /// The region over the mapping.
    pub fn region(&self) -> Region {
        // SAFETY: the mapping is page-aligned, `mapped_bytes` long, and lives as long as
        // `self`; every user of the region holds `self` (an Arc) while using it. Writers and
        // readers of the shared file follow the commit protocol of `format`.
        unsafe { Region::new(self.map.as_mut_ptr(), self.mapped_bytes) }
    }

    /// Raw fd.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Whether the file shrank under the mapping: a page past its new end was touched and
    /// now reads as zeros (in this mapping only).
    #[inline]
    pub fn shrank(&self) -> bool {
        self.sigbus.as_ref().is_some_and(|r| r.faulted())
    }

    /// [`LogError::SegmentShrank`] when the file shrank under the mapping
    /// ([`Segment::shrank`]).
    #[inline]
    pub fn check_shrank(&self) -> Result<(), LogError> {
        if self.shrank() {
            return Err(self.shrank_error());
        }
        Ok(())
    }

    /// [`Segment::check_shrank`], and also a file now shorter than the mapping whose lost
    /// bytes lay in the last page still mapped (those read as zeros without a fault): one
    /// `fstat`, for the cold path that is about to call bytes damaged.
    #[cold]
    pub fn check_length(&self) -> Result<(), LogError> {
        self.check_shrank()?;
        match self.file.metadata() {
            Ok(m) if m.len() < self.mapped_bytes as u64 => Err(self.shrank_error()),
            _ => Ok(()),
        }
    }

    /// The error that says the file shrank under the mapping, with its length now.
    #[cold]
    pub fn shrank_error(&self) -> LogError {
        let len_bytes = self.file.metadata().map_or(0, |m| m.len());
        LogError::SegmentShrank { path: self.path.clone(), len_bytes, mapped_bytes: self.mapped_bytes as u64 }
    }

    /// Maps `len` bytes of `file` (read-write or read-only) and registers the mapping with
    /// the `SIGBUS` handler.
    fn map(
        path: &Path,
        file: &File,
        len: usize,
        writable: bool,
    ) -> Result<(MmapRaw, Option<sigbus::Registration>), LogError> {
        let mut opts = MmapOptions::new();
        opts.len(len);
        let map = if writable { opts.map_raw(file) } else { opts.map_raw_read_only(file) }
            .map_err(|e| LogError::io(path, "mmap", e))?;
        // SAFETY: the range is exactly the new mapping, which the returned `MmapRaw` keeps
        // until it is dropped; the `Segment` holding both drops the registration first (its
        // `Drop`), so the range is never unmapped while registered.
        let registration = unsafe { sigbus::register(map.as_ptr(), len) };
        Ok((map, registration))
    }

    /// Opens and maps an existing segment; read-write for the appender and recovery,
    /// read-only for readers. The header is validated; a file shorter than its header says
    /// is mapped as far as it goes (recovery treats the missing part as damage).
    pub fn open(path: &Path, id: SegmentId, writable: bool) -> Result<Segment, LogError> {
        let how = if writable { Open::ReadWrite } else { Open::Read };
        let mut file = open_log_file(path, how).map_err(|e| LogError::io(path, "open", e))?;
        let header = read_header_from_file(path, &mut file)?;
        if header.seq != id.0 {
            return Err(LogError::NotASegment {
                path: path.to_path_buf(),
                why: format!("its header says segment {}, its name says {}", header.seq, id.0),
            });
        }
        let file_len = file.metadata().map_err(|e| LogError::io(path, "stat", e))?.len();
        let mapped_bytes = (file_len.min(header.segment_bytes) as usize) & !7;
        if mapped_bytes < header.data_start() {
            return Err(LogError::NotASegment {
                path: path.to_path_buf(),
                why: format!("{file_len} bytes is too short to hold its index"),
            });
        }
        let (map, sigbus) = Segment::map(path, &file, mapped_bytes, writable)?;
        Ok(Segment {
            path: path.to_path_buf(),
            id,
            file,
            sigbus,
            map,
            mapped_bytes,
            header,
            written: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
        })
    }

    /// Creates segment `id` in `dir`: a temporary file gets disk space for its first
    /// `initial_bytes` (through `io`; at least the header and index) and its full length as
    /// a sparse file, a header with no base offset, a sync, the rename into place and the
    /// directory sync; then it is mapped. Space further on is allocated as the appender
    /// approaches it ([`Segment::allocate`]), so a quiet log costs little disk, and
    /// [`Segment::populate`] faults pages in ahead of the appender.
    ///
    /// The temporary file is created anew (`O_EXCL`, never through a symlink: a planted
    /// entry of that name is an error naming it) and renamed into place without replacing
    /// anything: a segment already there under `id` is an error, never overwritten.
    pub fn prepare(
        dir: &Dir,
        id: SegmentId,
        segment_bytes: u64,
        index_interval: u32,
        initial_bytes: u64,
        io: &mut IoDriver,
    ) -> Result<Segment, LogError> {
        let (temp_name, name) = (temp_file_name(id), segment_file_name(id));
        let (temp, path) = (dir.join(&temp_name), dir.join(&name));
        let file = dir.open_file(&temp_name, Open::CreateNew).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                let why = "it already exists (left or planted there); shoal creates its files afresh, remove it";
                LogError::io(&temp, "create", std::io::Error::new(e.kind(), why))
            } else {
                LogError::io(&temp, "create", e)
            }
        })?;
        let result = (|| {
            let index_entries = format::index_entries_for(segment_bytes, index_interval);
            let initial = initial_allocation(segment_bytes, index_entries, initial_bytes);
            io.fallocate(file.as_raw_fd(), initial).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    LogError::NoSpace { path: path.clone(), bytes: initial }
                } else {
                    LogError::io(&temp, "fallocate", e)
                }
            })?;
            file.set_len(segment_bytes).map_err(|e| LogError::io(&temp, "set length", e))?;
            let header = SegmentHeader {
                seq: id.0,
                base_offset: BASE_OFFSET_UNSET,
                segment_bytes,
                index_entries,
                index_interval,
                created_ns: super::now_ns(),
                activated_ns: 0,
            };
            file.write_all_at(&header.encode(), 0).map_err(|e| LogError::io(&temp, "write header", e))?;
            io.fsync(file.as_raw_fd(), true).map_err(|e| LogError::io(&temp, "fdatasync", e))?;
            dir.rename_noreplace(&temp_name, &name).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    LogError::Inconsistent {
                        path: path.clone(),
                        why: format!("segment {} already exists; a new segment never replaces one", id.0),
                    }
                } else {
                    LogError::io(&temp, "rename", e)
                }
            })?;
            io.fsync(dir.raw_fd(), false).map_err(|e| LogError::io(dir.path(), "fsync", e))?;
            let (map, sigbus) = Segment::map(&path, &file, segment_bytes as usize, true)?;
            Ok(Segment {
                path: path.clone(),
                id,
                file: file.try_clone().map_err(|e| LogError::io(&path, "dup", e))?,
                sigbus,
                map,
                mapped_bytes: segment_bytes as usize,
                header,
                written: AtomicU64::new(0),
                allocated: AtomicU64::new(initial),
            })
        })();
        if result.is_err() {
            let _ = dir.unlink(&temp_name);
        }
        result
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Unregister before `map` unmaps the range: a range is never unmapped while the
        // `SIGBUS` handler may still take it for shoal's.
        drop(self.sigbus.take());
    }
}

impl Segment {
    /// Allocates disk space up to byte `upto` (capped at the mapping) unless it is known to
    /// be there: after this, stores through the mapping below `upto` cannot fail for space.
    /// Returns the bytes now known allocated.
    ///
    /// # Errors
    /// [`LogError::NoSpace`] when the disk is full; other I/O errors of `fallocate`.
    pub fn allocate(&self, upto: u64) -> Result<u64, LogError> {
        let upto = upto.min(self.mapped_bytes as u64);
        let from = self.allocated.load(Ordering::Acquire) & !(format::PAGE_BYTES as u64 - 1);
        if from >= upto {
            return Ok(from);
        }
        crate::sys::file::fallocate_range(self.fd(), from, upto - from).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                LogError::NoSpace { path: self.path.clone(), bytes: upto - from }
            } else {
                LogError::io(&self.path, "fallocate", e)
            }
        })?;
        Ok(self.allocated.fetch_max(upto, Ordering::AcqRel).max(upto))
    }

    /// Faults the pages of `range` in for writing (`MADV_POPULATE_WRITE`, kernel 5.14+), in
    /// chunks, skipping what the appender has already reached (it may write the range while
    /// this runs). Returns false where the kernel lacks the advice (appends then take the
    /// page faults themselves).
    pub fn populate(&self, range: std::ops::Range<usize>) -> bool {
        const CHUNK_BYTES: usize = 1 << 20;
        const LEAD_BYTES: usize = 64 << 10;
        let end_all = range.end.min(self.mapped_bytes);
        let mut start = range.start.max(self.header.data_start());
        while start < end_all {
            let end = (start + CHUNK_BYTES).min(end_all);
            let written = self.written.load(Ordering::Relaxed) as usize;
            let from = format::align_up(start.max(written + LEAD_BYTES), format::PAGE_BYTES);
            if from < end && self.map.advise_range(Advice::PopulateWrite, from, end - from).is_err() {
                return false;
            }
            start = end;
        }
        true
    }
}

/// Lets go of `segment` on a background thread once every other handle on it is gone.
///
/// Unmapping a segment whose pages were written costs milliseconds (each page's table entry
/// is torn down and its dirty state handed to the page cache): an appender retires its
/// segments at close so that closing does not wait for that. One thread per process does
/// it, started on demand and gone once it holds nothing and [`REAPER_IDLE`] passed without
/// work. It keeps each segment until its own handle is the last (the caller's are dropped
/// right after), and the same segment retired twice is held once.
pub fn retire(segment: Arc<Segment>) {
    static REAPER: Mutex<Option<Sender<Arc<Segment>>>> = Mutex::new(None);
    let mut reaper = REAPER.lock().unwrap_or_else(|p| p.into_inner());
    let segment = match reaper.as_ref() {
        Some(tx) => match tx.send(segment) {
            Ok(()) => return,
            Err(e) => e.into_inner(),
        },
        None => segment,
    };
    let (tx, rx) = unbounded::<Arc<Segment>>();
    let spawned = std::thread::Builder::new().name("shoal-log-reaper".into()).spawn(move || {
        let mut held: Vec<Arc<Segment>> = Vec::new();
        // While segments are held whose other handles are still live, look again soon, then
        // less and less often (a `DurableWatch` may keep one for long).
        let mut recheck = RECHECK_FIRST;
        loop {
            let wait = if held.is_empty() { REAPER_IDLE } else { recheck };
            match rx.recv_timeout(wait) {
                Ok(segment) => {
                    recheck = RECHECK_FIRST;
                    if !held.iter().any(|h| Arc::ptr_eq(h, &segment)) {
                        held.push(segment);
                    }
                }
                Err(RecvTimeoutError::Timeout) if held.is_empty() => {
                    // Senders send under the lock: with it held and nothing queued, none is
                    // lost.
                    let mut reaper = REAPER.lock().unwrap_or_else(|p| p.into_inner());
                    if rx.is_empty() {
                        *reaper = None;
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => recheck = (recheck * 2).min(RECHECK_MAX),
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Unmaps (drops) every segment whose last handle is this thread's.
            held.retain(|h| Arc::strong_count(h) > 1);
        }
    });
    if spawned.is_ok() && tx.send(segment).is_ok() {
        *reaper = Some(tx);
    }
    // Without the thread, the segment was dropped here, by the send that failed.
}

/// The reaper's first look again at a segment still held elsewhere; each look doubles the
/// wait, up to [`RECHECK_MAX`].
const RECHECK_FIRST: Duration = Duration::from_micros(500);

/// The reaper's longest wait between looks at segments still held elsewhere.
const RECHECK_MAX: Duration = Duration::from_millis(100);

/// How long the reaper thread waits for work before it ends.
const REAPER_IDLE: Duration = Duration::from_millis(20);

/// The bytes a new segment gets disk space for at once: its header and index, and data up
/// to `initial_bytes` in all (at least one page of it), within the segment.
pub fn initial_allocation(segment_bytes: u64, index_entries: u32, initial_bytes: u64) -> u64 {
    let data_start = format::data_start(index_entries) as u64;
    initial_bytes.max(data_start + format::PAGE_BYTES as u64).min(segment_bytes)
}
