// holdfast lock: util-linux flock(1), exactly (docs/LOCKS.md lists the few deliberate differences),
// plus holdfast's backends for filesystems without working kernel locks, a holder record and a
// fencing token per grant. Parsing is in lock_args.cpp, running the command in lock_run.cpp.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "hand_over.hpp"
#include "duration.hpp"
#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "lock_args.hpp"
#include "lock_etcd.hpp"
#include "lock_run.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast::cli {
namespace {

using Clock = std::chrono::steady_clock;

void print_usage(const std::string& prog) {
  std::printf(
      "\nUsage:\n"
      " %1$s [options] <file>|<directory> <command> [<argument>...]\n"
      " %1$s [options] <file>|<directory> -c <command>\n"
      " %1$s [options] <file descriptor number>\n"
      " %1$s [options] --fd <file descriptor number> -c <command>\n"
      " %1$s [options] --fd <file descriptor number> <command> [<argument>...]\n"
      "\nManage file locks from shell scripts (util-linux flock(1)-compatible).\n"
      "\nOptions:\n"
      " -s, --shared             get a shared lock\n"
      " -x, --exclusive          get an exclusive lock (default)\n"
      " -u, --unlock             remove a lock\n"
      " -n, --nb, --nonblocking  fail rather than wait\n"
      " -w, --timeout <secs>     wait for a limited amount of time\n"
      " -E, --conflict-exit-code <number>  exit code after conflict or timeout\n"
      " -o, --close              close file descriptor before running command\n"
      " -c, --command <command>  run a single command string through the shell\n"
      " -F, --no-fork            execute command without forking\n"
      "     --wait               same as --timeout\n"
      "     --fcntl              use fcntl(F_OFD_SETLK) rather than flock() (the ofd backend)\n"
      "     --fd <number>        use the file descriptor number to wrap the\n"
      "                          lock around the command execution\n"
      "     --verbose            increase verbosity\n"
      "\nholdfast options:\n"
      "     --backend <name>     auto, flock, ofd, excl, link or shm (default auto)\n"
      "     --fair               shm backend: waiters get the lock in arrival order\n"
      "     --stale-after <dur>  dotlocks: a holder that cannot be proven dead (another host)\n"
      "                          is stale after this long without a heartbeat (e.g. 30s)\n"
      "     --json               print the grant (token, backend, wait) as JSON on stdout\n"
      "     --allow-unsafe       use an explicitly chosen backend even where it is known unsafe\n"
      "     --backend etcd://HOST:PORT[,HOST:PORT...]/PREFIX   lock NAME in etcd (docs/ETCD.md);\n"
      "                          with --ttl <dur> (default 10s), --cacert/--cert/--key <file>,\n"
      "                          --user NAME[:PASSWORD]\n"
      "\n -h, --help               display this help\n"
      " -V, --version            display version\n"
      "\nThe command gets HOLDFAST_TOKEN (fencing token) and HOLDFAST_LOCK in its environment.\n"
      "Exit codes (docs/EXIT_CODES.md): the command's status (128+N if killed by signal N);\n"
      "1 (or -E) conflict or timeout; 64 usage; 65 lock failed on a descriptor or corrupt fence;\n"
      "66 cannot open the lock file; 69 command cannot be run, or backend unsupported/unsafe;\n"
      "71 OS error; 73 cannot create (read-only filesystem, full disk); 77 refused symlink.\n"
      "etcd: 69 unreachable; 76 TLS or protocol error; 77 auth or permission; 90 lock lost (command stopped).\n",
      prog.c_str());
}

// The -w/-n decision, as flock(1) makes it: -w 0 means -n; a timer flock(1) cannot arm fails.
struct Wait {
  bool nonblock = false;
  std::optional<std::chrono::nanoseconds> limit;  // nullopt: forever
};

Wait wait_of(const LockInvocation& inv) {
  Wait w;
  w.nonblock = inv.nonblock;
  if (inv.timeout && !inv.nonblock) {
    if (inv.timeout->is_zero()) {
      w.nonblock = true;
    } else if (inv.timeout->is_invalid()) {
      throw Error("", "cannot set up timer", std::strerror(EINVAL), exit_code::os_error);  // as flock(1)
    } else if (inv.timeout->duration() != kNoLimit) {
      w.limit = inv.timeout->duration();
    }
  }
  return w;
}

void report_conflict(const LockInvocation& inv, const std::string& prog, const Wait& w) {
  if (inv.verbose) {
    std::fprintf(stderr, "%s: %s\n", prog.c_str(), w.nonblock ? "failed to get lock" : "timeout while waiting to get lock");
  }
}

void report_took(const LockInvocation& inv, const std::string& prog, Clock::duration took) {
  if (!inv.verbose) return;
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(took).count();
  std::printf("%s: getting lock took %lld.%06lld seconds\n", prog.c_str(), static_cast<long long>(us / 1000000),
              static_cast<long long>(us % 1000000));
}

// `lock [options] NUMBER` and `lock --fd NUMBER COMMAND`: lock (or unlock) an inherited
// descriptor with flock(2), or OFD with --fcntl. No record and no token: the descriptor is the
// caller's, and holdfast writes nothing it did not create.
int lock_descriptor(const LockInvocation& inv, const std::string& prog) {
  if (inv.backend && *inv.backend != "flock" && *inv.backend != "ofd" && *inv.backend != "auto") {
    throw Error("", "--backend " + *inv.backend, "a descriptor can only take a kernel lock (flock or ofd)",
                exit_code::usage);
  }
  if (inv.fair) throw Error("", "--fair", "a descriptor can only take a kernel lock, which has no fair mode", exit_code::usage);
  const auto kind = inv.fcntl || inv.backend == "ofd" ? sys::KernelLockKind::ofd : sys::KernelLockKind::flock;
  const Wait w = wait_of(inv);
  const std::string name = std::to_string(inv.fd);
  auto failed = [&](int err) {
    std::fprintf(stderr, "%s: %s: %s\n", prog.c_str(), name.c_str(), std::strerror(err));
    return err == ENOLCK || err == ENOMEM ? exit_code::os_error : exit_code::data;  // as flock(1)
  };
  const auto started = Clock::now();
  if (inv.operation == LockInvocation::Operation::unlock) {
    if (int rc = sys::kernel_unlock(inv.fd, kind); rc < 0) return failed(-rc);
  } else {
    const bool exclusive = inv.operation == LockInvocation::Operation::exclusive;
    std::optional<sys::DeadlineAlarm> alarm;
    Clock::time_point deadline = Clock::time_point::max();
    if (w.limit) {
      deadline = deadline_after(started, *w.limit);
      alarm.emplace(deadline);
    }
    for (int attempt = 0;; ++attempt) {
      const bool block = !w.nonblock && (!alarm || alarm->armed());
      int rc = sys::kernel_lock(inv.fd, kind, exclusive, block);
      if (rc == 0) break;
      if (rc == -EWOULDBLOCK && !w.nonblock && Clock::now() < deadline) {
        ::usleep(static_cast<useconds_t>(1000 * std::min(25, 1 + attempt)));  // the alarm could not be armed
        continue;
      }
      if (rc == -EWOULDBLOCK || (rc == -EINTR && Clock::now() >= deadline)) {
        report_conflict(inv, prog, w);
        return inv.conflict_exit_code;
      }
      if (rc == -EINTR) continue;
      return failed(-rc);
    }
  }
  report_took(inv, prog, Clock::now() - started);
  if (inv.command.empty()) return exit_code::ok;
  if (inv.verbose) std::printf("%s: executing %s\n", prog.c_str(), inv.command.front().c_str());
  CommandSpec spec{inv.command, prog, inv.close_before_exec ? -1 : inv.fd, false};
  if (inv.close_before_exec) {
    // flock(1) closes the descriptor in the child; holdfast marks it close-on-exec there.
    spec.inherit_fd = -1;
    ::fcntl(inv.fd, F_SETFD, FD_CLOEXEC);
  }
  if (inv.no_fork) return exec_in_place(spec);
  return run_command(spec, [](pid_t, const ForkBracket&) {});
}

Backend backend_of(const LockInvocation& inv) {
  if (inv.fcntl && inv.backend && *inv.backend != "ofd") {
    throw Error("", "--fcntl", "conflicts with --backend " + *inv.backend, exit_code::usage);
  }
  const std::string name = inv.fcntl ? "ofd" : inv.backend.value_or("auto");
  auto backend = parse_backend(name);
  if (!backend) throw Error("", "--backend " + name, "unknown backend (auto, flock, ofd, excl, link, shm)", exit_code::usage);
  return *backend;
}

// `lock [options] FILE|DIR COMMAND...`
int lock_path(const LockInvocation& inv, const std::string& prog) {
  if (inv.backend && is_etcd_url(*inv.backend)) {
    hand_over_if_static("the etcd backend (libcurl)");
    return lock_etcd(inv, prog);
  }
  if (inv.path.empty()) throw Error(ENOENT, "", "cannot open lock file");  // as open("") in flock(1)
  const Wait w = wait_of(inv);
  LockOptions options;
  options.backend = backend_of(inv);
  options.mode = inv.operation == LockInvocation::Operation::shared ? LockMode::shared : LockMode::exclusive;
  options.stale_after = std::chrono::duration_cast<std::chrono::milliseconds>(inv.stale_after);
  options.command = inv.command;
  options.allow_unsafe_backend = inv.allow_unsafe;
  options.fair = inv.fair;
  // A kernel lock's record names the command, which exists only after the fork: written then,
  // while the command starts (the kernel lock is the truth). With -F the record names this
  // process, whose pid the command keeps, and must be there before exec.
  if (!inv.no_fork) options.record_write = RecordWrite::at_first_added_holder;
  const bool lease = options.stale_after.count() > 0;
  // An shm lock belongs to holdfast's thread, and exec ends it (the kernel frees a robust mutex
  // at exec as at exit): nothing could hold it for an exec'd command.
  const bool shm = options.backend == Backend::shm;
  if (inv.no_fork && shm) {
    throw Error(inv.path, "--no-fork with --backend shm", "exec would release the shm lock; run without -F",
                exit_code::usage);
  }
  if (inv.no_fork && lease) {
    throw Error(inv.path, "--no-fork with --stale-after",
                "the lease's heartbeat cannot outlive exec; run without -F", exit_code::usage);
  }
  if (inv.operation == LockInvocation::Operation::unlock) {
    // flock(1) unlocks a descriptor it has just opened, which holds no lock: nothing to do.
    if (inv.verbose) std::printf("%s: executing %s\n", prog.c_str(), inv.command.front().c_str());
    CommandSpec spec{inv.command, prog, -1, false};
    return inv.no_fork ? exec_in_place(spec) : run_command(spec, [](pid_t, const ForkBracket&) {});
  }
  // `auto` is resolved by the library (flock(2) where kernel locks are enforced, so flock(1),
  // python filelock and Go's lockedfile users of the same file are excluded; the verdict is
  // remembered per mount). Only a fallback is worth a line, and only with --verbose: a kernel
  // lock is what flock(1) users expect, and flock(1)'s own --verbose output stays as it is.
  if (options.backend == Backend::automatic && inv.verbose) {
    try {
      auto choice = select_backend(sys::dirname_of(inv.path), inv.path);
      if (choice.backend != Backend::flock) std::fprintf(stderr, "%s: note: %s\n", prog.c_str(), choice.reason.c_str());
    } catch (const Error&) {
      // the acquire below reports it
    }
  }

  const auto started = Clock::now();
  std::optional<Lock> lock;
  if (w.nonblock) {
    lock = Lock::try_acquire(inv.path, options);
  } else if (w.limit) {
    lock = Lock::acquire_until(inv.path, options, deadline_after(started, *w.limit));
  } else {
    lock = Lock::acquire(inv.path, options);
  }
  const auto took = Clock::now() - started;
  const double waited = std::chrono::duration<double>(took).count();
  if (!lock) {
    report_conflict(inv, prog, w);
    if (inv.json) {
      std::printf("%s\n", nlohmann::json{{"acquired", false}, {"path", inv.path}, {"waited_s", waited}}.dump().c_str());
    }
    return inv.conflict_exit_code;
  }
  report_took(inv, prog, took);
  if (inv.json) {
    nlohmann::json j{{"acquired", true},
                     {"path", inv.path},
                     {"backend", std::string(to_string(lock->backend()))},
                     {"mode", std::string(to_string(lock->mode()))},
                     {"token", lock->token()},
                     {"waited_s", waited}};
    std::printf("%s\n", j.dump().c_str());
  }
  if (inv.verbose) std::printf("%s: executing %s\n", prog.c_str(), inv.command.front().c_str());

  ::setenv("HOLDFAST_TOKEN", std::to_string(lock->token()).c_str(), 1);
  ::setenv("HOLDFAST_LOCK", inv.path.c_str(), 1);
  const bool kernel = lock->backend() == Backend::ofd || lock->backend() == Backend::flock;
  // The command is killed if holdfast dies when nothing else would protect it: with -o, a lease,
  // or an shm lock (which dies with holdfast).
  CommandSpec spec{inv.command, prog, kernel && !inv.close_before_exec ? lock->fd() : -1,
                   inv.close_before_exec || lease || shm};
  // A dotlock's record must name the command before it runs; a kernel lock's record is
  // informative (the kernel lock is the truth), so the command need not wait for it.
  spec.hold_until_named = !kernel;
  if (inv.no_fork) {
    // The lock passes to the command with this pid: the kernel lock's descriptor is inherited,
    // and a dotlock's record already names this process (whose identity exec keeps).
    return exec_in_place(spec);  // returns only on failure; ~Lock releases
  }
  int status = run_command(spec, [&](pid_t child, const ForkBracket& fork) {
    auto id = identity_of_forked_child(child, fork);
    if (!id) {
      // A dotlock is held while a process it names lives: a command it does not name would run
      // unprotected once holdfast dies. A kernel lock is held by the inherited descriptor itself
      // (its record, which would name processes nobody could verify, is then not written).
      if (!kernel) {
        throw Error(inv.path, "cannot record the command's identity", "refusing to run it under a record that "
                    "does not name it", exit_code::os_error);
      }
      return;
    }
    lock->add_holder_process(*id);
  });
  if (kernel) {
    // Like flock(1): just close our descriptor. Processes the command left behind that still
    // hold the inherited descriptor keep the lock.
    lock->detach();
  } else {
    lock->release();
  }
  return status;
}

// flock(1)'s exit codes for a lock file it cannot open: 66 (EX_NOINPUT), 73 (EX_CANTCREAT) for
// EROFS and ENOSPC, 71 for ENOMEM/EMFILE/ENFILE. The library's own codes stand for the rest
// (a refused symlink 77, a corrupt fence 65, an unsupported backend 69).
int exit_code_for(const Error& e, const LockInvocation& inv) {
  if (e.path() != inv.path || e.error_number() == 0) return e.exit_code();
  switch (e.error_number()) {
    case EACCES:
    case EPERM:
    case ENOENT:
    case ENOTDIR: return exit_code::no_input;
    case EROFS:
    case ENOSPC: return exit_code::cant_create;
    default: return e.exit_code();
  }
}

}  // namespace

