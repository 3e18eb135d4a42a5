// holdfast supervise: keep one instance of a command running (restart, backoff, start limit,
// watchdog, adoption), in the foreground, on ensure's exactly-one machinery. docs/SUPERVISE.md.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "commands.hpp"
#include "hand_over.hpp"
#include "duration.hpp"
#include "holdfast/error.hpp"
#include "holdfast/supervise.hpp"

namespace holdfast::cli {

namespace {
struct SuperviseArgs {
  std::string name;
  std::vector<std::string> command;
  std::string restart = "always";
  std::string backoff = "100ms..30s";
  std::string healthy_after = "10s";
  std::string burst = "5/10s";
  std::string pause = "60s";
  bool give_up = false;
  std::string kill_after = "5s";
  bool keep = false;
  std::string watchdog;
  std::string heartbeat;
  std::string check;
  std::string check_every = "10s";
  unsigned check_fails = 3;
  std::string start;
  std::string stop;
  std::string ready = "none";
  std::string ready_timeout = "30s";
  std::string log;
  std::string state_dir;
  std::string chdir = "/";
  std::vector<std::string> env;
  std::string umask = "022";
};

std::chrono::milliseconds ms(std::string_view text, std::string_view flag) {
  return std::chrono::ceil<std::chrono::milliseconds>(parse_duration(text, flag));
}

// "MIN..MAX", each a duration.
Backoff parse_backoff(const std::string& text) {
  auto dots = text.find("..");
  if (dots == std::string::npos) {
    throw Error("--backoff", "invalid value", text + " (expected MIN..MAX, e.g. 100ms..30s)", exit_code::usage);
  }
  Backoff b;
  b.min = ms(text.substr(0, dots), "--backoff");
  b.max = ms(text.substr(dots + 2), "--backoff");
  if (b.min.count() <= 0 || b.max < b.min) {
    throw Error("--backoff", "invalid value", text + " (MIN must be > 0 and <= MAX)", exit_code::usage);
  }
  return b;
}

// "N/WINDOW": at most N starts in any WINDOW.
void parse_burst(const std::string& text, StartLimit& limit) {
  auto slash = text.find('/');
  char* end = nullptr;
  unsigned long n = std::strtoul(text.c_str(), &end, 10);
  if (slash == std::string::npos || end != text.c_str() + slash || slash == 0 || n == 0 || n > 1000000) {
    throw Error("--burst", "invalid value", text + " (expected N/WINDOW, e.g. 5/10s)", exit_code::usage);
  }
  limit.burst = static_cast<unsigned>(n);
  limit.window = ms(text.substr(slash + 1), "--burst");
}
}  // namespace

Run add_supervise(CLI::App& root) {
  auto a = std::make_shared<SuperviseArgs>();
  auto* sub = root.add_subcommand(
      "supervise",
      "Keep one instance of a command running, in the foreground: restart it when it exits\n"
      "(--restart), after an exponential backoff that a healthy run resets, pausing at a start\n"
      "limit instead of giving up; stop and restart it when its watchdog goes quiet. Exactly one\n"
      "supervisor per NAME (ensure's instance lock): ensure, status, stop and restart see it. A live\n"
      "instance left by an earlier supervisor (stop --keep, or killed) is adopted, never doubled.\n"
      "Under systemd (NOTIFY_SOCKET) it reports READY=1 and relays watchdog pings.\n"
      "Exit codes: 0 stopped (or the policy ended it), 1 already supervised, or gave up (--give-up),\n"
      "64 bad flags, 69 state directory does not enforce locks, 126/127 command not runnable.");
  sub->add_option("name", a->name, "Instance name: [A-Za-z0-9._-]{1,64}, not starting with '.'")->required();
  sub->add_option("command", a->command, "The command (after --) and its arguments (none with --start)");
  sub->add_option("--restart", a->restart, "When to restart: always, on-failure (non-zero exit or signal), never")
      ->capture_default_str();
  sub->add_option("--backoff", a->backoff, "Delay before a restart: MIN..MAX, doubling per consecutive failure, up to a quarter less for jitter")
      ->capture_default_str();
  sub->add_option("--healthy-after", a->healthy_after, "A run at least this long resets the backoff")->capture_default_str();
  sub->add_option("--burst", a->burst, "Start limit N/WINDOW: more starts than N within WINDOW pause (--pause)")
      ->capture_default_str();
  sub->add_option("--pause", a->pause, "How long to pause at the start limit before trying again")->capture_default_str();
  sub->add_flag("--give-up", a->give_up, "At the start limit, give up (exit 1) instead of pausing");
  sub->add_option("--kill-after", a->kill_after, "After the stop signal (TERM), SIGKILL the instance this long later")
      ->capture_default_str();
  sub->add_flag("--keep", a->keep, "SIGTERM/SIGINT to the supervisor leave the instance running (systemd KillMode=process)");
  sub->add_option("--watchdog", a->watchdog, "The command must send sd_notify WATCHDOG=1 this often (WATCHDOG_USEC is set), or touch --heartbeat");
  sub->add_option("--heartbeat", a->heartbeat, "With --watchdog: the command touches this file instead of sending WATCHDOG=1");
  sub->add_option("--check", a->check, "Health check: sh -c CMD every --check-every once ready; --check-fails failures in a row restart");
  sub->add_option("--check-every", a->check_every, "How often --check runs (also its timeout)")->capture_default_str();
  sub->add_option("--check-fails", a->check_fails, "Consecutive --check failures that count as down")->capture_default_str();
  sub->add_option("--start", a->start, "Supervise what is not a child: sh -c CMD brings back what --check checks (no COMMAND)");
  sub->add_option("--stop", a->stop, "With --start: sh -c CMD run by holdfast stop (never by stop --keep); default: stop leaves it");
  sub->add_option("--ready", a->ready, "How each start reports readiness (as holdfast ensure --ready)")->capture_default_str();
  sub->add_option("--ready-timeout", a->ready_timeout, "A start not ready this long after it began is stopped and retried (inf: wait)")
      ->capture_default_str();
  sub->add_option("--log", a->log, "Append the command's stdout+stderr and the supervisor's decisions here (default STATE/NAME.log)");
  sub->add_option("--state-dir", a->state_dir, "State directory (see holdfast ensure --help)");
  sub->add_option("--chdir", a->chdir, "The command's working directory (\"\" keeps the caller's)")->capture_default_str();
  sub->add_option("--env", a->env, "KEY=VALUE added to the command's environment (repeatable)");
  sub->add_option("--umask", a->umask, "The command's umask (octal), or keep")->capture_default_str();
  return [a] {
    SuperviseOptions o;
    o.base.ready = ReadySpec::parse(a->ready);
    if (o.base.ready.needs_name_service()) hand_over_if_static("--ready tcp:HOST (the name service)");
    auto rt = parse_duration(a->ready_timeout, "--ready-timeout", Infinite::allowed);
    o.base.ready_timeout = rt == kNoLimit ? std::chrono::milliseconds(0) : std::chrono::ceil<std::chrono::milliseconds>(rt);
    o.base.log_path = a->log;
    o.base.state_dir = a->state_dir;
    for (const auto& e : a->env) {
      if (e.find('=') == std::string::npos || e.front() == '=') {
        throw Error("--env", "invalid value", e + " (expected KEY=VALUE)", exit_code::usage);
      }
    }
    o.base.environment = a->env;
    o.base.daemon.chdir = a->chdir;
    if (a->umask == "keep") {
      o.base.daemon.umask.reset();
    } else {
      char* end = nullptr;
      unsigned long m = std::strtoul(a->umask.c_str(), &end, 8);
      if (a->umask.empty() || *end != '\0' || m > 0777) {
        throw Error("--umask", "invalid value", a->umask + " (expected octal, e.g. 027, or keep)", exit_code::usage);
      }
      o.base.daemon.umask = static_cast<mode_t>(m);
    }
    o.restart = parse_restart_policy(a->restart);
    o.backoff = parse_backoff(a->backoff);
    o.healthy_after = ms(a->healthy_after, "--healthy-after");
    parse_burst(a->burst, o.limit);
    o.limit.pause = ms(a->pause, "--pause");
    o.limit.give_up = a->give_up;
    o.kill_after = ms(a->kill_after, "--kill-after");
    o.keep = a->keep;
    if (!a->watchdog.empty()) {
      o.watchdog = ms(a->watchdog, "--watchdog");
      if (o.watchdog->count() <= 0) throw Error("--watchdog", "invalid value", "must be more than 0", exit_code::usage);
    }
    if (!a->heartbeat.empty()) {
      if (!o.watchdog) throw Error("--heartbeat", "invalid value", "needs --watchdog INTERVAL", exit_code::usage);
      o.heartbeat_file = a->heartbeat;
      if (o.heartbeat_file.front() != '/') {
        char cwd[4096];
        if (::getcwd(cwd, sizeof cwd) != nullptr) o.heartbeat_file = std::string(cwd) + "/" + o.heartbeat_file;
      }
    }
    o.check_command = a->check;
    o.check_every = ms(a->check_every, "--check-every");
    if (o.check_every.count() <= 0) throw Error("--check-every", "invalid value", "must be more than 0", exit_code::usage);
    if (a->check_fails == 0) throw Error("--check-fails", "invalid value", "must be 1 or more", exit_code::usage);
    o.check_fails = a->check_fails;
    o.start_command = a->start;
    o.stop_command = a->stop;
    if (!o.stop_command.empty() && o.start_command.empty()) {
      throw Error("--stop", "invalid value", "only with --start (a child is stopped by signals)", exit_code::usage);
    }
    auto result = supervise(a->name, a->command, o);
    std::fprintf(stderr, "holdfast supervise: %s\n", result.message.c_str());
    return result.exit_code;
  };
}

}  // namespace holdfast::cli
