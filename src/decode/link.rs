//! Link layers and the layer-2 shims in front of IP: Ethernet with 802.1Q/802.1ad VLAN tags
//! (any depth), MPLS label stacks and PPPoE sessions, Linux cooked capture v1 and v2, raw IP,
//! BSD loopback, PPP, Cisco HDLC, Linux NFLOG, Apple PKTAP, Endace ERF records.
//!
//! PPP (RFC 1661) is read wherever a capture of a DSL or dial-up edge puts it: inside a PPPoE
//! session (RFC 2516, EtherType 0x8864, also behind VLAN tags), as the link type of a `ppp0`
//! capture (`LINKTYPE_PPP`, `LINKTYPE_PPP_HDLC`), or PPPoE without its Ethernet header
//! (`LINKTYPE_PPP_ETHER`). Address/control bytes and a compressed one-byte protocol field
//! (ACFC, PFC) are accepted; IPv4 (0x0021) and IPv6 (0x0057) are IP, every other PPP protocol
//! (LCP, IPCP, ...) is not.
//!
//! Pure functions from a frame to the IP packet inside it; header layouts come from
//! `etherparse` where it has them.
//!
//! Endace ERF records (`LINKTYPE_ERF`, 197: a DAG card's records saved in pcap or pcapng)
//! are read as Wireshark's `pcap-common.c` and ERF dissector read them: the 16-byte ERF
//! header, its 8-byte extension headers (while each one's top bit is set), the type's
//! subheader (Ethernet's 2-byte offset and pad, the multi-channel and AAL2 headers), then the
//! payload by record type: Ethernet, IPv4/IPv6, PPP or Cisco HDLC; the payload stops at
//! the record's wire length. The same type table reads ERF files
//! (`sources::capture_file`), so a record decodes alike in both. Every other record type
//! (ATM, multi-channel, InfiniBand, provenance...) is an unsupported link type, as TShark
//! takes no SIP or RTP from it; a pad record carries nothing.
//!
//! Cisco HDLC (`LINKTYPE_C_HDLC`), Linux NFLOG (`tcpdump -i nflog`) and Apple's PKTAP
//! (`tcpdump -k`) are read as Wireshark's chdlc, nflog and pktap dissectors read them.
//!
//! Linux cooked captures (`tcpdump -i any`, `dumpcap -i any`) are decoded by their protocol
//! field, whatever the hardware type of the interface the frame was seen on: loopback (772),
//! tun (65534), PPP (512), rmnet (530), IP-GRE (778) and Ethernet (1) all carry an EtherType
//! there. The address field is 8 bytes on the wire in both versions whatever the address
//! length says (shorter addresses are padded, longer ones truncated by the kernel), so the
//! header length never depends on it.

use etherparse::{EtherType, Ethernet2HeaderSlice, SingleVlanHeaderSlice};

/// The link-layer header type of a capture (the pcap `LINKTYPE_*` registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Linux cooked capture v1 (`LINKTYPE_LINUX_SLL`, 113).
    LinuxSll,
    /// Linux cooked capture v2 (`LINKTYPE_LINUX_SLL2`, 276).
    LinuxSll2,
    /// Raw IPv4 or IPv6, version taken from the first nibble.
    RawIp,
    /// BSD loopback (`LINKTYPE_NULL`, 0): a 4-byte address family in the writer's byte order.
    Null,
    /// OpenBSD loopback (`LINKTYPE_LOOP`, 108): the family in network byte order.
    Loop,
    /// PPP (`LINKTYPE_PPP`, 9, and `LINKTYPE_PPP_HDLC`, 50): optional address and control
    /// bytes, then the PPP protocol field.
    Ppp,
    /// PPPoE without an Ethernet header (`LINKTYPE_PPP_ETHER`, 51).
    PppOverEthernet,
    /// Endace ERF records (`LINKTYPE_ERF`, 197): an ERF header in front of each frame.
    Erf,
    /// Cisco HDLC (`LINKTYPE_C_HDLC`, 104): address, control, then an EtherType.
    CiscoHdlc,
    /// Linux netfilter log (`LINKTYPE_NFLOG`, 239, `tcpdump -i nflog:N`): a 4-byte header
    /// (address family, version, group), then TLVs, the packet in `NFULA_PAYLOAD`.
    Nflog,
    /// Apple's PKTAP (`LINKTYPE_PKTAP`, 258, `tcpdump -k` on macOS): a header that gives its
    /// own length and the link type of the frame after it.
    Pktap,
    /// Any other link type; frames of it are counted and skipped.
    Unsupported(u32),
}

