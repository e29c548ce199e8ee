#!/usr/bin/env bash
# Builds teledge's Debian packages with cargo-deb: one per architecture, from a release build
# for that target (cross-compiled with Debian's cross linkers, named in .cargo/config.toml;
# cross/README.md). Each package is checked with lintian, which must find nothing that
# debian/teledge.lintian-overrides does not list with its reason.
#
#   scripts/build-debs.sh [OPTIONS] [amd64|arm64|armhf|all]...      (default: all)
#
#   --out DIR           where the .deb files go (default: target/debian)
#   --deb-version V     the package version (default: Cargo.toml's version, revision 1)
#   --profile P         cargo profile (default: release; the CI test uses dev)
#   --no-build          package the binary already built (for the CI test, which cannot run
#                       cargo build while cargo test holds the build directory)
#   --no-lintian        skip lintian (scripts/test-debs.sh builds its upgrade package so)
#
# Installs what it lacks on Debian: cargo-deb 3.8.0 (crates.io), help2man, dpkg-dev, lintian,
# the cross toolchain of each architecture asked for (and qemu-user to make the manual page
# from a foreign binary), the rustup targets. Prints the path of every package it made.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_deb_version=3.8.0
out=target/debian
deb_version=""
profile=release
build=1
lintian=1
arches=()
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --deb-version) deb_version=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --no-lintian) lintian=0; shift ;;
    amd64|arm64|armhf) arches+=("$1"); shift ;;
    all) arches+=(amd64 arm64 armhf); shift ;;
    *) echo "usage: scripts/build-debs.sh [--out DIR] [--deb-version V] [--profile P] [--no-build] [--no-lintian] [amd64|arm64|armhf|all]..." >&2
       exit 2 ;;
  esac
done
((${#arches[@]})) || arches=(amd64 arm64 armhf)

triple() {
  case $1 in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    armhf) echo armv7-unknown-linux-gnueabihf ;;
  esac
}
gnu_prefix() { # the Debian cross tools' prefix; empty for the host
  case $1 in
    amd64) echo "" ;;
    arm64) echo aarch64-linux-gnu ;;
    armhf) echo arm-linux-gnueabihf ;;
  esac
}
qemu() {
  case $1 in
    amd64) echo "" ;;
    arm64) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armhf) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
  esac
}

# --- What the build needs -------------------------------------------------------------------
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
command -v help2man >/dev/null || need+=(help2man)
command -v dpkg-deb >/dev/null && command -v dpkg-architecture >/dev/null || need+=(dpkg-dev)
((lintian == 0)) || command -v lintian >/dev/null || need+=(lintian)
for arch in "${arches[@]}"; do
  p=$(gnu_prefix "$arch")
  [ -z "$p" ] && continue
  command -v "$p-gcc" >/dev/null || need+=("gcc-$p" "libc6-dev-${arch}-cross")
  command -v "$p-strip" >/dev/null || need+=("binutils-$p")
done
for arch in "${arches[@]}"; do
  q=$(qemu "$arch")
  [ -n "$q" ] && ! command -v "${q%% *}" >/dev/null && need+=(qemu-user) && break
