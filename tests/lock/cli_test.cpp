// `holdfast lock` and `holdfast holder` as a user runs them: flock(1) compatibility, signals,
// the lock outliving a killed holdfast, and every documented error exit code.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using namespace std::chrono_literals;
using testing::holdfast;

// Starts `holdfast ARGS...` in the background; returns its pid.
pid_t spawn_holdfast(std::vector<std::string> args) {
  args.insert(args.begin(), testing::holdfast_path());
  return testing::fork_child([&]() -> int {
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    ::dup2(null, 0);
    ::dup2(null, 1);
    testing::exec_argv(args);
  });
}

// Waits until the kernel shows a lock on `path`'s inode (as lslocks would).
bool wait_for_kernel_lock(const std::string& path) {
  for (int i = 0; i < 5000; ++i) {
    try {
      if (inspect_holder(path).kernel_lock_held) return true;
    } catch (const Error&) {
    }
    std::this_thread::sleep_for(2ms);
  }
  return false;
}

// Waits until process `pid` has exec'd `program` (the command holdfast released to run).
bool wait_for_exec(pid_t pid, const std::string& program) {
  const std::string comm = "/proc/" + std::to_string(pid) + "/comm";
  for (int i = 0; i < 5000; ++i) {
    std::ifstream in(comm);
    std::string name;
    if (std::getline(in, name) && name == program) return true;
    std::this_thread::sleep_for(2ms);
  }
  return false;
}

// Waits until `path` holds a record naming `n` processes (holdfast + its command).
std::optional<HolderRecord> wait_for_record(const std::string& path, size_t n) {
  for (int i = 0; i < 5000; ++i) {
    try {
      auto r = read_holder_record(path);
      if (r && r->processes.size() >= n) return r;
    } catch (const Error&) {
    }
    std::this_thread::sleep_for(2ms);
  }
  return std::nullopt;
}

TEST(LockCli, PassesExitCodeAndEnvironment) {
  testing::TempDir dir;
  auto r = holdfast({"lock", dir / "l", "--", "sh", "-c", "echo $HOLDFAST_LOCK $HOLDFAST_TOKEN; exit 42"});
  EXPECT_EQ(r.exit_code, 42);
  std::string lock;
  unsigned long long token = 0;
  std::istringstream(r.out) >> lock >> token;
  EXPECT_EQ(lock, dir / "l");
  EXPECT_GT(token, 0u);
  auto c = holdfast({"lock", dir / "l", "-c", "exit 3"});
  EXPECT_EQ(c.exit_code, 3);
}

TEST(LockCli, JsonReportsTheGrant) {
  testing::TempDir dir;
  auto r = holdfast({"lock", "--json", "--backend", "link", dir / "l", "--", "true"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["acquired"].get<bool>());
  EXPECT_EQ(j["backend"], "link");
  EXPECT_GT(j["token"].get<uint64_t>(), 0u);
}

TEST(LockCli, ConflictNonblockTimeoutAndConflictExitCode) {
  testing::TempDir dir;
  // `holdfast lock` takes flock(2) locks by default (as flock(1) does).
  auto held = Lock::acquire(dir / "l", LockOptions{Backend::flock, LockMode::exclusive, {}, {}});
  EXPECT_EQ(holdfast({"lock", "-n", dir / "l", "--", "true"}).exit_code, 1);
  EXPECT_EQ(holdfast({"lock", "-n", "-E", "42", dir / "l", "--", "true"}).exit_code, 42);
  auto t = holdfast({"lock", "-w", "0.2", "--verbose", dir / "l", "--", "true"});
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.err.find("timeout"), std::string::npos) << t.err;
  held.release();
  EXPECT_EQ(holdfast({"lock", "-w", "0.2", dir / "l", "--", "true"}).exit_code, 0);
}

