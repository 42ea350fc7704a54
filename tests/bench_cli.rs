//! `shoal bench` against its contract: the real binary, in `--quick` mode (a few seconds even
//! for a debug build), prints every figure with its baseline and ratio.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one quick bench may run before the test kills it and fails.
const RUN_WAIT: Duration = Duration::from_secs(120);

/// Every figure `--json` must print (a positive, finite number): shoal's, its baselines', and
/// the ratios.
const FIGURES: [&str; 38] = [
    "ring_hop_values_per_s",
    "rtrb_hop_values_per_s",
    "ring_hop_vs_rtrb",
    "ring_hop_batched_values_per_s",
    "rtrb_hop_batched_values_per_s",
    "ring_hop_batched_vs_rtrb",
    "append_never_records_per_s",
    "bufwriter_records_per_s",
    "append_never_vs_bufwriter",
    "append_batch64_never_records_per_s",
    "append_batch64_never_vs_bufwriter",
    "close_after_never_run_p50_ns",
    "close_after_never_run_max_ns",
    "append_interval_records_per_s",
    "bufwriter_fdatasync_1000_records_per_s",
    "append_interval_vs_bufwriter_fdatasync_1000",
    "append_batch_records_per_s",
    "append_batch_vs_bufwriter_fdatasync_1000",
    "fdatasync_each_records_per_s",
    "append_batch_vs_fdatasync_each",
    "durable_latency_p50_ns",
    "fdatasync_4kib_p50_ns",
    "durable_latency_p50_vs_fdatasync_4kib",
    "durable_latency_p99_ns",
    "fdatasync_4kib_p99_ns",
    "durable_latency_p99_vs_fdatasync_4kib",
    "durable_64kib_mb_per_s",
    "o_direct_fdatasync_mb_per_s",
    "durable_64kib_vs_o_direct",
    "replay_100b_gb_per_s",
    "bufreader_100b_gb_per_s",
    "replay_100b_vs_bufreader",
    "produce_never_lines_per_s",
    "bufwriter_program_lines_per_s",
    "produce_never_vs_bufwriter_program",
    "produce_batch_lines_per_s",
    "bufwriter_program_fdatasync_1000_lines_per_s",
    "produce_batch_vs_bufwriter_program_fdatasync_1000",
];

/// Runs `shoal args...` and waits for it, killing it and failing the test after [`RUN_WAIT`].
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal");
    let drain = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            from.read_to_end(&mut bytes).map(|_| bytes)
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for shoal") {
            break status;
        }
        if started.elapsed() > RUN_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shoal {args:?} still ran after {RUN_WAIT:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().expect("stdout reader").expect("read stdout");
    let stderr = stderr.join().expect("stderr reader").expect("read stderr");
    Output { status, stdout, stderr }
}

/// A scratch directory on the disk that holds the build (not a tmpfs /tmp).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("read the bench dir").next().is_none()
}

