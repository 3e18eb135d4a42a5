// Hexadecimal for names and keys, without printf: `holdfast lock` builds several per start, and
// snprintf's first call maps pages of libc's printf machinery that nothing else on that path
// uses (docs/PERFORMANCE.md, "The command").
#pragma once

#include <charconv>
#include <cstdint>
#include <string>

namespace holdfast {

// `value` in lower-case hexadecimal, left-padded with zeros to `width` digits (printf "%0*x").
inline std::string hex(uint64_t value, int width = 0) {
  char digits[16];
  const auto end = std::to_chars(digits, digits + sizeof digits, value, 16).ptr;  // 16 digits always fit
  const auto length = static_cast<size_t>(end - digits);
  std::string out(width > static_cast<int>(length) ? static_cast<size_t>(width) - length : 0, '0');
  out.append(digits, length);
  return out;
}

}  // namespace holdfast
