#!/usr/bin/env bash
# Live listen under load (issue 17): do LISTENERS concurrent WHEP listeners cost capture
# packets while `teledge run` captures CALLS concurrent G.711 calls?
#
# In a private network namespace (its loopback carries only this traffic), `teledge run`
# (AF_PACKET ring → decode → correlation → spool, live listen on; pinned to core 1) captures
# while `teledge-loadgen send` (core 0) puts CALLS calls onto loopback in real time (RTP both
# ways, 20 ms packets: 100 packets/s a call) and `teledge-whepload` (core 0) opens one WHEP
# session on webrtc-rs for each of the first LISTENERS calls and keeps it for the rest of the
# step. Each session mixes both directions of its call and sends it to its listener over
# DTLS-SRTP — in the same process as capture. The same step runs twice: with the listeners,
# and without (the peer). After each, teledge is stopped with SIGTERM; its exit summary gives
# the kernel's packet and drop counters, /metrics before the stop the listen counters.
# Needs root (CAP_NET_RAW, unshare -n), util-linux, iproute2, openssl, python3.
#
#   sudo scripts/bench-listen.sh        (CALLS=1000 LISTENERS=20 STEP_SECONDS=12)
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-1000}
LISTENERS=${LISTENERS:-20}
STEP_SECONDS=${STEP_SECONDS:-12}
RING_MIB=${RING_MIB:-16}
[ "$(id -u)" -eq 0 ] || { echo "bench-listen.sh: needs root (AF_PACKET capture, network namespace)" >&2; exit 1; }
cargo build --release --locked -p teledge --bin teledge -q
cargo build --release --locked -p teledge-tools --bin teledge-loadgen --bin teledge-whepload -q
bindir="$(realpath "${CARGO_TARGET_DIR:-target}/release")"
dir=$(realpath -m target/bench/listen)
rm -rf "$dir" && mkdir -p "$dir/pki"

. scripts/bench-common.sh
site_pki "$dir/pki" node bench "$CLIENT"
token="tdg1_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
hash=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
port=$(free_port)
max=$((LISTENERS > 0 ? LISTENERS : 1))

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
listen = "127.0.0.1:$port"
[shutdown]
drain_timeout_s = 1
[status]
enabled = true
[[supervisor]]
id = "bench"
token_sha256 = "$hash"
listen = ["all"]
[[service]]
name = "all"
monitorable = true
[listen]
enabled = true
max_listeners = $max
max_listeners_per_call = 1
EOF
}

# run LISTENERS: "drops kernel_packets rtp_sent rtp_target lag_ms connected heard_min heard_total tapped tap_dropped sent cpu_s peak_rss_mib"
run() {
  local l=$1 cfg="$dir/run-$1.toml" snd="$dir/send-$1.json" log="$dir/run-$1.log" wl="$dir/whep-$1.json" met="$dir/metrics-$1.txt"
  config "$dir/spool-$l" > "$cfg"
  local calls
  calls=$(python3 -c "print(','.join(f'load-{i}@127.0.0.1' for i in range($l)))")
  unshare -n bash -c "
    ip link set lo up
    taskset -c 1 '$bindir/teledge' run --config '$cfg' 2> '$log' &
    pid=\$!
    sleep 1.5
    taskset -c 0 '$bindir/teledge-loadgen' send --calls $CALLS --seconds $STEP_SECONDS > '$snd' &
    lg=\$!
    if [ $l -gt 0 ]; then
      sleep 2
      taskset -c 0 '$bindir/teledge-whepload' --port $port --token '$token' --calls '$calls' --seconds $((STEP_SECONDS - 6)) > '$wl'
    else
      echo '{\"connected\":0,\"packets_min\":0,\"packets_total\":0}' > '$wl'
    fi
    wait \$lg
    sleep 1
    python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())\" > '$met'
    awk '{print \$14 + \$15}' /proc/\$pid/stat > '$met.cpu'
    awk '/^VmHWM/{print \$2}' /proc/\$pid/status > '$met.rss'
    kill -TERM \$pid
    wait \$pid"
  python3 - "$log" "$snd" "$wl" "$met" <<'EOF'
import json, re, sys
summary = None
for line in open(sys.argv[1]):
    if "teledge: stopped: " in line:
        summary = json.loads(line.split("teledge: stopped: ", 1)[1])
if summary is None:
    sys.exit("teledge run left no summary; see " + sys.argv[1])
s = json.load(open(sys.argv[2]))
w = json.load(open(sys.argv[3]))
m = open(sys.argv[4]).read()
def metric(name):
    hit = re.search(re.escape(name) + r" (\S+)", m)
    return int(float(hit.group(1))) if hit else 0
print(summary["kernel_drops"], summary["packets_captured"], s["rtp_sent"], s["rtp_target"],
      round(s["max_lag_ms"], 1), w["connected"], w["packets_min"], w["packets_total"],
      metric('teledge_listen_packets_total{what="tapped"}'),
      metric('teledge_listen_packets_total{what="tap_dropped"}'),
      metric('teledge_listen_packets_total{what="sent"}'),
      int(open(sys.argv[4] + ".cpu").read()) / 100,
      round(int(open(sys.argv[4] + ".rss").read()) / 1024, 1))
EOF
  rm -rf "$dir/spool-$l"
}

echo "machine: $(nproc) cores, $(uname -m), kernel $(uname -r); $CALLS calls ($((CALLS * 100)) packets/s), ring ${RING_MIB} MiB, ${STEP_SECONDS} s a step"
printf '%9s %12s %8s %9s %10s %11s %13s %9s %12s %8s %8s %13s\n' listeners "kernel pkts" drops "lag ms" connected "heard least" "heard total" tapped "tap dropped" sent "CPU s" "peak RSS MiB"
status=0
for l in "$LISTENERS" 0; do
  read -r drops kpk sent target lag conn hmin htot tapped tdrop lsent cpu rss < <(run "$l")
  printf '%9d %12d %8d %9s %10d %11d %13d %9d %12d %8d %8s %13s\n' "$l" "$kpk" "$drops" "$lag" "$conn" "$hmin" "$htot" "$tapped" "$tdrop" "$lsent" "$cpu" "$rss"
  [ "$sent" -ge "$target" ] || echo "note: the sender fell behind at $l listeners ($sent of $target RTP packets sent)"
  if [ "$l" -gt 0 ] && { [ "$conn" -lt "$l" ] || [ "$hmin" -eq 0 ]; }; then
    echo "FAILED: not every listener heard its call ($conn of $l connected, least heard $hmin packets; $dir/whep-$l.json)"
    status=1
  fi
done
exit $status
