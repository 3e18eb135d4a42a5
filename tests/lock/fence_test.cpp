// Fencing tokens: strictly increasing across processes, restarts and (simulated) reboots.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include <fcntl.h>

#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "lock/internal.hpp"
#include "support/faultfs.hpp"
#include "lock_test_helpers.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::read_file;

void spit(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Where the fencing state of `path` lives: beside a dotlock, in the state directory for a kernel
// lock (never beside a user's file).
std::string fence_of(const std::string& path, Backend backend) {
  if (backend == Backend::excl || backend == Backend::link) return path + ".fence";
  std::string why;
  auto paths = lock_testing::side_state_of(path, &why);
  return paths ? paths->fence : "(no state directory: " + why + ")";
}

struct TokenLog {
  std::atomic<uint64_t> last;
  std::atomic<uint64_t> max;
  std::atomic<int> regressions;
  std::atomic<int> handoffs;
};

class FenceTest : public ::testing::TestWithParam<Backend> {};

TEST_P(FenceTest, TenThousandHandoffsStrictlyIncreaseAndSurviveRestart) {
  const Backend backend = GetParam();
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto* log = static_cast<TokenLog*>(testing::shared_memory(sizeof(TokenLog)));
  new (log) TokenLog{};
  testing::StartGun gun;
  std::vector<pid_t> kids;
  for (int p = 0; p < 4; ++p) {
    kids.push_back(testing::fork_child([&] {
      gun.wait();
      auto lf = LockFile::open(path, LockOptions{backend, LockMode::exclusive, {}, {}});
      for (int i = 0; i < 2500; ++i) {
        auto l = lf.acquire();
        if (l.token() <= log->last.load()) log->regressions.fetch_add(1);
        log->last = l.token();
        log->handoffs.fetch_add(1);
      }
      return 0;
    }));
  }
  gun.release();
  for (pid_t k : kids) ASSERT_EQ(testing::wait_child(k), 0);
  EXPECT_EQ(log->handoffs.load(), 10000);
  EXPECT_EQ(log->regressions.load(), 0);

  // Restart: fresh processes (all earlier ones are gone) continue above the last token.
  const uint64_t before_restart = log->last.load();
  int rc = testing::wait_child(testing::fork_child([&] {
    auto l = Lock::acquire(path, LockOptions{backend, LockMode::exclusive, {}, {}});
    return l.token() > before_restart ? 0 : 1;
  }));
  EXPECT_EQ(rc, 0);
  testing::free_shared_memory(log, sizeof(TokenLog));
}

// A crash loses what was not synced: the counter region may come back older than the last token
// handed out. The machine then boots with a new boot id. Tokens must still go up.
TEST_P(FenceTest, SimulatedCrashAndRebootStillIncreases) {
  const Backend backend = GetParam();
  testing::TempDir dir;
  const std::string path = dir / "lock";
  const LockOptions options{backend, LockMode::exclusive, {}, {}};
  uint64_t first = Lock::acquire(path, options).token();
  const std::string fence = fence_of(path, backend);
  const std::string durable_snapshot = read_file(fence);  // as synced at the epoch bump
  uint64_t last = 0;
  for (int i = 0; i < 50; ++i) last = Lock::acquire(path, options).token();
  ASSERT_GT(last, first);

  // Roll the file back to the synced snapshot, with another boot id in the durable line.
  std::string crashed = durable_snapshot;
  auto pos = crashed.find(this_boot_id());
  ASSERT_NE(pos, std::string::npos);
  crashed.replace(pos, this_boot_id().size(), "00000000-dead-beef-0000-000000000000");
  spit(fence, crashed);
  EXPECT_GT(Lock::acquire(path, options).token(), last);
}

// The counter region lost entirely (torn or zeroed) moves to a new epoch, never backwards.
TEST_P(FenceTest, LostCounterMovesToANewEpoch) {
  const Backend backend = GetParam();
  testing::TempDir dir;
  const std::string path = dir / "lock";
  const LockOptions options{backend, LockMode::exclusive, {}, {}};
  uint64_t last = 0;
  for (int i = 0; i < 10; ++i) last = Lock::acquire(path, options).token();
  const std::string fence = fence_of(path, backend);
  std::string text = read_file(fence);
  ASSERT_EQ(text.size(), 128u);
  text.replace(96, 32, std::string(32, '\0'));
  spit(fence, text);
  uint64_t next = Lock::acquire(path, options).token();
  EXPECT_GT(next, last);
  EXPECT_GT(next >> 32, last >> 32) << "a lost counter must start a new epoch";
}

TEST_P(FenceTest, CorruptEpochFailsClosedNamingTheFile) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  const LockOptions options{GetParam(), LockMode::exclusive, {}, {}};
  Lock::acquire(path, options).release();
  const std::string fence = fence_of(path, GetParam());
  spit(fence, std::string(128, 'x'));
  try {
    Lock::acquire(path, options);
    FAIL() << "granted with a corrupt fencing epoch";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::data);
    EXPECT_NE(std::string(e.what()).find(fence), std::string::npos) << e.what();
  }
  // The failed attempt released what it took: a dotlock file is not left behind.
  EXPECT_EQ(inspect_holder(path).state, HolderState::free);
}

