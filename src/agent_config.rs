//! The daemon's configuration (`/etc/teledge/teledge.toml`): a serde mirror with unknown
//! fields rejected, validated into an [`AgentConfig`] with *every* problem listed by its TOML
//! path and line. The forwarding sections (`[node]`, `[spool]`, `[privacy]`, `[uplink]`) are
//! those of [`crate::config`]; the daemon adds its sources, correlation bounds, sensors,
//! observability and shutdown. `teledge check-config` prints the problems; a bad file exits
//! with 78 (EX_CONFIG) so systemd does not restart-loop. The commented example is
//! `teledge.example.toml` at the top of the repository.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{
    read_file, toml_problem, validate_forward, ConfigErrors, ConfigProblem, ForwardConfig, RawNode,
    RawPrivacy, RawSpool, RawUplink,
};
use crate::correlation::calls::CallLimits;
use crate::correlation::media::MediaLimits;
use crate::observe::ObserveSettings;
use crate::sensors::device::DeviceSettings;
use crate::sensors::profile;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    node: RawNode,
    #[serde(default)]
    capture: Vec<RawCapture>,
    hep: Option<RawHep>,
    #[serde(default)]
    correlation: RawCorrelation,
    #[serde(default)]
    sensors: Vec<RawSensor>,
    spool: RawSpool,
    #[serde(default)]
    privacy: RawPrivacy,
    uplink: RawUplink,
    #[serde(default)]
    observe: RawObserve,
    #[serde(default)]
    shutdown: RawShutdown,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    interface: String,
    #[serde(default = "default_ring_mib")]
    ring_mib: u32,
    #[serde(default = "default_block_kib")]
    block_kib: u32,
    #[serde(default = "default_block_timeout_ms")]
    block_timeout_ms: u32,
    #[serde(default)]
    promiscuous: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHep {
    udp: Option<String>,
    tcp: Option<String>,
    tls: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    auth_key: Option<String>,
    auth_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCorrelation {
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSensor {
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
struct RawObserve {
    enabled: Option<bool>,
    listen: Option<String>,
    #[serde(default)]
    allow_remote: bool,
    stall_after_s: Option<u64>,
    uplink_failing_after_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
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

/// A live capture on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub interface: String,
    pub ring_bytes: u64,
    pub block_bytes: u32,
    pub block_timeout: Duration,
    pub promiscuous: bool,
}

/// The HEP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepConfig {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// TLS listener with its certificate and key files.
    pub tls: Option<(SocketAddr, PathBuf, PathBuf)>,
    pub auth_key: Option<String>,
}

/// Everything `teledge run` needs, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub forward: ForwardConfig,
    pub captures: Vec<CaptureConfig>,
    pub hep: Option<HepConfig>,
    pub calls: CallLimits,
    pub media: MediaLimits,
    /// HEP frames queued between the listener and correlation; beyond it frames are dropped
    /// and counted (the listener never waits). Live capture correlates on its own thread and
    /// needs no queue: the kernel ring is its buffer.
    pub queue_frames: usize,
    pub sensors: Vec<DeviceSettings>,
    pub observe: ObserveSettings,
    pub drain_timeout: Duration,
}

/// Reads and validates the daemon's configuration.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigErrors> {
    let text = read_file(path)?;
    parse(&text).map_err(|ConfigErrors(problems)| {
        ConfigErrors(
            problems
                .into_iter()
                .map(|p| ConfigProblem {
                    path: match line_of(&text, &p.path) {
                        Some(line) => format!("{} (line {line})", p.path),
                        None => p.path,
                    },
                    message: p.message,
                })
                .collect(),
        )
    })
}

/// The line of a TOML path such as `sensors[1].port` or `uplink.url` in `text`, found by
/// walking the table headers: good enough to point an installer at the right line.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let (section, key) = path.split_once('.').unwrap_or((path, ""));
    let (table, index) = match section.split_once('[') {
        Some((t, i)) => (t, i.trim_end_matches(']').parse::<usize>().ok()?),
        None => (section, 0),
    };
    let key = key.split(['.', '[']).next().unwrap_or("");
    let mut seen = 0usize;
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let name = trimmed.trim_matches(|c| c == '[' || c == ']').trim();
            inside = false;
            if name == table {
                if seen == index {
                    inside = true;
                    if key.is_empty() {
                        return Some(n + 1);
                    }
                }
                seen += 1;
            }
            continue;
        }
        if inside {
            let k = trimmed.split('=').next().unwrap_or("").trim();
            if k == key {
                return Some(n + 1);
            }
        }
    }
    None
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

/// Validates configuration text (profile names are resolved in the default directories).
pub fn parse(text: &str) -> Result<AgentConfig, ConfigErrors> {
    parse_with_profiles(text, &profile::default_dirs())
}

