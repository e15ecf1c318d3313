#!/bin/bash
# Installs every Debian 12 package mtad needs to build, test and benchmark.
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

PACKAGES=(
  # build
  bazel-bootstrap bazel-rules-java g++ clang-format
  liburing-dev librocksdb-dev libabsl-dev libyaml-cpp-dev libc-ares-dev
  android-libboringssl-dev nlohmann-json3-dev libmicrohttpd-dev libre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # tests and benchmarks: real SMTP peers and load tools, a real DNS server
  python3 swaks libnet-ssleay-perl postfix nsd openssl ca-certificates
  # metrics: promtool checks the exposition, a real Prometheus runs the dashboard's queries
  prometheus
  # independent DKIM verifiers for tests/integration/dkim_verify_test.py
  python3-dkim python3-dnspython opendkim-tools
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install_deps: installing ${missing[*]}"
# Postfix is only a load tool here (smtp-source, smtp-sink, and a benchmark baseline run
# from its own config directory): never let its package configure a system MTA.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# nsd is only a test fixture (each DNS test starts its own instance on a free loopback
# port): keep Debian's system instance from serving port 53 on a machine with systemd.
if [[ " ${missing[*]} " == *" nsd "* ]] && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now nsd.service >/dev/null 2>&1 || true
fi
# Likewise Prometheus: tests start their own server on a free port.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
