//! A consumer group of two members in one process: member `a` joins alone and owns every
//! partition; member `b` joins and the partitions are shared out (a partition moves once its
//! old owner lets go of it at its next poll); then `b` leaves gracefully and `a` takes its
//! partitions back, reading on from `b`'s committed offsets. Records are produced all along;
//! the example prints who owns what at each step and checks that every record was delivered
//! exactly once (a graceful leave hands over with no duplicate). Members in other processes
//! work the same way (see `examples/consumer_group.rs`).
//!
//! Run with `cargo run --example group_member [BUS_DIR]`: the bus goes in a temporary
//! directory unless BUS_DIR is given. Exits 0 in well under a second.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal::bus::{Bus, TopicProducer};
use shoal::group::{GroupOptions, Member};
use shoal::log::LogOptions;

type Error = Box<dyn std::error::Error>;

const TOPIC: &str = "orders";
const GROUP: &str = "billing";
const PARTITIONS: u32 = 6;
/// Records produced before each step.
const RECORDS_PER_STEP: u64 = 300;
/// How long a step may take to settle before the example gives up: a move takes one poll of
/// each member (milliseconds), so this only runs out when something is wrong.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one poll waits when there is nothing to read.
const POLL_WAIT: Duration = Duration::from_millis(5);

/// Every (partition, offset) delivered so far, to catch a duplicate.
type Seen = BTreeSet<(u32, u64)>;

fn main() -> Result<(), Error> {
    let temp = tempfile::tempdir()?;
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => dir.into(),
        None => temp.path().to_path_buf(),
    };
    let bus = Bus::open(&dir)?;
    let topic = bus.topic_or_create(TOPIC, Some(PARTITIONS))?;
    let mut producer = topic.producer(LogOptions::default())?;
    let mut seen = Seen::new();
    let mut produced = 0;

    // 1. `a` alone.
    let mut a = Member::join(&bus, GROUP, TOPIC, GroupOptions::default().label("a"))?;
    produced += produce(&mut producer, produced)?;
    settle(&mut [("a", &mut a)], &mut seen, produced, |m| m[0] == PARTITIONS as usize)?;
    println!("a joined:  a owns {:?}", a.assigned());

    // 2. `b` joins: half of the partitions move to it once `a` lets go of them.
    let mut b = Member::join(&bus, GROUP, TOPIC, GroupOptions::default().label("b"))?;
    produced += produce(&mut producer, produced)?;
    let half = PARTITIONS as usize / 2;
    settle(&mut [("a", &mut a), ("b", &mut b)], &mut seen, produced, |m| m == [half, half])?;
    println!("b joined:  a owns {:?}, b owns {:?}", a.assigned(), b.assigned());
    let b_had = b.assigned();

    // 3. `b` leaves: it commits what it was given and hands its partitions over at once.
    produced += produce(&mut producer, produced)?;
    settle(&mut [("a", &mut a), ("b", &mut b)], &mut seen, produced, |_| true)?;
    b.leave()?;
    produced += produce(&mut producer, produced)?;
    settle(&mut [("a", &mut a)], &mut seen, produced, |m| m[0] == PARTITIONS as usize)?;
    println!("b left:    a owns {:?} (took back {b_had:?})", a.assigned());
    a.leave()?;
    producer.close()?;

    println!("{produced} records produced, {} delivered, each exactly once", seen.len());
    Ok(())
}

/// Sends `RECORDS_PER_STEP` keyed records; returns how many.
fn produce(producer: &mut TopicProducer, from: u64) -> Result<u64, Error> {
    for key in from..from + RECORDS_PER_STEP {
        producer.send(key, format!("order {key}").as_bytes())?;
    }
    Ok(RECORDS_PER_STEP)
}

/// Polls the members in turn (committing after each poll, as a consumer does once it has
/// handled a batch) until `done` holds for their partition counts and every one of the
/// `produced` records was delivered; fails on a duplicate or after `SETTLE_TIMEOUT`.
fn settle(
    members: &mut [(&str, &mut Member)],
    seen: &mut Seen,
    produced: u64,
    done: impl Fn(&[usize]) -> bool,
) -> Result<(), Error> {
    let started = Instant::now();
    // Bounded by SETTLE_TIMEOUT: each pass polls each member for at most POLL_WAIT.
    loop {
        for (name, member) in members.iter_mut() {
            for delivery in member.poll(1024, POLL_WAIT)? {
                let at = (delivery.partition, delivery.record.offset().0);
                if !seen.insert(at) {
                    return Err(format!("{name} got partition {} offset {} a second time", at.0, at.1).into());
                }
            }
            member.commit()?;
        }
        let counts: Vec<usize> = members.iter().map(|(_, m)| m.assigned().len()).collect();
        if done(&counts) && seen.len() as u64 == produced {
            return Ok(());
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            return Err(format!(
                "not settled after {SETTLE_TIMEOUT:?}: partitions held {counts:?}, {} of {produced} records delivered",
                seen.len()
            )
            .into());
        }
    }
}
