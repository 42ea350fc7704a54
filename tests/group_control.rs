//! A consumer in control of its offsets: seek and position, commits of chosen offsets, where
//! a group without committed offsets starts, rebalance listeners (assigned, revoked with a
//! commit, lost), resets of a group's offsets (library and `shoal groups --reset-offsets`),
//! `shoal group --from`, and the polls that reuse the caller's buffer or lend records (and
//! lend again a record whose closure panicked). Also: a seek or a committed offset past the
//! end is taken as the end, `Duration::MAX` is "no deadline", and a member that falls behind
//! retention goes on from the first record held.

mod cli_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::bus::Bus;
use shoal::group::{
    reset_offsets, Assigned, GroupError, GroupOptions, Member, RebalanceListener, ResetTo, Revoked, Start,
};
use shoal::log::{Durability, LogOptions};

use cli_support::run;

const WAIT: Duration = Duration::from_secs(10);

fn log_opts() -> LogOptions {
    LogOptions::default().segment_bytes(256 << 10).durability(Durability::Never).prefault(false)
}

fn opts() -> GroupOptions {
    GroupOptions::default().liveness_check(Duration::from_millis(5))
}

/// A bus with `topic` of `partitions`, each holding `per` records (payload: the offset in
/// decimal, for a fresh topic).
fn filled(partitions: u32, per: u64) -> (tempfile::TempDir, Bus) {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    bus.topic_or_create("t", Some(partitions)).unwrap();
    append(&bus, partitions, per);
    (dir, bus)
}

fn append(bus: &Bus, partitions: u32, per: u64) {
    let mut producer = bus.topic("t").unwrap().producer(log_opts()).unwrap();
    for p in 0..partitions {
        for i in 0..per {
            producer.send_to(p, i, i.to_string().as_bytes()).unwrap();
        }
    }
}

/// Polls until `n` records came (or `WAIT` passed); (partition, offset) of each.
fn take(m: &mut Member, n: usize) -> Vec<(u32, u64)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        for d in m.poll(n - got.len(), Duration::from_millis(20)).unwrap() {
            got.push((d.partition, d.record.offset().0));
        }
    }
    got
}

fn offsets_of(got: &[(u32, u64)], p: u32) -> Vec<u64> {
    got.iter().filter(|d| d.0 == p).map(|d| d.1).collect()
}

#[test]
fn seek_moves_the_position_back_forward_and_to_the_end() {
    let (_dir, bus) = filled(2, 10);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!((m.position(0).unwrap(), m.position(1).unwrap()), (0, 0));
    m.seek(0, 7).unwrap();
    m.seek(1, 3).unwrap();
    let got = take(&mut m, 10);
    assert_eq!(offsets_of(&got, 0), [7, 8, 9]);
    assert_eq!(offsets_of(&got, 1), (3..10).collect::<Vec<_>>());
    assert_eq!(m.position(0).unwrap(), 10);
    // Backwards: delivered again.
    m.seek_to_beginning(&[0]).unwrap();
    assert_eq!(m.position(0).unwrap(), 0);
    assert_eq!(offsets_of(&take(&mut m, 10), 0), (0..10).collect::<Vec<_>>());
    // Past the end: taken as the end, so every record appended later comes.
    m.seek(1, 14).unwrap();
    assert_eq!(m.position(1).unwrap(), 10);
    append(&bus, 2, 6); // offsets 10..16 in both partitions
    let got = take(&mut m, 12);
    assert_eq!(offsets_of(&got, 0), (10..16).collect::<Vec<_>>());
    assert_eq!(offsets_of(&got, 1), (10..16).collect::<Vec<_>>());
    // To the end: nothing until a new record.
    m.seek(0, 2).unwrap();
    m.seek_to_end(&[0, 1]).unwrap();
    assert_eq!((m.position(0).unwrap(), m.position(1).unwrap()), (16, 16));
    assert!(m.poll(10, Duration::from_millis(20)).unwrap().is_empty());
}

