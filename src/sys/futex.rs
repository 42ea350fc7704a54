//! Futexes shared across processes: wait on one word, wake every sleeper of a word, and
//! wait on several words at once (`futex_waitv(2)`, Linux 5.16+).
//!
//! The words live in shared file mappings (a log's `HEAD` page, a group's `epoch` page), so
//! every call is process-shared (no `FUTEX_PRIVATE_FLAG`): a sleeper in one process is woken
//! by a writer in another. The calls are written by hand over `libc::syscall`: `libc` has no
//! wrapper, and the maintained crates (`atomic-wait`, `parking_lot_core`) use
//! process-private futexes on one word only.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// The kernel's limit on words per `futex_waitv` call (`FUTEX_WAITV_MAX`).
pub const WAITV_MAX: usize = 128;
/// `FUTEX2_SIZE_U32`; the words are shared (no `FUTEX2_PRIVATE`), so other processes wake us.
const FUTEX2_SIZE_U32: u32 = 2;
/// `FUTEX2_PRIVATE`: the word is waited on with the process-private key, as `FUTEX_WAKE`
/// with `FUTEX_PRIVATE_FLAG` wakes it.
#[cfg(feature = "tokio")]
const FUTEX2_PRIVATE: u32 = 128;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))]
const SYS_FUTEX_WAITV: libc::c_long = 449;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
const SYS_FUTEX_WAITV: libc::c_long = -1;

static WAITV_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// True once `futex_waitv` answered `ENOSYS`, or when `SHOAL_FAIL_POINT=no_futex_waitv` asks
/// this process to behave as on a kernel without it (for tests of the fallbacks).
fn waitv_unsupported() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    WAITV_UNSUPPORTED.load(Ordering::Relaxed)
        || *FORCED.get_or_init(|| std::env::var_os("SHOAL_FAIL_POINT").is_some_and(|v| v == "no_futex_waitv"))
}

/// Sleeps while `word` holds `seen`, until a wake-up or `timeout`. Spurious returns happen
/// (a signal, the word already moved): callers re-check their condition and loop.
pub fn wait(word: &AtomicU32, seen: u32, timeout: Duration) {
    wait_op(word, seen, timeout, libc::FUTEX_WAIT);
}

