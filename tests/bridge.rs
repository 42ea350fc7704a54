#![cfg(feature = "nats")]
//! The NATS JetStream bridge against a real `nats-server` (Debian package `nats-server`):
//! every test starts its own server with JetStream on a free loopback port, with its store
//! in a temporary directory, and stops it by process id when it ends.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shoal::bridge::{self, BridgeError, BridgeOptions, BridgeStats, BridgeStatus};
use shoal::bus::{key_hash, partition_for_key, Bus};
use shoal::log::{LogOptions, NewRecord, Reader};

const TOPIC: &str = "t";
const PARTITIONS: u32 = 2;
const CHILD_ENV: &str = "SHOAL_BRIDGE_TEST_CHILD";

fn nats_server_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Debian installs it in /usr/sbin, which is not on every user's PATH.
    dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for d in dirs {
        let candidate = d.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("nats-server is not installed: these tests need a real server; install it with `apt-get install -y nats-server` (Debian/Ubuntu) or put nats-server on PATH");
}

/// True when a NATS server answers on `port`: it greets every connection with `INFO {...}`.
fn nats_greets(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut greeting = [0u8; 5];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO "
}

/// A nats-server with JetStream, killed (by pid) on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Server {
    /// A server on a free port. The port is free when we look; another test of this binary
    /// can take it before the server binds (the server then exits at start), so it is started
    /// again on a new port, a bounded number of times.
    fn start() -> Server {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut s = Server { child: None, port, store: tempfile::tempdir().unwrap() };
            if s.try_spawn() {
                return s;
            }
        }
        panic!("nats-server did not start on a free port in 5 tries");
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Restarts the server on its port (after `kill` or `stop`).
    fn spawn(&mut self) {
        assert!(self.try_spawn(), "nats-server did not restart on port {}", self.port);
    }

    /// Starts the server and waits until it greets connections on its port; false when it
    /// exited instead (the port was taken).
    fn try_spawn(&mut self) -> bool {
        let child = Command::new(nats_server_path())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = self.child.as_mut().is_some_and(|c| c.try_wait().expect("wait for nats-server").is_some());
            if exited {
                self.child = None;
                return false;
            }
            if nats_greets(self.port) {
                // Still ours: a server that lost the port exits at start.
                std::thread::sleep(Duration::from_millis(100));
                if self.child.as_mut().is_some_and(|c| c.try_wait().expect("wait for nats-server").is_some()) {
                    self.child = None;
                    return false;
                }
                return true;
            }
            assert!(Instant::now() < deadline, "nats-server did not listen on port {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown that keeps what it acknowledged).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as libc::pid_t;
            // SAFETY: kill(2) takes no pointers; the pid is our own child's, not yet reaped.
            let _ = unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn opts(url: &str, stream: &str) -> BridgeOptions {
    BridgeOptions::default().nats_url(url).stream(stream)
}

fn payload(p: u32, i: u64) -> Vec<u8> {
    let unit = format!("p{p}-r{i};");
    unit.repeat(1 + (i % 17) as usize).into_bytes()
}

/// Appends `n` records per partition, keys `i`.
fn produce(bus: &Bus, from: u64, n: u64) {
    let t = bus.topic_or_create(TOPIC, Some(PARTITIONS)).unwrap();
    let mut prod = t.producer(LogOptions::default()).unwrap();
    for i in from..from + n {
        for p in 0..PARTITIONS {
            prod.send_to(p, i, &payload(p, i)).unwrap();
        }
    }
    prod.sync().unwrap();
}

/// Every record of every partition: (key, payload).
fn local_records(bus: &Bus) -> Vec<Vec<(u64, Vec<u8>)>> {
    let t = bus.topic(TOPIC).unwrap();
    (0..t.partitions())
        .map(|p| {
            let mut v = Vec::new();
            // A partition nothing was appended to yet has no log.
            let Ok(mut r) = Reader::open(t.partition_dir(p).unwrap()) else { return v };
            while let Some(rec) = r.next_ref().unwrap() {
                v.push((rec.key(), rec.payload().to_vec()));
            }
            v
        })
        .collect()
}

fn create_stream(url: &str, stream: &str) {
    bridge::create_stream(&opts(url, stream), &[format!("shoal.{TOPIC}.>")]).unwrap();
}

fn stream_count(url: &str, stream: &str) -> u64 {
    rt().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.unwrap();
        s.info().await.unwrap().state.messages
    })
}