TEST(LockCli, InteroperatesWithFlock1) {
  testing::TempDir dir;
  // flock(1) holds it: holdfast's flock backend must see the conflict, and vice versa.
  pid_t f = testing::fork_child([&] {
    ::setpgid(0, 0);  // so flock and the sleep that inherits its lock can be killed together
    ::execlp("flock", "flock", (dir / "l").c_str(), "sleep", "30", static_cast<char*>(nullptr));
    return 127;
  });
  ASSERT_TRUE(wait_for_kernel_lock(dir / "l"));
  EXPECT_EQ(holdfast({"lock", "-n", "--backend", "flock", dir / "l", "--", "true"}).exit_code, 1);
  // The default backend too (review C3: it used to be OFD, which does not see flock(1)).
  EXPECT_EQ(holdfast({"lock", "-n", dir / "l", "true"}).exit_code, 1);
  ::kill(-f, SIGKILL);
  testing::wait_child(f);
  pid_t h = spawn_holdfast({"lock", "--backend", "flock", dir / "l", "--", "sleep", "2"});
  ASSERT_TRUE(wait_for_record(dir / "l", 2));
  EXPECT_EQ(testing::run({"flock", "-n", dir / "l", "true"}).exit_code, 1);
  ::kill(h, SIGTERM);
  testing::wait_child(h);
}

TEST(LockCli, ForwardsTerminationSignalsToTheCommand) {
  testing::TempDir dir;
  const std::string trapped = dir / "trapped";
  pid_t h = spawn_holdfast(
      {"lock", dir / "l", "--", "sh", "-c", "trap 'exit 7' TERM; : > \"$0\"; while :; do sleep 0.05; done", trapped});
  ASSERT_TRUE(wait_for_record(dir / "l", 2));
  struct stat st {};
  for (int i = 0; i < 5000 && ::stat(trapped.c_str(), &st) != 0; ++i) std::this_thread::sleep_for(2ms);
  ::kill(h, SIGTERM);
  EXPECT_EQ(testing::wait_child(h), 7);
}

class LockCliBackend : public ::testing::TestWithParam<std::string> {};

