//! Tunnel encapsulations that switch mirrors and cloud taps wrap traffic in: GRE (RFC 2784/2890)
//! including transparent Ethernet bridging and ERSPAN types I–III, VXLAN (RFC 7348) and Geneve
//! (RFC 8926, which AWS Gateway Load Balancer and other cloud appliances use, carrying either
//! Ethernet frames or bare IP packets). IP-in-IP needs no header of its own and is handled by
//! the IP layer.

/// What a tunnel header says is inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inner<'a> {
    /// An Ethernet frame (GRE 0x6558, ERSPAN, VXLAN, Geneve 0x6558).
    Ethernet(&'a [u8]),
    /// An IPv4 or IPv6 packet.
    Ip(&'a [u8]),
}

/// Why a tunnel header was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel header truncated")]
    Truncated,
    #[error("unsupported GRE version or protocol")]
    Unsupported,
}

/// UDP port VXLAN is assigned (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;
/// UDP port Geneve is assigned (RFC 8926 §3.3).
pub const GENEVE_PORT: u16 = 6081;

/// Decodes a GRE header and returns what it carries.
pub fn gre(data: &[u8]) -> Result<Inner<'_>, TunnelError> {
    let header = data.get(..4).ok_or(TunnelError::Truncated)?;
    let flags = u16::from_be_bytes([header[0], header[1]]);
    let protocol = u16::from_be_bytes([header[2], header[3]]);
    // Version 1 is PPTP's enhanced GRE; the routing bit is long deprecated (RFC 2784).
    if flags & 0x0007 != 0 || flags & 0x4000 != 0 {
        return Err(TunnelError::Unsupported);
    }
    let has_sequence = flags & 0x1000 != 0;
    let options = [0x8000u16, 0x2000, 0x1000]
        .iter()
        .filter(|bit| flags & **bit != 0)
        .count();
    let payload = data.get(4 + 4 * options..).ok_or(TunnelError::Truncated)?;
    match protocol {
        0x6558 => Ok(Inner::Ethernet(payload)),
        0x0800 | 0x86DD => Ok(Inner::Ip(payload)),
        // ERSPAN type II has an 8-byte header and always sets the GRE sequence bit; type I has
        // neither and carries the mirrored frame directly.
        0x88BE if has_sequence => payload
            .get(8..)
            .map(Inner::Ethernet)
            .ok_or(TunnelError::Truncated),
        0x88BE => Ok(Inner::Ethernet(payload)),
        // ERSPAN type III: 12-byte header, plus an 8-byte platform subheader when the O bit is set.
        0x22EB => {
            let header = payload.get(..12).ok_or(TunnelError::Truncated)?;
            let skip = if header[11] & 0x01 != 0 { 20 } else { 12 };
            payload
                .get(skip..)
                .map(Inner::Ethernet)
                .ok_or(TunnelError::Truncated)
        }
        _ => Err(TunnelError::Unsupported),
    }
}

/// Decodes a VXLAN header (the UDP payload) and returns the inner Ethernet frame, or `None`
/// when the I flag is not set (then it is not VXLAN after all).
pub fn vxlan(udp_payload: &[u8]) -> Option<&[u8]> {
    let header = udp_payload.get(..8)?;
    (header[0] & 0x08 != 0).then(|| &udp_payload[8..])
}

/// Decodes a Geneve header (the UDP payload, RFC 8926 §3.4) and returns what it carries, or
/// `None` when it is not a version-0 Geneve header with a protocol type this decoder follows
/// (then the datagram is read as any other). The options are skipped by their length (in
/// 4-byte words, the 6 low bits of the first byte); control (O bit) packets are followed
/// too, as TShark does.
pub fn geneve(udp_payload: &[u8]) -> Option<Inner<'_>> {
    let header = udp_payload.get(..8)?;
    if header[0] >> 6 != 0 {
        return None;
    }
    let length = 8 + 4 * usize::from(header[0] & 0x3F);
    let inner = udp_payload.get(length..)?;
    match u16::from_be_bytes([header[2], header[3]]) {
        0x6558 => Some(Inner::Ethernet(inner)),
        0x0800 | 0x86DD => Some(Inner::Ip(inner)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gre_with_key_carries_ethernet() {
        let data = [0x20, 0x00, 0x65, 0x58, 0, 0, 0, 7, 0xAA];
        assert_eq!(gre(&data), Ok(Inner::Ethernet(&[0xAA][..])));
    }

    #[test]
    fn erspan_type_two_skips_its_header() {
        let mut data = vec![0x10, 0x00, 0x88, 0xBE, 0, 0, 0, 1];
        data.extend_from_slice(&[0x10, 0, 0, 0, 0, 0, 0, 0, 0xBB]);
        assert_eq!(gre(&data), Ok(Inner::Ethernet(&[0xBB][..])));
    }

    #[test]
    fn truncated_and_unknown_gre() {
        assert_eq!(gre(&[0x80, 0x00, 0x08, 0x00]), Err(TunnelError::Truncated));
        assert_eq!(
            gre(&[0x00, 0x01, 0x08, 0x00]),
            Err(TunnelError::Unsupported)
        );
    }

    #[test]
    fn geneve_skips_its_options_and_carries_ethernet_or_ip() {
        // Version 0, two words of options, Ethernet, VNI 123; one option of one word.
        let mut data = vec![0x02, 0x00, 0x65, 0x58, 0, 0, 123, 0];
        data.extend_from_slice(&[0x01, 0x03, 0x80, 0x01, 0, 0, 0, 0, 0xDD]);
        assert_eq!(geneve(&data), Some(Inner::Ethernet(&[0xDD][..])));
        // AWS Gateway Load Balancer: bare IPv4 behind three words of options.
        let mut data = vec![0x03, 0x00, 0x08, 0x00, 0, 0, 1, 0];
        data.extend_from_slice(&[0; 12]);
        data.push(0x45);
        assert_eq!(geneve(&data), Some(Inner::Ip(&[0x45][..])));
        // Options longer than the datagram, another version, another protocol: not followed.
        assert_eq!(geneve(&[0x3F, 0, 0x65, 0x58, 0, 0, 0, 0, 1, 2]), None);
        assert_eq!(geneve(&[0x40, 0, 0x65, 0x58, 0, 0, 0, 0, 1, 2]), None);
        assert_eq!(geneve(&[0x00, 0, 0x88, 0x47, 0, 0, 0, 0, 1, 2]), None);
        assert_eq!(geneve(&[0x00, 0, 0x65]), None);
    }

    #[test]
    fn vxlan_requires_i_flag() {
        assert_eq!(vxlan(&[0x08, 0, 0, 0, 0, 0, 1, 0, 0xCC]), Some(&[0xCC][..]));
        assert_eq!(vxlan(&[0x00, 0, 0, 0, 0, 0, 1, 0, 0xCC]), None);
    }
}
