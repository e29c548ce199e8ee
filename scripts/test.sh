#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first (Debian packages), so it works
# on a fresh Debian machine with only Rust installed. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# tshark: the conformance tests compare teledge with TShark on generated captures.
# socat: the sensor tests join two pseudo-terminals with it (device simulator <-> teledge).
need=()
command -v tshark >/dev/null 2>&1 || need+=(tshark)
# dumpcap (wireshark-common, a dependency of tshark): the proxied-call test captures the
# loopback beside the daemon and replays the pcap single-threaded.
command -v dumpcap >/dev/null 2>&1 || need+=(wireshark-common)
command -v socat >/dev/null 2>&1 || need+=(socat)
# strace: a durability test reads the system calls of a real run (fsync after rename).
command -v strace >/dev/null 2>&1 || need+=(strace)
# iproute2: the live-capture tests run in network namespaces of their own.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# SIPp (sip-tester): the daemon test places real calls with RTP and captures them live.
command -v sipp >/dev/null 2>&1 && [ -f /usr/share/sip-tester/g711a.pcap ] || need+=(sip-tester)
# kamailio: the HEP tests send HEP out to Kamailio's sipcapture module (an independent
# decoder) and take HEP in from its siptrace module while it proxies SIPp calls.
[ -x /usr/sbin/kamailio ] || need+=(kamailio)
# systemd-analyze and systemd-sysusers: the observe tests check the unit and sysusers files.
[ -x /usr/bin/systemd-analyze ] && [ -x /usr/bin/systemd-sysusers ] || need+=(systemd)
# dpkg-dev, help2man, lintian: the packaging tests build the amd64 .deb and check it.
command -v dpkg-deb >/dev/null 2>&1 && command -v dpkg-architecture >/dev/null 2>&1 || need+=(dpkg-dev)
command -v help2man >/dev/null 2>&1 || need+=(help2man)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
# tzdata: the time-zone tests ([stats] time_zone, replay --tz) read the system's zone
# database (/usr/share/zoneinfo); the binary bundles none (the package depends on tzdata).
[ -d /usr/share/zoneinfo/Europe ] || need+=(tzdata)
# nats-server (2.9, with JetStream): the NATS tests (tests/it/nats.rs) run single servers and
# a 3-node cluster on loopback, and SIGKILL them.
[ -x /usr/sbin/nats-server ] || need+=(nats-server)
# python3 with venv: the fleet tests build TUF repositories with python-tuf (below).
command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1 \
  || need+=(python3 python3-venv)
# chromium, nodejs, npm: the status page and live listen tests drive Debian's Chromium
# with puppeteer-core (installed below from npm, pinned).
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "scripts/test.sh: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# cargo-deb (crates.io, pinned: the packaging tests and scripts/build-debs.sh use it).
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb 3.8.0" ]; then
  echo "scripts/test.sh: installing cargo-deb 3.8.0" >&2
  cargo install --locked --quiet cargo-deb --version 3.8.0
fi

# python-tuf from PyPI in a virtual environment of the repository's own (Debian's python
# refuses system-wide pip installs): tests/it/fleet.rs checks teledge's TUF client against
# metadata an independent implementation made (tests/tuf/make_repo.py).
venv=target/tuf-venv
if ! "$venv/bin/python" -c 'import tuf, securesystemslib, cryptography' >/dev/null 2>&1; then
  echo "scripts/test.sh: installing python-tuf into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'tuf==7.0.1' 'securesystemslib[crypto]==1.6.0'
fi

# puppeteer-core from npm (pinned; 24.x is the last line for Node 20), into target/: it
# drives the system's Chromium and downloads no browser (tests/browser/status_page.cjs).
puppeteer=target/puppeteer
if [ "$(node -p 'require("./'$puppeteer'/node_modules/puppeteer-core/package.json").version' 2>/dev/null)" != "24.43.1" ]; then
  echo "scripts/test.sh: installing puppeteer-core 24.43.1 into $puppeteer" >&2
  mkdir -p "$puppeteer"
  npm install --no-save --no-audit --no-fund --prefix "$puppeteer" puppeteer-core@24.43.1 >/dev/null
fi

cargo test --locked "$@"
