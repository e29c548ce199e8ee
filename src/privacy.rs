//! Pseudonymisation of every identity a record can carry, before it is stored or sent
//! (EN 15838 7.9: personal data of callers and agents is protected at the collector too).
//!
//! [`Pseudonymizer::apply`] runs in the spool writer (daemon) and in `replay --forward`, on
//! every record before it is serialised into the spool: nothing below reaches the spool, the
//! uplink or the collector in clear unless the configuration says `mode = "clear"`.
//!
//! # Modes
//!
//! - Numbers and names (`[privacy] mode`): a keyed hash (HMAC-SHA256 under a site key:
//!   stable per site, so a supervisor can still count repeat callers, but not reversible
//!   without the key — a plain hash of an E.164 number could be brute-forced in minutes),
//!   the last N digits (`keep_digits`, at most [`MAX_KEEP_DIGITS`]: more would leave a
//!   number identifiable), or clear (only by explicit configuration; then the other
//!   identity fields below stay as captured too, except addresses).
//! - Identifiers (Call-IDs) are always a keyed hash outside `clear`: under the site key
//!   when one is configured, otherwise under a key derived from the spool sealing key
//!   ([`identifier_key_from_spool_key`]); the same key hashes both legs' ids, so a
//!   `linked_call_id` still equals the `call_id` of the other leg's record.
//! - Addresses (`[privacy] addresses`): `keep` (default), `hash` (`h:` + 16 hex of
//!   HMAC-SHA256 of the IP under the identifier key; the port is kept), or `truncate`
//!   (IPv4 to its /24, IPv6 to its /48: the network stays visible, the host not; host
//!   names, which cannot be truncated, are hashed).
//!
//! # Decision table: every string field of every record kind
//!
//! "pseudonymised" means by the mode above; "kept" means it carries no identity (it is
//! computed by teledge, a closed set, a number, or an operator-chosen name of equipment).
//!
//! | record | field | decision (outside `clear`) |
//! |---|---|---|
//! | call, stream, queue | `record_id` | keyed: HMAC-SHA256 under the identifier key of the id as made (a SHA-256 of Call-ID, time and address; of a stream's addresses, SSRC and start; of the PBX's call id), so it stays stable and unique but is no oracle for guesses of the Call-ID or a hashed address (kept only in `clear` mode with addresses kept) |
//! | call | `call_id`, `linked_call_id` | keyed hash (`h:`…): Call-IDs often embed numbers or host addresses |
//! | call | `caller`, `callee`, `asserted_identity`, `diverted_from`: `user` | number mode |
//! | call | same: `display_name` | keyed hash (keep-digits mode: `(redacted)`) |
//! | call | same: `uri` | scheme (`sip`, `sips`, `tel`, `urn`; text before a `:` that is none of them is taken for the user and host of a URI written without its scheme), pseudonymised user part, host (an IP by the address mode; a DNS name kept unless it holds six digits in a row; anything else — a number in the host's place, an escaped `@`, stray characters — by the number mode), port; a URN kept only as an RFC 5031 service URN; every URI and user parameter (`;ext=`, `;rn=`, `;npdi`, `;phone-context=`, `?headers`) removed |
//! | call | `caller_address`, `callee_address` | address mode |
//! | call | `final_reason` (reason phrase) | removed (`null`): free text; `final_status` kept |
//! | call | `reason` | `protocol` kept when registered (SIP, Q.850, ...; else `other`), `cause` kept, `text` removed |
//! | call | `user_agents.caller`, `.callee` (User-Agent/Server) | reduced to the product token: the text up to the first `/`, space or other character outside `[A-Za-z0-9._+-]`, at most 32 characters; a token of digits only (an extension) is removed |
//! | call | `media.offer/answer.media[].address` (SDP `c=`) | address mode; `media`, `protocol`, codec names kept when registered (the SDP and RTP payload format registries, in this file), else `other`: a sender writes any word there |
//! | call, stream | stream `src`, `dst` | address mode; `ssrc` kept; `codec`, `codecs`, `score.codec`, `not_scored.codec` kept when registered, else `other` |
//! | call, stream | stream `metrics.dtmf[].digit` | replaced by `x`: typed digits are PINs and account numbers; count, times and durations kept |
//! | orphan streams summary | `by_source[].src_ip` | address mode; counts kept |
//! | call | `started_before_capture`, `roles_known`, `first_message_time` | kept: flags and a time |
//! | call | `hep_rtcp[]` | kept: SSRCs and numbers |
//! | sensor, alert | `device`, `model`, `port`, `reading`, `unit`, value names, state names | kept: names of equipment from the configuration and profiles |
//! | capture summary | `files`, `undecodable_files` | reduced to file names (directories may name people; a path without a file name, such as `..`, to nothing) |
//! | capture summary | `decode.problems[].detail` | removed (decoder messages may quote wire bytes); `frame` and `kind` kept |
//! | gap (made by the spool) | every field | kept: counts and record ids |
//! | queue | `caller`, `transfer.target` | number mode, **at ingest** (the queue source pseudonymises before the record exists; the spool writer leaves queue records as they are) |
//! | queue | `call_id`, `agent` | keyed hash (`h:`…) under the identifier key, at ingest: an agent's member name is a person's name, an interface names an extension |
//! | queue | `queue`, `group`, `transfer.context`, `exit_key` | kept: names the PBX's configuration gives, a menu key |
//! | registrations | every field | kept: counts and sums of a minute's REGISTER attempts (no Call-ID, address or user is put in it) |
//! | heartbeat | every field | kept: the node id, version, architecture, the configuration's SHA-256 (never its contents), times |
//! | queue | a `WITHDRAW`'s info, an attended transfer's bridge or channel names, pause reasons, caller names | never put in a record |
//!
//! Times, durations, counts, status and cause codes, outcomes and other closed sets are kept
//! in every mode: they are what the statistics are made of.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::record::media::{MediaQuality, NotScored, StreamQuality};
use crate::record::{CallRecord, Party, Record, Sdp};

