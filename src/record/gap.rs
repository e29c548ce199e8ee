//! The gap record (`"type": "gap"`, `"schema": "teledge.gap/1"`): records lost or set aside
//! on the way out, announced upstream so the collector knows what it will never receive.
//! Made by the spool and the uplink, never by the pipeline; kept as is by pseudonymisation
//! (counts and record ids only).

use serde::Serialize;

/// Schema id of a gap record.
pub const GAP_SCHEMA: &str = "teledge.gap/1";

/// Why records are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The spool was full and dropped its oldest records.
    SpoolFullDropOldest,
    /// The spool was full and refused new records.
    SpoolFullDropNewest,
    /// The file system was (nearly) full: new records refused.
    DiskFull,
    /// Records that would not open (unknown key, tampered), moved aside still sealed.
    UnreadableRecord,
    /// A store that would not open, moved aside with what it held.
    StoreQuarantined,
    /// The collector holds other records under this store's ids: every record held was
    /// moved to a new epoch (`epoch` is the old one, `detail` the collector's answer).
    EpochReused,
    /// A record the collector refused (400, 413, 422), kept as a dead letter.
    DeadLetter,
    /// Dead letters removed (or one not kept) to stay within the dead-letter area's bound.
    DeadLetterAreaFull,
    /// Records the agent made but lost before the spool (its record queue full, an append
    /// that failed, a record that would not serialise); `detail` says which.
    RecordsNotSpooled,
    /// Input the agent could not take in or decode (kernel ring drops, a full HEP queue,
    /// frames and reassembly state dropped by the decode path): `dropped` counts packets or
    /// frames, not records, and `detail` says which. Announced at most once a minute per kind.
    InputDropped,
    /// The previous run ended without its final accounting (SIGKILL, a crash, a power cut,
    /// or a file system gone read-only under it): what it held in memory then — records in
    /// the record queue and in their grace, the last flush interval's appends, losses
    /// counted and not yet announced — is lost, how many unknown (`dropped` is null);
    /// `run_started` and `run_last_seen` give the run's time range.
    RunEndedUncleanly,
    /// A long-lived thread or task of the daemon panicked (a bug, in teledge or a
    /// dependency): `detail` names it and what it said; `dropped` counts what the panic lost
    /// (the record or frame in hand; 0 when nothing was), null when unknown. The daemon then
    /// stops with a failure exit (systemd restarts it) after its usual final accounting.
    ComponentPanicked,
    /// Entries a bounded correlation table forgot or turned away to stay within its bound,
    /// costing measurement detail but no record (media endpoints and routes, RTCP kept with
    /// calls, the SSRC index, calls in setup closed as `evicted`, ended dialogs, orphan
    /// streams summed up): `dropped` counts the entries, `detail` names the table and what
    /// records lack for it, `counted_since` starts the time range. At most once a minute per
    /// table.
    StateEvicted,
}

impl GapReason {
    /// The value written in `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::SpoolFullDropOldest => "spool_full_drop_oldest",
            GapReason::SpoolFullDropNewest => "spool_full_drop_newest",
            GapReason::DiskFull => "disk_full",
            GapReason::UnreadableRecord => "unreadable_record",
            GapReason::StoreQuarantined => "store_quarantined",
            GapReason::EpochReused => "epoch_reused",
            GapReason::DeadLetter => "dead_letter",
            GapReason::DeadLetterAreaFull => "dead_letter_area_full",
            GapReason::RecordsNotSpooled => "records_not_spooled",
            GapReason::InputDropped => "input_dropped",
            GapReason::RunEndedUncleanly => "run_ended_uncleanly",
            GapReason::ComponentPanicked => "component_panicked",
            GapReason::StateEvicted => "state_evicted",
        }
    }
}

/// A gap record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapRecord {
    pub schema: &'static str,
    /// The node whose records are missing.
    pub node: String,
    pub reason: GapReason,
    /// How many; `null` when the count is unknown (a quarantined store).
    pub dropped: Option<u64>,
    /// Ids (`node:epoch:seq`) of the first and last record missing, when known.
    pub first_dropped: Option<String>,
    pub last_dropped: Option<String>,
    /// The lost store's epoch (`store_quarantined`): every record of it above the
    /// collector's watermark is lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Why the records would not open, or the store would not open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The file or directory the records were moved to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_aside: Option<String>,
    /// The collector's HTTP status that refused the record (`dead_letter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The run that ended uncleanly (`run_ended_uncleanly`): when it started and when it
    /// was last known alive (RFC 3339, seconds; at most a minute before its end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_last_seen: Option<String>,
    /// `input_dropped`: the losses were counted from this time (the previous announcement
    /// of their kind, or the run's start) up to `time` (RFC 3339, seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_since: Option<String>,
    /// When the gap was announced (RFC 3339, milliseconds).
    pub time: String,
}

impl GapRecord {
    /// A gap of `dropped` records of `node` for `reason`, announced now.
    pub fn new(node: &str, reason: GapReason, dropped: Option<u64>) -> Self {
        GapRecord {
            schema: GAP_SCHEMA,
            node: node.to_owned(),
            reason,
            dropped,
            first_dropped: None,
            last_dropped: None,
            epoch: None,
            detail: None,
            set_aside: None,
            status: None,
            run_started: None,
            run_last_seen: None,
            counted_since: None,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }

    /// The record as spooled and sent: `{"type": "gap", ...}`.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec(&super::Record::Gap(Box::new(self.clone()))).unwrap_or_default()
    }
}
