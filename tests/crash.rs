//! Crash tests: a producer process is killed with SIGKILL at random moments, round after
//! round, appending to the same log; after every kill the log is read back and checked
//! against what was sent and what was acknowledged durable.
//!
//! Two producers run the same loop:
//! - `shoal produce <DIR> --durability batch --ack` (the CLI contract: one record per stdin
//!   line; `durable below <N>` on stdout means every record with offset < N is durable);
//! - this test binary re-executed as a child that drives `Appender` directly with the same
//!   protocol, once per io backend.
//!
//! After each kill: every acknowledged record is present, in order, byte for byte; records
//! after the acknowledged prefix are only lines that were sent, in order; the records of
//! earlier rounds are unchanged. Set `SHOAL_TEST_SEED` to replay a run.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal::log::{Appender, Durability, IoBackend, Offset};

use common::{backend_from_name, backend_name, child_command, child_mode, parse_report, read_all, report, small_opts};

const ROUNDS: usize = 50;
const LINES_PER_ROUND: usize = 3000;
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Who produces the records.
#[derive(Clone, Copy, Debug)]
enum Producer {
    /// `shoal produce`.
    Cli,
    /// This binary as a child, appending with the library.
    Library(IoBackend),
}

fn seed() -> u64 {
    let seed = std::env::var("SHOAL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("crash test seed: SHOAL_TEST_SEED={seed}");
    seed
}

/// The unique lines of one round: `r{round}-{i}-` and random-length padding.
fn round_lines(rng: &mut StdRng, round: usize) -> Vec<Vec<u8>> {
    // Random text to cut padding from (two draws per line keep this cheap in debug builds).
    const PAD: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let text: Vec<u8> = (0..4096).map(|_| PAD[rng.gen_range(0..PAD.len())]).collect();
    (0..LINES_PER_ROUND)
        .map(|i| {
            let mut line = format!("r{round}-{i}-").into_bytes();
            let start = rng.gen_range(0..text.len() - 200);
            line.extend_from_slice(&text[start..start + rng.gen_range(0..200)]);
            line
        })
        .collect()
}

fn spawn(producer: Producer, test_name: &str, dir: &Path) -> Child {
    let mut cmd = match producer {
        Producer::Cli => {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
            cmd.arg("produce").arg(dir).args(["--durability", "batch", "--ack"]);
            cmd
        }
        Producer::Library(backend) => {
            let mut cmd = child_command(test_name, "produce");
            cmd.env("SHOAL_CRASH_DIR", dir).env("SHOAL_CRASH_BACKEND", backend_name(backend));
            cmd
        }
    };
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start the producer {producer:?}: {e}"))
}

/// Parses an acknowledgement line; `None` for lines that are not one.
fn parse_ack(producer: Producer, line: &str) -> Option<u64> {
    match producer {
        // The CLI's watermark is exclusive; the test counts the last durable record.
        Producer::Cli => line.strip_prefix("durable below ")?.trim().parse::<u64>().ok()?.checked_sub(1),
        Producer::Library(_) => parse_report(line)?.strip_prefix("durable ")?.trim().parse().ok(),
    }
}

/// The kill loop shared by every producer.
fn kill_loop(producer: Producer, test_name: &str) {
    let started = Instant::now();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model: Vec<Vec<u8>> = Vec::new();
    let mut rounds_acked = 0usize;
    let mut rounds_with_unacked_tail = 0usize;
    for round in 0..ROUNDS {
        let lines = Arc::new(round_lines(&mut rng, round));
        let mut child = spawn(producer, test_name, dir.path());
        let mut stdin = child.stdin.take().expect("stdin piped");
        let stdout = child.stdout.take().expect("stdout piped");

        // Lines handed to the pipe so far (an upper bound on what the child can have read).
        let sent = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (lines, sent) = (lines.clone(), sent.clone());
            let mut wrng = StdRng::seed_from_u64(rng.gen());
            std::thread::spawn(move || {
                let mut i = 0;
                while i < lines.len() {
                    let n = wrng.gen_range(1..=48).min(lines.len() - i);
                    let mut buf = Vec::new();
                    for line in &lines[i..i + n] {
                        buf.extend_from_slice(line);
                        buf.push(b'\n');
                    }
                    sent.store(i + n, Ordering::SeqCst);
                    if stdin.write_all(&buf).is_err() {
                        return; // the child is gone
                    }
                    i += n;
                    if wrng.gen_bool(0.3) {
                        std::thread::sleep(Duration::from_micros(wrng.gen_range(0..300)));
                    }
                }
                // Dropping stdin ends the input: the child syncs and exits 0.
            })
        };
        let (ack_tx, ack_rx) = mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            let mut strays = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match parse_ack(producer, &line) {
                    Some(n) => {
                        let _ = ack_tx.send(n);
                    }
                    None => strays.push(line),
                }
            }
            strays
        });

        // Kill at a random moment: counted from the start, or from the first ack so that
        // most rounds die with acknowledged records and appends in flight.
        let delay = Duration::from_micros(rng.gen_range(1_000..=40_000));
        let mut acks = Vec::new();
        if rng.gen_bool(0.5) {
            match ack_rx.recv_timeout(FIRST_ACK_TIMEOUT) {
                Ok(n) => acks.push(n),
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!(
                        "round {round}: the producer {producer:?} printed no `durable <N>` line within \
                         {FIRST_ACK_TIMEOUT:?} (exit: {status:?}); it must ack with --ack (seed {seed})"
                    );
                }
            }
        }
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL; fails only when the child already exited
        let status = child.wait().expect("wait for the producer");
        writer.join().expect("writer thread");
        let strays = reader.join().expect("reader thread");
        acks.extend(ack_rx.try_iter());
        if producer_is_cli(producer) {
            assert!(
                strays.is_empty(),
                "round {round}: `shoal produce --ack` printed lines that are not `durable below <N>`: {strays:?}"
            );
        }
        assert!(acks.windows(2).all(|w| w[0] <= w[1]), "round {round}: acks went backwards: {acks:?}");
        let acked = acks.last().copied();

        let records = read_all(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: reading the log after the kill failed: {e} (seed {seed})"));
        assert!(
            records.len() >= model.len(),
            "round {round}: the log lost records of earlier rounds: {} before, {} now (seed {seed})",
            model.len(),
            records.len()
        );
        if let Some(i) = (0..model.len()).find(|&i| records[i] != model[i]) {
            panic!(
                "round {round}: record {i} of an earlier round changed: was {:?}, is {:?} (seed {seed})",
                String::from_utf8_lossy(&model[i]),
                String::from_utf8_lossy(&records[i])
            );
        }
        let new = &records[model.len()..];
        let sent = sent.load(Ordering::SeqCst);
        assert!(
            new.len() <= sent,
            "round {round}: {} records appended but only {sent} lines were sent (seed {seed})",
            new.len()
        );
        for (k, rec) in new.iter().enumerate() {
            assert!(
                rec == &lines[k],
                "round {round}: record {} is {:?}, but line {k} sent was {:?} (seed {seed})",
                model.len() + k,
                String::from_utf8_lossy(rec),
                String::from_utf8_lossy(&lines[k])
            );
        }
        if let Some(n) = acked {
            assert!(
                n >= model.len() as u64,
                "round {round}: ack {n} is below the records present before the round ({}) (seed {seed})",
                model.len()
            );
            assert!(
                (n as usize) < records.len(),
                "round {round}: record {n} was acknowledged durable but the log holds only {} records (seed {seed})",
                records.len()
            );
            rounds_acked += 1;
            if (n as usize) + 1 < records.len() {
                rounds_with_unacked_tail += 1;
            }
        }
        if status.success() {
            assert_eq!(new.len(), lines.len(), "round {round}: the producer exited 0 without appending every line");
        }
        model = records;
    }

    // After the last kill, an appender recovers the log with every record intact.
    let log = Appender::open(dir.path(), small_opts(IoBackend::Auto)).expect("reopen after the last kill");
    assert_eq!(log.next_offset(), Offset(model.len() as u64));
    drop(log);
    assert_eq!(read_all(dir.path()).expect("read after recovery"), model);
    assert!(
        rounds_acked >= ROUNDS / 3,
        "only {rounds_acked} of {ROUNDS} rounds saw an ack before the kill: the test did not exercise durability"
    );
    eprintln!(
        "{producer:?}: {ROUNDS} rounds, {} records, {rounds_acked} rounds acked, {rounds_with_unacked_tail} with \
         unacknowledged survivors, {:?}",
        model.len(),
        started.elapsed()
    );
}

