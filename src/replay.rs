//! `teledge replay`: capture files through the shared pipeline (decode → correlation) into
//! records. Files are read in the order given as one continuous capture, so a call that
//! spans two consecutive files of a ring buffer is one call.

use std::collections::BTreeMap;
use std::io::Read;

use crate::correlation::calls::{CallLimits, CallTracker};
use crate::dissect::{DissectLimits, Dissector, Frame};
use crate::record::{CaptureSummary, ClosedBy, Record, SUMMARY_SCHEMA};
use crate::sources::capture_file::{self, CaptureError, Progress};
use crate::time::Timestamp;

/// Settings of a replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplaySettings {
    pub calls: CallLimits,
    pub dissect: DissectLimits,
}

/// A replay in progress.
#[derive(Debug)]
pub struct Replay {
    dissector: Dissector,
    tracker: CallTracker,
    files: Vec<String>,
    outcomes: BTreeMap<String, u64>,
    last_time: Timestamp,
}

impl Replay {
    pub fn new(settings: ReplaySettings) -> Self {
        Replay {
            dissector: Dissector::new(settings.dissect),
            tracker: CallTracker::new(settings.calls),
            files: Vec::new(),
            outcomes: BTreeMap::new(),
            last_time: Timestamp::default(),
        }
    }

    /// Reads one capture. Records of calls that ended go to `out` as they end. On error, the
    /// frames before the damage have been processed.
    pub fn read(
        &mut self,
        name: &str,
        input: impl Read + Send,
        out: &mut impl FnMut(Record),
        mut progress: impl FnMut(Progress),
    ) -> Result<u64, CaptureError> {
        self.files.push(name.to_owned());
        let Replay {
            dissector,
            tracker,
            outcomes,
            last_time,
            ..
        } = self;
        let mut emit = |record: crate::record::CallRecord| {
            *outcomes
                .entry(record.outcome.as_str().to_owned())
                .or_default() += 1;
            out(Record::Call(Box::new(record)));
        };
        capture_file::read_frames(input, |frame: &Frame<'_>, p| {
            *last_time = (*last_time).max(frame.time);
            dissector.frame(frame, &mut |meta, msg| {
                tracker.message(meta, msg, &mut emit)
            });
            tracker.advance(frame.time, &mut emit);
            progress(p);
        })
    }

    /// Ends the replay: flushes buffered streams, reports calls still open as such, and
    /// returns the summary (also sent to `out`, last).
    pub fn finish(mut self, out: &mut impl FnMut(Record)) -> CaptureSummary {
        let Replay {
            dissector,
            tracker,
            outcomes,
            last_time,
            ..
        } = &mut self;
        let mut emit = |record: crate::record::CallRecord| {
            *outcomes
                .entry(record.outcome.as_str().to_owned())
                .or_default() += 1;
            out(Record::Call(Box::new(record)));
        };
        dissector.finish(*last_time, &mut |meta, msg| {
            tracker.message(meta, msg, &mut emit)
        });
        tracker.finish(ClosedBy::CaptureEnd, &mut emit);
        let counters = self.tracker.counters();
        let summary = CaptureSummary {
            schema: SUMMARY_SCHEMA,
            files: self.files,
            calls: counters.calls,
            outcomes: self.outcomes,
            registrations: counters.registrations,
            other_transactions: counters.other_transactions,
            orphan_messages: counters.orphan_messages,
            decode: self.dissector.stats(),
            calls_dropped_at_capacity: counters.dropped_at_capacity,
        };
        out(Record::CaptureSummary(Box::new(summary.clone())));
        summary
    }
}
