// counters.cc and refusals.cc: what the front exposes and answers reads as the contract says.
#include <gtest/gtest.h>

#include "contract.h"
#include "counters.h"
#include "refusals.h"
#include "stores.h"

namespace gw {

TEST(Exposition, NamesTheContractsMetricsAndTheSnapshotState) {
  Counters counters;
  counters.answered("acme", "digits", "OK", 0.004);
  counters.shed("digits", 2, "quota");
  std::string text = counters.exposition({{"a:1", {3, 12.5}}}, false, 4, 1764547200.25);
  EXPECT_NE(text.find("gateway_requests_total{plane=\"native\",tenant=\"acme\",model=\"digits\",status=\"OK\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("gateway_request_seconds_bucket{plane=\"native\",model=\"digits\",le=\"0.005\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("le=\"1.0\""), std::string::npos);
  EXPECT_NE(text.find("gateway_shed_total{plane=\"native\",model=\"digits\",priority=\"batch\",reason=\"quota\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("gateway_inflight{plane=\"native\",replica=\"a:1\"} 3"), std::string::npos);
  EXPECT_NE(text.find("gateway_native_snapshot_ok 0"), std::string::npos);
  EXPECT_NE(text.find("gateway_native_snapshot_refused_total 4"), std::string::npos);
  EXPECT_NE(text.find("gateway_native_snapshot_written_seconds 1764547200.25\n"), std::string::npos);
}

TEST(Refusals, CarryTheContractsStatusAndText) {
  auto refused = refuse(contract::refusal::kEvicted, {{"model", "digits"}, {"priority", "batch"}});
  EXPECT_EQ(status_name(refused.code), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(refused.code, 8);
  EXPECT_EQ(refused.text, "model 'digits' is overloaded: a batch request was shed for higher-priority traffic");
  ASSERT_NE(refusal_named("over_quota"), nullptr);
  EXPECT_EQ(refusal_named("over_quota")->text, contract::refusal::kOverQuota.text);
  EXPECT_EQ(refusal_named("nonsense"), nullptr);
}

TEST(Quotas, RefusalsNameTheLimitThatWasHit) {
  KeyEntry key;
  key.slug = "acme";
  key.rate = 5;
  key.daily = 7;
  EXPECT_EQ(quota_refusal(key, Verdict{false, 120, 1}).text,
            "tenant 'acme' is over its rate limit of 5 requests/s; retry in 120 ms");
  EXPECT_EQ(quota_refusal(key, Verdict{false, 1000, 2}).text, "tenant 'acme' used its daily quota of 7 requests");
}

TEST(CacheKey, IgnoresIdAndVersionAndScopesByTenantModelAndVersion) {
  std::string plain = std::string("\x0a\x01m", 3) + std::string("\x42\x01x", 3);
  std::string with_id = std::string("\x1a\x02id", 4) + plain + std::string("\x12\x01\x39", 3);
  std::string a, b, c;
  ASSERT_TRUE(cache_key("inst", "t1", "m", "3", plain, a));
  ASSERT_TRUE(cache_key("inst", "t1", "m", "3", with_id, b));
  ASSERT_TRUE(cache_key("inst", "t2", "m", "3", plain, c));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(a.rfind("inst:cache:t1:m:3:", 0), 0u);
}

TEST(RedisSpec, ReadsHostPortAndDatabase) {
  auto link = parse_redis("10.0.0.5:6380/2");
  EXPECT_EQ(link.host, "10.0.0.5");
  EXPECT_EQ(link.port, 6380);
  EXPECT_EQ(link.db, 2);
}

}  // namespace gw
