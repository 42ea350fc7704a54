//! The `shoal` command-line tool: `produce`, `cat`, `verify`, `stats` and `demo` over a log
//! directory; `topics`, `produce --topic`, `cat --topic`, `group`, `groups` and `top` over a
//! bus directory.
//!
//! # Design
//! The command line is the crate's binary (`src/main.rs` declares this module), built only
//! with the default cargo feature `cli`; it uses nothing but shoal's public library API, so
//! an embedder who turns default features off compiles none of it.
//! Arguments are parsed by `clap` (derive). Each command is a function in its own file that
//! returns `Result<ExitCode, Error>`; [`main`] prints an [`Error`] as one line on stderr,
//! `shoal: <what happened>; <what to do>`, and exits 1. Before any command runs, [`main`]
//! installs a `tracing-subscriber` that writes the library's own messages (a cut torn tail,
//! the io_uring fallback, a failed data sync) to stderr, filtered by `SHOAL_LOG`, else
//! `RUST_LOG`, else `warn`.
//!
//! # Contract (tools and tests outside this repository rely on it exactly)
//! - `shoal produce <DIR> [--durability never|batch|interval=<ms>] [--ack] [--segment-size <SIZE>]
//!   [--prealloc <SIZE>]`
//!   creates the log if missing and appends one record per stdin line (the line's bytes without the `\n`; a
//!   last line without a newline is a record too; lines are bytes, not necessarily UTF-8).
//!   Lines that arrive together are appended as one batch, but a line is never held back
//!   waiting for more input. With `--ack`, a separate thread prints `durable below <N>`
//!   (flushed) each time the durable watermark advances: every record with offset `< N` is
//!   durable (the watermark is exclusive, as everywhere: see "Offsets" below).
//!   At end of input it syncs (with `--durability never` only when `--ack` asks for acks:
//!   `never` leaves records in the page cache, as the library's `Durability::Never` does),
//!   prints the final ack, and exits 0. A line longer than the
//!   largest record is an error after the lines before it are appended, synced and acked.
//!   `--segment-size` (bytes, or with a binary K, M or G suffix: `64M`) sets the size of
//!   the segment files it creates (and of each partition's, with `--topic`), `--prealloc`
//!   the disk space allocated ahead of the writer in a segment (`LogOptions::prealloc_bytes`);
//!   a size the log refuses is an error naming the flag, and the largest record shrinks to
//!   fit a segment. DIR must not be a bus or a topic directory (an error that names
//!   `--topic`; nothing is created).
//! - `shoal cat <DIR> [--from earliest|latest|<offset> | --since <time>] [--follow] [--format
//!   lines|json]`: `--from` is the first offset printed (default `earliest`); `latest` starts
//!   after the last record present when `cat` starts (without `--follow` it prints nothing);
//!   `--since` starts at the first record appended at or after a time (RFC 3339, a Unix time
//!   with `s`/`ms`/`us`/`ns`, or `-5m`/`-1h` before now). `lines` prints each payload and a
//!   newline; `json` prints one object per line with `offset`, `timestamp_ns` (strings),
//!   `event_time_ns` (when the record has one), `key` (the key text, when kept),
//!   `routing_key` (a string) and `payload` (UTF-8) or `payload_base64` (anything else). A
//!   record that fails its checksum is never printed: `cat` stops there with an error.
//!   A closed stdout (`| head`) ends `cat` quietly with exit 0. `cat`, `stats` and `verify`
//!   on a path that holds no log (missing, a file, a bus, a topic directory, an empty
//!   directory) exit 1 with one line saying what they expected.
//! - `shoal verify <DIR> [--repair]`: exit 0 when sound, else one line per problem (file,
//!   byte position, what is wrong, whether a repair fixes it) and exit 1. `--repair` cuts the
//!   log at the first damaged record and says where and how many records that drops.
//! - `shoal stats <DIR>`: segments, records, bytes, `first offset`, `last offset`, `next
//!   offset` and `durable below` (the exclusive watermark), `producers`, and `checked`: it
//!   reads the records of the last segment only (damage there is an error, exit 1; damage in
//!   an older segment is not looked for: `verify` checks every record); for a topic's
//!   partition also `topic` and `schema`.
//! - `shoal demo [--dir <DIR>] [--events <N>] [--segment-size <SIZE>] [--prealloc <SIZE>]`: typed orders through a pipeline whose
//!   middle stage scales up and down, into a 4-partition topic with `Batch` durability,
//!   consumed by a group whose members (threads and a child process) join and leave
//!   mid-stream; then a replay from offset 0 checks every order. Prints measured throughput,
//!   end-to-end latency, scale and rebalance pauses, and the verified counts (lost,
//!   duplicated, corrupt); exits 1 when any of those is not 0. The bus is kept with `--dir`
//!   (which must not hold an earlier demo's topic).
//! - `shoal produce <BUS> --topic <T> [--partitions <P>] [--keyed] [--durability ...] [--ack]`
//!   appends to a topic of the bus in BUS, created with P partitions (default 4) if missing
//!   (an existing topic with another count is an error). Lines go round-robin over the
//!   partitions; with `--keyed` each line is `<key>\t<payload>` (the first tab splits), the
//!   key bytes are kept in the record (at most 65535) and their hash, through
//!   [`key_hash`](shoal::bus::key_hash) (FNV-1a), is its u64 routing key and picks its
//!   partition through
//!   [`partition_for_key`](shoal::bus::partition_for_key); a keyed line without a tab is an
//!   error (the lines before it are appended, synced and acked). `--ack` prints
//!   `partition <P> durable below <N>` lines.
//! - `shoal topics <BUS>` (also `shoal topics list <BUS>`): a header line, then one line per
//!   topic: name, partitions, records, bytes of segment files, schema (`-` for an untyped
//!   topic). Creates nothing.
//! - `shoal topics create <BUS> <T> [--partitions <P>] [--segment-size <SIZE>] [--prealloc
//!   <SIZE>]` creates the topic with P partitions (default 4; the bus too if missing); with a
//!   size flag it also creates each partition's log with those sizes. A topic that exists
//!   with P partitions is said so, exit 0; with another count it is an error, exit 1.
//! - `shoal cat <BUS> --topic <T> [--partition <P>] [--from earliest|latest|<offset> | --since
//!   <time>] [--follow] [--format ..]`: as for a log, over one partition or all of them
//!   (partition by partition, or round-robin when following; `--from` and `--since` apply to
//!   each, `latest` per partition); JSON objects start with `partition`. A partition directory
//!   that is a symbolic link is an error, as for `produce` (shoal never follows links inside a
//!   bus).
//! - `shoal group <BUS> <GROUP> --topic <T> [--exit-when-idle <ms>] [--from earliest|latest]
//!   [--format lines|json]`: a member of the consumer group (`--from`: where partitions
//!   without a committed offset start); prints `<partition> <offset> <payload>` (or `cat`'s
//!   JSON objects) for each record of the
//!   partitions it owns, flushed per batch, and commits offsets only after their lines are
//!   written. SIGTERM, SIGINT and `--exit-when-idle` leave gracefully (commit, hand over,
//!   exit 0); a closed stdout hands over and exits 0 without committing the batch it could
//!   not write.
//! - `shoal bench [--quick] [--json] [--dir <DIR>]`: measures shoal on this machine next to
//!   baselines measured in the same run (raw rtrb, a `BufWriter`, fdatasync, O_DIRECT, memcpy)
//!   and prints each figure, its baseline and their ratio; `--json` prints one JSON object.
//! - `shoal groups <BUS> [<GROUP>]`: each group (or one) with its members, their partitions,
//!   committed offsets and lag. `shoal groups <BUS> <GROUP> --reset-offsets --to
//!   earliest|latest|<offset>|<time> [--topic <T>] [--execute]` prints where the group's committed
//!   offsets would move, and moves them with `--execute`; refused while the group has live
//!   members.
//! - `shoal top <BUS> [--interval <ms>] [--once]`: per topic and partition records, bytes,
//!   first, last and durable offsets and appends per second; per group and partition the
//!   owner, committed offset, end, lag and commits per second; redrawn every interval
//!   (default 1000 ms) until interrupted. `--once` prints one snapshot, rates shown as `-`,
//!   with no screen control, and exits 0.
//! - `shoal bridge export <BUS> --topic <T> --nats <URL> --stream <S>` publishes a topic to a
//!   NATS JetStream stream and `shoal bridge import <BUS> --topic <T> --nats <URL> --stream <S>
//!   [--segment-size <SIZE>] [--prealloc <SIZE>]` appends a stream to a topic (the bus is created if missing); both run until SIGTERM or
//!   SIGINT (then exit 0) and print a status line per second on stderr. Only with the `nats`
//!   feature; a build without it answers `shoal bridge ...` with one line saying so and exit 2.
//! - Usage errors exit 2 (clap's convention), an option value out of its range included
//!   (`--segment-size 4K`, `--prealloc 0`, `--partitions 0`, `--interval 0`); runtime errors
//!   exit 1 with one line on stderr. An option that takes a time (`cat --since`, `groups
//!   --to`) takes a time before now as written: `--since -1h`, `--to -90s`.
//!   Commands that only read a bus (`topics`, `cat --topic`, `group`, `groups`, `top`) never
//!   create one.
//!
//! # Offsets
//! Every offset the tool prints follows the library's convention, written down once in the
//! README ("Guarantees", the Offsets bullet): a record offset names one record (`first
//! offset`, `last offset`, the offsets of `cat --format json` and `group` lines, `top`'s
//! FIRST and LAST); a watermark is exclusive and names the next offset (`next offset`,
//! `durable below <N>` in `stats` and the `--ack` lines, `top`'s DURABLE, the COMMITTED and
//! END of `groups` and `top`): every record below it is durable, committed or appended, as
//! [`durable_offset`](shoal::log::Appender::durable_offset) says.

