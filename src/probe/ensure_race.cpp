// holdfast probe --ensure: the daemon double-start race, on the probe's futex harness.
//
// Each round, every worker is released at the same instant and asks for "the" instance of
// COMMAND, in two phases: naive (read a pidfile, kill(pid, 0), else spawn and write the pidfile,
// as countless client scripts do) and holdfast (ensure_running). Every start of COMMAND goes
// through a tiny sh wrapper that appends its pid to the round's starts file and then execs
// COMMAND (same pid); the wrapper and everything it becomes carry the round's marker in their
// environment.
//
// Counting (review S1): no sleep. After a phase, the count is the pids recorded in the starts file,
// plus every live process still running the wrapper itself (started, not yet recorded), found by
// scanning /proc for the marker, plus (naive phase) every pid a worker forked, exec'd or not. Each live marked process is pinned by a pidfd before it is
// checked and signalled through that pidfd only after the check (and a pidfd_send_signal(0)
// proves it was not reaped in between, so the pid was not reused): nothing unverified is killed.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"
#include "holdfast/probe.hpp"
#include "probe/harness.hpp"
#include "probe/internal.hpp"
#include "sys/fd.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast {

namespace {

constexpr const char* kStartsEnv = "HOLDFAST_PROBE_STARTS";
// Counts a start, then becomes COMMAND (exec keeps the pid).
constexpr const char* kWrapper = "echo $$ >> \"$HOLDFAST_PROBE_STARTS\"; exec \"$@\"";

std::set<pid_t> read_pids(const std::string& path) {
  std::set<pid_t> pids;
  auto text = sys::read_file(path, 1 << 20);
  if (!text) return pids;
  std::istringstream in(*text);
  long pid = 0;
  while (in >> pid) pids.insert(static_cast<pid_t>(pid));
  return pids;
}

bool has_entry(const std::string& nul_separated, const std::string& entry) {
  size_t pos = 0;
  while (pos < nul_separated.size()) {
    size_t end = nul_separated.find('\0', pos);
    if (end == std::string::npos) end = nul_separated.size();
    if (nul_separated.compare(pos, end - pos, entry) == 0) return true;
    pos = end + 1;
  }
  return false;
}

struct Marked {
  pid_t pid;
  sys::UniqueFd pidfd;
  bool still_wrapper;  // not yet exec'd into COMMAND, so maybe not yet recorded
};

// Live processes whose environment holds `marker`, each pinned by a pidfd and verified after.
std::vector<Marked> marked_processes(const std::string& marker) {
  std::vector<Marked> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto pid = static_cast<pid_t>(std::stol(name));
    sys::UniqueFd fd(sys::pidfd_open_nothrow(pid));
    if (!fd) continue;
    auto env = sys::read_file("/proc/" + name + "/environ", 1 << 20);
    if (!env || !has_entry(*env, marker)) continue;
    auto cmdline = sys::read_file("/proc/" + name + "/cmdline", 1 << 16).value_or("");
    // Still the same process as the pidfd's: not reaped (a zombie still answers), so the pid
    // was not reused while we read its /proc files.
    if (sys::pidfd_signal_nothrow(fd.get(), 0) != 0) continue;
    out.push_back(Marked{pid, std::move(fd), has_entry(cmdline, kWrapper)});
  }
  return out;
}

// Counts the starts of one phase (see the file comment) and kills every process of it.
// `spawned`: pids the naive workers forked themselves. They are unreaped children of our
// workers (which reap only at their next task), so their pids cannot have been reused: they
// are counted and killed through pidfds even if they have not exec'd the wrapper yet (before
// exec, /proc/PID/environ still shows the worker's environment, without the marker).
}  // namespace

