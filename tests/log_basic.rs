use shoal::log::{Appender, Durability, IoBackend, LogOptions, Offset, Reader, Tailer};
use std::time::Duration;

fn opts(backend: IoBackend) -> LogOptions {
    LogOptions::default().segment_bytes(256 << 10).max_record_bytes(64 << 10).io_backend(backend)
}

#[test]
fn append_read_reopen_both_backends() {
    for backend in [IoBackend::Uring, IoBackend::Syscalls] {
        let dir = tempfile::tempdir().unwrap();
        let n = 20_000u64;
        {
            let mut log = Appender::open(dir.path(), opts(backend)).unwrap();
            for i in 0..n {
                let payload = format!("record-{i}-{}", "x".repeat((i % 97) as usize));
                assert_eq!(log.append_keyed(i, payload.as_bytes()).unwrap(), Offset(i));
            }
            log.sync().unwrap();
            assert_eq!(log.durable_offset(), Offset(n));
        }
        let mut r = Reader::open(dir.path()).unwrap();
        let mut i = 0;
        while let Some(rec) = r.next().unwrap() {
            assert_eq!(rec.offset(), Offset(i));
            assert_eq!(rec.key(), i);
            assert_eq!(rec.payload(), format!("record-{i}-{}", "x".repeat((i % 97) as usize)).as_bytes());
            i += 1;
        }
        assert_eq!(i, n);
        for target in [0, 1, 777, 5000, n - 1] {
            r.seek(Offset(target)).unwrap();
            assert_eq!(r.next().unwrap().unwrap().offset(), Offset(target));
        }
        let mut log = Appender::open(dir.path(), opts(backend)).unwrap();
        assert_eq!(log.next_offset(), Offset(n));
        log.append(b"after reopen").unwrap();
        drop(log);
        r.seek(Offset(n)).unwrap();
        assert_eq!(r.next().unwrap().unwrap().payload(), b"after reopen");
    }
}

#[test]
fn tailer_follows_and_batch_durability_advances() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Appender::open(dir.path(), opts(IoBackend::Auto).durability(Durability::Batch)).unwrap();
    let path = dir.path().to_path_buf();
    let t = std::thread::spawn(move || {
        let mut tailer = Tailer::open(&path).unwrap();
        let mut got = 0u64;
        while got < 5000 {
            let rec = tailer.next(Some(Duration::from_secs(10))).unwrap().expect("record in time");
            assert_eq!(rec.offset(), Offset(got));
            got += 1;
        }
        got
    });
    for i in 0..5000u64 {
        log.append_pod(i, &i).unwrap();
        if i % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(log.wait_durable(Offset(4999), Some(Duration::from_secs(10))).unwrap());
    assert_eq!(t.join().unwrap(), 5000);
}

#[test]
fn zero_copy_writers_and_typed_reads() {
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    struct Order {
        id: u64,
        price: f64,
        qty: u32,
        side: u32,
    }
    let dir = tempfile::tempdir().unwrap();
    let mut log = Appender::open(dir.path(), opts(IoBackend::Auto)).unwrap();
    let order = Order { id: 7, price: 101.5, qty: 3, side: 1 };
    log.append_pod(7, &order).unwrap();
    log.append_with(5, |buf| {
        assert_eq!(buf, &[0u8; 5], "append_with hands out a zeroed buffer");
        buf.copy_from_slice(b"fill!");
    })
    .unwrap();
    let range = log.append_batch([&b"a"[..], b"bb", b"ccc"]).unwrap();
    assert_eq!(range, Offset(2)..Offset(5));
    let err = log.append(&vec![0u8; (64 << 10) + 1]).unwrap_err();
    assert!(err.to_string().contains("exceeds the log's maximum"), "{err}");
    assert_eq!(log.next_offset(), Offset(5), "a refused record takes no offset");
    drop(log);

    let mut r = Reader::open(dir.path()).unwrap();
    let rec = r.next().unwrap().unwrap();
    assert_eq!(rec.key(), 7);
    assert_eq!(*rec.payload_as::<Order>().unwrap(), order);
    assert!(rec.payload_as::<u64>().is_err(), "size mismatch is an error");
    let rec = r.next().unwrap().unwrap();
    assert_eq!(rec.payload(), b"fill!");
    let batch: Vec<Vec<u8>> = (0..3).map(|_| r.next().unwrap().unwrap().payload().to_vec()).collect();
    assert_eq!(batch, vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]);
    assert!(r.next().unwrap().is_none());
}