fn producer_is_cli(producer: Producer) -> bool {
    matches!(producer, Producer::Cli)
}

/// The child: appends one record per stdin line with the library, acks like `shoal produce`.
fn producer_child() -> ! {
    let dir = std::env::var("SHOAL_CRASH_DIR").expect("SHOAL_CRASH_DIR");
    let backend = backend_from_name(&std::env::var("SHOAL_CRASH_BACKEND").expect("SHOAL_CRASH_BACKEND"));
    let opts = small_opts(backend).durability(Durability::Batch);
    let mut log = match Appender::open(&dir, opts) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("child: open failed: {e}");
            std::process::exit(1);
        }
    };
    let watch = log.durable_watch();
    let start = watch.durable_offset().0;
    std::thread::spawn(move || {
        let mut last = start;
        loop {
            let durable = watch.durable_offset().0;
            if durable > last {
                report(&format!("durable {}", durable - 1));
                last = durable;
            }
            if watch.wait_durable(Offset(durable), Some(Duration::from_millis(50))).is_err() {
                return;
            }
        }
    });
    let stdin = std::io::stdin();
    for line in stdin.lock().split(b'\n') {
        let Ok(line) = line else { break };
        if let Err(e) = log.append(&line) {
            eprintln!("child: append failed: {e}");
            std::process::exit(1);
        }
    }
    match log.sync() {
        Ok(durable) if durable.0 > 0 => report(&format!("durable {}", durable.0 - 1)),
        Ok(_) => {}
        Err(e) => {
            eprintln!("child: sync failed: {e}");
            std::process::exit(1);
        }
    }
    std::process::exit(0);
}

