#include "metrics/registry.h"

#include <thread>

#include "gtest/gtest.h"

namespace mta::metrics {
namespace {

TEST(RegistryTest, CountersSumOverWritersWithEscapedLabels) {
  Registry registry;
  const Family& f = registry.Add({.name = "mta_things_total",
                                  .help = "Things\\done\nhere.",
                                  .type = MetricType::kCounter,
                                  .labels = {"stream", "destination"}});
  Cells* a = registry.NewCells();
  Cells* b = registry.NewCells();
  a->Get(f, {"tx", "a\"b\\c\nd"}).Add(2);
  b->Get(f, {"tx", "a\"b\\c\nd"}).Add(3);
  b->Get(f, {"mkt", "x.example"}).Add(1);
  EXPECT_EQ(registry.Render(),
            "# HELP mta_things_total Things\\\\done\\nhere.\n"
            "# TYPE mta_things_total counter\n"
            "mta_things_total{stream=\"mkt\",destination=\"x.example\"} 1\n"
            "mta_things_total{stream=\"tx\",destination=\"a\\\"b\\\\c\\nd\"} 5\n");
}

TEST(RegistryTest, GaugesWithoutLabelsAndFractions) {
  Registry registry;
  const Family& f = registry.Add({.name = "mta_g", .help = "G.", .type = MetricType::kGauge});
  Cells* a = registry.NewCells();
  a->Get(f).Set(1.5);
  a->Get(f).Add(-0.25);
  EXPECT_EQ(registry.Render(), "# HELP mta_g G.\n# TYPE mta_g gauge\nmta_g 1.25\n");
}

TEST(RegistryTest, HistogramBucketsAreCumulativeWithInf) {
  Registry registry;
  const Family& f = registry.Add({.name = "mta_latency_seconds",
                                  .help = "L.",
                                  .type = MetricType::kHistogram,
                                  .labels = {"stream"},
                                  .buckets = {0.1, 1}});
  Cells* a = registry.NewCells();
  Cells* b = registry.NewCells();
  a->Get(f, {"tx"}).Observe(0.05, f.buckets);
  a->Get(f, {"tx"}).Observe(0.1, f.buckets);  // le is inclusive
  b->Get(f, {"tx"}).Observe(0.5, f.buckets);
  b->Get(f, {"tx"}).Observe(7, f.buckets);
  EXPECT_EQ(registry.Render(),
            "# HELP mta_latency_seconds L.\n# TYPE mta_latency_seconds histogram\n"
            "mta_latency_seconds_bucket{stream=\"tx\",le=\"0.1\"} 2\n"
            "mta_latency_seconds_bucket{stream=\"tx\",le=\"1\"} 3\n"
            "mta_latency_seconds_bucket{stream=\"tx\",le=\"+Inf\"} 4\n"
            "mta_latency_seconds_sum{stream=\"tx\"} 7.65\n"
            "mta_latency_seconds_count{stream=\"tx\"} 4\n");
}

TEST(RegistryTest, ScrapeWhileWritersCreateSeries) {
  Registry registry;
  const Family& f = registry.Add({.name = "mta_n_total", .help = "N.", .labels = {"k"}});
  std::vector<std::thread> writers;
  for (int t = 0; t < 2; ++t) {
    Cells* cells = registry.NewCells();
    writers.emplace_back([cells, &f] {
      for (int i = 0; i < 20000; ++i) cells->Get(f, {std::to_string(i % 500)}).Add(1);
    });
  }
  for (int i = 0; i < 50; ++i) registry.Render();
  for (auto& w : writers) w.join();
  std::string out = registry.Render();
  EXPECT_NE(out.find("mta_n_total{k=\"499\"} 80\n"), std::string::npos);
}

TEST(LabelLimiterTest, FirstValuesKeepTheirLabelOthersFold) {
  LabelLimiter limiter(2);
  EXPECT_EQ(limiter.Fold("a"), "a");
  EXPECT_EQ(limiter.Fold("b"), "b");
  EXPECT_EQ(limiter.Fold("c"), "other");
  EXPECT_EQ(limiter.Fold("a"), "a");
}

}  // namespace
}  // namespace mta::metrics
