//! Observability and systemd integration: what the daemon tells Prometheus, an operator's
//! `curl`, and systemd about itself.
//!
//! - [`metrics`]: a small registry of atomic counters and gauges with capped label sets and
//!   scrape-time values, rendered as Prometheus text (format 0.0.4).
//! - [`agent`]: [`AgentMetrics`], every metric family the daemon exposes, as fields the
//!   pipeline bumps.
//! - [`health`]: [`Health`], per-stage progress the pipeline updates, judged against
//!   [`HealthThresholds`].
//! - [`http`]: the local endpoint serving `/metrics` and `/health` (hyper), and the status
//!   page ([`page`], off by default) with the node's live [`status::Snapshot`].
//! - [`systemd`]: `sd_notify` (ready, status, watchdog, stopping, reloading) without
//!   libsystemd, and the [`Watchdog`] that pings only while the data path progresses.
//!
//! Wiring, in the order the daemon does it:
//!
//! ```no_run
//! # async fn wire() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use teledge::observe::{self, AgentMetrics, Health, ObserveSettings, Stage};
//!
//! let settings = ObserveSettings::default();
//! let metrics = Arc::new(AgentMetrics::new());
//! let health = Arc::new(Health::new(&[Stage::SpoolWriter, Stage::Uplink], settings.health.clone()));
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let listener = observe::http::bind(settings.listen).await?;
//! let endpoint = observe::http::Endpoint::new(metrics.clone(), health.clone());
//! tokio::spawn(observe::http::serve(listener, endpoint, shutdown.clone()));
//! // ... open the spool (metrics.watch_spool(spool.clone()); health.set_spool_open(true)) ...
//! let notifier = observe::Notifier::from_env();
//! if let Some(dog) = observe::Watchdog::from_env(notifier.clone()) {
//!     let dog = dog.with_counters(metrics.watchdog_pings.clone(), metrics.watchdog_withheld.clone());
//!     tokio::spawn(dog.run(health.clone().watchdog_probe(), shutdown.clone()));
//! }
//! let _ = notifier.ready();
//! let _ = notifier.status(&metrics.status(std::time::SystemTime::now()).to_string());
//! // ... on SIGTERM:
//! let _ = notifier.stopping();
//! shutdown.cancel();
//! # Ok(()) }
//! ```

pub mod agent;
pub mod events;
pub mod health;
pub mod http;
pub mod metrics;
pub mod page;
pub mod status;
pub mod systemd;

use std::net::{Ipv4Addr, SocketAddr};

pub use agent::AgentMetrics;
pub use health::{Health, HealthReport, HealthThresholds, Stage};
pub use systemd::{Notifier, NotifyState, StatusLine, Watchdog};

/// The default listen address: loopback only, Prometheus' registered port for exporters
/// that have none of their own (9464, also used by OpenTelemetry's Prometheus exporter).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// The longest `stall_after_s` and `uplink_failing_after_s` accepted.
pub const MAX_HEALTH_THRESHOLD: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The most `max_connections` accepted: each connection is a task and a read buffer of up to
/// [`http::MAX_HEAD_BYTES`], so 1,024 of them hold at most ~16 MiB.
pub const MAX_CONNECTIONS_LIMIT: usize = 1024;

/// Settings of the observability endpoint (the `[observe]` table, validated by `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserveSettings {
    /// Serve `/metrics` and `/health` at all.
    pub enabled: bool,
    /// Where to listen; loopback unless `allow_remote`.
    pub listen: SocketAddr,
    /// Must be set explicitly to listen on anything but loopback: the metrics name sources
    /// and give away traffic volumes, and the endpoint has no authentication.
    pub allow_remote: bool,
    /// When `/health` says degraded, and when the watchdog stops pinging.
    pub health: HealthThresholds,
    /// Connections served at once, in all and from one source address (an IPv6 /64):
    /// `max_connections` and `max_connections_per_address`. Behind a reverse proxy or an SSH
    /// tunnel every browser comes from the proxy's address, so a site that puts one in
    /// front raises the second.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

