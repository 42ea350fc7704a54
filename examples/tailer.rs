//! Following a log from another thread with each `TailWait` strategy: an appender writes
//! records in bursts with pauses between them, a `Tailer` in another thread reads each one
//! as it is published and checks that offsets are dense and payloads intact. For every
//! strategy the example prints how long a record took from its append to the tailer (from
//! the record's timestamp) and how much CPU the tailer's thread used: `BusySpin` keeps a
//! core busy through the pauses (and hands over fastest only when it has a core of its own:
//! on a busy machine it competes with the appender), `Park` sleeps through them, and the
//! default `SpinThenPark` spins briefly and then sleeps. A tailer in another process works
//! the same way (it maps the same files).
//!
//! Run with `cargo run --release --example tailer [DIR]`: the log goes in a temporary
//! directory unless DIR is given (one log per strategy under it). Exits 0 once every record
//! was read back, in a second or two.

use std::path::Path;
use std::time::Duration;

use shoal::log::{now_ns, Appender, LogOptions, Offset, TailWait, Tailer};

type Error = Box<dyn std::error::Error>;

/// Bursts of records the appender writes, with a pause after each.
const BURSTS: u64 = 20;
/// Records per burst.
const BURST_RECORDS: u64 = 100;
/// The pause between bursts: long enough for a parking tailer to fall asleep.
const PAUSE: Duration = Duration::from_millis(10);
/// The longest the tailer waits for one record before it gives up: the appender writes
/// without stopping but for `PAUSE`, so this is only hit when something is wrong.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the tailer saw: append-to-read latencies (ns) and its thread's CPU time.
struct Followed {
    latencies_ns: Vec<u64>,
    cpu: Duration,
}

fn main() -> Result<(), Error> {
    let temp = tempfile::tempdir()?;
    let root = match std::env::args_os().nth(1) {
        Some(dir) => dir.into(),
        None => temp.path().to_path_buf(),
    };
    let strategies = [
        ("busy-spin", TailWait::BusySpin),
        ("spin-then-park (default)", TailWait::default()),
        ("park", TailWait::Park),
    ];
    println!("{:<26} {:>8} {:>10} {:>10} {:>12}", "tail wait", "records", "p50", "max", "tailer CPU");
    for (i, (name, wait)) in strategies.into_iter().enumerate() {
        let dir = root.join(format!("log-{i}"));
        let followed = follow(&dir, wait)?;
        let mut lat = followed.latencies_ns;
        lat.sort_unstable();
        let p50 = lat.get(lat.len() / 2).copied().unwrap_or(0);
        let max = lat.last().copied().unwrap_or(0);
        println!(
            "{name:<26} {:>8} {:>8} us {:>7} us {:>9} ms",
            lat.len(),
            p50 / 1000,
            max / 1000,
            followed.cpu.as_millis()
        );
    }
    println!("(p50 and max: from a record's timestamp to the tailer reading it)");
    Ok(())
}

/// Appends `BURSTS` bursts to a new log in `dir` while a tailer thread waiting by `wait`
/// follows it; checks every record the tailer read.
fn follow(dir: &Path, wait: TailWait) -> Result<Followed, Error> {
    let mut log = Appender::open(dir, LogOptions::default())?;
    // From the log's end: a DIR given twice holds the last run's records already.
    let base = log.next_offset().0;
    let mut tailer = Tailer::open_with(dir, wait)?;
    tailer.reader().seek(Offset(base))?;
    let total = BURSTS * BURST_RECORDS;
    let follower = std::thread::spawn(move || -> Result<Followed, String> {
        let cpu_start = thread_cpu();
        let mut latencies_ns = Vec::with_capacity(total as usize);
        for expected in base..base + total {
            let record = tailer
                .next(Some(RECORD_TIMEOUT))
                .map_err(|e| format!("tailer: {e}"))?
                .ok_or_else(|| format!("no record {expected} within {RECORD_TIMEOUT:?}"))?;
            let read_ns = now_ns();
            if record.offset() != Offset(expected) || record.payload() != expected.to_le_bytes() {
                return Err(format!("record {} is not the one expected ({expected})", record.offset()));
            }
            latencies_ns.push(read_ns.saturating_sub(record.timestamp_ns()));
        }
        Ok(Followed { latencies_ns, cpu: thread_cpu().saturating_sub(cpu_start) })
    });
    for burst in 0..BURSTS {
        for i in 0..BURST_RECORDS {
            let n = base + burst * BURST_RECORDS + i;
            log.append(&n.to_le_bytes())?;
        }
        std::thread::sleep(PAUSE);
    }
    let followed = follower.join().map_err(|_| "the tailer thread panicked")??;
    log.close()?;
    Ok(followed)
}

/// CPU time used by the calling thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