#[test]
fn durability_levels_move_the_watermark() {
    for durability in [Durability::Never, Durability::Interval(Duration::from_millis(5)), Durability::Batch] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Appender::open(dir.path(), opts(IoBackend::Auto).durability(durability)).unwrap();
        for i in 0..1000u64 {
            log.append_pod(0, &i).unwrap();
        }
        match durability {
            Durability::Never => {
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(log.durable_offset(), Offset(0), "Never syncs only when asked");
                assert!(log.wait_durable(Offset(999), Some(Duration::from_secs(10))).unwrap());
            }
            _ => assert!(log.wait_durable(Offset(999), Some(Duration::from_secs(10))).unwrap()),
        }
        assert_eq!(log.durable_offset(), Offset(1000));
        let (syncs, hist) = log.sync_stats();
        assert!(syncs >= 1 && hist.count() == syncs);
        let watch = log.durable_watch();
        log.append(b"one more").unwrap();
        log.sync().unwrap();
        assert_eq!(watch.durable_offset(), Offset(1001));
        assert_eq!(shoal::log::stats(dir.path()).unwrap().durable_offset, 1001);
    }
}

#[test]
fn retention_deletes_old_segments_and_readers_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let retention = shoal::log::Retention::default().max_bytes(4 * (256 << 10));
    let mut log =
        Appender::open(dir.path(), opts(IoBackend::Auto).retention(retention).durability(Durability::Never)).unwrap();
    log.append(b"first").unwrap();
    // A reader holding the first segment keeps reading it after retention removes it.
    let mut early = Reader::open(dir.path()).unwrap();
    let payload = vec![7u8; 1000];
    for _ in 0..5000 {
        log.append(&payload).unwrap();
    }
    let segs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert!(segs <= 4, "retention kept {segs} segments");
    assert_eq!(early.next().unwrap().unwrap().payload(), b"first");
    // Reading on past the end of its segment, it finds the segments after it removed too:
    // `OffsetGone` naming the first offset still held (it used to be called corruption, with
    // advice to truncate the log), and a seek there goes on.
    let gone = loop {
        match early.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the early reader reached the end without meeting the removed records"),
            Err(e) => break e,
        }
    };
    let shoal::log::LogError::OffsetGone { offset, first: held, .. } = gone else { panic!("{gone}") };
    assert!(offset < held, "{offset} {held}");
    early.seek(Offset(held)).unwrap();
    assert_eq!(early.next().unwrap().unwrap().offset(), Offset(held));
    let mut fresh = Reader::open(dir.path()).unwrap();
    let first = fresh.first_offset().unwrap();
    assert!(first.0 > 1000, "old offsets were removed (first is {first})");
    let err = fresh.seek(Offset(0)).unwrap_err();
    assert!(matches!(err, shoal::log::LogError::OffsetGone { .. }), "{err}");
    fresh.seek(first).unwrap();
    assert_eq!(fresh.next().unwrap().unwrap().offset(), first);

    // By age: everything sealed is older than zero seconds after a rollover.
    drop(log);
    let retention = shoal::log::Retention::default().max_age(Duration::from_millis(1));
    let mut log =
        Appender::open(dir.path(), opts(IoBackend::Auto).retention(retention).durability(Durability::Never)).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    for _ in 0..1000 {
        log.append(&payload).unwrap();
    }
    // Rollovers apply retention too, but one may come within the age of the last: apply it
    // once more when every sealed segment is surely older.
    std::thread::sleep(Duration::from_millis(5));
    log.apply_retention().unwrap();
    let segs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert!(segs <= 3, "age retention kept {segs} segments");
}