#[test]
fn quick_json_has_every_figure_positive_and_finite() {
    let temp = scratch();
    let dir = temp.path().to_str().expect("UTF-8 temp path");
    let out = run(&["bench", "--quick", "--json", "--dir", dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shoal bench failed: {:?}\n{stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let obj = report.as_object().expect("a JSON object");

    for key in FIGURES {
        let v = obj.get(key).unwrap_or_else(|| panic!("{key} is missing from {report}"));
        let v = v.as_f64().unwrap_or_else(|| panic!("{key} is not a number: {v}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    // Nothing else is a number: a figure added to the bench is added to the list above.
    let numbers = obj.values().filter(|v| v.is_number()).count();
    assert_eq!(numbers, FIGURES.len(), "figures printed that the list above does not name: {report}");
    assert!(obj["ratio_convention"].as_str().is_some_and(|s| s.contains("above 1 means shoal is better")));
    // A ratio is shoal over the baseline for a rate, the baseline over shoal for a latency.
    let ratio = obj["append_never_vs_bufwriter"].as_f64().expect("number");
    let expect = obj["append_never_records_per_s"].as_f64().expect("number")
        / obj["bufwriter_records_per_s"].as_f64().expect("number");
    assert!((ratio - expect).abs() <= 1e-9 * expect, "{ratio} vs {expect}");
    let ratio = obj["durable_latency_p99_vs_fdatasync_4kib"].as_f64().expect("number");
    let expect = obj["fdatasync_4kib_p99_ns"].as_f64().expect("number")
        / obj["durable_latency_p99_ns"].as_f64().expect("number");
    assert!((ratio - expect).abs() <= 1e-9 * expect, "{ratio} vs {expect}");
    let ratio = obj["produce_batch_vs_bufwriter_program_fdatasync_1000"].as_f64().expect("number");
    let expect = obj["produce_batch_lines_per_s"].as_f64().expect("number")
        / obj["bufwriter_program_fdatasync_1000_lines_per_s"].as_f64().expect("number");
    assert!((ratio - expect).abs() <= 1e-9 * expect, "{ratio} vs {expect}");
    // The close is a time of its own (no baseline), at most its max.
    let (p50, max) = (obj["close_after_never_run_p50_ns"].as_f64(), obj["close_after_never_run_max_ns"].as_f64());
    assert!(p50 <= max, "close p50 {p50:?} above its max {max:?}");

    let machine = &obj["machine"];
    assert!(machine["cpus"].as_u64().is_some_and(|n| n >= 1), "{machine}");
    for fact in ["kernel", "filesystem", "clocksource", "build", "bench_dir"] {
        assert!(machine[fact].as_str().is_some_and(|s| !s.is_empty()), "machine.{fact} in {machine}");
    }
    assert!(machine["bench_dir"].as_str().is_some_and(|d| d.starts_with(dir)), "{machine}");
    assert_eq!(obj["settings"]["repeats"], 3, "--quick runs 3 rounds");
    // The scratch files are gone; the directory given is left as it was.
    assert!(is_empty_dir(temp.path()), "the bench left files in {dir}");
}

#[test]
fn quick_table_shows_each_figure_with_baseline_and_ratio() {
    let temp = scratch();
    let dir = temp.path().to_str().expect("UTF-8 temp path");
    let out = run(&["bench", "--quick", "--dir", dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "shoal bench failed: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    for needle in [
        "ring hop, one at a time",
        "raw rtrb",
        "append 100 B, Never",
        "append_batch of 64, 100 B, Never",
        "close after 20.0 k records, max",
        "<= 5.00 ms",
        "BufWriter, fdatasync every 1000",
        "write + fdatasync each record",
        "durable latency 4 KiB p99",
        "O_DIRECT write + fdatasync",
        "replay, 100 B records",
        "BufReader",
        "shoal produce --durability never, 20.0 k lines",
        "BufWriter program, fdatasync every 1000",
        "above 1 means shoal is better",
    ] {
        assert!(stdout.contains(needle), "no `{needle}` in\n{stdout}");
    }
    // Every row with a baseline has a ratio (`1.23x`): 2 ring, 5 append, 2 latency, 1 bandwidth,
    // 1 replay, 2 produce; the two close rows have none.
    let is_ratio = |w: &str| w.strip_suffix('x').is_some_and(|n| n.parse::<f64>().is_ok());
    let rows = stdout.lines().filter(|l| l.split_whitespace().any(is_ratio)).count();
    assert_eq!(rows, 13, "{stdout}");
    let close_rows = stdout.lines().filter(|l| l.starts_with("close after")).count();
    assert_eq!(close_rows, 2, "{stdout}");
    assert!(is_empty_dir(temp.path()), "the bench left files in {dir}");
}

#[test]
fn a_bench_dir_that_cannot_be_made_is_a_one_line_error() {
    let temp = scratch();
    let file = temp.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let dir = file.join("bench");
    let out = run(&["bench", "--quick", "--dir", dir.to_str().expect("UTF-8 temp path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("shoal: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("bench directory"), "{stderr}");
}
