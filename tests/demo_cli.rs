//! `shoal demo`'s report: its rebalance lines add up, its pauses and rates read well, and
//! every figure is explained. The checks parse the report's text, so they are also run on
//! a report of the earlier format, which they must refuse.

mod cli_support;
use cli_support::*;

use std::collections::BTreeMap;

/// Orders per run: enough for every step to happen mid-stream, a few seconds on 2 cores.
const EVENTS: &str = "20000";

/// Partitions of the demo's topic.
const PARTITIONS: u32 = 4;

/// The rows of the report's table whose label is `label`, without the label.
fn rows<'a>(report: &'a str, label: &str) -> Vec<&'a str> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix(label))
        .filter(|rest| rest.starts_with("  "))
        .map(str::trim_start)
        .collect()
}

/// `"0, 3"` -> `[0, 3]`.
fn partitions(list: &str) -> Result<Vec<u32>, String> {
    list.split(", ").map(|p| p.trim().parse().map_err(|_| format!("not a partition list: {list:?}"))).collect()
}

/// `"2 partitions (1, 3)"` or `"1 partition (2)"` at the start of `s`: the count, the list
/// and the rest after the closing parenthesis.
fn counted_list(s: &str) -> Result<(usize, Vec<u32>, &str), String> {
    let (n, rest) = s.split_once(' ').ok_or_else(|| format!("no count in {s:?}"))?;
    let n: usize = n.parse().map_err(|_| format!("no count in {s:?}"))?;
    let rest = rest
        .strip_prefix(if n == 1 { "partition (" } else { "partitions (" })
        .ok_or_else(|| format!("{n} is not followed by the right plural and a list: {s:?}"))?;
    let (list, rest) = rest.split_once(')').ok_or_else(|| format!("unclosed list in {s:?}"))?;
    let ps = partitions(list)?;
    if ps.len() != n {
        return Err(format!("{n} partitions announced, {} listed: {s:?}", ps.len()));
    }
    Ok((n, ps, rest))
}

/// The member label at the start of `s` (`member 3 (process 123)`), and the rest.
fn member_label(s: &str) -> Result<(&str, &str), String> {
    let close = s.find(')').ok_or_else(|| format!("no member label in {s:?}"))?;
    if !s.starts_with("member ") {
        return Err(format!("no member label in {s:?}"));
    }
    Ok((&s[..=close], &s[close + 1..]))
}

/// Parses a duration as `format_ns` prints it: `618.5 us`, `1.20 ms`, `999 ns`, `1.5 s`.
fn ns(s: &str) -> Result<f64, String> {
    let (v, unit) = s.trim().split_once(' ').ok_or_else(|| format!("not a duration: {s:?}"))?;
    let v: f64 = v.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let scale = match unit.trim_end_matches([',', ';', ')']) {
        "ns" => 1.0,
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return Err(format!("not a duration: {s:?}")),
    };
    Ok(v * scale)
}

/// The owner (a member label) of each partition.
type Owners = BTreeMap<u32, String>;

