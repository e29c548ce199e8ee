#!/usr/bin/env bash
# The code `teledge run` executes from start to READY=1 and while idle, placed together at
# link time (issue 14 goal 5; docs/performance.md, "Idle and start-up"). The kernel maps
# program text in 64 KiB windows, so 4.5 MiB of executed code scattered over a 17 MB `.text`
# made ~13 MiB of it resident; gathered in one place it is ~3 MiB.
#
#   scripts/hot-text.sh list ORDER_FILE > link/hot-text.txt
#       The symbols scripts/text-touched.sh wrote (ORDER=FILE: one build's exact names, in
#       the order start then idle ran them) as hash-free patterns, one a line, order kept,
#       duplicates dropped: a legacy-mangled Rust name's hash (`17h<16 hex>E`) becomes
#       `17h*E`; in a v0-mangled name (std, `_R…`) the crate disambiguators (`Cs<base62>_`)
#       and back-references (`B<base62>_`, byte offsets that move when a disambiguator's
#       length does) become `Cs*_` and `B*_`; LLVM's `.llvm.<n>` suffix (a local function
#       made global by thin LTO) is dropped. C and other unmangled names stay as they are.
#       The patterns therefore match the same functions in another build of the same
#       sources (other target, profile, dependency metadata); a generic function's pattern
#       matches all of its instances.
#   scripts/hot-text.sh faults PERF_DATA BIN >> link/hot-text.txt
#       What callgrind does not see: code that runs natively but not under valgrind (CPU
#       feature paths: valgrind has no VAES, SHA-NI…) or only at native speed (timers, the
#       uplink's connection life). PERF_DATA is `perf record -e page-faults -c 1 -d` of BIN
#       (`AGENT_ENV="X=1 perf record -q -e page-faults -c 1 -d -o FILE" scripts/bench-idle.sh`
#       runs it so); prints the hash-free names of the functions whose instruction fetches
#       faulted outside `.text.start_idle`, not yet in the list. A fault maps a 64 KiB window,
#       so each run finds the first function of each window touched: repeat (relink, run,
#       append) until few are left.
#   scripts/hot-text.sh check BIN [MAP]
#       How many of link/hot-text.txt's patterns the linked BIN's `.text.start_idle`
#       section holds (build.rs puts them there), and the section's size. Counts from BIN's
#       symbol table, or, for a stripped binary, from the linker's map file MAP
#       (`-C link-arg=-Wl,-Map=MAP`; lld's or GNU ld's). Exits 0 whatever it finds: a
#       stale list degrades the layout, it does not make a build wrong.
#
# build.rs turns link/hot-text.txt into a linker script for the release-like profiles
# (`release`, `bench`, `edge`): see there.
set -euo pipefail
cd "$(dirname "$0")/.."
LIST=${LIST:-link/hot-text.txt}
NM=${NM:-nm} # the target's nm for a foreign binary (aarch64-linux-gnu-nm…)

# The normalisation, shared by `list` (from the exact names) and `check` (the linked names).
hash_free() {
  sed -E -e 's/\.llvm\.[0-9]+$//' \
    -e '/^_ZN/ s/17h[0-9a-f]{16}E/17h*E/g' \
    -e '/^_R/ { s/Cs[0-9A-Za-z]*_/Cs*_/g; s/B[0-9A-Za-z]*_/B*_/g; }'
}

case ${1:-} in
  list)
    [ $# -eq 2 ] || { echo "usage: scripts/hot-text.sh list ORDER_FILE" >&2; exit 2; }
    echo "# The functions \`teledge run\` executes from start to READY=1, then in 10 s of idle"
    echo "# (scripts/text-touched.sh ORDER=FILE on $(git rev-parse --short HEAD 2>/dev/null || echo '?'),"
    echo "# $(uname -m), then scripts/hot-text.sh list): hash-free symbol patterns that build.rs"
    echo "# places first in the program text. Regenerate when start-up or idle code changes much;"
    echo "# a stale line matches nothing and costs nothing."
    hash_free <"$2" | awk 'NF && !seen[$0]++'
    ;;
  faults)
    [ $# -eq 3 ] || { echo "usage: scripts/hot-text.sh faults PERF_DATA BIN" >&2; exit 2; }
    data=$2 bin=$(realpath "$3")
    perf script -i "$data" --show-mmap-events -F addr,ip 2>/dev/null | python3 -c '
import bisect, re, subprocess, sys
binary, listed = sys.argv[1], sys.argv[2]
# The text segment: file offset -> virtual address, and the section placed first.
load = [l.split() for l in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout.splitlines()]
delta = next(int(p[2], 16) - int(p[1], 16) for p in load if p and p[0] == "LOAD" and "E" in p[6:8])
hot = (0, 0)
for l in subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True).stdout.splitlines():
    p = re.sub(r"^ *\[ *[0-9]+\] *", "", l).split()
    if p and p[0] == ".text.start_idle":
        hot = (int(p[2], 16), int(p[2], 16) + int(p[4], 16))