impl LinkType {
    /// Maps a pcap/pcapng link type number. The pcap header's field also carries, in its
    /// upper bits, whether frames end in a frame check sequence and how long it is (bits
    /// 26–31, libpcap's `LT_LINKTYPE` masks them off): the link type is the low 26 bits
    /// (a file with those bits set used to have every frame fail as an unsupported link
    /// type while TShark read it; a trailing FCS is bounded off by the IP and UDP lengths).
    pub fn from_linktype(value: i32) -> LinkType {
        match value & 0x03FF_FFFF {
            1 => LinkType::Ethernet,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            // LINKTYPE_RAW is 101; DLT_RAW is 12 or 14 on some BSDs; 228/229 are IPv4/IPv6 only.
            101 | 12 | 14 | 228 | 229 => LinkType::RawIp,
            0 => LinkType::Null,
            108 => LinkType::Loop,
            9 | 50 => LinkType::Ppp,
            51 => LinkType::PppOverEthernet,
            LINKTYPE_ERF_I32 => LinkType::Erf,
            104 => LinkType::CiscoHdlc,
            239 => LinkType::Nflog,
            258 => LinkType::Pktap,
            other => LinkType::Unsupported(other as u32),
        }
    }
}

/// Why a frame yielded no IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("frame shorter than its link-layer header")]
    Truncated,
    #[error("unsupported link type {0}")]
    UnsupportedLinkType(u32),
}

/// Most VLAN tags or MPLS labels peeled before giving up on a frame.
const MAX_SHIMS: usize = 8;

/// Returns the IP packet carried by a frame, `Ok(None)` when the frame carries something else
/// (ARP, LLDP, ...).
pub fn ip_payload(link: LinkType, frame: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    match link {
        LinkType::Ethernet => ethernet_payload(frame),
        LinkType::LinuxSll => {
            // SLL v1: pkttype(2) hatype(2) addrlen(2) addr(8) protocol(2).
            if frame.len() < SLL_HEADER {
                return Err(LinkError::Truncated);
            }
            let hatype = u16::from_be_bytes([frame[2], frame[3]]);
            let protocol = u16::from_be_bytes([frame[14], frame[15]]);
            cooked_payload(hatype, protocol, &frame[SLL_HEADER..])
        }
        LinkType::LinuxSll2 => {
            // SLL2: protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) addrlen(1) addr(8).
            if frame.len() < SLL2_HEADER {
                return Err(LinkError::Truncated);
            }
            let protocol = u16::from_be_bytes([frame[0], frame[1]]);
            let hatype = u16::from_be_bytes([frame[8], frame[9]]);
            cooked_payload(hatype, protocol, &frame[SLL2_HEADER..])
        }
        LinkType::RawIp => Ok(raw_ip(frame)),
        LinkType::Null | LinkType::Loop => {
            if frame.len() < 4 {
                return Err(LinkError::Truncated);
            }
            let bytes = [frame[0], frame[1], frame[2], frame[3]];
            // The writer's byte order is unknown for NULL; a family is a small number, so the
            // order that gives one is the right one.
            let family = if link == LinkType::Loop {
                u32::from_be_bytes(bytes)
            } else {
                let le = u32::from_le_bytes(bytes);
                if le < 256 {
                    le
                } else {
                    u32::from_be_bytes(bytes)
                }
            };
            // AF_INET is 2 everywhere; AF_INET6 is 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS).
            match family {
                2 | 24 | 28 | 30 => Ok(raw_ip(&frame[4..])),
                _ => Ok(None),
            }
        }
        LinkType::Ppp => {
            // HDLC-like framing keeps address 0xFF and control 0x03 in front; ACFC drops them.
            let rest = frame.strip_prefix(&[0xFF, 0x03]).unwrap_or(frame);
            ppp_payload(rest)
        }
        LinkType::PppOverEthernet => pppoe_payload(frame),
        LinkType::Erf => erf_payload(frame),
        LinkType::CiscoHdlc => {
            let header = frame.get(..4).ok_or(LinkError::Truncated)?;
            let protocol = u16::from_be_bytes([header[2], header[3]]);
            after_ether_type(EtherType(protocol), &frame[4..])
        }
        LinkType::Nflog => nflog_payload(frame),
        LinkType::Pktap => pktap_payload(frame),
        LinkType::Unsupported(value) => Err(LinkError::UnsupportedLinkType(value)),
    }
}

