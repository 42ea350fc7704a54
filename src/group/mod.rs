//! Consumer groups: members (threads or processes on one box) share the partitions of a
//! topic, each partition read by exactly one live member at a time, with committed offsets
//! that survive crashes. No daemon: the state is a directory of small files and OS locks, and
//! a member that stops making progress loses its partitions after a session timeout.
//!
//! # Layout (the byte formats and their versions are in [`format`](mod@format))
//! ```text
//! <bus>/groups/<group>/<topic>/epoch            4 KiB page; u32 futex word at byte 0
//! <bus>/groups/<group>/<topic>/members/<id>.lease   one per live member, flock'ed by it
//! <bus>/groups/<group>/<topic>/members/<id>.beat    its heartbeat counter (mapped page)
//! <bus>/groups/<group>/<topic>/owners/<p>.lock      flock'ed by partition p's owner; names
//!                                                   it and the partition's owner generation
//! <bus>/groups/<group>/<topic>/offsets/<p>          partition p's committed offset (two slots)
//! ```
//! Every one of these files and directories is opened through `crate::sys::fs::Dir`:
//! relative to its directory, with `O_NOFOLLOW`, regular files only, so a symlink planted as
//! `epoch`, a lease or an owner file is an error naming it and nothing outside the bus is
//! ever written. Only the bus directory itself is reached by its path.
//!
//! # Membership
//! A member holds an exclusive `flock(2)` on its lease for its whole life (one open file
//! description per member, so threads of one process are independent members). The kernel
//! drops the lock when the process dies, `kill -9` included. A lease is live while its lock
//! is held: members test the others' leases (a fresh open, `LOCK_EX|LOCK_NB`; success means
//! the owner is dead and the file is removed) every [`GroupOptions::liveness_check`]. A lease
//! is written under a temporary name, locked, then renamed into place, so no sweeper can
//! take a joining member for a dead one. (A sweeper that opens the temporary file between its
//! creation and its lock does remove it; the joiner then sees its lock or rename fail and
//! starts over under a new id, a bounded number of times.) Member ids are
//! `<join time ns:020>-<pid>-<n>`: unique across processes and sorted by join time.
//!
//! # Liveness: heartbeats and the session timeout
//! A lock proves that a process exists, not that it makes progress: a SIGSTOPped member, or
//! one whose handler hangs and never calls [`Member::poll`] again, keeps its locks forever.
//! So each member also maps its `<id>.beat` file and increments a counter in it on every
//! pass of [`Member::poll`] (one relaxed atomic add to a mapped page, no syscall; `poll`
//! passes at least every [`GroupOptions::liveness_check`] while it waits). At each sweep a
//! member reads the counters of the other live leases (`pread`, one per member) and notes,
//! on its own monotonic clock (`Instant`), when each last changed. A member whose counter has
//! not changed for [`GroupOptions::session_timeout`] is *stale*: it is left out of the
//! assignment as a dead one is, but its lease is kept, because it may wake. Only counters are
//! compared, never timestamps written by another process, so wall-clock jumps and clocks of
//! other processes play no part. A member without a `.beat` file (one of an older shoal) is
//! never stale: the lock alone decides, as before.
//!
//! # Takeover and fencing
//! Taking a partition and taking it over happen under a short critical section, the
//! *partition lock*: an exclusive `flock` on its `offsets/<p>` file, held only for a few
//! syscalls and never while a member waits. Commits take no lock at all.
//! - **take**: open `owners/<p>.lock`, `LOCK_EX|LOCK_NB` it, write its owner file with the
//!   owner generation one above the last, read the committed offset.
//! - **take over**: when the lock is held but the owner file names a member that is stale
//!   for this member, write a new owner file under a temporary name (`O_EXCL`), lock it,
//!   and rename it over `owners/<p>.lock`: a new inode, owner generation plus one. The
//!   stale member keeps its lock, on the old inode that no name leads to any more. Then
//!   copy `offsets/<p>` to a new file (locked while it is written) and rename that over
//!   it, so the stale member's descriptor, too, leads to a file nobody reads any more.
//!   A take that was waiting for the partition lock on the old file sees the new inode
//!   behind the name once it has the lock, and tries again at its next sweep.
//! - **commit**: check that `owners/<p>.lock` is still the inode this member locked (one
//!   `fstatat`), write the offsets slot into the offsets file it opened at take, and check
//!   again. When either check fails, the commit of that partition fails with
//!   [`GroupError::Fenced`] and the member drops it.
//!
//! At each sweep a member also checks that the owner file of each partition it holds is
//! still its inode, and drops (without committing) those it lost: a member that wakes finds
//! its partitions gone at its next `poll`, before it reads another record of them, and waits
//! for them like any other member until the new owner hands them back at a rebalance.
//!
//! Why a commit needs no lock: the offsets file a member writes is written by nobody else
//! while it owns the partition (a normal take happens only once the previous owner has
//! let go, and a takeover gives the file a new inode), and only the copy made after the
//! owner rename is read from then on. A commit whose second check passes wrote before the
//! rename, so the copy holds it; one that writes after the rename fails its second check.
//! So a commit reported done is never lost to a takeover, and a stopped owner's late slot
//! never reaches the new owner's file.
//!
//! Races, and why each is safe:
//! - *A member stopped mid-commit.* It holds no lock, so the partition is taken over after
//!   the session timeout as from any stopped member. Stopped before its first check: the
//!   check then sees the new inode and fails. Stopped between the first check and the
//!   write, or before the second check: its slot goes to the old file and its second check
//!   fails, so the commit is reported as fenced (the new owner delivers those records
//!   again, at least once).
//! - *A member stopped inside a take or takeover* (a few syscalls under the partition
//!   lock, once per rebalance) holds that partition's lock until it wakes, so that one
//!   partition cannot be taken meanwhile. This is the one window in which a stopped member
//!   delays a takeover.
//! - *Two members take over at once* (they briefly disagree on the assignment). Both take
//!   the partition lock in turn; the second finds the owner file renamed to a live member's
//!   and backs off.
//! - *A member takes a partition normally while another takes it over* (the stale owner
//!   died and released its lock at that moment): both are under the partition lock, so the
//!   second sees the first's owner file, live, and does nothing.
//! - *The stale member is only slow* and its next poll comes after the takeover: it is
//!   treated exactly as a stopped one; its records since its last commit are delivered again
//!   by the new owner (at least once, as after a crash).
//! - *Clock jumps*: staleness is measured with the observer's monotonic clock over a counter.
//!
//! Joins, graceful leaves and partition releases bump the `epoch` word and `FUTEX_WAKE` it.
//! Every member loads that word on each poll (an atomic load, no syscall) and rescans the
//! members when it moved; idle members sleep on it. This replaces the inotify watch first
//! planned: inotify costs a `read` per check and cannot be waited on together with the
//! partitions' futex words, while the epoch word is free to check and joins the same
//! `futex_waitv` (see [`crate::log::wait_any`]). Deaths and stale members bump nothing; the
//! periodic sweep finds them.
//!
//! # Assignment and handover
//! Every member computes the assignment on its own from the sorted live ids and the
//! partition count ([`assign::assign`], bounded-load rendezvous hashing: balanced to floor
//! or ceil of P/n, few moves on a change). Members may briefly disagree (one saw a join the
//! other has not yet); that is safe because exclusivity comes from the owner lock, not from
//! the assignment: a member reads a partition only while it holds `owners/<p>.lock` and
//! that name still leads to the inode it locked.
//!
//! When a partition leaves a member's assignment, the member, at its next [`Member::poll`],
//! commits it up to everything it has returned (the records of earlier polls count as
//! processed: Kafka's commit-on-revoke), closes the lock and bumps the epoch. A member that
//! gains a partition tries `LOCK_EX|LOCK_NB` each time the epoch moves or the sweep runs,
//! and once it holds the lock, reads the committed offset and reads on from there: replay
//! from the log, then live, with no gap and no duplicate. A partition whose owner did not
//! change never pauses. A member busy between polls holds its revoked partitions until its
//! next poll: the pause a moving partition sees is bounded by the old owner's poll interval
//! (plus the liveness interval after a crash), and by the session timeout when the old owner
//! stops polling altogether. [`MemberStats::pause`] records, for each
//! partition gained after join, the time from "the assignment says mine" to "lock held and
//! reader positioned".
//!
//! # Delivery
//! At least once. [`Member::commit`] stores, per owned partition, the offset after the last
//! record returned. A graceful [`Member::leave`] commits and hands over with no duplicate;
//! after a crash the next owner re-delivers at most the records the dead member returned
//! after its last commit. Dropping a `Member` without `leave` releases its partitions and
//! lease without committing (its uncommitted records are delivered again).
//!
//! # Waiting
//! When every owned partition is caught up, [`Member::poll`] sleeps in one `futex_waitv`
//! over each partition's `HEAD` notify word and the epoch word, with the log's tailer
//! protocol (register as a waiter, fence, re-check, then sleep), capped at the liveness
//! interval so deaths are noticed.