/// The most digits `keep_digits` may keep: more leave a subscriber number identifiable.
pub const MAX_KEEP_DIGITS: u8 = 6;
/// Longest product token kept of a User-Agent or Server header.
const MAX_PRODUCT_TOKEN: usize = 32;
/// What a DTMF digit becomes outside `clear`.
pub const REDACTED_DIGIT: char = 'x';

/// What a token a sender chose becomes outside `clear` when it is not a registered name.
pub const UNREGISTERED_TOKEN: &str = "other";

/// Reason protocols (RFC 3326's registry: SIP and Q.850, with RFC 4411's preemption
/// values, STIR (RFC 8443), RELEASE_SOURCE and location as 3GPP and RFC 8606 use them).
const REASON_PROTOCOLS: &[&str] = &[
    "SIP",
    "Q.850",
    "Preemption",
    "EMM",
    "STIR",
    "RELEASE_SOURCE",
    "location",
];

/// URI schemes a party's URI is written with (RFC 3261, RFC 3966, RFC 5031's `urn:service`).
const URI_SCHEMES: &[&str] = &["sip", "sips", "tel", "urn"];

/// SDP media types (RFC 8866 §5.14 and its registry).
const SDP_MEDIA: &[&str] = &["audio", "video", "image", "text", "application", "message"];

/// SDP transport protocols (the registry's values a telephony edge meets).
const SDP_PROTOCOLS: &[&str] = &[
    "RTP/AVP",
    "RTP/SAVP",
    "RTP/AVPF",
    "RTP/SAVPF",
    "UDP/TLS/RTP/SAVP",
    "UDP/TLS/RTP/SAVPF",
    "TCP/RTP/AVP",
    "TCP/RTP/AVPF",
    "TCP/RTP/SAVP",
    "TCP/RTP/SAVPF",
    "TCP/TLS/RTP/SAVP",
    "TCP/TLS/RTP/SAVPF",
    "RTP/AVP/TCP",
    "udptl",
    "UDP/UDPTL",
    "TCP/UDPTL",
    "udp",
    "TCP",
    "TCP/MSRP",
    "TCP/TLS/MSRP",
    "UDP/BFCP",
    "TCP/BFCP",
    "TCP/TLS/BFCP",
    "UDP/DTLS/SCTP",
    "TCP/DTLS/SCTP",
];

/// RTP payload format names (IANA's registry of RTP payload formats, the static payload
/// types of RFC 3551, and the spellings phones and the E-model table use).
const CODECS: &[&str] = &[
    "PCMU",
    "PCMA",
    "PCMU-WB",
    "PCMA-WB",
    "G711",
    "G711U",
    "G711A",
    "G721",
    "G722",
    "G7221",
    "G7291",
    "G719",
    "G723",
    "G7231",
    "G726-16",
    "G726-24",
    "G726-32",
    "G726-40",
    "AAL2-G726-16",
    "AAL2-G726-24",
    "AAL2-G726-32",
    "AAL2-G726-40",
    "G728",
    "G729",
    "G729A",
    "G729AB",
    "G729D",
    "G729E",
    "GSM",
    "GSM-EFR",
    "GSM-HR-08",
    "1016",
    "DVI4",
    "VDVI",
    "LPC",
    "L8",
    "L16",
    "L20",
    "L24",
    "QCELP",
    "MPA",
    "MP4A-LATM",
    "mpeg4-generic",
    "AMR",
    "AMR-WB",
    "AMR-WB+",
    "EVS",
    "EVRC",
    "EVRC0",
    "EVRC1",
    "EVRCB",
    "EVRCB0",
    "EVRCB1",
    "EVRCWB",
    "EVRCWB0",
    "EVRCWB1",
    "EVRCNW",
    "EVRCNW0",
    "EVRCNW1",
    "SMV",
    "SMV0",
    "iLBC",
    "iSAC",
    "opus",
    "SILK",
    "SPEEX",
    "BV16",
    "BV32",
    "MELP",
    "CN",
    "telephone-event",
    "tone",
    "red",
    "ulpfec",
    "flexfec",
    "parityfec",
    "rtx",
    "t140",
    "t38",
    "JPEG",
    "H261",
    "H263",
    "H263-1998",
    "H263-2000",
    "H264",
    "H264-SVC",
    "H265",
    "VP8",
    "VP9",
    "AV1",
    "MPV",
    "MP2T",
    "MP1S",
    "MP2P",
    "MP4V-ES",
    "CelB",
    "nv",
    "raw",
    "theora",
];

