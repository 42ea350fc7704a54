//! The `shoal` command-line tool: `produce`, `cat`, `verify`, `stats` and `demo` over a log
//! directory.
//!
//! # Design
//! The binary (`src/main.rs`) is one line that calls [`main`]; everything else lives here so
//! that the commands are ordinary library code, built and linted with the rest of shoal.
//! Arguments are parsed by `clap` (derive). Each command is a function in its own file that
//! returns `Result<ExitCode, Error>`; [`main`] prints an [`Error`] as one line on stderr,
//! `shoal: <what happened>; <what to do>`, and exits 1.
//!
//! # Contract (tools and tests outside this repository rely on it exactly)
//! - `shoal produce <DIR> [--durability never|batch|interval=<ms>] [--ack]` creates the log
//!   if missing and appends one record per stdin line (the line's bytes without the `\n`; a
//!   last line without a newline is a record too; lines are bytes, not necessarily UTF-8).
//!   Lines that arrive together are appended as one batch, but a line is never held back
//!   waiting for more input. With `--ack`, a separate thread prints `durable <N>` (flushed)
//!   each time the durable watermark advances: every record with offset `<= N` is durable.
//!   At end of input it syncs, prints the final ack, and exits 0.
//! - `shoal cat <DIR> [--from <offset>] [--follow] [--format lines|json]`: `lines` prints
//!   each payload and a newline; `json` prints one object per line with `offset`,
//!   `timestamp_ns`, `key` and `payload` (UTF-8) or `payload_base64` (anything else). A
//!   record that fails its checksum is never printed: `cat` stops there with an error.
//!   A closed stdout (`| head`) ends `cat` quietly with exit 0.
//! - `shoal verify <DIR> [--repair]`: exit 0 when sound, else one line per problem (file,
//!   byte position, what is wrong, whether a repair fixes it) and exit 1. `--repair` cuts the
//!   log at the first damaged record and says where and how many records that drops.
//! - `shoal stats <DIR>`: segments, records, bytes, first, last and durable offset.
//! - `shoal demo [--dir <DIR>] [--events <N>]`: appends, replays and verifies a few million
//!   events and prints measured throughput and durable latency.
//! - Usage errors exit 2 (clap's convention); runtime errors exit 1 with one line on stderr.
//!
//! Offsets printed by the tool are inclusive: `durable <N>` and the `durable offset` row of
//! `stats` name the last durable record, while the library's
//! [`durable_offset`](crate::log::Appender::durable_offset) is the exclusive watermark
//! (`N + 1`).

mod cat;
mod demo;
mod inspect;
mod produce;

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::log::{AppendError, Durability, LogError};

/// The `shoal` command line.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about = "A zero-copy event bus for one Linux box: log tools and demo")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append one record per stdin line to the log in DIR (created if missing).
    Produce {
        /// The log directory.
        dir: PathBuf,
        /// When records become durable: never, batch, or interval=<ms>.
        #[arg(long, default_value = "batch", value_parser = parse_durability)]
        durability: Durability,
        /// Print `durable <N>` each time every record up to offset N is durable.
        #[arg(long)]
        ack: bool,
    },
    /// Print the records of the log in DIR.
    Cat {
        /// The log directory.
        dir: PathBuf,
        /// First offset to print.
        #[arg(long)]
        from: Option<u64>,
        /// Keep printing records as they are appended.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Lines)]
        format: Format,
    },
    /// Check every segment and record of the log in DIR.
    Verify {
        /// The log directory.
        dir: PathBuf,
        /// Truncate the log at the first damaged record.
        #[arg(long)]
        repair: bool,
    },
    /// Print figures of the log in DIR.
    Stats {
        /// The log directory.
        dir: PathBuf,
    },
    /// Append, replay and verify a few million events; print throughput and latency.
    Demo {
        /// Keep the log here instead of in a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of 100-byte events.
        #[arg(long, default_value_t = 3_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        events: u64,
    },
}

/// How `cat` prints records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The payload and a newline.
    Lines,
    /// One JSON object per line.
    Json,
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

impl From<AppendError> for Error {
    fn from(e: AppendError) -> Error {
        Error::new(e.to_string())
    }
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
    // `parse` prints usage errors and exits 2 (0 for --help and --version).
    run(Cli::parse())
}

/// Runs a parsed command line; see [`main`].
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Produce { dir, durability, ack } => produce::run(&dir, durability, ack),
        Command::Cat { dir, from, follow, format } => cat::run(&dir, from, follow, format),
        Command::Verify { dir, repair } => inspect::verify(&dir, repair),
        Command::Stats { dir } => inspect::stats(&dir),
        Command::Demo { dir, events } => demo::run(dir.as_deref(), events),
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
    fn errors_are_one_line() {
        let e = Error::new("a\nb");
        assert_eq!(e.to_string(), "a b");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
