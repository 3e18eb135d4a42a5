// ensure_running: observe, single-flight spawn, wait for the record to say ready.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast {

using namespace ensure_detail;
using Clock = std::chrono::steady_clock;

StartFailure::StartFailure(std::string name, const std::string& cause, int exit, int exit_status,
                           std::string log_tail)
    : Error(std::move(name), "did not become ready", cause, exit),
      exit_status_(exit_status),
      log_tail_(std::move(log_tail)) {}

namespace {

struct Observation {
  bool lock_held = false;
  std::optional<InstanceRecord> record;
  bool verified_ready() const {
    return lock_held && record && record->state == RecordState::ready && verified_alive(*record);
  }
};

// Wakes a waiter when the start it waits for has ended. The launcher exits right after it writes
// the final record (ready or failed), so a pidfd on the launcher named in the record is a precise,
// cheap wake-up for any number of waiters. (inotify was the first design: closing an inotify
// instance waits for an SRCU grace period — 20 to 200 ms measured here — which every client paid
// on return.) Before the launcher has recorded itself, and after it is gone, waiters poll with a
// short, growing interval.
class StartWatch {
 public:
  void wait(const Observation& o, Clock::time_point until) {
    pid_t launcher = (o.record && o.record->state == RecordState::starting) ? o.record->launcher_pid : 0;
    if (launcher != watched_) {
      watched_ = launcher;
      launcher_exited_ = false;
      int fd = launcher > 0 ? sys::pidfd_open_nothrow(launcher) : -1;
      pidfd_.reset(fd >= 0 ? fd : -1);
    }
    auto now = Clock::now();
    if (pidfd_ && !launcher_exited_) {
      // A recycled launcher pid would only cost a slice: the state is re-read after every wake.
      auto end = std::min(until, now + std::chrono::milliseconds(50));
      auto ms = std::chrono::ceil<std::chrono::milliseconds>(end - now).count();
      if (ms <= 0) return;
      pollfd p{pidfd_.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(ms)) > 0) launcher_exited_ = true;
      return;
    }
    // 1 ms at first, backing off to 20 ms.
    auto interval = std::chrono::milliseconds(std::min<int64_t>(20, 1 + polls_++ / 8));
    auto end = std::min(until, now + interval);
    if (end > now) std::this_thread::sleep_for(end - now);
  }

 private:
  pid_t watched_ = 0;
  bool launcher_exited_ = false;
  sys::UniqueFd pidfd_;
  int64_t polls_ = 0;
};

Observation observe(const Paths& paths) {
  Observation o;
  o.lock_held = lock_held(paths.lock);
  o.record = read_record(paths.record);
  return o;
}

Instance make_instance(const std::string& name, const InstanceRecord& record, bool started,
                       Clock::time_point begin) {
  Instance inst;
  inst.name = name;
  inst.pid = record.process.pid;
  inst.start_time = record.process.start_time;
  inst.ready = record.state == RecordState::ready;
  inst.started = started;
  inst.waited = Clock::now() - begin;
  inst.record = record;
  return inst;
}

[[noreturn]] void throw_failure(const std::string& name, const InstanceRecord& record) {
  int exit = exit_code::conflict;
  if (record.exit_status == exit_code::not_found && record.failure.starts_with("cannot execute")) {
    exit = exit_code::not_found;
  } else if (record.exit_status == exit_code::cannot_exec && record.failure.starts_with("cannot execute")) {
    exit = exit_code::cannot_exec;
  }
  std::string cause = record.failure;
  if (!record.log_path.empty()) cause += " (log: " + record.log_path + ")";
  throw StartFailure(name, cause, exit, record.exit_status, log_tail(record.log_path, 20));
}

// A ready record whose process is gone while the lock is still held: the command daemonized
// itself after readiness (or MAINPID was wrong). Under the spawn lock, point the record at the
// process that holds the instance lock. Returns true if the record was repaired.
bool repair_pid(const Paths& paths) {
  auto spawn = open_lock_file(paths.spawn_lock);
  if (ofd_try_lock(spawn.get()) != 0) return false;
  auto o = observe(paths);
  if (!o.lock_held || !o.record || o.record->state != RecordState::ready || verified_alive(*o.record)) {
    return false;
  }
  struct stat st {};
  if (::stat(paths.lock.c_str(), &st) != 0) return false;
  auto holders = sys::processes_locking(st, ::getpid());
  if (holders.empty()) return false;
  auto id = identity_of(holders.front());
  if (!id) return false;
  auto rec = *o.record;
  rec.process = *id;
  rec.forked = true;
  write_record(paths.record, rec);
  return true;
}

// A start whose launcher is gone (the spawn lock is free while the record says starting and the
// instance lock is held): nobody will record readiness. Under the spawn lock, if the readiness
// can be observed by anyone (none, tcp, unix, file), probe it and record it; notify and fd
// readiness went to the launcher and are lost. Returns true if the start is orphaned.
bool adopt_orphaned_start(const Paths& paths) {
  auto spawn = open_lock_file(paths.spawn_lock);
  if (ofd_try_lock(spawn.get()) != 0) return false;  // a launcher (or spawner) is at work
  auto o = observe(paths);
  if (!o.lock_held || !o.record || o.record->state != RecordState::starting) return false;
  auto rec = *o.record;
  if (!verified_alive(rec)) return true;
  std::optional<ReadySpec> spec;
  try {
    spec = ReadySpec::parse(rec.ready_mode);
  } catch (const Error&) {
    return true;
  }
  using Kind = ReadySpec::Kind;
  if (spec->kind == Kind::notify || spec->kind == Kind::fd) return true;
  if (spec->kind != Kind::none && !probe_ready(*spec)) return true;
  rec.state = RecordState::ready;
  rec.ready_unix_ns = sys::realtime_ns();
  rec.attempt_ended_boot_ns = sys::boottime_ns();
  write_record(paths.record, rec);
  return true;
}

