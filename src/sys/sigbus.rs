//! Turning `SIGBUS` on a mapped file that shrank into a flag the owner of the mapping checks.
//!
//! Touching a page of a shared file mapping that lies past the end of the file (another
//! program truncated it) raises `SIGBUS`, which kills the process. shoal maps its segments,
//! so a `truncate` of a live segment would kill every appender and reader of it without a
//! word. This module installs, once per process, a `SIGBUS` handler (`sigaction(2)` with
//! `SA_SIGINFO | SA_ONSTACK`) that looks the faulting address up in a fixed-size registry of
//! the ranges shoal has mapped. For an address inside a registered range it maps a private
//! zero page over the faulting page (`mmap(2)` with `MAP_FIXED | MAP_PRIVATE |
//! MAP_ANONYMOUS`), sets that range's `faulted` flag and returns: the faulting load or store
//! completes against zeros. Readers then see an empty slot and, in that cold branch, check
//! the flag ([`Registration::faulted`]); the appender checks it before it acknowledges
//! anything durable. This is what LMDB's and the JVM's `MappedByteBuffer` handling of a
//! truncated mapping do in spirit (the JVM turns the fault into an `InternalError`), and what
//! Chromium's `PersistentMemoryAllocator` guards against by checking the file length first.
//!
//! A fault outside every registered range, or one that is not a kernel-reported
//! `BUS_ADRERR` (a `kill -BUS`, a hardware memory error), is passed on: to the previous
//! handler where there was one (Rust's own stack-overflow handler, for one, which resets the
//! disposition and returns), otherwise the disposition is reset to the default and the
//! handler returns, so the fault repeats and kills the process as it would have without
//! shoal.
//!
//! # The registry
//! [`SLOTS`] slots, each a sequence lock over (start, length) plus the `faulted` flag. A
//! registrant claims a free slot with a compare-and-swap on `claimed`, makes `seq` odd,
//! writes the range, and makes `seq` even again with a `Release` store; unregistering does
//! the same in reverse and frees the slot. The handler takes no lock: it reads each slot's
//! `seq` (`Acquire`), the range, and `seq` again after an `Acquire` fence, and uses the range
//! only when both reads agree and are even. A slot in the middle of an update is skipped; it
//! cannot be the faulting mapping's own slot, because a range is registered before anyone
//! touches it and unregistered only after everyone is done with it. When the slots run out
//! (more than [`SLOTS`] segments mapped at once) a mapping goes unregistered, with one
//! warning: a truncation of it then kills the process, as before.
//!
//! # Safety
//! - Everything the handler does is async-signal-safe: atomic loads and stores on a static
//!   array, `mmap(2)` and `sigaction(2)` (each one system call in glibc and musl, which set
//!   nothing but `errno`, saved and restored around the handler). No allocation, lock,
//!   formatting or logging.
//! - The handler maps a page only over a page of a range that was registered at an instant
//!   while the fault was in progress (the sequence lock gives a consistent snapshot). A
//!   registered range is mapped by its owner until it is unregistered ([`register`]'s
//!   contract), and the faulting thread is inside the owner's mapping, so the range is the
//!   faulting mapping itself: the zero page replaces one page of shoal's own mapping, never
//!   anybody else's memory. The owner later unmaps the whole range, zero pages included.
//! - The zero page is private: what is stored into it reaches no file and no other process.
//!   That is why the owner's flag must be checked before anything written since the fault
//!   is called durable.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// How many mappings can be registered at once.
pub const SLOTS: usize = 4096;

/// One registered range.
struct Slot {
    /// Taken by a registrant (registrants only; the handler reads `seq`).
    claimed: AtomicBool,
    /// Sequence lock over `start` and `len`: odd while they change.
    seq: AtomicUsize,
    start: AtomicUsize,
    len: AtomicUsize,
    /// Set by the handler when a page of the range faulted.
    faulted: AtomicBool,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            claimed: AtomicBool::new(false),
            seq: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            faulted: AtomicBool::new(false),
        }
    }
}

static REGISTRY: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// One past the highest slot ever claimed: the handler scans no further.
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// The system page size, read at installation.
static PAGE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// The disposition found when the handler was installed.
static PREVIOUS: OnceLock<Previous> = OnceLock::new();
static INSTALL: Once = Once::new();
/// Whether the handler is installed (false where `sigaction` failed).
static INSTALLED: AtomicBool = AtomicBool::new(false);
static FULL_WARNED: AtomicBool = AtomicBool::new(false);

/// The previous `SIGBUS` disposition.
struct Previous(libc::sigaction);

