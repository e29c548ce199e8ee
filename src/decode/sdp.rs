//! What an SDP body (RFC 4566/8866) says about media: addresses, ports, codecs, direction.
//!
//! Parsing is done by the webrtc-rs `sdp` crate; this module reduces its model to the facts a
//! call record and the media correlation need, resolving session-level defaults (`c=`,
//! direction attributes) into each media section.

/// Why an SDP body could not be summarised.
#[derive(Debug, thiserror::Error)]
#[error("malformed SDP")]
pub struct SdpError(#[source] sdp::Error);

/// Media direction (RFC 3264 §5.1). `sendrecv` when nothing is said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// A payload format of a media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub payload_type: u8,
    /// Encoding name from `a=rtpmap`, or the static name of RFC 3551 for static payload types.
    pub name: Option<String>,
    pub clock_rate: Option<u32>,
}

/// One `m=` section with session-level defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// `audio`, `video`, `image` (T.38), ...
    pub media: String,
    /// Connection address (media-level `c=` overrides session-level).
    pub address: Option<String>,
    pub port: u16,
    /// Transport protocol, e.g. `RTP/AVP`, `RTP/SAVP`, `udptl`.
    pub protocol: String,
    /// RTCP port: `a=rtcp` (RFC 3605), the RTP port with `a=rtcp-mux`, else port + 1.
    pub rtcp_port: Option<u16>,
    pub rtcp_mux: bool,
    pub direction: Direction,
    pub codecs: Vec<Codec>,
}

impl MediaSection {
    /// True when the media runs over TCP (`TCP/RTP/AVP` of RFC 4571, `TCP/TLS/RTP/SAVP`,
    /// `TCP/DTLS/RTP/SAVPF`, ...): RTP framed in a byte stream, which teledge does not
    /// measure (nor does TShark 4.0 unless told by hand, with Decode As: README "How it is
    /// checked").
    pub fn is_over_tcp(&self) -> bool {
        self.protocol
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("TCP/"))
    }

    /// True for RTP framed in a TCP stream (RFC 4571): over TCP, with `RTP` in its protocol.
    pub fn is_rtp_over_tcp(&self) -> bool {
        self.is_over_tcp()
            && self
                .protocol
                .split('/')
                .any(|p| p.eq_ignore_ascii_case("RTP"))
    }

    /// True when this section puts the stream on hold: `sendonly`/`inactive`, or the
    /// RFC 2543 style connection address `0.0.0.0`.
    pub fn is_hold(&self) -> bool {
        matches!(self.direction, Direction::SendOnly | Direction::Inactive)
            || self.address.as_deref() == Some("0.0.0.0")
    }
}

/// The media facts of one SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpSummary {
    pub media: Vec<MediaSection>,
}

impl SdpSummary {
    /// True when every active media section is on hold.
    pub fn is_hold(&self) -> bool {
        let mut active = self.media.iter().filter(|m| m.port != 0).peekable();
        active.peek().is_some() && active.all(MediaSection::is_hold)
    }
}

/// Media and transport protocol parts the `sdp` crate (0.17) accepts in an `m=` line. It
/// refuses a whole SDP with any other: RTP over TCP (`TCP/RTP/AVP`, RFC 4571), MSRP
/// (`TCP/MSRP`), BFCP (`UDP/BFCP`, `TCP/TLS/BFCP`), a protocol in lower case. Such a line is
/// handed to it with stand-ins and its own words put back ([`summarize`]): an offer with an
/// MSRP or BFCP line beside its audio used to lose its audio endpoints with it (TShark reads
/// every line).
const CRATE_MEDIA: [&str; 6] = ["audio", "video", "text", "application", "message", "image"];
const CRATE_PROTOS: [&str; 10] = [
    "UDP", "RTP", "AVP", "SAVP", "SAVPF", "TLS", "DTLS", "SCTP", "AVPF", "udptl",
];

/// The (media, protocol) words replaced in each `m=` line, in order (`None`: none).
type Replaced = Vec<Option<(String, String)>>;

