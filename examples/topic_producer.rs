//! Writing to a partitioned topic: a `TopicProducer` sends keyed records (account events,
//! keyed by account), each routed to the partition of its key, while an "acknowledger"
//! thread waits on every partition's durable watermark (`DurableWatch`) and reports when
//! each batch is on disk, as a server would before answering its clients. String keys go
//! through `key_hash`, the same hash `shoal produce --keyed` uses, so the library and the
//! command line put a key in the same partition. At the end every partition is read back
//! to check that each key sits in one partition only, in the order it was sent.
//!
//! Run with `cargo run --release --example topic_producer [BUS_DIR]`: the bus goes in a
//! temporary directory unless BUS_DIR is given. Exits 0 once everything is checked, in
//! about a second.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal::bus::{key_hash, partition_for_key, Bus};
use shoal::log::{Durability, LogOptions, Offset, Reader};

type Error = Box<dyn std::error::Error>;

const TOPIC: &str = "accounts";
const PARTITIONS: u32 = 4;
const ACCOUNTS: [&str; 8] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"];
/// Batches sent; each is acknowledged once durable before the next is sent.
const BATCHES: u64 = 50;
/// Records per batch.
const BATCH_RECORDS: u64 = 200;
/// How long the acknowledger waits for one batch to be durable before it gives up (a data
/// sync takes milliseconds; this only runs out when something is wrong).
const DURABLE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> Result<(), Error> {
    let temp = tempfile::tempdir()?;
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => dir.into(),
        None => temp.path().to_path_buf(),
    };
    let bus = Bus::open(&dir)?;
    let topic = bus.topic_or_create(TOPIC, Some(PARTITIONS))?;
    let mut producer = topic.producer(LogOptions::default().durability(Durability::Batch))?;
    let first = (0..PARTITIONS).map(|p| producer.next_offset(p).unwrap_or_default()).collect::<Vec<_>>();

    println!("routing of each account (key_hash, as `shoal produce --keyed`):");
    for account in ACCOUNTS {
        println!("  {account:<6} -> partition {}", partition_for_key(key_hash(account.as_bytes()), PARTITIONS));
    }

    // The acknowledger: for each batch, the last offset sent to each partition; it waits
    // until every one is durable and acknowledges the batch.
    let watches = producer.durable_watches();
    let (to_ack, batches) = std::sync::mpsc::channel::<(u64, Vec<Option<Offset>>)>();
    let acknowledger = std::thread::spawn(move || -> Result<u64, String> {
        let mut acked = 0;
        for (batch, last) in batches {
            for (p, offset) in last.iter().enumerate() {
                let Some(offset) = offset else { continue };
                let durable = watches[p].wait_durable(*offset, Some(DURABLE_TIMEOUT)).map_err(|e| e.to_string())?;
                if !durable {
                    return Err(format!("partition {p}: offset {offset} not durable within {DURABLE_TIMEOUT:?}"));
                }
            }
            acked = batch + 1;
        }
        Ok(acked)
    });

    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    for batch in 0..BATCHES {
        let mut last = vec![None; PARTITIONS as usize];
        for i in 0..BATCH_RECORDS {
            let account = ACCOUNTS[((batch * 7 + i * 3) % ACCOUNTS.len() as u64) as usize];
            let seq = sent.entry(account).or_default();
            let payload = format!("{account} {seq}");
            *seq += 1;
            let (p, offset) = producer.send(key_hash(account.as_bytes()), payload.as_bytes())?;
            last[p as usize] = Some(offset);
        }
        to_ack.send((batch, last))?;
    }
    drop(to_ack);
    let acked = acknowledger.join().map_err(|_| "the acknowledger panicked")??;
    println!("{acked} of {BATCHES} batches acknowledged durable");
    for (p, watch) in producer.durable_watches().iter().enumerate() {
        println!("  partition {p}: durable up to offset {} (every offset below it)", watch.durable_offset());
    }
    let (syncs, _) = producer.sync_stats();
    println!("{} records, {syncs} data syncs (group commit)", BATCHES * BATCH_RECORDS);
    producer.close()?;

    // Read back: each account in one partition, its records in the order sent.
    let mut next_seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut homes: BTreeMap<String, u32> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut reader = Reader::open(topic.partition_dir(p)?)?;
        reader.seek(first[p as usize])?;
        let mut count = 0u64;
        while let Some(record) = reader.next()? {
            let text = std::str::from_utf8(record.payload())?;
            let (account, seq) = text.split_once(' ').ok_or("a payload without a space")?;
            let seq: u64 = seq.parse()?;
            if record.key() != key_hash(account.as_bytes()) {
                return Err(format!("partition {p}: record {} has another key than {account}", record.offset()).into());
            }
            if *homes.entry(account.to_string()).or_insert(p) != p {
                return Err(format!("{account} is in two partitions").into());
            }
            let expected = next_seq.entry(account.to_string()).or_default();
            if seq != *expected {
                return Err(format!("{account}: record {seq} came where {expected} was expected").into());
            }
            *expected += 1;
            count += 1;
        }
        println!("  partition {p}: {count} records read back");
    }
    for (account, n) in &sent {
        if next_seq.get(*account) != Some(n) {
            return Err(format!("{account}: sent {n}, read {:?}", next_seq.get(*account)).into());
        }
    }
    println!("every account in one partition, in the order sent");
    Ok(())
}
