#!/usr/bin/env bash
# The Debian packages on a real Debian 12 root, not in CI (minutes: three release builds, a
# debootstrap): scripts/build-debs.sh builds amd64, arm64 and armhf (lintian on each); then,
# in a debootstrapped bookworm (minbase + systemd) entered with chroot, the amd64 package is
# installed, reinstalled over an edited conffile, upgraded to a second version whose example
# configuration changed, removed and purged, and reinstalled onto a provisioned
# configuration; the ARM packages are inspected with dpkg-deb and their binaries run under
# qemu-user.
#
#   scripts/test-debs.sh [--profile P] [--no-build] [amd64|arm64|armhf|all]...
#                                   (as root; about 2 minutes plus the builds)
#   --profile dev --no-build amd64  a quick run on the binary `cargo build` made (no lintian);
#                                   the amd64 package is always made: the root needs it
#
# What is real and what is not: dpkg, apt, the maintainer scripts, systemd-sysusers,
# systemd-tmpfiles, deb-systemd-helper and the binary are the real ones, in a real Debian
# root. systemd does not run as PID 1 in a chroot, so no service is really started: the
# scripts are made to take their "systemd is running" branches (/run/systemd/system exists
# in the root) and every start or stop they ask of deb-systemd-invoke goes to policy-rc.d,
# Debian's hook for exactly this, which records it and denies it (exit 101). The test reads
# that record. The unit itself is checked by systemd-analyze (tests/it/observe.rs).
#
# The base root is made once with debootstrap from the machine's own Debian mirror (as apt
# is configured) and kept as target/test-debs/bookworm-minbase.tar; each run unpacks it anew.
# Ends with "N passed, M failed"; exits 1 if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$repo/target/test-debs
[ "$(id -u)" -eq 0 ] || { echo "test-debs: run as root (debootstrap, chroot)" >&2; exit 2; }

build_args=()
arches=()
while (($#)); do
  case $1 in
    --profile) build_args+=(--profile "$2"); shift 2 ;;
    --no-build) build_args+=(--no-build); shift ;;
    amd64|arm64|armhf) arches+=("$1"); shift ;;
    all) arches+=(amd64 arm64 armhf); shift ;;
    *) echo "usage: scripts/test-debs.sh [--profile P] [--no-build] [amd64|arm64|armhf|all]..." >&2; exit 2 ;;
  esac
done
((${#arches[@]})) || arches=(amd64 arm64 armhf)
[[ " ${arches[*]} " == *" amd64 "* ]] || arches+=(amd64)
[[ " ${build_args[*]} " == *" --profile "* ]] && build_args+=(--no-lintian)

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v openssl >/dev/null || need+=(openssl)
command -v file >/dev/null || need+=(file)
command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

passed=0
failed=0
check() { # description, then a command that must succeed
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then
    passed=$((passed + 1))
    echo "ok   $what"
  else
    failed=$((failed + 1))
    echo "FAIL $what   ($*)"
  fi
}

# --- The packages ---------------------------------------------------------------------------
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
rm -rf "$work/debs" "$work/debs-v2"
scripts/build-debs.sh "${build_args[@]}" --out "$work/debs" "${arches[@]}"
v1=$work/debs/teledge_${version}-1_amd64.deb
# The second version: the same binary, a higher version, and an example configuration that
# changed (as a release that documents a new setting would).
scripts/build-debs.sh "${build_args[@]}" --no-build --no-lintian --deb-version "${version}-2" \
  --out "$work/debs-v2" amd64
v2=$work/debs-v2/teledge_${version}-2_amd64.deb
repack=$(mktemp -d)
dpkg-deb -R "$v2" "$repack/pkg"
echo "# (added in ${version}-2) a setting documented by the new release" \
  >>"$repack/pkg/etc/teledge/teledge.example.toml"
dpkg-deb --root-owner-group -Zxz --build "$repack/pkg" "$v2" >/dev/null
rm -rf "$repack"

# --- The ARM packages -----------------------------------------------------------------------
amd64_files=$(dpkg-deb -c "$v1" | awk '{print $1, $2, $6}')
for arch in "${arches[@]}"; do
  [ "$arch" = amd64 ] && continue
  deb=$work/debs/teledge_${version}-1_${arch}.deb
  check "$arch: package exists" test -f "$deb"
  check "$arch: Architecture is $arch" test "$(dpkg-deb -f "$deb" Architecture)" = "$arch"
  check "$arch: same files, modes and owners as amd64" \
    test "$(dpkg-deb -c "$deb" | awk '{print $1, $2, $6}')" = "$amd64_files"
  x=$(mktemp -d)
  dpkg-deb -x "$deb" "$x"
  case $arch in
    arm64) q=(qemu-aarch64 -L /usr/aarch64-linux-gnu); elf="ARM aarch64" ;;
    armhf) q=(qemu-arm -L /usr/arm-linux-gnueabihf); elf="ARM, EABI5 version 1 (SYSV), dynamically linked, interpreter /lib/ld-linux-armhf.so.3" ;;
  esac
  check "$arch: the binary is $elf" sh -c "file -L '$x/usr/bin/teledge' | grep -qF '$elf'"
  check "$arch: teledge --version under qemu-user" \
    test "$("${q[@]}" "$x/usr/bin/teledge" --version)" = "teledge $version"
  check "$arch: teledge replay under qemu-user finds the bundled call" sh -c \
    "$(printf '%q ' "${q[@]}") '$x/usr/bin/teledge' replay tests/data/sngrep_aaa.pcap | grep -q '\"teledge.call/1\"'"
  rc=0
  "${q[@]}" "$x/usr/bin/teledge" check-config --config "$x/etc/teledge/teledge.example.toml" \
    >/dev/null 2>&1 || rc=$?
  check "$arch: check-config of the unfilled example exits 78 under qemu-user" test "$rc" = 78
  rm -rf "$x"
done

# --- A Debian 12 root -----------------------------------------------------------------------
base=$work/bookworm-minbase.tar
if [ ! -f "$base" ]; then
  mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk '$2=="bookworm"{print $1; exit}')
  [ -n "$mirror" ] || { echo "test-debs: no bookworm mirror in apt's sources" >&2; exit 2; }
  rm -rf "$work/base"
  debootstrap --variant=minbase --include=systemd,init-system-helpers bookworm "$work/base" "$mirror"
  tar -C "$work/base" -cf "$base.tmp" .
  mv "$base.tmp" "$base"
  rm -rf "$work/base"
