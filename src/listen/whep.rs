//! WHEP sessions on webrtc-rs: one peer connection per listener, its audio the mix of the
//! call's two directions (see the [module doc](super)).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

use super::{EndReason, ListenSettings};
use crate::access::audit::{AuditSink, Client, ListenAudit, ListenEnd};
use crate::access::{Access, Denied, Permission, Principal};
use crate::correlation::ListenableCall;
use crate::decode::sdp::Codec;
use crate::media::g711::{mix_into, Law};
use crate::media::tap::{ListenTap, TapDirection, TapFull, TapPacket};
use crate::stats::service::Services;
use crate::time::Timestamp;

/// Longest SDP offer read (a browser's audio-only offer is 2–4 KiB).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Time allowed to gather the host candidates before answering.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a session may take from its answer to a connected peer connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Samples (8 kHz) of one 20 ms frame.
const FRAME: usize = 160;
/// Samples buffered per direction before it plays (jitter from the capture path).
const PREBUFFER: usize = 2 * FRAME;
/// Samples buffered per direction at most (1 s); older ones are dropped (counted).
const MAX_BUFFERED: usize = 8000;
/// `Retry-After` seconds of a `409` or `503`.
pub const RETRY_AFTER_S: u32 = 5;

/// Looks up an open call by the id in a WHEP URL — its Call-ID, or the pseudonymised id the
/// status page shows — in the correlator: the call, and its id as the page shows it (what
/// audit records name).
pub type CallLookup = Arc<dyn Fn(&str) -> Option<(ListenableCall, String)> + Send + Sync>;

/// Why a session was not created; [`CreateError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("no active call with this Call-ID")]
    NotActive,
    #[error(transparent)]
    Denied(Denied),
    #[error(transparent)]
    Full(#[from] TapFull),
    #[error("the call's codecs ({0}) include no G.711 (PCMU/PCMA); teledge does not transcode")]
    Codec(String),
    #[error("the offer cannot be answered")]
    Offer(#[source] webrtc::error::Error),
    #[error("the offer has no audio the answer can send (PCMU/PCMA)")]
    NoAudio,
    #[error("WebRTC could not be set up")]
    Setup(#[source] webrtc::error::Error),
    #[error("ICE gathering did not complete")]
    Gathering,
    #[error("the system's random number generator failed: no unguessable session id")]
    NoRandomness,
}

impl CreateError {
    pub fn status(&self) -> u16 {
        match self {
            CreateError::NotActive => 409,
            CreateError::Denied(d) => d.status(),
            CreateError::Full(_) => 503,
            CreateError::Codec(_) => 422,
            CreateError::Offer(_) | CreateError::NoAudio => 400,
            CreateError::Setup(_) | CreateError::Gathering => 500,
            CreateError::NoRandomness => 503,
        }
    }

    /// The counter's label.
    pub fn kind(&self) -> &'static str {
        match self {
            CreateError::NotActive => "no_such_call",
            CreateError::Denied(d) => d.code(),
            CreateError::Full(TapFull::Supervisor(_)) => "supervisor_listeners_full",
            CreateError::Full(_) => "listeners_full",
            CreateError::Codec(_) => "codec_not_g711",
            CreateError::Offer(_) | CreateError::NoAudio => "bad_offer",
            CreateError::Setup(_) | CreateError::Gathering | CreateError::NoRandomness => {
                "setup_failed"
            }
        }
    }
}

/// A created session.
#[derive(Debug)]
pub struct Created {
    /// The session id, the last segment of its URL.
    pub session: String,
    pub answer: String,
}

/// Counters of live listen (metrics).
#[derive(Debug, Default)]
pub struct WhepCounters {
    pub sessions_started: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub refused_not_active: AtomicU64,
    /// Refused by access control after authentication (not permitted, not monitorable);
    /// authentication failures are counted by `access`.
    pub refused_denied: AtomicU64,
    /// Refused at the node's or the call's listener bound.
    pub refused_full: AtomicU64,
    /// Refused at the supervisor's own listener bound (`max_listeners_per_supervisor`).
    pub refused_supervisor_full: AtomicU64,
    pub refused_codec: AtomicU64,
    pub refused_bad_offer: AtomicU64,
    pub setup_failed: AtomicU64,
    pub packets_sent: AtomicU64,
    /// Tapped packets of another payload type than G.711 (events, comfort noise), skipped.
    pub packets_skipped: AtomicU64,
    /// Samples dropped because a direction had more than 1 s buffered.
    pub samples_overflowed: AtomicU64,
}

/// The WHEP side of live listen; cheap to clone.
#[derive(Clone)]
pub struct Whep {
    inner: Arc<Inner>,
}

/// [`Whep::downgrade`]: the service while anything else holds it.
#[derive(Clone)]
pub struct WeakWhep(std::sync::Weak<Inner>);

impl std::fmt::Debug for WeakWhep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakWhep").finish_non_exhaustive()
    }
}