/// Validates configuration text, looking device profiles up in `profile_dirs`.
pub fn parse_with_profiles(
    text: &str,
    profile_dirs: &[PathBuf],
) -> Result<AgentConfig, ConfigErrors> {
    let raw: RawAgent = toml::from_str(text).map_err(|e| toml_problem(text, &e))?;
    let mut problems = Vec::new();
    let forward = validate_forward(raw.node, raw.spool, raw.privacy, raw.uplink, &mut problems);

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
        let ring = u64::from(c.ring_mib) << 20;
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
                "must hold at least one block".into()
            );
        }
        if c.block_timeout_ms == 0 || c.block_timeout_ms > 1000 {
            problem!(
                problems,
                at("block_timeout_ms"),
                "must be between 1 and 1000".into()
            );
        }
        // The kernel's own rules for the ring, checked now rather than at the first start.
        let ring_settings = crate::sources::afpacket::RingSettings {
            block_size: c.block_kib << 10,
            block_count: (ring / (u64::from(c.block_kib.max(1)) << 10)).max(1) as u32,
            block_timeout_ms: c.block_timeout_ms,
            ..crate::sources::afpacket::RingSettings::default()
        };
        let checked = problems.len() == problems_before;
        if let Some(e) = checked
            .then(|| ring_settings.validate(4096).err())
            .flatten()
        {
            for message in e.problems {
                problem!(problems, at("ring_mib"), message);
            }
        }
        captures.push(CaptureConfig {
            interface: c.interface.clone(),
            ring_bytes: ring,
            block_bytes: c.block_kib << 10,
            block_timeout: Duration::from_millis(u64::from(c.block_timeout_ms)),
            promiscuous: c.promiscuous,
        });
    }

    let hep = raw.hep.as_ref().map(|h| {
        let udp = socket_addr(&h.udp, "hep.udp", &mut problems);
        let tcp = socket_addr(&h.tcp, "hep.tcp", &mut problems);
        let tls_addr = socket_addr(&h.tls, "hep.tls", &mut problems);
        let mut tls = None;
        if let Some(addr) = tls_addr {
            match (&h.tls_cert_file, &h.tls_key_file) {
                (Some(cert), Some(key)) => {
                    for (field, file) in [("hep.tls_cert_file", cert), ("hep.tls_key_file", key)] {
                        if !file.is_file() {
                            problems.push(ConfigProblem {
                                path: field.into(),
                                message: format!("{}: no such file", file.display()),
                            });
                        }
                    }
                    tls = Some((addr, cert.clone(), key.clone()));
                }
                _ => problems.push(ConfigProblem {
                    path: "hep.tls".into(),
                    message: "a TLS listener needs tls_cert_file and tls_key_file".into(),
                }),
            }
        }
        if h.udp.is_none() && h.tcp.is_none() && h.tls.is_none() {
            problems.push(ConfigProblem {
                path: "hep".into(),
                message: "give at least one of udp, tcp, tls".into(),
            });
        }
        let auth_key = match (&h.auth_key, &h.auth_key_file) {
            (Some(k), None) => Some(k.clone()),
            (None, Some(f)) => match std::fs::read_to_string(f) {
                Ok(k) => Some(k.trim().to_string()),
                Err(e) => {
                    problems.push(ConfigProblem {
                        path: "hep.auth_key_file".into(),
                        message: format!("{}: {e}", f.display()),
                    });
                    None
                }
            },
            (None, None) => None,
            (Some(_), Some(_)) => {
                problems.push(ConfigProblem {
                    path: "hep.auth_key".into(),
                    message: "give auth_key or auth_key_file, not both".into(),
                });
                None
            }
        };
        HepConfig {
            udp,
            tcp,
            tls,
            auth_key,
        }
    });
    if captures.is_empty() && hep.is_none() && raw.sensors.is_empty() {
        problem!(
            problems,
            "capture",
            "nothing to do: configure at least one [[capture]], [hep] or [[sensors]]".into(),
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
    ] {
        if value < min || value > max {
            problem!(
                problems,
                format!("correlation.{field}"),
                format!("must be between {min} and {max}")
            );
        }
    }
    let calls = CallLimits {
        max_calls: c.max_calls,
        setup_timeout: Duration::from_secs(c.setup_timeout_s),
        max_call_duration: Duration::from_secs(c.max_call_duration_s),
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
            device.timeout = Duration::from_millis(t.clamp(1, 60_000));
        }
        if let Some(r) = s.retries {
            device.retries = r.min(10);
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

    match forward {
        Some(forward) if problems.is_empty() => Ok(AgentConfig {
            forward,
            captures,
            hep,
            calls,
            media,
            queue_frames: raw.correlation.queue_frames,
            sensors,
            observe,
            drain_timeout: Duration::from_secs(raw.shutdown.drain_timeout_s),
        }),
        _ => Err(ConfigErrors(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_paths() {
        let text = "[node]\nid = \"x\"\n\n[[sensors]]\nname = \"a\"\n[[sensors]]\nname = \"b\"\nport = \"/dev/x\"\n[uplink]\nurl = \"u\"\n";
        assert_eq!(line_of(text, "node.id"), Some(2));
        assert_eq!(line_of(text, "sensors[1].port"), Some(8));
        assert_eq!(line_of(text, "sensors[0].name"), Some(5));
        assert_eq!(line_of(text, "uplink.url"), Some(10));
        assert_eq!(line_of(text, "uplink"), Some(9));
        assert_eq!(line_of(text, "observe.listen"), None);
    }
}
