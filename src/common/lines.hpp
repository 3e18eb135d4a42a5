// Lines of a text, without a C++ stream: the first std::istringstream of a process builds the
// classic locale (~40,000 instructions), and `holdfast lock` splits mountinfo and the verdict file
// at every start (docs/PERFORMANCE.md, "The command").
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string_view>

namespace holdfast {

// The line of `text` that starts at `pos`, without its newline, as std::getline gives it; `pos`
// moves past it. nullopt at the end of the text (a final newline ends the last line, it does not
// start an empty one).
inline std::optional<std::string_view> next_line(std::string_view text, size_t& pos) {
  if (pos >= text.size()) return std::nullopt;
  const size_t end = std::min(text.find('\n', pos), text.size());
  const std::string_view line = text.substr(pos, end - pos);
  pos = end + 1;
  return line;
}

}  // namespace holdfast
