#!/usr/bin/env python3
"""Writes rtp_shapes.pcap, the RTP that SIPp plays (play_pcap_audio) in the 2026-12-04a
recordings: one sender's packets every 20 ms, as SIPp replays them (it takes each UDP payload
and its time, and sends it from its media port to the SDP's):
  - SSRC 0x11110000, PCMA (8): 200 packets whose sequence numbers wrap (65436..99);
  - RFC 4733 telephone-event (101), digit 5: 6 packets, the last three the end retransmitted;
  - comfort noise (13) twice, 200 ms apart, then PCMA again (timestamps run on);
  - the same SSRC changing to PCMU (0) for 50 packets;
  - a new SSRC 0x22220000, PCMA, 50 packets from sequence 1000.
Usage: make_rtp_shapes.py OUT.pcap
"""
import struct
import sys

frames = []
t = 1_000_000.0


def rtp(pt, seq, ts, ssrc, payload, marker=False):
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


def add(data, gap=0.020):
    global t
    t += gap
    udp = struct.pack("!HHHH", 7000, 6000, 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
    frames.append((t, b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip))


seq, ts = 65436, 8000
for i in range(200):
    add(rtp(8, seq, ts, 0x11110000, b"\xd5" * 160, marker=(i == 0)))
    seq += 1
    ts += 160
for i, (dur, end) in enumerate([(160, 0), (320, 0), (480, 0), (640, 1), (640, 1), (640, 1)]):
    add(rtp(101, seq, ts, 0x11110000, struct.pack("!BBH", 5, (0x80 if end else 0) | 10, dur),
            marker=(i == 0)))
    seq += 1
ts += 640
for i in range(2):
    add(rtp(13, seq, ts, 0x11110000, b"\x40"), gap=0.200 if i else 0.020)
    seq += 1
    ts += 1600
for i in range(50):
    add(rtp(8, seq, ts, 0x11110000, b"\xd5" * 160, marker=(i == 0)))
    seq += 1
    ts += 160
for i in range(50):
    add(rtp(0, seq, ts, 0x11110000, b"\xff" * 160, marker=(i == 0)))
    seq += 1
    ts += 160
seq, ts = 1000, 123456
for i in range(50):
    add(rtp(8, seq, ts, 0x22220000, b"\xd5" * 160, marker=(i == 0)))
    seq += 1
    ts += 160

with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for when, frame in frames:
        s = int(when)
        us = int(round((when - s) * 1e6))
        f.write(struct.pack("<IIII", s, us, len(frame), len(frame)) + frame)