pub mod assign;
mod error;
pub mod format;
mod typed;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

use crate::bus::{validate_name, Bus, BusError, Topic};
use crate::log::{wait_any_with, LogError, Offset, Reader, RecordRef, TailWait};
use crate::sys::file::{try_flock, Flock};
use crate::sys::fs::{Dir, Open};
use crate::sys::futex;
use crate::sys::histogram::LatencyHistogram;

pub use error::GroupError;
pub use format::{
    decode_beat, decode_lease, decode_offsets, decode_owner, CommittedSlot, FormatError, LeaseInfo, OwnerInfo,
};

/// How a member behaves. Build it from the default with its setters:
/// `GroupOptions::default().sync_commits(true).label("billing worker")`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GroupOptions {
    /// `fdatasync` the offsets file on each commit (default false: a commit survives a
    /// process crash but not a power loss).
    pub sync_commits: bool,
    /// How often the member checks the other members' leases and heartbeats (default
    /// 20 ms); also the longest single sleep in [`Member::poll`] (at most a quarter of
    /// [`GroupOptions::session_timeout`]).
    pub liveness_check: Duration,
    /// Shown by [`describe`], e.g. `"pid 123"` (the default). At most 1024 bytes are kept.
    pub label: String,
    /// How long another member's heartbeat may stand still before this member counts it
    /// as stopped and takes its partitions over (default 3 s; Kafka's
    /// `session.timeout.ms`). A member's heartbeat moves on every [`Member::poll`], so a
    /// handler that keeps a member from polling for longer than this loses its partitions.
    /// Each member applies its own setting to the others. Values under 50 ms are taken as
    /// 50 ms.
    pub session_timeout: Duration,
    /// How [`Member::poll`] waits when every owned partition is caught up (default
    /// [`TailWait::default`]: spin a little, then sleep): as a [`crate::log::Tailer`] does,
    /// spinning on the partitions' next commit words, sleeping on their futexes (and the
    /// group's epoch), or the one and then the other. A spin ends where a sleep would, at the
    /// liveness check, so the heartbeat keeps moving.
    pub tail_wait: TailWait,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions {
            sync_commits: false,
            liveness_check: Duration::from_millis(20),
            label: format!("pid {}", std::process::id()),
            session_timeout: Duration::from_secs(3),
            tail_wait: TailWait::default(),
        }
    }
}

impl GroupOptions {
    /// Sets [`GroupOptions::sync_commits`].
    #[must_use]
    pub fn sync_commits(mut self, sync_commits: bool) -> GroupOptions {
        self.sync_commits = sync_commits;
        self
    }

    /// Sets [`GroupOptions::liveness_check`].
    #[must_use]
    pub fn liveness_check(mut self, liveness_check: Duration) -> GroupOptions {
        self.liveness_check = liveness_check;
        self
    }

    /// Sets [`GroupOptions::session_timeout`].
    #[must_use]
    pub fn session_timeout(mut self, session_timeout: Duration) -> GroupOptions {
        self.session_timeout = session_timeout;
        self
    }

    /// Sets [`GroupOptions::tail_wait`].
    #[must_use]
    pub fn tail_wait(mut self, tail_wait: TailWait) -> GroupOptions {
        self.tail_wait = tail_wait;
        self
    }

    /// Sets [`GroupOptions::label`].
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> GroupOptions {
        self.label = label.into();
        self
    }
}

/// One record handed to a member.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The partition it comes from.
    pub partition: u32,
    /// The record, in place in the mapped log.
    pub record: RecordRef,
}

/// What a member has seen.
#[derive(Clone, Debug, Default)]
pub struct MemberStats {
    /// Times its assignment changed after it joined.
    pub rebalances: u64,
    /// For each partition gained after joining: ns from the assignment naming this member
    /// to holding the partition's lock with the reader positioned.
    pub pause: LatencyHistogram,
    /// Records returned by [`Member::poll`].
    pub delivered: u64,
    /// Partitions this member lost to a takeover after the session timeout (found at a
    /// sweep or by a fenced commit).
    pub fenced: u64,
}

/// A member of the group, as [`describe`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its id.
    pub id: String,
    /// Its label.
    pub label: String,
    /// Partitions whose lock it holds.
    pub partitions: Vec<u32>,
}

