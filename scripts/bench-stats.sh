#!/usr/bin/env bash
# Service statistics benchmark: KPI throughput over millions of call records.
#
# Generates RECORDS call records in-process (one real call record of a bundled capture with
# its times, outcome and called number rewritten per record: one day of calls over 8
# services and 4 nodes, 60 % answered, 20 % abandoned, 20 % busy), classifies each into its
# service, aggregates it into 15-minute intervals in Europe/Berlin (with the interval ticks a
# daemon makes), then merges the nodes' interval records. Prints records/s, best of RUNS.
# Single-threaded: records/s is per core.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-2000000}
RUNS=${RUNS:-3}
cargo build --release --locked --example stats_throughput -q
for _ in $(seq "$RUNS"); do
  target/release/examples/stats_throughput "$RECORDS"
done
