#![cfg(feature = "tokio")]
//! The async consumer-group member (`shoal::aio::AsyncMember`) on a multi-thread runtime:
//! a member stream across a rebalance, cancellation mid-wait, shutdown while waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shoal::aio::AsyncMember;
use shoal::bus::Bus;
use shoal::group::{GroupOptions, Member};
use shoal::log::LogOptions;

const TOPIC: &str = "events";
const GROUP: &str = "workers";
/// Generous for a loaded 2-core machine; no test comes near it unless a wake-up is lost.
const LIMIT: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Options under which a member's heartbeat timer (a quarter of the session timeout) comes
/// after [`LIMIT`], so that what ends its waits in these tests is a record or a membership
/// change: a lost wake-up fails a test.
fn opts() -> GroupOptions {
    GroupOptions::default().liveness_check(Duration::from_secs(240)).session_timeout(Duration::from_secs(240))
}

/// Appends `n` records, keys `from..from + n`, round-robin over the partitions.
fn produce(bus: &Bus, partitions: u32, from: u64, n: u64) {
    let t = bus.topic_or_create(TOPIC, Some(partitions)).unwrap();
    let mut prod = t.producer(LogOptions::default()).unwrap();
    for key in from..from + n {
        prod.send_to((key % u64::from(partitions)) as u32, key, format!("r{key}").as_bytes()).unwrap();
    }
}

/// (member, partition, offset, key), in the order each member got them.
type Seen = (u8, u32, u64, u64);

#[test]
fn a_member_stream_across_a_rebalance_loses_nothing_and_never_shares_a_partition() {
    const PARTITIONS: u32 = 4;
    const FIRST: u64 = 200;
    const TOTAL: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    produce(&bus, PARTITIONS, 0, FIRST);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let rt = runtime();
    rt.block_on(async {
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let consume = |who: u8, mut member: AsyncMember| {
            let (seen, mut done) = (seen.clone(), done_rx.clone());
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        next = member.next() => {
                            let d = next.unwrap().unwrap();
                            let mut seen = seen.lock().unwrap();
                            seen.push((who, d.partition, d.record.offset().0, d.record.key()));
                            if seen.len() as u64 == TOTAL {
                                done_tx.send(true).unwrap();
                            }
                        }
                        // Shutdown while waiting: the member's wait is dropped, then it leaves.
                        _ = done.wait_for(|d| *d) => break,
                    }
                }
                let stats = member.stats();
                member.leave().await.unwrap();
                stats
            })
        };
        let a = consume(0, AsyncMember::join(&bus, GROUP, TOPIC, opts()).await.unwrap());
        // Member 0 alone reads the first records of every partition.
        let deadline = Instant::now() + LIMIT * 2 / 3;
        while (seen.lock().unwrap().len() as u64) < FIRST {
            assert!(Instant::now() < deadline, "member 0 did not read the first records");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Member 1 joins while no record comes: member 0, asleep on its partitions, wakes on
        // the epoch and hands two over; member 1, asleep too, wakes on the epoch the release
        // moves, and takes them.
        let joined = AsyncMember::join(&bus, GROUP, TOPIC, opts()).await.unwrap();
        let id = joined.id().to_string();
        let b = consume(1, joined);
        loop {
            let groups = shoal::group::describe(&bus).unwrap();
            let owns = groups.iter().flat_map(|g| &g.members).any(|m| m.id == id && m.partitions.len() == 2);
            if owns {
                break;
            }
            assert!(Instant::now() < deadline, "member 1 never got its partitions: {groups:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let producer = {
            let bus = bus.clone();
            tokio::task::spawn_blocking(move || {
                for chunk in 0..8 {
                    produce(&bus, PARTITIONS, FIRST + chunk * 50, 50);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        producer.await.unwrap();
        let all = tokio::time::timeout(LIMIT, async { tokio::join!(a, b) }).await.expect("not every record arrived");
        let (a, b) = (all.0.unwrap(), all.1.unwrap());
        assert!(a.rebalances >= 1, "member 0 saw no rebalance: {a:?}");
        assert!(b.delivered > 0, "member 1 got nothing: {b:?}");
    });
    let seen = seen.lock().unwrap();
    // Nothing lost, nothing twice.
    let keys: BTreeSet<u64> = seen.iter().map(|s| s.3).collect();
    assert_eq!(keys.len() as u64, TOTAL, "duplicates or losses");
    assert_eq!(keys, (0..TOTAL).collect::<BTreeSet<u64>>());
    // Each partition in offset order, and handed over once, from member 0 to member 1: never
    // read by both at once.
    let mut by_partition: BTreeMap<u32, Vec<(u8, u64)>> = BTreeMap::new();
    for &(who, p, offset, _) in seen.iter() {
        by_partition.entry(p).or_default().push((who, offset));
    }
    let mut moved = 0;
    for (p, reads) in &by_partition {
        assert!(reads.windows(2).all(|w| w[0].1 + 1 == w[1].1), "partition {p} out of order: {reads:?}");
        let switches = reads.windows(2).filter(|w| w[0].0 != w[1].0).count();
        assert!(switches <= 1, "partition {p} read by both members in turns: {reads:?}");
        if switches == 1 {
            assert_eq!(reads[0].0, 0, "partition {p} moved from member 1 to member 0");
            moved += 1;
        }
    }
    assert!(moved >= 1, "no partition moved to member 1");
}

#[test]
fn a_poll_cancelled_mid_wait_takes_nothing_and_a_later_one_gets_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    produce(&bus, 2, 0, 0);
    let rt = runtime();
    rt.block_on(async {
        let mut member = AsyncMember::join(&bus, GROUP, TOPIC, opts()).await.unwrap();
        // Nothing to read: each poll is cancelled while it waits.
        for _ in 0..20 {
            assert!(tokio::time::timeout(Duration::from_millis(2), member.poll(10)).await.is_err());
            let mut next = member.next();
            assert!(futures_util::poll!(&mut next).is_pending());
        }
        // Records appended from another thread while a poll waits wake it.
        let bus2 = bus.clone();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            produce(&bus2, 2, 0, 30);
        });
        let mut got = Vec::new();
        while got.len() < 30 {
            let batch = tokio::time::timeout(LIMIT, member.poll(7)).await.expect("a record did not wake the poll");
            let batch = batch.unwrap();
            assert!(!batch.is_empty() && batch.len() <= 7);
            got.extend(batch.iter().map(|d| d.record.key()));
        }
        producer.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..30).collect::<Vec<u64>>());
        // The zero-copy form, cancelled mid-wait too, then woken.
        assert!(tokio::time::timeout(Duration::from_millis(2), member.poll_with(10, |_, _| panic!("no record")))
            .await
            .is_err());
        produce(&bus, 2, 30, 4);
        let mut bytes = 0;
        let mut n = 0;
        while n < 4 {
            n += member.poll_with(10, |_, record| bytes += record.payload().len()).await.unwrap();
        }
        assert_eq!((n, bytes), (4, 4 * 3));
        member.commit().await.unwrap();
        member.leave().await.unwrap();
    });
    // Everything was committed: a new member finds nothing.
    let mut next = Member::join(&bus, GROUP, TOPIC, opts()).unwrap();
    assert!(next.poll(64, Duration::from_millis(50)).unwrap().is_empty());
}