/// pcap's `LINKTYPE_ERF`; also what an ERF record of a type teledge does not decode counts as.
pub const LINKTYPE_ERF: u32 = 197;
const LINKTYPE_ERF_I32: i32 = LINKTYPE_ERF as i32;
/// Length of an ERF record header (timestamp, type, flags, record length, loss counter, wire
/// length).
pub const ERF_HEADER: usize = 16;
/// ERF's pad record type: no frame.
pub const ERF_TYPE_PAD: u8 = 48;

/// Bytes of an ERF record's type-specific header after its extension headers (Wireshark's
/// `pcap_read_erf_subheader`): Ethernet types' offset and pad, multi-channel and AAL2 types'
/// 4-byte header. `kind` is the type without its extension bit.
pub fn erf_subheader_len(kind: u8) -> usize {
    match kind {
        2 | 11 | 16 | 20 => 2,
        5 | 6 | 7 | 8 | 9 | 12 | 17 | 18 => 4,
        _ => 0,
    }
}

/// The link layer of an ERF record's payload, by its type (without the extension bit):
/// Ethernet (plain and colour types), IPv4/IPv6 as raw IP, HDLC/POS as Wireshark's ERF
/// dissector guesses it: PPP when it starts with PPP's `ff 03`, Cisco HDLC when with its
/// unicast or broadcast address (0x0F, 0x8F; frame relay and MTP2 are not decoded); any other
/// type is unsupported.
pub fn erf_payload_link(kind: u8, payload: &[u8]) -> LinkType {
    match kind {
        2 | 11 | 16 | 20 => LinkType::Ethernet,
        22 | 23 => LinkType::RawIp,
        1 | 10 | 15 | 19 if payload.starts_with(&[0xFF, 0x03]) => LinkType::Ppp,
        1 | 10 | 15 | 19 if matches!(payload.first(), Some(0x0F | 0x8F)) => LinkType::CiscoHdlc,
        _ => LinkType::Unsupported(LINKTYPE_ERF),
    }
}

/// Bytes of an ERF record's headers at the start of `record` (header, extension headers,
/// subheader), `None` when they run past it.
pub fn erf_headers_len(record: &[u8]) -> Option<usize> {
    let kind = *record.get(8)?;
    if record.len() < ERF_HEADER {
        return None;
    }
    let mut used = ERF_HEADER;
    let mut more = kind & 0x80 != 0;
    while more {
        more = record.get(used)? & 0x80 != 0;
        used += 8;
    }
    used += erf_subheader_len(kind & 0x7F);
    (used <= record.len()).then_some(used)
}

/// The IP packet inside a pcap/pcapng frame of link type ERF: the record's headers, then its
/// payload up to the wire length (what Wireshark's `pcap_read_post_process` keeps).
fn erf_payload(frame: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let headers = erf_headers_len(frame).ok_or(LinkError::Truncated)?;
    let kind = frame[8] & 0x7F;
    if kind == ERF_TYPE_PAD {
        return Ok(None);
    }
    let wire = usize::from(u16::from_be_bytes([frame[14], frame[15]]));
    let rest = &frame[headers..];
    let payload = &rest[..wire.min(rest.len())];
    match erf_payload_link(kind, payload) {
        LinkType::Unsupported(value) => Err(LinkError::UnsupportedLinkType(value)),
        // Never ERF again: one level deep.
        link => ip_payload(link, payload),
    }
}

/// `NFULA_PAYLOAD`: the TLV holding the logged packet.
const NFULA_PAYLOAD: u16 = 9;

