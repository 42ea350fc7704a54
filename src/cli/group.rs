//! `shoal group` and `shoal groups`: a consumer group member on the command line, and the
//! state of every group.
//!
//! `--from latest` starts partitions the group has no committed offset for at their end
//! ([`Start::Latest`]); partitions with one always start there.
//!
//! `shoal groups <BUS> <GROUP> --reset-offsets --to <target>` is Kafka's
//! `kafka-consumer-groups --reset-offsets`: a dry run by default that prints, per partition,
//! the committed offset now and where it would go; `--execute` writes it. It is refused while
//! the group has live members (they would overwrite it at their next commit): the error
//! names them. The target is parsed into [`ResetTo`], one variant per form.
//!
//! A member polls with a short timeout ([`POLL_WAIT`]) so that it sees a stop request soon:
//! SIGTERM and SIGINT only set a flag (through `signal-hook`), which the loop checks between
//! polls. Each batch is written, flushed, and only then committed; because a batch is
//! flushed before the next poll, records that a rebalance commits on revoke (those of
//! earlier polls) have always been printed too.
//!
//! A closed stdout (EPIPE) ends the member with exit 0, but the batch that could not be
//! written is not committed: the member is dropped without [`Member::leave`], which hands
//! its partitions over without committing, so the next owner prints those records again.
//! Every earlier batch was committed when it was flushed.
//!
//! A member that was stopped (SIGSTOP) or kept from polling for longer than the session
//! timeout finds, when it goes on, that another member took its partitions over: the commit
//! of the batch it had printed is refused ([`GroupError::Fenced`]). That is not fatal: the
//! member says so on stderr (those records will be printed again by the new owner) and goes
//! on with the partitions it still holds, rejoining the rotation like any member.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Error, Format};
use shoal::group::{
    describe, group_topics, reset_offsets, Delivery, GroupError, GroupInfo, GroupOptions, Member, OffsetReset, ResetTo,
    Start,
};

/// Longest wait of one poll: how soon a member notices SIGTERM or SIGINT.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// Most records a member takes (and prints, then commits) per batch.
const BATCH_RECORDS: usize = 4096;

/// What `groups --help` adds about resets.
pub(super) const GROUPS_HELP: &str = "\
--reset-offsets --to earliest|latest|OFFSET|TIME moves GROUP's committed offsets (every topic it \
consumed, or only --topic): earliest is the first record each partition still holds, latest its \
end, OFFSET the same offset in every partition (kept within the first record and the end), TIME \
each partition's first record appended at or after that time, or its end (any form `cat --since` \
takes: 2026-12-02T10:00:00Z, 1764669600s, -1h). Without --execute it only prints the plan. Refused while the group has live members: stop them \
first (they leave on SIGTERM).";

/// `group --from`: where a partition without a committed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum From {
    /// The first record the partition holds.
    Earliest,
    /// Its end: only records appended from now on.
    Latest,
}

/// Parses `--to`: `earliest`, `latest`, an offset (a whole number), or a time in any form
/// `cat --since` reads (RFC 3339, a Unix time with its unit, or relative to now).
pub(super) fn parse_reset_to(text: &str) -> Result<ResetTo, String> {
    match text {
        "earliest" => Ok(ResetTo::Earliest),
        "latest" => Ok(ResetTo::Latest),
        _ => match text.parse::<u64>() {
            Ok(offset) => Ok(ResetTo::Offset(offset)),
            Err(_) => super::cat::parse_since(text).map(ResetTo::Time).map_err(|_| {
                format!(
                    "`{text}` is not a reset target: give earliest, latest, an offset (a whole number), or a time \
                     (2026-12-02T10:00:00Z, 1764669600s, -1h)"
                )
            }),
        },
    }
}

