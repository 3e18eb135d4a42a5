#include "duration.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fmt/format.h>
#include <string>

#include "holdfast/error.hpp"

namespace holdfast::cli {
namespace {

bool equals_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] - 'A' + 'a') : a[i];
    if (x != b[i]) return false;
  }
  return true;
}

// Nanoseconds per unit; 0 for an unknown unit.
double unit_scale(std::string_view unit) {
  if (unit.empty() || unit == "s") return 1e9;
  if (unit == "ns") return 1.0;
  if (unit == "us") return 1e3;
  if (unit == "ms") return 1e6;
  if (unit == "m") return 60e9;
  if (unit == "h") return 3600e9;
  if (unit == "d") return 86400e9;
  return 0;
}

[[noreturn]] void reject(std::string_view text, std::string_view flag, std::string_view why) {
  throw Error("", fmt::format("{} {}", flag, text), std::string(why), exit_code::usage);
}

}  // namespace

std::chrono::nanoseconds parse_duration(std::string_view text, std::string_view flag, Infinite infinite) {
  constexpr std::string_view kExpected = "not a duration (e.g. 500ms, 2s, 1.5m, 1h; a bare number is seconds)";
  if (equals_ignoring_case(text, "inf") || equals_ignoring_case(text, "infinity")) {
    if (infinite == Infinite::allowed) return kNoLimit;
    reject(text, flag, "must be finite");
  }
  // strtod would also accept hex floats, "nan" and leading blanks: allow digits and one dot only.
  size_t digits_end = 0;
  bool seen_digit = false;
  bool seen_dot = false;
  while (digits_end < text.size()) {
    char c = text[digits_end];
    if (c >= '0' && c <= '9') {
      seen_digit = true;
    } else if (c == '.' && !seen_dot) {
      seen_dot = true;
    } else {
      break;
    }
    ++digits_end;
  }
  if (!seen_digit) reject(text, flag, kExpected);
  double scale = unit_scale(text.substr(digits_end));
  if (scale == 0) reject(text, flag, kExpected);
  std::string number(text.substr(0, digits_end));
  errno = 0;
  double value = std::strtod(number.c_str(), nullptr);
  double ns = value * scale;
  // 2^63 ns is ~292 years: more than any real deadline, so it means "no limit".
  if (errno == ERANGE || !std::isfinite(ns) || ns >= 9.2e18) {
    if (infinite == Infinite::allowed) return kNoLimit;
    reject(text, flag, "too large");
  }
  // Rounded half away from zero, as std::llround (ns >= 0 here), without libm: the command links
  // none (every shared library costs each start). The truncation and the remainder are exact.
  auto whole = static_cast<int64_t>(ns);
  if (ns - static_cast<double>(whole) >= 0.5) ++whole;
  return std::chrono::nanoseconds(whole);
}

std::chrono::steady_clock::time_point deadline_after(std::chrono::steady_clock::time_point now,
                                                     std::chrono::nanoseconds d) noexcept {
  using Clock = std::chrono::steady_clock;
  auto headroom = Clock::time_point::max() - now;
  if (d == kNoLimit || d >= headroom) return Clock::time_point::max();
  return now + std::chrono::duration_cast<Clock::duration>(d);
}

std::string format_duration(std::chrono::nanoseconds d) {
  if (d == kNoLimit) return "inf";
  if (d < std::chrono::seconds(1)) return fmt::format("{:g}ms", static_cast<double>(d.count()) / 1e6);
  return fmt::format("{:g}s", static_cast<double>(d.count()) / 1e9);
}

}  // namespace holdfast::cli