syms = sorted((int(p[0], 16), p[2]) for p in (l.split() for l in subprocess.run(
    ["nm", "--defined-only", binary], capture_output=True, text=True).stdout.splitlines())
    if len(p) == 3 and p[1] in "tTwW" and not p[2].startswith("$"))
starts = [a for a, _ in syms]
text, names = None, []
for line in sys.stdin:
    m = re.search(r"\[0x([0-9a-f]+)\(0x([0-9a-f]+)\) @ (0x[0-9a-f]+|[0-9]+) .*\]: r-xp (.*)$", line)
    if m and m.group(4).strip() == binary:
        text = (int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 0))
        continue
    p = line.split()
    if text is None or len(p) != 2 or not all(re.fullmatch(r"[0-9a-f]+", x) for x in p):
        continue
    addr, ip = int(p[0], 16), int(p[1], 16)
    if addr != ip or not (text[0] <= addr < text[0] + text[1]):
        continue  # not an instruction fetch in the binary text
    v = addr - text[0] + text[2] + delta
    if hot[0] <= v < hot[1]:
        continue
    i = bisect.bisect_right(starts, v) - 1
    if i >= 0:
        names.append(syms[i][1])
print("\n".join(names))
' "$bin" "$LIST" | hash_free | awk -v list="$LIST" 'BEGIN { while ((getline l < list) > 0) seen[l] = 1 } NF && !seen[$0]++'
    ;;
  check)
    [ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: scripts/hot-text.sh check BIN [MAP]" >&2; exit 2; }
    bin=$2 map=${3:-}
    listed=$(grep -cv '^#' "$LIST" || true)
    # The section's address and size from the ELF section headers (readelf reads every ELF
    # machine); hexadecimal, as wide as the binary's addresses.
    read -r addr hexsize < <(readelf -SW "$bin" | sed 's/^ *\[ *[0-9]*\] *//' \
      | awk '$1 == ".text.start_idle" { print $3, $5 }') || true
    if [ -z "${addr:-}" ]; then
      echo "hot text: $bin has no .text.start_idle section (none of the $listed listed functions placed first)"
      exit 0
    fi
    size=$((16#$hexsize))
    if [ -n "$map" ]; then
      # lld: "... path:(.text.NAME)" input lines under the output section's line; GNU ld:
      # " .text.NAME" input lines (address on the same or the next line) after it.
      names=$(awk '
        /^[ \t]*[0-9a-f]+[ \t]+[0-9a-f]+[ \t]+[0-9a-f]+[ \t]+[0-9]+ [^ ]/ || /^[^ \t]/ {
          # an output section line (lld: 4 numbers then the name; GNU ld: at column 0)
          out = ($NF == ".text.start_idle" || $1 == ".text.start_idle") }
        out && match($0, /:\(\.text\.[^)]*\)/) { print substr($0, RSTART + 8, RLENGTH - 9); next }
        out && match($0, /^ \.text\.[^ ]+/) { print substr($0, RSTART + 7, RLENGTH - 7) }' "$map" \
        | sed 's/^unlikely\.//')
      from="the map $map"
    elif [ -n "$("$NM" "$bin" 2>/dev/null | head -n 1)" ]; then
      # nm prints addresses as wide as readelf does: compared as strings ("" makes awk
      # compare strings, not the numbers it takes all-digit ones for).
      lo=$addr
      hi=$(printf "%0${#addr}x" $((16#$addr + size)))
      names=$("$NM" --defined-only "$bin" | awk -v lo="$lo" -v hi="$hi" '
        $2 ~ /^[tTwW]$/ && $3 !~ /^[$]/ { a = $1 ""; if (a >= lo "" && a < hi "") print $3 }')
      from="its symbol table"
    else
      echo "hot text: .text.start_idle holds $size bytes ($bin is stripped: pass the link map to count the $listed listed functions)"
      exit 0
    fi
    found=$(comm -12 <(grep -v '^#' "$LIST" | sort -u) <(printf '%s\n' "$names" | hash_free | sort -u) | wc -l)
    echo "hot text: $found of $listed listed functions found and placed first ($(printf '%s\n' "$names" | grep -c .) symbols, $size bytes in .text.start_idle; counted from $from)"
    ;;
  *)
    echo "usage: scripts/hot-text.sh list ORDER_FILE | faults PERF_DATA BIN | check BIN [MAP]" >&2
    exit 2
    ;;
esac
