//! Files opened relative to a directory descriptor, never through a symlink.
//!
//! A bus or log directory is a tree that other processes (and other users, where its mode
//! allows) can plant things in. Every file shoal writes is therefore reached through a [`Dir`]:
//! the directory is opened once (`O_DIRECTORY`), and each file or subdirectory below it is
//! opened with `openat(2)` and `O_NOFOLLOW`, so a symlink planted as `LOCK`, `HEAD`, a segment
//! or a group file is an error (`ELOOP`, reported as [`std::io::ErrorKind::Other`] with the
//! name), never followed out of the tree. New files are created with `O_EXCL`; renames into
//! place use `renameat2(RENAME_NOREPLACE)`, so nothing already there is overwritten; only a
//! regular file is accepted where a file is expected (a FIFO or device planted in its place
//! is an error, and is opened `O_NONBLOCK` so that opening it cannot hang).
//!
//! The directory given by the user (the bus or log path) may itself be reached through
//! symlinks: the user named it. Only what lies below it is held to these rules.
//!
//! The `*at` calls are made through `libc` by hand: `std` has no `openat`, and the crates
//! that wrap them (`openat`, `cap-std`) either are unmaintained or bring a capability model
//! and a dependency tree far larger than these few calls.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How [`Dir::open_file`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write, created if missing (an existing regular file is opened as it is).
    ReadWriteCreate,
    /// Read and write, created; an existing entry of that name (of any kind) is an error
    /// (`AlreadyExists`).
    CreateNew,
}

/// An open directory: the anchor of every `*at` call below it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(name: &Path) -> io::Result<CString> {
    CString::new(name.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{} contains a NUL byte", name.display())))
}

/// A name directly inside a directory: one component, not `.` or `..`.
fn component(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a file name")));
    }
    cstr(Path::new(name))
}

/// Turns `ELOOP` from `O_NOFOLLOW` into an error that says what was found.
fn explain(err: io::Error, path: &Path) -> io::Error {
    if err.raw_os_error() == Some(libc::ELOOP) {
        return io::Error::other(format!(
            "{} is a symbolic link; shoal never follows links inside its directories (remove it)",
            path.display()
        ));
    }
    err
}

fn check_regular(file: &File, path: &Path) -> io::Result<()> {
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{} is not a regular file (remove it)", path.display())))
    }
}

