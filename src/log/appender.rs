//! The appender: the one writer of a log. Opening takes the lock ([`lock`](super::lock)),
//! recovers the tail ([`recovery`](super::recovery)) and starts the sync thread
//! ([`sync`](super::sync)) and the preparation thread ([`prepare`](super::prepare)); after
//! that, appends write records into the mapped active segment and publish them.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::error::{AppendError, LogError};
use super::format::{self, Extensions, Region, SegmentHeader, Slot, END_OF_SEGMENT};
use super::head::Head;
use super::io::IoDriver;
use super::lock::DirLock;
use super::prepare::Preparer;
use super::recovery::{list_in_use, recover, InUse, RecoveredTail, RecoveryReport};
use super::role::{Role, Taken, HOLD};
use super::segment::{create_log_dir, retire, segment_file_name, Segment, SegmentId};
use super::sync::{spawn_syncer, DurableWatch, Pending, Shared};
use super::{now_ns, LogOptions, Offset, RecoveryMode, WallClock, Writers};
use crate::sys::fence::AsymmetricFence;
use crate::sys::fs::Dir;
use crate::sys::histogram::LatencyHistogram;

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
    /// The log directory, open: every file the appender and its threads create, rename or
    /// remove is reached through it, never by path.
    dir_fd: Arc<Dir>,
    opts: LogOptions,
    _lock: DirLock,
    shared: Arc<Shared>,
    head: Arc<Head>,
    active: Arc<Segment>,
    pending: Arc<Pending>,
    region: Region,
    position: usize,
    /// Where the next append takes the slow path ([`Appender::make_room`]): the end of the
    /// space allocated in the active segment (or a little before it, to ask for more in
    /// time), at most `end`.
    limit: usize,
    /// The end of the active segment's mapping (0 before the first activation).
    end: usize,
    /// How far in the active segment space was last asked for ahead of the appender.
    ahead_asked: u64,
    base_offset: u64,
    next_offset: u64,
    index_slot: usize,
    index_capacity: usize,
    index_next_position: usize,
    index_interval: usize,
    /// The next segment, prepared ahead by a background thread.
    preparer: Preparer,
    /// Segments in use, oldest first: (id, path, base offset, bytes, activated_ns).
    retained: VecDeque<InUse>,
    sync_thread: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
    backend: &'static str,
    clock: WallClock,
    /// The process is registered for `membarrier`, so publishing needs only a compiler fence.
    light_fence: bool,
    /// The writer role, for a shared log (`None`: exclusive, the lock is the role).
    role: Option<Role>,
    /// When this appender last took the role (wall-clock ns, as record timestamps).
    role_since: u64,
    /// Set by [`Appender::abandon`]: closing leaves everything as a killed process would.
    abandoned: bool,
    /// The append time of the last record written (ns): append times never go below it.
    last_ts: u64,
}

/// A record to append with its optional parts: a routing key, the key's text, and a
/// producer's event time ([`Appender::append_record`]).
///
/// ```
/// use shoal::log::{Appender, LogOptions, NewRecord, Reader};
/// let dir = tempfile::tempdir()?;
/// let mut log = Appender::open(dir.path(), LogOptions::default())?;
/// log.append_record(&NewRecord::new(b"paid").key(b"alice").event_time(1_700_000_000_000_000_000))?;
/// let mut reader = Reader::open(dir.path())?;
/// let record = reader.next()?.expect("a record");
/// assert_eq!(record.key_bytes(), Some(&b"alice"[..]));
/// assert_eq!(record.key(), shoal::log::key_hash(b"alice"));
/// assert_eq!(record.event_time_ns(), Some(1_700_000_000_000_000_000));
/// assert_eq!(record.payload(), b"paid");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewRecord<'a> {
    payload: &'a [u8],
    key: u64,
    ext: Extensions<'a>,
}

impl<'a> NewRecord<'a> {
    /// A record with `payload`, key 0, no key text and no event time.
    #[inline]
    pub fn new(payload: &'a [u8]) -> NewRecord<'a> {
        NewRecord { payload, key: 0, ext: Extensions::default() }
    }

    /// Keeps `text` as the record's key bytes (at most [`format::KEY_BYTES_MAX`]) and sets
    /// its routing key to their hash ([`format::key_hash`]), as a text-less keyed append of
    /// the same text would.
    #[inline]
    pub fn key(mut self, text: &'a [u8]) -> NewRecord<'a> {
        self.key = format::key_hash(text);
        self.ext.key_bytes = Some(text);
        self
    }

    /// Sets the routing key alone (no key text stored); replaces the hash a [`NewRecord::key`]
    /// set, keeping its text.
    #[inline]
    pub fn key_hash(mut self, key: u64) -> NewRecord<'a> {
        self.key = key;
        self
    }

    /// Sets the producer's event time (ns since the Unix epoch), stored next to the log's
    /// own append time.
    #[inline]
    pub fn event_time(mut self, ns: u64) -> NewRecord<'a> {
        self.ext.event_time_ns = Some(ns);
        self
    }

    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The routing key.
    pub fn routing_key(&self) -> u64 {
        self.key
    }

    /// The key text, when set.
    pub fn key_bytes(&self) -> Option<&'a [u8]> {
        self.ext.key_bytes
    }

    /// The event time, when set.
    pub fn event_time_ns(&self) -> Option<u64> {
        self.ext.event_time_ns
    }
}

