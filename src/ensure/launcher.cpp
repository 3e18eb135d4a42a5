// The launcher: a short-lived monitor between the spawning client and the daemon.
//
// Process tree:  client ──fork──▶ intermediate (setsid, exits at once) ──fork──▶ launcher ──fork──▶ daemon
// The launcher is orphaned (reparented to init or a subreaper) so no client has to reap it and no
// client's death affects it. It inherits the locked spawn-lock and instance-lock descriptors; the
// daemon inherits the instance lock across exec. The launcher holds the spawn lock until the
// record says ready or failed, then exits; from then on the daemon alone holds the instance lock.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "ensure/internal.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

extern char** environ;

namespace holdfast::ensure_detail {
namespace {

constexpr int kProbeIntervalMs = 5;
constexpr const char* kDroppedLock =
    "exited with status 0 before ready, and no process holds the instance lock (if the command "
    "daemonizes itself, the daemon must keep fd $HOLDFAST_INSTANCE_FD open; or run it in the foreground)";

bool connect_unix(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return false;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  sys::UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return false;
  return ::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

bool connect_tcp(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &res) != 0) return false;
  bool ok = false;
  for (addrinfo* a = res; a != nullptr && !ok; a = a->ai_next) {
    sys::UniqueFd s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!s) continue;
    if (::connect(s.get(), a->ai_addr, a->ai_addrlen) == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{s.get(), POLLOUT, 0};
      if (::poll(&p, 1, 200) == 1) {
        int err = 0;
        socklen_t len = sizeof err;
        ok = ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
      }
    }
  }
  ::freeaddrinfo(res);
  return ok;
}

// Binds the sd_notify datagram socket: a path in the state directory if it fits in sun_path,
// else an abstract name ('@' in NOTIFY_SOCKET). Returns the fd and sets `env_value`.
int bind_notify_socket(const Paths& paths, std::string& env_value) {
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  socklen_t len = 0;
  if (paths.notify.size() < sizeof addr.sun_path) {
    ::unlink(paths.notify.c_str());
    std::memcpy(addr.sun_path, paths.notify.data(), paths.notify.size());
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + paths.notify.size() + 1);
    env_value = paths.notify;
  } else {
    char name[64];
    int n = std::snprintf(name, sizeof name, "holdfast/%d/%016llx", ::getpid(),
                          static_cast<unsigned long long>(sys::random_u64()));
    std::memcpy(addr.sun_path + 1, name, static_cast<size_t>(n));  // sun_path[0] = 0: abstract
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + static_cast<size_t>(n));
    env_value = std::string("@") + name;
  }
  if (::bind(s, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    int err = errno;
    ::close(s);
    return -err;
  }
  int one = 1;
  ::setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  return s;
}

class Launcher {
 public:
  Launcher(const SpawnPlan& plan, int spawn_fd, int instance_fd)
      : plan_(plan), record_(plan.record), spawn_fd_(spawn_fd), instance_fd_(instance_fd) {}

  [[noreturn]] void run();

 private:
  [[noreturn]] void fail(const std::string& cause, int exit_status);
  [[noreturn]] void succeed();
  void update_pid(pid_t pid);
  void handle_notify();
  void handle_ready_pipe();
  void daemon_exited(int status);
  [[noreturn]] void exec_daemon(const std::vector<std::string>& env, int exec_fd, int ready_w,
                                int il_target);
  void write() { write_record_nothrow(plan_.paths.record, record_); }

  const SpawnPlan& plan_;
  InstanceRecord record_;
  int spawn_fd_;
  int instance_fd_;
  pid_t daemon_ = 0;      // the forked child (our child)
  int watch_fd_ = -1;     // pidfd of the process whose death ends the wait
  bool watching_child_ = true;
  int notify_fd_ = -1;
  int ready_r_ = -1;
  bool ready_ = false;
  pid_t main_pid_ = 0;    // from MAINPID=
};

void Launcher::update_pid(pid_t pid) {
  auto entry = system_process_table().lookup(pid);
  record_.process.pid = pid;
  record_.process.start_time = entry.start_time;
  record_.process.boot_id = this_boot_id();
  record_.process.host = this_host();
}

