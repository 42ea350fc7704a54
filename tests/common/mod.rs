//! Helpers shared by the log's crash, fault and cross-process tests.
//!
//! Child processes are this same test binary run again (`std::env::current_exe`) with the
//! test's exact name as filter and `SHOAL_TEST_CHILD` naming what the child does. The test
//! function checks [`child_mode`] first thing and, in a child, runs the child's part and
//! exits instead of running the test. Children report on stdout with lines that contain
//! [`MARK`]; anything else there (the harness's own lines) is ignored.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use shoal::log::{format, IoBackend, LogError, LogOptions, Reader};

/// Environment variable that turns a test binary run into a child.
pub const CHILD_ENV: &str = "SHOAL_TEST_CHILD";
/// Marker in front of every line a child reports.
pub const MARK: &str = "SHOAL:";

/// Both io backends: every case that touches I/O runs with each.
pub const BACKENDS: [IoBackend; 2] = [IoBackend::Uring, IoBackend::Syscalls];

/// The child mode this process runs in, if it is a child.
pub fn child_mode() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// A command that runs test `test_name` of this binary again as a child in `mode`.
pub fn child_command(test_name: &str, mode: &str) -> Command {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"]).env(CHILD_ENV, mode).env("RUST_BACKTRACE", "0");
    cmd
}

/// Runs test `test_name` of this binary as a child in `mode` with the fail point
/// `SHOAL_FAIL_POINT=fail_point`, and fails (showing its output) unless the child succeeds.
pub fn run_child_with_fail_point(test_name: &str, mode: &str, fail_point: &str, context: &str) {
    let out = child_command(test_name, mode)
        .env("SHOAL_FAIL_POINT", fail_point)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "{context}: child failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prints one report line from a child, flushed.
pub fn report(line: &str) {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // A parent that went away makes this fail; the child then has nothing left to do.
    if writeln!(out, "{MARK}{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// The report in a line of child output, if there is one.
pub fn parse_report(line: &str) -> Option<&str> {
    line.find(MARK).map(|at| &line[at + MARK.len()..])
}

/// Reads `child`'s stdout until a report equal to `want` arrives; panics with what came
/// instead when the child exits first.
pub fn wait_for_report(child: &mut Child, want: &str) -> BufReader<std::process::ChildStdout> {
    let stdout = child.stdout.take().expect("child stdout piped");
    let mut lines = BufReader::new(stdout);
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let n = lines.read_line(&mut line).expect("read child stdout");
        if n == 0 {
            let status = child.wait().expect("wait child");
            panic!("child exited ({status}) before reporting {want:?}; it printed {seen:?}");
        }
        if parse_report(line.trim_end()) == Some(want) {
            return lines;
        }
        seen.push(line);
    }
}

/// Small segments so tests roll over often.
pub fn small_opts(backend: IoBackend) -> LogOptions {
    LogOptions::default().segment_bytes(64 << 10).max_record_bytes(16 << 10).io_backend(backend)
}

/// Parses a backend name given to a child.
pub fn backend_from_name(name: &str) -> IoBackend {
    match name {
        "uring" => IoBackend::Uring,
        "syscalls" => IoBackend::Syscalls,
        other => panic!("unknown backend {other:?}"),
    }
}

/// The name a child is given for a backend.
pub fn backend_name(backend: IoBackend) -> &'static str {
    match backend {
        IoBackend::Uring => "uring",
        IoBackend::Syscalls => "syscalls",
        IoBackend::Auto => "auto",
        other => panic!("no child name for the backend {other:?}"),
    }
}

/// Every record of the log in `dir`, with its offset, checking that offsets are dense from 0.
///
/// # Errors
/// The first error the reader returns.
pub fn read_all(dir: &Path) -> Result<Vec<Vec<u8>>, LogError> {
    let mut reader = Reader::open(dir)?;
    let mut out = Vec::new();
    while let Some(rec) = reader.next()? {
        assert_eq!(rec.offset().0, out.len() as u64, "offsets are not dense");
        out.push(rec.payload().to_vec());
    }
    Ok(out)
}

/// Segment files of a log, in order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Decodes the header of a segment file.
pub fn header_of(path: &Path) -> format::SegmentHeader {
    let bytes = std::fs::read(path).expect("read segment");
    format::SegmentHeader::decode(&bytes).expect("valid segment header")
}

/// Positions and payload lengths of the records in a segment's bytes, read by walking the
/// commit words (no checksums checked: the test wrote these files).
pub fn record_positions(bytes: &[u8]) -> Vec<(usize, usize)> {
    let header = format::SegmentHeader::decode(bytes).expect("valid segment header");
    let mut at = header.data_start();
    let mut out = Vec::new();
    while at + 4 <= bytes.len() {
        let commit = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if commit == 0 || commit == format::END_OF_SEGMENT {
            break;
        }
        let len = (commit & !format::COMMIT_BIT) as usize;
        out.push((at, len));
        at += format::record_stride(len);
    }
    out
}

/// Copies every regular file of `from` into `to` (a pristine log into a scratch dir).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("list dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
        }
    }
}

/// CPU time (user + system) a process has used, in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // The command name (field 2) may hold spaces; fields after its closing paren are plain.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Clock ticks per second.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
    ticks as u64
}
