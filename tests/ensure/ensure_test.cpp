// Tests for holdfast::ensure_running and `holdfast ensure/status/stop`.
//
// The daemon under test is this executable itself, run with HOLDFAST_TEST_DAEMON=MODE (see
// test_daemon.cpp). Races use forked processes released together by a StartGun.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "holdfast/ensure.hpp"
#include "holdfast/identity.hpp"
#include "support/faultfs.hpp"
#include "ensure/suite_helpers.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::StartGun;
using testing::TempDir;
using namespace std::chrono_literals;

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

int count_lines(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) ++n;
  return n;
}

// The holdfast command built with these tests. (cli_path() is compiled into the
// support library, which does not get HOLDFAST_CLI_PATH, so it falls back to $PATH.)
std::string cli_path() { return HOLDFAST_CLI_PATH; }
testing::CommandResult run_cli(std::vector<std::string> args) {
  args.insert(args.begin(), cli_path());
  return testing::run(args);
}

bool process_alive(pid_t pid) { return identity_of(pid).has_value(); }

// The daemon's environment, for the library (EnsureOptions::environment) or `env` (CLI).
struct Daemon {
  std::string mode = "serve";
  std::string ready = "notify";  // what the daemon does (HF_READY)
  std::string count_file;
  std::string marker;
  std::string worker_file;  // forks-worker / crash-leaving-child: the worker's pid
  std::string signal_file;  // every SIGHUP received appends "HUP"
  std::string describe_file;  // cwd, umask, uid, $HF_FOO written at start
  int delay_ms = 20;
  std::vector<std::string> env() const {
    return {"HOLDFAST_TEST_DAEMON=" + mode, "HF_READY=" + ready, "HF_COUNT_FILE=" + count_file,
            "HF_READY_MARKER=" + marker, "HF_DELAY_MS=" + std::to_string(delay_ms),
            "HF_WORKER_FILE=" + worker_file, "HF_SIGNAL_FILE=" + signal_file,
            "HF_DESCRIBE_FILE=" + describe_file};
  }
  std::vector<std::string> cli_command() const {
    std::vector<std::string> c{"env"};
    auto e = env();
    c.insert(c.end(), e.begin(), e.end());
    c.push_back(self_exe());
    return c;
  }
};

class EnsureTest : public ::testing::Test {
 protected:
  void TearDown() override { testing::stop_instances(names_, state_, 2s); }
  EnsureOptions options(const std::string& ready, const Daemon& d) {
    EnsureOptions o;
    o.ready = ReadySpec::parse(ready);
    o.state_dir = state_;
    o.environment = d.env();
    o.ready_timeout = 20s;
    return o;
  }
  Daemon daemon(const std::string& tag) {
    Daemon d;
    d.count_file = tmp_ / ("count-" + tag);
    d.marker = tmp_ / ("marker-" + tag);
    d.worker_file = tmp_ / ("worker-" + tag);
    d.signal_file = tmp_ / ("signals-" + tag);
    d.describe_file = tmp_ / ("describe-" + tag);
    return d;
  }
  std::string use(const std::string& name) {
    names_.push_back(name);
    return name;
  }
  std::vector<std::string> cli(std::vector<std::string> args) {
    // Right after the subcommand: everything after "--" belongs to the command.
    args.insert(args.begin() + 1, {"--state-dir", state_});
    return args;
  }

  TempDir tmp_;
  std::string state_ = tmp_ / "state";
  std::vector<std::string> names_;
};

struct Slot {
  pid_t pid;
  int started;
  int marker_seen;
  int ok;
};

// ---------------------------------------------------------------------------------------------
// the race: exactly one instance, everyone gets it, nobody returns before ready

// The figure: 100 clients x 50 rounds through the library in forked processes, cycling
// readiness protocols and daemons that keep nothing of what they inherited: a plain server, one
// that closes every inherited descriptor (sshd's closefrom), and one that double-forks
// (daemon(3)). Exactly one instance per round. 50 rounds under HOLDFAST_SOAK; a few by default
// (make test stays affordable), fewer under sanitizers.
using testing::soak_rounds;

TEST_F(EnsureTest, HundredConcurrentClientsFiftyRoundsExactlyOneInstance) {
  const int clients = 100;
  const int rounds = soak_rounds(50, 16);
  const std::string name = use("race");
  auto* slots = static_cast<Slot*>(testing::shared_memory(sizeof(Slot) * clients));
  struct Combo {
    const char* mode;
    const char* ready;
  } combos[] = {{"serve", "notify"},     {"closefds", "notify"},   {"doublefork", "notify"},
                {"serve", "fd:5"},       {"doublefork", "fd:5"},   {"closefds", "file"},
                {"doublefork", "file"},  {"serve", "file"}};
  for (int round = 0; round < rounds; ++round) {
    const auto& combo = combos[round % 8];
    SCOPED_TRACE("round " + std::to_string(round) + ": " + combo.mode + " " + combo.ready);
    Daemon d = daemon(std::to_string(round));
    d.mode = combo.mode;
    std::string mode = combo.ready;
    std::string ready_flag = mode;
    if (mode == "file") {
      d.ready = "file:" + (tmp_ / ("ready-" + std::to_string(round)));
      ready_flag = d.ready;
    } else {
      d.ready = mode;
    }
    auto opts = options(ready_flag, d);
    std::memset(static_cast<void*>(slots), 0, sizeof(Slot) * clients);
    StartGun gun;
    std::vector<pid_t> kids;
    for (int i = 0; i < clients; ++i) {
      kids.push_back(testing::fork_child([&, i] {
        gun.wait();
        auto inst = ensure_running(name, {self_exe()}, opts);
        slots[i] = {inst.pid, inst.started ? 1 : 0, exists(d.marker) ? 1 : 0, 1};
        return 0;
      }));
    }
    gun.release();
    for (pid_t k : kids) ASSERT_EQ(testing::wait_child(k), 0);
    EXPECT_EQ(count_lines(d.count_file), 1) << "instances started this round";
    std::set<pid_t> pids;
    int started = 0, markers = 0;
    for (int i = 0; i < clients; ++i) {
      pids.insert(slots[i].pid);
      started += slots[i].started;
      markers += slots[i].marker_seen;
    }
    EXPECT_EQ(pids.size(), 1u) << "distinct pids reported";
    EXPECT_EQ(started, 1) << "clients that report having started it";
    EXPECT_EQ(markers, clients) << "clients that returned after the daemon's ready marker";
    std::ifstream in(d.count_file);
    pid_t daemon_pid = 0;
    in >> daemon_pid;
    EXPECT_EQ(*pids.begin(), daemon_pid) << "the reported pid is the daemon that runs";
    auto status = instance_status(name, state_);
    EXPECT_EQ(status.state, InstanceState::ready) << status.reason;
    ASSERT_TRUE(status.record);
    EXPECT_EQ(status.record->process.pid, *pids.begin());
    StopOptions s;
    s.state_dir = state_;
    auto stopped = stop_instance(name, s);
    EXPECT_TRUE(stopped.was_running);
    EXPECT_FALSE(process_alive(daemon_pid));
    if (::testing::Test::HasFailure()) break;
  }
  testing::free_shared_memory(slots, sizeof(Slot) * clients);
}

