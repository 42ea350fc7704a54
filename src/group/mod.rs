//! Consumer groups: members (threads or processes on one box) share the partitions of a
//! topic, each partition read by exactly one live member at a time, with committed offsets
//! that survive crashes. No daemon: the state is a directory of small files and OS locks.
//!
//! # Layout (format version 1; the byte formats are in [`format`](mod@format))
//! ```text
//! <bus>/groups/<group>/<topic>/epoch            4 KiB page; u32 futex word at byte 0
//! <bus>/groups/<group>/<topic>/members/<id>.lease   one per live member, flock'ed by it
//! <bus>/groups/<group>/<topic>/owners/<p>.lock      flock'ed by partition p's owner; names it
//! <bus>/groups/<group>/<topic>/offsets/<p>          partition p's committed offset (two slots)
//! ```
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
//! Joins, graceful leaves and partition releases bump the `epoch` word and `FUTEX_WAKE` it.
//! Every member loads that word on each poll (an atomic load, no syscall) and rescans the
//! members when it moved; idle members sleep on it. This replaces the inotify watch first
//! planned: inotify costs a `read` per check and cannot be waited on together with the
//! partitions' futex words, while the epoch word is free to check and joins the same
//! `futex_waitv` (see [`crate::log::wait_any`]). Deaths bump nothing; the periodic sweep finds
//! them.
//!
//! # Assignment and handover
//! Every member computes the assignment on its own from the sorted live ids and the
//! partition count ([`assign::assign`], bounded-load rendezvous hashing: balanced to floor
//! or ceil of P/n, few moves on a change). Members may briefly disagree (one saw a join the
//! other has not yet); that is safe because exclusivity comes from the owner lock, not from
//! the assignment: a member reads a partition only while it holds `owners/<p>.lock`.
//!
//! When a partition leaves a member's assignment, the member, at its next [`Member::poll`],
//! commits it up to everything it has returned (the records of earlier polls count as
//! processed: Kafka's commit-on-revoke), closes the lock and bumps the epoch. A member that
//! gains a partition tries `LOCK_EX|LOCK_NB` each time the epoch moves or the sweep runs,
//! and once it holds the lock, reads the committed offset and reads on from there: replay
//! from the log, then live, with no gap and no duplicate. A partition whose owner did not
//! change never pauses. A member busy between polls holds its revoked partitions until its
//! next poll: the pause a moving partition sees is bounded by the old owner's poll interval
//! (plus the liveness interval after a crash). [`MemberStats::pause`] records, for each
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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

use crate::bus::{validate_name, Bus, Topic};
use crate::log::{wait_any, LogError, Offset, Reader, RecordRef};
use crate::sys::file::{try_flock, Flock};
use crate::sys::futex;
use crate::sys::histogram::LatencyHistogram;

pub use error::GroupError;
pub use format::{decode_lease, decode_offsets, decode_owner, CommittedSlot, FormatError, LeaseInfo};

