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
//! processed: Kafka's commit-on-revoke) or, when it has a [`RebalanceListener`], calls its
//! `on_revoked` with the partition still held and commits only what that commits; then it
//! closes the lock and bumps the epoch. A member that
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
//! record returned; [`Member::commit_offsets`] stores chosen offsets (each the next offset to
//! read, at most the member's [`Member::position`]), for consumers that finish records after
//! they poll them. [`Member::seek`] moves the position (nothing is committed until a
//! commit). The position never passes a partition's end (a seek or a committed offset past
//! it is taken as the end), so neither does a commit. A partition without a committed
//! offset starts where [`GroupOptions::start`] says; one whose committed offset (or, while
//! it is read, whose next record) retention removed goes on from the first record its log
//! still holds, with a warning. A record lent to a [`Member::poll_with`] closure that
//! panicked is delivered again. [`reset_offsets`] moves the offsets of a group with no live member. A graceful [`Member::leave`] commits and hands over with no duplicate;
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
use crate::log::{wait_any_with, LogError, Offset, Reader, Record, RecordRef, TailWait};
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
    /// [`GroupOptions::session_timeout`]). A duration too long for the clock to reach
    /// (`Duration::MAX`) turns the periodic check off: the member then looks at the others
    /// only when one joins or leaves, so it does not notice a member that died.
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
    /// Where a member starts a partition for which the group has no committed offset
    /// (default [`Start::Earliest`]; Kafka's `auto.offset.reset`). A partition with a
    /// committed offset always starts there.
    pub start: Start,
}

/// Where a group starts reading a partition it has no committed offset for
/// ([`GroupOptions::start`]).
///
/// With [`Start::Latest`], the member that first takes such a partition commits the end
/// it found at once (one write of the offsets file), so a partition that moves to another
/// member before anything was read goes on from that end, not from a later one: no record
/// appended after the group started is skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// At the first record the log still holds.
    #[default]
    Earliest,
    /// At the end of the log when the partition is first taken: only records appended
    /// after that are delivered.
    Latest,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions {
            sync_commits: false,
            liveness_check: Duration::from_millis(20),
            label: format!("pid {}", std::process::id()),
            session_timeout: Duration::from_secs(3),
            tail_wait: TailWait::default(),
            start: Start::Earliest,
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

    /// Sets [`GroupOptions::start`].
    #[must_use]
    pub fn start(mut self, start: Start) -> GroupOptions {
        self.start = start;
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

/// Called when partitions come to a member and before they leave it: to load or flush
/// per-partition state, to choose where reading starts, and to commit exactly what was
/// processed before a handover. Give it to [`Member::join_with`]; every method has a default
/// that does nothing.
///
/// How it meets the rebalance protocol (see the module docs): partitions move one by one
/// as their previous owner lets go, so [`on_assigned`](RebalanceListener::on_assigned) may
/// be called several times after one membership change, each time with the partitions just
/// taken (Kafka's cooperative protocol: incremental, never stop-the-world). It runs inside
/// [`Member::join_with`] for the first share, and inside a poll for later ones, before that
/// poll reads a record of them. [`on_revoked`](RebalanceListener::on_revoked) runs inside a
/// poll (or [`Member::leave`]) while the member still holds the partitions' locks, so no
/// other member reads them yet; they are released when it returns. **A member with a
/// listener never commits revoked partitions on its own**: it commits what `on_revoked`
/// commits ([`Revoked::commit`] for every record returned, or [`Revoked::commit_offsets`]),
/// and the next owner starts from there. A member without one commits every record
/// returned (commit-on-revoke). [`on_lost`](RebalanceListener::on_lost) reports partitions
/// taken over after the session timeout: they are already gone, nothing can be committed.
/// Dropping a member without [`Member::leave`] calls nothing (as a crash would not).
///
/// ```
/// use shoal::bus::Bus;
/// use shoal::group::{Assigned, GroupOptions, Member, RebalanceListener, Revoked};
/// use std::time::Duration;
///
/// /// Commits on revoke only what the application finished.
/// struct Flush { done: Vec<(u32, u64)> }
/// impl RebalanceListener for Flush {
///     fn on_assigned(&mut self, assigned: &mut Assigned<'_>) {
///         println!("now reading {:?}", assigned.partitions());
///     }
///     fn on_revoked(&mut self, revoked: &mut Revoked<'_>) {
///         let done: Vec<(u32, u64)> =
///             self.done.iter().copied().filter(|(p, _)| revoked.partitions().contains(p)).collect();
///         if let Err(e) = revoked.commit_offsets(&done) {
///             eprintln!("commit on revoke: {e}");
///         }
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let bus = Bus::open(dir.path())?;
/// bus.topic_or_create("orders", Some(2))?;
/// let listener = Flush { done: Vec::new() };
/// let member = Member::join_with(&bus, "billing", "orders", GroupOptions::default(), listener)?;
/// member.leave()?; // calls on_revoked with both partitions
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait RebalanceListener {
    /// Partitions just taken by this member, positioned at the group's committed offsets
    /// (or by [`GroupOptions::start`]); [`Assigned::seek`] moves them before the first read.
    fn on_assigned(&mut self, assigned: &mut Assigned<'_>) {
        let _ = assigned;
    }

    /// Partitions about to be handed over (a rebalance, or [`Member::leave`]), still held:
    /// commit what was processed through `revoked`. Nothing is committed otherwise.
    fn on_revoked(&mut self, revoked: &mut Revoked<'_>) {
        let _ = revoked;
    }

    /// Partitions another member took over after this one's session timed out (it was
    /// stopped, or did not poll): already gone, their records since the last commit are
    /// delivered again by the new owner.
    fn on_lost(&mut self, partitions: &[u32]) {
        let _ = partitions;
    }
}

/// The listener a member calls (a box so that [`Member`] stays one type).
struct Listener(Box<dyn RebalanceListener + Send>);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RebalanceListener")
    }
}

/// The member's partitions as [`RebalanceListener::on_assigned`] sees them: which were just
/// taken, and where each is positioned.
#[derive(Debug)]
pub struct Assigned<'a> {
    owned: &'a mut BTreeMap<u32, Owned>,
    partitions: &'a [u32],
}

