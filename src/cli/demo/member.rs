//! The demo's consumer-group members: one loop ([`consume`]) that runs in threads of
//! `shoal demo` and in a child process (`shoal demo-member`, hidden from the help).
//!
//! A member polls, reads each order in place in the mapped log (zero copy), records its
//! end-to-end latency (the time of the poll's return minus the order's `created_ns`, both
//! wall clock), marks its id and commits after every batch. The driver ends it in two
//! steps: *stop* (it stops polling, takes its figures and holds its partitions) and then
//! *leave* (it leaves gracefully). Every member stops before any leaves, so the handovers of
//! the members' own exits at the end of the run never count as rebalances: a member's
//! figures cover exactly the scripted joins and leaves, which the driver accounts for.
//!
//! # The child's protocol
//! `shoal demo-member <BUS> <GROUP> <TOPIC> --events <N> --report <FILE>` prints
//! `joined <member id>` once it is a member, `consumed <n>` about every 100 ms, `stopped`
//! once it has stopped polling, and `done` after it has left the group and written its
//! report. A line `stop` on its stdin asks it to stop; a closed stdin asks it to leave (and
//! so stop first, if it has not). The report is a binary file (written under a temporary
//! name, then renamed): [`REPORT_MAGIC`], then little-endian u64 words: delivered,
//! delivered again, bad payloads, rebalances, pause count, pause min, p50, p99 and max
//! (ns), ns from joining to the first delivery, id bits, latency pairs `k`; then `k` pairs
//! (ns, count); then the id set's words. [`decode_report`] checks every length: the file
//! comes from another process.

// Option structs are filled field by field: that keeps compiling once they are
// `#[non_exhaustive]`, where a struct literal outside the library does not.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use hdrhistogram::Histogram;

use super::order::{IdSet, Order};
use crate::cli::Error;
use shoal::bus::Bus;
use shoal::group::{GroupOptions, Member};
use shoal::log::now_ns;
use shoal::metrics::LatencyHistogram;

/// Most records one poll returns.
const POLL_RECORDS: usize = 1024;
/// Longest wait of one poll: how soon a member sees a request to leave.
const POLL_WAIT: Duration = Duration::from_millis(20);
/// Longest a stopped member holds its partitions waiting to be told to leave (the driver
/// tells it within moments; this bounds the wait if the driver is gone).
const HOLD_WAIT: Duration = Duration::from_secs(120);
/// How often the child prints `consumed <n>`.
const CHILD_PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// The first eight bytes of a child's report.
pub(super) const REPORT_MAGIC: [u8; 8] = *b"SHDEMOR2";
/// u64 words of a report's fixed part, after the magic.
const REPORT_HEADER_WORDS: usize = 12;

/// What a member thread is told and tells: shared with the thread that drives the demo.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// Stop polling, take the figures and hold the partitions until told to leave.
    pub(super) stop: AtomicBool,
    /// Set by the member once it has stopped polling.
    pub(super) stopped: AtomicBool,
    /// Leave the group (stopping first, if not yet stopped).
    pub(super) leave: AtomicBool,
    /// Records delivered so far (for the progress bar).
    pub(super) consumed: AtomicU64,
}

/// A member's rebalance pauses ([`MemberStats::pause`](shoal::group::MemberStats::pause)),
/// as figures: the child can send these, not the histogram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Pauses {
    /// Partitions gained after joining.
    pub(super) count: u64,
    /// Shortest pause, ns.
    pub(super) min_ns: u64,
    /// Median pause, ns.
    pub(super) p50_ns: u64,
    /// 99th percentile, ns.
    pub(super) p99_ns: u64,
    /// Longest, ns.
    pub(super) max_ns: u64,
}

impl Pauses {
    fn of(hist: &LatencyHistogram) -> Pauses {
        Pauses {
            count: hist.count(),
            min_ns: hist.quantile_ns(0.0),
            p50_ns: hist.quantile_ns(0.5),
            p99_ns: hist.quantile_ns(0.99),
            max_ns: hist.max_ns(),
        }
    }
}

