#!/usr/bin/env bash
# Builds teledge for the ARM edge boxes and runs the result under qemu-user on a bundled
# capture, to prove the binary works, not just that it links.
#
#   cross/build.sh [aarch64|armv7|all]      (default: all)
#
# Installs what it needs on Debian: the cross linkers, qemu-user, the rustup targets.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

build() { # target qemu sysroot
  rustup target add "$1" >/dev/null
  # The `edge` profile: fat LTO, one codegen unit, stripped (see Cargo.toml).
  cargo build --locked --profile edge --target "$1" --bin teledge
  local bin="${CARGO_TARGET_DIR:-target}/$1/edge/teledge"
  file "$bin" 2>/dev/null || true
  "$2" -L "$3" "$bin" replay tests/data/sngrep_aaa.pcap --format table | tail -n 5
  # The daemon's parts that touch the OS: serial port listing (sysfs) and config checking.
  "$2" -L "$3" "$bin" sensors list
  "$2" -L "$3" "$bin" check-config --config teledge.example.toml || [ $? -eq 78 ]
}

case $which in
  aarch64|all) build aarch64-unknown-linux-gnu qemu-aarch64 /usr/aarch64-linux-gnu ;;&
  armv7|all) build armv7-unknown-linux-gnueabihf qemu-arm /usr/arm-linux-gnueabihf ;;
  *) echo "usage: cross/build.sh [aarch64|armv7|all]" >&2; exit 2 ;;
esac
