//! `shoal verify` and `shoal stats`: read-only looks at a log, and the one repair.
//!
//! `stats` is quick, not a check: it reads every segment's header but the records of the last
//! segment in use only (where the next offset comes from), as [`log::stats`] does. Damage
//! there is an error (exit 1: figures that stopped at it would read as a shorter, sound log);
//! damage in an older segment is not looked for, since finding it means reading every record
//! of the log, which is what `verify` does. So that exit 0 is not read as "sound", `stats`
//! says so in a row of its own: `checked  records of the last segment only; ...`.
//!
//! `stats` on the log of a topic's partition (`<BUS>/topics/<T>/<P>`) also shows the topic
//! (`orders (partition 2 of 4)`) and its schema (`Order v1 (24 B, align 8, fingerprint
//! 0x...)`, or `-` for a topic without one), read through the library's `Bus::topic`. A
//! damaged topic `meta` file leaves the log's figures printed, the schema shown as
//! `unreadable`, and is reported on stderr with exit 1.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use super::Error;
use shoal::bus::Bus;
use shoal::log::{self, Problem};

pub(super) fn verify(dir: &Path, repair: bool) -> Result<ExitCode, Error> {
    if repair {
        return run_repair(dir);
    }
    let report = log::verify(dir)?;
    if report.is_sound() {
        let line = format!("{}: sound: {} segments, {} records", dir.display(), report.segments, report.records);
        return print_stdout(&line, ExitCode::SUCCESS);
    }
    report_problems(&report.problems);
    Ok(ExitCode::FAILURE)
}

fn run_repair(dir: &Path) -> Result<ExitCode, Error> {
    let report = log::repair(dir)?;
    let mut lines = Vec::new();
    if let Some((path, position, offset)) = &report.resumed {
        lines.push(format!(
            "finished an interrupted repair: cut {} at byte {position}, dropping offset {offset} onward",
            path.display()
        ));
    }
    for path in &report.seals_restored {
        lines.push(format!("repaired: wrote back the end marker of {} (no record lost)", path.display()));
    }
    if let Some((path, position, offset)) = &report.cut {
        let last =
            report.last_offset_dropped.map_or(String::new(), |last| format!("; offsets {offset} to {last} dropped"));
        lines.push(format!(
            "repaired: cut {} at byte {position}, dropping offset {offset} onward ({} intact records after the damage){last}",
            path.display(),
            report.records_dropped
        ));
    }
    if report.head_rewritten {
        lines.push(format!("repaired: rewrote the damaged control page {}", dir.join("HEAD").display()));
    }
    if report.is_noop() && report.unrepairable.is_empty() {
        lines.push(format!("{}: nothing to repair", dir.display()));
    } else if report.is_noop() {
        lines.push(format!("{}: nothing repaired (see below)", dir.display()));
    }
    let code = if report.unrepairable.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    let printed = print_stdout(&lines.join("\n"), code);
    report_problems(&report.unrepairable);
    printed
}

/// One line per problem on stderr.
fn report_problems(problems: &[Problem]) {
    let mut err = io::stderr().lock();
    for problem in problems {
        let _ = writeln!(err, "shoal: {problem}");
    }
}

fn print_stdout(text: &str, code: ExitCode) -> Result<ExitCode, Error> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(code),
        Err(e) => super::stdout_failed(e).map(|_| code),
    }
}

pub(super) fn stats(dir: &Path) -> Result<ExitCode, Error> {
    let stats = log::stats(dir)?;
    let show = |o: Option<u64>| o.map_or_else(|| "-".to_string(), |o| o.to_string());
    let mut rows = vec![
        ("segments", stats.segments.to_string()),
        ("records", stats.records.to_string()),
        ("bytes", format!("{} ({})", stats.bytes, human_bytes(stats.bytes))),
        ("first offset", show(stats.first_offset)),
        ("last offset", show(stats.last_offset)),
        // Watermarks are exclusive (README, "Guarantees", Offsets): the next offset appended,
        // and the offset every record below which is durable.
        ("next offset", stats.last_offset.map_or(0, |last| last + 1).to_string()),
        ("durable below", stats.durable_offset.to_string()),
        ("producers", producers(&stats.producers)),
        ("checked", CHECKED.to_string()),
    ];
    let mut meta_error = None;
    if let Some((bus, topic, partition)) = partition_of_topic(dir) {
        match Bus::open_existing(&bus).and_then(|bus| bus.topic(&topic)) {
            Ok(handle) => {
                rows.push(("topic", format!("{topic} (partition {partition} of {})", handle.partitions())));
                rows.push(("schema", super::topics::schema_cell(handle.schema())));
            }
            Err(e) => {
                rows.push(("topic", topic));
                rows.push(("schema", "unreadable (see the error below)".to_string()));
                meta_error = Some(e);
            }
        }
    }
    let Some(e) = meta_error else {
        return print_stdout(&table(&rows), ExitCode::SUCCESS);
    };
    print_stdout(&table(&rows), ExitCode::FAILURE)?;
    Err(e.into())
}

/// The `checked` row of `stats`: what it read of the records (see the module docs).
const CHECKED: &str = "records of the last segment only; `shoal verify` checks every record";

/// `(bus, topic, partition)` when `dir` is the log of a topic's partition,
/// `<bus>/topics/<topic>/<partition>` with a `meta` file in the topic's directory.
fn partition_of_topic(dir: &Path) -> Option<(std::path::PathBuf, String, u32)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let partition = dir.file_name()?.to_str()?.parse::<u32>().ok()?;
    let topic_dir = dir.parent()?;
    let topics = topic_dir.parent()?;
    if topics.file_name()? != "topics" || !topic_dir.join("meta").is_file() {
        return None;
    }
    let topic = topic_dir.file_name()?.to_str()?.to_string();
    Some((topics.parent()?.to_path_buf(), topic, partition))
}

/// `0`, or the count and the pids (`3 (pids 812, 812, 904)`).
fn producers(pids: &[u32]) -> String {
    if pids.is_empty() {
        return "0".into();
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    format!("{} (pid{} {})", pids.len(), if pids.len() == 1 { "" } else { "s" }, list.join(", "))
}

/// Two left-aligned columns, without a trailing newline.
pub(super) fn table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}")).collect::<Vec<_>>().join("\n")
}

/// `1.5 KiB`, `64.0 MiB`, ...
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_bytes_read_well() {
        let t = table(&[("a", "1".into()), ("longer", "2".into())]);
        assert_eq!(t, "a       1\nlonger  2");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }
}
