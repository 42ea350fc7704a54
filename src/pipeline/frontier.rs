//! At-least-once for a pipeline fed by a consumer group: a group source commits a poll's
//! offsets only once every event made from its records has left the last stage.
//!
//! # Frontiers of counts
//! Every ring of such a pipeline has [`RingCounts`]: events pushed (published by its
//! producer) and events finished (published by its consumer once the batch's handler
//! returned and what it emitted was pushed downstream: `pushed` of the consumer's output
//! rings first, then `done` with Release). Both are stored once per batch.
//!
//! After emitting the records of a poll, the source snapshots `pushed` of the rings into
//! stage 0 (`F0`). Once every one of them has `done >= F0`, everything stage 0 made of the
//! poll is in the rings into stage 1, so the source snapshots those (`F1`), and so on; once
//! the rings into the last stage have `done >= F_last`, the last stage's handler has
//! returned for every event derived from the poll, and its offsets are committed. A
//! snapshot may take in later events too: the wait is longer, never too short.
//!
//! A [`scale`](super::Pipeline::scale) replaces rings only once they are drained, and
//! installs the new ones in the shared topology before anyone pushes into them: a snapshot
//! taken before holds the old rings, whose `done` reaches their final `pushed`; a snapshot
//! taken after sees where the derived events are now. The source checks its frontiers on
//! each turn without blocking, and keeps at most [`PENDING_MAX`] polls in flight.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::emit::{Emitter, RingCounts};

/// The rings of each stage boundary, with their counts (the pipeline's shared topology).
pub(crate) type Topology = Mutex<Vec<Vec<Arc<RingCounts>>>>;

/// What the source's frontiers read of the pipeline's shared state.
pub(crate) struct Progress<'a> {
    /// The rings of each boundary.
    pub(crate) topology: &'a Topology,
    /// Set when the pipeline aborts: nothing more is committed, as in a crash.
    pub(crate) abort: &'a AtomicBool,
}

impl Progress<'_> {
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}
use crate::group::{Delivery, GroupError, Member};

/// Records read per poll.
const POLL_MAX: usize = 256;
/// How long a poll waits for records when nothing is in flight.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// How long a poll waits for records while frontiers are pending (they are checked again
/// after it).
const BUSY_WAIT: Duration = Duration::from_millis(1);
/// Polls in flight at most; the source stops polling while this many are pending.
pub(crate) const PENDING_MAX: usize = 1024;
/// The nap between two checks of the frontiers when the source waits for them (pending
/// full, or draining at shutdown).
const DRAIN_NAP: Duration = Duration::from_micros(200);

/// One poll on its way through the stages.
struct Pending {
    /// Per partition read, the offset after the last record of the poll.
    offsets: Vec<(u32, u64)>,
    /// The boundary waited on (boundary `b` feeds stage `b`); the poll is done at the
    /// number of stages.
    level: usize,
    /// The rings of that boundary and the `pushed` count each must reach in `done`.
    wait: Vec<(Arc<RingCounts>, u64)>,
}

impl Pending {
    /// Whether every ring waited on has finished its share.
    fn reached(&self) -> bool {
        // pairs with the Release store of `done` in `worker::run_stage_worker`
        self.wait.iter().all(|(counts, target)| counts.done.load(Ordering::Acquire) >= *target)
    }
}

/// The rings of `boundary` and their `pushed` counts now; `None` past the last one.
fn snapshot(topology: &Topology, boundary: usize) -> Option<Vec<(Arc<RingCounts>, u64)>> {
    let topology = topology.lock().unwrap_or_else(PoisonError::into_inner);
    let rings = topology.get(boundary)?;
    // Relaxed: the Acquire load of the upstream `done` (or, at boundary 0, this thread's
    // own stores) orders these after the pushes they count.
    Some(rings.iter().map(|c| (c.clone(), c.pushed.load(Ordering::Relaxed))).collect())
}

/// The source of [`Source::group`](super::Source::group).
pub(crate) struct GroupSource<T> {
    member: Option<Member>,
    decode: Box<dyn FnMut(Delivery) -> Option<T> + Send>,
    /// The poll's records (allocated once).
    batch: Vec<Delivery>,
    pending: VecDeque<Pending>,
}

impl<T> GroupSource<T> {
    pub(crate) fn new(mut member: Member, decode: Box<dyn FnMut(Delivery) -> Option<T> + Send>) -> GroupSource<T> {
        // A partition leaving the member must not be committed past what left the last
        // stage: the source's own commits are the only ones.
        member.commit_nothing_on_revoke();
        GroupSource { member: Some(member), decode, batch: Vec::with_capacity(POLL_MAX), pending: VecDeque::new() }
    }

