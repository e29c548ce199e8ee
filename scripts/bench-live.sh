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
#
# MODE=veth (issue 14: a generator that is not the bottleneck) measures the capture side on
# 1 and on 2 cores: `tcpreplay` (Debian) replays the same calls into one end of a veth pair
# inside a private network namespace at a fixed packet rate (`--pps`, calls x 100) while
# `teledge run` captures the other end with `[[capture]] threads` = cores (one PACKET_FANOUT
# socket and one correlation shard each). The calls come from `teledge-loadgen pcap`:
# INVITE/200/ACK with SDP for every call (once, top speed), then 10 rounds of RTP both ways
# for every call, looped for STEP_SECONDS at the packet rate, then BYE/200. The kernel
# delivers a veth frame to the capture sockets on the sending core (softirq), so with one
# core teledge (core 1) does only its own work while tcpreplay and the kernel's copy into
# the rings run on core 0; with two, teledge's threads run on both and share core 0 with the
# generator (this machine has two). A step counts only when tcpreplay sent every packet at
# the asked rate and the veth dropped none (`ip -s link`): the generator was not the limit.
# It passes with zero kernel drops on the rings. CALLS lists the steps (default 1000 ...
# 8000), CORES_LIST the core counts (default "1 2"); RING_START_KIB sets `ring_start_kib`
# (MODE=veth; unset: the default, the whole RING_MIB ring from the start).
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_SECONDS=${STEP_SECONDS:-8}
START=${START:-250}
MAX=${MAX:-8000}
BISECT=${BISECT:-3}
RING_MIB=${RING_MIB:-16}
PEER=${PEER:-teledge}
BUFFER_MIB=${BUFFER_MIB:-2}
MODE=${MODE:-loopback}
[ "$(id -u)" -eq 0 ] || { echo "bench-live.sh: needs root (AF_PACKET capture, network namespace)" >&2; exit 1; }
if [ "$MODE" = veth ] && ! command -v tcpreplay >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q tcpreplay >/dev/null \
    || { echo "bench-live.sh: MODE=veth needs tcpreplay (Debian package tcpreplay)" >&2; exit 1; }
fi
cargo build --release --locked -p teledge --bin teledge -q
cargo build --release --locked -p teledge-tools --bin teledge-loadgen -q
bindir="${CARGO_TARGET_DIR:-target}/release"
dir=$(realpath -m target/bench/live)
rm -rf "$dir" && mkdir -p "$dir/pki"

# Keys and certificates the configuration must name (the uplink is never reached).
. scripts/bench-common.sh
site_pki "$dir/pki" node bench "$CLIENT"

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

# veth_config SPOOL THREADS: teledge capturing tg1 with THREADS fanout threads, /metrics on.
veth_config() {
  config "$1" | sed -e 's/^interface = "lo"/interface = "tg1"/' \
    -e "s/^block_kib = 1024/block_kib = 1024\nthreads = $2${RING_START_KIB:+\\nring_start_kib = $RING_START_KIB}/" \
    -e 's/^enabled = false/enabled = true\nlisten = "127.0.0.1:9464"/'
}