fn child_entry() {
    if child_mode().as_deref() == Some("produce") {
        producer_child();
    }
}

#[test]
fn shoal_produce_survives_sigkill() {
    kill_loop(Producer::Cli, "shoal_produce_survives_sigkill");
}

#[test]
fn library_producer_survives_sigkill_uring() {
    child_entry();
    kill_loop(Producer::Library(IoBackend::Uring), "library_producer_survives_sigkill_uring");
}

#[test]
fn library_producer_survives_sigkill_syscalls() {
    child_entry();
    kill_loop(Producer::Library(IoBackend::Syscalls), "library_producer_survives_sigkill_syscalls");
}

/// A log with a sealed segment that lost its end marker (its file cut right after its last
/// record) and a zeroed commit word in the middle of the next segment, many segments after
/// it. Returns the records a repair must keep.
fn damaged_log_for_repair(dir: &Path, records: usize) -> Vec<String> {
    let opts = small_opts(IoBackend::Auto).max_record_bytes(1024);
    let mut log = Appender::open(dir, opts).expect("open a new log");
    let lines: Vec<String> = (0..records).map(|i| format!("rec-{i}-{}", "x".repeat(i % 40))).collect();
    for line in &lines {
        log.append(line.as_bytes()).expect("append");
    }
    log.sync().expect("sync");
    drop(log);
    let segments = common::segment_files(dir);
    assert!(segments.len() > 8, "want many segments, got {}", segments.len());
    // Segment 0: cut right after its last record (end marker and zeros lost).
    let bytes = std::fs::read(&segments[0]).expect("read segment 0");
    let positions = common::record_positions(&bytes);
    let (last, len) = *positions.last().expect("records in segment 0");
    let end = last + shoal::log::format::record_stride(len);
    std::fs::OpenOptions::new().write(true).open(&segments[0]).expect("open").set_len(end as u64).expect("truncate");
    // Segment 1: the commit word of its middle record zeroed.
    let mut bytes = std::fs::read(&segments[1]).expect("read segment 1");
    let base = common::header_of(&segments[1]).base_offset as usize;
    let positions = common::record_positions(&bytes);
    let k = positions.len() / 2;
    bytes[positions[k].0..positions[k].0 + 4].fill(0);
    std::fs::write(&segments[1], &bytes).expect("write segment 1");
    lines[..base + k].to_vec()
}

fn shoal_cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

/// Runs `shoal` to its end; returns (exit code, stdout, stderr).
fn shoal_run(args: &[&str], env: Option<(&str, &str)>, stdin: &[u8]) -> (Option<i32>, Option<i32>, String, String) {
    use std::os::unix::process::ExitStatusExt;
    let mut command = shoal_cli();
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some((k, v)) = env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn shoal");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let out = child.wait_with_output().expect("wait for shoal");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), out.status.signal(), text(&out.stdout), text(&out.stderr))
}