#[test]
fn seeks_and_positions_of_partitions_not_held_are_clear_errors() {
    let (_dir, bus) = filled(2, 3);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    let err = m.seek(5, 0).unwrap_err();
    assert!(matches!(err, GroupError::NotAssigned { partition: 5, ref held } if held == &[0, 1]), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("partition 5 is not held here (held: [0, 1])") && text.contains("Member::assigned"),
        "{text}"
    );
    assert!(matches!(m.position(2), Err(GroupError::NotAssigned { partition: 2, .. })));
    // One bad partition: none of the others is moved.
    m.seek(0, 2).unwrap();
    assert!(matches!(m.seek_to_end(&[0, 9]), Err(GroupError::NotAssigned { partition: 9, .. })));
    assert_eq!(m.position(0).unwrap(), 2);
}

#[test]
fn commit_offsets_stores_the_chosen_offsets_and_a_rejoin_starts_there() {
    let (_dir, bus) = filled(2, 10);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(take(&mut m, 20).len(), 20);
    m.commit_offsets(&[(0, 4), (1, 10)]).unwrap();
    drop(m); // like a crash: no commit of the rest
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!((m.position(0).unwrap(), m.position(1).unwrap()), (4, 10));
    let got = take(&mut m, 6);
    assert_eq!(offsets_of(&got, 0), (4..10).collect::<Vec<_>>());
    // Back to an earlier offset than committed: the group moves back.
    m.commit_offsets(&[(0, 1)]).unwrap();
    drop(m);
    let m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(m.position(0).unwrap(), 1);
    m.leave().unwrap(); // commits the position (1): unchanged
    let m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(m.position(0).unwrap(), 1);
}

#[test]
fn bad_chosen_commits_write_nothing() {
    let (_dir, bus) = filled(2, 10);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(offsets_of(&take(&mut m, 20), 0).len(), 10);
    m.seek(1, 5).unwrap();
    // Past the position (5): refused, and the valid pair before it is not written either.
    let err = m.commit_offsets(&[(0, 10), (1, 6)]).unwrap_err();
    assert!(matches!(err, GroupError::CommitAhead { partition: 1, offset: 6, position: 5 }), "{err:?}");
    assert!(err.to_string().contains("position there is 5"), "{err}");
    let err = m.commit_offsets(&[(0, 10), (3, 1)]).unwrap_err();
    assert!(matches!(err, GroupError::NotAssigned { partition: 3, .. }), "{err:?}");
    drop(m);
    let m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!((m.position(0).unwrap(), m.position(1).unwrap()), (0, 0));
}

#[test]
fn a_group_without_committed_offsets_starts_where_start_says() {
    let (_dir, bus) = filled(1, 10);
    let mut early = Member::join(&bus, "early", "t", opts().start(Start::Earliest)).unwrap();
    assert_eq!(early.position(0).unwrap(), 0);
    early.commit().unwrap();
    let mut late = Member::join(&bus, "late", "t", opts().start(Start::Latest)).unwrap();
    assert_eq!(late.position(0).unwrap(), 10);
    assert!(late.poll(10, Duration::from_millis(20)).unwrap().is_empty());
    // The start was fixed when the partition was first taken: a member that crashes before
    // reading hands over from there, not from a later end.
    drop(late);
    append(&bus, 1, 3); // offsets 10, 11, 12
    let mut late = Member::join(&bus, "late", "t", opts().start(Start::Latest)).unwrap();
    assert_eq!(offsets_of(&take(&mut late, 3), 0), [10, 11, 12]);
    // A committed offset wins over the option.
    late.commit().unwrap();
    late.leave().unwrap();
    let again = Member::join(&bus, "late", "t", opts().start(Start::Earliest)).unwrap();
    assert_eq!(again.position(0).unwrap(), 13);
    drop(early);
}

#[derive(Debug, Default)]
struct Seen {
    assigned: Vec<Vec<u32>>,
    revoked: Vec<Vec<u32>>,
    positions_at_revoke: Vec<(u32, u64)>,
}

/// Records what it is told; on revoke commits each partition at `lag` below its position
/// (the records not yet processed), and on assign seeks partition 0 to `seek0` if given.
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    lag: u64,
    seek0: Option<u64>,
}

impl RebalanceListener for Recorder {
    fn on_assigned(&mut self, assigned: &mut Assigned<'_>) {
        let partitions = assigned.partitions().to_vec();
        if let (Some(to), true) = (self.seek0, partitions.contains(&0)) {
            assigned.seek(0, to).unwrap();
        }
        assert!(matches!(assigned.position(99), Err(GroupError::NotAssigned { .. })));
        self.seen.lock().unwrap().assigned.push(partitions);
    }

