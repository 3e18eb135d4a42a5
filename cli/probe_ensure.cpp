// holdfast probe --ensure: reproduce the daemon double-start race for any command.
//
// Each round, WORKERS processes are released at the same instant (a pipe barrier) and each asks
// for "the" instance of COMMAND twice over, in two separate phases:
//   naive     the classic client logic: read a pidfile, kill(pid, 0), else spawn and write the pidfile
//   holdfast  holdfast::ensure_running (what `holdfast ensure` runs)
// Every start of COMMAND is counted through a tiny sh wrapper that appends its pid to a file and
// then execs COMMAND (same pid). Between rounds every instance is stopped. Exit 0 when every
// holdfast round ran exactly one instance and all workers got its pid; 1 otherwise.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"
#include "probe_ensure.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast::cli {

namespace {

constexpr const char* kStartsEnv = "HOLDFAST_PROBE_STARTS";
// Counts a start, then becomes COMMAND (exec keeps the pid).
constexpr const char* kWrapper = "echo $$ >> \"$HOLDFAST_PROBE_STARTS\"; exec \"$@\"";

std::vector<pid_t> read_pids(const std::string& path) {
  std::vector<pid_t> pids;
  std::ifstream in(path);
  long pid = 0;
  while (in >> pid) pids.push_back(static_cast<pid_t>(pid));
  return pids;
}

// Kills the processes this probe started (pids from the starts file, pinned by pidfd).
void kill_started(const std::string& starts) {
  std::vector<sys::UniqueFd> fds;
  for (pid_t pid : read_pids(starts)) {
    int fd = sys::pidfd_open_nothrow(pid);
    if (fd < 0) continue;
    sys::pidfd_signal_nothrow(fd, SIGKILL);
    fds.emplace_back(fd);
  }
  for (auto& fd : fds) {
    pollfd p{fd.get(), POLLIN, 0};
    ::poll(&p, 1, 2000);
  }
}

// One worker of the naive phase: pidfile check-then-spawn, as countless client scripts do.
pid_t naive_ensure(const std::string& pidfile, const std::vector<std::string>& argv) {
  if (auto text = sys::read_file(pidfile, 64)) {
    pid_t pid = static_cast<pid_t>(std::atol(text->c_str()));
    if (pid > 0 && ::kill(pid, 0) == 0) return pid;
  }
  pid_t child = ::fork();
  if (child == 0) {
    ::setsid();
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  int fd = ::open(pidfile.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    sys::write_all(fd, std::to_string(child) + "\n");
    ::close(fd);
  }
  return child;
}

struct Phase {
  std::vector<int> instances;   // starts per round
  int agreeing_rounds = 0;      // rounds where every worker got the same pid
  int failed_workers = 0;
};

// Runs one round: forks `workers` processes that block on a pipe until all exist, then calls
// `body` in each; collects the pid each reports (0 on failure) through shared memory.
template <typename Body>
std::vector<pid_t> race(int workers, Body body) {
  auto bytes = sizeof(pid_t) * static_cast<size_t>(workers);
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw Error(errno, "", "mmap");
  auto* slots = static_cast<pid_t*>(mem);
  int gun[2];
  if (::pipe2(gun, O_CLOEXEC) != 0) throw Error(errno, "", "pipe");
  std::vector<pid_t> kids;
  for (int i = 0; i < workers; ++i) {
    pid_t k = ::fork();
    if (k < 0) break;
    if (k == 0) {
      ::close(gun[1]);
      char c;
      while (::read(gun[0], &c, 1) < 0 && errno == EINTR) {
      }
      pid_t got = 0;
      try {
        got = body();
      } catch (...) {
      }
      slots[i] = got;
      ::_exit(0);
    }
    kids.push_back(k);
  }
  ::close(gun[0]);
  ::close(gun[1]);  // fire: every worker's read returns 0 at once
  for (pid_t k : kids) {
    int st = 0;
    while (::waitpid(k, &st, 0) < 0 && errno == EINTR) {
    }
  }
  std::vector<pid_t> out(slots, slots + workers);
  ::munmap(mem, bytes);
  return out;
}

void record_round(Phase& phase, const std::vector<pid_t>& pids, const std::string& starts) {
  phase.instances.push_back(static_cast<int>(read_pids(starts).size()));
  std::set<pid_t> distinct;
  for (pid_t p : pids) {
    if (p == 0) ++phase.failed_workers;
    else distinct.insert(p);
  }
  if (distinct.size() == 1 && std::find(pids.begin(), pids.end(), 0) == pids.end()) ++phase.agreeing_rounds;
}

std::string summary(const Phase& p) {
  int max = *std::max_element(p.instances.begin(), p.instances.end());
  int min = *std::min_element(p.instances.begin(), p.instances.end());
  long sum = 0;
  int over = 0;
  for (int n : p.instances) {
    sum += n;
    if (n > 1) ++over;
  }
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "instances per round min %d max %d mean %.2f; rounds with more than one: %d/%zu; "
                "rounds where all workers got one pid: %d/%zu",
                min, max, static_cast<double>(sum) / static_cast<double>(p.instances.size()), over,
                p.instances.size(), p.agreeing_rounds, p.instances.size());
  return buf;
}

}  // namespace

