//! Model-based fuzzing of the SPSC ring (after sled's `fuzz_model.rs`): a ring of `u64` and a
//! ring of `Box<u64>` driven by the same operations against one `VecDeque` model, with
//! pushes, slices, reservations written in place (committed or abandoned), pops, batch reads
//! (committed or dropped) and the drop of either end.
//!
//! Every outcome (`Full`, `Empty`, `Closed`), every value and both ends' slot counts must
//! match the model after each step. The boxed ring has no `push_slice` (its values are not
//! `Copy`); it gets the same values through `reserve` + `fill_from_iter`, which must behave
//! the same. Boxes make ASan see a value dropped twice or read after it was dropped, and
//! LeakSanitizer (this target starts no thread) a value the ring never drops.

#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::ring::{channel, Closed, Consumer, PopError, Producer, PushError, WaitStrategy};

/// Operations per input, to keep executions fast.
const OPS_MAX: usize = 256;

#[derive(Arbitrary, Debug)]
enum Op {
    Push,
    /// `push_quiet`, then `notify`.
    PushQuiet,
    PushSlice(u8),
    /// Reserve slots, write the first `write`, then commit them or drop the reservation.
    Reserve {
        reserve: u8,
        write: u8,
        commit: bool,
    },
    /// Reserve slots and `fill_from_iter` with `offer` values.
    ReserveFill {
        reserve: u8,
        offer: u8,
    },
    Pop,
    /// Read up to `max` values in place, then commit the batch or drop it (which commits).
    Read {
        max: u8,
        commit: bool,
    },
    DropProducer,
    DropConsumer,
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    wait: u8,
    ops: Vec<Op>,
}

struct Rings {
    tx: Option<Producer<u64>>,
    rx: Option<Consumer<u64>>,
    btx: Option<Producer<Box<u64>>>,
    brx: Option<Consumer<Box<u64>>>,
}

fn expected_push(len: usize, capacity: usize, consumer_alive: bool) -> Result<(), PushError<u64>> {
    if len < capacity {
        Ok(())
    } else if consumer_alive {
        Err(PushError::Full(0))
    } else {
        Err(PushError::Closed(0))
    }
}

fn same<T, U>(a: &Result<(), PushError<T>>, b: &Result<(), PushError<U>>) -> bool {
    matches!(
        (a, b),
        (Ok(()), Ok(()))
            | (Err(PushError::Full(_)), Err(PushError::Full(_)))
            | (Err(PushError::Closed(_)), Err(PushError::Closed(_)))
    )
}

