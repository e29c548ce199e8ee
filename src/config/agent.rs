//! The daemon's configuration (`/etc/teledge/teledge.toml`): a serde mirror with unknown
//! fields rejected, validated into an [`AgentConfig`] with *every* problem listed by its TOML
//! path and line. The forwarding sections (`[node]`, `[spool]`, `[privacy]`, `[uplink]`) are
//! validated by [`super::forward`]; the daemon adds its sources, correlation bounds, sensors,
//! observability and shutdown. `teledge check-config` prints the problems; a bad file exits
//! with 78 (EX_CONFIG) so systemd does not restart-loop. The commented example is
//! `teledge.example.toml` at the top of the repository.
//!
//! Beyond [`super::forward`]'s checks: every number in a range that works (timeouts, retries,
//! baud rates, queue bounds, clock tolerances), serial ports that exist must be character
//! devices, HEP on every address (`0.0.0.0`, `::`) requires an `auth_key` (on another
//! address than loopback it is a warning), the HEP TLS key must match its certificate, and
//! buffers adding up beyond the systemd unit's `MemoryHigh=` are a warning. Whatever would
//! travel in clear to or from another box (identities, keys, tokens) is a warning from
//! [`super::in_clear`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::forward::{validate_forward, ForwardConfig};
use super::{
    check_key_pair, parse_raw, placed, read_file, readable_file, ConfigErrors, ConfigProblem,
    RawFile, Strictness,
};
use crate::correlation::calls::CallLimits;
use crate::correlation::media::MediaLimits;
use crate::observe::ObserveSettings;
use crate::secret::Secret;
use crate::sensors::device::DeviceSettings;
use crate::sensors::profile;
use crate::time::ClockGuard;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapture {
    interface: String,
    #[serde(default = "default_ring_mib")]
    ring_mib: u32,
    #[serde(default = "default_block_kib")]
    block_kib: u32,
    /// The ring each capture starts with, KiB for the interface (shared out like
    /// `ring_mib`); it grows to `ring_mib` when the traffic needs it. Default: the whole
    /// ring from the start (a burst faster than a grow would be lost with a small start:
    /// README, "A ring that grows"); e.g. 512 a capture thread on a box idle most of the time.
    ring_start_kib: Option<u32>,
    #[serde(default = "default_block_timeout_ms")]
    block_timeout_ms: u32,
    #[serde(default)]
    promiscuous: bool,
    /// Capture threads (fanout sockets) for this interface; default: the cores available,
    /// at most [`DEFAULT_MAX_CAPTURE_THREADS`].
    threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHep {
    udp: Option<String>,
    tcp: Option<String>,
    tls: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    auth_key: Option<Secret<String>>,
    auth_key_file: Option<PathBuf>,
    /// A TCP/TLS connection must deliver a valid (and, with a key, authenticated) frame
    /// within this long, or it is closed.
    #[serde(default = "default_first_frame_s")]
    first_frame_timeout_s: u64,
    #[serde(default = "default_idle_s")]
    idle_timeout_s: u64,
    #[serde(default = "default_hep_connections")]
    max_connections: usize,
    #[serde(default = "default_hep_connections_per_source")]
    max_connections_per_source: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCorrelation {
    #[serde(default = "default_setup_timeout")]
    setup_timeout_s: u64,
    #[serde(default = "default_max_call_duration")]
    max_call_duration_s: u64,
    #[serde(default = "default_max_calls")]
    max_calls: usize,
    #[serde(default = "default_max_streams")]
    max_streams: usize,
    #[serde(default = "default_stream_idle")]
    stream_idle_s: u64,
    #[serde(default = "default_queue")]
    queue_frames: usize,
    #[serde(default = "default_queue_bytes")]
    queue_bytes: usize,
    /// Sender times (HEP) later than the local clock by more than this are replaced by it.
    #[serde(default = "default_future_tolerance")]
    future_time_tolerance_s: u64,
    /// Sender times earlier than the local clock by more than this are replaced by it.
    #[serde(default = "default_past_tolerance")]
    past_time_tolerance_s: u64,
    /// Milliseconds a call's record waits after the call ended for its RTP/RTCP in flight.
    #[serde(default = "default_record_grace_ms")]
    record_grace_ms: u64,
    /// Correlation shards; default: the capture threads of every interface together.
    #[serde(default)]
    shards: Option<usize>,
    /// Ended calls' records held in their grace at most (all shards together).
    #[serde(default = "default_grace_records")]
    grace_records: usize,
    /// Bytes of those records at most, as `record::held_bytes` weighs them.
    #[serde(default = "default_grace_bytes")]
    grace_bytes: usize,
    /// Records waiting for the spool writer at most (the daemon's record queue).
    #[serde(default = "default_record_queue_records")]
    record_queue_records: usize,
    /// Bytes of those records at most, as `record::held_bytes` weighs them.
    #[serde(default = "default_record_queue_bytes")]
    record_queue_bytes: usize,
}

impl Default for RawCorrelation {
    fn default() -> Self {
        RawCorrelation {
            setup_timeout_s: default_setup_timeout(),
            max_call_duration_s: default_max_call_duration(),
            max_calls: default_max_calls(),
            max_streams: default_max_streams(),
            stream_idle_s: default_stream_idle(),
            queue_frames: default_queue(),
            queue_bytes: default_queue_bytes(),
            future_time_tolerance_s: default_future_tolerance(),
            past_time_tolerance_s: default_past_tolerance(),
            record_grace_ms: default_record_grace_ms(),
            shards: None,
            grace_records: default_grace_records(),
            grace_bytes: default_grace_bytes(),
            record_queue_records: default_record_queue_records(),
            record_queue_bytes: default_record_queue_bytes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSensor {
    name: String,
    port: PathBuf,
    profile: String,
    poll_interval_s: Option<f64>,
    record_interval_s: Option<f64>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    modbus_address: Option<u8>,
    baud: Option<u32>,
    parity: Option<String>,
    /// Limits overriding the profile's, per reading name.
    #[serde(default)]
    limits: std::collections::BTreeMap<String, RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    low: Option<f64>,
    high: Option<f64>,
    #[serde(default)]
    hysteresis: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObserve {
    enabled: Option<bool>,
    listen: Option<String>,
    #[serde(default)]
    allow_remote: bool,
    stall_after_s: Option<u64>,
    uplink_failing_after_s: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    #[serde(default = "default_drain")]
    drain_timeout_s: u64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            drain_timeout_s: default_drain(),
        }
    }
}

/// Most capture threads for one interface.
pub const MAX_CAPTURE_THREADS: usize = 64;

/// Most capture threads an interface gets by default (more only with `threads = N`): an
/// edge box's cores are shared with the uplink, the spool and the statistics, and four
/// capture threads take more than the largest measured site's traffic.
pub const DEFAULT_MAX_CAPTURE_THREADS: usize = 4;

/// Capture threads of an interface by default: one a core this process may run on, at most
/// [`DEFAULT_MAX_CAPTURE_THREADS`]. With several, one call's packets reach its correlation
/// shard from several threads, out of capture order by up to a ring block; each shard puts
/// its SIP back in capture order within a window (see `crate::correlation::sharded`), so a
/// call through a proxy on the tapped box still names its first hop's addresses.
fn default_capture_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, DEFAULT_MAX_CAPTURE_THREADS)
}

/// Largest block of a start ring.
const START_BLOCK_KIB: u32 = 128;

fn default_ring_mib() -> u32 {
    16
}
fn default_block_kib() -> u32 {
    1024
}
fn default_block_timeout_ms() -> u32 {
    100
}
fn default_setup_timeout() -> u64 {
    300
}
fn default_max_call_duration() -> u64 {
    4 * 3600
}
fn default_max_calls() -> usize {
    100_000
}
fn default_max_streams() -> usize {
    100_000
}
fn default_stream_idle() -> u64 {
    60
}
fn default_queue() -> usize {
    65_536
}
fn default_drain() -> u64 {
    30
}
fn default_queue_bytes() -> usize {
    32 << 20
}
fn default_grace_records() -> usize {
    CallLimits::default().max_grace_records
}
fn default_grace_bytes() -> usize {
    CallLimits::default().max_grace_bytes
}
fn default_record_queue_records() -> usize {
    65_536
}
fn default_record_queue_bytes() -> usize {
    48 << 20
}
fn default_future_tolerance() -> u64 {
    2
}
fn default_past_tolerance() -> u64 {
    300
}
fn default_record_grace_ms() -> u64 {
    CallLimits::default().record_grace.as_millis() as u64
}
fn default_first_frame_s() -> u64 {
    5
}
fn default_idle_s() -> u64 {
    300
}
fn default_hep_connections() -> usize {
    256
}
fn default_hep_connections_per_source() -> usize {
    16
}

/// A live capture on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub interface: String,
    /// The ring's geometry, computed and checked against the kernel's rules once, here:
    /// the ring of *each* capture thread (`ring_mib` is the interface's, shared out).
    pub ring: crate::sources::afpacket::RingSettings,
    /// The ring each capture thread starts with (`ring_start_kib`, shared out); it grows to
    /// `ring` when the traffic needs it. Equal to `ring` when it starts whole.
    pub ring_start: crate::sources::afpacket::RingSettings,
    pub promiscuous: bool,
    /// Capture threads, each with its own socket and ring in one `PACKET_FANOUT` group
    /// (1: one socket, no fanout).
    pub threads: usize,
}

/// The HEP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepConfig {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// TLS listener with its certificate and key files.
    pub tls: Option<(SocketAddr, PathBuf, PathBuf)>,
    /// Never printed (see [`Secret`]).
    pub auth_key: Option<Secret<String>>,
    pub first_frame_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
}

