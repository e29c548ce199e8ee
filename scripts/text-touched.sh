#!/usr/bin/env bash
# Which program text `teledge run` executes (issue 14, goals 5 and 6): the bench-idle.sh
# configuration (one capture on lo, uplink to a running `teledge collect`, metrics endpoint)
# under `valgrind --tool=callgrind --dump-instr=yes`, dumped at READY=1 (sd_notify) and again
# after IDLE seconds (the heartbeat, the uplink's TLS handshake and first upload, the ticks).
# Prints, for each part, the instructions executed in the binary, the distinct 4 KiB pages
# and 64 KiB windows of the file they lie in (the kernel maps a file's page cache in 64 KiB
# fault-around windows or whole large folios, so a window is what one executed instruction
# makes resident), and the pages by crate. With ORDER=FILE, also writes the executed
# functions' symbols (start-up first, then in address order) to FILE: an lld
# `--symbol-ordering-file` that puts the code start and idle run together
# (docs/performance.md, "Idle and start-up"); `scripts/hot-text.sh list FILE` makes the
# hash-free link/hot-text.txt from it, which build.rs places first in the product builds.
# The binary measured has the default layout (TELEDGE_HOT_TEXT=0, as the build below makes
# it): valgrind attributes no code outside the `.text` section to the binary, so the
# functions already gathered in `.text.start_idle` would be missing from its output.
#
#   sudo scripts/text-touched.sh        (IDLE=10, PROFILE=release, BIN to skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-10}
PROFILE=${PROFILE:-release}
[ "$(id -u)" = 0 ] || { echo "text-touched.sh: needs root (live capture)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "text-touched.sh: needs valgrind" >&2; exit 1; }
[ -n "${BIN:-}" ] || TELEDGE_HOT_TEXT=0 cargo build --profile "$PROFILE" --locked --bin teledge -q
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
bin=$(realpath "${BIN:-${CARGO_TARGET_DIR:-target}/$dir/teledge}")

. scripts/bench-common.sh
bench_work
site_pki "$work" collector localhost "$SERVER_LOCALHOST" edge edge-01 "$CLIENT"
port=$(free_port)
cp "$bin" "$work/teledge-collector"
start_collector "$work/teledge-collector" "$port"
{
  edge_config "https://localhost:$port/v1/batches"
  cat <<EOT
[[capture]]
interface = "lo"
ring_mib = 2
[observe]
listen = "127.0.0.1:$(free_port)"
EOT
} > "$work/teledge.toml"
python3 - "$bin" "$work" "$IDLE" "${ORDER:-}" <<'PY'
import bisect, collections, os, re, signal, socket, subprocess, sys, time
binary, work, idle, order_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
path = os.path.join(work, "notify.sock")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
sock.settimeout(300)
out = os.path.join(work, "callgrind.out")
child = subprocess.Popen(
    ["valgrind", "--tool=callgrind", "--dump-instr=yes", f"--callgrind-out-file={out}", binary,
     "run", "--config", os.path.join(work, "teledge.toml")],
    env=dict(os.environ, NOTIFY_SOCKET=path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    while "READY=1" not in sock.recv(4096).decode(errors="replace").split("\n"):
        pass
    subprocess.run(["callgrind_control", "-d", "ready", str(child.pid)], stdout=subprocess.DEVNULL, check=True)
    time.sleep(idle)
    subprocess.run(["callgrind_control", "-d", "idle", str(child.pid)], stdout=subprocess.DEVNULL, check=True)
finally:
    child.send_signal(signal.SIGKILL)
    child.wait()

nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
syms = sorted((int(p[0], 16), p[2]) for p in (l.split(" ", 2) for l in nm.splitlines())
              if len(p) == 3 and p[1] in "tTwW")
starts = [a for a, _ in syms]
loads = [(int(p[1], 16), int(p[2], 16), int(p[4], 16))
         for p in (l.split() for l in subprocess.run(["readelf", "-lW", binary], capture_output=True,
                                                     text=True, check=True).stdout.splitlines())
         if p and p[0] == "LOAD"]
def offset(v):
    for off, vaddr, size in loads:
        if vaddr <= v < vaddr + size:
            return v - vaddr + off
    return None
demangled = {}
def crate(i):
    if i not in demangled:
        n = subprocess.run(["c++filt"], input=syms[i][1], capture_output=True, text=True).stdout.strip()
        m = re.match(r"<?(?:impl )?&?(?:mut )?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)", n)
        demangled[i] = m.group(1) if m else "?"
    return demangled[i]

def executed(dump):
    """Addresses executed in the binary (callgrind positions are the ELF's virtual addresses)."""
    obs, ob, last, hits = {}, None, 0, set()
    name = os.path.basename(binary)
    for line in open(dump, errors="replace"):
        if line.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
            if m and m.group(2):
                obs[m.group(1)] = m.group(2)
            if line.startswith("ob=") and m:
                ob = obs.get(m.group(1))
            continue
        c = line[:1]
        if c.isdigit() or c in "+-*":
            t = line.split()[0]
            if t.startswith("0x"):
                last = int(t, 16)
            elif t[0] in "+-":
                last += int(t)
            elif t != "*":
                last = int(t)
            if ob and os.path.basename(ob) == name:
                hits.add(last)
    return hits

order, seen, pages_all = [], set(), set()
for part, dump in (("start to READY=1", out + ".1"), (f"the {idle} s after READY", out + ".2")):
    hits = executed(dump)
    offs = [o for o in map(offset, hits) if o is not None]
    pages = {o >> 12 for o in offs}
    pages_all |= pages
    wins = {o >> 16 for o in offs}
    by = collections.defaultdict(set)
    fns = set()
    for a in hits:
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0:
            fns.add(i)
            o = offset(a)
            if o is not None:
                by[crate(i)].add(o >> 12)
    for i in sorted(fns):
        # Every name at the function's address: LLVM's merged functions are aliases of one
        # section, and the section is named after only one of them.
        j = bisect.bisect_left(starts, syms[i][0])
        while j < len(syms) and syms[j][0] == syms[i][0]:
            if syms[j][1] not in seen:
                seen.add(syms[j][1])
                order.append(syms[j][1])
            j += 1
    print(f"{part}: {len(hits)} distinct instructions of the binary in {len(fns)} functions; "
          f"{len(pages)} pages of 4 KiB ({len(pages) * 4} KiB), {len(wins)} windows of 64 KiB ({len(wins) * 64} KiB)")
    print("  4 KiB pages by crate: " + ", ".join(f"{c} {len(p)}" for c, p in sorted(by.items(), key=lambda x: -len(x[1]))[:16]))
wins = {p >> 4 for p in pages_all}
print(f"both: {len(pages_all)} pages ({len(pages_all) * 4} KiB) in {len(wins)} windows of 64 KiB ({len(wins) * 64} KiB)")
if order_out:
    with open(order_out, "w") as f:
        f.write("\n".join(order) + "\n")
    print(f"{len(order)} symbols written to {order_out}")
PY
