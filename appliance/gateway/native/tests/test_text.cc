// text.cc: contract templates filled in, numbers written as the Python plane writes them.
#include <gtest/gtest.h>

#include "text.h"

namespace gw {

TEST(Fill, ReplacesEveryNamedFieldAndLeavesUnknownOnes) {
  EXPECT_EQ(fill("model '{model}' v{version}", {{"model", "digits"}, {"version", "3"}}), "model 'digits' v3");
  EXPECT_EQ(fill("{a}{a}", {{"a", "x"}}), "xx");
  EXPECT_EQ(fill("keep {unknown} and {", {{"a", "x"}}), "keep {unknown} and {");
}

TEST(Number, WritesSixSignificantDigitsLikePercentG) {
  EXPECT_EQ(number(2.0), "2");
  EXPECT_EQ(number(0.25), "0.25");
  EXPECT_EQ(number(1e-05), "1e-05");
  EXPECT_EQ(number(1234567.0), "1.23457e+06");
}

TEST(Shortest, WritesWhatPythonsReprWrites) {
  EXPECT_EQ(shortest(0.0005), "0.0005");
  EXPECT_EQ(shortest(1.0), "1.0");
  EXPECT_EQ(shortest(10.0), "10.0");
  EXPECT_EQ(shortest(2.5), "2.5");
  EXPECT_EQ(shortest(0.1), "0.1");
  EXPECT_EQ(shortest(1e-05), "1e-05");
  EXPECT_EQ(shortest(1.5e16), "1.5e+16");
  EXPECT_EQ(shortest(1764000123.375), "1764000123.375");
  EXPECT_EQ(shortest(-0.001), "-0.001");
  EXPECT_EQ(shortest(0.30000000000000004), "0.30000000000000004");
  EXPECT_EQ(shortest(123456789012345.0), "123456789012345.0");
  EXPECT_EQ(shortest(0.0), "0.0");
}

}  // namespace gw
