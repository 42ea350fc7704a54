//! Helpers shared by the tests that run the `shoal` binary.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

/// How long one command may run before the test kills it and fails.
pub const RUN_WAIT: Duration = Duration::from_secs(120);

/// How long a test waits for one line from a running child before failing.
pub const LINE_WAIT: Duration = Duration::from_secs(20);

/// Waits for `child` until `deadline`; kills it and panics past it, so a hang fails the test.
pub fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait for shoal") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran at its deadline; killed it");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads a child's pipe to the end on a thread.
pub fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs `shoal args...` with `stdin` as its input and waits for it (at most [`RUN_WAIT`]).
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = shoal()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // A command may exit without reading its input: a broken pipe is no failure of the test.
    let writer = std::thread::spawn(move || match input.write_all(&stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    });
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let status = wait_until(&mut child, Instant::now() + RUN_WAIT, &format!("shoal {args:?}"));
    writer.join().expect("stdin writer").expect("write stdin");
    Output { status, stdout: stdout.join().expect("stdout"), stderr: stderr.join().expect("stderr") }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = run(args, stdin);
    assert!(out.status.success(), "shoal {args:?} failed: {:?}\n{}", out.status, text(&out.stderr));
    out.stdout
}

/// Runs a command that must fail at runtime: exit 1 and one line on stderr; returns it.
pub fn fails(args: &[&str], stdin: &[u8]) -> String {
    let out = run(args, stdin);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "shoal {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "shoal {args:?}: one line: {err}");
    assert!(err.starts_with("shoal: "), "{err}");
    err
}

pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    text(stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

/// Lines of a child's stdout, read on a thread so that a test can wait with a timeout.
pub fn line_reader(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn next_line(lines: &Receiver<String>, what: &str) -> String {
    lines.recv_timeout(LINE_WAIT).unwrap_or_else(|e| panic!("no line for {what} within {LINE_WAIT:?}: {e}"))
}

/// Kills a child (and reaps it) when the test ends, even by a panic.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