/// Replays the membership rows: who owns which partition after each join and leave, and
/// how many partitions each member gained from another member. Every row must add up.
fn replay_membership(report: &str) -> Result<(Owners, BTreeMap<String, usize>), String> {
    let mut owner = Owners::new();
    let mut handovers: BTreeMap<String, usize> = BTreeMap::new();
    let mut end = None;
    let (mut joins, mut leaves) = (0, 0);
    for row in rows(report, "membership") {
        if let Some(rest) = row.strip_prefix("at the end: ") {
            end = Some(rest);
            continue;
        }
        let (who, rest) = member_label(row)?;
        let (_, after_what) = rest.split_once(": ").ok_or_else(|| format!("no ': ' in {row:?}"))?;
        let (moves, settled) =
            after_what.rsplit_once("; settled in ").ok_or_else(|| format!("no settle time: {row:?}"))?;
        ns(settled)?;
        let (moves, also) = match moves.split_once("; also moved ") {
            Some((m, a)) => (m, Some(a)),
            None => (moves, None),
        };
        if let Some(rest) = moves.strip_prefix("gained ") {
            joins += 1;
            let (n, ps, rest) = counted_list(rest)?;
            let sources = rest.strip_prefix(": ").ok_or_else(|| format!("no sources in {row:?}"))?;
            let mut from_sum = 0;
            // "2 from member 1 (thread), 1 free"
            // Member labels hold no ", ".
            for source in sources.split(", ") {
                let (k, from) = source.split_once(' ').ok_or_else(|| format!("bad source {source:?} in {row:?}"))?;
                let k: usize = k.parse().map_err(|_| format!("bad source {source:?} in {row:?}"))?;
                from_sum += k;
                if from.starts_with("from ") {
                    *handovers.entry(who.to_string()).or_default() += k;
                } else if from != "free" {
                    return Err(format!("bad source {source:?} in {row:?}"));
                }
            }
            if from_sum != n {
                return Err(format!("gained {n} but the sources add up to {from_sum}: {row:?}"));
            }
            for p in ps {
                let was = owner.insert(p, who.to_string());
                if was.as_deref() == Some(who) {
                    return Err(format!("{who} gained partition {p} it already held: {row:?}"));
                }
            }
        } else if let Some(rest) = moves.strip_prefix("gave up ") {
            leaves += 1;
            let (n, ps, rest) = counted_list(rest)?;
            if n == 0 {
                return Err(format!("a member that held partitions gave up none: {row:?}"));
            }
            let gainers = rest.strip_prefix(": ").ok_or_else(|| format!("no gainers in {row:?}"))?;
            let mut given = Vec::new();
            // "member 1 (thread) gained 1 (3), member 3 (process 9) gained 1 (1)"
            let mut rest = gainers;
            while !rest.is_empty() {
                let (gainer, tail) = member_label(rest.trim_start_matches(", "))?;
                let tail = tail.strip_prefix(" gained ").ok_or_else(|| format!("no 'gained' in {row:?}"))?;
                let (k, tail) = tail.split_once(" (").ok_or_else(|| format!("bad gainer in {row:?}"))?;
                let (list, tail) = tail.split_once(')').ok_or_else(|| format!("bad gainer in {row:?}"))?;
                let got = partitions(list)?;
                if k.parse::<usize>().ok() != Some(got.len()) {
                    return Err(format!("{gainer} gained {k} but {} are listed: {row:?}", got.len()));
                }
                for &p in &got {
                    if owner.get(&p).map(String::as_str) != Some(who) {
                        return Err(format!("{who} gave up partition {p} it did not hold: {row:?}"));
                    }
                    owner.insert(p, gainer.to_string());
                }
                *handovers.entry(gainer.to_string()).or_default() += got.len();
                given.extend(got);
                rest = tail;
            }
            given.sort_unstable();
            if given != ps {
                return Err(format!("gave up {ps:?} but the others gained {given:?}: {row:?}"));
            }
            if owner.values().any(|o| o == who) {
                return Err(format!("{who} left still holding a partition: {row:?}"));
            }
        } else {
            return Err(format!("neither a join nor a leave: {row:?}"));
        }
        // "partition 0 from member 1 (thread) to member 3 (process 9), ..."
        for item in also.into_iter().flat_map(|a| a.split(", partition ")) {
            let item = item.trim_start_matches("partition ");
            let (p, rest) = item.split_once(" from ").ok_or_else(|| format!("bad move {item:?}"))?;
            let p: u32 = p.parse().map_err(|_| format!("bad move {item:?}"))?;
            let (from, to) = rest.split_once(" to ").ok_or_else(|| format!("bad move {item:?}"))?;
            if owner.get(&p).map(String::as_str) != Some(from) {
                return Err(format!("partition {p} moved from {from}, which did not hold it: {row:?}"));
            }
            owner.insert(p, to.to_string());
            *handovers.entry(to.to_string()).or_default() += 1;
        }
    }
    if joins != 3 || leaves != 1 {
        return Err(format!("{joins} joins and {leaves} leaves in the membership rows, not 3 and 1"));
    }
    // The end row names the same owners, each partition exactly once.
    let end = end.ok_or("no 'at the end' membership row")?;
    let (held, verdict) = end.split_once("; ").ok_or_else(|| format!("bad end row {end:?}"))?;
    if !verdict.starts_with("each of the 4 partitions has exactly one owner") {
        return Err(format!("the end row does not confirm one owner each: {end:?}"));
    }
    let mut at_end = BTreeMap::new();
    let mut rest = held;
    while !rest.is_empty() {
        let (who, tail) = member_label(rest.trim_start_matches(", "))?;
        let tail = tail.strip_prefix(" holds ").ok_or_else(|| format!("bad end row {end:?}"))?;
        let (k, tail) = tail.split_once(" (").ok_or_else(|| format!("bad end row {end:?}"))?;
        let (list, tail) = tail.split_once(')').ok_or_else(|| format!("bad end row {end:?}"))?;
        let ps = partitions(list)?;
        if k.parse::<usize>().ok() != Some(ps.len()) {
            return Err(format!("{who} holds {k} but {} are listed: {end:?}", ps.len()));
        }
        for p in ps {
            if at_end.insert(p, who.to_string()).is_some() {
                return Err(format!("partition {p} has two owners at the end: {end:?}"));
            }
        }
        rest = tail;
    }
    if at_end.len() != PARTITIONS as usize || owner != at_end {
        return Err(format!("the moves lead to {owner:?} but the end row says {at_end:?}"));
    }
    Ok((owner, handovers))
}

