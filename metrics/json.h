// Appending JSON values to a string: the event log's hot path formats its lines by hand
// (a document library would build a tree per event and allocate for every field).
#ifndef METRICS_JSON_H_
#define METRICS_JSON_H_

#include <string>

#include "absl/strings/string_view.h"

namespace mta::metrics {

/**
 * Appends `s` as a JSON string (quotes included). Control characters are escaped; bytes
 * that are not valid UTF-8 become U+FFFD, so the output is always valid JSON.
 */
void AppendJsonString(std::string* out, absl::string_view s);

/**
 * Builds one JSON object field by field: {"a":"x","b":1}. Keys are written as given (use
 * plain ASCII names); values are escaped.
 */
class JsonObject {
 public:
  JsonObject() {
    out_.reserve(512);  // an event line, without regrowing
    out_.push_back('{');
  }
  JsonObject& Str(absl::string_view key, absl::string_view value);
  /** Like Str, but omits the field when `value` is empty. */
  JsonObject& StrIfSet(absl::string_view key, absl::string_view value);
  JsonObject& Int(absl::string_view key, int64_t value);
  JsonObject& Num(absl::string_view key, double value);
  JsonObject& Bool(absl::string_view key, bool value);
  /** `json` must already be a valid JSON value (an array, an object). */
  JsonObject& Raw(absl::string_view key, absl::string_view json);
  std::string Finish();  // the object; leaves this one empty

 private:
  void Key(absl::string_view key);
  std::string out_;
};

}  // namespace mta::metrics

#endif  // METRICS_JSON_H_
