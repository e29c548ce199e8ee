#!/usr/bin/env bash
# Hostile traffic against a running `teledge run` (a campaign tool, not CI; root).
#
#   scripts/attack-campaign.sh [ATTACK...]     (SECONDS=60 a attack; default: every attack)
#
# Each attack runs in its own network namespace (`unshare -n`): a veth pair, `teledge run`
# (release build) capturing the veth's far end over AF_PACKET and listening for HEP on
# 127.0.0.1 (UDP and TCP; the daemon offers TLS too, not attacked here), a local `teledge
# collect` as its collector. `scripts/attack-traffic.py ATTACK SECONDS` sends the flood; in
# its middle one real call (INVITE with SDP, 180, 200, ACK, 3 s of RTP both ways, BYE) is
# placed by the same path (raw frames for capture attacks, HEP over UDP for HEP attacks).
# After the flood and a drain, one line an attack:
#   attack, frames/rounds sent, peak RSS (VmHWM, MiB), CPU seconds, the daemon's exit code,
#   answered calls in the collector's records (the real call: 1, closed by BYE, talking ~3 s),
#   and the gap records (reason:count) the run announced upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS:-60}
[ "$(id -u)" -eq 0 ] || { echo "attack-campaign.sh: needs root (AF_PACKET, namespaces)" >&2; exit 1; }
ATTACKS=("$@")
[ ${#ATTACKS[@]} -gt 0 ] || ATTACKS=(invite options register responses indialog rtp rtcp
  sdp-huge tcp-headers tcp-halfopen frag turn hep-udp-invite hep-udp-malformed
  hep-tcp-slowloris hep-tcp-many hep-tcp-garbage)
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p teledge --bin teledge -q
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/teledge")
. scripts/bench-common.sh
bench_work
keep=$(realpath -m target/attack-campaign)   # logs and readings of the last run, kept
rm -rf "$keep" && mkdir -p "$keep"
site_pki "$work" collector localhost "$SERVER_LOCALHOST" edge edge-01 "$CLIENT"

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $SECONDS_EACH s an attack; teledge $(git rev-parse --short HEAD)"
printf '%-18s %10s %8s %6s %4s %8s %s\n' attack sent "RSS MiB" "CPU s" exit answered gaps
for attack in "${ATTACKS[@]}"; do
  rm -rf "$work/spool" "$work/out"
  cfg="$keep/$attack.toml" log="$keep/$attack.log" res="$keep/$attack.res"
  { edge_config "https://localhost:8443/v1/batches"
    cat <<EOF
[[capture]]
interface = "tg1"
ring_mib = 16
[hep]
udp = "127.0.0.1:9060"
tcp = "127.0.0.1:9061"
[observe]
listen = "127.0.0.1:9464"
[shutdown]
drain_timeout_s = 30
EOF
  } > "$cfg"
  case $attack in hep-*) call=call-hep ;; *) call=call-capture ;; esac
  unshare -n bash -c "
    set -e
    ip link set lo up
    ip link add tg0 type veth peer name tg1
    ip link set tg0 up; ip link set tg1 up
    '$bin' collect --listen 127.0.0.1:8443 --ca '$work/ca.pem' --cert '$work/collector.pem' \
      --key '$work/collector.key' --out '$work/out' > /dev/null 2>&1 &
    cpid=\$!
    '$bin' run --config '$cfg' 2> '$log' &
    pid=\$!
    sleep 2
    python3 scripts/attack-traffic.py '$attack' $SECONDS_EACH tg0 9060 9061 > '$res.sent' 2>&1 &
    apid=\$!
    sleep $((SECONDS_EACH / 2))
    CALL_N=1 python3 scripts/attack-traffic.py $call 0 tg0 9060 9061 > '$res.call' 2>&1
    wait \$apid || true
    sleep 3
    curl -s http://127.0.0.1:9464/metrics > '$res.metrics' || true
    grep VmHWM /proc/\$pid/status | awk '{print \$2}' > '$res.rss'
    awk '{print (\$14 + \$15) / 100}' /proc/\$pid/stat > '$res.cpu'
    kill -TERM \$pid
    code=0; wait \$pid || code=\$?
    echo \$code > '$res.exit'
    sleep 3
    kill \$cpid; wait \$cpid || true"
  cp -r "$work/out" "$keep/$attack.out" 2>/dev/null || true
  python3 - "$work" "$attack" "$keep" <<'PY'
import glob, json, sys, collections
work, attack, keep = sys.argv[1], sys.argv[2], sys.argv[3]
res = f"{keep}/{attack}.res"
records = []
for path in glob.glob(f"{work}/out/**/*.jsonl*", recursive=True):
    for line in open(path, errors="replace"):
        try:
            records.append(json.loads(line)["record"])
        except ValueError:
            pass
answered = [r for r in records if r.get("type") == "call" and r.get("outcome") == "answered"]
real = [r for r in answered if r.get("closed_by") == "bye" and 2.5 < (r.get("talk_duration_s") or 0) < 4]
gaps = collections.Counter()
for r in records:
    if r.get("type") == "gap":
        gaps[r["reason"]] += r.get("dropped") or 0
        with open(f"{keep}/{attack}.gaps", "a") as g:
            g.write(f"{r['reason']} {r.get('dropped')} {r.get('detail')}\n")
log = open(f"{keep}/{attack}.log").read()
panic = "panicked" in log
sent = open(res + ".sent").read().split(":")[-1].strip()
rss = int(open(res + ".rss").read() or 0) / 1024
print(f"{attack:<18} {sent:>10} {rss:8.1f} {open(res + '.cpu').read().strip():>6} "
      f"{open(res + '.exit').read().strip():>4} {len(answered)}/{len(real)} "
      + " ".join(f"{k}:{v}" for k, v in sorted(gaps.items()))
      + (" PANIC" if panic else ""))
PY
done
