//! The one error enum of the consumer-group API (cold path: join, poll, seek, commit, leave,
//! describe, reset).

use std::path::PathBuf;

use crate::bus::BusError;
use crate::log::LogError;

use super::format::FormatError;

/// Why joining, polling, committing, leaving or describing a consumer group failed.
///
/// Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// A damaged or foreign consumer-group file (committed offsets, lease, owner).
    #[error("{path}: {why}; restore it, or remove it to start that partition of the group afresh, where a new group starts (the earliest record by default; `GroupOptions::start`, `shoal group --from`)")]
    BadGroupFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: FormatError,
    },
    /// An I/O call on a group file or directory failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// This member lost the partition to another member while it was stopped or did not
    /// poll for longer than the session timeout
    /// ([`GroupOptions::session_timeout`](super::GroupOptions::session_timeout)): its commit
    /// of that partition was refused (fenced) and the partition is no longer held.
    #[error(
        "partition {partition} was taken over after the session timeout (owner file {path} now names another \
         member); its records will be delivered again to the new owner. This member no longer holds it: \
         poll again to go on with the partitions it still holds"
    )]
    Fenced {
        /// The partition.
        partition: u32,
        /// Its owner file.
        path: PathBuf,
    },
    /// A seek, position or chosen-offsets commit named a partition this member does not
    /// hold now (it was never assigned to it, is still held by its previous owner, or was
    /// revoked); in a revocation callback, a partition that is not being revoked.
    #[error(
        "partition {partition} is not held here (held: {held:?}); seek and commit only the partitions \
         Member::assigned lists (in a revocation callback, only those being revoked)"
    )]
    NotAssigned {
        /// The partition named.
        partition: u32,
        /// The partitions held where the call was made.
        held: Vec<u32>,
    },
    /// A chosen-offsets commit asked for an offset past the member's position in that
    /// partition: it would skip records never returned.
    #[error(
        "cannot commit offset {offset} of partition {partition}: the member's position there is {position} \
         (the committed offset is the next one to read, at most the position; seek first to skip records)"
    )]
    CommitAhead {
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// [`Member::position`](super::Member::position) of that partition.
        position: u64,
    },
    /// A reset of a group's committed offsets while members of the group are live: they
    /// would overwrite the reset with their next commit.
    #[error(
        "group {group} on topic {topic} has live members ({}); stop them (they leave on SIGTERM), \
         or wait for their session to end, then reset again",
        members.join(", ")
    )]
    GroupActive {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// Ids of the live members (those holding a partition included).
        members: Vec<String>,
    },
    /// A reset of a group that has no state on the topic (no member ever joined it there).
    #[error("group {group} has never consumed topic {topic}: nothing to reset (see `shoal groups <BUS>`)")]
    NoGroup {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
    },
    /// An error of the bus: an invalid group or topic name, a missing topic, a damaged
    /// topic `meta` file.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An error of a partition's log.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl GroupError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> GroupError {
        GroupError::Io { path: path.into(), op, source }
    }

    pub(crate) fn bad_offsets(path: impl Into<PathBuf>, why: FormatError) -> GroupError {
        GroupError::BadGroupFile { path: path.into(), why }
    }
}