/// After an interrupted repair: a second `--repair` (or an appender's open, with
/// `finish_with_produce`) finishes it; then `verify` exits 0, every record before the first
/// damage is there byte for byte, and `produce` appends right after them.
fn check_repair_finishes(dir: &Path, keep: &[String], context: &str, finish_with_produce: bool) {
    let log = dir.to_str().expect("UTF-8 path");
    if finish_with_produce {
        let (code, _, out, err) = shoal_run(&["produce", log], None, b"");
        assert_eq!(code, Some(0), "{context}: produce after the kill: {out}{err}");
    }
    let (code, _, out, err) = shoal_run(&["verify", log, "--repair"], None, b"");
    assert_eq!(code, Some(0), "{context}: second repair: {out}{err}");
    let (code, _, out, err) = shoal_run(&["verify", log], None, b"");
    assert_eq!(code, Some(0), "{context}: verify after the repair: {out}{err}");
    let (code, _, out, err) = shoal_run(&["cat", log], None, b"");
    assert_eq!(code, Some(0), "{context}: cat: {err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), keep.len(), "{context}: records kept");
    assert!(got.iter().zip(keep).all(|(a, b)| a == b), "{context}: a kept record changed");
    let (code, _, out, err) = shoal_run(&["produce", log, "--ack"], None, b"after the repair\n");
    assert_eq!(code, Some(0), "{context}: produce: {err}");
    let want = format!("durable below {}", keep.len() + 1);
    assert_eq!(out.trim(), want, "{context}: the next offset follows the kept records");
}

/// `shoal verify --repair` killed with SIGKILL at each of its steps (the fail points of
/// `log::scan`: journal written, end marker written back, segment cut, each later segment
/// removed, watermark reset, journal removed): a second repair (or an appender's open)
/// finishes it. Before, a repair killed while removing later segments left a log where
/// `--repair` said "nothing to repair", `produce` refused and `cat` silently stopped.
#[test]
fn repair_killed_at_each_step_is_finished_by_the_next() {
    let pristine = tempfile::tempdir().expect("temp dir");
    let keep = damaged_log_for_repair(pristine.path(), 20_000);
    let steps = ["repair-seal", "repair-journal", "repair-cut", "repair-unlink", "repair-head", "repair-done"];
    for (i, step) in steps.iter().enumerate() {
        let scratch = tempfile::tempdir().expect("temp dir");
        common::copy_dir(pristine.path(), scratch.path());
        let log = scratch.path().to_str().expect("UTF-8 path");
        let (code, signal, out, err) = shoal_run(&["verify", log, "--repair"], Some(("SHOAL_FAIL_POINT", step)), b"");
        assert_eq!((code, signal), (None, Some(9)), "{step}: the repair was not killed there: {out}{err}");
        check_repair_finishes(scratch.path(), &keep, step, i % 2 == 1);
    }
}

/// `shoal verify --repair` killed with SIGKILL at random instants, several times in a row on
/// the same log: the repair that finally runs to its end leaves a sound log with every
/// record before the damage.
#[test]
fn repair_killed_at_random_times_is_finished_by_the_next() {
    let mut rng = StdRng::seed_from_u64(seed());
    let pristine = tempfile::tempdir().expect("temp dir");
    let keep = damaged_log_for_repair(pristine.path(), 20_000);
    // Kill within the time one whole repair takes, measured here.
    let timing = tempfile::tempdir().expect("temp dir");
    common::copy_dir(pristine.path(), timing.path());
    let started = Instant::now();
    let (code, _, out, err) = shoal_run(&["verify", timing.path().to_str().expect("UTF-8"), "--repair"], None, b"");
    assert_eq!(code, Some(0), "{out}{err}");
    let whole_us = (started.elapsed().as_micros() as u64).max(1000);
    for round in 0..4 {
        let scratch = tempfile::tempdir().expect("temp dir");
        common::copy_dir(pristine.path(), scratch.path());
        let log = scratch.path().to_str().expect("UTF-8 path");
        for kill in 0..6 {
            let mut child = shoal_cli()
                .args(["verify", log, "--repair"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn repair");
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..whole_us)));
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("round {round}: kill {kill} done");
        }
        check_repair_finishes(scratch.path(), &keep, &format!("round {round}"), round % 2 == 1);
    }
}
