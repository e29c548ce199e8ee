//! A small metrics registry rendered in the Prometheus text exposition format 0.0.4.
//!
//! # Why hand-rolled
//!
//! `prometheus-client` was considered. It is well kept and light, but its label families are
//! unbounded hash maps keyed by any label value, and a cap on label sets (one of our rules:
//! hitting a bound is counted, never silent) would have to be wrapped around it anyway. What
//! we need is small: atomic counters and gauges, a few families with a capped number of label
//! sets, and values sampled at scrape time. That is a few hundred lines with no dependency and
//! nothing to cross-compile.
//!
//! # Promises
//!
//! - Bumping a [`Counter`] or [`Gauge`] is one relaxed atomic operation: cheap on hot paths.
//!   Handles are `Arc`s, resolved once at setup (a family lookup takes a lock; bumps do not).
//! - A [`Family`] holds at most `cap` label sets. Further label sets share one series whose
//!   label values are all [`OVERFLOW_LABEL`], and every such lookup is counted in
//!   `teledge_metrics_label_overflow_total{family="..."}`. Label values are cut to
//!   [`MAX_LABEL_VALUE_BYTES`]. Memory is therefore bounded whatever the input.
//! - [`Sampled`] values are read at scrape time from a callback. A callback must not block
//!   (use `try_lock`): when it returns `None` the last value it gave is shown again, and a
//!   series that never had a value is left out of the exposition.
//! - Rendering never panics; `NaN` and infinities are written the way Prometheus reads them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The label value shared by every label set past a family's cap.
pub const OVERFLOW_LABEL: &str = "_overflow";
/// Longest label value kept, in bytes (cut at a character boundary).
pub const MAX_LABEL_VALUE_BYTES: usize = 64;
/// The content type of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        // Relaxed: a metric needs no ordering with other memory, only an eventually seen value.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Mirrors a cumulative count kept elsewhere (e.g. `UplinkStats`): the counter moves up
    /// to `total` and never down, so it stays monotonic even if snapshots arrive out of order.
    pub fn raise_to(&self, total: u64) {
        self.0.fetch_max(total, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Family<Counter> {
    /// The sum over every series (and the overflow series): a family's total.
    pub fn total(&self) -> u64 {
        let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.iter().map(|(_, c)| c.get()).sum::<u64>() + self.overflow.get()
    }

    /// The count of these label values, 0 when the series does not exist (without making
    /// it, as [`Family::with`] would: a series shows in `/metrics` once made).
    pub fn peek(&self, values: &[&str]) -> u64 {
        let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.iter()
            .find(|(k, _)| k.iter().map(String::as_str).eq(values.iter().copied()))
            .map_or(0, |(_, c)| c.get())
    }
}

/// A level that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

type Callback = Box<dyn Fn() -> Option<f64> + Send + Sync>;

/// A value read at scrape time from a callback (spool depth, certificate expiry, ...).
///
/// The callback is set after construction ([`Sampled::set_source`]) because what it reads
/// (the spool, the certificate) usually exists only after the metrics do.
#[derive(Default)]
pub struct Sampled {
    source: RwLock<Option<Callback>>,
    /// The last value the callback gave, as f64 bits, shown again when it returns `None`.
    last: AtomicU64,
    has_last: AtomicBool,
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampled")
            .field("last", &self.last())
            .finish_non_exhaustive()
    }
}

impl Sampled {
    /// Sets (or replaces) the callback. It must be cheap and must not block.
    pub fn set_source(&self, source: impl Fn() -> Option<f64> + Send + Sync + 'static) {
        // A poisoned lock only means a callback panicked while being replaced; the slot
        // itself is a plain Option and still consistent.
        let mut slot = self.source.write().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Box::new(source));
    }

    /// Sets the value directly (for values pushed rather than pulled).
    pub fn set(&self, v: f64) {
        self.last.store(v.to_bits(), Ordering::Relaxed);
        self.has_last.store(true, Ordering::Relaxed);
    }

    /// The last value seen, without calling the source.
    pub fn last(&self) -> Option<f64> {
        self.has_last
            .load(Ordering::Relaxed)
            .then(|| f64::from_bits(self.last.load(Ordering::Relaxed)))
    }

    /// Calls the source (if any) and returns the freshest value known.
    pub fn sample(&self) -> Option<f64> {
        let fresh = {
            let slot = self.source.read().unwrap_or_else(|p| p.into_inner());
            slot.as_ref().and_then(|f| f())
        };
        if let Some(v) = fresh {
            self.set(v);
        }
        self.last()
    }
}

