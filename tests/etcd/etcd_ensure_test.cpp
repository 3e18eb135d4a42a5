// `ensure`/`status`/`stop --backend etcd://...` across "machines": each machine is a process in its
// own UTS namespace (`unshare -u` + its own hostname) with its own state directory, all on one
// 3-member etcd cluster started by the test.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "etcd/etcd_cluster.hpp"

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace holdfast {
namespace {

using testing::EtcdCluster;
using namespace std::chrono_literals;

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A process that exists and is not a zombie (PID 1 here does not reap orphans).
bool alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

// Several machines sharing one etcd cluster. Every instance a machine may run is stopped (locally,
// SIGKILL after 1 s) when the object goes, on every path.
class Machines {
 public:
  Machines(const testing::TempDir& dir, size_t count) : dir_(dir) {
    for (size_t i = 0; i < count; ++i) {
      hosts_.push_back("machine-" + std::to_string(i));
      ::mkdir(state_dir(i).c_str(), 0700);
    }
  }
  ~Machines() {
    for (size_t i = 0; i < hosts_.size(); ++i) run(i, {"stop", "inst", "--state-dir", state_dir(i), "--kill-after", "1s"});
  }
  Machines(const Machines&) = delete;
  Machines& operator=(const Machines&) = delete;

  std::string state_dir(size_t i) const { return dir_ / ("state-" + std::to_string(i)); }
  const std::string& host(size_t i) const { return hosts_[i]; }
  std::vector<std::string> argv(size_t i, const std::vector<std::string>& args) const {
    std::vector<std::string> a = {"unshare", "-u", "sh", "-c", "hostname \"$0\" && exec \"$@\"", hosts_[i], testing::holdfast_path()};
    a.insert(a.end(), args.begin(), args.end());
    return a;
  }
  testing::CommandResult run(size_t i, const std::vector<std::string>& args) const { return testing::run(argv(i, args)); }
  // `holdfast ARGS` on machine i, started now; stdout to `out`.
  sys::Child start(size_t i, const std::vector<std::string>& args, const std::string& out) const {
    sys::SpawnRequest r;
    r.executable = "/usr/bin/unshare";
    r.argv = argv(i, args);
    for (char** e = environ; *e != nullptr; ++e) r.env.emplace_back(*e);
    sys::UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
    sys::UniqueFd log(::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    r.fds = {{0, null.get()}, {1, log.get()}, {2, null.get()}};
    return sys::spawn(r);
  }

 private:
  const testing::TempDir& dir_;
  std::vector<std::string> hosts_;
};

// The lines of `path` once it has at least `n` (ready means "holds NAME in etcd"; the daemon
// records its start just after). Bounded only to catch a hang.
std::vector<std::string> wait_for_lines(const std::string& path, size_t n) {
  const auto give_up = std::chrono::steady_clock::now() + 120s;
  auto lines = lines_of(path);
  while (lines.size() < n && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(20ms);
    lines = lines_of(path);
  }
  return lines;
}

// The daemon: records "HOST PID" of every start, then sleeps.
std::string write_daemon(const testing::TempDir& dir) {
  const std::string path = dir / "daemon.sh";
  std::ofstream(path) << "#!/bin/sh\necho \"$(hostname) $$\" >> " << (dir / "starts") << "\nexec sleep 100000\n";
  ::chmod(path.c_str(), 0755);
  return path;
}

// One 3-member cluster, `count` machines, the daemon, and the backend URL. Machines go first
// (stopping their instances), then the cluster.
struct World {
  explicit World(size_t count) : machines(dir, count) {}
  EtcdCluster etcd{3};
  testing::TempDir dir;
  std::string daemon = write_daemon(dir);
  Machines machines;
  std::string url = etcd.url("svc");
};

// Machines race `ensure` for one instance, round after round: every caller gets the same host's
// instance, exactly one start happens; `status` anywhere names that host; `stop` from another
// host signals nothing (65); `stop` on the host stops it.
TEST(EtcdEnsure, ExactlyOneInstanceAcrossRacingMachines) {
  REQUIRE_ETCD();
  World w(4);
#ifdef HOLDFAST_SANITIZED
  const int rounds = 1;
#else
  const int rounds = 4;
#endif
  for (int round = 0; round < rounds; ++round) {
    std::vector<sys::Child> racers;
    for (size_t m = 0; m < 4; ++m) {
      racers.push_back(w.machines.start(
          m, {"ensure", "inst", "--state-dir", w.machines.state_dir(m), "--backend", w.url, "--ttl", "3s", "--", w.daemon},
          w.dir / ("out-" + std::to_string(m))));
    }
    std::set<std::string> answers;
    for (size_t m = 0; m < 4; ++m) {
      const int status = racers[m].wait();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "machine " << m << " status " << status;
      auto out = lines_of(w.dir / ("out-" + std::to_string(m)));
      ASSERT_EQ(out.size(), 1u) << "machine " << m;
      answers.insert(out[0]);
    }
    ASSERT_EQ(answers.size(), 1u) << "callers were given different instances";
    const auto starts = wait_for_lines(w.dir / "starts", static_cast<size_t>(round + 1));
    ASSERT_EQ(starts.size(), static_cast<size_t>(round + 1)) << "not exactly one start in round " << round;
    const std::string winner_host = starts.back().substr(0, starts.back().find(' '));
    EXPECT_NE(answers.begin()->find(winner_host), std::string::npos) << *answers.begin();
    size_t winner = 0;
    while (w.machines.host(winner) != winner_host) ++winner;
    const size_t other = (winner + 1) % 4;

    auto status = w.machines.run(other, {"status", "inst", "--backend", w.url});
    EXPECT_EQ(status.exit_code, 0);
    EXPECT_NE(status.out.find(winner_host), std::string::npos) << status.out;
    auto refused = w.machines.run(other, {"stop", "inst", "--state-dir", w.machines.state_dir(other), "--backend", w.url});
    EXPECT_EQ(refused.exit_code, 65) << refused.err;
    EXPECT_NE(refused.err.find(winner_host), std::string::npos) << refused.err;
    EXPECT_EQ(refused.err.find('\n'), refused.err.size() - 1) << "one line: " << refused.err;
    const pid_t daemon_pid = std::stoi(starts.back().substr(starts.back().find(' ') + 1));
    EXPECT_TRUE(alive(daemon_pid));
    auto stopped = w.machines.run(winner, {"stop", "inst", "--state-dir", w.machines.state_dir(winner), "--backend", w.url});
    EXPECT_EQ(stopped.exit_code, 0) << stopped.err;
    EXPECT_FALSE(alive(daemon_pid));
    EXPECT_EQ(w.machines.run(other, {"status", "inst", "--backend", w.url}).exit_code, 3);
  }
}

// The winning machine's supervisor is SIGKILLed (its lock process and daemon die with it; the
// lease is not revoked): while the lease lives, another machine is given the old instance; once
// it has expired, that machine starts its own. Never two daemons at once.
TEST(EtcdEnsure, AnotherMachineTakesOverAfterTheSupervisorIsKilled) {
  REQUIRE_ETCD();
  World w(2);
  auto first = w.machines.run(0, {"ensure", "inst", "--json", "--state-dir", w.machines.state_dir(0), "--backend", w.url, "--ttl", "2s", "--", w.daemon});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  auto record = nlohmann::json::parse(first.out);
  ASSERT_TRUE(record.value("started", false));
  const pid_t supervisor = record.value("launcher_pid", 0);
  ASSERT_GT(supervisor, 0);
  const auto starts = wait_for_lines(w.dir / "starts", 1);
  ASSERT_EQ(starts.size(), 1u);
  const pid_t old_daemon = std::stoi(starts[0].substr(starts[0].find(' ') + 1));
  ASSERT_EQ(::kill(supervisor, SIGKILL), 0);
  const auto give_up = std::chrono::steady_clock::now() + 120s;  // a hang, not a timing
  for (;;) {
    auto r = w.machines.run(1, {"ensure", "inst", "--state-dir", w.machines.state_dir(1), "--backend", w.url, "--ttl", "2s", "--", w.daemon});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    if (r.out.find(w.machines.host(1)) != std::string::npos) break;
    EXPECT_NE(r.out.find(w.machines.host(0)), std::string::npos) << r.out;
    ASSERT_LT(std::chrono::steady_clock::now(), give_up);
    std::this_thread::sleep_for(100ms);
  }
  const auto after = wait_for_lines(w.dir / "starts", 2);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[1].substr(0, after[1].find(' ')), w.machines.host(1));
  EXPECT_FALSE(alive(old_daemon)) << "the killed supervisor's daemon outlived it";
}

}  // namespace
}  // namespace holdfast