/// Every message of the stream, in order: (subject, key header, offset header, payload).
fn stream_messages(url: &str, stream: &str) -> Vec<(String, u64, u64, Vec<u8>)> {
    rt().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.unwrap();
        let total = s.info().await.unwrap().state.messages;
        let consumer =
            s.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
        let mut msgs = consumer.messages().await.unwrap();
        let mut out = Vec::new();
        while (out.len() as u64) < total {
            let m = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await.unwrap().unwrap().unwrap();
            let h = m.headers.clone().unwrap();
            // Two headers: the message id `<topic>/<p>/<offset>` and one `Shoal-Meta`.
            assert_eq!(h.len(), 2, "headers of {}: {h:?}", m.subject);
            let id = h.get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str().to_string();
            let offset = id.rsplit('/').next().unwrap().parse::<u64>().unwrap();
            let meta = h.get(bridge::HEADER_META).and_then(|v| bridge::Meta::parse(v.as_str()));
            let meta = meta.unwrap_or_else(|| panic!("no valid {} header in {h:?}", bridge::HEADER_META));
            assert_eq!(meta.partitions, PARTITIONS);
            out.push((m.subject.to_string(), meta.key, offset, m.payload.to_vec()));
        }
        out
    })
}

/// Checks that the stream holds each record of the topic exactly once, in offset order per subject
/// (`ordered`), or in any order.
fn assert_stream_is_topic(url: &str, stream: &str, n_per_partition: u64, ordered: bool) {
    let mut msgs = stream_messages(url, stream);
    if !ordered {
        msgs.sort_by_key(|m| (m.0.clone(), m.2));
    }
    assert_eq!(msgs.len() as u64, n_per_partition * PARTITIONS as u64, "messages in the stream");
    let mut next = vec![0u64; PARTITIONS as usize];
    for (subject, key, offset, body) in msgs {
        let p: u32 = subject.rsplit('.').next().unwrap().parse().unwrap();
        assert_eq!(offset, next[p as usize], "subject {subject}: out of order or duplicated");
        assert_eq!(key, offset);
        assert_eq!(body, payload(p, key), "payload of {subject} offset {offset}");
        next[p as usize] += 1;
    }
    assert!(next.iter().all(|&n| n == n_per_partition), "{next:?}");
}

/// Runs `f` in a thread until `done` says so (or `limit` passes), then stops it.
fn run_until<F, D>(f: F, limit: Duration, mut done: D) -> BridgeStats
where
    F: FnOnce(&AtomicBool) -> Result<BridgeStats, BridgeError> + Send + 'static,
    D: FnMut() -> bool,
{
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let h = std::thread::spawn(move || f(&s2));
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not done within {limit:?}");
        assert!(!h.is_finished(), "the bridge stopped early: {:?}", h.join());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap().unwrap()
}

fn export_thread(
    dir: PathBuf,
    url: String,
    stream: String,
) -> impl FnOnce(&AtomicBool) -> Result<BridgeStats, BridgeError> {
    move |stop| {
        let bus = Bus::open(&dir)?;
        bridge::export(&bus, TOPIC, &opts(&url, &stream), stop, &mut |_: &BridgeStatus| {})
    }
}

fn import_thread(
    dir: PathBuf,
    url: String,
    stream: String,
) -> impl FnOnce(&AtomicBool) -> Result<BridgeStats, BridgeError> {
    move |stop| {
        let bus = Bus::open(&dir)?;
        bridge::import(&bus, TOPIC, &opts(&url, &stream), stop, &mut |_: &BridgeStatus| {})
    }
}

fn local_count(dir: &Path) -> u64 {
    let bus = Bus::open(dir).unwrap();
    if bus.topic(TOPIC).is_err() {
        return 0;
    }
    local_records(&bus).iter().map(|v| v.len() as u64).sum()
}

