//! SIP message parser (RFC 3261 §7, §20, §25): bytes in, borrowed typed message out.
//!
//! Zero-copy: every string in a [`SipMessage`] borrows from the input buffer. Tolerant the way
//! real captures need: header names are case-insensitive and may use their compact forms
//! (`i`, `f`, `t`, `v`, `m`, `l`, `c`, ...), values may be folded over several lines, several
//! values may share one header line (`Via: a, b`) or be spread over repeated headers, bare
//! `\n` line ends are accepted, and an unknown header is simply kept for [`SipMessage::headers`].
//! No I/O and no panics on any input; the fuzz target `sip_message` holds it to that.
//!
//! What must outlive its buffer — a message the sharded correlator holds in its reorder
//! window — is kept as an [`OwnedMessage`]: the message's bytes and the ranges of them its
//! fields cover, made from the parse without parsing again, and viewed back as the same
//! [`SipMessage`] by slicing ([`OwnedMessage::view`]; equal to the parse on any input,
//! which a property test and the `sip_message` fuzz target check).

use std::fmt;

/// Why a buffer is not a usable SIP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// The first line is neither a request line nor a status line.
    #[error("not a SIP start line")]
    NotSip,
    /// The header section is not valid UTF-8.
    #[error("SIP header section is not valid UTF-8")]
    NotUtf8,
    /// A header line has no colon.
    #[error("malformed SIP header line")]
    MalformedHeader,
    /// A header that every request and response must carry is absent or unreadable.
    #[error("missing or malformed {0} header")]
    MissingHeader(&'static str),
}

/// A SIP request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Prack,
    Update,
    Info,
    Refer,
    Message,
    Subscribe,
    Notify,
    Publish,
    /// Any other extension method, as written.
    Other(&'a str),
}

impl<'a> Method<'a> {
    /// Parses a method token. Methods are case-sensitive (RFC 3261 §7.1).
    pub fn from_token(token: &'a str) -> Method<'a> {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "PRACK" => Method::Prack,
            "UPDATE" => Method::Update,
            "INFO" => Method::Info,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other),
        }
    }

    /// A known method, which holds no text, for any lifetime; or the token of another one.
    fn known(self) -> Result<Method<'static>, &'a str> {
        Ok(match self {
            Method::Invite => Method::Invite,
            Method::Ack => Method::Ack,
            Method::Bye => Method::Bye,
            Method::Cancel => Method::Cancel,
            Method::Register => Method::Register,
            Method::Options => Method::Options,
            Method::Prack => Method::Prack,
            Method::Update => Method::Update,
            Method::Info => Method::Info,
            Method::Refer => Method::Refer,
            Method::Message => Method::Message,
            Method::Subscribe => Method::Subscribe,
            Method::Notify => Method::Notify,
            Method::Publish => Method::Publish,
            Method::Other(token) => return Err(token),
        })
    }

    /// The method as written on the wire.
    pub fn as_str(&self) -> &'a str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: Method<'a>, uri: &'a str },
    Response { status: u16, reason: &'a str },
}

/// `CSeq: 4711 INVITE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub number: u32,
    pub method: Method<'a>,
}

/// A name-addr or addr-spec header value: `"Alice" <sip:alice@host>;tag=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameAddr<'a> {
    /// The display name without quotes, if any.
    pub display_name: Option<&'a str>,
    /// The URI as written, without angle brackets.
    pub uri: &'a str,
    /// The user part of a `sip:`/`sips:` URI, or the number of a `tel:` URI.
    pub user: Option<&'a str>,
    /// The host part (with port, if written) of a `sip:`/`sips:` URI.
    pub host: Option<&'a str>,
    /// The `tag` header parameter (From/To).
    pub tag: Option<&'a str>,
}

/// One value of a `Reason` header (RFC 3326): `Q.850;cause=16;text="Normal call clearing"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason<'a> {
    /// `SIP`, `Q.850`, or another protocol token.
    pub protocol: &'a str,
    pub cause: Option<u16>,
    pub text: Option<&'a str>,
}

/// One header line (after unfolding, the value may still contain line breaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// A parsed SIP message. All fields borrow from the buffer given to [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage<'a> {
    pub start: StartLine<'a>,
    pub call_id: &'a str,
    pub cseq: CSeq<'a>,
    pub from: NameAddr<'a>,
    pub to: NameAddr<'a>,
    /// The `branch` of the topmost Via: the transaction id of RFC 3261 §17.
    pub via_branch: Option<&'a str>,
    /// The transport of the topmost Via (`UDP`, `TCP`, `TLS`, `WS`, `WSS`, ...).
    pub via_transport: Option<&'a str>,
    pub contact: Option<NameAddr<'a>>,
    pub user_agent: Option<&'a str>,
    pub server: Option<&'a str>,
    pub asserted_identity: Option<NameAddr<'a>>,
    /// The first (most recent) Diversion entry, which names the diverting party.
    pub diversion: Option<NameAddr<'a>>,
    /// A B2BUA leg-linking id: `X-CID`, `X-Call-ID` or `X-Orig-Call-ID`.
    pub linked_call_id: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub content_length: Option<usize>,
    pub body: &'a [u8],
    /// True when Content-Length promised more body than the buffer holds.
    pub body_truncated: bool,
    /// The whole message as given to [`parse`] (what the HEP relay sends on, byte for byte).
    pub raw: &'a [u8],
    headers: Vec<Header<'a>>,
}

impl<'a> SipMessage<'a> {
    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<Method<'a>> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    /// Every header in order, as written.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers
    }

    /// The values of every header with this name (full or compact form, any case).
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        let wanted = canonical_name(name);
        self.headers
            .iter()
            .filter(move |h| canonical_name(h.name).eq_ignore_ascii_case(wanted))
            .map(|h| h.value)
    }

    /// Every value of the `Reason` headers.
    pub fn reasons(&self) -> impl Iterator<Item = Reason<'a>> + '_ {
        self.header_values("Reason")
            .flat_map(split_list)
            .filter_map(parse_reason)
    }

    /// The SDP of the message: the body itself, or the `application/sdp` part of a multipart body.
    pub fn sdp(&self) -> Option<&'a [u8]> {
        let content_type = self.content_type?;
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if media_type.eq_ignore_ascii_case("application/sdp") {
            return (!self.body.is_empty()).then_some(self.body);
        }
        let is_multipart = media_type
            .as_bytes()
            .get(..10)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"multipart/"));
        if is_multipart {
            let boundary = param(content_type, "boundary")?;
            return multipart_part(self.body, boundary.trim_matches('"'), "application/sdp");
        }
        None
    }
}

