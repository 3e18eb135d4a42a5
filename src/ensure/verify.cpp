// verify_instance: the one check ensure, status and stop apply before trusting a record.
#include <csignal>
#include <cstring>

#include "ensure/internal.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast::ensure_detail {

int control_signal() noexcept { return SIGRTMIN + 7; }

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
  int holds = sys::process_lock_state(record.launcher_pid, st);
  if (holds == 0) return refuted(sup + " does not hold the instance lock " + paths.lock);
  if (holds < 0) {
    return {Verdict::unknown, "cannot inspect " + sup + " (" + std::strerror(-holds) + ")"};
  }
  if (record.process.pid > 0) {
    const std::string main = "pid " + std::to_string(record.process.pid);
    auto main_verdict = judge_liveness(record.process);
    if (main_verdict.liveness != Liveness::alive) return refuted(main_verdict.reason);
    if (!is_descendant(record.process.pid, record.launcher_pid)) {
      return refuted(main + " is not a process of the instance (not a descendant of its " + sup + ")");
    }
  }
  return {Verdict::verified, ""};
}

}  // namespace holdfast::ensure_detail
