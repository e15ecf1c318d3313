#!/bin/sh
# Runs one Python integration test against the binaries Bazel built for it.
# usage: run_py_test.sh MTAD SPOOL_DUMP TEST.py [MTACTL]
set -e
MTAD="$(pwd)/$1"
SPOOL_DUMP="$(pwd)/$2"
export MTAD SPOOL_DUMP
if [ -n "${4:-}" ]; then
  MTACTL="$(pwd)/$4"
  export MTACTL
fi
exec python3 -u "$3"