# veth_step N CORES: prints "target_pps sent_pps failed veth_drops kernel_pkts kernel_drops
# cpu_s lock_waits records rss_kib"
veth_step() {
  local n=$1 cores=$2 pc="$dir/pcap-$1" cfg="$dir/veth-$1-$2.toml" log="$dir/veth-$1-$2.log"
  local out="$dir/veth-$1-$2.out" pps=$(( $1 * 100 )) cpus=1
  [ "$cores" -ge 2 ] && cpus=0-$((cores - 1))
  [ -f "$pc/rtp.pcap" ] || "$bindir/teledge-loadgen" pcap --calls "$n" --ticks 10 --out "$pc" > /dev/null
  local loops=$(( STEP_SECONDS * 100 / 10 ))
  veth_config "$dir/spool-$n" "$cores" > "$cfg"
  unshare -n bash -c "
    set -e
    ip link set lo up
    ip link add tg0 type veth peer name tg1
    ip link set tg0 up; ip link set tg1 up
    taskset -c $cpus '$bindir/teledge' run --config '$cfg' 2> '$log' &
    pid=\$!
    sleep 2
    taskset -c 0 tcpreplay -q -i tg0 --topspeed '$pc/setup.pcap' > '$out.setup' 2>&1
    sleep 0.5
    taskset -c 0 tcpreplay -i tg0 --pps=$pps --loop=$loops '$pc/rtp.pcap' > '$out.rtp' 2>&1
    taskset -c 0 tcpreplay -q -i tg0 --topspeed '$pc/teardown.pcap' > '$out.teardown' 2>&1
    sleep 1.5
    curl -s http://127.0.0.1:9464/metrics > '$out.metrics' || true
    grep VmHWM /proc/\$pid/status | awk '{print \$2}' > '$out.rss'
    awk '{print \$14 + \$15}' /proc/\$pid/stat > '$out.cpu'
    ip -s -j link show tg0 > '$out.link'
    kill -TERM \$pid
    wait \$pid"
  python3 - "$log" "$out" "$pps" <<'PY'
import json, re, sys
log, out, pps = sys.argv[1], sys.argv[2], int(sys.argv[3])
summary = None
for line in open(log):
    if "teledge: stopped: " in line:
        summary = json.loads(line.split("teledge: stopped: ", 1)[1])
if summary is None:
    sys.exit("teledge run left no summary; see " + log)
rtp = open(out + ".rtp").read()
sent = int(re.search(r"Actual: (\d+) packets", rtp).group(1))
secs = float(re.search(r"packets \(\d+ bytes\) sent in ([\d.]+) seconds", rtp).group(1))
failed = int(re.search(r"Failed packets:\s+(\d+)", rtp).group(1))
link = json.load(open(out + ".link"))[0]["stats64"]
veth_drops = link["tx"]["dropped"]
metrics = open(out + ".metrics").read()
m = re.search(r"^teledge_correlation_shard_lock_waits_total (\d+)", metrics, re.M)
waits = int(m.group(1)) if m else -1
cpu = int(open(out + ".cpu").read()) / 100
print(pps, round(sent / secs), failed, veth_drops, summary["packets_captured"],
      summary["kernel_drops"], cpu, waits, summary["records_produced"],
      open(out + ".rss").read().strip())
PY
  rm -rf "$dir/spool-$n"
}

if [ "$MODE" = veth ]; then
  echo "machine: $(nproc) cores, $(uname -m), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); ring ${RING_MIB} MiB an interface; ${STEP_SECONDS} s a step; generator: tcpreplay $(tcpreplay --version 2>&1 | awk 'NR==1{print $3}') on core 0"
  printf '%5s %7s %9s %9s %7s %10s %8s %7s %7s %9s %8s %s\n' cores calls "pkts/s" "sent/s" "veth dr" "kernel pk" "k drops" "CPU s" "us/pkt" "lockwait" "RSS MiB" result
  for cores in ${CORES_LIST:-1 2}; do
    best=0
    for n in ${CALLS:-1000 2000 3000 4000 5000 6000 8000}; do
      read -r pps sent failed vdrops kpk kdrops cpu waits records rss < <(veth_step "$n" "$cores")
      [ -n "$rss" ] || { echo "bench-live.sh: step $n/$cores failed (see $dir/veth-$n-$cores.*)" >&2; exit 1; }
      # The generator kept the rate (within 2 %) and lost nothing, else it was what was measured.
      verdict=ok
      if [ "$failed" -gt 0 ] || [ "$vdrops" -gt 0 ] || awk "BEGIN{exit !($sent < $pps * 0.98)}"; then
        verdict=generator-limited
      elif [ "$kdrops" -gt 0 ]; then verdict=DROPS; fi
      if [ "$verdict" = ok ] && [ "$n" -gt "$best" ]; then best=$n; fi
      printf '%5d %7d %9d %9d %7d %10d %8d %7s %7s %9s %8s %s\n' "$cores" "$n" "$pps" "$sent" "$vdrops" "$kpk" "$kdrops" "$cpu" \
        "$(awk "BEGIN{printf \"%.2f\", $cpu * 1e6 / ($kpk > 0 ? $kpk : 1)}")" "$waits" "$(awk "BEGIN{printf \"%.1f\", $rss/1024}")" "$verdict"
    done
    echo "cores $cores: most calls with zero kernel drops while the generator kept its rate: $best"
  done
  exit 0
fi

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
