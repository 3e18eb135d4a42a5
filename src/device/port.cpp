// The serial port as a shared resource: opened without touching the modem lines and held against
// all three locking schemes other tools use (flock, UUCP lock files, TIOCEXCL).
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "holdfast/error.hpp"
#include "holdfast/identity.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"
#include "sys/serial.hpp"

namespace holdfast::device {

namespace detail {

std::string describe_process(pid_t pid) {
  auto comm = sys::read_file("/proc/" + std::to_string(pid) + "/comm", 256);
  if (!comm) return fmt::format("pid {}", pid);
  while (!comm->empty() && (comm->back() == '\n' || comm->back() == ' ')) comm->pop_back();
  return fmt::format("{}, pid {}", *comm, pid);
}

std::vector<pid_t> processes_with_device_open(dev_t rdev) {
  std::vector<pid_t> out;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  const pid_t self = ::getpid();
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || pid == self) continue;
    std::string fds = fmt::format("/proc/{}/fd", pid);
    DIR* d = ::opendir(fds.c_str());
    if (d == nullptr) continue;
    while (dirent* f = ::readdir(d)) {
      if (f->d_name[0] == '.') continue;
      struct stat st{};
      if (sys::stat_nothrow(fds + "/" + f->d_name, st) == 0 && S_ISCHR(st.st_mode) &&
          st.st_rdev == rdev) {
        out.push_back(static_cast<pid_t>(pid));
        break;
      }
    }
    ::closedir(d);
  }
  ::closedir(proc);
  return out;
}

std::string uucp_lock_dir(const PortOptions& options) {
  if (!options.uucp_lock) return "";
  if (!options.uucp_lock_dir.empty()) return options.uucp_lock_dir;
  if (const char* env = std::getenv("HOLDFAST_UUCP_LOCK_DIR"); env != nullptr && *env != '\0')
    return env;
  struct stat st{};
  if (sys::stat_nothrow("/run/lock", st) == 0 && S_ISDIR(st.st_mode)) return "/run/lock";
  if (sys::stat_nothrow("/var/lock", st) == 0 && S_ISDIR(st.st_mode)) return "/var/lock";
  return "";
}

std::string uucp_lock_path(const std::string& dir, const std::string& real_path) {
  // minicom, picocom and screen name the lock after the device's basename.
  return dir + "/LCK.." + sys::basename_of(real_path);
}

pid_t parse_uucp_pid(std::string_view content) {
  size_t i = 0;
  while (i < content.size() && content[i] == ' ') ++i;
  long v = 0;
  size_t digits = 0;
  while (i < content.size() && content[i] >= '0' && content[i] <= '9' && digits < 10) {
    v = v * 10 + (content[i] - '0');
    ++i;
    ++digits;
  }
  if (digits > 0 && v > 0 && v <= INT_MAX) return static_cast<pid_t>(v);
  // Binary UUCP: a native int. Real pids (< 2^22) have a zero high byte, so four printable
  // characters are text, not a pid.
  if (content.size() == 4 && std::any_of(content.begin(), content.end(), [](char c) {
        return static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f;
      })) {
    int b = 0;
    std::memcpy(&b, content.data(), sizeof b);
    if (b > 0) return b;
  }
  return 0;
}

namespace {

// The realtime second a process started, from its start ticks and the boot time.
std::optional<int64_t> start_unix_seconds(uint64_t start_ticks) {
  auto stat = sys::read_file("/proc/stat", 1 << 16);
  if (!stat) return std::nullopt;
  auto pos = stat->find("\nbtime ");
  if (pos == std::string::npos) return std::nullopt;
  int64_t btime = std::strtoll(stat->c_str() + pos + 7, nullptr, 10);
  long hz = ::sysconf(_SC_CLK_TCK);
  if (btime <= 0 || hz <= 0) return std::nullopt;
  return btime + static_cast<int64_t>(start_ticks / static_cast<uint64_t>(hz));
}

}  // namespace

