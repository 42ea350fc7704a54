//! Nothing outside the bus is ever written, and reads create nothing: a symlink planted as
//! one of a log's files (`LOCK`, `HEAD`, a segment's temporary file, a segment) is refused
//! with an error naming it, through the library and the CLI, and the file it points at is
//! left byte for byte as it was; segment ids never wrap around onto segment 0; a log on a
//! read-only file system shows its real durable watermark; `verify --repair` and the read
//! commands create no directory and no file.

mod cli_support;
mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use cli_support::{fails, ok, run, text};
use common::{read_all, segment_files, small_opts, BACKENDS};
use shoal::bus::Bus;
use shoal::log::{format, Appender, IoBackend, LogError, LogOptions, Offset, Reader};

const OUTSIDE: &[u8] = b"a file outside the bus that shoal must never write\n";

/// A log of `n` records (small segments), closed.
fn write_log(dir: &Path, backend: IoBackend, n: u64) {
    let mut log = Appender::open(dir, small_opts(backend)).expect("open");
    for i in 0..n {
        log.append(format!("record {i}").as_bytes()).expect("append");
    }
    log.sync().expect("sync");
    log.close().expect("close");
}

/// Every file name in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What gets planted, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plant {
    Lock,
    Head,
    /// `.<id>.seg.tmp` of the next segment the appender prepares.
    Temp,
    /// The last segment in use, moved outside and replaced by a link to it.
    Segment,
}

/// Plants a symlink in the log at `log` pointing at a file outside it; returns the link's
/// path, the outside file's path and its bytes.
fn plant(log: &Path, outside_dir: &Path, what: Plant) -> (PathBuf, PathBuf, Vec<u8>) {
    let outside = outside_dir.join(format!("outside-{what:?}"));
    let link = match what {
        Plant::Lock => log.join("LOCK"),
        Plant::Head => log.join("HEAD"),
        Plant::Temp => {
            let next = segment_files(log).len();
            log.join(format!(".{next:020}.seg.tmp"))
        }
        Plant::Segment => segment_files(log)[0].clone(),
    };
    if what == Plant::Segment {
        std::fs::rename(&link, &outside).expect("move the segment out");
    } else {
        let _ = std::fs::remove_file(&link);
        std::fs::write(&outside, OUTSIDE).expect("write the outside file");
    }
    let bytes = std::fs::read(&outside).expect("read the outside file");
    symlink(&outside, &link).expect("plant the symlink");
    (link, outside, bytes)
}