/// A parsed message that owns its bytes: what waits to be applied later (the sharded
/// correlator's reorder window) keeps this rather than the bytes alone, so the message is
/// parsed once. It holds the message's bytes and, for every string and byte slice of the
/// [`SipMessage`] it was made from, the range it covers in them; [`OwnedMessage::view`] gives
/// that [`SipMessage`] back (equal field for field, `raw` and every header included) by
/// slicing, without parsing again. No field borrows from the struct itself (its offsets are
/// plain numbers), so it moves freely between threads and needs no `unsafe`.
#[derive(Debug, Clone)]
pub struct OwnedMessage {
    /// The message (`raw`), then any text a field held from outside it (none from [`parse`],
    /// whose fields all borrow from the message; kept so that any `SipMessage` is owned whole).
    bytes: Box<[u8]>,
    raw_len: u32,
    /// The end of the text the fields cut from the message's head: `bytes[..text_end]` is
    /// checked as UTF-8 once by [`OwnedMessage::view`], each string then sliced from it.
    text_end: u32,
    start: OwnedStart,
    call_id: Span,
    cseq_number: u32,
    cseq_method: OwnedMethod,
    from: OwnedNameAddr,
    to: OwnedNameAddr,
    via_branch: Span,
    via_transport: Span,
    /// [`Span::NONE`] as its `uri`: absent.
    contact: OwnedNameAddr,
    user_agent: Span,
    server: Span,
    asserted_identity: OwnedNameAddr,
    diversion: OwnedNameAddr,
    linked_call_id: Span,
    content_type: Span,
    content_length: Option<usize>,
    body: Span,
    body_truncated: bool,
    headers: Box<[(Span, Span)]>,
}

/// A range of [`OwnedMessage::bytes`], or none ([`Span::NONE`]) where the field is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    const NONE: Span = Span {
        start: u32::MAX,
        end: u32::MAX,
    };
    const EMPTY: Span = Span { start: 0, end: 0 };

    fn is_none(self) -> bool {
        self == Span::NONE
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

#[derive(Debug, Clone, Copy)]
enum OwnedStart {
    Request { method: OwnedMethod, uri: Span },
    Response { status: u16, reason: Span },
}

/// A method: one of the known ones (which hold no text), or another one's token.
#[derive(Debug, Clone, Copy)]
enum OwnedMethod {
    Known(Method<'static>),
    Other(Span),
}

#[derive(Debug, Clone, Copy)]
struct OwnedNameAddr {
    display_name: Span,
    uri: Span,
    user: Span,
    host: Span,
    tag: Span,
}

impl OwnedNameAddr {
    const NONE: OwnedNameAddr = OwnedNameAddr {
        display_name: Span::NONE,
        uri: Span::NONE,
        user: Span::NONE,
        host: Span::NONE,
        tag: Span::NONE,
    };
}

/// Turns a message's slices into spans of the owned bytes.
struct Spans<'m> {
    raw: &'m [u8],
    bytes: Vec<u8>,
    text_end: usize,
}

impl Spans<'_> {
    /// The span of `slice`: its place in the message, or (not from [`parse`]) a copy after it.
    fn of(&mut self, slice: &[u8]) -> Span {
        if slice.is_empty() {
            return Span::EMPTY;
        }
        // Pointer arithmetic on addresses only (nothing is dereferenced): where the slice
        // starts within the message, if it does.
        let offset = (slice.as_ptr() as usize).wrapping_sub(self.raw.as_ptr() as usize);
        let (start, end) = if offset < self.raw.len() && slice.len() <= self.raw.len() - offset {
            (offset, offset + slice.len())
        } else {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(slice);
            (start, self.bytes.len())
        };
        // An offset beyond `u32` is cut short here, and the message then refused whole
        // (`OwnedMessage::new` checks the length of all the bytes).
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX - 1),
            end: u32::try_from(end).unwrap_or(u32::MAX - 1),
        }
    }

    fn text(&mut self, s: &str) -> Span {
        let span = self.of(s.as_bytes());
        self.text_end = self.text_end.max(span.end as usize);
        span
    }

    fn opt(&mut self, s: Option<&str>) -> Span {
        s.map_or(Span::NONE, |s| self.text(s))
    }

    fn method(&mut self, m: Method<'_>) -> OwnedMethod {
        match m.known() {
            Ok(known) => OwnedMethod::Known(known),
            Err(token) => OwnedMethod::Other(self.text(token)),
        }
    }

    fn name_addr(&mut self, a: &NameAddr<'_>) -> OwnedNameAddr {
        OwnedNameAddr {
            display_name: self.opt(a.display_name),
            uri: self.text(a.uri),
            user: self.opt(a.user),
            host: self.opt(a.host),
            tag: self.opt(a.tag),
        }
    }

    fn opt_name_addr(&mut self, a: &Option<NameAddr<'_>>) -> OwnedNameAddr {
        a.as_ref()
            .map_or(OwnedNameAddr::NONE, |a| self.name_addr(a))
    }
}

impl OwnedMessage {
    /// The owned form of a message: its bytes copied once, its fields as ranges of them.
    /// `None` only for a message of 4 GiB or more (its offsets would not fit; [`parse`] is
    /// given datagrams and frames of at most 64 KiB).
    pub fn new(msg: &SipMessage<'_>) -> Option<OwnedMessage> {
        // Every field, so that a field added to `SipMessage` cannot be forgotten here.
        let SipMessage {
            start,
            call_id,
            cseq,
            from,
            to,
            via_branch,
            via_transport,
            contact,
            user_agent,
            server,
            asserted_identity,
            diversion,
            linked_call_id,
            content_type,
            content_length,
            body,
            body_truncated,
            raw,
            headers,
        } = msg;
        let mut s = Spans {
            raw,
            bytes: raw.to_vec(),
            text_end: 0,
        };
        let start = match *start {
            StartLine::Request { method, uri } => OwnedStart::Request {
                method: s.method(method),
                uri: s.text(uri),
            },
            StartLine::Response { status, reason } => OwnedStart::Response {
                status,
                reason: s.text(reason),
            },
        };
        let owned = OwnedMessage {
            start,
            call_id: s.text(call_id),
            cseq_number: cseq.number,
            cseq_method: s.method(cseq.method),
            from: s.name_addr(from),
            to: s.name_addr(to),
            via_branch: s.opt(*via_branch),
            via_transport: s.opt(*via_transport),
            contact: s.opt_name_addr(contact),
            user_agent: s.opt(*user_agent),
            server: s.opt(*server),
            asserted_identity: s.opt_name_addr(asserted_identity),
            diversion: s.opt_name_addr(diversion),
            linked_call_id: s.opt(*linked_call_id),
            content_type: s.opt(*content_type),
            content_length: *content_length,
            body: s.of(body),
            body_truncated: *body_truncated,
            headers: headers
                .iter()
                .map(|h| (s.text(h.name), s.text(h.value)))
                .collect(),
            raw_len: raw.len() as u32,
            text_end: s.text_end as u32,
            bytes: s.bytes.into_boxed_slice(),
        };
        // Every offset fits (none was cut short to fit) when all the bytes do.
        (owned.bytes.len() < (u32::MAX - 1) as usize).then_some(owned)
    }

