// `holdfast lock`: running the command under the lock (fork, start handshake, signals, reaping),
// or exec'ing it in place (-F).
//
// Signals, as flock(1) and nohup(1) users expect:
//   - dispositions are never changed in the command: signals ignored when holdfast started (nohup,
//     background jobs' SIGINT/SIGQUIT) stay ignored in it; caught ones are reset by exec;
//   - SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to holdfast are forwarded to the
//     command — except those ignored at start, which stay ignored in holdfast too;
//   - a forwarded signal never reaches a pid that has been reaped (the child is waited for with
//     WNOWAIT, forgotten, and only then reaped), so a recycled pid is never signalled;
//   - the handshake is a socket written with MSG_NOSIGNAL: a command that died before it was
//     released costs an error, never a SIGPIPE death of holdfast with the lock left behind.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "holdfast/identity.hpp"

namespace holdfast::cli {

struct CommandSpec {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH (execvp)
  std::string program;            // prefix of messages: "holdfast lock" or "flock"
  // A descriptor the command inherits (the locked one, for kernel backends); -1 for none.
  int inherit_fd = -1;
  // The command is killed (PR_SET_PDEATHSIG=SIGKILL) when holdfast dies: when only holdfast
  // protects it (-o), or when only holdfast keeps its lease alive (--stale-after).
  bool die_with_holdfast = false;
  // The command waits at a handshake until before_start has returned: a dotlock's record must
  // name it before it runs, or it would run unprotected if holdfast died. false (a kernel lock,
  // whose inherited descriptor protects the command by itself): it starts at once, forked with
  // vfork (no page tables copied), and before_start runs while it may already be running.
  bool hold_until_named = true;
};

// The signals `holdfast lock` forwards to its command (see above), whatever backend holds the lock.
inline constexpr int kForwardedSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

// The command's wait status as `holdfast lock` exits with it, as flock(1) does: its exit status,
// 128+N if signal N killed it, EX_OSERR (71) otherwise.
int command_exit_status(int wait_status) noexcept;

// flock(1)'s exit status when exec fails: 69 (EX_UNAVAILABLE), or 71 (EX_OSERR) for ENOMEM.
int exec_failure_status(int err) noexcept;

// Forks the command and (spec.hold_until_named) holds it at a handshake until
// `before_start(pid, fork)` has returned (e.g. the holder record now names it; `fork` brackets
// the fork, for the command's start time); if that throws, the command is killed, reaped, and
// the exception propagates. Then waits for it. Returns its exit status, or 128+N if signal N killed it.
int run_command(const CommandSpec& spec, const std::function<void(pid_t, const ForkBracket&)>& before_start);

// Replaces this process with the command (-F). Returns only if exec failed, having printed why;
// the result is the exit status to use (exec_failure_status).
int exec_in_place(const CommandSpec& spec);

}  // namespace holdfast::cli
