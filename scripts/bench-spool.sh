#!/usr/bin/env bash
# Spool benchmark: durable appends per second with group commit (50 ms), bytes on disk per
# record, disk use after a churn of a million records, beside an append-only file with
# fdatasync on the same disk (the reference limit). Then the forwarding rate over mutual TLS
# on loopback, from the outage test (backlog drain after the collector returns).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-200000}
CHURN=${CHURN:-1000000}
cargo build --release --locked --workspace --bins -q
mkdir -p target/bench
df -h target/bench | tail -n 1 | awk '{print "disk: " $1 " (" $2 ")"}'
target/release/teledge-spoolgen bench --dir target/bench --records "$RECORDS" --churn "$CHURN"
cargo test --release --locked --test it collector_outage -- --nocapture 2>/dev/null | grep "outage test"