int run_probe_ensure(int workers, int rounds, const std::vector<std::string>& command, bool json,
                     const std::string& state_dir) {
  if (workers < 1 || workers > 10000) throw Error("--workers", "invalid value", std::to_string(workers), exit_code::usage);
  if (rounds < 1) throw Error("--rounds", "invalid value", std::to_string(rounds), exit_code::usage);
  if (command.empty()) throw Error("", "probe --ensure", "missing COMMAND (after --)", exit_code::usage);
  int err = 0;
  auto exe = sys::find_executable(command[0], err);
  if (!exe) {
    throw Error(command[0], "cannot run command", err == ENOENT ? "command not found" : "not executable",
                err == ENOENT ? exit_code::not_found : exit_code::cannot_exec);
  }
  std::string scratch_template = "/tmp/holdfast-probe-ensure-XXXXXX";
  if (::mkdtemp(scratch_template.data()) == nullptr) throw Error(errno, "/tmp", "mkdtemp");
  const std::string scratch = scratch_template;
  const std::string state = state_dir.empty() ? scratch + "/state" : state_dir;
  const std::string name = "probe-ensure-" + std::to_string(::getpid());

  std::vector<std::string> wrapped{"/bin/sh", "-c", kWrapper, "holdfast-probe", *exe};
  wrapped.insert(wrapped.end(), command.begin() + 1, command.end());

  // Orphaned daemons and launchers are reparented to us, so their zombies are reaped here rather
  // than left to an init that may not reap (containers).
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  auto reap = [] {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  };
  Phase naive, ensured;
  for (int round = 0; round < rounds; ++round) {
    // naive: pidfile check-then-spawn
    const std::string naive_starts = scratch + "/naive-starts-" + std::to_string(round);
    const std::string pidfile = scratch + "/naive.pid";
    ::unlink(pidfile.c_str());
    ::setenv(kStartsEnv, naive_starts.c_str(), 1);
    auto pids = race(workers, [&] { return naive_ensure(pidfile, wrapped); });
    ::unsetenv(kStartsEnv);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the wrappers record starts
    record_round(naive, pids, naive_starts);
    kill_started(naive_starts);
    reap();

    // holdfast ensure
    const std::string starts = scratch + "/ensure-starts-" + std::to_string(round);
    EnsureOptions options;
    options.state_dir = state;
    options.environment = {std::string(kStartsEnv) + "=" + starts};
    options.ready_timeout = std::chrono::seconds(30);
    pids = race(workers, [&] { return ensure_running(name, wrapped, options).pid; });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    record_round(ensured, pids, starts);
    StopOptions stop;
    stop.state_dir = state;
    stop.timeout = std::chrono::seconds(5);
    stop.kill_after = std::chrono::seconds(2);
    try {
      stop_instance(name, stop);
    } catch (const Error&) {
    }
    kill_started(starts);  // anything that survived (a command that ignores the protocol)
    reap();
  }
  std::error_code ec;
  if (state_dir.empty()) {
    std::filesystem::remove_all(scratch, ec);
  } else {
    for (const char* suffix : {".lock", ".spawn.lock", ".json", ".log"}) ::unlink((state + "/" + name + suffix).c_str());
    std::filesystem::remove_all(scratch, ec);
  }

  bool ok = ensured.failed_workers == 0 && ensured.agreeing_rounds == rounds &&
            std::all_of(ensured.instances.begin(), ensured.instances.end(), [](int n) { return n == 1; });
  if (json) {
    nlohmann::json j;
    j["workers"] = workers;
    j["rounds"] = rounds;
    j["command"] = command;
    j["naive"] = {{"instances_per_round", naive.instances}, {"agreeing_rounds", naive.agreeing_rounds}};
    j["holdfast"] = {{"instances_per_round", ensured.instances},
                     {"agreeing_rounds", ensured.agreeing_rounds},
                     {"failed_workers", ensured.failed_workers}};
    j["exactly_one"] = ok;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("probe --ensure: %d workers x %d rounds, released together, each asking for one instance of: %s\n",
                workers, rounds, command[0].c_str());
    std::printf("  naive pidfile check-then-spawn: %s\n", summary(naive).c_str());
    std::printf("  holdfast ensure:                %s\n", summary(ensured).c_str());
    if (ensured.failed_workers > 0) std::printf("  holdfast ensure: %d worker calls failed\n", ensured.failed_workers);
    std::printf("verdict: %s\n", ok ? "holdfast ensure ran exactly one instance every round"
                                    : "MORE THAN ONE INSTANCE (or failures) under holdfast ensure — does COMMAND exit at once?");
  }
  return ok ? exit_code::ok : exit_code::conflict;
}

}  // namespace holdfast::cli
