#!/usr/bin/env python3
"""Variants of a public capture as other taps deliver it, for scripts/compare-captures.py
(the 2026-12-03 campaign; README "How it is checked").

Every frame (Ethernet or Linux cooked v1, classic pcap) is reduced to its IP packet and
written back as PREFIX_<variant>.pcap: vxlan, geneve, qinq (0x88a8) and qinq9100, mpls (two
labels), gre_key_seq, erspan2, ipip, sll2, raw; pcapng3if (three interfaces: Ethernet in ns,
SLL2 in us, raw IP in 2^-20 s) and pcapng3if_dec (the third in 100 ns); ipfrag_reversed
(SIP datagrams over 400 bytes in 184-byte IPv4 fragments, last first); tcp_segmented (SIP
datagrams as one TCP connection per address pair, after a handshake, in 97-396-byte
segments; only valid for captures whose SIP has Content-Length and uses one port pair).
Every variant is one TShark 4.0 decodes. The other variants of the campaign were made with
TShark's own tools: `editcap -s 120|300|600` (snapshot lengths), `editcap -F modpcap|
nsecpcap|nokiapcap|rh6_1pcap|suse6_3pcap`; ipv6_variant.py writes the IPv6 one.

usage: derive_variants.py IN.pcap OUTDIR PREFIX
"""
import struct
import sys
import zlib

def read_pcap(path):
    data = open(path, "rb").read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    else:
        e = ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    _, _, _, _, _, snap, link = struct.unpack(e + "IHHiIII", data[:24])
    off = 24
    out = []
    while off + 16 <= len(data):
        s, us, incl, orig = struct.unpack(e + "IIII", data[off:off + 16])
        off += 16
        frame = data[off:off + incl]
        off += incl
        ns = s * 10**9 + (us if nano else us * 1000)
        out.append((ns, frame))
    return link, out


def ip_of(link, frame):
    if link == 1:
        off = 12
        et = struct.unpack(">H", frame[off:off + 2])[0]
        off += 2
        while et in (0x8100, 0x88A8):
            et = struct.unpack(">H", frame[off + 2:off + 4])[0]
            off += 4
        return et, frame[off:]
    if link == 113:
        et = struct.unpack(">H", frame[14:16])[0]
        return et, frame[16:]
    raise SystemExit(f"link {link}")


MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def eth(et, payload):
    return MAC_B + MAC_A + struct.pack(">H", et) + payload


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(">%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(proto, payload, src="192.0.2.1", dst="192.0.2.2", ident=1):
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0, 64, proto,
                    0, bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    h = h[:10] + struct.pack(">H", csum(h)) + h[12:]
    return h + payload


def udp(sport, dport, payload):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def variants(et, ip, i):
    inner = eth(et, ip)
    yield "vxlan", 1, eth(0x0800, ipv4(17, udp(40000 + i % 100, 4789,
                                                 bytes.fromhex("0800000000007b00") + inner), ident=i))
    yield "geneve", 1, eth(0x0800, ipv4(17, udp(40000 + i % 100, 6081,
                                                  # ver 0, optlen 2 words, protocol 0x6558, VNI 123, one option
                                                  bytes.fromhex("02006558") + bytes.fromhex("00007b00")
                                                  + bytes.fromhex("0103800100000000") + inner), ident=i))
    yield "qinq", 1, MAC_B + MAC_A + bytes.fromhex("88a80064") + bytes.fromhex("810000c8") + struct.pack(">H", et) + ip
    yield "qinq9100", 1, MAC_B + MAC_A + bytes.fromhex("91000064") + bytes.fromhex("810000c8") + struct.pack(">H", et) + ip
    if et == 0x0800:
        yield "mpls", 1, eth(0x8847, bytes.fromhex("000640ff") + bytes.fromhex("0007d1ff") + ip)
    yield "gre_key_seq", 1, eth(0x0800, ipv4(47, bytes.fromhex("30006558") + struct.pack(">II", 7, i) + inner, ident=i))
    # ERSPAN type II: GRE with sequence, protocol 0x88be, 8-byte ERSPAN header.
    yield "erspan2", 1, eth(0x0800, ipv4(47, bytes.fromhex("100088be") + struct.pack(">I", i)
                                          + bytes.fromhex("1064000000000001") + inner, ident=i))
    yield "ipip", 1, eth(0x0800, ipv4(4, ip, ident=i)) if et == 0x0800 else None
    # Linux cooked v2: protocol, reserved, ifindex, hatype, pkttype, halen, address[8].
    yield "sll2", 276, struct.pack(">HHIHBB8s", et, 0, 3, 1, 0 if i % 2 else 4, 6, MAC_A + b"\0\0") + ip
    yield "raw", 101, ip


def write_pcap(path, link, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, link))
        for ns, fr in frames:
            f.write(struct.pack("<IIII", ns // 10**9, (ns % 10**9) // 1000, len(fr), len(fr)) + fr)


def block(btype, body):
    pad = (-len(body)) % 4
    n = 12 + len(body) + pad
    return struct.pack("<II", btype, n) + body + b"\0" * pad + struct.pack("<I", n)


def opt(code, value):
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def write_pcapng_multi(path, frames_by_if, links, resol=(9, 6, 0x80 | 20)):
    """One section, several interfaces: link types and timestamp resolutions differ
    (interface 0: ns, if_tsresol 9; interface 1: us; interface 2: 2^-20 s)."""
    with open(path, "wb") as f:
        f.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for k, link in enumerate(links):
            f.write(block(1, struct.pack("<HHI", link, 0, 0) + opt(2, b"if%d" % k)
                          + opt(9, bytes([resol[k]])) + opt(0, b"")))
        for ns, k, fr in frames_by_if:
            r = resol[k]
            if r & 0x80:
                ts = (ns * (1 << (r & 0x7F))) // 10**9
            else:
                ts = ns // 10**(9 - r)
            body = struct.pack("<IIIII", k, ts >> 32, ts & 0xFFFFFFFF, len(fr), len(fr)) + fr
            pad = (-len(fr)) % 4
            f.write(block(6, body + b"\0" * pad))


SIP_STARTS = (b"INVITE ", b"ACK ", b"BYE ", b"CANCEL ", b"OPTIONS ", b"REGISTER ", b"SIP/2.0 ",
              b"PRACK ", b"UPDATE ", b"INFO ", b"REFER ", b"NOTIFY ", b"SUBSCRIBE ", b"MESSAGE ", b"PUBLISH ")


def split_ipv4(ip):
    ihl = (ip[0] & 0x0F) * 4
    return ip[:ihl], ip[ihl:]


def fragments(ip, ident, size=184):
    """An IPv4 packet cut in fragments of `size` bytes of payload, in reverse order."""
    head, payload = split_ipv4(ip)
    out = []
    for off in range(0, len(payload), size):
        part = payload[off:off + size]
        more = off + size < len(payload)
        h = bytearray(head)
        struct.pack_into(">H", h, 2, len(head) + len(part))
        struct.pack_into(">H", h, 4, ident & 0xFFFF)
        struct.pack_into(">H", h, 6, (0x2000 if more else 0) | (off // 8))
        struct.pack_into(">H", h, 10, 0)
        struct.pack_into(">H", h, 10, csum(bytes(h)))
        out.append(bytes(h) + part)
    return out[::-1]


class TcpState:
    def __init__(self):
        self.seq = {}

    def segments(self, ip, cut):
        """The SIP datagram in `ip` (IPv4/UDP) as TCP segments of at most `cut` bytes."""
        head, udp_ = split_ipv4(ip)
        sport, dport = struct.unpack(">HH", udp_[:4])
        data = udp_[8:]
        src, dst = head[12:16], head[16:20]
        key = (src, sport, dst, dport)
        rkey = (dst, dport, src, sport)
        out = []
        if key not in self.seq and rkey not in self.seq:
            # Handshake, opened by this side.
            self.seq[key] = 1000
            self.seq[rkey] = 50000
            out.append(self.packet(head, key, 0x02, b"", syn=True))
            out.append(self.packet(head, rkey, 0x12, b"", syn=True, swap=True))
            out.append(self.packet(head, key, 0x10, b""))
        for off in range(0, len(data), cut):
            out.append(self.packet(head, key, 0x18, data[off:off + cut]))
        return out

    def packet(self, head, key, flags, payload, syn=False, swap=False):
        src, sport, dst, dport = key
        rkey = (dst, dport, src, sport)
        seq = self.seq[key]
        ack = self.seq.get(rkey, 0)
        if syn:
            self.seq[key] = seq + 1
        self.seq[key] += len(payload)
        if flags == 0x02:
            ack = 0
        tcp = struct.pack(">HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0) + payload
        h = bytearray(head)
        h[12:16], h[16:20] = src, dst
        struct.pack_into(">H", h, 2, len(head) + len(tcp))
        h[9] = 6
        struct.pack_into(">H", h, 6, 0)
        struct.pack_into(">H", h, 10, 0)
        struct.pack_into(">H", h, 10, csum(bytes(h)))
        return bytes(h) + tcp


def transport_variants(link, frames, outdir, prefix):
    frag, tcp = [], []
    state = TcpState()
    for i, (ns, fr) in enumerate(frames):
        try:
            et, ip = ip_of(link, fr)
        except Exception:
            continue
        if et != 0x0800 or ip[9] != 17:
            frag.append((ns, eth(et, ip)))
            tcp.append((ns, eth(et, ip)))
            continue
        _, udp_ = split_ipv4(ip)
        is_sip = udp_[8:].startswith(SIP_STARTS)
        if is_sip and len(udp_) > 400 and not (ip[6] & 0x3F or ip[7]):
            for k, f in enumerate(fragments(ip, 0x7000 + i)):
                frag.append((ns + k * 1000, eth(0x0800, f)))
        else:
            frag.append((ns, eth(et, ip)))
        if is_sip:
            for k, seg in enumerate(state.segments(ip, 97 + i % 300)):
                tcp.append((ns + k * 1000, eth(0x0800, seg)))
        else:
            tcp.append((ns, eth(et, ip)))
    write_pcap(f"{outdir}/{prefix}_ipfrag_reversed.pcap", 1, frag)
    write_pcap(f"{outdir}/{prefix}_tcp_segmented.pcap", 1, tcp)


def main():
    src, outdir, prefix = sys.argv[1:4]
    link, frames = read_pcap(src)
    out = {}
    multi = []
    for i, (ns, fr) in enumerate(frames):
        try:
            et, ip = ip_of(link, fr)
        except Exception:
            continue
        if et not in (0x0800, 0x86DD):
            continue
        for name, lt, b in variants(et, ip, i):
            if b is None:
                continue
            out.setdefault(name, (lt, []))[1].append((ns, b))
        k = i % 3
        if k == 0:
            multi.append((ns, 0, eth(et, ip)))
        elif k == 1:
            multi.append((ns, 1, struct.pack(">HHIHBB8s", et, 0, 3, 1, 0, 6, MAC_A + b"\0\0") + ip))
        else:
            multi.append((ns, 2, ip))
    for name, (lt, fr) in out.items():
        write_pcap(f"{outdir}/{prefix}_{name}.pcap", lt, fr)
    write_pcapng_multi(f"{outdir}/{prefix}_pcapng3if.pcapng", multi, [1, 276, 101])
    transport_variants(link, frames, outdir, prefix)
    write_pcapng_multi(f"{outdir}/{prefix}_pcapng3if_dec.pcapng", multi, [1, 276, 101], (9, 6, 7))


if __name__ == "__main__":
    main()
