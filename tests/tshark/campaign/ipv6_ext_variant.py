#!/usr/bin/env python3
"""IPv6 with extension headers (the third 2026-12-03 campaign): every IPv6 packet of a
capture (Ethernet, classic pcap: an ipv6_variant.py output) gets a Hop-by-Hop Options header
and a Destination Options header (8 bytes each, PadN) between its fixed header and its
transport, the next-header chain and the payload length fixed. usage: IN OUT"""
import pathlib
import struct
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from derive_variants import read_pcap, write_pcap  # noqa: E402


def with_extensions(frame):
    if len(frame) < 54 or frame[12:14] != b"\x86\xdd":
        return frame
    ip = frame[14:]
    nxt, plen = ip[6], struct.unpack(">H", ip[4:6])[0]
    # Hop-by-Hop (0) then Destination Options (60), each PadN over 6 bytes.
    hbh = bytes([60, 0, 1, 4, 0, 0, 0, 0])
    dst = bytes([nxt, 0, 1, 4, 0, 0, 0, 0])
    fixed = ip[:4] + struct.pack(">H", plen + 16) + bytes([0]) + ip[7:40]
    return frame[:14] + fixed + hbh + dst + ip[40:]


link, frames = read_pcap(sys.argv[1])
write_pcap(sys.argv[2], link, [(ns, with_extensions(f)) for ns, f in frames])
