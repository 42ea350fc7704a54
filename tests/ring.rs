//! The SPSC ring layer (`shoal::ring`) against its contract.
//!
//! - A property test drives one ring, single-threaded, against a `VecDeque` model through
//!   random sequences of pushes, slices, reservations, pops, batch reads and the drop of
//!   either end, checking every outcome (`Full`, `Empty`, `Closed`), every value and the
//!   free/readable slot counts after each step. A second one checks that every value put in
//!   a ring is dropped exactly once, whichever way it leaves.
//! - The park/wake protocol (`ring::wait`) is a custom atomic protocol; it is covered by the
//!   stress tests here (ARCHITECTURE.md: "a stress test for every custom atomic protocol"):
//!   a producer and a consumer that pause at random so that both sides park, over every
//!   wait strategy, must deliver every event exactly once and in order. A lost wake-up is
//!   only recovered by the 50 ms `PARK_TIMEOUT`, so the runs are sized to force hundreds of
//!   parks and must finish in a small fraction of what that recovery would cost. Both ends
//!   also move to fresh threads between parked waits, many rounds over.
//! - Fan-in and fan-out under concurrency, close semantics across threads, and the idle
//!   check: a parked consumer (or producer) uses near zero CPU.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal::ring::{self, channel, Closed, PopError, PushError, WaitStrategy};

const STRATEGIES: [WaitStrategy; 3] = [WaitStrategy::BusySpin, WaitStrategy::SpinThenYield, WaitStrategy::Park];

// --- single-threaded model ---------------------------------------------------------------

/// One step against the ring and the model. Sizes are small so that rings fill, wrap and
/// drain often.
#[derive(Clone, Debug)]
enum Op {
    Push,
    /// `push_quiet` then `notify`.
    PushQuiet,
    PushSlice(usize),
    /// Reserve `reserve` slots, write the first `write` of them, then commit them, or drop
    /// the reservation uncommitted.
    Reserve {
        reserve: usize,
        write: usize,
        commit: bool,
    },
    /// Reserve `reserve` slots, `Reservation::push` `push` values (those beyond the
    /// reservation come back), then `commit_written`, or drop the reservation (which drops
    /// the pushed values and publishes nothing).
    ReservePush {
        reserve: usize,
        push: usize,
        commit: bool,
    },
    /// Reserve, then `fill_from_iter` with `offer` values.
    ReserveFill {
        reserve: usize,
        offer: usize,
    },
    Pop,
    /// Read up to `max` values in place, then commit the batch or drop it (which commits too).
    Read {
        max: usize,
        commit: bool,
    },
    DropProducer,
    DropConsumer,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Push),
        2 => Just(Op::PushQuiet),
        3 => (0usize..12).prop_map(Op::PushSlice),
        3 => (0usize..12, 0usize..12, any::<bool>())
            .prop_map(|(reserve, write, commit)| Op::Reserve { reserve, write, commit }),
        3 => (0usize..12, 0usize..12, any::<bool>())
            .prop_map(|(reserve, push, commit)| Op::ReservePush { reserve, push, commit }),
        2 => (0usize..12, 0usize..12).prop_map(|(reserve, offer)| Op::ReserveFill { reserve, offer }),
        6 => Just(Op::Pop),
        3 => (0usize..12, any::<bool>()).prop_map(|(max, commit)| Op::Read { max, commit }),
        1 => Just(Op::DropProducer),
        1 => Just(Op::DropConsumer),
    ]
}

fn cases() -> u32 {
    if cfg!(miri) {
        8
    } else {
        512
    }
}

/// What a push must return: `Ok` while a slot is free (even with the consumer gone: the
/// value then goes unread), else `Closed` when the consumer is gone, else `Full`.
fn expected_push(len: usize, capacity: usize, consumer_alive: bool, v: u64) -> Result<(), PushError<u64>> {
    if len < capacity {
        Ok(())
    } else if consumer_alive {
        Err(PushError::Full(v))
    } else {
        Err(PushError::Closed(v))
    }
}

