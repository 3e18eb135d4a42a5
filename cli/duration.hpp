// One duration syntax for every holdfast flag that takes a time.
//
// Accepted: a non-negative decimal number with an optional unit — "ns", "us", "ms", "s", "m",
// "h", "d" — where a bare number means seconds ("0.5", "500ms", "2s", "1.5m", "1h"); and, where
// the flag allows it, "inf"/"infinity" (any case) for "no limit". Values too large to represent
// (more than ~292 years) are treated as no limit where allowed, and rejected otherwise; "nan",
// negative numbers, unknown units and trailing garbage are usage errors (exit 64) naming the flag.
#pragma once

#include <chrono>
#include <string_view>

namespace holdfast::cli {

// The value that means "no limit" (for deadlines: wait forever).
inline constexpr std::chrono::nanoseconds kNoLimit = std::chrono::nanoseconds::max();

enum class Infinite { rejected, allowed };

// Parses `text` for the option `flag` (used only in the error message). Throws holdfast::Error
// with exit_code::usage on anything that is not a duration as described above. With
// Infinite::allowed, "inf" and over-range values return kNoLimit; never returns a negative value.
std::chrono::nanoseconds parse_duration(std::string_view text, std::string_view flag,
                                        Infinite infinite = Infinite::rejected);

// `d` as a deadline after `now`, saturating: kNoLimit (or any sum that would overflow) gives
// time_point::max().
std::chrono::steady_clock::time_point deadline_after(std::chrono::steady_clock::time_point now,
                                                     std::chrono::nanoseconds d) noexcept;

// "1.5s", "250ms", "inf" — for messages.
std::string format_duration(std::chrono::nanoseconds d);

}  // namespace holdfast::cli
