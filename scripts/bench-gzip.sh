#!/usr/bin/env bash
# gzip of uplink batches (issue 14, goal 4): flate2's miniz_oxide backend (before) against
# zlib-rs (now), per level, on JSON lines as `encode_batch` builds them (batches of 500,
# `{"id":"edge-01:1:<seq>","record":...}`). CPU time (GNU time) per run; sizes from the tool.
#
#   scripts/bench-gzip.sh RECORDS.jsonl [COUNT]   (e.g. `teledge replay -o calls.jsonl FILE`)
set -euo pipefail
cd "$(dirname "$0")/.."
input=$1
count=${2:-100000}
out=target/bench-gzip
for backend in miniz zlibrs; do
  CARGO_TARGET_DIR=$out/$backend cargo build --release --locked -q \
    --manifest-path scripts/bench-gzip/Cargo.toml --features "$backend"
done
for level in 0 1 3 6; do
  for backend in miniz zlibrs; do
    /usr/bin/time -f "  $backend level $level: CPU %U s user + %S s system" \
      "$out/$backend/release/bench-gzip" "$input" "$level" "$count"
  done
done
