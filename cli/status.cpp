// holdfast status: show managed instances — ready, running (not ready), stopped or stale.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.hpp"
#include "hand_over.hpp"
#include "ensure_etcd.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

namespace {
struct StatusArgs {
  std::string name;
  std::string state_dir;
  bool json = false;
  EtcdBackendArgs etcd;
};

nlohmann::json to_json(const InstanceStatus& s) {
  nlohmann::json j;
  j["name"] = s.name;
  j["state"] = std::string(to_string(s.state));
  j["lock_held"] = s.lock_held;
  j["reason"] = s.reason;
  j["record"] = s.record ? nlohmann::json::parse(s.record->to_json()) : nlohmann::json();
  return j;
}

// LSB init-script status codes (as start-stop-daemon --status and systemctl is-active use).
int lsb_exit(InstanceState state) {
  switch (state) {
    case InstanceState::ready:
    case InstanceState::running: return 0;
    case InstanceState::stale: return 1;    // "program is dead and the pid file exists"
    case InstanceState::stopped: return 3;  // "program is not running"
    case InstanceState::unknown: return 4;  // "program or service status is unknown"
  }
  return 4;
}

void print_line(const InstanceStatus& s) {
  std::string pid = s.record && s.record->process.pid > 0 ? std::to_string(s.record->process.pid) : "-";
  std::string ready = s.record ? s.record->ready_mode : "-";
  std::printf("%-24s %-8s %-8s %-12s %s\n", s.name.c_str(), std::string(to_string(s.state)).c_str(),
              pid.c_str(), ready.c_str(), s.reason.c_str());
}
}  // namespace

Run add_status(CLI::App& root) {
  auto args = std::make_shared<StatusArgs>();
  auto* sub = root.add_subcommand(
      "status",
      "Show managed instances: ready (lock held, record verified), running (lock held, not ready),\n"
      "stopped, stale (a record but nobody holds the instance lock), or unknown (the lock is held but\n"
      "the record does not verify). Takes no locks. Exit codes (LSB, for NAME): 0 ready or running,\n"
      "1 stale, 3 stopped, 4 unknown; without NAME: 0.");
  sub->add_option("name", args->name, "One instance (default: all in the state directory)");
  sub->add_option("--state-dir", args->state_dir, "State directory (see holdfast ensure --help)");
  sub->add_flag("--json", args->json, "Print JSON (an object for NAME, else an array)");
  add_etcd_backend_flags(sub, args->etcd);
  return [args] {
    if (!args->etcd.backend.empty()) {
      hand_over_if_static("the etcd backend (libcurl)");
      if (args->name.empty()) throw Error("--backend", "status on etcd", "needs NAME", exit_code::usage);
      return status_etcd(args->etcd, args->name, args->json);
    }
    if (!args->name.empty()) {
      auto s = instance_status(args->name, args->state_dir);
      if (args->json) std::printf("%s\n", to_json(s).dump().c_str());
      else print_line(s);
      return lsb_exit(s.state);
    }
    auto all = list_instances(args->state_dir);
    if (args->json) {
      auto arr = nlohmann::json::array();
      for (const auto& s : all) arr.push_back(to_json(s));
      std::printf("%s\n", arr.dump().c_str());
    } else {
      std::printf("%-24s %-8s %-8s %-12s %s\n", "NAME", "STATE", "PID", "READY", "DETAIL");
      for (const auto& s : all) print_line(s);
    }
    return 0;
  };
}

}  // namespace holdfast::cli
