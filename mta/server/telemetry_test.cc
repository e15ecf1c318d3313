#include "mta/server/telemetry.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "mta/server/shard_telemetry.h"

namespace mta::server {
namespace {

TEST(EventTimeTest, UtcWithMilliseconds) {
  EXPECT_EQ(EventTime(absl::FromUnixMillis(1796423663123)), "2026-12-04T22:34:23.123Z");
  EXPECT_EQ(EventTime(absl::FromUnixMillis(1796423663007)), "2026-12-04T22:34:23.007Z");
  EXPECT_EQ(EventTime(absl::FromUnixMillis(1796423664000)), "2026-12-04T22:34:24.000Z");
  EXPECT_EQ(EventTime(absl::FromUnixMillis(-1)), "1969-12-31T23:59:59.999Z");
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(TelemetryTest, OutcomesAreCountedAndLogged) {
  std::string dir = std::string(getenv("TEST_TMPDIR")) + "/events";
  auto log = metrics::EventLog::Open({.directory = dir});
  ASSERT_TRUE(log.ok()) << log.status();
  Telemetry telemetry(/*top_destinations=*/1, log->get());
  ShardTelemetry shard(&telemetry, 0);

  queue::Envelope env;
  env.id = "01abc";
  env.sender = "s@a.example";
  env.stream = "tx";
  env.listener = "in";
  env.received_ms = 1796423663000;
  env.content_bytes = 2000;
  env.recipients.push_back({.address = "u@b.example"});
  env.recipients.push_back({.address = "v@c.example"});
  absl::Time now = absl::FromUnixMillis(1796423664500);
  shard.MessageReceived(env, "TLSv1.3", now);
  delivery::AttemptResult ok{.kind = delivery::AttemptResult::Kind::kDelivered,
                             .status = "2.0.0",
                             .diagnostic = "250 2.0.0 queued as X",
                             .remote_mta = "mx.b.example",
                             .code = 250,
                             .remote_ip = "192.0.2.1",
                             .source = "ip1",
                             .duration = absl::Milliseconds(20)};
  std::string pool = "p1", b = "b.example", c = "c.example";
  shard.OnOutcome({.envelope = env,
                   .recipient = 0,
                   .domain = b,
                   .outcome = delivery::Outcome::kDelivered,
                   .bounce_class = delivery::BounceClass::kNone,
                   .result = ok,
                   .attempt = 1,
                   .pool = pool,
                   .now = now});
  delivery::AttemptResult bad{.kind = delivery::AttemptResult::Kind::kBounced,
                              .status = "5.1.1",
                              .diagnostic = "550 5.1.1 no such user",
                              .code = 550,
                              .source = "ip1"};
  shard.OnOutcome({.envelope = env,
                   .recipient = 1,
                   .domain = c,
                   .outcome = delivery::Outcome::kBounced,
                   .bounce_class = delivery::BounceClass::kInvalidRecipient,
                   .result = bad,
                   .attempt = 2,
                   .pool = pool,
                   .now = now});
  std::string text = telemetry.Render(/*spool_bytes=*/123);
  EXPECT_NE(text.find("mta_messages_received_total{listener=\"in\",stream=\"tx\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("mta_recipients_delivered_total{stream=\"tx\",pool=\"p1\",source=\"ip1\","
                      "destination=\"b.example\"} 1\n"),
            std::string::npos)
      << text;
  // Only one destination keeps its label: the second folds into "other".
  EXPECT_NE(text.find("mta_recipients_bounced_total{stream=\"tx\",pool=\"p1\",source=\"ip1\","
                      "destination=\"other\",class=\"invalid_recipient\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("mta_smtp_replies_total{side=\"outbound\",class=\"5xx\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("mta_spool_bytes 123\n"), std::string::npos);
  EXPECT_NE(text.find("mta_events_total 3\n"), std::string::npos);

  (*log)->Flush();
  std::string events = ReadAll(dir + "/events.jsonl");
  EXPECT_NE(events.find("{\"time\":\"2026-12-04T22:34:24.500Z\",\"type\":\"reception\","
                        "\"id\":\"01abc\",\"sender\":\"s@a.example\",\"recipients\":"
                        "[\"u@b.example\",\"v@c.example\"],\"listener\":\"in\",\"stream\":\"tx\","
                        "\"client_ip\":\"\",\"tls\":\"TLSv1.3\",\"size\":2000}\n"),
            std::string::npos)
      << events;
  EXPECT_NE(events.find("\"type\":\"delivery\",\"id\":\"01abc\",\"sender\":\"s@a.example\","
                        "\"recipient\":\"u@b.example\",\"destination\":\"b.example\","
                        "\"stream\":\"tx\",\"pool\":\"p1\",\"source\":\"ip1\",\"mx_host\":"
                        "\"mx.b.example\",\"mx_ip\":\"192.0.2.1\",\"code\":250,\"enhanced\":"
                        "\"2.0.0\",\"text\":\"queued as X\",\"attempt\":1,\"size\":2000,"
                        "\"latency_s\":1.5,\"attempt_s\":0.02}\n"),
            std::string::npos)
      << events;
  EXPECT_NE(events.find("\"type\":\"bounce\",\"id\":\"01abc\",\"sender\":\"s@a.example\","
                        "\"recipient\":\"v@c.example\",\"destination\":\"c.example\""),
            std::string::npos);
  EXPECT_NE(events.find("\"code\":550,\"enhanced\":\"5.1.1\",\"text\":\"no such user\","
                        "\"class\":\"invalid_recipient\",\"attempt\":2"),
            std::string::npos)
      << events;
}

}  // namespace
}  // namespace mta::server