impl Appender {
    /// Opens (creating if needed) the log in `dir` for appending: takes the lock, recovers
    /// the tail according to `opts.recovery_mode`, and starts the background threads.
    ///
    /// # Errors
    /// [`LogError::Locked`] when another appender holds the log; [`LogError::Corruption`] or
    /// [`LogError::TornTail`] per the recovery mode; [`LogError::Options`] naming the
    /// option to change; [`LogError::WrongDirectory`] when `dir` is a bus or topic directory;
    /// [`LogError::NotASegment`], [`LogError::UnsupportedVersion`], I/O errors.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<Appender, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let opts = opts.fitted();
        opts.validate().map_err(|e| match e {
            LogError::Config(why) => LogError::Options { path: dir.clone(), why },
            other => other,
        })?;
        let dir_fd = Arc::new(create_log_dir(&dir)?);
        let (lock, alone) = match opts.writers {
            Writers::Exclusive => (DirLock::acquire(&dir_fd)?, true),
            Writers::Shared => DirLock::acquire_shared(&dir_fd)?,
        };
        let head = Arc::new(Head::create(&dir_fd)?);
        let role = match opts.writers {
            Writers::Exclusive => None,
            Writers::Shared => Some(Role::open(&dir_fd, head.clone())?),
        };
        let mut sync_io = IoDriver::new(opts.io_backend)?;
        let backend = sync_io.name();
        // Where the tail is: recovered when this appender is alone on the log or the last
        // holder of the writer role died holding it, else as the last holder left it.
        let taken = match &role {
            None => Taken::Dead,
            Some(role) if alone => role.take_alone().map(|()| Taken::Dead)?,
            Some(role) => role.begin()?.unwrap_or(Taken::Moved),
        };
        let start = match taken {
            Taken::Dead => {
                let recovered = recover(&lock, &dir, &peer_opts(&opts, alone), &head, &mut sync_io, alone);
                let recovered = recovered.inspect_err(|_| abort_role(&role))?;
                TailStart::recovered(recovered, &head, alone)
            }
            Taken::Moved | Taken::Current => TailStart::from_head(&dir, &head).inspect_err(|_| abort_role(&role))?,
        };
        let preparer = Preparer::start(dir_fd.clone(), opts, start.prepared, start.next_seq)?;
        head.set_appender_pid(std::process::id());
        let shared_log = role.is_some();
        let shared = Arc::new(Shared::new(
            start.next_offset,
            start.durable,
            opts.durability,
            head.clone(),
            &dir_fd,
            shared_log,
        )?);
        let sync_thread = spawn_syncer(shared.clone(), sync_io)?;
        let mut preparer = preparer;
        // A placeholder active segment until the first activation when the log is empty.
        let empty = start.tail.is_none();
        let (active, position, end) = match start.tail {
            Some((segment, position)) => {
                let end = segment.mapped_bytes;
                (segment, position, end)
            }
            None => (preparer.next_segment()?, 0, 0),
        };
        let header = active.header;
        active.written.store(position as u64, Ordering::Relaxed);
        let pending = Arc::new(Pending::new(active.clone()));
        let (index_slot, index_next_position) = start.index.unwrap_or_else(|| index_cursor(&active));
        let mut appender = Appender {
            dir,
            dir_fd,
            opts,
            _lock: lock,
            shared,
            head,
            region: active.region(),
            pending,
            position,
            // The first append makes room (allocating space from where it stands).
            limit: 0,
            end,
            ahead_asked: 0,
            base_offset: header.base_offset,
            next_offset: start.next_offset,
            index_slot,
            index_capacity: header.index_entries as usize,
            index_next_position,
            index_interval: header.index_interval as usize,
            active,
            preparer,
            retained: start.in_use,
            sync_thread: Some(sync_thread),
            recovery: start.report,
            backend,
            clock: WallClock::new(),
            light_fence: AsymmetricFence::registered(),
            role,
            role_since: 0,
            abandoned: false,
            last_ts: 0,
        };
        appender.role_since = appender.clock.now_ns();
        if empty {
            // Empty log: activate the first segment now.
            let seg = appender.active.clone();
            appender.activate(seg)?;
        } else {
            appender.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).push(appender.pending.clone());
        }
        if !empty {
            appender.last_ts = appender.tail_timestamp();
            if appender.region.header_version() < format::FORMAT_VERSION {
                // A segment of an older format: records of this one go into a new segment,
                // so that every segment holds the records of its own header's version.
                appender.roll()?;
            }
        }
        appender.apply_retention_held();
        appender.store_tail();
        if let Some(role) = &appender.role {
            // Alone: let go, so the others that open next find a clean role, then share the
            // log lock. Else keep the role (the keeper lets go when someone waits).
            role.end(alone);
            if alone {
                appender._lock.share()?;
            }
        }
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
        Offset(self.shared.durable_now())
    }

    /// A handle on the durable watermark for other threads.
    pub fn durable_watch(&self) -> DurableWatch {
        DurableWatch::new(self.shared.clone())
    }

    /// Data syncs done so far and their latency histogram (ns).
    pub fn sync_stats(&self) -> (u64, LatencyHistogram) {
        self.shared.sync_stats()
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
    /// segment: no copy. `fill` gets a zeroed buffer. If `fill` panics, nothing is appended:
    /// what it wrote is zeroed again as the panic passes, and the appender stays usable
    /// (another appender of a shared log is not kept waiting).
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
        self.append_one(key, len, &Extensions::default(), fill)
    }

    /// [`Appender::append_keyed`] with an event time: `timestamp_ns` is stored as the
    /// record's event time (format version 2), for records that keep the time they were
    /// first appended elsewhere (an import from another log or another machine). The
    /// record's append time is the log's clock, as for every append (so seeking by time
    /// stays exact); the event time is any value, not checked for order.
    ///
    /// # Errors
    /// As [`Appender::append`].
    pub fn append_keyed_at(&mut self, key: u64, timestamp_ns: u64, payload: &[u8]) -> Result<Offset, AppendError> {
        self.append_record(&NewRecord::new(payload).key_hash(key).event_time(timestamp_ns))
    }

    /// Appends one record with its optional parts: key text, event time (see
    /// [`NewRecord`]). A record with neither is written as [`Appender::append_keyed`] writes
    /// it, without an extension block.
    ///
    /// # Errors
    /// As [`Appender::append`]; [`AppendError::KeyTooLong`] when the key text is longer
    /// than [`format::KEY_BYTES_MAX`].
    #[inline]
    pub fn append_record(&mut self, record: &NewRecord<'_>) -> Result<Offset, AppendError> {
        let payload = record.payload;
        self.append_one(record.key, payload.len(), &record.ext, |buf| buf.copy_from_slice(payload))
    }

    /// One append call of one record with extensions `ext`.
    #[inline]
    fn append_one<F: FnOnce(&mut [u8])>(
        &mut self,
        key: u64,
        len: usize,
        ext: &Extensions<'_>,
        fill: F,
    ) -> Result<Offset, AppendError> {
        self.enter()?;
        let ts = self.clock.now_ns().max(self.last_ts);
        let mut call = Call::new(self, ts);
        call.check_live().map_err(AppendError::Log).and_then(|()| call.write_one(key, len, ts, ext, fill))
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
        self.append_many(payloads.into_iter().map(NewRecord::new))
    }

    /// Appends several records, each with its own key and event time (`(key,
    /// timestamp_ns, payload)`), with one publication: the batch twin of
    /// [`Appender::append_keyed_at`] (`timestamp_ns` is each record's event time; their
    /// append time is the call's). Returns their offsets.
    ///
    /// # Errors
    /// As [`Appender::append`]; records before the failing one are appended.
    pub fn append_batch_at<'p, I>(&mut self, records: I) -> Result<Range<Offset>, AppendError>
    where
        I: IntoIterator<Item = (u64, u64, &'p [u8])>,
    {
        self.append_many(
            records
                .into_iter()
                .map(|(key, timestamp_ns, payload)| NewRecord::new(payload).key_hash(key).event_time(timestamp_ns)),
        )
    }

    /// Appends several records with their optional parts (see [`NewRecord`]), with one
    /// append time and one publication. Returns their offsets.
    ///
    /// # Errors
    /// As [`Appender::append_record`]; records before the failing one are appended.
    pub fn append_records<'p, I>(&mut self, records: I) -> Result<Range<Offset>, AppendError>
    where
        I: IntoIterator<Item = NewRecord<'p>>,
    {
        self.append_many(records.into_iter())
    }

    /// One append call of several records, with one append time and one publication.
    #[inline]
    fn append_many<'p>(&mut self, records: impl Iterator<Item = NewRecord<'p>>) -> Result<Range<Offset>, AppendError> {
        self.enter()?;
        let ts = self.clock.now_ns().max(self.last_ts);
        let mut call = Call::new(self, ts);
        let first = call.first;
        let mut result = call.check_live().map_err(AppendError::Log);
        if result.is_ok() {
            for record in records {
                let payload = record.payload;
                if let Err(e) =
                    call.write_one(record.key, payload.len(), ts, &record.ext, |buf| buf.copy_from_slice(payload))
                {
                    result = Err(e);
                    break;
                }
            }
        }
        result.map(|()| Offset(first)..Offset(call.next_offset))
    }

    /// Starts an append call: with a shared log, takes the writer role unless this
    /// appender still holds it, and catches up with what other appenders did meanwhile.
    #[inline]
    fn enter(&mut self) -> Result<(), LogError> {
        let Some(role) = &self.role else { return Ok(()) };
        match role.begin()? {
            None => Ok(()),
            Some(taken) => self.on_taken(taken),
        }
    }

    /// Ends an append call (`ts`: its timestamp): lets go of the writer role when another
    /// appender waits and this one's turn ([`HOLD`]) is up.
    #[inline]
    fn leave(&mut self, ts: u64) {
        let Some(role) = &self.role else { return };
        let release = role.wanted() && ts.saturating_sub(self.role_since) >= HOLD.as_nanos() as u64;
        role.end(release);
    }

    /// Brings this appender's state up to date after taking the role.
    #[cold]
    fn on_taken(&mut self, taken: Taken) -> Result<(), LogError> {
        self.role_since = self.clock.now_ns();
        let result = match taken {
            Taken::Current => Ok(()),
            Taken::Moved => self.catch_up(),
            Taken::Dead => self.repair_dead(),
        };
        match result {
            // Other appenders' records came meanwhile: append times go on from theirs.
            Ok(()) if !matches!(taken, Taken::Current) => self.last_ts = self.last_ts.max(self.tail_timestamp()),
            Ok(()) => {}
            Err(_) => abort_role(&self.role),
        }
        result
    }

    /// The append time of the record just before the write position in the active
    /// segment (0 when it holds none): found from the last sparse index entry below the
    /// position, then record by record (at most one index interval of records, or the
    /// rest of a segment whose index is full).
    #[cold]
    fn tail_timestamp(&self) -> u64 {
        let region = self.region;
        // The segment's header as this appender mapped it may predate its activation (by
        // another appender of a shared log): its data start holds, its base offset is ours.
        let mut position = self.active.header.data_start();
        let mut offset = None;
        for i in (0..self.index_slot.min(self.index_capacity)).rev() {
            let (relative, at) = format::index_entry_parts(region.load_index(i).unwrap_or(0));
            if at != 0 && (at as usize) < self.position {
                position = at as usize;
                offset = self.base_offset.checked_add(relative as u64);
                break;
            }
        }
        let mut last = 0;
        while position < self.position {
            match region.decode(position, offset, format::PAYLOAD_BYTES_FORMAT_MAX) {
                Ok(Slot::Record(r)) => {
                    last = r.timestamp_ns;
                    offset = Some(r.offset + 1);
                    position = r.next_position();
                }
                _ => break,
            }
        }
        last
    }

    /// Catches up with the tail other appenders left (`HEAD`'s tail words). A tail that
    /// cannot be right (a page damaged under a live log) is repaired like a dead holder's.
    fn catch_up(&mut self) -> Result<(), LogError> {
        let tail = self.head.tail();
        if tail.segment != self.active.id.0 {
            if tail.segment < self.active.id.0 {
                return self.repair_dead();
            }
            self.follow_segments(SegmentId(tail.segment))?;
        }
        let data_start = self.active.header.data_start() as u64;
        let sane = tail.position >= data_start
            && tail.position <= self.end as u64
            && tail.position % 8 == 0
            && tail.next >= self.next_offset
            && tail.next >= self.base_offset
            && (tail.index_slot as usize) <= self.index_capacity;
        if !sane {
            tracing::warn!(
                "{}: the tail recorded in HEAD ({tail:?}) does not fit the active segment; repairing the tail",
                self.dir.display()
            );
            return self.repair_dead();
        }
        self.position = tail.position as usize;
        self.next_offset = tail.next;
        self.index_slot = tail.index_slot as usize;
        self.index_next_position = tail.index_next_position as usize;
        self.active.written.store(tail.position, Ordering::Relaxed);
        self.shared.written.fetch_max(tail.next, Ordering::Release);
        Ok(())
    }

    /// Moves on to segment `id`, which other appenders made active: the segments between
    /// are mapped for the sync thread (their records are below this appender's next one),
    /// the list of segments in use is read again for retention, and the preparer skips ids
    /// taken.
    #[cold]
    fn follow_segments(&mut self, id: SegmentId) -> Result<(), LogError> {
        // Others wrote the rest of the old active segment: sync all of it.
        self.seal_pending_whole();
        let mut pending = self.shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        for between in self.active.id.0 + 1..id.0 {
            let path = self.dir.join(segment_file_name(SegmentId(between)));
            match Segment::open(&path, SegmentId(between), true) {
                Ok(seg) => {
                    let seg = Arc::new(seg);
                    self.retained.push_back(in_use_of(&seg, &seg.header));
                    seg.written.store(seg.mapped_bytes as u64, Ordering::Relaxed);
                    let p = Arc::new(Pending::new(seg));
                    p.sealed.store(true, Ordering::Release);
                    pending.push(p);
                }
                // Removed by retention already: nothing of it to sync.
                Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        drop(pending);
        let path = self.dir.join(segment_file_name(id));
        let seg = Arc::new(Segment::open(&path, id, true)?);
        let header = seg.header;
        if header.base_offset == format::BASE_OFFSET_UNSET {
            return Err(LogError::Inconsistent {
                path,
                why: "HEAD names it as the active segment, but it was never activated".into(),
            });
        }
        // Where in it the next record goes, and the index cursor, are set by the caller from
        // HEAD.
        let (position, index) = (header.data_start(), (0, 0));
        self.retained.push_back(in_use_of(&seg, &header));
        self.make_active(seg, &header, position, index);
        // Others may have removed old segments by retention: a retention of this appender
        // must count what is there, so read the list again (only then: it reads every
        // segment's header).
        let retention = self.opts.retention;
        if retention.max_bytes.is_some() || retention.max_age.is_some() {
            self.retained = list_in_use(&self.dir)?;
        }
        self.preparer.skip_past(id);
        Ok(())
    }

    /// Marks the active segment's pending entry sealed and to be synced whole (others
    /// wrote it past this appender's position).
    fn seal_pending_whole(&mut self) {
        if self.end > 0 {
            self.active.written.store(self.end as u64, Ordering::Relaxed);
            self.pending.sealed.store(true, Ordering::Release);
        }
    }

    /// Repairs the tail a holder of the writer role left when it died holding it, the way
    /// an open recovers after a crash, and goes on from the repaired tail.
    #[cold]
    fn repair_dead(&mut self) -> Result<(), LogError> {
        tracing::warn!("{}: an appender died holding the writer role; repairing the tail", self.dir.display());
        let mut io = IoDriver::new(self.opts.io_backend)?;
        let witness = DirLock::role_witness();
        // The watermark in HEAD changes under the sync lock only.
        let turn = self.shared.sync_turn();
        let recovered = recover(&witness, &self.dir, &peer_opts(&self.opts, false), &self.head, &mut io, false)?;
        let start = TailStart::recovered(recovered, &self.head, false);
        drop(turn);
        self.seal_pending_whole();
        self.preparer.reset(start.prepared, start.next_seq);
        self.retained = start.in_use;
        self.next_offset = start.next_offset;
        self.shared.written.fetch_max(start.next_offset, Ordering::Release);
        match start.tail {
            Some((seg, position)) => {
                let index = index_cursor(&seg);
                let header = seg.header;
                self.make_active(seg, &header, position, index);
            }
            None => {
                // Nothing in use (the dead appender had not activated the first segment).
                (self.limit, self.end) = (0, 0);
                let seg = self.preparer.next_segment()?;
                self.activate(seg)?;
            }
        }
        self.store_tail();
        Ok(())
    }

    /// Stores the tail (segment, position, next offset, index cursor) in `HEAD`, for the
    /// next holder of the writer role.
    fn store_tail(&self) {
        self.head.store_tail(self.active.id.0, self.position as u64, self.next_offset);
        self.head.store_tail_index(self.index_slot as u32, self.index_next_position as u32);
    }

    #[inline]
    fn write_one<F: FnOnce(&mut [u8])>(
        &mut self,
        key: u64,
        len: usize,
        ts: u64,
        ext: &Extensions<'_>,
        fill: F,
    ) -> Result<Offset, AppendError> {
        if len > self.opts.max_record_bytes {
            return Err(AppendError::TooLarge { len, max: self.opts.max_record_bytes });
        }
        let ext_bytes = if ext.is_empty() { 0 } else { check_ext(ext, len, self.opts.max_record_bytes)? };
        let stride = format::record_stride_ext(ext_bytes, len);
        if self.position + stride > self.limit {
            self.make_room(len, stride)?;
        }
        let offset = self.next_offset;
        let position = self.position;
        // SAFETY: `position..position + stride` lies in the active segment (checked above),
        // past every published record, and was zeroed when the segment was prepared or
        // cut; we are the only writer (the lock), and readers only poll its commit word.
        // The key text is at most KEY_BYTES_MAX (`check_ext`).
        let commit = unsafe {
            if ext_bytes == 0 {
                self.region.write_record(position, offset, ts, key, len, fill)
            } else {
                self.region.write_record_ext(position, offset, ts, key, ext, len, fill)
            }
        };
        self.region.publish(position, commit);
        if position >= self.index_next_position && self.index_slot < self.index_capacity {
            self.region
                .store_index(self.index_slot, format::index_entry((offset - self.base_offset) as u32, position as u32));
            self.index_slot += 1;
            self.index_next_position = position + self.index_interval;
            self.head.store_tail_index(self.index_slot as u32, self.index_next_position as u32);
        }
        self.position = position + stride;
        self.next_offset = offset + 1;
        Ok(Offset(offset))
    }

    /// The checks an append call makes once, before its first record: the log has not
    /// stopped (a failed sync) and the active segment's file did not shrink under it. (A
    /// segment that shrinks during the call fails the sync of its records instead.)
    #[inline]
    fn check_live(&self) -> Result<(), LogError> {
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(self.shared.failure());
        }
        self.active.check_shrank()
    }

    /// Makes the records written so far visible to the sync thread and tailers.
    #[inline]
    fn publish(&mut self) {
        self.active.written.store(self.position as u64, Ordering::Relaxed);
        if self.role.is_some() {
            // For the next holder of the writer role (an exclusive appender has none).
            self.head.store_tail(self.active.id.0, self.position as u64, self.next_offset);
        }
        // pairs with the Acquire load of `written` in the sync thread: it then sees the
        // segment's write position (and the pending list) at least this far.
        self.shared.written.store(self.next_offset, Ordering::Release);
        // One fence serves both wake-up protocols (tailers in `Head::notify_after_fence`,
        // the sync thread's park below); it pairs with `AsymmetricFence::heavy` on their side.
        AsymmetricFence::light(self.light_fence);
        self.head.notify_after_fence();
        self.shared.wake_after_publish(self.opts.durability);
    }

    /// Makes room for a record of `len` bytes (`stride` with its header) at the write
    /// position: rolls over to the next segment when the active one is full, makes sure the
    /// space is allocated (itself, when the preparation thread fell behind), asks that
    /// thread for more ahead when less than half of [`LogOptions::prealloc_bytes`] is left,
    /// and has the next segment prepared once the active one is half written.
    #[cold]
    fn make_room(&mut self, len: usize, stride: usize) -> Result<(), LogError> {
        if self.position + stride > self.end {
            self.roll()?;
            if self.position + stride > self.end {
                return Err(self.too_small(len));
            }
        }
        let need = (self.position + stride) as u64;
        let end = self.end as u64;
        // Further ahead the more of the segment is written: a quiet log stays small, a busy
        // one keeps several milliseconds of appends ready.
        let ahead = self.opts.prealloc_bytes.max((self.position as u64 / 4).min(MAX_AHEAD_BYTES));
        let mut allocated = self.active.allocated.load(Ordering::Acquire);
        if allocated < need {
            allocated = self.active.allocate(format::align_up((need + ahead) as usize, format::PAGE_BYTES) as u64)?;
        }
        self.limit = if allocated >= end {
            self.end
        } else {
            // Ask for space (and pages) up to `ahead` past here at every quarter of it, so
            // the preparation thread stays well ahead; come back then, or when the space
            // runs out.
            let upto = (need + ahead).min(end);
            if upto > self.ahead_asked {
                self.ahead_asked = upto;
                self.preparer.ahead(&self.active, upto);
            }
            (need + ahead / 4).min(allocated) as usize
        };
        let half = self.end / 2;
        if self.position >= half {
            self.preparer.refill();
        } else if !self.preparer.holds_segment() {
            // Come back half-way to have the next segment prepared.
            self.limit = self.limit.min(half.max(need as usize));
        }
        Ok(())
    }

    /// The error for a fresh segment with no room for a record of `len` bytes: only a
    /// segment whose header or length was changed outside shoal can be that small.
    #[cold]
    fn too_small(&self, len: usize) -> LogError {
        LogError::Inconsistent {
            path: self.active.path.clone(),
            why: format!(
                "a fresh segment has room for {} bytes of records, too few for a {len}-byte record; its header or \
                 length was changed outside shoal: move it out of the log",
                self.end.saturating_sub(self.position)
            ),
        }
    }

    /// Seals the active segment and switches to the prepared one.
    #[cold]
    fn roll(&mut self) -> Result<(), LogError> {
        // With a shared log, a segment prepared before other appenders went past its id is
        // stale (in use, or gone): skip it. The tries after the first cover a preparation
        // in flight for a stale id; the last gets a fresh one.
        for _ in 0..4 {
            let next = match self.prepared_by_another() {
                Some(seg) => seg,
                None => self.preparer.next_segment()?,
            };
            let unused = next.region().read_header().is_ok_and(|h| h.base_offset == format::BASE_OFFSET_UNSET);
            if next.id > self.active.id && unused {
                self.activate(next)?;
                // A segment of this appender's own prepared for that id is stale now.
                self.preparer.skip_past(self.active.id);
                self.apply_retention_held();
                return Ok(());
            }
            self.preparer.skip_past(self.active.id);
        }
        Err(LogError::Inconsistent {
            path: self.dir.clone(),
            why: format!("no unused segment after segment {} could be prepared", self.active.id.0),
        })
    }

    /// With a shared log, when this appender's own preparation of the next segment is not
    /// ready, the next segment another appender prepared (its file is in place, so it is
    /// whole): the roll then need not wait for this appender's preparation thread.
    fn prepared_by_another(&mut self) -> Option<Arc<Segment>> {
        self.role.as_ref()?;
        self.preparer.refill();
        if self.preparer.holds_prepared() {
            return None;
        }
        let id = SegmentId(self.active.id.0.checked_add(1)?);
        let seg = Segment::open(&self.dir.join(segment_file_name(id)), id, true).ok()?;
        (seg.header.base_offset == format::BASE_OFFSET_UNSET).then(|| Arc::new(seg))
    }

    /// Switches to `seg` (whose header is `header`) as the active segment, its next record
    /// at `position` and its sparse index cursor at `index`; hands it to the sync thread.
    fn make_active(&mut self, seg: Arc<Segment>, header: &SegmentHeader, position: usize, index: (usize, usize)) {
        seg.written.store(position as u64, Ordering::Relaxed);
        let pending = Arc::new(Pending::new(seg.clone()));
        self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).push(pending.clone());
        self.region = seg.region();
        self.end = seg.mapped_bytes;
        // The next append makes room: it allocates what is missing and asks for more.
        self.limit = 0;
        self.ahead_asked = 0;
        self.position = position;
        self.base_offset = header.base_offset;
        (self.index_slot, self.index_next_position) = index;
        self.index_capacity = header.index_entries as usize;
        self.index_interval = header.index_interval as usize;
        self.active = seg;
        self.pending = pending;
    }

    /// Makes `seg` the active segment starting at `self.next_offset`.
    fn activate(&mut self, seg: Arc<Segment>) -> Result<(), LogError> {
        if self.end > 0 && self.position + 8 <= self.end {
            // The old segment's end marker needs its disk space like any record's.
            self.active.allocate((self.position + 8) as u64)?;
        }
        self.clock.reanchor();
        let mut header = seg.header;
        header.base_offset = self.next_offset;
        header.activated_ns = self.clock.now_ns();
        let region = seg.region();
        // SAFETY: the segment is not yet in use, so no reader trusts its header yet (readers
        // verify its checksum, and only open it after the end marker below).
        unsafe { region.write_header(&header) };
        // Seal the old segment (if there is one in use) after the new header is in place.
        if self.end > 0 {
            let end = if self.position + 4 <= self.end {
                self.region.publish(self.position, END_OF_SEGMENT);
                self.position + 8
            } else {
                self.position
            };
            self.active.written.store(end.min(self.end) as u64, Ordering::Relaxed);
            self.pending.sealed.store(true, Ordering::Release);
        }
        self.retained.push_back(in_use_of(&seg, &header));
        self.make_active(seg, &header, header.data_start(), (0, 0));
        self.head.store_tail_index(0, 0);
        self.preparer.collect();
        Ok(())
    }

    /// Deletes sealed segments beyond the retention limits (done at each rollover; with a
    /// shared log, by the appender that rolls over).
    ///
    /// # Errors
    /// With a shared log, an error taking the writer role or catching up.
    pub fn apply_retention(&mut self) -> Result<(), LogError> {
        self.enter()?;
        self.apply_retention_held();
        let ts = self.clock.now_ns();
        self.leave(ts);
        Ok(())
    }

    /// [`Appender::apply_retention`] while holding the writer role.
    fn apply_retention_held(&mut self) {
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
            let prepared_bytes = if self.preparer.holds_segment() { self.opts.segment_bytes } else { 0 };
            let total: u64 = self.retained.iter().map(|r| r.3).sum::<u64>() + prepared_bytes;
            let over_bytes = retention.max_bytes.is_some_and(|max| total > max);
            // The oldest segment's newest record is older than its successor's activation.
            let newest_ns = self.retained[1].4;
            let over_age = retention.max_age.is_some_and(|age| now.saturating_sub(newest_ns) > age.as_nanos() as u64);
            if !over_bytes && !over_age {
                break;
            }
            if let Some((id, path, ..)) = self.retained.pop_front() {
                match self.dir_fd.unlink(&segment_file_name(id)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!("{}: retention could not remove the segment: {e}", path.display()),
                }
                // Its records are gone, so nothing is left to sync: release the mapping (and
                // with it the disk space) instead of waiting for the next sync.
                self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| p.segment.id != id);
            }
        }
    }

    /// Blocks until every record appended so far is durable (in any durability mode): this
    /// appender's, and with a shared log every other appender's that was published before
    /// the call.
    ///
    /// # Errors
    /// [`LogError::SyncFailed`] when the sync fails; with a shared log, an error taking the
    /// writer role to catch up.
    pub fn sync(&mut self) -> Result<Offset, LogError> {
        if self.role.is_some() && self.head.tail().next > self.next_offset {
            // Other appenders appended since this one last held the role: catch up (which
            // hands their segments to this appender's sync thread), so that the sync covers
            // their records too.
            self.enter()?;
            let ts = self.clock.now_ns();
            self.leave(ts);
        }
        let target = self.next_offset;
        if target == 0 {
            return Ok(Offset(0));
        }
        self.shared.sync_through(target)?;
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
        if let Some(thread) = self.sync_thread.take() {
            if !self.abandoned && self.next_offset > 0 && self.shared.syncs_on_close() {
                if let Err(e) = self.sync() {
                    result = Err(e);
                }
            }
            self.shared.stop_syncer(thread);
        }
        if let Some(mut role) = self.role.take() {
            role.close(self.abandoned);
        }
        self.preparer.stop();
        // The page names no appender once the last one closed: readers then judge a stop
        // where records end as final. With a shared log, this appender is the last when it
        // can take the log lock alone.
        if !self.abandoned && (self.opts.writers == Writers::Exclusive || self._lock.try_alone()) {
            self.head.set_appender_pid(0);
        }
        self.head.wake();
        result
    }

    /// Drops this appender the way a `SIGKILL` of its process would: no final sync, and
    /// with a shared log the writer role left marked as held, so the next appender repairs
    /// the tail. For model tests and fuzzing of many appenders in one process.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        self.abandoned = true;
        drop(self);
    }
}

