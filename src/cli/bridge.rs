//! `shoal bridge export|import`: a topic of a bus bridged to a NATS JetStream stream, on the
//! command line (built with the `nats` feature; see [`shoal::bridge`]).
//!
//! ```text
//! shoal bridge export <BUS> --topic <T> --nats <URL> --stream <S> [--create-stream] [--subject-prefix <P>] [--max-in-flight <N>]
//! shoal bridge import <BUS> --topic <T> --nats <URL> --stream <S> [--create-stream] [--subject-prefix <P>] [--max-in-flight <N>] [--segment-size <SIZE>] [--prealloc <SIZE>]
//! ```
//!
//! The stream must exist, unless `--create-stream` asks for it to be created (over
//! `<prefix>.>`, through [`shoal::bridge::create_stream`]).
//!
//! Both run until SIGTERM or SIGINT: the handlers (through `signal-hook`) only set the flag
//! that [`shoal::bridge::export`] and [`shoal::bridge::import`] check in every wait, so the
//! bridge stops at a clean point (acknowledged positions stored) and the command exits 0
//! within a second, in every state (busy, idle, reconnecting, starting against a server that
//! does not answer).
//! Export reads a bus that must exist (like `cat --topic`); import creates the bus directory
//! if it is missing, so a second box starts from an empty directory, but only after it has
//! reached the server and found the stream (a failed start creates nothing); `--segment-size` and
//! `--prealloc` set the segment files of the topic's partitions, as for `produce`.
//!
//! About once a second (whenever the bridge reports), a status line goes to stderr (stdout
//! stays empty); the rate is records per second since the previous line:
//!
//! ```text
//! shoal bridge export: 119744 acknowledged, 0 duplicates, 256 in flight, lag 3000, 98500/s, connected, retries 0
//! shoal bridge import: 119744 imported, lag 0, 0/s, reconnecting (attempt 4, next in 380 ms: connection lost), retries 4
//! ```
//!
//! On a signal it prints what the run did (`stopped after 12.3 s: ...`) and exits 0.
//!
//! Anything that ends the bridge other than a signal (a bad URL, a stream that does not exist,
//! a bus that cannot be opened) is one line `shoal: ...` on stderr and exit 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::log_args::LogArgs;
use super::Error;
use shoal::bridge::{BridgeOptions, BridgeStatus};
use shoal::bus::Bus;
use shoal::log::LogOptions;

/// `shoal bridge export` and `shoal bridge import`.
#[derive(Debug, Subcommand)]
pub(super) enum BridgeCommand {
    /// Publish every record of a topic to a JetStream stream (one subject per partition),
    /// resuming after the last acknowledged offset of each partition.
    Export(BridgeArgs),
    /// Append every message of a JetStream stream to a topic of the bus (created if missing),
    /// resuming after the last stream sequence stored with the topic.
    #[command(mut_arg("segment_size", |a| a.help(super::log_args::segment_size_help("of each partition's log", None))))]
    Import(ImportArgs),
}