fn run_model(capacity: usize, wait: WaitStrategy, ops: &[Op]) {
    let (tx, rx) = channel::<u64>(capacity, wait);
    let (mut tx, mut rx) = (Some(tx), Some(rx));
    let mut model: VecDeque<u64> = VecDeque::new();
    let mut next = 0u64;
    for (step, op) in ops.iter().enumerate() {
        let consumer_alive = rx.is_some();
        let producer_alive = tx.is_some();
        match (op, tx.as_mut(), rx.as_mut()) {
            (Op::Push, Some(p), _) | (Op::PushQuiet, Some(p), _) => {
                let want = expected_push(model.len(), capacity, consumer_alive, next);
                let got = if matches!(op, Op::Push) {
                    p.push(next)
                } else {
                    let r = p.push_quiet(next);
                    p.notify();
                    r
                };
                assert_eq!(got, want, "step {step}: {op:?}");
                if got.is_ok() {
                    model.push_back(next);
                }
                next += 1;
            }
            (Op::PushSlice(n), Some(p), _) => {
                let values: Vec<u64> = (next..next + *n as u64).collect();
                let pushed = p.push_slice(&values);
                assert_eq!(pushed, (*n).min(capacity - model.len()), "step {step}: {op:?}");
                model.extend(&values[..pushed]);
                next += pushed as u64;
            }
            (Op::Reserve { reserve, write, commit }, Some(p), _) => {
                let mut r = p.reserve(*reserve);
                let len = r.len();
                assert_eq!(len, (*reserve).min(capacity - model.len()), "step {step}: {op:?}");
                assert_eq!(r.is_empty(), len == 0);
                let write = (*write).min(len);
                let (a, b) = r.slots();
                assert_eq!(a.len() + b.len(), len, "step {step}: both parts of the reservation");
                for (i, slot) in a.iter_mut().chain(b.iter_mut()).take(write).enumerate() {
                    slot.write(next + i as u64);
                }
                if *commit {
                    // SAFETY: the loop above initialised the first `write` slots, first part
                    // then second.
                    unsafe { r.commit(write) };
                    model.extend(next..next + write as u64);
                    next += write as u64;
                }
                // else: the reservation ends uncommitted and publishes nothing
            }
            (Op::ReservePush { reserve, push, commit }, Some(p), _) => {
                let mut r = p.reserve(*reserve);
                let len = r.len();
                assert_eq!(len, (*reserve).min(capacity - model.len()), "step {step}: {op:?}");
                for i in 0..*push as u64 {
                    let fits = (i as usize) < len;
                    assert_eq!(r.push(next + i), if fits { Ok(()) } else { Err(next + i) }, "step {step}: {op:?}");
                    assert_eq!(r.written(), len.min(i as usize + 1), "step {step}: {op:?}");
                    let (a, b) = r.slots();
                    assert_eq!(a.len() + b.len(), len - r.written(), "step {step}: unwritten slots");
                }
                if *commit {
                    let written = r.commit_written();
                    assert_eq!(written, len.min(*push), "step {step}: {op:?}");
                    model.extend(next..next + written as u64);
                    next += written as u64;
                }
                // else: dropped, the pushed values go with it and nothing is published
            }
            (Op::ReserveFill { reserve, offer }, Some(p), _) => {
                let r = p.reserve(*reserve);
                let len = r.len();
                let written = r.fill_from_iter(next..next + *offer as u64);
                assert_eq!(written, len.min(*offer), "step {step}: {op:?}");
                model.extend(next..next + written as u64);
                next += written as u64;
            }
            (Op::Pop, _, Some(c)) => {
                let want = match model.pop_front() {
                    Some(v) => Ok(v),
                    None if producer_alive => Err(PopError::Empty),
                    None => Err(PopError::Closed),
                };
                assert_eq!(c.pop(), want, "step {step}: {op:?}");
            }
            (Op::Read { max, commit }, _, Some(c)) => {
                let batch = c.read(*max);
                let n = (*max).min(model.len());
                assert_eq!(batch.len(), n, "step {step}: {op:?}");
                assert_eq!(batch.is_empty(), n == 0);
                let (a, b) = batch.as_slices();
                let got: Vec<u64> = a.iter().chain(b).copied().collect();
                let want: Vec<u64> = model.drain(..n).collect();
                assert_eq!(got, want, "step {step}: {op:?}");
                if *commit {
                    batch.commit();
                } else {
                    drop(batch);
                }
            }
            (Op::DropProducer, Some(_), _) => tx = None,
            (Op::DropConsumer, _, Some(_)) => rx = None,
            // An operation on an end that is gone: nothing to do.
            _ => {}
        }
        if let Some(p) = &tx {
            assert_eq!(p.capacity(), capacity);
            assert_eq!(p.slots(), capacity - model.len(), "step {step}: producer slots after {op:?}");
            assert_eq!(p.is_closed(), rx.is_none(), "step {step}");
        }
        if let Some(c) = &rx {
            assert_eq!(c.capacity(), capacity);
            assert_eq!(c.slots(), model.len(), "step {step}: consumer slots after {op:?}");
            assert_eq!(c.is_empty(), model.is_empty(), "step {step}");
            assert_eq!(c.is_closed(), tx.is_none() && model.is_empty(), "step {step}");
        }
    }
    // Whatever is left drains, then the ring reports the end.
    if let Some(mut c) = rx {
        drop(tx);
        let rest: Vec<u64> = std::iter::from_fn(|| c.pop().ok()).collect();
        assert_eq!(rest, Vec::from(model));
        assert_eq!(c.pop(), Err(PopError::Closed));
        assert_eq!(c.pop_wait(), Err(Closed));
        assert_eq!(c.wait_readable(|| false), Err(Closed));
    }
}

/// A value that counts its drops, to check that every value in a ring is dropped exactly
/// once however it leaves (popped, committed in a batch, left in the ring at the end,
/// handed back by a failed push).
#[derive(Debug)]
struct Tracked {
    id: usize,
    drops: Arc<Vec<AtomicU64>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops[self.id].fetch_add(1, Ordering::Relaxed);
    }
}

