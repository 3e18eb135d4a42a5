// holdfast holder: who holds a lock, judged without taking it.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.hpp"
#include "hand_over.hpp"
#include "holdfast/error.hpp"
#include "holdfast/etcd.hpp"
#include "holdfast/lock.hpp"
#include "lock_etcd.hpp"

namespace holdfast::cli {
namespace {

const char* state_name(HolderState s) {
  switch (s) {
    case HolderState::free: return "free";
    case HolderState::held: return "held";
    case HolderState::stale: return "stale";
  }
  return "?";
}

std::string join(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

int run_holder(const std::string& path, bool json) {
  HolderInfo info = inspect_holder(path);
  if (json) {
    nlohmann::json j{{"path", path},
                     {"state", state_name(info.state)},
                     {"reason", info.reason},
                     {"kernel_lock_held", info.kernel_lock_held},
                     {"kernel_locks", info.kernel_lock_kinds},
                     {"record_corrupt", info.record_corrupt}};
    if (info.record) j["record"] = nlohmann::json::parse(info.record->to_json());
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s: %s — %s\n", path.c_str(), state_name(info.state), info.reason.c_str());
    if (info.record) {
      const auto& r = *info.record;
      std::printf("  %s record:\n", info.state == HolderState::free ? "last" : "holder");
      std::printf("    backend  %s (%s)\n", std::string(to_string(r.backend)).c_str(), std::string(to_string(r.mode)).c_str());
      std::printf("    token    %llu\n", static_cast<unsigned long long>(r.token));
      for (const auto& p : r.processes) {
        std::printf("    process  pid %d, start %llu, host %s, boot %s\n", p.pid,
                    static_cast<unsigned long long>(p.start_time), p.host.c_str(), p.boot_id.c_str());
      }
      std::printf("    command  %s\n", join(r.command).c_str());
      time_t secs = static_cast<time_t>(r.acquired_unix_ns / 1000000000);
      char when[64] = "not recorded (grant_time none)";
      struct tm tm {};
      if (r.acquired_unix_ns != 0 && ::localtime_r(&secs, &tm) != nullptr) {
        std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S %z", &tm);
      }
      std::printf("    since    %s\n", when);
      if (r.lease_ms > 0) std::printf("    lease    %lld ms\n", static_cast<long long>(r.lease_ms));
    } else if (info.record_corrupt) {
      std::printf("  record: corrupt or incomplete\n");
    }
  }
  if (info.record_corrupt && info.state == HolderState::held && !info.kernel_lock_held) return exit_code::data;
  switch (info.state) {
    case HolderState::free: return 0;
    case HolderState::held: return 1;
    case HolderState::stale: return 2;
  }
  return exit_code::software;
}

// `holder --backend etcd://.../PREFIX NAME`: the oldest key of NAME's queue holds it
// (linearizable read), with its fencing token, lease and the holder's record (who and where).
int run_etcd_holder(const std::string& url, const EtcdFlags& flags, const std::string& name, bool json) {
  const EtcdOptions options = etcd_options_of(url, flags);
  const EtcdHolder h = inspect_etcd_holder(options, name);
  if (json) {
    std::printf("%s\n", etcd_holder_json(name, h).c_str());
    return h.held ? 1 : 0;
  }
  nlohmann::json record = nlohmann::json::parse(h.record, nullptr, false);
  if (!h.held) {
    std::printf("%s: free — no key under %s/%s/\n", name.c_str(), options.prefix.c_str(), name.c_str());
    return 0;
  }
  std::printf("%s: held — key %s\n", name.c_str(), h.key.c_str());
  std::printf("    token    %llu\n", static_cast<unsigned long long>(h.token));
  std::printf("    lease    %s (%lld s left)\n", fmt::format("{:x}", h.lease_id).c_str(), static_cast<long long>(h.ttl_remaining));
  std::printf("    waiters  %zu\n", h.waiters);
  if (!record.is_discarded() && record.is_object()) {
    for (const auto& p : record.value("processes", nlohmann::json::array())) {
      std::printf("    process  pid %d, start %llu, host %s, boot %s\n", p.value("pid", 0),
                  static_cast<unsigned long long>(p.value("start_time", uint64_t{0})), p.value("host", "").c_str(),
                  p.value("boot_id", "").c_str());
    }
    std::vector<std::string> command = record.value("command", std::vector<std::string>{});
    std::printf("    command  %s\n", join(command).c_str());
  } else {
    std::printf("    value    %s\n", h.record.c_str());  // e.g. an etcdctl lock's empty value
  }
  return 1;
}

}  // namespace

Run add_holder(CLI::App& root) {
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto backend = std::make_shared<std::string>();
  auto etcd = std::make_shared<EtcdFlags>();
  auto* cmd = root.add_subcommand("holder", "Show who holds a lock, without taking it");
  cmd->add_option("path", *path, "Lock file (with --backend etcd://...: the lock's name)")->required();
  cmd->add_flag("--json", *json, "One JSON object on stdout");
  cmd->add_option("--backend", *backend, "etcd://HOST:PORT[,HOST:PORT...]/PREFIX: a lock held in etcd (docs/ETCD.md)");
  cmd->add_option("--cacert", etcd->cacert, "etcd: CA to verify the members (TLS)");
  cmd->add_option("--cert", etcd->cert, "etcd: client certificate");
  cmd->add_option("--key", etcd->key, "etcd: client key");
  cmd->add_option("--user", etcd->user, "etcd: NAME[:PASSWORD] (else $HOLDFAST_ETCD_PASSWORD)");
  cmd->footer("Exit codes: 0 free, 1 held, 2 stale (dotlock holder proven dead), 65 record corrupt and\n"
              "no kernel lock on the file (treated as held), 66 missing directory, 77 permission denied.");
  return [path, json, backend, etcd] {
    if (is_etcd_url(*backend)) {
      hand_over_if_static("the etcd backend (libcurl)");
      return run_etcd_holder(*backend, *etcd, *path, *json);
    }
    if (!backend->empty()) throw Error("", "--backend " + *backend, "holder reads files, or etcd:// URLs", exit_code::usage);
    return run_holder(*path, *json);
  };
}

}  // namespace holdfast::cli