/// The arguments of `import`: the shared ones and the sizes of the topic's segment files.
#[derive(Debug, Args)]
pub(super) struct ImportArgs {
    #[command(flatten)]
    bridge: BridgeArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// The arguments shared by both directions.
#[derive(Debug, Args)]
pub(super) struct BridgeArgs {
    /// The bus directory.
    bus: PathBuf,
    /// The topic to export, or to import into.
    #[arg(long)]
    topic: String,
    /// The NATS server, e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    nats: String,
    /// The JetStream stream (it must exist, or be created with --create-stream).
    #[arg(long)]
    stream: String,
    /// Subject prefix: partition P is subject PREFIX.P (default shoal.TOPIC).
    #[arg(long, value_name = "PREFIX")]
    subject_prefix: Option<String>,
    /// Create the stream, capturing PREFIX.> (file storage, the server's de-duplication
    /// window), if it does not exist.
    #[arg(long)]
    create_stream: bool,
    /// Most publishes awaiting their acknowledgement at once.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_in_flight: u64,
}

/// Runs `shoal bridge <export|import> ...`.
pub(super) fn run(command: BridgeCommand) -> Result<ExitCode, Error> {
    let (export, args, log_args) = match command {
        BridgeCommand::Export(args) => (true, args, LogArgs::default()),
        BridgeCommand::Import(ImportArgs { bridge, log }) => (false, bridge, log),
    };
    // Before the bus is touched: a refused size creates nothing.
    let log_options = log_args.log_options(LogOptions::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::new(format!("installing the handler of signal {signal} failed: {e}")))?;
    }
    let opts = BridgeOptions::default()
        .nats_url(args.nats.clone())
        .stream(args.stream.clone())
        .subject_prefix(args.subject_prefix.clone())
        // Bounded to 65536 by the parser.
        .max_in_flight(usize::try_from(args.max_in_flight).unwrap_or(usize::MAX))
        .log_options(log_options);
    let name = if export { "export" } else { "import" };
    // An export's bus must exist; an import's is created, but only once the server and the
    // stream are known to be there, so that a failed start leaves nothing behind.
    let exported = if export { Some(super::open_bus(&args.bus)?) } else { None };
    if args.create_stream {
        let subjects = [format!("{}.>", opts.prefix(&args.topic))];
        shoal::bridge::create_stream(&opts, &subjects)
            .map_err(|e| Error::new(format!("bridge {name}: creating stream {}: {e}", args.stream)))?;
    }
    let bus = match exported {
        Some(bus) => bus,
        None => {
            let found = shoal::bridge::check_stream(&args.topic, &opts, false, &stop)
                .map_err(|e| Error::new(format!("bridge {name} of topic {}: {e}", args.topic)))?;
            if !found {
                eprintln!("shoal bridge {name}: stopped while starting");
                return Ok(ExitCode::SUCCESS);
            }
            open_or_create(&args.bus)?
        }
    };
    let mut rate = Rate::default();
    // The bridge calls this about once per second.
    let mut status = |s: &BridgeStatus| {
        let per_s = rate.update(s.records, s.elapsed);
        eprintln!("shoal bridge {name}: {}", status_line(export, s, per_s));
    };
    let result = if export {
        shoal::bridge::export(&bus, &args.topic, &opts, &stop, &mut status)
    } else {
        shoal::bridge::import(&bus, &args.topic, &opts, &stop, &mut status)
    };
    match result {
        Ok(stats) => {
            let more = if export {
                format!(", {} duplicates", stats.duplicates)
            } else {
                format!(", {} found already imported", stats.recovered)
            };
            eprintln!(
                "shoal bridge {name}: stopped after {:.1} s: {} records {}{more}, {} retries",
                stats.elapsed.as_secs_f64(),
                stats.records,
                if export { "acknowledged" } else { "imported" },
                stats.retries
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(Error::new(format!("bridge {name} of topic {}: {e}", args.topic))),
    }
}

/// Records per second between two status reports.
#[derive(Debug, Default)]
struct Rate {
    /// The previous report's records and elapsed time.
    last: Option<(u64, Duration)>,
}

impl Rate {
    /// Records per second since the previous report (since the start for the first one).
    fn update(&mut self, records: u64, elapsed: Duration) -> f64 {
        let (records_before, elapsed_before) = self.last.unwrap_or((0, Duration::ZERO));
        self.last = Some((records, elapsed));
        let seconds = elapsed.saturating_sub(elapsed_before).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        records.saturating_sub(records_before) as f64 / seconds
    }
}

/// Opens the bus in `dir`, creating it if missing (import's target may be a new box).
fn open_or_create(dir: &Path) -> Result<Bus, Error> {
    Ok(Bus::open(dir)?)
}

/// One status line (without the command's name), e.g.
/// `12000 acknowledged, 3 duplicates, 256 in flight, lag 3000, 9800/s, connected, retries 0`
/// (export) or `12000 imported, lag 0, 9800/s, connected, retries 0` (import).
/// `acknowledged` counts the records the stream stored; re-sends it dropped as duplicates
/// are counted apart. The connection state reads `connected` only while the client holds a
/// live connection (and, for import, a consumer); while the server is gone it reads
/// `reconnecting (attempt N, next in M ms: <last error>)`, the attempts following the
/// back-off of 50 ms doubling to 2 s, and `disconnected (<last error>)` between a failure
/// and the start of a wait.
fn status_line(export: bool, s: &BridgeStatus, per_s: f64) -> String {
    let moved = if export {
        format!("{} acknowledged, {} duplicates, {} in flight", s.records, s.duplicates, s.in_flight)
    } else {
        format!("{} imported", s.records)
    };
    let why = s.last_error.as_deref().unwrap_or("no connection").replace(['\n', '\r'], " ");
    let state = match (s.connected, s.next_attempt_in) {
        (true, _) => "connected".to_string(),
        (false, Some(next)) if s.attempt > 0 => {
            format!("reconnecting (attempt {}, next in {} ms: {why})", s.attempt, next.as_millis())
        }
        (false, _) => format!("disconnected ({why})"),
    };
    format!("{moved}, lag {}, {per_s:.0}/s, {state}, retries {}", s.lag, s.retries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_interval() {
        let mut rate = Rate::default();
        assert_eq!(rate.update(1000, Duration::from_secs(1)), 1000.0);
        assert_eq!(rate.update(1500, Duration::from_secs(2)), 500.0);
        assert_eq!(rate.update(1500, Duration::from_secs(2)), 0.0);
    }

    #[test]
    fn status_lines_name_counts_and_state() {
        let s = BridgeStatus {
            records: 12,
            duplicates: 4,
            lag: 3,
            in_flight: 2,
            connected: false,
            attempt: 3,
            next_attempt_in: Some(Duration::from_millis(200)),
            retries: 1,
            last_error: Some("timed out\nagain".into()),
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(
            status_line(true, &s, 12.0),
            "12 acknowledged, 4 duplicates, 2 in flight, lag 3, 12/s, \
             reconnecting (attempt 3, next in 200 ms: timed out again), retries 1"
        );
        let gone = BridgeStatus { attempt: 0, next_attempt_in: None, ..s.clone() };
        assert_eq!(
            status_line(false, &gone, 0.0),
            "12 imported, lag 3, 0/s, disconnected (timed out again), retries 1"
        );
        let s = BridgeStatus { connected: true, ..s };
        assert_eq!(status_line(false, &s, 0.4), "12 imported, lag 3, 0/s, connected, retries 1");
    }
}
