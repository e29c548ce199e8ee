//! `teledge replay`: capture files through the shared [`Pipeline`] (decode → correlation) into
//! records. Files are read in the order given as one continuous capture, so a call that
//! spans two consecutive files of a ring buffer is one call.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use crate::correlation::calls::CallLimits;
use crate::correlation::media::MediaLimits;
use crate::correlation::Correlator;
use crate::dissect::{DissectLimits, DissectStats, Frame};
use crate::pipeline::{InputId, Pipeline};
use crate::record::{CaptureDrops, CaptureSummary, ClosedBy, Record, SUMMARY_SCHEMA};
use crate::sources::capture_file::{self, CaptureError, Progress};
use crate::time::Timestamp;

/// Settings of a replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplaySettings {
    pub calls: CallLimits,
    pub media: MediaLimits,
    pub dissect: DissectLimits,
}

/// A replay in progress.
#[derive(Debug)]
pub struct Replay {
    pipeline: Pipeline,
    input: InputId,
    files: Vec<String>,
    outcomes: BTreeMap<String, u64>,
    last_time: Timestamp,
    undecodable_files: Vec<String>,
    drops: capture_file::FileDrops,
}

impl Replay {
    pub fn new(settings: ReplaySettings) -> Self {
        Self::build(settings, false)
    }

    /// A replay whose records include the `teledge.registrations/1` records of the REGISTER
    /// attempts (for the statistics, see [`Correlator::with_registration_records`]).
    pub fn with_registrations(settings: ReplaySettings) -> Self {
        Self::build(settings, true)
    }

    fn build(settings: ReplaySettings, registrations: bool) -> Self {
        let (pipeline, input) = Pipeline::single(
            Correlator::new(settings.calls, settings.media)
                .with_registration_records(registrations),
            settings.dissect,
        );
        Replay {
            pipeline,
            input,
            files: Vec::new(),
            outcomes: BTreeMap::new(),
            last_time: Timestamp::default(),
            undecodable_files: Vec::new(),
            drops: capture_file::FileDrops::default(),
        }
    }

    /// Hands what passes through the pipeline to `mirror` (`replay --hep-out`: the HEP relay).
    pub fn set_mirror(&mut self, mirror: Box<dyn crate::pipeline::Mirror>) {
        self.pipeline.set_mirror(mirror);
    }

    /// Reads one capture. Records of calls that ended go to `out` as they end. On error, the
    /// frames before the damage have been processed. A file whose every frame failed to
    /// decode is an error too ([`CaptureError::Undecodable`], with the kinds of failure), and
    /// is named in the summary: it must not pass for an empty capture.
    pub fn read(
        &mut self,
        name: &str,
        input: impl Read + Seek + Send,
        out: &mut impl FnMut(Record),
        mut progress: impl FnMut(Progress),
    ) -> Result<u64, CaptureError> {
        self.files.push(name.to_owned());
        let before = self.pipeline.dissect_stats(self.input);
        let Replay {
            pipeline,
            input: id,
            outcomes,
            last_time,
            drops,
            ..
        } = self;
        let mut counted = |record: Record| {
            count_outcome(outcomes, &record);
            out(record);
        };
        let frames =
            capture_file::read_frames_noting_drops(input, drops, |frame: &Frame<'_>, p| {
                *last_time = (*last_time).max(frame.time);
                pipeline.frame(*id, frame, &mut counted);
                pipeline.tick(frame.time, &mut counted);
                progress(p);
            })?;
        let after = self.pipeline.dissect_stats(self.input);
        let failed = after.frames_failed - before.frames_failed;
        if frames > 0 && failed == frames {
            self.undecodable_files.push(name.to_owned());
            return Err(CaptureError::Undecodable {
                frames,
                detail: failure_kinds(&before, &after),
            });
        }
        Ok(frames)
    }

    /// Ends the replay: flushes buffered streams, reports calls still open as such, and
    /// returns the summary (also sent to `out`, last).
    pub fn finish(mut self, out: &mut impl FnMut(Record)) -> CaptureSummary {
        let Replay {
            pipeline,
            outcomes,
            last_time,
            ..
        } = &mut self;
        let mut counted = |record: Record| {
            count_outcome(outcomes, &record);
            out(record);
        };
        pipeline.finish(*last_time, ClosedBy::CaptureEnd, &mut counted);
        let correlator = self.pipeline.correlator();
        let counters = correlator.calls().counters();
        let summary = CaptureSummary {
            schema: SUMMARY_SCHEMA,
            files: self.files,
            calls: counters.calls,
            outcomes: self.outcomes,
            registrations: counters.registrations,
            other_transactions: counters.other_transactions,
            orphan_messages: counters.orphan_messages,
            decode: (&self.pipeline.dissect_stats(self.input)).into(),
            media: (&correlator.media().counters()).into(),
            calls_dropped_at_capacity: counters.dropped_at_capacity,
            call_counters: (&counters).into(),
            undecodable_files: self.undecodable_files,
            capture_drops: CaptureDrops {
                interface_statistics: self.drops.interface_statistics,
                packet_drop_counts: self.drops.packet_drop_counts,
                erf_loss_counters: self.drops.erf_loss_counters,
                snoop_cumulative_drops: self.drops.snoop_cumulative_drops,
            },
        };
        out(Record::CaptureSummary(Box::new(summary.clone())));
        summary
    }
}

/// The kinds of decode failure between two snapshots, with the first problem recorded in
/// them: `link 57; frame 1: frame shorter than its link-layer header`.
fn failure_kinds(before: &DissectStats, after: &DissectStats) -> String {
    let kinds: Vec<String> = after
        .errors
        .iter()
        .map(|(kind, n)| (kind, n - before.errors.get(kind).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    let mut detail = kinds.join(", ");
    if let Some(first) = after.problems.get(before.problems.len()) {
        detail.push_str(&format!("; frame {}: {}", first.frame, first.detail));
    }
    detail
}

fn count_outcome(outcomes: &mut BTreeMap<String, u64>, record: &Record) {
    if let Record::Call(call) = record {
        *outcomes
            .entry(call.outcome.as_str().to_owned())
            .or_default() += 1;
    }
}
