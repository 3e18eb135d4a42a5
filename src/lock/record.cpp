// Holder record serialisation: one line of JSON, padded with spaces when rewritten in place.
#include <charconv>
#include <nlohmann/json.hpp>

#include "holdfast/lock.hpp"

namespace holdfast {

std::string_view to_string(Backend backend) noexcept {
  switch (backend) {
    case Backend::automatic: return "auto";
    case Backend::ofd: return "ofd";
    case Backend::flock: return "flock";
    case Backend::excl: return "excl";
    case Backend::link: return "link";
    case Backend::shm: return "shm";
  }
  return "?";
}

std::string_view to_string(LockMode mode) noexcept {
  return mode == LockMode::exclusive ? "exclusive" : "shared";
}

std::optional<Backend> parse_backend(std::string_view name) noexcept {
  for (Backend b : {Backend::automatic, Backend::ofd, Backend::flock, Backend::excl, Backend::link, Backend::shm}) {
    if (name == to_string(b)) return b;
  }
  if (name == "automatic") return Backend::automatic;
  return std::nullopt;
}

namespace {

template <typename Int>
void append_int(std::string& out, Int value) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  out.append(buf, end);
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not valid UTF-8.
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return 0;
  }
  return len;
}

// A JSON string. Bytes that are not UTF-8 (argv may hold any bytes) become U+FFFD: a record must
// always be writable, and its command line is informative only.
void append_string(std::string& out, std::string_view s) {
  out.push_back('"');
  size_t run = 0;  // start of the pending run of bytes copied as they are
  auto flush = [&](size_t i) {
    out.append(s.data() + run, i - run);
  };
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      if (size_t len = utf8_sequence(s, i); len > 0) {
        i += len;
        continue;
      }
    }
    flush(i);
    if (c == '"' || c == '\\') {
      const char esc[] = {'\\', static_cast<char>(c)};
      out.append(esc, sizeof esc);
    } else if (c < 0x20) {
      static constexpr char kHex[] = "0123456789abcdef";
      const char esc[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
      out.append(esc, sizeof esc);
    } else {
      out.append("\xef\xbf\xbd");  // not UTF-8
    }
    run = ++i;
  }
  flush(s.size());
  out.push_back('"');
}

}  // namespace

// Written by hand rather than through a JSON tree: this runs on every grant, and building and
// dumping a tree cost ~50,000 instructions, ten times the syscalls of the grant itself.
std::string HolderRecord::to_json() const {
  std::string out;
  out.reserve(256 + 96 * processes.size() + 32 * command.size());
  out.append("{\"holdfast\":1,\"token\":");
  append_int(out, token);
  out.append(",\"nonce\":");
  append_int(out, nonce);
  out.append(",\"acquired_unix_ns\":");
  append_int(out, acquired_unix_ns);
  out.append(",\"backend\":\"");
  out.append(to_string(backend));
  out.append("\",\"mode\":\"");
  out.append(to_string(mode));
  out.push_back('"');
  if (lease_ms > 0) {
    out.append(",\"lease_ms\":");
    append_int(out, lease_ms);
  }
  out.append(",\"processes\":[");
  for (size_t i = 0; i < processes.size(); ++i) {
    const auto& p = processes[i];
    out.append(i == 0 ? "{\"pid\":" : ",{\"pid\":");
    append_int(out, p.pid);
    out.append(",\"start_time\":");
    append_int(out, p.start_time);
    out.append(",\"boot_id\":");
    append_string(out, p.boot_id);
    out.append(",\"host\":");
    append_string(out, p.host);
    if (p.pid_ns != 0) {
      out.append(",\"pid_ns\":");
      append_int(out, p.pid_ns);
    }
    if (p.time_ns != 0) {
      out.append(",\"time_ns\":");
      append_int(out, p.time_ns);
    }
    if (!p.machine_id.empty()) {
      out.append(",\"machine_id\":");
      append_string(out, p.machine_id);
    }
    out.push_back('}');
  }
  out.append("],\"command\":[");
  for (size_t i = 0; i < command.size(); ++i) {
    if (i > 0) out.push_back(',');
    append_string(out, command[i]);
  }
  out.append("]}\n");
  return out;
}

std::optional<HolderRecord> HolderRecord::parse(std::string_view text) {
  // Records rewritten in place are padded with trailing spaces; a torn or partial record fails
  // to parse and the caller treats the lock as held (fail closed). Every field is checked for its
  // type inside the try: a record of the wrong shape is "not a record", never an exception.
  auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  try {
    auto version = j.find("holdfast");
    if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != 1) return std::nullopt;
    HolderRecord r;
    for (const auto& p : j.at("processes")) {
      ProcessIdentity id;
      id.pid = p.at("pid").get<pid_t>();
      id.start_time = p.at("start_time").get<uint64_t>();
      id.boot_id = p.at("boot_id").get<std::string>();
      id.host = p.at("host").get<std::string>();
      id.pid_ns = p.value("pid_ns", uint64_t{0});
      id.time_ns = p.value("time_ns", uint64_t{0});
      id.machine_id = p.value("machine_id", std::string());  // absent in older records: unknown
      r.processes.push_back(std::move(id));
    }
    if (r.processes.empty()) return std::nullopt;
    r.token = j.at("token").get<uint64_t>();
    r.nonce = j.at("nonce").get<uint64_t>();
    auto backend = parse_backend(j.at("backend").get<std::string>());
    if (!backend) return std::nullopt;
    r.backend = *backend;
    r.mode = j.at("mode").get<std::string>() == "shared" ? LockMode::shared : LockMode::exclusive;
    r.acquired_unix_ns = j.at("acquired_unix_ns").get<int64_t>();
    r.command = j.at("command").get<std::vector<std::string>>();
    r.lease_ms = j.value("lease_ms", int64_t{0});
    return r;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::vector<std::string> cap_command(std::vector<std::string> command) {
  size_t total = 0;
  bool truncated = false;
  std::vector<std::string> out;
  for (auto& arg : command) {
    if (out.size() >= kRecordMaxArgs || total >= kRecordMaxCommandBytes) {
      truncated = true;
      break;
    }
    size_t room = std::min(kRecordMaxArgBytes, kRecordMaxCommandBytes - total);
    if (arg.size() > room) {
      // Cut on a UTF-8 boundary so the cut does not turn into a replacement character.
      size_t cut = room;
      while (cut > 0 && (static_cast<unsigned char>(arg[cut]) & 0xc0) == 0x80) --cut;
      arg.resize(cut);
      truncated = true;
    }
    total += arg.size();
    out.push_back(std::move(arg));
  }
  if (truncated) out.emplace_back(kRecordTruncatedMarker);
  return out;
}

}  // namespace holdfast
