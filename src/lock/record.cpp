// Holder record serialisation: one line of JSON, padded with spaces when rewritten in place.
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
  }
  return "?";
}

std::string_view to_string(LockMode mode) noexcept {
  return mode == LockMode::exclusive ? "exclusive" : "shared";
}

std::optional<Backend> parse_backend(std::string_view name) noexcept {
  for (Backend b : {Backend::automatic, Backend::ofd, Backend::flock, Backend::excl, Backend::link}) {
    if (name == to_string(b)) return b;
  }
  if (name == "automatic") return Backend::automatic;
  return std::nullopt;
}

std::string HolderRecord::to_json() const {
  nlohmann::json procs = nlohmann::json::array();
  for (const auto& p : processes) {
    procs.push_back({{"pid", p.pid}, {"start_time", p.start_time}, {"boot_id", p.boot_id}, {"host", p.host}});
  }
  nlohmann::json j = {
      {"holdfast", 1},
      {"processes", procs},
      {"token", token},
      {"nonce", nonce},
      {"backend", std::string(to_string(backend))},
      {"mode", std::string(to_string(mode))},
      {"acquired_unix_ns", acquired_unix_ns},
      {"command", command},
  };
  if (lease_ms > 0) j["lease_ms"] = lease_ms;
  return j.dump() + "\n";
}

std::optional<HolderRecord> HolderRecord::parse(std::string_view text) {
  // Records rewritten in place are padded with trailing spaces; a torn or partial record fails
  // to parse and the caller treats the lock as held (fail closed).
  auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.value("holdfast", 0) != 1) return std::nullopt;
  try {
    HolderRecord r;
    for (const auto& p : j.at("processes")) {
      ProcessIdentity id;
      id.pid = p.at("pid").get<pid_t>();
      id.start_time = p.at("start_time").get<uint64_t>();
      id.boot_id = p.at("boot_id").get<std::string>();
      id.host = p.at("host").get<std::string>();
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

}  // namespace holdfast
