#!/usr/bin/env bash
# ARM figures of issue 14, goal 6, measured UNDER EMULATION (qemu-user on this x86_64 host):
# the size of the stripped aarch64 binary (profile `edge`, default features) against the
# 12 MB goal and beside the same build without live listen (`--no-default-features`), and the
# time from exec to READY=1 (sd_notify) of `teledge run` with an empty spool against the
# 200 ms goal and beside its peer, `teledge --version` under the same qemu (what process
# start and emulator start cost before teledge does any work). A real ARM box runs native
# code: these times are an upper bound there, not a measurement of it.
#
#   scripts/bench-arm.sh            (RUNS=5 start-ups, the best and the median printed)
#
# Installs what it needs on Debian: the cross linker, qemu-user, the rustup target; makes a
# throwaway site PKI with the openssl command line (only for the configuration check; no
# collector runs: the uplink retries in the background, which READY does not wait for).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target add "$TARGET" >/dev/null 2>&1 || true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin="${CARGO_TARGET_DIR:-target}/$TARGET/edge/teledge"
# What live listen (the cargo feature `listen`: webrtc-rs) costs: the same build without it
# first (cargo keeps both builds' artefacts, so a second run only copies them), then the
# default build, the one measured below and shipped.
cargo build --locked --profile edge --target "$TARGET" --bin teledge --no-default-features -q
cp "$bin" "$work/teledge-no-listen"
cargo build --locked --profile edge --target "$TARGET" --bin teledge -q
file "$bin" 2>/dev/null | sed 's/^/binary: /' || true

size=$(stat -c %s "$bin")
size_no_listen=$(stat -c %s "$work/teledge-no-listen")
awk -v s="$size" -v n="$size_no_listen" 'BEGIN {
  printf "aarch64 binary (profile edge, stripped, default features): %d bytes = %.2f MB; goal 12 MB; size / goal = %.2f\n",
    s, s / 1e6, s / 12e6
  printf "peer: the same without live listen (--no-default-features): %d bytes = %.2f MB; size / goal = %.2f; listen adds %d bytes (%.2f MB)\n",
    n, n / 1e6, n / 12e6, s - n, (s - n) / 1e6 }'
# A site PKI: CA, the node's client certificate (CN = node id, clientAuth).
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=edge-01" \
    -keyout edge.key -out edge.csr 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > ext.cnf
  openssl x509 -req -in edge.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out edge.pem 2>/dev/null
  head -c 32 /dev/urandom > site.key
  head -c 32 /dev/urandom > spool.key
  chmod 600 ./*.key
)
hep_port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/teledge.toml" <<EOF
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
url = "https://localhost:9/v1/batches"
ca_file = "$work/ca.pem"
cert_file = "$work/edge.pem"
key_file = "$work/edge.key"
[hep]
udp = "127.0.0.1:$hep_port"
[observe]
listen = "127.0.0.1:$metrics_port"
EOF
qemu-aarch64 -L "$SYSROOT" "$bin" check-config --config "$work/teledge.toml" >/dev/null

# Start-to-READY: a datagram listener stands in for systemd's notify socket; the clock starts
# just before exec and stops when READY=1 arrives. The spool directory is emptied every run.
python3 - "$RUNS" "$bin" "$SYSROOT" "$work" <<'PY'
import os, shutil, signal, socket, statistics, subprocess, sys, time
runs, binary, sysroot, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
qemu = ["qemu-aarch64", "-L", sysroot, binary]

def peer():
    t0 = time.monotonic()
    subprocess.run(qemu + ["--version"], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0

def ready():
    shutil.rmtree(os.path.join(work, "spool"), ignore_errors=True)
    path = os.path.join(work, "notify.sock")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path, TELEDGE_LOG="error")
    t0 = time.monotonic()
    child = subprocess.Popen(qemu + ["run", "--config", os.path.join(work, "teledge.toml")],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            msg = sock.recv(4096).decode(errors="replace")
            if "READY=1" in msg.split("\n"):
                return time.monotonic() - t0
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        sock.close()

peers = [peer() for _ in range(runs)]
readies = [ready() for _ in range(runs)]
ms = lambda s: s * 1000
best_r, med_r = ms(min(readies)), ms(statistics.median(readies))
best_p, med_p = ms(min(peers)), ms(statistics.median(peers))
print(f"start to READY=1, teledge run, empty spool (qemu-aarch64 user emulation): best {best_r:.0f} ms, median {med_r:.0f} ms of {runs}; goal 200 ms; median / goal = {med_r / 200:.2f}")
print(f"peer: teledge --version under the same qemu (emulator and process start): best {best_p:.0f} ms, median {med_p:.0f} ms; READY / peer (medians) = {med_r / med_p:.2f}")
PY