// An open handle reads the counter line through its mapping and, while the epoch line is the one
// it parsed last, parses only the counter's digits: a counter another holder advanced is
// continued, and a counter line that is not exactly ours (a digit that is not lowercase hex, an
// epoch that differs) moves to a new epoch rather than being misread.
TEST_P(FenceTest, AnOpenHandleContinuesOthersCountersAndNeverMisreadsACorruptOne) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto lf = LockFile::open(path, LockOptions{GetParam(), LockMode::exclusive, {}, {}});
  const uint64_t first = lf.acquire().token();
  const uint64_t second = lf.acquire().token();
  ASSERT_EQ(second, first + 1);
  const std::string fence = fence_of(path, GetParam());
  const int fd = ::open(fence.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << fence;
  auto put = [fd](off_t at, const std::string& bytes) {
    ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), at), static_cast<ssize_t>(bytes.size()));
  };
  char digits[9];
  // Another holder issued 0xabc tokens meanwhile (counter digits at 96 + 19).
  std::snprintf(digits, sizeof digits, "%08llx", static_cast<unsigned long long>((second & 0xffffffff) + 0xabc));
  put(96 + 19, digits);
  const uint64_t third = lf.acquire().token();
  EXPECT_EQ(third, second + 0xabc + 1);
  uint64_t last = third;
  for (const char bad : {'A', 'g', ' ', '/', ':', '`', '\x80'}) {
    for (const off_t at : {off_t{96 + 19}, off_t{96 + 26}, off_t{96 + 10}}) {
      put(at, std::string(1, bad));
      const uint64_t next = lf.acquire().token();
      EXPECT_GT(next >> 32, last >> 32) << "'" << bad << "' at " << at << ": a counter it cannot read is lost";
      last = next;
      EXPECT_EQ(lf.acquire().token(), last + 1);  // and the new epoch's counter goes on
      last += 1;
    }
  }
  ::close(fd);
}

// S1: on a network or userspace filesystem the counter is synced on every grant. faultfs with
// delay_data models a file server that does not yet have (and may lose) an unsynced write: the
// next grant would read the previous counter and reissue the same token.
TEST(NetworkFence, S1_CounterWriteIsSyncedPerGrant) {
  if (auto why = testing::FaultFs::unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  testing::FaultFs fs("delay_data=0");
  const std::string path = fs / "lock";
  const LockOptions options{Backend::excl, LockMode::exclusive, {}, {}};
  auto grant = [&] {
    Lock l = Lock::acquire(path, options);
    uint64_t token = l.token();
    l.release();
    return token;
  };
  uint64_t last = grant();  // the first epoch and counter reach the server
  fs.control("delay_data=600000");  // from now on, only a sync lands a write
  for (int i = 0; i < 3; ++i) {
    uint64_t next = grant();
    EXPECT_GT(next, last) << "a grant reissued a token the server had not stored";
    last = next;
  }
}

INSTANTIATE_TEST_SUITE_P(AllBackends, FenceTest,
                         ::testing::Values(Backend::ofd, Backend::flock, Backend::excl, Backend::link),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace holdfast
