//! The appender lock: one writer per log, across threads and processes.
//!
//! An `flock(2)` on the file `LOCK` in the log directory, held for the life of a [`DirLock`].
//! The kernel drops it when the holder exits, however it exits, so a crashed appender never
//! leaves a stale lock behind. The holder writes its pid into the file, for the error a
//! second appender gets.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::error::LogError;
use crate::sys::file::{try_flock, Flock};

const LOCK_FILE: &str = "LOCK";

/// The exclusive appender lock of a log directory, held while this value lives. Functions
/// that change segments in place (a cut) take it as a witness that no appender runs.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of the log in `dir` (creating the directory).
    ///
    /// # Errors
    /// [`LogError::Locked`] naming the holder's pid when another appender holds it; I/O
    /// errors.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, LogError> {
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
                let holder =
                    std::fs::read_to_string(&path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
                return Err(LogError::Locked { path, holder: holder.unwrap_or_else(|| "unknown".into()) });
            }
            Err(err) => return Err(LogError::io(&path, "flock", err)),
        }
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        Ok(DirLock { _file: file })
    }
}
