#!/usr/bin/env python3
"""Hostile traffic for scripts/attack-campaign.sh (a campaign tool, not CI).

    attack-traffic.py ATTACK SECONDS [IFACE] [HEP_UDP_PORT] [HEP_TCP_PORT]

Capture attacks write raw Ethernet frames on IFACE (AF_PACKET; the daemon captures the veth
peer); HEP attacks go to the daemon's HEP listener on 127.0.0.1. `call-capture` and
`call-hep` place one real call (INVITE with SDP, 180, 200, ACK, 3 s of RTP both ways, BYE,
200; Call-ID real-call-<n>@attack.test) by the same path, for the campaign to find its record.
Runs for SECONDS, as fast as one Python process sends; prints what it sent.
"""

import os
import random
import socket
import struct
import sys
import time

ATTACK = sys.argv[1]
SECONDS = float(sys.argv[2])
IFACE = sys.argv[3] if len(sys.argv) > 3 else "tg0"
HEP_UDP = int(sys.argv[4]) if len(sys.argv) > 4 else 9060
HEP_TCP = int(sys.argv[5]) if len(sys.argv) > 5 else 9061

MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload, ident=0, frag=0):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def udp(src, sport, dst, dport, payload):
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def tcp(src, sport, dst, dport, seq, payload, flags=0x18, ack=0):
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    return ipv4(src, dst, 6, seg)


def eth(ip):
    return MAC_B + MAC_A + b"\x08\x00" + ip


def rand_ip():
    return "10.%d.%d.%d" % (random.randrange(256), random.randrange(256), random.randrange(1, 255))


