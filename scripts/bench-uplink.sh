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

work=$(mktemp -d)
collector=""
cleanup() {
  [ -n "$collector" ] && kill "$collector" 2>/dev/null && { wait "$collector" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  cert() { # name cn ext
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
      -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf '%b' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  }
  cert collector localhost 'extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n'
  cert edge edge-01 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n'
  head -c 32 /dev/urandom > site.key
  head -c 32 /dev/urandom > spool.key
  chmod 600 ./*.key
)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/teledge" collect --listen "127.0.0.1:$port" --ca "$work/ca.pem" \
  --cert "$work/collector.pem" --key "$work/collector.key" --out "$work/out" >/dev/null 2>&1 &
collector=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

rate() { # batch_records [bindir] -> records/s
  local b=${2:-$bin}
  rm -rf "$work/spool"
  cat > "$work/forward.toml" <<EOF
[node]
id = "edge-01"
[privacy]
mode = "keyed_hash"
site_key_file = "$work/site.key"
[spool]
dir = "$work/spool"
key_file = "$work/spool.key"
key_id = 1
[uplink]
url = "https://localhost:$port/v1/batches"
ca_file = "$work/ca.pem"
cert_file = "$work/edge.pem"
key_file = "$work/edge.key"
batch_records = $1
EOF
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