/// Re-executes this test binary to run one bridge in a child process (killed with SIGKILL).
fn spawn_child(kind: &str, dir: &Path, url: &str, stream: &str) -> ChildGuard {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", "child_bridge", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{kind}\n{}\n{url}\n{stream}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// Not a test of its own: the body of the child process of the crash tests (does nothing
/// unless the environment names a bridge to run).
#[test]
fn child_bridge() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split('\n').collect();
    let bus = Bus::open(parts[1]).unwrap();
    let o = opts(parts[2], parts[3]);
    let stop = AtomicBool::new(false);
    let r = match parts[0] {
        "export" => bridge::export(&bus, TOPIC, &o, &stop, &mut |_| {}),
        _ => bridge::import(&bus, TOPIC, &o, &stop, &mut |_| {}),
    };
    panic!("the child bridge returned {r:?}");
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn export_killed_midway_then_restarted_leaves_each_record_once_in_order() {
    let server = Server::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let n = 15_000;
    produce(&Bus::open(dir.path()).unwrap(), 0, n);
    create_stream(&url, "S");
    let total = n * PARTITIONS as u64;
    let mut kills = 0;
    for _ in 0..2 {
        let child = spawn_child("export", dir.path(), &url, "S");
        let target = stream_count(&url, "S") + total / 4;
        wait_for(Duration::from_secs(30), "child export progress", || stream_count(&url, "S") >= target.min(total));
        drop(child); // SIGKILL
        kills += 1;
        if stream_count(&url, "S") >= total {
            break;
        }
    }
    assert!(kills >= 1);
    assert!(stream_count(&url, "S") < total, "the exporter finished before it was killed; raise n");
    let stats = run_until(export_thread(dir.path().into(), url.clone(), "S".into()), Duration::from_secs(30), || {
        stream_count(&url, "S") >= total
    });
    assert!(stats.records > 0);
    assert_stream_is_topic(&url, "S", n, true);
}

#[test]
fn export_rides_out_a_server_restart_and_follows_the_topic_live() {
    let mut server = Server::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    produce(&bus, 0, 3000);
    create_stream(&url, "R");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let worker = {
        let (d, u) = (dir.path().to_path_buf(), url.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let bus = Bus::open(&d)?;
            let r = bridge::export(&bus, TOPIC, &opts(&u, "R"), &s2, &mut |st: &BridgeStatus| seen.push(st.clone()));
            r.map(|stats| (stats, seen))
        })
    };
    wait_for(Duration::from_secs(20), "first messages", || stream_count(&url, "R") > 0);
    server.stop();
    produce(&bus, 3000, 3000); // appended while the server is down
    std::thread::sleep(Duration::from_millis(1500));
    server.spawn();
    produce(&bus, 6000, 2000); // appended live after it returns
    wait_for(Duration::from_secs(30), "catch-up after the restart", || stream_count(&url, "R") >= 16_000);
    stop.store(true, Ordering::Relaxed);
    let (stats, seen) = worker.join().unwrap().unwrap();
    assert!(stats.retries > 0, "the bridge never noticed the server going away");
    assert!(seen.iter().any(|s| !s.connected && s.lag > 0), "no status reported the outage and its lag");
    // Exactly once and in offset order per subject, across the outage too.
    assert_stream_is_topic(&url, "R", 8000, true);
}

#[test]
fn import_killed_midway_then_restarted_copies_the_stream_byte_for_byte() {
    let server = Server::start();
    let url = server.url();
    let src = tempfile::tempdir().unwrap();
    let n = 10_000;
    produce(&Bus::open(src.path()).unwrap(), 0, n);
    create_stream(&url, "I");
    let total = n * PARTITIONS as u64;
    run_until(export_thread(src.path().into(), url.clone(), "I".into()), Duration::from_secs(30), || {
        stream_count(&url, "I") >= total
    });
    let dst = tempfile::tempdir().unwrap();
    // The second box has the topic with the same partition count.
    Bus::open(dst.path()).unwrap().topic_or_create(TOPIC, Some(PARTITIONS)).unwrap();
    let child = spawn_child("import", dst.path(), &url, "I");
    wait_for(Duration::from_secs(30), "child import progress", || local_count(dst.path()) >= total / 3);
    drop(child); // SIGKILL
    let after_kill = local_count(dst.path());
    assert!(after_kill < total, "the importer finished before it was killed; raise n");
    run_until(import_thread(dst.path().into(), url.clone(), "I".into()), Duration::from_secs(30), || {
        local_count(dst.path()) >= total
    });
    // A second restart with nothing new imports nothing.
    let again = run_until(import_thread(dst.path().into(), url.clone(), "I".into()), Duration::from_secs(5), || true);
    assert_eq!(again.records, 0);
    let a = local_records(&Bus::open(src.path()).unwrap());
    let b = local_records(&Bus::open(dst.path()).unwrap());
    for p in 0..PARTITIONS as usize {
        assert_eq!(a[p].len(), b[p].len(), "partition {p}: records");
        assert!(a[p] == b[p], "partition {p}: records differ");
    }
}

