#!/usr/bin/env bash
# Source-equivalence campaign (a campaign tool, not CI): every source must give the records
# `teledge replay` gives for the same traffic ("one pipeline that every command uses").
#
# For each capture in a folder (default: the bundled tests/data captures with SIP or RTP,
# then captures made by `teledge-gencap`), it gets the records of
#   replay   `teledge replay FILE` (the reference: file times, one thread);
#   live     `teledge run` capturing one end of a veth pair in a private network namespace
#            (AF_PACKET ring, `[[capture]] threads` = 1 and 2: a PACKET_FANOUT group, so SIP
#            and RTP of one call may arrive on different threads) while `tcpreplay` sends the
#            capture into the other end, paced (`--multiplier`, its own pace when it lasts at
#            most PACED_MAX_S seconds, else compressed to about that) and at `--topspeed`;
#   hep      a second `teledge run` whose HEP listener (TCP) receives what the live daemon
#            (1 thread) relays through its `[hep_out]`: the repository's own HEPv3 encoder
#            (`src/relay`), fed by real captured traffic, so the frames are stamped with the
#            kernel's capture times as a PBX stamps its own. No real HEP sender is installed
#            here (no heplify, captagent or Asterisk res_hep; Kamailio's siptrace only traces
#            SIP that Kamailio itself proxies), so this is the sender used.
# Records of `teledge run` are read where a real collector (`teledge collect`, mutual TLS,
# in the namespace) stored them; privacy is `clear` so identifiers compare as captured.
#
# Each run's records are compared with two references: `file`, the replay of the capture
# itself, and `tap`, the replay of what tcpdump recorded on the capturing interface during
# the run (the same bytes at the kernel's times: what the daemon was given). Differences
# against `tap` are the pipeline's; those only against `file` come from the sending.
# Records are matched (calls by Call-ID and first-message order, orphan streams by source,
# destination and SSRC) and compared field by field. IGNORED FIELDS, and why:
#   record_id         the daemon stores the id keyed under its identifier key (src/privacy.rs),
#                     and against `file` it hashes the first INVITE's time, which differs.
#   closed_by         `capture_end` (replay) and `shutdown` (daemon) name the same event, the
#                     end of input: compared as equal.
#   absolute times (*_time, metrics.start_time/end_time, DTMF times)
#                     against `tap`: equal within 1.5 us (tcpdump's socket and the daemon's
#                     each read the clock as the kernel hands them the frame). Against `file`
#                     the clock is another: aligned by a least-squares line (tcpreplay's
#                     --multiplier pace is off by a few per cent) and then within TIME_TOL_MS;
#                     not compared at --topspeed, where the spacing is tcpreplay's.
#   arrival-derived measures (durations *_s, RTP deltas, jitter, skew, timestamp jumps,
#                     jitter-buffer discards/resyncs and the loss they make, R-factor, MOS,
#                     the worse direction, RTCP round trips from capture times)
#                     against `tap`: equal. Against `file`: within tolerance at the capture's
#                     own pace (multiplier 1), else skipped — a compressed or top-speed pace
#                     changes arrival against the RTP timestamps by design.
#   HEP run: media_quality, hep_rtcp, stream records
#                     HEP carries SIP and RTCP (as JSON reports, kept in hep_rtcp), not RTP:
#                     nothing of RTP is measured from a HEP source.
# Everything else (Call-ID, parties, addresses, outcome, state, closed_by, statuses, message
# and retransmission counts, SDP, codecs, RTP packet, loss, duplicate and sequence counters,
# DTMF events, the number and kind of records) must be equal. The daemon's exit summary is
# compared with replay's capture summary for the counters both have (SIP messages, calls).
#
# Needs root (unshare -n, CAP_NET_RAW), iproute2, openssl, python3 and tcpreplay (Debian;
# installed here if missing). Writes target/campaign/sources/report.txt and one directory of
# record files a capture. Usage: scripts/sources-campaign.sh [FOLDER]
#   ONLY="a.pcap b.pcap" restricts the captures, MODES restricts the runs (default
#   "paced1 paced2 top1 top2"), PACED_MAX_S (default 10), TIME_TOL_MS (default 60);
#   COMPARE_ONLY=1 compares the records of the last campaign again without running it.
set -euo pipefail
cd "$(dirname "$0")/.."
FOLDER=${1:-tests/data}
MODES=${MODES:-paced1 paced2 top1 top2}
PACED_MAX_S=${PACED_MAX_S:-10}
TIME_TOL_MS=${TIME_TOL_MS:-60}
[ "$(id -u)" -eq 0 ] || { echo "sources-campaign.sh: needs root (network namespace, AF_PACKET)" >&2; exit 1; }
command -v tcpreplay >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q tcpreplay >/dev/null
command -v capinfos >/dev/null || { echo "sources-campaign.sh: needs capinfos (Debian: wireshark-common)" >&2; exit 1; }
cargo build --release --locked -p teledge --bin teledge -q
cargo build --release --locked -p teledge-tools --bin teledge-gencap -q
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release")
dir=$(realpath -m target/campaign/sources)
if [ -n "${COMPARE_ONLY:-}" ]; then
  mapfile -t captures < "$dir/captures.txt"