/// Every check of the report's text; the first failure, described.
fn check_report(report: &str) -> Result<(), String> {
    let (_, handovers) = replay_membership(report)?;

    // Each member's pause row gives the partitions it gained from others as the membership
    // rows do, and shows pauses as values when there are few.
    let pause_rows = rows(report, "rebalance pauses");
    if pause_rows.len() != 3 {
        return Err(format!("{} rebalance pause rows, not 3", pause_rows.len()));
    }
    let mut worst: f64 = 0.0;
    for row in &pause_rows {
        let (who, rest) = member_label(row)?;
        let rest = rest.strip_prefix(": gained ").ok_or_else(|| format!("no 'gained' in {row:?}"))?;
        let (n, _) = rest.split_once(' ').ok_or_else(|| format!("no count in {row:?}"))?;
        let n: usize = n.parse().map_err(|_| format!("no count in {row:?}"))?;
        let expected = handovers.get(who).copied().unwrap_or(0);
        if n != expected {
            return Err(format!("{who} gained {n} by its pause row, {expected} by the membership rows"));
        }
        if row.contains(", no pause") {
            continue;
        }
        let (at, skip) = match (row.find(" pause: "), row.find(" pauses: ")) {
            (Some(at), _) => (at, " pause: ".len()),
            (None, Some(at)) => (at, " pauses: ".len()),
            (None, None) => return Err(format!("no pauses: {row:?}")),
        };
        let start = row[..at].rfind(' ').map_or(0, |i| i + 1);
        let count: u64 = row[start..at].parse().map_err(|_| format!("no pause count in {row:?}"))?;
        if count < 20 && (row.contains("p50") || row.contains("p99")) {
            return Err(format!("percentiles of {count} pauses: {row:?}"));
        }
        let values = &row[at + skip..];
        let values = values.split(", first delivery").next().unwrap_or("").split(';').next().unwrap_or("");
        for v in values.split([',', '/']) {
            let v = ["min ", "median ", "max ", "p50 ", "p99 "].iter().fold(v.trim(), |v, p| v.trim_start_matches(p));
            worst = worst.max(ns(v)?);
        }
    }

    // The pause budget line agrees with the worst pause.
    let budget = report
        .lines()
        .find(|l| l.starts_with("budget, rebalance pauses (p99 <= 1 ms"))
        .ok_or("no budget line for the rebalance pauses")?;
    if worst > 1e6 && !budget.contains("missed") {
        return Err(format!("the worst pause is {worst} ns but the budget line says {budget:?}"));
    }
    if worst > 0.0 && worst <= 1e6 && !budget.contains(": met") {
        return Err(format!("the worst pause is {worst} ns but the budget line says {budget:?}"));
    }
    if worst > 1e6 {
        let ratio = budget.split("), ").nth(1).and_then(|r| r.split_once("x the budget")).map(|(r, _)| r);
        let ratio: f64 = ratio.and_then(|r| r.parse().ok()).ok_or_else(|| format!("no ratio in {budget:?}"))?;
        if (ratio - worst / 1e6).abs() > 0.01 * ratio + 0.01 {
            return Err(format!("the budget line says {ratio}x for a worst pause of {worst} ns"));
        }
    }

    // No "1 workers" style plurals (a worker path "1 -> 2 -> 1 workers" names the path).
    let words: Vec<&str> = report.split_whitespace().collect();
    for (i, pair) in words.windows(2).enumerate() {
        let plural = ["workers", "members", "partitions", "pauses", "syncs", "records", "orders", "deliveries"];
        let after_arrow = i > 0 && words[i - 1] == "->";
        if pair[0] == "1" && !after_arrow && plural.iter().any(|p| pair[1].trim_end_matches([',', ';', ':']) == *p) {
            return Err(format!("'1 {}' in the report", pair[1]));
        }
    }

    // Rates and sizes with a few significant digits, never four decimals.
    for word in &words {
        let w = word.trim_matches(|c: char| !c.is_ascii_digit() && c != '.');
        if let Some((_, decimals)) = w.split_once('.') {
            if decimals.len() >= 4 && decimals.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!("a number with four decimals: {word:?}"));
            }
        }
    }
    let rate = rows(report, "events/s").first().copied().ok_or("no events/s row")?;
    let figure = rate.split(" events/s").next().unwrap_or("");
    let digits = figure.chars().filter(char::is_ascii_digit).count();
    let number = figure.split(' ').next().is_some_and(|n| n.parse::<f64>().is_ok());
    if !(1..=3).contains(&digits) || !number {
        return Err(format!("the rate is not a number with 1 to 3 significant digits: {rate:?}"));
    }

    // Each figure explained in a line of its own.
    for figure in ["events/s", "durable MB/s", "end-to-end", "scale pauses", "membership", "rebalance pauses", "replay"]
    {
        if !report.lines().any(|l| l.starts_with(&format!("{figure}: "))) {
            return Err(format!("no line explaining {figure:?}"));
        }
    }
    Ok(())
}