#[test]
fn a_bad_url_an_unreachable_server_and_a_missing_stream_are_clear_errors() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    produce(&bus, 0, 1);
    let stop = AtomicBool::new(false);
    let e = bridge::export(&bus, TOPIC, &opts("nats://127.0.0.1:notaport", "S"), &stop, &mut |_| {}).unwrap_err();
    assert!(matches!(e, BridgeError::BadUrl { .. }), "{e:?}");
    assert!(e.to_string().contains("bad NATS URL"), "{e}");

    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e =
        bridge::export(&bus, TOPIC, &opts(&format!("nats://127.0.0.1:{closed}"), "S"), &stop, &mut |_| {}).unwrap_err();
    assert!(matches!(e, BridgeError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot connect to NATS"), "{e}");

    for r in [
        bridge::export(&bus, TOPIC, &opts(&server.url(), "Missing"), &stop, &mut |_| {}),
        bridge::import(&bus, TOPIC, &opts(&server.url(), "Missing"), &stop, &mut |_| {}),
    ] {
        let e = r.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, BridgeError::NoStream { .. }), "{e:?}");
        assert!(text.contains("stream Missing does not exist on nats://127.0.0.1:"), "{text}");
        assert!(text.contains("nats stream add"), "{text}");
    }
}

#[test]
fn an_idle_importer_on_a_live_server_reports_connected() {
    let server = Server::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    create_stream(&url, "I");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let d = dir.path().to_path_buf();
    let u = url.clone();
    let worker = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let bus = Bus::open(&d)?;
        bridge::import(&bus, TOPIC, &opts(&u, "I"), &s2, &mut |st: &BridgeStatus| seen.push(st.clone())).map(|_| seen)
    });
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    let seen = worker.join().unwrap().unwrap();
    assert!(!seen.is_empty(), "no status within 2.5 s");
    assert!(seen.iter().all(|s| s.connected && s.records == 0), "{seen:?}");
}

/// How long after the server returns an importer may take to import a new message: the
/// back-off tops out at 2 s, then a connection, a consumer and a fetch round; the rest is
/// room for a loaded 2-core machine. (With the client's own reconnection and async-nats'
/// ordered consumer, whose heartbeat is 15 s, it took about 15 s.)
const RESUME_AFTER_OUTAGE: Duration = Duration::from_secs(6);

/// Publishes one foreign message (no shoal headers) to `subject`.
fn publish_one(url: &str, subject: &str, body: &'static [u8]) {
    rt().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.publish(subject.to_string(), body.into()).await.unwrap().await.unwrap();
    })
}

#[test]
fn an_importer_resumes_within_the_backoff_after_an_outage_and_says_it_was_disconnected() {
    let mut server = Server::start();
    let url = server.url();
    create_stream(&url, "O");
    publish_one(&url, "shoal.t.x", b"before");
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(Instant, BridgeStatus)>::new()));
    let worker = {
        let (d, u, s2, seen) = (dir.path().to_path_buf(), url.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            let bus = Bus::open(&d)?;
            bridge::import(&bus, TOPIC, &opts(&u, "O"), &s2, &mut |st: &BridgeStatus| {
                seen.lock().unwrap().push((Instant::now(), st.clone()))
            })
        })
    };
    wait_for(Duration::from_secs(20), "the first message", || local_count(dir.path()) == 1);
    server.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    server.spawn();
    let up = Instant::now();
    publish_one(&url, "shoal.t.x", b"after");
    wait_for(Duration::from_secs(60), "the message after the outage", || local_count(dir.path()) == 2);
    let resumed = up.elapsed();
    eprintln!("imported {resumed:?} after the server returned");
    wait_for(Duration::from_secs(10), "a status saying connected again", || {
        seen.lock().unwrap().last().is_some_and(|(t, s)| *t > up && s.connected)
    });
    stop.store(true, Ordering::Relaxed);
    let stats = worker.join().unwrap().unwrap();
    assert_eq!(stats.records, 2);
    assert!(resumed < RESUME_AFTER_OUTAGE, "imported {resumed:?} after the server returned");
    let seen = seen.lock().unwrap();
    // While the server was down (after a moment to notice), no status says connected, and
    // the ones that do not name the reconnection attempt and its delay.
    let during: Vec<&BridgeStatus> =
        seen.iter().filter(|(t, _)| *t > down + Duration::from_millis(200) && *t < up).map(|(_, s)| s).collect();
    assert!(!during.is_empty(), "no status during the outage");
    for s in &during {
        assert!(!s.connected, "connected while the server was down: {s:?}");
        assert!(s.attempt >= 1 && s.next_attempt_in.is_some_and(|d| d <= bridge::BACKOFF_MAX), "{s:?}");
    }
}