#[test]
fn seek_everywhere_matches_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut log =
        Appender::open(dir.path(), opts(IoBackend::Auto).index_interval_bytes(512).durability(Durability::Never))
            .unwrap();
    let n = 30_000u64;
    for i in 0..n {
        log.append_pod(i, &[i; 3]).unwrap();
    }
    let mut r = Reader::open(dir.path()).unwrap();
    for target in (0..n).step_by(997).chain([n - 1]) {
        r.seek(Offset(target)).unwrap();
        let rec = r.next().unwrap().unwrap();
        assert_eq!(rec.offset(), Offset(target));
        assert_eq!(rec.payload_as::<[u64; 3]>().unwrap()[0], target);
    }
    r.seek(Offset(n + 10)).unwrap();
    assert!(r.next().unwrap().is_none(), "seeking past the tail waits at the tail");
    log.append(b"tail").unwrap();
    assert_eq!(r.next().unwrap().unwrap().offset(), Offset(n));
}

#[test]
fn record_refs_outlive_the_reader_and_cross_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Appender::open(dir.path(), opts(IoBackend::Auto)).unwrap();
    for i in 0..3000u64 {
        log.append_keyed(i, &[(i % 251) as u8; 200]).unwrap();
    }
    let mut reader = Reader::open(dir.path()).unwrap();
    let mut refs = Vec::new();
    while let Some(r) = reader.next_ref().unwrap() {
        refs.push(r);
    }
    drop(reader);
    assert_eq!(refs.len(), 3000);
    let checked = std::thread::spawn(move || {
        for (i, r) in refs.iter().enumerate() {
            assert_eq!(r.offset(), Offset(i as u64));
            assert_eq!(r.key(), i as u64);
            assert_eq!(r.payload(), &[(i % 251) as u8; 200][..]);
        }
        refs.len()
    });
    assert_eq!(checked.join().unwrap(), 3000);
}

/// Disk space (allocated blocks) of every file in `dir` and its subdirectories.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { disk_bytes(&entry.path()) } else { meta.blocks() * 512 };
    }
    total
}

/// Segments are sparse, with space allocated ahead of the appender: a log with a record (and
/// an 8-partition topic with a record in each partition) costs at most about
/// `prealloc_bytes` per partition, not two whole 64 MiB segments.
#[test]
fn a_quiet_log_or_topic_costs_at_most_a_mebibyte_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = LogOptions::default();
    assert_eq!(defaults.segment_bytes, 64 << 20);
    let mut log = Appender::open(dir.path().join("log"), defaults).unwrap();
    log.append(b"one record").unwrap();
    log.close().unwrap();
    let used = disk_bytes(&dir.path().join("log"));
    assert!(used <= 1 << 20, "a log with one record takes {used} bytes of disk");
    // `stats` reports that disk space, not the segment files' (sparse) lengths.
    let reported = shoal::log::stats(&dir.path().join("log")).unwrap().bytes;
    assert!(reported > 0 && reported <= used, "stats says {reported} bytes; the files take {used}");

    let bus = shoal::bus::Bus::open(dir.path().join("bus")).unwrap();
    let topic = bus.topic_or_create("quiet", Some(8)).unwrap();
    let mut producer = topic.producer(defaults).unwrap();
    for key in 0..64u64 {
        producer.send(key, b"hello").unwrap();
    }
    drop(producer);
    let used = disk_bytes(&dir.path().join("bus"));
    assert!(used <= 8 << 20, "an 8-partition topic with a few records takes {used} bytes of disk");

    // Writing on grows the file only as far as it is written, plus the space ahead.
    let mut log = Appender::open(dir.path().join("log"), defaults).unwrap();
    let payload = vec![7u8; 1000];
    for _ in 0..10_000 {
        log.append(&payload).unwrap();
    }
    log.close().unwrap();
    let used = disk_bytes(&dir.path().join("log"));
    assert!(used <= (10 << 20) + (9 << 20), "10 MB of records take {used} bytes of disk");
}

