//! KPI throughput: call records → contacts → per-service interval sums, over millions of
//! generated records (see `scripts/bench-stats.sh`). Prints records/s for classification
//! and aggregation, and for merging the interval records of several nodes.
//!
//! The records are made in-process from one real call record (the answered call of a
//! bundled capture) whose times, outcome and called number are rewritten per record, so
//! the figures measure the statistics, not record generation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use teledge::record::{Outcome, Record};
use teledge::replay::{Replay, ReplaySettings};
use teledge::stats::service::{NumberPattern, ServiceSettings};
use teledge::stats::{Aggregator, Attribution, IntervalClock, Services, StatsSettings};
use teledge::time::Timestamp;

fn main() {
    let records: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let nodes: u64 = 4;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sipp_branch_403_bye.pcap"
    );
    let mut replay = Replay::new(ReplaySettings::default());
    let mut calls = Vec::new();
    let mut sink = |r: Record| {
        if let Record::Call(c) = r {
            calls.push(*c);
        }
    };
    replay
        .read(path, std::fs::File::open(path).unwrap(), &mut sink, |_| {})
        .unwrap();
    replay.finish(&mut sink);
    let template = calls
        .into_iter()
        .find(|c| c.outcome == Outcome::Answered)
        .expect("an answered call");
    let services: Vec<ServiceSettings> = (0..8)
        .map(|i| {
            let mut s = ServiceSettings::default_service();
            s.name = format!("service-{i}");
            s.numbers = vec![NumberPattern::parse(&format!("{i}*"))];
            s
        })
        .collect();
    let settings = StatsSettings {
        clock: IntervalClock::new("Europe/Berlin", 15).unwrap(),
        attribution: Attribution::Event,
        grace: Duration::from_secs(300),
        services: Services::new(services),
    };
    let mut aggregators: Vec<Aggregator> = (0..nodes)
        .map(|n| Aggregator::new(settings.clone(), &format!("node-{n}"), n))
        .collect();
    // One day of calls, evenly spread.
    let day_ns: i64 = 86_400 * 1_000_000_000;
    let start = Timestamp::from_secs_nanos(1_767_225_600, 0).as_nanos();
    let step = day_ns / records as i64;
    let mut call = template.clone();
    let mut numbers: Vec<String> = (0..100).map(|i| format!("{}{:06}", i % 8, i)).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    let mut emitted = Vec::new();
    for i in 0..records {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let arrival = start + step * i as i64;
        let wait_ms = (seed % 120_000) as i64;
        let talk_ms = ((seed >> 20) % 600_000) as i64;
        let at = |ms: i64| Timestamp::from_nanos(arrival + ms * 1_000_000);
        call.invite_time = Some(at(0));
        call.first_message_time = at(0);
        call.ringing_time = Some(at(100));
        call.post_dial_delay_s = Some(0.1);
        call.callee.user = Some(std::mem::take(&mut numbers[(seed % 100) as usize]));
        match seed % 5 {
            0 => {
                call.outcome = Outcome::Abandoned;
                call.answer_time = None;
                call.end_time = Some(at(wait_ms));
                call.time_to_answer_s = None;
                call.talk_duration_s = None;
                call.final_status = Some(487);
            }
            1 => {
                call.outcome = Outcome::Busy;
                call.answer_time = None;
                call.end_time = Some(at(200));
                call.time_to_answer_s = None;
                call.talk_duration_s = None;
                call.final_status = Some(486);
            }
            _ => {
                call.outcome = Outcome::Answered;
                call.answer_time = Some(at(wait_ms));
                call.end_time = Some(at(wait_ms + talk_ms));
                call.time_to_answer_s = Some(wait_ms as f64 / 1000.0);
                call.ring_duration_s = Some((wait_ms - 100).max(0) as f64 / 1000.0);
                call.talk_duration_s = Some(talk_ms as f64 / 1000.0);
                call.final_status = Some(200);
            }
        }
        call.last_message_time = call.end_time.unwrap_or(at(0));
        let now = call.last_message_time;
        let node = &mut aggregators[(i % nodes) as usize];
        node.call(&call, now);
        if i % 4096 == 0 {
            emitted.extend(node.tick(now));
        }
        numbers[(seed % 100) as usize] = call.callee.user.take().unwrap_or_default();
    }
    let end = Timestamp::from_nanos(start + day_ns + 3_600_000_000_000);
    for node in &mut aggregators {
        emitted.extend(node.finish(end));
    }
    let aggregate = started.elapsed();
    let intervals = emitted.len();
    let merge_started = Instant::now();
    let merged = teledge::stats::merge::merge(emitted);
    let merge = merge_started.elapsed();
    let offered: u64 = merged.iter().map(|r| r.sums.offered).sum();
    assert_eq!(offered, records, "every record counted once");
    println!(
        "records {records}  nodes {nodes}  services 8  aggregate {:.2} s  {:.0} records/s",
        aggregate.as_secs_f64(),
        records as f64 / aggregate.as_secs_f64()
    );
    println!(
        "interval records {intervals} (revisions included) merged into {} in {:.3} s",
        merged.len(),
        merge.as_secs_f64()
    );
}