// Like flock(1): killing holdfast itself does not free a lock that its command still holds —
// the kernel lock lives in the inherited descriptor, a dotlock's record names the command.
TEST_P(LockCliBackend, LockOutlivesAKilledHoldfastWhileTheCommandRuns) {
  testing::TempDir dir;
  pid_t h = spawn_holdfast({"lock", "--backend", GetParam(), dir / "l", "--", "sleep", "30"});
  auto record = wait_for_record(dir / "l", 2);
  ASSERT_TRUE(record);
  // Killed before it released the command, holdfast would take the command with it (tested
  // implicitly: the command never runs unnamed). Here the command is running.
  ASSERT_TRUE(wait_for_exec(record->processes.back().pid, "sleep"));
  ::kill(h, SIGKILL);
  testing::wait_child(h);
  EXPECT_EQ(holdfast({"lock", "-n", "--backend", GetParam(), dir / "l", "--", "true"}).exit_code, 1);
  EXPECT_EQ(holdfast({"holder", dir / "l"}).exit_code, 1);
  // Once the command is gone too, the lock is free (kernel) or provably stale (dotlock).
  pid_t command = record->processes.back().pid;
  ::kill(command, SIGKILL);
  for (int i = 0; i < 500 && ::kill(command, 0) == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(holdfast({"lock", "-w", "10", "--backend", GetParam(), dir / "l", "--", "true"}).exit_code, 0);
}

// With -o the command does not hold the lock; so that it never runs unprotected, it dies with
// holdfast.
TEST_P(LockCliBackend, CloseBeforeExecTiesTheCommandToHoldfast) {
  testing::TempDir dir;
  pid_t h = spawn_holdfast({"lock", "-o", "--backend", GetParam(), dir / "l", "--", "sleep", "30"});
  auto record = wait_for_record(dir / "l", 2);
  ASSERT_TRUE(record);
  pid_t command = record->processes.back().pid;
  ASSERT_TRUE(wait_for_exec(command, "sleep"));
  ::kill(h, SIGKILL);
  testing::wait_child(h);
  bool gone = false;
  for (int i = 0; i < 500 && !gone; ++i) {
    gone = ::kill(command, 0) != 0;
    if (!gone) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(gone) << "command outlived holdfast with -o";
  EXPECT_EQ(holdfast({"lock", "-w", "10", "--backend", GetParam(), dir / "l", "--", "true"}).exit_code, 0);
}

INSTANTIATE_TEST_SUITE_P(Backends, LockCliBackend, ::testing::Values("ofd", "flock", "excl", "link"));

TEST(LockCli, SharedLocksRunTogether) {
  testing::TempDir dir;
  pid_t a = spawn_holdfast({"lock", "-s", dir / "l", "--", "sleep", "30"});
  ASSERT_TRUE(wait_for_kernel_lock(dir / "l"));
  EXPECT_EQ(holdfast({"lock", "-s", "-n", dir / "l", "--", "true"}).exit_code, 0);
  EXPECT_EQ(holdfast({"lock", "-x", "-n", dir / "l", "--", "true"}).exit_code, 1);
  ::kill(a, SIGTERM);
  testing::wait_child(a);
}

TEST(HolderCli, ReportsFreeHeldAndStale) {
  testing::TempDir dir;
  EXPECT_EQ(holdfast({"holder", dir / "none"}).exit_code, 0);
  {
    auto l = Lock::acquire(dir / "k", LockOptions{Backend::ofd, LockMode::exclusive, {}, {}});
    auto r = holdfast({"holder", "--json", dir / "k"});
    EXPECT_EQ(r.exit_code, 1);
    auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["state"], "held");
    EXPECT_TRUE(j["kernel_lock_held"].get<bool>());
    EXPECT_EQ(j["record"]["processes"][0]["pid"].get<int>(), ::getpid());
  }
  auto after = holdfast({"holder", dir / "k"});
  EXPECT_EQ(after.exit_code, 0) << after.out;
  EXPECT_NE(after.out.find("free"), std::string::npos);
  // A dotlock whose holder was SIGKILLed: stale.
  pid_t h = spawn_holdfast({"lock", "--backend", "link", dir / "d", "--", "sleep", "30"});
  auto record = wait_for_record(dir / "d", 2);
  ASSERT_TRUE(record);
  ASSERT_TRUE(wait_for_exec(record->processes.back().pid, "sleep"));
  ::kill(h, SIGKILL);
  testing::wait_child(h);
  ::kill(record->processes.back().pid, SIGKILL);
  for (int i = 0; i < 500 && ::kill(record->processes.back().pid, 0) == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(holdfast({"holder", dir / "d"}).exit_code, 2);
}

// ---- every error path: one line naming the path and cause, a documented exit code ----

void expect_error(const testing::CommandResult& r, int code, const std::string& path, const std::string& cause) {
  EXPECT_EQ(r.exit_code, code) << r.err;
  EXPECT_NE(r.err.find(path), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(cause), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not one line: " << r.err;
}

TEST(LockErrors, MissingDirectory) {
  testing::TempDir dir;
  expect_error(holdfast({"lock", dir / "no/such/l", "--", "true"}), exit_code::no_input, dir / "no/such/l",
               "does not exist");
}

TEST(LockErrors, SymlinkInStickyWorldWritableDirectoryIsRefused) {
  testing::TempDir dir;
  ::chmod(dir.path().c_str(), 01777);
  std::ofstream(dir / "victim") << "precious";
  ASSERT_EQ(::symlink((dir / "victim").c_str(), (dir / "l").c_str()), 0);
  for (const char* backend : {"ofd", "flock"}) {
    expect_error(holdfast({"lock", "--backend", backend, dir / "l", "--", "true"}), exit_code::no_perm, dir / "l",
                 "symbolic link");
  }
  std::ifstream in(dir / "victim");
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

TEST(LockErrors, PermissionDenied) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to another user";
  testing::TempDir dir;
  ::chmod(dir.path().c_str(), 0755);  // root-owned, not writable by nobody
  int rc = testing::wait_child(testing::fork_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 100;
    auto r = holdfast({"lock", dir / "l", "--", "true"});
    bool names = r.err.find(dir / "l") != std::string::npos && r.err.find("Permission denied") != std::string::npos;
    return names ? r.exit_code : 101;
  }));
  // As flock(1): a lock file that cannot be opened (or created) is 66, whatever the errno.
  EXPECT_EQ(rc, exit_code::no_input);
}

TEST(LockErrors, ReadOnlyFilesystem) {
  testing::TmpfsMount dir("size=1m");
  HOLDFAST_SKIP_WITHOUT_TMPFS(dir);
  ASSERT_TRUE(dir.remount("", MS_RDONLY)) << dir.why();
  expect_error(holdfast({"lock", dir / "l", "--", "true"}), exit_code::cant_create, dir / "l", "Read-only file system");
}

TEST(LockErrors, NoSpaceLeft) {
  testing::TmpfsMount dir("size=4k,nr_inodes=3");
  HOLDFAST_SKIP_WITHOUT_TMPFS(dir);
  {
    std::ofstream fill(dir / "fill");
    fill << std::string(1 << 16, 'x');
  }
  // A dotlock must write its record; kernel locks write nothing and work on a full disk.
  auto r = holdfast({"lock", "--backend", "link", dir / "l", "--", "true"});
  EXPECT_EQ(r.exit_code, exit_code::io_error) << r.err;
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(dir.path()), std::string::npos) << r.err;
}

