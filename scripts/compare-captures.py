#!/usr/bin/env python3
"""Compares `teledge replay` with TShark on every capture in a folder (a campaign tool, not CI).

For each capture (*.pcap, *.pcapng, *.cap, *.pcap0 ...) it runs teledge under a time limit,
measuring its peak RSS (from wait4), and TShark, and prints one row per capture:

- run: exit code, panic, hang (time limit), peak RSS (noted above 10 MiB, a problem above
  32 MiB: most of a small replay's RSS is the program file's text, 7-10 MiB of it on x86_64);
- sip: SIP messages TShark decodes (`-Y "sip && !icmp && !icmpv6"`: not the SIP quoted in an
  ICMP error, which is no message on the wire; JSON, --no-duplicate-keys, as
  tests/tshark/regenerate.py does) against the summary's sip_messages_*; per INVITE dialog
  (a Call-ID with an INVITE-dialog method in a CSeq, as tests/it/conformance.rs counts), one
  record, and its messages counted in the record or as late;
- calls: per record, the INVITE, answer and end times against the frames TShark shows (1 ms),
  the final status of the INVITE, and who hung up (the sender of the first BYE);
- rtp: every stream of `tshark -q -o rtp.heuristic_rtp:TRUE -z rtp,streams` against the
  stream with the same source, destination and SSRC in teledge's records: packets, lost, and
  min/mean/max delta and jitter of `metrics.wireshark` within 0.01 ms (TShark prints 3
  decimals; -1/0/0 where it computed none, as for a payload type without a known clock).
  TShark takes a single RTP-looking packet for a stream; teledge opens a stream without SDP
  only after two in sequence (RFC 3550 A.1 probation): what TShark lists more is explained
  when the summary's probation_discarded covers it, like RTP counted after a call's end (a
  stream measured up to its call's end is compared with TShark's row over the same packets,
  `-2 -R "frame.number <= N"`);
- rtcp: per measured stream, the RTCP report blocks about its SSRC that its receiver sent
  (`-T fields -e rtcp.ssrc.*`; every block TShark decodes, else from anyone, as teledge
  joins them): how many, the last fraction lost (in %) and cumulative lost, the last and
  largest interarrival jitter (TShark's timestamp units, in ms at the stream's clock rate),
  and every round trip TShark computes from LSR/DLSR (`rtcp.roundtrip-delay`, with
  `rtcp.show_roundtrip_calculation`): how many, and the last, least and largest within 2 ms
  (TShark truncates the gap and DLSR to whole ms).

Usage: scripts/compare-captures.py [--teledge PATH] [--details] FOLDER_OR_FILES...
A capture whose row says anything but `ok` is listed with what differs (--details: all of it).
"""
import argparse
import collections
import datetime
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