void Launcher::fail(const std::string& cause, int exit_status) {
  record_.state = RecordState::failed;
  record_.failure = cause;
  record_.exit_status = exit_status;
  record_.attempt_ended_boot_ns = sys::boottime_ns();
  // Into the log first, so the tail a client shows after reading the record includes it.
  std::fprintf(stderr, "holdfast launcher: %s: %s\n", plan_.paths.name.c_str(), cause.c_str());
  std::fflush(stderr);
  // Drop our instance-lock copy before publishing, so nobody sees "failed" with the lock held.
  if (instance_fd_ >= 0) ::close(instance_fd_);
  instance_fd_ = -1;
  write();
  if (plan_.ready.kind == ReadySpec::Kind::notify) ::unlink(plan_.paths.notify.c_str());
  ::_exit(1);
}

void Launcher::succeed() {
  if (watching_child_) {
    // Readiness and the first process's exit can arrive in one poll round. If it already exited
    // 0 (a self-daemonizing command), the instance is the descendant holding the lock: follow it
    // before recording, rather than publish a pid that is gone. Peek without reaping (WNOWAIT)
    // so any other exit is still handled where it was.
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(daemon_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid == daemon_ && info.si_code == CLD_EXITED && info.si_status == 0) {
      int status = 0;
      if (::waitpid(daemon_, &status, WNOHANG) == daemon_) daemon_exited(status);
    }
  }
  if (main_pid_ > 0) update_pid(main_pid_);
  record_.state = RecordState::ready;
  record_.ready_unix_ns = sys::realtime_ns();
  record_.attempt_ended_boot_ns = sys::boottime_ns();
  // Close our instance-lock copy before publishing: from here the daemon alone holds it.
  if (instance_fd_ >= 0) ::close(instance_fd_);
  instance_fd_ = -1;
  write();
  if (plan_.ready.kind == ReadySpec::Kind::notify) ::unlink(plan_.paths.notify.c_str());
  ::_exit(0);  // releases the spawn lock
}

void Launcher::handle_notify() {
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(notify_fd_, buf, sizeof buf - 1, MSG_DONTWAIT);
    if (n < 0) return;  // EAGAIN: drained
    std::string_view msg(buf, static_cast<size_t>(n));
    bool ready = false;
    while (!msg.empty()) {
      auto nl = msg.find('\n');
      auto line = msg.substr(0, nl);
      if (line == "READY=1") ready = true;
      else if (line.starts_with("STATUS=")) record_.status = std::string(line.substr(7));
      else if (line.starts_with("MAINPID=")) {
        long pid = std::strtol(std::string(line.substr(8)).c_str(), nullptr, 10);
        if (pid > 0) main_pid_ = static_cast<pid_t>(pid);
      }
      if (nl == std::string_view::npos) break;
      msg.remove_prefix(nl + 1);
    }
    if (ready) ready_ = true;
  }
}

void Launcher::handle_ready_pipe() {
  char buf[256];
  ssize_t n = ::read(ready_r_, buf, sizeof buf);
  if (n > 0) {
    if (std::memchr(buf, '\n', static_cast<size_t>(n)) != nullptr) ready_ = true;
    return;
  }
  if (n == 0) {  // every writer closed it without a newline: readiness will never come this way
    ::close(ready_r_);
    ready_r_ = -1;
  }
}

void Launcher::daemon_exited(int status) {
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    // A self-daemonizing command: its first process exits 0 once a descendant runs. If the
    // descendant kept the instance-lock descriptor, the instance lives on; follow it.
    ::close(instance_fd_);
    instance_fd_ = -1;
    bool held = false;
    try {
      held = lock_held(plan_.paths.lock);
    } catch (...) {
    }
    if (!held) fail(kDroppedLock, 0);
    record_.forked = true;
    pid_t next = main_pid_;
    if (next <= 0) {
      struct stat st {};
      if (::stat(plan_.paths.lock.c_str(), &st) == 0) {
        auto holders = sys::processes_locking(st, ::getpid());
        if (!holders.empty()) next = holders.front();
      }
    }
    if (next > 0) update_pid(next);
    write();
    watching_child_ = false;
    ::close(watch_fd_);
    watch_fd_ = next > 0 ? sys::pidfd_open_nothrow(next) : -1;
    return;
  }
  fail(describe_wait_status(status) + " before ready", wait_status_code(status));
}

