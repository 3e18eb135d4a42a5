// `holdfast lock --backend etcd://HOST:PORT[,...]/PREFIX NAME COMMAND...`: the command runs while
// NAME is held in etcd (docs/ETCD.md). Unlike a kernel lock, nothing survives holdfast: the lease
// lives only while holdfast renews it, so holdfast stays as the command's parent, and when the
// lease can no longer be proven alive it stops the command (SIGTERM, SIGKILL after a grace) and
// exits lock_lost (90), saying so on stderr.
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstddef>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "duration.hpp"
#include "holdfast/error.hpp"
#include "holdfast/etcd.hpp"
#include "holdfast/identity.hpp"
#include "holdfast/lock.hpp"
#include "lock_args.hpp"
#include "lock_etcd.hpp"
#include "lock_run.hpp"
#include "sys/fd.hpp"
#include "sys/process.hpp"
#include "sys/spawn.hpp"

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace holdfast::cli {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The forwarded signals, blocked for the lifetime of the object (and in every thread started
// meanwhile, such as the lease's keepalive thread) and read from a signalfd instead.
class SignalsToFd {
 public:
  SignalsToFd() {
    sigemptyset(&set_);
    for (int s : kForwardedSignals) {
      struct sigaction old {};
      ::sigaction(s, nullptr, &old);
      if (old.sa_handler != SIG_IGN) sigaddset(&set_, s);  // ignored at start (nohup): stays ignored
    }
    ::sigprocmask(SIG_BLOCK, &set_, &previous_);
    fd_.reset(::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!fd_) throw Error(errno, "", "cannot create a signalfd");
  }
  ~SignalsToFd() { ::sigprocmask(SIG_SETMASK, &previous_, nullptr); }
  SignalsToFd(const SignalsToFd&) = delete;
  SignalsToFd& operator=(const SignalsToFd&) = delete;
  int fd() const noexcept { return fd_.get(); }
  // The signal mask this process had before: the command's, as flock(1)'s command gets its own.
  const sigset_t& previous() const noexcept { return previous_; }
  // A forwarded signal that arrived and has not been read: 0 if none.
  int pending() const noexcept {
    sigset_t p;
    sigpending(&p);
    for (int s : kForwardedSignals) {
      if (sigismember(&set_, s) == 1 && sigismember(&p, s) == 1) return s;
    }
    return 0;
  }
  // Reads one signal from the fd: 0 if none.
  int take() const noexcept {
    signalfd_siginfo info{};
    return ::read(fd_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info) ? static_cast<int>(info.ssi_signo) : 0;
  }
  // Dies of `sig` as if it had never been blocked (after the lock's lease was revoked).
  [[noreturn]] void die_of(int sig) const {
    ::signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    ::sigprocmask(SIG_UNBLOCK, &one, nullptr);
    ::raise(sig);
    ::_exit(128 + sig);
  }

 private:
  sigset_t set_{};
  sigset_t previous_{};
  sys::UniqueFd fd_;
};

std::string record_json(const std::vector<ProcessIdentity>& processes, const std::vector<std::string>& command,
                        std::chrono::seconds ttl) {
  nlohmann::json procs = nlohmann::json::array();
  for (const auto& p : processes) {
    procs.push_back({{"pid", p.pid}, {"start_time", p.start_time}, {"boot_id", p.boot_id}, {"host", p.host},
                     {"machine_id", p.machine_id}});
  }
  return nlohmann::json{{"holdfast", 1},
                        {"backend", "etcd"},
                        {"host", this_host()},
                        {"processes", procs},
                        {"command", cap_command(command)},
                        {"acquired_unix_ns", sys::realtime_ns()},
                        {"ttl_s", ttl.count()}}
      .dump();
}

// Under `ensure --backend etcd` (HOLDFAST_ETCD_NOTIFY_READY=1): tells the supervisor, by an
// sd_notify READY=1 on $NOTIFY_SOCKET, that NAME is now held, so the instance counts as ready only
// once it holds the lock in etcd (not when this process was executed). Returns false if it
// could not be sent (the ensure then times out rather than report a lock it cannot confirm).
bool notify_ready() {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const size_t len = std::strlen(path);
  if (len >= sizeof addr.sun_path) return false;
  std::memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';
  sys::UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return false;
  constexpr char kReady[] = "READY=1";
  const auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  return ::sendto(fd.get(), kReady, sizeof kReady - 1, MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr), size) >= 0;
}

// Waits up to `limit` for the child to exit (its pidfd becomes readable). True if it did.
bool exited_within(const sys::Child& child, milliseconds limit) {
  const auto until = Clock::now() + limit;
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(until - Clock::now()).count();
    pollfd p{child.pidfd(), POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left)));
    if (rc > 0) return true;
    if (rc == 0 || (rc < 0 && errno != EINTR)) return false;
  }
}

}  // namespace