/// How a member behaves. Build it from the default with its setters:
/// `GroupOptions::default().sync_commits(true).label("billing worker")`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GroupOptions {
    /// `fdatasync` the offsets file on each commit (default false: a commit survives a
    /// process crash but not a power loss).
    pub sync_commits: bool,
    /// How often the member checks the other members' leases (default 20 ms); also the
    /// longest single sleep in [`Member::poll`].
    pub liveness_check: Duration,
    /// Shown by [`describe`], e.g. `"pid 123"` (the default). At most 1024 bytes are kept.
    pub label: String,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions {
            sync_commits: false,
            liveness_check: Duration::from_millis(20),
            label: format!("pid {}", std::process::id()),
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

/// A partition this member holds.
#[derive(Debug)]
struct Owned {
    /// Holds the partition's owner lock while open.
    _lock: File,
    offsets: File,
    offsets_path: PathBuf,
    reader: Reader,
    /// The offset after the last record returned (records below it are skipped).
    delivered: u64,
    committed: u64,
    generation: u64,
}

/// The group's shared `epoch` page.
#[derive(Debug)]
struct Epoch {
    map: MmapRaw,
}

impl Epoch {
    fn open(path: &Path) -> Result<Epoch, GroupError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| GroupError::io(path, "open", e))?;
        let len = file.metadata().map_err(|e| GroupError::io(path, "stat", e))?.len();
        if len < 4096 {
            file.set_len(4096).map_err(|e| GroupError::io(path, "extend", e))?;
        }
        let map = memmap2::MmapOptions::new().len(4096).map_raw(&file).map_err(|e| GroupError::io(path, "mmap", e))?;
        Ok(Epoch { map })
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

/// A member of a consumer group: owns some partitions of the topic and reads them.
#[derive(Debug)]
pub struct Member {
    id: String,
    opts: GroupOptions,
    topic: Topic,
    base: PathBuf,
    lease: Option<File>,
    lease_path: PathBuf,
    epoch: Epoch,
    seen_epoch: u32,
    next_sweep: Instant,
    members: Vec<String>,
    target: Vec<u32>,
    owned: BTreeMap<u32, Owned>,
    /// Assigned partitions not yet held: since when, and the lock file once opened.
    pending: BTreeMap<u32, (Instant, Option<File>)>,
    order: Vec<u32>,
    cursor: usize,
    joined: bool,
    stats: MemberStats,
}

static ID_COUNTER: AtomicU64 = AtomicU64::new(0);
/// Tries of [`Member::join`] to publish its lease while other members sweep.
const JOIN_ATTEMPTS: u32 = 16;

/// Reads at most `max` bytes of a file; `None` when it does not exist.
fn read_small(path: &Path, max: u64) -> Result<Option<Vec<u8>>, GroupError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(f) => f.take(max).read_to_end(&mut bytes).map_err(|e| GroupError::io(path, "read", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(GroupError::io(path, "open", e)),
    };
    Ok(Some(bytes))
}

fn read_committed(path: &Path) -> Result<Option<CommittedSlot>, GroupError> {
    let Some(bytes) = read_small(path, format::OFFSETS_FILE_BYTES as u64 + 1)? else { return Ok(None) };
    decode_offsets(&bytes).map_err(|why| GroupError::bad_offsets(path, why))
}

fn lease_file_name(id: &str) -> String {
    format!("{id}.lease")
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
    /// ([`BusError::InvalidName`](crate::bus::BusError::InvalidName)) or a missing topic
    /// ([`BusError::NoTopic`](crate::bus::BusError::NoTopic)), [`GroupError::Io`], and a
    /// damaged offsets file of a partition it gains ([`GroupError::BadGroupFile`]).
    pub fn join(bus: &Bus, group: &str, topic: &str, opts: GroupOptions) -> Result<Member, GroupError> {
        let gdir = bus.group_dir(group)?;
        validate_name("topic", topic)?;
        let topic_handle = bus.topic(topic)?;
        let base = gdir.join(topic);
        for sub in ["members", "owners", "offsets"] {
            let dir = base.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| GroupError::io(&dir, "create directory", e))?;
        }
        let epoch = Epoch::open(&base.join("epoch"))?;
        let label = format::clamp_label(&opts.label).to_string();
        let members_dir = base.join("members");
        // A sweeping member that opens the temporary file before we lock it takes it for a
        // join cut short and removes it: our lock or rename then fails, and we start over.
        let mut attempt = 0;
        let (id, lease, lease_path) = loop {
            attempt += 1;
            let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
            let id = format!("{:020}-{}-{n}", crate::log::now_ns(), std::process::id());
            let temp = members_dir.join(format!(".{id}.joining"));
            let mut lease = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(|e| GroupError::io(&temp, "create", e))?;
            if !try_flock(&lease, Flock::Exclusive).map_err(|e| GroupError::io(&temp, "lock", e))? {
                let _ = std::fs::remove_file(&temp);
                if attempt < JOIN_ATTEMPTS {
                    continue;
                }
                return Err(GroupError::io(&temp, "lock", std::io::Error::from(std::io::ErrorKind::WouldBlock)));
            }
            lease.write_all(&format::encode_lease(&id, &label)).map_err(|e| GroupError::io(&temp, "write", e))?;
            let lease_path = members_dir.join(lease_file_name(&id));
            match std::fs::rename(&temp, &lease_path) {
                Ok(()) => break (id, lease, lease_path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < JOIN_ATTEMPTS => continue,
                Err(e) => return Err(GroupError::io(&lease_path, "rename", e)),
            }
        };
        epoch.bump();
        let mut member = Member {
            id,
            opts,
            topic: topic_handle,
            base,
            lease: Some(lease),
            lease_path,
            seen_epoch: epoch.word().load(Ordering::Acquire).wrapping_sub(1),
            epoch,
            next_sweep: Instant::now(),
            members: Vec::new(),
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
    /// owner lets go.
    ///
    /// # Errors
    /// Log errors of a partition (corruption, [`LogError::OffsetGone`]), a damaged offsets
    /// file ([`GroupError::BadGroupFile`]), I/O errors on the group's files.
    pub fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, GroupError> {
        let deadline = Instant::now() + timeout;
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
            self.sleep((deadline - now).min(self.opts.liveness_check))?;
        }
    }

    /// Commits every record returned by [`Member::poll`] so far, for every partition held.
    ///
    /// # Errors
    /// I/O errors writing (or syncing) an offsets file.
    pub fn commit(&mut self) -> Result<(), GroupError> {
        let sync = self.opts.sync_commits;
        for owned in self.owned.values_mut() {
            commit_one(owned, sync)?;
        }
        Ok(())
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
            let _ = std::fs::remove_file(&self.lease_path);
            drop(lease);
            self.epoch.bump();
        }
    }

    /// Rescans members when due, recomputes the assignment, releases lost partitions and
    /// tries to take gained ones.
    fn maintain(&mut self) -> Result<(), GroupError> {
        let now = Instant::now();
        let epoch = self.epoch.word().load(Ordering::Acquire);
        let due = epoch != self.seen_epoch || now >= self.next_sweep;
        if due {
            self.seen_epoch = epoch;
            self.next_sweep = now + self.opts.liveness_check;
            let live = self.scan_members()?;
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
        for p in revoked {
            if let Some(mut owned) = self.owned.remove(&p) {
                let committed = commit_one(&mut owned, self.opts.sync_commits);
                drop(owned); // closes the lock
                released = true;
                committed?;
            }
        }
        if released {
            self.order = self.owned.keys().copied().collect();
            self.epoch.bump();
        }
        // Take what is ours once its previous owner lets go.
        self.pending.retain(|p, _| self.target.contains(p));
        let mut fresh = false;
        for &p in &self.target {
            if !self.owned.contains_key(&p) && !self.pending.contains_key(&p) {
                self.pending.insert(p, (now, None));
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
        let partitions: Vec<u32> = self.pending.keys().copied().collect();
        for p in partitions {
            let Some((since, file)) = self.pending.get_mut(&p) else { continue };
            let since = *since;
            let path = self.base.join("owners").join(format!("{p}.lock"));
            if file.is_none() {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| GroupError::io(&path, "open", e))?;
                *file = Some(f);
            }
            let Some(lock) = file.as_ref() else { continue };
            if !try_flock(lock, Flock::Exclusive).map_err(|e| GroupError::io(&path, "lock", e))? {
                continue;
            }
            let Some((_, Some(lock))) = self.pending.remove(&p) else { continue };
            let owner = format::encode_owner(&self.id);
            lock.set_len(0)
                .and_then(|()| lock.write_all_at(&owner, 0))
                .map_err(|e| GroupError::io(&path, "write", e))?;
            let owned = self.open_partition(p, lock)?;
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

    fn open_partition(&self, p: u32, lock: File) -> Result<Owned, GroupError> {
        let offsets_path = self.base.join("offsets").join(p.to_string());
        let committed = read_committed(&offsets_path)?;
        let offsets = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&offsets_path)
            .map_err(|e| GroupError::io(&offsets_path, "open", e))?;
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
        Ok(Owned {
            _lock: lock,
            offsets,
            offsets_path,
            reader,
            delivered: start,
            committed: start,
            generation: committed.map_or(0, |c| c.generation),
        })
    }

    /// Live member ids, sorted; removes the leases of dead members.
    fn scan_members(&self) -> Result<Vec<String>, GroupError> {
        let dir = self.base.join("members");
        let entries = std::fs::read_dir(&dir).map_err(|e| GroupError::io(&dir, "list", e))?;
        let mut live = vec![self.id.clone()];
        let mut removed = false;
        for entry in entries {
            let entry = entry.map_err(|e| GroupError::io(&dir, "list", e))?;
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
            let path = entry.path();
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(GroupError::io(&path, "open", e)),
            };
            if try_flock(&file, Flock::Exclusive).map_err(|e| GroupError::io(&path, "lock", e))? {
                // Nobody holds it: its member is dead (or a join was cut short).
                let _ = std::fs::remove_file(&path);
                removed = true;
            } else if !joining {
                live.push(id.to_string());
            }
        }
        if removed {
            self.epoch.bump();
        }
        live.sort();
        live.dedup();
        Ok(live)
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

    /// Sleeps until a record arrives in an owned partition, the epoch moves, or `wait`.
    fn sleep(&mut self, wait: Duration) -> Result<(), GroupError> {
        let epoch_seen = self.epoch.word().load(Ordering::SeqCst);
        if epoch_seen != self.seen_epoch {
            return Ok(());
        }
        let mut readers: Vec<&mut Reader> = self.owned.values_mut().map(|owned| &mut owned.reader).collect();
        // The epoch word was read before the logs are re-checked: a membership change
        // after this point moves it and ends the sleep.
        wait_any(&mut readers, &[(self.epoch.word(), epoch_seen)], wait)?;
        Ok(())
    }
}

fn commit_one(owned: &mut Owned, sync: bool) -> Result<(), GroupError> {
    if owned.delivered == owned.committed && owned.generation > 0 {
        return Ok(());
    }
    if owned.delivered == owned.committed && owned.committed == 0 {
        return Ok(()); // nothing read, nothing ever committed: the file may stay empty
    }
    let path = &owned.offsets_path;
    let generation = owned.generation + 1;
    let slot = format::encode_offsets_slot(generation, owned.delivered);
    let at = (generation % 2) * format::OFFSETS_SLOT_STRIDE as u64;
    let len = owned.offsets.metadata().map_err(|e| GroupError::io(path, "stat", e))?.len();
    if len < format::OFFSETS_FILE_BYTES as u64 {
        owned.offsets.set_len(format::OFFSETS_FILE_BYTES as u64).map_err(|e| GroupError::io(path, "extend", e))?;
    }
    owned.offsets.write_all_at(&slot, at).map_err(|e| GroupError::io(path, "write", e))?;
    if sync {
        owned.offsets.sync_data().map_err(|e| GroupError::io(path, "fdatasync", e))?;
    }
    owned.generation = generation;
    owned.committed = owned.delivered;
    Ok(())
}

impl Drop for Member {
    /// Releases the partitions and the lease without committing (see the module docs).
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Every group of the bus with its members, partition owners, committed offsets and lag.
/// Reads only: it never removes a dead member's files.
///
/// # Errors
/// [`GroupError::Io`], a damaged offsets file ([`GroupError::BadGroupFile`]), log errors
/// reading a partition's end ([`GroupError::Log`]).
pub fn describe(bus: &Bus) -> Result<Vec<GroupInfo>, GroupError> {
    let mut out = Vec::new();
    for group in bus.groups()? {
        let gdir = bus.group_dir(&group)?;
        let Ok(entries) = std::fs::read_dir(&gdir) else { continue };
        let mut topics: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| validate_name("topic", n).is_ok())
            .collect();
        topics.sort();
        for topic_name in topics {
            let Ok(topic) = bus.topic(&topic_name) else { continue };
            out.push(describe_one(&gdir.join(&topic_name), &group, &topic)?);
        }
    }
    Ok(out)
}

fn describe_one(base: &Path, group: &str, topic: &Topic) -> Result<GroupInfo, GroupError> {
    let mut members = Vec::new();
    let dir = base.join("members");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lease")) else { continue };
            if format::check_member_id(id.as_bytes()).is_err() {
                continue;
            }
            let path = entry.path();
            let Ok(file) = File::open(&path) else { continue };
            if try_flock(&file, Flock::Shared).map_err(|e| GroupError::io(&path, "lock", e))? {
                continue; // not held: a dead member's lease
            }
            let label = read_small(&path, 4096)?
                .and_then(|b| decode_lease(&b).ok())
                .filter(|l| l.id == id)
                .map_or_else(String::new, |l| l.label);
            members.push(MemberInfo { id: id.to_string(), label, partitions: Vec::new() });
        }
    }
    members.sort_by(|a, b| a.id.cmp(&b.id));
    let mut partitions = Vec::with_capacity(topic.partitions() as usize);
    for p in 0..topic.partitions() {
        let lock_path = base.join("owners").join(format!("{p}.lock"));
        let owner = match File::open(&lock_path) {
            Ok(file) => {
                if try_flock(&file, Flock::Shared).map_err(|e| GroupError::io(&lock_path, "lock", e))? {
                    None
                } else {
                    let id = read_small(&lock_path, 4096)?.and_then(|b| decode_owner(&b).ok());
                    Some(id.unwrap_or_else(|| "?".to_string()))
                }
            }
            Err(_) => None,
        };
        if let Some(m) = owner.as_ref().and_then(|o| members.iter_mut().find(|m| &m.id == o)) {
            m.partitions.push(p);
        }
        let committed = read_committed(&base.join("offsets").join(p.to_string()))?.map_or(0, |c| c.offset);
        let end = end_offset(&topic.partition_dir(p)?)?;
        partitions.push(PartitionInfo { partition: p, owner, committed, end, lag: end.saturating_sub(committed) });
    }
    Ok(GroupInfo { group: group.to_string(), topic: topic.name().to_string(), members, partitions })
}
