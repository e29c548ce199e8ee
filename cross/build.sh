#!/usr/bin/env bash
# Builds teledge for the ARM edge boxes and runs the result under qemu-user on a bundled
# capture, to prove the binary works, not just that it links.
#
#   cross/build.sh [--dry-run] [aarch64|armv7|all]      (default: all)
#
# Installs what the chosen targets need on Debian, and only that: the cross linker and C
# library of each target, qemu-user, the rustup target. Exits 0 when every build and every
# run under qemu succeeded, 2 on a bad argument (before anything is installed or built).
# --dry-run prints the commands (one a line, prefixed "+ ") instead of running them, and the
# packages the targets need ("requires: ..."); tests/it/cross.rs checks the dispatch that way.
set -euo pipefail
cd "$(dirname "$0")/.."

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

build() { # arch
  local t=${triple[$1]} q=${qemu[$1]} s=${sysroot[$1]}
  run rustup target add "$t"
  # The `edge` profile: fat LTO, one codegen unit, stripped (see Cargo.toml).
  run cargo build --locked --profile edge --target "$t" --bin teledge
  local bin="${CARGO_TARGET_DIR:-target}/$t/edge/teledge"
  ((dry)) || file "$bin" 2>/dev/null || true
  if ((dry)); then
    echo "+ $q -L $s $bin replay tests/data/sngrep_aaa.pcap --format table"
  else
    "$q" -L "$s" "$bin" replay tests/data/sngrep_aaa.pcap --format table | tail -n 5
  fi
  # The daemon's parts that touch the OS: serial port listing (sysfs) and config checking.
  run "$q" -L "$s" "$bin" sensors list
  # 78 (EX_CONFIG): the example configuration names files this box does not have.
  if ((dry)); then
    echo "+ $q -L $s $bin check-config --config teledge.example.toml"
  else
    "$q" -L "$s" "$bin" check-config --config teledge.example.toml || [ $? -eq 78 ]
  fi
}

for a in "${arches[@]}"; do
  build "$a"
done
exit 0