    fn on_revoked(&mut self, revoked: &mut Revoked<'_>) {
        let partitions = revoked.partitions().to_vec();
        let mut chosen = Vec::new();
        for &p in &partitions {
            let position = revoked.position(p).unwrap();
            chosen.push((p, position.saturating_sub(self.lag)));
        }
        // Only the partitions being revoked may be committed here.
        if let Some(other) = (0..8).find(|p| !partitions.contains(p)) {
            assert!(matches!(revoked.commit_offsets(&[(other, 0)]), Err(GroupError::NotAssigned { .. })));
        }
        revoked.commit_offsets(&chosen).unwrap();
        let mut seen = self.seen.lock().unwrap();
        seen.positions_at_revoke.extend(chosen);
        seen.revoked.push(partitions);
    }
}

#[test]
fn a_listener_hears_assignments_and_commits_what_it_chooses_on_revoke() {
    let (_dir, bus) = filled(4, 10);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = Recorder { seen: seen.clone(), lag: 2, seek0: Some(5) };
    let mut a = Member::join_with(&bus, "g", "t", opts(), listener).unwrap();
    assert_eq!(seen.lock().unwrap().assigned, [vec![0, 1, 2, 3]], "the first share, before join returns");
    assert_eq!(a.position(0).unwrap(), 5, "on_assigned sought partition 0");
    assert_eq!(take(&mut a, 35).len(), 35);
    // B joins: A's next polls revoke B's share, committing 2 below A's position there.
    let mut b = Member::join(&bus, "g", "t", opts()).unwrap();
    let deadline = Instant::now() + WAIT;
    while b.assigned().len() < 2 && Instant::now() < deadline {
        assert!(a.poll(10, Duration::from_millis(5)).unwrap().is_empty(), "A read everything before");
        b.poll(0, Duration::ZERO).unwrap(); // membership upkeep only: takes, reads nothing
        std::thread::sleep(Duration::from_millis(1));
    }
    let moved = b.assigned();
    assert_eq!(moved.len(), 2);
    {
        let seen = seen.lock().unwrap();
        let revoked: Vec<u32> = seen.revoked.concat();
        assert_eq!(revoked, moved, "revoked exactly what moved to B");
        for &(p, at) in &seen.positions_at_revoke {
            assert_eq!(at, 8, "partition {p}: committed 2 below the position 10");
        }
    }
    // B starts every moved partition at what A's listener committed: 8 and 9 come again.
    let got = take(&mut b, 4);
    for &p in &moved {
        assert_eq!(offsets_of(&got, p), [8, 9], "partition {p}");
    }
    // A leaves: on_revoked gets the rest, and B takes them from the listener's commits.
    let kept = a.assigned();
    a.leave().unwrap();
    assert_eq!(seen.lock().unwrap().revoked.last().unwrap(), &kept);
    let got = take(&mut b, 4);
    for &p in &kept {
        assert_eq!(offsets_of(&got, p), [8, 9], "partition {p}");
    }
}

#[test]
fn a_listener_that_commits_nothing_hands_over_at_the_last_commit() {
    struct Quiet;
    impl RebalanceListener for Quiet {}
    let (_dir, bus) = filled(1, 10);
    let mut a = Member::join_with(&bus, "g", "t", opts(), Quiet).unwrap();
    assert_eq!(take(&mut a, 10).len(), 10);
    a.commit_offsets(&[(0, 3)]).unwrap();
    a.leave().unwrap(); // no commit on revoke
    let b = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(b.position(0).unwrap(), 3);
    // Without a listener, leave commits every record returned (as before).
    let mut b = b;
    assert_eq!(take(&mut b, 7).len(), 7);
    b.leave().unwrap();
    assert_eq!(Member::join(&bus, "g", "t", opts()).unwrap().position(0).unwrap(), 10);
}

