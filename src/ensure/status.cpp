// instance_status, list_instances, stop_instance: read the lock and the record; signal only a
// verified process, through a pidfd.
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <thread>

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast {

using namespace ensure_detail;
using Clock = std::chrono::steady_clock;

namespace {

InstanceStatus status_at(const Paths& paths) {
  InstanceStatus s;
  s.name = paths.name;
  s.lock_held = lock_held(paths.lock);
  s.record = read_record(paths.record);
  const auto& r = s.record;
  std::string pid = r ? "pid " + std::to_string(r->process.pid) : std::string();
  if (s.lock_held) {
    if (r && r->state == RecordState::ready && verified_alive(*r)) {
      s.state = InstanceState::ready;
      s.reason = pid + " is ready";
    } else if (r && r->state == RecordState::starting) {
      s.state = InstanceState::running;
      s.reason = pid + " is starting (not ready yet)";
    } else {
      s.state = InstanceState::running;
      s.reason = r ? "the instance lock is held but the record (" + pid + ", " +
                         std::string(to_string(r->state)) + ") does not verify: " +
                         judge_liveness(r->process).reason
                   : "the instance lock is held but there is no readable record";
    }
  } else if (!r) {
    s.state = InstanceState::stopped;
    s.reason = "no instance";
  } else if (r->state == RecordState::stopped) {
    s.state = InstanceState::stopped;
    s.reason = "stopped (last " + pid + ")";
  } else if (r->state == RecordState::failed) {
    s.state = InstanceState::stopped;
    s.reason = "failed before ready: " + r->failure;
  } else {
    s.state = InstanceState::stale;
    s.reason = "record says " + std::string(to_string(r->state)) + " " + pid +
               " but nobody holds the instance lock (it died without cleanup)";
  }
  return s;
}

// Marks the record stopped once the lock is free, under the spawn lock so a new start's record is
// never overwritten. Best effort: a busy spawn lock means someone is already starting anew.
void mark_stopped(const Paths& paths, uint64_t attempt) {
  try {
    auto spawn = open_lock_file(paths.spawn_lock);
    if (ofd_try_lock(spawn.get()) != 0) return;
    if (lock_held(paths.lock)) return;
    auto rec = read_record(paths.record);
    if (!rec || rec->attempt != attempt || rec->state != RecordState::ready) return;
    rec->state = RecordState::stopped;
    write_record(paths.record, *rec);
  } catch (const Error&) {
  }
}

}  // namespace

InstanceStatus instance_status(const std::string& name, const std::string& state_dir) {
  validate_instance_name(name);
  return status_at(paths_for(resolve_state_dir(state_dir), name));
}

std::vector<InstanceStatus> list_instances(const std::string& state_dir) {
  const std::string dir = resolve_state_dir(state_dir);
  std::set<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw Error(errno, dir, "cannot list state directory");
  while (dirent* e = ::readdir(d)) {
    std::string_view f(e->d_name);
    std::string_view base;
    if (f.ends_with(".spawn.lock")) continue;
    if (!f.ends_with(".lock") && !f.ends_with(".json")) continue;
    base = f.substr(0, f.size() - 5);  // both suffixes are 5 bytes
    try {
      validate_instance_name(base);
      names.emplace(base);
    } catch (const Error&) {
    }
  }
  ::closedir(d);
  std::vector<InstanceStatus> out;
  for (const auto& n : names) out.push_back(status_at(paths_for(dir, n)));
  return out;
}

StopResult stop_instance(const std::string& name, const StopOptions& options) {
  const auto begin = Clock::now();
  validate_instance_name(name);
  const auto paths = paths_for(resolve_state_dir(options.state_dir), name);
  StopResult result;

  auto status = status_at(paths);
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
  const pid_t pid = rec.process.pid;
  const std::string who = "pid " + std::to_string(pid);

  // 1. The record names a live process: same pid, start time, boot and host.
  auto verdict = judge_liveness(rec.process);
  if (verdict.liveness != Liveness::alive) {
    throw Error(paths.record, "refusing to signal " + who, verdict.reason, exit_code::data);
  }
  // 2. That process holds the instance lock (not merely some process with that pid and start time).
  struct stat st {};
  if (sys::stat_nothrow(paths.lock, st) != 0 || !sys::process_holds_lock_on(pid, st)) {
    throw Error(paths.record, "refusing to signal " + who,
                "it does not hold the instance lock " + paths.lock, exit_code::data);
  }
  // 3. Pin the process with a pidfd, then re-check its start time: a pidfd never follows a reused
  //    pid, so a signal through it reaches the verified process or nobody.
  int pfd = sys::pidfd_open_nothrow(pid);
  if (pfd < 0 && pfd != -ESRCH) throw Error(-pfd, paths.record, "pidfd_open " + who);
  sys::UniqueFd pidfd(pfd);
  if (pidfd) {
    auto now = identity_of(pid);
    if (!now || now->start_time != rec.process.start_time) {
      if (now) {
        throw Error(paths.record, "refusing to signal " + who,
                    "start time changed (" + std::to_string(rec.process.start_time) + " != " +
                        std::to_string(now->start_time) + ")",
                    exit_code::data);
      }
      pidfd.reset();  // it exited in between: nothing to signal
    }
  }
  if (pidfd) {
    int rc = sys::pidfd_signal_nothrow(pidfd.get(), options.signal);
    if (rc != 0 && rc != -ESRCH) throw Error(-rc, paths.record, "cannot signal " + who);
    result.pid = pid;
  }

  const auto kill_at = options.kill_after ? begin + *options.kill_after : Clock::time_point::max();
  const auto deadline = begin + options.timeout + (options.kill_after ? *options.kill_after : std::chrono::milliseconds(0));
  for (;;) {
    if (!lock_held(paths.lock)) break;
    auto now = Clock::now();
    if (pidfd && !result.killed && now >= kill_at) {
      int rc = sys::pidfd_signal_nothrow(pidfd.get(), SIGKILL);
      if (rc != 0 && rc != -ESRCH) throw Error(-rc, paths.record, "cannot SIGKILL " + who);
      result.killed = true;
    }
    if (now >= deadline) {
      result.waited = Clock::now() - begin;
      std::string cause = who + " still holds it after " +
                          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(result.waited).count()) +
                          " ms";
      if (pidfd) {
        pollfd p{pidfd.get(), POLLIN, 0};
        if (::poll(&p, 1, 0) == 1) {
          struct stat lst {};
          std::string holders;
          if (sys::stat_nothrow(paths.lock, lst) == 0) {
            for (pid_t h : sys::processes_locking(lst)) holders += " " + std::to_string(h);
          }
          cause = who + " exited but the lock is still held by" + (holders.empty() ? " unknown processes" : holders);
        }
      }
      throw Error(paths.lock, "instance did not stop", cause, exit_code::temp_fail);
    }
    // Wake on the process's exit (pidfd readable), else re-check the lock every few ms.
    auto next = std::min({deadline, kill_at, now + std::chrono::milliseconds(5)});
    auto ms = std::max<int64_t>(1, std::chrono::ceil<std::chrono::milliseconds>(next - now).count());
    if (pidfd) {
      pollfd p{pidfd.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(ms)) == 1) {
        // Exited: the kernel drops its locks as it exits; give the lock test a moment.
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
  }
  // The kernel drops a process's locks while it exits, a moment before it is a zombie: wait for
  // the pidfd to report the exit so "stopped" also means the signalled process is gone.
  if (pidfd) {
    pollfd p{pidfd.get(), POLLIN, 0};
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    while (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left, 1))) < 0 && errno == EINTR) {
    }
  }
  // Stopped while starting: its launcher is recording the outcome under the spawn lock; wait for
  // that (bounded by the deadline) so the record is final when we return.
  if (rec.state == RecordState::starting) {
    try {
      auto spawn = open_lock_file(paths.spawn_lock);
      while (ofd_held_elsewhere(spawn.get()) == 1 && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    } catch (const Error&) {
    }
  }
  result.waited = Clock::now() - begin;
  mark_stopped(paths, rec.attempt);
  result.message = name + ": stopped " + who + (result.killed ? " (SIGKILL)" : "");
  return result;
}

}  // namespace holdfast
