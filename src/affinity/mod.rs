//! CPU affinity: which CPUs the process may use, handing them to pinned threads without
//! stacking two on one CPU, pinning a thread to one, naming threads.
//!
//! # The process's allowed set ([`allowed_cpus`])
//! Pinned workers are placed on the CPUs the *process* may use, never on the mask of the
//! thread that happens to build a pipeline (a builder pinned to CPU 0 would otherwise put every
//! worker on CPU 0). Linux keeps no mask for a process, only one per thread, so shoal uses one
//! rule that a user can predict:
//!
//! 1. the **hard limit**: the CPUs of the process's cgroup cpuset (`cpuset.cpus.effective`,
//!    what a container or systemd slice allows; pinning outside it fails) that are online; the
//!    online CPUs where no cpuset can be read; the calling thread's mask where neither can;
//! 2. **narrowed to the main thread's mask** (`sched_getaffinity(getpid())`, which is what
//!    `taskset -c 2-5 prog` or `numactl` set at start) when that mask holds more than one CPU
//!    of the hard limit. A main thread on a single CPU is taken as a thread that pinned
//!    itself, not as a limit for the whole process, and is ignored.
//!
//! So `taskset -c 2-5` keeps workers on 2-5, a container keeps them inside its cpuset, and
//! neither the builder's own pinning nor a pinned main thread narrows them. A process started
//! on one CPU only (`taskset -c 3`) is the one case this rule does not follow: its pipelines
//! should be built with `pin(false)`, so that their threads inherit that CPU.
//!
//! # Spreading ([`CpuPlan`])
//! Every pinned thread holds a [`CpuClaim`] while it runs; claims are counted per CPU across
//! the whole process (every pipeline), and a new claim takes the CPU of its plan with the
//! fewest claims (the first in the plan's order on a tie). So no CPU gets a second pinned
//! thread while another CPU of the plan has none, across pipelines too. When there are more
//! threads than free CPUs, [`CpuPlan::claim`] says so: it fails when asked to be strict, and
//! otherwise reports the shortfall for the caller to warn about.

use std::collections::BTreeMap;
use std::sync::Mutex;

pub use crate::sys::affinity::{main_thread_cpus, name_current, pin_current, thread_cpus, usable_cpus};

/// The CPUs the process may use, ascending, by the rule in the [module docs](self).
pub fn allowed_cpus() -> Vec<usize> {
    use crate::sys::affinity::{cgroup_cpus, online_cpus};
    let online = online_cpus().ok().filter(|c| !c.is_empty());
    let limit = match (cgroup_cpus(), online) {
        (Some(cgroup), Some(online)) => {
            let both: Vec<usize> = cgroup.iter().copied().filter(|c| online.contains(c)).collect();
            if both.is_empty() {
                online
            } else {
                both
            }
        }
        (Some(set), None) | (None, Some(set)) => set,
        (None, None) => usable_cpus().ok().filter(|c| !c.is_empty()).unwrap_or_else(|| vec![0]),
    };
    let main: Vec<usize> = main_thread_cpus().unwrap_or_default().into_iter().filter(|c| limit.contains(c)).collect();
    if main.len() > 1 {
        main
    } else {
        limit
    }
}

/// Pinned threads per CPU, across every plan of the process.
static CLAIMS: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

fn claims() -> std::sync::MutexGuard<'static, BTreeMap<usize, usize>> {
    // The map is consistent between statements; a panic elsewhere cannot tear it.
    CLAIMS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One pinned thread's hold on a CPU: counted until dropped (when the thread exits).
#[derive(Debug)]
pub struct CpuClaim {
    cpu: usize,
}

impl CpuClaim {
    /// The CPU to pin to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl Drop for CpuClaim {
    fn drop(&mut self) {
        let mut map = claims();
        if let Some(n) = map.get_mut(&self.cpu) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.cpu);
            }
        }
    }
}

/// More threads to pin than free CPUs: from [`CpuPlan::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Oversubscribed {
    /// Threads asked for.
    pub threads: usize,
    /// CPUs in the plan.
    pub cpus: usize,
    /// CPUs of the plan with no pinned thread (of any pipeline) when asked.
    pub free: usize,
}

impl std::fmt::Display for Oversubscribed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} threads to pin but {} of the {} allowed CPUs free ({} already hold pinned threads)",
            self.threads,
            self.free,
            self.cpus,
            self.cpus - self.free
        )
    }
}

impl std::error::Error for Oversubscribed {}

/// Hands CPUs to pinned threads, spread over a set of CPUs (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct CpuPlan {
    cpus: Vec<usize>,
}

impl CpuPlan {
    /// A plan over the process's [`allowed_cpus`].
    pub fn new() -> CpuPlan {
        CpuPlan { cpus: allowed_cpus() }
    }

