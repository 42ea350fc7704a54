//! Keys that survive and time in the log (format version 2): key text and event time through
//! the appender, reader, tailer, topic producer and the CLI; version 1 segments still read;
//! a torn record with extensions cut at recovery; seeking by append time.

mod cli_support;
use cli_support::*;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal::bus::{partition_for_key, Bus};
use shoal::log::format::{self, SegmentHeader};
use shoal::log::{
    key_hash, verify, AppendError, Appender, Durability, IoBackend, LogError, LogOptions, NewRecord, Offset, Reader,
    RecoveryMode, Tailer,
};

fn opts() -> LogOptions {
    LogOptions::default()
        .segment_bytes(64 << 10)
        .max_record_bytes(16 << 10)
        .io_backend(IoBackend::Syscalls)
        .durability(Durability::Never)
}

/// Opens an appender, waiting out a lock held only by a copy of our own descriptor (a child
/// that another test of this binary forks holds copies of every descriptor until it execs).
fn open_log(dir: &Path, opts: LogOptions) -> Result<Appender, LogError> {
    let own = format!("another appender (pid {})", std::process::id());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Appender::open(dir, opts) {
            Err(LogError::Locked { holder, .. }) if holder == own && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// (offset, append time, key, key text, event time, payload) of every record.
type Seen = (u64, u64, u64, Option<Vec<u8>>, Option<u64>, Vec<u8>);

fn read_all(dir: &Path) -> Vec<Seen> {
    let mut reader = Reader::open(dir).expect("reader");
    let mut out = Vec::new();
    while let Some(r) = reader.next().expect("next") {
        out.push((
            r.offset().0,
            r.timestamp_ns(),
            r.key(),
            r.key_bytes().map(<[u8]>::to_vec),
            r.event_time_ns(),
            r.payload().to_vec(),
        ));
    }
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn version_of(path: &Path) -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open(path).expect("open").read_exact_at(&mut b, 8).expect("read version");
    u32::from_le_bytes(b)
}

#[test]
fn key_text_and_event_time_round_trip_through_appender_reader_and_tailer() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path(), opts().segment_bytes(1 << 20).max_record_bytes(128 << 10)).unwrap();
    let long_key = vec![b'k'; format::KEY_BYTES_MAX];
    log.append(b"plain").unwrap();
    log.append_record(&NewRecord::new(b"with key").key(b"alice")).unwrap();
    log.append_record(&NewRecord::new(b"with time").event_time(42)).unwrap();
    log.append_record(&NewRecord::new(b"").key(b"").event_time(u64::MAX)).unwrap();
    log.append_record(&NewRecord::new(b"own hash").key(b"bob").key_hash(7)).unwrap();
    log.append_record(&NewRecord::new(b"longest key").key(&long_key)).unwrap();
    let batch = [NewRecord::new(b"b1").key(b"carol"), NewRecord::new(b"b2"), NewRecord::new(b"b3").event_time(9)];
    assert_eq!(log.append_records(batch).unwrap(), Offset(6)..Offset(9));
    let too_long = vec![b'k'; format::KEY_BYTES_MAX + 1];
    match log.append_record(&NewRecord::new(b"x").key(&too_long)) {
        Err(e @ AppendError::KeyTooLong { len, max }) => {
            assert_eq!((len, max), (format::KEY_BYTES_MAX + 1, format::KEY_BYTES_MAX));
            assert!(e.to_string().contains("use a shorter key"), "{e}");
        }
        other => panic!("a key over the maximum gave {other:?}"),
    }
    // The key text and event time count toward the largest record.
    let payload = vec![0u8; (128 << 10) - 16];
    assert!(log.append(&payload).is_ok());
    // 8 bytes of extension header and 16 of key text: 8 over.
    let over = log.append_record(&NewRecord::new(&payload).key(b"nine bytes"));
    assert!(matches!(over, Err(AppendError::TooLarge { len, max: 131072 }) if len == 131072 + 8), "{over:?}");
    let over = log.append_record(&NewRecord::new(&payload).event_time(1).key(b"k"));
    assert!(matches!(over, Err(AppendError::TooLarge { .. })), "{over:?}");
    // Exactly the largest record: 8 bytes of header and 8 of event time.
    assert!(log.append_record(&NewRecord::new(&payload).event_time(1)).is_ok());
    // The refused records took no offset.
    assert_eq!(log.next_offset(), Offset(11));
    log.close().unwrap();

    type Parts = (u64, Option<Vec<u8>>, Option<u64>, Vec<u8>);
    let want: Vec<Parts> = vec![
        (0, None, None, b"plain".to_vec()),
        (key_hash(b"alice"), Some(b"alice".to_vec()), None, b"with key".to_vec()),
        (0, None, Some(42), b"with time".to_vec()),
        (key_hash(b""), Some(Vec::new()), Some(u64::MAX), Vec::new()),
        (7, Some(b"bob".to_vec()), None, b"own hash".to_vec()),
        (key_hash(&long_key), Some(long_key.clone()), None, b"longest key".to_vec()),
        (key_hash(b"carol"), Some(b"carol".to_vec()), None, b"b1".to_vec()),
        (0, None, None, b"b2".to_vec()),
        (0, None, Some(9), b"b3".to_vec()),
    ];
    let seen = read_all(dir.path());
    let got: Vec<_> = seen[..9].iter().map(|s| (s.2, s.3.clone(), s.4, s.5.clone())).collect();
    assert_eq!(got, want);
    assert!(seen.iter().enumerate().all(|(i, s)| s.0 == i as u64));
    // Payloads stay 8-byte aligned after any extension block.
    let mut reader = Reader::open(dir.path()).unwrap();
    while let Some(r) = reader.next().unwrap() {
        assert_eq!(r.payload().as_ptr() as usize % 8, 0, "offset {}", r.offset());
    }
    // Owned handles keep the key text too.
    let mut reader = Reader::open(dir.path()).unwrap();
    reader.seek(Offset(1)).unwrap();
    let owned = reader.next_ref().unwrap().expect("record 1");
    let next = reader.next_ref().unwrap().expect("record 2");
    drop(reader);
    assert_eq!(
        (owned.key_bytes(), owned.payload(), owned.event_time_ns()),
        (Some(&b"alice"[..]), &b"with key"[..], None)
    );
    assert_eq!((next.key_bytes(), next.payload(), next.event_time_ns()), (None, &b"with time"[..], Some(42)));
    // A tailer hands out the same.
    let mut tailer = Tailer::open(dir.path()).unwrap();
    let r = tailer.next(Some(Duration::from_secs(1))).unwrap().expect("record 0");
    assert_eq!(r.key_bytes(), None);
    let r = tailer.next(Some(Duration::from_secs(1))).unwrap().expect("record 1");
    assert_eq!((r.key_bytes(), r.key()), (Some(&b"alice"[..]), key_hash(b"alice")));
    // verify counts every record as intact.
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.problems.len()), (11, 0), "{:?}", report.problems);
}