/// The most disk space an appender has made ready ahead of it (see
/// [`LogOptions::prealloc_bytes`]).
const MAX_AHEAD_BYTES: u64 = 8 << 20;

/// A segment in use as retention lists it.
/// Checks a record's extensions (with a `len`-byte payload, against `max_record_bytes`, which
/// the extension block counts toward, so that any record the options allow fits a segment);
/// returns the bytes of its extension block.
#[cold]
fn check_ext(ext: &Extensions<'_>, len: usize, max: usize) -> Result<usize, AppendError> {
    if let Some(text) = ext.key_bytes {
        if text.len() > format::KEY_BYTES_MAX {
            return Err(AppendError::KeyTooLong { len: text.len(), max: format::KEY_BYTES_MAX });
        }
    }
    let ext_bytes = ext.encoded_bytes();
    if len + ext_bytes > max {
        return Err(AppendError::TooLarge { len: len + ext_bytes, max });
    }
    Ok(ext_bytes)
}

fn in_use_of(seg: &Segment, header: &SegmentHeader) -> InUse {
    (seg.id, seg.path.clone(), header.base_offset, header.segment_bytes, header.activated_ns)
}

/// The options for recovery where a dead appender's torn record is expected: a strict
/// recovery mode would refuse it, so it cuts a torn tail at least. `alone`: recovery at
/// open, which follows the options as given.
fn peer_opts(opts: &LogOptions, alone: bool) -> LogOptions {
    let mut opts = *opts;
    if !alone && opts.recovery_mode == RecoveryMode::Strict {
        opts.recovery_mode = RecoveryMode::TruncateTail;
    }
    opts
}

