//! Service statistics: KPIs over hand-built contacts whose expected figures are computed
//! here, by hand, from the reference's formulas (never read from teledge); interval edges
//! (a call spanning two intervals, a late call revising a closed interval, DST days in
//! Europe/Berlin, a +05:45 zone); merging per-node interval records equals computing over
//! all calls at once (property test).

use std::time::Duration;

use proptest::prelude::*;
use teledge::record::interval::IntervalRecord;
use teledge::stats::contact::{Contact, ContactOutcome, HungUp, SipFacts};
use teledge::stats::kpi::kpis;
use teledge::stats::{
    Aggregator, Attribution, IntervalClock, ServiceSettings, Services, StatsSettings,
};
use teledge::time::Timestamp;

/// 2026-01-05T10:00:00Z, a Monday.
const T0: i64 = 1_767_607_200;

fn at(secs_after_t0: f64) -> Timestamp {
    Timestamp::from_nanos(((T0 as f64 + secs_after_t0) * 1e9).round() as i64)
}

fn utc(t: &str) -> Timestamp {
    let ts: jiff::Timestamp = t.parse().unwrap();
    Timestamp::from_nanos(ts.as_nanosecond() as i64)
}

/// A contact of service 0 arriving `arrival` seconds after T0.
fn contact(arrival: f64, outcome: ContactOutcome, wait_s: f64, talk_s: f64) -> Contact {
    let answered = outcome == ContactOutcome::Answered;
    let end = arrival + wait_s + if answered { talk_s } else { 0.0 };
    Contact {
        service: 0,
        arrival: at(arrival),
        end: at(end),
        outcome,
        sip_outcome: match outcome {
            ContactOutcome::Answered => "answered",
            ContactOutcome::Abandoned => "abandoned",
            _ => "busy",
        },
        answer_time: answered.then(|| at(arrival + wait_s)),
        wait_ms: Some((wait_s * 1000.0) as u64),
        ring_ms: None,
        talk_ms: answered.then_some((talk_s * 1000.0) as u64),
        hold_ms: answered.then_some(0),
        wrap_up_ms: None,
        rona: 0,
        transferred: false,
        hung_up: answered.then_some(HungUp::Caller),
        mos_centi: None,
        sip: None,
        from_queue: false,
    }
}

fn settings(zone: &str, minutes: u32, attribution: Attribution) -> StatsSettings {
    StatsSettings {
        clock: IntervalClock::new(zone, minutes).unwrap(),
        attribution,
        grace: Duration::from_secs(300),
        services: Services::default(),
    }
}

fn kpi(record: &IntervalRecord, name: &str) -> Option<f64> {
    kpis(&record.sums)
        .into_iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("no KPI {name}"))
        .value
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

/// The reference's worked example: of 100 offered, 70 answered within T, 10 abandoned within
/// T, 20 beyond T → Cisco ignore 77.8 %, negative 70 %, positive 80 %; Asterisk SL and SL2
/// by their formulas; short abandons out of Cisco's figures, inside Asterisk's SL2.
#[test]
fn service_levels_of_the_worked_example_in_every_variant() {
    let mut agg = Aggregator::new(settings("UTC", 15, Attribution::Event), "n1", 1);
    let now = at(3600.0);
    for i in 0..70 {
        agg.contact(
            &contact(60.0 + f64::from(i), ContactOutcome::Answered, 10.0, 100.0),
            now,
        );
    }
    for i in 0..10 {
        agg.contact(
            &contact(200.0 + f64::from(i), ContactOutcome::Abandoned, 10.0, 0.0),
            now,
        );
    }
    for i in 0..20 {
        agg.contact(
            &contact(300.0 + f64::from(i), ContactOutcome::Answered, 40.0, 100.0),
            now,
        );
    }
    let records = agg.finish(now);
    let r: Vec<_> = records.iter().filter(|r| r.sums.offered > 0).collect();
    assert_eq!(r.len(), 1, "one interval holds every contact");
    let r = r[0];
    assert_eq!(r.sums.offered, 100);
    assert!(close(kpi(r, "sl_cisco_ignore"), 70.0 / 90.0 * 100.0)); // 77.8 %
    assert!(close(kpi(r, "sl_cisco_negative"), 70.0));
    assert!(close(kpi(r, "sl_cisco_positive"), 80.0));
    assert!(close(kpi(r, "sl_asterisk"), 70.0 / 90.0 * 100.0));
    assert!(close(kpi(r, "sl2_asterisk"), 80.0));
    assert!(close(kpi(r, "abandon_rate"), 10.0));
    // ASA = (70 × 10 s + 20 × 40 s) / 90 answered.
    assert!(close(kpi(r, "asa_s"), 1500.0 / 90.0));
    assert!(close(kpi(r, "longest_wait_s"), 40.0));
    assert!(close(kpi(r, "aht_s"), 100.0));
    // Waits of 10 s fall in the (8, 30] bucket, of 40 s in (30, 60].
    assert_eq!(r.sums.wait_answered_buckets[..3], [0, 70, 20]);
    assert_eq!(r.sums.wait_abandoned_buckets[..2], [0, 10]);

    // Five short abandons (2 s < 5 s) more: Cisco's figures leave them out, Asterisk's SL2
    // counts them as abandoned within the threshold.
    let mut agg = Aggregator::new(settings("UTC", 15, Attribution::Event), "n1", 1);
    for i in 0..70 {
        agg.contact(
            &contact(60.0 + f64::from(i), ContactOutcome::Answered, 10.0, 100.0),
            now,
        );
    }
    for i in 0..10 {
        agg.contact(
            &contact(200.0 + f64::from(i), ContactOutcome::Abandoned, 10.0, 0.0),
            now,
        );
    }
    for i in 0..20 {
        agg.contact(
            &contact(300.0 + f64::from(i), ContactOutcome::Answered, 40.0, 100.0),
            now,
        );
    }
    for i in 0..5 {
        agg.contact(
            &contact(400.0 + f64::from(i), ContactOutcome::Abandoned, 2.0, 0.0),
            now,
        );
    }
    let records = agg.finish(now);
    let r = records.iter().find(|r| r.sums.offered > 0).unwrap();
    assert_eq!((r.sums.offered, r.sums.short_abandoned), (105, 5));
    assert!(close(kpi(r, "sl_cisco_ignore"), 70.0 / 90.0 * 100.0));
    assert!(close(kpi(r, "sl_cisco_negative"), 70.0));
    assert!(close(kpi(r, "sl_cisco_positive"), 80.0));
    assert!(close(kpi(r, "sl2_asterisk"), 85.0 / 105.0 * 100.0));
    assert!(close(kpi(r, "abandon_rate"), 10.0));
}

/// Arrival 10:14:50, answered 10:15:20 (30 s wait), hung up 10:16:00. By event time the
/// contact counts where its threshold expired (10:15:10, before the answer): the 10:15
/// interval; by arrival, 10:00. Its concurrency runs over both either way.
#[test]
fn a_call_spanning_two_intervals_counts_once_and_is_active_in_both() {
    let c = contact(890.0, ContactOutcome::Answered, 30.0, 40.0);
    for (attribution, counted_in) in [(Attribution::Event, 900.0), (Attribution::Arrival, 0.0)] {
        let mut agg = Aggregator::new(settings("UTC", 15, attribution), "n1", 1);
        agg.contact(&c, at(2000.0));
        let records = agg.finish(at(4000.0));
        assert_eq!(records.len(), 2, "{attribution:?}");
        let first = &records[0];
        let second = &records[1];
        assert_eq!(first.interval_start, at(0.0));
        assert_eq!(second.interval_start, at(900.0));
        assert_eq!(first.interval_end, at(900.0));
        // Active from 10:14:50 to 10:16:00: 10 s of the first, 60 s of the second.
        assert_eq!(first.sums.concurrency, vec![[890, 10, 1]]);
        assert_eq!(second.sums.concurrency, vec![[0, 60, 1]]);
        let counted: Vec<_> = records.iter().filter(|r| r.sums.offered == 1).collect();
        assert_eq!(counted.len(), 1);
        assert_eq!(counted[0].interval_start, at(counted_in), "{attribution:?}");
        assert_eq!(counted[0].sums.answered_within_t, 0, "30 s > T = 20 s");
    }
}

