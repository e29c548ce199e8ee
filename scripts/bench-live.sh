#!/usr/bin/env bash
# Live-capture benchmark: the most concurrent G.711 calls (20 ms packets, both ways) that
# `teledge run` captures on one core without a single kernel drop.
#
# In a private network namespace (its loopback carries only this traffic), `teledge run`
# (AF_PACKET ring → decode → correlation → spool; pinned to core 1) captures while
# `teledge-loadgen send` (pinned to core 0) puts N calls onto loopback in real time: SIP
# setup, then RTP both ways, 160-byte payload every 20 ms (100 packets/s a call), then BYE.
# After each step teledge is stopped with SIGTERM and its exit summary gives the kernel's
# packet and drop counters; peak RSS is VmHWM just before the stop. N doubles from START
# until the ring drops packets (or the sender cannot keep its schedule), then bisects.
# Needs root (CAP_NET_RAW, unshare -n), util-linux, iproute2 and openssl (test certificates
# for the uplink configuration; no collector runs, records stay in the spool).
#
# PEER=tshark runs the same steps with `tshark -i lo -q -z rtp,streams` (RTP analysis of
# every stream, as teledge does; libpcap's default 2 MiB buffer, or BUFFER_MIB) in teledge's
# place; drops are what TShark reports at exit, RSS is tshark's plus dumpcap's.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_SECONDS=${STEP_SECONDS:-8}
START=${START:-250}
MAX=${MAX:-8000}
BISECT=${BISECT:-3}
RING_MIB=${RING_MIB:-16}
PEER=${PEER:-teledge}
BUFFER_MIB=${BUFFER_MIB:-2}
[ "$(id -u)" -eq 0 ] || { echo "bench-live.sh: needs root (AF_PACKET capture, network namespace)" >&2; exit 1; }
cargo build --release --locked -p teledge --bin teledge -q
cargo build --release --locked -p teledge-tools --bin teledge-loadgen -q
bindir="${CARGO_TARGET_DIR:-target}/release"
dir=$(realpath -m target/bench/live)
rm -rf "$dir" && mkdir -p "$dir/pki"

# Keys and certificates the configuration must name (the uplink is never reached).
( cd "$dir/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench -keyout node.key \
    -out node.csr 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > node.ext
  openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile node.ext \
    -out node.pem 2>/dev/null
  head -c 32 /dev/urandom > spool.key; head -c 32 /dev/urandom > site.key )

config() { # spool dir
  cat <<EOF
[node]
id = "bench"
[[capture]]
interface = "lo"
ring_mib = $RING_MIB
block_kib = 1024
[privacy]
mode = "keyed_hash"
site_key_file = "$dir/pki/site.key"
[spool]
dir = "$1"
key_file = "$dir/pki/spool.key"
[uplink]
url = "https://127.0.0.1:1/v1/batches"
ca_file = "$dir/pki/ca.pem"
cert_file = "$dir/pki/node.pem"
key_file = "$dir/pki/node.key"
[observe]
enabled = false
[shutdown]
drain_timeout_s = 1
EOF
}

