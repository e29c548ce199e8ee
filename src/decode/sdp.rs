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

/// Summarises an SDP body.
pub fn summarize(body: &[u8]) -> Result<SdpSummary, SdpError> {
    let mut reader = std::io::Cursor::new(body);
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
        .map(|m| {
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
            MediaSection {
                media: m.media_name.media.clone(),
                address,
                port,
                protocol: m.media_name.protos.join("/"),
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
