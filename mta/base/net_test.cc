#include "mta/base/net.h"

#include "gtest/gtest.h"

namespace mta {
namespace {

TEST(CidrTest, MatchesV4AndV6) {
  auto net = Cidr::Parse("127.0.0.0/8");
  ASSERT_TRUE(net.ok());
  EXPECT_TRUE(net->Contains(*IpAddress::Parse("127.1.2.3")));
  EXPECT_FALSE(net->Contains(*IpAddress::Parse("128.0.0.1")));
  auto v6 = Cidr::Parse("::1");
  ASSERT_TRUE(v6.ok());
  EXPECT_TRUE(v6->Contains(*IpAddress::Parse("::1")));
  EXPECT_FALSE(v6->Contains(*IpAddress::Parse("::2")));
  auto odd = Cidr::Parse("10.0.0.0/12");
  ASSERT_TRUE(odd.ok());
  EXPECT_TRUE(odd->Contains(*IpAddress::Parse("10.15.255.255")));
  EXPECT_FALSE(odd->Contains(*IpAddress::Parse("10.16.0.0")));
}

TEST(CidrTest, V4MappedIsNormalized) {
  auto net = Cidr::Parse("127.0.0.0/8");
  EXPECT_TRUE(net->Contains(*IpAddress::Parse("::ffff:127.0.0.1")));
}

TEST(CidrTest, RejectsBadInput) {
  EXPECT_FALSE(Cidr::Parse("127.0.0.0/33").ok());
  EXPECT_FALSE(Cidr::Parse("nonsense").ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/x").ok());
}

TEST(HostPortTest, Parses) {
  auto hp = HostPort::Parse("127.0.0.1:2525");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 2525);
  auto v6 = HostPort::Parse("[::1]:25");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_FALSE(HostPort::Parse("localhost:25").ok());
  EXPECT_FALSE(HostPort::Parse("127.0.0.1:99999").ok());
  EXPECT_FALSE(HostPort::Parse("127.0.0.1").ok());
}

}  // namespace
}  // namespace mta