#[test]
fn the_report_adds_up_and_reads_well() {
    let temp = tempfile::tempdir().expect("tempdir");
    let bus = temp.path().join("bus");
    let bus = bus.to_str().expect("UTF-8 temp path");
    let report = text(&ok(&["demo", "--dir", bus, "--events", EVENTS], b""));
    if let Err(why) = check_report(&report) {
        panic!("{why}\n{report}");
    }
}

/// A report of the earlier format, verbatim from a run: the checks must refuse it.
#[test]
fn the_checks_refuse_the_earlier_report() {
    let earlier = "\
events            200,000 orders x 48 bytes into 4 partitions (Batch durability, io_uring)
events/s          0.28 M/s made, scored and durable (0.72 s from the first order to the last data sync, 36.40 ms of it held at steps)
durable MB/s      22 MB/s of records (80 bytes each with the header), 881 data syncs p50 225.9 us / p99 19.78 ms
end-to-end        p50 4.30 ms / p99 24.59 ms / p99.9 48.76 ms / max 55.87 ms (made -> delivered to a member, 200,000 deliveries)
scale pauses      risk stage 1 -> 2 -> 3 -> 2 -> 1 workers while orders flowed: 15.57 ms, 15.01 ms, 5.86 ms, 2.92 ms
membership        members 1 and 2 (threads) joined before the first order
membership        member 3 (process 30590) joined at order 50,000 (15.01 ms from start to member)
membership        member 2 (thread) left at order 110,000
rebalance pauses  member 1 (thread): gained 3 partitions after joining, pause p50 2.53 ms / p99 2.80 ms / max 2.80 ms; 85,799 delivered
rebalance pauses  member 2 (thread): gained 2 partitions after joining, pause p50 8.29 ms / p99 8.58 ms / max 8.58 ms; 39,917 delivered
rebalance pauses  member 3 (process 30590): gained 1 partition after joining, pause p50 1.10 ms / p99 1.10 ms / max 1.10 ms, first delivery 7.16 ms after joining mid-stream; 74,284 delivered
delivered         200,000 to the group: 0 duplicates, 0 never delivered, 0 unreadable, lag at end 0
replay            200,000 records from offset 0 of every partition, 1.8 M/s, each checked
verified          200,000 intact, 0 lost, 0 duplicated, 0 corrupt, 0 out of order; checksum matches
";
    assert!(check_report(earlier).is_err());
    // Each defect alone is caught, in a report that is otherwise good.
    let good = "\
events/s          560 k events/s made, scored and durable (0.36 s from the first order to the last data sync)
membership        member 1 (thread) joined before the first order: gained 4 partitions (0, 1, 2, 3): 4 free; settled in 2.38 ms
membership        member 2 (thread) joined before the first order: gained 2 partitions (0, 2): 2 from member 1 (thread); settled in 2.49 ms
membership        member 3 (process 7) joined at order 50,000 (3.93 ms from start to member): gained 1 partition (0): 1 from member 2 (thread); settled in 4.38 ms
membership        member 2 (thread) left at order 110,000: gave up 1 partition (2): member 3 (process 7) gained 1 (2); settled in 2.35 ms
membership        at the end: member 1 (thread) holds 2 (1, 3), member 3 (process 7) holds 2 (0, 2); each of the 4 partitions has exactly one owner, a live member
rebalance pauses  member 1 (thread): gained 0 partitions from other members, no pause; 100,901 delivered
rebalance pauses  member 2 (thread): gained 2 partitions from other members, 2 pauses: 783.9 us, 1.70 ms; 39,825 delivered
rebalance pauses  member 3 (process 7): gained 2 partitions from other members, 1 pause: 618.5 us, first delivery 1.89 ms after joining mid-stream; 59,274 delivered
events/s: x
durable MB/s: x
end-to-end: x
scale pauses: x
membership: x
rebalance pauses: x
replay: x
budget, rebalance pauses (p99 <= 1 ms, DESIGN.md): missed, the worst is 1.70 ms (member 2 (thread)), 1.70x the budget
";
    assert_eq!(check_report(good), Ok(()));
    for (what, from, to) in [
        ("a gainer missing", "gave up 1 partition (2): member 3", "gave up 2 partitions (1, 2): member 3"),
        ("a second owner at the end", "holds 2 (0, 2)", "holds 3 (0, 2, 3)"),
        ("a source missing", "gained 4 partitions (0, 1, 2, 3): 4 free", "gained 4 partitions (0, 1, 2, 3): 3 free"),
        ("pause rows that disagree", "gained 0 partitions from other members", "gained 1 partition from other members"),
        ("a single pause as percentiles", "1 pause: 618.5 us", "1 pause: p50 618.5 us / p99 618.5 us"),
        ("1 workers", "end-to-end: x", "end-to-end: x with 1 workers"),
        ("four decimals", "560 k events/s", "560.1234 k events/s"),
        ("a budget line that does not add up", "1.70x the budget", "1.20x the budget"),
        ("a figure not explained", "replay: x\n", ""),
    ] {
        assert!(good.contains(from), "{what}");
        assert!(check_report(&good.replacen(from, to, 1)).is_err(), "{what} passed the checks");
    }
}
