//! The log lock, across threads and processes: held exclusively by an appender of
//! [`Writers::Exclusive`](super::Writers::Exclusive) and by a repair, shared by every
//! appender of [`Writers::Shared`](super::Writers::Shared) (which take turns appending
//! through the writer role, [`super::role`]).
//!
//! An `flock(2)` on the file `LOCK` in the log directory, held for the life of a [`DirLock`].
//! The kernel drops it when the holder exits, however it exits, so a crashed appender never
//! leaves a stale lock behind. The holder writes its pid into the file, for the error a
//! second appender gets. `LOCK` is opened relative to the log directory's descriptor and
//! never through a symlink: one planted there is an error naming it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::error::LogError;
use crate::sys::file::{flock, try_flock, Flock};
use crate::sys::fs::{Dir, Open};

pub(crate) const LOCK_FILE: &str = "LOCK";

/// The exclusive appender lock of a log directory, held while this value lives. Functions
/// that change segments in place (a cut) take it as a witness that no appender runs.
#[derive(Debug)]
pub(crate) struct DirLock {
    /// `None` for the witness of the writer role ([`DirLock::role_witness`]).
    file: Option<File>,
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
            Ok(false) => return Err(locked(&file, path)),
            Err(err) => return Err(LogError::io(&path, "flock", err)),
        }
        let pid = std::process::id().to_string();
        let _ = file.set_len(0);
        let _ = file.write_all_at(pid.as_bytes(), 0);
        Ok(DirLock { file: Some(file) })
    }

    /// Takes the lock for an appender of a shared log: exclusively when nobody else holds
    /// it (`true`: this appender is the only one, and recovers the log before it calls
    /// [`DirLock::share`]), else shared.
    ///
    /// # Errors
    /// [`LogError::Locked`] when an exclusive appender or a repair holds it; as
    /// [`DirLock::acquire`] otherwise.
    pub(crate) fn acquire_shared(dir: &Dir) -> Result<(DirLock, bool), LogError> {
        let path = dir.join(LOCK_FILE);
        let file = dir.open_file(LOCK_FILE, Open::ReadWriteCreate).map_err(|e| LogError::io(&path, "open", e))?;
        if try_flock(&file, Flock::Exclusive).map_err(|e| LogError::io(&path, "flock", e))? {
            let _ = file.set_len(0);
            return Ok((DirLock { file: Some(file) }, true));
        }
        if try_flock(&file, Flock::Shared).map_err(|e| LogError::io(&path, "flock", e))? {
            return Ok((DirLock { file: Some(file) }, false));
        }
        // Held exclusively. An exclusive appender or a repair writes its pid into the file
        // (right after it took the lock): refuse. Else it is an appender of the shared log
        // recovering it alone at open, or checking at close whether it is the last: wait.
        loop {
            let mut bytes = [0u8; 32];
            if file.read_at(&mut bytes, 0).unwrap_or(0) > 0 {
                return Err(locked(&file, path));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            if try_flock(&file, Flock::Shared).map_err(|e| LogError::io(&path, "flock", e))? {
                return Ok((DirLock { file: Some(file) }, false));
            }
        }
    }

    /// At the close of an appender of a shared log: whether it is the last one (it then
    /// holds the lock exclusively until it is dropped). A failed try may drop the shared
    /// lock (the kernel converts by unlocking first), which only a closing appender can
    /// afford.
    pub(crate) fn try_alone(&self) -> bool {
        let Some(file) = &self.file else { return false };
        try_flock(file, Flock::Exclusive).unwrap_or(false)
    }

    /// Turns an exclusive lock taken by [`DirLock::acquire_shared`] into a shared one. Not
    /// atomic: another appender may take it exclusively in between (and recover a log that
    /// is sound), which this call then waits for.
    pub(crate) fn share(&self) -> Result<(), LogError> {
        let Some(file) = &self.file else { return Ok(()) };
        flock(file, Flock::Shared).map_err(|e| LogError::io(LOCK_FILE, "flock", e))
    }

    /// The witness that recovery asks for, built by the writer role of a shared log while
    /// it holds the role and repairs the tail a dead holder left: no other appender writes
    /// then, and a repair (which takes the lock exclusively) cannot run while appenders
    /// hold it shared.
    pub(crate) fn role_witness() -> DirLock {
        DirLock { file: None }
    }
}

/// The error for a lock held by another: names the pid the exclusive holder wrote.
fn locked(file: &File, path: std::path::PathBuf) -> LogError {
    let mut bytes = [0u8; 32];
    let n = file.read_at(&mut bytes, 0).unwrap_or(0);
    let pid = String::from_utf8_lossy(&bytes[..n]).trim().to_string();
    let holder =
        if pid.is_empty() { "appenders of the shared log".into() } else { format!("another appender (pid {pid})") };
    LogError::Locked { path, holder }
}
