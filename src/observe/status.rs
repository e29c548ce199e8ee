//! The status page's data: one [`Snapshot`] of the node, published by the daemon's ticker
//! once a second through a `tokio::sync::watch` ([`SnapshotTx`]), read by the page's HTTP
//! handlers ([`super::page`]) without touching the pipeline. The daemon fills it (see
//! `daemon::status`): active calls from the correlator (identities pseudonymised like the
//! records, and classified into services), the open interval's KPIs and the last closed
//! intervals per service, sensors' last readings and open alerts, spool, uplink and capture
//! state.
//!
//! These types are the page's JSON (`GET /api/snapshot`, the `snapshot` events of
//! `GET /api/events`); each supervisor gets the calls and services their `view` permission
//! covers ([`Snapshot::for_principal`]), and each call says whether they may listen to it.

use std::sync::Arc;

use serde::Serialize;

use crate::access::{Access, Permission, Principal};
use crate::time::Timestamp;

/// Calls shown at most (the most recent); more are counted in `calls_not_shown`.
pub const MAX_CALLS_SHOWN: usize = 200;
/// Closed intervals kept per service for the chart.
pub const HISTORY: usize = 16;

/// Where the daemon publishes snapshots.
pub type SnapshotTx = tokio::sync::watch::Sender<Arc<Snapshot>>;
/// Where the page reads them.
pub type SnapshotRx = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// The node as the status page shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Increases with every snapshot (the SSE event id).
    pub seq: u64,
    pub time: Timestamp,
    pub node: String,
    pub version: String,
    pub calls: Vec<CallView>,
    /// Open calls beyond [`MAX_CALLS_SHOWN`] (or beyond the viewer's permission).
    pub calls_not_shown: usize,
    pub services: Vec<ServiceView>,
    pub sensors: Vec<SensorView>,
    pub alerts: Vec<AlertView>,
    pub spool: SpoolView,
    pub uplink: UplinkView,
    pub capture: CaptureView,
    /// Whether `/health` says healthy, and why not.
    pub healthy: bool,
    pub health_reasons: Vec<String>,
}

/// One active call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallView {
    /// The call's id as records name it (pseudonymised by `[privacy]`).
    pub id: String,
    pub service: Option<String>,
    pub caller: Option<String>,
    pub callee: Option<String>,
    /// `calling`, `proceeding`, `ringing`, `early_media`, `connected`.
    pub state: String,
    pub started: Timestamp,
    /// Since the INVITE (or the first message seen).
    pub duration_s: f64,
    /// Since the answer.
    pub talk_s: Option<f64>,
    pub caller_to_callee: Option<DirectionView>,
    pub callee_to_caller: Option<DirectionView>,
    /// The viewer may listen (filled in per viewer).
    pub listen: bool,
}

/// Live media figures of one direction of a call (its first stream).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectionView {
    pub codec: Option<String>,
    pub packets: u64,
    pub lost_percent: f64,
    pub jitter_ms: Option<f64>,
    pub mos: Option<f64>,
}

/// One service: the open interval's figures and the last closed intervals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub monitorable: bool,
    pub open: IntervalView,
    /// Oldest first, at most [`HISTORY`].
    pub history: Vec<IntervalView>,
}

/// KPIs of one interval (`None`: no denominator yet).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct IntervalView {
    pub start: Option<Timestamp>,
    pub minutes: u32,
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub service_level_percent: Option<f64>,
    pub abandon_rate_percent: Option<f64>,
    pub asa_s: Option<f64>,
    pub mos_mean: Option<f64>,
    pub peak_concurrent: Option<f64>,
}

/// A sensor's last reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorView {
    pub device: String,
    pub model: String,
    pub time: Timestamp,
    pub communication: String,
    pub stale: bool,
    pub values: Vec<SensorValueView>,
    pub states: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorValueView {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// An alert that started and has not ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    pub device: String,
    pub kind: String,
    pub reading: String,
    pub started: Timestamp,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct SpoolView {
    pub records: Option<f64>,
    pub bytes: Option<f64>,
    pub oldest_age_s: Option<f64>,
    /// Records lost before or in the spool (queue full, spool bound), since start.
    pub records_dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct UplinkView {
    pub records_acked: u64,
    pub consecutive_failures: i64,
    pub last_success: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct CaptureView {
    pub packets: u64,
    pub kernel_drops: u64,
    pub active_calls: i64,
    pub active_streams: i64,
}

impl Snapshot {
    /// What `principal` may see: calls and services of the services their `view` (or
    /// `listen`) covers, each call marked with whether they may listen to it.
    pub fn for_principal(&self, principal: &Principal, access: &Access) -> Snapshot {
        let mut out = Snapshot {
            calls: Vec::new(),
            services: Vec::new(),
            ..self.clone()
        };
        for call in &self.calls {
            let service = call.service.as_deref();
            if principal.may_view(service) {
                let mut call = call.clone();
                call.listen = access.check(principal, service, Permission::Listen).is_ok();
                out.calls.push(call);
            } else {
                out.calls_not_shown += 1;
            }
        }
        out.services = self
            .services
            .iter()
            .filter(|s| principal.may_view(Some(&s.name)))
            .cloned()
            .collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessSettings, ServiceSet, Supervisor};
    use crate::record::audit::AuditAuth;

    fn call(id: &str, service: Option<&str>) -> CallView {
        CallView {
            id: id.into(),
            service: service.map(Into::into),
            caller: None,
            callee: None,
            state: "connected".into(),
            started: Timestamp::default(),
            duration_s: 1.0,
            talk_s: None,
            caller_to_callee: None,
            callee_to_caller: None,
            listen: false,
        }
    }

    #[test]
    fn a_viewer_sees_only_the_services_it_may_view() {
        let access = Access::new(AccessSettings {
            supervisors: vec![Supervisor {
                id: "bob".into(),
                token_sha256: None,
                cert_cn: Some("bob".into()),
                view: ServiceSet::only(["support"]),
                listen: ServiceSet::only(["sales"]),
            }],
            monitorable: ["sales".to_owned()].into(),
            ..AccessSettings::default()
        });
        let bob = Principal {
            id: "bob".into(),
            auth: AuditAuth::Certificate,
            view: ServiceSet::only(["support"]),
            listen: ServiceSet::only(["sales"]),
        };
        let snapshot = Snapshot {
            calls: vec![
                call("a", Some("sales")),
                call("b", Some("support")),
                call("c", Some("other")),
                call("d", None),
            ],
            ..Snapshot::default()
        };
        let seen = snapshot.for_principal(&bob, &access);
        let ids: Vec<_> = seen
            .calls
            .iter()
            .map(|c| (c.id.as_str(), c.listen))
            .collect();
        assert_eq!(ids, vec![("a", true), ("b", false)]);
        assert_eq!(seen.calls_not_shown, 2);
    }
}