TEST(LockErrors, CorruptRecordAndFence) {
  testing::TempDir dir;
  std::ofstream(dir / "l") << "{\"holdfast\":1,\"proc";  // truncated record, no kernel lock
  auto h = holdfast({"holder", dir / "l"});
  EXPECT_EQ(h.exit_code, exit_code::data) << h.out << h.err;
  EXPECT_NE(h.out.find("corrupt"), std::string::npos) << h.out;
  std::ofstream(dir / "m.fence") << std::string(128, '?');
  expect_error(holdfast({"lock", "--backend", "link", dir / "m", "--", "true"}), exit_code::data, dir / "m.fence",
               "corrupt");
}

TEST(LockErrors, UsageAndCommandErrors) {
  testing::TempDir dir;
  EXPECT_EQ(holdfast({"lock", "--no-such-flag", dir / "l", "--", "true"}).exit_code, exit_code::usage);
  EXPECT_EQ(holdfast({"lock", "--backend", "nfs", dir / "l", "--", "true"}).exit_code, exit_code::usage);
  EXPECT_EQ(holdfast({"lock", dir / "l"}).exit_code, exit_code::usage);
  // As flock(1): the last of -s/-x wins; a command that cannot be run is 69 (EX_UNAVAILABLE).
  EXPECT_EQ(holdfast({"lock", "-s", "-x", dir / "l", "--", "true"}).exit_code, exit_code::ok);
  EXPECT_EQ(holdfast({"lock", dir / "l", "--", "/no/such/command"}).exit_code, exit_code::unavailable);
  std::ofstream(dir / "noexec") << "#!/bin/sh\n";
  EXPECT_EQ(holdfast({"lock", dir / "l", "--", dir / "noexec"}).exit_code, exit_code::unavailable);
}