fn run(input: Input) {
    let capacity = 1 + usize::from(input.capacity % 16);
    let wait = match input.wait % 3 {
        0 => WaitStrategy::BusySpin,
        1 => WaitStrategy::SpinThenYield,
        _ => WaitStrategy::Park,
    };
    let (tx, rx) = channel::<u64>(capacity, wait);
    let (btx, brx) = channel::<Box<u64>>(capacity, wait);
    let mut r = Rings { tx: Some(tx), rx: Some(rx), btx: Some(btx), brx: Some(brx) };
    let mut model: VecDeque<u64> = VecDeque::new();
    let mut next = 0u64;
    for (step, op) in input.ops.iter().take(OPS_MAX).enumerate() {
        let consumer_alive = r.rx.is_some();
        let producer_alive = r.tx.is_some();
        match op {
            Op::Push | Op::PushQuiet => {
                if let (Some(tx), Some(btx)) = (r.tx.as_mut(), r.btx.as_mut()) {
                    let want = expected_push(model.len(), capacity, consumer_alive);
                    let (got, bgot) = if matches!(op, Op::Push) {
                        (tx.push(next), btx.push(Box::new(next)))
                    } else {
                        let got = (tx.push_quiet(next), btx.push_quiet(Box::new(next)));
                        tx.notify();
                        btx.notify();
                        got
                    };
                    assert!(same(&got, &want), "step {step}: {op:?}: {got:?}, model says {want:?}");
                    assert!(same(&bgot, &want), "step {step}: {op:?}: boxed {bgot:?}, model says {want:?}");
                    match (got, bgot) {
                        (Ok(()), _) => model.push_back(next),
                        (Err(e), Err(be)) => {
                            assert_eq!(e.into_inner(), next, "step {step}: the value comes back");
                            assert_eq!(*be.into_inner(), next, "step {step}: the boxed value comes back");
                        }
                        (Err(_), Ok(())) => unreachable!("checked against the model above"),
                    }
                    next += 1;
                }
            }
            Op::PushSlice(n) => {
                if let (Some(tx), Some(btx)) = (r.tx.as_mut(), r.btx.as_mut()) {
                    let n = u64::from(*n % 24);
                    let values: Vec<u64> = (next..next + n).collect();
                    let pushed = tx.push_slice(&values);
                    let bpushed = btx.reserve(n as usize).fill_from_iter((next..next + n).map(Box::new));
                    assert_eq!(pushed, (n as usize).min(capacity - model.len()), "step {step}: {op:?}");
                    assert_eq!(bpushed, pushed, "step {step}: {op:?}: boxed");
                    model.extend(&values[..pushed]);
                    next += pushed as u64;
                }
            }
            Op::Reserve { reserve, write, commit } => {
                if let (Some(tx), Some(btx)) = (r.tx.as_mut(), r.btx.as_mut()) {
                    let reserve = usize::from(*reserve % 24);
                    let mut res = tx.reserve(reserve);
                    let mut bres = btx.reserve(reserve);
                    let len = res.len();
                    assert_eq!(len, reserve.min(capacity - model.len()), "step {step}: {op:?}");
                    assert_eq!(bres.len(), len, "step {step}: {op:?}: boxed");
                    let write = usize::from(*write).min(len);
                    let (a, b) = res.slots();
                    assert_eq!(a.len() + b.len(), len);
                    for (i, slot) in a.iter_mut().chain(b.iter_mut()).take(write).enumerate() {
                        slot.write(next + i as u64);
                    }
                    if *commit {
                        let (a, b) = bres.slots();
                        assert_eq!(a.len() + b.len(), len);
                        for (i, slot) in a.iter_mut().chain(b.iter_mut()).take(write).enumerate() {
                            slot.write(Box::new(next + i as u64));
                        }
                        // SAFETY: the loops above initialised the first `write` slots of each
                        // reservation, first part then second.
                        unsafe {
                            res.commit(write);
                            bres.commit(write);
                        }
                        model.extend(next..next + write as u64);
                        next += write as u64;
                    }
                    // else: both reservations end uncommitted and nothing becomes visible.
                    // (Boxes written into an abandoned reservation would leak: the ring
                    // never owned them, so none are written.)
                }
            }
            Op::ReserveFill { reserve, offer } => {
                if let (Some(tx), Some(btx)) = (r.tx.as_mut(), r.btx.as_mut()) {
                    let (reserve, offer) = (usize::from(*reserve % 24), u64::from(*offer % 24));
                    let res = tx.reserve(reserve);
                    let len = res.len();
                    let written = res.fill_from_iter(next..next + offer);
                    let bwritten = btx.reserve(reserve).fill_from_iter((next..next + offer).map(Box::new));
                    assert_eq!(written, len.min(offer as usize), "step {step}: {op:?}");
                    assert_eq!(bwritten, written, "step {step}: {op:?}: boxed");
                    model.extend(next..next + written as u64);
                    next += written as u64;
                }
            }
            Op::Pop => {
                if let (Some(rx), Some(brx)) = (r.rx.as_mut(), r.brx.as_mut()) {
                    let want = match model.pop_front() {
                        Some(v) => Ok(v),
                        None if producer_alive => Err(PopError::Empty),
                        None => Err(PopError::Closed),
                    };
                    assert_eq!(rx.pop(), want, "step {step}: {op:?}");
                    assert_eq!(brx.pop().map(|b| *b), want, "step {step}: {op:?}: boxed");
                }
            }
            Op::Read { max, commit } => {
                if let (Some(rx), Some(brx)) = (r.rx.as_mut(), r.brx.as_mut()) {
                    let max = usize::from(*max % 24);
                    let n = max.min(model.len());
                    let want: Vec<u64> = model.drain(..n).collect();
                    let batch = rx.read(max);
                    let bbatch = brx.read(max);
                    assert_eq!((batch.len(), bbatch.len()), (n, n), "step {step}: {op:?}");
                    let (a, b) = batch.as_slices();
                    let got: Vec<u64> = a.iter().chain(b).copied().collect();
                    assert_eq!(got, want, "step {step}: {op:?}");
                    let (a, b) = bbatch.as_slices();
                    let bgot: Vec<u64> = a.iter().chain(b).map(|v| **v).collect();
                    assert_eq!(bgot, want, "step {step}: {op:?}: boxed");
                    if *commit {
                        batch.commit();
                        bbatch.commit();
                    } else {
                        drop(batch);
                        drop(bbatch);
                    }
                }
            }
            Op::DropProducer => {
                r.tx = None;
                r.btx = None;
            }
            Op::DropConsumer => {
                r.rx = None;
                r.brx = None;
            }
        }
        if let (Some(tx), Some(btx)) = (&r.tx, &r.btx) {
            assert_eq!(tx.slots(), capacity - model.len(), "step {step}: producer slots after {op:?}");
            assert_eq!(btx.slots(), capacity - model.len(), "step {step}: boxed producer slots after {op:?}");
            assert_eq!(tx.is_closed(), r.rx.is_none(), "step {step}");
            assert_eq!(btx.is_closed(), r.brx.is_none(), "step {step}");
        }
        if let (Some(rx), Some(brx)) = (&r.rx, &r.brx) {
            assert_eq!(rx.slots(), model.len(), "step {step}: consumer slots after {op:?}");
            assert_eq!(brx.slots(), model.len(), "step {step}: boxed consumer slots after {op:?}");
            let closed = r.tx.is_none() && model.is_empty();
            assert_eq!((rx.is_closed(), brx.is_closed()), (closed, closed), "step {step}");
        }
    }
    // What is left drains, then both rings report the end.
    r.tx = None;
    r.btx = None;
    if let (Some(rx), Some(brx)) = (r.rx.as_mut(), r.brx.as_mut()) {
        let rest: Vec<u64> = std::iter::from_fn(|| rx.pop().ok()).collect();
        let brest: Vec<u64> = std::iter::from_fn(|| brx.pop().ok().map(|b| *b)).collect();
        let want = Vec::from(model);
        assert_eq!(rest, want);
        assert_eq!(brest, want);
        assert_eq!(rx.pop_wait(), Err(Closed));
        assert_eq!(brx.pop_wait(), Err(Closed));
    }
}

fuzz_target!(|input: Input| run(input));
