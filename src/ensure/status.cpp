// instance_status, list_instances: read the lock and the record, verify the record (the same
// check ensure and stop make). Never takes a lock, never signals.
#include <dirent.h>

#include <cerrno>
#include <set>

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"

namespace holdfast {

using namespace ensure_detail;

namespace ensure_detail {

InstanceStatus status_at(const Paths& paths) {
  InstanceStatus s;
  s.name = paths.name;
  s.lock_held = lock_held(paths.lock);
  s.record = read_record(paths.record);
  const auto& r = s.record;
  const std::string pid = r ? "pid " + std::to_string(r->process.pid) : std::string();
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