/// How numbers and names are written into records.
#[derive(Clone, PartialEq, Eq)]
pub enum PrivacyMode {
    /// `h:` and 16 hex characters of HMAC-SHA256(site key, value).
    KeyedHash { site_key: [u8; 32] },
    /// Every digit but the last N replaced by `*`; names hashed away as `(redacted)`.
    KeepLastDigits(u8),
    /// As captured.
    Clear,
}

impl std::fmt::Debug for PrivacyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivacyMode::KeyedHash { .. } => f.write_str("KeyedHash"),
            PrivacyMode::KeepLastDigits(n) => write!(f, "KeepLastDigits({n})"),
            PrivacyMode::Clear => f.write_str("Clear"),
        }
    }
}

/// How IP addresses are written into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressMode {
    /// As captured.
    #[default]
    Keep,
    /// `h:` and 16 hex characters of HMAC-SHA256(identifier key, IP); the port is kept.
    Hash,
    /// IPv4 to its /24, IPv6 to its /48 (the rest zeroed); host names hashed.
    Truncate,
}

/// The validated privacy settings.
#[derive(Clone, PartialEq, Eq)]
pub struct Privacy {
    pub mode: PrivacyMode,
    pub addresses: AddressMode,
    /// The key of identifier and address hashes.
    identifier_key: [u8; 32],
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key material.
        f.debug_struct("Privacy")
            .field("mode", &self.mode)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl Privacy {
    /// `identifier_key` hashes Call-IDs and addresses: the site key when there is one
    /// (in keyed-hash mode it is always the site key), else
    /// [`identifier_key_from_spool_key`].
    pub fn new(mode: PrivacyMode, addresses: AddressMode, identifier_key: [u8; 32]) -> Self {
        let identifier_key = match &mode {
            PrivacyMode::KeyedHash { site_key } => *site_key,
            _ => identifier_key,
        };
        Privacy {
            mode,
            addresses,
            identifier_key,
        }
    }

    /// Numbers in keyed-hash mode, addresses kept: the behaviour before addresses could be
    /// pseudonymised.
    pub fn keyed_hash(site_key: [u8; 32]) -> Self {
        Privacy::new(
            PrivacyMode::KeyedHash { site_key },
            AddressMode::Keep,
            site_key,
        )
    }
}

/// The identifier key when no site key is configured: an HMAC of a fixed label under the
/// spool sealing key, so it is as secret as that key and stable while it is not rotated.
pub fn identifier_key_from_spool_key(spool_key: &[u8; 32]) -> [u8; 32] {
    let mut key = [0u8; 32];
    if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(spool_key) {
        mac.update(b"teledge identifier pseudonyms v1");
        key.copy_from_slice(&mac.finalize().into_bytes());
    }
    key
}

/// Applies [`Privacy`] to records.
#[derive(Debug, Clone)]
pub struct Pseudonymizer {
    privacy: Privacy,
}

impl Pseudonymizer {
    pub fn new(privacy: Privacy) -> Self {
        Pseudonymizer { privacy }
    }

    fn clear(&self) -> bool {
        matches!(self.privacy.mode, PrivacyMode::Clear)
    }

    /// Rewrites every identity in a record (see the decision table in the module doc).
    pub fn apply(&self, record: &mut Record) {
        match record {
            Record::Call(call) => {
                call.record_id = self.record_id(&call.record_id);
                self.call(call);
            }
            Record::Stream(stream) => {
                stream.record_id = self.record_id(&stream.record_id);
                self.stream(&mut stream.stream);
            }
            Record::OrphanStreams(summary) => {
                for source in &mut summary.by_source {
                    source.src_ip = self.address(&source.src_ip);
                }
            }
            Record::CaptureSummary(summary) => {
                if !self.clear() {
                    for file in summary
                        .files
                        .iter_mut()
                        .chain(summary.undecodable_files.iter_mut())
                    {
                        *file = file_name_only(file);
                    }
                    for problem in &mut summary.decode.problems {
                        problem.detail.clear();
                    }
                }
            }
            // Names of equipment from the configuration and profiles: no personal data.
            // Interval records hold service names (configuration) and sums only.
            Record::Sensor(_) | Record::Alert(_) | Record::Interval(_) => {}
            // Counts and record ids of the node's own records.
            Record::Gap(_) => {}
            // Pseudonymised at ingest, by the same settings (crate::correlation::queue); its
            // id hashes the PBX's call id in clear.
            Record::Queue(queue) => queue.record_id = self.record_id(&queue.record_id),
            // The agent pseudonymised at ingest too (crate::correlation::queue); queue
            // names are configuration, pause reasons the PBX's codes.
            Record::Agent(_) => {}
            // Counts and sums of one minute's REGISTER attempts: no identity.
            Record::Registrations(_) => {}
            // Versions, target names and reasons of the node's own updates.
            Record::Update(_) => {}
            // Version, architecture, the configuration's digest (not its contents), times.
            Record::Heartbeat(_) => {}
            // The call id is the one the status page showed (already pseudonymised), the
            // principal a configured supervisor id, the client the supervisor's workstation,
            // which an audit trail must name (see crate::record::audit).
            Record::Audit(_) => {}
        }
    }

