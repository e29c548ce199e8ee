//! Capture timestamps.
//!
//! Every packet and every SIP message carries the time it was captured, with nanosecond
//! resolution (pcap-ng and nanosecond pcap files have it; microsecond files are scaled).
//! Correlation never reads the wall clock: it is driven by these timestamps, so replaying a
//! file is deterministic and the daemon and replay share one notion of time.
//!
//! The daemon adds two guards for live input ([`LiveNow`], [`ClockGuard`]): its tick never
//! goes back when the wall clock does, and a time a sender stamped (HEP) is used only when
//! it is near the local clock.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The time zone of an IANA name. "UTC" (the configuration's default) is answered without
/// the time zone database: a lookup by name makes jiff list the whole of
/// `/usr/share/zoneinfo` first (hundreds of directory reads, a fifth of what `teledge run`
/// executed before READY; docs/performance.md, "Binary size and start-up"), and UTC's
/// offset is zero at every instant either way.
pub fn zone(name: &str) -> Result<jiff::tz::TimeZone, jiff::Error> {
    if name == "UTC" {
        Ok(jiff::tz::TimeZone::UTC)
    } else {
        jiff::tz::TimeZone::get(name)
    }
}

/// Nanoseconds since the Unix epoch, as captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Builds a timestamp from seconds and nanoseconds since the epoch.
    pub fn from_secs_nanos(secs: i64, nanos: u32) -> Self {
        Timestamp(
            secs.saturating_mul(1_000_000_000)
                .saturating_add(i64::from(nanos)),
        )
    }

    /// Builds a timestamp from nanoseconds since the epoch.
    pub const fn from_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    /// The wall clock now. Only live sources (sensors, the daemon's ticks) read it; replay
    /// never does.
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Seconds elapsed from `earlier` to `self` (negative when `earlier` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.0.saturating_sub(earlier.0)) as f64 / 1e9
    }

    /// This time plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        )
    }

    /// The later of two timestamps.
    pub fn max(self, other: Timestamp) -> Timestamp {
        if other.0 > self.0 {
            other
        } else {
            self
        }
    }

    /// RFC 3339 in UTC with microseconds (truncated), e.g. `2006-03-02T19:03:48.123456Z`:
    /// always 27 ASCII bytes, made without the formatting machinery (every record carries
    /// several times; `collect_str` through `humantime` cost ~1,000 instructions a time,
    /// this ~270 and the check of its UTF-8 ~100). `None` before 1970 (only broken capture
    /// files have such times). An `i64` of nanoseconds ends in 2262, so the year always has
    /// four digits.
    fn rfc3339_micros(self) -> Option<[u8; 27]> {
        let nanos = u64::try_from(self.0).ok()?;
        let secs = nanos / 1_000_000_000;
        let micros = (nanos % 1_000_000_000) / 1_000;
        let (days, day_secs) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        // Two digits of a value below 100 at `at`.
        let mut two = |at: usize, value: u64| {
            out[at] = b'0' + (value / 10) as u8;
            out[at + 1] = b'0' + (value % 10) as u8;
        };
        two(0, year / 100);
        two(2, year % 100);
        two(5, month);
        two(8, day);
        two(11, day_secs / 3_600);
        two(14, day_secs % 3_600 / 60);
        two(17, day_secs % 60);
        two(20, micros / 10_000);
        two(22, micros / 100 % 100);
        two(24, micros % 100);
        Some(out)
    }
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days ≥ 0): (year, month 1–12, day 1–31).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds, e.g. `2006-03-02T19:03:48.123456Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rfc3339_micros() {
            Some(text) => f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?),
            // Pre-1970 timestamps only come from broken capture files; show the raw value.
            None => write!(f, "@{}ns", self.0),
        }
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339_micros() {
            Some(text) => match std::str::from_utf8(&text) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => serializer.collect_str(self),
            },
            None => serializer.collect_str(self),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    /// An RFC 3339 time, as [`Timestamp`] writes it (any offset is accepted).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let parsed: jiff::Timestamp = text.parse().map_err(serde::de::Error::custom)?;
        i64::try_from(parsed.as_nanosecond())
            .map(Timestamp)
            .map_err(|_| serde::de::Error::custom("time out of range"))
    }
}

/// Which way a sender's time was off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    Future,
    Past,
}

impl Skew {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skew::Future => "future",
            Skew::Past => "past",
        }
    }
}

/// Keeps times a sender stamped (HEP capture times) within a tolerance of the local clock,
/// for the live correlator: its timeouts run on the latest time it was given, so a single
/// frame stamped a day ahead would hold every timeout back for a day, and one stamped far
/// in the past would time calls out the moment they begin. A time outside the tolerance is
/// replaced by the local clock (the message is kept; the caller counts the [`Skew`]).
/// Replay never uses this: a capture file's times are the truth there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockGuard {
    pub future: Duration,
    pub past: Duration,
}

impl ClockGuard {
    /// `time` if within the tolerance of `now`, else `now` and which way it was off.
    pub fn check(&self, time: Timestamp, now: Timestamp) -> (Timestamp, Option<Skew>) {
        let ahead = time.seconds_since(now);
        if ahead > self.future.as_secs_f64() {
            (now, Some(Skew::Future))
        } else if -ahead > self.past.as_secs_f64() {
            (now, Some(Skew::Past))
        } else {
            (time, None)
        }
    }
}

/// The live correlator's "now": the wall clock, except that it never goes back. When the
/// wall clock steps back (an NTP correction, an operator), a clock that followed it would
/// stand still for as long as the step — every call and stream timeout with it. This one
/// keeps moving at half speed instead until the wall clock catches up, then follows it
/// again; a step forward is followed at once. Shared by every live source and the tick.
#[derive(Debug)]
pub struct LiveNow {
    clock: Clock,
    last: std::sync::Mutex<(Timestamp, std::time::Instant)>,
}

/// Where the daemon's "now" comes from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The wall clock (the system's time), as a live tap needs: frames carry it.
    #[default]
    Wall,
    /// The wall clock's reading when this clock was made, moved on by tokio's clock: under
    /// `tokio::time::pause` a test advances the daemon's time (ticks, call timeouts, the
    /// grace for media in flight) without waiting for it.
    Tokio {
        anchor: Timestamp,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A [`Clock::Tokio`] anchored now (inside a tokio runtime whose clock it follows).
    pub fn tokio() -> Clock {
        Clock::Tokio {
            anchor: Timestamp::now(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for LiveNow {
    fn default() -> Self {
        LiveNow::new(Clock::Wall)
    }
}

impl LiveNow {
    /// A live "now" that reads `clock`.
    pub fn new(clock: Clock) -> Self {
        LiveNow {
            clock,
            last: std::sync::Mutex::new((Timestamp::now(), std::time::Instant::now())),
        }
    }

    /// The current time as the correlator should see it.
    pub fn now(&self) -> Timestamp {
        if let Clock::Tokio { anchor, start } = self.clock {
            // Monotonic by construction: no step back to guard against.
            let elapsed = i64::try_from(start.elapsed().as_nanos()).unwrap_or(i64::MAX);
            return Timestamp(anchor.0.saturating_add(elapsed));
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let at = std::time::Instant::now();
        let next = Self::step(last.0, at.duration_since(last.1), Timestamp::now());
        *last = (next, at);
        next
    }

    /// From the previous reading `last`, `elapsed` on the monotonic clock later, with the
    /// wall clock now at `wall`.
    pub fn step(last: Timestamp, elapsed: Duration, wall: Timestamp) -> Timestamp {
        if wall >= last {
            return wall;
        }
        // Half speed: still ahead of the wall clock, which gains on it every second.
        let half = i64::try_from(elapsed.as_nanos() / 2).unwrap_or(i64::MAX);
        Timestamp(last.0.saturating_add(half))
    }
}

/// Rounds seconds to microseconds so records do not carry float noise.
pub fn round_secs(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_micros() {
        let t = Timestamp::from_secs_nanos(1_141_326_228, 123_456_789);
        assert_eq!(t.to_string(), "2006-03-02T19:03:48.123456Z");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2006-03-02T19:03:48.123456Z\""
        );
        assert_eq!(Timestamp::from_nanos(-1).to_string(), "@-1ns");
        assert_eq!(
            serde_json::to_string(&Timestamp::from_nanos(-1)).unwrap(),
            "\"@-1ns\""
        );
    }

    /// The formatter against `humantime` (the crate it replaced, as the oracle): every day
    /// boundary from 1970 to 2262 (leap years, 2000 and 2100 among them), the last
    /// representable nanosecond, and a spread of times within days.
    #[test]
    fn rfc3339_matches_humantime_over_the_whole_range() {
        let oracle = |t: Timestamp| {
            let time = UNIX_EPOCH + Duration::from_nanos(u64::try_from(t.0).unwrap());
            humantime::format_rfc3339_micros(time).to_string()
        };
        let mut checked = 0;
        let mut nanos: i64 = 0;
        let mut step: i64 = 86_400_000_000_000 - 1; // the first: a day's last nanosecond
        while let Some(next) = nanos.checked_add(step) {
            for t in [nanos, nanos + 1, nanos + 999, nanos + 1_000, next - 1] {
                let t = Timestamp::from_nanos(t);
                assert_eq!(t.to_string(), oracle(t), "{}", t.0);
                checked += 1;
            }
            nanos = next;
            // A day and a drift: the times of day visited spread over every hour, minute,
            // second and many microseconds.
            step = 86_400_000_000_000 + (checked as i64 % 7_919) * 1_000_003;
        }
        let last = Timestamp::from_nanos(i64::MAX);
        assert_eq!(last.to_string(), oracle(last));
        assert_eq!(last.to_string(), "2262-04-11T23:47:16.854775Z");
        assert!(checked > 500_000, "{checked}");
    }

    #[test]
    fn clock_guard_replaces_times_outside_the_tolerance() {
        let guard = ClockGuard {
            future: Duration::from_secs(2),
            past: Duration::from_secs(300),
        };
        let now = Timestamp::from_secs_nanos(1_000_000, 0);
        let at = |s: i64| Timestamp::from_secs_nanos(1_000_000 + s, 0);
        assert_eq!(guard.check(at(1), now), (at(1), None));
        assert_eq!(guard.check(at(-299), now), (at(-299), None));
        assert_eq!(guard.check(at(86_400), now), (now, Some(Skew::Future)));
        assert_eq!(guard.check(at(3), now), (now, Some(Skew::Future)));
        assert_eq!(guard.check(at(-301), now), (now, Some(Skew::Past)));
        assert_eq!(
            guard.check(Timestamp::from_nanos(0), now),
            (now, Some(Skew::Past))
        );
    }

    #[test]
    fn live_now_never_goes_back_and_catches_up_after_a_step_back() {
        let at = |s: i64| Timestamp::from_secs_nanos(1_000_000 + s, 0);
        let second = Duration::from_secs(1);
        // Normal: the wall clock.
        assert_eq!(LiveNow::step(at(0), second, at(1)), at(1));
        // A step forward is followed at once.
        assert_eq!(LiveNow::step(at(1), second, at(3601)), at(3601));
        // A step back of an hour: time still moves, at half speed, never back.
        let mut now = at(10);
        let mut wall = at(11 - 3600);
        for _ in 0..10 {
            let next = LiveNow::step(now, second, wall);
            assert_eq!(next.seconds_since(now), 0.5);
            now = next;
            wall = Timestamp(wall.0 + 1_000_000_000);
        }
        // It meets the wall clock after twice the step, then follows it.
        let mut steps = 0;
        while wall < now {
            now = LiveNow::step(now, second, wall);
            wall = Timestamp(wall.0 + 1_000_000_000);
            steps += 1;
        }
        assert!((7180..=7200).contains(&steps), "{steps}");
        assert_eq!(LiveNow::step(now, second, wall), wall);
    }

    #[test]
    fn seconds_between() {
        let a = Timestamp::from_secs_nanos(10, 0);
        let b = Timestamp::from_secs_nanos(12, 500_000_000);
        assert_eq!(b.seconds_since(a), 2.5);
        assert_eq!(a.seconds_since(b), -2.5);
    }
}
