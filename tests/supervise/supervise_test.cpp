// Tests for `holdfast supervise`, `restart`, and what stop/status/ensure make of a supervised
// instance. Multi-process: the supervisors are the real command; the supervised daemon is this
// executable (test_daemon.cpp). Every wait is on state (the record, the start file, a process's
// exit) with a deadline only to catch hangs.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "holdfast/ensure.hpp"
#include "holdfast/identity.hpp"
#include "holdfast/supervise.hpp"
#include "ensure/suite_helpers.hpp"
#include "support/testing.hpp"
#include "sys/fd.hpp"

namespace holdfast {
namespace {

using testing::TempDir;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// "PID NS" lines of the start file.
struct Start {
  pid_t pid;
  long long ns;
};
std::vector<Start> starts_in(const std::string& path) {
  std::vector<Start> out;
  std::ifstream in(path);
  Start s{};
  while (in >> s.pid >> s.ns) out.push_back(s);
  return out;
}

bool alive(pid_t pid) { return identity_of(pid).has_value(); }

using testing::soak_rounds;

// The watchdog interval of the tests: the first ping must come within it of the spawn, which a
// sanitized daemon on a loaded machine may not manage in 1 s.
#ifdef HOLDFAST_SANITIZED
const std::string kWatchdog = "4s";
#else
const std::string kWatchdog = "1s";
#endif

// Polls `done` until true; fails the test (returns false) after `limit` — a hang, not a timing check.
bool eventually(const std::function<bool()>& done, std::chrono::seconds limit = 60s) {
  const auto end = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// A process of ours (a supervisor under test): reaped on destruction, SIGKILLed first if it still
// runs then (its instance is stopped by the fixture through `holdfast stop`).
class Proc {
 public:
  Proc() = default;
  explicit Proc(pid_t pid) : pid_(pid) {}
  Proc(Proc&& o) noexcept : pid_(std::exchange(o.pid_, 0)), status_(o.status_) {}
  Proc& operator=(Proc&& o) noexcept {
    std::swap(pid_, o.pid_);
    status_ = o.status_;
    return *this;
  }
  Proc(const Proc&) = delete;
  Proc& operator=(const Proc&) = delete;
  ~Proc() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Reaps it if it has exited; true then (status in exit_code()).
  bool exited() {
    if (pid_ <= 0) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    pid_ = 0;
    return true;
  }
  int wait_exit(std::chrono::seconds limit = 60s) {
    if (!eventually([&] { return exited(); }, limit)) return -1;
    return status_;
  }
  void kill_now() {
    ::kill(pid_, SIGKILL);
    wait_exit();
  }

 private:
  pid_t pid_ = 0;
  int status_ = -1;
};

class SuperviseTest : public ::testing::Test {
 protected:
  void TearDown() override {
    procs_.clear();  // SIGKILL leftover supervisors: their instances outlive them ...
    testing::stop_instances(names_, state_, 5s);  // ... and are stopped here, through the record
  }
  std::string use(const std::string& name) {
    names_.push_back(name);
    return name;
  }
  // The daemon's command line: env VARS... self_exe.
  std::vector<std::string> daemon(const std::string& mode, std::vector<std::string> vars = {}) {
    std::vector<std::string> c{"env", "HF_SUPERVISED=" + mode, "HF_COUNT_FILE=" + starts_};
    c.insert(c.end(), vars.begin(), vars.end());
    c.push_back(self_exe());
    return c;
  }
  // Starts `holdfast supervise --state-dir S FLAGS... NAME -- COMMAND`, stderr to err_path(NAME).
  Proc& supervise(const std::string& name, std::vector<std::string> flags, const std::vector<std::string>& command,
                  const std::vector<std::string>& extra_env = {}) {
    std::vector<std::string> argv{HOLDFAST_CLI_PATH, "supervise", "--state-dir", state_};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.push_back(name);
    argv.emplace_back("--");
    argv.insert(argv.end(), command.begin(), command.end());
    return run(argv, tmp_ / (name + ".stderr"), extra_env);
  }
  // Forks and execs `argv` (stdin and stdout /dev/null, stderr appended to `err`, `extra_env`
  // added), once `gun` (if any) fires. The process is killed and reaped at the end of the test.
  Proc& run(std::vector<std::string> argv, const std::string& err, const std::vector<std::string>& extra_env = {},
            testing::StartGun* gun = nullptr) {
    pid_t pid = ::fork();
    if (pid == 0) {
      if (gun != nullptr) gun->wait();
      int fd = ::open(err.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
      ::dup2(fd, 2);
      int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(null, 1);
      for (const auto& e : extra_env) ::putenv(const_cast<char*>(e.c_str()));
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    procs_.emplace_back(pid);
    return procs_.back();
  }
  std::optional<InstanceRecord> record(const std::string& name) {
    auto text = read_text(state_ + "/" + name + ".json");
    return InstanceRecord::parse(text);
  }
  InstanceStatus status(const std::string& name) { return instance_status(name, state_); }
  // Waits until the record says ready with a supervisor and main process matching `pred`.
  InstanceRecord wait_ready(const std::string& name, const std::function<bool(const InstanceRecord&)>& pred = {}) {
    std::optional<InstanceRecord> r;
    bool ok = eventually([&] {
      auto s = status(name);
      r = s.record;
      return s.state == InstanceState::ready && r && r->supervision && (!pred || pred(*r));
    });
    EXPECT_TRUE(ok) << "not ready: " << status(name).reason;
    return r.value_or(InstanceRecord{});
  }
  testing::CommandResult cli(std::vector<std::string> args) {
    args.insert(args.begin() + 1, {"--state-dir", state_});
    args.insert(args.begin(), HOLDFAST_CLI_PATH);
    return testing::run(args);
  }

  TempDir tmp_;
  std::string state_ = tmp_ / "state";
  std::string starts_ = tmp_ / "starts";
  std::vector<std::string> names_;
  std::deque<Proc> procs_;
};

// ---------------------------------------------------------------------------------------------
// policy arithmetic

TEST(BackoffTest, GrowsByTheFactorUpToTheMaxAndJitterNeverDecreasesIt) {
  Backoff b;
  b.min = 100ms;
  b.max = 30s;
  EXPECT_EQ(b.base(0), 100ms);
  EXPECT_EQ(b.base(1), 200ms);
  EXPECT_EQ(b.base(5), 3200ms);
  EXPECT_EQ(b.base(9), 30s);
  EXPECT_EQ(b.base(100000), 30s);
  for (double u : {0.0, 0.3, 0.5, 0.999}) {
    std::chrono::milliseconds last{0};
    for (uint64_t n = 0; n < 20; ++n) {
      auto d = b.delay(n, u);
      EXPECT_GE(d, b.min);
      EXPECT_LE(d, b.base(n));
      EXPECT_GE(d.count(), b.base(n).count() * 3 / 4);
      EXPECT_GE(d, last) << n << " " << u;  // one draw per streak: never decreasing
      last = d;
    }
  }
  EXPECT_EQ(parse_restart_policy("on-failure"), RestartPolicy::on_failure);
  EXPECT_THROW(parse_restart_policy("sometimes"), Error);
}

// ---------------------------------------------------------------------------------------------
// exactly one

TEST_F(SuperviseTest, TwentyConcurrentSupervisorsLeaveOneSupervisorAndOneChild) {
  const auto name = use("twenty");
  testing::StartGun gun;
  std::vector<std::string> argv{HOLDFAST_CLI_PATH, "supervise", "--state-dir", state_, name, "--"};
  for (const auto& c : daemon("serve")) argv.push_back(c);
  for (int i = 0; i < 20; ++i) run(argv, tmp_ / "twenty.stderr", {}, &gun);
  gun.release();
  // 19 exit 1 ("already supervised"); one stays.
  int losers = 0;
  ASSERT_TRUE(eventually([&] {
    losers = 0;
    for (auto& p : procs_) losers += p.exited() ? 1 : 0;
    return losers >= 19;
  })) << read_text(tmp_ / "twenty.stderr");
  auto rec = wait_ready(name);
  EXPECT_EQ(losers, 19);
  ASSERT_TRUE(eventually([&] { return !starts_in(starts_).empty(); }));
  int still = 0;
  for (auto& p : procs_) {
    if (!p.exited()) {
      ++still;
      EXPECT_EQ(p.pid(), rec.launcher_pid);
    }
  }
  EXPECT_EQ(still, 1);
  EXPECT_EQ(starts_in(starts_).size(), 1U);
  EXPECT_NE(read_text(tmp_ / "twenty.stderr").find("already supervised"), std::string::npos);
  // ensure and status see it as they see an ensured instance.
  EnsureOptions eo;
  eo.state_dir = state_;
  auto inst = ensure_running(name, {"false"}, eo);
  EXPECT_EQ(inst.pid, rec.process.pid);
  EXPECT_FALSE(inst.started);
  auto st = cli({"status", name, "--json"});
  EXPECT_EQ(st.exit_code, 0);
  auto j = nlohmann::json::parse(st.out);
  EXPECT_EQ(j["state"], "ready");
  EXPECT_EQ(j["record"]["supervise"]["state"], "ready");
}

// ---------------------------------------------------------------------------------------------
// restart policy

TEST_F(SuperviseTest, RestartsAfterSigkillAndRecordsWhy) {
  const auto name = use("sigkill");
  supervise(name, {"--backoff", "10ms..1s"}, daemon("serve"));
  auto first = wait_ready(name);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() == 1; }));  // it runs (not only exec'd)
  ASSERT_EQ(::kill(first.process.pid, SIGKILL), 0);
  auto second = wait_ready(name, [&](const InstanceRecord& r) { return r.process.pid != first.process.pid; });
  EXPECT_EQ(second.launcher_pid, first.launcher_pid);
  EXPECT_EQ(second.supervision->restarts, 1U);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() >= 2; }));
  EXPECT_EQ(second.supervision->last_exit_status, 128 + SIGKILL);
  EXPECT_NE(second.supervision->last_exit.find("killed by signal 9"), std::string::npos);
  EXPECT_EQ(starts_in(starts_).size(), 2U);
  auto log = read_text(state_ + "/" + name + ".log");
  EXPECT_NE(log.find("killed by signal 9"), std::string::npos) << log;
  EXPECT_NE(log.find("restarting in"), std::string::npos) << log;
}