void Launcher::exec_daemon(const std::vector<std::string>& env, int exec_fd, int ready_w,
                           int il_target) {
  sys::reset_signals();
  const int target_ready = plan_.ready.kind == ReadySpec::Kind::fd ? plan_.ready.fd : -1;
  // Move the descriptors the daemon keeps above every target number, then dup2 into place
  // (dup2 clears FD_CLOEXEC on the copy: exactly the descriptors meant to be inherited).
  int base = std::max(64, target_ready + 1);
  int il_hi = ::fcntl(instance_fd_, F_DUPFD_CLOEXEC, base);
  int exec_hi = ::fcntl(exec_fd, F_DUPFD_CLOEXEC, base);
  int ready_hi = ready_w >= 0 ? ::fcntl(ready_w, F_DUPFD_CLOEXEC, base) : -1;
  auto die = [&](int err) {
    if (::write(exec_hi, &err, sizeof err) < 0) ::_exit(127);
    ::_exit(127);
  };
  if (il_hi < 0 || exec_hi < 0 || (ready_w >= 0 && ready_hi < 0)) die(errno);
  if (::dup2(il_hi, il_target) < 0) die(errno);
  if (ready_hi >= 0 && ::dup2(ready_hi, target_ready) < 0) die(errno);
  sys::close_fds_except({il_target, target_ready, exec_hi});

  std::vector<char*> argv;
  for (const auto& a : plan_.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  ::execve(plan_.executable.c_str(), argv.data(), envp.data());
  die(errno);
  ::_exit(127);
}

void Launcher::run() {
  // Readiness channel.
  std::string notify_env;
  int ready_w = -1;
  if (plan_.ready.kind == ReadySpec::Kind::notify) {
    notify_fd_ = bind_notify_socket(plan_.paths, notify_env);
    if (notify_fd_ < 0) fail("cannot bind sd_notify socket: " + std::string(std::strerror(-notify_fd_)), -1);
  } else if (plan_.ready.kind == ReadySpec::Kind::fd) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) fail("pipe: " + std::string(std::strerror(errno)), -1);
    ready_r_ = p[0];
    ready_w = p[1];
  }
  int ep[2];
  if (::pipe2(ep, O_CLOEXEC) != 0) fail("pipe: " + std::string(std::strerror(errno)), -1);

  // The daemon's lock descriptor number: the lowest >= 3 not taken by the readiness fd.
  int il_target = (plan_.ready.kind == ReadySpec::Kind::fd && plan_.ready.fd == 3) ? 4 : 3;
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view v(*e);
    if (v.starts_with("NOTIFY_SOCKET=") || v.starts_with("HOLDFAST_INSTANCE")) continue;
    env.emplace_back(v);
  }
  for (const auto& e : plan_.environment) env.push_back(e);
  env.push_back("HOLDFAST_INSTANCE=" + plan_.paths.name);
  env.push_back("HOLDFAST_INSTANCE_FD=" + std::to_string(il_target));
  if (!notify_env.empty()) env.push_back("NOTIFY_SOCKET=" + notify_env);

  daemon_ = ::fork();
  if (daemon_ < 0) fail("fork: " + std::string(std::strerror(errno)), -1);
  if (daemon_ == 0) exec_daemon(env, ep[1], ready_w, il_target);
  ::close(ep[1]);
  if (ready_w >= 0) ::close(ready_w);

  record_.launcher_pid = ::getpid();
  record_.spawned_unix_ns = sys::realtime_ns();
  update_pid(daemon_);
  write();

  // Exec result: EOF means exec succeeded; an int is the errno of a failed exec.
  int exec_err = 0;
  ssize_t n;
  do {
    n = ::read(ep[0], &exec_err, sizeof exec_err);
  } while (n < 0 && errno == EINTR);
  ::close(ep[0]);
  if (n == static_cast<ssize_t>(sizeof exec_err)) {
    int status = 0;
    ::waitpid(daemon_, &status, 0);
    fail("cannot execute " + plan_.executable + ": " + std::strerror(exec_err),
         exec_err == ENOENT ? exit_code::not_found : exit_code::cannot_exec);
  }
  if (plan_.ready.kind == ReadySpec::Kind::none) succeed();

  watch_fd_ = sys::pidfd_open_nothrow(daemon_);
  const bool probing = plan_.ready.kind == ReadySpec::Kind::tcp ||
                       plan_.ready.kind == ReadySpec::Kind::unix_socket ||
                       plan_.ready.kind == ReadySpec::Kind::file;
  for (;;) {
    if (probing && probe_ready(plan_.ready)) ready_ = true;
    if (ready_) succeed();
    pollfd fds[3];
    nfds_t nfds = 0;
    int watch_slot = -1, notify_slot = -1, ready_slot = -1;
    if (watch_fd_ >= 0) {
      watch_slot = static_cast<int>(nfds);
      fds[nfds++] = {watch_fd_, POLLIN, 0};
    }
    if (notify_fd_ >= 0) {
      notify_slot = static_cast<int>(nfds);
      fds[nfds++] = {notify_fd_, POLLIN, 0};
    }
    if (ready_r_ >= 0) {
      ready_slot = static_cast<int>(nfds);
      fds[nfds++] = {ready_r_, POLLIN, 0};
    }
    // Without a pidfd (the followed process could not be opened) poll the lock instead.
    // Probes run every few ms; a followed descendant's lock (which it may close) every 20 ms.
    int timeout = !watching_child_ || watch_fd_ < 0 ? 4 * kProbeIntervalMs : probing ? kProbeIntervalMs : -1;
    int r = ::poll(fds, nfds, timeout);
    if (r < 0 && errno != EINTR) fail("poll: " + std::string(std::strerror(errno)), -1);
    // Readiness first: a daemon that reports ready and exits at once was still ready.
    if (notify_slot >= 0 && fds[notify_slot].revents != 0) handle_notify();
    if (ready_slot >= 0 && fds[ready_slot].revents != 0) handle_ready_pipe();
    if (ready_) succeed();
    if (watching_child_) {
      int status = 0;
      bool exited = (watch_slot >= 0 && fds[watch_slot].revents != 0) || watch_fd_ < 0;
      if (exited && ::waitpid(daemon_, &status, WNOHANG) == daemon_) daemon_exited(status);
    } else {
      // Following a daemonized descendant: the instance lives exactly as long as the lock is held.
      bool gone = watch_slot >= 0 && fds[watch_slot].revents != 0;
      bool held = true;
      try {
        held = lock_held(plan_.paths.lock);
      } catch (...) {
      }
      if (!held) fail(kDroppedLock, 0);
      if (gone) {  // the followed pid exited but another still holds the lock: follow that one
        ::close(watch_fd_);
        watch_fd_ = -1;
        struct stat st {};
        if (::stat(plan_.paths.lock.c_str(), &st) == 0) {
          auto holders = sys::processes_locking(st, ::getpid());
          if (!holders.empty()) {
            update_pid(holders.front());
            write();
            watch_fd_ = sys::pidfd_open_nothrow(holders.front());
          }
        }
      }
    }
  }
}

}  // namespace