mod bench;
#[cfg(feature = "nats")]
mod bridge;
mod cat;
mod demo;
mod group;
mod inspect;
mod log_args;
mod produce;
mod top;
mod topics;

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use shoal::bus::{Bus, BusError, PARTITIONS_MAX};
use shoal::group::GroupError;
use shoal::log::{AppendError, Durability, LogError};

/// `shoal produce --help`, after the options.
const PRODUCE_HELP: &str = "\
With --topic, DIR is a bus directory and the topic is created with --partitions partitions \
(default 4) if it does not exist. Without --keyed, lines go round-robin over the partitions. \
With --keyed, each line is <key><TAB><payload>: the bytes before the first tab are the key, \
hashed with 64-bit FNV-1a into the record's u64 key, which picks the partition \
(shoal::bus::key_hash, then shoal::bus::partition_for_key); equal keys always go to one \
partition. A keyed line without a tab is an error (the lines before it are appended).

With --ack, each line is `durable below <N>` (with --topic: `partition <P> durable below <N>`): \
every record (of that partition) with offset < N is durable.";

/// `shoal group --help`, after the options.
const GROUP_HELP: &str = "\
Each output line is `<partition> <offset> <payload>`, flushed per batch; offsets are committed \
only after their lines are written. Delivery is at least once: after a member is killed, the \
records it printed but had not committed are printed again by the member that takes over. \
SIGTERM, SIGINT and --exit-when-idle leave the group gracefully: commit, hand the partitions \
over, exit 0. A closed stdout hands the partitions over and exits 0 without committing the \
batch it could not write, so the next owner prints it.";