/// `MemoryHigh=` of the shipped systemd unit.
const UNIT_MEMORY_HIGH: u64 = 768 << 20;

/// Everything `teledge run` needs, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub forward: ForwardConfig,
    pub captures: Vec<CaptureConfig>,
    pub hep: Option<HepConfig>,
    pub calls: CallLimits,
    pub media: MediaLimits,
    /// Correlation shards (`[correlation] shards`; by default the capture threads of every
    /// interface together, at least 1): see [`crate::correlation::sharded`].
    pub shards: usize,
    /// HEP frames queued between the listener and correlation; beyond it frames are dropped
    /// and counted (the listener never waits). Live capture correlates on its own thread and
    /// needs no queue: the kernel ring is its buffer.
    pub queue_frames: usize,
    /// The same queue's bound in bytes (frame payloads plus a fixed cost per frame).
    pub queue_bytes: usize,
    /// Records waiting for the spool writer at most (`[correlation] record_queue_records`),
    /// and their bytes as [`crate::record::held_bytes`] weighs them
    /// (`record_queue_bytes`): beyond either a record from a source that cannot wait is
    /// dropped (counted, announced).
    pub record_queue_records: usize,
    pub record_queue_bytes: usize,
    /// How far sender times (HEP) may be from the local clock before they are replaced.
    pub clock_tolerance: ClockGuard,
    pub sensors: Vec<DeviceSettings>,
    /// Asterisk `queue_log` files followed (`[[queue_log]]`).
    pub queue_logs: Vec<super::queue::QueueLogConfig>,
    /// FreeSWITCH event sockets read for `mod_callcenter` events (`[[callcenter]]`).
    pub callcenters: Vec<super::queue::CallcenterConfig>,
    pub observe: ObserveSettings,
    pub drain_timeout: Duration,
    /// `[stats]` and `[[service]]`: interval records per service.
    pub stats: super::stats::StatsConfig,
    /// `[status]` and `[[supervisor]]`: the status page and who may use it (and listen).
    pub status: super::access::StatusConfig,
    /// `[listen]`: live listen to calls over WebRTC (WHEP).
    pub listen: crate::listen::ListenSettings,
    /// `[fleet]`: signed updates, when the node takes part in a fleet.
    pub fleet: Option<super::fleet::FleetSettings>,
    /// `[hep_out]`: the HEP relay to HOMER, when enabled.
    pub hep_out: Option<super::hep_out::HepOutConfig>,
    /// Findings that do not stop the service (printed by `check-config`, logged by `run`).
    pub warnings: Vec<ConfigProblem>,
    /// `[node] heartbeat_interval_s` (default 300 s): how often a `teledge.heartbeat/1`
    /// record says what the node runs (one is also made at start and after a reload).
    pub heartbeat_interval: Duration,
    /// SHA-256 (lowercase hex) of the configuration text's bytes: the heartbeat's
    /// `config_sha256`, so the central site sees which configuration each node runs.
    pub config_sha256: String,
    /// The file as parsed, by top-level section: SIGHUP compares it with the new file to say
    /// what changed. It holds whatever keys the file holds inline, so it is never printed.
    pub sections: Secret<toml::Table>,
}

