#!/usr/bin/env bash
# HEP relay cost: `teledge replay FILE` beside `teledge replay --hep-out` of the same file,
# over UDP and TCP to a local receiver (socat, discarding), best of RUNS each.
#
# Generates the capture bench-replay.sh uses (teledge-gencap: CALLS calls, RTP packets both
# ways; the RTP makes RTCP-free streams, so frames are SIP plus one type-34 report per
# stream). Prints wall time, peak RSS, packets/s and HEP frames/s; the HEP frames sent and
# dropped come from replay's own stderr line. Needs socat (scripts/test.sh installs it) and
# GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-5000}
RTP=${RTP:-20}
RUNS=${RUNS:-3}
dir=target/bench
mkdir -p "$dir"
cargo build --release --locked --workspace --bins -q
file="$dir/calls-$CALLS-rtp-$RTP.pcap"
[ -f "$file" ] || target/release/teledge-gencap --calls "$CALLS" --rtp "$RTP" --out "$file"
summary=$(target/release/teledge replay "$file" | tail -n 1)
packets=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["decode"]["frames"])' "$summary")

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
socat -u "UDP-RECV:$port,bind=127.0.0.1,rcvbuf=16777216" /dev/null &
udp_sink=$!
socat -u "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" /dev/null &
tcp_sink=$!
trap 'kill $udp_sink $tcp_sink 2>/dev/null || true' EXIT
sleep 0.5

echo "capture: $file ($(du -h "$file" | cut -f1), $packets packets)"
echo "machine: $(nproc) cores, $(uname -m)"
printf '%-36s %8s %12s %12s %12s %s\n' run "wall s" "peak RSS MiB" "packets/s" "frames/s" "relay"
for mode in none udp tcp; do
  args=(replay --no-progress --output /dev/null)
  [ $mode = none ] || args+=(--hep-out "127.0.0.1:$port" --hep-transport "$mode")
  read -r t m < <(best target/release/teledge "${args[@]}" "$file")
  relay="-"
  frames=0
  if [ $mode != none ]; then
    relay=$(target/release/teledge "${args[@]}" "$file" 2>&1 | grep 'HEP to' | sed 's/.*: //')
    frames=$(echo "$relay" | awk '{print $1}')
  fi
  awk -v n="teledge replay (hep-out: $mode)" -v t="$t" -v m="$m" -v p="$packets" -v f="$frames" -v r="$relay" \
    'BEGIN{printf "%-36s %8.2f %12.1f %12.0f %12.0f %s\n", n, t, m/1024, p/t, f/t, r}'
done
