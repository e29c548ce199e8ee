#!/usr/bin/env bash
# Version changes against a real collector: one binary spools records it cannot deliver
# (large call records stored in parts included), the other binary, started on the same state,
# delivers them. Checks the collector's day files: every record exactly once, ids not reused.
#
#   scripts/upgrade-campaign.sh OLD_BIN NEW_BIN     (binaries of two versions)
#   OLD=<commit> scripts/upgrade-campaign.sh        (builds OLD in a git worktree under /tmp)
#
# Directions run: OLD writes -> NEW delivers (upgrade), NEW writes -> OLD delivers (rollback),
# and NEW -> OLD -> NEW (a rollback, then the upgrade again). Each with a clean exit, with
# SIGTERM and with SIGKILL of the writer (once it has said its records are spooled). Prints one line per case; exits 1 if any case lost, doubled or
# misread a record.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [[ $# -ge 2 ]]; then
    old=$1 new=$2
else
    : "${OLD:?OLD=<commit> or two binaries}"
    wt=/tmp/teledge-old-$OLD
    [[ -d $wt ]] || git -C "$here" worktree add --detach "$wt" "$OLD" >/dev/null
    (cd "$wt" && CARGO_TARGET_DIR=${OLD_TARGET:-$here/target/old} cargo build --bin teledge -q)
    old=${OLD_TARGET:-$here/target/old}/debug/teledge
    (cd "$here" && cargo build --bin teledge -q)
    new=$here/target/debug/teledge
