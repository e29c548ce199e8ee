#!/usr/bin/env bash
# Builds teledge for the ARM edge boxes and runs the result under qemu-user, to prove the
# binary works, not just that it links: `--version`, `sensors list`, `check-config` of the
# example configuration, the library's unit tests built for the target (`cargo test --lib`
# with qemu as the runner), and a `replay` of every bundled capture in tests/data/, whose
# records must be byte for byte those of the host's own build (x86_64, `cargo build`) of the
# same sources (endianness, word size, floating point, the C parts of ring and the time
# zone database all show there).
#
#   cross/build.sh [--dry-run] [aarch64|armv7|all]      (default: all)
#
# Installs what the chosen targets need on Debian, and only that: the cross linker and C
# library of each target, qemu-user, the rustup target. Exits 0 when every build and every
# run under qemu succeeded, 1 when a run failed or a replay differed from the host's (the
# first lines of the difference printed), 2 on a bad argument (before anything is installed
# or built).
# --dry-run prints the commands (one a line, prefixed "+ ") instead of running them, and the
# packages the targets need ("requires: ..."); tests/it/cross.rs checks the dispatch that way.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/edge-link.sh

usage() { echo "usage: cross/build.sh [--dry-run] [aarch64|armv7|all]" >&2; exit 2; }

dry=0
which=""
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    aarch64|armv7|all) [ -z "$which" ] || usage; which=$arg ;;
    *) usage ;;
  esac
done
which=${which:-all}

# target rust triple, cross gcc, its packages, qemu, sysroot
declare -A triple=([aarch64]=aarch64-unknown-linux-gnu [armv7]=armv7-unknown-linux-gnueabihf)
declare -A gcc=([aarch64]=aarch64-linux-gnu-gcc [armv7]=arm-linux-gnueabihf-gcc)
declare -A pkgs=([aarch64]="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
                 [armv7]="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross")
declare -A qemu=([aarch64]=qemu-aarch64 [armv7]=qemu-arm)
declare -A sysroot=([aarch64]=/usr/aarch64-linux-gnu [armv7]=/usr/arm-linux-gnueabihf)

case $which in
  all) arches=(aarch64 armv7) ;;
  *) arches=("$which") ;;
esac

run() {
  if ((dry)); then echo "+ $*"; else "$@"; fi
}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
required=()
need=()
for a in "${arches[@]}"; do
  # shellcheck disable=SC2206
  p=(${pkgs[$a]})
  required+=("${p[@]}")
  command -v "${gcc[$a]}" >/dev/null || need+=("${p[@]}")
  required+=(qemu-user)
  command -v "${qemu[$a]}" >/dev/null || need+=(qemu-user)
done
# qemu-user once, however many targets want it.
mapfile -t required < <(printf '%s\n' "${required[@]}" | awk '!seen[$0]++')
((dry)) && echo "requires: ${required[*]}"
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | awk '!seen[$0]++')
  run $sudo apt-get update -qq
  if ((dry)); then
    echo "+ $sudo apt-get install -y -qq ${need[*]}"
  else
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# The reference: the host's build of the same sources (dev profile, as the tests use it).
host_bin="${CARGO_TARGET_DIR:-target}/debug/teledge"
run cargo build --locked --bin teledge
failed=0