    fn call(&self, call: &mut CallRecord) {
        for party in [&mut call.caller, &mut call.callee]
            .into_iter()
            .chain(call.asserted_identity.as_mut())
            .chain(call.diverted_from.as_mut())
        {
            self.party(party);
        }
        call.caller_address = self.address(&call.caller_address);
        call.callee_address = self.address(&call.callee_address);
        for sdp in [&mut call.media.offer, &mut call.media.answer]
            .into_iter()
            .flatten()
        {
            self.sdp(sdp);
        }
        self.media_quality(&mut call.media_quality);
        if self.clear() {
            return;
        }
        call.call_id = self.identifier(&call.call_id);
        if let Some(linked) = call.linked_call_id.as_mut() {
            *linked = self.identifier(linked);
        }
        call.final_reason = None;
        if let Some(reason) = call.reason.as_mut() {
            reason.protocol = self.registered(&reason.protocol, REASON_PROTOCOLS);
            reason.text = None;
        }
        for agent in [&mut call.user_agents.caller, &mut call.user_agents.callee] {
            *agent = agent.as_deref().and_then(product_token);
        }
    }

    fn party(&self, party: &mut Party) {
        if let Some(uri) = party.uri.as_mut() {
            *uri = self.uri(uri);
        }
        if let Some(user) = party.user.as_mut() {
            *user = self.number(user);
        }
        if let Some(name) = party.display_name.as_mut() {
            *name = self.name(name);
        }
    }

    fn sdp(&self, sdp: &mut Sdp) {
        for media in &mut sdp.media {
            if let Some(address) = media.address.as_mut() {
                *address = self.address(address);
            }
            media.media = self.registered(&media.media, SDP_MEDIA);
            media.protocol = self.registered(&media.protocol, SDP_PROTOCOLS);
            for codec in &mut media.codecs {
                if let Some(name) = codec.name.as_mut() {
                    *name = self.registered(name, CODECS);
                }
            }
        }
    }

    fn media_quality(&self, media: &mut MediaQuality) {
        for stream in media
            .caller_to_callee
            .iter_mut()
            .chain(media.callee_to_caller.iter_mut())
            .chain(media.unknown_direction.iter_mut())
        {
            self.stream(stream);
        }
    }

    fn stream(&self, stream: &mut StreamQuality) {
        stream.src = self.address(&stream.src);
        stream.dst = self.address(&stream.dst);
        for name in stream.codec.iter_mut().chain(stream.codecs.iter_mut()) {
            *name = self.registered(name, CODECS);
        }
        if let Some(score) = stream.score.as_mut() {
            score.codec = self.registered(&score.codec, CODECS);
        }
        if let Some(
            NotScored::Wideband(name) | NotScored::Video(name) | NotScored::UnknownCodec(name),
        ) = stream.not_scored.as_mut()
        {
            *name = self.registered(name, CODECS);
        }
        if !self.clear() {
            for event in &mut stream.metrics.dtmf {
                event.digit = REDACTED_DIGIT;
            }
        }
    }

    /// A token the sender chose where a registry names the values (a Reason protocol, an
    /// SDP media type or transport, a codec name): kept when it is one of `registered`
    /// (case-insensitive, as captured), else [`UNREGISTERED_TOKEN`] — any other word there
    /// is free text a sender can put a name into. As captured in `clear` mode.
    fn registered(&self, value: &str, registered: &[&str]) -> String {
        if self.clear() || registered.iter().any(|r| r.eq_ignore_ascii_case(value)) {
            value.to_owned()
        } else {
            UNREGISTERED_TOKEN.to_owned()
        }
    }

    /// A number or user part.
    pub fn number(&self, value: &str) -> String {
        match &self.privacy.mode {
            PrivacyMode::KeyedHash { site_key } => keyed_hash(site_key, &normalise(value)),
            PrivacyMode::KeepLastDigits(n) => {
                let n = (*n).min(MAX_KEEP_DIGITS);
                let digits = value.chars().filter(char::is_ascii_digit).count();
                let keep_from = digits.saturating_sub(usize::from(n));
                let mut seen = 0;
                value
                    .chars()
                    .map(|c| {
                        if c.is_ascii_digit() {
                            seen += 1;
                            if seen <= keep_from {
                                return '*';
                            }
                        } else if c.is_alphanumeric() {
                            // Letters, and digits outside ASCII (full-width, Arabic-Indic):
                            // only ASCII digits are counted and may be kept.
                            return '*';
                        }
                        c
                    })
                    .collect()
            }
            PrivacyMode::Clear => value.to_owned(),
        }
    }

    fn name(&self, value: &str) -> String {
        match &self.privacy.mode {
            PrivacyMode::KeyedHash { site_key } => keyed_hash(site_key, value),
            PrivacyMode::KeepLastDigits(_) => "(redacted)".to_owned(),
            PrivacyMode::Clear => value.to_owned(),
        }
    }

    /// A Call-ID or another identifier: a keyed hash (as captured only in clear mode).
    pub fn identifier(&self, value: &str) -> String {
        if self.clear() {
            return value.to_owned();
        }
        keyed_hash(&self.privacy.identifier_key, value)
    }

