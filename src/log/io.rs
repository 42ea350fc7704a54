//! The log's I/O backends: an io_uring (preferred) or plain syscalls, both driven from the
//! log's background threads.
//!
//! The operations are few and coarse: ranged data syncs, preallocation
//! (`IORING_OP_FALLOCATE`, kernel 5.6+; or `fallocate(2)`), and full syncs of new files and
//! the directory.
//!
//! A ranged data sync of one file runs inline on the calling thread with `msync(2)` and
//! `MS_SYNC`, which the kernel turns into `vfs_fsync_range(.., datasync)` over just that
//! range, on either backend. io_uring runs every `IORING_OP_FSYNC` on a kernel worker thread
//! (an fsync cannot complete without blocking), and that hand-off cost more than it saved:
//! measured on ext4 (2 vCPUs, virtio disk), 4 KiB written by memcpy into a mapped segment and
//! then synced, p50 of four quiet runs of 300, the io_uring ranged sync took 104-157 us where
//! `msync` took 84-114 us and `fdatasync(2)` 84-130 us (fallocated and populated segment);
//! 123-186 us against 97-149 us and 93-162 us on a sparse one; on tmpfs, where a sync does
//! no I/O, the hand-off alone is 4-5 us. Several ranges (a rollover syncs the sealed segment
//! and the new one) go out in one io_uring submission, where the kernel workers sync them in
//! parallel; the syscall backend syncs them one after another.
//!
//! A ranged data sync instead of a whole-file `fdatasync` matters here: pages ahead of the
//! writer are populated (dirty zeros) so that appends never fault; a whole-file sync would
//! write those zeros out with the first commit that follows their preparation.

use std::io;
use std::sync::Once;

use io_uring::{opcode, types, IoUring};

use super::error::LogError;

/// Which I/O backend a log uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoBackend {
    /// io_uring when the kernel offers it (probed at open), else syscalls, said once in the
    /// log.
    #[default]
    Auto,
    /// io_uring, or fail to open.
    Uring,
    /// Plain syscalls on the background thread.
    Syscalls,
}

/// One ranged data sync: `len` bytes at `offset` of the file `fd`, mapped at `map`.
#[derive(Clone, Copy, Debug)]
pub struct SyncRange {
    /// The file.
    pub fd: i32,
    /// Base address of the file's mapping (for the msync fallback).
    pub map: *mut u8,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

// SAFETY: `map` is only an address handed to msync(2), never dereferenced here; whoever builds
// a `SyncRange` keeps the mapping alive until the sync returns (the sync rounds hold the
// segment), on whichever thread runs it.
unsafe impl Send for SyncRange {}

/// An I/O driver owned by one background thread.
pub enum IoDriver {
    /// io_uring.
    Uring(Box<IoUring>),
    /// Plain syscalls.
    Syscalls,
}

impl std::fmt::Debug for IoDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

static FALLBACK_NOTICE: Once = Once::new();

impl IoDriver {
    /// Builds a driver for `backend`, probing io_uring where asked.
    ///
    /// # Errors
    /// [`LogError::UringUnavailable`] when `backend` is `Uring` and no ring can be set up.
    pub fn new(backend: IoBackend) -> Result<IoDriver, LogError> {
        match backend {
            IoBackend::Syscalls => Ok(IoDriver::Syscalls),
            IoBackend::Uring => {
                probe().map(|r| IoDriver::Uring(Box::new(r))).map_err(|source| LogError::UringUnavailable { source })
            }
            IoBackend::Auto => match probe() {
                Ok(ring) => Ok(IoDriver::Uring(Box::new(ring))),
                Err(e) => {
                    FALLBACK_NOTICE.call_once(|| {
                        tracing::warn!(
                            "io_uring unavailable ({e}); the log uses plain syscalls on a background thread"
                        );
                    });
                    Ok(IoDriver::Syscalls)
                }
            },
        }
    }

    /// "io_uring" or "syscalls".
    pub fn name(&self) -> &'static str {
        match self {
            IoDriver::Uring(_) => "io_uring",
            IoDriver::Syscalls => "syscalls",
        }
    }

