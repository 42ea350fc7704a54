//! Model-based fuzzing of a group's offsets under seek, commit and reset: one member of a
//! group on a small topic (so it holds every partition) against a model of per-partition
//! positions, committed offsets and log ends.
//!
//! Checked after every operation: what a poll returns after a seek (each record is the next
//! one of its partition from the position: seeks back deliver again, seeks forward skip,
//! seeks past the end stop at the end), where a rejoin starts after a commit, a chosen-offsets commit,
//! a crash (drop without leave), a graceful leave or a reset, and with which start option,
//! that refused calls (a partition not held, a commit past the position, a reset while the
//! member is live) change nothing, and that no call panics.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::bus::{Bus, TopicProducer};
use shoal::group::{reset_offsets, GroupError, GroupOptions, Member, ResetTo, Start};
use shoal::log::{Durability, LogOptions};

const PARTITIONS: u32 = 2;

/// The last variant is what runs of 0xFF bytes decode to: a cheap, useful poll, not an
/// append (appends are capped, see [`RECORDS_MAX`]).
#[derive(Arbitrary, Debug)]
enum Op {
    Join { latest: bool },
    Append { partition: u8, records: u8 },
    Seek { partition: u8, offset: u8 },
    CommitOffsets { partition: u8, offset: u8 },
    SeekToBeginning { partition: u8 },
    Commit,
    Reset { to: Target },
    SeekToEnd { partition: u8 },
    Leave,
    Crash,
    Poll { max: u8, lend: bool },
}

/// Most records a partition gets (offsets stay in the range the ops name).
const RECORDS_MAX: u64 = 12;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Earliest,
    Latest,
    Offset(u8),
}

/// What the group and the log should hold.
#[derive(Debug, Default)]
struct Model {
    /// Next offset to append, per partition.
    end: [u64; PARTITIONS as usize],
    /// Committed offset per partition (`None`: nothing written yet).
    committed: [Option<u64>; PARTITIONS as usize],
    /// The live member's position per partition.
    position: Option<[u64; PARTITIONS as usize]>,
    /// A member joined the group once (its directory exists).
    ever_joined: bool,
}

fn log_opts() -> LogOptions {
    LogOptions::default().segment_bytes(64 << 10).durability(Durability::Never).prefault(false)
}

fn append(producer: &mut TopicProducer, model: &mut Model, p: u32, records: u64) {
    let records = records.min(RECORDS_MAX.saturating_sub(model.end[p as usize]));
    for _ in 0..records {
        let offset = model.end[p as usize];
        producer.send_to(p, offset, &offset.to_le_bytes()).expect("append");
        model.end[p as usize] += 1;
    }
}

fn check_positions(member: &Member, model: &Model) {
    let position = model.position.expect("a live member");
    for p in 0..PARTITIONS {
        assert_eq!(member.position(p).expect("held"), position[p as usize], "position of {p}");
    }
}

/// A scratch directory, in `/dev/shm` where it exists (cheap file operations).
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("shoal-fuzz").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

