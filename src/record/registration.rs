//! The registrations record (`"type": "registrations"`, `"schema": "teledge.registrations/1"`):
//! the REGISTER transactions of one minute of capture time, timed as RFC 6076 §4.1–4.2
//! measures them (Registration Request Delay, Ineffective Registration Attempts), made by
//! [`crate::correlation::registrations`].
//!
//! A registration *attempt* runs from its first REGISTER to its final response; a 401, 407
//! or 494 challenge followed (within the timeout) by a new REGISTER of the same Call-ID
//! with a higher CSeq is the same attempt (RFC 6076 Figure 1: the delay spans the
//! challenge). An attempt counts in the minute it ended (its final response, or its
//! timeout). Only counts and sums of milliseconds, no identity: the records of many minutes,
//! nodes and correlation shards add up exactly, and the statistics sum them into the
//! interval records' `sip` section.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Schema id of a registrations record.
pub const REGISTRATIONS_SCHEMA: &str = "teledge.registrations/1";

/// Upper bounds (inclusive, milliseconds) of the registration request delay histogram; a
/// last bucket counts longer delays. A challenged attempt's delay includes the time the UA
/// took to answer the challenge (often seconds), hence the wide range.
pub const RRD_BUCKETS_MS: [u32; 14] = [
    10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 15_000, 20_000, 30_000, 60_000,
];

/// The registration attempts that ended in one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationsRecord {
    pub schema: String,
    /// 32 hex chars over the minute, the figures and the summary's sequence number.
    pub record_id: String,
    /// Start of the minute (UTC) the attempts ended in.
    pub minute_start: Timestamp,
    /// Attempts that ended: `registered + failed + timed_out + challenge_unanswered`.
    pub attempts: u64,
    /// Ended with a 2xx (RRD measured).
    pub registered: u64,
    /// Attempts that met at least one 401/407/494 challenge (in `attempts` too).
    pub challenged: u64,
    /// Ended with a final failure other than a challenge (RFC 6076 IRA).
    pub failed: u64,
    /// No final response within the timeout (SIP Timer F, the correlation `linger`; RFC
    /// 6076 IRA).
    pub timed_out: u64,
    /// Challenged and no new REGISTER followed within the timeout (not an IRA: the UA gave
    /// up, the registrar answered).
    pub challenge_unanswered: u64,
    /// Σ registration request delay of the registered attempts (first REGISTER → 2xx), ms.
    pub rrd_ms: u64,
    /// Bucket counts over [`RRD_BUCKETS_MS`] plus one.
    pub rrd_buckets: Vec<u64>,
    /// REGISTER transactions not timed because [`MAX_PENDING`](crate::correlation::registrations::MAX_PENDING)
    /// attempts were already open (counted, never dropped silently).
    pub not_timed: u64,
}
