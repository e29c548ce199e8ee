#!/usr/bin/env bash
# Idle memory (issue 14, goal 5): `teledge run` with one capture (loopback) and an uplink to
# a running `teledge collect` and the metrics endpoint on, idle, beside a peer in the same run: `tcpdump -i lo -w
# /dev/null` (libpcap's own TPACKET_V3 ring, 2 MiB by default) started at the same time.
# After SETTLE seconds each process's memory is read from /proc (`status`, `smaps`) and
# broken down: the capture ring (the `socket:` mapping, which the kernel fills whole at
# mmap), the program's own file (text and read-only data), shared libraries, anonymous
# memory (heap, stacks) and threads, and the private part (USS: pages no other process maps;
# the collector runs from a copy of the binary, so the agent's text counts as its own). Run for each ring size in RINGS (MiB; `ring_mib` in
# `[[capture]]`, default 16; `ring_mib` must hold a block for each capture thread, by default
# one a core: THREADS=1 sets `threads = 1` for a 1 MiB ring); the goal is VmRSS ≤ 10 MiB.
# Then, for SETTLE seconds more, what the idle daemon touches: the referenced bits are cleared
# (`/proc/PID/clear_refs`) and the program file's resident pages read again ("Referenced" in
# smaps): the steady idle working set of program text, beside all that start-up left mapped.
# Needs root (AF_PACKET, clear_refs).
#
#   sudo scripts/bench-idle.sh          (RINGS="16 4 2", SETTLE=5, PROFILE=release, THREADS unset)
set -euo pipefail
cd "$(dirname "$0")/.."
RINGS=${RINGS:-16 4 2}
SETTLE=${SETTLE:-5}
PROFILE=${PROFILE:-release}
[ "$(id -u)" = 0 ] || { echo "bench-idle.sh: needs root (live capture)" >&2; exit 1; }
command -v tcpdump >/dev/null || { echo "bench-idle.sh: needs tcpdump (apt-get install tcpdump)" >&2; exit 1; }
[ -n "${BIN:-}" ] || cargo build --profile "$PROFILE" --locked --bin teledge -q
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
bin=${BIN:-${CARGO_TARGET_DIR:-target}/$dir/teledge}

. scripts/bench-common.sh
bench_work
site_pki "$work" collector localhost "$SERVER_LOCALHOST" edge edge-01 "$CLIENT"
port=$(free_port)
# The collector runs from a copy, so it shares no page of program text with the agent.
cp "$bin" "$work/teledge-collector"
start_collector "$work/teledge-collector" "$port"

# Resident KiB of PID by where it lies (smaps "Rss:" per mapping): "ring program libraries
# heap stacks other", program = mappings of the file matching the awk regex EXE.
split() { # pid exe_regex
  awk -v exe="$2" '
    /^[0-9a-f]+-[0-9a-f]+ / { name = $6; kind = "other"
      if (name ~ /^socket:/) kind = "ring"
      else if (name ~ exe) kind = "program"
      else if (name ~ /\.so/) kind = "libraries"
      else if (name == "[heap]") kind = "heap"
      else if (name == "[stack]") kind = "stacks"
      next }
    $1 == "Rss:" { r[kind] += $2 }
    END { printf "%d %d %d %d %d %d\n", r["ring"], r["program"], r["libraries"], r["heap"], r["stacks"], r["other"] }' "/proc/$1/smaps"
}
field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# One line per process: what the kernel counts and where it lies. "anonymous" is the
# process's own memory outside its heap: thread stacks (guard pages apart) and malloc's
# other arenas, which the kernel cannot tell apart.
report() { # label pid exe_regex
  local pid=$2 rss anon threads ring prog libs heap stacks other
  rss=$(field "$pid" VmRSS)
  anon=$(field "$pid" RssAnon)
  threads=$(field "$pid" Threads)
  read -r ring prog libs heap stacks other < <(split "$pid" "$3")
  # Private (USS): resident pages no other process maps (the ring included).
  uss=$(awk '$1 == "Private_Clean:" || $1 == "Private_Dirty:" { s += $2 } END { print s }' "/proc/$pid/smaps_rollup")
  awk -v l="$1" -v r="$rss" -v a="$anon" -v g="$ring" -v p="$prog" -v s="$libs" -v h="$heap" -v k="$stacks" -v o="$other" -v t="$threads" -v u="$uss" \
    'BEGIN { printf "  %-36s VmRSS %4.1f MiB = ring %4.1f + program file %4.1f + libraries %3.1f + heap %3.1f + anonymous %3.1f; RssAnon %3.1f, private %4.1f; %2d threads\n",
      l, r/1024, g/1024, p/1024, s/1024, h/1024, (k+o)/1024, a/1024, u/1024, t }'
}

echo "machine: $(nproc) cores, $(uname -m), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); $(tcpdump --version 2>&1 | head -n 1)"
echo "idle, one capture on lo, after ${SETTLE} s (binary $bin, $(stat -c %s "$bin") bytes):"
mport=$(free_port)
for ring in $RINGS; do
  rm -rf "$work/spool"
  {
    edge_config "https://localhost:$port/v1/batches"
    cat <<EOF
[[capture]]
interface = "lo"
ring_mib = $ring${THREADS:+
threads = $THREADS}
[observe]
listen = "127.0.0.1:$mport"
EOF
  } > "$work/teledge.toml"
  env ${AGENT_ENV:-} "$bin" run --config "$work/teledge.toml" >"$work/run.log" 2>&1 &
  agent=$!
  pids+=("$agent")
  tcpdump -i lo -w /dev/null -q 2>/dev/null &
  peer=$!
  pids+=("$peer")
  sleep "$SETTLE"
  kill -0 "$agent" 2>/dev/null || { echo "teledge run exited:" >&2; cat "$work/run.log" >&2; exit 1; }
  report "teledge run (ring_mib = $ring)" "$agent" '/teledge$'
  report "tcpdump -i lo (2 MiB buffer)" "$peer" '/tcpdump$'
  echo 1 > "/proc/$agent/clear_refs"
  sleep "$SETTLE"
  awk -v s="$SETTLE" '/^[0-9a-f]+-[0-9a-f]+ / { prog = ($6 ~ /\/teledge$/) }
    prog && $1 == "Rss:" { r += $2 } prog && $1 == "Referenced:" { f += $2 }
    END { printf "  %-36s program file resident %4.1f MiB, of it referenced in the next %d s idle %4.1f MiB\n", "", r/1024, s, f/1024 }' "/proc/$agent/smaps"
  kill "$agent" "$peer"
  wait "$agent" "$peer" 2>/dev/null || true
done
