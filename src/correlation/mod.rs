//! Correlation: typed events in, records out; deterministic, driven by capture time.
//!
//! [`Correlator`] joins the two trackers: SIP messages drive [`calls::CallTracker`] and teach
//! [`media::MediaTracker`] the media endpoints their SDP announces; other UDP datagrams are
//! measured as RTP/RTCP. A call's record is made the moment the call ends (see
//! [`calls`] for when that is); the media of that call is taken and put into it, and its
//! media endpoints are remembered for the linger time so that RTP and RTCP still in flight
//! are counted rather than reported as orphans. RTP that matches no call comes out as stream
//! records of its own (bounded per minute, see [`media`]).
//! [`hep::feed`] adapts HEP frames: the SIP inside them is handled like tapped SIP, and RTCP
//! relayed as JSON is attached to the call its correlation id (the Call-ID) names.

pub mod calls;
pub mod hep;
pub mod media;

use crate::decode::hep::RtcpJson;
use crate::decode::sip::SipMessage;
use crate::dissect::{DatagramMeta, MessageMeta};
use crate::record::{CallRecord, ClosedBy, Record};
use crate::time::Timestamp;

use calls::{CallLimits, CallTracker};
use media::{MediaLimits, MediaTracker};

/// Calls and their media.
#[derive(Debug)]
pub struct Correlator {
    calls: CallTracker,
    media: MediaTracker,
}

impl Correlator {
    pub fn new(calls: CallLimits, media: MediaLimits) -> Self {
        let media = MediaLimits {
            ended_linger: calls.linger,
            ..media
        };
        Correlator {
            calls: CallTracker::new(calls),
            media: MediaTracker::new(media),
        }
    }

    pub fn calls(&self) -> &CallTracker {
        &self.calls
    }

    pub fn media(&self) -> &MediaTracker {
        &self.media
    }

    /// Handles a SIP message.
    pub fn sip(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, out: &mut impl FnMut(Record)) {
        let sdp = calls::summarize_sdp(msg);
        let Correlator { calls, media } = self;
        let now = meta.time;
        calls.message(meta, msg, sdp.as_ref(), &mut |call| {
            emit(media, call, now, out)
        });
        if let (Some(sdp), Some(side)) = (sdp, calls.side_of(msg)) {
            media.learn(calls::call_key(msg.call_id), side, &calls::capped_sdp(&sdp));
        }
    }

    /// Attaches an RTCP report relayed by a HEP agent to the call with this Call-ID; false when
    /// no such call is tracked (counted in the call counters).
    pub fn hep_rtcp(&mut self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool {
        self.calls.hep_rtcp(call_id, time, report)
    }

    /// Handles a UDP datagram that is not SIP.
    pub fn datagram(&mut self, meta: &DatagramMeta, payload: &[u8], out: &mut impl FnMut(Record)) {
        self.media
            .datagram(meta, payload, &mut |s| out(Record::Stream(Box::new(s))));
    }

    /// Moves time forward (per frame in replay, per tick live).
    pub fn advance(&mut self, now: Timestamp, out: &mut impl FnMut(Record)) {
        let Correlator { calls, media } = self;
        calls.advance(now, &mut |call| emit(media, call, now, out));
        media.advance(now, &mut |s| out(Record::Stream(Box::new(s))));
    }

    /// Reports everything still open.
    pub fn finish(&mut self, closed_by: ClosedBy, out: &mut impl FnMut(Record)) {
        let Correlator { calls, media } = self;
        calls.finish(closed_by, &mut |mut call| {
            call.media_quality = media.take_call(&call.call_id);
            out(Record::Call(Box::new(call)));
        });
        media.finish(&mut |s| out(Record::Stream(Box::new(s))));
    }
}

/// A call ended at `now`: its media goes into its record, its endpoints are remembered.
fn emit(
    media: &mut MediaTracker,
    mut call: CallRecord,
    now: Timestamp,
    out: &mut impl FnMut(Record),
) {
    call.media_quality = media.end_call(&call.call_id, now);
    out(Record::Call(Box::new(call)));
}