    /// The id of a record made from identities (a call's: its Call-ID, invite time and
    /// caller address; a stream's: its addresses, SSRC and start; a queue stay's: the PBX's
    /// call id). Made as an unkeyed SHA-256, with every hashed part but the identity written
    /// in the record beside it, it would let whoever holds the records test guesses of the
    /// Call-ID or of a hashed address offline; so it leaves the box keyed (32 hex
    /// characters of HMAC-SHA256 under the identifier key): as stable and unique as before,
    /// recomputable only with the key. As made only when nothing is pseudonymised.
    fn record_id(&self, id: &str) -> String {
        if self.clear() && matches!(self.privacy.addresses, AddressMode::Keep) {
            return id.to_owned();
        }
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.privacy.identifier_key)
        else {
            // HMAC takes a key of any length; never reached.
            return String::new();
        };
        mac.update(b"teledge record id v1\0");
        mac.update(id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// An `ip:port`, a bare IP or a host name, by the address mode.
    pub fn address(&self, value: &str) -> String {
        let key = &self.privacy.identifier_key;
        match self.privacy.addresses {
            AddressMode::Keep => value.to_owned(),
            AddressMode::Hash => match value.parse::<SocketAddr>() {
                Ok(sa) => format!("{}:{}", keyed_hash(key, &sa.ip().to_string()), sa.port()),
                Err(_) => keyed_hash(key, value.trim_matches(['[', ']'])),
            },
            AddressMode::Truncate => {
                if let Ok(sa) = value.parse::<SocketAddr>() {
                    return SocketAddr::new(truncate(sa.ip()), sa.port()).to_string();
                }
                match value.trim_matches(['[', ']']).parse::<IpAddr>() {
                    Ok(ip) => truncate(ip).to_string(),
                    Err(_) => keyed_hash(key, value),
                }
            }
        }
    }

    /// Pseudonymises the user part of a `sip:`/`sips:` URI or the number of a `tel:` URI,
    /// applies the address mode to an IP host, and drops every parameter and header.
    fn uri(&self, uri: &str) -> String {
        if self.clear() {
            // Addresses are governed by their own setting even in clear mode.
            let hostport = split_host(uri);
            return uri.replacen(hostport, &self.uri_hostport(hostport), 1);
        }
        // Only a registered scheme is one: text before a `:` that is not (a URI written
        // without its scheme, `user@host:port`) is the URI's user and host.
        let (scheme, rest) = match uri.split_once(':') {
            Some((scheme, rest)) if URI_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) => {
                (scheme, rest)
            }
            _ if uri.contains('@') => return self.uri(&format!("sip:{uri}")).split_off(4),
            _ => return self.number(uri.split([';', '?']).next().unwrap_or("")),
        };
        let rest = rest.split('?').next().unwrap_or("");
        if scheme.eq_ignore_ascii_case("tel") {
            let number = rest.split(';').next().unwrap_or("");
            return format!("{scheme}:{}", self.number(number));
        }
        if scheme.eq_ignore_ascii_case("urn") {
            // RFC 5031 service URNs (`urn:service:sos`) name a service, not a person.
            let service = rest.len() > 8
                && rest
                    .get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("service:"))
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphabetic() || matches!(b, b':' | b'.' | b'-'));
            return match service {
                true => format!("{scheme}:{rest}"),
                false => format!("{scheme}:{}", self.number(rest)),
            };
        }
        let (user, hostport) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let hostport = hostport.split(';').next().unwrap_or("");
        let hostport = self.uri_hostport(hostport);
        match user {
            Some(user) => {
                let user = user.split([';', ':']).next().unwrap_or("");
                format!("{scheme}:{}@{hostport}", self.number(user))
            }
            None => format!("{scheme}:{hostport}"),
        }
    }

    /// The `host[:port]` of a URI, by what the host is: an IP (bracketed or not) by the
    /// address mode; a DNS name (labels of letters, digits and `-`, a letter somewhere) kept,
    /// as it names the PBX or the carrier; anything else — digits only (`sip:+4930111222`,
    /// `sip:4711`: a number in the host's place), an escaped `@` (`4930111222%40pbx`), a
    /// name with six digits in a row, stray characters — by the number mode, in every
    /// address mode: it is no address, and a malformed URI's user part ends up there.
    fn uri_hostport(&self, hostport: &str) -> String {
        let (host, port) = split_port(hostport);
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = match port.map(str::parse::<u16>) {
            Some(Ok(port)) => Some(port),
            Some(Err(_)) => return self.number(hostport),
            None => None,
        };
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return match (self.privacy.addresses, port) {
                (AddressMode::Keep, _) => hostport.to_owned(),
                (_, Some(port)) => self.address(&SocketAddr::new(ip, port).to_string()),
                (_, None) => self.address(&ip.to_string()),
            };
        }
        if host == bare && is_dns_name(host) && !carries_a_number(host) {
            return hostport.to_owned();
        }
        let number = self.number(bare);
        match port {
            Some(port) => format!("{number}:{port}"),
            None => number,
        }
    }
}

/// `host` and `port` of a URI's `host[:port]`: a bracketed host is one piece, and text
/// with more than one `:` and no brackets (a bare IPv6 address) has no port.
fn split_port(hostport: &str) -> (&str, Option<&str>) {
    if hostport.starts_with('[') {
        if let Some(end) = hostport.find(']') {
            let (host, rest) = hostport.split_at(end + 1);
            if let Some(port) = rest.strip_prefix(':') {
                return (host, Some(port));
            }
            if rest.is_empty() {
                return (host, None);
            }
        }
        return (hostport, None);
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (hostport, None),
    }
}