/// `body` with every `m=` line the `sdp` crate would refuse for its media or protocol
/// rewritten with stand-ins, and the words replaced, by `m=` line (`None`: left as it was).
/// Borrowed when no line needs it (almost always).
fn with_stand_ins(body: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Replaced) {
    let mut replaced = Vec::new();
    // Almost every SDP needs none: a walk over its `m=` lines says so without copying it.
    let m_lines = body
        .starts_with(b"m=")
        .then_some(0)
        .into_iter()
        .chain(memchr::memmem::find_iter(body, b"\nm=").map(|at| at + 1))
        .map(|start| {
            let line = &body[start + 2..];
            &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())]
        });
    if !m_lines.into_iter().any(refused_by_the_crate) {
        return (std::borrow::Cow::Borrowed(body), replaced);
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return (std::borrow::Cow::Borrowed(body), replaced);
    };
    let mut out = String::new();
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let Some(value) = line.strip_prefix("m=") else {
            out.push_str(line);
            continue;
        };
        let fields: Vec<&str> = value.split_ascii_whitespace().collect();
        let refused = fields.len() >= 4
            && (!CRATE_MEDIA.contains(&fields[0])
                || fields[2].split('/').any(|p| !CRATE_PROTOS.contains(&p)));
        if !refused {
            replaced.push(None);
            out.push_str(line);
            continue;
        }
        changed = true;
        replaced.push(Some((fields[0].to_owned(), fields[2].to_owned())));
        let ending = &line[line.trim_end_matches(['\r', '\n']).len()..];
        out.push_str("m=application ");
        out.push_str(fields[1]);
        out.push_str(" RTP");
        for format in &fields[3..] {
            out.push(' ');
            out.push_str(format);
        }
        out.push_str(ending);
    }
    if !changed {
        return (std::borrow::Cow::Borrowed(body), Vec::new());
    }
    (std::borrow::Cow::Owned(out.into_bytes()), replaced)
}

/// Whether the `sdp` crate refuses an `m=` line (its value, after `m=`) for its media or its
/// protocol: the same test [`with_stand_ins`] makes on the line's words.
fn refused_by_the_crate(value: &[u8]) -> bool {
    let mut fields = value
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let (Some(media), Some(_port), Some(protocol), Some(_format)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    !CRATE_MEDIA.iter().any(|m| m.as_bytes() == media)
        || protocol
            .split(|&b| b == b'/')
            .any(|p| !CRATE_PROTOS.iter().any(|c| c.as_bytes() == p))
}

/// Summarises an SDP body.
pub fn summarize(body: &[u8]) -> Result<SdpSummary, SdpError> {
    let (body, replaced) = with_stand_ins(body);
    let mut reader = std::io::Cursor::new(&body[..]);
    let session = sdp::SessionDescription::unmarshal(&mut reader).map_err(SdpError)?;
    let session_address = session
        .connection_information
        .as_ref()
        .and_then(|c| c.address.as_ref())
        .map(|a| a.address.clone());
    let session_direction = direction_of(session.attributes.iter().map(|a| a.key.as_str()));

    let media = session
        .media_descriptions
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let port = u16::try_from(m.media_name.port.value).unwrap_or(0);
            let address = m
                .connection_information
                .as_ref()
                .and_then(|c| c.address.as_ref())
                .map(|a| a.address.clone())
                .or_else(|| session_address.clone());
            let rtcp_mux = m.has_attribute("rtcp-mux");
            let explicit_rtcp = m
                .attribute("rtcp")
                .flatten()
                .and_then(|v| v.split_whitespace().next())
                .and_then(|p| p.parse::<u16>().ok());
            let rtcp_port = explicit_rtcp.or(if port == 0 {
                None
            } else if rtcp_mux {
                Some(port)
            } else {
                port.checked_add(1)
            });
            let direction = direction_of(m.attributes.iter().map(|a| a.key.as_str()))
                .or(session_direction)
                .unwrap_or(Direction::SendRecv);
            let codecs = m
                .media_name
                .formats
                .iter()
                .filter_map(|f| f.parse::<u8>().ok())
                .map(|pt| codec_for(m, pt))
                .collect();
            let (media, protocol) = match replaced.get(i) {
                Some(Some(words)) => words.clone(),
                _ => (m.media_name.media.clone(), m.media_name.protos.join("/")),
            };
            MediaSection {
                media,
                address,
                port,
                protocol,
                rtcp_port,
                rtcp_mux,
                direction,
                codecs,
            }
        })
        .collect();
    Ok(SdpSummary { media })
}

fn direction_of<'a>(mut keys: impl Iterator<Item = &'a str>) -> Option<Direction> {
    keys.find_map(|k| match k {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    })
}

fn codec_for(media: &sdp::MediaDescription, payload_type: u8) -> Codec {
    let rtpmap = media.attributes.iter().find_map(|a| {
        if a.key != "rtpmap" {
            return None;
        }
        let value = a.value.as_deref()?;
        let (pt, encoding) = value.split_once(char::is_whitespace)?;
        (pt.trim().parse::<u8>().ok()? == payload_type).then_some(encoding.trim())
    });
    if let Some(encoding) = rtpmap {
        let mut parts = encoding.split('/');
        let name = parts.next().map(str::to_owned);
        let clock_rate = parts.next().and_then(|r| r.parse().ok());
        return Codec {
            payload_type,
            name,
            clock_rate,
        };
    }
    let (name, clock_rate) = static_payload_type(payload_type).unzip();
    Codec {
        payload_type,
        name: name.map(str::to_owned),
        clock_rate,
    }
}

