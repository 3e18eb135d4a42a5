// verify_instance: the one check ensure, status and stop apply before trusting a record.
#include <csignal>
#include <cstring>
#include <mutex>

#include "ensure/internal.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast::ensure_detail {

int control_signal() noexcept { return SIGRTMIN + 7; }

namespace {

// is_descendant(main, supervisor), remembered for the last pair this process proved. Exact, not a
// cache that can go stale: the supervisor is a child subreaper, so a process below it stays below
// it for as long as it lives (orphans are reparented to it), and the caller re-verifies both
// identities (pid + start time, same boot) on every call. It saves walking the parent chain
// through /proc on every warm ensure (16% of a warm call's instructions, callgrind).
bool descends_from_supervisor(const InstanceRecord& record) {
  struct Pair {
    pid_t main = 0;
    uint64_t main_start = 0;
    pid_t supervisor = 0;
    uint64_t supervisor_start = 0;
    std::string boot_id;
    bool operator==(const Pair&) const = default;
  };
  static std::mutex mutex;
  static Pair proven;
  Pair pair{record.process.pid, record.process.start_time, record.launcher_pid, record.launcher_start_time,
            record.process.boot_id};
  {
    std::lock_guard lock(mutex);
    if (proven == pair) return true;
  }
  if (!is_descendant(record.process.pid, record.launcher_pid)) return false;
  std::lock_guard lock(mutex);
  proven = std::move(pair);
  return true;
}

// The system's process table, keeping the last entry it read: the main process's liveness
// judgment then also says who its parent was, from the same /proc/PID/stat read.
class RememberingTable final : public ProcessTable {
 public:
  Entry lookup(pid_t pid) const override { return last = system().lookup(pid); }
  int signal_probe(pid_t pid) const override { return system().signal_probe(pid); }
  const std::string& boot_id() const override { return system().boot_id(); }
  const std::string& host() const override { return system().host(); }
  const std::string& machine_id() const override { return system().machine_id(); }
  uint64_t pid_ns() const override { return system().pid_ns(); }
  uint64_t time_ns() const override { return system().time_ns(); }

  mutable Entry last{Entry::State::missing};

 private:
  static const ProcessTable& system() { return system_process_table(); }
};

}  // namespace

Verification verify_instance(const Paths& paths, const InstanceRecord& record) {
  auto refuted = [](std::string why) { return Verification{Verdict::refuted, std::move(why)}; };
  if (record.launcher_pid <= 0) return refuted("the record names no supervisor");
  const std::string sup = "supervisor pid " + std::to_string(record.launcher_pid);
  ProcessIdentity supervisor{record.launcher_pid, record.launcher_start_time, record.process.boot_id,
                             record.process.host};
  auto verdict = judge_liveness(supervisor);
  if (verdict.liveness == Liveness::dead) return refuted(sup + ": " + verdict.reason);
  if (verdict.liveness == Liveness::unknown) return {Verdict::unknown, sup + ": " + verdict.reason};
  struct stat st {};
  if (int rc = sys::stat_nothrow(paths.lock, st); rc != 0) {
    return refuted(paths.lock + ": " + std::strerror(-rc));
  }
  // Fast path: the descriptor the supervisor recorded (one stat and one small read); a scan of
  // all its descriptors otherwise.
  int holds = record.launcher_lock_fd >= 0 ? sys::fd_lock_state(record.launcher_pid, record.launcher_lock_fd, st) : 0;
  if (holds != 1) holds = sys::process_lock_state(record.launcher_pid, st);
  if (holds == 0) return refuted(sup + " does not hold the instance lock " + paths.lock);
  if (holds < 0) {
    return {Verdict::unknown, "cannot inspect " + sup + " (" + std::strerror(-holds) + ")"};
  }
  if (record.process.pid > 0) {
    const std::string main = "pid " + std::to_string(record.process.pid);
    RememberingTable table;
    auto main_verdict = judge_liveness(record.process, table);
    if (main_verdict.liveness != Liveness::alive) return refuted(main_verdict.reason);
    // An adopted main process (holdfast supervise) was verified by pid, start time and boot when
    // it was adopted and is watched through a pidfd: it descends from an earlier supervisor.
    const bool adopted = record.supervision && record.supervision->adopted;
    // The usual main process is the supervisor's child: the read that proved it alive names its
    // parent, which is the first step of is_descendant without reading /proc/PID/stat again
    // (every client waking at readiness made that second read).
    const bool child_of_supervisor = table.last.state == ProcessTable::Entry::State::running &&
                                     table.last.parent == record.launcher_pid;
    if (!adopted && !child_of_supervisor && !descends_from_supervisor(record)) {
      return refuted(main + " is not a process of the instance (not a descendant of its " + sup + ")");
    }
  }
  return {Verdict::verified, ""};
}

bool runs_unsupervised(const InstanceRecord& record) {
  if (!record.supervision || record.process.pid <= 0) return false;
  if (record.state != RecordState::ready && record.state != RecordState::starting) return false;
  return judge_liveness(record.process).liveness == Liveness::alive;
}

}  // namespace holdfast::ensure_detail
