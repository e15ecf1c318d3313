// CaresResolver lifecycle: concurrent lookups, callback timing, destruction, options.

#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "dns/cares_resolver.h"
#include "dns/cares_resolver_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mta/base/net.h"
#include "mta/event/event_loop.h"

namespace mta::dns {
namespace {

TEST_F(CaresResolverNsdTest, ConcurrentLookupsAllGetTheAnswer) {
  std::vector<std::shared_ptr<Slot<MxOr>>> mx;
  std::vector<std::shared_ptr<Slot<AddressesOr>>> addresses;
  // Posted back to back, so most land in one loop pass and share one query.
  for (int i = 0; i < 20; ++i) {
    mx.push_back(StartMx("multi.example.test"));
    addresses.push_back(StartAddresses("both.example.test"));
    addresses.push_back(StartAddresses("nope.example.test"));
  }
  for (auto& slot : mx) {
    MxOr r = Await(slot);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->hosts.size(), 4u);
  }
  for (size_t i = 0; i < addresses.size(); ++i) {
    AddressesOr r = Await(addresses[i]);
    if (i % 2 == 0) {
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->size(), 3u);
    } else {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
    }
  }
}

TEST_F(CaresResolverNsdTest, CallbacksNeverRunInsideTheCall) {
  ASSERT_TRUE(Mx("multi.example.test").ok());  // cached from here on
  ASSERT_TRUE(Addresses("both.example.test").ok());
  auto ran = std::make_shared<int>(0);
  auto all_done = std::make_shared<absl::Notification>();
  RunOnLoop([&] {
    auto count = [ran, all_done] {
      if (++*ran == 4) all_done->Notify();
    };
    resolver_->ResolveMx("multi.example.test", [count](MxOr r) {
      EXPECT_TRUE(r.ok());
      count();
    });
    resolver_->ResolveAddresses("both.example.test", [count](AddressesOr r) {
      EXPECT_TRUE(r.ok());
      count();
    });
    resolver_->ResolveMx("bad..name", [count](MxOr r) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
      count();
    });
    resolver_->ResolveAddresses("", [count](AddressesOr r) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
      count();
    });
    EXPECT_EQ(*ran, 0);
  });
  EXPECT_TRUE(all_done->WaitForNotificationWithTimeout(kCallbackWait));
}

TEST_F(CaresResolverNsdTest, CallbackMayDestroyTheResolver) {
  ASSERT_TRUE(Mx("multi.example.test").ok());
  ASSERT_TRUE(Mx("nullmx.example.test").ok());
  auto first = std::make_shared<Slot<MxOr>>();
  auto second_ran = std::make_shared<bool>(false);
  RunOnLoop([&] {
    // Both are cache hits, delivered in the same pass; the first destroys the resolver.
    resolver_->ResolveMx("multi.example.test", [this, first](MxOr r) {
      resolver_.reset();
      first->value = std::move(r);
      first->done.Notify();
    });
    resolver_->ResolveMx("nullmx.example.test", [second_ran](MxOr) { *second_ran = true; });
  });
  EXPECT_TRUE(Await(first).ok());
  RunOnLoop([] {});  // a few more passes
  RunOnLoop([] {});
  EXPECT_FALSE(*second_ran);
}

TEST_F(CaresResolverTest, DestroyingWithQueriesInFlightDropsCallbacks) {
  int silent = BindLoopback(SOCK_DGRAM, 0, false);
  ASSERT_GE(silent, 0);
  absl::Cleanup close_silent = [silent] { close(silent); };
  CaresResolverOptions o;
  o.servers = {absl::StrCat("127.0.0.1:", LocalPort(silent))};
  o.query_timeout_ms = 3000;  // far longer than the few loop passes before the reset
  o.tries = 1;
  ASSERT_TRUE(CreateResolver(o).ok());
  absl::Time start = absl::Now();
  auto ran = std::make_shared<int>(0);
  auto token = std::make_shared<int>(0);  // captured by every callback
  RunOnLoop([&] {
    for (int i = 0; i < 5; ++i) {
      resolver_->ResolveMx(absl::StrCat("d", i, ".test"), [ran, token](MxOr) { ++*ran; });
      resolver_->ResolveAddresses(absl::StrCat("h", i, ".test"),
                                  [ran, token](AddressesOr) { ++*ran; });
    }
  });
  RunOnLoop([] {});  // the queries are on the wire, their polls armed
  RunOnLoop([this] { resolver_.reset(); });
  EXPECT_EQ(token.use_count(), 1) << "callbacks were not destroyed with the resolver";
  // Past every timeout the queries had: nothing may fire any more (c-ares' timer and the
  // polls are gone with the resolver).
  absl::SleepFor(start + absl::Milliseconds(3300) - absl::Now());
  RunOnLoop([] {});
  EXPECT_EQ(*ran, 0);
}

TEST_F(CaresResolverTest, CreateValidatesOptions) {
  auto create = [this](CaresResolverOptions o) {
    absl::StatusCode code = absl::StatusCode::kUnknown;
    RunOnLoop([&] { code = CaresResolver::Create(loop_.get(), o).status().code(); });
    return code;
  };
  EXPECT_EQ(create({.servers = {"not-an-ip:53"}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create({.servers = {"127.0.0.1:0"}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create({.servers = {"127.0.0.1:99999"}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create({.query_timeout_ms = 0}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create({.tries = 0}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create({.ttl_min = absl::Seconds(10), .ttl_max = absl::Seconds(5)}),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create({.ttl_min = absl::Seconds(-1)}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create({.servers = {"127.0.0.1", "::1", "[::1]:5353", "192.0.2.1:53"}}),
            absl::StatusCode::kOk);
  EXPECT_EQ(create({}), absl::StatusCode::kOk);  // /etc/resolv.conf
}

}  // namespace
}  // namespace mta::dns