    /// The message, as [`parse`] gave it: equal to it field for field.
    pub fn view(&self) -> SipMessage<'_> {
        let bytes = &self.bytes[..];
        // The fields' text was UTF-8 when they were made (whole, for a head that is text,
        // as every real one is): one check of it, then every string a slice of it. Should
        // that prefix not be text (a head with bytes that are not UTF-8, whose fields are
        // the pieces that are), each piece is checked alone.
        let text = bytes
            .get(..self.text_end as usize)
            .and_then(|t| std::str::from_utf8(t).ok());
        let s = |span: Span| -> &str {
            let piece = match text {
                Some(text) => text.get(span.range()),
                None => bytes
                    .get(span.range())
                    .and_then(|b| std::str::from_utf8(b).ok()),
            };
            // Always found: every span was cut from a `&str` of these bytes.
            piece.unwrap_or_default()
        };
        let opt = |span: Span| (!span.is_none()).then(|| s(span));
        let method = |m: OwnedMethod| match m {
            OwnedMethod::Known(known) => known,
            OwnedMethod::Other(token) => Method::Other(s(token)),
        };
        let name_addr = |a: OwnedNameAddr| NameAddr {
            display_name: opt(a.display_name),
            uri: s(a.uri),
            user: opt(a.user),
            host: opt(a.host),
            tag: opt(a.tag),
        };
        let opt_name_addr = |a: OwnedNameAddr| (!a.uri.is_none()).then(|| name_addr(a));
        SipMessage {
            start: match self.start {
                OwnedStart::Request { method: m, uri } => StartLine::Request {
                    method: method(m),
                    uri: s(uri),
                },
                OwnedStart::Response { status, reason } => StartLine::Response {
                    status,
                    reason: s(reason),
                },
            },
            call_id: s(self.call_id),
            cseq: CSeq {
                number: self.cseq_number,
                method: method(self.cseq_method),
            },
            from: name_addr(self.from),
            to: name_addr(self.to),
            via_branch: opt(self.via_branch),
            via_transport: opt(self.via_transport),
            contact: opt_name_addr(self.contact),
            user_agent: opt(self.user_agent),
            server: opt(self.server),
            asserted_identity: opt_name_addr(self.asserted_identity),
            diversion: opt_name_addr(self.diversion),
            linked_call_id: opt(self.linked_call_id),
            content_type: opt(self.content_type),
            content_length: self.content_length,
            body: bytes.get(self.body.range()).unwrap_or_default(),
            body_truncated: self.body_truncated,
            raw: bytes.get(..self.raw_len as usize).unwrap_or_default(),
            headers: self
                .headers
                .iter()
                .map(|&(name, value)| Header {
                    name: s(name),
                    value: s(value),
                })
                .collect(),
        }
    }

    /// The message's own bytes ([`SipMessage::raw`]).
    pub fn raw(&self) -> &[u8] {
        self.bytes.get(..self.raw_len as usize).unwrap_or_default()
    }

    /// Bytes this holds, itself and what it points to (what a bound on held messages counts).
    pub fn held_bytes(&self) -> usize {
        std::mem::size_of::<OwnedMessage>()
            + self.bytes.len()
            + std::mem::size_of_val::<[(Span, Span)]>(&self.headers)
    }
}

/// True when `data` starts with a SIP request or status line. Used to recognise SIP by content.
pub fn starts_with_sip(data: &[u8]) -> bool {
    // Every method is a token and "SIP/2.0" starts with a letter: a one-byte test that turns
    // away RTP and other binary payloads before any scanning.
    if !data.first().copied().is_some_and(is_token_byte) {
        return false;
    }
    let line_end = memchr::memchr(b'\n', data).unwrap_or(data.len());
    let line = trim_cr(&data[..line_end]);
    std::str::from_utf8(line)
        .ok()
        .and_then(parse_start_line)
        .is_some()
}

/// Parses one complete SIP message. The body is cut at Content-Length when that is smaller
/// than what follows the headers (a datagram may carry padding).
///
/// ```
/// use teledge::decode::sip::{parse, Method};
///
/// let raw = b"BYE sip:bob@pbx SIP/2.0\r\nf: <sip:alice@pbx>;tag=a1\r\nt: <sip:bob@pbx>;tag=b2\r\n\
///             i: call-1\r\nCSeq: 2 BYE\r\nReason: Q.850;cause=16\r\n\r\n";
/// let msg = parse(raw).unwrap();
/// assert_eq!(msg.method(), Some(Method::Bye));
/// assert_eq!(msg.from.tag, Some("a1"));
/// assert_eq!(msg.reasons().next().unwrap().cause, Some(16));
/// ```
pub fn parse(data: &[u8]) -> Result<SipMessage<'_>, SipError> {
    let (head, body_start) = split_head(data);
    // No blank line and no line end at the very end: the message was cut inside its head.
    let unterminated_head =
        body_start == data.len() && head.len() == data.len() && !data.ends_with(b"\n");

    // One UTF-8 check of the whole head when it is text (every real message): the lines
    // and headers are then cut from it at ASCII bytes (line ends, colons), which are always
    // character boundaries. A head with bytes that are not UTF-8 is checked piece by piece.
    let text = std::str::from_utf8(head).ok();
    let mut lines = LineSpans::new(head);
    let (first_start, first_end) = lines.next().ok_or(SipError::NotSip)?;
    let first_line = match text {
        Some(text) => &text[first_start..first_end],
        None => {
            std::str::from_utf8(&head[first_start..first_end]).map_err(|_| SipError::NotUtf8)?
        }
    };
    let start = parse_start_line(first_line).ok_or(SipError::NotSip)?;

    let mut headers: Vec<Header<'_>> = Vec::with_capacity(16);
    // Byte range of the header being built, so a folded continuation can extend it.
    let mut current: Option<(usize, usize, usize)> = None; // (name_start, colon, value_end)
    for (line_start, line_end) in lines {
        let line = &head[line_start..line_end];
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // RFC 3261 §7.3.1: a line starting with whitespace continues the previous header.
            match current.as_mut() {
                Some(cur) => cur.2 = line_end,
                None => return Err(SipError::MalformedHeader),
            }
            continue;
        }
        if let Some(done) = current.take() {
            headers.extend(make_header(head, text, done));
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            // A message cut short (a snap length, a datagram truncated on the way) ends in
            // the middle of a header name: with no blank line and no line end after it, that
            // last fragment is what was cut, not a malformed header. TShark reads the rest.
            if unterminated_head && line_end == head.len() {
                break;
            }
            return Err(SipError::MalformedHeader);
        };
        current = Some((line_start, line_start + colon, line_end));
    }
    if let Some(done) = current {
        headers.extend(make_header(head, text, done));
    }

    let mut msg = SipMessage {
        start,
        call_id: "",
        cseq: CSeq {
            number: 0,
            method: Method::Other(""),
        },
        from: NameAddr::default(),
        to: NameAddr::default(),
        via_branch: None,
        via_transport: None,
        contact: None,
        user_agent: None,
        server: None,
        asserted_identity: None,
        diversion: None,
        linked_call_id: None,
        content_type: None,
        content_length: None,
        body: &[],
        body_truncated: false,
        raw: data,
        headers: Vec::new(),
    };
    let (mut have_call_id, mut have_cseq, mut have_from, mut have_to, mut have_via) =
        (false, false, false, false, false);

    for h in &headers {
        let Some(known) = Known::of(h.name) else {
            continue;
        };
        let value = h.value; // trimmed by make_header
        match known {
            Known::CallId if !have_call_id => {
                msg.call_id = value;
                have_call_id = !value.is_empty();
            }
            Known::CSeq if !have_cseq => {
                msg.cseq = parse_cseq(value).ok_or(SipError::MissingHeader("CSeq"))?;
                have_cseq = true;
            }
            Known::From if !have_from => {
                msg.from = parse_name_addr(value).ok_or(SipError::MissingHeader("From"))?;
                have_from = true;
            }
            Known::To if !have_to => {
                msg.to = parse_name_addr(value).ok_or(SipError::MissingHeader("To"))?;
                have_to = true;
            }
            Known::Via if !have_via => {
                if let Some(top) = split_list(value).next() {
                    msg.via_branch = param(top, "branch");
                    msg.via_transport = top
                        .split_whitespace()
                        .next()
                        .and_then(|proto| proto.rsplit('/').next());
                }
                have_via = true;
            }
            Known::Contact if msg.contact.is_none() => {
                msg.contact = split_list(value).next().and_then(parse_name_addr);
            }
            Known::UserAgent if msg.user_agent.is_none() => msg.user_agent = Some(value),
            Known::Server if msg.server.is_none() => msg.server = Some(value),
            Known::AssertedIdentity if msg.asserted_identity.is_none() => {
                msg.asserted_identity = split_list(value).next().and_then(parse_name_addr);
            }
            Known::Diversion if msg.diversion.is_none() => {
                msg.diversion = split_list(value).next().and_then(parse_name_addr);
            }
            Known::LinkedCallId if msg.linked_call_id.is_none() => {
                msg.linked_call_id = Some(value);
            }
            Known::ContentType if msg.content_type.is_none() => msg.content_type = Some(value),
            Known::ContentLength if msg.content_length.is_none() => {
                msg.content_length = value.parse().ok();
            }
            _ => {}
        }
    }
    if !have_call_id {
        return Err(SipError::MissingHeader("Call-ID"));
    }
    if !have_cseq {
        return Err(SipError::MissingHeader("CSeq"));
    }
    if !have_from {
        return Err(SipError::MissingHeader("From"));
    }
    if !have_to {
        return Err(SipError::MissingHeader("To"));
    }

    let available = data.get(body_start..).unwrap_or(&[]);
    match msg.content_length {
        Some(len) if len <= available.len() => msg.body = &available[..len],
        Some(_) => {
            msg.body = available;
            msg.body_truncated = true;
        }
        None => msg.body = available,
    }
    msg.headers = headers;
    Ok(msg)
}