fn run_drops(capacity: usize, ops: &[Op]) {
    let drops: Arc<Vec<AtomicU64>> = Arc::new((0..ops.len() * 12 + 1).map(|_| AtomicU64::new(0)).collect());
    let mut made = 0usize;
    let mut make = || {
        made += 1;
        Tracked { id: made - 1, drops: drops.clone() }
    };
    let (tx, rx) = channel::<Tracked>(capacity, WaitStrategy::Park);
    let (mut tx, mut rx) = (Some(tx), Some(rx));
    let mut popped = 0usize; // ids leave the ring in order
    for op in ops {
        match (op, tx.as_mut(), rx.as_mut()) {
            (Op::Push | Op::PushQuiet, Some(p), _) => {
                let _ = p.push(make());
            }
            (Op::PushSlice(n), Some(p), _) => {
                for _ in 0..*n {
                    if p.push_quiet(make()).is_err() {
                        break;
                    }
                }
                p.notify();
            }
            (Op::Reserve { reserve, write, commit }, Some(p), _) => {
                let mut r = p.reserve(*reserve);
                if *commit {
                    let write = (*write).min(r.len());
                    let (a, b) = r.slots();
                    for slot in a.iter_mut().chain(b.iter_mut()).take(write) {
                        slot.write(make());
                    }
                    // SAFETY: the loop above initialised the first `write` slots, first part
                    // then second.
                    unsafe { r.commit(write) };
                }
                // else: the reservation ends uncommitted. (Slots written but never committed
                // are not the ring's to drop, they would leak; this one holds nothing.)
            }
            (Op::ReservePush { reserve, push, commit }, Some(p), _) => {
                let mut r = p.reserve(*reserve);
                for _ in 0..*push {
                    // A value that does not fit comes back and is dropped here.
                    let _ = r.push(make());
                }
                if *commit {
                    r.commit_written();
                }
                // else: dropping the reservation drops what was pushed into it
            }
            (Op::ReserveFill { reserve, offer }, Some(p), _) => {
                let r = p.reserve(*reserve);
                let offer = *offer;
                let _ = r.fill_from_iter((0..offer).map(|_| make()));
            }
            (Op::Pop, _, Some(c)) => {
                if let Ok(v) = c.pop() {
                    assert!(v.id >= popped, "values leave in order");
                    popped = v.id + 1;
                }
            }
            (Op::Read { max, commit }, _, Some(c)) => {
                let batch = c.read(*max);
                let (a, b) = batch.as_slices();
                for v in a.iter().chain(b) {
                    assert!(v.id >= popped, "values leave in order");
                    popped = v.id + 1;
                    assert_eq!(v.drops[v.id].load(Ordering::Relaxed), 0, "a value in a batch is still alive");
                }
                if *commit {
                    batch.commit();
                } else {
                    drop(batch);
                }
            }
            (Op::DropProducer, Some(_), _) => tx = None,
            (Op::DropConsumer, _, Some(_)) => rx = None,
            _ => {}
        }
    }
    drop(tx);
    drop(rx);
    for (id, count) in drops.iter().enumerate().take(made) {
        assert_eq!(count.load(Ordering::Relaxed), 1, "value {id} of {made} dropped a wrong number of times");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_a_vecdeque_model(
        capacity in 1usize..10,
        wait in prop_oneof![Just(WaitStrategy::BusySpin), Just(WaitStrategy::SpinThenYield), Just(WaitStrategy::Park)],
        ops in prop::collection::vec(op(), 0..200),
    ) {
        run_model(capacity, wait, &ops);
    }

    #[test]
    fn every_value_is_dropped_exactly_once(capacity in 1usize..8, ops in prop::collection::vec(op(), 0..100)) {
        run_drops(capacity, &ops);
    }
}

#[test]
fn model_covers_wrap_around_in_both_parts() {
    // A fixed sequence that reserves and reads across the end of the array, so both parts
    // of a reservation and of a batch are non-empty at least once.
    let ops = [
        Op::PushSlice(5),
        Op::Read { max: 4, commit: true },
        Op::Reserve { reserve: 6, write: 6, commit: true },
        Op::Read { max: 7, commit: false },
        Op::ReserveFill { reserve: 7, offer: 9 },
        Op::Read { max: 3, commit: true },
        Op::DropProducer,
        Op::Pop,
    ];
    run_model(7, WaitStrategy::Park, &ops);
    let (mut tx, mut rx) = channel::<u64>(4, WaitStrategy::BusySpin);
    assert_eq!(tx.push_slice(&[1, 2, 3]), 3);
    rx.read(3).commit();
    let mut r = tx.reserve(4);
    let (a, b) = r.slots();
    assert_eq!((a.len(), b.len()), (1, 3), "a reservation that wraps comes in two parts");
}

// --- threads ------------------------------------------------------------------------------

/// The threaded tests run one at a time: two busy-spinning threads of one test would
/// otherwise take both cores of a small machine from another test's timing checks.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn seed() -> u64 {
    let seed = std::env::var("SHOAL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5140a1);
    eprintln!("seed {seed} (set SHOAL_TEST_SEED to replay)");
    seed
}

/// Joins `handle`, failing the test when the thread runs past `limit` (a hang shows as a
/// failure, not a stuck suite).
fn join_within<T>(handle: thread::JoinHandle<T>, limit: Duration, what: &str) -> T {
    let start = Instant::now();
    while !handle.is_finished() {
        assert!(start.elapsed() < limit, "{what} did not finish within {limit:?}");
        thread::sleep(Duration::from_millis(1));
    }
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A random pause: now and then a sleep (the other side parks), more often a short spin (the
/// other side is caught in the middle of going to sleep).
fn pause(rng: &mut StdRng, sleep_one_in: u32) {
    if rng.gen_ratio(1, sleep_one_in) {
        thread::sleep(Duration::from_micros(rng.gen_range(20..300)));
    } else if rng.gen_ratio(1, 40) {
        for _ in 0..rng.gen_range(0..2_000) {
            std::hint::spin_loop();
        }
    }
}

/// One producer and one consumer with random pauses and a mix of single and batch
/// operations; returns the time the transfer took.
fn stress(wait: WaitStrategy, events: u64, seed: u64) -> Duration {
    let (mut tx, mut rx) = channel::<u64>(8, wait);
    let start = Instant::now();
    let producer = thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut next = 0u64;
        while next < events {
            if rng.gen_ratio(1, 5) {
                let want = rng.gen_range(1..16u64).min(events - next);
                let written = tx.reserve(want as usize).fill_from_iter(next..next + want) as u64;
                if written == 0 {
                    tx.push_wait(next).expect("the consumer outlives the producer");
                    next += 1;
                } else {
                    next += written;
                }
            } else {
                tx.push_wait(next).expect("the consumer outlives the producer");
                next += 1;
            }
            pause(&mut rng, 300);
        }
        // Dropping the producer closes the ring.
    });
    let consumer = thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xc0ffee);
        let mut expect = 0u64;
        loop {
            if rng.gen_ratio(1, 5) {
                match rx.wait_readable(|| false) {
                    Ok(true) => {
                        let batch = rx.read(rng.gen_range(1..16));
                        assert!(!batch.is_empty(), "wait_readable said a value is readable");
                        let (a, b) = batch.as_slices();
                        for &v in a.iter().chain(b) {
                            assert_eq!(v, expect, "{wait:?}: out of order or duplicated");
                            expect += 1;
                        }
                        batch.commit();
                    }
                    Ok(false) => panic!("wait_readable without a stop returned with nothing readable"),
                    Err(Closed) => break,
                }
            } else {
                match rx.pop_wait() {
                    Ok(v) => {
                        assert_eq!(v, expect, "{wait:?}: out of order or duplicated");
                        expect += 1;
                    }
                    Err(Closed) => break,
                }
            }
            pause(&mut rng, 300);
        }
        assert_eq!(rx.pop(), Err(PopError::Closed));
        expect
    });
    join_within(producer, Duration::from_secs(120), "the producer");
    let got = join_within(consumer, Duration::from_secs(120), "the consumer");
    assert_eq!(got, events, "{wait:?}: every event exactly once");
    start.elapsed()
}

