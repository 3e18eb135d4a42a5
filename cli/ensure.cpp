// holdfast ensure: run exactly one instance of a command, started on demand, verified ready.
#include <grp.h>
#include <pwd.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "hand_over.hpp"
#include "duration.hpp"
#include "ensure_etcd.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"
#include "sys/linkage.hpp"

namespace holdfast::cli {

namespace {
struct EnsureArgs {
  std::string name;
  std::vector<std::string> command;
  std::string ready = "none";
  std::string ready_timeout = "30s";
  std::string log;
  std::string log_max;
  std::string state_dir;
  std::string chdir = "/";
  std::vector<std::string> env;
  std::string umask = "022";
  std::string user;
  std::string group;
  bool json = false;
  EtcdBackendArgs etcd;
};

// A user name or number -> uid, its primary gid and its supplementary groups.
struct UserInfo {
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;
};
UserInfo lookup_user(const std::string& text) {
  sys::require_dynamic_loader("the user database", "--user");
  passwd* pw = nullptr;
  char* end = nullptr;
  unsigned long num = std::strtoul(text.c_str(), &end, 10);
  pw = (!text.empty() && *end == '\0') ? ::getpwuid(static_cast<uid_t>(num)) : ::getpwnam(text.c_str());
  if (pw == nullptr) {
    if (!text.empty() && *end == '\0') return {static_cast<uid_t>(num), static_cast<gid_t>(num), {}};
    throw Error("--user", "unknown user", text, exit_code::usage);
  }
  std::vector<gid_t> groups(64);
  int n = static_cast<int>(groups.size());
  if (::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<size_t>(n));
    ::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n);
  }
  groups.resize(static_cast<size_t>(std::max(n, 0)));
  return {pw->pw_uid, pw->pw_gid, groups};
}

gid_t lookup_group(const std::string& text) {
  char* end = nullptr;
  unsigned long num = std::strtoul(text.c_str(), &end, 10);
  if (!text.empty() && *end == '\0') return static_cast<gid_t>(num);
  sys::require_dynamic_loader("the group database", "--group");
  group* gr = ::getgrnam(text.c_str());
  if (gr == nullptr) throw Error("--group", "unknown group", text, exit_code::usage);
  return gr->gr_gid;
}

uint64_t parse_size(const std::string& text) {
  char* end = nullptr;
  unsigned long long n = std::strtoull(text.c_str(), &end, 10);
  std::string unit(end);
  uint64_t scale = 1;
  if (unit == "K" || unit == "k" || unit == "KiB") scale = 1024;
  else if (unit == "M" || unit == "MiB") scale = 1024ULL * 1024;
  else if (unit == "G" || unit == "GiB") scale = 1024ULL * 1024 * 1024;
  else if (!unit.empty()) throw Error("--log-max", "invalid size", text + " (expected N, NK, NM or NG)", exit_code::usage);
  if (end == text.c_str() || n == 0) throw Error("--log-max", "invalid size", text, exit_code::usage);
  return n * scale;
}

DaemonSettings daemon_settings(const EnsureArgs& a) {
  DaemonSettings d;
  d.chdir = a.chdir;
  if (a.umask == "keep") {
    d.umask.reset();
  } else {
    char* end = nullptr;
    unsigned long m = std::strtoul(a.umask.c_str(), &end, 8);
    if (a.umask.empty() || *end != '\0' || m > 0777) {
      throw Error("--umask", "invalid value", a.umask + " (expected octal, e.g. 027, or keep)", exit_code::usage);
    }
    d.umask = static_cast<mode_t>(m);
  }
  if (!a.user.empty()) {
    auto u = lookup_user(a.user);
    d.uid = u.uid;
    d.gid = u.gid;
    d.groups = u.groups;
  }
  if (!a.group.empty()) {
    d.gid = lookup_group(a.group);
    if (a.user.empty()) d.groups = {*d.gid};
  }
  if (!a.log_max.empty()) d.log_max_bytes = parse_size(a.log_max);
  return d;
}
}  // namespace

