//! Deviation alerts: a reading outside its limits opens an alert, a reading back inside the
//! limits by more than the hysteresis closes it, with its duration, so an audit sees every
//! deviation and how long it lasted, and a value hovering at a limit does not flap.
//!
//! Pure and deterministic: readings come with their time; nothing reads a clock.

use crate::time::Timestamp;

/// Limits of one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// How far back inside a limit a value must come to end the deviation.
    pub hysteresis: f64,
}

/// Which limit was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    Low,
    High,
}

/// An alert event: a deviation started, or ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertEvent {
    Started {
        breach: Breach,
        at: Timestamp,
        value: f64,
    },
    Ended {
        breach: Breach,
        started: Timestamp,
        ended: Timestamp,
        duration_s: f64,
        /// The worst value seen during the deviation.
        extreme: f64,
    },
}

/// The alert state of one reading.
#[derive(Debug, Clone)]
pub struct Deviation {
    limits: Limits,
    open: Option<(Breach, Timestamp, f64)>,
}

impl Deviation {
    pub fn new(limits: Limits) -> Self {
        Deviation { limits, open: None }
    }

    /// Feeds a reading; returns the event it causes, if any.
    pub fn reading(&mut self, at: Timestamp, value: f64) -> Option<AlertEvent> {
        if !value.is_finite() {
            return None;
        }
        let Limits {
            low,
            high,
            hysteresis,
        } = self.limits;
        match self.open {
            None => {
                let breach = if high.is_some_and(|h| value > h) {
                    Breach::High
                } else if low.is_some_and(|l| value < l) {
                    Breach::Low
                } else {
                    return None;
                };
                self.open = Some((breach, at, value));
                Some(AlertEvent::Started { breach, at, value })
            }
            Some((breach, started, extreme)) => {
                let (back, extreme) = match breach {
                    Breach::High => (
                        high.is_none_or(|h| value <= h - hysteresis),
                        extreme.max(value),
                    ),
                    Breach::Low => (
                        low.is_none_or(|l| value >= l + hysteresis),
                        extreme.min(value),
                    ),
                };
                if !back {
                    self.open = Some((breach, started, extreme));
                    return None;
                }
                self.open = None;
                Some(AlertEvent::Ended {
                    breach,
                    started,
                    ended: at,
                    duration_s: crate::time::round_secs(at.seconds_since(started)),
                    extreme,
                })
            }
        }
    }

    /// True while a deviation is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// The breach as alert records write it.
impl From<Breach> for crate::record::sensor::Breach {
    fn from(b: Breach) -> Self {
        match b {
            Breach::Low => crate::record::sensor::Breach::Low,
            Breach::High => crate::record::sensor::Breach::High,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_secs_nanos(s, 0)
    }

    /// Workplace guidance for temperature: 20–26 °C, 0.5 °C hysteresis.
    fn temperature() -> Deviation {
        Deviation::new(Limits {
            low: Some(20.0),
            high: Some(26.0),
            hysteresis: 0.5,
        })
    }

    #[test]
    fn a_deviation_has_a_start_an_end_and_a_duration() {
        let mut d = temperature();
        assert_eq!(d.reading(t(0), 24.0), None);
        assert_eq!(
            d.reading(t(60), 26.4),
            Some(AlertEvent::Started {
                breach: Breach::High,
                at: t(60),
                value: 26.4
            })
        );
        assert_eq!(d.reading(t(120), 27.1), None);
        let end = d.reading(t(600), 25.2).unwrap();
        assert_eq!(
            end,
            AlertEvent::Ended {
                breach: Breach::High,
                started: t(60),
                ended: t(600),
                duration_s: 540.0,
                extreme: 27.1
            }
        );
        assert!(!d.is_open());
    }

    #[test]
    fn hysteresis_prevents_flapping() {
        let mut d = temperature();
        let mut events = 0;
        // A value hovering around the limit: one start, no end until 25.5 °C.
        for (i, v) in [26.1, 25.9, 26.2, 25.8, 26.05, 25.6].iter().enumerate() {
            events += usize::from(d.reading(t(i as i64), *v).is_some());
        }
        assert_eq!(events, 1);
        assert!(d.is_open());
        assert!(matches!(
            d.reading(t(10), 25.5),
            Some(AlertEvent::Ended { .. })
        ));
    }

    #[test]
    fn low_limit_and_garbage_values() {
        let mut d = temperature();
        assert!(matches!(
            d.reading(t(0), 18.0),
            Some(AlertEvent::Started {
                breach: Breach::Low,
                ..
            })
        ));
        assert_eq!(d.reading(t(1), f64::NAN), None);
        assert_eq!(d.reading(t(2), 20.2), None, "not past the hysteresis yet");
        assert!(matches!(
            d.reading(t(3), 20.6),
            Some(AlertEvent::Ended { extreme, .. }) if extreme == 18.0
        ));
    }
}
