//! A pipeline that ends in a topic, read back by a consumer group: a source makes payment
//! events, a keyed stage of 2 workers drops the invalid ones (amount 0), and `Sink::topic`
//! appends the rest to a topic of 4 partitions, keyed by account so each account's events
//! stay in one partition in order. The sink syncs every partition when the pipeline drains
//! (`SinkStats` says when everything was durable). Then a group member reads the topic
//! from the start, totals each account and checks the totals against what the source made.
//!
//! Run with `cargo run --release --example pipeline_to_topic [BUS_DIR]`: the bus goes in a
//! temporary directory unless BUS_DIR is given. Exits 0 in about a second.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::bus::Bus;
use shoal::group::{GroupOptions, Member};
use shoal::log::{Durability, LogOptions};
use shoal::pipeline::{Emitter, Pipeline, Routing, Sink, Source, SourceStep};

type Error = Box<dyn std::error::Error>;

const TOPIC: &str = "payments";
const PARTITIONS: u32 = 4;
const ACCOUNTS: u64 = 100;
const EVENTS: u64 = 50_000;
/// How long the reader may take to find every record before the example gives up (they
/// are all durable before it starts, so this only runs out when something is wrong).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A payment: 16 bytes on the wire (account, cents), little-endian.
#[derive(Clone, Copy, Debug)]
struct Payment {
    account: u64,
    cents: u64,
}

fn main() -> Result<(), Error> {
    let temp = tempfile::tempdir()?;
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => dir.into(),
        None => temp.path().to_path_buf(),
    };
    let bus = Bus::open(&dir)?;
    // A fresh topic name per run, so a BUS_DIR given twice still reads back only this run.
    let topic_name = format!("{TOPIC}-{}", shoal::log::now_ns());
    let topic = bus.topic_or_create(&topic_name, Some(PARTITIONS))?;
    let producer = topic.producer(LogOptions::default().durability(Durability::Batch))?;

    // What the source makes, totalled per account (valid payments only).
    let expected = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
    let source_totals = expected.clone();
    let mut n = 0u64;
    let source = Source::closure(move |out: &mut Emitter<Payment>| {
        let payment = Payment { account: n % ACCOUNTS, cents: (n * 37) % 1000 };
        if payment.cents > 0 {
            *source_totals.lock().unwrap_or_else(|p| p.into_inner()).entry(payment.account).or_default() +=
                payment.cents;
        }
        out.emit(payment);
        n += 1;
        if n == EVENTS {
            SourceStep::Done
        } else {
            SourceStep::Continue
        }
    });
    let sink = Sink::topic(producer, |p: &Payment, buf: &mut Vec<u8>| {
        buf.extend_from_slice(&p.account.to_le_bytes());
        buf.extend_from_slice(&p.cents.to_le_bytes());
        p.account // the key: routes the record to its account's partition
    });
    let sink_stats = sink.stats();
    let started = Instant::now();
    Pipeline::builder()
        .pin(false) // several examples may run side by side on a small machine
        .source("payments", source)
        .stage("validate", 2, Routing::ByKey(|p: &Payment| p.account), |_worker| {
            |batch: &[Payment], out: &mut Emitter<Payment>| {
                for p in batch.iter().filter(|p| p.cents > 0) {
                    out.emit(*p);
                }
            }
        })
        .sink("topic", sink)
        .build()?
        .join()?;
    let durable_after = sink_stats.durable_at().map(|at| at.duration_since(started));
    println!(
        "pipeline: {EVENTS} events made, {} appended to topic {topic_name:?}, durable after {durable_after:?} ({} data syncs)",
        sink_stats.records(),
        sink_stats.syncs()
    );

    // Read the topic back with a consumer group member.
    let mut member = Member::join(&bus, "totals", &topic_name, GroupOptions::default())?;
    let mut totals = BTreeMap::<u64, u64>::new();
    let mut per_partition = vec![0u64; PARTITIONS as usize];
    let mut read = 0u64;
    let reading = Instant::now();
    // Bounded by READ_TIMEOUT: each poll waits at most 100 ms.
    while read < sink_stats.records() {
        if reading.elapsed() > READ_TIMEOUT {
            return Err(format!("read {read} of {} records in {READ_TIMEOUT:?}", sink_stats.records()).into());
        }
        for delivery in member.poll(4096, Duration::from_millis(100))? {
            let payload = delivery.record.payload();
            let (Some(account), Some(cents)) = (payload.get(..8), payload.get(8..16)) else {
                return Err(format!("a {}-byte payload, expected 16", payload.len()).into());
            };
            let account = u64::from_le_bytes(account.try_into()?);
            let cents = u64::from_le_bytes(cents.try_into()?);
            if account != delivery.record.key() {
                return Err(format!("account {account} under key {}", delivery.record.key()).into());
            }
            *totals.entry(account).or_default() += cents;
            per_partition[delivery.partition as usize] += 1;
            read += 1;
        }
        member.commit()?;
    }
    member.leave()?;
    println!("group member: {read} records read, per partition {per_partition:?}");

    let expected = expected.lock().unwrap_or_else(|p| p.into_inner());
    if totals != *expected {
        return Err("the totals read back differ from what the source made".into());
    }
    println!("the totals of all {} accounts match", totals.len());
    Ok(())
}