/// Anything that yields one sample value.
pub trait Sample: Send + Sync + Default + 'static {
    fn value(&self) -> Option<f64>;
}

impl Sample for Counter {
    fn value(&self) -> Option<f64> {
        Some(self.get() as f64)
    }
}

impl Sample for Gauge {
    fn value(&self) -> Option<f64> {
        Some(self.get() as f64)
    }
}

impl Sample for Sampled {
    fn value(&self) -> Option<f64> {
        self.sample()
    }
}

/// Counter or gauge, as written on the `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One series of a family: its label values and its value.
type Series<T> = (Box<[String]>, Arc<T>);

/// Series of one metric told apart by label values, at most `cap` label sets.
pub struct Family<T> {
    label_names: &'static [&'static str],
    cap: usize,
    sets: Mutex<Vec<Series<T>>>,
    overflow: Arc<T>,
    overflow_used: AtomicBool,
    overflowed: Counter,
}

impl<T> std::fmt::Debug for Family<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("label_names", &self.label_names)
            .field("cap", &self.cap)
            .field("overflowed", &self.overflowed.get())
            .finish_non_exhaustive()
    }
}

impl<T: Sample> Family<T> {
    fn new(label_names: &'static [&'static str], cap: usize) -> Self {
        Family {
            label_names,
            cap,
            sets: Mutex::new(Vec::new()),
            overflow: Arc::new(T::default()),
            overflow_used: AtomicBool::new(false),
            overflowed: Counter::default(),
        }
    }

    /// The series for these label values (one per label name; missing ones are empty,
    /// extra ones ignored). Takes a lock and searches: resolve handles once, keep the `Arc`.
    pub fn with(&self, values: &[&str]) -> Arc<T> {
        let key: Box<[String]> = (0..self.label_names.len())
            .map(|i| clip(values.get(i).copied().unwrap_or("")).to_owned())
            .collect();
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, series)) = sets.iter().find(|(k, _)| *k == key) {
            return series.clone();
        }
        if sets.len() >= self.cap {
            self.overflowed.inc();
            self.overflow_used.store(true, Ordering::Relaxed);
            return self.overflow.clone();
        }
        let series = Arc::new(T::default());
        sets.push((key, series.clone()));
        series
    }

    /// Lookups refused a label set of their own because the family was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.get()
    }

    /// Label sets held (the overflow series not included).
    pub fn len(&self) -> usize {
        self.sets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn render(&self, name: &str, out: &mut String) {
        let series: Vec<(Box<[String]>, Arc<T>)> =
            self.sets.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Callbacks run outside the lock, so a slow one cannot hold up `with` on a hot path.
        for (values, s) in &series {
            let labels: Vec<&str> = values.iter().map(String::as_str).collect();
            write_sample(out, name, self.label_names, &labels, s.value());
        }
        if self.overflow_used.load(Ordering::Relaxed) {
            let labels = vec![OVERFLOW_LABEL; self.label_names.len()];
            write_sample(out, name, self.label_names, &labels, self.overflow.value());
        }
    }
}