    /// Data-syncs each range. One range is synced inline with `msync(2)` on either backend
    /// (io_uring runs every fsync on a kernel worker thread, a hand-off that costs more than
    /// it saves for a single file; see the module notes); several ranges (a rollover) go out
    /// in one io_uring submission and are synced in parallel. Returns the first error.
    pub fn sync_ranges(&mut self, ranges: &[SyncRange]) -> io::Result<()> {
        match self {
            IoDriver::Uring(_) | IoDriver::Syscalls if ranges.len() <= 1 => ranges.first().map_or(Ok(()), msync_range),
            IoDriver::Uring(ring) => {
                let mut first_err = None;
                for chunk in ranges.chunks(RING_ENTRIES as usize) {
                    {
                        let mut sq = ring.submission();
                        for (i, r) in chunk.iter().enumerate() {
                            let entry = opcode::Fsync::new(types::Fd(r.fd))
                                .offset(r.offset)
                                .len(r.len.min(u32::MAX as u64) as u32)
                                .flags(types::FsyncFlags::DATASYNC)
                                .build()
                                .user_data(i as u64);
                            // SAFETY: an fsync reads no user buffer; the fd outlives the
                            // operation because we wait for its completion below.
                            unsafe { sq.push(&entry) }
                                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                        }
                    }
                    if let Err(e) = wait_all(ring, chunk.len()) {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            }
            IoDriver::Syscalls => {
                for r in ranges {
                    msync_range(r)?;
                }
                Ok(())
            }
        }
    }

    /// Preallocates `len` bytes of `fd` from 0.
    pub fn fallocate(&mut self, fd: i32, len: u64) -> io::Result<()> {
        match self {
            IoDriver::Uring(ring) => {
                let entry = opcode::Fallocate::new(types::Fd(fd), len).offset(0).mode(0).build();
                // SAFETY: fallocate reads no user buffer; we wait for completion below.
                unsafe { ring.submission().push(&entry) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                wait_all(ring, 1)
            }
            IoDriver::Syscalls => crate::sys::file::fallocate(fd, len),
        }
    }

    /// Syncs a whole file (`datasync` = fdatasync semantics) or a directory.
    pub fn fsync(&mut self, fd: i32, datasync: bool) -> io::Result<()> {
        match self {
            IoDriver::Uring(ring) => {
                let flags = if datasync { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
                let entry = opcode::Fsync::new(types::Fd(fd)).flags(flags).build();
                // SAFETY: fsync reads no user buffer; we wait for completion below.
                unsafe { ring.submission().push(&entry) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                wait_all(ring, 1)
            }
            IoDriver::Syscalls => {
                // SAFETY: plain syscalls on a valid fd.
                let rc = unsafe {
                    if datasync {
                        libc::fdatasync(fd)
                    } else {
                        libc::fsync(fd)
                    }
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
        }
    }
}

const RING_ENTRIES: u32 = 8;

fn probe() -> io::Result<IoUring> {
    let ring = IoUring::new(RING_ENTRIES)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [(opcode::Fsync::CODE, "IORING_OP_FSYNC"), (opcode::Fallocate::CODE, "IORING_OP_FALLOCATE")] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("the kernel's io_uring lacks {name}")));
        }
    }
    Ok(ring)
}

/// Submits what is queued and reaps `n` completions; returns the first error among them.
fn wait_all(ring: &mut IoUring, n: usize) -> io::Result<()> {
    let mut done = 0;
    let mut first_err = None;
    while done < n {
        match ring.submit_and_wait(n - done) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            done += 1;
            if cqe.result() < 0 && first_err.is_none() {
                first_err = Some(io::Error::from_raw_os_error(-cqe.result()));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn msync_range(r: &SyncRange) -> io::Result<()> {
    let page = super::format::PAGE_BYTES as u64;
    let start = r.offset & !(page - 1);
    let len = r.offset + r.len - start;
    // SAFETY: the range lies inside the live mapping at `r.map` (the caller holds the
    // segment); msync neither reads nor writes our memory, it only writes back pages.
    let rc = unsafe { libc::msync(r.map.add(start as usize).cast(), len as usize, libc::MS_SYNC) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both backends must offer the operations; this machine is expected to have io_uring,
    /// and the test says so plainly when it does not.
    #[test]
    fn uring_probe_reports_clearly() {
        match IoDriver::new(IoBackend::Uring) {
            Ok(d) => assert_eq!(d.name(), "io_uring"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("io_uring is unavailable"), "{msg}");
                eprintln!("NOTE: io_uring unavailable here: {msg}");
            }
        }
        assert_eq!(IoDriver::new(IoBackend::Syscalls).map(|d| d.name()).ok(), Some("syscalls"));
    }
}
