#!/usr/bin/env python3
"""Writes tests/data/sip_sctp.pcap: one SIP call over SCTP (RFC 4168) between two hosts, as a
tap on their link would see it, for the SCTP conformance test (no public SIP-over-SCTP capture
was found, and this machine's kernel has no SCTP to record one).

What it holds, on purpose:
- the association set-up (INIT, INIT ACK, COOKIE ECHO, COOKIE ACK) and SACKs;
- an INVITE with SDP sent as a user message fragmented in three DATA chunks (B, middle, E)
  in three packets, the middle one arriving last, and the first one retransmitted;
- 100 Trying bundled after a SACK; 180 Ringing and 200 OK bundled in one packet;
- ACK, then BYE and its 200 OK on another stream (stream 1);
- a Diameter-like DATA chunk (PPID 46) that is not SIP, and an unordered chunk;
- a REGISTER over IPv6 on a second association, fragmented in two chunks.
Checksums are correct CRC32c. The output depends on nothing but this script.

Usage: python3 tests/tshark/make_sip_sctp.py   (then regenerate.py for the TShark reference)
"""
import pathlib
import struct

OUT = pathlib.Path(__file__).resolve().parent.parent / "data" / "sip_sctp.pcap"
T0 = 1767225600  # 2026-01-01T00:00:00Z


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def chunk(kind, flags, value):
    c = struct.pack("!BBH", kind, flags, 4 + len(value)) + value
    return c + b"\0" * (-len(c) % 4)


def data(tsn, stream, ssn, payload, b=True, e=True, u=False, ppid=0):
    flags = (4 if u else 0) | (2 if b else 0) | (1 if e else 0)
    return chunk(0, flags, struct.pack("!IHHI", tsn, stream, ssn, ppid) + payload)


def sack(cum_tsn):
    return chunk(3, 0, struct.pack("!IIHH", cum_tsn, 65536, 0, 0))


def sctp(sport, dport, vtag, chunks):
    header = struct.pack("!HHII", sport, dport, vtag, 0)
    body = b"".join(chunks)
    crc = crc32c(header + body)
    # The CRC32c is stored little-endian (RFC 9260 appendix A).
    return header[:8] + struct.pack("<I", crc) + body