// SAFETY: a `sigaction` is plain data (a handler address, a mask, flags); it is written once
// before the handler is installed and only read afterwards.
unsafe impl Sync for Previous {}
// SAFETY: as for Sync.
unsafe impl Send for Previous {}

/// A registered range; dropping it unregisters the range. Drop it before the range is
/// unmapped.
#[derive(Debug)]
pub struct Registration {
    slot: usize,
}

impl Registration {
    /// Whether a page of the range faulted past the end of its file since registration: the
    /// file shrank under the mapping, and that page now reads as zeros.
    #[inline]
    pub fn faulted(&self) -> bool {
        // pairs with the Release store in the handler (on the faulting thread, or this one)
        REGISTRY[self.slot].faulted.load(Ordering::Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let slot = &REGISTRY[self.slot];
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // orders the odd `seq` before the cleared range, for the handler's Acquire fence
        fence(Ordering::Release);
        slot.start.store(0, Ordering::Relaxed);
        slot.len.store(0, Ordering::Relaxed);
        // pairs with the handler's Acquire load of `seq`
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
        // pairs with the Acquire compare-and-swap in `register`
        slot.claimed.store(false, Ordering::Release);
    }
}

/// Registers `len` bytes at `start` as a file mapping of shoal's: a `SIGBUS` on it turns
/// into zeros and the registration's [`faulted`](Registration::faulted) flag. Installs the
/// process's handler on first use. `None` when every slot is taken or the handler could not
/// be installed (the mapping is then unprotected, as without this module).
///
/// # Safety
/// `start..start + len` (rounded out to pages) is one mapping of the caller's that stays
/// mapped, and is not replaced by another mapping, until the returned [`Registration`] is
/// dropped; no other live registration covers any of it.
pub unsafe fn register(start: *const u8, len: usize) -> Option<Registration> {
    install();
    if !INSTALLED.load(Ordering::Acquire) || len == 0 {
        return None;
    }
    let page = PAGE_BYTES.load(Ordering::Relaxed);
    let begin = start as usize & !(page - 1);
    let end = (start as usize).checked_add(len)?.checked_add(page - 1)? & !(page - 1);
    for (i, slot) in REGISTRY.iter().enumerate() {
        // pairs with the Release store in Registration::drop
        if slot.claimed.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            continue;
        }
        HIGH.fetch_max(i + 1, Ordering::SeqCst);
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // orders the odd `seq` before the new range, for the handler's Acquire fence
        fence(Ordering::Release);
        slot.faulted.store(false, Ordering::Relaxed);
        slot.start.store(begin, Ordering::Relaxed);
        slot.len.store(end - begin, Ordering::Relaxed);
        // pairs with the handler's Acquire load of `seq`
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
        return Some(Registration { slot: i });
    }
    if !FULL_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "more than {SLOTS} segment mappings at once: a segment truncated by another program may now \
             kill this process with SIGBUS"
        );
    }
    None
}

/// Installs the handler once per process.
fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = if page > 0 && (page as usize).is_power_of_two() { page as usize } else { 4096 };
        PAGE_BYTES.store(page, Ordering::Relaxed);
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current disposition into `old`, a valid sigaction on our stack.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
            tracing::warn!("reading the SIGBUS disposition failed: a truncated segment will kill this process");
            return;
        }
        let _ = PREVIOUS.set(Previous(old));
        // SAFETY: as above.
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        new.sa_sigaction =
            on_sigbus as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as libc::sighandler_t;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `sa_mask` is a valid sigset_t inside `new`.
        unsafe { libc::sigemptyset(&mut new.sa_mask) };
        // SAFETY: installs a handler that is async-signal-safe (module doc); `new` is valid.
        if unsafe { libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) } != 0 {
            tracing::warn!("installing the SIGBUS handler failed: a truncated segment will kill this process");
            return;
        }
        INSTALLED.store(true, Ordering::Release);
    });
}

