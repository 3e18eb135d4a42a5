// Quoting for the two places a command line is written down: a systemd ExecStart= value and a
// crontab entry run by /bin/sh. Each is the exact inverse of the reader's parsing, checked by the
// tests against the real readers (systemd-analyze's parsed dump; sh through a fake cron).
#include <string>
#include <string_view>
#include <vector>

#include "autostart/autostart.hpp"
#include "holdfast/error.hpp"

namespace holdfast::autostart {

std::string_view to_string(Scope scope) noexcept { return scope == Scope::user ? "user" : "system"; }

std::string_view to_string(Method method) noexcept {
  switch (method) {
    case Method::systemd:
      return "systemd";
    case Method::cron:
      return "cron";
    case Method::automatic:
      break;
  }
  return "auto";
}

std::string systemd_exec_word(std::string_view arg) {
  // systemd splits ExecStart= with extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE): inside
  // double quotes, C escapes are decoded; then specifiers (%x) are expanded at load time and
  // variables ($X, ${X}) at exec time, "%%" and "$$" being their literal forms.
  if (arg == ";") return "\\;";
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (char c : arg) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '$' || c == '%') {
      out += c;
      out += c;
    } else if (byte < 0x20 || byte >= 0x7f) {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

std::string systemd_exec_line(const std::vector<std::string>& argv) {
  std::string line;
  for (const auto& arg : argv) {
    if (!line.empty()) line += ' ';
    line += systemd_exec_word(arg);
  }
  return line;
}

std::string cron_word(std::string_view arg) {
  // cron first turns each unescaped '%' into a newline (the rest becomes stdin) and "\%" into
  // '%'; then /bin/sh parses the line. A '%' is therefore written outside the single quotes as
  // "\%", which cron turns into a bare '%' that sh takes literally; the character before that
  // backslash is always a closing quote, so cron never sees "\\%".
  if (arg.find('\n') != std::string_view::npos) {
    throw Error(std::string(arg), "cannot be written in a crontab", "the argument contains a newline",
                exit_code::usage);
  }
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'') {
      out += "'\\''";
    } else if (c == '%') {
      out += "'\\%'";
    } else {
      out += c;
    }
  }
  out += '\'';
  return out;
}

std::string unit_name(std::string_view name) { return "holdfast-" + std::string(name) + ".service"; }

std::string cron_file_name(std::string_view name) {
  std::string out = "holdfast-";
  for (char c : name) {
    if (c == '_') {
      out += "_5f";
    } else if (c == '.') {
      out += "_2e";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace holdfast::autostart
