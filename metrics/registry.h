// Metric families, per-writer cells and the Prometheus text exposition (format 0.0.4).
//
// Written by hand: Debian ships prometheus-cpp only in later releases, and its cells are
// shared atomics contended by every thread; here each shard writes its own cells (plain
// relaxed stores, no read-modify-write across cores) and the scrape sums them.
#ifndef METRICS_REGISTRY_H_
#define METRICS_REGISTRY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/strings/string_view.h"

namespace mta::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

/** A metric family: name, help, type, label names and (histograms) bucket bounds. */
struct Family {
  std::string name;  // counters end in "_total"
  std::string help;
  MetricType type = MetricType::kCounter;
  std::vector<std::string> labels;
  std::vector<double> buckets;  // upper bounds, ascending, without +Inf
  uint32_t index = 0;           // set by Registry::Add
};

/** Exponential bucket bounds: start, start*factor, ... (count values). */
std::vector<double> ExponentialBuckets(double start, double factor, int count);

/**
 * One time series' value, written by one thread (its owner) and read by the scrape.
 * Single writer: updates are a relaxed load and store, never a locked instruction.
 */
class Cell {
 public:
  explicit Cell(size_t buckets) : counts_(buckets + 1) {}

  void Add(double v) { Store(value_, Load(value_) + v); }
  void Set(double v) { Store(value_, v); }
  /** Histograms: counts `v` in its bucket and adds it to the sum. */
  void Observe(double v, const std::vector<double>& bounds);

  double value() const { return Load(value_); }
  /** Histograms: per-bucket (not cumulative) counts, the last one for +Inf. */
  uint64_t bucket(size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  size_t buckets() const { return counts_.size(); }

 private:
  static double Load(const std::atomic<double>& a) { return a.load(std::memory_order_relaxed); }
  static void Store(std::atomic<double>& a, double v) { a.store(v, std::memory_order_relaxed); }

  std::atomic<double> value_{0};  // counter/gauge value, or histogram sum
  std::vector<std::atomic<uint64_t>> counts_;
};

class Registry;

/**
 * The cells one thread writes (one per shard, one per other writer). Cell() is for the
 * owning thread only; it takes the lock only to create a series, so the scrape never
 * holds a writer up on the hot path.
 */
class Cells {
 public:
  Cells() = default;
  Cells(const Cells&) = delete;
  Cells& operator=(const Cells&) = delete;

  /** The series `values` (one per label of `family`, in order) of `family`; stable. */
  Cell& Get(const Family& family, std::initializer_list<absl::string_view> values);
  Cell& Get(const Family& family) { return Get(family, {}); }

 private:
  friend class Registry;
  // Key: family index, then label values separated by '\x1f'.
  absl::node_hash_map<std::string, Cell> cells_;
  mutable std::mutex mu_;  // guards insertions against the scrape's iteration
  std::string key_;        // Get's scratch buffer
};

/**
 * Caps a label's distinct values: the first `limit` values seen keep their own series,
 * later ones read `other`. Admission is for the process's lifetime, so every series stays
 * monotonic (a ranking that changed per scrape would make counters jump back). Thread-safe.
 */
class LabelLimiter {
 public:
  explicit LabelLimiter(size_t limit) : limit_(limit) {}
  /** `value` if admitted (now or before), else "other". */
  absl::string_view Fold(absl::string_view value);

 private:
  const size_t limit_;
  std::mutex mu_;
  absl::flat_hash_map<std::string, bool> admitted_;
};

/** Families and the writers' cells; renders the exposition. Thread-safe. */
class Registry {
 public:
  /** Registers `family` (call before any writer uses it); returns it with its index. */
  const Family& Add(Family family);
  /** New cells for one writer thread; owned by the registry. */
  Cells* NewCells();
  /** Everything in the text format 0.0.4, series summed over writers, sorted. */
  std::string Render() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Family>> families_;
  std::vector<std::unique_ptr<Cells>> cells_;
};

/** Exposition escaping: label values (\\, \", \n) and HELP text (\\, \n). */
std::string EscapeLabelValue(absl::string_view s);
std::string EscapeHelp(absl::string_view s);

}  // namespace mta::metrics

#endif  // METRICS_REGISTRY_H_