#[test]
fn a_stream_that_does_not_capture_the_topic_is_a_start_error_and_an_overlap_says_so() {
    let server = Server::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    produce(&bus, 0, 1);
    bridge::create_stream(&opts(&url, "ELSE"), &["elsewhere.>".to_string()]).unwrap();
    // Stopped after a while in case it starts anyway (it used to, then retry for ever).
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        s2.store(true, Ordering::Relaxed);
    });
    let e = bridge::export(&bus, TOPIC, &opts(&url, "ELSE"), &stop, &mut |_| {}).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, BridgeError::StreamSubjects { .. }), "{e:?}");
    for part in ["stream ELSE", "elsewhere.>", "shoal.t.>", "--subject-prefix"] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    stop.store(true, Ordering::Relaxed);
    timer.join().unwrap();

    // A second stream over the same subjects.
    let e = bridge::create_stream(&opts(&url, "AGAIN"), &["elsewhere.>".to_string()]).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, BridgeError::Overlap { .. }), "{e:?}");
    assert!(text.contains("AGAIN") && text.contains("already captures"), "{text}");
    assert!(!text.contains("JetStream enabled"), "no hint about JetStream being disabled: {text}");
}

#[test]
fn re_sends_the_stream_drops_are_counted_as_duplicates_not_acknowledged() {
    let server = Server::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    produce(&Bus::open(dir.path()).unwrap(), 0, 50);
    create_stream(&url, "D");
    let total = 50 * PARTITIONS as u64;
    let first = run_until(export_thread(dir.path().into(), url.clone(), "D".into()), Duration::from_secs(30), || {
        stream_count(&url, "D") >= total
    });
    assert_eq!((first.records, first.duplicates), (total, 0));
    // Forget the stored positions: the next run sends everything again.
    std::fs::remove_dir_all(dir.path().join("bridges")).unwrap();
    let stats = Arc::new(std::sync::Mutex::new(BridgeStatus::default()));
    let again = {
        let (d, u, last) = (dir.path().to_path_buf(), url.clone(), stats.clone());
        run_until(
            move |stop| {
                let bus = Bus::open(&d)?;
                bridge::export(&bus, TOPIC, &opts(&u, "D"), stop, &mut |s: &BridgeStatus| {
                    *last.lock().unwrap() = s.clone()
                })
            },
            Duration::from_secs(30),
            || stats.lock().unwrap().duplicates >= total,
        )
    };
    assert_eq!((again.records, again.duplicates), (0, total), "{again:?}");
    assert_eq!(stream_count(&url, "D"), total);
}

#[test]
fn import_into_another_partition_count_routes_by_key_and_keeps_timestamps() {
    let server = Server::start();
    let url = server.url();
    let src = tempfile::tempdir().unwrap();
    let n = 200;
    // Keys i in partition p whatever partition_for_key says.
    produce(&Bus::open(src.path()).unwrap(), 0, n);
    create_stream(&url, "K");
    let total = n * PARTITIONS as u64;
    run_until(export_thread(src.path().into(), url.clone(), "K".into()), Duration::from_secs(30), || {
        stream_count(&url, "K") >= total
    });
    let source = Bus::open(src.path()).unwrap().topic(TOPIC).unwrap();
    let mut stamps = std::collections::HashMap::new();
    for p in 0..PARTITIONS {
        let mut r = Reader::open(source.partition_dir(p).unwrap()).unwrap();
        while let Some(rec) = r.next_ref().unwrap() {
            stamps.insert((rec.key(), rec.payload().to_vec()), rec.timestamp_ns());
        }
    }
    for partitions in [PARTITIONS + 1, PARTITIONS] {
        let dst = tempfile::tempdir().unwrap();
        Bus::open(dst.path()).unwrap().topic_or_create(TOPIC, Some(partitions)).unwrap();
        run_until(import_thread(dst.path().into(), url.clone(), "K".into()), Duration::from_secs(30), || {
            local_count(dst.path()) >= total
        });
        let t = Bus::open(dst.path()).unwrap().topic(TOPIC).unwrap();
        for p in 0..partitions {
            let Ok(mut r) = Reader::open(t.partition_dir(p).unwrap()) else { continue };
            while let Some(rec) = r.next_ref().unwrap() {
                let payload = rec.payload().to_vec();
                let (key, source_p) = (rec.key(), if payload.starts_with(b"p0-") { 0 } else { 1 });
                let wanted = if partitions == PARTITIONS { source_p } else { partition_for_key(key, partitions) };
                assert_eq!(p, wanted, "{partitions} partitions: key {key} from partition {source_p}");
                assert_eq!(
                    rec.event_time_ns().as_ref(),
                    stamps.get(&(key, payload)),
                    "original timestamp of key {key}"
                );
            }
        }
        assert_eq!(local_count(dst.path()), total);
    }
}

