// holdfast stop: stop the verified instance — never a pid from a file on faith.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "commands.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

namespace {
struct StopArgs {
  std::string name;
  std::string signal = "TERM";
  double timeout = 10;
  double kill_after = -1;
  std::string state_dir;
};

int parse_signal(std::string text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    int n = std::stoi(text);
    if (n > 0 && n < NSIG) return n;
  }
  if (text.starts_with("SIG")) text = text.substr(3);
  static const struct {
    const char* name;
    int sig;
  } names[] = {{"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"QUIT", SIGQUIT},
               {"KILL", SIGKILL}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"ABRT", SIGABRT}};
  for (const auto& n : names) {
    if (text == n.name) return n.sig;
  }
  throw Error("--signal", "unknown signal", text, exit_code::usage);
}

std::chrono::milliseconds seconds(double s, const char* flag) {
  if (!(s >= 0) || s > 1e7) throw Error(flag, "invalid value", std::to_string(s), exit_code::usage);
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}
}  // namespace

Run add_stop(CLI::App& root) {
  auto args = std::make_shared<StopArgs>();
  auto* sub = root.add_subcommand(
      "stop",
      "Stop the verified instance: signals only the process whose pid, start time, boot and host\n"
      "match the record AND that holds the instance lock (via a pidfd, so a recycled pid is never\n"
      "signalled), then waits for the instance lock to be released. Exit codes: 0 stopped or not\n"
      "running, 65 the record does not verify (nothing signalled), 75 still running at the timeout.");
  sub->add_option("name", args->name, "Instance name")->required();
  sub->add_option("--signal", args->signal, "Signal to send (name or number)")->capture_default_str();
  sub->add_option("--timeout", args->timeout, "Seconds to wait for the instance to go (after SIGKILL, if --kill-after)")
      ->capture_default_str();
  sub->add_option("--kill-after", args->kill_after, "SIGKILL the verified instance if it still runs this many seconds after the signal");
  sub->add_option("--state-dir", args->state_dir, "State directory (see holdfast ensure --help)");
  return [args] {
    StopOptions options;
    options.state_dir = args->state_dir;
    options.signal = parse_signal(args->signal);
    options.timeout = seconds(args->timeout, "--timeout");
    if (args->kill_after >= 0) options.kill_after = seconds(args->kill_after, "--kill-after");
    auto result = stop_instance(args->name, options);
    std::fprintf(stderr, "%s\n", result.message.c_str());
    return 0;
  };
}

}  // namespace holdfast::cli