/// Reads and validates the daemon's configuration: the whole file, every section.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigErrors> {
    let text = read_file(path)?;
    match parse(&text) {
        Ok(mut config) => {
            config.warnings = placed(&text, std::mem::take(&mut config.warnings));
            Ok(config)
        }
        Err(ConfigErrors(problems)) => Err(ConfigErrors(placed(&text, problems))),
    }
}

fn socket_addr(
    value: &Option<String>,
    path: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<SocketAddr> {
    let value = value.as_ref()?;
    match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(ConfigProblem {
                path: path.into(),
                message: format!("{value:?}: expected ip:port, e.g. \"0.0.0.0:9060\""),
            });
            None
        }
    }
}

fn positive_secs(value: f64, path: &str, problems: &mut Vec<ConfigProblem>) -> Option<Duration> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(86_400) => Some(d),
        _ => {
            problems.push(ConfigProblem {
                path: path.into(),
                message: format!("{value}: must be between 0.1 and 86400 seconds"),
            });
            None
        }
    }
}

/// Pushes a problem: `problem!(problems, path, message)`.
macro_rules! problem {
    ($problems:expr, $path:expr, $message:expr $(,)?) => {
        $problems.push(ConfigProblem {
            path: String::from($path),
            message: $message,
        })
    };
}

/// Default of `[node] heartbeat_interval_s`.
const DEFAULT_HEARTBEAT_S: u64 = 300;

/// SHA-256 of `bytes`, lowercase hex.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Validates configuration text (profile names are resolved in the default directories).
pub fn parse(text: &str) -> Result<AgentConfig, ConfigErrors> {
    parse_with_profiles(text, &profile::default_dirs())
}

