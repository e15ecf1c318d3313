#!/bin/bash
# Fails if code that runs on a shard's event loop uses a call that can block the loop
# (sync disk I/O, blocking DNS, sleeps, locks) or touches RocksDB directly. Blocking work
# belongs on queue/'s writer thread or a dedicated thread that posts back into the loop.
#
# usage: check_shard_code.sh FILE...   (Bazel passes the shard-side sources)
set -uo pipefail

BANNED='\b(fsync|fdatasync|sync_file_range|getaddrinfo|gethostbyname|sleep|usleep|nanosleep|sleep_for|sleep_until|std::mutex|std::condition_variable|system|popen)\s*\(|rocksdb/|std::mutex|fopen\s*\(|std::ifstream|std::ofstream'
status=0
for f in "$@"; do
  # Strip // comments so explanations may name the banned calls.
  if sed 's://.*$::' "$f" | grep -nE "$BANNED" >/tmp/lint.$$ 2>/dev/null; then
    while IFS= read -r line; do
      echo "$f:$line: blocking or banned call on a shard thread"
    done </tmp/lint.$$
    status=1
  fi
done
rm -f /tmp/lint.$$
if [ $status -eq 0 ]; then echo "checked $# files: no banned calls"; fi
exit $status
