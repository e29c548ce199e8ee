//! SIP over a byte stream: one direction of a TCP connection, after reassembly.
//!
//! The stream is classified by what it carries, never by its port: SIP (a request or status
//! line), or an HTTP Upgrade to WebSocket (RFC 7118), after which each WebSocket message is
//! one SIP message; a TURN connection (RFC 8656 over TCP: it opens with a STUN message),
//! whose relayed RTP and RTCP are counted, not measured ([`StreamEvent::TurnRelayed`]);
//! anything else is marked as not SIP and no longer buffered. SIP messages
//! are framed by their headers and Content-Length (RFC 3261 §18.3); CRLF keep-alives between
//! messages (RFC 5626 §3.5.1) are skipped. After a gap, or bytes that do not frame, the
//! framer discards up to the next line that starts a SIP message. Every buffer is bounded:
//! a message being framed by [`MAX_MESSAGE`], an HTTP head by 16 KiB, bytes probed before a
//! first start line by 64 KiB; buffers are released when they empty, and what they hold is
//! reported ([`SipStream::held_bytes`]) so the reassembler can keep all streams within one
//! memory budget.

use crate::decode::sip::{canonical_name, starts_with_conventional_sip, starts_with_sip};
use crate::decode::turn;
use crate::decode::websocket::{self, Opcode};

/// Largest SIP message accepted on a stream (headers and body): the largest a SIP message
/// over UDP can be. Real messages are a few KiB; a larger Content-Length is not waited for.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes examined for a first SIP start line before a stream is declared not SIP.
const MAX_UNSYNCED_PROBE: usize = 64 * 1024;
/// Largest HTTP upgrade header.
const MAX_HTTP_HEAD: usize = 16 * 1024;

/// How a SIP message reached us on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCarrier {
    Tcp,
    WebSocket,
}

/// What the stream produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    /// One complete SIP message (not yet parsed).
    Message(&'a [u8], StreamCarrier),
    /// Bytes were thrown away to find the next message.
    Discarded { bytes: usize, reason: DiscardReason },
    /// A TURN message relaying RTP or RTCP (version 2) on a TURN-over-TCP stream.
    TurnRelayed,
    /// A SIP message whose end the capture's snapshot length cut ([`SipStream::cut`]): the
    /// bytes captured, from its start line (not yet parsed).
    Cut(&'a [u8], StreamCarrier),
}

/// Why bytes were discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardReason {
    /// Bytes before the next SIP start line (after a gap or a malformed message).
    Resync,
    /// A message whose headers or Content-Length exceed [`MAX_MESSAGE`].
    Oversized,
    /// A WebSocket stream that cannot be followed (bad frame, or a gap in it).
    WebSocketLost,
    /// Bytes before the next SIP start line after the capture's snapshot length cut a
    /// segment (the rest of the cut message), or a WebSocket stream the cut ended: the
    /// capture's doing, not the sender's.
    Snaplen,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing seen yet.
    #[default]
    Unknown,
    /// SIP framing; `synced` once a start line has been found at the front of the buffer.
    Sip {
        synced: bool,
        ever_synced: bool,
    },
    /// Waiting for the end of an HTTP request or response that may upgrade to WebSocket.
    Http,
    WebSocket,
    /// TURN over TCP (RFC 8656 §12.5): STUN messages and ChannelData, each padded to 4 bytes.
    Turn,
    /// Not SIP: ignored from now on.
    Ignored,
}

/// Framing state of one stream direction.
#[derive(Debug, Default)]
pub struct SipStream {
    state: State,
    buf: Vec<u8>,
    /// Unmasked payload of the WebSocket message being assembled.
    ws_message: Vec<u8>,
    /// Bytes examined while looking for a first start line.
    probed: usize,
    /// Resynchronising after a snapshot length cut, not after a gap: what is discarded to
    /// find the next start line is said as [`DiscardReason::Snaplen`].
    after_cut: bool,
    /// TURN: bytes still to skip of a message a snapshot length cut, past the segment it
    /// was cut in.
    turn_skip: usize,
}

impl crate::reassembly::tcp::StreamConsumer for SipStream {
    fn wants_more(&self) -> bool {
        !self.is_ignored()
    }

    fn held_bytes(&self) -> usize {
        SipStream::held_bytes(self)
    }
}

