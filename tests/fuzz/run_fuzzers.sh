#!/bin/bash
# Builds the libFuzzer targets with clang (ASan + UBSan) outside Bazel, whose toolchain is
# gcc, and runs each for SECONDS (default 60). Needs Debian's clang-14 and
# libclang-rt-14-dev. Crashes are written to ./crash-* and make the script fail.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH="${1:-60}"
OUT="${TMPDIR:-/tmp}/mtad-fuzz"
mkdir -p "$OUT"
ABSL=$(ls /usr/lib/x86_64-linux-gnu/libabsl_*.so | sed 's|.*/lib\(.*\)\.so|-l\1|')
FLAGS=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I.)
clang++-14 "${FLAGS[@]}" mta/smtp/session.cc mta/smtp/address.cc mta/smtp/command.cc \
  mta/smtp/data_framer.cc tests/fuzz/smtp_session_fuzz.cc -o "$OUT/smtp_session_fuzz" $ABSL
clang++-14 "${FLAGS[@]}" mta/smtp/client_session.cc mta/smtp/address.cc \
  tests/fuzz/smtp_client_fuzz.cc -o "$OUT/smtp_client_fuzz" $ABSL
for target in session client; do
  mkdir -p "$OUT/corpus-$target"
  cp tests/fuzz/corpus/$target/* "$OUT/corpus-$target/"
  "$OUT/smtp_${target}_fuzz" -max_total_time="$SECONDS_EACH" -max_len=4096 \
    "$OUT/corpus-$target"
done