/// `FUTEX_WAIT` (with or without the private flag, as `op` says) for up to `timeout`.
fn wait_op(word: &AtomicU32, seen: u32, timeout: Duration, op: libc::c_int) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word` (borrowed for the call) and the
    // timespec on our stack; it writes nothing of ours. EAGAIN/EINTR/ETIMEDOUT are all fine:
    // callers loop.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), op, seen, &ts as *const libc::timespec, 0usize, 0u32);
    }
}

/// Wakes every sleeper on `word` (in any process).
pub fn wake_all(word: &AtomicU32) {
    wake_op(word, libc::FUTEX_WAKE);
}

/// `FUTEX_WAKE` of every sleeper (with or without the private flag, as `op` says).
fn wake_op(word: &AtomicU32, op: libc::c_int) {
    // SAFETY: FUTEX_WAKE on the aligned u32 behind `word` (borrowed for the call); nothing of
    // ours is written by the kernel.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), op, i32::MAX, 0usize, 0usize, 0u32);
    }
}

/// `struct futex_waitv` of `<linux/futex.h>`: one word to wait on and the value it must
/// still hold.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

impl FutexWaitv {
    /// Waits while `word` holds `seen`. The entry keeps only the word's address: see
    /// [`wait_any`] for how long the word must live.
    pub fn new(word: &AtomicU32, seen: u32) -> FutexWaitv {
        FutexWaitv { val: seen as u64, uaddr: word.as_ptr() as u64, flags: FUTEX2_SIZE_U32, reserved: 0 }
    }

    /// Waits while the u32 at `addr` holds `seen`, with the private futex key when `private`
    /// (the word is then woken only by [`wake_all_private`]). The address is only handed to
    /// the kernel, which validates it: see [`waitv`].
    #[cfg(feature = "tokio")]
    pub fn at(addr: usize, seen: u32, private: bool) -> FutexWaitv {
        let flags = if private { FUTEX2_SIZE_U32 | FUTEX2_PRIVATE } else { FUTEX2_SIZE_U32 };
        FutexWaitv { val: seen as u64, uaddr: addr as u64, flags, reserved: 0 }
    }
}

#[cfg(feature = "tokio")]
/// How a [`waitv`] call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waitv {
    /// The word at this index of the list was woken.
    Woken(usize),
    /// Some word already differed from its value, or could not be read (`EAGAIN`, `EFAULT`):
    /// [`differs`] tells which.
    Moved,
    /// A signal or a spurious return: nothing is known; wait again.
    Interrupted,
    /// `futex_waitv` is unavailable (Linux < 5.16, or a list of more than [`WAITV_MAX`]), or
    /// the call failed in a way that would recur: re-check on a timer instead.
    Unsupported,
}

#[cfg(feature = "tokio")]
/// Sleeps, with no timeout, until one of the words of `list` is woken or differs from its
/// value: `futex_waitv(2)` for a caller that must know which word ended the wait.
///
/// Safe for any addresses: the kernel only reads the words, through its own checked
/// user-memory accessors, and fails the call with `EFAULT` (reported as [`Waitv::Moved`]) for
/// one that is not mapped; nothing of this process is written.
pub fn waitv(list: &[FutexWaitv]) -> Waitv {
    if SYS_FUTEX_WAITV < 0 || list.len() > WAITV_MAX || list.is_empty() || waitv_unsupported() {
        return Waitv::Unsupported;
    }
    // SAFETY: the kernel reads `list` (a valid array of `list.len()` entries, borrowed for
    // the call) and the u32 words it names through checked accessors (an unmapped one fails
    // the call with EFAULT); a null timeout means no deadline. Nothing of ours is written.
    let rc = unsafe {
        libc::syscall(
            SYS_FUTEX_WAITV,
            list.as_ptr(),
            list.len() as libc::c_uint,
            0 as libc::c_uint,
            std::ptr::null::<libc::timespec>(),
            libc::CLOCK_MONOTONIC,
        )
    };
    if rc >= 0 {
        return Waitv::Woken(rc as usize);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EFAULT) => Waitv::Moved,
        Some(libc::ENOSYS) => {
            WAITV_UNSUPPORTED.store(true, Ordering::Relaxed);
            tracing::info!("futex_waitv is unavailable (Linux < 5.16); async waits re-check every 1 ms");
            Waitv::Unsupported
        }
        Some(libc::EINTR) | Some(libc::ETIMEDOUT) => Waitv::Interrupted,
        // Anything else (EINVAL, ENOMEM) would recur at once: the caller falls back to its
        // tick for this call rather than spin on it.
        _ => Waitv::Unsupported,
    }
}

#[cfg(feature = "tokio")]
/// True when the u32 at `addr` no longer holds `seen` (or cannot be read), as the kernel
/// sees it: a `FUTEX_WAIT` with a zero timeout, which compares the word and returns at once.
/// Safe for any address, for the reasons given in [`waitv`].
pub fn differs(addr: usize, seen: u32, private: bool) -> bool {
    let op = if private { libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG } else { libc::FUTEX_WAIT };
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: FUTEX_WAIT reads the u32 at `addr` through the kernel's checked accessors (an
    // unmapped address fails with EFAULT) and the timespec on our stack; it writes nothing.
    let rc = unsafe { libc::syscall(libc::SYS_futex, addr, op, seen, &zero as *const libc::timespec, 0usize, 0u32) };
    rc < 0 && matches!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN) | Some(libc::EFAULT))
}

#[cfg(feature = "tokio")]
/// Sleeps while `word` holds `seen`, until a private wake-up ([`wake_all_private`]) or
/// `timeout`. Spurious returns happen: callers re-check and loop.
pub fn wait_private(word: &AtomicU32, seen: u32, timeout: Duration) {
    wait_op(word, seen, timeout, libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG);
}

/// Wakes every sleeper on `word` that waits with the private key (this process only).
pub fn wake_all_private(word: &AtomicU32) {
    wake_op(word, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG);
}

/// Sleeps until one of the words differs from its value, a wake-up, or `timeout`. Returns
/// false when `futex_waitv` is unavailable or the list is empty or longer than
/// [`WAITV_MAX`] (the caller slept up to 1 ms instead and must poll).
///
/// # Safety
/// Every word in `waiters` must stay mapped (and be a valid, 4-aligned u32) for the call.
pub unsafe fn wait_any(waiters: &[FutexWaitv], timeout: Duration) -> bool {
    if SYS_FUTEX_WAITV < 0 || waiters.len() > WAITV_MAX || waiters.is_empty() || waitv_unsupported() {
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
        return false;
    }
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the timespec on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let total_ns = now.tv_nsec as u64 + timeout.subsec_nanos() as u64;
    let deadline = libc::timespec {
        tv_sec: now.tv_sec.saturating_add(
            timeout.as_secs().min(1 << 31) as libc::time_t + (total_ns / 1_000_000_000) as libc::time_t,
        ),
        tv_nsec: (total_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: the kernel reads `waiters` (a valid array of `waiters.len()` entries on the
    // caller's side) and the words they point to (kept mapped by the caller, per this
    // function's contract), and the deadline on our stack; it writes nothing of ours.
    // EAGAIN (a word already moved), ETIMEDOUT and EINTR all mean "re-check": callers loop.
    let rc = unsafe {
        libc::syscall(
            SYS_FUTEX_WAITV,
            waiters.as_ptr(),
            waiters.len() as libc::c_uint,
            0 as libc::c_uint,
            &deadline as *const libc::timespec,
            libc::CLOCK_MONOTONIC,
        )
    };
    if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        WAITV_UNSUPPORTED.store(true, Ordering::Relaxed);
        tracing::info!("futex_waitv is unavailable (Linux < 5.16); waits on several logs poll every 1 ms");
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wakes_on_any_word_and_times_out() {
        let words: Arc<[AtomicU32; 3]> = Arc::new([AtomicU32::new(0), AtomicU32::new(5), AtomicU32::new(9)]);
        // A word that already moved returns at once.
        let start = Instant::now();
        // SAFETY: the words live in `words` for the whole call.
        unsafe { wait_any(&[FutexWaitv::new(&words[0], 1)], Duration::from_secs(5)) };
        assert!(start.elapsed() < Duration::from_secs(2));
        // Times out.
        let start = Instant::now();
        // SAFETY: as above.
        unsafe { wait_any(&[FutexWaitv::new(&words[0], 0)], Duration::from_millis(30)) };
        assert!(start.elapsed() >= Duration::from_millis(1));
        // Woken through the third word.
        let w = words.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w[2].fetch_add(1, Ordering::SeqCst);
            wake_all(&w[2]);
        });
        let start = Instant::now();
        let list: Vec<FutexWaitv> = words.iter().zip([0, 5, 9]).map(|(w, v)| FutexWaitv::new(w, v)).collect();
        let mut supported = true;
        while words[2].load(Ordering::SeqCst) == 9 && start.elapsed() < Duration::from_secs(5) {
            // SAFETY: as above.
            supported &= unsafe { wait_any(&list, Duration::from_secs(5)) };
        }
        t.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(4), "not woken");
        if supported {
            assert!(start.elapsed() >= Duration::from_millis(40));
        }
    }

    #[test]
    fn wait_returns_on_wake_and_when_the_word_moved() {
        let word = Arc::new(AtomicU32::new(0));
        // Already moved: returns at once.
        let start = Instant::now();
        wait(&word, 1, Duration::from_secs(5));
        assert!(start.elapsed() < Duration::from_secs(2));
        let w = word.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            w.fetch_add(1, Ordering::SeqCst);
            wake_all(&w);
        });
        let start = Instant::now();
        while word.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(5) {
            wait(&word, 0, Duration::from_secs(5));
        }
        t.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(4), "not woken");
    }
}