else
rm -rf "$dir" && mkdir -p "$dir/pki" "$dir/gen"
. scripts/bench-common.sh
site_pki "$dir/pki" collector localhost "$SERVER_LOCALHOST" live live "$CLIENT" hep hep "$CLIENT"

# Generated captures: many overlapping calls with RTP both ways (SIP and RTP of one call on
# different fanout threads), and the B2BUA with direct media.
"$bin/teledge-gencap" --calls 40 --rtp 150 --interval-ms 60 --out "$dir/gen/gen_40_calls.pcap" >/dev/null
"$bin/teledge-gencap" --b2bua-direct-media --out "$dir/gen/gen_b2bua.pcap" >/dev/null

# agent_config NODE SPOOL PORT SOURCES: an agent with clear identifiers forwarding to the
# collector on PORT.
agent_config() {
  cat <<EOF
[node]
id = "$1"
$4
[privacy]
mode = "clear"
[spool]
dir = "$2"
key_file = "$dir/pki/spool.key"
key_id = 1
flush_interval_ms = 20
[uplink]
url = "https://localhost:$3/v1/batches"
ca_file = "$dir/pki/ca.pem"
cert_file = "$dir/pki/$1.pem"
key_file = "$dir/pki/$1.key"
batch_records = 200
[observe]
enabled = false
[shutdown]
drain_timeout_s = 20
EOF
}