/// Validates configuration text, looking device profiles up in `profile_dirs`.
pub fn parse_with_profiles(
    text: &str,
    profile_dirs: &[PathBuf],
) -> Result<AgentConfig, ConfigErrors> {
    let raw: RawFile = parse_raw(text)?;
    let sections: toml::Table = toml::from_str(text).map_err(|e| super::toml_problem(text, &e))?;
    let mut problems = Vec::new();
    // State files of the queue_log sources go beside the spool by default.
    let state_dir = raw
        .spool
        .dir()
        .parent()
        .map_or_else(|| raw.spool.dir().to_owned(), Path::to_owned);
    let heartbeat_interval = match raw.node.heartbeat_interval_s {
        None => Duration::from_secs(DEFAULT_HEARTBEAT_S),
        Some(s) if (10..=86_400).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            problem!(
                problems,
                "node.heartbeat_interval_s",
                format!("{s}: must be between 10 and 86400 seconds")
            );
            Duration::from_secs(DEFAULT_HEARTBEAT_S)
        }
    };
    let forward = validate_forward(
        raw.node,
        raw.spool,
        raw.privacy,
        raw.uplink,
        Strictness::Daemon,
        &mut problems,
    );

    let mut captures = Vec::new();
    let mut interfaces = std::collections::BTreeSet::new();
    for (i, c) in raw.capture.iter().enumerate() {
        let at = |field: &str| format!("capture[{i}].{field}");
        let problems_before = problems.len();
        let name_ok =
            !c.interface.is_empty() && c.interface.len() < 16 && !c.interface.contains(['/', ' ']);
        if !name_ok {
            problem!(
                problems,
                at("interface"),
                format!("{:?}: not an interface name", c.interface)
            );
        }
        if !interfaces.insert(c.interface.clone()) {
            problem!(
                problems,
                at("interface"),
                format!("{:?} is captured twice", c.interface)
            );
        }
        if !c.block_kib.is_power_of_two() || c.block_kib < 4 || c.block_kib > 65_536 {
            problem!(
                problems,
                at("block_kib"),
                "must be a power of two between 4 and 65536".into()
            );
        }
        let threads = c.threads.unwrap_or_else(default_capture_threads);
        if threads == 0 || threads > MAX_CAPTURE_THREADS {
            problem!(
                problems,
                at("threads"),
                format!("must be between 1 and {MAX_CAPTURE_THREADS}")
            );
        }
        let threads = threads.clamp(1, MAX_CAPTURE_THREADS);
        // Each thread's ring is its share of the interface's.
        let ring = (u64::from(c.ring_mib) << 20) / threads as u64;
        if c.ring_mib == 0 || c.ring_mib > 4096 {
            problem!(
                problems,
                at("ring_mib"),
                "must be between 1 and 4096".into()
            );
        } else if ring < u64::from(c.block_kib) << 10 {
            problem!(
                problems,
                at("ring_mib"),
                format!("must hold at least one block for each of the {threads} capture threads")
            );
        }
        if c.block_timeout_ms == 0 || c.block_timeout_ms > 1000 {
            problem!(
                problems,
                at("block_timeout_ms"),
                "must be between 1 and 1000".into()
            );
        }
        // The kernel's own rules for the ring, checked now rather than at the first start;
        // the capture opens exactly this geometry.
        let ring_settings = crate::sources::afpacket::RingSettings::sized(
            ring,
            c.block_kib << 10,
            c.block_timeout_ms,
        );
        let checked = problems.len() == problems_before;
        if let Some(e) = checked
            .then(|| ring_settings.validate(4096).err())
            .flatten()
        {
            for message in e.problems {
                problem!(problems, at("ring_mib"), message);
            }
        }
        // The ring it starts with: blocks of at most START_BLOCK_KIB (a 64 KiB packet still
        // fits whole), at least one a thread, never more than the whole ring.
        let start_kib = c.ring_start_kib.unwrap_or(c.ring_mib.saturating_mul(1024));
        let start_block_kib = c.block_kib.min(START_BLOCK_KIB);
        let start = (u64::from(start_kib) << 10) / threads as u64;
        let mut ring_start = ring_settings;
        if start_kib == 0 || u64::from(start_kib) > u64::from(c.ring_mib) << 10 {
            if c.ring_start_kib.is_some() {
                problem!(
                    problems,
                    at("ring_start_kib"),
                    "must be between 1 and ring_mib * 1024".into()
                );
            }
        } else if start < u64::from(start_block_kib) << 10 {
            problem!(
                problems,
                at("ring_start_kib"),
                format!(
                    "must hold at least one {start_block_kib} KiB block for each of the \
                     {threads} capture threads"
                )
            );
        } else if start < ring {
            ring_start = crate::sources::afpacket::RingSettings::sized(
                start,
                start_block_kib << 10,
                c.block_timeout_ms,
            );
            if let Some(e) = checked.then(|| ring_start.validate(4096).err()).flatten() {
                for message in e.problems {
                    problem!(problems, at("ring_start_kib"), message);
                }
            }
        }
        captures.push(CaptureConfig {
            interface: c.interface.clone(),
            ring: ring_settings,
            ring_start,
            promiscuous: c.promiscuous,
            threads,
        });
    }

    let mut warnings = Vec::new();
    let hep = raw
        .hep
        .as_ref()
        .map(|h| validate_hep(h, &mut problems, &mut warnings));
    // State files of the queue_log sources go beside the spool by default.
    let queue_logs = super::queue::validate_queue_logs(&raw.queue_log, &state_dir, &mut problems);
    let callcenters = super::queue::validate_callcenters(&raw.callcenter, &mut problems);
    if captures.is_empty()
        && hep.is_none()
        && raw.sensors.is_empty()
        && queue_logs.is_empty()
        && raw.callcenter.is_empty()
    {
        problem!(
            problems,
            "capture",
            "nothing to do: configure at least one [[capture]], [hep], [[sensors]], \
             [[queue_log]] or [[callcenter]]"
                .into(),
        );
    }

    let c = &raw.correlation;
    for (field, value, min, max) in [
        ("setup_timeout_s", c.setup_timeout_s, 1, 86_400),
        ("max_call_duration_s", c.max_call_duration_s, 60, 7 * 86_400),
        ("stream_idle_s", c.stream_idle_s, 1, 3600),
    ] {
        if value < min || value > max {
            problem!(
                problems,
                format!("correlation.{field}"),
                format!("must be between {min} and {max}")
            );
        }
    }
    for (field, value, min, max) in [
        ("max_calls", c.max_calls, 1, 10_000_000),
        ("max_streams", c.max_streams, 1, 10_000_000),
        ("queue_frames", c.queue_frames, 64, 10_000_000),
        // At least a few of the largest frames; at most what a box can spare (4 GiB, or
        // the address space on a 32-bit box: `4 << 30` in a 32-bit usize is 0, which
        // refused every value on armv7).
        (
            "queue_bytes",
            c.queue_bytes,
            1 << 20,
            usize::try_from(4u64 << 30).unwrap_or(usize::MAX),
        ),
        // The bounds of records in flight: counts, and bytes as `record::held_bytes`
        // weighs a record (at least a few large records; at most what a box can spare).
        ("grace_records", c.grace_records, 1, 10_000_000),
        (
            "grace_bytes",
            c.grace_bytes,
            1 << 20,
            usize::try_from(4u64 << 30).unwrap_or(usize::MAX),
        ),
        (
            "record_queue_records",
            c.record_queue_records,
            1024,
            10_000_000,
        ),
        (
            "record_queue_bytes",
            c.record_queue_bytes,
            1 << 20,
            usize::try_from(4u64 << 30).unwrap_or(usize::MAX),
        ),
        (
            "future_time_tolerance_s",
            c.future_time_tolerance_s as usize,
            0,
            60,
        ),
        (
            "past_time_tolerance_s",
            c.past_time_tolerance_s as usize,
            1,
            86_400,
        ),
    ] {
        if value < min || value > max {
            problem!(
                problems,
                format!("correlation.{field}"),
                format!("must be between {min} and {max}")
            );
        }
    }
    let max_grace = crate::correlation::calls::MAX_RECORD_GRACE.as_millis() as u64;
    if c.record_grace_ms > max_grace {
        problem!(
            problems,
            "correlation.record_grace_ms",
            format!(
                "{} is out of range: must be between 0 and {max_grace} (milliseconds a call's \
                 record waits for its media in flight; every record is that much later, and a \
                 crash can lose that much more)",
                c.record_grace_ms
            )
        );
    }
    let calls = CallLimits {
        max_calls: c.max_calls,
        record_grace: Duration::from_millis(c.record_grace_ms.min(max_grace)),
        setup_timeout: Duration::from_secs(c.setup_timeout_s),
        max_call_duration: Duration::from_secs(c.max_call_duration_s),
        max_grace_records: c.grace_records,
        max_grace_bytes: c.grace_bytes,
        ..CallLimits::default()
    };
    let media = MediaLimits {
        max_streams: c.max_streams,
        stream_idle: Duration::from_secs(c.stream_idle_s),
        ..MediaLimits::default()
    };

    let mut sensors = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in raw.sensors.iter().enumerate() {
        let at = |field: &str| format!("sensors[{i}].{field}");
        if s.name.trim().is_empty() {
            problem!(problems, at("name"), "must not be empty".into());
        } else if !names.insert(s.name.clone()) {
            problem!(problems, at("name"), format!("{:?} is used twice", s.name));
        }
        let loaded = match profile::resolve(&s.profile, profile_dirs) {
            Ok(path) => match profile::load(&path) {
                Ok(p) => Some(p),
                Err(ConfigErrors(inner)) => {
                    for p in inner {
                        problem!(
                            problems,
                            at("profile"),
                            format!("{}: {}", path.display(), p)
                        );
                    }
                    None
                }
            },
            Err(e) => {
                problem!(problems, at("profile"), e);
                None
            }
        };
        let Some(mut loaded) = loaded else { continue };
        if let Some(a) = s.modbus_address {
            if !(1..=247).contains(&a) && a != 254 {
                problem!(
                    problems,
                    at("modbus_address"),
                    "must be 1..247 (or 254, 'any sensor')".into()
                );
            }
            loaded.serial.modbus_address = Some(a);
        }
        if let Some(b) = s.baud {
            loaded.serial.baud = b;
        }
        if let Some(parity) = &s.parity {
            loaded.serial.parity = match parity.as_str() {
                "none" => profile::Parity::None,
                "even" => profile::Parity::Even,
                "odd" => profile::Parity::Odd,
                other => {
                    problem!(
                        problems,
                        at("parity"),
                        format!("{other:?}: expected none, even or odd")
                    );
                    loaded.serial.parity
                }
            };
        }
        for (reading, limits) in &s.limits {
            match loaded.readings.iter_mut().find(|r| &r.name == reading) {
                Some(r) => {
                    r.limits = Some(crate::sensors::deviation::Limits {
                        low: limits.low,
                        high: limits.high,
                        hysteresis: limits.hysteresis,
                    })
                }
                None => problem!(
                    problems,
                    format!("sensors[{i}].limits.{reading}"),
                    format!("the profile {:?} has no reading {reading:?}", loaded.model),
                ),
            }
        }
        let mut device = DeviceSettings::from_profile(s.name.clone(), s.port.clone(), loaded);
        if let Some(p) = s.poll_interval_s {
            if let Some(d) = positive_secs(p, &at("poll_interval_s"), &mut problems) {
                device.poll_interval = d;
                device.record_interval = d;
                device.stale_after = d * 3;
                device.lost_after = d * 3;
            }
        }
        if let Some(r) = s.record_interval_s {
            if let Some(d) = positive_secs(r, &at("record_interval_s"), &mut problems) {
                device.record_interval = d;
            }
        }
        if let Some(t) = s.timeout_ms {
            if (10..=60_000).contains(&t) {
                device.timeout = Duration::from_millis(t);
            } else {
                problem!(
                    problems,
                    at("timeout_ms"),
                    format!("{t}: must be between 10 and 60000")
                );
            }
        }
        if let Some(r) = s.retries {
            if r <= 10 {
                device.retries = r;
            } else {
                problem!(problems, at("retries"), format!("{r}: at most 10"));
            }
        }
        if s.baud.is_some_and(|b| !(50..=4_000_000).contains(&b)) {
            problem!(
                problems,
                at("baud"),
                "must be between 50 and 4000000".into()
            );
        }
        // A device may be plugged in later (the task waits for it); what is there must be
        // a character device, not a file or a directory.
        if let Ok(meta) = std::fs::metadata(&s.port) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_char_device() {
                problem!(
                    problems,
                    at("port"),
                    format!("{}: not a serial device", s.port.display())
                );
            }
        }
        sensors.push(device);
    }

    let mut observe = ObserveSettings::default();
    if let Some(e) = raw.observe.enabled {
        observe.enabled = e;
    }
    if let Some(listen) = socket_addr(&raw.observe.listen, "observe.listen", &mut problems) {
        observe.listen = listen;
    }
    observe.allow_remote = raw.observe.allow_remote;
    if let Some(s) = raw.observe.stall_after_s {
        observe.health.stall_after = Duration::from_secs(s);
    }
    if let Some(s) = raw.observe.uplink_failing_after_s {
        observe.health.uplink_failing_after = Duration::from_secs(s);
    }
    if let Some(n) = raw.observe.max_connections {
        observe.max_connections = n;
        // Unset, the per-address share follows a smaller table.
        observe.max_connections_per_address = observe.max_connections_per_address.min(n.max(1));
    }
    if let Some(n) = raw.observe.max_connections_per_address {
        observe.max_connections_per_address = n;
    }
    for (field, message) in observe.problems() {
        problems.push(ConfigProblem {
            path: format!("observe.{field}"),
            message,
        });
    }
    if raw.shutdown.drain_timeout_s == 0 || raw.shutdown.drain_timeout_s > 40 {
        // The unit's TimeoutStopSec is 45 s: the drain must end before systemd kills us.
        problems.push(ConfigProblem {
            path: "shutdown.drain_timeout_s".into(),
            message: "must be between 1 and 40 (systemd stops waiting at 45 s)".into(),
        });
    }

    // The unit's MemoryHigh= (systemd/teledge.service): buffers configured beyond it would
    // be throttled, then killed.
    let buffers = captures
        .iter()
        .map(|c| c.ring.total_bytes() * c.threads as u64)
        .sum::<u64>()
        + raw.correlation.queue_bytes as u64
        + raw.correlation.grace_bytes as u64
        + raw.correlation.record_queue_bytes as u64
        + forward.as_ref().map_or(0, |f| f.spool.cache_bytes);
    if buffers > UNIT_MEMORY_HIGH {
        warnings.push(ConfigProblem {
            path: "capture".into(),
            message: format!(
                "capture rings, HEP queue, records in flight (grace_bytes, record_queue_bytes) \
                 and spool cache add up to {buffers} bytes, more than \
                 the unit's MemoryHigh= ({UNIT_MEMORY_HIGH}): raise MemoryHigh=/MemoryMax= in a \
                 drop-in"
            ),
        });
    }
    let stats = super::stats::validate_stats(&raw.stats, &raw.service, &mut problems);
    let status = super::access::validate_status(
        &raw.status,
        &raw.supervisor,
        &super::stats::service_monitorable(&raw.service),
        &mut problems,
    );
    if status.enabled && !observe.enabled {
        problem!(
            problems,
            "status.enabled",
            "the status page is served by the [observe] endpoint: it needs observe.enabled".into()
        );
    }
    let listen =
        super::listen::validate_listen(&raw.listen, status.enabled, observe.enabled, &mut problems);
    // What would travel in clear (worded in one place, `config::in_clear`).
    if status.enabled {
        warnings.extend(super::in_clear::status_page(
            observe.listen,
            status.tls.is_some(),
            listen.enabled,
        ));
    }
    for (i, c) in callcenters.iter().enumerate() {
        warnings.extend(super::in_clear::callcenter(i, c.address));
    }
    let fleet = raw
        .fleet
        .as_ref()
        .and_then(|f| super::fleet::validate(f, observe.enabled, &mut problems));
    let hep_out = raw.hep_out.as_ref().and_then(|h| {
        let node_id = forward.as_ref().map(|f| f.node_id.as_str());
        super::hep_out::validate(h, node_id, &mut problems, &mut warnings)
    });
    // Everything is validated: now, in one step, the key material.
    let forward = forward.and_then(|valid| super::forward::with_keys(valid, &mut problems));
    let hep = hep.map(|mut hep| {
        if let Some(file) = raw.hep.as_ref().and_then(|h| h.auth_key_file.as_ref()) {
            hep.auth_key = super::keys::read_secret(file)
                .map_err(|message| problem!(problems, "hep.auth_key_file", message))
                .ok()
                .map(Secret::new);
        }
        hep
    });
    let shards = match raw.correlation.shards {
        Some(n) if n == 0 || n > crate::correlation::sharded::MAX_SHARDS => {
            problem!(
                problems,
                "correlation.shards",
                format!(
                    "must be between 1 and {}",
                    crate::correlation::sharded::MAX_SHARDS
                )
            );
            1
        }
        Some(n) => n,
        None => captures.iter().map(|c| c.threads).sum::<usize>().max(1),
    };
    match (forward, stats) {
        (Some(mut forward), Some(stats)) if problems.is_empty() => Ok(AgentConfig {
            stats,
            status,
            listen,
            captures,
            hep,
            calls,
            media,
            shards,
            queue_frames: raw.correlation.queue_frames,
            queue_bytes: raw.correlation.queue_bytes,
            record_queue_records: raw.correlation.record_queue_records,
            record_queue_bytes: raw.correlation.record_queue_bytes,
            clock_tolerance: ClockGuard {
                future: Duration::from_secs(raw.correlation.future_time_tolerance_s),
                past: Duration::from_secs(raw.correlation.past_time_tolerance_s),
            },
            sensors,
            queue_logs,
            callcenters,
            observe,
            drain_timeout: Duration::from_secs(raw.shutdown.drain_timeout_s),
            fleet,
            hep_out,
            warnings: {
                let mut all = std::mem::take(&mut forward.warnings);
                all.extend(warnings);
                all
            },
            sections: Secret::new(sections),
            heartbeat_interval,
            config_sha256: sha256_hex(text.as_bytes()),
            forward,
        }),
        _ => Err(ConfigErrors(problems)),
    }
}

