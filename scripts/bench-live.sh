#!/usr/bin/env bash
# Live-capture benchmark: the most concurrent G.711 calls one core captures without kernel drops.
#
# In a private network namespace (its loopback carries only this traffic), `teledge-loadgen
# capture` (AF_PACKET ring, decode, correlation; pinned to core 1) runs while `teledge-loadgen
# send` (pinned to core 0) puts N calls onto loopback in real time: SIP setup, then RTP both
# ways, 160-byte payload every 20 ms (100 packets/s a call), then BYE. N doubles from START
# until the ring drops packets (or the sender cannot keep its schedule), then bisects. Prints
# one row per step and the best N with its packet rate and peak RSS. Needs root (CAP_NET_RAW,
# unshare -n), util-linux (unshare, taskset) and iproute2. About 2 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_SECONDS=${STEP_SECONDS:-8}
START=${START:-250}
MAX=${MAX:-8000}
BISECT=${BISECT:-3}
RING_MIB=${RING_MIB:-4}
[ "$(id -u)" -eq 0 ] || { echo "bench-live.sh: needs root (AF_PACKET capture, network namespace)" >&2; exit 1; }
cargo build --release --locked --bin teledge-loadgen -q
bin="${CARGO_TARGET_DIR:-target}/release/teledge-loadgen"
dir=target/bench
mkdir -p "$dir"

# run N: prints "drops kernel_packets rtp_sent rtp_target achieved_pps max_lag_ms rss_kib rtp_seen sip"
run() {
  local n=$1 cap="$dir/live-capture.json" snd="$dir/live-send.json"
  unshare -n bash -c "
    ip link set lo up
    taskset -c 1 '$bin' capture --interface lo --seconds $((STEP_SECONDS + 3)) --ring-mib $RING_MIB > '$cap' &
    sleep 1
    taskset -c 0 '$bin' send --calls $n --seconds $STEP_SECONDS > '$snd'
    wait"
  python3 - "$cap" "$snd" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))
print(c["kernel"]["drops"], c["kernel"]["packets"], s["rtp_sent"], s["rtp_target"],
      round(s["achieved_pps"]), round(s["max_lag_ms"], 1), c["peak_rss_kib"], c["rtp_packets"],
      c["sip_messages"])
EOF
}

# A step passes when the kernel dropped nothing and the sender kept its schedule (all packets
# sent, never more than one packet time late): otherwise the sender, not capture, was measured.
echo "machine: $(nproc) cores, $(uname -m), kernel $(uname -r); ring ${RING_MIB} MiB; ${STEP_SECONDS} s a step"
printf '%7s %9s %10s %8s %12s %10s %10s %9s %8s\n' calls "pkts/s" "rtp seen" drops "kernel pkts" "lag ms" "RSS MiB" "SIP msgs" result
best=0 best_row="" worst=0 sender_limited=0
step() {
  local n=$1 drops kpk sent target pps lag rss seen sipn verdict
  read -r drops kpk sent target pps lag rss seen sipn < <(run "$n")
  if [ "$sent" -lt "$target" ] || awk "BEGIN{exit !($lag > 20)}"; then verdict="sender-late"; sender_limited=1
  elif [ "$drops" -gt 0 ]; then verdict="DROPS"
  else verdict="ok"; fi
  printf '%7d %9d %10d %8d %12d %10s %10.1f %9d %8s\n' "$n" "$pps" "$seen" "$drops" "$kpk" "$lag" "$(awk "BEGIN{print $rss/1024}")" "$sipn" "$verdict"
  if [ "$verdict" = ok ]; then
    [ "$n" -gt "$best" ] && { best=$n; best_row="$n calls, $pps packets/s, peak RSS $(awk "BEGIN{printf \"%.1f\", $rss/1024}") MiB"; }
    return 0
  fi
  return 1
}

n=$START
while [ "$n" -le "$MAX" ] && step "$n"; do n=$((n * 2)); done
worst=$n
if [ "$worst" -le "$MAX" ] && [ "$best" -gt 0 ]; then
  lo=$best hi=$worst
  for _ in $(seq "$BISECT"); do
    mid=$(((lo + hi) / 2))
    [ "$mid" -le "$lo" ] && break
    if step "$mid"; then lo=$mid; else hi=$mid; fi
  done
fi
echo "best without kernel drops: ${best_row:-none}"
[ "$sender_limited" -eq 0 ] || echo "note: at least one step was limited by the sender, not by capture; the real capture limit is higher"
