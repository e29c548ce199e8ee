//! Live listen: a supervisor hears a live call in the browser over WebRTC, the call's
//! endpoint offered as WHEP (draft-ietf-wish-whep, the playback counterpart of WHIP,
//! RFC 9725).
//!
//! - [`ListenSettings`]: the `[listen]` section (off by default), always compiled so a
//!   configuration asking for it is told when the binary was built without it.
//! - `whep` (feature `listen`): the sessions, backed by `webrtc` (webrtc-rs 0.21, ring):
//!   POST of a recvonly offer → `201` with a sendonly answer (host candidates only, no
//!   STUN/TURN, the full candidate list in the answer: the server does not trickle) and a
//!   random session URL; `DELETE` of that URL ends it. The HTTP side is in
//!   `observe::http`, which routes `/whep/…` here.
//!
//! What is heard: both directions of the call, mixed into one audio track (WHEP allows one
//! track per kind): each direction's G.711 is decoded, the two are added (saturating) and the
//! sum is encoded again every 20 ms, in the call's law (PCMA for a PCMA call, else PCMU;
//! both are mandatory in browsers, RFC 7874). A call whose SDP offered no G.711 at all
//! (G.722, G.729, Opus, ...) is refused (`422`): teledge does not transcode. Packets of other
//! payload types inside a G.711 call (RFC 4733 events, comfort noise) are skipped.
//!
//! Where the audio comes from: the capture path's [`crate::media::tap::ListenTap`] (bounded
//! queue per listener, drops counted, nothing done while no one listens). A session ends
//! when the call ends (the tap closes its queue), when the browser leaves (`DELETE`, or the
//! peer connection fails or closes: ICE consent freshness, RFC 7675, finds a closed tab),
//! and at shutdown. Listeners are bounded per call and in all ([`ListenSettings::limits`]).
//!
//! Access: every WHEP request but the CORS preflight is authenticated by
//! [`crate::access`] (bearer token, session cookie, client certificate); a POST needs the
//! `listen` permission for the call's service, and the service must be `monitorable`. Every
//! listen is audited through [`crate::access::audit`]: a refusal as one record, a session
//! as one record when it ends (start, end, why).

#[cfg(feature = "listen")]
pub mod http;
#[cfg(feature = "listen")]
pub mod whep;

/// The WHEP service the HTTP endpoint routes to (uninhabited without the `listen`
/// feature, so the endpoint's field exists in both builds).
#[cfg(feature = "listen")]
pub type Service = whep::Whep;
/// The WHEP service the HTTP endpoint routes to (uninhabited without the `listen`
/// feature, so the endpoint's field exists in both builds).
#[cfg(not(feature = "listen"))]
#[derive(Debug, Clone)]
pub enum Service {}

use std::net::IpAddr;

pub use crate::media::tap::TapLimits;

/// The `[listen]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenSettings {
    /// Serve WHEP at all (default off).
    pub enabled: bool,
    /// The address the WebRTC media sockets bind (one UDP port per session, ephemeral).
    /// `None`: the HTTP endpoint's address; a wildcard binds every non-loopback interface.
    pub media_address: Option<IpAddr>,
    pub limits: TapLimits,
}

/// Whether this binary was built with live listen.
pub const BUILT_IN: bool = cfg!(feature = "listen");

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The call ended.
    CallEnded,
    /// The client sent `DELETE`.
    Deleted,
    /// The peer connection failed or was closed (tab closed, network gone).
    PeerGone,
    /// ICE never connected within the setup time.
    NeverConnected,
    /// The daemon stopped.
    Shutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::CallEnded => "call_ended",
            EndReason::Deleted => "deleted",
            EndReason::PeerGone => "peer_gone",
            EndReason::NeverConnected => "never_connected",
            EndReason::Shutdown => "shutdown",
        }
    }
}
