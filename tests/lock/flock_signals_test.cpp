// `holdfast lock` and signals, as flock(1) and nohup(1) users rely on them, and the review's
// signal defects (C15, C16, C17, C20, S9). Windows that are microseconds wide are opened with the
// HOLDFAST_TEST_STOP_AT hook (holdfast stops itself there) so each test is deterministic.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "holdfast/error.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::read_file;

struct SpawnOptions {
  std::vector<int> ignore;          // signals set to SIG_IGN before exec (as nohup and shells do)
  std::vector<std::string> env;     // extra NAME=VALUE
  std::string stdout_path = "/dev/null";
};

// Starts argv (argv[0] looked up in PATH) with SIGPIPE at its default (the test runner ignores it)
// and `options` applied; returns the pid.
pid_t spawn(const std::vector<std::string>& argv, const SpawnOptions& options = {}) {
  return testing::fork_child([&]() -> int {
    ::signal(SIGPIPE, SIG_DFL);
    for (int s : options.ignore) ::signal(s, SIG_IGN);
    for (const auto& e : options.env) ::putenv(const_cast<char*>(e.c_str()));
    int out = ::open(options.stdout_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    ::dup2(out, 1);
    testing::exec_argv(argv);
  });
}

std::vector<std::string> holdfast_lock(std::vector<std::string> args) {
  args.insert(args.begin(), {testing::holdfast_path(), "lock"});
  return args;
}

char state_of(pid_t pid) {
  std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? '?' : stat[close + 2];
}

pid_t only_child_of(pid_t pid) {
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
  pid_t child = 0;
  in >> child;
  return child;
}

bool alive(pid_t pid) { return ::kill(pid, 0) == 0 && state_of(pid) != 'Z'; }

// The command's mask of ignored signals (SigIgn in /proc/PID/status), as hex text.
const std::string kPrintSigIgn = "sed -n 's/^SigIgn:[[:space:]]*//p' /proc/$$/status";

// The standard signals (1-31) of a SigIgn mask. Real-time signals are left out: whatever started
// the test runner may ignore some of them (glibc's internal 32 and 33 are seen ignored on some
// sandboxes), and neither holdfast nor flock(1) touches them.
uint64_t standard_signals(const std::string& sigign_hex) {
  return sigign_hex.empty() ? ~uint64_t{0} : std::stoull(sigign_hex, nullptr, 16) & 0x7fffffffULL;
}

// C15: nohup and background jobs ignore SIGHUP / SIGINT / SIGQUIT; the command must inherit that.
TEST(LockSignals, IgnoredSignalsStayIgnoredInTheCommandAsWithFlock1) {
  testing::TempDir dir;
  SpawnOptions o{{SIGHUP, SIGINT, SIGQUIT}, {}, dir / "holdfast.out"};
  EXPECT_EQ(testing::wait_child(spawn(holdfast_lock({dir / "l", "sh", "-c", kPrintSigIgn}), o)), 0);
  EXPECT_EQ(standard_signals(read_file(dir / "holdfast.out")), 0x7U) << read_file(dir / "holdfast.out");
  if (::access("/usr/bin/flock", X_OK) == 0) {
    o.stdout_path = dir / "flock.out";
    EXPECT_EQ(testing::wait_child(spawn({"/usr/bin/flock", dir / "l", "sh", "-c", kPrintSigIgn}, o)), 0);
    EXPECT_EQ(read_file(dir / "flock.out"), read_file(dir / "holdfast.out"));
  }
}

// C15: under nohup, a SIGHUP to holdfast is neither fatal to it nor forwarded to the command.
TEST(LockSignals, NohupProtectsHoldfastAndTheCommand) {
  testing::TempDir dir;
  const std::string script = "echo started > \"$0\".started; while [ ! -e \"$0\".release ]; do sleep 0.01; done; echo survived";
  pid_t h = spawn(holdfast_lock({dir / "l", "sh", "-c", script, dir / "c"}), {{SIGHUP}, {}, dir / "out"});
  ASSERT_TRUE(eventually([&] { return read_file(dir / "c.started") == "started\n"; }));
  ::kill(h, SIGHUP);
  std::ofstream(dir / "c.release") << "";
  EXPECT_EQ(testing::wait_child(h), 0);
  EXPECT_EQ(read_file(dir / "out"), "survived\n");
}

// C16: with SIGCHLD ignored by whoever started holdfast, the command's status is still reported,
// and the command starts with SIGCHLD at its default, as flock(1) does.
TEST(LockSignals, InheritedSigchldIgnoreIsReset) {
  testing::TempDir dir;
  EXPECT_EQ(testing::wait_child(spawn(holdfast_lock({dir / "l", "sh", "-c", "exit 3"}), {{SIGCHLD}, {}, "/dev/null"})), 3);
  EXPECT_EQ(testing::wait_child(spawn(holdfast_lock({dir / "l", "sh", "-c", kPrintSigIgn}), {{SIGCHLD}, {}, dir / "out"})), 0);
  EXPECT_EQ(standard_signals(read_file(dir / "out")), 0U) << read_file(dir / "out");
}

// C17: the command dies (here: is killed) before holdfast releases it, and a SIGTERM is pending for
// holdfast. holdfast must report it and free the lock, not die of SIGPIPE leaving a dotlock behind.
TEST(LockSignals, CommandDeadBeforeReleaseIsReportedNotSigpipe) {
  testing::TempDir dir;
  pid_t h = spawn(holdfast_lock({"--backend", "link", dir / "l", "true"}), {{}, {"HOLDFAST_TEST_STOP_AT=before-start"}, "/dev/null"});
  ASSERT_TRUE(eventually([&] { return state_of(h) == 'T'; }));
  pid_t child = only_child_of(h);
  ASSERT_GT(child, 0);
  ::kill(child, SIGKILL);
  ASSERT_TRUE(eventually([&] { return state_of(child) == 'Z'; }));
  ::kill(h, SIGTERM);
  ::kill(h, SIGCONT);
  int rc = testing::wait_child(h);
  EXPECT_NE(rc, 128 + SIGPIPE) << "holdfast died of SIGPIPE";
  EXPECT_EQ(rc, 128 + SIGKILL);  // what killed the command, as if it had run
  EXPECT_EQ(::access((dir / "l").c_str(), F_OK), -1) << "the dotlock was left behind";
  EXPECT_EQ(testing::holdfast({"lock", "-n", "--backend", "link", dir / "l", "true"}).exit_code, 0);
}

// S9: a signal that reaches holdfast after the command was reaped is not forwarded: its pid may
// already belong to another process. The test gives that pid to a victim (ns_last_pid, as root).
TEST(LockSignals, NeverSignalsAReapedPid) {
  if (::geteuid() != 0 || ::access("/proc/sys/kernel/ns_last_pid", W_OK) != 0) GTEST_SKIP() << "needs root";
  testing::TempDir dir;
  pid_t h = spawn(holdfast_lock({dir / "l", "sh", "-c", "echo $$ > \"$0\"", dir / "pid"}),
                  {{}, {"HOLDFAST_TEST_STOP_AT=after-reap"}, "/dev/null"});
  ASSERT_TRUE(eventually([&] { return state_of(h) == 'T'; }));
  const pid_t reaped = std::stoi(read_file(dir / "pid"));
  pid_t victim = -1;
  for (int attempt = 0; attempt < 500 && victim != reaped; ++attempt) {
    if (victim > 0) {
      ::kill(victim, SIGKILL);
      testing::wait_child(victim);
    }
    std::ofstream(("/proc/sys/kernel/ns_last_pid")) << reaped - 1;
    victim = testing::fork_child([] {
      for (;;) ::pause();
      return 0;
    });
  }
  if (victim != reaped) {
    ::kill(victim, SIGKILL);
    testing::wait_child(victim);
    ::kill(h, SIGCONT);
    testing::wait_child(h);
    GTEST_SKIP() << "could not recycle pid " << reaped << " (a busy machine)";
  }
  ::kill(h, SIGTERM);
  ::kill(h, SIGCONT);
  EXPECT_EQ(testing::wait_child(h), 0);
  int status = 0;
  EXPECT_EQ(::waitpid(victim, &status, WNOHANG), 0) << "the process that reused the command's pid was signalled";
  ::kill(victim, SIGKILL);
  testing::wait_child(victim);
}

// The pid that a command run as `sh -c 'echo $$ > "$0"; exec sleep 600' PID_FILE` wrote to
// `pid_file`, once that process has exec'd sleep; -1 if it never does (a hang).
pid_t sleeping_command(const std::string& pid_file) {
  const bool asleep = eventually([&] {
    std::string p = read_file(pid_file);
    return !p.empty() && read_file("/proc/" + std::to_string(std::stoi(p)) + "/comm") == "sleep\n";
  });
  return asleep ? std::stoi(read_file(pid_file)) : -1;
}

// C20: with a lease, only holdfast's heartbeat keeps the dotlock fresh; if holdfast is killed the
// command must not go on under a lock that others will soon judge stale. It dies with holdfast.
TEST(LockSignals, LeaseCommandDiesWithHoldfast) {
  testing::TempDir dir;
  pid_t h = spawn(holdfast_lock({"--backend", "link", "--stale-after", "60s", dir / "l", "sh", "-c",
                                 "echo $$ > \"$0\"; exec sleep 600", dir / "pid"}));
  const pid_t command = sleeping_command(dir / "pid");
  ASSERT_GT(command, 0) << "the command never reached its sleep";
  ::kill(h, SIGKILL);
  testing::wait_child(h);
  EXPECT_TRUE(eventually([&] { return !alive(command); })) << "the command outlived holdfast and its heartbeat";
  if (alive(command)) ::kill(command, SIGKILL);
}

// flock(1) semantics kept: without a lease, the command outlives a killed holdfast (it holds the
// lock itself), and SIGTERM to holdfast reaches the command (a documented holdfast addition).
TEST(LockSignals, WithoutLeaseTheCommandOutlivesHoldfast) {
  testing::TempDir dir;
  pid_t h = spawn(holdfast_lock({dir / "l", "sh", "-c", "echo $$ > \"$0\"; exec sleep 600", dir / "pid"}));
  const pid_t command = sleeping_command(dir / "pid");
  ASSERT_GT(command, 0) << "the command never reached its sleep";
  ::kill(h, SIGKILL);
  testing::wait_child(h);
  EXPECT_TRUE(alive(command));
  EXPECT_EQ(testing::holdfast({"lock", "-n", dir / "l", "true"}).exit_code, 1);  // it still holds the lock
  ::kill(command, SIGKILL);
}

// C6, the CLI half: a dotlock's record must name the command before it runs. With /proc hidden
// (a tmpfs over it, in a private mount namespace) the command's identity cannot be read: holdfast
// refuses to run it, and frees the lock. A kernel lock needs no record: the command runs.
TEST(LockIdentity, RefusesToRunACommandTheDotlockRecordCannotName) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for a mount namespace";
  testing::TempDir dir;
  const std::string script = "mount -t tmpfs none /proc || exit 200; exec \"$0\" lock \"$@\" sh -c 'echo ran'";
  auto dotlock = testing::run({"unshare", "--mount", "sh", "-c", script, testing::holdfast_path(), "--backend", "link", dir / "l"});
  if (dotlock.exit_code == 200 || dotlock.exit_code == 1) GTEST_SKIP() << "cannot mount over /proc here: " << dotlock.err;
  EXPECT_EQ(dotlock.exit_code, exit_code::os_error) << dotlock.err;
  EXPECT_EQ(dotlock.out, "");
  EXPECT_NE(dotlock.err.find("cannot record the command's identity"), std::string::npos) << dotlock.err;
  EXPECT_NE(::access((dir / "l").c_str(), F_OK), 0) << "the dotlock was left behind";
  auto kernel = testing::run({"unshare", "--mount", "sh", "-c", script, testing::holdfast_path(), dir / "k"});
  EXPECT_EQ(kernel.exit_code, 0) << kernel.err;
  EXPECT_EQ(kernel.out, "ran\n");
}

}  // namespace
}  // namespace holdfast
