#!/usr/bin/env bash
# Replay throughput benchmark: teledge against TShark on the same generated capture.
#
# Generates a deterministic capture (teledge-gencap: CALLS calls, RTP packets both ways) and
# times, best of RUNS: `teledge replay FILE` (all records written) and `tshark -r FILE -Y sip`
# (SIP dissection and display filter, output discarded). Prints wall time, peak RSS,
# packets/s and SIP messages/s. Needs tshark (scripts/test.sh installs it) and GNU time.
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
messages=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1])["decode"]; print(d["sip_messages_udp"]+d["sip_messages_tcp"]+d["sip_messages_ws"])' "$summary")

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh

echo "capture: $file ($(du -h "$file" | cut -f1), $packets packets, $messages SIP messages)"
echo "machine: $(nproc) cores, $(uname -m), $(tshark --version 2>/dev/null | head -n 1)"
printf '%-28s %10s %12s %14s %16s\n' tool "wall s" "peak RSS MiB" "packets/s" "SIP messages/s"
for tool in teledge tshark; do
  if [ $tool = teledge ]; then
    read -r t m < <(best target/release/teledge replay --no-progress --output /dev/null "$file")
    name="teledge replay"
  else
    read -r t m < <(best tshark -r "$file" -Y sip)
    name="tshark -r FILE -Y sip"
  fi
  awk -v n="$name" -v t="$t" -v m="$m" -v p="$packets" -v s="$messages" \
    'BEGIN{printf "%-28s %10.2f %12.1f %14.0f %16.0f\n", n, t, m/1024, p/t, s/t}'
done
