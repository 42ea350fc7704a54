//! The appender: the one writer of a log, its group-commit sync thread and its segment
//! preparation thread.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use crossbeam_utils::CachePadded;

use super::error::{AppendError, LogError};
use super::format::{self, record_stride, Region, SegmentHeader, BASE_OFFSET_UNSET, END_OF_SEGMENT};
use super::head::Head;
use super::io::{IoDriver, SyncRange};
use super::recovery::{records_after, scan_segment, ScanEnd};
use super::segment::{list_segments, open_dir, Segment, SegmentId};
use super::{now_ns, Durability, LogOptions, Offset, RecoveryMode, WallClock};
use crate::sys::fence::AsymmetricFence;
use crate::sys::file::{try_flock, Flock};
use crate::sys::histogram::LatencyHistogram;

const LOCK_FILE: &str = "LOCK";

/// Takes the exclusive appender lock of the log in `dir` (creating the directory).
pub(crate) fn lock_dir(dir: &Path) -> Result<File, LogError> {
    std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, "create directory", e))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LogError::io(&path, "open", e))?;
    match try_flock(&file, Flock::Exclusive) {
        Ok(true) => {}
        Ok(false) => {
            let holder = std::fs::read_to_string(&path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
            return Err(LogError::Locked { path, holder: holder.unwrap_or_else(|| "unknown".into()) });
        }
        Err(err) => return Err(LogError::io(&path, "flock", err)),
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

/// Zeroes a segment from `position` to its end (cutting a torn tail), index entries that
/// point at or past it included, restores the file's full length, and syncs it.
pub(crate) fn cut_segment(seg: &Segment, header: &SegmentHeader, position: usize) -> Result<(), LogError> {
    let len = std::fs::metadata(&seg.path).map_err(|e| LogError::io(&seg.path, "stat", e))?.len();
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
    // SAFETY: we hold the appender lock, so no writer; readers only poll commit words, which
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

fn last_nonzero(region: &Region, from: usize) -> usize {
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

/// What opening the log found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use.
    pub segments: u64,
    /// Offset the next append gets.
    pub next_offset: u64,
    /// A cut made at open: (file, byte position, first offset dropped, intact records
    /// dropped after the damage, whether the damage was a torn tail).
    pub cut: Option<(PathBuf, u64, u64, u64, bool)>,
}

/// A segment the sync thread still has to cover (its write position is `segment.written`).
#[derive(Debug)]
struct Pending {
    segment: Arc<Segment>,
    /// Set when the segment is sealed; `segment.written` is then final.
    sealed: AtomicBool,
}

/// State shared by the appender, its sync thread and [`DurableWatch`] handles.
#[derive(Debug)]
struct Shared {
    /// Offset of the next record (all below are published). Written by the appender.
    written: CachePadded<AtomicU64>,
    /// All offsets below are durable. Written by the sync thread.
    durable: CachePadded<AtomicU64>,
    /// An explicit sync asked for everything below this offset.
    sync_target: AtomicU64,
    /// Segments with records the sync thread may not have covered yet.
    pending: Mutex<Vec<Arc<Pending>>>,
    syncer_parked: CachePadded<AtomicBool>,
    syncer: Mutex<Option<std::thread::Thread>>,
    waiters: AtomicUsize,
    durable_lock: Mutex<()>,
    durable_changed: Condvar,
    failed: AtomicBool,
    failure: Mutex<Option<(PathBuf, std::io::ErrorKind, String)>>,
    shutdown: AtomicBool,
    durability: Durability,
    head: Arc<Head>,
    sync_latency: Mutex<LatencyHistogram>,
    syncs: AtomicU64,
}

impl Shared {
    fn failure(&self) -> LogError {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((path, kind, msg)) => {
                LogError::SyncFailed { path: path.clone(), source: std::io::Error::new(*kind, msg.clone()) }
            }
            None => LogError::Closed,
        }
    }

    fn wake_syncer(&self) {
        if self.syncer_parked.swap(false, Ordering::SeqCst) {
            if let Some(t) = &*self.syncer.lock().unwrap_or_else(|p| p.into_inner()) {
                t.unpark();
            }
        }
    }

    fn wait_durable(&self, offset: u64, timeout: Option<Duration>, request_sync: bool) -> Result<bool, LogError> {
        if self.durable.load(Ordering::Acquire) > offset {
            return Ok(true);
        }
        if request_sync && self.durability != Durability::Batch {
            self.sync_target.fetch_max(offset + 1, Ordering::SeqCst);
            self.syncer_parked.store(true, Ordering::SeqCst);
            self.wake_syncer();
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = loop {
            // pairs with the SeqCst store of `durable` in the sync thread
            if self.durable.load(Ordering::SeqCst) > offset {
                break Ok(true);
            }
            if self.failed.load(Ordering::Acquire) {
                break Err(self.failure());
            }
            if self.shutdown.load(Ordering::Acquire) && self.written.load(Ordering::Acquire) <= offset {
                break Err(LogError::Closed);
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Ok(false);
                    }
                    (d - now).min(Duration::from_millis(100))
                }
                None => Duration::from_millis(100),
            };
            guard = self.durable_changed.wait_timeout(guard, wait).unwrap_or_else(|p| p.into_inner()).0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// A cloneable handle on an appender's durable watermark, for other threads (an `--ack`
/// printer, a request handler waiting for its record).
#[derive(Clone, Debug)]
pub struct DurableWatch {
    shared: Arc<Shared>,
}

impl DurableWatch {
    /// Every offset below this is durable.
    pub fn durable_offset(&self) -> Offset {
        Offset(self.shared.durable.load(Ordering::Acquire))
    }

    /// Offset the next append gets (everything below is published to readers).
    pub fn written_offset(&self) -> Offset {
        Offset(self.shared.written.load(Ordering::Acquire))
    }

    /// Blocks until `offset` is durable, or `timeout` passes (returns `Ok(false)`).
    ///
    /// # Errors
    /// [`LogError::SyncFailed`] when a sync failed; [`LogError::Closed`] when the appender
    /// closed before the record was appended.
    pub fn wait_durable(&self, offset: Offset, timeout: Option<Duration>) -> Result<bool, LogError> {
        self.shared.wait_durable(offset.0, timeout, true)
    }

    /// Like [`DurableWatch::wait_durable`], but never asks for a sync: it only watches the
    /// watermark move at the pace the durability level sets (for a printer of progress, say).
    ///
    /// # Errors
    /// As [`DurableWatch::wait_durable`].
    pub fn wait_durable_passive(&self, offset: Offset, timeout: Option<Duration>) -> Result<bool, LogError> {
        self.shared.wait_durable(offset.0, timeout, false)
    }
}

/// The one writer of a log. See the [module docs](super) for the design.
///
/// ```
/// use shoal::log::{Appender, LogOptions, Reader};
/// let dir = tempfile::tempdir()?;
/// let mut log = Appender::open(dir.path(), LogOptions::default())?;
/// let first = log.append(b"hello")?;
/// log.append_keyed(42, b"world")?;
/// log.sync()?;
/// assert!(log.durable_offset().0 > first.0);
/// let mut reader = Reader::open(dir.path())?;
/// let record = reader.next()?.expect("a record");
/// assert_eq!(record.payload(), b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Appender {
    dir: PathBuf,
    opts: LogOptions,
    _lock: File,
    shared: Arc<Shared>,
    head: Arc<Head>,
    active: Arc<Segment>,
    pending: Arc<Pending>,
    region: Region,
    position: usize,
    limit: usize,
    base_offset: u64,
    next_offset: u64,
    index_slot: usize,
    index_capacity: usize,
    index_next_position: usize,
    index_interval: usize,
    /// The segment prepared ahead, or the request for it in flight.
    prepared: Option<Arc<Segment>>,
    prepare_tx: Option<Sender<SegmentId>>,
    prepare_rx: Receiver<Result<Arc<Segment>, LogError>>,
    prepare_in_flight: bool,
    next_seq: u64,
    /// Segments in use, oldest first: (id, path, base offset, bytes, activated_ns).
    retained: VecDeque<(SegmentId, PathBuf, u64, u64, u64)>,
    sync_thread: Option<JoinHandle<()>>,
    prepare_thread: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
    backend: &'static str,
    clock: WallClock,
    /// The process is registered for `membarrier`, so publishing needs only a compiler fence.
    light_fence: bool,
}

impl Appender {
    /// Opens (creating if needed) the log in `dir` for appending: takes the lock, recovers
    /// the tail according to `opts.recovery_mode`, and starts the background threads.
    ///
    /// # Errors
    /// [`LogError::Locked`] when another appender holds the log; [`LogError::Corruption`] or
    /// [`LogError::TornTail`] per the recovery mode; [`LogError::Config`],
    /// [`LogError::NotASegment`], [`LogError::UnsupportedVersion`], I/O errors.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<Appender, LogError> {
        let dir = dir.as_ref().to_path_buf();
        opts.validate()?;
        let lock = lock_dir(&dir)?;
        let dir_file = open_dir(&dir)?;
        let head = Arc::new(Head::open(&dir)?);
        let (segments, temps) = list_segments(&dir)?;
        for temp in temps {
            std::fs::remove_file(&temp).map_err(|e| LogError::io(&temp, "remove", e))?;
        }
        let mut headers = Vec::with_capacity(segments.len());
        for (id, path) in &segments {
            let mut file = File::open(path).map_err(|e| LogError::io(path, "open", e))?;
            let header = super::segment::read_header_from_file(path, &mut file)?;
            if header.seq != id.0 {
                return Err(LogError::NotASegment {
                    path: path.clone(),
                    why: format!("its header says segment {}, its name says {}", header.seq, id.0),
                });
            }
            headers.push(header);
        }
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
        let durable_recorded = head.durable_offset();
        let payload_max = opts.max_record_bytes.max(format::PAYLOAD_BYTES_FORMAT_MAX.min(opts.segment_bytes as usize));

        let (prepare_tx, prepare_req_rx) = bounded::<SegmentId>(1);
        let (prepare_res_tx, prepare_rx) = bounded::<Result<Arc<Segment>, LogError>>(1);
        let backend = IoDriver::new(opts.io_backend)?;
        let backend_name = backend.name();
        let prepare_thread = spawn_preparer(dir.clone(), opts, dir_file, prepare_req_rx, prepare_res_tx)?;

        let mut report = RecoveryReport { segments: in_use as u64, ..RecoveryReport::default() };
        // The tail: the last segment in use (and its predecessor's seal) decides it.
        let mut tail: Option<(Arc<Segment>, usize, u64)> = None;
        let mut sync_driver = IoDriver::new(opts.io_backend)?;
        if in_use > 0 {
            let last = in_use - 1;
            let (last_id, last_path) = segments[last].clone();
            let seg = Segment::open(&last_path, last_id, true)?;
            let header = seg.header;
            let region = seg.region();
            let mut index_fix = Vec::new();
            let scan =
                scan_segment(&region, &header, payload_max, |offset, position| index_fix.push((offset, position)));
            let short = (seg.mapped_bytes as u64) < header.segment_bytes;
            let damage = match scan.end {
                ScanEnd::Damaged(e) => Some(e.to_string()),
                _ if short && scan.end != ScanEnd::Sealed => {
                    Some(format!("file is {} bytes, its header says {}", seg.mapped_bytes, header.segment_bytes))
                }
                _ => None,
            };
            if let Some(why) = damage {
                let (after, _) = records_after(&region, scan.position, scan.next_offset, payload_max);
                let torn = after == 0 && scan.next_offset >= durable_recorded;
                let cut_allowed = match opts.recovery_mode {
                    RecoveryMode::Strict => false,
                    RecoveryMode::TruncateTail => torn,
                    RecoveryMode::TruncateCorrupt => true,
                };
                if !cut_allowed {
                    let (path, position, offset) = (last_path.clone(), scan.position as u64, scan.next_offset);
                    return Err(if torn {
                        LogError::TornTail { path, position, offset, why }
                    } else {
                        LogError::Corruption { path, position, offset, why }
                    });
                }
                if !torn {
                    tracing::warn!(
                        "{}: cut the log at byte {} (offset {}): {why}; {after} intact records after it were dropped",
                        last_path.display(),
                        scan.position,
                        scan.next_offset
                    );
                }
                cut_segment(&seg, &header, scan.position)?;
                report.cut = Some((last_path.clone(), scan.position as u64, scan.next_offset, after, torn));
            } else if short {
                // Sealed but truncated after the seal: restore the length.
                seg.file.set_len(header.segment_bytes).map_err(|e| LogError::io(&last_path, "extend", e))?;
            } else if scan.end == ScanEnd::Open && last_nonzero(&region, scan.position) > scan.position {
                // A crash before a record's commit word was stored leaves the record's other
                // bytes past the tail; shorter records appended over them would end inside
                // them, and readers would take the stale bytes for a damaged record.
                cut_segment(&seg, &header, scan.position)?;
            }
            // Rebuild the index of the tail segment: entries past the tail were zeroed by
            // the cut; missing ones are added.
            let seg = if short { Segment::open(&last_path, last_id, true)? } else { seg };
            let region = seg.region();
            let mut slot = 0usize;
            let mut next_pos = header.data_start();
            for (offset, position) in index_fix.iter().copied().take_while(|(_, p)| *p < scan.position) {
                if position >= next_pos && slot < header.index_entries as usize {
                    region
                        .store_index(slot, format::index_entry((offset - header.base_offset) as u32, position as u32));
                    slot += 1;
                    next_pos = position + header.index_interval as usize;
                }
            }
            // The predecessor must be sealed at our base offset: a crash can lose its
            // end marker while records of this segment survive, so add it back.
            if last > 0 {
                let (prev_id, prev_path) = segments[last - 1].clone();
                let prev = Segment::open(&prev_path, prev_id, true)?;
                let prev_scan = scan_segment(&prev.region(), &prev.header, payload_max, |_, _| {});
                match prev_scan.end {
                    ScanEnd::Sealed | ScanEnd::Full if prev_scan.next_offset == header.base_offset => {}
                    ScanEnd::Open if prev_scan.next_offset == header.base_offset => {
                        prev.region().publish(prev_scan.position, END_OF_SEGMENT);
                        prev.file.sync_data().map_err(|e| LogError::io(&prev_path, "fdatasync", e))?;
                    }
                    _ => {
                        return Err(LogError::Corruption {
                            path: prev_path,
                            position: prev_scan.position as u64,
                            offset: prev_scan.next_offset,
                            why: format!(
                                "segment ends at offset {} ({:?}) but the next starts at {}",
                                prev_scan.next_offset, prev_scan.end, header.base_offset
                            ),
                        });
                    }
                }
            }
            let range_end = scan.position.min(seg.mapped_bytes);
            sync_driver
                .sync_ranges(&[SyncRange {
                    fd: seg.fd(),
                    map: region.as_ptr(),
                    offset: 0,
                    len: range_end.max(1) as u64,
                }])
                .map_err(|e| LogError::io(&last_path, "fdatasync", e))?;
            // A file cut short ends its scan "full" at the cut; it was extended again
            // above, so appends go on at the tail rather than in a new segment.
            let sealed = scan.end == ScanEnd::Sealed || (scan.end == ScanEnd::Full && !short);
            let position = if sealed { seg.mapped_bytes } else { scan.position };
            tail = Some((Arc::new(seg), position, scan.next_offset));
            report.next_offset = scan.next_offset;
        }
        // Reuse a prepared segment left by the previous run; remove extras.
        let mut prepared = None;
        for (i, (id, path)) in segments.iter().enumerate().skip(in_use) {
            if i == in_use {
                let seg = Segment::open(path, *id, true)?;
                if opts.prefault {
                    let _ = seg.region(); // mapping populated lazily by appends
                }
                prepared = Some(Arc::new(seg));
            } else {
                std::fs::remove_file(path).map_err(|e| LogError::io(path, "remove", e))?;
            }
        }
        let next_seq = segments.last().map_or(0, |(id, _)| id.0 + 1);
        let next_offset = report.next_offset;
        head.reset_offsets(next_offset);
        head.set_appender_pid(std::process::id());

        let shared = Arc::new(Shared {
            written: CachePadded::new(AtomicU64::new(next_offset)),
            durable: CachePadded::new(AtomicU64::new(next_offset)),
            sync_target: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            syncer_parked: CachePadded::new(AtomicBool::new(false)),
            syncer: Mutex::new(None),
            waiters: AtomicUsize::new(0),
            durable_lock: Mutex::new(()),
            durable_changed: Condvar::new(),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            durability: opts.durability,
            head: head.clone(),
            sync_latency: Mutex::new(LatencyHistogram::new()),
            syncs: AtomicU64::new(0),
        });
        let sync_thread = spawn_syncer(shared.clone(), sync_driver)?;

        let mut retained = VecDeque::new();
        for ((id, path), header) in segments.iter().zip(&headers).take(in_use) {
            retained.push_back((*id, path.clone(), header.base_offset, header.segment_bytes, header.activated_ns));
        }
        // A placeholder active segment until the first activation when the log is empty.
        let (active, position, limit) = match &tail {
            Some((seg, position, _)) => (seg.clone(), *position, seg.mapped_bytes),
            None => {
                let seg = match prepared.take() {
                    Some(seg) => seg,
                    None => {
                        prepare_tx.send(SegmentId(next_seq)).map_err(|_| LogError::Closed)?;
                        prepare_rx.recv().map_err(|_| LogError::Closed)??
                    }
                };
                (seg, 0, 0)
            }
        };
        let header = active.header;
        active.written.store(position as u64, Ordering::Relaxed);
        let pending = Arc::new(Pending { segment: active.clone(), sealed: AtomicBool::new(false) });
        let index_slot = (0..header.index_entries as usize)
            .take_while(|i| active.region().load_index(*i).is_some_and(|e| e != 0))
            .count();
        let index_next_position = match index_slot {
            0 => 0,
            n => {
                let (_, pos) = format::index_entry_parts(active.region().load_index(n - 1).unwrap_or(0));
                pos as usize + header.index_interval as usize
            }
        };
        let mut appender = Appender {
            dir,
            opts,
            _lock: lock,
            shared,
            head,
            region: active.region(),
            pending,
            position,
            limit,
            base_offset: header.base_offset,
            next_offset,
            index_slot,
            index_capacity: header.index_entries as usize,
            index_next_position,
            index_interval: header.index_interval as usize,
            active,
            prepared,
            prepare_tx: Some(prepare_tx),
            prepare_rx,
            prepare_in_flight: false,
            next_seq: if tail.is_none() && segments.len() == in_use { next_seq + 1 } else { next_seq },
            retained,
            sync_thread: Some(sync_thread),
            prepare_thread: Some(prepare_thread),
            recovery: report,
            backend: backend_name,
            clock: WallClock::new(),
            light_fence: AsymmetricFence::registered(),
        };
        if tail.is_none() {
            // Empty log: activate the first segment now.
            let seg = appender.active.clone();
            appender.activate(seg)?;
        } else {
            appender.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).push(appender.pending.clone());
        }
        if appender.prepared.is_none() && !appender.prepare_in_flight {
            appender.request_prepare();
        }
        appender.apply_retention();
        Ok(appender)
    }

    /// What recovery found and did at open.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The I/O backend in use: "io_uring" or "syscalls".
    pub fn io_backend(&self) -> &'static str {
        self.backend
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.opts
    }

    /// Offset the next append gets.
    pub fn next_offset(&self) -> Offset {
        Offset(self.next_offset)
    }

    /// Every offset below this is durable.
    pub fn durable_offset(&self) -> Offset {
        Offset(self.shared.durable.load(Ordering::Acquire))
    }

    /// A handle on the durable watermark for other threads.
    pub fn durable_watch(&self) -> DurableWatch {
        DurableWatch { shared: self.shared.clone() }
    }

    /// Data syncs done so far and their latency histogram (ns).
    pub fn sync_stats(&self) -> (u64, LatencyHistogram) {
        let hist = self.shared.sync_latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (self.shared.syncs.load(Ordering::Relaxed), hist)
    }

    /// Appends one record with key 0.
    ///
    /// # Errors
    /// [`AppendError::TooLarge`] over `max_record_bytes`; [`AppendError::Log`] when a new
    /// segment cannot be had (disk full) or a sync failed.
    #[inline]
    pub fn append(&mut self, payload: &[u8]) -> Result<Offset, AppendError> {
        self.append_keyed(0, payload)
    }

    /// Appends one record with a key.
    ///
    /// # Errors
    /// As [`Appender::append`].
    #[inline]
    pub fn append_keyed(&mut self, key: u64, payload: &[u8]) -> Result<Offset, AppendError> {
        self.append_keyed_with(key, payload.len(), |buf| buf.copy_from_slice(payload))
    }

    /// Appends a `len`-byte record by letting `fill` write it in place, in the mapped
    /// segment: no copy. `fill` gets a zeroed buffer.
    ///
    /// # Errors
    /// As [`Appender::append`].
    #[inline]
    pub fn append_with<F: FnOnce(&mut [u8])>(&mut self, len: usize, fill: F) -> Result<Offset, AppendError> {
        self.append_keyed_with(0, len, fill)
    }

    /// [`Appender::append_with`] with a key.
    ///
    /// # Errors
    /// As [`Appender::append`].
    #[inline]
    pub fn append_keyed_with<F: FnOnce(&mut [u8])>(
        &mut self,
        key: u64,
        len: usize,
        fill: F,
    ) -> Result<Offset, AppendError> {
        let offset = self.write_one(key, len, self.clock.now_ns(), fill)?;
        self.publish();
        Ok(offset)
    }

    /// Appends a `bytemuck::Pod` value as the payload, readable in place with
    /// [`Record::payload_as`](super::Record::payload_as).
    ///
    /// # Errors
    /// As [`Appender::append`].
    #[inline]
    pub fn append_pod<T: bytemuck::Pod>(&mut self, key: u64, value: &T) -> Result<Offset, AppendError> {
        self.append_keyed(key, bytemuck::bytes_of(value))
    }

    /// Appends several records with one timestamp and one publication (one wake-up of
    /// tailers and of the sync thread). Returns their offsets.
    ///
    /// # Errors
    /// As [`Appender::append`]; records before the failing one are appended.
    pub fn append_batch<'p, I>(&mut self, payloads: I) -> Result<Range<Offset>, AppendError>
    where
        I: IntoIterator<Item = &'p [u8]>,
    {
        let first = self.next_offset;
        let ts = self.clock.now_ns();
        let mut result = Ok(());
        for payload in payloads {
            if let Err(e) = self.write_one(0, payload.len(), ts, |buf| buf.copy_from_slice(payload)) {
                result = Err(e);
                break;
            }
        }
        if self.next_offset != first {
            self.publish();
        }
        result.map(|()| Offset(first)..Offset(self.next_offset))
    }

    #[inline]
    fn write_one<F: FnOnce(&mut [u8])>(
        &mut self,
        key: u64,
        len: usize,
        ts: u64,
        fill: F,
    ) -> Result<Offset, AppendError> {
        if len > self.opts.max_record_bytes {
            return Err(AppendError::TooLarge { len, max: self.opts.max_record_bytes });
        }
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(AppendError::Log(self.shared.failure()));
        }
        let stride = record_stride(len);
        if self.position + stride > self.limit {
            self.roll()?;
        }
        let offset = self.next_offset;
        let position = self.position;
        // SAFETY: `position..position + stride` lies in the active segment (checked above),
        // past every published record, and was zeroed when the segment was prepared or
        // cut; we are the only writer (the lock), and readers only poll its commit word.
        let commit = unsafe { self.region.write_record(position, offset, ts, key, len, fill) };
        self.region.publish(position, commit);
        if position >= self.index_next_position && self.index_slot < self.index_capacity {
            self.region
                .store_index(self.index_slot, format::index_entry((offset - self.base_offset) as u32, position as u32));
            self.index_slot += 1;
            self.index_next_position = position + self.index_interval;
        }
        self.position = position + stride;
        self.next_offset = offset + 1;
        Ok(Offset(offset))
    }

    /// Makes the records written so far visible to the sync thread and tailers.
    #[inline]
    fn publish(&mut self) {
        self.active.written.store(self.position as u64, Ordering::Relaxed);
        // pairs with the Acquire load of `written` in the sync thread: it then sees the
        // segment's write position (and the pending list) at least this far.
        self.shared.written.store(self.next_offset, Ordering::Release);
        // One fence serves both wake-up protocols (tailers in `Head::notify_after_fence`,
        // the sync thread's park below); it pairs with `AsymmetricFence::heavy` on their side.
        AsymmetricFence::light(self.light_fence);
        self.head.notify_after_fence();
        if self.opts.durability == Durability::Batch && self.shared.syncer_parked.load(Ordering::Relaxed) {
            self.shared.wake_syncer();
        }
    }

    /// Seals the active segment and switches to the prepared one.
    #[cold]
    fn roll(&mut self) -> Result<(), LogError> {
        let next = match self.prepared.take() {
            Some(seg) => seg,
            None => {
                // A preparation that failed ahead of time (a disk full then, freed since) is
                // tried once more now before its error is reported.
                let mut tries = if self.prepare_in_flight { 2 } else { 1 };
                if !self.prepare_in_flight {
                    self.request_prepare();
                }
                loop {
                    self.prepare_in_flight = false;
                    match self.prepare_rx.recv() {
                        Ok(Ok(seg)) => break seg,
                        Ok(Err(e)) => {
                            // Only one preparation is ever in flight: retry the same id.
                            self.next_seq -= 1;
                            tries -= 1;
                            if tries == 0 {
                                return Err(e);
                            }
                            self.request_prepare();
                        }
                        Err(_) => return Err(LogError::Closed),
                    }
                }
            }
        };
        self.activate(next)?;
        self.apply_retention();
        Ok(())
    }

    fn request_prepare(&mut self) {
        if let Some(tx) = &self.prepare_tx {
            if tx.try_send(SegmentId(self.next_seq)).is_ok() {
                self.next_seq += 1;
                self.prepare_in_flight = true;
            }
        }
    }

    /// Makes `seg` the active segment starting at `self.next_offset`.
    fn activate(&mut self, seg: Arc<Segment>) -> Result<(), LogError> {
        self.clock.reanchor();
        let mut header = seg.header;
        header.base_offset = self.next_offset;
        header.activated_ns = self.clock.now_ns();
        let region = seg.region();
        // SAFETY: the segment is not yet in use, so no reader trusts its header yet (readers
        // verify its checksum, and only open it after the end marker below).
        unsafe { region.write_header(&header) };
        seg.written.store(header.data_start() as u64, Ordering::Relaxed);
        let pending = Arc::new(Pending { segment: seg.clone(), sealed: AtomicBool::new(false) });
        self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).push(pending.clone());
        // Seal the old segment (if there is one in use) after the new header is in place.
        if self.limit > 0 {
            let end = if self.position + 4 <= self.limit {
                self.region.publish(self.position, END_OF_SEGMENT);
                self.position + 8
            } else {
                self.position
            };
            self.active.written.store(end.min(self.limit) as u64, Ordering::Relaxed);
            self.pending.sealed.store(true, Ordering::Release);
        }
        self.retained.push_back((
            seg.id,
            seg.path.clone(),
            header.base_offset,
            header.segment_bytes,
            header.activated_ns,
        ));
        self.active = seg;
        self.pending = pending;
        self.region = region;
        self.position = header.data_start();
        self.limit = self.active.mapped_bytes;
        self.base_offset = header.base_offset;
        self.index_slot = 0;
        self.index_capacity = header.index_entries as usize;
        self.index_next_position = 0;
        self.index_interval = header.index_interval as usize;
        self.request_prepare_if_idle();
        Ok(())
    }

    fn request_prepare_if_idle(&mut self) {
        if self.prepared.is_none() && !self.prepare_in_flight {
            self.request_prepare();
        }
        // Collect a finished preparation without blocking.
        if self.prepare_in_flight {
            if let Ok(result) = self.prepare_rx.try_recv() {
                self.prepare_in_flight = false;
                match result {
                    Ok(seg) => self.prepared = Some(seg),
                    Err(e) => {
                        self.next_seq -= 1;
                        tracing::warn!("preparing the next segment failed: {e}; retrying at the next rollover");
                    }
                }
            }
        }
    }

    /// Deletes sealed segments beyond the retention limits.
    pub fn apply_retention(&mut self) {
        let retention = self.opts.retention;
        if retention.max_bytes.is_none() && retention.max_age.is_none() {
            return;
        }
        let now = now_ns();
        loop {
            if self.retained.len() < 2 {
                break;
            }
            // The prepared segment counts, collected or still in flight (its file exists).
            let prepared_bytes =
                if self.prepared.is_some() || self.prepare_in_flight { self.opts.segment_bytes } else { 0 };
            let total: u64 = self.retained.iter().map(|r| r.3).sum::<u64>() + prepared_bytes;
            let over_bytes = retention.max_bytes.is_some_and(|max| total > max);
            // The oldest segment's newest record is older than its successor's activation.
            let newest_ns = self.retained[1].4;
            let over_age = retention.max_age.is_some_and(|age| now.saturating_sub(newest_ns) > age.as_nanos() as u64);
            if !over_bytes && !over_age {
                break;
            }
            if let Some((id, path, ..)) = self.retained.pop_front() {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!("{}: retention could not remove the segment: {e}", path.display());
                }
                // Its records are gone, so nothing is left to sync: release the mapping (and
                // with it the disk space) instead of waiting for the next sync.
                self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| p.segment.id != id);
            }
        }
    }

    /// Blocks until every record appended so far is durable (in any durability mode).
    ///
    /// # Errors
    /// [`LogError::SyncFailed`] when the sync fails.
    pub fn sync(&mut self) -> Result<Offset, LogError> {
        let target = self.next_offset;
        if target == 0 {
            return Ok(Offset(0));
        }
        self.shared.sync_target.fetch_max(target, Ordering::SeqCst);
        self.shared.wait_durable(target - 1, None, true)?;
        Ok(self.durable_offset())
    }

    /// Blocks until `offset` is durable, or `timeout` passes (`Ok(false)`). In `Never`
    /// mode this asks for a sync.
    ///
    /// # Errors
    /// [`LogError::SyncFailed`] when a sync failed.
    pub fn wait_durable(&self, offset: Offset, timeout: Option<Duration>) -> Result<bool, LogError> {
        self.shared.wait_durable(offset.0, timeout, true)
    }

    /// Closes the log: in `Batch` and `Interval` modes everything appended is synced first.
    ///
    /// # Errors
    /// The final sync's error.
    pub fn close(mut self) -> Result<(), LogError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LogError> {
        let mut result = Ok(());
        if self.sync_thread.is_some() {
            if self.opts.durability != Durability::Never
                && self.next_offset > 0
                && !self.shared.failed.load(Ordering::Acquire)
            {
                if let Err(e) = self.sync() {
                    result = Err(e);
                }
            }
            self.shared.shutdown.store(true, Ordering::SeqCst);
            self.shared.syncer_parked.store(true, Ordering::SeqCst);
            self.shared.wake_syncer();
            if let Some(t) = self.sync_thread.take() {
                let _ = t.join();
            }
        }
        self.prepare_tx = None;
        if let Some(t) = self.prepare_thread.take() {
            // Drain every preparation until the thread hangs up: with the request sender
            // gone it finishes what is queued, and each result must find room in the
            // bounded channel or the thread (and this join) would block forever.
            while self.prepare_rx.recv().is_ok() {}
            let _ = t.join();
        }
        self.head.set_appender_pid(0);
        self.head.wake();
        result
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("{}: closing the log: {e}", self.dir.display());
        }
    }
}