impl WeakWhep {
    pub fn upgrade(&self) -> Option<Whep> {
        self.0.upgrade().map(|inner| Whep { inner })
    }
}

impl std::fmt::Debug for Whep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whep")
            .field("settings", &self.inner.settings)
            .field("sessions", &lock(&self.inner.sessions).len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: ListenSettings,
    /// Where media sockets bind when the settings name no address.
    default_ip: IpAddr,
    tap: ListenTap,
    lookup: CallLookup,
    access: Arc<Access>,
    audit: AuditSink,
    services: Services,
    /// Each session's owner (the supervisor id that made it) and its cancellation.
    sessions: Mutex<HashMap<String, (String, CancellationToken)>>,
    counters: WhepCounters,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Whep {
    /// `default_ip`: the HTTP endpoint's address, used when `[listen] media_address` is
    /// unset. `services` classify the call (access is per service). Sessions stop when
    /// `shutdown` is cancelled; `tracker` waits for them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: ListenSettings,
        default_ip: IpAddr,
        tap: ListenTap,
        lookup: CallLookup,
        access: Arc<Access>,
        audit: AuditSink,
        services: Services,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Whep {
        Whep {
            inner: Arc::new(Inner {
                settings,
                default_ip,
                tap,
                lookup,
                access,
                audit,
                services,
                sessions: Mutex::new(HashMap::new()),
                counters: WhepCounters::default(),
                shutdown,
                tracker,
            }),
        }
    }

    /// A handle that does not keep the service alive: for the metrics' scrape-time
    /// sources. The service holds the audit sink and the call lookup, and both hold the
    /// metrics, so a strong clone there made a cycle that kept the metrics — and the spool
    /// and its store's lock — alive after a shutdown.
    pub fn downgrade(&self) -> WeakWhep {
        WeakWhep(Arc::downgrade(&self.inner))
    }

    pub fn counters(&self) -> &WhepCounters {
        &self.inner.counters
    }

    pub fn tap(&self) -> &ListenTap {
        &self.inner.tap
    }

    pub fn access(&self) -> &Access {
        &self.inner.access
    }

    pub fn audit(&self) -> &AuditSink {
        &self.inner.audit
    }

    /// Sessions running now.
    pub fn sessions(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Whether the call with this Call-ID could be listened to now.
    pub fn lookup(&self, call_id: &str) -> Option<(ListenableCall, String)> {
        (self.inner.lookup)(call_id)
    }

    /// Answers a WHEP offer of an authenticated `principal` for the call with this Call-ID
    /// and starts the session, if the principal may listen to the call's service. Every
    /// outcome is audited: a refusal at once, a session when it ends.
    pub async fn create(
        &self,
        call_id: &str,
        offer: String,
        principal: &Principal,
        client: &Client,
    ) -> Result<Created, CreateError> {
        let mut service = None;
        let result = self
            .try_create(call_id, offer, principal, client, &mut service)
            .await;
        if let Err(e) = &result {
            self.inner.audit.listen_refused(
                Some(principal),
                e.kind(),
                e.status(),
                Some(call_id),
                service.as_deref(),
                client,
            );
            let c = &self.inner.counters;
            match e {
                CreateError::NotActive => &c.refused_not_active,
                CreateError::Denied(_) => &c.refused_denied,
                CreateError::Full(TapFull::Supervisor(_)) => &c.refused_supervisor_full,
                CreateError::Full(_) => &c.refused_full,
                CreateError::Codec(_) => &c.refused_codec,
                CreateError::Offer(_) | CreateError::NoAudio => &c.refused_bad_offer,
                CreateError::Setup(_) | CreateError::Gathering | CreateError::NoRandomness => {
                    &c.setup_failed
                }
            }
            .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn try_create(
        &self,
        call_id: &str,
        offer: String,
        principal: &Principal,
        client: &Client,
        service: &mut Option<String>,
    ) -> Result<Created, CreateError> {
        let inner = &self.inner;
        let (call, shown_id) = (inner.lookup)(call_id).ok_or(CreateError::NotActive)?;
        *service = inner
            .services
            .classify_open(
                call.callee_user.as_deref(),
                &call.caller_address,
                &call.callee_address,
            )
            .map(|s| s.name.clone());
        inner
            .access
            .check(principal, service.as_deref(), Permission::Listen)
            .map_err(CreateError::Denied)?;
        // Subscribe, then check the call again (see `ListenTap::subscribe`): a call that
        // ends in between closes the subscription.
        let subscription = inner.tap.subscribe(&call.call_key, &principal.id)?;
        let (call, _) = (inner.lookup)(call_id).ok_or(CreateError::NotActive)?;
        let law = law_of_call(&call.codecs)?;
        if !offer_has_audio(&offer, law) {
            return Err(CreateError::NoAudio);
        }
        // The session's id first: nothing is set up for a session that could not have one.
        let session = random_id().ok_or(CreateError::NoRandomness)?;

        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, mut gathered_rx) = watch::channel(false);
        let handler = Arc::new(Handler {
            state: state_tx,
            gathered: gathered_tx,
        });
        let ip = inner.settings.media_address.unwrap_or(inner.default_ip);
        let pc = build_peer(law, ip, handler)
            .await
            .map_err(CreateError::Setup)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let ssrc = random_u32();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "teledge".to_owned(),
            "call".to_owned(),
            "call".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec(law),
                ..Default::default()
            }],
        )));
        let negotiated = async {
            pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await
                .map_err(CreateError::Setup)?;
            let offer = RTCSessionDescription::offer(offer).map_err(CreateError::Offer)?;
            pc.set_remote_description(offer)
                .await
                .map_err(CreateError::Offer)?;
            let answer = pc.create_answer(None).await.map_err(CreateError::Offer)?;
            pc.set_local_description(answer)
                .await
                .map_err(CreateError::Setup)?;
            // The server does not trickle: the answer carries every candidate.
            tokio::time::timeout(GATHER_TIMEOUT, gathered_rx.wait_for(|done| *done))
                .await
                .map_err(|_| CreateError::Gathering)?
                .map_err(|_| CreateError::Gathering)?;
            pc.local_description().await.ok_or(CreateError::Gathering)
        }
        .await;
        let answer = match negotiated {
            Ok(a) => a.sdp,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };

        let cancel = inner.shutdown.child_token();
        lock(&inner.sessions).insert(session.clone(), (principal.id.clone(), cancel.clone()));
        inner
            .counters
            .sessions_started
            .fetch_add(1, Ordering::Relaxed);
        let audit = inner.audit.listen_started(
            principal,
            &shown_id,
            service.as_deref(),
            &session,
            201,
            client,
        );
        tracing::info!(
            principal = %principal.id,
            call = %shown_id,
            session = %session,
            client = %client.address,
            law = ?law,
            "Live listen started."
        );
        let this = self.clone();
        let sid = session.clone();
        inner.tracker.spawn(async move {
            let mut mixer = Mixer::new(law, &call.codecs);
            let (reason, sent) = run_session(
                &track,
                ssrc,
                law,
                &mut mixer,
                subscription,
                state_rx,
                &cancel,
                &this.inner.shutdown,
                &this.inner.counters,
            )
            .await;
            // Audited before the close, which may take a moment: at shutdown the record
            // queue is open only until the sources have stopped.
            lock(&this.inner.sessions).remove(&sid);
            let c = &this.inner.counters;
            c.sessions_ended.fetch_add(1, Ordering::Relaxed);
            c.packets_skipped
                .fetch_add(mixer.skipped, Ordering::Relaxed);
            c.samples_overflowed
                .fetch_add(mixer.overflowed, Ordering::Relaxed);
            tracing::info!(
                call = %shown_id,
                session = %sid,
                reason = reason.as_str(),
                packets_sent = sent,
                "Live listen ended."
            );
            end_audit(audit, reason);
            let _ = pc.close().await;
        });
        Ok(Created { session, answer })
    }

    /// Ends a session (`DELETE`) of `principal`; false when it has none with this id. A
    /// session is its owner's alone: another supervisor who learnt its URL (the audit
    /// records carry it) gets the same answer as for no session at all.
    pub fn delete(&self, session: &str, principal: &Principal) -> bool {
        let mut sessions = lock(&self.inner.sessions);
        match sessions.get(session) {
            Some((owner, _)) if *owner == principal.id => {
                if let Some((_, cancel)) = sessions.remove(session) {
                    cancel.cancel();
                }
                true
            }
            _ => false,
        }
    }
}