#[test]
fn a_topic_producer_routes_key_text_by_its_hash_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create("orders", Some(4)).unwrap();
    let mut producer = topic.producer(opts()).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let mut sent = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let (p, offset) = producer.send_keyed(key.as_bytes(), format!("event {i}").as_bytes()).unwrap();
        // The same partition as the text's hash alone picks.
        assert_eq!(p, partition_for_key(shoal::bus::key_hash(key.as_bytes()), 4), "{key}");
        sent.push((p, offset, key.clone()));
    }
    let (p, offset) = producer.send_record(&NewRecord::new(b"timed").key(b"dave").event_time(5)).unwrap();
    assert_eq!(p, partition_for_key(key_hash(b"dave"), 4));
    let range = producer.send_records_to(3, [NewRecord::new(b"r1").key(b"x"), NewRecord::new(b"r2")]).unwrap();
    let one = producer.send_record_to(2, &NewRecord::new(b"r3").event_time(1)).unwrap();
    assert!(producer.send_record_to(4, &NewRecord::new(b"nowhere")).is_err(), "partition 4 of 4");
    producer.close().unwrap();
    assert!(sent.iter().map(|s| s.0).collect::<std::collections::BTreeSet<_>>().len() > 1, "keys spread");
    let at = |p: u32, offset: Offset| {
        let mut r = Reader::open(topic.partition_dir(p).unwrap()).unwrap();
        r.seek(offset).unwrap();
        let rec = r.next().unwrap().expect("the record");
        (rec.key_bytes().map(<[u8]>::to_vec), rec.event_time_ns(), rec.payload().to_vec())
    };
    for (i, (p, offset, key)) in sent.iter().enumerate() {
        assert_eq!(at(*p, *offset), (Some(key.clone().into_bytes()), None, format!("event {i}").into_bytes()));
    }
    assert_eq!(at(p, offset), (Some(b"dave".to_vec()), Some(5), b"timed".to_vec()));
    assert_eq!(at(3, range.start), (Some(b"x".to_vec()), None, b"r1".to_vec()));
    assert_eq!(at(3, Offset(range.start.0 + 1)), (None, None, b"r2".to_vec()));
    assert_eq!(at(2, one), (None, Some(1), b"r3".to_vec()));
}