/// Open files of this process whose path lies under `dir`.
fn open_files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Closing hands the unmapping of written segments to a background thread: every segment
/// file is still let go of soon after, however many appenders opened and closed (a reaper
/// that waited on each in turn, or held one twice, leaked descriptors until the process ran
/// out of them).
#[test]
fn closed_appenders_leave_no_open_segment_behind() {
    let root = tempfile::tempdir().unwrap();
    let opts = opts(IoBackend::Syscalls).segment_bytes(64 << 10).max_record_bytes(1024);
    for i in 0..100 {
        let dir = root.path().join(format!("log{i}"));
        let mut log = Appender::open(&dir, opts).unwrap();
        for _ in 0..200 {
            log.append(b"a record that fills a few segments").unwrap();
        }
        log.sync().unwrap();
        drop(log);
    }
    // Generous: the reaper looks again within 100 ms of its last look.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open_files_under(root.path()) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open_files_under(root.path()), 0, "segment files still open after every appender closed");
}

#[test]
fn records_appended_with_a_given_timestamp_keep_it_as_their_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Appender::open(dir.path(), opts(IoBackend::Syscalls)).unwrap();
    let before = shoal::log::now_ns();
    assert_eq!(log.append_keyed_at(5, 1_000, b"first").unwrap(), Offset(0));
    let batch = [(6, 3_000, &b"second"[..]), (7, 2_000, b"third")];
    assert_eq!(log.append_batch_at(batch).unwrap(), Offset(1)..Offset(3));
    log.append_keyed(8, b"now").unwrap();
    log.close().unwrap();
    let mut r = Reader::open(dir.path()).unwrap();
    let mut seen = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        seen.push((rec.key(), rec.event_time_ns(), rec.payload().to_vec(), rec.timestamp_ns()));
    }
    let given: Vec<_> = seen.iter().map(|s| (s.0, s.1, s.2.clone())).collect();
    assert_eq!(
        given,
        [
            (5, Some(1_000), b"first".to_vec()),
            (6, Some(3_000), b"second".to_vec()),
            (7, Some(2_000), b"third".to_vec()),
            (8, None, b"now".to_vec())
        ]
    );
    // The append time is the log's clock, non-decreasing, whatever the event times.
    for pair in seen.windows(2) {
        assert!(pair[0].3 <= pair[1].3, "{seen:?}");
    }
    assert!(seen[0].3 >= before.saturating_sub(1_000_000_000), "{seen:?}");
}

/// Every entry below `dir`, as relative paths, sorted.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_bus_or_topic_directory_is_not_a_log_and_nothing_is_created_there() {
    let dir = tempfile::tempdir().unwrap();
    let bus = shoal::bus::Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create("orders", Some(2)).unwrap();
    topic.producer(opts(IoBackend::Syscalls)).unwrap().close().unwrap();
    let before = tree(dir.path());
    let topic_dir = dir.path().join("topics/orders");
    for (path, what) in [(dir.path().to_path_buf(), "a bus directory"), (topic_dir.clone(), "a topic directory")] {
        let errors = [
            Appender::open(&path, opts(IoBackend::Syscalls)).err().map(|e| e.to_string()),
            Reader::open(&path).err().map(|e| e.to_string()),
            Tailer::open(&path).err().map(|e| e.to_string()),
            shoal::log::verify(&path).err().map(|e| e.to_string()),
            shoal::log::stats(&path).err().map(|e| e.to_string()),
            shoal::log::repair(&path).err().map(|e| e.to_string()),
        ];
        for (i, e) in errors.into_iter().enumerate() {
            let e = e.unwrap_or_else(|| panic!("call {i} on {} succeeded", path.display()));
            assert!(e.contains(what) && e.contains("--topic") && e.contains(&path.display().to_string()), "{e}");
        }
    }
    assert_eq!(tree(dir.path()), before, "a refused open created or removed something");
    // A partition's directory is a log.
    assert!(Reader::open(topic_dir.join("0")).is_ok());
}