/// Validates `[hep]`: addresses, TLS files, the key, and the connection bounds.
fn validate_hep(
    h: &RawHep,
    problems: &mut Vec<ConfigProblem>,
    warnings: &mut Vec<ConfigProblem>,
) -> HepConfig {
    let udp = socket_addr(&h.udp, "hep.udp", problems);
    let tcp = socket_addr(&h.tcp, "hep.tcp", problems);
    let tls_addr = socket_addr(&h.tls, "hep.tls", problems);
    let mut tls = None;
    if let Some(addr) = tls_addr {
        match (&h.tls_cert_file, &h.tls_key_file) {
            (Some(cert), Some(key)) => {
                let mut readable = true;
                for (field, file) in [("hep.tls_cert_file", cert), ("hep.tls_key_file", key)] {
                    if let Err(message) = readable_file(file) {
                        problem!(problems, field, message);
                        readable = false;
                    }
                }
                if readable {
                    if let Err((field, message)) = check_key_pair(cert, key) {
                        problem!(problems, format!("hep.tls_{field}"), message);
                    }
                }
                tls = Some((addr, cert.clone(), key.clone()));
            }
            _ => problem!(
                problems,
                "hep.tls",
                "a TLS listener needs tls_cert_file and tls_key_file".into()
            ),
        }
    }
    if h.udp.is_none() && h.tcp.is_none() && h.tls.is_none() {
        problem!(problems, "hep", "give at least one of udp, tcp, tls".into());
    }
    let auth_key = match (&h.auth_key, &h.auth_key_file) {
        (Some(k), None) => Some(k.expose().clone()),
        // Read with the other keys, after validation (`read_hep_key`).
        (None, Some(f)) => {
            if let Err(message) = readable_file(f) {
                problem!(problems, "hep.auth_key_file", message);
            }
            None
        }
        (None, None) => None,
        (Some(_), Some(_)) => {
            problem!(
                problems,
                "hep.auth_key",
                "give auth_key or auth_key_file, not both".into()
            );
            None
        }
    };
    if auth_key.as_deref() == Some("") {
        problem!(problems, "hep.auth_key", "must not be empty".into());
    }
    // Anyone who reaches the port can inject calls: on every address, a key is required;
    // on one address other than loopback, it is advised.
    if h.auth_key.is_none() && h.auth_key_file.is_none() {
        for (field, addr) in [("udp", udp), ("tcp", tcp), ("tls", tls_addr)] {
            let Some(addr) = addr else { continue };
            if addr.ip().is_unspecified() {
                problem!(
                    problems,
                    format!("hep.{field}"),
                    format!(
                        "{addr} listens on every address without an auth_key: anyone who \
                         reaches it can inject calls; bind one address or set auth_key_file"
                    )
                );
            } else if !addr.ip().is_loopback() {
                warnings.push(ConfigProblem {
                    path: format!("hep.{field}"),
                    message: format!(
                        "{addr} accepts frames without an auth_key: anyone who reaches it \
                         can inject calls"
                    ),
                });
            }
        }
    }
    warnings.extend(super::in_clear::hep_in(
        udp,
        tcp,
        h.auth_key.is_some() || h.auth_key_file.is_some(),
    ));
    for (field, value, min, max) in [
        ("first_frame_timeout_s", h.first_frame_timeout_s, 1, 60),
        ("idle_timeout_s", h.idle_timeout_s, 1, 3600),
        ("max_connections", h.max_connections as u64, 1, 4096),
        (
            "max_connections_per_source",
            h.max_connections_per_source as u64,
            1,
            4096,
        ),
    ] {
        if value < min || value > max {
            problem!(
                problems,
                format!("hep.{field}"),
                format!("{value}: must be between {min} and {max}")
            );
        }
    }
    HepConfig {
        udp,
        tcp,
        tls,
        auth_key: auth_key.map(Secret::new),
        first_frame_timeout: Duration::from_secs(h.first_frame_timeout_s),
        idle_timeout: Duration::from_secs(h.idle_timeout_s),
        max_connections: h.max_connections,
        max_connections_per_source: h.max_connections_per_source,
    }
}