// Delays announced for consecutive failures never decrease and stay within their bounds; the
// measured gaps between starts are at least the announced delay (a timer never fires early);
// a healthy run (longer than --healthy-after) resets the backoff to MIN.
TEST_F(SuperviseTest, BackoffSequenceGrowsThenResetsAfterAHealthyRun) {
  const auto name = use("backoff");
  const std::string hold = tmp_ / "hold";
  // A crashing run must stay shorter than --healthy-after even when starting the (sanitized)
  // daemon takes a few hundred ms on a loaded machine, or the backoff resets too early.
  auto& sup = supervise(name, {"--backoff", "40ms..320ms", "--burst", "1000/1s", "--healthy-after", "1500ms"},
                        daemon("crash", {"HF_HOLD_FILE=" + hold, "HF_HOLD_MS=2000"}));
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() >= 6; }));
  { std::ofstream(hold) << "x"; }
  const std::string log_path = state_ + "/" + name + ".log";
  ASSERT_TRUE(eventually([&] { return read_text(log_path).find("backoff reset") != std::string::npos; }));
  ASSERT_TRUE(eventually([&] {
    auto log = read_text(log_path);
    auto at = log.find("backoff reset");
    return log.find("restarting in", at) != std::string::npos;
  }));
  ::kill(sup.pid(), SIGTERM);
  EXPECT_EQ(sup.wait_exit(), 0);
  auto log = read_text(log_path);
  std::regex re("restarting in ([0-9]+) ms \\(backoff, failure ([0-9]+)\\)");
  std::vector<long> delays;
  std::vector<long> failure_numbers;
  size_t reset_at = log.find("backoff reset");
  size_t index_after_reset = 0;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator(); ++it) {
    if (static_cast<size_t>(it->position()) > reset_at && index_after_reset == 0) index_after_reset = delays.size();
    delays.push_back(std::stol((*it)[1]));
    failure_numbers.push_back(std::stol((*it)[2]));
  }
  ASSERT_GE(delays.size(), 6U) << log;
  const long bases[] = {40, 80, 160, 320, 320, 320};
  for (size_t i = 0; i < 5 && i < index_after_reset; ++i) {
    EXPECT_GE(delays[i], std::max(40L, bases[i] * 3 / 4)) << i << "\n" << log;
    EXPECT_LE(delays[i], bases[i]) << i;
    if (i > 0) EXPECT_GE(delays[i], delays[i - 1]) << i;
  }
  ASSERT_GT(index_after_reset, 0U);
  EXPECT_EQ(failure_numbers[index_after_reset], 1) << log;
  EXPECT_EQ(delays[index_after_reset], 40) << log;
  auto s = starts_in(starts_);
  for (size_t i = 1; i < 5 && i < s.size(); ++i) {
    EXPECT_GE((s[i].ns - s[i - 1].ns) / 1000000, delays[i - 1] - 1) << i;
  }
}