std::string uucp_holder(const std::string& path, bool* stale) {
  if (stale != nullptr) *stale = false;
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  if (fd == -ENOENT) return "";
  if (fd < 0) return fmt::format("an unreadable UUCP lock {} ({})", path, std::strerror(-fd));
  sys::UniqueFd owned(fd);
  struct stat st{};
  auto content = sys::pread_all(fd, 64);
  if (!content || sys::fstat_nothrow(fd, st) != 0)
    return fmt::format("an unreadable UUCP lock {}", path);
  pid_t pid = parse_uucp_pid(*content);
  // A lock we cannot interpret is held: fail closed.
  if (pid == 0) return fmt::format("a UUCP lock {} with no readable pid", path);
  const auto& table = system_process_table();
  auto entry = table.lookup(pid);
  using State = ProcessTable::Entry::State;
  bool dead = entry.state == State::zombie ||
              (entry.state == State::missing && table.signal_probe(pid) == -ESRCH);
  if (!dead && entry.state == State::running) {
    // Proof of PID reuse: the live process started after the lock file was written (2 s slack for
    // the tick/second rounding of both clocks).
    auto started = start_unix_seconds(entry.start_time);
    if (started && *started > static_cast<int64_t>(st.st_mtim.tv_sec) + 2) dead = true;
  }
  if (dead) {
    if (stale != nullptr) *stale = true;
    return "";
  }
  return fmt::format("{} (UUCP lock {})", describe_process(pid), path);
}

}  // namespace detail

using detail::describe_process;

struct Port::State {
  std::string path;       // as given
  std::string real_path;  // symlinks resolved (by-id names)
  sys::UniqueFd fd;
  std::string uucp_path;  // empty if we hold none
  struct stat uucp_st{};
  bool exclusive = false;

  ~State() {
    if (exclusive && fd) sys::serial_set_exclusive(fd.get(), false);
    release_uucp();
  }
  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Removes our UUCP lock, and only ours: it is first renamed to a private name, checked to be
  // the inode we created, and only then unlinked (else put back).
  void release_uucp() noexcept {
    if (uucp_path.empty()) return;
    std::string priv = uucp_path + ".holdfast-release." + std::to_string(sys::random_u64());
    if (::rename(uucp_path.c_str(), priv.c_str()) == 0) {
      struct stat st{};
      const bool ours = sys::lstat_nothrow(priv, st) == 0 && sys::same_inode(st, uucp_st);
      // Not ours (someone wrongly reclaimed ours and took the slot): put theirs back first.
      if (ours || ::link(priv.c_str(), uucp_path.c_str()) == 0) ::unlink(priv.c_str());
    }
    uucp_path.clear();
  }
};

namespace {

[[noreturn]] void throw_busy(const std::string& path, const std::string& who) {
  throw DeviceError(fmt::format("{}: port busy: held by {}", path, who), exit_code::port_busy);
}

// Creates DIR/LCK..NAME holding our pid ("%10d\n"), atomically via link(2) from a private temp
// file. A stale lock (holder proven dead) is reclaimed by rename to a private name and only
// removed when it is the very file that was judged.
void take_uucp_lock(Port::State& s, const std::string& dir) {
  const std::string lock = detail::uucp_lock_path(dir, s.real_path);
  const std::string tmp = lock + ".holdfast-tmp." + std::to_string(sys::random_u64());
  {
    int fd = sys::open_nothrow(AT_FDCWD, tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd == -EACCES || fd == -EROFS || fd == -ENOENT) return;  // nobody can lock there either
    if (fd < 0) throw Error(-fd, tmp, "create UUCP lock");
    sys::UniqueFd owned(fd);
    std::string content = fmt::format("{:>10}\n", ::getpid());
    int r = sys::write_all(fd, content);
    if (r < 0) {
      ::unlink(tmp.c_str());
      throw Error(-r, tmp, "write UUCP lock");
    }
  }
  struct TmpGuard {
    const std::string& p;
    ~TmpGuard() { ::unlink(p.c_str()); }
  } guard{tmp};
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (::link(tmp.c_str(), lock.c_str()) == 0) {
      sys::lstat_nothrow(lock, s.uucp_st);
      s.uucp_path = lock;
      return;
    }
    if (errno != EEXIST) throw Error(errno, lock, "create UUCP lock");
    struct stat judged{};
    if (sys::lstat_nothrow(lock, judged) != 0) continue;  // vanished: retry
    bool stale = false;
    std::string who = detail::uucp_holder(lock, &stale);
    if (!stale) {
      if (who.empty()) continue;  // removed meanwhile
      throw_busy(s.path, who);
    }
    std::string moved = lock + ".holdfast-stale." + std::to_string(sys::random_u64());
    if (::rename(lock.c_str(), moved.c_str()) != 0) continue;
    struct stat now{};
    if (sys::lstat_nothrow(moved, now) == 0 && sys::same_inode(now, judged)) {
      ::unlink(moved.c_str());
    } else {
      // A fresh lock replaced the stale one between our check and the rename: put it back.
      if (::link(moved.c_str(), lock.c_str()) == 0) ::unlink(moved.c_str());
    }
  }
  throw_busy(s.path, "a UUCP lock " + lock + " that keeps changing");
}

}  // namespace

