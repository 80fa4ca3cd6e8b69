// The two clocks of the front: monotonic seconds (waits, ejection, limiter samples) and unix
// seconds (key expiry, snapshot age, statistics' buckets).
#pragma once

#include <chrono>

namespace gw {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}
inline double monotonic_now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }
inline double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace gw