/// Cuts a label value to [`MAX_LABEL_VALUE_BYTES`] at a character boundary.
fn clip(value: &str) -> &str {
    if value.len() <= MAX_LABEL_VALUE_BYTES {
        return value;
    }
    let mut end = MAX_LABEL_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// One registered metric: help, type and where its samples come from.
trait Render: Send + Sync {
    fn render_samples(&self, name: &str, out: &mut String);
    /// The family's overflow count, for `teledge_metrics_label_overflow_total`.
    fn overflow_count(&self) -> Option<u64> {
        None
    }
}

struct Single<T>(Arc<T>);

impl<T: Sample> Render for Single<T> {
    fn render_samples(&self, name: &str, out: &mut String) {
        write_sample(out, name, &[], &[], self.0.value());
    }
}

impl<T: Sample> Render for Arc<Family<T>> {
    fn render_samples(&self, name: &str, out: &mut String) {
        Family::render(self, name, out);
    }

    fn overflow_count(&self) -> Option<u64> {
        Some(Family::overflowed(self))
    }
}

struct Entry {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    body: Box<dyn Render>,
}

/// Why a metric could not be registered (a programming error, found by the unit tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("metric name {0:?} is not a valid Prometheus name")]
    InvalidName(&'static str),
    #[error("metric {0:?} is registered twice")]
    Duplicate(&'static str),
}

/// Every metric of the process, rendered together.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
    /// Problems met while registering; kept rather than panicking, checked by tests.
    errors: Vec<RegistryError>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "metrics",
                &self.entries.iter().map(|e| e.name).collect::<Vec<_>>(),
            )
            .field("errors", &self.errors)
            .finish()
    }
}

/// The name of the overflow counter every registry exposes.
pub const LABEL_OVERFLOW_METRIC: &str = "teledge_metrics_label_overflow_total";

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    fn add(&mut self, name: &'static str, help: &'static str, kind: Kind, body: Box<dyn Render>) {
        if !valid_metric_name(name) {
            self.errors.push(RegistryError::InvalidName(name));
        } else if name == LABEL_OVERFLOW_METRIC || self.entries.iter().any(|e| e.name == name) {
            self.errors.push(RegistryError::Duplicate(name));
        } else {
            self.entries.push(Entry {
                name,
                help,
                kind,
                body,
            });
        }
    }

    pub fn counter(&mut self, name: &'static str, help: &'static str) -> Arc<Counter> {
        self.single(name, help, Kind::Counter)
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> Arc<Gauge> {
        self.single(name, help, Kind::Gauge)
    }

    /// A value read at scrape time, exposed with the given type.
    pub fn sampled(&mut self, name: &'static str, help: &'static str, kind: Kind) -> Arc<Sampled> {
        self.single(name, help, kind)
    }

    fn single<T: Sample>(&mut self, name: &'static str, help: &'static str, kind: Kind) -> Arc<T> {
        let value = Arc::new(T::default());
        self.add(name, help, kind, Box::new(Single(value.clone())));
        value
    }

    /// A family of series told apart by `label_names`, at most `cap` label sets.
    pub fn family<T: Sample>(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        label_names: &'static [&'static str],
        cap: usize,
    ) -> Arc<Family<T>> {
        let family = Arc::new(Family::new(label_names, cap));
        self.add(name, help, kind, Box::new(family.clone()));
        family
    }

    /// Registration problems (empty when every name was valid and unique).
    pub fn errors(&self) -> &[RegistryError] {
        &self.errors
    }

    /// Names registered, in exposition order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// The exposition text (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut overflow = Vec::new();
        for entry in &self.entries {
            write_header(&mut out, entry.name, entry.help, entry.kind);
            entry.body.render_samples(entry.name, &mut out);
            if let Some(n) = entry.body.overflow_count() {
                overflow.push((entry.name, n));
            }
        }
        if !overflow.is_empty() {
            write_header(
                &mut out,
                LABEL_OVERFLOW_METRIC,
                "Lookups of a new label set refused because the family held its cap of label sets.",
                Kind::Counter,
            );
            for (family, n) in overflow {
                write_sample(
                    &mut out,
                    LABEL_OVERFLOW_METRIC,
                    &["family"],
                    &[family],
                    Some(n as f64),
                );
            }
        }
        out
    }
}

fn write_header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

