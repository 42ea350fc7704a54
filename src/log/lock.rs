//! The appender lock: one writer per log, across threads and processes.
//!
//! An `flock(2)` on the file `LOCK` in the log directory, held for the life of a [`DirLock`].
//! The kernel drops it when the holder exits, however it exits, so a crashed appender never
//! leaves a stale lock behind. The holder writes its pid into the file, for the error a
//! second appender gets. `LOCK` is opened relative to the log directory's descriptor and
//! never through a symlink: one planted there is an error naming it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::error::LogError;
use crate::sys::file::{try_flock, Flock};
use crate::sys::fs::{Dir, Open};

const LOCK_FILE: &str = "LOCK";

/// The exclusive appender lock of a log directory, held while this value lives. Functions
/// that change segments in place (a cut) take it as a witness that no appender runs.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of the log in `dir` (creating `LOCK` there if missing; the directory
    /// itself must exist).
    ///
    /// # Errors
    /// [`LogError::Locked`] naming the holder's pid when another appender holds it; a
    /// symlink or non-regular file planted as `LOCK`; I/O errors.
    pub(crate) fn acquire(dir: &Dir) -> Result<DirLock, LogError> {
        let path = dir.join(LOCK_FILE);
        let file = dir.open_file(LOCK_FILE, Open::ReadWriteCreate).map_err(|e| LogError::io(&path, "open", e))?;
        match try_flock(&file, Flock::Exclusive) {
            Ok(true) => {}
            Ok(false) => {
                let mut bytes = [0u8; 32];
                let n = file.read_at(&mut bytes, 0).unwrap_or(0);
                let holder = String::from_utf8_lossy(&bytes[..n]).trim().to_string();
                let holder = if holder.is_empty() { "unknown".into() } else { holder };
                return Err(LogError::Locked { path, holder });
            }
            Err(err) => return Err(LogError::io(&path, "flock", err)),
        }
        let pid = std::process::id().to_string();
        let _ = file.set_len(0);
        let _ = file.write_all_at(pid.as_bytes(), 0);
        Ok(DirLock { _file: file })
    }
}
