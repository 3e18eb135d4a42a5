// instance_status, list_instances: read the lock and the record, verify the record (the same
// check ensure and stop make). Never takes a lock, never signals.
#include <dirent.h>

#include <cerrno>
#include <algorithm>
#include <set>

#include "sys/process.hpp"

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"

namespace holdfast {

using namespace ensure_detail;

namespace ensure_detail {

namespace {

// A supervised instance (holdfast supervise): the same states, with the supervisor's own state
// and its last decision in the reason. Lock free with a live main process is `running`: the
// supervisor was stopped with --keep (or killed) and the instance runs on, unsupervised.
InstanceStatus supervised_status(const Paths& paths, InstanceStatus s) {
  const InstanceRecord& r = *s.record;
  const SupervisionRecord& v = *r.supervision;
  const std::string pid = "pid " + std::to_string(r.process.pid);
  std::string detail = "supervised, " + v.state + ", restarts " + std::to_string(v.restarts);
  if (!v.last_exit.empty()) detail += ", last " + v.last_exit;
  if (v.next_attempt_unix_ns > 0 && (v.state == "backoff" || v.state == "paused")) {
    const int64_t left_ms = (v.next_attempt_unix_ns - sys::realtime_ns()) / 1000000;
    detail += ", next attempt in " + std::to_string(std::max<int64_t>(left_ms, 0)) + " ms";
  }
  if (!v.decision.empty()) detail += "; " + v.decision;
  if (s.lock_held) {
    if (r.state == RecordState::starting) {
      s.state = InstanceState::running;
      s.reason = (r.process.pid > 0 ? pid + " is starting (" : std::string("not running (")) + detail + ")";
      return s;
    }
    auto check = verify_instance(paths, r);
    if (r.state == RecordState::ready && check.verdict == Verdict::verified) {
      s.state = InstanceState::ready;
      s.reason = pid + " is ready (" + detail + ")";
    } else {
      s.state = InstanceState::unknown;
      s.reason = "the instance lock is held but the record (" + pid + ", " + std::string(to_string(r.state)) +
                 ") does not verify: " + (check.reason.empty() ? "not ready" : check.reason);
    }
    return s;
  }
  if (runs_unsupervised(r)) {
    s.state = InstanceState::running;
    s.reason = pid + " runs without a supervisor (" + detail + "); holdfast supervise NAME adopts it";
    return s;
  }
  s.state = (r.state == RecordState::ready || r.state == RecordState::starting) && !v.keep && v.state != "kept"
                ? InstanceState::stale
                : InstanceState::stopped;
  if (s.state == InstanceState::stale && r.process.pid <= 0) s.state = InstanceState::stopped;
  s.reason = (s.state == InstanceState::stale ? "record says " + std::string(to_string(r.state)) + " " + pid +
                                                    " but nobody holds the instance lock (its supervisor was killed)"
                                              : "stopped (" + detail + ")");
  return s;
}

}  // namespace

InstanceStatus status_at(const Paths& paths) {
  InstanceStatus s;
  s.name = paths.name;
  s.lock_held = lock_held(paths.lock);
  s.record = read_record(paths.record);
  const auto& r = s.record;
  const std::string pid = r ? "pid " + std::to_string(r->process.pid) : std::string();
  if (r && r->supervision) return supervised_status(paths, std::move(s));
  if (s.lock_held) {
    if (!r) {
      s.state = InstanceState::unknown;
      s.reason = "the instance lock is held but there is no readable record";
      return s;
    }
    if (r->state == RecordState::starting) {
      s.state = InstanceState::running;
      s.reason = r->process.pid > 0 ? pid + " is starting (not ready yet)" : "starting (not ready yet)";
      return s;
    }
    auto v = verify_instance(paths, *r);
    if (r->state == RecordState::ready && v.verdict == Verdict::verified) {
      s.state = InstanceState::ready;
      s.reason = pid + " is ready";
    } else {
      s.state = InstanceState::unknown;
      s.reason = "the instance lock is held but the record (" + pid + ", " + std::string(to_string(r->state)) +
                 ") does not verify: " + (v.reason.empty() ? "not ready" : v.reason);
    }
  } else if (!r) {
    s.state = InstanceState::stopped;
    s.reason = "no instance";
  } else if (r->state == RecordState::stopped) {
    s.state = InstanceState::stopped;
    s.reason = "stopped (last " + pid + (r->failure.empty() ? "" : ": " + r->failure) + ")";
  } else if (r->state == RecordState::failed) {
    s.state = InstanceState::stopped;
    s.reason = "failed before ready: " + r->failure;
  } else {
    s.state = InstanceState::stale;
    s.reason = "record says " + std::string(to_string(r->state)) + " " + pid +
               " but nobody holds the instance lock (its supervisor was killed)";
  }
  return s;
}

}  // namespace ensure_detail

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
    if (f.ends_with(".spawn.lock")) continue;
    if (!f.ends_with(".lock") && !f.ends_with(".json")) continue;
    auto base = f.substr(0, f.size() - 5);  // both suffixes are 5 bytes
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

}  // namespace holdfast