/// `Appender::open`'s error. A child that another test of this binary spawns at that
/// moment holds copies of this process's descriptors (the `LOCK` of a log just closed
/// among them) between its fork and its exec; a `Locked` error is that, and is retried.
fn open_error(log: &Path, opts: LogOptions) -> String {
    for _ in 0..100 {
        match Appender::open(log, opts) {
            Ok(_) => panic!("{}: the appender opened", log.display()),
            Err(LogError::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => return e.to_string(),
        }
    }
    panic!("{}: still locked after 2 s", log.display());
}

/// [`fails`], retried while the lock is held for the reason given at [`open_error`].
fn fails_unlocked(args: &[&str], stdin: &[u8]) -> String {
    for _ in 0..100 {
        let err = fails(args, stdin);
        if !err.contains("locked by another appender") {
            return err;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("shoal {args:?}: still locked after 2 s");
}

fn assert_names_link(what: &str, err: &str, link: &Path) {
    let name = link.display().to_string();
    assert!(err.contains(&name), "{what}: the error names the link {name}: {err}");
    assert!(err.contains("symbolic link"), "{what}: the error says it is a symlink: {err}");
}

/// Reproduction 5: a symlink planted as `LOCK`, `HEAD`, a segment's temporary file or a
/// segment, pointing outside the bus, is never followed: every library entry point and
/// every CLI command refuses with an error naming the link, and the outside file keeps its
/// bytes.
#[test]
fn symlinks_planted_in_a_log_are_refused_and_never_written_through() {
    for what in [Plant::Lock, Plant::Head, Plant::Temp, Plant::Segment] {
        for backend in BACKENDS {
            let temp = tempfile::tempdir().expect("temp dir");
            let log = temp.path().join("log");
            write_log(&log, backend, 50);
            let (link, outside, before) = plant(&log, temp.path(), what);
            let ctx = format!("{what:?} ({backend:?})");
            let dir = log.to_str().expect("utf-8 path");

            let err = open_error(&log, small_opts(backend));
            assert_names_link(&format!("{ctx}: Appender::open"), &err, &link);
            let err = shoal::log::verify(&log).expect_err("verify refuses").to_string();
            assert_names_link(&format!("{ctx}: verify"), &err, &link);
            let err = match shoal::log::repair(&log) {
                Err(LogError::Locked { .. }) => fails_unlocked(&["verify", "--repair", dir], b""),
                other => other.expect_err("repair refuses").to_string(),
            };
            assert_names_link(&format!("{ctx}: repair"), &err, &link);
            let err = shoal::log::stats(&log).expect_err("stats refuses").to_string();
            assert_names_link(&format!("{ctx}: stats"), &err, &link);
            let err = read_all(&log).expect_err("a reader refuses").to_string();
            assert_names_link(&format!("{ctx}: Reader"), &err, &link);
            assert_eq!(std::fs::read(&outside).expect("read"), before, "{ctx}: the library wrote through the link");

            for args in [
                &["produce", dir, "--ack"][..],
                &["verify", dir],
                &["verify", "--repair", dir],
                &["cat", dir],
                &["stats", dir],
            ] {
                let err = fails_unlocked(args, b"one more\n");
                assert_names_link(&format!("{ctx}: shoal {args:?}"), &err, &link);
            }
            assert_eq!(std::fs::read(&outside).expect("read"), before, "{ctx}: the CLI wrote through the link");
            assert!(std::fs::symlink_metadata(&link).expect("the link").file_type().is_symlink(), "{ctx}");
        }
    }
}

/// Reproduction 5, a file planted while an appender runs under the name of the next segment
/// it prepares: the preparation (under a temporary name unique to the process, `O_EXCL`,
/// `O_NOFOLLOW`) never renames over it, and finding it there, refuses to open it as a
/// segment another appender prepared; the appender reports it by name.
#[test]
fn a_segment_file_planted_under_a_running_appender_is_refused() {
    for backend in BACKENDS {
        let temp = tempfile::tempdir().expect("temp dir");
        let log = temp.path().join("log");
        let mut appender = Appender::open(&log, small_opts(backend)).expect("open");
        appender.append(b"first").expect("append");
        // Segment 0 is in use and segment 1 prepared (or being prepared): the next
        // preparation is segment 2.
        let link = log.join(format!("{:020}.seg", 2));
        let outside = temp.path().join("outside");
        std::fs::write(&outside, OUTSIDE).expect("write");
        symlink(&outside, &link).expect("plant");
        let payload = vec![7u8; 1000];
        let mut err = None;
        for _ in 0..1000 {
            if let Err(e) = appender.append(&payload) {
                err = Some(e.to_string());
                break;
            }
        }
        let err = err.expect("appends stop when the next segment cannot be created");
        assert_names_link(&format!("{backend:?}"), &err, &link);
        assert_eq!(std::fs::read(&outside).expect("read"), OUTSIDE, "{backend:?}: written through the link");
        drop(appender);
        assert_eq!(std::fs::read(&outside).expect("read"), OUTSIDE);
        assert!(
            std::fs::symlink_metadata(&link).expect("the link").file_type().is_symlink(),
            "nothing renamed over it"
        );
        assert!(!names(&log).iter().any(|n| n.ends_with(".tmp")), "no temporary file left: {:?}", names(&log));
    }
}

/// Reproduction 6: a valid segment under the largest id there is. Its successor's id
/// would wrap to 0 and the preparer would rename a fresh segment over segment 0; instead
/// opening the log refuses with an error naming that segment, and segment 0 is intact.
#[test]
fn a_segment_with_the_largest_id_is_refused_and_segment_zero_survives() {
    for backend in BACKENDS {
        let temp = tempfile::tempdir().expect("temp dir");
        let log = temp.path().join("log");
        write_log(&log, backend, 100);
        let files = segment_files(&log);
        let seg0 = files[0].clone();
        let seg0_bytes = std::fs::read(&seg0).expect("read");
        // A prepared segment (not in use) renamed and re-headed under the largest id; the
        // one the appender had prepared is taken away, so this one is next in line.
        let mut header = format::SegmentHeader::decode(&seg0_bytes).expect("header");
        header.seq = u64::MAX;
        header.base_offset = format::BASE_OFFSET_UNSET;
        header.activated_ns = 0;
        let mut bytes = vec![0u8; seg0_bytes.len()];
        bytes[..format::SEGMENT_HEADER_USED_BYTES].copy_from_slice(&header.encode());
        for other in &files[1..] {
            std::fs::remove_file(other).expect("remove the prepared segment");
        }
        let largest = log.join(format!("{}.seg", u64::MAX));
        std::fs::write(&largest, &bytes).expect("write");

        let err = open_error(&log, small_opts(backend));
        assert!(err.contains(&largest.display().to_string()), "the error names the segment: {err}");
        assert!(err.contains("no room"), "the error says why: {err}");
        let dir = log.to_str().expect("utf-8 path");
        let err = fails_unlocked(&["produce", dir, "--ack"], b"x\n");
        assert!(err.contains(&largest.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&seg0).expect("read"), seg0_bytes, "segment 0 was overwritten");
        let records = read_all(&log).expect("read");
        assert_eq!(records.len(), 100);
        assert_eq!(text(&ok(&["cat", dir], b"")).lines().count(), 100);
    }
}

/// Puts `dir` on a read-only file system: as root, a small tmpfs holding a copy of the log
/// is remounted read-only (root ignores mode bits); otherwise the copy is made read-only
/// with modes 0555 and 0444. Returns the read-only log and, as root, the mount point to
/// unmount.
fn read_only_copy(log: &Path, scratch: &Path) -> (PathBuf, Option<PathBuf>) {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let mount_point = scratch.join("ro");
    std::fs::create_dir(&mount_point).expect("mkdir");
    let copy = mount_point.join("log");
    if root {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&mount_point)
            .status()
            .expect("run mount");
        assert!(status.success(), "as root, mounting a tmpfs for the read-only case failed");
        common::copy_dir(log, &copy);
        let status = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&mount_point)
            .status()
            .expect("run mount");
        assert!(status.success(), "remounting the tmpfs read-only failed");
        assert!(std::fs::write(copy.join("probe"), b"x").is_err(), "the mount is not read-only");
        (copy, Some(mount_point))
    } else {
        common::copy_dir(log, &copy);
        use std::os::unix::fs::PermissionsExt;
        for name in names(&copy) {
            std::fs::set_permissions(copy.join(name), std::fs::Permissions::from_mode(0o444)).expect("chmod");
        }
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        assert!(std::fs::write(copy.join("probe"), b"x").is_err(), "the copy is not read-only");
        (copy, None)
    }
}

struct Unmount(Option<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(point) = &self.0 {
            let _ = std::process::Command::new("umount").arg(point).status();
        }
    }
}

