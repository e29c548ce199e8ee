#!/usr/bin/env python3
"""Regenerates the TShark reference files the integration tests compare teledge against.

For every SIP capture in tests/data it writes tests/data/tshark/<capture>.sip.tsv: one line per
SIP message TShark decodes (several per frame for TCP), with the frame number, Call-ID, what
the start line says (method, or status code) and the CSeq. TCP port 6060 is decoded as SIP as
the fixture README says; teledge needs no such hint.

The HEP captures (HEPv3 on UDP port 9060) are read with tests/tshark/hep3.lua, a minimal HEP
deframer written for these references (TShark 4.0 has no HEP dissector); it hands the payload of
SIP frames, inflated if compressed, to TShark's own SIP dissector.

For every capture it writes tests/data/tshark/<capture>.rtp_streams.txt: the output of
`tshark -q -o rtp.heuristic_rtp:TRUE -z rtp,streams`, which the media conformance test parses,
and, for captures whose RTCP lets TShark compute round trips, <capture>.rtcp_rtt.tsv: per RTCP
frame with a round trip, the reporter's address, the SSRCs reported on, their LSRs and
`rtcp.roundtrip-delay` in ms (TShark truncates to whole ms), from
`-o rtcp.show_roundtrip_calculation:TRUE -o rtcp.roundtrip_min_threshhold:0`.

The tests pin the TShark version these files come from (PINNED below, the one in Debian 12):
regenerating with another version is refused, since its RTP analysis rules differ.

Usage: python3 tests/tshark/regenerate.py   (needs the Debian package `tshark`)
"""
import json
import pathlib
import subprocess
import sys

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
PINNED = "TShark (Wireshark) 4.0."
HEP_CAPTURES = ["hep.pcap", "hep3_compressed.pcapng"]
HEP_LUA = pathlib.Path(__file__).resolve().parent / "hep3.lua"


def first(value):
    return value[0] if isinstance(value, list) else value


def tshark_args(capture):
    if capture in HEP_CAPTURES:
        return ["-X", f"lua_script:{HEP_LUA}", "-r", str(DATA / capture), "-Y", "sip",
                "-T", "json", "--no-duplicate-keys", "-J", "frame sip"]
    return ["-r", str(DATA / capture), "-d", "tcp.port==6060,sip", "-Y", "sip",
            "-T", "json", "--no-duplicate-keys", "-J", "frame sip"]


def messages(capture):
    out = subprocess.run(["tshark"] + tshark_args(capture),
                         check=True, capture_output=True, text=True).stdout
    for packet in json.loads(out):
        layers = packet["_source"]["layers"]
        frame = first(layers["frame"])["frame.number"]
        sips = layers["sip"] if isinstance(layers["sip"], list) else [layers["sip"]]
        for sip in sips:
            if "sip.Request-Line" in sip:
                start = sip["sip.Request-Line"].split(" ")[0]
            elif "sip.Status-Line" in sip:
                start = sip["sip.Status-Line"].split(" ")[1]
            else:
                continue
            headers = sip.get("sip.msg_hdr_tree", {})
            call_id = first(headers.get("sip.Call-ID", ""))
            cseq = first(headers.get("sip.CSeq", ""))
            yield frame, call_id, start, cseq


def main():
    target = DATA / "tshark"
    target.mkdir(exist_ok=True)
    version = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    if not version.startswith(PINNED):
        sys.exit(f"{version}: the references are pinned to {PINNED}x (Debian 12's tshark)")
    captures = sorted(p.name for p in DATA.glob("*.pcap*"))
    for capture in captures:
        rows = list(messages(capture))
        if not rows:
            continue
        args = " ".join(tshark_args(capture)).replace(str(DATA) + "/", "").replace(
            str(HEP_LUA), "tests/tshark/hep3.lua").replace("frame sip", '"frame sip"')
        with open(target / f"{capture}.sip.tsv", "w") as f:
            f.write(f"# {version}; tshark {args}\n")
            f.write("# frame\tcall_id\tstart\tcseq\n")
            for row in rows:
                f.write("\t".join(row) + "\n")
        print(f"{capture}: {len(rows)} SIP messages", file=sys.stderr)
    for path in sorted(DATA.glob("*.pcap*")):
        out = subprocess.run(
            ["tshark", "-r", str(path), "-q", "-o", "rtp.heuristic_rtp:TRUE", "-z", "rtp,streams"],
            check=True, capture_output=True, text=True).stdout
        with open(target / f"{path.name}.rtp_streams.txt", "w") as f:
            f.write(f"# {version}; tshark -r {path.name} -q -o rtp.heuristic_rtp:TRUE -z rtp,streams\n")
            f.write(out)
        streams = sum(1 for line in out.splitlines() if " 0x" in line)
        print(f"{path.name}: {streams} RTP streams", file=sys.stderr)
        rtt_args = ["-o", "rtcp.show_roundtrip_calculation:TRUE",
                    "-o", "rtcp.roundtrip_min_threshhold:0", "-Y", "rtcp.roundtrip-delay",
                    "-T", "fields", "-e", "frame.number", "-e", "ip.src", "-e", "udp.srcport",
                    "-e", "rtcp.ssrc.identifier", "-e", "rtcp.ssrc.lsr",
                    "-e", "rtcp.roundtrip-delay"]
        out = subprocess.run(["tshark", "-r", str(path)] + rtt_args,
                             check=True, capture_output=True, text=True).stdout
        rtt_file = target / f"{path.name}.rtcp_rtt.tsv"
        if out.strip():
            with open(rtt_file, "w") as f:
                f.write(f"# {version}; tshark -r {path.name} {' '.join(rtt_args)}\n")
                f.write("# frame\treporter_ip\treporter_port\tssrcs\tlsrs\troundtrip_ms\n")
                f.write("# (the first len(lsrs) ssrcs are the report blocks', the rest SDES chunks')\n")
                f.write(out)
            print(f"{path.name}: {len(out.splitlines())} RTCP round trips", file=sys.stderr)
        elif rtt_file.exists():
            rtt_file.unlink()


if __name__ == "__main__":
    main()