#[test]
fn key_text_and_event_time_survive_an_export_and_an_import() {
    let server = Server::start();
    let url = server.url();
    let src = tempfile::tempdir().unwrap();
    let t = Bus::open(src.path()).unwrap().topic_or_create(TOPIC, Some(PARTITIONS)).unwrap();
    let mut prod = t.producer(LogOptions::default()).unwrap();
    // Printable text, text that must be escaped, binary text, and a record with neither.
    let keys: [&[u8]; 4] = [b"alice", b"50% off", &[0, 0xff, b'\n', b' '], b""];
    let n = 40u64;
    for i in 0..n {
        let payload = format!("record {i}");
        let mut record = NewRecord::new(payload.as_bytes());
        let key = keys[(i % 4) as usize];
        if !key.is_empty() {
            record = record.key(key).event_time(1_000_000 + i);
        }
        prod.send_record(&record).unwrap();
    }
    prod.close().unwrap();
    create_stream(&url, "KT");
    run_until(export_thread(src.path().into(), url.clone(), "KT".into()), Duration::from_secs(30), || {
        stream_count(&url, "KT") >= n
    });
    let dst = tempfile::tempdir().unwrap();
    run_until(import_thread(dst.path().into(), url.clone(), "KT".into()), Duration::from_secs(30), || {
        local_count(dst.path()) >= n
    });
    let imported = Bus::open(dst.path()).unwrap().topic(TOPIC).unwrap();
    let mut seen = 0;
    for p in 0..imported.partitions() {
        let Ok(mut r) = Reader::open(imported.partition_dir(p).unwrap()) else { continue };
        while let Some(rec) = r.next_ref().unwrap() {
            let text = std::str::from_utf8(rec.payload()).unwrap();
            let i: u64 = text.trim_start_matches("record ").parse().unwrap();
            let key = keys[(i % 4) as usize];
            if key.is_empty() {
                assert_eq!(rec.key_bytes(), None, "{text}");
                // A record without event time travels with its append time, which becomes
                // the imported record's event time.
                assert!(rec.event_time_ns().is_some(), "{text}");
            } else {
                assert_eq!(rec.key_bytes(), Some(key), "{text}");
                assert_eq!(rec.key(), key_hash(key), "{text}");
                assert_eq!(rec.event_time_ns(), Some(1_000_000 + i), "{text}");
                assert_eq!(p, partition_for_key(key_hash(key), imported.partitions()), "{text}");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, n);
}

#[test]
fn a_failed_import_creates_no_topic() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let stop = AtomicBool::new(false);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e =
        bridge::import(&bus, TOPIC, &opts(&format!("nats://127.0.0.1:{closed}"), "S"), &stop, &mut |_| {}).unwrap_err();
    assert!(matches!(e, BridgeError::Unreachable { .. }), "{e:?}");
    let e = bridge::import(&bus, TOPIC, &opts(&server.url(), "Missing"), &stop, &mut |_| {}).unwrap_err();
    assert!(matches!(e, BridgeError::NoStream { .. }), "{e:?}");
    assert!(bus.topic(TOPIC).is_err(), "a failed import created topic {TOPIC}");
    assert!(!dir.path().join("bridges").exists(), "a failed import created its positions");
}

/// Runs `f` in a thread that must return by itself within `limit`.
fn returns_within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let h = std::thread::spawn(f);
    let deadline = Instant::now() + limit;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "did not return by itself within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.join().unwrap()
}