/// An interval is emitted a grace after its end (revision 0); a call of it that ends
/// later re-emits it (revision 1, both contacts), once.
#[test]
fn a_late_call_revises_its_closed_interval() {
    let mut agg = Aggregator::new(settings("UTC", 15, Attribution::Arrival), "n1", 7);
    agg.contact(
        &contact(60.0, ContactOutcome::Answered, 5.0, 60.0),
        at(130.0),
    );
    assert!(
        agg.tick(at(900.0)).is_empty(),
        "open until its grace has passed"
    );
    assert!(agg.tick(at(900.0 + 299.0)).is_empty());
    let first = agg.tick(at(1200.0));
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].revision, first[0].closed, first[0].sums.offered),
        (0, true, 1)
    );
    assert!(agg.tick(at(1201.0)).is_empty(), "emitted once");
    // Arrived 10:05, talked 20 minutes: its record comes at 10:25.
    agg.contact(
        &contact(300.0, ContactOutcome::Answered, 10.0, 1190.0),
        at(1500.0),
    );
    let revised = agg.tick(at(1500.0));
    let of_first: Vec<_> = revised
        .iter()
        .filter(|r| r.interval_start == at(0.0))
        .collect();
    assert_eq!(of_first.len(), 1, "{revised:#?}");
    assert_eq!((of_first[0].revision, of_first[0].sums.offered), (1, 2));
    // A active 10:01:00–10:02:05, B from 10:05:00 on: never together.
    assert_eq!(
        of_first[0].sums.concurrency,
        vec![[60, 65, 1], [300, 600, 1]]
    );
    assert_eq!(of_first[0].sums.peak_concurrent(), 1);
    assert_ne!(of_first[0].record_id, first[0].record_id);
    assert!(agg
        .tick(at(1501.0))
        .iter()
        .all(|r| r.interval_start != at(0.0)));
}

fn count_intervals(
    clock: &IntervalClock,
    from: Timestamp,
    to: Timestamp,
) -> Vec<(Timestamp, String)> {
    let mut t = from;
    let mut out = Vec::new();
    while t < to {
        let (start, end) = clock.interval_of(t);
        assert_eq!(start, t, "intervals tile the day");
        assert!(end > start);
        out.push((start, clock.local(start)));
        t = end;
    }
    assert_eq!(t, to);
    out
}

/// 29 March 2026 (clocks 02:00 → 03:00) has 23 hours, 92 quarter-hours; 25 October 2026
/// (03:00 → 02:00) 25 hours, 100, with 02:00–03:00 twice, told apart by their offset.
#[test]
fn daylight_saving_days_in_berlin_have_92_and_100_quarter_hours() {
    let clock = IntervalClock::new("Europe/Berlin", 15).unwrap();
    let spring = count_intervals(
        &clock,
        utc("2026-03-28T23:00:00Z"),
        utc("2026-03-29T22:00:00Z"),
    );
    assert_eq!(spring.len(), 92);
    assert_eq!(spring[0].1, "2026-03-29T00:00:00+01:00");
    assert!(spring.iter().any(|(_, l)| l == "2026-03-29T01:45:00+01:00"));
    assert!(spring.iter().any(|(_, l)| l == "2026-03-29T03:00:00+02:00"));
    assert!(!spring.iter().any(|(_, l)| l.starts_with("2026-03-29T02:")));
    let autumn = count_intervals(
        &clock,
        utc("2026-10-24T22:00:00Z"),
        utc("2026-10-25T23:00:00Z"),
    );
    assert_eq!(autumn.len(), 100);
    assert!(autumn.iter().any(|(_, l)| l == "2026-10-25T02:00:00+02:00"));
    assert!(autumn.iter().any(|(_, l)| l == "2026-10-25T02:00:00+01:00"));
    // Hours: 23 and 25.
    let hourly = IntervalClock::new("Europe/Berlin", 60).unwrap();
    assert_eq!(
        count_intervals(
            &hourly,
            utc("2026-03-28T23:00:00Z"),
            utc("2026-03-29T22:00:00Z")
        )
        .len(),
        23
    );
    assert_eq!(
        count_intervals(
            &hourly,
            utc("2026-10-24T22:00:00Z"),
            utc("2026-10-25T23:00:00Z")
        )
        .len(),
        25
    );
}

/// Kathmandu is UTC+05:45: quarter-hours and hours align on the local clock, so a local
/// hour starts at :15 UTC.
#[test]
fn a_plus_0545_zone_aligns_on_its_local_clock() {
    let quarter = IntervalClock::new("Asia/Kathmandu", 15).unwrap();
    // 04:20Z is 10:05 local: the quarter 10:00–10:15 local, 04:15Z–04:30Z.
    let (start, end) = quarter.interval_of(utc("2026-01-05T04:20:00Z"));
    assert_eq!(
        (start, end),
        (utc("2026-01-05T04:15:00Z"), utc("2026-01-05T04:30:00Z"))
    );
    assert_eq!(quarter.local(start), "2026-01-05T10:00:00+05:45");
    let hour = IntervalClock::new("Asia/Kathmandu", 60).unwrap();
    let (start, end) = hour.interval_of(utc("2026-01-05T04:20:00Z"));
    assert_eq!(
        (start, end),
        (utc("2026-01-05T04:15:00Z"), utc("2026-01-05T05:15:00Z"))
    );
    let half = IntervalClock::new("Asia/Kathmandu", 30).unwrap();
    assert_eq!(
        half.interval_of(utc("2026-01-05T04:50:00Z")).0,
        utc("2026-01-05T04:45:00Z")
    );
    let day = count_intervals(
        &quarter,
        utc("2026-01-04T18:15:00Z"),
        utc("2026-01-05T18:15:00Z"),
    );
    assert_eq!(day.len(), 96);
    assert_eq!(day[0].1, "2026-01-05T00:00:00+05:45");
}