    /// A plan over the given CPUs (CPU 0 when empty), in the order given, without repeats.
    pub fn with_cpus(cpus: Vec<usize>) -> CpuPlan {
        let mut unique = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            if !unique.contains(&cpu) {
                unique.push(cpu);
            }
        }
        if unique.is_empty() {
            unique.push(0);
        }
        CpuPlan { cpus: unique }
    }

    /// CPUs in the plan.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// CPUs of the plan that hold no pinned thread now.
    pub fn free(&self) -> usize {
        let map = claims();
        self.cpus.iter().filter(|c| !map.contains_key(c)).count()
    }

    /// Claims a CPU for each of `threads` threads, the least used first (see the
    /// [module docs](self)). Returns the claims and, when some threads had to share a CPU,
    /// the shortfall.
    ///
    /// # Errors
    /// With `strict`, [`Oversubscribed`] instead of sharing (nothing is claimed).
    pub fn claim(
        &self,
        threads: usize,
        strict: bool,
    ) -> Result<(Vec<CpuClaim>, Option<Oversubscribed>), Oversubscribed> {
        let mut map = claims();
        let free = self.cpus.iter().filter(|c| !map.contains_key(c)).count();
        let short = (threads > free).then_some(Oversubscribed { threads, cpus: self.cpus.len(), free });
        if let (Some(short), true) = (short, strict) {
            return Err(short);
        }
        let mut out = Vec::with_capacity(threads);
        for _ in 0..threads {
            // `min_by_key` keeps the first of equal loads: the plan's order breaks ties.
            let cpu = *self.cpus.iter().min_by_key(|c| map.get(c).copied().unwrap_or(0)).unwrap_or(&0);
            *map.entry(cpu).or_insert(0) += 1;
            out.push(CpuClaim { cpu });
        }
        Ok((out, short))
    }
}

impl Default for CpuPlan {
    fn default() -> Self {
        CpuPlan::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_within_the_usable_set() {
        let cpus = usable_cpus().expect("sched_getaffinity");
        assert!(!cpus.is_empty());
        let target = *cpus.last().expect("a cpu");
        std::thread::spawn(move || {
            pin_current(target).expect("pin");
            assert_eq!(usable_cpus().expect("affinity"), vec![target]);
            name_current("shoal-test-pinned-thread");
        })
        .join()
        .expect("thread");
        assert!(pin_current(1 << 20).is_err());
    }

    #[test]
    fn the_allowed_set_ignores_the_calling_thread_and_a_single_cpu_main_thread() {
        let allowed = allowed_cpus();
        let online = crate::sys::affinity::online_cpus().expect("online cpus");
        assert!(!allowed.is_empty() && allowed.iter().all(|c| online.contains(c)), "{allowed:?} in {online:?}");
        let first = allowed[0];
        let from_pinned = std::thread::spawn(move || {
            pin_current(first).expect("pin");
            allowed_cpus()
        })
        .join()
        .expect("thread");
        assert_eq!(from_pinned, allowed, "a pinned caller does not narrow the set");
    }

    #[test]
    fn claims_spread_over_the_least_used_cpus_across_plans() {
        // CPU numbers no real plan of this process uses, so other tests cannot interfere.
        let cpus = vec![900, 901, 902, 903];
        let a = CpuPlan::with_cpus(cpus.clone());
        let b = CpuPlan::with_cpus(vec![903, 902, 901, 900]);
        let (first, short) = a.claim(2, true).expect("four free");
        assert_eq!(short, None);
        assert_eq!(first.iter().map(CpuClaim::cpu).collect::<Vec<_>>(), [900, 901]);
        assert_eq!(a.free(), 2);
        // The other plan gets the two CPUs nobody holds, before any is shared.
        let (second, _) = b.claim(2, true).expect("two free");
        assert_eq!(second.iter().map(CpuClaim::cpu).collect::<Vec<_>>(), [903, 902]);
        assert_eq!(
            b.claim(1, true).map(|_| ()),
            Err(Oversubscribed { threads: 1, cpus: 4, free: 0 }),
            "strict: no sharing"
        );
        // Not strict: shares, and says by how much.
        let (third, short) = a.claim(5, false).expect("not strict");
        assert_eq!(short, Some(Oversubscribed { threads: 5, cpus: 4, free: 0 }));
        assert_eq!(third.iter().map(CpuClaim::cpu).collect::<Vec<_>>(), [900, 901, 902, 903, 900]);
        drop(third);
        drop(first); // 900 and 901 are free again
        assert_eq!(a.free(), 2);
        let (again, _) = a.claim(1, true).expect("free again");
        assert_eq!(again[0].cpu(), 900);
        drop((again, second));
        assert_eq!(a.free(), 4);
        assert_eq!(CpuPlan::with_cpus(vec![]).cpus(), [0]);
        assert_eq!(CpuPlan::with_cpus(vec![2, 2, 1]).cpus(), [2, 1]);
    }
}
