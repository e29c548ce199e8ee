//! Reports of interval records: a readable table, CSV or JSON Lines, ratios computed from the
//! sums with their formulas (`teledge report` writes these; the library keeps them so a
//! test or another output can use them).

use std::io::{self, Write};

use super::kpi::{kpis, Kpi};
use crate::record::interval::{IntervalRecord, IntervalSums};

/// The columns of the table (the CSV and JSON Lines carry every KPI).
const TABLE_KPIS: [(&str, &str); 13] = [
    ("offered", "offered"),
    ("answered", "answ"),
    ("abandoned", "aband"),
    ("short_abandoned", "short"),
    ("flowed_out", "flow"),
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
    write_node_table(out, records)?;
    write_agent_table(out, records)?;
    if let Some(r) = records.first() {
        writeln!(
            out,
            "Intervals of {} min in {}, counted by {} time; T = {} s (target {} %), short abandon < {} s.",
            r.interval_minutes, r.time_zone, r.attribution, r.sl_threshold_s, r.sl_target_percent, r.short_abandon_s
        )?;
    }
    for k in kpis(&Default::default()) {
        if TABLE_KPIS.iter().any(|(n, _)| *n == k.name)
            || NODE_KPIS.iter().any(|(n, _)| *n == k.name)
            || AGENT_KPIS.iter().any(|(n, _)| *n == k.name)
        {
            writeln!(out, "  {:<18} {}", k.name, k.formula)?;
        }
    }
    Ok(())
}

/// The columns of the node table: RFC 6076 over every call of the node(s).
const NODE_KPIS: [(&str, &str); 9] = [
    ("node_sip_invites", "invites"),
    ("node_sip_ser", "SER%"),
    ("node_sip_seer", "SEER%"),
    ("node_sip_isa", "ISA%"),
    ("node_sip_scr", "SCR%"),
    ("node_sip_sdt_s", "SDT s"),
    ("node_sip_pdd_p50_s", "PDD50 s"),
    ("node_sip_pdd_p95_s", "PDD95 s"),
    ("node_sip_sdd_mean_s", "SDD s"),
];

/// The columns of the agent table.
const AGENT_KPIS: [(&str, &str); 5] = [
    ("agent_staffed_s", "staffed s"),
    ("agent_paused_s", "paused s"),
    ("agent_logins", "logins"),
    ("agent_logoffs", "logoffs"),
    ("occupancy_percent", "occ%"),
];

fn write_columns(out: &mut impl Write, all: &[Kpi], columns: &[(&str, &str)]) -> io::Result<()> {
    for (name, _) in columns {
        let text = all
            .iter()
            .find(|k| k.name == *name)
            .map_or("-".into(), value_text);
        write!(out, " {text:>9}")?;
    }
    writeln!(out)
}

/// The node section: per interval, the RFC 6076 KPIs over every call seen (the services'
/// `node_sip` added up: a node carries it in its first service only), when any call was.
fn write_node_table(out: &mut impl Write, records: &[IntervalRecord]) -> io::Result<()> {
    let mut by_interval: std::collections::BTreeMap<(i64, &str), IntervalSums> =
        std::collections::BTreeMap::new();
    for r in records {
        by_interval
            .entry((r.interval_start.as_nanos(), r.local_start.as_str()))
            .or_default()
            .merge_node_sip(&r.sums);
    }
    if by_interval.values().all(|s| s.node_sip.invites == 0) {
        return Ok(());
    }
    write!(
        out,
        "Node: every call seen, whatever its service (RFC 6076)\n{:<25}",
        "interval (local)"
    )?;
    for (_, head) in NODE_KPIS {
        write!(out, " {head:>9}")?;
    }
    writeln!(out)?;
    for ((_, local), sums) in &by_interval {
        write!(out, "{local:<25}")?;
        write_columns(out, &kpis(sums), &NODE_KPIS)?;
    }
    writeln!(out)
}

/// The agent section: per service and interval with agent time, staffed and paused
/// agent-seconds, logins, logoffs, occupancy, and the paused time by reason.
fn write_agent_table(out: &mut impl Write, records: &[IntervalRecord]) -> io::Result<()> {
    if records.iter().all(|r| r.sums.agents == Default::default()) {
        return Ok(());
    }
    write!(out, "Agents\n{:<25} {:<12}", "interval (local)", "service")?;
    for (_, head) in AGENT_KPIS {
        write!(out, " {head:>9}")?;
    }
    writeln!(out, "  paused by reason (s)")?;
    for r in records {
        if r.sums.agents == Default::default() {
            continue;
        }
        write!(out, "{:<25} {:<12}", r.local_start, r.service)?;
        let all = kpis(&r.sums);
        for (name, _) in AGENT_KPIS {
            let text = all
                .iter()
                .find(|k| k.name == name)
                .map_or("-".into(), value_text);
            write!(out, " {text:>9}")?;
        }
        let reasons: Vec<String> = r
            .sums
            .agents
            .paused_by_reason_ms
            .iter()
            .map(|(reason, ms)| format!("{reason}={:.1}", *ms as f64 / 1000.0))
            .collect();
        writeln!(out, "  {}", reasons.join(" "))?;
    }
    writeln!(out)
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
    found.unreadable = crate::record::stored::read_stored(
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