/// The `SIGBUS` handler.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler (checked for null).
    if !unsafe { zero_fill(info) } {
        // SAFETY: called from the handler with the handler's own arguments.
        unsafe { pass_on(signal, info, context) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Maps a zero page over the faulting page when the fault is a kernel `BUS_ADRERR` inside a
/// registered range, and sets the range's flag. False when the fault is not ours.
///
/// # Safety
/// `info` is null or the siginfo the kernel passed to the handler.
unsafe fn zero_fill(info: *mut libc::siginfo_t) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: non-null, from the kernel (the caller's contract).
    let info = unsafe { &*info };
    // Only a fault the kernel raised for an address with no backing page; `kill -BUS` (code
    // <= 0) and memory errors (BUS_MCEERR_*) are not ours to hide.
    if info.si_code != libc::BUS_ADRERR {
        return false;
    }
    // SAFETY: for a kernel SIGBUS the address field is set.
    let addr = unsafe { info.si_addr() } as usize;
    let Some(slot) = find(addr) else { return false };
    let page = PAGE_BYTES.load(Ordering::Relaxed);
    let at = addr & !(page - 1);
    // Flagged before the zero page goes in, so that no thread reads the zeros and then an
    // unset flag. Should the mapping fail, the fault is passed on and kills the process.
    // pairs with the Acquire load in Registration::faulted
    REGISTRY[slot].faulted.store(true, Ordering::Release);
    // SAFETY: `at` is a page of a registered range, i.e. of the faulting mapping itself
    // (module doc, # Safety), which stays mapped while the faulting thread uses it; replacing
    // that page with a private zero page touches no other memory.
    let mapped = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    mapped != libc::MAP_FAILED
}

/// The registered slot whose range holds `addr`, if any (lock-free, async-signal-safe).
fn find(addr: usize) -> Option<usize> {
    let high = HIGH.load(Ordering::SeqCst).min(SLOTS);
    for (i, slot) in REGISTRY[..high].iter().enumerate() {
        // pairs with the Release stores of `seq` in `register` and Registration::drop
        let before = slot.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            continue;
        }
        let start = slot.start.load(Ordering::Relaxed);
        let len = slot.len.load(Ordering::Relaxed);
        // pairs with the Release fences in `register` and Registration::drop: a changed
        // range shows as a changed `seq` below
        fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) != before || len == 0 {
            continue;
        }
        if addr >= start && addr - start < len {
            return Some(i);
        }
    }
    None
}

/// Hands a fault that is not ours to the previous disposition: its handler where it had
/// one, otherwise the default action (the fault repeats when we return and kills the
/// process).
///
/// # Safety
/// Called from the handler with the handler's arguments.
unsafe fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    if let Some(Previous(old)) = PREVIOUS.get() {
        let handler = old.sa_sigaction;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: with SA_SIGINFO the previous handler has this signature; it was
                // installed for this signal and gets the kernel's own arguments.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(handler) };
                f(signal, info, context);
            } else {
                // SAFETY: without SA_SIGINFO the previous handler takes the signal number.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
                f(signal);
            }
            return;
        }
    }
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask and no flags.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: sigaction is async-signal-safe; `default` is valid.
    unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;

    use super::*;

    /// Maps `pages` pages of a fresh file read-write and shared.
    fn map_file(pages: usize) -> (std::fs::File, *mut u8, usize) {
        let mut file = tempfile::tempfile().expect("a temporary file");
        let page = 4096usize.max(
            // SAFETY: sysconf has no preconditions.
            unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize,
        );
        file.write_all(&vec![7u8; page * pages]).expect("fill the file");
        // SAFETY: maps the file we just wrote; unmapped at the end of each test.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page * pages,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        (file, ptr.cast(), page)
    }

    #[test]
    fn a_registered_mapping_past_the_end_of_its_file_reads_zeros_and_is_flagged() {
        let (file, ptr, page) = map_file(4);
        // SAFETY: the mapping stays until after the registration is dropped below.
        let registration = unsafe { register(ptr, page * 4) }.expect("a free slot");
        assert!(!registration.faulted());
        file.set_len(page as u64).expect("truncate");
        // SAFETY: in bounds of the mapping; the page past the file faults and reads as zeros.
        let byte = unsafe { std::ptr::read_volatile(ptr.add(page * 2 + 8)) };
        assert_eq!(byte, 0);
        assert!(registration.faulted());
        // SAFETY: the first page is still backed by the file.
        assert_eq!(unsafe { std::ptr::read_volatile(ptr) }, 7);
        // A store into a dead page completes too (into the private zero page).
        // SAFETY: in bounds of the mapping.
        unsafe { std::ptr::write_volatile(ptr.add(page * 3), 1) };
        drop(registration);
        // SAFETY: unmaps what map_file mapped; nothing uses it any more.
        unsafe { libc::munmap(ptr.cast(), page * 4) };
    }

    #[test]
    fn slots_are_freed_and_reused() {
        let (_file, ptr, page) = map_file(1);
        for _ in 0..(SLOTS + 10) {
            // SAFETY: the mapping outlives each registration.
            let registration = unsafe { register(ptr, page) }.expect("a slot is free again");
            assert!(!registration.faulted());
        }
        assert!(HIGH.load(Ordering::SeqCst) < SLOTS);
        // SAFETY: as above.
        unsafe { libc::munmap(ptr.cast(), page) };
    }
}
