//! KPIs: contacts into primitive sums ([`IntervalSums`]), sums merged exactly, and ratios
//! computed from sums on display, each with its formula ([`Kpi::formula`]).
//!
//! What each sum counts (T = the service's `sl_threshold_s`, S = `short_abandon_s`):
//!
//! | sum | counts |
//! |---|---|
//! | `offered` | every contact (entered the queue / reached the PBX) |
//! | `answered` | contacts answered (2xx, or the queue's CONNECT) |
//! | `abandoned` | the caller hung up before an answer (short ones included) |
//! | `short_abandoned` | abandons with a wait < S |
//! | `flowed_out` | left the queue by its rule (timeout, empty, key, withdraw): not abandons |
//! | `flowed_out_by_kind` | the flow-outs by kind (`timeout`, `empty`, `key`, `withdraw`) |
//! | `not_connected` | ended otherwise (busy, rejected, not reached, failed, no answer) |
//! | `answered_within_t` | answered with a wait ≤ T |
//! | `abandoned_within_t` | abandoned with a wait ≤ T (short ones included) |
//! | `wait_*_ms`, `longest_wait_ms` | Σ wait of answered / abandoned; the longest wait of any contact |
//! | `wait_*_buckets` | waits ≤ 8, 30, 60, 90, 120, 180, 300, 600, 1200 s, and longer |
//! | `handled`, `talk_ms`, `hold_ms`, `wrap_up_ms` | answered contacts with a known talk time; Σ talk (hold included: SIP talk is answer → BYE), Σ hold, Σ wrap-up where a queue fact gives it |
//! | `concurrency` | contacts active during each second s of the interval (overlapping [s, s + 1)); contacts are counted once their record is made, so the live view misses calls still in progress |
//! | `mos_*` | scored calls, Σ MOS, lowest MOS, calls below MOS 3.6, MOS histogram |
//! | `sip.*` | RFC 6076 inputs over calls whose INVITE was seen |
//! | `sip.registrations`, `sip.registered`, `sip.registrations_*`, `sip.rrd_*` | the node's REGISTER attempts (RFC 6076 RRD, IRA), from its `teledge.registrations/1` records, in its first service's intervals only |
//! | `node_sip.*` | the same RFC 6076 inputs over **every** call of the node whose INVITE was seen and that ended, whatever its service, and its registrations: in its first service's intervals only (`node_calls_too_late`: calls whose interval was gone) |
//! | `agents.*` | the service's agents from `teledge.agent/1` state changes: staffed and paused agent-milliseconds (split exactly at interval boundaries), paused by reason (bounded), logins, logoffs (see [`crate::stats::interval::Aggregator::agent_state`]) |
//!
//! AHT is (talk + wrap-up) / handled, its formula naming the parts present (wrap-up for
//! none, some or all handled contacts: only FreeSWITCH agents in `Available (On Demand)`
//! tell it; Asterisk's `queue_log` never does). Occupancy is (talk + wrap-up) / (staffed −
//! paused); talk includes hold in both.
//!
//! Percentiles (post-dial delay, registration request delay) are read from fixed histogram buckets, so they merge
//! exactly too: a percentile is reported as the upper bound of the bucket it falls in.

use super::contact::{Contact, ContactOutcome, HungUp};
use super::service::ServiceSettings;
use crate::record::interval::{
    AgentSums, IntervalSums, SipSums, MOS_BUCKETS_CENTI, PDD_BUCKETS_MS, POOR_MOS_CENTI,
    SDD_BUCKETS_MS, WAIT_BUCKETS_S,
};
use crate::record::registration::RRD_BUCKETS_MS;

fn bucket(buckets: &mut Vec<u64>, bounds: &[u32], value: u64) {
    if buckets.len() != bounds.len() + 1 {
        buckets.resize(bounds.len() + 1, 0);
    }
    let i = bounds
        .iter()
        .position(|b| value <= u64::from(*b))
        .unwrap_or(bounds.len());
    buckets[i] += 1;
}

