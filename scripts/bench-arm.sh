#!/usr/bin/env bash
# ARM figures of issue 14, goal 6, measured UNDER EMULATION (qemu-user on this x86_64 host):
# the size of the stripped aarch64 binary (profile `edge`, default features) against the
# 12 MB goal and beside the same build without live listen (`--no-default-features`), and the
# time from exec to READY=1 (sd_notify) of `teledge run` with an empty spool against the
# 200 ms goal and beside its peer, `teledge --version` under the same qemu (what process
# start and emulator start cost before teledge does any work). A real ARM box runs native
# code: these times are an upper bound there, not a measurement of it.
#
#   scripts/bench-arm.sh            (RUNS=7 start-ups, the best and the median printed)
#   NO_LISTEN=0 scripts/bench-arm.sh  (skips the build without live listen: one build, not two)
#
# Start-up runs alternate: `--version`, then `run`, RUNS times, so both see the same load.
# Wall times under emulation move with the host's load; what qemu had to translate before
# READY does not: the script also prints the guest instructions qemu-user translated (its
# `-d in_asm` log, each translation block logged once) for `run` up to READY=1 and for
# `--version`, a figure that can be compared between runs on a busy machine.
#
# Installs what it needs on Debian: the cross linker, qemu-user, the rustup target; makes a
# throwaway site PKI with the openssl command line (only for the configuration check; no
# collector runs: the uplink retries in the background, which READY does not wait for).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
NO_LISTEN=${NO_LISTEN:-1}
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
. scripts/bench-common.sh
. cross/edge-link.sh
bench_work
bin="${CARGO_TARGET_DIR:-target}/$TARGET/edge/teledge"
# The final link as cross/build.sh makes it (cross/edge-link.sh: lld, identical code folded,
# packed relocations).
mapfile -t link < <(edge_link_args "$TARGET")
# What live listen (the cargo feature `listen`: webrtc-rs) costs: the same build without it
# first (cargo keeps both builds' artefacts, so a second run only copies them), then the
# default build, the one measured below and shipped.
if [ "$NO_LISTEN" = 1 ]; then
  cargo rustc --locked --profile edge --target "$TARGET" --bin teledge --no-default-features -q -- "${link[@]}"
  cp "$bin" "$work/teledge-no-listen"
fi
cargo rustc --locked --profile edge --target "$TARGET" --bin teledge -q -- \
  -C "link-arg=-Wl,-Map=$bin.map" "${link[@]}"
file "$bin" 2>/dev/null | sed 's/^/binary: /' || true
# The code start-up and idle run, placed first (build.rs, link/hot-text.txt).
scripts/hot-text.sh check "$bin" "$bin.map"

size=$(stat -c %s "$bin")
awk -v s="$size" 'BEGIN {
  printf "aarch64 binary (profile edge, stripped, default features): %d bytes = %.2f MB; goal 12 MB; size / goal = %.2f (%s)\n",
    s, s / 1e6, s / 12e6, s <= 12e6 ? "met" : "not met" }'
if [ "$NO_LISTEN" = 1 ]; then
  size_no_listen=$(stat -c %s "$work/teledge-no-listen")
  awk -v s="$size" -v n="$size_no_listen" 'BEGIN {
    printf "peer: the same without live listen (--no-default-features): %d bytes = %.2f MB; size / goal = %.2f; listen adds %d bytes (%.2f MB)\n",
      n, n / 1e6, n / 12e6, s - n, (s - n) / 1e6 }'
fi
# Where the bytes are: the sections of the stripped binary over 100 kB.
aarch64-linux-gnu-size -A "$bin" | awk '$2 > 100000 && $1 ~ /^\./ { printf "  %-20s %10d bytes\n", $1, $2 }'
# A site PKI: CA, the node's client certificate (CN = node id, clientAuth).
site_pki "$work" edge edge-01 "$CLIENT"
hep_port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics_port=$(free_port)
{
  edge_config "https://localhost:9/v1/batches"
  cat <<EOF
[hep]
udp = "127.0.0.1:$hep_port"
[observe]
listen = "127.0.0.1:$metrics_port"
[shutdown]
# No collector runs: the daemon stops 1 s after SIGTERM instead of retrying for 30 s.
drain_timeout_s = 1
EOF
} > "$work/teledge.toml"
qemu-aarch64 -L "$SYSROOT" "$bin" check-config --config "$work/teledge.toml" >/dev/null

# Start-to-READY: a datagram listener stands in for systemd's notify socket; the clock starts
# just before exec and stops when READY=1 arrives. The spool directory is emptied every run.
python3 - "$RUNS" "$bin" "$SYSROOT" "$work" <<'PY'
import os, re, shutil, signal, socket, statistics, subprocess, sys, time
runs, binary, sysroot, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
qemu = ["qemu-aarch64", "-L", sysroot]
config = ["run", "--config", os.path.join(work, "teledge.toml")]

def peer(log=None):
    t0 = time.monotonic()
    trace = ["-d", "in_asm", "-D", log] if log else []
    subprocess.run(qemu + trace + [binary, "--version"], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0

def ready(log=None):
    shutil.rmtree(os.path.join(work, "spool"), ignore_errors=True)
    path = os.path.join(work, "notify.sock")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=path, TELEDGE_LOG="error")
    trace = ["-d", "in_asm", "-D", log] if log else []
    t0 = time.monotonic()
    child = subprocess.Popen(qemu + trace + [binary] + config,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            msg = sock.recv(4096).decode(errors="replace")
            if "READY=1" in msg.split("\n"):
                return time.monotonic() - t0
    finally:
        # Traced: stop at READY (what was translated up to it); timed: a clean stop.
        if log:
            child.kill()
        else:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        sock.close()

def translated(log):
    """Guest instructions in qemu's in_asm log (each translation block is logged once)."""
    n = 0
    with open(log, errors="replace") as f:
        for line in f:
            if line.startswith("0x"):
                n += 1
    os.unlink(log)
    return n

peers, readies = [], []
for _ in range(runs):
    peers.append(peer())
    readies.append(ready())
ms = lambda s: s * 1000
best_r, med_r = ms(min(readies)), ms(statistics.median(readies))
best_p, med_p = ms(min(peers)), ms(statistics.median(peers))
met = "met" if med_r <= 200 else "not met"
print(f"start to READY=1, teledge run, empty spool (qemu-aarch64 user emulation): best {best_r:.0f} ms, median {med_r:.0f} ms of {runs}; goal 200 ms; median / goal = {med_r / 200:.2f} ({met})")
print(f"peer: teledge --version under the same qemu, alternating with the above: best {best_p:.0f} ms, median {med_p:.0f} ms; READY / peer (medians) = {med_r / med_p:.2f}")
log = os.path.join(work, "in_asm.log")
ready(log)
n_run = translated(log)
peer(log)
n_ver = translated(log)
print(f"code qemu translated (guest instructions, load-independent): run up to READY=1 {n_run}; --version {n_ver}; run / --version = {n_run / n_ver:.2f}")
PY
