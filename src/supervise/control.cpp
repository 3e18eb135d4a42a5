// restart_instance: the client side of `holdfast restart` — verify, ask the supervisor through its
// pidfd, wait for the new start's record to say ready.
#include <poll.h>

#include <thread>

#include "ensure/internal.hpp"
#include "holdfast/supervise.hpp"

namespace holdfast {

using namespace ensure_detail;
using Clock = std::chrono::steady_clock;

Instance restart_instance(const std::string& name, const std::string& state_dir, std::chrono::milliseconds timeout) {
  const auto begin = Clock::now();
  const auto deadline = begin + timeout;
  validate_instance_name(name);
  const auto paths = paths_for(resolve_state_dir(state_dir), name);
  auto status = status_at(paths);
  if (!status.lock_held || !status.record) {
    throw Error(name, "restart", "not supervised (no supervisor holds the instance lock)", exit_code::usage);
  }
  const InstanceRecord rec = *status.record;
  if (!rec.supervision) {
    throw Error(name, "restart", "not a supervised instance (started by ensure): use stop, then ensure",
                exit_code::usage);
  }
  auto v = verify_instance(paths, rec);
  if (v.verdict != Verdict::verified && rec.state == RecordState::ready) {
    throw Error(paths.record, "refusing to restart pid " + std::to_string(rec.process.pid), v.reason, exit_code::data);
  }
  auto pidfd = pin_supervisor(paths, rec);
  if (!pidfd) throw Error(name, "restart", "the supervisor exited meanwhile", exit_code::temp_fail);
  send_request(pidfd.get(), paths, ControlMode::restart, 0);
  for (;;) {
    auto now_status = status_at(paths);
    const auto& r = now_status.record;
    if (r && r->attempt != rec.attempt && now_status.state == InstanceState::ready) {
      Instance inst;
      inst.name = name;
      inst.pid = r->process.pid;
      inst.start_time = r->process.start_time;
      inst.ready = true;
      inst.started = true;
      inst.waited = Clock::now() - begin;
      inst.record = *r;
      return inst;
    }
    if (!now_status.lock_held) {
      throw Error(name, "restart", "the supervisor exited instead of restarting: " + now_status.reason,
                  exit_code::conflict);
    }
    if (Clock::now() >= deadline) {
      throw Error(name, "restart", "the new start is not ready in time: " + now_status.reason, exit_code::temp_fail);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace holdfast