/// `shoal group <BUS> <GROUP> --topic <T> [--exit-when-idle <ms>] [--from earliest|latest]`.
pub(super) fn run(
    bus: &Path,
    group: &str,
    topic: &str,
    exit_when_idle: Option<Duration>,
    from: From,
    format: Format,
) -> Result<ExitCode, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::new(format!("installing the handler of signal {signal} failed: {e}")))?;
    }
    let bus = super::open_bus(bus)?;
    let start = match from {
        From::Earliest => Start::Earliest,
        From::Latest => Start::Latest,
    };
    let opts = GroupOptions::default().label(format!("shoal group, pid {}", std::process::id())).start(start);
    let mut member = Member::join(&bus, group, topic, opts)?;
    let mut out = BufWriter::with_capacity(64 << 10, io::stdout().lock());
    let mut last_record = Instant::now();
    // Bounded by the stop flag, the idle limit, or stdout closing; each pass waits in `poll`.
    // pairs with the signal handler's store (signal-hook uses SeqCst)
    while !stop.load(Ordering::SeqCst) {
        let batch = member.poll(BATCH_RECORDS, POLL_WAIT)?;
        if batch.is_empty() {
            if exit_when_idle.is_some_and(|idle| last_record.elapsed() >= idle) {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        if let Err(e) = write_batch(&mut out, &batch, format) {
            // Not committed: dropping the member hands its partitions over as they were
            // last committed (see the module docs).
            drop(member);
            return super::stdout_failed(e);
        }
        warn_if_fenced(member.commit())?;
    }
    warn_if_fenced(member.leave())?;
    Ok(ExitCode::SUCCESS)
}

/// Passes a commit's result on, except a refused (fenced) commit, which is said on stderr.
fn warn_if_fenced(result: Result<(), GroupError>) -> Result<(), GroupError> {
    match result {
        Err(e @ GroupError::Fenced { .. }) => {
            eprintln!("shoal: warning: {e}");
            Ok(())
        }
        other => other,
    }
}

/// Writes `<partition> <offset> <payload>` lines, or `cat`'s JSON objects with their
/// partition, and flushes them.
fn write_batch(out: &mut impl Write, batch: &[Delivery], format: Format) -> io::Result<()> {
    for delivery in batch {
        match format {
            Format::Lines => {
                write!(out, "{} {} ", delivery.partition, delivery.record.offset())?;
                out.write_all(delivery.record.payload())?;
                out.write_all(b"\n")?;
            }
            Format::Json => super::cat::write_json(out, &delivery.record.record(), Some(delivery.partition))?,
        }
    }
    out.flush()
}

/// `shoal groups <BUS> [<GROUP>]`.
pub(super) fn list(bus: &Path, only: Option<&str>) -> Result<ExitCode, Error> {
    let mut groups = describe(&super::open_bus(bus)?)?;
    if let Some(only) = only {
        groups.retain(|g| g.group == only);
    }
    let text = match (groups.is_empty(), only) {
        (true, None) => format!("{}: no consumer groups\n", bus.display()),
        (true, Some(group)) => format!("{}: no consumer group {group}\n", bus.display()),
        (false, _) => table(&groups),
    };
    print(&text)
}

fn print(text: &str) -> Result<ExitCode, Error> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => super::stdout_failed(e),
    }
}

/// `shoal groups <BUS> <GROUP> --reset-offsets --to <target> [--topic <T>] [--execute]`.
pub(super) fn reset(
    bus: &Path,
    group: &str,
    topic: Option<&str>,
    to: ResetTo,
    execute: bool,
) -> Result<ExitCode, Error> {
    let bus_handle = super::open_bus(bus)?;
    let topics = match topic {
        Some(topic) => vec![topic.to_string()],
        None => group_topics(&bus_handle, group)?,
    };
    if topics.is_empty() {
        return Err(Error::new(format!(
            "{}: no consumer group {group}: nothing to reset (see `shoal groups {}`)",
            bus.display(),
            bus.display()
        )));
    }
    // Every topic is checked (and planned) before any is written.
    let mut plans = Vec::with_capacity(topics.len());
    for topic in &topics {
        plans.push(reset_offsets(&bus_handle, group, topic, to, false)?);
    }
    if execute {
        plans.clear();
        for topic in &topics {
            plans.push(reset_offsets(&bus_handle, group, topic, to, true)?);
        }
    }
    let mut text = String::new();
    for (topic, plan) in topics.iter().zip(&plans) {
        text.push_str(&reset_table(group, topic, to, plan, execute));
    }
    print(&text)
}

