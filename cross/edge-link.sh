# Sourced by cross/build.sh and scripts/bench-arm.sh: how the ARM `edge` binaries are linked.
#
#   edge_link_args TRIPLE    prints the rustc arguments (one a line) for that target's link
#
# aarch64 and armv7: the linker is lld (rust-lld, shipped with the Rust toolchain, through
# its `gcc-ld` wrapper; the cross gcc still drives the link, with the cross C library and
# start files), for two things Debian 12's GNU ld 2.40 does not do (docs/performance.md,
# "Binary size (2026-12-03, second pass)"):
# - `-z pack-relative-relocs`: the loader's relative relocations as a bitmap (`.relr.dyn`)
#   instead of an entry each in `.rela.dyn`/`.rel.dyn` (24 bytes on aarch64, 8 on armv7;
#   GNU ld 2.40 ignores the option on aarch64, with a warning). The binary then needs glibc
#   >= 2.36 (`GLIBC_ABI_DT_RELR`; Debian 12 has 2.36): cross/build.sh prints what it needs.
#   PIE stays.
# - `--icf=all` (GNU ld has no identical code folding): identical functions (generic
#   instances that compile to the same code) kept once. Rust makes no promise that two
#   functions have distinct addresses; data is not folded (no
#   `--ignore-data-address-equality`: distinct statics keep distinct addresses).
# Only the final link changes: the arguments go to `cargo rustc` for the `teledge` binary,
# so no dependency is rebuilt, and the packages (`scripts/build-debs.sh`, profile `release`,
# libc6 >= 2.34) are not affected.
edge_link_args() {
  case $1 in
    aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf)
      local gcc_ld
      gcc_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
      [ -x "$gcc_ld/ld.lld" ] || { echo "edge-link: no $gcc_ld/ld.lld (rust-lld) in this toolchain" >&2; return 1; }
      printf '%s\n' -C "link-arg=-B$gcc_ld" -C link-arg=-fuse-ld=lld \
        -C link-arg=-Wl,--icf=all -C link-arg=-Wl,-z,pack-relative-relocs
      ;;
  esac
}