#[test]
fn stats_of_a_directory_without_a_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = shoal::log::stats(dir.path()).unwrap_err().to_string();
    assert!(e.contains("no shoal log here"), "{e}");
    let e = shoal::log::stats(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(e.contains("no shoal log here"), "{e}");
}

#[test]
fn a_small_segment_shrinks_the_default_record_limit_and_refuses_an_explicit_one() {
    let dir = tempfile::tempdir().unwrap();
    // Only the segment size set: the default 4 MiB limit shrinks to what a segment holds.
    let small = LogOptions::default().segment_bytes(1 << 20);
    let mut log = Appender::open(dir.path(), small).unwrap();
    let limit = log.options().max_record_bytes;
    assert!(limit < 1 << 20 && limit > 1 << 19, "{limit}");
    log.append(&vec![7u8; limit]).unwrap();
    assert!(log.append(&vec![7u8; limit + 1]).is_err());
    log.close().unwrap();
    // An explicit limit that does not fit names both options, the command-line flag and the path.
    let other = tempfile::tempdir().unwrap();
    let e = Appender::open(other.path(), small.max_record_bytes(2 << 20)).unwrap_err().to_string();
    for needle in ["LogOptions::max_record_bytes", "LogOptions::segment_bytes", "--segment-size"] {
        assert!(e.contains(needle), "{needle} missing from: {e}");
    }
    assert!(e.contains(&other.path().display().to_string()), "{e}");
}

/// Reads every record of the log in `dir` as `(offset, payload)`, failing on any error.
fn read_all(dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    let mut reader = Reader::open(dir).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = reader.next().unwrap() {
        out.push((rec.offset().0, rec.payload().to_vec()));
    }
    out
}

/// A `fill` closure that panics appends nothing and leaves nothing behind: the next
/// `append_with` gets a zeroed buffer (its bytes used to be the panicking closure's), a
/// live reader and tailer read every record (they used to stop with a false `Corruption` at
/// the leftover bytes), and the closed log is sound. With a shared log, another appender
/// is not left waiting for the writer role the panicking call held.
#[test]
fn a_panicking_fill_appends_nothing_and_leaves_the_log_usable() {
    use shoal::log::{TailWait, Writers};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    for writers in [Writers::Exclusive, Writers::Shared] {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions::default().writers(writers);
        let mut log = Appender::open(dir.path(), opts).unwrap();
        let mut tailer = Tailer::open_with(dir.path(), TailWait::Park).unwrap();
        log.append(b"first").unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            log.append_with(200, |buf| {
                buf.fill(0xAB);
                panic!("fill panics");
            })
        }));
        assert!(panicked.is_err());
        let mut nonzero = usize::MAX;
        let second = log
            .append_with(16, |buf| {
                nonzero = buf.iter().filter(|b| **b != 0).count();
                buf.copy_from_slice(b"sixteen bytes!!!");
            })
            .unwrap();
        assert_eq!((second, nonzero), (Offset(1), 0), "{writers:?}: the buffer after a panic is zeroed");
        log.append(b"third").unwrap();
        if writers == Writers::Shared {
            let other_dir = dir.path().to_path_buf();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut other = Appender::open(&other_dir, LogOptions::default()).unwrap();
                tx.send(other.append(b"other").unwrap()).unwrap();
            });
            let got = rx.recv_timeout(Duration::from_secs(60));
            assert_eq!(got, Ok(Offset(3)), "another appender waited on the role the panicking call held");
        }
        log.sync().unwrap();
        let mut expected: Vec<&[u8]> = vec![b"first", b"sixteen bytes!!!", b"third"];
        if writers == Writers::Shared {
            expected.push(b"other");
        }
        for (i, payload) in expected.iter().enumerate() {
            let rec = tailer.next(Some(Duration::from_secs(10))).unwrap().expect("a record");
            assert_eq!((rec.offset(), rec.payload()), (Offset(i as u64), *payload), "{writers:?}");
        }
        let records = read_all(dir.path());
        let payloads: Vec<&[u8]> = records.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, expected, "{writers:?}");
        log.close().unwrap();
        let report = shoal::log::verify(dir.path()).unwrap();
        assert!(report.is_sound(), "{writers:?}: {report:?}");
    }
}