/// A partition of a group's topic, as [`describe`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition.
    pub partition: u32,
    /// The member holding its lock, if any.
    pub owner: Option<String>,
    /// The committed offset: the next offset the group reads.
    pub committed: u64,
    /// The next offset to be appended.
    pub end: u64,
    /// `end - committed`: records not yet committed by the group.
    pub lag: u64,
}

/// A group on a topic, as [`describe`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Live members, sorted by id (join order).
    pub members: Vec<MemberInfo>,
    /// Every partition of the topic.
    pub partitions: Vec<PartitionInfo>,
}

/// Device and inode number of a file: which file a name leads to.
type FileId = (u64, u64);

/// A partition this member holds.
#[derive(Debug)]
struct Owned {
    /// Holds the partition's owner lock while open.
    _lock: File,
    /// Device and inode of the owner file locked: the partition is ours while
    /// `owners/<p>.lock` still leads to it.
    lock_id: FileId,
    offsets: File,
    offsets_path: PathBuf,
    reader: Reader,
    /// The offset after the last record returned (records below it are skipped).
    delivered: u64,
    committed: u64,
    /// The generation of the newest slot in `offsets` (0: none yet).
    generation: u64,
}

/// The group's shared `epoch` page.
#[derive(Debug)]
struct Epoch {
    map: MmapRaw,
}

/// Maps the first page of `file`, which is at least 4096 bytes long.
fn map_page(file: &File, path: &Path) -> Result<MmapRaw, GroupError> {
    memmap2::MmapOptions::new().len(4096).map_raw(file).map_err(|e| GroupError::io(path, "mmap", e))
}

impl Epoch {
    fn open(base: &Dir) -> Result<Epoch, GroupError> {
        let path = base.join("epoch");
        let file = base.open_file("epoch", Open::ReadWriteCreate).map_err(|e| GroupError::io(&path, "open", e))?;
        let len = file.metadata().map_err(|e| GroupError::io(&path, "stat", e))?.len();
        if len < 4096 {
            file.set_len(4096).map_err(|e| GroupError::io(&path, "extend", e))?;
        }
        Ok(Epoch { map: map_page(&file, &path)? })
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: the mapping is 4096 bytes and page-aligned, so its first 4 bytes are an
        // aligned u32 that lives as long as `self`; every process touches it only atomically.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().cast()) }
    }

    fn bump(&self) {
        self.word().fetch_add(1, Ordering::SeqCst);
        futex::wake_all(self.word());
    }
}

/// This member's heartbeat: the counter of its mapped `<id>.beat` page.
#[derive(Debug)]
struct Heartbeat {
    map: MmapRaw,
}

impl Heartbeat {
    /// Creates `<id>.beat` (`O_EXCL`) in the members directory and maps it.
    fn create(members: &Dir, name: &str) -> Result<Heartbeat, GroupError> {
        let path = members.join(name);
        let file = members.open_file(name, Open::CreateNew).map_err(|e| GroupError::io(&path, "create", e))?;
        file.set_len(format::BEAT_FILE_BYTES as u64)
            .and_then(|()| file.write_all_at(&format::encode_beat_header(), 0))
            .map_err(|e| GroupError::io(&path, "write", e))?;
        Ok(Heartbeat { map: map_page(&file, &path)? })
    }

    fn counter(&self) -> &AtomicU64 {
        // SAFETY: the mapping is 4096 bytes and page-aligned, so bytes 16..24 are an aligned
        // u64 that lives as long as `self`; this process writes it only atomically and other
        // processes only read it (with pread: a torn read is just a changed value).
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(format::BEAT_COUNTER_AT).cast()) }
    }

    /// One beat: a relaxed add (readers only look for a change).
    #[inline]
    fn beat(&self) {
        self.counter().fetch_add(1, Ordering::Relaxed);
    }
}

/// What this member last saw of another member's heartbeat.
#[derive(Debug)]
struct Observed {
    /// The `.beat` file, once opened; `None` while it does not exist (a member of an older
    /// shoal, never stale).
    file: Option<File>,
    counter: u64,
    /// When (on this member's monotonic clock) the counter was last seen to change.
    changed: Instant,
}

/// A member of a consumer group: owns some partitions of the topic and reads them.
///
/// ```
/// use shoal::bus::Bus;
/// use shoal::group::{GroupOptions, Member};
/// use shoal::log::LogOptions;
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let bus = Bus::open(dir.path())?;
/// let mut producer = bus.topic_or_create("orders", Some(2))?.producer(LogOptions::default())?;
/// for key in 0..10u64 {
///     producer.send(key, b"order")?;
/// }
/// let mut member = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
/// assert_eq!(member.assigned(), [0, 1]); // alone in the group: every partition
/// let mut keys = Vec::new();
/// for _ in 0..100 {
///     if keys.len() == 10 {
///         break;
///     }
///     for delivery in member.poll(64, Duration::from_secs(1))? {
///         keys.push(delivery.record.key());
///     }
/// }
/// keys.sort();
/// assert_eq!(keys, (0..10).collect::<Vec<u64>>());
/// member.commit()?; // the group goes on after these records
/// member.leave()?; // hands every partition over at once
///
/// // A member that joins later starts from the committed offsets: nothing is delivered twice.
/// let mut next = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
/// assert!(next.poll(64, Duration::from_millis(10))?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Member {
    id: String,
    opts: GroupOptions,
    topic: Topic,
    members_dir: Dir,
    owners_dir: Dir,
    offsets_dir: Dir,
    lease: Option<File>,
    heartbeat: Heartbeat,
    epoch: Epoch,
    seen_epoch: u32,
    next_sweep: Instant,
    members: Vec<String>,
    /// Other members' heartbeats as last seen, by id.
    observed: BTreeMap<String, Observed>,
    /// Members whose lease is locked but whose heartbeat stood still for the session timeout.
    stale: Vec<String>,
    target: Vec<u32>,
    owned: BTreeMap<u32, Owned>,
    /// Assigned partitions not yet held, with since when.
    pending: BTreeMap<u32, Instant>,
    order: Vec<u32>,
    cursor: usize,
    joined: bool,
    stats: MemberStats,
}

static ID_COUNTER: AtomicU64 = AtomicU64::new(0);
/// The shortest session timeout applied (see [`GroupOptions::session_timeout`]).
const SESSION_TIMEOUT_MIN: Duration = Duration::from_millis(50);
/// Tries of [`Member::join`] to publish its lease while other members sweep.
const JOIN_ATTEMPTS: u32 = 16;
/// Tries (100 us apart) of a take to get a partition lock held by another member (5 ms:
/// a take that finds it busy tries again at the next sweep).
const TAKE_LOCK_TRIES: u32 = 50;

