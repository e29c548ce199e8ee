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
    echo "usage: scripts/hot-text.sh list ORDER_FILE | check BIN [MAP]" >&2
    exit 2
    ;;
esac