/// One append call after [`Appender::enter`]: when it ends, normally or by unwinding out
/// of a caller's `fill` closure or record iterator, it publishes every record written (so
/// the next holder of the writer role, which trusts the published tail, never writes over
/// one) and ends the call ([`Appender::leave`]), so a panic caught by the caller leaves
/// neither unpublished records nor a writer role that other appenders wait on forever.
struct Call<'a> {
    log: &'a mut Appender,
    /// The call's append time.
    ts: u64,
    /// The next offset when the call began.
    first: u64,
}

impl<'a> Call<'a> {
    #[inline(always)]
    fn new(log: &'a mut Appender, ts: u64) -> Call<'a> {
        let first = log.next_offset;
        Call { log, ts, first }
    }
}

impl std::ops::Deref for Call<'_> {
    type Target = Appender;

    #[inline(always)]
    fn deref(&self) -> &Appender {
        self.log
    }
}

impl std::ops::DerefMut for Call<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Appender {
        self.log
    }
}

impl Drop for Call<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        let ts = self.ts;
        if self.log.next_offset != self.first {
            self.log.last_ts = ts;
            self.log.publish();
        }
        self.log.leave(ts);
    }
}

/// Lets go of the writer role after a failed repair or catch-up, leaving it marked as held
/// so that the next appender repairs again.
fn abort_role(role: &Option<Role>) {
    if let Some(role) = role {
        role.abort();
    }
}