/// The plan of one topic's reset.
///
/// ```text
/// group g, topic t: offsets reset to earliest (dry run: nothing written; add --execute to apply)
///   PARTITION  COMMITTED  NEW  FIRST  END
///   0          10         0    0      12
/// ```
fn reset_table(group: &str, topic: &str, to: ResetTo, plan: &[OffsetReset], execute: bool) -> String {
    let target = match to {
        ResetTo::Earliest => "earliest".to_string(),
        ResetTo::Latest => "latest".to_string(),
        ResetTo::Offset(o) => format!("offset {o}"),
        ResetTo::Time(ns) => format!("the first record appended at or after {ns} ns since the Unix epoch"),
        other => format!("{other:?}"),
    };
    let how = if execute { "" } else { " (dry run: nothing written; add --execute to apply)" };
    let verb = if execute { "reset" } else { "would be reset" };
    let mut text = format!("group {group}, topic {topic}: offsets {verb} to {target}{how}\n");
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|r| {
            vec![
                r.partition.to_string(),
                r.committed.map_or_else(|| "-".to_string(), |c| c.to_string()),
                r.new.to_string(),
                r.first.to_string(),
                r.end.to_string(),
            ]
        })
        .collect();
    push_rows(&mut text, &["PARTITION", "COMMITTED", "NEW", "FIRST", "END"], &rows);
    text
}

/// The `groups` report: per group and topic, a members table and a partitions table, with
/// aligned columns.
///
/// ```text
/// group readers, topic orders: 2 members, lag 5
///   MEMBER                             PARTITIONS  LABEL
///   00000001764000000000000001-812-0   0,1         shoal group, pid 812
///   PARTITION  OWNER                             COMMITTED  END  LAG
///   0          00000001764000000000000001-812-0  10         12   2
/// ```
fn table(groups: &[GroupInfo]) -> String {
    let mut text = String::new();
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let lag: u64 = g.partitions.iter().map(|p| p.lag).sum();
        let members = match g.members.len() {
            1 => "1 member".to_string(),
            n => format!("{n} members"),
        };
        text.push_str(&format!("group {}, topic {}: {members}, lag {lag}\n", g.group, g.topic));
        if !g.members.is_empty() {
            let rows: Vec<Vec<String>> = g
                .members
                .iter()
                .map(|m| {
                    let partitions = if m.partitions.is_empty() {
                        "-".to_string()
                    } else {
                        m.partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                    };
                    vec![m.id.clone(), partitions, m.label.replace(['\n', '\r'], " ")]
                })
                .collect();
            push_rows(&mut text, &["MEMBER", "PARTITIONS", "LABEL"], &rows);
        }
        let rows: Vec<Vec<String>> = g
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    p.owner.clone().unwrap_or_else(|| "-".into()),
                    p.committed.to_string(),
                    p.end.to_string(),
                    p.lag.to_string(),
                ]
            })
            .collect();
        push_rows(&mut text, &["PARTITION", "OWNER", "COMMITTED", "END", "LAG"], &rows);
    }
    text
}

/// Appends a header and rows, indented two spaces, columns padded to their widest cell
/// (the last column unpadded).
fn push_rows(text: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from(" ");
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            line.push(' ');
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$} "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::group::{MemberInfo, PartitionInfo};

    #[test]
    fn the_table_aligns_its_columns() {
        let info = GroupInfo {
            group: "g".into(),
            topic: "t".into(),
            members: vec![MemberInfo { id: "m-1".into(), label: "pid 1".into(), partitions: vec![0, 1] }],
            partitions: vec![
                PartitionInfo { partition: 0, owner: Some("m-1".into()), committed: 10, end: 12, lag: 2 },
                PartitionInfo { partition: 1, owner: None, committed: 0, end: 1000, lag: 1000 },
            ],
        };
        let text = table(&[info]);
        let want = "\
group g, topic t: 1 member, lag 1002
  MEMBER  PARTITIONS  LABEL
  m-1     0,1         pid 1
  PARTITION  OWNER  COMMITTED  END   LAG
  0          m-1    10         12    2
  1          -      0          1000  1000
";
        assert_eq!(text, want);
    }
}
