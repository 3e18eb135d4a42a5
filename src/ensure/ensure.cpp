// ensure_running: observe, single-flight spawn, wait for the record to say ready.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <thread>

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"
#include "sys/process.hpp"

extern char** environ;

namespace holdfast {

using namespace ensure_detail;
using Clock = std::chrono::steady_clock;

StartFailure::StartFailure(std::string name, const std::string& cause, int exit, int exit_status,
                           std::string log_tail)
    : Error(std::move(name), "did not become ready", cause, exit),
      exit_status_(exit_status),
      log_tail_(std::move(log_tail)) {}

namespace {

// What a client sees: the lock, the record, and whether the record verifies (verify_instance, the
// same check status and stop make).
struct Observation {
  bool lock_held = false;
  std::optional<InstanceRecord> record;
  Verification verification;

  bool verified_ready() const {
    return lock_held && record && record->state == RecordState::ready &&
           verification.verdict == Verdict::verified;
  }
};

// read_record, minus the JSON parse when the bytes are the ones this process parsed last: a warm
// ensure must re-read the record on every call (it can be replaced at any moment), but parsing
// identical bytes again was ~3/4 of its instructions (callgrind). Keyed by the full text, so a
// hit is exactly the parse of what is on disk now.
std::optional<InstanceRecord> read_record_memo(const std::string& path) {
  std::optional<std::string> text;
  for (int attempt = 0; attempt < 5; ++attempt) {  // ESTALE: renamed over on NFS; look up again
    text = sys::read_file(path, 1 << 20);
    if (text || errno != ESTALE) break;
  }
  if (!text) {
    if (errno == ENOENT) return std::nullopt;
    throw Error(errno, path, "cannot read instance record");
  }
  static std::mutex mutex;
  static std::string last_path;
  static std::string last_text;
  static std::optional<InstanceRecord> last_record;
  {
    std::lock_guard lock(mutex);
    if (last_path == path && last_text == *text) return last_record;
  }
  auto record = InstanceRecord::parse(*text);
  std::lock_guard lock(mutex);
  last_path = path;
  last_text = std::move(*text);
  last_record = record;
  return record;
}

// A ready record is verified first: a record that verifies has shown, through the kernel, that
// the supervisor's descriptor holds a lock on the inode at paths.lock (fdinfo lists only locks
// held), which is a stronger fact than F_OFD_GETLK's "someone holds it", so the warm path skips
// that open + GETLK + close. Any other record is paired with F_OFD_GETLK as before.
Observation observe(const Paths& paths) {
  Observation o;
  o.record = read_record_memo(paths.record);
  if (o.record && o.record->state == RecordState::ready) {
    o.verification = verify_instance(paths, *o.record);
    if (o.verification.verdict == Verdict::verified) {
      o.lock_held = true;
      return o;
    }
  }
  o.lock_held = lock_held(paths.lock);
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
  if (record.failure_kind == FailureKind::not_found) exit = exit_code::not_found;
  if (record.failure_kind == FailureKind::cannot_exec) exit = exit_code::cannot_exec;
  std::string cause = record.failure;
  if (!record.log_path.empty()) cause += " (log: " + record.log_path + ")";
  throw StartFailure(name, cause, exit, record.exit_status, log_tail(record.log_path, 20));
}

// Under the spawn lock, with the instance lock free: write the starting record, take the
// instance lock and fork the supervisor. Returns this start's attempt id (0 if something outside
// the protocol took the instance lock meanwhile).
uint64_t spawn_instance(const Paths& paths, const std::string& name, const std::vector<std::string>& command,
                        const EnsureOptions& options, int spawn_fd, int instance_fd) {
  int exec_err = 0;
  auto exe = sys::find_executable(command[0], exec_err);
  if (!exe) {
    throw Error(command[0], "cannot run command",
                exec_err == ENOENT ? "command not found" : "permission denied (not executable)",
                exec_err == ENOENT ? exit_code::not_found : exit_code::cannot_exec);
  }
  const std::string log_path = absolute(options.log_path.empty() ? paths.log : options.log_path);
  auto log = sys::open_or_throw(AT_FDCWD, log_path, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY, 0644,
                                "cannot open log");
  auto null = sys::open_or_throw(AT_FDCWD, "/dev/null", O_RDONLY, 0, "cannot open");
  SpawnPlan plan;
  plan.paths = paths;
  plan.executable = absolute(*exe);  // the daemon runs in --chdir, not here
  plan.argv = command;
  plan.ready = options.ready;
  plan.log_path = log_path;
  plan.environment = daemon_environment(options.environment);
  plan.daemon = options.daemon;
  InstanceRecord& rec = plan.record;
  rec.name = name;
  rec.process = ProcessIdentity{0, 0, this_boot_id(), this_host()};
  rec.command = command;
  rec.state = RecordState::starting;
  rec.ready_mode = options.ready.to_string();
  rec.attempt = sys::random_u64() | 1;
  rec.attempt_started_boot_ns = sys::boottime_ns();
  rec.log_path = log_path;
  // The starting record goes in before the instance lock is taken, so nobody can pair a held
  // lock with the previous instance's ready record.
  write_record(paths.record, rec);
  int rc = ofd_try_lock(instance_fd);
  if (rc == -EAGAIN) return 0;  // taken outside the protocol: wait for it like any instance
  if (rc != 0) throw Error(-rc, paths.lock, "cannot lock");
  start_supervisor(plan, spawn_fd, instance_fd, log.get(), null.get());
  return rec.attempt;
}

// Takes the spawn lock if free and, if the instance lock is still free under it, starts the
// instance. Returns the attempt id, or 0 if someone else is starting (or running) it.
uint64_t try_start(const Paths& paths, const std::string& name, const std::vector<std::string>& command,
                   const EnsureOptions& options, int64_t call_boot_ns) {
  auto spawn = open_lock_file(paths.spawn_lock);
  int rc = ofd_try_lock(spawn.get());
  if (rc == -EAGAIN) return 0;
  if (rc != 0) throw Error(-rc, paths.spawn_lock, "cannot lock");
  // Single flight: re-check under the spawn lock; the previous holder may have finished.
  auto instance = open_lock_file(paths.lock);
  auto rec = read_record(paths.record);
  if (rec && rec->state == RecordState::failed && rec->attempt_ended_boot_ns >= call_boot_ns) {
    throw_failure(name, *rec);
  }
  int held = ofd_held_elsewhere(instance.get());
  if (held < 0) throw Error(-held, paths.lock, "cannot test lock (F_OFD_GETLK)");
  if (held == 1) return 0;
  // A supervised instance whose supervisor stopped with --keep (or was killed) still runs: never
  // start a second one beside it.
  if (rec && runs_unsupervised(*rec)) {
    throw Error(name, "ensure",
                "pid " + std::to_string(rec->process.pid) +
                    " runs without its supervisor: holdfast supervise NAME adopts it, holdfast stop NAME stops it",
                exit_code::conflict);
  }
  return spawn_instance(paths, name, command, options, spawn.get(), instance.get());
  // Our copies of both locks close here; the supervisor keeps them.
}

std::string timeout_message(const EnsureOptions& options, const Observation& o) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%gs", std::chrono::duration<double>(options.ready_timeout).count());
  std::string what = std::string("not ready after ") + secs;
  if (o.lock_held && o.record) {
    if (o.record->state == RecordState::ready && o.verification.verdict != Verdict::verified) {
      what += " (the instance lock is held but the record does not verify: " + o.verification.reason + ")";
    } else if (o.record->process.pid > 0) {
      what += " (pid " + std::to_string(o.record->process.pid) + " is " + std::string(to_string(o.record->state)) + ")";
    }
  }
  return what;
}

// Waits for the start in progress to end, as an event rather than a poll: the supervisor holds the
// spawn lock from before the daemon exists until it has written the ready (or failed) record, so
// a shared lock request on it is granted — to every waiter at once — the instant that record is
// final (s6-style readiness as a kernel event; no byte to lose, no FIFO to clean up, nothing the
// supervisor must remember to send). The shared lock is dropped at once: it only wakes us, and
// must not hold back the next starter. Returns false, without waiting, if nobody is starting
// (the spawn lock is free), so the caller polls; true after waking or at the deadline.
bool wait_for_start_to_end(const Paths& paths, Clock::time_point deadline) {
  int fd = sys::open_nothrow(AT_FDCWD, paths.spawn_lock, O_RDONLY | O_NOCTTY);
  if (fd < 0) return false;
  sys::UniqueFd spawn(fd);
  int rc = sys::kernel_lock(fd, sys::KernelLockKind::ofd, /*exclusive=*/false, /*wait=*/false);
  if (rc != -EWOULDBLOCK) return false;  // free (0; closing drops it) or not lockable: nothing to wait on
  sys::DeadlineAlarm alarm(deadline);
  if (!alarm.armed()) return false;  // the application owns our alarm signal: poll instead
  // Returns 0 when the record is final, -EINTR at (or just after) the deadline.
  (void)sys::kernel_lock(fd, sys::KernelLockKind::ofd, /*exclusive=*/false, /*wait=*/true);
  return true;  // closing `spawn` drops the shared lock
}

// Sleeps until the next look: 1 ms at first, backing off to 10 ms.
void pause_before_next_look(int64_t& looks, Clock::time_point deadline) {
  auto interval = std::chrono::milliseconds(std::min<int64_t>(10, 1 + looks++ / 8));
  auto end = std::min(deadline, Clock::now() + interval);
  auto now = Clock::now();
  if (end > now) std::this_thread::sleep_for(end - now);
}

}  // namespace

