//! `shoal cat`: prints records as lines or JSON, optionally following the log.
//!
//! Output goes through one `BufWriter`, flushed whenever the reader has caught up (so a
//! `--follow` shows each record as soon as it lands) and at the end. The [`Reader`] checks
//! every record's CRC before handing it out, so bytes that fail their checksum never reach
//! stdout: `cat` flushes the good records before the damage and stops with the error.
//!
//! `--from` is resolved to an offset once, when `cat` starts: `earliest` is no seek at all
//! (the first record held), `latest` the reader's next offset after a seek past the end
//! (in each partition that has a log then; one created later starts at 0), so records
//! appended after the start are the only ones a `--follow` prints. `--since <TIME>` is
//! resolved the same way, per partition, through [`Reader::seek_time`]: the first record
//! whose append time is at or after TIME ([`parse_since`] reads TIME).
//!
//! The JSON shape (one object per line; integers that can exceed 2^53 are strings, so
//! JavaScript and older jq read them exactly):
//! ```text
//! {"partition":2,                       only with --topic (a number)
//!  "offset":"41",                       decimal string
//!  "timestamp_ns":"1796175567140910967", append time, decimal string
//!  "event_time_ns":"1700000000000000000", only when the record carries one
//!  "key":"alice",                       only when the record carries key text (UTF-8);
//!  "key_base64":"/w==",                 instead of "key" when the text is not UTF-8
//!  "routing_key":"5803779529149266183", the u64 routing key (the hash of the key text;
//!                                       "0" when none), decimal string
//!  "payload":"..."}                     or "payload_base64" when not UTF-8
//! ```

// Option structs are filled field by field: that keeps compiling once they are
// `#[non_exhaustive]`, where a struct literal outside the library does not.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;

use super::{Error, Format, Start};
use shoal::bus::Topic;
use shoal::log::{LogError, Offset, Reader, Record, Tailer};

/// Longest single wait of `--follow` before it looks again (a safety net; the tailer is woken
/// by the appender).
const FOLLOW_WAIT: Duration = Duration::from_secs(1);

/// Why printing stopped.
enum Stop {
    /// The log said no (corruption, a removed offset).
    Log(Error),
    /// Writing to stdout failed.
    Output(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Output(e)
    }
}

pub(super) fn run(
    dir: &Path,
    start: Start,
    since: Option<u64>,
    follow: bool,
    format: Format,
) -> Result<ExitCode, Error> {
    let mut reader = Reader::open(dir)?;
    let from = match (since, start) {
        (Some(ns), _) => Some(reader.seek_time(ns)?.0),
        (None, Start::Earliest) => None,
        (None, Start::Offset(from)) => Some(from),
        (None, Start::Latest) => Some(latest(&mut reader)?),
    };
    if let Some(from) = from {
        reader.seek(Offset(from))?;
    }
    let mut out = BufWriter::with_capacity(64 << 10, io::stdout().lock());
    // `seek` past the end stops at the end; records below `from` that are appended later
    // must still not be printed.
    let from = from.unwrap_or(0);
    let result = if follow {
        follow_log(Tailer::from_reader(reader), &mut out, format, from)
    } else {
        print_all(&mut reader, &mut out, format, from)
    };
    // Records printed before an error are good ones: let them out first.
    let flushed = out.flush();
    match result {
        Ok(()) => flushed.map_or_else(super::stdout_failed, |()| Ok(ExitCode::SUCCESS)),
        Err(Stop::Output(e)) => super::stdout_failed(e),
        Err(Stop::Log(e)) => Err(e),
    }
}

/// The offset after the last record `reader` holds now (it is left there).
fn latest(reader: &mut Reader) -> Result<u64, LogError> {
    reader.seek(Offset(u64::MAX))?;
    Ok(reader.next_offset().0)
}

/// `shoal cat <BUS> --topic <T>`: one partition, or all of them (partition by partition, or
/// round-robin when following).
pub(super) fn run_topic(
    dir: &Path,
    topic: &str,
    partition: Option<u32>,
    start: Start,
    since: Option<u64>,
    follow: bool,
    format: Format,
) -> Result<ExitCode, Error> {
    let topic = super::open_bus(dir)?.topic(topic)?;
    let partitions = match partition {
        Some(p) => {
            // Checks the range.
            topic.partition_dir(p)?;
            vec![p]
        }
        None => (0..topic.partitions()).collect(),
    };
    // Where each partition starts, fixed now (see the module docs).
    let mut from = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        from.push(match (since, start) {
            (None, Start::Earliest) => None,
            (None, Start::Offset(offset)) => Some(offset),
            (since, _) => match Reader::open(partition_dir(&topic, p)?) {
                Ok(mut reader) => Some(match since {
                    Some(ns) => reader.seek_time(ns)?.0,
                    None => latest(&mut reader)?,
                }),
                Err(LogError::NoLog { .. }) => None,
                Err(e) => return Err(e.into()),
            },
        });
    }
    let mut out = BufWriter::with_capacity(64 << 10, io::stdout().lock());
    let result = if follow {
        follow_topic(&topic, &partitions, &from, &mut out, format)
    } else {
        print_topic(&topic, &partitions, &from, &mut out, format)
    };
    let flushed = out.flush();
    match result {
        Ok(()) => flushed.map_or_else(super::stdout_failed, |()| Ok(ExitCode::SUCCESS)),
        Err(Stop::Output(e)) => super::stdout_failed(e),
        Err(Stop::Log(e)) => Err(e),
    }
}

