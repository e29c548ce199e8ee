//! Merging interval records: of many nodes, of many runs of a node, revisions of one
//! interval. For each identity (`node`, `run`, `service`, `interval_start`,
//! `interval_minutes`) the highest revision stands (a closed one over an open one of the
//! same revision); the standing records of one (`service`, `interval_start`,
//! `interval_minutes`) are then added up. Sums are integers, so the result is exact and
//! independent of order: merging the nodes' records gives what one aggregator over all
//! calls gives.

use std::collections::BTreeMap;

use crate::record::interval::IntervalRecord;

/// The merged records, one per service and interval, ordered by start then service. A
/// merged record's `node` is the nodes' ids joined by `+`, its `run` `merged`, its
/// `revision` the highest merged.
pub fn merge(records: impl IntoIterator<Item = IntervalRecord>) -> Vec<IntervalRecord> {
    type Identity = (String, String, String, i64, u32);
    let mut standing: BTreeMap<Identity, IntervalRecord> = BTreeMap::new();
    for r in records {
        let key = (
            r.node.clone(),
            r.run.clone(),
            r.service.clone(),
            r.interval_start.as_nanos(),
            r.interval_minutes,
        );
        match standing.get(&key) {
            Some(old) if (old.revision, old.closed) >= (r.revision, r.closed) => {}
            _ => {
                standing.insert(key, r);
            }
        }
    }
    let mut merged: BTreeMap<(i64, String, u32), IntervalRecord> = BTreeMap::new();
    for ((node, ..), r) in standing {
        let key = (
            r.interval_start.as_nanos(),
            r.service.clone(),
            r.interval_minutes,
        );
        match merged.get_mut(&key) {
            None => {
                let mut r = r;
                r.run = "merged".into();
                merged.insert(key, r);
            }
            Some(m) => {
                m.sums.merge(&r.sums);
                if !m.node.split('+').any(|n| n == node) {
                    m.node = format!("{}+{}", m.node, node);
                }
                m.revision = m.revision.max(r.revision);
                m.closed &= r.closed;
                m.interval_end = m.interval_end.max(r.interval_end);
            }
        }
    }
    merged.into_values().collect()
}