/// A DNS name as a URI host writes it: labels of ASCII letters, digits and `-` (not at
/// either end), a trailing dot allowed, and a letter somewhere (all digits is a number).
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().any(|b| b.is_ascii_alphabetic())
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether a host name holds a run of six digits or more: a subscriber or extension number
/// written into it (`4930111222.pbx.example`), not the name of equipment.
fn carries_a_number(host: &str) -> bool {
    host.split(|c: char| !c.is_ascii_digit())
        .any(|run| run.len() >= 6)
}

/// The `host[:port]` of a URI, for the clear-mode address rewrite.
fn split_host(uri: &str) -> &str {
    let rest = uri.split_once(':').map_or(uri, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    rest.split([';', '?']).next().unwrap_or("")
}

/// The last component of a path: directories may name people. A path without one (`/`,
/// `..`) keeps nothing of itself.
fn file_name_only(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

/// IPv4 to its /24, IPv6 to its /48.
fn truncate(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[6..].fill(0);
            IpAddr::from(octets)
        }
    }
}

/// The product token of a User-Agent or Server value: up to the first `/`, space or
/// character outside `[A-Za-z0-9._+-]`, bounded; `None` when empty or digits only (an
/// extension number is not a product).
pub fn product_token(value: &str) -> Option<String> {
    let token: String = value
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
        .take(MAX_PRODUCT_TOKEN)
        .collect();
    let digits_only = token
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    (!token.is_empty() && !digits_only).then_some(token)
}

/// Removes visual separators so `+49 30 1234` and `+49-30-1234` hash alike.
fn normalise(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect()
}