/// Reproduction 9: on a read-only file system `stats` showed "durable offset -" (readers
/// tried to create or extend `HEAD`, failed, and reported no watermark). They map it as it
/// is, read-only, and show the real watermark; nothing is created.
#[test]
fn a_read_only_log_shows_its_real_durable_watermark() {
    let temp = tempfile::tempdir().expect("temp dir");
    let log = temp.path().join("log");
    write_log(&log, IoBackend::Syscalls, 20);
    let (copy, mount) = read_only_copy(&log, temp.path());
    let _unmount = Unmount(mount);
    let before = names(&copy);

    let stats = shoal::log::stats(&copy).expect("stats");
    assert_eq!(stats.durable_offset, 20);
    assert_eq!(stats.last_offset, Some(19));
    let mut reader = Reader::open(&copy).expect("reader");
    assert_eq!(reader.durable_offset(), Offset(20));
    assert_eq!(read_all(&copy).expect("read").len(), 20);
    let report = shoal::log::verify(&copy).expect("verify");
    assert!(report.is_sound(), "{:?}", report.problems);

    let dir = copy.to_str().expect("utf-8 path");
    let out = text(&ok(&["stats", dir], b""));
    let line = out.lines().find(|l| l.contains("durable below")).unwrap_or_else(|| panic!("no watermark: {out}"));
    assert!(line.trim_end().ends_with(" 20"), "stats shows the real watermark: {line}");
    assert_eq!(text(&ok(&["cat", dir], b"")).lines().count(), 20);
    ok(&["verify", dir], b"");
    assert_eq!(names(&copy), before, "a read created a file");
}