    fn member_id(&self) -> String {
        self.member.as_ref().map_or_else(String::new, |m| m.id().to_string())
    }

    /// One turn of the source thread: commits what completed, polls, emits, and starts the
    /// poll's frontier.
    pub(crate) fn turn(&mut self, emitter: &mut Emitter<T>, shared: &Progress<'_>) -> Result<(), String> {
        self.commit_completed(shared)?;
        if self.pending.len() >= PENDING_MAX {
            std::thread::sleep(DRAIN_NAP);
            return Ok(());
        }
        let wait = if self.pending.is_empty() { IDLE_WAIT } else { BUSY_WAIT };
        let Some(member) = self.member.as_mut() else { return Ok(()) };
        let polled = member.poll_into(&mut self.batch, POLL_MAX, wait);
        if let Err(e) = polled {
            return Err(format!("consumer group member {} failed to poll: {e}", member.id()));
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut offsets: Vec<(u32, u64)> = Vec::new();
        for delivery in self.batch.drain(..) {
            let next = delivery.record.offset().0 + 1;
            match offsets.iter_mut().find(|(p, _)| *p == delivery.partition) {
                Some((_, at)) => *at = (*at).max(next),
                None => offsets.push((delivery.partition, next)),
            }
            if let Some(event) = (self.decode)(delivery) {
                emitter.emit(event);
            }
        }
        emitter.notify();
        emitter.publish_pushed();
        let wait = snapshot(shared.topology, 0).unwrap_or_default();
        self.pending.push_back(Pending { offsets, level: 0, wait });
        Ok(())
    }

    /// Moves the frontiers on, oldest first, and returns the offsets of the polls done
    /// (the oldest ones, in order; per partition the highest).
    fn completed(&mut self, shared: &Progress<'_>) -> Vec<(u32, u64)> {
        let mut done: Vec<(u32, u64)> = Vec::new();
        while let Some(front) = self.pending.front_mut() {
            // Bounded by the number of boundaries: each pass moves one level on or stops.
            loop {
                if !front.reached() {
                    return done;
                }
                front.level += 1;
                match snapshot(shared.topology, front.level) {
                    Some(wait) => front.wait = wait,
                    None => break,
                }
            }
            let Some(poll) = self.pending.pop_front() else { break };
            for (p, next) in poll.offsets {
                match done.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, at)) => *at = (*at).max(next),
                    None => done.push((p, next)),
                }
            }
        }
        done
    }

    /// Commits the polls whose events all left the last stage. A partition no longer held
    /// (revoked or taken over meanwhile) is skipped: its next owner delivers it again from
    /// the group's committed offset.
    fn commit_completed(&mut self, shared: &Progress<'_>) -> Result<(), String> {
        let done = self.completed(shared);
        if done.is_empty() || shared.aborted() {
            return Ok(());
        }
        let Some(member) = self.member.as_mut() else { return Ok(()) };
        let held = member.assigned();
        let offsets: Vec<(u32, u64)> = done
            .into_iter()
            .filter(|(p, next)| held.contains(p) && member.position(*p).is_ok_and(|at| *next <= at))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        match member.commit_offsets(&offsets) {
            Ok(()) | Err(GroupError::Fenced { .. }) => Ok(()),
            Err(e) => Err(format!("consumer group member {} failed to commit: {e}", member.id())),
        }
    }

    /// At shutdown: waits (without polling) until every poll's events left the last stage,
    /// commits them, and leaves the group so that the partitions move on at once. Gives up
    /// waiting when the pipeline aborts; the member is then dropped without a commit, as a
    /// crash would.
    pub(crate) fn finish(&mut self, shared: &Progress<'_>) -> Result<(), String> {
        // Bounded by the stages draining (shutdown waits for that anyway) or an abort.
        while !self.pending.is_empty() && !shared.aborted() {
            self.commit_completed(shared)?;
            if !self.pending.is_empty() {
                std::thread::sleep(DRAIN_NAP);
            }
        }
        if shared.aborted() {
            return Ok(());
        }
        let id = self.member_id();
        match self.member.take() {
            // Every record returned has left the last stage: leaving commits them all.
            Some(member) => member.leave().map_err(|e| format!("consumer group member {id} failed to leave: {e}")),
            None => Ok(()),
        }
    }
}