/// What `shoal bridge` says in a build without the `nats` feature.
#[cfg(not(feature = "nats"))]
const WITHOUT_NATS: &str = "bridge: built without the nats feature; rebuild with --features nats";

/// The `shoal` command line.
#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "A zero-copy event bus for one Linux box: logs, topics, consumer groups, demo"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append one record per stdin line to the log in DIR (created if missing), or with
    /// --topic to a topic of the bus in DIR.
    #[command(
        after_help = PRODUCE_HELP,
        mut_arg("segment_size", |a| a.help(log_args::segment_size_help("of the log (with --topic: of each partition's log)", None)))
    )]
    Produce {
        /// The log directory, or with --topic the bus directory.
        dir: PathBuf,
        /// Append to this topic of the bus in DIR (created if missing).
        #[arg(long)]
        topic: Option<String>,
        /// Partitions of the topic when it is created (default 4); an existing topic must
        /// have this many.
        #[arg(long, value_name = "P", requires = "topic", value_parser = clap::value_parser!(u32).range(1..=PARTITIONS_MAX as i64))]
        partitions: Option<u32>,
        /// Each line is <key><TAB><payload>; the key picks the partition.
        #[arg(long, requires = "topic")]
        keyed: bool,
        /// When records become durable: never, batch, or interval=<ms>.
        #[arg(long, value_name = "never|batch|interval=MS", default_value = "batch", value_parser = parse_durability)]
        durability: Durability,
        /// Print `durable below <N>` (with --topic: `partition <P> durable below <N>`) each
        /// time the durable watermark advances: every record below offset N is durable.
        #[arg(long)]
        ack: bool,
        #[command(flatten)]
        log: log_args::LogArgs,
    },
    /// Print the records of the log in DIR, or with --topic of a topic of the bus in DIR.
    Cat {
        /// The log directory, or with --topic the bus directory.
        dir: PathBuf,
        /// Print this topic of the bus in DIR.
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition of the topic.
        #[arg(long, value_name = "P", requires = "topic", value_parser = clap::value_parser!(u32).range(0..PARTITIONS_MAX as i64))]
        partition: Option<u32>,
        /// Where to start (in each partition, with --topic): earliest, latest (after the last
        /// record present now), or an offset.
        #[arg(long, value_name = "earliest|latest|OFFSET", default_value = "earliest", value_parser = parse_start)]
        from: Start,
        /// Start (in each partition, with --topic) at the first record appended at or after
        /// TIME: RFC 3339 (2026-12-02T10:00:00Z), a Unix time with its unit (1764669600s,
        /// ..ms, ..us, ..ns), or a time before now (-5m, -1h, -30s, -2d).
        #[arg(long, value_name = "TIME", conflicts_with = "from", allow_hyphen_values = true, value_parser = parse_since_arg)]
        since: Option<u64>,
        /// Keep printing records as they are appended.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Lines)]
        format: Format,
    },
    /// Join a consumer group of a topic and print `<partition> <offset> <payload>` for each
    /// record of the partitions this member owns.
    #[command(after_help = GROUP_HELP)]
    Group {
        /// The bus directory.
        bus: PathBuf,
        /// The consumer group (created if missing).
        group: String,
        /// The topic the group consumes.
        #[arg(long)]
        topic: String,
        /// Leave the group (committing) after this many ms with nothing new to read.
        #[arg(long, value_name = "MS")]
        exit_when_idle: Option<u64>,
        /// Where the group starts a partition it has no committed offset for: its first
        /// record, or only records appended from now on.
        #[arg(long, value_enum, default_value_t = group::From::Earliest)]
        from: group::From,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GroupFormat::Lines)]
        format: GroupFormat,
    },
    /// List the topics of the bus in BUS (`topics <BUS>`), or create one (`topics create`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Topics {
        /// The bus directory.
        #[arg(required = true)]
        bus: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<topics::TopicsCommand>,
    },
    /// Print each consumer group of the bus in BUS (or only GROUP): members, their
    /// partitions, committed offsets and lag; or reset GROUP's committed offsets.
    #[command(after_help = group::GROUPS_HELP)]
    Groups {
        /// The bus directory.
        bus: PathBuf,
        /// Only this group.
        group: Option<String>,
        /// Move GROUP's committed offsets to --to (a dry run unless --execute); refused
        /// while the group has live members.
        #[arg(long, requires_all = ["group", "to"])]
        reset_offsets: bool,
        /// Where --reset-offsets moves the committed offsets: earliest, latest, an offset, or a
        /// time as `cat --since` takes it (the first record appended at or after it).
        #[arg(long, value_name = "earliest|latest|OFFSET|TIME", allow_hyphen_values = true, value_parser = parse_reset_to_arg, requires = "reset_offsets")]
        to: Option<shoal::group::ResetTo>,
        /// Reset only this topic (default: every topic the group consumed).
        #[arg(long, requires = "reset_offsets")]
        topic: Option<String>,
        /// Write the reset (without it, --reset-offsets only prints the plan).
        #[arg(long, requires = "reset_offsets")]
        execute: bool,
    },
    /// Show rates and lag per topic, partition and consumer group of the bus in BUS,
    /// refreshed every interval.
    Top {
        /// The bus directory.
        bus: PathBuf,
        /// Refresh interval in ms (at least 50).
        #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(top::INTERVAL_MS_MIN..))]
        interval: u64,
        /// Print one snapshot (rates shown as `-`) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Bridge a topic to a NATS JetStream stream: `export` publishes the topic to the stream,
    /// `import` appends the stream to the topic; runs until SIGTERM or SIGINT.
    #[cfg(feature = "nats")]
    #[command(subcommand)]
    Bridge(bridge::BridgeCommand),
    /// Not in this build (built without the `nats` feature): says so and exits 2.
    #[cfg(not(feature = "nats"))]
    #[command(hide = true, disable_help_flag = true)]
    Bridge {
        /// Whatever followed `bridge`; ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Check every segment and record of the log in DIR.
    Verify {
        /// The log directory.
        dir: PathBuf,
        /// Truncate the log at the first damaged record.
        #[arg(long)]
        repair: bool,
    },
    /// Print figures of the log in DIR. Not a check: it reads the records of the last segment
    /// only (damage there is an error); `shoal verify` checks every record.
    Stats {
        /// The log directory.
        dir: PathBuf,
    },
    /// Measure shoal on this machine next to the machine's own baselines (raw rtrb, a
    /// BufWriter, fdatasync, O_DIRECT, memcpy) and print the ratios.
    Bench {
        /// A run of a few seconds (smaller sizes, fewer rounds) instead of about a minute.
        #[arg(long)]
        quick: bool,
        /// Print one JSON object with every figure and the machine's facts.
        #[arg(long)]
        json: bool,
        /// Put the scratch files in a new directory under DIR (default: the temporary
        /// directory, if it is on a disk).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run orders through a scaling pipeline into a topic, consume them with a consumer
    /// group whose members join and leave, verify every one; print what was measured.
    #[command(mut_arg("segment_size", |a| a.help(log_args::segment_size_help(
        "of each partition's log of the demo's topic",
        Some("sized to --events (1M to 64M)"),
    ))))]
    Demo {
        /// Keep the bus here instead of in a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of 48-byte orders (80 bytes each in the topic; the default takes about 0.8 GB
        /// of disk while it runs, and about ten seconds on two cores).
        #[arg(long, value_name = "N", default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        events: u64,
        #[command(flatten)]
        log: log_args::LogArgs,
    },
    /// A consumer-group member process of `shoal demo` (started by it; not for direct use).
    #[command(name = "demo-member", hide = true)]
    DemoMember {
        /// The demo's bus directory.
        bus: PathBuf,
        /// The consumer group.
        group: String,
        /// The topic.
        topic: String,
        /// Orders of the run.
        #[arg(long)]
        events: u64,
        /// Where to write the member's report.
        #[arg(long)]
        report: PathBuf,
    },
}

