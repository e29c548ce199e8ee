//! The HEP relay in the daemon (`[hep_out]`): started before any source so the pipeline
//! mirrors from the first frame; finished after the pipeline, so the records of calls closed
//! at shutdown still send their stream reports.

use std::sync::Arc;
use std::time::Duration;

use super::{Context, DaemonError};
use crate::config::hep_out::HepOutConfig;
use crate::relay::{HepRelay, Overflow};

/// Starts the relay and sets its mirror on the pipeline; `None` when `[hep_out]` is off.
/// Live capture never waits for it: a full queue drops and counts.
pub(super) fn start(
    config: Option<&HepOutConfig>,
    ctx: &Context,
) -> Result<Option<HepRelay>, DaemonError> {
    let Some(config) = config else {
        return Ok(None);
    };
    // A panic of the sender thread: announced (its frames lost, counted as `panicked`, are
    // in the announcement, not in the relay's own), and the daemon stops.
    let supervisor = Arc::clone(&ctx.supervisor);
    let records = ctx.records.clone();
    let on_panic: crate::relay::OnPanic = Box::new(move |payload, lost| {
        if let Some(gap) = supervisor.caught("hep_out", payload, Some(lost)) {
            records.push(crate::record::Record::Gap(Box::new(gap)));
        }
    });
    let (relay, mirror) = HepRelay::start_supervised(
        config,
        Overflow::Drop,
        Arc::clone(&ctx.metrics),
        Some(on_panic),
    )?;
    ctx.pipeline.set_mirror(Box::new(mirror));
    Ok(Some(relay))
}

/// Sends what is queued for at most `drain`, off the async threads.
pub(super) async fn finish(relay: Option<HepRelay>, drain: Duration) {
    if let Some(relay) = relay {
        let _ = tokio::task::spawn_blocking(move || relay.finish(drain)).await;
    }
}
