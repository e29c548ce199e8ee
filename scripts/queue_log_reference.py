#!/usr/bin/env python3
"""Independent reference for teledge's queue statistics (EN 15838 7.3), from Asterisk queue_log.

Shares no code with teledge: it reads `queue_log` lines itself and computes, straight from the
formulas of the project's reference (`service-statistics.md` §2.1-2.3: Asterisk `queue_log`
events and units, Cisco/Asterisk service-level variants), the per-interval figures
`teledge report --queue-log FILE --format jsonl` prints, then compares them figure by figure.

    python3 scripts/queue_log_reference.py FILE... [--teledge BIN] [--interval 15] [--per-queue]
        [--time-zone UTC] [--attribution event|arrival] [--json]

A FILE ending in `.rst` is a printed realtime table (Wazo's sample): its rows are turned
into file lines first. Exit status 1 when a figure differs.

T = 20 s and S = 5 s, teledge's defaults for a service (what `teledge report` uses without
`--config`).

Rules, each from the reference (not from teledge's code):
- A stay is one caller (callid) in one queue, from ENTERQUEUE to its end event. Offered =
  the stay entered (ENTERQUEUE) and its queue outcome is known; answered = CONNECT;
  abandoned = ABANDON (waittime); flow-out = EXITWITHTIMEOUT / EXITEMPTY / EXITWITHKEY /
  WITHDRAW (waittime). A stay that was CONNECTed is answered even when its COMPLETE/TRANSFER
  never comes (Asterisk restarted mid-call, the log ends): "Answered = connected to an agent
  (Asterisk CONNECT)". A stay with neither an answer nor an end is open: not offered.
- Units: holdtime, waittime, calltime, CONNECT ringtime in seconds; RINGNOANSWER in ms.
- Wait of an answered call = CONNECT holdtime; of an abandon / flow-out = its waittime.
  Within T: wait <= T (app_queue: `newvalue <= qe->parent->servicelevel`); short
  abandon: wait < S.
- Attribution `event` (Cisco/Genesys): a contact counts in the interval of its service-level
  event: answer (CONNECT line), abandon or exit (its line), or arrival + T if that is
  earlier. `arrival`: the interval of its ENTERQUEUE.
- Intervals of N minutes aligned in local time of the zone (zoneinfo; DST days have 92/100
  quarter-hours); an interval is named by its UTC start.
- Service level: Asterisk SL = answered_within_t / answered; SL2 = (answered_within_t +
  abandoned_within_t) / (answered + abandoned); Cisco (short abandons removed from offered):
  ignore = answered_within_t / (offered - short - (abandoned_within_t - short)), negative =
  answered_within_t / (offered - short), positive = (answered_within_t + abandoned_within_t -
  short) / (offered - short); abandon rate = (abandoned - short) / (offered - short).
- Agents: per agent and queue, staffed while a member (ADDMEMBER .. REMOVEMEMBER; a PAUSE or
  UNPAUSE in a queue makes it a member), paused between PAUSE and UNPAUSE (PAUSEALL /
  UNPAUSEALL: every queue of the agent); AGENTLOGIN .. AGENTLOGOFF with no queue named is a
  presence of its own; a logged-off agent has no presence (Wazo writes UNPAUSE in each queue
  right after AGENTCALLBACKLOGOFF: clean-up, not a return). Time is split exactly at interval boundaries; presences open at the
  log's end count up to its last line.
"""

import argparse
import datetime as dt
import json
import subprocess
import tempfile
import sys
from collections import defaultdict
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc
END_EVENTS = {
    "COMPLETECALLER", "COMPLETEAGENT", "TRANSFER", "BLINDTRANSFER", "ATTENDEDTRANSFER",
    "ABANDON", "EXITWITHTIMEOUT", "EXITEMPTY", "EXITWITHKEY", "WITHDRAW",
}
# Numeric data fields each event must carry (service-statistics.md §2.3).
REQUIRED = {
    "CONNECT": (0,), "COMPLETECALLER": (0, 1), "COMPLETEAGENT": (0, 1), "ABANDON": (0, 1, 2),
    "EXITWITHTIMEOUT": (0, 1, 2), "EXITEMPTY": (0, 1, 2), "EXITWITHKEY": (1, 2, 3),
    "TRANSFER": (2, 3), "BLINDTRANSFER": (2, 3), "ATTENDEDTRANSFER": (-3, -2), "RINGNOANSWER": (0,),
}
FLOW = {"EXITWITHTIMEOUT": "timeout", "EXITEMPTY": "empty", "EXITWITHKEY": "key", "WITHDRAW": "withdraw"}


