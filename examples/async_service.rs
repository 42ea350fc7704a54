//! A tokio service on shoal: it consumes the topic `orders` as a member of the group
//! `enricher`, transforms each record (upper-cases its payload and tags it), produces the
//! result under the same key to the topic `orders-enriched`, and commits what it processed
//! once the results are durable: a crash re-processes at most the batch in hand, and never
//! skips a record. Ctrl-C (SIGINT) stops it gracefully: the batch in hand is finished and
//! committed, then the member leaves the group, handing its partitions to the other members
//! at once. Every wait is a future on the runtime (`shoal::aio`): no thread per waiter.
//!
//! ```text
//! cargo run --features tokio --example async_service -- [OPTIONS]
//!   --bus DIR          the bus (default: a new temporary directory, removed at exit)
//!   --seed N           first append N records to `orders` (default 0; 1000 without --bus)
//!   --max N            stop after N records processed
//!   --idle-exit MS     stop after MS milliseconds without a record
//! ```
//!
//! With no option it seeds a temporary bus with 1000 records and stops once it has been idle
//! for 500 ms (what CI runs); with `--bus` and no `--max` or `--idle-exit` it runs until
//! Ctrl-C. Start several with the same `--bus` to see the group share the partitions.

use std::path::PathBuf;
use std::time::Duration;

use shoal::aio::{AsyncDurable, AsyncMember};
use shoal::bus::Bus;
use shoal::group::GroupOptions;
use shoal::log::{LogOptions, Reader};

type Error = Box<dyn std::error::Error>;

const INPUT: &str = "orders";
const OUTPUT: &str = "orders-enriched";
const GROUP: &str = "enricher";
const PARTITIONS: u32 = 4;
/// Most records taken (and committed) at once.
const BATCH: usize = 256;

struct Args {
    bus: Option<PathBuf>,
    seed: u64,
    max: Option<u64>,
    idle_exit: Option<Duration>,
}

fn usage(why: &str) -> Error {
    format!("{why}\nusage: async_service [--bus DIR] [--seed N] [--max N] [--idle-exit MS]").into()
}

fn parse_args() -> Result<Args, Error> {
    let mut args = Args { bus: None, seed: 0, max: None, idle_exit: None };
    let mut seed = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| usage(&format!("{name} needs a value")));
        let number =
            |name: &str, v: String| v.parse::<u64>().map_err(|_| usage(&format!("{name}: {v:?} is not a number")));
        match flag.as_str() {
            "--bus" => args.bus = Some(PathBuf::from(value("--bus")?)),
            "--seed" => seed = Some(number("--seed", value("--seed")?)?),
            "--max" => args.max = Some(number("--max", value("--max")?)?),
            "--idle-exit" => {
                args.idle_exit = Some(Duration::from_millis(number("--idle-exit", value("--idle-exit")?)?))
            }
            other => return Err(usage(&format!("unknown option {other:?}"))),
        }
    }
    if args.bus.is_none() {
        args.seed = seed.unwrap_or(1000);
        if args.max.is_none() && args.idle_exit.is_none() {
            args.idle_exit = Some(Duration::from_millis(500));
        }
    } else {
        args.seed = seed.unwrap_or(0);
    }
    Ok(args)
}

/// The service's work on one record.
fn transform(payload: &[u8]) -> Vec<u8> {
    let mut out = b"enriched: ".to_vec();
    out.extend(payload.iter().map(u8::to_ascii_uppercase));
    out
}

/// Records in every partition of `topic`.
fn count(bus: &Bus, topic: &str) -> Result<u64, Error> {
    let t = bus.topic(topic)?;
    let mut n = 0;
    for p in 0..t.partitions() {
        // A partition nothing was appended to yet has no log.
        let Ok(mut reader) = Reader::open(t.partition_dir(p)?) else { continue };
        while reader.next_ref()?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("async_service: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let temp = match &args.bus {
        Some(_) => None,
        None => Some(tempfile::tempdir()?),
    };
    let dir = args.bus.clone().or_else(|| temp.as_ref().map(|t| t.path().to_path_buf())).ok_or("no bus directory")?;
    let bus = Bus::open(&dir)?;
    bus.topic_or_create(INPUT, Some(PARTITIONS))?;
    let mut out = bus.topic_or_create(OUTPUT, Some(PARTITIONS))?.producer(LogOptions::default())?;
    if args.seed > 0 {
        let mut seed = bus.topic(INPUT)?.producer(LogOptions::default())?;
        for key in 0..args.seed {
            seed.send(key, format!("order {key}").as_bytes())?;
        }
        println!("seeded {} records into {INPUT}", args.seed);
    }

    let mut member = AsyncMember::join(&bus, GROUP, INPUT, GroupOptions::default()).await?;
    println!("member {} of group {GROUP} on {INPUT} ({})", member.id(), dir.display());
    let mut processed = 0u64;
    let mut shutdown = std::pin::pin!(tokio::signal::ctrl_c());
    let why = loop {
        if args.max.is_some_and(|max| processed >= max) {
            break format!("processed {processed} records (--max)");
        }
        let want = args.max.map_or(BATCH, |max| BATCH.min(usize::try_from(max - processed).unwrap_or(BATCH)));
        let idle = async {
            match args.idle_exit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let batch = tokio::select! {
            batch = member.poll(want) => batch?,
            _ = &mut shutdown => break "Ctrl-C".to_string(),
            () = idle => break format!("idle for {:?} (--idle-exit)", args.idle_exit.unwrap_or_default()),
        };
        // Produce every result, then wait (on the runtime) until the last one of each
        // partition is durable, then commit the inputs: at least once, never skipped.
        let mut last = [None; PARTITIONS as usize];
        for d in &batch {
            let (p, offset) = out.send(d.record.key(), &transform(d.record.payload()))?;
            last[p as usize] = Some(offset);
        }
        for (p, offset) in last.iter().enumerate() {
            if let (Some(offset), Some(watch)) = (offset, out.durable_watch(p as u32)) {
                watch.wait(*offset).await?;
            }
        }
        member.commit().await?;
        processed += batch.len() as u64;
    };
    let stats = member.stats();
    member.leave().await?;
    println!(
        "stopped: {why}; processed {processed} records from {INPUT} into {OUTPUT}, committed, left the group \
         (rebalances seen: {})",
        stats.rebalances
    );
    println!("{OUTPUT} holds {} records", count(&bus, OUTPUT)?);
    Ok(())
}
