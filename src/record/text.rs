//! How a record writes the values it holds as text: a transport address (`ip:port`, as
//! `SocketAddr`'s `Display` writes it) and an SSRC (`0x` and eight upper-case hex digits).
//!
//! Every call record carries two addresses and each of its streams two more and an SSRC;
//! through `to_string`/`format!` each cost ~1,700 instructions of formatting machinery
//! (callgrind, docs/performance.md). These write the same text directly; IPv6 keeps std's
//! `Display` (its RFC 5952 compression is not worth repeating). The tests hold them to std's
//! output.

use std::net::{Ipv4Addr, SocketAddr};

/// `ip:port` (IPv4) or `[ip]:port` (IPv6), exactly as `addr.to_string()` writes it.
pub fn socket_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => {
            let mut text = String::with_capacity(21);
            push_ipv4(&mut text, *v4.ip());
            text.push(':');
            push_decimal(&mut text, v4.port());
            text
        }
        SocketAddr::V6(_) => addr.to_string(),
    }
}

/// An SSRC as `0x` and eight upper-case hex digits, as `format!("0x{ssrc:08X}")`.
pub fn ssrc(ssrc: u32) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut text = String::with_capacity(10);
    text.push_str("0x");
    for shift in (0..8).rev() {
        text.push(char::from(DIGITS[(ssrc >> (shift * 4)) as usize & 0xf]));
    }
    text
}

fn push_ipv4(text: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        push_decimal(text, u16::from(octet));
    }
}

/// A number in decimal, without leading zeros.
fn push_decimal(text: &mut String, value: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        text.push(char::from(digit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        let ports = [0u16, 1, 9, 10, 99, 100, 5060, 9999, 10000, 65535];
        let octets = [0u8, 1, 9, 10, 99, 100, 199, 200, 255];
        for &a in &octets {
            for &b in &octets {
                for &port in &ports {
                    let addr = SocketAddr::from(([a, b, 255 - a, b / 3], port));
                    assert_eq!(socket_addr(addr), addr.to_string());
                }
            }
        }
        for (ip, port) in [
            (Ipv6Addr::LOCALHOST, 5060),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 65535),
            (Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(), 0),
        ] {
            let addr = SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0));
            assert_eq!(socket_addr(addr), addr.to_string());
        }
    }

    #[test]
    fn ssrcs_are_written_as_format_writes_them() {
        for value in [0, 1, 0xa, 0xdead_beef, 0x0123_4567, u32::MAX, 0x8000_0000] {
            assert_eq!(ssrc(value), format!("0x{value:08X}"));
        }
    }
}