/// Rewrites a segment's header as format version 1 wrote it (the same fields, version 1,
/// the checksum over them): the segment's records, written without extensions, are laid
/// out byte for byte as version 1 laid them out.
fn make_version_1(path: &Path) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut header = [0u8; format::SEGMENT_HEADER_USED_BYTES];
    file.read_exact_at(&mut header, 0).unwrap();
    SegmentHeader::decode(&header).expect("a valid header");
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    header[12..16].fill(0);
    let crc = crc32c::crc32c(&header);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&header, 0).unwrap();
}

#[test]
fn a_version_1_segment_is_read_and_the_log_goes_on_in_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path(), opts()).unwrap();
    for i in 0..50u64 {
        log.append_keyed(i, format!("v1 record {i}").as_bytes()).unwrap();
    }
    log.close().unwrap();
    let files = segment_files(dir.path());
    // The prepared next segment, if any, is not in use: only the one with records matters.
    make_version_1(&files[0]);
    assert_eq!(version_of(&files[0]), 1);
    let before = read_all(dir.path());
    assert_eq!(before.len(), 50);
    assert!(before.iter().all(|s| s.3.is_none() && s.4.is_none()));

    // An upgraded appender: it reads the old tail, then appends into a new segment.
    let mut log = open_log(dir.path(), opts()).unwrap();
    assert_eq!(log.next_offset(), Offset(50));
    log.append_record(&NewRecord::new(b"v2 record").key(b"alice").event_time(77)).unwrap();
    log.append(b"v2 plain").unwrap();
    log.close().unwrap();
    let in_use: Vec<PathBuf> = segment_files(dir.path())
        .into_iter()
        .filter(|p| SegmentHeader::decode(&std::fs::read(p).unwrap()).unwrap().base_offset != format::BASE_OFFSET_UNSET)
        .collect();
    assert_eq!(in_use.len(), 2, "{in_use:?}");
    assert_eq!((version_of(&in_use[0]), version_of(&in_use[1])), (1, format::FORMAT_VERSION));
    let after = read_all(dir.path());
    assert_eq!(after[..50], before[..]);
    assert_eq!(
        after[50..].iter().map(|s| (s.0, s.3.clone(), s.4, s.5.clone())).collect::<Vec<_>>(),
        [(50, Some(b"alice".to_vec()), Some(77), b"v2 record".to_vec()), (51, None, None, b"v2 plain".to_vec())]
    );
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.problems.len()), (52, 0), "{:?}", report.problems);
    // Seeking works across the two versions.
    let mut reader = Reader::open(dir.path()).unwrap();
    reader.seek(Offset(49)).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().payload(), b"v1 record 49");
    assert_eq!(
        reader.seek_time(after[50].1).unwrap(),
        Offset(after.iter().position(|s| s.1 >= after[50].1).unwrap() as u64)
    );
}

/// (position, stride) of each record of a segment's bytes, walking the commit words and the
/// extension blocks (the test wrote these files).
fn strides(bytes: &[u8]) -> Vec<(usize, usize)> {
    let header = SegmentHeader::decode(bytes).expect("valid header");
    let mut at = header.data_start();
    let mut out = Vec::new();
    while at + 4 <= bytes.len() {
        let commit = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        if commit == 0 || commit == format::END_OF_SEGMENT {
            break;
        }
        let len = format::commit_payload_len(commit);
        let ext = if commit & format::EXTENDED_BIT != 0 {
            let flags = bytes[at + 32];
            let key_len = u16::from_le_bytes([bytes[at + 34], bytes[at + 35]]) as usize;
            format::EXT_HEADER_BYTES
                + if flags & format::EXT_EVENT_TIME != 0 { 8 } else { 0 }
                + format::align_up(key_len, 8)
        } else {
            0
        };
        let stride = format::record_stride_ext(ext, len);
        out.push((at, stride));
        at += stride;
    }
    out
}

