// stop_instance: verify the record (the same check ensure and status make), then ask the
// supervisor, through a pidfd, to signal the whole instance; wait for the instance lock.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"
#include "sys/process.hpp"

namespace holdfast::ensure_detail {

// Opens a pidfd on the record's supervisor and re-checks its start time, so a request through
// it reaches the verified supervisor or nobody. An empty fd: it exited in between.
sys::UniqueFd pin_supervisor(const Paths& paths, const InstanceRecord& rec) {
  const std::string who = "supervisor pid " + std::to_string(rec.launcher_pid);
  int fd = sys::pidfd_open_nothrow(rec.launcher_pid);
  if (fd == -ESRCH) return {};
  if (fd < 0) throw Error(-fd, paths.record, "pidfd_open " + who);
  sys::UniqueFd pidfd(fd);
  auto now = identity_of(rec.launcher_pid);
  if (!now) return {};
  if (now->start_time != rec.launcher_start_time) {
    throw Error(paths.record, "refusing to signal " + who,
                "start time changed (" + std::to_string(rec.launcher_start_time) + " != " +
                    std::to_string(now->start_time) + ")",
                exit_code::data);
  }
  return pidfd;
}

// Sends a control request (ControlMode + signal) to the supervisor through its pidfd.
void send_request(int pidfd, const Paths& paths, ControlMode mode, int sig) {
  siginfo_t info{};
  info.si_signo = control_signal();
  info.si_code = SI_QUEUE;
  info.si_pid = ::getpid();
  info.si_uid = ::getuid();
  info.si_value.sival_int = control_value(mode, sig);
  if (::syscall(SYS_pidfd_send_signal, pidfd, control_signal(), &info, 0) != 0 && errno != ESRCH) {
    throw Error(errno, paths.record, "cannot signal the supervisor");
  }
}

}  // namespace holdfast::ensure_detail

