#include "lock_run.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "holdfast/error.hpp"
#include "sys/fd.hpp"

namespace holdfast::cli {
namespace {

// The pid signals are forwarded to; 0 once the child is about to be reaped (never a reaped pid).
volatile sig_atomic_t g_child = 0;

void forward_signal(int sig) {
  const pid_t child = g_child;
  if (child > 0) ::kill(child, sig);
}

// Test hook: HOLDFAST_TEST_STOP_AT=before-start|after-reap makes holdfast stop itself (SIGSTOP)
// at that point, so tests can deliver signals inside windows that are otherwise microseconds wide.
void stop_for_test_at(const char* hook, std::string_view point) {
  if (hook != nullptr && point == hook) ::raise(SIGSTOP);
}

// argv as execvp wants it; built before fork (the child only makes async-signal-safe calls).
struct ExecArgs {
  explicit ExecArgs(const std::vector<std::string>& argv) : strings(argv) {
    for (auto& s : strings) pointers.push_back(s.data());
    pointers.push_back(nullptr);
  }
  std::vector<std::string> strings;
  std::vector<char*> pointers;
};

// "PROG: failed to execute CMD: CAUSE" with write(2) only: usable in a forked child.
void report_exec_failure(const CommandSpec& spec, int err) noexcept {
  const char* cause = ::strerrordesc_np(err);
  const char* parts[] = {spec.program.c_str(), ": failed to execute ", spec.argv.front().c_str(), ": ",
                         cause != nullptr ? cause : "unknown error", "\n"};
  for (const char* p : parts) {
    size_t left = std::strlen(p);
    while (left > 0) {
      ssize_t n = ::write(STDERR_FILENO, p, left);
      if (n <= 0) return;
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
}

// The forked command until it is reaped: destroying it before wait() kills and reaps it, so no
// path leaves a command running that was never released, or a zombie.
class Child {
 public:
  explicit Child(pid_t pid) noexcept : pid_(pid) {}
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ <= 0) return;
    g_child = 0;
    ::kill(pid_, SIGKILL);
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  pid_t pid() const noexcept { return pid_; }

  // Waits for the child to exit, stops forwarding to it, then reaps it. Returns the raw status.
  int wait(const char* hook) {
    siginfo_t info{};
    while (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT) < 0) {
      if (errno != EINTR) throw Error(errno, "", "cannot wait for command");
    }
    g_child = 0;  // still a zombie: its pid cannot have been reused yet
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0) {
      if (errno != EINTR) throw Error(errno, "", "cannot wait for command");
    }
    pid_ = -1;
    stop_for_test_at(hook, "after-reap");
    return status;
  }

 private:
  pid_t pid_;
};

// Blocks the forwarded signals for its lifetime, restoring the previous mask.
class BlockForwarded {
 public:
  BlockForwarded() noexcept {
    sigset_t set;
    sigemptyset(&set);
    for (int s : kForwardedSignals) sigaddset(&set, s);
    ::sigprocmask(SIG_BLOCK, &set, &previous_);
  }
  ~BlockForwarded() { ::sigprocmask(SIG_SETMASK, &previous_, nullptr); }
  BlockForwarded(const BlockForwarded&) = delete;
  BlockForwarded& operator=(const BlockForwarded&) = delete;
  const sigset_t& previous() const noexcept { return previous_; }

 private:
  sigset_t previous_{};
};

// The child between fork and exec: only async-signal-safe calls, and nothing that writes the
// parent's memory (after vfork it is shared). `go` < 0: no handshake.
[[noreturn]] void child_main(const CommandSpec& spec, ExecArgs& exec, int go, pid_t parent, const sigset_t& mask) {
  if (spec.die_with_holdfast) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(exit_code::software);  // it died before prctl took effect
  }
  ::sigprocmask(SIG_SETMASK, &mask, nullptr);
  if (go >= 0) {
    char byte = 0;
    ssize_t n;
    while ((n = ::read(go, &byte, 1)) < 0 && errno == EINTR) {
    }
    if (n != 1) ::_exit(exit_code::software);  // holdfast died (or gave up) before releasing us
    ::close(go);
  }
  if (spec.inherit_fd >= 0) {
    // The command inherits the locked open file description (as with flock(1)), so the lock
    // lives as long as the command even if holdfast is killed.
    int flags = ::fcntl(spec.inherit_fd, F_GETFD);
    if (flags >= 0) ::fcntl(spec.inherit_fd, F_SETFD, flags & ~FD_CLOEXEC);
  }
  ::execvp(exec.pointers[0], exec.pointers.data());
  int err = errno;
  report_exec_failure(spec, err);
  ::_exit(exec_failure_status(err));
}

}  // namespace

int command_exit_status(int wait_status) noexcept {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return exit_code::os_error;  // as flock(1)
}

int exec_failure_status(int err) noexcept { return err == ENOMEM ? exit_code::os_error : exit_code::unavailable; }

