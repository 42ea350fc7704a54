//! The peers' kernels on plain files (a `BufWriter`, write + fdatasync, `O_DIRECT`, a
//! `BufReader`), the scratch directories, and the file-system probe.
//!
//! Like shoal's kernels, every writing peer runs from a fresh directory, and its timed part
//! goes from creating its file to closing it.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal::metrics::LatencyHistogram;

use super::KernelError;

/// Records between two fdatasyncs of the buffered peer of the durable levels.
pub const SYNC_EVERY_RECORDS: u64 = 1000;
/// Bytes of each write of the durable-latency peer.
pub const BLOCK_BYTES: usize = 4 << 10;
/// Bytes of each write of the `O_DIRECT` peer.
pub const DIRECT_WRITE_BYTES: usize = 1 << 20;
/// Buffer of the peers' `BufWriter`s: 64 KiB, the performance budget's peer.
pub const PEER_BUFFER_BYTES: usize = 64 << 10;
/// Buffer of the peers' `BufReader`s: 1 MiB, their best here. Reading a page-cached file of
/// 100-byte records on this 2-vCPU VM (`rustc -O`, 2 M records, 3 rounds, machine busy) ran
/// 2.0-2.4 GB/s with 64 KiB, 2.4-3.1 GB/s with 256 KiB to 1 MiB, and no faster with 4 MiB.
pub const PEER_READ_BUFFER_BYTES: usize = 1 << 20;
/// Name of a peer's file in its scratch directory.
const PEER_FILE: &str = "peer.log";
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

/// A fresh file `name` in `dir`, created for writing (part of a peer's timed run).
fn create(dir: &Path, name: &str) -> Result<(File, PathBuf), KernelError> {
    let path = dir.join(name);
    let file = File::create(&path).map_err(|e| KernelError::io("creating the peer's file", &path, e))?;
    Ok((file, path))
}

/// One run of the buffered peer in a fresh directory under `root`: a file created, a
/// `BufWriter` of [`PEER_BUFFER_BYTES`] over it writing `records` copies of `payload`, each
/// prefixed by its length (u32, little endian); with `sync_every`, an fdatasync every that
/// many records and at the end; flushed and closed.
///
/// # Errors
/// The scratch directory could not be made, or a write or an fdatasync failed.
pub fn bufwriter_run(
    root: &Path,
    payload: &[u8],
    records: u64,
    sync_every: Option<u64>,
) -> Result<Duration, KernelError> {
    let dir = scratch(root)?;
    let len = (payload.len() as u32).to_le_bytes();
    let start = Instant::now();
    let (file, path) = create(dir.path(), PEER_FILE)?;
    let mut w = BufWriter::with_capacity(PEER_BUFFER_BYTES, file);
    for i in 1..=records {
        w.write_all(&len)
            .and_then(|()| w.write_all(black_box(payload)))
            .map_err(|e| KernelError::io("write", &path, e))?;
        if sync_every.is_some_and(|k| i % k == 0) {
            w.flush().and_then(|()| w.get_ref().sync_data()).map_err(|e| KernelError::io("fdatasync", &path, e))?;
        }
    }
    let file = w.into_inner().map_err(|e| KernelError::io("write", &path, e.into_error()))?;
    if sync_every.is_some() {
        file.sync_data().map_err(|e| KernelError::io("fdatasync", &path, e))?;
    }
    drop(file);
    Ok(start.elapsed())
}