fn add_buckets(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

impl IntervalSums {
    /// Adds one contact (its concurrency is added by the interval it overlaps, see
    /// [`crate::stats::interval`]).
    pub fn add(&mut self, c: &Contact, service: &ServiceSettings) {
        if c.outcome == ContactOutcome::Excluded {
            self.excluded += 1;
            return;
        }
        let t_ms = u64::from(service.sl_threshold_s) * 1000;
        let short_ms = u64::from(service.short_abandon_s) * 1000;
        self.offered += 1;
        *self.outcomes.entry(c.sip_outcome.to_owned()).or_default() += 1;
        self.from_queue += u64::from(c.from_queue);
        self.rona += u64::from(c.rona);
        self.transferred += u64::from(c.transferred);
        if let Some(w) = c.wait_ms {
            self.longest_wait_ms = self.longest_wait_ms.max(w);
        }
        match c.outcome {
            ContactOutcome::Answered => {
                self.answered += 1;
                if let Some(w) = c.wait_ms {
                    self.wait_answered_ms += w;
                    self.answered_within_t += u64::from(w <= t_ms);
                    bucket(&mut self.wait_answered_buckets, &WAIT_BUCKETS_S, w / 1000);
                }
                if let Some(r) = c.ring_ms {
                    self.rang += 1;
                    self.ring_ms += r;
                }
                if let Some(t) = c.talk_ms {
                    self.handled += 1;
                    self.talk_ms += t;
                    self.hold_ms += c.hold_ms.unwrap_or(0);
                    if let Some(w) = c.wrap_up_ms {
                        self.wrap_up_ms += w;
                        self.wrap_up_known += 1;
                    }
                }
                match c.hung_up {
                    Some(HungUp::Caller) => self.hangup_caller += 1,
                    Some(HungUp::Callee) => self.hangup_callee += 1,
                    None => {}
                }
            }
            ContactOutcome::Abandoned => {
                self.abandoned += 1;
                let w = c.wait_ms.unwrap_or(0);
                self.wait_abandoned_ms += w;
                self.short_abandoned += u64::from(w < short_ms);
                self.abandoned_within_t += u64::from(w <= t_ms);
                bucket(&mut self.wait_abandoned_buckets, &WAIT_BUCKETS_S, w / 1000);
            }
            ContactOutcome::FlowOut(kind) => {
                self.flowed_out += 1;
                *self
                    .flowed_out_by_kind
                    .entry(kind.as_str().to_owned())
                    .or_default() += 1;
            }
            ContactOutcome::NotConnected => self.not_connected += 1,
            ContactOutcome::Excluded => {}
        }
        if let Some(m) = c.mos_centi {
            self.mos_scored += 1;
            self.mos_centi_sum += u64::from(m);
            self.mos_centi_min = Some(self.mos_centi_min.map_or(m, |old| old.min(m)));
            self.mos_poor += u64::from(m < POOR_MOS_CENTI);
            bucket(&mut self.mos_buckets, &MOS_BUCKETS_CENTI, u64::from(m));
        }
        if let Some(sip) = &c.sip {
            self.sip.add(sip);
        }
    }

    /// Adds another interval's sums (another node, another run): exact.
    pub fn merge(&mut self, o: &IntervalSums) {
        self.offered += o.offered;
        self.answered += o.answered;
        self.abandoned += o.abandoned;
        self.short_abandoned += o.short_abandoned;
        self.flowed_out += o.flowed_out;
        for (k, v) in &o.flowed_out_by_kind {
            *self.flowed_out_by_kind.entry(k.clone()).or_default() += v;
        }
        self.not_connected += o.not_connected;
        self.answered_within_t += o.answered_within_t;
        self.abandoned_within_t += o.abandoned_within_t;
        self.wait_answered_ms += o.wait_answered_ms;
        self.wait_abandoned_ms += o.wait_abandoned_ms;
        self.longest_wait_ms = self.longest_wait_ms.max(o.longest_wait_ms);
        add_buckets(&mut self.wait_answered_buckets, &o.wait_answered_buckets);
        add_buckets(&mut self.wait_abandoned_buckets, &o.wait_abandoned_buckets);
        self.rang += o.rang;
        self.ring_ms += o.ring_ms;
        self.handled += o.handled;
        self.talk_ms += o.talk_ms;
        self.hold_ms += o.hold_ms;
        self.wrap_up_ms += o.wrap_up_ms;
        self.wrap_up_known += o.wrap_up_known;
        self.rona += o.rona;
        self.transferred += o.transferred;
        self.hangup_caller += o.hangup_caller;
        self.hangup_callee += o.hangup_callee;
        self.from_queue += o.from_queue;
        for (k, v) in &o.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += v;
        }
        self.excluded += o.excluded;
        self.too_late += o.too_late;
        self.queue_no_arrival += o.queue_no_arrival;
        self.concurrency = merge_concurrency(&self.concurrency, &o.concurrency);
        self.mos_scored += o.mos_scored;
        self.mos_centi_sum += o.mos_centi_sum;
        self.mos_centi_min = match (self.mos_centi_min, o.mos_centi_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.mos_poor += o.mos_poor;
        add_buckets(&mut self.mos_buckets, &o.mos_buckets);
        self.sip.merge(&o.sip);
        self.node_sip.merge(&o.node_sip);
        self.node_calls_too_late += o.node_calls_too_late;
        self.agents.merge(&o.agents);
    }

    /// Adds another interval's node section (`node_sip`) only: the node table of
    /// `teledge report` sums it over services.
    pub fn merge_node_sip(&mut self, o: &IntervalSums) {
        self.node_sip.merge(&o.node_sip);
        self.node_calls_too_late += o.node_calls_too_late;
    }

    /// The most contacts active during one second.
    pub fn peak_concurrent(&self) -> u32 {
        self.concurrency.iter().map(|r| r[2]).max().unwrap_or(0)
    }
}

impl AgentSums {
    /// Adds another interval's agent figures: exact. Pause reasons are added by name (the
    /// bound applies per node and interval: a merge of n nodes holds at most n × the
    /// bound, and merging in any order gives the same map).
    pub fn merge(&mut self, o: &AgentSums) {
        self.staffed_ms += o.staffed_ms;
        self.paused_ms += o.paused_ms;
        for (reason, ms) in &o.paused_by_reason_ms {
            *self.paused_by_reason_ms.entry(reason.clone()).or_default() += ms;
        }
        self.pause_reasons_folded += o.pause_reasons_folded;
        self.logins += o.logins;
        self.logoffs += o.logoffs;
        self.too_late_ms += o.too_late_ms;
        self.refused += o.refused;
    }
}

impl SipSums {
    /// Adds one call's SIP facts.
    pub(crate) fn add(&mut self, sip: &super::contact::SipFacts) {
        self.invites += 1;
        match sip.final_status {
            Some(s @ 200..=299) => {
                self.established += 1;
                self.effective += u64::from(s == 200);
            }
            Some(300..=399) => self.redirected += 1,
            Some(480 | 486 | 600 | 603) => self.effective += 1,
            Some(408 | 500 | 503 | 504) => self.ineffective += 1,
            _ => {}
        }
        if let Some(d) = sip.completed_ms {
            self.completed += 1;
            self.completed_ms += d;
        }
        if let Some(p) = sip.pdd_ms {
            self.pdd_count += 1;
            self.pdd_ms += p;
            bucket(&mut self.pdd_buckets, &PDD_BUCKETS_MS, p);
        }
        if let Some(d) = sip.sdd_ms {
            self.sdd_count += 1;
            self.sdd_ms += d;
            bucket(&mut self.sdd_buckets, &SDD_BUCKETS_MS, d);
        }
    }

    pub(crate) fn merge(&mut self, o: &SipSums) {
        self.invites += o.invites;
        self.established += o.established;
        self.redirected += o.redirected;
        self.effective += o.effective;
        self.ineffective += o.ineffective;
        self.completed += o.completed;
        self.completed_ms += o.completed_ms;
        self.pdd_count += o.pdd_count;
        self.pdd_ms += o.pdd_ms;
        add_buckets(&mut self.pdd_buckets, &o.pdd_buckets);
        self.sdd_count += o.sdd_count;
        self.sdd_ms += o.sdd_ms;
        add_buckets(&mut self.sdd_buckets, &o.sdd_buckets);
        self.registrations += o.registrations;
        self.registered += o.registered;
        self.registrations_ineffective += o.registrations_ineffective;
        self.registrations_challenge_unanswered += o.registrations_challenge_unanswered;
        self.registrations_not_timed += o.registrations_not_timed;
        self.rrd_ms += o.rrd_ms;
        add_buckets(&mut self.rrd_buckets, &o.rrd_buckets);
    }

    /// Adds one minute's registration attempts (a `teledge.registrations/1` record).
    pub fn add_registrations(&mut self, r: &crate::record::registration::RegistrationsRecord) {
        self.registrations += r.attempts;
        self.registered += r.registered;
        self.registrations_ineffective += r.failed + r.timed_out;
        self.registrations_challenge_unanswered += r.challenge_unanswered;
        self.registrations_not_timed += r.not_timed;
        self.rrd_ms += r.rrd_ms;
        add_buckets(&mut self.rrd_buckets, &r.rrd_buckets);
    }
}

/// Dense per-second counts from the run-length form (`[offset, length, calls]`).
pub fn concurrency_dense(runs: &[[u32; 3]]) -> Vec<u32> {
    let len = runs
        .iter()
        .map(|r| u64::from(r[0]) + u64::from(r[1]))
        .max()
        .unwrap_or(0)
        // An interval is at most an hour; a longer claim is not trusted with memory.
        .min(7200) as usize;
    let mut dense = vec![0u32; len];
    for [offset, length, calls] in runs {
        let from = (*offset as usize).min(len);
        let to = (*offset as usize).saturating_add(*length as usize).min(len);
        for slot in &mut dense[from..to] {
            *slot = slot.saturating_add(*calls);
        }
    }
    dense
}

/// The run-length form of per-second counts (zero runs left out).
pub fn concurrency_runs(dense: &[u32]) -> Vec<[u32; 3]> {
    let mut runs: Vec<[u32; 3]> = Vec::new();
    for (i, &calls) in dense.iter().enumerate() {
        if calls == 0 {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last[2] == calls && (last[0] + last[1]) as usize == i => last[1] += 1,
            _ => runs.push([i as u32, 1, calls]),
        }
    }
    runs
}

fn merge_concurrency(a: &[[u32; 3]], b: &[[u32; 3]]) -> Vec<[u32; 3]> {
    if b.is_empty() {
        return a.to_vec();
    }
    let mut both = a.to_vec();
    both.extend_from_slice(b);
    concurrency_runs(&concurrency_dense(&both))
}

/// A figure computed from sums, with the formula it was computed by.
#[derive(Debug, Clone, PartialEq)]
pub struct Kpi {
    /// Column name (`sl_cisco_ignore`, `asa_s`, ...).
    pub name: &'static str,
    /// How it was computed, from the sums' names.
    pub formula: &'static str,
    /// `None` when the denominator is zero.
    pub value: Option<f64>,
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn percent(n: u64, d: u64) -> Option<f64> {
    ratio(n, d).map(|r| r * 100.0)
}

/// The `q`-quantile (0..1) read from histogram buckets: the upper bound of the bucket the
/// rank falls in (`None` in the open last bucket or without data).
pub fn bucket_quantile(buckets: &[u64], bounds: &[u32], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bounds.get(i).map(|b| f64::from(*b));
        }
    }
    None
}