class Clock:
    """Intervals of N minutes aligned on the local wall clock of a zone. An instant belongs
    to the interval whose local start is its local time floored to N minutes *under its own
    UTC offset*; a change of offset (DST) inside that span cuts it, so no two intervals
    overlap and none is longer than N minutes (Lord Howe's 30-minute DST shift included)."""

    def __init__(self, zone, minutes):
        self.zone = ZoneInfo(zone)
        self.minutes = minutes

    def offset(self, t):
        return dt.datetime.fromtimestamp(t, UTC).astimezone(self.zone).utcoffset().total_seconds()

    def change_after(self, a, b):
        """First whole second in (a, b] whose offset differs from a's, or None."""
        o = self.offset(a)
        if self.offset(b) == o:
            return None
        lo, hi = a, b
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.offset(mid) == o:
                lo = mid
            else:
                hi = mid
        return hi

    def bounds(self, t):
        """(start, end) epoch seconds of the interval holding t."""
        t = int(t // 1)
        o = int(self.offset(t))
        length = self.minutes * 60
        local = t + o
        start = local - local % length - o
        end = start + length
        # An offset change between the aligned start and t starts the interval there ...
        c = self.change_after(start, t)
        while c is not None:
            start = c
            c = self.change_after(start, t)
        # ... and one between t and the aligned end ends it.
        c = self.change_after(t, end - 1)
        if c is not None:
            end = c
        return start, end

    def start(self, t):
        return self.bounds(t)[0]

    def next(self, start):
        return self.bounds(start)[1]

    def label(self, start):
        return dt.datetime.fromtimestamp(start, UTC).astimezone(self.zone).isoformat()


def num(fields, i):
    try:
        return float(fields[i])
    except (IndexError, ValueError):
        return None


def realtime_rows(path):
    """A printed realtime `queue_log` table (Wazo's `xivo-doc-queue_log.rst`): each row as
    the line Asterisk writes to the file for it (`queue_log_to_file`), its `time` column
    read as UTC with its microseconds, in time order (the sample prints newest first)."""
    rows = []
    for row in open(path, encoding="utf-8"):
        c = [x.strip() for x in row.split("|")]
        try:
            t = dt.datetime.fromisoformat(c[0]).replace(tzinfo=UTC)
        except ValueError:
            continue
        data = c[5:]
        while data and data[-1] == "":
            data.pop()
        line = f"{int(t.timestamp())}.{t.microsecond:06d}|{c[1]}|{c[2]}|{c[3]}|{c[4]}"
        rows.append((c[0], line + ("|" + "|".join(data) if data else "")))
    return [(line + "\n").encode() for _, line in sorted(rows)]


def prepare(paths, shift_to):
    """The files as teledge reads them: printed realtime tables turned into file lines,
    times moved by `--shift-to`; temporary copies where anything changed."""

    texts = [realtime_rows(p) if p.endswith(".rst") else open(p, "rb").readlines() for p in paths]
    if shift_to is None and not any(p.endswith(".rst") for p in paths):
        return list(paths)
    delta = 0
    if shift_to is not None:
        first = next(float(l.split(b"|")[0]) for t in texts for l in t
                     if l.split(b"|")[0].replace(b".", b"", 1).isdigit())
        target = dt.datetime.fromisoformat(shift_to).replace(tzinfo=UTC).timestamp()
        delta = int(target - first)
    out = []
    for lines in texts:
        f = tempfile.NamedTemporaryFile("wb", suffix=".queue_log", delete=False)
        for l in lines:
            head, sep, rest = l.partition(b"|")
            if delta and sep and head.split(b".")[0].isdigit():
                whole, dot, frac = head.partition(b".")
                head = str(int(whole) + delta).encode() + dot + frac
            f.write(head + sep + rest)
        f.close()
        out.append(f.name)
    return out


def parse(paths):
    """Lines of every file, in file order; (time, callid, queue, agent, event, data)."""
    lines, bad = [], 0
    for path in paths:
        with open(path, "rb") as f:
            for raw in f:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not text.strip():
                    continue
                parts = text.split("|")
                if len(parts) < 5 or not parts[4].strip():
                    bad += 1
                    continue
                try:
                    t = float(parts[0])
                    if not parts[0].replace(".", "", 1).isdigit():
                        raise ValueError
                except ValueError:
                    bad += 1
                    continue
                ev, d = parts[4].strip(), parts[5:]
                if any(num(d, i) is None for i in REQUIRED.get(ev, ())):
                    bad += 1  # a known event without its numbers (reference §2.3 table)
                    continue
                lines.append((t, parts[1].strip(), parts[2].strip(), parts[3].strip(), ev, d))
    return lines, bad


def stays(lines):
    """Queue stays from the lines (in the order given: a log is written in time order)."""
    open_, done = {}, []
    for t, callid, queue, agent, ev, d in lines:
        if callid in ("NONE", "MANAGER", "REALTIME", "CLI", ""):
            continue
        if ev == "ENTERQUEUE":
            if callid in open_:
                done.append(open_.pop(callid))
            open_[callid] = dict(queue=queue, enter=t, rona=0, rona_ms=0.0)
            continue
        s = open_.get(callid)
        if s is None:
            if ev not in END_EVENTS and ev not in ("CONNECT", "RINGNOANSWER"):
                continue
            s = open_[callid] = dict(queue=queue, enter=None, rona=0, rona_ms=0.0)
        if ev == "RINGNOANSWER":
            s["rona"] += 1
            s["rona_ms"] += num(d, 0) or 0.0
        elif ev == "CONNECT":
            s["connect"] = t
            s["hold"] = num(d, 0)
            s["ring"] = num(d, 2)
        elif ev in ("COMPLETECALLER", "COMPLETEAGENT"):
            s.setdefault("hold", num(d, 0))
            s["talk"] = num(d, 1)
            s["hangup"] = "caller" if ev == "COMPLETECALLER" else "agent"
            s["end"] = t
            done.append(open_.pop(callid))
        elif ev in ("TRANSFER", "BLINDTRANSFER", "ATTENDEDTRANSFER"):
            # holdtime|calltime|origposition end every transfer line; before them, the
            # extension and context, or the attended method and its data (one field for
            # BRIDGE and APP, two channels for LINK: app_queue's log_attended_transfer).
            s.setdefault("hold", num(d, len(d) - 3))
            s["talk"] = num(d, len(d) - 2)
            s["transfer"] = True
            s["end"] = t
            done.append(open_.pop(callid))
        elif ev == "ABANDON":
            s["abandon"] = num(d, 2)
            s["end"] = t
            done.append(open_.pop(callid))
        elif ev in FLOW:
            s["flow"] = FLOW[ev]
            s["wait"] = num(d, 3 if ev == "EXITWITHKEY" else 2)
            s["end"] = t
            done.append(open_.pop(callid))
    done.extend(open_.values())
    return done


def contacts(all_stays):
    out, open_count = [], 0
    for s in all_stays:
        if "connect" in s or "talk" in s:
            hold = s.get("hold")
            answer = s.get("connect")
            if answer is None and hold is not None and s.get("talk") is not None:
                answer = s["end"] - s["talk"]
            enter = s["enter"] if s["enter"] is not None else (
                answer - hold if answer is not None and hold is not None else None)
            c = dict(outcome="answered", wait=hold, event=answer, ring=s.get("ring"),
                     talk=s.get("talk"), hangup=s.get("hangup"), transfer=s.get("transfer", False))
        elif "abandon" in s:
            enter = s["enter"] if s["enter"] is not None else s["end"] - (s["abandon"] or 0)
            c = dict(outcome="abandoned", wait=s["abandon"], event=s["end"])
        elif "flow" in s:
            enter = s["enter"] if s["enter"] is not None else s["end"] - (s["wait"] or 0)
            c = dict(outcome="flow_out", flow=s["flow"], wait=s["wait"], event=s["end"])
        else:
            open_count += 1
            continue
        if enter is None:
            open_count += 1
            continue
        c.update(queue=s["queue"], arrival=enter, rona=s["rona"], rona_ms=s["rona_ms"])
        out.append(c)
    return out, open_count


def empty():
    return defaultdict(float)


def figures(cs, clock, attribution, T, S, service):
    per = defaultdict(empty)
    for c in cs:
        if attribution == "arrival":
            at = c["arrival"]
        else:
            at = min(c["event"] if c["event"] is not None else c["arrival"], c["arrival"] + T)
        f = per[(clock.start(at), service(c["queue"]))]
        w = c["wait"]
        f["offered"] += 1
        f["rona"] += c["rona"]
        if w is not None:
            f["longest_wait_ms"] = max(f["longest_wait_ms"], w * 1000)
        if c["outcome"] == "answered":
            f["answered"] += 1
            if w is not None:
                f["wait_answered_ms"] += w * 1000
                f["answered_within_t"] += w <= T
            if c.get("ring") is not None:
                f["rang"] += 1
                f["ring_ms"] += c["ring"] * 1000
            if c.get("talk") is not None:
                f["handled"] += 1
                f["talk_ms"] += c["talk"] * 1000
            f["transferred"] += c["transfer"]
            f["hangup_caller"] += c.get("hangup") == "caller"
            f["hangup_callee"] += c.get("hangup") == "agent"
        elif c["outcome"] == "abandoned":
            w = w or 0
            f["abandoned"] += 1
            f["wait_abandoned_ms"] += w * 1000
            f["short_abandoned"] += w < S
            f["abandoned_within_t"] += w <= T
        else:
            f["flowed_out"] += 1
            f["flow_out_" + c["flow"]] += 1
    return per


def agents(lines, clock, per, service):
    """Staffed and paused agent-milliseconds per interval and service (a presence without a
    queue: the first service)."""
    state = {}  # (agent, queue or None) -> (since, paused)
    queues_of = defaultdict(dict)  # agent -> {queue: paused}
    logged = {}
    paused_all = {}
    last = max((l[0] for l in lines), default=0)

    def add(key, until):
        since, paused = state.pop(key)
        a = since
        while a < until:
            start = clock.start(a)
            b = min(until, clock.next(start))
            f = per[(start, service(key[1]))]
            f["staffed_ms"] += (b - a) * 1000
            if paused:
                f["paused_ms"] += (b - a) * 1000
            a = b

    def settle(agent, t):
        """Presences of the agent after a change at t."""
        if logged.get(agent) is False:
            want = {}  # logged off: no presence, whatever its queues
        else:
            want = {(agent, q): p for q, p in queues_of[agent].items()}
            if not want and logged.get(agent):
                want = {(agent, None): paused_all.get(agent, False)}
        for key in [k for k in state if k[0] == agent]:
            if key not in want or state[key][1] != want[key]:
                add(key, t)
        for key, p in want.items():
            if key not in state:
                state[key] = (t, p)

    for t, callid, queue, agent, ev, d in sorted(lines, key=lambda l: l[0]):
        if not agent or agent == "NONE":
            continue
        q = None if queue in ("", "NONE") else queue
        if ev == "ADDMEMBER" and q:
            queues_of[agent][q] = (d[0].strip() == "PAUSED") if d else False
        elif ev == "REMOVEMEMBER" and q:
            queues_of[agent].pop(q, None)
        elif ev in ("PAUSE", "UNPAUSE") and q:
            queues_of[agent][q] = ev == "PAUSE"
        elif ev in ("PAUSEALL", "UNPAUSEALL"):
            paused_all[agent] = ev == "PAUSEALL"
            for k in queues_of[agent]:
                queues_of[agent][k] = ev == "PAUSEALL"
        elif ev in ("AGENTLOGIN", "AGENTCALLBACKLOGIN"):
            logged[agent] = True
        elif ev in ("AGENTLOGOFF", "AGENTCALLBACKLOGOFF"):
            logged[agent] = False
        else:
            continue
        settle(agent, t)
    for key in list(state):
        add(key, last)


def ratio(n, d):
    return None if d == 0 else n / d * 100


def kpis(f):
    sh = f["short_abandoned"]
    off = f["offered"] - sh
    return {
        "sl_asterisk": ratio(f["answered_within_t"], f["answered"]),
        "sl2_asterisk": ratio(f["answered_within_t"] + f["abandoned_within_t"],
                              f["answered"] + f["abandoned"]),
        "sl_cisco_ignore": ratio(f["answered_within_t"], off - (f["abandoned_within_t"] - sh)),
        "sl_cisco_negative": ratio(f["answered_within_t"], off),
        "sl_cisco_positive": ratio(f["answered_within_t"] + f["abandoned_within_t"] - sh, off),
        "abandon_rate": ratio(f["abandoned"] - sh, off),
        "asa_s": None if not f["answered"] else f["wait_answered_ms"] / f["answered"] / 1000,
        "avg_ring_s": None if not f["rang"] else f["ring_ms"] / f["rang"] / 1000,
        "aht_s": None if not f["handled"] else f["talk_ms"] / f["handled"] / 1000,
    }


SUMS = ["offered", "answered", "abandoned", "short_abandoned", "flowed_out", "answered_within_t",
        "abandoned_within_t", "wait_answered_ms", "wait_abandoned_ms", "longest_wait_ms", "rang",
        "ring_ms", "handled", "talk_ms", "rona", "transferred", "hangup_caller", "hangup_callee",
        "flow_out_timeout", "flow_out_empty", "flow_out_key", "flow_out_withdraw"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--teledge", default="target/debug/teledge")
    ap.add_argument("--interval", type=int, default=15)
    ap.add_argument("--time-zone", default="UTC")
    ap.add_argument("--attribution", choices=["event", "arrival"], default="event")
    # teledge's defaults for a service (`sl_threshold_s`, `short_abandon_s`); without
    # `--config`, `teledge report` uses them.
    a_sl, a_short = 20, 5
    ap.add_argument("--json", action="store_true", help="print the reference figures only")
    ap.add_argument("--shift-to", metavar="ISO",
                    help="move every line's time so that the first line is at this UTC instant "
                         "(e.g. onto a DST change), for teledge and the reference alike")
    ap.add_argument("--per-queue", action="store_true",
                    help="a [[service]] per queue (teledge run with such a --config); else all "
                         "queues in the one service `default`, as teledge without --config")
    a = ap.parse_args()

    clock = Clock(a.time_zone, a.interval)
    teledge_files = prepare(a.files, a.shift_to)
    lines, bad = parse(teledge_files)
    cs, open_count = contacts(stays(lines))
    queues = sorted({l[2] for l in lines if l[2] not in ("", "NONE")})
    if a.per_queue:
        def service(q):
            return q if q in queues else queues[0]
    else:
        def service(q):
            return "default"
    per = figures(cs, clock, a.attribution, a_sl, a_short, service)
    agents(lines, clock, per, service)
    ref = {}
    for (start, svc), f in sorted(per.items()):
        key = dt.datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%S") + " " + svc
        ref[key] = dict(f)
        ref[key]["local_start"] = clock.label(start)
        ref[key].update({k: v for k, v in kpis(f).items()})
    if a.json:
        print(json.dumps({"bad_lines": bad, "open": open_count, "intervals": ref}, indent=1))
        return 0

    cmd = [a.teledge, "report", "--format", "jsonl", "--interval", str(a.interval),
           "--time-zone", a.time_zone, "--attribution", a.attribution]
    for p in teledge_files:
        cmd += ["--queue-log", p]
    if a.per_queue:
        conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        for q in queues:
            conf.write(f'[[service]]\nname = "{q}"\nsl_threshold_s = {a_sl}\n'
                       f'short_abandon_s = {a_short}\n')
        conf.close()
        cmd += ["--config", conf.name]
    run = subprocess.run(cmd, capture_output=True, text=True)
    got = {}
    for line in run.stdout.splitlines():
        r = json.loads(line)
        key = r["interval_start"][:19] + " " + r["service"]
        s = r["sums"]
        g = {k: s.get(k, 0) for k in SUMS}
        for kind in ("timeout", "empty", "key", "withdraw"):
            g["flow_out_" + kind] = s.get("flowed_out_by_kind", {}).get(kind, 0)
        g["local_start"] = r["local_start"]
        g["staffed_ms"] = s["agents"]["staffed_ms"]
        g["paused_ms"] = s["agents"]["paused_ms"]
        g.update({k: r["kpis"][k]["value"] for k in kpis(empty())})
        got[key] = g
    compared = agreed = 0
    diffs = []
    for key in sorted(set(ref) | set(got)):
        r, g = ref.get(key, {}), got.get(key, {})
        names = SUMS + ["staffed_ms", "paused_ms"] + list(kpis(empty()))
        if not r:
            # An interval teledge holds only for a call's concurrency (a long talk spans
            # it): every figure compared below must be zero or none.
            r = {"local_start": g.get("local_start")}
        compared += 1
        if r.get("local_start") == g.get("local_start"):
            agreed += 1
        else:
            diffs.append((key, "local_start", r.get("local_start"), g.get("local_start")))
        for n in names:
            rv = r.get(n, 0 if n in SUMS or n.endswith("_ms") else None)
            gv = g.get(n, 0 if n in SUMS or n.endswith("_ms") else None)
            compared += 1
            same = (rv is None and gv is None) or (
                rv is not None and gv is not None and abs(rv - gv) <= (1.0 if n.endswith("_ms") else 1e-6 * max(1, abs(rv))))
            if same:
                agreed += 1
            else:
                diffs.append((key, n, rv, gv))
    for key, n, rv, gv in diffs:
        print(f"DIFF {key} {n}: reference {rv} teledge {gv}")
    fo = defaultdict(int)
    for f in per.values():
        for k, v in f.items():
            if k.startswith("flow_out_"):
                fo[k] += int(v)
    print(f"{' '.join(a.files)}: {len(lines)} lines, {bad} not queue_log lines "
          f"(teledge exit {run.returncode}: {run.stderr.strip()!r}), {len(cs)} contacts, "
          f"{open_count} open stays, flow-outs by kind {dict(fo)}; "
          f"{len(ref)} intervals; {compared} figures compared, {agreed} agree, {len(diffs)} differ")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