/// What one member saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MemberReport {
    /// Records delivered to it.
    pub(super) delivered: u64,
    /// Ids delivered to it more than once.
    pub(super) redelivered: u64,
    /// Records whose payload was not an order of this run.
    pub(super) bad: u64,
    /// Times its assignment changed after it joined.
    pub(super) rebalances: u64,
    /// Its rebalance pauses.
    pub(super) pauses: Pauses,
    /// From joining to the first poll that returned records (0 when none did): for a member
    /// that joins mid-stream, how long until the partitions it took deliver.
    pub(super) first_delivery_ns: u64,
    /// End-to-end latency: (ns, count) for each recorded value.
    pub(super) latency: Vec<(u64, u64)>,
    /// Ids delivered to it.
    pub(super) seen: IdSet,
}

impl MemberReport {
    /// Adds its end-to-end latencies to `hist`.
    pub(super) fn record_latency_into(&self, hist: &mut LatencyHistogram) {
        for &(ns, count) in &self.latency {
            // Bounded by the deliveries this member counted.
            for _ in 0..count {
                hist.record(ns);
            }
        }
    }
}

/// An empty end-to-end latency histogram (1 ns to one hour, 3 significant figures, like
/// [`LatencyHistogram`]).
fn latency_histogram() -> Result<Histogram<u64>, Error> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .map_err(|e| Error::new(format!("making a latency histogram failed: {e}")))
}

/// What a member says to whoever runs it.
pub(super) enum Said<'a> {
    /// It joined, with this member id.
    Joined(&'a str),
    /// It stopped polling and holds its partitions until told to leave.
    Stopped,
}