#[test]
fn poll_into_reuses_the_buffer_and_poll_with_lends_the_records() {
    let (_dir, bus) = filled(2, 100);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    let mut batch = Vec::with_capacity(64);
    let at = batch.as_ptr();
    let mut seen = Vec::new();
    while seen.len() < 100 {
        let n = m.poll_into(&mut batch, 64, Duration::from_millis(20)).unwrap();
        assert_eq!(n, batch.len());
        assert!(n <= 64);
        seen.extend(batch.iter().map(|d| (d.partition, d.record.offset().0)));
    }
    assert_eq!(batch.as_ptr(), at, "the buffer was never reallocated");
    assert_eq!(batch.capacity(), 64);
    let mut sum = 0u64;
    let deadline = Instant::now() + WAIT;
    while seen.len() < 200 && Instant::now() < deadline {
        m.poll_with(64, Duration::from_millis(20), |p, record| {
            let value: u64 = std::str::from_utf8(record.payload()).unwrap().parse().unwrap();
            assert_eq!(value, record.offset().0);
            sum += value;
            seen.push((p, record.offset().0));
        })
        .unwrap();
    }
    seen.sort();
    let want: Vec<(u32, u64)> = (0..2).flat_map(|p| (0..100).map(move |o| (p, o))).collect();
    assert_eq!(seen, want, "every record once, by one poll or the other");
    assert!(sum > 0);
    assert_eq!(m.stats().delivered, 200);
    // Both count as returned: a commit stores the end.
    m.leave().unwrap();
    let m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!((m.position(0).unwrap(), m.position(1).unwrap()), (100, 100));
}

#[test]
fn reset_moves_the_offsets_of_a_group_with_no_live_member() {
    let (_dir, bus) = filled(2, 10);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(take(&mut m, 20).len(), 20);
    m.commit_offsets(&[(0, 6)]).unwrap();
    m.commit().unwrap(); // partition 0 -> 10, partition 1 -> 10
                         // Refused while the member is live, naming it.
    let err = reset_offsets(&bus, "g", "t", ResetTo::Earliest, true).unwrap_err();
    assert!(matches!(err, GroupError::GroupActive { ref members, .. } if members == &[m.id().to_string()]), "{err:?}");
    assert!(err.to_string().contains(m.id()) && err.to_string().contains("stop them"), "{err}");
    m.leave().unwrap();
    // A dry run says where, writes nothing.
    let plan = reset_offsets(&bus, "g", "t", ResetTo::Earliest, false).unwrap();
    assert_eq!(plan.iter().map(|r| (r.committed, r.new)).collect::<Vec<_>>(), [(Some(10), 0), (Some(10), 0)]);
    assert_eq!(Member::join(&bus, "g", "t", opts()).unwrap().position(0).unwrap(), 10);
    // An offset is kept within the log's range.
    let plan = reset_offsets(&bus, "g", "t", ResetTo::Offset(99), false).unwrap();
    assert!(plan.iter().all(|r| r.new == 10 && r.end == 10 && r.first == 0));
    reset_offsets(&bus, "g", "t", ResetTo::Offset(4), true).unwrap();
    let m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!((m.position(0).unwrap(), m.position(1).unwrap()), (4, 4));
    drop(m);
    reset_offsets(&bus, "g", "t", ResetTo::Latest, true).unwrap();
    append(&bus, 2, 1);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    let mut got = take(&mut m, 2);
    got.sort();
    assert_eq!(got, [(0, 10), (1, 10)]);
    drop(m);
    let err = reset_offsets(&bus, "never", "t", ResetTo::Latest, true).unwrap_err();
    assert!(matches!(err, GroupError::NoGroup { .. }), "{err:?}");
}