#[test]
fn a_runtime_shut_down_while_members_wait_ends_and_their_partitions_go_to_the_next_member() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    produce(&bus, 3, 0, 9);
    let rt = runtime();
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..3 {
        let (bus, waiting) = (bus.clone(), waiting.clone());
        rt.spawn(async move {
            let mut member = AsyncMember::join(&bus, GROUP, TOPIC, opts()).await.unwrap();
            // Reads what it holds, commits, then waits for ever.
            loop {
                let mut read = 0;
                while let Ok(Ok(batch)) = tokio::time::timeout(Duration::from_millis(100), member.poll(64)).await {
                    read += batch.len();
                }
                member.commit().await.unwrap();
                if read == 0 {
                    break;
                }
            }
            waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let forever = member.poll(64).await;
            panic!("a poll with no record returned: {forever:?}");
        });
    }
    let deadline = Instant::now() + LIMIT;
    while waiting.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "the members did not settle");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Shutting down drops every task, each mid-wait; its member releases its partitions.
    rt.shutdown_timeout(LIMIT);
    produce(&bus, 3, 9, 6);
    let mut next = Member::join(&bus, GROUP, TOPIC, opts()).unwrap();
    let mut keys = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while keys.len() < 6 {
        assert!(Instant::now() < deadline, "the next member did not get the new records: {keys:?}");
        keys.extend(next.poll(64, Duration::from_millis(50)).unwrap().iter().map(|d| d.record.key()));
    }
    keys.sort_unstable();
    assert_eq!(keys, (9..15).collect::<Vec<u64>>(), "records committed before the shutdown came again");
}

/// An async member whose reader falls behind retention goes on from the first record held,
/// as the blocking one does, instead of failing every poll.
#[test]
fn an_async_member_that_falls_behind_retention_goes_on_from_the_first_record_held() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create(TOPIC, Some(1)).unwrap();
    let retention = shoal::log::Retention::default().max_bytes(4 * (256 << 10));
    let log_opts = LogOptions::default().segment_bytes(256 << 10).prefault(false).retention(retention);
    let mut producer = topic.producer(log_opts).unwrap();
    let payload = vec![7u8; 1000];
    producer.send_to(0, 0, &payload).unwrap();
    runtime().block_on(async {
        let mut member = AsyncMember::join(&bus, GROUP, TOPIC, opts()).await.unwrap();
        let first = tokio::time::timeout(LIMIT, member.next()).await.expect("a record").expect("an item").unwrap();
        assert_eq!(first.record.offset().0, 0);
        drop(first);
        for i in 1..5000 {
            producer.send_to(0, i, &payload).unwrap();
        }
        let mut got = vec![0];
        while got.last() != Some(&4999) {
            let batch = tokio::time::timeout(LIMIT, member.poll(512)).await.expect("records").unwrap();
            got.extend(batch.iter().map(|d| d.record.offset().0));
        }
        let held = shoal::log::Reader::open(topic.partition_dir(0).unwrap()).unwrap().first_offset().unwrap().0;
        let jump = got.windows(2).position(|w| w[1] != w[0] + 1).expect("a gap where retention removed records");
        assert_eq!(got[jump + 1], held);
        assert!(got[jump + 1..].windows(2).all(|w| w[1] == w[0] + 1), "nothing missing after the gap");
        member.leave().await.unwrap();
    });
}