#[cfg(test)]
mod tests {
    use super::super::line_of;

    #[test]
    fn lines_of_paths() {
        let text = "[node]\nid = \"x\"\n\n[[sensors]]\nname = \"a\"\n[[sensors]]\nname = \"b\"\nport = \"/dev/x\"\n[uplink]\nurl = \"u\"\n";
        assert_eq!(line_of(text, "node.id"), Some(2));
        assert_eq!(line_of(text, "sensors[1].port"), Some(8));
        assert_eq!(line_of(text, "sensors[0].name"), Some(5));
        assert_eq!(line_of(text, "uplink.url"), Some(10));
        assert_eq!(line_of(text, "uplink"), Some(9));
        assert_eq!(line_of(text, "observe.listen"), None);
        assert_eq!(line_of(text, "sensors[1]"), Some(6));
        assert_eq!(line_of(text, "sensors[2].name"), None);
        assert_eq!(line_of(text, "node.id.more"), None);
    }

    /// What a walk over header lines got wrong: a comment after a header, dotted keys,
    /// inline tables, a key that only starts like another, a nested table header, quoted
    /// keys, and a text that does not parse.
    #[test]
    fn lines_of_paths_wherever_toml_puts_them() {
        let text = "spool.max_bytes = 1\n\
                    [uplink] # where records go\nurl_backup = 1\nurl = \"u\"\n\n\
                    [hep]\nlisten = { address = \"0.0.0.0:9060\", tls = true }\n\
                    [listen.ice]\n\"stun\" = \"x\"\n";
        assert_eq!(line_of(text, "spool.max_bytes"), Some(1));
        assert_eq!(line_of(text, "uplink"), Some(2));
        assert_eq!(line_of(text, "uplink.url"), Some(4));
        assert_eq!(line_of(text, "uplink.url_backup"), Some(3));
        assert_eq!(line_of(text, "hep.listen.address"), Some(7));
        assert_eq!(line_of(text, "listen.ice.stun"), Some(9));
        assert_eq!(line_of("[node\nid = 1\n", "node.id"), None);
    }
}
