#include "sys/mountinfo.hpp"

#include <charconv>
#include <sstream>

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

bool parse_unsigned(std::string_view s, unsigned& out) {
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && ptr == end;
}

}  // namespace

std::vector<MountEntry> parse_mountinfo(std::string_view text) {
  std::vector<MountEntry> out;
  std::istringstream in{std::string(text)};
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    MountEntry m;
    std::string parent, majmin, field;
    if (!(f >> m.id >> parent >> majmin >> m.root >> m.mount_point >> m.mount_options)) continue;
    while (f >> field && field != "-") {
    }
    f >> m.fstype >> m.source >> m.super_options;
    auto colon = majmin.find(':');
    if (colon == std::string::npos || !parse_unsigned(std::string_view(majmin).substr(0, colon), m.major) ||
        !parse_unsigned(std::string_view(majmin).substr(colon + 1), m.minor))
      continue;
    m.root = unescape(m.root);
    m.mount_point = unescape(m.mount_point);
    m.source = unescape(m.source);
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