/// The log directory of partition `p` of `topic`, refused when it is a symbolic link: shoal
/// never follows a link inside a bus (`produce` refuses the same link when it opens the
/// partition). The user names the bus directory; what lies below it is the bus's own.
fn partition_dir(topic: &Topic, p: u32) -> Result<PathBuf, Error> {
    let dir = topic.partition_dir(p)?;
    // Anything else (missing, not a directory, unreadable) is for `Reader::open` to report.
    if std::fs::symlink_metadata(&dir).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Err(Error::new(format!(
            "{} is a symbolic link; shoal never follows links inside its directories (remove it)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// A reader of partition `p` positioned at `from`, or `None` while the partition has no log
/// yet (a topic whose partition was never written).
fn open_partition(topic: &Topic, p: u32, from: Option<u64>) -> Result<Option<Reader>, Stop> {
    let dir = partition_dir(topic, p).map_err(Stop::Log)?;
    let mut reader = match Reader::open(&dir) {
        Ok(reader) => reader,
        Err(LogError::NoLog { .. }) => return Ok(None),
        Err(e) => return Err(Stop::Log(e.into())),
    };
    if let Some(from) = from {
        reader.seek(Offset(from)).map_err(|e| Stop::Log(e.into()))?;
    }
    Ok(Some(reader))
}

/// `from[i]`: where `partitions[i]` starts (`None`: at its first record).
fn print_topic(
    topic: &Topic,
    partitions: &[u32],
    from: &[Option<u64>],
    out: &mut impl Write,
    format: Format,
) -> Result<(), Stop> {
    for (&p, &from) in partitions.iter().zip(from) {
        if let Some(mut reader) = open_partition(topic, p, from)? {
            print_records(&mut reader, out, format, Some(p), u64::MAX, from.unwrap_or(0))?;
        }
    }
    Ok(())
}

/// Records one partition may print before the next partition's turn when following.
const FOLLOW_TURN_RECORDS: u64 = 1024;
/// How long `--follow` over several partitions waits on one before looking at all again.
const TOPIC_FOLLOW_WAIT: Duration = Duration::from_millis(10);

/// Follows several partitions round-robin: each turn prints up to [`FOLLOW_TURN_RECORDS`]
/// of one partition. When none has anything, it sleeps on one partition's futex (taking
/// turns) for at most [`TOPIC_FOLLOW_WAIT`], so a record of another partition shows at most
/// that much late, and an idle `cat` wakes 100 times a second.
fn follow_topic(
    topic: &Topic,
    partitions: &[u32],
    from: &[Option<u64>],
    out: &mut impl Write,
    format: Format,
) -> Result<(), Stop> {
    let mut tailers: Vec<Option<Tailer>> = partitions.iter().map(|_| None).collect();
    let mut turn = 0usize;
    loop {
        let mut printed = 0u64;
        for (i, &p) in partitions.iter().enumerate() {
            if tailers[i].is_none() {
                tailers[i] = open_partition(topic, p, from[i])?.map(Tailer::from_reader);
            }
            if let Some(tailer) = &mut tailers[i] {
                printed +=
                    print_records(tailer.reader(), out, format, Some(p), FOLLOW_TURN_RECORDS, from[i].unwrap_or(0))?;
            }
        }
        if printed > 0 {
            out.flush()?;
            continue;
        }
        turn = (turn + 1) % partitions.len().max(1);
        let Some(tailer) = tailers.get_mut(turn).and_then(Option::as_mut) else {
            std::thread::sleep(TOPIC_FOLLOW_WAIT);
            continue;
        };
        let p = partitions[turn];
        match tailer.next(Some(TOPIC_FOLLOW_WAIT)) {
            Ok(Some(record)) if record.offset().0 < from[turn].unwrap_or(0) => {}
            Ok(Some(record)) => {
                print(out, &record, format, Some(p))?;
                // It may be the last record for a while: show it now.
                out.flush()?;
            }
            Ok(None) => {}
            Err(e) => return Err(Stop::Log(e.into())),
        }
    }
}

/// Prints up to `max` records that are there now, skipping those below offset `from`;
/// returns how many it printed.
fn print_records(
    reader: &mut Reader,
    out: &mut impl Write,
    format: Format,
    partition: Option<u32>,
    max: u64,
    from: u64,
) -> Result<u64, Stop> {
    let mut printed = 0;
    while printed < max {
        match reader.next() {
            Ok(Some(record)) if record.offset().0 < from => continue,
            Ok(Some(record)) => print(out, &record, format, partition)?,
            Ok(None) => break,
            Err(e) => return Err(Stop::Log(e.into())),
        }
        printed += 1;
    }
    Ok(printed)
}

fn print_all(reader: &mut Reader, out: &mut impl Write, format: Format, from: u64) -> Result<(), Stop> {
    print_records(reader, out, format, None, u64::MAX, from).map(|_| ())
}

/// Prints records as they come, forever (until stdout closes or the log fails).
fn follow_log(mut tailer: Tailer, out: &mut impl Write, format: Format, from: u64) -> Result<(), Stop> {
    loop {
        // Drain what is there without waiting, then flush once before sleeping.
        print_all(tailer.reader(), out, format, from)?;
        out.flush()?;
        match tailer.next(Some(FOLLOW_WAIT)) {
            Ok(Some(record)) if record.offset().0 < from => {}
            Ok(Some(record)) => print(out, &record, format, None)?,
            Ok(None) => {}
            Err(e) => return Err(Stop::Log(e.into())),
        }
    }
}

fn print(out: &mut impl Write, record: &Record<'_>, format: Format, partition: Option<u32>) -> io::Result<()> {
    match format {
        Format::Lines => {
            out.write_all(record.payload())?;
            out.write_all(b"\n")
        }
        Format::Json => write_json(out, record, partition),
    }
}

/// Writes one record as a JSON object and a newline, in the shape of the module docs
/// (records of a topic start with `"partition":..,`). serde_json does the string escaping.
/// Shared by every command that prints records as JSON.
pub(super) fn write_json(out: &mut impl Write, record: &Record<'_>, partition: Option<u32>) -> io::Result<()> {
    if let Some(p) = partition {
        write!(out, "{{\"partition\":{p},")?;
    } else {
        out.write_all(b"{")?;
    }
    write!(out, "\"offset\":\"{}\",\"timestamp_ns\":\"{}\",", record.offset(), record.timestamp_ns())?;
    if let Some(t) = record.event_time_ns() {
        write!(out, "\"event_time_ns\":\"{t}\",")?;
    }
    if let Some(key) = record.key_bytes() {
        write_text(out, "key", key)?;
        out.write_all(b",")?;
    }
    write!(out, "\"routing_key\":\"{}\",", record.key())?;
    write_text(out, "payload", record.payload())?;
    out.write_all(b"}\n")
}

/// `"name":"<text>"` when `bytes` are UTF-8, else `"name_base64":"<base64>"`.
fn write_text(out: &mut impl Write, name: &str, bytes: &[u8]) -> io::Result<()> {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            write!(out, "\"{name}\":")?;
            serde_json::to_writer(&mut *out, text).map_err(io::Error::from)
        }
        Err(_) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            write!(out, "\"{name}_base64\":\"{encoded}\"")
        }
    }
}

/// Parses `--since`: an RFC 3339 time (`2026-12-02T10:00:00Z`, `2026-12-02T10:00:00.5+01:00`),
/// a Unix time with its unit (`1764669600s`, `1764669600000ms`, `..us`, `..ns`), or a time
/// relative to now (`-5m`, `-90s`, `-1h`, `-2d`, `-500ms`). Returns ns since the Unix epoch.
///
/// # Errors
/// A message naming the text and the forms accepted.
pub(super) fn parse_since(s: &str) -> Result<u64, String> {
    parse_time(s, shoal::log::now_ns()).ok_or_else(|| {
        format!(
            "`{s}` is not a time: give an RFC 3339 time (2026-12-02T10:00:00Z), a Unix time with its unit \
             (1764669600s, 1764669600000ms, ..us, ..ns) or a time before now (-5m, -1h, -30s, -2d)"
        )
    })
}

/// [`parse_since`] with `now_ns` as now; `None` when `s` is none of the forms.
fn parse_time(s: &str, now_ns: u64) -> Option<u64> {
    if let Some(ago) = s.strip_prefix('-') {
        return now_ns.checked_sub(duration_ns(
            ago,
            &[("ms", 1_000_000), ("s", SEC), ("m", 60 * SEC), ("h", 3600 * SEC), ("d", 86_400 * SEC)],
        )?);
    }
    if s.contains('T') || s.contains('t') {
        return rfc3339_ns(s);
    }
    duration_ns(s, &[("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", SEC)])
}

const SEC: u64 = 1_000_000_000;

/// `<digits><unit>` in ns, for the first unit of `units` that `s` ends with (longest
/// first where one ends another: `ms` before `s`).
fn duration_ns(s: &str, units: &[(&str, u64)]) -> Option<u64> {
    let mut sorted: Vec<&(&str, u64)> = units.iter().collect();
    sorted.sort_by_key(|(u, _)| std::cmp::Reverse(u.len()));
    let (number, scale) = sorted.iter().find_map(|(unit, scale)| Some((s.strip_suffix(unit)?, *scale)))?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse::<u64>().ok()?.checked_mul(scale)
}

/// An RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`) in ns since the
/// Unix epoch; `None` when malformed or before the epoch.
fn rfc3339_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<i64> {
        let part = b.get(from..from + n)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |v, d| v * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut fraction_ns = 0i64;
    if sep(at, b".") {
        let start = at + 1;
        let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if end == start {
            return None;
        }
        for (i, d) in b[start..end].iter().enumerate().take(9) {
            fraction_ns += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
        }
        at = end;
    }
    let offset_s = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            (h * 3600 + m * 60) * if *sign == b'+' { 1 } else { -1 }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let ns = i128::from(seconds) * 1_000_000_000 + i128::from(fraction_ns);
    u64::try_from(ns).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::log::{Appender, Durability, LogOptions, NewRecord};

    #[test]
    fn json_escapes_text_and_encodes_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts =
            LogOptions::default().segment_bytes(1 << 20).max_record_bytes(512 << 10).durability(Durability::Never);
        let mut log = Appender::open(dir.path(), opts).expect("open");
        log.append_keyed(7, "quote \" back\\slash tab\t é".as_bytes()).expect("append");
        log.append(b"\xff\x00bin").expect("append");
        log.append_record(&NewRecord::new(b"text").key(b"al\"ice").event_time(u64::MAX)).expect("append");
        log.append_record(&NewRecord::new(b"text").key(b"\xff")).expect("append");
        log.close().expect("close");
        let mut reader = Reader::open(dir.path()).expect("reader");
        let mut out = Vec::new();
        print_all(&mut reader, &mut out, Format::Json, 0).map_err(|_| "print").expect("print");
        let text = String::from_utf8(out).expect("utf-8 output");
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["offset"], "0");
        assert_eq!(lines[0]["routing_key"], "7");
        assert!(lines[0].get("key").is_none(), "no key text: {}", lines[0]);
        assert_eq!(lines[0]["payload"], "quote \" back\\slash tab\t é");
        let ts = lines[0]["timestamp_ns"].as_str().expect("a string");
        assert!(ts.parse::<u64>().is_ok_and(|t| t > 1 << 53), "{ts}");
        assert_eq!(lines[1]["offset"], "1");
        assert_eq!(lines[1]["payload_base64"], "/wBiaW4=");
        assert!(lines[1].get("payload").is_none());
        assert!(lines[1].get("event_time_ns").is_none());
        assert_eq!(lines[2]["key"], "al\"ice");
        assert_eq!(lines[2]["routing_key"], shoal::log::key_hash(b"al\"ice").to_string());
        assert_eq!(lines[2]["event_time_ns"], u64::MAX.to_string());
        assert_eq!(lines[3]["key_base64"], "/w==");
        assert!(lines[3].get("key").is_none());
    }

    #[test]
    fn since_reads_rfc3339_unix_times_with_units_and_relative_times() {
        let now = 1_764_669_600 * SEC;
        let cases: [(&str, Option<u64>); 20] = [
            ("2025-12-02T10:00:00Z", Some(1_764_669_600 * SEC)),
            ("2025-12-02t10:00:00z", Some(1_764_669_600 * SEC)),
            ("2025-12-02T11:00:00+01:00", Some(1_764_669_600 * SEC)),
            ("2025-12-02T09:30:00-00:30", Some(1_764_669_600 * SEC)),
            ("2025-12-02T10:00:00.5Z", Some(1_764_669_600 * SEC + 500_000_000)),
            ("2025-12-02T10:00:00.123456789123Z", Some(1_764_669_600 * SEC + 123_456_789)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800 * SEC)),
            ("1764669600s", Some(1_764_669_600 * SEC)),
            ("1764669600000ms", Some(1_764_669_600 * SEC)),
            ("1764669600000000us", Some(1_764_669_600 * SEC)),
            ("1764669600000000000ns", Some(1_764_669_600 * SEC)),
            ("-5m", Some(now - 300 * SEC)),
            ("-1h", Some(now - 3600 * SEC)),
            ("-250ms", Some(now - 250_000_000)),
            ("1764669600", None),
            ("2025-02-29T00:00:00Z", None),
            ("2025-12-02T10:00:00", None),
            ("1969-12-31T23:59:59Z", None),
            ("-5x", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text, now), want, "{text}");
        }
        assert!(parse_since("yesterday").unwrap_err().contains("`yesterday` is not a time"));
    }
}
