// Restart policy and backoff arithmetic (no system calls: unit-tested directly).
#include <algorithm>

#include "holdfast/error.hpp"
#include "holdfast/supervise.hpp"

namespace holdfast {

std::string_view to_string(RestartPolicy policy) noexcept {
  switch (policy) {
    case RestartPolicy::always: return "always";
    case RestartPolicy::on_failure: return "on-failure";
    case RestartPolicy::never: return "never";
  }
  return "always";
}

RestartPolicy parse_restart_policy(std::string_view text) {
  if (text == "always") return RestartPolicy::always;
  if (text == "on-failure" || text == "on_failure") return RestartPolicy::on_failure;
  if (text == "never" || text == "no") return RestartPolicy::never;
  throw Error("--restart", "invalid value", std::string(text) + " (expected always, on-failure or never)",
              exit_code::usage);
}

std::chrono::milliseconds Backoff::base(uint64_t failures) const noexcept {
  // Computed in floating point and clamped, so a long run of failures never overflows. Multiplied
  // out rather than std::pow: the command links no libm (a shared library costs every start).
  const double lo = static_cast<double>(min.count());
  const double hi = static_cast<double>(std::max(max, min).count());
  const double f = std::max(factor, 1.0);
  double grown = lo;
  for (uint64_t i = 0, n = std::min<uint64_t>(failures, 1000); i < n && grown < hi; ++i) grown *= f;
  return std::chrono::milliseconds(static_cast<int64_t>(std::min(grown, hi)));
}

std::chrono::milliseconds Backoff::delay(uint64_t failures, double unit) const noexcept {
  const auto b = base(failures);
  if (!jitter) return b;
  // Up to a quarter less than the base, never below min: spreads a herd of supervisors restarted
  // together, and keeps consecutive delays non-decreasing (0.75 * factor * b >= b for factor >= 4/3).
  const double cut = static_cast<double>(b.count()) * 0.25 * std::clamp(unit, 0.0, 1.0);
  const auto d = std::chrono::milliseconds(b.count() - static_cast<int64_t>(cut));
  return std::max(d, std::min(min, b));
}

}  // namespace holdfast