#[test]
fn wait_protocol_delivers_exactly_once_in_order_for_every_strategy() {
    let _serial = serial();
    let seed = seed();
    let events: u64 = if cfg!(miri) { 200 } else { 100_000 };
    for wait in STRATEGIES {
        let took = stress(wait, events, seed);
        eprintln!("{wait:?}: {events} events in {took:?}");
        if wait == WaitStrategy::Park && !cfg!(miri) {
            // Both sides sleep about events/300 times each (about 670 parks in all); a lost
            // wake-up is only recovered by the 50 ms park timeout, so losing even a sixth of
            // them would take past this bound. A healthy run takes well under a second.
            assert!(took < Duration::from_secs(6), "{wait:?}: {took:?} hints at lost wake-ups");
        }
    }
}

#[test]
fn endpoints_moved_to_new_threads_between_parked_waits_deliver_everything_in_order() {
    // `Producer` and `Consumer` are `Send`: each round both ends move to fresh threads, and
    // their waits sleep there, while a wake-up may still be on its way to the thread of the
    // round before.
    let _serial = serial();
    let mut rng = StdRng::seed_from_u64(seed());
    let (mut tx, mut rx) = channel::<u64>(4, WaitStrategy::Park);
    let (rounds, per_round) = if cfg!(miri) { (3, 20) } else { (200, 500u64) };
    for round in 0..rounds {
        let first = round * per_round;
        let (producer_seed, consumer_seed): (u64, u64) = (rng.gen(), rng.gen());
        let consumer = thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(consumer_seed);
            let mut expect = first;
            while expect < first + per_round {
                if rng.gen_ratio(1, 4) {
                    assert_eq!(rx.wait_readable(|| false), Ok(true));
                    let batch = rx.read((first + per_round - expect) as usize);
                    let (a, b) = batch.as_slices();
                    for &v in a.iter().chain(b) {
                        assert_eq!(v, expect, "round {round}: out of order or duplicated");
                        expect += 1;
                    }
                    batch.commit();
                } else {
                    assert_eq!(rx.pop_wait(), Ok(expect), "round {round}: out of order or duplicated");
                    expect += 1;
                }
                pause(&mut rng, 50);
            }
            rx
        });
        let producer = thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(producer_seed);
            let mut next = first;
            while next < first + per_round {
                if rng.gen_ratio(1, 4) {
                    let values: Vec<u64> = (next..(next + rng.gen_range(1..10)).min(first + per_round)).collect();
                    assert_eq!(tx.push_slice_wait(&values, || false), Ok(values.len()));
                    next += values.len() as u64;
                } else {
                    tx.push_wait(next).expect("the consumer comes back");
                    next += 1;
                }
                pause(&mut rng, 50);
            }
            tx
        });
        rx = join_within(consumer, Duration::from_secs(120), "the consumer");
        tx = join_within(producer, Duration::from_secs(120), "the producer");
    }
    drop(tx);
    assert_eq!(rx.pop(), Err(PopError::Closed), "nothing more than was pushed");
}