TEST_F(SuperviseTest, StartLimitPausesThenTriesAgainOrGivesUpWhenAsked) {
  const auto name = use("burst");
  supervise(name, {"--backoff", "10ms..10ms", "--burst", "3/30s", "--pause", "300ms"}, daemon("crash"));
  ASSERT_TRUE(eventually([&] {
    auto r = record(name);
    return r && r->supervision && r->supervision->state == "paused";
  }));
  auto paused = record(name);
  EXPECT_EQ(starts_in(starts_).size(), 3U);
  EXPECT_GT(paused->supervision->next_attempt_unix_ns, 0);
  EXPECT_NE(paused->supervision->decision.find("start limit reached"), std::string::npos);
  EXPECT_NE(status(name).reason.find("paused"), std::string::npos);
  // After the pause it tries again (and pauses again after 3 more).
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() >= 4; }));

  const auto quitter = use("giveup");
  std::string other = tmp_ / "starts-giveup";
  auto cmd = daemon("crash");
  cmd[2] = "HF_COUNT_FILE=" + other;
  auto& sup = supervise(quitter, {"--backoff", "10ms..10ms", "--burst", "3/30s", "--give-up"}, cmd);
  EXPECT_EQ(sup.wait_exit(), 1);
  EXPECT_EQ(starts_in(other).size(), 3U);
  auto r = record(quitter);
  ASSERT_TRUE(r && r->supervision);
  EXPECT_EQ(r->supervision->state, "given-up");
  EXPECT_EQ(status(quitter).state, InstanceState::stopped);
}