#[test]
fn cli_resets_offsets_as_a_dry_run_then_with_execute_and_refuses_live_groups() {
    let (dir, bus) = filled(2, 10);
    let path = dir.path().to_str().unwrap();
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(take(&mut m, 20).len(), 20);
    m.commit().unwrap();
    let out = run(&["groups", path, "g", "--reset-offsets", "--to", "earliest"], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has live members") && err.contains(m.id()), "{err}");
    m.leave().unwrap();
    let out = run(&["groups", path, "g", "--reset-offsets", "--to", "3"], b"");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("group g, topic t: offsets would be reset to offset 3 (dry run"), "{text}");
    assert!(text.contains("  0          10         3    0      10\n"), "{text}");
    assert_eq!(Member::join(&bus, "g", "t", opts()).unwrap().position(0).unwrap(), 10, "dry run wrote nothing");
    let out = run(&["groups", path, "g", "--reset-offsets", "--to", "3", "--topic", "t", "--execute"], b"");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("group g, topic t: offsets reset to offset 3\n"));
    // `shoal group` prints from the reset offsets.
    let out = run(&["group", path, "g", "--topic", "t", "--exit-when-idle", "200"], b"");
    assert!(out.status.success(), "{out:?}");
    let lines = String::from_utf8_lossy(&out.stdout);
    assert_eq!(lines.lines().count(), 14, "{lines}");
    assert!(lines.lines().any(|l| l.starts_with("0 3 ")) && !lines.lines().any(|l| l.starts_with("0 2 ")), "{lines}");
    // Usage errors: a bad target, --to without --reset-offsets, a reset without a group.
    for args in [
        vec!["groups", path, "g", "--reset-offsets", "--to", "soon"],
        vec!["groups", path, "g", "--to", "3"],
        vec!["groups", path, "--reset-offsets", "--to", "3"],
    ] {
        let out = run(&args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    let out = run(&["groups", path, "g", "--reset-offsets", "--to", "soon"], b"");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give earliest, latest, an offset (a whole number), or a time")
    );
    // `groups <BUS> <GROUP>` shows that group only.
    Member::join(&bus, "other", "t", opts()).unwrap().leave().unwrap();
    let out = run(&["groups", path, "g"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("group g, topic t: 0 members") && !text.contains("group other"), "{text}");
    let out = run(&["groups", path, "nobody"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{path}: no consumer group nobody\n"));
    let out = run(&["groups", path, "nobody", "--reset-offsets", "--to", "latest"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no consumer group nobody"), "{out:?}");
}

#[test]
fn seek_to_time_and_a_reset_to_a_time_find_the_first_record_appended_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create("t", Some(1)).unwrap();
    let mut producer = topic.producer(log_opts()).unwrap();
    for i in 0..6u64 {
        producer.send_to(0, i, i.to_string().as_bytes()).unwrap();
        // Distinct append times, so each record is the only one at its time.
        std::thread::sleep(Duration::from_millis(2));
    }
    producer.close().unwrap();
    let mut reader = shoal::log::Reader::open(topic.partition_dir(0).unwrap()).unwrap();
    let mut times = Vec::new();
    while let Some(r) = reader.next().unwrap() {
        times.push(r.timestamp_ns());
    }
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    m.seek_to_time(&[0], times[3]).unwrap();
    assert_eq!(m.position(0).unwrap(), 3);
    assert_eq!(offsets_of(&take(&mut m, 3), 0), [3, 4, 5]);
    m.seek_to_time(&[0], times[3] - 1).unwrap();
    assert_eq!(m.position(0).unwrap(), 3, "a time between two records: the later one");
    m.seek_to_time(&[0], times[5] + 1).unwrap();
    assert_eq!(m.position(0).unwrap(), 6, "after the last record: the end");
    m.seek_to_time(&[0], 0).unwrap();
    assert_eq!(m.position(0).unwrap(), 0);
    assert!(matches!(m.seek_to_time(&[1], 0), Err(GroupError::NotAssigned { .. })));
    m.leave().unwrap();
    let plan = reset_offsets(&bus, "g", "t", ResetTo::Time(times[4]), false).unwrap();
    assert_eq!(plan.iter().map(|r| r.new).collect::<Vec<_>>(), [4]);
    let plan = reset_offsets(&bus, "g", "t", ResetTo::Time(u64::MAX), false).unwrap();
    assert_eq!(plan.iter().map(|r| r.new).collect::<Vec<_>>(), [6]);
    let path = dir.path().to_str().unwrap();
    let at = format!("{}ns", times[2]);
    let out = run(&["groups", path, "g", "--reset-offsets", "--to", &at, "--execute"], b"");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("at or after"), "{out:?}");
    assert_eq!(Member::join(&bus, "g", "t", opts()).unwrap().position(0).unwrap(), 2);
}

#[test]
fn cli_group_from_latest_prints_only_new_records() {
    let (dir, bus) = filled(1, 5);
    let path = dir.path().to_str().unwrap();
    let out = run(&["group", path, "late", "--topic", "t", "--from", "latest", "--exit-when-idle", "100"], b"");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "nothing new");
    append(&bus, 1, 2); // offsets 5, 6
    let out = run(&["group", path, "late", "--topic", "t", "--from", "latest", "--exit-when-idle", "100"], b"");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l[..4].to_string()).collect();
    assert_eq!(lines, ["0 5 ", "0 6 "]);
    let out = run(&["group", path, "early", "--topic", "t", "--exit-when-idle", "100"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 7);
    let out = run(&["group", path, "x", "--topic", "t", "--from", "middle"], b"");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_listener_hears_of_partitions_lost_to_a_takeover() {
    struct Lost(Arc<Mutex<Vec<u32>>>);
    impl RebalanceListener for Lost {
        fn on_revoked(&mut self, _: &mut Revoked<'_>) {
            panic!("a takeover revokes nothing: the partitions are already gone");
        }
        fn on_lost(&mut self, partitions: &[u32]) {
            self.0.lock().unwrap().extend_from_slice(partitions);
        }
    }
    let (_dir, bus) = filled(1, 5);
    let lost = Arc::new(Mutex::new(Vec::new()));
    let mut a = Member::join_with(&bus, "g", "t", opts(), Lost(lost.clone())).unwrap();
    assert_eq!(a.assigned(), [0]);
    // A stops polling (a hung handler); B counts it as stopped after its session timeout
    // and takes the partition over.
    let quick = opts().session_timeout(Duration::from_millis(60));
    let mut b = Member::join(&bus, "g", "t", quick).unwrap();
    let deadline = Instant::now() + WAIT;
    while b.assigned().is_empty() && Instant::now() < deadline {
        b.poll(0, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(b.assigned(), [0]);
    assert!(lost.lock().unwrap().is_empty());
    // A's next poll finds it gone, and tells the listener.
    assert!(a.poll(10, Duration::from_millis(20)).unwrap().is_empty());
    assert_eq!(*lost.lock().unwrap(), [0]);
    assert!(a.assigned().is_empty());
    drop(a);
    assert_eq!(take(&mut b, 5).len(), 5);
}

#[test]
fn a_commit_at_the_start_is_recorded_and_wins_over_a_later_start_option() {
    let (_dir, bus) = filled(1, 5);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(m.position(0).unwrap(), 0);
    m.commit().unwrap(); // nothing read: the group still commits offset 0
    drop(m);
    let m = Member::join(&bus, "g", "t", opts().start(Start::Latest)).unwrap();
    assert_eq!(m.position(0).unwrap(), 0, "the committed 0 stands, not the end");
}

#[test]
fn a_record_whose_poll_with_closure_panicked_is_delivered_again() {
    let (_dir, bus) = filled(1, 10);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    let mut done = Vec::new();
    // A worker that survives one bad record: it catches the panic and goes on.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.poll_with(64, WAIT, |_, record| {
            let offset = record.offset().0;
            if offset == 5 {
                panic!("bad record {offset}");
            }
            done.push(offset);
        })
    }));
    assert!(caught.is_err(), "the closure's panic reaches the caller");
    assert_eq!(done, [0, 1, 2, 3, 4]);
    assert_eq!(m.position(0).unwrap(), 5, "the record whose closure panicked does not count as returned");
    // A commit now stores 5: record 5 is not skipped by the group.
    m.commit().unwrap();
    let deadline = Instant::now() + WAIT;
    while done.len() < 10 && Instant::now() < deadline {
        m.poll_with(64, Duration::from_millis(20), |_, record| done.push(record.offset().0)).unwrap();
    }
    assert_eq!(done, (0..10).collect::<Vec<_>>(), "record 5 delivered again, then the rest, once each");
    drop(m);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(m.position(0).unwrap(), 5);
    // A panic on the first record of a poll, then a seek: the seek wins.
    let caught =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.poll_with(64, WAIT, |_, _| panic!("bad record"))));
    assert!(caught.is_err());
    assert_eq!(m.position(0).unwrap(), 5);
    m.seek(0, 8).unwrap();
    assert_eq!(offsets_of(&take(&mut m, 2), 0), [8, 9]);
}

