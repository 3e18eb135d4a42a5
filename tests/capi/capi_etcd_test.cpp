// The C API's locks on etcd (hf_lockfile_open_url, HOLDFAST_C_1.2; hf_lockfile_holder, 1.3) against a real etcd started
// here, and against `holdfast lock --backend etcd://` holding the same name.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "etcd/etcd_cluster.hpp"
#include "holdfast/holdfast.h"
#include "support/testing.hpp"

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace {

using holdfast::testing::EtcdCluster;
using holdfast::testing::TempDir;
using namespace std::chrono_literals;

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// Waits on state, bounded only to catch a hang.
template <typename F>
bool wait_for(F done) {
  const auto give_up = std::chrono::steady_clock::now() + 120s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

// `holdfast lock --backend URL NAME sh -c SCRIPT` in the background.
holdfast::sys::Child start_cli_holder(const std::string& url, const std::string& name, const std::string& script) {
  holdfast::sys::SpawnRequest r;
  r.executable = holdfast::testing::holdfast_path();
  r.argv = {"holdfast", "lock", "--backend", url, name, "sh", "-c", script};
  for (char** e = environ; *e != nullptr; ++e) r.env.emplace_back(*e);
  holdfast::sys::UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  r.fds = {{0, null.get()}, {1, null.get()}, {2, null.get()}};
  return holdfast::sys::spawn(r);
}

TEST(CApiEtcd, ALockOnEtcdExcludesTheCommandOnTheSameNameAndBack) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  TempDir dir;
  const std::string url = etcd.url("capi");
  hf_backend_options options{};
  options.size = sizeof options;
  options.ttl_ms = 5000;
  hf_lockfile* file = nullptr;
  ASSERT_EQ(hf_lockfile_open_url(url.c_str(), "job", HF_EXCLUSIVE, &options, &file), HF_OK) << hf_error_message();

  // Ours: the command cannot take it (-n: exit 1), and the grant says what it is.
  hf_lock* lock = nullptr;
  ASSERT_EQ(hf_lockfile_acquire(file, 0, &lock), HF_OK) << hf_error_message();
  const uint64_t first = hf_lock_token(lock);
  EXPECT_GT(first, 0U);
  EXPECT_EQ(hf_lock_backend(lock), HF_BACKEND_ETCD);
  ASSERT_GE(hf_lock_fd(lock), 0);
  EXPECT_FALSE(readable(hf_lock_fd(lock)));  // not lost
  auto busy = holdfast::testing::holdfast({"lock", "-n", "--backend", url, "job", "true"});
  EXPECT_EQ(busy.exit_code, 1) << busy.err;
  EXPECT_EQ(hf_lock_release(lock), HF_OK) << hf_error_message();

  // The command's: we get HF_BUSY / HF_TIMEOUT while it holds, and a higher token after it.
  const std::string held = dir / "held", done = dir / "done", token_file = dir / "token";
  auto cli = start_cli_holder(url, "job",
                              "echo $HOLDFAST_TOKEN > " + token_file + "; touch " + held + "; while [ ! -e " + done +
                                  " ]; do sleep 0.05; done");
  ASSERT_TRUE(wait_for([&] { return exists(held); }));
  const uint64_t cli_token = std::stoull(holdfast::testing::read_file(token_file));
  EXPECT_GT(cli_token, first);
  EXPECT_EQ(hf_lockfile_acquire(file, 0, &lock), HF_BUSY) << hf_error_message();
  EXPECT_EQ(lock, nullptr);
  EXPECT_EQ(hf_lockfile_acquire(file, 300, &lock), HF_TIMEOUT) << hf_error_message();
  std::atomic<int> status{-100};
  std::thread waiter([&] { status = hf_lockfile_acquire(file, -1, &lock); });
  ::close(::open(done.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  waiter.join();
  ASSERT_EQ(status.load(), HF_OK) << hf_error_message();
  EXPECT_GT(hf_lock_token(lock), cli_token);
  EXPECT_EQ(cli.wait(), 0);
  EXPECT_EQ(hf_lock_release(lock), HF_OK);
  hf_lockfile_close(file);
}

TEST(CApiEtcd, ErrorsAreOneLineWithTheCommandsExitCodes) {
  REQUIRE_ETCD();
  hf_lockfile* file = nullptr;
  EXPECT_EQ(hf_lockfile_open_url("etcd://nohostport/x", "n", HF_EXCLUSIVE, nullptr, &file), HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 64) << hf_error_message();
  EXPECT_EQ(hf_lockfile_open_url("/tmp/not-a-url", "n", HF_EXCLUSIVE, nullptr, &file), HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 64) << hf_error_message();
  EXPECT_EQ(hf_lockfile_open_url("etcd://127.0.0.1:1/x", "n", HF_SHARED, nullptr, &file), HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 64) << hf_error_message();
  EXPECT_EQ(file, nullptr);

  // Nothing listens there: unreachable, 69, one line.
  const int port = holdfast::testing::free_ports(1)[0];
  const std::string url = "etcd://127.0.0.1:" + std::to_string(port) + "/x";
  hf_backend_options options{};
  options.size = sizeof options;
  ASSERT_EQ(hf_lockfile_open_url(url.c_str(), "n", HF_EXCLUSIVE, &options, &file), HF_OK);
  hf_lock* lock = nullptr;
  EXPECT_EQ(hf_lockfile_acquire(file, 0, &lock), HF_ERROR);
  EXPECT_EQ(hf_error_exit_code(), 69) << hf_error_message();
  EXPECT_EQ(std::string(hf_error_message()).find('\n'), std::string::npos) << hf_error_message();
  hf_lockfile_close(file);
}

// The cancel callback ends a wait behind another holder (Python's Ctrl-C rides on it).
TEST(CApiEtcd, TheCancelCallbackEndsAWait) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  const std::string url = etcd.url("capi");
  hf_lockfile* holder_file = nullptr;
  ASSERT_EQ(hf_lockfile_open_url(url.c_str(), "c", HF_EXCLUSIVE, nullptr, &holder_file), HF_OK);
  hf_lock* held = nullptr;
  ASSERT_EQ(hf_lockfile_acquire(holder_file, 0, &held), HF_OK) << hf_error_message();
  std::atomic<bool> cancel{false};
  hf_backend_options options{};
  options.size = sizeof options;
  options.cancel = [](void* context) { return static_cast<std::atomic<bool>*>(context)->load() ? 1 : 0; };
  options.cancel_context = &cancel;
  hf_lockfile* file = nullptr;
  ASSERT_EQ(hf_lockfile_open_url(url.c_str(), "c", HF_EXCLUSIVE, &options, &file), HF_OK);
  std::atomic<int> status{-100};
  hf_lock* lock = nullptr;
  std::thread waiter([&] { status = hf_lockfile_acquire(file, -1, &lock); });
  cancel = true;
  waiter.join();
  EXPECT_EQ(status.load(), HF_TIMEOUT) << hf_error_message();
  EXPECT_EQ(lock, nullptr);
  EXPECT_EQ(hf_lock_release(held), HF_OK);
  hf_lockfile_close(file);
  hf_lockfile_close(holder_file);
}

}  // namespace

// hf_lockfile_holder (HOLDFAST_C_1.3): who holds a name on etcd, read without taking it, with the
// holder's token; for a lock path it is hf_holder.
TEST(CApiEtcd, HolderOfANameOnEtcdAndOfALockPath) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  TempDir dir;
  const std::string url = etcd.url("capi");
  hf_lockfile* file = nullptr;
  ASSERT_EQ(hf_lockfile_open_url(url.c_str(), "h", HF_EXCLUSIVE, nullptr, &file), HF_OK) << hf_error_message();
  int state = -1;
  char* json = nullptr;
  ASSERT_EQ(hf_lockfile_holder(file, &state, &json), HF_OK) << hf_error_message();
  EXPECT_EQ(state, HF_HOLDER_FREE);
  EXPECT_NE(std::string(json).find("\"backend\":\"etcd\""), std::string::npos) << json;
  hf_free(json);
  hf_lock* lock = nullptr;
  ASSERT_EQ(hf_lockfile_acquire(file, 0, &lock), HF_OK) << hf_error_message();
  ASSERT_EQ(hf_lockfile_holder(file, &state, &json), HF_OK) << hf_error_message();
  EXPECT_EQ(state, HF_HOLDER_HELD);
  const std::string text(json);
  hf_free(json);
  EXPECT_NE(text.find("\"token\":" + std::to_string(hf_lock_token(lock))), std::string::npos) << text;
  EXPECT_NE(text.find("\"pid\":" + std::to_string(::getpid())), std::string::npos) << text;
  EXPECT_NE(text.find("\"kernel_lock_held\":false"), std::string::npos) << text;
  hf_lock_release(lock);
  ASSERT_EQ(hf_lockfile_holder(file, &state, nullptr), HF_OK);
  EXPECT_EQ(state, HF_HOLDER_FREE);
  hf_lockfile_close(file);

  const std::string path = dir / "f.lock";
  ASSERT_EQ(hf_lockfile_open(path.c_str(), HF_BACKEND_FLOCK, HF_EXCLUSIVE, &file), HF_OK) << hf_error_message();
  ASSERT_EQ(hf_lockfile_acquire(file, 0, &lock), HF_OK) << hf_error_message();
  ASSERT_EQ(hf_lockfile_holder(file, &state, nullptr), HF_OK) << hf_error_message();
  EXPECT_EQ(state, HF_HOLDER_HELD);
  hf_lock_release(lock);
  hf_lockfile_close(file);
}