/// Joins `group` on `topic`, says `Joined` with the member id, consumes until told to stop
/// (or leave), takes its figures, says `Stopped`, holds its partitions until told to
/// leave, then leaves gracefully.
///
/// # Errors
/// Group and log errors.
pub(super) fn consume(
    bus: &Bus,
    group: &str,
    topic: &str,
    events: u64,
    label: String,
    control: &Control,
    mut say: impl FnMut(Said<'_>),
) -> Result<MemberReport, Error> {
    // Made before joining: from the join on, this member holds partitions that a member
    // joining next waits for until this one polls, and the id set of a long run is
    // megabytes of fresh pages (milliseconds on a VM that reclaims freed pages).
    let mut latency = latency_histogram()?;
    let mut seen = IdSet::new(events);
    let opts = GroupOptions::default().label(label);
    let mut member = Member::join(bus, group, topic, opts)?;
    let joined_at = Instant::now();
    let mut first_delivery_ns = 0;
    say(Said::Joined(member.id()));
    let (mut delivered, mut redelivered, mut bad) = (0u64, 0u64, 0u64);
    // Bounded: ends when told to stop or leave; each pass waits in `poll` when there is
    // nothing to read.
    while !control.stop.load(Ordering::Relaxed) && !control.leave.load(Ordering::Relaxed) {
        let batch = member.poll(POLL_RECORDS, POLL_WAIT)?;
        if batch.is_empty() {
            continue;
        }
        let now = now_ns();
        if delivered == 0 {
            first_delivery_ns = joined_at.elapsed().as_nanos() as u64;
        }
        for delivery in &batch {
            match delivery.record.payload_as::<Order>() {
                Ok(order) if order.id < events => {
                    latency.saturating_record(now.saturating_sub(order.created_ns).max(1));
                    if !seen.insert(order.id) {
                        redelivered += 1;
                    }
                }
                _ => bad += 1,
            }
        }
        member.commit()?;
        delivered += batch.len() as u64;
        control.consumed.store(delivered, Ordering::Relaxed);
    }
    let stats = member.stats();
    control.stopped.store(true, Ordering::Release);
    say(Said::Stopped);
    // Holds its partitions, not polling, so no other member's exit moves them here.
    let hold_until = Instant::now() + HOLD_WAIT;
    while !control.leave.load(Ordering::Relaxed) && Instant::now() < hold_until {
        std::thread::sleep(Duration::from_millis(1));
    }
    member.leave()?;
    Ok(MemberReport {
        delivered,
        redelivered,
        bad,
        rebalances: stats.rebalances,
        pauses: Pauses::of(&stats.pause),
        first_delivery_ns,
        latency: latency.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect(),
        seen,
    })
}

/// Encodes a report for the parent (format in the module docs).
pub(super) fn encode_report(r: &MemberReport) -> Vec<u8> {
    let words = REPORT_HEADER_WORDS + 2 * r.latency.len() + r.seen.words().len();
    let mut out = Vec::with_capacity(8 + 8 * words);
    out.extend_from_slice(&REPORT_MAGIC);
    let header = [
        r.delivered,
        r.redelivered,
        r.bad,
        r.rebalances,
        r.pauses.count,
        r.pauses.min_ns,
        r.pauses.p50_ns,
        r.pauses.p99_ns,
        r.pauses.max_ns,
        r.first_delivery_ns,
        r.seen.bits(),
        r.latency.len() as u64,
    ];
    let pairs = r.latency.iter().flat_map(|&(ns, count)| [ns, count]);
    for word in header.into_iter().chain(pairs).chain(r.seen.words().iter().copied()) {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

/// Decodes a child's report, expecting ids for `events` orders.
///
/// # Errors
/// What is wrong with the bytes.
pub(super) fn decode_report(bytes: &[u8], events: u64) -> Result<MemberReport, String> {
    let body = bytes.strip_prefix(&REPORT_MAGIC[..]).ok_or("it does not start with the report magic")?;
    if body.len() % 8 != 0 {
        return Err(format!("its {} bytes are not whole words", bytes.len()));
    }
    let words: Vec<u64> =
        body.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
    let header = words.get(..REPORT_HEADER_WORDS).ok_or("it is shorter than its header")?;
    let (bits, pairs) = (header[10], header[11]);
    if bits != events {
        return Err(format!("it is for {bits} orders, not {events}"));
    }
    let rest = &words[REPORT_HEADER_WORDS..];
    let pair_words = usize::try_from(pairs)
        .ok()
        .and_then(|p| p.checked_mul(2))
        .filter(|&w| w <= rest.len())
        .ok_or_else(|| format!("it claims {pairs} latency values but holds {} words", rest.len()))?;
    let latency = rest[..pair_words].chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let seen = IdSet::from_words(rest[pair_words..].to_vec(), bits)
        .ok_or_else(|| format!("its id set has {} words, not those of {bits} ids", rest.len() - pair_words))?;
    Ok(MemberReport {
        delivered: header[0],
        redelivered: header[1],
        bad: header[2],
        rebalances: header[3],
        pauses: Pauses { count: header[4], min_ns: header[5], p50_ns: header[6], p99_ns: header[7], max_ns: header[8] },
        first_delivery_ns: header[9],
        latency,
        seen,
    })
}

/// `shoal demo-member`: the child side (protocol in the module docs).
pub(super) fn run_child(bus: &Path, group: &str, topic: &str, events: u64, report: &Path) -> Result<ExitCode, Error> {
    let bus = crate::cli::open_bus(bus)?;
    let control = Arc::new(Control::default());
    // A line `stop` means: stop polling and hold. A closed stdin (the parent is gone or
    // wants us out) means: leave now.
    let leave = control.clone();
    std::thread::Builder::new()
        .name("shoal-demo-stdin".into())
        .spawn(move || {
            // Bounded by stdin's EOF; lines are capped so a stray writer cannot grow memory.
            let mut stdin = std::io::stdin().lock();
            let mut line = Vec::new();
            while matches!((&mut stdin).take(256).read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if line.trim_ascii() == b"stop" {
                    leave.stop.store(true, Ordering::Relaxed);
                }
                line.clear();
            }
            leave.leave.store(true, Ordering::Relaxed);
        })
        .map_err(|e| Error::new(format!("starting the stdin watcher failed: {e}")))?;
    let consumer = {
        let (group, topic, control) = (group.to_string(), topic.to_string(), control.clone());
        std::thread::Builder::new()
            .name("shoal-demo-member".into())
            .spawn(move || {
                let label = format!("shoal demo member, pid {}", std::process::id());
                let say = |line: &str| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
                };
                consume(&bus, &group, &topic, events, label, &control, |said| match said {
                    Said::Joined(id) => say(&format!("joined {id}")),
                    Said::Stopped => say("stopped"),
                })
            })
            .map_err(|e| Error::new(format!("starting the member thread failed: {e}")))?
    };
    // Bounded by the member thread, which ends once the group is done or stdin closes.
    while !consumer.is_finished() {
        std::thread::sleep(CHILD_PROGRESS_EVERY);
        let mut out = std::io::stdout().lock();
        if writeln!(out, "consumed {}", control.consumed.load(Ordering::Relaxed)).and_then(|()| out.flush()).is_err() {
            control.leave.store(true, Ordering::Relaxed);
        }
    }
    let result = consumer.join().map_err(|_| Error::new("the member thread panicked"))??;
    let temp = report.with_extension("partial");
    std::fs::write(&temp, encode_report(&result))
        .and_then(|()| std::fs::rename(&temp, report))
        .map_err(|e| Error::new(format!("{}: writing the member's report failed: {e}", report.display())))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "done").and_then(|()| out.flush());
    Ok(ExitCode::SUCCESS)
}

/// The parent's handle on a member running in a child process.
pub(super) struct ChildMember {
    child: Child,
    stdin: Option<ChildStdin>,
    joined: Receiver<String>,
    consumed: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
    stderr: Option<JoinHandle<String>>,
    report: PathBuf,
    events: u64,
}

impl ChildMember {
    /// Starts `shoal demo-member` (this executable) on the bus; its report goes to `report`.
    ///
    /// # Errors
    /// When this executable cannot be found or started.
    pub(super) fn spawn(
        bus: &Path,
        group: &str,
        topic: &str,
        events: u64,
        report: &Path,
    ) -> Result<ChildMember, Error> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::new(format!("finding this executable to start a member process failed: {e}")))?;
        let mut child = Command::new(&exe)
            .arg("demo-member")
            .arg(bus)
            .args([group, topic, "--events", &events.to_string(), "--report"])
            .arg(report)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::new(format!("{}: starting a member process failed: {e}", exe.display())))?;
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (joined_tx, joined) = bounded(1);
        let consumed = Arc::new(AtomicU64::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        if let Some(stdout) = stdout {
            let (consumed, stopped) = (consumed.clone(), stopped.clone());
            // Ends at the child's EOF.
            let _ = std::thread::Builder::new().name("shoal-demo-child-out".into()).spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(id) = line.strip_prefix("joined ") {
                        let _ = joined_tx.try_send(id.to_string());
                    } else if let Some(n) = line.strip_prefix("consumed ").and_then(|n| n.parse().ok()) {
                        consumed.store(n, Ordering::Relaxed);
                    } else if line == "stopped" {
                        stopped.store(true, Ordering::Release);
                    }
                }
            });
        }
        let stderr = stderr.and_then(|mut stderr| {
            std::thread::Builder::new()
                .name("shoal-demo-child-err".into())
                .spawn(move || {
                    let mut text = String::new();
                    let _ = stderr.read_to_string(&mut text);
                    text
                })
                .ok()
        });
        Ok(ChildMember { child, stdin, joined, consumed, stopped, stderr, report: report.to_path_buf(), events })
    }

    /// The child's pid.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Records the child has delivered, as it last said.
    pub(super) fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// Waits until the child is a member of the group; returns its member id.
    ///
    /// # Errors
    /// When it exits or does not join within `wait`.
    pub(super) fn wait_joined(&mut self, wait: Duration) -> Result<String, Error> {
        match self.joined.recv_timeout(wait) {
            Ok(id) => Ok(id),
            Err(RecvTimeoutError::Timeout) => Err(Error::new(format!(
                "the member process (pid {}) did not join the group within {wait:?}",
                self.child.id()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(self.failed("exited before joining the group")),
        }
    }

    /// Asks the child to stop polling and hold its partitions (see the module docs).
    ///
    /// # Errors
    /// When its stdin is gone (it exited).
    pub(super) fn stop(&mut self) -> Result<(), Error> {
        let pid = self.child.id();
        let stdin =
            self.stdin.as_mut().ok_or_else(|| Error::new(format!("the member process (pid {pid}) has no stdin")))?;
        stdin
            .write_all(b"stop\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::new(format!("telling the member process (pid {pid}) to stop failed: {e}")))
    }

    /// True once the child said it stopped polling.
    pub(super) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// True once the child has exited.
    pub(super) fn is_finished(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the child to leave (closes its stdin), waits for it to exit and reads its report.
    ///
    /// # Errors
    /// When it fails, or does not exit within `wait` (it is then killed).
    pub(super) fn finish(mut self, wait: Duration) -> Result<MemberReport, Error> {
        self.stdin = None;
        let deadline = Instant::now() + wait;
        // Bounded by the deadline.
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    return Err(Error::new(format!(
                        "the member process (pid {}) did not finish within {wait:?}; it was killed",
                        self.child.id()
                    )))
                }
                Err(e) => return Err(Error::new(format!("waiting for the member process failed: {e}"))),
            }
        };
        if !status.success() {
            return Err(self.failed(&format!("failed ({status})")));
        }
        let bytes = std::fs::read(&self.report)
            .map_err(|e| Error::new(format!("{}: reading the member's report failed: {e}", self.report.display())))?;
        decode_report(&bytes, self.events)
            .map_err(|why| Error::new(format!("{}: the member's report is unreadable: {why}", self.report.display())))
    }

    /// An error naming the child and the end of what it printed on stderr.
    fn failed(&mut self, what: &str) -> Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
        let last = stderr.lines().last().unwrap_or("no message");
        Error::new(format!("the member process (pid {}) {what}: {last}", self.child.id()))
    }
}