#[test]
fn a_seek_or_a_committed_offset_past_the_end_is_taken_as_the_end() {
    let (dir, bus) = filled(2, 10);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    m.seek(0, u64::MAX).unwrap();
    m.seek(1, 11).unwrap();
    assert_eq!((m.position(0).unwrap(), m.position(1).unwrap()), (10, 10));
    let err = m.commit_offsets(&[(0, u64::MAX)]).unwrap_err();
    assert!(matches!(err, GroupError::CommitAhead { partition: 0, position: 10, .. }), "{err:?}");
    m.commit().unwrap();
    drop(m);
    append(&bus, 2, 3); // offsets 10..13
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    let got = take(&mut m, 6);
    assert_eq!((offsets_of(&got, 0), offsets_of(&got, 1)), (vec![10, 11, 12], vec![10, 11, 12]));
    m.leave().unwrap();

    // An offsets file that says more than the partition holds (written by an older shoal,
    // or the log was cut back since): the member starts at the end, and its next commit
    // stores the end.
    let offsets = dir.path().join("groups/g/t/offsets/0");
    let mut bytes = vec![0u8; shoal::group::format::OFFSETS_FILE_BYTES];
    let slot = shoal::group::format::encode_offsets_slot(99, 1_000_000);
    let at = shoal::group::format::OFFSETS_SLOT_STRIDE; // generation 99: slot 1
    bytes[at..at + slot.len()].copy_from_slice(&slot);
    std::fs::write(&offsets, &bytes).unwrap();
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(m.position(0).unwrap(), 13);
    append(&bus, 1, 2); // offsets 13 and 14 of partition 0
    assert_eq!(offsets_of(&take(&mut m, 2), 0), [13, 14]);
    m.leave().unwrap();
    let m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(m.position(0).unwrap(), 15);
}