/// The session's one audit record.
fn end_audit(audit: ListenAudit, reason: EndReason) {
    audit.end(match reason {
        EndReason::CallEnded => ListenEnd::CallEnded,
        EndReason::Deleted | EndReason::PeerGone => ListenEnd::ClientLeft,
        EndReason::Shutdown => ListenEnd::Shutdown,
        // ICE or DTLS never came up: the session failed.
        EndReason::NeverConnected => ListenEnd::Error,
    });
}

/// The law the session plays: the first G.711 codec the call's SDP names; PCMU when its SDP
/// was never seen (the tapped packets' payload types then decide how each is decoded).
fn law_of_call(codecs: &[Codec]) -> Result<Law, CreateError> {
    if codecs.is_empty() {
        return Ok(Law::Mu);
    }
    if let Some(law) = codecs.iter().find_map(law_of_codec) {
        return Ok(law);
    }
    let names: Vec<String> = codecs
        .iter()
        .map(|c| c.name.clone().unwrap_or_else(|| c.payload_type.to_string()))
        .collect();
    Err(CreateError::Codec(names.join(", ")))
}

fn law_of_codec(codec: &Codec) -> Option<Law> {
    match &codec.name {
        Some(name) => Law::of_name(name),
        None => Law::of_payload_type(codec.payload_type),
    }
}

