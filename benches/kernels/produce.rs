//! Process kernels: `shoal produce` fed a file of lines on stdin, next to a hand-written
//! program doing the same with a `BufRead` and a `BufWriter`.
//!
//! Each run is a whole process, timed from its spawn to its exit (wall time), writing into a
//! fresh directory; the input file is written once beforehand and sits in the page cache.
//! The peer program is the bench binary itself (the criterion bench, or `shoal bench`) run
//! again with [`LINES_PEER_ENV`] set: it reads stdin through a 1 MiB `BufReader` with
//! `read_until`, and writes each line (without its newline) prefixed by its length (u32, little
//! endian) through a 64 KiB `BufWriter`, with an fdatasync every `sync_every` lines and at the
//! end when asked.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::fs::{bufreader_replay, scratch, PEER_BUFFER_BYTES, PEER_READ_BUFFER_BYTES};
use super::log::count_records;
use super::KernelError;

/// Set in the peer program's environment to `<output file>\t<sync_every>` (0: never sync).
pub const LINES_PEER_ENV: &str = "SHOAL_BENCH_LINES_PEER";
/// Bytes of the shortest input line (without its newline).
pub const LINE_BYTES_MIN: usize = 90;
/// Bytes of the longest input line (without its newline); lines average 100 bytes.
pub const LINE_BYTES_MAX: usize = 110;

/// Writes `lines` newline-terminated lines of [`LINE_BYTES_MIN`] to [`LINE_BYTES_MAX`]
/// printable bytes to `path` (each starts with its number); returns the file's size.
/// Set-up, not measured.
///
/// # Errors
/// Creating or writing the file failed.
pub fn write_lines(path: &Path, lines: u64) -> Result<u64, KernelError> {
    let file = File::create(path).map_err(|e| KernelError::io("creating the input lines", path, e))?;
    let mut w = BufWriter::with_capacity(PEER_BUFFER_BYTES, file);
    let span = (LINE_BYTES_MAX - LINE_BYTES_MIN + 1) as u64;
    let mut line = Vec::with_capacity(LINE_BYTES_MAX + 1);
    let mut bytes = 0u64;
    for i in 0..lines {
        line.clear();
        write!(line, "{i:010} ").map_err(|e| KernelError::io("formatting a line", path, e))?;
        let len = LINE_BYTES_MIN + (i.wrapping_mul(7919) % span) as usize;
        line.extend((line.len()..len).map(|j| b'a' + ((i as usize + j) % 26) as u8));
        line.push(b'\n');
        w.write_all(&line).map_err(|e| KernelError::io("writing the input lines", path, e))?;
        bytes += line.len() as u64;
    }
    w.flush().map_err(|e| KernelError::io("writing the input lines", path, e))?;
    Ok(bytes)
}

/// Runs `cmd` with `input` on its stdin (stdout discarded) and waits for it; returns the
/// time from spawn to exit.
///
/// # Errors
/// The input could not be opened, the process could not start, or it failed (its stderr is
/// in the error).
fn timed_process(mut cmd: Command, what: &'static str, input: &Path) -> Result<Duration, KernelError> {
    let stdin = File::open(input).map_err(|e| KernelError::io("opening the input lines", input, e))?;
    cmd.stdin(stdin).stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| KernelError::io("starting a process", cmd.get_program(), e))?;
    let out = child.wait_with_output().map_err(|e| KernelError::io("waiting for a process", cmd.get_program(), e))?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(KernelError::Process {
            what,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(took)
}

/// One run of `shoal produce <fresh dir> --durability <durability>` (the binary `shoal`)
/// fed `input` (`lines` lines). With `check`, the log is then read through (outside the
/// timed part) to check that it holds `lines` records.
///
/// # Errors
/// The scratch directory could not be made, the process failed, or the check did.
pub fn shoal_produce(
    shoal: &Path,
    root: &Path,
    input: &Path,
    durability: &str,
    lines: u64,
    check: bool,
) -> Result<Duration, KernelError> {
    let dir = scratch(root)?;
    let log = dir.path().join("log");
    let mut cmd = Command::new(shoal);
    cmd.arg("produce").arg(&log).args(["--durability", durability]);
    let took = timed_process(cmd, "shoal produce", input)?;
    if check {
        let read = count_records(&log)?;
        if read != lines {
            return Err(KernelError::ReplayShort { dir: log, read, expected: lines });
        }
    }
    Ok(took)
}

/// One run of the peer program: `exe args...` with [`LINES_PEER_ENV`] set, fed `input`
/// (`lines` lines), writing a fresh file with an fdatasync every `sync_every` lines and at
/// the end when given. With `check`, the file is then parsed (outside the timed part) to
/// check that it holds `lines` records.
///
/// # Errors
/// The scratch directory could not be made, the process failed, or the check did.
pub fn peer_produce(
    exe: &Path,
    args: &[&str],
    root: &Path,
    input: &Path,
    sync_every: Option<u64>,
    lines: u64,
    check: bool,
) -> Result<Duration, KernelError> {
    let dir = scratch(root)?;
    let out = dir.path().join("peer.log");
    let mut cmd = Command::new(exe);
    cmd.args(args).env(LINES_PEER_ENV, format!("{}\t{}", out.display(), sync_every.unwrap_or(0)));
    let took = timed_process(cmd, "the BufWriter peer of shoal produce", input)?;
    if check {
        bufreader_replay(&out, lines)?;
    }
    Ok(took)
}

/// The body of the peer program (see [`LINES_PEER_ENV`]), given the variable's value.
///
/// # Errors
/// The value is malformed, or reading stdin, writing or syncing the file failed.
pub fn lines_peer(spec: &str) -> Result<(), KernelError> {
    let bad =
        || KernelError::Process { what: LINES_PEER_ENV, detail: format!("{spec:?} is not <file>\\t<sync_every>") };
    let (out, sync_every) = spec.split_once('\t').ok_or_else(bad)?;
    let sync_every: u64 = sync_every.parse().map_err(|_| bad())?;
    let out = Path::new(out);
    let mut input = BufReader::with_capacity(PEER_READ_BUFFER_BYTES, io::stdin().lock());
    let file = File::create(out).map_err(|e| KernelError::io("creating the peer's file", out, e))?;
    let mut w = BufWriter::with_capacity(PEER_BUFFER_BYTES, file);
    let mut line = Vec::with_capacity(LINE_BYTES_MAX + 1);
    let mut written = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(|e| KernelError::io("read", "stdin", e))? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        w.write_all(&(line.len() as u32).to_le_bytes())
            .and_then(|()| w.write_all(&line))
            .map_err(|e| KernelError::io("write", out, e))?;
        written += 1;
        if sync_every > 0 && written % sync_every == 0 {
            w.flush().and_then(|()| w.get_ref().sync_data()).map_err(|e| KernelError::io("fdatasync", out, e))?;
        }
    }
    let file = w.into_inner().map_err(|e| KernelError::io("write", out, e.into_error()))?;
    if sync_every > 0 {
        file.sync_data().map_err(|e| KernelError::io("fdatasync", out, e))?;
    }
    Ok(())
}