/// How `cat` and `group` print records (`cat --format`; `group --format` is [`GroupFormat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The payload and a newline.
    Lines,
    /// One JSON object per line.
    Json,
}

/// `group --format`: [`Format`] with the help of what `group` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GroupFormat {
    /// `<partition> <offset> <payload>` and a newline.
    Lines,
    /// One JSON object per line, as `cat --format json` prints it, with its partition.
    Json,
}

impl From<GroupFormat> for Format {
    fn from(format: GroupFormat) -> Format {
        match format {
            GroupFormat::Lines => Format::Lines,
            GroupFormat::Json => Format::Json,
        }
    }
}

/// Where `cat` starts: `--from earliest|latest|<offset>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// The first record held.
    Earliest,
    /// After the last record present when `cat` starts: its next offset.
    Latest,
    /// This offset.
    Offset(u64),
}

/// Parses `earliest`, `latest` or an offset.
fn parse_start(s: &str) -> Result<Start, String> {
    match s {
        "earliest" => Ok(Start::Earliest),
        "latest" => Ok(Start::Latest),
        _ => s
            .parse()
            .map(Start::Offset)
            .map_err(|_| format!("`{s}` is not earliest, latest or an offset (a number from 0)")),
    }
}

/// Parses the value of an option that takes a time (`cat --since`, `groups --to`): such an
/// option takes a value that starts with `-` (`-1h`: a time before now) as written, so a
/// value that starts with `--` is an option given where the value belongs.
fn time_value(s: &str) -> Result<&str, String> {
    if s.starts_with("--") {
        return Err(format!("`{s}` is an option, not a value; give the value right after the option"));
    }
    Ok(s)
}

