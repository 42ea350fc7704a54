//! A consumer group of processes: a producer thread writes orders into a topic of 6
//! partitions while member processes (this same program, run again with `member`) share the
//! partitions. Member `a` runs throughout, `b` leaves gracefully after a second, `c` joins
//! late; partitions move between them as they come and go, with committed offsets handed
//! over. Each member prints the ranges it consumed; the parent watches the group's lag with
//! `shoal::metrics::BusSnapshot`, stops the members once it is 0, and checks that every order
//! was consumed at least once. Exits 0 on success, in a few seconds.
//!
//! Run with `cargo run --example consumer_group`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal::bus::Bus;
use shoal::group::{GroupOptions, Member};
use shoal::log::LogOptions;
use shoal::metrics::BusSnapshot;

type Error = Box<dyn std::error::Error>;

const TOPIC: &str = "orders";
const GROUP: &str = "billing";
const PARTITIONS: u32 = 6;
const ORDERS: u64 = 3_000;
/// The file that tells the members to leave.
const STOP_FILE: &str = "stop";
/// The longest any part of the example may take before it gives up.
const DEADLINE: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("member") => match (args.get(2), args.get(3), args.get(4).map(|s| s.parse::<u64>())) {
            (Some(bus), Some(name), Some(Ok(leave_ms))) => member(Path::new(bus), name, leave_ms),
            _ => Err("usage: consumer_group member <BUS> <NAME> <LEAVE_AFTER_MS, 0 for never>".into()),
        },
        Some(other) => Err(format!("unknown mode `{other}`; run without arguments").into()),
        None => parent(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("consumer_group: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A member process: joins the group, prints `<partition> <offset> <payload>` on stdout for
/// each record (and a summary per batch on stderr), commits after printing, and leaves
/// gracefully after `leave_ms` (if not 0) or when the parent creates the stop file.
fn member(bus_dir: &Path, name: &str, leave_ms: u64) -> Result<ExitCode, Error> {
    let bus = Bus::open(bus_dir)?;
    let opts = GroupOptions::default().label(format!("example member {name}"));
    let mut member = Member::join(&bus, GROUP, TOPIC, opts)?;
    eprintln!("[{name}] joined as {}", member.id());
    let started = Instant::now();
    let leave_after = (leave_ms > 0).then(|| Duration::from_millis(leave_ms));
    let stdout = std::io::stdout();
    let mut assigned = Vec::new();
    // Bounded by DEADLINE: each pass polls for at most 50 ms.
    while started.elapsed() < DEADLINE {
        if leave_after.is_some_and(|d| started.elapsed() >= d) || bus_dir.join(STOP_FILE).exists() {
            break;
        }
        let batch = member.poll(512, Duration::from_millis(50))?;
        if member.assigned() != assigned {
            assigned = member.assigned();
            eprintln!("[{name}] partitions now {assigned:?}");
        }
        if batch.is_empty() {
            continue;
        }
        let mut out = stdout.lock();
        let mut ranges: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
        for d in &batch {
            let offset = d.record.offset().0;
            out.write_all(format!("{} {offset} ", d.partition).as_bytes())?;
            out.write_all(d.record.payload())?;
            out.write_all(b"\n")?;
            let r = ranges.entry(d.partition).or_insert((offset, offset, 0));
            r.1 = offset;
            r.2 += 1;
        }
        out.flush()?;
        drop(out);
        // Only what was printed is committed: at least once, even if this process dies here.
        member.commit()?;
        let summary: Vec<String> =
            ranges.iter().map(|(p, (first, last, n))| format!("p{p} {first}..={last} ({n})")).collect();
        eprintln!("[{name}] consumed {}", summary.join(", "));
    }
    let stats = member.stats();
    member.leave()?;
    eprintln!(
        "[{name}] left after {:.1} s: {} records, {} rebalances",
        started.elapsed().as_secs_f64(),
        stats.delivered,
        stats.rebalances
    );
    Ok(ExitCode::SUCCESS)
}

/// A member process and the thread that collects the payloads it prints.
struct Running {
    name: &'static str,
    child: Child,
    lines: JoinHandle<Vec<String>>,
}

fn spawn_member(bus_dir: &Path, name: &'static str, leave_ms: u64) -> Result<Running, Error> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("member")
        .arg(bus_dir)
        .arg(name)
        .arg(leave_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("the member's stdout is not piped")?;
    let lines = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect());
    Ok(Running { name, child, lines })
}

fn parent() -> Result<ExitCode, Error> {
    let dir = tempfile::tempdir()?;
    let bus_dir: PathBuf = dir.path().to_path_buf();
    let bus = Bus::open(&bus_dir)?;
    let topic = bus.topic_or_create(TOPIC, Some(PARTITIONS))?;
    let started = Instant::now();

    let mut members = vec![spawn_member(&bus_dir, "a", 0)?, spawn_member(&bus_dir, "b", 1_000)?];
    // The producer: ORDERS records in batches of 100 every 50 ms, keyed by order number.
    let producer = std::thread::spawn(move || -> Result<(), String> {
        let mut producer = topic.producer(LogOptions::default()).map_err(|e| e.to_string())?;
        for i in 0..ORDERS {
            producer.send(i, format!("order-{i}").as_bytes()).map_err(|e| e.to_string())?;
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        producer.sync().map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(500));
    members.push(spawn_member(&bus_dir, "c", 0)?);
    producer.join().map_err(|_| "the producer thread panicked")??;
    println!("produced {ORDERS} orders into {PARTITIONS} partitions in {:.1} s", started.elapsed().as_secs_f64());

    // Wait for the group to commit everything, watching its lag.
    let mut last_print = Instant::now();
    let lag = loop {
        let snap = BusSnapshot::take(&bus)?;
        let lag = snap.group(GROUP, TOPIC).map_or(ORDERS, |g| g.lag());
        if lag == 0 || started.elapsed() > DEADLINE {
            break lag;
        }
        if last_print.elapsed() >= Duration::from_millis(250) {
            let members = snap.group(GROUP, TOPIC).map_or(0, |g| g.members.len());
            println!("group {GROUP}: {members} members, lag {lag}");
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::write(bus_dir.join(STOP_FILE), b"")?;

    // Collect what each member printed.
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut failed = lag != 0;
    for m in members {
        let Running { name, mut child, lines } = m;
        let status = child.wait()?;
        let lines = lines.join().map_err(|_| "a reader thread panicked")?;
        let mut partitions = BTreeSet::new();
        for line in &lines {
            let mut cells = line.splitn(3, ' ');
            let (Some(p), Some(_offset), Some(payload)) = (cells.next(), cells.next(), cells.next()) else {
                println!("member {name}: unexpected line `{line}`");
                failed = true;
                continue;
            };
            partitions.insert(p.to_string());
            match payload.strip_prefix("order-").and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => *seen.entry(n).or_default() += 1,
                None => {
                    println!("member {name}: unexpected payload `{payload}`");
                    failed = true;
                }
            }
        }
        let partitions: Vec<String> = partitions.into_iter().collect();
        println!("member {name}: {} records from partitions {}, {status}", lines.len(), partitions.join(","));
        failed |= !status.success();
    }
    let missing = (0..ORDERS).filter(|n| !seen.contains_key(n)).count();
    let duplicated = seen.values().filter(|&&c| c > 1).count();
    println!(
        "{} of {ORDERS} orders consumed, {missing} missing, {duplicated} consumed twice, final lag {lag}, {:.1} s",
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    if failed || missing > 0 {
        println!("FAILED");
        return Ok(ExitCode::FAILURE);
    }
    println!("ok: every order was consumed at least once");
    Ok(ExitCode::SUCCESS)
}
