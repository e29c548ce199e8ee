//! Registration timing (RFC 6076 §4.1 RRD, §4.2 IRA): REGISTER transactions in, one
//! `teledge.registrations/1` record per minute of capture time out (see
//! [`crate::record::registration`] for what is counted).
//!
//! An attempt is keyed by its Call-ID (a UA keeps its Call-ID across a registration and its
//! refreshes, RFC 3261 §10.2) and follows its CSeq:
//! - a REGISTER with no attempt open starts one at its time; the same CSeq again is a
//!   retransmission;
//! - a 401, 407 or 494 to the attempt's CSeq is a challenge: the attempt waits for a new
//!   REGISTER with a higher CSeq, which continues it (the delay runs from the first
//!   REGISTER, as RFC 6076 Figure 1 draws it);
//! - a 2xx to the attempt's CSeq ends it registered, with its delay; any other final
//!   response ends it failed; provisional responses and responses to other CSeqs change
//!   nothing;
//! - an attempt with no final response within `timeout` (the correlation `linger`, SIP
//!   Timer F: 32 s) ended timed out; a challenge with no new REGISTER within `timeout`
//!   ended unanswered; a new REGISTER with a higher CSeq while the previous one had no
//!   final response ends the previous one timed out and starts another.
//!
//! Deterministic, driven by capture time like the call tracker. Bounded: at most
//! [`MAX_PENDING`] attempts open (REGISTERs beyond are counted `not_timed`), minutes are
//! emitted two seconds after they end (a later ending of that minute comes in another
//! record of the same minute: the records add up).

use std::collections::BTreeMap;
use std::time::Duration;

use super::hasher::KeyedMap;
use crate::decode::sip::{Method, SipMessage};
use crate::record::registration::{RegistrationsRecord, REGISTRATIONS_SCHEMA, RRD_BUCKETS_MS};
use crate::time::Timestamp;

/// Most registration attempts followed at once.
pub const MAX_PENDING: usize = 10_000;
/// How long after its end a minute is emitted.
const EMIT_AFTER: Duration = Duration::from_secs(2);
const NANOS_PER_MINUTE: i64 = 60_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Timestamp,
    cseq: u32,
    challenged: bool,
    /// The last response was a challenge: waiting for a new REGISTER.
    awaiting_retry: bool,
    deadline: Timestamp,
}

enum Ending {
    Registered(u64),
    Failed,
    TimedOut,
    ChallengeUnanswered,
}

/// The open registration attempts and the minutes not yet emitted.
#[derive(Debug)]
pub struct RegistrationTracker {
    timeout: Duration,
    pending: KeyedMap<u64, Pending>,
    /// Minute start (ns) → its figures.
    minutes: BTreeMap<i64, RegistrationsRecord>,
    last_sweep: Timestamp,
    emitted: u64,
    /// The correlation shard this tracker times (part of its records' ids when not 0).
    shard: u32,
}

fn key_of(call_id: &str) -> u64 {
    super::hasher::fingerprint(&super::calls::call_key(call_id))
}

fn ms_between(later: Timestamp, earlier: Timestamp) -> u64 {
    let nanos = later.as_nanos().saturating_sub(earlier.as_nanos()).max(0);
    ((nanos + 500_000) / 1_000_000) as u64
}

impl RegistrationTracker {
    /// `timeout`: how long an attempt waits for a final response, or for a new REGISTER
    /// after a challenge.
    pub fn new(timeout: Duration) -> Self {
        RegistrationTracker {
            timeout,
            pending: KeyedMap::default(),
            minutes: BTreeMap::new(),
            last_sweep: Timestamp::default(),
            emitted: 0,
            shard: 0,
        }
    }

    /// The tracker of correlation shard `shard`: every shard emits its own records of a
    /// minute (they add up), so the shard goes into their ids, lest two shards with the same
    /// figures make one id that a collector would take for a duplicate. Shard 0's ids are
    /// those of an unsharded tracker.
    pub fn in_shard(mut self, shard: u32) -> Self {
        self.shard = shard;
        self
    }

