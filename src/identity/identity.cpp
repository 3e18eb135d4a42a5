#include "holdfast/identity.hpp"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <string>

#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast {
namespace {

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Parses /proc/PID/stat. The comm field (2) may hold spaces and ')' so fields are counted from
// the last ')'. Returns state char, start time (field 22) and, if asked, the parent pid (field 4).
bool parse_stat(const std::string& text, char& state, uint64_t& start_time, pid_t* parent = nullptr) {
  // memrchr, not string::rfind: the ')' is near the start, and rfind's byte loop from the end
  // was a sixth of a warm ensure's instructions (callgrind).
  const void* found = ::memrchr(text.data(), ')', text.size());
  if (found == nullptr) return false;
  const auto close = static_cast<size_t>(static_cast<const char*>(found) - text.data());
  if (close + 2 >= text.size()) return false;
  const char* p = text.c_str() + close + 2;  // field 3
  const char* const text_end = text.data() + text.size();
  state = *p;
  // Advance from field 3 to field 22: 19 separators.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return false;
    ++p;
    if (field == 3 && parent != nullptr) std::from_chars(p, text_end, *parent);
  }
  // from_chars, not strtoull: no locale, and no page of libc's number parsing mapped for it.
  uint64_t v = 0;
  if (std::from_chars(p, text_end, v).ec != std::errc()) return false;
  start_time = v;
  return true;
}

bool exited_state(char state) { return state == 'Z' || state == 'X' || state == 'x'; }

// True if some thread of `pid` other than its leader has not exited. A thread-group leader that
// called pthread_exit() is shown as a zombie while its other threads keep the process alive.
bool has_live_thread(pid_t pid) {
  const std::string task = "/proc/" + std::to_string(pid) + "/task";
  DIR* dir = ::opendir(task.c_str());
  if (dir == nullptr) return false;
  bool live = false;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    if (std::to_string(pid) == e->d_name) continue;
    auto text = sys::read_file(task + "/" + e->d_name + "/stat", 4096);
    char state = 0;
    uint64_t start = 0;
    if (text && parse_stat(*text, state, start) && !exited_state(state)) {
      live = true;
      break;
    }
  }
  ::closedir(dir);
  return live;
}

// Inode of a namespace link such as /proc/self/ns/pid; 0 if it cannot be read. From the link's
// text, "pid:[4026531836]", which names the inode stat(2) would find through it: reading the text
// costs a third of resolving the link to the namespace's inode (~2.5 against ~6 us), and every
// `holdfast lock` reads two. Test Identity.NamespaceInodesAreThoseStatFinds.
uint64_t ns_inode(const std::string& link) {
  char text[64];
  const ssize_t n = ::readlink(link.c_str(), text, sizeof text - 1);
  if (n <= 0) return 0;
  text[n] = '\0';
  const char* open = std::strchr(text, '[');
  if (open == nullptr) return 0;
  uint64_t inode = 0;
  const auto [end, ec] = std::from_chars(open + 1, text + n, inode);
  if (ec != std::errc() || end == text + n || *end != ']') return 0;
  return inode;
}

class SystemProcessTable final : public ProcessTable {
 public:
  Entry lookup(pid_t pid) const override {
    auto text = sys::read_proc_file("/proc/" + std::to_string(pid) + "/stat", 4096);
    if (!text) {
      int err = errno;
      if (err == ENOENT || err == ESRCH) return {Entry::State::missing, 0, err};
      return {Entry::State::unreadable, 0, err};
    }
    char state = 0;
    uint64_t start = 0;
    pid_t parent = 0;
    if (!parse_stat(*text, state, start, &parent)) return {Entry::State::unreadable, 0, EINVAL};
    if (exited_state(state)) {
      if (!has_live_thread(pid)) return {Entry::State::zombie, start, 0};
      return {Entry::State::running, start, 0};  // a zombie leader's parent link is not reported
    }
    return {Entry::State::running, start, 0, parent};
  }
  int signal_probe(pid_t pid) const override { return ::kill(pid, 0) == 0 ? 0 : -errno; }
  const std::string& boot_id() const override { return this_boot_id(); }
  const std::string& host() const override { return this_host(); }
};

}  // namespace

uint64_t ProcessTable::pid_ns() const {
  static const uint64_t ns = ns_inode("/proc/self/ns/pid");
  return ns;
}

uint64_t ProcessTable::time_ns() const {
  // Not cached: unshare(CLONE_NEWTIME) changes it only for children, but a forked child that
  // inherited a cache from before would be wrong. One stat per judgment is cheap.
  return ns_inode("/proc/self/ns/time");
}