/// Whether the offer has an audio section that can receive this law (a quick look before
/// any socket is bound; webrtc-rs checks the rest).
fn offer_has_audio(offer: &str, law: Law) -> bool {
    let name = match law {
        Law::Mu => "PCMU/8000",
        Law::A => "PCMA/8000",
    };
    offer.lines().any(|l| l.starts_with("m=audio")) && offer.contains(name)
}

fn codec(law: Law) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: match law {
            Law::Mu => "audio/PCMU",
            Law::A => "audio/PCMA",
        }
        .to_owned(),
        clock_rate: 8000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

async fn build_peer(
    law: Law,
    ip: IpAddr,
    handler: Arc<Handler>,
) -> Result<impl PeerConnection, webrtc::error::Error> {
    let mut media = MediaEngine::default();
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(law),
            payload_type: law.payload_type(),
        },
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    // Host candidates only (no ICE servers); no mDNS: an edge box answers with its own
    // addresses, and a browser that hides its own behind mDNS names still connects through
    // a peer-reflexive candidate (its checks reach our host candidates).
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(handler)
        .with_udp_addrs(vec![SocketAddr::new(ip, 0)])
        .build()
        .await
}

struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }
}

/// The session's loop: tapped packets into the mixer, a mixed frame out every 20 ms once
/// connected, until the call, the client or the daemon ends it.
#[allow(clippy::too_many_arguments)]
async fn run_session(
    track: &Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    law: Law,
    mixer: &mut Mixer,
    mut subscription: crate::media::tap::Subscription,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    cancel: &CancellationToken,
    shutdown: &CancellationToken,
    counters: &WhepCounters,
) -> (EndReason, u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let connect_by = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut connected = false;
    let mut sequence = random_u32() as u16;
    let mut timestamp = random_u32();
    let mut sent = 0u64;
    let mut first = true;
    let reason = loop {
        tokio::select! {
            // In this order: the session's token is a child of shutdown's, and a session
            // ended by shutdown must say so.
            biased;
            () = shutdown.cancelled() => break EndReason::Shutdown,
            () = cancel.cancelled() => break EndReason::Deleted,
            packet = subscription.packets.recv() => match packet {
                Some(p) => mixer.push(&p),
                None => break EndReason::CallEnded,
            },
            changed = state.changed() => {
                if changed.is_err() {
                    break EndReason::PeerGone;
                }
                match *state.borrow_and_update() {
                    RTCPeerConnectionState::Connected => connected = true,
                    RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
                    | RTCPeerConnectionState::Disconnected => break EndReason::PeerGone,
                    _ => {}
                }
            }
            _ = tick.tick() => {
                if !connected {
                    if tokio::time::Instant::now() >= connect_by {
                        break EndReason::NeverConnected;
                    }
                    // Nothing is heard before the connection: keep only the newest audio.
                    mixer.trim();
                    continue;
                }
                // Silence (hold, a quiet line) is not sent: the browser conceals it.
                let Some(frame) = mixer.frame() else { continue };
                let packet = rtc::rtp::packet::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        marker: first,
                        payload_type: law.payload_type(),
                        sequence_number: sequence,
                        timestamp,
                        ssrc,
                        ..Default::default()
                    },
                    payload: hyper::body::Bytes::copy_from_slice(&frame),
                };
                first = false;
                sequence = sequence.wrapping_add(1);
                timestamp = timestamp.wrapping_add(FRAME as u32);
                if track.write_rtp(packet).await.is_ok() {
                    sent += 1;
                    counters.packets_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    (reason, sent)
}

/// The two directions of a call, decoded and buffered, mixed 20 ms at a time.
struct Mixer {
    law: Law,
    /// Dynamic payload types the call's SDP mapped to G.711.
    dynamic: Vec<(u8, Law)>,
    directions: [Direction; 2],
    skipped: u64,
    overflowed: u64,
}

#[derive(Default)]
struct Direction {
    samples: VecDeque<i16>,
    playing: bool,
}

impl Mixer {
    fn new(law: Law, codecs: &[Codec]) -> Mixer {
        Mixer {
            law,
            dynamic: codecs
                .iter()
                .filter(|c| c.payload_type >= 96)
                .filter_map(|c| Some((c.payload_type, law_of_codec(c)?)))
                .collect(),
            directions: Default::default(),
            skipped: 0,
            overflowed: 0,
        }
    }

    fn push(&mut self, packet: &TapPacket) {
        let law = Law::of_payload_type(packet.payload_type).or_else(|| {
            self.dynamic
                .iter()
                .find(|(pt, _)| *pt == packet.payload_type)
                .map(|(_, l)| *l)
        });
        let Some(law) = law else {
            self.skipped += 1;
            return;
        };
        let d = &mut self.directions[match packet.direction {
            TapDirection::CallerToCallee => 0,
            TapDirection::CalleeToCaller => 1,
        }];
        d.samples
            .extend(packet.payload.iter().map(|b| law.decode(*b)));
        if d.samples.len() > MAX_BUFFERED {
            let excess = d.samples.len() - MAX_BUFFERED;
            d.samples.drain(..excess);
            self.overflowed += excess as u64;
        }
    }

    /// Before the browser is connected: keep at most the prebuffer.
    fn trim(&mut self) {
        for d in &mut self.directions {
            if d.samples.len() > PREBUFFER {
                let excess = d.samples.len() - PREBUFFER;
                d.samples.drain(..excess);
            }
        }
    }

    /// The next 20 ms, both directions added; `None` when neither has anything to play.
    fn frame(&mut self) -> Option<[u8; FRAME]> {
        let mut mixed = [0i16; FRAME];
        let mut any = false;
        for d in &mut self.directions {
            if !d.playing && d.samples.len() >= PREBUFFER {
                d.playing = true;
            }
            if !d.playing {
                continue;
            }
            let n = d.samples.len().min(FRAME);
            let part: Vec<i16> = d.samples.drain(..n).collect();
            mix_into(&mut mixed[..n], &part);
            any = true;
            if d.samples.is_empty() {
                // Ran dry: wait for a prebuffer again rather than stutter.
                d.playing = false;
            }
        }
        if !any {
            return None;
        }
        let mut out = [0u8; FRAME];
        for (o, s) in out.iter_mut().zip(mixed) {
            *o = self.law.encode(s);
        }
        Some(out)
    }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // Without randomness the clock makes a usable SSRC and sequence start.
    if getrandom::getrandom(&mut b).is_err() {
        return Timestamp::now().as_nanos() as u32;
    }
    u32::from_le_bytes(b)
}

/// A session id from the system's CSPRNG (128 bits, hex), or none when it fails: a
/// guessable session URL would let anyone end sessions (WHEP §Security), so the session is
/// refused ([`CreateError::NoRandomness`]) rather than given an id made from the clock.
fn random_id() -> Option<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).ok()?;
    Some(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn packet(direction: TapDirection, pt: u8, byte: u8) -> TapPacket {
        TapPacket {
            direction,
            payload_type: pt,
            sequence: 0,
            timestamp: 0,
            ssrc: 1,
            payload: Arc::from(vec![byte; FRAME]),
        }
    }

    fn codec(pt: u8, name: &str) -> Codec {
        Codec {
            payload_type: pt,
            name: Some(name.to_owned()),
            clock_rate: Some(8000),
        }
    }

    #[test]
    fn the_law_follows_the_call_and_other_codecs_are_refused() {
        assert_eq!(law_of_call(&[]).unwrap(), Law::Mu);
        let pcma = [codec(8, "PCMA"), codec(101, "telephone-event")];
        assert_eq!(law_of_call(&pcma).unwrap(), Law::A);
        let g729 = [codec(18, "G729"), codec(101, "telephone-event")];
        let e = law_of_call(&g729).unwrap_err();
        assert_eq!(e.status(), 422);
        assert!(e.to_string().contains("G729"), "{e}");
    }

    #[test]
    fn both_directions_are_mixed_after_a_prebuffer_and_events_skipped() {
        let mut m = Mixer::new(Law::Mu, &[codec(0, "PCMU")]);
        // 0x9F and 0x1F are +/- the same µ-law level: the two sides cancel out.
        m.push(&packet(TapDirection::CallerToCallee, 0, 0x9F));
        assert!(m.frame().is_none(), "plays only after the prebuffer");
        m.push(&packet(TapDirection::CallerToCallee, 0, 0x9F));
        m.push(&packet(TapDirection::CalleeToCaller, 0, 0x1F));
        m.push(&packet(TapDirection::CalleeToCaller, 0, 0x1F));
        m.push(&packet(TapDirection::CalleeToCaller, 101, 0x01));
        assert_eq!(m.skipped, 1);
        let f = m.frame().unwrap();
        assert!(f.iter().all(|b| Law::Mu.decode(*b) == 0), "{f:?}");
        // One side alone: its own signal.
        let mut m = Mixer::new(Law::A, &[]);
        m.push(&packet(TapDirection::CallerToCallee, 0, 0x9F));
        m.push(&packet(TapDirection::CallerToCallee, 0, 0x9F));
        let f = m.frame().unwrap();
        let level = Law::A.decode(f[0]);
        let want = Law::Mu.decode(0x9F);
        // Re-encoded in A-law: within one A-law step (256 at this level) of the µ-law value.
        assert!(
            (i32::from(level) - i32::from(want)).abs() <= 256,
            "{level} {want}"
        );
    }

    #[test]
    fn a_direction_buffers_at_most_one_second() {
        let mut m = Mixer::new(Law::Mu, &[]);
        for _ in 0..60 {
            m.push(&packet(TapDirection::CallerToCallee, 0, 0x9F));
        }
        assert_eq!(m.directions[0].samples.len(), MAX_BUFFERED);
        assert_eq!(m.overflowed, (60 * FRAME - MAX_BUFFERED) as u64);
    }

    #[test]
    fn session_ids_are_random_and_long() {
        let a = random_id().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(Some(a), random_id());
    }
}