#[test]
fn a_torn_record_with_extensions_is_cut_at_recovery_at_every_byte() {
    let pristine = tempfile::tempdir().unwrap();
    {
        let mut log = open_log(pristine.path(), opts()).unwrap();
        for i in 0..4u64 {
            log.append_record(&NewRecord::new(format!("durable {i}").as_bytes()).key(b"some key").event_time(i))
                .unwrap();
        }
        log.sync().unwrap();
        log.append_record(&NewRecord::new(b"the last payload").key(b"a longer key text").event_time(99)).unwrap();
        // Dropped without a sync: the last record is past the durable watermark.
    }
    let seg = segment_files(pristine.path())[0].clone();
    let bytes = std::fs::read(&seg).unwrap();
    let records = strides(&bytes);
    assert_eq!(records.len(), 5);
    let (position, stride) = records[4];
    let payload_end = stride - (format::align_up(16, 8) - 16);
    let expected: Vec<_> = read_all(pristine.path())[..4].to_vec();
    for cut in 4..payload_end {
        let scratch = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(pristine.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), scratch.path().join(entry.file_name())).unwrap();
            }
        }
        let torn = scratch.path().join(seg.file_name().unwrap());
        let file = std::fs::OpenOptions::new().write(true).open(&torn).unwrap();
        file.write_all_at(&vec![0u8; stride - cut], (position + cut) as u64).unwrap();
        drop(file);
        // A reader never returns the torn record.
        let mut reader = Reader::open(scratch.path()).unwrap();
        let mut n = 0;
        while let Ok(Some(r)) = reader.next() {
            assert!(r.offset().0 < 4, "cut at {cut}: the torn record was returned");
            n += 1;
        }
        assert_eq!(n, 4, "cut at {cut}");
        let mut log = open_log(scratch.path(), opts().recovery_mode(RecoveryMode::TruncateTail))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let cut_at = log.recovery().cut.clone().unwrap_or_else(|| panic!("cut at {cut}: nothing cut"));
        assert_eq!((cut_at.position, cut_at.offset), (position as u64, 4), "cut at {cut}");
        assert_eq!(log.next_offset(), Offset(4));
        log.append_record(&NewRecord::new(b"after").key(b"k")).unwrap();
        log.close().unwrap();
        let seen = read_all(scratch.path());
        assert_eq!(seen[..4], expected[..], "cut at {cut}");
        assert_eq!((seen.len(), seen[4].3.as_deref(), seen[4].5.as_slice()), (5, Some(&b"k"[..]), &b"after"[..]));
    }
}

/// The first offset whose append time is at or after `ns`, by a linear scan; the log's end
/// when none is.
fn first_at_or_after(seen: &[Seen], ns: u64) -> u64 {
    seen.iter().find(|s| s.1 >= ns).map_or(seen.len() as u64, |s| s.0)
}

