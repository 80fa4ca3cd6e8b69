// wire.cc: the few protobuf details of ModelInferRequest the front reads and writes.
#include <gtest/gtest.h>

#include "wire.h"

namespace gw {
namespace {

std::string field(uint32_t number, const std::string& payload) {
  std::string out;
  put_bytes_field(out, number, payload);
  return out;
}

}  // namespace

TEST(ModelOf, ReadsNameVersionAndIdAndDropsThemFromTheContent) {
  std::string raw = field(1, "digits") + field(2, "3") + field(3, "req-1") + field(8, "tensor");
  std::string name, version, id, content;
  ASSERT_TRUE(model_of(raw, name, version, &id, &content));
  EXPECT_EQ(name, "digits");
  EXPECT_EQ(version, "3");
  EXPECT_EQ(id, "req-1");
  EXPECT_EQ(content, field(1, "digits") + field(8, "tensor"));
}

TEST(ModelOf, TheLastVersionOnTheWireWins) {
  std::string raw = field(1, "m") + field(2, "1");
  put_bytes_field(raw, 2, "7");
  std::string name, version;
  ASSERT_TRUE(model_of(raw, name, version));
  EXPECT_EQ(version, "7");
}

TEST(ModelOf, RefusesWhatIsNotProtobuf) {
  std::string name, version;
  EXPECT_FALSE(model_of(field(1, "digits").substr(0, 4), name, version));  // truncated
  EXPECT_FALSE(model_of(std::string("\x0b", 1), name, version));         // a group
  EXPECT_FALSE(model_of(std::string("\x00", 1), name, version));         // field 0
  EXPECT_FALSE(model_of(std::string("\x09\x01\x02", 3), name, version));  // fixed64 cut short
}

TEST(Varint, EncodesLikeProtobuf) {
  std::string out;
  put_varint(out, 300);
  EXPECT_EQ(out, std::string("\xac\x02", 2));
}

TEST(Priority, AppendsTheParametersMapEntryTritonclientSends) {
  std::string out;
  put_priority(out, 2);
  // field 4 { key (1) "priority", value (2) InferParameter { uint64_param (5) 2 } }
  EXPECT_EQ(out, std::string("\x22\x0e\x0a\x08priority\x12\x02\x28\x02", 16));
}

TEST(Sha256, IsTheKnownDigest) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace gw
