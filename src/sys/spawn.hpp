// sys/spawn: how holdfast starts another program (fork + exec), with the descriptor plumbing
// checked and every failure before exec reported to the parent. (The one exception is the
// command of `holdfast lock` on a file, started by cli/lock_run.cpp with vfork and no report
// pipe: flock(1)'s own hot path, whose exec failures the child reports as flock(1) does.)
//
// Contract of spawn():
//   * Inheritance::clean_slate (the default, for services): the child gets exactly fds 0-2 as
//     the parent has them unless remapped, plus every `fds` target (dup'ed from its source,
//     FD_CLOEXEC cleared); every other descriptor >= 3 is closed; signal dispositions are reset
//     to default (all but glibc's own 32 and 33: see reset_signals) and the signal mask is
//     cleared.
//   * Inheritance::like_exec (a command run for a user, as flock(1) runs one): the child keeps
//     what a plain exec would keep — every descriptor without FD_CLOEXEC, ignored signals
//     ignored (nohup) — plus the `fds` targets; caught signals go back to default (exec would
//     do it; here before any can be delivered) and the signal mask becomes `signal_mask`. An
//     executable whose format the kernel does not know (ENOEXEC: a script without `#!`) is run
//     by /bin/sh, as execvp(3) runs it.
//   * Targets may be any number the child's RLIMIT_NOFILE allows, and may name each other's
//     sources (the shuffle goes through fresh low descriptors, never through a fixed high base,
//     so it works with RLIMIT_NOFILE as low as (number of mappings + 4)).
//   * Then, in this order: session/process group, chdir, umask, setgroups/setgid/setuid
//     (privileges are dropped last so chdir into a directory only the parent's user can reach
//     still works), PR_SET_PDEATHSIG (after the uid change, which would clear it), execve.
//   * If any step fails, spawn() reaps the child and throws SpawnError naming the step and the
//     errno; the child never runs a line of the target program. When spawn() returns, execve has
//     succeeded (the report pipe is close-on-exec: EOF means exec happened).
//   * Async-signal-safe after fork: everything the child needs is prepared before fork, so the
//     parent may be multithreaded.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "holdfast/error.hpp"
#include "sys/fd.hpp"

namespace holdfast::sys {

struct FdMapping {
  int target;  // the descriptor number in the child
  int source;  // a descriptor of the parent; -1: close `target` in the child
};

struct SpawnRequest {
  std::string executable;         // path passed to execve (no PATH search: see find_executable)
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // the complete environment ("KEY=VALUE")
  std::vector<FdMapping> fds;     // at most 16
  enum class Session { inherit, new_process_group, new_session };
  Session session = Session::inherit;
  std::string chdir;              // empty: keep the parent's working directory
  std::optional<mode_t> umask;
  std::optional<gid_t> gid;       // with gid: supplementary groups become `groups`
  std::vector<gid_t> groups;
  std::optional<uid_t> uid;
  int parent_death_signal = 0;    // 0: none
  // If set: the child's environment also gets NAME=<the child's own pid> (as systemd passes
  // WATCHDOG_PID), written after fork without allocating.
  std::string self_pid_env;
  enum class Inheritance { clean_slate, like_exec };
  Inheritance inheritance = Inheritance::clean_slate;
  sigset_t signal_mask{};  // like_exec: the child's signal mask (clean_slate: empty)
};

// A step before exec failed. what() is "EXECUTABLE: cannot execute: CAUSE" for exec itself, else
// "EXECUTABLE: cannot start (STEP): CAUSE"; step() names the step ("exec", "chdir", "setuid",
// "descriptor N", ...); child_errno() is the child's errno. exit_code(): not_found (127) for
// ENOENT at exec, cannot_exec (126) for EACCES/ENOEXEC/EPERM at exec, usage (64) for a
// descriptor number the child's RLIMIT_NOFILE does not allow, os_error (71) otherwise.
class SpawnError : public Error {
 public:
  SpawnError(const std::string& executable, int step, int err);
  const std::string& step() const noexcept { return step_; }
  int child_errno() const noexcept { return errno_; }

 private:
  std::string step_;
  int errno_;
};

// A started child: pid and a pidfd pinning it. Destroying a Child that was neither waited for nor
// released SIGKILLs it (through the pidfd) and reaps it, so an abandoned child never outlives its
// owner unnoticed.
class Child {
 public:
  Child() = default;
  Child(pid_t pid, UniqueFd pidfd) noexcept : pid_(pid), pidfd_(std::move(pidfd)) {}
  Child(Child&& other) noexcept;
  Child& operator=(Child&& other) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  pid_t pid() const noexcept { return pid_; }
  int pidfd() const noexcept { return pidfd_.get(); }
  // Blocks until the child exits and reaps it. Returns the waitpid status.
  int wait() noexcept;
  // Gives up ownership: the caller reaps the child (the pidfd is closed).
  pid_t release() noexcept;

 private:
  void kill_and_reap() noexcept;
  pid_t pid_ = 0;
  UniqueFd pidfd_;
};

// Starts `request` as described above. Throws SpawnError for a failed step before exec,
// Error(usage) for a malformed request (more than 16 mappings, empty argv), Error(os_error) if
// fork or pipe fails.
Child spawn(const SpawnRequest& request);

}  // namespace holdfast::sys
