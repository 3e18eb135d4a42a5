#include "autostart/manifest.hpp"

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "holdfast/digest.hpp"
#include "holdfast/error.hpp"

namespace holdfast::autostart {

namespace {
constexpr const char* kFormat = "holdfast-autostart/1";

const char* kind_name(Entry::Kind k) {
  switch (k) {
    case Entry::Kind::dir:
      return "dir";
    case Entry::Kind::symlink:
      return "symlink";
    case Entry::Kind::file:
      break;
  }
  return "file";
}
// Modes are written as octal text ("0644"), as people read them.
std::string octal_mode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

mode_t parse_mode(const std::string& text, const std::string& path) {
  char* end = nullptr;
  const unsigned long m = std::strtoul(text.c_str(), &end, 8);
  if (text.empty() || *end != '\0' || m > 07777) throw Error(path, "corrupt manifest", "mode " + text, exit_code::data);
  return static_cast<mode_t>(m);
}
}  // namespace

std::string content_digest(const std::string& content) {
  return digest_bytes(DigestAlg::sha256, content).to_string();
}

std::string Manifest::to_json() const {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["name"] = name;
  j["scope"] = std::string(to_string(scope));
  j["method"] = std::string(to_string(method));
  if (!unit.empty()) j["unit"] = unit;
  auto list = nlohmann::ordered_json::array();
  for (const auto& e : created) {
    nlohmann::ordered_json x;
    x["kind"] = kind_name(e.kind);
    x["path"] = e.path;
    if (e.kind != Entry::Kind::symlink) x["mode"] = octal_mode(e.mode);
    if (e.kind == Entry::Kind::file) x["digest"] = e.digest;
    if (e.kind == Entry::Kind::symlink) x["target"] = e.target;
    list.push_back(std::move(x));
  }
  j["created"] = std::move(list);
  if (crontab) {
    j["crontab"] = {{"existed", crontab_existed},
                    {"added_newline", crontab_added_newline},
                    {"digest", crontab_digest}};
  }
  if (linger_enabled) j["linger_enabled"] = true;
  return j.dump(2) + "\n";
}

Manifest Manifest::parse(const std::string& text, const std::string& path) {
  try {
    auto j = nlohmann::json::parse(text);
    if (j.value("format", "") != kFormat) {
      throw Error(path, "not an autostart manifest", "format is not " + std::string(kFormat), exit_code::data);
    }
    Manifest m;
    m.name = j.at("name").get<std::string>();
    const auto scope = j.at("scope").get<std::string>();
    if (scope != "user" && scope != "system") throw Error(path, "corrupt manifest", "scope " + scope, exit_code::data);
    m.scope = scope == "user" ? Scope::user : Scope::system;
    const auto method = j.at("method").get<std::string>();
    if (method != "systemd" && method != "cron") throw Error(path, "corrupt manifest", "method " + method, exit_code::data);
    m.method = method == "cron" ? Method::cron : Method::systemd;
    m.unit = j.value("unit", "");
    for (const auto& x : j.at("created")) {
      Entry e;
      const auto kind = x.at("kind").get<std::string>();
      e.path = x.at("path").get<std::string>();
      if (e.path.empty() || e.path.front() != '/' || e.path.find("/../") != std::string::npos ||
          e.path.ends_with("/..")) {
        throw Error(path, "corrupt manifest", "path " + e.path, exit_code::data);
      }
      if (kind == "dir") {
        e.kind = Entry::Kind::dir;
      } else if (kind == "file") {
        e.kind = Entry::Kind::file;
        e.digest = x.at("digest").get<std::string>();
      } else if (kind == "symlink") {
        e.kind = Entry::Kind::symlink;
        e.target = x.at("target").get<std::string>();
      } else {
        throw Error(path, "corrupt manifest", "kind " + kind, exit_code::data);
      }
      if (e.kind != Entry::Kind::symlink) e.mode = parse_mode(x.at("mode").get<std::string>(), path);
      m.created.push_back(std::move(e));
    }
    if (j.contains("crontab")) {
      const auto& c = j.at("crontab");
      m.crontab = true;
      m.crontab_existed = c.at("existed").get<bool>();
      m.crontab_added_newline = c.at("added_newline").get<bool>();
      m.crontab_digest = c.at("digest").get<std::string>();
    }
    m.linger_enabled = j.value("linger_enabled", false);
    return m;
  } catch (const nlohmann::json::exception& e) {
    throw Error(path, "corrupt manifest", e.what(), exit_code::data);
  }
}

bool Manifest::same_install(const Manifest& other) const {
  auto things = [](const Manifest& m) {
    std::vector<std::string> out;
    for (const auto& e : m.created) {
      if (e.kind == Entry::Kind::dir) continue;
      out.push_back(e.path + "\n" + e.digest + "\n" + e.target + "\n" + std::to_string(e.mode));
    }
    return out;
  };
  return name == other.name && scope == other.scope && method == other.method && unit == other.unit &&
         crontab == other.crontab && crontab_digest == other.crontab_digest && things(*this) == things(other);
}

}  // namespace holdfast::autostart