std::string fmt_seconds(double secs) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%gs", secs);
  return buf;
}

}  // namespace

Instance ensure_running(const std::string& name, const std::vector<std::string>& command,
                        const EnsureOptions& options) {
  const auto begin = Clock::now();
  const int64_t call_boot_ns = sys::boottime_ns();
  validate_instance_name(name);
  if (command.empty()) throw Error(name, "ensure", "no command given", exit_code::usage);
  const auto paths = paths_for(resolve_state_dir(options.state_dir), name);
  const auto deadline = begin + options.ready_timeout;

  // Fast path: a verified, ready instance.
  auto o = observe(paths);
  if (o.verified_ready()) return make_instance(name, *o.record, false, begin);

  StartWatch watch;
  uint64_t my_attempt = 0;
  bool repaired = false;
  for (;;) {
    if (o.verified_ready()) {
      return make_instance(name, *o.record, o.record->attempt == my_attempt && my_attempt != 0, begin);
    }
    // A start that failed while this call was waiting is this call's failure too.
    if (o.record && o.record->state == RecordState::failed &&
        (o.record->attempt == my_attempt || o.record->attempt_ended_boot_ns >= call_boot_ns)) {
      throw_failure(name, *o.record);
    }
    if (!o.lock_held && my_attempt == 0) {
      auto spawn = open_lock_file(paths.spawn_lock);
      int rc = ofd_try_lock(spawn.get());
      if (rc != 0 && rc != -EAGAIN) throw Error(-rc, paths.spawn_lock, "cannot lock");
      if (rc == 0) {
        // Single flight: re-check under the spawn lock; the previous holder may have finished.
        auto instance = open_lock_file(paths.lock);
        o = observe(paths);
        if (o.record && o.record->state == RecordState::failed && o.record->attempt_ended_boot_ns >= call_boot_ns) {
          throw_failure(name, *o.record);
        }
        int held = ofd_held_elsewhere(instance.get());
        if (held < 0) throw Error(-held, paths.lock, "cannot test lock (F_OFD_GETLK)");
        if (held == 0) {
          int exec_err = 0;
          auto exe = sys::find_executable(command[0], exec_err);
          if (!exe) {
            throw Error(command[0], "cannot run command",
                        exec_err == ENOENT ? "command not found" : "permission denied (not executable)",
                        exec_err == ENOENT ? exit_code::not_found : exit_code::cannot_exec);
          }
          std::string log_path = options.log_path.empty() ? paths.log : options.log_path;
          if (log_path.front() != '/') {
            char cwd[4096];
            if (::getcwd(cwd, sizeof cwd) != nullptr) log_path = std::string(cwd) + "/" + log_path;
          }
          auto log = sys::open_or_throw(AT_FDCWD, log_path, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY,
                                        0644, "cannot open log");
          auto null = sys::open_or_throw(AT_FDCWD, "/dev/null", O_RDONLY, 0, "cannot open");
          SpawnPlan plan;
          plan.paths = paths;
          plan.executable = *exe;
          plan.argv = command;
          plan.ready = options.ready;
          plan.log_path = log_path;
          plan.environment = options.environment;
          InstanceRecord& rec = plan.record;
          rec.name = name;
          rec.process = ProcessIdentity{0, 0, this_boot_id(), this_host()};
          rec.command = command;
          rec.state = RecordState::starting;
          rec.ready_mode = options.ready.to_string();
          rec.attempt = sys::random_u64() | 1;
          rec.attempt_started_boot_ns = sys::boottime_ns();
          rec.log_path = log_path;
          // The starting record goes in before the instance lock is taken, so nobody can pair a
          // held lock with the previous instance's ready record.
          write_record(paths.record, rec);
          rc = ofd_try_lock(instance.get());
          if (rc != 0 && rc != -EAGAIN) throw Error(-rc, paths.lock, "cannot lock");
          if (rc == 0) {
            start_launcher(plan, spawn.get(), instance.get(), log.get(), null.get());
            my_attempt = rec.attempt;
          }
          // -EAGAIN: something outside the protocol took the instance lock; wait for it like
          // for any running instance.
        }
        // Our copies close here; the launcher (if any) keeps both locks.
        o = observe(paths);
        continue;
      }
      // Someone else is spawning: wait for their record.
    }
    if (o.lock_held && !repaired && o.record && o.record->state == RecordState::ready &&
        !verified_alive(*o.record)) {
      repaired = repair_pid(paths);
      o = observe(paths);
      continue;
    }
    bool orphaned = false;
    if (o.lock_held && o.record && o.record->state == RecordState::starting &&
        o.record->process.pid > 0) {
      orphaned = adopt_orphaned_start(paths);
      if (orphaned) {
        o = observe(paths);
        if (o.verified_ready()) continue;
      }
    }
    if (Clock::now() >= deadline) {
      auto secs = std::chrono::duration<double>(options.ready_timeout).count();
      std::string what = "not ready after " + fmt_seconds(secs);
      if (o.record && o.record->process.pid > 0 && o.lock_held) {
        what += " (pid " + std::to_string(o.record->process.pid) + " is " +
                std::string(to_string(o.record->state)) + ")";
      }
      if (orphaned) {
        what += "; its launcher is gone, so " + o.record->ready_mode +
                " readiness can no longer be received: `holdfast stop " + name + "` and retry";
      }
      throw Error(name, "ensure", what, exit_code::temp_fail);
    }
    watch.wait(o, deadline);
    o = observe(paths);
  }
}

}  // namespace holdfast