int probe_internal::count_and_kill_starts(const std::string& starts, const std::set<pid_t>& spawned) {
  const std::string marker = std::string(kStartsEnv) + "=" + starts;
  std::set<pid_t> started = read_pids(starts);
  std::vector<sys::UniqueFd> own;
  for (pid_t pid : spawned) {
    started.insert(pid);
    sys::UniqueFd fd(sys::pidfd_open_nothrow(pid));
    if (fd) sys::pidfd_signal_nothrow(fd.get(), SIGKILL);
    own.push_back(std::move(fd));
  }
  for (auto& fd : own) {
    if (!fd) continue;
    pollfd p{fd.get(), POLLIN, 0};
    ::poll(&p, 1, 5000);
  }
  for (int pass = 0; pass < 100; ++pass) {
    auto live = marked_processes(marker);
    if (live.empty()) break;
    for (auto& m : live) {
      if (m.still_wrapper) started.insert(m.pid);
      sys::pidfd_signal_nothrow(m.pidfd.get(), SIGKILL);
    }
    for (auto& m : live) {
      pollfd p{m.pidfd.get(), POLLIN, 0};
      ::poll(&p, 1, 5000);  // exited (a zombie is no longer a start that can record itself)
    }
    for (pid_t pid : read_pids(starts)) started.insert(pid);
  }
  return static_cast<int>(started.size());
}

