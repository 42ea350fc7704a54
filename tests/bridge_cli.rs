//! `shoal bridge export` and `shoal bridge import` against a real NATS JetStream server: one
//! box produces and exports a topic, a second box (another bus directory) imports the stream,
//! and `cat --topic` shows the same bytes on both. Each test starts its own `nats-server -js`
//! on a free loopback port with its store in a temporary directory and stops it by its pid.
//!
//! `nats-server` must be on PATH (Debian: `apt-get install nats-server`); without it these
//! tests fail, they do not skip.
#![cfg(feature = "nats")]

mod cli_support;
use cli_support::*;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal::bridge::BridgeOptions;

/// How long a bridge may take to move every record of a test.
const BRIDGE_WAIT: Duration = Duration::from_secs(60);

/// A `nats-server -js` of one test, killed (by pid) and reaped when dropped.
struct NatsServer {
    child: Child,
    url: String,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js -a 127.0.0.1 -p <free port> -sd <temp dir>` and waits until it
    /// greets connections. The port is free when we look; another test of this binary can take
    /// it before the server binds (the server then exits, and our probe may even reach the
    /// other test's listener), so the server must answer with NATS' `INFO` greeting and still
    /// be running, or it is started again on a new port, a bounded number of times.
    fn start() -> NatsServer {
        for _ in 0..5 {
            if let Some(server) = NatsServer::try_start() {
                return server;
            }
        }
        panic!("nats-server did not start on a free port in 5 tries");
    }

    fn try_start() -> Option<NatsServer> {
        let store = tempfile::tempdir().expect("tempdir for the JetStream store");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): it must be on PATH for the bridge tests \
                     (Debian: apt-get install nats-server)"
                )
            });
        let mut server = NatsServer { child, url: format!("nats://127.0.0.1:{port}"), _store: store };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if server.child.try_wait().expect("wait for nats-server").is_some() {
                return None; // it could not bind: another process took the port
            }
            if nats_greets(port) {
                // Still ours: a server that lost the port exits at start.
                std::thread::sleep(Duration::from_millis(100));
                return server.child.try_wait().expect("wait for nats-server").is_none().then_some(server);
            }
            assert!(Instant::now() < deadline, "nats-server did not accept connections on port {port} within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// True when a NATS server answers on `port`: it greets every connection with `INFO {...}`.
fn nats_greets(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut greeting = [0u8; 5];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO "
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Child::kill signals this child's pid (SIGKILL); wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JetStream client of the test, on a current-thread tokio runtime.
struct Js {
    rt: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
}

impl Js {
    fn connect(url: &str) -> Js {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let client = rt.block_on(async_nats::connect(url)).expect("connect to nats-server");
        // The context spawns a task: it must be built inside the runtime.
        let js = {
            let _inside = rt.enter();
            async_nats::jetstream::new(client)
        };
        Js { rt, js }
    }

    /// Messages the stream holds now.
    fn messages(&self, name: &str) -> u64 {
        self.rt.block_on(async {
            let mut stream = self.js.get_stream(name).await.expect("get the stream");
            stream.info().await.expect("stream info").state.messages
        })
    }
}

/// Sends `signal` to a child.
fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// Starts `shoal bridge <direction> ...` with stderr captured.
fn bridge(direction: &str, bus: &str, topic: &str, url: &str, stream: &str) -> KillOnDrop {
    let child = shoal()
        .args(["bridge", direction, bus, "--topic", topic, "--nats", url, "--stream", stream])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal bridge");
    KillOnDrop(child)
}

/// Sends SIGTERM to a running bridge and checks that it exits 0 with nothing on stdout;
/// returns its stderr (the status lines).
fn stop_bridge(mut bridge: KillOnDrop, what: &str) -> String {
    let stdout = drain(bridge.0.stdout.take().expect("stdout"));
    let stderr = drain(bridge.0.stderr.take().expect("stderr"));
    signal(&bridge.0, libc::SIGTERM);
    let status = wait_until(&mut bridge.0, Instant::now() + Duration::from_secs(20), what);
    let stderr = text(&stderr.join().expect("stderr"));
    assert!(status.success(), "{what} must exit 0 on SIGTERM: {status:?}\n{stderr}");
    assert!(stdout.join().expect("stdout").is_empty(), "{what} prints nothing on stdout");
    stderr
}

/// Waits until the bridge prints a status line for which `wanted` holds (it reports about
/// once a second, after it has connected: how soon depends on the machine's load, so the
/// test waits for the line rather than a fixed time), then stops it as [`stop_bridge`]
/// does; returns every status line it printed.
fn stop_bridge_after(mut bridge: KillOnDrop, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let lines = line_reader_of(bridge.0.stderr.take().expect("stderr"));
    let stdout = drain(bridge.0.stdout.take().expect("stdout"));
    let deadline = Instant::now() + BRIDGE_WAIT;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| wanted(l)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => seen.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: no such status line within {BRIDGE_WAIT:?}:\n{}",
                    seen.join("\n")
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{what}: the bridge exited before the status line:\n{}", seen.join("\n"))
            }
        }
    }
    signal(&bridge.0, libc::SIGTERM);
    let status = wait_until(&mut bridge.0, Instant::now() + Duration::from_secs(20), what);
    seen.extend(lines.iter());
    let stderr = seen.join("\n");
    assert!(status.success(), "{what} must exit 0 on SIGTERM: {status:?}\n{stderr}");
    assert!(stdout.join().expect("stdout").is_empty(), "{what} prints nothing on stdout");
    stderr
}

/// Lines of a child's stderr, read on a thread.
fn line_reader_of(from: std::process::ChildStderr) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits until `done` holds, failing the test if `bridge` exits first or time runs out.
fn wait_for(bridge: &mut KillOnDrop, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BRIDGE_WAIT;
    while !done() {
        if let Some(status) = bridge.0.try_wait().expect("wait for shoal bridge") {
            let stderr = bridge.0.stderr.take().map(|e| text(&drain(e).join().expect("stderr"))).unwrap_or_default();
            panic!("{what}: the bridge exited early: {status:?}\n{stderr}");
        }
        assert!(Instant::now() < deadline, "{what}: not done within {BRIDGE_WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The raw `cat --topic --partition p` output of every partition.
fn partitions_bytes(bus: &str, topic: &str, partitions: u32) -> Vec<Vec<u8>> {
    (0..partitions).map(|p| ok(&["cat", bus, "--topic", topic, "--partition", &p.to_string()], b"")).collect()
}

fn bus_arg(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().expect("UTF-8 temp path").to_string()
}

#[test]
fn export_then_import_on_a_second_box_gives_the_same_bytes() {
    let server = NatsServer::start();
    let js = Js::connect(&server.url);
    let temp = tempfile::tempdir().expect("tempdir");
    let (box_a, box_b) = (bus_arg(temp.path(), "a"), bus_arg(temp.path(), "b"));
    let (topic, stream, partitions, records) = ("orders", "ORDERS", 4u32, 2000u64);
    // The library's helper; the bridge's default subjects are shoal.<topic>.<partition>.
    let opts = BridgeOptions::default().nats_url(server.url.clone()).stream(stream);
    shoal::bridge::create_stream(&opts, &[format!("shoal.{topic}.>")]).expect("create the stream");

    // Box A: records with bytes that are not UTF-8 and a tab inside, round-robin over 4
    // partitions.
    let mut input = Vec::new();
    for i in 0..records {
        input.extend_from_slice(format!("order {i}\t").as_bytes());
        input.extend_from_slice(&[0xff, 0xfe, (i % 251) as u8 & 0x7f | 0x01]);
        input.extend_from_slice(b" end\n");
    }
    ok(&["produce", &box_a, "--topic", topic, "--partitions", &partitions.to_string()], &input);

    let mut export = bridge("export", &box_a, topic, &server.url, stream);
    wait_for(&mut export, "export", || js.messages(stream) >= records);
    let status = stop_bridge(export, "shoal bridge export");
    let stopped = format!("{records} records acknowledged, 0 duplicates, 0 retries");
    assert!(
        status.lines().any(|l| l.starts_with("shoal bridge export: stopped after ") && l.ends_with(&stopped)),
        "{status}"
    );
    assert_eq!(js.messages(stream), records, "the stream holds every record exactly once");

    // A restart of the export sends nothing twice.
    let again = bridge("export", &box_a, topic, &server.url, stream);
    // It runs past its first status report with nothing to send.
    let idle = "shoal bridge export: 0 acknowledged, 0 duplicates, 0 in flight, lag 0, 0/s, connected, retries 0";
    let status = stop_bridge_after(again, "shoal bridge export (restarted)", |l| l == idle);
    assert_eq!(js.messages(stream), records, "a restarted export duplicates nothing");
    assert!(status.lines().any(|l| l == idle), "a status line `{idle}`:\n{status}");

    // Box B: an empty directory; import creates the bus and the topic.
    let mut import = bridge("import", &box_b, topic, &server.url, stream);
    // Records in the topic; 0 while the importer is still creating the bus and the topic.
    let count = |bus: &str| {
        let out = run(&["cat", bus, "--topic", topic], b"");
        if out.status.success() {
            out.stdout.iter().filter(|&&b| b == b'\n').count() as u64
        } else {
            0
        }
    };
    wait_for(&mut import, "import", || count(&box_b) >= records);
    stop_bridge(import, "shoal bridge import");
    assert_eq!(partitions_bytes(&box_b, topic, partitions), partitions_bytes(&box_a, topic, partitions));

    // A restarted import appends nothing twice.
    let again = bridge("import", &box_b, topic, &server.url, stream);
    // The importer's first report comes a second after it has connected and set up its
    // consumer. The connection state is left out here; tests/bridge.rs checks that an idle
    // importer on a live server reports itself connected.
    let idle = |l: &str| l.starts_with("shoal bridge import: 0 imported, lag 0, 0/s, ") && l.ends_with(", retries 0");
    let status = stop_bridge_after(again, "shoal bridge import (restarted)", idle);
    assert_eq!(count(&box_b), records);
    assert!(status.lines().any(idle), "a status line `0 imported, lag 0, 0/s, ..., retries 0`:\n{status}");
}

#[test]
fn a_bad_url_or_a_missing_stream_is_one_line_and_exit_1() {
    let temp = tempfile::tempdir().expect("tempdir");
    let bus = bus_arg(temp.path(), "bus");
    ok(&["produce", &bus, "--topic", "t"], b"one\ntwo\n");
    // Nothing listens on a port we just had the OS pick and released.
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    for url in ["not a url", &format!("nats://127.0.0.1:{port}")] {
        let err = fails(&["bridge", "export", &bus, "--topic", "t", "--nats", url, "--stream", "S"], b"");
        assert!(err.contains("bridge export"), "{err}");
    }
    let server = NatsServer::start();
    let err = fails(&["bridge", "export", &bus, "--topic", "t", "--nats", &server.url, "--stream", "MISSING"], b"");
    assert!(err.contains("MISSING"), "the error names the stream: {err}");
    let err = fails(&["bridge", "import", &bus, "--topic", "t", "--nats", &server.url, "--stream", "MISSING"], b"");
    assert!(err.contains("MISSING"), "the error names the stream: {err}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["bridge"],
        vec!["bridge", "export"],
        vec!["bridge", "export", "bus", "--topic", "t", "--stream", "S"],
        vec!["bridge", "import", "bus", "--topic", "t", "--nats", "nats://127.0.0.1:4222"],
        vec!["bridge", "sideways", "bus"],
    ] {
        let out = run(&args, b"");
        assert_eq!(out.status.code(), Some(2), "shoal {args:?}: {}", text(&out.stderr));
    }
}

/// How long a bridge may take to exit after SIGTERM: the promise is 1 s; the rest is room
/// for a loaded 2-core machine (process exit, the status thread, the scheduler). Before the
/// bridges looked at the stop flag in every wait, an idle exporter with its server gone never
/// exited, and a start against a silent server took over 5 s.
const EXIT_AFTER_SIGTERM: Duration = Duration::from_secs(3);

/// Waits for a stderr line of a bridge for which `wanted` holds; returns the lines seen.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, what: &str, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + BRIDGE_WAIT;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| wanted(l)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: no such status line within {BRIDGE_WAIT:?}:\n{}", seen.join("\n"));
        match lines.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => seen.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{what}: the bridge exited before the status line:\n{}", seen.join("\n"))
            }
        }
    }
    seen
}

/// Sends SIGTERM and checks that the bridge exits 0 within [`EXIT_AFTER_SIGTERM`].
fn term_exits_promptly(mut bridge: KillOnDrop, what: &str) {
    let sent = Instant::now();
    signal(&bridge.0, libc::SIGTERM);
    let status = wait_until(&mut bridge.0, sent + EXIT_AFTER_SIGTERM, what);
    let took = sent.elapsed();
    assert!(status.success(), "{what} must exit 0 on SIGTERM: {status:?}");
    assert!(took <= EXIT_AFTER_SIGTERM, "{what}: exited {took:?} after SIGTERM");
}

#[test]
fn sigterm_ends_an_idle_exporter_whose_server_is_gone_which_says_so() {
    let server = NatsServer::start();
    let temp = tempfile::tempdir().expect("tempdir");
    let bus = bus_arg(temp.path(), "bus");
    let opts = BridgeOptions::default().nats_url(server.url.clone()).stream("IDLE");
    shoal::bridge::create_stream(&opts, &["shoal.t.>".to_string()]).expect("create the stream");
    ok(&["produce", &bus, "--topic", "t"], b"one\ntwo\n");
    let mut export = bridge("export", &bus, "t", &server.url, "IDLE");
    let lines = line_reader_of(export.0.stderr.take().expect("stderr"));
    let _stdout = drain(export.0.stdout.take().expect("stdout"));
    wait_for_line(&lines, "export connected", |l| l.contains(" 2 acknowledged") && l.contains(", connected,"));
    drop(server); // SIGKILL: the idle exporter's connection closes under it
                  // The status stops saying "connected" and tells the reconnection attempts instead.
    let seen = wait_for_line(&lines, "export reconnecting", |l| l.contains("reconnecting (attempt "));
    let last = seen.last().expect("a line");
    assert!(last.contains("next in ") && !last.contains(", connected,"), "{last}");
    term_exits_promptly(export, "idle exporter, server gone");
}

#[test]
fn sigterm_ends_a_reconnecting_importer_a_busy_exporter_and_a_start_against_a_silent_server() {
    let server = NatsServer::start();
    let temp = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (bus_arg(temp.path(), "src"), bus_arg(temp.path(), "dst"));
    let opts = BridgeOptions::default().nats_url(server.url.clone()).stream("BUSY");
    shoal::bridge::create_stream(&opts, &["shoal.t.>".to_string()]).expect("create the stream");
    let input: Vec<u8> = (0..200_000).flat_map(|i| format!("record {i}\n").into_bytes()).collect();
    ok(&["produce", &src, "--topic", "t"], &input);

    // Busy: SIGTERM while publishes are in flight.
    let mut export = bridge("export", &src, "t", &server.url, "BUSY");
    let lines = line_reader_of(export.0.stderr.take().expect("stderr"));
    let _stdout = drain(export.0.stdout.take().expect("stdout"));
    wait_for_line(&lines, "export busy", |l| l.contains(" acknowledged,") && !l.contains(" 0 acknowledged,"));
    term_exits_promptly(export, "busy exporter");

    // Reconnecting: the importer's server is gone.
    let mut import = bridge("import", &dst, "t", &server.url, "BUSY");
    let lines = line_reader_of(import.0.stderr.take().expect("stderr"));
    let _stdout = drain(import.0.stdout.take().expect("stdout"));
    wait_for_line(&lines, "import connected", |l| l.contains(", connected,"));
    drop(server);
    wait_for_line(&lines, "import reconnecting", |l| l.contains("reconnecting (attempt "));
    term_exits_promptly(import, "reconnecting importer");

    // Start-up against a server that accepts connections and never greets them: each
    // connection attempt waits for its timeout.
    let silent = TcpListener::bind("127.0.0.1:0").expect("a listener");
    let url = format!("nats://{}", silent.local_addr().expect("its address"));
    let fresh = bus_arg(temp.path(), "fresh");
    let mut import = bridge("import", &fresh, "t", &url, "BUSY");
    let _stderr = drain(import.0.stderr.take().expect("stderr"));
    let _stdout = drain(import.0.stdout.take().expect("stdout"));
    // Long enough for the command to be inside its first connection attempt.
    std::thread::sleep(Duration::from_millis(300));
    term_exits_promptly(import, "importer starting against a silent server");
    assert!(!Path::new(&fresh).exists(), "a stopped start creates no bus");
}

#[test]
fn a_failed_import_creates_nothing() {
    let temp = tempfile::tempdir().expect("tempdir");
    let bus = bus_arg(temp.path(), "bus");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let err = fails(
        &["bridge", "import", &bus, "--topic", "t", "--nats", &format!("nats://127.0.0.1:{port}"), "--stream", "S"],
        b"",
    );
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!Path::new(&bus).exists(), "an import that could not connect created {bus}");
    let server = NatsServer::start();
    let err = fails(&["bridge", "import", &bus, "--topic", "t", "--nats", &server.url, "--stream", "MISSING"], b"");
    assert!(err.contains("MISSING"), "{err}");
    assert!(!Path::new(&bus).exists(), "an import of a missing stream created {bus}");
}
