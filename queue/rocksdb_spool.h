// RocksDB implementation of the spool.
#ifndef QUEUE_ROCKSDB_SPOOL_H_
#define QUEUE_ROCKSDB_SPOOL_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "queue/spool.h"

namespace mta::queue {

struct RocksDbSpoolOptions {
  std::string path;  // directory; created if missing
  // Below this many free bytes on the spool's filesystem the spool reports unhealthy and
  // refuses commits. Default: 1 GiB.
  uint64_t min_free_bytes = 1ull << 30;
  // Most records in one fsynced WriteBatch. Default: 512.
  uint32_t max_batch_records = 512;
  // How often free space is checked and a failed spool is probed. Default: 1000 ms.
  uint32_t health_check_interval_ms = 1000;
};

/**
 * Column families: "envelopes" (id -> EncodeEnvelope), "messages" (id -> content, large
 * values in blob files) and "outcomes" ("<id>.<recipient index>" -> recipient state, so
 * shards record their recipients' results without rewriting the envelope). Keys start
 * with time-ordered queue ids.
 *
 * Crash semantics: a record whose Commit() callback got OK survives kill -9 and power
 * loss (WAL fsynced). A record whose callback did not run may or may not survive.
 */
absl::StatusOr<SpoolPtr> OpenRocksDbSpool(const RocksDbSpoolOptions& options);

}  // namespace mta::queue

#endif  // QUEUE_ROCKSDB_SPOOL_H_
