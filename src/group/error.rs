//! The one error enum of the consumer-group API (cold path: join, poll, commit, leave,
//! describe).

use std::path::PathBuf;

use crate::bus::BusError;
use crate::log::slots::SlotError;
use crate::log::LogError;

use super::format::FormatError;

/// Why joining, polling, committing, leaving or describing a consumer group failed.
///
/// Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// A damaged or foreign consumer-group file (committed offsets, lease, owner).
    #[error("{path}: {why}; restore it, or remove it to restart that partition of the group from offset 0")]
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

    pub(crate) fn bad_offsets(path: impl Into<PathBuf>, why: SlotError) -> GroupError {
        GroupError::BadGroupFile { path: path.into(), why: FormatError::Slots(why) }
    }
}
