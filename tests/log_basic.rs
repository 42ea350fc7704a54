use shoal::log::{Appender, Durability, IoBackend, LogOptions, Offset, Reader, Tailer};
use std::time::Duration;

fn opts(backend: IoBackend) -> LogOptions {
    LogOptions { segment_bytes: 256 << 10, max_record_bytes: 64 << 10, io_backend: backend, ..LogOptions::default() }
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
    let mut log = Appender::open(dir.path(), LogOptions { durability: Durability::Batch, ..opts(IoBackend::Auto) }).unwrap();
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
