//! Panics of the daemon's long-lived threads and tasks (a bug in teledge or a dependency):
//! caught where each does its work, accounted for, announced, and a failure stop.
//!
//! Before, a panic ended its thread or task quietly: a panicking spool writer took its
//! queue and the record in hand with it, and every record after it was dropped as
//! `queue_closed` (counted, never announced, for as long as the daemon ran); a panicking
//! ticker, HEP task or capture thread stopped its part of the data path while the rest ran
//! on. Now each component catches a panic at its boundary ([`std::panic::catch_unwind`]) and
//! hands it to the [`Supervisor`], which
//!
//! - logs and counts it once ([`ComponentPanicked`]: `teledge_panics_total{component}`),
//! - returns the `component_panicked` gap record to announce it upstream (the first panic of
//!   each component at once; later ones of the same component summed and announced by the
//!   shutdown, [`Supervisor::remaining_gaps`]), with `dropped` = what the panic lost (the
//!   record or frame in hand; null when unknown),
//! - and cancels [`Supervisor::failed`]: the daemon then stops as on SIGTERM — the whole
//!   final accounting, the record queue drained into the spool — and `teledge run` exits
//!   with a failure code, so systemd (`Restart=on-failure`) starts it afresh.
//!
//! The component goes on meanwhile where it safely can (the spool writer with the same
//! queue and spooler, so its queue is still drained; the capture threads, the HEP task and
//! the ticker with their next packet, frame or tick), so the stop loses nothing more. The
//! sources' own tasks ([`Supervisor::guard`], [`Supervisor::guard_thread`]: `queue_log`
//! readers, the callcenter assembler, the sensor bridge and device tasks) end with their
//! panic; the HEP relay and the uplink count what theirs lost and end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::observe::events::{ComponentPanicked, InternalEvent};
use crate::observe::AgentMetrics;
use crate::record::gap::{GapReason, GapRecord};

/// What the supervisor knows of one component's panics.
#[derive(Debug, Default)]
struct Panics {
    /// Panics caught.
    count: u64,
    /// The first one's message.
    first: String,
    /// What panics after the first announced one lost (`None`: unknown), not announced yet.
    lost_since: Option<Option<u64>>,
    /// Panics announced so far (the first, and those summed by earlier announcements).
    told: u64,
    /// Whether the component's panic stops the daemon ([`Supervisor::caught`]) or only its
    /// connection ([`Supervisor::contained`]).
    stops: bool,
}

/// Catches the panics of the daemon's components (see the module doc).
#[derive(Debug)]
pub(super) struct Supervisor {
    node: String,
    metrics: Arc<AgentMetrics>,
    failed: CancellationToken,
    panics: Mutex<BTreeMap<&'static str, Panics>>,
    /// Announcements kept for the shutdown (a component with no way into the spool).
    kept: Mutex<Vec<GapRecord>>,
}

