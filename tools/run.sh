#!/bin/bash
# Sets up a fresh Debian 12 machine, builds mtad and runs it in the foreground on its
# embedded defaults (SMTP on 127.0.0.1:2525, spool in ./var/spool). Extra arguments go to
# mtad, e.g. tools/run.sh --config /etc/mtad.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh
bazel build //mta/server:mtad
exec bazel-bin/mta/server/mtad "$@"