Instance ensure_running(const std::string& name, const std::vector<std::string>& command,
                        const EnsureOptions& options) {
  const auto begin = Clock::now();
  const int64_t call_boot_ns = sys::boottime_ns();
  validate_instance_name(name);
  if (command.empty()) throw Error(name, "ensure", "no command given", exit_code::usage);
  const std::string dir = resolve_state_dir(options.state_dir);
  require_enforced_locks(dir);  // C4: on a filesystem that grants every lock, N clients start N
  const auto paths = paths_for(dir, name);
  const auto deadline = begin + options.ready_timeout;

  uint64_t my_attempt = 0;
  int64_t looks = 0;
  for (;;) {
    auto o = observe(paths);
    if (o.verified_ready()) {
      return make_instance(name, *o.record, my_attempt != 0 && o.record->attempt == my_attempt, begin);
    }
    // A start that failed while this call was waiting is this call's failure too.
    if (o.record && o.record->state == RecordState::failed &&
        (o.record->attempt == my_attempt || o.record->attempt_ended_boot_ns >= call_boot_ns)) {
      throw_failure(name, *o.record);
    }
    if (!o.lock_held && my_attempt == 0) {
      my_attempt = try_start(paths, name, command, options, call_boot_ns);
      if (my_attempt != 0) continue;
    }
    if (Clock::now() >= deadline) throw Error(name, "ensure", timeout_message(options, o), exit_code::temp_fail);
    if (!wait_for_start_to_end(paths, deadline)) pause_before_next_look(looks, deadline);
  }
}

}  // namespace holdfast
