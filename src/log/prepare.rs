//! Segment preparation ahead of need: a background thread creates the next segment file
//! (space for its first bytes, header, sync, rename into place, directory sync) and
//! populates its first pages, so that a rollover finds it ready. The same thread keeps disk
//! space allocated and pages populated ahead of the appender in the active segment
//! ([`Preparer::ahead`]), so appends never wait for either and a quiet log stays small.
//!
//! At most one preparation is in flight: requests and results travel over two channels of
//! capacity one. The appender holds the [`Preparer`], which tracks the prepared segment, the
//! request in flight and the sequence number the next one gets. Sequence numbers never wrap:
//! after the largest there is no next segment, and asking for one is an error.
//!
//! The thread creates files through the log directory's [`Dir`] (held open by the appender),
//! never by path: see [`Segment::prepare`].

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Receiver, Sender};

use super::error::LogError;
use super::io::IoDriver;
use super::segment::{Segment, SegmentId};
use super::LogOptions;
use crate::sys::fs::Dir;

/// The appender's side of the preparation thread.
#[derive(Debug)]
pub(crate) struct Preparer {
    /// The segment prepared ahead, collected from the thread.
    prepared: Option<Arc<Segment>>,
    requests: Option<Sender<SegmentId>>,
    /// Requests to allocate (and populate) a segment up to a byte; dropped when full.
    ahead: Option<Sender<(Arc<Segment>, u64)>>,
    results: Receiver<Result<Arc<Segment>, LogError>>,
    in_flight: bool,
    /// The id the next requested segment gets; `None` once the largest id was handed out.
    next_seq: Option<u64>,
    dir: Arc<Dir>,
    thread: Option<JoinHandle<()>>,
}

impl Preparer {
    /// Starts the preparation thread for the log in `dir` (which it creates files in and
    /// syncs). `prepared` is a segment already prepared (left by a previous run); new ones
    /// get sequence numbers from `next_seq` on.
    ///
    /// # Errors
    /// [`LogError::UringUnavailable`] for its I/O driver; a thread that cannot be spawned.
    pub(crate) fn start(
        dir: Arc<Dir>,
        opts: LogOptions,
        prepared: Option<Arc<Segment>>,
        next_seq: SegmentId,
    ) -> Result<Preparer, LogError> {
        let (requests, request_rx) = bounded::<SegmentId>(1);
        let (ahead, ahead_rx) = bounded::<(Arc<Segment>, u64)>(2);
        let (result_tx, results) = bounded::<Result<Arc<Segment>, LogError>>(1);
        let thread = spawn_preparer(dir.clone(), opts, request_rx, ahead_rx, result_tx)?;
        Ok(Preparer {
            prepared,
            requests: Some(requests),
            ahead: Some(ahead),
            results,
            in_flight: false,
            next_seq: Some(next_seq.0),
            dir,
            thread: Some(thread),
        })
    }

    /// Takes the prepared segment, if one was collected.
    pub(crate) fn take_prepared(&mut self) -> Option<Arc<Segment>> {
        self.prepared.take()
    }

    /// True when a prepared segment is collected and ready.
    pub(crate) fn holds_prepared(&self) -> bool {
        self.prepared.is_some()
    }

    /// True when a prepared segment exists on disk, collected or still in flight.
    pub(crate) fn holds_segment(&self) -> bool {
        self.prepared.is_some() || self.in_flight
    }

    /// The next segment: the prepared one, or the one in flight (waited for), or a new one
    /// prepared now. A preparation that failed ahead of time (a disk full then, freed since)
    /// is tried once more before its error is returned.
    ///
    /// # Errors
    /// The preparation's error; [`LogError::Closed`] when the thread is gone.
    pub(crate) fn next_segment(&mut self) -> Result<Arc<Segment>, LogError> {
        if let Some(seg) = self.prepared.take() {
            return Ok(seg);
        }
        let mut tries = if self.in_flight { 2 } else { 1 };
        if !self.in_flight {
            self.request();
            if !self.in_flight && self.next_seq.is_none() {
                return Err(self.exhausted());
            }
        }
        loop {
            self.in_flight = false;
            match self.results.recv() {
                Ok(Ok(seg)) => return Ok(seg),
                Ok(Err(e)) => {
                    // Only one preparation is ever in flight: retry the same id.
                    self.give_back_id();
                    tries -= 1;
                    if tries == 0 {
                        return Err(e);
                    }
                    self.request();
                    if !self.in_flight && self.next_seq.is_none() {
                        return Err(self.exhausted());
                    }
                }
                Err(_) => return Err(LogError::Closed),
            }
        }
    }

    /// Forgets a prepared segment whose id is `active` or below (other appenders of a shared
    /// log went past it) and moves the next id past `active`. A preparation in flight for
    /// such an id comes back as a segment in use, which the caller skips.
    pub(crate) fn skip_past(&mut self, active: SegmentId) {
        if self.prepared.as_ref().is_some_and(|s| s.id <= active) {
            self.prepared = None;
        }
        if self.next_seq.is_some_and(|n| n <= active.0) {
            self.next_seq = active.0.checked_add(1);
        }
    }

    /// After a repair of a shared log's tail: the prepared segment recovery found (if any)
    /// replaces this one's, and ids go on from `next_seq`.
    pub(crate) fn reset(&mut self, prepared: Option<Arc<Segment>>, next_seq: SegmentId) {
        self.prepared = prepared;
        if !self.in_flight {
            self.next_seq = Some(next_seq.0);
        } else {
            self.next_seq = Some(self.next_seq.map_or(next_seq.0, |n| n.max(next_seq.0)));
        }
    }

