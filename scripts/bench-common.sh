# Shared by the benchmark scripts (sourced). `best CMD...` prints the best wall time (s) and that run's
# peak RSS (KiB) over $RUNS runs of a command, measured by GNU time.
best() {
  local best_t="" best_m="" t m out
  out=$(mktemp)
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -o "$out" -f "%e %M" "$@" >/dev/null 2>&1
    read -r t m < "$out"
    if [ -z "$best_t" ] || awk "BEGIN{exit !($t < $best_t)}"; then best_t=$t; best_m=$m; fi
  done
  rm -f "$out"
  echo "$best_t $best_m"
}

# `bench_work`: a fresh temporary directory in $work and an empty $pids; at exit every
# process whose pid was added to $pids is stopped (and waited for: a killed child's status
# is not the script's) and $work is removed.
bench_work() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && { wait "$p" 2>/dev/null || true; }; done
  rm -rf "$work"
}

# Certificate extensions for `site_pki`: a server named localhost, and a client.
SERVER_LOCALHOST='extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n'
CLIENT='extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n'

# `site_pki DIR [NAME CN EXTENSIONS]...`: a throwaway site PKI made with the openssl command
# line in DIR: a CA (ca.pem, ca.key; P-256, 2 days), for each triple a certificate NAME.pem
# with its key NAME.key, common name CN and EXTENSIONS (openssl x509 -extfile lines, `\n`
# between them), and 32 random bytes each in site.key (pseudonyms) and spool.key.
site_pki() {
  (
    cd "$1"
    shift
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=bench CA" -keyout ca.key -out ca.pem \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
    while (($#)); do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
      printf '%b' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
      shift 3
    done
    head -c 32 /dev/urandom > site.key
    head -c 32 /dev/urandom > spool.key
    chmod 600 ./*.key
  )
}

# `edge_config URL`: the head of an agent's configuration in $work — node `edge-01`, keyed-hash
# pseudonyms with site.key, the spool in $work/spool sealed with spool.key, the uplink to URL
# with the site PKI's edge.pem (see `site_pki`). [uplink] comes last, so lines printed right
# after it add to that table; further tables follow.
edge_config() {
  cat <<EOF
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
url = "$1"
ca_file = "$work/ca.pem"
cert_file = "$work/edge.pem"
key_file = "$work/edge.key"
EOF
}

# `free_port`: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# `wait_port PORT`: waits up to 10 s for something to listen on 127.0.0.1:PORT, else exits.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

# `start_collector TELEDGE PORT`: `TELEDGE collect` on 127.0.0.1:PORT with the site PKI of
# $work (collector.pem: see `site_pki`), writing and syncing into $work/out, quiet; its pid
# added to $pids.
start_collector() {
  "$1" collect --listen "127.0.0.1:$2" --ca "$work/ca.pem" \
    --cert "$work/collector.pem" --key "$work/collector.key" --out "$work/out" >/dev/null 2>&1 &
  pids+=($!)
}