TEST_F(EnsureTest, HundredConcurrentCliClientsExactlyOneInstance) {
  const int clients = 100;
  const int rounds = soak_rounds(50, 5);
  const std::string name = use("cli-race");
  auto* slots = static_cast<Slot*>(testing::shared_memory(sizeof(Slot) * clients));
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Daemon d = daemon("cli" + std::to_string(round));
    std::memset(static_cast<void*>(slots), 0, sizeof(Slot) * clients);
    std::vector<std::string> args = cli({"ensure", name, "--ready", "notify", "--json"});
    args.push_back("--");
    for (auto& c : d.cli_command()) args.push_back(c);
    StartGun gun;
    std::vector<pid_t> kids;
    for (int i = 0; i < clients; ++i) {
      kids.push_back(testing::fork_child([&, i] {
        gun.wait();
        auto r = run_cli(args);
        if (r.exit_code != 0) return 10 + r.exit_code % 100;
        auto j = nlohmann::json::parse(r.out);
        slots[i] = {j.at("pid").get<pid_t>(), j.at("started").get<bool>() ? 1 : 0,
                    exists(d.marker) ? 1 : 0, 1};
        return 0;
      }));
    }
    gun.release();
    for (pid_t k : kids) ASSERT_EQ(testing::wait_child(k), 0);
    EXPECT_EQ(count_lines(d.count_file), 1);
    std::set<pid_t> pids;
    int started = 0, markers = 0;
    for (int i = 0; i < clients; ++i) {
      pids.insert(slots[i].pid);
      started += slots[i].started;
      markers += slots[i].marker_seen;
    }
    EXPECT_EQ(pids.size(), 1u);
    EXPECT_EQ(started, 1);
    EXPECT_EQ(markers, clients);
    auto r = run_cli(cli({"stop", name}));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_FALSE(process_alive(*pids.begin()));
  }
  testing::free_shared_memory(slots, sizeof(Slot) * clients);
}

TEST_F(EnsureTest, WarmEnsureReturnsTheRunningInstance) {
  Daemon d = daemon("warm");
  auto opts = options("notify", d);
  auto first = ensure_running(use("warm"), {self_exe()}, opts);
  EXPECT_TRUE(first.started);
  EXPECT_TRUE(first.ready);
  EXPECT_EQ(first.record.status, "serving");  // STATUS= from sd_notify is recorded
  auto second = ensure_running("warm", {self_exe()}, opts);
  EXPECT_FALSE(second.started);
  EXPECT_EQ(second.pid, first.pid);
  EXPECT_EQ(second.start_time, first.start_time);
  auto r = run_cli(cli({"ensure", "warm", "--", "false"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, std::to_string(first.pid) + "\n");
  EXPECT_EQ(count_lines(d.count_file), 1);
}

// ---------------------------------------------------------------------------------------------
// readiness protocols

TEST_F(EnsureTest, EachReadinessProtocol) {
  std::string sock = tmp_ / "d.sock";
  // Pick a free port: bind 0, read it, close (a small race with other users of the port range).
  int port = 0;
  {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    ::close(s);
  }
  struct Case {
    std::string flag, daemon_ready;
  } cases[] = {
      {"notify", "notify"},
      {"fd:3", "fd:3"},
      {"fd:7", "fd:7"},
      {"file:" + (tmp_ / "ready-file"), "file:" + (tmp_ / "ready-file")},
      {"unix:" + sock, "unix:" + sock},
      {"tcp:127.0.0.1:" + std::to_string(port), "tcp:" + std::to_string(port)},
  };
  int i = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.flag);
    Daemon d = daemon("proto" + std::to_string(i));
    d.ready = c.daemon_ready;
    d.delay_ms = 100;
    std::string name = use("proto" + std::to_string(i++));
    auto inst = ensure_running(name, {self_exe()}, options(c.flag, d));
    EXPECT_TRUE(exists(d.marker)) << "returned before the daemon signalled readiness";
    EXPECT_TRUE(inst.ready);
    EXPECT_GE(inst.waited, 90ms);
  }
}

TEST_F(EnsureTest, NotifySocketIsAPrivatePathEvenForADeepStateDirectory) {
  // C5: a state directory so deep that STATE/NAME.notify would not fit sun_path used to fall back
  // to an abstract socket any local user could reach. Now NOTIFY_SOCKET is always a path.
  std::string deep = tmp_ / std::string(60, 'd') + "/" + std::string(60, 'e');
  state_ = deep;
  Daemon d = daemon("abstract");
  auto inst = ensure_running(use("abstract"), {self_exe()}, options("notify", d));
  EXPECT_TRUE(inst.ready);
  EXPECT_TRUE(exists(d.marker));
  std::ifstream env("/proc/" + std::to_string(inst.pid) + "/environ");
  std::string entry, socket;
  while (std::getline(env, entry, '\0')) {
    if (entry.rfind("NOTIFY_SOCKET=", 0) == 0) socket = entry.substr(14);
  }
  ASSERT_FALSE(socket.empty());
  EXPECT_EQ(socket.front(), '/') << socket;
  EXPECT_TRUE(exists(socket)) << socket;
}

// ---------------------------------------------------------------------------------------------
// failures: each a clear result, never a hang

