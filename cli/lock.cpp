// holdfast lock: run a command while holding a lock. flock(1)-compatible where they overlap.
//
// The command is forked first and held at a pipe until the holder record names it, so a dotlock
// never shows a running command under a record that only names this (killable) process.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "sys/file.hpp"

namespace holdfast::cli {
namespace {

struct LockArgs {
  std::string path;
  std::vector<std::string> command;
  std::string shell_command;
  bool nonblock = false;
  double timeout = -1;
  bool shared = false;
  bool exclusive = false;
  int conflict_exit = exit_code::conflict;
  bool close_before_exec = false;
  bool verbose = false;
  bool json = false;
  std::string backend = "auto";
  double stale_after = 0;
};

volatile sig_atomic_t g_child = 0;

void forward_signal(int sig) {
  if (g_child > 0) ::kill(static_cast<pid_t>(g_child), sig);
}

constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

[[noreturn]] void exec_command(const LockArgs& a) {
  std::vector<std::string> argv = a.command;
  if (!a.shell_command.empty()) {
    const char* shell = std::getenv("SHELL");
    argv = {shell != nullptr && *shell != '\0' ? shell : "/bin/sh", "-c", a.shell_command};
  }
  std::vector<char*> args;
  for (auto& s : argv) args.push_back(s.data());
  args.push_back(nullptr);
  ::execvp(args[0], args.data());
  int err = errno;
  std::fprintf(stderr, "holdfast lock: %s: cannot run command: %s\n", argv[0].c_str(), std::strerror(err));
  ::_exit(err == ENOENT ? exit_code::not_found : exit_code::cannot_exec);
}

int run_lock(const LockArgs& a) {
  if (a.command.empty() && a.shell_command.empty()) {
    throw Error(a.path, "lock", "no command given (use -- COMMAND [ARGS...] or -c 'COMMAND')", exit_code::usage);
  }
  if (!a.command.empty() && !a.shell_command.empty()) {
    throw Error(a.path, "lock", "give either -c or -- COMMAND, not both", exit_code::usage);
  }
  if (a.shared && a.exclusive) throw Error(a.path, "lock", "-s and -x are mutually exclusive", exit_code::usage);
  LockOptions options;
  auto backend = parse_backend(a.backend);
  if (!backend) throw Error(a.path, "lock", "unknown backend '" + a.backend + "' (auto, ofd, flock, excl, link)", exit_code::usage);
  options.backend = *backend;
  options.mode = a.shared ? LockMode::shared : LockMode::exclusive;
  options.stale_after = std::chrono::milliseconds(static_cast<int64_t>(a.stale_after * 1000));
  options.command = a.command.empty() ? std::vector<std::string>{"sh", "-c", a.shell_command} : a.command;

  if (options.backend == Backend::automatic && a.verbose) {
    try {  // the choice is remembered per mount: the acquire below asks again for free
      auto choice = select_backend(sys::dirname_of(a.path), a.path);
      std::fprintf(stderr, "holdfast lock: note: %s\n", choice.reason.c_str());
    } catch (const Error&) {
      // the acquire below reports it
    }
  }

  auto started = std::chrono::steady_clock::now();
  std::optional<Lock> lock;
  if (a.nonblock || a.timeout == 0) {
    lock = Lock::try_acquire(a.path, options);
  } else if (a.timeout > 0) {
    auto deadline = started + std::chrono::microseconds(static_cast<int64_t>(a.timeout * 1e6));
    lock = Lock::acquire_until(a.path, options, deadline);
  } else {
    lock = Lock::acquire(a.path, options);
  }
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (!lock) {
    if (a.verbose) {
      std::string who;
      try {
        if (auto r = read_holder_record(a.path); r && !r->processes.empty()) {
          who = " (held by pid " + std::to_string(r->processes.front().pid) + ")";
        }
      } catch (const Error&) {
      }
      std::fprintf(stderr, "holdfast lock: %s: %s%s\n", a.path.c_str(),
                   a.nonblock || a.timeout == 0 ? "failed to get lock" : "timeout while waiting to get lock", who.c_str());
    }
    if (a.json) {
      std::printf("%s\n", nlohmann::json{{"acquired", false}, {"path", a.path}, {"waited_s", waited}}.dump().c_str());
    }
    return a.conflict_exit;
  }
  if (a.verbose) std::fprintf(stderr, "holdfast lock: getting lock took %.6f seconds\n", waited);
  if (a.json) {
    nlohmann::json j{{"acquired", true},
                     {"path", a.path},
                     {"backend", std::string(to_string(lock->backend()))},
                     {"mode", std::string(to_string(lock->mode()))},
                     {"token", lock->token()},
                     {"waited_s", waited}};
    std::printf("%s\n", j.dump().c_str());
  }
  std::fflush(stdout);

  ::setenv("HOLDFAST_TOKEN", std::to_string(lock->token()).c_str(), 1);
  ::setenv("HOLDFAST_LOCK", a.path.c_str(), 1);

  // Signals are blocked across fork so none arrives before the forwarding handler knows the pid.
  sigset_t forwarded, previous;
  sigemptyset(&forwarded);
  for (int s : kForwarded) sigaddset(&forwarded, s);
  ::sigprocmask(SIG_BLOCK, &forwarded, &previous);

  int go[2];
  if (::pipe2(go, O_CLOEXEC) != 0) throw Error(errno, a.path, "cannot create pipe");
  const bool kernel = lock->backend() == Backend::ofd || lock->backend() == Backend::flock;
  const pid_t parent = ::getpid();
  pid_t child = ::fork();
  if (child < 0) throw Error(errno, a.path, "cannot fork");
  if (child == 0) {
    ::close(go[1]);
    for (int s : kForwarded) ::signal(s, SIG_DFL);
    ::sigprocmask(SIG_SETMASK, &previous, nullptr);
    if (a.close_before_exec) {
      // With -o only holdfast holds the lock: if holdfast dies the command must not go on
      // unprotected, so it dies with it. Daemons it spawns are not affected (that is why -o).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(exit_code::software);  // it died before prctl took effect
    }
    char byte;
    ssize_t n;
    while ((n = ::read(go[0], &byte, 1)) < 0 && errno == EINTR) {
    }
    if (n != 1) ::_exit(exit_code::software);  // holdfast died before the record named us
    if (kernel && !a.close_before_exec && lock->fd() >= 0) {
      // The command inherits the locked open file description (as with flock(1)), so the lock
      // lives as long as the command even if holdfast is killed.
      int flags = ::fcntl(lock->fd(), F_GETFD);
      ::fcntl(lock->fd(), F_SETFD, flags & ~FD_CLOEXEC);
    }
    exec_command(a);
  }
  ::close(go[0]);
  g_child = child;
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  // No SA_RESTART: waitpid below loops on EINTR, and a runtime that defers handlers to the next
  // interrupted call (ThreadSanitizer does) would otherwise never forward the signal.
  sa.sa_flags = 0;
  for (int s : kForwarded) ::sigaction(s, &sa, nullptr);
  ::sigprocmask(SIG_SETMASK, &previous, nullptr);

  try {
    if (auto id = identity_of(child)) lock->add_holder_process(*id);
  } catch (const Error&) {
    ::kill(child, SIGKILL);  // never run the command under a record that does not name it
    ::waitpid(child, nullptr, 0);
    throw;
  }
  ssize_t sent;
  while ((sent = ::write(go[1], "g", 1)) < 0 && errno == EINTR) {
  }
  if (sent != 1) {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    throw Error(errno, a.path, "cannot start command");
  }
  ::close(go[1]);

  int status = 0;
  while (::waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) throw Error(errno, a.path, "cannot wait for command");
  }
  if (kernel) {
    // Like flock(1): just close our descriptor. Processes the command left behind that still
    // hold the inherited descriptor keep the lock.
    lock->detach();
  } else {
    lock->release();
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return exit_code::software;
}

}  // namespace

Run add_lock(CLI::App& root) {
  auto args = std::make_shared<LockArgs>();
  auto* cmd = root.add_subcommand("lock", "Run a command while holding a lock on PATH (flock(1)-compatible)");
  cmd->add_option("path", args->path, "Lock file (created if missing, never deleted for kernel backends)")->required();
  cmd->add_option("command", args->command, "Command and arguments (after --)");
  cmd->add_option("-c,--command", args->shell_command, "Run this string with $SHELL -c");
  cmd->add_flag("-n,--nonblock", args->nonblock, "Fail (exit -E code) rather than wait");
  cmd->add_option("-w,--timeout,--wait", args->timeout, "Wait at most SECONDS (fractions allowed)");
  cmd->add_flag("-s,--shared", args->shared, "Shared lock (kernel backends only)");
  cmd->add_flag("-x,--exclusive,-e", args->exclusive, "Exclusive lock (the default)");
  cmd->add_option("-E,--conflict-exit-code", args->conflict_exit, "Exit code on conflict or timeout (default 1)")
      ->check(CLI::Range(0, 255));
  cmd->add_flag("-o,--close", args->close_before_exec,
                "Do not let the command inherit the lock (for commands that leave daemons behind)");
  cmd->add_flag("--verbose", args->verbose, "Report the wait time and conflicts on stderr");
  cmd->add_flag("--json", args->json, "Print the grant (token, backend, wait) as one JSON line on stdout");
  cmd->add_option("--backend", args->backend, "auto, ofd, flock, excl or link (default auto)");
  cmd->add_option("--stale-after", args->stale_after,
                  "Dotlocks: a holder that cannot be proven dead (another host) is stale after SECONDS without a heartbeat");
  cmd->footer(
      "The command gets HOLDFAST_TOKEN (fencing token) and HOLDFAST_LOCK in its environment.\n"
      "Exit codes: the command's own status (128+N if killed by signal N); 1 (or -E) lock held or\n"
      "timed out; 64 usage; 65 corrupt record; 66 missing directory; 69 backend unsupported here;\n"
      "71 other OS error; 73 cannot create (EROFS, a directory); 74 I/O error (EIO, ENOSPC);\n"
      "77 permission denied or refused symlink; 126 command not executable; 127 command not found.");
  return [args] { return run_lock(*args); };
}

}  // namespace holdfast::cli