#[test]
fn fan_in_keeps_per_producer_order_exactly_once() {
    let _serial = serial();
    let seed = seed();
    let per_producer: u64 = if cfg!(miri) { 50 } else { 20_000 };
    // BusySpin is left out: five spinning threads on two cores measure the scheduler.
    for wait in [WaitStrategy::SpinThenYield, WaitStrategy::Park] {
        let (producers, mut fan) = ring::fan_in::<(usize, u64)>(4, 16, wait);
        let start = Instant::now();
        let handles: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(id, mut tx)| {
                thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed + id as u64);
                    for seq in 0..per_producer {
                        tx.push_wait((id, seq)).expect("the fan-in outlives its producers");
                        pause(&mut rng, 500);
                    }
                })
            })
            .collect();
        let consumer = thread::spawn(move || {
            let mut next = [0u64; 4];
            while let Ok((id, seq)) = fan.pop_wait() {
                assert_eq!(seq, next[id], "{wait:?}: producer {id} out of order or duplicated");
                next[id] += 1;
            }
            assert_eq!(fan.pop(), Err(PopError::Closed));
            next
        });
        for h in handles {
            join_within(h, Duration::from_secs(120), "a producer");
        }
        let next = join_within(consumer, Duration::from_secs(120), "the fan-in consumer");
        assert_eq!(next, [per_producer; 4], "{wait:?}: every event of every producer exactly once");
        eprintln!("{wait:?}: fan-in of 4 x {per_producer} in {:?}", start.elapsed());
    }
}

#[test]
fn fan_out_keeps_per_key_order_exactly_once() {
    let _serial = serial();
    let seed = seed();
    let events: u64 = if cfg!(miri) { 60 } else { 30_000 };
    const KEYS: u64 = 10;
    for wait in [WaitStrategy::SpinThenYield, WaitStrategy::Park] {
        let (mut fan, consumers) = ring::fan_out::<(u64, u64)>(3, 16, wait);
        let producer = thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut seq = [0u64; KEYS as usize];
            for _ in 0..events {
                let key = rng.gen_range(0..KEYS);
                fan.push_keyed(key, (key, seq[key as usize])).expect("consumers outlive the producer");
                seq[key as usize] += 1;
                pause(&mut rng, 500);
            }
            // One round-robin pass and a broadcast at the end: each consumer gets both.
            for _ in 0..3 {
                fan.push_round_robin((u64::MAX, 0)).expect("consumers outlive the producer");
            }
            fan.broadcast((u64::MAX, 1)).expect("consumers outlive the producer");
            seq
        });
        let handles: Vec<_> = consumers
            .into_iter()
            .enumerate()
            .map(|(i, mut rx)| {
                thread::spawn(move || {
                    let mut next = [0u64; KEYS as usize];
                    let mut markers = Vec::new();
                    while let Ok((key, seq)) = rx.pop_wait() {
                        if key == u64::MAX {
                            markers.push(seq);
                            continue;
                        }
                        assert_eq!(key % 3, i as u64, "{wait:?}: key {key} routed to consumer {i}");
                        assert_eq!(seq, next[key as usize], "{wait:?}: key {key} out of order or duplicated");
                        next[key as usize] += 1;
                    }
                    assert_eq!(markers, vec![0, 1], "{wait:?}: consumer {i}: one round robin, one broadcast");
                    next
                })
            })
            .collect();
        let sent = join_within(producer, Duration::from_secs(120), "the fan-out producer");
        let mut got = [0u64; KEYS as usize];
        for h in handles {
            let next = join_within(h, Duration::from_secs(120), "a fan-out consumer");
            for (g, n) in got.iter_mut().zip(next) {
                *g += n;
            }
        }
        assert_eq!(got, sent, "{wait:?}: every event of every key exactly once");
        assert_eq!(got.iter().sum::<u64>(), events);
    }
}

