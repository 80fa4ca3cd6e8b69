// snapshot.cc: the document is read only in the contract's version, and a document the front
// cannot read leaves it with no view (fail closed); staleness counts from the loaded document.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>

#include "contract.h"
#include "snapshot.h"

namespace gw {
namespace {

std::string document(int version, const std::string& extra_key = "h") {
  return R"({"version": )" + std::to_string(version) + R"(,
    "config": {"instance": "inst", "cache_ttl_s": 300, "queue_max": 8, "queue_wait_s": 2.0, "initial_limit": 16,
               "max_limit": 512, "default_timeout_s": 60, "refresh_s": 1.0, "eject_s": 1.0},
    "keys": {")" + extra_key + R"(": {"tenant_id": "t1", "tenant": "acme", "expires_at": null, "models": null, "rank": 0,
                      "triton_priority": 1, "rate": 0, "burst": 0, "daily": 0,
                      "tokens_per_minute": 4000, "max_tokens": 256}},
    "grants": {"t1": ["m"]}, "permitted": {"t1": ["a", "c"]},
    "routes": {"m": [{"node": "a", "address": "a:1", "version": "1", "tenant": null},
                     {"node": "b", "address": "b:1", "version": "1", "tenant": null},
                     {"node": "c", "address": "c:1", "version": "2", "tenant": "t1"},
                     {"node": "a", "address": "a:2", "version": "2", "tenant": null}]},
    "weights": {"m": {"1": 0, "2": 100}}, "priority_levels": {"m": 0},
    "cached_models": [], "semantic_models": [], "cache_tenants": [], "low_headroom": [],
    "generative": {"m": {"slots": 32, "context": 2048}}, "engine_full": [["a:1", "m"]]})";
}

class SnapshotFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/gatewayd-test-XXXXXX";
    dir_ = mkdtemp(pattern);
    path_ = dir_ + "/snapshot.json";
  }
  void TearDown() override {
    std::remove(path_.c_str());
    rmdir(dir_.c_str());
  }
  // Writes the file with a modification time of `written` (unix seconds).
  void write(const std::string& text, double written) {
    std::ofstream(path_) << text;
    struct timeval times[2];
    times[0].tv_sec = times[1].tv_sec = static_cast<time_t>(written);
    times[0].tv_usec = times[1].tv_usec = static_cast<suseconds_t>((written - static_cast<time_t>(written)) * 1e6);
    utimes(path_.c_str(), times);
  }
  std::string dir_, path_;
};

}  // namespace

TEST(ParseSnapshot, ReadsTheContractsVersion) {
  auto s = parse_snapshot(document(contract::kSnapshotVersion));
  EXPECT_EQ(s->config.instance, "inst");
  EXPECT_EQ(s->keys.at("h").slug, "acme");
  EXPECT_EQ(s->keys.at("h").tokens_per_minute, 4000);
  EXPECT_EQ(s->keys.at("h").max_tokens, 256);
  EXPECT_EQ(s->generative.at("m").slots, 32);
  EXPECT_EQ(s->generative.at("m").context, 2048);
  EXPECT_EQ(s->engine_full.count({"a:1", "m"}), 1u);
  EXPECT_EQ(s->engine_full.count({"a:2", "m"}), 0u);
  EXPECT_TRUE(s->keys.at("h").any_model);
  EXPECT_EQ(s->routes.at("m").size(), 4u);
  EXPECT_EQ(s->routes.at("m")[2].tenant, "t1");
}

TEST(ParseSnapshot, RefusesAnyOtherVersionOrAMissingOne) {
  EXPECT_THROW(parse_snapshot(document(contract::kSnapshotVersion + 1)), std::exception);
  EXPECT_THROW(parse_snapshot(R"({"config": {}})"), std::exception);
  EXPECT_THROW(parse_snapshot("[1, 2]"), std::exception);
}

TEST_F(SnapshotFileTest, AnUnreadableDocumentLeavesNoViewRatherThanAnOldOne) {
  double now = 1000.0;
  SnapshotFile file(path_, [&now] { return now; });
  write(document(contract::kSnapshotVersion), 999.0);
  EXPECT_EQ(file.poll(), SnapshotFile::Poll::kLoaded);
  ASSERT_NE(file.current(), nullptr);
  EXPECT_EQ(file.refused_reason(), "");

  write(document(contract::kSnapshotVersion).substr(0, 80), 1000.0);  // half a document
  EXPECT_EQ(file.poll(), SnapshotFile::Poll::kRefused);
  EXPECT_EQ(file.current(), nullptr) << "a revoked key must not live on in the old view";
  EXPECT_NE(file.refused_reason(), "");

  write(document(contract::kSnapshotVersion + 1), 1001.0);  // a newer Python plane
  EXPECT_EQ(file.poll(), SnapshotFile::Poll::kRefused);
  EXPECT_NE(file.refused_reason().find("version"), std::string::npos);
  EXPECT_EQ(file.poll(), SnapshotFile::Poll::kUnchanged) << "the same refused file is not read again";
  EXPECT_EQ(file.refusals(), 2u);

  write(document(contract::kSnapshotVersion, "h2"), 1002.0);
  EXPECT_EQ(file.poll(), SnapshotFile::Poll::kLoaded);
  ASSERT_NE(file.current(), nullptr);
  EXPECT_EQ(file.current()->keys.count("h2"), 1u);
  EXPECT_EQ(file.refused_reason(), "");
}

TEST_F(SnapshotFileTest, StalenessCountsFromTheLastDocumentActuallyLoaded) {
  double now = 2000.0;
  SnapshotFile file(path_, [&now] { return now; });
  write(document(contract::kSnapshotVersion), 2000.0);
  ASSERT_EQ(file.poll(), SnapshotFile::Poll::kLoaded);
  const Snapshot& s = *file.current();
  EXPECT_DOUBLE_EQ(file.loaded_written(), 2000.0);
  now = 2004.0;
  EXPECT_FALSE(file.stale(s));
  // The file keeps changing but never loads again: the loaded view still ages.
  write("{", 2005.0);
  file.poll();
  EXPECT_DOUBLE_EQ(file.loaded_written(), 2000.0) << "what the metrics report is the view in use";
  now = 2006.0;
  EXPECT_TRUE(file.stale(s));
}

TEST(PermittedRoutes, DedicatedSlicesFirstThenResidency) {
  auto s = parse_snapshot(document(contract::kSnapshotVersion));
  const KeyEntry& key = s->keys.at("h");
  auto any = permitted_routes(*s, key, "m", "");
  ASSERT_EQ(any.size(), 1u);  // the tenant's own slice, and it only
  EXPECT_EQ(any[0].address, "c:1");
  auto v1 = permitted_routes(*s, key, "m", "1");
  ASSERT_EQ(v1.size(), 1u);  // no slice of version 1: shared replicas on permitted nodes (not b)
  EXPECT_EQ(v1[0].address, "a:1");
  EXPECT_TRUE(permitted_routes(*s, key, "absent", "").empty());
}

TEST(ChooseVersion, FollowsTheSplit) {
  auto s = parse_snapshot(document(contract::kSnapshotVersion));
  std::mt19937_64 rng(1);
  std::vector<Route> both = {s->routes.at("m")[0], s->routes.at("m")[3]};
  for (int i = 0; i < 50; ++i) {
    auto chosen = choose_version(*s, "m", both, rng);
    ASSERT_EQ(chosen.size(), 1u);
    EXPECT_EQ(chosen[0].version, "2");  // 0 % for version 1
  }
}

}  // namespace gw
