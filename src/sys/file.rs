//! File primitives `std` lacks: advisory locks (`flock(2)`) and preallocation
//! (`fallocate(2)`).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// What [`try_flock`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flock {
    /// `LOCK_SH`: many holders.
    Shared,
    /// `LOCK_EX`: one holder.
    Exclusive,
}

/// Tries to take an `flock(2)` lock on `file` without blocking. Returns
/// `Ok(false)` when another open file description holds a conflicting lock. The lock lives
/// as long as the open file description (every clone of `file`), across threads and
/// processes, and the kernel drops it when the last one closes (a killed process included).
///
/// # Errors
/// The OS error of `flock`, other than `EWOULDBLOCK` (retried on `EINTR`).
pub fn try_flock(file: &File, how: Flock) -> io::Result<bool> {
    let op = match how {
        Flock::Shared => libc::LOCK_SH,
        Flock::Exclusive => libc::LOCK_EX,
    };
    loop {
        // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Takes an `flock(2)` lock on `file`, blocking while another open file description holds
/// a conflicting one (retried after a signal). Converting a held lock (shared to exclusive
/// or back) is not atomic: the kernel drops the old lock first.
///
/// # Errors
/// The OS error of `flock` (`ENOLCK`, `EBADF`).
pub fn flock(file: &File, how: Flock) -> io::Result<()> {
    let op = match how {
        Flock::Shared => libc::LOCK_SH,
        Flock::Exclusive => libc::LOCK_EX,
    };
    loop {
        // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Releases the `flock(2)` lock held through `file` (a no-op when none is held).
pub fn unlock(file: &File) {
    // SAFETY: flock on a descriptor `file` owns and keeps open for the call. Its only
    // errors are a bad descriptor or an interrupted call, neither of which leaves a lock.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// The pids of the processes that hold an `flock(2)` lock on `file` (one entry per lock,
/// so a process with two open file descriptions that each hold it appears twice; a lock
/// inherited by a forked child shows the pid that took it), read from `/proc/locks`.
/// Waiters for a lock are not listed.
///
/// # Errors
/// `/proc/locks` cannot be read (no procfs); `fstat` of `file` fails.
pub fn flock_holders(file: &File) -> io::Result<Vec<u32>> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    let (ino, dev) = (meta.ino(), meta.dev());
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let text = std::fs::read_to_string("/proc/locks")?;
    Ok(text.lines().filter_map(|line| flock_holder(line, major, minor, ino)).collect())
}

/// The pid of one line of `/proc/locks` (`1: FLOCK  ADVISORY  READ 1234 08:01:5678 0 EOF`)
/// when it is a granted `flock` on the file `major:minor:ino`.
fn flock_holder(line: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    let mut fields = line.split_whitespace().skip(1);
    let kind = fields.next()?;
    if kind != "FLOCK" {
        return None; // POSIX and OFD locks, and "->" lines of waiters
    }
    let pid = fields.nth(2)?.parse().ok()?;
    let mut id = fields.next()?.split(':');
    let line_major = u32::from_str_radix(id.next()?, 16).ok()?;
    let line_minor = u32::from_str_radix(id.next()?, 16).ok()?;
    let line_ino: u64 = id.next()?.parse().ok()?;
    (line_major == major && line_minor == minor && line_ino == ino).then_some(pid)
}

/// Preallocates the first `len` bytes of the file open on `fd` (`fallocate(2)` mode 0: the
/// file grows to `len` if shorter, and later writes into the range cannot fail for space).
///
/// # Errors
/// The OS error of `fallocate` (`EOPNOTSUPP` on file systems without it, `ENOSPC`).
pub fn fallocate(fd: std::os::unix::io::RawFd, len: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: a plain syscall on a descriptor; no memory of ours is read or written.
    let rc = unsafe { libc::fallocate(fd, 0, 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Allocates disk space for `len` bytes from `offset` of the file open on `fd`
/// (`fallocate(2)` mode 0 over a range: holes in it get blocks, data already there is kept,
/// and later writes into the range cannot fail for space).
///
/// # Errors
/// The OS error of `fallocate` (`EOPNOTSUPP` on file systems without it, `ENOSPC`).
pub fn fallocate_range(fd: std::os::unix::io::RawFd, offset: u64, len: u64) -> io::Result<()> {
    let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "range too large");
    let offset = libc::off_t::try_from(offset).map_err(|_| too_large())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_large())?;
    // SAFETY: a plain syscall on a descriptor; no memory of ours is read or written.
    let rc = unsafe { libc::fallocate(fd, 0, offset, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_holders_lists_each_lock_on_the_file_and_no_other() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("LOCK");
        let a = File::create(&path).expect("create");
        let b = File::open(&path).expect("open");
        let other = File::create(dir.path().join("OTHER")).expect("create");
        assert!(try_flock(&other, Flock::Exclusive).expect("lock other"));
        assert_eq!(flock_holders(&a).expect("read /proc/locks"), Vec::<u32>::new());
        assert!(try_flock(&a, Flock::Shared).expect("lock a"));
        assert!(try_flock(&b, Flock::Shared).expect("lock b"));
        let me = std::process::id();
        assert_eq!(flock_holders(&a).expect("read /proc/locks"), vec![me, me]);
        unlock(&b);
        assert_eq!(flock_holders(&b).expect("read /proc/locks"), vec![me]);
        assert_eq!(flock_holder("1: POSIX  ADVISORY  WRITE 7 08:01:5 0 EOF", 8, 1, 5), None);
        assert_eq!(flock_holder("1: FLOCK  ADVISORY  WRITE 7 08:01:5 0 EOF", 8, 1, 5), Some(7));
        assert_eq!(flock_holder("1: -> FLOCK  ADVISORY  WRITE 9 08:01:5 0 EOF", 8, 1, 5), None);
        assert_eq!(flock_holder("1: FLOCK  ADVISORY  WRITE 7 08:01:6 0 EOF", 8, 1, 5), None);
        assert_eq!(flock_holder("garbage", 8, 1, 5), None);
    }

    #[test]
    fn flock_excludes_a_second_description_and_releases() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("LOCK");
        let a = File::create(&path).expect("create");
        let b = File::open(&path).expect("open");
        assert!(try_flock(&a, Flock::Exclusive).expect("lock a"));
        assert!(!try_flock(&b, Flock::Exclusive).expect("try b"));
        assert!(!try_flock(&b, Flock::Shared).expect("try b shared"));
        drop(a); // closing the last descriptor releases the lock
        assert!(try_flock(&b, Flock::Shared).expect("lock b shared"));
        let c = File::open(&path).expect("open again");
        assert!(try_flock(&c, Flock::Shared).expect("a second shared holder"));
    }

    #[test]
    fn fallocate_grows_the_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = File::create(dir.path().join("f")).expect("create");
        match fallocate(file.as_raw_fd(), 1 << 16) {
            Ok(()) => assert_eq!(file.metadata().expect("stat").len(), 1 << 16),
            // A file system without fallocate is a clear error, not a silent success.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}"),
        }
    }
}