/// The headers [`parse`] reads into [`SipMessage`]'s fields.
#[derive(Clone, Copy)]
enum Known {
    CallId,
    CSeq,
    From,
    To,
    Via,
    Contact,
    UserAgent,
    Server,
    AssertedIdentity,
    Diversion,
    /// `X-CID`, `X-Call-ID`, `X-Orig-Call-ID`.
    LinkedCallId,
    ContentType,
    ContentLength,
}

impl Known {
    /// The header a name (full or compact form, any case) stands for. Chosen by length and
    /// first letter before any comparison: most headers of a message are none of these.
    fn of(name: &str) -> Option<Known> {
        let name = canonical_name(name);
        let is = |full: &str| name.eq_ignore_ascii_case(full);
        let first = name.as_bytes().first()?.to_ascii_lowercase();
        Some(match (name.len(), first) {
            (7, b'c') if is("Call-ID") => Known::CallId,
            (7, b'c') if is("Contact") => Known::Contact,
            (4, b'c') if is("CSeq") => Known::CSeq,
            (4, b'f') if is("From") => Known::From,
            (2, b't') if is("To") => Known::To,
            (3, b'v') if is("Via") => Known::Via,
            (10, b'u') if is("User-Agent") => Known::UserAgent,
            (6, b's') if is("Server") => Known::Server,
            (19, b'p') if is("P-Asserted-Identity") => Known::AssertedIdentity,
            (9, b'd') if is("Diversion") => Known::Diversion,
            (5, b'x') if is("X-CID") => Known::LinkedCallId,
            (9, b'x') if is("X-Call-ID") => Known::LinkedCallId,
            (14, b'x') if is("X-Orig-Call-ID") => Known::LinkedCallId,
            (12, b'c') if is("Content-Type") => Known::ContentType,
            (14, b'c') if is("Content-Length") => Known::ContentLength,
            _ => return None,
        })
    }
}

/// Maps a compact header name (RFC 3261 §7.3.3 and later RFCs) to its full form.
pub fn canonical_name(name: &str) -> &str {
    if name.len() != 1 {
        return name;
    }
    match name.as_bytes()[0].to_ascii_lowercase() {
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'e' => "Content-Encoding",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'f' => "From",
        b's' => "Subject",
        b'k' => "Supported",
        b't' => "To",
        b'v' => "Via",
        b'o' => "Event",
        b'r' => "Refer-To",
        b'b' => "Referred-By",
        b'x' => "Session-Expires",
        b'u' => "Allow-Events",
        b'a' => "Accept-Contact",
        b'j' => "Reject-Contact",
        b'd' => "Request-Disposition",
        b'y' => "Identity",
        b'n' => "Identity-Info",
        _ => name,
    }
}

/// Splits a comma-separated header value, ignoring commas inside quotes and angle brackets.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || loop {
        let s = rest?;
        let (mut in_quotes, mut in_angle, mut escaped) = (false, false, false);
        let mut cut = None;
        // Bytes rather than characters: every delimiter is ASCII, and no byte of a multi-byte
        // UTF-8 character is (an escaped one is skipped by its first byte, and its others
        // match nothing), so the cuts are the same.
        for (i, &c) in s.as_bytes().iter().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match c {
                b'\\' if in_quotes => escaped = true,
                b'"' => in_quotes = !in_quotes,
                b'<' if !in_quotes => in_angle = true,
                b'>' if !in_quotes => in_angle = false,
                b',' if !in_quotes && !in_angle => {
                    cut = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let item = match cut {
            Some(i) => {
                rest = Some(&s[i + 1..]);
                &s[..i]
            }
            None => {
                rest = None;
                s
            }
        };
        let item = trim(item);
        if !item.is_empty() {
            return Some(item);
        }
    })
}

