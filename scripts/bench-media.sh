#!/usr/bin/env bash
# RTP analysis benchmark: teledge against TShark's RTP stream analysis on the same generated
# capture of thousands of concurrent calls.
#
# Generates (teledge-gencap) CALLS calls starting INTERVAL_MS apart, each answered call with RTP
# packets both ways for RTP×20 ms, so about (2 s + RTP×20 ms) / INTERVAL_MS calls are up at
# once. Times, best of RUNS: `teledge replay FILE` (SIP and every RTP stream analysed and
# scored, records written) and `tshark -q -o rtp.heuristic_rtp:TRUE -z rtp,streams`. Both are
# single-threaded, so packets/s is per core. Memory per active stream is bounded from above
# by teledge's peak RSS over its peak number of concurrently measured streams.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-3000}
RTP=${RTP:-250}
INTERVAL_MS=${INTERVAL_MS:-4}
RUNS=${RUNS:-3}
dir=target/bench
mkdir -p "$dir"
cargo build --release --locked --workspace --bins -q
file="$dir/media-$CALLS-$RTP-$INTERVAL_MS.pcap"
[ -f "$file" ] || target/release/teledge-gencap --calls "$CALLS" --rtp "$RTP" --interval-ms "$INTERVAL_MS" --out "$file"

summary=$(target/release/teledge replay "$file" | tail -n 1)
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$summary" "$1"; }
packets=$(field 'd["decode"]["frames"]')
rtp=$(field 'd["media"]["rtp_packets"]')
streams=$(field 'd["media"]["streams"]')
peak=$(field 'd["media"]["peak_active_streams"]')

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh

echo "capture: $file ($(du -h "$file" | cut -f1), $packets packets, $rtp RTP, $streams streams, peak $peak at once)"
echo "machine: $(nproc) cores, $(uname -m), $(tshark --version 2>/dev/null | head -n 1)"
printf '%-44s %8s %12s %14s\n' tool "wall s" "peak RSS MiB" "packets/s"
read -r t m < <(best target/release/teledge replay --no-progress --output /dev/null "$file")
awk -v t="$t" -v m="$m" -v p="$packets" 'BEGIN{printf "%-44s %8.2f %12.1f %14.0f\n", "teledge replay", t, m/1024, p/t}'
awk -v m="$m" -v s="$peak" 'BEGIN{printf "teledge memory per active stream (upper bound): %.1f KiB\n", m/s}'
read -r t m < <(best tshark -r "$file" -q -o rtp.heuristic_rtp:TRUE -z rtp,streams)
awk -v t="$t" -v m="$m" -v p="$packets" 'BEGIN{printf "%-44s %8.2f %12.1f %14.0f\n", "tshark -q -z rtp,streams", t, m/1024, p/t}'
