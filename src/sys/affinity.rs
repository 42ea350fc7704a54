//! The affinity syscalls and files: a thread's CPU mask (`sched_getaffinity(2)`), pinning the
//! calling thread to one CPU (`sched_setaffinity(2)`), naming it (`pthread_setname_np(3)`),
//! and the CPUs the kernel lets the process use at all: the online CPUs
//! (`/sys/devices/system/cpu/online`) and its cgroup's cpuset (`cpuset.cpus.effective` in
//! cgroup v2, `cpuset.effective_cpus` in v1).

use std::io;
use std::path::{Path, PathBuf};

/// The CPUs the calling thread may run on (its affinity mask), ascending.
///
/// # Errors
/// The OS error of `sched_getaffinity`.
pub fn usable_cpus() -> io::Result<Vec<usize>> {
    thread_cpus(0)
}

/// The affinity mask of thread `tid` of any process (0: the calling thread; a process id: that
/// process's main thread), ascending.
///
/// # Errors
/// The OS error of `sched_getaffinity` (`ESRCH` for a thread that is gone).
pub fn thread_cpus(tid: libc::pid_t) -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`; any tid is safe to ask about.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads the set within its bounds (cpu < CPU_SETSIZE).
    Ok((0..max).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// The affinity mask of the process's main thread (`sched_getaffinity(getpid())`): what
/// `taskset` or `numactl` set at start, unless the main thread changed it since.
///
/// # Errors
/// The OS error of `sched_getaffinity`.
pub fn main_thread_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: getpid has no preconditions.
    thread_cpus(unsafe { libc::getpid() })
}

/// The online CPUs, ascending.
///
/// # Errors
/// Reading `/sys/devices/system/cpu/online`, or [`io::ErrorKind::InvalidData`] when it is not
/// a CPU list.
pub fn online_cpus() -> io::Result<Vec<usize>> {
    read_cpu_list(Path::new("/sys/devices/system/cpu/online"))
}

/// The CPUs of the process's cgroup cpuset, ascending: `cpuset.cpus.effective` of its cgroup
/// v2 (or of the nearest ancestor that has the file), else `cpuset.effective_cpus` of its
/// cgroup v1 cpuset. `None` when neither can be read (no cpuset controller, no `/sys`).
pub fn cgroup_cpus() -> Option<Vec<usize>> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = Path::new("/sys/fs/cgroup");
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        let found = if controllers.is_empty() {
            // cgroup v2: walk up to the nearest cgroup that has the file (the root's is there
            // once the cpuset controller is on anywhere).
            let mut dir: PathBuf = root.join(relative);
            loop {
                if let Ok(cpus) = read_cpu_list(&dir.join("cpuset.cpus.effective")) {
                    break Some(cpus);
                }
                if dir == root || !dir.pop() {
                    break None;
                }
            }
        } else if controllers.split(',').any(|c| c == "cpuset") {
            read_cpu_list(&root.join("cpuset").join(relative).join("cpuset.effective_cpus")).ok()
        } else {
            None
        };
        if let Some(cpus) = found.filter(|c| !c.is_empty()) {
            return Some(cpus);
        }
    }
    None
}

fn read_cpu_list(path: &Path) -> io::Result<Vec<usize>> {
    let text = std::fs::read_to_string(path)?;
    parse_cpu_list(&text).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a CPU list: {:?}", path.display(), text.trim()))
    })
}

/// Parses a kernel CPU list (`"0-3,8,10-11"`; empty is an empty list) into ascending CPUs.
/// `None` when it is not one (or names a CPU at or above `CPU_SETSIZE`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    let mut cpus = Vec::new();
    let text = text.trim();
    if text.is_empty() {
        return Some(cpus);
    }
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?),
            None => {
                let cpu = part.trim().parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if first > last || last >= max {
            return None;
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Pins the calling thread to `cpu`.
///
/// # Errors
/// The OS error of `sched_setaffinity` (for example a CPU outside the usable set).
pub fn pin_current(cpu: usize) -> io::Result<()> {
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cpu {cpu} is out of range")));
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is this thread; the pointer and size describe `set`.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Names the calling thread (as `top -H` and debuggers show it; Linux keeps 15 bytes).
pub fn name_current(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: `bytes` is NUL-terminated and outlives the call; the thread is this one.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), bytes.as_ptr().cast()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("\n"), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("0-99999"), None);
        let online = online_cpus().expect("/sys/devices/system/cpu/online");
        assert!(!online.is_empty());
        assert!(main_thread_cpus().expect("main thread mask").iter().all(|c| online.contains(c)));
    }
}