/// A STUN message header (RFC 5389 §6): top two bits clear, the magic cookie, a length that
/// is a multiple of 4.
fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= 8
        && bytes[0] >> 6 == 0
        && bytes[3].is_multiple_of(4)
        && bytes[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

/// ChannelData (RFC 8656 §12.4) relaying RTP or RTCP: a channel number (0x4000–0x4FFF), a
/// length that holds an RTCP header at least, and a first relayed byte of version 2
/// (0x80–0xBF). Channel numbers start with the bytes of "ACK", "BYE", "INFO" ..., but a SIP
/// start line's fifth byte is ASCII, never 0x80 or above: this is how a TURN-over-TCP
/// connection the capture joined after its Allocate (no STUN seen) shows itself.
fn is_channel_data_media(bytes: &[u8]) -> bool {
    bytes.len() >= 5
        && (0x40..=0x4F).contains(&bytes[0])
        && u16::from_be_bytes([bytes[2], bytes[3]]) >= 8
        && bytes[4] >> 6 == 2
}

/// The length of the TURN-over-TCP message `head` starts (RFC 8656 §12.5): a STUN message
/// (20 bytes and its attributes) or ChannelData (4 bytes and its data, padded to 4); `None`
/// when neither, or fewer than 4 bytes.
fn turn_message_len(head: &[u8]) -> Option<usize> {
    let head = head.first_chunk::<4>()?;
    let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        0 => Some(20 + length),
        1 => Some((4 + length).next_multiple_of(4)),
        _ => None,
    }
}

/// Buffers larger than this are shrunk when they hold less than a quarter of it.
const KEEP_CAPACITY: usize = 16 * 1024;

/// Releases an empty buffer, and shrinks one mostly empty, so an idle stream holds nothing
/// and a past large message does not keep its memory.
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() {
        *buf = Vec::new();
    } else if buf.capacity() > KEEP_CAPACITY && buf.len() < buf.capacity() / 4 {
        buf.shrink_to(buf.len().max(KEEP_CAPACITY / 4));
    }
}

impl SipStream {
    /// True once the stream was found not to carry SIP.
    pub fn is_ignored(&self) -> bool {
        self.state == State::Ignored
    }