LIMIT_S = 120
RSS_NOTE_KIB = 10 * 1024
RSS_LIMIT_KIB = 32 * 1024
HEP_LUA = pathlib.Path(__file__).resolve().parent.parent / "tests/tshark/hep3.lua"
DIALOG_METHODS = {"INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "PRACK", "INFO"}


def first(v):
    return v[0] if isinstance(v, list) else v


def run_teledge(binary, path):
    """(exit code, or None when it ran past the time limit; records; stderr; seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen([binary, "replay", "--no-progress", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
        hung = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        hung = True
    records = []
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return (None if hung else proc.returncode), records, err.decode("utf-8", "replace"), \
        time.monotonic() - start


def run_teledge_rss(binary, path):
    """Runs teledge again, output discarded, under GNU time for its own peak RSS (KiB).

    Not os.fork + wait4 from here: a child's ru_maxrss keeps the high-water mark of the
    (Python-sized) memory it had before exec. GNU time is small, so what it reports is
    teledge's."""
    try:
        done = subprocess.run(["/usr/bin/time", "-f", "%M", binary, "replay", "--no-progress",
                               str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        return None
    last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
    return int(last[0]) if last and last[0].isdigit() else None


def tshark_sip(path):
    # As tests/tshark/regenerate.py: SIP on TCP port 6060 too, and HEPv3 through its Lua
    # deframer (TShark 4.0 has no HEP dissector).
    out = subprocess.run(["tshark", "-X", f"lua_script:{HEP_LUA}", "-d", "tcp.port==6060,sip",
                          "-r", str(path), "-Y", "sip && !icmp && !icmpv6", "-T", "json",
                          "--no-duplicate-keys", "-J", "frame ip ipv6 sip"],
                         capture_output=True, text=True).stdout
    try:
        packets = json.loads(out) if out.strip() else []
    except ValueError:
        return None
    msgs = []
    for p in packets:
        layers = p["_source"]["layers"]
        frame = first(layers["frame"])
        number = int(frame["frame.number"])
        cut = int(frame.get("frame.cap_len", 0)) < int(frame.get("frame.len", 0))
        t = float(frame["frame.time_epoch"])
        ip = layers.get("ip") or layers.get("ipv6") or {}
        ip = first(ip)
        src = ip.get("ip.src") or ip.get("ipv6.src") or ""
        sips = layers["sip"] if isinstance(layers.get("sip"), list) else [layers.get("sip", {})]
        for sip in sips:
            if "sip.Request-Line" in sip:
                start = sip["sip.Request-Line"].split(" ")[0]
            elif "sip.Status-Line" in sip:
                start = sip["sip.Status-Line"].split(" ")[1]
            else:
                continue
            headers = sip.get("sip.msg_hdr_tree", {})
            call_id = first(headers.get("sip.Call-ID", headers.get("sip.i", "")))
            cseq = first(headers.get("sip.CSeq", headers.get("sip.CSeq.method", "")))
            tags = (first(headers.get("sip.From_tree", {}).get("sip.from.tag", "")),
                    first(headers.get("sip.To_tree", {}).get("sip.to.tag", "")))
            if cut and not call_id:
                # Cut by the snapshot length before its headers: TShark shows the start line
                # only; teledge counts it as a sip-snaplen error (or reads the head up to
                # the cut when Call-ID, CSeq, From and To made it).
                msgs.append((number, t, src, None, start, cseq, tags))
                continue
            msgs.append((number, t, src, call_id, start, cseq, tags))
    return msgs


STREAM_RE = re.compile(r" 0x[0-9A-Fa-f]+ ")


def sockaddr(ip, port):
    """An address as teledge's records write it: IPv6 in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def tshark_rtp(path, read_filter=None):
    """TShark's RTP streams; with `read_filter`, over the frames it passes (two passes, so
    the tap sees only those)."""
    extra = ["-2", "-R", read_filter] if read_filter else []
    out = subprocess.run(["tshark", "-r", str(path), *extra, "-q", "-o",
                          "rtp.heuristic_rtp:TRUE", "-z", "rtp,streams"],
                         capture_output=True, text=True).stdout
    streams = []
    for line in out.splitlines():
        if not STREAM_RE.search(line):
            continue
        t = line.split()
        if t[-1] == "X":
            t.pop()
        n = len(t)
        j = [float(x) for x in t[n - 3:]]
        d = [float(x) for x in t[n - 6:n - 3]]
        streams.append(dict(src=sockaddr(t[2], t[3]), dst=sockaddr(t[4], t[5]), ssrc=t[6],
                            packets=int(t[n - 9]), lost=int(t[n - 8]),
                            deltas=d if d[0] >= 0 else None,
                            jitters=j if j[0] >= 0 else None))
    return streams


def tshark_stream_upto(path, e, packets):
    """TShark's row for stream `e` over its first `packets` packets: the frames up to the
    one that carries its `packets`-th (what teledge measured of a stream whose packets after
    its call's end it counts and does not measure)."""
    ip, port = addr_ip(e["src"]), e["src"].rsplit(":", 1)[1]
    field = "ipv6.src" if ":" in ip else "ip.src"
    frames = subprocess.run(["tshark", "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE", "-Y",
                             f"rtp.ssrc=={e['ssrc']} && {field}=={ip} && udp.srcport=={port}",
                             "-T", "fields", "-e", "frame.number"],
                            capture_output=True, text=True).stdout.split()
    if len(frames) < packets or packets <= 0:
        return None
    rows = tshark_rtp(path, f"frame.number <= {frames[packets - 1]}")
    return next((r for r in rows if (r["src"], r["dst"], r["ssrc"]) ==
                 (e["src"], e["dst"], e["ssrc"])), None)


RTCP_FIELDS = ["frame.number", "ip.src", "ipv6.src", "rtcp.senderssrc", "rtcp.ssrc.identifier",
               "rtcp.ssrc.fraction", "rtcp.ssrc.cum_nr", "rtcp.ssrc.jitter", "rtcp.ssrc.lsr",
               "rtcp.roundtrip-delay"]


def tshark_rtcp_blocks(path, ports=()):
    """Every RTCP report block TShark decodes: dict(frame, reporter, sender, ssrc, fraction,
    cum, jitter, lsr, rtt); a frame's round trip (TShark computes at most one a frame) goes
    with its first block that has an LSR."""
    cmd = ["tshark", "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE",
           "-o", "rtcp.show_roundtrip_calculation:TRUE", "-o", "rtcp.roundtrip_min_threshhold:0",
           "-Y", "rtcp.ssrc.fraction", "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    for port in sorted(ports):
        cmd += ["-d", f"udp.port=={port},rtcp"]
    for f in RTCP_FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    blocks = []
    for line in out.splitlines():
        f = (line.split("\t") + [""] * len(RTCP_FIELDS))[:len(RTCP_FIELDS)]
        vals = [x.split(",") if x else [] for x in f]
        frame = int(vals[0][0])
        reporter = (vals[1] or vals[2] or [""])[0]
        senders = [x.lower() for x in vals[3]]
        fractions, cums, jitters, lsrs = vals[5], vals[6], vals[7], vals[8]
        ids = [x.lower() for x in vals[4][:len(fractions)]]
        rtts = [float(x) for x in vals[9]]
        rtt_given = False
        for i, ssrc in enumerate(ids):
            lsr = int(lsrs[i]) if i < len(lsrs) else 0
            rtt = None
            if rtts and not rtt_given and lsr != 0:
                rtt, rtt_given = rtts[0], True
            blocks.append(dict(frame=frame, reporter=reporter, senders=senders, ssrc=ssrc,
                               fraction=int(fractions[i]), cum=int(cums[i]),
                               jitter=int(jitters[i]), lsr=lsr, rtt=rtt))
    return blocks


def tshark_srs(path):
    """Every SR TShark decodes: (frame, sender SSRC, the middle 32 bits of its NTP time)."""
    out = subprocess.run(["tshark", "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE", "-Y",
                          "rtcp.pt == 200", "-T", "fields", "-E", "occurrence=f", "-e",
                          "frame.number", "-e", "rtcp.senderssrc", "-e",
                          "rtcp.timestamp.ntp.msw", "-e", "rtcp.timestamp.ntp.lsw"],
                         capture_output=True, text=True).stdout
    srs = []
    for line in out.splitlines():
        f = line.split("\t")
        if len(f) == 4 and all(f):
            srs.append((int(f[0]), f[1].lower(), ((int(f[2]) & 0xFFFF) << 16) | (int(f[3]) >> 16)))
    return srs


def crossed_srs(rows_without_rtt, srs):
    """Report blocks whose LSR names an SR of the reported source that is not its latest
    before the report (a newer SR crossed the report in flight). TShark keeps one SR per
    conversation (packet-rtcp.c remember_outgoing_sr: last_received_timestamp, overwritten by
    each SR) and matches an LSR against it alone, so it computes no round trip for them;
    RFC 3550 6.4.1 gives one, and teledge computes it."""
    n = 0
    for b in rows_without_rtt:
        before = [x for x in srs if x[1] == b["ssrc"] and x[0] < b["frame"]]
        if before and before[-1][2] != b["lsr"] and any(x[2] == b["lsr"] for x in before):
            n += 1
    return n


def compare_rtcp(stream, blocks, srs=()):
    """What differs between teledge's `rtcp` of a stream and TShark's report blocks."""
    ssrc = stream["ssrc"].lower()
    receiver = addr_ip(stream["dst"])
    about = [b for b in blocks if b["ssrc"] == ssrc]
    mine = [b for b in about if b["reporter"] == receiver] or about
    r = stream.get("rtcp")
    if not mine:
        return ["rtcp reports where TShark has none"] if r and r.get("reports") else []
    if not r:
        return [f"no rtcp, TShark {len(mine)} report blocks (frames {mine[0]['frame']}..)"]
    diffs = []
    if r["reports"] != len(mine):
        diffs.append(f"reports {r['reports']}/{len(mine)}")
    last = mine[-1]
    fl = r.get("last_fraction_lost_percent")
    if fl is None or abs(fl - last["fraction"] * 100 / 256) > 0.001:
        diffs.append(f"last fraction lost {fl}/{last['fraction'] * 100 / 256:.3f}% "
                     f"(frame {last['frame']})")
    if r.get("last_cumulative_lost") != last["cum"]:
        diffs.append(f"last cumulative lost {r.get('last_cumulative_lost')}/{last['cum']}")
    lj, mj = r.get("last_jitter_ms"), r.get("max_jitter_ms")
    big = max(b["jitter"] for b in mine)
    if lj is None:
        if last["jitter"]:
            diffs.append(f"no jitter (TShark {last['jitter']} units)")
    elif lj > 0 or last["jitter"]:
        rate = last["jitter"] * 1000 / lj if lj else None
        known = [8000, 16000, 11025, 22050, 32000, 44100, 48000, 90000, 12000, 24000]
        rate = min(known, key=lambda k: abs(k - rate)) if rate else None
        if rate is None or abs(lj * rate / 1000 - last["jitter"]) > 0.5 or \
                mj is None or abs(mj * rate / 1000 - big) > 0.5:
            diffs.append(f"jitter last/max {lj}/{mj} ms vs {last['jitter']}/{big} units")
    rows = [b for b in mine if b["rtt"] is not None]
    n = r.get("round_trip_samples", 0) + r.get("round_trip_rejected", 0)
    crossed = crossed_srs([b for b in mine if b["rtt"] is None and b["lsr"]], srs)
    if crossed and n == len(rows) + crossed and r.get("round_trip_samples", 0) == n:
        # TShark's rows are a subset of teledge's: its extremes lie within teledge's.
        lo, hi = min(b["rtt"] for b in rows), max(b["rtt"] for b in rows)
        if r["min_round_trip_ms"] > lo + 2 or r["max_round_trip_ms"] < hi - 2:
            diffs.append(f"round trips {r['min_round_trip_ms']}..{r['max_round_trip_ms']} "
                         f"do not hold TShark's {lo}..{hi}")
        stream.setdefault("_notes", []).append(
            f"known: {crossed} round trips of {stream['ssrc']} TShark does not compute (the "
            "report names an SR older than the latest, crossed in flight)")
    elif n != len(rows):
        diffs.append(f"round trips {n}/{len(rows)} (TShark frames "
                     f"{','.join(str(b['frame']) for b in rows[:4])})")
    elif rows and r.get("round_trip_samples", 0) == len(rows):
        for which, theirs in (("last", rows[-1]["rtt"]), ("min", min(b["rtt"] for b in rows)),
                              ("max", max(b["rtt"] for b in rows))):
            ours = r.get(f"{which}_round_trip_ms")
            if ours is None or abs(ours - theirs) > 2.0 + 1e-9:
                diffs.append(f"{which} round trip {ours}/{theirs} ms")
    return diffs


def epoch(s):
    if s is None:
        return None
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def addr_ip(a):
    if a is None:
        return None
    if a.startswith("["):
        return a[1:a.index("]")]
    return a.rsplit(":", 1)[0]


def compare(binary, path):
    problems = []
    notes = []
    code, records, err, secs = run_teledge(binary, path)
    rss = run_teledge_rss(binary, path)
    if code is None:
        problems.append(f"hang (> {LIMIT_S} s)")
    if "panicked" in err:
        problems.append("panic: " + err.strip().splitlines()[-1][:120])
    if rss and rss > RSS_LIMIT_KIB:
        problems.append(f"peak RSS {rss / 1024:.1f} MiB > {RSS_LIMIT_KIB // 1024} MiB")
    elif rss and rss > RSS_NOTE_KIB:
        notes.append(f"peak RSS {rss / 1024:.1f} MiB")
    calls = [r for r in records if r.get("type") == "call"]
    streams_rec = [r for r in records if r.get("type") == "stream"]
    summary = next((r for r in records if r.get("type") == "capture_summary"), None)
    if summary is None:
        problems.append(f"no capture summary (exit {code}: {err.strip()[:100]})")
        return dict(file=path.name, code=code, rss=rss, problems=problems, notes=notes,
                    sip=(0, 0), calls=(0, 0), rtp=(0, 0, 0), rtcp=(0, 0, 0), secs=secs)
    dec = summary["decode"]
    if code not in (0, None):
        notes.append(f"exit {code}: {err.strip().splitlines()[-1][:140] if err.strip() else ''}")

    # SIP messages.
    msgs = tshark_sip(path)
    if msgs is None:
        notes.append("tshark JSON unreadable")
        msgs = []
    ours_total = sum(dec.get(k, 0) for k in ("sip_messages_udp", "sip_messages_tcp",
                                             "sip_messages_ws", "sip_messages_sctp",
                                             "sip_messages_hep"))
    cut = [m for m in msgs if m[3] is None]
    msgs = [m for m in msgs if m[3] is not None]
    snaplen = dec.get("errors", {}).get("sip-snaplen", 0)
    if cut:
        notes.append(f"known: {len(cut)} SIP frames cut by the snapshot length before their "
                     f"Call-ID (TShark: start line only), {snaplen} refused by teledge as cut")
    if ours_total + snaplen != len(msgs) + len(cut):
        problems.append(f"SIP messages: teledge {ours_total} (+ {snaplen} cut), "
                        f"TShark {len(msgs) + len(cut)}")
    if msgs and ours_total == 0 and dec.get("frames_failed", 0) == dec.get("frames", 0):
        problems.append("no frame decoded")

    by_call = collections.defaultdict(list)
    dialogs = set()
    for m in sorted(msgs):
        number, t, src, call_id, start, cseq, _ = m
        method = cseq.split()[1] if len(cseq.split()) > 1 else ""
        if method in DIALOG_METHODS:
            dialogs.add(call_id)
        if call_id in dialogs:
            by_call[call_id].append(m)
    recorded = {c["call_id"]: c for c in calls}
    missing = dialogs - set(recorded)
    extra = set(recorded) - dialogs
    if missing:
        problems.append(f"{len(missing)} dialogs without a record, e.g. {sorted(missing)[0][:40]}")
    # On a capture cut by its snapshot length TShark has no Call-ID for the cut frames that
    # teledge still reads: what that changes in the dialogs is noted, not a problem.
    grouping = notes if cut else problems
    if extra:
        grouping.append(f"{len(extra)} records TShark has no dialog for, e.g. {sorted(extra)[0][:40]}")
    in_records = sum(c["messages"] for c in calls if c["call_id"] in dialogs)
    late = summary.get("call_counters", {}).get("late_messages", 0)
    of_dialogs = sum(len(by_call[d]) for d in dialogs)
    if in_records + late != of_dialogs:
        grouping.append(f"dialog messages: {in_records} in records + {late} late, TShark {of_dialogs}")

    # Per call: times, final status, hangup side.
    call_ok = 0
    for cid, c in recorded.items():
        ms = by_call.get(cid, [])
        if not ms:
            continue
        bad = []
        invites = [m for m in ms if m[4] == "INVITE" and m[5].endswith("INVITE")]
        first_invite = invites[0] if invites else None
        if first_invite and c.get("invite_time") and not c.get("started_before_capture"):
            if abs(epoch(c["invite_time"]) - first_invite[1]) > 0.001:
                bad.append("invite_time")
        finals = [m for m in ms if m[4].isdigit() and int(m[4]) >= 200
                  and m[5].endswith(" INVITE")]
        if first_invite and finals:
            ok200 = [m for m in finals if m[4].startswith("2")]
            if ok200:
                if c.get("answer_time") is None or abs(epoch(c["answer_time"]) - ok200[0][1]) > 0.001:
                    bad.append(f"answer_time {c.get('answer_time')} vs frame {ok200[0][0]}")
                if c["outcome"] != "answered":
                    bad.append(f"outcome {c['outcome']} after 2xx")
            else:
                # A challenge (401/407) is followed by a new INVITE: the last final counts.
                last = int(finals[-1][4])
                if c.get("final_status") != last:
                    bad.append(f"final_status {c.get('final_status')} vs {last} "
                               f"(frame {finals[-1][0]})")
                if c["outcome"] == "answered":
                    bad.append("answered without 2xx")
        # The first BYE of the dialog the first 2xx made (another fork's 2xx makes a dialog
        # of its own, which the caller acknowledges and hangs up: RFC 3261 13.2.2.4).
        answered = next((m[6][1] for m in finals if m[4].startswith("2")), "") \
            if first_invite else ""
        byes = [m for m in ms if m[4] == "BYE"
                and (not answered or answered in (m[6][0], m[6][1]))]
        if byes and c.get("answer_time") and first_invite and c.get("hangup_by") in ("caller", "callee"):
            caller_ip = addr_ip(c.get("caller_address"))
            side = "caller" if byes[0][2] == caller_ip else "callee"
            if caller_ip and side != c["hangup_by"] and byes[0][2] != addr_ip(c.get("callee_address")) and False:
                pass
            if caller_ip and byes[0][2] in (caller_ip, addr_ip(c.get("callee_address"))) and side != c["hangup_by"]:
                bad.append(f"hangup_by {c['hangup_by']}, first BYE (frame {byes[0][0]}) from {side}")
            if c.get("end_time") and abs(epoch(c["end_time"]) - byes[0][1]) > 0.001:
                bad.append(f"end_time {c['end_time']} vs first BYE frame {byes[0][0]}")
        if bad:
            problems.append(f"call {cid[:32]}: " + "; ".join(bad))
        else:
            call_ok += 1

    # RTP streams.
    ours = {}
    for c in calls:
        q = c.get("media_quality") or {}
        for k in ("caller_to_callee", "callee_to_caller", "unknown_direction"):
            for s in q.get(k, []):
                ours[(s["src"], s["dst"], s["ssrc"])] = s
    for s in streams_rec:
        ours[(s["src"], s["dst"], s["ssrc"])] = s
    theirs = tshark_rtp(path)
    agree = 0
    not_found = 0
    after_end = summary.get("media", {}).get("rtp_after_call_end", 0)
    # RTP after a call's BYE is counted (rtp_after_call_end), not measured: what TShark has
    # more in a stream is explained when those counted packets cover it.
    unexplained = after_end - sum(e["packets"] for e in theirs
                                  if (e["src"], e["dst"], e["ssrc"]) not in ours)
    for e in theirs:
        s = ours.get((e["src"], e["dst"], e["ssrc"]))
        what = f"{e['src']}->{e['dst']} {e['ssrc']}"
        if s is None:
            not_found += 1
            continue
        m = s["metrics"]
        w = m["wireshark"]
        diffs = []
        short = e["packets"] - m["packets"]
        if 0 < short <= unexplained:
            unexplained -= short
            notes.append(f"known: {what} {short} packets after the BYE counted, not measured"
                         " (compared with TShark over the packets before)")
            e = tshark_stream_upto(path, e, m["packets"]) or e
        if e["packets"] != m["packets"]:
            diffs.append(f"packets {m['packets']}/{e['packets']}")
        if w["lost"] != e["lost"]:
            diffs.append(f"lost {w['lost']}/{e['lost']}")
        names = ["min_delta_ms", "mean_delta_ms", "max_delta_ms"]
        if e["deltas"] is None:
            if w.get("max_delta_ms") is not None:
                diffs.append("delta where TShark has none")
        else:
            for n, v in zip(names, e["deltas"]):
                if w.get(n) is None or abs(w[n] - v) > 0.01:
                    diffs.append(f"{n} {w.get(n)}/{v}")
        if e["jitters"] is None:
            if w.get("max_jitter_ms") is not None:
                diffs.append("jitter where TShark has none")
        else:
            for n, v in zip(["min_jitter_ms", "mean_jitter_ms", "max_jitter_ms"], e["jitters"]):
                if w.get(n) is None or abs(w[n] - v) > 0.01:
                    diffs.append(f"{n} {w.get(n)}/{v}")
        if diffs:
            problems.append(f"stream {what}: " + ", ".join(diffs) + " (teledge/TShark)")
        else:
            agree += 1
    if not_found:
        missing_pkts = sum(e["packets"] for e in theirs
                           if (e["src"], e["dst"], e["ssrc"]) not in ours)
        probation = summary.get("media", {}).get("probation_discarded", 0)
        # RTP relayed inside TURN: TShark lists it (heuristically) under the relay's address;
        # teledge counts it, does not measure it (turn_relayed_unmeasured).
        turn = (summary.get("media", {}).get("turn_relayed_unmeasured", 0)
                + summary.get("decode", {}).get("turn_tcp_relayed", 0))
        if missing_pkts <= after_end:
            notes.append(f"{not_found} streams after call end")
        elif missing_pkts <= after_end + probation:
            notes.append(f"known: {not_found} TShark streams ({missing_pkts} packets) never "
                         f"formed a stream ({probation} RTP-looking packets in probation)")
        elif missing_pkts <= after_end + probation + turn:
            notes.append(f"known: {not_found} TShark streams ({missing_pkts} packets): RTP "
                         f"relayed in TURN ({turn} datagrams counted, not measured) or in "
                         f"probation ({probation})")
        else:
            problems.append(f"{not_found} TShark streams ({missing_pkts} packets) not measured, "
                            f"{after_end} RTP counted after call end, {probation} in probation, "
                            f"{turn} relayed in TURN")
    # RTCP reported on each measured stream.
    # TShark finds RTCP by the SDP it saw, else heuristically (and its heuristic declines
    # some valid compounds on a leg no SDP in the capture named): a stream whose reports
    # differ is compared again with its RTCP ports decoded as RTCP (Decode As), noted.
    blocks = tshark_rtcp_blocks(path)
    srs = tshark_srs(path) if blocks else []
    told = None
    rtcp_ok = rtcp_n = 0
    rtts = 0
    for key, s in ours.items():
        if not s.get("rtcp") and not any(b["ssrc"] == s["ssrc"].lower() for b in blocks):
            continue
        rtcp_n += 1
        d = compare_rtcp(s, blocks, srs)
        notes.extend(s.pop("_notes", []))
        if d and s.get("rtcp"):
            if told is None:
                ports = set()
                for t in ours.values():
                    for a in (t["src"], t["dst"]):
                        ports.add(int(a.rsplit(":", 1)[1]) + 1)
                told = tshark_rtcp_blocks(path, ports)
            if not compare_rtcp(s, told, srs):
                notes.extend(s.pop("_notes", []))
                notes.append(f"known: rtcp of {s['ssrc']} agrees once TShark is told its ports "
                             f"are RTCP ({len(told) - len(blocks)} report blocks its heuristic "
                             "missed)")
                d = []
        rtts += (s.get("rtcp") or {}).get("round_trip_samples", 0)
        if d:
            problems.append(f"rtcp of {s['src']}->{s['dst']} {s['ssrc']}: " + ", ".join(d)
                            + " (teledge/TShark)")
        else:
            rtcp_ok += 1
    theirs_keys = {(e["src"], e["dst"], e["ssrc"]) for e in theirs}
    extra_streams = [k for k in ours if k not in theirs_keys]
    if extra_streams:
        notes.append(f"{len(extra_streams)} streams TShark does not list")
    return dict(file=path.name, code=code, rss=rss, problems=problems, notes=notes,
                sip=(ours_total, len(msgs)), calls=(call_ok, len(recorded)),
                rtp=(agree, len(theirs), not_found), rtcp=(rtcp_ok, rtcp_n, rtts), secs=secs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teledge", default=str(pathlib.Path(__file__).resolve().parent.parent
                                             / "target/release/teledge"))
    ap.add_argument("--details", action="store_true")
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    files = []
    for p in map(pathlib.Path, args.paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir()
                            if re.search(r"\.(pcap|pcapng|cap|pcap\d*)$", f.name, re.I))
        else:
            files.append(p)
    print(f"{'capture':44} {'exit':>4} {'RSS MiB':>7} {'SIP t/T':>11} {'calls ok':>9} "
          f"{'streams ok':>10} {'rtcp ok':>8} {'rtts':>5}  verdict")
    agree = differ = 0
    for f in files:
        r = compare(args.teledge, f)
        verdict = "ok" if not r["problems"] else "DIFFERS"
        if verdict == "ok" and any(n.startswith("known:") for n in r["notes"]):
            verdict = "ok (known)"
        agree += not r["problems"]
        differ += bool(r["problems"])
        rss = f"{r['rss'] / 1024:.1f}" if r["rss"] else "-"
        print(f"{r['file'][:44]:44} {str(r['code']):>4} {rss:>7} "
              f"{r['sip'][0]:>5}/{r['sip'][1]:<5} {r['calls'][0]:>4}/{r['calls'][1]:<4} "
              f"{r['rtp'][0]:>4}/{r['rtp'][1]:<5} {r['rtcp'][0]:>3}/{r['rtcp'][1]:<4} "
              f"{r['rtcp'][2]:>5}  {verdict}"
              + (f"  ({'; '.join(r['notes'])})" if r["notes"] else ""))
        shown = r["problems"] if args.details else r["problems"][:5]
        for p in shown:
            print(f"    - {p}")
        if len(r["problems"]) > len(shown):
            print(f"    - ... {len(r['problems']) - len(shown)} more")
    print(f"\n{len(files)} captures: {agree} agree, {differ} differ")


if __name__ == "__main__":
    main()