namespace holdfast {

using namespace ensure_detail;
using Clock = std::chrono::steady_clock;

namespace {

std::string ms_text(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

// S5: a start whose supervisor has not recorded itself yet (the client holds the lock for a few
// microseconds before the supervisor writes its identity). Waits for it, bounded by `deadline`.
InstanceStatus wait_until_supervised(const Paths& paths, Clock::time_point deadline) {
  for (;;) {
    auto s = status_at(paths);
    bool unrecorded = s.lock_held && s.record && s.record->state == RecordState::starting &&
                      s.record->launcher_pid <= 0;
    if (!unrecorded) return s;
    if (Clock::now() >= deadline) {
      throw Error(paths.lock, "instance did not stop", "still starting: its supervisor has not recorded itself",
                  exit_code::temp_fail);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Waits until the instance lock is free (the supervisor exits right after the last process of
// the instance), escalating to SIGKILL at `kill_at`.
void wait_for_release(const Paths& paths, int pidfd, Clock::time_point kill_at, Clock::time_point deadline,
                      Clock::time_point begin, StopResult& result) {
  const pid_t supervisor = result.pid;
  while (lock_held(paths.lock)) {
    auto now = Clock::now();
    if (pidfd >= 0 && !result.killed && now >= kill_at) {
      send_request(pidfd, paths, ControlMode::stop, SIGKILL);
      result.killed = true;
    }
    if (now >= deadline) {
      std::string left;
      if (supervisor > 0) {
        for (const auto& m : descendants_of(supervisor)) left += " " + std::to_string(m.pid);
      }
      throw Error(paths.lock, "instance did not stop",
                  "still running after " + ms_text(now - begin) +
                      (left.empty() ? "" : " (processes of the instance:" + left + ")"),
                  exit_code::temp_fail);
    }
    auto next = std::min({deadline, kill_at, now + std::chrono::milliseconds(5)});
    auto ms = std::max<int64_t>(1, std::chrono::ceil<std::chrono::milliseconds>(next - now).count());
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(ms));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
  }
}

// Stops the main process of a supervised instance that runs without a supervisor: pinned by a
// pidfd and re-checked against the record's start time before any signal, then its descendants
// too; SIGKILL at `kill_at`. Writes the final record under the spawn lock (as a supervisor does)
// unless a new supervisor took the instance meanwhile.
StopResult stop_unsupervised(const Paths& paths, const InstanceRecord& rec, const StopOptions& options,
                             Clock::time_point kill_at, Clock::time_point deadline, Clock::time_point begin) {
  StopResult result;
  result.was_running = true;
  result.pid = rec.process.pid;
  const std::string who = "pid " + std::to_string(rec.process.pid);
  int fd = sys::pidfd_open_nothrow(rec.process.pid);
  if (fd == -ESRCH) {
    result.message = paths.name + ": not running (" + who + " exited meanwhile)";
    return result;
  }
  if (fd < 0) throw Error(-fd, paths.record, "pidfd_open " + who);
  sys::UniqueFd pidfd(fd);
  auto now = identity_of(rec.process.pid);
  if (now && now->start_time != rec.process.start_time) {
    throw Error(paths.record, "refusing to signal " + who, "start time changed", exit_code::data);
  }
  auto signal_all = [&](int sig) {
    signal_descendants(rec.process.pid, sig);
    sys::pidfd_signal_nothrow(pidfd.get(), sig);
    if (sig != SIGKILL && sig != SIGCONT) sys::pidfd_signal_nothrow(pidfd.get(), SIGCONT);  // a stopped process
  };
  signal_all(options.signal);
  for (;;) {
    pollfd p{pidfd.get(), POLLIN, 0};
    auto now_t = Clock::now();
    if (!result.killed && now_t >= kill_at) {
      signal_all(SIGKILL);
      result.killed = true;
    }
    if (now_t >= deadline) {
      throw Error(paths.record, "instance did not stop", who + " still running after " + ms_text(now_t - begin),
                  exit_code::temp_fail);
    }
    auto next = std::min(deadline, kill_at);
    auto ms = std::clamp<int64_t>(std::chrono::ceil<std::chrono::milliseconds>(next - now_t).count(), 1, 60000);
    int rc = ::poll(&p, 1, static_cast<int>(ms));
    if (rc > 0) break;
  }
  // The record says stopped, unless a supervisor has adopted or replaced the instance meanwhile.
  try {
    auto spawn = open_lock_file(paths.spawn_lock);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (::fcntl(spawn.get(), F_OFD_SETLK, &fl) == 0 && !lock_held(paths.lock)) {
      auto cur = read_record(paths.record);
      if (cur && cur->attempt == rec.attempt && cur->launcher_pid == rec.launcher_pid) {
        cur->state = RecordState::stopped;
        if (cur->supervision) {
          cur->supervision->state = "stopped";
          cur->supervision->decision = "stopped by holdfast stop while unsupervised";
        }
        write_record(paths.record, *cur);
      }
    }
  } catch (const Error&) {
    // The instance is stopped; the record stays as it was (status then calls it stale).
  }
  result.waited = Clock::now() - begin;
  result.message = paths.name + ": stopped " + who + " (it ran without a supervisor)" + (result.killed ? " (SIGKILL)" : "");
  return result;
}

}  // namespace

StopResult stop_instance(const std::string& name, const StopOptions& options) {
  const auto begin = Clock::now();
  validate_instance_name(name);
  const auto paths = paths_for(resolve_state_dir(options.state_dir), name);
  const auto kill_after = options.kill_after.value_or(std::chrono::milliseconds(0));
  const auto kill_at = options.kill_after ? begin + kill_after : Clock::time_point::max();
  const auto deadline = begin + options.timeout + kill_after;
  StopResult result;

  auto status = wait_until_supervised(paths, deadline);
  if (!status.lock_held && status.record && runs_unsupervised(*status.record)) {
    // A supervised instance whose supervisor was stopped with --keep (or killed).
    if (options.keep) {
      result.message = name + ": pid " + std::to_string(status.record->process.pid) +
                       " already runs without a supervisor (nothing done)";
      return result;
    }
    return stop_unsupervised(paths, *status.record, options, kill_at, deadline, begin);
  }
  if (!status.lock_held) {
    result.message = name + ": not running" +
                     (status.state == InstanceState::stale ? " (stale record, nothing signalled)" : "");
    return result;
  }
  result.was_running = true;
  if (!status.record) {
    throw Error(paths.record, "refusing to signal", "the instance lock is held but there is no readable record",
                exit_code::data);
  }
  const InstanceRecord rec = *status.record;
  auto v = verify_instance(paths, rec);
  if (v.verdict != Verdict::verified) {
    throw Error(paths.record, "refusing to signal pid " + std::to_string(rec.process.pid), v.reason,
                exit_code::data);
  }
  if (options.keep && !rec.supervision) {
    throw Error(name, "cannot stop with --keep",
                "not a supervised instance (an ensure'd instance goes with its supervisor): use holdfast supervise",
                exit_code::usage);
  }
  auto pidfd = pin_supervisor(paths, rec);
  result.pid = rec.process.pid;
  if (options.keep) {
    // The supervisor writes a record that names the instance as kept, releases the lock, exits.
    if (pidfd) send_request(pidfd.get(), paths, ControlMode::keep, 0);
    StopResult waiting = result;
    waiting.pid = rec.launcher_pid;
    wait_for_release(paths, pidfd ? pidfd.get() : -1, Clock::time_point::max(), deadline, begin, waiting);
    if (pidfd) {
      pollfd p{pidfd.get(), POLLIN, 0};
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
      while (::poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left, 1, 60000))) < 0 && errno == EINTR) {
      }
    }
    result.waited = Clock::now() - begin;
    result.message = name + ": stopped the supervisor; pid " + std::to_string(rec.process.pid) + " keeps running";
    return result;
  }
  const std::string sig_name = sigabbrev_np(options.signal) ? std::string("SIG") + sigabbrev_np(options.signal)
                                                           : "signal " + std::to_string(options.signal);
  if (!options.wait) {
    if (!pidfd) throw Error(paths.record, "cannot signal", "the instance exited meanwhile", exit_code::temp_fail);
    send_request(pidfd.get(), paths, ControlMode::signal_main, options.signal);
    result.message = name + ": sent " + sig_name + " to pid " + std::to_string(rec.process.pid);
    return result;
  }
  if (pidfd) send_request(pidfd.get(), paths, ControlMode::stop, options.signal);
  StopResult waiting = result;
  waiting.pid = rec.launcher_pid;
  wait_for_release(paths, pidfd ? pidfd.get() : -1, kill_at, deadline, begin, waiting);
  // The supervisor writes the final record right after the lock goes, then exits: wait for the
  // exit so that "stopped" is what the record says when we return.
  if (pidfd) {
    pollfd p{pidfd.get(), POLLIN, 0};
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    while (::poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left, 1, 60000))) < 0 && errno == EINTR) {
    }
  }
  result.killed = waiting.killed;
  result.waited = Clock::now() - begin;
  result.message = name + ": stopped pid " + std::to_string(rec.process.pid) + " and its processes" +
                   (result.killed ? " (SIGKILL)" : "");
  return result;
}

}  // namespace holdfast