TEST_F(SuperviseTest, OnFailureAndNeverPolicies) {
  const auto name = use("never");
  auto& a = supervise(name, {"--restart", "never"}, daemon("crash"));
  EXPECT_EQ(a.wait_exit(), 0);
  EXPECT_EQ(starts_in(starts_).size(), 1U);
  auto r = record(name);
  EXPECT_EQ(r->state, RecordState::stopped);
  EXPECT_EQ(r->supervision->last_exit_status, 3);
  const auto clean = use("clean");
  auto& b = supervise(clean, {"--restart", "on-failure"}, {"true"});
  EXPECT_EQ(b.wait_exit(), 0);
  EXPECT_NE(record(clean)->supervision->decision.find("not restarting a clean exit"), std::string::npos);
}

// Readiness is awaited for every start: the record says starting until the newline on fd 3; a
// start that never reports ready within --ready-timeout is stopped and retried.
TEST_F(SuperviseTest, ReadinessIsAwaitedForEachStartAndAStartNeverReadyIsRetried) {
  const auto name = use("ready");
  const std::string gate = tmp_ / "gate";
  // Ready (a newline on fd 3) only once the gate file exists.
  const std::vector<std::string> cmd{"sh", "-c",
                                     "echo $$ 0 >> \"$0\"; while [ ! -e \"$1\" ]; do sleep 0.01; done; echo >&3; exec sleep 1000",
                                     starts_, gate};
  supervise(name, {"--ready", "fd:3", "--ready-timeout", "inf", "--backoff", "10ms..1s"}, cmd);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() == 1; }));
  // The child can append its start before the supervisor records the attempt: wait for the
  // record, which must then say starting (not ready) while the gate is closed.
  auto supervision_state = [&] {
    auto st = status(name);
    return st.record && st.record->supervision ? st.record->supervision->state : std::string();
  };
  ASSERT_TRUE(eventually([&] { return supervision_state() == "starting"; })) << supervision_state();
  auto s = status(name);
  EXPECT_EQ(s.state, InstanceState::running) << s.reason;
  { std::ofstream(gate) << "x"; }
  auto first = wait_ready(name);
  ::unlink(gate.c_str());
  ::kill(first.process.pid, SIGKILL);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() == 2; }));
  ASSERT_TRUE(eventually([&] { return supervision_state() == "starting"; })) << supervision_state();
  { std::ofstream(gate) << "x"; }
  wait_ready(name, [&](const InstanceRecord& r) { return r.process.pid != first.process.pid; });

  const auto never = use("neverready");
  std::string other = tmp_ / "starts-never";
  auto& sup = supervise(never, {"--ready", "fd:3", "--ready-timeout", "200ms", "--backoff", "10ms..10ms", "--kill-after", "100ms"},
                        {"sh", "-c", "echo $$ 0 >> \"$0\"; exec sleep 1000", other});
  ASSERT_TRUE(eventually([&] { return starts_in(other).size() >= 2; }));
  ::kill(sup.pid(), SIGTERM);
  EXPECT_EQ(sup.wait_exit(), 0);
  EXPECT_NE(read_text(state_ + "/" + never + ".log").find("not ready after 200 ms"), std::string::npos);
  for (const auto& st : starts_in(other)) EXPECT_FALSE(alive(st.pid));
}