def sip(start, call_id, cseq, method, body=b"", extra=""):
    head = (f"{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{random.getrandbits(40):x}\r\n"
            f"From: <sip:a@attack.test>;tag={random.getrandbits(32):x}\r\nTo: <sip:b@attack.test>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:a@10.0.0.1>\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def sdp(ip, port, lines=1, attr=0):
    body = f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    for i in range(lines):
        body += f"m=audio {port + 2 * i} RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\n"
    if attr:
        body += "a=x-junk:" + "A" * attr + "\r\n"
    return body.encode()


def rtp(ssrc, seq, ts, pt=8):
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + b"\xd5" * 160


# ---- HEP v3 -----------------------------------------------------------------------------

def chunk(kind, value):
    return struct.pack("!HHH", 0, kind, 6 + len(value)) + value


def hep(payload, src="10.0.0.1", dst="10.0.0.2", sport=5060, dport=5060, proto_type=1, when=None):
    when = time.time() if when is None else when
    body = (chunk(1, b"\x02") + chunk(2, b"\x11") + chunk(3, socket.inet_aton(src))
            + chunk(4, socket.inet_aton(dst)) + chunk(7, struct.pack("!H", sport))
            + chunk(8, struct.pack("!H", dport)) + chunk(9, struct.pack("!I", int(when)))
            + chunk(10, struct.pack("!I", int((when % 1) * 1e6))) + chunk(11, bytes([proto_type]))
            + chunk(12, struct.pack("!I", 1)) + chunk(15, payload))
    return b"HEP3" + struct.pack("!H", 6 + len(body)) + body


# ---- the real call ----------------------------------------------------------------------

def real_call(send_sip, send_rtp, n):
    cid = f"real-call-{n}@attack.test"
    a, b = ("192.0.2.10", 5060), ("192.0.2.20", 5060)
    ftag, ttag = "realfrom", "realto"
    def msg(start, cseq, method, body=b"", to_tag=True):
        to = f"<sip:agent@attack.test>" + (f";tag={ttag}" if to_tag else "")
        m = (f"{start}\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{method}{cseq}\r\n"
             f"From: <sip:caller@attack.test>;tag={ftag}\r\nTo: {to}\r\nCall-ID: {cid}\r\n"
             f"CSeq: {cseq} {method}\r\nContact: <sip:x@192.0.2.10>\r\n"
             + ("Content-Type: application/sdp\r\n" if body else "")
             + f"Content-Length: {len(body)}\r\n\r\n")
        return m.encode() + body
    send_sip(a, b, msg("INVITE sip:agent@attack.test SIP/2.0", 1, "INVITE", sdp("192.0.2.10", 40000), False))
    time.sleep(0.05)
    send_sip(b, a, msg("SIP/2.0 180 Ringing", 1, "INVITE"))
    time.sleep(0.5)
    send_sip(b, a, msg("SIP/2.0 200 OK", 1, "INVITE", sdp("192.0.2.20", 50000)))
    send_sip(a, b, msg("ACK sip:agent@attack.test SIP/2.0", 1, "ACK"))
    start = time.time()
    seq = 0
    while time.time() - start < 3.0:
        send_rtp(("192.0.2.10", 40000), ("192.0.2.20", 50000), rtp(0x1111, seq, seq * 160))
        send_rtp(("192.0.2.20", 50000), ("192.0.2.10", 40000), rtp(0x2222, seq, seq * 160))
        seq += 1
        time.sleep(max(0.0, start + seq * 0.02 - time.time()))
    send_sip(a, b, msg("BYE sip:agent@attack.test SIP/2.0", 2, "BYE"))
    send_sip(b, a, msg("SIP/2.0 200 OK", 2, "BYE"))
    return seq


def main():
    end = time.time() + SECONDS
    sent = 0
    if ATTACK.startswith("hep-") or ATTACK == "call-hep":
        hep_attack(end)
        return
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind((IFACE, 0))
    send = lambda ip: raw.send(eth(ip))
    if ATTACK == "call-capture":
        n = int(os.environ.get("CALL_N", "1"))
        pkts = real_call(lambda s, d, m: send(udp(s[0], s[1], d[0], d[1], m)),
                         lambda s, d, p: send(udp(s[0], s[1], d[0], d[1], p)), n)
        print(f"real call {n}: {pkts} RTP packets each way")
        return
    seq = 0
    while time.time() < end:
        for _ in range(200):
            seq += 1
            src, dst = rand_ip(), rand_ip()
            cid = f"{random.getrandbits(64):x}@flood"
            if ATTACK == "invite":
                send(udp(src, 5060, dst, 5060, sip("INVITE sip:b@x SIP/2.0", cid, 1, "INVITE",
                                                   sdp(src, random.randrange(1024, 65000, 2)),
                                                   "Content-Type: application/sdp\r\n")))
            elif ATTACK == "options":
                send(udp(src, 5060, dst, 5060, sip("OPTIONS sip:b@x SIP/2.0", cid, 1, "OPTIONS")))
            elif ATTACK == "register":
                send(udp(src, 5060, dst, 5060, sip("REGISTER sip:x SIP/2.0", cid, 1, "REGISTER")))
            elif ATTACK == "responses":
                send(udp(src, 5060, dst, 5060, sip("SIP/2.0 200 OK", cid, 1, "INVITE")))
            elif ATTACK == "indialog":
                m = random.choice(["BYE", "ACK", "INFO", "UPDATE", "PRACK"])
                send(udp(src, 5060, dst, 5060, sip(f"{m} sip:b@x SIP/2.0", cid, 2, m,
                                                   extra="")).replace(b"To: <sip:b@attack.test>",
                                                                      b"To: <sip:b@attack.test>;tag=x"))
            elif ATTACK == "rtp":
                send(udp(src, random.randrange(1024, 65535), dst, random.randrange(1024, 65535),
                         rtp(random.getrandbits(32), seq, seq * 160)))
            elif ATTACK == "rtcp":
                ssrc = random.getrandbits(32)
                rr = struct.pack("!BBHI", 0x81, 201, 7, ssrc) + struct.pack("!IIIIII", random.getrandbits(32), 0, 0, 0, 0, 0)
                send(udp(src, random.randrange(1025, 65535, 2), dst, random.randrange(1025, 65535, 2), rr))
            elif ATTACK == "sdp-huge":
                body = sdp(src, 20000, lines=random.choice([400, 1]), attr=random.choice([0, 30000]))
                m = sip("INVITE sip:b@x SIP/2.0", cid, 1, "INVITE", body, "Content-Type: application/sdp\r\n")
                # Over 1480 bytes: sent in IP fragments, as a real sender would.
                frags = fragment(udp(src, 5060, dst, 5060, m)[20:], src, dst, seq & 0xFFFF)
                for f in frags:
                    send(f)
            elif ATTACK == "frag":
                kind = seq % 3
                if kind == 0:  # first fragment of a datagram that never completes
                    send(ipv4(src, dst, 17, os.urandom(1480), ident=seq & 0xFFFF, frag=0x2000))
                elif kind == 1:  # overlapping fragments
                    send(ipv4(src, dst, 17, os.urandom(1480), ident=seq & 0xFFFF, frag=0x2000 | 10))
                    send(ipv4(src, dst, 17, os.urandom(800), ident=seq & 0xFFFF, frag=0x2000 | 50))
                else:  # a fragment claiming the top of a 64 KiB datagram
                    send(ipv4(src, dst, 17, os.urandom(1200), ident=seq & 0xFFFF, frag=0x2000 | 8000))
            elif ATTACK == "tcp-headers":
                # Endless headers and never-ending bodies, in tiny segments, on many flows.
                sport = 1024 + seq % 4000
                state = tcp_state.setdefault(sport, [1000, 0])
                if state[1] == 0:
                    data = b"INVITE sip:b@x SIP/2.0\r\nContent-Length: 99999999\r\n"
                else:
                    data = random.choice([b"X-A: " + b"b" * 30 + b"\r\n", b"x" * 7])
                send(tcp("10.9.0.1", sport, "10.9.0.2", 5060, state[0], data))
                state[0] += len(data)
                state[1] += 1
            elif ATTACK == "tcp-halfopen":
                send(tcp(src, random.randrange(1024, 65535), dst, 5060, random.getrandbits(32), b"", flags=0x02))
                send(tcp(src, random.randrange(1024, 65535), dst, 5060, random.getrandbits(32),
                         b"INVITE sip:b@x SIP/2.0\r\nVia: x\r\n"))
            elif ATTACK == "turn":
                chan = 0x4000 + random.randrange(0x3FFF)
                data = struct.pack("!HH", chan, 172) + rtp(random.getrandbits(32), seq, seq * 160)
                send(udp(src, 3478, dst, random.randrange(1024, 65535), data))
            else:
                sys.exit(f"unknown attack {ATTACK}")
            sent += 1
    print(f"{ATTACK}: {sent} sent")


tcp_state = {}


def fragment(payload, src, dst, ident):
    out, off = [], 0
    while off < len(payload):
        part = payload[off:off + 1480]
        more = 0x2000 if off + len(part) < len(payload) else 0
        out.append(ipv4(src, dst, 17, part, ident=ident, frag=more | (off // 8)))
        off += len(part)
    return out


def hep_attack(end):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", HEP_UDP)
    if ATTACK == "call-hep":
        n = int(os.environ.get("CALL_N", "1"))
        pkts = real_call(lambda s, d, m: u.sendto(hep(m, s[0], d[0], s[1], d[1]), target),
                         lambda s, d, p: None, n)
        print(f"real call {n} over HEP (SIP only)")
        return
    sent = 0
    conns = []
    while time.time() < end:
        if ATTACK == "hep-udp-invite":
            cid = f"{random.getrandbits(64):x}@flood"
            u.sendto(hep(sip("INVITE sip:b@x SIP/2.0", cid, 1, "INVITE", sdp(rand_ip(), 30000),
                             "Content-Type: application/sdp\r\n"), rand_ip(), rand_ip()), target)
        elif ATTACK == "hep-udp-malformed":
            kind = sent % 4
            if kind == 0:  # the frame's length lies
                f = bytearray(hep(b"x" * 100)); f[4:6] = struct.pack("!H", 60000); u.sendto(bytes(f), target)
            elif kind == 1:  # a chunk's length lies
                f = bytearray(hep(b"x" * 100)); f[10:12] = struct.pack("!H", 5000); u.sendto(bytes(f), target)
            elif kind == 2:  # an endless list of empty chunks
                body = chunk(0x20, b"") * 10000
                u.sendto(b"HEP3" + struct.pack("!H", 6 + len(body)) + body, target)
            else:  # a huge payload
                u.sendto(hep(os.urandom(60000)), target)
        elif ATTACK == "hep-tcp-slowloris":
            # Many clients, each sending a frame header promising 65,535 bytes, one byte at a time.
            while len(conns) < 400:
                try:
                    s = socket.create_connection(("127.0.0.1", HEP_TCP), timeout=1)
                    s.setblocking(False)
                    conns.append(s)
                except OSError:
                    break
            for s in list(conns):
                try:
                    s.send(b"HEP3\xff\xff"[random.randrange(6):][:1] or b"x")
                except OSError:
                    conns.remove(s)
                    s.close()
            time.sleep(0.2)
        elif ATTACK == "hep-tcp-many":
            # Many clients at once, each streaming valid frames of flood INVITEs.
            while len(conns) < 300:
                try:
                    conns.append(socket.create_connection(("127.0.0.1", HEP_TCP), timeout=1))
                except OSError:
                    break
            for s in list(conns):
                cid = f"{random.getrandbits(64):x}@flood"
                try:
                    s.sendall(hep(sip("OPTIONS sip:b@x SIP/2.0", cid, 1, "OPTIONS")))
                except OSError:
                    conns.remove(s)
                    s.close()
        elif ATTACK == "hep-tcp-garbage":
            if not conns:
                conns.append(socket.create_connection(("127.0.0.1", HEP_TCP)))
            try:
                conns[0].sendall(os.urandom(65536))
            except OSError:
                conns.clear()
        else:
            sys.exit(f"unknown attack {ATTACK}")
        sent += 1
    print(f"{ATTACK}: {sent} rounds")


if __name__ == "__main__":
    main()
