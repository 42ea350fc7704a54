//! The options of every command that creates or appends to a log (`produce`, `produce
//! --topic`, `topics create`, `bridge import`, `demo`): the size of segment files and the disk space allocated ahead
//! of the writer, turned into [`LogOptions`].
//!
//! Sizes are bytes, or a number with a binary suffix: `K` (KiB), `M` (MiB), `G` (GiB), also
//! written `KiB`, `MiB`, `GiB`, in either case (`64K` = 65536, `1g` = 1073741824). A size the
//! log refuses is a usage error (exit 2, before anything runs or is created): the log's own
//! message ([`LogOptions::validate`]) plus the flag to change. A segment too small for the
//! default largest record (4 MiB) lowers the largest record to what one segment holds, so
//! `--segment-size 64K` works on its own.

use clap::Args;

use super::Error;
use shoal::log::{LogError, LogOptions};

/// `--segment-size` and `--prealloc`, shared by the commands that write logs (flattened into
/// each).
#[derive(Debug, Clone, Default, Args)]
pub(super) struct LogArgs {
    // Each command replaces this help with `segment_size_help`'s, which says of which logs
    // and the command's default.
    /// Largest size of each segment file: bytes or K, M, G; a multiple of 4K between 64K and 1G.
    #[arg(long, value_name = "SIZE", value_parser = parse_segment_size)]
    segment_size: Option<u64>,
    /// Disk space allocated, and pages faulted in, ahead of the writer in a segment (segment
    /// files are sparse past it): bytes or K, M, G; a multiple of 4K, at least 64K. A log with
    /// few records costs about this much disk.
    #[arg(long, value_name = "SIZE", value_parser = parse_prealloc, help = prealloc_help(), long_help = prealloc_help())]
    prealloc: Option<u64>,
}

/// `--prealloc`'s one-line help, naming the library's default.
fn prealloc_help() -> String {
    format!(
        "Disk space allocated ahead of the writer in each segment (files are sparse past it): bytes or K, M, G; \
         a multiple of 4K, at least 64K. Default {}",
        show_size(LogOptions::default().prealloc_bytes)
    )
}

/// `--segment-size`'s help for a command whose segment files are `files` (`of the log`, `of
/// each partition's log`), by default `default` (`None`: the library's default size).
/// Each command that flattens [`LogArgs`] sets it with `mut_arg("segment_size", ..)`.
pub(super) fn segment_size_help(files: &str, default: Option<&str>) -> String {
    let default = default.map_or_else(|| show_size(LogOptions::default().segment_bytes), str::to_string);
    format!(
        "Largest size of each segment file {files}: bytes, or a number with K, M or G (binary: 64K = 65536); \
         a multiple of 4K between 64K and 1G. Default: {default}. Records no larger than one segment holds"
    )
}