/// The IP packet of an NFLOG frame: after the 4-byte header, the `NFULA_PAYLOAD` TLV. A TLV's
/// length (its 4-byte header included) and type are in the writer's byte order, which a
/// pcap reader swaps to its own (Wireshark's `pcap_byteswap_nflog_pseudoheader`): read
/// little-endian, as nearly every writer is, unless only the big-endian first length fits
/// the frame. Values are padded to 4 bytes. The address family (AF_INET 2, AF_INET6 10)
/// says the payload is IP.
fn nflog_payload(frame: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let header = frame.get(..4).ok_or(LinkError::Truncated)?;
    if !matches!(header[0], 2 | 10) {
        return Ok(None);
    }
    let fits = |len: u16| (4..=frame.len() - 4).contains(&usize::from(len));
    let big_endian = match frame.get(4..6) {
        Some(&[a, b]) => !fits(u16::from_le_bytes([a, b])) && fits(u16::from_be_bytes([a, b])),
        _ => false,
    };
    let word = |at: usize| {
        let bytes = [frame[at], frame[at + 1]];
        if big_endian {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        }
    };
    let mut at = 4;
    while at + 4 <= frame.len() {
        let (len, kind) = (usize::from(word(at)), word(at + 2));
        if len < 4 {
            return Err(LinkError::Truncated);
        }
        if kind == NFULA_PAYLOAD {
            // A value cut by the snapshot length keeps what it has (the IP layer says so).
            let value = &frame[at + 4..(at + len).min(frame.len())];
            return Ok(raw_ip(value));
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(None)
}

/// Shortest PKTAP header Wireshark takes (`MIN_PKTAP_HDR_LEN`).
const PKTAP_MIN_HEADER: usize = 108;

/// The IP packet of a PKTAP frame: its little-endian header length, record type (1: a packet
/// follows) and link type, then the frame of that link type (never PKTAP or ERF again).
fn pktap_payload(frame: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let word = |at: usize| {
        frame
            .get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let (Some(len), Some(record), Some(link)) = (word(0), word(4), word(8)) else {
        return Err(LinkError::Truncated);
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len < PKTAP_MIN_HEADER || len > frame.len() {
        return Err(LinkError::Truncated);
    }
    if record != 1 {
        return Ok(None);
    }
    match LinkType::from_linktype(link as i32) {
        LinkType::Pktap | LinkType::Erf => Err(LinkError::UnsupportedLinkType(link)),
        inner => ip_payload(inner, &frame[len..]),
    }
}

/// EtherType of the PPPoE session stage (RFC 2516); the discovery stage (0x8863) carries no IP.
const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;

/// Every EtherType after which [`ethernet_payload`] can find an IP packet: IPv4, IPv6,
/// 802.1Q, 802.1ad, old QinQ, MPLS unicast and multicast, PPPoE session. A live capture's
/// kernel filter keeps exactly these (`sources::afpacket`), so what a capture file would give
/// is not dropped before the ring.
pub const ETHERTYPES_CARRYING_IP: [u16; 8] = [
    0x0800,
    0x86dd,
    0x8100,
    0x88a8,
    0x9100,
    0x8847,
    0x8848,
    ETHERTYPE_PPPOE_SESSION,
];
/// Length of the PPPoE header: version and type, code, session id, payload length.
const PPPOE_HEADER: usize = 6;

/// The IP packet inside a PPPoE session frame.
fn pppoe_payload(data: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let header = data.get(..PPPOE_HEADER).ok_or(LinkError::Truncated)?;
    // Version 1, type 1, code 0 (session data): anything else is discovery or unknown.
    if header[0] != 0x11 || header[1] != 0 {
        return Ok(None);
    }
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let ppp = &data[PPPOE_HEADER..];
    // The payload length excludes Ethernet padding; a frame cut by the snap length keeps
    // what it has (the IP layer reports the cut).
    ppp_payload(ppp.get(..length).unwrap_or(ppp))
}

/// The IP packet after a PPP protocol field: two bytes, or one when Protocol-Field-Compression
/// is on (RFC 1661 §6.5: a protocol number's first byte is even, its last odd).
fn ppp_payload(data: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let first = *data.first().ok_or(LinkError::Truncated)?;
    let (protocol, rest) = if first & 1 == 1 {
        (u16::from(first), &data[1..])
    } else {
        let second = *data.get(1).ok_or(LinkError::Truncated)?;
        (u16::from_be_bytes([first, second]), &data[2..])
    };
    Ok(match protocol {
        0x0021 | 0x0057 => raw_ip(rest),
        _ => None,
    })
}

/// Length of a Linux cooked capture v1 header.
const SLL_HEADER: usize = 16;
/// Length of a Linux cooked capture v2 header.
const SLL2_HEADER: usize = 20;
/// `ARPHRD_NETLINK`: the protocol field is a netlink family, the payload a netlink message.
const ARPHRD_NETLINK: u16 = 824;
/// `ARPHRD_IPGRE`: the protocol field is the GRE protocol type (an EtherType, 0x6558 for
/// bridged Ethernet).
const ARPHRD_IPGRE: u16 = 778;

/// The payload of a Linux cooked frame, by its protocol field. Values below 0x0600 are not
/// EtherTypes but the kernel's `LINUX_SLL_P_*` codes (802.2 LLC, CAN, ...): never IP.
fn cooked_payload(hatype: u16, protocol: u16, rest: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    match (hatype, protocol) {
        (ARPHRD_NETLINK, _) => Ok(None),
        (ARPHRD_IPGRE, 0x6558) => ethernet_payload(rest),
        (_, p) if p < 0x0600 => Ok(None),
        (_, p) => after_ether_type(EtherType(p), rest),
    }
}

/// Returns the IP packet inside an Ethernet frame, peeling VLAN tags and MPLS labels.
pub fn ethernet_payload(frame: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let header = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| LinkError::Truncated)?;
    after_ether_type(header.ether_type(), &frame[header.slice().len()..])
}

/// The IP packet after an EtherType, peeling VLAN tags and MPLS labels in front of it.
fn after_ether_type(ether_type: EtherType, rest: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let mut ether_type = ether_type;
    let mut rest = rest;
    for _ in 0..MAX_SHIMS {
        match ether_type {
            EtherType::VLAN_TAGGED_FRAME
            | EtherType::PROVIDER_BRIDGING
            | EtherType::VLAN_DOUBLE_TAGGED_FRAME => {
                let vlan =
                    SingleVlanHeaderSlice::from_slice(rest).map_err(|_| LinkError::Truncated)?;
                ether_type = vlan.ether_type();
                rest = &rest[vlan.slice().len()..];
            }
            EtherType(0x8847) | EtherType(0x8848) => return Ok(mpls_payload(rest)),
            EtherType(ETHERTYPE_PPPOE_SESSION) => return pppoe_payload(rest),
            other => return Ok(by_ether_type(other.0, rest)),
        }
    }
    Ok(None)
}

fn by_ether_type(ether_type: u16, payload: &[u8]) -> Option<&[u8]> {
    match ether_type {
        0x0800 | 0x86DD => Some(payload),
        _ => None,
    }
}

/// IP payload after an MPLS label stack; the IP version is read from the first nibble since
/// MPLS does not say what it carries.
fn mpls_payload(mut data: &[u8]) -> Option<&[u8]> {
    for _ in 0..MAX_SHIMS {
        let label = data.get(..4)?;
        data = &data[4..];
        if label[2] & 0x01 != 0 {
            return raw_ip(data);
        }
    }
    None
}

fn raw_ip(data: &[u8]) -> Option<&[u8]> {
    match data.first()? >> 4 {
        4 | 6 => Some(data),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peels_qinq_tags() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x88, 0xA8, 0x00, 0x64, 0x81, 0x00, 0x00, 0xC8, 0x08, 0x00]);
        frame.extend_from_slice(&[0x45, 0, 0, 20]);
        assert_eq!(
            ethernet_payload(&frame).unwrap(),
            Some(&[0x45, 0, 0, 20][..])
        );
    }

    /// No EtherType outside [`ETHERTYPES_CARRYING_IP`] yields an IP packet, whatever
    /// follows it (an IPv4 header, a tag or label in front of one, a PPPoE session): the
    /// list the live capture's kernel filter keeps is complete.
    #[test]
    fn only_the_listed_ether_types_carry_ip() {
        let ipv4 = [
            0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut behind_tag = vec![0x00, 0x64, 0x08, 0x00];
        behind_tag.extend_from_slice(&ipv4);
        let mut behind_label = vec![0x00, 0x01, 0x01, 0x40];
        behind_label.extend_from_slice(&ipv4);
        let mut ppp = vec![0x00, 0x21];
        ppp.extend_from_slice(&ipv4);
        let behind_pppoe = pppoe(&ppp);
        let mut carrying = Vec::new();
        for ether_type in 0..=u16::MAX {
            for rest in [&ipv4[..], &behind_tag, &behind_label, &behind_pppoe] {
                let mut frame = vec![0u8; 12];
                frame.extend_from_slice(&ether_type.to_be_bytes());
                frame.extend_from_slice(rest);
                if matches!(ethernet_payload(&frame), Ok(Some(_))) {
                    carrying.push(ether_type);
                    break;
                }
            }
        }
        let mut listed = ETHERTYPES_CARRYING_IP.to_vec();
        listed.sort_unstable();
        assert_eq!(carrying, listed);
    }

    #[test]
    fn bsd_loopback_either_byte_order() {
        let le = [2, 0, 0, 0, 0x45, 0];
        let be = [0, 0, 0, 30, 0x60, 0];
        assert_eq!(
            ip_payload(LinkType::Null, &le).unwrap(),
            Some(&[0x45, 0][..])
        );
        assert_eq!(
            ip_payload(LinkType::Null, &be).unwrap(),
            Some(&[0x60, 0][..])
        );
    }

    /// An SLL v1 header as the kernel writes it for `hatype`, with an address of `addr_len`.
    fn sll_v1(hatype: u16, addr_len: u16, protocol: u16) -> Vec<u8> {
        let mut frame = vec![0, 0];
        frame.extend_from_slice(&hatype.to_be_bytes());
        frame.extend_from_slice(&addr_len.to_be_bytes());
        frame.extend_from_slice(&[0xAB; 8]);
        frame.extend_from_slice(&protocol.to_be_bytes());
        frame
    }

    #[test]
    fn sll_v1_decodes_by_protocol_whatever_the_hardware_type() {
        // Ethernet, PPP, loopback, IP-GRE, rmnet, tun/none; address lengths 0, 6 and 20
        // (InfiniBand's, truncated to 8 in the frame).
        for (hatype, addr_len) in [(1, 6), (512, 0), (772, 6), (778, 0), (530, 0), (65534, 0)] {
            for (protocol, ip) in [(0x0800u16, 0x45u8), (0x86DD, 0x60)] {
                let mut frame = sll_v1(hatype, addr_len, protocol);
                frame.push(ip);
                assert_eq!(
                    ip_payload(LinkType::LinuxSll, &frame),
                    Ok(Some(&[ip][..])),
                    "hatype {hatype}"
                );
            }
        }
        let mut infiniband = sll_v1(32, 20, 0x0800);
        infiniband.push(0x45);
        assert_eq!(
            ip_payload(LinkType::LinuxSll, &infiniband),
            Ok(Some(&[0x45][..]))
        );
        // Not IP: netlink, 802.2 LLC, ARP; a header cut short is an error.
        assert_eq!(
            ip_payload(LinkType::LinuxSll, &sll_v1(824, 0, 0x0800)),
            Ok(None)
        );
        assert_eq!(
            ip_payload(LinkType::LinuxSll, &sll_v1(1, 6, 0x0004)),
            Ok(None)
        );
        assert_eq!(
            ip_payload(LinkType::LinuxSll, &sll_v1(1, 6, 0x0806)),
            Ok(None)
        );
        assert_eq!(
            ip_payload(LinkType::LinuxSll, &sll_v1(772, 6, 0x0800)[..15]),
            Err(LinkError::Truncated)
        );
    }

    #[test]
    fn sll_v1_peels_a_vlan_tag() {
        let mut frame = sll_v1(1, 6, 0x8100);
        frame.extend_from_slice(&[0x00, 0x64, 0x08, 0x00, 0x45]);
        assert_eq!(
            ip_payload(LinkType::LinuxSll, &frame),
            Ok(Some(&[0x45][..]))
        );
    }

    /// A PPPoE session frame's payload: header (version/type 0x11, code 0, session 0x18E5,
    /// length) then `ppp`, then Ethernet padding.
    fn pppoe(ppp: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x11, 0x00, 0x18, 0xE5];
        frame.extend_from_slice(&(ppp.len() as u16).to_be_bytes());
        frame.extend_from_slice(ppp);
        frame.extend_from_slice(&[0; 4]);
        frame
    }

    #[test]
    fn pppoe_session_carries_ip_behind_ethernet_and_vlan_tags() {
        for (ppp, ip) in [
            (&[0x00, 0x21, 0x45][..], 0x45u8),
            (&[0x00, 0x57, 0x60][..], 0x60),
            (&[0x21, 0x45][..], 0x45), // protocol field compressed to one byte
        ] {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x88, 0x64]);
            frame.extend_from_slice(&pppoe(ppp));
            // The padding after the PPPoE payload length is not part of the IP packet.
            assert_eq!(ethernet_payload(&frame), Ok(Some(&[ip][..])));
            let mut tagged = vec![0u8; 12];
            tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07, 0x88, 0x64]);
            tagged.extend_from_slice(&pppoe(ppp));
            assert_eq!(ethernet_payload(&tagged), Ok(Some(&[ip][..])));
            assert_eq!(
                ip_payload(LinkType::PppOverEthernet, &pppoe(ppp)),
                Ok(Some(&[ip][..]))
            );
        }
        // LCP (0xC021) and the discovery stage carry no IP; a cut header is an error.
        let mut lcp = vec![0u8; 12];
        lcp.extend_from_slice(&[0x88, 0x64]);
        lcp.extend_from_slice(&pppoe(&[0xC0, 0x21, 0x01]));
        assert_eq!(ethernet_payload(&lcp), Ok(None));
        let mut padi = pppoe(&[0x01, 0x01, 0x00, 0x00]);
        padi[1] = 0x09;
        assert_eq!(ip_payload(LinkType::PppOverEthernet, &padi), Ok(None));
        assert_eq!(
            ip_payload(LinkType::PppOverEthernet, &[0x11, 0x00, 0x18]),
            Err(LinkError::Truncated)
        );
    }

    #[test]
    fn fcs_bits_of_the_pcap_header_are_not_the_link_type() {
        // Ethernet with a 4-byte FCS (F bit 27, length 2 × 16 bits in bits 28–31).
        assert_eq!(
            LinkType::from_linktype(1 | 1 << 27 | 2 << 28),
            LinkType::Ethernet
        );
        assert_eq!(LinkType::from_linktype(113 | 1 << 26), LinkType::LinuxSll);
        assert_eq!(
            LinkType::from_linktype(147 | 1 << 27),
            LinkType::Unsupported(147)
        );
    }

    #[test]
    fn ppp_link_types_with_and_without_address_and_control() {
        assert_eq!(LinkType::from_linktype(9), LinkType::Ppp);
        assert_eq!(LinkType::from_linktype(50), LinkType::Ppp);
        assert_eq!(LinkType::from_linktype(51), LinkType::PppOverEthernet);
        for frame in [
            &[0xFF, 0x03, 0x00, 0x21, 0x45][..],
            &[0x00, 0x21, 0x45][..],
            &[0xFF, 0x03, 0x21, 0x45][..],
        ] {
            assert_eq!(ip_payload(LinkType::Ppp, frame), Ok(Some(&[0x45][..])));
        }
        assert_eq!(
            ip_payload(LinkType::Ppp, &[0xFF, 0x03, 0x80, 0x21, 1]),
            Ok(None)
        );
        assert_eq!(
            ip_payload(LinkType::Ppp, &[0xFF, 0x03]),
            Err(LinkError::Truncated)
        );
    }

    #[test]
    fn sll2_carries_ipv6() {
        let mut frame = vec![0x86, 0xDD];
        frame.extend_from_slice(&[0u8; 18]);
        frame.push(0x60);
        assert_eq!(
            ip_payload(LinkType::LinuxSll2, &frame).unwrap(),
            Some(&[0x60][..])
        );
        assert_eq!(
            ip_payload(LinkType::LinuxSll2, &frame[..10]),
            Err(LinkError::Truncated)
        );
        // Loopback hardware type (bytes 8-9), as `dumpcap -i any` writes for `lo`.
        frame[8..10].copy_from_slice(&772u16.to_be_bytes());
        assert_eq!(
            ip_payload(LinkType::LinuxSll2, &frame).unwrap(),
            Some(&[0x60][..])
        );
    }
    /// An ERF record header of `kind` with wire length `wire`.
    fn erf(kind: u8, wire: u16) -> Vec<u8> {
        let mut r = vec![0u8; 8];
        r.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
        r.extend_from_slice(&wire.to_be_bytes());
        r
    }

    #[test]
    fn reads_erf_records_by_type() {
        assert_eq!(LinkType::from_linktype(197), LinkType::Erf);
        let ip = [0x45, 0, 0, 20];
        // Ethernet: pad, then the frame; what follows the wire length is padding.
        let mut ethernet = erf(2, 18);
        ethernet.extend_from_slice(&[0, 0]);
        ethernet.extend_from_slice(&[0u8; 12]);
        ethernet.extend_from_slice(&[0x08, 0x00]);
        ethernet.extend_from_slice(&ip);
        ethernet.extend_from_slice(&[0x60; 6]);
        assert_eq!(ip_payload(LinkType::Erf, &ethernet), Ok(Some(&ip[..])));
        // Colour Ethernet behind two extension headers.
        let mut colour = erf(0x80 | 11, 18);
        colour.extend_from_slice(&[0x83, 0, 0, 0, 0, 0, 0, 1]);
        colour.extend_from_slice(&[0x03, 0, 0, 0, 0, 0, 0, 7]);
        colour.extend_from_slice(&ethernet[16..]);
        assert_eq!(ip_payload(LinkType::Erf, &colour), Ok(Some(&ip[..])));
        // IPv4 alone; PPP in HDLC framing on a POS record.
        let mut ipv4 = erf(22, 4);
        ipv4.extend_from_slice(&ip);
        assert_eq!(ip_payload(LinkType::Erf, &ipv4), Ok(Some(&ip[..])));
        let mut pos = erf(1, 8);
        pos.extend_from_slice(&[0xFF, 0x03, 0x00, 0x21]);
        pos.extend_from_slice(&ip);
        assert_eq!(ip_payload(LinkType::Erf, &pos), Ok(Some(&ip[..])));
        // A pad record carries nothing; ATM is not decoded; headers past the frame are a cut.
        assert_eq!(ip_payload(LinkType::Erf, &erf(48, 0)), Ok(None));
        assert_eq!(
            ip_payload(LinkType::Erf, &erf(3, 0)),
            Err(LinkError::UnsupportedLinkType(LINKTYPE_ERF))
        );
        for cut in [&ethernet[..15], &ethernet[..17], &colour[..30]] {
            assert_eq!(ip_payload(LinkType::Erf, cut), Err(LinkError::Truncated));
        }
        assert_eq!(
            ip_payload(LinkType::Erf, &erf(0x80 | 2, 0)),
            Err(LinkError::Truncated)
        );
    }
    #[test]
    fn reads_cisco_hdlc_nflog_and_pktap() {
        let ip = [0x45, 0, 0, 20];
        let mut chdlc = vec![0x8F, 0x00, 0x08, 0x00];
        chdlc.extend_from_slice(&ip);
        assert_eq!(
            ip_payload(LinkType::from_linktype(104), &chdlc),
            Ok(Some(&ip[..]))
        );
        assert_eq!(
            ip_payload(LinkType::CiscoHdlc, &chdlc[..3]),
            Err(LinkError::Truncated)
        );
        // NFLOG: a prefix TLV, then the payload, in either byte order; no payload, no packet.
        for big_endian in [false, true] {
            let half = |v: u16| {
                if big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let mut nflog = vec![2, 0, 0, 1];
            nflog.extend_from_slice(&half(7));
            nflog.extend_from_slice(&half(10));
            nflog.extend_from_slice(&[b'x', b'y', b'z', 0]);
            nflog.extend_from_slice(&half(8));
            nflog.extend_from_slice(&half(9));
            nflog.extend_from_slice(&ip);
            assert_eq!(
                ip_payload(LinkType::from_linktype(239), &nflog),
                Ok(Some(&ip[..])),
                "big-endian {big_endian}"
            );
            assert_eq!(ip_payload(LinkType::Nflog, &nflog[..12]), Ok(None));
        }
        assert_eq!(
            ip_payload(LinkType::Nflog, &[2, 0, 0, 1, 0, 0, 9, 0]),
            Err(LinkError::Truncated)
        );
        assert_eq!(ip_payload(LinkType::Nflog, &[7, 0, 0, 1]), Ok(None));
        // PKTAP: the header's length and link type; too short a header, or PKTAP inside
        // PKTAP, is refused.
        let mut pktap = vec![0u8; 108];
        pktap[..4].copy_from_slice(&108u32.to_le_bytes());
        pktap[4..8].copy_from_slice(&1u32.to_le_bytes());
        pktap[8..12].copy_from_slice(&101u32.to_le_bytes());
        pktap.extend_from_slice(&ip);
        assert_eq!(
            ip_payload(LinkType::from_linktype(258), &pktap),
            Ok(Some(&ip[..]))
        );
        assert_eq!(
            ip_payload(LinkType::Pktap, &pktap[..100]),
            Err(LinkError::Truncated)
        );
        let mut nested = pktap.clone();
        nested[8..12].copy_from_slice(&258u32.to_le_bytes());
        assert_eq!(
            ip_payload(LinkType::Pktap, &nested),
            Err(LinkError::UnsupportedLinkType(258))
        );
        nested[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(ip_payload(LinkType::Pktap, &nested), Ok(None));
    }
}