/// Reads at most `max` bytes of the file `name` of `dir` (never through a symlink); `None`
/// when it does not exist.
fn read_small(dir: &Dir, name: &str, max: u64) -> Result<Option<Vec<u8>>, GroupError> {
    let path = dir.join(name);
    let mut bytes = Vec::new();
    match dir.open_file(name, Open::Read) {
        Ok(f) => f.take(max).read_to_end(&mut bytes).map_err(|e| GroupError::io(&path, "read", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(GroupError::io(&path, "open", e)),
    };
    Ok(Some(bytes))
}

fn read_committed(dir: &Dir, name: &str) -> Result<Option<CommittedSlot>, GroupError> {
    let Some(bytes) = read_small(dir, name, format::OFFSETS_FILE_BYTES as u64 + 1)? else { return Ok(None) };
    decode_offsets(&bytes).map_err(|why| GroupError::bad_offsets(dir.join(name), why))
}

/// Reads the committed offset through an open offsets file.
fn read_committed_at(file: &File, path: &Path) -> Result<Option<CommittedSlot>, GroupError> {
    let mut bytes = [0u8; format::OFFSETS_FILE_BYTES + 1];
    let len = read_full_at(file, &mut bytes).map_err(|e| GroupError::io(path, "read", e))?;
    decode_offsets(&bytes[..len]).map_err(|why| GroupError::bad_offsets(path, why))
}

/// Reads an owner file through an open descriptor (`None` when empty or not valid).
fn read_owner_at(file: &File) -> Option<OwnerInfo> {
    let mut bytes = [0u8; 256];
    let n = file.read_at(&mut bytes, 0).ok()?;
    decode_owner(&bytes[..n]).ok()
}

fn lease_file_name(id: &str) -> String {
    format!("{id}.lease")
}

fn beat_file_name(id: &str) -> String {
    format!("{id}.beat")
}

fn owner_file_name(p: u32) -> String {
    format!("{p}.lock")
}

/// Device and inode of an open file.
fn file_id(file: &File, path: &Path) -> Result<FileId, GroupError> {
    let meta = file.metadata().map_err(|e| GroupError::io(path, "stat", e))?;
    Ok((meta.dev(), meta.ino()))
}

/// Device and inode of the entry `name` of `dir` itself (a symlink is not followed);
/// `None` when there is no such entry.
fn entry_id(dir: &Dir, name: &str) -> Result<Option<FileId>, GroupError> {
    let path = dir.join(name);
    let c = std::ffi::CString::new(name)
        .map_err(|_| GroupError::io(&path, "stat", std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is NUL-terminated and outlives the call; `st` is a buffer of the size
    // fstatat writes; the directory descriptor is open for the life of `dir`.
    let rc = unsafe { libc::fstatat(dir.raw_fd(), c.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(None);
        }
        return Err(GroupError::io(&path, "stat", e));
    }
    // SAFETY: fstatat returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(Some((st.st_dev, st.st_ino)))
}

/// Releases an `flock` held through `file`.
fn unlock(file: &File) {
    // SAFETY: flock on a descriptor `file` owns and keeps open for the call. An error can
    // only mean the lock is already gone, which is what is wanted.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// Takes the partition lock (an exclusive `flock` on the offsets file) for the few
/// syscalls of a take, takeover or commit, trying `tries` times 100 us apart while another
/// member holds it for its own. `Ok(false)` when it stays busy (a member stopped inside
/// that section).
fn lock_partition(offsets: &File, path: &Path, tries: u32) -> Result<bool, GroupError> {
    for attempt in 0..tries {
        if try_flock(offsets, Flock::Exclusive).map_err(|e| GroupError::io(path, "lock", e))? {
            return Ok(true);
        }
        if attempt + 1 < tries {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    Ok(false)
}

/// Opens `<bus>/groups/<group>/<topic>` below the bus directory, creating what is missing
/// when `create`; `None` when it does not exist and `create` is false.
fn group_topic_dir(bus: &Bus, group: &str, topic: &str, create: bool) -> Result<Option<Dir>, GroupError> {
    let root = bus.dir();
    let root = Dir::open(root).map_err(|e| GroupError::io(root, "open directory", e))?;
    let mut dir = root;
    for name in ["groups", group, topic] {
        let next = if create { dir.create_subdir(name) } else { dir.subdir(name) };
        dir = match next {
            Ok(d) => d,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(GroupError::io(dir.join(name), if create { "create directory" } else { "open" }, e)),
        };
    }
    Ok(Some(dir))
}

/// The next offset to be appended to the log in `dir` (0 when there is no log).
fn end_offset(dir: &Path) -> Result<u64, GroupError> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut reader = Reader::open(dir)?;
    reader.seek(Offset(u64::MAX))?;
    Ok(reader.next_offset().0)
}

impl Member {
    /// Joins `group` on `topic` (which must exist) as a new member.
    ///
    /// # Errors
    /// [`GroupError::Bus`] for an invalid name
    /// ([`BusError::InvalidName`]) or a missing topic
    /// ([`BusError::NoTopic`]), [`GroupError::Io`] (a symlink
    /// or a non-regular file planted in the group's directory among them, named), and a
    /// damaged offsets file of a partition it gains ([`GroupError::BadGroupFile`]).
    pub fn join(bus: &Bus, group: &str, topic: &str, opts: GroupOptions) -> Result<Member, GroupError> {
        bus.group_dir(group)?;
        validate_name("topic", topic)?;
        let topic_handle = bus.topic(topic)?;
        let Some(base) = group_topic_dir(bus, group, topic, true)? else {
            return Err(GroupError::io(bus.group_dir(group)?.join(topic), "open", std::io::ErrorKind::NotFound.into()));
        };
        let sub =
            |name: &str| base.create_subdir(name).map_err(|e| GroupError::io(base.join(name), "create directory", e));
        let (members_dir, owners_dir, offsets_dir) = (sub("members")?, sub("owners")?, sub("offsets")?);
        let epoch = Epoch::open(&base)?;
        let label = format::clamp_label(&opts.label).to_string();
        // A sweeping member that opens the temporary file before we lock it takes it for a
        // join cut short and removes it: our lock or rename then fails, and we start over.
        let mut attempt = 0;
        let (id, lease, heartbeat) = loop {
            attempt += 1;
            let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
            let id = format!("{:020}-{}-{n}", crate::log::now_ns(), std::process::id());
            let temp = format!(".{id}.joining");
            let temp_path = members_dir.join(&temp);
            let mut lease =
                members_dir.open_file(&temp, Open::CreateNew).map_err(|e| GroupError::io(&temp_path, "create", e))?;
            if !try_flock(&lease, Flock::Exclusive).map_err(|e| GroupError::io(&temp_path, "lock", e))? {
                let _ = members_dir.unlink(&temp);
                if attempt < JOIN_ATTEMPTS {
                    continue;
                }
                return Err(GroupError::io(&temp_path, "lock", std::io::Error::from(std::io::ErrorKind::WouldBlock)));
            }
            lease.write_all(&format::encode_lease(&id, &label)).map_err(|e| GroupError::io(&temp_path, "write", e))?;
            // The heartbeat exists before the lease is visible, so a member that sees the
            // lease can always read it.
            let heartbeat = Heartbeat::create(&members_dir, &beat_file_name(&id))?;
            let lease_name = lease_file_name(&id);
            match members_dir.rename_noreplace(&temp, &lease_name) {
                Ok(()) => break (id, lease, heartbeat),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < JOIN_ATTEMPTS => {
                    let _ = members_dir.unlink(&beat_file_name(&id));
                    continue;
                }
                Err(e) => {
                    let _ = members_dir.unlink(&beat_file_name(&id));
                    return Err(GroupError::io(members_dir.join(&lease_name), "rename", e));
                }
            }
        };
        epoch.bump();
        let mut member = Member {
            id,
            opts,
            topic: topic_handle,
            members_dir,
            owners_dir,
            offsets_dir,
            lease: Some(lease),
            heartbeat,
            seen_epoch: epoch.word().load(Ordering::Acquire).wrapping_sub(1),
            epoch,
            next_sweep: Instant::now(),
            members: Vec::new(),
            observed: BTreeMap::new(),
            stale: Vec::new(),
            target: Vec::new(),
            owned: BTreeMap::new(),
            pending: BTreeMap::new(),
            order: Vec::new(),
            cursor: 0,
            joined: false,
            stats: MemberStats::default(),
        };
        member.maintain()?;
        member.joined = true;
        Ok(member)
    }

    /// This member's id: `<join time ns, 20 digits>-<pid>-<n>`, unique on the box and
    /// sorted by join time.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Partitions this member holds now (their locks held, readers positioned).
    pub fn assigned(&self) -> Vec<u32> {
        self.owned.keys().copied().collect()
    }

    /// What the member has seen so far.
    pub fn stats(&self) -> MemberStats {
        self.stats.clone()
    }

    /// Up to `max` records of the partitions this member owns, taken round-robin; waits up
    /// to `timeout` when there are none (an empty vector then). Also where membership
    /// changes take effect: partitions this member loses are committed (up to every record
    /// returned so far) and released, partitions it gains are taken once their previous
    /// owner lets go (or, when that owner stopped polling for the session timeout, taken
    /// over), and partitions another member took over from this one are dropped. Each call
    /// moves this member's heartbeat.
    ///
    /// # Errors
    /// Log errors of a partition (corruption, [`LogError::OffsetGone`]), a damaged offsets
    /// file ([`GroupError::BadGroupFile`]), I/O errors on the group's files.
    pub fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, GroupError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut out = Vec::new();
        // Bounded by the deadline: every pass sleeps (or returns) when nothing is read.
        loop {
            self.maintain()?;
            self.read_into(&mut out, max)?;
            if !out.is_empty() || max == 0 {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            // Wakes often enough that the heartbeat moves well within the session timeout.
            let nap = self.opts.liveness_check.min(self.session_timeout() / 4);
            self.sleep((deadline - now).min(nap), now - start)?;
        }
    }

    /// Commits every record returned by [`Member::poll`] so far, for every partition held.
    ///
    /// # Errors
    /// [`GroupError::Fenced`] when another member took a partition over after the session
    /// timeout (the other partitions are still committed; the lost one is dropped), I/O
    /// errors writing (or syncing) an offsets file.
    pub fn commit(&mut self) -> Result<(), GroupError> {
        let sync = self.opts.sync_commits;
        let mut first_err = None;
        let mut lost = Vec::new();
        for (&p, owned) in self.owned.iter_mut() {
            match commit_one(&self.owners_dir, p, owned, sync) {
                Ok(()) => {}
                Err(e) => {
                    if matches!(e, GroupError::Fenced { .. }) {
                        lost.push(p);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        self.drop_lost(&lost);
        first_err.map_or(Ok(()), Err)
    }

    /// Leaves gracefully: commits, releases every partition and removes the lease, so the
    /// other members take over at once with no duplicate.
    ///
    /// # Errors
    /// As [`Member::commit`]; the partitions and lease are released even then.
    pub fn leave(mut self) -> Result<(), GroupError> {
        let committed = self.commit();
        self.release_all();
        committed
    }

    fn release_all(&mut self) {
        self.owned.clear();
        self.pending.clear();
        self.order.clear();
        if let Some(lease) = self.lease.take() {
            let _ = self.members_dir.unlink(&lease_file_name(&self.id));
            let _ = self.members_dir.unlink(&beat_file_name(&self.id));
            drop(lease);
            self.epoch.bump();
        }
    }

    /// Forgets partitions another member took over (without committing them).
    fn drop_lost(&mut self, lost: &[u32]) {
        if lost.is_empty() {
            return;
        }
        for p in lost {
            if self.owned.remove(p).is_some() {
                self.stats.fenced += 1;
                tracing::warn!(partition = p, member = %self.id, "partition taken over after the session timeout");
            }
        }
        self.order = self.owned.keys().copied().collect();
        self.cursor = 0;
    }

    /// Rescans members when due, recomputes the assignment, drops partitions taken over,
    /// releases lost partitions and tries to take gained ones.
    fn maintain(&mut self) -> Result<(), GroupError> {
        self.heartbeat.beat();
        let now = Instant::now();
        let epoch = self.epoch.word().load(Ordering::Acquire);
        let due = epoch != self.seen_epoch || now >= self.next_sweep;
        if due {
            self.seen_epoch = epoch;
            self.next_sweep = now + self.opts.liveness_check;
            // Partitions whose owner file no longer leads to our inode were taken over.
            let mut lost = Vec::new();
            for (&p, owned) in &self.owned {
                if entry_id(&self.owners_dir, &owner_file_name(p))? != Some(owned.lock_id) {
                    lost.push(p);
                }
            }
            self.drop_lost(&lost);
            let live = self.scan_members(now)?;
            if live != self.members {
                let target = assign::partitions_of(&live, self.topic.partitions(), &self.id);
                self.members = live;
                if target != self.target {
                    if self.joined {
                        self.stats.rebalances += 1;
                    }
                    self.target = target;
                }
            }
        }
        // Release what is no longer ours (commit-on-revoke).
        let mut released = false;
        let revoked: Vec<u32> = self.owned.keys().copied().filter(|p| !self.target.contains(p)).collect();
        let mut result = Ok(());
        for p in revoked {
            if let Some(mut owned) = self.owned.remove(&p) {
                let committed = commit_one(&self.owners_dir, p, &mut owned, self.opts.sync_commits);
                drop(owned); // closes the lock
                released = true;
                match committed {
                    // Taken over meanwhile: nothing to hand over.
                    Err(GroupError::Fenced { .. }) => self.stats.fenced += 1,
                    Err(e) => {
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                    Ok(()) => {}
                }
            }
        }
        if released {
            self.order = self.owned.keys().copied().collect();
            self.cursor = 0;
            self.epoch.bump();
        }
        result?;
        // Take what is ours once its previous owner lets go.
        self.pending.retain(|p, _| self.target.contains(p));
        let mut fresh = false;
        for &p in &self.target {
            if !self.owned.contains_key(&p) && !self.pending.contains_key(&p) {
                self.pending.insert(p, now);
                fresh = true;
            }
        }
        if (due || fresh) && !self.pending.is_empty() {
            self.try_acquire()?;
        }
        Ok(())
    }

    fn try_acquire(&mut self) -> Result<(), GroupError> {
        let mut gained = false;
        let partitions: Vec<(u32, Instant)> = self.pending.iter().map(|(&p, &since)| (p, since)).collect();
        for (p, since) in partitions {
            let Some(owned) = self.take(p)? else { continue };
            self.pending.remove(&p);
            self.owned.insert(p, owned);
            if self.joined {
                self.stats.pause.record(since.elapsed().as_nanos() as u64);
            }
            gained = true;
        }
        if gained {
            self.order = self.owned.keys().copied().collect();
        }
        Ok(())
    }

    /// Takes partition `p` under its partition lock: when its owner lock is free, or by a
    /// takeover when the owner it names is stale. `None` when neither (yet).
    fn take(&self, p: u32) -> Result<Option<Owned>, GroupError> {
        let offsets_name = p.to_string();
        let offsets_path = self.offsets_dir.join(&offsets_name);
        let offsets = self
            .offsets_dir
            .open_file(&offsets_name, Open::ReadWriteCreate)
            .map_err(|e| GroupError::io(&offsets_path, "open", e))?;
        if !lock_partition(&offsets, &offsets_path, TAKE_LOCK_TRIES)? {
            return Ok(None);
        }
        // A takeover may have replaced the offsets file while this member waited for it.
        let current =
            entry_id(&self.offsets_dir, &offsets_name).and_then(|id| Ok(id == Some(file_id(&offsets, &offsets_path)?)));
        if !matches!(current, Ok(true)) {
            unlock(&offsets);
            return current.map(|_| None);
        }
        let taken = self.take_locked(p, &offsets, &offsets_path);
        unlock(&offsets);
        let Some((lock, lock_id, replaced)) = taken? else { return Ok(None) };
        let offsets = match replaced {
            Some(copy) => {
                unlock(&copy); // locked since it was created, so no take could use it half-written
                copy
            }
            None => offsets,
        };
        self.open_partition(p, lock, lock_id, offsets, offsets_path).map(Some)
    }

    /// [`Member::take`] once the partition lock on `offsets` is held: the owner lock, its
    /// identity, and after a takeover the new offsets file (locked until dropped).
    fn take_locked(
        &self,
        p: u32,
        offsets: &File,
        offsets_path: &Path,
    ) -> Result<Option<(File, FileId, Option<File>)>, GroupError> {
        let name = owner_file_name(p);
        let path = self.owners_dir.join(&name);
        let lock =
            self.owners_dir.open_file(&name, Open::ReadWriteCreate).map_err(|e| GroupError::io(&path, "open", e))?;
        let previous = read_owner_at(&lock);
        let generation = previous.as_ref().map_or(0, |o| o.generation) + 1;
        if try_flock(&lock, Flock::Exclusive).map_err(|e| GroupError::io(&path, "lock", e))? {
            let owner = format::encode_owner(&self.id, generation);
            lock.set_len(0)
                .and_then(|()| lock.write_all_at(&owner, 0))
                .map_err(|e| GroupError::io(&path, "write", e))?;
            let id = file_id(&lock, &path)?;
            return Ok(Some((lock, id, None)));
        }
        // Held. Take it over only from a member whose heartbeat stood still for the
        // session timeout (an owner file that names nobody valid is left alone: its holder
        // is a member of an older shoal, or one writing it right now).
        let Some(previous) = previous else { return Ok(None) };
        if !self.stale.contains(&previous.id) {
            return Ok(None);
        }
        let (fresh, fresh_name) = TempName::create(&self.owners_dir, format!(".{p}.lock.{}", self.id))?;
        let (fresh_offsets, fresh_offsets_name) = TempName::create(&self.offsets_dir, format!(".{p}.{}", self.id))?;
        fresh
            .write_all_at(&format::encode_owner(&self.id, generation), 0)
            .map_err(|e| GroupError::io(&fresh_name.path, "write", e))?;
        fresh_name.rename_over(&name)?;
        // From here the stale owner's commits fail their checks. Its offsets file gets no
        // new name: a commit it still has in flight lands in a file nobody reads, and is
        // reported to it as fenced (see `commit_one`); everything it committed before is
        // in the copy.
        let mut bytes = [0u8; format::OFFSETS_FILE_BYTES + 1];
        let len = read_full_at(offsets, &mut bytes).map_err(|e| GroupError::io(offsets_path, "read", e))?;
        let copy_path = &fresh_offsets_name.path;
        fresh_offsets.write_all_at(&bytes[..len], 0).map_err(|e| GroupError::io(copy_path, "write", e))?;
        if self.opts.sync_commits {
            fresh_offsets.sync_data().map_err(|e| GroupError::io(copy_path, "fdatasync", e))?;
        }
        fresh_offsets_name.rename_over(&p.to_string())?;
        if self.opts.sync_commits {
            self.offsets_dir.sync().map_err(|e| GroupError::io(self.offsets_dir.path(), "fsync", e))?;
        }
        tracing::warn!(
            partition = p,
            from = %previous.id,
            to = %self.id,
            generation,
            "partition taken over: its owner's heartbeat stood still for the session timeout"
        );
        let id = file_id(&fresh, &path)?;
        Ok(Some((fresh, id, Some(fresh_offsets))))
    }

    fn open_partition(
        &self,
        p: u32,
        lock: File,
        lock_id: FileId,
        offsets: File,
        offsets_path: PathBuf,
    ) -> Result<Owned, GroupError> {
        let committed = read_committed_at(&offsets, &offsets_path)?;
        let dir = self.topic.partition_dir(p)?;
        std::fs::create_dir_all(&dir).map_err(|e| GroupError::io(&dir, "create directory", e))?;
        let mut reader = Reader::open(&dir)?;
        let start = committed.map_or(0, |c| c.offset);
        match reader.seek(Offset(start)) {
            Ok(()) => {}
            Err(LogError::OffsetGone { first, .. }) => {
                tracing::warn!(partition = p, committed = start, first, "committed offset removed by retention");
                reader.seek(Offset(first))?;
            }
            Err(e) => return Err(e.into()),
        }
        let generation = committed.map_or(0, |c| c.generation);
        Ok(Owned {
            _lock: lock,
            lock_id,
            offsets,
            offsets_path,
            reader,
            delivered: start,
            committed: start,
            generation,
        })
    }

    /// Live member ids, sorted; removes the leases of dead members and notes stale ones
    /// (locked leases whose heartbeat stood still for the session timeout), which are not
    /// counted as live.
    fn scan_members(&mut self, now: Instant) -> Result<Vec<String>, GroupError> {
        let dir = &self.members_dir;
        let entries = std::fs::read_dir(dir.path()).map_err(|e| GroupError::io(dir.path(), "list", e))?;
        let mut live = vec![self.id.clone()];
        let mut locked = Vec::new();
        let mut removed = false;
        for entry in entries {
            let entry = entry.map_err(|e| GroupError::io(dir.path(), "list", e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let (id, joining) = if let Some(id) = name.strip_suffix(".lease") {
                (id, false)
            } else if let Some(id) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".joining")) {
                (id, true)
            } else {
                continue;
            };
            if id == self.id || format::check_member_id(id.as_bytes()).is_err() {
                continue;
            }
            let path = dir.join(name);
            let file = match dir.open_file(name, Open::Read) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(GroupError::io(&path, "open", e)),
            };
            if try_flock(&file, Flock::Exclusive).map_err(|e| GroupError::io(&path, "lock", e))? {
                // Nobody holds it: its member is dead (or a join was cut short).
                let _ = dir.unlink(name);
                if !joining {
                    let _ = dir.unlink(&beat_file_name(id));
                }
                removed = true;
            } else if !joining {
                locked.push(id.to_string());
            }
        }
        if removed {
            self.epoch.bump();
        }
        self.observed.retain(|id, _| locked.contains(id));
        self.stale.clear();
        for id in locked {
            if self.observe(&id, now)? {
                self.stale.push(id);
            } else {
                live.push(id);
            }
        }
        live.sort();
        live.dedup();
        Ok(live)
    }

    /// Reads member `id`'s heartbeat; true when it has stood still for the session timeout.
    fn observe(&mut self, id: &str, now: Instant) -> Result<bool, GroupError> {
        let name = beat_file_name(id);
        let seen = self.observed.entry(id.to_string()).or_insert(Observed { file: None, counter: 0, changed: now });
        if seen.file.is_none() {
            match self.members_dir.open_file(&name, Open::Read) {
                Ok(f) => seen.file = Some(f),
                // A member of an older shoal: the lock alone decides.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(GroupError::io(self.members_dir.join(&name), "open", e)),
            }
            seen.changed = now;
        }
        let Some(file) = seen.file.as_ref() else { return Ok(false) };
        let mut bytes = [0u8; format::BEAT_HEADER_BYTES];
        let n = file.read_at(&mut bytes, 0).map_err(|e| GroupError::io(self.members_dir.join(&name), "read", e))?;
        let counter = decode_beat(&bytes[..n])
            .map_err(|why| GroupError::BadGroupFile { path: self.members_dir.join(&name), why })?;
        if counter != seen.counter {
            seen.counter = counter;
            seen.changed = now;
        }
        Ok(now.saturating_duration_since(seen.changed) >= self.session_timeout())
    }

    fn session_timeout(&self) -> Duration {
        self.opts.session_timeout.max(SESSION_TIMEOUT_MIN)
    }

    fn read_into(&mut self, out: &mut Vec<Delivery>, max: usize) -> Result<(), GroupError> {
        let n = self.order.len();
        if n == 0 || max == 0 {
            return Ok(());
        }
        let quota = (max / n).max(1);
        // Passes over the partitions, `quota` records from each per pass: bounded because
        // each pass that does not add a record ends the loop.
        loop {
            let before = out.len();
            for i in 0..n {
                if out.len() >= max {
                    break;
                }
                let p = self.order[(self.cursor + i) % n];
                let Some(owned) = self.owned.get_mut(&p) else { continue };
                let mut taken = 0;
                while taken < quota && out.len() < max {
                    let Some(record) = owned.reader.next_ref()? else { break };
                    let offset = record.offset().0;
                    if offset < owned.delivered {
                        continue; // below the committed offset (the log was empty at seek)
                    }
                    owned.delivered = offset + 1;
                    out.push(Delivery { partition: p, record });
                    taken += 1;
                }
            }
            if out.len() >= max || out.len() == before {
                break;
            }
        }
        self.cursor = (self.cursor + 1) % n;
        self.stats.delivered += out.len() as u64;
        Ok(())
    }

    /// Waits (by [`GroupOptions::tail_wait`], `spent` of its spin budget already used) until a
    /// record arrives in an owned partition, the epoch moves, or `wait`.
    fn sleep(&mut self, wait: Duration, spent: Duration) -> Result<(), GroupError> {
        let epoch_seen = self.epoch.word().load(Ordering::SeqCst);
        if epoch_seen != self.seen_epoch {
            return Ok(());
        }
        let mut readers: Vec<&mut Reader> = self.owned.values_mut().map(|owned| &mut owned.reader).collect();
        // The epoch word was read before the logs are re-checked: a membership change
        // after this point moves it and ends the sleep.
        wait_any_with(&mut readers, &[(self.epoch.word(), epoch_seen)], self.opts.tail_wait.after(spent), wait)?;
        Ok(())
    }
}

/// Commits partition `p`: checks that its owner file is still the one this member locked,
/// writes the offsets slot, and checks again (else [`GroupError::Fenced`]). No lock is
/// taken, so a member stopped here never holds up a takeover (see the module docs).
fn commit_one(owners: &Dir, p: u32, owned: &mut Owned, sync: bool) -> Result<(), GroupError> {
    if owned.delivered == owned.committed {
        return Ok(()); // nothing new (and nothing read: the file may stay empty)
    }
    let name = owner_file_name(p);
    let fenced = || GroupError::Fenced { partition: p, path: owners.join(&name) };
    if entry_id(owners, &name)? != Some(owned.lock_id) {
        return Err(fenced());
    }
    stop_point("group-commit-checked");
    let generation = owned.generation + 1;
    write_offsets_slot(&owned.offsets, &owned.offsets_path, generation, owned.delivered, sync)?;
    owned.generation = generation;
    // Taken over between the two checks: the new owner may have read the committed offset
    // before this slot was written, so this commit is not promised to count.
    if entry_id(owners, &name)? != Some(owned.lock_id) {
        return Err(fenced());
    }
    owned.committed = owned.delivered;
    Ok(())
}

/// The temporary name of a new group file (created `O_EXCL` and locked by
/// [`TempName::create`]) until it is renamed over its real name; removed if it never is.
struct TempName<'a> {
    dir: &'a Dir,
    name: String,
    path: PathBuf,
    armed: bool,
}

impl<'a> TempName<'a> {
    fn create(dir: &'a Dir, name: String) -> Result<(File, TempName<'a>), GroupError> {
        let path = dir.join(&name);
        // Left over by an attempt of ours that failed half way (ids are never reused).
        let _ = dir.unlink(&name);
        let file = dir.open_file(&name, Open::CreateNew).map_err(|e| GroupError::io(&path, "create", e))?;
        let temp = TempName { dir, name, path, armed: true };
        if !try_flock(&file, Flock::Exclusive).map_err(|e| GroupError::io(&temp.path, "lock", e))? {
            return Err(GroupError::io(&temp.path, "lock", std::io::ErrorKind::WouldBlock.into()));
        }
        Ok((file, temp))
    }

    fn rename_over(mut self, name: &str) -> Result<(), GroupError> {
        self.dir.rename_replace(&self.name, name).map_err(|e| GroupError::io(self.dir.join(name), "rename", e))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempName<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.dir.unlink(&self.name);
        }
    }
}

/// Reads from offset 0 until `buf` is full or the end of the file; the bytes read.
fn read_full_at(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Stops this process (`SIGSTOP`) when `SHOAL_FAIL_POINT` names `step`, so tests can stop
/// a member at an exact point of a commit. The one point is `group-commit-checked`: after
/// a commit's first owner check, before its write.
fn stop_point(step: &str) {
    static POINT: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();
    if POINT.get_or_init(|| std::env::var_os("SHOAL_FAIL_POINT")).as_deref().is_some_and(|v| v == step) {
        // SAFETY: raise(2) with a valid signal number has no memory-safety preconditions.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// Writes the committed-offsets slot of `generation` (at `generation % 2`), first giving a
/// new file its full length.
fn write_offsets_slot(file: &File, path: &Path, generation: u64, offset: u64, sync: bool) -> Result<(), GroupError> {
    let slot = format::encode_offsets_slot(generation, offset);
    let at = (generation % 2) * format::OFFSETS_SLOT_STRIDE as u64;
    let len = file.metadata().map_err(|e| GroupError::io(path, "stat", e))?.len();
    if len < format::OFFSETS_FILE_BYTES as u64 {
        file.set_len(format::OFFSETS_FILE_BYTES as u64).map_err(|e| GroupError::io(path, "extend", e))?;
    }
    file.write_all_at(&slot, at).map_err(|e| GroupError::io(path, "write", e))?;
    if sync {
        file.sync_data().map_err(|e| GroupError::io(path, "fdatasync", e))?;
    }
    Ok(())
}

impl Drop for Member {
    /// Releases the partitions and the lease without committing (see the module docs).
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Every group of the bus with its members, partition owners, committed offsets and lag.
/// Reads only: it never removes a dead member's files, and never creates any.
///
/// # Errors
/// [`GroupError::Io`] (a symlink planted among the group's files included),
/// a damaged offsets file ([`GroupError::BadGroupFile`]), a damaged topic `meta` file
/// ([`GroupError::Bus`]), log errors reading a partition's end ([`GroupError::Log`]).
pub fn describe(bus: &Bus) -> Result<Vec<GroupInfo>, GroupError> {
    let mut out = Vec::new();
    for group in bus.groups()? {
        let gdir = bus.group_dir(&group)?;
        let Ok(entries) = std::fs::read_dir(&gdir) else { continue };
        let mut topics: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| validate_name("topic", n).is_ok())
            .collect();
        topics.sort();
        for topic_name in topics {
            let topic = match bus.topic(&topic_name) {
                Ok(topic) => topic,
                // A group of a topic since removed: nothing to report.
                Err(BusError::NoTopic { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(base) = group_topic_dir(bus, &group, &topic_name, false)? else { continue };
            out.push(describe_one(&base, &group, &topic)?);
        }
    }
    Ok(out)
}

/// Opens the subdirectory `name` of `base` for reading; `None` when it does not exist.
fn read_subdir(base: &Dir, name: &str) -> Result<Option<Dir>, GroupError> {
    match base.subdir(name) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GroupError::io(base.join(name), "open", e)),
    }
}

fn describe_one(base: &Dir, group: &str, topic: &Topic) -> Result<GroupInfo, GroupError> {
    let mut members = Vec::new();
    if let Some(dir) = read_subdir(base, "members")? {
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(id) = name.strip_suffix(".lease") else { continue };
                if format::check_member_id(id.as_bytes()).is_err() {
                    continue;
                }
                let path = dir.join(name);
                let file = match dir.open_file(name, Open::Read) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(GroupError::io(&path, "open", e)),
                };
                if try_flock(&file, Flock::Shared).map_err(|e| GroupError::io(&path, "lock", e))? {
                    continue; // not held: a dead member's lease
                }
                let label = read_small(&dir, name, 4096)?
                    .and_then(|b| decode_lease(&b).ok())
                    .filter(|l| l.id == id)
                    .map_or_else(String::new, |l| l.label);
                members.push(MemberInfo { id: id.to_string(), label, partitions: Vec::new() });
            }
        }
    }
    members.sort_by(|a, b| a.id.cmp(&b.id));
    let owners = read_subdir(base, "owners")?;
    let offsets = read_subdir(base, "offsets")?;
    let mut partitions = Vec::with_capacity(topic.partitions() as usize);
    for p in 0..topic.partitions() {
        let name = owner_file_name(p);
        let owner = match owners.as_ref().map(|d| (d, d.open_file(&name, Open::Read))) {
            Some((dir, Ok(file))) => {
                let path = dir.join(&name);
                if try_flock(&file, Flock::Shared).map_err(|e| GroupError::io(&path, "lock", e))? {
                    None
                } else {
                    Some(read_owner_at(&file).map_or_else(|| "?".to_string(), |o| o.id))
                }
            }
            Some((dir, Err(e))) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(GroupError::io(dir.join(&name), "open", e));
            }
            _ => None,
        };
        if let Some(m) = owner.as_ref().and_then(|o| members.iter_mut().find(|m| &m.id == o)) {
            m.partitions.push(p);
        }
        let committed = match offsets.as_ref() {
            Some(dir) => read_committed(dir, &p.to_string())?.map_or(0, |c| c.offset),
            None => 0,
        };
        let end = end_offset(&topic.partition_dir(p)?)?;
        partitions.push(PartitionInfo { partition: p, owner, committed, end, lag: end.saturating_sub(committed) });
    }
    Ok(GroupInfo { group: group.to_string(), topic: topic.name().to_string(), members, partitions })
}
