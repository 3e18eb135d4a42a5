// holdfast::supervise — keep one instance running: restart with backoff, start limits that pause
// instead of giving up, adoption of a live instance, stop that can leave it running.
//
// Built on ensure's exactly-one machinery (include/holdfast/ensure.hpp): the same state
// directory, the same instance lock (held by the supervisor, which is the calling process, for
// its whole life) and the same record, with a `supervise` section added. So `ensure NAME`,
// `status` and `stop` see a supervised instance as they see an ensured one. See docs/SUPERVISE.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "holdfast/ensure.hpp"

namespace holdfast {

enum class RestartPolicy { always, on_failure, never };
std::string_view to_string(RestartPolicy policy) noexcept;
// "always", "on-failure" (or "on_failure"), "never"; throws Error(usage) otherwise.
RestartPolicy parse_restart_policy(std::string_view text);

// Exponential backoff between restarts: the n-th consecutive failed run (n = 0, 1, ...) waits
// base(n) = min(max, min * factor^n), less a jitter of up to a quarter, never below min:
// delay(n, u) = max(min, base(n) * (1 - u/4)) for a jitter draw u in [0, 1). The supervisor draws
// u once per streak of failures, so its delays never decrease within a streak (base(n) does not),
// while supervisors restarted together (one per draw) spread apart.
struct Backoff {
  std::chrono::milliseconds min{100};
  std::chrono::milliseconds max{30000};
  double factor = 2.0;
  bool jitter = true;

  std::chrono::milliseconds base(uint64_t failures) const noexcept;
  // `unit` is a random value in [0, 1) (ignored without jitter).
  std::chrono::milliseconds delay(uint64_t failures, double unit) const noexcept;
};

// A start limit with a window: at most `burst` starts in any `window`; the next start waits for
// `pause` (then the window starts afresh), or the supervisor gives up when give_up is set.
struct StartLimit {
  unsigned burst = 5;
  std::chrono::milliseconds window{10000};
  std::chrono::milliseconds pause{60000};
  bool give_up = false;
};

struct SuperviseOptions {
  EnsureOptions base;       // ready, daemon settings, state_dir, log_path, environment; its
                            // ready_timeout bounds each start's readiness (then: a failed start)
  RestartPolicy restart = RestartPolicy::always;
  Backoff backoff;
  std::chrono::milliseconds healthy_after{10000};  // a run this long resets the backoff
  StartLimit limit;
  std::chrono::milliseconds kill_after{5000};     // TERM, then KILL after this long
  bool keep = false;        // SIGTERM/SIGINT to the supervisor leaves the instance running
                            // (systemd KillMode=process); `holdfast stop --keep` does so always
  // Watchdog: the child must send sd_notify WATCHDOG=1 at least this often (WATCHDOG_USEC and
  // WATCHDOG_PID are passed as systemd does); with heartbeat_file, that file's mtime must be
  // this recent instead. A child that misses it is stopped and restarted.
  std::optional<std::chrono::milliseconds> watchdog;
  std::string heartbeat_file;
  // A health check: `/bin/sh -c check_command` every check_every (also its timeout) once the
  // instance is ready; check_fails consecutive failures (non-zero exit or timeout) stop and
  // restart it.
  std::string check_command;
  std::chrono::milliseconds check_every{10000};
  unsigned check_fails = 3;
  // Supervise what is not a child: with start_command and no command, the instance is whatever
  // check_command checks (a tmux session, a container, a mount). When the check fails
  // check_fails times, `/bin/sh -c start_command` runs (with the same backoff and start limit)
  // and the instance is ready once the check passes again. Stopping the supervisor never touches
  // the external thing; stop_command, if set, is run by `holdfast stop` (not by stop --keep).
  std::string start_command;
  std::string stop_command;
};

// What supervise() ended with (the process exit code for the CLI).
struct SuperviseResult {
  int exit_code = 0;        // 0: stopped as asked, or the policy said not to restart; 1: gave up
  std::string message;      // one line
};

// Runs the supervisor for `name` in the calling process until it is stopped (holdfast stop,
// SIGTERM/SIGINT), told to keep the instance and leave, or the restart policy ends it.
// Exactly one supervisor per name: the instance lock is taken without waiting; if another
// supervisor (or an ensure'd instance) holds it, throws Error(conflict) naming its pid. If a
// previous supervisor of `name` left its main process running (--keep, or killed), that process
// is verified (pid, start time, boot) and adopted instead of starting another.
// Throws Error(usage) for a bad name or empty command, Error(not_found/cannot_exec) if the
// command cannot run, Error for state-directory failures. Installs signal handling (blocks
// SIGCHLD, SIGTERM, SIGINT, SIGHUP and the control signal) and becomes a child subreaper.
// With options.start_command set, `command` may be empty (external mode, see above).
SuperviseResult supervise(const std::string& name, const std::vector<std::string>& command,
                          const SuperviseOptions& options);

// Asks the verified supervisor of `name` to restart its instance now (stop it: TERM, KILL after
// its --kill-after; start again at once, the backoff reset) and waits until the new start is
// ready. Throws Error(usage) if `name` is not supervised, Error(data) if the record does not
// verify, Error(temp_fail) if the new start is not ready within `timeout`.
Instance restart_instance(const std::string& name, const std::string& state_dir,
                          std::chrono::milliseconds timeout);

}  // namespace holdfast
