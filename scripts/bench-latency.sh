#!/usr/bin/env bash
# Latency benchmark (issue 13 item 6): the time from a call's BYE on the wire to its record
# synced at the collector, for live SIPp calls.
#
# In a private network namespace (its loopback carries only this traffic): `teledge collect
# --stamp` listens with mutual TLS; `teledge run` captures SIP on loopback (AF_PACKET, the
# default ring block timeout) and forwards over mutual TLS to it, with the default spool
# flush interval (50 ms) and the record grace GRACE_MS (default 1000, the default of
# `correlation.record_grace_ms`); a SIPp UAS answers, a SIPp UAC places CALLS calls at RATE
# a second, each held HOLD_MS and hung up by the caller. For every call, the latency is
#
#     stored_at (the collector's clock as it writes and syncs the batch, `collect --stamp`)
#   − end_time  (the record's own end: the BYE's capture timestamp, taken by the kernel)
#
# — one machine, one clock. Prints p50, p99 and max with the grace used, and the exact
# command. Needs root (AF_PACKET capture, unshare -n), iproute2, openssl, SIPp (Debian
# package sip-tester) and python3. A benchmark, not a test: run it by hand.
#
# PROFILE=debug uses the debug build (no release build needed; the figures are then those
# of an unoptimised binary, which only makes them slower).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-200}
RATE=${RATE:-10}
HOLD_MS=${HOLD_MS:-2000}
GRACE_MS=${GRACE_MS:-1000}
PROFILE=${PROFILE:-release}
[ "$(id -u)" -eq 0 ] || { echo "bench-latency.sh: needs root (AF_PACKET capture, network namespace)" >&2; exit 1; }
command -v sipp >/dev/null || { echo "bench-latency.sh: needs SIPp (apt-get install sip-tester)" >&2; exit 1; }
if [ "$PROFILE" = release ]; then
  cargo build --release --locked --bin teledge -q
else
  cargo build --locked --bin teledge -q
fi
bin="$(realpath "${CARGO_TARGET_DIR:-target}/$PROFILE/teledge")"
dir=$(realpath -m target/bench/latency)
rm -rf "$dir" && mkdir -p "$dir/pki" "$dir/sipp"

# The site CA, the collector's certificate (localhost) and the node's (CN = node id).
. scripts/bench-common.sh
site_pki "$dir/pki" collector localhost "$SERVER_LOCALHOST" node bench "$CLIENT"

cat > "$dir/run.sh" <<EOF
set -euo pipefail
ip link set lo up
cd "$dir"
"$bin" collect --listen 127.0.0.1:0 --stamp --ca pki/ca.pem --cert pki/collector.pem \
  --key pki/collector.key --out collected > collect.out 2> collect.log &
collector=\$!
for _ in \$(seq 100); do grep -q listening collect.out && break; sleep 0.1; done
port=\$(sed -n 's/^listening .*:\([0-9]*\)\$/\1/p' collect.out)
cat > teledge.toml <<CONF
[node]
id = "bench"
[[capture]]
interface = "lo"
[correlation]
record_grace_ms = $GRACE_MS
[privacy]
mode = "keyed_hash"
site_key_file = "$dir/pki/site.key"
[spool]
dir = "$dir/spool"
key_file = "$dir/pki/spool.key"
[uplink]
url = "https://localhost:\$port/v1/batches"
ca_file = "$dir/pki/ca.pem"
cert_file = "$dir/pki/node.pem"
key_file = "$dir/pki/node.key"
[observe]
enabled = false
CONF
TELEDGE_LOG=info "$bin" run --config teledge.toml 2> run.log &
agent=\$!
for _ in \$(seq 200); do grep -q "teledge running" run.log && break; sleep 0.1; done
grep -q "teledge running" run.log || { cat run.log >&2; exit 1; }
cd sipp
sipp -sn uas -i 127.0.0.1 -p 5090 -nostdin > uas.out 2>&1 &
uas=\$!
sleep 0.5
sipp -sn uac -i 127.0.0.1 -p 5091 -d $HOLD_MS -r $RATE -m $CALLS -nostdin 127.0.0.1:5090 \
  > uac.out 2>&1 || { echo "SIPp caller failed:" >&2; tail -20 uac.out >&2; }
cd ..
# Every call's record at the collector, or 30 s.
for _ in \$(seq 300); do
  n=\$(cat collected/bench/*.jsonl 2>/dev/null | grep -c '"type":"call"' || true)
  [ "\$n" -ge $CALLS ] && break
  sleep 0.1
done
kill -TERM \$agent; wait \$agent || true
kill \$collector; wait \$collector 2>/dev/null || true
kill \$uas; wait \$uas 2>/dev/null || true
EOF
unshare -n bash "$dir/run.sh"

python3 - "$dir" "$GRACE_MS" "$CALLS" <<'PY'
import json, glob, sys, datetime
d, grace, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def t(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
lat = []
for path in glob.glob(f"{d}/collected/bench/*.jsonl"):
    for line in open(path):
        v = json.loads(line)
        r = v["record"]
        if r.get("type") != "call" or r.get("closed_by") != "bye" or not r.get("end_time"):
            continue
        lat.append(t(v["stored_at"]) - t(r["end_time"]))
lat.sort()
if not lat:
    sys.exit("no call record ended by BYE reached the collector; see " + d)
def pct(p):
    return lat[min(len(lat) - 1, max(0, round(p / 100 * len(lat) + 0.5) - 1))]
print(f"calls placed {calls}, records ended by BYE at the collector {len(lat)}")
print(f"BYE on the wire -> record synced at the collector, grace {grace} ms:")
print(f"  p50 {pct(50):.3f} s   p99 {pct(99):.3f} s   max {lat[-1]:.3f} s   min {lat[0]:.3f} s")
PY
echo "command: CALLS=$CALLS RATE=$RATE HOLD_MS=$HOLD_MS GRACE_MS=$GRACE_MS PROFILE=$PROFILE scripts/bench-latency.sh"
