//! Sleeping on several futex words at once, across processes.
//!
//! A member that has caught up on every partition it owns sleeps until any of them gets a
//! record or the group's membership changes: one `futex_waitv(2)` (Linux 5.16+) over the
//! `notify` word of each partition's `HEAD` page and the group's `epoch` word. It is called
//! by hand over `libc::syscall`: neither `libc` nor a maintained crate wraps it (the
//! `atomic-wait` and `parking_lot_core` wrappers cover one process-private word). Where the
//! kernel lacks it (`ENOSYS`), or for more than [`WAITV_MAX`] words, the caller sleeps
//! 1 ms at a time instead and re-checks.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// The kernel's limit on words per call (`FUTEX_WAITV_MAX`).
pub const WAITV_MAX: usize = 128;
/// `FUTEX2_SIZE_U32`; the words are shared (no `FUTEX2_PRIVATE`), so other processes wake us.
const FUTEX2_SIZE_U32: u32 = 2;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))]
const SYS_FUTEX_WAITV: libc::c_long = 449;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
const SYS_FUTEX_WAITV: libc::c_long = -1;

static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// `struct futex_waitv` of `<linux/futex.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

impl FutexWaitv {
    /// Waits while `word` holds `seen`.
    pub fn new(word: &AtomicU32, seen: u32) -> FutexWaitv {
        FutexWaitv { val: seen as u64, uaddr: word.as_ptr() as u64, flags: FUTEX2_SIZE_U32, reserved: 0 }
    }
}

/// Sleeps until one of the words differs from its value, a wake-up, or `timeout`. Returns
/// false when `futex_waitv` is unavailable (the caller slept 1 ms instead).
///
/// # Safety
/// Every word in `waiters` must stay mapped (and be a valid, 4-aligned u32) for the call.
pub unsafe fn wait_any(waiters: &[FutexWaitv], timeout: Duration) -> bool {
    if SYS_FUTEX_WAITV < 0 || waiters.len() > WAITV_MAX || waiters.is_empty() || UNSUPPORTED.load(Ordering::Relaxed) {
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
        UNSUPPORTED.store(true, Ordering::Relaxed);
        tracing::info!("futex_waitv is unavailable (Linux < 5.16); idle group members poll every 1 ms");
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
        return false;
    }
    true
}

/// Wakes every sleeper on `word` (in any process).
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 in a shared mapping; nothing of ours is
    // written by the kernel.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX, 0usize, 0usize, 0u32);
    }
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
}
