#!/usr/bin/env bash
# JetStream benchmark (issue 16): records forwarded per second from one agent's filled spool
# (records of 390 bytes, durable), on loopback, mutual TLS everywhere, in the same run:
#
#   1. the HTTPS uplink to `teledge collect` writing and syncing every batch (the peer, as
#      scripts/bench-uplink.sh measures it);
#   2. the agent publishing to JetStream itself (`tls://` uplink url; nats-server 2.9 from
#      Debian, R1 file stream, every record PubAcked before the spool lets it go);
#   3. the HTTPS uplink to `teledge collect --nats` (no files), which acknowledges a batch
#      once every record of it is PubAcked.
#
# Batches of 500 records (the default) and 256 publishes in flight (the default) for all.
#
#   scripts/bench-nats.sh        (RECORDS=100000 per run; needs nats-server and openssl)
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-100000}
PROFILE=${PROFILE:-release}
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || {
  echo "nats-server is required (apt-get install nats-server)" >&2
  exit 1
}
nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
cargo build --profile "$PROFILE" --locked --bins -q -p teledge -p teledge-tools
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
bin=${CARGO_TARGET_DIR:-target}/$dir

. scripts/bench-common.sh
bench_work
site_pki "$work" collector localhost "$SERVER_LOCALHOST" \
  nats nats 'extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' \
  edge edge-01 "$CLIENT" bus collector-bus "$CLIENT"

nats_port=$(free_port)
cat > "$work/nats.conf" <<EOF
listen: 127.0.0.1:$nats_port
jetstream { store_dir: "$work/js", max_mem: 64MB, max_file: 8GB }
tls { cert_file: "$work/nats.pem", key_file: "$work/nats.key", ca_file: "$work/ca.pem", verify: true, timeout: 2 }
EOF
"$nats_server" -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port"

# The peer: files, synced per batch.
files_port=$(free_port)
start_collector "$bin/teledge" "$files_port"
# The collector on the bus (it makes the stream TELEDGE, R1, subjects teledge.>).
bus_port=$(free_port)
"$bin/teledge" collect --listen "127.0.0.1:$bus_port" --ca "$work/ca.pem" \
  --cert "$work/collector.pem" --key "$work/collector.key" \
  --nats "tls://127.0.0.1:$nats_port" --nats-cert "$work/bus.pem" --nats-key "$work/bus.key" \
  --nats-create-stream >"$work/bus.out" 2>"$work/bus.log" &
pids+=($!)
wait_port "$files_port"
wait_port "$bus_port"

rate() { # url [extra uplink lines] -> records/s
  rm -rf "$work/spool"
  {
    edge_config "$1"
    printf 'batch_records = 500\n%s\n' "$2"
  } > "$work/forward.toml"
  "$bin/teledge-spoolgen" load --config "$work/forward.toml" --records "$RECORDS" \
    --group 5000 --prefill | sed -n 's/^forwarded .*: \([0-9]*\) records\/s$/\1/p'
}
echo "one agent, $RECORDS records of 390 bytes from a filled spool, batches of 500, mutual TLS on loopback:"
base=$(rate "https://localhost:$files_port/v1/batches" "")
printf "  HTTPS uplink -> collect (files, synced per batch): %7d records/s (the peer)\n" "$base"
r=$(rate "tls://127.0.0.1:$nats_port" "[uplink.nats]
stream = \"TELEDGE\"")
awk -v r="$r" -v b="$base" 'BEGIN {
  printf "  agent -> JetStream (R1 file stream, PubAck each): %7d records/s; ratio to the peer = %.2f\n", r, r / b }'
r=$(rate "https://localhost:$bus_port/v1/batches" "")
awk -v r="$r" -v b="$base" 'BEGIN {
  printf "  HTTPS uplink -> collect --nats (no files):         %7d records/s; ratio to the peer = %.2f\n", r, r / b }'