impl Default for ObserveSettings {
    fn default() -> Self {
        ObserveSettings {
            enabled: true,
            listen: DEFAULT_LISTEN,
            allow_remote: false,
            health: HealthThresholds::default(),
            max_connections: http::MAX_CONNECTIONS,
            max_connections_per_address: http::MAX_CONNECTIONS_PER_ADDRESS,
        }
    }
}

impl ObserveSettings {
    /// Problems with these settings, for `config` to report with their TOML paths
    /// (field name, message).
    /// The endpoint's connection bounds as configured (the times are the built-in ones).
    pub fn bounds(&self) -> http::Bounds {
        http::Bounds {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            ..http::Bounds::default()
        }
    }

    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            problems.push((
                "listen",
                format!(
                    "{} is not a loopback address; set allow_remote = true to serve metrics \
                     beyond this host",
                    self.listen
                ),
            ));
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.max_connections) {
            problems.push((
                "max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        if self.max_connections_per_address == 0
            || self.max_connections_per_address > self.max_connections.max(1)
        {
            problems.push((
                "max_connections_per_address",
                "must be between 1 and max_connections".into(),
            ));
        }
        // A threshold beyond a day is no threshold: a stalled pipeline would keep the
        // watchdog fed and `/health` green for years (2^32 s was accepted).
        for (field, value) in [
            ("stall_after_s", self.health.stall_after),
            ("uplink_failing_after_s", self.health.uplink_failing_after),
        ] {
            if value.is_zero() || value > MAX_HEALTH_THRESHOLD {
                problems.push((
                    field,
                    format!(
                        "{} s: must be between 1 and {} seconds (a day)",
                        value.as_secs(),
                        MAX_HEALTH_THRESHOLD.as_secs()
                    ),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_remote_needs_consent() {
        let mut s = ObserveSettings::default();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9464");
        assert!(s.problems().is_empty());
        s.listen = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(s.problems().len(), 1);
        s.allow_remote = true;
        assert!(s.problems().is_empty());
        s.listen = "[::1]:9464".parse().unwrap();
        s.allow_remote = false;
        assert!(s.problems().is_empty());
    }

    /// Regression: 2^32 s (136 years) was accepted as a stall threshold, so a stalled data
    /// path never withheld the watchdog nor turned `/health` degraded.
    #[test]
    fn health_thresholds_are_at_most_a_day() {
        let mut s = ObserveSettings::default();
        s.health.stall_after = std::time::Duration::from_secs(1 << 32);
        s.health.uplink_failing_after = std::time::Duration::ZERO;
        let problems = s.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, "stall_after_s");
        assert!(
            problems[0].1.contains("between 1 and 86400"),
            "{problems:?}"
        );
        assert_eq!(problems[1].0, "uplink_failing_after_s");
        s.health.stall_after = MAX_HEALTH_THRESHOLD;
        s.health.uplink_failing_after = std::time::Duration::from_secs(1);
        assert!(s.problems().is_empty());
    }

    #[test]
    fn connection_bounds_are_checked_and_reach_the_endpoint() {
        let mut s = ObserveSettings::default();
        assert_eq!(s.bounds(), http::Bounds::default());
        s.max_connections = 0;
        s.max_connections_per_address = 0;
        let fields: Vec<&str> = s.problems().iter().map(|p| p.0).collect();
        assert_eq!(fields, ["max_connections", "max_connections_per_address"]);
        s.max_connections = MAX_CONNECTIONS_LIMIT + 1;
        s.max_connections_per_address = 1;
        assert_eq!(s.problems().len(), 1);
        s.max_connections = 32;
        s.max_connections_per_address = 33;
        assert_eq!(s.problems()[0].0, "max_connections_per_address");
        s.max_connections_per_address = 32;
        assert!(s.problems().is_empty());
        assert_eq!(
            (
                s.bounds().max_connections,
                s.bounds().max_connections_per_address
            ),
            (32, 32)
        );
    }
}
