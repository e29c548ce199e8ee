#!/usr/bin/env python3
"""The IPv6 variant of a capture (2026-12-03 campaign): every unfragmented IPv4 UDP/TCP
packet becomes IPv6, a.b.c.d mapped to 2001:db8::a.b.c.d; SDP `IN IP4 a.b.c.d` becomes
`IN IP6 <mapped>` (compressed, or `full` for the exploded form), Content-Length and
checksums fixed. usage: ipv6_variant.py IN OUT [compressed|full]"""
import ipaddress
import pathlib
import re
import struct
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from derive_variants import read_pcap, ip_of, eth, write_pcap  # noqa: E402

style = sys.argv[3] if len(sys.argv) > 3 else "compressed"

def m6(a):
    a = bytes(a)
    addr = ipaddress.IPv6Address(b"\x20\x01\x0d\xb8" + b"\0" * 8 + a)
    return addr.exploded if style == "full" else str(addr)

def m6b(a):
    return b"\x20\x01\x0d\xb8" + b"\0" * 8 + bytes(a)

def fix_sip(payload):
    if b"IN IP4 " not in payload:
        return payload
    head, sep, body = payload.partition(b"\r\n\r\n")
    body2 = re.sub(rb"IN IP4 (\d+\.\d+\.\d+\.\d+)", lambda m: b"IN IP6 " + m6(ipaddress.IPv4Address(m.group(1).decode()).packed).encode(), body)
    head2 = re.sub(rb"(?im)^(Content-Length|l)[ \t]*:[ \t]*\d+", lambda m: m.group(1) + b": " + str(len(body2)).encode(), head)
    return head2 + sep + body2

def csum16(data):
    if len(data) % 2: data += b"\0"
    s = sum(struct.unpack(">%dH" % (len(data)//2), data))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

link, frames = read_pcap(sys.argv[1])
out = []
for ns, fr in frames:
    try:
        et, ip = ip_of(link, fr)
    except Exception:
        continue
    if et != 0x0800:
        out.append((ns, eth(et, ip))); continue
    ihl = (ip[0] & 15) * 4
    proto = ip[9]; src, dst = ip[12:16], ip[16:20]
    if (struct.unpack(">H", ip[6:8])[0] & 0x3fff) or proto not in (6, 17):
        continue
    l4 = bytearray(ip[ihl:struct.unpack(">H", ip[2:4])[0]])
    if proto == 17:
        payload = fix_sip(bytes(l4[8:]))
        l4 = bytearray(l4[:8] + payload)
        struct.pack_into(">H", l4, 4, len(l4))
        struct.pack_into(">H", l4, 6, 0)
        pseudo = m6b(src) + m6b(dst) + struct.pack(">IxxxB", len(l4), 17)
        c = csum16(pseudo + bytes(l4)) or 0xffff
        struct.pack_into(">H", l4, 6, c)
    else:
        struct.pack_into(">H", l4, 16, 0)
        pseudo = m6b(src) + m6b(dst) + struct.pack(">IxxxB", len(l4), 6)
        struct.pack_into(">H", l4, 16, csum16(pseudo + bytes(l4)))
    v6 = struct.pack(">IHBB", 0x60000000, len(l4), proto, 64) + m6b(src) + m6b(dst) + bytes(l4)
    out.append((ns, eth(0x86DD, v6)))
write_pcap(sys.argv[2], 1, out)