int lock_main(const std::vector<std::string>& args, const std::string& prog) {
  LockInvocation inv;
  try {
    inv = parse_lock_args(args);
  } catch (const LockUsageError& e) {
    print_usage_error(e, prog == "flock" ? args.front() : prog, prog);
    return exit_code::usage;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: %s\n", prog.c_str(), e.what());
    return e.exit_code();
  }
  if (inv.action == LockInvocation::Action::help) {
    print_usage(prog);
    return exit_code::ok;
  }
  if (inv.action == LockInvocation::Action::version) {
    std::printf("%s from holdfast %s (util-linux flock(1) 2.38+ compatible)\n", prog.c_str(), HOLDFAST_VERSION_STRING);
    return exit_code::ok;
  }
  // As flock(1): a SIGCHLD ignored by whoever started us would make the kernel reap the command
  // itself, and its status would be lost. The command inherits the default too.
  ::signal(SIGCHLD, SIG_DFL);
  try {
    return inv.fd >= 0 ? lock_descriptor(inv, prog) : lock_path(inv, prog);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: %s\n", prog.c_str(), e.what());
    return exit_code_for(e, inv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", prog.c_str(), e.what());
    return exit_code::software;
  }
}

Run add_lock(CLI::App& root) {
  // Only for `holdfast --help`: main() hands `holdfast lock ...` its raw argv (lock_main), since
  // flock(1)'s parsing stops at the first non-option and CLI11's does not.
  root.add_subcommand("lock", "Run a command while holding a lock on a file (util-linux flock(1), exactly)")
      ->allow_extras();
  return [] { return exit_code::usage; };
}

}  // namespace holdfast::cli