TEST_F(EnsureTest, DaemonDyingBeforeReadyReportsStatusAndLogTail) {
  Daemon d = daemon("die");
  d.mode = "die";
  try {
    ensure_running(use("dies"), {self_exe()}, options("notify", d));
    FAIL() << "expected StartFailure";
  } catch (const StartFailure& e) {
    EXPECT_EQ(e.exit_status(), 3);
    EXPECT_EQ(e.exit_code(), exit_code::conflict);
    EXPECT_NE(std::string(e.what()).find("exited with status 3 before ready"), std::string::npos) << e.what();
    EXPECT_NE(e.log_tail().find("log line 25"), std::string::npos) << e.log_tail();
    EXPECT_EQ(e.log_tail().find("log line 3\n"), std::string::npos) << "only the tail";
  }
  // The CLI: exit 1, the cause and the tail on stderr.
  Daemon d2 = daemon("die2");
  d2.mode = "die";
  std::vector<std::string> args = cli({"ensure", "dies", "--ready", "notify", "--"});
  for (auto& c : d2.cli_command()) args.push_back(c);
  auto r = run_cli(args);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("exited with status 3 before ready"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("log line 25"), std::string::npos) << r.err;
  auto s = instance_status("dies", state_);
  EXPECT_EQ(s.state, InstanceState::stopped);
}

TEST_F(EnsureTest, ConcurrentClientsShareOneFailedStart) {
  Daemon d = daemon("die-many");
  d.mode = "die";
  d.delay_ms = 100;
  auto opts = options("notify", d);
  const int clients = 20;
  auto* codes = static_cast<int*>(testing::shared_memory(sizeof(int) * clients));
  StartGun gun;
  std::vector<pid_t> kids;
  const std::string name = use("die-many");
  for (int i = 0; i < clients; ++i) {
    kids.push_back(testing::fork_child([&, i] {
      gun.wait();
      try {
        ensure_running(name, {self_exe()}, opts);
        codes[i] = 0;
      } catch (const StartFailure& e) {
        codes[i] = e.exit_status();
      }
      return 0;
    }));
  }
  gun.release();
  for (pid_t k : kids) ASSERT_EQ(testing::wait_child(k), 0);
  EXPECT_EQ(count_lines(d.count_file), 1) << "one start, shared by every concurrent client";
  for (int i = 0; i < clients; ++i) EXPECT_EQ(codes[i], 3) << "client " << i;
  testing::free_shared_memory(codes, sizeof(int) * clients);
}

TEST_F(EnsureTest, NeverReadyTimesOutWithTempFail) {
  Daemon d = daemon("never");
  d.mode = "never";
  std::vector<std::string> args = cli({"ensure", use("never"), "--ready", "notify", "--ready-timeout", "0.5", "--"});
  for (auto& c : d.cli_command()) args.push_back(c);
  auto begin = std::chrono::steady_clock::now();
  auto r = run_cli(args);
  auto took = std::chrono::steady_clock::now() - begin;
  EXPECT_EQ(r.exit_code, exit_code::temp_fail) << r.err;
  EXPECT_NE(r.err.find("not ready after 0.5s"), std::string::npos) << r.err;
  // Only a hang is an error here (no timing assertions: the machine may be slow).
  EXPECT_LT(took, 120s);
  // It keeps starting; a second client also times out rather than starting another.
  auto r2 = run_cli(args);
  EXPECT_EQ(r2.exit_code, exit_code::temp_fail);
  EXPECT_EQ(count_lines(d.count_file), 1);
  auto s = instance_status("never", state_);
  EXPECT_EQ(s.state, InstanceState::running) << s.reason;
  auto stop = run_cli(cli({"stop", "never"}));
  EXPECT_EQ(stop.exit_code, 0) << stop.err;
  EXPECT_EQ(instance_status("never", state_).state, InstanceState::stopped);
}

TEST_F(EnsureTest, DoubleForkingDaemonIsFollowedByMainPid) {
  Daemon d = daemon("df");
  d.mode = "doublefork";
  auto inst = ensure_running(use("df"), {self_exe()}, options("notify", d));
  EXPECT_TRUE(inst.ready);
  // The recorded pid is the surviving child (MAINPID=), not the first process that exited.
  auto lines = count_lines(d.count_file);
  EXPECT_EQ(lines, 1);
  std::ifstream in(d.count_file);
  pid_t child = 0;
  in >> child;
  EXPECT_EQ(inst.pid, child);
  EXPECT_TRUE(process_alive(inst.pid));
  EXPECT_EQ(instance_status("df", state_).state, InstanceState::ready);
  auto stop = stop_instance("df", StopOptions{state_});
  EXPECT_EQ(stop.pid, child);
  EXPECT_FALSE(process_alive(child));
}

TEST_F(EnsureTest, DoubleForkingDaemonWithoutReadinessIsFoundByItsLock) {
  Daemon d = daemon("df2");
  d.mode = "doublefork";
  d.ready = "none";
  // --ready file: the first process exits 0 before ready; the launcher follows the lock holder.
  std::string flag = "file:" + d.marker;
  auto inst = ensure_running(use("df2"), {self_exe()}, options(flag, d));
  std::ifstream in(d.count_file);
  pid_t child = 0;
  in >> child;
  EXPECT_EQ(inst.pid, child);
  EXPECT_TRUE(inst.record.forked);
  // --ready none: ready at exec with the first pid; the next ensure repairs the record.
  Daemon d3 = daemon("df3");
  d3.mode = "doublefork";
  d3.ready = "none";
  auto first = ensure_running(use("df3"), {self_exe()}, options("none", d3));
  std::this_thread::sleep_for(100ms);
  auto again = ensure_running("df3", {self_exe()}, options("none", d3));
  std::ifstream in3(d3.count_file);
  pid_t child3 = 0;
  in3 >> child3;
  EXPECT_EQ(again.pid, child3);
  EXPECT_FALSE(again.started);
  EXPECT_EQ(count_lines(d3.count_file), 1);
  (void)first;
}