/// `cat --since`: [`cat::parse_since`], after [`time_value`].
fn parse_since_arg(s: &str) -> Result<u64, String> {
    time_value(s).and_then(cat::parse_since)
}

/// `groups --to`: [`group::parse_reset_to`], after [`time_value`].
fn parse_reset_to_arg(s: &str) -> Result<shoal::group::ResetTo, String> {
    time_value(s).and_then(group::parse_reset_to)
}

/// Parses `never`, `batch` or `interval=<ms>` (ms > 0).
fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "never" => Ok(Durability::Never),
        "batch" => Ok(Durability::Batch),
        _ => {
            let ms = s
                .strip_prefix("interval=")
                .ok_or_else(|| format!("`{s}` is not one of never, batch, interval=<ms>"))?;
            match ms.parse::<u64>() {
                Ok(0) => Err("interval=<ms> needs at least 1 ms; use batch for back-to-back syncs".into()),
                Ok(ms) => Ok(Durability::Interval(Duration::from_millis(ms))),
                Err(_) => Err(format!("`{ms}` is not a number of milliseconds")),
            }
        }
    }
}

/// A runtime error of a command: one line for a person, printed as `shoal: <line>`.
#[derive(Debug)]
pub struct Error {
    line: String,
}

impl Error {
    /// An error with this message (it should say what failed, on which path, what to do).
    fn new(line: impl Into<String>) -> Error {
        Error { line: line.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever a nested error put in its message.
        f.write_str(&self.line.replace('\n', " "))
    }
}

impl std::error::Error for Error {}

impl From<LogError> for Error {
    fn from(e: LogError) -> Error {
        Error::new(e.to_string())
    }
}

impl From<BusError> for Error {
    fn from(e: BusError) -> Error {
        Error::new(e.to_string())
    }
}

impl From<GroupError> for Error {
    fn from(e: GroupError) -> Error {
        Error::new(e.to_string())
    }
}

impl From<AppendError> for Error {
    fn from(e: AppendError) -> Error {
        Error::new(e.to_string())
    }
}

/// Opens the bus in `dir` for a command that only reads it: unlike [`Bus::open`], a
/// directory that holds no bus is an error, not a new bus. The library's refusals come
/// first, so a log directory is called a log ([`BusError::LogDirectory`]), not a missing bus.
fn open_bus(dir: &Path) -> Result<Bus, Error> {
    match Bus::open_existing(dir) {
        Ok(bus) => Ok(bus),
        Err(e @ BusError::LogDirectory { .. }) => Err(e.into()),
        Err(_) if !dir.join("topics").is_dir() => Err(Error::new(format!(
            "{}: no bus here (no topics directory); check the path, or create the bus by producing to a topic \
             (`shoal produce <BUS> --topic <T>`)",
            dir.display()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The error of a log command (`produce`, `cat`, `stats`, `verify`, named by `command`)
/// given a bus directory (it holds `topics/`) or a topic directory (it holds a `meta` file):
/// one line saying what the command expected; `None` for any other path.
fn bus_or_topic_dir(dir: &Path, command: &str) -> Option<Error> {
    let shown = dir.display();
    // What the directory is, the library says (as its own refusal does); here only the
    // command to type instead.
    match shoal::log::directory_kind(dir)? {
        shoal::log::DirKind::Bus => {
            let what = match command {
                "stats" | "verify" => {
                    format!("`shoal {command}` takes the log of one partition, {}/topics/<T>/<P>", dir.display())
                }
                _ => format!("name a topic with --topic <T> (`shoal {command} {shown} --topic <T>`)"),
            };
            Some(Error::new(format!(
                "{shown} is a bus directory, not a log; {what}; `shoal topics {shown}` lists its topics"
            )))
        }
        shoal::log::DirKind::Topic => {
            let topic = dir.file_name().map_or_else(|| "<T>".into(), |n| n.to_string_lossy().into_owned());
            let bus = dir
                .parent()
                .filter(|topics| topics.file_name().is_some_and(|n| n == "topics"))
                .and_then(Path::parent)
                .map_or_else(|| "<BUS>".into(), |bus| bus.display().to_string());
            let what = match command {
                "stats" | "verify" => {
                    format!("`shoal {command}` takes the log of one partition, {}/<P>", dir.display())
                }
                _ => format!("use `shoal {command} {bus} --topic {topic}`"),
            };
            Some(Error::new(format!("{shown} is the directory of topic {topic}, not a log; {what}")))
        }
    }
}

/// Checks, before `produce` opens the log in `dir` (creating it), that `dir` is not a bus or
/// a topic directory, so that a forgotten `--topic` creates nothing in the bus.
fn refuse_bus_or_topic(dir: &Path) -> Result<(), Error> {
    bus_or_topic_dir(dir, "produce").map_or(Ok(()), Err)
}

/// Checks that `dir` holds a log before a command that only reads one (`cat`, `stats`,
/// `verify`, named by `command`): a path that is missing, a file, a bus, a topic directory,
/// or a directory with neither a `HEAD` page nor a segment file is an error that says which,
/// so that a typo never reads as an empty log (exit 0 with nothing printed).
fn require_log(dir: &Path, command: &str) -> Result<(), Error> {
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::new(format!("{shown}: no such directory; check the path")));
        }
        Err(e) => return Err(Error::new(format!("{shown}: cannot read it: {e}"))),
    };
    if !meta.is_dir() {
        return Err(Error::new(format!("{shown} is a file, not a log directory; name the directory of a log")));
    }
    if let Some(e) = bus_or_topic_dir(dir, command) {
        return Err(e);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::new(format!("{shown}: cannot list it: {e}")))?;
    let mut is_log = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::new(format!("{shown}: cannot list it: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "HEAD" || name.ends_with(".seg") {
            is_log = true;
            break;
        }
    }
    if !is_log {
        return Err(Error::new(format!(
            "{shown}: no shoal log here (no HEAD page, no segment file); check the path, or create the log by \
             producing to it (`shoal produce {shown}`)"
        )));
    }
    Ok(())
}

/// What a failed write to stdout means: a reader that went away (`| head`) ends the command
/// quietly; anything else is an error.
fn stdout_failed(e: io::Error) -> Result<ExitCode, Error> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::new(format!("writing to stdout failed: {e}")))
    }
}