fi
root=$work/root
cleanup() {
  umount "$root/dev" 2>/dev/null || true
  umount "$root/proc" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$root"
mkdir -p "$root"
tar -C "$root" -xf "$base"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
# The maintainer scripts' "systemd is running" branches, and a policy-rc.d that records every
# action asked of deb-systemd-invoke and denies it.
mkdir -p "$root/run/systemd/system"
cat >"$root/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
echo "$*" >>/var/log/policy-rc.d.log
exit 101
EOF
chmod 755 "$root/usr/sbin/policy-rc.d"
cp "$v1" "$v2" "$root/tmp/"
# apt resolves the package's dependencies that minbase lacks (procps) from the mirror.
chroot "$root" apt-get update -qq
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  DEBIAN_FRONTEND=noninteractive "$@"; }
apt_in_root() { in_root apt-get -y -o Dpkg::Options::=--force-confdef \
  -o Dpkg::Options::=--force-confold "$@" </dev/null >>"$work/apt.log" 2>&1; }
actions() { cat "$root/var/log/policy-rc.d.log" 2>/dev/null || true; }
: >"$work/apt.log"
etc=$root/etc/teledge

# 1. A fresh install: the user, the files, the unit enabled, nothing started.
check "install $version-1" apt_in_root install "/tmp/$(basename "$v1")"
check "status is installed" sh -c \
  "chroot '$root' dpkg-query -W -f='\${Status} \${Version}' teledge | grep -qx 'install ok installed ${version}-1'"
user=$(in_root getent passwd teledge || true)
check "user teledge exists, a system user" sh -c "[ \"\$(echo '$user' | cut -d: -f3)\" -lt 1000 ]"
check "its home is /var/lib/teledge, no login shell" \
  test "$(echo "$user" | cut -d: -f6-)" = "/var/lib/teledge:/usr/sbin/nologin"
check "it is in group dialout (serial sensors)" sh -c "chroot '$root' id -nG teledge | grep -qw dialout"
# (stat in the root: the host's user database does not know teledge's uid)
check "/var/lib/teledge is 0700 teledge:teledge" \
  test "$(chroot "$root" stat -c '%a %U:%G' /var/lib/teledge)" = "700 teledge:teledge"
check "/usr/bin/teledge is 0755 root:root" \
  test "$(chroot "$root" stat -c '%a %U:%G' /usr/bin/teledge)" = "755 root:root"
