// holdfast ensure: run exactly one instance of a command, started on demand, verified ready.
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

namespace {
struct EnsureArgs {
  std::string name;
  std::vector<std::string> command;
  std::string ready = "none";
  double ready_timeout = 30;
  std::string log;
  std::string state_dir;
  bool json = false;
};
}  // namespace

Run add_ensure(CLI::App& root) {
  auto args = std::make_shared<EnsureArgs>();
  auto* sub = root.add_subcommand(
      "ensure",
      "Run exactly one instance of a command, started on demand: prints its pid once it is ready.\n"
      "Concurrent callers get the same instance; at most one starts it. Exit codes: 0 ready (started\n"
      "or found), 1 it died before ready (log tail on stderr), 64 bad name or flags, 75 not ready in\n"
      "time, 126/127 command not executable/not found.");
  sub->add_option("name", args->name, "Instance name: [A-Za-z0-9._-]{1,64}, not starting with '.'")->required();
  sub->add_option("command", args->command, "The command (after --) and its arguments")->required();
  sub->add_option("--ready", args->ready,
                  "How the instance reports readiness: none (at exec), notify (sd_notify READY=1 on\n"
                  "$NOTIFY_SOCKET), fd:N (a newline on fd N), tcp:HOST:PORT or unix:PATH (accepting\n"
                  "connections), file:PATH (exists)")
      ->capture_default_str();
  sub->add_option("--ready-timeout", args->ready_timeout, "Seconds to wait for readiness")->capture_default_str();
  sub->add_option("--log", args->log, "Append the instance's stdout+stderr here (default STATE/NAME.log)");
  sub->add_option("--state-dir", args->state_dir,
                  "State directory (default $XDG_RUNTIME_DIR/holdfast, /run/holdfast for root, else /tmp/holdfast-UID)");
  sub->add_flag("--json", args->json, "Print the instance record as JSON");
  return [args] {
    EnsureOptions options;
    options.ready = ReadySpec::parse(args->ready);
    if (!(args->ready_timeout >= 0) || args->ready_timeout > 1e7) {
      throw Error("--ready-timeout", "invalid value", std::to_string(args->ready_timeout), exit_code::usage);
    }
    options.ready_timeout = std::chrono::milliseconds(static_cast<int64_t>(std::llround(args->ready_timeout * 1000)));
    options.log_path = args->log;
    options.state_dir = args->state_dir;
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