/// One run in a fresh directory under `root`: a file created, then a bare `write` of each
/// of `records` length-prefixed copies of `payload`, each followed by an fdatasync; closed.
///
/// # Errors
/// The scratch directory could not be made, or a write or an fdatasync failed.
pub fn write_fdatasync_each_run(root: &Path, payload: &[u8], records: u64) -> Result<Duration, KernelError> {
    let dir = scratch(root)?;
    let mut framed = (payload.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(payload);
    let start = Instant::now();
    let (mut file, path) = create(dir.path(), PEER_FILE)?;
    for _ in 0..records {
        file.write_all(black_box(&framed)).map_err(|e| KernelError::io("write", &path, e))?;
        file.sync_data().map_err(|e| KernelError::io("fdatasync", &path, e))?;
    }
    drop(file);
    Ok(start.elapsed())
}

/// One run of the durable-latency peer in a fresh directory under `root`: a file created,
/// then `samples` times `block` written at its end with `pwrite` and an fdatasync, each
/// recorded in `hist`; closed. Returns the whole run's time.
///
/// # Errors
/// The scratch directory could not be made, or a write or an fdatasync failed.
pub fn fdatasync_latency_run(
    root: &Path,
    block: &[u8],
    samples: u64,
    hist: &mut LatencyHistogram,
) -> Result<Duration, KernelError> {
    let dir = scratch(root)?;
    let start = Instant::now();
    let (file, path) = create(dir.path(), PEER_FILE)?;
    let mut end = 0u64;
    for _ in 0..samples {
        let op = Instant::now();
        file.write_all_at(black_box(block), end).map_err(|e| KernelError::io("write", &path, e))?;
        file.sync_data().map_err(|e| KernelError::io("fdatasync", &path, e))?;
        hist.record(op.elapsed().as_nanos() as u64);
        end += block.len() as u64;
    }
    drop(file);
    Ok(start.elapsed())
}

/// Writes the replay peer's file `path`: `records` records of `payload_len` bytes (the same
/// as the log's, from `fill`), each prefixed by its length (u32, little endian). Set-up, not
/// measured.
///
/// # Errors
/// A write failed.
pub fn write_framed_file(
    path: &Path,
    payload_len: usize,
    records: u64,
    mut fill: impl FnMut(&mut [u8], u64),
) -> Result<(), KernelError> {
    let file = File::create(path).map_err(|e| KernelError::io("creating the peer's file", path, e))?;
    let mut w = BufWriter::with_capacity(PEER_BUFFER_BYTES, file);
    let mut payload = vec![0u8; payload_len];
    let len = (payload_len as u32).to_le_bytes();
    for i in 0..records {
        fill(&mut payload, i);
        w.write_all(&len).and_then(|()| w.write_all(&payload)).map_err(|e| KernelError::io("write", path, e))?;
    }
    w.flush().map_err(|e| KernelError::io("write", path, e))
}

/// One pass of the replay peer over `path` (written by [`write_framed_file`], `records`
/// records): the file opened, a `BufReader` of [`PEER_READ_BUFFER_BYTES`] over it, each record's
/// length parsed and its payload touched at both ends in place in the reader's buffer (a
/// record that straddles two fills is copied out first).
///
/// # Errors
/// A read failed, the file ended inside a record, or it held another number of records.
pub fn bufreader_replay(path: &Path, records: u64) -> Result<Duration, KernelError> {
    let start = Instant::now();
    let file = File::open(path).map_err(|e| KernelError::io("opening the peer's file", path, e))?;
    let mut r = BufReader::with_capacity(PEER_READ_BUFFER_BYTES, file);
    let mut straddling = Vec::new();
    let (mut read, mut fold) = (0u64, 0u64);
    let touch = |p: &[u8]| match (p.first(), p.last()) {
        (Some(first), Some(last)) => u64::from(*first) ^ u64::from(*last),
        _ => 0,
    };
    loop {
        let buf = r.fill_buf().map_err(|e| KernelError::io("read", path, e))?;
        if buf.is_empty() {
            break;
        }
        if let Some(&[a, b, c, d]) = buf.get(..4) {
            let len = u32::from_le_bytes([a, b, c, d]) as usize;
            if let Some(p) = buf.get(4..4 + len) {
                fold = fold.wrapping_add(touch(p));
                r.consume(4 + len);
                read += 1;
                continue;
            }
        }
        // The record straddles the end of the buffer: read it out whole.
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(|e| KernelError::io("read", path, e))?;
        straddling.resize(u32::from_le_bytes(len) as usize, 0);
        r.read_exact(&mut straddling).map_err(|e| KernelError::io("read", path, e))?;
        fold = fold.wrapping_add(touch(&straddling));
        read += 1;
    }
    black_box(fold);
    drop(r);
    let took = start.elapsed();
    if read != records {
        return Err(KernelError::ReplayShort { dir: path.to_path_buf(), read, expected: records });
    }
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

/// One run of the `O_DIRECT` peer in a fresh directory under `root`: a file created with
/// `O_DIRECT` and preallocated to `total` bytes, written sequentially from `buf` (aligned, a
/// multiple of 4 KiB), one fdatasync, closed.
///
/// # Errors
/// The file system refused `O_DIRECT` or `fallocate`, or a write or the fdatasync failed.
pub fn o_direct_write(root: &Path, buf: &[u8], total: u64) -> Result<Duration, KernelError> {
    let dir = scratch(root)?;
    let path = dir.path().join(PEER_FILE);
    let start = Instant::now();
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| KernelError::io("opening with O_DIRECT (this file system may not support it)", &path, e))?;
    // SAFETY: fallocate on a file we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, total as libc::off_t) };
    if rc != 0 {
        return Err(KernelError::io("fallocate", &path, io::Error::last_os_error()));
    }
    let mut at = 0u64;
    while at < total {
        let n = (total - at).min(buf.len() as u64) as usize;
        file.write_all_at(&buf[..n], at).map_err(|e| KernelError::io("O_DIRECT write", &path, e))?;
        at += n as u64;
    }
    file.sync_data().map_err(|e| KernelError::io("fdatasync", &path, e))?;
    drop(file);
    Ok(start.elapsed())
}
