//! Live listen's place in the daemon: the WHEP service on the `[observe]` endpoint, when
//! `[listen]` is enabled (config validation has made sure `[status]` access control is on).
//! Its call lookups go to the shared pipeline's correlation shards: a Call-ID to its call's
//! shard (one table lookup under that shard's lock), a pseudonym shard by shard (one keyed
//! hash per open call, one shard locked at a time); a lookup per WHEP offer does not disturb
//! the capture threads.

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
            let correlator = pipeline.get()?.correlator();
            // The Call-ID itself, or the pseudonym the status page shows (one keyed hash per
            // open call, per offer).
            let call = correlator.listenable(id).or_else(|| {
                correlator.listenable_matching(|key| pseudonyms.identifier(key) == id)
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
            max_listeners_per_supervisor = config.listen.limits.per_supervisor,
            "Live listen (WHEP) served at /whep/calls/{{Call-ID}}."
        );
        Some(whep)
    }
    #[cfg(not(feature = "listen"))]
    None
}