int run_command(const CommandSpec& spec, const std::function<void(pid_t, const ForkBracket&)>& before_start) {
  // Read once and kept from the command (a nested holdfast must not stop too).
  const char* hook_env = std::getenv("HOLDFAST_TEST_STOP_AT");
  const std::string hook_point = hook_env != nullptr ? hook_env : "";
  if (hook_env != nullptr) ::unsetenv("HOLDFAST_TEST_STOP_AT");
  const char* hook = hook_point.empty() ? nullptr : hook_point.c_str();
  ExecArgs exec(spec.argv);
  // Forwarded signals stay blocked until the command is released: one that arrives earlier is
  // forwarded to the running command, instead of killing a child still waiting to start.
  BlockForwarded blocked;

  int go[2] = {-1, -1};
  if (spec.hold_until_named && ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go) != 0) {
    throw Error(errno, "", "cannot create socket pair");
  }
  sys::UniqueFd parent_end(go[0]);
  sys::UniqueFd child_end(go[1]);
  std::fflush(nullptr);  // nothing buffered is written twice (by the child's exit paths)
  const pid_t parent = ::getpid();
  pid_t pid = -1;
  ForkBracket fork_time;  // the command's start time, for before_start
  if (spec.hold_until_named) {
    pid = ::fork();
    if (pid == 0) {
      ::close(go[0]);
      child_main(spec, exec, go[1], parent, blocked.previous());
    }
  } else {
    // No handshake: the child only execs, so it can borrow our memory until it does, and we
    // are suspended until then. It never returns here (exec or _exit).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    pid = ::fork();  // sanitizer runtimes track the child's stack and threads; vfork would share them
#else
    pid = ::vfork();  // NOLINT(clang-analyzer-security.insecureAPI.vfork): posix_spawn cannot set PR_SET_PDEATHSIG
#endif
    // child_main makes only async-signal-safe calls, writes no memory of ours, and ends in
    // execvp or _exit (the analyzer cannot see into it).
    if (pid == 0) child_main(spec, exec, -1, parent, blocked.previous());  // NOLINT(clang-analyzer-unix.Vfork)
  }
  fork_time.close();
  if (pid < 0) throw Error(errno, "", "cannot fork");
  Child child(pid);
  child_end.reset();
  g_child = pid;

  struct sigaction forward {};
  forward.sa_handler = forward_signal;
  sigemptyset(&forward.sa_mask);
  // No SA_RESTART: wait() loops on EINTR, and a runtime that defers handlers to the next
  // interrupted call (ThreadSanitizer does) would otherwise never forward the signal.
  forward.sa_flags = 0;
  for (int s : kForwardedSignals) {
    // One call where the signal was not ignored (the usual case). The forwarded signals are
    // blocked here, so none is handled between installing the forwarder and putting back an
    // ignore found at start (nohup), which stays ignored.
    struct sigaction old {};
    ::sigaction(s, &forward, &old);
    if (old.sa_handler == SIG_IGN) ::sigaction(s, &old, nullptr);
  }

  before_start(pid, fork_time);
  stop_for_test_at(hook, "before-start");
  if (!spec.hold_until_named) {
    ::sigprocmask(SIG_SETMASK, &blocked.previous(), nullptr);
    return command_exit_status(child.wait(hook));
  }
  ssize_t sent;
  while ((sent = ::send(parent_end.get(), "g", 1, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  if (sent != 1) {
    const int err = errno;
    int status = child.wait(hook);
    if (WIFSIGNALED(status)) {
      std::fprintf(stderr, "%s: %s was killed by signal %d before it started\n", spec.program.c_str(),
                   spec.argv.front().c_str(), WTERMSIG(status));
      return 128 + WTERMSIG(status);
    }
    throw Error(err, "", "cannot start command " + spec.argv.front());
  }
  parent_end.reset();
  ::sigprocmask(SIG_SETMASK, &blocked.previous(), nullptr);
  return command_exit_status(child.wait(hook));
}

int exec_in_place(const CommandSpec& spec) {
  ExecArgs exec(spec.argv);
  if (spec.inherit_fd >= 0) {
    int flags = ::fcntl(spec.inherit_fd, F_GETFD);
    if (flags >= 0) ::fcntl(spec.inherit_fd, F_SETFD, flags & ~FD_CLOEXEC);
  }
  std::fflush(nullptr);  // exec discards stdio buffers (flock(1) loses its --verbose lines here)
  ::execvp(exec.pointers[0], exec.pointers.data());
  int err = errno;
  if (spec.inherit_fd >= 0) {
    int flags = ::fcntl(spec.inherit_fd, F_GETFD);
    if (flags >= 0) ::fcntl(spec.inherit_fd, F_SETFD, flags | FD_CLOEXEC);
  }
  report_exec_failure(spec, err);
  return exec_failure_status(err);
}

}  // namespace holdfast::cli
