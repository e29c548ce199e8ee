#!/usr/bin/env python3
"""Writes tests/data/rtp_over_tcp_and_turn.pcap (deterministic: the same bytes every run).

Media teledge counts but does not measure, as TShark 4.0 does not with its default
preferences (README "How it is checked"; tests/data/README.md has TShark's output):
- call `tcp-rtp@x`: offer and answer announce `m=audio ... TCP/RTP/AVP 0` (RFC 4571 framing,
  RFC 4145 setup); then one TCP connection carries 50 RTP packets each way, each behind its
  16-bit length;
- call `bfcp@x`: audio `RTP/AVP` beside a `UDP/BFCP` line (which the sdp crate refused,
  losing the audio line with it); 50 PCMU packets each way over UDP;
- a TURN allocation (client 10.0.0.1:50001, server 10.0.0.9:3478): a Binding request and
  success, 20 ChannelData messages with RTP each way, 3 Send indications with RTP and
  2 Data indications with RTCP receiver reports;
- TURN over TCP (client 10.0.0.1:50002, server 10.0.0.9:3478): the handshake, an Allocate
  request and success, then 6 ChannelData messages with RTP, the last two in one segment.

usage: make_unmeasured_media.py OUT.pcap
"""
import struct
import sys


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return (~s) & 0xFFFF