# Every bundled capture, replayed under qemu and on the host: the same records (JSON Lines,
# the capture summary included) or the difference is shown and the run fails.
same_records() { # qemu sysroot binary arch
  local q=$1 s=$2 bin=$3 arch=$4 cap n=0 differ=0
  for cap in tests/data/*.pcap tests/data/*.pcapng; do
    if ((dry)); then
      echo "+ $q -L $s $bin replay --no-progress $cap"
      continue
    fi
    n=$((n + 1))
    if ! "$q" -L "$s" "$bin" replay --no-progress "$cap" >"$work/arm.jsonl" 2>"$work/arm.err"; then
      echo "$arch: replay of $cap failed:" >&2
      head -n 5 "$work/arm.err" >&2
      differ=$((differ + 1))
      continue
    fi
    "$host_bin" replay --no-progress "$cap" >"$work/host.jsonl"
    # The summary's reassembly memory figures (decode.memory) count the sizes of the
    # reassembly's own structures, which differ with the word size (armv7: 4-byte pointers):
    # left out of the comparison; every other field must be equal.
    sed -Ei 's/"memory":\{[^}]*\}/"memory":{}/' "$work/arm.jsonl" "$work/host.jsonl"
    if ! cmp -s "$work/arm.jsonl" "$work/host.jsonl"; then
      echo "$arch: replay of $cap differs from the host build's:" >&2
      diff "$work/host.jsonl" "$work/arm.jsonl" | head -n 10 | cut -c 1-400 >&2 || true
      differ=$((differ + 1))
    fi
  done
  if ((!dry)); then
    echo "$arch: $((n - differ)) of $n bundled captures replayed to the same records as the host build's"
    ((differ == 0)) || failed=1
  fi
}

build() { # arch
  local t=${triple[$1]} q=${qemu[$1]} s=${sysroot[$1]} link
  run rustup target add "$t"
  # The `edge` profile: fat LTO, one codegen unit, stripped (see Cargo.toml), linked as
  # cross/edge-link.sh says (aarch64: lld, identical code folded, packed relocations), with
  # the code start-up and idle run placed first (build.rs, link/hot-text.txt). The linker's
  # map is kept beside the binary: the stripped binary cannot say which functions are first.
  local bin="${CARGO_TARGET_DIR:-target}/$t/edge/teledge"
  mapfile -t link < <(edge_link_args "$t")
  run cargo rustc --locked --profile edge --target "$t" --bin teledge -- \
    -C "link-arg=-Wl,-Map=$bin.map" "${link[@]}"
  ((dry)) || file "$bin" 2>/dev/null || true
  run scripts/hot-text.sh check "$bin" "$bin.map"
  # The newest glibc the binary needs (packed relocations: GLIBC_ABI_DT_RELR, glibc 2.36).
  if ((!dry)); then
    echo "$1: needs glibc $("${gcc[$1]%-gcc}-objdump" -p "$bin" | grep -o 'GLIBC_[0-9.]*[0-9]' \
      | sed 's/GLIBC_//' | sort -uV | tail -n 1)$("${gcc[$1]%-gcc}-objdump" -p "$bin" \
      | grep -q GLIBC_ABI_DT_RELR && echo ' and GLIBC_ABI_DT_RELR (2.36)')"
  fi
  run "$q" -L "$s" "$bin" --version
  same_records "$q" "$s" "$bin" "$1"
  # The library's unit tests built for the target and run under its qemu: what only a
  # 32-bit word or another libc shows (armv7 found pcap-parser's 32-bit overflow this way).
  local runner
  runner="CARGO_TARGET_$(echo "$t" | tr 'a-z-' 'A-Z_')_RUNNER"
  if ! run env "$runner=$q -L $s" cargo test --locked --target "$t" --lib -q; then
    echo "$1: the unit tests failed under $q" >&2
    failed=1
  fi
  # The daemon's parts that touch the OS: serial port listing (sysfs) and config checking.
  run "$q" -L "$s" "$bin" sensors list
  # 78 (EX_CONFIG): the example configuration names files this box does not have; anything
  # else (0 included: the check did not read it) is a failure.
  if ((dry)); then
    echo "+ $q -L $s $bin check-config --config teledge.example.toml"
  else
    local code=0
    "$q" -L "$s" "$bin" check-config --config teledge.example.toml || code=$?
    if [ "$code" -ne 78 ]; then
      echo "$1: check-config of teledge.example.toml exited $code, not 78" >&2
      failed=1
    fi
  fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for a in "${arches[@]}"; do
  build "$a"
done
exit "$failed"