/// Parses a name-addr (`"Name" <uri>;params`, `Name <uri>`) or an addr-spec (`uri;params`).
pub fn parse_name_addr(value: &str) -> Option<NameAddr<'_>> {
    let value = trim(value);
    let (display_name, after_display) = if let Some(quoted) = value.strip_prefix('"') {
        let end = closing_quote(quoted)?;
        (Some(&quoted[..end]), trim_start(&quoted[end + 1..]))
    } else {
        match find_byte(value, b'<') {
            Some(lt) => {
                let name = trim(&value[..lt]);
                ((!name.is_empty()).then_some(name), &value[lt..])
            }
            None => (None, value),
        }
    };
    let (uri, params) = if let Some(inner) = after_display.strip_prefix('<') {
        let gt = find_byte(inner, b'>')?;
        (trim(&inner[..gt]), &inner[gt + 1..])
    } else {
        // addr-spec form: parameters after the URI belong to the header (RFC 3261 §20.10).
        match find_byte(after_display, b';') {
            Some(semi) => (trim(&after_display[..semi]), &after_display[semi..]),
            None => (trim(after_display), ""),
        }
    };
    if uri.is_empty() {
        return None;
    }
    let (user, host) = split_uri(uri);
    Some(NameAddr {
        display_name: display_name.filter(|d| !d.is_empty()),
        uri,
        user,
        host,
        tag: param(params, "tag"),
    })
}

/// Returns the value of `;name=value` in a parameter list (case-insensitive name), unquoted
/// quotes kept as written.
pub fn param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    split_byte(params, b';').skip(1).find_map(|p| {
        let (key, value) = split_once_byte(p, b'=').unwrap_or((p, ""));
        trim(key)
            .eq_ignore_ascii_case(name)
            .then(|| trim(value))
            .filter(|v| !v.is_empty())
    })
}

fn closing_quote(s: &str) -> Option<usize> {
    // By bytes, as in `split_list`: the same index.
    let mut escaped = false;
    for (i, &c) in s.as_bytes().iter().enumerate() {
        match c {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits `sip:user@host:port;params` into user and host; `tel:+123;phone-context=x` into number.
fn split_uri(uri: &str) -> (Option<&str>, Option<&str>) {
    let Some((scheme, rest)) = split_once_byte(uri, b':') else {
        return (None, None);
    };
    if scheme.eq_ignore_ascii_case("tel") {
        let number = trim(before(rest, b';'));
        return ((!number.is_empty()).then_some(number), None);
    }
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return (None, None);
    }
    let rest = before(rest, b'?');
    let (user, hostport) = match rest.bytes().rposition(|b| b == b'@') {
        Some(at) => {
            // User parameters (`sip:+1234;npdi@host`) are not part of the number.
            let user = before(&rest[..at], b';');
            let user = before(user, b':'); // drop a password
            ((!user.is_empty()).then_some(user), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let host = trim(before(hostport, b';'));
    (user, (!host.is_empty()).then_some(host))
}

fn parse_cseq(value: &str) -> Option<CSeq<'_>> {
    let mut parts = value.split_whitespace();
    let number = parts.next()?.parse().ok()?;
    let method = Method::from_token(parts.next()?);
    Some(CSeq { number, method })
}

fn parse_reason(value: &str) -> Option<Reason<'_>> {
    let protocol = value.split(';').next()?.trim();
    if protocol.is_empty() {
        return None;
    }
    Some(Reason {
        protocol,
        cause: param(value, "cause").and_then(|c| c.parse().ok()),
        text: param(value, "text").map(|t| t.trim_matches('"')),
    })
}

/// [`starts_with_sip`] with methods as convention writes them (upper-case letters, `-`,
/// `_`): for a start line searched for *inside* a byte stream — after a gap, a cut, or a
/// capture that joined mid-stream — where a lower-case token is far more likely the end of a
/// lost body glued to the next method (`...helloINVITE sip:`) than a method of its own. At a
/// message boundary (a datagram, the message after a complete one) any token is a method, as
/// TShark reads it.
pub fn starts_with_conventional_sip(data: &[u8]) -> bool {
    if !starts_with_sip(data) {
        return false;
    }
    if data.starts_with(b"SIP/2.0 ") {
        return true;
    }
    let method_end = memchr::memchr(b' ', data).unwrap_or(0);
    data[..method_end]
        .iter()
        .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_')
}

/// A byte of an RFC 3261 token (§25.1): alphanumeric or one of `-.!%*_+`'~`.
fn is_token_byte(b: u8) -> bool {
    // A match, not `b"-.!%*_+`'~".contains(&b)`: that is a `memchr` call on every UDP
    // datagram's first byte (60 instructions an RTP packet on the offline path).
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
}

fn parse_start_line(line: &str) -> Option<StartLine<'_>> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let rest = rest.trim_start();
        let code = rest.get(..3)?;
        if !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let after = &rest[3..];
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        let status: u16 = code.parse().ok()?;
        if !(100..=699).contains(&status) {
            return None;
        }
        return Some(StartLine::Response {
            status,
            reason: after.trim(),
        });
    }
    let mut parts = split_byte(line, b' ');
    let method = parts.next()?;
    let uri = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || version != "SIP/2.0" || uri.is_empty() || !uri.contains(':') {
        return None;
    }
    // A token (RFC 3261 §25.1): methods are upper-case by convention only, and TShark takes
    // any token for one (the PROTOS test suite sends `aaaaaaaaa sip:... SIP/2.0` requests; a
    // lower-case method went unseen). The URI with its colon and the version tell SIP from
    // another text protocol.
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return None;
    }
    Some(StartLine::Request {
        method: Method::from_token(method),
        uri,
    })
}

/// Builds a header from its byte range. Real PBXs put binary garbage into header values (one
/// in the ERSPAN sample appends it to a To-tag); the value is cut where it stops being UTF-8,
/// as Wireshark shows it, rather than failing the whole message. A header whose name is not
/// text is skipped.
fn make_header<'a>(
    head: &'a [u8],
    text: Option<&'a str>,
    (name_start, colon, value_end): (usize, usize, usize),
) -> Option<Header<'a>> {
    if let Some(text) = text {
        // The head is text: the same cuts, without checking each piece again.
        return Some(Header {
            name: trim(&text[name_start..colon]),
            value: trim(&text[colon + 1..value_end]),
        });
    }
    Some(Header {
        name: trim(std::str::from_utf8(&head[name_start..colon]).ok()?),
        value: trim(utf8_prefix(&head[colon + 1..value_end])),
    })
}

/// `str::trim`, with ASCII white space taken off byte by byte first: `str::trim` decodes
/// characters from each end, and header text is almost always ASCII. When what is left
/// starts or ends with a byte that is not ASCII (perhaps more white space: U+00A0, U+3000,
/// ...), `str::trim` finishes the job, so the result is always exactly `str::trim`'s.
fn trim(s: &str) -> &str {
    trim_end(trim_start(s))
}

