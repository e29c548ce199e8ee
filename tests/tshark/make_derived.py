#!/usr/bin/env python3
"""Writes two captures of tests/data from one public capture, re-wrapped as a tap would see it.

Input: aboutsip/pkts `pkts-streams/src/test/resources/io/pkts/streams/simple_invite_scenario.pcap`
(commit 6d7c5eb8eb1141abc001362a5d9d382aaf49d527, MIT licence): 7 Ethernet frames, one SIP call
on loopback (INVITE, 100, 180, 200, ACK, BYE, 200). Every frame is reduced to its IP packet and
written again, timestamps kept to the nanosecond:

- geneve_sip.pcap: each packet inside outer Ethernet/IPv4/UDP to port 6081 and a Geneve header
  (RFC 8926) with one 4-byte option; odd frames carry the inner Ethernet frame (protocol
  0x6558), even frames the bare IP packet (0x0800, as AWS Gateway Load Balancer sends).
- pcapng_three_interfaces.pcapng: one pcapng section with three interfaces of different link
  types and timestamp resolutions, frames dealt round-robin: Ethernet in nanoseconds
  (if_tsresol 9), Linux cooked v2 in microseconds (6), raw IP in 2^-20 s (0x94, a binary
  resolution).

Deterministic: the same input gives the same bytes.
Usage: python3 tests/tshark/make_derived.py simple_invite_scenario.pcap tests/data
"""
import pathlib
import struct
import sys

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def read_pcap(path):
    data = pathlib.Path(path).read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        sys.exit(f"{path}: not a little-endian microsecond pcap")
    link = struct.unpack("<I", data[20:24])[0]
    if link != 1:
        sys.exit(f"{path}: link type {link}, not Ethernet")
    frames, off = [], 24
    while off + 16 <= len(data):
        secs, usecs, incl, _ = struct.unpack("<IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ethertype = struct.unpack(">H", frame[12:14])[0]
        frames.append((secs * 10**9 + usecs * 1000, ethertype, frame[14:]))
    return frames


def checksum(header):
    total = sum(struct.unpack(">10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def outer_ipv4(payload, ident):
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, 64, 17, 0,
                         bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
    return header[:10] + struct.pack(">H", checksum(header)) + header[12:] + payload


def geneve(frames):
    out = []
    for i, (ns, ethertype, ip) in enumerate(frames):
        if i % 2:
            protocol, inner = 0x6558, MAC_B + MAC_A + struct.pack(">H", ethertype) + ip
        else:
            protocol, inner = ethertype, ip
        # Version 0, options 2 words, protocol, VNI 123; option class 0x0103 type 0x80 length 1.
        header = bytes([0x02, 0x00]) + struct.pack(">H", protocol) + bytes([0, 0, 123, 0])
        header += bytes.fromhex("0103800100000001")
        udp = struct.pack(">HHHH", 49152 + i, 6081, 8 + len(header) + len(inner), 0)
        out.append((ns, MAC_B + MAC_A + b"\x08\x00" + outer_ipv4(udp + header + inner, i + 1)))
    return out


def write_pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ns, frame in frames:
            f.write(struct.pack("<IIII", ns // 10**9, ns % 10**9 // 1000, len(frame), len(frame)))
            f.write(frame)


def block(kind, body):
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def option(code, value):
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def write_pcapng(path, frames):
    interfaces = [(1, 9, b"eth0"), (276, 6, b"any"), (101, 0x80 | 20, b"tun0")]
    with open(path, "wb") as f:
        f.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for linktype, tsresol, name in interfaces:
            f.write(block(1, struct.pack("<HHI", linktype, 0, 0) + option(2, name)
                          + option(9, bytes([tsresol])) + option(0, b"")))
        for i, (ns, ethertype, ip) in enumerate(frames):
            interface = i % 3
            if interface == 0:
                data = MAC_B + MAC_A + struct.pack(">H", ethertype) + ip
                ticks = ns
            elif interface == 1:
                # Linux cooked v2: protocol, reserved, ifindex, ARPHRD_LOOPBACK, outgoing, halen.
                data = struct.pack(">HHIHBB8s", ethertype, 0, 1, 772, 4, 6, MAC_A + b"\0\0") + ip
                ticks = ns // 1000
            else:
                data = ip
                ticks = ns * (1 << 20) // 10**9
            f.write(block(6, struct.pack("<IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF,
                                         len(data), len(data)) + data))


def main():
    source, target = sys.argv[1], pathlib.Path(sys.argv[2])
    frames = read_pcap(source)
    write_pcap(target / "geneve_sip.pcap", geneve(frames))
    write_pcapng(target / "pcapng_three_interfaces.pcapng", frames)


if __name__ == "__main__":
    main()
