// holdfast restart: have the verified supervisor of NAME restart its instance now.
#include <cstdio>
#include <string>

#include "commands.hpp"
#include "duration.hpp"
#include "holdfast/error.hpp"
#include "holdfast/supervise.hpp"

namespace holdfast::cli {

Run add_restart(CLI::App& root) {
  struct Args {
    std::string name;
    std::string timeout = "60s";
    std::string state_dir;
  };
  auto a = std::make_shared<Args>();
  auto* sub = root.add_subcommand(
      "restart",
      "Restart a supervised instance now (holdfast supervise): its supervisor stops it (TERM, then\n"
      "KILL after its --kill-after) and starts it again at once, the backoff reset. Prints the new\n"
      "pid once it is ready. Exit codes: 0 restarted and ready, 1 the supervisor exited instead,\n"
      "64 not supervised, 65 the record does not verify, 75 not ready within --timeout.");
  sub->add_option("name", a->name, "Instance name")->required();
  sub->add_option("--timeout", a->timeout, "How long to wait for the new start to be ready (inf: wait)")->capture_default_str();
  sub->add_option("--state-dir", a->state_dir, "State directory (see holdfast ensure --help)");
  return [a] {
    auto t = parse_duration(a->timeout, "--timeout", Infinite::allowed);
    auto timeout = t == kNoLimit ? std::chrono::milliseconds(std::chrono::hours(24 * 365 * 100))
                                 : std::chrono::ceil<std::chrono::milliseconds>(t);
    auto inst = restart_instance(a->name, a->state_dir, timeout);
    std::printf("%d\n", inst.pid);
    return 0;
  };
}

}  // namespace holdfast::cli