TEST_F(EnsureTest, DaemonThatClosesEveryInheritedDescriptorIsStillOneInstance) {
  // C1: a daemon that closes every inherited descriptor (closefrom(3)), in the foreground or
  // after a double fork, used to drop the instance lock: each ensure started one more.
  for (std::string mode : {"closefds", "doublefork-close"}) {
    SCOPED_TRACE(mode);
    Daemon d = daemon(mode);
    d.mode = mode;
    d.ready = "none";
    const std::string name = use("close-" + mode);
    auto first = ensure_running(name, {self_exe()}, options("none", d));
    // Wait until the daemon has closed its descriptors (it records itself after closing them).
    for (int i = 0; i < 2000 && count_lines(d.count_file) == 0; ++i) std::this_thread::sleep_for(5ms);
    ASSERT_EQ(count_lines(d.count_file), 1);
    for (int i = 0; i < 3; ++i) {
      auto again = ensure_running(name, {self_exe()}, options("none", d));
      EXPECT_FALSE(again.started);
    }
    EXPECT_EQ(count_lines(d.count_file), 1) << "instances started";
    auto st = instance_status(name, state_);
    EXPECT_EQ(st.state, InstanceState::ready) << st.reason;
    std::ifstream in(d.count_file);
    pid_t daemon_pid = 0;
    in >> daemon_pid;
    EXPECT_EQ(st.record->process.pid, daemon_pid);
    auto stop = stop_instance(name, StopOptions{state_});
    EXPECT_TRUE(stop.was_running);
    EXPECT_FALSE(process_alive(daemon_pid)) << "stop left the daemon running";
    (void)first;
  }
}