// ---------------------------------------------------------------------------------------------
// stop, keep, adopt, restart

TEST_F(SuperviseTest, StopStopsSupervisorAndInstance) {
  const auto name = use("stop");
  auto& sup = supervise(name, {}, daemon("serve"));
  auto rec = wait_ready(name);
  auto r = cli({"stop", name});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(sup.wait_exit(), 0);
  EXPECT_FALSE(alive(rec.process.pid));
  EXPECT_EQ(status(name).state, InstanceState::stopped);
  EXPECT_EQ(record(name)->supervision->state, "stopped");
}

TEST_F(SuperviseTest, StopKeepLeavesTheChildAndTheNextSupervisorAdoptsIt) {
  const auto name = use("keep");
  auto& sup = supervise(name, {}, daemon("serve"));
  auto rec = wait_ready(name);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() == 1; }));
  auto r = cli({"stop", "--keep", name});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(sup.wait_exit(), 0);
  EXPECT_TRUE(alive(rec.process.pid));
  auto s = status(name);
  EXPECT_EQ(s.state, InstanceState::running) << s.reason;
  EXPECT_NE(s.reason.find("without a supervisor"), std::string::npos) << s.reason;
  // ensure never starts a second one beside it.
  EnsureOptions eo;
  eo.state_dir = state_;
  EXPECT_THROW(ensure_running(name, daemon("serve"), eo), Error);
  // A new supervisor adopts it.
  supervise(name, {}, daemon("serve"));
  auto adopted = wait_ready(name, [&](const InstanceRecord& x) { return x.launcher_pid != rec.launcher_pid; });
  EXPECT_EQ(adopted.process.pid, rec.process.pid);
  EXPECT_TRUE(adopted.supervision->adopted);
  EXPECT_EQ(starts_in(starts_).size(), 1U);
  // The adopted child's death is seen through its pidfd, and it is restarted.
  ::kill(rec.process.pid, SIGKILL);
  auto next = wait_ready(name, [&](const InstanceRecord& x) { return x.process.pid != rec.process.pid; });
  EXPECT_FALSE(next.supervision->adopted);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() >= 2; }));
  EXPECT_EQ(starts_in(starts_).size(), 2U);
  // A supervisor started with --keep leaves its instance on SIGTERM too (systemd KillMode=process).
  auto r2 = cli({"stop", name});
  EXPECT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_FALSE(alive(next.process.pid));
}

TEST_F(SuperviseTest, SupervisorKeepFlagLeavesTheInstanceOnSigterm) {
  const auto name = use("keepflag");
  auto& sup = supervise(name, {"--keep"}, daemon("serve"));
  auto rec = wait_ready(name);
  ::kill(sup.pid(), SIGTERM);
  EXPECT_EQ(sup.wait_exit(), 0);
  EXPECT_TRUE(alive(rec.process.pid));
  // stop of an unsupervised instance stops it (verified through the record).
  auto r = cli({"stop", name});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(alive(rec.process.pid));
  EXPECT_EQ(status(name).state, InstanceState::stopped);
}

// The figure: supervisor SIGKILLed -> the next one adopts the live child; 0 second starts.
TEST_F(SuperviseTest, SigkilledSupervisorIsReplacedAndTheChildAdoptedEveryRound) {
  const auto name = use("adopt");
  const int rounds = soak_rounds(100, 8);
  Proc* sup = &supervise(name, {}, daemon("serve"));
  auto rec = wait_ready(name);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() == 1; }));
  const pid_t child = rec.process.pid;
  for (int i = 0; i < rounds; ++i) {
    sup->kill_now();
    ASSERT_TRUE(alive(child)) << "round " << i;
    const pid_t old = rec.launcher_pid;
    sup = &supervise(name, {}, daemon("serve"));
    rec = wait_ready(name, [&](const InstanceRecord& x) { return x.launcher_pid != old; });
    ASSERT_EQ(rec.process.pid, child) << "round " << i;
    ASSERT_TRUE(rec.supervision->adopted);
  }
  EXPECT_EQ(starts_in(starts_).size(), 1U) << "second starts over " << rounds << " rounds";
}