/// Where an appender starts: the tail and what surrounds it.
struct TailStart {
    /// The active segment and where its next record goes; `None` for an empty log.
    tail: Option<(Arc<Segment>, usize)>,
    next_offset: u64,
    durable: u64,
    /// The index cursor when known (else read from the segment).
    index: Option<(usize, usize)>,
    in_use: VecDeque<InUse>,
    prepared: Option<Arc<Segment>>,
    next_seq: SegmentId,
    report: RecoveryReport,
}

impl TailStart {
    /// From recovery; records the watermark (everything recovered is synced): reset when
    /// `alone` or when recovery cut records off, else raised.
    fn recovered(recovered: RecoveredTail, head: &Head, alone: bool) -> TailStart {
        let next = recovered.report.next_offset;
        if alone || recovered.report.cut.is_some() {
            head.reset_offsets(next);
        } else {
            head.set_durable_offset(next);
        }
        TailStart {
            tail: recovered.tail.map(|t| (t.segment, t.position)),
            next_offset: next,
            durable: head.durable_offset().min(next),
            index: None,
            in_use: recovered.in_use,
            prepared: recovered.prepared,
            next_seq: recovered.next_seq,
            report: recovered.report,
        }
    }

    /// From the tail the last holder of the writer role stored in `HEAD`.
    fn from_head(dir: &Path, head: &Head) -> Result<TailStart, LogError> {
        let tail = head.tail();
        let id = SegmentId(tail.segment);
        let path = dir.join(segment_file_name(id));
        let seg = Arc::new(Segment::open(&path, id, true)?);
        let header = seg.header;
        let fits = header.base_offset != format::BASE_OFFSET_UNSET
            && tail.position >= header.data_start() as u64
            && tail.position <= seg.mapped_bytes as u64
            && tail.next >= header.base_offset;
        if !fits {
            return Err(LogError::Inconsistent {
                path,
                why: format!(
                    "HEAD records the tail of the shared log at {tail:?}, which does not fit this segment; close every \
                     appender of the log and open it again to recover it"
                ),
            });
        }
        let in_use = list_in_use(dir)?;
        Ok(TailStart {
            tail: Some((seg, tail.position as usize)),
            next_offset: tail.next,
            durable: head.durable_offset().min(tail.next),
            index: Some((tail.index_slot as usize, tail.index_next_position as usize)),
            report: RecoveryReport { segments: in_use.len() as u64, next_offset: tail.next, cut: None },
            in_use,
            prepared: None,
            next_seq: SegmentId(id.0.saturating_add(1)),
        })
    }
}

