//! The fleet component: the update agent ([`crate::fleet::agent`]) polling the repository
//! the collector serves, its records into the record queue like every other record.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::ForwardConfig;
use crate::fleet::agent::{installed_version, FleetAgent};
use crate::fleet::transport::HttpsTransport;
use crate::fleet::FleetSettings;
use crate::record::Record;

use super::{Context, DaemonError};

/// How often the installer's outcome file is read between polls.
const OUTCOMES_EVERY: Duration = Duration::from_secs(5);

/// A random duration in `0..=max` (polls of a fleet do not fall in step).
fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() || max.is_zero() {
        return Duration::ZERO;
    }
    let millis = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from_le_bytes(bytes) % (millis + 1))
}

/// Starts polling: the first poll after up to `poll_jitter_s` (so a daemon restarted by the
/// installer reports the installer's outcome soon), then every `poll_interval_s` plus up to
/// `poll_jitter_s`. Stops with the sources.
pub(super) fn spawn(
    settings: &FleetSettings,
    forward: &ForwardConfig,
    ctx: &Context,
) -> Result<(), DaemonError> {
    let transport = HttpsTransport::new(&forward.uplink)?;
    let version = installed_version(&settings.version_command);
    let mut agent = FleetAgent::new(
        settings.clone(),
        &forward.node_id,
        transport,
        version.clone(),
    )
    .map_err(|e| DaemonError::Io(std::io::Error::other(e.to_string())))?;
    tracing::info!(
        state = %settings.state_dir.display(),
        version = %version,
        arch = %settings.arch,
        groups = ?settings.groups,
        interval_s = settings.poll_interval.as_secs(),
        "Fleet updates on."
    );
    let stop = ctx.sources.clone();
    let records = ctx.records.clone();
    let (interval, spread) = (settings.poll_interval, settings.poll_jitter);
    // A panic of the update agent is caught by the supervisor: announced, the daemon stops.
    let guarded = records.clone();
    ctx.tracker.spawn(Arc::clone(&ctx.supervisor).guard("fleet", guarded, async move {
        let mut next_poll = tokio::time::Instant::now() + jitter(spread);
        let mut outcomes = tokio::time::interval(OUTCOMES_EVERY);
        loop {
            crate::panics::inject("fleet");
            let mut emit = |r| records.push(Record::Update(Box::new(r)));
            tokio::select! {
                () = tokio::time::sleep_until(next_poll) => {
                    tokio::select! {
                        result = agent.poll(SystemTime::now(), &mut emit) => {
                            if let Err(e) = result {
                                tracing::error!(error = %e, "Fleet poll failed on the node's own files.");
                            }
                        }
                        () = stop.cancelled() => break,
                    }
                    next_poll = tokio::time::Instant::now() + interval + jitter(spread);
                }
                _ = outcomes.tick() => {
                    if let Err(e) = agent.read_outcomes(&mut emit) {
                        tracing::error!(error = %e, "Fleet installer outcomes unreadable.");
                    }
                }
                () = stop.cancelled() => break,
            }
        }
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_are_spread_over_the_whole_jitter_and_never_beyond_it() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_secs(600);
        let draws: Vec<Duration> = (0..2000).map(|_| jitter(max)).collect();
        assert!(draws.iter().all(|d| *d <= max));
        // Spread over the range, not in step: every tenth of it is hit.
        for tenth in 0..10u32 {
            let (low, high) = (max * tenth / 10, max * (tenth + 1) / 10);
            assert!(
                draws.iter().any(|d| *d >= low && *d < high),
                "nothing in {low:?}..{high:?}"
            );
        }
    }
}