impl Assigned<'_> {
    /// The partitions just taken, ascending.
    pub fn partitions(&self) -> &[u32] {
        self.partitions
    }

    /// The next offset a poll returns from `partition` (any partition held).
    ///
    /// # Errors
    /// [`GroupError::NotAssigned`].
    pub fn position(&self, partition: u32) -> Result<u64, GroupError> {
        position_in(self.owned, partition)
    }

    /// Where the next poll reads `partition` (any partition held): as [`Member::seek`].
    ///
    /// # Errors
    /// As [`Member::seek`].
    pub fn seek(&mut self, partition: u32, offset: u64) -> Result<(), GroupError> {
        seek_in(self.owned, partition, SeekTo::Offset(offset))
    }

    /// As [`Member::seek_to_beginning`].
    ///
    /// # Errors
    /// As [`Member::seek_to_beginning`].
    pub fn seek_to_beginning(&mut self, partitions: &[u32]) -> Result<(), GroupError> {
        seek_all(self.owned, partitions, SeekTo::Beginning)
    }

    /// As [`Member::seek_to_end`].
    ///
    /// # Errors
    /// As [`Member::seek_to_end`].
    pub fn seek_to_end(&mut self, partitions: &[u32]) -> Result<(), GroupError> {
        seek_all(self.owned, partitions, SeekTo::End)
    }

    /// As [`Member::seek_to_time`].
    ///
    /// # Errors
    /// As [`Member::seek_to_time`].
    pub fn seek_to_time(&mut self, partitions: &[u32], ns: u64) -> Result<(), GroupError> {
        seek_all(self.owned, partitions, SeekTo::Time(ns))
    }
}

/// The partitions being revoked, as [`RebalanceListener::on_revoked`] sees them: still
/// held, so commits of them count.
#[derive(Debug)]
pub struct Revoked<'a> {
    owners: &'a Dir,
    owned: &'a mut BTreeMap<u32, Owned>,
    partitions: &'a [u32],
    sync: bool,
    lost: &'a mut Vec<u32>,
}

impl Revoked<'_> {
    /// The partitions about to go, ascending.
    pub fn partitions(&self) -> &[u32] {
        self.partitions
    }

    /// The next offset a poll would have returned from `partition` (one being revoked).
    ///
    /// # Errors
    /// [`GroupError::NotAssigned`] for a partition not being revoked.
    pub fn position(&self, partition: u32) -> Result<u64, GroupError> {
        position_in(self.owned, partition)
    }

    /// Commits every record returned from the revoked partitions (what a member without a
    /// listener does on its own).
    ///
    /// # Errors
    /// As [`Member::commit`].
    pub fn commit(&mut self) -> Result<(), GroupError> {
        let chosen: Vec<(u32, u64)> = self.owned.iter().map(|(&p, o)| (p, o.delivered)).collect();
        commit_chosen(self.owners, self.owned, &chosen, self.sync, self.lost)
    }

    /// Commits the chosen offsets of revoked partitions: as [`Member::commit_offsets`].
    ///
    /// # Errors
    /// As [`Member::commit_offsets`]; a partition that is not being revoked is
    /// [`GroupError::NotAssigned`] (nothing is written then).
    pub fn commit_offsets(&mut self, offsets: &[(u32, u64)]) -> Result<(), GroupError> {
        commit_chosen(self.owners, self.owned, offsets, self.sync, self.lost)
    }
}

/// Where a seek goes.
#[derive(Clone, Copy, Debug)]
enum SeekTo {
    Beginning,
    End,
    Offset(u64),
    /// The first record appended at or after this time (ns since the Unix epoch).
    Time(u64),
}

fn not_assigned(owned: &BTreeMap<u32, Owned>, partition: u32) -> GroupError {
    GroupError::NotAssigned { partition, held: owned.keys().copied().collect() }
}

fn position_in(owned: &BTreeMap<u32, Owned>, partition: u32) -> Result<u64, GroupError> {
    owned.get(&partition).map(|o| o.delivered).ok_or_else(|| not_assigned(owned, partition))
}

/// Positions one held partition: the next poll returns `to` (an offset past the end is
/// taken as the end: the position never passes the partition's next offset).
fn seek_in(owned: &mut BTreeMap<u32, Owned>, partition: u32, to: SeekTo) -> Result<(), GroupError> {
    let Some(o) = owned.get_mut(&partition) else { return Err(not_assigned(owned, partition)) };
    let offset = match to {
        SeekTo::Offset(offset) => {
            // Past the tail, the reader stops at the tail.
            o.reader.seek(Offset(offset))?;
            o.reader.next_offset().0.min(offset)
        }
        SeekTo::Beginning => {
            let first = o.reader.first_offset()?;
            o.reader.seek(first)?;
            first.0
        }
        SeekTo::End => {
            o.reader.seek(Offset(u64::MAX))?;
            o.reader.next_offset().0
        }
        SeekTo::Time(ns) => o.reader.seek_time(ns)?.0,
    };
    o.delivered = offset;
    o.lent = None;
    Ok(())
}

/// Seeks each of `partitions`, after checking that every one is held.
fn seek_all(owned: &mut BTreeMap<u32, Owned>, partitions: &[u32], to: SeekTo) -> Result<(), GroupError> {
    if let Some(&p) = partitions.iter().find(|p| !owned.contains_key(p)) {
        return Err(not_assigned(owned, p));
    }
    partitions.iter().try_for_each(|&p| seek_in(owned, p, to))
}