TEST_F(EnsureTest, StopStopsEveryProcessOfTheInstance) {
  // C2: stop signalled one pid; children that kept the lock kept the instance running.
  Daemon d = daemon("worker");
  d.mode = "forks-worker";
  auto inst = ensure_running(use("worker"), {self_exe()}, options("notify", d));
  for (int i = 0; i < 2000 && count_lines(d.worker_file) == 0; ++i) std::this_thread::sleep_for(5ms);
  std::ifstream in(d.worker_file);
  pid_t worker = 0;
  in >> worker;
  ASSERT_GT(worker, 0);
  ASSERT_TRUE(process_alive(worker));
  auto r = run_cli(cli({"stop", "worker", "--timeout", "5s"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(process_alive(inst.pid));
  EXPECT_FALSE(process_alive(worker)) << "the worker outlived stop";
  EXPECT_EQ(instance_status("worker", state_).state, InstanceState::stopped);
}

TEST_F(EnsureTest, CrashedDaemonsLeftoverChildIsNeverAdopted) {
  // C3: after the daemon crashed, a leftover child was adopted as the ready instance.
  Daemon d = daemon("crash");
  d.mode = "crash-leaving-child";
  d.delay_ms = 50;
  auto first = ensure_running(use("crash"), {self_exe()}, options("notify", d));
  EXPECT_TRUE(first.started);
  // The daemon aborts 50 ms after ready; its supervisor ends the instance, worker included.
  for (int i = 0; i < 4000 && instance_status("crash", state_).state != InstanceState::stopped; ++i) {
    std::this_thread::sleep_for(5ms);
  }
  auto st = instance_status("crash", state_);
  EXPECT_EQ(st.state, InstanceState::stopped) << st.reason;
  ASSERT_TRUE(st.record);
  EXPECT_EQ(st.record->exit_status, 128 + SIGABRT);
  std::ifstream in(d.worker_file);
  pid_t worker = 0;
  in >> worker;
  ASSERT_GT(worker, 0);
  EXPECT_FALSE(process_alive(worker)) << "the crashed daemon's child was left running";
  d.mode = "serve";
  auto second = ensure_running("crash", {self_exe()}, options("notify", d));
  EXPECT_TRUE(second.started) << "a leftover was adopted instead of a fresh start";
  EXPECT_NE(second.pid, worker);
  EXPECT_EQ(count_lines(d.count_file), 2);
  // Before ready: the start fails and the child goes with it.
  Daemon early = daemon("crash-early");
  early.mode = "crash-leaving-child";
  early.ready = "none";  // never reports: aborts first
  try {
    ensure_running(use("crash-early"), {self_exe()}, options("notify", early));
    FAIL() << "expected StartFailure";
  } catch (const StartFailure& e) {
    EXPECT_EQ(e.exit_status(), 128 + SIGABRT) << e.what();
  }
  std::ifstream in2(early.worker_file);
  pid_t worker2 = 0;
  in2 >> worker2;
  ASSERT_GT(worker2, 0);
  EXPECT_FALSE(process_alive(worker2));
}

// ---------------------------------------------------------------------------------------------
// crashes and PID reuse

TEST_F(EnsureTest, SigkilledInstanceIsReplacedByTheNextEnsure) {
  Daemon d = daemon("kill");
  auto first = ensure_running(use("killed"), {self_exe()}, options("notify", d));
  ASSERT_EQ(::kill(first.pid, SIGKILL), 0);
  for (int i = 0; i < 2000 && instance_status("killed", state_).state != InstanceState::stopped; ++i) {
    std::this_thread::sleep_for(5ms);
  }
  auto s = run_cli(cli({"status", "killed", "--json"}));
  EXPECT_EQ(s.exit_code, 3) << s.out;
  EXPECT_EQ(nlohmann::json::parse(s.out).at("state"), "stopped") << s.out;
  auto second = ensure_running("killed", {self_exe()}, options("notify", d));
  EXPECT_TRUE(second.started);
  EXPECT_NE(second.pid, first.pid);
  EXPECT_EQ(count_lines(d.count_file), 2);
}

TEST_F(EnsureTest, SpawningClientKilledMidWaitDoesNotLoseTheInstance) {
  Daemon d = daemon("clientkill");
  d.delay_ms = 300;
  auto opts = options("notify", d);
  pid_t client = testing::fork_child([&] {
    ensure_running("clientkill", {self_exe()}, opts);
    return 0;
  });
  use("clientkill");
  std::this_thread::sleep_for(100ms);  // the daemon is starting, not yet ready
  ::kill(client, SIGKILL);
  testing::wait_child(client);
  auto inst = ensure_running("clientkill", {self_exe()}, opts);
  EXPECT_FALSE(inst.started);
  EXPECT_TRUE(inst.ready);
  EXPECT_EQ(count_lines(d.count_file), 1);
}

TEST_F(EnsureTest, KillingTheSupervisorTakesTheMainProcessWithIt) {
  // The supervisor holds the lock; if it is SIGKILLed the lock goes, and the main process must go
  // too (PR_SET_PDEATHSIG) so the next ensure does not run a second copy beside it.
  Daemon d = daemon("supkill");
  auto first = ensure_running(use("supkill"), {self_exe()}, options("notify", d));
  ASSERT_GT(first.record.launcher_pid, 0);
  ASSERT_EQ(::kill(first.record.launcher_pid, SIGKILL), 0);
  for (int i = 0; i < 2000 && process_alive(first.pid); ++i) std::this_thread::sleep_for(5ms);
  EXPECT_FALSE(process_alive(first.pid));
  auto s = run_cli(cli({"status", "supkill"}));
  EXPECT_EQ(s.exit_code, 1) << s.out << s.err;  // LSB 1: dead, record left
  auto second = ensure_running("supkill", {self_exe()}, options("notify", d));
  EXPECT_TRUE(second.started);
}

// A SIGKILLed supervisor cannot remove its sd_notify directory (/tmp/holdfast-notify.*); the next
// supervisor of the instance does, and a stopped instance leaves neither directory nor marker.
TEST_F(EnsureTest, TheNextSupervisorRemovesTheNotifyDirectoryAKilledOneLeft) {
  Daemon d = daemon("notifyleft");
  const std::string marker = state_ + "/notifyleft.notify";
  auto notify_dir = [&] {
    std::string line;
    std::ifstream in(marker);
    std::getline(in, line);
    return line;
  };
  auto exists = [](const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
  };
  auto first = ensure_running(use("notifyleft"), {self_exe()}, options("notify", d));
  const std::string left = notify_dir();
  ASSERT_NE(left.find("/holdfast-notify."), std::string::npos) << left;
  ASSERT_TRUE(exists(left + "/notify"));
  ASSERT_EQ(::kill(first.record.launcher_pid, SIGKILL), 0);
  for (int i = 0; i < 2000 && process_alive(first.pid); ++i) std::this_thread::sleep_for(5ms);
  ASSERT_FALSE(process_alive(first.pid));
  EXPECT_TRUE(exists(left));  // nobody removed it yet

  auto second = ensure_running("notifyleft", {self_exe()}, options("notify", d));
  EXPECT_TRUE(second.started);
  EXPECT_FALSE(exists(left)) << left;
  const std::string now = notify_dir();
  EXPECT_NE(now, left);
  EXPECT_TRUE(exists(now + "/notify")) << now;

  auto r = run_cli(cli({"stop", "notifyleft"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(exists(now)) << now;
  EXPECT_FALSE(exists(marker));
}

TEST_F(EnsureTest, StopNeverSignalsAProcessWhoseStartTimeDiffers) {
  Daemon d = daemon("reuse");
  auto inst = ensure_running(use("reuse"), {self_exe()}, options("notify", d));
  std::string record_path = state_ + "/reuse.json";
  std::string original;
  {
    std::ifstream in(record_path);
    std::getline(in, original);
  }
  auto j = nlohmann::json::parse(original);
  j["start_time"] = j["start_time"].get<uint64_t>() + 1;  // as if the pid had been recycled
  std::ofstream(record_path) << j.dump() << "\n";
  auto r = run_cli(cli({"stop", "reuse"}));
  EXPECT_EQ(r.exit_code, exit_code::data) << r.err;
  EXPECT_NE(r.err.find("reused"), std::string::npos) << r.err;
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(process_alive(inst.pid));
  std::ofstream(record_path) << original << "\n";
}

TEST_F(EnsureTest, StopNeverSignalsAnUnrelatedLiveProcessNamedByTheRecord) {
  Daemon d = daemon("unrelated");
  auto inst = ensure_running(use("unrelated"), {self_exe()}, options("notify", d));
  pid_t bystander = testing::fork_child([] {
    ::execlp("sleep", "sleep", "30", nullptr);
    return 127;
  });
  std::this_thread::sleep_for(50ms);
  auto id = identity_of(bystander);
  ASSERT_TRUE(id);
  std::string record_path = state_ + "/unrelated.json";
  std::string original;
  {
    std::ifstream in(record_path);
    std::getline(in, original);
  }
  auto j = nlohmann::json::parse(original);
  j["pid"] = bystander;
  j["start_time"] = id->start_time;  // a perfect identity — but it does not hold the lock
  std::ofstream(record_path) << j.dump() << "\n";
  auto r = run_cli(cli({"stop", "unrelated", "--signal", "KILL"}));
  EXPECT_EQ(r.exit_code, exit_code::data) << r.err;
  EXPECT_NE(r.err.find("is not a process of the instance"), std::string::npos) << r.err;
  auto st = run_cli(cli({"status", "unrelated"}));
  EXPECT_EQ(st.exit_code, 4) << st.out;  // never reported as the running instance
  EXPECT_NE(st.out.find("unknown"), std::string::npos) << st.out;
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(process_alive(bystander));
  EXPECT_TRUE(process_alive(inst.pid));
  ::kill(bystander, SIGKILL);
  testing::wait_child(bystander);
  std::ofstream(record_path) << original << "\n";
}

TEST_F(EnsureTest, StopEscalatesToSigkillAfterKillAfter) {
  Daemon d = daemon("stubborn");
  d.mode = "ignore-term";
  auto inst = ensure_running(use("stubborn"), {self_exe()}, options("notify", d));
  auto r = run_cli(cli({"stop", "stubborn", "--timeout", "0.2"}));
  EXPECT_EQ(r.exit_code, exit_code::temp_fail) << r.err;
  EXPECT_TRUE(process_alive(inst.pid));
  r = run_cli(cli({"stop", "stubborn", "--kill-after", "0.2", "--timeout", "2"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("SIGKILL"), std::string::npos) << r.err;
  EXPECT_FALSE(process_alive(inst.pid));
  r = run_cli(cli({"stop", "stubborn"}));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.err.find("not running"), std::string::npos);
}

TEST_F(EnsureTest, StatusListsEveryInstance) {
  Daemon d = daemon("st");
  ensure_running(use("st-a"), {self_exe()}, options("notify", d));
  Daemon d2 = daemon("st2");
  d2.mode = "die";
  EXPECT_THROW(ensure_running(use("st-b"), {self_exe()}, options("notify", d2)), StartFailure);
  auto r = run_cli(cli({"status", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 2u) << r.out;
  EXPECT_EQ(j[0]["name"], "st-a");
  EXPECT_EQ(j[0]["state"], "ready");
  EXPECT_EQ(j[1]["name"], "st-b");
  EXPECT_EQ(j[1]["state"], "stopped");
  r = run_cli(cli({"status"}));
  EXPECT_NE(r.out.find("st-a"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// bad input

TEST_F(EnsureTest, BadNamesAreUsageErrors) {
  for (std::string bad : std::vector<std::string>{"../x", "a/b", ".hidden", "", std::string(65, 'n'), "sp ace"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(validate_instance_name(bad), Error);
    auto r = run_cli(cli({"ensure", bad, "--", "true"}));
    EXPECT_EQ(r.exit_code, exit_code::usage) << r.err;
  }
  auto stop = run_cli(cli({"stop", "../x"}));
  EXPECT_EQ(stop.exit_code, exit_code::usage) << stop.err;
  EXPECT_EQ(run_cli(cli({"status", "../x"})).exit_code, exit_code::usage);
  EXPECT_EQ(run_cli(cli({"ensure", "x", "--ready", "fd:1", "--", "true"})).exit_code, exit_code::usage);
  EXPECT_EQ(run_cli(cli({"ensure", "x", "--ready", "bogus", "--", "true"})).exit_code, exit_code::usage);
  EXPECT_FALSE(exists(state_ + "/x.lock"));
}

TEST_F(EnsureTest, CommandNotFoundOrNotExecutable) {
  auto r = run_cli(cli({"ensure", "nf", "--", "holdfast-no-such-command"}));
  EXPECT_EQ(r.exit_code, exit_code::not_found) << r.err;
  EXPECT_NE(r.err.find("command not found"), std::string::npos) << r.err;
  std::string script = tmp_ / "not-executable";
  std::ofstream(script) << "#!/bin/sh\n";
  r = run_cli(cli({"ensure", "ne", "--", script}));
  EXPECT_EQ(r.exit_code, exit_code::cannot_exec) << r.err;
}

TEST_F(EnsureTest, UnwritableStateDirectoryAsAnotherUser) {
  ::chmod(tmp_.path().c_str(), 0755);
  ::mkdir(state_.c_str(), 0755);  // root's, not writable by uid 65534
  ::mkdir((tmp_ / "holdfast").c_str(), 0700);  // what the child's XDG dir resolves to (root's)
  pid_t child = testing::fork_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 90;
    auto r = run_cli(cli({"ensure", "ro", "--", "sleep", "10"}));
    if (r.exit_code != exit_code::no_perm) return 91;
    if (r.err.find(state_ + "/ro.") == std::string::npos) return 92;
    if (r.err.find("Permission denied") == std::string::npos) return 93;
    // The default state directory must be ours: one owned by root is refused.
    ::setenv("XDG_RUNTIME_DIR", tmp_.path().c_str(), 1);
    auto d = testing::run({cli_path(), "ensure", "ro", "--", "sleep", "10"});
    if (d.exit_code != exit_code::no_perm) return 94;
    if (d.err.find("unsafe state directory") == std::string::npos) return 95;
    return 0;
  });
  EXPECT_EQ(testing::wait_child(child), 0);
}


// ---------------------------------------------------------------------------------------------
// review items (issue 9): each a regression test

TEST_F(EnsureTest, RefusesAStateDirectoryWhoseLocksAreNotEnforced) {
  // C4: on a filesystem that grants every lock, N clients started N instances.
  if (auto why = testing::FaultFs::unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  testing::FaultFs fs("nolocks");
  Daemon d = daemon("nolocks");
  std::vector<std::string> args{"ensure", "nl", "--state-dir", fs / "state", "--"};
  for (auto& c : d.cli_command()) args.push_back(c);
  const int clients = 6;
  auto* codes = static_cast<int*>(testing::shared_memory(sizeof(int) * clients));
  StartGun gun;
  std::vector<pid_t> kids;
  for (int i = 0; i < clients; ++i) {
    kids.push_back(testing::fork_child([&, i] {
      gun.wait();
      auto r = run_cli(args);
      codes[i] = r.exit_code;
      if (i == 0 && (r.err.find("not enforced") == std::string::npos || r.err.find(fs / "state") == std::string::npos ||
                     std::count(r.err.begin(), r.err.end(), '\n') != 1)) {
        return 1;
      }
      return 0;
    }));
  }
  gun.release();
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
  for (int i = 0; i < clients; ++i) EXPECT_EQ(codes[i], exit_code::unavailable) << "client " << i;
  EXPECT_EQ(count_lines(d.count_file), 0) << "instances started on a lockless filesystem";
  testing::free_shared_memory(codes, sizeof(int) * clients);
}

// NOTIFY_SOCKET of a running process, from its environment.
std::string notify_socket_of(pid_t pid) {
  std::ifstream env("/proc/" + std::to_string(pid) + "/environ");
  std::string entry;
  while (std::getline(env, entry, '\0')) {
    if (entry.rfind("NOTIFY_SOCKET=", 0) == 0) return entry.substr(14);
  }
  return {};
}

bool send_datagram(const std::string& path, const std::string& text) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), std::min(path.size(), sizeof addr.sun_path - 1));
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  bool ok = ::sendto(s, text.data(), text.size(), 0, reinterpret_cast<sockaddr*>(&addr), sizeof addr) >= 0;
  ::close(s);
  return ok;
}

// A waiter blocks on a shared lock of the spawn lock (held by the supervisor until the record is
// final), interrupted at its --ready-timeout by the deadline alarm. An application thread that
// blocks the alarm signal must not turn that into a wait without end: it polls instead.
TEST_F(EnsureTest, WaiterWhoseThreadBlocksTheAlarmSignalStillTimesOut) {
  Daemon d = daemon("alarmless");
  d.mode = "never";
  auto opts = options("notify", d);
  opts.ready_timeout = 300ms;
  EXPECT_THROW(ensure_running(use("alarmless"), {self_exe()}, opts), Error);  // starts it; never ready
  int code = -1;
  std::thread waiter([&] {
    sigset_t set;
    sigemptyset(&set);
    for (int sig = SIGRTMIN; sig <= SIGRTMAX; ++sig) sigaddset(&set, sig);
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    try {
      ensure_running("alarmless", {self_exe()}, opts);
    } catch (const Error& e) {
      code = e.exit_code();
    }
  });
  waiter.join();
  EXPECT_EQ(code, exit_code::temp_fail);
  EXPECT_EQ(instance_status("alarmless", state_).state, InstanceState::running);
  auto stop = run_cli(cli({"stop", "alarmless"}));
  EXPECT_EQ(stop.exit_code, 0) << stop.err;
}

TEST_F(EnsureTest, NotificationsFromOutsideTheInstanceAreIgnored) {
  // C5: anyone who could reach the notify socket could declare the instance ready and rename
  // its pid (MAINPID=1), after which stop refused forever.
  Daemon d = daemon("spoof");
  d.mode = "never";
  auto opts = options("notify", d);
  opts.ready_timeout = 300ms;
  EXPECT_THROW(ensure_running(use("spoof"), {self_exe()}, opts), Error);
  auto rec = instance_status("spoof", state_).record;
  ASSERT_TRUE(rec);
  std::string socket = notify_socket_of(rec->process.pid);
  ASSERT_FALSE(socket.empty());
  // From this process (root, not part of the instance) and from another user.
  EXPECT_TRUE(send_datagram(socket, "READY=1\nMAINPID=1\nSTATUS=forged\n"));
  pid_t other = testing::fork_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 90;
    return send_datagram(socket, "READY=1\nMAINPID=1\n") ? 0 : 91;
  });
  EXPECT_EQ(testing::wait_child(other), 0) << "the socket must be reachable (C6), just not trusted";
  try {
    ensure_running("spoof", {self_exe()}, opts);
    FAIL() << "a forged READY=1 made the instance ready";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::temp_fail) << e.what();
  }
  auto st = instance_status("spoof", state_);
  EXPECT_EQ(st.state, InstanceState::running) << st.reason;
  ASSERT_TRUE(st.record);
  EXPECT_EQ(st.record->process.pid, rec->process.pid);
  EXPECT_NE(st.record->status, "forged");
  auto stop = run_cli(cli({"stop", "spoof"}));
  EXPECT_EQ(stop.exit_code, 0) << stop.err;
  EXPECT_FALSE(process_alive(rec->process.pid));
}

TEST_F(EnsureTest, DaemonThatDropsPrivilegesCanStillNotify) {
  // C6: a root-started daemon that setuid()s before sd_notify could not reach the socket.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  Daemon d = daemon("dropprivs");
  d.mode = "dropprivs";
  auto inst = ensure_running(use("dropprivs"), {self_exe()}, options("notify", d));
  EXPECT_TRUE(inst.ready);
  auto id = identity_of(inst.pid);
  ASSERT_TRUE(id);
  std::ifstream status("/proc/" + std::to_string(inst.pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Uid:", 0) == 0) EXPECT_NE(line.find("65534"), std::string::npos) << line;
  }
}

TEST_F(EnsureTest, ReadinessOnlyCountsWhatThisStartCreated) {
  // C7: a stale ready file, or a port someone else listens on, made a start "ready" at once.
  std::string ready_file = tmp_ / "stale.ready";
  std::ofstream(ready_file) << "left by a SIGKILLed run\n";
  timespec old[2] = {{::time(nullptr) - 3600, 0}, {::time(nullptr) - 3600, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, ready_file.c_str(), old, 0), 0);
  Daemon d = daemon("stale-file");
  d.ready = "file:" + ready_file;
  d.delay_ms = 200;
  auto inst = ensure_running(use("stale-file"), {self_exe()}, options("file:" + ready_file, d));
  EXPECT_TRUE(exists(d.marker)) << "returned on the stale file, before the daemon was ready";
  EXPECT_TRUE(inst.ready);

  // A listener that is not the instance's.
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(s, 16), 0);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  Daemon n = daemon("foreign-port");
  n.mode = "never";
  auto opts = options("tcp:127.0.0.1:" + std::to_string(ntohs(a.sin_port)), n);
  opts.ready_timeout = 500ms;
  try {
    ensure_running(use("foreign-port"), {self_exe()}, opts);
    FAIL() << "someone else's listener counted as the instance's readiness";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::temp_fail) << e.what();
  }
  ::close(s);
}

TEST_F(EnsureTest, NonDumpableDaemonCanBeStoppedByItsUser) {
  // C8: stop read the daemon's /proc/PID/fd, which a non-dumpable process hides from its own user.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  ::chmod(tmp_.path().c_str(), 0755);
  std::string dir = tmp_ / "nd";
  ::mkdir(dir.c_str(), 0700);
  ASSERT_EQ(::chown(dir.c_str(), 65534, 65534), 0);
  pid_t child = testing::fork_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 90;
    auto r = testing::run({cli_path(), "ensure", "agent", "--state-dir", dir + "/st", "--ready", "notify", "--", "env",
                           "HOLDFAST_TEST_DAEMON=nondumpable", "HF_READY=notify", self_exe()});
    if (r.exit_code != 0) {
      std::fprintf(stderr, "%s", r.err.c_str());
      return 91;
    }
    pid_t pid = std::atoi(r.out.c_str());
    auto st = testing::run({cli_path(), "status", "agent", "--state-dir", dir + "/st"});
    if (st.exit_code != 0) return 92;
    auto stop = testing::run({cli_path(), "stop", "agent", "--state-dir", dir + "/st"});
    if (stop.exit_code != 0) return 93;
    return ::kill(pid, 0) == 0 ? 94 : 0;
  });
  EXPECT_EQ(testing::wait_child(child), 0);
}

TEST_F(EnsureTest, DescriptorLimitsAreCheckedAndReported) {
  // C9: fd:N above the limit, or a low RLIMIT_NOFILE, made the pre-exec shuffle fail silently.
  auto r = run_cli(cli({"ensure", "bigfd", "--ready", "fd:999999", "--", "true"}));
  EXPECT_EQ(r.exit_code, exit_code::usage) << r.err;
  EXPECT_NE(r.err.find("descriptor limit"), std::string::npos) << r.err;
  Daemon d = daemon("lowfd");
  std::vector<std::string> args = cli({"ensure", use("lowfd"), "--ready", "notify", "--"});
  for (auto& c : d.cli_command()) args.push_back(c);
  pid_t child = testing::fork_child([&] {
    rlimit lim{24, 24};
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) return 90;
    auto res = run_cli(args);
    return res.exit_code == 0 ? 0 : 10 + res.exit_code % 100;
  });
  EXPECT_EQ(testing::wait_child(child), 0);
  EXPECT_EQ(count_lines(d.count_file), 1);
}

TEST_F(EnsureTest, StopSignalOnlyModeAndEverySignalName) {
  // C10: --signal HUP waited for an exit (75), and only 8 names were known.
  Daemon d = daemon("reload");
  auto inst = ensure_running(use("reload"), {self_exe()}, options("notify", d));
  auto r = run_cli(cli({"stop", "reload", "--signal", "HUP", "--no-wait"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (int i = 0; i < 2000 && count_lines(d.signal_file) == 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(count_lines(d.signal_file), 1);
  EXPECT_TRUE(process_alive(inst.pid));
  EXPECT_EQ(instance_status("reload", state_).state, InstanceState::ready);
  for (std::string sig : {"WINCH", "SIGCONT", "cont", "0", "28"}) {
    auto s = run_cli(cli({"stop", "reload", "--signal", sig, "--no-wait"}));
    EXPECT_EQ(s.exit_code, 0) << sig << ": " << s.err;
  }
  EXPECT_TRUE(process_alive(inst.pid));
  for (std::string bad : {"BOGUS", "99", "-1", "RTMIN+99"}) {
    EXPECT_EQ(run_cli(cli({"stop", "reload", "--signal", bad})).exit_code, exit_code::usage) << bad;
  }
  EXPECT_EQ(run_cli(cli({"stop", "reload", "--signal", "0"})).exit_code, exit_code::usage);
  // Durations in every form (D12's half for stop and ensure).
  r = run_cli(cli({"stop", "reload", "--signal", "RTMIN+2", "--timeout", "2s", "--kill-after", "500ms"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(process_alive(inst.pid));
  EXPECT_EQ(run_cli(cli({"ensure", "x", "--ready-timeout", "1h", "--", "holdfast-no-such-command"})).exit_code,
            exit_code::not_found);
  EXPECT_EQ(run_cli(cli({"ensure", "x", "--ready-timeout", "soon", "--", "true"})).exit_code, exit_code::usage);
}

TEST_F(EnsureTest, DaemonEnvironmentIsSetNotInherited) {
  // C11: the daemon got the race winner's cwd, umask and environment.
  ::chmod(tmp_.path().c_str(), 0777);
  std::string work = tmp_ / "work";
  ::mkdir(work.c_str(), 0755);
  Daemon d = daemon("env");
  ::umask(077);
  std::vector<std::string> args = cli({"ensure", use("env"), "--ready", "notify", "--chdir", work, "--env",
                                       "HF_FOO=bar", "--umask", "027", "--"});
  for (auto& c : d.cli_command()) args.push_back(c);
  auto r = run_cli(args);
  ::umask(022);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream in(d.describe_file);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, work + " 0027 0 bar");
  // Defaults: / and 022, whatever the caller has.
  Daemon d2 = daemon("env-default");
  ::umask(077);
  auto inst = ensure_running(use("env-default"), {self_exe()}, options("notify", d2));
  ::umask(022);
  std::ifstream in2(d2.describe_file);
  std::getline(in2, line);
  EXPECT_EQ(line, "/ 0022 0 ");
  // --user: privileges dropped in the daemon only; the supervisor keeps the caller's.
  if (::geteuid() == 0) {
    Daemon d3 = daemon("env-user");
    std::vector<std::string> a3 = cli({"ensure", use("env-user"), "--ready", "notify", "--user", "65534", "--"});
    for (auto& c : d3.cli_command()) a3.push_back(c);
    auto r3 = run_cli(a3);
    ASSERT_EQ(r3.exit_code, 0) << r3.err;
    std::ifstream in3(d3.describe_file);
    std::getline(in3, line);
    EXPECT_EQ(line, "/ 0022 65534 ");
    EXPECT_EQ(run_cli(cli({"stop", "env-user"})).exit_code, 0);
  }
  (void)inst;
}

TEST_F(EnsureTest, LogIsRotatedBySize) {
  Daemon d = daemon("chatty");
  d.mode = "chatty";
  std::vector<std::string> args = cli({"ensure", use("chatty"), "--ready", "notify", "--log-max", "8K", "--"});
  for (auto& c : d.cli_command()) args.push_back(c);
  auto r = run_cli(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string log = state_ + "/chatty.log";
  for (int i = 0; i < 2000 && !exists(log + ".1"); ++i) std::this_thread::sleep_for(5ms);
  EXPECT_TRUE(exists(log + ".1"));
  struct stat st {};
  ASSERT_EQ(::stat(log.c_str(), &st), 0);
  EXPECT_LE(st.st_size, 8192);
  ASSERT_EQ(::stat((log + ".1").c_str(), &st), 0);
  EXPECT_LE(st.st_size, 8192);
}

TEST_F(EnsureTest, StatusExitCodesFollowLsb) {
  // C12: status exited 0 for stopped and stale instances.
  EXPECT_EQ(run_cli(cli({"status", "never-started"})).exit_code, 3);
  Daemon d = daemon("lsb");
  ensure_running(use("lsb"), {self_exe()}, options("notify", d));
  EXPECT_EQ(run_cli(cli({"status", "lsb"})).exit_code, 0);
  EXPECT_EQ(run_cli(cli({"stop", "lsb"})).exit_code, 0);
  EXPECT_EQ(run_cli(cli({"status", "lsb"})).exit_code, 3);
  EXPECT_EQ(run_cli(cli({"status"})).exit_code, 0);
}

TEST_F(EnsureTest, StopDuringTheFirstMomentsOfAStartWaitsInsteadOfRefusing) {
  // S5: a stop between the client's "starting" record and the supervisor recording itself said
  // "refusing to signal pid 0" (65). It now waits for the supervisor, bounded by --timeout.
  ::mkdir(state_.c_str(), 0700);
  InstanceRecord rec;
  rec.name = "early";
  rec.process = ProcessIdentity{0, 0, this_boot_id(), this_host()};
  rec.command = {"sleep", "100"};
  rec.state = RecordState::starting;
  rec.ready_mode = "none";
  rec.attempt = 12345;
  std::ofstream(state_ + "/early.json") << rec.to_json() << "\n";
  int fd = ::open((state_ + "/early.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  ASSERT_EQ(::fcntl(fd, F_OFD_SETLK, &fl), 0);  // as the spawning client holds it
  auto r = run_cli(cli({"stop", "early", "--timeout", "300ms"}));
  EXPECT_EQ(r.exit_code, exit_code::temp_fail) << r.err;
  EXPECT_NE(r.err.find("still starting"), std::string::npos) << r.err;
  auto st = run_cli(cli({"status", "early"}));
  EXPECT_EQ(st.exit_code, 0) << st.out;
  EXPECT_NE(st.out.find("starting"), std::string::npos) << st.out;
  ::close(fd);
}

}  // namespace
}  // namespace holdfast
