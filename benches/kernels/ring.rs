//! Ring hop kernels: `u64`s from a producer thread to a consumer thread through shoal's ring
//! and through raw rtrb, one at a time and in batches.
//!
//! Both threads are pinned to the two CPUs given (see [`cpu_pair`]) and the clock runs from
//! the moment both run (thread start and pinning are outside it) until the consumer has the
//! last value.

use std::hint::{black_box, spin_loop};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use shoal::ring::{self, WaitStrategy};

use super::KernelError;

/// Slots in every ring under test.
pub const RING_CAPACITY: usize = 4096;
/// Largest batch of the batched hops.
pub const RING_BATCH_MAX: usize = 256;

/// The CPUs the two threads of a pair are pinned to: the first two of the process's allowed ones
/// ([`shoal::affinity::allowed_cpus`]), or none when fewer than two are allowed.
pub fn cpu_pair() -> Option<(usize, usize)> {
    let cpus = shoal::affinity::allowed_cpus();
    match cpus.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    }
}

/// Names the calling thread and pins it to `cpu` when there is one (a failure to pin is
/// reported on stderr and the thread runs unpinned).
pub fn pin(cpu: Option<usize>, name: &str) {
    shoal::affinity::name_current(name);
    if let Some(cpu) = cpu {
        if let Err(e) = shoal::affinity::pin_current(cpu) {
            eprintln!("shoal bench: could not pin {name} to cpu {cpu}: {e}");
        }
    }
}

/// Runs `producer` and `consumer` on two threads (pinned to `cpus` when given) started
/// together; returns the time from when both run until the consumer is done.
///
/// # Errors
/// [`KernelError::ThreadPanicked`] when either thread panicked.
pub fn timed_pair(
    cpus: Option<(usize, usize)>,
    producer: impl FnOnce() + Send,
    consumer: impl FnOnce() + Send,
) -> Result<Duration, KernelError> {
    let barrier = Barrier::new(2);
    thread::scope(|s| {
        let p = s.spawn(|| {
            pin(cpus.map(|c| c.0), "bench-producer");
            barrier.wait();
            let start = Instant::now();
            producer();
            start
        });
        let c = s.spawn(|| {
            pin(cpus.map(|c| c.1), "bench-consumer");
            barrier.wait();
            consumer();
            Instant::now()
        });
        match (p.join(), c.join()) {
            (Ok(start), Ok(end)) => Ok(end.saturating_duration_since(start)),
            _ => Err(KernelError::ThreadPanicked),
        }
    })
}

/// `total` values through a shoal ring, `push_wait`/`pop_wait` with `BusySpin`.
///
/// # Errors
/// [`KernelError::ThreadPanicked`] when a thread panicked.
pub fn hop_one_shoal(total: u64, cpus: Option<(usize, usize)>) -> Result<Duration, KernelError> {
    let (mut tx, mut rx) = ring::channel::<u64>(RING_CAPACITY, WaitStrategy::BusySpin);
    timed_pair(
        cpus,
        move || {
            for i in 0..total {
                // The consumer pops every value before it drops its end.
                tx.push_wait(i).expect("the consumer is alive until the last value");
            }
        },
        move || {
            let mut sum = 0u64;
            for _ in 0..total {
                sum = sum.wrapping_add(rx.pop_wait().expect("the producer pushes every value"));
            }
            black_box(sum);
        },
    )
}

/// `total` values through raw rtrb, spinning `push`/`pop`.
///
/// # Errors
/// [`KernelError::ThreadPanicked`] when a thread panicked.
pub fn hop_one_rtrb(total: u64, cpus: Option<(usize, usize)>) -> Result<Duration, KernelError> {
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(RING_CAPACITY);
    timed_pair(
        cpus,
        move || {
            for i in 0..total {
                while tx.push(i).is_err() {
                    spin_loop();
                }
            }
        },
        move || {
            let mut sum = 0u64;
            for _ in 0..total {
                loop {
                    if let Ok(v) = rx.pop() {
                        sum = sum.wrapping_add(v);
                        break;
                    }
                    spin_loop();
                }
            }
            black_box(sum);
        },
    )
}

/// `total` values through a shoal ring in batches of up to [`RING_BATCH_MAX`]:
/// `reserve`/`commit` and `read`/`commit`.
///
/// # Errors
/// [`KernelError::ThreadPanicked`] when a thread panicked.
pub fn hop_batched_shoal(total: u64, cpus: Option<(usize, usize)>) -> Result<Duration, KernelError> {
    let (mut tx, mut rx) = ring::channel::<u64>(RING_CAPACITY, WaitStrategy::BusySpin);
    timed_pair(
        cpus,
        move || {
            let mut next = 0u64;
            while next < total {
                let mut r = tx.reserve(RING_BATCH_MAX.min((total - next) as usize));
                if r.is_empty() {
                    spin_loop();
                    continue;
                }
                let n = r.len();
                let (a, b) = r.slots();
                for slot in a.iter_mut().chain(b.iter_mut()) {
                    slot.write(next);
                    next += 1;
                }
                // SAFETY: the loop above initialised all `n` reserved slots.
                unsafe { r.commit(n) };
            }
        },
        move || {
            let (mut sum, mut got) = (0u64, 0u64);
            while got < total {
                let batch = rx.read(RING_BATCH_MAX);
                if batch.is_empty() {
                    spin_loop();
                    continue;
                }
                let (a, b) = batch.as_slices();
                for &v in a.iter().chain(b) {
                    sum = sum.wrapping_add(v);
                }
                got += batch.len() as u64;
                batch.commit();
            }
            black_box(sum);
        },
    )
}

/// `total` values through raw rtrb in chunks of up to [`RING_BATCH_MAX`]:
/// `write_chunk_uninit` and `read_chunk`.
///
/// # Errors
/// [`KernelError::ThreadPanicked`] when a thread panicked.
pub fn hop_batched_rtrb(total: u64, cpus: Option<(usize, usize)>) -> Result<Duration, KernelError> {
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(RING_CAPACITY);
    timed_pair(
        cpus,
        move || {
            let mut next = 0u64;
            while next < total {
                let want = RING_BATCH_MAX.min((total - next) as usize).min(tx.slots());
                if want == 0 {
                    spin_loop();
                    continue;
                }
                let Ok(mut chunk) = tx.write_chunk_uninit(want) else { unreachable!("{want} slots are free") };
                let (a, b) = chunk.as_mut_slices();
                for slot in a.iter_mut().chain(b.iter_mut()) {
                    slot.write(next);
                    next += 1;
                }
                // SAFETY: the loop above initialised all `want` slots.
                unsafe { chunk.commit_all() };
            }
        },
        move || {
            let (mut sum, mut got) = (0u64, 0u64);
            while got < total {
                let n = RING_BATCH_MAX.min(rx.slots());
                if n == 0 {
                    spin_loop();
                    continue;
                }
                let Ok(chunk) = rx.read_chunk(n) else { unreachable!("{n} slots are readable") };
                let (a, b) = chunk.as_slices();
                for &v in a.iter().chain(b) {
                    sum = sum.wrapping_add(v);
                }
                got += n as u64;
                chunk.commit_all();
            }
            black_box(sum);
        },
    )
}