// A supervisor killed after forking a start but before recording its pid: the attempt id it
// published before the fork is in the child's environment, and the next supervisor adopts it.
TEST_F(SuperviseTest, ChildForkedByASupervisorKilledBeforeRecordingItIsStillAdopted) {
  const auto name = use("window");
  auto& dying = supervise(name, {}, daemon("serve"), {"HOLDFAST_SUPERVISE_TEST_DIE_AFTER_FORK=1"});
  EXPECT_EQ(dying.wait_exit(), 128 + SIGKILL);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() == 1; }));
  const pid_t child = starts_in(starts_)[0].pid;
  auto left = record(name);
  ASSERT_TRUE(left);
  EXPECT_EQ(left->process.pid, 0);  // never recorded
  supervise(name, {}, daemon("serve"));
  auto rec = wait_ready(name);
  EXPECT_EQ(rec.process.pid, child);
  EXPECT_TRUE(rec.supervision->adopted);
  EXPECT_EQ(starts_in(starts_).size(), 1U);
}

TEST_F(SuperviseTest, RestartCommandStartsANewProcessNow) {
  const auto name = use("restart");
  supervise(name, {"--backoff", "5s..5s"}, daemon("serve"));
  auto rec = wait_ready(name);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() == 1; }));
  auto r = cli({"restart", name});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  pid_t now = std::atoi(r.out.c_str());
  EXPECT_NE(now, rec.process.pid);
  EXPECT_FALSE(alive(rec.process.pid));
  EXPECT_EQ(record(name)->process.pid, now);
  ASSERT_TRUE(eventually([&] { return starts_in(starts_).size() >= 2; }));
  EXPECT_EQ(starts_in(starts_).size(), 2U);
  // Not supervised: usage error.
  EnsureOptions eo;
  eo.state_dir = state_;
  ensure_running(use("plain"), {"sleep", "100"}, eo);
  EXPECT_EQ(cli({"restart", "plain"}).exit_code, 64);
}

// ---------------------------------------------------------------------------------------------
// watchdog and checks

TEST_F(SuperviseTest, WatchdogRestartsAChildThatStopsPinging) {
  const auto name = use("watchdog");
  const std::string mute = tmp_ / "mute";
  const std::string pinged = tmp_ / "pinged";
  supervise(name, {"--watchdog", kWatchdog, "--backoff", "10ms..1s"},
            daemon("serve", {"HF_PING=1", "HF_MUTE_FILE=" + mute, "HF_PINGED_FILE=" + pinged}));
  auto rec = wait_ready(name);
  // The child pinged: WATCHDOG_USEC was set and WATCHDOG_PID named the child itself.
  ASSERT_TRUE(eventually([&] { return ::access(pinged.c_str(), F_OK) == 0; }));
  { std::ofstream(mute) << "x"; }
  auto next = wait_ready(name, [&](const InstanceRecord& r) { return r.process.pid != rec.process.pid; });
  EXPECT_FALSE(alive(rec.process.pid));
  EXPECT_NE(read_text(state_ + "/" + name + ".log").find("watchdog: no WATCHDOG=1 from pid " + std::to_string(rec.process.pid)),
            std::string::npos);
  EXPECT_GE(next.supervision->restarts, 1U);
}

TEST_F(SuperviseTest, WatchdogRestartsASigstoppedChild) {
  const auto name = use("stopped");
  const std::string pinged = tmp_ / "pinged";
  supervise(name, {"--watchdog", kWatchdog, "--kill-after", "500ms", "--backoff", "10ms..1s"},
            daemon("serve", {"HF_PING=1", "HF_PINGED_FILE=" + pinged}));
  auto rec = wait_ready(name);
  ASSERT_TRUE(eventually([&] { return ::access(pinged.c_str(), F_OK) == 0; }));
  ASSERT_EQ(::kill(rec.process.pid, SIGSTOP), 0);
  auto next = wait_ready(name, [&](const InstanceRecord& r) { return r.process.pid != rec.process.pid; });
  EXPECT_FALSE(alive(rec.process.pid));
  // TERM then CONT (as systemd does): a stopped process gets to act on the TERM.
  EXPECT_NE(next.supervision->last_exit.find("killed by signal"), std::string::npos) << next.supervision->last_exit;
}

TEST_F(SuperviseTest, HeartbeatFileWatchdogRestartsAHungChild) {
  const auto name = use("heartbeat");
  const std::string beat = tmp_ / "beat";
  supervise(name, {"--watchdog", kWatchdog, "--heartbeat", beat, "--backoff", "10ms..1s"},
            daemon("serve", {"HF_HEARTBEAT=" + beat}));
  auto rec = wait_ready(name);
  ASSERT_TRUE(eventually([&] { return ::access(beat.c_str(), F_OK) == 0; }));
  ASSERT_EQ(::kill(rec.process.pid, SIGSTOP), 0);
  wait_ready(name, [&](const InstanceRecord& r) { return r.process.pid != rec.process.pid; });
  EXPECT_FALSE(alive(rec.process.pid));
  EXPECT_NE(read_text(state_ + "/" + name + ".log").find("watchdog: heartbeat"), std::string::npos);
}

