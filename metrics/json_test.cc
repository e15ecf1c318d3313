#include "metrics/json.h"

#include "gtest/gtest.h"

namespace mta::metrics {
namespace {

std::string Json(absl::string_view s) {
  std::string out;
  AppendJsonString(&out, s);
  return out;
}

TEST(JsonTest, EscapesQuotesBackslashesAndControls) {
  EXPECT_EQ(Json("a\"b\\c\n\r\t\x01\x7f"), "\"a\\\"b\\\\c\\n\\r\\t\\u0001\\u007f\"");
}

TEST(JsonTest, KeepsValidUtf8AndReplacesInvalidBytes) {
  EXPECT_EQ(Json("j\xC3\xB6rg \xF0\x9F\x93\xA7"), "\"j\xC3\xB6rg \xF0\x9F\x93\xA7\"");
  EXPECT_EQ(Json("a\xFF"
                 "b"),
            "\"a\xEF\xBF\xBD"
            "b\"");
  EXPECT_EQ(Json("\xC0\xAF"), "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");                  // overlong '/'
  EXPECT_EQ(Json("\xED\xA0\x80"), "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");  // surrogate
  EXPECT_EQ(Json("\xE2\x82"), "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");                  // truncated
}

TEST(JsonTest, ObjectFields) {
  std::string s = JsonObject()
                      .Str("type", "delivery")
                      .StrIfSet("empty", "")
                      .Int("code", 250)
                      .Num("ms", 1.5)
                      .Bool("tls", true)
                      .Raw("rcpts", "[\"a\"]")
                      .Finish();
  EXPECT_EQ(s, "{\"type\":\"delivery\",\"code\":250,\"ms\":1.5,\"tls\":true,\"rcpts\":[\"a\"]}");
}

}  // namespace
}  // namespace mta::metrics