Port::Port(std::unique_ptr<State> state) noexcept : state_(std::move(state)) {}
Port::Port(Port&&) noexcept = default;
Port& Port::operator=(Port&&) noexcept = default;
Port::~Port() = default;
int Port::fd() const noexcept { return state_->fd.get(); }
const std::string& Port::path() const noexcept { return state_->path; }

Port Port::open(const std::string& path, const PortOptions& options) {
  auto s = std::make_unique<State>();
  s->path = path;
  char resolved[PATH_MAX];
  s->real_path = ::realpath(path.c_str(), resolved) != nullptr ? std::string(resolved) : path;

  int fd = sys::open_nothrow(AT_FDCWD, s->real_path, O_RDWR | O_NOCTTY | O_NONBLOCK);
  if (fd == -EBUSY) {
    struct stat st{};
    std::string who = "another program (TIOCEXCL)";
    if (sys::stat_nothrow(s->real_path, st) == 0) {
      auto pids = detail::processes_with_device_open(st.st_rdev);
      if (!pids.empty()) who = describe_process(pids.front()) + " (TIOCEXCL)";
    }
    throw_busy(path, who);
  }
  if (fd < 0) throw Error(-fd, path, "open serial port");
  s->fd.reset(fd);
  if (!::isatty(fd)) throw Error(path, "open serial port", "not a tty", holdfast::exit_code::usage);

  // 1. flock: pyserial's exclusive=True and mpremote.
  for (;;) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) break;
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) throw Error(errno, path, "flock");
    struct stat st{};
    std::string who = "another program (flock)";
    if (sys::fstat_nothrow(fd, st) == 0) {
      auto pids = sys::processes_locking(st, ::getpid());
      if (!pids.empty()) who = describe_process(pids.front()) + " (flock)";
    }
    throw_busy(path, who);
  }
  // 2. UUCP lock file: minicom, picocom, screen.
  if (std::string dir = detail::uucp_lock_dir(options); !dir.empty()) take_uucp_lock(*s, dir);
  // 3. TIOCEXCL: later opens fail with EBUSY (root is exempt, hence the two above).
  if (sys::serial_set_exclusive(fd, true) == 0) s->exclusive = true;
  if (int r = sys::serial_make_raw(fd, options.baud); r < 0) throw Error(-r, path, "set raw mode");
  return Port(std::move(s));
}

std::string port_holder(const std::string& path, const PortOptions& options) {
  char resolved[PATH_MAX];
  std::string real = ::realpath(path.c_str(), resolved) != nullptr ? std::string(resolved) : path;
  struct stat st{};
  if (sys::stat_nothrow(real, st) != 0) return "";
  if (std::string dir = detail::uucp_lock_dir(options); !dir.empty()) {
    std::string who = detail::uucp_holder(detail::uucp_lock_path(dir, real));
    if (!who.empty()) return who;
  }
  auto lockers = sys::processes_locking(st, ::getpid());
  if (!lockers.empty()) return describe_process(lockers.front()) + " (flock)";
  return "";
}

}  // namespace holdfast::device
