// Internals of the configuration parser, shared by config.cc (the top level) and
// config_sections.cc (listeners, routes, shaping, streams, DKIM and bounce rules, and the
// value checks). Not for use elsewhere.
#ifndef MTA_SERVER_CONFIG_INTERNAL_H_
#define MTA_SERVER_CONFIG_INTERNAL_H_

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "mta/base/net.h"
#include "mta/base/status_macros.h"
#include "mta/server/config.h"
#include "yaml-cpp/yaml.h"

namespace mta::server::config_internal {

// Walks one YAML map, remembering which keys were read so unknown ones can be reported.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, absl::string_view source)
      : node_(node), path_(std::move(path)), source_(source) {}

  absl::Status Check() const {
    if (node_ && !node_.IsNull() && !node_.IsMap()) {
      return Error(node_, path_.empty() ? "must be a map" : absl::StrCat(path_, ": must be a map"));
    }
    return absl::OkStatus();
  }

  YAML::Node Get(const std::string& key) {
    seen_.insert(key);
    if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node& map = node_;  // const lookup: never inserts the key
    return map[key];
  }

  absl::Status String(const std::string& key, std::string* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    if (!n.IsScalar()) return Error(n, key, "must be a string");
    *out = n.Scalar();
    return absl::OkStatus();
  }

  absl::Status Bool(const std::string& key, bool* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    bool v;
    if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v))
      return Error(n, key, "must be true or false");
    *out = v;
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status Int(const std::string& key, uint64_t min, uint64_t max, T* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    uint64_t v;
    const std::string& s = n.IsScalar() ? n.Scalar() : "";
    if (!n.IsScalar() || s.empty() || s[0] == '-' || !YAML::convert<uint64_t>::decode(n, v)) {
      return Error(n, key, absl::StrCat("must be an integer in [", min, ", ", max, "]"));
    }
    if (v < min || v > max) {
      return Error(n, key, absl::StrCat("must be in [", min, ", ", max, "], got ", v));
    }
    *out = static_cast<T>(v);
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status SignedInt(const std::string& key, int64_t min, int64_t max, T* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    int64_t v;
    if (!n.IsScalar() || n.Scalar().empty() || !YAML::convert<int64_t>::decode(n, v)) {
      return Error(n, key, absl::StrCat("must be an integer in [", min, ", ", max, "]"));
    }
    if (v < min || v > max) {
      return Error(n, key, absl::StrCat("must be in [", min, ", ", max, "], got ", v));
    }
    *out = static_cast<T>(v);
    return absl::OkStatus();
  }

  absl::Status Double(const std::string& key, double* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    double v;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v)) {
      return Error(n, key, "must be a number");
    }
    *out = v;
    return absl::OkStatus();
  }

  absl::Status StringList(const std::string& key, std::vector<std::string>* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    if (!n.IsSequence()) return Error(n, key, "must be a list");
    out->clear();
    for (const YAML::Node& item : n) {
      if (!item.IsScalar()) return Error(item, key, "list items must be strings");
      out->push_back(item.Scalar());
    }
    return absl::OkStatus();
  }

  absl::Status Finish() const {
    if (!node_ || !node_.IsMap()) return absl::OkStatus();
    for (const auto& kv : node_) {
      std::string key = kv.first.Scalar();
      if (!seen_.contains(key)) return Error(kv.first, key, "unknown key");
    }
    return absl::OkStatus();
  }

  absl::Status Error(const YAML::Node& n, absl::string_view key, absl::string_view why) const {
    return Error(n, absl::StrCat(Path(key), ": ", why));
  }
  absl::Status Error(const YAML::Node& n, absl::string_view what) const {
    // A key that is absent has no position: point at its map instead (or at nothing).
    YAML::Mark m = n.IsDefined()       ? n.Mark()
                   : node_.IsDefined() ? node_.Mark()
                                       : YAML::Mark::null_mark();
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ":", m.line + 1, ":", m.column + 1, ": ", what));
  }
  /** An error about `key`'s value, positioned at the value (at the map if it is absent). */
  absl::Status ErrorAt(const std::string& key, absl::string_view why) const {
    YAML::Node n = node_;
    if (node_.IsDefined() && node_.IsMap()) {
      const YAML::Node& map = node_;
      if (YAML::Node child = map[key]; child.IsDefined()) n = child;
    }
    return Error(n, key, why);
  }

  /** The full path of `key` in this map, e.g. "shaping.rules[2].domain". */
  std::string Path(absl::string_view key) const {
    return path_.empty() ? std::string(key) : absl::StrCat(path_, ".", key);
  }
  absl::string_view source() const { return source_; }

 private:
  YAML::Node node_;
  std::string path_;
  absl::string_view source_;
  absl::flat_hash_set<std::string> seen_;
};

// Reads the optional list of maps at `key`: each item starts as `proto` and is filled by
// `parse(item_node, item_path, &item)`.
template <typename T, typename ParseItem>
absl::Status ReadMapList(MapReader& r, const std::string& key, std::vector<T>* out, ParseItem parse,
                         const T& proto = T()) {
  YAML::Node list = r.Get(key);
  if (!list) return absl::OkStatus();
  if (!list.IsSequence()) return r.Error(list, key, "must be a list");
  out->clear();
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    std::string path = absl::StrCat(r.Path(key), "[", i, "]");
    if (!item.IsMap()) return r.Error(item, absl::StrCat(path, ": must be a map"));
    T value = proto;
    MTA_RETURN_IF_ERROR(parse(item, path, &value));
    out->push_back(std::move(value));
  }
  return absl::OkStatus();
}

using NameSet = absl::flat_hash_set<std::string>;

inline constexpr char kOneDuration[] = "must be one duration such as 30s, 5m or 4h";

std::string Quoted(absl::string_view s);
bool IsOneDuration(const std::string& text);
bool IsMessageRate(absl::string_view text);
bool IsHeaderName(absl::string_view name);
bool IsEhloName(absl::string_view name);
bool IsStreamName(absl::string_view name);
std::string UnknownStream(absl::string_view name);
bool IsDnsName(absl::string_view name);
bool IsLoopback(const HostPort& hp);
absl::Status ParseListener(const YAML::Node& node, size_t index, absl::string_view source,
                           const NameSet& streams, ListenerConfig* l);
absl::Status ParseRoute(const YAML::Node& node, size_t index, absl::string_view source,
                        RouteConfig* r);
absl::Status ParseBackoff(const YAML::Node& node, const std::string& path, absl::string_view source,
                          BackoffConfig* b);
absl::Status ReadLimits(MapReader& r, ShapingLimitsConfig* l);
absl::Status CheckLimits(const MapReader& r, const ShapingLimitsConfig& l);
absl::Status ParseShapingRule(const YAML::Node& node, const std::string& path,
                              absl::string_view source, NameSet* names, ShapingRuleConfig* rule);
absl::Status ParseBounceRule(const YAML::Node& node, const std::string& path,
                             absl::string_view source, BounceRuleConfig* r);
absl::Status ParseDkimSigning(const YAML::Node& node, const std::string& path,
                              absl::string_view source, DkimSigningConfig* d);
absl::Status ParseStream(const YAML::Node& node, const std::string& path, absl::string_view source,
                         const NameSet& pools, NameSet* names, StreamConfig* st);

}  // namespace mta::server::config_internal

#endif  // MTA_SERVER_CONFIG_INTERNAL_H_