/// Reproduction 9: `verify --repair` of a path that does not exist created it (and `LOCK`
/// in it); of a directory without a log it created `LOCK`. Both are errors that create
/// nothing; the read commands create nothing either.
#[test]
fn repair_and_reads_create_no_directory_and_no_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    let missing = temp.path().join("nonexistent");
    let err = shoal::log::repair(&missing).expect_err("no log").to_string();
    assert!(err.contains("no shoal log here"), "{err}");
    assert!(!missing.exists(), "repair created the directory");
    let dir = missing.to_str().expect("utf-8 path");
    fails(&["verify", "--repair", dir], b"");
    assert!(!missing.exists(), "verify --repair created the directory");

    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert!(shoal::log::repair(&empty).is_err());
    let dir = empty.to_str().expect("utf-8 path");
    let _ = run(&["verify", "--repair", dir], b"");
    for args in [&["verify", dir][..], &["stats", dir], &["cat", dir]] {
        let _ = run(args, b"");
    }
    assert!(names(&empty).is_empty(), "a command created {:?} in a directory without a log", names(&empty));

    // A log that no appender has a HEAD for yet (HEAD removed): reads leave it so.
    let log = temp.path().join("log");
    write_log(&log, IoBackend::Syscalls, 5);
    std::fs::remove_file(log.join("HEAD")).expect("remove HEAD");
    std::fs::remove_file(log.join("LOCK")).expect("remove LOCK");
    let before = names(&log);
    let mut reader = Reader::open(&log).expect("reader");
    assert_eq!(reader.durable_offset(), Offset(0), "no HEAD: watermark 0");
    let dir = log.to_str().expect("utf-8 path");
    for args in [&["verify", dir][..], &["stats", dir], &["cat", dir]] {
        ok(args, b"");
    }
    assert_eq!(names(&log), before, "a read created a file");

    // A bus whose groups directory is gone: reading a topic does not bring it back.
    let bus = temp.path().join("bus");
    let bus_dir = bus.to_str().expect("utf-8 path");
    ok(&["produce", bus_dir, "--topic", "t"], b"a\nb\n");
    std::fs::remove_dir(bus.join("groups")).expect("remove groups");
    assert_eq!(text(&ok(&["cat", bus_dir, "--topic", "t"], b"")).lines().count(), 2);
    assert!(!bus.join("groups").exists(), "cat created the groups directory");
}

/// Reproduction 9: a log or bus path that is a file said "create directory failed: File
/// exists"; it now says the path is a file, not a log (or bus) directory.
#[test]
fn a_path_that_is_a_file_is_named_as_such() {
    let temp = tempfile::tempdir().expect("temp dir");
    let file = temp.path().join("file");
    std::fs::write(&file, b"not a log").expect("write");
    let err = Appender::open(&file, LogOptions::default()).expect_err("a file").to_string();
    assert!(err.contains("is a file, not a log directory"), "{err}");
    assert!(!err.contains("File exists"), "{err}");
    let path = file.to_str().expect("utf-8 path");
    let err = fails(&["produce", path], b"x\n");
    assert!(err.contains("is a file, not a log directory"), "{err}");
    let err = Bus::open(&file).expect_err("a file").to_string();
    assert!(err.contains("is a file, not a bus directory"), "{err}");
    let err = fails(&["produce", path, "--topic", "t"], b"x\n");
    assert!(err.contains("is a file, not a bus directory"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), b"not a log");
}

/// A symlink planted as a topic's directory or its `meta` is refused, not followed.
#[test]
fn symlinks_planted_in_a_bus_are_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let bus = Bus::open(temp.path().join("bus")).expect("bus");
    bus.topic_or_create("t", Some(1)).expect("topic");
    let elsewhere = temp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    symlink(&elsewhere, bus.dir().join("topics").join("u")).expect("plant");
    let err = bus.topic_or_create("u", Some(1)).expect_err("a symlinked topic").to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert!(names(&elsewhere).is_empty(), "written through a symlinked topic directory");

    let meta = bus.dir().join("topics").join("t").join("meta");
    let outside = temp.path().join("meta-outside");
    std::fs::rename(&meta, &outside).expect("move meta out");
    let before = std::fs::read(&outside).expect("read");
    symlink(&outside, &meta).expect("plant");
    let err = bus.topic("t").expect_err("a symlinked meta").to_string();
    assert!(err.contains("symbolic link") && err.contains(&meta.display().to_string()), "{err}");
    assert!(bus.topic_or_create("t", Some(1)).is_err());
    assert_eq!(std::fs::read(&outside).expect("read"), before);

    // A symlinked partition directory: the producer refuses it.
    let topic = bus.topic_or_create("v", Some(1)).expect("topic");
    let part = topic.partition_dir(0).expect("partition");
    let _ = std::fs::remove_dir(&part);
    symlink(&elsewhere, &part).expect("plant");
    let err = topic.producer(LogOptions::default()).expect_err("a symlinked partition").to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert!(names(&elsewhere).is_empty(), "written through a symlinked partition directory");
}

/// A log directory given as a symbolic link to a directory that does not exist: the error
/// names the link and its target (it used to be "create directory failed: File exists").
#[test]
fn a_dangling_symlink_as_the_log_directory_is_named_as_such() {
    let temp = tempfile::tempdir().expect("temp dir");
    let link = temp.path().join("log");
    let target = temp.path().join("nowhere");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let err = shoal::log::Appender::open(&link, shoal::log::LogOptions::default()).expect_err("a dangling link");
    let message = err.to_string();
    assert!(message.contains("symbolic link") && message.contains(&target.display().to_string()), "{message}");
    assert!(!target.exists(), "nothing was created through the link");
}