fn keyed_hash(key: &[u8; 32], value: &str) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        // HMAC takes keys of any length; a 32-byte key cannot be refused.
        return "h:invalid-key".to_owned();
    };
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("h:{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed() -> Pseudonymizer {
        Pseudonymizer::new(Privacy::keyed_hash([3; 32]))
    }

    fn with(mode: PrivacyMode, addresses: AddressMode) -> Pseudonymizer {
        Pseudonymizer::new(Privacy::new(mode, addresses, [5; 32]))
    }

    #[test]
    fn keyed_hash_is_stable_and_hides_the_number() {
        let p = hashed();
        let a = p.number("+49 30 1234567");
        assert_eq!(a, p.number("+49-30-1234567"));
        assert!(a.starts_with("h:") && a.len() == 18);
        assert!(!a.contains("1234567"));
        let other = Pseudonymizer::new(Privacy::keyed_hash([4; 32]));
        assert_ne!(
            a,
            other.number("+49 30 1234567"),
            "another site, another pseudonym"
        );
        let uri = p.uri("sip:+49301234567;npdi;rn=+4930999@pbx.example:5060;user=phone?X=1");
        assert_eq!(
            uri,
            format!("sip:{}@pbx.example:5060", p.number("+49301234567"))
        );
        let tel = p.uri("tel:+49301234567;ext=4711;phone-context=x");
        assert_eq!(tel, format!("tel:{}", p.number("+49301234567")));
    }

    #[test]
    fn last_digits_are_bounded_and_clear_is_clear() {
        let p = with(PrivacyMode::KeepLastDigits(3), AddressMode::Keep);
        assert_eq!(p.number("+49301234567"), "+********567");
        assert_eq!(p.name("Alice"), "(redacted)");
        // A configuration cannot get here with more, but the bound holds regardless.
        let wide = with(PrivacyMode::KeepLastDigits(20), AddressMode::Keep);
        assert_eq!(wide.number("+49301234567"), "+*****234567");
        let clear = with(PrivacyMode::Clear, AddressMode::Keep);
        assert_eq!(clear.number("+49301234567"), "+49301234567");
        assert_eq!(clear.identifier("abc@10.0.0.1"), "abc@10.0.0.1");
        // Identifiers are hashed in last-digits mode too.
        assert!(p.identifier("4930123@10.0.0.1").starts_with("h:"));
        // Digits outside ASCII (full-width, Arabic-Indic: a user part a softphone wrote in
        // its locale) were neither digits nor letters here and stayed in clear.
        assert_eq!(p.number("４９３０１２３４"), "********");
        assert_eq!(p.number("٤٩٣٠١٢٣٤"), "********");
    }

    #[test]
    fn product_tokens() {
        assert_eq!(
            product_token("Yealink SIP-T46S 66.85.0.5").as_deref(),
            Some("Yealink")
        );
        assert_eq!(
            product_token("Asterisk PBX 18.0").as_deref(),
            Some("Asterisk")
        );
        assert_eq!(
            product_token("Linphone/5.0 (Alice)").as_deref(),
            Some("Linphone")
        );
        assert_eq!(
            product_token("FPBX-16.0.40(18.9.0)").as_deref(),
            Some("FPBX-16.0.40")
        );
        assert_eq!(
            product_token("4711 Alice"),
            None,
            "an extension is no product"
        );
        assert_eq!(product_token("\"Alice\""), None);
        assert_eq!(
            product_token(&"a".repeat(100)).unwrap().len(),
            MAX_PRODUCT_TOKEN
        );
    }

    proptest::proptest! {
        /// Any header text (the wire decides it) is rewritten without a panic, and in
        /// keyed-hash mode no digit run of the input survives in a URI's user part.
        #[test]
        fn any_text_is_rewritten_without_panic(text in "\\PC{0,80}", digits in "[0-9]{7,12}") {
            for p in [
                hashed(),
                with(PrivacyMode::KeepLastDigits(4), AddressMode::Hash),
                with(PrivacyMode::Clear, AddressMode::Truncate),
            ] {
                let _ = p.uri(&text);
                for scheme in ["sip:", "urn:", "tel:", "urn:service:"] {
                    let _ = p.uri(&format!("{scheme}{text}"));
                }
                let _ = p.address(&text);
                let _ = p.number(&text);
                let _ = product_token(&text);
            }
            let uri = hashed().uri(&format!("sip:{digits};ext={digits}@pbx.example;x={digits}?h={digits}"));
            proptest::prop_assert!(!uri.contains(&digits), "{}", uri);
        }
    }

    #[test]
    fn orphan_stream_summaries_follow_the_address_mode() {
        use crate::record::media::{OrphanSource, OrphanStreamsSummary, ORPHAN_SUMMARY_SCHEMA};
        let mut record = Record::OrphanStreams(Box::new(OrphanStreamsSummary {
            schema: ORPHAN_SUMMARY_SCHEMA,
            record_id: "x".into(),
            interval_start: Default::default(),
            interval_end: Default::default(),
            streams: 3,
            packets: 30,
            lost: 0,
            by_source: vec![OrphanSource {
                src_ip: "198.51.100.23".into(),
                streams: 3,
                packets: 30,
            }],
            other_sources: 0,
        }));
        with(PrivacyMode::Clear, AddressMode::Truncate).apply(&mut record);
        let Record::OrphanStreams(summary) = &record else {
            panic!("{record:?}")
        };
        assert_eq!(summary.by_source[0].src_ip, "198.51.100.0");
        assert_eq!(summary.streams, 3);
    }

    /// Identity-derived ids leave keyed, stable, distinct per site; as made only when
    /// nothing is pseudonymised (an id hashing a hashed address would undo the hash).
    #[test]
    fn record_ids_made_from_identities_are_keyed() {
        let id = "5683aac040b72060668e4a807d6c0d50";
        let p = hashed();
        let keyed = p.record_id(id);
        assert_eq!(keyed.len(), 32);
        assert!(keyed.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(keyed, id);
        assert_eq!(
            keyed,
            p.record_id(id),
            "stable: a resent record keeps its id"
        );
        assert_ne!(keyed, p.record_id("5683aac040b72060668e4a807d6c0d51"));
        let other = Pseudonymizer::new(Privacy::keyed_hash([4; 32]));
        assert_ne!(keyed, other.record_id(id));
        assert_eq!(
            with(PrivacyMode::Clear, AddressMode::Keep).record_id(id),
            id
        );
        assert_ne!(
            with(PrivacyMode::Clear, AddressMode::Hash).record_id(id),
            id
        );
        assert_ne!(
            with(PrivacyMode::KeepLastDigits(4), AddressMode::Keep).record_id(id),
            id
        );
    }

    #[test]
    fn tokens_a_sender_chooses_are_kept_only_when_registered() {
        let p = hashed();
        assert_eq!(p.registered("q.850", REASON_PROTOCOLS), "q.850");
        assert_eq!(p.registered("SIP", REASON_PROTOCOLS), "SIP");
        assert_eq!(p.registered("AliceSmith", REASON_PROTOCOLS), "other");
        assert_eq!(p.registered("telephone-event", CODECS), "telephone-event");
        assert_eq!(p.registered("OPUS", CODECS), "OPUS");
        assert_eq!(p.registered("Bob-Office", CODECS), "other");
        assert_eq!(p.registered("RTP/SAVPF", SDP_PROTOCOLS), "RTP/SAVPF");
        assert_eq!(p.registered("audio", SDP_MEDIA), "audio");
        assert_eq!(p.registered("", SDP_MEDIA), "other");
        let clear = with(PrivacyMode::Clear, AddressMode::Hash);
        assert_eq!(clear.registered("AliceSmith", CODECS), "AliceSmith");
    }

    /// A URI without a user part whose host is a number (`sip:+4930111222`, `sip:4711`, as
    /// some PBXs write a To or a Request-URI) kept the number: only an IP host went through
    /// the address mode, and every other host was taken for a domain name.
    #[test]
    fn a_number_written_as_the_host_of_a_uri_is_pseudonymised() {
        let p = hashed();
        for uri in [
            "sip:+4930111222",
            "sip:4930111222:5060",
            "sips:4711;user=phone",
            "sip:４９３０１１１２２２",
        ] {
            let out = p.uri(uri);
            assert!(
                !out.contains("4930111222") && !out.contains("4711") && !out.contains("４９"),
                "{uri} -> {out}"
            );
            assert!(out.contains("h:"), "{uri} -> {out}");
        }
        // Domain names and IPs are what they were.
        assert_eq!(p.uri("sip:pbx.example.com"), "sip:pbx.example.com");
        assert_eq!(p.uri("sip:192.0.2.1:5060"), "sip:192.0.2.1:5060");
        let digits = with(PrivacyMode::KeepLastDigits(2), AddressMode::Keep);
        assert_eq!(digits.uri("sip:+4930111222"), "sip:+********22");
    }

    /// The text before the first `:` was kept as the scheme whatever it was: a URI written
    /// without one (`<4915112345678@198.51.100.23:5060>`, as broken user agents do) kept
    /// its user and host in clear as a "scheme", and any word could stand there.
    #[test]
    fn only_a_registered_scheme_is_kept() {
        let p = with(
            PrivacyMode::KeyedHash { site_key: [3; 32] },
            AddressMode::Hash,
        );
        for uri in [
            "4915112345678@198.51.100.23:5060",
            "AliceSmith:4915112345678@198.51.100.23",
        ] {
            let out = p.uri(uri);
            assert!(
                !out.contains("4915112345678")
                    && !out.contains("198.51.100.23")
                    && !out.contains("Alice"),
                "{uri} -> {out}"
            );
        }
        assert!(p.uri("SIP:4915112345678@pbx.example").starts_with("SIP:h:"));
        assert!(p
            .uri("sips:4915112345678@pbx.example")
            .starts_with("sips:h:"));
    }

    /// URIs as they come, well-formed or not: a number in the user part, in the host's
    /// place, behind an escaped `@`, after a password, in brackets, in a host name; an
    /// address in brackets with a port. In every mode nothing of the number is left (in
    /// keep-digits mode: nothing but its last digits), and with addresses hashed nothing of
    /// the address. Before the URI host had one rule (2026-12-03), 516 of the 1,701
    /// combinations of the first nine hosts kept the number or the address (keyed hash,
    /// addresses hashed).
    #[test]
    fn no_uri_keeps_a_number_or_a_hashed_address() {
        let schemes = [
            "sip:", "SIP:", "sips:", "tel:", "urn:", "x:", "", "sip:sip:", "tel:+",
        ];
        let users = [
            "4915112345678",
            "+4915112345678",
            "49%31%35112345678",
            "4915112345678;npdi",
            "4915112345678:pw",
            "\"4915112345678\"",
            "",
        ];
        let ats = ["@", "%40", ""];
        let hosts = [
            "198.51.100.23",
            "[2001:db8::4915]",
            "198.51.100.23:5060",
            "pbx.example",
            "4915112345678",
            "[198.51.100.23]:5060",
            "198.51.100.23;transport=tcp",
            "pbx.example?x=4915112345678",
            "198.51.100.23@pbx",
            "4915112345678pbx.example",
        ];
        let modes = [
            (
                PrivacyMode::KeyedHash { site_key: [3; 32] },
                AddressMode::Hash,
                true,
            ),
            (
                PrivacyMode::KeyedHash { site_key: [3; 32] },
                AddressMode::Keep,
                false,
            ),
            (PrivacyMode::KeepLastDigits(4), AddressMode::Truncate, false),
        ];
        let mut leaks = Vec::new();
        for (mode, addresses, address_hidden) in modes {
            let p = with(mode, addresses);
            for s in schemes {
                for u in users {
                    for a in ats {
                        for h in hosts {
                            let uri = format!("{s}{u}{a}{h}");
                            let out = p.uri(&uri);
                            if out.contains("151123")
                                || (address_hidden && out.contains("198.51.100.23"))
                            {
                                leaks.push(format!("{addresses:?}: {uri} -> {out}"));
                            }
                        }
                    }
                }
            }
        }
        assert!(
            leaks.is_empty(),
            "{} leaks:\n{}",
            leaks.len(),
            leaks.join("\n")
        );
        // What carries no identity stays readable.
        let p = with(
            PrivacyMode::KeyedHash { site_key: [3; 32] },
            AddressMode::Keep,
        );
        assert_eq!(p.uri("sip:pbx.example:5060"), "sip:pbx.example:5060");
        assert_eq!(p.uri("urn:service:sos"), "urn:service:sos");
        assert!(p.uri("urn:servicé:4915112345678").starts_with("urn:h:"));
        assert_eq!(
            p.uri("sip:4915112345678@[2001:db8::1]:5060;transport=tcp"),
            format!("sip:{}@[2001:db8::1]:5060", p.number("4915112345678"))
        );
    }

    #[test]
    fn addresses_by_mode() {
        let keep = with(PrivacyMode::Clear, AddressMode::Keep);
        assert_eq!(keep.address("198.51.100.23:5060"), "198.51.100.23:5060");
        let t = with(PrivacyMode::Clear, AddressMode::Truncate);
        assert_eq!(t.address("198.51.100.23:5060"), "198.51.100.0:5060");
        assert_eq!(t.address("198.51.100.23"), "198.51.100.0");
        assert_eq!(
            t.address("[2001:db8:1:2:3:4:5:6]:5060"),
            "[2001:db8:1::]:5060"
        );
        assert_eq!(
            t.uri("sip:alice@198.51.100.23:5070"),
            "sip:alice@198.51.100.0:5070"
        );
        let h = with(PrivacyMode::KeepLastDigits(2), AddressMode::Hash);
        let a = h.address("198.51.100.23:5060");
        assert!(
            a.starts_with("h:") && a.ends_with(":5060") && !a.contains("198"),
            "{a}"
        );
        assert_eq!(
            h.address("198.51.100.23:4000").split(':').nth(1),
            a.split(':').nth(1)
        );
        assert!(h.address("alice-pc.example").starts_with("h:"));
        let uri = h.uri("sip:4930123@[2001:db8::1]:5060;transport=tcp");
        assert!(
            uri.starts_with("sip:*****23@h:") && uri.ends_with(":5060"),
            "{uri}"
        );
    }
}