/// Where the sparse index of `segment` goes on: its first free slot, and the position from
/// which the next record gets an entry.
fn index_cursor(segment: &Segment) -> (usize, usize) {
    let header = segment.header;
    let region = segment.region();
    let slot = (0..header.index_entries as usize).take_while(|i| region.load_index(*i).is_some_and(|e| e != 0)).count();
    let next_position = match slot {
        0 => 0,
        n => {
            let (_, pos) = format::index_entry_parts(region.load_index(n - 1).unwrap_or(0));
            pos as usize + header.index_interval as usize
        }
    };
    (slot, next_position)
}

impl Drop for Appender {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("{}: closing the log: {e}", self.dir.display());
        }
        // The threads are stopped: unmapping the segments is left to the reaper.
        retire(self.active.clone());
        for pending in std::mem::take(&mut *self.shared.pending.lock().unwrap_or_else(|p| p.into_inner())) {
            retire(pending.segment.clone());
        }
        if let Some(prepared) = self.preparer.take_prepared() {
            retire(prepared);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;
    use crate::log::segment::SegmentId;
    use crate::log::Durability;

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
        let entries = format::index_entries_for(opts.segment_bytes, opts.index_interval_bytes);
        let end = format::data_start(entries) + 10 * format::record_stride(8);
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
