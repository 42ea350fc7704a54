//! The peers' kernels on plain files (a `BufWriter`, write + fdatasync, `O_DIRECT`, memcpy),
//! the scratch directories, and the file-system probe.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::KernelError;

/// Records between two fdatasyncs of the buffered peer of the durable levels.
pub const SYNC_EVERY_RECORDS: u64 = 1000;
/// Bytes of each write of the durable-latency peer.
pub const BLOCK_BYTES: usize = 4 << 10;
/// Bytes of each write of the `O_DIRECT` peer.
pub const DIRECT_WRITE_BYTES: usize = 1 << 20;
/// The durable-latency peer's file starts over (outside the timed part) past this size.
const BLOCK_FILE_BYTES_MAX: u64 = 64 << 20;
/// The buffered peers' file starts over (outside the timed part) past this size.
const PEER_FILE_BYTES_MAX: u64 = 1 << 30;
/// Alignment of the `O_DIRECT` buffer.
const DIRECT_ALIGN: usize = 4 << 10;

/// The file system holding a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSystem {
    /// Its name (`ext4`, `xfs`, `tmpfs`, ...), or its magic number in hex when unknown.
    pub name: String,
    /// Whether it lives in memory, so that durability figures there mean nothing.
    pub in_memory: bool,
}

/// The file system holding `path`, from `statfs(2)`; `f_type` is masked to its low 32 bits,
/// since it is a signed type on some targets (so a magic with the top bit set would
/// otherwise come out sign-extended).
pub fn file_system(path: &Path) -> FileSystem {
    let unknown = || FileSystem { name: "unknown".into(), in_memory: false };
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return unknown();
    };
    // SAFETY: `statfs` is plain old data; all-zero is a valid value that the call overwrites.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a statfs we own.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return unknown();
    }
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on some targets, u32 or i32 on others
    let magic = st.f_type as i64 as u64 & 0xFFFF_FFFF;
    let (name, in_memory) = match magic {
        0xEF53 => ("ext4", false),
        0x5846_5342 => ("xfs", false),
        0x9123_683E => ("btrfs", false),
        0xF2F5_2010 => ("f2fs", false),
        0x2FC1_2FC1 => ("zfs", false),
        0x6969 => ("nfs", false),
        0x794C_7630 => ("overlayfs", false),
        0x6573_5546 => ("fuse", false),
        0x0102_1994 => ("tmpfs", true),
        0x8584_58F6 => ("ramfs", true),
        other => return FileSystem { name: format!("{other:#x}"), in_memory: false },
    };
    FileSystem { name: name.into(), in_memory }
}

/// A fresh `shoal-bench-*` directory under `root`, removed when dropped.
///
/// # Errors
/// The directory could not be created.
pub fn scratch(root: &Path) -> Result<tempfile::TempDir, KernelError> {
    tempfile::Builder::new()
        .prefix("shoal-bench-")
        .tempdir_in(root)
        .map_err(|e| KernelError::io("creating a scratch directory", root, e))
}

/// The buffered peers' file, opened for appending once and kept across rounds; it starts
/// over (truncated between rounds) once it passes 1 GiB.
pub struct SteadyFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
    file: File,
}

impl SteadyFile {
    /// Creates the file in a fresh directory under `root`.
    ///
    /// # Errors
    /// The directory or the file could not be created.
    pub fn open(root: &Path) -> Result<SteadyFile, KernelError> {
        let dir = scratch(root)?;
        let path = dir.path().join("peer.log");
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| KernelError::io("creating the peer's file", &path, e))?;
        Ok(SteadyFile { _dir: dir, path, file })
    }

    /// The file for the next round.
    fn file(&self) -> Result<&File, KernelError> {
        let len = self.file.metadata().map_err(|e| KernelError::io("stat", &self.path, e))?.len();
        if len > PEER_FILE_BYTES_MAX {
            self.file.set_len(0).map_err(|e| KernelError::io("truncate", &self.path, e))?;
        }
        Ok(&self.file)
    }
}

/// A `BufWriter<File>` writing `records` copies of `payload`, each prefixed by its length
/// (u32, little endian); with `sync_every`, an fdatasync every that many records and at the
/// end.
///
/// # Errors
/// A write or an fdatasync failed.
pub fn bufwriter(
    peer: &SteadyFile,
    payload: &[u8],
    records: u64,
    sync_every: Option<u64>,
) -> Result<Duration, KernelError> {
    let (file, path) = (peer.file()?, &peer.path);
    let len = (payload.len() as u32).to_le_bytes();
    let start = Instant::now();
    let mut w = BufWriter::new(file);
    for i in 1..=records {
        w.write_all(&len)
            .and_then(|()| w.write_all(black_box(payload)))
            .map_err(|e| KernelError::io("write", path, e))?;
        if sync_every.is_some_and(|k| i % k == 0) {
            w.flush().and_then(|()| file.sync_data()).map_err(|e| KernelError::io("fdatasync", path, e))?;
        }
    }
    w.flush().map_err(|e| KernelError::io("write", path, e))?;
    drop(w);
    if sync_every.is_some() {
        file.sync_data().map_err(|e| KernelError::io("fdatasync", path, e))?;
    }
    Ok(start.elapsed())
}