bool probe_ready(const ReadySpec& ready) {
  switch (ready.kind) {
    case ReadySpec::Kind::tcp: return connect_tcp(ready.host, ready.port);
    case ReadySpec::Kind::unix_socket: return connect_unix(ready.path);
    case ReadySpec::Kind::file: {
      struct stat st {};
      return ::stat(ready.path.c_str(), &st) == 0;
    }
    default: return false;
  }
}

void start_launcher(const SpawnPlan& plan, int spawn_lock_fd, int instance_lock_fd, int log_fd,
                    int null_fd) {
  pid_t mid = ::fork();
  if (mid < 0) throw Error(errno, plan.paths.lock, "cannot fork launcher");
  if (mid == 0) {
    // Intermediate: new session (no controlling terminal, immune to the client's process-group
    // signals), then fork the launcher and exit so the launcher is reparented away from the client.
    ::setsid();
    pid_t launcher = ::fork();
    if (launcher != 0) ::_exit(launcher < 0 ? 1 : 0);
    // Launcher stdio: /dev/null in, log out. Nothing else of the client's survives.
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    sys::close_fds_except({spawn_lock_fd, instance_lock_fd});
    sys::reset_signals();
    Launcher(plan, spawn_lock_fd, instance_lock_fd).run();
  }
  int status = 0;
  while (::waitpid(mid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw Error(EAGAIN, plan.paths.lock, "cannot fork launcher");
  }
}

}  // namespace holdfast::ensure_detail