fn write_sample(out: &mut String, name: &str, names: &[&str], values: &[&str], v: Option<f64>) {
    let Some(v) = v else {
        return;
    };
    out.push_str(name);
    if !names.is_empty() {
        out.push('{');
        for (i, (n, value)) in names.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{n}=\"{}\"", escape_label_value(value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(v));
    out.push('\n');
}

/// A sample value as Prometheus reads it (`+Inf`, `-Inf`, `NaN`; integers without `.0`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a HELP text: backslash and line feed (quotes stay as they are there).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_escaping_render() {
        let mut r = Registry::new();
        let c = r.counter("teledge_test_total", "A test\\counter\nwith two lines.");
        let g = r.gauge("teledge_test_level", "A level.");
        let f = r.family::<Counter>(
            "teledge_test_by_source_total",
            "By source.",
            Kind::Counter,
            &["source"],
            4,
        );
        c.add(3);
        g.set(-2);
        f.with(&["a\"b\\c\nd"]).inc();
        let text = r.render();
        assert!(text.contains("# HELP teledge_test_total A test\\\\counter\\nwith two lines.\n"));
        assert!(text.contains("# TYPE teledge_test_total counter\nteledge_test_total 3\n"));
        assert!(text.contains("teledge_test_level -2\n"));
        assert!(text.contains("teledge_test_by_source_total{source=\"a\\\"b\\\\c\\nd\"} 1\n"));
        assert!(r.errors().is_empty());
    }

    #[test]
    fn family_cap_routes_overflow_to_one_series_and_counts_it() {
        let mut r = Registry::new();
        let f = r.family::<Counter>("teledge_t_total", "T.", Kind::Counter, &["k"], 2);
        f.with(&["a"]).inc();
        f.with(&["b"]).inc();
        f.with(&["a"]).inc();
        for i in 0..10 {
            f.with(&[&format!("x{i}")]).inc();
        }
        assert_eq!(f.len(), 2);
        assert_eq!(f.overflowed(), 10);
        let text = r.render();
        assert!(text.contains("teledge_t_total{k=\"a\"} 2\n"));
        assert!(text.contains("teledge_t_total{k=\"_overflow\"} 10\n"));
        assert!(
            text.contains("teledge_metrics_label_overflow_total{family=\"teledge_t_total\"} 10\n")
        );
    }

    #[test]
    fn long_label_values_are_clipped_at_a_character_boundary() {
        let long = "é".repeat(100);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_LABEL_VALUE_BYTES);
        assert!(clipped.chars().all(|c| c == 'é'));
    }

    #[test]
    fn sampled_keeps_the_last_value_and_skips_series_without_one() {
        let mut r = Registry::new();
        let s = r.sampled("teledge_s", "S.", Kind::Gauge);
        assert!(!r.render().contains("\nteledge_s "));
        let flip = Arc::new(AtomicBool::new(true));
        let f2 = flip.clone();
        s.set_source(move || f2.load(Ordering::Relaxed).then_some(7.5));
        assert!(r.render().contains("\nteledge_s 7.5\n"));
        flip.store(false, Ordering::Relaxed);
        assert!(r.render().contains("\nteledge_s 7.5\n"));
    }

    #[test]
    fn bad_and_duplicate_names_are_reported_not_registered() {
        let mut r = Registry::new();
        r.counter("teledge_ok_total", "Ok.");
        r.counter("teledge_ok_total", "Again.");
        r.gauge("9bad", "Bad.");
        assert_eq!(
            r.errors(),
            &[
                RegistryError::Duplicate("teledge_ok_total"),
                RegistryError::InvalidName("9bad")
            ]
        );
        assert_eq!(r.names(), vec!["teledge_ok_total"]);
    }

    #[test]
    fn special_values() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(12.0), "12");
        assert_eq!(format_value(0.25), "0.25");
    }

    #[test]
    fn raise_to_never_goes_down() {
        let c = Counter::default();
        c.raise_to(10);
        c.raise_to(4);
        assert_eq!(c.get(), 10);
    }
}
