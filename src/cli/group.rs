//! `shoal group` and `shoal groups`: a consumer group member on the command line, and the
//! state of every group.
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

use super::Error;
use shoal::group::{describe, Delivery, GroupError, GroupInfo, GroupOptions, Member};

/// Longest wait of one poll: how soon a member notices SIGTERM or SIGINT.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// Most records a member takes (and prints, then commits) per batch.
const BATCH_RECORDS: usize = 4096;

/// `shoal group <BUS> <GROUP> --topic <T> [--exit-when-idle <ms>]`.
pub(super) fn run(bus: &Path, group: &str, topic: &str, exit_when_idle: Option<Duration>) -> Result<ExitCode, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::new(format!("installing the handler of signal {signal} failed: {e}")))?;
    }
    let bus = super::open_bus(bus)?;
    let opts = GroupOptions::default().label(format!("shoal group, pid {}", std::process::id()));
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
        if let Err(e) = write_batch(&mut out, &batch) {
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

/// Writes `<partition> <offset> <payload>` lines and flushes them.
fn write_batch(out: &mut impl Write, batch: &[Delivery]) -> io::Result<()> {
    for delivery in batch {
        write!(out, "{} {} ", delivery.partition, delivery.record.offset())?;
        out.write_all(delivery.record.payload())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// `shoal groups <BUS>`.
pub(super) fn list(bus: &Path) -> Result<ExitCode, Error> {
    let groups = describe(&super::open_bus(bus)?)?;
    let text = if groups.is_empty() { format!("{}: no consumer groups\n", bus.display()) } else { table(&groups) };
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => super::stdout_failed(e),
    }
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