#[test]
fn seek_time_finds_the_first_record_at_or_after_a_time_over_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Small index intervals and segments: many segments, many index entries each.
    let mut log = open_log(dir.path(), opts().index_interval_bytes(256)).unwrap();
    let payload = [7u8; 200];
    for round in 0..600u64 {
        // Batches share one append time: equal timestamps in runs.
        if round % 3 == 0 {
            let batch: Vec<&[u8]> = (0..5).map(|_| &payload[..]).collect();
            log.append_batch(batch).unwrap();
        } else {
            log.append_record(&NewRecord::new(&payload[..(round as usize % 150)]).key(b"key").event_time(round))
                .unwrap();
        }
        if round % 200 == 199 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    log.close().unwrap();
    let seen = read_all(dir.path());
    assert!(segment_files(dir.path()).len() >= 3, "several segments");
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "append times are non-decreasing");
    assert!(seen.windows(2).any(|w| w[0].1 == w[1].1), "some equal append times");
    let (first, last) = (seen[0].1, seen[seen.len() - 1].1);
    let mut probes = vec![0, first.saturating_sub(1), first, last, last + 1, u64::MAX];
    for s in seen.iter().step_by(7) {
        probes.extend([s.1.saturating_sub(1), s.1, s.1 + 1]);
    }
    let mut reader = Reader::open(dir.path()).unwrap();
    for ns in probes {
        let want = first_at_or_after(&seen, ns);
        assert_eq!(reader.seek_time(ns).unwrap(), Offset(want), "seek_time({ns})");
        match reader.next().unwrap() {
            Some(r) => {
                assert_eq!(r.offset().0, want, "the reader stands at the record found for {ns}");
                assert!(r.timestamp_ns() >= ns);
            }
            None => assert_eq!(want, seen.len() as u64, "nothing at or after {ns}"),
        }
        // offset_for_time answers the same and leaves the reader where it was.
        reader.seek(Offset(3)).unwrap();
        assert_eq!(reader.offset_for_time(ns).unwrap(), Offset(want));
        assert_eq!(reader.next().unwrap().expect("record 3").offset(), Offset(3));
    }
    // The first of a run of equal times.
    let run = seen.windows(2).position(|w| w[0].1 == w[1].1).unwrap();
    let start = seen.iter().position(|s| s.1 == seen[run].1).unwrap();
    assert_eq!(reader.seek_time(seen[run].1).unwrap(), Offset(start as u64));
    // A tailer seeks through its reader and follows on from there.
    let mut tailer = Tailer::open(dir.path()).unwrap();
    let want = first_at_or_after(&seen, seen[100].1);
    assert_eq!(tailer.reader().seek_time(seen[100].1).unwrap(), Offset(want));
    assert_eq!(tailer.next(Some(Duration::from_secs(1))).unwrap().unwrap().offset(), Offset(want));
    // An empty log: offset 0.
    let empty = tempfile::tempdir().unwrap();
    open_log(empty.path(), opts()).unwrap().close().unwrap();
    assert_eq!(Reader::open(empty.path()).unwrap().seek_time(5).unwrap(), Offset(0));
}

#[test]
fn append_times_do_not_go_back_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut log = open_log(dir.path(), opts()).unwrap();
        for i in 0..20 {
            log.append_record(&NewRecord::new(b"x").event_time(1000 - i)).unwrap();
        }
        log.close().unwrap();
        let seen = read_all(dir.path());
        assert_eq!(seen.len(), 20 * (round + 1));
        assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "round {round}");
    }
}

#[test]
fn append_times_go_on_from_the_last_record_even_when_it_is_ahead_of_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path(), opts()).unwrap();
    for i in 0..30u64 {
        log.append_keyed(i, b"record").unwrap();
    }
    log.close().unwrap();
    // The last record's append time an hour ahead (a clock stepped back since), its
    // checksum written again.
    let ahead = shoal::log::now_ns() + 3600 * 1_000_000_000;
    let seg = segment_files(dir.path())[0].clone();
    let bytes = std::fs::read(&seg).unwrap();
    let (position, _) = *strides(&bytes).last().unwrap();
    let mut tail: [u8; 24] = bytes[position + 8..position + 32].try_into().unwrap();
    tail[8..16].copy_from_slice(&ahead.to_le_bytes());
    let crc = format::record_crc(6, &tail, b"record");
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.write_all_at(&crc.to_le_bytes(), (position + 4) as u64).unwrap();
    file.write_all_at(&tail, (position + 8) as u64).unwrap();
    drop(file);
    assert_eq!(read_all(dir.path())[29].1, ahead);
    let mut log = open_log(dir.path(), opts()).unwrap();
    log.append(b"after").unwrap();
    log.append_batch([&b"more"[..], b"again"]).unwrap();
    log.close().unwrap();
    let seen = read_all(dir.path());
    assert!(seen[30..].iter().all(|s| s.1 == ahead), "{:?}", seen[29..].iter().map(|s| s.1).collect::<Vec<_>>());
}