namespace {

// One worker of the naive phase: pidfile check-then-spawn.
pid_t naive_ensure(const std::string& pidfile, const std::vector<std::string>& argv, const std::string& starts) {
  if (auto text = sys::read_file(pidfile, 64)) {
    auto pid = static_cast<pid_t>(std::atol(text->c_str()));
    if (pid > 0 && ::kill(pid, 0) == 0) return pid;
  }
  const std::string env = std::string(kStartsEnv) + "=" + starts;
  pid_t child = ::fork();
  if (child == 0) {
    ::setsid();
    sys::reset_signals();
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    ::putenv(const_cast<char*>(env.c_str()));
    std::vector<char*> args;
    args.reserve(argv.size() + 1);
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

// The distinct pids the workers answered with.
std::set<pid_t> answers(const probe_internal::Harness& h) {
  std::set<pid_t> out;
  for (int i = 0; i < h.workers(); ++i) {
    if (h.result(i) > 0) out.insert(h.result(i));
  }
  return out;
}

void record_round(EnsureRacePhase& phase, const probe_internal::Harness& h, int instances) {
  phase.instances.push_back(instances);
  std::set<pid_t> distinct;
  bool all = true;
  for (int i = 0; i < h.workers(); ++i) {
    pid_t p = h.result(i);
    if (p <= 0) {
      ++phase.failed_workers;
      all = false;
    } else {
      distinct.insert(p);
    }
  }
  if (all && distinct.size() == 1) ++phase.agreeing_rounds;
}

std::string summary(const EnsureRacePhase& p) {
  if (p.instances.empty()) return "no rounds";
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

// Restores the subreaper attribute on scope exit.
class Subreaper {
 public:
  Subreaper() noexcept {
    ::prctl(PR_GET_CHILD_SUBREAPER, &old_);
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  }
  ~Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, old_); }
  Subreaper(const Subreaper&) = delete;
  Subreaper& operator=(const Subreaper&) = delete;

 private:
  int old_ = 0;
};

}  // namespace

EnsureRaceReport race_ensure(const EnsureRaceOptions& options) {
  if (options.workers < 2 || options.workers > 10000) {
    throw Error("--workers", "invalid value", std::to_string(options.workers), exit_code::usage);
  }
  if (options.rounds < 1) throw Error("--rounds", "invalid value", std::to_string(options.rounds), exit_code::usage);
  if (options.command.empty()) throw Error("", "probe --ensure", "missing COMMAND (after --)", exit_code::usage);
  int err = 0;
  auto exe = sys::find_executable(options.command[0], err);
  if (!exe) {
    throw Error(options.command[0], "cannot run command", err == ENOENT ? "command not found" : "not executable",
                err == ENOENT ? exit_code::not_found : exit_code::cannot_exec);
  }
  std::string scratch_template = "/tmp/holdfast-probe-ensure-XXXXXX";
  if (::mkdtemp(scratch_template.data()) == nullptr) throw Error(errno, "/tmp", "mkdtemp");
  const std::string scratch = scratch_template;
  const std::string state = options.state_dir.empty() ? scratch + "/state" : options.state_dir;
  const std::string name = "probe-ensure-" + std::to_string(::getpid());
  std::vector<std::string> wrapped{"/bin/sh", "-c", kWrapper, "holdfast-probe", *exe};
  wrapped.insert(wrapped.end(), options.command.begin() + 1, options.command.end());
  const std::string pidfile = scratch + "/naive.pid";
  auto starts_of = [&](uint32_t r) {
    return scratch + (r % 2 == 0 ? "/naive-starts-" : "/ensure-starts-") + std::to_string(r / 2);
  };

  EnsureRaceReport report;
  report.workers = options.workers;
  report.rounds = options.rounds;
  report.command = options.command;
  {
    // Orphaned daemons and launchers are reparented to us, so their zombies are reaped here
    // rather than left to an init that may not reap (containers).
    Subreaper subreaper;
    // Even rounds: naive; odd rounds: holdfast ensure. Runs in the workers.
    probe_internal::Harness h(options.workers, scratch, [&](int, uint32_t r) -> int32_t {
      while (::waitpid(-1, nullptr, WNOHANG) > 0) {  // naive instances killed last round
      }
      if (r % 2 == 0) return naive_ensure(pidfile, wrapped, starts_of(r));
      EnsureOptions eo;
      eo.state_dir = state;
      eo.environment = {std::string(kStartsEnv) + "=" + starts_of(r)};
      eo.ready_timeout = std::chrono::seconds(30);
      return ensure_running(name, wrapped, eo).pid;
    });
    for (int round = 0; round < options.rounds; ++round) {
      const auto naive_round = static_cast<uint32_t>(2 * round);
      ::unlink(pidfile.c_str());
      h.command(probe_internal::Phase::task, Primitive::mkdir, naive_round);
      // Every naive answer is a pid some worker spawned (its own, or read from the pidfile).
      record_round(report.naive, h, probe_internal::count_and_kill_starts(starts_of(naive_round), answers(h)));

      const auto ensure_round = naive_round + 1;
      h.command(probe_internal::Phase::task, Primitive::mkdir, ensure_round);
      // Counted before anything is stopped: with --ready none a start may not have recorded
      // itself yet, and a stopped wrapper never will.
      int instances = probe_internal::count_and_kill_starts(starts_of(ensure_round), {});
      StopOptions stop;
      stop.state_dir = state;
      stop.timeout = std::chrono::seconds(5);
      stop.kill_after = std::chrono::seconds(2);
      try {
        stop_instance(name, stop);  // clears the record of the instance just killed
      } catch (const Error&) {
      }
      // The starts file only grows; anything recorded since is still a start of this round.
      instances = std::max(instances, probe_internal::count_and_kill_starts(starts_of(ensure_round), {}));
      record_round(report.ensured, h, instances);
      while (::waitpid(-1, nullptr, WNOHANG) > 0) {
      }
    }
  }
  std::error_code ec;
  if (!options.state_dir.empty()) {
    for (const char* suffix : {".lock", ".spawn.lock", ".json", ".log"}) ::unlink((state + "/" + name + suffix).c_str());
  }
  std::filesystem::remove_all(scratch, ec);

  report.exactly_one = report.ensured.failed_workers == 0 && report.ensured.agreeing_rounds == options.rounds &&
                       std::all_of(report.ensured.instances.begin(), report.ensured.instances.end(),
                                   [](int n) { return n == 1; });
  return report;
}

std::string EnsureRaceReport::to_json() const {
  nlohmann::json j;
  j["workers"] = workers;
  j["rounds"] = rounds;
  j["command"] = command;
  j["naive"] = {{"instances_per_round", naive.instances},
                {"agreeing_rounds", naive.agreeing_rounds},
                {"failed_workers", naive.failed_workers}};
  j["holdfast"] = {{"instances_per_round", ensured.instances},
                   {"agreeing_rounds", ensured.agreeing_rounds},
                   {"failed_workers", ensured.failed_workers}};
  j["exactly_one"] = exactly_one;
  return j.dump();
}

std::string EnsureRaceReport::to_text() const {
  std::string out = "probe --ensure: " + std::to_string(workers) + " workers x " + std::to_string(rounds) +
                    " rounds, released together, each asking for one instance of: " +
                    (command.empty() ? std::string("?") : command[0]) + "\n";
  out += "  naive pidfile check-then-spawn: " + summary(naive) + "\n";
  out += "  holdfast ensure:                " + summary(ensured) + "\n";
  if (ensured.failed_workers > 0) {
    out += "  holdfast ensure: " + std::to_string(ensured.failed_workers) + " worker calls failed\n";
  }
  out += std::string("verdict: ") +
         (exactly_one ? "holdfast ensure ran exactly one instance every round"
                      : "MORE THAN ONE INSTANCE (or failures) under holdfast ensure — does COMMAND exit at once?") +
         "\n";
  return out;
}

}  // namespace holdfast