fn spawn_preparer(
    dir: PathBuf,
    opts: LogOptions,
    dir_file: File,
    requests: Receiver<SegmentId>,
    results: Sender<Result<Arc<Segment>, LogError>>,
) -> Result<JoinHandle<()>, LogError> {
    let mut io = IoDriver::new(opts.io_backend)?;
    std::thread::Builder::new()
        .name("shoal-log-prepare".into())
        .spawn(move || {
            let mut populate = opts.prefault;
            for id in requests {
                let result =
                    Segment::prepare(&dir, id, opts.segment_bytes, opts.index_interval_bytes, &mut io, &dir_file)
                        .map(Arc::new);
                let segment = result.as_ref().ok().cloned();
                if results.send(result).is_err() {
                    break;
                }
                // The segment is handed over before its pages are populated: an appender that
                // outran this thread starts on it at once and faults its own pages, while this
                // thread keeps populating ahead of it.
                if let (true, Some(segment)) = (populate, segment) {
                    if !segment.populate() {
                        tracing::warn!("MADV_POPULATE_WRITE unsupported (kernel 5.14+); appends take page faults");
                        populate = false;
                    }
                }
            }
        })
        .map_err(|e| LogError::io("shoal-log-prepare", "spawn thread", e))
}

fn spawn_syncer(shared: Arc<Shared>, mut io: IoDriver) -> Result<JoinHandle<()>, LogError> {
    let handle = std::thread::Builder::new()
        .name("shoal-log-sync".into())
        .spawn({
            let shared = shared.clone();
            move || sync_loop(&shared, &mut io)
        })
        .map_err(|e| LogError::io("shoal-log-sync", "spawn thread", e))?;
    *shared.syncer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.thread().clone());
    Ok(handle)
}