#[test]
fn produce_keyed_keeps_the_text_and_cat_prints_it_with_64_bit_integers_as_strings() {
    let temp = tempfile::tempdir().unwrap();
    let bus = temp.path().join("bus");
    let bus = bus.to_str().unwrap();
    ok(
        &["produce", bus, "--topic", "orders", "--partitions", "3", "--keyed"],
        "alice\tpaid\nbob\tshipped\né\tutf-8 key\n".as_bytes(),
    );
    let json = json_lines(&ok(&["cat", bus, "--topic", "orders", "--format", "json"], b""));
    assert_eq!(json.len(), 3);
    for key in ["alice", "bob", "é"] {
        let r = json.iter().find(|r| r["key"] == key).unwrap_or_else(|| panic!("no record with key {key}: {json:?}"));
        let hash = key_hash(key.as_bytes());
        assert_eq!(r["routing_key"], hash.to_string(), "{r}");
        assert_eq!(r["partition"], u64::from(partition_for_key(hash, 3)), "{r}");
        assert!(r["offset"].is_string() && r["timestamp_ns"].is_string(), "{r}");
        assert!(r.get("event_time_ns").is_none(), "{r}");
    }
    // A key over the format's maximum is refused with the line named; the lines before it
    // are kept.
    let long = format!("ok\tfirst\n{}\tsecond\n", "k".repeat(format::KEY_BYTES_MAX + 1));
    let err = fails(&["produce", bus, "--topic", "orders", "--keyed"], long.as_bytes());
    assert!(err.contains("stdin line 2") && err.contains("longer than the 65535"), "{err}");
    let json = json_lines(&ok(&["cat", bus, "--topic", "orders", "--format", "json"], b""));
    assert!(json.iter().any(|r| r["key"] == "ok" && r["payload"] == "first"));
    // A group member prints the same objects.
    let grouped =
        json_lines(&ok(&["group", bus, "g", "--topic", "orders", "--format", "json", "--exit-when-idle", "200"], b""));
    assert_eq!(grouped.len(), json.len());
    for r in &json {
        assert!(grouped.contains(r), "{r} not printed by group: {grouped:?}");
    }
}

#[test]
fn cat_since_accepts_rfc3339_unix_times_with_units_and_relative_times() {
    let temp = tempfile::tempdir().unwrap();
    let log = temp.path().join("log");
    let log = log.to_str().unwrap();
    ok(&["produce", log], b"old 1\nold 2\n");
    std::thread::sleep(Duration::from_millis(20));
    let mid = shoal::log::now_ns();
    std::thread::sleep(Duration::from_millis(20));
    ok(&["produce", log], b"new 1\nnew 2\n");
    let since = |t: &str| text(&ok(&["cat", log, "--since", t], b""));
    assert_eq!(since(&format!("{mid}ns")), "new 1\nnew 2\n");
    assert_eq!(since(&format!("{}us", mid / 1_000)), "new 1\nnew 2\n");
    assert_eq!(since(&format!("{}ms", mid / 1_000_000)), "new 1\nnew 2\n");
    assert_eq!(since("-1h"), "old 1\nold 2\nnew 1\nnew 2\n");
    assert_eq!(since("0s"), "old 1\nold 2\nnew 1\nnew 2\n");
    assert_eq!(since(&format!("{}s", mid / 1_000_000_000 + 3600)), "");
    // RFC 3339 with a fraction, in UTC and with an offset.
    let (secs, nanos) = (mid / 1_000_000_000, mid % 1_000_000_000);
    let rfc = |secs: u64, zone: &str| {
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"])
            .output()
            .expect("date");
        format!("{}.{nanos:09}{zone}", text(&out.stdout).trim())
    };
    assert_eq!(since(&rfc(secs, "Z")), "new 1\nnew 2\n");
    assert_eq!(since(&rfc(secs + 7200, "+02:00")), "new 1\nnew 2\n");
    assert_eq!(since("2000-01-01T00:00:00Z"), "old 1\nold 2\nnew 1\nnew 2\n");
    // JSON and a topic: per partition.
    let bus = temp.path().join("bus");
    let bus = bus.to_str().unwrap();
    ok(&["produce", bus, "--topic", "t", "--partitions", "2"], b"a\nb\n");
    std::thread::sleep(Duration::from_millis(20));
    let cut = shoal::log::now_ns();
    std::thread::sleep(Duration::from_millis(20));
    ok(&["produce", bus, "--topic", "t"], b"c\nd\n");
    let json = json_lines(&ok(&["cat", bus, "--topic", "t", "--since", &format!("{cut}ns"), "--format", "json"], b""));
    let got: Vec<_> = json.iter().map(|r| (r["partition"].as_u64().unwrap(), r["payload"].as_str().unwrap())).collect();
    assert_eq!(got, [(0, "c"), (1, "d")]);
    // Bad forms say what is accepted; --since and --from exclude each other (usage errors).
    for (args, want) in [
        (&["cat", log, "--since", "1764669600"][..], "`1764669600` is not a time: give an RFC 3339 time"),
        (&["cat", log, "--since", "2026-13-01T00:00:00Z"][..], "is not a time"),
        (&["cat", log, "--since", "-5m", "--from", "3"][..], "cannot be used with"),
    ] {
        let out = run(args, b"");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