check "teledge --version runs on Debian 12" test "$(in_root teledge --version)" = "teledge $version"
check "no test tools installed" sh -c "! ls '$root'/usr/bin/teledge-* 2>/dev/null"
check "the example configuration is a conffile" sh -c \
  "chroot '$root' dpkg-query -W -f='\${Conffiles}' teledge | grep -q '/etc/teledge/teledge.example.toml'"
check "no /etc/teledge/teledge.toml is shipped" test ! -e "$etc/teledge.toml"
check "sensor profiles installed" test -f "$root/usr/share/teledge/firmware-config/xy-md02.toml"
check "man page installed" test -f "$root/usr/share/man/man1/teledge.1.gz"
check "the unit is enabled" test "$(readlink "$root/etc/systemd/system/multi-user.target.wants/teledge.service")" \
  = /lib/systemd/system/teledge.service -o \
  "$(readlink "$root/etc/systemd/system/multi-user.target.wants/teledge.service")" = /usr/lib/systemd/system/teledge.service
check "the fleet update path unit is enabled" \
  test -L "$root/etc/systemd/system/multi-user.target.wants/teledge-update.path"
check "the fleet installer service is not enabled" \
  test ! -e "$root/etc/systemd/system/multi-user.target.wants/teledge-update.service"
check "nothing was started" sh -c "! grep -qx 'teledge.service start' '$root/var/log/policy-rc.d.log' 2>/dev/null"
check "postinst says why it did not start" \
  grep -q "not started: /etc/teledge/teledge.toml does not exist" "$work/apt.log"
check "dpkg --verify finds every file intact (md5sums)" in_root dpkg --verify teledge
check "systemd-analyze verify accepts the installed unit" \
  chroot "$root" systemd-analyze verify /usr/lib/systemd/system/teledge.service

# 2. The administrator copies the example (not filled in yet) and notes something in the
#    example; a reinstall keeps the note and starts nothing (check-config refuses the copy).
cp "$etc/teledge.example.toml" "$etc/teledge.toml"
echo "# site note: edited by the administrator" >>"$etc/teledge.example.toml"
: >"$work/apt.log"
check "reinstall $version-1" apt_in_root install --reinstall "/tmp/$(basename "$v1")"
check "the edited conffile is kept by a reinstall" grep -q "site note" "$etc/teledge.example.toml"
check "postinst reports the configuration check-config refuses" \
  grep -q "does not pass 'teledge check-config'" "$work/apt.log"
check "check-config's own problems are shown" grep -q "problem(s); nothing started" "$work/apt.log"
check "nothing was started" sh -c "! grep -qx 'teledge.service start' '$root/var/log/policy-rc.d.log' 2>/dev/null"

# 3. Provisioned: keys and certificates, a valid configuration (the spool key through the
#    credential, as in the example). The upgrade to -2 keeps the edited example (the new one
#    lands beside it as .dpkg-dist), leaves teledge.toml alone, and asks for a start.
p=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$p/ca.key" \
  -out "$etc/ca.pem" -days 30 -subj /CN=teledge-test-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$etc/node.key" \
  -out "$p/node.csr" -subj /CN=edge-01 2>/dev/null
printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' >"$p/ext"
openssl x509 -req -in "$p/node.csr" -CA "$etc/ca.pem" -CAkey "$p/ca.key" -CAcreateserial \
  -days 30 -out "$etc/node.pem" -extfile "$p/ext" 2>/dev/null
rm -rf "$p"
openssl rand -hex 32 >"$etc/spool.key"
openssl rand -hex 32 >"$etc/site.key"
chmod 0600 "$etc/spool.key"
in_root chgrp teledge /etc/teledge/site.key /etc/teledge/node.key /etc/teledge/node.pem /etc/teledge/ca.pem
chmod 0640 "$etc/site.key" "$etc/node.key" "$etc/node.pem" "$etc/ca.pem"
cat >"$etc/teledge.toml" <<'EOF'
# Provisioned by scripts/test-debs.sh.
[node]
id = "edge-01"

[hep]
udp = "127.0.0.1:9060"

[privacy]
mode = "keyed_hash"
site_key_file = "/etc/teledge/site.key"

[spool]
dir = "/var/lib/teledge/spool"
key_credential = "spool-key"
key_id = 1