/// A size as `parse_size` reads it back, in the largest unit that divides it (`512K`).
fn show_size(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

impl LogArgs {
    /// Whether any size was given on the command line.
    pub(super) fn any(&self) -> bool {
        self.segment_size.is_some() || self.prealloc.is_some()
    }

    /// `base` with the sizes given on the command line.
    ///
    /// # Errors
    /// A size the log refuses: [`LogOptions::validate`]'s message and the flag that set it.
    pub(super) fn log_options(&self, base: LogOptions) -> Result<LogOptions, Error> {
        let mut opts = base;
        if let Some(bytes) = self.segment_size {
            opts = opts.segment_bytes(bytes);
            // Checked with the smallest largest-record, so that the message is about the segment.
            opts.max_record_bytes(0).validate().map_err(|e| refused(&e, "--segment-size"))?;
        }
        if let Some(bytes) = self.prealloc {
            opts = opts.prealloc_bytes(bytes);
            opts.max_record_bytes(0).validate().map_err(|e| refused(&e, "--prealloc"))?;
        }
        Ok(fit_max_record_bytes(opts))
    }
}

/// The log's refusal of a value, and the flag that gave it.
fn refused(e: &LogError, flag: &str) -> Error {
    Error::new(format!("{e}; choose another {flag}"))
}

/// `opts` with `max_record_bytes` lowered to the largest that [`LogOptions::validate`] takes,
/// when the one asked for does not fit in a segment; unchanged otherwise, and unchanged when
/// even an empty record does not fit (opening the log then reports the problem).
fn fit_max_record_bytes(opts: LogOptions) -> LogOptions {
    if opts.validate().is_ok() || opts.max_record_bytes(0).validate().is_err() {
        return opts;
    }
    // Binary search: validate() takes every size up to a bound and none past it. Bounded by
    // the bits of max_record_bytes (at most 64 rounds).
    let (mut fits, mut too_big) = (0usize, opts.max_record_bytes);
    while too_big - fits > 1 {
        let mid = fits + (too_big - fits) / 2;
        if opts.max_record_bytes(mid).validate().is_ok() {
            fits = mid;
        } else {
            too_big = mid;
        }
    }
    opts.max_record_bytes(fits)
}

/// Parses `--segment-size`: a size ([`parse_size`]) that the log takes as its segment size,
/// so that a refused one is a usage error (exit 2) before anything runs.
///
/// # Errors
/// A malformed size, or [`LogOptions::validate`]'s message and the flag to change.
fn parse_segment_size(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    // The smallest largest-record, so that the message is about the segment.
    LogOptions::default()
        .segment_bytes(bytes)
        .max_record_bytes(0)
        .validate()
        .map_err(|e| refused(&e, "--segment-size").to_string())?;
    Ok(bytes)
}

/// Parses `--prealloc` as [`parse_segment_size`] does `--segment-size`.
///
/// # Errors
/// A malformed size, or [`LogOptions::validate`]'s message and the flag to change.
fn parse_prealloc(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    LogOptions::default()
        .prealloc_bytes(bytes)
        .max_record_bytes(0)
        .validate()
        .map_err(|e| refused(&e, "--prealloc").to_string())?;
    Ok(bytes)
}

/// Parses a size: bytes, or a number with `K`, `M`, `G` (or `KiB`, `MiB`, `GiB`; any case).
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size; write bytes or a number with K, M or G (binary: 64K = 65536)");
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is more bytes than fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2mib"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "K", "64X", "64 K", "-1", "1.5M", "64KB", "0x10", "99999999999999999999"] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        assert!(parse_size("17179869184G").expect_err("overflow").contains("64 bits"));
    }

    #[test]
    fn a_small_segment_lowers_the_largest_record_to_what_it_holds() {
        let args = LogArgs { segment_size: Some(64 << 10), prealloc: None };
        let opts = args.log_options(LogOptions::default()).expect("64K is a segment size");
        assert_eq!(opts.segment_bytes, 64 << 10);
        assert!(opts.validate().is_ok());
        assert!(opts.max_record_bytes > 32 << 10 && opts.max_record_bytes < 64 << 10, "{}", opts.max_record_bytes);
        // One byte more does not fit: the largest that does.
        assert!(opts.max_record_bytes(opts.max_record_bytes + 1).validate().is_err());
        // A largest record that fits is kept.
        let kept = args.log_options(LogOptions::default().max_record_bytes(4096)).expect("fits");
        assert_eq!(kept.max_record_bytes, 4096);
        // No flag: the defaults.
        let none = LogArgs::default().log_options(LogOptions::default()).expect("defaults");
        assert_eq!(
            (none.segment_bytes, none.max_record_bytes),
            (LogOptions::default().segment_bytes, LogOptions::default().max_record_bytes)
        );
    }

    #[test]
    fn a_size_the_log_refuses_names_the_flag() {
        for bytes in [4096, (64 << 10) + 1, 2 << 30] {
            let e = LogArgs { segment_size: Some(bytes), prealloc: None }
                .log_options(LogOptions::default())
                .expect_err("refused");
            let e = e.to_string();
            assert!(e.contains("segment_bytes") && e.contains("choose another --segment-size"), "{bytes}: {e}");
        }
        for bytes in [0, 4096, (64 << 10) + 1] {
            let e = LogArgs { segment_size: None, prealloc: Some(bytes) }
                .log_options(LogOptions::default())
                .expect_err("refused");
            let e = e.to_string();
            assert!(e.contains("prealloc_bytes") && e.contains("choose another --prealloc"), "{bytes}: {e}");
        }
        let opts = LogArgs { segment_size: Some(1 << 20), prealloc: Some(128 << 10) }
            .log_options(LogOptions::default())
            .expect("both taken");
        assert_eq!((opts.segment_bytes, opts.prealloc_bytes), (1 << 20, 128 << 10));
    }

    #[test]
    fn sizes_show_as_they_parse() {
        for bytes in [0, 1, 4096, 65536, 512 << 10, 1 << 20, 3 << 30, (1 << 20) + 1] {
            assert_eq!(parse_size(&show_size(bytes)), Ok(bytes), "{}", show_size(bytes));
        }
        assert_eq!(show_size(512 << 10), "512K");
        assert!(prealloc_help().contains(&show_size(LogOptions::default().prealloc_bytes)));
    }
}
