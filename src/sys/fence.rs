//! An asymmetric Dekker fence: `membarrier(2)` on the rare side, a compiler fence on the hot
//! side.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// An asymmetric Dekker fence: a compiler fence on the hot side (the side that makes
/// progress: a push, an append), a `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` on the cold
/// side (a thread about to sleep).
///
/// The process registers with `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` once (so heavy
/// fences from other processes, such as a log tailer, reach its threads too). Where that
/// fails (kernels before 4.16, seccomp), the light side falls back to a real fence, and the
/// protocol stays correct since a full fence on both sides is the classic form.
/// `membarrier` is called by hand through `libc`: no maintained crate wraps its
/// global-expedited commands.
pub struct AsymmetricFence;

static REGISTERED: OnceLock<bool> = OnceLock::new();

impl AsymmetricFence {
    /// True when this process is registered for heavy fences (registering on first call).
    #[inline]
    pub fn registered() -> bool {
        *REGISTERED.get_or_init(|| {
            const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;
            if cfg!(miri) {
                return false;
            }
            // SAFETY: membarrier takes no pointers.
            unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0 }
        })
    }

    /// The heavy side: a full barrier here and in every running thread of registered
    /// processes. Where `membarrier` fails, the light side uses real fences (see
    /// [`AsymmetricFence::registered`]), so a local fence suffices.
    pub fn heavy() {
        const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
        std::sync::atomic::fence(Ordering::SeqCst);
        if !cfg!(miri) {
            // SAFETY: membarrier takes no pointers.
            unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) };
        }
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// The light side: a compiler fence when `registered`, else a full fence.
    #[inline(always)]
    pub fn light(registered: bool) {
        if registered {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            std::sync::atomic::fence(Ordering::SeqCst);
        }
    }
}
