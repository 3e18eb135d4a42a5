// holdfast stop: stop the verified instance — never a pid from a file on faith.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "commands.hpp"
#include "hand_over.hpp"
#include "ensure_etcd.hpp"
#include "duration.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

namespace {
struct StopArgs {
  std::string name;
  std::string signal = "TERM";
  std::string timeout = "10s";
  std::string kill_after;
  std::string state_dir;
  bool no_wait = false;
  bool keep = false;
  EtcdBackendArgs etcd;
};

// A signal number, or a name with or without "SIG" in any case (HUP, SIGWINCH, RTMIN+3), or 0.
int parse_signal(const std::string& text) {
  auto bad = [&] { return Error("--signal", "unknown signal", text, exit_code::usage); };
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    if (text.size() > 3) throw bad();
    int n = std::stoi(text);
    if (n >= 0 && n < NSIG) return n;
    throw bad();
  }
  std::string name;
  for (char c : text) name += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  if (name.starts_with("SIG")) name = name.substr(3);
  for (auto [prefix, base, sign] : {std::tuple{"RTMIN+", SIGRTMIN, 1}, std::tuple{"RTMAX-", SIGRTMAX, -1}}) {
    std::string p(prefix);
    if (name.starts_with(p) && name.size() > p.size() &&
        name.find_first_not_of("0123456789", p.size()) == std::string::npos && name.size() - p.size() <= 2) {
      int sig = base + sign * std::stoi(name.substr(p.size()));
      if (sig >= SIGRTMIN && sig <= SIGRTMAX) return sig;
      throw bad();
    }
  }
  if (name == "RTMIN") return SIGRTMIN;
  if (name == "RTMAX") return SIGRTMAX;
  for (int sig = 1; sig < SIGRTMIN; ++sig) {
    const char* abbrev = sigabbrev_np(sig);
    if (abbrev != nullptr && name == abbrev) return sig;
  }
  throw bad();
}
}  // namespace

Run add_stop(CLI::App& root) {
  auto args = std::make_shared<StopArgs>();
  auto* sub = root.add_subcommand(
      "stop",
      "Stop the verified instance: checks that the record's supervisor holds the instance lock and\n"
      "the recorded process is its own, then (through a pidfd, so a recycled pid is never\n"
      "signalled) has the supervisor signal every process of the instance, and waits for the\n"
      "instance lock to be released. With --no-wait: deliver the signal to the main process only\n"
      "and return (reload). Exit codes: 0 stopped, signalled or not running, 64 bad flags, 65 the\n"
      "record does not verify (nothing signalled), 75 still running at the timeout.");
  sub->add_option("name", args->name, "Instance name")->required();
  sub->add_option("--signal", args->signal, "Signal to send: a name (TERM, SIGHUP, WINCH, RTMIN+2) or number (0 too)")
      ->capture_default_str();
  sub->add_option("--timeout", args->timeout, "How long to wait for the instance to go (500ms, 2s, 1m, inf)")
      ->capture_default_str();
  sub->add_option("--kill-after", args->kill_after, "SIGKILL every process of the instance if it still runs this long after the signal");
  sub->add_flag("--no-wait", args->no_wait, "Signal-only (reload) mode: send --signal to the main process and return");
  sub->add_flag("--keep", args->keep, "Supervised instances: stop only the supervisor and leave the instance running");
  sub->add_option("--state-dir", args->state_dir, "State directory (see holdfast ensure --help)");
  add_etcd_backend_flags(sub, args->etcd);
  return [args] {
    if (!args->etcd.backend.empty()) hand_over_if_static("the etcd backend (libcurl)");
    StopOptions options;
    options.state_dir = args->state_dir;
    options.signal = parse_signal(args->signal);
    options.wait = !args->no_wait;
    options.keep = args->keep;
    if (options.wait && options.signal == 0) {
      throw Error("--signal", "invalid value", "0 only checks the instance: use it with --no-wait", exit_code::usage);
    }
    auto timeout = parse_duration(args->timeout, "--timeout", Infinite::allowed);
    options.timeout = timeout == kNoLimit ? std::chrono::milliseconds(std::chrono::hours(24 * 365 * 100))
                                          : std::chrono::ceil<std::chrono::milliseconds>(timeout);
    if (!args->kill_after.empty()) {
      options.kill_after = std::chrono::ceil<std::chrono::milliseconds>(parse_duration(args->kill_after, "--kill-after"));
    }
    if (!args->etcd.backend.empty()) return stop_etcd(args->etcd, args->name, options);
    auto result = stop_instance(args->name, options);
    std::fprintf(stderr, "%s\n", result.message.c_str());
    return 0;
  };
}

}  // namespace holdfast::cli