done
if ((${#need[@]})); then
  echo "build-debs: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
  echo "build-debs: installing cargo-deb $cargo_deb_version" >&2
  cargo install --locked --quiet cargo-deb --version "$cargo_deb_version"
fi

target_dir=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-target}
host_triple=$(rustc -vV | sed -n 's/^host: //p')
profile_dir=$profile
[ "$profile" = dev ] && profile_dir=debug
mkdir -p "$out"

# The floor of libc6 in Cargo.toml's depends: no binary may need a newer glibc symbol.
glibc_floor=$(sed -n 's/^depends = "libc6 (>= \([0-9.]*\)).*/\1/p' Cargo.toml)

# --- One package per architecture -----------------------------------------------------------
manpage_made=0
for arch in "${arches[@]}"; do
  t=$(triple "$arch")
  p=$(gnu_prefix "$arch")
  # Release packages come from target/<triple>/release/ for every architecture. A test
  # package for the host (another profile) is made from cargo's own target/<profile>/, where
  # cargo test leaves the binary the CI test packages.
  target_args=(--target "$t")
  bin="$target_dir/$t/$profile_dir/teledge"
  if [ "$t" = "$host_triple" ] && [ "$profile" != release ]; then
    target_args=()
    bin="$target_dir/$profile_dir/teledge"
  fi
  if ((build)); then
    [ "$t" = "$host_triple" ] || rustup target list --installed 2>/dev/null | grep -qx "$t" \
      || rustup target add "$t" >/dev/null
    cargo build --locked --profile "$profile" "${target_args[@]}" --bin teledge
  fi
  [ -x "$bin" ] || { echo "build-debs: $bin is missing (build it, or drop --no-build)" >&2; exit 1; }
  # The code start-up and idle run, placed first by build.rs (release profile; the link's
  # own linker: rust-lld for amd64, GNU ld for arm64 and armhf): how much of the list matched.
  [ "$profile" != release ] || NM="${p:+$p-}nm" scripts/hot-text.sh check "$bin" >&2

  # glibc: the newest versioned symbol the binary needs, against the declared floor.
  objdump="${p:+$p-}objdump"
  needs=$("$objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  if [ "$(printf '%s\n%s\n' "$needs" "$glibc_floor" | sort -V | tail -n 1)" != "$glibc_floor" ]; then
    echo "build-debs: $arch binary needs glibc $needs, but Cargo.toml depends on libc6 (>= $glibc_floor)" >&2
    exit 1
  fi

  # The manual page, once, from the binary's own --help (run under qemu if foreign): the
  # options of every subcommand, then debian/teledge.h2m (description, files, exit status).
  if ((manpage_made == 0)); then
    man_dir="$target_dir/debian-man"
    mkdir -p "$man_dir"
    wrapper="$man_dir/teledge"
    printf '#!/bin/sh\nexec %s %s "$@"\n' "$(qemu "$arch")" "$(realpath "$bin")" >"$wrapper"
    chmod 755 "$wrapper"
    include="$man_dir/teledge.h2m"
    {
      cat debian/teledge.h2m
      echo "[COMMANDS IN DETAIL]"
      subcommands() { "$@" --help | awk '/^Commands:/{f=1;next} /^[^ ]/{f=0} f&&$1!="help"{print $1}'; }
      section() { # teledge WORDS... --help as a subsection
        echo ".SS \"teledge $*\""
        echo ".nf"
        "$wrapper" "$@" --help | sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"
        echo ".fi"
      }
      for sub in $(subcommands "$wrapper"); do
        section "$sub"
        for subsub in $(subcommands "$wrapper" "$sub"); do
          section "$sub" "$subsub"
        done
      done
    } >"$include"
    help2man --no-info --section 1 --name "contact-centre telephony edge agent" \
      --include "$include" --output "$man_dir/teledge.1" "$wrapper"
    # help2man names the program after the wrapper's path; the page must say teledge.
    sed -i "s|$(realpath "$wrapper")|teledge|g; s|$wrapper|teledge|g" "$man_dir/teledge.1"
    gzip -9nf "$man_dir/teledge.1"
    manpage_made=1
  fi

  # --strip: cargo-deb would keep the release profile's line tables (Debian wants stripped
  # binaries; the backtraces of a packaged binary name functions, not lines).
  args=(--no-build --strip "${target_args[@]}" --output "$out")
  # Not release: a test package (the CI test's), compressed fast.
  [ "$profile" = release ] || args+=(--profile "$profile" --fast --quiet)
  [ -z "$deb_version" ] || args+=(--deb-version "$deb_version")
  # cargo-deb strips with the target's own strip (Debian's binutils-<triple>).
  strip_env=()
  [ -z "$p" ] || strip_env=("STRIP_$t=$(command -v "$p-strip")" "OBJCOPY_$t=$(command -v "$p-objcopy")")
  deb=$(env "${strip_env[@]}" cargo deb "${args[@]}" | tail -n 1)
  [ -f "$deb" ] || { echo "build-debs: cargo deb made no package ($deb)" >&2; exit 1; }
  # cargo-deb writes no DEBIAN/md5sums; add it (without the conffiles, whose sums dpkg keeps
  # itself, as dh_md5sums does), so `dpkg --verify teledge` and debsums can check the files.
  repack=$(mktemp -d)
  dpkg-deb -R "$deb" "$repack/pkg"
  (cd "$repack/pkg" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' \
    | LC_ALL=C sort -z | xargs -0 md5sum >DEBIAN/md5sums)
  chmod 0644 "$repack/pkg/DEBIAN/md5sums"
  compress=(-Zxz)
  [ "$profile" = release ] || compress=(-Zgzip -z1)
  dpkg-deb --root-owner-group "${compress[@]}" --build "$repack/pkg" "$deb" >/dev/null
  rm -rf "$repack"
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] \
    || { echo "build-debs: $deb is not $arch" >&2; exit 1; }
  if ((lintian)); then
    # Every tag down to info that debian/teledge.lintian-overrides does not list fails, but
    # one: the override for byte sequences lintian takes for misspelt words is unused in a
    # binary without them (they differ by architecture and build), which is no fault.
    ignore='^I: teledge: unused-override spelling-error-in-binary '
    hints=$(lintian --display-info --fail-on none "$deb" | grep -E '^[EWI]: ' | grep -Ev "$ignore" || true)
    if [ -n "$hints" ]; then
      echo "build-debs: lintian on $deb:" >&2
      echo "$hints" >&2
      exit 1
    fi
  fi
  echo "$deb"
done