# captures: the folder's captures whose replay has a call or RTP stream record, then the
# generated ones. Link types tcpreplay cannot put on an Ethernet veth are listed as skipped.
captures=()
for f in "$FOLDER"/*.pcap "$FOLDER"/*.pcapng "$FOLDER"/*.cap "$dir"/gen/*.pcap; do
  [ -f "$f" ] || continue
  base=$(basename "$f")
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $base "* ]]; then continue; fi
  n=$("$bin/teledge" replay --no-progress "$f" 2>/dev/null | grep -c '"type":"\(call\|stream\)"' || true)
  [ "$n" -gt 0 ] || { echo "skip $base: no SIP call or RTP stream in replay" >> "$dir/skipped.txt"; continue; }
  enc=$(capinfos -T -E "$f" | awk -F'\t' 'NR==2{print $2}')
  [ "$enc" = ether ] || { echo "skip $base: link type $enc, tcpreplay sends Ethernet frames only" >> "$dir/skipped.txt"; continue; }
  captures+=("$f")
done
printf '%s\n' "${captures[@]}" > "$dir/captures.txt"

# run_live CAPTURE OUT MODE: one namespace, one collector, the live daemon (and in 1-thread
# runs the HEP daemon fed by its relay), tcpreplay, SIGTERM; records land in OUT/collected.
run_live() {
  local f=$1 out=$2 mode=$3 threads pace multiplier
  threads=${mode: -1}
  case $mode in
    paced*) read -r multiplier < "$out/multiplier"; pace="--multiplier=$multiplier" ;;
    top*) pace="--topspeed" ;;
  esac
  rm -rf "$out/$mode" && mkdir -p "$out/$mode"
  # The namespace is private: fixed ports cannot clash.
  local w="$out/$mode" port=18443 hep_port=19060 hep_out=""
  if [ "$threads" = 1 ]; then
    agent_config hep "$w/spool-hep" $port "[hep]
tcp = \"127.0.0.1:$hep_port\"" > "$w/hep.toml"
    hep_out="[hep_out]
enabled = true
address = \"127.0.0.1:$hep_port\"
transport = \"tcp\""
  fi
  agent_config live "$w/spool-live" $port "[[capture]]
interface = \"tg1\"
threads = $threads
ring_mib = 16
block_kib = 256
block_timeout_ms = 20
$hep_out" > "$w/live.toml"
  # Whatever fails inside is written to $w/errors and the campaign goes on; every process
  # started in the namespace is stopped when its shell ends.
  unshare -n bash -c "
    trap 'kill \$(jobs -p) 2>/dev/null' EXIT
    ip link set lo up
    ip link add tg0 type veth peer name tg1
    ip link set tg0 mtu 65000; ip link set tg1 mtu 65000
    ip link set tg0 up; ip link set tg1 up
    '$bin/teledge' collect --listen 127.0.0.1:$port --ca '$dir/pki/ca.pem' --cert '$dir/pki/collector.pem' \\
      --key '$dir/pki/collector.key' --out '$w/collected' > '$w/collector.port' 2> '$w/collector.log' &
    cpid=\$!
    for _ in \$(seq 50); do [ -s '$w/collector.port' ] && break; sleep 0.1; done
    if [ $threads = 1 ]; then
      '$bin/teledge' run --config '$w/hep.toml' 2> '$w/hep.log' &
      hpid=\$!
      for _ in \$(seq 100); do grep -q 'teledge running' '$w/hep.log' 2>/dev/null && break; sleep 0.1; done
    fi
    '$bin/teledge' run --config '$w/live.toml' 2> '$w/live.log' &
    lpid=\$!
    for _ in \$(seq 100); do grep -q 'teledge running' '$w/live.log' 2>/dev/null && break; sleep 0.1; done
    tcpdump -i tg1 -s 0 -B 32768 -U --time-stamp-precision=nano -w '$w/tap.pcap' 2> '$w/tcpdump.log' &
    tpid=\$!
    for _ in \$(seq 50); do grep -q listening '$w/tcpdump.log' 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    timeout 120 tcpreplay -i tg0 $pace '$f' > '$w/tcpreplay.out' 2>&1 || echo \"tcpreplay exit \$?\" >> '$w/errors'
    sleep 2.5
    kill -INT \$tpid; wait \$tpid || true
    kill -TERM \$lpid; wait \$lpid || echo \"live daemon exit \$?\" >> '$w/errors'
    if [ $threads = 1 ]; then sleep 1; kill -TERM \$hpid; wait \$hpid || echo \"hep daemon exit \$?\" >> '$w/errors'; fi
    sleep 0.5
    kill -TERM \$cpid; wait \$cpid || true
  "
}

for f in "${captures[@]}"; do
  base=$(basename "$f")
  out="$dir/$base"
  mkdir -p "$out"
  "$bin/teledge" replay --no-progress "$f" > "$out/replay.jsonl" 2> "$out/replay.log" || true
  # Paced at the capture's own pace when short enough, else compressed to about PACED_MAX_S;
  # a capture whose clock jumps (more than a minute between two packets, either way) is
  # sent at top speed only.
  tshark -r "$f" -T fields -e frame.time_delta -e frame.time_relative 2>/dev/null \
    | awk -v m="$PACED_MAX_S" '{ d = $1 < 0 ? -$1 : $1; if (d > max) max = d; dur = $2 }
        END { if (max > 60 || dur < 0) print "none"; else if (dur <= m) print 1; else printf "%.3f\n", dur / m }' > "$out/multiplier"
  for mode in $MODES; do
    if [[ $mode == paced* ]] && [ "$(cat "$out/multiplier")" = none ]; then continue; fi
    run_live "$f" "$out" "$mode" || echo "run failed: $?" >> "$out/$mode/errors"
    # The reference with the same bytes and the same kernel times: what tcpdump saw on tg1.
    "$bin/teledge" replay --no-progress "$out/$mode/tap.pcap" > "$out/$mode/tap.jsonl" 2> /dev/null || true
  done
done
fi

python3 - "$dir" "$TIME_TOL_MS" "${captures[@]}" <<'PY' | tee "$dir/report.txt"
import json, os, sys, re, glob, statistics
from datetime import datetime
from collections import Counter, defaultdict

root, tol_ms, caps = sys.argv[1], float(sys.argv[2]), sys.argv[3:]

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
# Measured from arrival times (see the header): against the original file compared within
# tolerance only at the capture's own pace, never at top speed or compressed; against the
# tap (same kernel times) compared exactly.
ARRIVAL = {"duration_s", "post_dial_delay_s", "time_to_answer_s", "ring_duration_s",
           "talk_duration_s", "hold_duration_s", "min_delta_ms", "mean_delta_ms",
           "max_delta_ms", "min_jitter_ms", "mean_jitter_ms", "max_jitter_ms", "max_skew_ms",
           "discarded", "resyncs", "effective_loss_percent", "burst_ratio", "r_factor", "mos",
           "timestamp_jumps", "round_trip_samples", "round_trip_rejected",
           "last_round_trip_ms", "min_round_trip_ms", "max_round_trip_ms",
           "mean_round_trip_ms", "one_way_delay_ms", "delay_source", "bpl", "ie",
           "jitter_buffer_ms", "packet_loss_percent", "worst_direction"}
# The same end of input, named for its source: the end of the file in replay, SIGTERM in
# the daemon.
SAME = {("capture_end", "shutdown")}

def ts(s):
    head, _, frac = s[:-1].partition(".")
    return datetime.strptime(head + "+0000", "%Y-%m-%dT%H:%M:%S%z").timestamp() + float("0." + (frac or "0"))

def load_jsonl(path):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]

def load_collected(w, node):
    out = []
    for f in sorted(glob.glob(os.path.join(w, "collected", node, "*.jsonl"))):
        out += [json.loads(l)["record"] for l in open(f) if l.strip()]
    return out

def keyed(records, hep):
    """Calls by (Call-ID, n-th with that Call-ID in time order), orphan streams by flow."""
    by, seen = {}, Counter()
    for r in sorted((r for r in records if r.get("type") == "call"),
                    key=lambda r: r.get("first_message_time") or ""):
        seen[r["call_id"]] += 1
        by[("call", r["call_id"], seen[r["call_id"]])] = r
    if not hep:
        for r in records:
            if r.get("type") == "stream":
                by[("stream", r["src"], r["dst"], r["ssrc"])] = r
    return by

def walk(a, b, path, ctx, diffs, pairs):
    name = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])
    if name == "record_id":
        return
    if ctx["hep"] and name in ("media_quality", "hep_rtcp"):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            walk(a.get(k), b.get(k), f"{path}.{k}", ctx, diffs, pairs)
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append((path, f"{len(a)} items", f"{len(b)} items"))
            return
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", ctx, diffs, pairs)
        return
    if isinstance(a, str) and isinstance(b, str) and TIME_RE.match(a) and TIME_RE.match(b):
        pairs.append((path, ts(a), ts(b)))
        return
    if name in ARRIVAL and not ctx["exact"]:
        if not ctx["own_pace"]:
            return
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if name.endswith("_ms"):
                ok = abs(a - b) <= max(5.0, 0.05 * abs(a))
            elif name.endswith("_s"):
                ok = abs(a - b) * 1000 <= tol_ms
            else:
                ok = abs(a - b) <= max(0.5, 0.05 * abs(a))
            if not ok:
                diffs.append((path, a, b, "arrival"))
            return
        if a != b:
            diffs.append((path, a, b, "arrival"))
        return
    if isinstance(a, float) and isinstance(b, (int, float)) and ctx["exact"]:
        if abs(a - b) <= 1e-6 * max(1.0, abs(a)):
            return
    if ctx["hep"] and name.endswith("_s") and isinstance(a, float) and isinstance(b, float):
        # HEP stamps carry microseconds, the tap nanoseconds: a difference of two times
        # may round the other way.
        if abs(a - b) <= 1.5e-6:
            return
    if a != b and not (isinstance(a, str) and (a, b) in SAME):
        diffs.append((path, a, b))

def compare(ref, got, ctx):
    ra, rb = keyed(ref, ctx["hep"]), keyed(got, ctx["hep"])
    diffs, pairs = [], []
    for k in sorted(set(ra) | set(rb), key=str):
        if k not in rb:
            diffs.append((str(k[:2]), "present", "MISSING"))
        elif k not in ra:
            diffs.append((str(k[:2]), "absent", "EXTRA"))
        else:
            walk(ra[k], rb[k], k[0], ctx, diffs, pairs)
    if pairs:
        if ctx["exact"]:
            # Same kernel times: equal to the microsecond the records print.
            for path, a, b in pairs:
                if abs(a - b) > 1.5e-6:
                    diffs.append((path, f"{a:.6f}", f"{b:.6f}"))
        elif ctx["timed"]:
            # The live clock is the kernel's, the file's another, and tcpreplay's pace is
            # not exactly the one asked: aligned by a least-squares line a = k b + c.
            bs = [b for _, _, b in pairs]
            as_ = [a for _, a, _ in pairs]
            mb, ma = statistics.fmean(bs), statistics.fmean(as_)
            var = sum((b - mb) ** 2 for b in bs)
            k = sum((b - mb) * (a - ma) for _, a, b in pairs) / var if var > 0 else ctx["scale"]
            c = ma - k * mb
            ctx["fit"] = k
            if abs(k / ctx["scale"] - 1) > 0.02:
                # tcpreplay did not keep the pace asked (a loaded machine): times and arrival
                # measures then say so, not the pipeline; they are left to the tap comparison.
                diffs[:] = [d for d in diffs if len(d) < 4]
                pairs = []
            for path, a, b in pairs:
                d = a - (k * b + c)
                if abs(d) * 1000 > tol_ms * ctx["scale"]:
                    diffs.append((path, f"{d * 1000:+.1f} ms", "(after alignment)"))
    return len(ra), len(rb), diffs

total = Counter()
for cap in caps:
    base = os.path.basename(cap)
    out = os.path.join(root, base)
    replay = load_jsonl(os.path.join(out, "replay.jsonl"))
    mult = open(os.path.join(out, "multiplier")).read().strip()
    for mode in sorted(os.listdir(out)):
        w = os.path.join(out, mode)
        if not os.path.isdir(w):
            continue
        tap = load_jsonl(os.path.join(w, "tap.jsonl"))
        for node in (["live", "hep"] if mode.endswith("1") else ["live"]):
            got = load_collected(w, node)
            hep = node == "hep"
            paced = mode.startswith("paced")
            for refname, ref in (("file", replay), ("tap", tap)):
                exact = refname == "tap"
                ctx = dict(hep=hep, exact=exact, timed=paced, own_pace=paced and mult == "1",
                           scale=float(mult) if paced else 1.0)
                na, nb, diffs = compare(ref, got, ctx)
                if exact:
                    # The daemon announces what decode dropped with a gap record; replay counts
                    # it in its summary. A gap is a difference only if the tap's replay lost
                    # nothing.
                    summary = next((r for r in tap if r.get("type") == "capture_summary"), {})
                    dec = summary.get("decode", {})
                    lost = (dec.get("frames_failed", 0) + dec.get("tcp", {}).get("bytes_dropped", 0)
                            + dec.get("stream_bytes_discarded", 0)
                            + dec.get("fragments", {}).get("timed_out", 0)
                            + dec.get("fragments", {}).get("evicted", 0))
                    for g in (r for r in got if r.get("type") == "gap"):
                        if not (g.get("reason") == "input_dropped" and lost > 0):
                            diffs.append(("gap record", f"decode lost {lost}", f"{g.get('reason')}: {g.get('detail')}"))
                    # Summary counters: the kernel counted every frame the tap saw (the
                    # daemon runs longer than tcpdump: more is fine) and dropped none.
                    if not hep:
                        log = os.path.join(w, "live.log")
                        stop = [l.split("teledge: stopped: ", 1)[1] for l in open(log) if "teledge: stopped: " in l] if os.path.exists(log) else []
                        if not stop:
                            diffs.append(("summary", "a stop summary", "none"))
                        else:
                            st = json.loads(stop[-1])
                            # Non-IP frames (STP, ARP) stop at the daemon's kernel filter.
                            if st["kernel_drops"] or st["packets_captured"] < dec.get("frames", 0) - dec.get("non_ip", 0):
                                diffs.append(("summary", f"{dec.get('frames')} frames tapped", f"{st['packets_captured']} captured, {st['kernel_drops']} kernel drops"))
                    if os.path.exists(os.path.join(w, "errors")):
                        diffs.append(("exit", "0", open(os.path.join(w, "errors")).read().strip()))
                label = f"{base} {mode} {node} vs {refname}"
                total["runs"] += 1
                if "fit" in ctx:
                    off = abs(ctx["fit"] / ctx["scale"] - 1) > 0.02
                    label += f" (pace {ctx['fit']:.3f}x asked {ctx['scale']:.3f}x{'; sender off pace: times and arrival measures left to the tap' if off else ''})"
                if not diffs:
                    print(f"same {label}: {na} records")
                    continue
                total["differ"] += 1
                print(f"DIFF {label}: {na} records in the reference, {nb} here; {len(diffs)} differences")
                by_field = Counter(re.sub(r"\[\d+\]", "[]", d[0]) for d in diffs)
                for field, n in by_field.most_common(10):
                    ex = next(d for d in diffs if re.sub(r"\[\d+\]", "[]", d[0]) == field)
                    print(f"    {n:4d} x {field}: {refname} {ex[1]!r} / {node} {ex[2]!r}")
print(f"\n{total['runs']} comparisons over {len(caps)} captures; {total['differ']} differ")
PY
[ -f "$dir/skipped.txt" ] && cat "$dir/skipped.txt" | tee -a "$dir/report.txt"
