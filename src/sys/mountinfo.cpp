#include "sys/mountinfo.hpp"

#include <charconv>

#include "sys/file.hpp"

namespace holdfast::sys {

namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (size_t k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

template <typename Unsigned>
bool parse_unsigned(std::string_view s, Unsigned& out) {
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && ptr == end;
}

// The next whitespace-separated field of `line` from `pos` (as `>>` would read it); empty at
// the end.
std::string_view next_field(std::string_view line, size_t& pos) {
  auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; };
  while (pos < line.size() && blank(line[pos])) ++pos;
  const size_t start = pos;
  while (pos < line.size() && !blank(line[pos])) ++pos;
  return line.substr(start, pos - start);
}

}  // namespace

// Split by hand, not with istringstream: every `holdfast lock` with the `auto` backend parses
// this table once, and the stream version was a third of the command's instructions.
std::vector<MountEntry> parse_mountinfo(std::string_view text) {
  std::vector<MountEntry> out;
  size_t line_start = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = text.size();
    const std::string_view line = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    size_t pos = 0;
    MountEntry m;
    const std::string_view id = next_field(line, pos);
    const std::string_view parent = next_field(line, pos);
    const std::string_view majmin = next_field(line, pos);
    const std::string_view root = next_field(line, pos);
    const std::string_view mount_point = next_field(line, pos);
    const std::string_view options = next_field(line, pos);
    if (options.empty() || parent.empty() || !parse_unsigned(id, m.id)) continue;
    std::string_view field;
    do {
      field = next_field(line, pos);
    } while (!field.empty() && field != "-");
    m.fstype = std::string(next_field(line, pos));
    m.source = unescape(std::string(next_field(line, pos)));
    m.super_options = std::string(next_field(line, pos));
    auto colon = majmin.find(':');
    if (colon == std::string_view::npos || !parse_unsigned(majmin.substr(0, colon), m.major) ||
        !parse_unsigned(majmin.substr(colon + 1), m.minor))
      continue;
    m.root = unescape(std::string(root));
    m.mount_point = unescape(std::string(mount_point));
    m.mount_options = std::string(options);
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<MountEntry> read_mountinfo(const std::string& path) {
  auto text = read_file(path, size_t{16} << 20U);
  if (!text) return {};
  return parse_mountinfo(*text);
}

}  // namespace holdfast::sys