/// Commits the chosen `(partition, next offset)` pairs of `owned`, after checking every pair
/// (a partition not held, an offset past the position: nothing is written). Partitions
/// found taken over are added to `lost`; the first error is returned after trying all.
fn commit_chosen(
    owners: &Dir,
    owned: &mut BTreeMap<u32, Owned>,
    offsets: &[(u32, u64)],
    sync: bool,
    lost: &mut Vec<u32>,
) -> Result<(), GroupError> {
    for &(p, offset) in offsets {
        let position = position_in(owned, p)?;
        if offset > position {
            return Err(GroupError::CommitAhead { partition: p, offset, position });
        }
    }
    let mut first_err = None;
    for &(p, offset) in offsets {
        let Some(o) = owned.get_mut(&p) else { continue };
        if let Err(e) = commit_at(owners, p, o, offset, sync) {
            if matches!(e, GroupError::Fenced { .. }) {
                lost.push(p);
            }
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
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
    /// The offset of a record lent to a [`Member::poll_with`] closure that did not return
    /// (it panicked, and the caller caught the panic): the record does not count as
    /// returned, and the reader moves back to it before the partition is read again, so it
    /// is delivered again.
    lent: Option<u64>,
    committed: u64,
    /// The generation of the newest slot in `offsets` (0: none yet).
    generation: u64,
    /// `offsets` has its full length (this member wrote a slot to it): commits skip the
    /// length check. Nobody else writes or truncates this inode while it is ours (a
    /// takeover copies it to a new one).
    sized: bool,
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

/// A partition assigned to this member and not yet held.
#[derive(Debug)]
struct Pending {
    /// When the assignment first named this member.
    since: Instant,
    /// The partition's reader, opened as soon as the partition is assigned (a reader needs
    /// no lock), so that the handover itself only positions it.
    reader: Option<Reader>,
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
    /// When the next sweep is due; `None` when [`GroupOptions::liveness_check`] is too long
    /// for the clock to reach (sweeps then come only with epoch changes).
    next_sweep: Option<Instant>,
    members: Vec<String>,
    /// Other members' heartbeats as last seen, by id.
    observed: BTreeMap<String, Observed>,
    /// Members whose lease is locked but whose heartbeat stood still for the session timeout.
    stale: Vec<String>,
    target: Vec<u32>,
    owned: BTreeMap<u32, Owned>,
    /// Assigned partitions not yet held: since when, and a reader opened ahead.
    pending: BTreeMap<u32, Pending>,
    order: Vec<u32>,
    cursor: usize,
    joined: bool,
    stats: MemberStats,
    listener: Option<Listener>,
    /// An error a poll met after it had read records of this poll: the poll returned
    /// those, and the next poll returns this before it reads anything (the reader stays at
    /// the damage, so a poll after that meets it again).
    deferred: Option<GroupError>,
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
        Member::join_listening(bus, group, topic, opts, None)
    }

    /// Joins as [`Member::join`] does, with a listener that is told of partitions assigned
    /// and revoked (and commits on revoke what it chooses; see [`RebalanceListener`]). Its
    /// [`on_assigned`](RebalanceListener::on_assigned) is called for the first share before
    /// this returns.
    ///
    /// # Errors
    /// As [`Member::join`].
    pub fn join_with(
        bus: &Bus,
        group: &str,
        topic: &str,
        opts: GroupOptions,
        listener: impl RebalanceListener + Send + 'static,
    ) -> Result<Member, GroupError> {
        Member::join_listening(bus, group, topic, opts, Some(Listener(Box::new(listener))))
    }

    fn join_listening(
        bus: &Bus,
        group: &str,
        topic: &str,
        opts: GroupOptions,
        listener: Option<Listener>,
    ) -> Result<Member, GroupError> {
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
            next_sweep: Some(Instant::now()),
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
            listener,
            deferred: None,
        };
        member.maintain()?;
        member.joined = true;
        Ok(member)
    }

    /// Makes a member without a listener commit nothing when partitions leave it (as a
    /// listener that does nothing would), for a caller that commits only what it finished:
    /// the pipeline's group source. A member with a listener keeps it.
    pub(crate) fn commit_nothing_on_revoke(&mut self) {
        struct CommitNothing;
        impl RebalanceListener for CommitNothing {}
        if self.listener.is_none() {
            self.listener = Some(Listener(Box::new(CommitNothing)));
        }
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
    /// to `timeout` when there are none (an empty vector then; a timeout too long for the
    /// clock to reach, such as `Duration::MAX`, waits until a record comes). Also where
    /// membership changes take effect: partitions this member loses are committed (up to
    /// every record returned so far) and released, partitions it gains are taken once their
    /// previous owner lets go (or, when that owner stopped polling for the session timeout,
    /// taken over), and partitions another member took over from this one are dropped. Each
    /// call moves this member's heartbeat.
    ///
    /// A partition whose next records were removed by retention before this member read
    /// them (it fell behind a producer whose log keeps little) goes on from the first record
    /// its log still holds, with a warning, as a partition does when it is taken with a
    /// committed offset retention removed: those records are gone for every reader.
    ///
    /// # Errors
    /// Log errors of a partition (corruption), a damaged offsets
    /// file ([`GroupError::BadGroupFile`]), I/O errors on the group's files. A read error
    /// met after this poll has read records ends the poll with those records (`Ok`), and the
    /// next poll returns the error: every intact record before damage in a partition is
    /// delivered (and can be committed) before the member stops with the error naming the
    /// segment file and byte, as a [`Reader`] does.
    pub fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, GroupError> {
        let mut out = Vec::new();
        self.poll_into(&mut out, max, timeout)?;
        Ok(out)
    }

    /// [`Member::poll`] into the caller's vector: clears `out`, then fills it with up to
    /// `max` records, reusing its capacity (no allocation once it has grown to `max`).
    /// Returns how many records it holds now. The records are [`RecordRef`]s, one `Arc`
    /// clone each; [`Member::poll_with`] lends them instead, with no clone at all.
    ///
    /// ```
    /// # use shoal::bus::Bus;
    /// # use shoal::group::{GroupOptions, Member};
    /// # use shoal::log::LogOptions;
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let bus = Bus::open(dir.path())?;
    /// # let mut producer = bus.topic_or_create("orders", Some(2))?.producer(LogOptions::default())?;
    /// # for key in 0..10u64 { producer.send(key, b"order")?; }
    /// let mut member = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
    /// let mut batch = Vec::with_capacity(64);
    /// let mut seen = 0;
    /// while seen < 10 {
    ///     seen += member.poll_into(&mut batch, 64, Duration::from_secs(1))?;
    /// }
    /// member.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Member::poll`] (records read before an error are returned first; `out` is empty
    /// when an error is returned).
    pub fn poll_into(&mut self, out: &mut Vec<Delivery>, max: usize, timeout: Duration) -> Result<usize, GroupError> {
        out.clear();
        self.poll_loop(max, timeout, |member, max| {
            member.read_records(max, |partition, owned| {
                let Some(record) = owned.reader.next_ref()? else { return Ok(Step::End) };
                let offset = record.offset().0;
                if offset < owned.delivered {
                    return Ok(Step::Skipped); // below the position
                }
                owned.delivered = offset + 1;
                out.push(Delivery { partition, record });
                Ok(Step::Taken)
            })
        })
    }

    /// [`Member::poll`] with zero copies: calls `each` with up to `max` records, each
    /// borrowed in place from the mapped log for the length of the call (a
    /// [`Record`], as [`Reader::next`] returns), and returns how many.
    /// Every record passed counts as returned (for [`Member::commit`] and
    /// [`Member::position`]) once `each` returns for it: when `each` panics and the caller
    /// catches the panic, the record it was given is not counted, and the next poll delivers
    /// it again (at least once). This is the fastest way to read a group: no allocation, no
    /// reference count, one commit-word load and one checksum per record, as a bare
    /// [`Reader`].
    ///
    /// ```
    /// # use shoal::bus::Bus;
    /// # use shoal::group::{GroupOptions, Member};
    /// # use shoal::log::LogOptions;
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let bus = Bus::open(dir.path())?;
    /// # let mut producer = bus.topic_or_create("orders", Some(2))?.producer(LogOptions::default())?;
    /// # for key in 0..10u64 { producer.send(key, b"order")?; }
    /// let mut member = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
    /// let mut bytes = 0;
    /// let mut seen = 0;
    /// while seen < 10 {
    ///     seen += member.poll_with(64, Duration::from_secs(1), |_partition, record| {
    ///         bytes += record.payload().len();
    ///     })?;
    /// }
    /// assert_eq!(bytes, 50);
    /// member.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Member::poll`].
    pub fn poll_with<F>(&mut self, max: usize, timeout: Duration, mut each: F) -> Result<usize, GroupError>
    where
        F: FnMut(u32, Record<'_>),
    {
        self.poll_loop(max, timeout, |member, max| {
            member.read_records(max, |partition, owned| {
                let Owned { reader, delivered, lent, .. } = owned;
                let Some(record) = reader.next()? else { return Ok(Step::End) };
                let offset = record.offset().0;
                if offset < *delivered {
                    return Ok(Step::Skipped);
                }
                // Lent until `each` returns: a panic in it leaves the record to be delivered
                // again (see `Owned::lent`), never counted as returned.
                *lent = Some(offset);
                each(partition, record);
                *lent = None;
                *delivered = offset + 1;
                Ok(Step::Taken)
            })
        })
    }

    /// The loop of every poll: membership upkeep, one read, and a wait when nothing came.
    fn poll_loop(
        &mut self,
        max: usize,
        timeout: Duration,
        mut read: impl FnMut(&mut Member, usize) -> Result<usize, GroupError>,
    ) -> Result<usize, GroupError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let start = Instant::now();
        // A timeout too long for the clock to reach (`Duration::MAX`) waits with no deadline.
        let deadline = start.checked_add(timeout);
        // Bounded by the deadline (or, without one, polls until a record comes): every pass
        // sleeps (or returns) when nothing is read.
        loop {
            self.maintain()?;
            let n = read(self, max)?;
            if n > 0 || max == 0 {
                return Ok(n);
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                return Ok(0);
            }
            // Wakes often enough that the heartbeat moves well within the session timeout.
            let nap = self.opts.liveness_check.min(self.session_timeout() / 4);
            let left = deadline.map_or(nap, |deadline| deadline.saturating_duration_since(now));
            self.sleep(left.min(nap), now - start)?;
        }
    }

    /// The next offset a poll returns from `partition`: the offset after the last record
    /// returned, or where the partition was taken or last sought.
    ///
    /// # Errors
    /// [`GroupError::NotAssigned`] when this member does not hold `partition` now.
    pub fn position(&self, partition: u32) -> Result<u64, GroupError> {
        position_in(&self.owned, partition)
    }

    /// Makes the next poll read `partition` from `offset`, backwards (records are delivered
    /// again) or forwards (records are skipped). An offset past the end is taken as the end
    /// (the partition's next offset, as [`reset_offsets`] keeps [`ResetTo::Offset`] within
    /// it): the position never passes the end, so a mistyped offset cannot park the
    /// partition past every future record. Nothing is committed: [`Member::commit`] after a
    /// seek stores the new position.
    ///
    /// ```
    /// # use shoal::bus::Bus;
    /// # use shoal::group::{GroupOptions, Member};
    /// # use shoal::log::LogOptions;
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let bus = Bus::open(dir.path())?;
    /// # let mut producer = bus.topic_or_create("orders", Some(1))?.producer(LogOptions::default())?;
    /// # for key in 0..10u64 { producer.send(key, b"order")?; }
    /// let mut member = Member::join(&bus, "audit", "orders", GroupOptions::default())?;
    /// member.seek(0, 7)?;
    /// let batch = member.poll(64, Duration::from_secs(1))?;
    /// assert_eq!(batch[0].record.offset().0, 7);
    /// assert_eq!(member.position(0)?, 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`GroupError::NotAssigned`] when this member does not hold `partition` now;
    /// [`LogError::OffsetGone`] when retention removed `offset` (the position is unchanged).
    pub fn seek(&mut self, partition: u32, offset: u64) -> Result<(), GroupError> {
        seek_in(&mut self.owned, partition, SeekTo::Offset(offset))
    }

    /// Seeks each of `partitions` to the first record its log still holds.
    ///
    /// # Errors
    /// [`GroupError::NotAssigned`] when one of them is not held (none is moved then); log
    /// errors reading a partition.
    pub fn seek_to_beginning(&mut self, partitions: &[u32]) -> Result<(), GroupError> {
        seek_all(&mut self.owned, partitions, SeekTo::Beginning)
    }

    /// Seeks each of `partitions` to its end: the next poll returns only records appended
    /// after this call.
    ///
    /// # Errors
    /// As [`Member::seek_to_beginning`].
    pub fn seek_to_end(&mut self, partitions: &[u32]) -> Result<(), GroupError> {
        seek_all(&mut self.owned, partitions, SeekTo::End)
    }

    /// Seeks each of `partitions` to its first record appended at or after `ns` (ns since
    /// the Unix epoch; a record's append time, never its event time), or to its end when
    /// there is none, as Kafka's `offsetsForTimes` then `seek`. O(log n) in the partition's
    /// records ([`Reader::seek_time`]).
    ///
    /// # Errors
    /// As [`Member::seek_to_beginning`].
    pub fn seek_to_time(&mut self, partitions: &[u32], ns: u64) -> Result<(), GroupError> {
        seek_all(&mut self.owned, partitions, SeekTo::Time(ns))
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

    /// Commits chosen offsets: for each `(partition, offset)`, `offset` is the next record
    /// the group reads there (as [`Member::commit`] stores it: one past the last record
    /// processed), at most [`Member::position`]. The position never passes the partition's
    /// end ([`Member::seek`] keeps it there), so neither does a commit: an offset past it is
    /// refused ([`GroupError::CommitAhead`]). Only the partitions named are written, so
    /// a consumer that processes records after handing them on (a pipeline, a batch
    /// writer) commits what is done, and a restart delivers the rest again. A lower offset
    /// than the committed one moves the group back.
    ///
    /// ```
    /// # use shoal::bus::Bus;
    /// # use shoal::group::{GroupOptions, Member};
    /// # use shoal::log::LogOptions;
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let bus = Bus::open(dir.path())?;
    /// # let mut producer = bus.topic_or_create("orders", Some(1))?.producer(LogOptions::default())?;
    /// # for key in 0..10u64 { producer.send(key, b"order")?; }
    /// let mut member = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
    /// let batch = member.poll(64, Duration::from_secs(1))?;
    /// assert_eq!(batch.len(), 10);
    /// member.commit_offsets(&[(0, 4)])?; // records 0..4 are done, 4.. are not
    /// drop(member); // a crash: no commit of the rest
    /// let mut next = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
    /// assert_eq!(next.poll(64, Duration::from_secs(1))?[0].record.offset().0, 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Nothing is written when a partition is not held ([`GroupError::NotAssigned`]) or an
    /// offset is past the position ([`GroupError::CommitAhead`]). Otherwise as
    /// [`Member::commit`].
    pub fn commit_offsets(&mut self, offsets: &[(u32, u64)]) -> Result<(), GroupError> {
        let mut lost = Vec::new();
        let result = commit_chosen(&self.owners_dir, &mut self.owned, offsets, self.opts.sync_commits, &mut lost);
        self.drop_lost(&lost);
        result
    }

    /// Leaves gracefully: hands every partition over (committing every record returned, or,
    /// with a [`RebalanceListener`], what its `on_revoked` commits), releases them and
    /// removes the lease, so the other members take over at once with no duplicate.
    ///
    /// # Errors
    /// As [`Member::commit`]; the partitions and lease are released even then.
    pub fn leave(mut self) -> Result<(), GroupError> {
        let going = std::mem::take(&mut self.owned);
        let committed = self.hand_over(going, true);
        self.release_all();
        committed
    }

    /// Commits partitions about to be released: through the listener when there is one,
    /// else every record returned. Partitions found taken over count as fenced; their error
    /// is returned only when `report_fenced`.
    fn hand_over(&mut self, mut going: BTreeMap<u32, Owned>, report_fenced: bool) -> Result<(), GroupError> {
        if going.is_empty() {
            return Ok(());
        }
        let sync = self.opts.sync_commits;
        let mut lost = Vec::new();
        let mut result = Ok(());
        match self.listener.as_mut() {
            Some(listener) => {
                let partitions: Vec<u32> = going.keys().copied().collect();
                let mut revoked = Revoked {
                    owners: &self.owners_dir,
                    owned: &mut going,
                    partitions: &partitions,
                    sync,
                    lost: &mut lost,
                };
                listener.0.on_revoked(&mut revoked);
            }
            None => {
                for (&p, owned) in going.iter_mut() {
                    match commit_one(&self.owners_dir, p, owned, sync) {
                        Ok(()) => {}
                        Err(e @ GroupError::Fenced { .. }) => {
                            lost.push(p);
                            if report_fenced && result.is_ok() {
                                result = Err(e);
                            }
                        }
                        Err(e) => {
                            if result.is_ok() {
                                result = Err(e);
                            }
                        }
                    }
                }
            }
        }
        lost.sort_unstable();
        lost.dedup();
        self.stats.fenced += lost.len() as u64;
        drop(going); // closes the locks
        result
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
        let mut gone = Vec::new();
        for &p in lost {
            if self.owned.remove(&p).is_some() {
                self.stats.fenced += 1;
                gone.push(p);
                tracing::warn!(partition = p, member = %self.id, "partition taken over after the session timeout");
            }
        }
        self.order = self.owned.keys().copied().collect();
        self.cursor = 0;
        if let (Some(listener), false) = (self.listener.as_mut(), gone.is_empty()) {
            listener.0.on_lost(&gone);
        }
    }

    /// Rescans members when due, recomputes the assignment, drops partitions taken over,
    /// releases lost partitions and tries to take gained ones.
    fn maintain(&mut self) -> Result<(), GroupError> {
        self.heartbeat.beat();
        let now = Instant::now();
        let epoch = self.epoch.word().load(Ordering::Acquire);
        let due = epoch != self.seen_epoch || self.next_sweep.is_some_and(|at| now >= at);
        if due {
            self.seen_epoch = epoch;
            self.next_sweep = now.checked_add(self.opts.liveness_check);
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
        // Release what is no longer ours (commit-on-revoke, or the listener's commits; a
        // partition taken over meanwhile has nothing to hand over).
        let revoked: Vec<u32> = self.owned.keys().copied().filter(|p| !self.target.contains(p)).collect();
        if !revoked.is_empty() {
            let going: BTreeMap<u32, Owned> = revoked.iter().filter_map(|p| self.owned.remove_entry(p)).collect();
            let result = self.hand_over(going, false);
            self.order = self.owned.keys().copied().collect();
            self.cursor = 0;
            self.epoch.bump();
            result?;
        }
        // Take what is ours once its previous owner lets go.
        self.pending.retain(|p, _| self.target.contains(p));
        let mut fresh = false;
        for &p in &self.target {
            if !self.owned.contains_key(&p) && !self.pending.contains_key(&p) {
                // A reader that cannot be opened now is opened (and its error reported) at
                // the take.
                let reader = self.topic.partition_dir(p).ok().and_then(|dir| Reader::open(dir).ok());
                self.pending.insert(p, Pending { since: now, reader });
                fresh = true;
            }
        }
        if (due || fresh) && !self.pending.is_empty() {
            self.try_acquire()?;
        }
        Ok(())
    }

    fn try_acquire(&mut self) -> Result<(), GroupError> {
        let mut gained = Vec::new();
        let partitions: Vec<(u32, Instant)> = self.pending.iter().map(|(&p, pending)| (p, pending.since)).collect();
        for (p, since) in partitions {
            let mut reader = self.pending.get_mut(&p).and_then(|pending| pending.reader.take());
            let taken = self.take(p, &mut reader);
            if let (Some(pending), Some(reader)) = (self.pending.get_mut(&p), reader) {
                pending.reader = Some(reader); // not taken: kept for the next try
            }
            let Some(owned) = taken? else { continue };
            self.pending.remove(&p);
            self.owned.insert(p, owned);
            if self.joined {
                self.stats.pause.record(since.elapsed().as_nanos() as u64);
            }
            gained.push(p);
        }
        if !gained.is_empty() {
            self.order = self.owned.keys().copied().collect();
            if let Some(listener) = self.listener.as_mut() {
                listener.0.on_assigned(&mut Assigned { owned: &mut self.owned, partitions: &gained });
            }
        }
        Ok(())
    }

    /// Takes partition `p` under its partition lock: when its owner lock is free, or by a
    /// takeover when the owner it names is stale. `None` when neither (yet).
    fn take(&self, p: u32, reader: &mut Option<Reader>) -> Result<Option<Owned>, GroupError> {
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
        self.open_partition(p, lock, lock_id, offsets, offsets_path, reader.take()).map(Some)
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
        reader: Option<Reader>,
    ) -> Result<Owned, GroupError> {
        let committed = read_committed_at(&offsets, &offsets_path)?;
        let mut reader = match reader {
            Some(mut reader) => {
                // Opened when the partition was assigned: re-read its segment list
                // (retention may have removed some since).
                reader.first_offset()?;
                reader
            }
            None => {
                let dir = self.topic.partition_dir(p)?;
                std::fs::create_dir_all(&dir).map_err(|e| GroupError::io(&dir, "create directory", e))?;
                Reader::open(&dir)?
            }
        };
        let start = match (committed, self.opts.start) {
            (Some(c), _) => c.offset,
            (None, Start::Earliest) => 0,
            (None, Start::Latest) => {
                reader.seek(Offset(u64::MAX))?;
                reader.next_offset().0
            }
        };
        seek_or_first(p, &mut reader, start)?;
        // Where the reader stands: `start`, or the first offset held when retention removed
        // `start`, or the end when `start` is past it (the log was cut back since that
        // commit): a committed offset past the end would skip the records appended there.
        let position = reader.next_offset().0;
        if position < start {
            tracing::warn!(
                partition = p,
                committed = start,
                end = position,
                "committed offset past the end of the partition; reading on from its end"
            );
        }
        let generation = committed.map_or(0, |c| c.generation);
        let mut owned = Owned {
            _lock: lock,
            lock_id,
            offsets,
            offsets_path,
            reader,
            delivered: position,
            lent: None,
            committed: start,
            generation,
            sized: false,
        };
        if committed.is_none() && start > 0 {
            // Start::Latest: fix the group's start now, so that a handover before the first
            // commit does not move it later (see `Start`).
            owned.committed = 0;
            commit_one(&self.owners_dir, p, &mut owned, self.opts.sync_commits)?;
        }
        Ok(owned)
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

    /// What an async wait of this member sleeps on (`aio::member`), as [`Member::sleep`]
    /// does: the group's epoch word with the value this member last acted on, each held
    /// partition with its reader, and how long it may sleep before its heartbeat must move.
    #[cfg(feature = "tokio")]
    pub(crate) fn wait_set(&mut self) -> (&AtomicU32, u32, Vec<(u32, &mut Reader)>, Duration) {
        let nap = self.opts.liveness_check.min(self.session_timeout() / 4);
        let readers = self.owned.iter_mut().map(|(&p, owned)| (p, &mut owned.reader)).collect();
        (self.epoch.word(), self.seen_epoch, readers, nap)
    }

    /// Reads up to `max` records round-robin over the held partitions, `take` handing out
    /// one record of a held partition's reader (and advancing its position); the records
    /// handed out. A partition whose reader fell behind retention (the records it was to read
    /// next were removed) goes on from the first record its log still holds, as a partition
    /// whose committed offset was removed does when it is taken.
    fn read_records(
        &mut self,
        max: usize,
        mut take: impl FnMut(u32, &mut Owned) -> Result<Step, LogError>,
    ) -> Result<usize, GroupError> {
        let n = self.order.len();
        if n == 0 || max == 0 {
            return Ok(0);
        }
        let quota = (max / n).max(1);
        let mut total = 0;
        let mut failed = None;
        // Passes over the partitions, `quota` records from each per pass: bounded because
        // each pass that does not add a record ends the loop.
        'passes: loop {
            let before = total;
            for i in 0..n {
                if total >= max {
                    break;
                }
                let p = self.order[(self.cursor + i) % n];
                let Some(owned) = self.owned.get_mut(&p) else { continue };
                if let Some(at) = owned.lent.take() {
                    // A closure of `poll_with` panicked on the record at `at`: read it again.
                    if let Err(e) = seek_or_first(p, &mut owned.reader, at) {
                        failed = Some(e);
                        break 'passes;
                    }
                }
                let mut taken = 0;
                // Bounded: every step takes a record, skips one (the reader moves on), ends,
                // or moves the reader forward past records retention removed.
                while taken < quota && total < max {
                    match take(p, owned) {
                        Ok(Step::Taken) => {
                            taken += 1;
                            total += 1;
                        }
                        Ok(Step::Skipped) => {}
                        Ok(Step::End) => break,
                        Err(LogError::OffsetGone { offset, first, .. }) if first > offset => {
                            tracing::warn!(
                                partition = p,
                                offset,
                                first,
                                "records removed by retention before this member read them; going on from the \
                                 first record the partition still holds"
                            );
                            if let Err(e) = seek_or_first(p, &mut owned.reader, first) {
                                failed = Some(e);
                                break 'passes;
                            }
                            owned.delivered = owned.delivered.max(first);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break 'passes;
                        }
                    }
                }
            }
            if total >= max || total == before {
                break;
            }
        }
        self.cursor = (self.cursor + 1) % n;
        self.stats.delivered += total as u64;
        // The records before the error (every intact record before damage, as a reader
        // returns them) go out first, so they can be processed and committed; the error
        // comes with the next poll.
        match failed {
            Some(e) if total == 0 => Err(e.into()),
            Some(e) => {
                self.deferred = Some(e.into());
                Ok(total)
            }
            None => Ok(total),
        }
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
        match wait_any_with(&mut readers, &[(self.epoch.word(), epoch_seen)], self.opts.tail_wait.after(spent), wait) {
            // Retention removed what a reader was to read next: the next read moves it on.
            Ok(_) | Err(LogError::OffsetGone { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Positions a held partition's reader at `offset`, or, when retention removed it, at the
/// first offset its log still holds (with a warning: those records are gone for good).
fn seek_or_first(p: u32, reader: &mut Reader, offset: u64) -> Result<(), LogError> {
    let mut to = offset;
    // Bounded: each retry is at a higher first offset than the last (retention removing more
    // meanwhile), and gives up after a few.
    for _ in 0..8 {
        match reader.seek(Offset(to)) {
            Ok(()) => return Ok(()),
            Err(LogError::OffsetGone { first, .. }) if first > to => {
                tracing::warn!(
                    partition = p,
                    offset,
                    first,
                    "offset removed by retention; reading on from the first record held"
                );
                to = first;
            }
            Err(e) => return Err(e),
        }
    }
    reader.seek(Offset(to))
}

/// What one step of a read did.
enum Step {
    /// Handed a record out.
    Taken,
    /// Passed over a record below the position.
    Skipped,
    /// The partition has nothing more now.
    End,
}

/// Commits partition `p` up to every record returned (see [`commit_at`]).
fn commit_one(owners: &Dir, p: u32, owned: &mut Owned, sync: bool) -> Result<(), GroupError> {
    let offset = owned.delivered;
    commit_at(owners, p, owned, offset, sync)
}

/// Commits `offset` (the next to read) for partition `p`: checks that its owner file is
/// still the one this member locked, writes the offsets slot, and checks again (else
/// [`GroupError::Fenced`]). No lock is taken, so a member stopped here never holds up a
/// takeover (see the module docs).
fn commit_at(owners: &Dir, p: u32, owned: &mut Owned, offset: u64, sync: bool) -> Result<(), GroupError> {
    if offset == owned.committed && owned.generation > 0 {
        return Ok(()); // nothing new
    }
    let name = owner_file_name(p);
    let fenced = || GroupError::Fenced { partition: p, path: owners.join(&name) };
    if entry_id(owners, &name)? != Some(owned.lock_id) {
        return Err(fenced());
    }
    stop_point("group-commit-checked");
    let generation = owned.generation + 1;
    write_offsets_slot(&owned.offsets, &owned.offsets_path, generation, offset, sync, owned.sized)?;
    owned.generation = generation;
    owned.sized = true;
    // Taken over between the two checks: the new owner may have read the committed offset
    // before this slot was written, so this commit is not promised to count.
    if entry_id(owners, &name)? != Some(owned.lock_id) {
        return Err(fenced());
    }
    owned.committed = offset;
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

/// Writes the committed-offsets slot of `generation` (at `generation % 2`). A file that
/// does not have its full length yet (unless the caller knows it has it: `sized`) is an
/// empty one (nothing committed; a shorter one fails to decode before any commit), and gets
/// its length and its slot in one write: a crash never leaves a full-length file without a
/// slot, so [`decode_offsets`] can refuse one as damage.
fn write_offsets_slot(
    file: &File,
    path: &Path,
    generation: u64,
    offset: u64,
    sync: bool,
    sized: bool,
) -> Result<(), GroupError> {
    let slot = format::encode_offsets_slot(generation, offset);
    let at = (generation % 2) * format::OFFSETS_SLOT_STRIDE as u64;
    let written = if !sized
        && file.metadata().map_err(|e| GroupError::io(path, "stat", e))?.len() < format::OFFSETS_FILE_BYTES as u64
    {
        let mut whole = [0u8; format::OFFSETS_FILE_BYTES];
        whole[at as usize..at as usize + slot.len()].copy_from_slice(&slot);
        file.write_all_at(&whole, 0)
    } else {
        file.write_all_at(&slot, at)
    };
    written.map_err(|e| GroupError::io(path, "write", e))?;
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
        bus.group_dir(&group)?; // an invalid name is an error, as before
                                // A group directory that cannot be listed is left out, as one with no topics.
        let Ok(topics) = group_topics(bus, &group) else { continue };
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

/// Where [`reset_offsets`] moves a group's committed offsets. Non-exhaustive: more targets
/// (a time) may come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetTo {
    /// The first offset each partition's log still holds.
    Earliest,
    /// The end of each partition: the group skips everything appended so far.
    Latest,
    /// This offset in every partition, kept within the partition's first offset and its
    /// end (Kafka's `--to-offset` does the same).
    Offset(u64),
    /// In every partition, the first record appended at or after this time (ns since the
    /// Unix epoch), or the end when there is none (Kafka's `--to-datetime`).
    Time(u64),
}

/// One partition of a [`reset_offsets`] plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetReset {
    /// The partition.
    pub partition: u32,
    /// Its committed offset before the reset (`None`: nothing committed).
    pub committed: Option<u64>,
    /// The first offset its log holds.
    pub first: u64,
    /// Its end (the next offset to be appended).
    pub end: u64,
    /// The committed offset after the reset.
    pub new: u64,
}

/// The topics a group has state for (it joined them once), sorted.
///
/// # Errors
/// [`GroupError::Bus`] for an invalid group name; I/O errors listing its directory.
pub fn group_topics(bus: &Bus, group: &str) -> Result<Vec<String>, GroupError> {
    let dir = bus.group_dir(group)?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(GroupError::io(&dir, "list", e)),
    };
    let mut topics: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| validate_name("topic", n).is_ok())
        .collect();
    topics.sort();
    Ok(topics)
}

/// Moves the committed offsets of `group` on `topic` to `to` (Kafka's
/// `kafka-consumer-groups --reset-offsets`), or with `execute` false only says where they
/// would go (a dry run: nothing is written). Returns the plan, one row per partition.
///
/// Refused while the group has live members on the topic: a member would overwrite the
/// reset with its next commit. While it writes, the reset holds every partition's owner
/// lock, so a member that joins meanwhile takes its partitions only afterwards, and
/// starts from the new offsets. Each offsets file is written as a commit is (a new slot,
/// the previous one kept) and synced.
///
/// ```
/// use shoal::bus::Bus;
/// use shoal::group::{reset_offsets, GroupOptions, Member, ResetTo};
/// use shoal::log::LogOptions;
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let bus = Bus::open(dir.path())?;
/// let mut producer = bus.topic_or_create("orders", Some(1))?.producer(LogOptions::default())?;
/// for key in 0..10u64 {
///     producer.send(key, b"order")?;
/// }
/// let mut member = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
/// while member.poll(64, Duration::from_secs(1))?.len() < 10 {}
/// member.leave()?; // commits offset 10
/// let plan = reset_offsets(&bus, "billing", "orders", ResetTo::Offset(3), true)?;
/// assert_eq!((plan[0].committed, plan[0].new), (Some(10), 3));
/// let mut member = Member::join(&bus, "billing", "orders", GroupOptions::default())?;
/// assert_eq!(member.position(0)?, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`GroupError::GroupActive`] naming the live members; [`GroupError::NoGroup`] when the
/// group never joined the topic; a missing topic ([`GroupError::Bus`]); damaged offsets
/// files ([`GroupError::BadGroupFile`]); log and I/O errors.
pub fn reset_offsets(
    bus: &Bus,
    group: &str,
    topic: &str,
    to: ResetTo,
    execute: bool,
) -> Result<Vec<OffsetReset>, GroupError> {
    let topic_handle = bus.topic(topic)?;
    let no_group = || GroupError::NoGroup { group: group.to_string(), topic: topic.to_string() };
    let Some(base) = group_topic_dir(bus, group, topic, false)? else { return Err(no_group()) };
    let active =
        |members: Vec<String>| GroupError::GroupActive { group: group.to_string(), topic: topic.to_string(), members };
    let live = match read_subdir(&base, "members")? {
        Some(dir) => live_member_ids(&dir)?,
        None => Vec::new(),
    };
    if !live.is_empty() {
        return Err(active(live));
    }
    let sub = |name: &str| -> Result<Option<Dir>, GroupError> {
        if execute {
            base.create_subdir(name).map(Some).map_err(|e| GroupError::io(base.join(name), "create directory", e))
        } else {
            read_subdir(&base, name)
        }
    };
    let (owners, offsets) = (sub("owners")?, sub("offsets")?);
    // With `execute`, every owner lock is held until every offsets file is written.
    let mut held = Vec::new();
    let mut plan = Vec::with_capacity(topic_handle.partitions() as usize);
    for p in 0..topic_handle.partitions() {
        if let (true, Some(owners)) = (execute, owners.as_ref()) {
            let name = owner_file_name(p);
            let path = owners.join(&name);
            let lock = owners.open_file(&name, Open::ReadWriteCreate).map_err(|e| GroupError::io(&path, "open", e))?;
            if !try_flock(&lock, Flock::Exclusive).map_err(|e| GroupError::io(&path, "lock", e))? {
                let holder = read_owner_at(&lock).map_or_else(|| format!("the owner of partition {p}"), |o| o.id);
                return Err(active(vec![holder]));
            }
            held.push(lock);
        }
        let committed = match offsets.as_ref() {
            Some(dir) => read_committed(dir, &p.to_string())?,
            None => None,
        };
        let dir = topic_handle.partition_dir(p)?;
        let (first, end, at_time) = if dir.is_dir() {
            let mut reader = Reader::open(&dir)?;
            let first = reader.first_offset()?.0;
            let at_time = match to {
                ResetTo::Time(ns) => Some(reader.offset_for_time(ns)?.0),
                _ => None,
            };
            reader.seek(Offset(u64::MAX))?;
            (first, reader.next_offset().0, at_time)
        } else {
            (0, 0, None)
        };
        let new = match to {
            ResetTo::Earliest => first,
            ResetTo::Latest => end,
            ResetTo::Offset(o) => o.clamp(first, end.max(first)),
            ResetTo::Time(_) => at_time.unwrap_or(end).clamp(first, end.max(first)),
        };
        plan.push(OffsetReset { partition: p, committed: committed.map(|c| c.offset), first, end, new });
    }
    if let (true, Some(dir)) = (execute, offsets.as_ref()) {
        for row in &plan {
            let name = row.partition.to_string();
            let path = dir.join(&name);
            let file = dir.open_file(&name, Open::ReadWriteCreate).map_err(|e| GroupError::io(&path, "open", e))?;
            if !lock_partition(&file, &path, TAKE_LOCK_TRIES)? {
                return Err(active(vec![format!("a member taking partition {}", row.partition)]));
            }
            let generation = read_committed_at(&file, &path)?.map_or(0, |c| c.generation) + 1;
            let written = write_offsets_slot(&file, &path, generation, row.new, true, false);
            unlock(&file);
            written?;
        }
        dir.sync().map_err(|e| GroupError::io(dir.path(), "fsync", e))?;
    }
    drop(held);
    Ok(plan)
}

/// Ids of the members whose lease is locked (live, or stopped but not yet gone), sorted.
fn live_member_ids(dir: &Dir) -> Result<Vec<String>, GroupError> {
    let mut ids = Vec::new();
    let entries = std::fs::read_dir(dir.path()).map_err(|e| GroupError::io(dir.path(), "list", e))?;
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
        if !try_flock(&file, Flock::Shared).map_err(|e| GroupError::io(&path, "lock", e))? {
            ids.push(id.to_string());
        }
    }
    ids.sort();
    Ok(ids)
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
        // Sorted by id, live leases only (a dead member's lease is not held).
        for id in live_member_ids(&dir)? {
            let name = format!("{id}.lease");
            let label = read_small(&dir, &name, 4096)?
                .and_then(|b| decode_lease(&b).ok())
                .filter(|l| l.id == id)
                .map_or_else(String::new, |l| l.label);
            members.push(MemberInfo { id, label, partitions: Vec::new() });
        }
    }
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
