// The library's ensure/status/stop on etcd (include/holdfast/etcd.hpp), the implementation
// `holdfast ensure|status|stop --backend` call: against a real 1-member etcd; another "machine" is
// the command in its own UTS namespace (`unshare -u` + another hostname).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <optional>

#include "etcd/etcd_cluster.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/etcd.hpp"
#include "holdfast/identity.hpp"

namespace holdfast {
namespace {

using testing::EtcdCluster;
using namespace std::chrono_literals;

// Stops the local instance (SIGKILL after 1 s) on every path of the test.
struct LocalInstance {
  std::string name, state_dir;
  LocalInstance(std::string n, std::string dir) : name(std::move(n)), state_dir(std::move(dir)) {}
  LocalInstance(const LocalInstance&) = delete;
  LocalInstance& operator=(const LocalInstance&) = delete;
  ~LocalInstance() {
    try {
      stop_instance(name, StopOptions{.state_dir = state_dir, .kill_after = 1000ms});
    } catch (const std::exception&) {  // nothing left to stop, or already reported by the test
    }
  }
};

testing::CommandResult on_other_host(const std::vector<std::string>& args) {
  std::vector<std::string> a = {"unshare", "-u", "sh", "-c", "hostname other-host && exec \"$@\"", "sh",
                                testing::holdfast_path()};
  a.insert(a.end(), args.begin(), args.end());
  return testing::run(a);
}

TEST(EtcdEnsureLibrary, OneInstanceVerifiedStatusAndStopOnlyWhereItRuns) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  testing::TempDir dir;
  const std::string state = dir / "state", other_state = dir / "other";
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  ASSERT_EQ(::mkdir(other_state.c_str(), 0700), 0);
  EtcdOptions options = etcd.options("lib");
  options.ttl = 5s;
  EXPECT_EQ(etcd_url(options), etcd.url("lib"));
  EXPECT_FALSE(etcd_instance(options, "svc"));

  LocalInstance guard("svc", state);
  EnsureOptions eo;
  eo.state_dir = state;
  const EtcdEnsured first = ensure_running(options, "svc", {"sleep", "100000"}, eo, testing::holdfast_path());
  ASSERT_TRUE(first.local);
  EXPECT_FALSE(first.elsewhere);
  EXPECT_TRUE(first.local->started);
  // Ready means NAME is held in etcd, by the instance's main process, on this host.
  auto held = etcd_instance(options, "svc");
  ASSERT_TRUE(held);
  EXPECT_EQ(held->host, this_host());
  EXPECT_EQ(held->pid, first.local->pid);
  EXPECT_EQ(held->start_time, first.local->start_time);
  EXPECT_GT(held->holder.token, 0u);

  const EtcdEnsured again = ensure_running(options, "svc", {"sleep", "100000"}, eo, testing::holdfast_path());
  ASSERT_TRUE(again.local);
  EXPECT_FALSE(again.local->started);
  EXPECT_EQ(again.local->pid, first.local->pid);

  // Another machine: ensure starts nothing there and names this host; stop signals nothing (65).
  auto there = on_other_host({"ensure", "--backend", etcd.url("lib"), "--state-dir", other_state, "svc", "--", "false"});
  EXPECT_EQ(there.exit_code, 0) << there.err;
  EXPECT_EQ(there.out, std::to_string(first.local->pid) + " " + this_host() + "\n");
  auto refused = on_other_host({"stop", "--backend", etcd.url("lib"), "--state-dir", other_state, "svc"});
  EXPECT_EQ(refused.exit_code, 65) << refused.err;
  EXPECT_NE(refused.err.find(this_host()), std::string::npos) << refused.err;

  // This host, another state directory: not the holder's instance, nothing signalled.
  try {
    stop_instance(options, "svc", StopOptions{.state_dir = other_state});
    ADD_FAILURE() << "stop from a state directory that does not run the holder";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::data) << e.what();
  }
  ASSERT_TRUE(etcd_instance(options, "svc"));
  EXPECT_EQ(etcd_instance(options, "svc")->pid, first.local->pid);

  // Where it runs: stopped, and the lock process released NAME on its way out.
  const StopResult stopped = stop_instance(options, "svc", StopOptions{.state_dir = state, .kill_after = 5000ms});
  EXPECT_TRUE(stopped.was_running);
  EXPECT_FALSE(etcd_instance(options, "svc"));
  EXPECT_FALSE(stop_instance(options, "svc", StopOptions{.state_dir = state}).was_running);
}

// Sets an environment variable for one scope, restoring the old value (or its absence).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name); old != nullptr) old_ = old;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// lock_program "": $HOLDFAST_CLI, else `holdfast` in $PATH, else a one-line not_found error and
// nothing started.
TEST(EtcdEnsureLibrary, TheLockProgramComesFromHoldfastCliOrPath) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  testing::TempDir dir;
  const std::string state = dir / "state";
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  const EtcdOptions options = etcd.options("lib");
  EnsureOptions eo;
  eo.state_dir = state;
  {
    ScopedEnv cli("HOLDFAST_CLI", nullptr);
    ScopedEnv path("PATH", (dir / "empty").c_str());
    try {
      ensure_running(options, "svc", {"/bin/sleep", "100000"}, eo);
      ADD_FAILURE() << "started without a holdfast command";
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), exit_code::not_found);
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(etcd_instance(options, "svc"));
  LocalInstance guard("svc", state);
  ScopedEnv cli("HOLDFAST_CLI", testing::holdfast_path().c_str());
  const EtcdEnsured started = ensure_running(options, "svc", {"sleep", "100000"}, eo);
  ASSERT_TRUE(started.local);
  auto held = etcd_instance(options, "svc");
  ASSERT_TRUE(held);
  EXPECT_EQ(held->pid, started.local->pid);
  EXPECT_TRUE(stop_instance(options, "svc", StopOptions{.state_dir = state, .kill_after = 5000ms}).was_running);
}

}  // namespace
}  // namespace holdfast
