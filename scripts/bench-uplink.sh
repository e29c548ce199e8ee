#!/usr/bin/env bash
# Uplink benchmark (issue 14, goal 4): records forwarded per second over mutual TLS on
# loopback, from a spool filled beforehand (records of 390 bytes, durable), to `teledge
# collect` writing and syncing every batch. Each batch size is run on the same spool size in
# the same run, the first (500 records, the default) as the peer, with the ratios;
# the goal is 100,000 records/s.
#
#   scripts/bench-uplink.sh        (RECORDS=100000 per run)
#   BASE=DIR scripts/bench-uplink.sh   also runs the `teledge-spoolgen` in DIR (an earlier
#                                      build's agent side) to the same collector on the same
#                                      sizes, alternating, as the before of a change
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-100000}
# Batch sizes, the first being the peer (500: `uplink.batch_records`' default).
SIZES=${SIZES:-500 2000 5000}
PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" --locked --bins -q
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
bin=${CARGO_TARGET_DIR:-target}/$dir
BASE=${BASE:-}

. scripts/bench-common.sh
bench_work
site_pki "$work" collector localhost "$SERVER_LOCALHOST" edge edge-01 "$CLIENT"
port=$(free_port)
start_collector "$bin/teledge" "$port"
wait_port "$port"

rate() { # batch_records [bindir] -> records/s
  local b=${2:-$bin}
  rm -rf "$work/spool"
  {
    edge_config "https://localhost:$port/v1/batches"
    echo "batch_records = $1"
  } > "$work/forward.toml"
  "$b/teledge-spoolgen" load --config "$work/forward.toml" --records "$RECORDS" \
    --group 5000 --prefill | sed -n 's/^forwarded .*: \([0-9]*\) records\/s$/\1/p'
}
echo "uplink, mutual TLS on loopback, $RECORDS records of 390 bytes from a filled spool, collector syncing every batch:"
base=""
for size in $SIZES; do
  r=$(rate "$size")
  [ -n "$base" ] || base=$r
  awk -v r="$r" -v b="$base" -v s="$size" 'BEGIN {
    printf "  batches of %5d records: %7d records/s; ratio to the first = %.2f; of the 100,000 goal = %.2f\n", s, r, r / b, r / 100000 }'
  if [ -n "$BASE" ]; then
    o=$(rate "$size" "$BASE")
    awk -v r="$r" -v o="$o" -v s="$size" 'BEGIN {
    printf "    before (BASE agent)  %5d records: %7d records/s; now / before = %.2f\n", s, o, r / o }'
  fi
done