/// The AHT's formula, saying which parts the sums hold: talk always (hold included: SIP
/// talk runs answer → BYE, a queue's `calltime` is the bridged time), wrap-up for the
/// handled contacts whose source told it (`wrap_up_known`: FreeSWITCH agents in
/// `Available (On Demand)`; never Asterisk's `queue_log`).
fn aht_formula(s: &IntervalSums) -> &'static str {
    if s.wrap_up_known == 0 {
        "(talk_ms + wrap_up_ms) / handled / 1000 (talk includes hold; no wrap-up: no contact's source gave one)"
    } else if s.wrap_up_known >= s.handled {
        "(talk_ms + wrap_up_ms) / handled / 1000 (talk includes hold; wrap-up of every handled contact)"
    } else {
        "(talk_ms + wrap_up_ms) / handled / 1000 (talk includes hold; wrap-up of wrap_up_known of the handled contacts only)"
    }
}

/// Every displayed KPI of some sums, in a fixed order (the columns of `teledge report`).
pub fn kpis(s: &IntervalSums) -> Vec<Kpi> {
    let sl_offered = s.offered.saturating_sub(s.short_abandoned);
    let sl_aband = s.abandoned_within_t.saturating_sub(s.short_abandoned);
    let k = |name, formula, value| Kpi {
        name,
        formula,
        value,
    };
    let sip = &s.sip;
    let flow = |kind: &str| s.flowed_out_by_kind.get(kind).copied().unwrap_or(0) as f64;
    let mut out = vec![
        k("offered", "offered", Some(s.offered as f64)),
        k("answered", "answered", Some(s.answered as f64)),
        k("abandoned", "abandoned (short included)", Some(s.abandoned as f64)),
        k("short_abandoned", "abandoned with wait < short_abandon_s", Some(s.short_abandoned as f64)),
        k("flowed_out", "flowed_out (left the queue by its rule, not abandoned: timeout, empty, key, withdraw; by kind in CSV and JSON)", Some(s.flowed_out as f64)),
        k("flowed_out_timeout", "flowed_out_by_kind.timeout (EXITWITHTIMEOUT; FS TIMEOUT)", Some(flow("timeout"))),
        k("flowed_out_empty", "flowed_out_by_kind.empty (EXITEMPTY; FS NO_AGENT_TIMEOUT)", Some(flow("empty"))),
        k("flowed_out_key", "flowed_out_by_kind.key (EXITWITHKEY; FS EXIT_WITH_KEY)", Some(flow("key"))),
        k("flowed_out_withdraw", "flowed_out_by_kind.withdraw (WITHDRAW)", Some(flow("withdraw"))),
        k("not_connected", "not_connected", Some(s.not_connected as f64)),
        k("answered_within_t", "answered with wait <= T", Some(s.answered_within_t as f64)),
        k("abandoned_within_t", "abandoned with wait <= T", Some(s.abandoned_within_t as f64)),
        k(
            "sl_cisco_ignore",
            "Cisco ignore abandoned: answered_within_t / (offered - short_abandoned - (abandoned_within_t - short_abandoned)) x 100",
            percent(s.answered_within_t, sl_offered.saturating_sub(sl_aband)),
        ),
        k(
            "sl_cisco_negative",
            "Cisco negative impact: answered_within_t / (offered - short_abandoned) x 100",
            percent(s.answered_within_t, sl_offered),
        ),
        k(
            "sl_cisco_positive",
            "Cisco positive impact: (answered_within_t + abandoned_within_t - short_abandoned) / (offered - short_abandoned) x 100",
            percent(s.answered_within_t + sl_aband, sl_offered),
        ),
        k(
            "sl_asterisk",
            "Asterisk SL: answered_within_t / answered x 100",
            percent(s.answered_within_t, s.answered),
        ),
        k(
            "sl2_asterisk",
            "Asterisk SL2: (answered_within_t + abandoned_within_t) / (answered + abandoned) x 100",
            percent(s.answered_within_t + s.abandoned_within_t, s.answered + s.abandoned),
        ),
        k(
            "abandon_rate",
            "(abandoned - short_abandoned) / (offered - short_abandoned) x 100",
            percent(s.abandoned - s.short_abandoned.min(s.abandoned), sl_offered),
        ),
        k("asa_s", "wait_answered_ms / answered / 1000", ratio(s.wait_answered_ms, s.answered).map(|v| v / 1000.0)),
        k("longest_wait_s", "longest_wait_ms / 1000", Some(s.longest_wait_ms as f64 / 1000.0)),
        k("avg_ring_s", "ring_ms / rang / 1000", ratio(s.ring_ms, s.rang).map(|v| v / 1000.0)),
        k(
            "aht_s",
            aht_formula(s),
            ratio(s.talk_ms + s.wrap_up_ms, s.handled).map(|v| v / 1000.0),
        ),
        k("avg_hold_s", "hold_ms / handled / 1000", ratio(s.hold_ms, s.handled).map(|v| v / 1000.0)),
        k("peak_concurrent", "max over the seconds of the interval of contacts active during it", Some(f64::from(s.peak_concurrent()))),
        k("mos_mean", "mos_centi_sum / mos_scored / 100", ratio(s.mos_centi_sum, s.mos_scored).map(|v| v / 100.0)),
        k("mos_worst", "mos_centi_min / 100", s.mos_centi_min.map(|m| f64::from(m) / 100.0)),
        k("mos_poor_percent", "mos_poor (MOS < 3.6) / mos_scored x 100", percent(s.mos_poor, s.mos_scored)),
    ];
    out.extend(sip_kpis(sip, false));
    let occupied = s.agents.staffed_ms.saturating_sub(s.agents.paused_ms);
    out.extend([
        k("agent_staffed_s", "agents.staffed_ms / 1000 (agent-seconds logged in or a member, paused included)", Some(s.agents.staffed_ms as f64 / 1000.0)),
        k("agent_paused_s", "agents.paused_ms / 1000", Some(s.agents.paused_ms as f64 / 1000.0)),
        k("agent_logins", "agents.logins", Some(s.agents.logins as f64)),
        k("agent_logoffs", "agents.logoffs", Some(s.agents.logoffs as f64)),
        k(
            "occupancy_percent",
            "(talk_ms + wrap_up_ms) / (agents.staffed_ms - agents.paused_ms) x 100 (talk includes hold; wrap-up where the source gives it)",
            percent(s.talk_ms + s.wrap_up_ms, occupied),
        ),
    ]);
    out.push(k(
        "node_sip_invites",
        "node_sip.invites (every call of the node whose INVITE was seen, whatever its service)",
        Some(s.node_sip.invites as f64),
    ));
    out.extend(sip_kpis(&s.node_sip, true));
    out
}

