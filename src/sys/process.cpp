#include "sys/process.hpp"

#include <dirent.h>
#include <pthread.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <string_view>

#include "sys/file.hpp"

namespace holdfast::sys {
namespace {

// Per-process values, set on first use and again in every forked child (before it returns from
// fork, so no code in the child sees the parent's).
struct ProcessCache {
  std::atomic<pid_t> pid{0};
  std::atomic<uint64_t> key{0};
  std::atomic<uint64_t> counter{0};
};
ProcessCache g_process;
std::once_flag g_process_once;

void refresh_process_cache() noexcept {
  // The pid last: whoever sees it set also sees this process's own key.
  g_process.key.store(random_u64(), std::memory_order_relaxed);
  g_process.counter.store(0, std::memory_order_relaxed);
  g_process.pid.store(::getpid(), std::memory_order_release);
}

void init_process_cache() {
  refresh_process_cache();
  // The child refreshes lazily: one that only execs (a forked command) makes no system call.
  ::pthread_atfork(nullptr, nullptr, [] { g_process.pid.store(0, std::memory_order_relaxed); });
}

void ensure_process_cache() noexcept {
  // Set means initialised, in this process (a forked child's is 0 until refreshed): the common
  // case is one load, not std::call_once's bookkeeping.
  if (g_process.pid.load(std::memory_order_acquire) != 0) return;
  std::call_once(g_process_once, init_process_cache);
  if (g_process.pid.load(std::memory_order_acquire) == 0) refresh_process_cache();  // a forked child
}

// splitmix64's finaliser: a bijection on 64-bit values, so distinct inputs give distinct outputs.
uint64_t mix(uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

pid_t current_pid() noexcept {
  ensure_process_cache();
  return g_process.pid.load(std::memory_order_relaxed);
}

uint64_t unique_u64() noexcept {
  ensure_process_cache();
  // key + counter is distinct per call (until 2^64 calls); mix keeps it distinct and hides both.
  const uint64_t n = g_process.counter.fetch_add(1, std::memory_order_relaxed);
  return mix(g_process.key.load(std::memory_order_relaxed) + n * 0x9e3779b97f4a7c15ULL);
}

int pidfd_open_nothrow(pid_t pid) noexcept {
  long fd = ::syscall(SYS_pidfd_open, pid, 0);  // pidfds are always close-on-exec
  return fd < 0 ? -errno : static_cast<int>(fd);
}

int pidfd_signal_nothrow(int pidfd, int sig) noexcept {
  return ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0 ? 0 : -errno;
}

std::optional<std::string> find_executable(const std::string& name, int& err) {
  auto usable = [&](const std::string& path) -> bool {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || S_ISDIR(st.st_mode)) return false;
    if (::access(path.c_str(), X_OK) != 0) {
      err = EACCES;
      return false;
    }
    return true;
  };
  err = ENOENT;
  if (name.empty()) return std::nullopt;
  if (name.find('/') != std::string::npos) {
    if (usable(name)) return name;
    struct stat st {};
    if (::stat(name.c_str(), &st) == 0) err = EACCES;
    return std::nullopt;
  }
  const char* env = std::getenv("PATH");
  std::string_view path = (env != nullptr && *env != '\0') ? env : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    auto colon = path.find(':');
    std::string dir(path.substr(0, colon));
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + name;
    if (usable(candidate)) return candidate;
    if (colon == std::string_view::npos) break;
    path.remove_prefix(colon + 1);
  }
  return std::nullopt;
}

void close_fds_except(const std::vector<int>& keep) noexcept {
  // `keep` is small; sort it in place on a stack copy to stay allocation-free after fork.
  int sorted[16];
  size_t n = 0;
  for (int fd : keep) {
    if (fd >= 3 && n < 16) sorted[n++] = fd;
  }
  std::sort(sorted, sorted + n);
  unsigned lo = 3;
  for (size_t i = 0; i < n; ++i) {
    auto fd = static_cast<unsigned>(sorted[i]);
    if (fd > lo) ::syscall(SYS_close_range, lo, fd - 1, 0);
    lo = fd + 1;
  }
  ::syscall(SYS_close_range, lo, UINT_MAX, 0);
}

void reset_signals() noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);  // EINVAL for KILL/STOP
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