fuzz_target!(|ops: Vec<Op>| {
    let dir = scratch();
    let bus = Bus::open(dir.path()).expect("bus");
    bus.topic_or_create("t", Some(PARTITIONS)).expect("topic");
    let mut model = Model::default();
    // One producer for the whole run: opening one per append would be most of the time.
    let mut producer = bus.topic("t").expect("topic").producer(log_opts()).expect("producer");
    append(&mut producer, &mut model, 0, 3);
    let mut member: Option<Member> = None;
    let opts = GroupOptions::default().liveness_check(Duration::from_millis(1));
    for op in ops.into_iter().take(64) {
        match op {
            Op::Join { latest } => {
                if member.is_some() {
                    continue;
                }
                let start = if latest { Start::Latest } else { Start::Earliest };
                let m = Member::join(&bus, "g", "t", opts.clone().start(start)).expect("join");
                let mut position = [0; PARTITIONS as usize];
                for p in 0..PARTITIONS as usize {
                    position[p] = match (model.committed[p], latest) {
                        (Some(c), _) => c,
                        (None, false) => 0,
                        (None, true) => {
                            if model.end[p] > 0 {
                                model.committed[p] = Some(model.end[p]);
                            }
                            model.end[p]
                        }
                    };
                }
                model.position = Some(position);
                model.ever_joined = true;
                check_positions(&m, &model);
                member = Some(m);
            }
            Op::Poll { max, lend } => {
                let Some(m) = member.as_mut() else { continue };
                let max = usize::from(max % 16);
                let mut got = Vec::new();
                let n = if lend {
                    m.poll_with(max, Duration::ZERO, |p, r| {
                        assert_eq!(r.payload(), r.offset().0.to_le_bytes());
                        got.push((p, r.offset().0));
                    })
                    .expect("poll_with")
                } else {
                    let mut batch = Vec::new();
                    let n = m.poll_into(&mut batch, max, Duration::ZERO).expect("poll_into");
                    got.extend(batch.iter().map(|d| (d.partition, d.record.offset().0)));
                    n
                };
                assert_eq!(n, got.len());
                assert!(n <= max);
                let position = model.position.as_mut().expect("live");
                for (p, offset) in got {
                    let at = &mut position[p as usize];
                    assert_eq!(offset, *at, "partition {p}: the next record from the position");
                    assert!(offset < model.end[p as usize]);
                    *at = offset + 1;
                }
                let waiting = (0..PARTITIONS as usize).any(|p| position[p] < model.end[p]);
                if max > 0 && waiting {
                    assert!(n > 0, "records were ready: {model:?}");
                }
                check_positions(m, &model);
            }
            Op::Seek { partition, offset } => {
                let Some(m) = member.as_mut() else { continue };
                let p = u32::from(partition % 3);
                let result = m.seek(p, u64::from(offset % 16));
                if p >= PARTITIONS {
                    assert!(matches!(result, Err(GroupError::NotAssigned { .. })), "{result:?}");
                } else {
                    result.expect("seek");
                    // Past the end is taken as the end.
                    model.position.as_mut().expect("live")[p as usize] =
                        u64::from(offset % 16).min(model.end[p as usize]);
                }
                check_positions(m, &model);
            }
            Op::SeekToBeginning { partition } | Op::SeekToEnd { partition } => {
                let Some(m) = member.as_mut() else { continue };
                let p = u32::from(partition % 3);
                let to_end = matches!(op, Op::SeekToEnd { .. });
                let result = if to_end { m.seek_to_end(&[p]) } else { m.seek_to_beginning(&[p]) };
                if p >= PARTITIONS {
                    assert!(matches!(result, Err(GroupError::NotAssigned { .. })), "{result:?}");
                } else {
                    result.expect("seek");
                    let at = if to_end { model.end[p as usize] } else { 0 };
                    model.position.as_mut().expect("live")[p as usize] = at;
                }
                check_positions(m, &model);
            }
            Op::CommitOffsets { partition, offset } => {
                let Some(m) = member.as_mut() else { continue };
                let p = u32::from(partition % 3);
                let offset = u64::from(offset % 16);
                let result = m.commit_offsets(&[(p, offset)]);
                let position = model.position.expect("live");
                if p >= PARTITIONS {
                    assert!(matches!(result, Err(GroupError::NotAssigned { .. })), "{result:?}");
                } else if offset > position[p as usize] {
                    assert!(matches!(result, Err(GroupError::CommitAhead { .. })), "{result:?}");
                } else {
                    result.expect("commit_offsets");
                    model.committed[p as usize] = Some(offset);
                }
            }
            Op::Commit => {
                let Some(m) = member.as_mut() else { continue };
                m.commit().expect("commit");
                let position = model.position.expect("live");
                for p in 0..PARTITIONS as usize {
                    model.committed[p] = Some(position[p]);
                }
            }
            Op::Reset { to } => {
                let to = match to {
                    Target::Earliest => ResetTo::Earliest,
                    Target::Latest => ResetTo::Latest,
                    Target::Offset(o) => ResetTo::Offset(u64::from(o % 16)),
                };
                let result = reset_offsets(&bus, "g", "t", to, true);
                if member.is_some() {
                    assert!(matches!(result, Err(GroupError::GroupActive { .. })), "{result:?}");
                } else if !model.ever_joined {
                    assert!(matches!(result, Err(GroupError::NoGroup { .. })), "{result:?}");
                } else {
                    let plan = result.expect("reset");
                    for row in plan {
                        let p = row.partition as usize;
                        assert_eq!(row.committed, model.committed[p], "committed of {p} before the reset");
                        let new = match to {
                            ResetTo::Earliest => 0,
                            ResetTo::Latest => model.end[p],
                            ResetTo::Offset(o) => o.min(model.end[p]),
                            _ => unreachable!(),
                        };
                        assert_eq!(row.new, new);
                        model.committed[p] = Some(new);
                    }
                }
            }
            Op::Leave => {
                let Some(m) = member.take() else { continue };
                m.leave().expect("leave");
                let position = model.position.take().expect("live");
                for p in 0..PARTITIONS as usize {
                    model.committed[p] = Some(position[p]);
                }
            }
            Op::Crash => {
                if member.take().is_some() {
                    model.position = None;
                }
            }
            Op::Append { partition, records } => {
                append(&mut producer, &mut model, u32::from(partition) % PARTITIONS, u64::from(records % 8));
            }
        }
    }
});
