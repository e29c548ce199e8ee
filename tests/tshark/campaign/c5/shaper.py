#!/usr/bin/env python3
"""A user-space Ethernet bridge between two interfaces that delays and drops frames, for the
2026-12-04a recordings: this machine's kernel has no netem (sch_netem) and no iptables, so a
path with delay, jitter and loss is made here. Each direction: delay D ms plus a uniform
jitter of +-J ms (frames may overtake one another, as with netem), and a loss probability;
the random generator is seeded, so a run is repeatable up to the tools' own timing.
Usage: shaper.py IF1 IF2 D12 J12 LOSS12 D21 J21 LOSS21 SECONDS SEED
"""
import heapq
import random
import select
import socket
import sys
import time

if1, if2 = sys.argv[1], sys.argv[2]
d12, j12, l12, d21, j21, l21 = (float(x) for x in sys.argv[3:9])
until = time.monotonic() + float(sys.argv[9])
rng = random.Random(int(sys.argv[10]))
socks = {}
for name in (if1, if2):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((name, 0))
    socks[name] = s
rules = {if1: (if2, d12, j12, l12), if2: (if1, d21, j21, l21)}
queue = []
n = 0
while time.monotonic() < until:
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        _, _, out, frame = heapq.heappop(queue)
        socks[out].send(frame)
    timeout = max(0.0, min(queue[0][0] - now, 0.05)) if queue else 0.05
    ready, _, _ = select.select(list(socks.values()), [], [], timeout)
    for s in ready:
        frame, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        out, d, j, loss = rules[addr[0]]
        if rng.random() < loss:
            continue
        n += 1
        heapq.heappush(queue, (time.monotonic() + (d + rng.uniform(-j, j)) / 1000, n, out, frame))