/// `str::trim_start`, ASCII first (see [`trim`]).
fn trim_start(s: &str) -> &str {
    let skip = s
        .bytes()
        .position(|b| !is_ascii_space(b))
        .unwrap_or(s.len());
    let s = &s[skip..];
    if s.as_bytes().first().is_some_and(|b| !b.is_ascii()) {
        return s.trim_start();
    }
    s
}

/// `str::trim_end`, ASCII first (see [`trim`]).
fn trim_end(s: &str) -> &str {
    let keep = s
        .bytes()
        .rposition(|b| !is_ascii_space(b))
        .map_or(0, |i| i + 1);
    let s = &s[..keep];
    if s.as_bytes().last().is_some_and(|b| !b.is_ascii()) {
        return s.trim_end();
    }
    s
}

/// The ASCII characters `char::is_whitespace` accepts: tab, line feed, vertical tab, form
/// feed, carriage return and space (`u8::is_ascii_whitespace` leaves out vertical tab).
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

// `str::find`, `split`, `split_once` for one ASCII byte. The `char` forms run a general
// searcher, a call and a set-up per use, which on the short pieces of a header costs more
// than the search; a UTF-8 string holds an ASCII byte only as that character, so the
// positions (and the pieces) are the same.

fn find_byte(s: &str, byte: u8) -> Option<usize> {
    s.bytes().position(|b| b == byte)
}

/// What comes before the first `byte` (all of `s` without one): `s.split(c).next()`.
fn before(s: &str, byte: u8) -> &str {
    find_byte(s, byte).map_or(s, |i| &s[..i])
}

fn split_once_byte(s: &str, byte: u8) -> Option<(&str, &str)> {
    let i = find_byte(s, byte)?;
    Some((&s[..i], &s[i + 1..]))
}

fn split_byte(s: &str, byte: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match find_byte(r, byte) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The longest prefix of `bytes` that is valid UTF-8.
fn utf8_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Splits the header section from the body: returns the head (without the blank line) and
/// where the body starts. The earlier blank line wins, whichever its line ends: a head ended
/// by bare `\n\n` may carry a body that contains `\r\n\r\n` (HEPGEN in hep.pcap does).
fn split_head(data: &[u8]) -> (&[u8], usize) {
    // One walk over the line ends of the head: a blank line is a line end followed by
    // another (`\n\n` at the first), or by `\r\n` after a `\r` (`\r\n\r\n` one byte
    // before it). The first line end that completes either is the earlier blank line, and
    // the body (which may be long, and may hold blank lines of its own) is never searched.
    for nl in memchr::memchr_iter(b'\n', data) {
        match data.get(nl + 1) {
            Some(b'\n') => return (&data[..nl], nl + 2),
            Some(b'\r') if nl > 0 && data[nl - 1] == b'\r' && data.get(nl + 2) == Some(&b'\n') => {
                return (&data[..nl - 1], nl + 3);
            }
            _ => {}
        }
    }
    (data, data.len())
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Iterates over `(start, end)` byte ranges of lines, without their `\r\n` or `\n`.
struct LineSpans<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> LineSpans<'a> {
    fn new(text: &'a [u8]) -> Self {
        LineSpans { text, pos: 0 }
    }
}

impl Iterator for LineSpans<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.pos >= self.text.len() {
            return None;
        }
        let bytes = self.text;
        let start = self.pos;
        let nl = memchr::memchr(b'\n', &bytes[start..]).map(|i| start + i);
        let (end, next) = match nl {
            Some(nl) => (nl, nl + 1),
            None => (bytes.len(), bytes.len()),
        };
        self.pos = next;
        let end = if end > start && bytes[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        Some((start, end))
    }
}