[uplink]
url = "https://collector.example.net:8443/v1/batches"
ca_file = "/etc/teledge/ca.pem"
cert_file = "/etc/teledge/node.pem"
key_file = "/etc/teledge/node.key"
EOF
config_sum=$(sha256sum <"$etc/teledge.toml")
: >"$root/var/log/policy-rc.d.log"
: >"$work/apt.log"
check "upgrade to $version-2 (unattended: --force-confdef --force-confold)" \
  apt_in_root install "/tmp/$(basename "$v2")"
check "status is installed, version $version-2" sh -c \
  "chroot '$root' dpkg-query -W -f='\${Status} \${Version}' teledge | grep -qx 'install ok installed ${version}-2'"
check "the edited example survives the upgrade" grep -q "site note" "$etc/teledge.example.toml"
check "the new example is beside it as .dpkg-dist" \
  grep -q "added in ${version}-2" "$etc/teledge.example.toml.dpkg-dist"
check "teledge.toml is untouched" test "$(sha256sum <"$etc/teledge.toml")" = "$config_sum"
check "postinst's check-config (as teledge, with the credential) accepts it" \
  grep -q "teledge.toml: valid" "$work/apt.log"
check "the configured service was asked to start" grep -qx "teledge.service start" "$root/var/log/policy-rc.d.log"

# 4. remove: data and configuration stay, the unit is masked, the service stopped.
in_root install -d -o teledge -g teledge -m 0700 /var/lib/teledge/spool
echo spooled >"$root/var/lib/teledge/spool/marker"
: >"$root/var/log/policy-rc.d.log"
check "remove" apt_in_root remove teledge
check "status is config-files" sh -c \
  "chroot '$root' dpkg-query -W -f='\${Status}' teledge | grep -qx 'deinstall ok config-files'"
check "the binary is gone" test ! -e "$root/usr/bin/teledge"
check "the spool stays" test -f "$root/var/lib/teledge/spool/marker"
check "the example conffile stays" test -f "$etc/teledge.example.toml"
check "teledge.toml and the keys stay" test -f "$etc/teledge.toml" -a -f "$etc/spool.key"
check "the unit is masked" test "$(readlink "$root/etc/systemd/system/teledge.service")" = /dev/null
check "the service was asked to stop" grep -qx "teledge.service stop" "$root/var/log/policy-rc.d.log"

# 5. purge: state and the package's configuration go; the administrator's files and the user stay.
# What the fleet installer's StateDirectory= holds (a kept previous package).
in_root install -d -m 0700 /var/lib/teledge-update
echo previous >"$root/var/lib/teledge-update/marker"
check "purge" apt_in_root purge teledge
check "/var/lib/teledge-update is gone" test ! -e "$root/var/lib/teledge-update"
check "teledge is unknown to dpkg" sh -c "! chroot '$root' dpkg-query -W -f='\${Status}' teledge 2>/dev/null | grep -q ok"
check "/var/lib/teledge is gone" test ! -e "$root/var/lib/teledge"
check "the example conffile is gone" test ! -e "$etc/teledge.example.toml"
check "its .dpkg-dist is gone" test ! -e "$etc/teledge.example.toml.dpkg-dist"
check "the unit is neither enabled nor masked" test ! -e "$root/etc/systemd/system/multi-user.target.wants/teledge.service" \
  -a ! -L "$root/etc/systemd/system/teledge.service"
check "the administrator's teledge.toml and keys stay" test -f "$etc/teledge.toml" -a -f "$etc/node.key"
check "the user stays (Debian keeps system users)" in_root getent passwd teledge

# 6. A box provisioned before the package: the first install starts the service. Its node
#    key is as `teledge enrol` leaves it when the group teledge does not exist yet (root's,
#    0600); postinst gives it to the group, or check-config (as teledge) could not read it.
chown 0:0 "$etc/node.key"
chmod 0600 "$etc/node.key"
: >"$root/var/log/policy-rc.d.log"
: >"$work/apt.log"
check "install $version-1 onto a provisioned configuration" apt_in_root install "/tmp/$(basename "$v1")"
check "postinst made the enrolled node.key 0640 root:teledge" \
  test "$(chroot "$root" stat -c '%a %U:%G' /etc/teledge/node.key)" = "640 root:teledge"
check "/var/lib/teledge is made again, 0700 teledge" \
  test "$(chroot "$root" stat -c '%a %U' /var/lib/teledge)" = "700 teledge"
check "the configured service was asked to start" grep -qx "teledge.service start" "$root/var/log/policy-rc.d.log"
check "purge again" apt_in_root purge teledge

echo "test-debs: apt's output is in $work/apt.log; the packages in $work/debs"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