    /// Asks for the next segment unless one is prepared or in flight.
    pub(crate) fn request_if_none(&mut self) {
        if !self.holds_segment() {
            self.request();
        }
    }

    /// Asks the thread to allocate disk space in `segment` up to byte `upto` and populate
    /// the pages there (with `prefault`). A request that finds the thread busy is dropped:
    /// the appender then allocates what it needs itself when it gets there.
    pub(crate) fn ahead(&self, segment: &Arc<Segment>, upto: u64) {
        if let Some(tx) = &self.ahead {
            let _ = tx.try_send((segment.clone(), upto));
        }
    }

    /// [`Preparer::request_if_none`], then [`Preparer::collect`].
    pub(crate) fn refill(&mut self) {
        self.request_if_none();
        self.collect();
    }

    /// Collects a finished preparation without blocking; a failed one is logged and retried
    /// at the next rollover.
    pub(crate) fn collect(&mut self) {
        if self.in_flight {
            if let Ok(result) = self.results.try_recv() {
                self.in_flight = false;
                match result {
                    Ok(seg) => self.prepared = Some(seg),
                    Err(e) => {
                        self.give_back_id();
                        tracing::warn!("preparing the next segment failed: {e}; retrying at the next rollover");
                    }
                }
            }
        }
    }

    /// Sends a request for the next id, if there is one (checked arithmetic: ids never wrap
    /// around to those of existing segments).
    fn request(&mut self) {
        let (Some(tx), Some(id)) = (&self.requests, self.next_seq) else { return };
        if tx.try_send(SegmentId(id)).is_ok() {
            self.next_seq = id.checked_add(1);
            self.in_flight = true;
        }
    }

    /// Takes back the id of a preparation that failed, to be tried again.
    fn give_back_id(&mut self) {
        self.next_seq = Some(self.next_seq.map_or(u64::MAX, |next| next - 1));
    }

    /// The error when no segment id is left.
    fn exhausted(&self) -> LogError {
        LogError::Inconsistent {
            path: self.dir.path().to_path_buf(),
            why: format!("segment id {} is the largest there is: no further segment can be created", u64::MAX),
        }
    }

    /// Stops the thread and waits for it; no request is accepted afterwards.
    pub(crate) fn stop(&mut self) {
        self.requests = None;
        self.ahead = None;
        if let Some(t) = self.thread.take() {
            // Drain every preparation until the thread hangs up: with the request sender
            // gone it finishes what is queued, and each result must find room in the
            // bounded channel or the thread (and this join) would block forever.
            while self.results.recv().is_ok() {}
            let _ = t.join();
        }
    }
}

/// With a shared log, another appender may have prepared (or even activated) segment `id`
/// first: its file is then there, and is opened instead. `e` is returned when there is no
/// such file; the error of opening it when it cannot be (a symlink planted there).
fn prepared_by_another(dir: &Dir, id: SegmentId, e: LogError) -> Result<Segment, LogError> {
    let path = dir.join(&super::segment::segment_file_name(id));
    match Segment::open(&path, id, true) {
        Ok(seg) => Ok(seg),
        Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Err(e),
        Err(open) => Err(open),
    }
}

fn spawn_preparer(
    dir: Arc<Dir>,
    opts: LogOptions,
    requests: Receiver<SegmentId>,
    ahead: Receiver<(Arc<Segment>, u64)>,
    results: Sender<Result<Arc<Segment>, LogError>>,
) -> Result<JoinHandle<()>, LogError> {
    let mut io = IoDriver::new(opts.io_backend)?;
    std::thread::Builder::new()
        .name("shoal-log-prepare".into())
        .spawn(move || {
            let mut populate = opts.prefault;
            let mut populated = |segment: &Segment, range: std::ops::Range<usize>| {
                if populate && !segment.populate(range) {
                    tracing::warn!("MADV_POPULATE_WRITE unsupported (kernel 5.14+); appends take page faults");
                    populate = false;
                }
            };
            // Both senders are dropped together (`Preparer::stop`): either closing ends it.
            loop {
                select! {
                    recv(requests) -> id => {
                        let Ok(id) = id else { break };
                        let seg_bytes = opts.segment_bytes;
                        let result =
                            Segment::prepare(&dir, id, seg_bytes, opts.index_interval_bytes, opts.prealloc_bytes, &mut io)
                                .or_else(|e| prepared_by_another(&dir, id, e))
                                .map(Arc::new);
                        let segment = result.as_ref().ok().cloned();
                        if results.send(result).is_err() {
                            break;
                        }
                        // Handed over before its pages are populated: an appender that outran
                        // this thread starts on it at once and faults its own pages.
                        if let Some(segment) = segment {
                            let initial = segment.allocated.load(std::sync::atomic::Ordering::Acquire) as usize;
                            populated(&segment, 0..initial);
                        }
                    }
                    recv(ahead) -> request => {
                        let Ok((segment, upto)) = request else { break };
                        let from = segment.allocated.load(std::sync::atomic::Ordering::Acquire) as usize;
                        // A failure here (a full disk) is the appender's to report, when it
                        // allocates the space it needs itself.
                        if let Ok(to) = segment.allocate(upto) {
                            populated(&segment, from..to as usize);
                        }
                    }
                }
            }
        })
        .map_err(|e| LogError::io("shoal-log-prepare", "spawn thread", e))
}