/// Finds the part of a multipart body (RFC 2046) whose Content-Type is `wanted`.
fn multipart_part<'a>(body: &'a [u8], boundary: &str, wanted: &str) -> Option<&'a [u8]> {
    if boundary.is_empty() {
        return None;
    }
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    let positions: Vec<usize> = finder.find_iter(body).collect();
    for pair in positions.windows(2) {
        let part = &body[pair[0] + delimiter.len()..pair[1]];
        // Skip the rest of the delimiter line, then split the part's headers from its body.
        let part = match memchr::memchr(b'\n', part) {
            Some(nl) => &part[nl + 1..],
            None => continue,
        };
        let (head, body_start) = split_head(part);
        let Ok(head) = std::str::from_utf8(head) else {
            continue;
        };
        let is_wanted = head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                canonical_name(name.trim()).eq_ignore_ascii_case("Content-Type")
                    && value
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case(wanted)
            })
        });
        if is_wanted {
            let content = part.get(body_start..).unwrap_or(&[]);
            // The CRLF before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1).
            let content = content
                .strip_suffix(b"\r\n")
                .or_else(|| content.strip_suffix(b"\n"))
                .unwrap_or(content);
            return Some(content);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds , SIP/2.0/UDP proxy;branch=z9hG4bKother\r\n\
Max-Forwards: 70\r\n\
t: Bob <sip:bob@biloxi.example.com>\r\n\
f: \"Alice \\\"A\\\" Liddell\" <sip:+4930123456;npdi@atlanta.example.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.atlanta.example.com\r\n\
cseq: 314159 INVITE\r\n\
m: <sip:alice@pc33.atlanta.example.com>\r\n\
Subject: folded\r\n  over two lines\r\n\
P-Asserted-Identity: <tel:+4930123456>\r\n\
Diversion: <sip:100@pbx>;reason=no-answer, <sip:200@pbx>;reason=busy\r\n\
X-CID: leg-a-1234\r\n\
Reason: Q.850;cause=16;text=\"Normal call clearing\", SIP;cause=200;text=\"Call completed elsewhere\"\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\r\nextra";

    /// A BYE cut in the middle of its last header name (ppp_sip_reqs.pcap frame 4, from
    /// PcapPlusPlus): the headers before the cut are read, as TShark reads them; a name
    /// without a colon anywhere else is still malformed.
    #[test]
    fn head_cut_inside_a_header_name_keeps_the_headers_before_it() {
        let raw = "BYE sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c1\r\nCSeq: 7 BYE\r\nContent-Lengt";
        let msg = parse(raw.as_bytes()).unwrap();
        assert_eq!(msg.method(), Some(Method::Bye));
        assert_eq!(msg.call_id, "c1");
        assert_eq!(msg.content_length, None);
        let broken = "BYE sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c1\r\nCSeq: 7 BYE\r\nContent-Lengt\r\n";
        assert_eq!(
            parse(broken.as_bytes()).unwrap_err(),
            SipError::MalformedHeader
        );
        let inside = "BYE sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nJunk\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c1\r\nCSeq: 7 BYE";
        assert_eq!(
            parse(inside.as_bytes()).unwrap_err(),
            SipError::MalformedHeader
        );
    }

    #[test]
    fn parses_invite_with_compact_and_folded_headers() {
        let msg = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(msg.method(), Some(Method::Invite));
        assert_eq!(msg.call_id, "a84b4c76e66710@pc33.atlanta.example.com");
        assert_eq!(
            msg.cseq,
            CSeq {
                number: 314159,
                method: Method::Invite
            }
        );
        assert_eq!(msg.from.display_name, Some("Alice \\\"A\\\" Liddell"));
        assert_eq!(msg.from.user, Some("+4930123456"));
        assert_eq!(msg.from.tag, Some("1928301774"));
        assert_eq!(msg.to.display_name, Some("Bob"));
        assert_eq!(msg.to.user, Some("bob"));
        assert_eq!(msg.to.tag, None);
        assert_eq!(msg.via_branch, Some("z9hG4bK776asdhds"));
        assert_eq!(msg.via_transport, Some("UDP"));
        assert_eq!(
            msg.contact.unwrap().uri,
            "sip:alice@pc33.atlanta.example.com"
        );
        assert_eq!(msg.asserted_identity.unwrap().user, Some("+4930123456"));
        assert_eq!(msg.diversion.unwrap().user, Some("100"));
        assert_eq!(msg.linked_call_id, Some("leg-a-1234"));
        let subject: Vec<_> = msg.header_values("s").collect();
        assert_eq!(subject, vec!["folded\r\n  over two lines"]);
        let reasons: Vec<_> = msg.reasons().collect();
        assert_eq!(reasons.len(), 2);
        assert_eq!(reasons[0].protocol, "Q.850");
        assert_eq!(reasons[0].cause, Some(16));
        assert_eq!(reasons[0].text, Some("Normal call clearing"));
        assert_eq!(reasons[1].cause, Some(200));
        // Content-Length cuts the body.
        assert_eq!(msg.body, b"v=0\r");
        assert_eq!(msg.sdp(), Some(&b"v=0\r"[..]));
    }

    #[test]
    fn bare_newline_head_with_crlf_blank_line_in_body() {
        // hep.pcap frame 1: the head ends with "\n\n", the SDP body ends with "\r\n\r\n".
        let raw = "INVITE sip:b@h SIP/2.0\nCall-ID: c1\nCSeq: 1 INVITE\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>\nContent-Length: 9\n\nv=0\r\n\r\n\r\n";
        let msg = parse(raw.as_bytes()).unwrap();
        assert_eq!(msg.body, b"v=0\r\n\r\n\r\n");
    }

    #[test]
    fn parses_response_with_bare_newlines() {
        let raw = "SIP/2.0 486 Busy Here\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\nFrom: <sip:a@h>;tag=1\nTo: sip:b@h;tag=2\nCall-ID: c1\nCSeq: 1 INVITE\n\n";
        let msg = parse(raw.as_bytes()).unwrap();
        assert_eq!(msg.status(), Some(486));
        assert_eq!(msg.to.tag, Some("2"));
        assert_eq!(msg.to.uri, "sip:b@h");
        assert!(msg.body.is_empty());
    }

    #[test]
    fn finds_sdp_in_multipart_body() {
        let body = "--b1\r\nContent-Type: application/isup\r\n\r\nxx\r\n--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n\r\n--b1--\r\n";
        let raw = format!(
            "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: multipart/mixed;boundary=b1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let msg = parse(raw.as_bytes()).unwrap();
        assert_eq!(msg.sdp(), Some(&b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n"[..]));
    }

    #[test]
    fn rejects_non_sip_and_missing_headers() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n").unwrap_err(),
            SipError::NotSip
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap_err(),
            SipError::MissingHeader("Call-ID")
        );
        assert!(!starts_with_sip(b"HTTP/1.1 200 OK\r\n"));
        assert!(starts_with_sip(b"SIP/2.0 200 OK\r\n"));
        assert!(starts_with_sip(b"REGISTER sip:example.com SIP/2.0\r\n"));
        // Any token is a method, as TShark reads it (PROTOS' c07-sip-r2 sends these).
        assert!(starts_with_sip(b"register sip:example.com SIP/2.0\r\n"));
        assert!(starts_with_sip(b"aaaaaaaaa sip:tori@localhost SIP/2.0\r\n"));
        assert!(!starts_with_sip(b"a(b sip:tori@localhost SIP/2.0\r\n"));
        // Inside a stream, only the conventional spelling starts a message.
        assert!(!starts_with_conventional_sip(
            b"helloMESSAGE sip:b@h SIP/2.0\r\n"
        ));
        assert!(starts_with_conventional_sip(
            b"X-FOO_BAR sip:b@h SIP/2.0\r\n"
        ));
        assert!(starts_with_conventional_sip(b"SIP/2.0 180 Ringing\r\n"));
        let raw = b"aaaaaaaaa sip:tori@localhost SIP/2.0\r\nFrom: <sip:ann@localhost>;tag=2\r\nTo: <sip:tori@localhost>\r\nCall-ID: 2@localhost\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(
            parse(raw).unwrap().method(),
            Some(Method::Other("aaaaaaaaa"))
        );
    }

    #[test]
    fn token_bytes_are_rfc_3261s() {
        for b in 0..=255u8 {
            let spec = b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b);
            assert_eq!(is_token_byte(b), spec, "{b:#04x}");
        }
    }

    /// Found by the `sip_message` fuzzer: a Content-Type with a multi-byte character at
    /// byte 10 made the multipart check slice inside a character.
    #[test]
    fn content_type_with_multibyte_char_does_not_panic() {
        let raw = "INVITE sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Type: appINVITE\u{71c}/sdp\r\n\r\nv=0";
        let msg = parse(raw.as_bytes()).unwrap();
        assert_eq!(msg.sdp(), None);
    }

    /// The ASCII-first trims are `str::trim`'s, on every mix of ASCII and Unicode white space
    /// at either end (U+0085 and U+00A0 are two bytes, U+3000 three, U+00E9 is no space).
    #[test]
    fn trims_are_str_trims() {
        let pieces = [
            "", " ", "\t", "\x0b", "\x0c", "\r\n", "\u{85}", "\u{a0}", "\u{3000}", "\u{e9}", "a",
            "a b", "<x>",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let s = format!("{a}{b}{c}");
                    assert_eq!(trim(&s), s.trim(), "{s:?}");
                    assert_eq!(trim_start(&s), s.trim_start(), "{s:?}");
                    assert_eq!(trim_end(&s), s.trim_end(), "{s:?}");
                }
            }
        }
    }

    /// Lists are cut by bytes: an escaped multi-byte character inside quotes, commas in
    /// quotes and angle brackets.
    #[test]
    fn split_list_by_bytes() {
        let value = "\"A \\\u{e9}, b\" <sip:a@h;x=1,2>;tag=1 , <sip:b@h> ,, \u{a0}c\u{3000}";
        let items: Vec<_> = split_list(value).collect();
        assert_eq!(
            items,
            vec!["\"A \\\u{e9}, b\" <sip:a@h;x=1,2>;tag=1", "<sip:b@h>", "c"]
        );
        assert_eq!(closing_quote("a\\\u{e9}\"b\""), Some(4));
    }

    /// The one-walk `split_head` finds what two `memmem` searches found (the earlier blank
    /// line, `\r\n\r\n` or `\n\n`), on every string of up to 8 bytes of `\r`, `\n`, `a`.
    #[test]
    fn split_head_is_the_earlier_of_both_blank_lines() {
        fn reference(data: &[u8]) -> (&[u8], usize) {
            let crlf = memchr::memmem::find(data, b"\r\n\r\n").map(|p| (p, p + 4));
            let lf = memchr::memmem::find(data, b"\n\n").map(|p| (p, p + 2));
            let end = match (crlf, lf) {
                (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            match end {
                Some((head, body)) => (&data[..head], body),
                None => (data, data.len()),
            }
        }
        for len in 0..=8u32 {
            for n in 0..3usize.pow(len) {
                let data: Vec<u8> = (0..len).map(|i| b"\r\na"[n / 3usize.pow(i) % 3]).collect();
                assert_eq!(split_head(&data), reference(&data), "{data:?}");
            }
        }
    }

    /// The byte forms of `split`, `split_once`, `find` give the `char` forms' pieces.
    #[test]
    fn byte_splits_are_char_splits() {
        for s in [
            "",
            ";",
            "a;b",
            ";a;;b;",
            "\u{e9};x=\u{3000}",
            "sip:a@h:5060;x",
        ] {
            for c in [';', ':', '=', '@'] {
                let b = c as u8;
                assert_eq!(
                    split_byte(s, b).collect::<Vec<_>>(),
                    s.split(c).collect::<Vec<_>>()
                );
                assert_eq!(split_once_byte(s, b), s.split_once(c));
                assert_eq!(find_byte(s, b), s.find(c));
                assert_eq!(before(s, b), s.split(c).next().unwrap_or(""));
            }
        }
    }

    #[test]
    fn truncated_body_is_flagged() {
        let raw = "MESSAGE sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Length: 100\r\n\r\nshort";
        let msg = parse(raw.as_bytes()).unwrap();
        assert!(msg.body_truncated);
        assert_eq!(msg.body, b"short");
    }

    /// The messages of these tests, and variants of them that still parse: the owned form's
    /// view is the parse, field for field.
    fn assert_owned_views_the_parse(data: &[u8]) -> bool {
        let Ok(msg) = parse(data) else {
            return false;
        };
        let owned = OwnedMessage::new(&msg).unwrap();
        let view = owned.view();
        assert_eq!(view, msg, "{:?}", String::from_utf8_lossy(data));
        assert_eq!(owned.raw(), data);
        // Nothing copied after the message: every field is a range of it.
        assert_eq!(owned.bytes.len(), data.len());
        assert_eq!(
            view.header_values("Reason").collect::<Vec<_>>(),
            msg.header_values("Reason").collect::<Vec<_>>()
        );
        assert_eq!(view.sdp(), msg.sdp());
        true
    }

    #[test]
    fn the_owned_form_views_back_to_the_parse() {
        let mut binary_value = b"OPTIONS sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=\xff\xfe2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nX-Bin: \xc3\r\n\r\n".to_vec();
        let samples: Vec<Vec<u8>> = vec![
            INVITE.as_bytes().to_vec(),
            INVITE.replace("INVITE", "FOO").into_bytes(),
            b"SIP/2.0 486 Busy Here\r\nv: SIP/2.0/TCP h\r\nf: \"\xc3\xa9\" <sip:a@h>;tag=1\r\nt: <tel:+49>;tag=2\r\ni: x\r\nCSeq: 9 INVITE\r\nServer: s\r\nUser-Agent: u\r\nX-Orig-Call-ID: y\r\nContact: *\r\n\r\n".to_vec(),
            b"BYE sip:b@h SIP/2.0\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>;tag=2\nCall-ID: c1\nCSeq: 7 BYE\nContent-Lengt".to_vec(),
            b"MESSAGE sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
            std::mem::take(&mut binary_value),
        ];
        for sample in &samples {
            assert!(assert_owned_views_the_parse(sample));
        }
        // Every prefix of each (cut heads and bodies), as many as parse.
        let mut parsed = 0;
        for sample in &samples {
            for end in 0..=sample.len() {
                parsed += usize::from(assert_owned_views_the_parse(&sample[..end]));
            }
        }
        assert!(parsed > 500, "{parsed} prefixes parse");
        // A head that is not UTF-8 is read piece by piece, and viewed so.
        assert!(std::str::from_utf8(&samples[5]).is_err());
        let owned = OwnedMessage::new(&parse(&samples[5]).unwrap()).unwrap();
        assert_eq!(owned.view().to.tag, None);
    }

    /// The owned form of a typical message is about as large as the message: what a bound
    /// on held messages counts ([`OwnedMessage::held_bytes`]).
    #[test]
    fn the_owned_form_stays_small() {
        assert!(
            std::mem::size_of::<OwnedMessage>() <= 400,
            "{}",
            std::mem::size_of::<OwnedMessage>()
        );
        let msg = parse(INVITE.as_bytes()).unwrap();
        let owned = OwnedMessage::new(&msg).unwrap();
        assert_eq!(
            owned.held_bytes(),
            std::mem::size_of::<OwnedMessage>() + INVITE.len() + msg.headers().len() * 16
        );
    }

    proptest::proptest! {
        /// Messages changed at random (bytes replaced, inserted, cut): whenever the change
        /// still parses, the owned form views back to that parse.
        #[test]
        fn owned_form_equals_a_fresh_parse(
            sample in 0usize..4,
            edits in proptest::collection::vec((0usize..2000, proptest::num::u8::ANY, 0u8..4), 0..6),
            cut in 0usize..2000,
        ) {
            let samples = [
                INVITE.as_bytes(),
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: \"A\" <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Type: multipart/mixed;boundary=b\r\nContent-Length: 60\r\n\r\n--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--b--\r\n".as_slice(),
                b"REGISTER sip:h SIP/2.0\nf: <sip:a@h>;tag=1\nt: <sip:a@h>\ni: r\nCSeq: 2 REGISTER\nm: <sip:a@10.0.0.1>\n folded\n\n".as_slice(),
                b"CANCEL sip:b@h SIP/2.0\r\nFrom: a <sip:a@h>;tag=1\r\nTo: sip:b@h\r\nCall-ID: \xc3\xa9\r\nCSeq: 1 CANCEL\r\nReason: SIP;cause=487\r\n\r\n".as_slice(),
            ];
            let mut data = samples[sample].to_vec();
            for (at, byte, kind) in edits {
                let at = at % (data.len() + 1);
                match kind {
                    0 if at < data.len() => data[at] = byte,
                    1 => data.insert(at, byte),
                    2 if at < data.len() => { data.remove(at); }
                    _ => data.insert(at, [b' ', b'\n', b':', b';'][usize::from(byte) % 4]),
                }
            }
            data.truncate(cut.max(data.len() / 2));
            assert_owned_views_the_parse(&data);
        }
    }
}