/// Static RTP payload types of RFC 3551 §6 (audio and video), with PT 1 and 2 (assigned
/// before RFC 3551 reserved them) and PT 19 (comfort noise before RFC 3389): the same set
/// TShark knows a clock for, so jitter is computed where TShark computes it.
pub fn static_payload_type(payload_type: u8) -> Option<(&'static str, u32)> {
    Some(match payload_type {
        0 => ("PCMU", 8000),
        1 => ("1016", 8000),
        2 => ("G721", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        5 => ("DVI4", 8000),
        6 => ("DVI4", 16000),
        7 => ("LPC", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        10 => ("L16", 44100),
        11 => ("L16", 44100),
        12 => ("QCELP", 8000),
        13 => ("CN", 8000),
        14 => ("MPA", 90000),
        15 => ("G728", 8000),
        16 => ("DVI4", 11025),
        17 => ("DVI4", 22050),
        18 => ("G729", 8000),
        19 => ("CN", 8000),
        25 => ("CelB", 90000),
        26 => ("JPEG", 90000),
        28 => ("nv", 90000),
        31 => ("H261", 90000),
        32 => ("MPV", 90000),
        33 => ("MP2T", 90000),
        34 => ("H263", 90000),
        _ => return None,
    })
}

/// The SDP as a call record writes it (`teledge.call/1`, `media.offer`/`media.answer`).
impl From<&SdpSummary> for crate::record::Sdp {
    fn from(sdp: &SdpSummary) -> Self {
        use crate::record::{SdpCodec, SdpDirection, SdpMedia};
        crate::record::Sdp {
            media: sdp
                .media
                .iter()
                .map(|m| SdpMedia {
                    media: m.media.clone(),
                    address: m.address.clone(),
                    port: m.port,
                    protocol: m.protocol.clone(),
                    rtcp_port: m.rtcp_port,
                    rtcp_mux: m.rtcp_mux,
                    direction: match m.direction {
                        Direction::SendRecv => SdpDirection::SendRecv,
                        Direction::SendOnly => SdpDirection::SendOnly,
                        Direction::RecvOnly => SdpDirection::RecvOnly,
                        Direction::Inactive => SdpDirection::Inactive,
                    },
                    codecs: m
                        .codecs
                        .iter()
                        .map(|c| SdpCodec {
                            payload_type: c.payload_type,
                            name: c.name.clone(),
                            clock_rate: c.clock_rate,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n\
m=video 0 RTP/AVP 96\r\n";

    /// RFC 4571/4145 media over TCP is announced by its protocol; teledge learns no UDP
    /// endpoint from it (correlation::media::announced) and counts it as unmeasured.
    #[test]
    fn media_over_tcp_is_recognised() {
        let body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 9 TCP/RTP/AVP 0\r\na=setup:active\r\na=connection:new\r\n\
m=audio 4000 RTP/AVP 0\r\nm=audio 5000 tcp/tls/rtp/savp 0\r\nm=image 6000 udptl t38\r\n\
m=message 7000 TCP/MSRP *\r\nm=application 8000 UDP/BFCP *\r\nm=data 9000 RTP/AVP 0\r\n";
        // The `sdp` crate refused all of this for its first line: the audio at 4000 was lost.
        let sdp = summarize(body).unwrap();
        let tcp: Vec<bool> = sdp.media.iter().map(MediaSection::is_over_tcp).collect();
        assert_eq!(tcp, [true, false, true, false, true, false, false]);
        let rtp: Vec<bool> = sdp
            .media
            .iter()
            .map(MediaSection::is_rtp_over_tcp)
            .collect();
        assert_eq!(rtp, [true, false, true, false, false, false, false]);
        let words: Vec<(&str, u16, &str)> = sdp
            .media
            .iter()
            .map(|m| (m.media.as_str(), m.port, m.protocol.as_str()))
            .collect();
        assert_eq!(
            words,
            [
                ("audio", 9, "TCP/RTP/AVP"),
                ("audio", 4000, "RTP/AVP"),
                ("audio", 5000, "tcp/tls/rtp/savp"),
                ("image", 6000, "udptl"),
                ("message", 7000, "TCP/MSRP"),
                ("application", 8000, "UDP/BFCP"),
                ("data", 9000, "RTP/AVP"),
            ]
        );
        assert_eq!(sdp.media[1].codecs[0].name.as_deref(), Some("PCMU"));
        assert_eq!(sdp.media[1].address.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn applies_session_defaults_and_static_codecs() {
        let s = summarize(OFFER.as_bytes()).unwrap();
        let audio = &s.media[0];
        assert_eq!(audio.address.as_deref(), Some("10.0.0.1"));
        assert_eq!(audio.port, 4000);
        assert_eq!(audio.rtcp_port, Some(4001));
        assert_eq!(audio.direction, Direction::SendOnly);
        assert_eq!(audio.codecs[0].name.as_deref(), Some("PCMA"));
        assert_eq!(audio.codecs[2].name.as_deref(), Some("telephone-event"));
        assert_eq!(audio.codecs[2].clock_rate, Some(8000));
        // The disabled video stream (port 0) does not count against hold.
        assert!(s.is_hold());
    }

    #[test]
    fn malformed_sdp_is_an_error() {
        assert!(summarize(b"garbage").is_err());
    }
}