EtcdOptions etcd_options_of(const std::string& url, const EtcdFlags& flags) {
  EtcdOptions o = parse_etcd_url(url);
  if (flags.ttl.count() > 0) {
    o.ttl = std::chrono::ceil<std::chrono::seconds>(flags.ttl);  // whole seconds, rounded up
  }
  o.cacert = flags.cacert;
  o.cert = flags.cert;
  o.key = flags.key;
  if (!flags.user.empty()) {
    const auto colon = flags.user.find(':');
    o.user = flags.user.substr(0, colon);
    if (colon != std::string::npos) {
      o.password = flags.user.substr(colon + 1);
    } else if (const char* p = std::getenv("HOLDFAST_ETCD_PASSWORD"); p != nullptr) {
      o.password = p;
    }
  }
  return o;
}

int lock_etcd(const LockInvocation& inv, const std::string& prog) {
  EtcdOptions options = etcd_options_of(*inv.backend, inv.etcd);
  const std::string& name = inv.path;
  if (inv.operation != LockInvocation::Operation::exclusive) {
    throw Error(name, "--backend etcd", "etcd locks are exclusive only (no -s, no -u)", exit_code::usage);
  }
  if (inv.no_fork) throw Error(name, "--no-fork with --backend etcd", "the lease needs holdfast alive; run without -F", exit_code::usage);
  std::optional<Clock::time_point> deadline;
  bool nonblock = inv.nonblock;
  if (inv.timeout && !inv.nonblock) {
    if (inv.timeout->is_zero()) {
      nonblock = true;
    } else if (inv.timeout->is_invalid()) {
      throw Error("", "cannot set up timer", std::strerror(EINVAL), exit_code::os_error);
    } else if (inv.timeout->duration() != kNoLimit) {
      deadline = deadline_after(Clock::now(), inv.timeout->duration());
    }
  }

  SignalsToFd signals;  // before any thread exists, so the keepalive thread has them blocked too
  options.cancel = [&signals] { return signals.pending() != 0; };
  const auto started = Clock::now();
  std::optional<EtcdLock> lock =
      EtcdLock::acquire(options, name, record_json({self_identity()}, inv.command, options.ttl), nonblock, deadline);
  const double waited = std::chrono::duration<double>(Clock::now() - started).count();
  if (!lock) {
    if (int sig = signals.pending(); sig != 0) signals.die_of(sig);  // interrupted while waiting
    if (inv.verbose) {
      std::fprintf(stderr, "%s: %s\n", prog.c_str(), nonblock ? "failed to get lock" : "timeout while waiting to get lock");
    }
    if (inv.json) std::printf("%s\n", nlohmann::json{{"acquired", false}, {"path", name}, {"waited_s", waited}}.dump().c_str());
    return inv.conflict_exit_code;
  }
  if (inv.verbose) std::printf("%s: getting lock took %.6f seconds\n", prog.c_str(), waited);
  if (inv.json) {
    std::printf("%s\n", nlohmann::json{{"acquired", true},
                                       {"path", name},
                                       {"backend", "etcd"},
                                       {"key", lock->key()},
                                       {"token", lock->token()},
                                       {"lease", fmt::format("{:x}", lock->lease_id())},
                                       {"ttl_s", lock->ttl().count()},
                                       {"waited_s", waited}}
                            .dump()
                            .c_str());
  }
  std::fflush(stdout);

  int err = 0;
  auto executable = sys::find_executable(inv.command.front(), err);
  if (!executable) {
    std::fprintf(stderr, "%s: failed to execute %s: %s\n", prog.c_str(), inv.command.front().c_str(), std::strerror(err));
    return exit_code::unavailable;  // as flock(1)
  }
  sys::SpawnRequest request;
  request.executable = *executable;
  request.argv = inv.command;
  const char* ready_flag = std::getenv("HOLDFAST_ETCD_NOTIFY_READY");
  const bool report_ready = ready_flag != nullptr && std::string_view(ready_flag) == "1";
  if (report_ready && !notify_ready()) {
    std::fprintf(stderr, "%s: %s: cannot report readiness on $NOTIFY_SOCKET\n", prog.c_str(), lock->key().c_str());
  }
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view entry(*e);
    if (entry.starts_with("HOLDFAST_TOKEN=") || entry.starts_with("HOLDFAST_LOCK=") || entry.starts_with("ETCD_LOCK_KEY=")) continue;
    if (entry.starts_with("HOLDFAST_ETCD_NOTIFY_READY=") || (report_ready && entry.starts_with("NOTIFY_SOCKET="))) continue;
    // The credential was for holdfast's own requests; the command (a daemon, under ensure) must
    // not inherit it.
    if (entry.starts_with("HOLDFAST_ETCD_PASSWORD=")) continue;
    request.env.emplace_back(entry);
  }
  request.env.push_back("HOLDFAST_TOKEN=" + std::to_string(lock->token()));
  request.env.push_back("HOLDFAST_LOCK=" + name);
  request.env.push_back("ETCD_LOCK_KEY=" + lock->key());
  // Without holdfast nobody renews the lease: the command must not outlive it unnoticed.
  request.parent_death_signal = SIGKILL;
  // As flock(1)'s command (and holdfast lock's on a file): inherited descriptors (`3>file`),
  // signals ignored at start (nohup) and the signal mask holdfast started with.
  request.inheritance = sys::SpawnRequest::Inheritance::like_exec;
  request.signal_mask = signals.previous();
  // The record names holdfast (the lease's keeper, the command's parent) and the command line;
  // not rewritten with the command's pid: that would be one more consensus write per grant.
  std::optional<sys::Child> spawned;
  try {
    spawned.emplace(sys::spawn(request));
  } catch (const sys::SpawnError& e) {
    if (e.step() != "exec") throw;
    // flock(1)'s message and status for a command it cannot execute (the lease is revoked by
    // ~EtcdLock, guarded).
    std::fprintf(stderr, "%s: failed to execute %s: %s\n", prog.c_str(), inv.command.front().c_str(),
                 std::strerror(e.child_errno()));
    return exec_failure_status(e.child_errno());
  }
  sys::Child& child = *spawned;

  // Run until the command exits, forwarding signals, or until the lock is lost.
  bool lost = false;
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(lock->valid_until() - Clock::now()).count();
    if (left <= 0 || lock->lost()) {
      lost = true;
      break;
    }
    pollfd fds[3] = {{child.pidfd(), POLLIN, 0}, {lock->lost_fd(), POLLIN, 0}, {signals.fd(), POLLIN, 0}};
    int rc = ::poll(fds, 3, static_cast<int>(std::min<int64_t>(left, 60'000)));
    if (rc < 0 && errno != EINTR) throw Error(errno, "", "poll");
    if (rc > 0 && (fds[0].revents & POLLIN) != 0) break;
    if (rc > 0 && (fds[2].revents & POLLIN) != 0) {
      if (int sig = signals.take(); sig != 0) sys::pidfd_signal_nothrow(child.pidfd(), sig);
    }
  }
  if (lost) {
    const auto grace = lock->margin() / 2;
    const std::string reason = lock->lost() ? lock->lost_reason() : "the lease could not be renewed in time";
    std::fprintf(stderr, "%s: %s: lock lost: %s; stopping %s (SIGTERM, SIGKILL after %lld ms)\n", prog.c_str(),
                 lock->key().c_str(), reason.c_str(), inv.command.front().c_str(), static_cast<long long>(grace.count()));
    sys::pidfd_signal_nothrow(child.pidfd(), SIGTERM);
    if (!exited_within(child, grace)) sys::pidfd_signal_nothrow(child.pidfd(), SIGKILL);
    child.wait();
    try {
      lock->release();  // guarded: deletes nothing that is not ours
    } catch (const EtcdError&) {
    }
    return exit_code::lock_lost;
  }
  const int status = command_exit_status(child.wait());
  try {
    lock->release();
  } catch (const EtcdError& e) {
    std::fprintf(stderr, "%s: warning: %s (the lease expires by itself)\n", prog.c_str(), e.what());
  }
  return status;
}

}  // namespace holdfast::cli
