// fast_sink's text: times, JSON written as Python's json.dumps writes it, and SMTP syntax
// parsed as capture_sink.py parses it (its records must be byte-identical to capture_sink's).
#ifndef BENCHMARKS_SHAPING_FAST_SINK_TEXT_H_
#define BENCHMARKS_SHAPING_FAST_SINK_TEXT_H_

#include <time.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mta_bench {

inline constexpr int64_t kNsPerSecond = 1'000'000'000;

struct Param {
  std::string key;                   // upper case
  std::optional<std::string> value;  // nullopt: no "="
};
using Params = std::vector<Param>;

int64_t ClockNs(clockid_t clock);
double PySeconds(int64_t ns);
void AppendPyFloat(std::string* out, double v);
std::string IsoTime(double t);
void AppendInt(std::string* out, uint64_t v);
void AppendJsonString(std::string* out, std::string_view s);
void AppendJsonOptString(std::string* out, const std::optional<std::string>& s);
std::string_view Strip(std::string_view s);
std::string AsciiUpper(std::string_view s);
bool IEquals(std::string_view a, std::string_view b);
bool IsDigits(std::string_view s);
bool HasNonAscii(std::string_view s);
bool DigitsGreaterThan(std::string_view digits, uint64_t limit);
std::optional<std::pair<std::string_view, std::string_view>> SplitPath(std::string_view arg);
const Param* FindParam(const Params& params, std::string_view key);
std::optional<std::string> ParseParams(std::string_view text, Params* params);
void AppendJsonParams(std::string* out, const Params& params);

}  // namespace mta_bench

#endif  // BENCHMARKS_SHAPING_FAST_SINK_TEXT_H_