/// The group-commit loop. Each round syncs every byte published before it started and then
/// moves the durable watermark to the offset read at the start.
fn sync_loop(shared: &Shared, io: &mut IoDriver) {
    let mut synced_to: Vec<(Arc<Pending>, u64)> = Vec::new();
    let mut last_sync = Instant::now();
    let mut ranges: Vec<SyncRange> = Vec::with_capacity(4);
    loop {
        // pairs with the Release store of `written` in Appender::publish
        let written = shared.written.load(Ordering::Acquire);
        let durable = shared.durable.load(Ordering::Relaxed);
        let target = shared.sync_target.load(Ordering::SeqCst);
        let shutting_down = shared.shutdown.load(Ordering::Acquire);
        let due = written > durable
            && match shared.durability {
                Durability::Batch => true,
                Durability::Interval(d) => target > durable || last_sync.elapsed() >= d,
                Durability::Never => target > durable,
            };
        if !due || shared.failed.load(Ordering::Relaxed) {
            if shutting_down {
                return;
            }
            let sleep = match shared.durability {
                Durability::Interval(d) if written > durable => d.saturating_sub(last_sync.elapsed()),
                _ => Duration::from_millis(100),
            };
            shared.syncer_parked.store(true, Ordering::SeqCst);
            // pairs with the light fence in Appender::publish: either it sees `parked` and
            // wakes us, or we see its `written` here.
            AsymmetricFence::heavy();
            let again = shared.written.load(Ordering::Acquire) > durable && shared.durability == Durability::Batch;
            let requested = shared.sync_target.load(Ordering::SeqCst) > durable;
            if !(again || requested) || shared.failed.load(Ordering::Relaxed) {
                std::thread::park_timeout(sleep);
            }
            shared.syncer_parked.store(false, Ordering::SeqCst);
            continue;
        }
        {
            let pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            for p in pending.iter() {
                if !synced_to.iter().any(|(q, _)| Arc::ptr_eq(p, q)) {
                    synced_to.push((p.clone(), 0));
                }
            }
        }
        ranges.clear();
        for (p, done) in &synced_to {
            let end = p.segment.written.load(Ordering::Acquire);
            if end > *done {
                let from = *done & !(format::PAGE_BYTES as u64 - 1);
                ranges.push(SyncRange {
                    fd: p.segment.fd(),
                    map: p.segment.region().as_ptr(),
                    offset: from,
                    len: end - from,
                });
            }
        }
        let started = Instant::now();
        let result = io.sync_ranges(&ranges);
        let elapsed = started.elapsed();
        last_sync = Instant::now();
        match result {
            Ok(()) => {
                shared.sync_latency.lock().unwrap_or_else(|p| p.into_inner()).record(elapsed.as_nanos() as u64);
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                for (p, done) in synced_to.iter_mut() {
                    *done =
                        (*done).max(ranges.iter().find(|r| r.fd == p.segment.fd()).map_or(*done, |r| r.offset + r.len));
                }
                // Sealed segments that are fully synced leave the list.
                let finished: Vec<Arc<Pending>> = synced_to
                    .iter()
                    .filter(|(p, done)| {
                        p.sealed.load(Ordering::Acquire) && *done >= p.segment.written.load(Ordering::Acquire)
                    })
                    .map(|(p, _)| p.clone())
                    .collect();
                if !finished.is_empty() {
                    synced_to.retain(|(p, _)| !finished.iter().any(|f| Arc::ptr_eq(f, p)));
                    shared
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|p| !finished.iter().any(|f| Arc::ptr_eq(f, p)));
                }
                // pairs with the SeqCst loads in wait_durable
                shared.durable.fetch_max(written, Ordering::SeqCst);
                shared.head.set_durable_offset(written);
                if shared.waiters.load(Ordering::SeqCst) > 0 {
                    let _guard = shared.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
                    shared.durable_changed.notify_all();
                }
            }
            Err(e) => {
                let path = synced_to.first().map(|(p, _)| p.segment.path.clone()).unwrap_or_default();
                tracing::error!("{}: data sync failed: {e}; the log stops accepting appends", path.display());
                *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((path, e.kind(), e.to_string()));
                shared.failed.store(true, Ordering::Release);
                let _guard = shared.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
                shared.durable_changed.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `decode_segment` fuzz target: opening an empty log asked for a second
    /// segment preparation while the first was in flight, and `shutdown` drained the results
    /// channel without blocking, so the preparer could finish the queued request into a full
    /// channel and `Drop` waited for it forever. Each round opens a fresh log and drops it
    /// at once, when the race is widest.
    #[test]
    fn drop_right_after_open_never_hangs() {
        let opts = LogOptions {
            segment_bytes: 64 << 10,
            max_record_bytes: 1024,
            durability: Durability::Never,
            io_backend: super::super::IoBackend::Syscalls,
            prefault: false,
            ..LogOptions::default()
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let mut log = Appender::open(dir.path(), opts).expect("open");
                log.append(b"x").expect("append");
                drop(log);
            }
            let _ = done_tx.send(());
        });
        assert!(done_rx.recv_timeout(Duration::from_secs(120)).is_ok(), "dropping a freshly opened appender hung");
    }

    /// Found by the `log_model` fuzz target: a segment file cut right after its last record
    /// (a crash before the file got its length back) scanned as "full"; the appender rolled
    /// to a new segment without sealing the old one, and readers stopped at the cut.
    #[test]
    fn appends_after_a_file_cut_at_a_record_boundary_are_readable() {
        let opts = LogOptions {
            segment_bytes: 64 << 10,
            max_record_bytes: 1024,
            durability: Durability::Never,
            io_backend: super::super::IoBackend::Syscalls,
            prefault: false,
            ..LogOptions::default()
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut log = Appender::open(dir.path(), opts).expect("open");
        for i in 0..10u64 {
            log.append(&i.to_le_bytes()).expect("append");
        }
        log.sync().expect("sync");
        drop(log);
        let entries = super::super::segment::index_entries_for(opts.segment_bytes, opts.index_interval_bytes);
        let end = format::data_start(entries) + 10 * record_stride(8);
        let path = dir.path().join(super::super::segment::segment_file_name(SegmentId(0)));
        OpenOptions::new().write(true).open(&path).expect("open segment").set_len(end as u64).expect("cut");
        let mut log = Appender::open(dir.path(), opts).expect("reopen after the cut");
        assert_eq!(log.next_offset(), Offset(10));
        for i in 10..20u64 {
            log.append(&i.to_le_bytes()).expect("append");
        }
        log.sync().expect("sync");
        let mut reader = super::super::Reader::open(dir.path()).expect("reader");
        for i in 0..20u64 {
            let record = reader.next().expect("read").unwrap_or_else(|| panic!("record {i} missing"));
            assert_eq!(record.payload(), &i.to_le_bytes());
        }
    }
}