fi
capture=$here/tests/data/rtp_rtcp_sip_ipv4_udp.pcap   # a call record of ~9 kB (in parts)
small=$here/tests/data/sip_ipv4_tcp.pcap
work=$(mktemp -d /tmp/teledge-upgrade.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$work"' EXIT
pki=$work/pki
"$new" pki init-ca --dir "$pki/ca" --name "campaign CA" >/dev/null
"$new" pki issue-collector --ca "$pki/ca" --dns localhost --out "$pki/collector" >/dev/null
"$new" pki issue-node --ca "$pki/ca" --node-id edge-01 --out "$pki/node" >/dev/null
head -c 32 /dev/urandom >"$pki/spool.key"
head -c 32 /dev/urandom >"$pki/site.key"

config() { # $1 spool dir, $2 port
    cat <<CONF
[node]
id = "edge-01"
[spool]
dir = "$1"
key_file = "$pki/spool.key"
key_id = 1
[privacy]
mode = "keyed_hash"
site_key_file = "$pki/site.key"
[uplink]
url = "https://localhost:$2/v1/batches"
ca_file = "$pki/collector/ca.pem"
cert_file = "$pki/node/node.pem"
key_file = "$pki/node/node.key"
batch_records = 4
timeout_ms = 3000
CONF
}

# $1 binary, $2 case dir, $3 capture, $4 port, $5 "kill" or "clean"
spool_with() {
    local bin=$1 dir=$2 cap=$3 port=$4 how=$5
    config "$dir/spool" "$port" >"$dir/unreachable.toml"
    if [[ $how == kill || $how == term ]]; then
        "$bin" replay --no-progress --forward --config "$dir/unreachable.toml" --forward-timeout 30 "$cap" \
            >>"$dir/writer.log" 2>&1 &
        local pid=$! before; before=$(grep -sc "records spooled" "$dir/writer.log" || true)
        # Killed once it says the records are spooled (durable: it flushes before saying so),
        # while it retries the collector.
        for _ in $(seq 300); do
            [[ $(grep -sc "records spooled" "$dir/writer.log" || true) -gt $before ]] && break
            sleep 0.1
        done
        sleep 0.3
        if [[ $how == kill ]]; then kill -KILL $pid; else kill -TERM $pid; fi
        wait $pid 2>/dev/null || true
    else
        "$bin" replay --no-progress --forward --config "$dir/unreachable.toml" --forward-timeout 1 "$cap" \
            >>"$dir/writer.log" 2>&1 || true
    fi
}

deliver_with() { # $1 binary, $2 case dir, $3 collector port
    config "$2/spool" "$3" >"$2/collector.toml"
    "$1" replay --no-progress --forward --config "$2/collector.toml" --forward-timeout 20 "$small" \
        >>"$2/reader.log" 2>&1 || echo "  (reader exited $?)" >>"$2/reader.log"
}

start_collector() { # $1 case dir -> sets cport, cpid
    "$new" collect --listen 127.0.0.1:0 --ca "$pki/collector/ca.pem" --cert "$pki/collector/collector.pem" \
        --key "$pki/collector/collector.key" --out "$1/out" >"$1/collector.addr" 2>"$1/collector.log" &
    cpid=$!
    for _ in $(seq 100); do [[ -s $1/collector.addr ]] && break; sleep 0.05; done
    cport=$(head -1 "$1/collector.addr" | sed 's/.*://')
}

# What the collector holds: per call (the replayed capture's records) how often, ids reused.
check() { # $1 case dir, $2 expected records of type call from the big capture per writer run
    python3 - "$1/out" "$2" "$3" <<'PY'
import json, os, sys, collections
out, runs = sys.argv[1], int(sys.argv[2])
lines = []
for root, _, files in os.walk(out):
    for f in sorted(files):
        if f.endswith(".jsonl"):
            with open(os.path.join(root, f)) as fh:
                lines += [json.loads(l) for l in fh if l.strip()]
ids = collections.Counter(l["id"] for l in lines)
lines = [l["record"] for l in lines]
calls = [l for l in lines if l.get("type") == "call"]
gaps = [l for l in lines if l.get("type") == "gap"]
big = [c for c in calls if len(json.dumps(c)) > 7000]
twice = [i for i, n in ids.items() if n > 1]
# Each run says how many records it spooled (a killed writer says nothing: then only the
# large records are counted).
import re
said = [int(n) for f in ("writer.log", "reader.log")
        for n in re.findall(r"(\d+) records spooled", open(os.path.join(out, "..", f)).read()
                            if os.path.exists(os.path.join(out, "..", f)) else "")]
expected = sum(said) if len(said) == int(sys.argv[3]) else None
print(f"records={len(lines)}/{expected} big={len(big)}/{runs} gaps={[(g.get('reason'), g.get('detail')) for g in gaps]} ids_twice={len(twice)}")
sys.exit(0 if len(big) == runs and not gaps and not twice and expected in (None, len(lines)) else 1)
PY
}

fail=0
run_case() { # name, then steps: "w:BIN:how" (spool, collector down) or "d:BIN" (deliver)
    local name=$1; shift
    local dir=$work/$name; mkdir -p "$dir"
    local writes=0 kind bin how
    start_collector "$dir"
    local down; down=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    for step in "$@"; do
        IFS=: read -r kind bin how <<<"$step"
        local b=$old; [[ $bin == new ]] && b=$new
        if [[ $kind == w ]]; then spool_with "$b" "$dir" "$capture" "$down" "$how"; writes=$((writes+1))
        else deliver_with "$b" "$dir" "$cport"; fi
    done
    sleep 1
    printf '%-34s ' "$name"
    if ! check "$dir" "$writes" $#; then fail=1; ls "$dir/spool" | tr '\n' ' '; echo; fi
    kill $cpid 2>/dev/null; wait $cpid 2>/dev/null || true
}

for how in ${HOW:-clean term kill}; do
    for c in ${CASES:-upgrade rollback rollback-forward rollback-then-both}; do
        case $c in
        upgrade) run_case "upgrade-$how" "w:old:$how" "d:new" ;;
        # The old binary does not see what the new one spooled; it is sent once new runs again.
        rollback) run_case "rollback-$how" "w:new:$how" "d:old" "d:new" ;;
        rollback-forward) run_case "rollback-forward-$how" "w:new:$how" "w:old:$how" "d:new" ;;
        rollback-then-both) run_case "rollback-then-both-$how" "w:new:$how" "d:old" "w:old:$how" "d:new" ;;
        esac
    done
done
exit $fail
