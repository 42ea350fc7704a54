//! `shoal top <BUS> [--interval <ms>] [--once]`: rates and lag per topic and group, redrawn
//! in place every interval when stdout is a terminal (the screen is cleared with ANSI
//! escapes; no terminal library). Into a pipe or a file it writes plain snapshots one after
//! another, each after a blank line, with no escape bytes. `--once` prints one snapshot with
//! no screen control and exits; rates need two snapshots, so it shows them as `-`.
//!
//! Offsets follow the README's convention: FIRST and LAST name records, DURABLE is the
//! exclusive watermark (every record below it is durable), and a group's COMMITTED and END are
//! next offsets (the next one it reads, the next one appended).
//!
//! ```text
//! shoal top /data/bus   every 1000 ms   (q: Ctrl-C)
//!
//! TOPIC   PARTITION  RECORDS  BYTES   FIRST  LAST  DURABLE  PRODUCERS  APPEND/S
//! orders  0          1200     64 MiB  0      1199  1200     2          310.0
//! orders  1          1180     64 MiB  0      1179  1180     2          305.0
//! orders  *          2380     128 MiB                                   615.0
//!
//! GROUP    TOPIC   MEMBERS  PARTITION  OWNER                             COMMITTED  END   LAG  COMMIT/S
//! billing  orders  2        0          00000001764000000000000001-812-0  1190       1200  10   300.0
//! ```

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::Error;
use shoal::metrics::BusSnapshot;

/// Shortest refresh interval accepted.
pub(super) const INTERVAL_MS_MIN: u64 = 50;

/// Clears the screen and moves the cursor home.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Runs `shoal top`.
pub(super) fn run(bus: &Path, interval: Duration, once: bool) -> Result<ExitCode, Error> {
    let bus_handle = super::open_bus(bus)?;
    let redraw = !once && io::stdout().is_terminal();
    let mut previous: Option<BusSnapshot> = None;
    // Runs until interrupted (SIGINT ends the process) or stdout goes away.
    loop {
        let started = Instant::now();
        let mut snap = BusSnapshot::take(&bus_handle)?;
        if let Some(before) = &previous {
            snap.rates_since(before);
        }
        let mut text = String::new();
        if redraw {
            text.push_str(CLEAR);
        } else if previous.is_some() {
            // Plain snapshots one after another: a blank line between them.
            text.push('\n');
        }
        if !once {
            text.push_str(&format!(
                "shoal top {}   every {} ms   (Ctrl-C quits)\n\n",
                bus.display(),
                interval.as_millis()
            ));
        }
        text.push_str(&render(&snap));
        let mut stdout = io::stdout().lock();
        if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            return super::stdout_failed(e);
        }
        drop(stdout);
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        previous = Some(snap);
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

/// The topics table and the groups table of one snapshot. Rates show as `-` until the
/// snapshot has them.
pub(super) fn render(snap: &BusSnapshot) -> String {
    let rates = snap.rates_over.is_some();
    let rate = |v: f64| if rates { format!("{v:.1}") } else { "-".to_string() };
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut text = String::new();
    if snap.topics.is_empty() {
        text.push_str("no topics\n");
    } else {
        let mut rows = Vec::new();
        for t in &snap.topics {
            for p in &t.partitions {
                rows.push(vec![
                    t.name.clone(),
                    p.partition.to_string(),
                    p.records.to_string(),
                    format_bytes(p.bytes),
                    opt(p.first_offset),
                    opt(p.last_offset),
                    p.durable_offset.to_string(),
                    p.producers.to_string(),
                    rate(p.appended_per_s),
                ]);
            }
            if t.partitions.len() > 1 {
                rows.push(vec![
                    t.name.clone(),
                    "*".into(),
                    t.records().to_string(),
                    format_bytes(t.bytes()),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    rate(t.appended_per_s()),
                ]);
            }
        }
        push_rows(
            &mut text,
            &["TOPIC", "PARTITION", "RECORDS", "BYTES", "FIRST", "LAST", "DURABLE", "PRODUCERS", "APPEND/S"],
            &rows,
        );
    }
    text.push('\n');
    if snap.groups.is_empty() {
        text.push_str("no consumer groups\n");
    } else {
        let mut rows = Vec::new();
        for g in &snap.groups {
            for p in &g.partitions {
                rows.push(vec![
                    g.group.clone(),
                    g.topic.clone(),
                    g.members.len().to_string(),
                    p.partition.to_string(),
                    p.owner.clone().unwrap_or_else(|| "-".into()),
                    p.committed.to_string(),
                    p.end.to_string(),
                    p.lag.to_string(),
                    rate(p.committed_per_s),
                ]);
            }
            if g.partitions.len() > 1 {
                rows.push(vec![
                    g.group.clone(),
                    g.topic.clone(),
                    g.members.len().to_string(),
                    "*".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    g.lag().to_string(),
                    rate(g.committed_per_s()),
                ]);
            }
        }
        push_rows(
            &mut text,
            &["GROUP", "TOPIC", "MEMBERS", "PARTITION", "OWNER", "COMMITTED", "END", "LAG", "COMMIT/S"],
            &rows,
        );
    }
    text
}

/// Appends a header and rows with columns padded to their widest cell (two spaces apart).
fn push_rows(text: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            out.extend(std::iter::repeat_n(' ', w.saturating_sub(cell.chars().count())));
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `512 B`, `4.0 KiB`, `64.0 MiB`, `1.5 GiB`.
fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_well() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(4096), "4.0 KiB");
        assert_eq!(format_bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn columns_line_up() {
        let mut text = String::new();
        push_rows(&mut text, &["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "".into()]]);
        assert_eq!(text, "A     BB\nlong  x\ns\n");
    }
}
