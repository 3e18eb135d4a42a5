// Helpers shared by the ensure and supervise suites.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "holdfast/ensure.hpp"

namespace holdfast::testing {

// Stops each named instance in `state_dir` through its record (TERM, KILL after 1 s), waiting up
// to `timeout` for each; an instance that is not running, or a stop that fails, is passed over:
// a teardown has nobody to report to, and the test itself has already judged.
inline void stop_instances(const std::vector<std::string>& names, const std::string& state_dir,
                           std::chrono::milliseconds timeout) {
  for (const auto& name : names) {
    StopOptions s;
    s.state_dir = state_dir;
    s.timeout = timeout;
    s.kill_after = std::chrono::seconds(1);
    try {
      stop_instance(name, s);
    } catch (...) {  // NOLINT(bugprone-empty-catch): see above
    }
  }
}

// Rounds for a soak-style test: `full` under HOLDFAST_SOAK (make soak), else `normal` (make test
// stays affordable), a third of it in sanitizer builds (HOLDFAST_SANITIZED: several times slower).
inline int soak_rounds(int full, int normal) {
  if (std::getenv("HOLDFAST_SOAK") != nullptr) return full;
#ifdef HOLDFAST_SANITIZED
  return std::max(1, normal / 3);
#else
  return normal;
#endif
}

}  // namespace holdfast::testing