// The record names the command with the identity it has: its pid, its start time, and the pid
// and time namespaces /proc shows for it (holdfast takes these from its own: its child is in
// them). The command reads all of it itself, once the record names it (kernel locks do not hold
// the command until then; dotlocks do).
TEST(LockRecord, NamesTheCommandWithItsOwnIdentity) {
  for (const char* backend : {"flock", "link"}) {
    SCOPED_TRACE(backend);
    testing::TempDir dir;
    const std::string script =
        "h=\"$1\"; f=\"$2\"; i=0; "
        "until \"$h\" holder --json \"$f\" > \"$f.json\"; grep -q \"\\\"pid\\\":$$,\" \"$f.json\"; do "
        "  i=$((i+1)); [ $i -lt 3000 ] || exit 9; sleep 0.01; done; "
        "echo \"$$ $(cut -d' ' -f22 /proc/$$/stat) $(stat -L -c %i /proc/$$/ns/pid) $(stat -L -c %i /proc/$$/ns/time)\"";
    auto r = holdfast({"lock", "--backend", backend, dir / "l", "--", "sh", "-c", script, "sh", testing::holdfast_path(),
                       dir / "l"});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    std::istringstream ids(r.out);
    long long pid = 0;
    unsigned long long start = 0, pid_ns = 0, time_ns = 0;
    ASSERT_TRUE(ids >> pid >> start >> pid_ns >> time_ns) << r.out;
    std::ifstream in(dir.path() + "/l.json");
    const auto j = nlohmann::json::parse(in);
    const auto& processes = j.at("record").at("processes");
    ASSERT_EQ(processes.size(), 2U) << j.dump();
    const auto& holdfast_process = processes.at(0);
    const auto& command = processes.at(1);
    EXPECT_EQ(command.at("pid").get<long long>(), pid);
    EXPECT_EQ(command.at("start_time").get<unsigned long long>(), start);
    EXPECT_EQ(command.at("pid_ns").get<unsigned long long>(), pid_ns);
    EXPECT_EQ(command.at("time_ns").get<unsigned long long>(), time_ns);
    for (const char* field : {"boot_id", "host", "machine_id"}) {
      EXPECT_EQ(command.at(field), holdfast_process.at(field)) << field;
      EXPECT_FALSE(command.at(field).get<std::string>().empty()) << field;
    }
  }
}