    /// Attempts open.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn minute(&mut self, at: Timestamp) -> &mut RegistrationsRecord {
        let start = at.as_nanos().div_euclid(NANOS_PER_MINUTE) * NANOS_PER_MINUTE;
        self.minutes
            .entry(start)
            .or_insert_with(|| RegistrationsRecord {
                schema: REGISTRATIONS_SCHEMA.to_owned(),
                minute_start: Timestamp::from_nanos(start),
                rrd_buckets: vec![0; RRD_BUCKETS_MS.len() + 1],
                ..RegistrationsRecord::default()
            })
    }

    fn end(&mut self, attempt: Pending, ending: Ending, at: Timestamp) {
        let m = self.minute(at);
        m.attempts += 1;
        m.challenged += u64::from(attempt.challenged);
        match ending {
            Ending::Registered(ms) => {
                m.registered += 1;
                m.rrd_ms += ms;
                let i = RRD_BUCKETS_MS
                    .iter()
                    .position(|b| ms <= u64::from(*b))
                    .unwrap_or(RRD_BUCKETS_MS.len());
                m.rrd_buckets[i] += 1;
            }
            Ending::Failed => m.failed += 1,
            Ending::TimedOut => m.timed_out += 1,
            Ending::ChallengeUnanswered => m.challenge_unanswered += 1,
        }
    }

    fn expire(&mut self, key: u64, attempt: Pending) {
        self.pending.remove(&key);
        let ending = if attempt.awaiting_retry {
            Ending::ChallengeUnanswered
        } else {
            Ending::TimedOut
        };
        self.end(attempt, ending, attempt.deadline);
    }

    /// A SIP message; only those whose CSeq method is REGISTER are looked at.
    pub fn message(&mut self, time: Timestamp, msg: &SipMessage<'_>) {
        if msg.cseq.method != Method::Register {
            return;
        }
        let key = key_of(msg.call_id);
        let cseq = msg.cseq.number;
        let open = self.pending.get(&key).copied();
        if let Some(attempt) = open.filter(|a| a.deadline <= time) {
            self.expire(key, attempt);
        }
        let open = self.pending.get(&key).copied();
        if msg.method() == Some(Method::Register) {
            match open {
                Some(a) if cseq <= a.cseq => {} // a retransmission, or a stray older one
                Some(a) if a.awaiting_retry => {
                    self.pending.insert(
                        key,
                        Pending {
                            cseq,
                            awaiting_retry: false,
                            deadline: time.plus(self.timeout),
                            ..a
                        },
                    );
                }
                other => {
                    if let Some(previous) = other {
                        // A new REGISTER while the previous one had no final response.
                        self.pending.remove(&key);
                        self.end(previous, Ending::TimedOut, time);
                    }
                    if self.pending.len() >= MAX_PENDING {
                        self.minute(time).not_timed += 1;
                        return;
                    }
                    self.pending.insert(
                        key,
                        Pending {
                            first: time,
                            cseq,
                            challenged: false,
                            awaiting_retry: false,
                            deadline: time.plus(self.timeout),
                        },
                    );
                }
            }
            return;
        }
        let (Some(status), Some(mut attempt)) = (msg.status(), open) else {
            return;
        };
        if cseq != attempt.cseq || status < 200 || attempt.awaiting_retry {
            return;
        }
        match status {
            401 | 407 | 494 => {
                attempt.challenged = true;
                attempt.awaiting_retry = true;
                attempt.deadline = time.plus(self.timeout);
                self.pending.insert(key, attempt);
            }
            200..=299 => {
                self.pending.remove(&key);
                let delay = ms_between(time, attempt.first);
                self.end(attempt, Ending::Registered(delay), time);
            }
            _ => {
                self.pending.remove(&key);
                self.end(attempt, Ending::Failed, time);
            }
        }
    }

    /// Moves time forward: ends attempts past their deadline (at most once a second) and
    /// emits the minutes that ended at least two seconds ago.
    pub fn advance(&mut self, now: Timestamp, out: &mut impl FnMut(RegistrationsRecord)) {
        if now.seconds_since(self.last_sweep) >= 1.0 || now < self.last_sweep {
            self.last_sweep = now;
            let due: Vec<(u64, Pending)> = self
                .pending
                .iter()
                .filter(|(_, a)| a.deadline <= now)
                .map(|(k, a)| (*k, *a))
                .collect();
            for (key, attempt) in due {
                self.expire(key, attempt);
            }
        }
        let limit = now
            .as_nanos()
            .saturating_sub(EMIT_AFTER.as_nanos() as i64 + NANOS_PER_MINUTE);
        while let Some(entry) = self.minutes.first_entry() {
            if *entry.key() > limit {
                break;
            }
            let record = entry.remove();
            self.emit(record, out);
        }
    }

    fn emit(&mut self, mut record: RegistrationsRecord, out: &mut impl FnMut(RegistrationsRecord)) {
        let minute = record.minute_start.as_nanos().to_be_bytes();
        let emitted = self.emitted.to_be_bytes();
        let attempts = record.attempts.to_be_bytes();
        let rrd_ms = record.rrd_ms.to_be_bytes();
        let not_timed = record.not_timed.to_be_bytes();
        let shard = self.shard.to_be_bytes();
        let mut parts: Vec<&[u8]> = vec![
            b"registrations",
            &minute,
            &emitted,
            &attempts,
            &rrd_ms,
            &not_timed,
        ];
        if self.shard != 0 {
            parts.push(&shard);
        }
        record.record_id = crate::record::stable_id(&parts);
        self.emitted += 1;
        out(record);
    }

    /// Emits every minute held. Attempts still open are not counted: neither a response
    /// nor a timeout was seen (the capture or the run ended first).
    pub fn finish(&mut self, out: &mut impl FnMut(RegistrationsRecord)) {
        self.pending.clear();
        while let Some((_, record)) = self.minutes.pop_first() {
            self.emit(record, out);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_nanos(1_700_000_040_000_000_000 + ms * 1_000_000)
    }

    fn feed(t: &mut RegistrationTracker, ms: i64, start: &str, id: &str, cseq: u32) {
        let text = format!(
            "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{cseq}\r\nFrom: <sip:100@x>;tag=A\r\nTo: <sip:100@x>\r\nCall-ID: {id}\r\nCSeq: {cseq} REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
        let msg = crate::decode::sip::parse(text.as_bytes()).unwrap();
        t.message(at(ms), &msg);
    }

    const REG: &str = "REGISTER sip:x SIP/2.0";

    fn all(t: &mut RegistrationTracker) -> RegistrationsRecord {
        let mut sum = RegistrationsRecord::default();
        t.finish(&mut |r| {
            sum.attempts += r.attempts;
            sum.registered += r.registered;
            sum.challenged += r.challenged;
            sum.failed += r.failed;
            sum.timed_out += r.timed_out;
            sum.challenge_unanswered += r.challenge_unanswered;
            sum.rrd_ms += r.rrd_ms;
            sum.not_timed += r.not_timed;
        });
        sum
    }

    #[test]
    fn a_challenged_registration_is_timed_from_its_first_register() {
        let mut t = RegistrationTracker::new(Duration::from_secs(32));
        feed(&mut t, 0, REG, "a", 1);
        feed(&mut t, 300, REG, "a", 1); // retransmission
        feed(&mut t, 40, "SIP/2.0 100 Trying", "a", 1);
        feed(&mut t, 120, "SIP/2.0 401 Unauthorized", "a", 1);
        feed(&mut t, 130, "SIP/2.0 401 Unauthorized", "a", 1); // retransmitted challenge
        feed(&mut t, 1500, REG, "a", 2);
        feed(&mut t, 1650, "SIP/2.0 200 OK", "a", 2);
        feed(&mut t, 1660, "SIP/2.0 200 OK", "a", 2); // retransmitted 2xx
        let s = all(&mut t);
        assert_eq!((s.attempts, s.registered, s.challenged), (1, 1, 1));
        assert_eq!(s.rrd_ms, 1650);
    }

    #[test]
    fn failures_timeouts_and_unanswered_challenges_are_told_apart() {
        let mut t = RegistrationTracker::new(Duration::from_secs(32));
        // Failed after a challenge (RFC 6076 Figure 2).
        feed(&mut t, 0, REG, "f", 1);
        feed(
            &mut t,
            10,
            "SIP/2.0 407 Proxy Authentication Required",
            "f",
            1,
        );
        feed(&mut t, 20, REG, "f", 2);
        feed(&mut t, 30, "SIP/2.0 403 Forbidden", "f", 2);
        // No answer at all: timed out at its deadline, found by advance.
        feed(&mut t, 0, REG, "t", 7);
        // Challenged, never retried.
        feed(&mut t, 0, REG, "c", 1);
        feed(&mut t, 5, "SIP/2.0 401 Unauthorized", "c", 1);
        let mut out = Vec::new();
        t.advance(at(31_000), &mut |r| out.push(r));
        assert_eq!(t.pending(), 2, "deadlines not yet passed");
        t.advance(at(33_000), &mut |r| out.push(r));
        assert_eq!(t.pending(), 0);
        // A REGISTER with a higher CSeq while the previous had no final response.
        feed(&mut t, 40_000, REG, "n", 1);
        feed(&mut t, 41_000, REG, "n", 2);
        feed(&mut t, 41_010, "SIP/2.0 200 OK", "n", 2);
        let s = all(&mut t);
        let emitted: u64 = out.iter().map(|r| r.attempts).sum();
        assert_eq!(emitted, 0, "the minute is still open at 33 s");
        assert_eq!(
            (
                s.attempts,
                s.registered,
                s.failed,
                s.timed_out,
                s.challenge_unanswered
            ),
            (5, 1, 1, 2, 1)
        );
        assert_eq!(s.challenged, 2);
        assert_eq!(s.rrd_ms, 10, "from the second REGISTER of 'n'");
    }

    #[test]
    fn minutes_are_emitted_after_they_end_and_open_attempts_are_bounded() {
        let mut t = RegistrationTracker::new(Duration::from_secs(32));
        feed(&mut t, 0, REG, "m", 1);
        feed(&mut t, 20, "SIP/2.0 200 OK", "m", 1);
        let mut out = Vec::new();
        t.advance(at(61_000), &mut |r| out.push(r));
        assert!(out.is_empty(), "held until two seconds after the minute");
        t.advance(at(62_000), &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].minute_start, at(0));
        assert_eq!(out[0].record_id.len(), 32);
        for i in 0..MAX_PENDING + 3 {
            feed(&mut t, 70_000, REG, &format!("b{i}"), 1);
        }
        assert_eq!(t.pending(), MAX_PENDING);
        let s = all(&mut t);
        assert_eq!(s.not_timed, 3);
    }
}