// A supervisor SIGKILLed while its child pings: the next one adopts the child and binds the
// notify socket the child was given again, so a child that stops pinging after the adoption is
// still restarted (before, an adopted child's watchdog only began with the next start).
TEST_F(SuperviseTest, WatchdogWatchesAnAdoptedChild) {
  const auto name = use("adoptdog");
  const std::string mute = tmp_ / "mute";
  const std::string pinged = tmp_ / "pinged";
  const auto cmd = daemon("serve", {"HF_PING=1", "HF_MUTE_FILE=" + mute, "HF_PINGED_FILE=" + pinged});
  const std::vector<std::string> flags{"--watchdog", kWatchdog, "--backoff", "10ms..1s"};
  auto& first = supervise(name, flags, cmd);
  auto rec = wait_ready(name);
  ASSERT_TRUE(eventually([&] { return ::access(pinged.c_str(), F_OK) == 0; }));
  first.kill_now();
  auto& second = supervise(name, flags, cmd);
  auto adopted = wait_ready(name, [&](const InstanceRecord& r) { return r.launcher_pid == second.pid(); });
  ASSERT_EQ(adopted.process.pid, rec.process.pid);
  ASSERT_TRUE(adopted.supervision->adopted);
  { std::ofstream(mute) << "x"; }
  auto next = wait_ready(name, [&](const InstanceRecord& r) { return r.process.pid != rec.process.pid; });
  EXPECT_FALSE(alive(rec.process.pid));
  EXPECT_NE(read_text(state_ + "/" + name + ".log").find("watchdog: no WATCHDOG=1 from pid " + std::to_string(rec.process.pid)),
            std::string::npos);
  EXPECT_EQ(next.launcher_pid, second.pid());
}

// --check runs for an adopted child too (before, its schedule began only with a start's readiness).
TEST_F(SuperviseTest, FailingCheckRestartsAnAdoptedChild) {
  const auto name = use("adoptcheck");
  const std::string sick = tmp_ / "sick";
  const std::vector<std::string> flags{"--check", "test ! -e " + sick, "--check-every", "100ms", "--backoff", "10ms..1s"};
  auto& first = supervise(name, flags, daemon("serve"));
  auto rec = wait_ready(name);
  first.kill_now();
  auto& second = supervise(name, flags, daemon("serve"));
  auto adopted = wait_ready(name, [&](const InstanceRecord& r) { return r.launcher_pid == second.pid(); });
  ASSERT_EQ(adopted.process.pid, rec.process.pid);
  { std::ofstream(sick) << "x"; }
  wait_ready(name, [&](const InstanceRecord& r) { return r.process.pid != rec.process.pid; });
  ::unlink(sick.c_str());
  EXPECT_FALSE(alive(rec.process.pid));
}

TEST_F(SuperviseTest, FailingCheckRestartsTheChildAfterTheThreshold) {
  const auto name = use("check");
  const std::string sick = tmp_ / "sick";
  supervise(name, {"--check", "test ! -e " + sick, "--check-every", "100ms", "--check-fails", "2", "--backoff", "10ms..1s"},
            daemon("serve"));
  auto rec = wait_ready(name);
  { std::ofstream(sick) << "x"; }
  wait_ready(name, [&](const InstanceRecord& r) { return r.process.pid != rec.process.pid; });
  ::unlink(sick.c_str());
  auto log = read_text(state_ + "/" + name + ".log");
  EXPECT_NE(log.find("(1 of 2)"), std::string::npos) << log;
  EXPECT_NE(log.find("check failed 2 time(s)"), std::string::npos) << log;
}

// ---------------------------------------------------------------------------------------------
// supervising what is not a child: a tmux session

// A private tmux server (its own socket in the test's directory), killed at the end.
class TmuxServer {
 public:
  explicit TmuxServer(std::string socket) : socket_(std::move(socket)) {}
  ~TmuxServer() { testing::run({"tmux", "-S", socket_, "kill-server"}); }
  TmuxServer(const TmuxServer&) = delete;
  TmuxServer& operator=(const TmuxServer&) = delete;
  bool has(const std::string& session) const {
    return testing::run({"tmux", "-S", socket_, "has-session", "-t", session}).exit_code == 0;
  }
  const std::string& socket() const { return socket_; }

 private:
  std::string socket_;
};

