// The C API's ensure/status/stop on etcd (hf_ensure_url, hf_status_url, hf_stop_url;
// HOLDFAST_C_1.4) against a real 1-member etcd started here. Another "machine" is the command in
// its own UTS namespace (`unshare -u` + another hostname), as in tests/etcd.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "etcd/etcd_cluster.hpp"
#include "holdfast/holdfast.h"
#include "holdfast/identity.hpp"
#include "support/testing.hpp"

namespace {

using holdfast::testing::EtcdCluster;
using holdfast::testing::TempDir;

// The lock program of hf_ensure_url is $HOLDFAST_CLI: set to the binary under test before main(),
// so before any thread exists (setenv is not thread-safe).
const bool kCliSet = ::setenv("HOLDFAST_CLI", holdfast::testing::holdfast_path().c_str(), 1) == 0;

constexpr const char* kOtherHost = "other-host";

// The holdfast command on the other machine.
holdfast::testing::CommandResult on_other_host(const std::vector<std::string>& args) {
  std::vector<std::string> a = {"unshare", "-u", "sh", "-c", std::string("hostname ") + kOtherHost + " && exec \"$@\"",
                                "sh", holdfast::testing::holdfast_path()};
  a.insert(a.end(), args.begin(), args.end());
  return holdfast::testing::run(a);
}

// Takes a string the C API allocated.
nlohmann::json take_json(char* text) {
  nlohmann::json j = nlohmann::json::parse(text == nullptr ? "null" : text);
  hf_free(text);
  return j;
}

hf_backend_options backend_options() {
  hf_backend_options options{};
  options.size = sizeof options;
  options.ttl_ms = 5000;
  return options;
}

// Stops this host's instance of `state_dir` (SIGKILL after 1 s) on every path of a test.
struct LocalStop {
  std::string name, state_dir;
  LocalStop(std::string n, std::string dir) : name(std::move(n)), state_dir(std::move(dir)) {}
  LocalStop(const LocalStop&) = delete;
  LocalStop& operator=(const LocalStop&) = delete;
  ~LocalStop() {
    hf_stop_result ignored{};
    (void)hf_stop(name.c_str(), state_dir.c_str(), 0, 10000, 1000, &ignored);
  }
};

// Stops the other machine's instance on every path of a test.
struct OtherHostStop {
  std::string url, name, state_dir;
  OtherHostStop(std::string u, std::string n, std::string dir)
      : url(std::move(u)), name(std::move(n)), state_dir(std::move(dir)) {}
  OtherHostStop(const OtherHostStop&) = delete;
  OtherHostStop& operator=(const OtherHostStop&) = delete;
  ~OtherHostStop() { on_other_host({"stop", "--backend", url, "--state-dir", state_dir, "--kill-after", "1", name}); }
};

TEST(CApiEtcdEnsure, OneInstanceHereStatusNamesItAndStopStopsIt) {
  REQUIRE_ETCD();
  ASSERT_TRUE(kCliSet);
  EtcdCluster etcd(1);
  TempDir dir;
  const std::string state = dir / "state", other_state = dir / "other";
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  ASSERT_EQ(::mkdir(other_state.c_str(), 0700), 0);
  const std::string url = etcd.url("capi");
  const hf_backend_options options = backend_options();
  const char* const argv[] = {"sleep", "100000", nullptr};

  int st = -1;
  char* json = nullptr;
  ASSERT_EQ(hf_status_url(url.c_str(), "svc", state.c_str(), &options, &st, &json), HF_OK) << hf_error_message();
  EXPECT_EQ(st, HF_INSTANCE_STOPPED);
  EXPECT_TRUE(take_json(json)["host"].is_null());

  LocalStop guard{"svc", state};
  hf_instance first{};
  ASSERT_EQ(hf_ensure_url(url.c_str(), "svc", argv, nullptr, 60000, state.c_str(), &options, &first, &json), HF_OK)
      << hf_error_message();
  const nlohmann::json started = take_json(json);
  EXPECT_EQ(first.started, 1);
  EXPECT_EQ(first.ready, 1);
  EXPECT_GT(first.pid, 0);
  EXPECT_EQ(started["started"], true);
  EXPECT_EQ(started["local"], true);
  EXPECT_EQ(started["backend"], "etcd");
  EXPECT_EQ(started["host"], holdfast::this_host());
  EXPECT_EQ(started["pid"], first.pid);
  const uint64_t token = started["token"].get<uint64_t>();
  EXPECT_GT(token, 0U);

  // A second ensure: the same instance, nothing started.
  hf_instance again{};
  ASSERT_EQ(hf_ensure_url(url.c_str(), "svc", argv, nullptr, 60000, state.c_str(), &options, &again, &json), HF_OK)
      << hf_error_message();
  const nlohmann::json same = take_json(json);
  EXPECT_EQ(again.started, 0);
  EXPECT_EQ(again.pid, first.pid);
  EXPECT_EQ(again.start_time, first.start_time);
  EXPECT_EQ(same["started"], false);
  EXPECT_EQ(same["token"], token);

  // status: this host, the lock process's pid, the token; ready as this state directory's.
  ASSERT_EQ(hf_status_url(url.c_str(), "svc", state.c_str(), &options, &st, &json), HF_OK) << hf_error_message();
  const nlohmann::json status = take_json(json);
  EXPECT_EQ(st, HF_INSTANCE_READY);
  EXPECT_EQ(status["host"], holdfast::this_host());
  EXPECT_EQ(status["pid"], first.pid);
  EXPECT_EQ(status["token"], token);
  EXPECT_EQ(status["local"], true);
  ASSERT_EQ(hf_status_url(url.c_str(), "svc", other_state.c_str(), &options, &st, nullptr), HF_OK);
  EXPECT_EQ(st, HF_INSTANCE_RUNNING);  // held, but not by that state directory's instance

  // Another state directory on this host does not run the holder: 65, nothing signalled.
  hf_stop_result stopped{};
  EXPECT_EQ(hf_stop_url(url.c_str(), "svc", other_state.c_str(), 0, 10000, -1, &options, &stopped), HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 65) << hf_error_message();
  EXPECT_EQ(::kill(first.pid, 0), 0);

  ASSERT_EQ(hf_stop_url(url.c_str(), "svc", state.c_str(), 0, 10000, 5000, &options, &stopped), HF_OK)
      << hf_error_message();
  EXPECT_EQ(stopped.was_running, 1);
  EXPECT_EQ(stopped.pid, first.pid);
  ASSERT_EQ(hf_status_url(url.c_str(), "svc", state.c_str(), &options, &st, &json), HF_OK) << hf_error_message();
  EXPECT_EQ(st, HF_INSTANCE_STOPPED);
  EXPECT_TRUE(take_json(json)["host"].is_null());
  ASSERT_EQ(hf_stop_url(url.c_str(), "svc", state.c_str(), 0, 10000, -1, &options, &stopped), HF_OK);
  EXPECT_EQ(stopped.was_running, 0);
}

TEST(CApiEtcdEnsure, AnotherHostsInstanceIsNamedAndNeverSignalled) {
  REQUIRE_ETCD();
  ASSERT_TRUE(kCliSet);
  EtcdCluster etcd(1);
  TempDir dir;
  const std::string state = dir / "state", other_state = dir / "other";
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  ASSERT_EQ(::mkdir(other_state.c_str(), 0700), 0);
  const std::string url = etcd.url("capi");
  const hf_backend_options options = backend_options();

  OtherHostStop there{url, "svc", other_state};
  auto started = on_other_host(
      {"ensure", "--backend", url, "--ttl", "5s", "--state-dir", other_state, "--json", "svc", "--", "sleep", "100000"});
  ASSERT_EQ(started.exit_code, 0) << started.err;
  const nlohmann::json remote = nlohmann::json::parse(started.out);
  const int remote_pid = remote["pid"].get<int>();
  ASSERT_EQ(remote["host"], kOtherHost);
  ASSERT_EQ(remote["started"], true);

  // ensure here starts nothing and names the other host's instance.
  const char* const argv[] = {"sleep", "100000", nullptr};
  LocalStop guard{"svc", state};
  hf_instance inst{};
  char* json = nullptr;
  ASSERT_EQ(hf_ensure_url(url.c_str(), "svc", argv, nullptr, 60000, state.c_str(), &options, &inst, &json), HF_OK)
      << hf_error_message();
  const nlohmann::json elsewhere = take_json(json);
  EXPECT_EQ(inst.started, 0);
  EXPECT_EQ(inst.ready, 0);
  EXPECT_EQ(inst.pid, remote_pid);
  EXPECT_EQ(elsewhere["host"], kOtherHost);
  EXPECT_EQ(elsewhere["local"], false);
  EXPECT_EQ(elsewhere["started"], false);
  const uint64_t token = elsewhere["token"].get<uint64_t>();
  EXPECT_GT(token, 0U);
  int st = -1;
  ASSERT_EQ(hf_status(("svc"), state.c_str(), &st, nullptr), HF_OK) << hf_error_message();
  EXPECT_EQ(st, HF_INSTANCE_STOPPED);  // no local instance was started

  ASSERT_EQ(hf_status_url(url.c_str(), "svc", state.c_str(), &options, &st, &json), HF_OK) << hf_error_message();
  const nlohmann::json status = take_json(json);
  EXPECT_EQ(st, HF_INSTANCE_RUNNING);
  EXPECT_EQ(status["host"], kOtherHost);
  EXPECT_EQ(status["pid"], remote_pid);
  EXPECT_EQ(status["token"], token);
  EXPECT_EQ(status["local"], false);

  // stop from here: the data error naming the host; the instance still holds NAME, untouched.
  hf_stop_result stopped{};
  EXPECT_EQ(hf_stop_url(url.c_str(), "svc", state.c_str(), 0, 10000, 1000, &options, &stopped), HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 65) << hf_error_message();
  EXPECT_NE(std::string(hf_error_message()).find(kOtherHost), std::string::npos) << hf_error_message();
  ASSERT_EQ(hf_status_url(url.c_str(), "svc", state.c_str(), &options, &st, &json), HF_OK) << hf_error_message();
  const nlohmann::json after = take_json(json);
  EXPECT_EQ(after["pid"], remote_pid);
  EXPECT_EQ(after["token"], token);
  EXPECT_EQ(::kill(remote_pid, 0), 0);

  // Stopped where it runs: not running anywhere.
  auto stop = on_other_host({"stop", "--backend", url, "--state-dir", other_state, "svc"});
  EXPECT_EQ(stop.exit_code, 0) << stop.err;
  ASSERT_EQ(hf_status_url(url.c_str(), "svc", state.c_str(), &options, &st, nullptr), HF_OK) << hf_error_message();
  EXPECT_EQ(st, HF_INSTANCE_STOPPED);
}

TEST(CApiEtcdEnsure, BadArgumentsAreUsageErrorsAndStartNothing) {
  TempDir dir;
  const char* const argv[] = {"sleep", "100000", nullptr};
  hf_instance inst{};
  EXPECT_EQ(hf_ensure_url("/not/a/url", "svc", argv, nullptr, 1000, (dir / "s").c_str(), nullptr, &inst, nullptr),
            HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 64);
  int st = -1;
  EXPECT_EQ(hf_status_url(nullptr, "svc", nullptr, nullptr, &st, nullptr), HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 64);
  hf_stop_result stopped{};
  EXPECT_EQ(hf_stop_url("etcd://nohostport/x", "svc", nullptr, 0, 1000, -1, nullptr, &stopped), HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 64);
}

}  // namespace