impl Supervisor {
    pub(super) fn new(node: &str, metrics: &Arc<AgentMetrics>) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            node: node.to_owned(),
            metrics: Arc::clone(metrics),
            failed: CancellationToken::new(),
            panics: Mutex::default(),
            kept: Mutex::default(),
        })
    }

    /// Cancelled at the first panic: the daemon stops, and exits with a failure code.
    pub(super) fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// A panic of `component` was caught; `lost` is what it lost (`None`: unknown). Logs and
    /// counts it, asks the daemon to stop, and returns the gap record that announces it —
    /// for the first panic of the component; later ones are summed for
    /// [`Supervisor::remaining_gaps`], so a panic on every packet cannot flood the spool.
    pub(super) fn caught(
        &self,
        component: &'static str,
        payload: &(dyn std::any::Any + Send),
        lost: Option<u64>,
    ) -> Option<GapRecord> {
        self.failed.cancel();
        self.account(component, payload, lost, true)
    }

    /// A panic confined to one peer's connection or datagram (the HEP listener's
    /// per-connection tasks): logged, counted and announced as [`Supervisor::caught`] does,
    /// but the daemon goes on — the connection is dropped and the listener keeps serving.
    /// Nothing shared is left half-changed by such a task (its buffer and its peer are its
    /// own; its slots are given back as it unwinds), and stopping for it would let any
    /// sender that can reach the listener restart the daemon at will, closing every call
    /// of every other input as partial. Later panics of the component are summed and
    /// announced by [`Supervisor::contained_due`] (once a minute) or the shutdown.
    pub(super) fn contained(
        &self,
        component: &'static str,
        payload: &(dyn std::any::Any + Send),
        lost: Option<u64>,
    ) -> Option<GapRecord> {
        self.account(component, payload, lost, false)
    }

    fn account(
        &self,
        component: &'static str,
        payload: &(dyn std::any::Any + Send),
        lost: Option<u64>,
        stops: bool,
    ) -> Option<GapRecord> {
        let message = crate::panics::message(payload);
        ComponentPanicked {
            component,
            message: &message,
        }
        .emit(&self.metrics);
        let mut panics = self.panics.lock().unwrap_or_else(|p| p.into_inner());
        let entry = panics.entry(component).or_default();
        entry.count += 1;
        if entry.count > 1 {
            entry.stops |= stops;
            let since = entry.lost_since.get_or_insert(Some(0));
            *since = since.zip(lost).map(|(a, b)| a + b);
            return None;
        }
        // Upstream, only a literal message (the code's own text); a formatted one can hold
        // captured data and stays in the local log (`ComponentPanicked` above).
        let upstream = crate::panics::code_text(payload)
            .unwrap_or("a formatted message, in the local log only");
        upstream.clone_into(&mut entry.first);
        entry.stops = stops;
        entry.told = 1;
        Some(self.gap(component, upstream, lost, None, stops))
    }

    fn gap(
        &self,
        component: &str,
        message: &str,
        lost: Option<u64>,
        later: Option<u64>,
        stops: bool,
    ) -> GapRecord {
        let mut gap = GapRecord::new(&self.node, GapReason::ComponentPanicked, lost);
        // The code's own text, cut to a bounded size.
        let mut said: String = message.chars().take(200).collect();
        if said.len() < message.len() {
            said.push('…');
        }
        gap.detail = Some(if let Some(panics) = later {
            format!("{component} panicked {panics} more times after the first ({said})")
        } else if stops {
            format!("{component} panicked: {said}; teledge stops and is restarted")
        } else {
            format!("{component} panicked: {said}; that connection was dropped, teledge goes on")
        });
        gap
    }

    /// Runs `work` (a task of a source), catching its panic: announced through `records`
    /// (what it held unknown), and the daemon stops. The task does not go on.
    pub(super) async fn guard(
        self: Arc<Self>,
        component: &'static str,
        records: super::RecordQueue,
        work: impl std::future::Future<Output = ()>,
    ) {
        use futures_util::FutureExt;
        if let Err(payload) = std::panic::AssertUnwindSafe(work).catch_unwind().await {
            if let Some(gap) = self.caught(component, payload.as_ref(), None) {
                records.push(crate::record::Record::Gap(Box::new(gap)));
            }
        }
    }

    /// [`Supervisor::guard`] for a thread's work.
    pub(super) fn guard_thread(
        &self,
        component: &'static str,
        records: &super::RecordQueue,
        work: impl FnOnce(),
    ) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            if let Some(gap) = self.caught(component, payload.as_ref(), None) {
                records.push(crate::record::Record::Gap(Box::new(gap)));
            }
        }
    }

    /// Keeps an announcement for [`Supervisor::remaining_gaps`].
    pub(super) fn keep(&self, gap: GapRecord) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(gap);
    }

    /// The panics not announced yet (after the first of a component, and those kept): for
    /// the shutdown to announce.
    pub(super) fn remaining_gaps(&self) -> Vec<GapRecord> {
        let mut gaps = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()));
        gaps.extend(self.summed(|_| true));
        gaps
    }

    /// The later panics of contained components ([`Supervisor::contained`]) not announced
    /// yet, summed per component: for the ticker, once a minute (the daemon runs on after
    /// them, so the shutdown may be far away).
    pub(super) fn contained_due(&self) -> Vec<GapRecord> {
        self.summed(|p| !p.stops)
    }

    fn summed(&self, which: impl Fn(&Panics) -> bool) -> Vec<GapRecord> {
        let mut gaps = Vec::new();
        let mut panics = self.panics.lock().unwrap_or_else(|p| p.into_inner());
        for (component, p) in panics.iter_mut().filter(|(_, p)| which(p)) {
            if let Some(lost) = p.lost_since.take() {
                let later = Some(p.count - p.told);
                gaps.push(self.gap(component, &p.first, lost, later, p.stops));
                p.told = p.count;
            }
        }
        gaps
    }

    /// The components whose panic stopped this run (not the contained ones: their
    /// connection was dropped and the daemon went on; they are in the metrics and gaps).
    pub(super) fn panicked(&self) -> Vec<String> {
        let panics = self.panics.lock().unwrap_or_else(|p| p.into_inner());
        panics
            .iter()
            .filter(|(_, p)| p.stops)
            .map(|(c, _)| (*c).to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A formatted panic message can hold what the code was handling (a slicing panic
    /// quotes the text): it is logged on the box, never announced upstream.
    #[test]
    fn a_formatted_panic_message_does_not_leave_the_box() {
        let metrics = Arc::new(AgentMetrics::new());
        let s = Supervisor::new("edge-01", &metrics);
        let payload = format!(
            "byte index 5 is not a char boundary of `sip:+4930123456@{}`",
            "pbx"
        );
        let gap = s.caught("capture", &payload, None).unwrap();
        let detail = gap.detail.unwrap();
        assert!(!detail.contains("4930123456"), "{detail}");
        assert!(
            detail.starts_with("capture panicked: a formatted message"),
            "{detail}"
        );
        s.caught("capture", &payload, None);
        let rest = s.remaining_gaps();
        assert!(!rest[0].detail.as_deref().unwrap().contains("4930123456"));
    }

    /// A contained panic (one HEP connection's task) is announced but does not stop the
    /// daemon; later ones are summed for the ticker's once-a-minute announcement.
    #[test]
    fn a_contained_panic_is_announced_without_stopping_the_daemon() {
        let metrics = Arc::new(AgentMetrics::new());
        let s = Supervisor::new("edge-01", &metrics);
        let gap = s.contained("hep_connection", &"boom", None).unwrap();
        assert!(!s.failed().is_cancelled());
        assert!(gap.detail.unwrap().contains("connection was dropped"));
        assert!(s.contained_due().is_empty());
        assert!(s.contained("hep_connection", &"boom", None).is_none());
        assert!(s.contained("hep_connection", &"boom", None).is_none());
        s.caught("ticker", &"tock", None);
        assert!(s.caught("ticker", &"tock", None).is_none());
        let due = s.contained_due();
        assert_eq!(due.len(), 1, "{due:?}");
        assert!(due[0].detail.as_deref().unwrap().contains("2 more times"));
        assert!(s.contained_due().is_empty());
        s.contained("hep_connection", &"boom", None);
        // The shutdown tells the rest: one more of the connection, one more of the ticker.
        let rest = s.remaining_gaps();
        assert_eq!(rest.len(), 2, "{rest:?}");
        assert!(rest[0].detail.as_deref().unwrap().contains("1 more times"));
        assert_eq!(metrics.panics.with(&["hep_connection"]).get(), 4);
        assert_eq!(s.panicked(), ["ticker"]);
    }

    /// The first panic of a component is announced at once and stops the daemon; later
    /// ones are summed (unknown losses make the sum unknown) and announced once.
    #[test]
    fn the_first_panic_is_announced_and_later_ones_summed() {
        let metrics = Arc::new(AgentMetrics::new());
        let s = Supervisor::new("edge-01", &metrics);
        assert!(!s.failed().is_cancelled());
        let gap = s.caught("capture", &"boom", Some(1)).unwrap();
        assert_eq!(gap.reason, GapReason::ComponentPanicked);
        assert_eq!(gap.dropped, Some(1));
        assert!(gap.detail.unwrap().starts_with("capture panicked: boom"));
        assert!(s.failed().is_cancelled());
        assert!(s.remaining_gaps().is_empty());
        assert!(s.caught("capture", &"boom", Some(1)).is_none());
        assert!(s.caught("capture", &"boom", Some(2)).is_none());
        assert!(s.caught("ticker", &"tock", None).is_some());
        let rest = s.remaining_gaps();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].dropped, Some(3));
        assert!(rest[0].detail.as_deref().unwrap().contains("2 more times"));
        assert!(s.caught("ticker", &"tock", None).is_none());
        assert_eq!(s.remaining_gaps()[0].dropped, None);
        assert_eq!(s.panicked(), ["capture", "ticker"]);
        assert_eq!(metrics.panics.with(&["capture"]).get(), 3);
    }
}
