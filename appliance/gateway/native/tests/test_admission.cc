// admission.cc: limits, the choice of replica, class shares, the queue and its shedding.
#include <gtest/gtest.h>

#include "admission.h"
#include "contract.h"

namespace gw {
namespace {

struct Recorder final : Ticket {
  std::string granted_to;
  int evicted_hint = -1;
  void granted(const Route& route) override { granted_to = route.address; }
  void evicted(int hint) override { evicted_hint = hint; }
};

Admission fixed(double* now) {
  return Admission([now] { return *now; }, [](size_t) { return std::make_pair<size_t, size_t>(0, 1); });
}

const std::vector<Route> kA = {Route{"node-a", "a:1", "1", ""}};

}  // namespace

TEST(Limiter, GrowsWithinToleranceAndHalvesOnOverload) {
  Limiter l;
  l.limit = 10;
  l.inflight = 8;
  for (int i = 0; i < 200; ++i) l.done(0.010, false, true, i * 0.01);
  EXPECT_GT(l.limit, 10);
  double grown = l.limit;
  for (int i = 0; i < 50; ++i) l.done(0.010, true, true, 10 + i * 0.01);
  EXPECT_LT(l.limit, grown / 2);
  EXPECT_GE(l.limit, contract::kLimitMin);
}

TEST(Limiter, DoesNotGrowWithoutHeadroom) {
  Limiter l;
  l.limit = 10;
  l.inflight = 9;
  for (int i = 0; i < 200; ++i) l.done(0.010, false, false, i * 0.01);
  EXPECT_LE(l.limit, 10);
}

TEST(Admission, ClassesShareALimitUnequally) {
  double now = 0;
  auto admission = fixed(&now);
  admission.configure(8, 10, 512);
  int batch = 0, critical = 0;
  while (admission.take("m", kA, 2)) ++batch;
  while (admission.take("m", kA, 0)) ++critical;
  EXPECT_EQ(batch, static_cast<int>(10 * contract::kShare[2]));
  EXPECT_EQ(batch + critical, 10);
}

TEST(Admission, AFullQueueShedsItsLowestClassFirst) {
  double now = 0;
  auto admission = fixed(&now);
  admission.configure(1, 1, 512);
  ASSERT_NE(admission.take("m", kA, 0), nullptr);
  Recorder low, high, same;
  uint64_t seq = 0;
  int hint = 0;
  Ticket* evicted = nullptr;
  EXPECT_EQ(admission.join(&low, "m", &kA, 2, seq, hint, evicted), Admission::Joined::kQueued);
  EXPECT_EQ(admission.join(&high, "m", &kA, 0, seq, hint, evicted), Admission::Joined::kQueued);
  EXPECT_EQ(evicted, &low);
  EXPECT_EQ(low.evicted_hint, hint);
  EXPECT_GE(hint, contract::kHintMinMs);
  EXPECT_EQ(admission.join(&same, "m", &kA, 0, seq, hint, evicted), Admission::Joined::kShed);
  auto granted = admission.release("m", kA[0], 0.005, false, true);
  ASSERT_EQ(granted.size(), 1u);
  EXPECT_EQ(granted[0], &high);
  EXPECT_EQ(high.granted_to, "a:1");
  EXPECT_EQ(admission.queued("m"), 0u);
}

TEST(Admission, NoQueueAtAllMeansShedAtOnce) {
  double now = 0;
  auto admission = fixed(&now);
  admission.configure(0, 1, 512);
  ASSERT_NE(admission.take("m", kA, 0), nullptr);
  Recorder r;
  uint64_t seq = 0;
  int hint = 0;
  Ticket* evicted = nullptr;
  EXPECT_EQ(admission.join(&r, "m", &kA, 0, seq, hint, evicted), Admission::Joined::kShed);
}

TEST(Admission, AnEjectedReplicaIsPassedOverWhileAnotherIsUp) {
  double now = 10;
  auto admission = fixed(&now);
  std::vector<Route> two = {Route{"node-a", "a:1", "1", ""}, Route{"node-b", "b:1", "1", ""}};
  admission.eject("m", "a:1", 1.0);
  for (int i = 0; i < 5; ++i) {
    const Route* r = admission.take("m", two, 0);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->address, "b:1");
    admission.release("m", *r, -1, false, true);
  }
  std::vector<Route> only_a = {two[0]};
  const Route* last = admission.take("m", only_a, 0);
  ASSERT_NE(last, nullptr) << "the last replica is tried rather than waited for";
  admission.release("m", *last, -1, false, true);
  now = 11.5;
  EXPECT_EQ(admission.take("m", two, 0)->address, "a:1") << "back after eject_s, and the less loaded";
}

TEST(Admission, LeavingTheQueueIsFinal) {
  double now = 0;
  auto admission = fixed(&now);
  admission.configure(4, 1, 512);
  ASSERT_NE(admission.take("m", kA, 0), nullptr);
  Recorder r;
  uint64_t seq = 0;
  int hint = 0;
  Ticket* evicted = nullptr;
  ASSERT_EQ(admission.join(&r, "m", &kA, 1, seq, hint, evicted), Admission::Joined::kQueued);
  EXPECT_TRUE(admission.leave(&r, "m", 1, seq));
  EXPECT_FALSE(admission.leave(&r, "m", 1, seq));
  EXPECT_TRUE(admission.release("m", kA[0], 0.001, false, true).empty());
}

}  // namespace gw

namespace gw {

// admission.py set_slots / engine_pressure: a generative replica takes its fixed stream slots
// (the critical class all of them), one while its engine last reported no room, and a new view
// keeps the pressure it carries.
TEST(Generative, FixedSlotsAndEnginePressure) {
  double now = 0;
  Admission a = fixed(&now);
  a.set_generative({{"llm", 4}}, {});
  int taken = 0;
  while (a.take("llm", kA, 0) != nullptr) ++taken;
  EXPECT_EQ(taken, 4);  // the slots, not the initial adaptive limit of 16
  for (int i = 0; i < 4; ++i) a.release("llm", kA[0], -1, false, true);
  EXPECT_EQ(a.limiters().at({"a:1", "llm"}).limit, 4);  // a stream teaches the limiter nothing

  a.set_generative({{"llm", 4}}, {{"a:1", "llm"}});  // the engine reported no room
  ASSERT_NE(a.take("llm", kA, 0), nullptr);          // one while nothing is in flight there
  EXPECT_EQ(a.take("llm", kA, 0), nullptr);
  a.release("llm", kA[0], -1, false, true);
  a.set_generative({{"llm", 4}}, {});  // room again
  taken = 0;
  while (a.take("llm", kA, 0) != nullptr) ++taken;
  EXPECT_EQ(taken, 4);

  // A replica first seen while pressed starts at one; other models keep adaptive limits.
  a.set_generative({{"llm", 4}}, {{"b:1", "llm"}});
  EXPECT_EQ(a.limiter("b:1", "llm").limit, 1);
  EXPECT_EQ(a.limiter("a:1", "digits").limit, 16);
}

}  // namespace gw
