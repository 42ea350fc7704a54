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
//! appended after the start are the only ones a `--follow` prints.

// Option structs are filled field by field: that keeps compiling once they are
// `#[non_exhaustive]`, where a struct literal outside the library does not.

use std::io::{self, BufWriter, Write};
use std::path::Path;
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

pub(super) fn run(dir: &Path, start: Start, follow: bool, format: Format) -> Result<ExitCode, Error> {
    let mut reader = Reader::open(dir)?;
    let from = match start {
        Start::Earliest => None,
        Start::Offset(from) => Some(from),
        Start::Latest => Some(latest(&mut reader)?),
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
        from.push(match start {
            Start::Earliest => None,
            Start::Offset(offset) => Some(offset),
            Start::Latest => match Reader::open(topic.partition_dir(p)?) {
                Ok(mut reader) => Some(latest(&mut reader)?),
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

/// A reader of partition `p` positioned at `from`, or `None` while the partition has no log
/// yet (a topic whose partition was never written).
fn open_partition(topic: &Topic, p: u32, from: Option<u64>) -> Result<Option<Reader>, Stop> {
    let dir = topic.partition_dir(p).map_err(|e| Stop::Log(e.into()))?;
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

/// `{"offset":..,"timestamp_ns":..,"key":..,"payload":"..."}`, or `"payload_base64"` when
/// the payload is not UTF-8; records of a topic start with `"partition":..,`. serde_json
/// does the string escaping.
fn write_json(out: &mut impl Write, record: &Record<'_>, partition: Option<u32>) -> io::Result<()> {
    if let Some(p) = partition {
        write!(out, "{{\"partition\":{p},")?;
    } else {
        out.write_all(b"{")?;
    }
    write!(out, "\"offset\":{},\"timestamp_ns\":{},\"key\":{},", record.offset(), record.timestamp_ns(), record.key())?;
    match std::str::from_utf8(record.payload()) {
        Ok(text) => {
            out.write_all(b"\"payload\":")?;
            serde_json::to_writer(&mut *out, text).map_err(io::Error::from)?;
        }
        Err(_) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(record.payload());
            write!(out, "\"payload_base64\":\"{encoded}\"")?;
        }
    }
    out.write_all(b"}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::log::{Appender, Durability, LogOptions};

    #[test]
    fn json_escapes_text_and_encodes_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts =
            LogOptions::default().segment_bytes(1 << 20).max_record_bytes(512 << 10).durability(Durability::Never);
        let mut log = Appender::open(dir.path(), opts).expect("open");
        log.append_keyed(7, "quote \" back\\slash tab\t é".as_bytes()).expect("append");
        log.append(b"\xff\x00bin").expect("append");
        log.close().expect("close");
        let mut reader = Reader::open(dir.path()).expect("reader");
        let mut out = Vec::new();
        print_all(&mut reader, &mut out, Format::Json, 0).map_err(|_| "print").expect("print");
        let text = String::from_utf8(out).expect("utf-8 output");
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["offset"], 0);
        assert_eq!(lines[0]["key"], 7);
        assert_eq!(lines[0]["payload"], "quote \" back\\slash tab\t é");
        assert!(lines[0]["timestamp_ns"].as_u64().is_some_and(|t| t > 0));
        assert_eq!(lines[1]["offset"], 1);
        assert_eq!(lines[1]["payload_base64"], "/wBiaW4=");
        assert!(lines[1].get("payload").is_none());
    }
}