/// Parses the command line, runs the command and returns the process exit status: 0 on
/// success, 1 after a runtime error (printed as one line on stderr), 2 for a usage error.
pub fn main() -> ExitCode {
    install_tracing();
    // `parse` prints usage errors and exits 2 (0 for --help and --version).
    run(Cli::parse())
}

/// Environment variable with the filter of the library's messages on stderr (`tracing`
/// `EnvFilter` syntax: `info`, `shoal=debug`, `off`); `RUST_LOG` when it is unset.
const LOG_ENV: &str = "SHOAL_LOG";
/// The filter when neither [`LOG_ENV`] nor `RUST_LOG` is set: warnings and errors.
const LOG_DEFAULT: &str = "warn";

/// Sends the library's `tracing` events to stderr: one line each, `shoal: warning: ...` as
/// the CLI's own warnings, colours only when stderr is a terminal. The filter comes from
/// `SHOAL_LOG`, else `RUST_LOG`, else [`LOG_DEFAULT`]; a filter that does not parse is said
/// on stderr and the default is used.
fn install_tracing() {
    let chosen = [LOG_ENV, "RUST_LOG"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()).map(|v| (name, v)));
    let (filter, refused) = match &chosen {
        Some((name, value)) => match tracing_subscriber::EnvFilter::try_new(value) {
            Ok(filter) => (filter, None),
            Err(e) => (tracing_subscriber::EnvFilter::new(LOG_DEFAULT), Some(format!("{name}={value}: {e}"))),
        },
        None => (tracing_subscriber::EnvFilter::new(LOG_DEFAULT), None),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .event_format(LogLine)
        .try_init();
    if let Some(refused) = refused {
        let _ = writeln!(
            io::stderr().lock(),
            "shoal: warning: {refused}; showing warnings ({LOG_DEFAULT}); write a filter such as `info` or `shoal=debug`"
        );
    }
    // Only one subscriber per process: a second call (none today) keeps the first.
    drop(installed);
}