def ipv4_checksum(header):
    s = sum(struct.unpack("!10H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, payload, ident):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, 132, 0,
                         bytes(src), bytes(dst))
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return b"\x08\x00", header + payload


def ipv6(src, dst, payload):
    header = struct.pack("!IHBB16s16s", 0x60000000, len(payload), 132, 64, src, dst)
    return b"\x86\xdd", header + payload


def ether(ethertype_and_packet):
    ethertype, packet = ethertype_and_packet
    return b"\x00\x11\x22\x33\x44\x55" + b"\x00\x66\x77\x88\x99\xaa" + ethertype + packet


A = [192, 0, 2, 10]
B = [198, 51, 100, 20]
A6 = bytes.fromhex("20010db8000000000000000000000010")
B6 = bytes.fromhex("20010db8000000000000000000000020")
VTAG_A, VTAG_B = 0x1A2B3C4D, 0x5E6F7081
CALL = "4168-sctp-call@192.0.2.10"


def sip(first_line, cseq, extra="", body=""):
    via = "Via: SIP/2.0/SCTP 192.0.2.10:5060;branch=z9hG4bK-4168-" + cseq.split()[0]
    headers = [
        first_line, via, "Max-Forwards: 70",
        "From: \"Agent 12\" <sip:1012@pbx.example>;tag=a1",
        "To: <sip:5551234@carrier.example>" + (";tag=b2" if not first_line.startswith("INVITE") else ""),
        "Call-ID: " + CALL, "CSeq: " + cseq, "Contact: <sip:1012@192.0.2.10:5060;transport=sctp>",
    ]
    if extra:
        headers.append(extra)
    if body:
        headers.append("Content-Type: application/sdp")
    headers.append("Content-Length: %d" % len(body))
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


SDP = "\r\n".join([
    "v=0", "o=- 4168 1 IN IP4 192.0.2.10", "s=-", "c=IN IP4 192.0.2.10", "t=0 0",
    "m=audio 40000 RTP/AVP 8 0 101", "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=ptime:20", "a=sendrecv",
]) + "\r\n"
# Enough headers that the INVITE is worth fragmenting (as with many Record-Route entries).
ROUTES = "\r\n".join("Record-Route: <sip:proxy%d.carrier.example;lr;transport=sctp>" % i for i in range(24))
INVITE = sip("INVITE sip:5551234@carrier.example SIP/2.0", "1 INVITE", ROUTES, SDP)
TRYING = sip("SIP/2.0 100 Trying", "1 INVITE")
RINGING = sip("SIP/2.0 180 Ringing", "1 INVITE")
OK = sip("SIP/2.0 200 OK", "1 INVITE", "", SDP.replace("192.0.2.10", "198.51.100.20"))
ACK = sip("ACK sip:5551234@198.51.100.20 SIP/2.0", "1 ACK")
BYE = sip("BYE sip:5551234@198.51.100.20 SIP/2.0", "2 BYE")
BYE_OK = sip("SIP/2.0 200 OK", "2 BYE")
REGISTER = sip("REGISTER sip:pbx.example SIP/2.0", "1 REGISTER", "Expires: 3600\r\n" + ROUTES).replace(
    CALL.encode(), b"4168-sctp-register@2001:db8::10")
DIAMETER = bytes.fromhex("0100003c80000101000000000000000100000001") + b"\0" * 40


def main():
    frames = []

    def a_to_b(ms, chunks, ident):
        frames.append((ms, ether(ipv4(A, B, sctp(5060, 5060, VTAG_B, chunks), ident))))

    def b_to_a(ms, chunks, ident):
        frames.append((ms, ether(ipv4(B, A, sctp(5060, 5060, VTAG_A, chunks), ident))))

    init = struct.pack("!IIHHI", VTAG_A, 65536, 2, 2, 1000)
    frames.append((0, ether(ipv4(A, B, sctp(5060, 5060, 0, [chunk(1, 0, init)]), 1))))
    b_to_a(1, [chunk(2, 0, struct.pack("!IIHHI", VTAG_B, 65536, 2, 2, 5000) +
                     chunk(7, 0, b"cookie-4168"))], 1)
    a_to_b(2, [chunk(10, 0, b"cookie-4168")], 2)
    b_to_a(3, [chunk(11, 0, b"")], 2)
    # The INVITE in three fragments of about 600 bytes; the middle one arrives last.
    third = len(INVITE) // 3
    parts = [INVITE[:third], INVITE[third:2 * third], INVITE[2 * third:]]
    a_to_b(10, [data(1000, 0, 0, parts[0], b=True, e=False)], 3)
    a_to_b(11, [data(1002, 0, 0, parts[2], b=False, e=True)], 4)
    a_to_b(12, [data(1000, 0, 0, parts[0], b=True, e=False)], 5)  # retransmission
    a_to_b(13, [data(1001, 0, 0, parts[1], b=False, e=False)], 6)
    b_to_a(20, [sack(1002), data(5000, 0, 0, TRYING)], 3)
    b_to_a(500, [data(5001, 0, 1, RINGING), data(5002, 0, 2, OK)], 4)
    a_to_b(510, [sack(5002), data(1003, 0, 1, ACK)], 7)
    # Not SIP: a Diameter message (PPID 46), and an unordered chunk of it.
    a_to_b(600, [data(1004, 1, 0, DIAMETER, ppid=46), data(1005, 1, 0, DIAMETER, u=True, ppid=46)], 8)
    b_to_a(601, [sack(1005)], 5)
    b_to_a(5000, [data(5003, 1, 0, BYE.replace(b"From: \"Agent 12\" <sip:1012@pbx.example>;tag=a1",
                                               b"From: <sip:5551234@carrier.example>;tag=b2")
                                   .replace(b"To: <sip:5551234@carrier.example>;tag=b2",
                                            b"To: \"Agent 12\" <sip:1012@pbx.example>;tag=a1"))], 6)
    a_to_b(5001, [sack(5003), data(1006, 1, 1, BYE_OK)], 9)
    b_to_a(5002, [sack(1006)], 7)
    # A second association over IPv6: a REGISTER in two fragments.
    half = len(REGISTER) // 2
    frames.append((6000, ether(ipv6(A6, B6, sctp(5061, 5060, 0x77, [
        data(9000, 0, 0, REGISTER[:half], b=True, e=False)])))))
    frames.append((6001, ether(ipv6(A6, B6, sctp(5061, 5060, 0x77, [
        data(9001, 0, 0, REGISTER[half:], b=False, e=True)])))))

    with open(OUT, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ms, frame in frames:
            secs, usecs = T0 + ms // 1000, (ms % 1000) * 1000
            f.write(struct.pack("<IIII", secs, usecs, len(frame), len(frame)) + frame)
    print(f"{OUT}: {len(frames)} frames")


if __name__ == "__main__":
    main()