#[test]
fn max_records_ends_each_direction_by_itself_once_every_record_moved() {
    // Generous for a loaded 2-core machine: a few hundred records move in well under 1 s.
    const LIMIT: Duration = Duration::from_secs(30);
    let server = Server::start();
    let url = server.url();
    let src = tempfile::tempdir().unwrap();
    produce(&Bus::open(src.path()).unwrap(), 0, 150);
    create_stream(&url, "M");
    let total = 150 * PARTITIONS as u64;
    let export = {
        let (d, u) = (src.path().to_path_buf(), url.clone());
        returns_within(LIMIT, move || {
            let bus = Bus::open(&d).unwrap();
            let never = AtomicBool::new(false);
            let o = opts(&u, "M").max_records(Some(total));
            bridge::export(&bus, TOPIC, &o, &never, &mut |_| {}).unwrap()
        })
    };
    assert_eq!(export.records, total);
    assert_eq!(stream_count(&url, "M"), total);
    assert_stream_is_topic(&url, "M", 150, true);
    let dst = tempfile::tempdir().unwrap();
    Bus::open(dst.path()).unwrap().topic_or_create(TOPIC, Some(PARTITIONS)).unwrap();
    let import = {
        let (d, u) = (dst.path().to_path_buf(), url.clone());
        returns_within(LIMIT, move || {
            let bus = Bus::open(&d).unwrap();
            let never = AtomicBool::new(false);
            let o = opts(&u, "M").max_records(Some(total));
            bridge::import(&bus, TOPIC, &o, &never, &mut |_| {}).unwrap()
        })
    };
    assert_eq!(import.records, total);
    let same = local_records(&Bus::open(dst.path()).unwrap()) == local_records(&Bus::open(src.path()).unwrap());
    assert!(same, "the imported topic differs from the exported one");
    // Every position is stored: a second run has nothing left to import.
    let again = {
        let (d, u) = (dst.path().to_path_buf(), url.clone());
        run_until(
            move |stop| {
                let bus = Bus::open(&d)?;
                bridge::import(&bus, TOPIC, &opts(&u, "M"), stop, &mut |_| {})
            },
            LIMIT,
            {
                let started = Instant::now();
                move || started.elapsed() >= Duration::from_millis(500)
            },
        )
    };
    assert_eq!((again.records, again.recovered), (0, 0), "{again:?}");
    assert_eq!(local_count(dst.path()), total);
}

/// Exports then imports `total` records with the blocking API, from the thread this runs on.
fn blocking_round_trip(src: &Path, dst: &Path, url: &str, stream: &str, total: u64) {
    let never = AtomicBool::new(false);
    create_stream(url, stream);
    let bus = Bus::open(src).unwrap();
    let o = opts(url, stream).max_records(Some(total));
    let mut statuses = 0;
    let exported = bridge::export(&bus, TOPIC, &o, &never, &mut |_| statuses += 1).unwrap();
    assert_eq!(exported.records, total);
    let dbus = Bus::open(dst).unwrap();
    dbus.topic_or_create(TOPIC, Some(PARTITIONS)).unwrap();
    assert!(bridge::check_stream(TOPIC, &o, false, &never).unwrap());
    let imported = bridge::import(&dbus, TOPIC, &o, &never, &mut |_| statuses += 1).unwrap();
    assert_eq!(imported.records, total);
}

#[test]
fn the_blocking_bridge_called_inside_a_runtime_does_not_panic_and_moves_the_records() {
    const LIMIT: Duration = Duration::from_secs(60);
    let src = tempfile::tempdir().unwrap();
    produce(&Bus::open(src.path()).unwrap(), 0, 40);
    let total = 40 * PARTITIONS as u64;
    let want = local_records(&Bus::open(src.path()).unwrap());
    for multi_thread in [true, false] {
        // A server each (two streams cannot capture the same subjects), and a stream name
        // each (the source's export positions are kept per stream).
        let stream = if multi_thread { "RM" } else { "RC" };
        let server = Server::start();
        let url = server.url();
        let dst = tempfile::tempdir().unwrap();
        let (s, d, u) = (src.path().to_path_buf(), dst.path().to_path_buf(), url.clone());
        returns_within(LIMIT, move || {
            if multi_thread {
                // On a worker thread of a multi-thread runtime, inside a task.
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                let task = rt.spawn(async move { blocking_round_trip(&s, &d, &u, stream, total) });
                rt.block_on(task).unwrap();
            } else {
                // Inside a current-thread runtime's `block_on`.
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move { blocking_round_trip(&s, &d, &u, stream, total) });
            }
        });
        assert_eq!(local_records(&Bus::open(dst.path()).unwrap()), want, "multi_thread: {multi_thread}");
        assert_stream_is_topic(&url, stream, 40, true);
    }
}

