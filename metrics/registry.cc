#include "metrics/registry.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mta::metrics {
namespace {

constexpr char kSep = '\x1f';

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrCat(static_cast<int64_t>(v));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.15g", v);
  return buf;
}

// `{a="x",b="y"` without the closing brace, or "" without labels and extra.
std::string LabelText(const Family& family, absl::string_view values, absl::string_view extra) {
  std::string out;
  std::vector<absl::string_view> parts;
  if (!family.labels.empty()) parts = absl::StrSplit(values, kSep);
  for (size_t i = 0; i < family.labels.size(); ++i) {
    absl::StrAppend(&out, out.empty() ? "{" : ",", family.labels[i], "=\"",
                    EscapeLabelValue(i < parts.size() ? parts[i] : ""), "\"");
  }
  if (!extra.empty()) absl::StrAppend(&out, out.empty() ? "{" : ",", extra);
  return out;
}

std::string Series(const std::string& name, const std::string& labels) {
  return labels.empty() ? name : absl::StrCat(name, labels, "}");
}

// One family's series summed over writers, by label values.
struct Sum {
  double value = 0;
  std::vector<uint64_t> buckets;
};

}  // namespace

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> out;
  for (int i = 0; i < count; ++i, start *= factor) out.push_back(start);
  return out;
}

void Cell::Observe(double v, const std::vector<double>& bounds) {
  size_t i = std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin();
  counts_[i].store(counts_[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  Add(v);
}

Cell& Cells::Get(const Family& family, std::initializer_list<absl::string_view> values) {
  // The key is built in a reused buffer: no allocation once a series exists.
  key_.assign(reinterpret_cast<const char*>(&family.index), sizeof(family.index));
  bool first = true;
  for (absl::string_view v : values) {
    if (!first) key_.push_back(kSep);
    first = false;
    for (char c : v) key_.push_back(c == kSep ? ' ' : c);
  }
  // Only this thread inserts, so finding needs no lock.
  auto it = cells_.find(absl::string_view(key_));
  if (it != cells_.end()) return it->second;
  std::lock_guard<std::mutex> lock(mu_);
  return cells_.try_emplace(key_, family.buckets.size()).first->second;
}

absl::string_view LabelLimiter::Fold(absl::string_view value) {
  std::lock_guard<std::mutex> lock(mu_);
  if (admitted_.contains(value)) return value;
  if (admitted_.size() >= limit_) return "other";
  admitted_.emplace(std::string(value), true);
  return value;
}

const Family& Registry::Add(Family family) {
  std::lock_guard<std::mutex> lock(mu_);
  family.index = static_cast<uint32_t>(families_.size());
  families_.push_back(std::make_unique<Family>(std::move(family)));
  return *families_.back();
}

Cells* Registry::NewCells() {
  std::lock_guard<std::mutex> lock(mu_);
  cells_.push_back(std::make_unique<Cells>());
  return cells_.back().get();
}

std::string Registry::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  // Per family, per label values (sorted for a stable output).
  std::vector<std::map<std::string, Sum>> sums(families_.size());
  for (const auto& cells : cells_) {
    std::lock_guard<std::mutex> cells_lock(cells->mu_);
    for (const auto& [key, cell] : cells->cells_) {
      uint32_t index;
      std::memcpy(&index, key.data(), sizeof(index));
      if (index >= families_.size()) continue;
      Sum& sum = sums[index][key.substr(sizeof(index))];
      sum.value += cell.value();
      if (families_[index]->type != MetricType::kHistogram) continue;
      sum.buckets.resize(cell.buckets());
      for (size_t i = 0; i < cell.buckets(); ++i) sum.buckets[i] += cell.bucket(i);
    }
  }
  std::string out;
  for (const auto& family : families_) {
    const char* type = family->type == MetricType::kCounter ? "counter"
                       : family->type == MetricType::kGauge ? "gauge"
                                                            : "histogram";
    absl::StrAppend(&out, "# HELP ", family->name, " ", EscapeHelp(family->help), "\n# TYPE ",
                    family->name, " ", type, "\n");
    for (const auto& [values, sum] : sums[family->index]) {
      if (family->type != MetricType::kHistogram) {
        absl::StrAppend(&out, Series(family->name, LabelText(*family, values, "")), " ",
                        FormatValue(sum.value), "\n");
        continue;
      }
      uint64_t cumulative = 0;
      for (size_t i = 0; i < sum.buckets.size(); ++i) {
        cumulative += sum.buckets[i];
        std::string le = i < family->buckets.size() ? FormatValue(family->buckets[i]) : "+Inf";
        absl::StrAppend(&out,
                        Series(family->name + "_bucket",
                               LabelText(*family, values, absl::StrCat("le=\"", le, "\""))),
                        " ", cumulative, "\n");
      }
      std::string labels = LabelText(*family, values, "");
      absl::StrAppend(&out, Series(family->name + "_sum", labels), " ", FormatValue(sum.value),
                      "\n", Series(family->name + "_count", labels), " ", cumulative, "\n");
    }
  }
  return out;
}

std::string EscapeLabelValue(absl::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string EscapeHelp(absl::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace mta::metrics