fn arb_contact(services: usize) -> impl Strategy<Value = (usize, Contact)> {
    (
        0..3usize,
        0..services,
        0.0..7200.0f64,
        0..4u8,
        0.0..400.0f64,
        0.0..2000.0f64,
        proptest::option::of(100u32..450),
        proptest::option::of((proptest::option::of(100u16..700), 0u64..30_000)),
    )
        .prop_map(
            move |(node, service, arrival, kind, wait, talk, mos, sip)| {
                let outcome = match kind {
                    0 => ContactOutcome::Answered,
                    1 => ContactOutcome::Abandoned,
                    2 => ContactOutcome::NotConnected,
                    _ => ContactOutcome::Excluded,
                };
                let wait = (wait * 1000.0).round() / 1000.0;
                let mut c = contact(arrival, outcome, wait, talk);
                c.service = service;
                c.mos_centi = mos;
                c.sip = sip.map(|(status, pdd)| SipFacts {
                    final_status: status,
                    completed_ms: None,
                    pdd_ms: Some(pdd),
                    sdd_ms: None,
                });
                (node, c)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Each node's aggregator over its calls, the records merged, equals one aggregator over
    /// every call: the sums (counts, totals, maxima, histograms, concurrency) are exact.
    #[test]
    fn merging_per_node_interval_records_equals_computing_over_all_calls(
        contacts in proptest::collection::vec(arb_contact(2), 1..120),
        minutes in prop_oneof![Just(15u32), Just(30), Just(60)],
        by_arrival in any::<bool>(),
    ) {
        let mut s = settings("Europe/Berlin", minutes, if by_arrival { Attribution::Arrival } else { Attribution::Event });
        let mut sales = ServiceSettings::default_service();
        sales.name = "sales".into();
        sales.sl_threshold_s = 30;
        let mut support = ServiceSettings::default_service();
        support.name = "support".into();
        support.short_abandon_s = 10;
        s.services = Services::new(vec![sales, support]);
        let now = at(20_000.0);
        let mut all = Aggregator::new(s.clone(), "all", 1);
        let mut nodes: Vec<Aggregator> =
            (0..3).map(|n| Aggregator::new(s.clone(), &format!("n{n}"), 100 + n)).collect();
        for (node, c) in &contacts {
            all.contact(c, now);
            nodes[*node].contact(c, now);
        }
        let whole = teledge::stats::merge::merge(all.finish(now));
        let merged = teledge::stats::merge::merge(nodes.iter_mut().flat_map(|a| a.finish(now)));
        prop_assert_eq!(whole.len(), merged.len());
        for (w, m) in whole.iter().zip(&merged) {
            prop_assert_eq!((&w.service, w.interval_start), (&m.service, m.interval_start));
            prop_assert_eq!(&w.sums, &m.sums);
        }
    }
}

/// The daemon classifies calls into services on their clear called number, shows the open
/// interval in its metrics, and at shutdown spools the open interval (`final: false`), which
/// reaches the collector through the uplink like any record; the call records there are
/// pseudonymised, the interval record names its service.
#[test]
fn the_daemon_counts_contacts_per_service_shows_the_open_interval_and_forwards_it() {
    use crate::daemon::{agent_config, free_port, http_get};
    use crate::daemon_in_process::{ended_call_with_rtcp, open_call, runtime, wait_until};
    use crate::uplink::{collector, pki, stored};
    use teledge::daemon::Daemon;

    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let metrics_port = free_port();
    let config_path = agent_config(
        &pki,
        dir.path(),
        c.port,
        "[hep]\nudp = \"127.0.0.1:0\"\n\n[stats]\ntime_zone = \"Asia/Kathmandu\"\n\n\
         [[service]]\nname = \"other\"\nnumbers = [\"300\"]\n\n\
         [[service]]\nname = \"sales\"\nnumbers = [\"2*\"]\nsl_threshold_s = 15\n",
        Some(metrics_port),
    );
    let config = teledge::config::agent::load(&config_path).unwrap();
    let runtime = runtime();
    let daemon = runtime
        .block_on(Daemon::start(config, &config_path))
        .unwrap();
    let udp = daemon.hep_addrs().unwrap().udp.unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Both calls go to 200 (the To user): the `sales` service.
    for frame in ended_call_with_rtcp("ended@stats")
        .into_iter()
        .chain(open_call("open@stats"))
    {
        sock.send_to(&frame, udp).unwrap();
    }
    // A phone registering through a challenge: one attempt, registered (RFC 6076 RRD).
    {
        use crate::daemon_in_process::{hep, message, CALLEE, CALLER};
        let reg = |start: &str, cseq: u32, from_phone: bool| {
            let (src, dst) = if from_phone {
                (CALLER, CALLEE)
            } else {
                (CALLEE, CALLER)
            };
            hep(
                1,
                src,
                dst,
                &message(start, "reg@stats", "REGISTER", cseq, !from_phone),
                None,
            )
        };
        for frame in [
            reg("REGISTER sip:pbx SIP/2.0", 1, true),
            reg("SIP/2.0 401 Unauthorized", 1, false),
            reg("REGISTER sip:pbx SIP/2.0", 2, true),
            reg("SIP/2.0 200 OK", 2, false),
        ] {
            sock.send_to(&frame, udp).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_until("the ended call counted in the open interval", || {
        daemon
            .metrics()
            .interval_contacts
            .with(&["sales", "answered"])
            .get()
            == 1
    });
    let text = http_get(metrics_port, "/metrics");
    for line in [
        "teledge_interval_contacts{service=\"sales\",figure=\"offered\"} 1",
        "teledge_interval_contacts{service=\"sales\",figure=\"answered_within_t\"} 1",
        "teledge_interval_contacts{service=\"sales\",figure=\"outcome_answered\"} 1",
        "teledge_interval_contacts{service=\"other\",figure=\"offered\"} 0",
        // No RTP, so no MOS: every bucket empty.
        "teledge_interval_mos_calls{service=\"sales\",le=\"3.60\"} 0",
        "teledge_interval_mos_calls{service=\"sales\",le=\"+Inf\"} 0",
        "teledge_interval_peak_concurrent_contacts{service=\"sales\"} 1",
        // The node's RFC 6076 section: the ended call, whatever its service.
        "teledge_interval_node_sip{figure=\"invites\"} 1",
        "teledge_interval_node_sip{figure=\"established\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    let summary = runtime.block_on(daemon.shutdown());
    assert_eq!(
        summary.records_spooled, summary.records_produced,
        "{summary:?}"
    );
    let intervals: Vec<IntervalRecord> = stored(&out)
        .into_iter()
        .filter(|l| l["record"]["type"] == "interval")
        .map(|l| serde_json::from_value(l["record"].clone()).unwrap())
        .collect();
    let sales: Vec<_> = intervals.iter().filter(|r| r.service == "sales").collect();
    let sales_offered: u64 = sales.iter().map(|r| r.sums.offered).sum();
    // The ended call and the open one (answered, still talking at shutdown): both answered
    // at once, within T.
    assert_eq!(sales_offered, 2, "{intervals:#?}");
    let r = sales.iter().find(|r| r.sums.offered > 0).unwrap();
    assert_eq!((r.sums.answered, r.sums.answered_within_t), (2, 2));
    assert_eq!(r.sums.handled, 1, "only the ended call's talk is known");
    assert!(!r.closed, "the open interval, spooled at shutdown");
    assert_eq!((r.node.as_str(), r.sl_threshold_s), ("edge-01", 15));
    assert!(r.local_start.ends_with("+05:45"), "{}", r.local_start);
    assert!(intervals
        .iter()
        .filter(|r| r.service == "other")
        .all(|r| r.sums.offered == 0));
    // The registration: a teledge.registrations/1 record at the collector, and summed into
    // the first service's interval (registrations belong to no service).
    let attempts: u64 = stored(&out)
        .iter()
        .filter(|l| l["record"]["type"] == "registrations")
        .map(|l| l["record"]["registered"].as_u64().unwrap())
        .sum();
    assert_eq!(attempts, 1);
    let first: Vec<_> = intervals.iter().filter(|r| r.service == "other").collect();
    let registered: u64 = first.iter().map(|r| r.sums.sip.registered).sum();
    let rrd_ms: u64 = first.iter().map(|r| r.sums.sip.rrd_ms).sum();
    assert_eq!(registered, 1, "{intervals:#?}");
    // Three sends 20 ms apart on loopback, timed by the daemon's clock for HEP input
    // (which may step by its tick): well under a second.
    assert!(rrd_ms < 1000, "{rrd_ms}");
    assert_eq!(
        sales.iter().map(|r| r.sums.sip.registrations).sum::<u64>(),
        0
    );
    // The node's RFC 6076 section, in the first service (`other`) although both calls are
    // `sales` contacts: the same two INVITEs as `sales`' own section, and the registration.
    let node_invites: u64 = first.iter().map(|r| r.sums.node_sip.invites).sum();
    let sales_invites: u64 = sales.iter().map(|r| r.sums.sip.invites).sum();
    assert_eq!((node_invites, sales_invites), (2, 2), "{intervals:#?}");
    assert_eq!(
        first
            .iter()
            .map(|r| r.sums.node_sip.registered)
            .sum::<u64>(),
        1
    );
    assert!(sales.iter().all(|r| r.sums.node_sip.invites == 0));
    // The call records at the collector are pseudonymised: no clear number "200".
    for line in stored(&out)
        .iter()
        .filter(|l| l["record"]["type"] == "call")
    {
        assert_ne!(line["record"]["callee"]["user"], "200", "{line:#}");
    }
}

/// What TShark says about the calls of a capture, and the figures computed from it by hand:
/// (offered, answered, not connected, Σ wait of answered in ms, answered within 20 s,
/// final statuses).
struct TsharkCalls {
    offered: u64,
    answered: u64,
    wait_answered_ms: u64,
    talk_ms: u64,
    statuses: Vec<u16>,
    pdd_ms: Vec<f64>,
}

fn tshark_calls(capture: &str) -> TsharkCalls {
    let out = std::process::Command::new("tshark")
        .args(["-r"])
        .arg(crate::support::data_path(capture))
        .args([
            "-Y",
            "sip",
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "sip.Call-ID",
        ])
        .args([
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
            "-e",
            "sip.CSeq.method",
        ])
        .output()
        .expect("tshark is required: run ./scripts/test.sh, which installs it");
    assert!(out.status.success());
    #[derive(Default)]
    struct Call {
        invite: Option<f64>,
        ringing: Option<f64>,
        answer: Option<f64>,
        bye: Option<f64>,
        status: Option<u16>,
    }
    let mut calls: std::collections::BTreeMap<String, Call> = Default::default();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (t, id, method, status, cseq) = (f[0].parse::<f64>().unwrap(), f[1], f[2], f[3], f[4]);
        if cseq != "INVITE" && method != "BYE" {
            continue;
        }
        let call = calls.entry(id.to_owned()).or_default();
        match (method, status.parse::<u16>().ok()) {
            ("INVITE", _) => {
                call.invite.get_or_insert(t);
            }
            ("BYE", _) => {
                call.bye.get_or_insert(t);
            }
            (_, Some(180 | 183)) if cseq == "INVITE" => {
                call.ringing.get_or_insert(t);
            }
            (_, Some(s)) if cseq == "INVITE" && s >= 200 => {
                call.status.get_or_insert(s);
                if (200..300).contains(&s) {
                    call.answer.get_or_insert(t);
                }
            }
            _ => {}
        }
    }
    let calls: Vec<&Call> = calls.values().filter(|c| c.invite.is_some()).collect();
    let ms = |a: f64, b: f64| ((a - b) * 1000.0).round() as u64;
    TsharkCalls {
        offered: calls.len() as u64,
        answered: calls.iter().filter(|c| c.answer.is_some()).count() as u64,
        wait_answered_ms: calls
            .iter()
            .filter_map(|c| Some(ms(c.answer?, c.invite?)))
            .sum(),
        talk_ms: calls
            .iter()
            .filter_map(|c| Some(ms(c.bye?, c.answer?)))
            .sum(),
        statuses: calls.iter().filter_map(|c| c.status).collect(),
        pdd_ms: calls
            .iter()
            .filter_map(|c| {
                Some((c.ringing?.min(c.answer.unwrap_or(f64::MAX)) - c.invite?) * 1000.0)
            })
            .collect(),
    }
}

fn report(args: &[&str], extra: &[&std::path::Path]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
        .arg("report")
        .args(args)
        .args(extra)
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The one interval of a report that holds contacts.
fn with_contacts(lines: &[serde_json::Value]) -> &serde_json::Value {
    let busy: Vec<_> = lines.iter().filter(|l| l["sums"]["offered"] != 0).collect();
    assert_eq!(busy.len(), 1, "{lines:#?}");
    busy[0]
}

/// Checks a report line against TShark's view of the capture, `times` copies of it.
fn assert_matches_tshark(line: &serde_json::Value, t: &TsharkCalls, times: u64) {
    let s = &line["sums"];
    assert_eq!(s["offered"], t.offered * times, "{line:#}");
    assert_eq!(s["answered"], t.answered * times);
    assert_eq!(s["not_connected"], (t.offered - t.answered) * times);
    assert_eq!(s["abandoned"], 0);
    // Milliseconds rounded per call on both sides: within a millisecond per call.
    let wait = s["wait_answered_ms"].as_u64().unwrap() as i64;
    assert!((wait - (t.wait_answered_ms * times) as i64).abs() <= (t.answered * times) as i64);
    let talk = s["talk_ms"].as_u64().unwrap() as i64;
    assert!((talk - (t.talk_ms * times) as i64).abs() <= (t.answered * times) as i64);
    let sip = &s["sip"];
    assert_eq!(sip["invites"], t.offered * times);
    let established = t
        .statuses
        .iter()
        .filter(|s| (200..300).contains(*s))
        .count() as u64;
    assert_eq!(sip["established"], established * times);
    let effective = t
        .statuses
        .iter()
        .filter(|s| [200, 480, 486, 600, 603].contains(*s))
        .count() as u64;
    let ineffective = t
        .statuses
        .iter()
        .filter(|s| [408, 500, 503, 504].contains(*s))
        .count() as u64;
    let k = &line["kpis"];
    let pct = |n: u64, d: u64| n as f64 / d as f64 * 100.0;
    let near = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-9;
    assert!(
        near(&k["sip_ser"]["value"], pct(established, t.offered)),
        "{k:#}"
    );
    assert!(
        near(&k["sip_seer"]["value"], pct(effective, t.offered)),
        "{k:#}"
    );
    assert!(
        near(&k["sip_isa"]["value"], pct(ineffective, t.offered)),
        "{k:#}"
    );
    assert!(
        near(&k["sl_asterisk"]["value"], 100.0),
        "every answer within 20 s: {k:#}"
    );
    assert!(
        near(&k["sl_cisco_negative"]["value"], pct(t.answered, t.offered)),
        "{k:#}"
    );
    assert_eq!(sip["pdd_count"], t.pdd_ms.len() as u64 * times);
    // Every post-dial delay here is under 100 ms: the first bucket, so the median's bound.
    assert!(t.pdd_ms.iter().all(|d| *d <= 100.0));
    assert!(near(&k["sip_pdd_p50_s"]["value"], 0.1), "{k:#}");
    assert!(k["sl_cisco_ignore"]["formula"]
        .as_str()
        .unwrap()
        .contains("Cisco"));
}

/// `teledge report` over a bundled capture (ten SIPp calls: nine refused with 403, one
/// answered): every figure as computed here from TShark's reading of the capture.
#[test]
fn teledge_report_on_a_bundled_capture_matches_figures_computed_from_tshark() {
    let t = tshark_calls("sipp_branch_403_bye.pcap");
    assert_eq!(
        (t.offered, t.answered),
        (10, 1),
        "the capture's provenance says so"
    );
    let lines = report(
        &[],
        &[&crate::support::data_path("sipp_branch_403_bye.pcap")],
    );
    let line = with_contacts(&lines);
    assert_matches_tshark(line, &t, 1);
    assert_eq!(line["service"], "default");
    assert_eq!(line["time_zone"], "UTC");
    // CSV and the table carry the same intervals.
    let csv = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["report", "--format", "csv"])
        .arg(crate::support::data_path("sipp_branch_403_bye.pcap"))
        .output()
        .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert!(header.contains(&"sl_cisco_positive") && header.contains(&"sip_seer"));
    let offered = header.iter().position(|h| *h == "offered").unwrap();
    let busy: Vec<Vec<&str>> = rows
        .map(|r| r.split(',').collect::<Vec<_>>())
        .filter(|r| r[offered] != "0")
        .collect();
    assert_eq!(busy.len(), 1, "{csv}");
    assert_eq!(busy[0].len(), header.len());
    assert_eq!(busy[0][offered], "10");
}

/// Two nodes forward the same capture (`replay --forward` with a `[stats]` section) to one
/// collector over mutual TLS; `teledge report --collected` merges their interval records:
/// twice TShark's figures, both nodes named.
#[test]
fn teledge_report_merges_the_nodes_of_a_collector_output_directory() {
    use crate::uplink::{collector, forward_config, pki};
    let t = tshark_calls("sipp_branch_403_bye.pcap");
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("collected");
    let c = collector(&pki, "collector", &out);
    for node in ["edge-01", "edge-02"] {
        let config = forward_config(&pki, &work.path().join(node), node, node, "ca.pem", c.port);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("\n[stats]\ninterval_minutes = 30\ntime_zone = \"Europe/Berlin\"\n");
        std::fs::write(&config, text).unwrap();
        let result = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["replay", "--no-progress", "--forward", "--config"])
            .arg(&config)
            .arg(crate::support::data_path("sipp_branch_403_bye.pcap"))
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    let lines = report(&["--collected"], &[&out]);
    let line = with_contacts(&lines);
    assert_matches_tshark(line, &t, 2);
    assert_eq!(line["node"], "edge-01+edge-02");
    assert_eq!(line["interval_minutes"], 30);
    assert!(
        line["local_start"].as_str().unwrap().ends_with("+01:00"),
        "{line:#}"
    );
    // A line that is not JSON is named and makes the exit code 1, the rest reported.
    let node_dir = out.join("edge-01");
    let file = std::fs::read_dir(&node_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&file, text).unwrap();
    let damaged = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["report", "--collected"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(damaged.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&damaged.stderr).contains(&file.display().to_string()));
    assert!(String::from_utf8_lossy(&damaged.stdout).contains("default"));
}

/// A queue fact is the authority for the queue figures: the PBX answered the SIP call (to
/// queue it), but the caller abandoned after 12 s in the queue; another flowed out after
/// 65 s (not an abandon); a third was connected after 8 s, talked 100 s and wrapped up
/// 30 s. Service = the queue's name.
#[test]
fn queue_facts_are_the_authority_for_queue_figures() {
    use teledge::stats::{FlowOut, QueueEnd, QueueFact, QueueHangup};
    let mut s = settings("UTC", 15, Attribution::Arrival);
    let mut sales = ServiceSettings::default_service();
    sales.name = "sales".into();
    s.services = Services::new(vec![sales]);
    let mut agg = Aggregator::new(s, "n1", 1);
    let fact = |id: &str, enter: f64, end: QueueEnd, wait: f64| QueueFact {
        queue_call_id: id.into(),
        sip_call_id: None,
        queue: "sales".into(),
        caller: None,
        agent: None,
        enter_time: at(enter),
        end,
        end_time: Some(at(enter + wait)),
        wait_s: Some(wait),
        ring_s: None,
        rona: 0,
        talk_s: None,
        wrap_up_s: None,
        hangup_by: None,
        transferred: false,
    };
    // The SIP leg, answered by the PBX at once: the queue says abandoned.
    let (calls, _) = crate::support::replay("sipp_branch_403_bye.pcap");
    let answered_leg = calls
        .iter()
        .find(|c| c.outcome == teledge::record::Outcome::Answered)
        .unwrap();
    let now = at(3000.0);
    agg.queue_fact(
        &fact("q1", 60.0, QueueEnd::Abandoned, 12.0),
        Some(answered_leg),
        now,
    );
    agg.queue_fact(
        &fact("q2", 70.0, QueueEnd::FlowOut(FlowOut::Timeout), 65.0),
        None,
        now,
    );
    let mut connected = fact("q3", 80.0, QueueEnd::Answered, 8.0);
    connected.rona = 2;
    connected.talk_s = Some(100.0);
    connected.wrap_up_s = Some(30.0);
    connected.hangup_by = Some(QueueHangup::Agent);
    agg.queue_fact(&connected, None, now);
    let mut other = fact("q4", 90.0, QueueEnd::Answered, 1.0);
    other.queue = "billing".into();
    agg.queue_fact(&other, None, now);
    assert_eq!(agg.counters().unclassified, 1, "no service named billing");
    let records = agg.finish(now);
    let r = records.iter().find(|r| r.sums.offered > 0).unwrap();
    let sums = &r.sums;
    assert_eq!(
        (
            sums.offered,
            sums.answered,
            sums.abandoned,
            sums.flowed_out,
            sums.from_queue
        ),
        (3, 1, 1, 1, 3)
    );
    assert_eq!(
        (sums.wait_abandoned_ms, sums.wait_answered_ms),
        (12_000, 8_000)
    );
    assert_eq!((sums.abandoned_within_t, sums.answered_within_t), (1, 1));
    assert_eq!(
        (sums.rona, sums.hangup_callee, sums.longest_wait_ms),
        (2, 1, 65_000)
    );
    // AHT = (100 s talk + 30 s wrap-up) / 1 handled.
    assert!(close(kpi(r, "aht_s"), 130.0));
    // Cisco negative: 1 answered within T of 3 offered; ignore: 1 / (3 − 1 abandoned in T).
    assert!(close(kpi(r, "sl_cisco_negative"), 100.0 / 3.0));
    assert!(close(kpi(r, "sl_cisco_ignore"), 50.0));
    // The SIP facts stay the SIP leg's.
    assert_eq!((sums.sip.invites, sums.sip.established), (1, 1));
}

/// Live SIPp calls with exact timings on a loopback of their own, captured with dumpcap and
/// reported by `teledge report` with T = 3 s and short abandons under 1 s:
/// - a callee answering after 1 s (within T) and one after 4 s (beyond T), the caller
///   hanging up 1 s after the answer;
/// - a caller cancelling after 0.5 s (a short abandon) and one after 2 s (within T), the
///   callee ringing and never answering;
/// - a busy callee (486).
///
/// Figures by hand: offered 5, answered 2, abandoned 2 (1 short), not connected 1;
/// answered within T 1, abandoned within T 2 (the short one included); Cisco negative
/// 1 / (5 − 1) = 25 %, ignore 1 / (4 − 1) = 33.3 %, positive (1 + 1) / 4 = 50 %; Asterisk SL
/// 1 / 2 = 50 %, SL2 (1 + 2) / (2 + 2) = 75 %; ASA ≈ (1 + 4) / 2 s.
#[test]
fn live_sipp_calls_with_exact_timings_give_the_figures_computed_by_hand() {
    crate::live::in_fresh_netns(live_sipp_calls);
}

fn live_sipp_calls() {
    use std::process::{Command, Stdio};
    crate::daemon::require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let scenarios = crate::support::data_path("sipp");
    let pcap = dir.path().join("calls.pcap");
    let mut dumpcap = Command::new("dumpcap")
        .args(["-i", "lo", "-P", "-f", "udp", "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dumpcap is needed (Debian package tshark)");
    {
        use std::io::BufRead;
        let mut err = std::io::BufReader::new(dumpcap.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("Capturing on") {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "dumpcap did not start"
            );
        }
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    }
    let sipp = |args: Vec<String>| {
        Command::new("sipp")
            .args(&args)
            .args(["-i", "127.0.0.1", "-nostdin"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let file = |name: &str| scenarios.join(name).display().to_string();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    // Callees: answering after 1 s (port 5071) and 4 s (5072), ringing forever (5073), busy
    // (5074).
    let mut callees = vec![
        sipp(s(&[
            "-sf",
            &file("uas_answer_after.xml"),
            "-p",
            "5071",
            "-d",
            "1000",
        ])),
        sipp(s(&[
            "-sf",
            &file("uas_answer_after.xml"),
            "-p",
            "5072",
            "-d",
            "4000",
        ])),
        sipp(s(&["-sf", &file("uas_ringing.xml"), "-p", "5073"])),
        sipp(s(&["-sf", &file("uas_busy.xml"), "-p", "5074"])),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let callers = vec![
        sipp(s(&[
            "-sn",
            "uac",
            "-p",
            "6071",
            "-d",
            "1000",
            "-m",
            "1",
            "127.0.0.1:5071",
        ])),
        sipp(s(&[
            "-sn",
            "uac",
            "-p",
            "6072",
            "-d",
            "1000",
            "-m",
            "1",
            "127.0.0.1:5072",
        ])),
        sipp(s(&[
            "-sf",
            &file("uac_cancel_after.xml"),
            "-p",
            "6073",
            "-d",
            "500",
            "-m",
            "1",
            "127.0.0.1:5073",
        ])),
        sipp(s(&[
            "-sf",
            &file("uac_cancel_after.xml"),
            "-p",
            "6075",
            "-d",
            "2000",
            "-m",
            "1",
            "127.0.0.1:5073",
        ])),
        sipp(s(&[
            "-sf",
            &file("uac_busy.xml"),
            "-p",
            "6074",
            "-m",
            "1",
            "127.0.0.1:5074",
        ])),
    ];
    for mut caller in callers {
        let status = caller.wait().unwrap();
        assert!(status.success(), "a SIPp caller failed: {status:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &dumpcap.id().to_string()])
        .status();
    dumpcap.wait().unwrap();
    for callee in &mut callees {
        let _ = callee.kill();
        let _ = callee.wait();
    }
    let config = dir.path().join("stats.toml");
    std::fs::write(
        &config,
        "[stats]\ninterval_minutes = 60\n\n[[service]]\nname = \"desk\"\n\
         short_abandon_s = 1\nsl_threshold_s = 3\n",
    )
    .unwrap();
    let lines = report(&["--config", config.to_str().unwrap()], &[&pcap]);
    // Add the sums of every interval up by hand (the calls may straddle an hour).
    let sum = |field: &str| -> u64 {
        lines
            .iter()
            .map(|l| l["sums"][field].as_u64().unwrap())
            .sum()
    };
    let (offered, answered, abandoned, short) = (
        sum("offered"),
        sum("answered"),
        sum("abandoned"),
        sum("short_abandoned"),
    );
    let (answered_t, abandoned_t) = (sum("answered_within_t"), sum("abandoned_within_t"));
    assert_eq!(
        (offered, answered, abandoned, short, sum("not_connected")),
        (5, 2, 2, 1, 1),
        "{lines:#?}"
    );
    assert_eq!((answered_t, abandoned_t), (1, 2), "{lines:#?}");
    let pct = |n: u64, d: u64| n as f64 / d as f64 * 100.0;
    let sl_offered = offered - short;
    let sl_aband = abandoned_t - short;
    assert!((pct(answered_t, sl_offered) - 25.0).abs() < 1e-9);
    assert!((pct(answered_t, sl_offered - sl_aband) - 100.0 / 3.0).abs() < 1e-9);
    assert!((pct(answered_t + sl_aband, sl_offered) - 50.0).abs() < 1e-9);
    assert!((pct(answered_t, answered) - 50.0).abs() < 1e-9);
    assert!((pct(answered_t + abandoned_t, answered + abandoned) - 75.0).abs() < 1e-9);
    // Waits: 1 s and 4 s answered (SIPp's pauses, plus loopback microseconds).
    let asa = sum("wait_answered_ms") as f64 / answered as f64;
    assert!((2400.0..2800.0).contains(&asa), "ASA {asa} ms");
    let aband = sum("wait_abandoned_ms");
    assert!(
        (2400..2900).contains(&aband),
        "abandoned waits {aband} ms (0.5 s + 2 s)"
    );
    // Talk 1 s each (the callers' pause before BYE).
    let talk = sum("talk_ms");
    assert!((1900..2600).contains(&talk), "talk {talk} ms");
    // When all lines are one interval, the report's own ratios say the same.
    if let [line] = lines
        .iter()
        .filter(|l| l["sums"]["offered"] != 0)
        .collect::<Vec<_>>()[..]
    {
        let k = &line["kpis"];
        assert!((k["sl_cisco_negative"]["value"].as_f64().unwrap() - 25.0).abs() < 1e-9);
        assert!((k["sl2_asterisk"]["value"].as_f64().unwrap() - 75.0).abs() < 1e-9);
    }
}

/// Bounds: a contact from a broken source — ending a year later, or arriving a year ahead —
/// is followed for at most 8 days and counted as too late, never a walk over thousands of
/// intervals; the aggregator holds a bounded number of intervals.
#[test]
fn a_contact_with_absurd_times_is_bounded_and_counted() {
    let mut agg = Aggregator::new(settings("UTC", 15, Attribution::Arrival), "n1", 1);
    let now = at(1000.0);
    let year = 365.0 * 86_400.0;
    let started = std::time::Instant::now();
    agg.contact(&contact(100.0, ContactOutcome::Answered, 5.0, year), now);
    agg.contact(&contact(year, ContactOutcome::Answered, 5.0, 60.0), now);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(agg.counters().too_late, 1);
    let records = agg.finish(now);
    // The long one: followed at most a day ahead of the clock (97 quarter-hours).
    assert!(records.len() <= 100, "{} intervals held", records.len());
    let offered: u64 = records.iter().map(|r| r.sums.offered).sum();
    let too_late: u64 = records.iter().map(|r| r.sums.too_late).sum();
    assert_eq!((offered, too_late), (1, 1));
}

/// `check-config` lists the statistics sections' problems with the rest, by path and line,
/// and exits 78: a daemon with a zone it cannot find never starts.
#[test]
fn check_config_lists_the_statistics_problems_and_exits_78() {
    use crate::daemon::agent_config;
    let pki = crate::uplink::pki();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(
        &pki,
        dir.path(),
        1,
        "[hep]\nudp = \"127.0.0.1:0\"\n\n[stats]\ntime_zone = \"Mars/Olympus\"\n\n\
         [[service]]\nname = \"sales\"\nshort_abandon_s = 30\n",
        None,
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("stats.time_zone (line"), "{text}");
    assert!(text.contains("service[0].short_abandon_s (line"), "{text}");
}

/// TShark's BYE → first final response per Call-ID of a capture, in nanoseconds: the RFC
/// 6076 session disconnect delay (from the first BYE, retransmissions left aside).
fn tshark_sdd_ns(capture: &str) -> std::collections::BTreeMap<String, i64> {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(crate::support::data_path(capture))
        .args(["-Y", "sip.CSeq.method == \"BYE\"", "-T", "fields"])
        .args([
            "-e",
            "frame.time_epoch",
            "-e",
            "sip.Call-ID",
            "-e",
            "sip.Status-Code",
        ])
        .output()
        .expect("tshark is required: run ./scripts/test.sh, which installs it");
    assert!(out.status.success());
    let mut bye: std::collections::BTreeMap<String, i64> = Default::default();
    let mut sdd = std::collections::BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (secs, frac) = f[0].split_once('.').unwrap();
        let ns = secs.parse::<i64>().unwrap() * 1_000_000_000
            + format!("{frac:0<9}")[..9].parse::<i64>().unwrap();
        let status: Option<u16> = f.get(2).and_then(|s| s.parse().ok());
        match status {
            None => {
                bye.entry(f[1].to_owned()).or_insert(ns);
            }
            Some(s) if s >= 200 => {
                if let Some(b) = bye.get(f[1]) {
                    sdd.entry(f[1].to_owned()).or_insert(ns - b);
                }
            }
            Some(_) => {}
        }
    }
    sdd
}

/// RFC 6076 SDD: every call of real captures ended by a BYE gets the time of the BYE's
/// final response, its delay equal to TShark's to the nanosecond (TCP, a retransmitted BYE
/// over ERSPAN, two B2BUA legs), and `teledge report` sums them into the interval's SIP
/// sums and the `sip_sdd_mean_s` KPI.
#[test]
fn session_disconnect_delay_is_measured_like_tshark_and_summed_per_interval() {
    for capture in [
        "sip_ipv4_tcp.pcap",
        "erspan_sip_ipv4_udp.pcapng",
        "b2bua_direct_media.pcap",
    ] {
        let expected = tshark_sdd_ns(capture);
        assert!(!expected.is_empty(), "{capture}: no BYE answered");
        let (calls, _) = crate::support::replay(capture);
        for (call_id, sdd) in &expected {
            let call = crate::support::call(&calls, call_id);
            let answered = call
                .bye_answered_time
                .unwrap_or_else(|| panic!("{capture} {call_id}: no bye_answered_time"));
            assert_eq!(
                answered.as_nanos() - call.end_time.unwrap().as_nanos(),
                *sdd,
                "{capture} {call_id}"
            );
        }
        // Calls not ended by a seen BYE have none.
        for call in calls.iter().filter(|c| !expected.contains_key(&c.call_id)) {
            assert_eq!(call.bye_answered_time, None, "{capture} {}", call.call_id);
        }
    }

    // The report: one call, SDD rounded to the millisecond as every duration in the sums.
    let sdd = tshark_sdd_ns("sip_ipv4_tcp.pcap");
    let sdd_ms = ((sdd.values().next().unwrap() + 500_000) / 1_000_000) as u64;
    let lines = report(&[], &[&crate::support::data_path("sip_ipv4_tcp.pcap")]);
    let line = with_contacts(&lines);
    let sip = &line["sums"]["sip"];
    assert_eq!(sip["sdd_count"], 1, "{line:#}");
    assert_eq!(sip["sdd_ms"], sdd_ms, "{line:#}");
    assert_eq!(
        line["kpis"]["sip_sdd_mean_s"]["value"].as_f64(),
        Some(sdd_ms as f64 / 1000.0),
        "{line:#}"
    );
}

/// RFC 6076 RRD and IRA (the issue's "SRD (registrations)"): REGISTER attempts of real
/// captures timed from the first REGISTER to the final 2xx across 401 challenges, by Call-ID
/// and CSeq, summed into the interval records' `sip` section by `teledge report`.
///
/// Expected figures by hand from `tshark -r sngrep_aaa.pcap -Y 'sip.CSeq.method ==
/// "REGISTER"'` (relative time, Call-ID, CSeq, status), one phone registering to a
/// registrar that challenges every REGISTER:
///
/// ```text
/// 32.004937 578222729 68 REGISTER / 32.141694 401 → 49.420564 69 REGISTER / 49.616489 403   failed
/// 139.349155 70 / 401 → 156.629834 71 / 156.781808 401 → no REGISTER for 150 s             challenge unanswered
/// 306.829874 72 / 401 → 324.155054 73 / 324.305849 401 → none for 74 s                       challenge unanswered
/// 398.071097 74 / 401 → 415.396135 75 / 415.567606 200                                      RRD 17.496509 s
/// 915.314807 76 / 401 → 77 / 401 → 78 / 401 → 968.611582 79 / 968.760484 401 → none          challenge unanswered
/// 1255.964931 29858147 1 / 401 → 1273.350228 2 / 1273.510395 200                          RRD 17.545464 s
/// 1290.564631 3 / 1290.701065 401 → 1324.813914 4 (34.1 s later: past Timer F, 32 s)        challenge unanswered
/// 1324.813914 4 / 1324.965484 401 → 1460.423917 5 (135 s later)                              challenge unanswered
/// 1460.423917 5 / 401 → 1477.884004 6 / 1478.042520 200                                     RRD 17.618603 s
/// ```
///
/// and `rtp_rtcp_sip_ipv4_udp.pcap`: three REGISTERs answered 200 directly, after
/// 15.702, 16.384 and 15.590 ms.
#[test]
fn registrations_are_timed_across_challenges_and_summed_per_interval() {
    let sum = |lines: &[serde_json::Value], field: &str| -> u64 {
        lines
            .iter()
            .map(|l| l["sums"]["sip"][field].as_u64().unwrap())
            .sum()
    };
    let lines = report(&[], &[&crate::support::data_path("sngrep_aaa.pcap")]);
    // Attempts: 1 failed, 5 challenges unanswered, 3 registered.
    assert_eq!(sum(&lines, "registrations"), 9, "{lines:#?}");
    assert_eq!(sum(&lines, "registered"), 3);
    assert_eq!(sum(&lines, "registrations_ineffective"), 1);
    assert_eq!(sum(&lines, "registrations_challenge_unanswered"), 5);
    assert_eq!(sum(&lines, "registrations_not_timed"), 0);
    // Each delay rounded to the millisecond: 17497 + 17545 + 17619.
    assert_eq!(sum(&lines, "rrd_ms"), 17_497 + 17_545 + 17_619);
    // Every delay in the bucket of at most 20 s (bounds 10 … 15000, 20000, …).
    let mut buckets = vec![0u64; 15];
    for l in &lines {
        for (i, n) in l["sums"]["sip"]["rrd_buckets"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            buckets[i] += n.as_u64().unwrap();
        }
    }
    assert_eq!(buckets[11], 3, "{buckets:?}");
    assert_eq!(buckets.iter().sum::<u64>(), 3);

    // One quarter-hour of the short capture: mean, percentiles and IRA displayed.
    let lines = report(
        &[],
        &[&crate::support::data_path("rtp_rtcp_sip_ipv4_udp.pcap")],
    );
    let line = lines
        .iter()
        .find(|l| l["sums"]["sip"]["registrations"] != 0)
        .expect("an interval with the registrations");
    let sip = &line["sums"]["sip"];
    assert_eq!(sum(&lines, "registrations"), 3, "{lines:#?}");
    assert_eq!(
        (sip["registered"].as_u64(), sip["rrd_ms"].as_u64()),
        (Some(3), Some(16 + 16 + 16))
    );
    assert!(close(kpi_of(line, "sip_rrd_mean_s"), 0.016), "{line:#}");
    // 16 ms falls in the bucket of at most 20 ms.
    assert!(close(kpi_of(line, "sip_rrd_p50_s"), 0.020), "{line:#}");
    assert!(close(kpi_of(line, "sip_rrd_p95_s"), 0.020), "{line:#}");
    assert!(close(kpi_of(line, "sip_ira"), 0.0), "{line:#}");
}

fn kpi_of(line: &serde_json::Value, name: &str) -> Option<f64> {
    line["kpis"][name]["value"].as_f64()
}

/// A call record and the queue record of the same contact are joined and counted once, in
/// the queue's service: queue figures (arrival, wait, ring, talk, outcome, who hung up)
/// from the queue, the rest (hold from the re-INVITEs, MOS, RFC 6076 facts) from SIP.
///
/// Input: two real captures and a `queue_log` written by hand for their calls (Asterisk is
/// not in Debian 12; see `tests/data/README.md`). Expected, by hand:
/// - `support` (the queue's service; no number of the captures matches it): `101`
///   (sip_ipv4_tcp.pcap, SIP answered by the PBX, MOS 4.41) abandoned in the queue after
///   5 s; `20008777` (erspan, held 10.527329 s) answered after 7 s, ring 2 s, talk 13 s,
///   the agent hung up; `555` (no call) flowed out after 60 s; `20008909` an hour after its
///   calls (no call fits: counted alone) abandoned after 3 s (short). Offered 4, answered 1,
///   abandoned 2 (1 short), flowed out 1, all 4 from the queue; hold 10 527 ms; one MOS
///   (441); two SIP INVITEs.
/// - `lines` (every other number): the capture's two consultation legs from `20008909`,
///   answered, held 0.668981 and 0.668604 s.
///
/// Without the join the two joined calls would count in `lines` as well: 4 there, not 2.
#[test]
fn a_call_and_its_queue_log_contact_are_joined_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stats.toml");
    std::fs::write(
        &config,
        "[stats]\ninterval_minutes = 60\n\n\
         [[service]]\nname = \"support\"\nnumbers = [\"0800*\"]\n\n\
         [[service]]\nname = \"lines\"\n",
    )
    .unwrap();
    let queue_log = crate::support::data_path("callcenter/queue_log-bundled-captures");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["report", "--format", "jsonl", "--config"])
        .arg(&config)
        .arg(crate::support::data_path("sip_ipv4_tcp.pcap"))
        .arg(crate::support::data_path("erspan_sip_ipv4_udp.pcapng"))
        .arg("--queue-log")
        .arg(&queue_log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 call(s) joined"), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sum = |service: &str, path: &[&str]| -> u64 {
        lines
            .iter()
            .filter(|l| l["service"] == service)
            .map(|l| {
                let mut v = &l["sums"];
                for p in path {
                    v = &v[p];
                }
                v.as_u64().unwrap_or(0)
            })
            .sum()
    };
    let s = |f: &str| sum("support", &[f]);
    assert_eq!(
        (
            s("offered"),
            s("answered"),
            s("abandoned"),
            s("short_abandoned")
        ),
        (4, 1, 2, 1),
        "{lines:#?}"
    );
    assert_eq!((s("flowed_out"), s("from_queue")), (1, 4));
    // Queue figures from the queue_log.
    assert_eq!(s("wait_answered_ms"), 7000);
    assert_eq!(s("wait_abandoned_ms"), 5000 + 3000);
    assert_eq!((s("rang"), s("ring_ms")), (1, 2000));
    assert_eq!((s("handled"), s("talk_ms")), (1, 13_000));
    assert_eq!((s("hangup_callee"), s("hangup_caller")), (1, 0));
    // The rest from SIP.
    assert_eq!(s("hold_ms"), 10_527);
    assert_eq!((s("mos_scored"), s("mos_centi_sum")), (1, 441));
    assert_eq!(sum("support", &["sip", "invites"]), 2);
    // The other calls, once each.
    let l = |f: &str| sum("lines", &[f]);
    assert_eq!(
        (l("offered"), l("answered"), l("from_queue")),
        (2, 2, 0),
        "{lines:#?}"
    );
    assert_eq!(l("hold_ms"), 669 + 669);

    // Without the queue_log the same captures count 4 calls in `lines`.
    let alone = report(
        &["--config", config.to_str().unwrap()],
        &[
            &crate::support::data_path("sip_ipv4_tcp.pcap"),
            &crate::support::data_path("erspan_sip_ipv4_udp.pcapng"),
        ],
    );
    let offered: u64 = alone
        .iter()
        .filter(|l| l["service"] == "lines")
        .map(|l| l["sums"]["offered"].as_u64().unwrap())
        .sum();
    assert_eq!(offered, 4);
}

/// The join as the daemon runs it: a queue record naming its SIP Call-ID joins that call at
/// once; a queue record of the same caller an hour after the call does not join it; records
/// without a partner wait the window (30 s) and are then counted on their own, each once;
/// at most `MAX_JOIN_WAITING` wait (the oldest is counted early, and counted as such).
#[test]
fn the_queue_join_waits_its_window_then_counts_each_record_alone() {
    use teledge::stats::interval::{JoinKeys, MAX_JOIN_WAITING};
    use teledge::stats::service::NumberPattern;
    use teledge::stats::{QueueEnd, QueueFact};
    let mut s = settings("UTC", 60, Attribution::Arrival);
    let mut sales = ServiceSettings::default_service();
    sales.name = "sales".into();
    sales.numbers = vec![NumberPattern::parse("0800*")];
    let mut lines = ServiceSettings::default_service();
    lines.name = "lines".into();
    s.services = Services::new(vec![sales, lines]);
    let mut agg =
        Aggregator::new(s, "n1", 1).with_queue_join(Duration::from_secs(30), MAX_JOIN_WAITING);
    let (calls, _) = crate::support::replay("erspan_sip_ipv4_udp.pcapng");
    let answered: Vec<_> = calls
        .iter()
        .filter(|c| c.outcome == teledge::record::Outcome::Answered)
        .collect();
    let (c1, c2) = (answered[0], answered[1]);
    let keys = |c: &teledge::record::CallRecord| JoinKeys {
        call_id: c.call_id.clone(),
        callers: c.caller.user.iter().cloned().collect(),
    };
    let fact = |enter: Timestamp, caller: Option<String>, sip: Option<String>| QueueFact {
        queue_call_id: "q".into(),
        sip_call_id: sip,
        queue: "sales".into(),
        caller,
        agent: None,
        enter_time: enter,
        end: QueueEnd::Abandoned,
        end_time: Some(enter.plus(Duration::from_secs(4))),
        wait_s: Some(4.0),
        ring_s: None,
        rona: 0,
        talk_s: None,
        wrap_up_s: None,
        hangup_by: None,
        transferred: false,
    };
    let now = c2.end_time.unwrap().max(c1.end_time.unwrap());
    // c1 first; its queue record (FreeSWITCH style: with the leg's Call-ID) joins it.
    agg.call_keyed(c1, keys(c1), now);
    assert_eq!(agg.join_waiting(), (1, 0));
    agg.queue_fact_joining(
        fact(c1.invite_time.unwrap(), None, Some(c1.call_id.clone())),
        now,
    );
    assert_eq!((agg.join_waiting(), agg.counters().joined), ((0, 0), 1));
    // The same caller as c2, but an hour after it: no join; both wait.
    let later = c2.invite_time.unwrap().plus(Duration::from_secs(3600));
    agg.queue_fact_joining(fact(later, c2.caller.user.clone(), None), now);
    agg.call_keyed(c2, keys(c2), now);
    assert_eq!(agg.join_waiting(), (1, 1));
    assert!(agg
        .tick(now.plus(Duration::from_secs(29)))
        .iter()
        .all(|r| r.sums.offered == 0));
    assert_eq!(agg.join_waiting(), (1, 1), "within the window");
    agg.tick(now.plus(Duration::from_secs(31)));
    assert_eq!(agg.join_waiting(), (0, 0), "counted alone after the window");
    let records = agg.finish(now.plus(Duration::from_secs(32)));
    let sum = |service: &str, f: fn(&teledge::record::interval::IntervalSums) -> u64| -> u64 {
        records
            .iter()
            .filter(|r| r.service == service)
            .map(|r| f(&r.sums))
            .sum()
    };
    // sales: c1 joined (queue says abandoned after 4 s) and the late queue record alone.
    assert_eq!(sum("sales", |s| s.offered), 2);
    assert_eq!(sum("sales", |s| s.abandoned), 2);
    assert_eq!(sum("sales", |s| s.from_queue), 2);
    assert_eq!(sum("sales", |s| s.sip.invites), 1, "c1's SIP facts kept");
    // lines: c2 alone, answered.
    assert_eq!(
        (sum("lines", |s| s.offered), sum("lines", |s| s.answered)),
        (1, 1)
    );

    // The bound: one call more than may wait; the oldest is counted at once.
    let mut agg = Aggregator::new(settings("UTC", 60, Attribution::Arrival), "n1", 1)
        .with_queue_join(Duration::from_secs(30), MAX_JOIN_WAITING);
    for _ in 0..=MAX_JOIN_WAITING {
        agg.call_keyed(c2, keys(c2), now);
    }
    assert_eq!(agg.join_waiting(), (MAX_JOIN_WAITING, 0));
    assert_eq!(agg.counters().join_overflow, 1);
    let offered: u64 = agg.finish(now).iter().map(|r| r.sums.offered).sum();
    assert_eq!(
        offered,
        MAX_JOIN_WAITING as u64 + 1,
        "every call counted once"
    );
}

/// `[[service]]` by trunk or PBX address and direction, on the calls of two real captures
/// (addresses as `teledge replay` shows them), first match wins. By hand:
/// - `never` (called number 20008910 *to* 180.173.83.0/24): the call to 20008910 came *from*
///   180.173.83.248, so no call is outbound to it — 0;
/// - `pbx-in` (inbound from 192.168.1.0/24, the default direction with trunks): the two
///   calls from 192.168.1.191 — 2;
/// - `to-carrier` (outbound to 101.231.48.19): the call from 180.173.83.248 to it — 1;
/// - `desk` (number 201, either way through 10.33.6.101): the TCP call 101 → 201 — 1.
#[test]
fn services_are_told_by_trunk_address_and_direction() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stats.toml");
    std::fs::write(
        &config,
        "[stats]\ninterval_minutes = 60\n\n\
         [[service]]\nname = \"never\"\nnumbers = [\"20008910\"]\ntrunks = [\"180.173.83.0/24\"]\ndirection = \"outbound\"\n\n\
         [[service]]\nname = \"pbx-in\"\ntrunks = [\"192.168.1.0/24\"]\n\n\
         [[service]]\nname = \"to-carrier\"\ntrunks = [\"101.231.48.19\"]\ndirection = \"outbound\"\n\n\
         [[service]]\nname = \"desk\"\nnumbers = [\"201\"]\ntrunks = [\"10.33.6.101\"]\ndirection = \"any\"\n",
    )
    .unwrap();
    let lines = report(
        &["--config", config.to_str().unwrap()],
        &[
            &crate::support::data_path("erspan_sip_ipv4_udp.pcapng"),
            &crate::support::data_path("sip_ipv4_tcp.pcap"),
        ],
    );
    let offered = |service: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l["service"] == service)
            .map(|l| l["sums"]["offered"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        [
            offered("never"),
            offered("pbx-in"),
            offered("to-carrier"),
            offered("desk")
        ],
        [0, 2, 1, 1],
        "{lines:#?}"
    );
}

/// The join as the daemon makes it, with the site key: the queue source pseudonymises the
/// `queue_log` caller at ingest (keyed hash), the spool writer keys the clear call record
/// with the same pseudonymiser ([`JoinKeys::of`]), and the two meet; keys made under
/// another site key meet nothing (the call and the queue stay then count apart).
#[test]
fn the_join_meets_on_keyed_hashes_made_with_the_same_site_key() {
    use teledge::correlation::queue::{QueueAssembler, QueueLimits};
    use teledge::privacy::{AddressMode, Privacy, PrivacyMode, Pseudonymizer};
    use teledge::record::queue::QueueSource;
    use teledge::stats::interval::{JoinKeys, MAX_JOIN_WAITING};
    let keyed = |key: u8| {
        Pseudonymizer::new(Privacy::new(
            PrivacyMode::KeyedHash {
                site_key: [key; 32],
            },
            AddressMode::Keep,
            [0; 32],
        ))
    };
    // The erspan capture's call from 20008777 and its queue stay (lines 3–5 of the file).
    let (calls, _) = crate::support::replay("erspan_sip_ipv4_udp.pcapng");
    let call = calls
        .iter()
        .find(|c| c.caller.user.as_deref() == Some("20008777"))
        .unwrap();
    let text = std::fs::read_to_string(crate::support::data_path(
        "callcenter/queue_log-bundled-captures",
    ))
    .unwrap();
    let mut assembler = QueueAssembler::new(
        QueueSource::AsteriskQueueLog,
        "pbx1",
        QueueLimits::default(),
        keyed(7),
    );
    let mut records = Vec::new();
    for line in text.lines().filter(|l| l.contains("1526006126.12")) {
        let parsed = teledge::decode::queue_log::parse_line(line.as_bytes()).unwrap();
        assembler.asterisk(&parsed, &mut |r| records.push(r));
    }
    assert_eq!(records.len(), 1);
    let stay = &records[0];
    assert!(
        stay.caller.as_deref().unwrap().starts_with("h:"),
        "{stay:?}"
    );
    let count = |key: u8| {
        let mut s = settings("UTC", 60, Attribution::Arrival);
        let mut support = ServiceSettings::default_service();
        support.name = "support".into();
        s.services = Services::new(vec![support]);
        let mut agg =
            Aggregator::new(s, "n1", 1).with_queue_join(Duration::from_secs(30), MAX_JOIN_WAITING);
        let now = call.end_time.unwrap();
        agg.call_keyed(call, JoinKeys::of(call, &keyed(key)), now);
        agg.queue_record(stay, now);
        let joined = agg.counters().joined;
        let offered: u64 = agg.finish(now).iter().map(|r| r.sums.offered).sum();
        (joined, offered)
    };
    assert_eq!(count(7), (1, 1), "same site key: one contact");
    assert_eq!(count(8), (0, 2), "another site key: the two count apart");
}

/// RFC 6076 per node over every call: with a `[[service]]` that no call of the capture
/// matches (no contact at all), `teledge report` still gives the node's section
/// (`node_sip`, in the first service's interval) over all ten calls; its figures and KPIs
/// computed here from TShark's final statuses by RFC 6076's definitions (SER: 2xx over
/// INVITEs less 3xx; SEER: 200/480/486/600/603 over the same; ISA: 408/500/503/504 over
/// INVITEs). Without `[[service]]` every call is a contact of `default`, and the node's
/// section equals the service's. The table shows a node section, the CSV its columns.
#[test]
fn the_node_section_counts_every_call_whatever_its_service() {
    let t = tshark_calls("sipp_branch_403_bye.pcap");
    let capture = crate::support::data_path("sipp_branch_403_bye.pcap");
    let invites = t.statuses.len() as u64;
    let count = |f: &dyn Fn(u16) -> bool| t.statuses.iter().filter(|s| f(**s)).count() as u64;
    let established = count(&|s| (200..300).contains(&s));
    let redirected = count(&|s| (300..400).contains(&s));
    let effective = count(&|s| matches!(s, 200 | 480 | 486 | 600 | 603));
    let ineffective = count(&|s| matches!(s, 408 | 500 | 503 | 504));
    assert_eq!((t.offered, invites), (10, 10));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("teledge.toml");
    std::fs::write(
        &config,
        "[[service]]\nname = \"elsewhere\"\nnumbers = [\"999999999\"]\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let lines = report(&["--config", config_arg], &[&capture]);
    let sum = |lines: &[serde_json::Value], section: &str, field: &str| -> u64 {
        lines
            .iter()
            .map(|l| l["sums"][section][field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        lines
            .iter()
            .map(|l| l["sums"]["offered"].as_u64().unwrap())
            .sum::<u64>(),
        0,
        "no call is a contact of `elsewhere`"
    );
    assert_eq!(sum(&lines, "sip", "invites"), 0);
    assert_eq!(
        [
            "invites",
            "established",
            "redirected",
            "effective",
            "ineffective"
        ]
        .map(|f| sum(&lines, "node_sip", f)),
        [invites, established, redirected, effective, ineffective]
    );
    let node = lines
        .iter()
        .find(|l| l["sums"]["node_sip"]["invites"] != 0)
        .unwrap();
    assert_eq!(node["service"], "elsewhere");
    let percent = |n: u64, d: u64| n as f64 * 100.0 / d as f64;
    assert!(close(
        kpi_of(node, "node_sip_ser"),
        percent(established, invites - redirected)
    ));
    assert!(close(
        kpi_of(node, "node_sip_seer"),
        percent(effective, invites - redirected)
    ));
    assert!(close(
        kpi_of(node, "node_sip_isa"),
        percent(ineffective, invites)
    ));
    assert_eq!(kpi_of(node, "sip_ser"), None);

    // Every call one service: the node's section is the service's.
    let lines = report(&[], &[&capture]);
    for l in &lines {
        assert_eq!(l["sums"]["node_sip"], l["sums"]["sip"], "{l:#}");
    }
    assert_eq!(sum(&lines, "node_sip", "invites"), invites);

    let run = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["report", "--config", config_arg, "--format", format])
            .arg(&capture)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run("table");
    assert!(table.contains("Node: every call seen"), "{table}");
    assert!(table.contains("node_sip_ser"), "{table}");
    let csv = run("csv");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let ser = header.iter().position(|h| *h == "node_sip_ser").unwrap();
    let filled: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|r| r.split(',').nth(ser).unwrap_or("").to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    assert_eq!(filled.len(), 1, "{csv}");
    assert!(
        (filled[0].parse::<f64>().unwrap() - percent(established, invites - redirected)).abs()
            < 1e-9
    );
}