#[test]
fn the_async_bridge_runs_on_the_callers_runtime_and_a_dropped_future_stops_it() {
    use futures_util::FutureExt;
    const LIMIT: Duration = Duration::from_secs(60);
    let server = Server::start();
    let url = server.url();
    let src = tempfile::tempdir().unwrap();
    produce(&Bus::open(src.path()).unwrap(), 0, 60);
    let total = 60 * PARTITIONS as u64;
    create_stream(&url, "A");
    // Polled outside any runtime: an error that says what to do, no panic.
    let outside = bridge::export_async(
        Bus::open(src.path()).unwrap(),
        TOPIC,
        opts(&url, "A"),
        Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .now_or_never();
    assert!(matches!(outside, Some(Err(BridgeError::NoRuntime(_)))), "{outside:?}");

    let dst = tempfile::tempdir().unwrap();
    let cancelled = tempfile::tempdir().unwrap();
    let (s, d, c, u) =
        (src.path().to_path_buf(), dst.path().to_path_buf(), cancelled.path().to_path_buf(), url.clone());
    let stop_of_cancelled = returns_within(LIMIT, move || {
        // One thread for every task: the export can only end if the runtime keeps running the
        // watcher below while it moves the records.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let stop_of_cancelled = rt.block_on(async move {
            let stop = Arc::new(AtomicBool::new(false));
            let export = bridge::export_async(Bus::open(&s).unwrap(), TOPIC, opts(&u, "A"), stop.clone(), |_| {});
            let watch = async {
                // The caller's own NATS client, on the same runtime as the awaiting task.
                let js = async_nats::jetstream::new(async_nats::connect(u.as_str()).await.unwrap());
                let mut stream = js.get_stream("A").await.unwrap();
                while stream.info().await.unwrap().state.messages < total {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                stop.store(true, Ordering::Relaxed);
            };
            let (exported, ()) = tokio::join!(export, watch);
            assert_eq!(exported.unwrap().records, total);

            Bus::open(&d).unwrap().topic_or_create(TOPIC, Some(PARTITIONS)).unwrap();
            let o = opts(&u, "A").max_records(Some(total));
            let imported =
                bridge::import_async(Bus::open(&d).unwrap(), TOPIC, o, Arc::new(AtomicBool::new(false)), |_| {});
            assert_eq!(imported.await.unwrap().records, total);

            // An import that runs until its future is dropped, once every record is in.
            Bus::open(&c).unwrap().topic_or_create(TOPIC, Some(PARTITIONS)).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let import = bridge::import_async(Bus::open(&c).unwrap(), TOPIC, opts(&u, "A"), stop.clone(), |_| {});
            tokio::select! {
                out = import => panic!("the import ended by itself: {out:?}"),
                () = async {
                    while local_count(&c) < total {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                } => {}
            }
            stop
        });
        // Dropping the runtime waits for the cancelled bridge's blocking task to end.
        drop(rt);
        stop_of_cancelled
    });
    assert!(stop_of_cancelled.load(Ordering::Relaxed), "dropping the future did not set stop");
    assert_stream_is_topic(&url, "A", 60, true);
    let want = local_records(&Bus::open(src.path()).unwrap());
    assert_eq!(local_records(&Bus::open(dst.path()).unwrap()), want);
    assert_eq!(local_records(&Bus::open(cancelled.path()).unwrap()), want);
    // The cancelled import stored its positions: a new run finds nothing left to import.
    let again = {
        let (c, u) = (cancelled.path().to_path_buf(), url.clone());
        run_until(move |stop| bridge::import(&Bus::open(&c)?, TOPIC, &opts(&u, "A"), stop, &mut |_| {}), LIMIT, {
            let started = Instant::now();
            move || started.elapsed() >= Duration::from_millis(500)
        })
    };
    assert_eq!((again.records, again.recovered), (0, 0), "{again:?}");
}