def ip4(src, dst, proto, payload, ident):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, 64, proto, 0,
                    bytes(src), bytes(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def udp(src, dst, sp, dp, data):
    u = struct.pack("!HHHH", sp, dp, 8 + len(data), 0) + data
    c = csum(bytes(src) + bytes(dst) + struct.pack("!BBH", 0, 17, len(u)) + u) or 0xFFFF
    return u[:6] + struct.pack("!H", c) + u[8:]


def tcp(src, dst, sp, dp, seq, ack, flags, data=b""):
    t = struct.pack("!HHIIBBHHH", sp, dp, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    c = csum(bytes(src) + bytes(dst) + struct.pack("!BBH", 0, 6, len(t)) + t)
    return t[:16] + struct.pack("!H", c) + t[18:]


A, B, TURN = [10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 9]
frames = []
clock = [1_700_000_000_000_000]  # microseconds
ident = [0]


def add(src, dst, proto, payload, dt_us=1000):
    clock[0] += dt_us
    ident[0] += 1
    eth = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00"
    frames.append((clock[0], eth + ip4(src, dst, proto, payload, ident[0])))


def sip(first, call, cseq, body=b"", to_tag=""):
    head = (f"{first}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{call}{cseq}\r\n"
            f"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>{to_tag}\r\nCall-ID: {call}\r\n"
            f"CSeq: {cseq}\r\nContact: <sip:a@10.0.0.1>\r\n")
    if body:
        head += "Content-Type: application/sdp\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def sdp(ip, lines):
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n" + lines).encode()


def dialog(call, offer, answer, media):
    """INVITE / 200 / ACK, then `media()`, then BYE / 200 (UDP 5060 between A and B)."""
    invite = sip("INVITE sip:b@10.0.0.2 SIP/2.0", call, "1 INVITE", offer)
    add(A, B, 17, udp(A, B, 5060, 5060, invite))
    ok = sip("SIP/2.0 200 OK", call, "1 INVITE", answer, ";tag=2")
    add(B, A, 17, udp(B, A, 5060, 5060, ok))
    add(A, B, 17, udp(A, B, 5060, 5060, sip("ACK sip:b@10.0.0.2 SIP/2.0", call, "1 ACK",
                                            to_tag=";tag=2")))
    media()
    add(A, B, 17, udp(A, B, 5060, 5060, sip("BYE sip:b@10.0.0.2 SIP/2.0", call, "2 BYE",
                                            to_tag=";tag=2")))
    add(B, A, 17, udp(B, A, 5060, 5060, sip("SIP/2.0 200 OK", call, "2 BYE", to_tag=";tag=2")))


def rtp(seq, ts, ssrc, pt=0):
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + b"\xff" * 160


def tcp_media():
    sa, sb = 1000, 5000
    add(A, B, 6, tcp(A, B, 50000, 40000, sa, 0, 0x02))
    sa += 1
    add(B, A, 6, tcp(B, A, 40000, 50000, sb, sa, 0x12))
    sb += 1
    add(A, B, 6, tcp(A, B, 50000, 40000, sa, sb, 0x10))
    for i in range(50):
        data = rtp(100 + i, 160 * i, 0x11111111)
        data = struct.pack("!H", len(data)) + data
        add(A, B, 6, tcp(A, B, 50000, 40000, sa, sb, 0x18, data), 0 if i == 0 else 20000)
        sa += len(data)
        data = rtp(700 + i, 160 * i, 0x22222222)
        data = struct.pack("!H", len(data)) + data
        add(B, A, 6, tcp(B, A, 40000, 50000, sb, sa, 0x18, data), 10)
        sb += len(data)


def udp_media():
    for i in range(50):
        add(A, B, 17, udp(A, B, 20000, 30000, rtp(1 + i, 160 * i, 0x33333333)), 20000)
        add(B, A, 17, udp(B, A, 30000, 20000, rtp(9 + i, 160 * i, 0x44444444)), 10)


COOKIE = bytes([0x21, 0x12, 0xA4, 0x42])


def stun(kind, tid, attrs):
    body = b""
    for t, v in attrs:
        body += struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)
    return struct.pack("!HH", kind, len(body)) + COOKIE + tid + body


def turn():
    client, server = (A, 50001), (TURN, 3478)
    tid = bytes(range(12))
    peer = struct.pack("!HH4s", 0x0001, 6000 ^ 0x2112, bytes(a ^ b for a, b in zip([10, 0, 0, 5], COOKIE)))
    add(A, TURN, 17, udp(A, TURN, 50001, 3478, stun(0x0001, tid, [])))
    xor_mapped = struct.pack("!HH4s", 0x0001, 50001 ^ 0x2112, bytes(a ^ b for a, b in zip(A, COOKIE)))
    add(TURN, A, 17, udp(TURN, A, 3478, 50001, stun(0x0101, tid, [(0x0020, xor_mapped)])))
    for i in range(20):
        r = rtp(300 + i, 160 * i, 0x55555555)
        add(A, TURN, 17, udp(A, TURN, 50001, 3478, struct.pack("!HH", 0x4001, len(r)) + r), 20000)
        r = rtp(900 + i, 160 * i, 0x66666666)
        add(TURN, A, 17, udp(TURN, A, 3478, 50001, struct.pack("!HH", 0x4001, len(r)) + r), 10)
    for i in range(3):
        r = rtp(320 + i, 160 * (20 + i), 0x55555555)
        send = stun(0x0016, bytes([i]) * 12, [(0x0012, peer), (0x0013, r)])
        add(A, TURN, 17, udp(A, TURN, 50001, 3478, send), 20000)
    for i in range(2):
        rr = struct.pack("!BBHI", 0x81, 201, 7, 0x66666666) + struct.pack("!IIIIII", 0x55555555, 0, 320 + i, 0, 0, 0)
        data = stun(0x0017, bytes([9 - i]) * 12, [(0x0012, peer), (0x0013, rr)])
        add(TURN, A, 17, udp(TURN, A, 3478, 50001, data), 1000)


def turn_tcp():
    sa, sb = 7000, 9000
    add(A, TURN, 6, tcp(A, TURN, 50002, 3478, sa, 0, 0x02))
    sa += 1
    add(TURN, A, 6, tcp(TURN, A, 3478, 50002, sb, sa, 0x12))
    sb += 1
    add(A, TURN, 6, tcp(A, TURN, 50002, 3478, sa, sb, 0x10))
    allocate = stun(0x0003, bytes([7]) * 12, [(0x0019, bytes([17, 0, 0, 0]))])
    add(A, TURN, 6, tcp(A, TURN, 50002, 3478, sa, sb, 0x18, allocate))
    sa += len(allocate)
    relayed = struct.pack("!HH4s", 0x0001, 49152 ^ 0x2112, bytes(a ^ b for a, b in zip(TURN, COOKIE)))
    success = stun(0x0103, bytes([7]) * 12, [(0x0016, relayed)])
    add(TURN, A, 6, tcp(TURN, A, 3478, 50002, sb, sa, 0x18, success))
    sb += len(success)
    messages = []
    for i in range(6):
        r = rtp(500 + i, 160 * i, 0x77777777)
        m = struct.pack("!HH", 0x4002, len(r)) + r
        messages.append(m + b"\0" * (-len(m) % 4))
    for segment in messages[:4] + [messages[4] + messages[5]]:
        add(A, TURN, 6, tcp(A, TURN, 50002, 3478, sa, sb, 0x18, segment), 20000)
        sa += len(segment)


tcp_line = "m=audio {} TCP/RTP/AVP 0\r\na=setup:{}\r\na=connection:new\r\na=rtpmap:0 PCMU/8000\r\n"
dialog("tcp-rtp@x", sdp("10.0.0.1", tcp_line.format(9, "active")),
       sdp("10.0.0.2", tcp_line.format(40000, "passive")), tcp_media)
bfcp = "m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\nm=application {} UDP/BFCP *\r\n"
dialog("bfcp@x", sdp("10.0.0.1", bfcp.format(20000, 20010)),
       sdp("10.0.0.2", bfcp.format(30000, 30010)), udp_media)
turn()
turn_tcp()

out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
for us, f in frames:
    out += struct.pack("<IIII", us // 1_000_000, us % 1_000_000, len(f), len(f)) + f
open(sys.argv[1], "wb").write(out)