TEST_F(SuperviseTest, TmuxSessionComesBackAfterItsServerIsKilledAndStopLeavesIt) {
  if (testing::run({"sh", "-c", "command -v tmux"}).exit_code != 0) GTEST_SKIP() << "tmux is not installed";
  const auto name = use("fm");
  TmuxServer fm(tmp_ / "fm.sock");
  TmuxServer other(tmp_ / "other.sock");
  ASSERT_EQ(testing::run({"tmux", "-S", other.socket(), "new-session", "-d", "-s", "other", "sleep 1000"}).exit_code, 0);
  const std::string t = "tmux -S " + fm.socket();
  auto& sup = supervise(name, {"--check", t + " has-session -t fm", "--start", t + " new-session -d -s fm 'sleep 1000'",
                               "--check-every", "100ms", "--check-fails", "1", "--backoff", "50ms..1s"},
                        {});
  auto first = wait_ready(name);
  EXPECT_TRUE(fm.has("fm"));
  EXPECT_EQ(first.supervision->starts, 1U);
  ASSERT_EQ(testing::run({"tmux", "-S", fm.socket(), "kill-server"}).exit_code, 0);
  auto back = wait_ready(name, [](const InstanceRecord& r) { return r.supervision->starts >= 2; });
  EXPECT_TRUE(fm.has("fm"));
  EXPECT_NE(back.supervision->last_exit.find("check failed"), std::string::npos) << back.supervision->last_exit;
  EXPECT_TRUE(other.has("other"));
  // stop stops the supervisor, never the session.
  auto r = cli({"stop", name});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(sup.wait_exit(), 0);
  EXPECT_TRUE(fm.has("fm"));
  EXPECT_TRUE(other.has("other"));
  // A new supervisor finds it there: ready without a start.
  auto& again = supervise(name, {"--check", t + " has-session -t fm", "--start", t + " new-session -d -s fm 'sleep 1000'",
                                 "--check-every", "100ms"},
                          {});
  auto found = wait_ready(name, [&](const InstanceRecord& x) { return x.launcher_pid == again.pid(); });
  EXPECT_EQ(found.supervision->starts, 0U);
  ::kill(again.pid(), SIGTERM);
  EXPECT_EQ(again.wait_exit(), 0);
  EXPECT_TRUE(fm.has("fm"));
}

// ---------------------------------------------------------------------------------------------
// under systemd: READY=1 and watchdog relay on $NOTIFY_SOCKET

// The datagram socket systemd listens on for sd_notify, played by the test.
class SystemdNotifySocket {
 public:
  explicit SystemdNotifySocket(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error("bind " + path + ": " + std::strerror(errno));
    }
  }
  // One waiting datagram, without blocking.
  std::optional<std::string> receive() {
    char buf[4096];
    ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return std::nullopt;
    return std::string(buf, static_cast<size_t>(n));
  }

 private:
  sys::UniqueFd fd_;
};

TEST_F(SuperviseTest, ReportsReadyAndRelaysWatchdogPingsToSystemd) {
  const auto name = use("systemd");
  const std::string path = tmp_ / "notify.sock";
  SystemdNotifySocket systemd(path);
  auto& sup = supervise(name, {"--watchdog", kWatchdog}, daemon("serve", {"HF_PING=1"}),
                        {"NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=3000000"});
  bool ready = false;
  bool ping = false;
  std::string ready_text;
  ASSERT_TRUE(eventually([&] {
    if (auto text = systemd.receive()) {
      if (text->find("READY=1") != std::string::npos) {
        ready = true;
        ready_text = *text;
      }
      if (text->find("WATCHDOG=1") != std::string::npos && ready) ping = true;
    }
    return ready && ping;
  }));
  EXPECT_NE(ready_text.find("MAINPID=" + std::to_string(sup.pid())), std::string::npos) << ready_text;
  // READY=1 came once the child was ready: the record said so by then.
  EXPECT_EQ(status(name).state, InstanceState::ready);
}

// Without --watchdog, a supervisor watched by systemd (WATCHDOG_USEC) pings for itself.
TEST_F(SuperviseTest, PingsSystemdItselfWhenTheChildHasNoWatchdog) {
  const auto name = use("selfping");
  const std::string path = tmp_ / "notify2.sock";
  SystemdNotifySocket systemd(path);
  supervise(name, {}, daemon("serve"), {"NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=200000"});
  int pings = 0;
  ASSERT_TRUE(eventually([&] {
    auto text = systemd.receive();
    if (text && text->find("WATCHDOG=1") != std::string::npos) ++pings;
    return pings >= 3;
  }));
}

}  // namespace
}  // namespace holdfast