/// A bare `write` of each of `records` length-prefixed copies of `payload`, each followed by
/// an fdatasync.
///
/// # Errors
/// A write or an fdatasync failed.
pub fn write_fdatasync_each(peer: &SteadyFile, payload: &[u8], records: u64) -> Result<Duration, KernelError> {
    let (mut file, path) = (peer.file()?, &peer.path);
    let mut framed = (payload.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(payload);
    let start = Instant::now();
    for _ in 0..records {
        file.write_all(black_box(&framed)).map_err(|e| KernelError::io("write", path, e))?;
        file.sync_data().map_err(|e| KernelError::io("fdatasync", path, e))?;
    }
    Ok(start.elapsed())
}

/// The durable-latency peer's file: blocks written at its end, started over (outside the
/// timed part) past 64 MiB.
pub struct BlockFile {
    path: PathBuf,
    file: File,
    end: u64,
}

impl BlockFile {
    /// Creates `dir/peer.blocks`.
    ///
    /// # Errors
    /// The file could not be created.
    pub fn create(dir: &Path) -> Result<BlockFile, KernelError> {
        let path = dir.join("peer.blocks");
        let file = File::create(&path).map_err(|e| KernelError::io("creating the peer's file", &path, e))?;
        Ok(BlockFile { path, file, end: 0 })
    }
}

/// One `block` written at the end of the file, then an fdatasync.
///
/// # Errors
/// The write, the fdatasync or starting over failed.
pub fn fdatasync_latency(peer: &mut BlockFile, block: &[u8]) -> Result<Duration, KernelError> {
    if peer.end >= BLOCK_FILE_BYTES_MAX {
        peer.file.set_len(0).map_err(|e| KernelError::io("truncate", &peer.path, e))?;
        peer.end = 0;
    }
    let start = Instant::now();
    peer.file.write_all_at(black_box(block), peer.end).map_err(|e| KernelError::io("write", &peer.path, e))?;
    peer.file.sync_data().map_err(|e| KernelError::io("fdatasync", &peer.path, e))?;
    let took = start.elapsed();
    peer.end += block.len() as u64;
    Ok(took)
}

/// A buffer aligned for `O_DIRECT`, carved out of a plain `Vec`.
pub struct AlignedBuf {
    backing: Vec<u8>,
    at: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes of `fill`, starting on a 4 KiB boundary.
    pub fn new(len: usize, fill: u8) -> AlignedBuf {
        let backing = vec![fill; len + DIRECT_ALIGN];
        let at = backing.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { backing, at, len }
    }

    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.backing[self.at..self.at + self.len]
    }
}

/// `total` bytes written sequentially with `O_DIRECT` from `buf` (aligned, a multiple of
/// 4 KiB) into a fresh file preallocated under `root`, then one fdatasync. Creating and
/// preallocating the file are outside the timed part.
///
/// # Errors
/// The file system refused `O_DIRECT` or `fallocate`, or a write or the fdatasync failed.
pub fn o_direct_write(root: &Path, buf: &[u8], total: u64) -> Result<Duration, KernelError> {
    let dir = scratch(root)?;
    let path = dir.path().join("peer.direct");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| KernelError::io("opening with O_DIRECT (this file system may not support it)", &path, e))?;
    // SAFETY: fallocate on a file we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, total as libc::off_t) };
    if rc != 0 {
        return Err(KernelError::io("fallocate", &path, io::Error::last_os_error()));
    }
    let start = Instant::now();
    let mut at = 0u64;
    while at < total {
        let n = (total - at).min(buf.len() as u64) as usize;
        file.write_all_at(&buf[..n], at).map_err(|e| KernelError::io("O_DIRECT write", &path, e))?;
        at += n as u64;
    }
    file.sync_data().map_err(|e| KernelError::io("fdatasync", &path, e))?;
    Ok(start.elapsed())
}

/// One `memcpy` of `src` into `dst` (of the same length), both kept alive past the copy.
pub fn memcpy(dst: &mut [u8], src: &[u8]) -> Duration {
    let start = Instant::now();
    dst.copy_from_slice(black_box(src));
    black_box(&mut *dst);
    start.elapsed()
}