Run add_ensure(CLI::App& root) {
  auto args = std::make_shared<EnsureArgs>();
  auto* sub = root.add_subcommand(
      "ensure",
      "Run exactly one instance of a command, started on demand: prints its pid once it is ready.\n"
      "Concurrent callers get the same instance; at most one starts it. A resident supervisor holds\n"
      "the instance lock for the instance's life. Exit codes: 0 ready (started or found), 1 it died\n"
      "before ready (log tail on stderr), 64 bad name or flags, 69 the state directory does not\n"
      "enforce locks, 75 not ready in time, 126/127 command not executable/not found.");
  sub->add_option("name", args->name, "Instance name: [A-Za-z0-9._-]{1,64}, not starting with '.'")->required();
  sub->add_option("command", args->command, "The command (after --) and its arguments")->required();
  sub->add_option("--ready", args->ready,
                  "How the instance reports readiness: none (at exec), notify (sd_notify READY=1 on\n"
                  "$NOTIFY_SOCKET), fd:N (a newline on fd N), tcp:HOST:PORT or unix:PATH (a listener\n"
                  "of the instance accepts connections), file:PATH (created or modified after this start)")
      ->capture_default_str();
  sub->add_option("--ready-timeout", args->ready_timeout, "How long to wait for readiness (500ms, 2s, 1m, inf)")
      ->capture_default_str();
  sub->add_option("--log", args->log, "Append the instance's stdout+stderr here (default STATE/NAME.log)");
  sub->add_option("--log-max", args->log_max, "Rotate the log to LOG.1 when it would exceed this size (e.g. 10M)");
  sub->add_option("--state-dir", args->state_dir,
                  "State directory (default $XDG_RUNTIME_DIR/holdfast, /run/holdfast for root, else /tmp/holdfast-UID)");
  sub->add_option("--chdir", args->chdir, "The daemon's working directory (\"\" keeps the caller's)")->capture_default_str();
  sub->add_option("--env", args->env, "KEY=VALUE added to the daemon's environment (repeatable)");
  sub->add_option("--umask", args->umask, "The daemon's umask (octal), or keep")->capture_default_str();
  sub->add_option("--user", args->user, "Run the daemon as this user (name or uid; needs privileges)");
  sub->add_option("--group", args->group, "Run the daemon with this group (name or gid)");
  sub->add_flag("--json", args->json, "Print the instance record as JSON");
  add_etcd_backend_flags(sub, args->etcd);
  return [args] {
    EnsureOptions options;
    options.ready = ReadySpec::parse(args->ready);
    if (!args->etcd.backend.empty()) hand_over_if_static("the etcd backend (libcurl)");
    if (!args->user.empty() || !args->group.empty()) hand_over_if_static("--user and --group (the name service)");
    if (options.ready.needs_name_service()) hand_over_if_static("--ready tcp:HOST (the name service)");
    auto timeout = parse_duration(args->ready_timeout, "--ready-timeout", Infinite::allowed);
    options.ready_timeout = timeout == kNoLimit ? std::chrono::milliseconds(std::chrono::hours(24 * 365 * 100))
                                                : std::chrono::ceil<std::chrono::milliseconds>(timeout);
    options.log_path = args->log;
    options.state_dir = args->state_dir;
    for (const auto& e : args->env) {
      if (e.find('=') == std::string::npos || e.front() == '=') {
        throw Error("--env", "invalid value", e + " (expected KEY=VALUE)", exit_code::usage);
      }
    }
    options.environment = args->env;
    options.daemon = daemon_settings(*args);
    if (!args->etcd.backend.empty()) return ensure_etcd(args->etcd, args->name, args->command, options, args->json);
    try {
      auto inst = ensure_running(args->name, args->command, options);
      if (args->json) {
        auto j = nlohmann::json::parse(inst.record.to_json());
        j["started"] = inst.started;
        j["waited_ms"] = std::chrono::duration<double, std::milli>(inst.waited).count();
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("%d\n", inst.pid);
      }
      return 0;
    } catch (const StartFailure& e) {
      std::fprintf(stderr, "holdfast ensure: %s\n", e.what());
      if (!e.log_tail().empty()) {
        std::fprintf(stderr, "--- last lines of the log ---\n%s\n", e.log_tail().c_str());
      }
      return e.exit_code();
    }
  };
}

}  // namespace holdfast::cli
