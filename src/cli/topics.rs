//! `shoal topics <BUS>` lists the topics of a bus; `shoal topics create <BUS> <T>` creates
//! one.
//!
//! The listing reads the bus through [`BusSnapshot`] (what `top` shows) and creates
//! nothing: a path without a bus is an error, not a new bus. Creating goes through
//! [`Bus::topic_or_create`], so the topic's partition count is written once, atomically,
//! by whichever of several racing creators comes first; the others see it as existing.
//!
//! ```text
//! TOPIC   PARTITIONS  RECORDS  BYTES      SCHEMA
//! orders  4           2380     268435456  Order v1 (24 B, align 8, fingerprint 0x9f3c2a1b7d4e6f80)
//! lines   4           12       1048576    -
//! ```
//!
//! SCHEMA is a typed topic's schema (`shoal::bus::Schema`: name, version, size, alignment,
//! layout fingerprint), `-` for a topic without one. Typed topics are created from Rust
//! (`Bus::topic_or_create_typed`), since a schema is a Rust type; `topics create` makes
//! untyped ones.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::log_args::LogArgs;
use super::Error;
use shoal::bus::{Bus, BusError, TopicSchema, DEFAULT_PARTITIONS, PARTITIONS_MAX};
use shoal::log::LogOptions;
use shoal::metrics::BusSnapshot;

/// What `shoal topics` does; `shoal topics <BUS>` alone is `list`.
#[derive(Debug, Subcommand)]
pub(super) enum TopicsCommand {
    /// List the topics of the bus in BUS (what `shoal topics <BUS>` does).
    List {
        /// The bus directory.
        bus: PathBuf,
    },
    /// Create a topic in the bus in BUS (the bus too, if missing).
    #[command(mut_arg("segment_size", |a| a.help(super::log_args::segment_size_help("of each partition's log", None))))]
    Create {
        /// The bus directory.
        bus: PathBuf,
        /// The topic's name.
        topic: String,
        /// Its partition count (default 4). A topic that exists with this count is left as it
        /// is (exit 0); with another count it is an error.
        #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..=PARTITIONS_MAX as i64))]
        partitions: Option<u32>,
        /// With --segment-size or --prealloc, each partition's log is created now with those
        /// sizes (later writers choose their own for the segments they add).
        #[command(flatten)]
        log: LogArgs,
    },
}

/// Runs `shoal topics ...`: `bus` is the BUS of `shoal topics <BUS>`, `action` the
/// subcommand (clap gives one or the other).
pub(super) fn run(bus: Option<PathBuf>, action: Option<TopicsCommand>) -> Result<ExitCode, Error> {
    match (action, bus) {
        (Some(TopicsCommand::List { bus }), _) | (None, Some(bus)) => list(&bus),
        (Some(TopicsCommand::Create { bus, topic, partitions, log }), _) => create(&bus, &topic, partitions, &log),
        // clap requires BUS when there is no subcommand.
        (None, None) => Err(Error::new("topics: name a bus directory: `shoal topics <BUS>`")),
    }
}

/// `shoal topics <BUS>`.
fn list(bus: &Path) -> Result<ExitCode, Error> {
    let handle = super::open_bus(bus)?;
    let snap = BusSnapshot::take(&handle)?;
    let text = if snap.topics.is_empty() {
        format!("{}: no topics; create one with `shoal topics create {} <TOPIC>`\n", bus.display(), bus.display())
    } else {
        let mut rows: Vec<[String; 5]> = Vec::with_capacity(snap.topics.len());
        for t in &snap.topics {
            let schema = match handle.topic(&t.name) {
                Ok(topic) => schema_cell(topic.schema()),
                // Removed since the snapshot: its row stays as the snapshot saw it.
                Err(BusError::NoTopic { .. }) => schema_cell(None),
                Err(e) => return Err(e.into()),
            };
            rows.push([
                t.name.clone(),
                t.partitions.len().to_string(),
                t.records().to_string(),
                t.bytes().to_string(),
                schema,
            ]);
        }
        table(&["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "SCHEMA"], &rows)
    };
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => super::stdout_failed(e),
    }
}

/// A topic's schema as `topics` and `stats` show it: `Order v1 (24 B, align 8, fingerprint
/// 0x...)`, or `-` for a topic without one.
pub(super) fn schema_cell(schema: Option<&TopicSchema>) -> String {
    schema.map_or_else(|| "-".to_string(), TopicSchema::to_string)
}

/// `shoal topics create <BUS> <TOPIC> [--partitions N] [--segment-size ..] [--prealloc ..]`.
fn create(bus: &Path, name: &str, partitions: Option<u32>, log: &LogArgs) -> Result<ExitCode, Error> {
    // Options first: a refused size creates nothing.
    let opts = log.log_options(LogOptions::default())?;
    let handle = Bus::open(bus)?;
    let line = match handle.topic(name) {
        Ok(topic) => {
            if let Some(asked) = partitions.filter(|&asked| asked != topic.partitions()) {
                return Err(Error::new(format!(
                    "{}: topic {name} exists with {} partitions, not {asked}; use it as it is (drop --partitions) \
                     or pick another name",
                    bus.display(),
                    topic.partitions()
                )));
            }
            let schema = topic.schema().map_or_else(String::new, |schema| format!(" and schema {schema}"));
            format!(
                "{}: topic {name} exists with {} partitions{schema}; left as it is",
                bus.display(),
                topic.partitions()
            )
        }
        Err(BusError::NoTopic { .. }) => {
            let topic = handle.topic_or_create(name, Some(partitions.unwrap_or(DEFAULT_PARTITIONS)))?;
            if log.any() {
                topic.producer(opts)?.close()?;
            }
            format!("{}: created topic {name} with {} partitions", bus.display(), topic.partitions())
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => super::stdout_failed(e),
    }
}

/// A header and rows, columns two spaces apart and padded to their widest cell (the last
/// column unpadded).
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns() {
        let rows = [["orders".to_string(), "4".into(), "12".into(), "1024".into()]];
        assert_eq!(
            table(&["TOPIC", "PARTITIONS", "RECORDS", "BYTES"], &rows),
            "TOPIC   PARTITIONS  RECORDS  BYTES\norders  4           12       1024\n"
        );
    }
}
