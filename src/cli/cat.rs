//! `shoal cat`: prints records as lines or JSON, optionally following the log.
//!
//! Output goes through one `BufWriter`, flushed whenever the reader has caught up (so a
//! `--follow` shows each record as soon as it lands) and at the end. The [`Reader`] checks
//! every record's CRC before handing it out, so bytes that fail their checksum never reach
//! stdout: `cat` flushes the good records before the damage and stops with the error.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;

use super::{Error, Format};
use crate::log::{Offset, Reader, Record, Tailer};

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

pub(super) fn run(dir: &Path, from: Option<u64>, follow: bool, format: Format) -> Result<ExitCode, Error> {
    let mut reader = Reader::open(dir)?;
    if let Some(from) = from {
        reader.seek(Offset(from))?;
    }
    let mut out = BufWriter::with_capacity(64 << 10, io::stdout().lock());
    let result = if follow {
        follow_log(Tailer::from_reader(reader), &mut out, format)
    } else {
        print_all(&mut reader, &mut out, format)
    };
    // Records printed before an error are good ones: let them out first.
    let flushed = out.flush();
    match result {
        Ok(()) => flushed.map_or_else(super::stdout_failed, |()| Ok(ExitCode::SUCCESS)),
        Err(Stop::Output(e)) => super::stdout_failed(e),
        Err(Stop::Log(e)) => Err(e),
    }
}

fn print_all(reader: &mut Reader, out: &mut impl Write, format: Format) -> Result<(), Stop> {
    loop {
        match reader.next() {
            Ok(Some(record)) => print(out, &record, format)?,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Stop::Log(e.into())),
        }
    }
}

/// Prints records as they come, forever (until stdout closes or the log fails).
fn follow_log(mut tailer: Tailer, out: &mut impl Write, format: Format) -> Result<(), Stop> {
    loop {
        // Drain what is there without waiting, then flush once before sleeping.
        print_all(tailer.reader(), out, format)?;
        out.flush()?;
        match tailer.next(Some(FOLLOW_WAIT)) {
            Ok(Some(record)) => print(out, &record, format)?,
            Ok(None) => {}
            Err(e) => return Err(Stop::Log(e.into())),
        }
    }
}

fn print(out: &mut impl Write, record: &Record<'_>, format: Format) -> io::Result<()> {
    match format {
        Format::Lines => {
            out.write_all(record.payload())?;
            out.write_all(b"\n")
        }
        Format::Json => write_json(out, record),
    }
}

/// `{"offset":..,"timestamp_ns":..,"key":..,"payload":"..."}`, or `"payload_base64"` when
/// the payload is not UTF-8. serde_json does the string escaping.
fn write_json(out: &mut impl Write, record: &Record<'_>) -> io::Result<()> {
    write!(
        out,
        "{{\"offset\":{},\"timestamp_ns\":{},\"key\":{},",
        record.offset(),
        record.timestamp_ns(),
        record.key()
    )?;
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
    use crate::log::{Appender, Durability, LogOptions};

    #[test]
    fn json_escapes_text_and_encodes_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions {
            segment_bytes: 1 << 20,
            max_record_bytes: 512 << 10,
            durability: Durability::Never,
            ..LogOptions::default()
        };
        let mut log = Appender::open(dir.path(), opts).expect("open");
        log.append_keyed(7, "quote \" back\\slash tab\t é".as_bytes()).expect("append");
        log.append(b"\xff\x00bin").expect("append");
        log.close().expect("close");
        let mut reader = Reader::open(dir.path()).expect("reader");
        let mut out = Vec::new();
        print_all(&mut reader, &mut out, Format::Json).map_err(|_| "print").expect("print");
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