/// A record iterator that panics part way through `append_batch`: the records before the
/// panic are published (a shared log's next appender continues after them instead of
/// writing over them), and the call ends.
#[test]
fn a_panicking_batch_iterator_publishes_what_it_wrote() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let dir = tempfile::tempdir().unwrap();
    let mut log = Appender::open(dir.path(), LogOptions::default()).unwrap();
    log.append(b"zero").unwrap();
    let payloads: [&[u8]; 3] = [b"one", b"two", b"three"];
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        log.append_batch(payloads.iter().enumerate().map(|(i, p)| {
            assert!(i < 2, "the iterator panics at its third item");
            *p
        }))
    }));
    assert!(panicked.is_err());
    let other_dir = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut other = Appender::open(&other_dir, LogOptions::default()).unwrap();
        tx.send(other.append(b"other").unwrap()).unwrap();
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(Offset(3)));
    log.append(b"after").unwrap();
    log.close().unwrap();
    let records = read_all(dir.path());
    let payloads: Vec<&[u8]> = records.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(payloads, [&b"zero"[..], b"one", b"two", b"other", b"after"]);
}

/// Options are an appender's, not the log's: a log written with large segments and records
/// opens with smaller `segment_bytes` (and `max_record_bytes`), after a clean close or a
/// kill, synced or not, and keeps every record. Recovery used to bound records by the
/// opener's options: it refused the healthy log as corrupt, or, for records not yet synced,
/// cut all of them as a torn tail and reused their offsets.
#[test]
fn a_log_reopens_with_smaller_segments_and_keeps_its_records() {
    for (durability, clean) in [(Durability::Batch, true), (Durability::Batch, false), (Durability::Never, false)] {
        let dir = tempfile::tempdir().unwrap();
        let context = format!("{durability:?}, clean close {clean}");
        let mut log = Appender::open(dir.path(), LogOptions::default().durability(durability)).unwrap();
        for i in 0..5u8 {
            log.append(&vec![i; 1 << 20]).unwrap();
        }
        if durability != Durability::Never {
            log.sync().unwrap();
        }
        if clean {
            log.close().unwrap();
        } else {
            log.abandon();
        }
        let small = LogOptions::default().segment_bytes(64 << 10).prealloc_bytes(64 << 10).max_record_bytes(1024);
        let mut log = Appender::open(dir.path(), small).unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!(log.next_offset(), Offset(5), "{context}");
        assert_eq!(log.recovery().cut, None, "{context}");
        assert_eq!(log.append(b"small").unwrap(), Offset(5), "{context}");
        log.close().unwrap();
        let records = read_all(dir.path());
        assert_eq!(records.len(), 6, "{context}");
        for (i, (offset, payload)) in records.iter().take(5).enumerate() {
            assert_eq!((*offset, payload.len(), payload[0]), (i as u64, 1 << 20, i as u8), "{context}");
        }
    }
}

/// `Duration::MAX`, the usual "no timeout", waits without a deadline instead of panicking
/// on the overflow of `now + timeout`.
#[test]
fn a_timeout_of_duration_max_waits_without_a_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Appender::open(dir.path(), LogOptions::default().durability(Durability::Never)).unwrap();
    let offset = log.append(b"one").unwrap();
    assert_eq!(log.durable_offset(), Offset(0), "nothing synced yet");
    assert!(log.wait_durable(offset, Some(Duration::MAX)).unwrap());
    let watch = log.durable_watch();
    let offset = log.append(b"two").unwrap();
    assert!(watch.wait_durable(offset, Some(Duration::MAX)).unwrap());
}
