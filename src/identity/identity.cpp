#include "holdfast/identity.hpp"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "sys/file.hpp"

namespace holdfast {
namespace {

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Parses /proc/PID/stat. The comm field (2) may hold spaces and ')' so fields are counted from
// the last ')'. Returns state char and start time (field 22).
bool parse_stat(const std::string& text, char& state, uint64_t& start_time) {
  auto close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return false;
  const char* p = text.c_str() + close + 2;  // field 3
  state = *p;
  // Advance from field 3 to field 22: 19 separators.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return false;
    ++p;
  }
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(p, &end, 10);
  if (end == p || errno != 0) return false;
  start_time = v;
  return true;
}

class SystemProcessTable final : public ProcessTable {
 public:
  Entry lookup(pid_t pid) const override {
    auto text = sys::read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
    if (!text) {
      int err = errno;
      if (err == ENOENT || err == ESRCH) return {Entry::State::missing, 0, err};
      return {Entry::State::unreadable, 0, err};
    }
    char state = 0;
    uint64_t start = 0;
    if (!parse_stat(*text, state, start)) return {Entry::State::unreadable, 0, EINVAL};
    if (state == 'Z' || state == 'X' || state == 'x') return {Entry::State::zombie, start, 0};
    return {Entry::State::running, start, 0};
  }
  int signal_probe(pid_t pid) const override { return ::kill(pid, 0) == 0 ? 0 : -errno; }
  const std::string& boot_id() const override { return this_boot_id(); }
  const std::string& host() const override { return this_host(); }
};

}  // namespace

const std::string& this_boot_id() {
  static const std::string id = [] {
    auto text = sys::read_file("/proc/sys/kernel/random/boot_id", 128);
    return text ? trim(*text) : std::string("unknown-boot");
  }();
  return id;
}

const std::string& this_host() {
  static const std::string host = [] {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0) return std::string("unknown-host");
    return std::string(buf);
  }();
  return host;
}

const ProcessTable& system_process_table() {
  static const SystemProcessTable table;
  return table;
}

std::optional<ProcessIdentity> identity_of(pid_t pid) {
  auto entry = system_process_table().lookup(pid);
  if (entry.state != ProcessTable::Entry::State::running) return std::nullopt;
  return ProcessIdentity{pid, entry.start_time, this_boot_id(), this_host()};
}

ProcessIdentity self_identity() {
  static const ProcessIdentity cached = [] {
    auto id = identity_of(::getpid());
    return id ? *id : ProcessIdentity{::getpid(), 0, this_boot_id(), this_host()};
  }();
  // After fork the cached value belongs to the parent; recompute for a child.
  if (cached.pid == ::getpid()) return cached;
  auto id = identity_of(::getpid());
  return id ? *id : ProcessIdentity{::getpid(), 0, this_boot_id(), this_host()};
}

LivenessVerdict judge_liveness(const ProcessIdentity& recorded, const ProcessTable& table) {
  const std::string pid = "pid " + std::to_string(recorded.pid);
  if (recorded.host != table.host()) {
    return {Liveness::unknown, "recorded on host '" + recorded.host + "', this is '" + table.host() + "'"};
  }
  if (recorded.boot_id != table.boot_id()) {
    return {Liveness::dead, "recorded in an earlier boot (" + recorded.boot_id + ")"};
  }
  if (recorded.pid <= 0) return {Liveness::unknown, "record names no valid pid"};
  using State = ProcessTable::Entry::State;
  auto entry = table.lookup(recorded.pid);
  switch (entry.state) {
    case State::zombie:
      return {Liveness::dead, pid + " is a zombie"};
    case State::running:
      if (entry.start_time != recorded.start_time) {
        return {Liveness::dead, pid + " was reused (start time " + std::to_string(recorded.start_time) +
                                    " != " + std::to_string(entry.start_time) + ")"};
      }
      return {Liveness::alive, pid + " is running"};
    case State::missing: {
      // /proc may hide other users' processes (hidepid): confirm absence with kill(2).
      int probe = table.signal_probe(recorded.pid);
      if (probe == -ESRCH) return {Liveness::dead, pid + " no longer exists"};
      if (probe == -EPERM) return {Liveness::unknown, pid + " exists but cannot be inspected (EPERM)"};
      return {Liveness::unknown, pid + " is not in /proc but answers kill(2)"};
    }
    case State::unreadable:
      return {Liveness::unknown,
              pid + ": cannot read /proc entry (" + std::string(std::strerror(entry.error)) + ")"};
  }
  return {Liveness::unknown, pid + ": unexpected state"};
}

}  // namespace holdfast