int64_t boottime_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t realtime_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

namespace {

bool is_number(const char* s) {
  if (*s == '\0') return false;
  for (; *s != '\0'; ++s) {
    if (*s < '0' || *s > '9') return false;
  }
  return true;
}

// True if the fdinfo of /proc/PID/fd/FD lists a lock. The fd was already matched to the inode.
bool fd_has_lock(const std::string& proc, const char* fd) {
  auto info = read_proc_file(proc + "/fdinfo/" + fd, 1 << 16);
  if (!info) return false;
  return info->find("\nlock:\t") != std::string::npos;
}

}  // namespace

bool process_holds_lock_on(pid_t pid, const struct stat& st) {
  std::string proc = "/proc/" + std::to_string(pid);
  DIR* dir = ::opendir((proc + "/fd").c_str());
  if (dir == nullptr) return false;
  bool found = false;
  while (dirent* e = ::readdir(dir)) {
    if (!is_number(e->d_name)) continue;
    struct stat fst {};
    if (::stat((proc + "/fd/" + e->d_name).c_str(), &fst) != 0) continue;
    if (!same_inode(fst, st)) continue;
    if (fd_has_lock(proc, e->d_name)) {
      found = true;
      break;
    }
  }
  ::closedir(dir);
  return found;
}

int process_lock_state(pid_t pid, const struct stat& st) {
  std::string proc = "/proc/" + std::to_string(pid);
  DIR* dir = ::opendir((proc + "/fd").c_str());
  if (dir == nullptr) return -errno;
  int found = 0;
  while (dirent* e = ::readdir(dir)) {
    if (!is_number(e->d_name)) continue;
    struct stat fst {};
    if (::stat((proc + "/fd/" + e->d_name).c_str(), &fst) != 0) continue;
    if (same_inode(fst, st) && fd_has_lock(proc, e->d_name)) {
      found = 1;
      break;
    }
  }
  ::closedir(dir);
  return found;
}

int fd_lock_state(pid_t pid, int fd, const struct stat& st) {
  std::string proc = "/proc/" + std::to_string(pid);
  std::string name = std::to_string(fd);
  struct stat fst {};
  if (::stat((proc + "/fd/" + name).c_str(), &fst) != 0) return errno == ENOENT ? 0 : -errno;
  if (!same_inode(fst, st)) return 0;
  return fd_has_lock(proc, name.c_str()) ? 1 : 0;
}

std::vector<pid_t> processes_locking(const struct stat& st, pid_t except) {
  std::vector<pid_t> out;
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr) return out;
  while (dirent* e = ::readdir(dir)) {
    if (!is_number(e->d_name)) continue;
    auto pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid == except) continue;
    if (process_holds_lock_on(pid, st)) out.push_back(pid);
  }
  ::closedir(dir);
  std::sort(out.begin(), out.end());
  return out;
}

int set_time_slice(uint64_t slice_ns) noexcept {
  // struct sched_attr (sched_setattr(2)); glibc 2.36 declares no wrapper.
  struct {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
  } attr{};
  attr.size = sizeof attr;
  attr.sched_policy = SCHED_OTHER;
  errno = 0;
  const int nice = ::getpriority(PRIO_PROCESS, 0);
  if (errno != 0) return -errno;
  // SCHED_FLAG_RESET_ON_FORK: children start with the default slice. It would also reset a
  // negative nice value in children, which they must inherit: then nothing is changed.
  if (nice < 0) return -EPERM;
  attr.sched_flags = 0x01;  // SCHED_FLAG_RESET_ON_FORK
  attr.sched_nice = nice;
  attr.sched_runtime = slice_ns;
  if (::syscall(SYS_sched_setattr, 0, &attr, 0) != 0) return -errno;
  return 0;
}

}  // namespace holdfast::sys