# run_tshark N: the same line for TShark (records: RTP streams it reported).
run_tshark() {
  local n=$1 snd="$dir/send-$1.json" log="$dir/tshark-$1.log" out="$dir/tshark-$1.txt" rss="$dir/rss-$1"
  unshare -n bash -c "
    ip link set lo up
    taskset -c 1 tshark -i lo -B $BUFFER_MIB -q -o rtp.heuristic_rtp:TRUE -z rtp,streams > '$out' 2> '$log' &
    pid=\$!
    sleep 2
    taskset -c 0 '$bindir/teledge-loadgen' send --calls $n --seconds $STEP_SECONDS > '$snd'
    sleep 1
    dumpcap=\$(pgrep -P \$pid dumpcap || true)
    a=\$(awk '/VmHWM/{print \$2}' /proc/\$pid/status)
    b=\$( [ -n \"\$dumpcap\" ] && awk '/VmHWM/{print \$2}' /proc/\$dumpcap/status || echo 0)
    echo \$((a + b)) > '$rss'
    c=\$(awk '{print \$14 + \$15}' /proc/\$pid/stat)
    d=\$( [ -n \"\$dumpcap\" ] && awk '{print \$14 + \$15}' /proc/\$dumpcap/stat || echo 0)
    echo \$((c + d)) > '$rss.cpu'
    kill -INT \$pid
    wait \$pid || true"
  python3 - "$log" "$snd" "$rss" "$out" <<'EOF'
import json, re, sys
log = open(sys.argv[1]).read()
dropped = sum(int(m) for m in re.findall(r"(\d+) packets? dropped", log))
captured = sum(int(m) for m in re.findall(r"(\d+) packets? captured", log))
s = json.load(open(sys.argv[2]))
streams = sum(1 for l in open(sys.argv[4]) if re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\.\d+\.\d+\.\d+\s", l))
print(dropped, captured, s["rtp_sent"], s["rtp_target"], round(s["achieved_pps"]),
      round(s["max_lag_ms"], 1), open(sys.argv[3]).read().strip(), streams,
      int(open(sys.argv[3] + ".cpu").read()) / 100)
EOF
}

# run N: prints "drops kernel_packets rtp_sent rtp_target achieved_pps max_lag_ms rss_kib records"
run() {
  if [ "$PEER" = tshark ]; then run_tshark "$1"; return; fi
  local n=$1 cfg="$dir/run-$1.toml" snd="$dir/send-$1.json" log="$dir/run-$1.log" rss="$dir/rss-$1"
  config "$dir/spool-$n" > "$cfg"
  unshare -n bash -c "
    ip link set lo up
    taskset -c 1 '$bindir/teledge' run --config '$cfg' 2> '$log' &
    pid=\$!
    sleep 1.5
    taskset -c 0 '$bindir/teledge-loadgen' send --calls $n --seconds $STEP_SECONDS > '$snd'
    sleep 1
    grep VmHWM /proc/\$pid/status | awk '{print \$2}' > '$rss'
    awk '{print \$14 + \$15}' /proc/\$pid/stat > '$rss.cpu'
    kill -TERM \$pid
    wait \$pid"
  python3 - "$log" "$snd" "$rss" <<'EOF'
import json, sys
summary = None
for line in open(sys.argv[1]):
    if "teledge: stopped: " in line:
        summary = json.loads(line.split("teledge: stopped: ", 1)[1])
if summary is None:
    sys.exit("teledge run left no summary; see " + sys.argv[1])
s = json.load(open(sys.argv[2]))
print(summary["kernel_drops"], summary["packets_captured"], s["rtp_sent"], s["rtp_target"],
      round(s["achieved_pps"]), round(s["max_lag_ms"], 1), open(sys.argv[3]).read().strip(),
      summary["records_produced"], int(open(sys.argv[3] + ".cpu").read()) / 100)
EOF
  rm -rf "$dir/spool-$n"
}

# A step passes when the kernel dropped nothing and the sender kept its schedule (all packets
# sent, never more than one packet time late): otherwise the sender, not capture, was measured.
echo "machine: $(nproc) cores, $(uname -m), kernel $(uname -r); $PEER; ring/buffer ${RING_MIB}/${BUFFER_MIB} MiB; ${STEP_SECONDS} s a step"
printf '%7s %9s %12s %8s %10s %10s %9s %10s %12s\n' calls "pkts/s" "kernel pkts" drops "lag ms" "RSS MiB" records "CPU s" result
best=0 best_row="" sender_limited=0
step() {
  local n=$1 drops kpk sent target pps lag rss records cpu verdict
  read -r drops kpk sent target pps lag rss records cpu < <(run "$n")
  [ -n "$records" ] || { echo "bench-live.sh: step $n failed (see $dir/run-$n.log)" >&2; exit 1; }
  if [ "$sent" -lt "$target" ] || awk "BEGIN{exit !($lag > 20)}"; then verdict="sender-late"; sender_limited=1
  elif [ "$drops" -gt 0 ]; then verdict="DROPS"
  else verdict="ok"; fi
  printf '%7d %9d %12d %8d %10s %10.1f %9d %10s %12s\n' "$n" "$pps" "$kpk" "$drops" "$lag" "$(awk "BEGIN{print $rss/1024}")" "$records" "$cpu" "$verdict"
  if [ "$verdict" = ok ]; then
    [ "$n" -gt "$best" ] && { best=$n; best_row="$n calls, $pps packets/s, peak RSS $(awk "BEGIN{printf \"%.1f\", $rss/1024}") MiB, $cpu CPU s"; }
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