#[test]
fn duration_max_is_no_deadline_for_a_poll_and_no_periodic_liveness_check() {
    let (_dir, bus) = filled(1, 3);
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    assert_eq!(m.poll(2, Duration::MAX).unwrap().len(), 2);
    m.leave().unwrap();
    let mut m = Member::join(&bus, "g", "t", opts().liveness_check(Duration::MAX)).unwrap();
    assert_eq!(m.poll(10, Duration::from_millis(5)).unwrap().len(), 1);
    assert_eq!(m.poll(10, Duration::from_millis(5)).unwrap().len(), 0);
    // Nothing there: the poll waits, with no deadline, for the record sent meanwhile.
    let sender = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            append(&bus, 1, 1);
        })
    };
    let got = m.poll(10, Duration::MAX).unwrap();
    assert_eq!(got.len(), 1);
    sender.join().unwrap();
    append(&bus, 1, 1);
    assert_eq!(m.poll_with(10, Duration::MAX, |_, _| {}).unwrap(), 1);
    m.leave().unwrap();
}

#[test]
fn a_member_that_falls_behind_retention_goes_on_from_the_first_record_held() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).unwrap();
    let topic = bus.topic_or_create("t", Some(1)).unwrap();
    let retention = shoal::log::Retention::default().max_bytes(4 * (256 << 10));
    let mut producer = topic.producer(log_opts().retention(retention)).unwrap();
    let payload = vec![7u8; 1000];
    producer.send_to(0, 0, &payload).unwrap();
    let mut m = Member::join(&bus, "g", "t", opts()).unwrap();
    // A slow member: it has read the first record (its reader maps the first segment)...
    assert_eq!(offsets_of(&take(&mut m, 1), 0), [0]);
    // ... when the producer writes far more than retention keeps.
    for i in 1..5000 {
        producer.send_to(0, i, &payload).unwrap();
    }
    let first = shoal::log::Reader::open(topic.partition_dir(0).unwrap()).unwrap().first_offset().unwrap().0;
    assert!(first > 1000, "retention removed the old records (first held: {first})");
    // The member reads what its mapped segment still holds, then goes on from the first
    // record held, instead of failing every poll.
    let mut got = vec![0];
    let deadline = Instant::now() + WAIT;
    while got.last() != Some(&4999) && Instant::now() < deadline {
        for d in m.poll(512, Duration::from_millis(20)).unwrap() {
            got.push(d.record.offset().0);
        }
    }
    assert_eq!(got.last(), Some(&4999));
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    let jump = got.windows(2).position(|w| w[1] != w[0] + 1).expect("a gap where retention removed records");
    assert_eq!(got[jump + 1], first, "the member goes on at the first record held");
    assert!(got[jump + 1..].windows(2).all(|w| w[1] == w[0] + 1), "nothing missing after the gap");
    m.commit().unwrap();
    assert_eq!(m.position(0).unwrap(), 5000);
}