#[test]
fn consumer_drains_then_sees_closed_across_threads() {
    let _serial = serial();
    let events: u64 = if cfg!(miri) { 100 } else { 20_000 };
    for wait in STRATEGIES {
        let (mut tx, mut rx) = channel::<u64>(32, wait);
        let consumer = thread::spawn(move || {
            let mut got = 0u64;
            while let Ok(v) = rx.pop_wait() {
                assert_eq!(v, got);
                got += 1;
            }
            assert_eq!(rx.pop(), Err(PopError::Closed));
            assert!(rx.is_closed());
            got
        });
        for i in 0..events {
            tx.push_wait(i).expect("the consumer drains until the end");
        }
        drop(tx);
        assert_eq!(join_within(consumer, Duration::from_secs(60), "the consumer"), events, "{wait:?}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "times park wake-ups in real time")]
fn dropping_the_producer_wakes_a_parked_consumer_at_once() {
    let _serial = serial();
    // The consumer parks on an empty ring; 10 ms later the producer leaves. Without the wake
    // in the producer's drop the consumer would see the end only at its 50 ms park timeout,
    // about 40 ms late.
    let mut delays = Vec::new();
    for _ in 0..5 {
        let (tx, mut rx) = channel::<u64>(4, WaitStrategy::Park);
        let consumer = thread::spawn(move || {
            let r = rx.pop_wait();
            (r, Instant::now())
        });
        thread::sleep(Duration::from_millis(10));
        let dropped = Instant::now();
        drop(tx);
        let (r, seen) = join_within(consumer, Duration::from_secs(10), "the parked consumer");
        assert_eq!(r, Err(Closed));
        delays.push(seen.saturating_duration_since(dropped));
    }
    // The fastest of five: a loaded machine may delay some wake-ups, but a missing wake
    // delays every one by about 40 ms.
    let fastest = delays.iter().min().copied().unwrap_or_default();
    eprintln!("consumer woken by the producer's drop after {delays:?}");
    assert!(fastest < Duration::from_millis(20), "{delays:?}: woken by the park timeout, not the drop");
}

#[test]
fn producer_sees_closed_after_the_consumer_drops() {
    let _serial = serial();
    let popped: u64 = if cfg!(miri) { 50 } else { 1_000 };
    const CAPACITY: u64 = 4;
    for wait in STRATEGIES {
        let (mut tx, mut rx) = channel::<u64>(CAPACITY as usize, wait);
        let consumer = thread::spawn(move || {
            for i in 0..popped {
                assert_eq!(rx.pop_wait(), Ok(i));
            }
            // Dropping the consumer closes the ring for the producer.
        });
        let mut pushed = 0u64;
        while tx.push_wait(pushed).is_ok() {
            pushed += 1;
            assert!(pushed <= popped + CAPACITY, "{wait:?}: pushes went on after the consumer left");
        }
        join_within(consumer, Duration::from_secs(60), "the consumer");
        // Every value popped was pushed, plus at most a ring's worth that went unread.
        assert!(pushed > popped, "{wait:?}: {pushed} pushed");
        assert!(tx.is_closed());
        assert_eq!(tx.push(7), Err(PushError::Closed(7)), "{wait:?}: the value comes back");
        assert_eq!(tx.push_wait(8), Err(Closed));
    }
}

#[test]
#[cfg_attr(miri, ignore = "times park wake-ups in real time")]
fn dropping_the_consumer_wakes_a_parked_producer_at_once() {
    let _serial = serial();
    let mut delays = Vec::new();
    for _ in 0..5 {
        let (mut tx, rx) = channel::<u64>(2, WaitStrategy::Park);
        tx.push(0).expect("room");
        tx.push(1).expect("room");
        let producer = thread::spawn(move || {
            let r = tx.push_wait(2);
            (r, Instant::now())
        });
        thread::sleep(Duration::from_millis(10));
        let dropped = Instant::now();
        drop(rx);
        let (r, seen) = join_within(producer, Duration::from_secs(10), "the parked producer");
        assert_eq!(r, Err(Closed));
        delays.push(seen.saturating_duration_since(dropped));
    }
    let fastest = delays.iter().min().copied().unwrap_or_default();
    eprintln!("producer woken by the consumer's drop after {delays:?}");
    assert!(fastest < Duration::from_millis(20), "{delays:?}: woken by the park timeout, not the drop");
}

#[test]
fn waits_give_up_when_stopped() {
    let _serial = serial();
    for wait in STRATEGIES {
        let (mut tx, mut rx) = channel::<u64>(1, wait);
        tx.push(0).expect("room");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_p = stop.clone();
        let producer = thread::spawn(move || {
            let r = tx.push_wait_or_stop(1, || stop_p.load(Ordering::Relaxed));
            (r, tx)
        });
        thread::sleep(Duration::from_millis(5));
        stop.store(true, Ordering::Relaxed);
        let (r, tx) = join_within(producer, Duration::from_secs(10), "the stopped producer");
        assert_eq!(r, Err(PushError::Full(1)), "{wait:?}: stopped, the value comes back");
        assert_eq!(rx.pop(), Ok(0));
        let stop_c = AtomicBool::new(true);
        assert_eq!(rx.wait_readable(|| stop_c.load(Ordering::Relaxed)), Ok(false), "{wait:?}");
        drop(tx);
        assert_eq!(rx.wait_readable(|| false), Err(Closed), "{wait:?}");
    }
}

/// Waits (bounded) until `ready()`; fails the test when it never is.
fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn push_slice_wait_blocks_while_full_and_proceeds_as_the_consumer_drains() {
    let _serial = serial();
    for wait in STRATEGIES {
        let (mut tx, mut rx) = channel::<u64>(4, wait);
        let values: Vec<u64> = (0..1000).collect();
        let done = Arc::new(AtomicBool::new(false));
        let done_p = done.clone();
        let producer = thread::spawn(move || {
            let r = tx.push_slice_wait(&values, || false);
            done_p.store(true, Ordering::SeqCst);
            (r, tx)
        });
        // The ring fills; the producer, 996 values short, must still be waiting.
        eventually("the ring fills", || rx.slots() == 4);
        thread::sleep(Duration::from_millis(20));
        assert!(!done.load(Ordering::SeqCst), "{wait:?}: push_slice_wait returned with the ring full");
        assert_eq!(rx.slots(), 4, "{wait:?}: nothing was popped, nothing more can be in");
        let mut got = Vec::with_capacity(1000);
        // Drain by batches (in-place reads) and single pops in turn.
        while got.len() < 1000 {
            let batch = rx.read(3);
            let (a, b) = batch.as_slices();
            got.extend(a.iter().chain(b));
            batch.commit();
            if let Ok(v) = rx.pop() {
                got.push(v);
            }
        }
        let (r, tx) = join_within(producer, Duration::from_secs(10), "the waiting producer");
        assert_eq!(r, Ok(1000), "{wait:?}");
        assert_eq!(got, (0..1000).collect::<Vec<u64>>(), "{wait:?}: every value once, in order");
        drop(tx);
        assert_eq!(rx.pop(), Err(PopError::Closed));
    }
}

#[test]
fn push_slice_wait_and_wait_writable_end_when_stopped() {
    let _serial = serial();
    for wait in STRATEGIES {
        let (mut tx, mut rx) = channel::<u64>(4, wait);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_p = stop.clone();
        let producer = thread::spawn(move || {
            let r = tx.push_slice_wait(&[1, 2, 3, 4, 5, 6], || stop_p.load(Ordering::Relaxed));
            (r, tx)
        });
        eventually("the ring fills", || rx.slots() == 4);
        stop.store(true, Ordering::Relaxed);
        let (r, mut tx) = join_within(producer, Duration::from_secs(10), "the stopped producer");
        assert_eq!(r, Ok(4), "{wait:?}: stopped after the four values that fit");
        assert_eq!(tx.wait_writable(1, || true), Ok(false), "{wait:?}: full, and stopped");
        assert_eq!(rx.pop(), Ok(1));
        assert_eq!(tx.wait_writable(1, || true), Ok(true), "{wait:?}: one slot free, stop or not");
        assert_eq!(tx.wait_writable(2, || true), Ok(false), "{wait:?}: only one slot is free");
        // A wait for more than the capacity waits for an empty ring.
        let waiter = thread::spawn(move || {
            let r = tx.wait_writable(100, || false);
            (r, tx)
        });
        let drained: Vec<u64> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(drained, [2, 3, 4]);
        let (r, tx) = join_within(waiter, Duration::from_secs(10), "the waiter for an empty ring");
        assert_eq!(r, Ok(true), "{wait:?}");
        assert_eq!(tx.slots(), 4);
    }
}

#[test]
fn push_slice_wait_and_wait_writable_fail_once_the_consumer_is_gone() {
    let _serial = serial();
    for wait in STRATEGIES {
        let (mut tx, rx) = channel::<u64>(2, wait);
        let producer = thread::spawn(move || {
            let r = tx.push_slice_wait(&[1, 2, 3, 4], || false);
            (r, tx)
        });
        thread::sleep(Duration::from_millis(10));
        drop(rx); // wakes the producer, parked or not
        let (r, mut tx) = join_within(producer, Duration::from_secs(10), "the producer of a closed ring");
        assert_eq!(r, Err(Closed), "{wait:?}");
        assert_eq!(tx.wait_writable(1, || false), Err(Closed), "{wait:?}");
        assert_eq!(tx.push_slice_wait(&[5], || false), Err(Closed), "{wait:?}: the ring is still full");
    }
}

#[test]
fn safe_commit_publishes_exactly_the_pushed_slots() {
    let (mut tx, mut rx) = channel::<String>(4, WaitStrategy::Park);
    tx.push("first".to_string()).expect("room");
    tx.push("second".to_string()).expect("room");
    assert_eq!(rx.pop().as_deref(), Ok("first")); // the next reservation wraps around
    let mut r = tx.reserve(10);
    assert_eq!(r.len(), 3);
    r.push("a".to_string()).expect("room");
    r.push("b".to_string()).expect("room");
    assert_eq!(r.written(), 2);
    let (a, b) = r.slots();
    assert_eq!(a.len() + b.len(), 1, "only the unwritten slot is handed out");
    assert_eq!(r.commit_written(), 2);
    assert_eq!(rx.slots(), 3, "second, a, b: the unwritten slot stays free");
    assert_eq!(tx.slots(), 1);
    // A full reservation hands the value back.
    let mut r = tx.reserve(1);
    r.push("c".to_string()).expect("room");
    assert_eq!(r.push("d".to_string()), Err("d".to_string()));
    // Dropped without a commit: nothing is published, the slot is free again.
    drop(r);
    assert_eq!(tx.slots(), 1);
    // fill_from_iter goes on after the pushed slots and commits them all.
    let mut r = tx.reserve(1);
    r.push("e".to_string()).expect("room");
    assert_eq!(r.fill_from_iter(["never".to_string()]), 0, "no slot left for the iterator");
    drop(tx);
    let rest: Vec<String> = std::iter::from_fn(|| rx.pop().ok()).collect();
    assert_eq!(rest, ["second", "a", "b", "e"]);
}

#[test]
fn push_and_pop_errors_are_std_errors() {
    /// Neither `Debug` nor `Clone`: a push error must still be a `std::error::Error`.
    #[derive(PartialEq)]
    struct Opaque(u64);
    fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(e)
    }
    let (mut tx, mut rx) = channel::<Opaque>(1, WaitStrategy::BusySpin);
    assert_eq!(rx.pop().err().map(|e| e.to_string()).as_deref(), Some("the ring is empty"));
    assert!(tx.push(Opaque(1)).is_ok());
    let full = tx.push(Opaque(2)).expect_err("the ring holds one value");
    assert_eq!((format!("{full:?}"), full.to_string()), ("Full(_)".to_string(), "the ring is full".to_string()));
    assert_eq!(boxed(full).to_string(), "the ring is full");
    drop(rx);
    let closed = tx.push(Opaque(3)).expect_err("the consumer is gone");
    assert_eq!(format!("{closed:?}"), "Closed(_)");
    assert!(closed.to_string().contains("consumer"));
    assert!(closed.into_inner() == Opaque(3), "the value comes back");
    let (tx, mut rx) = channel::<u64>(1, WaitStrategy::BusySpin);
    drop(tx);
    let e = rx.pop().expect_err("the producer is gone");
    assert_eq!(e, PopError::Closed);
    assert!(boxed(e).to_string().contains("producer"));
}

// --- idle CPU -----------------------------------------------------------------------------

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec that the call writes.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `wait` on a new thread and returns the share of one core it used while it ran.
fn cpu_share(wait: impl FnOnce() + Send + 'static) -> thread::JoinHandle<(f64, Duration)> {
    thread::spawn(move || {
        let (cpu0, wall0) = (thread_cpu(), Instant::now());
        wait();
        let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed());
        (cpu.as_secs_f64() / wall.as_secs_f64(), wall)
    })
}

#[test]
#[cfg_attr(miri, ignore = "measures CPU time with clock_gettime, which Miri does not provide per thread")]
fn parked_waiters_use_near_zero_cpu() {
    let _serial = serial();
    const IDLE: Duration = Duration::from_secs(1);
    // A consumer parked on an empty ring, a producer parked on a full one, a fan-in parked
    // on three empty rings; each measures its own CPU time over about a second.
    let (tx, mut rx) = channel::<u64>(16, WaitStrategy::Park);
    let consumer = cpu_share(move || assert_eq!(rx.pop_wait(), Err(Closed)));
    let (mut full, rx_full) = channel::<u64>(1, WaitStrategy::Park);
    full.push(0).expect("room");
    let producer = cpu_share(move || assert_eq!(full.push_wait(1), Err(Closed)));
    let (fan_tx, mut fan) = ring::fan_in::<u64>(3, 16, WaitStrategy::Park);
    let fan_in = cpu_share(move || assert_eq!(fan.pop_wait(), Err(Closed)));
    // The control: the same measurement sees a spinning waiter.
    let (spin_tx, mut spin_rx) = channel::<u64>(16, WaitStrategy::BusySpin);
    let spinner = cpu_share(move || assert_eq!(spin_rx.pop_wait(), Err(Closed)));
    thread::sleep(Duration::from_millis(300));
    drop(spin_tx);
    thread::sleep(IDLE - Duration::from_millis(300));
    drop(tx);
    drop(rx_full);
    drop(fan_tx);
    let limit = Duration::from_secs(30);
    let results = [
        ("consumer on an empty ring", join_within(consumer, limit, "the idle consumer")),
        ("producer on a full ring", join_within(producer, limit, "the idle producer")),
        ("fan-in on three empty rings", join_within(fan_in, limit, "the idle fan-in")),
    ];
    let (spin_share, _) = join_within(spinner, limit, "the spinning consumer");
    eprintln!("busy-spinning consumer (control): {:.1}% of a core", spin_share * 100.0);
    for (what, (share, wall)) in results {
        eprintln!("parked {what}: {:.3}% of a core over {wall:?}", share * 100.0);
        assert!(wall >= IDLE - Duration::from_millis(100), "{what}: woke up early after {wall:?}");
        assert!(share < 0.05, "parked {what} used {:.1}% of a core", share * 100.0);
    }
    assert!(spin_share > 0.10, "the CPU measurement misses a spinning thread ({:.1}%)", spin_share * 100.0);
}