/// The shape of a library message on stderr, the CLI's own: `shoal: warning: <message>
/// key=value ...` (`error`, `warning`, `info`, `debug`, `trace`), one line each.
struct LogLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LogLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        write!(writer, "shoal: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Runs a parsed command line; see [`main`].
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Produce { dir, topic: None, durability, ack, log, .. } => {
            refuse_bus_or_topic(&dir).and_then(|()| produce::run(&dir, durability, ack, &log))
        }
        Command::Produce { dir, topic: Some(topic), partitions, keyed, durability, ack, log } => {
            produce::run_topic(&dir, &topic, partitions, keyed, durability, ack, &log)
        }
        Command::Cat { dir, topic: None, from, since, follow, format, .. } => {
            require_log(&dir, "cat").and_then(|()| cat::run(&dir, from, since, follow, format))
        }
        Command::Cat { dir, topic: Some(topic), partition, from, since, follow, format } => {
            cat::run_topic(&dir, &topic, partition, from, since, follow, format)
        }
        Command::Group { bus, group, topic, exit_when_idle, from, format } => {
            group::run(&bus, &group, &topic, exit_when_idle.map(Duration::from_millis), from, format.into())
        }
        Command::Topics { bus, action } => topics::run(bus, action),
        Command::Groups { bus, group, reset_offsets, to, topic, execute } => match (reset_offsets, group, to) {
            (true, Some(group), Some(to)) => group::reset(&bus, &group, topic.as_deref(), to, execute),
            (_, group, _) => group::list(&bus, group.as_deref()),
        },
        Command::Top { bus, interval, once } => top::run(&bus, Duration::from_millis(interval), once),
        #[cfg(feature = "nats")]
        Command::Bridge(command) => bridge::run(command),
        #[cfg(not(feature = "nats"))]
        Command::Bridge { .. } => {
            let _ = writeln!(io::stderr().lock(), "shoal: {WITHOUT_NATS}");
            return ExitCode::from(2);
        }
        Command::Verify { dir, repair } => require_log(&dir, "verify").and_then(|()| inspect::verify(&dir, repair)),
        Command::Stats { dir } => require_log(&dir, "stats").and_then(|()| inspect::stats(&dir)),
        Command::Demo { dir, events, log } => demo::run(dir.as_deref(), events, &log),
        Command::DemoMember { bus, group, topic, events, report } => {
            demo::run_member(&bus, &group, &topic, events, &report)
        }
        Command::Bench { quick, json, dir } => bench::run(quick, json, dir.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr().lock(), "shoal: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_values() {
        assert_eq!(parse_durability("never"), Ok(Durability::Never));
        assert_eq!(parse_durability("batch"), Ok(Durability::Batch));
        assert_eq!(parse_durability("interval=25"), Ok(Durability::Interval(Duration::from_millis(25))));
        assert!(parse_durability("interval=0").is_err());
        assert!(parse_durability("interval=").is_err());
        assert!(parse_durability("interval=x").is_err());
        assert!(parse_durability("always").is_err());
    }

    #[test]
    fn starts() {
        assert_eq!(parse_start("earliest"), Ok(Start::Earliest));
        assert_eq!(parse_start("latest"), Ok(Start::Latest));
        assert_eq!(parse_start("0"), Ok(Start::Offset(0)));
        assert_eq!(parse_start("17"), Ok(Start::Offset(17)));
        for bad in ["", "last", "-1", "1.5", "Latest"] {
            assert!(parse_start(bad).expect_err(bad).contains(&format!("`{bad}`")), "{bad}");
        }
    }

    #[test]
    fn errors_are_one_line() {
        let e = Error::new("a\nb");
        assert_eq!(e.to_string(), "a b");
    }

    #[cfg(not(feature = "nats"))]
    #[test]
    fn bridge_without_the_nats_feature_is_recognised() {
        let cli = Cli::try_parse_from(["shoal", "bridge", "export", "bus", "--topic", "t", "--help"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Bridge { .. })));
        assert!(WITHOUT_NATS.contains("--features nats"));
    }

    /// Every subcommand of `command`, itself included, with its path (`shoal topics create`).
    fn every_command(command: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        // `help` is clap's, and its subcommands only echo the others' names and abouts.
        for sub in command.get_subcommands().filter(|sub| sub.get_name() != "help") {
            every_command(sub, format!("{path} {}", sub.get_name()), out);
        }
        out.push((path, command.clone()));
    }

    fn commands() -> Vec<(String, clap::Command)> {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build();
        let mut out = Vec::new();
        every_command(&cli, "shoal".into(), &mut out);
        out
    }

    #[test]
    fn every_option_that_takes_a_time_takes_one_before_now() {
        let mut times = Vec::new();
        for (path, command) in commands() {
            for arg in command.get_arguments() {
                let names = arg.get_value_names().unwrap_or_default();
                if names.iter().any(|n| n.as_str().contains("TIME")) {
                    assert!(arg.is_allow_hyphen_values_set(), "{path} --{}: -1h must be a value", arg.get_id());
                    times.push(format!("{path} --{}", arg.get_id()));
                }
            }
        }
        assert_eq!(times, ["shoal cat --since", "shoal groups --to"]);
        for args in [
            &["shoal", "cat", "log", "--since", "-1h", "--follow"][..],
            &["shoal", "cat", "bus", "--topic", "t", "--since", "-90s"],
            &["shoal", "groups", "bus", "g", "--reset-offsets", "--to", "-1h", "--execute"],
            &["shoal", "groups", "bus", "g", "--to", "-2d", "--reset-offsets"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        for args in [
            &["shoal", "cat", "log", "--since", "--follow"][..],
            &["shoal", "groups", "b", "g", "--reset-offsets", "--to", "--execute"],
        ] {
            let e = Cli::try_parse_from(args).expect_err("an option is no time");
            assert!(e.to_string().contains("is an option, not a value"), "{args:?}: {e}");
        }
    }

    /// The options a help text names outside backticks (`cat --since` names another command's).
    fn flags_named(help: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, part) in help.split('`').enumerate() {
            if i % 2 == 1 {
                continue;
            }
            for word in part.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
                if let Some(name) = word.strip_prefix("--").filter(|n| !n.is_empty()) {
                    out.push(name.trim_end_matches('-').to_string());
                }
            }
        }
        out
    }

    #[test]
    fn every_help_names_only_options_of_its_own_command() {
        for (path, command) in commands() {
            let longs: Vec<&str> = command.get_arguments().filter_map(clap::Arg::get_long).collect();
            let mut texts: Vec<String> = Vec::new();
            for text in
                [command.get_about(), command.get_long_about(), command.get_after_help(), command.get_after_long_help()]
            {
                texts.extend(text.map(ToString::to_string));
            }
            for arg in command.get_arguments() {
                texts.extend([arg.get_help(), arg.get_long_help()].into_iter().flatten().map(ToString::to_string));
                for value in arg.get_possible_values() {
                    texts.extend(value.get_help().map(ToString::to_string));
                }
            }
            for text in &texts {
                for flag in flags_named(text) {
                    assert!(
                        longs.contains(&flag.as_str()),
                        "{path}: its help names --{flag}, which it has not: {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