// Every shared library the command needs is loaded and resolved at each start, before `lock`
// runs: libm alone cost ~0.1 ms of a ~1 ms `holdfast lock F -- true` (docs/PERFORMANCE.md). The
// optimized, unsanitized build links it statically (HOLDFAST_CLI_STATIC_LINKED): no dynamic
// loader runs at all, and what needs one goes to holdfast-dynamic (HandOver, below). A dynamic
// build needs libc and Nettle (sha256) only; libcurl (etcd) is loaded when used, nothing of libm
// is used, sanitizer runtimes are allowed. Only an optimized build is what users run and what is
// measured: unoptimized, header libraries call ceil and ldexp.
TEST(CommandStart, NeedsNoSharedLibraryBeyondLibc) {
  auto r = testing::run({"readelf", "-d", "-l", testing::holdfast_path()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> needed;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    auto open = line.find("(NEEDED)");
    auto name = line.find('[');
    if (open == std::string::npos || name == std::string::npos) continue;
    needed.push_back(line.substr(name + 1, line.find(']', name) - name - 1));
  }
#if HOLDFAST_CLI_STATIC_LINKED
  EXPECT_TRUE(needed.empty()) << r.out;
  EXPECT_EQ(r.out.find("INTERP"), std::string::npos) << "the command asks for a dynamic loader:\n" << r.out;
#else
#ifndef NDEBUG
  GTEST_SKIP() << "an unoptimized build calls libm from header libraries; the optimized build is checked";
#endif
  EXPECT_NE(std::find(needed.begin(), needed.end(), "libc.so.6"), needed.end()) << r.out;
  for (const auto& lib : needed) {
    const bool allowed = lib == "libc.so.6" || lib.rfind("libnettle.so", 0) == 0 || lib.rfind("ld-linux", 0) == 0 ||
                         lib.rfind("libasan", 0) == 0 || lib.rfind("libubsan", 0) == 0 || lib.rfind("libtsan", 0) == 0;
    EXPECT_TRUE(allowed) << lib << " is loaded at every start of the command";
  }
#endif
}

// The static `holdfast` hands what needs the dynamic loader (etcd's libcurl; users, groups and
// host names from the name service) to holdfast-dynamic by execv(2), before doing anything: the
// same pid, the same arguments. Tested on a copy of the command in a directory of its own, beside
// a stand-in holdfast-dynamic that reports what it was given (or beside nothing).
class HandOver : public ::testing::Test {
 protected:
  void SetUp() override {
#if !HOLDFAST_CLI_STATIC_LINKED
    GTEST_SKIP() << "this build's holdfast is linked dynamically: it hands nothing over";
#endif
    ASSERT_EQ(testing::run({"cp", testing::holdfast_path(), copy}).exit_code, 0);
  }
  void stand_in() {
    std::ofstream(dir / "holdfast-dynamic") << "#!/bin/sh\necho \"dynamic $$: $*\"\nexit 7\n";
    ASSERT_EQ(::chmod((dir / "holdfast-dynamic").c_str(), 0755), 0);
  }
  testing::TempDir dir;
  std::string copy = dir / "holdfast";
};

TEST_F(HandOver, EtcdRunsInTheDynamicBuildWithTheSamePidAndArguments) {
  stand_in();
  const std::string script = "echo \"static $$\"; exec " + copy + " lock --backend etcd://127.0.0.1:1/p -w 1 NAME true";
  auto r = testing::run({"sh", "-c", script});
  EXPECT_EQ(r.exit_code, 7) << r.out << r.err;
  const auto pid = r.out.substr(7, r.out.find('\n') - 7);
  EXPECT_EQ(r.out, "static " + pid + "\ndynamic " + pid + ": lock --backend etcd://127.0.0.1:1/p -w 1 NAME true\n") << r.err;
}

TEST_F(HandOver, EveryNeedOfTheNameServiceOrLibcurlGoesOver) {
  stand_in();
  const std::vector<std::vector<std::string>> invocations = {
      {"holder", "--backend", "etcd://127.0.0.1:1/p", "NAME"},
      {"status", "--backend", "etcd://127.0.0.1:1/p", "NAME"},
      {"stop", "--backend", "etcd://127.0.0.1:1/p", "NAME"},
      {"ensure", "--backend", "etcd://127.0.0.1:1/p", "NAME", "--", "true"},
      {"ensure", "--user", "nobody", "NAME", "--", "true"},
      {"ensure", "--group", "nogroup", "NAME", "--", "true"},
      {"ensure", "--ready", "tcp:localhost:1", "NAME", "--", "true"},
      {"supervise", "--ready", "tcp:localhost:1", "NAME", "--", "true"},
      {"autostart", "status", "NAME"},
  };
  for (const auto& args : invocations) {
    std::vector<std::string> argv{copy};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = testing::run(argv);
    EXPECT_EQ(r.exit_code, 7) << args[0] << " " << args[1] << ": " << r.out << r.err;
    EXPECT_NE(r.out.find("dynamic "), std::string::npos) << args[0] << " " << args[1] << ": " << r.out << r.err;
  }
}

TEST_F(HandOver, WithoutTheDynamicBuildItFailsWithOneLineNamingIt) {
  auto r = testing::run({copy, "lock", "--backend", "etcd://127.0.0.1:1/p", "NAME", "true"});
  EXPECT_EQ(r.exit_code, exit_code::unavailable) << r.err;
  EXPECT_NE(r.err.find("holdfast-dynamic"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("etcd backend"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

// What the static command can do itself never goes over: locks, sha256 (Nettle, linked), tcp
// readiness on an address.
TEST_F(HandOver, LocksSha256AndAddressesStayInTheStaticCommand) {
  testing::StateDir state;
  const std::string file = dir / "F";
  EXPECT_EQ(testing::run({copy, "lock", file, "--", "true"}).exit_code, 0);
  EXPECT_EQ(testing::run({copy, "lock", "-F", file, "true"}).exit_code, 0);
  auto digest = testing::run({copy, "digest", "--alg", "sha256", "-"}, "abc\n");
  EXPECT_EQ(digest.exit_code, 0) << digest.err;
  EXPECT_EQ(digest.out, "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb  -\n");
  EXPECT_FALSE(ReadySpec::parse("tcp:127.0.0.1:80").needs_name_service());
  EXPECT_FALSE(ReadySpec::parse("tcp:[::1]:80").needs_name_service());
  EXPECT_TRUE(ReadySpec::parse("tcp:localhost:80").needs_name_service());
  EXPECT_FALSE(ReadySpec::parse("unix:/x").needs_name_service());
}

// libstdc++ 12's <iostream> gives each source that includes it a static std::ios_base::Init,
// which builds the standard streams and the classic locale before main in every process: ~50,000
// instructions of a `holdfast lock` start that never uses a stream (docs/PERFORMANCE.md). The
// command includes CLI11 through cli/cli11.hpp, which declares the streams without that object;
// main() constructs them for the other subcommands. Checked in the command's symbol table: the
// object is `__ioinit` in every source that has it.
TEST(CommandStart, TheLockPathConstructsNoStandardStreams) {
  auto r = testing::run({"nm", testing::holdfast_path()});
  if (r.exit_code != 0 && r.err.find("no symbols") != std::string::npos) GTEST_SKIP() << "the command is stripped";
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.find("__ioinit"), std::string::npos)
      << "a source of the command includes <iostream> (include CLI11 through cli/cli11.hpp)";
  // And the paths that use the streams still have them: help goes through CLI11 to std::cout and
  // usage errors to std::cerr (`digest -` reading std::cin: DigestCli in digest_test.cpp).
  auto help = testing::run({testing::holdfast_path(), "--help"});
  EXPECT_EQ(help.exit_code, 0) << help.err;
  EXPECT_NE(help.out.find("Subcommands:"), std::string::npos) << help.out;
  auto usage = testing::run({testing::holdfast_path(), "probe", "--no-such-option"});
  EXPECT_EQ(usage.exit_code, 64) << usage.out << usage.err;
  EXPECT_NE(usage.err.find("--no-such-option"), std::string::npos) << usage.err;
}

// The functions `holdfast lock` runs (cli/lock-path.order, generated by
// tools/link-order/generate.py) lie together in the command's text: a start maps a few 64 KiB
// windows of it instead of ~40 scattered over 3.8 MB (docs/PERFORMANCE.md). Checked where the
// build links with the order (optimized builds with lld: HOLDFAST_CLI_LINK_ORDER).
TEST(CommandStart, LockPathFunctionsLieTogether) {
#if !HOLDFAST_CLI_LINK_ORDERED
  GTEST_SKIP() << "this build does not order the command's functions (unoptimized, sanitized or no lld)";
#endif
  std::set<std::string> ordered;
  {
    std::ifstream in(std::string(HOLDFAST_SOURCE_DIR) + "/cli/lock-path.order");
    ASSERT_TRUE(in) << "cli/lock-path.order";
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line[0] != '#') ordered.insert(line);
    }
  }
  auto r = testing::run({"nm", "--defined-only", "--print-size", testing::holdfast_path()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  unsigned long long lowest = ~0ULL, highest = 0, total = 0;
  size_t found = 0;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string address, size, type, name;
    if (!(fields >> address >> size >> type >> name) || ordered.count(name) == 0) continue;
    if (type != "t" && type != "T" && type != "W" && type != "w") continue;
    const unsigned long long start = std::stoull(address, nullptr, 16), bytes = std::stoull(size, nullptr, 16);
    lowest = std::min(lowest, start);
    highest = std::max(highest, start + bytes);
    total += bytes;
    ++found;
  }
  ASSERT_GE(found, 100U) << "most names in cli/lock-path.order should exist in the command";
  // Together: the span is their size plus alignment padding (each function 16-byte aligned).
  EXPECT_LE(highest - lowest, total + 16 * found) << found << " functions, " << total << " bytes, spread over "
                                                  << highest - lowest << " bytes";
}

}  // namespace
}  // namespace holdfast
