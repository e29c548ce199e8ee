//! TURN relay framing (RFC 8656), recognised so that media relayed through a TURN server is
//! counted as such, not as "other" datagrams: a ChannelData message (channel number
//! 0x4000–0x4FFF, a 16-bit length, the data) or a STUN Send or Data indication (RFC 8656
//! §10–11: message type 0x0016 / 0x0017, the magic cookie, a DATA attribute 0x0013).
//!
//! teledge does not measure what TURN relays: TShark 4.0 does not either with its default
//! preferences (it hands the relayed bytes to heuristic dissectors only, so `-z rtp,streams`
//! lists them only with `rtp.heuristic_rtp` on, under the relay's addresses). README
//! "How it is checked" says what is counted instead.

/// STUN's magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// Send and Data indications (RFC 8656 §18.1 method 0x006, indication class).
const SEND_INDICATION: u16 = 0x0016;
const DATA_INDICATION: u16 = 0x0017;
/// The DATA attribute (RFC 8656 §18.4).
const DATA: u16 = 0x0013;
/// Attributes looked at before giving up on finding DATA (a bound for hostile input).
const MAX_ATTRIBUTES: usize = 32;

/// The application data a TURN client and server relay in `payload` (one UDP datagram, or
/// one message of a TCP stream), or `None` when it is not relayed data.
pub fn relayed(payload: &[u8]) -> Option<&[u8]> {
    let header = payload.first_chunk::<4>()?;
    let first = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if (0x4000..=0x4FFF).contains(&first) {
        // ChannelData (RFC 8656 §12.4): over UDP the datagram may carry padding after it.
        return payload.get(4..4 + length);
    }
    if first != SEND_INDICATION && first != DATA_INDICATION {
        return None;
    }
    if payload.get(4..8)? != MAGIC_COOKIE || length % 4 != 0 {
        return None;
    }
    let mut attributes = payload.get(20..20 + length)?;
    for _ in 0..MAX_ATTRIBUTES {
        let head = attributes.first_chunk::<4>()?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = attributes.get(4..4 + len)?;
        if kind == DATA {
            return Some(value);
        }
        attributes = attributes.get((4 + len).next_multiple_of(4)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indication(kind: u16, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attributes {
            body.extend(t.to_be_bytes());
            body.extend((v.len() as u16).to_be_bytes());
            body.extend(*v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut out = kind.to_be_bytes().to_vec();
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(MAGIC_COOKIE);
        out.extend([7; 12]);
        out.extend(body);
        out
    }

    #[test]
    fn channel_data_and_indications_give_their_data() {
        let rtp = [0x80u8, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xFF];
        let mut channel = vec![0x40, 0x01, 0, rtp.len() as u8];
        channel.extend(rtp);
        channel.extend([0, 0, 0]); // padding to 4 bytes
        assert_eq!(relayed(&channel), Some(&rtp[..]));
        // XOR-PEER-ADDRESS (0x0012) then DATA.
        let data = indication(
            DATA_INDICATION,
            &[(0x0012, &[0, 1, 2, 3, 4, 5, 6, 7]), (DATA, &rtp)],
        );
        assert_eq!(relayed(&data), Some(&rtp[..]));
        let send = indication(SEND_INDICATION, &[(DATA, &rtp)]);
        assert_eq!(relayed(&send), Some(&rtp[..]));
        // Not relayed data: a Binding request, an indication without DATA, RTP itself, a
        // ChannelData shorter than it says, a cut indication, nothing.
        assert_eq!(relayed(&indication(0x0001, &[(DATA, &rtp)])), None);
        assert_eq!(
            relayed(&indication(DATA_INDICATION, &[(0x0012, &[0; 8])])),
            None
        );
        assert_eq!(relayed(&rtp), None);
        assert_eq!(relayed(&channel[..10]), None);
        assert_eq!(relayed(&data[..data.len() - 4]), None);
        assert_eq!(relayed(&[]), None);
    }
}
