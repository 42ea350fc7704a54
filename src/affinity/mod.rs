//! CPU affinity: which CPUs this process may use, pinning a thread to one, naming threads.
//!
//! The usable set comes from `sched_getaffinity(2)`, so `taskset`, cpusets and cgroup limits
//! are respected. [`CpuPlan`] hands CPUs to workers round robin; asking for more workers than
//! CPUs still works (workers share cores) and is said once in the log.

use std::sync::Once;

pub use crate::sys::affinity::{name_current, pin_current, usable_cpus};

/// Hands CPUs to workers, round robin over the usable set.
#[derive(Clone, Debug)]
pub struct CpuPlan {
    cpus: Vec<usize>,
    next: usize,
}

static OVERSUBSCRIBED: Once = Once::new();

impl CpuPlan {
    /// A plan over the usable CPUs (a single CPU 0 if they cannot be read).
    pub fn new() -> CpuPlan {
        let cpus = usable_cpus().ok().filter(|c| !c.is_empty()).unwrap_or_else(|| vec![0]);
        CpuPlan { cpus, next: 0 }
    }

    /// A plan over the given CPUs.
    pub fn with_cpus(cpus: Vec<usize>) -> CpuPlan {
        CpuPlan { cpus: if cpus.is_empty() { vec![0] } else { cpus }, next: 0 }
    }

    /// CPUs in the plan.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// The CPU for the next worker. Once more workers than CPUs were handed out, says so
    /// (once per process): workers then share cores.
    pub fn next_cpu(&mut self) -> usize {
        if self.next == self.cpus.len() {
            let n = self.cpus.len();
            OVERSUBSCRIBED.call_once(|| {
                tracing::warn!("more pinned workers than the {n} usable CPUs; workers share cores");
            });
        }
        let cpu = self.cpus[self.next % self.cpus.len()];
        self.next += 1;
        cpu
    }

    /// Workers handed a CPU so far.
    pub fn assigned(&self) -> usize {
        self.next
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
    fn pins_within_the_usable_set_and_round_robins() {
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
        let mut plan = CpuPlan::with_cpus(vec![3, 5]);
        let got: Vec<usize> = (0..5).map(|_| plan.next_cpu()).collect();
        assert_eq!(got, vec![3, 5, 3, 5, 3]);
        assert_eq!(plan.assigned(), 5);
    }
}