/// The RFC 6076 KPIs of SIP sums: a service's (`sip_*`) or the node's over every call
/// (`node_sip_*`), with the same formulas.
fn sip_kpis(sip: &SipSums, node: bool) -> Vec<Kpi> {
    let n = |service: &'static str, node_name: &'static str| if node { node_name } else { service };
    let k = |name, formula, value| Kpi {
        name,
        formula,
        value,
    };
    let attempts = sip.invites.saturating_sub(sip.redirected);
    vec![
        k(
            n("sip_ser", "node_sip_ser"),
            "RFC 6076 SER: established / (invites - redirected) x 100",
            percent(sip.established, attempts),
        ),
        k(
            n("sip_seer", "node_sip_seer"),
            "RFC 6076 SEER: final 200/480/486/600/603 / (invites - redirected) x 100",
            percent(sip.effective, attempts),
        ),
        k(n("sip_isa", "node_sip_isa"), "RFC 6076 ISA: final 408/500/503/504 / invites x 100", percent(sip.ineffective, sip.invites)),
        k(n("sip_scr", "node_sip_scr"), "RFC 6076 SCR: established and ended by BYE / invites x 100", percent(sip.completed, sip.invites)),
        k(n("sip_sdt_s", "node_sip_sdt_s"), "RFC 6076 SDT: completed_ms / completed / 1000", ratio(sip.completed_ms, sip.completed).map(|v| v / 1000.0)),
        k(n("sip_srd_mean_s", "node_sip_srd_mean_s"), "RFC 6076 SRD (post-dial delay): pdd_ms / pdd_count / 1000", ratio(sip.pdd_ms, sip.pdd_count).map(|v| v / 1000.0)),
        k(
            n("sip_pdd_p50_s", "node_sip_pdd_p50_s"),
            "post-dial delay 50th percentile, upper bound of its histogram bucket",
            bucket_quantile(&sip.pdd_buckets, &PDD_BUCKETS_MS, 0.5).map(|v| v / 1000.0),
        ),
        k(
            n("sip_pdd_p95_s", "node_sip_pdd_p95_s"),
            "post-dial delay 95th percentile, upper bound of its histogram bucket",
            bucket_quantile(&sip.pdd_buckets, &PDD_BUCKETS_MS, 0.95).map(|v| v / 1000.0),
        ),
        k(
            n("sip_rrd_mean_s", "node_sip_rrd_mean_s"),
            "RFC 6076 RRD (the issue's 'SRD (registrations)': first REGISTER -> 2xx, challenges included): rrd_ms / registered / 1000",
            ratio(sip.rrd_ms, sip.registered).map(|v| v / 1000.0),
        ),
        k(
            n("sip_rrd_p50_s", "node_sip_rrd_p50_s"),
            "registration request delay 50th percentile, upper bound of its histogram bucket",
            bucket_quantile(&sip.rrd_buckets, &RRD_BUCKETS_MS, 0.5).map(|v| v / 1000.0),
        ),
        k(
            n("sip_rrd_p95_s", "node_sip_rrd_p95_s"),
            "registration request delay 95th percentile, upper bound of its histogram bucket",
            bucket_quantile(&sip.rrd_buckets, &RRD_BUCKETS_MS, 0.95).map(|v| v / 1000.0),
        ),
        k(
            n("sip_ira", "node_sip_ira"),
            "RFC 6076 IRA: registrations_ineffective (final failure other than 401/407/494, or no final response) / registrations x 100",
            percent(sip.registrations_ineffective, sip.registrations),
        ),
        k(n("sip_sdd_mean_s", "node_sip_sdd_mean_s"), "RFC 6076 SDD (BYE -> its final response): sdd_ms / sdd_count / 1000", ratio(sip.sdd_ms, sip.sdd_count).map(|v| v / 1000.0)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formula(s: &IntervalSums, name: &str) -> (&'static str, Option<f64>) {
        let k = kpis(s).into_iter().find(|k| k.name == name).unwrap();
        (k.formula, k.value)
    }

    /// AHT says which parts it holds: two handled contacts, 300 s and 200 s of talk, one
    /// with 60 s of wrap-up → (500 + 60) / 2 = 280 s, "wrap-up of wrap_up_known of the
    /// handled contacts only"; without wrap-up "no wrap-up"; with both "every".
    /// Occupancy: (500 + 60) s over staffed 3,600 s − paused 1,200 s = 560 / 2,400 =
    /// 23.33 %.
    #[test]
    fn aht_names_the_parts_present_and_occupancy_uses_staffed_minus_paused() {
        let mut s = IntervalSums {
            handled: 2,
            talk_ms: 500_000,
            ..IntervalSums::default()
        };
        let (f, v) = formula(&s, "aht_s");
        assert!(f.contains("no wrap-up"), "{f}");
        assert_eq!(v, Some(250.0));
        s.wrap_up_ms = 60_000;
        s.wrap_up_known = 1;
        let (f, v) = formula(&s, "aht_s");
        assert!(
            f.contains("wrap_up_known of the handled contacts only"),
            "{f}"
        );
        assert_eq!(v, Some(280.0));
        s.wrap_up_known = 2;
        assert!(formula(&s, "aht_s").0.contains("every handled contact"));
        assert_eq!(formula(&s, "occupancy_percent").1, None);
        s.agents.staffed_ms = 3_600_000;
        s.agents.paused_ms = 1_200_000;
        let (f, v) = formula(&s, "occupancy_percent");
        assert!(f.contains("staffed_ms - agents.paused_ms"), "{f}");
        assert!((v.unwrap() - 560.0 / 2400.0 * 100.0).abs() < 1e-9);
    }

    /// The node section has its own KPIs beside the service's, by the same formulas: 10
    /// INVITEs, 1 established, 9 refused with 403 (neither effective nor ineffective) →
    /// SER 10 %, SEER 10 %, ISA 0 %.
    #[test]
    fn the_node_section_has_its_own_rfc_6076_kpis() {
        let s = IntervalSums {
            node_sip: SipSums {
                invites: 10,
                established: 1,
                effective: 1,
                ..SipSums::default()
            },
            ..IntervalSums::default()
        };
        assert_eq!(formula(&s, "node_sip_invites").1, Some(10.0));
        assert_eq!(formula(&s, "node_sip_ser").1, Some(10.0));
        assert_eq!(formula(&s, "node_sip_seer").1, Some(10.0));
        assert_eq!(formula(&s, "node_sip_isa").1, Some(0.0));
        assert_eq!(formula(&s, "sip_ser").1, None);
    }
}
