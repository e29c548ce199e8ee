//! Live listen's place in the daemon: the WHEP service on the `[observe]` endpoint, when
//! `[listen]` is enabled (config validation has made sure `[status]` access control is on).
//! Its call lookups lock the shared pipeline for one table lookup (the capture thread
//! holds that lock per packet; a lookup per WHEP offer does not disturb it).

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SharedPipeline;
use crate::access::audit::AuditSink;
use crate::access::Access;
use crate::config::agent::AgentConfig;
use crate::media::tap::ListenTap;
use crate::observe::AgentMetrics;

/// The pipeline, set once it exists (the HTTP endpoint starts before it).
pub(super) type PipelineSlot = Arc<OnceLock<SharedPipeline>>;

/// The WHEP service, or `None` when live listen is off (or not built in).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(feature = "listen"), allow(unused_variables))]
pub(super) fn whep_service(
    config: &AgentConfig,
    tap: &ListenTap,
    pipeline: &PipelineSlot,
    access: Option<&Arc<Access>>,
    audit: &AuditSink,
    listeners: &CancellationToken,
    tracker: &TaskTracker,
    metrics: &AgentMetrics,
) -> Option<crate::listen::Service> {
    #[cfg(feature = "listen")]
    {
        let access = access.filter(|_| config.listen.enabled)?;
        let pipeline = Arc::clone(pipeline);
        let pseudonyms = crate::privacy::Pseudonymizer::new(config.forward.privacy.clone());
        let lookup: crate::listen::whep::CallLookup = Arc::new(move |id: &str| {
            let pipeline = pipeline.get()?;
            let p = super::lock(pipeline);
            let correlator = p.correlator();
            // The Call-ID itself, or the pseudonym the status page shows (one keyed hash per
            // open call, per offer).
            let call = correlator.listenable(id).or_else(|| {
                let key = correlator
                    .calls()
                    .open_call_keys()
                    .find(|key| pseudonyms.identifier(key) == id)?;
                correlator.listenable(key)
            })?;
            let shown = pseudonyms.identifier(&call.call_key);
            Some((call, shown))
        });
        let whep = crate::listen::whep::Whep::new(
            config.listen.clone(),
            config.observe.listen.ip(),
            tap.clone(),
            lookup,
            Arc::clone(access),
            audit.clone(),
            config.stats.settings.services.clone(),
            listeners.clone(),
            tracker.clone(),
        );
        metrics.watch_listen(&whep);
        tracing::info!(
            max_listeners = config.listen.limits.total,
            max_listeners_per_call = config.listen.limits.per_call,
            "Live listen (WHEP) served at /whep/calls/{{Call-ID}}."
        );
        Some(whep)
    }
    #[cfg(not(feature = "listen"))]
    None
}