    /// Bytes of memory the stream's buffers hold (their capacity).
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.ws_message.capacity()
    }

    /// Feeds the next bytes of the stream; `after_gap` says bytes before them are missing.
    pub fn push(&mut self, data: &[u8], after_gap: bool, emit: &mut impl FnMut(StreamEvent<'_>)) {
        if after_gap {
            self.after_cut = false;
            match self.state {
                State::Sip { ever_synced, .. } => {
                    self.discard(self.buf.len(), DiscardReason::Resync, emit);
                    self.state = State::Sip {
                        synced: false,
                        ever_synced,
                    };
                }
                State::WebSocket | State::Http => self.lose_websocket(emit),
                // Framing lost: what follows is told afresh, as a connection joined there
                // (ChannelData relaying media, or STUN, carries on as TURN).
                State::Turn => {
                    self.buf.clear();
                    self.turn_skip = 0;
                    self.state = State::Unknown;
                }
                State::Unknown | State::Ignored => {}
            }
        }
        if self.state != State::Ignored {
            self.buf.extend_from_slice(data);
            while self.step(emit) {}
        }
        release(&mut self.buf);
        release(&mut self.ws_message);
    }

    /// Says that the capture's snapshot length cut the stream right after the bytes pushed
    /// last: the `missing` bytes it cut are not seen, and the stream goes on after them. A message being
    /// framed is handed on as cut ([`StreamEvent::Cut`]); the framer then looks for the next
    /// start line, what it discards on the way said as [`DiscardReason::Snaplen`]. A
    /// WebSocket stream cannot be followed past a cut; a TURN stream skips what is left of
    /// the message the cut fell in (its length says how much) and frames on, that message
    /// counted when its first relayed byte made it.
    pub fn cut(&mut self, missing: usize, emit: &mut impl FnMut(StreamEvent<'_>)) {
        match self.state {
            State::Sip {
                synced,
                ever_synced,
            } => {
                let crlf = self.leading_crlf();
                if synced && crlf < self.buf.len() {
                    emit(StreamEvent::Cut(&self.buf[crlf..], StreamCarrier::Tcp));
                    self.buf.clear();
                } else if ever_synced {
                    self.discard(self.buf.len(), DiscardReason::Snaplen, emit);
                } else {
                    // Still looking for a first SIP line: these bytes were never SIP.
                    self.probed += self.buf.len();
                    self.buf.clear();
                }
                self.state = State::Sip {
                    synced: false,
                    ever_synced,
                };
                self.after_cut = true;
            }
            State::WebSocket | State::Http => {
                let lost = self.buf.len() + self.ws_message.len();
                self.buf.clear();
                self.ws_message.clear();
                self.state = State::Ignored;
                if lost > 0 {
                    emit(StreamEvent::Discarded {
                        bytes: lost,
                        reason: DiscardReason::Snaplen,
                    });
                }
            }
            // The message the cut fell in still relayed media when its first relayed byte
            // made it; the rest of it, past the cut segment, is skipped. Cut before its
            // length, it is told afresh (as after a gap).
            State::Turn => {
                let head = self
                    .buf
                    .get(self.turn_skip.min(self.buf.len())..)
                    .unwrap_or(&[]);
                if head
                    .first_chunk::<5>()
                    .is_some_and(|h| h[0] >> 6 == 1 && h[4] >> 6 == 2)
                {
                    emit(StreamEvent::TurnRelayed);
                }
                match turn_message_len(head) {
                    Some(total) => {
                        self.turn_skip = total.saturating_sub(head.len() + missing);
                    }
                    None => {
                        self.turn_skip = 0;
                        self.state = State::Unknown;
                    }
                }
                self.buf.clear();
            }
            // Fewer than five bytes seen: nothing to tell SIP by yet.
            State::Unknown => self.buf.clear(),
            State::Ignored => {}
        }
        release(&mut self.buf);
        release(&mut self.ws_message);
    }

    /// Makes one unit of progress; false when more bytes are needed.
    fn step(&mut self, emit: &mut impl FnMut(StreamEvent<'_>)) -> bool {
        match self.state {
            State::Ignored => {
                self.buf.clear();
                false
            }
            State::Unknown => {
                let crlf = self.leading_crlf();
                let rest = &self.buf[crlf..];
                // Five bytes tell SIP from HTTP; a first byte below 0x40 (no SIP or HTTP
                // start) may be STUN, told by its first eight.
                if rest.len() < 5 || (rest[0] >> 6 == 0 && rest.len() < 8) {
                    return false;
                }
                self.state = if rest.starts_with(b"GET ") || rest.starts_with(b"HTTP/") {
                    State::Http
                } else if is_stun(rest) || is_channel_data_media(rest) {
                    // A TURN client's connection opens with STUN; one the capture joined
                    // after its Allocate, with ChannelData relaying media.
                    State::Turn
                } else {
                    State::Sip {
                        synced: false,
                        ever_synced: false,
                    }
                };
                true
            }
            State::Http => self.step_http(),
            State::WebSocket => self.step_websocket(emit),
            State::Turn => self.step_turn(emit),
            State::Sip {
                synced,
                ever_synced,
            } => self.step_sip(synced, ever_synced, emit),
        }
    }

    /// One TURN message: a relayed RTP or RTCP packet is told, the rest skipped. Anything
    /// that is neither STUN nor ChannelData ends the following.
    fn step_turn(&mut self, emit: &mut impl FnMut(StreamEvent<'_>)) -> bool {
        if self.turn_skip > 0 {
            let skip = self.turn_skip.min(self.buf.len());
            self.buf.drain(..skip);
            self.turn_skip -= skip;
            if self.turn_skip > 0 {
                return false;
            }
        }
        let Some(head) = self.buf.first_chunk::<4>() else {
            return false;
        };
        let Some(total) = turn_message_len(head) else {
            self.buf.clear();
            self.state = State::Ignored;
            return false;
        };
        let Some(message) = self.buf.get(..total) else {
            return false;
        };
        // RTP and RTCP are version 2: the top two bits of their first byte are 10.
        if turn::relayed(message).is_some_and(|inner| inner.first().is_some_and(|b| b >> 6 == 2)) {
            emit(StreamEvent::TurnRelayed);
        }
        self.buf.drain(..total);
        true
    }

    fn step_http(&mut self) -> bool {
        let Some(end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > MAX_HTTP_HEAD {
                self.state = State::Ignored;
                return true;
            }
            return false;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        let first_line = head.lines().next().unwrap_or("");
        let upgrades = head
            .lines()
            .any(|l| l.starts_with("upgrade:") && l.contains("websocket"));
        let is_101 = first_line.starts_with("http/") && first_line.contains(" 101");
        let is_request = first_line.starts_with("get ");
        self.state = if upgrades && (is_101 || is_request) {
            State::WebSocket
        } else {
            State::Ignored
        };
        self.buf.drain(..end + 4);
        true
    }

    fn step_websocket(&mut self, emit: &mut impl FnMut(StreamEvent<'_>)) -> bool {
        let header = match websocket::frame_header(&self.buf, MAX_MESSAGE as u64) {
            Ok(Some(h)) => h,
            Ok(None) => return false,
            Err(_) => {
                self.lose_websocket(emit);
                return false;
            }
        };
        let total = header.header_len + header.payload_len as usize;
        if self.buf.len() < total {
            return false;
        }
        let payload = &self.buf[header.header_len..total];
        match header.opcode {
            Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                if header.opcode != Opcode::Continuation {
                    self.ws_message.clear();
                }
                if self.ws_message.len() + payload.len() > MAX_MESSAGE {
                    self.ws_message.clear();
                    emit(StreamEvent::Discarded {
                        bytes: total,
                        reason: DiscardReason::Oversized,
                    });
                } else {
                    websocket::unmask_into(payload, header.mask, &mut self.ws_message);
                    if header.fin {
                        if starts_with_sip(&self.ws_message) {
                            emit(StreamEvent::Message(
                                &self.ws_message,
                                StreamCarrier::WebSocket,
                            ));
                        }
                        self.ws_message.clear();
                    }
                }
            }
            // Ping, pong and close carry no SIP.
            _ => {}
        }
        self.buf.drain(..total);
        true
    }

    fn lose_websocket(&mut self, emit: &mut impl FnMut(StreamEvent<'_>)) {
        let lost = self.buf.len() + self.ws_message.len();
        self.buf.clear();
        self.ws_message.clear();
        self.state = State::Ignored;
        emit(StreamEvent::Discarded {
            bytes: lost,
            reason: DiscardReason::WebSocketLost,
        });
    }

    fn step_sip(
        &mut self,
        synced: bool,
        ever_synced: bool,
        emit: &mut impl FnMut(StreamEvent<'_>),
    ) -> bool {
        if !synced {
            return self.resync(ever_synced, emit);
        }
        let crlf = self.leading_crlf();
        if crlf > 0 {
            // Keep-alives: not data, not an error.
            self.buf.drain(..crlf);
        }
        if self.buf.is_empty() {
            return false;
        }
        let Some((head_len, body_start)) = head_end(&self.buf) else {
            if self.buf.len() > MAX_MESSAGE {
                self.discard(self.buf.len(), DiscardReason::Oversized, emit);
                self.state = State::Sip {
                    synced: false,
                    ever_synced,
                };
            } else if memchr::memchr(b'\n', &self.buf).is_some() && !starts_with_sip(&self.buf) {
                // A complete first line that is not a start line: out of sync.
                self.state = State::Sip {
                    synced: false,
                    ever_synced,
                };
                return true;
            }
            return false;
        };
        if !starts_with_sip(&self.buf) {
            self.state = State::Sip {
                synced: false,
                ever_synced,
            };
            return true;
        }
        let content_length = content_length(&self.buf[..head_len]);
        let total = match content_length {
            Some(len) if body_start.saturating_add(len) <= MAX_MESSAGE => body_start + len,
            Some(_) => {
                // Drop the headers and look for the next start line.
                self.discard(body_start, DiscardReason::Oversized, emit);
                self.state = State::Sip {
                    synced: false,
                    ever_synced,
                };
                return true;
            }
            // RFC 3261 §18.3 requires Content-Length on streams; without it the body is empty.
            None => body_start,
        };
        if self.buf.len() < total {
            return false;
        }
        emit(StreamEvent::Message(&self.buf[..total], StreamCarrier::Tcp));
        self.buf.drain(..total);
        true
    }

    /// Discards bytes up to the next line that starts a SIP message (spelt as convention
    /// spells methods: [`starts_with_conventional_sip`], since these bytes follow a gap).
    fn resync(&mut self, ever_synced: bool, emit: &mut impl FnMut(StreamEvent<'_>)) -> bool {
        let crlf = self.leading_crlf();
        if starts_with_conventional_sip(&self.buf[crlf..])
            && memchr::memchr(b'\n', &self.buf[crlf..]).is_some()
        {
            self.buf.drain(..crlf);
            self.after_cut = false;
            self.state = State::Sip {
                synced: true,
                ever_synced: true,
            };
            return true;
        }
        let found = find_start_line(&self.buf);
        match found {
            Some(start) => {
                self.discard(start, self.resync_reason(), emit);
                self.after_cut = false;
                self.state = State::Sip {
                    synced: true,
                    ever_synced: true,
                };
                true
            }
            None => {
                // Keep only the last, possibly partial, line for the next attempt.
                let keep_from = memchr::memrchr(b'\n', &self.buf).map_or(0, |nl| nl + 1);
                let keep_from = if self.buf.len() - keep_from > MAX_MESSAGE {
                    self.buf.len()
                } else {
                    keep_from
                };
                self.probed += keep_from;
                if ever_synced {
                    self.discard(keep_from, self.resync_reason(), emit);
                } else {
                    // Still looking for a first SIP line: these bytes were never SIP (telnet,
                    // TLS, HTTP...), so dropping them is not a loss worth reporting.
                    self.buf.drain(..keep_from);
                }
                if !ever_synced && self.probed + self.buf.len() > MAX_UNSYNCED_PROBE {
                    self.state = State::Ignored;
                    self.buf.clear();
                }
                false
            }
        }
    }

    /// Why bytes skipped to find the next start line are lost.
    fn resync_reason(&self) -> DiscardReason {
        if self.after_cut {
            DiscardReason::Snaplen
        } else {
            DiscardReason::Resync
        }
    }

    fn discard(
        &mut self,
        len: usize,
        reason: DiscardReason,
        emit: &mut impl FnMut(StreamEvent<'_>),
    ) {
        let len = len.min(self.buf.len());
        if len > 0 {
            self.buf.drain(..len);
            emit(StreamEvent::Discarded { bytes: len, reason });
        }
    }

    fn leading_crlf(&self) -> usize {
        self.buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count()
    }
}

/// Finds the first complete SIP start line in `buf`: at a line start, or glued to the end of
/// a body whose beginning was lost (`...helloINVITE sip:...`), where only a known method or
/// the status-line prefix can tell where it begins.
fn find_start_line(buf: &[u8]) -> Option<usize> {
    const METHODS: [&[u8]; 14] = [
        b"INVITE ",
        b"ACK ",
        b"BYE ",
        b"CANCEL ",
        b"REGISTER ",
        b"OPTIONS ",
        b"PRACK ",
        b"UPDATE ",
        b"INFO ",
        b"REFER ",
        b"MESSAGE ",
        b"SUBSCRIBE ",
        b"NOTIFY ",
        b"PUBLISH ",
    ];
    let complete = |at: usize| {
        let rest = &buf[at..];
        memchr::memchr(b'\n', rest).is_some() && starts_with_conventional_sip(rest)
    };
    let at_line_start = memchr::memchr_iter(b'\n', buf)
        .map(|nl| nl + 1)
        .find(|&at| complete(at));
    let status_line = memchr::memmem::find_iter(buf, b"SIP/2.0 ").find(|&at| complete(at));
    let request_line = METHODS
        .iter()
        .filter_map(|m| memchr::memmem::find_iter(buf, m).find(|&at| complete(at)))
        .min();
    [at_line_start, status_line, request_line]
        .into_iter()
        .flatten()
        .min()
}

/// Where the header section ends: (length of the head, offset of the body).
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|p| (p, p + 4));
    let lf = memchr::memmem::find(buf, b"\n\n").map(|p| (p, p + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The Content-Length of a header section (full or compact name, any case).
fn content_length(head: &[u8]) -> Option<usize> {
    head.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let colon = memchr::memchr(b':', line)?;
        let name = std::str::from_utf8(&line[..colon]).ok()?.trim();
        if !canonical_name(name).eq_ignore_ascii_case("Content-Length") {
            return None;
        }
        std::str::from_utf8(&line[colon + 1..])
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(call: &str, body: &str) -> String {
        format!(
            "MESSAGE sip:b@h SIP/2.0\r\nCall-ID: {call}\r\nl: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn collect(stream: &mut SipStream, chunks: &[(&[u8], bool)]) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        let mut discarded = 0;
        for (chunk, gap) in chunks {
            stream.push(chunk, *gap, &mut |e| match e {
                StreamEvent::Message(m, _) => out.push(String::from_utf8_lossy(m).into_owned()),
                StreamEvent::Discarded { bytes, .. } => discarded += bytes,
                StreamEvent::TurnRelayed => out.push("turn".into()),
                StreamEvent::Cut(m, _) => out.push(format!("cut:{}", m.len())),
            });
        }
        (out, discarded)
    }

    /// A segment cut by the capture's snapshot length (campaign 2026-12-03c): the message it
    /// cut is handed on as cut, and the rest of it in the next segment is discarded as the
    /// cut's (`Snaplen`), not as a resynchronisation after a sender's gap (`Resync`, which
    /// the cut used to be announced as: `tcp-resync`).
    #[test]
    fn a_cut_hands_on_the_cut_message_and_blames_the_capture() {
        let a = msg("a", &"x".repeat(300));
        let b = msg("b", "");
        let c = msg("c", "z");
        let mut s = SipStream::default();
        let events = std::cell::RefCell::new(Vec::new());
        let mut record = |e: StreamEvent<'_>| {
            events.borrow_mut().push(match e {
                StreamEvent::Message(m, _) => format!("msg:{}", &String::from_utf8_lossy(m)[..7]),
                StreamEvent::Cut(m, _) => format!("cut:{}", m.len()),
                StreamEvent::Discarded { bytes, reason } => format!("{reason:?}:{bytes}"),
                StreamEvent::TurnRelayed => "turn".into(),
            })
        };
        // `b` whole, then `a` cut 60 bytes in; the next segment carries the end of `a`
        // (past the cut, 40 bytes of it captured) and `c`.
        let first = format!("{b}{}", &a[..60]);
        s.push(first.as_bytes(), false, &mut record);
        s.cut(200, &mut record);
        let tail = &a[a.len() - 40..];
        s.push(format!("{tail}{c}").as_bytes(), false, &mut record);
        assert_eq!(
            events.take(),
            ["msg:MESSAGE", "cut:60", "Snaplen:40", "msg:MESSAGE"],
        );
        // A real gap afterwards is the sender's again.
        s.push(&a.as_bytes()[30..], true, &mut record);
        s.push(b.as_bytes(), false, &mut record);
        assert_eq!(events.take(), ["Resync:17", "Resync:300", "msg:MESSAGE"]);
    }

    /// TURN over TCP (RFC 8656 §12.5), as a WebRTC client behind a firewall uses it: the
    /// relayed RTP and RTCP are told (counted, not measured), whatever the segments; other
    /// STUN messages are skipped; a stream that opens with bytes ChannelData could start
    /// with but a SIP method too (`ACK`, 0x41 0x43) stays SIP. Such a stream used to be
    /// ignored silently.
    #[test]
    fn turn_over_tcp_relayed_media_is_told() {
        let cookie = [0x21, 0x12, 0xA4, 0x42];
        let stun = |kind: u16, attrs: &[u8]| {
            let mut m = kind.to_be_bytes().to_vec();
            m.extend((attrs.len() as u16).to_be_bytes());
            m.extend(cookie);
            m.extend([5; 12]);
            m.extend(attrs);
            m
        };
        let rtp = [0x80u8, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xFF];
        let channel = |data: &[u8]| {
            let mut m = vec![0x40, 0x01, 0, data.len() as u8];
            m.extend(data);
            m.resize(m.len().next_multiple_of(4), 0);
            m
        };
        let mut data_attr = vec![0x00, 0x13, 0, rtp.len() as u8];
        data_attr.extend(rtp);
        data_attr.resize(data_attr.len().next_multiple_of(4), 0);
        let mut stream = stun(0x0003, &[]); // Allocate request
        stream.extend(channel(&rtp));
        stream.extend(stun(0x0016, &data_attr)); // Send indication
        stream.extend(channel(b"not media"));
        stream.extend(channel(&rtp));
        for step in [stream.len(), 7, 1] {
            let mut s = SipStream::default();
            let chunks: Vec<(&[u8], bool)> = stream.chunks(step).map(|c| (c, false)).collect();
            let (out, discarded) = collect(&mut s, &chunks);
            assert_eq!(out, ["turn", "turn", "turn"], "step {step}");
            assert_eq!(discarded, 0);
            assert!(!s.is_ignored());
        }
        // Joined after the Allocate (campaign 2026-12-03c: a TURN-over-TCP capture that
        // starts mid-connection, 1,957 relayed RTP packets TShark lists, used to be ignored
        // uncounted): ChannelData carrying media tells it too.
        let mut joined = channel(&rtp);
        joined.extend(channel(&rtp));
        let mut s = SipStream::default();
        s.push(&joined, true, &mut |_| {});
        let (out, _) = collect(&mut s, &[(&channel(&rtp), false)]);
        assert_eq!(out, ["turn"]);
        // A cut in a TURN stream (campaign 2026-12-03c, `editcap -s 300` of a TURN-over-TCP
        // call: 3,959 relayed packets, none counted once its Allocate answer was cut): the
        // message it cut counts, and what follows is told afresh.
        // The segment was cut 6 bytes into a 20-byte message and ends 4 bytes later: the next
        // segment starts with the last 10 bytes of that message, skipped, then frames on.
        let message = channel(&rtp);
        let mut s = SipStream::default();
        let mut cut_stream = stun(0x0003, &[]);
        cut_stream.extend(&message[..6]);
        let (out, _) = collect(&mut s, &[(&cut_stream, false)]);
        assert!(out.is_empty());
        let mut told = Vec::new();
        s.cut(4, &mut |e| told.push(e == StreamEvent::TurnRelayed));
        assert_eq!(told, [true]);
        let mut next = message[10..].to_vec();
        next.extend(&message);
        let (out, _) = collect(&mut s, &[(&next, false), (&message, false)]);
        assert_eq!(out, ["turn", "turn"]);
        let ack = msg("x", "").replacen("MESSAGE", "ACK", 1);
        let mut s = SipStream::default();
        let (out, _) = collect(&mut s, &[(ack.as_bytes(), false)]);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("ACK"));
    }

    #[test]
    fn frames_several_per_segment_and_one_over_many() {
        let a = msg("a", "hello");
        let b = msg("b", "");
        let c = msg("c", "xyz");
        let all = format!("{a}\r\n\r\n{b}{c}");
        let bytes = all.as_bytes();
        let mut s = SipStream::default();
        let (out, discarded) = collect(
            &mut s,
            &[
                (&bytes[..10], false),
                (&bytes[10..a.len() + 30], false),
                (&bytes[a.len() + 30..], false),
            ],
        );
        assert_eq!(out, vec![a, b, c]);
        assert_eq!(discarded, 0);
    }

    #[test]
    fn resyncs_after_gap() {
        let a = msg("a", "hello");
        let b = msg("b", "");
        let mut s = SipStream::default();
        let tail_of_a = &a.as_bytes()[20..];
        let (out, discarded) = collect(&mut s, &[(tail_of_a, true), (b.as_bytes(), false)]);
        assert_eq!(out, vec![b]);
        assert!(discarded > 0);
    }

    #[test]
    fn non_sip_stream_is_ignored() {
        let mut s = SipStream::default();
        let noise = vec![0x17u8; MAX_UNSYNCED_PROBE + 10];
        collect(&mut s, &[(&noise, false), (&noise, false)]);
        assert!(s.is_ignored());
    }

    #[test]
    fn buffers_are_released_once_messages_complete() {
        let a = msg("a", &"x".repeat(40_000));
        let mut s = SipStream::default();
        let (head, tail) = a.as_bytes().split_at(30_000);
        collect(&mut s, &[(head, false)]);
        // A partial message is held, and reported for the budget.
        assert!(s.held_bytes() >= 30_000, "{}", s.held_bytes());
        let (out, _) = collect(&mut s, &[(tail, false)]);
        assert_eq!(out.len(), 1);
        assert_eq!(s.held_bytes(), 0);
        // A message claiming more than the cap is not waited for.
        let claim = "INVITE sip:b@h SIP/2.0\r\nCall-ID: big\r\nContent-Length: 70000\r\n\r\n";
        let (out, discarded) = collect(&mut s, &[(claim.as_bytes(), false)]);
        assert!(out.is_empty());
        assert_eq!(discarded, claim.len());
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn websocket_upgrade_then_masked_frames() {
        let sip = msg("ws", "");
        let mut stream =
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_vec();
        let key = [1u8, 2, 3, 4];
        let (first, second) = sip.as_bytes().split_at(10);
        for (fin_op, part) in [(0x01u8, first), (0x80u8, second)] {
            stream.push(fin_op);
            stream.push(0x80 | 126);
            stream.extend_from_slice(&(part.len() as u16).to_be_bytes());
            stream.extend_from_slice(&key);
            stream.extend(part.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        let mut s = SipStream::default();
        let (out, _) = collect(&mut s, &[(&stream, false)]);
        assert_eq!(out, vec![sip]);
    }
}
