//! Reports of interval records: a readable table, CSV or JSON Lines, ratios computed from the
//! sums with their formulas (`teledge report` writes these; the library keeps them so a
//! test or another output can use them).

use std::io::{self, Write};

use super::kpi::{kpis, Kpi};
use crate::record::interval::IntervalRecord;

/// The columns of the table (the CSV and JSON Lines carry every KPI).
const TABLE_KPIS: [(&str, &str); 12] = [
    ("offered", "offered"),
    ("answered", "answ"),
    ("abandoned", "aband"),
    ("short_abandoned", "short"),
    ("sl_cisco_ignore", "SL ign%"),
    ("sl_cisco_negative", "SL neg%"),
    ("sl_cisco_positive", "SL pos%"),
    ("sl_asterisk", "SL ast%"),
    ("asa_s", "ASA s"),
    ("aht_s", "AHT s"),
    ("peak_concurrent", "peak"),
    ("mos_mean", "MOS"),
];

fn value_text(k: &Kpi) -> String {
    match k.value {
        None => "-".into(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// A table: one row per service and interval, then each column's formula.
pub fn write_table(out: &mut impl Write, records: &[IntervalRecord]) -> io::Result<()> {
    write!(
        out,
        "{:<25} {:<12} {:>4}",
        "interval (local)", "service", "rev"
    )?;
    for (_, head) in TABLE_KPIS {
        write!(out, " {head:>8}")?;
    }
    writeln!(out)?;
    for r in records {
        let all = kpis(&r.sums);
        write!(
            out,
            "{:<25} {:<12} {:>4}",
            r.local_start,
            r.service,
            if r.closed {
                r.revision.to_string()
            } else {
                "open".into()
            }
        )?;
        for (name, _) in TABLE_KPIS {
            let text = all
                .iter()
                .find(|k| k.name == name)
                .map_or("-".into(), value_text);
            write!(out, " {text:>8}")?;
        }
        writeln!(out)?;
    }
    writeln!(out)?;
    if let Some(r) = records.first() {
        writeln!(
            out,
            "Intervals of {} min in {}, counted by {} time; T = {} s (target {} %), short abandon < {} s.",
            r.interval_minutes, r.time_zone, r.attribution, r.sl_threshold_s, r.sl_target_percent, r.short_abandon_s
        )?;
    }
    for k in kpis(&Default::default()) {
        if TABLE_KPIS.iter().any(|(n, _)| *n == k.name) {
            writeln!(out, "  {:<18} {}", k.name, k.formula)?;
        }
    }
    Ok(())
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// CSV: a header of every KPI, one row per service and interval.
pub fn write_csv(out: &mut impl Write, records: &[IntervalRecord]) -> io::Result<()> {
    let names: Vec<&str> = kpis(&Default::default()).iter().map(|k| k.name).collect();
    writeln!(
        out,
        "interval_start,interval_end,local_start,service,nodes,revision,final,{}",
        names.join(",")
    )?;
    for r in records {
        let values: Vec<String> = kpis(&r.sums)
            .iter()
            .map(|k| k.value.map_or(String::new(), |v| format!("{v}")))
            .collect();
        writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            r.interval_start,
            r.interval_end,
            csv_field(&r.local_start),
            csv_field(&r.service),
            csv_field(&r.node),
            r.revision,
            r.closed,
            values.join(",")
        )?;
    }
    Ok(())
}

/// JSON Lines: each merged record with its KPIs (`{name: {value, formula}}`).
pub fn write_jsonl(out: &mut impl Write, records: &[IntervalRecord]) -> io::Result<()> {
    for r in records {
        let mut value = serde_json::to_value(r).map_err(io::Error::other)?;
        let figures: serde_json::Map<String, serde_json::Value> = kpis(&r.sums)
            .into_iter()
            .map(|k| {
                (
                    k.name.to_owned(),
                    serde_json::json!({"value": k.value, "formula": k.formula}),
                )
            })
            .collect();
        if let Some(object) = value.as_object_mut() {
            object.insert("kpis".into(), serde_json::Value::Object(figures));
        }
        serde_json::to_writer(&mut *out, &value).map_err(io::Error::other)?;
        writeln!(out)?;
    }
    Ok(())
}

/// What reading a collector's output directory found.
#[derive(Debug, Default)]
pub struct Collected {
    pub intervals: Vec<IntervalRecord>,
    /// Lines of other record kinds (calls, gaps, ...).
    pub other_lines: u64,
    /// Lines that are not JSON, or interval records that do not read: `file:line: why`.
    pub unreadable: Vec<String>,
}

/// Reads every `<dir>/<node>/*.jsonl` of a collector's output (lines
/// `{"id": ..., "record": {...}}`; a bare record per line is taken too) and keeps the
/// interval records.
pub fn read_collected(dir: &std::path::Path) -> io::Result<Collected> {
    let mut found = Collected::default();
    found.unreadable = crate::outputs::jsonl::read_stored(
        dir,
        |_| true,
        |record| {
            if record.get("type").and_then(|t| t.as_str()) != Some("interval") {
                found.other_lines += 1;
                return Ok(());
            }
            let r = serde_json::from_value::<IntervalRecord>(record.clone())
                .map_err(|e| e.to_string())?;
            found.intervals.push(r);
            Ok(())
        },
    )?;
    Ok(found)
}