impl Dir {
    /// Opens the directory at `path` (which the caller named, so symlinks on the way to it
    /// are followed).
    ///
    /// # Errors
    /// `NotFound`, `NotADirectory` (reported by the OS as `ENOTDIR`), permissions.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(path)?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call; the flags open a
        // directory read-only and the returned descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_path_buf() })
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside this directory (for messages).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The raw descriptor (for `fsync` on an I/O backend).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Opens the subdirectory `name`; a symlink in its place is an error.
    ///
    /// # Errors
    /// `NotFound`, a symlink (named in the error), not a directory.
    pub fn subdir(&self, name: &str) -> io::Result<Dir> {
        let c = component(name)?;
        let path = self.join(name);
        // SAFETY: `c` outlives the call; the descriptor returned is owned below.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            // O_NOFOLLOW|O_DIRECTORY on a symlink fails with ENOTDIR or ELOOP.
            if matches!(err.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) && self.is_symlink(name) {
                return Err(explain(io::Error::from_raw_os_error(libc::ELOOP), &path));
            }
            return Err(err);
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path })
    }

    /// Opens the subdirectory `name`, creating it (mode 0o755 before the umask) if missing.
    ///
    /// # Errors
    /// As [`Dir::subdir`], and the errors of `mkdirat`.
    pub fn create_subdir(&self, name: &str) -> io::Result<Dir> {
        let c = component(name)?;
        // SAFETY: `c` outlives the call.
        let rc = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o755) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::AlreadyExists {
                return Err(err);
            }
        }
        self.subdir(name)
    }

    fn is_symlink(&self, name: &str) -> bool {
        self.path.join(name).symlink_metadata().is_ok_and(|m| m.file_type().is_symlink())
    }

    /// Opens the file `name` in this directory, never through a symlink, and checks that it
    /// is a regular file.
    ///
    /// # Errors
    /// `NotFound` (for `Read` and `ReadWrite`), `AlreadyExists` (for `CreateNew`), a symlink
    /// or a non-regular file (named in the error), permissions.
    pub fn open_file(&self, name: &str, how: Open) -> io::Result<File> {
        let c = component(name)?;
        let path = self.join(name);
        let flags = libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | libc::O_NONBLOCK
            | match how {
                Open::Read => libc::O_RDONLY,
                Open::ReadWrite => libc::O_RDWR,
                Open::ReadWriteCreate => libc::O_RDWR | libc::O_CREAT,
                Open::CreateNew => libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            };
        // SAFETY: `c` outlives the call; the mode argument is read only with O_CREAT; the
        // descriptor returned is owned below.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o644 as libc::c_uint) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            // O_EXCL reports a planted symlink as EEXIST: say what is there.
            if err.raw_os_error() == Some(libc::EEXIST) && self.is_symlink(name) {
                return Err(explain(io::Error::from_raw_os_error(libc::ELOOP), &path));
            }
            return Err(explain(err, &path));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        check_regular(&file, &path)?;
        // O_NONBLOCK only served to keep the open of a planted FIFO from hanging; regular
        // files ignore it, but clear it so the descriptor behaves as an ordinary one.
        // SAFETY: fcntl on a descriptor we own; F_SETFL takes an int argument.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
        Ok(file)
    }

    /// Renames `from` to `to` inside this directory, failing with `AlreadyExists` when `to`
    /// exists (`renameat2(RENAME_NOREPLACE)`, Linux 3.15+; on a file system without it,
    /// `linkat` then `unlinkat`, which gives the same guarantee). Neither name is followed if
    /// it is a symlink: a rename moves the entry itself.
    ///
    /// # Errors
    /// `AlreadyExists`, `NotFound`, and the other errors of `renameat2`.
    pub fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (component(from)?, component(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names outlive the call; the descriptors are ours.
        let rc = unsafe { libc::syscall(libc::SYS_renameat2, fd, a.as_ptr(), fd, b.as_ptr(), libc::RENAME_NOREPLACE) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(err);
        }
        // SAFETY: as above; linkat without AT_SYMLINK_FOLLOW links the entry itself.
        if unsafe { libc::linkat(fd, a.as_ptr(), fd, b.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.unlink(from)
    }

    /// Renames `from` to `to` inside this directory, replacing `to` (`renameat(2)`).
    ///
    /// # Errors
    /// The errors of `renameat`.
    pub fn rename_replace(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (component(from)?, component(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names outlive the call; the descriptors are ours.
        if unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Removes the entry `name` (a file or a symlink itself, never what a link points to).
    ///
    /// # Errors
    /// `NotFound` and the other errors of `unlinkat`.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: `c` outlives the call.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Makes the directory's entries durable (`fsync` on the directory).
    ///
    /// # Errors
    /// The error of `fsync`.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync on a descriptor we own.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Splits `path` into the directory that holds it and its name (one UTF-8 component).
///
/// # Errors
/// `InvalidInput` for a path without a file name (`/`, `..`) or a name that is not UTF-8.
pub fn split(path: &Path) -> io::Result<(&Path, &str)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a file name", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

/// Opens the file at `path` through its directory: the directory (named by the caller) may
/// be reached through symlinks, the file itself never is (see [`Dir::open_file`]).
///
/// # Errors
/// As [`Dir::open`] for the directory and [`Dir::open_file`] for the file.
pub fn open_file_at(path: &Path, how: Open) -> io::Result<File> {
    let (parent, name) = split(path)?;
    Dir::open(parent)?.open_file(name, how)
}

/// The error for an entry of a shoal directory that is not what shoal put there: a
/// symbolic link or a file that is not regular (`kind` is its type, from `lstat` or
/// `readdir`), or `None` when it is a regular file.
pub fn refuse_entry(path: &Path, kind: std::fs::FileType) -> Option<io::Error> {
    if kind.is_symlink() {
        Some(explain(io::Error::from_raw_os_error(libc::ELOOP), path))
    } else if !kind.is_file() {
        Some(io::Error::other(format!("{} is not a regular file (remove it)", path.display())))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn symlinks_below_the_directory_are_never_followed() {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let outside = temp.path().join("outside");
        std::fs::write(&outside, b"keep").expect("write");
        let root = temp.path().join("bus");
        std::fs::create_dir(&root).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root.join("LOCK")).expect("symlink");
        std::os::unix::fs::symlink(temp.path(), root.join("sub")).expect("symlink");
        let dir = Dir::open(&root).expect("open");
        for how in [Open::Read, Open::ReadWrite, Open::ReadWriteCreate, Open::CreateNew] {
            let err = dir.open_file("LOCK", how).expect_err("a symlink is refused");
            if how != Open::CreateNew {
                assert!(err.to_string().contains("symbolic link"), "{how:?}: {err}");
            }
        }
        let err = dir.subdir("sub").expect_err("a symlinked directory is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(dir.create_subdir("sub").is_err());
        assert_eq!(std::fs::read(&outside).expect("read"), b"keep");
        // Renames move the link itself, never onto an existing name.
        let mut f = dir.open_file("new", Open::CreateNew).expect("create");
        f.write_all(b"x").expect("write");
        assert_eq!(dir.rename_noreplace("new", "LOCK").expect_err("exists").kind(), io::ErrorKind::AlreadyExists);
        dir.unlink("LOCK").expect("unlink the link");
        dir.rename_noreplace("new", "LOCK").expect("rename");
        let mut s = String::new();
        dir.open_file("LOCK", Open::Read).expect("open").read_to_string(&mut s).expect("read");
        assert_eq!(s, "x");
        assert_eq!(std::fs::read(&outside).expect("read"), b"keep");
        assert!(dir.open_file("../outside", Open::Read).is_err());
        dir.sync().expect("fsync");
    }

    #[test]
    fn only_regular_files_are_opened_and_create_new_is_exclusive() {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let dir = Dir::open(temp.path()).expect("open");
        let fifo = cstr(&temp.path().join("fifo")).expect("path");
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let err = dir.open_file("fifo", Open::ReadWrite).expect_err("a FIFO is refused");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = dir.open_file("fifo", Open::Read).expect_err("a FIFO is refused, without hanging");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        dir.open_file("a", Open::CreateNew).expect("create");
        assert_eq!(dir.open_file("a", Open::CreateNew).expect_err("exists").kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(dir.open_file("b", Open::Read).expect_err("missing").kind(), io::ErrorKind::NotFound);
        dir.create_subdir("d").expect("mkdir");
        dir.create_subdir("d").expect("exists already");
        assert!(dir.open_file("d", Open::Read).is_err());
        dir.rename_replace("a", "c").expect("rename");
        assert!(temp.path().join("c").exists());
    }
}