const std::string& this_boot_id() {
  static const std::string id = [] {
    auto text = sys::read_file("/proc/sys/kernel/random/boot_id", 128);
    return text ? trim(*text) : std::string();
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

const std::string& this_machine_id() {
  static const std::string id = [] {
    auto text = sys::read_file("/etc/machine-id", 128);
    return text ? trim(*text) : std::string();
  }();
  return id;
}

const std::string& ProcessTable::machine_id() const { return this_machine_id(); }

const ProcessTable& system_process_table() {
  static const SystemProcessTable table;
  return table;
}

namespace {

// Whatever can be read about `pid`; start_time 0 / empty boot id when unreadable.
ProcessIdentity read_identity(pid_t pid, bool* running) {
  ProcessIdentity id{pid, 0, this_boot_id(), this_host()};
  id.machine_id = this_machine_id();
  auto entry = system_process_table().lookup(pid);
  *running = entry.state == ProcessTable::Entry::State::running;
  if (*running) id.start_time = entry.start_time;
  const std::string ns = "/proc/" + std::to_string(pid) + "/ns/";
  id.pid_ns = ns_inode(ns + "pid");
  id.time_ns = ns_inode(ns + "time");
  return id;
}

}  // namespace

std::optional<ProcessIdentity> identity_of(pid_t pid) {
  bool running = false;
  ProcessIdentity id = read_identity(pid, &running);
  if (!running || !id.verifiable()) return std::nullopt;
  return id;
}

std::optional<ProcessIdentity> identity_of_forked_child(pid_t child, const ForkBracket& fork) {
  ProcessIdentity id = self_identity();
  id.pid = child;
  if (auto start = fork.start_time()) {
    id.start_time = *start;
  } else {
    auto entry = system_process_table().lookup(child);
    if (entry.state != ProcessTable::Entry::State::running) return std::nullopt;
    id.start_time = entry.start_time;
  }
  if (!id.verifiable()) return std::nullopt;
  return id;
}

namespace {

// CLOCK_BOOTTIME in /proc's start-time ticks; ok false where that cannot be read or converted
// exactly (the kernel divides nanoseconds by NSEC_PER_SEC / USER_HZ).
uint64_t boottime_ticks(bool& ok) noexcept {
  static const long hz = ::sysconf(_SC_CLK_TCK);
  constexpr uint64_t kNanosPerSecond = 1'000'000'000;
  struct timespec now {};
  ok = hz > 0 && kNanosPerSecond % static_cast<uint64_t>(hz) == 0 && ::clock_gettime(CLOCK_BOOTTIME, &now) == 0;
  if (!ok) return 0;
  const uint64_t nanos = static_cast<uint64_t>(now.tv_sec) * kNanosPerSecond + static_cast<uint64_t>(now.tv_nsec);
  return nanos / (kNanosPerSecond / static_cast<uint64_t>(hz));
}

}  // namespace

ForkBracket::ForkBracket() noexcept : before_(boottime_ticks(valid_)) {}

void ForkBracket::close() noexcept {
  bool ok = false;
  after_ = boottime_ticks(ok);
  valid_ = valid_ && ok;
  closed_ = true;
}

std::optional<uint64_t> ForkBracket::start_time() const noexcept {
  if (!closed_ || !valid_ || before_ != after_ || before_ == 0) return std::nullopt;
  return before_;
}

ProcessIdentity self_identity() {
  static const ProcessIdentity cached = [] {
    bool running = false;
    return read_identity(sys::current_pid(), &running);
  }();
  // After fork the cached value belongs to the parent; recompute for a child.
  const pid_t self = sys::current_pid();
  if (cached.pid == self) return cached;
  bool running = false;
  return read_identity(self, &running);
}

LivenessVerdict judge_liveness(const ProcessIdentity& recorded, const ProcessTable& table) {
  const std::string pid = "pid " + std::to_string(recorded.pid);
  if (recorded.host != table.host()) {
    return {Liveness::unknown, "recorded on host '" + recorded.host + "', this is '" + table.host() + "'"};
  }
  // One host name, two machines: their boot ids differ without any reboot. A record that names
  // its machine is judged here only if it is ours; one without (older records) as before.
  if (!recorded.machine_id.empty() && recorded.machine_id != table.machine_id()) {
    return {Liveness::unknown, "recorded on another machine named '" + recorded.host + "' (machine id " +
                                   recorded.machine_id + ")"};
  }
  // Without both boot ids, "another boot" cannot be told from "this boot" (ProcSubset=pid hides
  // /proc/sys): unverifiable, never proof of a reboot.
  if (recorded.boot_id.empty()) return {Liveness::unknown, "record has no boot id (unverifiable)"};
  if (table.boot_id().empty()) return {Liveness::unknown, "cannot read this machine's boot id (unverifiable)"};
  if (recorded.boot_id != table.boot_id()) {
    return {Liveness::dead, "recorded in an earlier boot (" + recorded.boot_id + ")"};
  }
  // A pid names a process only inside its pid namespace, and a time namespace shifts start
  // times: from another namespace (or when ours cannot be read) nothing can be proven.
  if (recorded.pid_ns != 0 && recorded.pid_ns != table.pid_ns()) {
    return {Liveness::unknown, pid + " was recorded in another pid namespace"};
  }
  if (recorded.time_ns != 0 && recorded.time_ns != table.time_ns()) {
    return {Liveness::unknown, pid + " was recorded in another time namespace"};
  }
  if (recorded.pid <= 0) return {Liveness::unknown, "record names no valid pid"};
  if (recorded.start_time == 0) return {Liveness::unknown, pid + ": record has no start time (unverifiable)"};
  using State = ProcessTable::Entry::State;
  auto entry = table.lookup(recorded.pid);
  switch (entry.state) {
    case State::zombie:
      return {Liveness::dead, pid + " has exited (zombie)"};
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