impl Drop for ChildMember {
    /// Closing stdin asks the child to leave; one that is still there a moment later is
    /// killed, so no member process outlives the demo.
    fn drop(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemberReport {
        let mut seen = IdSet::new(100);
        for id in [0, 5, 99] {
            seen.insert(id);
        }
        MemberReport {
            delivered: 4,
            redelivered: 1,
            bad: 0,
            rebalances: 2,
            pauses: Pauses { count: 2, min_ns: 999, p50_ns: 1_000, p99_ns: 2_000, max_ns: 2_001 },
            first_delivery_ns: 7_000,
            latency: vec![(500, 3), (9_000, 1)],
            seen,
        }
    }

    #[test]
    fn reports_round_trip() {
        let r = sample();
        let bytes = encode_report(&r);
        assert_eq!(bytes.len(), 8 + 8 * (REPORT_HEADER_WORDS + 4 + 2));
        assert_eq!(decode_report(&bytes, 100), Ok(r.clone()));
        let mut hist = LatencyHistogram::new();
        r.record_latency_into(&mut hist);
        assert_eq!(hist.count(), 4);
        assert!(hist.max_ns() >= 9_000);
    }

    #[test]
    fn damaged_reports_are_refused_without_panicking() {
        let good = encode_report(&sample());
        assert!(decode_report(&good, 101).is_err(), "another event count");
        for len in 0..good.len() {
            assert!(decode_report(&good[..len], 100).is_err(), "cut at {len}");
        }
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        assert!(decode_report(&bad_magic, 100).is_err());
        let mut huge_pairs = good.clone();
        huge_pairs[8 + 8 * 11..8 + 8 * 12].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_report(&huge_pairs, 100).is_err());
        let mut longer = good;
        longer.extend_from_slice(&[0; 8]);
        assert!(decode_report(&longer, 100).is_err(), "a word too many");
    }
}
