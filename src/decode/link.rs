//! Link layers and the layer-2 shims in front of IP: Ethernet with 802.1Q/802.1ad VLAN tags
//! (any depth) and MPLS label stacks, Linux cooked capture v1 and v2, raw IP, BSD loopback.
//!
//! Pure functions from a frame to the IP packet inside it; header layouts come from
//! `etherparse` where it has them.

use etherparse::{EtherType, Ethernet2HeaderSlice, LinuxSllHeaderSlice, SingleVlanHeaderSlice};

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
    /// Any other link type; frames of it are counted and skipped.
    Unsupported(u32),
}

impl LinkType {
    /// Maps a pcap/pcapng link type number.
    pub fn from_linktype(value: i32) -> LinkType {
        match value {
            1 => LinkType::Ethernet,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            // LINKTYPE_RAW is 101; DLT_RAW is 12 or 14 on some BSDs; 228/229 are IPv4/IPv6 only.
            101 | 12 | 14 | 228 | 229 => LinkType::RawIp,
            0 => LinkType::Null,
            108 => LinkType::Loop,
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
            let header =
                LinuxSllHeaderSlice::from_slice(frame).map_err(|_| LinkError::Truncated)?;
            let protocol = u16::from_be_bytes([frame[14], frame[15]]);
            let rest = &frame[header.slice().len()..];
            Ok(by_ether_type(protocol, rest))
        }
        LinkType::LinuxSll2 => {
            // SLL2: protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) addrlen(1) addr(8).
            if frame.len() < 20 {
                return Err(LinkError::Truncated);
            }
            let protocol = u16::from_be_bytes([frame[0], frame[1]]);
            Ok(by_ether_type(protocol, &frame[20..]))
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
        LinkType::Unsupported(value) => Err(LinkError::UnsupportedLinkType(value)),
    }
}

/// Returns the IP packet inside an Ethernet frame, peeling VLAN tags and MPLS labels.
pub fn ethernet_payload(frame: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let header = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| LinkError::Truncated)?;
    let mut ether_type = header.ether_type();
    let mut rest = &frame[header.slice().len()..];
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
    }
}
